//! Builds the test guests (`guests/`) and the example components (`examples/`) for
//! `wasm32-wasip2` from source and exposes their paths as constants. No `.wasm` is checked in.

use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "wasm32-wasip2";

fn main() {
    // Read at run time, not with env!(): cargo reuses a compiled build script across checkouts
    // that share a target directory, and a baked-in path would point at another checkout.
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let root = Path::new(&manifest_dir).join("../..");
    let root = root.canonicalize().expect("workspace root");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    // The guests get their own target directory next to the host's, so both stay warm across
    // runs (and in CI, where CARGO_TARGET_DIR lives outside the checkout).
    let guests_target = out_dir
        .ancestors()
        .nth(4)
        .expect("OUT_DIR is TARGET/PROFILE/build/PKG/out")
        .join("wasm-guests");

    // The target directory may be shared by several checkouts (CI clones next to a working
    // copy): re-run when the checkout changes, which scripts/test announces.
    println!("cargo:rerun-if-env-changed=WMS_SOURCE_ROOT");
    let mut consts = String::new();
    for (workspace, target_dir, crates) in [
        (
            "guests",
            guests_target.clone(),
            vec![
                ("testkit", true),
                ("not-http", false),
                ("cmd", false),
                ("p3kit", true),
                ("p3cmd", true),
            ],
        ),
        // Examples build into their own `examples/target`, the path their manifests point to.
        (
            "examples",
            root.join("examples/target"),
            vec![("hello", true), ("echo", true)],
        ),
    ] {
        let dir = root.join(workspace);
        watch(&dir);
        build_package(&dir, &target_dir, TARGET, true);
        for (name, is_lib) in crates {
            let file = if is_lib {
                name.replace('-', "_")
            } else {
                name.to_string()
            };
            let path = target_dir
                .join(TARGET)
                .join("release")
                .join(format!("{file}.wasm"));
            assert!(path.is_file(), "{} was not built", path.display());
            // Example paths are defined in lib.rs relative to this checkout.
            if workspace == "guests" {
                let ident = name.replace('-', "_").to_uppercase();
                consts.push_str(&format!(
                    "pub const {ident}: &str = {:?};\n",
                    path.display().to_string()
                ));
            }
        }
    }
    // Preview 1 guests: a Rust WAGI handler and the same command as above, for wasm32-wasip1.
    let guests = root.join("guests");
    for package in ["rust-wagi", "cmd"] {
        build_one(&guests, &guests_target, "wasm32-wasip1", package);
        let path = guests_target
            .join("wasm32-wasip1/release")
            .join(format!("{package}.wasm"));
        assert!(path.is_file(), "{} was not built", path.display());
        let ident = format!("{}_P1", package.replace('-', "_").to_uppercase());
        consts.push_str(&format!(
            "pub const {ident}: &str = {:?};\n",
            path.display().to_string()
        ));
    }
    // The C WAGI handler, with Debian's clang and wasi-libc (or a wasi-sdk found by WASI_SDK_PATH).
    let c_wagi = guests_target.join("c-wagi.wasm");
    build_c(&guests.join("c-wagi/wagi.c"), &c_wagi);
    consts.push_str(&format!(
        "pub const C_WAGI: &str = {:?};\n",
        c_wagi.display().to_string()
    ));

    // The Spin SDK examples build like Spin's templates (each its own workspace) in the shared
    // guest target directory; the wasm is then put where its unchanged spin.toml expects it:
    // Spin 3's template (SDK 5, wasm32-wasip1) and Spin 4's (SDK 7, a wasi:http 0.3 component).
    for (example, file, target) in [
        ("spin-hello", "spin_hello.wasm", "wasm32-wasip1"),
        ("spin4-hello", "spin4_hello.wasm", TARGET),
    ] {
        let dir = root.join("examples").join(example);
        watch_only(&dir);
        build_package(&dir, &guests_target, target, false);
        let built = guests_target.join(target).join("release").join(file);
        let expected = dir.join("target").join(target).join("release").join(file);
        std::fs::create_dir_all(expected.parent().unwrap()).unwrap();
        std::fs::copy(&built, &expected)
            .unwrap_or_else(|e| panic!("copy {} to {}: {e}", built.display(), expected.display()));
    }
    // Test guests made with the Spin Rust SDK, each its own workspace like the examples above:
    // SDK 5 (Spin 2's variables interface and wasi:config; Spin 2's key-value and SQLite and
    // wasi:keyvalue), SDK 7 (Spin 3's variables); sockets and Spin's outbound services.
    for (guest, file, target, ident) in [
        ("spin-vars", "spin_vars.wasm", "wasm32-wasip1", "SPIN_VARS"),
        ("spin-kv", "spin_kv.wasm", "wasm32-wasip1", "SPIN_KV"),
        ("spin3-vars", "spin3_vars.wasm", TARGET, "SPIN3_VARS"),
        // SDK 5 for wasm32-wasip2: std::net is wasi:sockets there.
        ("spin-net", "spin_net.wasm", TARGET, "SPIN_NET"),
    ] {
        let dir = guests.join(guest);
        watch_only(&dir);
        build_package(&dir, &guests_target, target, false);
        let path = guests_target.join(target).join("release").join(file);
        assert!(path.is_file(), "{} was not built", path.display());
        consts.push_str(&format!(
            "pub const {ident}: &str = {:?};\n",
            path.display().to_string()
        ));
    }
    std::fs::write(out_dir.join("artifacts.rs"), consts).unwrap();
}

/// Re-run when a guest's sources change, but not when its target directory does.
fn watch(dir: &Path) {
    println!(
        "cargo:rerun-if-changed={}",
        dir.join("Cargo.toml").display()
    );
    for entry in walk(dir) {
        println!("cargo:rerun-if-changed={}", entry.display());
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        let name = entry.file_name();
        if name == "target" || name.to_string_lossy().starts_with('.') {
            continue;
        }
        if path.is_dir() {
            found.extend(walk(&path));
        } else if path.extension().is_some_and(|e| e == "rs" || e == "toml") {
            found.push(path);
        }
    }
    found
}

fn build_one(dir: &Path, target_dir: &Path, target: &str, package: &str) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(dir)
        .args([
            "build",
            "--release",
            "--target",
            target,
            "-p",
            package,
            "--target-dir",
        ])
        .arg(target_dir);
    clean_env(&mut cmd);
    let status = cmd.status().expect("run cargo");
    assert!(
        status.success(),
        "building {package} for {target} failed; if the target is missing, run `rustup target add {target}`"
    );
}

fn build_c(source: &Path, out: &Path) {
    println!("cargo:rerun-if-changed={}", source.display());
    println!("cargo:rerun-if-env-changed=WASI_SDK_PATH");
    let (clang, sysroot) = match std::env::var_os("WASI_SDK_PATH") {
        Some(sdk) => {
            let sdk = PathBuf::from(sdk);
            (sdk.join("bin/clang"), sdk.join("share/wasi-sysroot"))
        }
        None => (PathBuf::from("clang"), PathBuf::from("/usr")),
    };
    let result = Command::new(&clang)
        .arg("--target=wasm32-wasi")
        .arg(format!("--sysroot={}", sysroot.display()))
        .args(["-O2", "-Wall", "-o"])
        .arg(out)
        .arg(source)
        .status();
    match result {
        Ok(status) if status.success() => {}
        Ok(_) => panic!(
            "compiling {} to wasm failed; install Debian's C to wasm toolchain with `apt-get install clang lld wasi-libc libclang-rt-14-dev-wasm32`, or set WASI_SDK_PATH to a wasi-sdk",
            source.display()
        ),
        Err(e) => panic!(
            "cannot run {} ({e}); install it with `apt-get install clang lld wasi-libc libclang-rt-14-dev-wasm32`, or set WASI_SDK_PATH to a wasi-sdk",
            clang.display()
        ),
    }
}

fn clean_env(cmd: &mut Command) {
    // Do not leak the host build's settings into the guest build.
    for (key, _) in std::env::vars() {
        if key.starts_with("CARGO_") && key != "CARGO_HOME"
            || key == "RUSTFLAGS"
            || key == "RUSTC_WRAPPER"
        {
            cmd.env_remove(key);
        }
    }
}

fn watch_only(dir: &Path) {
    for name in ["Cargo.toml", "src"] {
        println!("cargo:rerun-if-changed={}", dir.join(name).display());
    }
}

fn build_package(dir: &Path, target_dir: &Path, target: &str, workspace: bool) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(dir)
        .args(["build", "--release", "--target", target, "--target-dir"])
        .arg(target_dir);
    if workspace {
        cmd.arg("--workspace");
    }
    // Do not leak the host build's settings into the guest build.
    for (key, _) in std::env::vars() {
        if key.starts_with("CARGO_") && key != "CARGO_HOME"
            || key == "RUSTFLAGS"
            || key == "RUSTC_WRAPPER"
        {
            cmd.env_remove(key);
        }
    }
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("cannot run cargo for {}: {e}", dir.display()));
    if !status.success() {
        panic!(
            "building the wasm guests in {} failed; if the target is missing, run `rustup target add {target}`",
            dir.display()
        );
    }
}

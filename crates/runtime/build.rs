//! Finds the WIT files of the Spin SDK releases named in `spin-wit/Cargo.toml` in their
//! crates.io sources (`cargo metadata` says where cargo keeps them) and writes the `bindgen!`
//! macros `src/variables.rs` and `src/kv_host.rs` bind them with (`spin_sdk_5_bindgen!`, `spin_sdk_7_bindgen!`). Nothing of Spin's WIT is copied.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let stub = manifest_dir.join("spin-wit/Cargo.toml");
    println!("cargo:rerun-if-changed={}", stub.display());
    println!(
        "cargo:rerun-if-changed={}",
        manifest_dir.join("spin-wit/Cargo.lock").display()
    );
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(&cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--locked",
            "--manifest-path",
        ])
        .arg(&stub)
        .output()
        .unwrap_or_else(|e| panic!("cannot run `{cargo} metadata`: {e}"));
    if !output.status.success() {
        panic!(
            "`cargo metadata --manifest-path {}` failed (it fetches the Spin SDK sources whose WIT wms binds; offline, run `cargo fetch --manifest-path {}` once with the network):\n{}",
            stub.display(),
            stub.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let metadata: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("cargo metadata prints JSON");
    let wit = |version: &str| -> PathBuf {
        let package = metadata["packages"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["name"] == "spin-sdk" && p["version"] == version)
            .unwrap_or_else(|| {
                panic!(
                    "spin-sdk {version} is not in `cargo metadata` of {}",
                    stub.display()
                )
            });
        let manifest = Path::new(package["manifest_path"].as_str().expect("a manifest path"));
        let dir = manifest.parent().expect("a directory").join("wit");
        assert!(dir.is_dir(), "{} has no WIT directory", dir.display());
        dir
    };
    let v5 = wit("5.2.0");
    let v7 = wit("7.0.0");
    // `bindgen!` takes its paths as literals: each macro here passes the rest of its input on
    // with the path of one SDK's WIT in front.
    let mut macros = String::new();
    for (name, dir) in [("spin_sdk_5_bindgen", v5), ("spin_sdk_7_bindgen", v7)] {
        macros.push_str(&format!(
            "#[allow(unused_macros)]\nmacro_rules! {name} {{ ($($body:tt)*) => {{ wasmtime::component::bindgen!({{ path: {:?}, $($body)* }}); }}; }}\n",
            dir.display().to_string()
        ));
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("set by cargo"));
    std::fs::write(out.join("spin_wit.rs"), macros).expect("write OUT_DIR");
}

//! Ahead-of-time compilation: the local cache, `wms compile`, and trusting only exact matches.

use std::path::Path;

use crate::harness::{Server, client, examples, rt, wms};

fn serves_hello(server: &Server) {
    rt().block_on(async {
        let resp = client().get(server.url("/")).send().await.unwrap();
        assert_eq!(resp.text().await.unwrap(), "Hello from wms!\n");
    });
}

fn cache_entries(cache: &Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for engine in std::fs::read_dir(cache.join("aot")).unwrap() {
        for entry in std::fs::read_dir(engine.unwrap().path()).unwrap() {
            found.push(entry.unwrap().path());
        }
    }
    found
}

#[test]
fn second_start_uses_the_cache_and_a_corrupt_entry_is_rebuilt() {
    let cache = tempfile::tempdir().unwrap();
    let env = [("WMS_CACHE_DIR", cache.path())];
    let first = Server::start_with_env(&examples("hello"), &[], &env);
    first.wait_for_log("compiled in");
    serves_hello(&first);
    drop(first);
    let entries = cache_entries(cache.path());
    assert_eq!(entries.len(), 1, "{entries:?}");

    let second = Server::start_with_env(&examples("hello"), &[], &env);
    second.wait_for_log("loaded compiled code from the cache");
    serves_hello(&second);
    drop(second);

    // Truncate the entry: it must be detected, not loaded.
    let bytes = std::fs::read(&entries[0]).unwrap();
    std::fs::write(&entries[0], &bytes[..bytes.len() / 2]).unwrap();
    let third = Server::start_with_env(&examples("hello"), &[], &env);
    third.wait_for_log("is corrupt; recompiling");
    serves_hello(&third);
    drop(third);
    assert_eq!(
        std::fs::read(&entries[0]).unwrap(),
        bytes,
        "the entry was not rebuilt"
    );
}

#[test]
fn precompiled_code_is_used_only_for_exactly_its_wasm() {
    let out = tempfile::tempdir().unwrap();
    let out_dir = out.path().to_str().unwrap();
    let (code, stdout, stderr) = wms(&[
        "compile",
        examples("hello").to_str().unwrap(),
        "-o",
        out_dir,
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("hello.cwasm"), "{stdout}");
    let server = Server::start(&examples("hello"), &["--precompiled", out_dir]);
    server.wait_for_log("loaded precompiled code from");
    serves_hello(&server);
    drop(server);

    // Claim it was made from other bytes: wms must not load it.
    std::fs::write(out.path().join("hello.wasm-sha256"), "0".repeat(64)).unwrap();
    let server = Server::start(&examples("hello"), &["--precompiled", out_dir]);
    server.wait_for_log("was made from another build of this component; compiling instead");
    serves_hello(&server);
}

#[test]
fn compile_for_every_target_and_refuse_foreign_code() {
    let targets: &[&str] = if cfg!(feature = "cross-compile") {
        &["x86_64", "aarch64", "riscv64gc", "pulley64", "pulley32"]
    } else {
        &["pulley64", "pulley32"]
    };
    for &target in targets {
        let out = tempfile::tempdir().unwrap();
        let (code, _, stderr) = wms(&[
            "compile",
            examples("multi").to_str().unwrap(),
            "--target",
            target,
            "-o",
            out.path().to_str().unwrap(),
        ]);
        assert_eq!(code, 0, "{target}: {stderr}");
        for id in ["hello", "echo"] {
            let len = std::fs::metadata(out.path().join(format!("{id}.cwasm")))
                .unwrap()
                .len();
            assert!(len > 1000, "{target}: {id}.cwasm is {len} bytes");
        }
        if target == "riscv64gc" || (target == "pulley32" && !cfg!(feature = "cross-compile")) {
            // Code for another architecture is refused by the engine check, then compiled.
            let server = Server::start(
                &examples("multi"),
                &["--precompiled", out.path().to_str().unwrap()],
            );
            server.wait_for_log("compiling instead");
            rt().block_on(async {
                assert_eq!(
                    client()
                        .get(server.url("/hello"))
                        .send()
                        .await
                        .unwrap()
                        .status(),
                    200
                );
            });
        }
    }
    let (code, _, stderr) = wms(&[
        "compile",
        examples("hello").to_str().unwrap(),
        "--target",
        "sparc",
    ]);
    assert_eq!(code, 1);
    assert!(stderr.contains("--target sparc"), "{stderr}");
}

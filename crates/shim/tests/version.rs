//! The shim binary answers containerd's version probe (and makes `cargo test` build it for the
//! containerd tests in crates/cli/tests/all/shim.rs).

#[test]
fn the_shim_names_its_runtime_and_version() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_containerd-shim-wms-v1"))
        .arg("-v")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("containerd-shim-wms-v1:"), "{text}");
    assert!(text.contains("Runtime: wms"), "{text}");
    assert!(
        text.contains(&format!("Version: {}", env!("CARGO_PKG_VERSION"))),
        "{text}"
    );
}

//! Everything that can be wrong with an app is reported at start, clearly, before serving.

use crate::harness::{Server, artifacts, examples, wms};

fn write_app(manifest: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("wms.toml"), manifest).unwrap();
    dir
}

fn app_with_source(source: &str) -> String {
    format!(
        "spin_manifest_version = 2\n[application]\nname = \"bad\"\n[[trigger.http]]\nroute = \"/...\"\ncomponent = \"web\"\n[component.web]\nsource = {source:?}\n"
    )
}

#[test]
fn start_up_logs_the_pool_configuration() {
    let server = Server::start(&examples("hello"), &[]);
    let log = server.wait_for_log("pooling allocator:");
    assert!(log.contains("slots"), "{log}");
}

#[test]
fn bad_manifest_fails_with_file_line_and_column() {
    let dir = write_app(
        "spin_manifest_version = 2\n[application]\nname = \"x\"\n[[trigger.http]]\nroute = \"/\"\ncomponent = \"web\"\n[component.web]\nsource = \"a.wasm\"\nai_models = [\"llama2-chat\"]\n",
    );
    let (code, _, stderr) = wms(&[
        "up",
        dir.path().to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ]);
    assert_eq!(code, 1);
    let manifest = dir.path().join("wms.toml");
    assert!(
        stderr.contains(&format!(
            "{}:9:13: component `web`: `ai_models` is not supported by wms",
            manifest.display()
        )),
        "{stderr}"
    );
    assert!(stderr.contains("help: "), "{stderr}");
}

#[test]
fn core_module_is_rejected_at_start() {
    let dir = write_app(&app_with_source("module.wasm"));
    // The smallest valid core module: magic and version.
    std::fs::write(dir.path().join("module.wasm"), b"\0asm\x01\0\0\0").unwrap();
    let (code, _, stderr) = wms(&[
        "up",
        dir.path().to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("component `web`")
            && stderr.contains("is a core WebAssembly module, not a component"),
        "{stderr}"
    );
}

#[test]
fn component_without_http_handler_is_rejected_at_start() {
    let dir = write_app(&app_with_source(artifacts::NOT_HTTP));
    let (code, _, stderr) = wms(&[
        "up",
        dir.path().to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains(
            "exports neither `wasi:http/handler@0.3.x` nor `wasi:http/incoming-handler@0.2.x`"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains("wasi:cli/run"),
        "the error should list what it exports: {stderr}"
    );
}

#[test]
fn missing_wasm_says_to_build() {
    let dir = write_app(&app_with_source("target/none.wasm"));
    let (code, _, stderr) = wms(&[
        "up",
        dir.path().to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("component `web`: cannot read") && stderr.contains("wms build"),
        "{stderr}"
    );
}

#[test]
fn build_runs_the_component_build_commands() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = "spin_manifest_version = 2\n[application]\nname = \"b\"\n[[trigger.http]]\nroute = \"/...\"\ncomponent = \"web\"\n[component.web]\nsource = \"out/web.wasm\"\n[component.web.build]\ncommand = \"mkdir -p out && cp \\\"$SRC\\\" out/web.wasm\"\nenvironment = { SRC = \"SRCPATH\" }\n"
        .replace("SRCPATH", artifacts::HELLO);
    std::fs::write(dir.path().join("wms.toml"), manifest).unwrap();
    let (code, _, stderr) = wms(&["build", dir.path().to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        std::fs::read(dir.path().join("out/web.wasm")).unwrap(),
        std::fs::read(artifacts::HELLO).unwrap()
    );

    let failing = "spin_manifest_version = 2\n[application]\nname = \"b\"\n[[trigger.http]]\nroute = \"/...\"\ncomponent = \"web\"\n[component.web]\nsource = \"out/web.wasm\"\n[component.web.build]\ncommand = \"exit 3\"\n";
    std::fs::write(dir.path().join("wms.toml"), failing).unwrap();
    let (code, _, stderr) = wms(&["build", dir.path().to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("component `web`: build command `exit 3` failed"),
        "{stderr}"
    );
}

#[test]
fn component_built_against_a_newer_wasi_minor_version_links() {
    // Rewrite every `@0.2.12` (the host's WASI) in hello.wasm to `@0.2.99`: same length, so
    // the binary stays valid, and it now imports and exports a newer minor version.
    let bytes = std::fs::read(artifacts::HELLO).unwrap();
    let host = b"@0.2.12";
    let count = bytes.windows(host.len()).filter(|w| w == host).count();
    assert!(
        count > 10,
        "hello.wasm no longer targets WASI 0.2.12; update this test"
    );
    let mut newer = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i..].starts_with(host) {
            newer.extend_from_slice(b"@0.2.99");
            i += host.len();
        } else {
            newer.push(bytes[i]);
            i += 1;
        }
    }
    let dir = write_app(&app_with_source("newer.wasm"));
    std::fs::write(dir.path().join("newer.wasm"), newer).unwrap();
    let server = Server::start(dir.path(), &[]);
    let body = crate::harness::rt().block_on(async {
        crate::harness::client()
            .get(server.url("/"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    });
    assert_eq!(body, "Hello from wms!\n");
}

#[test]
fn manifest_numbers_out_of_range_are_refused_at_start_naming_the_key() {
    // Each of these panicked in the runtime (on every request, or at start) before they were
    // bounded at parse time.
    let cases = [
        (
            format!(
                "{}[component.web.tool.wms]\ntimeout = \"5000000000000000h\"\n",
                app_with_source(artifacts::TESTKIT)
            ),
            "timeout `5000000000000000h` is outside the allowed range (1ms to 24h)",
        ),
        (
            app_with_source(artifacts::TESTKIT).replace(
                "name = \"bad\"\n",
                "name = \"bad\"\n[application.tool.wms]\nmax_concurrent_requests = 9223372036854775807\n",
            ),
            "`max_concurrent_requests` must be between 1 and 65536",
        ),
    ];
    for (manifest, expected) in cases {
        let dir = write_app(&manifest);
        let (code, out, stderr) = wms(&[
            "up",
            dir.path().to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ]);
        assert_eq!(code, 1, "{out}\n{stderr}");
        assert!(stderr.contains(expected), "{stderr}");
        assert!(stderr.contains("wms.toml:"), "{stderr}");
    }
}

#[test]
fn file_patterns_and_links_cannot_leave_the_app_directory() {
    let root = tempfile::tempdir().unwrap();
    let app = root.path().join("app");
    std::fs::create_dir_all(app.join("static")).unwrap();
    std::fs::write(app.join("static/ok.txt"), "ok").unwrap();
    std::fs::create_dir_all(root.path().join("other")).unwrap();
    std::fs::write(root.path().join("other/secret"), "secret").unwrap();
    let manifest = |files: &str| {
        std::fs::write(
            app.join("wms.toml"),
            format!("{}files = {files}\n", app_with_source(artifacts::TESTKIT)),
        )
        .unwrap();
    };
    let up = || wms(&["up", app.to_str().unwrap(), "--listen", "127.0.0.1:0"]);
    // A wildcard that matches `..`.
    manifest(r#"[".?/other/*"]"#);
    let (code, _, stderr) = up();
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("outside the app directory"), "{stderr}");
    assert!(!root.path().join("secret").exists());
    // A link to a directory outside, inside a mounted directory: refused by up and by push.
    std::os::unix::fs::symlink(root.path().join("other"), app.join("static/ssh")).unwrap();
    manifest(r#"["static"]"#);
    let (code, _, stderr) = up();
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("static/ssh leads to"), "{stderr}");
    let (code, _, stderr) = wms(&["push", app.to_str().unwrap(), "127.0.0.1:9/never:1"]);
    assert_ne!(code, 0, "{stderr}");
    assert!(stderr.contains("static/ssh leads to"), "{stderr}");
    std::fs::remove_file(app.join("static/ssh")).unwrap();
    // A link loop fails at once instead of hanging start-up.
    std::os::unix::fs::symlink(app.join("static"), app.join("static/again")).unwrap();
    let (code, _, stderr) = up();
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("symbolic link loop"), "{stderr}");
}

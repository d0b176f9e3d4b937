//! OCI distribution against real parts: Debian's `docker-registry` on a loopback port (with and
//! without htpasswd auth), `skopeo`, and `wkg` from crates.io.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{Registry, Server, artifacts, client, examples, rt, wms_command};

/// A user's environment: own content store (cache) and own Docker config.
struct User {
    cache: tempfile::TempDir,
    docker: tempfile::TempDir,
}

impl User {
    fn new() -> User {
        User {
            cache: tempfile::tempdir().unwrap(),
            docker: tempfile::tempdir().unwrap(),
        }
    }

    fn env(&self) -> [(&'static str, &Path); 2] {
        [
            ("WMS_CACHE_DIR", self.cache.path()),
            ("DOCKER_CONFIG", self.docker.path()),
        ]
    }

    /// Runs `wms ARGS` as this user; returns (exit code, stdout, stderr).
    fn wms(&self, args: &[&str]) -> (i32, String, String) {
        self.wms_stdin(args, "")
    }

    fn wms_stdin(&self, args: &[&str], stdin: &str) -> (i32, String, String) {
        use std::io::Write as _;
        let mut child = wms_command()
            .args(args)
            .envs(self.env())
            .env("WMS_LOG", "info")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn ok(&self, args: &[&str]) -> String {
        let (code, out, err) = self.wms(args);
        assert_eq!(code, 0, "wms {args:?} failed:\n{out}\n{err}");
        out
    }

    fn serve(&self, reference: &str, args: &[&str]) -> Server {
        Server::start_with_env(Path::new(reference), args, &self.env())
    }

    /// Where this user's store keeps blob `digest`.
    fn blob(&self, digest: &str) -> PathBuf {
        self.cache
            .path()
            .join("oci/blobs/sha256")
            .join(digest.strip_prefix("sha256:").unwrap())
    }

    /// Where this user's store keeps the partial download of blob `digest`.
    fn partial(&self, digest: &str) -> PathBuf {
        self.cache
            .path()
            .join("oci/partial")
            .join(digest.strip_prefix("sha256:").unwrap())
    }

    /// Leaves `bytes` as the partial download of blob `digest`, as an interrupted pull does.
    fn seed_partial(&self, digest: &str, bytes: &[u8]) {
        let path = self.partial(digest);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }

    fn inspect(&self, reference: &str) -> serde_json::Value {
        serde_json::from_str(&self.ok(&["inspect", "--json", reference])).unwrap()
    }
}

fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    let d = sha2::Sha256::digest(bytes);
    format!(
        "sha256:{}",
        d.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

fn get(url: String) -> (u16, String) {
    rt().block_on(async {
        let r = client().get(url).send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    })
}

/// `wkg` from crates.io (scripts/test installs it): `WMS_TEST_WKG`, else on PATH.
fn wkg() -> Command {
    let bin = std::env::var("WMS_TEST_WKG").unwrap_or_else(|_| "wkg".into());
    let mut cmd = Command::new(bin);
    cmd.env("HOME", std::env::temp_dir());
    cmd
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e} (scripts/test installs it)"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An app with two components (testkit and the hello example), environment, and files given
/// both as a pattern and as a directory mapping.
fn multi_component_app() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("static/sub")).unwrap();
    std::fs::write(d.join("static/index.html"), "<h1>shop</h1>").unwrap();
    std::fs::write(d.join("static/sub/data.txt"), "nested").unwrap();
    std::fs::write(d.join("config.txt"), "mode=fast").unwrap();
    std::fs::create_dir_all(d.join("conf")).unwrap();
    std::fs::write(d.join("conf/app.ini"), "[app]").unwrap();
    std::fs::write(d.join("conf/secret.key"), "never shipped").unwrap();
    std::fs::write(
        d.join("spin.toml"),
        format!(
            r#"spin_manifest_version = 2
[application]
name = "shop"
version = "1.0.0"

[[trigger.http]]
route = "/kit/..."
component = "kit"

[[trigger.http]]
route = "/hello/..."
component = "hello"

[component.kit]
source = {testkit:?}
environment = {{ GREETING = "hi" }}
allowed_outbound_hosts = ["https://api.example.com"]
files = ["*.txt", "conf/*", {{ source = "static", destination = "/www" }}]
exclude_files = ["conf/*.key"]
[component.kit.build]
command = "false"
[component.kit.tool.wms]
timeout = "5s"

[component.hello]
source = {hello:?}
"#,
            testkit = artifacts::TESTKIT,
            hello = artifacts::HELLO,
        ),
    )
    .unwrap();
    dir
}

#[test]
fn an_app_round_trips_through_a_registry_and_serves() {
    let registry = Registry::start();
    let app = multi_component_app();
    let publisher = User::new();
    let reference = registry.reference("shop:1.0");
    let out = publisher.ok(&["push", app.path().to_str().unwrap(), &reference]);
    assert!(
        out.trim().starts_with(&format!("{reference}@sha256:")),
        "{out}"
    );

    // Pushing the unchanged app again uploads nothing and gives the same digest.
    let (code, again, err) = publisher.wms(&["push", app.path().to_str().unwrap(), &reference]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("(0 blob(s) uploaded, 0 B; 5 already in the registry)"),
        "{err}"
    );
    assert_eq!(again, out);
    // Not a terminal: no progress bar, one summary line.
    assert!(!err.contains('\r') && !err.contains('\x1b'), "{err:?}");
    assert_eq!(
        err.lines().filter(|l| l.starts_with("wms: pushed")).count(),
        1
    );

    // skopeo reads it as an image: architecture wasm, every layer.
    let skopeo = run_ok(Command::new("skopeo").args([
        "inspect",
        "--tls-verify=false",
        &format!("docker://{reference}"),
    ]));
    let skopeo: serde_json::Value = serde_json::from_str(&skopeo).unwrap();
    assert_eq!(skopeo["Architecture"], "wasm", "{skopeo}");
    assert_eq!(skopeo["Os"], "wasip2", "{skopeo}");

    // Another machine pulls and serves it.
    let consumer = User::new();
    let inspect = consumer.inspect(&reference);
    assert_eq!(inspect["kind"], "app", "{inspect}");
    let layers = inspect["layers"].as_array().unwrap();
    assert_eq!(
        skopeo["Layers"].as_array().unwrap().len(),
        layers.len(),
        "{skopeo}"
    );
    let mut types: Vec<&str> = layers
        .iter()
        .map(|l| l["media_type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types.pop(),
        Some("application/vnd.wms.app.manifest.v1+toml"),
        "the app manifest is the last layer: {inspect}"
    );
    types.sort();
    assert_eq!(
        types,
        [
            "application/vnd.oci.image.layer.v1.tar",
            "application/wasm",
            "application/wasm"
        ],
        "{inspect}"
    );
    let testkit = std::fs::read(artifacts::TESTKIT).unwrap();
    let hello = std::fs::read(artifacts::HELLO).unwrap();
    let component = |id: &str| {
        inspect["components"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["id"] == id)
            .unwrap_or_else(|| panic!("no component {id}: {inspect}"))
            .clone()
    };
    let kit = component("kit");
    // What the image would be allowed to do, before it runs.
    assert_eq!(
        kit["environment"],
        serde_json::json!(["GREETING"]),
        "{inspect}"
    );
    assert_eq!(kit["files"], serde_json::json!(["/"]), "{inspect}");
    assert_eq!(
        kit["allowed_outbound_hosts"],
        serde_json::json!(["https://api.example.com"])
    );
    assert_eq!(
        component("hello")["allowed_outbound_hosts"],
        serde_json::json!([])
    );
    assert_eq!(kit["digest"], sha256(&testkit).as_str());
    assert_eq!(kit["size"], testkit.len());
    assert_eq!(kit["wasi"], "wasip2");
    assert!(
        kit["world"]
            .as_str()
            .unwrap()
            .starts_with("wasi:http/proxy@0.2"),
        "{inspect}"
    );
    assert_eq!(component("hello")["digest"], sha256(&hello).as_str());

    let digest = consumer.ok(&["pull", &reference]);
    let digest = digest.trim();
    assert_eq!(digest, out.trim().rsplit('@').next().unwrap());
    // The stored components are byte-identical to what was pushed.
    assert_eq!(
        std::fs::read(consumer.blob(&sha256(&testkit))).unwrap(),
        testkit
    );
    assert_eq!(
        std::fs::read(consumer.blob(&sha256(&hello))).unwrap(),
        hello
    );

    let server = consumer.serve(&reference, &[]);
    assert_eq!(get(server.url("/hello")).1, "Hello from wms!\n");
    let (status, env) = get(server.url("/kit/env"));
    assert_eq!(status, 200);
    assert!(env.contains("GREETING=hi"), "{env}");
    for (path, body) in [
        ("/config.txt", "mode=fast"),
        ("/conf/app.ini", "[app]"),
        ("/www/index.html", "<h1>shop</h1>"),
        ("/www/sub/data.txt", "nested"),
    ] {
        assert_eq!(
            get(server.url(&format!("/kit/read?path={path}"))),
            (200, body.to_string()),
            "{path}"
        );
    }
    // Excluded files were never packed.
    assert_eq!(get(server.url("/kit/read?path=/conf/secret.key")).0, 404);
    // The component's limits travelled with the manifest.
    let started = Instant::now();
    assert_eq!(get(server.url("/kit/loop")).0, 504);
    assert!(started.elapsed() < Duration::from_secs(9));
    drop(server);

    // Offline: once pulled, `--pull never` serves from the store.
    drop(registry);
    let server = consumer.serve(&reference, &["--pull", "never"]);
    assert_eq!(get(server.url("/hello")).1, "Hello from wms!\n");
}

#[test]
fn wasm_artifacts_interoperate_with_wkg() {
    let registry = Registry::start();
    let user = User::new();
    let insecure = ["--insecure", registry.addr.as_str()];

    // Ours, read by wkg: the same bytes come back.
    let ours = registry.reference("hello-ours:1");
    user.ok(&["push", artifacts::HELLO, &ours]);
    let out = tempfile::tempdir().unwrap();
    let pulled = out.path().join("pulled.wasm");
    run_ok(
        wkg()
            .args(["oci", "pull"])
            .args(insecure)
            .arg(&ours)
            .arg("-o")
            .arg(&pulled),
    );
    assert_eq!(
        std::fs::read(&pulled).unwrap(),
        std::fs::read(artifacts::HELLO).unwrap()
    );
    let raw = run_ok(Command::new("skopeo").args([
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{ours}"),
    ]));
    let raw: serde_json::Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(
        raw["config"]["mediaType"],
        "application/vnd.wasm.config.v0+json"
    );
    assert_eq!(raw["layers"][0]["mediaType"], "application/wasm");
    let config = run_ok(Command::new("skopeo").args([
        "inspect",
        "--config",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{ours}"),
    ]));
    let config: serde_json::Value = serde_json::from_str(&config).unwrap();
    assert_eq!(config["architecture"], "wasm");
    assert_eq!(config["os"], "wasip2");
    assert_eq!(config["layerDigests"][0], raw["layers"][0]["digest"]);
    assert!(
        config["component"]["exports"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e
                .as_str()
                .unwrap()
                .starts_with("wasi:http/incoming-handler@")),
        "{config}"
    );

    // wkg's, served by wms.
    let theirs = registry.reference("hello-wkg:1");
    run_ok(
        wkg()
            .args(["oci", "push"])
            .args(insecure)
            .arg(&theirs)
            .arg(artifacts::HELLO),
    );
    let inspect = user.inspect(&theirs);
    assert_eq!(inspect["kind"], "component", "{inspect}");
    assert_eq!(inspect["components"][0]["wasi"], "wasip2");
    assert!(
        inspect["components"][0]["world"]
            .as_str()
            .unwrap()
            .starts_with("wasi:http/proxy@"),
        "{inspect}"
    );
    let server = user.serve(&theirs, &[]);
    assert_eq!(get(server.url("/any/path")).1, "Hello from wms!\n");
    drop(server);

    // A command as an artifact runs with `wms run REF`.
    let cmd = registry.reference("cmd:1");
    run_ok(
        wkg()
            .args(["oci", "push"])
            .args(insecure)
            .arg(&cmd)
            .arg(artifacts::CMD),
    );
    let (code, stdout, stderr) = user.wms(&["run", &cmd, "args", "from", "a", "registry"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout.trim(), "from|a|registry", "{stderr}");
    // argv[0] is the repository's name, not the stored blob's digest.
    let (code, stdout, stderr) = user.wms(&["run", &cmd, "argv0"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout.trim(), "cmd", "{stderr}");
}

/// A registry holding examples/hello as `hello:1`, with the reference, the component's bytes and
/// their digest.
fn published_hello() -> (Registry, String, Vec<u8>, String) {
    let registry = Registry::start();
    let reference = registry.reference("hello:1");
    User::new().ok(&["push", examples("hello").to_str().unwrap(), &reference]);
    let hello = std::fs::read(artifacts::HELLO).unwrap();
    let digest = sha256(&hello);
    (registry, reference, hello, digest)
}

#[test]
fn a_tampered_blob_is_rejected_and_nothing_is_stored() {
    let (registry, reference, _, digest) = published_hello();
    // Same size, one byte changed, in the registry's own storage.
    let file = registry.blob_file(&digest);
    let mut bytes = std::fs::read(&file).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&file, &bytes).unwrap();

    let consumer = User::new();
    let (code, _, err) = consumer.wms(&["pull", &reference]);
    assert_ne!(code, 0);
    assert!(err.contains(&digest), "the error names the blob:\n{err}");
    assert!(err.contains("failed verification"), "{err}");
    assert!(!consumer.blob(&digest).exists());
    assert!(!consumer.partial(&digest).exists());
    // `wms up` refuses it the same way, and serves nothing.
    let (code, out, err) = consumer.wms(&["up", &reference, "--listen", "127.0.0.1:0"]);
    assert_ne!(code, 0);
    assert!(!out.contains("Serving"), "{out}");
    assert!(err.contains(&digest), "{err}");
}

#[test]
fn an_interrupted_pull_resumes_and_a_bad_partial_restarts() {
    // `_registry` keeps it serving to the end of the test.
    let (_registry, reference, hello, digest) = published_hello();

    // What an interrupted pull leaves behind: the first part of the blob.
    let consumer = User::new();
    consumer.seed_partial(&digest, &hello[..hello.len() / 2]);
    let (code, _, err) = consumer.wms(&["pull", &reference]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains(&format!(
            "resuming blob {digest} at byte {}",
            hello.len() / 2
        )),
        "{err}"
    );
    assert_eq!(std::fs::read(consumer.blob(&digest)).unwrap(), hello);

    // A partial file that is not a prefix of the blob: detected, started again, still right.
    let other = User::new();
    other.seed_partial(&digest, &[0u8; 1000]);
    let (code, _, err) = other.wms(&["pull", &reference]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("downloading it again from the start"), "{err}");
    assert_eq!(std::fs::read(other.blob(&digest)).unwrap(), hello);

    // Several processes pulling into one store at once (a service and an operator) all succeed.
    let shared = User::new();
    let pulls: Vec<_> = (0..6)
        .map(|_| {
            wms_command()
                .args(["pull", &reference])
                .envs(shared.env())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for p in pulls {
        let out = p.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(std::fs::read(shared.blob(&digest)).unwrap(), hello);
}

#[test]
fn basic_auth_uses_docker_credentials_and_wrong_ones_are_named() {
    let registry = Registry::start_with(Some(("alice", "s3cret")));
    let user = User::new();
    let reference = registry.reference("private/hello:1");
    let hello = examples("hello");

    let (code, _, err) = user.wms(&["push", hello.to_str().unwrap(), &reference]);
    assert_ne!(code, 0);
    assert!(err.contains("refused anonymous access"), "{err}");
    assert!(
        err.contains(&format!("wms login {}", registry.addr)),
        "{err}"
    );

    let (code, _, err) = user.wms_stdin(
        &["login", &registry.addr, "-u", "alice", "--password-stdin"],
        "wrong\n",
    );
    assert_ne!(code, 0);
    assert!(err.contains("refused user `alice`"), "{err}");
    assert!(!user.docker.path().join("config.json").exists());

    let (code, _, err) = user.wms_stdin(
        &["login", &registry.addr, "-u", "alice", "--password-stdin"],
        "s3cret\n",
    );
    assert_eq!(code, 0, "{err}");
    let config = std::fs::read_to_string(user.docker.path().join("config.json")).unwrap();
    assert!(config.contains(&registry.addr), "{config}");
    user.ok(&["push", hello.to_str().unwrap(), &reference]);
    user.ok(&["pull", &reference]);

    // Credentials as Docker wrote them, but stale: the error says whose and where from.
    let other = User::new();
    let auth = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        "alice:old-password",
    );
    std::fs::write(
        other.docker.path().join("config.json"),
        format!(r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#, registry.addr),
    )
    .unwrap();
    let (code, _, err) = other.wms(&["pull", &reference]);
    assert_ne!(code, 0);
    assert!(
        err.contains("refused the credentials of user `alice`"),
        "{err}"
    );
    assert!(err.contains("config.json"), "{err}");

    user.ok(&["logout", &registry.addr]);
    let (code, _, err) = user.wms(&["pull", &reference, "--registry-timeout", "5"]);
    assert_ne!(code, 0);
    assert!(err.contains("refused anonymous access"), "{err}");
}

#[test]
fn an_unreachable_registry_fails_clearly_and_in_bounded_time() {
    let user = User::new();
    // Nothing listens: refused at once.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let started = Instant::now();
    let (code, _, err) = user.wms(&["pull", &format!("127.0.0.1:{port}/hello:1")]);
    assert_ne!(code, 0);
    assert!(
        err.contains(&format!("cannot reach registry 127.0.0.1:{port}")),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));

    // Something accepts connections but never answers: bounded by --registry-timeout.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap();
    let started = Instant::now();
    let (code, _, err) = user.wms(&[
        "up",
        &format!("{addr}/hello:1"),
        "--registry-timeout",
        "2",
        "--listen",
        "127.0.0.1:0",
    ]);
    let took = started.elapsed();
    assert_ne!(code, 0);
    assert!(
        err.contains(&format!("cannot reach registry {addr}")),
        "{err}"
    );
    assert!(err.contains("no answer within 2s"), "{err}");
    assert!(took < Duration::from_secs(15), "took {took:?}");
    drop(silent);
}

#[test]
fn precompiled_layers_are_used_only_when_trusted_and_matching() {
    let registry = Registry::start();
    let publisher = User::new();
    let reference = registry.reference("hello-aot:1");
    let host = match std::env::consts::ARCH {
        "riscv64" => "riscv64gc",
        a => a,
    };
    let other = if host == "aarch64" {
        "x86_64"
    } else {
        "aarch64"
    };
    publisher.ok(&[
        "push",
        examples("hello").to_str().unwrap(),
        &reference,
        "--precompile",
        host,
        "--precompile",
        other,
    ]);
    let consumer = User::new();
    let inspect = consumer.inspect(&reference);
    let targets: Vec<&str> = inspect["layers"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["annotations"]["dev.wms.precompiled.target"].as_str())
        .collect();
    assert_eq!(targets, [host, other], "{inspect}");

    // Not trusted: compiled here from the wasm.
    let server = consumer.serve(&reference, &[]);
    assert_eq!(get(server.url("/")).1, "Hello from wms!\n");
    let log = server.log();
    assert!(!log.contains("loaded precompiled code"), "{log}");
    drop(server);

    // Trusted by configuration: this host's code is loaded.
    let server = Server::start_with_env(
        Path::new(&reference),
        &[],
        &[
            ("WMS_CACHE_DIR", consumer.cache.path()),
            ("DOCKER_CONFIG", consumer.docker.path()),
            ("WMS_TRUSTED_PUBLISHERS", Path::new(&registry.addr)),
        ],
    );
    assert_eq!(get(server.url("/")).1, "Hello from wms!\n");
    let log = server.log();
    assert!(log.contains("loaded precompiled code"), "{log}");
    drop(server);

    // A wasm artifact cannot carry precompiled code (wkg and runwasi expect one layer).
    let (code, _, err) = publisher.wms(&[
        "push",
        artifacts::HELLO,
        &registry.reference("x:1"),
        "--precompile",
        host,
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("exactly one layer"), "{err}");
}

#[test]
fn a_multi_platform_index_is_followed_to_its_wasm_entry() {
    let registry = Registry::start();
    let user = User::new();
    // Two manifests in one repository: a wasm artifact, and another image standing in for the
    // native build of the same service.
    let wasm = user.ok(&["push", artifacts::HELLO, &registry.reference("svc:wasm")]);
    let other = user.ok(&[
        "push",
        examples("multi").to_str().unwrap(),
        &registry.reference("svc:native"),
    ]);
    let entry = |pushed: &str, os: &str, arch: &str| {
        let digest = pushed.trim().rsplit('@').next().unwrap().to_string();
        let raw = run_ok(Command::new("skopeo").args([
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{}@{digest}", registry.reference("svc")),
        ]));
        serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest,
            "size": raw.len(),
            "platform": { "os": os, "architecture": arch },
        })
    };
    let put_index = |tag: &str, entries: Vec<serde_json::Value>| {
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": entries,
        });
        let url = format!("http://{}/v2/svc/manifests/{tag}", registry.addr);
        let status = rt().block_on(async {
            client()
                .put(url)
                .header("content-type", "application/vnd.oci.image.index.v1+json")
                .body(serde_json::to_vec(&index).unwrap())
                .send()
                .await
                .unwrap()
                .status()
        });
        assert!(status.is_success(), "{status}");
    };
    put_index(
        "1",
        vec![
            entry(&other, "linux", "amd64"),
            entry(&wasm, "wasip2", "wasm"),
        ],
    );
    put_index("native-only", vec![entry(&other, "linux", "amd64")]);

    let inspect = user.inspect(&registry.reference("svc:1"));
    assert_eq!(inspect["kind"], "component", "{inspect}");
    assert_eq!(
        inspect["digest"].as_str(),
        wasm.trim().rsplit('@').next(),
        "{inspect}"
    );
    let server = user.serve(&registry.reference("svc:1"), &[]);
    assert_eq!(get(server.url("/")).1, "Hello from wms!\n");
    drop(server);

    let (code, _, err) = user.wms(&["pull", &registry.reference("svc:native-only")]);
    assert_ne!(code, 0);
    assert!(
        err.contains("without a wasm entry (it has linux/amd64)"),
        "{err}"
    );
}

#[test]
fn a_credential_helper_that_never_answers_is_given_up_on_in_bounded_time() {
    use std::os::unix::fs::PermissionsExt as _;
    let (_registry, reference, _, _) = published_hello();
    let user = User::new();
    // A credential store whose helper hangs, like one waiting for a desktop keyring prompt.
    let bin = tempfile::tempdir().unwrap();
    let helper = bin.path().join("docker-credential-hang");
    std::fs::write(&helper, "#!/bin/sh\nsleep 60\n").unwrap();
    std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(
        user.docker.path().join("config.json"),
        r#"{"credsStore":"hang"}"#,
    )
    .unwrap();
    let path = format!(
        "{}:{}",
        bin.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let started = Instant::now();
    let out = wms_command()
        .args(["pull", &reference, "--registry-timeout", "2"])
        .envs(user.env())
        .env("PATH", path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("did not answer within 2s"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(20), "{err}");
}

/// Publishes, next to the image `base` (a wms app image), an image `tag` whose app manifest
/// layer is `manifest(wasm_digest)`: what a hostile publisher can push. Returns its reference.
fn republish_with_app_manifest(
    registry: &Registry,
    base: &str,
    tag: &str,
    manifest: impl Fn(&str) -> String,
) -> String {
    let repo = base.split('/').nth(1).unwrap().split(':').next().unwrap();
    let raw = run_ok(Command::new("skopeo").args([
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{base}"),
    ]));
    let mut image: serde_json::Value = serde_json::from_str(&raw).unwrap();
    let wasm = image["layers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["mediaType"] == "application/wasm")
        .unwrap()["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let text = manifest(&wasm);
    let digest = sha256(text.as_bytes());
    rt().block_on(async {
        let c = client();
        let r = c
            .post(format!("http://{}/v2/{repo}/blobs/uploads/", registry.addr))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.status());
        let location = r.headers()["location"].to_str().unwrap().to_string();
        let location = if location.starts_with('/') {
            format!("http://{}{location}", registry.addr)
        } else {
            location
        };
        let sep = if location.contains('?') { '&' } else { '?' };
        let r = c
            .put(format!("{location}{sep}digest={digest}"))
            .header("content-type", "application/octet-stream")
            .body(text.clone())
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.status());
        for l in image["layers"].as_array_mut().unwrap() {
            if l["mediaType"] == "application/vnd.wms.app.manifest.v1+toml" {
                l["digest"] = digest.clone().into();
                l["size"] = text.len().into();
            }
        }
        let r = c
            .put(format!(
                "http://{}/v2/{repo}/manifests/{tag}",
                registry.addr
            ))
            .header("content-type", "application/vnd.oci.image.manifest.v1+json")
            .body(serde_json::to_vec(&image).unwrap())
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.status());
    });
    registry.reference(&format!("{repo}:{tag}"))
}

/// `wms ARGS` that must end by itself within `limit` (a server that starts is killed and fails
/// the test); returns (exit code, stdout, stderr).
fn wms_bounded(user: &User, args: &[&str], limit: Duration) -> (i32, String, String) {
    let mut child = wms_command()
        .args(args)
        .envs(user.env())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "wms {args:?} still running after {limit:?}:\n{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn an_image_manifest_can_name_only_its_own_layers_never_a_host_path() {
    let registry = Registry::start();
    let publisher = User::new();
    let app = tempfile::tempdir().unwrap();
    std::fs::write(
        app.path().join("wms.toml"),
        format!(
            "spin_manifest_version = 2\n[application]\nname = \"kit\"\n[[trigger.http]]\nroute = \"/...\"\ncomponent = \"c\"\n[component.c]\nsource = {:?}\n",
            artifacts::TESTKIT
        ),
    )
    .unwrap();
    let base = registry.reference("kit:base");
    publisher.ok(&["push", app.path().to_str().unwrap(), &base]);
    let head = "spin_manifest_version = 2\n[application]\nname = \"kit\"\n[[trigger.http]]\nroute = \"/...\"\ncomponent = \"c\"\n[component.c]\n";
    // Each hostile manifest (`WASM` stands for the digest of the image's wasm layer), and what
    // the refusal must name.
    let zeros = format!("sha256:{}", "0".repeat(64));
    let cases = [
        (
            "table-files",
            "source = { digest = \"WASM\" }\n[[component.c.files]]\nsource = \"/etc\"\ndestination = \"/etc\"\n".to_string(),
            "file source `/etc` is a host path",
        ),
        (
            "inline-files",
            "source = { digest = \"WASM\" }\nfiles = [{ source = \"../../..\", destination = \"/\" }]\n".to_string(),
            "is a host path",
        ),
        (
            "pattern",
            "source = { digest = \"WASM\" }\nfiles = [\"/etc/passwd\"]\n".to_string(),
            "file pattern `/etc/passwd` names host files",
        ),
        (
            "host-source",
            "source = \"/bin/true\"\n".to_string(),
            "`source` names the host path `/bin/true`",
        ),
        (
            "foreign-digest",
            format!("source = {{ digest = \"WASM\" }}\nfiles = [{{ source = {{ digest = \"{zeros}\" }}, destination = \"/etc\" }}]\n"),
            "is not a layer of this image",
        ),
        (
            "wasm-as-files",
            "source = { digest = \"WASM\" }\nfiles = [{ source = { digest = \"WASM\" }, destination = \"/etc\" }]\n".to_string(),
            "not a files layer",
        ),
        (
            "build",
            "source = { digest = \"WASM\" }\n[component.c.build]\ncommand = \"touch /tmp/owned\"\n".to_string(),
            "has no build steps",
        ),
    ];
    let user = User::new();
    for (tag, component, expected) in &cases {
        let reference = republish_with_app_manifest(&registry, &base, tag, |wasm| {
            format!("{head}{}", component.replace("WASM", wasm))
        });
        // inspect shows the refusal, from the same parse `wms up` runs.
        let inspect = user.inspect(&reference);
        let refused = inspect["refused"].as_str().unwrap_or_default();
        assert!(refused.contains(expected), "{tag}: {inspect}");
        assert!(refused.contains("component `c`"), "{tag}: {refused}");
        let text = user.ok(&["inspect", "--remote", &reference]);
        assert!(text.contains("Refused"), "{tag}: {text}");
        // wms up refuses to start; it never serves the host's files.
        let (code, out, err) = wms_bounded(
            &user,
            &["up", &reference, "--listen", "127.0.0.1:0"],
            Duration::from_secs(60),
        );
        assert_ne!(code, 0, "{tag}: {out}\n{err}");
        assert!(!out.contains("Serving"), "{tag}: {out}");
        assert!(err.contains(expected), "{tag}: {err}");
        assert!(err.contains("help:"), "{tag}: {err}");
    }
    // The publisher's own image still runs, and its guest sees no host file.
    let inspect = user.inspect(&base);
    assert!(inspect["refused"].is_null(), "{inspect}");
    let server = user.serve(&base, &[]);
    let (status, body) = get(server.url("/read?path=/etc/passwd"));
    assert_eq!(status, 404, "{body}");
}

#[test]
fn oversized_app_manifests_and_nested_indexes_are_refused_before_download() {
    let (registry, reference, _, _) = published_hello();
    // An app manifest layer over the 1 MiB cap: padding in a TOML comment, otherwise valid.
    let big = republish_with_app_manifest(&registry, &reference, "big", |wasm| {
        format!(
            "spin_manifest_version = 2\n[application]\nname = \"big\"\n[[trigger.http]]\nroute = \"/...\"\ncomponent = \"c\"\n[component.c]\nsource = {{ digest = \"{wasm}\" }}\n# {}\n",
            "x".repeat((1 << 20) + 1)
        )
    });
    let user = User::new();
    let (code, _, err) = user.wms(&["pull", &big]);
    assert_ne!(code, 0);
    assert!(err.contains("app manifest layer sha256:"), "{err}");
    assert!(err.contains("over wms's 1 MiB limit"), "{err}");
    assert!(err.contains("help:"), "{err}");
    let (code, _, err) = user.wms(&["inspect", "--remote", &big]);
    assert_ne!(code, 0);
    assert!(err.contains("over wms's 1 MiB limit"), "{err}");
    // Nothing of it was stored.
    let blobs = std::fs::read_dir(user.cache.path().join("oci/blobs/sha256")).unwrap();
    assert_eq!(blobs.count(), 0);

    // An index whose wasm entry is another index (that one would lead to a real image): wms
    // follows exactly one level.
    let raw = |r: &str| {
        run_ok(Command::new("skopeo").args([
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{r}"),
        ]))
    };
    let put_index = |tag: &str, digest: &str, size: usize| -> (String, usize) {
        let index = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [{
                "mediaType": "application/vnd.oci.image.index.v1+json",
                "digest": digest,
                "size": size,
                "platform": { "os": "wasip2", "architecture": "wasm" },
            }],
        }))
        .unwrap();
        let url = format!("http://{}/v2/hello/manifests/{tag}", registry.addr);
        let status = rt().block_on(async {
            client()
                .put(url)
                .header("content-type", "application/vnd.oci.image.index.v1+json")
                .body(index.clone())
                .send()
                .await
                .unwrap()
                .status()
        });
        assert!(status.is_success(), "{status}");
        (sha256(&index), index.len())
    };
    let image = raw(&reference);
    let (inner, inner_size) = put_index("inner", &sha256(image.as_bytes()), image.len());
    // One level is followed (the inner index is an ordinary index of the image).
    let inspect = user.inspect(&registry.reference("hello:inner"));
    assert_eq!(inspect["kind"], "app", "{inspect}");
    put_index("outer", &inner, inner_size);
    let (code, _, err) = user.wms(&["pull", &registry.reference("hello:outer")]);
    assert_ne!(code, 0);
    assert!(
        err.contains(&format!("its wasm entry {inner} is itself an image index")),
        "{err}"
    );
}

#[test]
fn precompiled_code_is_trusted_by_whole_registry_and_verified_before_use() {
    let registry = Registry::start();
    let reference = registry.reference("hello-aot:1");
    let host = match std::env::consts::ARCH {
        "riscv64" => "riscv64gc",
        a => a,
    };
    User::new().ok(&[
        "push",
        examples("hello").to_str().unwrap(),
        &reference,
        "--precompile",
        host,
    ]);
    let trusting = |user: &User, publishers: &str| {
        Server::start_with_env(
            Path::new(&reference),
            &[],
            &[
                ("WMS_CACHE_DIR", user.cache.path()),
                ("DOCKER_CONFIG", user.docker.path()),
                ("WMS_TRUSTED_PUBLISHERS", Path::new(publishers)),
            ],
        )
    };
    // `127.0.0.1` names the registry on port 80, not this one on another port.
    let consumer = User::new();
    let server = trusting(&consumer, "127.0.0.1");
    assert_eq!(get(server.url("/")).1, "Hello from wms!\n");
    let log = server.log();
    assert!(!log.contains("loaded precompiled code"), "{log}");
    drop(server);

    // A precompiled blob changed in the store after the pull (the trailing checksum `wms
    // compile` writes is recomputed, so only the digest check can catch it): refused, removed,
    // and the component compiled from its wasm.
    let raw = run_ok(Command::new("skopeo").args([
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{reference}"),
    ]));
    let manifest: serde_json::Value = serde_json::from_str(&raw).unwrap();
    let code_digest = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["mediaType"] == "application/vnd.wms.precompiled.v1")
        .unwrap()["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let tamper = |path: &Path| {
        use sha2::Digest as _;
        let mut bytes = std::fs::read(path).unwrap();
        let body = bytes.len() - 32;
        bytes[body / 2] ^= 0x01;
        let sum = sha2::Sha256::digest(&bytes[..body]);
        bytes[body..].copy_from_slice(&sum);
        let mut perms = std::fs::metadata(path).unwrap().permissions();
        #[allow(clippy::permissions_set_readonly_false)]
        perms.set_readonly(false);
        std::fs::set_permissions(path, perms).unwrap();
        std::fs::write(path, &bytes).unwrap();
    };
    let victim = User::new();
    victim.ok(&["pull", &reference]);
    tamper(&victim.blob(&code_digest));
    let server = trusting(&victim, &registry.addr);
    assert_eq!(get(server.url("/")).1, "Hello from wms!\n");
    let log = server.log();
    assert!(!log.contains("loaded precompiled code"), "{log}");
    assert!(
        log.contains(&format!(
            "precompiled layer {code_digest} refused, not loaded"
        )),
        "{log}"
    );
    assert!(
        !victim.blob(&code_digest).exists(),
        "the damaged blob is removed"
    );
    drop(server);

    // Trusted by its exact registry: loaded. Then the copy prepared for this start is changed
    // on disk: checked at the next start, refused.
    let server = trusting(&consumer, &registry.addr);
    // Its log comes on stderr, read apart from the address on stdout: wait for the line.
    server.wait_for_log("loaded precompiled code");
    drop(server);
    let copies: Vec<PathBuf> = std::fs::read_dir(consumer.cache.path().join("oci/apps"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains(".precompiled-"))
        .collect();
    assert_eq!(copies.len(), 1, "{copies:?}");
    let copy = std::fs::read_dir(&copies[0])
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .unwrap();
    tamper(&copy);
    let server = trusting(&consumer, &registry.addr);
    assert_eq!(get(server.url("/")).1, "Hello from wms!\n");
    let log = server.log();
    assert!(!log.contains("loaded precompiled code"), "{log}");
    assert!(log.contains("removed, not loaded"), "{log}");
}

#[test]
fn a_cache_directory_others_can_write_is_refused() {
    use std::os::unix::fs::PermissionsExt as _;
    let (_registry, reference, _, _) = published_hello();
    let user = User::new();
    std::fs::set_permissions(user.cache.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let cache = user.cache.path().display().to_string();
    for app in [reference.as_str(), examples("hello").to_str().unwrap()] {
        let (code, out, err) = wms_bounded(
            &user,
            &["up", app, "--listen", "127.0.0.1:0"],
            Duration::from_secs(60),
        );
        assert_ne!(code, 0, "{app}: {out}\n{err}");
        assert!(!out.contains("Serving"), "{app}: {out}");
        assert!(
            err.contains(&format!("refusing the cache directory {cache}")),
            "{app}: {err}"
        );
        assert!(err.contains(&format!("chmod go-w {cache}")), "{app}: {err}");
    }
    // Its `oci/` store the same way, once the top is fixed.
    std::fs::set_permissions(user.cache.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    user.ok(&["pull", &reference]);
    let store = user.cache.path().join("oci");
    std::fs::set_permissions(&store, std::fs::Permissions::from_mode(0o775)).unwrap();
    let (code, _, err) = user.wms(&["up", &reference, "--listen", "127.0.0.1:0"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("its group may write to it (mode 0775)"),
        "{err}"
    );
    // A cache wms creates itself is private.
    let fresh = tempfile::tempdir().unwrap();
    let dir = fresh.path().join("new-cache");
    let out = wms_command()
        .args(["pull", &reference])
        .env("WMS_CACHE_DIR", &dir)
        .env("DOCKER_CONFIG", user.docker.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for d in [dir.clone(), dir.join("oci"), dir.join("oci/blobs/sha256")] {
        let mode = std::fs::metadata(&d).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{}", d.display());
    }
}

#[test]
fn login_never_sends_a_password_to_a_plain_http_token_service_off_this_machine() {
    use std::io::{Read as _, Write as _};
    // A registry on loopback (a tunnel, say) that names a remote plain-HTTP token service.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { break };
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = s.write_all(
                b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer realm=\"http://auth.invalid/token\",service=\"r\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
        }
    });
    let user = User::new();
    let (code, _, err) = user.wms_stdin(
        &[
            "login",
            &addr.to_string(),
            "-u",
            "alice",
            "--password-stdin",
        ],
        "s3cret\n",
    );
    assert_ne!(code, 0);
    assert!(
        err.contains("its token service http://auth.invalid/token is plain HTTP off this machine"),
        "{err}"
    );
    assert!(err.contains("nothing was sent to it"), "{err}");
    assert!(!user.docker.path().join("config.json").exists());
}

#[test]
fn an_image_cannot_grant_itself_the_nodes_local_addresses() {
    // A local manifest naming 127.0.0.1 may reach it (the operator's word); the same entry in
    // an image's manifest must not, or any image could reach the node's own services and the
    // cloud metadata address.
    let trap = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let trap_port = trap.local_addr().unwrap().port();
    let registry = Registry::start();
    let publisher = User::new();
    let app = tempfile::tempdir().unwrap();
    std::fs::write(
        app.path().join("wms.toml"),
        format!(
            "spin_manifest_version = 2\n[application]\nname = \"kit\"\n[[trigger.http]]\nroute = \"/...\"\ncomponent = \"c\"\n[component.c]\nsource = {:?}\n",
            artifacts::TESTKIT
        ),
    )
    .unwrap();
    let base = registry.reference("kit:base");
    publisher.ok(&["push", app.path().to_str().unwrap(), &base]);
    let reference = republish_with_app_manifest(&registry, &base, "local", |wasm| {
        format!(
            "spin_manifest_version = 2\n[application]\nname = \"kit\"\n[application.tool.wms]\npool_resident_budget = \"1TiB\"\n[[trigger.http]]\nroute = \"/...\"\ncomponent = \"c\"\n[component.c]\nsource = {{ digest = \"{wasm}\" }}\nallowed_outbound_hosts = [\"http://127.0.0.1:{trap_port}\"]\n"
        )
    });
    let user = User::new();
    let server = user.serve(&reference, &[]);
    let (status, body) = get(server.url(&format!("/outbound?url=http://127.0.0.1:{trap_port}/")));
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("DestinationIpProhibited"), "{body}");
    trap.set_nonblocking(true).unwrap();
    assert!(
        trap.accept().is_err(),
        "the image's guest reached 127.0.0.1"
    );
    // Nor does the image decide how much of the host's memory the pool keeps.
    let log = server.wait_for_log("pool_resident_budget");
    assert!(log.contains("is ignored"), "{log}");
    assert!(!log.contains("set by the operator"), "{log}");
}

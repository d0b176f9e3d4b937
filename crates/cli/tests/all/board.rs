//! The subset that must pass on every board: serving, routing, a trap, a timeout, a memory
//! limit, concurrency, and a pool sized to the address space. `scripts/test-board PROFILE` runs
//! it against a cross-built `wms` under qemu-user with the board's CPU and address-space limits
//! (`WMS_TEST_BIN`, `WMS_TEST_RUNNER`); without them it runs against the native build.

use std::time::{Duration, Instant};

use crate::harness::{Server, client, emulated, examples, rt, slack, testkit_app};

#[test]
fn board_serves_routes_and_echoes() {
    let server = Server::start(&examples("multi"), &[]);
    rt().block_on(async {
        let resp = client().get(server.url("/hello")).send().await.unwrap();
        assert_eq!(resp.text().await.unwrap(), "Hello from wms!\n");
        let resp = client()
            .post(server.url("/echo/x?y=1"))
            .header("x-a", "b")
            .body("body")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["x-echo-path"], "/echo/x?y=1");
        assert_eq!(resp.headers()["x-echo-header-x-a"], "b");
        assert_eq!(
            resp.headers()["x-echo-header-spin-matched-route"],
            "/echo/..."
        );
        assert_eq!(resp.text().await.unwrap(), "body");
        assert_eq!(
            client()
                .get(server.url("/none"))
                .send()
                .await
                .unwrap()
                .status(),
            404
        );
    });
}

#[test]
fn board_pool_is_on_and_sized_to_fit() {
    let server = Server::start(&examples("hello"), &[]);
    // Cranelift on x86_64, aarch64 and riscv64; Pulley, picked by wms, elsewhere (armv7).
    let log = server.wait_for_log(": engine ");
    let line = log.lines().find(|l| l.contains(": engine ")).unwrap();
    assert!(
        line.contains("pooling allocator:"),
        "pooling is off: {line}"
    );
    // "N slots, R reservation + G guard per memory, ..., X reserved of Y probed"
    let slots: u64 = line
        .split("pooling allocator: ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(slots >= 8, "{line}");
    let gib = |s: &str| -> f64 {
        let n: f64 = s
            .trim_end_matches("GiB")
            .trim_end_matches("MiB")
            .trim_end_matches("KiB")
            .parse()
            .unwrap();
        if s.ends_with("GiB") {
            n
        } else if s.ends_with("MiB") {
            n / 1024.0
        } else {
            n / 1024.0 / 1024.0
        }
    };
    let tail = line.split(" reserved of ").collect::<Vec<_>>();
    let reserved = gib(tail[0].rsplit(' ').next().unwrap());
    let probed = gib(tail[1].split(' ').next().unwrap().trim_end_matches(';'));
    assert!(
        reserved <= probed / 2.0 + 0.01,
        "the pool takes more than half the address space: {line}"
    );
    rt().block_on(async {
        assert_eq!(
            client().get(server.url("/")).send().await.unwrap().status(),
            200
        );
    });
    eprintln!("pool chosen: {line}");
}

#[test]
fn board_limits_hold() {
    let manifest = testkit_app(&[
        ("kit", "/...", ""),
        (
            "slow",
            "/slow/...",
            "[component.slow.tool.wms]\ntimeout = \"2s\"\nmax_concurrent_requests = 1",
        ),
        (
            "small",
            "/small/...",
            "[component.small.tool.wms]\nmax_memory = \"16MiB\"",
        ),
    ]);
    let server = Server::with_manifest(&manifest, &[]);
    rt().block_on(async {
        let status = |path: &'static str| {
            let url = server.url(path);
            async move { client().get(url).send().await.unwrap().status().as_u16() }
        };
        assert_eq!(status("/trap").await, 500);
        assert_eq!(status("/fine").await, 200);
        assert_eq!(status("/small/hog").await, 500);
        assert_eq!(status("/fine").await, 200);
        let start = Instant::now();
        let looping = tokio::spawn(status("/slow/loop"));
        server.wait_for_log_async("testkit: loop started").await;
        // The one slot of `slow` is taken: 503 at once.
        assert_eq!(status("/slow/fine").await, 503);
        assert_eq!(looping.await.unwrap(), 504);
        let took = start.elapsed();
        assert!(
            took >= Duration::from_secs(2) && took < Duration::from_secs(4) + slack(),
            "took {took:?}"
        );
        assert_eq!(status("/fine").await, 200);
    });
    server.wait_for_log("exceeded its memory limit of 16MiB");
    if emulated() {
        eprintln!("emulated: timings above are not performance figures");
    }
}

/// Regression: on riscv64 without the vector extension (VisionFive 2), Cranelift panicked
/// compiling the Spin SDK example and took wms down. Now a component Cranelift cannot compile
/// for this CPU runs in the Pulley interpreter (with a warning), and everything else stays
/// native.
#[test]
fn board_component_cranelift_cannot_compile_still_serves() {
    let server = Server::start(&examples("spin-hello"), &[]);
    rt().block_on(async {
        let resp = client().get(server.url("/")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.text().await.unwrap(), "Hello World!");
    });
    let log = server.log();
    if log.contains("Cranelift cannot compile this component") {
        assert!(log.contains("runs in the Pulley interpreter"), "{log}");
    }
}

/// The memory of the board being modelled: what its cgroup limit is set to in the test.
fn modelled_board_memory() -> (u64, &'static str) {
    let runner = std::env::var(crate::harness::ENV_TEST_RUNNER).unwrap_or_default();
    if runner.contains("riscv64") {
        (8 << 30, "VisionFive 2 (8 GB)")
    } else if runner.contains("aarch64") {
        (4 << 30, "Jetson Nano (4 GB)")
    } else if runner.contains("qemu-arm") {
        (1 << 30, "Raspberry Pi 3 (1 GB)")
    } else {
        (4 << 30, "a 4 GB board (native build)")
    }
}

#[test]
fn board_resident_budget_fits_the_board_memory() {
    // The host has more memory than the board: a memory cgroup limited to the board's memory
    // stands for it, as systemd's MemoryMax= or a container limit would on the board.
    let (memory, board) = modelled_board_memory();
    let Some((server, cgroup)) =
        crate::harness::serve_in_memory_cgroup(&testkit_app(&[("kit", "/...", "")]), memory)
    else {
        return;
    };
    let log = server.wait_for_log("kept resident between requests");
    let expected = format!(
        "at most {}MiB (1/16 of the cgroup memory limit {}GiB) in total",
        (memory / 16) >> 20,
        memory >> 30
    );
    assert!(log.contains(&expected), "{board}: {log}");
    rt().block_on(async {
        let resp = client().get(server.url("/fine")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
    });
    drop(server);
    drop(cgroup);
}

/// Runs `openssl` with `args` in `dir`; panics with its output if it fails.
fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl (scripts/test installs it)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A private CA, a server certificate for 127.0.0.1 and a client certificate, in `dir`:
/// `ca.pem`, `server.pem`/`server.key`, `client.pem`/`client.key`.
fn make_certificates(dir: &std::path::Path) {
    let key = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509", "-days", "2", "-subj", "/CN=wms test CA"];
    ca.extend(key);
    ca.extend(["-keyout", "ca.key", "-out", "ca.pem"]);
    openssl(dir, &ca);
    for (name, ext) in [
        (
            "server",
            "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        ),
        ("client", "extendedKeyUsage=clientAuth\n"),
    ] {
        let (csr, pem, keyfile, extfile, subj) = (
            format!("{name}.csr"),
            format!("{name}.pem"),
            format!("{name}.key"),
            format!("{name}.ext"),
            format!("/CN=wms test {name}"),
        );
        std::fs::write(dir.join(&extfile), ext).unwrap();
        let mut req = vec!["req", "-subj", subj.as_str()];
        req.extend(key);
        req.extend(["-keyout", keyfile.as_str(), "-out", csr.as_str()]);
        openssl(dir, &req);
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                &extfile,
                "-out",
                &pem,
            ],
        );
    }
}

/// `openssl s_server` answering HTTPS on `port` with a status page, asking every client for a
/// certificate signed by the test CA; killed when dropped.
struct TlsServer(std::process::Child);

impl TlsServer {
    fn start(dir: &std::path::Path, port: u16) -> Self {
        let child = std::process::Command::new("openssl")
            .args(["s_server", "-accept"])
            .arg(format!("127.0.0.1:{port}"))
            .args([
                "-cert",
                "server.pem",
                "-key",
                "server.key",
                "-CAfile",
                "ca.pem",
                "-Verify",
                "1",
                "-www",
                "-quiet",
            ])
            .current_dir(dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("openssl");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "openssl s_server did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        TlsServer(child)
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn board_reaches_https_with_the_operators_ca_and_client_certificate() {
    // rustls with ring on the board's CPU: the handshake, the server's certificate checked
    // against the CA of the runtime config's [[client_tls]], and a client certificate presented.
    let dir = tempfile::tempdir().unwrap();
    make_certificates(dir.path());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _tls = TlsServer::start(dir.path(), port);
    let d = dir.path().display();
    let config = dir.path().join("runtime-config.toml");
    std::fs::write(
        &config,
        format!(
            "[[client_tls]]\ncomponent_ids = [\"mtls\"]\nhosts = [\"127.0.0.1:{port}\"]\nca_use_webpki_roots = false\nca_roots_file = \"{d}/ca.pem\"\ncert_chain_file = \"{d}/client.pem\"\nprivate_key_file = \"{d}/client.key\"\n\n[[client_tls]]\ncomponent_ids = [\"nocert\"]\nhosts = [\"127.0.0.1:{port}\"]\nca_roots_file = \"{d}/ca.pem\"\n"
        ),
    )
    .unwrap();
    let allowed = format!("allowed_outbound_hosts = [\"https://127.0.0.1:{port}\"]");
    let manifest = testkit_app(&[
        ("mtls", "/mtls/...", &allowed),
        ("nocert", "/nocert/...", &allowed),
        ("public", "/public/...", &allowed),
    ]);
    let server = Server::with_manifest(
        &manifest,
        &["--runtime-config-file", config.to_str().unwrap()],
    );
    let fetch = |component: &str| {
        rt().block_on(async {
            let r = client()
                .get(server.url(&format!(
                    "/{component}/outbound?url=https://127.0.0.1:{port}/"
                )))
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        })
    };
    // The CA and the client certificate: through.
    let (status, body) = fetch("mtls");
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("upstream 200: "), "{body}");
    assert!(body.contains("s_server"), "{body}");
    // The CA but no client certificate: the server ends the handshake.
    let (status, body) = fetch("nocert");
    assert_eq!(status, 502, "{body}");
    // Only the public roots (no [[client_tls]] for this component): the certificate is refused.
    let (status, body) = fetch("public");
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("Tls"), "{body}");
}

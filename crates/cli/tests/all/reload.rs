//! Reloading a running `wms up`: SIGHUP and `--watch` swap in a new version of the app while
//! Debian's `wrk` keeps it busy; requests in flight finish on the old version; a broken version
//! is refused and the old one keeps serving.

use std::io::Read as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{Server, artifacts, client, rt};

/// The line wms logs once a new version serves.
const RELOADED: &str = "reloaded app `reload`";
/// The line wms logs when it refuses a new version.
const REFUSED: &str = "reload failed, keeping the previous version";

/// A manifest serving `source` on every path, with `VERSION` in the component's environment.
fn manifest(source: &str, version: &str) -> String {
    format!(
        "spin_manifest_version = 2\n[application]\nname = \"reload\"\n[[trigger.http]]\nroute = \"/...\"\ncomponent = \"web\"\n[component.web]\nsource = {source:?}\nenvironment = {{ VERSION = {version:?} }}\n"
    )
}

/// Writes `bytes` to `path` in one step (a rename), as an editor or a deploy does.
fn replace(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn sighup(server: &Server) {
    // SAFETY: kill with the pid of a child this test started.
    assert_eq!(unsafe { libc::kill(server.pid(), libc::SIGHUP) }, 0);
}

fn count(server: &Server, needle: &str) -> usize {
    server.log().matches(needle).count()
}

/// Waits until `needle` has been logged `n` times (a minute at most: a reload compiles).
fn wait_for_count(server: &Server, needle: &str, n: usize) {
    let start = Instant::now();
    while count(server, needle) < n {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{needle:?} was not logged {n} times:\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

async fn get(url: String) -> (u16, String) {
    let r = client().get(url).send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

fn get_now(url: String) -> (u16, String) {
    rt().block_on(get(url))
}

/// Runs `wrk` on `url` until stopped; [`Wrk::finish`] stops it and checks it saw no failure.
struct Wrk(std::process::Child);

impl Wrk {
    fn start(url: &str) -> Wrk {
        let child = Command::new("wrk")
            .args(["-t2", "-c16", "-d300s", "--latency", url])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("wrk is not installed: apt-get install wrk");
        Wrk(child)
    }

    /// Stops wrk (SIGINT makes it print its report) and returns the report, asserting that
    /// every request was answered 2xx or 3xx and no connection failed.
    fn finish(mut self) -> String {
        // SAFETY: kill with the pid of a child this test started.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGINT) };
        let mut report = String::new();
        self.0
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut report)
            .unwrap();
        let status = self.0.wait().unwrap();
        assert!(status.success(), "wrk failed ({status}):\n{report}");
        assert!(
            !report.contains("Socket errors") && !report.contains("Non-2xx"),
            "requests failed during the reloads:\n{report}"
        );
        let requests: u64 = report
            .split(" requests in ")
            .next()
            .and_then(|l| l.split_whitespace().last())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no request count in wrk's report:\n{report}"));
        assert!(requests > 0, "{report}");
        report
    }
}

impl Drop for Wrk {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn five_reloads_under_load_fail_no_request_and_switch_versions() {
    let dir = tempfile::tempdir().unwrap();
    let wasm = dir.path().join("web.wasm");
    let testkit = std::fs::read(artifacts::TESTKIT).unwrap();
    let hello = std::fs::read(artifacts::HELLO).unwrap();
    std::fs::write(&wasm, &testkit).unwrap();
    let toml = dir.path().join("wms.toml");
    std::fs::write(&toml, manifest("web.wasm", "v0")).unwrap();
    let server = Server::start(dir.path(), &["--admin-listen", "0"]);
    assert_eq!(get_now(server.url("/env")).0, 200);
    assert!(get_now(server.url("/env")).1.contains("VERSION=v0\n"));
    let load = Wrk::start(&server.url("/env"));
    // Odd versions: the testkit with the manifest's VERSION; even ones: another component in
    // the same file.
    for n in 1..=5 {
        let version = format!("v{n}");
        replace(&wasm, if n % 2 == 1 { &testkit } else { &hello });
        replace(&toml, manifest("web.wasm", &version).as_bytes());
        sighup(&server);
        wait_for_count(&server, RELOADED, n);
        // Swapped before the line is logged: the next request is the new version's.
        let (status, body) = get_now(server.url("/env"));
        assert_eq!(status, 200, "{body}");
        if n % 2 == 1 {
            assert!(body.contains(&format!("VERSION={version}\n")), "{body}");
        } else {
            assert_eq!(body, "Hello from wms!\n");
        }
        // Still ready, and nothing reloaded on its own (no --watch: no watcher).
        assert_eq!(
            get_now(server.admin_url("/readyz")),
            (200, "ready\n".into())
        );
        assert_eq!(count(&server, RELOADED), n, "{}", server.log());
    }
    let report = load.finish();
    let log = server.log();
    assert!(!log.contains(REFUSED) && !log.contains("--watch"), "{log}");
    assert!(
        log.contains("components added: none; removed: none; changed: `web`"),
        "{log}"
    );
    let metrics = get_now(server.admin_url("/metrics")).1;
    assert!(
        metrics.contains("wms_reloads_total{result=\"success\"} 5\n")
            && metrics.contains("wms_reloads_total{result=\"failure\"} 0\n"),
        "{metrics}"
    );
    eprintln!("{report}");
}

#[test]
fn a_broken_version_is_refused_and_the_old_one_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(artifacts::TESTKIT, dir.path().join("web.wasm")).unwrap();
    let toml = dir.path().join("wms.toml");
    std::fs::write(&toml, manifest("web.wasm", "v1")).unwrap();
    let server = Server::start(dir.path(), &["--admin-listen", "0"]);
    let serves_v1 = || {
        let (status, body) = get_now(server.url("/env"));
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("VERSION=v1\n"), "{body}");
    };
    serves_v1();

    // A manifest that does not parse: the error names the file.
    replace(&toml, b"spin_manifest_version = 2\n[application\n");
    sighup(&server);
    wait_for_count(&server, REFUSED, 1);
    let log = server.log();
    let line = log.lines().find(|l| l.contains(REFUSED)).unwrap();
    assert!(line.contains(&toml.display().to_string()), "{line}");
    serves_v1();
    assert_eq!(
        get_now(server.admin_url("/readyz")),
        (200, "ready\n".into())
    );

    // A component that is not wasm: the error names it.
    std::fs::write(dir.path().join("bad.wasm"), b"#!/bin/sh\necho not wasm\n").unwrap();
    replace(&toml, manifest("bad.wasm", "v2").as_bytes());
    sighup(&server);
    wait_for_count(&server, REFUSED, 2);
    let log = server.log();
    let line = log.lines().filter(|l| l.contains(REFUSED)).nth(1).unwrap();
    assert!(line.contains("component `web`"), "{line}");
    serves_v1();
    assert_eq!(
        get_now(server.admin_url("/readyz")),
        (200, "ready\n".into())
    );

    // A good version after them is taken.
    replace(&toml, manifest("web.wasm", "v3").as_bytes());
    sighup(&server);
    wait_for_count(&server, RELOADED, 1);
    assert!(get_now(server.url("/env")).1.contains("VERSION=v3\n"));
    let metrics = get_now(server.admin_url("/metrics")).1;
    assert!(
        metrics.contains("wms_reloads_total{result=\"success\"} 1\n")
            && metrics.contains("wms_reloads_total{result=\"failure\"} 2\n"),
        "{metrics}"
    );
}

#[test]
fn a_request_in_flight_finishes_on_the_old_version() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(artifacts::TESTKIT, dir.path().join("kit.wasm")).unwrap();
    std::fs::copy(artifacts::HELLO, dir.path().join("hello.wasm")).unwrap();
    let toml = dir.path().join("wms.toml");
    std::fs::write(&toml, manifest("kit.wasm", "v1")).unwrap();
    let server = Server::start(dir.path(), &[]);
    rt().block_on(async {
        let slow = tokio::spawn(get(server.url("/slow?ms=10000")));
        server.wait_for_log_async("testkit: slow started").await;
        // The new version serves every path with another component.
        replace(&toml, manifest("hello.wasm", "v2").as_bytes());
        sighup(&server);
        while count(&server, RELOADED) < 1 {
            assert!(!slow.is_finished(), "{}", server.log());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            get(server.url("/slow?ms=10000")).await,
            (200, "Hello from wms!\n".into())
        );
        assert!(
            !slow.is_finished(),
            "the slow request ended before the reload finished: nothing was tested"
        );
        assert_eq!(slow.await.unwrap(), (200, "slept 10000ms".into()));
    });
    assert!(server.log().contains("changed: `web`"), "{}", server.log());
}

#[test]
fn watch_rebuilds_a_component_when_its_watched_files_change() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = format!(
        "spin_manifest_version = 2\n[application]\nname = \"reload\"\n[[trigger.http]]\nroute = \"/...\"\ncomponent = \"web\"\n[component.web]\nsource = \"out/web.wasm\"\n[component.web.build]\ncommand = '''mkdir -p out && case \"$(cat version.txt)\" in hello) cp \"$HELLO\" out/web.wasm;; kit) cp \"$KIT\" out/web.wasm;; *) echo \"no version $(cat version.txt)\" >&2; exit 3;; esac'''\nwatch = [\"version.txt\"]\nenvironment = {{ HELLO = {:?}, KIT = {:?} }}\n",
        artifacts::HELLO,
        artifacts::TESTKIT
    );
    std::fs::write(dir.path().join("wms.toml"), manifest).unwrap();
    let version = dir.path().join("version.txt");
    std::fs::write(&version, "kit\n").unwrap();
    let server = Server::start(dir.path(), &["--build", "--watch"]);
    server.wait_for_log("--watch: watching");
    assert_eq!(get_now(server.url("/fine")), (200, "testkit: fine".into()));

    replace(&version, b"hello\n");
    wait_for_count(&server, RELOADED, 1);
    assert!(
        server.log().contains("building component `web`"),
        "{}",
        server.log()
    );
    assert_eq!(
        get_now(server.url("/fine")),
        (200, "Hello from wms!\n".into())
    );

    // A failing build: its output is logged and the old version keeps serving.
    replace(&version, b"broken\n");
    wait_for_count(&server, REFUSED, 1);
    let log = server.log();
    assert!(
        log.contains("build command") && log.contains("no version broken"),
        "{log}"
    );
    assert_eq!(
        get_now(server.url("/fine")),
        (200, "Hello from wms!\n".into())
    );

    replace(&version, b"kit\n");
    wait_for_count(&server, RELOADED, 2);
    assert_eq!(get_now(server.url("/fine")), (200, "testkit: fine".into()));
}

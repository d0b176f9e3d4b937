//! Operations: the admin listener's `/metrics`, `/healthz` and `/readyz`, scraped by Debian's
//! real `prometheus` after a known sequence of requests.

use std::io::{BufRead as _, BufReader};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{Server, client, examples, rt, testkit_app};

async fn get(url: String) -> (u16, String) {
    let r = client().get(url).send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// The value of the sample `series` (name and labels exactly as printed) in `text`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn admin_listener_serves_health_and_metrics_and_nothing_else() {
    let manifest = testkit_app(&[("kit", "/...", "")]);
    let server = Server::with_manifest(&manifest, &["--admin-listen", "0"]);
    let admin = server.admin.expect("wms printed no admin address");
    // A bare port means loopback.
    assert!(admin.ip().is_loopback(), "{admin}");
    rt().block_on(async {
        assert_eq!(
            get(server.admin_url("/healthz")).await,
            (200, "ok\n".into())
        );
        assert_eq!(
            get(server.admin_url("/readyz")).await,
            (200, "ready\n".into())
        );
        assert_eq!(get(server.admin_url("/")).await.0, 404);
        assert_eq!(get(server.admin_url("/fine")).await.0, 404);
        let post = client()
            .post(server.admin_url("/metrics"))
            .send()
            .await
            .unwrap();
        assert_eq!(post.status(), 405);
        for _ in 0..3 {
            assert_eq!(get(server.url("/fine")).await.0, 200);
        }
        assert_eq!(get(server.url("/trap")).await.0, 500);
        let r = client()
            .get(server.admin_url("/metrics"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(
            r.headers()["content-type"],
            "text/plain; version=0.0.4; charset=utf-8"
        );
        let text = r.text().await.unwrap();
        let kit = "component=\"kit\"";
        let route = format!("{kit},route=\"/...\"");
        for (series, want) in [
            (format!("wms_requests_total{{{route},class=\"2xx\"}}"), 3.0),
            (format!("wms_requests_total{{{route},class=\"5xx\"}}"), 1.0),
            (
                format!("wms_request_duration_seconds_count{{{route}}}"),
                4.0,
            ),
            (
                format!("wms_instantiation_duration_seconds_count{{{kit}}}"),
                4.0,
            ),
            (
                format!("wms_guest_failures_total{{{kit},reason=\"trap\"}}"),
                1.0,
            ),
            (
                format!("wms_guest_failures_total{{{kit},reason=\"timeout\"}}"),
                0.0,
            ),
            (format!("wms_rejected_requests_total{{{kit}}}"), 0.0),
        ] {
            assert_eq!(sample(&text, &series), Some(want), "{series} in:\n{text}");
        }
        // Loaded once, compiled or from the compiled-code cache (other tests may have filled it).
        let loads: f64 = ["compiled", "cache"]
            .iter()
            .filter_map(|o| {
                sample(
                    &text,
                    &format!("wms_code_loads_total{{{kit},origin=\"{o}\"}}"),
                )
            })
            .sum();
        assert_eq!(loads, 1.0, "{text}");
        let memory = sample(
            &text,
            &format!("wms_guest_memory_high_water_bytes{{{kit}}}"),
        )
        .unwrap();
        assert!(memory >= 65536.0, "{memory}");
        assert!(sample(&text, "process_resident_memory_bytes").unwrap() > 1e6);
        assert!(sample(&text, "process_cpu_seconds_total").unwrap() > 0.0);
        // The pool: nothing in flight now.
        assert_eq!(
            sample(&text, "wms_pool_slots{state=\"in_use\"}"),
            Some(0.0),
            "{text}"
        );
        assert!(sample(&text, "wms_pool_slots{state=\"free\"}").unwrap() >= 1.0);
    });
    // A connection held open to the app is counted (the admin listener's are not).
    let _held = std::net::TcpStream::connect(server.addr).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let text = rt().block_on(get(server.admin_url("/metrics"))).1;
    assert!(
        sample(&text, "wms_open_connections").unwrap() >= 1.0,
        "{text}"
    );
}

#[test]
fn without_an_admin_listener_there_is_none() {
    let server = Server::start(&examples("hello"), &[]);
    assert_eq!(server.admin, None);
    assert!(!server.log().contains("admin listener"));
}

#[test]
fn readyz_is_503_while_draining_and_healthz_stays_200() {
    let manifest = testkit_app(&[("kit", "/...", "")]);
    let mut server = Server::with_manifest(&manifest, &["--admin-listen", "127.0.0.1:0"]);
    let slow = server.url("/slow?ms=2000");
    let in_flight = std::thread::spawn(move || rt().block_on(get(slow)));
    std::thread::sleep(Duration::from_millis(400));
    rt().block_on(async {
        assert_eq!(get(server.admin_url("/readyz")).await.0, 200);
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(server.pid(), libc::SIGTERM) };
        server.wait_for_log("SIGTERM received");
        assert_eq!(
            get(server.admin_url("/readyz")).await,
            (503, "draining: shutting down\n".into())
        );
        assert_eq!(get(server.admin_url("/healthz")).await.0, 200);
    });
    assert_eq!(in_flight.join().unwrap().0, 200);
    let status = server.child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
}

/// Debian's `prometheus`, scraping `target` every second, with its storage in a temporary
/// directory; killed on drop.
struct Prometheus {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(target: std::net::SocketAddr) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: wms\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        // Prometheus cannot listen on port 0 and say where: take a free port and give it back.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("prometheus is not installed: apt-get install prometheus");
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("prometheus: {line}");
            }
        });
        let p = Prometheus {
            child,
            url: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        };
        let start = Instant::now();
        rt().block_on(async {
            loop {
                if let Ok(r) = client().get(format!("{}/-/ready", p.url)).send().await
                    && r.status() == 200
                {
                    break;
                }
                assert!(
                    start.elapsed() < Duration::from_secs(60),
                    "prometheus did not become ready"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        p
    }

    /// The single value `query` (PromQL, e.g. `sum(...)`) evaluates to now; `None` when empty.
    async fn query(&self, query: &str) -> Option<f64> {
        let url = format!("{}/api/v1/query?query={}", self.url, percent_encode(query));
        let body: serde_json::Value = serde_json::from_str(&get(url).await.1).unwrap();
        assert_eq!(body["status"], "success", "{query}: {body}");
        let result = body["data"]["result"].as_array().unwrap();
        let value = result.first()?["value"][1].as_str()?;
        value.parse().ok()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[test]
fn prometheus_scrapes_the_counters_of_a_known_sequence() {
    let upstream = Server::start(&examples("hello"), &[]);
    let manifest = testkit_app(&[(
        "kit",
        "/...",
        &format!(
            "allowed_outbound_hosts = [\"http://127.0.0.1:{}\"]\n[component.kit.tool.wms]\ntimeout = \"1s\"\nmax_concurrent_requests = 1",
            upstream.addr.port()
        ),
    )]);
    let server = Server::with_manifest(&manifest, &["--admin-listen", "0"]);
    let prometheus = Prometheus::start(server.admin.unwrap());
    const GOOD: usize = 5;
    rt().block_on(async {
        for _ in 0..GOOD {
            assert_eq!(get(server.url("/fine")).await.0, 200);
        }
        assert_eq!(get(server.url("/trap")).await.0, 500);
        assert_eq!(get(server.url("/loop")).await.0, 504);
        // The component's one slot is taken (within its 1 s timeout): the next request is
        // turned away.
        let slow = tokio::spawn(get(server.url("/slow?ms=800")));
        server.wait_for_log_async("testkit: slow started").await;
        assert_eq!(get(server.url("/fine")).await.0, 503);
        assert_eq!(slow.await.unwrap().0, 200);
        let allowed = format!("/outbound?url=http://{}/", upstream.addr);
        assert_eq!(get(server.url(&allowed)).await.0, 200);
        let denied = get(server.url("/outbound?url=http://127.0.0.1:1/")).await;
        assert_eq!(denied.0, 502, "{}", denied.1);
    });
    let kit = "component=\"kit\"";
    let expected: Vec<(String, f64)> = vec![
        (
            format!("sum(wms_requests_total{{{kit},class=\"2xx\"}})"),
            GOOD as f64 + 2.0,
        ),
        (
            format!("sum(wms_requests_total{{{kit},class=\"5xx\"}})"),
            4.0,
        ),
        (
            format!("sum(wms_requests_total{{{kit},class=\"4xx\"}})"),
            0.0,
        ),
        (
            format!("sum(wms_request_duration_seconds_count{{{kit}}})"),
            GOOD as f64 + 6.0,
        ),
        (
            format!("sum(wms_guest_failures_total{{{kit},reason=\"trap\"}})"),
            1.0,
        ),
        (
            format!("sum(wms_guest_failures_total{{{kit},reason=\"timeout\"}})"),
            1.0,
        ),
        (
            format!("sum(wms_guest_failures_total{{{kit},reason=\"memory_limit\"}})"),
            0.0,
        ),
        (format!("sum(wms_rejected_requests_total{{{kit}}})"), 1.0),
        (
            format!("sum(wms_outbound_requests_total{{{kit},outcome=\"allowed\"}})"),
            1.0,
        ),
        (
            format!("sum(wms_outbound_requests_total{{{kit},outcome=\"denied\"}})"),
            1.0,
        ),
        // Every request but the rejected one had its own instance.
        (
            format!("sum(wms_instantiation_duration_seconds_count{{{kit}}})"),
            GOOD as f64 + 5.0,
        ),
        ("sum(up{job=\"wms\"})".to_string(), 1.0),
    ];
    // Scraped every second: wait until a scrape after the sequence is in.
    let start = Instant::now();
    let got = rt().block_on(async {
        loop {
            let mut got = Vec::new();
            for (q, _) in &expected {
                got.push((q.clone(), prometheus.query(q).await));
            }
            let done = got
                .iter()
                .zip(&expected)
                .all(|((_, g), (_, want))| *g == Some(*want));
            if done || start.elapsed() > Duration::from_secs(30) {
                break got;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    for ((q, g), (_, want)) in got.iter().zip(&expected) {
        assert_eq!(*g, Some(*want), "{q}");
    }
    // The looping guest ran for its 1 s timeout: its CPU time, sampled at the 10 ms tick, is
    // most of that (less when the machine's cores were busy elsewhere), never more.
    let cpu = rt()
        .block_on(prometheus.query(&format!("sum(wms_guest_cpu_seconds_total{{{kit}}})")))
        .unwrap();
    eprintln!("guest CPU time of the sequence: {cpu} s");
    assert!((0.2..=1.5).contains(&cpu), "guest CPU {cpu} s");
    let memory = rt()
        .block_on(prometheus.query(&format!("max(wms_guest_memory_high_water_bytes{{{kit}}})")))
        .unwrap();
    assert!(memory >= 65536.0, "{memory}");
    let rss = rt()
        .block_on(prometheus.query("process_resident_memory_bytes{job=\"wms\"}"))
        .unwrap();
    assert!(rss > 1e6, "{rss}");
}

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

/// Asks the testkit guest to print a line on each of its outputs (with `traceparent`, if
/// given), then to trap (without).
fn log_and_trap(server: &Server, traceparent: Option<&str>) {
    rt().block_on(async {
        let mut req = client().get(server.url("/log"));
        if let Some(t) = traceparent {
            req = req.header("traceparent", t);
        }
        assert_eq!(req.send().await.unwrap().status(), 200);
        assert_eq!(get(server.url("/trap")).await.0, 500);
    });
    server.wait_for_log("to stderr from the guest");
    server.wait_for_log("guest trapped");
}

#[test]
fn json_logs_name_the_request_on_every_line_about_it_including_guest_output() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("wms.toml"),
        testkit_app(&[("kit", "/...", "")]),
    )
    .unwrap();
    let server = Server::start_with_env(
        dir.path(),
        &[],
        &[("WMS_LOG_FORMAT", std::path::Path::new("json"))],
    );
    log_and_trap(&server, Some(TRACEPARENT));
    let log = server.log();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let find = |needle: &str| {
        lines
            .iter()
            .find(|v| v["message"].as_str().is_some_and(|m| m.contains(needle)))
            .unwrap_or_else(|| panic!("no line with {needle:?} in:\n{log}"))
    };
    // The guest's own output, on both streams, carries the id from `traceparent`.
    for needle in ["to stdout from the guest", "to stderr from the guest"] {
        let line = find(needle);
        assert_eq!(line["span"]["request_id"], TRACE_ID, "{line}");
        assert_eq!(line["span"]["name"], "request", "{line}");
        assert_eq!(line["component"], "kit", "{line}");
        assert_eq!(line["target"], "wms::guest", "{line}");
    }
    // A request without one gets an id of the same form, its own.
    let trap = find("guest trapped");
    let id = trap["span"]["request_id"].as_str().unwrap();
    assert_eq!(id.len(), 32, "{trap}");
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{trap}");
    assert_ne!(id, TRACE_ID);
    assert_eq!(trap["level"], "ERROR");
    // Lines not about a request have no span.
    let start = find("engine cranelift");
    assert!(start.get("span").is_none(), "{start}");
}

#[test]
fn text_logs_name_the_request_too() {
    let server = Server::with_manifest(&testkit_app(&[("kit", "/...", "")]), &[]);
    log_and_trap(&server, Some(TRACEPARENT));
    let log = server.log();
    let line = log
        .lines()
        .find(|l| l.contains("to stdout from the guest"))
        .unwrap();
    assert!(
        line.contains(&format!("request{{request_id={TRACE_ID}}}")),
        "{line}"
    );
    let trap = log.lines().find(|l| l.contains("guest trapped")).unwrap();
    assert!(trap.contains("request{request_id="), "{trap}");
    assert!(!trap.contains(TRACE_ID), "{trap}");
}

/// Regression: under load, a response the client had read whole was often dropped by the
/// server a moment before its guest's task ended, and the guest was logged as cancelled because
/// its client went away (hundreds of times a second under wrk, with every response delivered).
/// A guest whose response ended is no longer cancelled or logged as such.
#[test]
fn a_response_read_whole_is_not_logged_as_a_client_that_went_away() {
    let server = Server::start(&examples("hello"), &[]);
    let out = Command::new("wrk")
        .args(["-t1", "-c16", "-d3s", &server.url("/")])
        .output()
        .expect("wrk is not installed: apt-get install wrk");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "wrk failed:\n{report}");
    assert!(
        !report.contains("Socket errors") && !report.contains("Non-2xx"),
        "{report}"
    );
    let requests: u64 = report
        .lines()
        .find_map(|l| l.trim().split_once(" requests in ")?.0.parse().ok())
        .unwrap_or_else(|| panic!("no request count in wrk's report:\n{report}"));
    assert!(requests > 1000, "{report}");
    // wrk's connections close at its end, possibly with requests in flight: those few are
    // real cancellations. Everything before is answered.
    std::thread::sleep(Duration::from_millis(300));
    let log = server.log();
    let cancelled = log.matches("client went away").count();
    assert!(
        cancelled <= 16,
        "{cancelled} of {requests} requests logged as cancelled by a client that went away"
    );
}

//! Guests that fail in every way cost one request, never the process.

use std::io::{Read as _, Write as _};
use std::time::{Duration, Instant};

use crate::harness::{Server, client, examples, rt, testkit_app};

fn kit(extra: &str) -> Server {
    Server::with_manifest(&testkit_app(&[("kit", "/...", extra)]), &[])
}

async fn status(url: String) -> u16 {
    client().get(url).send().await.unwrap().status().as_u16()
}

#[test]
fn trap_is_500_and_the_next_request_succeeds() {
    let server = kit("");
    rt().block_on(async {
        assert_eq!(status(server.url("/trap")).await, 500);
        assert_eq!(status(server.url("/fine")).await, 200);
        assert_eq!(status(server.url("/trap")).await, 500);
        assert_eq!(status(server.url("/fine")).await, 200);
    });
    let log = server.wait_for_log("guest trapped");
    assert!(
        log.lines()
            .any(|l| l.contains("guest trapped") && l.contains("component=kit")),
        "{log}"
    );
}

#[test]
fn infinite_loop_is_504_within_the_timeout_and_the_server_keeps_serving() {
    let server = kit("[component.kit.tool.wms]\ntimeout = \"1s\"");
    rt().block_on(async {
        let start = Instant::now();
        // Meanwhile another request on the same server is answered promptly.
        let looping = tokio::spawn(status(server.url("/loop")));
        server.wait_for_log_async("testkit: loop started").await;
        let quick = Instant::now();
        assert_eq!(status(server.url("/fine")).await, 200);
        assert!(
            quick.elapsed() < Duration::from_millis(700),
            "a looping guest starved the server"
        );
        assert_eq!(looping.await.unwrap(), 504);
        let took = start.elapsed();
        assert!(
            took >= Duration::from_secs(1) && took < Duration::from_millis(2500),
            "took {took:?}"
        );
        assert_eq!(status(server.url("/fine")).await, 200);
    });
    server.wait_for_log("exceeded its timeout");
}

#[test]
fn timeout_also_covers_a_guest_waiting_on_the_host() {
    let server = kit("[component.kit.tool.wms]\ntimeout = \"500ms\"");
    rt().block_on(async {
        let start = Instant::now();
        assert_eq!(status(server.url("/slow?ms=5000")).await, 504);
        assert!(start.elapsed() < Duration::from_secs(2));
    });
}

#[test]
fn memory_hog_is_500_and_logged_as_a_memory_limit() {
    let server = kit("[component.kit.tool.wms]\nmax_memory = \"16MiB\"");
    rt().block_on(async {
        assert_eq!(status(server.url("/hog")).await, 500);
        assert_eq!(status(server.url("/fine")).await, 200);
    });
    server.wait_for_log("exceeded its memory limit of 16MiB");
}

#[test]
fn guest_that_never_sets_a_response_is_500() {
    let server = kit("");
    rt().block_on(async {
        assert_eq!(status(server.url("/no-response")).await, 500);
        assert_eq!(status(server.url("/fine")).await, 200);
    });
    server.wait_for_log("without setting a response");
}

#[test]
fn timeout_after_headers_were_sent_cuts_the_body_off() {
    let server = kit("[component.kit.tool.wms]\ntimeout = \"1s\"");
    rt().block_on(async {
        let resp = client()
            .get(server.url("/headers-then-loop"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "headers were already on the wire");
        assert!(
            resp.bytes().await.is_err(),
            "the body must end in an error, not look complete"
        );
        assert_eq!(status(server.url("/fine")).await, 200);
    });
}

#[test]
fn component_concurrency_limit_answers_503_quickly() {
    let server = kit("[component.kit.tool.wms]\nmax_concurrent_requests = 2");
    rt().block_on(async {
        let slow = (0..2)
            .map(|_| tokio::spawn(status(server.url("/slow?ms=1500"))))
            .collect::<Vec<_>>();
        tokio::time::sleep(Duration::from_millis(400)).await;
        let start = Instant::now();
        let resp = client().get(server.url("/fine")).send().await.unwrap();
        assert_eq!(resp.status(), 503);
        assert_eq!(resp.headers()["retry-after"], "1");
        assert!(
            start.elapsed() < Duration::from_millis(300),
            "503 took {:?}",
            start.elapsed()
        );
        for s in slow {
            assert_eq!(s.await.unwrap(), 200);
        }
        assert_eq!(status(server.url("/fine")).await, 200);
    });
    // Every failure is logged, overloads too (as warnings naming the component and the scope).
    server.wait_for_log("503: too many concurrent requests (component `kit`: 2 requests limit)");
}

#[test]
fn process_concurrency_limit_answers_503() {
    let manifest = testkit_app(&[("kit", "/...", "")]).replace(
        "[application]\nname = \"testkit\"\n",
        "[application]\nname = \"testkit\"\n[application.tool.wms]\nmax_concurrent_requests = 1\n",
    );
    assert!(manifest.contains("max_concurrent_requests = 1"));
    let server = Server::with_manifest(&manifest, &[]);
    rt().block_on(async {
        let slow = tokio::spawn(status(server.url("/slow?ms=1000")));
        server.wait_for_log_async("testkit: slow started").await;
        assert_eq!(status(server.url("/fine")).await, 503);
        assert_eq!(slow.await.unwrap(), 200);
    });
}

#[test]
fn oversized_body_is_413() {
    let server = Server::start(&examples("multi"), &["--max-body", "1000"]);
    rt().block_on(async {
        let resp = client()
            .post(server.url("/echo/x"))
            .body(vec![0u8; 2000])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 413);
        let resp = client()
            .post(server.url("/echo/x"))
            .body(vec![0u8; 1000])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    });
}

#[test]
fn slow_client_headers_are_cut_off() {
    let server = Server::start(&examples("hello"), &["--header-timeout", "1"]);
    let mut stream = std::net::TcpStream::connect(server.addr).unwrap();
    stream.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let start = Instant::now();
    let mut buf = Vec::new();
    // The server answers 408 or just closes; either way the read ends, well before 5 s.
    let _ = stream.read_to_end(&mut buf);
    let took = start.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "connection held for {took:?}"
    );
    rt().block_on(async { assert_eq!(status(server.url("/")).await, 200) });
}

#[test]
fn sigterm_lets_the_in_flight_request_finish_then_exits_0() {
    let mut server = kit("");
    let url = server.url("/slow?ms=1500");
    let pid = server.pid();
    let result = std::thread::spawn(move || {
        rt().block_on(async {
            let resp = client().get(url).send().await.unwrap();
            (resp.status().as_u16(), resp.text().await.unwrap())
        })
    });
    std::thread::sleep(Duration::from_millis(400));
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let (code, body) = result.join().unwrap();
    assert_eq!((code, body.as_str()), (200, "slept 1500ms"));
    let start = Instant::now();
    let status = loop {
        if let Some(s) = server.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "wms did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(0));
    // New connections are refused once it is gone.
    assert!(std::net::TcpStream::connect(server.addr).is_err());
}

#[test]
fn guests_hoarding_files_cannot_take_the_servers_descriptors() {
    // 1024 descriptors: guests together may hold 512, of which their own opens 384, so five
    // hoarders (each capped at 256) run into both their own cap and the shared budget, and
    // there is still room for plain requests' mounts. Before the caps, each opened files until
    // the process ran out (about 900 together), `accept` failed and plain requests waited.
    let manifest = testkit_app(&[("kit", "/...", "files = [\"wms.toml\"]")]);
    let server = Server::with_manifest_runner(&manifest, &[], |cmd| {
        crate::harness::limit_descriptors(cmd, 1024)
    });
    let url = |path: &str| format!("http://{}{path}", server.addr);
    rt().block_on(async {
        let hoarders = (0..5)
            .map(|_| {
                let url = url("/hoard-files?ms=2000");
                tokio::spawn(async move {
                    let resp = client().get(url).send().await.unwrap();
                    (resp.status().as_u16(), resp.text().await.unwrap())
                })
            })
            .collect::<Vec<_>>();
        tokio::time::sleep(Duration::from_millis(500)).await;
        // Meanwhile plain requests, each on a new connection (a new accept), are answered.
        for _ in 0..10 {
            let start = Instant::now();
            let resp = tokio::time::timeout(
                Duration::from_secs(5),
                reqwest::Client::new().get(url("/fine")).send(),
            )
            .await
            .expect("a plain request waited while guests hoarded files")
            .unwrap();
            assert_eq!(resp.status(), 200, "after {:?}", start.elapsed());
        }
        let mut total = 0;
        for h in hoarders {
            let (status, body) = h.await.unwrap();
            // The testkit answers 500 with what happened: the open failed after N files.
            assert_eq!(status, 500, "{body}");
            let n: usize = body
                .strip_prefix("opened ")
                .and_then(|b| b.split(' ').next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("{body}"));
            assert!(
                n <= 256,
                "a guest held {n} files, over its cap of 256: {body}"
            );
            assert!(!body.contains("no error"), "{body}");
            total += n;
        }
        assert!(
            total <= 512,
            "guests held {total} files, over their budget of 512"
        );
        assert_eq!(status(url("/fine")).await, 200);
    });
    let log = server.log();
    assert!(!log.contains("accept failed"), "{log}");
    assert!(
        log.contains("descriptor limit 1024: guests together at most 512"),
        "{log}"
    );
}

#[test]
fn guest_output_is_escaped_truncated_and_rate_limited() {
    let server = kit("");
    rt().block_on(async {
        let resp = client()
            .get(server.url("/log-flood?lines=2000"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(status(server.url("/fine")).await, 200);
    });
    let log = server.wait_for_log("lines of guest output in the last second");
    // Escaped: the guest can neither colour the terminal nor start a line of its own.
    assert!(
        log.contains("\\u{1b}[31mred\\u{1b}[0m and\\rINFO wms: forged line"),
        "{log}"
    );
    assert!(!log.contains("\x1b[31mred"), "{log}");
    assert!(
        log.contains(&format!("{} [truncated]", "y".repeat(100))),
        "{log}"
    );
    assert!(
        !log.contains(&"y".repeat(5000)),
        "a 10 KB line was logged whole"
    );
    let flood = log.matches("flood line").count();
    assert!(flood < 1000, "{flood} of 2000 lines were logged");
    assert!(log.contains("dropped"), "{log}");
}

#[test]
fn streams_of_dropped_descriptors_still_count_against_the_cap() {
    // A read stream shares its file's host descriptor: opening, keeping the stream and
    // dropping the descriptor got around the cap of 256 (about 2,800 per instance) before.
    let server = Server::with_manifest(
        &testkit_app(&[("kit", "/...", "files = [\"wms.toml\"]")]),
        &[],
    );
    rt().block_on(async {
        let resp = client()
            .get(server.url("/hoard-streams"))
            .send()
            .await
            .unwrap();
        let body = resp.text().await.unwrap();
        let n: usize = body
            .strip_prefix("opened ")
            .and_then(|b| b.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{body}"));
        assert!(n <= 256, "a guest held {n} files through streams: {body}");
        assert!(body.contains("quota"), "{body}");
        assert_eq!(status(server.url("/fine")).await, 200);
    });
}

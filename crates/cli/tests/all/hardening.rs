//! Hostile clients: idle, half-open and abandoned connections cost the server a bounded amount
//! of time, descriptors and instance slots.

use std::io::Write as _;
use std::time::{Duration, Instant};

use crate::harness::{Server, client, rt, testkit_app};

async fn status(url: String) -> u16 {
    client().get(url).send().await.unwrap().status().as_u16()
}

#[test]
fn a_guest_is_cancelled_when_its_client_goes_away() {
    // One instance slot, a guest that would hold it for 30 s.
    let server = Server::with_manifest(
        &testkit_app(&[(
            "kit",
            "/...",
            "[component.kit.tool.wms]\nmax_concurrent_requests = 1\ntimeout = \"30s\"",
        )]),
        &[],
    );
    for path in ["/slow?ms=30000", "/loop"] {
        let mut stream = std::net::TcpStream::connect(server.addr).unwrap();
        write!(stream, "GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
        // The guest says when it has begun (a fixed sleep here failed under a loaded CI).
        server.wait_for_log(&format!("testkit: {} started", &path[1..5]));
        // The slot is taken while the client waits...
        rt().block_on(async { assert_eq!(status(server.url("/fine")).await, 503) });
        drop(stream);
        // ...and free again soon after it leaves, long before the guest's timeout.
        let left = Instant::now();
        loop {
            let s = rt().block_on(status(server.url("/fine")));
            if s == 200 {
                break;
            }
            assert!(
                left.elapsed() < Duration::from_secs(5),
                "{path}: the abandoned guest still holds its slot"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    server.wait_for_log("client went away; guest cancelled");
}

/// Reads from `stream` until the server closes it; returns how long that took (panics after
/// `limit`).
fn closed_within(stream: &mut std::net::TcpStream, limit: Duration) -> Duration {
    use std::io::Read as _;
    let start = Instant::now();
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return start.elapsed(),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return start.elapsed(),
        }
        assert!(
            start.elapsed() < limit,
            "the server kept the connection open for {limit:?}"
        );
    }
}

fn hello(args: &[&str]) -> Server {
    Server::start(&crate::harness::examples("hello"), args)
}

#[test]
fn silent_and_half_open_clients_are_dropped_within_the_header_timeout() {
    let server = hello(&["--header-timeout", "1s", "--idle-timeout", "1s"]);
    // Connects and says nothing (before the fix: held forever by the protocol detection read).
    let mut silent = std::net::TcpStream::connect(server.addr).unwrap();
    // Stops in the middle of the HTTP/2 preface.
    let mut half = std::net::TcpStream::connect(server.addr).unwrap();
    half.write_all(b"PRI * HTTP/2.0\r\n").unwrap();
    // Stops in the middle of an HTTP/1 request head.
    let mut partial = std::net::TcpStream::connect(server.addr).unwrap();
    partial.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n").unwrap();
    for (what, s) in [
        ("silent", &mut silent),
        ("half preface", &mut half),
        ("partial head", &mut partial),
    ] {
        let took = closed_within(s, Duration::from_secs(8));
        eprintln!("{what}: closed after {took:?}");
    }
}

#[test]
fn idle_keep_alive_connections_are_closed_for_both_protocols() {
    use std::io::Read as _;
    let server = hello(&["--idle-timeout", "1s"]);
    // HTTP/1.1: one request, then nothing.
    let mut h1 = std::net::TcpStream::connect(server.addr).unwrap();
    h1.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
    let mut buf = [0u8; 1024];
    let n = h1.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    closed_within(&mut h1, Duration::from_secs(8));
    // HTTP/2 (prior knowledge): one request, then nothing. hyper's pings alone would keep such
    // a live but idle connection open forever; wms ends it with GOAWAY.
    rt().block_on(async {
        let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        let (mut send, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(tcp),
        )
        .await
        .unwrap();
        let conn = tokio::spawn(conn);
        let req = http::Request::get(format!("http://{}/", server.addr))
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        drop(resp);
        let ended = tokio::time::timeout(Duration::from_secs(8), conn).await;
        assert!(ended.is_ok(), "the idle HTTP/2 connection was kept open");
    });
}

/// The connection watcher checks on a timer of its own, not on every request: a request that
/// runs longer than the idle bound keeps its connection, and an idle bound shorter than the
/// header bound applies from the first response's end (the deadline moves earlier there).
#[test]
fn the_idle_bound_runs_from_the_last_response_and_never_cuts_a_request() {
    use std::io::Read as _;
    let manifest = format!(
        "spin_manifest_version = 2\n[application]\nname = \"slow\"\n\
         [[trigger.http]]\nroute = \"/...\"\ncomponent = \"p3\"\n\
         [component.p3]\nsource = {:?}\n",
        crate::harness::artifacts::P3KIT
    );
    let server = Server::with_manifest(
        &manifest,
        &["--header-timeout", "8s", "--idle-timeout", "1s"],
    );
    let mut conn = std::net::TcpStream::connect(server.addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    // 2.5 s in flight, more than twice the idle bound.
    conn.write_all(b"GET /slow?ms=2500 HTTP/1.1\r\nhost: x\r\n\r\n")
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.ends_with(b"0\r\n\r\n") {
        let n = conn.read(&mut buf).unwrap();
        assert!(
            n > 0,
            "the connection was closed with its request in flight"
        );
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("slept 2500ms"), "{text}");
    // Idle from here: closed after about 1 s, not at the 8 s header bound.
    let took = closed_within(&mut conn, Duration::from_secs(5));
    assert!(took >= Duration::from_millis(800), "closed after {took:?}");
}

#[test]
fn at_the_connection_cap_idle_clients_cannot_lock_out_real_ones() {
    let server = hello(&["--max-connections", "4", "--header-timeout", "2s"]);
    let idle: Vec<_> = (0..8)
        .map(|_| std::net::TcpStream::connect(server.addr).unwrap())
        .collect();
    // A real client gets in once the silent ones have been dropped.
    let started = Instant::now();
    let s = rt().block_on(status(server.url("/")));
    assert_eq!(s, 200);
    assert!(started.elapsed() < Duration::from_secs(20));
    server.wait_for_log("connection limit of 4 reached");
    drop(idle);
}

#[test]
fn idle_clients_cannot_exhaust_the_descriptors() {
    // 256 descriptors: the default cap is a quarter of them. 300 idle clients would have taken
    // them all ("accept failed: Too many open files") and locked everyone out.
    let server = Server::start_with_runner(
        &crate::harness::examples("hello"),
        &["--header-timeout", "3s"],
        |cmd| crate::harness::limit_descriptors(cmd, 256),
    );
    let idle: Vec<_> = (0..300)
        .filter_map(|_| std::net::TcpStream::connect(server.addr).ok())
        .collect();
    assert!(idle.len() >= 200, "only {} connected", idle.len());
    let s = rt().block_on(status(server.url("/")));
    assert_eq!(s, 200);
    let log = server.wait_for_log("connection limit of 64 reached");
    assert!(!log.contains("accept failed"), "{log}");
    drop(idle);
}

#[test]
fn a_client_that_stalls_its_body_gets_408_quickly() {
    use std::io::Read as _;
    // One instance slot and a 60 s timeout, which a stalled body must not be able to use up.
    let server = Server::with_manifest(
        &testkit_app(&[(
            "kit",
            "/...",
            "[component.kit.tool.wms]\nmax_concurrent_requests = 1\ntimeout = \"60s\"",
        )]),
        &["--body-idle-timeout", "1s"],
    );
    let mut stream = std::net::TcpStream::connect(server.addr).unwrap();
    // Declares 100 bytes, sends 10, then nothing; the guest reads the whole body first.
    stream
        .write_all(b"POST /consume HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n0123456789")
        .unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let started = Instant::now();
    let mut text = String::new();
    let _ = stream.read_to_string(&mut text);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(started.elapsed() < Duration::from_secs(8));
    server.wait_for_log("sent no request body data for 1s: 408");
    // The slot is free again.
    rt().block_on(async { assert_eq!(status(server.url("/fine")).await, 200) });
}

#[test]
fn a_streamed_body_over_the_limit_is_413_whatever_the_guest_answers() {
    let server = Server::with_manifest(
        &testkit_app(&[("kit", "/...", "")]),
        &["--max-body", "1000"],
    );
    // HTTP/2: no content-length, so the limit is only found while streaming (and no early
    // answer is lost to a reset while the client still sends, as can happen on HTTP/1.1).
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    rt().block_on(async {
        let chunks: Vec<Result<bytes::Bytes, std::io::Error>> = (0..10)
            .map(|_| Ok(bytes::Bytes::from(vec![b'x'; 500])))
            .collect();
        let body = reqwest::Body::wrap_stream(futures::stream::iter(chunks));
        let r = h2
            .post(server.url("/consume"))
            .body(body)
            .send()
            .await
            .unwrap();
        // The guest answers 422 for a body error; the client is told what happened.
        assert_eq!(r.status(), 413);
        let r = h2
            .post(server.url("/consume"))
            .body(vec![b'x'; 900])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.unwrap(), "consumed 900 bytes");
    });
    server.wait_for_log("request body over the limit of 1000 bytes: 413");
}

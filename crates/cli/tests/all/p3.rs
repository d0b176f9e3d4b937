//! WASI 0.3 (`wasi:http/handler@0.3`) components: served beside 0.2 ones, with instances reused
//! within the component's bounds, and a broken instance never reused.

use std::io::{Read as _, Write as _};
use std::time::Duration;

use crate::harness::{Server, artifacts, client, rt};

/// An app with the 0.3 test guest at `/p3/...` (extra lines under its `tool.wms`) and the 0.2
/// one at `/p2/...`.
fn app(tool: &str) -> String {
    format!(
        "spin_manifest_version = 2\n[application]\nname = \"mixed\"\n\
         [[trigger.http]]\nroute = \"/p3/...\"\ncomponent = \"p3\"\n\
         [[trigger.http]]\nroute = \"/p2/...\"\ncomponent = \"p2\"\n\
         [component.p3]\nsource = {:?}\n[component.p3.tool.wms]\n{tool}\n\
         [component.p2]\nsource = {:?}\n",
        artifacts::P3KIT,
        artifacts::TESTKIT
    )
}

/// GETs `path`; the status and the `x-instance-requests` header (0 when absent).
fn get(server: &Server, path: &str) -> (u16, u32) {
    rt().block_on(async {
        let r = client().get(server.url(path)).send().await.unwrap();
        let seen = r
            .headers()
            .get("x-instance-requests")
            .map(|v| v.to_str().unwrap().parse().unwrap())
            .unwrap_or(0);
        let status = r.status().as_u16();
        let _ = r.bytes().await;
        (status, seen)
    })
}

#[test]
fn a_03_component_is_served_beside_a_02_one_and_reuses_its_instance() {
    let server = Server::with_manifest(&app(""), &[]);
    let seen: Vec<u32> = (0..5)
        .map(|_| get(&server, "/p3/hello"))
        .map(|(s, n)| {
            assert_eq!(s, 200);
            n
        })
        .collect();
    // One instance served them all, in order (wasmtime serve's default: 128 per instance).
    assert_eq!(seen, [1, 2, 3, 4, 5]);
    rt().block_on(async {
        let body = client()
            .get(server.url("/p3/hello"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(body, "hello from p3\n");
        let r = client().get(server.url("/p2/fine")).send().await.unwrap();
        assert_eq!(r.status(), 200);
    });
    let log = server.log();
    assert!(log.contains("wasi:http 0.3"), "{log}");
}

#[test]
fn reuse_follows_the_components_bounds() {
    // max_requests = 1: a fresh instance per request, as for 0.2.
    let server = Server::with_manifest(&app("max_requests = 1"), &[]);
    for _ in 0..3 {
        assert_eq!(get(&server, "/p3/hello"), (200, 1));
    }
    drop(server);
    // Two requests per instance.
    let server = Server::with_manifest(&app("max_requests = 2"), &[]);
    let seen: Vec<u32> = (0..4).map(|_| get(&server, "/p3/hello").1).collect();
    assert_eq!(seen, [1, 2, 1, 2]);
    drop(server);
    // An instance idle past its idle timeout is gone.
    let server = Server::with_manifest(&app("idle_timeout = \"200ms\""), &[]);
    assert_eq!(get(&server, "/p3/hello").1, 1);
    assert_eq!(get(&server, "/p3/hello").1, 2);
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(get(&server, "/p3/hello").1, 1);
}

#[test]
fn concurrent_requests_share_an_instance_up_to_its_bound() {
    // Eight slow requests at once on instances that take at most four each.
    let server = Server::with_manifest(&app("max_concurrent_per_instance = 4"), &[]);
    let seen = rt().block_on(async {
        let all: Vec<_> = (0..8)
            .map(|_| {
                let url = server.url("/p3/slow?ms=300");
                tokio::spawn(async move {
                    let r = client().get(url).send().await.unwrap();
                    assert_eq!(r.status(), 200);
                    r.headers()["x-instance-requests"]
                        .to_str()
                        .unwrap()
                        .parse::<u32>()
                        .unwrap()
                })
            })
            .collect();
        let mut seen = Vec::new();
        for r in all {
            seen.push(r.await.unwrap());
        }
        seen
    });
    // Each instance numbers its requests from 1: no number above 4, and at least two instances.
    assert!(seen.iter().all(|&n| (1..=4).contains(&n)), "{seen:?}");
    assert!(seen.iter().filter(|&&n| n == 1).count() >= 2, "{seen:?}");
}

/// Trap, timeout and memory limit each get their status, and the next request gets a fresh
/// instance (its counter starts at 1), never the broken one.
#[test]
fn a_broken_instance_is_never_reused() {
    let server = Server::with_manifest(&app("timeout = \"1s\"\nmax_memory = \"32MiB\""), &[]);
    for (path, status) in [("/p3/trap", 500), ("/p3/loop", 504), ("/p3/hog", 500)] {
        assert_eq!(get(&server, "/p3/hello").0, 200);
        let (s, _) = get(&server, "/p3/hello");
        assert_eq!(s, 200);
        assert_eq!(get(&server, path).0, status, "{path}");
        assert_eq!(get(&server, "/p3/hello"), (200, 1), "after {path}");
    }
    // An error code instead of a response is a failed request, not a broken instance.
    assert_eq!(get(&server, "/p3/hello").1, 2);
    assert_eq!(get(&server, "/p3/fail").0, 500);
    assert_eq!(get(&server, "/p3/hello").1, 4);
    let log = server.log();
    assert!(log.contains("instance discarded"), "{log}");
    assert!(log.contains("memory limit"), "{log}");
    assert!(log.contains("timeout"), "{log}");
}

#[test]
fn bodies_stream_both_ways_with_trailers() {
    let server = Server::with_manifest(&app(""), &[]);
    // A chunked request with a trailer, on a plain socket, so the trailers can be seen.
    let mut s = std::net::TcpStream::connect(server.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let chunks = ["hello, ", "streaming ", "world"];
    let mut req = String::from(
        "POST /p3/echo HTTP/1.1\r\nhost: x\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\nte: trailers\r\ntrailer: x-sum\r\nconnection: close\r\n\r\n",
    );
    for c in chunks {
        req.push_str(&format!("{:x}\r\n{c}\r\n", c.len()));
    }
    req.push_str("0\r\nx-sum: 42\r\n\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let body: String = dechunk(out.split_once("\r\n\r\n").unwrap().1);
    assert_eq!(body, "hello, streaming world");
    assert!(out.to_ascii_lowercase().contains("x-sum: 42"), "{out}");

    // A large body streams through without being held whole.
    rt().block_on(async {
        let big = vec![b'x'; 8 << 20];
        let r = client()
            .post(server.url("/p3/echo"))
            .body(big.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.bytes().await.unwrap().len(), big.len());
    });
}

/// The data of a chunked body (trailers after the last chunk are left out).
fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    loop {
        let (size, rest) = s.split_once("\r\n").unwrap();
        let size = usize::from_str_radix(size.trim(), 16).unwrap();
        if size == 0 {
            return out;
        }
        out.push_str(&rest[..size]);
        s = &rest[size + 2..];
    }
}

#[test]
fn spin_headers_reach_a_03_guest() {
    let server = Server::with_manifest(&app(""), &[]);
    rt().block_on(async {
        let body = client()
            .get(server.url("/p3/a/headers?q=1"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(body.contains("spin-full-url: http://"), "{body}");
        assert!(body.contains("spin-path-info: /a/headers"), "{body}");
        assert!(body.contains("spin-component-route: /p3"), "{body}");
    });
}

#[test]
fn a_spin_4_template_app_runs_with_its_spin_toml_unchanged() {
    // examples/spin4-hello is Spin 4's http-rust template with the Spin Rust SDK 7, built from
    // source: a wasi:http 0.3 component.
    let server = Server::start(&crate::harness::examples("spin4-hello"), &[]);
    rt().block_on(async {
        let resp = client().get(server.url("/any/path")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "text/plain");
        assert_eq!(resp.text().await.unwrap(), "Hello World!");
    });
    server.wait_for_log("wasi:http 0.3 handler");
    server.wait_for_log(&format!("http://{}/any/path", server.addr));
}

#[test]
fn a_03_component_moves_to_the_fresh_pool_when_idle_memory_is_given_back() {
    let server = Server::with_manifest(
        &app("max_memory = \"32MiB\""),
        &[
            "--pool-resident-budget",
            "1TiB",
            "--pool-idle-release",
            "1s",
        ],
    );
    assert_eq!(get(&server, "/p3/hello"), (200, 1));
    // The hog's slot keeps up to 16 MiB of the 32 it touched: worth a fresh pool once idle.
    assert_eq!(get(&server, "/p3/hog").0, 500);
    server.wait_for_log_within("gave back", Duration::from_secs(15));
    // Served from the fresh pool, reuse and all.
    assert_eq!(get(&server, "/p3/hello"), (200, 1));
    assert_eq!(get(&server, "/p3/hello"), (200, 2));
}

#[test]
fn past_the_component_limit_a_request_gets_503() {
    // Instances take one request each and the component two at once: a third is refused.
    let server = Server::with_manifest(
        &app("max_concurrent_per_instance = 1\nmax_concurrent_requests = 2"),
        &[],
    );
    let statuses = rt().block_on(async {
        let slow: Vec<_> = (0..2)
            .map(|_| {
                let url = server.url("/p3/slow?ms=1500");
                tokio::spawn(async move { client().get(url).send().await.unwrap() })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let third = client().get(server.url("/p3/hello")).send().await.unwrap();
        let mut statuses = vec![third.status().as_u16()];
        assert_eq!(third.headers()["retry-after"], "1");
        for r in slow {
            let r = r.await.unwrap();
            statuses.push(r.status().as_u16());
            // One request per instance: each started on a fresh one.
            assert_eq!(r.headers()["x-instance-requests"], "1");
        }
        statuses
    });
    assert_eq!(statuses, [503, 200, 200]);
}

/// Regression: a request still sending its body at its deadline had its whole instance stopped,
/// failing the other requests on it. Now only its own body is cut off (with an error).
#[test]
fn a_body_past_its_deadline_is_cut_off_without_killing_its_co_tenants() {
    let server = Server::with_manifest(&app("timeout = \"1s\""), &[]);
    rt().block_on(async {
        let mut drip = client().get(server.url("/p3/drip")).send().await.unwrap();
        assert_eq!(drip.status(), 200);
        assert_eq!(drip.headers()["x-instance-requests"], "1");
        tokio::time::sleep(Duration::from_millis(600)).await;
        // On the same instance, finishing after the drip's deadline.
        let slow = tokio::spawn({
            let url = server.url("/p3/slow?ms=900");
            async move { client().get(url).send().await.unwrap() }
        });
        let mut got = 0;
        let cut = loop {
            match drip.chunk().await {
                Ok(Some(c)) => got += c.len(),
                Ok(None) => break false,
                Err(_) => break true,
            }
        };
        assert!(cut, "the never-ending body ended cleanly after {got} bytes");
        assert!(got > 0);
        let slow = slow.await.unwrap();
        assert_eq!(slow.status(), 200, "{}", server.log());
        assert_eq!(slow.headers()["x-instance-requests"], "2");
    });
}

/// A request whose client went away expires: its instance takes no new request (it ends once
/// its requests' guest work is done).
#[test]
fn a_request_whose_client_left_expires_and_its_instance_takes_no_more() {
    let server = Server::with_manifest(&app(""), &[]);
    let seen = rt().block_on(async {
        // The client gives up on a 3 s request after 200 ms.
        let left = client()
            .get(server.url("/p3/slow?ms=3000"))
            .timeout(Duration::from_millis(200))
            .send()
            .await;
        assert!(left.is_err(), "{left:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let r = client().get(server.url("/p3/hello")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        r.headers()["x-instance-requests"]
            .to_str()
            .unwrap()
            .to_string()
    });
    // A fresh instance: the abandoned request's one took no more.
    assert_eq!(seen, "1");
}

/// Regression: the permits of a request whose client left were freed while its guest still
/// worked. One request at a time: while the abandoned guest sleeps, others get 503; the slot is
/// free again when its instance ends, at the latest the timeout after the client left.
#[test]
fn a_request_whose_client_left_keeps_its_permit_while_its_guest_works() {
    let server = Server::with_manifest(&app("max_concurrent_requests = 1\ntimeout = \"3s\""), &[]);
    rt().block_on(async {
        let start = std::time::Instant::now();
        let left = client()
            .get(server.url("/p3/slow?ms=2500"))
            .timeout(Duration::from_millis(200))
            .send()
            .await;
        assert!(left.is_err(), "{left:?}");
        let r = client().get(server.url("/p3/hello")).send().await.unwrap();
        assert_eq!(r.status(), 503, "while the abandoned guest works");
        // Once it is done (or past its timeout) the slot is free again.
        loop {
            let r = client().get(server.url("/p3/hello")).send().await.unwrap();
            if r.status() == 200 {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(10), "never freed");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            start.elapsed() >= Duration::from_millis(2000),
            "freed after {:?}, before the guest was done",
            start.elapsed()
        );
    });
}

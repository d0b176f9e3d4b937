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
        std::thread::sleep(Duration::from_millis(300));
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

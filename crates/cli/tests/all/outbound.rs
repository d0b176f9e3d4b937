//! Outbound HTTP from guests: which entries of `allowed_outbound_hosts` match, and the guard
//! that keeps an allowed host *name* from reaching the node itself or its local networks.

use std::io::{Read as _, Write as _};
use std::net::TcpListener;

use crate::harness::{Server, client, examples, rt, testkit_app, wms_command};

/// What the testkit guest reports for an outbound GET of `url` (status, body).
fn fetch(server: &Server, component: &str, url: &str) -> (u16, String) {
    rt().block_on(async {
        let r = client()
            .get(server.url(&format!("/{component}/outbound?url={url}")))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    })
}

/// A listener that must never be connected to; `true` if something did.
fn was_reached(trap: &TcpListener) -> bool {
    trap.set_nonblocking(true).unwrap();
    trap.accept().is_ok()
}

#[test]
fn a_host_name_cannot_reach_the_node_but_an_entry_naming_the_address_can() {
    let upstream = Server::start(&examples("hello"), &[]);
    let port = upstream.addr.port();
    let trap = TcpListener::bind("127.0.0.1:0").unwrap();
    let trap_port = trap.local_addr().unwrap().port();
    let manifest = testkit_app(&[
        // `localhost` is a name (that resolves to loopback): refused by the guard.
        (
            "byname",
            "/byname/...",
            &format!("allowed_outbound_hosts = [\"http://localhost:{trap_port}\"]"),
        ),
        // The operator names the address: allowed.
        (
            "byip",
            "/byip/...",
            &format!("allowed_outbound_hosts = [\"http://127.0.0.1:{port}\"]"),
        ),
        // A wildcard host is not an explicit address either.
        (
            "any",
            "/any/...",
            &format!("allowed_outbound_hosts = [\"http://*:{trap_port}\"]"),
        ),
        // A port range includes its start and excludes its end.
        (
            "range",
            "/range/...",
            &format!(
                "allowed_outbound_hosts = [\"http://127.0.0.1:{port}..{}\"]",
                port + 1
            ),
        ),
    ]);
    let server = Server::with_manifest(&manifest, &[]);

    let (status, body) = fetch(&server, "byname", &format!("http://localhost:{trap_port}/"));
    assert_eq!(status, 502, "{body}");
    assert!(
        body.contains("DestinationIpProhibited"),
        "guest saw: {body}"
    );
    let log = server.wait_for_log("denied: localhost resolves to");
    assert!(log.contains("a loopback address"), "{log}");
    assert!(log.contains("component=byname"), "{log}");
    assert!(
        log.contains("only an allowed_outbound_hosts entry naming the address"),
        "{log}"
    );

    let (status, body) = fetch(&server, "any", &format!("http://127.0.0.1:{trap_port}/"));
    assert_eq!(status, 502, "{body}");
    assert!(
        body.contains("DestinationIpProhibited"),
        "guest saw: {body}"
    );
    server.wait_for_log("127.0.0.1 is a loopback address");
    assert!(!was_reached(&trap), "a refused request reached the network");

    let (status, body) = fetch(&server, "byip", &format!("http://127.0.0.1:{port}/"));
    assert_eq!(
        (status, body.as_str()),
        (200, "upstream 200: Hello from wms!\n")
    );
    let (status, body) = fetch(&server, "range", &format!("http://127.0.0.1:{port}/"));
    assert_eq!(
        (status, body.as_str()),
        (200, "upstream 200: Hello from wms!\n")
    );

    // User info in the URL is refused (it would travel in the Host header), and logged.
    let (status, body) = fetch(&server, "byip", &format!("http://user@127.0.0.1:{port}/"));
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("HttpRequestDenied"), "guest saw: {body}");
    server.wait_for_log("user info in the URL is not supported");
}

#[test]
fn ipv6_entries_match_ipv6_destinations() {
    let Ok(upstream) = TcpListener::bind("[::1]:0") else {
        println!(
            "note: no IPv6 loopback on this machine; IPv6 matching is covered by unit tests only"
        );
        return;
    };
    let port = upstream.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in upstream.incoming() {
            let Ok(mut s) = s else { break };
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ =
                s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nv6");
        }
    });
    let manifest = testkit_app(&[(
        "v6",
        "/v6/...",
        &format!("allowed_outbound_hosts = [\"http://[::1]:{port}\"]"),
    )]);
    let server = Server::with_manifest(&manifest, &[]);
    let (status, body) = fetch(&server, "v6", &format!("http://[::1]:{port}/"));
    assert_eq!((status, body.as_str()), (200, "upstream 200: v6"));
    // Another port of the same address is not allowed.
    let (status, body) = fetch(&server, "v6", &format!("http://[::1]:{}/", port ^ 1));
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("HttpRequestDenied"), "guest saw: {body}");
}

#[test]
fn an_empty_port_range_is_refused_when_the_manifest_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = testkit_app(&[(
        "c",
        "/...",
        "allowed_outbound_hosts = [\"http://127.0.0.1:8000..8000\"]",
    )]);
    std::fs::write(dir.path().join("wms.toml"), manifest).unwrap();
    let out = wms_command()
        .arg("compile")
        .arg(dir.path())
        .arg("-o")
        .arg(dir.path().join("out"))
        .env("WMS_CACHE_DIR", dir.path().join("cache"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("port range 8000..8000 is empty"), "{err}");
}

//! Service chaining: components of one app calling each other (`http://NAME.spin.internal`) and
//! the app itself (a relative URL, as the Spin SDKs send it), in-process, under Spin's rules.

use std::io::{Read as _, Write as _};

use crate::harness::{Server, artifacts, client, rt, wms};

/// An app of testkit components: `front` (routed, may chain to `back` and call the app itself),
/// `back` (private: no route), `open` (routed, may reach any host but chain to nothing), and
/// `all` (routed, may chain to any component).
fn chaining_app(extra: &str) -> String {
    let kit = format!("{:?}", artifacts::TESTKIT);
    format!(
        r#"spin_manifest_version = 2
[application]
name = "chaining"
[application.tool.wms]
max_concurrent_requests = 8
[[trigger.http]]
route = "/front/..."
component = "front"
[[trigger.http]]
route = {{ private = true }}
component = "back"
[[trigger.http]]
route = "/open/..."
component = "open"
[[trigger.http]]
route = "/all/..."
component = "all"
[[trigger.http]]
route = "/users/:user_id/..."
component = "users"
[component.front]
source = {kit}
allowed_outbound_hosts = ["http://back.spin.internal", "http://self"]
[component.back]
source = {kit}
[component.open]
source = {kit}
allowed_outbound_hosts = ["*://*:*"]
[component.all]
source = {kit}
allowed_outbound_hosts = ["http://*.spin.internal"]
[component.users]
source = {kit}
{extra}
"#
    )
}

/// GET `path` on `server`: status and body.
fn get(server: &Server, path: &str, host: Option<&str>) -> (u16, String) {
    rt().block_on(async {
        let mut req = client().get(server.url(path));
        if let Some(h) = host {
            req = req.header("host", h);
        }
        let r = req.send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    })
}

/// The value of header `name` in a testkit `headers` report.
fn header<'a>(report: &'a str, name: &str) -> Option<&'a str> {
    report.lines().find_map(|l| {
        // The first line follows the caller's `upstream 200: `.
        let l = l.rsplit("upstream 200: ").next().unwrap_or(l);
        l.strip_prefix(name)?.strip_prefix(": ")
    })
}

#[test]
fn components_call_a_private_component_and_the_app_itself_in_process() {
    // One connection at most: a call that went out through the server's socket would wait
    // behind the very request making it.
    let server = Server::with_manifest(&chaining_app(""), &["--max-connections", "1"]);

    // By name, to a component with no route; the callee sees Spin's headers for it.
    let (status, body) = get(
        &server,
        "/front/outbound?url=http://back.spin.internal/some/path/headers",
        None,
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("upstream 200: "), "{body}");
    // (A guest sees the Host header as the request's authority.)
    assert_eq!(
        header(&body, "authority"),
        Some("back.spin.internal"),
        "{body}"
    );
    assert_eq!(
        header(&body, "spin-path-info"),
        Some("/some/path/headers"),
        "{body}"
    );
    assert_eq!(
        header(&body, "spin-full-url"),
        Some("http://back.spin.internal/some/path/headers"),
        "{body}"
    );
    assert_eq!(
        header(&body, "spin-client-addr"),
        Some("127.0.0.1:0"),
        "{body}"
    );

    // The app itself, by path: routed as a client's request would be, route parameters and all.
    let (status, body) = get(
        &server,
        "/front/outbound?url=http://:80/users/ann_lee/headers",
        None,
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        header(&body, "spin-path-match-user-id"),
        Some("ann_lee"),
        "{body}"
    );
    assert_eq!(
        header(&body, "spin-matched-route"),
        Some("/users/:user_id/..."),
        "{body}"
    );
    assert_eq!(header(&body, "spin-path-info"), Some("/headers"), "{body}");
    // A path no route matches is the app's 404.
    let (status, body) = get(&server, "/front/outbound?url=http://:80/nowhere", None);
    assert_eq!(
        (status, body.as_str()),
        (200, "upstream 404: no route matches this path\n")
    );

    // Any component through the wildcard of the `spin.internal` domain.
    let (status, body) = get(
        &server,
        "/all/outbound?url=http://front.spin.internal/x/headers",
        None,
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        header(&body, "authority"),
        Some("front.spin.internal"),
        "{body}"
    );
    // ... but not to a component the app does not have.
    let (status, body) = get(
        &server,
        "/all/outbound?url=http://ghost.spin.internal/",
        None,
    );
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("DestinationNotFound"), "{body}");
    server.wait_for_log("this app has no component `ghost`");
}

#[test]
fn chaining_needs_its_own_allowed_outbound_hosts_entry() {
    let server = Server::with_manifest(&chaining_app(""), &[]);
    // `front` may chain to `back` only.
    let (status, body) = get(
        &server,
        "/front/outbound?url=http://open.spin.internal/",
        None,
    );
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("HttpRequestDenied"), "{body}");
    server.wait_for_log("chaining to component `open` needs `http://open.spin.internal`");
    // Chaining is plain http://.
    let (status, body) = get(
        &server,
        "/front/outbound?url=https://back.spin.internal/",
        None,
    );
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("HttpRequestDenied"), "{body}");
    // The wildcard of every host grants neither chaining nor a way to the network for the name.
    let (status, body) = get(
        &server,
        "/open/outbound?url=http://back.spin.internal/",
        None,
    );
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("HttpRequestDenied"), "{body}");
    // A request to the app itself needs `self` (or any host).
    let (status, body) = get(&server, "/all/outbound?url=http://:80/front/x", None);
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("HttpRequestDenied"), "{body}");
    server.wait_for_log("request to the app itself (/front/x) denied: needs `http://self`");
    let (status, body) = get(&server, "/open/outbound?url=http://:80/front/hi", None);
    assert_eq!((status, body.as_str()), (200, "upstream 200: testkit: hi"));

    // A client cannot pass for a chained request: its `Host: back.spin.internal` is dropped,
    // and routing is by path as ever.
    let (status, body) = get(&server, "/front/headers", Some("back.spin.internal"));
    assert_eq!(status, 200, "{body}");
    assert!(!body.contains("spin.internal"), "{body}");
    // Regression (review): nor with a second Host header after an ordinary one.
    let mut raw = std::net::TcpStream::connect(server.addr).unwrap();
    raw.write_all(
        b"GET /front/headers HTTP/1.1\r\nHost: a.example\r\nHost: back.spin.internal\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let mut answer = String::new();
    let _ = raw.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 "), "{answer}");
    assert!(!answer.contains("spin.internal"), "{answer}");

    // Regression (review): `http://self/...` written out is the app itself, never a host named
    // `self` looked up on the network; other names under `spin.internal` go nowhere; and a
    // chained call is `http://NAME.spin.internal` on port 80 only.
    let (status, body) = get(&server, "/front/outbound?url=http://self/front/hi", None);
    assert_eq!((status, body.as_str()), (200, "upstream 200: testkit: hi"));
    let (status, body) = get(&server, "/all/outbound?url=http://a.b.spin.internal/", None);
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("DestinationNotFound"), "{body}");
    let (status, body) = get(
        &server,
        "/front/outbound?url=http://back.spin.internal:9999/",
        None,
    );
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("HttpRequestDenied"), "{body}");
}

#[test]
fn a_component_calling_itself_without_end_is_refused_and_the_server_keeps_serving() {
    let server = Server::with_manifest(&chaining_app(""), &[]);
    // `front` calls itself by path until refused: at most 4 chained requests (half of the
    // server's 8) are in flight, so the fifth call fails and the chain unwinds at once.
    let (status, body) = get(&server, "/front/recurse", None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body.matches("upstream 200").count(), 3, "{body}");
    assert_eq!(body.matches("upstream 502").count(), 1, "{body}");
    assert!(
        body.contains("outbound error: ") && body.ends_with("ConnectionLimitReached"),
        "{body}"
    );
    server.wait_for_log("service chaining refused: 4 chained requests in flight");
    // Every slot was given back.
    for _ in 0..3 {
        let (status, body) = get(&server, "/front/recurse", None);
        assert_eq!(status, 200, "{body}");
        assert_eq!(body.matches("upstream").count(), 4, "{body}");
    }
    let (status, body) = get(&server, "/front/hello", None);
    assert_eq!((status, body.as_str()), (200, "testkit: hello"));
}

#[test]
fn chaining_to_a_component_the_app_does_not_have_is_an_error_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = chaining_app("allowed_outbound_hosts = [\"http://bakc.spin.internal\"]");
    std::fs::write(dir.path().join("wms.toml"), manifest).unwrap();
    let (code, _, stderr) = wms(&[
        "up",
        dir.path().to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("component `users`: allowed_outbound_hosts entry `http://bakc.spin.internal` chains to component `bakc`, which this app does not have"),
        "{stderr}"
    );
}

//! WAGI: preview 1 modules served CGI-style, with the same limits as components.

use std::time::{Duration, Instant};

use crate::harness::{Server, artifacts, client, rt};

fn wagi_app(extra: &str) -> Server {
    wagi_app_with(extra, &[])
}

fn wagi_app_with(extra: &str, args: &[&str]) -> Server {
    let manifest = format!(
        r#"spin_manifest_version = 2
[application]
name = "wagi"
[[trigger.http]]
route = "/c/..."
component = "c"
executor = {{ type = "wagi" }}
[[trigger.http]]
route = "/rust/..."
component = "rust"
executor = {{ type = "wagi" }}
[component.c]
source = {c:?}
{extra}
[component.rust]
source = {rust:?}
"#,
        c = artifacts::C_WAGI,
        rust = artifacts::RUST_WAGI_P1,
    );
    Server::with_manifest(&manifest, args)
}

#[test]
fn request_round_trips_through_cgi() {
    let server = wagi_app("");
    rt().block_on(async {
        let body: Vec<u8> = (0..200_000u32).map(|i| (i % 256) as u8).collect();
        let resp = client()
            .put(server.url("/c/items/7?x=1&y=2"))
            .header("x-custom", "Custom Value")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let h = resp.headers().clone();
        assert_eq!(h["content-type"], "application/octet-stream");
        assert_eq!(h["x-method"], "PUT");
        assert_eq!(h["x-path-info"], "/items/7");
        assert_eq!(h["x-query"], "x=1&y=2");
        assert_eq!(h["x-script-name"], "/c");
        assert_eq!(h["x-content-length"], "200000");
        assert_eq!(h["x-header-custom"], "Custom Value");
        assert_eq!(h["x-server-name"], "127.0.0.1");
        assert_eq!(resp.bytes().await.unwrap().as_ref(), body.as_slice());

        let resp = client()
            .post(server.url("/rust/hi"))
            .body("abc")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["x-method"], "POST");
        assert_eq!(resp.headers()["x-path-info"], "/hi");
        assert_eq!(resp.text().await.unwrap(), "rust wagi got 3 bytes: abc");
    });
}

#[test]
fn status_and_location_headers_are_honoured() {
    let server = wagi_app("");
    rt().block_on(async {
        let resp = client().get(server.url("/c/status")).send().await.unwrap();
        assert_eq!(resp.status(), 404);
        assert_eq!(resp.text().await.unwrap(), "nothing at /status\n");
        let no_redirects = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let resp = no_redirects
            .get(server.url("/c/redirect"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 302);
        assert_eq!(resp.headers()["location"], "/elsewhere");
        let resp = client()
            .get(server.url("/c/args?a=1&b=2"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.text().await.unwrap(), "/c\na=1\nb=2\n");
    });
}

#[test]
fn malformed_output_is_500_with_a_clear_log_line() {
    let server = wagi_app("");
    rt().block_on(async {
        assert_eq!(
            client()
                .get(server.url("/c/malformed"))
                .send()
                .await
                .unwrap()
                .status(),
            500
        );
        assert_eq!(
            client()
                .get(server.url("/c/"))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    });
    let log = server.wait_for_log("malformed CGI output");
    let line = log
        .lines()
        .find(|l| l.contains("malformed CGI output"))
        .unwrap();
    assert!(
        line.contains("component=c") && line.contains("has no `:`"),
        "{line}"
    );
}

#[test]
fn non_zero_exit_is_500() {
    let server = wagi_app("");
    rt().block_on(async {
        assert_eq!(
            client()
                .get(server.url("/c/exit"))
                .send()
                .await
                .unwrap()
                .status(),
            500
        );
        assert_eq!(
            client()
                .get(server.url("/c/"))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    });
    server.wait_for_log("guest exited with status 3");
}

#[test]
fn loop_is_504_within_the_timeout() {
    let server = wagi_app("[component.c.tool.wms]\ntimeout = \"1s\"");
    rt().block_on(async {
        let start = Instant::now();
        assert_eq!(
            client()
                .get(server.url("/c/loop"))
                .send()
                .await
                .unwrap()
                .status(),
            504
        );
        let took = start.elapsed();
        assert!(
            took >= Duration::from_secs(1) && took < Duration::from_millis(2500),
            "took {took:?}"
        );
        assert_eq!(
            client()
                .get(server.url("/c/"))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    });
}

#[test]
fn a_component_under_the_wagi_executor_is_rejected_at_start() {
    let manifest = format!(
        "spin_manifest_version = 2\n[application]\nname = \"w\"\n[[trigger.http]]\nroute = \"/...\"\ncomponent = \"x\"\nexecutor = {{ type = \"wagi\" }}\n[component.x]\nsource = {:?}\n",
        artifacts::HELLO
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("wms.toml"), manifest).unwrap();
    let (code, _, stderr) = crate::harness::wms(&[
        "up",
        dir.path().to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("is a component, but the `wagi` executor runs WASI preview 1 modules"),
        "{stderr}"
    );
}

/// Reads one HTTP/1.1 response (head and body, framed by content-length or chunked) from `r`.
fn read_response(r: &mut impl std::io::BufRead) -> (String, Vec<u8>) {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        assert!(
            r.read_line(&mut line).unwrap() > 0,
            "connection closed in a head: {head}"
        );
        if line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    let lower = head.to_ascii_lowercase();
    let mut body = Vec::new();
    if let Some(n) = lower
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
    {
        body.resize(n.trim().parse().unwrap(), 0);
        r.read_exact(&mut body).unwrap();
    } else {
        assert!(lower.contains("transfer-encoding: chunked"), "{head}");
        loop {
            let mut size = String::new();
            r.read_line(&mut size).unwrap();
            let n = usize::from_str_radix(size.trim(), 16).unwrap();
            let mut chunk = vec![0; n + 2];
            r.read_exact(&mut chunk).unwrap();
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    }
    (head, body)
}

#[test]
fn cgi_framing_headers_cannot_smuggle_a_response() {
    use std::io::Write as _;
    let server = wagi_app("");
    let mut stream = std::net::TcpStream::connect(server.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    // Two pipelined requests on one keep-alive connection.
    stream
        .write_all(
            b"GET /rust/smuggle HTTP/1.1\r\nhost: x\r\n\r\nGET /rust/after HTTP/1.1\r\nhost: x\r\n\r\n",
        )
        .unwrap();
    let mut reader = std::io::BufReader::new(stream);
    let (head, body) = read_response(&mut reader);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // wms frames the whole output itself: the module's content-length is not believed.
    assert_eq!(
        String::from_utf8_lossy(&body),
        "okHTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\nsmuggled"
    );
    let lower = head.to_ascii_lowercase();
    assert!(!lower.contains("content-length: 2"), "{head}");
    assert!(!lower.contains("transfer-encoding: identity"), "{head}");
    // The second response is the one for the second request.
    let (head, body) = read_response(&mut reader);
    assert!(
        head.to_ascii_lowercase().contains("x-path-info: /after"),
        "{head}"
    );
    assert_eq!(String::from_utf8_lossy(&body), "rust wagi got 0 bytes: ");
}

/// A body of `len` bytes sent in chunks of unknown total length (chunked on HTTP/1.1, DATA
/// frames without content-length on HTTP/2).
fn streamed(len: usize) -> (Vec<u8>, reqwest::Body) {
    let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        data.chunks(10_000).map(|c| Ok(c.to_vec())).collect();
    (
        data,
        reqwest::Body::wrap_stream(futures::stream::iter(chunks)),
    )
}

#[test]
fn content_length_is_the_real_length_for_chunked_and_http2_bodies() {
    let server = wagi_app("");
    rt().block_on(async {
        let h2 = reqwest::Client::builder()
            .http2_prior_knowledge()
            .build()
            .unwrap();
        for (name, client) in [("HTTP/1.1 chunked", client()), ("HTTP/2", h2)] {
            let (data, body) = streamed(123_456);
            let resp = client
                .put(server.url("/c/echo"))
                .body(body)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200, "{name}");
            // Before, CONTENT_LENGTH was 0 although the body was streamed to stdin.
            assert_eq!(resp.headers()["x-content-length"], "123456", "{name}");
            assert_eq!(
                resp.bytes().await.unwrap().as_ref(),
                data.as_slice(),
                "{name}"
            );
        }
    });
}

#[test]
fn a_chunked_body_over_the_limit_is_413_and_the_module_never_runs() {
    let server = wagi_app_with("", &["--max-body", "50000"]);
    rt().block_on(async {
        // Over HTTP/2, so that an answer sent before the whole body was read reaches the client
        // (on HTTP/1.1 the unread rest can reset the connection under the response).
        let h2 = reqwest::Client::builder()
            .http2_prior_knowledge()
            .build()
            .unwrap();
        let (_, body) = streamed(200_000);
        let resp = h2
            .put(server.url("/c/echo"))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 413);
        let (_, body) = streamed(40_000);
        let resp = client()
            .put(server.url("/c/echo"))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["x-content-length"], "40000");
    });
}

#[test]
fn a_body_of_unknown_length_is_buffered_only_up_to_a_small_cap() {
    // The server takes 1 GiB bodies by default; one without Content-Length is held in memory
    // to learn CONTENT_LENGTH, so it is capped at the lesser of 16 MiB and max_memory.
    let server = wagi_app("[component.c.tool.wms]\nmax_memory = \"4MiB\"");
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    rt().block_on(async {
        let (_, body) = streamed(5 << 20);
        let resp = h2
            .put(server.url("/c/echo"))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 413);
        let (_, body) = streamed(100_000);
        let resp = h2
            .put(server.url("/c/echo"))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["x-content-length"], "100000");
    });
    server.wait_for_log("a request body of unknown length over 4194304 bytes");
}

#[test]
fn a_body_cut_short_fails_the_request_instead_of_looking_complete() {
    use std::io::{Read as _, Write as _};
    let server = wagi_app("");
    let mut stream = std::net::TcpStream::connect(server.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    // 1000 bytes declared, 10 sent, then the client stops sending.
    stream
        .write_all(b"PUT /c/echo HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\n0123456789")
        .unwrap();
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    // Before, the module saw end-of-input after 10 bytes and echoed them with a 200.
    assert!(!answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(!answer.contains("0123456789"), "{answer}");
    server.wait_for_log("the request body failed before its end");
}

#[test]
fn header_names_with_underscores_do_not_reach_the_cgi_environment() {
    let server = wagi_app("");
    rt().block_on(async {
        let resp = client()
            .get(server.url("/c/echo"))
            .header("x-custom", "from the proxy")
            .header("x_custom", "from the client")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        // Before, both became HTTP_X_CUSTOM: "from the proxy, from the client".
        assert_eq!(resp.headers()["x-header-custom"], "from the proxy");
    });
}

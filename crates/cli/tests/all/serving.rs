//! What a working app looks like from the outside: translation of requests and responses,
//! routing, streaming, concurrency, HTTP/2, capabilities.

use futures::StreamExt as _;

use crate::harness::{Server, artifacts, client, examples, peak_rss, rt, testkit_app};

#[test]
fn methods_headers_and_bodies_round_trip_exactly() {
    let server = Server::start(&examples("multi"), &[]);
    rt().block_on(async {
        let c = client();
        for method in ["GET", "POST", "PUT", "DELETE", "PATCH"] {
            let body = format!("body of a {method} \u{e9}\0\u{1f600}").into_bytes();
            let resp = c
                .request(
                    method.parse().unwrap(),
                    server.url("/echo/items/7?x=1&y=%20z"),
                )
                .header("x-custom", "Value With  Spaces")
                .header("x-multi", "one")
                .body(body.clone())
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200, "{method}");
            let h = resp.headers().clone();
            assert_eq!(h["x-echo-method"], method);
            assert_eq!(h["x-echo-path"], "/echo/items/7?x=1&y=%20z");
            assert_eq!(h["x-echo-authority"], server.addr.to_string().as_str());
            assert_eq!(h["x-echo-scheme"], "http");
            assert_eq!(h["x-echo-header-x-custom"], "Value With  Spaces");
            assert_eq!(h["x-echo-header-x-multi"], "one");
            assert_eq!(
                resp.bytes().await.unwrap().as_ref(),
                body.as_slice(),
                "{method}"
            );
        }
        // The guest's status code and headers come back unchanged.
        let resp = c
            .get(server.url("/echo/created?status=201"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201);
        // The other route of the app is served by the other component.
        let resp = c.get(server.url("/hello")).send().await.unwrap();
        assert_eq!(resp.text().await.unwrap(), "Hello from wms!\n");
    });
}

#[test]
fn spin_headers_describe_the_matched_route() {
    let echo = artifacts::ECHO;
    let manifest = format!(
        r#"spin_manifest_version = 2
[application]
name = "routes"
[[trigger.http]]
route = "/..."
component = "fallback"
[[trigger.http]]
route = "/api/..."
component = "api"
[[trigger.http]]
route = "/api/users/:user_id/posts/:post"
component = "post"
[[trigger.http]]
route = "/api/exact"
component = "exact"
[component.fallback]
source = "{echo}"
[component.api]
source = "{echo}"
[component.post]
source = "{echo}"
[component.exact]
source = "{echo}"
"#
    );
    let server = Server::with_manifest(&manifest, &[]);
    rt().block_on(async {
        let c = client();
        let route_of = |path: &'static str| {
            let c = c.clone();
            let url = server.url(path);
            async move {
                let resp = c
                    .get(url)
                    .header("spin-path-info", "/forged")
                    .send()
                    .await
                    .unwrap();
                assert_eq!(resp.status(), 200, "{path}");
                resp.headers().clone()
            }
        };
        let h = route_of("/api/users/42/posts/abc?full=1").await;
        assert_eq!(
            h["x-echo-header-spin-matched-route"],
            "/api/users/:user_id/posts/:post"
        );
        // Spin names the header after the parameter with `_` as `-`.
        assert_eq!(h["x-echo-header-spin-path-match-user-id"], "42");
        assert_eq!(h["x-echo-header-spin-path-match-post"], "abc");
        assert_eq!(h["x-echo-header-spin-path-info"], "");
        assert_eq!(
            h["x-echo-header-spin-full-url"],
            format!("http://{}/api/users/42/posts/abc?full=1", server.addr).as_str()
        );
        assert!(
            h["x-echo-header-spin-client-addr"]
                .to_str()
                .unwrap()
                .starts_with("127.0.0.1:")
        );
        assert_eq!(h["x-echo-header-spin-base-path"], "/");

        let h = route_of("/api/exact").await;
        assert_eq!(h["x-echo-header-spin-matched-route"], "/api/exact");

        let h = route_of("/api/exact/more").await;
        assert_eq!(h["x-echo-header-spin-matched-route"], "/api/...");
        assert_eq!(h["x-echo-header-spin-path-info"], "/exact/more");
        assert_eq!(h["x-echo-header-spin-component-route"], "/api");
        assert_eq!(h["x-echo-header-spin-raw-component-route"], "/api/...");

        let h = route_of("/elsewhere/deep").await;
        assert_eq!(h["x-echo-header-spin-matched-route"], "/...");
        // A client cannot forge the headers the host sets.
        assert_eq!(h["x-echo-header-spin-path-info"], "/elsewhere/deep");
    });
}

#[test]
fn unmatched_path_is_404() {
    let server = Server::start(&examples("multi"), &[]);
    rt().block_on(async {
        let resp = client().get(server.url("/nope")).send().await.unwrap();
        assert_eq!(resp.status(), 404);
        let resp = client()
            .get(server.url("/hello/extra"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 404);
    });
}

#[test]
fn hundred_megabytes_stream_both_ways_without_being_buffered() {
    const SIZE: u64 = 100 * 1024 * 1024;
    let manifest = format!(
        "{}\n[[trigger.http]]\nroute = \"/echo/...\"\ncomponent = \"echo\"\n[component.echo]\nsource = {:?}\n[component.echo.tool.wms]\ntimeout = \"120s\"\n",
        testkit_app(&[(
            "kit",
            "/kit/...",
            "[component.kit.tool.wms]\ntimeout = \"120s\""
        )]),
        artifacts::ECHO
    );
    let server = Server::with_manifest(&manifest, &[]);
    rt().block_on(async {
        let c = client();
        // Upload: a generated stream, echoed back and counted as it arrives.
        let chunks =
            futures::stream::iter((0..SIZE / 65536).map(|i| {
                Ok::<_, std::io::Error>(bytes::Bytes::from(vec![(i % 251) as u8; 65536]))
            }));
        let resp = c
            .post(server.url("/echo/upload"))
            .body(reqwest::Body::wrap_stream(chunks))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let mut stream = resp.bytes_stream();
        let mut total = 0u64;
        let mut checksum = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.unwrap();
            for (j, b) in chunk.iter().enumerate() {
                let offset = total + j as u64;
                checksum = checksum.wrapping_add(u64::from(*b) * (offset % 7 + 1));
            }
            total += chunk.len() as u64;
        }
        assert_eq!(total, SIZE);
        let expected: u64 = (0..SIZE).map(|o| ((o / 65536) % 251) * (o % 7 + 1)).sum();
        assert_eq!(checksum, expected, "echoed bytes differ from the upload");

        // Download: the guest writes 100 MB.
        let resp = c
            .get(server.url(&format!("/kit/download?bytes={SIZE}")))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let mut stream = resp.bytes_stream();
        let mut total = 0u64;
        while let Some(chunk) = stream.next().await {
            total += chunk.unwrap().len() as u64;
        }
        assert_eq!(total, SIZE);
    });
    let peak = peak_rss(server.pid());
    assert!(
        peak < 80 << 20,
        "wms peaked at {} MiB while streaming 100 MiB",
        peak >> 20
    );
}

#[test]
fn hundred_concurrent_requests_all_succeed() {
    let server = Server::start(&examples("multi"), &[]);
    rt().block_on(async {
        let c = client();
        let requests = (0..100).map(|i| {
            let c = c.clone();
            let url = server.url(&format!("/echo/{i}"));
            async move {
                let resp = c
                    .post(url)
                    .body(format!("request {i}"))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(resp.status(), 200);
                assert_eq!(resp.text().await.unwrap(), format!("request {i}"));
            }
        });
        futures::future::join_all(requests).await;
    });
}

#[test]
fn http2_cleartext_with_prior_knowledge() {
    let server = Server::start(&examples("multi"), &[]);
    rt().block_on(async {
        let c = reqwest::Client::builder()
            .http2_prior_knowledge()
            .build()
            .unwrap();
        let resp = c
            .post(server.url("/echo/h2"))
            .body("over h2")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.version(), reqwest::Version::HTTP_2);
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["x-echo-method"], "POST");
        assert_eq!(resp.text().await.unwrap(), "over h2");
    });
}

#[test]
fn environment_and_files_are_only_what_the_manifest_declares() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("static/sub")).unwrap();
    std::fs::write(dir.path().join("static/index.html"), "<h1>hi</h1>").unwrap();
    std::fs::write(dir.path().join("static/sub/data.txt"), "data").unwrap();
    std::fs::write(dir.path().join("config.txt"), "config").unwrap();
    std::fs::write(dir.path().join("secret.txt"), "secret").unwrap();
    let manifest = testkit_app(&[(
        "kit",
        "/...",
        "environment = { GREETING = \"hi\", MODE = \"test\" }\nfiles = [\"config.txt\", { source = \"static\", destination = \"/www\" }]",
    )]);
    std::fs::write(dir.path().join("wms.toml"), manifest).unwrap();
    let server = Server::start(dir.path(), &[]);
    rt().block_on(async {
        let c = client();
        let get = |path: String| {
            let c = c.clone();
            let url = server.url(&path);
            async move {
                let r = c.get(url).send().await.unwrap();
                (r.status().as_u16(), r.text().await.unwrap())
            }
        };
        let (status, env) = get("/env".into()).await;
        assert_eq!(status, 200);
        let mut lines: Vec<&str> = env.lines().collect();
        lines.sort();
        assert_eq!(
            lines,
            ["GREETING=hi", "MODE=test"],
            "the guest saw other variables"
        );
        assert_eq!(
            get("/read?path=/config.txt".into()).await,
            (200, "config".into())
        );
        assert_eq!(
            get("/read?path=/www/index.html".into()).await,
            (200, "<h1>hi</h1>".into())
        );
        assert_eq!(
            get("/read?path=/www/sub/data.txt".into()).await,
            (200, "data".into())
        );
        let (status, text) = get("/read?path=/secret.txt".into()).await;
        assert_eq!(status, 404, "undeclared file was visible: {text}");
        let (status, text) = get(format!(
            "/read?path={}",
            dir.path().join("secret.txt").display()
        ))
        .await;
        assert_eq!(status, 404, "host path was visible: {text}");
        let (status, _) = get("/write?path=/www/index.html".into()).await;
        assert_eq!(status, 403, "a mounted file was writable");
        let (status, _) = get("/write?path=/config.txt".into()).await;
        assert_eq!(status, 403, "a staged file was writable");
    });
    assert_eq!(
        std::fs::read_to_string(dir.path().join("static/index.html")).unwrap(),
        "<h1>hi</h1>"
    );
}

#[test]
fn outbound_http_is_denied_unless_allowed() {
    // The upstream is another wms serving hello on loopback.
    let upstream = Server::start(&examples("hello"), &[]);
    let port = upstream.addr.port();
    // A listener that must never see a connection from a denied request.
    let trap = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    trap.set_nonblocking(true).unwrap();
    let trap_port = trap.local_addr().unwrap().port();
    let manifest = testkit_app(&[
        (
            "open",
            "/open/...",
            &format!("allowed_outbound_hosts = [\"http://127.0.0.1:{port}\"]"),
        ),
        ("closed", "/closed/...", ""),
    ]);
    let server = Server::with_manifest(&manifest, &[]);
    rt().block_on(async {
        let c = client();
        let resp = c
            .get(server.url(&format!("/open/outbound?url=http://127.0.0.1:{port}/")))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(
            resp.text().await.unwrap(),
            "upstream 200: Hello from wms!\n"
        );

        for url in [
            format!("http://127.0.0.1:{trap_port}/"),
            // Allowed host, but not this component's allow-list.
            format!("http://127.0.0.1:{port}/"),
        ] {
            let resp = c
                .get(server.url(&format!("/closed/outbound?url={url}")))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 502);
            let text = resp.text().await.unwrap();
            assert!(text.contains("HttpRequestDenied"), "guest saw: {text}");
        }
        // The allowed port is not a blanket allowance for the host.
        let resp = c
            .get(server.url(&format!("/open/outbound?url=http://127.0.0.1:{trap_port}/")))
            .send()
            .await
            .unwrap();
        assert!(resp.text().await.unwrap().contains("HttpRequestDenied"));
    });
    assert!(
        trap.accept().is_err(),
        "a denied request reached the network"
    );
    server.wait_for_log("denied: not in allowed_outbound_hosts");
}

#[test]
fn guest_output_goes_to_the_host_log_with_the_component_name() {
    let manifest = testkit_app(&[("chatty", "/...", "")]);
    let server = Server::with_manifest(&manifest, &[]);
    rt().block_on(async {
        let resp = client().get(server.url("/log")).send().await.unwrap();
        assert_eq!(resp.text().await.unwrap(), "logged");
    });
    let log = server.wait_for_log("to stderr from the guest");
    let line = log
        .lines()
        .find(|l| l.contains("to stdout from the guest"))
        .expect("stdout line");
    assert!(
        line.contains("component=chatty") && line.contains("stream=\"stdout\""),
        "{line}"
    );
    let line = log
        .lines()
        .find(|l| l.contains("to stderr from the guest"))
        .unwrap();
    assert!(
        line.contains("component=chatty") && line.contains("stream=\"stderr\""),
        "{line}"
    );
}

#[test]
fn spin_sdk_app_runs_with_its_spin_toml_unchanged() {
    // examples/spin-hello is Spin's http-rust template built for wasm32-wasip1: a core module
    // that wms adapts into a component at load, caching the result.
    let cache = tempfile::tempdir().unwrap();
    let server = Server::start_with_env(
        &examples("spin-hello"),
        &[],
        &[("WMS_CACHE_DIR", cache.path())],
    );
    rt().block_on(async {
        let resp = client().get(server.url("/any/path")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "text/plain");
        assert_eq!(resp.text().await.unwrap(), "Hello World!");
    });
    server.wait_for_log(&format!(
        "Handling request to Some(HeaderValue {{ inner: String(\"http://{}/any/path\") }})",
        server.addr
    ));
    let entries = std::fs::read_dir(cache.path().join("components"))
        .unwrap()
        .count();
    assert_eq!(entries, 1, "the adapted component was not cached");
    drop(server);
    // The second start uses the cache entry and serves the same.
    let server = Server::start_with_env(
        &examples("spin-hello"),
        &[],
        &[("WMS_CACHE_DIR", cache.path())],
    );
    rt().block_on(async {
        assert_eq!(
            client()
                .get(server.url("/"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap(),
            "Hello World!"
        );
    });
}

#[test]
fn pulley_interpreter_gives_the_same_responses_as_cranelift() {
    let native = Server::start(&examples("multi"), &[]);
    let pulley = Server::start(&examples("multi"), &["--engine", "pulley"]);
    pulley.wait_for_log("engine pulley");
    rt().block_on(async {
        for (method, path, body) in [
            ("GET", "/hello", ""),
            ("POST", "/echo/a/b?c=d", "payload"),
            ("PUT", "/echo/created?status=201", "x"),
            ("GET", "/missing", ""),
        ] {
            let send = |server: &Server| {
                client()
                    .request(method.parse().unwrap(), server.url(path))
                    .header("x-test", "1")
                    .body(body.to_string())
                    .send()
            };
            let (a, b) = (send(&native).await.unwrap(), send(&pulley).await.unwrap());
            assert_eq!(a.status(), b.status(), "{method} {path}");
            let strip = |h: &reqwest::header::HeaderMap| {
                let mut v: Vec<(String, String)> = h
                    .iter()
                    .filter(|(k, _)| {
                        !matches!(
                            k.as_str(),
                            "date"
                                | "x-echo-authority"
                                | "x-echo-header-spin-full-url"
                                | "x-echo-header-spin-client-addr"
                        )
                    })
                    .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_string()))
                    .collect();
                v.sort();
                v
            };
            assert_eq!(strip(a.headers()), strip(b.headers()), "{method} {path}");
            assert_eq!(
                a.bytes().await.unwrap(),
                b.bytes().await.unwrap(),
                "{method} {path}"
            );
        }
    });
}

//! Traces: `wms up` exports a request's spans over OTLP (HTTP/protobuf) to a receiver in this
//! process, which decodes them with the published `opentelemetry-proto` messages; the guest's
//! outbound request carries the client span's W3C trace context to an upstream server here.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message as _;

use crate::harness::{Server, client, rt, testkit_app};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

/// One request a [`Capture`] server received.
#[derive(Clone)]
struct Received {
    path: String,
    headers: http::HeaderMap,
    body: Bytes,
}

/// An HTTP/1 server on 127.0.0.1 that keeps every request it gets and answers 200 `ok` (an
/// empty body, for OTLP: the default export response). Runs on its own thread until the test
/// process ends.
struct Capture {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
}

impl Capture {
    fn start() -> Capture {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let sink = received.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    let (stream, _) = listener.accept().await.unwrap();
                    let sink = sink.clone();
                    let service = hyper::service::service_fn(move |req: http::Request<_>| {
                        let sink = sink.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let body: Bytes = match BodyExt::collect(body).await {
                                Ok(b) => b.to_bytes(),
                                Err(e) => {
                                    let e: hyper::Error = e;
                                    panic!("request body: {e}")
                                }
                            };
                            let ok = if parts.uri.path() == "/v1/traces" {
                                Bytes::new()
                            } else {
                                Bytes::from_static(b"ok")
                            };
                            sink.lock().unwrap().push(Received {
                                path: parts.uri.path().to_string(),
                                headers: parts.headers,
                                body,
                            });
                            Ok::<_, Infallible>(http::Response::new(Full::new(ok)))
                        }
                    });
                    tokio::spawn(
                        hyper::server::conn::http1::Builder::new()
                            .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
                    );
                }
            });
        });
        Capture { addr, received }
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Every span exported to this receiver so far, with its resource's `service.name`.
    fn spans(&self) -> Vec<(String, Span)> {
        let mut spans = Vec::new();
        for r in self.received() {
            assert_eq!(r.path, "/v1/traces");
            assert_eq!(r.headers["content-type"], "application/x-protobuf");
            let export = ExportTraceServiceRequest::decode(r.body).expect("an OTLP export");
            for rs in export.resource_spans {
                let service = rs
                    .resource
                    .as_ref()
                    .and_then(|r| attribute(&r.attributes, "service.name"))
                    .unwrap_or_default();
                for ss in rs.scope_spans {
                    for span in ss.spans {
                        spans.push((service.clone(), span));
                    }
                }
            }
        }
        spans
    }

    /// Waits (20 s at most) until `done` holds for the spans exported so far; returns them.
    fn wait_for_spans(&self, done: impl Fn(&[Span]) -> bool) -> Vec<(String, Span)> {
        let start = Instant::now();
        loop {
            let spans = self.spans();
            let only: Vec<Span> = spans.iter().map(|(_, s)| s.clone()).collect();
            if done(&only) {
                return spans;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "the spans never arrived; got {:#?}",
                only.iter().map(|s| &s.name).collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The value of attribute `key`, as text (strings as they are, numbers in decimal).
fn attribute(
    attributes: &[opentelemetry_proto::tonic::common::v1::KeyValue],
    key: &str,
) -> Option<String> {
    let value = attributes.iter().find(|kv| kv.key == key)?.value.as_ref()?;
    match value.value.as_ref()? {
        Value::StringValue(s) => Some(s.clone()),
        Value::IntValue(i) => Some(i.to_string()),
        other => Some(format!("{other:?}")),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `wms up` serving the testkit at `/...`, allowed to call `upstream`, with `env`.
fn serve(upstream: &Capture, env: &[(&str, String)]) -> (Server, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("wms.toml"),
        testkit_app(&[(
            "kit",
            "/...",
            &format!(
                "allowed_outbound_hosts = [\"http://127.0.0.1:{}\"]",
                upstream.addr.port()
            ),
        )]),
    )
    .unwrap();
    let env: Vec<(&str, &Path)> = env.iter().map(|(k, v)| (*k, Path::new(v))).collect();
    let server = Server::start_with_env(dir.path(), &[], &env);
    (server, dir)
}

/// Asks the guest to call `upstream` (with `traceparent` on the request, if given).
fn call_upstream(server: &Server, upstream: &Capture, traceparent: Option<&str>) {
    rt().block_on(async {
        let mut req =
            client().get(server.url(&format!("/outbound?url=http://{}/hello", upstream.addr)));
        if let Some(t) = traceparent {
            req = req.header("traceparent", t);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.unwrap(), "upstream 200: ok");
    });
}

/// Stops `server` with SIGTERM, as an orchestrator does, and waits for a clean exit.
fn stop(mut server: Server) {
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(server.pid(), libc::SIGTERM) };
    let status = server.child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{}", server.log());
}

fn no_otel_variables_here() {
    let set: Vec<String> = std::env::vars()
        .map(|(k, _)| k)
        .filter(|k| k.starts_with("OTEL_"))
        .collect();
    assert!(
        set.is_empty(),
        "the test's environment has {set:?}, which wms would inherit; unset them"
    );
}

/// An OTLP receiver, an upstream server, and `wms up` exporting to the one (batches every
/// `schedule_delay` ms) and allowed to call the other, with `extra` variables.
fn serve_traced(
    schedule_delay: &str,
    extra: &[(&str, String)],
) -> (Capture, Capture, Server, tempfile::TempDir) {
    no_otel_variables_here();
    let receiver = Capture::start();
    let upstream = Capture::start();
    let mut env = vec![
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://{}", receiver.addr),
        ),
        ("OTEL_BSP_SCHEDULE_DELAY", schedule_delay.to_string()),
    ];
    env.extend(extra.iter().cloned());
    let (server, dir) = serve(&upstream, &env);
    (receiver, upstream, server, dir)
}

#[test]
fn a_request_and_its_outbound_call_are_spans_of_the_callers_trace() {
    let (receiver, upstream, server, _dir) = serve_traced("50", &[]);
    assert!(
        server.log().contains(&format!(
            "traces: exporting spans over OTLP (http/protobuf) to http://{}/v1/traces, as service wms",
            receiver.addr
        )),
        "{}",
        server.log()
    );
    call_upstream(
        &server,
        &upstream,
        Some(&format!("00-{TRACE_ID}-{CALLER_SPAN}-01")),
    );
    let spans = receiver.wait_for_spans(|spans| {
        ["GET /...", "instantiate", "execute", "GET"]
            .iter()
            .all(|name| spans.iter().any(|s| s.name == *name))
    });
    assert!(spans.iter().all(|(service, _)| service == "wms"));
    let spans: Vec<Span> = spans.into_iter().map(|(_, s)| s).collect();
    let find = |name: &str| {
        let found: Vec<&Span> = spans.iter().filter(|s| s.name == name).collect();
        assert_eq!(found.len(), 1, "spans named {name:?}: {spans:#?}");
        found[0]
    };
    let (server_span, instantiate, execute, outbound) = (
        find("GET /..."),
        find("instantiate"),
        find("execute"),
        find("GET"),
    );
    // One trace, the caller's.
    for span in [server_span, instantiate, execute, outbound] {
        assert_eq!(hex(&span.trace_id), TRACE_ID, "{span:#?}");
    }
    // The request's span is the caller's span's child; the guest's spans are its children;
    // the outbound request is a child of the guest's execution.
    assert_eq!(hex(&server_span.parent_span_id), CALLER_SPAN);
    assert_eq!(instantiate.parent_span_id, server_span.span_id);
    assert_eq!(execute.parent_span_id, server_span.span_id);
    assert_eq!(outbound.parent_span_id, execute.span_id);
    assert_eq!(server_span.kind, SpanKind::Server as i32);
    assert_eq!(outbound.kind, SpanKind::Client as i32);
    assert_eq!(instantiate.kind, SpanKind::Internal as i32);
    let attrs = |span: &Span, expected: &[(&str, String)]| {
        for (key, want) in expected {
            assert_eq!(
                attribute(&span.attributes, key).as_ref(),
                Some(want),
                "{key} of {span:#?}"
            );
        }
    };
    attrs(
        server_span,
        &[
            ("http.request.method", "GET".into()),
            ("http.route", "/...".into()),
            ("url.path", "/outbound".into()),
            ("http.response.status_code", "200".into()),
            ("wms.component", "kit".into()),
        ],
    );
    attrs(
        outbound,
        &[
            ("http.request.method", "GET".into()),
            ("server.address", "127.0.0.1".into()),
            ("server.port", upstream.addr.port().to_string()),
            ("url.full", format!("http://{}/hello", upstream.addr)),
            ("http.response.status_code", "200".into()),
        ],
    );
    attrs(instantiate, &[("wms.component", "kit".into())]);
    // The upstream server got the client span's context.
    let got = upstream.received();
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].headers["traceparent"],
        format!("00-{TRACE_ID}-{}-01", hex(&outbound.span_id)).as_str()
    );

    // Without a traceparent, the request starts a trace, whose id names it in the log.
    rt().block_on(async {
        assert_eq!(
            client()
                .get(server.url("/log"))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    });
    let spans = receiver.wait_for_spans(|spans| {
        spans.iter().any(|s| {
            s.name == "GET /..." && attribute(&s.attributes, "url.path").as_deref() == Some("/log")
        })
    });
    let (_, log_span) = spans
        .iter()
        .find(|(_, s)| attribute(&s.attributes, "url.path").as_deref() == Some("/log"))
        .unwrap();
    assert!(log_span.parent_span_id.is_empty(), "{log_span:#?}");
    let log = server.wait_for_log("to stdout from the guest");
    let line = log
        .lines()
        .find(|l| l.contains("to stdout from the guest"))
        .unwrap();
    assert!(
        line.contains(&format!(
            "request{{request_id={}}}",
            hex(&log_span.trace_id)
        )),
        "{line}"
    );
}

#[test]
fn spans_not_yet_exported_are_flushed_at_shutdown() {
    // Batches would go out in ten minutes: only the flush at shutdown sends them.
    let (receiver, upstream, server, _dir) =
        serve_traced("600000", &[("OTEL_SERVICE_NAME", "shop".to_string())]);
    call_upstream(&server, &upstream, None);
    stop(server);
    let spans = receiver.spans();
    let names: Vec<&str> = spans.iter().map(|(_, s)| s.name.as_str()).collect();
    for name in ["GET /...", "instantiate", "execute", "GET"] {
        assert!(names.contains(&name), "{name} not in {names:?}");
    }
    assert!(spans.iter().all(|(service, _)| service == "shop"));
}

#[test]
fn without_an_otlp_endpoint_or_with_exporter_none_nothing_is_traced() {
    no_otel_variables_here();
    let receiver = Capture::start();
    let upstream = Capture::start();
    let endpoint = (
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        format!("http://{}", receiver.addr),
    );
    for env in [
        vec![("OTEL_SERVICE_NAME", "shop".to_string())],
        vec![
            endpoint.clone(),
            ("OTEL_TRACES_EXPORTER", "none".to_string()),
        ],
    ] {
        let (server, _dir) = serve(&upstream, &env);
        call_upstream(
            &server,
            &upstream,
            Some(&format!("00-{TRACE_ID}-{CALLER_SPAN}-01")),
        );
        assert!(!server.log().contains("traces:"), "{}", server.log());
        // The process ends as it would have flushed spans, had there been any.
        stop(server);
    }
    // No traceparent went out (the guest sets none), and nothing was exported.
    let got = upstream.received();
    assert_eq!(got.len(), 2);
    assert!(got.iter().all(|r| !r.headers.contains_key("traceparent")));
    assert!(receiver.received().is_empty());
}

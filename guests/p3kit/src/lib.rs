//! A `wasi:http` 0.3 test guest. The last path segment picks what it does:
//! - `hello` (and anything else): `hello from p3`, with `x-instance-requests`: how many requests
//!   this instance has served, this one included (1 on a fresh instance);
//! - `echo`: streams the request body back and forwards its trailers;
//! - `headers`: the request's headers, one `name: value` line each;
//! - `slow?ms=N`: answers after N milliseconds (waiting, not spinning);
//! - `drip`: answers at once, then writes a `.` to the body every 100 ms, forever;
//! - `trap`: panics; `loop`: spins forever; `hog`: grows memory until it fails;
//! - `fail`: answers with a `wasi:http` error code instead of a response.

use std::sync::atomic::{AtomicU32, Ordering};

use wasip3::http::types::{ErrorCode, Fields, Request, Response};
use wasip3::{wit_bindgen, wit_future, wit_stream};

struct Kit;

wasip3::http::service::export!(Kit);

/// Requests this instance has served: shows whether an instance was reused.
static SEEN: AtomicU32 = AtomicU32::new(0);

impl wasip3::exports::http::handler::Guest for Kit {
    async fn handle(req: Request) -> Result<Response, ErrorCode> {
        let seen = SEEN.fetch_add(1, Ordering::Relaxed) + 1;
        let target = req.get_path_with_query().unwrap_or_default();
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        match path.rsplit('/').next().unwrap_or("") {
            "echo" => Ok(echo(req)),
            "headers" => {
                let mut lines = String::new();
                for (name, value) in req.get_headers().copy_all() {
                    lines.push_str(&format!("{name}: {}\n", String::from_utf8_lossy(&value)));
                }
                Ok(text(seen, lines))
            }
            "slow" => {
                let ms: u64 = query
                    .strip_prefix("ms=")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(200);
                wasip3::clocks::monotonic_clock::wait_for(ms * 1_000_000).await;
                Ok(text(seen, format!("slept {ms}ms\n")))
            }
            "drip" => Ok(drip(seen)),
            "trap" => panic!("p3kit: trap requested"),
            "loop" => {
                let mut n = 0u64;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            "hog" => {
                let mut held: Vec<Vec<u8>> = Vec::new();
                loop {
                    held.push(std::hint::black_box(vec![1u8; 1 << 20]));
                }
            }
            "fail" => Err(ErrorCode::InternalError(Some(
                "p3kit: asked to fail".into(),
            ))),
            _ => Ok(text(seen, "hello from p3\n".to_string())),
        }
    }
}

/// A text response written by a task that runs after `handle` returns.
fn text(seen: u32, body: String) -> Response {
    let headers = Fields::from_list(&[
        ("content-type".into(), b"text/plain".to_vec()),
        ("x-instance-requests".into(), seen.to_string().into_bytes()),
    ])
    .expect("valid headers");
    let (mut tx, rx) = wit_stream::new();
    let (trailers_tx, trailers_rx) = wit_future::new(|| Ok(None));
    drop(trailers_tx);
    let (response, _sent) = Response::new(headers, Some(rx), trailers_rx);
    wit_bindgen::spawn_local(async move {
        let _ = tx.write_all(body.into_bytes()).await;
    });
    response
}

/// A body that never ends: a `.` every 100 ms until the host stops taking it.
fn drip(seen: u32) -> Response {
    let headers =
        Fields::from_list(&[("x-instance-requests".into(), seen.to_string().into_bytes())])
            .expect("valid headers");
    let (mut tx, rx) = wit_stream::new();
    let (trailers_tx, trailers_rx) = wit_future::new(|| Ok(None));
    drop(trailers_tx);
    let (response, _sent) = Response::new(headers, Some(rx), trailers_rx);
    wit_bindgen::spawn_local(async move {
        loop {
            if !tx.write_all(b".".to_vec()).await.is_empty() {
                return;
            }
            wasip3::clocks::monotonic_clock::wait_for(100_000_000).await;
        }
    });
    response
}

/// The request body streamed back as it arrives, then its trailers.
fn echo(req: Request) -> Response {
    let mut headers = Vec::new();
    for name in ["content-type", "trailer"] {
        for value in req.get_headers().get(name) {
            headers.push((name.to_string(), value));
        }
    }
    let headers = Fields::from_list(&headers).expect("valid headers");
    let (consumed_tx, consumed_rx) = wit_future::new(|| Ok(()));
    let (mut body_in, trailers_in) = Request::consume_body(req, consumed_rx);
    let (mut body_out, body_rx) = wit_stream::new();
    let (trailers_tx, trailers_rx) = wit_future::new(|| Ok(None));
    let (response, _sent) = Response::new(headers, Some(body_rx), trailers_rx);
    wit_bindgen::spawn_local(async move {
        let mut buf = Vec::with_capacity(16 * 1024);
        loop {
            let (status, chunk) = body_in.read(buf).await;
            if chunk.is_empty() {
                if matches!(status, wit_bindgen::StreamResult::Dropped) {
                    break;
                }
                buf = chunk;
                continue;
            }
            if !body_out.write_all(chunk).await.is_empty() {
                break;
            }
            buf = Vec::with_capacity(16 * 1024);
        }
        drop(body_out);
        let trailers = trailers_in.await;
        let _ = trailers_tx.write(trailers).await;
        let _ = consumed_tx.write(Ok(())).await;
    });
    response
}

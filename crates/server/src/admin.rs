//! The admin listener (`--admin-listen`, `WMS_ADMIN_LISTEN`): `/metrics` in the Prometheus text
//! format, `/healthz` (the process is alive and answering) and `/readyz` (every component is
//! compiled and linked, and the server is not draining). Off unless asked for; it listens apart
//! from the app so that probes and scrapes are never routed to a guest and never count against
//! the app's limits.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use wms_runtime::metrics::{CONTENT_TYPE, Metrics};

/// Admin connections open at once; more wait in the kernel's backlog.
const MAX_ADMIN_CONNECTIONS: usize = 64;
/// How long an admin client may take to send its request head.
const ADMIN_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// What `/readyz` answers from: set ready once the app is loaded, draining once shutdown began.
#[derive(Debug, Default)]
pub struct Health {
    ready: AtomicBool,
    draining: AtomicBool,
}

impl Health {
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
    }

    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// `Ok` when ready, else why not.
    fn readiness(&self) -> Result<(), &'static str> {
        if self.draining.load(Ordering::Relaxed) {
            Err("draining: shutting down\n")
        } else if !self.ready.load(Ordering::Relaxed) {
            Err("starting: components are not loaded yet\n")
        } else {
            Ok(())
        }
    }
}

/// The admin listener's address from `ADDR` or a bare `PORT` (then on 127.0.0.1: loopback
/// unless the operator names another address).
pub fn address(s: &str) -> Result<SocketAddr, String> {
    let s = s.trim();
    if let Ok(port) = s.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    s.parse::<SocketAddr>().map_err(|_| {
        format!("{s:?} is neither a port nor an address; write e.g. 9090 or 0.0.0.0:9090")
    })
}

/// Serves the admin endpoints on `listener` until the process ends.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, health: Arc<Health>) {
    let slots = Arc::new(Semaphore::new(MAX_ADMIN_CONNECTIONS));
    loop {
        let slot = slots
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!("admin listener: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let metrics = metrics.clone();
        let health = health.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |req| {
                let response = answer(&req, &metrics, &health);
                async move { Ok::<_, Infallible>(response) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(ADMIN_HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn answer<B>(req: &Request<B>, metrics: &Metrics, health: &Health) -> Response<Full<Bytes>> {
    let text = |status: StatusCode, content_type: &'static str, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        r.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        r
    };
    const PLAIN: &str = "text/plain; charset=utf-8";
    let path = req.uri().path();
    let known = matches!(path, "/metrics" | "/healthz" | "/readyz");
    if known && req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = text(
            StatusCode::METHOD_NOT_ALLOWED,
            PLAIN,
            "GET or HEAD\n".to_string(),
        );
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    match path {
        "/metrics" => text(StatusCode::OK, CONTENT_TYPE, metrics.encode()),
        "/healthz" => text(StatusCode::OK, PLAIN, "ok\n".to_string()),
        "/readyz" => match health.readiness() {
            Ok(()) => text(StatusCode::OK, PLAIN, "ready\n".to_string()),
            Err(why) => text(StatusCode::SERVICE_UNAVAILABLE, PLAIN, why.to_string()),
        },
        _ => text(
            StatusCode::NOT_FOUND,
            PLAIN,
            "the admin listener serves /metrics, /healthz and /readyz\n".to_string(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_port_is_loopback() {
        assert_eq!(address("9090").unwrap(), "127.0.0.1:9090".parse().unwrap());
        assert_eq!(
            address("0.0.0.0:9091").unwrap(),
            "0.0.0.0:9091".parse().unwrap()
        );
        assert_eq!(address("[::1]:0").unwrap(), "[::1]:0".parse().unwrap());
        assert!(address("localhost:9090").is_err());
        assert!(address("70000").is_err());
    }

    #[test]
    fn ready_only_between_load_and_drain() {
        let h = Health::default();
        assert!(h.readiness().is_err());
        h.set_ready();
        assert!(h.readiness().is_ok());
        h.set_draining();
        assert_eq!(h.readiness(), Err("draining: shutting down\n"));
    }
}

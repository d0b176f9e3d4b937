//! The HTTP front end of wms: accepts HTTP/1.1 (keep-alive) and cleartext HTTP/2 connections,
//! routes each request to a component with Spin's semantics, adds the `spin-*` headers Spin's
//! HTTP trigger adds, enforces the body size limit and the header read timeout, turns runtime
//! failures into 503/504/500 answers, and shuts down gracefully.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use wms_manifest::App;
use wms_runtime::{Failure, ResponseBody, Runtime};

/// Largest request body accepted by default (413 beyond it).
pub const DEFAULT_MAX_BODY: u64 = 1 << 30;
/// How long a client may take to send its request headers.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long in-flight requests may take to finish after a shutdown signal.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// Settings of the HTTP front end.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    pub max_body: u64,
    pub header_read_timeout: Duration,
    pub shutdown_grace: Duration,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            max_body: DEFAULT_MAX_BODY,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
        }
    }
}

/// Serves `app` on `listener` until `shutdown` resolves, then stops accepting and waits up to
/// `options.shutdown_grace` for in-flight requests. Returns whether every connection finished
/// in time.
pub async fn serve(
    app: Arc<App>,
    runtime: Arc<Runtime>,
    listener: TcpListener,
    options: ServerOptions,
    shutdown: impl Future<Output = ()>,
) -> bool {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .keep_alive(true)
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout);
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    let options = Arc::new(options);
    tokio::pin!(shutdown);
    loop {
        let (stream, client) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and similar: back off instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let front = Front {
            app: app.clone(),
            runtime: runtime.clone(),
            options: options.clone(),
            client,
        };
        let service = hyper::service::service_fn(move |req| {
            let front = front.clone();
            async move { Ok::<_, Infallible>(front.handle(req).await) }
        });
        let conn = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%client, "connection ended: {e}");
            }
        });
    }
    drop(listener);
    tracing::info!(
        "shutting down: waiting up to {:?} for in-flight requests",
        options.shutdown_grace
    );
    match tokio::time::timeout(options.shutdown_grace, graceful.shutdown()).await {
        Ok(()) => true,
        Err(_) => {
            tracing::warn!(
                "in-flight requests did not finish within {:?}",
                options.shutdown_grace
            );
            false
        }
    }
}

#[derive(Clone)]
struct Front {
    app: Arc<App>,
    runtime: Arc<Runtime>,
    options: Arc<ServerOptions>,
    client: SocketAddr,
}

impl Front {
    async fn handle(&self, mut req: Request<Incoming>) -> Response<ResponseBody> {
        let start = Instant::now();
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let Some((route, matched)) = self.app.route(&path) else {
            return plain(StatusCode::NOT_FOUND, "no route matches this path\n");
        };
        let component = route.component.clone();
        if let Some(len) = content_length(&req)
            && len > self.options.max_body
        {
            return plain(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!(
                    "request body of {len} bytes is over the limit of {} bytes\n",
                    self.options.max_body
                ),
            );
        }

        let authority = req.uri().authority().map(|a| a.to_string()).or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
        });
        let authority = match authority {
            Some(a) => a,
            None => {
                // HTTP/1.0 without Host: the guest still needs an authority.
                let a = self.client.to_string();
                if let Ok(v) = HeaderValue::from_str(&a) {
                    req.headers_mut().insert(header::HOST, v);
                }
                a
            }
        };
        let path_and_query = req
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        let headers = req.headers_mut();
        // Clients must not forge what the host asserts.
        let forged: Vec<HeaderName> = headers
            .keys()
            .filter(|k| k.as_str().starts_with("spin-"))
            .cloned()
            .collect();
        for k in forged {
            headers.remove(k);
        }
        let mut set = |name: &str, value: &str| {
            if let (Ok(n), Ok(v)) = (HeaderName::try_from(name), HeaderValue::from_str(value)) {
                headers.insert(n, v);
            }
        };
        set(
            "spin-full-url",
            &format!("http://{authority}{path_and_query}"),
        );
        set("spin-path-info", &matched.path_info);
        set("spin-matched-route", route.pattern.raw());
        set("spin-raw-component-route", route.pattern.raw());
        set("spin-component-route", route.pattern.without_wildcard());
        set("spin-base-path", &self.app.base);
        set("spin-client-addr", &self.client.to_string());
        for (name, value) in &matched.params {
            set(&format!("spin-path-match-{name}"), value);
        }

        let max_body = usize::try_from(self.options.max_body).unwrap_or(usize::MAX);
        let req = req.map(|body| Limited::new(body, max_body));
        let response = match self.runtime.handle(&component, req).await {
            Ok(resp) => resp,
            Err(failure) => failure_response(&component, &failure),
        };
        tracing::debug!(
            component = %component,
            "{method} {path} -> {} in {:?}",
            response.status().as_u16(),
            start.elapsed()
        );
        response
    }
}

fn content_length<B>(req: &Request<B>) -> Option<u64> {
    req.headers()
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

fn plain(status: StatusCode, text: &str) -> Response<ResponseBody> {
    let mut resp = Response::new(
        Full::new(Bytes::from(text.to_string()))
            .map_err(|e| match e {})
            .boxed_unsync(),
    );
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// The answer for a request whose guest failed; details are in the host log, not the response.
fn failure_response(component: &str, failure: &Failure) -> Response<ResponseBody> {
    match failure {
        Failure::Overloaded { .. } => {
            let mut r = plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "server busy: too many concurrent requests, retry shortly\n",
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            r
        }
        Failure::Timeout { .. } => plain(
            StatusCode::GATEWAY_TIMEOUT,
            &format!("component `{component}` did not finish in time\n"),
        ),
        _ => plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("component `{component}` failed to handle the request\n"),
        ),
    }
}

//! The HTTP front end of wms: accepts HTTP/1.1 (keep-alive) and cleartext HTTP/2 connections,
//! routes each request to a component with Spin's semantics, adds the `spin-*` headers Spin's
//! HTTP trigger adds, turns runtime failures into 503/504/500 answers, and shuts down
//! gracefully.
//!
//! Clients are untrusted, so everything a connection can hold is bounded: the number of open
//! connections (`max_connections`), the time from connecting to the first request and between
//! requests (`header_read_timeout`, `idle_timeout`, for HTTP/1 and HTTP/2 alike, with HTTP/2
//! pings to find dead peers), the request body's size (`max_body`) and how long a client may
//! stall while sending it (`body_idle_timeout`), and a request whose client goes away cancels
//! its guest.

pub mod admin;
mod body;
mod conn;
pub mod launch;
pub mod telemetry;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use wms_manifest::App;
use wms_runtime::metrics::{Metrics, RouteMetrics};
use wms_runtime::{ResponseBody, Runtime, failure_response, plain_response as plain};

/// Largest request body accepted by default (413 beyond it).
pub const DEFAULT_MAX_BODY: u64 = 1 << 30;
/// How long a client may take to send its request headers.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long in-flight requests may take to finish after a shutdown signal.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// How long a connection may stay open without a request in flight.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a client may go without sending any of a request body it has started.
pub const DEFAULT_BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Open connections at most, unless the descriptor limit calls for fewer.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// HTTP/2: how often an idle peer is pinged, and how long it has to answer.
const H2_PING_INTERVAL: Duration = Duration::from_secs(20);
const H2_PING_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a connection asked to close for idleness may take before it is dropped.
const IDLE_CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Settings of the HTTP front end.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    pub max_body: u64,
    /// From accept to a complete request head, for the first request and each later one.
    pub header_read_timeout: Duration,
    /// Between requests on a connection.
    pub idle_timeout: Duration,
    /// While a request body is being received, between two pieces of it.
    pub body_idle_timeout: Duration,
    pub max_connections: usize,
    pub shutdown_grace: Duration,
    /// Where requests and connections are counted (`None`: they are not).
    pub metrics: Option<Arc<Metrics>>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            max_body: DEFAULT_MAX_BODY,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            body_idle_timeout: DEFAULT_BODY_IDLE_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            metrics: None,
        }
    }
}

/// What serves requests: an app's routes and its loaded components. A reload replaces it whole
/// ([`Current::replace`]); a request keeps the version it was routed with until its response
/// ends, and a version is freed when its last request is done.
pub struct Version {
    pub app: Arc<App>,
    pub runtime: Arc<Runtime>,
    /// Per route of `app.routes`, when counting.
    routes: Option<Arc<[RouteMetrics]>>,
    /// Per route of `app.routes`: its `spin-*` headers that are the same for every request.
    route_headers: Vec<Vec<(HeaderName, HeaderValue)>>,
}

impl Version {
    /// `app` served by `runtime`, its routes counted in `metrics` if given.
    pub fn new(app: Arc<App>, runtime: Arc<Runtime>, metrics: Option<&Metrics>) -> Self {
        // Each route's counters, resolved once (same order as `app.routes`).
        let routes = metrics.map(|m| {
            app.routes
                .iter()
                .map(|r| m.route(&r.component, r.pattern.raw()))
                .collect()
        });
        let route_headers = app
            .routes
            .iter()
            .map(|r| {
                wms_manifest::routes::spin_route_headers(&app.base, &r.pattern)
                    .into_iter()
                    .filter_map(|(name, value)| {
                        Some((
                            HeaderName::from_static(name),
                            HeaderValue::try_from(value).ok()?,
                        ))
                    })
                    .collect()
            })
            .collect();
        Self {
            app,
            runtime,
            routes,
            route_headers,
        }
    }
}

/// The version new requests are routed to; cloned handles share it.
#[derive(Clone)]
pub struct Current(Arc<RwLock<Arc<Version>>>);

impl Current {
    pub fn new(version: Version) -> Self {
        Self(Arc::new(RwLock::new(Arc::new(version))))
    }

    /// The version serving new requests now.
    pub fn get(&self) -> Arc<Version> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Routes new requests to `version`; returns the one it replaces (requests routed before
    /// keep it).
    pub fn replace(&self, version: Version) -> Arc<Version> {
        std::mem::replace(
            &mut *self.0.write().unwrap_or_else(|e| e.into_inner()),
            Arc::new(version),
        )
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
    let version = Version::new(app, runtime, options.metrics.as_deref());
    serve_current(Current::new(version), listener, options, shutdown).await
}

/// [`serve`] whatever version `current` holds at each request: a reload swaps it under the
/// running server.
pub async fn serve_current(
    current: Current,
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
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(H2_PING_INTERVAL))
        .keep_alive_timeout(H2_PING_TIMEOUT);
    let builder = Arc::new(builder);
    let bounds = conn::Bounds {
        first_request: options.header_read_timeout,
        idle: options.idle_timeout,
        close_grace: IDLE_CLOSE_GRACE,
    };
    let closing = CancellationToken::new();
    let connections = TaskTracker::new();
    let slots = Arc::new(Semaphore::new(options.max_connections));
    let mut saturated = false;
    let options = Arc::new(options);
    tokio::pin!(shutdown);
    loop {
        // A connection slot first: at the cap, new clients wait in the kernel's backlog
        // until a connection closes (idle ones close within their bounds), instead of wms
        // running out of descriptors and refusing everyone.
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                if !saturated {
                    tracing::warn!(
                        "connection limit of {} reached: new connections wait until one closes (silent or idle ones close after {:?} / {:?}); raise --max-connections or the descriptor limit if this is real load",
                        options.max_connections,
                        options.header_read_timeout,
                        options.idle_timeout
                    );
                    saturated = true;
                }
                tokio::select! {
                    slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
                    () = &mut shutdown => break,
                }
            }
        };
        if saturated && slots.available_permits() > options.max_connections / 10 {
            tracing::info!("open connections below the limit again");
            saturated = false;
        }
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
        let activity = conn::Activity::new();
        let front = Front {
            current: current.clone(),
            options: options.clone(),
            client,
            client_text: client.to_string().into(),
        };
        let busy_on = activity.clone();
        let service = hyper::service::service_fn(move |req| {
            let front = front.clone();
            // Counted from here: dropped with the response body, or with this future if the
            // client leaves first.
            let busy = busy_on.begin();
            async move { Ok::<_, Infallible>(front.handle(req, busy).await) }
        });
        let conn = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        let closing = closing.clone();
        // Boxed as a trait object: rustc cannot prove the connection future `Send` for every
        // lifetime when it is driven from inside a generic async fn.
        let conn: Pin<Box<dyn conn::Conn>> = Box::pin(conn);
        let open = options
            .metrics
            .as_ref()
            .map(|m| OpenConnection::new(m.open_connections()));
        connections.spawn(async move {
            let _slot = slot;
            let _open = open;
            let end = conn::watch(conn, &activity, bounds, &closing).await;
            if end == conn::End::Idle {
                tracing::debug!(%client, "closed a silent or idle connection");
            }
        });
    }
    drop(listener);
    tracing::info!(
        "shutting down: waiting up to {:?} for in-flight requests",
        options.shutdown_grace
    );
    closing.cancel();
    connections.close();
    match tokio::time::timeout(options.shutdown_grace, connections.wait()).await {
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

/// One open connection in the gauge, for as long as this lives.
struct OpenConnection(prometheus_client::metrics::gauge::Gauge);

impl OpenConnection {
    fn new(gauge: &prometheus_client::metrics::gauge::Gauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[derive(Clone)]
struct Front {
    current: Current,
    options: Arc<ServerOptions>,
    client: SocketAddr,
    /// `client` as text (`spin-client-addr`), made once per connection.
    client_text: Arc<str>,
}

impl Front {
    async fn handle(&self, mut req: Request<Incoming>, busy: conn::Busy) -> Response<Sending> {
        // When traces are exported: the request's server span, which its executor's spans are
        // children of.
        let trace = telemetry::server_span(req.headers(), req.method(), req.uri().path());
        if let Some(span) = &trace {
            req.extensions_mut()
                .insert(wms_runtime::trace::RequestContext(span.context().clone()));
        }
        // Every line logged about the request, its guest's output included, is in this span.
        let span = tracing::info_span!("request", request_id = tracing::field::Empty);
        if !span.is_disabled() {
            let id = match &trace {
                Some(t) => telemetry::trace_id(t),
                None => request_id(req.headers()),
            };
            span.record("request_id", tracing::field::display(id));
        }
        tracing::Instrument::instrument(self.serve_request(req, busy, trace), span).await
    }

    async fn serve_request(
        &self,
        req: Request<Incoming>,
        busy: conn::Busy,
        trace: Option<wms_runtime::trace::SpanEnd>,
    ) -> Response<Sending> {
        let start = Instant::now();
        // Read once: the request is served by this version to its end, whatever a reload swaps
        // in meanwhile.
        let version = self.current.get();
        let response = match version.app.route_index(req.uri().path()) {
            None => plain(StatusCode::NOT_FOUND, "no route matches this path\n"),
            Some((index, matched)) => {
                if let Some(span) = &trace {
                    let route = &version.app.routes[index];
                    telemetry::routed(span, req.method(), route.pattern.raw(), &route.component);
                }
                let response = self.route(&version, req, index, matched, start).await;
                if let Some(routes) = &version.routes {
                    routes[index].observe(response.status().as_u16(), start.elapsed());
                }
                response
            }
        };
        if let Some(span) = &trace {
            telemetry::responded(span, response.status());
        }
        // The connection counts as busy, the server span lasts, and the version stays alive (its
        // staged files, its pool), until the response body is done or dropped.
        response.map(|body| Sending {
            body,
            _held: (busy, trace, version),
        })
    }

    async fn route(
        &self,
        version: &Version,
        mut req: Request<Incoming>,
        index: usize,
        matched: wms_manifest::RouteMatch,
        start: Instant,
    ) -> Response<ResponseBody> {
        // Only for the debug line at the end: nothing is copied when it is off.
        let described = tracing::enabled!(tracing::Level::DEBUG)
            .then(|| (req.method().clone(), req.uri().path().to_string()));
        let route = &version.app.routes[index];
        let component = route.component.as_str();
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

        // Only a component's call through service chaining is addressed to `NAME.spin.internal`:
        // a client's request saying so is stripped of it (as Spin does), so no guest can take it
        // for one.
        let chained = |a: &str| {
            let host = a.rsplit_once(':').map_or(a, |(h, _)| h);
            wms_manifest::outbound::in_chaining_domain(host)
        };
        if req.uri().authority().is_some_and(|a| chained(a.as_str())) {
            let mut parts = req.uri().clone().into_parts();
            parts.scheme = None;
            parts.authority = None;
            if let Ok(uri) = http::Uri::from_parts(parts) {
                *req.uri_mut() = uri;
            }
        }
        if req
            .headers()
            .get_all(header::HOST)
            .iter()
            .any(|h| h.to_str().map_or(true, chained))
        {
            // Every Host header goes: a second one is not looked at elsewhere either.
            req.headers_mut().remove(header::HOST);
        }
        let path_and_query = |req: &Request<Incoming>| {
            req.uri()
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_string()
        };
        let authority = req.uri().authority().map(|a| a.as_str()).or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
        });
        let full_url = match authority {
            Some(a) => ["http://", a, &path_and_query(&req)].concat(),
            None => {
                // HTTP/1.0 without Host: the guest still needs an authority.
                let a = self.client.to_string();
                if let Ok(v) = HeaderValue::from_str(&a) {
                    req.headers_mut().insert(header::HOST, v);
                }
                format!("http://{a}{}", path_and_query(&req))
            }
        };
        let headers = req.headers_mut();
        // Clients must not forge what the host asserts.
        if headers.keys().any(|k| k.as_str().starts_with("spin-")) {
            let forged: Vec<HeaderName> = headers
                .keys()
                .filter(|k| k.as_str().starts_with("spin-"))
                .cloned()
                .collect();
            for k in forged {
                headers.remove(k);
            }
        }
        for (name, value) in &version.route_headers[index] {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in
            wms_manifest::routes::spin_request_headers(matched, full_url, Some(&self.client_text))
        {
            let name = match name {
                std::borrow::Cow::Borrowed(n) => Ok(HeaderName::from_static(n)),
                std::borrow::Cow::Owned(n) => HeaderName::try_from(n),
            };
            // The value's bytes are taken over, not copied.
            if let (Ok(n), Ok(v)) = (name, HeaderValue::from_maybe_shared(Bytes::from(value))) {
                headers.insert(n, v);
            }
        }

        let max_body = usize::try_from(self.options.max_body).unwrap_or(usize::MAX);
        let (parts, incoming) = req.into_parts();
        let body = body::GuardedBody::new(incoming, max_body, self.options.body_idle_timeout);
        let body_state = body.state.clone();
        let req = Request::from_parts(parts, body);
        let response = match version.runtime.handle(component, req).await {
            Ok(resp) => resp,
            Err(failure) => failure_response(component, &failure),
        };
        // Whatever the guest made of a body error, the client's part is answered for what it
        // was. (A response dropped here cancels its guest.)
        if body_state.over_limit() {
            tracing::info!(
                component = %component,
                "request body over the limit of {} bytes: 413",
                self.options.max_body
            );
            return plain(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!(
                    "request body is over the limit of {} bytes\n",
                    self.options.max_body
                ),
            );
        }
        if body_state.stalled() {
            tracing::info!(
                component = %component,
                "the client sent no request body data for {:?}: 408",
                self.options.body_idle_timeout
            );
            let mut r = plain(
                StatusCode::REQUEST_TIMEOUT,
                "request body not received in time\n",
            );
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return r;
        }
        if let Some((method, path)) = described {
            tracing::debug!(
                component = %component,
                "{method} {path} -> {} in {:?}",
                response.status().as_u16(),
                start.elapsed()
            );
        }
        response
    }
}

/// A response body on its way to the client, with what must live until it is sent or dropped:
/// the connection's busy mark, the server span and the version that served it.
struct Sending {
    body: ResponseBody,
    _held: (
        conn::Busy,
        Option<wms_runtime::trace::SpanEnd>,
        Arc<Version>,
    ),
}

impl http_body::Body for Sending {
    type Data = Bytes;
    type Error = <ResponseBody as http_body::Body>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// A request's id in the log: the trace id of its W3C `traceparent` header when that is valid
/// (so the lines join the client's trace), else a new one of the same form, 32 hex digits.
fn request_id(headers: &http::HeaderMap) -> String {
    if let Some(id) = headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(trace_id)
    {
        return id.to_string();
    }
    use std::hash::BuildHasher as _;
    use std::sync::atomic::{AtomicU64, Ordering};
    static KEYS: std::sync::OnceLock<std::hash::RandomState> = std::sync::OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let keys = KEYS.get_or_init(std::hash::RandomState::new);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{:016x}{:016x}", keys.hash_one(n), keys.hash_one(!n))
}

/// The trace id of a `traceparent` value (`VERSION-TRACEID-PARENTID-FLAGS`, lowercase hex), if
/// it is one: version `ff` and all-zero ids are invalid.
fn trace_id(traceparent: &str) -> Option<&str> {
    let mut parts = traceparent.trim().split('-');
    let (version, trace, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let valid = hex(version, 2)
        && version != "ff"
        && (version != "00" || parts.next().is_none())
        && hex(trace, 32)
        && trace.bytes().any(|b| b != b'0')
        && hex(parent, 16)
        && parent.bytes().any(|b| b != b'0')
        && hex(flags, 2);
    valid.then_some(trace)
}

fn content_length<B>(req: &Request<B>) -> Option<u64> {
    req.headers()
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_id_is_the_trace_id_of_a_valid_traceparent() {
        let id = "4bf92f3577b34da6a3ce929d0e0e4736";
        assert_eq!(trace_id(&format!("00-{id}-00f067aa0ba902b7-01")), Some(id));
        // A later version may add fields.
        assert_eq!(
            trace_id(&format!("01-{id}-00f067aa0ba902b7-01-x")),
            Some(id)
        );
        for bad in [
            format!("00-{id}-00f067aa0ba902b7-01-x"),
            format!("ff-{id}-00f067aa0ba902b7-01"),
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01".to_string(),
            format!("00-{id}-0000000000000000-01"),
            format!("00-{}-00f067aa0ba902b7-01", id.to_uppercase()),
            format!("00-{id}-00f067aa0ba902b7"),
            "garbage".to_string(),
        ] {
            assert_eq!(trace_id(&bad), None, "{bad}");
        }
        let mut headers = http::HeaderMap::new();
        headers.insert(
            "traceparent",
            HeaderValue::from_str(&format!("00-{id}-00f067aa0ba902b7-01")).unwrap(),
        );
        assert_eq!(request_id(&headers), id);
        let (a, b) = (
            request_id(&http::HeaderMap::new()),
            request_id(&http::HeaderMap::new()),
        );
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        assert!(trace_id(&format!("00-{a}-00f067aa0ba902b7-01")).is_some());
    }
}

//! Service chaining: a component's request to `http://NAME.spin.internal/...` runs component
//! `NAME` of the same app, and a request to the app itself (a URL with no host, as the Spin SDKs
//! send a relative URL such as `/api/users`) runs whichever component the app's routes give its
//! path; both in this process, without a socket, a connection or the network.
//!
//! As in Spin, chaining to `NAME` needs `http://NAME.spin.internal` (or `http://*.spin.internal`)
//! in the caller's `allowed_outbound_hosts` (neither `*://*:*` nor `self` grants it), and a
//! request to the app itself needs `http://self` (or `https://self`, or an entry allowing any
//! host). The callee gets `Host: NAME.spin.internal` (or `self`), the `spin-*` headers of its
//! route (a component called by name matches as if routed at `/...`), `spin-client-addr`
//! `127.0.0.1:0` as Spin gives chained requests, and none of the caller's own `spin-*` headers.
//!
//! A chained request is a request: it takes a slot of the server's and the callee's
//! concurrency limits, runs within the callee's timeout and memory limit, and the callee's
//! failure is the caller's 500/503/504 response, not the caller's failure. So that a component
//! calling itself, or fanning out, cannot take every slot, chained requests in flight are
//! capped at half the server's concurrent requests; over the cap a call fails with
//! `connection-limit-reached` at once.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use http::{HeaderName, HeaderValue, StatusCode};
use http_body_util::BodyExt;
use wasmtime_wasi_http::{Error as HttpError, WasiBody};
use wms_manifest::routes::spin_headers;
use wms_manifest::{App, Route, RouteMatch, RoutePattern};

use crate::{Dispatch, failure_response, plain_response};

/// What a guest sees as the client of a chained request (Spin's value).
const CHAINED_CLIENT_ADDR: &str = "127.0.0.1:0";

type IoFuture = Box<dyn Future<Output = Result<(), HttpError>> + Send>;

/// One app's chaining: its routes and components, and the dispatcher that runs them.
pub(crate) struct Chain {
    dispatch: OnceLock<Weak<Dispatch>>,
    base: String,
    routes: Vec<Route>,
    components: Vec<String>,
    in_flight: AtomicUsize,
    max_in_flight: usize,
}

/// Where a chained request goes.
pub(crate) enum Target {
    /// A component by name (`http://NAME.spin.internal`).
    Component(String),
    /// The app itself, routed by path.
    App,
}

impl Chain {
    pub(crate) fn new(app: &App, max_concurrent_requests: usize) -> Arc<Self> {
        Arc::new(Chain {
            dispatch: OnceLock::new(),
            base: app.base.clone(),
            routes: app.routes.clone(),
            components: app.components.keys().cloned().collect(),
            in_flight: AtomicUsize::new(0),
            max_in_flight: (max_concurrent_requests / 2).max(1),
        })
    }

    /// Sends chained requests to `dispatch` (the runtime the chain's components belong to).
    pub(crate) fn connect(&self, dispatch: &Arc<Dispatch>) {
        let _ = self.dispatch.set(Arc::downgrade(dispatch));
    }

    pub(crate) fn has_component(&self, name: &str) -> bool {
        self.components.iter().any(|c| c == name)
    }

    /// Runs `request` from component `caller` on `target`; resolves to the callee's response
    /// head (its body streams from the callee) or, when it cannot run, to the error the caller's
    /// guest sees.
    pub(crate) fn call(
        self: &Arc<Self>,
        caller: Arc<str>,
        target: Target,
        request: http::Request<WasiBody>,
        first_byte_timeout: Option<Duration>,
        trace: Option<opentelemetry::Context>,
    ) -> impl Future<Output = Result<(http::Response<WasiBody>, IoFuture), HttpError>> + Send + 'static
    {
        let chain = self.clone();
        async move {
            let Some(dispatch) = chain.dispatch.get().and_then(Weak::upgrade) else {
                return Err(HttpError::DestinationUnavailable);
            };
            let Some(guard) = InFlight::take(&chain) else {
                tracing::warn!(
                    component = %caller,
                    "service chaining refused: {} chained requests in flight, the most allowed (half of the server's concurrent requests); raise [application.tool.wms] max_concurrent_requests, or make the component chain fewer calls at once (a component calling itself without end ends here)",
                    chain.max_in_flight
                );
                return Err(HttpError::ConnectionLimitReached);
            };
            let (mut parts, body) = request.into_parts();
            let path = parts.uri.path().to_string();
            let path_and_query = parts
                .uri
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_string();
            let (component, host, headers) = match target {
                Target::Component(name) => {
                    let host = format!("{name}.spin.internal");
                    let pattern = RoutePattern::parse("/", "/...").expect("a valid route");
                    let matched = RouteMatch {
                        params: Vec::new(),
                        path_info: path,
                    };
                    let headers = spin_headers(
                        &chain.base,
                        &pattern,
                        &matched,
                        &format!("http://{host}{path_and_query}"),
                        Some(CHAINED_CLIENT_ADDR),
                    );
                    (name, host, headers)
                }
                Target::App => {
                    let Some((route, matched)) = chain
                        .routes
                        .iter()
                        .find_map(|r| r.pattern.matches(&path).map(|m| (r, m)))
                    else {
                        return Ok(respond(
                            plain_response(StatusCode::NOT_FOUND, "no route matches this path\n"),
                            guard,
                        ));
                    };
                    let scheme = parts.uri.scheme_str().unwrap_or("http").to_string();
                    let headers = spin_headers(
                        &chain.base,
                        &route.pattern,
                        &matched,
                        &format!("{scheme}://self{path_and_query}"),
                        Some(CHAINED_CLIENT_ADDR),
                    );
                    (route.component.clone(), "self".to_string(), headers)
                }
            };
            // What the caller may not assert: the host's headers and the destination.
            let forged: Vec<HeaderName> = parts
                .headers
                .keys()
                .filter(|k| k.as_str().starts_with("spin-"))
                .cloned()
                .collect();
            for k in forged {
                parts.headers.remove(k);
            }
            for (name, value) in std::iter::once(("host".to_string(), host.clone())).chain(headers)
            {
                if let (Ok(n), Ok(v)) = (HeaderName::try_from(name), HeaderValue::from_str(&value))
                {
                    parts.headers.insert(n, v);
                }
            }
            parts.uri = http::Uri::builder()
                .scheme("http")
                .authority(host.as_str())
                .path_and_query(path_and_query.as_str())
                .build()
                .map_err(|_| HttpError::HttpRequestUriInvalid)?;
            if let Some(context) = trace {
                parts
                    .extensions
                    .insert(crate::trace::RequestContext(context));
            }
            tracing::debug!(component = %caller, "chained request to `{component}`: {path_and_query}");
            let handled = dispatch.handle(&component, http::Request::from_parts(parts, body));
            let result = match first_byte_timeout {
                Some(t) => tokio::time::timeout(t, handled)
                    .await
                    .map_err(|_| HttpError::ConnectionReadTimeout)?,
                None => handled.await,
            };
            let response = match result {
                Ok(r) => r,
                Err(f) => failure_response(&component, &f),
            };
            Ok(respond(response, guard))
        }
    }
}

/// The callee's response as the caller's guest reads it, holding the chained request's place
/// until its body is done or dropped; the returned "connection" ends then too.
fn respond(
    response: http::Response<crate::ResponseBody>,
    guard: InFlight,
) -> (http::Response<WasiBody>, IoFuture) {
    let (done, ended) = tokio::sync::oneshot::channel::<()>();
    let response = response.map(move |b| {
        b.map_err(|e| HttpError::InternalError(Some(e.to_string())))
            .map_frame(move |frame| {
                let _held = (&guard, &done);
                frame
            })
            .boxed_unsync()
    });
    let io: IoFuture = Box::new(async move {
        let _ = ended.await;
        Ok(())
    });
    (response, io)
}

/// One chained request in flight, against [`Chain::max_in_flight`].
struct InFlight(Arc<Chain>);

impl InFlight {
    fn take(chain: &Arc<Chain>) -> Option<Self> {
        chain
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < chain.max_in_flight).then_some(n + 1)
            })
            .ok()
            .map(|_| InFlight(chain.clone()))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

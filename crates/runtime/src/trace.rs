//! OpenTelemetry spans of a request inside the runtime: its guest's instantiation and execution,
//! and a client span per outbound HTTP request, whose W3C trace context goes out with it.
//!
//! Only the OpenTelemetry API is named here. `wms_server::telemetry` installs the SDK and its OTLP
//! exporter when the `OTEL_*` variables ask for it and then hands the tracer to [`install`];
//! without it [`tracer`] is `None` and nothing here runs: no span, no context, no header.
//!
//! The front end makes each request's server span and passes its context in the request's
//! extensions ([`RequestContext`]); the executors make their spans as its children.

use std::sync::OnceLock;

use opentelemetry::global::BoxedTracer;
use opentelemetry::trace::{SpanKind, Status, TraceContextExt as _, Tracer as _};
use opentelemetry::{Context, KeyValue};

static TRACER: OnceLock<BoxedTracer> = OnceLock::new();

/// Makes spans from now on with `tracer` (once per process; later calls are ignored).
pub fn install(tracer: BoxedTracer) {
    let _ = TRACER.set(tracer);
}

/// The tracer, when traces are exported.
pub fn tracer() -> Option<&'static BoxedTracer> {
    TRACER.get()
}

/// The trace context of a request (its server span), carried in the request's extensions.
#[derive(Clone, Debug)]
pub struct RequestContext(pub Context);

/// A span that ends when this is dropped (also when the work it times is cancelled), or earlier
/// with [`SpanEnd::end`].
pub struct SpanEnd(Context);

impl SpanEnd {
    /// Starts `builder`'s span as a child of `parent`.
    pub fn start(builder: opentelemetry::trace::SpanBuilder, parent: &Context) -> Option<Self> {
        let tracer = tracer()?;
        Some(Self(
            parent.with_span(builder.start_with_context(tracer, parent)),
        ))
    }

    /// The context of the span: the parent of its children.
    pub fn context(&self) -> &Context {
        &self.0
    }

    pub fn set_attribute(&self, kv: KeyValue) {
        self.0.span().set_attribute(kv);
    }

    /// Marks the span failed, with why.
    pub fn fail(&self, why: impl Into<std::borrow::Cow<'static, str>>) {
        self.0.span().set_status(Status::error(why));
    }

    pub fn end(self) {}
}

impl Drop for SpanEnd {
    fn drop(&mut self) {
        self.0.span().end();
    }
}

/// An internal child span of `parent` about component `component` (`instantiate`, `execute`).
pub(crate) fn child(
    parent: Option<&Context>,
    name: &'static str,
    component: &str,
) -> Option<SpanEnd> {
    let parent = parent?;
    let tracer = tracer()?;
    let builder = tracer
        .span_builder(name)
        .with_kind(SpanKind::Internal)
        .with_attributes([KeyValue::new("wms.component", component.to_string())]);
    SpanEnd::start(builder, parent)
}

/// The client span of an outbound request from a guest, a child of `parent`; its W3C trace
/// context (`traceparent`, and `tracestate` when it has one) replaces any the guest set on the
/// request.
pub(crate) fn client_span<B>(
    parent: Option<&Context>,
    request: &mut http::Request<B>,
    scheme: &str,
    host: &str,
    port: u16,
) -> Option<SpanEnd> {
    let parent = parent?;
    let tracer = tracer()?;
    let method = request.method().as_str().to_string();
    let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
    let authority = request
        .uri()
        .authority()
        .map_or_else(|| host.to_string(), ToString::to_string);
    let builder = tracer
        .span_builder(method.clone())
        .with_kind(SpanKind::Client)
        .with_attributes([
            KeyValue::new("http.request.method", method),
            KeyValue::new("server.address", host.to_string()),
            KeyValue::new("server.port", i64::from(port)),
            KeyValue::new("url.full", format!("{scheme}://{authority}{path}")),
        ]);
    let span = SpanEnd::start(builder, parent)?;
    let headers = request.headers_mut();
    headers.remove("traceparent");
    headers.remove("tracestate");
    opentelemetry::global::get_text_map_propagator(|p| {
        p.inject_context(
            span.context(),
            &mut opentelemetry_http::HeaderInjector(headers),
        )
    });
    // An empty `tracestate` says nothing.
    if headers
        .get("tracestate")
        .is_some_and(|v| v.as_bytes().is_empty())
    {
        headers.remove("tracestate");
    }
    Some(span)
}

/// Records how an outbound request went on its client span: the response's status (4xx and 5xx
/// fail the span), or the error.
pub(crate) fn client_outcome(
    span: &SpanEnd,
    result: Result<http::StatusCode, &wasmtime_wasi_http::Error>,
) {
    match result {
        Ok(status) => {
            span.set_attribute(KeyValue::new(
                "http.response.status_code",
                i64::from(status.as_u16()),
            ));
            if status.as_u16() >= 400 {
                span.fail(status.as_str().to_string());
            }
        }
        Err(e) => {
            // Low cardinality: the error's kind (`ConnectionRefused`), not its details.
            let debug = format!("{e:?}");
            let kind = debug
                .split(|c: char| !c.is_alphanumeric() && c != '_')
                .next()
                .unwrap_or_default()
                .to_string();
            span.set_attribute(KeyValue::new("error.type", kind));
            span.fail(e.to_string());
        }
    }
}

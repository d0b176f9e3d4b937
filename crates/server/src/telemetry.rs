//! OpenTelemetry traces: the SDK and its OTLP exporter, on when the standard `OTEL_*` variables
//! name an endpoint, and each request's server span.
//!
//! The SDK reads its settings from the process's environment itself (endpoint, headers, timeout,
//! sampler, resource, batch processor); wms decides only whether to export at all and which
//! service name to default to. Spans go out in batches from the SDK's own thread; [`Traces`]
//! flushes what is left when the server has drained.

use http::HeaderMap;
use opentelemetry::trace::{SpanKind, Status, TraceContextExt as _, Tracer as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::SdkTracerProvider;
use wms_runtime::trace::SpanEnd;

/// The log target of what is logged here (as for the rest of start-up).
const LOG_TARGET: &str = "wms";

/// How long the shutdown waits for the last spans to be exported.
const FLUSH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The exporting tracer provider; flush it with [`Traces::shutdown`] once the server is done.
pub struct Traces {
    provider: SdkTracerProvider,
}

impl Traces {
    /// Exports the spans not yet sent (5 s at most) and stops the exporter.
    pub fn shutdown(self) {
        if let Err(e) = self.provider.shutdown_with_timeout(FLUSH_TIMEOUT) {
            tracing::warn!(target: LOG_TARGET, "traces: the last spans may be lost: {e}");
        }
    }
}

/// Turns trace export on when the process's environment asks for it: an OTLP endpoint
/// (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT`), unless
/// `OTEL_TRACES_EXPORTER` is `none` or `OTEL_SDK_DISABLED` is `true`. Otherwise, or when the
/// settings are unusable (said in the log), traces stay off and cost nothing.
pub fn init_traces() -> Option<Traces> {
    init_with(|name| std::env::var(name).ok())
}

fn init_with(var: impl Fn(&str) -> Option<String>) -> Option<Traces> {
    let var = |name: &str| {
        var(name)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    if var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        return None;
    }
    match var("OTEL_TRACES_EXPORTER") {
        None => {}
        Some(e) if e.eq_ignore_ascii_case("otlp") => {}
        Some(e) if e.eq_ignore_ascii_case("none") => return None,
        Some(e) => {
            tracing::warn!(
                target: LOG_TARGET,
                "traces are not exported: OTEL_TRACES_EXPORTER={e:?}; wms exports over OTLP only (`otlp`, or `none`)"
            );
            return None;
        }
    }
    let endpoint = match var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
        Some(url) => url,
        None => format!(
            "{}/v1/traces",
            var("OTEL_EXPORTER_OTLP_ENDPOINT")?.trim_end_matches('/')
        ),
    };
    let (protocol_var, protocol) = [
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ]
    .into_iter()
    .find_map(|name| var(name).map(|v| (name, v)))
    .unwrap_or(("", "http/protobuf".to_string()));
    if protocol != "http/protobuf" {
        tracing::warn!(
            target: LOG_TARGET,
            "traces are not exported: {protocol_var}={protocol:?}; wms exports OTLP over `http/protobuf` only (a collector's port 4318)"
        );
        return None;
    }
    // The exporter's HTTP client (rustls without a provider of its own) needs one for https.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let exporter = match opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
    {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(target: LOG_TARGET, "traces are not exported: the OTLP exporter: {e}");
            return None;
        }
    };
    let mut resource = opentelemetry_sdk::Resource::builder();
    let named = var("OTEL_SERVICE_NAME").is_some()
        || var("OTEL_RESOURCE_ATTRIBUTES").is_some_and(|a| {
            a.split(',')
                .any(|kv| kv.trim_start().starts_with("service.name="))
        });
    if !named {
        resource = resource.with_service_name("wms");
    }
    let resource = resource.build();
    let service = resource
        .get(&opentelemetry::Key::from_static_str("service.name"))
        .map(|v| v.to_string())
        .unwrap_or_default();
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build();
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    opentelemetry::global::set_tracer_provider(provider.clone());
    wms_runtime::trace::install(opentelemetry::global::tracer_with_scope(
        opentelemetry::InstrumentationScope::builder("wms")
            .with_version(env!("CARGO_PKG_VERSION"))
            .build(),
    ));
    tracing::info!(
        target: LOG_TARGET,
        "traces: exporting spans over OTLP (http/protobuf) to {}, as service {service}",
        without_secrets(&endpoint)
    );
    Some(Traces { provider })
}

/// A URL for the log: its scheme, host and path (user info and query may hold credentials).
fn without_secrets(url: &str) -> String {
    match url.parse::<http::Uri>() {
        Ok(uri) => {
            format!(
                "{}://{}{}",
                uri.scheme_str().unwrap_or("http"),
                uri.host().unwrap_or_default(),
                uri.port().map(|p| format!(":{p}")).unwrap_or_default()
            ) + uri.path()
        }
        Err(_) => "an unparsable URL".to_string(),
    }
}

/// The server span of a request, started when traces are exported: a child of the caller's span
/// when the request carries a valid W3C `traceparent`, else the root of a new trace. Named
/// `METHOD` until [`routed`] names its route.
pub(crate) fn server_span(
    headers: &HeaderMap,
    method: &http::Method,
    path: &str,
) -> Option<SpanEnd> {
    let tracer = wms_runtime::trace::tracer()?;
    let parent = opentelemetry::global::get_text_map_propagator(|p| {
        p.extract(&opentelemetry_http::HeaderExtractor(headers))
    });
    let builder = tracer
        .span_builder(method.as_str().to_string())
        .with_kind(SpanKind::Server)
        .with_attributes([
            KeyValue::new("http.request.method", method.as_str().to_string()),
            KeyValue::new("url.path", path.to_string()),
            KeyValue::new("url.scheme", "http"),
        ]);
    SpanEnd::start(builder, &parent)
}

/// The trace id of a span, as in `traceparent` (32 lowercase hex digits).
pub(crate) fn trace_id(span: &SpanEnd) -> String {
    span.context().span().span_context().trace_id().to_string()
}

/// Names the span after the route that matched and the component serving it.
pub(crate) fn routed(span: &SpanEnd, method: &http::Method, route: &str, component: &str) {
    let cx: &Context = span.context();
    cx.span().update_name(format!("{method} {route}"));
    cx.span().set_attributes([
        KeyValue::new("http.route", route.to_string()),
        KeyValue::new("wms.component", component.to_string()),
    ]);
}

/// Records the response's status; a 5xx fails the span (a 4xx is the client's error).
pub(crate) fn responded(span: &SpanEnd, status: http::StatusCode) {
    span.set_attribute(KeyValue::new(
        "http.response.status_code",
        i64::from(status.as_u16()),
    ));
    if status.is_server_error() {
        span.context()
            .span()
            .set_status(Status::error(status.as_str().to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traces_are_off_unless_an_endpoint_is_named() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert!(init_with(env(&[])).is_none());
        assert!(init_with(env(&[("OTEL_SERVICE_NAME", "x")])).is_none());
        assert!(
            init_with(env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1"),
                ("OTEL_TRACES_EXPORTER", "none")
            ]))
            .is_none()
        );
        assert!(
            init_with(env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1"),
                ("OTEL_SDK_DISABLED", "true")
            ]))
            .is_none()
        );
        assert!(
            init_with(env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
            ]))
            .is_none()
        );
        assert!(wms_runtime::trace::tracer().is_none());
    }

    #[test]
    fn logged_endpoints_lose_credentials() {
        assert_eq!(
            without_secrets("https://user:pw@collector.example:4318/v1/traces?token=x"),
            "https://collector.example:4318/v1/traces"
        );
    }
}

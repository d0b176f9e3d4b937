//! The `wasi:http` 0.2 executor: a fresh instance per request, the response streamed from the
//! guest task.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context as _, anyhow};
use bytes::Bytes;
use http_body_util::BodyExt;
use tokio::sync::OwnedSemaphorePermit;
use wasmtime::Engine;
use wasmtime::Store;
use wasmtime::component::Linker;
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p3::bindings::ServicePre;

use crate::guest::{GuardedBody, HostState, Outcome, add_open_hook, new_store, spawn_guest};
use crate::load::{compile, export_names};
use crate::{BoxError, Failure, Kind, LoadedComponent, ResponseBody, failure::classify, trace, wt};

/// A request body's error as `wasi:http` reports it to the guest (over the body limit, or cut).
pub(crate) fn body_error(e: impl Into<BoxError>) -> wasmtime_wasi_http::Error {
    let e: BoxError = e.into();
    if e.is::<http_body_util::LengthLimitError>() {
        wasmtime_wasi_http::Error::HttpRequestBodySize(None)
    } else {
        wasmtime_wasi_http::Error::InternalError(Some(e.to_string()))
    }
}

/// Serves one request with a fresh instance of `comp`.
pub(crate) async fn handle<B>(
    comp: Arc<LoadedComponent>,
    request: http::Request<B>,
    permits: (OwnedSemaphorePermit, Option<OwnedSemaphorePermit>),
) -> Result<http::Response<ResponseBody>, Failure>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let request = request.map(|body| body.map_err(body_error));
    let store = new_store(&comp.engine, &comp)?;
    run(comp, store, request, permits).await
}

pub(crate) async fn run<B>(
    comp: Arc<LoadedComponent>,
    mut store: Store<HostState>,
    request: http::Request<B>,
    permits: (OwnedSemaphorePermit, Option<OwnedSemaphorePermit>),
) -> Result<http::Response<ResponseBody>, Failure>
where
    B: http_body::Body<Data = Bytes, Error = wasmtime_wasi_http::Error> + Send + 'static,
{
    let internal = |e: wasmtime::Error| Failure::Internal {
        message: format!("{e:#}"),
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    let parent = request
        .extensions()
        .get::<crate::trace::RequestContext>()
        .map(|c| c.0.clone());
    let req = store
        .data_mut()
        .http()
        .new_incoming_request(Scheme::Http, request)
        .map_err(internal)?;
    let out = store
        .data_mut()
        .http()
        .new_response_outparam(tx)
        .map_err(internal)?;
    let timeout = comp.limits.timeout;
    let deadline = tokio::time::Instant::now() + timeout;
    let task_comp = comp.clone();
    // If the client goes away (this future or the response body is dropped), so does the guest.
    let (task, done_rx, guest) = spawn_guest(&comp, permits, async move {
        let comp = task_comp;
        let mut executing = None;
        let result = tokio::time::timeout_at(deadline, async {
            let Kind::Http(pre) = &comp.kind else {
                unreachable!("only wasi:http components reach run()")
            };
            let started = std::time::Instant::now();
            let instantiating = trace::child(parent.as_ref(), "instantiate", &comp.id);
            let proxy = pre.instantiate_async(&mut store).await?;
            comp.instantiated(started);
            drop(instantiating);
            // Its outbound requests are children of this span.
            executing = trace::child(parent.as_ref(), "execute", &comp.id);
            store
                .data_mut()
                .trace_outbound(executing.as_ref().map(|s| s.context().clone()));
            proxy
                .wasi_http_incoming_handler()
                .call_handle(&mut store, req, out)
                .await
        })
        .await;
        let outcome = match result {
            Err(_) => Outcome::Failed(Failure::Timeout { timeout }),
            Ok(Ok(())) => Outcome::Done,
            Ok(Err(e)) => Outcome::Failed(classify(&e, store.data().limiter.exceeded, &comp)),
        };
        if let (Some(span), Outcome::Failed(f)) = (&executing, &outcome) {
            span.fail(f.to_string());
        }
        outcome
    });
    tokio::task::yield_now().await;
    match rx.await {
        Ok(Ok(response)) => Ok(response.map(|b| {
            GuardedBody {
                inner: b.map_err(|e| Box::new(e) as BoxError).boxed_unsync(),
                done: Some(done_rx),
                guest,
            }
            .boxed_unsync()
        })),
        Ok(Err(code)) => {
            let f = Failure::GuestError {
                message: format!("{code:?}"),
            };
            comp.count_failure(&f);
            tracing::error!(component = %comp.id, "{f}");
            Err(f)
        }
        Err(_) => match task.await {
            Ok(Outcome::Failed(f)) => Err(f),
            Ok(Outcome::Done) => {
                comp.count_failure(&Failure::NoResponse);
                tracing::error!(component = %comp.id, "{}", Failure::NoResponse);
                Err(Failure::NoResponse)
            }
            Err(e) => Err(Failure::Internal {
                message: format!("request task failed: {e}"),
            }),
        },
    }
}

/// WASI 0.2 and wasi:http, with file opens counted.
pub(crate) fn http_linker(engine: &Engine) -> anyhow::Result<Linker<HostState>> {
    let mut linker: Linker<HostState> = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)
        .map_err(wt)
        .context("link WASI 0.2")?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)
        .map_err(wt)
        .context("link wasi:http 0.2")?;
    add_open_hook(&mut linker)?;
    crate::sockets::add_to_linker(&mut linker).context("link checked wasi:sockets 0.2")?;
    // WASI 0.3 for 0.3 components: the CLI environment, clocks, random and wasi:http. Not its
    // filesystem or sockets: files and sockets go through 0.2 (checked and counted).
    wasmtime_wasi::p3::cli::add_to_linker(&mut linker)
        .and_then(|()| wasmtime_wasi::p3::clocks::add_to_linker(&mut linker))
        .and_then(|()| wasmtime_wasi::p3::random::add_to_linker(&mut linker))
        .map_err(wt)
        .context("link WASI 0.3")?;
    wasmtime_wasi_http::p3::add_to_linker(&mut linker)
        .map_err(wt)
        .context("link wasi:http 0.3")?;
    crate::variables::add_to_linker(&mut linker).context("link Spin's variables interfaces")?;
    crate::redis::add_to_linker(&mut linker).context("link Spin's Redis interface")?;
    crate::mqtt::add_to_linker(&mut linker).context("link Spin's MQTT interface")?;
    crate::postgres::add_to_linker(&mut linker).context("link Spin's PostgreSQL interface")?;
    crate::postgres4::add_to_linker(&mut linker).context("link Spin's PostgreSQL 4.2 interface")?;
    crate::kv_host::add_to_linker(&mut linker)
        .context("link the key-value and SQLite interfaces")?;
    Ok(linker)
}

/// A `wasi:http` component ready to instantiate, by the interface it exports.
pub(crate) enum HttpPre {
    /// `wasi:http/incoming-handler@0.2.x`: a fresh instance per request.
    P2(ProxyPre<HostState>),
    /// `wasi:http/handler@0.3.x`: instances reused within the component's bounds.
    P3(ServicePre<HostState>),
}

/// Compiles a `wasi:http` component and checks at start that it links and exports a handler,
/// 0.3 or 0.2 (told apart by its exports).
pub(crate) fn load_http(
    engine: &Engine,
    linker: &Linker<HostState>,
    id: &str,
    source: &Path,
    precompiled: Option<&Path>,
    metrics: Option<&crate::metrics::Metrics>,
) -> anyhow::Result<HttpPre> {
    let component = compile(engine, id, source, precompiled, metrics)?;
    let pre = linker
        .instantiate_pre(&component)
        .map_err(|e| anyhow!("{e:?}"))
        .with_context(|| {
            format!(
                "component `{id}` ({}): cannot link its imports\n  help: wms provides WASI 0.2 and wasi:http 0.2, WASI 0.3's cli, clocks, random and wasi:http (not yet its filesystem or sockets), Spin's variables (fermyon:spin/variables@2.0.0, spin:variables/variables@3.0.0, wasi:config/store@0.2.0-draft-2024-09-27), key-value store (fermyon:spin/key-value@2.0.0, spin:key-value/key-value@3.0.0, wasi:keyvalue@0.2.0-draft2), SQLite (fermyon:spin/sqlite@2.0.0, spin:sqlite/sqlite@3.0.0, spin:sqlite/sqlite@3.1.0), Redis (fermyon:spin/redis@2.0.0, spin:redis/redis@3.0.0), MQTT (fermyon:spin/mqtt@2.0.0, spin:mqtt/mqtt@3.0.0) and PostgreSQL (fermyon:spin/postgres@2.0.0, spin:postgres/postgres@4.2.0); not yet Spin's PostgreSQL 3 package, nor Spin's other host interfaces; build the component against those",
                source.display()
            )
        })?;
    let exports = export_names(engine, &component);
    if exports
        .iter()
        .any(|e| e.starts_with("wasi:http/handler@0.3"))
    {
        return ServicePre::new(pre)
            .map(HttpPre::P3)
            .map_err(|e| anyhow!("component `{id}` ({}): its `wasi:http/handler` export does not match wasi:http 0.3: {e}\n  help: build it against WASI 0.3.0 or later (the `wasip3` crate 0.7 or later, the Spin Rust SDK 7); 0.3 release candidates are not supported", source.display()));
    }
    ProxyPre::new(pre).map(HttpPre::P2).map_err(|e| {
        anyhow!(
            "component `{id}` ({}) exports neither `wasi:http/handler@0.3.x` nor `wasi:http/incoming-handler@0.2.x`: {e}\n  it exports: {}\n  help: build it as an HTTP handler (e.g. `wasip3::http::service::export!`, `wasip2::http::proxy::export!` or `#[wstd::http_server]`), or run commands with `wms run`",
            source.display(),
            if exports.is_empty() { "nothing".to_string() } else { exports.join(", ") }
        )
    })
}

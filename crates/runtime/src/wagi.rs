//! The WAGI executor: a WASI preview 1 command (C with wasi-libc, older Rust, TinyGo) serves
//! HTTP the CGI way. Request metadata arrives as environment variables (`REQUEST_METHOD`,
//! `PATH_INFO`, `QUERY_STRING`, `HTTP_*`, ...), the body on stdin; the module writes CGI headers
//! (`status:`, `location:`, `content-type:` and others), a blank line, then the body to stdout.
//! Each request gets a fresh instance with the same limits as components.
//!
//! Small responses are held until the module exits so that a non-zero exit status becomes a
//! 500; a response that outgrows [`HOLD_BYTES`] or takes longer than [`HOLD_TIME`] after its
//! headers streams, and a failure after that cuts the body off with an error.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use bytes::{Bytes, BytesMut};
use http::{HeaderName, HeaderValue, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::OwnedSemaphorePermit;
use wasmtime::component::ResourceTable;
use wasmtime::{Engine, InstancePre, Linker, Module};
use wasmtime_wasi::cli::{AsyncStdinStream, AsyncStdoutStream};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p1::wasi_snapshot_preview1::{self, WasiSnapshotPreview1};
use wasmtime_wasi::{FsPerms, WasiCtxBuilder, WasiView};

use crate::descriptors::{self, InstanceFds};
use crate::guest::{GuardedBody, GuestState, MemoryLimiter, Outcome};
use crate::{BoxError, Failure, LoadedComponent, ResponseBody, wt};

/// Longest CGI header block accepted.
const MAX_HEAD: usize = 64 * 1024;
/// Body bytes held back (waiting for the exit status) before the response starts streaming.
pub const HOLD_BYTES: usize = 64 * 1024;
/// Time after the headers before a still-running module's response starts streaming.
pub const HOLD_TIME: Duration = Duration::from_millis(500);

pub(crate) struct WagiState {
    p1: WasiP1Ctx,
    limiter: MemoryLimiter,
    fds: InstanceFds,
}

impl GuestState for WagiState {
    fn fds_and_table(&mut self) -> (&mut InstanceFds, &mut ResourceTable) {
        (&mut self.fds, self.p1.ctx().table)
    }

    fn limiter(&mut self) -> &mut MemoryLimiter {
        &mut self.limiter
    }
}

/// Store data of a preview 1 guest: its context and its descriptor counts.
pub(crate) trait P1State: GuestState {
    fn p1(&mut self) -> &mut WasiP1Ctx;
}

impl P1State for WagiState {
    fn p1(&mut self) -> &mut WasiP1Ctx {
        &mut self.p1
    }
}

/// `errno::mfile`: too many open files.
const ERRNO_MFILE: i32 = 33;

/// Adds WASI preview 1 with `path_open`, the only call through which a preview 1 guest creates
/// a host descriptor, counted: over its instance's cap or the process budget the open fails
/// with `EMFILE` and nothing is opened.
pub(crate) fn add_p1_to_linker<T: P1State>(linker: &mut Linker<T>) -> anyhow::Result<()> {
    wasmtime_wasi::p1::add_to_linker_async(linker, |s: &mut T| s.p1())
        .map_err(wt)
        .context("link WASI preview 1")?;
    type Args = (i32, i32, i32, i32, i32, i64, i64, i32, i32);
    linker.allow_shadowing(true);
    linker
        .func_wrap_async(
            "wasi_snapshot_preview1",
            "path_open",
            |mut caller: wasmtime::Caller<'_, T>, (dirfd, lookup, path, path_len, oflags, base, inheriting, fdflags, opened): Args| {
                Box::new(async move {
                    {
                        let (fds, table) = caller.data_mut().fds_and_table();
                        if fds.begin_open_p1(table).is_err() {
                            return Ok(ERRNO_MFILE);
                        }
                    }
                    // As Wasmtime's own binding does: the guest's memory, and the call's fuel
                    // (the bound on what the host copies for it).
                    let fuel = wasmtime::AsContextMut::as_context_mut(&mut caller).hostcall_fuel();
                    let result = match caller.get_export("memory") {
                        Some(wasmtime::Extern::Memory(memory)) => {
                            let (bytes, state) = memory.data_and_store_mut(&mut caller);
                            let p1 = state.p1();
                            WasiSnapshotPreview1::set_hostcall_fuel(p1, fuel);
                            let mut memory = wiggle::GuestMemory::Unshared(bytes);
                            wasi_snapshot_preview1::path_open(
                                p1, &mut memory, dirfd, lookup, path, path_len, oflags, base,
                                inheriting, fdflags, opened,
                            )
                            .await
                        }
                        _ => Err(wasmtime::Error::msg(
                            "path_open: the module exports no unshared `memory`",
                        )),
                    };
                    let (fds, _) = caller.data_mut().fds_and_table();
                    fds.end_open_p1(matches!(result, Ok(0)));
                    result
                })
            },
        )
        .map_err(wt)
        .context("wrap WASI preview 1 path_open")?;
    linker.allow_shadowing(false);
    Ok(())
}

#[derive(Clone)]
pub(crate) struct WagiModule {
    pre: InstancePre<WagiState>,
    argv: String,
    entrypoint: String,
}

pub(crate) fn linker(engine: &Engine) -> anyhow::Result<Linker<WagiState>> {
    let mut linker = Linker::new(engine);
    add_p1_to_linker(&mut linker)?;
    Ok(linker)
}

impl WagiModule {
    pub(crate) fn load(
        engine: &Engine,
        linker: &Linker<WagiState>,
        id: &str,
        source: &Path,
        argv: &str,
        entrypoint: &str,
    ) -> anyhow::Result<Self> {
        let bytes = std::fs::read(source).with_context(|| {
            format!(
                "component `{id}`: cannot read {}\n  help: build it first (`wms build`) or fix `source` in the manifest",
                source.display()
            )
        })?;
        if bytes.len() >= 8 && bytes[..4] == *b"\0asm" && bytes[4..8] != [1, 0, 0, 0] {
            bail!(
                "component `{id}`: {} is a component, but the `wagi` executor runs WASI preview 1 modules\n  help: remove `executor = {{ type = \"wagi\" }}` from its route to serve it as a wasi:http component",
                source.display()
            );
        }
        let module = Module::new(engine, &bytes)
            .map_err(wt)
            .with_context(|| format!("component `{id}`: cannot compile {}", source.display()))?;
        match module.get_export(entrypoint) {
            Some(wasmtime::ExternType::Func(_)) => {}
            _ => {
                let exports: Vec<_> = module.exports().map(|e| e.name().to_string()).collect();
                bail!(
                    "component `{id}`: {} does not export the WAGI entrypoint `{entrypoint}`; it exports: {}\n  help: build it as a WASI command (with `main`), or set `executor = {{ type = \"wagi\", entrypoint = \"NAME\" }}`",
                    source.display(),
                    if exports.is_empty() {
                        "nothing".into()
                    } else {
                        exports.join(", ")
                    }
                );
            }
        }
        let pre = linker.instantiate_pre(&module).map_err(wt).with_context(|| {
            format!(
                "component `{id}` ({}): cannot link its imports; WAGI modules may import only `wasi_snapshot_preview1`",
                source.display()
            )
        })?;
        Ok(Self {
            pre,
            argv: argv.to_string(),
            entrypoint: entrypoint.to_string(),
        })
    }

    /// The same module's code moved to another engine of the same configuration.
    pub(crate) fn on_engine(
        &self,
        engine: &Engine,
        linker: &Linker<WagiState>,
    ) -> anyhow::Result<Self> {
        let bytes = self.pre.module().serialize().map_err(wt)?;
        // SAFETY: the bytes were serialized just now by Wasmtime from a module compiled by this
        // process for the same configuration; nothing else could have changed them.
        let module = unsafe { Module::deserialize(engine, &bytes) }.map_err(wt)?;
        Ok(Self {
            pre: linker.instantiate_pre(&module).map_err(wt)?,
            argv: self.argv.clone(),
            entrypoint: self.entrypoint.clone(),
        })
    }
}

/// The most a body of unknown length is buffered to (to learn CONTENT_LENGTH): it is held in
/// host memory per request, so it is bounded well below the server's body limit.
fn unknown_length_cap(comp: &LoadedComponent) -> usize {
    usize::try_from(comp.limits.max_memory.min(16 << 20)).unwrap_or(16 << 20)
}

/// The 413 answer for a body over a limit.
fn too_large() -> http::Response<ResponseBody> {
    http::Response::builder()
        .status(StatusCode::PAYLOAD_TOO_LARGE)
        .header(http::header::CONTENT_TYPE, "text/plain")
        .body(
            Full::new(Bytes::from_static(b"request body too large\n"))
                .map_err(|e| match e {})
                .boxed_unsync(),
        )
        .expect("a static response")
}

/// Reads a body whole, up to `cap` bytes; `Ok(None)` past the cap.
async fn read_capped(
    mut body: http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>,
    cap: usize,
) -> Result<Option<Bytes>, BoxError> {
    let mut buf = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            if buf.len() + data.len() > cap {
                return Ok(None);
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(Some(buf.freeze()))
}

/// The CGI environment for a request, from its head and the `spin-*` headers the front end set.
/// `content_length` is the body's length: declared, or counted after buffering.
fn cgi_env(parts: &http::request::Parts, content_length: u64) -> Vec<(String, String)> {
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let host = header("host");
    let (server_name, server_port) = match host.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => (h.to_string(), p.to_string()),
        _ => (host.clone(), "80".to_string()),
    };
    let client = header("spin-client-addr");
    let remote_addr = client
        .rsplit_once(':')
        .map_or(client.as_str(), |(a, _)| a)
        .to_string();
    let path_info = header("spin-path-info");
    let content_length = content_length.to_string();
    let mut env = vec![
        ("AUTH_TYPE".to_string(), String::new()),
        ("CONTENT_LENGTH".to_string(), content_length),
        ("CONTENT_TYPE".to_string(), header("content-type")),
        ("GATEWAY_INTERFACE".to_string(), "CGI/1.1".to_string()),
        ("PATH_INFO".to_string(), path_info.clone()),
        ("PATH_TRANSLATED".to_string(), path_info.clone()),
        (
            "QUERY_STRING".to_string(),
            parts.uri.query().unwrap_or("").to_string(),
        ),
        ("REMOTE_ADDR".to_string(), remote_addr.clone()),
        ("REMOTE_HOST".to_string(), remote_addr),
        ("REMOTE_USER".to_string(), String::new()),
        ("REQUEST_METHOD".to_string(), parts.method.to_string()),
        ("SCRIPT_NAME".to_string(), header("spin-component-route")),
        ("SERVER_NAME".to_string(), server_name),
        ("SERVER_PORT".to_string(), server_port),
        (
            "SERVER_PROTOCOL".to_string(),
            format!("{:?}", parts.version),
        ),
        (
            "SERVER_SOFTWARE".to_string(),
            concat!("wms/", env!("CARGO_PKG_VERSION")).to_string(),
        ),
        ("X_FULL_URL".to_string(), header("spin-full-url")),
        ("X_MATCHED_ROUTE".to_string(), header("spin-matched-route")),
        ("X_RAW_PATH_INFO".to_string(), path_info),
    ];
    for (name, value) in &parts.headers {
        let Ok(value) = value.to_str() else { continue };
        // `X_User` and `X-User` would both become HTTP_X_USER: a client could then pass a
        // header the module trusts (set by a proxy in front of wms as `X-User`) under the other
        // spelling. Names with `_` are dropped, as nginx and Apache do by default.
        if name.as_str().contains('_') {
            continue;
        }
        let key = format!(
            "HTTP_{}",
            name.as_str().to_ascii_uppercase().replace('-', "_")
        );
        // Credentials stay out of the environment, as CGI servers do.
        if key == "HTTP_AUTHORIZATION" || key == "HTTP_PROXY_AUTHORIZATION" {
            continue;
        }
        match env.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => {
                v.push_str(", ");
                v.push_str(value);
            }
            None => env.push((key, value.to_string())),
        }
    }
    env
}

/// Arguments from the `argv` template: `${SCRIPT_NAME}` and `${ARGS}` (the query split on `&`).
fn cgi_args(template: &str, script_name: &str, query: &str) -> Vec<String> {
    let mut args = Vec::new();
    for word in template.split_whitespace() {
        match word {
            "${SCRIPT_NAME}" => args.push(script_name.to_string()),
            "${ARGS}" => args.extend(
                query
                    .split('&')
                    .filter(|a| !a.is_empty())
                    .map(str::to_string),
            ),
            other => args.push(other.replace("${SCRIPT_NAME}", script_name)),
        }
    }
    args
}

pub(crate) async fn handle<B>(
    engine: &Engine,
    module: &WagiModule,
    comp: Arc<LoadedComponent>,
    request: http::Request<B>,
    permits: (OwnedSemaphorePermit, Option<OwnedSemaphorePermit>),
) -> Result<http::Response<ResponseBody>, Failure>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let parent = request
        .extensions()
        .get::<crate::trace::RequestContext>()
        .map(|c| c.0.clone());
    let (parts, body) = request.into_parts();
    let timeout = comp.limits.timeout;
    let deadline = tokio::time::Instant::now() + timeout;
    let body = body.map_err(Into::<BoxError>::into);
    let declared = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    // CGI needs CONTENT_LENGTH before the module starts. A body of unknown length (chunked, or
    // HTTP/2 without content-length) is read whole first, within the server's body limit and the
    // component's timeout; a declared one streams.
    let (content_length, input) = match declared {
        Some(n) => (n, Input::Stream(body.boxed_unsync())),
        None => match tokio::time::timeout_at(
            deadline,
            read_capped(body.boxed_unsync(), unknown_length_cap(&comp)),
        )
        .await
        {
            Err(_) => {
                let f = Failure::Timeout { timeout };
                comp.log_failure(&f);
                return Err(f);
            }
            Ok(Ok(None)) => {
                tracing::warn!(
                    component = %comp.id,
                    "413: a request body of unknown length over {} bytes (bodies without Content-Length are held in memory up to the lesser of 16 MiB and max_memory; with Content-Length they stream, up to --max-body)",
                    unknown_length_cap(&comp)
                );
                return Ok(too_large());
            }
            Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
                tracing::warn!(component = %comp.id, "413: the request body is larger than the server's limit");
                return Ok(too_large());
            }
            Ok(Err(e)) => {
                let f = Failure::RequestBody {
                    message: e.to_string(),
                };
                comp.log_failure(&f);
                return Err(f);
            }
            Ok(Ok(Some(bytes))) => (bytes.len() as u64, Input::Buffered(bytes)),
        },
    };
    let env = cgi_env(&parts, content_length);
    let script_name = parts
        .headers
        .get("spin-component-route")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("/")
        .to_string();
    let args = cgi_args(&module.argv, &script_name, parts.uri.query().unwrap_or(""));

    // The request body is pumped into the module's stdin as it arrives. If the body fails (the
    // client went away, a framing error, over the body limit) the module must not see a clean
    // end of input and take a truncated body for the whole one: stdin is kept open and the
    // request fails.
    let (mut stdin_w, stdin_r) = tokio::io::duplex(64 * 1024);
    let (body_failed_tx, body_failed_rx) =
        tokio::sync::oneshot::channel::<(tokio::io::DuplexStream, String)>();
    tokio::spawn(async move {
        match input {
            Input::Buffered(bytes) => {
                let _ = stdin_w.write_all(&bytes).await;
            }
            Input::Stream(mut body) => {
                while let Some(frame) = body.frame().await {
                    let frame = match frame {
                        Ok(frame) => frame,
                        Err(e) => {
                            let _ = body_failed_tx.send((stdin_w, e.to_string()));
                            return;
                        }
                    };
                    if let Some(data) = frame.data_ref()
                        && stdin_w.write_all(data).await.is_err()
                    {
                        break;
                    }
                }
            }
        }
    });
    let (stdout_w, mut stdout_r) = tokio::io::duplex(64 * 1024);

    let mut wasi = WasiCtxBuilder::new();
    wasi.envs(&comp.environment)
        .envs(&env)
        .args(&args)
        .stdin(AsyncStdinStream::new(stdin_r))
        .stdout(AsyncStdoutStream::new(64 * 1024, stdout_w))
        .stderr(comp.guest_output("stderr"));
    // Before the mounts are opened: they are descriptors too.
    let fds = comp.instance_fds()?;
    for (host, guest) in &comp.mounts {
        wasi.preopened_dir(host, guest, FsPerms::ReadOnly)
            .map_err(|e| Failure::Internal {
                message: format!("mount {}: {e:?}", host.display()),
            })?;
    }
    let mut state = WagiState {
        p1: wasi.build_p1(),
        limiter: MemoryLimiter::new(comp.limits.max_memory).counted(comp.metrics.clone()),
        fds,
    };
    state
        .p1
        .ctx()
        .table
        .set_max_capacity(descriptors::table_capacity());
    let mut store =
        crate::guest::guest_store(engine, state, comp.limits.timeout, comp.metrics.clone());

    let pre = module.pre.clone();
    let entrypoint = module.entrypoint.clone();
    let task_comp = comp.clone();
    let (task, done_rx, guest) = crate::guest::spawn_guest(&comp, permits, async move {
        let comp = task_comp;
        let body_failed = async move {
            match body_failed_rx.await {
                Ok(failed) => failed,
                // The body was delivered whole.
                Err(_) => std::future::pending().await,
            }
        };
        let mut executing = None;
        let run = tokio::time::timeout_at(deadline, async {
            let started = std::time::Instant::now();
            let instantiating = crate::trace::child(parent.as_ref(), "instantiate", &comp.id);
            let instance = pre.instantiate_async(&mut store).await?;
            comp.instantiated(started);
            drop(instantiating);
            executing = crate::trace::child(parent.as_ref(), "execute", &comp.id);
            let start = instance.get_typed_func::<(), ()>(&mut store, &entrypoint)?;
            start.call_async(&mut store, ()).await
        });
        let mut open_stdin = None;
        let outcome = tokio::select! {
            (stdin, message) = body_failed => {
                // Stop the module before its input ends: it never sees end-of-file.
                open_stdin = Some(stdin);
                Outcome::Failed(Failure::RequestBody { message })
            }
            result = run => match result {
                Err(_) => Outcome::Failed(Failure::Timeout { timeout }),
                Ok(Ok(())) => Outcome::Done,
                Ok(Err(e)) => match e.downcast_ref::<wasmtime_wasi::I32Exit>() {
                    Some(exit) if exit.0 == 0 => Outcome::Done,
                    _ => Outcome::Failed(crate::failure::classify(&e, store.data().limiter.exceeded, &comp)),
                },
            },
        };
        if let (Some(span), Outcome::Failed(f)) = (&executing, &outcome) {
            span.fail(f.to_string());
        }
        // Closing stdout ends the response body.
        drop(store);
        drop(open_stdin);
        outcome
    });
    let outcome_of = |task: tokio::task::JoinHandle<Outcome>| async move {
        match task.await {
            Ok(outcome) => outcome,
            Err(e) => Outcome::Failed(Failure::Internal {
                message: format!("request task failed: {e}"),
            }),
        }
    };
    let bad = |comp: &LoadedComponent, message: String| {
        let f = Failure::BadCgi { message };
        comp.log_failure(&f);
        f
    };

    // Read the CGI head.
    let mut buf = BytesMut::with_capacity(8 * 1024);
    let (head_len, body_start) = loop {
        if let Some(found) = find_head_end(&buf) {
            break found;
        }
        if buf.len() > MAX_HEAD {
            task.abort();
            return Err(bad(
                &comp,
                format!("no blank line within the first {MAX_HEAD} bytes of output"),
            ));
        }
        let n = stdout_r.read_buf(&mut buf).await.unwrap_or(0);
        if n == 0 {
            return match outcome_of(task).await {
                Outcome::Failed(f) => Err(f),
                Outcome::Done if buf.is_empty() => Err(bad(
                    &comp,
                    "the module exited without writing anything to stdout".into(),
                )),
                Outcome::Done => Err(bad(
                    &comp,
                    "output ended before the blank line that ends the CGI headers".into(),
                )),
            };
        }
    };
    let head = buf.split_to(body_start);
    let head = match parse_head(&head[..head_len]) {
        Ok(h) => h,
        Err(message) => {
            task.abort();
            return Err(bad(&comp, message));
        }
    };

    // Hold the body back until the module exits, it grows large, or time passes.
    let hold_until = tokio::time::Instant::now() + HOLD_TIME;
    let finished = loop {
        if buf.len() >= HOLD_BYTES {
            break false;
        }
        tokio::select! {
            n = stdout_r.read_buf(&mut buf) => if n.unwrap_or(0) == 0 { break true },
            () = tokio::time::sleep_until(hold_until) => break false,
        }
    };
    let mut response = http::Response::builder().status(head.status);
    for (name, value) in head.headers {
        response = response.header(name, value);
    }
    if finished {
        return match outcome_of(task).await {
            Outcome::Failed(f) => Err(f),
            Outcome::Done => Ok(response
                .body(
                    Full::new(buf.freeze())
                        .map_err(|e| match e {})
                        .boxed_unsync(),
                )
                .expect("status and headers were validated")),
        };
    }
    let first = futures_lite_once(buf.freeze());
    let rest = tokio_util::io::ReaderStream::new(stdout_r);
    let stream = futures::StreamExt::chain(first, rest);
    let body = StreamBody::new(futures::StreamExt::map(stream, |chunk| {
        chunk
            .map(http_body::Frame::data)
            .map_err(|e| Box::new(e) as BoxError)
    }));
    let body = GuardedBody {
        inner: body.boxed_unsync(),
        done: Some(done_rx),
        guest,
    }
    .boxed_unsync();
    Ok(response
        .body(body)
        .expect("status and headers were validated"))
}

/// The request body on its way to stdin.
enum Input {
    /// Read whole before the module started (its length was not declared).
    Buffered(Bytes),
    /// Streamed as it arrives (its length was declared).
    Stream(http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>),
}

fn futures_lite_once(
    bytes: Bytes,
) -> futures::stream::Once<futures::future::Ready<std::io::Result<Bytes>>> {
    futures::stream::once(futures::future::ready(Ok(bytes)))
}

/// Finds the blank line ending the CGI head: `(head length, body offset)`.
fn find_head_end(buf: &[u8]) -> Option<(usize, usize)> {
    let mut i = 0;
    while let Some(pos) = buf[i..].iter().position(|b| *b == b'\n') {
        let nl = i + pos;
        let rest = &buf[nl + 1..];
        if rest.starts_with(b"\n") {
            return Some((nl, nl + 2));
        }
        if rest.starts_with(b"\r\n") {
            return Some((nl, nl + 3));
        }
        i = nl + 1;
    }
    None
}

struct CgiHead {
    status: StatusCode,
    headers: Vec<(HeaderName, HeaderValue)>,
}

fn parse_head(head: &[u8]) -> Result<CgiHead, String> {
    let text =
        std::str::from_utf8(head).map_err(|_| "the CGI headers are not UTF-8".to_string())?;
    let mut status = None;
    let mut location = false;
    let mut content_type = false;
    let mut headers = Vec::new();
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if line.is_empty() {
            continue;
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err(format!("header line {line:?} has no `:`"));
        };
        let name = name.trim().to_ascii_lowercase();
        let value = value.trim();
        match name.as_str() {
            "status" => {
                let code = value.split_whitespace().next().unwrap_or("");
                let code = code
                    .parse::<u16>()
                    .ok()
                    .and_then(|c| StatusCode::from_u16(c).ok())
                    .ok_or_else(|| format!("`status: {value}` is not an HTTP status code"))?;
                status = Some(code);
                continue;
            }
            "location" => location = true,
            "content-type" => content_type = true,
            // Framing and connection management are the server's: a module that sets them
            // could make the client read the rest of its output as another response. wms
            // frames the body itself.
            "content-length" | "transfer-encoding" | "connection" | "keep-alive"
            | "proxy-connection" | "te" | "trailer" | "upgrade" => continue,
            _ => {}
        }
        let header = HeaderName::try_from(name.as_str())
            .map_err(|_| format!("`{name}` is not a valid header name"))?;
        let value = HeaderValue::from_str(value)
            .map_err(|_| format!("the value of `{name}` is not a valid header value"))?;
        headers.push((header, value));
    }
    if status.is_none() && !location && !content_type {
        return Err(
            "the CGI headers have none of `content-type`, `location` or `status`".to_string(),
        );
    }
    let status = status.unwrap_or(if location {
        StatusCode::FOUND
    } else {
        StatusCode::OK
    });
    Ok(CgiHead { status, headers })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_parsing_follows_cgi() {
        let h = parse_head(b"Content-Type: text/plain\r\nX-A: b").unwrap();
        assert_eq!(h.status, StatusCode::OK);
        assert_eq!(h.headers.len(), 2);
        let h = parse_head(b"location: /elsewhere").unwrap();
        assert_eq!(h.status, StatusCode::FOUND);
        let h = parse_head(b"status: 404 Not Found\ncontent-type: text/html").unwrap();
        assert_eq!(h.status, StatusCode::NOT_FOUND);
        assert!(parse_head(b"hello world").is_err());
        assert!(parse_head(b"x-only: 1").is_err());
        assert!(parse_head(b"status: abc").is_err());
        let h = parse_head(b"content-type: text/plain\ncontent-length: 2\nConnection: close\nTransfer-Encoding: chunked\nupgrade: h2c").unwrap();
        let names: Vec<&str> = h.headers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["content-type"]);
        assert_eq!(find_head_end(b"a: b\n\nbody"), Some((4, 6)));
        assert_eq!(find_head_end(b"a: b\r\n\r\nbody"), Some((5, 8)));
        assert_eq!(find_head_end(b"a: b\r\n"), None);
    }

    #[test]
    fn args_follow_the_template() {
        assert_eq!(
            cgi_args("${SCRIPT_NAME} ${ARGS}", "/cgi", "a=1&b"),
            ["/cgi", "a=1", "b"]
        );
        assert_eq!(cgi_args("prog --flag", "/x", ""), ["prog", "--flag"]);
    }

    /// Fuzz target: whatever a module writes, the head parser neither panics nor lets a
    /// framing or connection header through (`cargo bolero test -p wms-runtime` runs it
    /// coverage-guided where nightly exists).
    #[test]
    fn fuzz_cgi_head() {
        bolero::check!()
            .with_test_time(std::time::Duration::from_secs(3))
            .for_each(|out: &[u8]| {
                let (len, body) = find_head_end(out).unwrap_or((out.len(), out.len()));
                assert!(len <= body && body <= out.len());
                if let Ok(head) = parse_head(&out[..len]) {
                    for (name, _) in &head.headers {
                        assert!(
                            !matches!(
                                name.as_str(),
                                "content-length" | "transfer-encoding" | "connection"
                            ),
                            "{name} passed through"
                        );
                    }
                }
            });
    }
}

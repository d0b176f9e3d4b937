//! The wms runtime: the only crate that names Wasmtime types.
//!
//! [`Runtime::new`] builds one [`Engine`] per process (pooling allocator sized to the host, epoch
//! interruption with one ticker), compiles every component of an [`App`] and pre-instantiates it
//! as a `ProxyPre`. [`Runtime::handle`] then serves one request in a fresh `Store` and instance,
//! with the component's timeout, memory limit and concurrency limits in force, and classifies
//! every way the guest can fail so the front end can answer 503, 504 or 500 and keep serving.

mod adapt;
pub mod aot;
mod command;
mod guest_log;
mod outbound;
pub mod pool;
mod release;
mod wagi;

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use bytes::Bytes;
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use indexmap_lite::IndexMap;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use wasmtime::component::{Component, Linker, Resource, ResourceTable};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, Trap,
    UpdateDeadline,
};
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};
use wms_manifest::{AllowedHost, App, FileMount};

pub use adapt::{ENV_CACHE_DIR, cache_dir};
pub use command::{CommandOptions, CommandOutcome, DirMount, run_command};
pub use pool::PoolPlan;

/// Errors from bodies crossing the runtime boundary.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// A response body streamed from a guest.
pub type ResponseBody = UnsyncBoxBody<Bytes, BoxError>;

/// How often the epoch ticker advances; the granularity of timeouts and of guest yields.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

mod indexmap_lite {
    /// Components in manifest order, looked up by name; apps have few components.
    pub type IndexMap<V> = Vec<(String, V)>;
}

/// Which code generator runs guests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EngineKind {
    /// Cranelift compiles to native code (x86_64, aarch64, riscv64, s390x).
    #[default]
    Cranelift,
    /// Pulley, Wasmtime's portable interpreter.
    Pulley,
}

/// How instances are allocated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Allocation {
    /// The pooling allocator, sized to the host; on demand only if no pool fits.
    #[default]
    Auto,
    /// Always allocate on demand.
    OnDemand,
}

/// Settings for [`Runtime::new`].
#[derive(Debug, Clone, Default)]
pub struct RuntimeOptions {
    pub engine: EngineKind,
    pub allocation: Allocation,
    /// A directory of `wms compile` output the user trusts; used where it matches exactly.
    pub precompiled: Option<PathBuf>,
    /// The most the pool may keep resident between requests, in bytes (default: 1/16 of the
    /// host's or the cgroup's memory; see [`pool::ResidentBudget`]).
    pub pool_resident_budget: Option<u64>,
    /// How long pool slots may stay idle before what they keep is given back to the kernel
    /// (default [`DEFAULT_POOL_IDLE_RELEASE`]; zero: never).
    pub pool_idle_release: Option<Duration>,
}

/// The default of [`RuntimeOptions::pool_idle_release`].
pub const DEFAULT_POOL_IDLE_RELEASE: Duration = Duration::from_secs(10);

/// What the pool keeps resident between requests.
#[derive(Debug, Clone)]
pub struct Resident {
    pub budget: pool::ResidentBudget,
    /// Per linear memory and per table.
    pub memory: u64,
    pub table: u64,
    /// Idle slots give back what they keep after this long (`None`: never).
    pub idle_release: Option<Duration>,
}

/// What the engine was configured with, for the start-up log and for tests.
#[derive(Debug, Clone)]
pub struct EngineReport {
    /// With pooling: the resident budget and what each slot keeps.
    pub resident: Option<Resident>,
    pub engine: EngineKind,
    pub target: String,
    pub pool: PoolPlan,
    pub max_concurrent_requests: usize,
}

impl std::fmt::Display for EngineReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let engine = match self.engine {
            EngineKind::Cranelift => "cranelift",
            EngineKind::Pulley => "pulley",
        };
        write!(f, "engine {engine} for {}; {}", self.target, self.pool)?;
        if let Some(r) = &self.resident {
            write!(
                f,
                "; kept resident between requests: at most {} in total, {} per memory and {} per table",
                r.budget,
                pool::human(r.memory),
                pool::human(r.table)
            )?;
            match r.idle_release {
                Some(d) => write!(f, ", given back after {d:?} idle")?,
                None => write!(f, ", never given back")?,
            }
        }
        write!(
            f,
            "; at most {} concurrent requests",
            self.max_concurrent_requests
        )
    }
}

/// Why a request did not get a normal response from its guest.
#[derive(Debug)]
pub enum Failure {
    /// A concurrency limit was reached (`scope` names it); answer 503 and ask to retry.
    Overloaded { scope: String },
    /// The request ran past the component's timeout.
    Timeout { timeout: Duration },
    /// The guest trapped or panicked.
    Trap { message: String },
    /// The guest tried to grow its memory past the component's limit.
    MemoryLimit { limit: u64 },
    /// The guest returned without setting a response.
    NoResponse,
    /// A WAGI module or command exited with a non-zero status.
    Exit { code: i32 },
    /// The request body failed before it was complete (the client went away, bad framing);
    /// the guest was stopped rather than given a truncated body as if it were whole.
    RequestBody { message: String },
    /// A WAGI module's output was not a valid CGI response.
    BadCgi { message: String },
    /// The guest answered with a `wasi:http` error code instead of a response.
    GuestError { message: String },
    /// Something in the host failed.
    Internal { message: String },
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Overloaded { scope } => {
                write!(f, "too many concurrent requests ({scope} limit)")
            }
            Failure::Timeout { timeout } => {
                write!(f, "request exceeded its timeout of {timeout:?}")
            }
            Failure::Trap { message } => write!(f, "guest trapped: {message}"),
            Failure::MemoryLimit { limit } => {
                write!(
                    f,
                    "guest exceeded its memory limit of {}",
                    pool::human(*limit)
                )
            }
            Failure::NoResponse => write!(f, "guest returned without setting a response"),
            Failure::Exit { code } => write!(f, "guest exited with status {code}"),
            Failure::RequestBody { message } => {
                write!(f, "the request body failed before its end: {message}")
            }
            Failure::BadCgi { message } => write!(f, "malformed CGI output: {message}"),
            Failure::GuestError { message } => write!(f, "guest answered with an error: {message}"),
            Failure::Internal { message } => write!(f, "host error: {message}"),
        }
    }
}

/// Store data of one request.
pub struct HostState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    hooks: CountedHooks,
    limiter: MemoryLimiter,
    fds: descriptors::InstanceFds,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for HostState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

/// Caps an instance's linear memory (the sum over all its memories, so a component with several
/// memories gets no more than one with a single memory), its tables, and how many instances,
/// memories and tables its store may create (the pool enforces the same counts per slot; on
/// demand, Wasmtime's defaults of 10,000 each would apply). Remembers whether the memory cap was
/// hit so the failure can be reported as a memory limit rather than a bare trap.
pub(crate) struct MemoryLimiter {
    max_memory: usize,
    /// Bytes of linear memory the instance's memories hold together.
    total: usize,
    /// The growth last allowed, taken back if Wasmtime then fails to grow.
    pending: usize,
    pub(crate) exceeded: bool,
}

/// Table elements an instance may hold.
const MAX_TABLE_ELEMENTS: usize = pool::TABLE_ELEMENTS;
/// Core instances one store may create: a component is several (its modules, the preview 1
/// adapter, shims); the same number the pool reserves per component.
const MAX_CORE_INSTANCES: usize = pool::CORE_INSTANCES_PER_SLOT as usize;

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Wasmtime asks with current = 0 when it creates a memory, so `total` covers every
        // memory of the store from its creation.
        let growth = desired.saturating_sub(current);
        match self.total.checked_add(growth) {
            Some(total) if total <= self.max_memory => {
                self.total = total;
                self.pending = growth;
                Ok(true)
            }
            _ => {
                self.exceeded = true;
                Ok(false)
            }
        }
    }

    fn memory_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        self.total -= std::mem::take(&mut self.pending);
        Ok(())
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }

    fn instances(&self) -> usize {
        MAX_CORE_INSTANCES
    }

    fn memories(&self) -> usize {
        pool::MEMORIES_PER_SLOT as usize
    }

    fn tables(&self) -> usize {
        pool::TABLES_PER_SLOT as usize
    }
}

pub mod descriptors;

/// Store data that counts its guest's descriptors.
pub(crate) trait HoldsFds: Send + 'static {
    /// The instance's counts and the resource table its descriptors live in.
    fn fds_and_table(&mut self) -> (&mut descriptors::InstanceFds, &mut ResourceTable);
}

impl HoldsFds for HostState {
    fn fds_and_table(&mut self) -> (&mut descriptors::InstanceFds, &mut ResourceTable) {
        (&mut self.fds, &mut self.table)
    }
}

/// The `wasi:filesystem` interface whose `open-at` is wrapped (the version of Wasmtime's WIT; a
/// guest importing any 0.2.x resolves to it).
const FS_TYPES: &str = "wasi:filesystem/types@0.2.12";

/// Replaces `descriptor.open-at`, the only call through which a component guest creates a host
/// descriptor (sockets are never granted), with one that counts: over its instance's cap or the
/// process budget the open fails with `quota` and nothing is opened.
pub(crate) fn add_open_hook<T: HoldsFds + WasiView>(linker: &mut Linker<T>) -> anyhow::Result<()> {
    use wasmtime_wasi::filesystem::{Descriptor, WasiFilesystemView};
    use wasmtime_wasi::p2::bindings::filesystem::types::{
        DescriptorFlags, ErrorCode, HostDescriptor, OpenFlags, PathFlags,
    };
    type Args = (
        Resource<Descriptor>,
        PathFlags,
        String,
        OpenFlags,
        DescriptorFlags,
    );
    linker.allow_shadowing(true);
    linker
        .instance(FS_TYPES)
        .map_err(wt)?
        .func_wrap_async(
            "[method]descriptor.open-at",
            |mut store: wasmtime::StoreContextMut<'_, T>,
             (dir, path_flags, path, oflags, flags): Args| {
                Box::new(async move {
                    {
                        let (fds, table) = store.data_mut().fds_and_table();
                        if fds.begin_open_p2(table).is_err() {
                            return Ok((Err(ErrorCode::Quota),));
                        }
                    }
                    let result = {
                        let mut view = store.data_mut().filesystem();
                        HostDescriptor::open_at(&mut view, dir, path_flags, path, oflags, flags)
                            .await
                    };
                    let (fds, table) = store.data_mut().fds_and_table();
                    match result {
                        Ok(fd) => {
                            fds.end_open_p2(Some(descriptors::Held::of(table, &fd)));
                            Ok((Ok(fd),))
                        }
                        Err(e) => {
                            fds.end_open_p2(None);
                            e.downcast().map(|code| (Err(code),))
                        }
                    }
                })
            },
        )
        .map_err(wt)
        .context("wrap wasi:filesystem open-at")?;
    linker.allow_shadowing(false);
    Ok(())
}

/// The outbound policy plus the count of requests in flight: over the instance's cap or the
/// process budget a request fails with `connection-limit-reached` before any connection opens.
pub(crate) struct CountedHooks {
    policy: outbound::OutboundPolicy,
    slots: descriptors::OutboundSlots,
}

type SendFuture = Box<
    dyn Future<
            Output = Result<
                (
                    http::Response<wasmtime_wasi_http::WasiBody>,
                    Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
                ),
                wasmtime_wasi_http::Error,
            >,
        > + Send,
>;

impl wasmtime_wasi_http::WasiHttpHooks for CountedHooks {
    fn send_request(
        &mut self,
        request: http::Request<wasmtime_wasi_http::WasiBody>,
        options: Option<wasmtime_wasi_http::RequestOptions>,
        fut: Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ) -> SendFuture {
        let permit = match self.slots.acquire() {
            Ok(p) => p,
            Err(denied) => {
                tracing::warn!(
                    component = %self.policy.component,
                    "outbound request refused: {}",
                    match denied {
                        descriptors::Denied::Instance => format!(
                            "the guest has {} requests in flight, its limit",
                            descriptors::MAX_OUTBOUND_REQUESTS
                        ),
                        descriptors::Denied::Process => {
                            "guests together hold their whole descriptor budget (raise the soft descriptor limit, ulimit -n or LimitNOFILE=, and restart wms)".to_string()
                        }
                    }
                );
                return Box::new(async { Err(wasmtime_wasi_http::Error::ConnectionLimitReached) });
            }
        };
        let send = self.policy.send_request(request, options, fut);
        Box::new(async move {
            let (response, io) = Box::into_pin(send).await?;
            // The connection lives as long as this future (Wasmtime runs it as a task that ends
            // with the connection, or is aborted with the response): so does the permit.
            let io = async move {
                let _permit = permit;
                Box::into_pin(io).await
            };
            Ok((response, Box::new(io) as Box<dyn Future<Output = _> + Send>))
        })
    }
}

/// A component ready to serve: its pre-instantiated code and everything each request needs.
#[derive(Clone)]
struct LoadedComponent {
    id: Arc<str>,
    /// The engine its code was compiled for: the process's, or the Pulley fallback.
    engine: Engine,
    kind: Kind,
    limits: wms_manifest::Limits,
    semaphore: Option<Arc<Semaphore>>,
    environment: Vec<(String, String)>,
    mounts: Vec<(PathBuf, String)>,
    allowed: Arc<[AllowedHost]>,
    /// Outbound entries naming an address may reach local ones (a local manifest only).
    may_name_local_addresses: bool,
    /// The descriptor budget all guests of the process share.
    fds: Arc<descriptors::Budget>,
    /// Rate limit of the component's guest output in the log.
    guest_log: Arc<guest_log::LogBudget>,
    /// Rate limit of its overload warnings, so a flood of 503s cannot flood the log.
    overload_log: Arc<guest_log::LogBudget>,
}

impl LoadedComponent {
    /// Logs a failure of this component's request; overloads are warnings, rate-limited.
    pub(crate) fn log_failure(&self, f: &Failure) {
        match f {
            Failure::Overloaded { .. } => {
                if self.overload_log.allow() {
                    tracing::warn!(component = %self.id, "503: {f}");
                }
            }
            _ => tracing::error!(component = %self.id, "{f}"),
        }
    }

    pub(crate) fn guest_output(&self, stream: &'static str) -> guest_log::GuestLog {
        guest_log::GuestLog {
            component: self.id.clone(),
            stream,
            budget: self.guest_log.clone(),
        }
    }

    /// The instance's descriptor counts, starting with its mounted directories.
    pub(crate) fn instance_fds(&self) -> Result<descriptors::InstanceFds, Failure> {
        descriptors::InstanceFds::new(&self.fds, &self.id, self.mounts.len()).ok_or_else(|| {
            let f = Failure::Overloaded {
                scope: "descriptors: guests hold their whole budget; raise the soft descriptor limit (ulimit -n, or LimitNOFILE=) and restart wms".to_string(),
            };
            self.log_failure(&f);
            f
        })
    }
}

#[derive(Clone)]
enum Kind {
    Http(ProxyPre<HostState>),
    Wagi(wagi::WagiModule),
}

/// What the guest task reports to the request once it is over.
enum Outcome {
    Done,
    Failed(Failure),
}

/// A loaded app, ready to serve requests.
pub struct Runtime {
    /// The app's code on the current engine: replaced whole when idle pool memory is given back
    /// (requests in flight keep the code they started with).
    current: Arc<RwLock<Arc<Generation>>>,
    global: Arc<Semaphore>,
    /// The most requests in flight at once since the releaser last looked.
    activity: Arc<release::Activity>,
    report: EngineReport,
    descriptors: descriptors::DescriptorPlan,
    _staging: Vec<tempfile::TempDir>,
}

/// Every component's code on one engine and its pool.
struct Generation {
    components: IndexMap<Arc<LoadedComponent>>,
    /// The engine with the pool (components in the Pulley fallback have their own).
    engine: Engine,
}

impl Runtime {
    /// Builds the engine and loads every component of `app`. Fails, naming the component, if
    /// any cannot be read, compiled or linked as a `wasi:http` handler.
    pub fn new(app: &App, options: &RuntimeOptions) -> anyhow::Result<Self> {
        let (wanted, max_memory) = pool_demand(app);
        let (engine, report, config) =
            build_engine(options, wanted, max_memory, app.max_concurrent_requests)?;
        let descriptor_plan = descriptors::DescriptorPlan::current();
        tracing::info!("{descriptor_plan}");
        let fd_budget = descriptors::Budget::new(descriptor_plan.guests);
        let linker = http_linker(&engine)?;

        let mut components = Vec::new();
        let mut staging = Vec::new();
        let mut wagi_linker = None;
        let mut fallback: Option<(Engine, Linker<HostState>)> = None;
        for (id, c) in &app.components {
            let mut component_engine = engine.clone();
            let kind = match &c.executor {
                wms_manifest::Executor::Http => {
                    match load_http(
                        &engine,
                        &linker,
                        id,
                        &c.source,
                        options.precompiled.as_deref(),
                    ) {
                        Ok(pre) => Kind::Http(pre),
                        Err(e)
                            if e.chain().any(|c| c.is::<aot::CodegenUnsupported>())
                                && report.engine == EngineKind::Cranelift =>
                        {
                            tracing::warn!(
                                component = %id,
                                "Cranelift cannot compile this component for this CPU, so it runs in the Pulley interpreter: {e:#}"
                            );
                            if fallback.is_none() {
                                fallback = Some(pulley_fallback()?);
                            }
                            let (pulley, pulley_linker) = fallback.as_ref().expect("just set");
                            component_engine = pulley.clone();
                            Kind::Http(load_http(pulley, pulley_linker, id, &c.source, None)?)
                        }
                        Err(e) => return Err(e),
                    }
                }
                wms_manifest::Executor::Wagi { argv, entrypoint } => {
                    let linker = match &wagi_linker {
                        Some(l) => l,
                        None => wagi_linker.insert(wagi::linker(&engine)?),
                    };
                    Kind::Wagi(wagi::WagiModule::load(
                        &engine, linker, id, &c.source, argv, entrypoint,
                    )?)
                }
            };
            let mut mounts = Vec::new();
            let mut patterns = Vec::new();
            for f in &c.files {
                match f {
                    FileMount::Directory {
                        source,
                        destination,
                    } => mounts.push((source.clone(), destination.clone())),
                    FileMount::Pattern { pattern } => patterns.push(pattern.clone()),
                }
            }
            if !patterns.is_empty() {
                let dir = stage_files(&app.dir, id, &patterns, &c.exclude_files)?;
                mounts.push((dir.path().to_path_buf(), "/".to_string()));
                staging.push(dir);
            }
            let name: Arc<str> = Arc::from(id.as_str());
            components.push((
                id.clone(),
                Arc::new(LoadedComponent {
                    id: name.clone(),
                    engine: component_engine,
                    kind,
                    limits: c.limits.clone(),
                    semaphore: c
                        .limits
                        .max_concurrent_requests
                        .map(|n| Arc::new(Semaphore::new(n))),
                    environment: c
                        .environment
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                    mounts,
                    allowed: c.allowed_outbound_hosts.clone().into(),
                    may_name_local_addresses: !app.from_image,
                    fds: fd_budget.clone(),
                    guest_log: guest_log::LogBudget::guest_lines(&name),
                    overload_log: guest_log::LogBudget::new(&name, "overload warnings", 1.0, 5.0),
                }),
            ));
        }
        let global = Arc::new(Semaphore::new(report.max_concurrent_requests));
        let activity = Arc::new(release::Activity::default());
        let current = Arc::new(RwLock::new(Arc::new(Generation { components, engine })));
        if let Some(period) = report.resident.as_ref().and_then(|r| r.idle_release) {
            release::start(release::Releaser {
                current: Arc::downgrade(&current),
                config,
                period,
                activity: activity.clone(),
                global: global.clone(),
                max_in_flight: report.max_concurrent_requests,
            })?;
        }
        Ok(Self {
            current,
            global,
            activity,
            report,
            descriptors: descriptor_plan,
            _staging: staging,
        })
    }

    /// The engine and pool configuration chosen at start-up.
    pub fn report(&self) -> &EngineReport {
        &self.report
    }

    /// How the process's descriptor limit is shared between guests, connections and the server
    /// (read at start-up: raise the soft limit before [`Runtime::new`]).
    pub fn descriptors(&self) -> descriptors::DescriptorPlan {
        self.descriptors
    }

    /// Serves one request with a fresh instance of `component`.
    ///
    /// Returns as soon as the guest has set its response; the body then streams from the guest,
    /// which keeps running (within its deadline) until it finishes the body.
    pub async fn handle<B>(
        &self,
        component: &str,
        request: http::Request<B>,
    ) -> Result<http::Response<ResponseBody>, Failure>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let comp = self
            .current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .components
            .iter()
            .find(|(id, _)| id == component)
            .map(|(_, c)| c.clone())
            .ok_or_else(|| Failure::Internal {
                message: format!("no component `{component}`"),
            })?;
        let overloaded = |scope: String| {
            let f = Failure::Overloaded { scope };
            comp.log_failure(&f);
            f
        };
        let global = self.global.clone().try_acquire_owned().map_err(|_| {
            overloaded(format!(
                "server: {} requests",
                self.report.max_concurrent_requests
            ))
        })?;
        self.activity
            .started(self.report.max_concurrent_requests - self.global.available_permits());
        let local = match &comp.semaphore {
            None => None,
            Some(s) => Some(s.clone().try_acquire_owned().map_err(|_| {
                overloaded(format!(
                    "component `{}`: {} requests",
                    comp.id,
                    comp.limits.max_concurrent_requests.unwrap_or(0)
                ))
            })?),
        };
        if let Kind::Wagi(module) = &comp.kind {
            return wagi::handle(&comp.engine, module, comp.clone(), request, (global, local))
                .await;
        }
        let request = request.map(|body| {
            body.map_err(|e| {
                let e: BoxError = e.into();
                if e.is::<http_body_util::LengthLimitError>() {
                    wasmtime_wasi_http::Error::HttpRequestBodySize(None)
                } else {
                    wasmtime_wasi_http::Error::InternalError(Some(e.to_string()))
                }
            })
        });
        let store = new_store(&comp.engine, &comp)?;
        run(comp, store, request, (global, local)).await
    }
}

fn new_store(engine: &Engine, comp: &LoadedComponent) -> Result<Store<HostState>, Failure> {
    // Before the mounts are opened: they are descriptors too.
    let fds = comp.instance_fds()?;
    let mut wasi = WasiCtxBuilder::new();
    wasi.envs(&comp.environment)
        .stdout(comp.guest_output("stdout"))
        .stderr(comp.guest_output("stderr"))
        // The defaults, said out loud: descriptors are counted on the assumption that guests
        // get no sockets.
        .allow_tcp(false)
        .allow_udp(false);
    for (host, guest) in &comp.mounts {
        wasi.preopened_dir(host, guest, FsPerms::ReadOnly)
            .map_err(|e| Failure::Internal {
                message: format!(
                    "component `{}`: mount {} at {guest}: {e:?}",
                    comp.id,
                    host.display()
                ),
            })?;
    }
    let mut table = ResourceTable::new();
    table.set_max_capacity(descriptors::table_capacity());
    let state = HostState {
        wasi: wasi.build(),
        http: WasiHttpCtx::new(),
        table,
        hooks: CountedHooks {
            policy: outbound::OutboundPolicy {
                component: comp.id.clone(),
                allowed: comp.allowed.clone(),
                may_name_local_addresses: comp.may_name_local_addresses,
            },
            slots: descriptors::OutboundSlots::new(&comp.fds),
        },
        limiter: MemoryLimiter::new(comp.limits.max_memory),
        fds,
    };
    let mut store = Store::new(engine, state);
    store.limiter(|s| &mut s.limiter);
    arm_deadline(&mut store, comp.limits.timeout);
    Ok(store)
}

/// Stops the guest once `timeout` has passed; until then it yields to other tasks every epoch
/// tick, so a guest in a CPU loop cannot starve the requests sharing its thread.
pub(crate) fn arm_deadline<T>(store: &mut Store<T>, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(move |_| {
        if Instant::now() >= deadline {
            Ok(UpdateDeadline::Interrupt)
        } else {
            Ok(UpdateDeadline::Yield(1))
        }
    });
}

impl MemoryLimiter {
    pub(crate) fn new(max_memory: u64) -> Self {
        Self {
            max_memory: usize::try_from(max_memory).unwrap_or(usize::MAX),
            total: 0,
            pending: 0,
            exceeded: false,
        }
    }
}

async fn run<B>(
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
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<bool>();
    let task = tokio::spawn(async move {
        let _permits = permits;
        let comp = task_comp;
        let result = tokio::time::timeout_at(deadline, async {
            let Kind::Http(pre) = &comp.kind else {
                unreachable!("only wasi:http components reach run()")
            };
            let proxy = pre.instantiate_async(&mut store).await?;
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
        if let Outcome::Failed(f) = &outcome {
            comp.log_failure(f);
        }
        let _ = done_tx.send(matches!(outcome, Outcome::Failed(_)));
        outcome
    });
    // If the client goes away (this future or the response body is dropped), so does the guest.
    let guest = GuestTask::new(&task, &comp.id);
    match rx.await {
        Ok(Ok(response)) => Ok(response.map(|b| {
            GuardedBody {
                inner: b.map_err(|e| Box::new(e) as BoxError).boxed_unsync(),
                done: Some(done_rx),
                _guest: guest,
            }
            .boxed_unsync()
        })),
        Ok(Err(code)) => {
            let f = Failure::GuestError {
                message: format!("{code:?}"),
            };
            tracing::error!(component = %comp.id, "{f}");
            Err(f)
        }
        Err(_) => match task.await {
            Ok(Outcome::Failed(f)) => Err(f),
            Ok(Outcome::Done) => {
                tracing::error!(component = %comp.id, "{}", Failure::NoResponse);
                Err(Failure::NoResponse)
            }
            Err(e) => Err(Failure::Internal {
                message: format!("request task failed: {e}"),
            }),
        },
    }
}

/// A guest's response body that ends in an error, not a clean end, when the guest fails
/// (trap, timeout) after it has sent the response head: the client must not mistake a cut-off
/// body for a complete one. On HTTP/1.1 the connection is closed.
pub(crate) struct GuardedBody {
    pub(crate) inner: ResponseBody,
    pub(crate) done: Option<tokio::sync::oneshot::Receiver<bool>>,
    /// The guest producing the body: cancelled when the body is dropped before the end.
    pub(crate) _guest: GuestTask,
}

/// A running guest, cancelled when this is dropped: a guest whose client went away stops at
/// its next yield (at most one epoch tick later) and releases its instance and permits.
pub(crate) struct GuestTask {
    handle: tokio::task::AbortHandle,
    component: Arc<str>,
}

impl GuestTask {
    pub(crate) fn new<T>(task: &tokio::task::JoinHandle<T>, component: &Arc<str>) -> Self {
        Self {
            handle: task.abort_handle(),
            component: component.clone(),
        }
    }
}

impl Drop for GuestTask {
    fn drop(&mut self) {
        if !self.handle.is_finished() {
            tracing::info!(component = %self.component, "client went away; guest cancelled");
            self.handle.abort();
        }
    }
}

impl http_body::Body for GuardedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        use std::task::Poll;
        match std::pin::Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(None) => {}
            other => return other,
        }
        let Some(done) = self.done.as_mut() else {
            return Poll::Ready(None);
        };
        match std::pin::Pin::new(done).poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(failed) => {
                self.done = None;
                if failed.unwrap_or(true) {
                    Poll::Ready(Some(Err(
                        "the guest failed while sending the response body".into(),
                    )))
                } else {
                    Poll::Ready(None)
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

pub(crate) fn classify(
    e: &wasmtime::Error,
    memory_exceeded: bool,
    comp: &LoadedComponent,
) -> Failure {
    if let Some(exit) = e.downcast_ref::<wasmtime_wasi::I32Exit>() {
        return Failure::Exit { code: exit.0 };
    }
    if memory_exceeded {
        return Failure::MemoryLimit {
            limit: comp.limits.max_memory,
        };
    }
    if e.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
        return Failure::Timeout {
            timeout: comp.limits.timeout,
        };
    }
    let message = format!("{e:?}");
    if message.contains("concurrent") && message.contains("limit") {
        return Failure::Overloaded {
            scope: "instance pool".to_string(),
        };
    }
    // The first line names the trap; the backtrace follows.
    let first = message.lines().take(3).collect::<Vec<_>>().join(" | ");
    Failure::Trap { message: first }
}

fn build_engine(
    options: &RuntimeOptions,
    wanted_slots: u32,
    max_memory: u64,
    max_concurrent: usize,
) -> anyhow::Result<(Engine, EngineReport, Config)> {
    let mut config = Config::new();
    config.epoch_interruption(true);
    let engine_kind = effective_engine(options.engine);
    if engine_kind == EngineKind::Cranelift
        && !host_has_riscv_vector()
        && cfg!(target_arch = "riscv64")
    {
        // Cranelift needs the V extension for 128-bit SIMD; without it, it panics compiling a
        // SIMD component (VisionFive 2). Turning SIMD off makes such a component a clear
        // validation error at start instead; Pulley runs it on any CPU.
        config.wasm_simd(false).wasm_relaxed_simd(false);
        tracing::info!(
            "riscv64 without the vector extension: WebAssembly SIMD is off for Cranelift (--engine pulley runs SIMD components)"
        );
    }
    let target = match engine_kind {
        EngineKind::Cranelift => std::env::consts::ARCH.to_string(),
        EngineKind::Pulley => {
            let t = if cfg!(target_pointer_width = "64") {
                "pulley64"
            } else {
                "pulley32"
            };
            config.target(t).map_err(|e| anyhow!("{e:?}"))?;
            t.to_string()
        }
    };
    let probed = pool::probe_address_space();
    let mut plan = match options.allocation {
        Allocation::Auto => pool::plan(wanted_slots, max_memory, probed),
        Allocation::OnDemand => PoolPlan {
            slots: 0,
            pooling: false,
            ..pool::plan(wanted_slots, max_memory, probed)
        },
    };
    let budget = pool::ResidentBudget::choose(options.pool_resident_budget);
    loop {
        let mut cfg = config.clone();
        apply_memory_layout(&mut cfg, &plan, max_memory);
        if plan.pooling {
            apply_pool(&mut cfg, &plan, keep_resident(&budget, plan.slots));
        }
        match Engine::new(&cfg) {
            Ok(engine) => {
                let max_concurrent = if plan.pooling {
                    max_concurrent.min(plan.slots as usize)
                } else {
                    max_concurrent
                };
                if let Some(ram) = pool::physical_memory() {
                    let worst = max_memory.saturating_mul(max_concurrent as u64);
                    if worst > ram {
                        tracing::info!(
                            "worst case: {max_concurrent} concurrent requests at up to {} each could use {} of memory, more than this host's {}; lower max_memory or max_concurrent_requests to rule it out",
                            pool::human(max_memory),
                            pool::human(worst),
                            pool::human(ram)
                        );
                    }
                }
                start_epoch_ticker(&engine);
                let report = EngineReport {
                    engine: engine_kind,
                    target,
                    resident: plan.pooling.then(|| {
                        let (memory, table) = keep_resident(&budget, plan.slots);
                        Resident {
                            budget: budget.clone(),
                            memory,
                            table,
                            idle_release: Some(
                                options
                                    .pool_idle_release
                                    .unwrap_or(DEFAULT_POOL_IDLE_RELEASE),
                            )
                            .filter(|d| !d.is_zero()),
                        }
                    }),
                    pool: plan,
                    max_concurrent_requests: max_concurrent,
                };
                return Ok((engine, report, cfg));
            }
            Err(e) if plan.pooling => {
                // The probe said it fits but the mapping failed (other reservations, overcommit
                // settings): halve and retry, down to on-demand.
                tracing::debug!("pool of {} slots failed: {e:?}", plan.slots);
                let smaller = pool::plan(plan.slots / 2, max_memory, plan.reserved());
                plan = if plan.slots / 2 >= pool::MIN_POOL_SLOTS && smaller.pooling {
                    PoolPlan {
                        probed_address_space: probed,
                        ..smaller
                    }
                } else {
                    PoolPlan {
                        slots: 0,
                        pooling: false,
                        ..plan
                    }
                };
            }
            Err(e) => bail!("cannot create the Wasmtime engine: {e:?}"),
        }
    }
}

/// WASI 0.2 and wasi:http, with file opens counted.
fn http_linker(engine: &Engine) -> anyhow::Result<Linker<HostState>> {
    let mut linker: Linker<HostState> = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)
        .map_err(wt)
        .context("link WASI 0.2")?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)
        .map_err(wt)
        .context("link wasi:http 0.2")?;
    add_open_hook(&mut linker)?;
    Ok(linker)
}

/// A Pulley engine (on-demand allocation) for components Cranelift cannot compile on this CPU.
fn pulley_fallback() -> anyhow::Result<(Engine, Linker<HostState>)> {
    let mut config = Config::new();
    config.epoch_interruption(true);
    let t = if cfg!(target_pointer_width = "64") {
        "pulley64"
    } else {
        "pulley32"
    };
    config.target(t).map_err(wt)?;
    config.memory_reservation(wms_manifest::DEFAULT_MAX_MEMORY.next_power_of_two());
    config.memory_guard_size(64 << 10);
    let engine = Engine::new(&config)
        .map_err(wt)
        .context("create the Pulley fallback engine")?;
    start_epoch_ticker(&engine);
    let linker = http_linker(&engine)?;
    Ok((engine, linker))
}

/// Whether this CPU has the RISC-V vector extension (asked with the `riscv_hwprobe` syscall);
/// true on other architectures, where the question does not arise.
pub fn host_has_riscv_vector() -> bool {
    #[cfg(all(target_arch = "riscv64", target_os = "linux"))]
    {
        #[repr(C)]
        struct Pair {
            key: i64,
            value: u64,
        }
        const SYS_RISCV_HWPROBE: libc::c_long = 258;
        const KEY_IMA_EXT_0: i64 = 4;
        const IMA_V: u64 = 1 << 2;
        let mut pair = Pair {
            key: KEY_IMA_EXT_0,
            value: 0,
        };
        // SAFETY: riscv_hwprobe fills `pair`, an array of one element we own; no CPU set.
        let rc = unsafe {
            libc::syscall(
                SYS_RISCV_HWPROBE,
                &mut pair as *mut Pair,
                1usize,
                0usize,
                std::ptr::null::<u8>(),
                0u32,
            )
        };
        rc == 0 && pair.key == KEY_IMA_EXT_0 && pair.value & IMA_V != 0
    }
    #[cfg(not(all(target_arch = "riscv64", target_os = "linux")))]
    {
        true
    }
}

/// Whether Cranelift can generate native code for the architecture wms runs on.
pub const CRANELIFT_NATIVE: bool = cfg!(any(
    target_arch = "x86_64",
    target_arch = "aarch64",
    target_arch = "riscv64",
    target_arch = "s390x"
));

/// The engine to use: Pulley where Cranelift has no back end for this architecture.
pub fn effective_engine(requested: EngineKind) -> EngineKind {
    if requested == EngineKind::Cranelift && !CRANELIFT_NATIVE {
        tracing::warn!(
            "Cranelift has no back end for {}; running guests in the Pulley interpreter",
            std::env::consts::ARCH
        );
        return EngineKind::Pulley;
    }
    requested
}

/// What each linear memory and table of the pool keeps resident between requests: the
/// budget's share, and without `PAGEMAP_SCAN` at most 1 MiB / 64 KiB (everything kept is then
/// memset on every reset, not just the dirty pages).
fn keep_resident(budget: &pool::ResidentBudget, slots: u32) -> (u64, u64) {
    let (memory, table) = budget.keep_per_slot(slots);
    if PoolingAllocationConfig::is_pagemap_scan_available() {
        (memory, table)
    } else {
        (memory.min(1 << 20), table.min(64 << 10))
    }
}

fn apply_pool(config: &mut Config, plan: &PoolPlan, (memory_keep, table_keep): (u64, u64)) {
    let mut pool = PoolingAllocationConfig::new();
    let slots = plan.slots;
    pool.total_component_instances(slots)
        .total_core_instances(slots.saturating_mul(8))
        .total_memories(slots.saturating_mul(pool::MEMORIES_PER_SLOT))
        .total_tables(slots.saturating_mul(pool::TABLES_PER_SLOT))
        .total_stacks(slots)
        .max_memories_per_component(pool::MEMORIES_PER_SLOT)
        .max_tables_per_component(pool::TABLES_PER_SLOT)
        .max_core_instances_per_component(pool::CORE_INSTANCES_PER_SLOT)
        .table_elements(MAX_TABLE_ELEMENTS)
        .max_memory_size(usize::try_from(plan.max_memory).unwrap_or(usize::MAX))
        // Reset what a request dirtied by memset instead of madvise: madvise on a
        // multi-threaded process costs TLB shoot-downs on every core. With PAGEMAP_SCAN (Linux
        // 6.7+) only the dirty pages are touched; elsewhere the low bytes are memset.
        // What stays resident is bounded by the budget: every slot that was ever used keeps up
        // to this much, and Wasmtime never gives it back while the pool lives.
        .pagemap_scan(wasmtime::Enabled::Auto)
        .linear_memory_keep_resident(usize::try_from(memory_keep).unwrap_or(usize::MAX))
        .table_keep_resident(usize::try_from(table_keep).unwrap_or(usize::MAX));
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
}

/// The memory layout compiled into code: the same for the pool and on demand, so precompiled
/// code made by `wms compile` for a board's address space loads there either way.
fn apply_memory_layout(config: &mut Config, plan: &PoolPlan, max_memory: u64) {
    if plan.memory_reservation >= 4 << 30 && plan.pooling {
        config.memory_reservation(plan.memory_reservation);
        config.memory_guard_size(plan.guard_size);
    } else {
        config.memory_reservation(max_memory.next_power_of_two().max(1 << 20));
        config.memory_guard_size(64 << 10);
    }
    config.memory_reservation_for_growth(0);
}

pub(crate) fn start_epoch_ticker(engine: &Engine) {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("wms-epoch".into())
        .spawn(move || {
            loop {
                std::thread::sleep(EPOCH_TICK);
                match weak.upgrade() {
                    Some(engine) => engine.increment_epoch(),
                    None => return,
                }
            }
        })
        .expect("spawn the epoch ticker thread");
}

/// Compiles a `wasi:http` component and checks at start that it links and exports the handler.
fn load_http(
    engine: &Engine,
    linker: &Linker<HostState>,
    id: &str,
    source: &Path,
    precompiled: Option<&Path>,
) -> anyhow::Result<ProxyPre<HostState>> {
    let component = compile(engine, id, source, precompiled)?;
    let pre = linker
        .instantiate_pre(&component)
        .map_err(|e| anyhow!("{e:?}"))
        .with_context(|| {
            format!(
                "component `{id}` ({}): cannot link its imports",
                source.display()
            )
        })?;
    ProxyPre::new(pre).map_err(|e| {
        let exports = export_names(engine, &component);
        anyhow!(
            "component `{id}` ({}) does not export `wasi:http/incoming-handler@0.2.x`: {e}\n  it exports: {}\n  help: build it as an HTTP handler (e.g. `wasip2::http::proxy::export!` or `#[wstd::http_server]`), or run commands with `wms run`",
            source.display(),
            if exports.is_empty() { "nothing".to_string() } else { exports.join(", ") }
        )
    })
}

/// Wasmtime has its own error type; carry its full message (with causes) into anyhow.
pub(crate) fn wt(e: wasmtime::Error) -> anyhow::Error {
    anyhow!("{e:?}")
}

/// Reads a component's wasm, adapting a preview 1 module into a component (as Spin does).
fn read_component(id: &str, path: &Path) -> anyhow::Result<Vec<u8>> {
    let bytes = std::fs::read(path).with_context(|| {
        format!("component `{id}`: cannot read {}\n  help: build it first (`wms build`, or `wms up --build`) or fix `source` in the manifest", path.display())
    })?;
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        bail!(
            "component `{id}`: {} is not a WebAssembly file\n  help: point `source` at a .wasm component",
            path.display()
        );
    }
    if bytes[4..8] == [1, 0, 0, 0] {
        return adapt::componentize(&bytes).with_context(|| {
            format!(
                "component `{id}`: {} is a core WebAssembly module, not a component, and cannot be adapted\n  help: build for `wasm32-wasip2`, or build the module with an SDK that embeds its WIT world (Spin SDK, wit-bindgen)",
                path.display()
            )
        });
    }
    Ok(bytes)
}

fn compile(
    engine: &Engine,
    id: &str,
    path: &Path,
    precompiled: Option<&Path>,
) -> anyhow::Result<Component> {
    let bytes = read_component(id, path)?;
    let start = Instant::now();
    let (component, origin) = aot::load(engine, id, &bytes, precompiled)
        .with_context(|| format!("component `{id}`: cannot compile {}", path.display()))?;
    match origin {
        aot::Origin::Compiled => {
            tracing::info!(component = id, "compiled in {:?}", start.elapsed())
        }
        aot::Origin::Cache => tracing::info!(
            component = id,
            "loaded compiled code from the cache in {:?}",
            start.elapsed()
        ),
        aot::Origin::Precompiled(p) => tracing::info!(
            component = id,
            "loaded precompiled code from {}",
            p.display()
        ),
    }
    Ok(component)
}

/// What an app asks of the pool: instance slots (its process concurrency limit) and the largest
/// memory limit of its components. `wms up` and `wms compile` must agree on it, since the memory
/// layout compiled into code follows from it.
fn pool_demand(app: &App) -> (u32, u64) {
    let max_memory = app
        .components
        .values()
        .map(|c| c.limits.max_memory)
        .max()
        .unwrap_or(wms_manifest::DEFAULT_MAX_MEMORY);
    let slots = u32::try_from(app.max_concurrent_requests)
        .unwrap_or(u32::MAX)
        .max(1);
    (slots, max_memory)
}

/// Where `wms compile` compiles for.
#[derive(Debug, Clone)]
pub struct CompileTarget {
    /// `aarch64`, `riscv64gc`, `x86_64`, `pulley64` or `pulley32` (or a full triple); `None`
    /// for this host.
    pub target: Option<String>,
    /// Cranelift ISA flags to enable, e.g. `has_zbb` (riscv64) or `has_lse` (aarch64).
    pub cpu_features: Vec<String>,
    /// Address space of the machine that will load the code, which decides the memory layout
    /// compiled in (default: this host's, probed; 128 TiB for x86_64; 256 GiB, a 39-bit board,
    /// for other targets).
    pub address_space: Option<u64>,
}

/// Precompiles every wasi:http component of `app` into `out_dir` (`NAME.cwasm` plus a sidecar
/// with the wasm's sha256) for `wms up --precompiled`. Returns the files written.
pub fn compile_app(
    app: &App,
    target: &CompileTarget,
    out_dir: &Path,
) -> anyhow::Result<Vec<PathBuf>> {
    let triple = match target.target.as_deref() {
        None => None,
        Some("aarch64") => Some("aarch64-unknown-linux-gnu".to_string()),
        Some("riscv64gc" | "riscv64") => Some("riscv64gc-unknown-linux-gnu".to_string()),
        Some("x86_64") => Some("x86_64-unknown-linux-gnu".to_string()),
        Some(other) => Some(other.to_string()),
    };
    let mut config = Config::new();
    config.epoch_interruption(true);
    if let Some(t) = &triple {
        config.target(t).map_err(|e| {
            anyhow!("--target {t}: {e}; use aarch64, riscv64gc, x86_64, pulley64 or pulley32")
        })?;
    }
    let riscv = triple.as_deref().is_some_and(|t| t.starts_with("riscv64"));
    if riscv && !target.cpu_features.iter().any(|f| f == "has_v") {
        // See build_engine: without V, SIMD would crash Cranelift.
        config.wasm_simd(false).wasm_relaxed_simd(false);
    }
    for f in &target.cpu_features {
        // SAFETY: the user asserts the target CPU has this feature; Wasmtime refuses to load the
        // code on a host without it.
        unsafe {
            config.cranelift_flag_enable(f);
        }
    }
    let (wanted, max_memory) = pool_demand(app);
    let address_space = match (target.address_space, &triple) {
        (Some(a), _) => a,
        (None, None) => pool::probe_address_space(),
        // x86_64 Linux gives every process 128 TiB (47 bits); the boards wms targets have 39-bit
        // address spaces (256 GiB).
        (None, Some(t)) if t.starts_with("x86_64") => 128 << 40,
        (None, Some(_)) => 256 << 30,
    };
    let plan = pool::plan(wanted, max_memory, address_space);
    apply_memory_layout(&mut config, &plan, max_memory);
    let engine = Engine::new(&config).map_err(|e| {
        anyhow!(
            "--target {}: {e}; use aarch64, riscv64gc, x86_64, pulley64 or pulley32 (other architectures need a wms built with the `cross-compile` feature)",
            target.target.as_deref().unwrap_or("host")
        )
    })?;
    std::fs::create_dir_all(out_dir).with_context(|| format!("create {}", out_dir.display()))?;
    let mut written = Vec::new();
    for (id, c) in &app.components {
        if c.executor != wms_manifest::Executor::Http {
            continue;
        }
        let wasm = read_component(id, &c.source)?;
        let code = aot::precompile(&engine, &wasm)
            .with_context(|| format!("component `{id}`: cannot compile {}", c.source.display()))?;
        written.push(aot::write_precompiled(out_dir, id, &wasm, &code)?);
    }
    Ok(written)
}

fn export_names(engine: &Engine, component: &Component) -> Vec<String> {
    component
        .component_type()
        .exports(engine)
        .map(|(name, _)| name.to_string())
        .collect()
}

/// Copies the files matching `patterns` (relative to `app_dir`) into a private directory that
/// is mounted read-only at the guest root, so the guest sees exactly those files.
fn stage_files(
    app_dir: &Path,
    id: &str,
    patterns: &[String],
    exclude: &[String],
) -> anyhow::Result<tempfile::TempDir> {
    let staging = tempfile::Builder::new()
        .prefix(&format!("wms-{id}-files-"))
        .tempdir()
        .context("create a staging directory for files")?;
    for f in wms_manifest::files::pattern_files(app_dir, id, patterns, exclude)? {
        let dest = staging.path().join(f.guest.trim_start_matches('/'));
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::copy(&f.host, &dest)
            .with_context(|| format!("component `{id}`: copy {}", f.host.display()))?;
    }
    Ok(staging)
}

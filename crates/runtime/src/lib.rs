//! The wms runtime: the only crate that names Wasmtime types.
//!
//! [`Runtime::new`] builds one [`Engine`] per process (pooling allocator sized to the host, epoch
//! interruption with one ticker), compiles every component of an [`App`] and pre-instantiates it
//! as a `ProxyPre`. [`Runtime::handle`] then serves one request in a fresh `Store` and instance,
//! with the component's timeout, memory limit and concurrency limits in force, and classifies
//! every way the guest can fail so the front end can answer 503, 504 or 500 and keep serving.
//!
//! Where things live: `engine` (configuration, pool, targets, epoch ticker), `load` (reading,
//! adapting and compiling components, staging files), `cache` (the private cache
//! directory, digests, self-verifying files), `aot` (compiled code) and `adapt` (the preview 1
//! adapter), `guest` (store data, memory limiter, counted descriptors and
//! outbound requests, deadline, the guest task and its guarded body), `failure` (typed failure
//! classification), one executor per interface (`http_p2` and `http_p3` for `wasi:http` 0.2 and
//! 0.3, `wagi`, `command`), and `release` (swapping in a fresh pool when idle slots keep
//! memory). This file keeps [`Runtime`], its options and the re-exports.

// `spin_sdk_5_bindgen!` and `spin_sdk_7_bindgen!` (build.rs): before the modules that use them.
include!(concat!(env!("OUT_DIR"), "/spin_wit.rs"));

mod adapt;
pub mod aot;
mod cache;
mod chain;
mod command;
pub mod descriptors;
mod engine;
mod failure;
mod guest;
mod guest_log;
mod http_p2;
mod http_p3;
mod kv;
mod kv_host;
mod load;
pub mod metrics;
mod mqtt;
mod outbound;
pub mod pool;
mod postgres;
mod postgres4;
mod redis;
mod release;
mod sockets;
mod sqlite;
pub mod trace;
mod variables;
mod wagi;

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::anyhow;
use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use indexmap_lite::IndexMap;
use tokio::sync::Semaphore;
use wasmtime::Engine;
use wasmtime::component::Linker;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wms_manifest::{AllowedHost, App, FileMount};

pub use cache::{ENV_CACHE_DIR, cache_dir};
pub use command::{CommandOptions, CommandOutcome, DirMount, compile_command, run_command};
pub use engine::{CRANELIFT_NATIVE, effective_engine, host_has_riscv_vector};
pub use failure::{Failure, failure_response, plain_response};
pub use guest::HostState;
pub use load::{CompileTarget, compile_app};
pub use pool::PoolPlan;
pub use sqlite::{
    MAX_RESULT_BYTES as SQLITE_MAX_RESULT_BYTES, MAX_RESULT_ROWS as SQLITE_MAX_RESULT_ROWS,
};

use engine::{build_engine, pool_demand, pulley_fallback};
use http_p2::{http_linker, load_http};
use load::stage_files;

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
    /// Where to count what components do, for the admin listener (`None`: nothing is counted).
    pub metrics: Option<Arc<metrics::Metrics>>,
    /// The key-value stores and SQLite databases the app's components use, resolved
    /// ([`wms_manifest::stores::resolve`]); opened by [`Runtime::new`].
    pub stores: wms_manifest::stores::AppStores,
    /// The runtime config's `[[client_tls]]` tables: how components connect to hosts over TLS.
    pub client_tls: Vec<wms_manifest::runtime_config::ClientTls>,
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
    /// The values of the component's variables, for Spin's variables interfaces.
    variables: Arc<wms_manifest::VariableValues>,
    /// The key-value stores and SQLite databases it may open.
    grants: Arc<kv_host::Grants>,
    /// Outbound entries naming an address may reach local ones (a local manifest only).
    may_name_local_addresses: bool,
    /// Its `wasi:sockets` policy (from `allowed_outbound_hosts`).
    sockets: Arc<sockets::ComponentSockets>,
    /// The descriptor budget all guests of the process share.
    fds: Arc<descriptors::Budget>,
    /// Its instances' outbound connections, against its `max_outbound_connections`.
    outbound: Arc<descriptors::ComponentOutbound>,
    /// Where its calls to `http://NAME.spin.internal` and to the app itself go.
    chain: Arc<chain::Chain>,
    /// The runtime config's `[[client_tls]]` tables (outbound HTTPS).
    client_tls: Arc<[Arc<outbound::ClientTlsConfig>]>,
    /// Rate limit of the component's guest output in the log.
    guest_log: Arc<guest_log::LogBudget>,
    /// Rate limit of its overload warnings, so a flood of 503s cannot flood the log.
    overload_log: Arc<guest_log::LogBudget>,
    /// Its counters, when the process counts (an admin listener is on).
    metrics: Option<Arc<metrics::ComponentMetrics>>,
}

impl LoadedComponent {
    /// Logs a failure of this component's request; overloads are warnings, rate-limited.
    pub(crate) fn log_failure(&self, f: &Failure) {
        self.count_failure(f);
        match f {
            Failure::Overloaded { .. } => {
                if self.overload_log.allow() {
                    tracing::warn!(component = %self.id, "503: {f}");
                }
            }
            _ => tracing::error!(component = %self.id, "{f}"),
        }
    }

    /// Counts a failure of this component's request (every failure is counted once, whether or
    /// not it is logged through [`Self::log_failure`]).
    pub(crate) fn count_failure(&self, f: &Failure) {
        if let Some(m) = &self.metrics {
            m.failure(f);
        }
    }

    /// Times an instantiation for the metrics.
    pub(crate) fn instantiated(&self, since: std::time::Instant) {
        if let Some(m) = &self.metrics {
            m.instantiated(since.elapsed());
        }
    }

    pub(crate) fn guest_output(&self, stream: &'static str) -> guest_log::GuestLog {
        guest_log::GuestLog {
            component: self.id.clone(),
            stream,
            budget: self.guest_log.clone(),
            span: tracing::Span::current(),
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
    HttpP3(http_p3::Handler),
    Wagi(wagi::WagiModule),
}

/// A component's code as loaded, before it becomes a [`Kind`] (a 0.3 handler needs to know its
/// component).
enum Code {
    Http(http_p2::HttpPre),
    Wagi(wagi::WagiModule),
}

impl Code {
    fn into_kind(self, me: &std::sync::Weak<LoadedComponent>) -> Kind {
        match self {
            Code::Http(http_p2::HttpPre::P2(pre)) => Kind::Http(pre),
            Code::Http(http_p2::HttpPre::P3(pre)) => Kind::HttpP3(http_p3::handler(me, pre)),
            Code::Wagi(module) => Kind::Wagi(module),
        }
    }
}

/// A loaded app, ready to serve requests.
pub struct Runtime {
    dispatch: Arc<Dispatch>,
    report: EngineReport,
    descriptors: descriptors::DescriptorPlan,
    _staging: Vec<tempfile::TempDir>,
}

/// What hands a request to a component, for the front end and for components chaining to each
/// other ([`chain`]).
pub(crate) struct Dispatch {
    /// The app's code on the current engine: replaced whole when idle pool memory is given back
    /// (requests in flight keep the code they started with).
    current: Arc<RwLock<Arc<Generation>>>,
    global: Arc<Semaphore>,
    max_concurrent_requests: usize,
    /// The most requests in flight at once since the releaser last looked.
    activity: Arc<release::Activity>,
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

        let chain = chain::Chain::new(app, report.max_concurrent_requests);
        let client_tls: Arc<[_]> = outbound::client_tls_configs(&options.client_tls)?.into();
        let kv_stores = kv::KvStores::open(&options.stores)?;
        let databases = sqlite::Databases::open(&options.stores)?;
        let mut components = Vec::new();
        let mut staging = Vec::new();
        let mut wagi_linker = None;
        let mut fallback: Option<(Engine, Linker<HostState>)> = None;
        for (id, c) in &app.components {
            let variables = match &c.variable_values {
                Some(v) => Arc::new(v.clone()),
                None if c.outbound_templates.is_empty() => Arc::default(),
                None => anyhow::bail!(
                    "component `{id}`: its variables were not resolved (App::resolve_variables)"
                ),
            };
            let grants = Arc::new(kv_host::Grants::of(c, &kv_stores, &databases)?);
            let mut component_engine = engine.clone();
            let code = match &c.executor {
                wms_manifest::Executor::Http => {
                    match load_http(
                        &engine,
                        &linker,
                        id,
                        &c.source,
                        options.precompiled.as_deref(),
                        options.metrics.as_deref(),
                    ) {
                        Ok(pre) => Code::Http(pre),
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
                            Code::Http(load_http(
                                pulley,
                                pulley_linker,
                                id,
                                &c.source,
                                None,
                                options.metrics.as_deref(),
                            )?)
                        }
                        Err(e) => return Err(e),
                    }
                }
                wms_manifest::Executor::Wagi { argv, entrypoint } => {
                    let linker = match &wagi_linker {
                        Some(l) => l,
                        None => wagi_linker.insert(wagi::linker(&engine)?),
                    };
                    Code::Wagi(wagi::WagiModule::load(
                        &engine, linker, id, &c.source, argv, entrypoint,
                    )?)
                }
            };
            match &code {
                Code::Http(http_p2::HttpPre::P3(_)) => {
                    let r = &c.limits.reuse;
                    tracing::info!(
                        component = %id,
                        "wasi:http 0.3 handler: instances reused for up to {} requests, {} at once, kept {:?} when idle",
                        r.max_requests,
                        r.max_concurrent,
                        r.idle_timeout
                    );
                }
                Code::Http(http_p2::HttpPre::P2(_)) => {
                    tracing::debug!(component = %id, "wasi:http 0.2 handler: an instance per request")
                }
                Code::Wagi(_) => {}
            }
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
                Arc::new_cyclic(|me| LoadedComponent {
                    id: name.clone(),
                    engine: component_engine,
                    kind: code.into_kind(me),
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
                    variables,
                    grants,
                    may_name_local_addresses: !app.from_image,
                    sockets: sockets::ComponentSockets::new(
                        name.clone(),
                        c.allowed_outbound_hosts.clone().into(),
                        !app.from_image,
                    ),
                    fds: fd_budget.clone(),
                    outbound: descriptors::ComponentOutbound::new(
                        c.limits.max_outbound_connections,
                    ),
                    chain: chain.clone(),
                    client_tls: client_tls.clone(),
                    guest_log: guest_log::LogBudget::guest_lines(&name),
                    overload_log: guest_log::LogBudget::new(&name, "overload warnings", 1.0, 5.0),
                    metrics: options.metrics.as_ref().map(|m| m.component(id)),
                }),
            ));
        }
        let global = Arc::new(Semaphore::new(report.max_concurrent_requests));
        let activity = Arc::new(release::Activity::default());
        let current = Arc::new(RwLock::new(Arc::new(Generation { components, engine })));
        if let Some(m) = &options.metrics
            && report.pool.pooling
        {
            let slots = u64::from(report.pool.slots);
            let weak = Arc::downgrade(&current);
            m.set_pool_probe(Box::new(move || {
                let current = weak.upgrade()?;
                let engine = current
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .engine
                    .clone();
                let in_use = engine.pooling_allocator_metrics()?.component_instances();
                Some((in_use, slots))
            }));
        }
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
        let dispatch = Arc::new(Dispatch {
            current,
            global,
            max_concurrent_requests: report.max_concurrent_requests,
            activity,
        });
        chain.connect(&dispatch);
        Ok(Self {
            dispatch,
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
        self.dispatch.handle(component, request).await
    }
}

impl Dispatch {
    /// [`Runtime::handle`].
    pub(crate) async fn handle<B>(
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
            overloaded(format!("server: {} requests", self.max_concurrent_requests))
        })?;
        self.activity
            .started(self.max_concurrent_requests - self.global.available_permits());
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
        if let Kind::HttpP3(handler) = &comp.kind {
            let handler = handler.clone();
            return http_p3::handle(comp, &handler, request, (global, local)).await;
        }
        http_p2::handle(comp, request, (global, local)).await
    }
}

/// Wasmtime has its own error type; carry its full message (with causes) into anyhow.
pub(crate) fn wt(e: wasmtime::Error) -> anyhow::Error {
    anyhow!("{e:?}")
}

//! Starting an app: the one pipeline behind `wms up` and the containerd shim
//! (`containerd-shim-wms-v1`). A loaded app (local manifest or image) goes through the same
//! descriptor split, runtime options, runtime, listener and HTTP front either way.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use wms_manifest::App;
use wms_runtime::{Runtime, RuntimeOptions};

use crate::ServerOptions;

/// The log target of what is logged here: `wms`, as when this was `wms up`'s own code, so the log
/// reads the same (`INFO wms: engine ...`) from `wms up` and from the shim.
const LOG_TARGET: &str = "wms";

/// How to serve an app; the defaults are `wms up`'s.
#[derive(Debug, Clone)]
pub struct Launch {
    pub listen: SocketAddr,
    /// The operator's runtime options. A `pool_resident_budget` of `None` falls back to the
    /// manifest's (a local manifest's only: an image's is ignored, see [`resident_budget_of`]).
    pub runtime: RuntimeOptions,
    pub max_body: u64,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub body_idle_timeout: Duration,
    /// `None`: [`crate::DEFAULT_MAX_CONNECTIONS`], or a quarter of the descriptor limit if lower.
    pub max_connections: Option<u32>,
    pub shutdown_grace: Duration,
    /// Where the app's variables get their values (`wms up`: the runtime config file, its
    /// environment and `.env`; the shim: the container's environment).
    pub variables: wms_manifest::Providers,
    /// The runtime config's key-value stores and SQLite databases (`[key_value_store.NAME]`,
    /// `[sqlite_database.NAME]`), and the file they came from, for errors.
    pub stores: wms_manifest::stores::StoreConfig,
    pub runtime_config_file: Option<std::path::PathBuf>,
    /// The app's state directory: embedded stores and databases live here (`None`: an app that
    /// uses one cannot start).
    pub state_dir: Option<std::path::PathBuf>,
    /// The admin listener (`/metrics`, `/healthz`, `/readyz`); `None`: none, and nothing is
    /// counted.
    pub admin: Option<SocketAddr>,
}

impl Launch {
    /// `wms up`'s defaults, listening on `listen`.
    pub fn new(listen: SocketAddr) -> Self {
        Self {
            listen,
            runtime: RuntimeOptions::default(),
            max_body: crate::DEFAULT_MAX_BODY,
            header_timeout: crate::DEFAULT_HEADER_READ_TIMEOUT,
            idle_timeout: crate::DEFAULT_IDLE_TIMEOUT,
            body_idle_timeout: crate::DEFAULT_BODY_IDLE_TIMEOUT,
            max_connections: None,
            shutdown_grace: crate::DEFAULT_SHUTDOWN_GRACE,
            variables: wms_manifest::Providers::from_process_env(),
            stores: wms_manifest::stores::StoreConfig::default(),
            runtime_config_file: None,
            state_dir: None,
            admin: None,
        }
    }
}

/// Raises the soft descriptor limit to the hard one (the kernel default soft limit, 1024, is
/// smaller than a server needs) and returns it.
pub fn raise_descriptor_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to an rlimit struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    #[allow(
        clippy::unnecessary_cast,
        reason = "rlim_t is u32 on 32-bit boards (armv7) and u64 elsewhere"
    )]
    let limit = lim.rlim_cur as u64;
    limit
}

/// The manifest's `pool_resident_budget`: the operator's in a local manifest; an image's is
/// ignored, since it would let a publisher decide how much of the host's memory the pool keeps.
pub fn resident_budget_of(app: &App) -> Option<u64> {
    match app.pool_resident_budget {
        Some(b) if app.from_image => {
            tracing::warn!(
                target: LOG_TARGET,
                "the image's pool_resident_budget ({b} bytes) is ignored; the operator sets it with --pool-resident-budget"
            );
            None
        }
        other => other,
    }
}

/// A finished command's exit status as `wms run` and the shim report it, with what to print on
/// standard error: its own status (a status outside 0..=255 is 1), 124 when it ran past its
/// timeout, 134 when it trapped or exceeded its memory limit. `what` names the command.
pub fn command_status(outcome: &wms_runtime::CommandOutcome, what: &str) -> (u8, Option<String>) {
    use wms_runtime::CommandOutcome;
    match outcome {
        CommandOutcome::Exit(code) => (u8::try_from(*code).unwrap_or(1), None),
        CommandOutcome::Trap(message) => (134, Some(format!("{what} trapped: {message}"))),
        CommandOutcome::MemoryLimit(limit) => (
            134,
            Some(format!(
                "{what} exceeded its memory limit of {limit} bytes (--max-memory)"
            )),
        ),
        CommandOutcome::Timeout(t) => (
            124,
            Some(format!("{what} did not finish within {t:?} (--timeout)")),
        ),
    }
}

/// Logs where each application variable's value came from and what each component is given:
/// its variables, key-value stores, SQLite databases and allowed hosts (names and entries;
/// values never).
fn log_components(
    app: &App,
    origins: &[wms_manifest::VariableOrigin],
    stores: &wms_manifest::stores::AppStores,
) {
    if !origins.is_empty() {
        let list: Vec<String> = origins
            .iter()
            .map(|o| {
                let secret = app.variables.get(&o.name).is_some_and(|v| v.secret);
                format!(
                    "{}{} ({})",
                    o.name,
                    if secret { " [secret]" } else { "" },
                    o.origin
                )
            })
            .collect();
        tracing::info!(target: LOG_TARGET, "variables: {}", list.join(", "));
    }
    let or_none = |v: Vec<String>| {
        if v.is_empty() {
            "none".to_string()
        } else {
            v.join(", ")
        }
    };
    if let Some(dir) = &stores.state_dir
        && (!stores.key_value.is_empty() || !stores.sqlite.is_empty())
    {
        tracing::info!(target: LOG_TARGET, "state directory: {}", dir.display());
    }
    for (label, s) in &stores.key_value {
        tracing::info!(target: LOG_TARGET, "key-value store `{label}`: {s}");
    }
    for id in stores.sqlite.keys() {
        if let Some(path) = stores.sqlite_file(id) {
            tracing::info!(target: LOG_TARGET, "SQLite database `{id}`: {}", path.display());
        }
    }
    for (id, c) in &app.components {
        // Resolved templates come last; one using a secret is shown as written.
        let literal = c.allowed_outbound_hosts.len() - c.outbound_templates.len();
        let mut hosts: Vec<String> = c.allowed_outbound_hosts[..literal]
            .iter()
            .map(ToString::to_string)
            .collect();
        for (t, host) in c
            .outbound_templates
            .iter()
            .zip(&c.allowed_outbound_hosts[literal..])
        {
            hosts.push(if app.uses_secret(t) {
                format!("{t} (secret)")
            } else {
                format!("{t} = {host}")
            });
        }
        tracing::info!(
            target: LOG_TARGET,
            component = %id,
            "variables: {}; key-value stores: {}; SQLite databases: {}; allowed outbound hosts: {}",
            or_none(c.variables.keys().cloned().collect()),
            or_none(c.key_value_stores.clone()),
            or_none(c.sqlite_databases.clone()),
            or_none(hosts)
        );
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!(target: LOG_TARGET, "SIGINT received"),
        _ = term.recv() => tracing::info!(target: LOG_TARGET, "SIGTERM received"),
    }
}

/// The log filter (`tracing` `EnvFilter` syntax, e.g. `info,wms::guest=debug`; default `info`).
pub const ENV_LOG: &str = "WMS_LOG";
/// The log format: `text` (the default: human lines, coloured on a terminal) or `json` (one
/// JSON object per line).
pub const ENV_LOG_FORMAT: &str = "WMS_LOG_FORMAT";

/// Installs the process's logger on standard error, from the values of [`ENV_LOG`] and
/// [`ENV_LOG_FORMAT`] (an unusable filter is `info`; an unknown format is text, and said so).
/// Each line about a request is in its `request` span, whose `request_id` field names it: as
/// `request{request_id=...}:` in text, as `"span":{"request_id":...,"name":"request"}` in JSON.
pub fn init_logging(filter: Option<&str>, format: Option<&str>, ansi: bool) {
    let filter = filter
        .and_then(|f| tracing_subscriber::EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let format = format.map(str::trim).unwrap_or_default();
    if format.eq_ignore_ascii_case("json") {
        let _ = builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init();
        return;
    }
    let _ = builder.with_ansi(ansi).try_init();
    if !format.is_empty() && !format.eq_ignore_ascii_case("text") {
        tracing::warn!(
            target: LOG_TARGET,
            "{ENV_LOG_FORMAT}={format:?} is neither `text` nor `json`: logging text"
        );
    }
}

/// The environment variable naming the admin listener (`wms up --admin-listen`, and the shim
/// reads it from the container's environment).
pub const ENV_ADMIN_LISTEN: &str = "WMS_ADMIN_LISTEN";

/// Serves `app` until `shutdown` resolves: starts the admin listener if asked (printing `Admin
/// http://ADDR`; `/readyz` answers 503 until the app is loaded and again once `shutdown`
/// resolved), splits the descriptors (a quarter for client connections, half for guests, which
/// the runtime takes from the same limit, the rest for the server itself), builds the runtime,
/// listens on `launch.listen` (printing `Serving http://ADDR` and the routes), and serves.
/// Returns whether every connection finished within the shutdown grace.
pub async fn serve_app(
    app: App,
    launch: Launch,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<bool> {
    serve_app_reloading(app, launch, shutdown, None).await
}

/// A reload asked for: why, and which components to build first. Several asked for while one
/// runs are merged into one ([`ReloadRequest::merge`]).
#[derive(Debug, Clone, Default)]
pub struct ReloadRequest {
    /// What asked, for the log: `SIGHUP`, `wms.toml changed`, ...
    pub reasons: Vec<String>,
    /// Components whose build command runs before the app is read again (`wms up --watch`).
    pub build: std::collections::BTreeSet<String>,
    /// Whether the manifest itself changed (`--watch`), so components whose build changed or
    /// whose `source` is missing are built too.
    pub manifest_changed: bool,
}

impl ReloadRequest {
    /// A reload for `reason` alone.
    pub fn because(reason: impl Into<String>) -> Self {
        Self {
            reasons: vec![reason.into()],
            ..Self::default()
        }
    }

    pub fn merge(&mut self, other: ReloadRequest) {
        for r in other.reasons {
            if !self.reasons.contains(&r) {
                self.reasons.push(r);
            }
        }
        self.build.extend(other.build);
        self.manifest_changed |= other.manifest_changed;
    }
}

/// What reads an app again for a reload, off the async threads: the manifest (built first if
/// the request says so) and where its variables get their values. An error names the file,
/// field or component.
pub type ReloadLoader =
    Arc<dyn Fn(&ReloadRequest) -> anyhow::Result<(App, wms_manifest::Providers)> + Send + Sync>;

/// Reloads for [`serve_app_reloading`]: each request received reloads the app with `load`.
pub struct Reloads {
    pub requests: tokio::sync::mpsc::UnboundedReceiver<ReloadRequest>,
    pub load: ReloadLoader,
}

/// [`serve_app`], and while it serves, each request from `reloads` loads the app again in the
/// background and swaps it in: new requests go to the new version, requests in flight finish on
/// the old one, which is freed when the last ends. A version that fails to load is refused with
/// an error and the old one keeps serving (and `/readyz` stays ready).
pub async fn serve_app_reloading(
    mut app: App,
    launch: Launch,
    shutdown: impl Future<Output = ()>,
    reloads: Option<Reloads>,
) -> anyhow::Result<bool> {
    let origins = app.resolve_variables(&launch.variables)?;
    // Each version's labels are resolved against the same runtime config's stores (a reload
    // re-reads the manifest, not the operator's store definitions).
    let resolve_stores: StoreResolver = {
        let (config, file, dir) = (
            launch.stores.clone(),
            launch.runtime_config_file.clone(),
            launch.state_dir.clone(),
        );
        Arc::new(move |app: &App| {
            Ok(wms_manifest::stores::resolve(
                app,
                &config,
                file.as_deref(),
                dir.clone(),
            )?)
        })
    };
    let stores = resolve_stores(&app)?;
    log_components(&app, &origins, &stores);
    let descriptors = raise_descriptor_limit();
    let connection_share = usize::try_from(descriptors / 4)
        .unwrap_or(usize::MAX)
        .max(16);
    let max_connections = match launch.max_connections {
        Some(n) => {
            let n = n as usize;
            if n > connection_share {
                tracing::warn!(
                    target: LOG_TARGET,
                    "--max-connections {n} is more than a quarter of the descriptor limit ({descriptors}): enough idle clients can then starve guests of descriptors"
                );
            }
            n
        }
        None => crate::DEFAULT_MAX_CONNECTIONS.min(connection_share),
    };
    let mut options = launch.runtime;
    options.stores = stores;
    let health = match launch.admin {
        None => None,
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| {
                    format!("cannot listen on {addr} for the admin listener (--admin-listen, {ENV_ADMIN_LISTEN})")
                })?;
            let bound = listener.local_addr()?;
            let metrics = Arc::new(wms_runtime::metrics::Metrics::new());
            let health = Arc::new(crate::admin::Health::default());
            tokio::spawn(crate::admin::serve(
                listener,
                metrics.clone(),
                health.clone(),
            ));
            println!("Admin http://{bound}");
            tracing::info!(
                target: LOG_TARGET,
                "admin listener on http://{bound}: /metrics, /healthz, /readyz"
            );
            options.metrics = Some(metrics);
            Some(health)
        }
    };
    // The operator's options; each version adds its manifest's budget where the operator set
    // none.
    let operator_options = options.clone();
    let started = std::time::Instant::now();
    let app = Arc::new(app);
    // Off the async threads: compiling takes a while, and the admin listener answers meanwhile.
    let prints = fingerprints(&app);
    let runtime = {
        let (app, options) = (app.clone(), operator_options.clone());
        tokio::task::spawn_blocking(move || new_runtime(&app, options))
            .await
            .context("loading the app panicked")?
    }
    .with_context(|| {
        format!(
            "cannot start app `{}` from {}",
            app.name,
            app.manifest_path.display()
        )
    })?;
    tracing::info!(
        target: LOG_TARGET,
        "loaded {} component(s) in {:?}",
        app.components.len(),
        started.elapsed()
    );
    let listener = tokio::net::TcpListener::bind(launch.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {}; pick another address with --listen",
                launch.listen
            )
        })?;
    let addr = listener.local_addr()?;
    // Ready from here: the app is loaded and connections queue on the bound socket until the
    // server accepts them. Before the `Serving` line, which is what scripts and tests wait for.
    if let Some(h) = &health {
        h.set_ready();
    }
    println!("Serving http://{addr}");
    println!("Available routes:");
    for route in &app.routes {
        println!(
            "  {}: http://{addr}{}",
            route.component,
            route.pattern.raw()
        );
    }
    let server_options = ServerOptions {
        max_body: launch.max_body,
        header_read_timeout: launch.header_timeout,
        idle_timeout: launch.idle_timeout,
        body_idle_timeout: launch.body_idle_timeout,
        max_connections,
        shutdown_grace: launch.shutdown_grace,
        metrics: operator_options.metrics.clone(),
    };
    tracing::info!(
        target: LOG_TARGET,
        "clients: at most {max_connections} connections (descriptor limit {descriptors}), request head within {:?}, idle connections closed after {:?}, request bodies stalled for {:?} fail",
        launch.header_timeout,
        launch.idle_timeout,
        launch.body_idle_timeout
    );
    let shutdown = async move {
        shutdown.await;
        if let Some(h) = &health {
            h.set_draining();
        }
    };
    let current = crate::Current::new(crate::Version::new(
        app,
        Arc::new(runtime),
        operator_options.metrics.as_deref(),
    ));
    let reloader = reloads.map(|reloads| {
        tokio::spawn(reload_loop(
            reloads,
            current.clone(),
            operator_options,
            prints,
            resolve_stores,
        ))
    });
    let clean = crate::serve_current(current, listener, server_options, shutdown).await;
    if let Some(task) = reloader {
        task.abort();
    }
    Ok(clean)
}

/// The runtime of one version of the app: the operator's options, with the manifest's pool
/// budget where the operator set none.
fn new_runtime(app: &App, mut options: RuntimeOptions) -> anyhow::Result<Runtime> {
    options.pool_resident_budget = options.pool_resident_budget.or(resident_budget_of(app));
    let runtime = Runtime::new(app, &options)?;
    tracing::info!(target: LOG_TARGET, "{}", runtime.report());
    Ok(runtime)
}

/// Resolves an app's store and database labels (`wms_manifest::stores::resolve` with the
/// operator's runtime config and state directory).
type StoreResolver =
    Arc<dyn Fn(&App) -> anyhow::Result<wms_manifest::stores::AppStores> + Send + Sync>;

/// Serves reload requests one at a time until the channel closes; requests that come while one
/// runs are merged into the next.
async fn reload_loop(
    mut reloads: Reloads,
    current: crate::Current,
    options: RuntimeOptions,
    mut prints: Fingerprints,
    resolve_stores: StoreResolver,
) {
    while let Some(mut request) = reloads.requests.recv().await {
        while let Ok(more) = reloads.requests.try_recv() {
            request.merge(more);
        }
        let reasons = request.reasons.join(", ");
        tracing::info!(target: LOG_TARGET, "reloading ({reasons})");
        let started = std::time::Instant::now();
        let old = current.get();
        let load = reloads.load.clone();
        let loaded = {
            let mut options = options.clone();
            let resolve_stores = resolve_stores.clone();
            tokio::task::spawn_blocking(move || -> anyhow::Result<(App, Fingerprints, Runtime)> {
                let (mut app, variables) = load(&request)?;
                let origins = app.resolve_variables(&variables)?;
                options.stores = resolve_stores(&app)?;
                log_components(&app, &origins, &options.stores);
                let prints = fingerprints(&app);
                let runtime = new_runtime(&app, options).with_context(|| {
                    format!(
                        "cannot load app `{}` from {}",
                        app.name,
                        app.manifest_path.display()
                    )
                })?;
                Ok((app, prints, runtime))
            })
            .await
            .unwrap_or_else(|e| Err(anyhow::anyhow!("loading the app panicked: {e}")))
        };
        let metrics = options.metrics.as_deref();
        match loaded {
            Ok((app, new_prints, runtime)) => {
                let changes = Changes::between((&old.app, &prints), (&app, &new_prints));
                prints = new_prints;
                let app = Arc::new(app);
                current.replace(crate::Version::new(app.clone(), Arc::new(runtime), metrics));
                drop(old);
                if let Some(m) = metrics {
                    m.reloaded(true);
                }
                tracing::info!(
                    target: LOG_TARGET,
                    "reloaded app `{}` from {} in {:?}: {changes}; new requests go to the new version, requests in flight finish on the previous one",
                    app.name,
                    app.manifest_path.display(),
                    started.elapsed()
                );
            }
            Err(e) => {
                if let Some(m) = metrics {
                    m.reloaded(false);
                }
                tracing::error!(
                    target: LOG_TARGET,
                    "reload failed, keeping the previous version: {e:#}"
                );
            }
        }
    }
}

/// What identifies a version of each component: its manifest entry as loaded (values included,
/// never printed) and its `.wasm` file's size and modification time. Taken before it is loaded.
type Fingerprints = Vec<(String, String)>;

fn fingerprints(app: &App) -> Fingerprints {
    app.components
        .iter()
        .map(|(id, c)| {
            let file = std::fs::metadata(&c.source)
                .ok()
                .map(|m| (m.len(), m.modified().ok()));
            (id.clone(), format!("{c:?} {file:?}"))
        })
        .collect()
}

/// What a reload changed, for the log: components added, removed and changed, and whether the
/// routes changed.
struct Changes {
    added: Vec<String>,
    removed: Vec<String>,
    changed: Vec<String>,
    unchanged: usize,
    routes: bool,
}

impl Changes {
    fn between(old: (&App, &Fingerprints), new: (&App, &Fingerprints)) -> Self {
        let find = |prints: &Fingerprints, id: &str| {
            prints.iter().find(|(i, _)| i == id).map(|(_, p)| p.clone())
        };
        let mut changes = Changes {
            added: Vec::new(),
            removed: Vec::new(),
            changed: Vec::new(),
            unchanged: 0,
            routes: false,
        };
        for (id, print) in new.1 {
            match find(old.1, id) {
                None => changes.added.push(id.clone()),
                Some(p) if &p != print => changes.changed.push(id.clone()),
                Some(_) => changes.unchanged += 1,
            }
        }
        changes.removed = old
            .1
            .iter()
            .filter(|(id, _)| find(new.1, id).is_none())
            .map(|(id, _)| id.clone())
            .collect();
        let routes = |app: &App| -> Vec<(String, String)> {
            app.routes
                .iter()
                .map(|r| (r.pattern.raw().to_string(), r.component.clone()))
                .collect()
        };
        changes.routes = routes(old.0) != routes(new.0);
        changes
    }
}

impl std::fmt::Display for Changes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list = |v: &[String]| {
            if v.is_empty() {
                "none".to_string()
            } else {
                v.iter()
                    .map(|id| format!("`{id}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        };
        write!(
            f,
            "components added: {}; removed: {}; changed: {}; unchanged: {}; routes {}",
            list(&self.added),
            list(&self.removed),
            list(&self.changed),
            self.unchanged,
            if self.routes { "changed" } else { "unchanged" }
        )
    }
}

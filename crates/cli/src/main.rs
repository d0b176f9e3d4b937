//! `wms`: run WebAssembly microservices from an app manifest.

mod oci;
mod reload;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand, ValueEnum};
use wms_runtime::{Allocation, EngineKind, RuntimeOptions};

/// Address `wms up` listens on unless told otherwise.
pub const ENV_LISTEN: &str = "WMS_LISTEN";

#[derive(Parser)]
#[command(
    name = "wms",
    version,
    about = "Run WebAssembly microservices on any architecture"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve an app: every route of its manifest, a fresh instance per request.
    Up(UpArgs),
    /// Run a WASI command (preview 1 module or preview 2 component) to completion; its exit
    /// status becomes wms's (124 on timeout, 134 on a trap or the memory limit).
    Run(RunArgs),
    /// Compile an app's components ahead of time, for this host or for a board, so a slow board
    /// does not compile at start (`wms up --precompiled DIR` loads the result).
    Compile(CompileArgs),
    /// Run the build command of every component in an app's manifest.
    Build {
        /// App directory or manifest file (wms.toml or spin.toml).
        #[arg(default_value = ".")]
        app: PathBuf,
    },
    /// Publish an app (as a wms app image) or a single .wasm (as a wasm artifact) to an OCI
    /// registry: `wms push [APP] REF`.
    Push(oci::PushArgs),
    /// Fetch an image into the local content store, verifying every blob.
    Pull(oci::PullArgs),
    /// Show what an image holds: media types, digests, sizes, components, WASI version, world.
    Inspect(oci::InspectArgs),
    /// Check and store credentials for a registry in the Docker config file.
    Login(oci::LoginArgs),
    /// Remove stored credentials for a registry.
    Logout {
        /// Registry host[:port].
        registry: String,
    },
}

#[derive(clap::Args)]
struct UpArgs {
    /// App directory, manifest file (wms.toml or spin.toml), or image reference
    /// (`registry/repository:tag`, pulled when not in the local store).
    #[arg(default_value = ".")]
    app: String,
    /// Address to listen on; port 0 picks a free port (the bound address is printed).
    #[arg(long, env = ENV_LISTEN, default_value = "127.0.0.1:3000")]
    listen: SocketAddr,
    /// Run the components' build commands first.
    #[arg(long)]
    build: bool,
    /// Rebuild a component (its build command) and reload when its `build.watch` files change,
    /// and reload when the manifest changes (a local app only). SIGHUP reloads with or without it.
    #[arg(long)]
    watch: bool,
    /// Code generator: native code with Cranelift, or the portable Pulley interpreter.
    #[arg(long, value_enum, default_value_t = Engine::Cranelift)]
    engine: Engine,
    /// Disable the pooling allocator and allocate every instance on demand.
    #[arg(long)]
    no_pooling: bool,
    /// Trust and use precompiled code from this directory (made by `wms compile`) where it
    /// was made from exactly the component's wasm; precompiled code is native code.
    #[arg(long, value_name = "DIR")]
    precompiled: Option<PathBuf>,
    /// Largest request body accepted, in bytes (larger requests get 413).
    #[arg(long, default_value_t = wms_server::DEFAULT_MAX_BODY)]
    max_body: u64,
    /// How long a client may take from connecting, or from its previous response, to a
    /// complete request head (seconds, or a duration such as `500ms`).
    #[arg(long, value_parser = timeout_arg, default_value = "10s")]
    header_timeout: Duration,
    /// How long a connection may stay open with no request in flight.
    #[arg(long, value_parser = timeout_arg, default_value = "60s")]
    idle_timeout: Duration,
    /// How long a client may pause while sending a request body before the request fails.
    #[arg(long, value_parser = timeout_arg, default_value = "10s")]
    body_idle_timeout: Duration,
    /// Open connections at most; more wait until one closes (default: 1024, or a quarter of
    /// the descriptor limit if that is lower).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    max_connections: Option<u32>,
    /// How long in-flight requests may take to finish after SIGINT or SIGTERM.
    #[arg(long, value_parser = grace_arg, default_value = "30s")]
    shutdown_grace: Duration,
    /// The most memory the instance pool keeps resident between requests, e.g. `256MiB`
    /// (default: the manifest's `pool_resident_budget`, else 1/16 of the host's memory or of
    /// the cgroup's limit, whichever is smaller).
    #[arg(long, value_name = "SIZE", value_parser = budget_arg)]
    pool_resident_budget: Option<u64>,
    /// How long pool slots may stay idle before what they keep is given back to the kernel
    /// (a fresh pool replaces the old one; `0` never gives it back).
    #[arg(long, value_name = "DURATION", value_parser = idle_release_arg, default_value = "10s")]
    pool_idle_release: Duration,
    /// Spin's runtime config file: where variables get their values (`[[config_provider]]`
    /// tables, before the environment's `WMS_VARIABLE_NAME` and `SPIN_VARIABLE_NAME`).
    #[arg(long, value_name = "PATH")]
    runtime_config_file: Option<PathBuf>,
    /// Where the app's embedded key-value stores and SQLite databases live (default: `.wms` in
    /// the app's directory; an app from an image needs it to use them).
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Serve /metrics (Prometheus text), /healthz and /readyz on this address; a bare port
    /// means 127.0.0.1:PORT (default: no admin listener, and nothing is counted).
    #[arg(long, env = wms_server::launch::ENV_ADMIN_LISTEN, value_name = "ADDR|PORT", value_parser = wms_server::admin::address)]
    admin_listen: Option<SocketAddr>,
    #[command(flatten)]
    image: oci::ImageArgs,
}

#[derive(clap::Args)]
struct CompileArgs {
    /// App directory or manifest file (wms.toml or spin.toml).
    #[arg(default_value = ".")]
    app: PathBuf,
    /// Target: aarch64, riscv64gc, x86_64, pulley64 or pulley32 (default: this host).
    #[arg(long)]
    target: Option<String>,
    /// Cranelift CPU feature the target has, e.g. has_zbb (repeatable).
    #[arg(long = "cpu-feature", value_name = "FLAG")]
    cpu_features: Vec<String>,
    /// Address space of the target machine, which decides the memory layout compiled in
    /// (default: probed on this host; 128TiB for x86_64; 256GiB, a 39-bit board, for another
    /// target).
    #[arg(long, value_name = "SIZE")]
    address_space: Option<String>,
    /// Output directory (default: APP/.wms/precompiled/TARGET).
    #[arg(long, short)]
    output: Option<PathBuf>,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Environment variable for the guest, `NAME=VALUE` (repeatable); nothing else is passed.
    #[arg(long = "env", value_name = "NAME=VALUE")]
    env: Vec<String>,
    /// Directory for the guest, read-only: `HOST::GUEST` (or `HOST`, mounted at the same path).
    #[arg(long = "dir", value_name = "HOST::GUEST")]
    dirs: Vec<String>,
    /// Directory for the guest, writable: `HOST::GUEST`.
    #[arg(long = "dir-rw", value_name = "HOST::GUEST")]
    dirs_rw: Vec<String>,
    /// Stop the guest after this long (e.g. `30s`, `5m`, at most 24h); no limit by default.
    #[arg(long, value_parser = timeout_arg)]
    timeout: Option<Duration>,
    /// Largest linear memory the guest may grow to.
    #[arg(long, default_value = "128MiB")]
    max_memory: String,
    /// Code generator: native code with Cranelift, or the portable Pulley interpreter.
    #[arg(long, value_enum, default_value_t = Engine::Cranelift)]
    engine: Engine,
    #[command(flatten)]
    image: oci::ImageArgs,
    /// The .wasm file to run, or an image reference of a wasm artifact.
    file: String,
    /// Arguments for the guest (after the file name).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

#[derive(Clone, Copy, ValueEnum)]
enum Engine {
    Cranelift,
    Pulley,
}

fn main() -> ExitCode {
    use wms_server::launch::{ENV_LOG, ENV_LOG_FORMAT, init_logging};
    init_logging(
        std::env::var(ENV_LOG).ok().as_deref(),
        std::env::var(ENV_LOG_FORMAT).ok().as_deref(),
        std::io::IsTerminal::is_terminal(&std::io::stderr()),
    );
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Up(args) => up(args),
        Command::Run(args) => run_command(args),
        Command::Compile(args) => compile(args),
        Command::Build { app } => {
            let app = wms_manifest::load(&app)?;
            build(&app)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Push(args) => oci::push(args),
        Command::Pull(args) => oci::pull(args),
        Command::Inspect(args) => oci::inspect(args),
        Command::Login(args) => oci::login(args),
        Command::Logout { registry } => oci::logout(&registry),
    }
}

/// Upper bound of every duration flag: past it `Instant` arithmetic can overflow, and no
/// request or drain needs a day.
const MAX_FLAG_DURATION: Duration = Duration::from_secs(24 * 3600);

/// A duration flag: plain seconds (`10`) or a duration (`500ms`, `2m`), up to 24h.
fn duration_arg(s: &str) -> Result<Duration, String> {
    let d = match s.trim().parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => humantime::parse_duration(s.trim())
            .map_err(|e| format!("{e}; write seconds or a duration such as 500ms, 30s or 5m"))?,
    };
    if d > MAX_FLAG_DURATION {
        return Err("at most 24h".to_string());
    }
    Ok(d)
}

/// A duration flag that must not be zero (a timeout always in force).
fn timeout_arg(s: &str) -> Result<Duration, String> {
    let d = duration_arg(s)?;
    if d < Duration::from_millis(1) {
        return Err("must be at least 1ms".to_string());
    }
    Ok(d)
}

/// Zero (never), or at least a second: each release builds a fresh pool.
fn idle_release_arg(s: &str) -> Result<Duration, String> {
    let d = duration_arg(s)?;
    if !d.is_zero() && d < Duration::from_secs(1) {
        return Err("0 (never), or at least 1s".to_string());
    }
    Ok(d)
}

/// A size flag such as `256MiB`, up to 1TiB.
fn budget_arg(s: &str) -> Result<u64, String> {
    let size: bytesize::ByteSize = s
        .trim()
        .parse()
        .map_err(|e| format!("{e}; write a size such as 256MiB"))?;
    if size.as_u64() > wms_manifest::MAX_RESIDENT_BUDGET {
        return Err("at most 1TiB".to_string());
    }
    Ok(size.as_u64())
}

/// The shutdown grace may be zero (stop at once).
fn grace_arg(s: &str) -> Result<Duration, String> {
    duration_arg(s)
}

fn up(args: UpArgs) -> anyhow::Result<ExitCode> {
    let pulley = matches!(args.engine, Engine::Pulley);
    let (app, image_precompiled, local) = match oci::app_source(&args.app)? {
        oci::AppSource::Local(path) => (wms_manifest::load(&path)?, None, Some(path)),
        oci::AppSource::Image(reference) => {
            if args.build || args.watch {
                bail!("--build and --watch build a local app; {reference} is an image");
            }
            let m = oci::resolve(&reference, &args.image, pulley)?;
            (m.app, m.precompiled, None)
        }
    };
    if args.build {
        build(&app)?;
    }
    // As Spin's default provider: the environment, then `.env` in the current directory.
    let variables = reload::providers(args.runtime_config_file.as_deref())?;
    let loader = match &local {
        Some(path) => reload::local_loader(path.clone(), args.runtime_config_file.clone(), &app),
        None => reload::image_loader(app.clone(), args.runtime_config_file.clone()),
    };
    let runtime_config = match &args.runtime_config_file {
        Some(path) => Some(wms_manifest::runtime_config::load(path)?),
        None => None,
    };
    let options = RuntimeOptions {
        engine: match args.engine {
            Engine::Cranelift => EngineKind::Cranelift,
            Engine::Pulley => EngineKind::Pulley,
        },
        allocation: if args.no_pooling {
            Allocation::OnDemand
        } else {
            Allocation::Auto
        },
        precompiled: args.precompiled.clone().or(image_precompiled),
        // None: the manifest's budget (wms_server::launch::resident_budget_of).
        pool_resident_budget: args.pool_resident_budget,
        pool_idle_release: Some(args.pool_idle_release),
        metrics: None,
        stores: Default::default(),
        client_tls: runtime_config
            .as_ref()
            .map(|c| c.client_tls.clone())
            .unwrap_or_default(),
    };
    // An image's app directory is in the content store, shared and not the app's to write.
    let state_dir = match &args.state_dir {
        Some(d) => Some(std::path::absolute(d)?),
        None if app.from_image => None,
        None => Some(app.dir.join(".wms")),
    };
    let launch = wms_server::launch::Launch {
        listen: args.listen,
        runtime: options,
        max_body: args.max_body,
        header_timeout: args.header_timeout,
        idle_timeout: args.idle_timeout,
        body_idle_timeout: args.body_idle_timeout,
        max_connections: args.max_connections,
        shutdown_grace: args.shutdown_grace,
        variables,
        // The runtime config's store and database definitions (read once: a reload re-reads
        // variables, not these).
        stores: runtime_config.map(|c| c.stores).unwrap_or_default(),
        runtime_config_file: args.runtime_config_file.clone(),
        state_dir,
        admin: args.admin_listen,
    };
    // Before the async runtime: the exporter's blocking HTTP client runs on threads of its own.
    let traces = wms_server::telemetry::init_traces();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let clean = rt.block_on(async {
        let (requests, received) = tokio::sync::mpsc::unbounded_channel();
        reload::on_sighup(requests.clone())?;
        if args.watch {
            reload::watch(&app, requests)?;
        }
        let reloads = wms_server::launch::Reloads {
            requests: received,
            load: loader,
        };
        wms_server::launch::serve_app_reloading(
            app,
            launch,
            wms_server::launch::shutdown_signal(),
            Some(reloads),
        )
        .await
    })?;
    drop(rt);
    // Drained: the spans of the last requests go out before the process ends.
    if let Some(traces) = traces {
        traces.shutdown();
    }
    Ok(if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn compile(args: CompileArgs) -> anyhow::Result<ExitCode> {
    let app = wms_manifest::load(&args.app)?;
    let address_space = match &args.address_space {
        None => None,
        Some(a) => Some(
            a.parse::<bytesize::ByteSize>()
                .map_err(|e| anyhow::anyhow!("--address-space {a:?}: {e}; write e.g. 256GiB"))?
                .as_u64(),
        ),
    };
    let out = args.output.clone().unwrap_or_else(|| {
        app.dir
            .join(".wms/precompiled")
            .join(args.target.as_deref().unwrap_or(std::env::consts::ARCH))
    });
    let target = wms_runtime::CompileTarget {
        target: args.target.clone(),
        cpu_features: args.cpu_features.clone(),
        address_space,
    };
    let started = std::time::Instant::now();
    let written = wms_runtime::compile_app(&app, &target, &out)?;
    for path in &written {
        println!("{}", path.display());
    }
    eprintln!(
        "wms: compiled {} component(s) for {} in {:?}; serve with `wms up --precompiled {}`",
        written.len(),
        args.target.as_deref().unwrap_or("this host"),
        started.elapsed(),
        out.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn run_command(args: RunArgs) -> anyhow::Result<ExitCode> {
    // The guest's argv[0]: the file name, or for an image the repository's last segment (the
    // stored blob is named by its digest).
    let (file, program) = match oci::app_source(&args.file)? {
        oci::AppSource::Local(path) => {
            let program = path.file_name().map_or_else(
                || path.display().to_string(),
                |n| n.to_string_lossy().into_owned(),
            );
            (path, program)
        }
        oci::AppSource::Image(reference) => {
            let wasm = oci::resolve(&reference, &args.image, matches!(args.engine, Engine::Pulley))?
                .wasm
                .with_context(|| {
                    format!("{reference} is an app image; `wms run` runs a single wasm artifact (serve apps with `wms up`)")
                })?;
            let program = reference
                .repository()
                .rsplit('/')
                .next()
                .unwrap_or_default()
                .to_string();
            (wasm, program)
        }
    };
    let mut env = Vec::new();
    for e in &args.env {
        let Some((k, v)) = e.split_once('=') else {
            bail!("--env {e:?}: write it as NAME=VALUE");
        };
        env.push((k.to_string(), v.to_string()));
    }
    let mut dirs = Vec::new();
    for (spec, writable) in args
        .dirs
        .iter()
        .map(|d| (d, false))
        .chain(args.dirs_rw.iter().map(|d| (d, true)))
    {
        let (host, guest) = spec
            .split_once("::")
            .unwrap_or((spec.as_str(), spec.as_str()));
        if !std::path::Path::new(host).is_dir() {
            bail!("--dir {spec:?}: {host} is not a directory");
        }
        dirs.push(wms_runtime::DirMount {
            host: host.into(),
            guest: guest.to_string(),
            writable,
        });
    }
    let timeout = args.timeout;
    let max_memory: bytesize::ByteSize = args.max_memory.parse().map_err(|e| {
        anyhow::anyhow!("--max-memory {:?}: {e}; write e.g. 64MiB", args.max_memory)
    })?;
    let mut argv = vec![program];
    argv.extend(args.args.iter().cloned());
    let options = wms_runtime::CommandOptions {
        path: file.clone(),
        args: argv,
        env,
        dirs,
        timeout,
        max_memory: max_memory.as_u64(),
        engine: match args.engine {
            Engine::Cranelift => EngineKind::Cranelift,
            Engine::Pulley => EngineKind::Pulley,
        },
        precompiled: None,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let outcome = rt.block_on(wms_runtime::run_command(&options))?;
    let (code, message) = wms_server::launch::command_status(&outcome, &args.file);
    if let Some(message) = message {
        eprintln!("error: {message}");
    }
    Ok(ExitCode::from(code))
}

fn build(app: &wms_manifest::App) -> anyhow::Result<()> {
    let mut built = 0;
    for (id, component) in &app.components {
        if component.build.is_some() {
            build_component(id, component, BuildOutput::Inherit)?;
            built += 1;
        }
    }
    if built == 0 {
        eprintln!("wms: no component has a [component.NAME.build] command; nothing to build");
    }
    Ok(())
}

/// Where a build command's output goes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum BuildOutput {
    /// To wms's own standard output and error (`wms build`, `wms up --build`).
    Inherit,
    /// Into the log, as a reload's build (`wms up --watch`): at debug level, or with the error
    /// when the build fails.
    Log,
}

/// Runs `component`'s build commands (none: nothing to do) and checks that its `source` exists
/// afterwards.
fn build_component(
    id: &str,
    component: &wms_manifest::Component,
    output: BuildOutput,
) -> anyhow::Result<()> {
    let Some(spec) = &component.build else {
        return Ok(());
    };
    let again = match output {
        BuildOutput::Inherit => "run `wms build` again",
        BuildOutput::Log => "save a change to try again",
    };
    for command in &spec.command {
        let what = format!(
            "building component `{id}`: {command} (in {})",
            spec.workdir.display()
        );
        let mut cmd = shell(command);
        cmd.current_dir(&spec.workdir).envs(&spec.environment);
        let started = || format!("component `{id}`: cannot start build command `{command}`");
        let (status, text) = match output {
            BuildOutput::Inherit => {
                eprintln!("wms: {what}");
                (cmd.status().with_context(started)?, String::new())
            }
            BuildOutput::Log => {
                tracing::info!(target: "wms", "{what}");
                let out = cmd
                    .stdin(std::process::Stdio::null())
                    .output()
                    .with_context(started)?;
                let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
                text.push_str(&String::from_utf8_lossy(&out.stderr));
                (out.status, text.trim_end().to_string())
            }
        };
        if !status.success() {
            let output = if text.is_empty() {
                String::new()
            } else {
                format!("; its output:\n{}", tail(&text, 8 << 10))
            };
            bail!(
                "component `{id}`: build command `{command}` failed ({status}); fix the build and {again}{output}"
            );
        }
        if !text.is_empty() {
            tracing::debug!(target: "wms", component = %id, "build output:\n{text}");
        }
    }
    if !component.source.is_file() {
        bail!(
            "component `{id}`: the build finished but {} does not exist; make `source` point at what the build produces",
            component.source.display()
        );
    }
    Ok(())
}

/// The last `max` bytes of `text` (at a character boundary), marked as cut when they are not
/// all of it: a failed build's errors are at its end.
fn tail(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    format!("[...]{}", &text[start..])
}

fn shell(command: &str) -> std::process::Command {
    let mut cmd = std::process::Command::new("sh");
    cmd.arg("-c").arg(command);
    cmd
}

//! `wms`: run WebAssembly microservices from an app manifest.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand, ValueEnum};
use wms_runtime::{Allocation, EngineKind, Runtime, RuntimeOptions};
use wms_server::ServerOptions;

/// Address `wms up` listens on unless told otherwise.
pub const ENV_LISTEN: &str = "WMS_LISTEN";
/// Log filter (tracing `EnvFilter` syntax, e.g. `info,wms::guest=debug`).
pub const ENV_LOG: &str = "WMS_LOG";

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
    /// Run the build command of every component in an app's manifest.
    Build {
        /// App directory or manifest file (wms.toml or spin.toml).
        #[arg(default_value = ".")]
        app: PathBuf,
    },
}

#[derive(clap::Args)]
struct UpArgs {
    /// App directory or manifest file (wms.toml or spin.toml).
    #[arg(default_value = ".")]
    app: PathBuf,
    /// Address to listen on; port 0 picks a free port (the bound address is printed).
    #[arg(long, env = ENV_LISTEN, default_value = "127.0.0.1:3000")]
    listen: SocketAddr,
    /// Run the components' build commands first.
    #[arg(long)]
    build: bool,
    /// Code generator: native code with Cranelift, or the portable Pulley interpreter.
    #[arg(long, value_enum, default_value_t = Engine::Cranelift)]
    engine: Engine,
    /// Disable the pooling allocator and allocate every instance on demand.
    #[arg(long)]
    no_pooling: bool,
    /// Largest request body accepted, in bytes (larger requests get 413).
    #[arg(long, default_value_t = wms_server::DEFAULT_MAX_BODY)]
    max_body: u64,
    /// Seconds a client may take to send its request headers.
    #[arg(long, default_value_t = wms_server::DEFAULT_HEADER_READ_TIMEOUT.as_secs())]
    header_timeout: u64,
    /// Seconds in-flight requests may take to finish after SIGINT or SIGTERM.
    #[arg(long, default_value_t = wms_server::DEFAULT_SHUTDOWN_GRACE.as_secs())]
    shutdown_grace: u64,
}

#[derive(Clone, Copy, ValueEnum)]
enum Engine {
    Cranelift,
    Pulley,
}

fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_env(ENV_LOG)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
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
        Command::Build { app } => {
            let app = wms_manifest::load(&app)?;
            build(&app)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn up(args: UpArgs) -> anyhow::Result<ExitCode> {
    if args.header_timeout == 0 {
        bail!("--header-timeout must be at least 1 second");
    }
    let app = wms_manifest::load(&args.app)?;
    if args.build {
        build(&app)?;
    }
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
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let started = std::time::Instant::now();
        let runtime = Runtime::new(&app, &options).with_context(|| {
            format!(
                "cannot start app `{}` from {}",
                app.name,
                app.manifest_path.display()
            )
        })?;
        tracing::info!("{}", runtime.report());
        tracing::info!(
            "loaded {} component(s) in {:?}",
            app.components.len(),
            started.elapsed()
        );
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| {
                format!(
                    "cannot listen on {}; pick another address with --listen",
                    args.listen
                )
            })?;
        let addr = listener.local_addr()?;
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
            max_body: args.max_body,
            header_read_timeout: Duration::from_secs(args.header_timeout),
            shutdown_grace: Duration::from_secs(args.shutdown_grace),
        };
        let clean = wms_server::serve(
            Arc::new(app),
            Arc::new(runtime),
            listener,
            server_options,
            shutdown_signal(),
        )
        .await;
        Ok(if clean {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        })
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
        _ = term.recv() => tracing::info!("SIGTERM received"),
    }
}

fn build(app: &wms_manifest::App) -> anyhow::Result<()> {
    let mut built = 0;
    for (id, component) in &app.components {
        let Some(spec) = &component.build else {
            continue;
        };
        for command in &spec.command {
            eprintln!(
                "wms: building component `{id}`: {command} (in {})",
                spec.workdir.display()
            );
            let status = shell(command)
                .current_dir(&spec.workdir)
                .envs(&spec.environment)
                .status()
                .with_context(|| {
                    format!("component `{id}`: cannot start build command `{command}`")
                })?;
            if !status.success() {
                bail!(
                    "component `{id}`: build command `{command}` failed ({status}); fix the build and run `wms build` again"
                );
            }
        }
        if !component.source.is_file() {
            bail!(
                "component `{id}`: the build finished but {} does not exist; make `source` point at what the build produces",
                component.source.display()
            );
        }
        built += 1;
    }
    if built == 0 {
        eprintln!("wms: no component has a [component.NAME.build] command; nothing to build");
    }
    Ok(())
}

fn shell(command: &str) -> std::process::Command {
    let mut cmd = std::process::Command::new("sh");
    cmd.arg("-c").arg(command);
    cmd
}

//! `wms push`, `pull`, `inspect`, `login`, `logout`, and image references for `up` and `run`.

use std::io::{IsTerminal as _, Read as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use clap::ValueEnum;
use wms_oci::trust::{host_target, trusted};
use wms_oci::{Options, Reference, Registry, Store};

/// Seconds allowed to connect to a registry and for each read (default 30).
pub const ENV_REGISTRY_TIMEOUT: &str = "WMS_REGISTRY_TIMEOUT";

/// How to reach a registry (shared by every command that does).
#[derive(clap::Args, Clone)]
pub struct NetArgs {
    /// Talk plain HTTP to this registry (loopback registries always use it).
    #[arg(long)]
    pub insecure: bool,
    /// Seconds allowed to connect to the registry and for each read.
    #[arg(long, env = ENV_REGISTRY_TIMEOUT, default_value_t = wms_oci::registry::DEFAULT_TIMEOUT.as_secs())]
    pub registry_timeout: u64,
}

impl NetArgs {
    fn options(&self) -> Options {
        Options {
            insecure: self.insecure,
            timeout: Duration::from_secs(self.registry_timeout.max(1)),
            progress: std::io::stderr().is_terminal(),
        }
    }
}

#[derive(clap::Args)]
pub struct PushArgs {
    /// `[APP] REF`: the app (directory, manifest, or a single .wasm; default `.`) and the image
    /// reference to publish it as, e.g. localhost:5000/shop:1.0.
    #[arg(num_args = 1..=2, required = true, value_names = ["APP", "REF"])]
    pub args: Vec<String>,
    /// Also push code precompiled for this target (`aarch64`, `riscv64gc`, `x86_64`,
    /// `pulley64`, `pulley32`; repeatable), used by `wms up` only when it trusts the publisher.
    #[arg(long = "precompile", value_name = "TARGET")]
    pub precompile: Vec<String>,
    /// Push the image wrapped in one tar layer, for containerd and the `containerd-shim-wms-v1`
    /// shim: containerd 1.6 cannot unpack wasm layers (see docs/shim.md).
    #[arg(long)]
    pub containerd: bool,
    #[command(flatten)]
    pub net: NetArgs,
}

#[derive(clap::Args)]
pub struct PullArgs {
    /// Image reference, e.g. localhost:5000/shop:1.0 (or @sha256:...).
    pub reference: String,
    #[command(flatten)]
    pub net: NetArgs,
}

#[derive(clap::Args)]
pub struct InspectArgs {
    /// Image reference; read from the local store when pulled before, else from the registry.
    pub reference: String,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Ask the registry even when the image is in the local store.
    #[arg(long)]
    pub remote: bool,
    #[command(flatten)]
    pub net: NetArgs,
}

#[derive(clap::Args)]
pub struct LoginArgs {
    /// Registry host[:port].
    pub registry: String,
    #[arg(long, short)]
    pub username: String,
    /// Read the password from standard input (the safe way; else it is asked for on a terminal).
    #[arg(long)]
    pub password_stdin: bool,
    #[command(flatten)]
    pub net: NetArgs,
}

/// When `wms up REF` contacts the registry.
#[derive(Clone, Copy, ValueEnum, Default, PartialEq, Eq)]
pub enum PullPolicy {
    /// Only when the image is not in the local store.
    #[default]
    Missing,
    /// Every time (a tag may have moved).
    Always,
    /// Never; fail when the image is not in the store.
    Never,
}

/// Options of `wms up` and `wms run` for images.
#[derive(clap::Args, Clone)]
pub struct ImageArgs {
    /// When to contact the registry for an image reference.
    #[arg(long, value_enum, default_value_t = PullPolicy::Missing)]
    pub pull: PullPolicy,
    /// Trust precompiled code in the image (it is native code: only for publishers you trust;
    /// or list them in WMS_TRUSTED_PUBLISHERS).
    #[arg(long)]
    pub trust_precompiled: bool,
    #[command(flatten)]
    pub net: NetArgs,
}

/// An app argument: a local path, or an image in a registry.
pub enum AppSource {
    Local(PathBuf),
    Image(Reference),
}

/// `oci://...` is always an image; an existing path is local; `host.name/...`, `host:port/...`
/// and `localhost/...` are images.
pub fn app_source(arg: &str) -> anyhow::Result<AppSource> {
    if let Some(r) = arg.strip_prefix("oci://") {
        return Ok(AppSource::Image(wms_oci::parse_reference(r)?));
    }
    if Path::new(arg).exists() {
        return Ok(AppSource::Local(arg.into()));
    }
    if let Some((first, _)) = arg.split_once('/')
        && (first.contains('.') || first.contains(':') || first == "localhost")
        && !arg.starts_with('.')
        && !arg.ends_with(".toml")
        && !arg.ends_with(".wasm")
    {
        return Ok(AppSource::Image(wms_oci::parse_reference(arg)?));
    }
    Ok(AppSource::Local(arg.into()))
}

/// The content store in the cache directory; both must be private to this user (precompiled code
/// from the store is run natively).
fn store() -> anyhow::Result<Store> {
    let cache =
        wms_runtime::cache_dir().context("no cache directory: set WMS_CACHE_DIR (or HOME)")?;
    wms_oci::store::private_dir(&cache)?;
    Store::open(cache.join("oci"))
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn size(n: u64) -> String {
    bytesize::ByteSize(n).display().iec().to_string()
}

pub fn push(args: PushArgs) -> anyhow::Result<ExitCode> {
    let (app, reference) = match args.args.as_slice() {
        [r] => (PathBuf::from("."), r.as_str()),
        [a, r] => (PathBuf::from(a), r.as_str()),
        _ => unreachable!("clap takes one or two values"),
    };
    let reference = wms_oci::parse_reference(reference)?;
    let started = std::time::Instant::now();
    let image = if app.extension().is_some_and(|e| e == "wasm") {
        wms_oci::image::check_artifact_options(!args.precompile.is_empty())?;
        let wasm = std::fs::read(&app).with_context(|| {
            format!(
                "cannot read {}; build it first or fix the path",
                app.display()
            )
        })?;
        wms_oci::image::component_artifact(wasm, &app)?
    } else {
        let loaded = wms_manifest::load(&app)?;
        let mut precompiled = Vec::new();
        let scratch = tempfile::tempdir()?;
        for target in &args.precompile {
            let out = scratch.path().join(target);
            let compile_target = wms_runtime::CompileTarget {
                target: Some(target.clone()),
                cpu_features: Vec::new(),
                address_space: None,
            };
            wms_runtime::compile_app(&loaded, &compile_target, &out)
                .with_context(|| format!("cannot precompile for --precompile {target}"))?;
            for id in loaded.components.keys() {
                let code = out.join(format!("{id}.cwasm"));
                if !code.exists() {
                    continue;
                }
                precompiled.push(wms_oci::Precompiled {
                    target: target.clone(),
                    component: id.clone(),
                    code: std::fs::read(&code)?,
                    wasm_sha256: std::fs::read_to_string(code.with_extension("wasm-sha256"))?
                        .trim()
                        .to_string(),
                });
            }
        }
        wms_oci::image::app_image(&loaded, &precompiled)?
    };
    let image = if args.containerd {
        wms_oci::containerd::containerd_image(&image)?
    } else {
        image
    };
    let options = args.net.options();
    let report = runtime()?.block_on(async {
        let registry = Registry::connect(&reference, &options).await?;
        registry.push(&image).await
    })?;
    println!(
        "{}@{}",
        reference.whole().split('@').next().unwrap_or_default(),
        report.digest
    );
    eprintln!(
        "wms: pushed {} ({} blob(s) uploaded, {}; {} already in the registry) in {:.2?}",
        reference,
        report.uploaded,
        size(report.bytes),
        report.skipped,
        started.elapsed()
    );
    Ok(ExitCode::SUCCESS)
}

pub fn pull(args: PullArgs) -> anyhow::Result<ExitCode> {
    let reference = wms_oci::parse_reference(&args.reference)?;
    let store = store()?;
    let options = args.net.options();
    let started = std::time::Instant::now();
    let pulled = runtime()?.block_on(async {
        let registry = Registry::connect(&reference, &options).await?;
        registry.pull(&store, Some(host_target(false))).await
    })?;
    println!("{}", pulled.digest);
    eprintln!(
        "wms: pulled {reference} ({:?}, {} downloaded) in {:.2?}",
        pulled.kind,
        size(pulled.downloaded),
        started.elapsed()
    );
    Ok(ExitCode::SUCCESS)
}

pub fn inspect(args: InspectArgs) -> anyhow::Result<ExitCode> {
    let reference = wms_oci::parse_reference(&args.reference)?;
    let local = if args.remote {
        None
    } else {
        wms_oci::describe_stored(&store()?, &reference)?
    };
    let inspection = match local {
        Some(i) => i,
        None => {
            let options = args.net.options();
            let d = runtime()?.block_on(async {
                let registry = Registry::connect(&reference, &options).await?;
                registry.describe().await
            })?;
            wms_oci::describe(
                &reference,
                &d.digest,
                &d.manifest,
                &d.config,
                d.app_manifest.as_deref(),
            )
        }
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&inspection)?);
    } else {
        print!("{inspection}");
    }
    Ok(ExitCode::SUCCESS)
}

pub fn login(args: LoginArgs) -> anyhow::Result<ExitCode> {
    let password = if args.password_stdin {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("cannot read the password from standard input")?;
        s.trim_end_matches(['\n', '\r']).to_string()
    } else if std::io::stdin().is_terminal() {
        // Echo off while it is typed, as docker and ssh do.
        wms_oci::auth::read_password(&format!(
            "Password for {} at {}: ",
            args.username, args.registry
        ))?
    } else {
        bail!("no password: pass --password-stdin and pipe it in");
    };
    if password.is_empty() {
        bail!("the password is empty; pipe it in with --password-stdin");
    }
    let options = args.net.options();
    let path = runtime()?.block_on(wms_oci::login(
        &args.registry,
        &args.username,
        &password,
        &options,
    ))?;
    eprintln!(
        "wms: logged in to {} as {}; credentials stored in {}",
        args.registry,
        args.username,
        path.display()
    );
    Ok(ExitCode::SUCCESS)
}

pub fn logout(registry: &str) -> anyhow::Result<ExitCode> {
    if wms_oci::auth::remove(registry)? {
        eprintln!("wms: removed the credentials for {registry}");
    } else {
        eprintln!("wms: no stored credentials for {registry}");
    }
    Ok(ExitCode::SUCCESS)
}

/// Makes an image runnable: pulls it as the policy says, then materialises it.
pub fn resolve(
    reference: &Reference,
    args: &ImageArgs,
    pulley: bool,
) -> anyhow::Result<wms_oci::Materialized> {
    let store = store()?;
    let target = trusted(reference, args.trust_precompiled).then(|| host_target(pulley));
    let stored = store.get_ref(reference);
    let digest = match (args.pull, stored) {
        (PullPolicy::Never, None) => bail!(
            "{reference} is not in the local store and --pull never forbids fetching it\n  help: run `wms pull {reference}` first"
        ),
        (PullPolicy::Never | PullPolicy::Missing, Some(d)) => d,
        (PullPolicy::Missing | PullPolicy::Always, _) => {
            let options = args.net.options();
            let pulled = runtime()?.block_on(async {
                let registry = Registry::connect(reference, &options).await?;
                // This host's precompiled code comes along even when not trusted yet, so
                // trusting it later needs no second pull; it is used only when trusted.
                registry.pull(&store, Some(host_target(pulley))).await
            })?;
            eprintln!("wms: pulled {reference} ({})", pulled.digest);
            pulled.digest
        }
    };
    let m = wms_oci::materialize(&store, reference, &digest, target).map_err(|e| {
        let e = format!("{e:#}");
        if e.contains("help:") {
            anyhow!("cannot prepare {reference}: {e}")
        } else {
            anyhow!(
                "cannot prepare {reference}: {e}\n  help: the image is not one wms can run as is; `wms inspect {reference}` shows what it holds; ask its publisher to push it again"
            )
        }
    })?;
    if target.is_some() && m.precompiled.is_none() {
        tracing::info!(
            "{reference} has no precompiled code for {}; compiling from the wasm",
            host_target(pulley)
        );
    }
    Ok(m)
}

//! `containerd-shim-wms-v1`: containerd's runtime `io.containerd.wms.v1`, serving wms apps.
//!
//! runwasi's `containerd-shim-wasm` does the containerd side: the shim API, the container
//! (namespaces, cgroups, root filesystem, stdio) and its process; a container whose entry point is
//! a native executable (a pod's pause container) runs as an ordinary Linux container. Inside a
//! wasm container's process, this shim reads the wms image bundle from the container's root
//! filesystem (`wms push --containerd`; see `wms_oci::containerd`), or a classic `wasi/wasm`
//! image's `.wasm` entry point, prepares it as `wms up` prepares a pulled image, and serves it
//! through the same pipeline as `wms up` (`wms_server::launch`), on `WMS_LISTEN` from the
//! container's environment (default `0.0.0.0:8080`) until SIGTERM or SIGINT. A wasm artifact that
//! does not export `wasi:http/incoming-handler` is a command: it runs to completion as `wms run`
//! runs it, with the container's arguments, environment and directory mounts, and its exit status
//! is the container's. An app's compiled code is kept in containerd's content store after its
//! first start ([`WmsCompiler`]). docs/shim.md says how to install it and what is not done yet.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use containerd_shim_wasm::sandbox::Sandbox;
use containerd_shim_wasm::sandbox::context::{RuntimeContext, Source, WasmLayer};
use containerd_shim_wasm::shim::{Cli as _, Compiler, Config, Shim, Version};

/// The listen address variable read from the container's environment (as `wms up` reads it).
const ENV_LISTEN: &str = "WMS_LISTEN";
/// Where a container's app listens unless `WMS_LISTEN` says otherwise: all addresses, since the
/// container's network namespace is its own (or the host's with host networking).
const DEFAULT_LISTEN: &str = "0.0.0.0:8080";
/// The reference a bundle is prepared under: its last segment names a wasm artifact's component
/// (and a command's `argv[0]`).
const REFERENCE: &str = "containerd.local/wms/app:latest";
/// A command's memory limit when the container's is not known: `wms run`'s default.
const COMMAND_MAX_MEMORY: u64 = 128 << 20;
/// How long the compile hook waits for containerd to say which images hold a layer before it
/// compiles instead of using a publisher's code.
const TRUST_LOOKUP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// The least a container's memory limit leaves for wms itself (code, stacks, buffers, what the
/// pool keeps) rather than for guests.
const MIN_HEADROOM: u64 = 32 << 20;
/// Where the shim keeps the prepared image: inside the container's root filesystem (removed with
/// the container's snapshot), or, when that is read-only (`ctr run --read-only`, a pod's
/// `readOnlyRootFilesystem`), in the container's own memory-backed `/dev/shm` or `/run`.
const STATE_DIRS: [&str; 3] = ["/.wms-shim", "/dev/shm/.wms-shim", "/run/.wms-shim"];

struct WmsShim;

/// The sandbox of one container, made in the container's process before it runs any thread.
struct WmsSandbox {
    /// Why the container's capabilities could not be dropped (the container then fails).
    capabilities: Result<(), String>,
}

impl Default for WmsSandbox {
    /// Capabilities are per thread and every later thread inherits them, so they are dropped
    /// here: containerd-shim-wasm makes the sandbox in the container's new process before it
    /// starts the async runtime that runs [`Sandbox::can_handle`] and [`Sandbox::run_wasi`].
    fn default() -> Self {
        // This process inherits containerd's environment, whose cache paths (`WMS_CACHE_DIR`,
        // `XDG_CACHE_HOME`, `HOME`) name directories of the image's root filesystem in here: an
        // image could plant compiled code there for wms to map executable. So the container's
        // wms keeps no code cache of its own (containerd's store keeps an app's code).
        for var in [wms_runtime::ENV_CACHE_DIR, "XDG_CACHE_HOME", "HOME"] {
            // SAFETY: no other thread runs yet in this new process (see above), so nothing
            // reads the environment concurrently.
            unsafe { std::env::remove_var(var) };
        }
        Self {
            capabilities: drop_unasked_capabilities().map_err(|e| format!("{e:#}")),
        }
    }
}

impl Shim for WmsShim {
    type Sandbox = WmsSandbox;

    fn name() -> &'static str {
        "wms"
    }

    fn version() -> Version {
        Version {
            version: env!("CARGO_PKG_VERSION"),
            revision: "<none>",
        }
    }

    /// The bundle's tar layer (of an image whose config says architecture `wasm`), read from
    /// containerd's content store only to compile it: its code is cached there (see
    /// [`WmsCompiler`]). The app itself is read from the container's root filesystem, where
    /// containerd unpacked the same layer.
    /// wms's bundle layer is an OCI tar; a classic `wasi/wasm` image's layers are tars too,
    /// often compressed: containerd-shim-wasm hands these to the compiler hook only for images
    /// whose architecture is `wasm` (a native image's layers never reach it).
    fn supported_layers_types() -> &'static [&'static str] {
        &[
            wms_oci::media::FILES_TAR,
            wms_oci::containerd::CLASSIC_LAYERS[0],
            wms_oci::containerd::CLASSIC_LAYERS[1],
        ]
    }

    async fn compiler() -> Option<impl Compiler> {
        Some(WmsCompiler)
    }
}

/// Compiles an HTTP app's components, or a command, when its image first starts on this node;
/// containerd-shim-wasm keeps the result in containerd's content store (labelled
/// `runwasi.io/precompiled/wms/KEY`, kept as long as the image) and hands it to later starts
/// instead of compiling again.
struct WmsCompiler;

impl Compiler for WmsCompiler {
    fn cache_key(&self) -> impl std::hash::Hash {
        // Wasmtime checks the code itself on load (version, target, CPU features, memory
        // layout) and the runtime checks the wasm it was made from; the key moves the cache on
        // with every wms version and architecture.
        // The trusted publishers too: code taken from a publisher (instead of compiled) is not
        // kept once the node stops trusting it.
        (
            "wms",
            env!("CARGO_PKG_VERSION"),
            std::env::consts::ARCH,
            "wasmtime-48",
            std::env::var(wms_oci::trust::ENV_TRUSTED_PUBLISHERS).unwrap_or_default(),
        )
    }

    async fn compile(&self, layers: &[WasmLayer]) -> anyhow::Result<Vec<Option<Vec<u8>>>> {
        let mut trusted = Vec::with_capacity(layers.len());
        for l in layers {
            let publisher = if is_bundle(l) {
                let digest = l.config.digest().to_string();
                let lookup =
                    tokio::time::timeout(TRUST_LOOKUP_TIMEOUT, trusted_image_with(&digest))
                        .await
                        .unwrap_or_else(|_| {
                            Err(anyhow::anyhow!(
                                "containerd did not answer within {TRUST_LOOKUP_TIMEOUT:?}"
                            ))
                        });
                lookup.unwrap_or_else(|e| {
                    tracing::warn!(
                        "cannot tell which images hold layer {digest}, so its precompiled code is not used (the app is compiled instead): {e:#}"
                    );
                    None
                })
            } else {
                None
            };
            trusted.push(publisher);
        }
        let layers = layers.to_vec();
        tokio::task::spawn_blocking(move || {
            layers
                .iter()
                .zip(trusted)
                .map(|(l, trusted)| {
                    if !is_bundle(l) {
                        return compile_classic(&l.layer, l.config.media_type().as_ref());
                    }
                    compile_bundle(&l.layer, trusted.as_deref())
                })
                .collect()
        })
        .await?
    }
}

/// The name of an image in containerd's store that holds layer `digest` and is named under a
/// publisher this node trusts (`WMS_TRUSTED_PUBLISHERS` in containerd's environment, which the
/// shim inherits; a container's own environment never counts). An image's name in containerd
/// is the reference it was pulled from, so the layer's precompiled code then comes from that
/// publisher, byte for byte. Which layers an image holds is read from the labels containerd
/// puts on its manifests (`containerd.io/gc.ref.content.l.N`, through an index's
/// `...content.m.N`).
async fn trusted_image_with(digest: &str) -> anyhow::Result<Option<String>> {
    use containerd_client::services::v1::content_client::ContentClient;
    use containerd_client::services::v1::images_client::ImagesClient;
    use containerd_client::services::v1::{InfoRequest, ListImagesRequest};
    use containerd_client::{tonic::Request, with_namespace};

    let publishers = std::env::var(wms_oci::trust::ENV_TRUSTED_PUBLISHERS).unwrap_or_default();
    if publishers.trim().is_empty() {
        return Ok(None);
    }
    let args: Vec<String> = std::env::args_os()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let flags = containerd_shim::parse(&args).context("cannot read the shim's flags")?;
    if flags.address.is_empty() || flags.namespace.is_empty() {
        anyhow::bail!("containerd did not pass its address and namespace to the shim");
    }
    let channel = containerd_client::connect(&flags.address)
        .await
        .with_context(|| format!("cannot reach containerd at {}", flags.address))?;
    let ns = flags.namespace.as_str();
    let images = ImagesClient::new(channel.clone())
        .list(with_namespace!(ListImagesRequest { filters: vec![] }, ns))
        .await?
        .into_inner()
        .images;
    let labels = |digest: String| {
        let channel = channel.clone();
        async move {
            let info = ContentClient::new(channel)
                .info(with_namespace!(InfoRequest { digest }, ns))
                .await?
                .into_inner()
                .info
                .context("containerd returned no content info")?;
            anyhow::Ok(info.labels)
        }
    };
    let refs = |labels: &HashMap<String, String>, kind: &str| -> Vec<String> {
        let prefix = format!("containerd.io/gc.ref.content.{kind}.");
        labels
            .iter()
            .filter(|(k, _)| k.starts_with(&prefix))
            .map(|(_, v)| v.clone())
            .collect()
    };
    for image in images {
        // Only names that say their registry: the CRI also records images under their IDs
        // (`sha256:...`), which would read as Docker Hub names.
        let named = image
            .name
            .split_once('/')
            .is_some_and(|(host, _)| host.contains(['.', ':']) || host == "localhost");
        if !named {
            continue;
        }
        let Ok(reference) = wms_oci::parse_reference(&image.name) else {
            continue;
        };
        let Some(target) = image.target else { continue };
        if !wms_oci::trust::trusted(&reference, false) {
            continue;
        }
        // An image whose content is partly missing (an index's other platforms) is skipped,
        // not the search.
        let holds = async {
            let top = labels(target.digest).await?;
            let mut layers = refs(&top, "l");
            for manifest in refs(&top, "m") {
                if let Ok(labels) = labels(manifest).await {
                    layers.extend(refs(&labels, "l"));
                }
            }
            anyhow::Ok(layers.iter().any(|l| l == digest))
        };
        match holds.await {
            Ok(true) => return Ok(Some(image.name)),
            Ok(false) => {}
            Err(e) => tracing::warn!("cannot read image {} in containerd: {e:#}", image.name),
        }
    }
    Ok(None)
}

fn is_bundle(layer: &WasmLayer) -> bool {
    layer
        .config
        .annotations()
        .as_ref()
        .is_some_and(|a| a.contains_key(wms_oci::containerd::ANN_BUNDLE))
}

/// This host's code for an HTTP app's components, as a tar of `wms compile`'s output, or for a
/// command, as a tar of `wms_runtime::compile_command`'s. When `trusted`
/// names an image of a trusted publisher holding this layer and the bundle carries code for
/// this host for every component (`wms push --containerd --precompile`), that code is taken
/// as it is, without compiling; the runtime still checks it against each component's wasm and
/// this engine when it loads it, and compiles what it refuses.
fn compile_bundle(layer: &[u8], trusted: Option<&str>) -> anyhow::Result<Option<Vec<u8>>> {
    let scratch = tempfile::tempdir()?;
    let store = wms_oci::Store::open(scratch.path().join("oci"))?;
    let reference = wms_oci::parse_reference(REFERENCE)?;
    let target = trusted.map(|_| wms_oci::trust::host_target(false));
    let m = wms_oci::containerd::materialize_bundle_layer(
        &store,
        &reference,
        layer,
        &scratch.path().join("bundle"),
        target,
    )?;
    if let Some(wasm) = &m.wasm
        && !serves_http(wasm)?
    {
        tracing::info!("compiling the command for this node");
        let out = scratch.path().join("code");
        wms_runtime::compile_command(&std::fs::read(wasm)?, &out)?;
        return Ok(Some(wms_oci::containerd::pack_files(&out)?));
    }
    if let (Some(image), Some(dir)) = (trusted, &m.precompiled) {
        let covered = m
            .app
            .components
            .keys()
            .all(|id| dir.join(format!("{id}.cwasm")).is_file());
        if covered {
            tracing::info!(
                "using the precompiled code of {image} (a trusted publisher) for {}: nothing compiled",
                wms_oci::trust::host_target(false)
            );
            return Ok(Some(wms_oci::containerd::pack_files(dir)?));
        }
        tracing::info!(
            "{image} is from a trusted publisher but lacks code for {} for some component: compiling",
            wms_oci::trust::host_target(false)
        );
    }
    tracing::info!("compiling the app for this node");
    let out = scratch.path().join("code");
    let target = wms_runtime::CompileTarget {
        target: None,
        cpu_features: Vec::new(),
        address_space: None,
    };
    wms_runtime::compile_app(&m.app, &target, &out)?;
    Ok(Some(wms_oci::containerd::pack_files(&out)?))
}

/// This host's code for the wasm files of a classic `wasi/wasm` image's layer, each compiled
/// as the run compiles it when it is the entry point (the hook does not get the image's
/// config, so it cannot tell which one is; at most [`wms_oci::containerd::MAX_CLASSIC_WASM`]):
/// a tar of files named `SHA256.NAME`, the sha256 of the wasm they were made from and the name
/// the runtime looks for. `None` when the layer holds no wasm file; a file that does not
/// compile is left out (its start compiles and reports it).
fn compile_classic(layer: &[u8], media_type: &str) -> anyhow::Result<Option<Vec<u8>>> {
    let files = wms_oci::containerd::classic_wasm_files(layer, media_type)?;
    if files.is_empty() {
        return Ok(None);
    }
    let scratch = tempfile::tempdir()?;
    let all = scratch.path().join("all");
    std::fs::create_dir(&all)?;
    for (i, (path, wasm)) in files.into_iter().enumerate() {
        let label = Path::new("/").join(&path);
        let sha = wms_oci::store::sha256_digest(&wasm)[7..].to_string();
        let code = scratch.path().join(format!("code{i}"));
        let compiled = (|| {
            let store = wms_oci::Store::open(scratch.path().join(format!("oci{i}")))?;
            let reference = wms_oci::parse_reference(REFERENCE)?;
            let m =
                wms_oci::containerd::materialize_wasm(&store, &reference, wasm.clone(), &label)?;
            match &m.wasm {
                Some(w) if !serves_http(w)? => wms_runtime::compile_command(&wasm, &code).map(drop),
                _ => wms_runtime::compile_app(
                    &m.app,
                    &wms_runtime::CompileTarget {
                        target: None,
                        cpu_features: Vec::new(),
                        address_space: None,
                    },
                    &code,
                )
                .map(drop),
            }
        })();
        if let Err(e) = compiled {
            tracing::warn!(
                "{} in the image is not compiled ahead: {e:#}",
                label.display()
            );
            continue;
        }
        tracing::info!("compiled {} for this node", label.display());
        for file in std::fs::read_dir(&code)? {
            let file = file?;
            let name = file.file_name();
            std::fs::rename(
                file.path(),
                all.join(format!("{sha}.{}", name.to_string_lossy())),
            )?;
        }
    }
    Ok(Some(wms_oci::containerd::pack_files(&all)?))
}

/// Takes out of the cached layers `cached` (unpacked under `scratch`) the code made from the
/// wasm whose sha256 is `sha`, into `dir` under the names the runtime looks for; whether there
/// was any.
fn classic_code(
    cached: &[&WasmLayer],
    sha: &str,
    scratch: &Path,
    dir: &Path,
) -> anyhow::Result<bool> {
    let prefix = format!("{sha}.");
    let mut found = false;
    for (i, layer) in cached.iter().enumerate() {
        let unpacked = scratch.join(format!("cached{i}"));
        wms_oci::containerd::unpack_files(&layer.layer, &unpacked)?;
        for file in std::fs::read_dir(&unpacked)? {
            let file = file?;
            let name = file.file_name().to_string_lossy().into_owned();
            if let Some(rest) = name.strip_prefix(&prefix) {
                std::fs::create_dir_all(dir)?;
                std::fs::rename(file.path(), dir.join(rest))?;
                found = true;
            }
        }
    }
    Ok(found)
}

/// Whether a wasm artifact is an HTTP component (else it is a command).
fn serves_http(wasm: &Path) -> anyhow::Result<bool> {
    let bytes = std::fs::read(wasm)?;
    let info = wms_oci::meta::inspect(&bytes, "the image's wasm")?;
    Ok(info.component.as_ref().is_some_and(|c| {
        c.exports
            .iter()
            .any(|e| e.starts_with("wasi:http/incoming-handler"))
    }))
}

impl Sandbox for WmsSandbox {
    async fn run_wasi(&self, ctx: &impl RuntimeContext) -> anyhow::Result<i32> {
        let env = container_env(ctx.envs());
        init_logging(&env);
        if let Err(e) = &self.capabilities {
            eprintln!("error: cannot drop the container's capabilities: {e}");
            return Ok(1);
        }
        let cached: Vec<&WasmLayer> = match ctx.entrypoint().source {
            Source::Oci(layers) => layers.iter().filter(|l| l.precompiled).collect(),
            Source::File(_) => Vec::new(),
        };
        match run(ctx.args(), ctx.envs(), &env, &cached).await {
            Ok(code) => Ok(code),
            Err(e) => {
                // The container's stderr: `ctr run` and the kubelet's logs show it.
                eprintln!("error: {e:#}");
                Ok(1)
            }
        }
    }

    /// Every container given to this runtime is a wms app; what is not is refused when it starts,
    /// with the reason on its stderr.
    async fn can_handle(&self, _ctx: &impl RuntimeContext) -> anyhow::Result<()> {
        Ok(())
    }
}

/// Drops every capability when the container's process holds `CAP_SYS_ADMIN`. No container
/// spec asks for that for a wasm app, but a spec that drops every capability (Kubernetes
/// `capabilities: drop: [ALL]`) has no capability sets at all, and libcontainer 0.6 then leaves
/// the process with all of the shim's. A container that lists its capabilities keeps exactly
/// those. So a privileged container runs with none either: guests cannot use capabilities, and
/// wms needs none to serve them.
fn drop_unasked_capabilities() -> anyhow::Result<()> {
    use caps::{CapSet, Capability};
    let bounding = caps::read(None, CapSet::Bounding)?;
    if !bounding.contains(&Capability::CAP_SYS_ADMIN) {
        return Ok(());
    }
    // The bounding set first: dropping from it needs CAP_SETPCAP, which goes with the rest.
    caps::clear(None, CapSet::Bounding)?;
    for set in [
        CapSet::Ambient,
        CapSet::Inheritable,
        CapSet::Effective,
        CapSet::Permitted,
    ] {
        caps::clear(None, set)?;
    }
    Ok(())
}

/// The container's `NAME=VALUE` environment as a map (later entries win, as in a shell).
fn container_env(envs: &[String]) -> HashMap<String, String> {
    envs.iter()
        .filter_map(|e| e.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn init_logging(env: &HashMap<String, String>) {
    use wms_server::launch::{ENV_LOG, ENV_LOG_FORMAT};
    wms_server::launch::init_logging(
        env.get(ENV_LOG).map(String::as_str),
        env.get(ENV_LOG_FORMAT).map(String::as_str),
        false,
    );
}

/// Prepares the bundled image, then serves it until SIGTERM or SIGINT, or runs it to completion
/// when it is a command; the container's exit code.
async fn run(
    args: &[String],
    envs: &[String],
    env: &HashMap<String, String>,
    cached: &[&WasmLayer],
) -> anyhow::Result<i32> {
    let fresh = state_dir()?;
    let state = fresh.path();
    let store = wms_oci::Store::open(state.join("oci"))?;
    // Names the single component of a wasm artifact; an app image names its own.
    let reference = wms_oci::parse_reference(REFERENCE)?;
    let bundle = Path::new("/").join(wms_oci::containerd::BUNDLE_DIR);
    // A classic image's entry point's sha256, to find its code among the cached.
    let mut classic_sha = None;
    let (m, command_args) = if bundle.exists() {
        // Precompiled code is not used yet: which publishers the node trusts is not configured.
        let m = wms_oci::containerd::materialize_bundle(&store, &reference, Path::new("/"), None)
            .context("cannot prepare the container's wms image")?;
        // The bundle's entry point is not the command's.
        let entrypoint = bundle.join("manifest.json");
        let rest = match args.first() {
            Some(first) if Path::new(first) == entrypoint => &args[1..],
            _ => args,
        };
        (m, rest)
    } else {
        // A classic image: its entry point is a .wasm file in its root filesystem.
        let entry = args.first().with_context(|| {
            format!(
                "the container has no wms image (no {}) and no entry point\n  help: push the app with `wms push --containerd`, or name a .wasm file as the image's entry point",
                bundle.display()
            )
        })?;
        let path = Path::new("/").join(entry);
        let wasm = read_wasm(&path)?;
        classic_sha = Some(wms_oci::store::sha256_digest(&wasm)[7..].to_string());
        let m = wms_oci::containerd::materialize_wasm(&store, &reference, wasm, &path)
            .with_context(|| format!("cannot prepare {}", path.display()))?;
        (m, &args[1..])
    };
    // Compiled by this shim at the image's first start and kept by containerd; the runtime
    // uses code only when it was made from exactly that wasm and Wasmtime accepts it for this
    // engine, and compiles otherwise.
    let dir = state.join("precompiled");
    let taken = match &classic_sha {
        None => cached
            .iter()
            .find(|l| is_bundle(l))
            .map(|layer| wms_oci::containerd::unpack_files(&layer.layer, &dir).map(|()| true))
            .unwrap_or(Ok(false)),
        Some(sha) => classic_code(cached, sha, state, &dir),
    };
    let precompiled = match taken {
        Ok(true) => Some(dir),
        Ok(false) => None,
        Err(e) => {
            tracing::warn!("the code cached in containerd is not used: {e:#}");
            None
        }
    };
    let guest_cap = container_guest_cap();
    if let Some(wasm) = &m.wasm
        && !serves_http(wasm)?
    {
        return run_command(wasm, &m.app, command_args, envs, guest_cap, precompiled).await;
    }
    let mut app = m.app;
    if let Some((cap, _)) = guest_cap {
        fit_guests(&mut app, cap);
    }
    let listen = env.get(ENV_LISTEN).map_or(DEFAULT_LISTEN, String::as_str);
    let listen: SocketAddr = listen.parse().with_context(|| {
        format!("{ENV_LISTEN}={listen:?} is not an address; write e.g. {DEFAULT_LISTEN}")
    })?;
    let mut launch = wms_server::launch::Launch::new(listen);
    // The app's variables come from the container's environment (SPIN_VARIABLE_NAME,
    // WMS_VARIABLE_NAME), not the shim's.
    launch.variables =
        wms_manifest::Providers::new(None, env.iter().map(|(k, v)| (k.into(), v.into())), None)?;
    launch.admin = admin_listen(env)?;
    launch.runtime.precompiled = precompiled;
    let clean =
        wms_server::launch::serve_app(app, launch, wms_server::launch::shutdown_signal()).await?;
    Ok(if clean { 0 } else { 1 })
}

/// The admin listener `WMS_ADMIN_LISTEN` in the container's environment asks for (`ADDR`, or a
/// bare port on 127.0.0.1), if any.
fn admin_listen(env: &HashMap<String, String>) -> anyhow::Result<Option<SocketAddr>> {
    use wms_server::launch::ENV_ADMIN_LISTEN;
    env.get(ENV_ADMIN_LISTEN)
        .map(|v| {
            wms_server::admin::address(v).map_err(|e| anyhow::anyhow!("{ENV_ADMIN_LISTEN}: {e}"))
        })
        .transpose()
}

/// A fresh directory for this start (private, empty, named at random) in the first of
/// [`STATE_DIRS`] that can hold one; removed when the container's process ends. Never one found
/// there: the image, or another container of the pod sharing `/dev/shm`, could have planted
/// files (or links) in it.
fn state_dir() -> anyhow::Result<tempfile::TempDir> {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    let mut tried = Vec::new();
    for dir in STATE_DIRS {
        let path = Path::new(dir);
        match std::fs::symlink_metadata(path) {
            Ok(meta) if !meta.is_dir() => {
                tried.push(format!("{dir} is not a directory"));
                continue;
            }
            Ok(meta) => {
                // A volume mounted for it (a kubelet's emptyDir is mode 0777) becomes the
                // shim's alone, so nobody else can rename what the shim makes in it.
                // SAFETY: geteuid has no preconditions.
                let me = unsafe { libc::geteuid() };
                if dir == STATE_DIRS[0] && meta.uid() == me && meta.mode() & 0o077 != 0 {
                    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700));
                }
            }
            Err(_) => {
                if let Err(e) = wms_oci::store::private_dir(path) {
                    tried.push(format!("{e:#}"));
                    continue;
                }
            }
        }
        match tempfile::Builder::new().prefix("start-").tempdir_in(path) {
            Ok(fresh) => {
                if !tried.is_empty() {
                    tracing::info!(
                        "preparing the image in {dir} (in memory): {}",
                        tried.join("; ")
                    );
                }
                return Ok(fresh);
            }
            Err(e) => tried.push(format!("cannot create a directory in {dir}: {e}")),
        }
    }
    anyhow::bail!(
        "nowhere to prepare the image: {}\n  help: give the container a writable root filesystem, or a writable volume (e.g. an emptyDir) at {}",
        tried.join("; "),
        STATE_DIRS[0]
    )
}

/// The container's memory limit, as its cgroup says (the kubelet's containers see it; `ctr run`
/// needs `--mount type=cgroup,src=cgroup,dst=/sys/fs/cgroup,options=ro`), and the most one guest
/// may take of it: the limit less a quarter (at least [`MIN_HEADROOM`], at most half) for wms
/// itself. One guest that grows past that fails on its own (its request gets a 500, a command
/// exits 134) instead of the kernel ending the whole container (several at once still can
/// reach the limit). The pool's resident budget
/// follows the same limit ([`wms_runtime::pool::ResidentBudget`]).
fn container_guest_cap() -> Option<(u64, u64)> {
    let Some(limit) = wms_runtime::pool::cgroup_memory_limit() else {
        if !cgroup_visible() {
            tracing::info!(
                "the container's memory limit is not visible here (no cgroup filesystem at /sys/fs/cgroup): guests keep their manifests' limits and the kernel ends the whole container if it goes over its limit; with ctr, add --mount type=cgroup,src=cgroup,dst=/sys/fs/cgroup,options=ro"
            );
        }
        return None;
    };
    let cap = guest_cap(limit);
    tracing::info!(
        "container memory limit {}: each guest may use at most {}",
        wms_runtime::pool::human(limit),
        wms_runtime::pool::human(cap)
    );
    Some((cap, limit))
}

/// The most one guest may take of a container memory limit of `limit` bytes.
fn guest_cap(limit: u64) -> u64 {
    let headroom = (limit / 4).max(MIN_HEADROOM).min(limit / 2);
    limit - headroom
}

/// Whether this process sees a cgroup filesystem (v2, or v1's memory controller).
fn cgroup_visible() -> bool {
    [
        "/sys/fs/cgroup/cgroup.controllers",
        "/sys/fs/cgroup/unified/cgroup.controllers",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ]
    .iter()
    .any(|f| Path::new(f).exists())
}

/// Lowers every component's `max_memory` to `cap` where it is higher, saying so.
fn fit_guests(app: &mut wms_manifest::App, cap: u64) {
    for (name, c) in app.components.iter_mut() {
        if c.limits.max_memory > cap {
            tracing::info!(
                component = %name,
                "max_memory {} lowered to {} to fit the container's memory limit",
                wms_runtime::pool::human(c.limits.max_memory),
                wms_runtime::pool::human(cap)
            );
            c.limits.max_memory = cap;
        }
    }
}

/// The container's own directory mounts (volumes, `ctr run --mount`, a pod's volumes), from the
/// container process's mount table, for a command: each at its path, read-only where the mount
/// is. The root filesystem, the kernel's and the runtime's own mounts (`/proc`, `/sys`, `/dev`,
/// `/run`) and mounted files (`/etc/hosts`, ...) are left out.
fn container_mounts(mountinfo: &str) -> Vec<wms_runtime::DirMount> {
    let mut dirs = Vec::new();
    for line in mountinfo.lines() {
        // ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER
        let fields: Vec<&str> = line.split(' ').collect();
        let (Some(point), Some(options)) = (fields.get(4), fields.get(5)) else {
            continue;
        };
        let point = unescape_mountinfo(point);
        let under = |top: &str| point == top || point.starts_with(&format!("{top}/"));
        // The runtime's mounts, and the shim's own state (a volume there holds the prepared
        // image, not the command's data).
        if point == "/"
            || ["/proc", "/sys", "/dev", "/run", STATE_DIRS[0]]
                .iter()
                .any(|t| under(t))
        {
            continue;
        }
        if !Path::new(&point).is_dir()
            || dirs
                .iter()
                .any(|d: &wms_runtime::DirMount| d.guest == point)
        {
            continue;
        }
        dirs.push(wms_runtime::DirMount {
            host: point.clone().into(),
            guest: point,
            writable: !options.split(',').any(|o| o == "ro"),
        });
    }
    dirs
}

/// Mount points in mountinfo escape space, tab, newline and backslash as `\NNN` (octal).
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A classic image's entry point: a regular file of the container's root filesystem holding a
/// wasm module or component, within the cap on a wasm layer.
fn read_wasm(path: &Path) -> anyhow::Result<Vec<u8>> {
    let meta = std::fs::metadata(path).with_context(|| {
        format!(
            "the container has no wms image and its entry point {} cannot be read",
            path.display()
        )
    })?;
    let (cap, _) = wms_oci::limits::for_blob(wms_oci::media::WASM_LAYER, false);
    if !meta.is_file() || meta.len() > cap {
        anyhow::bail!(
            "the container's entry point {} is not a wasm file of at most {}",
            path.display(),
            wms_oci::limits::human(cap)
        );
    }
    let bytes = std::fs::read(path)?;
    if !bytes.starts_with(b"\0asm") {
        anyhow::bail!(
            "the container's entry point {} is not a wasm module or component\n  help: run native containers with runc; wms runs `wms push --containerd` images and wasi/wasm images whose entry point is a .wasm file",
            path.display()
        );
    }
    Ok(bytes)
}

/// Runs a command as `wms run` does, with `args` after `argv[0]` (the container's arguments,
/// after the image's own entry point) and the container's whole environment; no directories yet.
async fn run_command(
    wasm: &Path,
    app: &wms_manifest::App,
    args: &[String],
    envs: &[String],
    guest_cap: Option<(u64, u64)>,
    precompiled: Option<PathBuf>,
) -> anyhow::Result<i32> {
    let program = app
        .components
        .keys()
        .next()
        .cloned()
        .unwrap_or_else(|| "app".to_string());
    let mut argv = vec![program.clone()];
    argv.extend(args.iter().cloned());
    let options = wms_runtime::CommandOptions {
        path: wasm.to_path_buf(),
        args: argv,
        env: envs
            .iter()
            .filter_map(|e| e.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        dirs: std::fs::read_to_string("/proc/self/mountinfo")
            .map(|m| container_mounts(&m))
            .unwrap_or_default(),
        timeout: None,
        max_memory: guest_cap.map_or(COMMAND_MAX_MEMORY, |(cap, _)| cap),
        engine: wms_runtime::EngineKind::Cranelift,
        precompiled,
    };
    let outcome = wms_runtime::run_command(&options).await?;
    let (code, message) = match (&outcome, guest_cap) {
        (wms_runtime::CommandOutcome::MemoryLimit(_), Some((cap, limit))) => (
            134,
            Some(format!(
                "{program} exceeded its memory limit of {} (the container's limit {} less what wms keeps for itself)",
                wms_runtime::pool::human(cap),
                wms_runtime::pool::human(limit)
            )),
        ),
        _ => wms_server::launch::command_status(&outcome, &program),
    };
    if let Some(message) = message {
        eprintln!("error: {message}");
    }
    Ok(i32::from(code))
}

fn main() {
    WmsShim::run(Config {
        default_log_level: "info".to_string(),
        ..Default::default()
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_gets_the_containers_directory_mounts_and_nothing_of_the_runtimes() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("my data");
        std::fs::create_dir(&data).unwrap();
        let escaped = data.display().to_string().replace(' ', "\\040");
        let mountinfo = format!(
            "1 0 8:1 / / rw,relatime - overlay overlay rw\n\
             2 1 0:5 / /proc rw,nosuid - proc proc rw\n\
             3 1 0:6 / /dev rw - tmpfs tmpfs rw\n\
             4 1 0:7 / /run rw - tmpfs tmpfs rw\n\
             5 1 8:1 /x {escaped} ro,relatime - ext4 /dev/sda1 rw\n\
             6 1 8:1 /y /etc/hosts rw - ext4 /dev/sda1 rw\n\
             7 1 8:1 /z {tmp} rw,relatime shared:1 - ext4 /dev/sda1 rw\n",
            tmp = dir.path().display()
        );
        let dirs = container_mounts(&mountinfo);
        let got: Vec<(String, bool)> = dirs.iter().map(|d| (d.guest.clone(), d.writable)).collect();
        assert_eq!(
            got,
            vec![
                (data.display().to_string(), false),
                (dir.path().display().to_string(), true)
            ]
        );
    }

    #[test]
    fn a_guest_gets_the_container_limit_less_what_wms_keeps() {
        const MIB: u64 = 1 << 20;
        // A quarter kept for wms...
        assert_eq!(guest_cap(256 * MIB), 192 * MIB);
        assert_eq!(guest_cap(1024 * MIB), 768 * MIB);
        // ...but at least 32 MiB...
        assert_eq!(guest_cap(96 * MIB), 64 * MIB);
        // ...and at most half.
        assert_eq!(guest_cap(32 * MIB), 16 * MIB);
    }

    #[test]
    fn the_container_environment_is_read_like_a_shell_reads_it() {
        let env = container_env(&[
            "PATH=/bin".to_string(),
            "WMS_LISTEN=127.0.0.1:1".to_string(),
            "EMPTY=".to_string(),
            "NOEQUALS".to_string(),
            "WMS_LISTEN=127.0.0.1:2".to_string(),
        ]);
        assert_eq!(env["WMS_LISTEN"], "127.0.0.1:2");
        assert_eq!(env["EMPTY"], "");
        assert!(!env.contains_key("NOEQUALS"));
    }

    #[test]
    fn the_admin_listener_comes_from_the_container_environment() {
        let env = |v: &[&str]| container_env(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(admin_listen(&env(&["PATH=/bin"])).unwrap(), None);
        assert_eq!(
            admin_listen(&env(&["WMS_ADMIN_LISTEN=9090"])).unwrap(),
            Some("127.0.0.1:9090".parse().unwrap())
        );
        assert_eq!(
            admin_listen(&env(&["WMS_ADMIN_LISTEN=0.0.0.0:9090"])).unwrap(),
            Some("0.0.0.0:9090".parse().unwrap())
        );
        let e = admin_listen(&env(&["WMS_ADMIN_LISTEN=nine"])).unwrap_err();
        assert!(format!("{e}").contains("WMS_ADMIN_LISTEN"), "{e}");
    }
}

//! wms apps and wasm components in OCI registries.
//!
//! Two image formats (docs/oci.md):
//! - a single component as the CNCF TAG Runtime wasm artifact (config
//!   `application/vnd.wasm.config.v0+json`, one `application/wasm` layer), as `wkg` and
//!   runwasi's shims read and write it;
//! - a whole app as a wms app image: OCI image config (architecture `wasm`), a layer per
//!   component, a tar layer per component's files, optional precompiled code, and last the app
//!   manifest whose `source`s name those layers by digest.
//!
//! Pulled content lands in a [`Store`] only after its digest and size check out; [`materialize`]
//! turns a stored image into an app directory `wms up` loads like any other.

pub mod auth;
pub mod containerd;
#[cfg(test)]
mod fuzz;
pub mod image;
pub mod media;
pub mod meta;
pub mod registry;
pub mod store;
pub mod trust;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, anyhow, bail};
use oci_client::manifest::{OciDescriptor, OciImageManifest};
use serde::Serialize;

pub use image::{ImageBuild, Precompiled};
pub use oci_client::Reference;
pub use registry::{Options, Registry, login, parse_reference};
pub use store::Store;

/// Caps on what an image may make wms read (images and registries are untrusted). Each cap is
/// checked against the descriptor's declared size before anything is downloaded, and again on the
/// bytes that arrive (a registry sending more than a descriptor lists is refused); docs/oci.md
/// lists them.
pub mod limits {
    use crate::media;

    /// An image manifest or index. Registries refuse larger ones themselves (distribution's limit
    /// is 4 MiB), so nothing legitimate is turned away.
    pub const MANIFEST: u64 = 4 << 20;
    /// An image config: a few hundred bytes for wms and wkg, kilobytes with a long import list.
    pub const CONFIG: u64 = 1 << 20;
    /// The app manifest layer: a TOML file a person wrote.
    pub const APP_MANIFEST: u64 = 1 << 20;
    /// A wasm, precompiled or files layer. Components are loaded whole to be compiled, and a
    /// board has a few GiB of memory and storage; 256 MiB is an order of magnitude above the
    /// largest real components and file sets.
    pub const LAYER: u64 = 256 << 20;
    /// Blobs (config and layers) of one image.
    pub const LAYERS: usize = 256;
    /// Bytes of one image, all blobs together.
    pub const IMAGE: u64 = 2 << 30;
    /// Entries in one files layer (each is a file or directory written to disk).
    pub const FILES_ENTRIES: usize = 100_000;

    /// The cap for a blob of this media type, and what to call it in errors.
    pub fn for_blob(media_type: &str, is_config: bool) -> (u64, &'static str) {
        if is_config {
            (CONFIG, "config")
        } else if media_type == media::APP_MANIFEST {
            (APP_MANIFEST, "app manifest layer")
        } else if media_type == media::FILES_TAR {
            (LAYER, "files layer")
        } else if media_type == media::PRECOMPILED {
            (LAYER, "precompiled layer")
        } else {
            (LAYER, "layer")
        }
    }

    /// `4 MiB`, for messages.
    pub fn human(n: u64) -> String {
        if n >= 1 << 20 && n.is_multiple_of(1 << 20) {
            format!("{} MiB", n >> 20)
        } else if n >= 1 << 10 && n.is_multiple_of(1 << 10) {
            format!("{} KiB", n >> 10)
        } else {
            format!("{n} bytes")
        }
    }

    /// The blobs wms takes from an image, config first: every layer but precompiled code for
    /// other targets than `precompiled_target`. Refused as a whole when there are more than
    /// [`LAYERS`] or their declared sizes add up to more than [`IMAGE`], before anything is read.
    pub fn wanted_blobs<'a>(
        manifest: &'a oci_client::manifest::OciImageManifest,
        precompiled_target: Option<&str>,
    ) -> Result<Vec<&'a oci_client::manifest::OciDescriptor>, String> {
        let mut wanted = vec![&manifest.config];
        wanted.extend(manifest.layers.iter().filter(|l| {
            l.media_type != media::PRECOMPILED
                || precompiled_target.is_some_and(|t| {
                    l.annotations
                        .as_ref()
                        .and_then(|a| a.get(media::ANN_TARGET))
                        .is_some_and(|x| x == t)
                })
        }));
        let total: u64 = wanted.iter().map(|d| d.size.max(0) as u64).sum();
        if wanted.len() > LAYERS || total > IMAGE {
            return Err(format!(
                "{} blobs, {total} bytes in all; wms takes at most {LAYERS} blobs and {IMAGE} bytes per image",
                wanted.len()
            ));
        }
        Ok(wanted)
    }

    /// Refuses a descriptor whose declared size is negative or over its cap, before download.
    pub fn check(digest: &str, size: i64, media_type: &str, is_config: bool) -> Result<(), String> {
        let (cap, what) = for_blob(media_type, is_config);
        if size < 0 {
            return Err(format!("{what} {digest} has a negative size ({size})"));
        }
        if size as u64 > cap {
            return Err(format!(
                "{what} {digest} is listed with {size} bytes, over wms's {} limit for a {what}; it was not downloaded",
                human(cap)
            ));
        }
        Ok(())
    }
}

/// What an image holds, decided from its manifest before any layer is downloaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ImageKind {
    /// One wasm module or component (CNCF TAG Runtime wasm artifact, or a lone wasm layer).
    Component,
    /// A wms app image.
    App,
}

impl ImageKind {
    pub fn classify(m: &OciImageManifest) -> anyhow::Result<Self> {
        let types: Vec<&str> = m.layers.iter().map(|l| l.media_type.as_str()).collect();
        if types.contains(&media::APP_MANIFEST) {
            return Ok(Self::App);
        }
        if types.contains(&media::SPIN_LOCKED_APP) {
            bail!(
                "this is a Spin app image ({}); wms does not read those yet\n  help: push the app with `wms push` from its spin.toml",
                media::SPIN_LOCKED_APP
            );
        }
        let wasm = types.iter().filter(|t| media::is_wasm_layer(t)).count();
        if wasm == 1 && (m.config.media_type == media::WASM_CONFIG || types.len() == 1) {
            return Ok(Self::Component);
        }
        bail!(
            "not a wasm image: config {}, layers [{}]\n  help: wms runs wasm artifacts (an {} layer) and wms app images; container images run under a container runtime",
            m.config.media_type,
            types.join(", "),
            media::WASM_LAYER
        )
    }
}

/// An image in the store, ready to run.
#[derive(Debug, Clone)]
pub struct Materialized {
    /// The app, from the image's manifest read as untrusted data: its components and files are
    /// the image's own verified layers and nothing else (`wms up`).
    pub app: wms_manifest::App,
    /// For a single component: the wasm file (`wms run`).
    pub wasm: Option<PathBuf>,
    /// Precompiled code for the requested target, in the layout `wms up --precompiled` reads.
    pub precompiled: Option<PathBuf>,
}

fn stored_manifest(store: &Store, digest: &str) -> anyhow::Result<OciImageManifest> {
    let bytes = store.read_blob(digest, limits::MANIFEST)?;
    serde_json::from_slice(&bytes)
        .with_context(|| format!("stored manifest {digest} is not an image manifest"))
}

/// A component id derived from a repository name (`team/hello-api` -> `hello-api`).
fn component_id(repository: &str) -> String {
    let last = repository.rsplit('/').next().unwrap_or(repository);
    let id: String = last
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    let id = id.trim_matches('-').to_string();
    if id.is_empty() || !id.starts_with(|c: char| c.is_ascii_lowercase()) {
        format!("app-{id}").trim_end_matches('-').to_string()
    } else {
        id
    }
}

/// Prepares stored image `digest` to run: checks its wasm blobs again, and builds (once; a
/// directory another process is using is never replaced) its app directory, holding a manifest
/// whose sources are the verified blobs and the extracted files, and for `precompiled_target`
/// a directory of trusted precompiled code.
pub fn materialize(
    store: &Store,
    reference: &Reference,
    digest: &str,
    precompiled_target: Option<&str>,
) -> anyhow::Result<Materialized> {
    let manifest = stored_manifest(store, digest)?;
    let kind = ImageKind::classify(&manifest)?;
    for l in manifest
        .layers
        .iter()
        .filter(|l| media::is_wasm_layer(&l.media_type))
    {
        verify_stored(store, &l.digest)?;
    }
    let dir = store.app_dir(digest)?;
    let app_manifest = app_manifest_text(store, reference, &manifest, kind)?;
    let wasm = match kind {
        ImageKind::Component => manifest
            .layers
            .iter()
            .find(|l| media::is_wasm_layer(&l.media_type))
            .map(|l| store.blob_path(&l.digest))
            .transpose()?,
        ImageKind::App => None,
    };
    if !dir.exists() {
        build_once(&dir, |tmp| unpack_files(store, &manifest, tmp))?;
    }
    let layers = LayerSet {
        manifest: &manifest,
        place: &|layer: &OciDescriptor| {
            if layer.media_type == media::FILES_TAR {
                Ok(dir.join("files").join(store::digest_hex(&layer.digest)?))
            } else {
                store.blob_path(&layer.digest)
            }
        },
    };
    let app = app_manifest.parse(&dir, &layers)?;
    let mut precompiled = None;
    if let Some(target) = precompiled_target {
        let pdir = dir.with_extension(format!("precompiled-{target}"));
        if pdir.exists() {
            check_precompiled_dir(&manifest, target, &pdir);
        } else if precompiled_layers(&manifest, target)
            .iter()
            .any(|(_, l, _)| store.has_blob(&l.digest, l.size as u64))
        {
            // Only once some of this target's code is in the store: an empty directory made
            // before it was pulled would hide it for good.
            build_once(&pdir, |tmp| precompiled_dir(store, &manifest, target, tmp))?;
        }
        if std::fs::read_dir(&pdir).is_ok_and(|mut d| d.next().is_some()) {
            precompiled = Some(pdir);
        }
    }
    Ok(Materialized {
        app,
        wasm,
        precompiled,
    })
}

/// Fills a private temporary directory with `fill` and renames it to `dir`; when another process
/// got there first, theirs is kept.
fn build_once(dir: &Path, fill: impl FnOnce(&Path) -> anyhow::Result<()>) -> anyhow::Result<()> {
    // A random name beside `dir` (0700): a process id alone repeats across containers that
    // share a cache (each is PID 1), and one would delete the other's half-built directory.
    let parent = dir.parent().unwrap_or(Path::new("."));
    let name = dir.file_name().unwrap_or_default().to_string_lossy();
    let tmp = tempfile::Builder::new()
        .prefix(&format!("{name}.tmp-"))
        .tempdir_in(parent)
        .with_context(|| format!("cannot create a directory in {}", parent.display()))?;
    // Dropping `tmp` removes what is left of it: everything on failure, nothing once renamed.
    fill(tmp.path())?;
    if let Err(e) = std::fs::rename(tmp.path(), dir)
        && !dir.exists()
    {
        return Err(e).with_context(|| format!("cannot create {}", dir.display()));
    }
    Ok(())
}

/// Unpacks every files layer of an image into `out/files/HEX`, where its manifest's
/// `{ digest }` file sources find them. Each layer is streamed from the store through its
/// digest (never read whole into memory: a files layer may be hundreds of MiB on a board with
/// one GiB), and the unpacked files are used only if the whole blob hashed right.
fn unpack_files(store: &Store, manifest: &OciImageManifest, out: &Path) -> anyhow::Result<()> {
    for l in manifest
        .layers
        .iter()
        .filter(|l| l.media_type == media::FILES_TAR)
    {
        let to = out.join("files").join(store::digest_hex(&l.digest)?);
        if to.exists() {
            continue;
        }
        let mut blob = Verifying::open(store, &l.digest)?;
        extract_tar(&mut blob, &to)
            .with_context(|| format!("cannot unpack files layer {}", l.digest))?;
        // The archive ends at its end-of-archive marker; whatever follows is part of the blob.
        std::io::copy(&mut blob, &mut std::io::sink())?;
        blob.finish()?;
    }
    Ok(())
}

/// A stored blob read through a hasher: [`Verifying::finish`] says whether everything read was
/// the blob its digest names, and removes a damaged blob so the next pull fetches it again.
struct Verifying {
    file: std::fs::File,
    path: PathBuf,
    digest: String,
    hasher: sha2::Sha256,
}

impl Verifying {
    fn open(store: &Store, digest: &str) -> anyhow::Result<Self> {
        use sha2::Digest as _;
        let path = store.blob_path(digest)?;
        let file = std::fs::File::open(&path)
            .with_context(|| format!("blob {digest} is not in the store; pull the image again"))?;
        Ok(Self {
            file,
            path,
            digest: digest.to_string(),
            hasher: sha2::Sha256::new(),
        })
    }

    fn finish(self) -> anyhow::Result<()> {
        use sha2::Digest as _;
        let found = format!("sha256:{}", store::hex(&self.hasher.finalize()));
        if found != self.digest {
            let _ = std::fs::remove_file(&self.path);
            bail!(
                "stored blob {} is damaged (content digest {found}); it was removed\n  help: pull the image again",
                self.path.display()
            );
        }
        Ok(())
    }
}

impl std::io::Read for Verifying {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use sha2::Digest as _;
        let n = self.file.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// An image's app manifest: the publisher's text for an app image, or one written here for a
/// single component (a catch-all route to its one wasm layer).
struct AppManifestText {
    label: PathBuf,
    text: String,
}

impl AppManifestText {
    /// Reads it into the typed app model as untrusted data: only `layers` can be named.
    fn parse(&self, dir: &Path, layers: &LayerSet<'_>) -> anyhow::Result<wms_manifest::App> {
        Ok(wms_manifest::parse_image(
            &self.label,
            dir,
            &self.text,
            layers,
        )?)
    }
}

fn app_manifest_text(
    store: &Store,
    reference: &Reference,
    manifest: &OciImageManifest,
    kind: ImageKind,
) -> anyhow::Result<AppManifestText> {
    match kind {
        ImageKind::Component => {
            let layer = manifest
                .layers
                .iter()
                .find(|l| media::is_wasm_layer(&l.media_type))
                .context("no wasm layer")?;
            Ok(AppManifestText {
                label: PathBuf::from(format!("{} (wasm artifact)", reference.whole())),
                text: component_manifest(reference, &layer.digest),
            })
        }
        ImageKind::App => {
            let layer = manifest
                .layers
                .iter()
                .find(|l| l.media_type == media::APP_MANIFEST)
                .context("no app manifest layer")?;
            let text = String::from_utf8(store.read_blob(&layer.digest, limits::APP_MANIFEST)?)
                .context("the app manifest layer is not UTF-8 text")?;
            Ok(AppManifestText {
                label: PathBuf::from(format!("{} (app manifest layer)", reference.whole())),
                text,
            })
        }
    }
}

/// The manifest of a single-component artifact: its one wasm layer on every path.
fn component_manifest(reference: &Reference, digest: &str) -> String {
    let id = component_id(reference.repository());
    // JSON string syntax is valid TOML basic-string syntax.
    let quote = |s: &str| serde_json::to_string(s).expect("strings serialize");
    format!(
        "spin_manifest_version = 2\n\n[application]\nname = {id_q}\n\n[[trigger.http]]\nroute = \"/...\"\ncomponent = {id_q}\n\n[component.{id}]\nsource = {{ digest = {d} }}\n",
        id_q = quote(&id),
        d = quote(digest),
    )
}

/// The layers an image's app manifest may name, and where each is found on this host. Both
/// `wms up` and `wms inspect` resolve through it, so what inspect shows is what is mounted.
struct LayerSet<'a> {
    manifest: &'a OciImageManifest,
    place: &'a dyn Fn(&OciDescriptor) -> anyhow::Result<PathBuf>,
}

impl LayerSet<'_> {
    fn find(
        &self,
        digest: &str,
        kind: &str,
        wanted: impl Fn(&str) -> bool,
    ) -> Result<PathBuf, String> {
        let layer = self
            .manifest
            .layers
            .iter()
            .find(|l| l.digest == digest)
            .ok_or_else(|| format!("blob {digest} is not a layer of this image"))?;
        if !wanted(&layer.media_type) {
            return Err(format!(
                "layer {digest} is {}, not {kind}",
                layer.media_type
            ));
        }
        (self.place)(layer).map_err(|e| format!("{e:#}"))
    }
}

impl wms_manifest::ImageLayers for LayerSet<'_> {
    fn component(&self, digest: &str) -> Result<PathBuf, String> {
        self.find(digest, "a wasm layer", media::is_wasm_layer)
    }

    fn files(&self, digest: &str) -> Result<PathBuf, String> {
        self.find(digest, "a files layer", |t| t == media::FILES_TAR)
    }
}

/// This target's precompiled layers: (component id, layer, wasm digest it was compiled from).
fn precompiled_layers<'a>(
    manifest: &'a OciImageManifest,
    target: &str,
) -> Vec<(String, &'a OciDescriptor, String)> {
    let mut found = Vec::new();
    for l in &manifest.layers {
        let ann = l.annotations.clone().unwrap_or_default();
        if l.media_type != media::PRECOMPILED
            || ann.get(media::ANN_TARGET).map(String::as_str) != Some(target)
        {
            continue;
        }
        let (Some(id), Some(wasm_digest)) = (
            ann.get(media::ANN_COMPONENT),
            ann.get(media::ANN_WASM_DIGEST),
        ) else {
            tracing::warn!(
                "precompiled layer {} lacks its component or wasm digest; ignored",
                l.digest
            );
            continue;
        };
        // The id becomes a file name.
        if id.is_empty() || id.contains(['/', '\\']) || id.starts_with('.') {
            tracing::warn!(
                "precompiled layer {} names component `{id}`, which is not a component id; ignored",
                l.digest
            );
            continue;
        }
        if store::digest_hex(wasm_digest).is_err() {
            tracing::warn!(
                "precompiled layer {} gives `{wasm_digest}` as its wasm digest, not a sha256 digest; ignored",
                l.digest
            );
            continue;
        }
        found.push((id.clone(), l, wasm_digest.clone()));
    }
    found
}

/// Writes this target's precompiled layers in the layout `wms up --precompiled` reads. Each blob
/// is hashed as it is copied: precompiled code is mapped executable without any further check of
/// its content, so a blob that does not match its digest (damage, or someone writing into the
/// store) is removed and the component is compiled from its wasm instead.
fn precompiled_dir(
    store: &Store,
    manifest: &OciImageManifest,
    target: &str,
    out: &Path,
) -> anyhow::Result<()> {
    for (id, l, wasm_digest) in precompiled_layers(manifest, target) {
        if !store.has_blob(&l.digest, l.size as u64) {
            continue;
        }
        let code = out.join(format!("{id}.cwasm"));
        let copied = (|| -> anyhow::Result<()> {
            let mut blob = Verifying::open(store, &l.digest)?;
            let mut file = std::fs::File::create(&code)
                .with_context(|| format!("cannot write {}", code.display()))?;
            std::io::copy(&mut blob, &mut file)?;
            blob.finish()
        })();
        if let Err(e) = copied {
            let _ = std::fs::remove_file(&code);
            tracing::warn!(
                "component `{id}`: precompiled layer {} refused, not loaded: {e:#}; compiling from the wasm",
                l.digest
            );
            continue;
        }
        std::fs::write(
            out.join(format!("{id}.wasm-sha256")),
            store::digest_hex(&wasm_digest)?,
        )?;
    }
    Ok(())
}

/// Checks the code in an existing precompiled directory against its layers' digests before it is
/// used (it was written by an earlier start and has been on disk since); code that does not match
/// is removed, so the component is compiled from its wasm.
fn check_precompiled_dir(manifest: &OciImageManifest, target: &str, dir: &Path) {
    use sha2::Digest as _;
    for (id, l, _) in precompiled_layers(manifest, target) {
        let code = dir.join(format!("{id}.cwasm"));
        let Ok(mut file) = std::fs::File::open(&code) else {
            continue;
        };
        let mut h = sha2::Sha256::new();
        let found = std::io::copy(&mut file, &mut h)
            .map(|_| format!("sha256:{}", store::hex(&h.finalize())))
            .unwrap_or_default();
        if found != l.digest {
            let _ = std::fs::remove_file(&code);
            let _ = std::fs::remove_file(code.with_extension("wasm-sha256"));
            tracing::warn!(
                "component `{id}`: {} does not match precompiled layer {} (content digest {found}); removed, not loaded; compiling from the wasm",
                code.display(),
                l.digest
            );
        }
    }
}

/// Re-hashes a stored blob about to be run (catches damage on disk since the pull).
fn verify_stored(store: &Store, digest: &str) -> anyhow::Result<()> {
    use sha2::Digest as _;
    let path = store.blob_path(digest)?;
    let mut f = std::fs::File::open(&path)
        .with_context(|| format!("blob {digest} is not in the store; pull the image again"))?;
    let mut h = sha2::Sha256::new();
    std::io::copy(&mut f, &mut h)?;
    let found = format!("sha256:{}", store::hex(&h.finalize()));
    if found != digest {
        let _ = std::fs::remove_file(&path);
        bail!(
            "stored blob {} is damaged (content digest {found}); it was removed\n  help: pull the image again",
            path.display()
        );
    }
    Ok(())
}

/// Unpacks a files layer, streamed: regular files and directories only, never outside `out`.
/// What it writes is bounded by the layer's size (capped at [`limits::LAYER`]): those entry
/// types hold no sparse or linked data that could expand.
pub(crate) fn extract_tar(reader: impl std::io::Read, out: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(out)?;
    let mut archive = tar::Archive::new(reader);
    for (n, entry) in archive.entries()?.enumerate() {
        if n >= limits::FILES_ENTRIES {
            bail!(
                "the files layer has more than {} entries; wms unpacks at most that many\n  help: ship fewer, larger files (an archive the component reads itself)",
                limits::FILES_ENTRIES
            );
        }
        let mut entry = entry?;
        let path = entry.path()?.into_owned();
        match entry.header().entry_type() {
            tar::EntryType::Regular | tar::EntryType::Directory => {}
            other => bail!(
                "entry {} is a {other:?}; files layers hold only files and directories",
                path.display()
            ),
        }
        if path.is_absolute()
            || path
                .components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            bail!("entry {} leaves the files directory", path.display());
        }
        // Written here, not by `unpack_in`: the image's modes and times are not applied (a
        // directory of mode 000 would stop the rest from unpacking and from being cleaned up;
        // the guest sees the files read-only anyway).
        let to = out.join(&path);
        if entry.header().entry_type() == tar::EntryType::Directory {
            std::fs::create_dir_all(&to)
                .with_context(|| format!("cannot create {}", to.display()))?;
        } else {
            if let Some(dir) = to.parent() {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
            }
            let mut file = std::fs::File::create(&to)
                .with_context(|| format!("cannot create {}", to.display()))?;
            std::io::copy(&mut entry, &mut file)
                .with_context(|| format!("cannot write {}", to.display()))?;
        }
    }
    Ok(())
}

/// What `wms inspect` shows.
#[derive(Debug, Serialize)]
pub struct Inspection {
    pub reference: String,
    pub digest: String,
    pub kind: Option<ImageKind>,
    pub config: Descriptor,
    pub config_summary: BTreeMap<String, serde_json::Value>,
    pub layers: Vec<Descriptor>,
    pub components: Vec<ComponentSummary>,
    /// The app's variables (`[variables]`), without their values when secret.
    pub variables: Vec<VariableSummary>,
    /// Why the image's app manifest would be refused by `wms up`, if it would.
    pub refused: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: i64,
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Serialize)]
pub struct ComponentSummary {
    pub id: String,
    pub digest: String,
    pub size: i64,
    pub wasi: Option<String>,
    pub world: Option<String>,
    pub imports: Vec<String>,
    pub exports: Vec<String>,
    /// What the app manifest grants the component (deny-by-default: empty means nothing).
    pub allowed_outbound_hosts: Vec<String>,
    /// Names of the environment variables it is given (values not shown).
    pub environment: Vec<String>,
    /// Names of its variables, what Spin's variables interfaces give it (values not shown).
    pub variables: Vec<String>,
    /// Labels of the key-value stores it may open (`key_value_stores`).
    pub key_value_stores: Vec<String>,
    /// Labels of the SQLite databases it may open (`sqlite_databases`).
    pub sqlite_databases: Vec<String>,
    /// Guest paths where files are mounted.
    pub files: Vec<String>,
    /// What is mounted where: each guest path and the files layer it shows.
    pub mounts: Vec<Mount>,
}

/// An application variable as `wms inspect` shows it.
#[derive(Debug, Serialize)]
pub struct VariableSummary {
    pub name: String,
    pub required: bool,
    pub secret: bool,
    /// The default, unless the variable is secret.
    pub default: Option<String>,
}

/// A files layer mounted at a guest path.
#[derive(Debug, Serialize)]
pub struct Mount {
    pub destination: String,
    pub layer: String,
}

/// Describes an image from its manifest and config, and for an app image its manifest layer
/// (no component needs to be downloaded).
pub fn describe(
    reference: &Reference,
    digest: &str,
    manifest: &OciImageManifest,
    config: &[u8],
    app_manifest: Option<&str>,
) -> Inspection {
    let desc = |d: &oci_client::manifest::OciDescriptor| Descriptor {
        media_type: d.media_type.clone(),
        digest: d.digest.clone(),
        size: d.size,
        annotations: d.annotations.clone().unwrap_or_default(),
    };
    let kind = ImageKind::classify(manifest).ok();
    let config_json: serde_json::Value = serde_json::from_slice(config).unwrap_or_default();
    let mut config_summary = BTreeMap::new();
    for key in ["architecture", "os", "created", "author"] {
        if let Some(v) = config_json.get(key).filter(|v| !v.is_null()) {
            config_summary.insert(key.to_string(), v.clone());
        }
    }
    let mut components = Vec::new();
    let mut variables = Vec::new();
    let mut refused = None;
    match kind {
        Some(ImageKind::Component) => {
            let wc: Option<image::WasmConfig> = serde_json::from_slice(config).ok();
            if let Some(l) = manifest
                .layers
                .iter()
                .find(|l| media::is_wasm_layer(&l.media_type))
            {
                let info = wc.as_ref().and_then(|c| c.component.clone());
                components.push(ComponentSummary {
                    id: component_id(reference.repository()),
                    digest: l.digest.clone(),
                    size: l.size,
                    wasi: wc.as_ref().map(|c| c.os.clone()),
                    world: info
                        .as_ref()
                        .and_then(|c| c.target.clone().or_else(|| meta::target_world(&c.exports))),
                    imports: info.as_ref().map(|c| c.imports.clone()).unwrap_or_default(),
                    exports: info.map(|c| c.exports).unwrap_or_default(),
                    allowed_outbound_hosts: Vec::new(),
                    environment: Vec::new(),
                    variables: Vec::new(),
                    key_value_stores: Vec::new(),
                    sqlite_databases: Vec::new(),
                    files: Vec::new(),
                    mounts: Vec::new(),
                });
            }
        }
        Some(ImageKind::App) => {
            // The same parse `wms up` runs, with each layer standing for itself instead of a
            // file in the store: what is listed here is what would be mounted.
            let place = |l: &OciDescriptor| Ok(PathBuf::from(&l.digest));
            let layers = LayerSet {
                manifest,
                place: &place,
            };
            let parsed = AppManifestText {
                label: PathBuf::from(format!("{} (app manifest layer)", reference.whole())),
                text: app_manifest.unwrap_or_default().to_string(),
            }
            .parse(Path::new("/"), &layers);
            match parsed {
                Ok(app) => {
                    for (name, v) in &app.variables {
                        variables.push(VariableSummary {
                            name: name.clone(),
                            required: v.required,
                            secret: v.secret,
                            default: v.default.clone().filter(|_| !v.secret),
                        });
                    }
                    for (id, c) in &app.components {
                        let digest = c.source.to_string_lossy().into_owned();
                        let layer = manifest.layers.iter().find(|l| l.digest == digest);
                        let ann = layer
                            .and_then(|l| l.annotations.clone())
                            .unwrap_or_default();
                        let mounts: Vec<Mount> = c
                            .files
                            .iter()
                            .map(|f| match f {
                                wms_manifest::FileMount::Directory {
                                    source,
                                    destination,
                                } => Mount {
                                    destination: destination.clone(),
                                    layer: source.to_string_lossy().into_owned(),
                                },
                                wms_manifest::FileMount::Pattern { pattern } => Mount {
                                    destination: pattern.clone(),
                                    layer: String::new(),
                                },
                            })
                            .collect();
                        components.push(ComponentSummary {
                            id: id.clone(),
                            // Templated entries as written: inspect resolves no variable.
                            allowed_outbound_hosts: c
                                .allowed_outbound_hosts
                                .iter()
                                .map(ToString::to_string)
                                .chain(c.outbound_templates.iter().map(ToString::to_string))
                                .collect(),
                            environment: c.environment.keys().cloned().collect(),
                            variables: c.variables.keys().cloned().collect(),
                            key_value_stores: c.key_value_stores.clone(),
                            sqlite_databases: c.sqlite_databases.clone(),
                            files: mounts.iter().map(|m| m.destination.clone()).collect(),
                            mounts,
                            size: layer.map_or(0, |l| l.size),
                            digest,
                            wasi: ann.get(media::ANN_WASI).cloned(),
                            world: ann.get(media::ANN_WORLD).cloned(),
                            imports: Vec::new(),
                            exports: Vec::new(),
                        });
                    }
                }
                Err(e) => refused = Some(format!("{e:#}")),
            }
        }
        None => {}
    }
    Inspection {
        reference: reference.whole(),
        digest: digest.to_string(),
        kind,
        config: desc(&manifest.config),
        config_summary,
        layers: manifest.layers.iter().map(desc).collect(),
        components,
        variables,
        refused,
    }
}

impl std::fmt::Display for Inspection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let size = |n: i64| bytesize_string(n.max(0) as u64);
        writeln!(f, "Reference  {}", self.reference)?;
        writeln!(f, "Digest     {}", self.digest)?;
        let kind = match self.kind {
            Some(ImageKind::Component) => "wasm component artifact (CNCF TAG Runtime)",
            Some(ImageKind::App) => "wms app image",
            None => "not a wasm image wms can run",
        };
        writeln!(f, "Kind       {kind}")?;
        let summary: Vec<String> = self
            .config_summary
            .iter()
            .map(|(k, v)| format!("{k}={}", v.as_str().map_or(v.to_string(), str::to_string)))
            .collect();
        writeln!(
            f,
            "Config     {} {} {}  {}",
            self.config.media_type,
            self.config.digest,
            size(self.config.size),
            summary.join(" ")
        )?;
        writeln!(f, "Layers")?;
        for l in &self.layers {
            let title = l
                .annotations
                .get(media::ANN_TITLE)
                .map_or("", String::as_str);
            writeln!(
                f,
                "  {:<46} {} {:>10}  {title}",
                l.media_type,
                l.digest,
                size(l.size)
            )?;
        }
        if !self.components.is_empty() {
            writeln!(f, "Components")?;
        }
        for c in &self.components {
            writeln!(
                f,
                "  {}  {}  WASI {}  world {}",
                c.id,
                size(c.size),
                c.wasi.as_deref().unwrap_or("unknown"),
                c.world.as_deref().unwrap_or("unknown")
            )?;
            if !c.imports.is_empty() {
                writeln!(f, "    imports  {}", c.imports.join(", "))?;
            }
            if !c.exports.is_empty() {
                writeln!(f, "    exports  {}", c.exports.join(", "))?;
            }
            let or_none = |v: &[String]| {
                if v.is_empty() {
                    "none".to_string()
                } else {
                    v.join(", ")
                }
            };
            writeln!(f, "    outbound {}", or_none(&c.allowed_outbound_hosts))?;
            writeln!(f, "    env      {}", or_none(&c.environment))?;
            writeln!(f, "    vars     {}", or_none(&c.variables))?;
            writeln!(f, "    kv       {}", or_none(&c.key_value_stores))?;
            writeln!(f, "    sqlite   {}", or_none(&c.sqlite_databases))?;
            let mounts: Vec<String> = c
                .mounts
                .iter()
                .map(|m| format!("{} <- files layer {}", m.destination, m.layer))
                .collect();
            writeln!(f, "    files    {}", or_none(&mounts))?;
        }
        if !self.variables.is_empty() {
            writeln!(f, "Variables")?;
        }
        for v in &self.variables {
            let value = match (&v.default, v.secret, v.required) {
                (_, _, true) => "required".to_string(),
                (_, true, false) => "default (secret, not shown)".to_string(),
                (Some(d), false, false) => format!("default {d:?}"),
                (None, false, false) => String::new(),
            };
            writeln!(
                f,
                "  {}{}  {value}",
                v.name,
                if v.secret { " [secret]" } else { "" }
            )?;
        }
        if let Some(why) = &self.refused {
            writeln!(f, "Refused    wms will not run this image:")?;
            for line in why.lines() {
                writeln!(f, "  {line}")?;
            }
        }
        Ok(())
    }
}

fn bytesize_string(n: u64) -> String {
    if n < 1024 {
        format!("{n} B")
    } else if n < 1 << 20 {
        format!("{:.1} KiB", n as f64 / 1024.0)
    } else {
        format!("{:.1} MiB", n as f64 / (1 << 20) as f64)
    }
}

/// Reads a stored image for `wms inspect` without the network.
pub fn describe_stored(store: &Store, reference: &Reference) -> anyhow::Result<Option<Inspection>> {
    let Some(digest) = store.get_ref(reference) else {
        return Ok(None);
    };
    let manifest = stored_manifest(store, &digest)?;
    let config = store
        .read_blob(&manifest.config.digest, limits::CONFIG)
        .map_err(|e| anyhow!("{e:#}"))?;
    let app_manifest = match manifest
        .layers
        .iter()
        .find(|l| l.media_type == media::APP_MANIFEST)
    {
        Some(l) => Some(
            String::from_utf8_lossy(&store.read_blob(&l.digest, limits::APP_MANIFEST)?)
                .into_owned(),
        ),
        None => None,
    };
    Ok(Some(describe(
        reference,
        &digest,
        &manifest,
        &config,
        app_manifest.as_deref(),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wanted_blobs_skip_other_targets_and_cap_the_image() {
        use oci_client::manifest::{OciDescriptor, OciImageManifest};
        let layer = |media_type: &str, target: Option<&str>, size: i64| OciDescriptor {
            media_type: media_type.to_string(),
            size,
            annotations: target.map(|t| [(media::ANN_TARGET.to_string(), t.to_string())].into()),
            ..Default::default()
        };
        let manifest = OciImageManifest {
            layers: vec![
                layer(media::WASM_LAYER, None, 10),
                layer(media::PRECOMPILED, Some("aarch64"), 10),
                layer(media::PRECOMPILED, Some("riscv64gc"), 10),
            ],
            ..Default::default()
        };
        let wanted = limits::wanted_blobs(&manifest, Some("riscv64gc")).unwrap();
        assert_eq!(wanted.len(), 3, "config, wasm, the riscv64gc code");
        assert_eq!(
            wanted[2].annotations.as_ref().unwrap()[media::ANN_TARGET],
            "riscv64gc"
        );
        assert_eq!(limits::wanted_blobs(&manifest, None).unwrap().len(), 2);
        let many = OciImageManifest {
            layers: vec![layer(media::WASM_LAYER, None, 1); limits::LAYERS],
            ..Default::default()
        };
        assert!(
            limits::wanted_blobs(&many, None)
                .unwrap_err()
                .contains("at most 256 blobs")
        );
        let big = OciImageManifest {
            layers: vec![layer(media::WASM_LAYER, None, (limits::IMAGE / 2 + 1) as i64); 2],
            ..Default::default()
        };
        assert!(limits::wanted_blobs(&big, None).is_err());
    }

    #[test]
    fn component_ids_come_from_repository_names() {
        assert_eq!(component_id("team/hello-api"), "hello-api");
        assert_eq!(component_id("Shop_Front"), "shop-front");
        assert_eq!(component_id("9lives"), "app-9lives");
    }

    #[test]
    fn the_images_modes_are_not_applied() {
        // A directory of mode 000 before its files stopped the unpacking (and its clean-up).
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(0);
        h.set_mode(0);
        h.set_entry_type(tar::EntryType::Directory);
        b.append_data(&mut h, "d", &b""[..]).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_size(2);
        h.set_mode(0);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, "d/f", &b"hi"[..]).unwrap();
        let bytes = b.into_inner().unwrap();
        let dir = tempfile::tempdir().unwrap();
        extract_tar(bytes.as_slice(), dir.path()).unwrap();
        assert_eq!(std::fs::read(dir.path().join("d/f")).unwrap(), b"hi");
        // The owner can read and clean up both, whatever the image said (root would pass the
        // read above anyway).
        use std::os::unix::fs::PermissionsExt as _;
        for p in ["d", "d/f"] {
            let mode = std::fs::metadata(dir.path().join(p))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o600, 0o600, "{p}: {mode:o}");
        }
    }

    #[test]
    fn tar_entries_cannot_escape() {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_link_name("/etc/passwd").unwrap();
        b.append_data(&mut h, "link", &b"x"[..]).unwrap();
        let bytes = b.into_inner().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let err = extract_tar(bytes.as_slice(), dir.path())
            .unwrap_err()
            .to_string();
        assert!(err.contains("files layers hold only files"), "{err}");
    }
}

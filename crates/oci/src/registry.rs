//! Talking to a registry: authentication, push (skipping blobs it has), pull (verifying every
//! blob, resuming interrupted downloads) and plain-HTTP rules.

use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use futures::StreamExt as _;
use oci_client::client::{BlobResponse, ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::manifest::{OciDescriptor, OciImageIndex, OciImageManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt as _;

use crate::image::ImageBuild;
use crate::store::{Store, VerificationError, digest_hex, hex, sha256_digest};
use crate::{ImageKind, limits, media};

/// Per-operation network timeout unless told otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// How to reach registries.
#[derive(Debug, Clone)]
pub struct Options {
    /// Use plain HTTP for this registry even though it is not on loopback.
    pub insecure: bool,
    /// Bound on connecting and on every read.
    pub timeout: Duration,
    /// Draw progress bars (on a terminal).
    pub progress: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            insecure: false,
            timeout: DEFAULT_TIMEOUT,
            progress: false,
        }
    }
}

/// Parses an image reference (`registry/repository[:tag][@digest]`).
pub fn parse_reference(s: &str) -> anyhow::Result<Reference> {
    let s = s.strip_prefix("oci://").unwrap_or(s);
    if let Some(r) = parse_explicit(s) {
        return Ok(r);
    }
    s.parse::<Reference>().map_err(|e| {
        anyhow!(
            "`{s}` is not an image reference: {e}\n  help: write REGISTRY/REPOSITORY[:TAG], e.g. localhost:5000/shop:1.0"
        )
    })
}

/// Parses the common form `host[:port]/repo/path[:tag][@sha256:hex]` (a host with a dot, a port
/// or `localhost`) without oci-spec's reference regex, whose compilation costs tens of
/// milliseconds per process (far more on a board). Anything else goes to the full parser.
fn parse_explicit(s: &str) -> Option<Reference> {
    let (registry, rest) = s.split_once('/')?;
    if !(registry.contains('.') || registry.contains(':') || registry == "localhost")
        || registry.is_empty()
        || !registry
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
    {
        return None;
    }
    let (name, digest) = match rest.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (rest, None),
    };
    let (repository, tag) = match name.rsplit_once(':') {
        Some((r, t)) if !t.contains('/') => (r, Some(t)),
        _ => (name, None),
    };
    let component_ok = |c: &str| {
        !c.is_empty()
            && c.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
            && c.starts_with(|ch: char| ch.is_ascii_alphanumeric())
            && c.ends_with(|ch: char| ch.is_ascii_alphanumeric())
    };
    if repository.len() > 255 || !repository.split('/').all(component_ok) {
        return None;
    }
    if let Some(t) = tag
        && (t.is_empty()
            || t.len() > 128
            || t.starts_with(['.', '-'])
            || !t
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)))
    {
        return None;
    }
    if let Some(d) = digest {
        digest_hex(d).ok()?;
    }
    let (registry, repository) = (registry.to_string(), repository.to_string());
    Some(match (tag, digest) {
        (Some(t), Some(d)) => {
            Reference::with_tag_and_digest(registry, repository, t.to_string(), d.to_string())
        }
        (None, Some(d)) => Reference::with_digest(registry, repository, d.to_string()),
        (Some(t), None) => Reference::with_tag(registry, repository, t.to_string()),
        (None, None) => Reference::with_tag(registry, repository, "latest".to_string()),
    })
}

/// Whether `registry` (`host[:port]`) is this machine, where plain HTTP is the norm.
pub fn is_loopback(registry: &str) -> bool {
    let host = if let Some(rest) = registry.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else {
        registry.rsplit_once(':').map_or(registry, |(h, _)| h)
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn install_crypto() {
    // Idempotent: fails only when a provider is already installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn scheme(registry: &str, options: &Options) -> &'static str {
    if options.insecure || is_loopback(registry) {
        "http"
    } else {
        "https"
    }
}

/// The manifest of an image, as pulled.
#[derive(Debug, Clone)]
pub struct Pulled {
    pub digest: String,
    pub manifest: OciImageManifest,
    pub kind: ImageKind,
    /// Bytes downloaded (blobs already in the store are not counted).
    pub downloaded: u64,
}

/// An image's manifest, config and (for an app image) app manifest, read without its layers.
#[derive(Debug, Clone)]
pub struct Described {
    pub digest: String,
    pub manifest: OciImageManifest,
    pub config: Vec<u8>,
    pub app_manifest: Option<String>,
}

/// What a push did.
#[derive(Debug, Clone)]
pub struct PushReport {
    pub digest: String,
    pub uploaded: usize,
    pub skipped: usize,
    pub bytes: u64,
}

/// An image wms cannot read: says so, and what to do.
fn malformed(doing: &str, reference: &Reference, what: &str) -> anyhow::Error {
    anyhow!(
        "{doing}: {reference} is not a well-formed image: {what}\n  help: `wms inspect --remote {reference}` shows what it holds; ask its publisher to push it again"
    )
}

/// A manifest as fetched: an image manifest (bytes, digest, parsed), or an index.
enum Manifest {
    Image(Vec<u8>, String, Box<OciImageManifest>),
    Index(Box<OciImageIndex>),
}

/// The entry of an index that is a wasm image.
pub(crate) fn wasm_entry(index: &OciImageIndex) -> Option<&oci_client::manifest::ImageIndexEntry> {
    index.manifests.iter().find(|m| {
        m.platform.as_ref().is_some_and(|p| {
            p.architecture.to_string() == "wasm" || p.os.to_string().starts_with("wasi")
        })
    })
}

enum Fetched {
    Done,
    /// A resumed download did not verify; the partial file is gone.
    BadResume,
}

/// A connection to the registry of one reference, with its credentials.
pub struct Registry {
    client: Client,
    auth: RegistryAuth,
    auth_source: String,
    reference: Reference,
    options: Options,
}

impl Registry {
    pub async fn connect(reference: &Reference, options: &Options) -> anyhow::Result<Self> {
        install_crypto();
        let registry = reference.resolve_registry().to_string();
        let protocol = if scheme(&registry, options) == "http" {
            ClientProtocol::HttpsExcept(vec![registry.clone()])
        } else {
            ClientProtocol::Https
        };
        let config = ClientConfig {
            protocol,
            connect_timeout: Some(options.timeout),
            read_timeout: Some(options.timeout),
            platform_resolver: None,
            user_agent: concat!("wms/", env!("CARGO_PKG_VERSION")),
            ..Default::default()
        };
        let client = Client::try_from(config)
            .map_err(|e| anyhow!("cannot set up an HTTP client for {registry}: {e}"))?;
        let (auth, auth_source) = crate::auth::lookup(&registry, options.timeout).await;
        Ok(Self {
            client,
            auth,
            auth_source,
            reference: reference.clone(),
            options: options.clone(),
        })
    }

    fn registry(&self) -> &str {
        self.reference.resolve_registry()
    }

    /// Turns a client error into one that says what failed and what to do.
    fn explain(&self, e: OciDistributionError, doing: &str) -> anyhow::Error {
        let registry = self.registry();
        let text = e.to_string();
        let mut cause = String::new();
        let mut source: Option<&dyn std::error::Error> = std::error::Error::source(&e);
        while let Some(s) = source {
            cause = s.to_string();
            source = s.source();
        }
        // The client reports a refusal or a missing image in several shapes (typed errors,
        // registry error codes, bare HTTP statuses); each kind gets one message.
        let refused = matches!(
            &e,
            OciDistributionError::UnauthorizedError { .. }
                | OciDistributionError::AuthenticationFailure(_)
        ) || text.contains("UNAUTHORIZED")
            || text.contains("DENIED")
            || matches!(&e, OciDistributionError::RequestError(r)
                if r.status().is_some_and(|s| s.as_u16() == 401 || s.as_u16() == 403));
        let missing = matches!(&e, OciDistributionError::ImageManifestNotFoundError(_))
            || text.contains("MANIFEST_UNKNOWN")
            || text.contains("NAME_UNKNOWN");
        if refused {
            let help = match self.auth {
                RegistryAuth::Anonymous => format!("log in first: `wms login {registry}`"),
                _ => format!(
                    "check the user name and password, or log in again: `wms login {registry}`"
                ),
            };
            return anyhow!(
                "{doing}: registry {registry} refused {}\n  help: {help}",
                self.auth_source
            );
        }
        if missing {
            return anyhow!(
                "{doing}: {} does not exist in registry {registry}\n  help: check the repository and tag; `wms push` publishes one",
                self.reference
            );
        }
        match &e {
            OciDistributionError::RequestError(r) if r.is_connect() || r.is_timeout() => {
                let what = if r.is_timeout() {
                    format!("no answer within {:?}", self.options.timeout)
                } else {
                    cause.clone()
                };
                let hint = if scheme(registry, &self.options) == "https" {
                    "; a plain-HTTP registry off this machine needs --insecure"
                } else {
                    ""
                };
                anyhow!(
                    "{doing}: cannot reach registry {registry} at {}://{registry}: {what}\n  help: check the address and that the registry is running{hint}",
                    scheme(registry, &self.options)
                )
            }
            OciDistributionError::RequestError(_) => anyhow!(
                "{doing}: talking to registry {registry} failed: {text}{}\n  help: check the address and the registry's scheme (HTTPS unless on loopback or --insecure)",
                if cause.is_empty() || text.contains(&cause) {
                    String::new()
                } else {
                    format!(" ({cause})")
                }
            ),
            _ => anyhow!("{doing}: registry {registry}: {text}"),
        }
    }

    async fn authorize(&self, op: RegistryOperation, doing: &str) -> anyhow::Result<()> {
        self.client
            .auth(&self.reference, &self.auth, op)
            .await
            .map(|_| ())
            .map_err(|e| self.explain(e, doing))
    }

    /// Fetches the manifest `reference` names (following an image index to its wasm entry),
    /// checks its digest and size, and returns it with its bytes.
    async fn fetch_manifest(
        &self,
        reference: &Reference,
        doing: &str,
    ) -> anyhow::Result<(Vec<u8>, String, OciImageManifest)> {
        match self.fetch_one_manifest(reference, doing).await? {
            Manifest::Image(bytes, digest, manifest) => Ok((bytes, digest, *manifest)),
            Manifest::Index(index) => {
                let entry = wasm_entry(&index).ok_or_else(|| {
                    let platforms: Vec<String> = index
                        .manifests
                        .iter()
                        .map(|m| m.platform.as_ref().map_or("?".into(), |p| format!("{}/{}", p.os, p.architecture)))
                        .collect();
                    anyhow!(
                        "{doing}: {reference} is a multi-platform image without a wasm entry (it has {})\n  help: this is a container image; wms runs wasm images",
                        platforms.join(", ")
                    )
                })?;
                digest_hex(&entry.digest).map_err(|e| {
                    malformed(doing, reference, &format!("its index's wasm entry: {e:#}"))
                })?;
                if entry.size < 0 || entry.size as u64 > limits::MANIFEST {
                    return Err(malformed(
                        doing,
                        reference,
                        &format!(
                            "its index's wasm entry {} is listed with {} bytes; wms reads manifests of at most {}",
                            entry.digest,
                            entry.size,
                            limits::human(limits::MANIFEST)
                        ),
                    ));
                }
                let inner = Reference::with_digest(
                    reference.registry().to_string(),
                    reference.repository().to_string(),
                    entry.digest.clone(),
                );
                // Exactly one level: an index whose wasm entry is another index is refused, so a
                // publisher cannot make wms walk a chain of indexes.
                match self.fetch_one_manifest(&inner, doing).await? {
                    Manifest::Image(bytes, digest, manifest) => Ok((bytes, digest, *manifest)),
                    Manifest::Index(_) => Err(malformed(
                        doing,
                        reference,
                        &format!(
                            "its wasm entry {} is itself an image index; wms follows one level of index, to an image manifest",
                            entry.digest
                        ),
                    )),
                }
            }
        }
    }

    /// Fetches one manifest or index, checking its digest against a `@sha256:` reference and its
    /// size against [`limits::MANIFEST`].
    async fn fetch_one_manifest(
        &self,
        reference: &Reference,
        doing: &str,
    ) -> anyhow::Result<Manifest> {
        let accepted = [
            media::OCI_MANIFEST,
            media::OCI_INDEX,
            media::DOCKER_MANIFEST,
            media::DOCKER_LIST,
        ];
        // The client reads a manifest response whole; the cap is checked on what arrived.
        let (bytes, _) = self
            .client
            .pull_manifest_raw(reference, &self.auth, &accepted)
            .await
            .map_err(|e| self.explain(e, doing))?;
        if bytes.len() as u64 > limits::MANIFEST {
            return Err(malformed(
                doing,
                reference,
                &format!(
                    "its manifest has {} bytes, over wms's {} limit for a manifest",
                    bytes.len(),
                    limits::human(limits::MANIFEST)
                ),
            ));
        }
        let digest = sha256_digest(&bytes);
        if let Some(expected) = reference.digest()
            && expected != digest
        {
            return Err(VerificationError {
                expected: expected.to_string(),
                found: format!("the registry sent a manifest with digest {digest}"),
            }
            .into());
        }
        let value: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| malformed(doing, reference, &format!("its manifest is not JSON ({e})")))?;
        if value.get("manifests").is_some() {
            let index: OciImageIndex = serde_json::from_value(value)
                .map_err(|e| malformed(doing, reference, &format!("bad image index ({e})")))?;
            return Ok(Manifest::Index(Box::new(index)));
        }
        let manifest: OciImageManifest = serde_json::from_value(value)
            .map_err(|e| malformed(doing, reference, &format!("bad image manifest ({e})")))?;
        Ok(Manifest::Image(bytes.to_vec(), digest, Box::new(manifest)))
    }

    /// Reads an image's manifest and config without downloading its layers.
    pub async fn describe(&self) -> anyhow::Result<Described> {
        let doing = format!("cannot inspect {}", self.reference);
        self.authorize(RegistryOperation::Pull, &doing).await?;
        let (_, digest, manifest) = self.fetch_manifest(&self.reference, &doing).await?;
        let config = self.small_blob(&manifest.config, true, &doing).await?;
        let app_manifest = match manifest
            .layers
            .iter()
            .find(|l| l.media_type == media::APP_MANIFEST)
        {
            Some(l) => Some(
                String::from_utf8_lossy(&self.small_blob(l, false, &doing).await?).into_owned(),
            ),
            None => None,
        };
        Ok(Described {
            digest,
            manifest,
            config,
            app_manifest,
        })
    }

    /// Fetches a small blob (config, app manifest) into memory, verified.
    async fn small_blob(
        &self,
        d: &OciDescriptor,
        is_config: bool,
        doing: &str,
    ) -> anyhow::Result<Vec<u8>> {
        digest_hex(&d.digest).map_err(|e| malformed(doing, &self.reference, &format!("{e:#}")))?;
        limits::check(&d.digest, d.size, &d.media_type, is_config)
            .map_err(|e| malformed(doing, &self.reference, &e))?;
        // Streamed with the cap enforced on what arrives: the declared size is the registry's
        // word, not a bound on what it sends.
        let mut stream = self
            .client
            .pull_blob_stream(&self.reference, d)
            .await
            .map_err(|e| self.explain(e, doing))?
            .stream;
        let mut bytes = Vec::with_capacity(d.size as usize);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| anyhow!("{doing}: blob {}: {e}", d.digest))?;
            if (bytes.len() + chunk.len()) as u64 > d.size as u64 {
                return Err(VerificationError {
                    expected: d.digest.clone(),
                    found: format!(
                        "the registry sent more than the {} bytes the manifest lists",
                        d.size
                    ),
                }
                .into());
            }
            bytes.extend_from_slice(&chunk);
        }
        let found = sha256_digest(&bytes);
        if found != d.digest || bytes.len() as i64 != d.size {
            return Err(VerificationError {
                expected: d.digest.clone(),
                found: format!(
                    "the registry sent {} bytes with digest {found}",
                    bytes.len()
                ),
            }
            .into());
        }
        Ok(bytes)
    }

    /// Pulls the image into `store`: manifest, config and layers, each verified before it is
    /// stored. Precompiled layers are fetched only for `precompiled_target`.
    pub async fn pull(
        &self,
        store: &Store,
        precompiled_target: Option<&str>,
    ) -> anyhow::Result<Pulled> {
        let doing = format!("cannot pull {}", self.reference);
        self.authorize(RegistryOperation::Pull, &doing).await?;
        let (bytes, digest, manifest) = self.fetch_manifest(&self.reference, &doing).await?;
        let kind = ImageKind::classify(&manifest).map_err(|e| anyhow!("{doing}: {e}"))?;
        // The image as a whole, before anything is downloaded: each layer is capped, and so
        // are their number and total size (a board's storage is a few GiB).
        let wanted = limits::wanted_blobs(&manifest, precompiled_target)
            .map_err(|e| malformed(&doing, &self.reference, &e))?;
        for (i, d) in wanted.iter().enumerate() {
            digest_hex(&d.digest)
                .map_err(|e| malformed(&doing, &self.reference, &format!("{e:#}")))?;
            // Before anything is downloaded: a descriptor over its cap fails the pull whole.
            limits::check(&d.digest, d.size, &d.media_type, i == 0)
                .map_err(|e| malformed(&doing, &self.reference, &e))?;
        }
        let missing: Vec<&OciDescriptor> = wanted
            .into_iter()
            .filter(|d| !store.has_blob(&d.digest, d.size as u64))
            .collect();
        let total: u64 = missing.iter().map(|d| d.size as u64).sum();
        let bar = progress_bar(
            self.options.progress,
            total,
            &format!("pull {}", self.reference),
        );
        for d in &missing {
            self.fetch_blob(store, d, &bar, &doing).await?;
        }
        bar.finish_and_clear();
        store.put_blob(&digest, &bytes)?;
        store.set_ref(&self.reference, &digest)?;
        Ok(Pulled {
            digest,
            manifest,
            kind,
            downloaded: total,
        })
    }

    /// Downloads one blob into the store, resuming a partial download when the registry honours
    /// range requests, and checking size and digest before the blob is committed.
    async fn fetch_blob(
        &self,
        store: &Store,
        d: &OciDescriptor,
        bar: &indicatif::ProgressBar,
        doing: &str,
    ) -> anyhow::Result<()> {
        // One download of a blob at a time across processes (a service and an operator pulling
        // the same image): the others wait, then find the blob stored.
        let lock_path = store.partial_path(&d.digest)?.with_extension("lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .with_context(|| format!("cannot create {}", lock_path.display()))?;
        let lock = tokio::task::spawn_blocking(move || lock.lock().map(|()| lock))
            .await
            .context("lock task failed")?
            .with_context(|| format!("cannot lock {}", lock_path.display()))?;
        if store.has_blob(&d.digest, d.size as u64) {
            bar.inc(d.size as u64);
            return Ok(());
        }
        let fetched = self.fetch_blob_locked(store, d, bar, doing).await;
        drop(lock);
        fetched
    }

    async fn fetch_blob_locked(
        &self,
        store: &Store,
        d: &OciDescriptor,
        bar: &indicatif::ProgressBar,
        doing: &str,
    ) -> anyhow::Result<()> {
        match self.fetch_blob_once(store, d, bar, doing, true).await? {
            Fetched::Done => Ok(()),
            Fetched::BadResume => {
                // The bytes kept from an earlier attempt were not a prefix of this blob (or the
                // registry changed it since): start again from nothing, once.
                tracing::warn!(
                    "blob {}: the resumed download did not verify; downloading it again from the start",
                    d.digest
                );
                bar.set_position(0);
                match self.fetch_blob_once(store, d, bar, doing, false).await? {
                    Fetched::Done => Ok(()),
                    Fetched::BadResume => unreachable!("no resume on a fresh download"),
                }
            }
        }
    }

    async fn fetch_blob_once(
        &self,
        store: &Store,
        d: &OciDescriptor,
        bar: &indicatif::ProgressBar,
        doing: &str,
        may_resume: bool,
    ) -> anyhow::Result<Fetched> {
        let size = d.size as u64;
        let partial = store.partial_path(&d.digest)?;
        let mut have = std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
        if have > size || !may_resume {
            have = 0;
        }
        let mut hasher = Sha256::new();
        if have > 0 {
            // Streamed, not read whole: a partial download may be most of a large blob.
            use std::io::Read as _;
            let mut f = std::fs::File::open(&partial)?.take(have);
            std::io::copy(&mut f, &mut hasher)?;
        }
        let (stream, resumed) = if have > 0 && have < size {
            match self
                .client
                .pull_blob_stream_partial(&self.reference, d, have, None)
                .await
                .map_err(|e| self.explain(e, doing))?
            {
                BlobResponse::Partial(s) => (s, true),
                BlobResponse::Full(s) => (s, false),
            }
        } else if have == size && size > 0 {
            // Everything arrived last time but was not committed: check it now.
            (
                oci_client::client::SizedStream {
                    content_length: Some(0),
                    digest_header_value: None,
                    stream: futures::stream::empty().boxed(),
                },
                true,
            )
        } else {
            let s = self
                .client
                .pull_blob_stream(&self.reference, d)
                .await
                .map_err(|e| self.explain(e, doing))?;
            (s, false)
        };
        if !resumed {
            have = 0;
            hasher = Sha256::new();
        } else if have > 0 {
            tracing::info!("resuming blob {} at byte {have} of {size}", d.digest);
        }
        bar.inc(have);
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(resumed)
            .truncate(!resumed)
            .open(&partial)
            .await
            .with_context(|| format!("cannot write {}", partial.display()))?;
        let mut stream = stream.stream;
        let mut written = have;
        let mut stream_error = None;
        while let Some(chunk) = stream.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    stream_error = Some(e);
                    break;
                }
            };
            if written + chunk.len() as u64 > size {
                drop(file);
                let _ = std::fs::remove_file(&partial);
                return Err(VerificationError {
                    expected: d.digest.clone(),
                    found: format!(
                        "the registry sent more than the {size} bytes the manifest lists"
                    ),
                }
                .into());
            }
            hasher.update(&chunk);
            file.write_all(&chunk).await?;
            written += chunk.len() as u64;
            bar.inc(chunk.len() as u64);
        }
        file.flush().await?;
        file.sync_all().await?;
        drop(file);
        if written < size {
            let why =
                stream_error.map_or("the connection closed early".to_string(), |e| e.to_string());
            bail!(
                "{doing}: download of blob {} stopped after {written} of {size} bytes: {why}\n  help: run the command again; it resumes where it stopped",
                d.digest
            );
        }
        let found = format!("sha256:{}", hex(&hasher.finalize()));
        if found != d.digest {
            let _ = std::fs::remove_file(&partial);
            if resumed && have > 0 {
                return Ok(Fetched::BadResume);
            }
            return Err(anyhow::Error::from(VerificationError {
                expected: d.digest.clone(),
                found: format!("the registry sent {size} bytes with digest {found}"),
            })
            .context(format!("{doing} from registry {}", self.registry())));
        }
        // The verifying stream of the client may flag the same mismatch; we checked ourselves.
        let path = store.blob_path(&d.digest)?;
        store.commit(&partial, &path)?;
        Ok(Fetched::Done)
    }

    /// Pushes `image` under this reference: blobs the registry already has are skipped, then
    /// the manifest. Returns the manifest digest.
    pub async fn push(&self, image: &ImageBuild) -> anyhow::Result<PushReport> {
        let doing = format!("cannot push {}", self.reference);
        self.authorize(RegistryOperation::Push, &doing).await?;
        self.authorize(RegistryOperation::Pull, &doing).await?;
        let blobs: Vec<&crate::image::Blob> = std::iter::once(&image.config)
            .chain(image.layers.iter())
            .collect();
        let bar = progress_bar(
            self.options.progress,
            image.size(),
            &format!("push {}", self.reference),
        );
        let mut report = PushReport {
            digest: image.digest(),
            uploaded: 0,
            skipped: 0,
            bytes: 0,
        };
        for blob in blobs {
            let digest = blob.digest();
            let len = blob.data.len() as u64;
            let exists = self
                .client
                .blob_exists(&self.reference, &digest)
                .await
                .map_err(|e| self.explain(e, &doing))?;
            if exists {
                tracing::debug!("registry already has {digest}; skipped");
                report.skipped += 1;
                bar.inc(len);
                continue;
            }
            let chunks: Vec<bytes::Bytes> = (0..blob.data.len())
                .step_by(1 << 20)
                .map(|i| blob.data.slice(i..blob.data.len().min(i + (1 << 20))))
                .collect();
            let bar2 = bar.clone();
            let stream = futures::stream::iter(chunks).map(move |c| {
                bar2.inc(c.len() as u64);
                Ok(c)
            });
            self.client
                .push_blob_stream(&self.reference, stream, &digest, Some(len))
                .await
                .map_err(|e| self.explain(e, &doing))?;
            report.uploaded += 1;
            report.bytes += len;
        }
        self.client
            .push_manifest_raw(
                &self.reference,
                image.manifest.clone(),
                http::HeaderValue::from_static(media::OCI_MANIFEST),
            )
            .await
            .map_err(|e| self.explain(e, &doing))?;
        bar.finish_and_clear();
        Ok(report)
    }
}

fn progress_bar(show: bool, total: u64, message: &str) -> indicatif::ProgressBar {
    if !show || total == 0 {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_message(message.to_string());
    bar
}

/// Checks `user`/`password` against `registry` (basic, or token auth with them) and stores them
/// in the Docker config. Returns the config file's path.
pub async fn login(
    registry: &str,
    user: &str,
    password: &str,
    options: &Options,
) -> anyhow::Result<std::path::PathBuf> {
    install_crypto();
    let scheme = scheme(registry, options);
    let client = reqwest::Client::builder()
        .connect_timeout(options.timeout)
        .read_timeout(options.timeout)
        .build()
        .context("cannot set up an HTTP client")?;
    let url = format!("{scheme}://{registry}/v2/");
    let unreachable = |e: reqwest::Error| {
        anyhow!(
            "cannot log in to {registry}: cannot reach {url}: {}\n  help: check the address and that the registry is running{}",
            root_cause(&e),
            if scheme == "https" {
                "; a plain-HTTP registry off this machine needs --insecure"
            } else {
                ""
            }
        )
    };
    let res = client
        .get(&url)
        .basic_auth(user, Some(password))
        .send()
        .await
        .map_err(unreachable)?;
    let refused = || {
        anyhow!(
            "cannot log in to {registry}: the registry refused user `{user}` with this password\n  help: check the user name and password"
        )
    };
    match res.status().as_u16() {
        200..=299 => {}
        401 => {
            let challenge = res
                .headers()
                .get(reqwest::header::WWW_AUTHENTICATE)
                .and_then(|h| h.to_str().ok())
                .unwrap_or("")
                .to_string();
            let Some(realm) = bearer_param(&challenge, "realm") else {
                return Err(refused());
            };
            check_realm(registry, &realm, options)?;
            let mut req = client.get(&realm).basic_auth(user, Some(password));
            if let Some(service) = bearer_param(&challenge, "service") {
                req = req.query(&[("service", service)]);
            }
            let token = req.send().await.map_err(unreachable)?;
            if !token.status().is_success() {
                return Err(refused());
            }
        }
        code => bail!(
            "cannot log in to {registry}: {url} answered HTTP {code}; is this an OCI registry?"
        ),
    }
    crate::auth::store(registry, user, password)
}

/// Refuses a token service the password would travel to in clear text: `wms login` sends the
/// basic credentials to the realm the registry names, and a registry (or whoever answers in its
/// place) may name any URL. Plain HTTP is accepted only when the token service is on this machine
/// (its host is loopback), or with `--insecure`. A loopback registry does not vouch for its
/// realm: `localhost:5000` is often a tunnel or proxy to a remote registry, whose
/// `http://` token service would get the password over the network.
fn check_realm(registry: &str, realm: &str, options: &Options) -> anyhow::Result<()> {
    let lower = realm.to_ascii_lowercase();
    if lower.starts_with("https://") {
        return Ok(());
    }
    if let Some(rest) = lower.strip_prefix("http://") {
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        if options.insecure || is_loopback(host_port) {
            return Ok(());
        }
        bail!(
            "cannot log in to {registry}: its token service {realm} is plain HTTP off this machine, so the password would cross the network unencrypted; nothing was sent to it\n  help: use a registry whose token service is HTTPS, or pass --insecure if this network is trusted"
        );
    }
    bail!(
        "cannot log in to {registry}: its token service `{realm}` is not an http(s) URL; nothing was sent to it"
    )
}

fn bearer_param(challenge: &str, key: &str) -> Option<String> {
    let rest = challenge.strip_prefix("Bearer ")?;
    rest.split(',').find_map(|kv| {
        let (k, v) = kv.trim().split_once('=')?;
        (k == key).then(|| v.trim_matches('"').to_string())
    })
}

fn root_cause(e: &dyn std::error::Error) -> String {
    let mut cause = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        cause = s.to_string();
        source = s.source();
    }
    cause
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_registries_get_plain_http() {
        assert!(is_loopback("127.0.0.1:5000"));
        assert!(is_loopback("localhost:5000"));
        assert!(is_loopback("[::1]:5000"));
        assert!(is_loopback("localhost"));
        assert!(!is_loopback("registry.example.com:5000"));
        assert!(!is_loopback("10.0.0.1:5000"));
        let o = Options::default();
        assert_eq!(scheme("10.0.0.1:5000", &o), "https");
        let insecure = Options {
            insecure: true,
            ..o
        };
        assert_eq!(scheme("10.0.0.1:5000", &insecure), "http");
    }

    #[test]
    fn explicit_references_parse_like_the_full_parser() {
        for r in [
            "localhost:5000/shop:1.0",
            "127.0.0.1:5000/team/hello-api",
            "registry.example.com/a/b/c:v1.2_3",
            "ghcr.io/org/app@sha256:0000000000000000000000000000000000000000000000000000000000000000",
            "ghcr.io/org/app:1@sha256:0000000000000000000000000000000000000000000000000000000000000000",
        ] {
            let fast = parse_explicit(r).unwrap_or_else(|| panic!("{r} not parsed"));
            let full: Reference = r.parse().unwrap();
            assert_eq!(fast, full, "{r}");
        }
        // Left to the full parser (which accepts or rejects them with its own message).
        for r in [
            "nginx",
            "library/nginx:1",
            "Localhost:5000/Shop",
            "host.io/a//b",
            "host.io/a:",
        ] {
            assert!(parse_explicit(r).is_none(), "{r}");
        }
    }

    #[test]
    fn passwords_go_to_plain_http_token_services_only_on_loopback_or_insecure() {
        let o = Options::default();
        assert!(check_realm("registry.example.com", "https://auth.example.com/token", &o).is_ok());
        let err = check_realm("registry.example.com", "http://auth.example.com/token", &o)
            .unwrap_err()
            .to_string();
        assert!(err.contains("plain HTTP"), "{err}");
        assert!(err.contains("--insecure"), "{err}");
        // A loopback registry naming a remote plain-HTTP token service (a tunnel, a proxy).
        assert!(check_realm("127.0.0.1:5000", "http://auth.example.com/token", &o).is_err());
        assert!(check_realm("127.0.0.1:5000", "http://127.0.0.1:5001/token", &o).is_ok());
        assert!(check_realm("localhost:5000", "http://localhost/token?x=1", &o).is_ok());
        assert!(check_realm("127.0.0.1:5000", "http://127.0.0.1@evil.example/t", &o).is_err());
        let insecure = Options {
            insecure: true,
            ..Options::default()
        };
        assert!(check_realm("10.0.0.1:5000", "http://10.0.0.1:5001/token", &insecure).is_ok());
        assert!(check_realm("registry.example.com", "file:///etc/passwd", &o).is_err());
    }

    #[test]
    fn token_challenges_are_parsed() {
        let c = r#"Bearer realm="https://auth.example.com/token",service="registry.example.com""#;
        assert_eq!(
            bearer_param(c, "realm").as_deref(),
            Some("https://auth.example.com/token")
        );
        assert_eq!(
            bearer_param(c, "service").as_deref(),
            Some("registry.example.com")
        );
        assert_eq!(bearer_param(r#"Basic realm="x""#, "realm"), None);
    }
}

//! Building images to push: a single component as the CNCF TAG Runtime wasm artifact, or a whole
//! app (manifest, components, files, optional precompiled code) as a wms app image.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use oci_client::manifest::{OciDescriptor, OciImageManifest};
use serde::{Deserialize, Serialize};
use wms_manifest::App;

use crate::media;
use crate::meta::{self, ComponentInfo};
use crate::store::sha256_digest;

/// One blob of an image with its descriptor fields.
#[derive(Debug, Clone)]
pub struct Blob {
    pub media_type: String,
    pub data: Bytes,
    pub annotations: BTreeMap<String, String>,
    /// sha256 of `data`, computed once (components are megabytes; the digest is asked for by
    /// deduplication, the descriptor, the config and the push).
    digest: String,
}

impl Blob {
    pub fn new(media_type: &str, data: impl Into<Bytes>) -> Self {
        let data = data.into();
        Self {
            media_type: media_type.to_string(),
            digest: sha256_digest(&data),
            data,
            annotations: BTreeMap::new(),
        }
    }

    fn annotate(mut self, key: &str, value: impl Into<String>) -> Self {
        self.annotations.insert(key.to_string(), value.into());
        self
    }

    pub fn digest(&self) -> String {
        self.digest.clone()
    }

    pub fn descriptor(&self) -> OciDescriptor {
        OciDescriptor {
            media_type: self.media_type.clone(),
            digest: self.digest(),
            size: self.data.len() as i64,
            urls: None,
            annotations: (!self.annotations.is_empty()).then(|| self.annotations.clone()),
            ..Default::default()
        }
    }
}

/// An image ready to push: config, layers and the manifest bytes that name them.
#[derive(Debug, Clone)]
pub struct ImageBuild {
    pub config: Blob,
    pub layers: Vec<Blob>,
    pub manifest: Bytes,
}

impl ImageBuild {
    pub(crate) fn assemble(config: Blob, layers: Vec<Blob>, created: &str) -> anyhow::Result<Self> {
        let manifest = OciImageManifest {
            schema_version: 2,
            media_type: Some(media::OCI_MANIFEST.to_string()),
            config: config.descriptor(),
            layers: layers.iter().map(Blob::descriptor).collect(),
            subject: None,
            artifact_type: None,
            annotations: Some(BTreeMap::from([(
                media::ANN_CREATED.to_string(),
                created.to_string(),
            )])),
        };
        let manifest = serde_json::to_vec_pretty(&manifest)?.into();
        Ok(Self {
            config,
            layers,
            manifest,
        })
    }

    pub fn digest(&self) -> String {
        sha256_digest(&self.manifest)
    }

    /// Total bytes of config and layers.
    pub fn size(&self) -> u64 {
        (self.config.data.len() + self.layers.iter().map(|l| l.data.len()).sum::<usize>()) as u64
    }
}

/// The config of a wasm artifact (`application/vnd.wasm.config.v0+json`), field names as the
/// CNCF TAG Runtime spec and `wkg` write them.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WasmConfig {
    pub created: String,
    #[serde(default)]
    pub author: Option<String>,
    pub architecture: String,
    pub os: String,
    #[serde(default)]
    pub layer_digests: Vec<String>,
    #[serde(default)]
    pub component: Option<ComponentInfo>,
}

/// The image's creation time: `SOURCE_DATE_EPOCH` when set, else the newest modification time
/// of its inputs. Either way, pushing unchanged inputs again gives the same digests (nothing to
/// upload, nothing for a fleet to redeploy).
fn created_time(inputs: &[&Path]) -> String {
    let time = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .map(|secs| std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
        .or_else(|| {
            inputs
                .iter()
                .filter_map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
                .max()
        })
        .unwrap_or_else(std::time::SystemTime::now);
    humantime::format_rfc3339_seconds(time).to_string()
}

/// A single wasm module or component as the CNCF TAG Runtime wasm artifact: one
/// `application/wasm` layer, read by `wkg`, runwasi's shims and wms.
pub fn component_artifact(wasm: Vec<u8>, file: &Path) -> anyhow::Result<ImageBuild> {
    let info = meta::inspect(&wasm, &file.display().to_string())?;
    let created = created_time(&[file]);
    let layer = Blob::new(media::WASM_LAYER, wasm).annotate(
        media::ANN_TITLE,
        file.file_name().map_or("component.wasm".into(), |n| {
            n.to_string_lossy().into_owned()
        }),
    );
    let config = WasmConfig {
        created: created.clone(),
        author: None,
        architecture: "wasm".into(),
        os: info.os.into(),
        layer_digests: vec![layer.digest()],
        component: info.component,
    };
    let config = Blob::new(media::WASM_CONFIG, serde_json::to_vec(&config)?);
    ImageBuild::assemble(config, vec![layer], &created)
}

/// Code precompiled for one target by `wms compile`, to push beside an app's wasm.
#[derive(Debug, Clone)]
pub struct Precompiled {
    /// `x86_64`, `aarch64`, `riscv64gc`, `pulley64`, ...
    pub target: String,
    pub component: String,
    /// The `.cwasm` file as `wms compile` wrote it (with its trailing checksum).
    pub code: Vec<u8>,
    /// sha256 hex of the wasm it was compiled from.
    pub wasm_sha256: String,
}

/// A whole app as a wms app image: an OCI image config (architecture `wasm`), one
/// `application/wasm` layer per component, one tar layer per component with files, optional
/// precompiled layers, and last the app manifest, whose sources name those layers by digest.
pub fn app_image(app: &App, precompiled: &[Precompiled]) -> anyhow::Result<ImageBuild> {
    let text = std::fs::read_to_string(&app.manifest_path)
        .with_context(|| format!("cannot read {}", app.manifest_path.display()))?;
    let mut doc: toml_edit::DocumentMut = text
        .parse()
        .with_context(|| format!("cannot parse {}", app.manifest_path.display()))?;
    let mut inputs: Vec<&Path> = vec![&app.manifest_path];
    inputs.extend(app.components.values().map(|c| c.source.as_path()));
    let mut layers: Vec<Blob> = Vec::new();
    let push_layer = |layers: &mut Vec<Blob>, blob: Blob| -> String {
        let digest = blob.digest();
        if !layers.iter().any(|l| l.digest() == digest) {
            layers.push(blob);
        }
        digest
    };
    let mut wasi = "wasip2";
    let mut file_times = Vec::new();
    for (id, c) in &app.components {
        let wasm = std::fs::read(&c.source).with_context(|| {
            format!(
                "component `{id}`: cannot read {}\n  help: build it first (`wms build`) or fix `source` in {}",
                c.source.display(),
                app.manifest_path.display()
            )
        })?;
        let info = meta::inspect(&wasm, &format!("component `{id}` ({})", c.source.display()))?;
        if info.os == "wasip1" {
            wasi = "wasip1";
        }
        let mut layer = Blob::new(media::WASM_LAYER, wasm)
            .annotate(media::ANN_TITLE, format!("{id}.wasm"))
            .annotate(media::ANN_COMPONENT, id.clone())
            .annotate(media::ANN_WASI, info.os);
        if let Some(world) = info.component.and_then(|c| c.target) {
            layer = layer.annotate(media::ANN_WORLD, world);
        }
        let digest = push_layer(&mut layers, layer);

        let table = doc
            .get_mut("component")
            .and_then(|t| t.get_mut(id.as_str()))
            .and_then(|t| t.as_table_like_mut())
            .with_context(|| {
                format!(
                    "component `{id}`: not found as a table in {}",
                    app.manifest_path.display()
                )
            })?;
        table.insert("source", digest_source(&digest));
        // Build steps and exclusions describe the source tree, not the image.
        table.remove("build");
        table.remove("exclude_files");
        table.remove("files");
        let files = wms_manifest::files::guest_files(&app.dir, c)?;
        file_times.extend(
            files
                .iter()
                .filter_map(|f| std::fs::metadata(&f.host).and_then(|m| m.modified()).ok()),
        );
        if !files.is_empty() {
            let tar = files_tar(&files)?;
            let digest = push_layer(
                &mut layers,
                Blob::new(media::FILES_TAR, tar)
                    .annotate(media::ANN_TITLE, format!("{id}-files.tar"))
                    .annotate(media::ANN_COMPONENT, id.clone()),
            );
            let mut mount = toml_edit::InlineTable::new();
            mount.insert("source", digest_source(&digest).into_value().unwrap());
            mount.insert("destination", "/".into());
            let mut arr = toml_edit::Array::new();
            arr.push(mount);
            table.insert("files", toml_edit::value(arr));
        }
    }
    for p in precompiled {
        push_layer(
            &mut layers,
            Blob::new(media::PRECOMPILED, p.code.clone())
                .annotate(
                    media::ANN_TITLE,
                    format!("{}.{}.cwasm", p.component, p.target),
                )
                .annotate(media::ANN_COMPONENT, p.component.clone())
                .annotate(media::ANN_TARGET, p.target.clone())
                .annotate(media::ANN_WASM_DIGEST, format!("sha256:{}", p.wasm_sha256)),
        );
    }
    layers.push(
        Blob::new(media::APP_MANIFEST, doc.to_string()).annotate(
            media::ANN_TITLE,
            app.manifest_path
                .file_name()
                .map_or("wms.toml".into(), |n| n.to_string_lossy().into_owned()),
        ),
    );
    let mut created = created_time(&inputs);
    if std::env::var_os("SOURCE_DATE_EPOCH").is_none()
        && let Some(newest) = file_times.into_iter().max()
    {
        let newest = humantime::format_rfc3339_seconds(newest).to_string();
        // RFC 3339 UTC timestamps of one format order as strings.
        created = created.max(newest);
    }
    let config = serde_json::json!({
        "created": created,
        "architecture": "wasm",
        "os": wasi,
        "config": {
            "Labels": {
                "dev.wms.app.name": app.name,
                "dev.wms.app.version": app.version.clone().unwrap_or_default(),
            }
        },
        "rootfs": {
            "type": "layers",
            "diff_ids": layers.iter().map(Blob::digest).collect::<Vec<_>>(),
        },
    });
    let config = Blob::new(media::OCI_IMAGE_CONFIG, serde_json::to_vec(&config)?);
    ImageBuild::assemble(config, layers, &created)
}

fn digest_source(digest: &str) -> toml_edit::Item {
    let mut t = toml_edit::InlineTable::new();
    t.insert("digest", digest.into());
    toml_edit::value(t)
}

/// A reproducible tar of `files` at their guest paths: sorted, owner 0, mtime 0, mode 0644.
fn files_tar(files: &[wms_manifest::files::GuestFile]) -> anyhow::Result<Vec<u8>> {
    let mut tar = tar::Builder::new(Vec::new());
    tar.mode(tar::HeaderMode::Deterministic);
    for f in files {
        let data =
            std::fs::read(&f.host).with_context(|| format!("cannot read {}", f.host.display()))?;
        let mut header = tar::Header::new_ustar();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_entry_type(tar::EntryType::Regular);
        tar.append_data(
            &mut header,
            f.guest.trim_start_matches('/'),
            data.as_slice(),
        )
        .with_context(|| format!("cannot pack {}", f.host.display()))?;
    }
    Ok(tar.into_inner()?)
}

/// Refuses to pack precompiled code into a plain wasm artifact: `wkg` and runwasi expect
/// exactly one layer there.
pub fn check_artifact_options(precompiled: bool) -> anyhow::Result<()> {
    if precompiled {
        bail!(
            "precompiled code cannot be added to a single-component wasm artifact: wkg and runwasi read those only with exactly one layer\n  help: push the app (its directory or manifest) instead of the .wasm file"
        );
    }
    Ok(())
}

//! wms images for containerd (`wms push --containerd`, read by the `containerd-shim-wms-v1`
//! shim).
//!
//! containerd 1.6 (Debian 12's) unpacks every layer of an image into a snapshot before a
//! container can start, and has no processor for `application/wasm` or wms's own layer types, so
//! it cannot pull a wms app image or a wasm artifact. containerd 1.7.7 and later skip such layers
//! but then want `rootfs.diff_ids` to list only the tar layers, which 1.6 refuses the other way
//! round: no image mixing tar and non-tar layers unpacks on both. So for containerd the image is
//! wrapped, unchanged, in a single plain tar layer that every containerd version (and Docker's
//! containerd image store) unpacks: `wms/manifest.json` is the wms image's manifest, byte for
//! byte, and `wms/blobs/sha256/HEX` holds its config and each of its layers. The shim reads that
//! bundle from the container's root filesystem and prepares it with [`crate::materialize`],
//! exactly as `wms up` prepares a pulled image: each blob is checked against its digest and caps
//! as it enters the store, and the app manifest is read as untrusted data naming only the image's
//! own layers.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use oci_client::manifest::{OciDescriptor, OciImageManifest};

use crate::image::{Blob, ImageBuild};
use crate::store::{self, Store};
use crate::{Materialized, Reference, limits, media};

/// Where the bundle lives in the container's root filesystem.
pub const BUNDLE_DIR: &str = "wms";
/// Layer annotation marking the bundle layer (its value is the bundle's format version).
pub const ANN_BUNDLE: &str = "dev.wms.bundle";

/// Wraps `image` (a wms app image or a wasm artifact) in a one-layer image containerd unpacks:
/// config `application/vnd.oci.image.config.v1+json` (platform `wasi/wasm`, as container tools
/// name wasm images: `docker run --platform wasi/wasm`; the wrapped image keeps its own OS), one
/// `application/vnd.oci.image.layer.v1.tar` layer holding the bundle.
pub fn containerd_image(image: &ImageBuild) -> anyhow::Result<ImageBuild> {
    let inner: serde_json::Value =
        serde_json::from_slice(&image.config.data).context("the image's config is not JSON")?;
    let manifest: OciImageManifest = serde_json::from_slice(&image.manifest)?;
    let created = manifest
        .annotations
        .as_ref()
        .and_then(|a| a.get(media::ANN_CREATED))
        .cloned()
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".to_string());

    let mut tar = tar::Builder::new(Vec::new());
    tar.mode(tar::HeaderMode::Deterministic);
    let dir = |tar: &mut tar::Builder<Vec<u8>>, path: &str| -> anyhow::Result<()> {
        let mut header = tar::Header::new_ustar();
        header.set_entry_type(tar::EntryType::Directory);
        header.set_mode(0o755);
        header.set_mtime(0);
        header.set_size(0);
        tar.append_data(&mut header, path, std::io::empty())?;
        Ok(())
    };
    let file = |tar: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8]| -> anyhow::Result<()> {
        let mut header = tar::Header::new_ustar();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_size(data.len() as u64);
        tar.append_data(&mut header, path, data)?;
        Ok(())
    };
    dir(&mut tar, &format!("{BUNDLE_DIR}/"))?;
    dir(&mut tar, &format!("{BUNDLE_DIR}/blobs/"))?;
    dir(&mut tar, &format!("{BUNDLE_DIR}/blobs/sha256/"))?;
    file(
        &mut tar,
        &format!("{BUNDLE_DIR}/manifest.json"),
        &image.manifest,
    )?;
    let mut written = std::collections::BTreeSet::new();
    for blob in std::iter::once(&image.config).chain(&image.layers) {
        let digest = blob.digest();
        if written.insert(digest.clone()) {
            let hex = store::digest_hex(&digest)?;
            file(
                &mut tar,
                &format!("{BUNDLE_DIR}/blobs/sha256/{hex}"),
                &blob.data,
            )?;
        }
    }
    let mut layer = Blob::new(media::FILES_TAR, tar.into_inner()?);
    layer.annotations = BTreeMap::from([
        (ANN_BUNDLE.to_string(), "v1".to_string()),
        (media::ANN_TITLE.to_string(), "wms-bundle.tar".to_string()),
    ]);
    // The wrapped image's labels stay visible to container tools; its other config keys (a wasm
    // artifact's `layerDigests`, `component`) mean nothing in an image config and stay inside.
    let mut process = serde_json::json!({
        // The container's arguments (containerd wants a process); the shim ignores them for apps.
        "Entrypoint": [format!("/{BUNDLE_DIR}/manifest.json")],
    });
    if let Some(labels) = inner.get("config").and_then(|c| c.get("Labels")) {
        process["Labels"] = labels.clone();
    }
    let config = serde_json::json!({
        "created": created,
        "architecture": "wasm",
        "os": "wasi",
        "config": process,
        "rootfs": { "type": "layers", "diff_ids": [layer.digest()] },
    });
    let config = Blob::new(media::OCI_IMAGE_CONFIG, serde_json::to_vec(&config)?);
    ImageBuild::assemble(config, vec![layer], &created)
}

/// Prepares the bundle found under `root` (a container's root filesystem) to run: the wrapped
/// manifest and every blob it names (this host's precompiled code only for `precompiled_target`)
/// enter `store` only after their caps, sizes and digests check out, then the image is
/// materialised exactly as a pulled one is for `wms up`.
pub fn materialize_bundle(
    store: &Store,
    reference: &Reference,
    root: &Path,
    precompiled_target: Option<&str>,
) -> anyhow::Result<Materialized> {
    let dir = root.join(BUNDLE_DIR);
    let manifest_path = dir.join("manifest.json");
    let bytes = read_regular(&manifest_path, limits::MANIFEST).with_context(|| {
        format!(
            "no wms image in this container ({} is missing or unreadable)\n  help: push the app with `wms push --containerd`",
            manifest_path.display()
        )
    })?;
    let digest = store::sha256_digest(&bytes);
    let manifest: OciImageManifest = serde_json::from_slice(&bytes)
        .with_context(|| format!("{} is not an image manifest", manifest_path.display()))?;
    crate::ImageKind::classify(&manifest)?;
    let wanted: Vec<(&OciDescriptor, bool)> = limits::wanted_blobs(&manifest, precompiled_target)
        .map_err(|e| anyhow::anyhow!("the bundled image has {e}"))?
        .into_iter()
        .enumerate()
        .map(|(i, d)| (d, i == 0))
        .collect();
    for (d, is_config) in &wanted {
        let hex = store::digest_hex(&d.digest)?;
        limits::check(&d.digest, d.size, &d.media_type, *is_config).map_err(anyhow::Error::msg)?;
        if store.has_blob(&d.digest, d.size as u64) {
            continue;
        }
        let path = dir.join("blobs/sha256").join(hex);
        let data = read_regular(&path, d.size as u64)
            .with_context(|| format!("the bundle lacks blob {}", d.digest))?;
        if data.len() as u64 != d.size as u64 {
            bail!(
                "bundled blob {} has {} bytes; its descriptor lists {}",
                d.digest,
                data.len(),
                d.size
            );
        }
        store.put_blob(&d.digest, &data)?;
    }
    store.put_blob(&digest, &bytes)?;
    crate::materialize(store, reference, &digest, precompiled_target)
}

/// Like [`materialize_bundle`], from the bundle layer's bytes instead of a root filesystem: the
/// layer is unpacked into `scratch` first, regular files and directories only and never outside
/// it, as files layers are (for the shim's compiler, which runs before the container exists).
pub fn materialize_bundle_layer(
    store: &Store,
    reference: &Reference,
    layer: &[u8],
    scratch: &Path,
    precompiled_target: Option<&str>,
) -> anyhow::Result<Materialized> {
    crate::extract_tar(layer, scratch).context("cannot unpack the bundle layer")?;
    materialize_bundle(store, reference, scratch, precompiled_target)
}

/// Prepares a single wasm module or component found in a classic image's root filesystem (an
/// image for platform `wasi/wasm` whose entry point is a `.wasm` file) exactly as a pulled wasm
/// artifact: `wasm` becomes the one layer of an artifact stored in `store`, which is then
/// materialised (one component named after `reference`'s repository, on every path).
pub fn materialize_wasm(
    store: &Store,
    reference: &Reference,
    wasm: Vec<u8>,
    label: &Path,
) -> anyhow::Result<Materialized> {
    let (cap, _) = limits::for_blob(media::WASM_LAYER, false);
    if wasm.len() as u64 > cap {
        bail!(
            "{} has {} bytes, over wms's {} limit for a wasm layer",
            label.display(),
            wasm.len(),
            limits::human(cap)
        );
    }
    let image = crate::image::component_artifact(wasm, label)?;
    for blob in std::iter::once(&image.config).chain(&image.layers) {
        store.put_blob(&blob.digest(), &blob.data)?;
    }
    let digest = image.digest();
    store.put_blob(&digest, &image.manifest)?;
    crate::materialize(store, reference, &digest, None)
}

/// Media types of a classic `wasi/wasm` image's layers beside the uncompressed OCI tar
/// ([`media::FILES_TAR`]): gzip-compressed, as `docker buildx build --platform wasi/wasm` and
/// other image builders write them.
pub const CLASSIC_LAYERS: [&str; 2] = [
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
];

/// The most wasm files [`classic_wasm_files`] returns from one layer.
pub const MAX_CLASSIC_WASM: usize = 8;

/// The wasm files of a classic image's layer of type `media_type` (a tar, gzip-compressed when
/// the type says so): regular files that start with the wasm magic, each within the cap on a
/// wasm layer, at most [`MAX_CLASSIC_WASM`] and that cap's bytes in all (the first in the
/// layer), with their paths in the layer. Nothing is written; other entries are skipped unread.
pub fn classic_wasm_files(
    layer: &[u8],
    media_type: &str,
) -> anyhow::Result<Vec<(PathBuf, Vec<u8>)>> {
    let reader: Box<dyn Read + '_> = if media_type.ends_with("gzip") {
        Box::new(flate2::read::GzDecoder::new(layer))
    } else if media_type == media::FILES_TAR {
        Box::new(layer)
    } else {
        bail!("layer type {media_type} is not a tar or gzip-compressed tar");
    };
    let (cap, _) = limits::for_blob(media::WASM_LAYER, false);
    let mut found = Vec::new();
    let mut total = 0u64;
    let mut archive = tar::Archive::new(reader);
    for entry in archive.entries()? {
        let mut entry = entry?;
        if entry.header().entry_type() != tar::EntryType::Regular
            || entry.size() < 8
            || entry.size() > cap
        {
            continue;
        }
        let path = entry.path()?.into_owned();
        let mut wasm = vec![0; 4];
        entry.read_exact(&mut wasm)?;
        if wasm != b"\0asm" {
            continue;
        }
        // All of them together within the cap on one wasm layer too: they are compiled in the
        // shim's process, outside the container's limits.
        total += entry.size();
        if total > cap {
            break;
        }
        entry.read_to_end(&mut wasm)?;
        found.push((path, wasm));
        if found.len() == MAX_CLASSIC_WASM {
            break;
        }
    }
    Ok(found)
}

/// A reproducible tar of the regular files directly in `dir` (compiled code to cache).
pub fn pack_files(dir: &Path) -> anyhow::Result<Vec<u8>> {
    let mut names: Vec<_> = std::fs::read_dir(dir)?
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.file_name())
        .collect();
    names.sort();
    let mut tar = tar::Builder::new(Vec::new());
    tar.mode(tar::HeaderMode::Deterministic);
    for name in names {
        let data = std::fs::read(dir.join(&name))?;
        let mut header = tar::Header::new_ustar();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_size(data.len() as u64);
        tar.append_data(&mut header, &name, data.as_slice())?;
    }
    Ok(tar.into_inner()?)
}

/// Unpacks a tar into `out`: regular files and directories only, never outside `out`.
pub fn unpack_files(tar: &[u8], out: &Path) -> anyhow::Result<()> {
    crate::extract_tar(tar, out)
}

/// Reads a regular file (not a link) of at most `max` bytes.
fn read_regular(path: &Path, max: u64) -> anyhow::Result<Vec<u8>> {
    let meta = std::fs::symlink_metadata(path)?;
    if !meta.file_type().is_file() {
        bail!("{} is not a regular file", path.display());
    }
    if meta.len() > max {
        bail!(
            "{} has {} bytes, over the {} limit",
            path.display(),
            meta.len(),
            limits::human(max)
        );
    }
    let mut data = Vec::with_capacity(meta.len() as usize);
    std::fs::File::open(path)?
        .take(max + 1)
        .read_to_end(&mut data)?;
    if data.len() as u64 > max {
        bail!(
            "{} grew over the {} limit",
            path.display(),
            limits::human(max)
        );
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_classic_layers_wasm_files_are_found_compressed_or_not_and_nothing_else() {
        let mut t = tar::Builder::new(Vec::new());
        let mut add = |path: &str, data: &[u8], kind: tar::EntryType| {
            let mut h = tar::Header::new_ustar();
            h.set_entry_type(kind);
            h.set_size(if kind == tar::EntryType::Regular {
                data.len() as u64
            } else {
                0
            });
            h.set_mode(0o644);
            if kind == tar::EntryType::Symlink {
                h.set_link_name("app.wasm").unwrap();
                t.append_data(&mut h, path, &[][..]).unwrap();
            } else {
                t.append_data(&mut h, path, data).unwrap();
            }
        };
        let wasm = b"\0asm\x01\0\0\0";
        add("app.wasm", wasm, tar::EntryType::Regular);
        add("etc/motd", b"not wasm at all", tar::EntryType::Regular);
        add("link.wasm", b"", tar::EntryType::Symlink);
        add("bin/tool", wasm, tar::EntryType::Regular);
        let tar = t.into_inner().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &tar).unwrap();
        let gz = gz.finish().unwrap();
        for (layer, kind) in [(&tar, media::FILES_TAR), (&gz, CLASSIC_LAYERS[0])] {
            let found = classic_wasm_files(layer, kind).unwrap();
            let paths: Vec<_> = found.iter().map(|(p, _)| p.to_str().unwrap()).collect();
            assert_eq!(paths, ["app.wasm", "bin/tool"]);
            assert!(found.iter().all(|(_, w)| w == wasm));
        }
        assert!(classic_wasm_files(&tar, "application/vnd.oci.image.layer.v1.tar+zstd").is_err());
    }

    /// Unpacks the bundle layer the way containerd would, into `root`.
    fn unpack(image: &ImageBuild, root: &Path) {
        assert_eq!(image.layers.len(), 1);
        assert_eq!(image.layers[0].media_type, media::FILES_TAR);
        tar::Archive::new(&image.layers[0].data[..])
            .unpack(root)
            .unwrap();
    }

    fn artifact() -> ImageBuild {
        // The smallest core module.
        let wasm = b"\0asm\x01\0\0\0".to_vec();
        crate::image::component_artifact(wasm, Path::new("tiny.wasm")).unwrap()
    }

    #[test]
    fn a_bundle_holds_the_image_unchanged_and_materializes_like_a_pull() {
        let inner = artifact();
        let image = containerd_image(&inner).unwrap();
        let config: serde_json::Value = serde_json::from_slice(&image.config.data).unwrap();
        assert_eq!(config["architecture"], "wasm");
        assert_eq!(config["rootfs"]["diff_ids"][0], image.layers[0].digest());
        // Deterministic: the same image wraps to the same digest.
        assert_eq!(containerd_image(&inner).unwrap().digest(), image.digest());
        let root = tempfile::tempdir().unwrap();
        unpack(&image, root.path());
        assert_eq!(
            std::fs::read(root.path().join("wms/manifest.json")).unwrap(),
            inner.manifest
        );
        let cache = tempfile::tempdir().unwrap();
        let store = Store::open(cache.path().join("oci")).unwrap();
        let reference = crate::parse_reference("localhost/tiny:1").unwrap();
        let m = materialize_bundle(&store, &reference, root.path(), None).unwrap();
        let wasm = m.wasm.expect("a wasm artifact has its wasm");
        assert_eq!(std::fs::read(wasm).unwrap(), b"\0asm\x01\0\0\0");
        assert_eq!(m.app.components.len(), 1);
    }

    #[test]
    fn a_tampered_or_linked_bundle_blob_is_refused() {
        let inner = artifact();
        let image = containerd_image(&inner).unwrap();
        let layer = inner.layers[0].digest();
        let hex = store::digest_hex(&layer).unwrap().to_string();
        let cache = tempfile::tempdir().unwrap();
        let store = Store::open(cache.path().join("oci")).unwrap();
        let reference = crate::parse_reference("localhost/tiny:1").unwrap();

        let root = tempfile::tempdir().unwrap();
        unpack(&image, root.path());
        let blob = root.path().join("wms/blobs/sha256").join(&hex);
        std::fs::write(&blob, b"\0asm\x01\0\0\x01").unwrap();
        let err = format!(
            "{:#}",
            materialize_bundle(&store, &reference, root.path(), None).unwrap_err()
        );
        assert!(err.contains(&hex), "{err}");
        assert!(!store.has_blob(&layer, 8));

        // A link, even to a file with the right content, is not a blob of the bundle.
        let root = tempfile::tempdir().unwrap();
        unpack(&image, root.path());
        let blob = root.path().join("wms/blobs/sha256").join(&hex);
        let elsewhere = root.path().join("elsewhere");
        std::fs::rename(&blob, &elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &blob).unwrap();
        let err = format!(
            "{:#}",
            materialize_bundle(&store, &reference, root.path(), None).unwrap_err()
        );
        assert!(err.contains("not a regular file"), "{err}");
    }
}

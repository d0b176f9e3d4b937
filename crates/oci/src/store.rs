//! The local content store: blobs addressed by digest, tags pointing at manifests, and apps
//! materialised from them.
//!
//! ```text
//! ROOT/blobs/sha256/HEX      verified content, never modified (read-only files)
//! ROOT/partial/HEX           a download in progress; resumed from its length
//! ROOT/refs/REGISTRY/REPO/TAG   the manifest digest a tag pointed at when last pulled
//! ROOT/apps/HEX/             an image's app, ready for `wms up` (rebuilt from blobs at will)
//! ```
//!
//! A blob enters `blobs/` only by rename after its size and sha256 were checked, so a file there
//! is whole and right; an interrupted download leaves at most a `partial/` file.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use sha2::{Digest as _, Sha256};

/// `sha256:<64 lowercase hex>`, the only digest algorithm wms writes or accepts.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(bytes)))
}

pub(crate) use wms_cache::hex;

/// The hex part of a `sha256:` digest, checked, so it is safe as a file name.
pub fn digest_hex(digest: &str) -> anyhow::Result<&str> {
    let Some(hex) = digest.strip_prefix("sha256:") else {
        bail!("digest `{digest}` is not a sha256 digest; wms verifies sha256 content only");
    };
    if hex.len() != 64
        || !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        bail!("digest `{digest}` is malformed (expected sha256: and 64 lowercase hex digits)");
    }
    Ok(hex)
}

/// `PATH.tmp-PID-N`: a temporary name no other process or thread uses.
fn unique_tmp(path: &Path) -> PathBuf {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp-{}-{n}", std::process::id()));
    path.with_file_name(name)
}

/// A blob whose content did not match its digest or size.
#[derive(Debug, thiserror::Error)]
#[error(
    "blob {expected} failed verification: {found}; nothing was stored\n  help: the registry's copy is damaged or was tampered with; push the image again, or ask its publisher"
)]
pub struct VerificationError {
    pub expected: String,
    pub found: String,
}

pub use wms_cache::private_dir;

/// The content store under one directory.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    /// Opens (creating if needed, private to this user) the store at `root`; refuses a store
    /// other users could write (see [`private_dir`]).
    pub fn open(root: impl Into<PathBuf>) -> anyhow::Result<Self> {
        let root = root.into();
        private_dir(&root)?;
        for sub in ["blobs", "blobs/sha256", "partial", "refs", "apps"] {
            private_dir(&root.join(sub))?;
        }
        Ok(Self { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the verified blob `digest` lives (whether or not it is there).
    pub fn blob_path(&self, digest: &str) -> anyhow::Result<PathBuf> {
        Ok(self.root.join("blobs/sha256").join(digest_hex(digest)?))
    }

    pub(crate) fn partial_path(&self, digest: &str) -> anyhow::Result<PathBuf> {
        Ok(self.root.join("partial").join(digest_hex(digest)?))
    }

    /// Whether the store holds `digest` with `size` bytes (content was verified when stored).
    pub fn has_blob(&self, digest: &str, size: u64) -> bool {
        self.blob_path(digest)
            .ok()
            .and_then(|p| std::fs::metadata(p).ok())
            .is_some_and(|m| m.len() == size)
    }

    /// Reads a stored blob of at most `max` bytes and checks it again (blobs read this way are
    /// small: manifests, configs, app manifests); a damaged file is removed so the next pull
    /// fetches it anew. The cap is checked before reading, so a huge file is never read whole.
    pub fn read_blob(&self, digest: &str, max: u64) -> anyhow::Result<Vec<u8>> {
        let path = self.blob_path(digest)?;
        let len = std::fs::metadata(&path)
            .with_context(|| format!("blob {digest} is not in the store ({})", path.display()))?
            .len();
        if len > max {
            bail!(
                "stored blob {digest} has {len} bytes, over the {} limit for what it is\n  help: the image is not one wms reads; remove {} and ask its publisher",
                crate::limits::human(max),
                path.display()
            );
        }
        let bytes = std::fs::read(&path)
            .with_context(|| format!("blob {digest} is not in the store ({})", path.display()))?;
        let found = sha256_digest(&bytes);
        if found != digest {
            let _ = std::fs::remove_file(&path);
            bail!(
                "stored blob {} is damaged (its content has digest {found}); it was removed\n  help: pull the image again",
                path.display()
            );
        }
        Ok(bytes)
    }

    /// Stores `bytes` as `digest` after checking them.
    pub fn put_blob(&self, digest: &str, bytes: &[u8]) -> anyhow::Result<PathBuf> {
        let found = sha256_digest(bytes);
        if found != digest {
            return Err(VerificationError {
                expected: digest.to_string(),
                found: format!("its content has digest {found}"),
            }
            .into());
        }
        let path = self.blob_path(digest)?;
        if path.exists() {
            return Ok(path);
        }
        // A name of this process's own: other processes may store the same blob at the same time.
        let tmp = unique_tmp(&self.partial_path(digest)?);
        let mut f = std::fs::File::create(&tmp)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        let committed = self.commit(&tmp, &path);
        let _ = std::fs::remove_file(&tmp);
        committed?;
        Ok(path)
    }

    /// Moves a verified partial file into place, read-only.
    pub(crate) fn commit(&self, partial: &Path, path: &Path) -> anyhow::Result<()> {
        let mut perms = std::fs::metadata(partial)?.permissions();
        perms.set_readonly(true);
        std::fs::set_permissions(partial, perms)?;
        std::fs::rename(partial, path)
            .with_context(|| format!("cannot move a blob into {}", path.display()))
    }

    fn ref_path(&self, reference: &oci_client::Reference) -> PathBuf {
        let tag = match (reference.digest(), reference.tag()) {
            (Some(d), _) => format!("@{d}"),
            (None, Some(t)) => t.to_string(),
            (None, None) => "latest".to_string(),
        };
        // Registry names may carry a port (`127.0.0.1:5000`); both parts are safe path segments
        // because the reference grammar admits no `..` and no leading `/`.
        self.root
            .join("refs")
            .join(reference.resolve_registry())
            .join(reference.repository())
            .join("_tags")
            .join(tag)
    }

    /// Records that `reference` resolved to `manifest_digest`.
    pub fn set_ref(
        &self,
        reference: &oci_client::Reference,
        manifest_digest: &str,
    ) -> anyhow::Result<()> {
        digest_hex(manifest_digest)?;
        let path = self.ref_path(reference);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = unique_tmp(&path);
        std::fs::write(&tmp, format!("{manifest_digest}\n"))?;
        std::fs::rename(&tmp, &path)
            .with_context(|| format!("cannot record {reference} in {}", path.display()))
    }

    /// The manifest digest `reference` resolved to when last pulled (a digest reference resolves
    /// to itself once its manifest is stored).
    pub fn get_ref(&self, reference: &oci_client::Reference) -> Option<String> {
        let digest = std::fs::read_to_string(self.ref_path(reference)).ok()?;
        let digest = digest.trim().to_string();
        let path = self.blob_path(&digest).ok()?;
        path.exists().then_some(digest)
    }

    /// Directory an image's app is materialised in.
    pub fn app_dir(&self, manifest_digest: &str) -> anyhow::Result<PathBuf> {
        Ok(self.root.join("apps").join(digest_hex(manifest_digest)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_checked_before_use_as_file_names() {
        assert!(digest_hex("sha256:../../etc/passwd").is_err());
        assert!(digest_hex("sha512:abcd").is_err());
        let d = sha256_digest(b"hello");
        assert_eq!(digest_hex(&d).unwrap().len(), 64);
    }

    #[test]
    fn a_store_others_can_write_is_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("cache/oci");
        Store::open(&root).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&root), 0o700);
        assert_eq!(mode(&root.join("blobs/sha256")), 0o700);
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = Store::open(&root).unwrap_err().to_string();
        assert!(err.contains("all users may write"), "{err}");
        assert!(err.contains("chmod go-w"), "{err}");
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o770)).unwrap();
        let err = Store::open(&root).unwrap_err().to_string();
        assert!(err.contains("group may write"), "{err}");
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
        Store::open(&root).unwrap();
    }

    #[test]
    fn a_blob_is_stored_only_when_its_content_matches() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let good = sha256_digest(b"content");
        let err = store.put_blob(&good, b"tampered").unwrap_err();
        assert!(err.to_string().contains(&good), "{err}");
        assert!(!store.has_blob(&good, 7));
        store.put_blob(&good, b"content").unwrap();
        assert!(store.has_blob(&good, 7));
        assert_eq!(store.read_blob(&good, 7).unwrap(), b"content");
        let err = store.read_blob(&good, 6).unwrap_err().to_string();
        assert!(err.contains("over the 6 bytes limit"), "{err}");
    }
}

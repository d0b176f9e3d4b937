//! The code cache on disk: its private directory, digests, and files that carry their own
//! sha256 so a truncated or corrupt one is never used (the adapted-component cache of `adapt`
//! and the compiled-code cache of `aot` share them).

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use sha2::{Digest, Sha256};
use wms_cache::create_private;

pub(crate) use wms_cache::hex;
pub use wms_cache::{ENV_CACHE_DIR, cache_dir};

/// `ROOT/sub` of the cache directory, both made private to this user when missing (mode 0700)
/// and refused when they exist but another user owns them or group or others may write them:
/// the cache holds compiled code that wms maps executable without re-checking it, so anyone who
/// can write there can run code as every later wms (ssh refuses its keys for the same reason).
/// `Ok(None)` when there is no cache to use (no directory can be determined or created): wms
/// then compiles every time. The rule is `wms_cache`'s, shared with the store.
pub(crate) fn private_cache_subdir(sub: &str) -> anyhow::Result<Option<PathBuf>> {
    let Some(root) = cache_dir() else {
        return Ok(None);
    };
    for dir in [root.clone(), root.join(sub)] {
        if !dir.exists()
            && let Err(e) = wms_cache::create_private(&dir)
        {
            tracing::warn!(
                "cannot create the cache directory {}: {e}; compiling without a cache",
                dir.display()
            );
            return Ok(None);
        }
        wms_cache::check_private(&dir)?;
    }
    Ok(Some(root.join(sub)))
}

pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Reads a file written by [`write_verified`]; `None` if it is missing, short or corrupt.
pub(crate) fn read_verified(path: &Path) -> Option<Vec<u8>> {
    let mut bytes = std::fs::read(path).ok()?;
    if bytes.len() < 32 {
        return None;
    }
    let digest = bytes.split_off(bytes.len() - 32);
    (Sha256::digest(&bytes).as_slice() == digest.as_slice()).then_some(bytes)
}

/// Writes `contents` followed by their sha256, atomically (temporary file, then rename).
pub(crate) fn write_verified(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    let dir = path.parent().context("path has no parent directory")?;
    create_private(dir).with_context(|| format!("create {}", dir.display()))?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    std::io::Write::write_all(&mut tmp, contents)?;
    std::io::Write::write_all(&mut tmp, &Sha256::digest(contents))?;
    tmp.persist(path)?;
    Ok(())
}

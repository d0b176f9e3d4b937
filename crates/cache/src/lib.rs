//! The cache directory wms keeps derived artifacts in (compiled code, adapted components, the
//! OCI content store), and the rule that protects it.
//!
//! The cache holds code wms maps executable, so anyone who can write it can run code as every
//! later wms. Like ssh with its keys, wms creates its directories private to the user (mode
//! 0700) and refuses one that another user owns or that group or others may write, saying how
//! to fix it. One rule, used by the runtime (`aot/`, `components/`) and the store (`oci/`).

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

/// Overrides where wms caches derived artifacts (default `$XDG_CACHE_HOME/wms`, then
/// `~/.cache/wms`).
pub const ENV_CACHE_DIR: &str = "WMS_CACHE_DIR";

/// The cache directory wms uses, if one can be determined.
pub fn cache_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os(ENV_CACHE_DIR) {
        return Some(PathBuf::from(dir));
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return Some(PathBuf::from(dir).join("wms"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/wms"))
}

/// Creates `dir` and its missing parents with mode 0700.
pub fn create_private(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Refuses `dir` unless it is a directory this user owns and only this user may write. The
/// directory itself is checked (following a symlink, as systemd's `CacheDirectory=` with
/// `DynamicUser=` makes one), not its parents.
pub fn check_private(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::metadata(dir)
        .with_context(|| format!("cannot read the cache directory {}", dir.display()))?;
    if !meta.is_dir() {
        bail!(
            "{} is not a directory\n  help: remove it, or set {ENV_CACHE_DIR} to a directory of your own",
            dir.display()
        );
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me {
        bail!(
            "refusing the cache directory {}: it is owned by user {}, not by this user ({me}), who could put code there that wms runs natively\n  help: `chown -R {me} {}`, or set {ENV_CACHE_DIR} to a directory of your own",
            dir.display(),
            meta.uid(),
            dir.display()
        );
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        let who = match (mode & 0o020 != 0, mode & 0o002 != 0) {
            (true, true) => "its group and all users",
            (true, false) => "its group",
            _ => "all users",
        };
        bail!(
            "refusing the cache directory {}: {who} may write to it (mode {mode:04o}), so they could put code there that wms runs natively\n  help: `chmod go-w {}` (wms creates it with mode 0700)",
            dir.display(),
            dir.display()
        );
    }
    Ok(())
}

/// Makes sure `dir` is a directory only this user can write, creating it (mode 0700, parents
/// too) when missing.
pub fn private_dir(dir: &Path) -> anyhow::Result<()> {
    if !dir.exists() {
        create_private(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    check_private(dir)
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn directories_are_created_private_and_shared_ones_refused() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("a/b");
        private_dir(&dir).unwrap();
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = private_dir(&dir).unwrap_err().to_string();
        assert!(err.contains("its group and all users may write"), "{err}");
        assert!(err.contains("chmod go-w"), "{err}");
        assert_eq!(hex(&[0, 0xab]), "00ab");
    }
}

//! Spin SDK apps (the Spin templates build for `wasm32-wasip1`) are core modules that import
//! `wasi_snapshot_preview1` and carry `component-type` sections. Like Spin, wms turns them into
//! components at load with the WASI preview 1 adapter of the same Wasmtime release. The result
//! is cached by the sha256 of the module, so the second start skips the work.

use std::path::PathBuf;

use anyhow::anyhow;
use sha2::{Digest, Sha256};
use wasi_preview1_component_adapter_provider::{
    WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME, WASI_SNAPSHOT_PREVIEW1_COMMAND_ADAPTER,
    WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
};

/// Overrides where wms caches derived artifacts (default `$XDG_CACHE_HOME/wms`, then
/// `~/.cache/wms`).
pub const ENV_CACHE_DIR: &str = "WMS_CACHE_DIR";

/// Version of this derivation: bump when the adapter or the encoding changes.
const ADAPT_VERSION: &str = "wasmtime-48.0.8-adapter-1";

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

/// `ROOT/sub` of the cache directory, both made private to this user when missing (mode 0700)
/// and refused when they exist but another user owns them or group or others may write them:
/// the cache holds compiled code that wms maps executable without re-checking it, so anyone who
/// can write there can run code as every later wms (ssh refuses its keys for the same reason).
/// `Ok(None)` when there is no cache to use (no directory can be determined or created): wms
/// then compiles every time. The same rule as `wms_oci::store::private_dir`, for the store.
pub(crate) fn private_cache_subdir(sub: &str) -> anyhow::Result<Option<PathBuf>> {
    let Some(root) = cache_dir() else {
        return Ok(None);
    };
    for dir in [root.clone(), root.join(sub)] {
        if !dir.exists()
            && let Err(e) = create_private(&dir)
        {
            tracing::warn!(
                "cannot create the cache directory {}: {e}; compiling without a cache",
                dir.display()
            );
            return Ok(None);
        }
        check_private(&dir)?;
    }
    Ok(Some(root.join(sub)))
}

/// Creates `dir` and its missing parents with mode 0700.
pub(crate) fn create_private(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Refuses a cache directory another user owns or that group or others may write.
pub(crate) fn check_private(dir: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::metadata(dir)
        .map_err(|e| anyhow!("cannot read the cache directory {}: {e}", dir.display()))?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me {
        anyhow::bail!(
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
        anyhow::bail!(
            "refusing the cache directory {}: {who} may write to it (mode {mode:04o}), so they could put code there that wms runs natively\n  help: `chmod go-w {}` (wms creates it with mode 0700)",
            dir.display(),
            dir.display()
        );
    }
    Ok(())
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Turns a preview 1 core module into a component, using the cache when it holds a verified
/// result for exactly these bytes.
pub(crate) fn componentize(module: &[u8]) -> anyhow::Result<Vec<u8>> {
    if !has_component_type(module) {
        anyhow::bail!("it has no `component-type` section, so its WIT world is unknown");
    }
    let mut hasher = Sha256::new();
    hasher.update(ADAPT_VERSION.as_bytes());
    hasher.update(module);
    let key = hex(&hasher.finalize());
    // A cache directory others may write is not read from (loading the component refuses it with
    // the fix; see aot::load).
    let cached = private_cache_subdir("components")
        .ok()
        .flatten()
        .map(|d| d.join(format!("{key}.wasm")));
    if let Some(path) = &cached
        && let Some(bytes) = crate::aot::read_verified(path)
    {
        tracing::debug!("using the cached component {}", path.display());
        return Ok(bytes);
    }
    let component = encode(module)?;
    if let Some(path) = &cached
        && let Err(e) = crate::aot::write_verified(path, &component)
    {
        tracing::warn!(
            "cannot cache the adapted component at {}: {e:#}",
            path.display()
        );
    }
    Ok(component)
}

fn encode(module: &[u8]) -> anyhow::Result<Vec<u8>> {
    // A module with `_start` is a command; anything else (an HTTP handler) is a reactor.
    let adapter = if exports_start(module) {
        WASI_SNAPSHOT_PREVIEW1_COMMAND_ADAPTER
    } else {
        WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER
    };
    wit_component::ComponentEncoder::default()
        .validate(true)
        .module(module)
        .map_err(|e| anyhow!("{e:#}"))?
        .adapter(WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME, adapter)
        .map_err(|e| anyhow!("{e:#}"))?
        .encode()
        .map_err(|e| anyhow!("{e:#}"))
}

/// Whether the module embeds its WIT world, as wit-bindgen (and so the Spin SDK) does.
fn has_component_type(module: &[u8]) -> bool {
    wasmparser::Parser::new(0).parse_all(module).flatten().any(|p| {
        matches!(p, wasmparser::Payload::CustomSection(c) if c.name().starts_with("component-type"))
    })
}

fn exports_start(module: &[u8]) -> bool {
    for payload in wasmparser::Parser::new(0).parse_all(module) {
        if let Ok(wasmparser::Payload::ExportSection(exports)) = payload {
            return exports.into_iter().flatten().any(|e| e.name == "_start");
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use crate::aot::{read_verified, write_verified};

    #[test]
    fn corrupt_cache_entries_are_not_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c/x.wasm");
        write_verified(&path, b"component bytes").unwrap();
        assert_eq!(read_verified(&path).unwrap(), b"component bytes");
        let mut raw = std::fs::read(&path).unwrap();
        raw[0] ^= 1;
        std::fs::write(&path, &raw).unwrap();
        assert!(read_verified(&path).is_none());
        std::fs::write(&path, &raw[..10]).unwrap();
        assert!(read_verified(&path).is_none());
    }
}

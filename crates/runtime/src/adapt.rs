//! Spin SDK apps (the Spin templates build for `wasm32-wasip1`) are core modules that import
//! `wasi_snapshot_preview1` and carry `component-type` sections. Like Spin, wms turns them into
//! components at load with the WASI preview 1 adapter of the same Wasmtime release. The result
//! is cached by the sha256 of the module, so the second start skips the work.

use anyhow::anyhow;
use sha2::{Digest, Sha256};
use wasi_preview1_component_adapter_provider::{
    WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME, WASI_SNAPSHOT_PREVIEW1_COMMAND_ADAPTER,
    WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
};

use crate::cache::{hex, private_cache_subdir};

/// Version of this derivation: bump when the adapter or the encoding changes.
const ADAPT_VERSION: &str = "wasmtime-48.0.8-adapter-1";

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
        && let Some(bytes) = crate::cache::read_verified(path)
    {
        tracing::debug!("using the cached component {}", path.display());
        return Ok(bytes);
    }
    let component = encode(module)?;
    if let Some(path) = &cached
        && let Err(e) = crate::cache::write_verified(path, &component)
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
    use crate::cache::{read_verified, write_verified};

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

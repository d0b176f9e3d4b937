//! Ahead-of-time compiled code: the local cache `wms up` keeps, and the artifacts `wms compile`
//! makes for this host or for a board.
//!
//! Precompiled code is native code that Wasmtime maps executable without re-checking it, so wms
//! loads only what it produced itself (its cache) or what the user explicitly trusts
//! (`wms up --precompiled DIR`). Both are bound to exactly one wasm: the cache by file name
//! (`AOT_DIR/<engine key>/<sha256 of the wasm>.cwasm`), a precompiled directory by a sidecar
//! recording the wasm's sha256. Every file ends with the sha256 of its contents, so a truncated
//! or corrupted file is detected and rebuilt, never loaded; Wasmtime then checks that the code
//! was compiled for this engine (target, CPU features, memory layout) before using it.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, anyhow};
use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

use crate::cache::{hex, private_cache_subdir, read_verified, sha256_hex, write_verified};
use wms_cache::check_private;

/// A stable key for "code compiled by this engine loads into this engine": the sha256 of
/// Wasmtime's precompile compatibility hash.
pub fn engine_key(engine: &Engine) -> String {
    struct Sha(Sha256);
    impl Hasher for Sha {
        fn finish(&self) -> u64 {
            0
        }
        fn write(&mut self, bytes: &[u8]) {
            self.0.update(bytes);
        }
    }
    let mut h = Sha(Sha256::new());
    engine.precompile_compatibility_hash().hash(&mut h);
    hex(&h.0.finalize())[..32].to_string()
}

/// Where a component's code came from, for the start-up log.
pub enum Origin {
    Compiled,
    Cache,
    Precompiled(PathBuf),
}

/// Sidecar of a precompiled artifact.
const SIDECAR_EXT: &str = "wasm-sha256";

/// Loads `wasm` (a component) for `engine`: from `trusted` precompiled artifacts when one was
/// made from exactly these bytes, else from the local cache, else by compiling (and caching).
pub(crate) fn load(
    engine: &Engine,
    id: &str,
    wasm: &[u8],
    trusted: Option<&Path>,
) -> anyhow::Result<(Component, Origin)> {
    let digest = sha256_hex(wasm);
    if let Some(dir) = trusted {
        match read_trusted(dir, id, &digest) {
            // SAFETY: the user trusts this directory (--precompiled), the file is intact
            // (trailing sha256) and was made from exactly this wasm (sidecar); Wasmtime rejects
            // code compiled for another engine configuration.
            Ok((code, bytes)) => match unsafe { Component::deserialize(engine, &bytes) } {
                Ok(c) => return Ok((c, Origin::Precompiled(code))),
                Err(e) => tracing::warn!(
                    "component `{id}`: not using {}: {e}; compiling instead",
                    code.display()
                ),
            },
            Err(why) => tracing::warn!("component `{id}`: {why}; compiling instead"),
        }
    }
    let cached = match private_cache_subdir("aot")? {
        Some(aot) => {
            let dir = aot.join(engine_key(engine));
            if dir.exists() {
                check_private(&dir)?;
            }
            Some(dir.join(format!("{digest}.cwasm")))
        }
        None => None,
    };
    if let Some(path) = &cached
        && path.exists()
    {
        match read_verified(path) {
            // SAFETY: wms wrote this file itself, for this engine key and exactly this wasm, and
            // its trailing sha256 matches; Wasmtime re-checks engine compatibility.
            Some(bytes) => match unsafe { Component::deserialize(engine, &bytes) } {
                Ok(c) => return Ok((c, Origin::Cache)),
                Err(e) => tracing::warn!(
                    "component `{id}`: ignoring cache entry {}: {e}",
                    path.display()
                ),
            },
            None => tracing::warn!(
                "component `{id}`: cache entry {} is corrupt; recompiling",
                path.display()
            ),
        }
    }
    let code = precompile(engine, wasm)?;
    if let Some(path) = &cached
        && let Err(e) = write_verified(path, &code)
    {
        tracing::warn!(
            "component `{id}`: cannot write the compile cache {}: {e:#}",
            path.display()
        );
    }
    // SAFETY: these bytes were just produced by this engine.
    let component =
        unsafe { Component::deserialize(engine, &code) }.map_err(|e| anyhow!("{e:?}"))?;
    Ok((component, Origin::Compiled))
}

/// Cranelift cannot generate code for this component on this target (a missing CPU feature or a
/// code generator bug); the Pulley interpreter can still run it.
#[derive(Debug)]
pub struct CodegenUnsupported(pub String);

impl std::fmt::Display for CodegenUnsupported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CodegenUnsupported {}

/// Compiles a component, turning a code generator panic into an error for this component
/// instead of a crash of the whole process; a component refused for its SIMD instructions (an
/// engine without SIMD) is [`CodegenUnsupported`] too, so it can move to Pulley.
pub(crate) fn precompile(engine: &Engine, wasm: &[u8]) -> anyhow::Result<Vec<u8>> {
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        engine.precompile_component(wasm)
    }));
    match result {
        Ok(Ok(code)) => Ok(code),
        Ok(Err(e)) if needs_simd(wasm) => Err(anyhow::Error::new(CodegenUnsupported(format!(
            "{e:#}\n  help: the component uses 128-bit SIMD, which Cranelift cannot compile for this CPU (riscv64 without the vector extension); serve it with `--engine pulley`, or build it without the simd128 target feature"
        )))),
        Ok(Err(e)) => Err(anyhow!("{e:?}")),
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Err(anyhow::Error::new(CodegenUnsupported(format!(
                "the code generator crashed ({what})\n  help: this is a Cranelift bug for this target; serve the component with `--engine pulley`"
            ))))
        }
    }
}

/// Whether `wasm` is valid only with WebAssembly SIMD: checked by validating it with and without,
/// so a compile error on an engine without SIMD is known to be about SIMD, not guessed from its
/// text.
fn needs_simd(wasm: &[u8]) -> bool {
    use wasmparser::{Validator, WasmFeatures};
    let all = WasmFeatures::all();
    let without = all - WasmFeatures::SIMD - WasmFeatures::RELAXED_SIMD;
    Validator::new_with_features(all).validate_all(wasm).is_ok()
        && Validator::new_with_features(without)
            .validate_all(wasm)
            .is_err()
}

/// The code in a trusted precompiled directory for `id` (`<id>.cwasm`), when it is intact and
/// was made from the wasm whose sha256 is `digest`; else why not, for a warning.
pub(crate) fn read_trusted(
    dir: &Path,
    id: &str,
    digest: &str,
) -> Result<(PathBuf, Vec<u8>), String> {
    let code = dir.join(format!("{id}.cwasm"));
    let sidecar = code.with_extension(SIDECAR_EXT);
    match std::fs::read_to_string(&sidecar) {
        Ok(recorded) if recorded.trim() == digest => match read_verified(&code) {
            Some(bytes) => Ok((code, bytes)),
            None => Err(format!(
                "{} is missing, truncated or corrupt",
                code.display()
            )),
        },
        Ok(_) => Err(format!(
            "{} was made from another build of this component",
            code.display()
        )),
        Err(_) => Err(format!("no precompiled code in {}", dir.display())),
    }
}

/// Writes a precompiled artifact and its sidecar for `wms compile`.
pub(crate) fn write_precompiled(
    dir: &Path,
    id: &str,
    wasm: &[u8],
    code: &[u8],
) -> anyhow::Result<PathBuf> {
    let path = dir.join(format!("{id}.cwasm"));
    write_verified(&path, code)?;
    std::fs::write(
        path.with_extension(SIDECAR_EXT),
        format!("{}\n", sha256_hex(wasm)),
    )
    .with_context(|| format!("write {}", path.with_extension(SIDECAR_EXT).display()))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    const HEADER: [u8; 8] = [0, b'a', b's', b'm', 1, 0, 0, 0];

    /// A module with one function returning `result`, whose body is `code`.
    fn module(result: u8, code: &[u8]) -> Vec<u8> {
        let mut m = HEADER.to_vec();
        m.extend([1, 5, 1, 0x60, 0, 1, result]); // type section: () -> result
        m.extend([3, 2, 1, 0]); // function section
        let body_len = (code.len() + 2) as u8; // no locals, the code, end
        m.extend([10, body_len + 2, 1, body_len, 0]);
        m.extend(code);
        m.push(0x0b);
        m
    }

    #[test]
    fn simd_use_is_found_by_validation() {
        let plain = module(0x7f, &[0x41, 1]); // i32.const 1
        let mut v128_const = vec![0xfd, 0x0c];
        v128_const.extend([0; 16]);
        let simd = module(0x7b, &v128_const);
        assert!(wasmparser::Validator::new().validate_all(&plain).is_ok());
        assert!(!super::needs_simd(&plain));
        assert!(super::needs_simd(&simd));
        // Not wasm at all: not a SIMD problem.
        assert!(!super::needs_simd(b"not wasm"));
    }
}

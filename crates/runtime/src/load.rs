//! Reading, adapting and compiling components (`wms up` and `wms compile`), and staging the files
//! a component mounts.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context as _, anyhow, bail};
use wasmtime::component::Component;
use wasmtime::{Config, Engine};
use wms_manifest::App;

use crate::engine::{apply_memory_layout, pool_demand};
use crate::{adapt, aot, pool};

/// Reads a component's wasm, adapting a preview 1 module into a component (as Spin does).
fn read_component(id: &str, path: &Path) -> anyhow::Result<Vec<u8>> {
    let bytes = std::fs::read(path).with_context(|| {
        format!("component `{id}`: cannot read {}\n  help: build it first (`wms build`, or `wms up --build`) or fix `source` in the manifest", path.display())
    })?;
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        bail!(
            "component `{id}`: {} is not a WebAssembly file\n  help: point `source` at a .wasm component",
            path.display()
        );
    }
    if bytes[4..8] == [1, 0, 0, 0] {
        return adapt::componentize(&bytes).with_context(|| {
            format!(
                "component `{id}`: {} is a core WebAssembly module, not a component, and cannot be adapted\n  help: build for `wasm32-wasip2`, or build the module with an SDK that embeds its WIT world (Spin SDK, wit-bindgen)",
                path.display()
            )
        });
    }
    Ok(bytes)
}

pub(crate) fn compile(
    engine: &Engine,
    id: &str,
    path: &Path,
    precompiled: Option<&Path>,
    metrics: Option<&crate::metrics::Metrics>,
) -> anyhow::Result<Component> {
    let bytes = read_component(id, path)?;
    let start = Instant::now();
    let (component, origin) = aot::load(engine, id, &bytes, precompiled)
        .with_context(|| format!("component `{id}`: cannot compile {}", path.display()))?;
    if let Some(m) = metrics {
        use crate::metrics::CodeOrigin;
        let o = match origin {
            aot::Origin::Compiled => CodeOrigin::Compiled,
            aot::Origin::Cache => CodeOrigin::Cache,
            aot::Origin::Precompiled(_) => CodeOrigin::Precompiled,
        };
        m.code_loaded(id, o);
    }
    match origin {
        aot::Origin::Compiled => {
            tracing::info!(component = id, "compiled in {:?}", start.elapsed())
        }
        aot::Origin::Cache => tracing::info!(
            component = id,
            "loaded compiled code from the cache in {:?}",
            start.elapsed()
        ),
        aot::Origin::Precompiled(p) => tracing::info!(
            component = id,
            "loaded precompiled code from {}",
            p.display()
        ),
    }
    Ok(component)
}

/// Where `wms compile` compiles for.
#[derive(Debug, Clone)]
pub struct CompileTarget {
    /// `aarch64`, `riscv64gc`, `x86_64`, `pulley64` or `pulley32` (or a full triple); `None`
    /// for this host.
    pub target: Option<String>,
    /// Cranelift ISA flags to enable, e.g. `has_zbb` (riscv64) or `has_lse` (aarch64).
    pub cpu_features: Vec<String>,
    /// Address space of the machine that will load the code, which decides the memory layout
    /// compiled in (default: this host's, probed; 128 TiB for x86_64; 256 GiB, a 39-bit board,
    /// for other targets).
    pub address_space: Option<u64>,
}

/// Precompiles every wasi:http component of `app` into `out_dir` (`NAME.cwasm` plus a sidecar
/// with the wasm's sha256) for `wms up --precompiled`. Returns the files written.
pub fn compile_app(
    app: &App,
    target: &CompileTarget,
    out_dir: &Path,
) -> anyhow::Result<Vec<PathBuf>> {
    let triple = match target.target.as_deref() {
        None => None,
        Some("aarch64") => Some("aarch64-unknown-linux-gnu".to_string()),
        Some("riscv64gc" | "riscv64") => Some("riscv64gc-unknown-linux-gnu".to_string()),
        Some("x86_64") => Some("x86_64-unknown-linux-gnu".to_string()),
        Some(other) => Some(other.to_string()),
    };
    let mut config = Config::new();
    config.epoch_interruption(true);
    if let Some(t) = &triple {
        config.target(t).map_err(|e| {
            anyhow!("--target {t}: {e}; use aarch64, riscv64gc, x86_64, pulley64 or pulley32")
        })?;
    }
    let riscv = triple.as_deref().is_some_and(|t| t.starts_with("riscv64"));
    if riscv && !target.cpu_features.iter().any(|f| f == "has_v") {
        // See build_engine: without V, SIMD would crash Cranelift.
        config.wasm_simd(false).wasm_relaxed_simd(false);
    }
    for f in &target.cpu_features {
        // SAFETY: the user asserts the target CPU has this feature; Wasmtime refuses to load the
        // code on a host without it.
        unsafe {
            config.cranelift_flag_enable(f);
        }
    }
    let (wanted, max_memory) = pool_demand(app);
    let address_space = match (target.address_space, &triple) {
        (Some(a), _) => a,
        (None, None) => pool::probe_address_space(),
        // x86_64 Linux gives every process 128 TiB (47 bits); the boards wms targets have 39-bit
        // address spaces (256 GiB).
        (None, Some(t)) if t.starts_with("x86_64") => 128 << 40,
        (None, Some(_)) => 256 << 30,
    };
    let plan = pool::plan(wanted, max_memory, address_space);
    apply_memory_layout(&mut config, &plan, max_memory);
    let engine = Engine::new(&config).map_err(|e| {
        anyhow!(
            "--target {}: {e}; use aarch64, riscv64gc, x86_64, pulley64 or pulley32 (other architectures need a wms built with the `cross-compile` feature)",
            target.target.as_deref().unwrap_or("host")
        )
    })?;
    std::fs::create_dir_all(out_dir).with_context(|| format!("create {}", out_dir.display()))?;
    let mut written = Vec::new();
    for (id, c) in &app.components {
        if c.executor != wms_manifest::Executor::Http {
            continue;
        }
        let wasm = read_component(id, &c.source)?;
        let code = aot::precompile(&engine, &wasm)
            .with_context(|| format!("component `{id}`: cannot compile {}", c.source.display()))?;
        written.push(aot::write_precompiled(out_dir, id, &wasm, &code)?);
    }
    Ok(written)
}

pub(crate) fn export_names(engine: &Engine, component: &Component) -> Vec<String> {
    component
        .component_type()
        .exports(engine)
        .map(|(name, _)| name.to_string())
        .collect()
}

/// Copies the files matching `patterns` (relative to `app_dir`) into a private directory that
/// is mounted read-only at the guest root, so the guest sees exactly those files.
pub(crate) fn stage_files(
    app_dir: &Path,
    id: &str,
    patterns: &[String],
    exclude: &[String],
) -> anyhow::Result<tempfile::TempDir> {
    let staging = tempfile::Builder::new()
        .prefix(&format!("wms-{id}-files-"))
        .tempdir()
        .context("create a staging directory for files")?;
    for f in wms_manifest::files::pattern_files(app_dir, id, patterns, exclude)? {
        let dest = staging.path().join(f.guest.trim_start_matches('/'));
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::copy(&f.host, &dest)
            .with_context(|| format!("component `{id}`: copy {}", f.host.display()))?;
    }
    Ok(staging)
}

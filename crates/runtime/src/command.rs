//! `wms run`: a WASI command (a preview 1 module with `_start`, or a preview 2 component that
//! exports `wasi:cli/run`) runs to completion with arguments, environment, directories and the
//! process's stdio, under a timeout and a memory limit.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use wasmtime::component::{Component, ResourceTable};
use wasmtime::{Config, Engine, Module};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::bindings::CommandPre;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::descriptors::{self, Budget, DescriptorPlan, InstanceFds};
use crate::engine::start_epoch_ticker;
use crate::guest::{GuestState, MemoryLimiter, add_open_hook, guest_store};
use crate::{EngineKind, wt};

/// A host directory made visible to the command.
#[derive(Debug, Clone)]
pub struct DirMount {
    pub host: PathBuf,
    pub guest: String,
    pub writable: bool,
}

/// Everything `wms run` needs.
#[derive(Debug, Clone)]
pub struct CommandOptions {
    pub path: PathBuf,
    /// `argv[0]` first.
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub dirs: Vec<DirMount>,
    pub timeout: Option<Duration>,
    pub max_memory: u64,
    pub engine: EngineKind,
    /// A directory holding this command's code made by [`compile_command`] (the containerd
    /// shim keeps it in containerd's store): used when it was made from exactly this wasm and
    /// this engine accepts it, else the command is compiled. Only for code this host made or the
    /// operator trusts: Wasmtime maps it executable as it is.
    pub precompiled: Option<PathBuf>,
}

/// The name of a command's code in a [`compile_command`] directory.
const COMMAND_CODE: &str = "command";

/// The engine commands run on, Cranelift or Pulley.
fn command_engine(kind: EngineKind) -> anyhow::Result<Engine> {
    let mut config = Config::new();
    config.epoch_interruption(true);
    if crate::effective_engine(kind) == EngineKind::Pulley {
        let t = if cfg!(target_pointer_width = "64") {
            "pulley64"
        } else {
            "pulley32"
        };
        config.target(t).map_err(wt)?;
    }
    Engine::new(&config).map_err(wt)
}

fn is_module(wasm: &[u8]) -> bool {
    wasm.get(4..8) == Some(&[1, 0, 0, 0])
}

/// Compiles the command `wasm` (a module or a component) for this host's Cranelift engine into
/// `dir`, for [`CommandOptions::precompiled`]; the file written.
pub fn compile_command(wasm: &[u8], dir: &Path) -> anyhow::Result<PathBuf> {
    let engine = command_engine(EngineKind::Cranelift)?;
    let code = if is_module(wasm) {
        engine.precompile_module(wasm)
    } else {
        engine.precompile_component(wasm)
    }
    .map_err(wt)
    .context("cannot compile the command")?;
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    crate::aot::write_precompiled(dir, COMMAND_CODE, wasm, &code)
}

/// The command loaded from `code` when there is some and the engine accepts it, else compiled.
fn code_or_compile<T>(
    code: Option<Vec<u8>>,
    deserialize: impl FnOnce(Vec<u8>) -> wasmtime::Result<T>,
    compile: impl FnOnce() -> wasmtime::Result<T>,
    path: &Path,
) -> anyhow::Result<T> {
    if let Some(code) = code {
        match deserialize(code) {
            Ok(loaded) => {
                tracing::debug!("loaded precompiled code for {}", path.display());
                return Ok(loaded);
            }
            Err(e) => tracing::warn!("not using the precompiled code: {e}; compiling instead"),
        }
    }
    compile()
        .map_err(wt)
        .with_context(|| format!("cannot compile {}", path.display()))
}

/// The command's code from `options.precompiled` when it fits, as serialized bytes.
fn precompiled_code(options: &CommandOptions, wasm: &[u8]) -> Option<Vec<u8>> {
    let dir = options.precompiled.as_deref()?;
    match crate::aot::read_trusted(dir, COMMAND_CODE, &crate::cache::sha256_hex(wasm)) {
        Ok((_, bytes)) => Some(bytes),
        Err(why) => {
            tracing::warn!("{why}; compiling the command instead");
            None
        }
    }
}

/// How a command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandOutcome {
    /// It exited (or returned from `main`) with this status.
    Exit(i32),
    /// It trapped; the message says where.
    Trap(String),
    /// It exceeded its memory limit.
    MemoryLimit(u64),
    /// It ran past its timeout.
    Timeout(Duration),
}

struct P1Command {
    p1: WasiP1Ctx,
    limiter: MemoryLimiter,
    fds: InstanceFds,
}

impl GuestState for P1Command {
    fn fds_and_table(&mut self) -> (&mut InstanceFds, &mut ResourceTable) {
        (&mut self.fds, self.p1.ctx().table)
    }

    fn limiter(&mut self) -> &mut MemoryLimiter {
        &mut self.limiter
    }
}

impl crate::wagi::P1State for P1Command {
    fn p1(&mut self) -> &mut WasiP1Ctx {
        &mut self.p1
    }
}

struct P2State {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: MemoryLimiter,
    fds: InstanceFds,
}

impl GuestState for P2State {
    fn fds_and_table(&mut self) -> (&mut InstanceFds, &mut ResourceTable) {
        (&mut self.fds, &mut self.table)
    }

    fn limiter(&mut self) -> &mut MemoryLimiter {
        &mut self.limiter
    }
}

impl WasiView for P2State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Runs the command to completion.
pub async fn run_command(options: &CommandOptions) -> anyhow::Result<CommandOutcome> {
    let bytes = std::fs::read(&options.path).with_context(|| {
        format!(
            "cannot read {}; check the path to the .wasm file",
            options.path.display()
        )
    })?;
    if bytes.len() < 8 || bytes[..4] != *b"\0asm" {
        bail!(
            "{} is not a WebAssembly file; pass a .wasm module or component",
            options.path.display()
        );
    }
    let engine = command_engine(options.engine)?;
    start_epoch_ticker(&engine);
    let code = precompiled_code(options, &bytes);

    // A command is the only guest of its process, with the same caps as a served one.
    let budget = Budget::new(DescriptorPlan::current().guests);
    let name: std::sync::Arc<str> = std::sync::Arc::from("command");
    let fds = InstanceFds::new(&budget, &name, options.dirs.len())
        .context("the descriptor limit leaves no room for the --dir directories")?;
    let mut wasi = WasiCtxBuilder::new();
    wasi.inherit_stdio()
        .args(&options.args)
        .envs(&options.env)
        .allow_tcp(false)
        .allow_udp(false);
    for d in &options.dirs {
        let perms = if d.writable {
            wasmtime_wasi::FsPerms::ReadWrite
        } else {
            wasmtime_wasi::FsPerms::ReadOnly
        };
        wasi.preopened_dir(&d.host, &d.guest, perms)
            .map_err(wt)
            .with_context(|| format!("cannot open directory {} for --dir", d.host.display()))?;
    }
    let limiter = MemoryLimiter::new(options.max_memory);
    let timeout = options.timeout.unwrap_or(Duration::from_secs(u64::MAX / 4));

    // SAFETY (both deserializations): `code` was made by `compile_command` from exactly these
    // bytes (its sidecar) and is intact (its trailing sha256); Wasmtime refuses code compiled
    // for another engine configuration, and the command is compiled then.
    let (result, exceeded) = if is_module(&bytes) {
        let module = code_or_compile(
            code,
            |c| unsafe { Module::deserialize(&engine, c) },
            || Module::new(&engine, &bytes),
            &options.path,
        )?;
        if !module.exports().any(|e| e.name() == "_start") {
            bail!(
                "{} is a WASI preview 1 module without `_start`; `wms run` runs commands (programs with `main`)",
                options.path.display()
            );
        }
        let mut linker = wasmtime::Linker::new(&engine);
        crate::wagi::add_p1_to_linker(&mut linker)?;
        let mut state = P1Command {
            p1: wasi.build_p1(),
            limiter,
            fds,
        };
        state
            .p1
            .ctx()
            .table
            .set_max_capacity(descriptors::table_capacity());
        let mut store = guest_store(&engine, state, timeout, None);
        let pre = linker
            .instantiate_pre(&module)
            .map_err(wt)
            .context("cannot link the module's imports")?;
        let result = tokio::time::timeout(timeout, async {
            let instance = pre.instantiate_async(&mut store).await?;
            let start = instance.get_typed_func::<(), ()>(&mut store, "_start")?;
            start.call_async(&mut store, ()).await
        })
        .await;
        (result.map(|r| r.map(|()| 0)), store.data().limiter.exceeded)
    } else {
        let component = code_or_compile(
            code,
            |c| unsafe { Component::deserialize(&engine, c) },
            || Component::new(&engine, &bytes),
            &options.path,
        )?;
        let mut linker = wasmtime::component::Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(wt)?;
        add_open_hook(&mut linker)?;
        // WASI 0.3 commands: its CLI, clocks and random (files through 0.2, counted; no sockets).
        wasmtime_wasi::p3::cli::add_to_linker(&mut linker)
            .and_then(|()| wasmtime_wasi::p3::clocks::add_to_linker(&mut linker))
            .and_then(|()| wasmtime_wasi::p3::random::add_to_linker(&mut linker))
            .map_err(wt)?;
        let pre = linker
            .instantiate_pre(&component)
            .map_err(wt)
            .context("cannot link the component's imports; `wms run` provides WASI 0.2 and WASI 0.3's cli, clocks and random (not 0.3's filesystem or sockets)")?;
        let p3 = component
            .component_type()
            .exports(&engine)
            .any(|(name, _)| name.starts_with("wasi:cli/run@0.3"));
        let mut store = guest_store(
            &engine,
            P2State {
                wasi: wasi.build(),
                table: {
                    let mut table = ResourceTable::new();
                    table.set_max_capacity(descriptors::table_capacity());
                    table
                },
                limiter,
                fds,
            },
            timeout,
            None,
        );
        let result = if p3 {
            let pre = wasmtime_wasi::p3::bindings::CommandPre::new(pre).map_err(|e| {
                anyhow!(
                    "{}: its `wasi:cli/run` export does not match WASI 0.3: {e}\n  help: build it against WASI 0.3.0 or later (the `wasip3` crate 0.7 or later); 0.3 release candidates are not supported",
                    options.path.display()
                )
            })?;
            tokio::time::timeout(timeout, async {
                let command = pre.instantiate_async(&mut store).await?;
                store
                    .run_concurrent(async |accessor| {
                        command.wasi_cli_run().call_run(accessor).await
                    })
                    .await?
            })
            .await
        } else {
            let pre = CommandPre::new(pre).map_err(|e| anyhow!("{} does not export `wasi:cli/run`: {e}; `wms run` runs commands, `wms up` serves HTTP components", options.path.display()))?;
            tokio::time::timeout(timeout, async {
                let command = pre.instantiate_async(&mut store).await?;
                command.wasi_cli_run().call_run(&mut store).await
            })
            .await
        };
        (
            result.map(|r| r.map(|ok| if ok.is_ok() { 0 } else { 1 })),
            store.data().limiter.exceeded,
        )
    };
    Ok(match result {
        Err(_) => CommandOutcome::Timeout(timeout),
        Ok(Ok(code)) => CommandOutcome::Exit(code),
        Ok(Err(e)) => {
            if let Some(exit) = e.downcast_ref::<wasmtime_wasi::I32Exit>() {
                CommandOutcome::Exit(exit.0)
            } else if exceeded {
                CommandOutcome::MemoryLimit(options.max_memory)
            } else if e.downcast_ref::<wasmtime::Trap>() == Some(&wasmtime::Trap::Interrupt) {
                CommandOutcome::Timeout(timeout)
            } else {
                CommandOutcome::Trap(
                    format!("{e:?}")
                        .lines()
                        .take(3)
                        .collect::<Vec<_>>()
                        .join(" | "),
                )
            }
        }
    })
}

//! The engine: code generator and target, memory layout, the pool sized to this host and its
//! resident budget, and the epoch ticker.

use anyhow::{Context as _, anyhow, bail};
use wasmtime::component::Linker;
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};
use wms_manifest::App;

use crate::guest::{HostState, MAX_TABLE_ELEMENTS};
use crate::http_p2::http_linker;
use crate::pool::{self, PoolPlan};
use crate::{
    Allocation, DEFAULT_POOL_IDLE_RELEASE, EPOCH_TICK, EngineKind, EngineReport, Resident,
    RuntimeOptions, wt,
};

pub(crate) fn build_engine(
    options: &RuntimeOptions,
    wanted_slots: u32,
    max_memory: u64,
    max_concurrent: usize,
) -> anyhow::Result<(Engine, EngineReport, Config)> {
    let mut config = Config::new();
    config.epoch_interruption(true);
    let engine_kind = effective_engine(options.engine);
    if engine_kind == EngineKind::Cranelift
        && !host_has_riscv_vector()
        && cfg!(target_arch = "riscv64")
    {
        // Cranelift needs the V extension for 128-bit SIMD; without it, it panics compiling a
        // SIMD component (VisionFive 2). Turning SIMD off makes such a component a clear
        // validation error at start instead; Pulley runs it on any CPU.
        config.wasm_simd(false).wasm_relaxed_simd(false);
        tracing::info!(
            "riscv64 without the vector extension: WebAssembly SIMD is off for Cranelift (--engine pulley runs SIMD components)"
        );
    }
    let target = match engine_kind {
        EngineKind::Cranelift => std::env::consts::ARCH.to_string(),
        EngineKind::Pulley => {
            let t = if cfg!(target_pointer_width = "64") {
                "pulley64"
            } else {
                "pulley32"
            };
            config.target(t).map_err(|e| anyhow!("{e:?}"))?;
            t.to_string()
        }
    };
    let probed = pool::probe_address_space();
    let mut plan = match options.allocation {
        Allocation::Auto => pool::plan(wanted_slots, max_memory, probed),
        Allocation::OnDemand => PoolPlan {
            slots: 0,
            pooling: false,
            ..pool::plan(wanted_slots, max_memory, probed)
        },
    };
    let budget = pool::ResidentBudget::choose(options.pool_resident_budget);
    loop {
        let mut cfg = config.clone();
        apply_memory_layout(&mut cfg, &plan, max_memory);
        if plan.pooling {
            apply_pool(&mut cfg, &plan, keep_resident(&budget, plan.slots));
        }
        match Engine::new(&cfg) {
            Ok(engine) => {
                let max_concurrent = if plan.pooling {
                    max_concurrent.min(plan.slots as usize)
                } else {
                    max_concurrent
                };
                if let Some(ceiling) = pool::memory_ceiling() {
                    let worst = max_memory.saturating_mul(max_concurrent as u64);
                    if worst > ceiling.bytes() {
                        tracing::info!(
                            "worst case: {max_concurrent} concurrent requests at up to {} each could use {} of memory, more than {ceiling}; lower max_memory or max_concurrent_requests to rule it out",
                            pool::human(max_memory),
                            pool::human(worst),
                        );
                    }
                }
                start_epoch_ticker(&engine);
                let report = EngineReport {
                    engine: engine_kind,
                    target,
                    resident: plan.pooling.then(|| {
                        let (memory, table) = keep_resident(&budget, plan.slots);
                        Resident {
                            budget: budget.clone(),
                            memory,
                            table,
                            idle_release: Some(
                                options
                                    .pool_idle_release
                                    .unwrap_or(DEFAULT_POOL_IDLE_RELEASE),
                            )
                            .filter(|d| !d.is_zero()),
                        }
                    }),
                    pool: plan,
                    max_concurrent_requests: max_concurrent,
                };
                return Ok((engine, report, cfg));
            }
            Err(e) if plan.pooling => {
                // The probe said it fits but the mapping failed (other reservations, overcommit
                // settings): halve and retry, down to on-demand.
                tracing::debug!("pool of {} slots failed: {e:?}", plan.slots);
                let smaller = pool::plan(plan.slots / 2, max_memory, plan.reserved());
                plan = if plan.slots / 2 >= pool::MIN_POOL_SLOTS && smaller.pooling {
                    PoolPlan {
                        probed_address_space: probed,
                        ..smaller
                    }
                } else {
                    PoolPlan {
                        slots: 0,
                        pooling: false,
                        ..plan
                    }
                };
            }
            Err(e) => bail!("cannot create the Wasmtime engine: {e:?}"),
        }
    }
}

/// A Pulley engine (on-demand allocation) for components Cranelift cannot compile on this CPU.
pub(crate) fn pulley_fallback() -> anyhow::Result<(Engine, Linker<HostState>)> {
    let mut config = Config::new();
    config.epoch_interruption(true);
    let t = if cfg!(target_pointer_width = "64") {
        "pulley64"
    } else {
        "pulley32"
    };
    config.target(t).map_err(wt)?;
    config.memory_reservation(wms_manifest::DEFAULT_MAX_MEMORY.next_power_of_two());
    config.memory_guard_size(64 << 10);
    let engine = Engine::new(&config)
        .map_err(wt)
        .context("create the Pulley fallback engine")?;
    start_epoch_ticker(&engine);
    let linker = http_linker(&engine)?;
    Ok((engine, linker))
}

/// Whether this CPU has the RISC-V vector extension (asked with the `riscv_hwprobe` syscall);
/// true on other architectures, where the question does not arise.
pub fn host_has_riscv_vector() -> bool {
    #[cfg(all(target_arch = "riscv64", target_os = "linux"))]
    {
        #[repr(C)]
        struct Pair {
            key: i64,
            value: u64,
        }
        const SYS_RISCV_HWPROBE: libc::c_long = 258;
        const KEY_IMA_EXT_0: i64 = 4;
        const IMA_V: u64 = 1 << 2;
        let mut pair = Pair {
            key: KEY_IMA_EXT_0,
            value: 0,
        };
        // SAFETY: riscv_hwprobe fills `pair`, an array of one element we own; no CPU set.
        let rc = unsafe {
            libc::syscall(
                SYS_RISCV_HWPROBE,
                &mut pair as *mut Pair,
                1usize,
                0usize,
                std::ptr::null::<u8>(),
                0u32,
            )
        };
        rc == 0 && pair.key == KEY_IMA_EXT_0 && pair.value & IMA_V != 0
    }
    #[cfg(not(all(target_arch = "riscv64", target_os = "linux")))]
    {
        true
    }
}

/// Whether Cranelift can generate native code for the architecture wms runs on.
pub const CRANELIFT_NATIVE: bool = cfg!(any(
    target_arch = "x86_64",
    target_arch = "aarch64",
    target_arch = "riscv64",
    target_arch = "s390x"
));

/// The engine to use: Pulley where Cranelift has no back end for this architecture.
pub fn effective_engine(requested: EngineKind) -> EngineKind {
    if requested == EngineKind::Cranelift && !CRANELIFT_NATIVE {
        tracing::warn!(
            "Cranelift has no back end for {}; running guests in the Pulley interpreter",
            std::env::consts::ARCH
        );
        return EngineKind::Pulley;
    }
    requested
}

/// What each linear memory and table of the pool keeps resident between requests: the
/// budget's share, and without `PAGEMAP_SCAN` at most 1 MiB / 64 KiB (everything kept is then
/// memset on every reset, not just the dirty pages).
fn keep_resident(budget: &pool::ResidentBudget, slots: u32) -> (u64, u64) {
    let (memory, table) = budget.keep_per_slot(slots);
    if PoolingAllocationConfig::is_pagemap_scan_available() {
        (memory, table)
    } else {
        (memory.min(1 << 20), table.min(64 << 10))
    }
}

fn apply_pool(config: &mut Config, plan: &PoolPlan, (memory_keep, table_keep): (u64, u64)) {
    let mut pool = PoolingAllocationConfig::new();
    let slots = plan.slots;
    pool.total_component_instances(slots)
        .total_core_instances(slots.saturating_mul(8))
        .total_memories(slots.saturating_mul(pool::MEMORIES_PER_SLOT))
        .total_tables(slots.saturating_mul(pool::TABLES_PER_SLOT))
        .total_stacks(slots)
        .max_memories_per_component(pool::MEMORIES_PER_SLOT)
        .max_tables_per_component(pool::TABLES_PER_SLOT)
        .max_core_instances_per_component(pool::CORE_INSTANCES_PER_SLOT)
        .table_elements(MAX_TABLE_ELEMENTS)
        .max_memory_size(usize::try_from(plan.max_memory).unwrap_or(usize::MAX))
        // Reset what a request dirtied by memset instead of madvise: madvise on a
        // multi-threaded process costs TLB shoot-downs on every core. With PAGEMAP_SCAN (Linux
        // 6.7+) only the dirty pages are touched; elsewhere the low bytes are memset.
        // What stays resident is bounded by the budget: every slot that was ever used keeps up
        // to this much, and Wasmtime never gives it back while the pool lives.
        .pagemap_scan(wasmtime::Enabled::Auto)
        .linear_memory_keep_resident(usize::try_from(memory_keep).unwrap_or(usize::MAX))
        .table_keep_resident(usize::try_from(table_keep).unwrap_or(usize::MAX));
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
}

/// The memory layout compiled into code: the same for the pool and on demand, so precompiled
/// code made by `wms compile` for a board's address space loads there either way.
pub(crate) fn apply_memory_layout(config: &mut Config, plan: &PoolPlan, max_memory: u64) {
    if plan.memory_reservation >= 4 << 30 && plan.pooling {
        config.memory_reservation(plan.memory_reservation);
        config.memory_guard_size(plan.guard_size);
    } else {
        config.memory_reservation(max_memory.next_power_of_two().max(1 << 20));
        config.memory_guard_size(64 << 10);
    }
    config.memory_reservation_for_growth(0);
}

pub(crate) fn start_epoch_ticker(engine: &Engine) {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("wms-epoch".into())
        .spawn(move || {
            loop {
                std::thread::sleep(EPOCH_TICK);
                match weak.upgrade() {
                    Some(engine) => {
                        // Stamped first: a guest running now sees the tick right after it.
                        crate::metrics::tick(std::time::Instant::now());
                        engine.increment_epoch();
                    }
                    None => return,
                }
            }
        })
        .expect("spawn the epoch ticker thread");
}

/// What an app asks of the pool: instance slots (its process concurrency limit) and the largest
/// memory limit of its components. `wms up` and `wms compile` must agree on it, since the memory
/// layout compiled into code follows from it.
pub(crate) fn pool_demand(app: &App) -> (u32, u64) {
    let max_memory = app
        .components
        .values()
        .map(|c| c.limits.max_memory)
        .max()
        .unwrap_or(wms_manifest::DEFAULT_MAX_MEMORY);
    let slots = u32::try_from(app.max_concurrent_requests)
        .unwrap_or(u32::MAX)
        .max(1);
    (slots, max_memory)
}

//! Giving back what idle pool slots keep.
//!
//! Wasmtime's pool lets every slot that was ever used keep up to its `keep_resident` share for as
//! long as the pool lives, and has no call to give it back. So when slots stay idle past a
//! period, wms builds a fresh engine and pool with the same configuration, moves the app's code
//! onto it (serialized and deserialized in memory: no file is read and nothing is compiled) and
//! swaps it in. Requests in flight finish on the old pool, which is unmapped when the last one
//! ends. Traffic that goes on keeps its slots: only what a burst left behind, or everything after
//! a period with no request at all, is given back.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::sync::Semaphore;
use wasmtime::component::Component;
use wasmtime::{Config, Engine};
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p3::bindings::ServicePre;

use crate::http_p2::HttpPre;
use crate::pool::{MEMORIES_PER_SLOT, human};
use crate::{Code, Generation, Kind, LoadedComponent, wt};

/// How many times per period the releaser looks at the pool.
const LOOKS_PER_PERIOD: usize = 4;

/// Less than this kept by idle slots is not worth a new pool.
const MIN_RELEASE: usize = 1 << 20;

/// The most requests in flight at once since the releaser last looked.
#[derive(Default)]
pub(crate) struct Activity {
    peak: AtomicUsize,
}

impl Activity {
    /// A request started with `in_flight` requests in flight (itself included).
    pub(crate) fn started(&self, in_flight: usize) {
        self.peak.fetch_max(in_flight, Ordering::Relaxed);
    }

    fn take(&self) -> usize {
        self.peak.swap(0, Ordering::Relaxed)
    }
}

/// The thread that watches the pool and replaces it when idle slots keep memory.
pub(crate) struct Releaser {
    pub(crate) current: Weak<RwLock<Arc<Generation>>>,
    /// The configuration the running engine was built with.
    pub(crate) config: Config,
    pub(crate) period: Duration,
    pub(crate) activity: Arc<Activity>,
    pub(crate) global: Arc<Semaphore>,
    pub(crate) max_in_flight: usize,
}

pub(crate) fn start(releaser: Releaser) -> anyhow::Result<()> {
    std::thread::Builder::new()
        .name("wms-pool-release".into())
        .spawn(move || releaser.run())
        .context("start the pool release thread")?;
    Ok(())
}

impl Releaser {
    fn run(self) {
        let tick = self.period.max(Duration::from_secs(1)) / LOOKS_PER_PERIOD as u32;
        // The engine swapped out last: no new pool while it is still mapped (its requests, or
        // idle 0.3 instances, still hold it), so at most two pools exist at once.
        let mut previous: Option<wasmtime::EngineWeak> = None;
        // The peak concurrency seen in each of the last LOOKS_PER_PERIOD ticks.
        let mut recent = VecDeque::with_capacity(LOOKS_PER_PERIOD);
        loop {
            std::thread::sleep(tick);
            // The runtime is gone: so is this thread.
            let Some(current) = self.current.upgrade() else {
                return;
            };
            let in_flight = self.max_in_flight - self.global.available_permits();
            if recent.len() == LOOKS_PER_PERIOD {
                recent.pop_front();
            }
            recent.push_back(self.activity.take().max(in_flight));
            if recent.len() < LOOKS_PER_PERIOD {
                continue;
            }
            let generation = current.read().unwrap_or_else(|e| e.into_inner()).clone();
            let Some(metrics) = generation.engine.pooling_allocator_metrics() else {
                return;
            };
            let kept = metrics.unused_memory_bytes_resident()
                + metrics.unused_table_bytes_resident()
                + metrics.unused_stack_bytes_resident().unwrap_or(0);
            let warm = metrics.unused_warm_memories();
            let peak = recent.iter().copied().max().unwrap_or(0);
            if !worth_releasing(kept, warm, peak, generation.components.len())
                || previous.as_ref().is_some_and(|p| p.upgrade().is_some())
            {
                continue;
            }
            let started = Instant::now();
            match rebuild(&generation, &self.config) {
                Ok(fresh) => {
                    previous = Some(generation.engine.weak());
                    *current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(fresh);
                    recent.clear();
                    tracing::info!(
                        "gave back {} kept by idle pool slots ({warm} idle memories warm, at most {peak} requests at once in the last {:?}); fresh pool ready in {:?}",
                        human(kept as u64),
                        self.period,
                        started.elapsed()
                    );
                }
                Err(e) => {
                    tracing::warn!(
                        "cannot build a second pool to give back what idle slots keep ({e:#}); it stays within the resident budget"
                    );
                    return;
                }
            }
        }
    }
}

/// Whether a fresh pool is worth it: idle slots keep at least [`MIN_RELEASE`], and either no
/// request came for a whole period or more memories are warm than the recent traffic needs
/// (with room for each component to keep its own slot).
fn worth_releasing(kept: usize, warm_memories: u32, peak: usize, components: usize) -> bool {
    if kept < MIN_RELEASE {
        return false;
    }
    if peak == 0 {
        return true;
    }
    let needed = (2 * (peak + 1) + components) * MEMORIES_PER_SLOT as usize;
    warm_memories as usize > needed
}

/// A component's code moved to `engine` (of the same configuration) through its serialized form.
fn moved(component: &Component, engine: &Engine) -> anyhow::Result<Component> {
    let bytes = component.serialize().map_err(wt)?;
    // SAFETY: the bytes were serialized just now by Wasmtime from code this process loaded for
    // the same configuration; nothing else could have changed them.
    unsafe { Component::deserialize(engine, &bytes) }.map_err(wt)
}

/// The same components on a new engine and pool built from `config`.
fn rebuild(old: &Generation, config: &Config) -> anyhow::Result<Generation> {
    let engine = Engine::new(config)
        .map_err(wt)
        .context("create the engine")?;
    let mut http_linker = None;
    let mut wagi_linker = None;
    let mut components = Vec::with_capacity(old.components.len());
    for (id, comp) in &old.components {
        if !Engine::same(&comp.engine, &old.engine) {
            // The Pulley fallback allocates on demand: nothing to give back.
            components.push((id.clone(), comp.clone()));
            continue;
        }
        let code = match &comp.kind {
            Kind::Http(pre) => {
                let component = moved(pre.instance_pre().component(), &engine)?;
                let linker = match &http_linker {
                    Some(l) => l,
                    None => http_linker.insert(crate::http_p2::http_linker(&engine)?),
                };
                let pre = linker.instantiate_pre(&component).map_err(wt)?;
                Code::Http(HttpPre::P2(ProxyPre::new(pre).map_err(wt)?))
            }
            Kind::HttpP3(handler) => {
                let service = crate::http_p3::service_pre(handler);
                let component = moved(service.instance_pre().component(), &engine)?;
                let linker = match &http_linker {
                    Some(l) => l,
                    None => http_linker.insert(crate::http_p2::http_linker(&engine)?),
                };
                let pre = linker.instantiate_pre(&component).map_err(wt)?;
                Code::Http(HttpPre::P3(ServicePre::new(pre).map_err(wt)?))
            }
            Kind::Wagi(module) => {
                let linker = match &wagi_linker {
                    Some(l) => l,
                    None => wagi_linker.insert(crate::wagi::linker(&engine)?),
                };
                Code::Wagi(module.on_engine(&engine, linker)?)
            }
        };
        components.push((
            id.clone(),
            Arc::new_cyclic(|me| LoadedComponent {
                engine: engine.clone(),
                kind: code.into_kind(me),
                ..LoadedComponent::clone(comp)
            }),
        ));
    }
    crate::engine::start_epoch_ticker(&engine);
    Ok(Generation { components, engine })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_memory_is_given_back_only_when_traffic_does_not_need_it() {
        const MIB: usize = 1 << 20;
        // Little kept: never worth a new pool.
        assert!(!worth_releasing(MIB - 1, 100, 0, 1));
        // No request for a whole period: give it all back.
        assert!(worth_releasing(MIB, 1, 0, 1));
        // Steady traffic of 4 at once on one component keeps its slots warm.
        assert!(!worth_releasing(64 * MIB, 11 * 2, 4, 1));
        // A burst left 48 slots warm; traffic is back to one at a time.
        assert!(worth_releasing(64 * MIB, 48 * 2, 1, 1));
        // Several components each keep a slot.
        assert!(!worth_releasing(64 * MIB, 10 * 2, 1, 6));
    }
}

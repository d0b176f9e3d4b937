//! What `wms` counts for the admin listener's `/metrics` (Prometheus text), with the
//! `prometheus-client` crate. Off unless the operator asks for an admin listener: then
//! [`crate::RuntimeOptions::metrics`] holds a [`Metrics`] and every component and route resolves
//! its counters and histograms once, at start-up, so a request only touches atomics (and a
//! histogram's uncontended lock), never a label lookup.
//!
//! The names, types and labels are listed in docs/operations.md; keep both in step.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::{EPOCH_TICK, Failure};

/// The `Content-Type` of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ComponentLabel {
    component: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    component: String,
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    component: String,
    route: String,
    class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    component: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    component: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OriginLabels {
    component: String,
    origin: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Request latency buckets, in seconds: 250 µs to 30 s.
fn latency_histogram() -> Histogram {
    Histogram::new([
        0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
        10.0, 30.0,
    ])
}

/// Instantiation buckets, in seconds: 10 µs to 1 s (a pooled instance takes tens of µs).
fn instantiation_histogram() -> Histogram {
    Histogram::new([
        0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
        0.1, 1.0,
    ])
}

/// Why a guest's request failed, as the `reason` label says it.
const REASONS: [&str; 9] = [
    "trap",
    "timeout",
    "memory_limit",
    "no_response",
    "exit",
    "guest_error",
    "bad_cgi",
    "request_body",
    "internal",
];

fn reason_index(f: &Failure) -> Option<usize> {
    Some(match f {
        Failure::Overloaded { .. } => return None,
        Failure::Trap { .. } => 0,
        Failure::Timeout { .. } => 1,
        Failure::MemoryLimit { .. } => 2,
        Failure::NoResponse => 3,
        Failure::Exit { .. } => 4,
        Failure::GuestError { .. } => 5,
        Failure::BadCgi { .. } => 6,
        Failure::RequestBody { .. } => 7,
        Failure::Internal { .. } => 8,
    })
}

/// Where a component's code came from at start-up (the `origin` label).
#[derive(Debug, Clone, Copy)]
pub(crate) enum CodeOrigin {
    Compiled,
    Cache,
    Precompiled,
}

/// The process's metrics: the registry the admin listener encodes, and the families every
/// component's and route's handles come from.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    request_duration: HistogramFamily<RouteLabels>,
    instantiation: HistogramFamily<ComponentLabel>,
    guest_cpu: Family<ComponentLabel, Counter<f64, AtomicU64>>,
    memory_high_water: Family<ComponentLabel, Gauge>,
    failures: Family<ReasonLabels, Counter>,
    rejected: Family<ComponentLabel, Counter>,
    outbound: Family<OutcomeLabels, Counter>,
    code_loads: Family<OriginLabels, Counter>,
    reloads: Family<ResultLabel, Counter>,
    open_connections: Gauge,
    process: Arc<ProcessCollector>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "wms_requests",
            "Requests answered, by component, route and status class (1xx..5xx)",
            requests.clone(),
        );
        let request_duration =
            HistogramFamily::new_with_constructor(latency_histogram as fn() -> _);
        registry.register(
            "wms_request_duration_seconds",
            "Time from routing a request to its response head",
            request_duration.clone(),
        );
        let instantiation =
            HistogramFamily::new_with_constructor(instantiation_histogram as fn() -> _);
        registry.register(
            "wms_instantiation_duration_seconds",
            "Time to instantiate a component (a fresh instance per 0.2 or WAGI request; per reused instance for 0.3)",
            instantiation.clone(),
        );
        let guest_cpu = Family::<ComponentLabel, Counter<f64, AtomicU64>>::default();
        registry.register(
            "wms_guest_cpu_seconds",
            "CPU time spent in the component's guest code, sampled at the 10 ms epoch tick",
            guest_cpu.clone(),
        );
        let memory_high_water = Family::<ComponentLabel, Gauge>::default();
        registry.register(
            "wms_guest_memory_high_water_bytes",
            "The most linear memory one instance of the component has held",
            memory_high_water.clone(),
        );
        let failures = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "wms_guest_failures",
            "Guest runs that failed, by reason (trap, timeout, memory_limit, no_response, exit, guest_error, bad_cgi, request_body, internal)",
            failures.clone(),
        );
        let rejected = Family::<ComponentLabel, Counter>::default();
        registry.register(
            "wms_rejected_requests",
            "Requests answered 503 at a concurrency limit (process, component, instance pool or descriptor budget)",
            rejected.clone(),
        );
        let outbound = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "wms_outbound_requests",
            "Outbound HTTP requests from guests, by outcome (allowed: sent; denied: refused by allowed_outbound_hosts or the address guard)",
            outbound.clone(),
        );
        let code_loads = Family::<OriginLabels, Counter>::default();
        registry.register(
            "wms_code_loads",
            "Components' code at start-up, by origin (compiled; cache: the compiled-code cache hit; precompiled)",
            code_loads.clone(),
        );
        let reloads = Family::<ResultLabel, Counter>::default();
        registry.register(
            "wms_reloads",
            "Reloads of the app (SIGHUP, or a watched file changed with --watch), by result (success: the new version serves; failure: refused, the previous version keeps serving)",
            reloads.clone(),
        );
        for result in ["success", "failure"] {
            let _ = reloads.get_or_create(&ResultLabel { result });
        }
        let open_connections = Gauge::default();
        registry.register(
            "wms_open_connections",
            "Client connections open on the app listener",
            open_connections.clone(),
        );
        let process = Arc::new(ProcessCollector::default());
        registry.register_collector(Box::new(process.clone()));
        Self {
            registry,
            requests,
            request_duration,
            instantiation,
            guest_cpu,
            memory_high_water,
            failures,
            rejected,
            outbound,
            code_loads,
            reloads,
            open_connections,
            process,
        }
    }

    /// Everything in the Prometheus text format (version 0.0.4).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    /// The handles of one route of `component` (pattern `route` as written in the manifest).
    pub fn route(&self, component: &str, route: &str) -> RouteMetrics {
        let class = |c: &str| {
            self.requests
                .get_or_create(&RequestLabels {
                    component: component.to_string(),
                    route: route.to_string(),
                    class: c.to_string(),
                })
                .clone()
        };
        RouteMetrics {
            classes: ["1xx", "2xx", "3xx", "4xx", "5xx"].map(class),
            duration: self
                .request_duration
                .get_or_create(&RouteLabels {
                    component: component.to_string(),
                    route: route.to_string(),
                })
                .clone(),
        }
    }

    /// One reload of the app, which succeeded or was refused.
    pub fn reloaded(&self, success: bool) {
        let result = if success { "success" } else { "failure" };
        self.reloads.get_or_create(&ResultLabel { result }).inc();
    }

    /// The gauge of open client connections.
    pub fn open_connections(&self) -> &Gauge {
        &self.open_connections
    }

    pub(crate) fn component(&self, component: &str) -> Arc<ComponentMetrics> {
        let label = ComponentLabel {
            component: component.to_string(),
        };
        let outcome = |o: &str| {
            self.outbound
                .get_or_create(&OutcomeLabels {
                    component: component.to_string(),
                    outcome: o.to_string(),
                })
                .clone()
        };
        Arc::new(ComponentMetrics {
            instantiation: self.instantiation.get_or_create(&label).clone(),
            cpu: self.guest_cpu.get_or_create(&label).clone(),
            memory_high_water: self.memory_high_water.get_or_create(&label).clone(),
            failures: REASONS.map(|r| {
                self.failures
                    .get_or_create(&ReasonLabels {
                        component: component.to_string(),
                        reason: r.to_string(),
                    })
                    .clone()
            }),
            rejected: self.rejected.get_or_create(&label).clone(),
            outbound_allowed: outcome("allowed"),
            outbound_denied: outcome("denied"),
        })
    }

    pub(crate) fn code_loaded(&self, component: &str, origin: CodeOrigin) {
        self.code_loads
            .get_or_create(&OriginLabels {
                component: component.to_string(),
                origin: match origin {
                    CodeOrigin::Compiled => "compiled",
                    CodeOrigin::Cache => "cache",
                    CodeOrigin::Precompiled => "precompiled",
                }
                .to_string(),
            })
            .inc();
    }

    /// How the runtime tells the pool's slots in use and in all, read at each scrape; a
    /// reloaded app's runtime replaces its predecessor's.
    pub(crate) fn set_pool_probe(&self, probe: PoolProbe) {
        *self.process.pool.write().unwrap_or_else(|e| e.into_inner()) = Some(probe);
    }
}

/// The counters of one route, resolved at start-up.
#[derive(Clone, Debug)]
pub struct RouteMetrics {
    classes: [Counter; 5],
    duration: Histogram,
}

impl RouteMetrics {
    /// One request answered with `status` after `elapsed`.
    pub fn observe(&self, status: u16, elapsed: Duration) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.classes[class].inc();
        self.duration.observe(elapsed.as_secs_f64());
    }
}

/// The counters of one component, resolved at start-up.
#[derive(Debug)]
pub(crate) struct ComponentMetrics {
    instantiation: Histogram,
    cpu: Counter<f64, AtomicU64>,
    memory_high_water: Gauge,
    failures: [Counter; REASONS.len()],
    rejected: Counter,
    pub(crate) outbound_allowed: Counter,
    pub(crate) outbound_denied: Counter,
}

impl ComponentMetrics {
    pub(crate) fn failure(&self, f: &Failure) {
        match reason_index(f) {
            Some(i) => self.failures[i].inc(),
            None => self.rejected.inc(),
        };
    }

    pub(crate) fn instantiated(&self, took: Duration) {
        self.instantiation.observe(took.as_secs_f64());
    }

    /// An instance of the component holds `bytes` of linear memory.
    pub(crate) fn memory(&self, bytes: usize) {
        let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
        self.memory_high_water
            .inner()
            .fetch_max(bytes, Ordering::Relaxed);
    }

    /// Called from a store's epoch callback at `now`: counts one tick of guest CPU time when the
    /// guest was running as the tick came (see [`tick_is_fresh`]).
    pub(crate) fn epoch_callback(&self, now: Instant) {
        if tick_is_fresh(now) {
            self.cpu.inc_by(EPOCH_TICK.as_secs_f64());
        }
    }
}

/// When the last epoch tick came, in nanoseconds since [`clock_base`].
static LAST_TICK: AtomicU64 = AtomicU64::new(0);

fn clock_base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

/// The epoch ticker says a tick is about to be given.
pub(crate) fn tick(now: Instant) {
    let nanos = u64::try_from(now.duration_since(clock_base()).as_nanos()).unwrap_or(u64::MAX);
    LAST_TICK.store(nanos, Ordering::Relaxed);
}

/// Whether a store's epoch callback at `now` follows the last tick closely enough that its guest
/// was running when the tick came: Wasmtime checks the epoch at every function entry and loop
/// head, so a running guest sees a tick within microseconds. A guest that was waiting (on the
/// host, for a thread, or an idle reused instance) sees it only when it runs again, later: that
/// tick was not its CPU time and is not counted.
fn tick_is_fresh(now: Instant) -> bool {
    let since_base = u64::try_from(now.duration_since(clock_base()).as_nanos()).unwrap_or(0);
    fresh(LAST_TICK.load(Ordering::Relaxed), since_base)
}

/// Whether a callback `now` nanoseconds after the clock base follows a tick at `last` closely.
fn fresh(last: u64, now: u64) -> bool {
    now.saturating_sub(last) < FRESH_TICK.as_nanos() as u64
}

/// How soon after a tick a callback counts it as CPU time.
const FRESH_TICK: Duration = Duration::from_millis(2);

/// The pool's slots: `(in use, in all)`, or `None` without a pool.
pub(crate) type PoolProbe = Box<dyn Fn() -> Option<(u64, u64)> + Send + Sync>;

/// Per-process figures read at each scrape: resident memory and CPU time (from /proc), and the
/// pool's slots.
#[derive(Default)]
struct ProcessCollector {
    pool: RwLock<Option<PoolProbe>>,
}

impl std::fmt::Debug for ProcessCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProcessCollector")
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if let Some(rss) = resident_bytes() {
            let g = ConstGauge::new(i64::try_from(rss).unwrap_or(i64::MAX));
            let m = encoder.encode_descriptor(
                "process_resident_memory_bytes",
                "Resident memory of the wms process",
                None,
                g.metric_type(),
            )?;
            g.encode(m)?;
        }
        if let Some(cpu) = cpu_seconds() {
            let c = ConstCounter::new(cpu);
            let m = encoder.encode_descriptor(
                "process_cpu_seconds",
                "CPU time (user and system) of the wms process",
                None,
                c.metric_type(),
            )?;
            c.encode(m)?;
        }
        let pool = self
            .pool
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .and_then(|probe| probe());
        if let Some((in_use, all)) = pool {
            let mut m = encoder.encode_descriptor(
                "wms_pool_slots",
                "Instance slots of the pooling allocator, in use or free",
                None,
                prometheus_client::metrics::MetricType::Gauge,
            )?;
            for (state, n) in [("in_use", in_use), ("free", all.saturating_sub(in_use))] {
                let g = ConstGauge::new(i64::try_from(n).unwrap_or(i64::MAX));
                g.encode(m.encode_family(&StateLabel { state })?)?;
            }
        }
        Ok(())
    }
}

/// The process's resident memory, from /proc/self/statm.
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok()?)
}

/// The process's user and system CPU time, from /proc/self/stat.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces) in parentheses; utime and stime are
    // fields 14 and 15, so 12th and 13th after it.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Some((utime + stime) as f64 / ticks as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_labels_and_values_in_prometheus_text() {
        let m = Metrics::new();
        let route = m.route("kit", "/...");
        route.observe(200, Duration::from_millis(3));
        route.observe(204, Duration::from_millis(1));
        route.observe(503, Duration::from_micros(100));
        let c = m.component("kit");
        c.failure(&Failure::Trap {
            message: "x".into(),
        });
        c.failure(&Failure::Overloaded {
            scope: "server".into(),
        });
        c.memory(1 << 20);
        c.memory(64 << 10);
        c.instantiated(Duration::from_micros(40));
        m.code_loaded("kit", CodeOrigin::Cache);
        m.set_pool_probe(Box::new(|| Some((3, 10))));
        let text = m.encode();
        for line in [
            "# TYPE wms_requests_total counter",
            "wms_requests_total{component=\"kit\",route=\"/...\",class=\"2xx\"} 2",
            "wms_requests_total{component=\"kit\",route=\"/...\",class=\"5xx\"} 1",
            "wms_requests_total{component=\"kit\",route=\"/...\",class=\"4xx\"} 0",
            "# TYPE wms_request_duration_seconds histogram",
            "wms_request_duration_seconds_count{component=\"kit\",route=\"/...\"} 3",
            "wms_request_duration_seconds_bucket{component=\"kit\",route=\"/...\",le=\"0.001\"} 2",
            "wms_guest_failures_total{component=\"kit\",reason=\"trap\"} 1",
            "wms_guest_failures_total{component=\"kit\",reason=\"timeout\"} 0",
            "wms_rejected_requests_total{component=\"kit\"} 1",
            "wms_guest_memory_high_water_bytes{component=\"kit\"} 1048576",
            "wms_instantiation_duration_seconds_count{component=\"kit\"} 1",
            "wms_code_loads_total{component=\"kit\",origin=\"cache\"} 1",
            "wms_outbound_requests_total{component=\"kit\",outcome=\"denied\"} 0",
            "# TYPE wms_guest_cpu_seconds_total counter",
            "wms_pool_slots{state=\"in_use\"} 3",
            "wms_pool_slots{state=\"free\"} 7",
            "# TYPE process_resident_memory_bytes gauge",
            "# TYPE process_cpu_seconds_total counter",
            "wms_open_connections 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in:\n{text}"
            );
        }
    }

    #[test]
    fn only_a_tick_seen_while_running_counts_as_cpu_time() {
        let tick = 5_000_000_000;
        assert!(fresh(tick, tick + 50_000));
        // A guest that was waiting sees the tick long after it came.
        assert!(!fresh(tick, tick + 7_000_000));
    }
}

//! One guest instance: its store data, memory limiter, counted descriptors and outbound
//! requests, deadline, and the task that runs it (cancelled when its client goes away).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use tokio::sync::OwnedSemaphorePermit;
use wasmtime::component::{Linker, Resource, ResourceTable};
use wasmtime::{Engine, Store, UpdateDeadline};
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::metrics::ComponentMetrics;
use crate::{BoxError, Failure, LoadedComponent, ResponseBody, descriptors, outbound, pool, wt};

/// Store data of one request.
pub struct HostState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    hooks: CountedHooks,
    pub(crate) limiter: MemoryLimiter,
    fds: descriptors::InstanceFds,
    variables: crate::variables::GuestVariables,
    sockets: crate::sockets::InstanceSockets,
    redis: crate::redis::OutboundServices,
    stores: crate::kv_host::GuestStores,
}

impl HostState {
    /// What the key-value and SQLite interfaces answer from.
    pub(crate) fn stores(&mut self) -> &mut crate::kv_host::GuestStores {
        &mut self.stores
    }

    /// What Spin's Redis interface sees (crate::redis).
    pub(crate) fn redis(&mut self) -> crate::redis::RedisView<'_> {
        crate::redis::RedisView {
            table: &mut self.table,
            state: &mut self.redis,
        }
    }

    /// What Spin's PostgreSQL interface sees (crate::postgres).
    pub(crate) fn postgres(&mut self) -> crate::postgres::PgView<'_> {
        crate::postgres::PgView {
            table: &mut self.table,
            state: &mut self.redis,
            streams: self.stores.stream_budget(),
        }
    }

    /// What Spin's MQTT interface sees (crate::mqtt).
    pub(crate) fn mqtt(&mut self) -> crate::mqtt::MqttView<'_> {
        crate::mqtt::MqttView {
            table: &mut self.table,
            state: &mut self.redis,
        }
    }

    /// What the checked socket interfaces see (crate::sockets).
    pub(crate) fn net(&mut self) -> crate::sockets::NetView<'_> {
        crate::sockets::NetView {
            sockets: wasmtime_wasi::sockets::WasiSocketsCtxView {
                ctx: self.wasi.sockets(),
                table: &mut self.table,
            },
            state: &mut self.sockets,
        }
    }

    /// What Spin's variables interfaces answer from.
    pub(crate) fn variables(&mut self) -> &mut crate::variables::GuestVariables {
        &mut self.variables
    }

    /// Makes the guest's outbound requests client spans, children of `parent` (`None`: none).
    pub(crate) fn trace_outbound(&mut self, parent: Option<opentelemetry::Context>) {
        self.hooks.policy.trace = parent;
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for HostState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

/// Caps an instance's linear memory (the sum over all its memories, so a component with several
/// memories gets no more than one with a single memory), its tables, and how many instances,
/// memories and tables its store may create (the pool enforces the same counts per slot; on
/// demand, Wasmtime's defaults of 10,000 each would apply). Remembers whether the memory cap was
/// hit so the failure can be reported as a memory limit rather than a bare trap.
pub(crate) struct MemoryLimiter {
    max_memory: usize,
    /// Bytes of linear memory the instance's memories hold together.
    total: usize,
    /// The growth last allowed, taken back if Wasmtime then fails to grow.
    pending: usize,
    pub(crate) exceeded: bool,
    /// Also told when the limit is hit, for whoever decides about reusing the instance.
    pub(crate) exceeded_flag: Option<Arc<std::sync::atomic::AtomicBool>>,
    /// Told each size the instance's memory grows to (its component's high-water mark).
    pub(crate) metrics: Option<Arc<ComponentMetrics>>,
}

/// Table elements an instance may hold.
pub(crate) const MAX_TABLE_ELEMENTS: usize = pool::TABLE_ELEMENTS;

/// Core instances one store may create: a component is several (its modules, the preview 1
/// adapter, shims); the same number the pool reserves per component.
const MAX_CORE_INSTANCES: usize = pool::CORE_INSTANCES_PER_SLOT as usize;

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Wasmtime asks with current = 0 when it creates a memory, so `total` covers every
        // memory of the store from its creation.
        let growth = desired.saturating_sub(current);
        match self.total.checked_add(growth) {
            Some(total) if total <= self.max_memory => {
                self.total = total;
                self.pending = growth;
                if let Some(m) = &self.metrics {
                    m.memory(total);
                }
                Ok(true)
            }
            _ => {
                self.exceeded = true;
                if let Some(flag) = &self.exceeded_flag {
                    flag.store(true, std::sync::atomic::Ordering::Relaxed);
                }
                Ok(false)
            }
        }
    }

    fn memory_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        self.total -= std::mem::take(&mut self.pending);
        Ok(())
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }

    fn instances(&self) -> usize {
        MAX_CORE_INSTANCES
    }

    fn memories(&self) -> usize {
        pool::MEMORIES_PER_SLOT as usize
    }

    fn tables(&self) -> usize {
        pool::TABLES_PER_SLOT as usize
    }
}

/// Store data that counts its guest's descriptors.
pub(crate) trait GuestState: Send + 'static {
    /// The instance's counts and the resource table its descriptors live in.
    fn fds_and_table(&mut self) -> (&mut descriptors::InstanceFds, &mut ResourceTable);
    /// The limiter of its memories, tables and instances.
    fn limiter(&mut self) -> &mut MemoryLimiter;
}

/// A store for one guest run, every executor's: its limiter installed and its deadline armed
/// (counting the guest's CPU time in `metrics`, if given).
pub(crate) fn guest_store<T: GuestState>(
    engine: &Engine,
    state: T,
    timeout: Duration,
    metrics: Option<Arc<ComponentMetrics>>,
) -> Store<T> {
    let mut store = Store::new(engine, state);
    store.limiter(|s| s.limiter());
    arm_deadline(&mut store, timeout, metrics);
    store
}

impl GuestState for HostState {
    fn fds_and_table(&mut self) -> (&mut descriptors::InstanceFds, &mut ResourceTable) {
        (&mut self.fds, &mut self.table)
    }

    fn limiter(&mut self) -> &mut MemoryLimiter {
        &mut self.limiter
    }
}

/// The `wasi:filesystem` interface whose `open-at` is wrapped (the version of Wasmtime's WIT; a
/// guest importing any 0.2.x resolves to it).
const FS_TYPES: &str = "wasi:filesystem/types@0.2.12";

/// Replaces `descriptor.open-at`, the call through which a component guest opens a host file
/// (sockets are counted by crate::sockets), with one that counts: over its instance's cap or the
/// process budget the open fails with `quota` and nothing is opened.
pub(crate) fn add_open_hook<T: GuestState + WasiView>(
    linker: &mut Linker<T>,
) -> anyhow::Result<()> {
    use wasmtime_wasi::filesystem::{Descriptor, WasiFilesystemView};
    use wasmtime_wasi::p2::bindings::filesystem::types::{
        DescriptorFlags, ErrorCode, HostDescriptor, OpenFlags, PathFlags,
    };
    type Args = (
        Resource<Descriptor>,
        PathFlags,
        String,
        OpenFlags,
        DescriptorFlags,
    );
    linker.allow_shadowing(true);
    linker
        .instance(FS_TYPES)
        .map_err(wt)?
        .func_wrap_async(
            "[method]descriptor.open-at",
            |mut store: wasmtime::StoreContextMut<'_, T>,
             (dir, path_flags, path, oflags, flags): Args| {
                Box::new(async move {
                    {
                        let (fds, table) = store.data_mut().fds_and_table();
                        if fds.begin_open_p2(table).is_err() {
                            return Ok((Err(ErrorCode::Quota),));
                        }
                    }
                    let result = {
                        let mut view = store.data_mut().filesystem();
                        HostDescriptor::open_at(&mut view, dir, path_flags, path, oflags, flags)
                            .await
                    };
                    let (fds, table) = store.data_mut().fds_and_table();
                    match result {
                        Ok(fd) => {
                            fds.end_open_p2(Some(descriptors::Held::of(table, &fd)));
                            Ok((Ok(fd),))
                        }
                        Err(e) => {
                            fds.end_open_p2(None);
                            e.downcast().map(|code| (Err(code),))
                        }
                    }
                })
            },
        )
        .map_err(wt)
        .context("wrap wasi:filesystem open-at")?;
    linker.allow_shadowing(false);
    Ok(())
}

/// The outbound policy plus the count of requests in flight: over the instance's cap or the
/// process budget a request fails with `connection-limit-reached` before any connection opens.
pub(crate) struct CountedHooks {
    policy: outbound::OutboundPolicy,
    slots: descriptors::OutboundSlots,
}

type SendFuture = Box<
    dyn Future<
            Output = Result<
                (
                    http::Response<wasmtime_wasi_http::WasiBody>,
                    Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
                ),
                wasmtime_wasi_http::Error,
            >,
        > + Send,
>;

impl wasmtime_wasi_http::WasiHttpHooks for CountedHooks {
    fn send_request(
        &mut self,
        request: http::Request<wasmtime_wasi_http::WasiBody>,
        options: Option<wasmtime_wasi_http::RequestOptions>,
        fut: Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ) -> SendFuture {
        let permit = match self.slots.acquire() {
            Ok(p) => p,
            Err(denied) => {
                if let Some(m) = &self.policy.metrics {
                    m.outbound_denied.inc();
                }
                tracing::warn!(
                    component = %self.policy.component,
                    "outbound request refused: {}",
                    denied.outbound_reason()
                );
                return Box::new(async { Err(wasmtime_wasi_http::Error::ConnectionLimitReached) });
            }
        };
        let send = self.policy.send_request(request, options, fut);
        Box::new(async move {
            let (response, io) = Box::into_pin(send).await?;
            // The connection lives as long as this future (Wasmtime runs it as a task that ends
            // with the connection, or is aborted with the response): so does the permit.
            let io = async move {
                let _permit = permit;
                Box::into_pin(io).await
            };
            Ok((response, Box::new(io) as Box<dyn Future<Output = _> + Send>))
        })
    }
}

pub(crate) fn new_store(
    engine: &Engine,
    comp: &LoadedComponent,
) -> Result<Store<HostState>, Failure> {
    Ok(guest_store(
        engine,
        new_state(comp)?,
        comp.limits.timeout,
        comp.metrics.clone(),
    ))
}

/// The store data of one instance of `comp`: its WASI context with the component's environment,
/// output and mounts, its tables, hooks, limiter and descriptor counts.
pub(crate) fn new_state(comp: &LoadedComponent) -> Result<HostState, Failure> {
    // Before the mounts are opened: they are descriptors too.
    let fds = comp.instance_fds()?;
    let mut wasi = WasiCtxBuilder::new();
    wasi.envs(&comp.environment)
        .stdout(comp.guest_output("stdout"))
        .stderr(comp.guest_output("stderr"));
    // TCP, UDP and name lookups as allowed_outbound_hosts allows (crate::sockets).
    let resolved = comp.sockets.configure(&mut wasi);
    for (host, guest) in &comp.mounts {
        wasi.preopened_dir(host, guest, FsPerms::ReadOnly)
            .map_err(|e| Failure::Internal {
                message: format!(
                    "component `{}`: mount {} at {guest}: {e:?}",
                    comp.id,
                    host.display()
                ),
            })?;
    }
    let mut table = ResourceTable::new();
    table.set_max_capacity(descriptors::table_capacity());
    // Outbound HTTP requests and sockets share the instance's cap on outbound connections.
    let slots = descriptors::OutboundSlots::new(&comp.fds, &comp.outbound);
    let state = HostState {
        wasi: wasi.build(),
        http: WasiHttpCtx::new(),
        table,
        hooks: CountedHooks {
            policy: outbound::OutboundPolicy {
                component: comp.id.clone(),
                allowed: comp.allowed.clone(),
                may_name_local_addresses: comp.may_name_local_addresses,
                metrics: comp.metrics.clone(),
                trace: None,
                chain: comp.chain.clone(),
                client_tls: comp.client_tls.clone(),
            },
            slots: slots.clone(),
        },
        limiter: MemoryLimiter::new(comp.limits.max_memory).counted(comp.metrics.clone()),
        fds,
        variables: crate::variables::GuestVariables::new(comp.id.clone(), comp.variables.clone()),
        redis: crate::redis::OutboundServices {
            component: comp.id.clone(),
            allowed: comp.allowed.clone(),
            may_name_local_addresses: comp.may_name_local_addresses,
            slots: slots.clone(),
        },
        sockets: crate::sockets::InstanceSockets::new(comp.sockets.clone(), resolved, slots),
        stores: crate::kv_host::GuestStores::new(
            comp.id.clone(),
            comp.grants.clone(),
            comp.limits.timeout,
        ),
    };
    Ok(state)
}

/// Stops the guest once `timeout` has passed; until then it yields to other tasks every epoch
/// tick, so a guest in a CPU loop cannot starve the requests sharing its thread. Each tick the
/// guest sees is offered to `metrics` as CPU time.
fn arm_deadline<T>(
    store: &mut Store<T>,
    timeout: Duration,
    metrics: Option<Arc<ComponentMetrics>>,
) {
    let deadline = Instant::now() + timeout;
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(move |_| {
        let now = Instant::now();
        if let Some(m) = &metrics {
            m.epoch_callback(now);
        }
        if now >= deadline {
            Ok(UpdateDeadline::Interrupt)
        } else {
            Ok(UpdateDeadline::Yield(1))
        }
    });
}

impl MemoryLimiter {
    pub(crate) fn new(max_memory: u64) -> Self {
        Self {
            max_memory: usize::try_from(max_memory).unwrap_or(usize::MAX),
            total: 0,
            pending: 0,
            exceeded: false,
            exceeded_flag: None,
            metrics: None,
        }
    }

    /// The same, telling `metrics` (if any) how far the instance's memory grows.
    pub(crate) fn counted(self, metrics: Option<Arc<ComponentMetrics>>) -> Self {
        Self { metrics, ..self }
    }
}

/// A guest's response body that ends in an error, not a clean end, when the guest fails
/// (trap, timeout) after it has sent the response head: the client must not mistake a cut-off
/// body for a complete one. On HTTP/1.1 the connection is closed.
pub(crate) struct GuardedBody {
    pub(crate) inner: ResponseBody,
    pub(crate) done: Option<tokio::sync::oneshot::Receiver<bool>>,
    /// The guest producing the body: cancelled when the body is dropped before the end.
    pub(crate) guest: GuestTask,
}

/// A running guest, cancelled when this is dropped: a guest whose client went away stops at
/// its next yield (at most one epoch tick later) and releases its instance and permits.
pub(crate) struct GuestTask {
    handle: tokio::task::AbortHandle,
    component: Arc<str>,
    /// The client got the whole response: whatever the guest still does is not cancelled.
    answered: bool,
}

impl GuestTask {
    fn new<T>(task: &tokio::task::JoinHandle<T>, component: &Arc<str>) -> Self {
        Self {
            handle: task.abort_handle(),
            component: component.clone(),
            answered: false,
        }
    }
}

/// How long a response body dropped before its end waits for its guest to report before the
/// guest is cancelled: HTTP/1 drops a body once it has sent the bytes its `content-length`
/// (or its exact size hint) named, an instant before the guest's task ends.
const DROPPED_BODY_GRACE: std::time::Duration = std::time::Duration::from_millis(200);

impl GuestTask {
    /// The guest is over or its client has the whole response: nothing to cancel.
    fn answered(&mut self) {
        self.answered = true;
    }

    /// Moves the guard out: the returned one cancels the guest when dropped, this one no
    /// longer does.
    fn hand_over(&mut self) -> GuestTask {
        let task = GuestTask {
            handle: self.handle.clone(),
            component: self.component.clone(),
            answered: self.answered,
        };
        self.answered = true;
        task
    }
}

impl Drop for GuardedBody {
    fn drop(&mut self) {
        let Some(done) = self.done.take() else {
            return;
        };
        if self.guest.answered || self.guest.handle.is_finished() {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let mut guest = self.guest.hand_over();
        rt.spawn(async move {
            // Reported (or its task ended): nothing to cancel. Else `guest` cancels it.
            if tokio::time::timeout(DROPPED_BODY_GRACE, done).await.is_ok() {
                guest.answered();
            }
        });
    }
}

impl Drop for GuestTask {
    fn drop(&mut self) {
        if !self.answered && !self.handle.is_finished() {
            tracing::info!(component = %self.component, "client went away; guest cancelled");
            self.handle.abort();
        }
    }
}

impl http_body::Body for GuardedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        use std::task::Poll;
        match std::pin::Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(None) => {}
            other => return other,
        }
        let Some(done) = self.done.as_mut() else {
            self.guest.answered();
            return Poll::Ready(None);
        };
        match std::pin::Pin::new(done).poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(failed) => {
                self.done = None;
                // The guest has reported: its task is ending on its own, and the client has
                // everything it will get.
                self.guest.answered();
                if failed.unwrap_or(true) {
                    Poll::Ready(Some(Err(
                        "the guest failed while sending the response body".into(),
                    )))
                } else {
                    Poll::Ready(None)
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// What the guest task reports to the request once it is over.
pub(crate) enum Outcome {
    Done,
    Failed(Failure),
}

/// A guest run as its own task, the one way every HTTP executor starts one: it holds the
/// request's permits until it ends, logs its failure, and reports on `done` whether it failed
/// (what a [`GuardedBody`] waits for). Dropping the returned [`GuestTask`] cancels it.
pub(crate) fn spawn_guest<F>(
    comp: &Arc<LoadedComponent>,
    permits: (OwnedSemaphorePermit, Option<OwnedSemaphorePermit>),
    run: F,
) -> (
    tokio::task::JoinHandle<Outcome>,
    tokio::sync::oneshot::Receiver<bool>,
    GuestTask,
)
where
    F: Future<Output = Outcome> + Send + 'static,
{
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<bool>();
    let task_comp = comp.clone();
    // In the request's span: the guest's output and failure name the request.
    let task = tokio::spawn(tracing::Instrument::in_current_span(async move {
        let _permits = permits;
        let outcome = run.await;
        if let Outcome::Failed(f) = &outcome {
            task_comp.log_failure(f);
        }
        let _ = done_tx.send(matches!(outcome, Outcome::Failed(_)));
        outcome
    }));
    let guest = GuestTask::new(&task, &comp.id);
    (task, done_rx, guest)
}

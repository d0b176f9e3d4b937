//! The `wasi:http` 0.3 executor: instances reused within the component's bounds
//! ([`wms_manifest::Reuse`]: requests per instance, at once, idle time), on Wasmtime's
//! `ProxyHandler`, the machinery of `wasmtime serve`.
//!
//! Each instance is one store running Wasmtime's concurrent event loop; requests are queued to
//! instances with room and a new instance is made when none has. An instance is discarded, never
//! reused, once a request on it traps, runs past its timeout or hits the memory limit: a trap
//! fails every request in flight on it (they share its memory), a timeout stops it taking new
//! ones. What requests of one instance share: its linear memory and globals (whatever the guest
//! keeps in statics), its open files and outbound connections (counted against the instance's
//! caps), and its memory limit. Nothing else: each request has its own timeout, which runs from
//! its arrival.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use tokio::sync::OwnedSemaphorePermit;
use wasmtime::component::GuestTaskId;
use wasmtime::{PoolConcurrencyLimitError, Store, StoreContextMut, Trap, UpdateDeadline};
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::handler::{
    ExpirationError, HandlerState, Instance, InstantiationError, ProxyHandler, ProxyPre,
    ShouldAccept, TrapOrPanicError, WorkerExpiration, WorkerState, WorkerStatus,
};
use wasmtime_wasi_http::p3::bindings::ServicePre;
use wasmtime_wasi_http::p3::bindings::http::types::ErrorCode;

use crate::failure::classify;
use crate::guest::{HostState, new_state};
use crate::{BoxError, Failure, LoadedComponent, ResponseBody};

/// A 0.3 component's instances and request queue.
pub(crate) type Handler = ProxyHandler<P3Component>;

/// The handler of the component that `me` will point to once it is built.
pub(crate) fn handler(me: &Weak<LoadedComponent>, pre: ServicePre<HostState>) -> Handler {
    ProxyHandler::new(P3Component {
        comp: me.clone(),
        pre: ProxyPre::P3(pre),
    })
}

/// The pre-instantiated component behind a handler.
pub(crate) fn service_pre(handler: &Handler) -> &ServicePre<HostState> {
    match &handler.state().pre {
        ProxyPre::P3(pre) => pre,
        _ => unreachable!("0.3 handlers hold 0.3 components"),
    }
}

/// Serves one request on a reused (or new) instance of `comp`.
pub(crate) async fn handle<B>(
    comp: Arc<LoadedComponent>,
    handler: &Handler,
    request: http::Request<B>,
    permits: (OwnedSemaphorePermit, Option<OwnedSemaphorePermit>),
) -> Result<http::Response<ResponseBody>, Failure>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let request = request.map(|body| body.map_err(crate::http_p2::body_error).boxed_unsync());
    let arrived = Instant::now();
    let watch = Arc::new(Watch {
        arrived,
        responded: AtomicBool::new(false),
        failure: OnceLock::new(),
        left: AtomicBool::new(false),
        leaving: tokio::sync::Notify::new(),
        _permits: permits,
    });
    // Dropped with this future when the client goes away before the response head.
    let mut leave = ClientLeaves(Some(watch.clone()));
    let outcome = handler.handle(watch.clone(), request).await;
    leave.0 = None;
    match outcome {
        Ok(response) => {
            watch.responded.store(true, Ordering::Relaxed);
            // The guest usually writes its body right after handing over the head: one turn of
            // the scheduler lets its instance do so, and the head and body then leave in one
            // write instead of two.
            tokio::task::yield_now().await;
            let deadline = arrived + comp.limits.timeout;
            Ok(response.map(|body| {
                WatchedBody {
                    inner: Some(body.map_err(|e| Box::new(e) as BoxError).boxed_unsync()),
                    watch,
                    deadline: Box::pin(tokio::time::sleep_until(deadline.into())),
                }
                .boxed_unsync()
            }))
        }
        Err(e) => Err(request_failure(&e, &watch, &comp)),
    }
}

/// One request as its instance sees it. It lives until the request is over: its response body
/// ended or dropped, or, when the client went away first, until the request expired (its
/// instance's worker holds it that long). So do the request's permits: a client that leaves
/// does not free a slot its guest still uses.
pub(crate) struct Watch {
    arrived: Instant,
    /// The guest produced the response head: from here only the body's deadline applies.
    responded: AtomicBool,
    failure: OnceLock<Failure>,
    /// The client went away before the response head (see [`ClientLeaves`]).
    left: AtomicBool,
    leaving: tokio::sync::Notify,
    _permits: (OwnedSemaphorePermit, Option<OwnedSemaphorePermit>),
}

impl Watch {
    /// Resolves once the client has gone away.
    async fn client_left(&self) {
        loop {
            let notified = self.leaving.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.left.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }
}

/// Marks a request's client as gone when dropped armed: hyper drops the request's future when
/// its client disconnects before the response head.
struct ClientLeaves(Option<Arc<Watch>>);

impl Drop for ClientLeaves {
    fn drop(&mut self) {
        if let Some(watch) = self.0.take() {
            watch.left.store(true, Ordering::Release);
            watch.leaving.notify_waiters();
        }
    }
}

/// Why a request got no response: typed errors of Wasmtime's handler, the guest's error code, or
/// what its instance died of (set on the watch when the instance was discarded).
fn request_failure(e: &wasmtime::Error, watch: &Watch, comp: &LoadedComponent) -> Failure {
    if e.downcast_ref::<TrapOrPanicError>().is_some() {
        // Logged once for the whole instance when it was discarded.
        return watch.failure.get().cloned().unwrap_or(Failure::Trap {
            message: "the instance serving the request failed".to_string(),
        });
    }
    let f = if e.downcast_ref::<ExpirationError>().is_some() {
        Failure::Timeout {
            timeout: comp.limits.timeout,
        }
    } else if let Some(i) = e.downcast_ref::<InstantiationError<Arc<Watch>>>() {
        if let Some(f) = i.error.downcast_ref::<Failure>() {
            f.clone()
        } else if i
            .error
            .downcast_ref::<PoolConcurrencyLimitError>()
            .is_some()
        {
            Failure::Overloaded {
                scope: "instance pool".to_string(),
            }
        } else {
            classify(&i.error, false, comp)
        }
    } else if let Some(code) = e.downcast_ref::<ErrorCode>() {
        Failure::GuestError {
            message: format!("{code:?}"),
        }
    } else {
        classify(e, false, comp)
    };
    comp.log_failure(&f);
    f
}

/// A 0.3 response body: ends in an error, not a clean end, when its instance failed before the
/// body was complete or when the request's deadline passes first (the client is then cut off as
/// for a 0.2 guest; the guest's instance, not the co-tenants on it, pays later). Holds the
/// request (and its permits) until it is over.
struct WatchedBody {
    inner: Option<ResponseBody>,
    watch: Arc<Watch>,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl http_body::Body for WatchedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(None) => {
                self.inner = None;
                // The instance is discarded before its streams close: a failure is known here.
                match self.watch.failure.get() {
                    Some(f) => Poll::Ready(Some(Err(format!(
                        "the guest failed while sending the response body: {f}"
                    )
                    .into()))),
                    None => Poll::Ready(None),
                }
            }
            Poll::Pending => match self.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    self.inner = None;
                    Poll::Ready(Some(Err(
                        "the guest did not finish the response body within its timeout".into(),
                    )))
                }
                Poll::Pending => Poll::Pending,
            },
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_none()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match &self.inner {
            Some(inner) => inner.size_hint(),
            None => http_body::SizeHint::with_exact(0),
        }
    }
}

/// Makes the instances of one 0.3 component.
pub(crate) struct P3Component {
    comp: Weak<LoadedComponent>,
    pre: ProxyPre<HostState>,
}

impl HandlerState for P3Component {
    type StoreData = HostState;
    type WorkerExpiration = Expiration;
    type WorkerState = Worker;

    async fn instantiate(&self) -> wasmtime::Result<Instance<HostState, Expiration, Worker>> {
        let comp = self
            .comp
            .upgrade()
            .ok_or_else(|| wasmtime::format_err!("the component was unloaded"))?;
        let shared = Arc::new(Shared::default());
        // Outside any request's span: the instance serves many, so its output names none.
        let mut state = tracing::Span::none()
            .in_scope(|| new_state(&comp))
            .map_err(wasmtime::Error::new)?;
        state.limiter.exceeded_flag = Some(shared.memory_exceeded.clone());
        let mut store = Store::new(&comp.engine, state);
        store.limiter(|s| &mut s.limiter);
        // The store lives across requests: instead of one deadline, every tick checks the
        // requests in flight and stops the instance once one of them is past its timeout.
        let timeout = comp.limits.timeout;
        let watched = shared.clone();
        let metrics = comp.metrics.clone();
        store.epoch_deadline_callback(move |_| {
            if let Some(m) = &metrics {
                m.epoch_callback(Instant::now());
            }
            if watched.any_past(timeout) {
                Err(Trap::Interrupt.into())
            } else {
                Ok(UpdateDeadline::Yield(1))
            }
        });
        let started = Instant::now();
        let proxy = tokio::time::timeout(timeout, self.pre.instantiate_async(&mut store))
            .await
            .map_err(|_| wasmtime::Error::new(Failure::Timeout { timeout }))??;
        comp.instantiated(started);
        Ok(Instance {
            store,
            proxy,
            view: <HostState as WasiHttpView>::http,
            expiration: Expiration {
                idle: comp.limits.reuse.idle_timeout,
                busy: timeout,
                sleep: Box::pin(tokio::time::sleep(Duration::from_secs(3600))),
            },
            state: Worker { comp, shared },
        })
    }
}

/// What an instance's worker and its store's epoch callback share.
#[derive(Default)]
struct Shared {
    /// The requests the instance took (dead ones are dropped as new ones come).
    requests: Mutex<Vec<Weak<Watch>>>,
    /// The memory limit was hit: the instance takes no more requests.
    memory_exceeded: Arc<AtomicBool>,
    /// Requests whose clients left: kept until the instance ends (see `on_request_start`).
    abandoned: Mutex<Vec<Arc<Watch>>>,
}

impl Shared {
    /// Whether a request still waiting for its response head is past its timeout: the guest is
    /// stuck (a loop, or the event loop blocked), and only stopping the instance frees it.
    /// Requests that have their head are cut off by their body's own deadline instead, so a
    /// slow client never gets its co-tenants killed.
    fn any_past(&self, timeout: Duration) -> bool {
        let now = Instant::now();
        self.requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter_map(Weak::upgrade)
            .any(|w| {
                !w.responded.load(Ordering::Relaxed) && now.duration_since(w.arrived) >= timeout
            })
    }
}

/// One instance of a 0.3 component, as its worker sees it.
pub(crate) struct Worker {
    comp: Arc<LoadedComponent>,
    shared: Arc<Shared>,
}

impl WorkerState for Worker {
    type StoreData = HostState;
    type RequestData = Arc<Watch>;

    fn should_accept_request(&self, concurrent: usize, total: usize) -> ShouldAccept {
        let reuse = &self.comp.limits.reuse;
        if total >= reuse.max_requests || self.shared.memory_exceeded.load(Ordering::Relaxed) {
            ShouldAccept::Never
        } else if concurrent >= reuse.max_concurrent {
            ShouldAccept::No
        } else {
            ShouldAccept::Yes
        }
    }

    fn on_request_start(
        &self,
        _store: StoreContextMut<'_, HostState>,
        watch: Arc<Watch>,
        _task: GuestTaskId,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + Sync>> {
        let deadline = watch.arrived + self.comp.limits.timeout;
        let mut requests = self
            .shared
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        requests.retain(|w| w.strong_count() > 0);
        requests.push(Arc::downgrade(&watch));
        drop(requests);
        // The request expires at its deadline or when its client leaves, whichever comes
        // first: Wasmtime's handler then stops the instance taking requests, and the instance
        // ends once its requests' guest work is done (or past the timeout). An abandoned
        // request's watch, and so its permits, are kept with the instance until it ends: its
        // guest may still be working, and still counts against the limits and the timeout.
        let shared = self.shared.clone();
        Box::pin(async move {
            tokio::select! {
                () = tokio::time::sleep_until(deadline.into()) => {}
                () = watch.client_left() => {
                    shared.abandoned.lock().unwrap_or_else(|e| e.into_inner()).push(watch);
                }
            }
        })
    }

    fn drop(&self, store: Store<HostState>, result: wasmtime::Result<()>) {
        let Err(e) = result else {
            return;
        };
        // Wasmtime's handler ends a worker stuck past its busy time with an untyped error; a
        // request of it past its timeout says what that was.
        let f = if self.shared.any_past(self.comp.limits.timeout) {
            Failure::Timeout {
                timeout: self.comp.limits.timeout,
            }
        } else {
            classify(&e, store.data().limiter.exceeded, &self.comp)
        };
        // Counted once for the instance: its requests fail with it, uncounted.
        self.comp.count_failure(&f);
        tracing::error!(component = %self.comp.id, "instance discarded: {f}");
        // Before the store (and the response streams it feeds) goes: bodies in flight then end
        // in an error, not as if complete.
        for watch in self
            .shared
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter_map(Weak::upgrade)
        {
            let _ = watch.failure.set(f.clone());
        }
        drop(store);
    }
}

/// When an instance goes: idle past the component's idle timeout, or busy (requests, or work
/// after them) past its request timeout, checked outside the event loop so a guest stuck in a
/// loop cannot keep its instance.
pub(crate) struct Expiration {
    idle: Duration,
    busy: Duration,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl WorkerExpiration for Expiration {
    fn poll(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        status: WorkerStatus,
        since: Instant,
    ) -> Poll<()> {
        let me = self.get_mut();
        let limit = match status {
            WorkerStatus::Idle => me.idle,
            WorkerStatus::Requests | WorkerStatus::PostReturn => me.busy,
        };
        let deadline = tokio::time::Instant::from(since + limit);
        if me.sleep.deadline() != deadline {
            me.sleep.as_mut().reset(deadline);
        }
        me.sleep.as_mut().poll(cx)
    }
}

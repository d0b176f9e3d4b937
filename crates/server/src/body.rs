//! The request body as the guest reads it: bounded in size and in how long the client may go
//! without sending any of it.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Limited;
use hyper::body::Incoming;
use wms_runtime::BoxError;

/// A request body that fails (instead of waiting on) when the client sends nothing for
/// `idle`, so a client that declares a body and stalls cannot hold an instance for the
/// component's whole timeout; and that records when it went over the size limit, so the front
/// end can answer 413 whatever the guest made of the error.
pub(crate) struct GuardedBody {
    inner: Limited<Incoming>,
    idle: Duration,
    timer: Pin<Box<tokio::time::Sleep>>,
    /// Whether the guest is waiting for data now (the timer then runs).
    waiting: bool,
    pub(crate) state: Arc<BodyState>,
}

/// What went wrong with a request body, for the answer the front end gives.
#[derive(Default)]
pub(crate) struct BodyState {
    /// The body went over `--max-body`.
    pub(crate) over_limit: AtomicBool,
    /// The client stopped sending it for the idle timeout.
    pub(crate) stalled: AtomicBool,
}

impl BodyState {
    pub(crate) fn over_limit(&self) -> bool {
        self.over_limit.load(Ordering::SeqCst)
    }

    pub(crate) fn stalled(&self) -> bool {
        self.stalled.load(Ordering::SeqCst)
    }
}

impl GuardedBody {
    pub(crate) fn new(body: Incoming, max: usize, idle: Duration) -> Self {
        Self {
            inner: Limited::new(body, max),
            idle,
            timer: Box::pin(tokio::time::sleep(idle)),
            waiting: false,
            state: Arc::default(),
        }
    }
}

impl Body for GuardedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.waiting = false;
                if let Some(Err(e)) = &frame
                    && e.is::<http_body_util::LengthLimitError>()
                {
                    this.state.over_limit.store(true, Ordering::SeqCst);
                }
                Poll::Ready(frame)
            }
            Poll::Pending => {
                // Only time spent waiting on the client counts, not time the guest spends
                // elsewhere between reads.
                if !this.waiting {
                    this.waiting = true;
                    let deadline = tokio::time::Instant::now() + this.idle;
                    this.timer.as_mut().reset(deadline);
                }
                match this.timer.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        this.state.stalled.store(true, Ordering::SeqCst);
                        Poll::Ready(Some(Err(format!(
                            "the client sent no request body data for {:?}",
                            this.idle
                        )
                        .into())))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

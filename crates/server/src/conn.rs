//! One connection's lifetime: how long it may stay silent, idle or half-open, and what it holds.
//!
//! hyper bounds a request head once it has started arriving (HTTP/1 `header_read_timeout`) and
//! detects dead HTTP/2 peers with pings, but nothing in it closes a connection that is alive and
//! simply never asks for anything: a client that connects and sends nothing (the HTTP/1-vs-HTTP/2
//! detection read waits forever), stops in the middle of the HTTP/2 preface, or keeps an HTTP/2
//! connection open without streams. [`Activity`] counts the requests in flight on a connection and
//! remembers when the last one ended; [`watch`] closes the connection when it has had no request
//! in flight for too long.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// A connection being served: driven until it ends, and asked to close gracefully (HTTP/1:
/// close when idle; HTTP/2: GOAWAY).
pub(crate) trait Conn: Send {
    fn poll_served(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<()>;
    fn close(self: Pin<&mut Self>);
}

impl<C> Conn for C
where
    C: hyper_util::server::graceful::GracefulConnection + Send,
{
    fn poll_served(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        // Errors end the connection either way; they are the client's (resets, bad requests).
        self.poll(cx).map(|_| ())
    }

    fn close(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// Requests in flight on one connection, and when it was last busy.
///
/// Nothing here wakes the watcher: a request beginning or ending only updates the counts, and
/// the watcher's timer, when it fires, works out from them whether the connection is past its
/// bound (see [`watch`] for why it is never late). So a request costs two counter updates, not
/// two wake-ups and timer re-arms of its connection.
pub(crate) struct Activity {
    in_flight: AtomicUsize,
    /// When the connection was accepted, or its last response ended, and whether a request has
    /// ended on it.
    idle_since: std::sync::Mutex<(Instant, bool)>,
}

impl Activity {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            in_flight: AtomicUsize::new(0),
            idle_since: std::sync::Mutex::new((Instant::now(), false)),
        })
    }

    /// Marks a request as in flight until the returned guard is dropped (with its response
    /// body, or with the request future if the client goes away first).
    pub(crate) fn begin(self: &Arc<Self>) -> Busy {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        Busy(self.clone())
    }

    /// When the connection may be closed for idleness: `None` while a request is in flight.
    /// Before the first request the bound is `first_request` (the client has connected and
    /// must say something); after it, `idle`.
    fn deadline(&self, first_request: Duration, idle: Duration) -> Option<Instant> {
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            return None;
        }
        let (since, served) = *self.idle_since.lock().expect("not poisoned");
        Some(since + if served { idle } else { first_request })
    }
}

/// A request in flight (see [`Activity::begin`]).
pub(crate) struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        // The idle time is stamped before the count drops: a watcher that sees no request in
        // flight sees this request's end.
        let mut idle = self.0.idle_since.lock().expect("not poisoned");
        *idle = (Instant::now(), true);
        drop(idle);
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Why a connection ended, for the log.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum End {
    /// hyper finished it (the client closed, or an error).
    Done,
    /// Closed by wms: silent or idle past its bound.
    Idle,
    /// Closed by wms at shutdown.
    Shutdown,
}

/// Drives `conn` until it ends, closing it (`close`: a graceful shutdown) when it is idle past
/// its bound or when `shutdown` fires. A connection asked to close for idleness that does not
/// finish within `close_grace` (a client ignoring GOAWAY, or stuck in a half-sent preface) is
/// dropped.
///
/// One timer, re-armed only when it fires: for the connection's deadline, but never more than
/// `idle` from now. A response ending at `t` makes the deadline `t + idle`, later than any time
/// the timer was armed for before `t`, so the timer never fires after a deadline. (The cap
/// matters only before the first request: its deadline can be later than `idle` from now, and
/// a request ending meanwhile brings the deadline forward.) A busy connection costs one check
/// per `idle`, an idle one a check at its deadline.
pub(crate) async fn watch(
    mut conn: Pin<Box<dyn Conn>>,
    activity: &Activity,
    bounds: Bounds,
    shutdown: &tokio_util::sync::CancellationToken,
) -> End {
    let step = bounds.idle;
    let check = tokio::time::sleep_until(
        activity
            .deadline(bounds.first_request, bounds.idle)
            .map_or_else(|| Instant::now() + step, |d| d.min(Instant::now() + step)),
    );
    tokio::pin!(check);
    let mut closing: Option<(End, Instant)> = None;
    loop {
        let give_up = closing
            .as_ref()
            .map_or_else(|| Instant::now() + bounds.idle, |(_, t)| *t);
        tokio::select! {
            () = std::future::poll_fn(|cx| conn.as_mut().poll_served(cx)) => return closing.map_or(End::Done, |(why, _)| why),
            () = shutdown.cancelled(), if closing.is_none() => {
                conn.as_mut().close();
                // In-flight requests get the server's whole shutdown grace, which the caller
                // bounds.
                closing = Some((End::Shutdown, Instant::now() + Duration::from_secs(24 * 3600)));
            }
            () = &mut check, if closing.is_none() => {
                let now = Instant::now();
                match activity.deadline(bounds.first_request, bounds.idle) {
                    Some(due) if due <= now => {
                        conn.as_mut().close();
                        closing = Some((End::Idle, now + bounds.close_grace));
                    }
                    Some(due) => check.as_mut().reset(due.min(now + step)),
                    None => check.as_mut().reset(now + step),
                }
            }
            () = tokio::time::sleep_until(give_up), if closing.is_some() => {
                return closing.map_or(End::Done, |(why, _)| why);
            }
        }
    }
}

/// How long a connection may go without a request in flight.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bounds {
    /// From accept to the first request's head.
    pub first_request: Duration,
    /// Between requests.
    pub idle: Duration,
    /// From asking an idle connection to close to dropping it.
    pub close_grace: Duration,
}

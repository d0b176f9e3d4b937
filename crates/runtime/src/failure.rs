//! Why a request did not get a normal response, decided from typed errors.

use std::time::Duration;

use wasmtime::{PoolConcurrencyLimitError, Trap};

use crate::{LoadedComponent, pool};

/// Why a request did not get a normal response from its guest.
#[derive(Debug, Clone)]
pub enum Failure {
    /// A concurrency limit was reached (`scope` names it); answer 503 and ask to retry.
    Overloaded { scope: String },
    /// The request ran past the component's timeout.
    Timeout { timeout: Duration },
    /// The guest trapped or panicked.
    Trap { message: String },
    /// The guest tried to grow its memory past the component's limit.
    MemoryLimit { limit: u64 },
    /// The guest returned without setting a response.
    NoResponse,
    /// A WAGI module or command exited with a non-zero status.
    Exit { code: i32 },
    /// The request body failed before it was complete (the client went away, bad framing);
    /// the guest was stopped rather than given a truncated body as if it were whole.
    RequestBody { message: String },
    /// A WAGI module's output was not a valid CGI response.
    BadCgi { message: String },
    /// The guest answered with a `wasi:http` error code instead of a response.
    GuestError { message: String },
    /// Something in the host failed.
    Internal { message: String },
}

impl std::error::Error for Failure {}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Overloaded { scope } => {
                write!(f, "too many concurrent requests ({scope} limit)")
            }
            Failure::Timeout { timeout } => {
                write!(f, "request exceeded its timeout of {timeout:?}")
            }
            Failure::Trap { message } => write!(f, "guest trapped: {message}"),
            Failure::MemoryLimit { limit } => {
                write!(
                    f,
                    "guest exceeded its memory limit of {}",
                    pool::human(*limit)
                )
            }
            Failure::NoResponse => write!(f, "guest returned without setting a response"),
            Failure::Exit { code } => write!(f, "guest exited with status {code}"),
            Failure::RequestBody { message } => {
                write!(f, "the request body failed before its end: {message}")
            }
            Failure::BadCgi { message } => write!(f, "malformed CGI output: {message}"),
            Failure::GuestError { message } => write!(f, "guest answered with an error: {message}"),
            Failure::Internal { message } => write!(f, "host error: {message}"),
        }
    }
}

/// What a guest's error means for its request: decided by the error's type (exit status, memory
/// limit, epoch deadline, a full pool), never by its text; anything else is a trap.
pub(crate) fn classify(
    e: &wasmtime::Error,
    memory_exceeded: bool,
    comp: &LoadedComponent,
) -> Failure {
    if let Some(exit) = e.downcast_ref::<wasmtime_wasi::I32Exit>() {
        return Failure::Exit { code: exit.0 };
    }
    if memory_exceeded {
        return Failure::MemoryLimit {
            limit: comp.limits.max_memory,
        };
    }
    if e.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
        return Failure::Timeout {
            timeout: comp.limits.timeout,
        };
    }
    if e.downcast_ref::<PoolConcurrencyLimitError>().is_some() {
        return Failure::Overloaded {
            scope: "instance pool".to_string(),
        };
    }
    let message = format!("{e:?}");
    // The first line names the trap; the backtrace follows.
    let first = message.lines().take(3).collect::<Vec<_>>().join(" | ");
    Failure::Trap { message: first }
}

/// A plain-text response with `status`.
pub fn plain_response(status: http::StatusCode, text: &str) -> http::Response<crate::ResponseBody> {
    use http_body_util::BodyExt as _;
    let mut resp = http::Response::new(
        http_body_util::Full::new(bytes::Bytes::from(text.to_string()))
            .map_err(|e| match e {})
            .boxed_unsync(),
    );
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// The answer for a request whose guest failed, to a client or to a component that chained to
/// it: 503 (with `retry-after`) when overloaded, 504 on timeout, 400 for a request body that was
/// cut, else 500. Details are in the host log, not the response.
pub fn failure_response(component: &str, failure: &Failure) -> http::Response<crate::ResponseBody> {
    use http::StatusCode;
    match failure {
        Failure::Overloaded { .. } => {
            let mut r = plain_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "server busy: too many concurrent requests, retry shortly\n",
            );
            r.headers_mut().insert(
                http::header::RETRY_AFTER,
                http::HeaderValue::from_static("1"),
            );
            r
        }
        Failure::Timeout { .. } => plain_response(
            StatusCode::GATEWAY_TIMEOUT,
            &format!("component `{component}` did not finish in time\n"),
        ),
        Failure::RequestBody { .. } => plain_response(
            StatusCode::BAD_REQUEST,
            "the request body could not be read in full\n",
        ),
        _ => plain_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("component `{component}` failed to handle the request\n"),
        ),
    }
}

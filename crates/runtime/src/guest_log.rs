//! Guest stdout and stderr, forwarded to the host log line by line with the component's name.
//!
//! Guest output is untrusted text in the operator's log, so each line is made safe before it is
//! logged: control characters are shown escaped (`\u{1b}`, `\r`, ...) so a guest cannot colour
//! the terminal or forge a log line with a carriage return; a line is cut at [`MAX_LINE`] bytes,
//! marked as truncated; and each component may log [`LINES_PER_SECOND`] lines a second (with a
//! burst of [`LINE_BURST`]). Lines over the rate are dropped and counted, and the count is
//! logged once a second while dropping goes on, so a flood costs the log one line a second.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};

/// Longest line logged; the rest of a longer line is dropped and the line marked.
pub const MAX_LINE: usize = 4 * 1024;
/// Guest lines a component may log per second, on average.
pub const LINES_PER_SECOND: f64 = 100.0;
/// Guest lines a component may log at once after a quiet spell.
pub const LINE_BURST: f64 = 200.0;

/// A token bucket for one kind of log line of one component, which reports what it dropped.
pub(crate) struct LogBudget {
    component: Arc<str>,
    /// What is dropped, for the summary: "lines of guest output", "overload warnings".
    what: &'static str,
    rate: f64,
    burst: f64,
    state: Mutex<Bucket>,
}

struct Bucket {
    tokens: f64,
    last: Instant,
    dropped: u64,
    /// A summary task is pending: it logs the count a second after the first drop.
    reporting: bool,
}

impl LogBudget {
    pub(crate) fn new(
        component: &Arc<str>,
        what: &'static str,
        rate: f64,
        burst: f64,
    ) -> Arc<Self> {
        Arc::new(LogBudget {
            component: component.clone(),
            what,
            rate,
            burst,
            state: Mutex::new(Bucket {
                tokens: burst,
                last: Instant::now(),
                dropped: 0,
                reporting: false,
            }),
        })
    }

    /// The budget for a component's guest output.
    pub(crate) fn guest_lines(component: &Arc<str>) -> Arc<Self> {
        Self::new(
            component,
            "lines of guest output",
            LINES_PER_SECOND,
            LINE_BURST,
        )
    }

    /// Whether one more line may be logged now. If not, it is counted, and the count is logged
    /// within a second.
    pub(crate) fn allow(self: &Arc<Self>) -> bool {
        let mut b = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let refill = now.duration_since(b.last).as_secs_f64() * self.rate;
        b.tokens = (b.tokens + refill).min(self.burst);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            return true;
        }
        b.dropped += 1;
        if !b.reporting {
            match tokio::runtime::Handle::try_current() {
                Ok(handle) => {
                    b.reporting = true;
                    handle.spawn(report(self.clone()));
                }
                // No runtime to report from later (not the case in wms): say it at once.
                Err(_) => self.summarise(&mut b),
            }
        }
        false
    }

    fn summarise(&self, b: &mut Bucket) {
        let n = std::mem::take(&mut b.dropped);
        if n > 0 {
            tracing::warn!(
                target: "wms::guest",
                component = %self.component,
                "dropped {n} {} in the last second (rate limit {}/s)",
                self.what,
                self.rate
            );
        }
    }
}

/// Logs the dropped count once a second until a second passes without drops.
async fn report(budget: Arc<LogBudget>) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut b = budget.state.lock().unwrap_or_else(|e| e.into_inner());
        if b.dropped == 0 {
            b.reporting = false;
            return;
        }
        budget.summarise(&mut b);
    }
}

/// The line as it may appear in the log: control characters (and the Unicode controls that
/// reorder text) escaped, at most [`MAX_LINE`] bytes of it.
pub(crate) fn escape_line(line: &[u8], truncated: bool) -> String {
    let text = String::from_utf8_lossy(line);
    let mut out = String::with_capacity(text.len().min(MAX_LINE) + 16);
    let mut cut = truncated;
    for c in text.chars() {
        if out.len() >= MAX_LINE {
            cut = true;
            break;
        }
        let bidi = matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
        if c.is_control() || bidi {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    if cut {
        out.push_str(" [truncated]");
    }
    out
}

#[derive(Clone)]
pub(crate) struct GuestLog {
    pub component: Arc<str>,
    pub stream: &'static str,
    pub budget: Arc<LogBudget>,
    /// The span of the request the instance serves (its lines name the request), or none.
    pub span: tracing::Span,
}

impl IsTerminal for GuestLog {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestLog {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(LineLogger {
            log: self.clone(),
            buf: Vec::new(),
            skipping: false,
        })
    }
}

struct LineLogger {
    log: GuestLog,
    buf: Vec<u8>,
    /// The current line was already logged truncated; drop the rest of it.
    skipping: bool,
}

impl LineLogger {
    fn emit(&self, line: &[u8], truncated: bool) {
        if !self.log.budget.allow() {
            return;
        }
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let text = escape_line(line, truncated);
        // Wasmtime writes guest output from a task of its own: the request's span is named here.
        tracing::info!(target: "wms::guest", parent: &self.log.span, component = %self.log.component, stream = self.log.stream, "{text}");
    }
}

impl AsyncWrite for LineLogger {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let mut rest = data;
        while !rest.is_empty() {
            let newline = rest.iter().position(|b| *b == b'\n');
            let (chunk, ends_line) = match newline {
                Some(i) => (&rest[..i], true),
                None => (rest, false),
            };
            rest = match newline {
                Some(i) => &rest[i + 1..],
                None => &[],
            };
            if !this.skipping {
                // Keep at most MAX_LINE bytes plus one, to know the line was longer.
                let room = (MAX_LINE + 1).saturating_sub(this.buf.len());
                this.buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
                if this.buf.len() > MAX_LINE {
                    let line = std::mem::take(&mut this.buf);
                    this.emit(&line[..MAX_LINE], true);
                    this.skipping = true;
                }
            }
            if ends_line {
                if !this.skipping {
                    let line = std::mem::take(&mut this.buf);
                    this.emit(&line, false);
                }
                this.skipping = false;
            }
        }
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl Drop for LineLogger {
    fn drop(&mut self) {
        if !self.buf.is_empty() && !self.skipping {
            let line = std::mem::take(&mut self.buf);
            self.emit(&line, false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_long_lines_cut() {
        assert_eq!(
            escape_line(b"\x1b[31mred\rINFO forged\t\x07", false),
            "\\u{1b}[31mred\\rINFO forged\\t\\u{7}"
        );
        assert_eq!(escape_line("a\u{202e}b".as_bytes(), false), "a\\u{202e}b");
        let long = vec![b'x'; MAX_LINE * 2];
        let line = escape_line(&long, false);
        assert!(line.ends_with(" [truncated]"));
        assert_eq!(line.len(), MAX_LINE + " [truncated]".len());
    }

    #[test]
    fn the_bucket_drops_over_the_burst() {
        let name: Arc<str> = Arc::from("c");
        let b = LogBudget::new(&name, "lines", 1.0, 3.0);
        let allowed = (0..10).filter(|_| b.allow()).count();
        assert_eq!(allowed, 3);
    }
}

//! A WASI 0.3 command: prints `p3cmd:` and its arguments to stdout; the argument `fail` makes
//! `run` return an error (exit status 1), `trap` makes it panic.

struct Cmd;

wasip3::cli::command::export!(Cmd);

impl wasip3::exports::cli::run::Guest for Cmd {
    async fn run() -> Result<(), ()> {
        let args = wasip3::cli::environment::get_arguments();
        if args.iter().any(|a| a == "trap") {
            panic!("p3cmd: trap requested");
        }
        let line = format!("p3cmd: {}\n", args.join(" "));
        let (mut tx, rx) = wasip3::wit_stream::new();
        let write = async {
            let rest = tx.write_all(line.into_bytes()).await;
            drop(tx);
            rest.is_empty()
        };
        let read = async { wasip3::cli::stdout::write_via_stream(rx).await };
        let (_, written) = futures_join(read, write).await;
        if !written || args.iter().any(|a| a == "fail") {
            return Err(());
        }
        Ok(())
    }
}

/// Both futures to completion (the stream is read while it is written).
async fn futures_join<A: Future, B: Future>(a: A, b: B) -> (A::Output, B::Output) {
    let mut a = std::pin::pin!(a);
    let mut b = std::pin::pin!(b);
    let (mut ra, mut rb) = (None, None);
    std::future::poll_fn(|cx| {
        if ra.is_none()
            && let std::task::Poll::Ready(v) = a.as_mut().poll(cx)
        {
            ra = Some(v);
        }
        if rb.is_none()
            && let std::task::Poll::Ready(v) = b.as_mut().poll(cx)
        {
            rb = Some(v);
        }
        if ra.is_some() && rb.is_some() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    (ra.unwrap(), rb.unwrap())
}

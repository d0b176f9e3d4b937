//! What the instance pool keeps resident between requests is budgeted: a burst of guests that
//! grow to their memory limit does not leave hundreds of MiB behind.

use std::time::Duration;

use crate::harness::{Server, client, rss, rt, testkit_app};

/// Three bursts of 16 concurrent requests whose guest grows its memory until the 128 MiB limit
/// (each answered 500); returns the RSS `settle` after the last one.
fn bursts(server: &Server, settle: Duration) -> u64 {
    rt().block_on(async {
        for _ in 0..3 {
            let all: Vec<_> = (0..16)
                .map(|_| {
                    let url = server.url("/hog");
                    tokio::spawn(async move { client().get(url).send().await.unwrap().status() })
                })
                .collect();
            for r in all {
                assert_eq!(r.await.unwrap(), 500);
            }
        }
    });
    std::thread::sleep(settle);
    rss(server.pid())
}

fn warm(server: &Server) -> u64 {
    rt().block_on(async {
        for _ in 0..20 {
            let s = client().get(server.url("/fine")).send().await.unwrap();
            assert_eq!(s.status(), 200);
        }
    });
    rss(server.pid())
}

#[test]
fn a_burst_leaves_little_resident_with_the_default_budget() {
    let server = Server::with_manifest(&testkit_app(&[("kit", "/...", "")]), &[]);
    let log = server.wait_for_log("kept resident between requests");
    assert!(log.contains("in total"), "{log}");
    let baseline = warm(&server);
    // Before the budget each used slot kept 16 MiB: 16 concurrent hogs left ~300 MiB for good.
    let after = bursts(&server, Duration::from_secs(15));
    assert!(
        after < baseline + (64 << 20),
        "RSS {} MiB after the bursts, {} MiB before",
        after >> 20,
        baseline >> 20
    );
}

#[test]
fn a_low_budget_is_never_exceeded_while_serving() {
    let server = Server::with_manifest(
        &testkit_app(&[("kit", "/...", "")]),
        &["--pool-resident-budget", "8MiB"],
    );
    let log = server.wait_for_log("kept resident between requests");
    assert!(
        log.contains("at most 8MiB (set by the operator) in total"),
        "{log}"
    );
    let baseline = warm(&server);
    let after = bursts(&server, Duration::from_secs(2));
    // 8 MiB budget; the rest of the slack is the allocator's own bookkeeping and the kernel's
    // rounding, not guest memory.
    assert!(
        after < baseline + (24 << 20),
        "RSS {} MiB after the bursts, {} MiB before",
        after >> 20,
        baseline >> 20
    );
}

#[test]
fn the_budget_follows_the_cgroup_memory_limit() {
    // A real cgroup below this test's own, limited to 1 GiB, that `wms up` is started in.
    let Some((server, cgroup)) =
        crate::harness::serve_in_memory_cgroup(&testkit_app(&[("kit", "/...", "")]), 1 << 30)
    else {
        return;
    };
    let log = server.wait_for_log("kept resident between requests");
    assert!(
        log.contains("at most 64MiB (1/16 of the cgroup memory limit 1GiB) in total"),
        "{log}"
    );
    drop(server);
    drop(cgroup);
}

//! Key-value stores and SQLite databases through the real `wms up`, used by guests built from
//! source with the Spin Rust SDK 5 (`spin_sdk::key_value`, `wasi:keyvalue`, `spin_sdk::sqlite`)
//! and SDK 7 (Spin 3's async `spin:key-value@3.0.0` and `spin:sqlite@3.1.0`): what a component
//! declares it may use, anything else is Spin's access-denied; embedded data survives a restart
//! and a `kill -9` right after the write was acknowledged; limits reject writes the guest sees
//! fail; a Redis store (Debian's `redis-server` on a loopback port) is shared by two `wms up`
//! processes.

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use crate::harness::{Server, artifacts, client, rt, wms_command};

/// Two components of the SDK 5 guest: `kv` declares the default store and database (and
/// `extra` ones), `bare` declares none.
fn manifest(extra_stores: &str) -> String {
    manifest_of(artifacts::SPIN_KV, extra_stores)
}

/// [`manifest`] with the components' wasm at `src`.
fn manifest_of(src: &str, extra_stores: &str) -> String {
    format!(
        r#"spin_manifest_version = 2
[application]
name = "kv"

[[trigger.http]]
route = "/a/..."
component = "kv"

[[trigger.http]]
route = "/b/..."
component = "bare"

[component.kv]
source = {src:?}
key_value_stores = ["default"{extra_stores}]
sqlite_databases = ["default"]

[component.bare]
source = {src:?}
"#,
    )
}

/// An app directory holding `manifest` (kept across restarts of the server).
fn app_dir(manifest: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("wms.toml"), manifest).unwrap();
    dir
}

/// Components `a` (database `default` granted) and `b` (none) of the SQLite tests: `b` and a
/// label `a` does not declare are refused, and the granted database is where wms keeps it.
fn sqlite_is_denied_elsewhere(server: &Server, app: &std::path::Path) {
    for path in [
        "/b/sqlite/exec?sql=SELECT%201",
        "/a/sqlite/exec?db=other&sql=SELECT%201",
    ] {
        let (status, body) = get(server, path);
        assert_eq!(status, 500, "{path}: {body}");
        assert!(body.ends_with("AccessDenied"), "{path}: {body}");
    }
    assert!(app.join(".wms/sqlite/default.db").is_file());
}

fn get(server: &Server, path: &str) -> (u16, String) {
    rt().block_on(async {
        let r = client().get(server.url(path)).send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    })
}

fn ok(server: &Server, path: &str) -> String {
    let (status, body) = get(server, path);
    assert_eq!(status, 200, "{path}: {body}");
    body
}

/// `s` for a query string: every byte but letters and digits as `%XX`.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// SIGKILL, as `kill -9`: nothing of wms runs after it.
fn kill_9(mut server: Server) {
    server.child.kill().unwrap();
    server.child.wait().unwrap();
}

#[test]
fn the_default_store_serves_both_interfaces_only_to_its_component_and_survives_kill_9() {
    let dir = app_dir(&manifest(""));
    let server = Server::start(dir.path(), &[]);
    // fermyon:spin/key-value@2.0.0.
    assert_eq!(
        ok(&server, "/a/kv/set?key=greeting&value=hello%20there"),
        "ok"
    );
    assert_eq!(ok(&server, "/a/kv/get?key=greeting"), "hello there");
    assert_eq!(ok(&server, "/a/kv/exists?key=greeting"), "true");
    // The test guest decodes a `%XX` at the very end of a value too.
    assert_eq!(ok(&server, "/a/kv/set?key=bang&value=hi%21"), "ok");
    assert_eq!(ok(&server, "/a/kv/get?key=bang"), "hi!");
    assert_eq!(ok(&server, "/a/kv/delete?key=bang"), "ok");
    assert_eq!(get(&server, "/a/kv/get?key=missing"), (404, "none".into()));
    assert_eq!(ok(&server, "/a/kv/set?key=gone&value=1"), "ok");
    assert_eq!(ok(&server, "/a/kv/keys"), "gone\ngreeting\n");
    assert_eq!(ok(&server, "/a/kv/delete?key=gone"), "ok");
    assert_eq!(ok(&server, "/a/kv/exists?key=gone"), "false");
    // wasi:keyvalue sees the same store: store, atomics.
    assert_eq!(ok(&server, "/a/wkv/get?key=greeting"), "hello there");
    assert_eq!(ok(&server, "/a/wkv/set?key=w&value=x"), "ok");
    assert_eq!(ok(&server, "/a/kv/get?key=w"), "x");
    assert_eq!(ok(&server, "/a/wkv/keys"), "greeting\nw\n");
    assert_eq!(ok(&server, "/a/wkv/incr?key=n&by=5"), "5");
    assert_eq!(ok(&server, "/a/wkv/incr?key=n&by=-2"), "3");
    assert_eq!(ok(&server, "/a/wkv/cas?key=w&from=x&to=y"), "swapped");
    assert_eq!(
        get(&server, "/a/wkv/cas?key=w&from=x&to=z"),
        (409, "changed".into())
    );
    assert_eq!(ok(&server, "/a/kv/get?key=w"), "y");

    // Denied: a component that declares no store, a label its component does not declare.
    for path in [
        "/b/kv/get?key=greeting",
        "/b/kv/set?key=k&value=v",
        "/a/kv/get?store=other&key=greeting",
    ] {
        let (status, body) = get(&server, path);
        assert_eq!(status, 500, "{path}");
        assert!(body.ends_with("AccessDenied"), "{path}: {body}");
    }
    let (status, body) = get(&server, "/b/wkv/get?key=greeting");
    assert_eq!(status, 500);
    assert!(body.ends_with("AccessDenied"), "{body}");

    // The start-up log says what each component may use.
    let log = server.log();
    assert!(
        log.contains("key-value stores: default; SQLite databases: default;"),
        "{log}"
    );
    assert!(
        log.contains("key-value stores: none; SQLite databases: none;"),
        "{log}"
    );
    assert!(
        dir.path().join(".wms/key_value.db").is_file(),
        "the store is in the app's state directory"
    );

    // Acknowledged, then killed at once: the write is there after a restart.
    assert_eq!(ok(&server, "/a/kv/set?key=last&value=acknowledged"), "ok");
    kill_9(server);
    let server = Server::start(dir.path(), &[]);
    assert_eq!(ok(&server, "/a/kv/get?key=last"), "acknowledged");
    assert_eq!(ok(&server, "/a/kv/get?key=greeting"), "hello there");
    assert_eq!(ok(&server, "/a/wkv/incr?key=n&by=1"), "4");
}

#[test]
fn store_limits_reject_writes_with_an_error_the_guest_sees() {
    let dir = app_dir(&manifest(""));
    let config = dir.path().join("runtime-config.toml");
    std::fs::write(
        &config,
        "[key_value_store.default]\ntype = \"spin\"\nmax_value_size = 16\nmax_keys = 2\n",
    )
    .unwrap();
    let server = Server::start(
        dir.path(),
        &["--runtime-config-file", config.to_str().unwrap()],
    );
    assert_eq!(ok(&server, "/a/kv/big?key=a&size=16"), "ok");
    let (status, body) = get(&server, "/a/kv/big?key=a&size=17");
    assert_eq!(status, 500);
    assert!(
        body.contains(
            "Other(\"value of 17 bytes is over the store `default`'s limit of 16 bytes\")"
        ),
        "{body}"
    );
    assert_eq!(ok(&server, "/a/kv/set?key=b&value=2"), "ok");
    let (status, body) = get(&server, "/a/kv/set?key=c&value=3");
    assert_eq!(status, 500);
    assert!(body.contains("holds its limit of 2 keys"), "{body}");
    // Overwriting a key, or writing after a delete, is within the limit.
    assert_eq!(ok(&server, "/a/kv/set?key=b&value=22"), "ok");
    assert_eq!(ok(&server, "/a/kv/delete?key=a"), "ok");
    assert_eq!(ok(&server, "/a/kv/set?key=c&value=3"), "ok");
    // A key over Spin's 256 bytes.
    let (status, body) = get(
        &server,
        &format!("/a/kv/set?key={}&value=x", "k".repeat(257)),
    );
    assert_eq!(status, 500);
    assert!(body.contains("key of 257 bytes"), "{body}");
    // The server still serves.
    assert_eq!(ok(&server, "/a/kv/get?key=c"), "3");
}

/// Regression (review): one `wasi:keyvalue` `get-many` could make the host hold one value any
/// number of times (its keys may repeat). A batch now returns at most 16 MiB of values.
#[test]
fn a_batch_cannot_make_the_host_hold_a_value_many_times_over() {
    let dir = app_dir(&manifest(""));
    let server = Server::start(dir.path(), &[]);
    assert_eq!(ok(&server, "/a/kv/big?key=a&size=1048576"), "ok");
    assert_eq!(
        ok(&server, "/a/wkv/many?key=a&n=16"),
        (16u64 << 20).to_string()
    );
    let (status, body) = get(&server, "/a/wkv/many?key=a&n=17");
    assert_eq!(status, 500);
    assert!(
        body.contains("get-many would return more than 16 MiB of values"),
        "{body}"
    );
    assert_eq!(ok(&server, "/a/wkv/many?key=a&n=1"), "1048576");
}

/// Regression (review): each compare-and-swap handle keeps the value it read, so 256 handles
/// on a 1 MiB value made the host hold 256 MiB for one instance. An instance's handles now hold
/// at most 16 MiB together; dropped handles give theirs back.
#[test]
fn compare_and_swap_handles_cannot_make_the_host_hold_a_value_many_times_over() {
    let dir = app_dir(&manifest(""));
    let server = Server::start(dir.path(), &[]);
    assert_eq!(ok(&server, "/a/kv/big?key=a&size=1048576"), "ok");
    assert_eq!(ok(&server, "/a/wkv/cashoard?key=a&n=16"), "held 16");
    let (status, body) = get(&server, "/a/wkv/cashoard?key=a&n=17");
    assert_eq!(status, 500);
    assert!(
        body.contains("compare-and-swap handles would hold more than 16 MiB of values"),
        "{body}"
    );
    // The handles of the last request went with its instance: the next may hold 16 again.
    assert_eq!(ok(&server, "/a/wkv/cashoard?key=a&n=16"), "held 16");
}

/// Runs `wms up` in `dir`, expecting it to stop at start; returns its standard error.
fn up_fails(dir: &Path, args: &[&str]) -> String {
    let cache = tempfile::tempdir().unwrap();
    let out = wms_command()
        .env("WMS_CACHE_DIR", cache.path())
        .arg("up")
        .arg(dir)
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .output()
        .unwrap();
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_label_without_a_definition_stops_the_start_naming_component_and_label() {
    let dir = app_dir(&manifest(", \"sessions\""));
    let err = up_fails(dir.path(), &[]);
    assert!(
        err.contains("component `kv`: key-value store `sessions` is not defined"),
        "{err}"
    );
    assert!(err.contains("[key_value_store.sessions]"), "{err}");
}

#[test]
fn sqlite_answers_its_component_only_and_survives_kill_9() {
    let dir = app_dir(&manifest(""));
    let server = Server::start(dir.path(), &[]);
    let exec = |server: &Server, sql: &str, params: &[&str]| {
        let mut query = format!("sql={}", encode(sql));
        for p in params {
            query.push_str(&format!("&p={}", encode(p)));
        }
        get(server, &format!("/a/sqlite/exec?{query}"))
    };
    assert_eq!(
        exec(
            &server,
            "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, score REAL, data BLOB)",
            &[]
        ),
        (200, "\n".into())
    );
    assert_eq!(
        exec(
            &server,
            "INSERT INTO t (name, score, data) VALUES (?, 1.5, x'0102')",
            &["ann"]
        )
        .0,
        200
    );
    assert_eq!(
        exec(
            &server,
            "SELECT id, name, score, data, NULL AS empty FROM t WHERE name = ?",
            &["ann"]
        ),
        (
            200,
            "id|name|score|data|empty\ni:1|t:ann|r:1.5|b:2 bytes|null\n".into()
        )
    );
    // A statement that reaches another file is refused; so is an error in the SQL, as Spin's
    // `io` error.
    let (status, body) = exec(&server, "ATTACH DATABASE '/tmp/elsewhere.db' AS x", &[]);
    assert_eq!(status, 500);
    assert!(body.contains("Io(\"not authorized\")"), "{body}");
    let (status, body) = exec(&server, "SELEC 1", &[]);
    assert_eq!(status, 500);
    assert!(body.contains("syntax error"), "{body}");
    sqlite_is_denied_elsewhere(&server, dir.path());

    assert_eq!(
        exec(&server, "INSERT INTO t (name) VALUES (?)", &["bob"]).0,
        200
    );
    kill_9(server);
    let server = Server::start(dir.path(), &[]);
    assert_eq!(
        exec(&server, "SELECT name FROM t ORDER BY id", &[]),
        (200, "name\nt:ann\nt:bob\n".into())
    );
}

/// Regression (review): a row's values were all copied before the result's 16 MiB cap was
/// checked, and nothing bounded what SQLite itself allocated for them, so one statement of
/// many large computed columns made the server hold any amount. SQLite's heap is now capped
/// (256 MiB) and values are sized before they are copied: the statement fails, the server's
/// peak memory stays far below what the row asked for, and it keeps serving.
#[test]
fn a_sqlite_row_of_large_values_fails_within_sqlites_heap_cap() {
    let dir = app_dir(&manifest(""));
    let server = Server::start(dir.path(), &[]);
    // 50 columns of 15 MB each (each under SQLite's 16 MiB value limit): 750 MB a row.
    let columns: Vec<String> = (0..50)
        .map(|i| format!("randomblob(15000000) AS c{i}"))
        .collect();
    let sql = format!("SELECT {}", columns.join(", "));
    let (status, body) = get(&server, &format!("/a/sqlite/exec?sql={}", encode(&sql)));
    assert_eq!(status, 500, "{body}");
    assert!(body.contains("out of memory"), "{body}");
    let peak = crate::harness::peak_rss(server.pid());
    assert!(
        peak < 600 << 20,
        "the server's peak resident memory was {} MiB",
        peak >> 20
    );
    assert_eq!(
        ok(
            &server,
            &format!("/a/sqlite/exec?sql={}", encode("SELECT 1 AS one"))
        ),
        "one\ni:1\n"
    );
}

/// The SDK 7 guest (Spin 4's templates): `spin:key-value/key-value@3.0.0`, every operation,
/// `get-keys` read from its stream; the store's limits hold, other labels are denied, and the
/// data survives a restart.
#[test]
fn a_spin_sdk_7_guest_uses_the_default_store_through_key_value_3() {
    let dir = app_dir(&manifest_of(artifacts::SPIN3_VARS, ""));
    let config = dir.path().join("runtime-config.toml");
    std::fs::write(
        &config,
        "[key_value_store.default]\ntype = \"spin\"\nmax_value_size = 64\n",
    )
    .unwrap();
    let args = ["--runtime-config-file", config.to_str().unwrap()];
    let server = Server::start(dir.path(), &args);
    assert_eq!(
        ok(&server, "/a/kv/set?key=greeting&value=hello%20there"),
        "ok"
    );
    assert_eq!(ok(&server, "/a/kv/get?key=greeting"), "hello there");
    assert_eq!(ok(&server, "/a/kv/exists?key=greeting"), "true");
    assert_eq!(get(&server, "/a/kv/get?key=missing"), (404, "none".into()));
    assert_eq!(ok(&server, "/a/kv/exists?key=missing"), "false");
    assert_eq!(ok(&server, "/a/kv/set?key=gone&value=1"), "ok");
    assert_eq!(ok(&server, "/a/kv/set?key=%C3%A9t%C3%A9&value=2"), "ok");
    assert_eq!(ok(&server, "/a/kv/keys"), "gone\ngreeting\nété\n");
    assert_eq!(ok(&server, "/a/kv/delete?key=gone"), "ok");
    assert_eq!(ok(&server, "/a/kv/exists?key=gone"), "false");
    assert_eq!(get(&server, "/a/kv/get?key=gone"), (404, "none".into()));
    assert_eq!(ok(&server, "/a/kv/keys"), "greeting\nété\n");
    // The store's limit, as Spin's `other` error.
    let (status, body) = get(
        &server,
        &format!("/a/kv/set?key=big&value={}", "x".repeat(65)),
    );
    assert_eq!(status, 500, "{body}");
    assert!(
        body.contains("value of 65 bytes is over the store `default`'s limit of 64 bytes"),
        "{body}"
    );
    assert_eq!(ok(&server, "/a/kv/exists?key=big"), "false");

    // Denied: a component that declares no store, a label its component does not declare.
    for path in [
        "/b/kv/get?key=greeting",
        "/b/kv/set?key=k&value=v",
        "/b/kv/keys",
        "/a/kv/get?store=other&key=greeting",
        "/a/kv/keys?store=other",
    ] {
        let (status, body) = get(&server, path);
        assert_eq!(status, 500, "{path}: {body}");
        assert!(body.ends_with("AccessDenied"), "{path}: {body}");
    }

    // Acknowledged, then killed at once: the writes are there after a restart.
    assert_eq!(ok(&server, "/a/kv/set?key=last&value=acknowledged"), "ok");
    kill_9(server);
    let server = Server::start(dir.path(), &args);
    assert_eq!(ok(&server, "/a/kv/get?key=last"), "acknowledged");
    assert_eq!(ok(&server, "/a/kv/get?key=greeting"), "hello there");
    assert_eq!(ok(&server, "/a/kv/keys"), "greeting\nlast\nété\n");
    // The SDK 5 guest's interface sees the same store.
    drop(server);
    std::fs::write(dir.path().join("wms.toml"), manifest("")).unwrap();
    let server = Server::start(dir.path(), &args);
    assert_eq!(ok(&server, "/a/kv/get?key=last"), "acknowledged");
}

/// The SDK 7 guest: `spin:sqlite/sqlite@3.1.0` (`open-async`, `execute-async` with its rows as
/// a stream, `last-insert-rowid-async`, `changes-async`), parameters and results of every type;
/// other labels are denied, errors are Spin's, and the data survives a restart.
#[test]
fn a_spin_sdk_7_guest_uses_sqlite_3_1() {
    let dir = app_dir(&manifest_of(artifacts::SPIN3_VARS, ""));
    let server = Server::start(dir.path(), &[]);
    let exec = |server: &Server, db: &str, sql: &str, params: &[&str]| {
        let mut query = format!("db={db}&sql={}", encode(sql));
        for p in params {
            query.push_str(&format!("&p={}", encode(p)));
        }
        get(server, &format!("/a/sqlite/exec?{query}"))
    };
    assert_eq!(
        exec(
            &server,
            "default",
            "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, score REAL, data BLOB, note TEXT)",
            &[]
        ),
        (200, "\nrowid=0 changes=0".into())
    );
    // A parameter of each type, and what the statement did on this connection.
    assert_eq!(
        exec(
            &server,
            "default",
            "INSERT INTO t (id, name, score, data, note) VALUES (?, ?, ?, ?, ?)",
            &["i:7", "t:ann", "r:1.5", "b:00ff10", "null"]
        ),
        (200, "\nrowid=7 changes=1".into())
    );
    assert_eq!(
        exec(
            &server,
            "default",
            "INSERT INTO t (id, name) VALUES (?, ?), (?, ?)",
            &["i:8", "t:bob", "i:9", "t:cy"]
        ),
        (200, "\nrowid=9 changes=2".into())
    );
    assert_eq!(
        exec(
            &server,
            "default",
            "SELECT id, name, score, data, note FROM t WHERE id = ? OR data = ? ORDER BY id",
            &["i:8", "b:00ff10"]
        ),
        (
            200,
            "id|name|score|data|note\ni:7|t:ann|r:1.5|b:00ff10|null\ni:8|t:bob|null|null|null\nrowid=0 changes=0"
                .into()
        )
    );
    assert_eq!(
        exec(
            &server,
            "default",
            "SELECT count(*) AS n, typeof(?) AS a, typeof(?) AS b FROM t",
            &["r:-0.25", "t:x"]
        ),
        (200, "n|a|b\ni:3|t:real|t:text\nrowid=0 changes=0".into())
    );
    // Errors are Spin's `io`: SQL that does not parse, a statement that reaches another file.
    let (status, body) = exec(&server, "default", "SELEC 1", &[]);
    assert_eq!(status, 500);
    assert!(
        body.contains("Io(") && body.contains("syntax error"),
        "{body}"
    );
    let (status, body) = exec(
        &server,
        "default",
        "ATTACH DATABASE '/tmp/elsewhere.db' AS x",
        &[],
    );
    assert_eq!(status, 500);
    assert!(body.contains("Io(\"not authorized\")"), "{body}");
    sqlite_is_denied_elsewhere(&server, dir.path());

    // (Its `last-insert-rowid` is the database's last insert, as 3.0.0 answers: one SQLite
    // connection serves every handle.)
    let (status, body) = exec(&server, "default", "DELETE FROM t WHERE id = ?", &["i:9"]);
    assert_eq!(status, 200, "{body}");
    assert!(body.ends_with(" changes=1"), "{body}");
    kill_9(server);
    let server = Server::start(dir.path(), &[]);
    assert_eq!(
        exec(
            &server,
            "default",
            "SELECT name, data FROM t ORDER BY id",
            &[]
        ),
        (
            200,
            "name|data\nt:ann|b:00ff10\nt:bob|null\nrowid=0 changes=0".into()
        )
    );
}

/// An async guest may ask for many answers without reading them, and the host keeps each
/// answer's items until the guest reads or drops its stream: an instance's unread streams hold
/// at most 48 MiB together (one `execute-async` answer is at most 16 MiB of rows); the next
/// instance may hold as much again.
#[test]
fn a_spin_sdk_7_guest_cannot_make_the_host_hold_unread_answers_without_bound() {
    let dir = app_dir(&manifest_of(artifacts::SPIN3_VARS, ""));
    let server = Server::start(dir.path(), &[]);
    let hoard = |n: usize| {
        get(
            &server,
            &format!(
                "/a/sqlite/hoard?n={n}&sql={}",
                encode("SELECT zeroblob(15000000) AS b")
            ),
        )
    };
    assert_eq!(hoard(3), (200, "held 3".into()));
    let (status, body) = hoard(4);
    assert_eq!(status, 500, "{body}");
    assert!(
        body.contains("this instance's unread streams would hold more than 48 MiB"),
        "{body}"
    );
    assert_eq!(hoard(3), (200, "held 3".into()));
}

/// Debian's `redis-server` on a free loopback port with its own directory; killed on drop.
struct Redis {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Redis {
    fn start() -> Redis {
        let dir = tempfile::tempdir().unwrap();
        // A port the kernel just handed out, free again for redis-server to bind.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (Debian's redis-server package; scripts/test installs it)");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        loop {
            match lines.next() {
                Some(Ok(line)) if line.contains("Ready to accept connections") => break,
                Some(Ok(_)) => {}
                _ => panic!("redis-server did not start on port {port}"),
            }
        }
        // Keep draining its output so it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Redis {
            child,
            port,
            _dir: dir,
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_redis_store_is_shared_by_two_wms_processes() {
    let redis = Redis::start();
    let manifest = manifest(", \"shared\"");
    let config = format!(
        "[key_value_store.shared]\ntype = \"redis\"\nurl = \"redis://127.0.0.1:{}\"\nmax_value_size = 64\n",
        redis.port
    );
    let (one_dir, two_dir) = (app_dir(&manifest), app_dir(&manifest));
    let start = |dir: &Path| {
        let file = dir.join("runtime-config.toml");
        std::fs::write(&file, &config).unwrap();
        Server::start(dir, &["--runtime-config-file", file.to_str().unwrap()])
    };
    let one = start(one_dir.path());
    let two = start(two_dir.path());
    // The SDK 7 guest (spin:key-value@3.0.0) on the same store.
    let three_dir = app_dir(&manifest_of(artifacts::SPIN3_VARS, ", \"shared\""));
    let three = start(three_dir.path());
    assert_eq!(
        ok(&one, "/a/kv/set?store=shared&key=k&value=from-one"),
        "ok"
    );
    assert_eq!(ok(&two, "/a/kv/get?store=shared&key=k"), "from-one");
    assert_eq!(ok(&two, "/a/wkv/incr?store=shared&key=n&by=2"), "2");
    assert_eq!(ok(&one, "/a/wkv/incr?store=shared&key=n&by=3"), "5");
    assert_eq!(ok(&one, "/a/kv/keys?store=shared"), "k\nn\n");
    assert_eq!(ok(&three, "/a/kv/keys?store=shared"), "k\nn\n");
    assert_eq!(ok(&three, "/a/kv/get?store=shared&key=n"), "5");
    assert_eq!(ok(&three, "/a/kv/set?store=shared&key=t&value=3"), "ok");
    assert_eq!(ok(&two, "/a/kv/get?store=shared&key=t"), "3");
    assert_eq!(ok(&three, "/a/kv/delete?store=shared&key=t"), "ok");
    assert_eq!(
        ok(
            &two,
            "/a/wkv/cas?store=shared&key=k&from=from-one&to=from-two"
        ),
        "swapped"
    );
    assert_eq!(ok(&one, "/a/kv/get?store=shared&key=k"), "from-two");
    assert_eq!(ok(&one, "/a/kv/delete?store=shared&key=k"), "ok");
    assert_eq!(ok(&two, "/a/kv/exists?store=shared&key=k"), "false");
    // Each process's embedded default store is its own.
    assert_eq!(ok(&one, "/a/kv/set?key=local&value=1"), "ok");
    assert_eq!(get(&two, "/a/kv/get?key=local"), (404, "none".into()));
    // The limit holds for Redis too; the component without the store is denied.
    let (status, body) = get(&one, "/a/kv/big?store=shared&key=b&size=65");
    assert_eq!(status, 500);
    assert!(
        body.contains("over the store `shared`'s limit of 64 bytes"),
        "{body}"
    );
    let (status, body) = get(&two, "/b/kv/get?store=shared&key=n");
    assert_eq!(status, 500);
    assert!(body.ends_with("AccessDenied"), "{body}");
    // The log names the server, not the URL's credentials.
    let log = one.log();
    assert!(
        log.contains(&format!(
            "key-value store `shared`: redis (127.0.0.1:{})",
            redis.port
        )),
        "{log}"
    );

    // Redis gone: the guest gets an error, the server keeps serving.
    drop(redis);
    let (status, body) = get(&one, "/a/kv/get?store=shared&key=n");
    assert_eq!(status, 500, "{body}");
    assert!(body.contains("Other(\"the store `shared`"), "{body}");
    assert_eq!(ok(&one, "/a/kv/get?key=local"), "1");
    // 3.0.0's `get-keys` answers the error in its future, after an empty stream.
    let (status, body) = get(&three, "/a/kv/keys?store=shared");
    assert_eq!(status, 500, "{body}");
    assert!(body.contains("Other(\"the store `shared`"), "{body}");
}

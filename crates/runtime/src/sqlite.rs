//! Spin's SQLite interfaces for guests, `fermyon:spin/sqlite@2.0.0` (the Spin SDKs up to 5:
//! `spin_sdk::sqlite`), `spin:sqlite/sqlite@3.0.0` (SDK 5's `spin_sdk::sqlite3`, with
//! `last-insert-rowid` and `changes`) and `spin:sqlite/sqlite@3.1.0` (SDKs 6 and 7's
//! `spin_sdk::sqlite`: 3.0.0 and async versions of its functions, `execute-async` returning the
//! rows as a stream): one embedded database file per label the app uses (the state
//! directory's `sqlite/LABEL.db`, or the label's `path`), in WAL mode with `synchronous = FULL`,
//! so a statement that returned has been committed and synced.
//!
//! A guest runs whatever SQL it likes on the databases its component declares
//! (`sqlite_databases`), and nothing else: opening another label is Spin's `access-denied`;
//! statements that reach other files (`ATTACH`, `VACUUM INTO`) or change the connection
//! (`PRAGMA`, but for a few that only read) are refused by an authorizer, and SQLite's defensive
//! mode is on. A statement runs at most the component's request timeout (then it is interrupted)
//! and returns at most [`MAX_RESULT_ROWS`] rows and [`MAX_RESULT_BYTES`] bytes (else an error).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Once};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rusqlite::hooks::{AuthAction, AuthContext, Authorization};
use rusqlite::types::{FromSql as _, Value as SqlValue, ValueRef};
use wasmtime::component::{Accessor, FutureReader, Resource, StreamReader};

use crate::kv_host::{
    GuestStores, HasStores, Refused, spin2_sqlite as v2, spin3_sqlite as v3, spin31_sqlite as v31,
};

/// The most rows one statement returns to a guest.
pub const MAX_RESULT_ROWS: usize = 100_000;
/// The most bytes of values one statement returns to a guest.
pub const MAX_RESULT_BYTES: usize = 16 << 20;
/// The most heap SQLite may use in the process, for every database and key-value store
/// together: a statement that needs more (a row of many large computed values, a large sort)
/// fails with "out of memory" and the server keeps serving. Temporary tables and sorts are kept
/// in memory (`temp_store = MEMORY`), so this bounds them too, not the disk.
pub const HEAP_LIMIT: i64 = 256 << 20;
/// The default most bytes a database file holds (`max_size` in its runtime config table).
pub const DEFAULT_MAX_SIZE: u64 = 1 << 30;

/// Sets [`HEAP_LIMIT`], once per process.
pub(crate) fn limit_heap() {
    static LIMIT: Once = Once::new();
    LIMIT.call_once(|| {
        // SAFETY: sets a process-wide limit SQLite reads under its own lock; no pointers.
        unsafe { rusqlite::ffi::sqlite3_hard_heap_limit64(HEAP_LIMIT) };
    });
}

/// Opens (creating) a SQLite file for wms's own use: WAL, `synchronous = FULL`, waits up to 5 s
/// for a lock another connection holds.
pub(crate) fn open_file(path: &Path) -> anyhow::Result<rusqlite::Connection> {
    limit_heap();
    let conn = rusqlite::Connection::open(path)
        .with_context(|| format!("cannot open the SQLite file {}", path.display()))?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .and_then(|()| conn.pragma_update(None, "synchronous", "FULL"))
        .with_context(|| format!("cannot set up the SQLite file {}", path.display()))?;
    Ok(conn)
}

/// One labelled database, its connection used by one blocking thread at a time.
pub(crate) struct Database {
    label: String,
    conn: Arc<tokio::sync::Mutex<rusqlite::Connection>>,
}

/// Every database an app's components use, opened at start.
#[derive(Default)]
pub(crate) struct Databases {
    dbs: HashMap<String, Arc<Database>>,
}

/// PRAGMAs a guest may run: they only read.
const READ_PRAGMAS: &[&str] = &[
    "table_info",
    "table_xinfo",
    "table_list",
    "index_list",
    "index_info",
    "index_xinfo",
    "foreign_key_list",
    "user_version",
    "data_version",
    "schema_version",
    "page_count",
    "page_size",
    "freelist_count",
];

fn authorize(ctx: AuthContext<'_>) -> Authorization {
    match ctx.action {
        AuthAction::Attach { .. } | AuthAction::Detach { .. } => Authorization::Deny,
        AuthAction::Pragma {
            pragma_name,
            pragma_value,
        } => {
            let name = pragma_name.to_ascii_lowercase();
            // `user_version = N` writes; reading it is fine.
            if READ_PRAGMAS.contains(&name.as_str())
                && (pragma_value.is_none() || !name.ends_with("_version"))
            {
                Authorization::Allow
            } else {
                Authorization::Deny
            }
        }
        _ => Authorization::Allow,
    }
}

impl Databases {
    pub(crate) fn open(stores: &wms_manifest::stores::AppStores) -> anyhow::Result<Self> {
        let mut dbs = HashMap::new();
        for (label, def) in &stores.sqlite {
            let path = stores
                .sqlite_file(label)
                .context("no state directory for the embedded SQLite database")?;
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
            }
            let mut conn = open_file(&path)?;
            conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_DEFENSIVE, true)?;
            conn.set_db_config(
                rusqlite::config::DbConfig::SQLITE_DBCONFIG_TRUSTED_SCHEMA,
                false,
            )?;
            conn.set_limit(rusqlite::limits::Limit::SQLITE_LIMIT_ATTACHED, 0)?;
            conn.set_limit(
                rusqlite::limits::Limit::SQLITE_LIMIT_LENGTH,
                MAX_RESULT_BYTES as i32,
            )?;
            conn.pragma_update(None, "temp_store", "MEMORY")?;
            // The file's size cap, in pages (SQLite keeps a file already larger at its size).
            let page_size: i64 = conn.pragma_query_value(None, "page_size", |r| r.get(0))?;
            let max_size = def.max_size.unwrap_or(DEFAULT_MAX_SIZE);
            let pages = (max_size / page_size.max(1) as u64).clamp(1, i64::MAX as u64) as i64;
            conn.pragma_update(None, "max_page_count", pages)?;
            conn.authorizer(Some(authorize))?;
            tracing::debug!("SQLite database `{label}`: {}", path.display());
            dbs.insert(
                label.clone(),
                Arc::new(Database {
                    label: label.clone(),
                    conn: Arc::new(tokio::sync::Mutex::new(conn)),
                }),
            );
        }
        Ok(Self { dbs })
    }

    pub(crate) fn get(&self, label: &str) -> Option<Arc<Database>> {
        self.dbs.get(label).cloned()
    }
}

/// A query's answer: column names and rows.
#[derive(Debug)]
pub(crate) struct Rows {
    pub(crate) columns: Vec<String>,
    pub(crate) rows: Vec<Vec<SqlValue>>,
    /// The connection's last inserted rowid and changed rows, read right after the statement.
    pub(crate) last_insert_rowid: i64,
    pub(crate) changes: u64,
    /// Whether the statement may write (else the two above are not its own).
    pub(crate) writes: bool,
}

impl Database {
    /// Runs one statement with `params` on a blocking thread, within `timeout` from now (waiting
    /// for the connection included). A caller that gives up while waiting runs nothing; a
    /// statement that started is interrupted at the deadline.
    pub(crate) async fn execute(
        self: &Arc<Self>,
        sql: String,
        params: Vec<SqlValue>,
        timeout: Duration,
    ) -> Result<Rows, String> {
        let deadline = Instant::now() + timeout;
        let mut conn = tokio::time::timeout_at(deadline.into(), self.conn.clone().lock_owned())
            .await
            .map_err(|_| {
                format!(
                    "database `{}` was busy with other statements for the whole {timeout:?}",
                    self.label
                )
            })?;
        let label = self.label.clone();
        tokio::task::spawn_blocking(move || {
            execute_blocking(&mut conn, &label, &sql, params, deadline, timeout)
        })
        .await
        .map_err(|e| format!("database task failed: {e}"))?
    }
}

fn execute_blocking(
    conn: &mut rusqlite::Connection,
    label: &str,
    sql: &str,
    params: Vec<SqlValue>,
    deadline: Instant,
    timeout: Duration,
) -> Result<Rows, String> {
    // Interrupts this statement (and only it: the lock is held) past its deadline.
    conn.progress_handler(10_000, Some(move || Instant::now() > deadline))
        .map_err(|e| e.to_string())?;
    let result = run(conn, sql, params).map_err(|e| match e {
        rusqlite::Error::SqliteFailure(f, _)
            if f.code == rusqlite::ErrorCode::OperationInterrupted =>
        {
            format!("the statement ran longer than {timeout:?} and was interrupted")
        }
        e => e.to_string(),
    });
    let _ = conn.progress_handler(0, None::<fn() -> bool>);
    // A statement that left a transaction open (BEGIN without COMMIT) would hold the lock
    // for every other guest: roll it back.
    if !conn.is_autocommit() {
        let _ = conn.execute_batch("ROLLBACK");
        return Err(format!(
            "database `{label}`: a transaction was left open and was rolled back; run a whole transaction in one statement"
        ));
    }
    result
}

fn run(conn: &rusqlite::Connection, sql: &str, params: Vec<SqlValue>) -> rusqlite::Result<Rows> {
    let mut stmt = conn.prepare(sql)?;
    let columns: Vec<String> = stmt.column_names().map(|c| c.to_string()).collect();
    let writes = !stmt.readonly();
    let mut rows_out = Vec::new();
    let mut bytes = 0usize;
    let mut rows = stmt.query(rusqlite::params_from_iter(params))?;
    while let Some(row) = rows.next()? {
        if rows_out.len() == MAX_RESULT_ROWS {
            return Err(too_big(format!("more than {MAX_RESULT_ROWS} rows")));
        }
        let mut values = Vec::with_capacity(columns.len());
        for i in 0..columns.len() {
            // Sized where SQLite holds it, copied only while the result stays under the cap.
            let v = row.get_ref(i)?;
            bytes += match v {
                ValueRef::Text(s) => s.len(),
                ValueRef::Blob(b) => b.len(),
                _ => 8,
            };
            if bytes > MAX_RESULT_BYTES {
                return Err(too_big(format!("more than {MAX_RESULT_BYTES} bytes")));
            }
            values.push(SqlValue::column_result(v).map_err(|e| {
                rusqlite::Error::FromSqlConversionFailure(i, v.data_type(), Box::new(e))
            })?);
        }
        rows_out.push(values);
    }
    drop(rows);
    Ok(Rows {
        columns,
        rows: rows_out,
        last_insert_rowid: conn.last_insert_rowid(),
        changes: conn.changes(),
        writes,
    })
}

fn too_big(what: String) -> rusqlite::Error {
    rusqlite::Error::ToSqlConversionFailure(format!("the result holds {what}; select less").into())
}

/// An open database, as a guest holds it, with what its last statement did (Spin 3's
/// `last-insert-rowid` and `changes` answer for this handle, whatever other guests run).
pub struct OpenDatabase {
    db: Arc<Database>,
    last_insert_rowid: i64,
    changes: u64,
}

impl GuestStores {
    /// The database the guest's handle `this` opened.
    fn database(&self, this: &Resource<OpenDatabase>) -> Option<Arc<Database>> {
        self.table.get(this).ok().map(|d| d.db.clone())
    }

    /// Keeps what a statement on `this` did, if it may write (Spin 3's `last-insert-rowid`
    /// and `changes`).
    fn record(&mut self, this: &Resource<OpenDatabase>, rows: &Rows) {
        if let Ok(open) = self.table.get_mut(this)
            && rows.writes
        {
            open.last_insert_rowid = rows.last_insert_rowid;
            open.changes = rows.changes;
        }
    }

    fn last_insert_rowid(&self, this: &Resource<OpenDatabase>) -> i64 {
        self.table.get(this).map_or(0, |d| d.last_insert_rowid)
    }

    fn changes(&self, this: &Resource<OpenDatabase>) -> u64 {
        self.table.get(this).map_or(0, |d| d.changes)
    }

    fn open_database(&mut self, label: &str) -> Result<Resource<OpenDatabase>, Refused> {
        let Some((_, db)) = self.grants.sqlite.iter().find(|(l, _)| l == label) else {
            tracing::debug!(component = %self.component, "SQLite database `{label}` refused: not in its sqlite_databases");
            return Err(Refused::AccessDenied);
        };
        self.table
            .push(OpenDatabase {
                db: db.clone(),
                last_insert_rowid: 0,
                changes: 0,
            })
            .map_err(|_| Refused::TableFull)
    }
}

/// One version of Spin's SQLite interface over [`Database`]: `$v` is its bindings module; the
/// methods in the first braces are the version's own (Spin 3's `last-insert-rowid` and
/// `changes`), the items in the second its async functions (3.1.0's).
macro_rules! spin_sqlite_host {
    ($v:ident, $host:ident { $($extra:tt)* } $({ $($items:tt)* })?) => {
        mod $host {
            use super::*;

            $($($items)*)?

            fn to_sql(v: $v::Value) -> SqlValue {
                match v {
                    $v::Value::Integer(i) => SqlValue::Integer(i),
                    $v::Value::Real(f) => SqlValue::Real(f),
                    $v::Value::Text(s) => SqlValue::Text(s),
                    $v::Value::Blob(b) => SqlValue::Blob(b),
                    $v::Value::Null => SqlValue::Null,
                }
            }

            fn from_sql(v: SqlValue) -> $v::Value {
                match v {
                    SqlValue::Integer(i) => $v::Value::Integer(i),
                    SqlValue::Real(f) => $v::Value::Real(f),
                    SqlValue::Text(s) => $v::Value::Text(s),
                    SqlValue::Blob(b) => $v::Value::Blob(b),
                    SqlValue::Null => $v::Value::Null,
                }
            }

            impl $v::Host for GuestStores {}

            impl $v::HostConnection for GuestStores {
                async fn open(
                    &mut self,
                    database: String,
                ) -> Result<Resource<OpenDatabase>, $v::Error> {
                    self.open_database(&database).map_err(|r| match r {
                        Refused::AccessDenied => $v::Error::AccessDenied,
                        Refused::TableFull => $v::Error::Io("too many databases open".to_string()),
                    })
                }

                async fn execute(
                    &mut self,
                    this: Resource<OpenDatabase>,
                    statement: String,
                    parameters: Vec<$v::Value>,
                ) -> Result<$v::QueryResult, $v::Error> {
                    let db = self.database(&this).ok_or($v::Error::InvalidConnection)?;
                    let params = parameters.into_iter().map(to_sql).collect();
                    let rows = db
                        .execute(statement, params, self.sqlite_timeout)
                        .await
                        .map_err($v::Error::Io)?;
                    self.record(&this, &rows);
                    Ok($v::QueryResult {
                        columns: rows.columns,
                        rows: rows
                            .rows
                            .into_iter()
                            .map(|r| $v::RowResult {
                                values: r.into_iter().map(from_sql).collect(),
                            })
                            .collect(),
                    })
                }

                $($extra)*

                async fn drop(&mut self, this: Resource<OpenDatabase>) -> wasmtime::Result<()> {
                    self.table.delete(this)?;
                    Ok(())
                }
            }
        }
    };
}

spin_sqlite_host!(v2, spin2_host {});

spin_sqlite_host!(v3, spin3_host {
    async fn last_insert_rowid(&mut self, this: Resource<OpenDatabase>) -> i64 {
        GuestStores::last_insert_rowid(self, &this)
    }

    async fn changes(&mut self, this: Resource<OpenDatabase>) -> u64 {
        GuestStores::changes(self, &this)
    }
});

spin_sqlite_host!(v31, spin31_host {
    async fn last_insert_rowid(&mut self, this: Resource<OpenDatabase>) -> i64 {
        GuestStores::last_insert_rowid(self, &this)
    }

    async fn changes(&mut self, this: Resource<OpenDatabase>) -> u64 {
        GuestStores::changes(self, &this)
    }
} {
    /// 3.1.0's async functions: the same as their synchronous versions. `execute-async` runs
    /// the whole statement (within the same deadline and result caps) before it answers: a
    /// failure is its own error, and the stream holds the rows (within the instance's
    /// `MAX_STREAMED_BYTES`), the future `ok`.
    impl<T> v31::HostConnectionWithStore<T> for HasStores {
        async fn open_async(
            accessor: &Accessor<T, Self>,
            database: String,
        ) -> Result<Resource<OpenDatabase>, v31::Error> {
            accessor.with(|mut a| {
                a.get().open_database(&database).map_err(|r| match r {
                    Refused::AccessDenied => v31::Error::AccessDenied,
                    Refused::TableFull => v31::Error::Io("too many databases open".to_string()),
                })
            })
        }

        async fn execute_async(
            accessor: &Accessor<T, Self>,
            this: Resource<OpenDatabase>,
            statement: String,
            parameters: Vec<v31::Value>,
        ) -> wasmtime::Result<
            Result<
                (
                    Vec<String>,
                    StreamReader<v31::RowResult>,
                    FutureReader<Result<(), v31::Error>>,
                ),
                v31::Error,
            >,
        > {
            let Some((db, timeout)) =
                accessor.with(|mut a| a.get().database(&this).map(|db| (db, a.get().sqlite_timeout)))
            else {
                return Ok(Err(v31::Error::InvalidConnection));
            };
            let params = parameters.into_iter().map(to_sql).collect();
            let rows = match db.execute(statement, params, timeout).await {
                Ok(rows) => rows,
                Err(e) => return Ok(Err(v31::Error::Io(e))),
            };
            accessor.with(|mut a| {
                let stores = a.get();
                stores.record(&this, &rows);
                // Sized as `run` sizes them against MAX_RESULT_BYTES.
                let bytes = rows
                    .rows
                    .iter()
                    .flatten()
                    .map(|v| match v {
                        SqlValue::Text(s) => s.len(),
                        SqlValue::Blob(b) => b.len(),
                        _ => 8,
                    })
                    .sum();
                let values: Vec<v31::RowResult> = rows
                    .rows
                    .into_iter()
                    .map(|r| v31::RowResult {
                        values: r.into_iter().map(from_sql).collect(),
                    })
                    .collect();
                let values = match stores.stream(values, bytes) {
                    Ok(values) => values,
                    Err(e) => {
                        return Ok(Err(v31::Error::Io(format!(
                            "the statement ran, but {e}"
                        ))));
                    }
                };
                let stream = StreamReader::new(&mut a, values)?;
                let done = FutureReader::new(
                    &mut a,
                    std::future::ready(Ok::<_, wasmtime::Error>(Ok(()))),
                )?;
                Ok(Ok((rows.columns, stream, done)))
            })
        }

        async fn last_insert_rowid_async(
            accessor: &Accessor<T, Self>,
            this: Resource<OpenDatabase>,
        ) -> i64 {
            accessor.with(|mut a| a.get().last_insert_rowid(&this))
        }

        async fn changes_async(accessor: &Accessor<T, Self>, this: Resource<OpenDatabase>) -> u64 {
            accessor.with(|mut a| a.get().changes(&this))
        }
    }
});

#[cfg(test)]
mod tests {
    use super::*;

    fn db(dir: &Path) -> Arc<Database> {
        db_of(dir, Default::default())
    }

    fn db_of(dir: &Path, def: wms_manifest::stores::SqliteDatabase) -> Arc<Database> {
        let stores = wms_manifest::stores::AppStores {
            state_dir: Some(dir.to_path_buf()),
            sqlite: [("default".to_string(), def)].into_iter().collect(),
            ..Default::default()
        };
        Databases::open(&stores).unwrap().get("default").unwrap()
    }

    /// Regression (review): a statement waited for its database on a blocking thread, and one
    /// whose caller had given up at its timeout still ran when the database came free.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_statement_whose_caller_gave_up_waiting_never_runs() {
        let dir = tempfile::tempdir().unwrap();
        let db = db(dir.path());
        let t = Duration::from_secs(5);
        db.execute("CREATE TABLE t (a INTEGER)".into(), vec![], t)
            .await
            .unwrap();
        // Holds the database for about a second.
        let busy = {
            let db = db.clone();
            tokio::spawn(async move {
                db.execute(
                    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c".into(),
                    vec![],
                    Duration::from_secs(1),
                )
                .await
            })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        // Its own timeout ends first: an error, and the insert is never made.
        let e = db
            .execute(
                "INSERT INTO t VALUES (1)".into(),
                vec![],
                Duration::from_millis(200),
            )
            .await
            .unwrap_err();
        assert!(e.contains("busy with other statements"), "{e}");
        // A caller dropped while waiting (a guest cancelled at its request's timeout).
        let dropped = tokio::time::timeout(
            Duration::from_millis(200),
            db.execute("INSERT INTO t VALUES (2)".into(), vec![], t),
        )
        .await;
        assert!(dropped.is_err());
        assert!(busy.await.unwrap().unwrap_err().contains("interrupted"));
        tokio::time::sleep(Duration::from_millis(300)).await;
        let r = db
            .execute("SELECT count(*) FROM t".into(), vec![], t)
            .await
            .unwrap();
        assert_eq!(r.rows, vec![vec![SqlValue::Integer(0)]]);
    }

    #[tokio::test]
    async fn a_database_holds_at_most_its_max_size_and_results_their_cap() {
        let dir = tempfile::tempdir().unwrap();
        let db = db_of(
            dir.path(),
            wms_manifest::stores::SqliteDatabase {
                path: None,
                max_size: Some(256 << 10),
            },
        );
        let t = Duration::from_secs(5);
        db.execute("CREATE TABLE t (b BLOB)".into(), vec![], t)
            .await
            .unwrap();
        db.execute("INSERT INTO t VALUES (zeroblob(100000))".into(), vec![], t)
            .await
            .unwrap();
        let e = db
            .execute("INSERT INTO t VALUES (zeroblob(300000))".into(), vec![], t)
            .await
            .unwrap_err();
        assert!(e.contains("full"), "{e}");
        // Still usable; what was written is there.
        let r = db
            .execute("SELECT count(*) FROM t".into(), vec![], t)
            .await
            .unwrap();
        assert_eq!(r.rows, vec![vec![SqlValue::Integer(1)]]);
        // A row over the result cap fails at the column that crosses it.
        let e = db
            .execute(
                "SELECT zeroblob(10000000) AS a, zeroblob(10000000) AS b".into(),
                vec![],
                t,
            )
            .await
            .unwrap_err();
        assert!(e.contains("more than 16777216 bytes"), "{e}");
    }

    #[tokio::test]
    async fn statements_reach_no_other_file_and_stop_at_their_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let db = db(dir.path());
        let t = Duration::from_secs(5);
        let outside = dir.path().join("outside.db");
        for sql in [
            format!("ATTACH DATABASE '{}' AS x", outside.display()),
            format!("VACUUM INTO '{}'", outside.display()),
            "PRAGMA journal_mode = DELETE".to_string(),
            "PRAGMA writable_schema = ON".to_string(),
        ] {
            let e = db.execute(sql.clone(), vec![], t).await.err();
            assert!(e.is_some(), "{sql} was allowed");
        }
        assert!(!outside.exists());
        db.execute("CREATE TABLE t (a INTEGER, b TEXT)".into(), vec![], t)
            .await
            .unwrap();
        db.execute(
            "INSERT INTO t VALUES (?1, ?2)".into(),
            vec![SqlValue::Integer(1), SqlValue::Text("x".into())],
            t,
        )
        .await
        .unwrap();
        let r = db
            .execute("SELECT a, b FROM t".into(), vec![], t)
            .await
            .unwrap();
        assert_eq!(r.columns, ["a", "b"]);
        assert_eq!(
            r.rows,
            vec![vec![SqlValue::Integer(1), SqlValue::Text("x".into())]]
        );
        assert!(
            db.execute("PRAGMA table_info(t)".into(), vec![], t)
                .await
                .is_ok()
        );
        let e = db.execute("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c".into(),
                vec![],
                Duration::from_millis(200),
            ).await
            .unwrap_err();
        assert!(e.contains("interrupted"), "{e}");
        let e = db.execute("BEGIN".into(), vec![], t).await.unwrap_err();
        assert!(e.contains("rolled back"), "{e}");
        assert!(db.execute("SELECT 1".into(), vec![], t).await.is_ok());
    }
}

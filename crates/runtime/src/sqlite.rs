//! Spin's SQLite interfaces for guests, `fermyon:spin/sqlite@2.0.0` (the Spin SDKs up to 5:
//! `spin_sdk::sqlite`) and `spin:sqlite/sqlite@3.0.0` (SDK 5's `spin_sdk::sqlite3`, with
//! `last-insert-rowid` and `changes`): one embedded database file per label the app uses (the state
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
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rusqlite::hooks::{AuthAction, AuthContext, Authorization};
use rusqlite::types::Value as SqlValue;
use wasmtime::component::Resource;

use crate::kv_host::{GuestStores, Refused, spin2_sqlite as v2, spin3_sqlite as v3};

/// The most rows one statement returns to a guest.
pub const MAX_RESULT_ROWS: usize = 100_000;
/// The most bytes of values one statement returns to a guest.
pub const MAX_RESULT_BYTES: usize = 16 << 20;

/// Opens (creating) a SQLite file for wms's own use: WAL, `synchronous = FULL`, waits up to 5 s
/// for a lock another connection holds.
pub(crate) fn open_file(path: &Path) -> anyhow::Result<rusqlite::Connection> {
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
    conn: Mutex<rusqlite::Connection>,
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
        for label in stores.sqlite.keys() {
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
            conn.authorizer(Some(authorize))?;
            tracing::debug!("SQLite database `{label}`: {}", path.display());
            dbs.insert(
                label.clone(),
                Arc::new(Database {
                    label: label.clone(),
                    conn: Mutex::new(conn),
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
    /// Runs one statement with `params` on a blocking thread, within `timeout`.
    pub(crate) async fn execute(
        self: &Arc<Self>,
        sql: String,
        params: Vec<SqlValue>,
        timeout: Duration,
    ) -> Result<Rows, String> {
        let db = self.clone();
        tokio::task::spawn_blocking(move || db.execute_blocking(&sql, params, timeout))
            .await
            .map_err(|e| format!("database task failed: {e}"))?
    }

    fn execute_blocking(
        &self,
        sql: &str,
        params: Vec<SqlValue>,
        timeout: Duration,
    ) -> Result<Rows, String> {
        let mut conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        // Interrupts this statement (and only it: the lock is held) past its deadline.
        let deadline = Instant::now() + timeout;
        conn.progress_handler(10_000, Some(move || Instant::now() > deadline))
            .map_err(|e| e.to_string())?;
        let result = run(&conn, sql, params).map_err(|e| match e {
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
                "database `{}`: a transaction was left open and was rolled back; run a whole transaction in one statement",
                self.label
            ));
        }
        result
    }
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
            let v: SqlValue = row.get(i)?;
            bytes += match &v {
                SqlValue::Text(s) => s.len(),
                SqlValue::Blob(b) => b.len(),
                _ => 8,
            };
            values.push(v);
        }
        if bytes > MAX_RESULT_BYTES {
            return Err(too_big(format!("more than {MAX_RESULT_BYTES} bytes")));
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
/// methods in braces are the version's own (Spin 3's `last-insert-rowid` and `changes`).
macro_rules! spin_sqlite_host {
    ($v:ident, $host:ident { $($extra:tt)* }) => {
        mod $host {
            use super::*;

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
                    let db = self
                        .table
                        .get(&this)
                        .map(|d| d.db.clone())
                        .map_err(|_| $v::Error::InvalidConnection)?;
                    let params = parameters.into_iter().map(to_sql).collect();
                    let rows = db
                        .execute(statement, params, self.sqlite_timeout)
                        .await
                        .map_err($v::Error::Io)?;
                    if let Ok(open) = self.table.get_mut(&this)
                        && rows.writes
                    {
                        open.last_insert_rowid = rows.last_insert_rowid;
                        open.changes = rows.changes;
                    }
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
        self.table.get(&this).map_or(0, |d| d.last_insert_rowid)
    }

    async fn changes(&mut self, this: Resource<OpenDatabase>) -> u64 {
        self.table.get(&this).map_or(0, |d| d.changes)
    }
});

#[cfg(test)]
mod tests {
    use super::*;

    fn db(dir: &Path) -> Arc<Database> {
        let stores = wms_manifest::stores::AppStores {
            state_dir: Some(dir.to_path_buf()),
            sqlite: [("default".to_string(), Default::default())]
                .into_iter()
                .collect(),
            ..Default::default()
        };
        Databases::open(&stores).unwrap().get("default").unwrap()
    }

    #[test]
    fn statements_reach_no_other_file_and_stop_at_their_deadline() {
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
            let e = db.execute_blocking(&sql, vec![], t).err();
            assert!(e.is_some(), "{sql} was allowed");
        }
        assert!(!outside.exists());
        db.execute_blocking("CREATE TABLE t (a INTEGER, b TEXT)", vec![], t)
            .unwrap();
        db.execute_blocking(
            "INSERT INTO t VALUES (?1, ?2)",
            vec![SqlValue::Integer(1), SqlValue::Text("x".into())],
            t,
        )
        .unwrap();
        let r = db
            .execute_blocking("SELECT a, b FROM t", vec![], t)
            .unwrap();
        assert_eq!(r.columns, ["a", "b"]);
        assert_eq!(
            r.rows,
            vec![vec![SqlValue::Integer(1), SqlValue::Text("x".into())]]
        );
        assert!(
            db.execute_blocking("PRAGMA table_info(t)", vec![], t)
                .is_ok()
        );
        let e = db
            .execute_blocking(
                "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c",
                vec![],
                Duration::from_millis(200),
            )
            .unwrap_err();
        assert!(e.contains("interrupted"), "{e}");
        let e = db.execute_blocking("BEGIN", vec![], t).unwrap_err();
        assert!(e.contains("rolled back"), "{e}");
        assert!(db.execute_blocking("SELECT 1", vec![], t).is_ok());
    }
}

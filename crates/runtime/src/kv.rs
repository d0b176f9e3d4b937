//! Key-value stores behind every key-value interface a guest may import (see `kv_host`): one
//! [`KvStore`] per label, embedded (SQLite on disk) or Redis.
//!
//! Embedded stores live in SQLite files (the state directory's `key_value.db`, or the store's
//! `path`), one table row per key, in WAL mode with `synchronous = FULL`: a write the guest saw
//! succeed is committed and synced before its call returns, so it survives the process being
//! killed (and the machine losing power). Their calls run on Tokio's blocking threads. The store's
//! limits (keys, total size) are kept in memory, counted from the file at start: one process
//! should own an embedded store.
//!
//! Redis stores keep each key as a Redis string under the same name (as Spin does), so any
//! process using the same server and database shares them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use rusqlite::OptionalExtension as _;
use wms_manifest::stores::{KvBackend, KvLimits};

/// The most keys one `get-keys` (or `list-keys`) returns.
pub(crate) const MAX_LISTED_KEYS: usize = 100_000;

/// How long a Redis store waits to connect, or for an answer.
const REDIS_TIMEOUT: Duration = Duration::from_secs(5);

/// A failed store operation, as the guest sees it (Spin's `other(string)`).
#[derive(Debug)]
pub(crate) struct KvError(pub(crate) String);

type KvResult<T> = Result<T, KvError>;

/// One labelled key-value store.
pub(crate) struct KvStore {
    pub(crate) label: String,
    limits: KvLimits,
    backend: Backend,
}

enum Backend {
    Embedded(Arc<EmbeddedFile>),
    Redis(Box<RedisStore>),
}

/// The outcome of a compare-and-swap.
pub(crate) enum Swap {
    Done,
    /// The value changed since it was read: here is the current one.
    Changed(Option<Vec<u8>>),
}

impl KvStore {
    fn check_key(&self, key: &str) -> KvResult<()> {
        if key.len() > self.limits.max_key_size {
            return Err(KvError(format!(
                "key of {} bytes is over the store's limit of {} bytes",
                key.len(),
                self.limits.max_key_size
            )));
        }
        Ok(())
    }

    fn check_value(&self, value: &[u8]) -> KvResult<()> {
        if value.len() as u64 > self.limits.max_value_size {
            return Err(KvError(format!(
                "value of {} bytes is over the store `{}`'s limit of {} bytes",
                value.len(),
                self.label,
                self.limits.max_value_size
            )));
        }
        Ok(())
    }

    pub(crate) async fn get(&self, key: String) -> KvResult<Option<Vec<u8>>> {
        self.check_key(&key)?;
        match &self.backend {
            Backend::Embedded(f) => f.run(&self.label, move |c, s| c.get(s, &key)).await,
            Backend::Redis(r) => r.query(redis::cmd("GET").arg(key)).await,
        }
    }

    pub(crate) async fn set(&self, key: String, value: Vec<u8>) -> KvResult<()> {
        self.check_key(&key)?;
        self.check_value(&value)?;
        match &self.backend {
            Backend::Embedded(f) => {
                let limits = self.limits.clone();
                f.run(&self.label, move |c, s| c.set(s, &key, &value, &limits))
                    .await
            }
            Backend::Redis(r) => r.query(redis::cmd("SET").arg(key).arg(value)).await,
        }
    }

    pub(crate) async fn delete(&self, key: String) -> KvResult<()> {
        self.check_key(&key)?;
        match &self.backend {
            Backend::Embedded(f) => f.run(&self.label, move |c, s| c.delete(s, &key)).await,
            Backend::Redis(r) => r.query::<i64>(redis::cmd("DEL").arg(key)).await.map(drop),
        }
    }

    pub(crate) async fn exists(&self, key: String) -> KvResult<bool> {
        self.check_key(&key)?;
        match &self.backend {
            Backend::Embedded(f) => {
                f.run(&self.label, move |c, s| c.get(s, &key).map(|v| v.is_some()))
                    .await
            }
            Backend::Redis(r) => r.query(redis::cmd("EXISTS").arg(key)).await,
        }
    }

    /// Every key, at most [`MAX_LISTED_KEYS`] (more is an error).
    pub(crate) async fn keys(&self) -> KvResult<Vec<String>> {
        match &self.backend {
            Backend::Embedded(f) => f.run(&self.label, |c, s| c.keys(s)).await,
            Backend::Redis(r) => r.keys().await,
        }
    }

    /// Adds `delta` to the number the key holds (as decimal text; a missing key is 0).
    pub(crate) async fn increment(&self, key: String, delta: i64) -> KvResult<i64> {
        self.check_key(&key)?;
        match &self.backend {
            Backend::Embedded(f) => {
                let limits = self.limits.clone();
                f.run(&self.label, move |c, s| {
                    c.increment(s, &key, delta, &limits)
                })
                .await
            }
            Backend::Redis(r) => r.query(redis::cmd("INCRBY").arg(key).arg(delta)).await,
        }
    }

    /// Sets the key to `value` if it still holds `expected`.
    pub(crate) async fn swap(
        &self,
        key: String,
        expected: Option<Vec<u8>>,
        value: Vec<u8>,
    ) -> KvResult<Swap> {
        self.check_key(&key)?;
        self.check_value(&value)?;
        match &self.backend {
            Backend::Embedded(f) => {
                let limits = self.limits.clone();
                f.run(&self.label, move |c, s| {
                    c.swap(s, &key, expected.as_deref(), &value, &limits)
                })
                .await
            }
            Backend::Redis(r) => r.swap(key, expected, value).await,
        }
    }
}

/// Every store an app's components use, opened at start.
#[derive(Default)]
pub(crate) struct KvStores {
    stores: HashMap<String, Arc<KvStore>>,
}

impl KvStores {
    /// Opens (creating files as needed) every store in `stores`.
    pub(crate) fn open(stores: &wms_manifest::stores::AppStores) -> anyhow::Result<Self> {
        let mut files: HashMap<PathBuf, Arc<EmbeddedFile>> = HashMap::new();
        let mut out = HashMap::new();
        for (label, def) in &stores.key_value {
            let backend = match &def.backend {
                KvBackend::Embedded { path } => {
                    let path = match path {
                        Some(p) => p.clone(),
                        None => stores
                            .key_value_file()
                            .context("no state directory for the embedded key-value store")?,
                    };
                    let file = match files.get(&path) {
                        Some(f) => f.clone(),
                        None => {
                            let f = Arc::new(EmbeddedFile::open(&path)?);
                            files.insert(path.clone(), f.clone());
                            f
                        }
                    };
                    file.count(label)?;
                    Backend::Embedded(file)
                }
                KvBackend::Redis { url } => Backend::Redis(Box::new(RedisStore::new(label, url)?)),
            };
            out.insert(
                label.clone(),
                Arc::new(KvStore {
                    label: label.clone(),
                    limits: def.limits.clone(),
                    backend,
                }),
            );
        }
        Ok(Self { stores: out })
    }

    pub(crate) fn get(&self, label: &str) -> Option<Arc<KvStore>> {
        self.stores.get(label).cloned()
    }
}

/// Keys and bytes an embedded store holds.
#[derive(Default, Clone, Copy)]
struct Usage {
    keys: u64,
    bytes: u64,
}

/// One SQLite file of embedded stores, its connection used by one blocking thread at a time.
struct EmbeddedFile {
    path: PathBuf,
    inner: Arc<tokio::sync::Mutex<Embedded>>,
}

struct Embedded {
    conn: rusqlite::Connection,
    usage: HashMap<String, Usage>,
}

/// SQLite's errors, for the guest: the message, never the file's path.
fn db_error(e: rusqlite::Error) -> KvError {
    KvError(format!("store error: {e}"))
}

impl EmbeddedFile {
    fn open(path: &Path) -> anyhow::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let conn = crate::sqlite::open_file(path)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS kv (
                store TEXT NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL,
                PRIMARY KEY (store, key)) WITHOUT ROWID;",
        )
        .with_context(|| format!("cannot set up the key-value store {}", path.display()))?;
        Ok(Self {
            path: path.to_path_buf(),
            inner: Arc::new(tokio::sync::Mutex::new(Embedded {
                conn,
                usage: HashMap::new(),
            })),
        })
    }

    /// Counts what store `label` holds, for its limits.
    fn count(&self, label: &str) -> anyhow::Result<()> {
        // At start, before any guest runs: nothing else holds it.
        let mut inner = self
            .inner
            .try_lock()
            .context("the key-value store is in use while it opens")?;
        let (keys, bytes): (i64, i64) = inner
            .conn
            .query_row(
                "SELECT count(*), coalesce(sum(octet_length(key) + length(value)), 0) FROM kv WHERE store = ?1",
                [label],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .with_context(|| format!("cannot read the key-value store {}", self.path.display()))?;
        inner.usage.insert(
            label.to_string(),
            Usage {
                keys: keys as u64,
                bytes: bytes as u64,
            },
        );
        Ok(())
    }

    /// Runs `f` on a blocking thread with the connection and the store's label, once the
    /// connection is free: a caller that gives up while waiting (a guest cancelled at its
    /// timeout) runs nothing and holds no thread.
    async fn run<T: Send + 'static>(
        self: &Arc<Self>,
        label: &str,
        f: impl FnOnce(&mut Embedded, &str) -> KvResult<T> + Send + 'static,
    ) -> KvResult<T> {
        let mut inner = self.inner.clone().lock_owned().await;
        let label = label.to_string();
        tokio::task::spawn_blocking(move || f(&mut inner, &label))
            .await
            .map_err(|e| KvError(format!("store task failed: {e}")))?
    }
}

impl Embedded {
    fn get(&self, store: &str, key: &str) -> KvResult<Option<Vec<u8>>> {
        self.conn
            .prepare_cached("SELECT value FROM kv WHERE store = ?1 AND key = ?2")
            .and_then(|mut s| s.query_row((store, key), |r| r.get(0)).optional())
            .map_err(db_error)
    }

    /// Writes `value` in one committed transaction, within the store's limits.
    fn set(&mut self, store: &str, key: &str, value: &[u8], limits: &KvLimits) -> KvResult<()> {
        let tx = self.conn.transaction().map_err(db_error)?;
        let old: Option<i64> = tx
            .prepare_cached(
                "SELECT octet_length(key) + length(value) FROM kv WHERE store = ?1 AND key = ?2",
            )
            .and_then(|mut s| s.query_row((store, key), |r| r.get(0)).optional())
            .map_err(db_error)?;
        let usage = self.usage.get(store).copied().unwrap_or_default();
        let after = Usage {
            keys: usage.keys + u64::from(old.is_none()),
            bytes: usage.bytes.saturating_sub(old.unwrap_or(0) as u64)
                + (key.len() + value.len()) as u64,
        };
        if after.keys > limits.max_keys {
            return Err(KvError(format!(
                "the store `{store}` holds its limit of {} keys",
                limits.max_keys
            )));
        }
        if after.bytes > limits.max_total_size {
            return Err(KvError(format!(
                "the store `{store}` would hold {} bytes, over its limit of {} bytes",
                after.bytes, limits.max_total_size
            )));
        }
        tx.prepare_cached(
            "INSERT INTO kv (store, key, value) VALUES (?1, ?2, ?3)
             ON CONFLICT (store, key) DO UPDATE SET value = excluded.value",
        )
        .and_then(|mut s| s.execute((store, key, value)))
        .map_err(db_error)?;
        tx.commit().map_err(db_error)?;
        self.usage.insert(store.to_string(), after);
        Ok(())
    }

    fn delete(&mut self, store: &str, key: &str) -> KvResult<()> {
        let tx = self.conn.transaction().map_err(db_error)?;
        let old: Option<i64> = tx
            .prepare_cached(
                "DELETE FROM kv WHERE store = ?1 AND key = ?2 RETURNING octet_length(key) + length(value)",
            )
            .and_then(|mut s| s.query_row((store, key), |r| r.get(0)).optional())
            .map_err(db_error)?;
        tx.commit().map_err(db_error)?;
        if let (Some(old), Some(u)) = (old, self.usage.get_mut(store)) {
            u.keys = u.keys.saturating_sub(1);
            u.bytes = u.bytes.saturating_sub(old as u64);
        }
        Ok(())
    }

    fn keys(&self, store: &str) -> KvResult<Vec<String>> {
        let mut s = self
            .conn
            .prepare_cached("SELECT key FROM kv WHERE store = ?1 ORDER BY key LIMIT ?2")
            .map_err(db_error)?;
        let keys = s
            .query_map((store, MAX_LISTED_KEYS as i64 + 1), |r| r.get(0))
            .and_then(|rows| rows.collect::<Result<Vec<String>, _>>())
            .map_err(db_error)?;
        too_many(keys)
    }

    fn increment(
        &mut self,
        store: &str,
        key: &str,
        delta: i64,
        limits: &KvLimits,
    ) -> KvResult<i64> {
        let current = self.get(store, key)?;
        let n = parse_number(current.as_deref())?;
        let n = n
            .checked_add(delta)
            .ok_or_else(|| KvError(format!("incrementing `{key}` by {delta} overflows")))?;
        // One connection, used by one thread at a time: nothing writes between the read and
        // the write.
        self.set(store, key, n.to_string().as_bytes(), limits)?;
        Ok(n)
    }

    fn swap(
        &mut self,
        store: &str,
        key: &str,
        expected: Option<&[u8]>,
        value: &[u8],
        limits: &KvLimits,
    ) -> KvResult<Swap> {
        let current = self.get(store, key)?;
        if current.as_deref() != expected {
            return Ok(Swap::Changed(current));
        }
        self.set(store, key, value, limits)?;
        Ok(Swap::Done)
    }
}

fn too_many(keys: Vec<String>) -> KvResult<Vec<String>> {
    if keys.len() > MAX_LISTED_KEYS {
        return Err(KvError(format!(
            "the store holds more than {MAX_LISTED_KEYS} keys, more than one call lists"
        )));
    }
    Ok(keys)
}

/// The number a key holds for `increment`: decimal text, or nothing (0).
fn parse_number(value: Option<&[u8]>) -> KvResult<i64> {
    match value {
        None => Ok(0),
        Some(v) => std::str::from_utf8(v)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| KvError("the key's value is not a number".to_string())),
    }
}

/// A store on a Redis server: one multiplexed connection, made at first use and remade when
/// it breaks.
struct RedisStore {
    label: String,
    client: redis::Client,
    conn: tokio::sync::OnceCell<redis::aio::ConnectionManager>,
}

/// Sets KEYS[1] to ARGV[2] if it holds ARGV[1] (ARGV[3] = "1": if it does not exist); returns
/// nil when swapped, else a one-element array of the current value (or empty if none).
const SWAP_SCRIPT: &str = r"
local cur = redis.call('GET', KEYS[1])
local matches
if ARGV[3] == '1' then matches = (cur == false) else matches = (cur == ARGV[1]) end
if matches then redis.call('SET', KEYS[1], ARGV[2]) return false end
if cur == false then return {} end
return {cur}
";

impl RedisStore {
    fn new(label: &str, url: &str) -> anyhow::Result<Self> {
        let client = redis::Client::open(url).map_err(|e| {
            anyhow::anyhow!("key-value store `{label}`: the Redis URL is not usable: {e}")
        })?;
        Ok(Self {
            label: label.to_string(),
            client,
            conn: tokio::sync::OnceCell::new(),
        })
    }

    async fn connection(&self) -> KvResult<redis::aio::ConnectionManager> {
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(REDIS_TIMEOUT))
            .set_response_timeout(Some(REDIS_TIMEOUT))
            .set_number_of_retries(2);
        self.conn
            .get_or_try_init(|| self.client.get_connection_manager_with_config(config))
            .await
            .cloned()
            .map_err(|e| {
                tracing::warn!("key-value store `{}`: cannot reach Redis: {e}", self.label);
                KvError(format!("the store `{}` is unavailable", self.label))
            })
    }

    async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> KvResult<T> {
        let mut conn = self.connection().await?;
        cmd.query_async(&mut conn).await.map_err(|e| {
            tracing::warn!("key-value store `{}`: Redis: {e}", self.label);
            KvError(format!("the store `{}` failed: {e}", self.label))
        })
    }

    async fn keys(&self) -> KvResult<Vec<String>> {
        let mut conn = self.connection().await?;
        let mut keys = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await
                .map_err(|e| KvError(format!("the store `{}` failed: {e}", self.label)))?;
            keys.extend(batch);
            if keys.len() > MAX_LISTED_KEYS {
                return too_many(keys);
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        keys.sort();
        keys.dedup();
        Ok(keys)
    }

    async fn swap(&self, key: String, expected: Option<Vec<u8>>, value: Vec<u8>) -> KvResult<Swap> {
        let absent = if expected.is_none() { "1" } else { "0" };
        let reply: Option<Vec<Vec<u8>>> = self
            .query(
                redis::cmd("EVAL")
                    .arg(SWAP_SCRIPT)
                    .arg(1)
                    .arg(key)
                    .arg(expected.unwrap_or_default())
                    .arg(value)
                    .arg(absent),
            )
            .await?;
        Ok(match reply {
            None => Swap::Done,
            Some(mut v) => Swap::Changed(v.pop()),
        })
    }
}

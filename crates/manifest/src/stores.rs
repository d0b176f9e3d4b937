//! Key-value stores and SQLite databases: the labels components declare (`key_value_stores`,
//! `sqlite_databases`) and what each label is (`[key_value_store.NAME]` and
//! `[sqlite_database.NAME]` tables of the runtime config file, as Spin reads them).
//!
//! As in Spin, the label `default` needs no definition: it is a store (or database) embedded on
//! disk in the app's state directory. Any other label a component declares must be defined in
//! the runtime config file; if it is not, `wms up` refuses to start and names the component and
//! the label.

use std::path::{Path, PathBuf};

use indexmap::IndexMap;

use crate::{App, ManifestError};

/// Spin's documented key limit: keys as large as 256 bytes.
pub const DEFAULT_MAX_KEY_SIZE: usize = 256;
/// Spin's documented value limit: values as large as 1 megabyte.
pub const DEFAULT_MAX_VALUE_SIZE: u64 = 1 << 20;
/// Spin's documented capacity: 1024 key-value tuples (embedded stores).
pub const DEFAULT_MAX_KEYS: u64 = 1024;
/// What keys and values of an embedded store may hold together.
pub const DEFAULT_MAX_TOTAL_SIZE: u64 = 256 << 20;

/// What one key-value store may hold; writes past a limit fail with an error the guest sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvLimits {
    pub max_key_size: usize,
    pub max_value_size: u64,
    /// Keys in the store (embedded stores only).
    pub max_keys: u64,
    /// Bytes of keys and values in the store together (embedded stores only).
    pub max_total_size: u64,
}

impl Default for KvLimits {
    fn default() -> Self {
        Self {
            max_key_size: DEFAULT_MAX_KEY_SIZE,
            max_value_size: DEFAULT_MAX_VALUE_SIZE,
            max_keys: DEFAULT_MAX_KEYS,
            max_total_size: DEFAULT_MAX_TOTAL_SIZE,
        }
    }
}

/// Where a key-value store keeps its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvBackend {
    /// SQLite on disk: `path`, or the state directory's `key_value.db` (`type = "spin"`).
    Embedded { path: Option<PathBuf> },
    /// A Redis server (`type = "redis"`, `url = "redis://..."`).
    Redis { url: String },
}

/// A key-value store definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvStore {
    pub backend: KvBackend,
    pub limits: KvLimits,
}

impl Default for KvStore {
    fn default() -> Self {
        Self {
            backend: KvBackend::Embedded { path: None },
            limits: KvLimits::default(),
        }
    }
}

impl std::fmt::Display for KvStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.backend {
            KvBackend::Embedded { path: Some(p) } => write!(f, "embedded ({})", p.display()),
            KvBackend::Embedded { path: None } => write!(f, "embedded"),
            // The URL may carry a password: only its host is shown.
            KvBackend::Redis { url } => write!(f, "redis ({})", redis_host(url)),
        }
    }
}

/// `host:port` of a Redis URL, without credentials.
fn redis_host(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    rest.split('/').next().unwrap_or(rest)
}

/// A SQLite database definition: a file, `path` or the state directory's `sqlite/LABEL.db`,
/// and the most bytes it may hold (`None`: the runtime's default).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SqliteDatabase {
    pub path: Option<PathBuf>,
    pub max_size: Option<u64>,
}

/// Every store and database the runtime config file defines.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreConfig {
    pub key_value: IndexMap<String, KvStore>,
    pub sqlite: IndexMap<String, SqliteDatabase>,
}

/// The stores and databases an app's components use, each label resolved, and where the
/// embedded ones live.
#[derive(Debug, Clone, Default)]
pub struct AppStores {
    /// The app's state directory: embedded stores and databases without a `path` live here.
    pub state_dir: Option<PathBuf>,
    pub key_value: IndexMap<String, KvStore>,
    pub sqlite: IndexMap<String, SqliteDatabase>,
}

impl AppStores {
    /// The file of the embedded key-value stores without their own `path`.
    pub fn key_value_file(&self) -> Option<PathBuf> {
        self.state_dir.as_ref().map(|d| d.join("key_value.db"))
    }

    /// The file of SQLite database `label`.
    pub fn sqlite_file(&self, label: &str) -> Option<PathBuf> {
        match self.sqlite.get(label).and_then(|d| d.path.clone()) {
            Some(p) => Some(p),
            None => self
                .state_dir
                .as_ref()
                .map(|d| d.join("sqlite").join(format!("{label}.db"))),
        }
    }

    /// Whether anything needs the state directory.
    fn needs_state_dir(&self) -> bool {
        self.key_value
            .values()
            .any(|s| s.backend == KvBackend::Embedded { path: None })
            || self.sqlite.values().any(|d| d.path.is_none())
    }
}

/// Resolves every label the app's components declare against the runtime config's definitions
/// (`default` needs none). `state_dir`: where embedded data lives (`None`: nowhere, an error if
/// an embedded store or database needs it). `config_file` names the runtime config in errors.
pub fn resolve(
    app: &App,
    config: &StoreConfig,
    config_file: Option<&Path>,
    state_dir: Option<PathBuf>,
) -> Result<AppStores, ManifestError> {
    let mut stores = AppStores {
        state_dir,
        ..AppStores::default()
    };
    let undefined = |id: &str, what: &str, table: &str, label: &str| {
        ManifestError::new(
            &app.manifest_path,
            format!("component `{id}`: {what} `{label}` is not defined"),
        )
        .help(match config_file {
            Some(f) => format!(
                "define it as [{table}.{label}] in the runtime config file {}, or use \"default\"",
                f.display()
            ),
            None => format!(
                "define it as [{table}.{label}] in a runtime config file (--runtime-config-file), or use \"default\""
            ),
        })
    };
    for (id, c) in &app.components {
        for label in &c.key_value_stores {
            let store = match config.key_value.get(label) {
                Some(s) => s.clone(),
                None if label == "default" => KvStore::default(),
                None => return Err(undefined(id, "key-value store", "key_value_store", label)),
            };
            stores.key_value.insert(label.clone(), store);
        }
        for label in &c.sqlite_databases {
            let db = match config.sqlite.get(label) {
                Some(d) => d.clone(),
                None if label == "default" => SqliteDatabase::default(),
                None => return Err(undefined(id, "SQLite database", "sqlite_database", label)),
            };
            stores.sqlite.insert(label.clone(), db);
        }
    }
    if stores.state_dir.is_none() && stores.needs_state_dir() {
        return Err(ManifestError::new(
            &app.manifest_path,
            "the app uses an embedded key-value store or SQLite database, and has no state directory",
        )
        .help("give one with --state-dir DIR (an app from an image has no directory of its own)"));
    }
    Ok(stores)
}

/// A store or database label as Spin allows it: lowercase letters, digits, `-` and `_` (and it
/// names a file in the state directory).
pub(crate) fn check_label(label: &str) -> Result<(), String> {
    if label.is_empty() || label.len() > 64 {
        return Err(format!("label `{label}` must be 1 to 64 characters"));
    }
    if !label
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
    {
        return Err(format!(
            "label `{label}` may hold lowercase letters, digits, `-` and `_` only"
        ));
    }
    Ok(())
}

/// One `[key_value_store.NAME]` table of the runtime config; the error is a message and a help
/// line.
pub(crate) fn key_value_store(t: &toml::Table, dir: &Path) -> Result<KvStore, (String, String)> {
    let kind = kind(t, "`type = \"spin\"` or `type = \"redis\"`")?;
    let limits_keys = ["max_value_size", "max_keys", "max_total_size"];
    let allowed: Vec<&str> = match kind {
        "spin" => ["type", "path"].into_iter().chain(limits_keys).collect(),
        "redis" => ["type", "url", "max_value_size"].into(),
        "azure_cosmos" | "aws_dynamo" => {
            return Err((
                format!("the `{kind}` key-value store is not supported by wms"),
                "use `type = \"spin\"` (embedded) or `type = \"redis\"`".into(),
            ));
        }
        other => {
            return Err((
                format!("unknown key-value store type `{other}`"),
                "wms's key-value stores are `type = \"spin\"` (embedded) and `type = \"redis\"`"
                    .into(),
            ));
        }
    };
    check_keys(t, kind, &allowed)?;
    let mut limits = KvLimits::default();
    if let Some(v) = size(t, "max_value_size")? {
        limits.max_value_size = v;
    }
    if let Some(v) = count(t, "max_keys")? {
        limits.max_keys = v;
    }
    if let Some(v) = size(t, "max_total_size")? {
        limits.max_total_size = v;
    }
    let backend = match kind {
        "spin" => KvBackend::Embedded {
            path: string(t, "path")?.map(|p| dir.join(p)),
        },
        _ => {
            let url = string(t, "url")?.ok_or_else(|| {
                (
                    "a `redis` store has no `url`".to_string(),
                    "add `url = \"redis://HOST:PORT\"`".to_string(),
                )
            })?;
            if !(url.starts_with("redis://") || url.starts_with("redis+unix://")) {
                return Err((
                    format!("`url` `{}` is not a redis:// URL", redis_host(&url)),
                    "write `url = \"redis://HOST:PORT\"` (TLS, rediss://, is not supported)".into(),
                ));
            }
            KvBackend::Redis { url }
        }
    };
    Ok(KvStore { backend, limits })
}

/// One `[sqlite_database.NAME]` table of the runtime config.
pub(crate) fn sqlite_database(
    t: &toml::Table,
    dir: &Path,
) -> Result<SqliteDatabase, (String, String)> {
    match kind(t, "`type = \"spin\"`")? {
        "spin" => {}
        "libsql" => {
            return Err((
                "the `libsql` database is not supported by wms".into(),
                "use `type = \"spin\"` (a SQLite file)".into(),
            ));
        }
        other => {
            return Err((
                format!("unknown SQLite database type `{other}`"),
                "wms's databases are `type = \"spin\"` (a SQLite file)".into(),
            ));
        }
    }
    check_keys(t, "spin", &["type", "path", "max_size"])?;
    Ok(SqliteDatabase {
        path: string(t, "path")?.map(|p| dir.join(p)),
        max_size: size(t, "max_size")?,
    })
}

fn kind<'a>(t: &'a toml::Table, help: &str) -> Result<&'a str, (String, String)> {
    match t.get("type") {
        Some(toml::Value::String(s)) => Ok(s),
        Some(_) => Err(("`type` must be a string".into(), format!("write {help}"))),
        None => Err(("has no `type`".into(), format!("add {help}"))),
    }
}

fn check_keys(t: &toml::Table, kind: &str, allowed: &[&str]) -> Result<(), (String, String)> {
    match t.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err((
            format!("unknown key `{k}` in a `{kind}` table"),
            format!("a `{kind}` table has the keys {}", allowed.join(", ")),
        )),
        None => Ok(()),
    }
}

fn string(t: &toml::Table, key: &str) -> Result<Option<String>, (String, String)> {
    match t.get(key) {
        None => Ok(None),
        Some(toml::Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err((
            format!("`{key}` must be a string"),
            format!("write `{key} = \"...\"`"),
        )),
    }
}

fn count(t: &toml::Table, key: &str) -> Result<Option<u64>, (String, String)> {
    match t.get(key) {
        None => Ok(None),
        Some(toml::Value::Integer(n)) if *n >= 0 => Ok(Some(*n as u64)),
        Some(_) => Err((
            format!("`{key}` must be a whole number"),
            format!("write e.g. `{key} = 10000`"),
        )),
    }
}

/// A size: bytes as a number, or a string such as "1MiB".
fn size(t: &toml::Table, key: &str) -> Result<Option<u64>, (String, String)> {
    let help = || format!("write e.g. `{key} = \"1MiB\"` or a number of bytes");
    match t.get(key) {
        None => Ok(None),
        Some(toml::Value::Integer(n)) if *n >= 0 => Ok(Some(*n as u64)),
        Some(toml::Value::String(s)) => s
            .parse::<bytesize::ByteSize>()
            .map(|b| Some(b.as_u64()))
            .map_err(|e| (format!("`{key}` `{s}` is not a size: {e}"), help())),
        Some(_) => Err((format!("`{key}` must be a size"), help())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> toml::Table {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn store_tables_parse_with_their_limits() {
        let s = key_value_store(
            &table("type = \"spin\"\npath = \"kv.db\"\nmax_value_size = \"2KiB\"\nmax_keys = 5\n"),
            Path::new("/etc/app"),
        )
        .unwrap();
        assert_eq!(
            s.backend,
            KvBackend::Embedded {
                path: Some("/etc/app/kv.db".into())
            }
        );
        assert_eq!(s.limits.max_value_size, 2048);
        assert_eq!(s.limits.max_keys, 5);
        let s = key_value_store(
            &table("type = \"redis\"\nurl = \"redis://:pw@127.0.0.1:6379/0\"\n"),
            Path::new("/"),
        )
        .unwrap();
        assert_eq!(s.to_string(), "redis (127.0.0.1:6379)");
        let e = key_value_store(&table("type = \"redis\"\n"), Path::new("/")).unwrap_err();
        assert!(e.0.contains("no `url`"), "{e:?}");
        let e = key_value_store(
            &table("type = \"redis\"\nurl = \"redis://h\"\nmax_keys = 3\n"),
            Path::new("/"),
        )
        .unwrap_err();
        assert!(e.0.contains("unknown key `max_keys`"), "{e:?}");
        let e = key_value_store(&table("type = \"aws_dynamo\"\n"), Path::new("/")).unwrap_err();
        assert!(e.0.contains("not supported"), "{e:?}");
        let e = sqlite_database(&table("type = \"libsql\"\n"), Path::new("/")).unwrap_err();
        assert!(e.0.contains("not supported"), "{e:?}");
    }

    #[test]
    fn labels_are_file_names() {
        assert!(check_label("default").is_ok());
        assert!(check_label("my-store_2").is_ok());
        assert!(check_label("../x").is_err());
        assert!(check_label("").is_err());
        assert!(check_label("Upper").is_err());
    }
}

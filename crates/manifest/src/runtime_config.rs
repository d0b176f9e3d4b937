//! The runtime config file (`wms up --runtime-config-file PATH`, Spin's flag and format): the
//! operator's settings that are not part of the app. wms reads its variable providers,
//! `[[config_provider]]` (or `[[variables_provider]]`) tables, in order:
//!
//! ```toml
//! [[config_provider]]
//! type = "static"                 # values written here
//! values = { api_uri = "https://api.example.com" }
//!
//! [[config_provider]]
//! type = "env"                    # environment variables PREFIX_NAME
//! prefix = "MYAPP"                # default SPIN_VARIABLE
//! dotenv_path = "vars.env"        # optional; relative to this file
//! ```
//!
//! and its stores and databases (see [`crate::stores`]):
//!
//! ```toml
//! [key_value_store.default]
//! type = "spin"                   # embedded (SQLite); `path` optional
//! max_keys = 10000                # wms's limits, see docs/manifest.md
//!
//! [key_value_store.shared]
//! type = "redis"
//! url = "redis://127.0.0.1:6379"
//!
//! [sqlite_database.default]
//! type = "spin"
//! path = "data/app.db"            # relative to this file
//! ```
//!
//! and, as Spin does, TLS settings of outbound HTTPS per component and host:
//!
//! ```toml
//! [[client_tls]]
//! component_ids = ["api"]
//! hosts = ["internal.example.com", "10.0.0.5:8443"]  # port 443 unless given
//! ca_use_webpki_roots = false     # default true: the public roots too
//! ca_roots_file = "certs/ca.pem"  # CA certificates to trust; relative to this file
//! cert_chain_file = "certs/client.pem"   # a client certificate, with
//! private_key_file = "certs/client.key"  # its key
//! ```
//!
//! Spin's other tables are refused with an error.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use indexmap::IndexMap;
use toml::Spanned;

use crate::ManifestError;
use crate::error::Locator;
use crate::variables::{DotEnv, Provider};

/// A parsed runtime config file.
#[derive(Clone)]
pub struct RuntimeConfig {
    pub path: PathBuf,
    pub(crate) providers: Vec<Provider>,
    /// The `[key_value_store.NAME]` and `[sqlite_database.NAME]` tables.
    pub stores: crate::stores::StoreConfig,
    /// The `[[client_tls]]` tables.
    pub client_tls: Vec<ClientTls>,
}

/// One `[[client_tls]]` table: how the components it names connect to its hosts over TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTls {
    pub component_ids: Vec<String>,
    /// Host names (lowercase) or IP addresses, with their port.
    pub hosts: Vec<(String, u16)>,
    /// Whether the public (webpki) roots are trusted too.
    pub ca_use_webpki_roots: bool,
    /// Absolute paths (relative ones are resolved against the runtime config file).
    pub ca_roots_file: Option<PathBuf>,
    pub cert_chain_file: Option<PathBuf>,
    pub private_key_file: Option<PathBuf>,
}

impl ClientTls {
    /// Whether this table applies to `component` connecting to `host:port`.
    pub fn applies(&self, component: &str, host: &str, port: u16) -> bool {
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .trim_end_matches('.')
            .to_ascii_lowercase();
        self.component_ids.iter().any(|c| c == component)
            && self.hosts.iter().any(|(h, p)| *h == host && *p == port)
    }
}

/// Reads one `[[client_tls]]` table; the error is a message and a help line.
fn client_tls_table(value: toml::Value, dir: &Path) -> Result<ClientTls, (String, String)> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Raw {
        component_ids: Vec<String>,
        hosts: Vec<String>,
        ca_use_webpki_roots: Option<bool>,
        ca_roots_file: Option<PathBuf>,
        cert_chain_file: Option<PathBuf>,
        private_key_file: Option<PathBuf>,
    }
    let help = "write `component_ids = [\"NAME\"]`, `hosts = [\"HOST[:PORT]\"]` and any of `ca_use_webpki_roots`, `ca_roots_file`, `cert_chain_file` with `private_key_file`";
    let raw: Raw = value
        .try_into()
        .map_err(|e: toml::de::Error| (e.message().trim().to_string(), help.to_string()))?;
    if raw.component_ids.is_empty() || raw.hosts.is_empty() {
        return Err((
            "`component_ids` and `hosts` must each name at least one".into(),
            help.into(),
        ));
    }
    let mut hosts = Vec::new();
    for h in &raw.hosts {
        let bad = || {
            (
                format!("`{h}` in `hosts` is not a host or host:port"),
                "write `example.com`, `example.com:8443`, `10.0.0.5` or `[::1]:8443` (no scheme, no path)".to_string(),
            )
        };
        let (host, port) = match h.strip_prefix('[') {
            Some(rest) => {
                let (addr, after) = rest.split_once(']').ok_or_else(bad)?;
                match after {
                    "" => (addr, None),
                    _ => (addr, Some(after.strip_prefix(':').ok_or_else(bad)?)),
                }
            }
            None => match h.split_once(':') {
                Some((_, p)) if p.contains(':') => (h.as_str(), None),
                Some((host, p)) => (host, Some(p)),
                None => (h.as_str(), None),
            },
        };
        if host.is_empty() || host.contains(['/', '@', '*']) {
            return Err(bad());
        }
        let port = match port {
            Some(p) => p.parse::<u16>().map_err(|_| bad())?,
            None => 443,
        };
        hosts.push((host.trim_end_matches('.').to_ascii_lowercase(), port));
    }
    if raw.cert_chain_file.is_some() != raw.private_key_file.is_some() {
        return Err((
            "`cert_chain_file` and `private_key_file` go together".into(),
            "give both (a client certificate and its key), or neither".into(),
        ));
    }
    let file = |p: Option<PathBuf>| p.map(|p| dir.join(p));
    Ok(ClientTls {
        component_ids: raw.component_ids,
        hosts,
        ca_use_webpki_roots: raw.ca_use_webpki_roots.unwrap_or(true),
        ca_roots_file: file(raw.ca_roots_file),
        cert_chain_file: file(raw.cert_chain_file),
        private_key_file: file(raw.private_key_file),
    })
}

impl std::fmt::Debug for RuntimeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "RuntimeConfig({}, {} variable providers)",
            self.path.display(),
            self.providers.len()
        )
    }
}

/// The help line of every runtime config error.
const HELP: &str = "see docs/manifest.md (Variables) for what wms reads in a runtime config file";

/// Reads a runtime config file.
pub fn load(path: &Path) -> Result<RuntimeConfig, ManifestError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ManifestError::new(path, format!("cannot read the runtime config file: {e}"))
            .help("check the path given to --runtime-config-file")
    })?;
    parse(path, &text)
}

/// Parses runtime config text; `path` names it in errors and anchors relative paths.
pub fn parse(path: &Path, text: &str) -> Result<RuntimeConfig, ManifestError> {
    let locator = Locator::new(text);
    let at = |span: std::ops::Range<usize>, message: String| {
        let mut e = ManifestError::new(path, message);
        e.position = Some(locator.position(span.start));
        e
    };
    let top: IndexMap<Spanned<String>, Spanned<toml::Value>> =
        toml::from_str(text).map_err(|e| {
            let mut err = ManifestError::new(path, e.message().trim().to_string());
            if let Some(span) = e.span() {
                err.position = Some(locator.position(span.start));
            }
            err.help("fix the TOML syntax at this position")
        })?;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut providers = Vec::new();
    let mut stores = crate::stores::StoreConfig::default();
    let mut client_tls = Vec::new();
    for (key, value) in &top {
        match key.get_ref().as_str() {
            "config_provider" | "variables_provider" => {
                let entries: Vec<toml::Table> =
                    value.get_ref().clone().try_into().map_err(|_| {
                        at(
                            value.span(),
                            format!("`{}` must be a list of tables", key.get_ref()),
                        )
                        .help(format!(
                            "write each provider as a [[{}]] table with a `type`",
                            key.get_ref()
                        ))
                    })?;
                // The entries' own spans are lost in the conversion above: read them again with
                // spans so that each error points at its entry.
                let spans = entry_spans(text, key.get_ref()).unwrap_or_default();
                for (i, entry) in entries.iter().enumerate() {
                    let span = spans.get(i).cloned().unwrap_or(key.span());
                    providers.push(provider(entry, dir).map_err(|(msg, help)| {
                        at(
                            span.clone(),
                            format!("[[{}]] #{}: {msg}", key.get_ref(), i + 1),
                        )
                        .help(help)
                    })?);
                }
            }
            table @ ("key_value_store" | "sqlite_database") => {
                let toml::Value::Table(entries) = value.get_ref() else {
                    return Err(at(value.span(), format!("`{table}` must be a table")).help(
                        format!("write each one as a [{table}.NAME] table with a `type`"),
                    ));
                };
                for (name, entry) in entries {
                    let fail = |(msg, help): (String, String)| {
                        at(key.span(), format!("[{table}.{name}]: {msg}")).help(help)
                    };
                    crate::stores::check_label(name)
                        .map_err(|e| fail((e, "rename the table".to_string())))?;
                    let toml::Value::Table(entry) = entry else {
                        return Err(fail((
                            "must be a table".into(),
                            format!("write [{table}.{name}] with a `type`"),
                        )));
                    };
                    if table == "key_value_store" {
                        let store = crate::stores::key_value_store(entry, dir).map_err(fail)?;
                        stores.key_value.insert(name.clone(), store);
                    } else {
                        let db = crate::stores::sqlite_database(entry, dir).map_err(fail)?;
                        stores.sqlite.insert(name.clone(), db);
                    }
                }
            }
            "client_tls" => {
                let toml::Value::Array(entries) = value.get_ref() else {
                    return Err(
                        at(value.span(), "`client_tls` must be a list of tables".into())
                            .help("write each one as a [[client_tls]] table"),
                    );
                };
                for (i, entry) in entries.iter().enumerate() {
                    client_tls.push(client_tls_table(entry.clone(), dir).map_err(
                        |(msg, help)| {
                            at(key.span(), format!("[[client_tls]] #{}: {msg}", i + 1)).help(help)
                        },
                    )?);
                }
            }
            other => {
                return Err(
                    at(key.span(), format!("`{other}` is not supported by wms")).help(format!(
                        "remove it; wms reads [[config_provider]] (variable providers), [key_value_store.NAME], [sqlite_database.NAME] and [[client_tls]] only. {HELP}"
                    )),
                );
            }
        }
    }
    Ok(RuntimeConfig {
        path: path.to_path_buf(),
        providers,
        stores,
        client_tls,
    })
}

/// The spans of the `[[key]]` tables of `text`, in order.
fn entry_spans(text: &str, key: &str) -> Option<Vec<std::ops::Range<usize>>> {
    #[derive(serde::Deserialize)]
    struct Entries {
        #[serde(default)]
        config_provider: Vec<Spanned<toml::Table>>,
        #[serde(default)]
        variables_provider: Vec<Spanned<toml::Table>>,
    }
    let e: Entries = toml::from_str(text).ok()?;
    let list = match key {
        "config_provider" => e.config_provider,
        _ => e.variables_provider,
    };
    Some(list.iter().map(Spanned::span).collect())
}

/// One provider table; the error is a message and a help line.
fn provider(t: &toml::Table, dir: &Path) -> Result<Provider, (String, String)> {
    let kind = match t.get("type") {
        Some(toml::Value::String(s)) => s.as_str(),
        Some(_) => {
            return Err((
                "`type` must be a string".into(),
                "write `type = \"env\"` or `type = \"static\"`".into(),
            ));
        }
        None => {
            return Err((
                "has no `type`".into(),
                "add `type = \"env\"` or `type = \"static\"`".into(),
            ));
        }
    };
    let allowed: &[&str] = match kind {
        "env" => &["type", "prefix", "dotenv_path"],
        "static" => &["type", "values"],
        "vault" | "azure_key_vault" => {
            return Err((
                format!("the `{kind}` variable provider is not supported by wms"),
                "give the values through the environment (SPIN_VARIABLE_NAME or WMS_VARIABLE_NAME), an `env` provider or a `static` provider".into(),
            ));
        }
        other => {
            return Err((
                format!("unknown variable provider type `{other}`"),
                "wms's providers are `type = \"env\"` and `type = \"static\"`".into(),
            ));
        }
    };
    if let Some(k) = t.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err((
            format!("unknown key `{k}` in a `{kind}` provider"),
            format!("a `{kind}` provider has the keys {}", allowed.join(", ")),
        ));
    }
    let string = |key: &str| -> Result<Option<String>, (String, String)> {
        match t.get(key) {
            None => Ok(None),
            Some(toml::Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err((format!("`{key}` must be a string"), HELP.to_string())),
        }
    };
    match kind {
        "env" => {
            let prefix = string("prefix")?.unwrap_or_else(|| "SPIN_VARIABLE".to_string());
            let dotenv = match string("dotenv_path")? {
                None => None,
                Some(p) => {
                    let path = dir.join(&p);
                    Some(read_dotenv(&path).map_err(|e| {
                        (
                            format!("dotenv_path `{p}`: {}", e.message),
                            e.help.unwrap_or_default(),
                        )
                    })?)
                }
            };
            Ok(Provider::Env {
                prefixes: vec![prefix],
                dotenv,
            })
        }
        _ => {
            let mut values = IndexMap::new();
            match t.get("values") {
                None => {}
                Some(toml::Value::Table(v)) => {
                    for (name, value) in v {
                        crate::variables::check_name(name)
                            .map_err(|e| (format!("values: {e}"), "name variables as in [variables]: lowercase letters, digits and `_`".to_string()))?;
                        let toml::Value::String(s) = value else {
                            return Err((
                                format!("values: `{name}` must be a string"),
                                format!("write `{name} = \"...\"`; variable values are strings"),
                            ));
                        };
                        values.insert(name.clone(), s.clone());
                    }
                }
                Some(_) => {
                    return Err((
                        "`values` must be a table".into(),
                        "write `values = { name = \"value\" }`".into(),
                    ));
                }
            }
            Ok(Provider::Static {
                values,
                origin: "a static provider of the runtime config file".to_string(),
            })
        }
    }
}

/// Reads a dotenv file: `NAME=VALUE` lines (optionally after `export `), values bare (up to a
/// ` #` comment), in double quotes (with `\n`, `\"`, `\\` escapes) or in single quotes (taken as
/// they are); blank lines and `#` comments are skipped. An error names the file and line.
pub(crate) fn read_dotenv(path: &Path) -> Result<DotEnv, ManifestError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ManifestError::new(path, format!("cannot read the dotenv file: {e}"))
            .help("fix the path, or remove the file")
    })?;
    let mut values = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let err = |msg: &str| {
            let mut e = ManifestError::new(path, msg.to_string());
            e.position = Some((i + 1, 1));
            e.help("write `NAME=VALUE`, `NAME=\"VALUE\"` or `NAME='VALUE'`, one a line")
        };
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((name, value)) = line.split_once('=') else {
            return Err(err("a line without `=`"));
        };
        let name = name.trim();
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
        {
            return Err(err("not a variable name before `=`"));
        }
        let value = value.trim_start();
        let value = if let Some(rest) = value.strip_prefix('"') {
            let mut out = String::new();
            let mut chars = rest.chars();
            let mut closed = false;
            while let Some(c) = chars.next() {
                match c {
                    '"' => {
                        closed = true;
                        break;
                    }
                    '\\' => match chars.next() {
                        Some('n') => out.push('\n'),
                        Some(c) => out.push(c),
                        None => break,
                    },
                    c => out.push(c),
                }
            }
            if !closed {
                return Err(err("a double-quoted value without its closing quote"));
            }
            out
        } else if let Some(rest) = value.strip_prefix('\'') {
            match rest.split_once('\'') {
                Some((v, _)) => v.to_string(),
                None => return Err(err("a single-quoted value without its closing quote")),
            }
        } else {
            let v = value.split(" #").next().unwrap_or_default();
            v.trim_end().to_string()
        };
        values.insert(name.to_string(), value);
    }
    Ok(DotEnv {
        path: path.to_path_buf(),
        values,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::variables::Providers;

    fn providers(text: &str) -> Result<Providers, ManifestError> {
        let config = parse(Path::new("/x/runtime-config.toml"), text)?;
        Providers::new(Some(&config), Vec::new(), None)
    }

    #[test]
    fn providers_come_in_file_order_before_the_environment() {
        let p = providers(
            "[[config_provider]]\ntype = \"static\"\nvalues = { a = \"one\" }\n[[variables_provider]]\ntype = \"static\"\nvalues = { a = \"two\", b = \"three\" }\n",
        )
        .unwrap();
        assert_eq!(p.lookup("a").unwrap().unwrap().0, "one");
        assert_eq!(p.lookup("b").unwrap().unwrap().0, "three");
    }

    #[test]
    fn client_tls_tables_are_read_as_spin_writes_them() {
        let path = Path::new("/x/runtime-config.toml");
        let c = parse(
            path,
            "[[client_tls]]\ncomponent_ids = [\"api\"]\nhosts = [\"Internal.Example.com\", \"10.0.0.5:8443\", \"[::1]:9443\"]\nca_use_webpki_roots = false\nca_roots_file = \"certs/ca.pem\"\ncert_chain_file = \"/etc/c.pem\"\nprivate_key_file = \"k.pem\"\n[[client_tls]]\ncomponent_ids = [\"web\"]\nhosts = [\"example.com\"]\n",
        )
        .unwrap();
        assert_eq!(c.client_tls.len(), 2);
        let t = &c.client_tls[0];
        assert_eq!(
            t.hosts,
            vec![
                ("internal.example.com".to_string(), 443),
                ("10.0.0.5".to_string(), 8443),
                ("::1".to_string(), 9443)
            ]
        );
        assert!(!t.ca_use_webpki_roots);
        assert_eq!(
            t.ca_roots_file.as_deref(),
            Some(Path::new("/x/certs/ca.pem"))
        );
        assert_eq!(t.cert_chain_file.as_deref(), Some(Path::new("/etc/c.pem")));
        assert_eq!(t.private_key_file.as_deref(), Some(Path::new("/x/k.pem")));
        assert!(t.applies("api", "INTERNAL.example.com", 443));
        assert!(t.applies("api", "[::1]", 9443));
        assert!(!t.applies("api", "internal.example.com", 8443));
        assert!(!t.applies("web", "internal.example.com", 443));
        assert!(c.client_tls[1].ca_use_webpki_roots);
        for (bad, says) in [
            (
                "component_ids = [\"a\"]\nhosts = [\"https://x\"]",
                "is not a host or host:port",
            ),
            (
                "component_ids = [\"a\"]\nhosts = [\"x:99999\"]",
                "is not a host or host:port",
            ),
            (
                "component_ids = []\nhosts = [\"x\"]",
                "must each name at least one",
            ),
            (
                "component_ids = [\"a\"]\nhosts = [\"x\"]\ncert_chain_file = \"c\"",
                "go together",
            ),
            (
                "component_ids = [\"a\"]\nhosts = [\"x\"]\nca_file = \"c\"",
                "unknown field `ca_file`",
            ),
        ] {
            let e = parse(path, &format!("[[client_tls]]\n{bad}\n"))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("[[client_tls]] #1: ") && e.contains(says),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn bad_files_say_where_and_what() {
        let e = providers("[[config_provider]]\ntype = \"vault\"\nurl = \"x\"\n").unwrap_err();
        assert_eq!(e.position, Some((1, 1)));
        assert!(
            e.message
                .contains("`vault` variable provider is not supported"),
            "{e}"
        );
        let e = providers("[[config_provider]]\ntype = \"static\"\n\n[[config_provider]]\ntype = \"env\"\nprefixx = \"A\"\n").unwrap_err();
        assert_eq!(e.position, Some((4, 1)));
        assert!(e.message.contains("#2: unknown key `prefixx`"), "{e}");
        let e = providers("[key_value_store.default]\ntype = \"dynamo\"\n").unwrap_err();
        assert!(
            e.message
                .contains("[key_value_store.default]: unknown key-value store type `dynamo`"),
            "{e}"
        );
        let e = providers("[sqlite_database.\"A b\"]\ntype = \"spin\"\n").unwrap_err();
        assert!(e.message.contains("may hold lowercase"), "{e}");
        let e =
            providers("[[config_provider]]\ntype = \"static\"\nvalues = { a = 1 }\n").unwrap_err();
        assert!(e.message.contains("`a` must be a string"), "{e}");
        let e = providers("[[config_provider]]\ntype = \"env\"\ndotenv_path = \"missing.env\"\n")
            .unwrap_err();
        assert!(e.message.contains("dotenv_path `missing.env`"), "{e}");
    }

    #[test]
    fn env_provider_reads_its_prefix_and_dotenv_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("vars.env"),
            "export APP_A='single # not a comment'\nAPP_B=bare # comment\nAPP_C=\"a\\\"b\"\n",
        )
        .unwrap();
        let file = dir.path().join("rc.toml");
        let config = parse(
            &file,
            "[[config_provider]]\ntype = \"env\"\nprefix = \"APP\"\ndotenv_path = \"vars.env\"\n",
        )
        .unwrap();
        let p = Providers::new(
            Some(&config),
            vec![("APP_B".into(), "from env".into())],
            None,
        )
        .unwrap();
        assert_eq!(p.lookup("a").unwrap().unwrap().0, "single # not a comment");
        assert_eq!(p.lookup("b").unwrap().unwrap().0, "from env");
        assert_eq!(p.lookup("c").unwrap().unwrap().0, "a\"b");
        std::fs::write(dir.path().join("vars.env"), "APP_A=\"open\n").unwrap();
        let e = load_at(&file).unwrap_err();
        assert!(e.message.contains("closing quote"), "{e}");
    }

    fn load_at(file: &Path) -> Result<RuntimeConfig, ManifestError> {
        parse(
            file,
            "[[config_provider]]\ntype = \"env\"\nprefix = \"APP\"\ndotenv_path = \"vars.env\"\n",
        )
    }
}

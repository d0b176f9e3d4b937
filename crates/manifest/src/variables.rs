//! Spin's application variables: `[variables]` declares them (`default`, `required`, `secret`),
//! a component's `variables` table gives it its own variables as templates over them
//! (`token = "Bearer {{ api_token }}"`), and so may its `allowed_outbound_hosts`. Values come from
//! providers ([`Providers`]): the runtime config file's, then wms's environment
//! (`WMS_VARIABLE_NAME`, then Spin's `SPIN_VARIABLE_NAME`, then a `.env` file), then the
//! declaration's default. [`crate::App::resolve_variables`] resolves every variable once, at start.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};

use indexmap::IndexMap;

/// An application variable, `[variables] NAME = { ... }`. Its `Debug` hides a secret's default.
#[derive(Clone, PartialEq, Eq)]
pub struct Variable {
    /// Its value when no provider has one (absent when `required`).
    pub default: Option<String>,
    pub required: bool,
    /// Never logged nor shown (values never are; this also keeps it out of error messages).
    pub secret: bool,
    pub description: Option<String>,
    /// Where it is declared, for errors.
    pub(crate) position: Option<(usize, usize)>,
}

impl fmt::Debug for Variable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let default = match (&self.default, self.secret) {
            (Some(_), true) => Some("(secret)"),
            (Some(d), false) => Some(d.as_str()),
            (None, _) => None,
        };
        f.debug_struct("Variable")
            .field("default", &default)
            .field("required", &self.required)
            .field("secret", &self.secret)
            .finish()
    }
}

/// A string with `{{ name }}` references to application variables, as Spin writes them.
#[derive(Clone, PartialEq, Eq)]
pub struct Template {
    raw: String,
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Var(String),
}

impl fmt::Debug for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Template({:?})", self.raw)
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

impl Template {
    /// Parses `text`: literal text and `{{ name }}` references (spaces inside the braces are
    /// ignored). The error says what is wrong.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            match rest.find("{{") {
                Some(0) => {
                    let Some((name, after)) = rest[2..].split_once("}}") else {
                        return Err(format!("`{text}` has a `{{{{` without its `}}}}`"));
                    };
                    let name = name.trim();
                    check_name(name).map_err(|e| {
                        format!("`{text}` refers to `{{{{ {name} }}}}`, not a variable name: {e}")
                    })?;
                    parts.push(Part::Var(name.to_string()));
                    rest = after;
                }
                Some(i) => {
                    parts.push(Part::Text(rest[..i].to_string()));
                    rest = &rest[i..];
                }
                None => {
                    parts.push(Part::Text(rest.to_string()));
                    rest = "";
                }
            }
        }
        Ok(Self {
            raw: text.to_string(),
            parts,
        })
    }

    /// The text as written in the manifest.
    pub fn raw(&self) -> &str {
        &self.raw
    }

    /// Whether it refers to no variable.
    pub fn is_literal(&self) -> bool {
        self.parts.iter().all(|p| matches!(p, Part::Text(_)))
    }

    /// The application variables it refers to.
    pub fn variables(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Var(v) => Some(v.as_str()),
            Part::Text(_) => None,
        })
    }

    /// The text with each reference replaced by its value (every referenced variable must be in
    /// `values`, which validation ensures).
    pub(crate) fn render(&self, values: &HashMap<String, String>) -> String {
        self.parts
            .iter()
            .map(|p| match p {
                Part::Text(t) => t.as_str(),
                Part::Var(v) => values.get(v).map_or("", String::as_str),
            })
            .collect()
    }
}

/// Spin's rule for variable names (application and component): lowercase ASCII letters, digits
/// and single underscores, starting with a letter and not ending with an underscore, so that a
/// name maps to an environment variable and back.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("a variable name cannot be empty".to_string());
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_'))
    {
        return Err(format!(
            "`{name}` has the character {c:?}; variable names have only lowercase letters, digits and `_`"
        ));
    }
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Err(format!("`{name}` must start with a lowercase letter"));
    }
    if name.ends_with('_') {
        return Err(format!("`{name}` must not end with `_`"));
    }
    if name.contains("__") {
        return Err(format!("`{name}` must not have two `_` in a row"));
    }
    Ok(())
}

/// The values of one component's variables, resolved at start. Its `Debug` shows names only.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct VariableValues(pub IndexMap<String, String>);

impl fmt::Debug for VariableValues {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.0.keys()).finish()
    }
}

/// The default environment prefixes, in the order they are looked up: wms's own, then Spin's.
pub const ENV_PREFIXES: [&str; 2] = ["WMS_VARIABLE", "SPIN_VARIABLE"];

/// The environment variable a provider with `prefix` reads for variable `name`.
pub fn env_name(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_ascii_uppercase()
    } else {
        format!("{prefix}_{}", name.to_ascii_uppercase())
    }
}

/// One source of variable values.
#[derive(Clone)]
pub(crate) enum Provider {
    /// Environment variables `PREFIX_NAME`, then the same names in a dotenv file.
    Env {
        prefixes: Vec<String>,
        dotenv: Option<DotEnv>,
    },
    /// Values written in the runtime config file (`type = "static"`).
    Static {
        values: IndexMap<String, String>,
        origin: String,
    },
}

/// A parsed dotenv file.
#[derive(Clone)]
pub(crate) struct DotEnv {
    pub(crate) path: PathBuf,
    pub(crate) values: HashMap<String, String>,
}

/// Where variable values come from, first to last; a variable no provider has gets its default.
#[derive(Clone)]
pub struct Providers {
    pub(crate) list: Vec<Provider>,
    env: HashMap<OsString, OsString>,
}

impl fmt::Debug for Providers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Providers(")?;
        for (i, p) in self.list.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            match p {
                Provider::Env { prefixes, dotenv } => {
                    write!(f, "env {}", prefixes.join("_*, "))?;
                    if let Some(d) = dotenv {
                        write!(f, " and {}", d.path.display())?;
                    }
                }
                Provider::Static { origin, .. } => write!(f, "{origin}")?,
            }
        }
        f.write_str(")")
    }
}

impl Providers {
    /// The providers of the runtime config file (none without one), then the environment `env`
    /// (`WMS_VARIABLE_NAME`, then `SPIN_VARIABLE_NAME`), then those names in `dotenv` (Spin reads
    /// `.env` in the current directory; the file may be missing).
    pub fn new(
        runtime_config: Option<&crate::runtime_config::RuntimeConfig>,
        env: impl IntoIterator<Item = (OsString, OsString)>,
        dotenv: Option<&Path>,
    ) -> Result<Self, crate::ManifestError> {
        let mut list = runtime_config
            .map(|c| c.providers.clone())
            .unwrap_or_default();
        let dotenv = match dotenv {
            Some(path) if path.is_file() => Some(crate::runtime_config::read_dotenv(path)?),
            _ => None,
        };
        list.push(Provider::Env {
            prefixes: ENV_PREFIXES.iter().map(|p| p.to_string()).collect(),
            dotenv,
        });
        Ok(Self {
            list,
            env: env.into_iter().collect(),
        })
    }

    /// This process's environment and no runtime config file nor dotenv file.
    pub fn from_process_env() -> Self {
        Self::new(None, std::env::vars_os(), None).expect("no file is read")
    }

    /// The value of application variable `name` and where it came from, or `None` when no
    /// provider has one. The error names what could not be read (never a value).
    pub(crate) fn lookup(&self, name: &str) -> Result<Option<(String, String)>, String> {
        for p in &self.list {
            match p {
                Provider::Static { values, origin } => {
                    if let Some(v) = values.get(name) {
                        return Ok(Some((v.clone(), origin.clone())));
                    }
                }
                Provider::Env { prefixes, dotenv } => {
                    for prefix in prefixes {
                        let key = env_name(prefix, name);
                        if let Some(v) = self.env.get(&OsString::from(&key)) {
                            let v = v.to_str().ok_or_else(|| {
                                format!("the environment variable {key} is not valid UTF-8")
                            })?;
                            return Ok(Some((v.to_string(), key)));
                        }
                    }
                    if let Some(d) = dotenv {
                        for prefix in prefixes {
                            let key = env_name(prefix, name);
                            if let Some(v) = d.values.get(&key) {
                                return Ok(Some((
                                    v.clone(),
                                    format!("{key} in {}", d.path.display()),
                                )));
                            }
                        }
                    }
                }
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_spins_rules() {
        for good in ["a", "abc", "a1b2", "a_1", "api_token_2"] {
            check_name(good).unwrap();
        }
        for bad in ["", "aX", "1bc", "_x", "x.y", "x_", "a__b", "x-y", "é"] {
            check_name(bad).unwrap_err();
        }
    }

    #[test]
    fn templates_split_text_and_references() {
        let t = Template::parse("https://{{ host }}:{{port}}/x").unwrap();
        assert_eq!(t.variables().collect::<Vec<_>>(), ["host", "port"]);
        let values = HashMap::from([
            ("host".to_string(), "h".to_string()),
            ("port".to_string(), "1".to_string()),
        ]);
        assert_eq!(t.render(&values), "https://h:1/x");
        assert!(Template::parse("plain").unwrap().is_literal());
        assert!(Template::parse("").unwrap().is_literal());
        assert!(
            Template::parse("{{ a }} {{ b")
                .unwrap_err()
                .contains("without its")
        );
        assert!(
            Template::parse("{{ Bad }}")
                .unwrap_err()
                .contains("not a variable name")
        );
    }

    #[test]
    fn wms_prefix_wins_over_spins_then_dotenv() {
        let env = |pairs: &[(&str, &str)]| -> Vec<(OsString, OsString)> {
            pairs
                .iter()
                .map(|(k, v)| (OsString::from(k), OsString::from(v)))
                .collect()
        };
        let p = Providers::new(
            None,
            env(&[("SPIN_VARIABLE_A", "spin"), ("WMS_VARIABLE_A", "wms")]),
            None,
        )
        .unwrap();
        assert_eq!(p.lookup("a").unwrap().unwrap().0, "wms");
        let p = Providers::new(None, env(&[("SPIN_VARIABLE_A", "spin")]), None).unwrap();
        assert_eq!(
            p.lookup("a").unwrap().unwrap(),
            ("spin".to_string(), "SPIN_VARIABLE_A".to_string())
        );
        assert_eq!(p.lookup("b").unwrap(), None);
        let dir = tempfile::tempdir().unwrap();
        let dotenv = dir.path().join(".env");
        std::fs::write(
            &dotenv,
            "# c\nSPIN_VARIABLE_B=\"from file\"\nSPIN_VARIABLE_A=file\n",
        )
        .unwrap();
        let p = Providers::new(None, env(&[("SPIN_VARIABLE_A", "spin")]), Some(&dotenv)).unwrap();
        assert_eq!(p.lookup("a").unwrap().unwrap().0, "spin");
        assert_eq!(p.lookup("b").unwrap().unwrap().0, "from file");
        let missing = dir.path().join("none");
        Providers::new(None, env(&[]), Some(&missing)).unwrap();
    }
}

//! The wms app manifest: a compatible subset of Spin's manifest v2.
//!
//! [`load`] reads `wms.toml` or `spin.toml`, validates everything that can be checked without
//! running anything, and returns an [`App`] with absolute paths, parsed routes, outbound rules and
//! limits. Every error names the file, the line and column (or the component) and what to do.
//!
//! wms's own settings live under the `tool.wms` tables Spin reserves for tools, so a manifest
//! that uses them still runs under `spin up`:
//!
//! ```toml
//! [application.tool.wms]
//! max_concurrent_requests = 512   # whole process
//!
//! [component.hello.tool.wms]
//! timeout = "10s"                 # per request, always in force (default 30s)
//! max_memory = "64MiB"            # linear memory and tables of one instance (default 128MiB)
//! max_concurrent_requests = 32    # per component (default: only the process limit)
//! max_requests = 128              # WASI 0.3: requests per instance (1: fresh each time)
//! max_concurrent_per_instance = 16 # WASI 0.3: requests one instance serves at once
//! max_outbound_connections = 16   # all its instances together (default: 64 per instance)
//! idle_timeout = "1s"             # WASI 0.3: an idle instance waits this long for the next
//! ```

mod error;
pub mod files;
#[cfg(test)]
mod fuzz;
pub mod outbound;
pub mod routes;
pub mod runtime_config;
mod schema;
pub mod stores;
pub mod variables;

use std::path::{Path, PathBuf};
use std::time::Duration;

use indexmap::IndexMap;
use toml::Spanned;

use error::Locator;
pub use error::ManifestError;
pub use outbound::AllowedHost;
pub use routes::{RouteMatch, RoutePattern};
pub use variables::{Providers, Template, Variable, VariableValues};

/// Manifest file names looked up, in order, when `wms up` is given a directory.
pub const MANIFEST_NAMES: [&str; 2] = ["wms.toml", "spin.toml"];

/// Request timeout when a component sets none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Memory limit of one instance when a component sets none.
pub const DEFAULT_MAX_MEMORY: u64 = 128 << 20;
/// Process-wide concurrent request limit when the application sets none.
pub const DEFAULT_MAX_CONCURRENT_REQUESTS: usize = 1000;
/// The longest `timeout` a component may set.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// The largest `max_memory` a component may set: the whole 32-bit wasm address space.
pub const MAX_MEMORY: u64 = 4 << 30;
/// The largest `pool_resident_budget`.
pub const MAX_RESIDENT_BUDGET: u64 = 1 << 40;
/// The largest `max_concurrent_requests` (process or component): each request is a live instance.
pub const MAX_CONCURRENT_REQUESTS: usize = 65_536;

/// The layers of the image an app manifest came from, as that manifest may name them
/// (`{ digest = "sha256:..." }`). The implementation decides which digests are layers of the
/// image and of which kind; an error says why a digest may not be used.
pub trait ImageLayers {
    /// The verified wasm blob of component layer `digest`.
    fn component(&self, digest: &str) -> Result<PathBuf, String>;
    /// The directory where files layer `digest` is unpacked.
    fn files(&self, digest: &str) -> Result<PathBuf, String>;
}

/// Where a manifest comes from, which decides what it may name.
#[derive(Clone, Copy)]
enum Origin<'a> {
    /// A local manifest the operator pointed at: trusted, paths relative to its directory.
    Local,
    /// An image's app manifest: untrusted data that can name only the image's own layers.
    Image(&'a dyn ImageLayers),
}

/// A validated application.
#[derive(Debug, Clone)]
pub struct App {
    pub name: String,
    pub version: Option<String>,
    pub description: Option<String>,
    /// The manifest file this app was read from.
    pub manifest_path: PathBuf,
    /// The directory relative paths in the manifest are resolved against.
    pub dir: PathBuf,
    /// Application base path for routes (`[application.trigger.http] base`), default `/`.
    pub base: String,
    pub components: IndexMap<String, Component>,
    /// Application variables (`[variables]`), in manifest order.
    pub variables: IndexMap<String, Variable>,
    /// Routes, most specific first.
    pub routes: Vec<Route>,
    /// Process-wide concurrent request limit.
    pub max_concurrent_requests: usize,
    /// The most the instance pool may keep resident between requests (`pool_resident_budget`);
    /// `None`: derived from the host's memory.
    pub pool_resident_budget: Option<u64>,
    /// Read from an image ([`parse_image`]): untrusted, so what it grants that only the operator
    /// may grant (outbound entries naming a local address, the pool's budget) is not honoured.
    pub from_image: bool,
}

/// A validated component.
#[derive(Debug, Clone)]
pub struct Component {
    pub id: String,
    /// Absolute path of the `.wasm` file.
    pub source: PathBuf,
    pub description: Option<String>,
    pub environment: IndexMap<String, String>,
    pub files: Vec<FileMount>,
    pub exclude_files: Vec<String>,
    /// The entries without a template; [`App::resolve_variables`] appends the others, resolved,
    /// in the order of `outbound_templates`.
    pub allowed_outbound_hosts: Vec<AllowedHost>,
    /// Entries of `allowed_outbound_hosts` with `{{ variable }}` references.
    pub outbound_templates: Vec<Template>,
    /// The component's variables (`[component.NAME.variables]`): what the guest may ask for.
    pub variables: IndexMap<String, Template>,
    /// Their values, once [`App::resolve_variables`] has run.
    pub variable_values: Option<VariableValues>,
    /// The key-value stores the component may open (`key_value_stores`), by label.
    pub key_value_stores: Vec<String>,
    /// The SQLite databases it may open (`sqlite_databases`), by label.
    pub sqlite_databases: Vec<String>,
    pub build: Option<BuildSpec>,
    pub limits: Limits,
    /// How the routes serving this component run it.
    pub executor: Executor,
}

/// Per-component limits; always set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub timeout: Duration,
    pub max_memory: u64,
    pub max_concurrent_requests: Option<usize>,
    /// Outbound connections all of its instances hold at once (`None`: only each instance's
    /// own cap and the process's descriptor budget).
    pub max_outbound_connections: Option<usize>,
    /// How a WASI 0.3 component's instances are reused (0.2 components get one per request).
    pub reuse: Reuse,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            timeout: DEFAULT_TIMEOUT,
            max_memory: DEFAULT_MAX_MEMORY,
            max_concurrent_requests: None,
            max_outbound_connections: None,
            reuse: Reuse::default(),
        }
    }
}

/// Instance reuse of a WASI 0.3 component; the defaults are `wasmtime serve`'s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reuse {
    /// Requests one instance serves in all (`max_requests`; 1: a fresh instance per request).
    pub max_requests: usize,
    /// Requests one instance serves at once (`max_concurrent_per_instance`).
    pub max_concurrent: usize,
    /// How long an instance with no request waits for the next (`idle_timeout`).
    pub idle_timeout: Duration,
}

impl Default for Reuse {
    fn default() -> Self {
        Self {
            max_requests: 128,
            max_concurrent: 16,
            idle_timeout: Duration::from_secs(1),
        }
    }
}

/// Files made visible to a component, read-only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileMount {
    /// A host directory (absolute) mounted at a guest path.
    Directory {
        source: PathBuf,
        destination: String,
    },
    /// A glob pattern relative to the app directory; matching files appear at the same relative
    /// path under the guest root.
    Pattern { pattern: String },
}

/// `[component.NAME.build]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildSpec {
    pub command: Vec<String>,
    /// Absolute working directory.
    pub workdir: PathBuf,
    pub environment: IndexMap<String, String>,
    /// Glob patterns, relative to `workdir`, of the files whose change rebuilds the component
    /// under `wms up --watch`.
    pub watch: Vec<String>,
}

/// How a route's component is run.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Executor {
    /// A `wasi:http` component (Spin's default executor).
    #[default]
    Http,
    /// A WASI preview 1 command run CGI-style per request (the WAGI conventions).
    Wagi {
        /// Argument template; `${SCRIPT_NAME}` and `${ARGS}` are replaced (default
        /// `${SCRIPT_NAME} ${ARGS}`).
        argv: String,
        /// The exported function to call (default `_start`).
        entrypoint: String,
    },
}

/// The default WAGI argument template: the script name, then the query arguments.
pub const WAGI_DEFAULT_ARGV: &str = "${SCRIPT_NAME} ${ARGS}";

/// A route and the component serving it.
#[derive(Debug, Clone)]
pub struct Route {
    pub pattern: RoutePattern,
    pub component: String,
    pub executor: Executor,
}

/// Where the value of an application variable came from, for the start-up log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VariableOrigin {
    pub name: String,
    /// `SPIN_VARIABLE_API_TOKEN`, `default`, `a static provider of the runtime config file`, ...
    pub origin: String,
}

impl App {
    /// Gives every application variable its value (the first provider that has one, else its
    /// default), then every component its variables' values and the `allowed_outbound_hosts`
    /// written with templates. A required variable without a value is an error naming it, as is
    /// a templated outbound entry whose value is not a valid entry. Values are never put in a
    /// message. Returns where each value came from.
    pub fn resolve_variables(
        &mut self,
        providers: &Providers,
    ) -> Result<Vec<VariableOrigin>, ManifestError> {
        let mut values = std::collections::HashMap::new();
        let mut origins = Vec::new();
        for (name, var) in &self.variables {
            let at = |message: String| {
                let mut e = ManifestError::new(&self.manifest_path, message);
                e.position = var.position;
                e
            };
            let found = providers.lookup(name).map_err(|e| {
                at(format!("variable `{name}`: {e}"))
                    .help("fix the environment variable or remove it")
            })?;
            let (value, origin) = match (found, &var.default) {
                (Some(found), _) => found,
                (None, Some(default)) => (default.clone(), "default".to_string()),
                (None, None) => {
                    return Err(at(format!(
                        "variable `{name}` is required and has no value"
                    ))
                    .help(format!(
                        "give it a value: set {} (or {}) in wms's environment, or list it in a provider of the runtime config file (--runtime-config-file)",
                        variables::env_name("SPIN_VARIABLE", name),
                        variables::env_name("WMS_VARIABLE", name),
                    )));
                }
            };
            values.insert(name.clone(), value);
            origins.push(VariableOrigin {
                name: name.clone(),
                origin,
            });
        }
        for (id, c) in &mut self.components {
            if c.variable_values.is_some() {
                // Resolved before: drop the hosts that resolution added.
                let literal = c.allowed_outbound_hosts.len() - c.outbound_templates.len();
                c.allowed_outbound_hosts.truncate(literal);
            }
            let resolved = c
                .variables
                .iter()
                .map(|(k, t)| (k.clone(), t.render(&values)))
                .collect();
            c.variable_values = Some(VariableValues(resolved));
            for t in &c.outbound_templates {
                let value = t.render(&values);
                let secret = t.variables().any(|v| self.variables[v].secret);
                let host = AllowedHost::parse(&value).map_err(|e| {
                    let why = if secret {
                        "its value (not shown: it uses a secret variable) is not a valid entry"
                            .to_string()
                    } else {
                        e
                    };
                    ManifestError::new(
                        &self.manifest_path,
                        format!(
                            "component `{id}`: allowed_outbound_hosts entry `{}`: {why}",
                            t.raw()
                        ),
                    )
                    .help(format!(
                        "give {} a value of the form `scheme://host[:port]`, e.g. `https://api.example.com`",
                        t.variables()
                            .map(|v| format!("`{v}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                })?;
                c.allowed_outbound_hosts.push(host);
            }
        }
        Ok(origins)
    }

    /// Whether `template` refers to a secret variable.
    pub fn uses_secret(&self, template: &Template) -> bool {
        template
            .variables()
            .any(|v| self.variables.get(v).is_some_and(|v| v.secret))
    }

    /// Finds the route serving `path` (no query), with its match.
    pub fn route(&self, path: &str) -> Option<(&Route, RouteMatch)> {
        self.route_index(path).map(|(i, m)| (&self.routes[i], m))
    }

    /// Like [`App::route`], with the route's index in [`App::routes`].
    pub fn route_index(&self, path: &str) -> Option<(usize, RouteMatch)> {
        self.routes
            .iter()
            .enumerate()
            .find_map(|(i, r)| r.pattern.matches(path).map(|m| (i, m)))
    }
}

/// Finds the manifest for `path`: the file itself, or `wms.toml`/`spin.toml` in a directory.
pub fn find(path: &Path) -> Result<PathBuf, ManifestError> {
    if path.is_dir() {
        for name in MANIFEST_NAMES {
            let candidate = path.join(name);
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
        return Err(
            ManifestError::new(path, "no manifest in this directory").help(format!(
                "create `{}` (or `spin.toml`), or pass the manifest file itself",
                path.join("wms.toml").display()
            )),
        );
    }
    if !path.exists() {
        return Err(ManifestError::new(path, "no such file or directory")
            .help("pass an app directory or its wms.toml / spin.toml"));
    }
    Ok(path.to_path_buf())
}

/// Reads and validates a manifest (a file, or a directory holding one).
pub fn load(path: &Path) -> Result<App, ManifestError> {
    let file = find(path)?;
    let text = std::fs::read_to_string(&file).map_err(|e| {
        ManifestError::new(&file, format!("cannot read manifest: {e}"))
            .help("check that the file exists and is readable UTF-8 text")
    })?;
    parse(&file, &text)
}

/// Validates manifest text; `file` is used for error messages and to resolve relative paths.
pub fn parse(file: &Path, text: &str) -> Result<App, ManifestError> {
    let dir = file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    Parser {
        file,
        dir,
        origin: Origin::Local,
        locator: Locator::new(text),
    }
    .parse(text)
}

/// Validates the app manifest of an image. It is data from an untrusted publisher: a component's
/// `source` and its files can only be layers of the image, named by digest and resolved by
/// `layers`; a host path in any form (string source, file pattern, directory mapping), build
/// steps and `exclude_files` are refused. `label` names the manifest in errors; `dir` is the
/// directory the image was prepared in.
pub fn parse_image(
    label: &Path,
    dir: &Path,
    text: &str,
    layers: &dyn ImageLayers,
) -> Result<App, ManifestError> {
    Parser {
        file: label,
        dir: dir.to_path_buf(),
        origin: Origin::Image(layers),
        locator: Locator::new(text),
    }
    .parse(text)
}

struct Parser<'a> {
    file: &'a Path,
    /// The directory relative paths are resolved against.
    dir: PathBuf,
    origin: Origin<'a>,
    locator: Locator<'a>,
}

/// The help line for a host path found in an image's manifest.
const IMAGE_PATH_HELP: &str = "an image's manifest can name only the image's own layers, as `{ digest = \"sha256:...\" }`; ask the publisher to push the app again with `wms push`";

impl Parser<'_> {
    fn err_at(&self, span: std::ops::Range<usize>, message: impl Into<String>) -> ManifestError {
        let mut e = ManifestError::new(self.file, message);
        e.position = Some(self.locator.position(span.start));
        e
    }

    fn unsupported(&self, raw: &schema::Raw, what: &str, help: &str) -> Result<(), ManifestError> {
        match raw {
            Some(v) if !is_empty(v.get_ref()) => Err(self
                .err_at(v.span(), format!("{what} is not supported by wms"))
                .help(help)),
            _ => Ok(()),
        }
    }

    fn parse(&self, text: &str) -> Result<App, ManifestError> {
        // Probe the version first so an old or future manifest gets a precise message instead
        // of a list of unknown fields.
        let probe: toml::Table = toml::from_str(text).map_err(|e| self.toml_error(&e))?;
        match probe.get("spin_manifest_version") {
            Some(toml::Value::Integer(2)) => {}
            Some(v) => {
                let (line, col) = self.find_key(text, "spin_manifest_version");
                let mut e = ManifestError::new(
                    self.file,
                    format!("unsupported manifest version {v}"),
                )
                .help("wms reads Spin manifest version 2: set `spin_manifest_version = 2` and use the v2 layout ([application], [[trigger.http]], [component.NAME])");
                e.position = Some((line, col));
                return Err(e);
            }
            None => {
                return Err(
                    ManifestError::new(self.file, "missing `spin_manifest_version`")
                        .help("add `spin_manifest_version = 2` at the top of the manifest"),
                );
            }
        }
        let m: schema::Manifest = toml::from_str(text).map_err(|e| self.toml_error(&e))?;
        let dir = self.dir.clone();

        let variables = self.app_variables(&m.variables)?;
        self.unsupported(
            &m.application.targets,
            "`application.targets`",
            "remove it; wms checks component compatibility at start-up",
        )?;

        let mut base = "/".to_string();
        if let Some(t) = &m.application.trigger {
            self.unsupported(
                &t.redis,
                "the redis trigger",
                "remove [application.trigger.redis]; wms serves HTTP triggers only",
            )?;
            if let Some(b) = t.http.as_ref().and_then(|h| h.base.as_ref()) {
                if !b.get_ref().starts_with('/') {
                    return Err(self
                        .err_at(
                            b.span(),
                            format!("base path `{}` must start with `/`", b.get_ref()),
                        )
                        .help("write the base as an absolute path such as `/` or `/api`"));
                }
                base = b.get_ref().clone();
            }
        }

        let mut max_concurrent = DEFAULT_MAX_CONCURRENT_REQUESTS;
        let app_tool = m.application.tool.wms.as_ref().map(|t| t.get_ref());
        if let Some(n) = app_tool.and_then(|t| t.max_concurrent_requests.as_ref()) {
            max_concurrent = self.count(n, "max_concurrent_requests")?;
        }
        let mut pool_resident_budget = None;
        if let Some(b) = app_tool.and_then(|t| t.pool_resident_budget.as_ref()) {
            let size: bytesize::ByteSize = b.get_ref().parse().map_err(|e| {
                self.err_at(
                    b.span(),
                    format!("pool_resident_budget `{}` is not a size: {e}", b.get_ref()),
                )
                .help("write a size such as \"256MiB\" or \"1GiB\"")
            })?;
            if size.as_u64() > MAX_RESIDENT_BUDGET {
                return Err(self
                    .err_at(
                        b.span(),
                        format!(
                            "pool_resident_budget `{}` is over the allowed maximum of 1TiB",
                            b.get_ref()
                        ),
                    )
                    .help("write a size such as \"256MiB\"; 0 keeps nothing resident"));
            }
            pool_resident_budget = Some(size.as_u64());
        }

        let mut components = IndexMap::new();
        for (name, c) in &m.component {
            let comp = self.component(&dir, name, c, &variables)?;
            components.insert(name.get_ref().clone(), comp);
        }
        // Service chaining to a component the app does not have is a typo to report now, not a
        // request that fails later.
        for (name, c) in &m.component {
            for h in &c.get_ref().allowed_outbound_hosts {
                let Ok(a) = AllowedHost::parse(h.get_ref()) else {
                    continue;
                };
                if let Some(target) = a.chaining_target()
                    && !m.component.keys().any(|k| *k.get_ref() == target)
                {
                    return Err(self
                        .err_at(
                            h.span(),
                            format!(
                                "component `{}`: allowed_outbound_hosts entry `{a}` chains to component `{target}`, which this app does not have",
                                name.get_ref()
                            ),
                        )
                        .help("name a [component.NAME] of this app, as in `http://NAME.spin.internal`, or `http://*.spin.internal` for any of them"));
                }
            }
        }

        let mut routes: Vec<(Route, std::ops::Range<usize>)> = Vec::new();
        let triggers = match &m.trigger {
            Some(t) => t,
            None => {
                return Err(ManifestError::new(self.file, "no `[[trigger.http]]` routes")
                    .help("add a route: [[trigger.http]] with `route = \"/...\"` and `component = \"NAME\"`"));
            }
        };
        let t = triggers.get_ref();
        for (raw, kind) in [
            (&t.redis, "redis"),
            (&t.command, "command"),
            (&t.cron, "cron"),
            (&t.sqs, "sqs"),
            (&t.mqtt, "mqtt"),
        ] {
            self.unsupported(
                raw,
                &format!("the `{kind}` trigger"),
                "wms serves `[[trigger.http]]` only; remove this trigger or run it under Spin",
            )?;
        }
        if t.http.is_empty() {
            return Err(self.err_at(triggers.span(), "no `[[trigger.http]]` routes")
                .help("add a route: [[trigger.http]] with `route = \"/...\"` and `component = \"NAME\"`"));
        }
        for trig in &t.http {
            let span = trig.span();
            let trig = trig.get_ref();
            self.unsupported(
                &trig.static_response,
                "`static_response`",
                "serve the response from a component instead",
            )?;
            let executor = match &trig.executor {
                None => Executor::Http,
                Some(e) => match e.get_ref().kind.as_str() {
                    "spin" | "http" | "wasi-http" => Executor::Http,
                    "wagi" => Executor::Wagi {
                        argv: e
                            .get_ref()
                            .argv
                            .clone()
                            .unwrap_or_else(|| WAGI_DEFAULT_ARGV.to_string()),
                        entrypoint: e
                            .get_ref()
                            .entrypoint
                            .clone()
                            .unwrap_or_else(|| "_start".to_string()),
                    },
                    other => {
                        return Err(self
                            .err_at(e.span(), format!("unknown executor type `{other}`"))
                            .help("use `executor = { type = \"spin\" }` (wasi:http, the default) or `{ type = \"wagi\" }`"));
                    }
                },
            };
            let component = match &trig.component {
                None => {
                    return Err(self
                        .err_at(span, "this route has no `component`")
                        .help("add `component = \"NAME\"` naming a [component.NAME] table"));
                }
                Some(c) => match c.get_ref() {
                    toml::Value::String(s) => {
                        if !components.contains_key(s) {
                            let known: Vec<_> =
                                components.keys().map(|k| format!("`{k}`")).collect();
                            return Err(self
                                .err_at(
                                    c.span(),
                                    format!(
                                        "route refers to component `{s}`, which is not defined"
                                    ),
                                )
                                .help(if known.is_empty() {
                                    format!("add a [component.{s}] table with a `source`")
                                } else {
                                    format!(
                                        "define [component.{s}] or use one of {}",
                                        known.join(", ")
                                    )
                                }));
                        }
                        s.clone()
                    }
                    toml::Value::Table(_) => {
                        return Err(self.err_at(c.span(), "inline component tables are not supported")
                            .help("declare the component as [component.NAME] and write `component = \"NAME\"`"));
                    }
                    _ => {
                        return Err(self
                            .err_at(
                                c.span(),
                                "`component` must be a string naming a [component.NAME] table",
                            )
                            .help("write `component = \"NAME\"`"));
                    }
                },
            };
            let route = match trig.route.get_ref() {
                toml::Value::String(r) => r.clone(),
                toml::Value::Table(t) if t.get("private") == Some(&toml::Value::Boolean(true)) => {
                    // A private component has no public route: it is reachable only through
                    // service chaining (`http://NAME.spin.internal`).
                    continue;
                }
                _ => return Err(self.err_at(trig.route.span(), "`route` must be a string such as \"/hello\" or \"/api/...\"")
                    .help("write the route as a string, or `{ private = true }` for an unrouted component")),
            };
            let pattern = RoutePattern::parse(&base, &route).map_err(|e| {
                self.err_at(trig.route.span(), e.0)
                    .help("routes are `/exact/path`, `/users/:id` or `/prefix/...`")
            })?;
            if let Some((other, _)) = routes.iter().find(|(r, _)| r.pattern.same_shape(&pattern)) {
                return Err(self
                    .err_at(
                        trig.route.span(),
                        format!(
                            "route `{route}` duplicates the route `{}` of component `{}`",
                            other.pattern.raw(),
                            other.component
                        ),
                    )
                    .help("give each route a distinct path"));
            }
            if let Some(c) = components.get_mut(&component) {
                if let Some(first) = routes
                    .iter()
                    .find(|(r, _)| r.component == component && r.executor != executor)
                {
                    return Err(self
                        .err_at(span, format!(
                            "component `{component}` is served by route `{}` with another executor",
                            first.0.pattern.raw()
                        ))
                        .help("a component is either a wasi:http component or a WAGI module; give each its own [component.NAME]"));
                }
                c.executor = executor.clone();
            }
            routes.push((
                Route {
                    pattern,
                    component,
                    executor,
                },
                span,
            ));
        }
        let mut routes: Vec<Route> = routes.into_iter().map(|(r, _)| r).collect();
        routes.sort_by(|a, b| a.pattern.specificity_cmp(&b.pattern));

        Ok(App {
            name: m.application.name.get_ref().clone(),
            version: m.application.version,
            description: m.application.description,
            manifest_path: std::path::absolute(self.file)
                .unwrap_or_else(|_| self.file.to_path_buf()),
            dir,
            base,
            components,
            variables,
            routes,
            max_concurrent_requests: max_concurrent,
            pool_resident_budget,
            from_image: matches!(self.origin, Origin::Image(_)),
        })
    }

    fn component(
        &self,
        dir: &Path,
        name: &Spanned<String>,
        c: &Spanned<schema::Component>,
        app_variables: &IndexMap<String, Variable>,
    ) -> Result<Component, ManifestError> {
        let id = name.get_ref();
        if id.is_empty()
            || !id
                .chars()
                .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '-' || ch == '_')
        {
            return Err(self
                .err_at(name.span(), format!("component name `{id}` is not valid"))
                .help("use lowercase letters, digits, `-` and `_`, as in [component.my-service]"));
        }
        let c = c.get_ref();
        let feature = |what: &str| format!("component `{id}`: {what}");
        let labels = |list: &[Spanned<String>], what: &str| {
            let mut out: Vec<String> = Vec::new();
            for l in list {
                stores::check_label(l.get_ref()).map_err(|e| {
                    self.err_at(l.span(), feature(&format!("{what}: {e}")))
                        .help("use \"default\", or a label defined in the runtime config file")
                })?;
                if !out.contains(l.get_ref()) {
                    out.push(l.get_ref().clone());
                }
            }
            Ok::<_, ManifestError>(out)
        };
        let key_value_stores = labels(&c.key_value_stores, "key_value_stores")?;
        let sqlite_databases = labels(&c.sqlite_databases, "sqlite_databases")?;
        self.unsupported(
            &c.ai_models,
            &feature("`ai_models`"),
            "remove it; wms has no LLM host interface",
        )?;
        self.unsupported(&c.dependencies, &feature("`dependencies` (component composition)"), "compose the component ahead of time (e.g. with `wac plug`) and point `source` at the result")?;
        self.unsupported(
            &c.dependencies_inherit_configuration,
            &feature("`dependencies_inherit_configuration`"),
            "remove it; wms does not compose dependencies",
        )?;
        self.unsupported(&c.targets, &feature("`targets`"), "remove it")?;
        if let Some(v) = &c.allowed_http_hosts {
            return Err(self.err_at(v.span(), feature("`allowed_http_hosts` is the Spin manifest v1 name"))
                .help("rename it to `allowed_outbound_hosts` and write each entry as `https://host[:port]`"));
        }

        let source = match (c.source.get_ref(), self.origin) {
            (toml::Value::String(s), Origin::Local) => dir.join(s),
            (toml::Value::String(s), Origin::Image(_)) => {
                return Err(self
                    .err_at(
                        c.source.span(),
                        feature(&format!("`source` names the host path `{s}`")),
                    )
                    .help(IMAGE_PATH_HELP));
            }
            (toml::Value::Table(t), Origin::Image(layers)) => {
                let digest = match t.get("digest") {
                    Some(toml::Value::String(d)) if t.len() == 1 => d,
                    _ => {
                        return Err(self
                            .err_at(
                                c.source.span(),
                                feature("`source` must be `{ digest = \"sha256:...\" }`"),
                            )
                            .help(IMAGE_PATH_HELP));
                    }
                };
                layers.component(digest).map_err(|e| {
                    self.err_at(c.source.span(), feature(&format!("`source`: {e}")))
                        .help(IMAGE_PATH_HELP)
                })?
            }
            (toml::Value::Table(_), Origin::Local) => {
                return Err(self.err_at(c.source.span(), feature("remote `source` (url and digest) is not supported"))
                    .help("download the .wasm and point `source` at the local file, or publish the app to a registry"));
            }
            (_, _) => {
                return Err(self
                    .err_at(
                        c.source.span(),
                        feature("`source` must be a path to a .wasm file"),
                    )
                    .help(
                        "write `source = \"path/to/component.wasm\"`, relative to the manifest",
                    ));
            }
        };

        let mut variables = IndexMap::new();
        for (name, template) in &c.variables {
            variables::check_name(name.get_ref()).map_err(|e| {
                self.err_at(name.span(), feature(&format!("variables: {e}")))
                    .help("name component variables as Spin does: lowercase letters, digits and `_`, e.g. `api_token`")
            })?;
            let t = self.template(template, app_variables, &feature("variables"))?;
            variables.insert(name.get_ref().clone(), t);
        }

        let mut allowed = Vec::new();
        let mut outbound_templates = Vec::new();
        for h in &c.allowed_outbound_hosts {
            if h.get_ref().contains("{{") {
                outbound_templates.push(self.template(
                    h,
                    app_variables,
                    &feature("allowed_outbound_hosts"),
                )?);
                continue;
            }
            let a = AllowedHost::parse(h.get_ref()).map_err(|e| {
                self.err_at(h.span(), feature(&format!("allowed_outbound_hosts: {e}")))
                    .help("entries look like `https://api.example.com`, `http://127.0.0.1:8080` or `*://*.example.com:*`")
            })?;
            allowed.push(a);
        }

        if let Origin::Image(_) = self.origin {
            if let Some(b) = &c.build {
                return Err(self
                    .err_at(b.span(), feature("an image's manifest has no build steps"))
                    .help(IMAGE_PATH_HELP));
            }
            if let Some(x) = c.exclude_files.first() {
                return Err(self
                    .err_at(x.span(), feature("`exclude_files` names host files"))
                    .help(IMAGE_PATH_HELP));
            }
        }
        let mut files = Vec::new();
        for f in &c.files {
            match (f.get_ref(), self.origin) {
                (schema::FileEntry::Pattern(p), Origin::Image(_)) => {
                    return Err(self
                        .err_at(
                            f.span(),
                            feature(&format!("file pattern `{p}` names host files")),
                        )
                        .help(IMAGE_PATH_HELP));
                }
                (
                    schema::FileEntry::Mapping {
                        source: schema::FileSource::Path(source),
                        ..
                    },
                    Origin::Image(_),
                ) => {
                    return Err(self
                        .err_at(
                            f.span(),
                            feature(&format!("file source `{source}` is a host path")),
                        )
                        .help(IMAGE_PATH_HELP));
                }
                (
                    schema::FileEntry::Mapping {
                        source: schema::FileSource::Layer(layer),
                        destination,
                    },
                    Origin::Image(layers),
                ) => {
                    let destination = self.guest_destination(f.span(), &feature, destination)?;
                    let source = layers.files(&layer.digest).map_err(|e| {
                        self.err_at(f.span(), feature(&format!("`files`: {e}")))
                            .help(IMAGE_PATH_HELP)
                    })?;
                    files.push(FileMount::Directory {
                        source,
                        destination,
                    });
                }
                (
                    schema::FileEntry::Mapping {
                        source: schema::FileSource::Layer(layer),
                        ..
                    },
                    Origin::Local,
                ) => {
                    return Err(self
                        .err_at(
                            f.span(),
                            feature(&format!(
                                "file source `{{ digest = \"{}\" }}` names an image layer",
                                layer.digest
                            )),
                        )
                        .help(
                            "in a local manifest, `source` is a directory relative to the manifest",
                        ));
                }
                (schema::FileEntry::Pattern(p), Origin::Local) => {
                    if Path::new(p).is_absolute() || p.split('/').any(|s| s == "..") {
                        return Err(self.err_at(f.span(), feature(&format!("file pattern `{p}` leaves the app directory")))
                            .help("use a pattern relative to the manifest, or `{ source = \"DIR\", destination = \"/PATH\" }`"));
                    }
                    files.push(FileMount::Pattern { pattern: p.clone() });
                }
                (
                    schema::FileEntry::Mapping {
                        source: schema::FileSource::Path(source),
                        destination,
                    },
                    Origin::Local,
                ) => {
                    let destination = self.guest_destination(f.span(), &feature, destination)?;
                    let src = dir.join(source);
                    if !src.is_dir() {
                        return Err(self.err_at(f.span(), feature(&format!("file source `{source}` is not a directory")))
                            .help("a `{ source, destination }` entry mounts a directory; create it or use a pattern string for single files"));
                    }
                    files.push(FileMount::Directory {
                        source: src,
                        destination,
                    });
                }
            }
        }

        let build = match &c.build {
            None => None,
            Some(spanned) => {
                let b = spanned.get_ref();
                if let Some((w, e)) = b
                    .watch
                    .iter()
                    .find_map(|w| glob::Pattern::new(w).err().map(|e| (w, e)))
                {
                    return Err(self.err_at(spanned.span(), feature(&format!("`build.watch` pattern `{w}` is not a glob: {e}")))
                        .help("write patterns relative to the build's workdir, e.g. `watch = [\"src/**/*.rs\", \"Cargo.toml\"]`"));
                }
                let command = match b.command.get_ref() {
                    toml::Value::String(s) if !s.trim().is_empty() => vec![s.clone()],
                    toml::Value::Array(a) if !a.is_empty() && a.iter().all(|v| v.is_str()) => {
                        a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect()
                    }
                    _ => return Err(self.err_at(b.command.span(), feature("`build.command` must be a non-empty string or list of strings"))
                        .help("write e.g. `command = \"cargo build --target wasm32-wasip2 --release\"`")),
                };
                Some(BuildSpec {
                    command,
                    workdir: b
                        .workdir
                        .as_ref()
                        .map_or_else(|| dir.to_path_buf(), |w| dir.join(w)),
                    environment: b.environment.clone(),
                    watch: b.watch.clone(),
                })
            }
        };

        let mut limits = Limits::default();
        if let Some(t) = &c.tool.wms {
            let t = t.get_ref();
            if let Some(t) = &t.timeout {
                limits.timeout = self.duration(
                    t,
                    &feature("timeout"),
                    "a timeout is always in force; write e.g. \"30s\"",
                )?;
            }
            if let Some(m) = &t.max_memory {
                let size: bytesize::ByteSize = m.get_ref().parse().map_err(|e| {
                    self.err_at(
                        m.span(),
                        feature(&format!("max_memory `{}` is not a size: {e}", m.get_ref())),
                    )
                    .help("write a size such as \"64MiB\" or \"1GiB\"")
                })?;
                if size.as_u64() < 64 * 1024 || size.as_u64() > MAX_MEMORY {
                    return Err(self
                        .err_at(
                            m.span(),
                            feature(&format!(
                                "max_memory `{}` is outside the allowed range (one 64KiB wasm page to 4GiB)",
                                m.get_ref()
                            )),
                        )
                        .help("write a size such as \"64MiB\" or \"1GiB\""));
                }
                limits.max_memory = size.as_u64();
            }
            if let Some(n) = &t.max_concurrent_requests {
                limits.max_concurrent_requests = Some(self.count(n, "max_concurrent_requests")?);
            }
            if let Some(n) = &t.max_requests {
                limits.reuse.max_requests = self.count(n, "max_requests")?;
            }
            if let Some(n) = &t.max_outbound_connections {
                limits.max_outbound_connections = Some(self.count(n, "max_outbound_connections")?);
            }
            if let Some(n) = &t.max_concurrent_per_instance {
                limits.reuse.max_concurrent = self.count(n, "max_concurrent_per_instance")?;
            }
            if let Some(t) = &t.idle_timeout {
                limits.reuse.idle_timeout =
                    self.duration(t, &feature("idle_timeout"), "write e.g. \"1s\"")?;
            }
        }

        Ok(Component {
            id: id.clone(),
            source,
            description: c.description.clone(),
            environment: c.environment.clone(),
            files,
            exclude_files: c
                .exclude_files
                .iter()
                .map(|x| x.get_ref().clone())
                .collect(),
            allowed_outbound_hosts: allowed,
            outbound_templates,
            variables,
            variable_values: None,
            key_value_stores,
            sqlite_databases,
            build,
            limits,
            executor: Executor::Http,
        })
    }

    /// `[variables]`: each name valid, each entry with either a `default` or `required = true`.
    fn app_variables(
        &self,
        decls: &IndexMap<Spanned<String>, Spanned<schema::VariableDecl>>,
    ) -> Result<IndexMap<String, Variable>, ManifestError> {
        let mut out = IndexMap::new();
        for (name, decl) in decls {
            variables::check_name(name.get_ref()).map_err(|e| {
                self.err_at(name.span(), format!("variables: {e}"))
                    .help("name variables as Spin does: lowercase letters, digits and `_`, e.g. `api_token`")
            })?;
            let d = decl.get_ref();
            match (&d.default, d.required) {
                (Some(_), true) => {
                    return Err(self
                        .err_at(
                            decl.span(),
                            format!("variable `{}` has both a `default` and `required = true`", name.get_ref()),
                        )
                        .help("keep one: a required variable must be given a value when the app starts; one with a default may be"));
                }
                (None, false) => {
                    return Err(self
                        .err_at(
                            decl.span(),
                            format!("variable `{}` has neither a `default` nor `required = true`", name.get_ref()),
                        )
                        .help("add `default = \"...\"`, or `required = true` if the operator must give it a value"));
                }
                _ => {}
            }
            out.insert(
                name.get_ref().clone(),
                Variable {
                    default: d.default.clone(),
                    required: d.required,
                    secret: d.secret,
                    description: d.description.clone(),
                    position: Some(self.locator.position(name.span().start)),
                },
            );
        }
        Ok(out)
    }

    /// A template whose references are all declared application variables.
    fn template(
        &self,
        text: &Spanned<String>,
        app_variables: &IndexMap<String, Variable>,
        what: &str,
    ) -> Result<Template, ManifestError> {
        let t = Template::parse(text.get_ref()).map_err(|e| {
            self.err_at(text.span(), format!("{what}: {e}"))
                .help("refer to an application variable as `{{ name }}`")
        })?;
        if let Some(unknown) = t.variables().find(|v| !app_variables.contains_key(*v)) {
            return Err(self
                .err_at(
                    text.span(),
                    format!("{what}: `{}` refers to `{unknown}`, which [variables] does not declare", text.get_ref()),
                )
                .help(format!("declare it: [variables] {unknown} = {{ default = \"...\" }} (or `required = true`)")));
        }
        Ok(t)
    }

    /// A request count in `1..=MAX_CONCURRENT_REQUESTS`.
    /// A duration from 1ms to 24h; `what` names the key (with its component) in the error.
    fn duration(
        &self,
        t: &Spanned<String>,
        what: &str,
        range_help: &str,
    ) -> Result<Duration, ManifestError> {
        let d = humantime::parse_duration(t.get_ref()).map_err(|e| {
            self.err_at(
                t.span(),
                format!("{what} `{}` is not a duration: {e}", t.get_ref()),
            )
            .help("write a duration such as \"500ms\", \"30s\" or \"2m\"")
        })?;
        if d < Duration::from_millis(1) || d > MAX_TIMEOUT {
            return Err(self
                .err_at(
                    t.span(),
                    format!(
                        "{what} `{}` is outside the allowed range (1ms to 24h)",
                        t.get_ref()
                    ),
                )
                .help(range_help));
        }
        Ok(d)
    }

    fn count(&self, n: &Spanned<i64>, what: &str) -> Result<usize, ManifestError> {
        match usize::try_from(*n.get_ref()) {
            Ok(v) if (1..=MAX_CONCURRENT_REQUESTS).contains(&v) => Ok(v),
            _ => Err(self
                .err_at(
                    n.span(),
                    format!(
                        "`{what}` must be between 1 and {MAX_CONCURRENT_REQUESTS}, not {}",
                        n.get_ref()
                    ),
                )
                .help("write a number of requests such as 100")),
        }
    }

    /// A `destination`: an absolute guest path that does not climb with `..`.
    fn guest_destination(
        &self,
        span: std::ops::Range<usize>,
        feature: &dyn Fn(&str) -> String,
        destination: &str,
    ) -> Result<String, ManifestError> {
        if !destination.starts_with('/') || destination.split('/').any(|s| s == "..") {
            return Err(self
                .err_at(
                    span,
                    feature(&format!(
                        "file destination `{destination}` must be an absolute guest path without `..`"
                    )),
                )
                .help("write the guest path from the root, e.g. `destination = \"/static\"`"));
        }
        Ok(destination.to_string())
    }

    fn toml_error(&self, e: &toml::de::Error) -> ManifestError {
        let mut err = ManifestError::new(self.file, e.message().trim().to_string());
        if let Some(span) = e.span() {
            err.position = Some(self.locator.position(span.start));
        }
        let msg = e.message();
        let help = if msg.contains("unknown field") {
            "remove or rename the key; see docs/manifest.md for the keys wms reads"
        } else if msg.contains("missing field") {
            "add the missing key; see docs/manifest.md"
        } else if msg.contains("invalid type") {
            "fix the value's type; see docs/manifest.md"
        } else {
            "fix the TOML syntax at this position"
        };
        err.help(help)
    }

    fn find_key(&self, text: &str, key: &str) -> (usize, usize) {
        text.find(key).map_or((1, 1), |o| self.locator.position(o))
    }
}

fn is_empty(v: &toml::Value) -> bool {
    match v {
        toml::Value::Array(a) => a.is_empty(),
        toml::Value::Table(t) => t.is_empty(),
        toml::Value::String(s) => s.is_empty(),
        _ => false,
    }
}

//! The on-disk shape of a manifest: Spin manifest v2, restricted to what wms supports.
//!
//! Keys Spin accepts but wms cannot honour are parsed as raw values so that validation can name
//! them with their position; everything else is `deny_unknown_fields`.

use indexmap::IndexMap;
use serde::Deserialize;
use toml::Spanned;

pub type Raw = Option<Spanned<toml::Value>>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    #[expect(
        dead_code,
        reason = "accepted for Spin compatibility; wms does not use it"
    )]
    pub spin_manifest_version: Spanned<toml::Value>,
    pub application: Application,
    #[serde(default)]
    pub variables: IndexMap<Spanned<String>, Spanned<VariableDecl>>,
    #[serde(default)]
    pub trigger: Option<Spanned<Triggers>>,
    #[serde(default)]
    pub component: IndexMap<Spanned<String>, Spanned<Component>>,
}

/// `[variables] NAME = { ... }`: an application variable.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VariableDecl {
    #[serde(default)]
    pub default: Option<String>,
    #[serde(default)]
    pub required: bool,
    #[serde(default)]
    pub secret: bool,
    #[serde(default)]
    pub description: Option<String>,
}

/// `[[trigger.TYPE]]` tables. Spin's other trigger types are listed so they get a precise error.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Triggers {
    #[serde(default)]
    pub http: Vec<Spanned<HttpTrigger>>,
    #[serde(default)]
    pub redis: Raw,
    #[serde(default)]
    pub command: Raw,
    #[serde(default)]
    pub cron: Raw,
    #[serde(default)]
    pub sqs: Raw,
    #[serde(default)]
    pub mqtt: Raw,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppTriggers {
    #[serde(default)]
    pub http: Option<AppHttpTrigger>,
    #[serde(default)]
    pub redis: Raw,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Application {
    pub name: Spanned<String>,
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[expect(
        dead_code,
        reason = "accepted for Spin compatibility; wms does not use it"
    )]
    #[serde(default)]
    pub authors: Vec<String>,
    #[serde(default)]
    pub targets: Raw,
    #[serde(default)]
    pub trigger: Option<AppTriggers>,
    #[serde(default)]
    pub tool: AppTools,
}

/// `[application.tool]`: tables for tools; wms reads its own and ignores the others.
#[derive(Debug, Default, Deserialize)]
pub struct AppTools {
    #[serde(default)]
    pub wms: Option<Spanned<AppTool>>,
}

/// `[component.NAME.tool]`: tables for tools; wms reads its own and ignores the others.
#[derive(Debug, Default, Deserialize)]
pub struct ComponentTools {
    #[serde(default)]
    pub wms: Option<Spanned<ComponentTool>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppHttpTrigger {
    #[serde(default)]
    pub base: Option<Spanned<String>>,
}

/// `[application.tool.wms]`: process-wide limits.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppTool {
    #[serde(default)]
    pub max_concurrent_requests: Option<Spanned<i64>>,
    #[serde(default)]
    pub pool_resident_budget: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpTrigger {
    #[expect(
        dead_code,
        reason = "accepted for Spin compatibility; wms does not use it"
    )]
    #[serde(default)]
    pub id: Option<String>,
    pub route: Spanned<toml::Value>,
    #[serde(default)]
    pub component: Option<Spanned<toml::Value>>,
    #[serde(default)]
    pub executor: Option<Spanned<Executor>>,
    #[serde(default)]
    pub static_response: Raw,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Executor {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub argv: Option<String>,
    #[serde(default)]
    pub entrypoint: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Component {
    pub source: Spanned<toml::Value>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub environment: IndexMap<String, String>,
    #[serde(default)]
    pub files: Vec<Spanned<FileEntry>>,
    #[serde(default)]
    pub exclude_files: Vec<Spanned<String>>,
    #[serde(default)]
    pub allowed_outbound_hosts: Vec<Spanned<String>>,
    #[serde(default)]
    pub allowed_http_hosts: Raw,
    #[serde(default)]
    pub build: Option<Spanned<Build>>,
    #[serde(default)]
    pub tool: ComponentTools,
    #[serde(default)]
    pub variables: IndexMap<Spanned<String>, Spanned<String>>,
    #[serde(default)]
    pub key_value_stores: Vec<Spanned<String>>,
    #[serde(default)]
    pub sqlite_databases: Vec<Spanned<String>>,
    #[serde(default)]
    pub ai_models: Raw,
    #[serde(default)]
    pub dependencies: Raw,
    #[serde(default)]
    pub dependencies_inherit_configuration: Raw,
    #[serde(default)]
    pub targets: Raw,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum FileEntry {
    Pattern(String),
    Mapping {
        source: FileSource,
        destination: String,
    },
}

/// Where a `{ source, destination }` mapping's files come from: a directory (local manifests)
/// or a files layer of the image the manifest came from.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum FileSource {
    Path(String),
    Layer(LayerRef),
}

/// `{ digest = "sha256:..." }`: a layer of the image holding the manifest.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerRef {
    pub digest: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Build {
    pub command: Spanned<toml::Value>,
    #[serde(default)]
    pub workdir: Option<String>,
    #[serde(default)]
    pub watch: Vec<String>,
    #[serde(default)]
    pub environment: IndexMap<String, String>,
}

/// `[component.NAME.tool.wms]`: our per-component limits, under the table Spin reserves for tools
/// (Spin ignores it, so the same manifest still runs under `spin up`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComponentTool {
    #[serde(default)]
    pub timeout: Option<Spanned<String>>,
    #[serde(default)]
    pub max_memory: Option<Spanned<String>>,
    #[serde(default)]
    pub max_concurrent_requests: Option<Spanned<i64>>,
    /// WASI 0.3 components: requests one instance serves before a fresh one is made.
    #[serde(default)]
    pub max_requests: Option<Spanned<i64>>,
    /// WASI 0.3 components: requests one instance serves at once.
    #[serde(default)]
    pub max_concurrent_per_instance: Option<Spanned<i64>>,
    /// WASI 0.3 components: how long an instance with no request stays for the next one.
    #[serde(default)]
    pub idle_timeout: Option<Spanned<String>>,
    /// Outbound connections (HTTP, sockets, Redis, MQTT) all of the component's instances hold
    /// at once.
    #[serde(default)]
    pub max_outbound_connections: Option<Spanned<i64>>,
}

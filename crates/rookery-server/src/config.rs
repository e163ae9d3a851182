//! `rookery.toml`: bindings, migrations and `[vars]` shaped after `wrangler.toml`, plus
//! Rookery's own `[server]` settings, `[[routes]]`, `[auth]` and `[outbound]`.
//!
//! Every error names the file, the line and the problem.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rookery::{Durability, HistoryOptions, HostOptions, Migration, RuntimeOptions, StorageLimits};
use serde::Deserialize;
use toml::Spanned;

use crate::outbound::{AllowList, OutboundSettings};

/// The demo app's configuration, used when no file is given.
pub const DEMO_CONFIG: &str = include_str!("../../../examples/demo.toml");

/// A configuration that cannot be used, with where and why.
#[derive(Debug, thiserror::Error)]
#[error("{file}:{line}: {message}")]
pub struct ConfigError {
    /// The file the problem is in.
    pub file: String,
    /// The line, counted from 1 (0 when the problem has no single place).
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

/// The whole configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the configuration came from (a path, or `<built-in demo>`).
    pub source: String,
    /// The text it was read from, for locating later errors.
    pub text: String,
    /// `[server]`.
    pub server: ServerConfig,
    /// `[[durable_objects.bindings]]`.
    pub bindings: Vec<Binding>,
    /// `[[migrations]]`, in order.
    pub migrations: Vec<MigrationConfig>,
    /// `[[routes]]`, in order.
    pub routes: Vec<RouteConfig>,
    /// `[auth]`.
    pub auth: AuthConfig,
    /// `[worker]`: the code in front of the objects, if any.
    pub worker: Option<WorkerConfig>,
    /// `[vars]`: plain values objects read with `env.var`; values that are not strings are
    /// kept as JSON text.
    pub vars: BTreeMap<String, String>,
    /// `[outbound]`.
    pub outbound: OutboundConfig,
    /// `[cluster]`, when this server is one node of a cluster.
    pub cluster: Option<ClusterSection>,
    /// `[[r2_buckets]]`: blob stores, each in a local directory.
    pub buckets: Vec<BucketConfig>,
}

/// `[[r2_buckets]]`: a bucket (blob store) that objects and the worker reach with
/// `env.bucket(binding)`, kept in a local directory: `path`, or `<data_dir>/buckets/<bucket_name>`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BucketConfig {
    /// The binding name, e.g. `EVENTS_BUCKET`.
    pub binding: Spanned<String>,
    /// The bucket's name, e.g. `events`.
    pub bucket_name: Spanned<String>,
    /// The directory holding the bucket (relative to the working directory).
    #[serde(default)]
    pub path: Option<Spanned<PathBuf>>,
    /// wrangler's preview bucket; not used by Rookery.
    #[serde(default)]
    pub preview_bucket_name: Option<String>,
    /// wrangler's jurisdiction; not used by Rookery.
    #[serde(default)]
    pub jurisdiction: Option<String>,
}

impl BucketConfig {
    /// The directory holding the bucket's objects.
    pub fn dir(&self, data_dir: &Path) -> PathBuf {
        match &self.path {
            Some(p) => p.get_ref().clone(),
            None => data_dir.join("buckets").join(self.bucket_name.get_ref()),
        }
    }
}

/// Why `name` is not a valid binding name (`A-Z a-z 0-9 _`, not starting with a digit, at
/// most 64 bytes), if it is not.
fn binding_name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() || name.len() > 64 {
        Some("must be 1 to 64 characters")
    } else if name.starts_with(|c: char| c.is_ascii_digit()) {
        Some("must not start with a digit")
    } else if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        Some("may hold only letters, digits and '_'")
    } else {
        None
    }
}

/// Why `name` is not a valid bucket name (as R2's: 3 to 63 of `a-z 0-9 -`, starting and
/// ending with a letter or digit), if it is not.
fn bucket_name_problem(name: &str) -> Option<&'static str> {
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if name.len() < 3 || name.len() > 63 {
        Some("must be 3 to 63 characters")
    } else if !name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        Some("may hold only lowercase letters, digits and '-'")
    } else if !edge(name.chars().next()) || !edge(name.chars().last()) {
        Some("must start and end with a letter or digit")
    } else {
        None
    }
}

/// `[worker]`: a worker the server's code registered (`Classes::with_worker`), picked by name.
/// It sees every request no route takes, and those of routes with `worker = true`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerConfig {
    /// The worker's name, e.g. `Demo`.
    pub name: Spanned<String>,
}

/// `[cluster]`: this server as one node of a cluster over PostgreSQL (see
/// docs/OPERATIONS.md, "Cluster mode").
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    /// The PostgreSQL database every node shares, `postgres://user@host:port/database`.
    pub database_url: String,
    /// This node's name: unique in the cluster, the same across its restarts.
    pub node_id: String,
    /// The address other nodes reach this one at, `http://host:port`.
    pub advertise: String,
    /// How long this node owns its objects without renewing, in milliseconds.
    #[serde(default = "default_lease_ms")]
    pub lease_ms: u64,
    /// More PostgreSQL databases to spread objects over by a stable hash of their ids (with
    /// `database_url` the first); the same list, in the same order, on every node, for good.
    #[serde(default)]
    pub shards: Vec<String>,
}

fn default_lease_ms() -> u64 {
    rookery_cluster::DEFAULT_LEASE.as_millis() as u64
}

impl ClusterSection {
    /// The settings `rookery_cluster` takes.
    pub fn settings(&self) -> rookery_cluster::ClusterConfig {
        rookery_cluster::ClusterConfig {
            database_url: self.database_url.clone(),
            node_id: self.node_id.clone(),
            advertise: self.advertise.clone(),
            lease: Duration::from_millis(self.lease_ms),
            shards: self.shards.clone(),
        }
    }
}

/// `[outbound]`: what objects' outbound HTTP (`env.http()`) may reach, and its limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutboundConfig {
    /// Internal addresses (`127.0.0.1`), ranges (`10.0.0.0/8`, `fd00::/8`) and host names
    /// that requests may reach; public addresses need no entry.
    pub allow: Vec<Spanned<String>>,
    /// Time for a whole request, from connecting to the end of the response, in milliseconds.
    pub timeout_ms: u64,
    /// Time to connect, in milliseconds.
    pub connect_timeout_ms: u64,
    /// Largest response body accepted, in bytes.
    pub max_response_bytes: usize,
    /// Most redirects followed for one request.
    pub max_redirects: usize,
}

impl Default for OutboundConfig {
    fn default() -> Self {
        let s = OutboundSettings::default();
        Self {
            allow: Vec::new(),
            timeout_ms: millis(s.timeout),
            connect_timeout_ms: millis(s.connect_timeout),
            max_response_bytes: s.max_response_bytes,
            max_redirects: s.max_redirects,
        }
    }
}

impl OutboundConfig {
    /// The client settings these describe; the first allow entry that cannot be read, with
    /// its offset in the file and why, if any.
    pub fn settings(&self) -> Result<OutboundSettings, (usize, String)> {
        let allow = AllowList::parse(self.allow.iter().map(|e| e.get_ref().as_str())).map_err(
            |(entry, why)| {
                let at = self
                    .allow
                    .iter()
                    .find(|e| *e.get_ref() == entry)
                    .map_or(0, |e| e.span().start);
                (at, format!("[outbound] allow: {entry:?} is {why}"))
            },
        )?;
        Ok(OutboundSettings {
            allow,
            timeout: Duration::from_millis(self.timeout_ms),
            connect_timeout: Duration::from_millis(self.connect_timeout_ms),
            max_response_bytes: self.max_response_bytes,
            max_redirects: self.max_redirects,
            ..OutboundSettings::default()
        })
    }
}

/// `[auth]`: who the caller is, passed to objects in trusted headers.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Take the identity from the query parameters `user`, `name` and `permissions` when no
    /// bearer token is given. For demos only: anyone can claim any identity.
    pub query_identity: bool,
    /// Bearer tokens and the identity each one proves.
    pub tokens: BTreeMap<String, Identity>,
    /// `[auth.jwt]`: bearer JSON Web Tokens, verified with the keys it names.
    pub jwt: Option<JwtConfig>,
}

/// A caller's identity.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    /// The user's id.
    pub user: String,
    /// The user's display name.
    #[serde(default)]
    pub name: String,
    /// What the user may do, e.g. `["read", "write"]`.
    #[serde(default)]
    pub permissions: Vec<String>,
}

/// `[server]`: where to listen, where to keep data, and the runtime's limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Directory for all data.
    pub data_dir: PathBuf,
    /// A header that carries the client's IP (set by a trusted proxy); else the peer address.
    pub client_ip_header: Option<String>,
    /// Largest request body in bytes.
    pub max_body_bytes: usize,
    /// `strict` (survives power loss) or `relaxed` (survives a process crash).
    pub durability: Durability,
    /// Events that may wait for one object before it answers 503.
    pub mailbox_capacity: usize,
    /// Wall-time limit of one turn, in milliseconds.
    pub turn_timeout_ms: u64,
    /// Wall-time limit of an alarm handler's turn, in milliseconds.
    pub alarm_timeout_ms: u64,
    /// Idle time before an object is evicted, in milliseconds.
    pub idle_timeout_ms: u64,
    /// Idle time before an object whose only activity is hibernatable WebSockets is evicted.
    pub hibernation_idle_ms: u64,
    /// Most WebSockets per object.
    pub max_sockets_per_object: usize,
    /// Largest WebSocket message in bytes.
    pub max_ws_message_bytes: usize,
    /// Most objects in memory at once; 0: 100 000.
    pub max_live_objects: usize,
    /// Most objects with their database files open; 0 derives it from the open-file limit.
    pub max_open_databases: usize,
    /// Most memory live objects hold, in bytes (SQLite's heap plus an estimate per object);
    /// 0: 1 GiB.
    pub max_live_bytes: u64,
    /// Largest key in bytes.
    pub max_key_bytes: usize,
    /// Largest value in bytes.
    pub max_value_bytes: usize,
    /// Most keys per batch call.
    pub max_batch_keys: usize,
    /// Largest database of one object, in bytes.
    pub max_object_bytes: u64,
    /// Most SQLite page cache of one live object, in KiB.
    pub page_cache_kib: u32,
    /// Most prepared statements one live object keeps.
    pub statement_cache: usize,
    /// Time a client has to send a complete request head, from connecting or from the first
    /// byte of a later request on the same connection, in milliseconds.
    pub header_read_timeout_ms: u64,
    /// Idle time allowed between requests on one connection, in milliseconds.
    pub keep_alive_timeout_ms: u64,
    /// Time a client has to send the whole request body, in milliseconds; then 408.
    pub body_read_timeout_ms: u64,
    /// Most HTTP connections open at once; beyond it new ones are closed at once with a 503.
    pub max_connections: usize,
    /// Bearer token for the runtime's own endpoints (`/_rookery/...`). Without one they are
    /// open only while `[auth]` has no tokens.
    pub stats_token: Option<String>,
    /// Bearer token for the admin API (`/_rookery/admin/...`); without one it is off.
    pub admin_token: Option<String>,
    /// How far back objects can be restored (point-in-time recovery), in hours; 0 turns
    /// history off.
    pub history_retention_hours: u64,
    /// The most log kept as history, in bytes.
    pub history_max_bytes: u64,
    /// Most `wait_until` work one object may have registered or running.
    pub max_wait_until: usize,
    /// Wall-time limit of one piece of `wait_until` work, in milliseconds.
    pub wait_until_timeout_ms: u64,
    /// A file of secrets in `.dev.vars` form (`KEY=VALUE` lines), relative to the working
    /// directory; variables `ROOKERY_SECRET_<KEY>` add to and override it.
    pub secrets_file: Option<PathBuf>,
    /// Serve the built-in Waddle chat page at `/chat` (and its client at
    /// `/chat/waddle-client.js`), ahead of the configured routes. It needs the demo's routes
    /// (`/channel/:id`) and query identities; off by default.
    pub chat_page: bool,
    /// Record metrics and serve them at `/metrics` (on by default); off, the process installs
    /// no recorder and `/metrics` answers 404.
    pub metrics: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        let host = HostOptions::default();
        let storage = StorageLimits::default();
        let history = HistoryOptions::default();
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8787)),
            data_dir: PathBuf::from("./rookery-data"),
            client_ip_header: None,
            max_body_bytes: 16 * 1024 * 1024,
            durability: Durability::Strict,
            mailbox_capacity: host.mailbox_capacity,
            turn_timeout_ms: millis(host.turn_timeout),
            alarm_timeout_ms: millis(host.alarm_timeout),
            idle_timeout_ms: millis(host.idle_timeout),
            hibernation_idle_ms: millis(host.hibernation_idle),
            max_sockets_per_object: host.max_sockets_per_object,
            max_ws_message_bytes: host.max_message_bytes,
            max_live_objects: host.max_live_objects,
            max_open_databases: host.max_open_databases,
            max_live_bytes: host.max_live_bytes,
            max_key_bytes: storage.max_key_bytes,
            max_value_bytes: storage.max_value_bytes,
            max_batch_keys: storage.max_batch_keys,
            max_object_bytes: storage.max_object_bytes,
            page_cache_kib: storage.page_cache_kib,
            statement_cache: storage.statement_cache,
            header_read_timeout_ms: 10_000,
            keep_alive_timeout_ms: 60_000,
            body_read_timeout_ms: 30_000,
            max_connections: 10_000,
            stats_token: None,
            admin_token: None,
            history_retention_hours: millis(history.retention) / 3_600_000,
            history_max_bytes: history.max_bytes,
            max_wait_until: host.max_wait_until,
            wait_until_timeout_ms: millis(host.wait_until_timeout),
            secrets_file: None,
            chat_page: false,
            metrics: true,
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl ServerConfig {
    /// The runtime options these settings describe.
    pub fn runtime_options(&self) -> RuntimeOptions {
        RuntimeOptions {
            host: HostOptions {
                mailbox_capacity: self.mailbox_capacity,
                turn_timeout: Duration::from_millis(self.turn_timeout_ms),
                alarm_timeout: Duration::from_millis(self.alarm_timeout_ms),
                idle_timeout: Duration::from_millis(self.idle_timeout_ms),
                hibernation_idle: Duration::from_millis(self.hibernation_idle_ms),
                max_sockets_per_object: self.max_sockets_per_object,
                max_message_bytes: self.max_ws_message_bytes,
                max_live_objects: self.max_live_objects,
                max_open_databases: self.max_open_databases,
                max_live_bytes: self.max_live_bytes,
                max_wait_until: self.max_wait_until,
                wait_until_timeout: Duration::from_millis(self.wait_until_timeout_ms),
            },
            storage: StorageLimits {
                max_key_bytes: self.max_key_bytes,
                max_value_bytes: self.max_value_bytes,
                max_batch_keys: self.max_batch_keys,
                max_object_bytes: self.max_object_bytes,
                page_cache_kib: self.page_cache_kib,
                statement_cache: self.statement_cache,
            },
            durability: self.durability,
            history: HistoryOptions {
                retention: Duration::from_secs(self.history_retention_hours.saturating_mul(3600)),
                max_bytes: self.history_max_bytes,
            },
        }
    }
}

/// A binding: the name objects and routes use for a class's namespace.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Binding {
    /// The binding name, e.g. `COUNTER`.
    pub name: Spanned<String>,
    /// The class, e.g. `Counter`.
    pub class_name: Spanned<String>,
}

/// A class rename in a migration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rename {
    /// The old class name.
    pub from: String,
    /// The new class name.
    pub to: String,
}

/// `[[migrations]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigrationConfig {
    /// The migration's unique tag.
    pub tag: Spanned<String>,
    /// Classes to create.
    #[serde(default)]
    pub new_sqlite_classes: Vec<String>,
    /// Classes to create (wrangler's key for KV-backed classes; all Rookery classes use SQLite).
    #[serde(default)]
    pub new_classes: Vec<String>,
    /// Classes to rename.
    #[serde(default)]
    pub renamed_classes: Vec<Rename>,
    /// Classes to delete with all their data.
    #[serde(default)]
    pub deleted_classes: Vec<String>,
}

impl MigrationConfig {
    /// The migration as the runtime takes it.
    pub fn to_migration(&self) -> Migration {
        Migration {
            tag: self.tag.get_ref().clone(),
            new_classes: self
                .new_sqlite_classes
                .iter()
                .chain(&self.new_classes)
                .cloned()
                .collect(),
            renamed_classes: self
                .renamed_classes
                .iter()
                .map(|r| (r.from.clone(), r.to.clone()))
                .collect(),
            deleted_classes: self.deleted_classes.clone(),
        }
    }
}

/// A rate limit applied to a route, keyed by client IP.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Binding of the rate-limiter class.
    pub binding: Spanned<String>,
    /// Requests allowed per window.
    #[serde(default = "default_limit")]
    pub limit: u32,
    /// The window in milliseconds.
    #[serde(default = "default_window")]
    pub window_ms: u64,
}

fn default_limit() -> u32 {
    100
}

fn default_window() -> u64 {
    60_000
}

/// `[[routes]]`: a path pattern that leads to an object.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Path pattern, matched as a prefix: `/counter/:name` matches `/counter/a` and
    /// `/counter/a/increment`.
    pub path: Spanned<String>,
    /// Methods the route accepts; all when absent.
    #[serde(default)]
    pub methods: Option<Vec<String>>,
    /// The binding whose object receives the request; without one, the route only applies its
    /// rate limit and answers `{"ok":true}`.
    #[serde(default)]
    pub binding: Option<Spanned<String>>,
    /// Path parameter whose value names the object (`id_from_name`); or several joined by
    /// `/` (`"namespace/collection"`), whose values joined by `/` name it.
    #[serde(default)]
    pub name_from: Option<String>,
    /// Path parameter whose value is the object's hex id (`id_from_string`).
    #[serde(default)]
    pub id_from: Option<String>,
    /// What replaces the matched prefix in the path the object sees.
    #[serde(default = "default_rewrite")]
    pub rewrite: String,
    /// A rate limit checked before the route is served.
    #[serde(default)]
    pub rate_limit: Option<RateLimitConfig>,
    /// The worker takes this route's requests (after its method filter and rate limit), with
    /// their path as the client sent it.
    #[serde(default)]
    pub worker: bool,
}

fn default_rewrite() -> String {
    "/".to_string()
}

#[derive(Deserialize)]
struct RawConfig {
    #[serde(default)]
    server: ServerConfig,
    #[serde(default)]
    durable_objects: DurableObjects,
    #[serde(default)]
    migrations: Vec<MigrationConfig>,
    #[serde(default)]
    routes: Vec<RouteConfig>,
    #[serde(default)]
    auth: AuthConfig,
    #[serde(default)]
    worker: Option<WorkerConfig>,
    #[serde(default)]
    vars: BTreeMap<String, toml::Value>,
    #[serde(default)]
    outbound: OutboundConfig,
    #[serde(default)]
    cluster: Option<ClusterSection>,
    #[serde(default)]
    r2_buckets: Vec<BucketConfig>,
    /// Keys of `wrangler.toml` that Rookery does not use (name, main, compatibility_date, ...).
    #[serde(flatten)]
    other: BTreeMap<String, toml::Value>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DurableObjects {
    #[serde(default)]
    bindings: Vec<Binding>,
}

impl Config {
    /// Reads and checks the configuration file at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.display().to_string(),
            line: 0,
            message: format!("cannot read the file: {e}"),
        })?;
        Self::parse(&path.display().to_string(), &text)
    }

    /// The built-in demo app's configuration.
    pub fn demo() -> Self {
        // The demo configuration is part of the binary and checked by the tests.
        match Self::parse("<built-in demo>", DEMO_CONFIG) {
            Ok(config) => config,
            Err(e) => unreachable!("the built-in demo configuration is invalid: {e}"),
        }
    }

    /// Parses and checks configuration `text` read from `source`.
    pub fn parse(source: &str, text: &str) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let line = e.span().map_or(0, |s| line_of(text, s.start));
            ConfigError {
                file: source.to_string(),
                line,
                message: unknown_key_message(text, line, e.message().trim())
                    .unwrap_or_else(|| e.message().trim().to_string()),
            }
        })?;
        for key in raw.other.keys() {
            tracing::warn!(file = source, key = %key, "ignoring a configuration key Rookery does not use");
        }
        let config = Config {
            source: source.to_string(),
            text: text.to_string(),
            server: raw.server,
            bindings: raw.durable_objects.bindings,
            migrations: raw.migrations,
            routes: raw.routes,
            auth: raw.auth,
            worker: raw.worker,
            vars: raw
                .vars
                .into_iter()
                .map(|(name, value)| {
                    let text = match value {
                        toml::Value::String(s) => s,
                        // As wrangler hands objects non-string vars: as JSON.
                        other => serde_json::to_string(&other).unwrap_or_default(),
                    };
                    (name, text)
                })
                .collect(),
            outbound: raw.outbound,
            cluster: raw.cluster,
            buckets: raw.r2_buckets,
        };
        config.check()?;
        Ok(config)
    }

    /// The `[[r2_buckets]]` as the runtime takes them.
    pub fn buckets(&self, data_dir: &Path) -> rookery::Buckets {
        let mut buckets = rookery::Buckets::new();
        for b in &self.buckets {
            buckets.bind(
                b.binding.get_ref(),
                b.bucket_name.get_ref(),
                b.dir(data_dir),
            );
        }
        buckets
    }

    /// An error at byte offset `at` of the text.
    pub fn error_at(&self, at: usize, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.source.clone(),
            line: line_of(&self.text, at),
            message: message.into(),
        }
    }

    /// An error with no single place in the text.
    pub fn error(&self, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.source.clone(),
            line: 0,
            message: message.into(),
        }
    }

    /// The line of `key = ...` in table `section` (e.g. `[server]`), or 0 if the text does not
    /// set it.
    fn key_line(&self, section: &str, key: &str) -> usize {
        let mut in_section = false;
        for (i, line) in self.text.lines().enumerate() {
            let line = line.trim_start();
            if line.starts_with('[') {
                in_section = line.starts_with(section);
            } else if in_section
                && line
                    .strip_prefix(key)
                    .is_some_and(|rest| rest.trim_start().starts_with('='))
            {
                return i + 1;
            }
        }
        0
    }

    fn check_server(&self) -> Result<(), ConfigError> {
        let s = &self.server;
        let error = |key: &str, message: &str| ConfigError {
            file: self.source.clone(),
            line: self.key_line("[server]", key),
            message: format!("{key}: {message}"),
        };
        for (key, value) in [
            ("header_read_timeout_ms", s.header_read_timeout_ms),
            ("keep_alive_timeout_ms", s.keep_alive_timeout_ms),
            ("body_read_timeout_ms", s.body_read_timeout_ms),
            ("wait_until_timeout_ms", s.wait_until_timeout_ms),
            (
                "max_wait_until",
                u64::try_from(s.max_wait_until).unwrap_or(u64::MAX),
            ),
        ] {
            if value == 0 {
                return Err(error(key, "must be above zero"));
            }
        }
        if !(1..=tokio::sync::Semaphore::MAX_PERMITS).contains(&s.max_connections) {
            return Err(error(
                "max_connections",
                &format!(
                    "must be between 1 and {}",
                    tokio::sync::Semaphore::MAX_PERMITS
                ),
            ));
        }
        if s.admin_token.as_ref().is_some_and(|t| t.trim().len() < 16) {
            return Err(error(
                "admin_token",
                "must be at least 16 characters (leave it out to keep the admin API off)",
            ));
        }
        if s.stats_token.as_ref().is_some_and(|t| t.trim().is_empty()) {
            return Err(error(
                "stats_token",
                "must not be empty (leave it out to keep the endpoints closed)",
            ));
        }
        Ok(())
    }

    fn check_outbound(&self) -> Result<(), ConfigError> {
        let o = &self.outbound;
        for (key, value) in [
            ("timeout_ms", o.timeout_ms),
            ("connect_timeout_ms", o.connect_timeout_ms),
            (
                "max_response_bytes",
                u64::try_from(o.max_response_bytes).unwrap_or(u64::MAX),
            ),
        ] {
            if value == 0 {
                return Err(ConfigError {
                    file: self.source.clone(),
                    line: self.key_line("[outbound]", key),
                    message: format!("[outbound] {key}: must be above zero"),
                });
            }
        }
        o.settings()
            .map(drop)
            .map_err(|(at, message)| self.error_at(at, message))
    }

    fn check_buckets(&self) -> Result<(), ConfigError> {
        let mut seen = HashSet::new();
        for b in &self.buckets {
            let (binding, name) = (b.binding.get_ref(), b.bucket_name.get_ref());
            if let Some(problem) = binding_name_problem(binding) {
                return Err(self.error_at(
                    b.binding.span().start,
                    format!("[[r2_buckets]] binding {binding:?} {problem}"),
                ));
            }
            if !seen.insert(binding.as_str()) {
                return Err(self.error_at(
                    b.binding.span().start,
                    format!("[[r2_buckets]] binding {binding:?} is declared twice"),
                ));
            }
            if self.bindings.iter().any(|d| d.name.get_ref() == binding) {
                return Err(self.error_at(
                    b.binding.span().start,
                    format!(
                        "[[r2_buckets]] binding {binding:?} is also a [durable_objects] binding"
                    ),
                ));
            }
            if let Some(problem) = bucket_name_problem(name) {
                return Err(self.error_at(
                    b.bucket_name.span().start,
                    format!("[[r2_buckets]] bucket_name {name:?} {problem}"),
                ));
            }
            if let Some(path) = b
                .path
                .as_ref()
                .filter(|p| p.get_ref().as_os_str().is_empty())
            {
                return Err(self.error_at(
                    path.span().start,
                    "[[r2_buckets]] path must not be empty (leave it out for <data_dir>/buckets/<bucket_name>)",
                ));
            }
        }
        Ok(())
    }

    fn check(&self) -> Result<(), ConfigError> {
        self.check_server()?;
        self.check_outbound()?;
        self.check_buckets()?;
        let mut bindings = HashSet::new();
        for b in &self.bindings {
            if !bindings.insert(b.name.get_ref().as_str()) {
                return Err(self.error_at(
                    b.name.span().start,
                    format!("binding {:?} is declared twice", b.name.get_ref()),
                ));
            }
        }
        let mut tags = HashSet::new();
        for m in &self.migrations {
            if !tags.insert(m.tag.get_ref().as_str()) {
                return Err(self.error_at(
                    m.tag.span().start,
                    format!("migration tag {:?} is used twice", m.tag.get_ref()),
                ));
            }
        }
        let known = |b: &Spanned<String>| -> Result<(), ConfigError> {
            if bindings.contains(b.get_ref().as_str()) {
                Ok(())
            } else {
                Err(self.error_at(
                    b.span().start,
                    format!("no binding named {:?} in [durable_objects]", b.get_ref()),
                ))
            }
        };
        for r in &self.routes {
            let at = r.path.span().start;
            if !r.path.get_ref().starts_with('/') {
                return Err(self.error_at(at, "a route path must start with '/'"));
            }
            if !r.rewrite.starts_with('/') {
                return Err(self.error_at(at, "a route's rewrite must start with '/'"));
            }
            if r.worker {
                if r.binding.is_some() {
                    return Err(
                        self.error_at(at, "a route goes to a binding or to the worker, not both")
                    );
                }
                if self.worker.is_none() {
                    return Err(self.error_at(
                        at,
                        "the route goes to the worker, but there is no [worker] name = \"...\"",
                    ));
                }
            } else if let Some(b) = &r.binding {
                known(b)?;
                match (&r.name_from, &r.id_from) {
                    (Some(_), Some(_)) => {
                        return Err(
                            self.error_at(at, "a route takes name_from or id_from, not both")
                        );
                    }
                    (None, None) => {
                        return Err(self.error_at(
                            at,
                            "a route with a binding needs name_from or id_from to pick the object",
                        ));
                    }
                    (Some(name_from), None) | (None, Some(name_from)) => {
                        let params = crate::route_pattern::params_of(r.path.get_ref());
                        let wanted = match &r.name_from {
                            Some(_) => crate::route_pattern::name_params(name_from),
                            None => vec![name_from.as_str()],
                        };
                        if let Some(p) = wanted.iter().find(|p| !params.iter().any(|q| q == *p)) {
                            return Err(self.error_at(
                                at,
                                format!("the path has no parameter {p:?} (it has {params:?})"),
                            ));
                        }
                    }
                }
            } else if r.rate_limit.is_none() {
                return Err(self.error_at(
                    at,
                    "a route needs a binding, worker = true, or a rate_limit",
                ));
            }
            if let Some(rl) = &r.rate_limit {
                known(&rl.binding)?;
                if rl.limit == 0 || rl.window_ms == 0 {
                    return Err(self.error_at(
                        rl.binding.span().start,
                        "a rate limit needs limit and window_ms above zero",
                    ));
                }
            }
            if let Some(methods) = &r.methods {
                for m in methods {
                    if http::Method::from_bytes(m.as_bytes()).is_err() {
                        return Err(self.error_at(at, format!("{m:?} is not an HTTP method")));
                    }
                }
            }
        }
        Ok(())
    }
}

/// Serde's "unknown field `k`, expected one of `a`, `b`" for a key of Rookery's own sections,
/// said as what it is: the key, where it is, and every key that is valid there.
fn unknown_key_message(text: &str, line: usize, message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field ")?;
    // Backquoted names: the unknown key, then every field of the table (serde lists them all).
    let mut names = rest.split('`').skip(1).step_by(2);
    let key = names.next()?;
    let valid: Vec<String> = names.map(|n| format!("`{n}`")).collect();
    let lines: Vec<&str> = text.lines().collect();
    let header = lines
        .get(..line.saturating_sub(1))
        .unwrap_or_default()
        .iter()
        .rev()
        .map(|l| l.split('#').next().unwrap_or_default().trim())
        .find(|l| l.starts_with('['));
    let inline = lines
        .get(line.saturating_sub(1))
        .is_some_and(|l| l.contains('{'));
    let place = match (header, inline) {
        (Some(h), false) => format!(" in {h}"),
        (Some(h), true) => format!(" in an inline table under {h}"),
        (None, _) => String::new(),
    };
    let valid = if valid.is_empty() {
        "none".to_string()
    } else {
        valid.join(", ")
    };
    Some(format!("unknown key `{key}`{place}; valid keys: {valid}"))
}

/// The 1-based line of byte offset `at` in `text`.
fn line_of(text: &str, at: usize) -> usize {
    text.as_bytes()[..at.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// `[auth.jwt]`: how bearer JWTs are verified and read.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// A file holding the HS256 shared secret (its bytes, without a trailing newline).
    #[serde(default)]
    pub hs256_secret_file: Option<PathBuf>,
    /// A PEM file holding an RSA public key: tokens signed RS256.
    #[serde(default)]
    pub rs256_public_key_file: Option<PathBuf>,
    /// A PEM file holding an Ed25519 public key: tokens signed EdDSA.
    #[serde(default)]
    pub eddsa_public_key_file: Option<PathBuf>,
    /// A JWKS file (`{"keys":[..]}`): RSA, Ed25519, P-256/P-384 and HMAC keys, picked by `kid`.
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// The `iss` a token must carry; any (or none) when unset.
    #[serde(default)]
    pub issuer: Option<String>,
    /// An `aud` a token must carry; when unset, a token with an `aud` is refused.
    #[serde(default)]
    pub audience: Option<String>,
    /// Seconds of clock skew allowed on `exp` and `nbf`.
    #[serde(default = "default_leeway")]
    pub leeway_seconds: u64,
    /// The claim holding the user id.
    #[serde(default = "default_user_claim")]
    pub user_claim: String,
    /// The claim holding the display name (the user id when absent).
    #[serde(default = "default_name_claim")]
    pub name_claim: String,
    /// The claim holding the permissions: an array of strings, or one string separated by
    /// spaces or commas (an OAuth `scope`).
    #[serde(default = "default_permissions_claim")]
    pub permissions_claim: String,
    /// The permissions of a token without the permissions claim.
    #[serde(default = "default_permissions")]
    pub default_permissions: Vec<String>,
}

fn default_leeway() -> u64 {
    30
}
fn default_user_claim() -> String {
    "sub".into()
}
fn default_name_claim() -> String {
    "name".into()
}
fn default_permissions_claim() -> String {
    "permissions".into()
}
fn default_permissions() -> Vec<String> {
    vec!["read".into()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_config_parses() {
        let c = Config::demo();
        assert_eq!(c.bindings.len(), 14);
        assert_eq!(c.server.listen, SocketAddr::from(([127, 0, 0, 1], 8787)));
        assert!(c.server.chat_page, "the demo serves the chat page");
        assert!(!Config::parse("x.toml", "").unwrap().server.chat_page);
        assert!(
            Config::parse("x.toml", "").unwrap().server.metrics,
            "on by default"
        );
        let off = Config::parse("x.toml", "[server]\nmetrics = false\n").unwrap();
        assert!(!off.server.metrics);
    }

    #[test]
    fn alarm_handlers_have_their_own_time_limit() {
        let limits = |text: &str| {
            Config::parse("x.toml", text)
                .unwrap()
                .server
                .runtime_options()
        };
        let default = limits("");
        assert_eq!(default.host.alarm_timeout, Duration::from_secs(15 * 60));
        assert_eq!(default.host.turn_timeout, Duration::from_secs(30));
        let set = limits("[server]\nalarm_timeout_ms = 60000\n");
        assert_eq!(set.host.alarm_timeout, Duration::from_secs(60));
    }

    #[test]
    fn syntax_errors_name_file_and_line() {
        let e = Config::parse(
            "x.toml",
            "[server]\nlisten = \"127.0.0.1:1\"\nmailbox_capacity = \"many\"\n",
        )
        .unwrap_err();
        assert_eq!((e.file.as_str(), e.line), ("x.toml", 3), "{e}");
        assert!(e.to_string().starts_with("x.toml:3: "), "{e}");
    }

    #[test]
    fn unknown_keys_in_sections_are_errors() {
        let e = Config::parse("x.toml", "[server]\n\nlisten_on = \"a\"\n").unwrap_err();
        assert_eq!(e.line, 3, "{e}");
        assert!(e.message.contains("listen_on"), "{e}");
    }

    /// Every key `[server]` takes, as README documents them.
    const SERVER_KEYS: &[&str] = &[
        "listen",
        "data_dir",
        "client_ip_header",
        "max_body_bytes",
        "durability",
        "mailbox_capacity",
        "turn_timeout_ms",
        "alarm_timeout_ms",
        "idle_timeout_ms",
        "hibernation_idle_ms",
        "max_sockets_per_object",
        "max_ws_message_bytes",
        "max_live_objects",
        "max_open_databases",
        "max_live_bytes",
        "max_key_bytes",
        "max_value_bytes",
        "max_batch_keys",
        "max_object_bytes",
        "page_cache_kib",
        "statement_cache",
        "header_read_timeout_ms",
        "keep_alive_timeout_ms",
        "body_read_timeout_ms",
        "max_connections",
        "stats_token",
        "admin_token",
        "history_retention_hours",
        "history_max_bytes",
        "max_wait_until",
        "wait_until_timeout_ms",
        "secrets_file",
        "chat_page",
        "metrics",
    ];

    #[test]
    fn an_unknown_key_names_itself_its_place_and_every_valid_key() {
        let cases: &[(&str, usize, &str, &str, &[&str])] = &[
            (
                "[server]\nlisten = \"127.0.0.1:1\"\nmax_conections = 5\n",
                3,
                "max_conections",
                "in [server]",
                SERVER_KEYS,
            ),
            (
                "[[routes]]  # the API\npath = \"/a\"\nbindng = \"X\"\n",
                3,
                "bindng",
                "in [[routes]]",
                &[
                    "path",
                    "methods",
                    "binding",
                    "name_from",
                    "id_from",
                    "rewrite",
                    "rate_limit",
                    "worker",
                ],
            ),
            (
                "[[routes]]\npath = \"/a\"\nrate_limit = { binding = \"R\", limt = 5 }\n",
                3,
                "limt",
                "in an inline table under [[routes]]",
                &["binding", "limit", "window_ms"],
            ),
            (
                "[auth]\nquery = true\n",
                2,
                "query",
                "in [auth]",
                &["query_identity", "tokens", "jwt"],
            ),
            (
                "[durable_objects]\nbindings = [{ name = \"A\", class_name = \"B\", script_name = \"c\" }]\n",
                2,
                "script_name",
                "in an inline table under [durable_objects]",
                &["name", "class_name"],
            ),
            (
                "[[migrations]]\ntag = \"v1\"\nnew_clases = []\n",
                3,
                "new_clases",
                "in [[migrations]]",
                &[
                    "tag",
                    "new_sqlite_classes",
                    "new_classes",
                    "renamed_classes",
                    "deleted_classes",
                ],
            ),
        ];
        for (text, line, key, place, valid) in cases {
            let e = Config::parse("x.toml", text).unwrap_err();
            assert_eq!((e.file.as_str(), e.line), ("x.toml", *line), "{e}");
            assert!(
                e.message
                    .starts_with(&format!("unknown key `{key}` {place};")),
                "{e}"
            );
            let listed = e.message.split("valid keys: ").nth(1).unwrap_or_default();
            let listed: Vec<&str> = listed.split(", ").map(|k| k.trim_matches('`')).collect();
            assert_eq!(listed, *valid, "{e}");
        }
    }

    #[test]
    fn wrangler_keys_rookery_does_not_use_are_only_warned_about() {
        let c = Config::parse(
            "wrangler.toml",
            "name = \"app\"\nmain = \"src/index.ts\"\ncompatibility_date = \"2024-01-01\"\n[vars]\nA = \"1\"\n[server]\nlisten = \"127.0.0.1:1\"\n",
        )
        .unwrap();
        assert_eq!(c.server.listen, SocketAddr::from(([127, 0, 0, 1], 1)));
    }

    #[test]
    fn connection_settings_have_defaults_and_must_be_above_zero() {
        let c = Config::parse("x.toml", "").unwrap();
        assert_eq!(c.server.header_read_timeout_ms, 10_000);
        assert_eq!(c.server.keep_alive_timeout_ms, 60_000);
        assert_eq!(c.server.body_read_timeout_ms, 30_000);
        assert_eq!(c.server.max_connections, 10_000);
        assert_eq!(c.server.stats_token, None);
        for key in [
            "header_read_timeout_ms",
            "keep_alive_timeout_ms",
            "body_read_timeout_ms",
            "max_connections",
        ] {
            let e =
                Config::parse("x.toml", &format!("[server]\n# limits\n{key} = 0\n")).unwrap_err();
            assert_eq!(e.line, 3, "{e}");
            assert!(e.message.starts_with(key), "{e}");
        }
        let e = Config::parse("x.toml", "[server]\nstats_token = \" \"\n").unwrap_err();
        assert_eq!(e.line, 2, "{e}");
        assert!(e.message.starts_with("stats_token"), "{e}");
    }

    #[test]
    fn buckets_are_bound_in_the_data_directory_or_at_their_path() {
        let c = Config::parse(
            "x.toml",
            "[[r2_buckets]]\nbinding = \"EVENTS_BUCKET\"\nbucket_name = \"events\"\n\
             [[r2_buckets]]\nbinding = \"LOGS\"\nbucket_name = \"logs-1\"\npath = \"/srv/logs\"\n\
             preview_bucket_name = \"logs-preview\"\n",
        )
        .unwrap();
        let data = Path::new("/data");
        assert_eq!(c.buckets.len(), 2);
        assert_eq!(c.buckets[0].dir(data), Path::new("/data/buckets/events"));
        assert_eq!(c.buckets[1].dir(data), Path::new("/srv/logs"));
        let bound = c.buckets(data);
        assert_eq!(bound.names().collect::<Vec<_>>(), ["EVENTS_BUCKET", "LOGS"]);
        assert_eq!(bound.get("LOGS").unwrap().name(), "logs-1");
    }

    #[test]
    fn the_events_example_binds_its_bucket_and_writer() {
        let c = Config::parse(
            "examples/events.toml",
            include_str!("../../../examples/events.toml"),
        )
        .unwrap();
        let b = &c.buckets[0];
        assert_eq!(
            (
                b.binding.get_ref().as_str(),
                b.bucket_name.get_ref().as_str()
            ),
            ("EVENTS_BUCKET", "events")
        );
        assert_eq!(
            b.dir(&c.server.data_dir),
            c.server.data_dir.join("buckets/events")
        );
        assert!(
            c.bindings
                .iter()
                .any(|b| b.name.get_ref() == "EVENT_WRITER"
                    && b.class_name.get_ref() == "EventWriter")
        );
    }

    #[test]
    fn bucket_names_and_bindings_are_checked_with_their_place() {
        let one = |binding: &str, name: &str| {
            format!("[[r2_buckets]]\nbinding = \"{binding}\"\nbucket_name = \"{name}\"\n")
        };
        for (text, line, says) in [
            (one("EVENTS", "Events"), 3, "lowercase"),
            (one("EVENTS", "ev"), 3, "3 to 63"),
            (one("EVENTS", "-events"), 3, "start and end"),
            (one("EVENTS", "a_b_c"), 3, "lowercase"),
            (one("9LIVES", "events"), 2, "digit"),
            (one("EV-ENTS", "events"), 2, "letters, digits"),
            (
                format!("{}{}", one("B", "one"), one("B", "two")),
                5,
                "declared twice",
            ),
            (
                format!(
                    "[[durable_objects.bindings]]\nname = \"B\"\nclass_name = \"Counter\"\n{}",
                    one("B", "one")
                ),
                5,
                "[durable_objects]",
            ),
            (format!("{}path = \"\"\n", one("B", "one")), 4, "path"),
        ] {
            let e = Config::parse("x.toml", &text).unwrap_err();
            assert_eq!((e.file.as_str(), e.line), ("x.toml", line), "{text}: {e}");
            assert!(e.message.contains(says), "{text}: {e}");
        }
        let e = Config::parse(
            "x.toml",
            "[[r2_buckets]]\nbinding = \"B\"\nbucket_name = \"bbb\"\nbucket = \"x\"\n",
        )
        .unwrap_err();
        assert_eq!(e.line, 4, "{e}");
        assert!(
            e.message.contains("`bucket`") && e.message.contains("`bucket_name`"),
            "{e}"
        );
    }

    #[test]
    fn routes_must_name_known_bindings_and_parameters() {
        let base = "[[durable_objects.bindings]]\nname = \"C\"\nclass_name = \"Counter\"\n";
        let e = Config::parse(
            "x.toml",
            &format!(
                "{base}[[routes]]\npath = \"/c/:name\"\nbinding = \"D\"\nname_from = \"name\"\n"
            ),
        )
        .unwrap_err();
        assert_eq!(e.line, 6, "{e}");
        assert!(e.message.contains("\"D\""), "{e}");
        let e = Config::parse(
            "x.toml",
            &format!(
                "{base}[[routes]]\npath = \"/c/:name\"\nbinding = \"C\"\nname_from = \"nom\"\n"
            ),
        )
        .unwrap_err();
        assert_eq!(e.line, 5, "{e}");
        assert!(e.message.contains("nom"), "{e}");
        // A name made of two parameters: both must be in the path.
        let two = "[[routes]]\npath = \"/c/:a/:b\"\nbinding = \"C\"\nname_from = ";
        let c = Config::parse("x.toml", &format!("{base}{two}\"a/b\"\n")).unwrap();
        assert_eq!(c.routes[0].name_from.as_deref(), Some("a/b"));
        let e = Config::parse("x.toml", &format!("{base}{two}\"a/c\"\n")).unwrap_err();
        assert!(e.message.contains("\"c\""), "{e}");
    }

    #[test]
    fn routes_go_to_the_worker_only_when_there_is_one() {
        let route = "[[routes]]\npath = \"/api\"\nworker = true\n";
        let e = Config::parse("x.toml", route).unwrap_err();
        assert_eq!(e.line, 2, "{e}");
        assert!(e.message.contains("[worker]"), "{e}");
        let c = Config::parse("x.toml", &format!("[worker]\nname = \"Demo\"\n{route}")).unwrap();
        assert_eq!(c.worker.unwrap().name.get_ref(), "Demo");
        assert!(c.routes[0].worker);
        let e = Config::parse("x.toml", "[worker]\nnam = \"Demo\"\n").unwrap_err();
        assert!(e.message.contains("valid keys: `name`"), "{e}");
    }

    #[test]
    fn wrangler_keys_are_accepted() {
        let c = Config::parse(
            "wrangler.toml",
            "name = \"durable-app\"\nmain = \"src/index.ts\"\n[durable_objects]\nbindings = [{ name = \"COUNTER\", class_name = \"Counter\" }]\n[[migrations]]\ntag = \"v1\"\nnew_classes = [\"Counter\"]\n",
        )
        .unwrap();
        assert_eq!(c.migrations[0].to_migration().new_classes, vec!["Counter"]);
    }
}

//! The Rookery server: reads `rookery.toml`, builds the runtime and serves the HTTP gateway.
//!
//! The `rookery` binary is thin glue over [`Server`]; tests and embedders use it directly, with
//! their own object classes.

mod admin;
pub mod admin_client;
mod admin_page;
mod chat_page;
mod client_ip;
pub mod cluster;
pub mod config;
mod conn;
mod forwarded;
mod gateway;
pub mod identity;
pub mod jwt;
mod memory_trim;
pub mod otel;
pub mod outbound;
mod prometheus;
mod reply;
mod route_pattern;
mod routes;
pub mod secrets;
mod socket_io;
mod socket_proxy;
mod static_asset;
mod stream_io;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use http::HeaderName;
use rookery::{Classes, Runtime};
use tokio::net::TcpListener;

pub use config::{Config, ConfigError};
pub use gateway::{HEALTHZ_PATH, READYZ_PATH, REQUEST_ID, STATS_PATH};
pub use prometheus::METRICS_PATH;

use conn::{ConnLimits, Connections};
use gateway::{Gateway, RequestIds, RuntimeAccess};
use routes::Routes;

/// Why the server cannot start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The runtime could not start.
    #[error(transparent)]
    Start(#[from] rookery::StartError),
    /// The runtime failed.
    #[error(transparent)]
    Runtime(#[from] rookery::Error),
    /// Listening or serving failed.
    #[error("serving HTTP: {0}")]
    Io(#[from] std::io::Error),
    /// The cluster could not be joined.
    #[error("joining the cluster: {0}")]
    Cluster(String),
}

/// A configured server, ready to serve.
pub struct Server {
    runtime: Runtime,
    gateway: Arc<Gateway>,
}

/// Joins the cluster `config` names (`[cluster]`), if any: before [`Server::in_cluster`].
pub async fn join_cluster(
    config: &Config,
) -> Result<Option<Arc<rookery_cluster::Cluster>>, ServerError> {
    let Some(section) = &config.cluster else {
        return Ok(None);
    };
    let cluster = rookery_cluster::Cluster::connect(section.settings())
        .await
        .map_err(|e| ServerError::Cluster(e.to_string()))?;
    Ok(Some(Arc::new(cluster)))
}

/// Who may use `/_rookery/...`: the stats token's holders; without one, anyone only while no
/// bearer tokens or JWT keys are configured (the demo), since a deployment with tokens expects no public
/// endpoints.
fn runtime_access(config: &Config) -> RuntimeAccess {
    match &config.server.stats_token {
        Some(token) => RuntimeAccess::Token(token.trim().to_string()),
        None if config.auth.tokens.is_empty() && config.auth.jwt.is_none() => RuntimeAccess::Open,
        None => RuntimeAccess::Closed,
    }
}

impl Server {
    /// Opens the data directory, applies migrations and compiles the routes of `config`, with
    /// `classes` available to its bindings. Everything that can be checked is checked before
    /// the data directory is touched: a configuration that cannot serve applies no migration.
    pub fn new(config: &Config, classes: Classes) -> Result<Self, ServerError> {
        Self::build(config, classes, None)
    }

    /// [`Server::new`] for one node of `cluster` (see [`join_cluster`]): objects are owned
    /// through it, commits fenced by it, and requests for objects other nodes own forwarded.
    pub fn in_cluster(
        config: &Config,
        classes: Classes,
        cluster: Arc<rookery_cluster::Cluster>,
    ) -> Result<Self, ServerError> {
        Self::build(config, classes, Some(cluster))
    }

    fn build(
        config: &Config,
        classes: Classes,
        cluster: Option<Arc<rookery_cluster::Cluster>>,
    ) -> Result<Self, ServerError> {
        Routes::check(config)?;
        // Before the runtime and the routes exist: handles made before a recorder is installed
        // record nowhere (which is what `metrics = false` wants).
        if config.server.metrics {
            prometheus::handle();
        }
        for b in &config.bindings {
            if !classes.contains(b.class_name.get_ref()) {
                return Err(config
                    .error_at(
                        b.class_name.span().start,
                        format!(
                            "class {:?} is not known to this server (known: {})",
                            b.class_name.get_ref(),
                            classes.names().join(", ")
                        ),
                    )
                    .into());
            }
        }
        let worker = match &config.worker {
            None => None,
            Some(w) => Some(classes.worker(w.name.get_ref()).cloned().ok_or_else(|| {
                let known = classes.worker_names();
                config.error_at(
                    w.name.span().start,
                    format!(
                        "no worker named {:?} is known to this server (known: {})",
                        w.name.get_ref(),
                        if known.is_empty() {
                            "none".to_string()
                        } else {
                            known.join(", ")
                        }
                    ),
                )
            })?),
        };
        let outbound = config
            .outbound
            .settings()
            .map_err(|(at, message)| config.error_at(at, message))?;
        let auth = identity::Authenticator::new(&config.auth)
            .map_err(|e| config.error(format!("[auth.jwt]: {e}")))?;
        let mut builder = Runtime::builder(&config.server.data_dir)
            .classes(classes)
            .options(config.server.runtime_options())
            .vars(secrets::load(config, std::env::vars_os())?)
            .outbound(Arc::new(outbound::HttpClient::new(outbound)?))
            .buckets(config.buckets(&config.server.data_dir));
        if let Some(cluster) = &cluster {
            builder = builder
                .commit_log(cluster.commit_log())
                .class_keys(cluster.class_keys())
                .placement(cluster.placement())
                .forwarder(cluster::forwarder(cluster.clone())?);
        }
        for b in &config.bindings {
            builder = builder.binding(b.name.get_ref(), b.class_name.get_ref());
        }
        for m in &config.migrations {
            builder = builder.migration(m.to_migration());
        }
        let runtime = builder.build().map_err(|e| locate(config, e))?;
        let client_ip_header = match &config.server.client_ip_header {
            Some(h) => Some(HeaderName::try_from(h.as_str()).map_err(|_| {
                config.error(format!("client_ip_header {h:?} is not a valid header name"))
            })?),
            None => None,
        };
        let server = &config.server;
        let connections = Arc::new(Connections::new(ConnLimits {
            header_read: Duration::from_millis(server.header_read_timeout_ms),
            keep_alive: Duration::from_millis(server.keep_alive_timeout_ms),
            max_connections: server.max_connections,
        }));
        let gateway = Arc::new(Gateway {
            routes: Routes::build(config, &runtime)?,
            runtime: runtime.clone(),
            client_ip_header,
            max_body_bytes: server.max_body_bytes,
            max_message_bytes: server.max_ws_message_bytes,
            body_read_timeout: Duration::from_millis(server.body_read_timeout_ms),
            auth,
            runtime_access: runtime_access(config),
            admin_token: server.admin_token.as_ref().map(|t| t.trim().to_string()),
            chat_page: server.chat_page,
            metrics: server.metrics,
            connections,
            request_ids: RequestIds::new(),
            worker,
            env: runtime.env(),
            stopping: tokio::sync::watch::Sender::new(false),
            own_metrics: prometheus::OwnRoutes::new(),
            cluster,
        });
        Ok(Self { runtime, gateway })
    }

    /// The runtime behind the gateway.
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// The HTTP application, for embedding in another server. It needs the peer address as
    /// axum's `ConnectInfo<SocketAddr>`; the connection timeouts and limit are
    /// [`Server::serve`]'s, not the router's.
    pub fn router(&self) -> Router {
        Router::new()
            .fallback(gateway::handle)
            .with_state(self.gateway.clone())
    }

    /// Serves on `listener` until `shutdown` completes; then stops accepting, lets running
    /// requests finish and closes every object's storage. While serving, memory freed by
    /// objects that came and went is handed back to the system (`memory_trim`).
    ///
    /// Connections follow `[server]`: `header_read_timeout_ms`, `keep_alive_timeout_ms` and
    /// `max_connections` (see `conn.rs`); the gateway applies `body_read_timeout_ms`.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        // Running requests get as long as a turn may take; a request stuck beyond that must
        // not keep the process from stopping.
        let grace = self.runtime.options().host.turn_timeout + Duration::from_secs(5);
        let trimming = memory_trim::spawn(self.runtime.clone());
        if let Some(cluster) = &self.gateway.cluster {
            cluster.attach(self.runtime.clone());
        }
        let gateway = self.gateway.clone();
        let shutdown = async move {
            shutdown.await;
            // Streamed bodies never end by themselves: end them, so connections can close.
            gateway.stopping.send_replace(true);
        };
        conn::serve(
            listener,
            self.router(),
            self.gateway.connections.clone(),
            shutdown,
            grace,
        )
        .await;
        trimming.abort();
        // Its clone of the runtime must be gone before the runtime closes (the data
        // directory's lock goes with the last one); the join error is the abort itself.
        let _ = trimming.await;
        if let Some(cluster) = &self.gateway.cluster {
            cluster.detach().await;
        }
        tracing::info!("no more requests; closing objects");
        if !self.runtime.shutdown().await {
            tracing::warn!("some objects did not close in time");
        }
        // After the last commit: the other nodes may take this node's objects at once.
        if let Some(cluster) = &self.gateway.cluster
            && let Err(e) = cluster.leave().await
        {
            tracing::warn!(error = %e, "leaving the cluster failed; its objects free up when the lease runs out");
        }
        Ok(())
    }
}

/// Points a runtime error found at start-up to the configuration line it comes from.
fn locate(config: &Config, e: rookery::StartError) -> ServerError {
    match &e {
        rookery::StartError::Migration { tag, .. } => {
            if let Some(m) = config.migrations.iter().find(|m| m.tag.get_ref() == tag) {
                return config.error_at(m.tag.span().start, e.to_string()).into();
            }
        }
        rookery::StartError::Binding { binding, .. } => {
            if let Some(b) = config.bindings.iter().find(|b| b.name.get_ref() == binding) {
                return config.error_at(b.name.span().start, e.to_string()).into();
            }
        }
        rookery::StartError::Config(message) => return config.error(message.clone()).into(),
        _ => {}
    }
    ServerError::Start(e)
}

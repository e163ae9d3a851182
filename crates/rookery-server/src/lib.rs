//! The Rookery server: reads `rookery.toml`, builds the runtime and serves the HTTP gateway.
//!
//! The `rookery` binary is thin glue over [`Server`]; tests and embedders use it directly, with
//! their own object classes.

mod client_ip;
pub mod config;
mod gateway;
pub mod identity;
mod route_pattern;
mod routes;
mod socket_io;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use http::HeaderName;
use rookery::{Classes, Runtime};
use tokio::net::TcpListener;

pub use config::{Config, ConfigError};
pub use gateway::{REQUEST_ID, STATS_PATH};

use gateway::{Gateway, RequestIds};
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
}

/// A configured server, ready to serve.
pub struct Server {
    runtime: Runtime,
    gateway: Arc<Gateway>,
}

impl Server {
    /// Opens the data directory, applies migrations and compiles the routes of `config`, with
    /// `classes` available to its bindings.
    pub fn new(config: &Config, classes: Classes) -> Result<Self, ServerError> {
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
        let mut builder = Runtime::builder(&config.server.data_dir)
            .classes(classes)
            .options(config.server.runtime_options());
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
        let gateway = Arc::new(Gateway {
            routes: Routes::build(config, &runtime)?,
            runtime: runtime.clone(),
            client_ip_header,
            max_body_bytes: config.server.max_body_bytes,
            max_message_bytes: config.server.max_ws_message_bytes,
            auth: identity::Authenticator::new(&config.auth),
            request_ids: RequestIds::new(),
        });
        Ok(Self { runtime, gateway })
    }

    /// The runtime behind the gateway.
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// The HTTP application, for embedding in another server.
    pub fn router(&self) -> Router {
        Router::new()
            .fallback(gateway::handle)
            .with_state(self.gateway.clone())
    }

    /// Serves on `listener` until `shutdown` completes; then stops accepting, lets running
    /// requests finish and closes every object's storage.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        let app = self
            .router()
            .into_make_service_with_connect_info::<SocketAddr>();
        let (signalled, mut signal) = tokio::sync::watch::channel(false);
        let serving = axum::serve(listener, app).with_graceful_shutdown(async move {
            shutdown.await;
            let _ = signalled.send(true);
        });
        // Running requests get as long as a turn may take; a request stuck beyond that must
        // not keep the process from stopping.
        let grace = self.runtime.options().host.turn_timeout + std::time::Duration::from_secs(5);
        let served = tokio::select! {
            served = serving => served,
            () = async {
                let _ = signal.wait_for(|s| *s).await;
                tokio::time::sleep(grace).await;
            } => {
                tracing::warn!(?grace, "requests still running after the grace period; stopping anyway");
                Ok(())
            }
        };
        tracing::info!("no more requests; closing objects");
        if !self.runtime.shutdown().await {
            tracing::warn!("some objects did not close in time");
        }
        served.map_err(ServerError::Io)
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

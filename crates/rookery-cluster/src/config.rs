//! How a node joins a cluster.

use std::time::Duration;

use crate::error::ClusterError;

/// The lease a node holds on its objects when none is configured.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(10);

/// A node's cluster settings (`[cluster]` in the server's configuration).
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// The PostgreSQL database every node shares, `postgres://user@host:port/db`.
    pub database_url: String,
    /// This node's name, unique in the cluster and kept across restarts.
    pub node_id: String,
    /// The address other nodes reach this one at (`http://host:port`).
    pub advertise: String,
    /// How long this node owns its objects without renewing; after it, any node may take them
    /// over. Renewed every quarter of it, in one statement for all of them.
    pub lease: Duration,
    /// More databases to spread objects over, by a stable hash of the object id (with
    /// `database_url` the first of them). Fixed when the cluster is made: changing the list
    /// moves objects to databases that do not hold their state.
    pub shards: Vec<String>,
}

impl ClusterConfig {
    /// Checks what can be checked before connecting.
    pub fn validate(&self) -> Result<(), ClusterError> {
        if self.node_id.is_empty()
            || self.node_id.len() > 128
            || !self
                .node_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(ClusterError::Config(format!(
                "node id {:?} must be 1-128 letters, digits, '-', '_' or '.'",
                self.node_id
            )));
        }
        if !(self.advertise.starts_with("http://") || self.advertise.starts_with("https://")) {
            return Err(ClusterError::Config(format!(
                "advertise address {:?} must be an http:// or https:// URL",
                self.advertise
            )));
        }
        if self.lease < Duration::from_millis(500) || self.lease > Duration::from_secs(600) {
            return Err(ClusterError::Config(format!(
                "a lease of {:?} is out of range (0.5 s to 10 min)",
                self.lease
            )));
        }
        let urls = self.databases();
        for (i, url) in urls.iter().enumerate() {
            url.parse::<tokio_postgres::Config>()
                .map_err(|e| ClusterError::Config(format!("database {}: {e}", i + 1)))?;
            if urls[..i].contains(url) {
                return Err(ClusterError::Config(format!(
                    "database {} is listed twice ({url:?})",
                    i + 1
                )));
            }
        }
        Ok(())
    }

    /// Every database of the cluster: `database_url`, then `shards`.
    pub fn databases(&self) -> Vec<&str> {
        std::iter::once(self.database_url.as_str())
            .chain(self.shards.iter().map(String::as_str))
            .collect()
    }
}

//! Nodes for the cluster tests, a counter class to run on them, and PostgreSQL
//! (`postgres.rs`).

#![allow(dead_code)]

#[path = "postgres.rs"]
mod postgres;
pub use postgres::{admin_url, connect, fresh_database};

use std::path::Path;
use std::time::Duration;

use rookery::Runtime;
use rookery::prelude::*;
use rookery::testing::TestHarness;
use rookery_cluster::{Cluster, ClusterConfig};
use serde_json::json;

/// The settings of node `id` on `url`, with a short lease so tests of takeover run quickly.
pub fn config(url: &str, id: &str, lease: Duration) -> ClusterConfig {
    ClusterConfig {
        database_url: url.to_string(),
        node_id: id.to_string(),
        advertise: format!("http://{id}.test:8787"),
        lease,
        shards: Vec::new(),
    }
}

/// A node: its cluster membership and a runtime hosting [`Counter`] over it.
pub struct Node {
    pub cluster: Cluster,
    pub harness: TestHarness,
}

impl Node {
    /// Joins `url` as `id` with data directory `dir`.
    pub async fn start(url: &str, id: &str, dir: &Path, lease: Duration) -> Result<Node, String> {
        Self::start_with(config(url, id, lease), dir).await
    }

    /// Joins with `config` and data directory `dir`.
    pub async fn start_with(config: ClusterConfig, dir: &Path) -> Result<Node, String> {
        let cluster = Cluster::connect(config).await.map_err(|e| e.to_string())?;
        let harness = TestHarness::from_builder::<Counter>(
            Runtime::builder(dir)
                .commit_log(cluster.commit_log())
                .class_keys(cluster.class_keys()),
        )
        .map_err(|e| e.to_string())?;
        Ok(Node { cluster, harness })
    }

    /// Increments counter `name`: its new value, or the error.
    pub async fn bump(&self, name: &str) -> Result<i64> {
        let resp = self
            .harness
            .fetch(name, Request::post("/bump").unwrap())
            .await?;
        if resp.status() != 200 {
            return Err(Error::msg(format!("status {}", resp.status())));
        }
        Ok(resp.json_body::<serde_json::Value>()?["n"]
            .as_i64()
            .unwrap_or(-1))
    }

    /// Reads counter `name`.
    pub async fn read(&self, name: &str) -> Result<i64> {
        let resp = self
            .harness
            .fetch(name, Request::get("/get").unwrap())
            .await?;
        Ok(resp.json_body::<serde_json::Value>()?["n"]
            .as_i64()
            .unwrap_or(-1))
    }

    /// Stops the runtime, then leaves the cluster.
    pub async fn stop(self) {
        assert!(self.harness.shutdown().await, "the runtime stopped cleanly");
        self.cluster.leave().await.unwrap();
    }
}

/// A counter: `POST /bump` adds one, `GET /get` reads.
pub struct Counter {
    state: ObjectState,
}

impl DurableObject for Counter {
    fn new(state: ObjectState, _env: Env) -> Self {
        Self { state }
    }

    async fn fetch(&mut self, req: Request) -> Result<Response> {
        let storage = self.state.storage();
        let n = storage.get::<i64>("n")?.unwrap_or(0);
        match req.path() {
            "/bump" => {
                storage.put("n", &(n + 1))?;
                Response::json(&json!({ "n": n + 1 }))
            }
            _ => Response::json(&json!({ "n": n })),
        }
    }
}

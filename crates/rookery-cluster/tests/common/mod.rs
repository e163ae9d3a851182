//! A PostgreSQL for the cluster tests, and a counter class to run on it.
//!
//! `ROOKERY_TEST_POSTGRES` names a server to use (the test command starts one); without it the
//! first test of the binary starts its own with `scripts/postgres.sh`, in a temporary
//! directory, and stops it when the binary exits. Every test gets a database of its own.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use rookery::Runtime;
use rookery::prelude::*;
use rookery::testing::TestHarness;
use rookery_cluster::{Cluster, ClusterConfig};
use serde_json::json;
use tokio_postgres::NoTls;

/// The server every test of this binary uses: `postgres://…/postgres`.
fn server_url() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        if let Ok(url) = std::env::var("ROOKERY_TEST_POSTGRES") {
            return url;
        }
        let dir = std::env::temp_dir().join(format!("rookery-pg-{}", std::process::id()));
        let script = repo_root().join("scripts/postgres.sh");
        let out = Command::new(&script)
            .arg("start")
            .arg(&dir)
            .output()
            .expect("running scripts/postgres.sh");
        assert!(
            out.status.success(),
            "scripts/postgres.sh start failed (set ROOKERY_TEST_POSTGRES to use a running server): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        STARTED.set(dir).expect("started once");
        // SAFETY: registering a plain `extern "C" fn` with atexit.
        unsafe { libc::atexit(stop_started) };
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    })
}

static STARTED: OnceLock<PathBuf> = OnceLock::new();

extern "C" fn stop_started() {
    if let Some(dir) = STARTED.get() {
        let _ = Command::new(repo_root().join("scripts/postgres.sh"))
            .arg("stop")
            .arg(dir)
            .output();
        let _ = std::fs::remove_dir_all(dir);
    }
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A fresh, empty database on the test server; its URL.
pub async fn fresh_database() -> String {
    let url = server_url().to_string();
    let (client, connection) = tokio_postgres::connect(&url, NoTls)
        .await
        .expect("connecting to the test PostgreSQL");
    tokio::spawn(connection);
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).unwrap();
    let name = format!("rookery_test_{}", hex::encode(bytes));
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    match url.rsplit_once('/') {
        Some((base, _)) => format!("{base}/{name}"),
        None => panic!("a PostgreSQL URL without a database: {url}"),
    }
}

/// A plain connection to `url`, for the test's own looks and changes.
pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await.unwrap();
    tokio::spawn(connection);
    client
}

/// The settings of node `id` on `url`, with a short lease so tests of takeover run quickly.
pub fn config(url: &str, id: &str, lease: Duration) -> ClusterConfig {
    ClusterConfig {
        database_url: url.to_string(),
        node_id: id.to_string(),
        advertise: format!("http://{id}.test:8787"),
        lease,
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
        let cluster = Cluster::connect(config(url, id, lease))
            .await
            .map_err(|e| e.to_string())?;
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

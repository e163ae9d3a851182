//! A PostgreSQL for tests: `ROOKERY_TEST_POSTGRES` names a server to use (the test command
//! starts one); without it the first test of the binary starts its own with
//! `scripts/postgres.sh`, in a temporary directory, and stops it when the binary exits. Every
//! test gets a database of its own. (Shared with rookery-server's cluster tests.)

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

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

/// The test server's own `postgres` database, for changes to the server itself.
pub fn admin_url() -> &'static str {
    server_url()
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

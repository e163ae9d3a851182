//! Storage failures say where they are and lose nothing: damaged databases are named in the log
//! (and the derived alarm index is rebuilt), a full disk is 507, and a data directory that
//! vanishes turns writes into errors instead of acknowledgements that would be lost.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{PATIENCE, TestServer, captured_logs, client, wait_until};
use rookery_server::config::DEMO_CONFIG;
use serde_json::{Value, json};

const KV_CONFIG: &str = include_str!("../../../examples/kv.toml");

fn files_named(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.to_string_lossy().ends_with(suffix) {
                found.push(path);
            }
        }
    }
    found
}

/// Overwrites the start of `path` with bytes that are not a SQLite database.
fn damage(path: &Path) {
    std::fs::write(path, vec![0x5a; 8192]).unwrap();
    for side in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{side}", path.display()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_object_database_is_named_in_the_log_not_to_the_client() {
    let logs = captured_logs();
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(DEMO_CONFIG, dir.path()).await;
    let c = client();
    let r = c
        .post(server.url("/counter/broken/increment"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    server.stop().await;
    let files = files_named(&dir.path().join("objects"), ".sqlite");
    assert_eq!(files.len(), 1);
    damage(&files[0]);

    let server = TestServer::start(DEMO_CONFIG, dir.path()).await;
    let r = c.get(server.url("/counter/broken")).send().await.unwrap();
    assert_eq!(r.status(), 500);
    let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let body: Value = r.json().await.unwrap();
    assert_eq!(body, json!({"error": "internal error", "requestId": id}));
    let path = files[0].display().to_string();
    wait_until(
        "the damaged database is logged with its path and object",
        || {
            let logs = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
            logs.lines()
                .any(|l| l.contains(&path) && l.contains("Counter broken"))
        },
    )
    .await;
    // Other objects are not affected.
    let r = c
        .post(server.url("/counter/fine/increment"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_alarm_index_is_rebuilt_and_its_alarms_still_fire() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(KV_CONFIG, dir.path()).await;
    let c = client();
    let r = c
        .put(server.url("/kv/ttl/k?ttl_ms=300"))
        .body("1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    server.stop().await;
    damage(&dir.path().join("alarms.sqlite"));

    let server = TestServer::start(KV_CONFIG, dir.path()).await;
    assert_eq!(
        files_named(dir.path(), "")
            .iter()
            .filter(|p| p.to_string_lossy().contains("alarms.sqlite.damaged-"))
            .count(),
        1,
        "the damaged index is kept aside for inspection"
    );
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let r = c.get(server.url("/kv/ttl/k")).send().await.unwrap();
        if r.status() == 404 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the expiry alarm never fired"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_catalog_refuses_to_start_and_names_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(DEMO_CONFIG, dir.path()).await;
    server.stop().await;
    let catalog = dir.path().join("rookery.sqlite");
    damage(&catalog);
    let mut config = rookery_server::Config::parse("demo.toml", DEMO_CONFIG).unwrap();
    config.server.data_dir = dir.path().to_path_buf();
    let err = rookery_server::Server::new(&config, rookery_objects::builtin_classes())
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains(&catalog.display().to_string()), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_into_a_vanished_data_directory_are_errors_not_acknowledgements() {
    for durability in ["strict", "relaxed"] {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("data");
        let config = format!("{DEMO_CONFIG}\n").replace(
            "[server]\n",
            &format!("[server]\ndurability = \"{durability}\"\n"),
        );
        let server = TestServer::start(&config, &dir).await;
        let c = client();
        let increment = || c.post(server.url("/counter/c/increment")).send();
        assert_eq!(increment().await.unwrap().status(), 200);
        std::fs::remove_dir_all(&dir).unwrap();
        // No write is acknowledged from now on; once the directory check has run, the answer
        // says why.
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let r = increment().await.unwrap();
            let status = r.status();
            assert_ne!(
                status, 200,
                "{durability}: a write into a deleted directory was acknowledged"
            );
            let body: Value = r.json().await.unwrap();
            if status == 503 && body["error"] == "storage unavailable" {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{durability}: never answered 503 storage unavailable (last: {status} {body})"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        server.stop().await;
    }
}

/// A small tmpfs mounted at a new temporary directory, unmounted on drop. Needs root (the test
/// machines and CI run as root).
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("mount runs");
        assert!(
            status.success(),
            "mounting a tmpfs for the full-disk test needs root"
        );
        Self { dir }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_507_and_corrupts_nothing() {
    // Room for the node log's reserved segment (64 MiB) and a little more: the objects' own
    // writes fill the rest.
    let disk = SmallDisk::mount("80m");
    let server = TestServer::start(KV_CONFIG, disk.dir.path()).await;
    let c = client();
    let value = format!("\"{}\"", "x".repeat(1024 * 1024));
    let mut stored = Vec::new();
    let mut full = None;
    for i in 0..64 {
        let r = c
            .put(server.url(&format!("/kv/big/k{i}")))
            .body(value.clone())
            .send()
            .await
            .unwrap();
        match r.status().as_u16() {
            200 => stored.push(i),
            507 => {
                full = Some(r.json::<Value>().await.unwrap());
                break;
            }
            other => panic!("unexpected {other}: {}", r.text().await.unwrap()),
        }
    }
    let body = full.expect("the disk filled up");
    assert_eq!(body["error"], "insufficient storage", "{body}");
    assert!(!stored.is_empty());
    // What was acknowledged before is intact.
    for i in &stored {
        let r = c
            .get(server.url(&format!("/kv/big/k{i}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "k{i}");
        assert_eq!(r.text().await.unwrap(), value);
    }
    server.stop().await;
}

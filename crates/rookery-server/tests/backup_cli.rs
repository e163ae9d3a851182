//! The command line against a running server: `rookery objects ls|show|rm`, and
//! `rookery backup` taken under load then `rookery restore` into a second data directory.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use common::{ChildServer, PATIENCE, client};
use serde_json::Value;

const TOKEN: &str = "backup-cli-test-token-0123";

/// Runs `rookery ARGS` (with the admin token in the environment); its parsed output, or its
/// error text.
fn rookery(args: &[&str]) -> Result<Value, String> {
    let out = Command::new(env!("CARGO_BIN_EXE_rookery"))
        .args(args)
        .env("ROOKERY_ADMIN_TOKEN", TOKEN)
        .output()
        .expect("rookery runs");
    if out.status.success() {
        serde_json::from_slice(&out.stdout)
            .map_err(|e| format!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Runs `rookery objects ARGS --url SERVER`.
fn objects(server: &ChildServer, args: &[&str]) -> Result<Value, String> {
    let url = server.url("");
    let mut all = vec!["objects"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--url", &url]);
    rookery(&all)
}

async fn increment(server: &ChildServer, name: &str) -> i64 {
    let r: Value = client()
        .post(server.url(&format!("/counter/{name}/increment")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    r["value"].as_i64().unwrap()
}

async fn value(server: &ChildServer, name: &str) -> i64 {
    let r: Value = client()
        .get(server.url(&format!("/counter/{name}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    r["value"].as_i64().unwrap()
}

fn listed(page: &Value) -> Vec<String> {
    let mut names: Vec<String> = page["objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["name"].as_str().unwrap_or("?").to_string())
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_are_listed_shown_and_removed_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let server = ChildServer::start(dir.path(), &["--admin-token", TOKEN]);
    for name in ["cli-a", "cli-b", "other"] {
        increment(&server, name).await;
    }
    increment(&server, "cli-a").await;

    let page = objects(&server, &["ls", "COUNTER"]).unwrap();
    assert_eq!(listed(&page), ["cli-a", "cli-b", "other"]);
    let page = objects(&server, &["ls", "Counter", "--prefix", "cli-"]).unwrap();
    assert_eq!(listed(&page), ["cli-a", "cli-b"]);
    let page = objects(&server, &["ls", "COUNTER", "--limit", "1"]).unwrap();
    assert_eq!(page["objects"].as_array().unwrap().len(), 1);
    assert!(page["cursor"].is_string(), "{page}");

    let shown = objects(&server, &["show", "COUNTER", "cli-a"]).unwrap();
    assert_eq!(shown["object"]["name"], "cli-a");
    assert_eq!(shown["kv"]["entries"][0]["key"], "value");
    assert_eq!(shown["kv"]["entries"][0]["value"], 2);
    // By id too.
    let id = shown["object"]["id"].as_str().unwrap().to_string();
    let by_id = objects(&server, &["show", "COUNTER", &id]).unwrap();
    assert_eq!(by_id["object"]["id"], id.as_str());

    let removed = objects(&server, &["rm", "COUNTER", "cli-a"]).unwrap();
    assert_eq!(removed["deleted"], true);
    let page = objects(&server, &["ls", "COUNTER"]).unwrap();
    assert_eq!(listed(&page), ["cli-b", "other"]);
    assert_eq!(value(&server, "cli-a").await, 0);

    // Refusals: an object that stores nothing, an unknown class, a wrong token.
    let gone = objects(&server, &["rm", "COUNTER", "never-was"]).unwrap_err();
    assert!(gone.contains("404"), "{gone}");
    let unknown = objects(&server, &["ls", "NOPE"]).unwrap_err();
    assert!(unknown.contains("404"), "{unknown}");
    let url = server.url("");
    let wrong = rookery(&[
        "objects",
        "ls",
        "COUNTER",
        "--url",
        &url,
        "--token",
        "wrong-wrong-wrong-wrong",
    ])
    .unwrap_err();
    assert!(wrong.contains("401"), "{wrong}");
    server.terminate();
}

/// Every `*.sqlite` file under `dir`.
fn databases(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(databases(&path));
        } else if path.extension().is_some_and(|e| e == "sqlite") {
            found.push(path);
        }
    }
    found
}

fn integrity(path: &Path) -> String {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backup_taken_under_load_restores_every_write_acknowledged_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = Arc::new(ChildServer::start(dir.path(), &["--admin-token", TOKEN]));
    // What each writer saw acknowledged, per counter: the highest value.
    let acked: Arc<Mutex<HashMap<String, i64>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..4 {
        let (server, acked, stop) = (server.clone(), acked.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut k = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let name = format!("load-{w}-{}", k % 6);
                let v = increment(&server, &name).await;
                let mut acked = acked.lock().unwrap();
                let best = acked.entry(name).or_insert(0);
                *best = (*best).max(v);
                k += 1;
            }
            k
        }));
    }
    // Under load: every writer has had writes acknowledged on every one of its objects.
    let loaded = tokio::time::timeout(PATIENCE, async {
        while acked.lock().unwrap().len() < 24 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(loaded.is_ok(), "the writers get going");
    let before: HashMap<String, i64> = acked.lock().unwrap().clone();

    let backups = tempfile::tempdir().unwrap();
    let backup_dir = backups.path().join("b1");
    let url = server.url("");
    let target = backup_dir.to_str().unwrap().to_string();
    let report = tokio::task::spawn_blocking(move || rookery(&["backup", &target, "--url", &url]))
        .await
        .unwrap()
        .unwrap();
    assert!(report["objects"].as_u64().unwrap() >= 24, "{report}");
    // The writers went on during the backup.
    let during = acked.lock().unwrap().values().sum::<i64>();
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for writer in writers {
        total += writer.await.unwrap();
    }
    assert!(during > before.values().sum::<i64>(), "writes went on");
    assert!(total > 0);
    // A second backup into the same (now full) directory is refused.
    let url = server.url("");
    let again = rookery(&["backup", backup_dir.to_str().unwrap(), "--url", &url]).unwrap_err();
    assert!(
        again.contains("400") && again.contains("not empty"),
        "{again}"
    );
    for db in databases(&backup_dir) {
        assert_eq!(integrity(&db), "ok", "{}", db.display());
    }

    // Restore into an empty directory; a non-empty one is refused.
    let restored = tempfile::tempdir().unwrap();
    let data = restored.path().join("data");
    let done = rookery(&[
        "restore",
        backup_dir.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
    ])
    .unwrap();
    assert!(done["objects"].as_u64().unwrap() >= 24, "{done}");
    let refused = rookery(&[
        "restore",
        backup_dir.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
    ])
    .unwrap_err();
    assert!(refused.contains("not empty"), "{refused}");
    let unfinished = tempfile::tempdir().unwrap();
    let refused = rookery(&[
        "restore",
        unfinished.path().to_str().unwrap(),
        "--data-dir",
        restored.path().join("other").to_str().unwrap(),
    ])
    .unwrap_err();
    assert!(
        refused.contains("not a finished Rookery backup"),
        "{refused}"
    );

    // A second server on the restored directory has every write acknowledged before the
    // backup began.
    let second = ChildServer::start(&data, &[]);
    for (name, acknowledged) in &before {
        let v = value(&second, name).await;
        assert!(
            v >= *acknowledged,
            "{name}: {v} restored, {acknowledged} acknowledged before the backup"
        );
    }
    // And it takes writes.
    let name = before.keys().next().unwrap().clone();
    let was = value(&second, &name).await;
    assert_eq!(increment(&second, &name).await, was + 1);
    second.terminate();
    for db in databases(&data.join("objects")) {
        assert_eq!(integrity(&db), "ok", "{}", db.display());
    }
    match Arc::try_unwrap(server) {
        Ok(server) => server.terminate(),
        Err(_) => panic!("the writers hold the server"),
    }
}

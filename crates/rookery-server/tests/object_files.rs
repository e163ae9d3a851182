//! An object has a file only while it stores something: reads make none, and an object whose
//! storage is empty again leaves none behind once evicted.

mod common;

use std::path::Path;

use common::{PROBE_CONFIG, TestServer, client, wait_until};
use rookery_server::config::DEMO_CONFIG;
use serde_json::{Value, json};

/// The object databases under `dir`, with their WAL files.
fn files(dir: &Path) -> usize {
    let mut count = 0;
    let mut stack = vec![dir.join("objects")];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                count += 1;
            }
        }
    }
    count
}

async fn stats(server: &TestServer) -> Value {
    client()
        .get(server.url("/_rookery/stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_objects_that_never_wrote_creates_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(DEMO_CONFIG, dir.path()).await;
    let c = client();
    for i in 0..300 {
        let r: Value = c
            .get(server.url(&format!("/counter/nobody-{i}")))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(r, json!({"value": 0}));
    }
    assert_eq!(files(dir.path()), 0, "no file for an object that only read");
    assert_eq!(stats(&server).await["runtime"]["commits"], 0);
    // The first write makes the file, with the name the object was addressed by.
    let r: Value = c
        .post(server.url("/counter/nobody-7/increment"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r, json!({"value": 1}));
    assert!(files(dir.path()) >= 1);
    server.stop().await;
    let server = TestServer::start(DEMO_CONFIG, dir.path()).await;
    let r: Value = c
        .get(server.url("/counter/nobody-7"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r, json!({"value": 1}), "the first write is durable");
    server.stop().await;
}

fn evicting_probe_config() -> String {
    // Objects leave memory 1 ms after their last event.
    PROBE_CONFIG.replace("[server]\n", "[server]\nidle_timeout_ms = 1\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_emptied_again_leaves_no_file_once_evicted() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&evicting_probe_config(), dir.path()).await;
    let c = client();
    let call = |path: &str| c.post(server.url(path)).send();
    for (empty_with, path) in [
        ("/probe/e/delete?key=a", "key deleted"),
        ("/probe/e/delete-all", "delete_all"),
    ] {
        let r = call("/probe/e/put?key=a&value=1").await.unwrap();
        assert_eq!(r.status(), 200);
        assert!(files(dir.path()) >= 1);
        let r = call(empty_with).await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        wait_until("the emptied object's file is gone after eviction", || {
            files(dir.path()) == 0
        })
        .await;
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_that_leave_and_come_back_at_once_lose_nothing() {
    // Every request meets an object whose previous activation may still be closing (and
    // removing its emptied file): the new one must wait for it, never write into a file
    // that is about to go.
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&evicting_probe_config(), dir.path()).await;
    let c = client();
    for round in 0..150 {
        let value = round.to_string();
        let r = c
            .post(server.url(&format!("/probe/race/put?key=k&value={value}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let got: Value = c
            .post(server.url("/probe/race/get?key=k"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(got, json!({ "value": value }), "round {round}");
        let r = c
            .post(server.url("/probe/race/delete?key=k"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let got: Value = c
            .post(server.url("/probe/race/get?key=k"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(got, json!({ "value": null }), "round {round}");
        if round % 10 == 9 {
            // Requests can come faster than the 1 ms idle time: now and then the object is
            // let go for certain, so that the loop sees it come back. The other rounds race
            // its closing whenever it happens.
            let rt = server.runtime.clone();
            wait_until("the object left memory", || rt.stats().live_objects == 0).await;
        }
    }
    let activations = stats(&server).await["runtime"]["activations"]
        .as_u64()
        .unwrap();
    assert!(activations > 10, "the object came and went: {activations}");
    server.stop().await;
    let server = TestServer::start(&evicting_probe_config(), dir.path()).await;
    let r = c
        .post(server.url("/probe/race/put?key=last&value=v"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    server.stop().await;
}

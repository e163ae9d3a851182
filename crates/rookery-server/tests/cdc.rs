//! CDC and the catalog over real HTTP with examples/events.toml (docs/EVENTS.md, "CDC and
//! catalog"): changes posted to two collections, delta files in the bucket holding exactly
//! them, the catalog's snapshots listing the files, the table as of each snapshot.

mod common;

use std::collections::BTreeMap;
use std::io::Read;

use common::{ChildServer, TestServer, client, eventually};
use serde_json::{Value, json};

const EVENTS_CONFIG: &str = include_str!("../../../examples/events.toml");

/// examples/events.toml with a short flush delay.
fn config() -> String {
    let from = "CDC_FLUSH_MS = 10000";
    assert!(
        EVENTS_CONFIG.contains(from),
        "examples/events.toml lost {from:?}"
    );
    EVENTS_CONFIG.replace(from, "CDC_FLUSH_MS = 100")
}

async fn send(req: reqwest::RequestBuilder) -> (u16, Value) {
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// The changes in the delta file `key`, without their timestamps.
async fn file(server: &TestServer, key: &str) -> Vec<Value> {
    let bucket = server.runtime.env().bucket("CDC_BUCKET").unwrap();
    let bytes = bucket.get(key).await.unwrap().expect("the file exists");
    let mut text = String::new();
    if key.ends_with(".gz") {
        flate2::read::GzDecoder::new(&bytes[..])
            .read_to_string(&mut text)
            .unwrap();
    } else {
        text = String::from_utf8(bytes.to_vec()).unwrap();
    }
    text.lines()
        .map(|l| {
            let mut v: Value = serde_json::from_str(l).unwrap();
            assert!(v["ts"].is_i64(), "{v}");
            v.as_object_mut().unwrap().remove("ts");
            v
        })
        .collect()
}

#[tokio::test]
async fn flushed_files_hold_exactly_the_posted_changes_and_the_catalog_lists_them() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&config(), dir.path()).await;
    let c = client();
    let post = |path: &str, body: Value| c.post(server.url(path)).json(&body);

    // Two collections of one namespace, each its own object and sequence.
    let mut sent = vec![];
    for (coll, op, id, doc) in [
        ("orders", "insert", "o1", json!({"total": 12})),
        ("users", "insert", "u1", json!({"name": "Ann"})),
        ("orders", "insert", "o2", json!({"total": 5})),
        ("orders", "update", "o1", json!({"total": 13, "paid": true})),
    ] {
        let (status, r) = send(post(
            &format!("/cdc/shop/{coll}"),
            json!({"op": op, "id": id, "doc": doc}),
        ))
        .await;
        assert_eq!(status, 200, "{r}");
        sent.push((coll, r["seq"].as_i64().unwrap(), op, id, doc));
    }
    assert_eq!(
        sent.iter().map(|s| s.1).collect::<Vec<_>>(),
        [1, 1, 2, 3],
        "a sequence per collection"
    );
    let (status, doc) = send(c.get(server.url("/cdc/shop/orders/docs/o1"))).await;
    assert_eq!(
        (status, &doc["doc"]),
        (200, &json!({"total": 13, "paid": true}))
    );
    let (status, r) = send(post("/cdc/shop/orders", json!({"op": "drop", "id": "o1"}))).await;
    assert_eq!((status, r["field"].as_str()), (400, Some("op")));
    // Two parameters name the object; neither may hold a '/'.
    let (status, _) = send(c.get(server.url("/cdc/shop%2Fx/orders"))).await;
    assert_eq!(status, 400);

    // The alarm writes each collection's changes as one file and commits it.
    for coll in ["orders", "users"] {
        let url = server.url(&format!("/cdc/shop/{coll}"));
        eventually("the changes are in a committed delta file", || async {
            let (_, s) = send(c.get(&url)).await;
            s["pending"] == 0 && s["deltas"] == 1
        })
        .await;
    }
    let (_, orders) = send(c.get(server.url("/catalog/shop/orders"))).await;
    let snaps = orders["snapshots"].as_array().unwrap();
    assert_eq!(snaps.len(), 1, "{orders}");
    let key = snaps[0]["file"].as_str().unwrap().to_string();
    assert!(
        key.starts_with("cdc/shop/orders/000000000001-000000000003.ndjson.gz"),
        "{key}"
    );
    let want: Vec<Value> = sent
        .iter()
        .filter(|s| s.0 == "orders")
        .map(|(_, seq, op, id, doc)| json!({"seq": seq, "op": op, "id": id, "doc": doc}))
        .collect();
    assert_eq!(file(&server, &key).await, want);
    assert!(
        dir.path().join("buckets/cdc").join(&key).is_file(),
        "the bucket is <data_dir>/buckets/cdc"
    );

    // A second snapshot: the table as of each is exactly its documents then.
    send(post(
        "/cdc/shop/orders",
        json!({"op": "delete", "id": "o2"}),
    ))
    .await;
    let (status, r) = send(c.post(server.url("/cdc/shop/orders/flush"))).await;
    assert_eq!(status, 200, "{r}");
    let (_, orders) = send(c.get(server.url("/catalog/shop/orders"))).await;
    let files: Vec<&str> = orders["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["file"].as_str().unwrap())
        .collect();
    assert_eq!(files.len(), 2, "{orders}");
    assert_eq!(files[0], key);
    assert_eq!(
        file(&server, files[1]).await,
        [json!({"seq": 4, "op": "delete", "id": "o2", "doc": null})]
    );
    let (_, at1) = send(c.get(server.url("/catalog/shop/orders/snapshots/1/rows"))).await;
    assert_eq!(
        at1["rows"],
        json!([
            {"id": "o1", "doc": {"total": 13, "paid": true}},
            {"id": "o2", "doc": {"total": 5}},
        ])
    );
    let (_, at2) = send(c.get(server.url("/catalog/shop/orders/snapshots/2/rows"))).await;
    assert_eq!(
        at2["rows"],
        json!([{"id": "o1", "doc": {"total": 13, "paid": true}}])
    );
    let (_, s2) = send(c.get(server.url("/catalog/shop/orders/snapshots/2"))).await;
    assert_eq!(s2["files"].as_array().unwrap().len(), 2);
    assert_eq!(
        s2["schema"]["fields"],
        json!([
            {"id": 1, "name": "total", "type": "number"},
            {"id": 2, "name": "paid", "type": "boolean"},
        ])
    );
    let (_, tables) = send(c.get(server.url("/catalog/shop"))).await;
    let names: Vec<&str> = tables["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["orders", "users"]);
    server.stop().await;
}

/// A `kill -9` while delta files are being written and committed: after the restart, every
/// acknowledged change is in the documents, and the catalog's table, replayed from its files,
/// is exactly those documents, its snapshots covering every change once (the catalog refuses a
/// snapshot that would leave a hole or repeat a range).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_9_during_flushes_loses_no_acknowledged_change() {
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("events.toml");
    let text = config().replace("CDC_MAX_CHANGES = 1000", "CDC_MAX_CHANGES = 4");
    std::fs::write(&config_path, text).unwrap();
    let data = dir.path().join("data");
    let args = ["--config", config_path.to_str().unwrap()];
    let c = client();
    let server = ChildServer::start(&data, &args);
    // Inserts, updates and deletes over eight ids; the documents the acknowledged changes leave.
    let mut want: BTreeMap<String, Value> = BTreeMap::new();
    let mut acked = 0;
    for n in 0..60_i64 {
        let id = format!("o{}", n % 8);
        let (op, doc) = match (want.contains_key(&id), n % 5) {
            (false, _) => ("insert", json!({"n": n})),
            (true, 4) => ("delete", Value::Null),
            (true, _) => ("update", json!({"n": n, "again": true})),
        };
        let (status, r) = send(
            c.post(server.url("/cdc/shop/orders"))
                .json(&json!({"op": op, "id": id, "doc": doc})),
        )
        .await;
        assert_eq!(status, 200, "{r}");
        acked += 1;
        if op == "delete" {
            want.remove(&id);
        } else {
            want.insert(id, doc);
        }
    }
    // A file is written and committed every four changes, by the alarm: the kill comes right
    // after the last answer, when the last of them may still be on its way.
    server.kill9();
    let server = ChildServer::start(&data, &args);
    let status_url = server.url("/cdc/shop/orders");
    eventually("every change is in a committed file", || {
        let (c, url) = (c.clone(), status_url.clone());
        async move { send(c.get(url)).await.1["pending"] == 0 }
    })
    .await;
    for n in 0..8 {
        let id = format!("o{n}");
        let (status, r) = send(c.get(server.url(&format!("/cdc/shop/orders/docs/{id}")))).await;
        match want.get(&id) {
            Some(doc) => assert_eq!((status, &r["doc"]), (200, doc), "{id}"),
            None => assert_eq!(status, 404, "{id} was deleted: {r}"),
        }
    }
    let (_, table) = send(c.get(server.url("/catalog/shop/orders"))).await;
    assert_eq!(
        table["lastSeq"], acked,
        "every change in some snapshot: {table}"
    );
    let last = table["currentSnapshotId"].as_i64().unwrap();
    let (status, rows) =
        send(c.get(server.url(&format!("/catalog/shop/orders/snapshots/{last}/rows")))).await;
    assert_eq!(status, 200, "{rows}");
    let got: BTreeMap<String, Value> = rows["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["id"].as_str().unwrap().to_string(), r["doc"].clone()))
        .collect();
    assert_eq!(
        got, want,
        "the table as of its last snapshot is the documents"
    );
    println!(
        "kill -9 during CDC flushes: {acked} changes, {last} snapshots, {} documents",
        want.len()
    );
    server.terminate();
}

//! CDC processors and their catalog through the test harness, on a manual clock: changes, delta
//! files, snapshots, the table as of a snapshot, schema evolution, failures and retries.

use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;

use rookery::testing::{PATIENCE, TestHarness};
use rookery::{Buckets, Clock, ManualClock, Migration, Runtime, SystemClock, Vars};
use serde_json::{Value, json};

use super::*;
use rookery::prelude::*;

const COLL: &str = "orders";

struct Fixture {
    h: TestHarness,
    clock: Arc<ManualClock>,
    /// The bucket's directory (made by its first write).
    bucket_dir: PathBuf,
    ns: String,
    _dir: tempfile::TempDir,
}

/// A processor class under test, the catalog bound as `CATALOG`, and a bucket in a temporary
/// directory bound as `CDC_BUCKET`; the processors' namespace is `ns`.
fn fixture(ns: &str, vars: &[(&str, &str)]) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let bucket_dir = dir.path().join("bucket");
    let mut buckets = Buckets::new();
    buckets.bind(BUCKET_BINDING, "cdc", &bucket_dir);
    let clock = Arc::new(ManualClock::new(SystemClock.now_ms()));
    let mut v = Vars::new();
    for (name, value) in vars {
        v.set_var(*name, *value);
    }
    let builder = Runtime::builder_in_memory()
        .clock(clock.clone())
        .vars(v)
        .buckets(buckets)
        .class::<Catalog>("Catalog")
        .binding(CATALOG_BINDING, "Catalog")
        .migration(Migration {
            tag: "catalog".into(),
            new_classes: vec!["Catalog".into()],
            ..Migration::default()
        });
    Fixture {
        h: TestHarness::from_builder::<CdcProcessor>(builder).unwrap(),
        clock,
        bucket_dir,
        ns: ns.to_string(),
        _dir: dir,
    }
}

async fn answer(r: Result<Response>) -> (u16, Value) {
    let r = r.unwrap();
    let body = if r.body().is_empty() {
        Value::Null
    } else {
        r.json_body().unwrap()
    };
    (r.status().as_u16(), body)
}

impl Fixture {
    fn name(&self, coll: &str) -> String {
        format!("{}/{coll}", self.ns)
    }

    async fn send(&self, coll: &str, req: Request) -> (u16, Value) {
        answer(self.h.fetch(&self.name(coll), req).await).await
    }

    async fn change(&self, op: &str, id: &str, doc: Value) -> (u16, Value) {
        let body = json!({"op": op, "id": id, "doc": doc});
        self.send(
            COLL,
            Request::post("/cdc").unwrap().with_json(&body).unwrap(),
        )
        .await
    }

    async fn ok(&self, op: &str, id: &str, doc: Value) -> Value {
        let (status, r) = self.change(op, id, doc).await;
        assert_eq!(status, 200, "{op} {id}: {r}");
        r
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.send(COLL, Request::get(path).unwrap()).await
    }

    async fn status(&self) -> Value {
        let (status, s) = self.get("/cdc").await;
        assert_eq!(status, 200, "{s}");
        s
    }

    async fn flush(&self) -> (u16, Value) {
        self.send(COLL, Request::post("/cdc/flush").unwrap()).await
    }

    async fn catalog(&self, path: &str) -> (u16, Value) {
        let ns = self.h.runtime().namespace(CATALOG_BINDING).unwrap();
        answer(
            ns.get_by_name(&self.ns)
                .fetch(Request::get(path).unwrap())
                .await,
        )
        .await
    }

    async fn rows(&self, snapshot: i64) -> Value {
        let (status, r) = self
            .catalog(&format!("/catalog/{COLL}/snapshots/{snapshot}/rows"))
            .await;
        assert_eq!(status, 200, "{r}");
        r
    }

    async fn alarm(&self) -> Option<i64> {
        self.h
            .run(&self.name(COLL), |s| s.storage().get_alarm())
            .await
            .unwrap()
    }

    fn bucket(&self) -> rookery::Bucket {
        self.h.runtime().env().bucket(BUCKET_BINDING).unwrap()
    }

    /// The changes in the bucket's file `key`, as JSON.
    async fn file(&self, key: &str) -> Vec<Value> {
        let bytes = self.bucket().get(key).await.unwrap();
        let bytes = bytes.unwrap_or_else(|| panic!("no file {key}"));
        let mut text = String::new();
        flate2::read::GzDecoder::new(&bytes[..])
            .read_to_string(&mut text)
            .unwrap();
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    async fn file_names(&self) -> Vec<String> {
        let listed = self.bucket().list("cdc/", 1000).await.unwrap();
        listed.into_iter().map(|e| e.key).collect()
    }

    /// Waits until the bucket holds at least `n` files.
    async fn files_until(&self, what: &str, n: usize) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while self.file_names().await.len() < n {
            assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
    }

    /// Makes the bucket's writes fail (a file where its directory should be), or work again.
    fn fail_writes(&self, failing: bool) {
        if failing {
            std::fs::write(&self.bucket_dir, b"not a directory").unwrap();
        } else {
            std::fs::remove_file(&self.bucket_dir).unwrap();
        }
    }
}

/// `{id: doc}` of a rows answer.
fn docs(rows: &Value) -> Value {
    let mut out = serde_json::Map::new();
    for r in rows["rows"].as_array().unwrap() {
        out.insert(r["id"].as_str().unwrap().to_string(), r["doc"].clone());
    }
    Value::Object(out)
}

#[tokio::test]
async fn changes_apply_to_the_current_documents() {
    let f = fixture("apply", &[]);
    let first = f.ok("insert", "a", json!({"v": 1})).await;
    assert_eq!(
        (first["seq"].as_i64(), first["pending"].as_i64()),
        (Some(1), Some(1))
    );
    f.ok("insert", "b", json!({"v": 1})).await;
    f.ok("update", "a", json!({"v": 2, "note": "x"})).await;
    let last = f.ok("delete", "b", Value::Null).await;
    assert_eq!(last["seq"], 4);

    let (status, a) = f.get("/cdc/docs/a").await;
    assert_eq!(status, 200, "{a}");
    assert_eq!(a["doc"], json!({"v": 2, "note": "x"}));
    assert_eq!((a["id"].as_str(), a["seq"].as_i64()), (Some("a"), Some(3)));
    assert_eq!(f.get("/cdc/docs/b").await.0, 404);

    // Ids travel percent-encoded; documents come back as they were sent.
    let body = r#"{"op":"insert","id":"x/y z","doc":{"b":1.50,"a":[]}}"#;
    let (status, _) = f
        .send(COLL, Request::post("/cdc").unwrap().with_body(body))
        .await;
    assert_eq!(status, 200);
    let r =
        f.h.fetch(&f.name(COLL), Request::get("/cdc/docs/x%2Fy%20z").unwrap())
            .await
            .unwrap();
    let text = String::from_utf8(r.body().to_vec()).unwrap();
    assert!(text.contains(r#""doc":{"b":1.50,"a":[]}"#), "{text}");

    let s = f.status().await;
    assert_eq!(
        (
            s["namespace"].as_str(),
            s["collection"].as_str(),
            s["documents"].as_i64(),
            s["pending"].as_i64(),
            s["lastSeq"].as_i64(),
            s["deltas"].as_i64(),
        ),
        (
            Some("apply"),
            Some(COLL),
            Some(2),
            Some(5),
            Some(5),
            Some(0)
        ),
        "{s}"
    );
    assert_eq!(s["lastError"], Value::Null);
    let at = f.clock.now_ms() + 10_000;
    assert_eq!(
        s["nextFlushAt"], at,
        "the first pending change sets the flush"
    );
    assert_eq!(f.alarm().await, Some(at));
}

#[tokio::test]
async fn bad_input_gets_the_right_status_and_writes_nothing() {
    let f = fixture("bad", &[("CDC_MAX_DOC_BYTES", "100")]);
    f.ok("insert", "a", json!({})).await;
    for (body, status, field) in [
        (json!({"op": "upsert", "id": "b", "doc": {}}), 400, "op"),
        (json!({"id": "b", "doc": {}}), 400, "op"),
        (json!({"op": "insert", "doc": {}}), 400, "id"),
        (json!({"op": "insert", "id": "", "doc": {}}), 400, "id"),
        (json!({"op": "insert", "id": "b", "doc": [1]}), 400, "doc"),
        (json!({"op": "insert", "id": "b"}), 400, "doc"),
        (json!({"op": "delete", "id": "a", "doc": {}}), 400, "doc"),
        (json!({"op": "insert", "id": "a", "doc": {}}), 409, "id"),
        (json!({"op": "update", "id": "zz", "doc": {}}), 404, "id"),
        (json!({"op": "delete", "id": "zz"}), 404, "id"),
    ] {
        let (got, r) = f
            .send(
                COLL,
                Request::post("/cdc").unwrap().with_json(&body).unwrap(),
            )
            .await;
        assert_eq!(
            (got, r["field"].as_str()),
            (status, Some(field)),
            "{body}: {r}"
        );
    }
    let long = json!({"op": "insert", "id": "b", "doc": {"x": "y".repeat(100)}});
    let (got, r) = f
        .send(
            COLL,
            Request::post("/cdc").unwrap().with_json(&long).unwrap(),
        )
        .await;
    assert_eq!((got, r["limit"].as_str()), (413, Some("CDC_MAX_DOC_BYTES")));
    let (got, _) = f
        .send(COLL, Request::post("/cdc").unwrap().with_body("[]"))
        .await;
    assert_eq!(got, 400);
    assert_eq!(f.get("/cdc/nothing").await.0, 404);
    assert_eq!(
        f.send(COLL, Request::new(Method::DELETE, "/cdc").unwrap())
            .await
            .0,
        405
    );
    let s = f.status().await;
    assert_eq!(
        (s["pending"].as_i64(), s["lastSeq"].as_i64()),
        (Some(1), Some(1))
    );
    // An object whose name is not <namespace>/<collection> takes nothing.
    let (got, r) = answer(
        f.h.fetch("nocollection", Request::get("/cdc").unwrap())
            .await,
    )
    .await;
    assert_eq!(got, 400, "{r}");
}

#[tokio::test]
async fn flushed_files_hold_exactly_the_changes_and_snapshots_give_the_table_as_of_then() {
    let f = fixture("shop", &[]);
    f.ok("insert", "a", json!({"v": 1})).await;
    f.ok("insert", "b", json!({"v": 1, "name": "bee"})).await;
    let (status, r) = f.flush().await;
    assert_eq!(status, 200, "{r}");
    let first = "cdc/shop/orders/000000000001-000000000002.ndjson.gz";
    assert_eq!(r["deltas"][0]["file"], first);
    assert_eq!(r["deltas"][0]["snapshotId"], 1);
    assert_eq!(r["pending"], 0);
    assert_eq!(f.alarm().await, None, "nothing pending, no alarm");

    f.ok("update", "a", json!({"v": 2})).await;
    f.ok("delete", "b", Value::Null).await;
    let (status, r) = f.flush().await;
    assert_eq!(status, 200, "{r}");
    let second = "cdc/shop/orders/000000000003-000000000004.ndjson.gz";
    assert_eq!(r["deltas"][0]["file"], second);
    assert_eq!(f.file_names().await, [first, second]);

    // The files hold exactly the changes, in order.
    let strip_ts = |mut c: Vec<Value>| {
        for line in &mut c {
            assert!(line["ts"].is_i64());
            line.as_object_mut().unwrap().remove("ts");
        }
        c
    };
    assert_eq!(
        strip_ts(f.file(first).await),
        [
            json!({"seq": 1, "op": "insert", "id": "a", "doc": {"v": 1}}),
            json!({"seq": 2, "op": "insert", "id": "b", "doc": {"v": 1, "name": "bee"}}),
        ]
    );
    assert_eq!(
        strip_ts(f.file(second).await),
        [
            json!({"seq": 3, "op": "update", "id": "a", "doc": {"v": 2}}),
            json!({"seq": 4, "op": "delete", "id": "b", "doc": null}),
        ]
    );

    // The catalog lists the table and its snapshots, in order.
    let (status, list) = f.catalog("/catalog").await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["tables"][0]["name"], COLL);
    assert_eq!(list["tables"][0]["currentSnapshotId"], 2);
    let (status, meta) = f.catalog("/catalog/orders").await;
    assert_eq!(status, 200, "{meta}");
    let snaps = meta["snapshots"].as_array().unwrap();
    let listed: Vec<(i64, Value, &str, i64)> = snaps
        .iter()
        .map(|s| {
            (
                s["snapshotId"].as_i64().unwrap(),
                s["parentId"].clone(),
                s["file"].as_str().unwrap(),
                s["rows"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        listed,
        [(1, Value::Null, first, 2), (2, json!(1), second, 1)]
    );
    assert_eq!(
        (snaps[1]["updates"].as_i64(), snaps[1]["deletes"].as_i64()),
        (Some(1), Some(1))
    );

    // The table as of each snapshot: its files, and its documents.
    let (status, s2) = f.catalog("/catalog/orders/snapshots/2").await;
    assert_eq!(status, 200, "{s2}");
    let files: Vec<&str> = s2["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["file"].as_str().unwrap())
        .collect();
    assert_eq!(files, [first, second]);
    let (_, s1) = f.catalog("/catalog/orders/snapshots/1").await;
    assert_eq!(s1["files"].as_array().unwrap().len(), 1);
    assert_eq!(
        docs(&f.rows(1).await),
        json!({"a": {"v": 1}, "b": {"v": 1, "name": "bee"}})
    );
    let at2 = f.rows(2).await;
    assert_eq!(docs(&at2), json!({"a": {"v": 2}}));
    assert_eq!(at2["count"], 1);
    assert_eq!(f.catalog("/catalog/orders/snapshots/3").await.0, 404);
    assert_eq!(f.catalog("/catalog/orders/snapshots/x").await.0, 400);
    assert_eq!(f.catalog("/catalog/other").await.0, 404);

    let s = f.status().await;
    assert_eq!(s["deltas"], 2);
    assert_eq!(s["lastDelta"]["file"], second);
    assert_eq!(s["lastDelta"]["snapshotId"], 2);
}

#[tokio::test]
async fn the_schema_gets_a_version_per_new_field_or_wider_type() {
    let f = fixture("schema", &[]);
    f.ok("insert", "a", json!({"name": "x", "price": 1})).await;
    f.flush().await;
    f.ok("insert", "b", json!({"price": 2})).await;
    f.flush().await;
    f.ok(
        "insert",
        "c",
        json!({"name": "z", "price": "3", "tags": []}),
    )
    .await;
    f.flush().await;
    let (_, meta) = f.catalog("/catalog/orders").await;
    assert_eq!(meta["currentSchemaVersion"], 2, "{meta}");
    let versions = meta["schemas"].as_array().unwrap();
    assert_eq!(
        versions[0]["fields"],
        json!([
            {"id": 1, "name": "name", "type": "string"},
            {"id": 2, "name": "price", "type": "number"},
        ])
    );
    assert_eq!(versions[0]["snapshotId"], 1);
    assert_eq!(
        versions[1]["fields"],
        json!([
            {"id": 1, "name": "name", "type": "string"},
            {"id": 2, "name": "price", "type": "number|string"},
            {"id": 3, "name": "tags", "type": "array"},
        ])
    );
    assert_eq!(versions[1]["snapshotId"], 3);
    let named: Vec<i64> = meta["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["schemaVersion"].as_i64().unwrap())
        .collect();
    assert_eq!(named, [1, 1, 2]);
    let (_, s2) = f.catalog("/catalog/orders/snapshots/2").await;
    assert_eq!(s2["schema"]["version"], 1);
    assert_eq!(s2["schema"]["fields"], versions[0]["fields"]);
}

#[tokio::test]
async fn a_failing_bucket_leaves_the_changes_pending_and_a_later_flush_writes_them() {
    let f = fixture(
        "failing",
        &[("CDC_RETRY_BASE_MS", "1000"), ("CDC_RETRY_CAP_MS", "4000")],
    );
    f.fail_writes(true);
    f.ok("insert", "a", json!({"v": 1})).await;
    f.ok("insert", "b", json!({"v": 1})).await;
    let now = f.clock.now_ms();
    let (status, r) = f.flush().await;
    assert_eq!(status, 503, "{r}");
    let writing = "writing cdc/failing/orders/000000000001-000000000002.ndjson.gz";
    assert!(r["error"].as_str().unwrap().contains(writing), "{r}");
    assert_eq!(r["pending"], 2);
    assert_eq!(r["nextFlushAt"], now + 1000);
    let s = f.status().await;
    assert_eq!(
        (s["pending"].as_i64(), s["failures"].as_i64()),
        (Some(2), Some(1))
    );
    assert!(s["lastError"].as_str().unwrap().contains(writing), "{s}");
    // Writes go on meanwhile; the backoff doubles while the bucket keeps failing.
    f.ok("insert", "c", json!({"v": 1})).await;
    f.clock.set(now + 1000);
    let failed_twice = || async {
        let s = f.status().await;
        (s["failures"] == 2).then_some(s)
    };
    let mut s = None;
    for _ in 0..2000 {
        s = failed_twice().await;
        if s.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    let s = s.expect("the alarm retried");
    assert_eq!(s["nextFlushAt"], now + 1000 + 2000, "{s}");
    assert!(f.file_names().await.is_empty());

    // The bucket recovers: the alarm writes the file it tried, with the same name, then the
    // change made meanwhile.
    f.fail_writes(false);
    f.clock.set(now + 3000);
    f.files_until("the retry wrote the file", 1).await;
    let mut s = f.status().await;
    for _ in 0..2000 {
        if s["pending"] == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        s = f.status().await;
    }
    assert_eq!(
        (
            s["pending"].as_i64(),
            s["failures"].as_i64(),
            s["deltas"].as_i64()
        ),
        (Some(0), Some(0), Some(2)),
        "{s}"
    );
    assert_eq!(s["lastError"], Value::Null);
    assert_eq!(
        f.file_names().await,
        [
            "cdc/failing/orders/000000000001-000000000002.ndjson.gz",
            "cdc/failing/orders/000000000003-000000000003.ndjson.gz",
        ]
    );
    assert_eq!(
        docs(&f.rows(2).await),
        json!({"a": {"v": 1}, "b": {"v": 1}, "c": {"v": 1}})
    );
}

#[tokio::test]
async fn the_alarm_flushes_after_the_delay_or_once_enough_changes_wait() {
    let f = fixture(
        "schedule",
        &[("CDC_FLUSH_MS", "5000"), ("CDC_MAX_CHANGES", "3")],
    );
    let now = f.clock.now_ms();
    f.ok("insert", "a", json!({})).await;
    assert_eq!(f.alarm().await, Some(now + 5000));
    f.clock.set(now + 5000);
    f.files_until("the delay passed: one file", 1).await;
    // Three pending changes are a file's worth: written without waiting for the delay.
    for id in ["b", "c", "d", "e"] {
        f.ok("insert", id, json!({})).await;
    }
    f.files_until("a full file", 2).await;
    assert_eq!(
        f.file_names().await[1],
        "cdc/schedule/orders/000000000002-000000000004.ndjson.gz"
    );
    let mut s = f.status().await;
    for _ in 0..2000 {
        if s["pending"] == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        s = f.status().await;
    }
    assert_eq!(s["pending"], 1, "{s}");
    assert!(s["nextFlushAt"].as_i64().unwrap() >= now + 5000, "{s}");
}

#[tokio::test]
async fn rows_beyond_the_limit_are_refused() {
    let f = fixture("limit", &[("CATALOG_MAX_ROWS", "2")]);
    for id in ["a", "b", "c"] {
        f.ok("insert", id, json!({})).await;
    }
    f.flush().await;
    let (status, r) = f.catalog("/catalog/orders/snapshots/1/rows").await;
    assert_eq!(
        (status, r["limit"].as_str()),
        (413, Some("CATALOG_MAX_ROWS")),
        "{r}"
    );
}

#[tokio::test]
async fn commits_are_idempotent_by_file_and_must_continue_the_table() {
    let f = fixture("commits", &[]);
    let catalog =
        f.h.runtime()
            .namespace(CATALOG_BINDING)
            .unwrap()
            .typed::<TableCatalogStub>()
            .get_by_name("commits");
    let commit = |file: &str, first: i64, last: i64| DeltaCommit {
        table: "t".into(),
        file: file.into(),
        first_seq: first,
        last_seq: last,
        inserts: last - first + 1,
        updates: 0,
        deletes: 0,
        fields: vec![],
    };
    let one = catalog.commit_delta(commit("f1", 1, 2)).await.unwrap();
    assert_eq!((one.snapshot_id, one.rows, one.schema_version), (1, 2, 1));
    let again = catalog.commit_delta(commit("f1", 1, 2)).await.unwrap();
    assert_eq!(again, one, "the same file answers the same snapshot");
    for bad in [
        commit("f1", 1, 3),
        commit("f2", 1, 2),
        commit("f2", 4, 5),
        commit("", 3, 3),
        DeltaCommit {
            inserts: 5,
            ..commit("f2", 3, 3)
        },
    ] {
        match catalog.commit_delta(bad.clone()).await {
            Err(CallError::Object(Error::BadRequest(_))) => {}
            other => panic!("{bad:?}: {other:?}"),
        }
    }
    let two = catalog.commit_delta(commit("f2", 3, 3)).await.unwrap();
    assert_eq!((two.snapshot_id, two.parent_id, two.rows), (2, Some(1), 3));
}

#[tokio::test]
async fn a_file_the_catalog_already_has_is_not_committed_twice() {
    // As after a crash between the catalog's commit and the processor's: the catalog has the
    // file the processor is about to write and commit again.
    let f = fixture("lost", &[]);
    f.ok("insert", "a", json!({"v": 1})).await;
    f.ok("insert", "b", json!({"v": 1})).await;
    let file = "cdc/lost/orders/000000000001-000000000002.ndjson.gz";
    let catalog =
        f.h.runtime()
            .namespace(CATALOG_BINDING)
            .unwrap()
            .typed::<TableCatalogStub>()
            .get_by_name("lost");
    let before = catalog
        .commit_delta(DeltaCommit {
            table: COLL.into(),
            file: file.into(),
            first_seq: 1,
            last_seq: 2,
            inserts: 2,
            updates: 0,
            deletes: 0,
            fields: vec![],
        })
        .await
        .unwrap();
    let (status, r) = f.flush().await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["deltas"][0]["snapshotId"], before.snapshot_id);
    assert_eq!(r["pending"], 0);
    let (_, meta) = f.catalog("/catalog/orders").await;
    assert_eq!(meta["snapshots"].as_array().unwrap().len(), 1, "{meta}");
    assert_eq!(f.file_names().await, [file]);
    assert_eq!(
        docs(&f.rows(1).await),
        json!({"a": {"v": 1}, "b": {"v": 1}})
    );
}

#[tokio::test]
async fn changes_beyond_the_pending_bound_are_refused_until_a_flush() {
    let f = fixture("full", &[("CDC_MAX_PENDING", "2")]);
    f.ok("insert", "a", json!({})).await;
    f.ok("insert", "b", json!({})).await;
    let r =
        f.h.fetch(
            &f.name(COLL),
            Request::post("/cdc")
                .unwrap()
                .with_json(&json!({"op": "insert", "id": "c", "doc": {}}))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 429);
    assert_eq!(r.headers()["retry-after"], "1");
    let body: Value = r.json_body().unwrap();
    assert_eq!(body["limit"], "CDC_MAX_PENDING");
    assert_eq!(f.flush().await.0, 200);
    f.ok("insert", "c", json!({})).await;
}

#[tokio::test]
async fn the_events_table_starts_anywhere_takes_inserts_only_and_leaves_no_hole() {
    let f = fixture("evcat", &[]);
    let catalog =
        f.h.runtime()
            .namespace(CATALOG_BINDING)
            .unwrap()
            .typed::<TableCatalogStub>()
            .get_by_name("evcat");
    let commit = |table: &str, file: &str, first: i64, last: i64, inserts: i64| DeltaCommit {
        table: table.into(),
        file: file.into(),
        first_seq: first,
        last_seq: last,
        inserts,
        updates: 0,
        deletes: 0,
        fields: vec![],
    };
    let refused = |c: DeltaCommit| {
        let catalog = catalog.clone();
        async move {
            match catalog.commit_delta(c.clone()).await {
                Err(CallError::Object(Error::BadRequest(_))) => {}
                other => panic!("{c:?}: {other:?}"),
            }
        }
    };
    // A collection's first snapshot still starts at 1, and no collection is called .events.
    refused(commit(COLL, "c1", 5, 6, 2)).await;
    assert!(names::split_processor_name("evcat/.events").is_err());
    // The events table starts wherever archiving started; a sequence may be in no file.
    let one = catalog
        .commit_delta(commit(EVENTS_TABLE, "e1", 5, 9, 4))
        .await
        .unwrap();
    assert_eq!((one.snapshot_id, one.rows, one.first_seq), (1, 4, 5));
    for bad in [
        // A hole after 9.
        commit(EVENTS_TABLE, "e2", 11, 12, 2),
        // More events than sequences, or none.
        commit(EVENTS_TABLE, "e2", 10, 11, 3),
        commit(EVENTS_TABLE, "e2", 10, 11, 0),
        // Events are inserted, never updated or deleted.
        DeltaCommit {
            inserts: 1,
            updates: 1,
            ..commit(EVENTS_TABLE, "e2", 10, 11, 1)
        },
        // A known file with another range.
        commit(EVENTS_TABLE, "e1", 5, 10, 4),
    ] {
        refused(bad).await;
    }
    // A late event's file may overlap; the table's end stays.
    let late = catalog
        .commit_delta(commit(EVENTS_TABLE, "e2", 7, 7, 1))
        .await
        .unwrap();
    assert_eq!(
        (late.snapshot_id, late.parent_id, late.rows),
        (2, Some(1), 5)
    );
    refused(commit(EVENTS_TABLE, "e3", 11, 11, 1)).await;
    let next = catalog
        .commit_delta(commit(EVENTS_TABLE, "e3", 10, 11, 2))
        .await
        .unwrap();
    assert_eq!((next.snapshot_id, next.rows), (3, 7));
    let (status, meta) = f.catalog(&format!("/catalog/{EVENTS_TABLE}")).await;
    assert_eq!(status, 200, "{meta}");
    assert_eq!(
        (meta["lastSeq"].as_i64(), meta["rows"].as_i64()),
        (Some(11), Some(7))
    );
    assert_eq!(
        catalog
            .commit_delta(commit(EVENTS_TABLE, "e1", 5, 9, 4))
            .await
            .unwrap(),
        one,
        "idempotent by file"
    );
}

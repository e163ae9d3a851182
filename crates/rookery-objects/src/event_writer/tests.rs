//! The event writer through the test harness: a manual clock, a bucket in a temporary
//! directory, files read back and decompressed.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use flate2::read::GzDecoder;
use rookery::testing::TestHarness;
use rookery::{Buckets, Clock, ManualClock, Migration, Runtime, SystemClock, Vars};
use serde_json::{Value, json};

use super::*;
use crate::cdc::{CATALOG_BINDING, Catalog, DeltaCommit, EVENTS_TABLE, TableCatalogStub};

const NS: &str = "shop";

struct Fixture {
    h: TestHarness,
    clock: Arc<ManualClock>,
    _dir: tempfile::TempDir,
    bucket_dir: PathBuf,
}

fn fixture(vars: &[(&str, &str)]) -> Fixture {
    fixture_with(vars, false)
}

/// [`fixture`], with a `Catalog` bound as `CATALOG` when `catalog`.
fn fixture_with(vars: &[(&str, &str)], catalog: bool) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let bucket_dir = dir.path().join("buckets/events");
    let clock = Arc::new(ManualClock::new(SystemClock.now_ms()));
    let mut v = Vars::new();
    for (name, value) in vars {
        v.set_var(*name, *value);
    }
    let mut buckets = Buckets::new();
    buckets.bind(BUCKET_BINDING, "events", &bucket_dir);
    let mut builder = Runtime::builder_in_memory()
        .clock(clock.clone())
        .vars(v)
        .buckets(buckets);
    if catalog {
        builder = builder
            .class::<Catalog>("Catalog")
            .binding(CATALOG_BINDING, "Catalog")
            .migration(Migration {
                tag: "catalog".into(),
                new_classes: vec!["Catalog".into()],
                ..Migration::default()
            });
    }
    Fixture {
        h: TestHarness::from_builder::<EventWriter>(builder).unwrap(),
        clock,
        _dir: dir,
        bucket_dir,
    }
}

/// A stamped event as the Subscriptions object makes them.
fn event(seq: i64, ts: i64) -> Value {
    json!({
        "id": format!("evt_{seq}"),
        "type": "order.created",
        "data": {"n": seq, "text": "x".repeat(20)},
        "timestamp": ts,
        "sequence": seq,
        "namespace": NS,
    })
}

impl Fixture {
    fn sink(&self) -> EventSinkStub {
        self.h
            .namespace()
            .unwrap()
            .typed::<EventSinkStub>()
            .get_by_name(NS)
    }

    async fn append(&self, seqs: impl IntoIterator<Item = i64>) -> Appended {
        let ts = self.clock.now_ms();
        let events = seqs.into_iter().map(|s| event(s, ts).to_string()).collect();
        self.sink().append(events).await.unwrap()
    }

    async fn status(&self) -> WriterStatus {
        self.sink().status().await.unwrap()
    }

    async fn alarm(&self) -> Option<i64> {
        self.h.run(NS, |s| s.storage().get_alarm()).await.unwrap()
    }

    /// The bucket's files (keys) and their events, in key order.
    fn files(&self) -> Vec<(String, Vec<Value>)> {
        let mut out = vec![];
        collect(&self.bucket_dir, &self.bucket_dir, &mut out);
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    fn catalog_stub(&self) -> TableCatalogStub {
        self.h
            .runtime()
            .namespace(CATALOG_BINDING)
            .unwrap()
            .typed::<TableCatalogStub>()
            .get_by_name(NS)
    }

    /// The catalog's answer to `GET path`.
    async fn catalog(&self, path: &str) -> (u16, Value) {
        let ns = self.h.runtime().namespace(CATALOG_BINDING).unwrap();
        let r = ns
            .get_by_name(NS)
            .fetch(Request::get(path).unwrap())
            .await
            .unwrap();
        (r.status().as_u16(), r.json_body().unwrap())
    }

    /// The events table's snapshots as `(file, firstSeq, lastSeq, inserts)`.
    async fn snapshots(&self) -> Vec<(String, i64, i64, i64)> {
        let (status, meta) = self.catalog(&format!("/catalog/{EVENTS_TABLE}")).await;
        assert_eq!(status, 200, "{meta}");
        meta["snapshots"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["file"].as_str().unwrap().to_string(),
                    s["firstSeq"].as_i64().unwrap(),
                    s["lastSeq"].as_i64().unwrap(),
                    s["inserts"].as_i64().unwrap(),
                )
            })
            .collect()
    }

    /// The events table's rows as of snapshot `n`: event id → event.
    async fn rows(&self, n: i64) -> serde_json::Map<String, Value> {
        let (status, r) = self
            .catalog(&format!("/catalog/{EVENTS_TABLE}/snapshots/{n}/rows"))
            .await;
        assert_eq!(status, 200, "{r}");
        let rows = r["rows"].as_array().unwrap();
        assert_eq!(r["count"].as_u64(), Some(rows.len() as u64), "{r}");
        rows.iter()
            .map(|row| (row["id"].as_str().unwrap().to_string(), row["doc"].clone()))
            .collect()
    }

    /// The sequences of every event in every file, in key order.
    fn written(&self) -> Vec<i64> {
        self.files()
            .iter()
            .flat_map(|(_, events)| events.iter().map(|e| e["sequence"].as_i64().unwrap()))
            .collect()
    }
}

fn collect(root: &Path, dir: &Path, out: &mut Vec<(String, Vec<Value>)>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        let key = path
            .strip_prefix(root)
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        if key.starts_with(rookery::BUCKET_TEMP_DIR) {
            continue;
        }
        if path.is_dir() {
            collect(root, &path, out);
        } else {
            let mut text = String::new();
            GzDecoder::new(std::fs::File::open(&path).unwrap())
                .read_to_string(&mut text)
                .unwrap();
            assert!(text.ends_with('\n'), "{key}: every line ends in a newline");
            let events = text
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
            out.push((key, events));
        }
    }
}

#[tokio::test]
async fn files_hold_exactly_the_appended_events_once_and_in_order() {
    let f = fixture(&[("EVENTS_WRITER_MAX_EVENTS", "5")]);
    let ts = f.clock.now_ms();
    let a = f.append(1..=3).await;
    assert_eq!((a.accepted, a.skipped, a.files_written), (3, 0, 0));
    // A retried append is skipped whole; an overlapping one adds only what is new.
    let a = f.append(1..=3).await;
    assert_eq!((a.accepted, a.skipped), (0, 3));
    // Out of order within one append is fine: sorted first.
    let a = f.append([7, 2, 3, 4, 6, 5]).await;
    assert_eq!((a.accepted, a.skipped, a.highest_sequence), (4, 2, 7));
    assert_eq!(a.files_written, 1, "5 events reached the size bound");
    let s = f.status().await;
    assert_eq!((s.buffered_events, s.files_written, s.skipped), (2, 1, 5));
    let flushed = f.sink().flush().await.unwrap();
    assert_eq!(
        (flushed.files, flushed.events, flushed.remaining),
        (1, 2, 0)
    );
    assert_eq!(flushed.error, None);
    let date = utc_date(ts);
    let files = f.files();
    let names: Vec<&str> = files.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        names,
        [
            format!("shop/{date}/000000000001-000000000005.ndjson.gz"),
            format!("shop/{date}/000000000006-000000000007.ndjson.gz"),
        ]
    );
    // Exactly the events as appended.
    let all: Vec<Value> = files.into_iter().flat_map(|(_, e)| e).collect();
    let want: Vec<Value> = (1..=7).map(|s| event(s, ts)).collect();
    assert_eq!(all, want);
    // Appending them again after the flush writes nothing.
    let a = f.append(1..=7).await;
    assert_eq!((a.accepted, a.skipped), (0, 7));
    assert_eq!(f.sink().flush().await.unwrap().files, 0);
    assert_eq!(f.written(), (1..=7).collect::<Vec<_>>());
    let s = f.status().await;
    assert_eq!(
        (s.files_written, s.events_written, s.buffered_events),
        (2, 7, 0)
    );
    let last = s.last_flush.unwrap();
    assert_eq!((last.first, last.last, last.events), (6, 7, 2));
    assert_eq!(f.alarm().await, None, "nothing buffered, no alarm");
}

#[tokio::test]
async fn the_byte_bound_cuts_files_too() {
    // Each event line is about 150 bytes: three fit in 500.
    let f = fixture(&[("EVENTS_WRITER_MAX_BYTES", "500")]);
    f.append(1..=10).await;
    f.sink().flush().await.unwrap();
    let files = f.files();
    assert!(files.len() >= 3, "{}", files.len());
    for (key, events) in &files {
        let bytes: usize = events.iter().map(|e| e.to_string().len() + 1).sum();
        assert!(bytes <= 500 || events.len() == 1, "{key}: {bytes}");
    }
    assert_eq!(f.written(), (1..=10).collect::<Vec<_>>());
}

#[tokio::test]
async fn the_alarm_flushes_by_age() {
    let f = fixture(&[("EVENTS_WRITER_MAX_AGE_MS", "10000")]);
    let t0 = f.clock.now_ms();
    f.append(1..=2).await;
    assert_eq!(f.alarm().await, Some(t0 + 10_000));
    f.clock.advance(4_000);
    f.append(3..=3).await;
    // The oldest event sets the time.
    assert_eq!(f.alarm().await, Some(t0 + 10_000));
    assert_eq!(f.status().await.oldest_age_ms, Some(4_000));
    assert!(f.files().is_empty());
    f.clock.advance(6_000);
    f.h.fire_alarm(NS).await.unwrap();
    assert_eq!(f.written(), [1, 2, 3]);
    let s = f.status().await;
    assert_eq!((s.buffered_events, s.files_written), (0, 1));
    assert_eq!(f.alarm().await, None);
}

#[tokio::test]
async fn a_failing_bucket_keeps_the_buffer_and_a_later_flush_writes_everything() {
    let f = fixture(&[("EVENTS_WRITER_MAX_EVENTS", "2")]);
    // The bucket's directory is a file: every write fails.
    std::fs::create_dir_all(f.bucket_dir.parent().unwrap()).unwrap();
    std::fs::write(&f.bucket_dir, b"in the way").unwrap();
    let now = f.clock.now_ms();
    let a = f.append(1..=3).await;
    assert_eq!((a.accepted, a.files_written), (3, 0));
    let s = f.status().await;
    assert_eq!((s.buffered_events, s.files_written, s.failures), (3, 0, 1));
    assert!(s.last_error.as_deref().unwrap().contains("put"), "{s:?}");
    assert_eq!(s.next_retry_at, Some(now + 1_000));
    assert_eq!(f.alarm().await, Some(now + 1_000));
    // While backing off, appends only buffer.
    let a = f.append(4..=5).await;
    assert_eq!((a.accepted, a.files_written), (2, 0));
    // A forced flush fails too, and says so; the backoff grows.
    let flushed = f.sink().flush().await.unwrap();
    assert!(flushed.error.is_some());
    assert_eq!((flushed.files, flushed.remaining), (0, 5));
    assert_eq!(f.status().await.failures, 2);
    assert_eq!(f.alarm().await, Some(now + 2_000));
    // The bucket comes back; the retry alarm writes everything, the planned batch first
    // under the name it was given before the failure.
    std::fs::remove_file(&f.bucket_dir).unwrap();
    f.clock.advance(2_000);
    f.h.fire_alarm(NS).await.unwrap();
    assert_eq!(f.written(), [1, 2, 3, 4, 5]);
    let names: Vec<String> = f.files().into_iter().map(|(k, _)| k).collect();
    assert!(
        names[0].ends_with("/000000000001-000000000002.ndjson.gz"),
        "{names:?}"
    );
    let s = f.status().await;
    assert_eq!((s.buffered_events, s.failures), (0, 0));
    assert_eq!((s.last_error, s.next_retry_at), (None, None));
    assert_eq!(f.alarm().await, None);
}

#[tokio::test]
async fn a_planned_batch_keeps_its_events_and_name_when_more_arrive() {
    let f = fixture(&[]);
    std::fs::create_dir_all(f.bucket_dir.parent().unwrap()).unwrap();
    std::fs::write(&f.bucket_dir, b"in the way").unwrap();
    f.append(1..=2).await;
    assert!(f.sink().flush().await.unwrap().error.is_some());
    f.append(3..=4).await;
    std::fs::remove_file(&f.bucket_dir).unwrap();
    let flushed = f.sink().flush().await.unwrap();
    assert_eq!(
        (flushed.files, flushed.events, flushed.remaining),
        (2, 4, 0)
    );
    let files = f.files();
    assert!(files[0].0.ends_with("000000000001-000000000002.ndjson.gz"));
    assert_eq!(files[0].1.len(), 2);
    assert!(files[1].0.ends_with("000000000003-000000000004.ndjson.gz"));
}

#[tokio::test]
async fn bad_appends_write_nothing_and_http_works() {
    let f = fixture(&[]);
    let ts = f.clock.now_ms();
    for bad in [
        json!([1, 2]),
        json!({"id": "a", "type": "t", "timestamp": ts}),
        json!({"id": "", "type": "t", "timestamp": ts, "sequence": 1}),
        json!({"id": "a", "type": "t", "timestamp": "now", "sequence": 1}),
        json!({"id": "a", "type": "t", "timestamp": ts, "sequence": 0}),
    ] {
        let r = f
            .sink()
            .append(vec![event(1, ts).to_string(), bad.to_string()])
            .await;
        assert!(
            matches!(r, Err(CallError::Object(Error::BadRequest(ref m))) if m.starts_with("event 1")),
            "{bad}: {r:?}"
        );
    }
    assert_eq!(f.status().await.buffered_events, 0);
    // Over HTTP: status and flush; appends are typed calls only.
    f.append(1..=2).await;
    let r =
        f.h.fetch(
            NS,
            Request::post("/writer")
                .unwrap()
                .with_json(&json!([]))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 405);
    let r =
        f.h.fetch(NS, Request::get("/writer").unwrap())
            .await
            .unwrap();
    let s: Value = r.json_body().unwrap();
    assert_eq!(
        (s["bufferedEvents"].as_u64(), s["highestSequence"].as_i64()),
        (Some(2), Some(2))
    );
    let r =
        f.h.fetch(NS, Request::post("/writer/flush").unwrap())
            .await
            .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.json_body::<Value>().unwrap()["files"], 1);
    let r =
        f.h.fetch(NS, Request::get("/writer/flush").unwrap())
            .await
            .unwrap();
    assert_eq!(r.status().as_u16(), 405);
    assert_eq!(f.written(), [1, 2]);
}

#[tokio::test]
async fn an_append_overtaken_by_a_later_one_is_still_written() {
    let f = fixture(&[]);
    f.append(1..=2).await;
    // Two concurrent appends: 4 arrives before 3.
    let a = f.append([4]).await;
    assert_eq!((a.accepted, a.highest_sequence), (1, 4));
    f.sink().flush().await.unwrap();
    let a = f.append([3]).await;
    assert_eq!((a.accepted, a.skipped), (1, 0), "3 is not a repeat");
    let a = f.append([3, 4]).await;
    assert_eq!((a.accepted, a.skipped), (0, 2), "now both are");
    f.sink().flush().await.unwrap();
    assert_eq!(f.written(), [1, 2, 4, 3]);
    let names: Vec<String> = f.files().into_iter().map(|(k, _)| k).collect();
    assert!(
        names[1].ends_with("000000000003-000000000003.ndjson.gz"),
        "{names:?}"
    );
}

/// `events` (made by [`event`]) by id, as the catalog's rows answer them.
fn by_id(events: impl IntoIterator<Item = Value>) -> serde_json::Map<String, Value> {
    events
        .into_iter()
        .map(|e| (e["id"].as_str().unwrap().to_string(), e))
        .collect()
}

#[tokio::test]
async fn written_files_become_snapshots_of_the_events_table_from_any_sequence() {
    let f = fixture_with(&[("EVENTS_WRITER_MAX_EVENTS", "3")], true);
    let ts = f.clock.now_ms();
    // Archiving started at 5: the events before were published before a writer was bound.
    let a = f.append(5..=9).await;
    assert_eq!(a.files_written, 1);
    let flushed = f.sink().flush().await.unwrap();
    assert_eq!((flushed.files, flushed.error), (1, None));
    let files: Vec<String> = f.files().into_iter().map(|(k, _)| k).collect();
    let date = utc_date(ts);
    assert_eq!(
        files,
        [
            format!("shop/{date}/000000000005-000000000007.ndjson.gz"),
            format!("shop/{date}/000000000008-000000000009.ndjson.gz"),
        ]
    );
    assert_eq!(
        f.snapshots().await,
        [(files[0].clone(), 5, 7, 3), (files[1].clone(), 8, 9, 2)]
    );
    let s = f.status().await;
    assert_eq!(s.last_flush.unwrap().snapshot_id, Some(2));
    assert_eq!((s.files_written, s.failures), (2, 0));
    // The rows are the events, by id, as appended; the schema is their shape.
    assert_eq!(f.rows(2).await, by_id((5..=9).map(|n| event(n, ts))));
    assert_eq!(f.rows(1).await, by_id((5..=7).map(|n| event(n, ts))));
    let (_, snapshot) = f
        .catalog(&format!("/catalog/{EVENTS_TABLE}/snapshots/2"))
        .await;
    let mut fields: Vec<(&str, &str)> = snapshot["schema"]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["name"].as_str().unwrap(), f["type"].as_str().unwrap()))
        .collect();
    fields.sort();
    assert_eq!(
        fields,
        [
            ("data", "object"),
            ("id", "string"),
            ("namespace", "string"),
            ("sequence", "number"),
            ("timestamp", "number"),
            ("type", "string"),
        ]
    );
    let (_, tables) = f.catalog("/catalog").await;
    assert_eq!(tables["tables"][0]["name"], EVENTS_TABLE, "{tables}");
    assert_eq!(tables["tables"][0]["rows"], 5, "{tables}");
}

#[tokio::test]
async fn sequences_never_archived_and_late_events_leave_no_hole() {
    let f = fixture_with(&[], true);
    let ts = f.clock.now_ms();
    f.append(1..=2).await;
    f.sink().flush().await.unwrap();
    // 3 and 4 are late (overtaken by 5 and 6): the next snapshot accounts for 3..=6 with two
    // events, and the file of 3 and 4, when they come, overlaps it.
    f.append(5..=6).await;
    f.sink().flush().await.unwrap();
    f.append(3..=4).await;
    f.sink().flush().await.unwrap();
    let snapshots = f.snapshots().await;
    let ranges: Vec<_> = snapshots.iter().map(|s| (s.1, s.2, s.3)).collect();
    assert_eq!(ranges, [(1, 2, 2), (3, 6, 2), (3, 4, 2)]);
    assert_eq!(f.written(), [1, 2, 3, 4, 5, 6], "in key order, once each");
    assert_eq!(f.rows(3).await, by_id((1..=6).map(|n| event(n, ts))));
    let (_, meta) = f.catalog(&format!("/catalog/{EVENTS_TABLE}")).await;
    assert_eq!(
        (meta["lastSeq"].as_i64(), meta["rows"].as_i64()),
        (Some(6), Some(6))
    );
}

#[tokio::test]
async fn a_failed_commit_is_retried_without_writing_the_file_again() {
    let f = fixture_with(&[], true);
    let ts = f.clock.now_ms();
    // The events table ends at 1, and nothing archives 2..=4: the writer's file from 5 would
    // leave a hole, so the catalog refuses it.
    let commit = |file: &str, first: i64, last: i64, inserts: i64| DeltaCommit {
        table: EVENTS_TABLE.into(),
        file: file.into(),
        first_seq: first,
        last_seq: last,
        inserts,
        updates: 0,
        deletes: 0,
        fields: vec![],
    };
    f.catalog_stub()
        .commit_delta(commit("elsewhere/1", 1, 1, 1))
        .await
        .unwrap();
    f.append(5..=6).await;
    let now = f.clock.now_ms();
    let flushed = f.sink().flush().await.unwrap();
    let error = flushed.error.unwrap();
    assert!(error.contains("to the catalog"), "{error}");
    assert_eq!((flushed.files, flushed.remaining), (0, 2));
    let s = f.status().await;
    assert_eq!((s.failures, s.buffered_events, s.files_written), (1, 2, 0));
    assert_eq!(s.last_error.as_deref(), Some(error.as_str()));
    assert_eq!(s.next_retry_at, Some(now + 1_000));
    assert_eq!(f.alarm().await, Some(now + 1_000));
    let file = file_name(NS, ts, 5, 6);
    let inode = |key: &str| {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(f.bucket_dir.join(key)).unwrap().ino()
    };
    let first_inode = inode(&file);
    // Still refused: the backoff doubles, the file is not written again.
    f.clock.advance(1_000);
    f.h.fire_alarm(NS).await.unwrap();
    assert_eq!(f.status().await.failures, 2);
    assert_eq!(f.alarm().await, Some(now + 1_000 + 2_000));
    // Once the catalog can take it, the retry commits the file as it was written.
    f.catalog_stub()
        .commit_delta(commit("elsewhere/2", 2, 4, 1))
        .await
        .unwrap();
    f.clock.advance(2_000);
    f.h.fire_alarm(NS).await.unwrap();
    assert_eq!(inode(&file), first_inode, "the file was written once");
    assert_eq!(f.files().len(), 1);
    let snapshots = f.snapshots().await;
    assert_eq!(snapshots.len(), 3);
    assert_eq!(snapshots[2], (file.clone(), 5, 6, 2));
    let s = f.status().await;
    assert_eq!((s.failures, s.buffered_events, s.files_written), (0, 0, 1));
    assert_eq!((s.last_error, s.next_retry_at), (None, None));
    assert_eq!(s.last_flush.unwrap().snapshot_id, Some(3));
    assert_eq!(f.alarm().await, None);
}

#[tokio::test]
async fn a_file_the_catalog_already_has_is_committed_once() {
    // As after a crash between the catalog's commit and the writer's: the catalog has the file
    // the writer is about to write and commit again.
    let f = fixture_with(&[], true);
    let ts = f.clock.now_ms();
    f.append(1..=2).await;
    let file = file_name(NS, ts, 1, 2);
    let before = f
        .catalog_stub()
        .commit_delta(DeltaCommit {
            table: EVENTS_TABLE.into(),
            file: file.clone(),
            first_seq: 1,
            last_seq: 2,
            inserts: 2,
            updates: 0,
            deletes: 0,
            fields: vec![],
        })
        .await
        .unwrap();
    let flushed = f.sink().flush().await.unwrap();
    assert_eq!((flushed.files, flushed.error), (1, None));
    assert_eq!(f.snapshots().await, [(file, 1, 2, 2)]);
    let s = f.status().await;
    assert_eq!(s.last_flush.unwrap().snapshot_id, Some(before.snapshot_id));
    assert_eq!(f.rows(1).await, by_id((1..=2).map(|n| event(n, ts))));
}

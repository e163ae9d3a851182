//! Point-in-time recovery: bookmarks, restores on the next session, retention and compaction.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rookery::testing::{Blank, TestHarness, wait_until};
use rookery::{Error, HistoryOptions, ManualClock, Runtime, RuntimeOptions};

/// A harness over `dir` whose history is kept for an hour, in small log segments.
fn harness(dir: &Path, clock: &Arc<ManualClock>) -> TestHarness {
    let options = RuntimeOptions {
        history: HistoryOptions {
            retention: Duration::from_secs(3600),
            ..HistoryOptions::default()
        },
        ..RuntimeOptions::default()
    };
    TestHarness::from_builder::<Blank>(
        Runtime::builder(dir)
            .options(options)
            .clock(clock.clone())
            .log_segment_bytes(2 * 1024),
    )
    .unwrap()
}

async fn increment(h: &TestHarness, name: &str) -> i64 {
    h.run(name, |state| {
        let n = state.storage().get::<i64>("n")?.unwrap_or(0) + 1;
        state.storage().put("n", &n)?;
        Ok(n)
    })
    .await
    .unwrap()
}

async fn value(h: &TestHarness, name: &str) -> Option<i64> {
    h.run(name, |state| state.storage().get::<i64>("n"))
        .await
        .unwrap()
}

async fn bookmark(h: &TestHarness, name: &str) -> String {
    h.run(name, |state| state.storage().get_current_bookmark())
        .await
        .unwrap()
}

/// Asks for a restore to `bookmark` and restarts the object; returns the undo bookmark.
async fn restore(h: &TestHarness, name: &str, bookmark: &str) -> rookery::Result<String> {
    let bookmark = bookmark.to_string();
    h.run(name, move |state| {
        let undo = state
            .storage()
            .on_next_session_restore_bookmark(&bookmark)?;
        state.abort();
        Ok(undo)
    })
    .await
}

#[tokio::test]
async fn an_object_restarts_at_a_bookmark_and_the_restore_is_durable_and_undoable() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(1_000_000));
    let h = harness(dir.path(), &clock);
    for _ in 0..3 {
        increment(&h, "c").await;
    }
    let at_three = bookmark(&h, "c").await;
    for _ in 0..2 {
        increment(&h, "c").await;
    }
    // Another object's writes in between are not touched by the restore.
    increment(&h, "other").await;
    let undo = restore(&h, "c", &at_three).await.unwrap();
    assert_eq!(value(&h, "c").await, Some(3), "restored to the bookmark");
    assert_eq!(value(&h, "other").await, Some(1));
    // Writes go on from the restored state, and survive a restart (the restore is not
    // applied again).
    assert_eq!(increment(&h, "c").await, 4);
    assert!(h.shutdown().await);
    let h = harness(dir.path(), &clock);
    assert_eq!(value(&h, "c").await, Some(4));
    // The undo bookmark brings back the state before the restore.
    restore(&h, "c", &undo).await.unwrap();
    assert_eq!(value(&h, "c").await, Some(5));
    // A bookmark from before the object's first write restores nothing at all.
    let fresh = bookmark(&h, "new").await;
    increment(&h, "new").await;
    restore(&h, "new", &fresh).await.unwrap();
    assert_eq!(value(&h, "new").await, None);
    assert!(h.shutdown().await);
}

#[tokio::test]
async fn a_bookmark_for_a_time_restores_the_state_of_that_time() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(1_000_000));
    let h = harness(dir.path(), &clock);
    increment(&h, "c").await;
    clock.advance(1_000);
    increment(&h, "c").await;
    increment(&h, "c").await;
    clock.advance(1_000);
    increment(&h, "c").await;
    let for_time = |t: i64| h.run("c", move |state| state.storage().get_bookmark_for_time(t));
    let at_one = for_time(1_000_500).await.unwrap();
    let at_three = for_time(1_001_000).await.unwrap();
    assert!(at_one < at_three, "bookmarks sort as they were taken");
    restore(&h, "c", &at_three).await.unwrap();
    assert_eq!(value(&h, "c").await, Some(3));
    restore(&h, "c", &at_one).await.unwrap();
    assert_eq!(value(&h, "c").await, Some(1));
    assert!(h.shutdown().await);
}

#[tokio::test]
async fn bad_bookmarks_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(1_000_000));
    let h = harness(dir.path(), &clock);
    increment(&h, "c").await;
    for bad in ["", "nope", "zzzzzzzzzzzzzzzz", "ffffffffffffffff"] {
        match restore(&h, "c", bad).await {
            Err(Error::BadRequest(message)) => assert!(message.contains("bookmark"), "{message}"),
            other => panic!("{bad:?}: {other:?}"),
        }
    }
    assert_eq!(value(&h, "c").await, Some(1));
    assert!(h.shutdown().await);
}

#[tokio::test]
async fn history_past_retention_is_compacted_and_restores_still_start_from_it() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(1_000_000));
    let h = harness(dir.path(), &clock);
    let mut early = String::new();
    for i in 1..=20 {
        increment(&h, "c").await;
        if i == 5 {
            early = bookmark(&h, "c").await;
        }
    }
    // A restart covers every commit so far: recovery no longer needs those segments.
    assert!(h.shutdown().await);
    let h = harness(dir.path(), &clock);
    clock.advance(2 * 3600 * 1000);
    let mut middle = String::new();
    for i in 21..=40 {
        increment(&h, "c").await;
        if i == 30 {
            middle = bookmark(&h, "c").await;
        }
    }
    let folded = h.runtime().compact_history().await.unwrap();
    assert!(folded > 0, "segments past retention were compacted");
    let snapshots = dir.path().join("history");
    assert!(
        walk(&snapshots)
            .iter()
            .any(|p| p.extension().is_some_and(|e| e == "sqlite")),
        "the object has a snapshot"
    );
    // What was compacted away can no longer be named.
    match restore(&h, "c", &early).await {
        Err(Error::BadRequest(message)) => assert!(message.contains("older"), "{message}"),
        other => panic!("{other:?}"),
    }
    let too_old = h
        .run("c", |state| state.storage().get_bookmark_for_time(999_999))
        .await;
    assert!(matches!(too_old, Err(Error::BadRequest(_))), "{too_old:?}");
    // The time of the newest compacted commit is the snapshot itself: still reachable.
    let horizon = h
        .run("c", |state| {
            state.storage().get_bookmark_for_time(1_000_000)
        })
        .await
        .unwrap();
    restore(&h, "c", &horizon).await.unwrap();
    assert_eq!(value(&h, "c").await, Some(20));
    // A bookmark after the horizon starts from the snapshot (the state at 20).
    restore(&h, "c", &middle).await.unwrap();
    assert_eq!(value(&h, "c").await, Some(30));
    assert!(h.shutdown().await);
    // And the data directory opens again with its history.
    let h = harness(dir.path(), &clock);
    assert_eq!(value(&h, "c").await, Some(30));
    assert!(h.shutdown().await);
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                out.extend(walk(&path));
            } else {
                out.push(path);
            }
        }
    }
    out
}

#[tokio::test]
async fn history_past_its_byte_cap_is_compacted_whatever_its_age() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(1_000_000));
    let options = RuntimeOptions {
        history: HistoryOptions {
            retention: Duration::from_secs(3600),
            // Pages are compressed: 30 counter increments log about 5 KiB.
            max_bytes: 2 * 1024,
        },
        ..RuntimeOptions::default()
    };
    let open = || {
        TestHarness::from_builder::<Blank>(
            Runtime::builder(dir.path())
                .options(options)
                .clock(clock.clone())
                .log_segment_bytes(1024),
        )
        .unwrap()
    };
    let h = open();
    let mut early = String::new();
    for i in 1..=30 {
        increment(&h, "c").await;
        if i == 2 {
            early = bookmark(&h, "c").await;
        }
    }
    assert!(h.shutdown().await);
    let h = open();
    // Nothing is past the hour of retention, but the history holds more than 2 KiB.
    let folded = h.runtime().compact_history().await.unwrap();
    assert!(folded > 0, "the byte cap forced compaction");
    match restore(&h, "c", &early).await {
        Err(Error::BadRequest(message)) => assert!(message.contains("older"), "{message}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        value(&h, "c").await,
        Some(30),
        "compaction changed no live state"
    );
    assert!(h.shutdown().await);
}

/// Object database files this process holds open under `dir`.
fn open_files(dir: &Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|t| t.starts_with(dir.join("objects")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_whose_files_were_closed_while_idle_restores_to_its_bookmark() {
    const OPEN: usize = 4;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().canonicalize().unwrap();
    let clock = Arc::new(ManualClock::new(1_000_000));
    let mut options = RuntimeOptions {
        history: HistoryOptions {
            retention: Duration::from_secs(3600),
            ..HistoryOptions::default()
        },
        ..RuntimeOptions::default()
    };
    options.host.max_open_databases = OPEN;
    let build = || {
        TestHarness::from_builder::<Blank>(
            Runtime::builder(&data)
                .options(options)
                .clock(clock.clone())
                .log_segment_bytes(2 * 1024),
        )
        .unwrap()
    };
    let h = build();
    for _ in 0..3 {
        increment(&h, "c").await;
    }
    let at_three = bookmark(&h, "c").await;
    for _ in 0..2 {
        increment(&h, "c").await;
    }
    let file = open_files(&data);
    assert_eq!(file.len(), 1, "only c is open: {file:?}");
    // Newer objects push c, the least recently used, to close its files (it stays live).
    for other in 0..3 * OPEN {
        increment(&h, &format!("o-{other}")).await;
    }
    let rt = h.runtime().clone();
    wait_until("idle objects closed their files", || {
        rt.stats().open_databases <= OPEN && !open_files(&data).contains(&file[0])
    })
    .await;
    // Restored while its file is closed (its WAL folded in when it closed, or still in memory
    // had its last commit not been durable yet).
    restore(&h, "c", &at_three).await.unwrap();
    assert_eq!(value(&h, "c").await, Some(3), "restored to the bookmark");
    assert_eq!(increment(&h, "c").await, 4);
    for other in 0..3 * OPEN {
        assert_eq!(value(&h, &format!("o-{other}")).await, Some(1));
    }
    assert!(h.shutdown().await);
    drop(rt);
    let h = build();
    assert_eq!(value(&h, "c").await, Some(4), "the restore is durable");
    assert!(h.shutdown().await);
}

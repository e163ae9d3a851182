//! The cap in bytes on live objects (`max_live_bytes`): beyond it, colder idle objects first
//! shrink (fold their WALs, which are in memory, and free their page caches) with their files
//! open, then close their files (freeing their SQLite connections), and when closing is not
//! enough, leave memory. Alone in its test binary: SQLite counts its memory per process.

use rookery::prelude::*;
use rookery::testing::{TestHarness, wait_until};
use rookery::{HostOptions, Runtime, RuntimeOptions};

/// A counter in storage; answers its value and how many requests this instance has seen.
struct Tally {
    state: ObjectState,
    seen: u64,
}

impl DurableObject for Tally {
    fn new(state: ObjectState, _env: Env) -> Self {
        Self { state, seen: 0 }
    }

    async fn fetch(&mut self, req: Request) -> Result<Response> {
        self.seen += 1;
        let storage = self.state.storage();
        let mut value: u64 = storage.get("value")?.unwrap_or(0);
        if *req.method() == Method::POST {
            value += 1;
            storage.put("value", &value)?;
        }
        Response::json(&(value, self.seen))
    }
}

async fn tally(h: &TestHarness, object: usize, increment: bool) -> (u64, u64) {
    let req = if increment {
        Request::post("/")
    } else {
        Request::get("/")
    };
    let response = h.fetch(&format!("t-{object}"), req.unwrap()).await.unwrap();
    response.json_body().unwrap()
}

fn harness(dir: &std::path::Path, max_live_bytes: u64) -> TestHarness {
    let options = RuntimeOptions {
        host: HostOptions {
            max_live_bytes,
            ..HostOptions::default()
        },
        ..RuntimeOptions::default()
    };
    TestHarness::from_builder::<Tally>(Runtime::builder(dir).options(options)).unwrap()
}

const OBJECTS: usize = 40;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_objects_stay_under_the_byte_cap_closing_files_first_then_leaving() {
    // What an empty runtime and one live object with open files cost, under no cap to speak of.
    let dir = tempfile::tempdir().unwrap();
    let h = harness(dir.path(), u64::MAX);
    let rt = h.runtime().clone();
    let base = rt.stats().live_bytes;
    for object in 0..5 {
        tally(&h, object, true).await;
    }
    let stats = rt.stats();
    let per_object = (stats.live_bytes - base) / 5;
    assert!(
        per_object > 2 * rookery::LIVE_OBJECT_BYTES,
        "an object with open files holds a connection: {per_object} bytes"
    );
    // Each new counter's WAL (its first commits' pages) is in memory, and counted.
    let wal_per_object = stats.wal_bytes / 5;
    assert!(
        wal_per_object >= 4096 && wal_per_object < per_object,
        "{stats:?}"
    );
    // With SQLite's own defaults (a lookaside of 120 KB replaced at each open, 20 pages of
    // cache taken at the first read) a counter's connection held about 160 KB.
    let connection = per_object - wal_per_object;
    assert!(
        connection < 100 * 1024,
        "a counter's connection holds {connection} bytes of SQLite memory"
    );
    assert!(h.shutdown().await);
    drop(rt);

    // Room for about ten objects with open files: the others close theirs and stay live.
    // Closing a file frees the connection and, once its commits are durable, the WAL
    // (folded into the file first).
    let cap = base + 10 * per_object;
    let dir = tempfile::tempdir().unwrap();
    let h = harness(dir.path(), cap);
    let rt = h.runtime().clone();
    for object in 0..OBJECTS {
        assert_eq!(tally(&h, object, true).await, (1, 1));
    }
    wait_until("live objects are under the byte cap", || {
        rt.stats().live_bytes <= cap
    })
    .await;
    let stats = rt.stats();
    assert_eq!(stats.live_objects, OBJECTS, "closing files was enough");
    assert!(
        stats.wal_bytes < OBJECTS as u64 * wal_per_object,
        "closed files left their WALs in memory: {stats:?}"
    );
    assert!(stats.open_databases < OBJECTS, "{stats:?}");
    assert!(stats.files_closed > 0, "{stats:?}");
    for object in 0..OBJECTS {
        assert_eq!(tally(&h, object, true).await, (2, 2), "object {object}");
    }
    assert!(h.shutdown().await);
    drop(rt);

    // Room for every object as made, but not for what their WALs grow to afterwards, with no
    // new activation to look at the cap: the cap is held after turns too.
    let cap = base + OBJECTS as u64 * per_object * 3 / 2;
    let dir = tempfile::tempdir().unwrap();
    let h = harness(dir.path(), cap);
    let rt = h.runtime().clone();
    for object in 0..OBJECTS {
        assert_eq!(tally(&h, object, true).await, (1, 1));
    }
    assert_eq!(rt.stats().open_databases, OBJECTS, "{:?}", rt.stats());
    assert_eq!(rt.stats().files_closed, 0, "{:?}", rt.stats());
    // About 4 KiB of WAL per increment: 30 more each is several times the room left.
    for round in 2..32 {
        for object in 0..OBJECTS {
            assert_eq!(tally(&h, object, true).await.0, round);
        }
    }
    // The cap is looked at every 32nd turn node-wide (and again after a round that freed
    // something), so the writes may stop just over it: reads go on until it is held.
    let deadline = tokio::time::Instant::now() + rookery::testing::PATIENCE;
    let mut reader = 0;
    while rt.stats().live_bytes > cap {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until live objects are back under the byte cap: {:?}",
            rt.stats()
        );
        tally(&h, reader % OBJECTS, false).await;
        reader += 1;
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    let stats = rt.stats();
    assert_eq!(
        stats.live_objects, OBJECTS,
        "nothing left memory: {stats:?}"
    );
    // The WALs were folded into the files while the files stayed open (shrinking frees the
    // room without a reopen); thirty increments each would otherwise be in memory still.
    assert!(
        stats.wal_bytes < OBJECTS as u64 * 30 * 4096,
        "no WAL was folded: {stats:?}"
    );
    assert_eq!(
        (stats.files_closed, stats.open_databases),
        (0, OBJECTS),
        "shrinking was enough, no file was closed: {stats:?}"
    );
    for object in 0..OBJECTS {
        assert_eq!(tally(&h, object, false).await.0, 31, "object {object}");
    }
    assert!(h.shutdown().await);
    drop(rt);

    // Room for fewer objects than are live even with every file closed: some leave memory.
    let cap = base + 20 * rookery::LIVE_OBJECT_BYTES;
    let dir = tempfile::tempdir().unwrap();
    let h = harness(dir.path(), cap);
    let rt = h.runtime().clone();
    for object in 0..OBJECTS {
        assert_eq!(tally(&h, object, true).await.0, 1);
    }
    wait_until("objects left memory to get under the byte cap", || {
        let stats = rt.stats();
        stats.live_bytes <= cap && stats.live_objects < OBJECTS
    })
    .await;
    for object in 0..OBJECTS {
        assert_eq!(tally(&h, object, false).await.0, 1, "object {object}");
    }
    assert!(h.shutdown().await);
}

//! Pressure eviction: beyond `max_live_objects`, idle objects drawn from the colder half leave
//! memory, and never the object an event is on its way to.

use rookery::prelude::*;
use rookery::testing::{TestHarness, wait_until};
use rookery::{Runtime, RuntimeOptions};

/// Answers how many requests this instance (not the object's storage) has seen: 1 means the
/// object was activated afresh.
struct Visits {
    seen: u64,
}

impl DurableObject for Visits {
    fn new(_state: ObjectState, _env: Env) -> Self {
        Self { seen: 0 }
    }

    async fn fetch(&mut self, _req: Request) -> Result<Response> {
        self.seen += 1;
        Response::json(&self.seen)
    }
}

async fn visit(h: &TestHarness, object: usize) -> u64 {
    let response = h
        .fetch(&format!("o-{object}"), Request::get("/").unwrap())
        .await
        .unwrap();
    response.json_body().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pressure_evicts_from_the_colder_half() {
    const MAX: usize = 20;
    let dir = tempfile::tempdir().unwrap();
    let mut options = RuntimeOptions::default();
    options.host.max_live_objects = MAX;
    let h =
        TestHarness::from_builder::<Visits>(Runtime::builder(dir.path()).options(options)).unwrap();
    for object in 0..MAX {
        assert_eq!(visit(&h, object).await, 1);
    }
    // Used again in an order unrelated to the first: the first half of it is now the colder.
    let order: Vec<usize> = (0..MAX).map(|i| (i * 7 + 3) % MAX).collect();
    for &object in &order {
        assert_eq!(visit(&h, object).await, 2);
    }
    // One more live object than allowed: the host asks for room down to 90 % of the limit.
    assert_eq!(
        visit(&h, MAX).await,
        1,
        "the newcomer is never the one evicted"
    );
    let rt = h.runtime().clone();
    wait_until("three objects made room", || {
        rt.stats().live_objects == MAX - 2
    })
    .await;
    // The three were drawn from the colder half: the warmer half all stayed.
    for &object in &order[MAX / 2..] {
        assert_eq!(
            visit(&h, object).await,
            3,
            "object {object} was used recently"
        );
    }
    assert_eq!(visit(&h, order[0]).await, 1, "the coldest is always asked");
    let mut evicted = 1;
    for &object in &order[1..MAX / 2] {
        match visit(&h, object).await {
            1 => evicted += 1,
            3 => {}
            seen => panic!("object {object} saw {seen} requests"),
        }
    }
    // At least the three; each of them coming back makes room again, from the colder half.
    assert!(evicted >= 3, "{evicted} of the colder half made room");
    assert!(h.shutdown().await);
}

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
    let name = format!("t-{object}");
    let req = if increment {
        Request::post("/")
    } else {
        Request::get("/")
    };
    let response = h.fetch(&name, req.unwrap()).await.unwrap();
    response.json_body().unwrap()
}

/// Descriptors this process holds on object databases under `dir` (an open object holds one:
/// its WAL is in memory).
fn files_open(dir: &std::path::Path) -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|t| t.starts_with(dir.join("objects")))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_objects_close_their_files_and_stay_in_memory() {
    const OPEN: usize = 10;
    const OBJECTS: usize = 30;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().canonicalize().unwrap();
    let mut options = RuntimeOptions::default();
    options.host.max_open_databases = OPEN;
    let h = TestHarness::from_builder::<Tally>(Runtime::builder(&data).options(options)).unwrap();
    for object in 0..OBJECTS {
        assert_eq!(tally(&h, object, true).await, (1, 1));
    }
    let rt = h.runtime().clone();
    wait_until("idle objects closed their files", || {
        rt.stats().open_databases <= OPEN
    })
    .await;
    assert_eq!(rt.stats().live_objects, OBJECTS, "no object left memory");
    assert!(
        files_open(&data) <= OPEN,
        "{} object files open",
        files_open(&data)
    );
    // Each object reopens its files at its next event, with its data and its instance.
    for object in 0..OBJECTS {
        assert_eq!(tally(&h, object, true).await, (2, 2));
    }
    assert_eq!(rt.stats().activations, OBJECTS as u64);
    wait_until("files closed again", || rt.stats().open_databases <= OPEN).await;
    assert!(h.shutdown().await);
    drop(rt);
    assert_eq!(files_open(&data), 0);

    // Closing at shutdown folded every WAL, open or not, into its file.
    let h = TestHarness::with_data_dir::<Tally>(&data).unwrap();
    for object in 0..OBJECTS {
        assert_eq!(tally(&h, object, false).await.0, 2, "object {object}");
    }
    assert!(h.shutdown().await);
}

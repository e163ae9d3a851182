//! Pressure eviction: beyond `max_live_objects`, the least recently used idle objects leave
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
async fn pressure_evicts_the_least_recently_used_objects() {
    const MAX: usize = 20;
    let dir = tempfile::tempdir().unwrap();
    let mut options = RuntimeOptions::default();
    options.host.max_live_objects = MAX;
    let h = TestHarness::from_builder::<Visits>(Runtime::builder(dir.path()).options(options))
        .unwrap();
    for object in 0..MAX {
        assert_eq!(visit(&h, object).await, 1);
    }
    // Used again in an order unrelated to the first: the first three of it are now the
    // least recently used.
    let order: Vec<usize> = (0..MAX).map(|i| (i * 7 + 3) % MAX).collect();
    for &object in &order {
        assert_eq!(visit(&h, object).await, 2);
    }
    // One more live object than allowed: the host asks for room down to 90 % of the limit.
    assert_eq!(visit(&h, MAX).await, 1, "the newcomer is never the one evicted");
    let rt = h.runtime().clone();
    wait_until("three objects made room", || rt.stats().live_objects == MAX - 2).await;
    for &object in &order[3..] {
        assert_eq!(visit(&h, object).await, 3, "object {object} was used recently");
    }
    for &object in &order[..3] {
        assert_eq!(visit(&h, object).await, 1, "object {object} was the coldest");
    }
    assert!(h.shutdown().await);
}

//! The shard coordinator through the test harness: hot patterns placed on shards, and moves
//! between shards under load that lose and repeat nothing.

use std::time::Duration;

use rookery::Clock;
use rookery::testing::PATIENCE;
use serde_json::{Value, json};

use super::tests::{A, B, C, Fixture, NS, fixture, fixture_on, numbers};

/// Rows of `table` in object `name`.
async fn rows(f: &Fixture, name: &str, table: &'static str) -> i64 {
    f.h.run(name, move |s| {
        s.storage()
            .sql()
            .exec(&format!("SELECT COUNT(*) AS n FROM {table}"), &[])?
            .one()?
            .get("n")
    })
    .await
    .unwrap()
}

impl Fixture {
    /// Moves the clock on in small steps (so retries fall due) until `cond` holds.
    async fn pump_until(&self, what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while !cond() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting until {what}"
            );
            self.clock.set(self.clock.now_ms() + 50);
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    async fn move_to(&self, sub: &str, shard: i64) {
        let (status, r) = self
            .post(
                &format!("/subscriptions/{sub}/shard"),
                json!({ "shard": shard }),
            )
            .await;
        assert_eq!(status, 202, "{r}");
    }

    /// Waits until `sub`'s status names `shard` (None: home) and every event is accounted for.
    async fn placed_on(&self, sub: &str, shard: Option<i64>) -> Value {
        let want = shard.map_or(Value::Null, Value::from);
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let s = self.status(sub).await;
            if s["shard"] == want && s["shardError"].is_null() {
                return s;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{sub} never reached shard {want}: {s}"
            );
            self.clock.set(self.clock.now_ms() + 50);
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    async fn publish_n(&self, ty: &str, from: i64, to: i64) {
        for n in from..to {
            self.publish(json!({"type": ty, "data": {"n": n}})).await;
        }
    }
}

/// Each number acknowledged once, in order: nothing lost, nothing repeated.
fn exactly(acknowledged: &[Value], n: i64) {
    assert_eq!(numbers(acknowledged), (0..n).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_hot_patterns_subscriptions_go_to_shards_and_get_every_event_once_in_order() {
    let f = fixture(&[("EVENTS_SHARDS", "4"), ("EVENTS_HOT_EVENTS", "5")]);
    let a = f.subscribe("order.*", A).await;
    let b = f.subscribe("order.*", B).await;
    let c = f.subscribe("user.*", C).await;
    f.publish_n("user.created", 0, 3).await;
    f.publish_n("order.placed", 0, 40).await;
    let rx = f.rx.clone();
    f.pump_until("every subscriber has every event", || {
        rx.acknowledged(A).len() == 40 && rx.acknowledged(B).len() == 40
    })
    .await;
    exactly(&f.rx.acknowledged(A), 40);
    exactly(&f.rx.acknowledged(B), 40);
    exactly(&f.rx.acknowledged(C), 3);
    // Every attempt was acknowledged: none was sent twice.
    assert_eq!(f.rx.attempts(A).len(), 40);
    assert_eq!(f.rx.attempts(B).len(), 40);
    // Each on the shard its id hashes to.
    let sa = f
        .placed_on(&a, Some(super::coordinator::home_shard(&a, 4)))
        .await;
    f.placed_on(&b, Some(super::coordinator::home_shard(&b, 4)))
        .await;
    let sc = f.status(&c).await;
    assert_eq!(sc["shard"], Value::Null, "a cold pattern stays home: {sc}");
    assert_eq!(
        (sa["delivered"].as_i64(), sa["pending"].as_i64()),
        (Some(40), Some(0))
    );
    // The shard delivered (its own queue), and its copy of the event texts is gone.
    let shard = super::shard::shard_name(NS, sa["shard"].as_i64().unwrap());
    assert_eq!(rows(&f, &shard, "ev_pending").await, 0);
    assert_eq!(rows(&f, NS, "ev_pending").await, 0);
    // A shard is not an HTTP endpoint.
    let r =
        f.h.fetch(&shard, rookery::Request::get("/subscriptions").unwrap())
            .await
            .unwrap();
    assert_eq!(r.status().as_u16(), 404);
}

#[tokio::test]
async fn moves_under_load_lose_nothing_and_repeat_nothing_acknowledged() {
    let f = fixture(&[
        ("EVENTS_SHARDS", "3"),
        ("EVENTS_HOT_EVENTS", "1000000"),
        ("EVENTS_RETRY_BASE_MS", "100"),
        ("EVENTS_RETRY_CAP_MS", "100"),
        ("EVENTS_MAX_ATTEMPTS", "1000"),
    ]);
    let a = f.subscribe("order.*", A).await;
    let b = f.subscribe("order.*", B).await;
    f.move_to(&a, 1).await;
    f.publish_n("order.placed", 0, 10).await;
    let rx = f.rx.clone();
    f.pump_until("A's first events arrive on shard 1", || {
        rx.acknowledged(A).len() >= 5
    })
    .await;
    f.placed_on(&a, Some(1)).await;
    // A fails from here: its backlog (with attempts and an error) must move whole.
    f.rx.fail(A, Some(503));
    f.publish_n("order.placed", 10, 20).await;
    let s = f
        .status_until(&a, "A is backing off on shard 1", |s| {
            s["attempts"].as_i64() > Some(0) && s["shard"] == 1
        })
        .await;
    assert!(s["lastError"].as_str().unwrap().contains("503"), "{s}");
    f.move_to(&a, 2).await;
    f.publish_n("order.placed", 20, 25).await;
    let s = f.placed_on(&a, Some(2)).await;
    assert!(
        s["attempts"].as_i64() > Some(0),
        "the backoff moved along: {s}"
    );
    f.move_to(&a, 0).await;
    f.publish_n("order.placed", 25, 30).await;
    f.placed_on(&a, None).await;
    f.move_to(&a, 3).await;
    f.move_to(&b, 2).await;
    f.publish_n("order.placed", 30, 40).await;
    f.placed_on(&a, Some(3)).await;
    f.rx.fail(A, None);
    f.pump_until("A and B have every event", || {
        rx.acknowledged(A).len() >= 40 && rx.acknowledged(B).len() >= 40
    })
    .await;
    exactly(&f.rx.acknowledged(A), 40);
    exactly(&f.rx.acknowledged(B), 40);
    // While A failed, every attempt carried its oldest undelivered event: order held.
    let failed: Vec<Value> =
        f.rx.attempts(A)
            .into_iter()
            .filter(|t| t.status >= 300)
            .map(|t| t.body)
            .collect();
    let first_failed = failed[0]["data"]["n"].as_i64().unwrap();
    assert!(numbers(&failed).iter().all(|&n| n == first_failed));
    let s = f
        .status_until(&a, "A's queue is empty", |s| s["pending"] == 0)
        .await;
    assert_eq!(s["delivered"], 40, "the counters moved along: {s}");
    // The shards A left hold nothing of it; the namespace's object keeps only its placement.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    for n in [1, 2] {
        let shard = super::shard::shard_name(NS, n);
        loop {
            let left = rows(&f, &shard, "ev_owned").await
                - i64::from(n == 2) /* B lives on shard 2 */;
            if left == 0 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "shard {n} still holds A"
            );
            f.clock.set(f.clock.now_ms() + 50);
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

#[tokio::test]
async fn dead_letters_move_with_their_subscription_and_replay_through_the_shard() {
    let f = fixture(&[
        ("EVENTS_SHARDS", "2"),
        ("EVENTS_HOT_EVENTS", "1000000"),
        ("EVENTS_RETRY_BASE_MS", "100"),
        ("EVENTS_RETRY_CAP_MS", "100"),
        ("EVENTS_MAX_ATTEMPTS", "2"),
    ]);
    f.rx.fail(A, Some(500));
    let a = f.subscribe("**", A).await;
    f.move_to(&a, 1).await;
    f.publish_n("job.failed", 0, 3).await;
    let s = f.placed_on(&a, Some(1)).await;
    assert_eq!(s["shard"], 1);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while f.status(&a).await["deadLetters"] != 3 {
        assert!(tokio::time::Instant::now() < deadline);
        f.clock.set(f.clock.now_ms() + 50);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    f.move_to(&a, 2).await;
    let s = f.placed_on(&a, Some(2)).await;
    assert_eq!(s["deadLetters"], 3, "{s}");
    let (status, r) = f.get("/subscriptions/dead-letters").await;
    assert_eq!(status, 200);
    let letters = r["deadLetters"].as_array().unwrap();
    assert_eq!(
        numbers(
            &letters
                .iter()
                .map(|l| l["event"].clone())
                .collect::<Vec<_>>()
        ),
        [0, 1, 2]
    );
    assert!(
        letters
            .iter()
            .all(|l| l["subscription"] == a.as_str() && l["attempts"] == 2)
    );
    f.rx.fail(A, None);
    let (status, r) = f
        .post(
            "/subscriptions/dead-letters/replay",
            json!({"subscription": a}),
        )
        .await;
    assert_eq!((status, r), (200, json!({"replayed": 3, "remaining": 0})));
    let rx = f.rx.clone();
    f.pump_until("the replayed events are delivered", || {
        rx.acknowledged(A).len() == 3
    })
    .await;
    exactly(&f.rx.acknowledged(A), 3);
}

#[tokio::test]
async fn deleting_a_placed_subscription_deletes_its_shards_copy() {
    let f = fixture(&[("EVENTS_SHARDS", "2"), ("EVENTS_HOT_EVENTS", "1000000")]);
    f.rx.fail(A, Some(500));
    let a = f.subscribe("**", A).await;
    f.move_to(&a, 2).await;
    f.publish_n("x.y", 0, 3).await;
    f.placed_on(&a, Some(2)).await;
    let shard = super::shard::shard_name(NS, 2);
    assert_eq!(rows(&f, &shard, "ev_owned").await, 1);
    let (status, _) = f
        .send(
            rookery::Request::new(rookery::Method::DELETE, &format!("/subscriptions/{a}")).unwrap(),
        )
        .await;
    assert_eq!(status, 200);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while rows(&f, &shard, "ev_subscriptions").await > 0 || rows(&f, NS, "ev_placement").await > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the shard's copy stays"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(rows(&f, &shard, "ev_events").await, 0);
    assert_eq!(rows(&f, &shard, "ev_pending").await, 0);
    // Bad moves are refused.
    let b = f.subscribe("**", B).await;
    let (status, r) = f
        .post(&format!("/subscriptions/{b}/shard"), json!({"shard": 3}))
        .await;
    assert_eq!((status, r["field"].as_str()), (400, Some("shard")), "{r}");
    let (status, _) = f
        .post("/subscriptions/sub_99/shard", json!({"shard": 1}))
        .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn fewer_shards_bring_the_missing_shards_subscriptions_home() {
    let dir = tempfile::tempdir().unwrap();
    let clock = std::sync::Arc::new(rookery::ManualClock::new(rookery::SystemClock.now_ms()));
    let rx = std::sync::Arc::new(crate::test_endpoint::Receivers::default());
    let start = |shards: &'static str| {
        fixture_on(
            rookery::Runtime::builder(dir.path()),
            &[("EVENTS_SHARDS", shards), ("EVENTS_HOT_EVENTS", "1000000")],
            clock.clone(),
            rx.clone(),
        )
    };
    let f = start("3");
    let a = f.subscribe("**", A).await;
    f.move_to(&a, 3).await;
    f.publish_n("x.y", 0, 2).await;
    let rx2 = rx.clone();
    f.pump_until("the shard delivers", || rx2.acknowledged(A).len() == 2)
        .await;
    f.placed_on(&a, Some(3)).await;
    assert!(f.h.shutdown().await, "a clean stop");

    let f = start("2");
    f.publish_n("x.y", 2, 4).await;
    f.placed_on(&a, None).await;
    let rx2 = rx.clone();
    f.pump_until("home delivers", || rx2.acknowledged(A).len() == 4)
        .await;
    exactly(&f.rx.acknowledged(A), 4);
    let shard = super::shard::shard_name(NS, 3);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while rows(&f, &shard, "ev_owned").await > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "shard 3 keeps its copy"
        );
        f.clock.set(f.clock.now_ms() + 50);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

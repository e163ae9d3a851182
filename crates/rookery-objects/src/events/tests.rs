//! The events namespace object through the test harness: a manual clock and recording
//! receivers, so every retry time can be checked exactly.

use std::sync::Arc;
use std::time::Duration;

use rookery::testing::{PATIENCE, TestHarness, wait_until};
use rookery::{Clock, ManualClock, Runtime, SystemClock, Vars};
use serde_json::{Value, json};

use super::*;
use crate::test_endpoint::Receivers;

pub(super) const NS: &str = "shop";
pub(super) const A: &str = "https://a.example/hook";
pub(super) const B: &str = "https://b.example/hook";
pub(super) const C: &str = "https://c.example/hook";

pub(super) struct Fixture {
    pub(super) h: TestHarness,
    pub(super) clock: Arc<ManualClock>,
    pub(super) rx: Arc<Receivers>,
}

/// The harness's class (`TEST`) is also bound as `EVENTS`, which the shard coordinator calls
/// its shards by.
pub(super) fn fixture(vars: &[(&str, &str)]) -> Fixture {
    let clock = Arc::new(ManualClock::new(SystemClock.now_ms()));
    fixture_on(
        Runtime::builder_in_memory(),
        vars,
        clock,
        Arc::new(Receivers::default()),
    )
}

/// [`fixture`] on `builder` (a data directory, say), with the given clock and receivers, so a
/// test can start again on the same state.
pub(super) fn fixture_on(
    builder: rookery::RuntimeBuilder,
    vars: &[(&str, &str)],
    clock: Arc<ManualClock>,
    rx: Arc<Receivers>,
) -> Fixture {
    let mut v = Vars::new();
    for (name, value) in vars {
        v.set_var(*name, *value);
    }
    let builder = builder
        .clock(clock.clone())
        .vars(v)
        .outbound(rx.clone())
        .binding(bindings::EVENTS_BINDING, "TEST");
    Fixture {
        h: TestHarness::from_builder::<Subscriptions>(builder).unwrap(),
        clock,
        rx,
    }
}

impl Fixture {
    pub(super) async fn send(&self, req: Request) -> (u16, Value) {
        let r = self.h.fetch(NS, req).await.unwrap();
        let body = if r.body().is_empty() {
            Value::Null
        } else {
            r.json_body().unwrap()
        };
        (r.status().as_u16(), body)
    }

    pub(super) async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.send(Request::post(path).unwrap().with_json(&body).unwrap())
            .await
    }

    pub(super) async fn get(&self, path: &str) -> (u16, Value) {
        self.send(Request::get(path).unwrap()).await
    }

    pub(super) async fn subscribe(&self, pattern: &str, url: &str) -> String {
        let (status, r) = self
            .post("/subscriptions", json!({"pattern": pattern, "url": url}))
            .await;
        assert_eq!(status, 201, "{r}");
        r["id"].as_str().unwrap().to_string()
    }

    pub(super) async fn publish(&self, event: Value) -> Value {
        let (status, r) = self.post("/events", event).await;
        assert_eq!(status, 200, "{r}");
        r
    }

    pub(super) async fn status(&self, id: &str) -> Value {
        let (status, r) = self.get(&format!("/subscriptions/{id}")).await;
        assert_eq!(status, 200, "{r}");
        r
    }

    /// Polls the subscription's status until `cond` holds.
    pub(super) async fn status_until(
        &self,
        id: &str,
        what: &str,
        cond: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let s = self.status(id).await;
            if cond(&s) {
                return s;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting until {what}: {s}"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    pub(super) async fn alarm(&self) -> Option<i64> {
        self.h.run(NS, |s| s.storage().get_alarm()).await.unwrap()
    }
}

pub(super) fn numbers(events: &[Value]) -> Vec<i64> {
    events
        .iter()
        .map(|e| e["data"]["n"].as_i64().unwrap())
        .collect()
}

#[tokio::test]
async fn events_reach_the_matching_subscriptions_in_order() {
    let f = fixture(&[]);
    let a = f.subscribe("user.*", A).await;
    let b = f.subscribe("*.created", B).await;
    let c = f.subscribe("**", C).await;
    let types = [
        "user.created",
        "order.created",
        "user.deleted",
        "order.shipped",
        "user.profile.updated",
    ];
    let (mut want_a, mut want_b, mut ids) = (vec![], vec![], vec![]);
    for n in 0..20_i64 {
        let ty = types[usize::try_from(n).unwrap() % types.len()];
        let r = f.publish(json!({"type": ty, "data": {"n": n}})).await;
        assert_eq!(r["sequence"], n + 1);
        let mut matched = 1;
        if ty == "user.created" || ty == "user.deleted" {
            want_a.push(n);
            matched += 1;
        }
        if ty.ends_with(".created") {
            want_b.push(n);
            matched += 1;
        }
        assert_eq!(r["matched"], matched, "{ty}");
        ids.push(r["id"].as_str().unwrap().to_string());
    }
    let rx = f.rx.clone();
    let (na, nb) = (want_a.len(), want_b.len());
    wait_until("every subscriber has its events", || {
        rx.acknowledged(A).len() == na
            && rx.acknowledged(B).len() == nb
            && rx.acknowledged(C).len() == 20
    })
    .await;
    assert_eq!(numbers(&f.rx.acknowledged(A)), want_a);
    assert_eq!(numbers(&f.rx.acknowledged(B)), want_b);
    assert_eq!(numbers(&f.rx.acknowledged(C)), (0..20).collect::<Vec<_>>());
    let to_c = f.rx.attempts(C);
    for (n, t) in to_c.iter().enumerate() {
        assert_eq!(t.key, ids[n], "the Idempotency-Key is the event id");
        assert_eq!(t.body["id"], ids[n].as_str());
        assert_eq!(t.body["namespace"], NS);
        assert_eq!(t.body["sequence"], n + 1);
        assert!(t.body["timestamp"].is_i64());
    }
    for (id, count) in [(&a, na), (&b, nb), (&c, 20)] {
        let s = f
            .status_until(id, "the counters settle", |s| s["pending"] == 0)
            .await;
        assert_eq!(s["delivered"], count, "{s}");
        assert_eq!(s["nextAttemptAt"], Value::Null);
    }
    let (_, list) = f.get("/subscriptions").await;
    let listed: Vec<&str> = list["subscriptions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["pattern"].as_str().unwrap())
        .collect();
    assert_eq!(listed, ["user.*", "*.created", "**"]);
    assert_eq!(f.alarm().await, None, "nothing pending, no alarm");
}

#[tokio::test]
async fn a_failing_receiver_gets_every_event_in_order_after_it_recovers_with_backoff() {
    let f = fixture(&[
        ("EVENTS_RETRY_BASE_MS", "1000"),
        ("EVENTS_RETRY_CAP_MS", "4000"),
        ("EVENTS_MAX_ATTEMPTS", "20"),
    ]);
    f.rx.fail(A, Some(503));
    let bad = f.subscribe("order.*", A).await;
    f.subscribe("order.*", B).await;
    let mut ids = vec![];
    for n in 0..3 {
        let r = f
            .publish(json!({"type": "order.placed", "data": {"n": n}}))
            .await;
        ids.push(r["id"].as_str().unwrap().to_string());
    }
    let rx = f.rx.clone();
    wait_until("the healthy subscriber is not held up", || {
        rx.acknowledged(B).len() == 3
    })
    .await;
    // Each failure waits the base doubled per failed attempt, up to the cap, jittered into
    // the upper half: [500, 1000], [1000, 2000], [2000, 4000], [2000, 4000], ...
    for attempt in 1..=5_i64 {
        let now = f.clock.now_ms();
        let s = f
            .status_until(&bad, "the failed attempt is counted", |s| {
                s["attempts"] == attempt
            })
            .await;
        assert_eq!(s["pending"], 3, "{s}");
        assert!(s["lastError"].as_str().unwrap().contains("503"), "{s}");
        let ceiling = (1000_i64 << (attempt - 1)).min(4000);
        let next = s["nextAttemptAt"].as_i64().unwrap();
        assert!(
            (now + ceiling / 2..=now + ceiling).contains(&next),
            "attempt {attempt}: next at +{} ms, ceiling {ceiling}",
            next - now
        );
        assert_eq!(f.alarm().await, Some(next), "the alarm is the next attempt");
        if attempt == 5 {
            f.rx.fail(A, None);
        }
        f.clock.set(next);
    }
    wait_until("the recovered receiver has every event", || {
        rx.acknowledged(A).len() == 3
    })
    .await;
    assert_eq!(numbers(&f.rx.acknowledged(A)), [0, 1, 2]);
    // Never event n + 1 before n was acknowledged: every failed attempt carried the first.
    let attempts = f.rx.attempts(A);
    assert_eq!(attempts.len(), 5 + 3);
    assert!(
        attempts[..5]
            .iter()
            .all(|t| t.key == ids[0] && t.status == 503)
    );
    let s = f
        .status_until(&bad, "the queue is empty", |s| s["pending"] == 0)
        .await;
    assert_eq!(
        (
            s["attempts"].as_i64(),
            s["lastError"].clone(),
            s["nextAttemptAt"].clone(),
            s["delivered"].as_i64()
        ),
        (Some(0), Value::Null, Value::Null, Some(3)),
        "{s}"
    );
}

#[tokio::test]
async fn a_receiver_that_never_recovers_fills_the_dead_letters_and_replay_delivers_them() {
    let f = fixture(&[
        ("EVENTS_RETRY_BASE_MS", "100"),
        ("EVENTS_RETRY_CAP_MS", "100"),
        ("EVENTS_MAX_ATTEMPTS", "3"),
    ]);
    f.rx.fail(A, Some(500));
    let sub = f.subscribe("**", A).await;
    let mut ids = vec![];
    for n in 0..2 {
        let r = f
            .publish(json!({"type": "job.failed", "data": {"n": n}}))
            .await;
        ids.push(r["id"].as_str().unwrap().to_string());
    }
    // Move the clock to each next attempt until both events are dead.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let s = f.status(&sub).await;
        if s["deadLetters"] == 2 {
            assert_eq!(
                (s["pending"].as_i64(), s["nextAttemptAt"].clone()),
                (Some(0), Value::Null)
            );
            break;
        }
        if let Some(next) = s["nextAttemptAt"].as_i64()
            && next > f.clock.now_ms()
        {
            f.clock.set(next);
        }
        assert!(tokio::time::Instant::now() < deadline, "{s}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let keys: Vec<String> = f.rx.attempts(A).into_iter().map(|t| t.key).collect();
    let want: Vec<String> = [0, 0, 0, 1, 1, 1].iter().map(|&i| ids[i].clone()).collect();
    assert_eq!(keys, want, "three attempts each, in order");
    let (status, r) = f.get("/subscriptions/dead-letters").await;
    assert_eq!(status, 200);
    let letters = r["deadLetters"].as_array().unwrap();
    assert_eq!(letters.len(), 2);
    for (n, letter) in letters.iter().enumerate() {
        assert_eq!(letter["subscription"], sub.as_str());
        assert_eq!(letter["event"]["id"], ids[n].as_str());
        assert_eq!(letter["attempts"], 3);
        assert!(letter["lastError"].as_str().unwrap().contains("500"));
    }
    assert_eq!(f.alarm().await, None);

    let (status, r) = f
        .post(
            "/subscriptions/dead-letters/replay",
            json!({"subscription": "sub_99"}),
        )
        .await;
    assert_eq!((status, r["field"].as_str()), (400, Some("subscription")));
    f.rx.fail(A, None);
    let (status, r) = f
        .post("/subscriptions/dead-letters/replay", json!({}))
        .await;
    assert_eq!((status, r), (200, json!({"replayed": 2, "remaining": 0})));
    let rx = f.rx.clone();
    wait_until("the replayed events are delivered", || {
        rx.acknowledged(A).len() == 2
    })
    .await;
    assert_eq!(numbers(&f.rx.acknowledged(A)), [0, 1]);
    let s = f
        .status_until(&sub, "the queue is empty", |s| s["pending"] == 0)
        .await;
    assert_eq!(
        (s["deadLetters"].as_i64(), s["delivered"].as_i64()),
        (Some(0), Some(2))
    );
    let (_, r) = f.get("/subscriptions/dead-letters").await;
    assert_eq!(r["deadLetters"], json!([]));
    // Delivered everywhere: the stored events are gone.
    let stored: i64 =
        f.h.run(NS, |s| {
            s.storage()
                .sql()
                .exec("SELECT COUNT(*) AS n FROM ev_events", &[])?
                .one()?
                .get("n")
        })
        .await
        .unwrap();
    assert_eq!(stored, 0);
}

#[tokio::test]
async fn publishing_with_an_id_is_idempotent() {
    let f = fixture(&[]);
    f.subscribe("order.*", A).await;
    let event = json!({"type": "order.created", "id": "order-1", "data": {"total": 5}});
    let first = f.publish(event.clone()).await;
    assert_eq!(first["id"], "order-1");
    let again = f.publish(event.clone()).await;
    assert_eq!(again, first, "answered the same");
    let (status, r) = f
        .post(
            "/events",
            json!({"type": "order.created", "id": "order-1", "data": {"total": 6}}),
        )
        .await;
    assert_eq!((status, r["field"].as_str()), (409, Some("id")), "{r}");
    let second = f
        .publish(json!({"type": "order.created", "id": "order-2", "data": {"total": 7}}))
        .await;
    assert_eq!(second["sequence"], 2, "the repeat took no sequence number");
    let rx = f.rx.clone();
    wait_until("both are delivered", || rx.acknowledged(A).len() >= 2).await;
    // In order per subscription: a second copy of order-1 would have come before order-2.
    let ids: Vec<Value> =
        f.rx.acknowledged(A)
            .iter()
            .map(|e| e["id"].clone())
            .collect();
    assert_eq!(ids, [json!("order-1"), json!("order-2")]);
    assert_eq!(
        f.publish(event).await,
        first,
        "still the same after delivery"
    );
    // Without an id, each publish is a new event with a new id.
    let x = f.publish(json!({"type": "order.created"})).await;
    let y = f.publish(json!({"type": "order.created"})).await;
    assert_ne!(x["id"], y["id"]);
    assert_eq!(
        (x["sequence"].as_i64(), y["sequence"].as_i64()),
        (Some(3), Some(4))
    );
}

#[tokio::test]
async fn bad_input_is_a_400_naming_the_field_and_writes_nothing() {
    let f = fixture(&[]);
    let r = f
        .send(Request::post("/events").unwrap().with_body("42"))
        .await;
    assert_eq!(r.0, 400);
    for (body, field) in [
        (json!({}), "type"),
        (json!({"type": 5}), "type"),
        (json!({"type": "user created"}), "type"),
        (json!({"type": "user.*"}), "type"),
        (json!({"type": "a..b"}), "type"),
        (json!({"type": "a", "id": ""}), "id"),
        (json!({"type": "a", "id": "has space"}), "id"),
        (json!({"type": "a", "id": 7}), "id"),
        (json!({"type": "a", "id": "x".repeat(129)}), "id"),
    ] {
        let (status, r) = f.post("/events", body.clone()).await;
        assert_eq!(
            (status, r["field"].as_str()),
            (400, Some(field)),
            "{body}: {r}"
        );
        assert!(r["error"].as_str().unwrap().contains(field), "{r}");
    }
    for (body, field) in [
        (json!({}), "pattern"),
        (json!({"pattern": "us*", "url": A}), "pattern"),
        (json!({"pattern": "a..b", "url": A}), "pattern"),
        (json!({"pattern": "a"}), "url"),
        (json!({"pattern": "a", "url": "ftp://a.example/x"}), "url"),
        (json!({"pattern": "a", "url": "not a url"}), "url"),
        (json!({"pattern": "a", "url": "/relative"}), "url"),
    ] {
        let (status, r) = f.post("/subscriptions", body.clone()).await;
        assert_eq!(
            (status, r["field"].as_str()),
            (400, Some(field)),
            "{body}: {r}"
        );
    }
    let (status, r) = f.get("/subscriptions/dead-letters?limit=0").await;
    assert_eq!((status, r["field"].as_str()), (400, Some("limit")));
    assert_eq!(f.get("/subscriptions/sub_9").await.0, 404);
    assert_eq!(
        f.send(Request::new(Method::DELETE, "/subscriptions/sub_9").unwrap())
            .await
            .0,
        404
    );
    assert_eq!(f.get("/events").await.0, 405);
    assert_eq!(
        f.send(Request::new(Method::PUT, "/subscriptions").unwrap())
            .await
            .0,
        405
    );
    assert_eq!(f.get("/nowhere").await.0, 404);
    let (_, list) = f.get("/subscriptions").await;
    assert_eq!(list, json!({"subscriptions": []}));
    let r = f.publish(json!({"type": "a"})).await;
    assert_eq!(
        r["sequence"], 1,
        "refused publishes took no sequence number"
    );
}

#[tokio::test]
async fn the_bounds_are_enforced_with_clear_errors() {
    let f = fixture(&[
        ("EVENTS_MAX_SUBSCRIPTIONS", "2"),
        ("EVENTS_MAX_PENDING", "2"),
        ("EVENTS_MAX_EVENT_BYTES", "200"),
    ]);
    f.rx.fail(A, Some(503));
    let slow = f.subscribe("**", A).await;
    let other = f.subscribe("nothing.here", B).await;
    let (status, r) = f
        .post("/subscriptions", json!({"pattern": "**", "url": C}))
        .await;
    assert_eq!(
        (status, r["limit"].as_str()),
        (507, Some("EVENTS_MAX_SUBSCRIPTIONS")),
        "{r}"
    );
    // Deleting one makes room again.
    let (status, _) = f
        .send(Request::new(Method::DELETE, &format!("/subscriptions/{other}")).unwrap())
        .await;
    assert_eq!(status, 200);
    assert_eq!(f.get(&format!("/subscriptions/{other}")).await.0, 404);
    f.subscribe("x.y", C).await;

    f.publish(json!({"type": "a", "data": {"n": 0}})).await;
    f.publish(json!({"type": "a", "data": {"n": 1}})).await;
    let r =
        f.h.fetch(
            NS,
            Request::post("/events")
                .unwrap()
                .with_json(&json!({"type": "a", "data": {"n": 2}}))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "1");
    let body: Value = r.json_body().unwrap();
    assert_eq!(body["limit"], "EVENTS_MAX_PENDING");
    assert!(body["error"].as_str().unwrap().contains(&slow), "{body}");
    assert_eq!(f.status(&slow).await["pending"], 2);

    let (status, r) = f
        .post("/events", json!({"type": "a", "data": "x".repeat(300)}))
        .await;
    assert_eq!(
        (status, r["limit"].as_str()),
        (413, Some("EVENTS_MAX_EVENT_BYTES"))
    );

    // Once the backlog is delivered, publishing goes on where it stopped.
    f.rx.fail(A, None);
    let s = f.status(&slow).await;
    if let Some(next) = s["nextAttemptAt"].as_i64() {
        f.clock.set(next.max(f.clock.now_ms()));
    }
    let rx = f.rx.clone();
    wait_until("the backlog is delivered", || rx.acknowledged(A).len() == 2).await;
    f.status_until(&slow, "the queue is empty", |s| s["pending"] == 0)
        .await;
    let r = f.publish(json!({"type": "a", "data": {"n": 2}})).await;
    assert_eq!(r["sequence"], 3);
}

#[tokio::test]
async fn the_dead_letter_list_is_bounded_and_counts_what_it_drops() {
    let f = fixture(&[
        ("EVENTS_RETRY_BASE_MS", "10"),
        ("EVENTS_MAX_ATTEMPTS", "1"),
        ("EVENTS_MAX_DEAD_LETTERS", "2"),
    ]);
    f.rx.fail(A, Some(500));
    let sub = f.subscribe("**", A).await;
    for n in 0..3 {
        f.publish(json!({"type": "a", "data": {"n": n}})).await;
    }
    let s = f
        .status_until(&sub, "all three are dead", |s| {
            s["pending"] == 0
                && s["deadLetters"].as_i64().unwrap() + s["dropped"].as_i64().unwrap() == 3
        })
        .await;
    assert_eq!(
        (s["deadLetters"].as_i64(), s["dropped"].as_i64()),
        (Some(2), Some(1))
    );
    let (_, r) = f.get("/subscriptions/dead-letters").await;
    let kept: Vec<i64> = r["deadLetters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["event"]["data"]["n"].as_i64().unwrap())
        .collect();
    assert_eq!(kept, [1, 2], "the oldest is dropped");
}

/// Answers 200 only to requests that arrive while another is in flight: each waits (at most
/// [`PATIENCE`]) for a partner, and is refused with 504 without one.
#[derive(Default)]
struct Rendezvous {
    waiting: tokio::sync::Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
    answers: std::sync::Mutex<Vec<(String, u16)>>,
}

impl rookery::Outbound for Rendezvous {
    fn fetch(
        &self,
        request: Request,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Response>> + Send + '_>> {
        Box::pin(async move {
            let url = request.uri().to_string();
            let partner = {
                let mut waiting = self.waiting.lock().await;
                match waiting.take() {
                    Some(first) => {
                        let _ = first.send(());
                        true
                    }
                    None => {
                        let (tx, rx) = tokio::sync::oneshot::channel();
                        *waiting = Some(tx);
                        drop(waiting);
                        tokio::time::timeout(PATIENCE, rx)
                            .await
                            .is_ok_and(|r| r.is_ok())
                    }
                }
            };
            let status = if partner { 200 } else { 504 };
            self.answers.lock().unwrap().push((url, status));
            Ok(Response::text("ok").with_status(StatusCode::from_u16(status).map_err(Error::msg)?))
        })
    }
}

#[tokio::test]
async fn a_round_sends_every_due_subscriptions_head_at_once() {
    let out = Arc::new(Rendezvous::default());
    let builder = Runtime::builder_in_memory().outbound(out.clone());
    let h = TestHarness::from_builder::<Subscriptions>(builder).unwrap();
    for url in [A, B] {
        let r = h
            .fetch(
                NS,
                Request::post("/subscriptions")
                    .unwrap()
                    .with_json(&json!({"pattern": "**", "url": url}))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 201);
    }
    let r = h
        .fetch(
            NS,
            Request::post("/events")
                .unwrap()
                .with_json(&json!({"type": "order.created"}))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let o = out.clone();
    wait_until("both subscribers were tried", || {
        o.answers.lock().unwrap().len() >= 2
    })
    .await;
    // Sent one after the other, the first would have waited alone and been refused.
    let answers = out.answers.lock().unwrap().clone();
    assert_eq!(answers.len(), 2, "{answers:?}");
    assert!(answers.iter().all(|(_, s)| *s == 200), "{answers:?}");
}

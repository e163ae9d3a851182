//! The advanced rate limiter through the test harness, on a manual clock.

use super::*;
use rookery::Clock;
use rookery::testing::{PATIENCE, TestHarness};
use serde_json::{Value, json};
use std::time::Duration;

async fn post(h: &TestHarness, path: &str, body: Value) -> (u16, Value) {
    let r = h
        .fetch(
            "api",
            Request::post(path).unwrap().with_json(&body).unwrap(),
        )
        .await
        .unwrap();
    (r.status().as_u16(), r.json_body().unwrap())
}

async fn stored(h: &TestHarness) -> usize {
    h.run("api", |s| {
        s.storage().list_raw(&ListOptions::new()).map(|l| l.len())
    })
    .await
    .unwrap()
}

/// Waits (bounded) until the object keeps nothing.
async fn until_empty(h: &TestHarness) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while stored(h).await != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "expired state was never removed"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn fixed_window_admits_the_limit_then_refuses_until_the_window_ends() {
    let h = TestHarness::new::<AdvancedRateLimiter>().unwrap();
    let body = json!({"key": "user:1", "limit": 3, "window": 60_000});
    let mut reset = 0;
    for count in 1..=3 {
        let (status, r) = post(&h, "/check", body.clone()).await;
        assert_eq!(status, 200);
        assert_eq!(
            (r["allowed"].as_bool(), r["count"].as_u64()),
            (Some(true), Some(count))
        );
        assert_eq!(r["remaining"], 3 - count);
        reset = r["resetAt"].as_i64().unwrap();
    }
    let (status, r) = post(&h, "/check", body.clone()).await;
    assert_eq!(status, 200);
    assert_eq!(r["allowed"], false);
    assert_eq!(r["count"], 3);
    let retry = r["retryAfter"].as_i64().unwrap();
    assert!(retry > 0 && retry <= 60_000, "{r}");
    // Another key has its own budget.
    let (_, r) = post(
        &h,
        "/check",
        json!({"key": "user:2", "limit": 3, "window": 60_000}),
    )
    .await;
    assert_eq!(r["allowed"], true);
    // At the window's end the count starts again.
    h.advance(Duration::from_millis(u64::try_from(retry).unwrap()));
    let (_, r) = post(&h, "/check", body.clone()).await;
    assert_eq!(
        (r["allowed"].as_bool(), r["count"].as_u64()),
        (Some(true), Some(1))
    );
    assert_eq!(r["resetAt"].as_i64().unwrap(), reset + 60_000);
}

#[tokio::test]
async fn sliding_window_frees_a_slot_as_each_request_ages_out() {
    let h = TestHarness::new::<AdvancedRateLimiter>().unwrap();
    let body = json!({"key": "k", "limit": 2, "window": 10_000});
    let (_, first) = post(&h, "/check/sliding-window", body.clone()).await;
    assert_eq!(first["allowed"], true);
    h.advance(Duration::from_millis(4_000));
    let (_, second) = post(&h, "/check/sliding-window", body.clone()).await;
    assert_eq!(
        (second["allowed"].as_bool(), second["count"].as_u64()),
        (Some(true), Some(2))
    );
    let (_, refused) = post(&h, "/check/sliding-window", body.clone()).await;
    assert_eq!(refused["allowed"], false);
    assert_eq!(refused["resetAt"], first["resetAt"]);
    assert_eq!(refused["retryAfter"], 6_000);
    // A fixed window would have reset; the sliding one frees only the first slot.
    h.advance(Duration::from_millis(6_000));
    let (_, r) = post(&h, "/check/sliding-window", body.clone()).await;
    assert_eq!(
        (r["allowed"].as_bool(), r["count"].as_u64()),
        (Some(true), Some(2))
    );
    let (_, r) = post(&h, "/check/sliding-window", body.clone()).await;
    assert_eq!(r["allowed"], false);
    assert_eq!(r["retryAfter"], 4_000);
}

#[tokio::test]
async fn token_bucket_spends_and_refills_at_its_rate() {
    let h = TestHarness::new::<AdvancedRateLimiter>().unwrap();
    let take = |tokens: u64| json!({"key": "k", "capacity": 10, "refillRate": 2, "tokens": tokens});
    let (_, r) = post(&h, "/check/token-bucket", take(4)).await;
    assert_eq!(
        (r["allowed"].as_bool(), r["remaining"].as_u64()),
        (Some(true), Some(6))
    );
    let (_, r) = post(&h, "/check/token-bucket", take(6)).await;
    assert_eq!(
        (r["allowed"].as_bool(), r["remaining"].as_u64()),
        (Some(true), Some(0))
    );
    let (_, r) = post(&h, "/check/token-bucket", take(3)).await;
    assert_eq!(r["allowed"], false);
    assert_eq!(r["retryAfter"], 1_500, "3 tokens at 2 per second");
    h.advance(Duration::from_millis(1_500));
    let (_, r) = post(&h, "/check/token-bucket", take(3)).await;
    assert_eq!(
        (r["allowed"].as_bool(), r["remaining"].as_u64()),
        (Some(true), Some(0))
    );
    // `tokens` defaults to 1; the bucket never holds more than its capacity.
    h.advance(Duration::from_secs(3_600));
    let (_, r) = post(
        &h,
        "/check/token-bucket",
        json!({"key": "k", "capacity": 10, "refillRate": 2}),
    )
    .await;
    assert_eq!(
        (r["allowed"].as_bool(), r["remaining"].as_u64()),
        (Some(true), Some(9))
    );
}

#[tokio::test]
async fn leaky_bucket_fills_and_leaks_at_its_rate() {
    let h = TestHarness::new::<AdvancedRateLimiter>().unwrap();
    let body = json!({"key": "k", "capacity": 3, "leakRate": 1});
    for remaining in [2, 1, 0] {
        let (_, r) = post(&h, "/check/leaky-bucket", body.clone()).await;
        assert_eq!(
            (r["allowed"].as_bool(), r["remaining"].as_u64()),
            (Some(true), Some(remaining))
        );
    }
    let (_, r) = post(&h, "/check/leaky-bucket", body.clone()).await;
    assert_eq!(r["allowed"], false);
    assert_eq!(r["retryAfter"], 1_000);
    h.advance(Duration::from_millis(1_000));
    let (_, r) = post(&h, "/check/leaky-bucket", body.clone()).await;
    assert_eq!(
        (r["allowed"].as_bool(), r["remaining"].as_u64()),
        (Some(true), Some(0))
    );
    assert_eq!(
        r["resetAt"].as_i64().unwrap() - h.clock().unwrap().now_ms(),
        3_000
    );
}

#[tokio::test]
async fn missing_or_wrong_fields_are_400_naming_the_field() {
    let h = TestHarness::new::<AdvancedRateLimiter>().unwrap();
    let cases = [
        ("/check", json!({"limit": 1, "window": 1}), "key"),
        ("/check", json!({"key": "", "limit": 1, "window": 1}), "key"),
        ("/check", json!({"key": "k", "window": 1}), "limit"),
        (
            "/check",
            json!({"key": "k", "limit": "5", "window": 1}),
            "limit",
        ),
        (
            "/check",
            json!({"key": "k", "limit": 0, "window": 1}),
            "limit",
        ),
        ("/check", json!({"key": "k", "limit": 1}), "window"),
        (
            "/check/sliding-window",
            json!({"key": "k", "limit": 1, "window": -1}),
            "window",
        ),
        (
            "/check/sliding-window",
            json!({"key": "k", "limit": 1.5, "window": 1}),
            "limit",
        ),
        (
            "/check/token-bucket",
            json!({"key": "k", "refillRate": 1}),
            "capacity",
        ),
        (
            "/check/token-bucket",
            json!({"key": "k", "capacity": 5}),
            "refillRate",
        ),
        (
            "/check/token-bucket",
            json!({"key": "k", "capacity": 5, "refillRate": 0}),
            "refillRate",
        ),
        (
            "/check/token-bucket",
            json!({"key": "k", "capacity": 5, "refillRate": 1, "tokens": 6}),
            "tokens",
        ),
        (
            "/check/leaky-bucket",
            json!({"key": "k", "capacity": 5}),
            "leakRate",
        ),
        (
            "/check/leaky-bucket",
            json!({"key": 7, "capacity": 5, "leakRate": 1}),
            "key",
        ),
    ];
    for (path, body, field) in cases {
        let (status, r) = post(&h, path, body.clone()).await;
        assert_eq!(status, 400, "{path} {body}");
        assert_eq!(r["field"], field, "{path} {body}: {r}");
        assert!(r["error"].as_str().unwrap().contains(field), "{r}");
    }
    let r = h
        .fetch(
            "api",
            Request::post("/check").unwrap().with_body("not json"),
        )
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = h
        .fetch("api", Request::get("/check").unwrap())
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    let r = h
        .fetch("api", Request::post("/nope").unwrap())
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(stored(&h).await, 0, "refused input changes nothing");
}

#[tokio::test]
async fn concurrent_checks_admit_exactly_the_limit() {
    let h = std::sync::Arc::new(TestHarness::new::<AdvancedRateLimiter>().unwrap());
    let paths = [
        ("/check", json!({"key": "c", "limit": 25, "window": 60_000})),
        (
            "/check/sliding-window",
            json!({"key": "c", "limit": 25, "window": 60_000}),
        ),
        (
            "/check/token-bucket",
            json!({"key": "c", "capacity": 25, "refillRate": 1}),
        ),
        (
            "/check/leaky-bucket",
            json!({"key": "c", "capacity": 25, "leakRate": 1}),
        ),
    ];
    for (path, body) in paths {
        let tasks: Vec<_> = (0..100)
            .map(|_| {
                let (h, body) = (h.clone(), body.clone());
                tokio::spawn(async move { post(&h, path, body).await.1["allowed"] == true })
            })
            .collect();
        let mut allowed = 0;
        for t in tasks {
            allowed += usize::from(t.await.unwrap());
        }
        assert_eq!(allowed, 25, "{path}");
    }
}

#[tokio::test]
async fn typed_calls_share_the_state_and_refuse_bad_arguments() {
    let h = TestHarness::new::<AdvancedRateLimiter>().unwrap();
    let limits = h
        .namespace()
        .unwrap()
        .typed::<RateLimitsStub>()
        .get_by_name("api");
    let d = limits.fixed_window("k".into(), 2, 60_000).await.unwrap();
    assert_eq!((d.allowed, d.count), (true, 1));
    let (_, r) = post(
        &h,
        "/check",
        json!({"key": "k", "limit": 2, "window": 60_000}),
    )
    .await;
    assert_eq!(r["count"], 2);
    assert!(
        !limits
            .fixed_window("k".into(), 2, 60_000)
            .await
            .unwrap()
            .allowed
    );
    let d = limits.token_bucket("k".into(), 5, 1.0, 5.0).await.unwrap();
    assert_eq!((d.allowed, d.remaining), (true, 0));
    let d = limits.leaky_bucket("k".into(), 1, 1.0).await.unwrap();
    assert!(d.allowed);
    assert!(
        limits
            .sliding_window("k".into(), 1, 1_000)
            .await
            .unwrap()
            .allowed
    );
    match limits.sliding_window("k".into(), 0, 1_000).await {
        Err(CallError::Object(Error::BadRequest(m))) => assert!(m.contains("limit"), "{m}"),
        other => panic!("expected a bad request, got {other:?}"),
    }
    match limits.leaky_bucket("k".into(), 1, f64::NAN).await {
        Err(CallError::Object(Error::BadRequest(m))) => assert!(m.contains("leakRate"), "{m}"),
        other => panic!("expected a bad request, got {other:?}"),
    }
}

#[tokio::test]
async fn the_alarm_removes_expired_state_and_keeps_live_state() {
    let h = TestHarness::new::<AdvancedRateLimiter>().unwrap();
    post(
        &h,
        "/check",
        json!({"key": "a", "limit": 5, "window": 10_000}),
    )
    .await;
    post(
        &h,
        "/check/sliding-window",
        json!({"key": "b", "limit": 5, "window": 10_000}),
    )
    .await;
    post(
        &h,
        "/check/token-bucket",
        json!({"key": "c", "capacity": 5, "refillRate": 1}),
    )
    .await;
    post(
        &h,
        "/check/leaky-bucket",
        json!({"key": "d", "capacity": 5, "leakRate": 1}),
    )
    .await;
    // A long-lived key keeps its record through cleanups.
    post(
        &h,
        "/check/sliding-window",
        json!({"key": "long", "limit": 5, "window": 3_600_000}),
    )
    .await;
    let alarm = h.run("api", |s| s.storage().get_alarm()).await.unwrap();
    assert!(alarm.is_some(), "a cleanup is scheduled");
    h.advance(Duration::from_millis(10_001));
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let keys: Vec<String> = h
            .run("api", |s| {
                s.storage().list_raw(&ListOptions::new().prefix(RECORD))
            })
            .await
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        if keys == ["k:sliding:long"] {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "left: {keys:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The long key still counts: its window's state survived the cleanup.
    let (_, r) = post(
        &h,
        "/check/sliding-window",
        json!({"key": "long", "limit": 5, "window": 3_600_000}),
    )
    .await;
    assert_eq!(r["count"], 2);
    h.advance(Duration::from_millis(3_600_000));
    until_empty(&h).await;
    let alarm = h.run("api", |s| s.storage().get_alarm()).await.unwrap();
    assert_eq!(alarm, None, "nothing left to clean");
}

//! Seed 002's patterns in the demo app, over real HTTP and WebSockets: the rate limiters, the
//! lock, leader election, the WebSocket room and the game server, with the seed's paths and
//! JSON shapes.

mod common;

use common::ws::{Ws, connect, next_json};
use common::{PATIENCE, TestServer, client, eventually, wait_until};
use futures_util::SinkExt;
use futures_util::future::join_all;
use rookery_server::config::DEMO_CONFIG;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

async fn demo(dir: &std::path::Path) -> TestServer {
    TestServer::start(DEMO_CONFIG, dir).await
}

async fn post(c: &reqwest::Client, url: String, body: &Value) -> (u16, Value) {
    let r = c.post(url).json(body).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

async fn say(ws: &mut Ws, text: &str) {
    ws.send(Message::text(text)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_limiter_algorithm_admits_exactly_its_limit_of_many_concurrent_requests() {
    let dir = tempfile::tempdir().unwrap();
    let server = demo(dir.path()).await;
    let c = client();
    // Windows and rates such that nothing frees up during the burst, however slow the machine.
    let year = 365_u64 * 24 * 3600 * 1000;
    let cases = [
        (
            "check",
            json!({"key": "user:1", "limit": 30, "window": year}),
        ),
        (
            "check/sliding-window",
            json!({"key": "user:1", "limit": 30, "window": year}),
        ),
        (
            "check/token-bucket",
            json!({"key": "user:1", "capacity": 30, "refillRate": 0.000001, "tokens": 1}),
        ),
        (
            "check/leaky-bucket",
            json!({"key": "user:1", "capacity": 30, "leakRate": 0.000001}),
        ),
    ];
    for (path, body) in cases {
        let url = server.url(&format!("/limits/api-limiter/{path}"));
        let answers = join_all((0..120).map(|_| post(&c, url.clone(), &body))).await;
        let mut allowed = 0;
        let mut remaining = Vec::new();
        for (status, r) in answers {
            assert_eq!(status, 200, "{path}: {r}");
            assert!(r["resetAt"].is_i64(), "{path}: {r}");
            if r["allowed"] == true {
                allowed += 1;
                remaining.push(r["remaining"].as_u64().unwrap());
            } else {
                assert!(r["retryAfter"].as_i64().unwrap() > 0, "{path}: {r}");
            }
        }
        assert_eq!(allowed, 30, "{path}: exactly the limit, never one more");
        remaining.sort_unstable();
        assert_eq!(
            remaining,
            (0..30).collect::<Vec<u64>>(),
            "{path}: each count once"
        );
    }
    // The seed's snippet reads {allowed, count, resetAt}.
    let (_, r) = post(
        &c,
        server.url("/limits/api-limiter/check"),
        &json!({"key": "user:2", "limit": 100, "window": 3_600_000}),
    )
    .await;
    assert_eq!(
        (r["allowed"].as_bool(), r["count"].as_u64()),
        (Some(true), Some(1))
    );
    // Limiter names are separate objects.
    let (_, r) = post(
        &c,
        server.url("/limits/other/check"),
        &json!({"key": "user:1", "limit": 30, "window": year}),
    )
    .await;
    assert_eq!(r["count"], 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limiter_input_errors_are_400_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let server = demo(dir.path()).await;
    let c = client();
    for (path, body, field) in [
        ("check", json!({"limit": 1, "window": 1000}), "key"),
        (
            "check",
            json!({"key": "k", "limit": "ten", "window": 1000}),
            "limit",
        ),
        (
            "check/sliding-window",
            json!({"key": "k", "limit": 1}),
            "window",
        ),
        (
            "check/token-bucket",
            json!({"key": "k", "capacity": 5}),
            "refillRate",
        ),
        (
            "check/leaky-bucket",
            json!({"key": "k", "capacity": -5, "leakRate": 1}),
            "capacity",
        ),
    ] {
        let (status, r) = post(&c, server.url(&format!("/limits/x/{path}")), &body).await;
        assert_eq!(status, 400, "{path} {body}");
        assert_eq!(r["field"], field, "{path} {body}: {r}");
        assert!(r["error"].as_str().unwrap().contains(field), "{r}");
    }
    let r = c
        .post(server.url("/limits/x/check"))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = c.get(server.url("/limits/x/check")).send().await.unwrap();
    assert_eq!(r.status(), 405);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lock_has_exactly_one_holder_and_fences_stale_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let server = demo(dir.path()).await;
    let c = client();
    let acquire = server.url("/locks/jobs/acquire");
    let release = server.url("/locks/jobs/release");
    let body = json!({"lockId": "nightly", "ttl": 600_000});
    let answers = join_all((0..80).map(|_| post(&c, acquire.clone(), &body))).await;
    let holders: Vec<&Value> = answers
        .iter()
        .filter(|(status, r)| *status == 200 && r["acquired"] == true)
        .map(|(_, r)| r)
        .collect();
    assert_eq!(holders.len(), 1, "exactly one holder of 80 callers");
    let token = holders[0]["token"].as_u64().unwrap();
    for (status, r) in &answers {
        assert_eq!(*status, 200);
        if r["acquired"] == false {
            assert_eq!(r["token"], Value::Null);
            assert_eq!(r["expiresAt"], holders[0]["expiresAt"]);
        }
    }
    // The holder releases; a new grant has a greater token.
    let (status, r) = post(
        &c,
        release.clone(),
        &json!({"lockId": "nightly", "token": token}),
    )
    .await;
    assert_eq!((status, r["released"].as_bool()), (200, Some(true)));
    let (_, short) = post(&c, acquire.clone(), &json!({"lockId": "nightly", "ttl": 1})).await;
    let stale = short["token"].as_u64().unwrap();
    assert!(stale > token);
    // Its lease ends by the clock; then another caller gets it, with a greater token still.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let newer = loop {
        let (_, r) = post(
            &c,
            acquire.clone(),
            &json!({"lockId": "nightly", "ttl": 600_000}),
        )
        .await;
        if r["acquired"] == true {
            break r["token"].as_u64().unwrap();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the 1 ms lease never ended"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    };
    assert!(newer > stale);
    // The old holder's stale token cannot release the newer holder's lock.
    let (status, r) = post(
        &c,
        release.clone(),
        &json!({"lockId": "nightly", "token": stale}),
    )
    .await;
    assert_eq!((status, r["released"].as_bool()), (409, Some(false)));
    let status: Value = c
        .get(server.url("/locks/jobs/status?lockId=nightly"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (status["locked"].as_bool(), status["token"].as_u64()),
        (Some(true), Some(newer))
    );
    let (status, r) = post(&c, acquire.clone(), &json!({"lockId": "nightly"})).await;
    assert_eq!((status, r["field"].as_str()), (400, Some("ttl")));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_election_follows_the_seed_shape_and_the_term_grows_with_each_new_leader() {
    let dir = tempfile::tempdir().unwrap();
    let server = demo(dir.path()).await;
    let c = client();
    let elect = server.url("/leader/scheduler/elect");
    let answers = join_all((0..40).map(|i| {
        let (c, url) = (c.clone(), elect.clone());
        let body = json!({"nodeId": format!("node-{i}"), "ttl": 600_000});
        async move { post(&c, url, &body).await }
    }))
    .await;
    let leaders: Vec<&Value> = answers
        .iter()
        .map(|(_, r)| r)
        .filter(|r| r["isLeader"] == true)
        .collect();
    assert_eq!(leaders.len(), 1, "one leader of 40 claimants");
    let leader = leaders[0]["leader"].as_str().unwrap().to_string();
    for (status, r) in &answers {
        assert_eq!(*status, 200);
        assert_eq!(
            (r["leader"].as_str(), r["term"].as_u64()),
            (Some(leader.as_str()), Some(1))
        );
        assert!(r["expiresAt"].is_i64());
    }
    // The leader resigns; the next leader has term 2.
    let (_, r) = post(
        &c,
        server.url("/leader/scheduler/resign"),
        &json!({"nodeId": leader}),
    )
    .await;
    assert_eq!(r["leader"], Value::Null);
    let (_, r) = post(&c, elect.clone(), &json!({"nodeId": "short", "ttl": 1})).await;
    assert_eq!(
        (r["isLeader"].as_bool(), r["term"].as_u64()),
        (Some(true), Some(2))
    );
    // Its 1 ms lease ends by the clock; the next claimant takes over with term 3.
    eventually("the short lease has ended", || {
        let (c, elect) = (c.clone(), elect.clone());
        async move {
            let (_, r) = post(&c, elect, &json!({"nodeId": "next", "ttl": 600_000})).await;
            r["isLeader"] == true && r["term"] == 3
        }
    })
    .await;
    let r: Value = c
        .get(server.url("/leader/scheduler"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (r["leader"].as_str(), r["term"].as_u64()),
        (Some("next"), Some(3))
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_room_speaks_the_seed_protocol_and_survives_hibernation() {
    let dir = tempfile::tempdir().unwrap();
    let config = DEMO_CONFIG.replace(
        "data_dir = \"./rookery-data\"",
        "data_dir = \"./rookery-data\"\nhibernation_idle_ms = 50",
    );
    assert_ne!(config, DEMO_CONFIG);
    let server = TestServer::start(&config, dir.path()).await;
    let mut ann = connect(&server, "/rooms/lobby?userId=ann").await;
    let welcome = next_json(&mut ann).await;
    assert_eq!(welcome["type"], "welcome");
    assert_eq!(
        welcome["roomState"],
        json!({"users": ["ann"], "userCount": 1})
    );
    let mut bob = connect(&server, "/rooms/lobby?userId=bob").await;
    assert_eq!(next_json(&mut bob).await["roomState"]["userCount"], 2);
    let joined = next_json(&mut ann).await;
    assert_eq!(
        (joined["type"].as_str(), joined["userId"].as_str()),
        (Some("user_joined"), Some("bob"))
    );

    let rt = server.runtime.clone();
    wait_until("the idle room hibernates", || rt.stats().live_objects == 0).await;
    say(&mut ann, r#"{"type":"chat","message":"Hello, room!"}"#).await;
    for ws in [&mut ann, &mut bob] {
        let chat = next_json(ws).await;
        assert_eq!(chat["type"], "chat");
        assert_eq!(chat["userId"], "ann", "the user is known after hibernation");
        assert_eq!(chat["message"], "Hello, room!");
        assert!(chat["timestamp"].is_i64());
    }
    bob.close(None).await.unwrap();
    let left = next_json(&mut ann).await;
    assert_eq!(
        (left["type"].as_str(), left["userId"].as_str()),
        (Some("user_left"), Some("bob"))
    );
    let r = client()
        .get(server.url("/rooms/lobby"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 426, "a plain request is not a join");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_game_takes_four_players_and_keeps_its_state_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = demo(dir.path()).await;
    let c = client();
    for (i, p) in ["p1", "p2", "p3", "p4"].iter().enumerate() {
        let r = c
            .post(server.url(&format!("/game/g1/join?playerId={p}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let r: Value = r.json().await.unwrap();
        assert_eq!(
            (r["joined"].as_bool(), r["players"].as_u64()),
            (Some(true), Some(i as u64 + 1))
        );
    }
    let r = c
        .post(server.url("/game/g1/join?playerId=p5"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"error": "Game is full"})
    );
    let (status, r) = post(
        &c,
        server.url("/game/g1/move?playerId=p2"),
        &json!({"x": 3, "score": 5}),
    )
    .await;
    assert_eq!((status, r["move"].as_u64()), (200, Some(1)));
    server.stop().await;

    let server = demo(dir.path()).await;
    let state: Value = c
        .get(server.url("/game/g1/state"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(state["status"], "playing");
    assert_eq!(
        state["players"].as_array().unwrap().len(),
        4,
        "players kept"
    );
    assert_eq!(state["players"][1], json!({"id": "p2", "score": 5.0}));
    assert_eq!(state["lastMove"]["move"], json!({"x": 3, "score": 5}));
    let r = c
        .post(server.url("/game/g1/join?playerId=p5"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "still full after the restart");
    server.stop().await;
}

/// An analytics endpoint that records the events it takes, or answers 503 while told to.
#[derive(Default)]
struct Ingest {
    events: std::sync::Mutex<Vec<Value>>,
    failing: std::sync::atomic::AtomicBool,
}

async fn start_ingest() -> (std::sync::Arc<Ingest>, std::net::SocketAddr) {
    use axum::extract::State;
    use std::sync::Arc;
    use std::sync::atomic::Ordering;
    let ingest = Arc::new(Ingest::default());
    let app = axum::Router::new()
        .route(
            "/ingest",
            axum::routing::post(
                |State(i): State<Arc<Ingest>>, axum::Json(batch): axum::Json<Vec<Value>>| async move {
                    if i.failing.load(Ordering::SeqCst) {
                        return http::StatusCode::SERVICE_UNAVAILABLE;
                    }
                    i.events.lock().unwrap().extend(batch);
                    http::StatusCode::OK
                },
            ),
        )
        .with_state(ingest.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (ingest, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffered_events_survive_kill_9_and_are_delivered_at_least_once() {
    use std::sync::atomic::Ordering;
    let (ingest, addr) = start_ingest().await;
    ingest.failing.store(true, Ordering::SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("events.toml");
    std::fs::write(
        &config,
        format!(
            "{DEMO_CONFIG}\n[vars]\nEVENTS_ENDPOINT = \"http://{addr}/ingest\"\nEVENTS_FLUSH_INTERVAL_MS = 600000\n\n[outbound]\nallow = [\"127.0.0.1\"]\n"
        ),
    )
    .unwrap();
    let data = dir.path().join("data");
    let args = ["--config", config.to_str().unwrap()];
    let c = client();
    let server = common::ChildServer::start(&data, &args);
    for i in 0..10 {
        let (status, r) = post(&c, server.url("/events/clicks"), &json!({"n": i})).await;
        assert_eq!((status, r["buffered"].as_u64()), (200, Some(i + 1)));
    }
    // A failed delivery keeps the batch.
    let (status, _) = post(&c, server.url("/events/clicks/flush"), &json!({})).await;
    assert_eq!(status, 200);
    eventually("the failed delivery is counted", || {
        let (c, url) = (c.clone(), server.url("/events/clicks"));
        async move {
            let r: Value = c.get(url).send().await.unwrap().json().await.unwrap();
            r["attempts"].as_u64() >= Some(1) && r["buffered"] == 10
        }
    })
    .await;
    server.kill9();

    let server = common::ChildServer::start(&data, &args);
    let r: Value = c
        .get(server.url("/events/clicks"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        r["buffered"], 10,
        "acknowledged events survive kill -9: {r}"
    );
    ingest.failing.store(false, Ordering::SeqCst);
    let (status, _) = post(&c, server.url("/events/clicks/flush"), &json!({})).await;
    assert_eq!(status, 200);
    let i = ingest.clone();
    wait_until("the kept batch is delivered", || {
        i.events.lock().unwrap().len() >= 10
    })
    .await;
    let delivered: Vec<Value> = ingest.events.lock().unwrap().clone();
    assert_eq!(
        delivered[..10],
        (0..10).map(|n| json!({"n": n})).collect::<Vec<_>>()[..]
    );
    // A hundred buffered events are delivered without waiting for the interval.
    let hundred: Vec<Value> = (10..110).map(|n| json!({"n": n})).collect();
    let (status, _) = post(&c, server.url("/events/clicks"), &json!(hundred)).await;
    assert_eq!(status, 200);
    let i = ingest.clone();
    wait_until("the full batch is delivered", || {
        i.events.lock().unwrap().len() >= 110
    })
    .await;
    eventually("the buffer is empty", || {
        let (c, url) = (c.clone(), server.url("/events/clicks"));
        async move {
            let r: Value = c.get(url).send().await.unwrap().json().await.unwrap();
            r["buffered"] == 0 && r["delivered"].as_u64() >= Some(110)
        }
    })
    .await;
    server.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_recorded_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let server = demo(dir.path()).await;
    let c = client();
    let (status, r) = post(
        &c,
        server.url("/metrics/api/record"),
        &json!([{"name": "latency_ms", "value": 12.5}, {"name": "latency_ms", "value": 7.5}]),
    )
    .await;
    assert_eq!((status, r["recorded"].as_u64()), (200, Some(2)));
    let r: Value = c
        .get(server.url("/metrics/api"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        r["metrics"]["latency_ms"],
        json!({"sum": 20.0, "count": 2, "min": 7.5, "max": 12.5})
    );
    let (status, r) = post(&c, server.url("/metrics/api/record"), &json!({"name": "x"})).await;
    assert_eq!((status, r["field"].as_str()), (400, Some("value")));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_without_an_endpoint_are_flushed_to_the_servers_prometheus_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let config = format!("{DEMO_CONFIG}\n[vars]\nMETRICS_FLUSH_INTERVAL_MS = 50\n");
    let server = TestServer::start(&config, dir.path()).await;
    let c = client();
    let (status, _) = post(
        &c,
        server.url("/metrics/checkout/record"),
        &json!([{"name": "latency_ms", "value": 12.5}, {"name": "latency_ms", "value": -2.5}]),
    )
    .await;
    assert_eq!(status, 200);
    let url = server.url("/metrics");
    let wanted = r#"rookery_app_metric_count_total{source="checkout",name="latency_ms"} 2"#;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let text = loop {
        let text = c.get(&url).send().await.unwrap().text().await.unwrap();
        if text.lines().any(|l| l == wanted) {
            break text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the summary never reached /metrics:\n{text}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    };
    for line in [
        r#"rookery_app_metric_sum{source="checkout",name="latency_ms"} 10"#,
        r#"rookery_app_metric_min{source="checkout",name="latency_ms"} -2.5"#,
        r#"rookery_app_metric_max{source="checkout",name="latency_ms"} 12.5"#,
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "{line} missing from:\n{text}"
        );
    }
    // Flushed means cleared from the object.
    let r: Value = c
        .get(server.url("/metrics/checkout"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["metrics"], json!({}), "{r}");
    assert_eq!(r["flushed"], 1, "{r}");
    server.stop().await;
}

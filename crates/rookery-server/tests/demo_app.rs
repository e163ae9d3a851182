//! The demo app over real HTTP: the counter, the rate limiter, the chat history, and the
//! gateway's errors and headers.

mod common;

use common::{TestServer, client};
use futures_util::future::join_all;
use rookery_server::config::DEMO_CONFIG;
use serde_json::{Value, json};

async fn demo(dir: &std::path::Path) -> TestServer {
    TestServer::start(DEMO_CONFIG, dir).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counter_follows_the_seed_api() {
    let dir = tempfile::tempdir().unwrap();
    let server = demo(dir.path()).await;
    let c = client();
    let get = |path: &str| c.get(server.url(path)).send();
    let post = |path: &str| c.post(server.url(path)).send();

    let r = get("/counter/visits").await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"value": 0}));
    let r = post("/counter/visits/increment").await.unwrap();
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"value": 1}));
    let r = post("/counter/visits/increment?amount=10").await.unwrap();
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"value": 11}));
    let r = post("/counter/visits/decrement?amount=4").await.unwrap();
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"value": 7}));
    let r = post("/counter/visits/decrement").await.unwrap();
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"value": 6}));

    for bad in ["abc", "1.5", "", "9999999999999999999999"] {
        let r = post(&format!("/counter/visits/increment?amount={bad}"))
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "amount={bad:?}");
        assert_eq!(
            r.json::<Value>().await.unwrap(),
            json!({"error": "Invalid amount"})
        );
    }
    let r = get("/counter/visits").await.unwrap();
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"value": 6}),
        "bad amounts change nothing"
    );

    for (method, path) in [
        ("POST", "/counter/visits/explode"),
        ("GET", "/counter/visits/increment"),
        ("GET", "/counter/visits/anything/else"),
    ] {
        let r = c
            .request(method.parse().unwrap(), server.url(path))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{method} {path}");
    }

    let r = post("/counter/visits/reset").await.unwrap();
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"value": 0}));
    // Names are independent objects; percent-encoded names are decoded.
    let r = post("/counter/other%20name/increment?amount=3")
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"value": 3}));
    let r = get("/counter/visits").await.unwrap();
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"value": 0}));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_response_has_a_request_id_and_unknown_paths_are_404() {
    let dir = tempfile::tempdir().unwrap();
    let server = demo(dir.path()).await;
    let c = client();
    let mut ids = std::collections::HashSet::new();
    for path in ["/", "/nope", "/counter/a", "/room/r/history", "/api/x"] {
        let r = c.get(server.url(path)).send().await.unwrap();
        let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
        assert!(ids.insert(id), "request ids are unique");
        if path == "/" || path == "/nope" {
            assert_eq!(r.status(), 404);
            assert_eq!(
                r.json::<Value>().await.unwrap(),
                json!({"error": "Not found"})
            );
        }
    }
    // A client's own request id is echoed.
    let r = c
        .get(server.url("/counter/a"))
        .header("x-request-id", "trace-123")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "trace-123");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_room_history_and_websocket_expectation() {
    let dir = tempfile::tempdir().unwrap();
    let server = demo(dir.path()).await;
    let c = client();
    let r = c
        .get(server.url("/room/lobby/history"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap(), json!([]));
    for path in ["/room/lobby/websocket", "/room/lobby", "/room/lobby/other"] {
        let r = c.get(server.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 400, "{path}");
        assert_eq!(r.text().await.unwrap(), "Expected WebSocket");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limiter_admits_exactly_100_per_ip() {
    let dir = tempfile::tempdir().unwrap();
    let config = DEMO_CONFIG.replace(
        "# client_ip_header = \"CF-Connecting-IP\"",
        "client_ip_header = \"X-Client-IP\"",
    );
    assert_ne!(config, DEMO_CONFIG);
    let server = TestServer::start(&config, dir.path()).await;
    let c = client();

    // Sequentially first, to see the remaining count go down.
    for expected in (90..100).rev() {
        let r = c
            .get(server.url("/api/items"))
            .header("X-Client-IP", "10.0.0.1")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(
            r.headers()["x-ratelimit-remaining"],
            expected.to_string().as_str()
        );
        assert_eq!(r.json::<Value>().await.unwrap(), json!({"ok": true}));
    }
    // Then 150 at once: many land in the same millisecond, and exactly 90 more may pass.
    let burst = join_all((0..150).map(|_| {
        c.get(server.url("/api/burst"))
            .header("X-Client-IP", "10.0.0.1")
            .send()
    }))
    .await;
    let mut ok = 0;
    let mut remaining = Vec::new();
    for r in burst {
        let r = r.unwrap();
        match r.status().as_u16() {
            200 => {
                ok += 1;
                remaining.push(
                    r.headers()["x-ratelimit-remaining"]
                        .to_str()
                        .unwrap()
                        .parse::<u32>()
                        .unwrap(),
                );
            }
            429 => assert_eq!(
                r.json::<Value>().await.unwrap(),
                json!({"error": "Rate limited"})
            ),
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!(ok, 90, "exactly 100 requests per window in all");
    remaining.sort_unstable();
    assert_eq!(
        remaining,
        (0..90).collect::<Vec<_>>(),
        "each remaining count is given once"
    );

    // Another IP is unaffected.
    let r = c
        .get(server.url("/api/items"))
        .header("X-Client-IP", "10.0.0.2")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-ratelimit-remaining"], "99");
    // Without the header the peer address counts: also a fresh budget.
    let r = c.get(server.url("/api/items")).send().await.unwrap();
    assert_eq!(r.headers()["x-ratelimit-remaining"], "99");
    // The limit is per window and holds across a restart of the server.
    server.stop().await;
    let server = TestServer::start(&config, dir.path()).await;
    let r = c
        .get(server.url("/api/items"))
        .header("X-Client-IP", "10.0.0.1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    // Only GET (and HEAD) passes through /api; as in the seed, other methods find nothing.
    let r = c.post(server.url("/api/items")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_two_connections_times_500_increments_make_16000() {
    let dir = tempfile::tempdir().unwrap();
    let server = demo(dir.path()).await;
    let url = server.url("/counter/hot/increment");
    let tasks = (0..32).map(|_| {
        let url = url.clone();
        tokio::spawn(async move {
            // One client each: one connection each.
            let c = client();
            let mut last = 0;
            for _ in 0..500 {
                let r = c.post(&url).send().await.unwrap();
                assert_eq!(r.status(), 200);
                let v: Value = r.json().await.unwrap();
                let v = v["value"].as_i64().unwrap();
                assert!(v > last, "a connection sees its own increments in order");
                last = v;
            }
        })
    });
    for t in join_all(tasks).await {
        t.unwrap();
    }
    let r = client()
        .get(server.url("/counter/hot"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"value": 16000}));
    server.stop().await;
}

//! The worker in code: routing by header with its own token check, the identity and address
//! it is given, routes that name it, a WebSocket upgrade handed to an object, sharding by hash.

mod common;

use common::ws::connect;
use common::{Echo, Probe, TestServer, client};
use futures_util::{SinkExt, StreamExt};
use rookery::identity::{CLIENT_IP, USER_ID};
use rookery::prelude::*;
use rookery_server::Config;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

const CONFIG: &str = r#"
[durable_objects]
bindings = [
  { name = "COUNTER", class_name = "Counter" },
  { name = "SHARD", class_name = "Probe" },
  { name = "ECHO", class_name = "Echo" },
  { name = "RATE_LIMITER", class_name = "RateLimiter" },
]

[[migrations]]
tag = "v1"
new_sqlite_classes = ["Counter", "Probe", "Echo", "RateLimiter"]

[worker]
name = "Test"

[auth.tokens]
"gateway-token" = { user = "u1", name = "Ann" }

# Declarative routes stay beside the worker.
[[routes]]
path = "/counter/:name"
binding = "COUNTER"
name_from = "name"

# A route that names the worker, behind a rate limit.
[[routes]]
path = "/limited"
worker = true
rate_limit = { binding = "RATE_LIMITER", limit = 1, window_ms = 600000 }
"#;

/// How many shards `/shard/KEY` spreads keys over.
const SHARDS: u64 = 4;

/// FNV-1a: a stable hash, the same in the worker and in the test.
fn fnv1a(key: &str) -> u64 {
    key.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The worker under test.
struct TestWorker;

impl Worker for TestWorker {
    async fn fetch(&self, req: Request, env: &Env) -> Result<Response> {
        let path = req.path().to_string();
        if path == "/tenant" {
            // The worker checks a token of its own, then routes by a header.
            if req.header("authorization") != Some("Bearer worker-secret") {
                return Ok(Response::error(StatusCode::UNAUTHORIZED, "worker: no"));
            }
            let Some(tenant) = req.header("x-tenant").map(str::to_string) else {
                return Ok(Response::error(
                    StatusCode::BAD_REQUEST,
                    "worker: no tenant",
                ));
            };
            let counter = env.namespace("COUNTER")?.get_by_name(&tenant);
            return counter.fetch(req.with_uri("/increment")?).await;
        }
        if let Some(room) = path.strip_prefix("/ws/") {
            // Handed on as it came, an upgrade included: the object accepts the socket.
            let uri = format!("/?tag={room}&who=via-worker");
            let echo = env.namespace("ECHO")?.get_by_name(room);
            return echo.fetch(req.with_uri(&uri)?).await;
        }
        if let Some(key) = path.strip_prefix("/shard/") {
            let shard = fnv1a(key) % SHARDS;
            let stub = env
                .namespace("SHARD")?
                .get_by_name(&format!("shard-{shard}"));
            let put = Request::post(&format!("/put?key={key}&value={key}"))?;
            stub.fetch(put).await?;
            return Response::json(&json!({ "shard": shard }));
        }
        if path == "/whoami" {
            return Response::json(&json!({
                "user": req.header(USER_ID.as_str()),
                "ip": req.client_ip().map(|ip| ip.to_string()),
            }));
        }
        if path == "/limited" {
            return Response::json(&json!({ "worker": true }));
        }
        Ok(Response::error(StatusCode::NOT_FOUND, "worker: not found"))
    }
}

async fn start(dir: &std::path::Path) -> TestServer {
    let mut config = Config::parse("worker.toml", CONFIG).unwrap();
    config.server.data_dir = dir.to_path_buf();
    let classes = rookery_objects::builtin_classes()
        .with::<Probe>("Probe")
        .with::<Echo>("Echo")
        .with_worker("Test", TestWorker);
    TestServer::start_with(&config, classes).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_routes_by_header_after_its_own_token_check() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let c = client();
    let tenant = |t: Option<&'static str>, token: &'static str| {
        let mut r = c
            .post(server.url("/tenant"))
            .header("authorization", format!("Bearer {token}"));
        if let Some(t) = t {
            r = r.header("x-tenant", t);
        }
        async move {
            let r = r.send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    assert_eq!(
        tenant(Some("acme"), "worker-secret").await,
        (200, json!({"value": 1}))
    );
    assert_eq!(
        tenant(Some("acme"), "worker-secret").await,
        (200, json!({"value": 2}))
    );
    assert_eq!(
        tenant(Some("globex"), "worker-secret").await,
        (200, json!({"value": 1}))
    );
    // A token the gateway does not know reaches the worker, which refuses it itself.
    assert_eq!(tenant(Some("acme"), "wrong").await.0, 401);
    assert_eq!(tenant(None, "worker-secret").await.0, 400);
    // The worker's counter is the route's: one object by name.
    let r: Value = c
        .get(server.url("/counter/acme"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r, json!({"value": 2}));
    // What no route takes is the worker's.
    let r = c.get(server.url("/elsewhere")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"error": "worker: not found"})
    );
    // The identity and address the worker sees are the gateway's, never the client's own.
    let whoami = |token: Option<&'static str>| {
        let mut r = c
            .get(server.url("/whoami"))
            .header(USER_ID, "admin")
            .header(CLIENT_IP, "6.6.6.6");
        if let Some(t) = token {
            r = r.header("authorization", format!("Bearer {t}"));
        }
        async move { r.send().await.unwrap().json::<Value>().await.unwrap() }
    };
    assert_eq!(whoami(None).await, json!({"user": null, "ip": "127.0.0.1"}));
    assert_eq!(
        whoami(Some("gateway-token")).await,
        json!({"user": "u1", "ip": "127.0.0.1"})
    );
    assert_eq!(
        whoami(Some("unknown")).await,
        json!({"user": null, "ip": "127.0.0.1"})
    );
    // A route that names the worker applies its rate limit first.
    let r = c.get(server.url("/limited")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-ratelimit-remaining"], "0");
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"worker": true}));
    let r = c.get(server.url("/limited")).send().await.unwrap();
    assert_eq!(r.status(), 429);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_hands_a_websocket_upgrade_to_an_object() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut ws = connect(&server, "/ws/lobby").await;
    ws.send(Message::text("whoami")).await.unwrap();
    let answer: Value = serde_json::from_str(&common::ws::next_text(&mut ws).await).unwrap();
    assert_eq!(
        answer,
        json!({"attachment": {"who": "via-worker"}, "tags": ["lobby"], "count": 1}),
        "the object accepted the socket with what the worker sent it"
    );
    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(common::ws::next_text(&mut ws).await, "echo:hello");
    let echo = server
        .runtime
        .namespace("ECHO")
        .unwrap()
        .get_by_name("lobby");
    assert_eq!(echo.websocket_count(), 1);
    // A plain request on the same way is the object's answer too.
    let r = client().get(server.url("/ws/lobby")).send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.text().await.unwrap(), "Expected WebSocket");
    ws.close(None).await.unwrap();
    while let Some(Ok(_)) = ws.next().await {}
    common::wait_until("the socket left its object", || echo.websocket_count() == 0).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_shards_by_hash() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let c = client();
    let keys: Vec<String> = (0..32).map(|i| format!("user-{i}")).collect();
    for key in &keys {
        let r: Value = c
            .post(server.url(&format!("/shard/{key}")))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(r, json!({"shard": fnv1a(key) % SHARDS}), "{key}");
    }
    // Each key is stored in its shard's object, and in no other.
    let shards = server.runtime.namespace("SHARD").unwrap();
    let mut used = std::collections::HashSet::new();
    for key in &keys {
        let home = fnv1a(key) % SHARDS;
        used.insert(home);
        for shard in 0..SHARDS {
            let r = shards
                .get_by_name(&format!("shard-{shard}"))
                .fetch(Request::get(&format!("/get?key={key}")).unwrap())
                .await
                .unwrap();
            let value = r.json_body::<Value>().unwrap()["value"].clone();
            let expected = if shard == home {
                json!(key)
            } else {
                json!(null)
            };
            assert_eq!(value, expected, "{key} in shard {shard}");
        }
    }
    assert_eq!(used.len(), 4, "32 keys spread over all 4 shards");
    server.stop().await;
}

//! events.do on Rookery over real HTTP (examples/events.toml, docs/EVENTS.md): subscriptions
//! with patterns, in-order delivery to a loopback webhook receiver, no acknowledged event
//! lost across a `kill -9` during delivery, schemas, the rate limit per tenant, the status page.

mod common;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use common::{ChildServer, TestServer, client, eventually, wait_until};
use serde_json::{Value, json};

const EVENTS_CONFIG: &str = include_str!("../../../examples/events.toml");

/// examples/events.toml with loopback receivers allowed, short retry delays and no rate limit.
fn config() -> String {
    config_with_rate_limit(0)
}

/// [`config`] with `limit` events per minute per tenant (0: no limit).
fn config_with_rate_limit(limit: u32) -> String {
    let mut text = EVENTS_CONFIG.to_string();
    let rate = format!("EVENTS_RATE_LIMIT = {limit}\nEVENTS_RATE_WINDOW_MS = 60000");
    for (from, to) in [
        (
            "EVENTS_RATE_LIMIT = 1000\nEVENTS_RATE_WINDOW_MS = 1000",
            rate.as_str(),
        ),
        ("allow = []", "allow = [\"127.0.0.1\"]"),
        ("EVENTS_RETRY_BASE_MS = 1000", "EVENTS_RETRY_BASE_MS = 20"),
        ("EVENTS_RETRY_CAP_MS = 300000", "EVENTS_RETRY_CAP_MS = 200"),
        ("EVENTS_MAX_ATTEMPTS = 8", "EVENTS_MAX_ATTEMPTS = 100"),
    ] {
        assert!(text.contains(from), "examples/events.toml lost {from:?}");
        text = text.replace(from, to);
    }
    text
}

/// Writes `text` as the configuration in `dir`: the data directory and the server's arguments.
fn config_in(dir: &std::path::Path, text: &str) -> (std::path::PathBuf, Vec<String>) {
    let config_path = dir.join("events.toml");
    std::fs::write(&config_path, text).unwrap();
    let args = vec![
        "--config".to_string(),
        config_path.to_str().unwrap().to_string(),
    ];
    (dir.join("data"), args)
}

/// One webhook request the receiver acknowledged.
#[derive(Debug, Clone)]
struct Taken {
    hook: String,
    body: Value,
    key: String,
}

/// Webhook receivers at `/hook/:name`; each acknowledges (200) until told to fail (503).
#[derive(Default)]
struct Hooks {
    taken: Mutex<Vec<Taken>>,
    /// Per hook: answer 503 once it has acknowledged this many requests.
    fail_after: Mutex<HashMap<String, usize>>,
    refused: Mutex<usize>,
    /// Hooks that take a request and never answer it, and how many they took.
    hanging: Mutex<HashMap<String, usize>>,
}

impl Hooks {
    fn acknowledged(&self, hook: &str) -> Vec<Taken> {
        self.taken
            .lock()
            .unwrap()
            .iter()
            .filter(|t| t.hook == hook)
            .cloned()
            .collect()
    }

    fn fail_after(&self, hook: &str, n: Option<usize>) {
        let mut f = self.fail_after.lock().unwrap();
        match n {
            Some(n) => f.insert(hook.to_string(), n),
            None => f.remove(hook),
        };
    }
}

async fn start_hooks() -> (Arc<Hooks>, SocketAddr) {
    use axum::extract::{Path, State};
    let hooks = Arc::new(Hooks::default());
    let app = axum::Router::new()
        .route(
            "/hook/{name}",
            axum::routing::post(
                |State(h): State<Arc<Hooks>>,
                 Path(name): Path<String>,
                 headers: http::HeaderMap,
                 axum::Json(body): axum::Json<Value>| async move {
                    let hang = match h.hanging.lock().unwrap().get_mut(&name) {
                        Some(held) => {
                            *held += 1;
                            true
                        }
                        None => false,
                    };
                    if hang {
                        std::future::pending::<()>().await;
                    }
                    let acked = h.acknowledged(&name).len();
                    let limit = h.fail_after.lock().unwrap().get(&name).copied();
                    if limit.is_some_and(|n| acked >= n) {
                        *h.refused.lock().unwrap() += 1;
                        return http::StatusCode::SERVICE_UNAVAILABLE;
                    }
                    let key = headers
                        .get("idempotency-key")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_string();
                    h.taken.lock().unwrap().push(Taken {
                        hook: name,
                        body,
                        key,
                    });
                    http::StatusCode::OK
                },
            ),
        )
        .with_state(hooks.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (hooks, addr)
}

async fn post(c: &reqwest::Client, url: String, body: &Value) -> (u16, Value) {
    let r = c.post(url).json(body).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

/// Publishes `order.created` events numbered `ns` to the `shop` namespace, each answered 200;
/// keeps their ids in `acknowledged`.
async fn publish_orders(
    c: &reqwest::Client,
    server: &ChildServer,
    ns: std::ops::Range<i64>,
    acknowledged: &mut Vec<String>,
) {
    for n in ns {
        let (status, r) = post(
            c,
            server.url("/events/shop"),
            &json!({"type": "order.created", "data": {"n": n}}),
        )
        .await;
        assert_eq!(status, 200, "{r}");
        acknowledged.push(r["id"].as_str().unwrap().to_string());
    }
}

/// Subscribes receiver `hook` to `pattern` at `subs` (a namespace's `/subscriptions` URL) and
/// answers the new subscription's id.
async fn subscribe(
    c: &reqwest::Client,
    subs: String,
    pattern: &str,
    addr: SocketAddr,
    hook: &str,
) -> String {
    let (status, r) = post(
        c,
        subs,
        &json!({"pattern": pattern, "url": format!("http://{addr}/hook/{hook}")}),
    )
    .await;
    assert_eq!(status, 201, "{r}");
    r["id"].as_str().unwrap().to_string()
}

async fn get(c: &reqwest::Client, url: String) -> Value {
    c.get(url).send().await.unwrap().json().await.unwrap()
}

fn numbers(taken: &[Taken]) -> Vec<i64> {
    taken
        .iter()
        .map(|t| t.body["data"]["n"].as_i64().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_published_to_several_patterns_reach_their_subscribers_in_order() {
    let (hooks, addr) = start_hooks().await;
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&config(), dir.path()).await;
    let c = client();
    let subs = server.url("/subscriptions/shop");
    for (pattern, hook) in [("user.*", "users"), ("*.created", "created"), ("**", "all")] {
        subscribe(&c, subs.clone(), pattern, addr, hook).await;
    }
    // Another namespace's subscriber hears nothing of this one's events.
    let (status, _) = post(
        &c,
        server.url("/subscriptions/other"),
        &json!({"pattern": "**", "url": format!("http://{addr}/hook/other")}),
    )
    .await;
    assert_eq!(status, 201);

    let types = [
        "user.created",
        "order.created",
        "user.deleted",
        "order.paid",
    ];
    let (mut users, mut created) = (vec![], vec![]);
    for n in 0..40_i64 {
        let ty = types[usize::try_from(n).unwrap() % types.len()];
        let (status, r) = post(
            &c,
            server.url("/events/shop"),
            &json!({"type": ty, "data": {"n": n}}),
        )
        .await;
        assert_eq!((status, r["sequence"].as_i64()), (200, Some(n + 1)), "{r}");
        if ty.starts_with("user.") {
            users.push(n);
        }
        if ty.ends_with(".created") {
            created.push(n);
        }
    }
    let h = hooks.clone();
    let (nu, nc) = (users.len(), created.len());
    wait_until("every subscriber has its events", || {
        h.acknowledged("users").len() >= nu
            && h.acknowledged("created").len() >= nc
            && h.acknowledged("all").len() >= 40
    })
    .await;
    // Nothing fails here, so nothing is sent twice.
    assert_eq!(numbers(&hooks.acknowledged("users")), users);
    assert_eq!(numbers(&hooks.acknowledged("created")), created);
    assert_eq!(
        numbers(&hooks.acknowledged("all")),
        (0..40).collect::<Vec<_>>()
    );
    for t in hooks.acknowledged("all") {
        assert_eq!(t.key, t.body["id"].as_str().unwrap(), "Idempotency-Key");
    }
    eventually("every queue is empty", || {
        let (c, url) = (c.clone(), subs.clone());
        async move {
            let r = get(&c, url).await;
            r["subscriptions"]
                .as_array()
                .unwrap()
                .iter()
                .all(|s| s["pending"] == 0)
        }
    })
    .await;
    assert!(hooks.acknowledged("other").is_empty());
    // Bad input is refused over HTTP too, naming the field.
    let (status, r) = post(&c, server.url("/events/shop"), &json!({"data": 1})).await;
    assert_eq!((status, r["field"].as_str()), (400, Some("type")));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_9_during_delivery_loses_no_acknowledged_event() {
    let (hooks, addr) = start_hooks().await;
    let dir = tempfile::tempdir().unwrap();
    let (data, args) = config_in(dir.path(), &config());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let c = client();
    let server = ChildServer::start(&data, &args);
    // The receiver takes five events, then fails until the server has been killed.
    hooks.fail_after("crash", Some(5));
    let sub = subscribe(&c, server.url("/subscriptions/shop"), "**", addr, "crash").await;
    let sub_url = server.url(&format!("/subscriptions/shop/{sub}"));
    let mut acknowledged = Vec::new();
    publish_orders(&c, &server, 0..20, &mut acknowledged).await;
    eventually("delivery is failing and retrying", || {
        let (c, url) = (c.clone(), sub_url.clone());
        async move {
            let s = get(&c, url).await;
            s["attempts"].as_i64() >= Some(2)
        }
    })
    .await;
    // More events while the retries go on, the kill right after the last answer.
    publish_orders(&c, &server, 20..30, &mut acknowledged).await;
    server.kill9();

    hooks.fail_after("crash", None);
    let server = ChildServer::start(&data, &args);
    let h = hooks.clone();
    let wanted: HashSet<String> = acknowledged.iter().cloned().collect();
    wait_until("every acknowledged event reaches the receiver", || {
        let got: HashSet<String> = h.acknowledged("crash").into_iter().map(|t| t.key).collect();
        wanted.is_subset(&got)
    })
    .await;
    let taken = hooks.acknowledged("crash");
    // In order: the first delivery of each event follows the publish order.
    let mut seen = HashSet::new();
    let first: Vec<String> = taken
        .iter()
        .filter(|t| seen.insert(t.key.clone()))
        .map(|t| t.key.clone())
        .collect();
    assert_eq!(first, acknowledged, "first deliveries in publish order");
    let duplicates = taken.len() - first.len();
    println!(
        "kill -9 during delivery: {} events acknowledged, {} deliveries, {duplicates} duplicates, {} refused attempts",
        acknowledged.len(),
        taken.len(),
        hooks.refused.lock().unwrap()
    );
    // Delivery goes on after the restart.
    let (status, r) = post(
        &c,
        server.url("/events/shop"),
        &json!({"type": "order.created", "data": {"n": 30}}),
    )
    .await;
    assert_eq!((status, r["sequence"].as_i64()), (200, Some(31)), "{r}");
    let h = hooks.clone();
    wait_until("the event after the restart is delivered", || {
        h.acknowledged("crash")
            .iter()
            .any(|t| t.body["data"]["n"] == 30)
    })
    .await;
    let sub_url = server.url(&format!("/subscriptions/shop/{sub}"));
    eventually("the queue is empty", || {
        let (c, url) = (c.clone(), sub_url.clone());
        async move { get(&c, url).await["pending"] == 0 }
    })
    .await;
    // The archive: every acknowledged event, and nothing else, in the writer's files, once.
    let mut all = acknowledged.clone();
    all.push(r["id"].as_str().unwrap().to_string());
    let archived = archive_after_flush(&c, &server, &data).await;
    let ids: Vec<&str> = archived.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(
        ids, all,
        "the files hold each acknowledged event once, in order"
    );
    server.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_9_while_subscriptions_move_between_shards_loses_no_acknowledged_event() {
    let (hooks, addr) = start_hooks().await;
    let dir = tempfile::tempdir().unwrap();
    let text = config().replace("EVENTS_SHARDS = 0", "EVENTS_SHARDS = 3");
    let (data, args) = config_in(dir.path(), &text);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let c = client();
    let mut server = ChildServer::start(&data, &args);
    let subs = server.url("/subscriptions/shop");
    let moving = subscribe(&c, subs.clone(), "order.*", addr, "moving").await;
    let steady = subscribe(&c, subs, "order.*", addr, "steady").await;
    // "moving" takes a few events, then fails, so its moves carry a backlog with retries.
    hooks.fail_after("moving", Some(8));
    let mut acknowledged = Vec::new();
    let mut accepted = 0;
    let mut n = 0;
    // Each round: events, a move of "moving" to the next shard (0 is home), and every other
    // round a kill -9 right after the move was accepted.
    for (round, shard) in [1, 2, 0, 3, 1, 0].into_iter().enumerate() {
        publish_orders(&c, &server, n..n + 6, &mut acknowledged).await;
        n += 6;
        let (status, r) = post(
            &c,
            server.url(&format!("/subscriptions/shop/{moving}/shard")),
            &json!({ "shard": shard }),
        )
        .await;
        // 409: the previous move is still under way (a kill can leave one half done).
        assert!(status == 202 || status == 409, "{status} {r}");
        accepted += usize::from(status == 202);
        if round == 1 {
            let (status, r) = post(
                &c,
                server.url(&format!("/subscriptions/shop/{steady}/shard")),
                &json!({ "shard": 2 }),
            )
            .await;
            assert_eq!(status, 202, "{r}");
        }
        if round % 2 == 1 {
            server.kill9();
            server = ChildServer::start(&data, &args);
        }
    }
    // Most moves were taken up, or the test would not be about moves.
    assert!(accepted >= 4, "only {accepted} of 6 moves accepted");
    hooks.fail_after("moving", None);
    let wanted: HashSet<String> = acknowledged.iter().cloned().collect();
    for hook in ["moving", "steady"] {
        let h = hooks.clone();
        wait_until("every acknowledged event reaches both receivers", || {
            let got: HashSet<String> = h.acknowledged(hook).into_iter().map(|t| t.key).collect();
            wanted.is_subset(&got)
        })
        .await;
        let taken = hooks.acknowledged(hook);
        let mut seen = HashSet::new();
        let first: Vec<String> = taken
            .iter()
            .filter(|t| seen.insert(t.key.clone()))
            .map(|t| t.key.clone())
            .collect();
        assert_eq!(
            first, acknowledged,
            "{hook}: first deliveries in publish order"
        );
        println!(
            "kill -9 during shard moves ({accepted} of 6 moves accepted): {hook}: {} events, {} deliveries, {} duplicates",
            acknowledged.len(),
            taken.len(),
            taken.len() - first.len()
        );
    }
    // Both end where they were last sent, with nothing left behind.
    let list = get(&c, server.url("/subscriptions/shop")).await;
    let of = |id: &str| {
        list["subscriptions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["id"] == id)
            .cloned()
            .unwrap()
    };
    eventually("both queues are empty and placed", || {
        let (c, url) = (c.clone(), server.url("/subscriptions/shop"));
        let (moving, steady) = (moving.clone(), steady.clone());
        async move {
            let list = get(&c, url).await;
            let subs = list["subscriptions"].as_array().unwrap().clone();
            subs.iter().all(|s| s["pending"] == 0)
                && subs
                    .iter()
                    .any(|s| s["id"] == moving.as_str() && s["shard"].is_null())
                && subs
                    .iter()
                    .any(|s| s["id"] == steady.as_str() && s["shard"] == 2)
        }
    })
    .await;
    assert_eq!(of(&moving)["pattern"], "order.*");
    server.terminate();
}

/// A regression test of the alarm's record (`storage/alarm.rs`): a delivery attempt is an
/// outbound request inside the alarm handler, and the turn's writes are committed before it
/// leaves. A `kill -9` while the receiver holds that request must leave the alarm in place, so
/// the restarted server delivers the events with no new publish. (The runtime used to delete
/// the alarm's record when the handler began, and that commit made the deletion durable.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_9_while_a_delivery_is_in_flight_keeps_the_alarm() {
    let (hooks, addr) = start_hooks().await;
    let dir = tempfile::tempdir().unwrap();
    let (data, args) = config_in(dir.path(), &config());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let c = client();
    let server = ChildServer::start(&data, &args);
    // Refused at first, so all three are published while delivery retries (an attempt the
    // receiver holds would hold the namespace's publishes too, up to the outbound timeout);
    // then the receiver holds the next attempt.
    hooks.fail_after("held", Some(0));
    let sub = subscribe(&c, server.url("/subscriptions/shop"), "**", addr, "held").await;
    let mut acknowledged = Vec::new();
    publish_orders(&c, &server, 0..3, &mut acknowledged).await;
    hooks.hanging.lock().unwrap().insert("held".into(), 0);
    hooks.fail_after("held", None);
    let h = hooks.clone();
    wait_until("the receiver holds the first delivery", || {
        h.hanging.lock().unwrap().get("held").copied() >= Some(1)
    })
    .await;
    server.kill9();
    hooks.hanging.lock().unwrap().remove("held");
    let server = ChildServer::start(&data, &args);
    let h = hooks.clone();
    wait_until(
        "the restarted server delivers every event, unprompted",
        || h.acknowledged("held").len() >= 3,
    )
    .await;
    let keys: Vec<String> = hooks
        .acknowledged("held")
        .into_iter()
        .map(|t| t.key)
        .collect();
    assert_eq!(keys, acknowledged, "each event once, in order");
    let s = get(&c, server.url(&format!("/subscriptions/shop/{sub}"))).await;
    assert_eq!(s["delivered"], 3, "{s}");
    server.terminate();
}

/// Waits until the `shop` namespace's object has handed every event to the writer, flushes
/// the writer, and reads its files back: the events of all of them, by sequence.
async fn archive_after_flush(
    c: &reqwest::Client,
    server: &ChildServer,
    data: &std::path::Path,
) -> Vec<Value> {
    let subs = server.url("/subscriptions/shop");
    eventually("the writer has every event", || {
        let (c, url) = (c.clone(), subs.clone());
        async move { get(&c, url).await["archive"]["backlog"] == 0 }
    })
    .await;
    let r = c
        .post(server.url("/writer/shop/flush"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let status = get(c, server.url("/writer/shop")).await;
    assert_eq!(status["bufferedEvents"], 0, "{status}");
    read_archive(&data.join("buckets/events/shop"))
}

/// Every event in the gzip NDJSON files under `dir`, sorted by sequence.
fn read_archive(dir: &std::path::Path) -> Vec<Value> {
    use std::io::Read;
    let mut events = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            assert!(path.to_str().unwrap().ends_with(".ndjson.gz"), "{path:?}");
            let mut text = String::new();
            flate2::read::GzDecoder::new(std::fs::File::open(&path).unwrap())
                .read_to_string(&mut text)
                .unwrap();
            for line in text.lines() {
                events.push(serde_json::from_str::<Value>(line).unwrap());
            }
        }
    }
    events.sort_by_key(|e| e["sequence"].as_i64().unwrap());
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_events_are_refused_with_every_violation_and_schemas_evolve_compatibly() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&config(), dir.path()).await;
    let c = client();
    let schema_url = server.url("/schemas/shop/order.created");
    let v1 = json!({
        "type": "object",
        "properties": {"n": {"type": "integer"}, "sku": {"type": "string", "maxLength": 8}},
        "required": ["n", "sku"]
    });
    let (status, r) = post(&c, schema_url.clone(), &v1).await;
    assert_eq!((status, r["version"].as_i64()), (201, Some(1)), "{r}");
    // The same schema again is no new version.
    let (status, r) = post(&c, schema_url.clone(), &v1).await;
    assert_eq!((status, r["unchanged"].as_bool()), (200, Some(true)), "{r}");

    // Every violation is listed, with where it is.
    let (status, r) = post(
        &c,
        server.url("/events/shop"),
        &json!({"type": "order.created", "data": {"n": "one", "sku": "far-too-long"}}),
    )
    .await;
    assert_eq!(status, 400, "{r}");
    assert_eq!(r["version"], 1, "{r}");
    let paths: HashSet<&str> = r["violations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, HashSet::from(["/n", "/sku"]), "{r}");
    let (status, r) = post(
        &c,
        server.url("/events/shop"),
        &json!({"type": "order.created", "data": {}}),
    )
    .await;
    assert_eq!(status, 400, "{r}");
    let missing = r["violations"][0]["message"].as_str().unwrap();
    assert!(missing.contains("n") && missing.contains("sku"), "{r}");
    // Nothing refused was stored: the first valid event is sequence 1.
    let (status, r) = post(
        &c,
        server.url("/events/shop"),
        &json!({"type": "order.created", "data": {"n": 1, "sku": "a-1"}}),
    )
    .await;
    assert_eq!((status, r["sequence"].as_i64()), (200, Some(1)), "{r}");
    // A type without a schema passes.
    let (status, _) = post(
        &c,
        server.url("/events/shop"),
        &json!({"type": "order.noted", "data": "anything"}),
    )
    .await;
    assert_eq!(status, 200);

    // A new required field would break publishers: refused with the reason.
    let mut v2 = v1.clone();
    v2["properties"]["note"] = json!({"type": "string"});
    v2["required"] = json!(["n", "sku", "note"]);
    let (status, r) = post(&c, schema_url.clone(), &v2).await;
    assert_eq!(status, 409, "{r}");
    let breaking = r["breaking"].as_array().unwrap();
    assert_eq!(breaking.len(), 1, "{r}");
    assert!(
        breaking[0]
            .as_str()
            .unwrap()
            .contains("\"note\" became required"),
        "{r}"
    );
    // The same field, optional, is a compatible version 2, and it now applies.
    v2["required"] = json!(["n", "sku"]);
    let (status, r) = post(&c, schema_url.clone(), &v2).await;
    assert_eq!((status, r["version"].as_i64()), (201, Some(2)), "{r}");
    let (status, r) = post(
        &c,
        server.url("/events/shop"),
        &json!({"type": "order.created", "data": {"n": 2, "sku": "b", "note": 5}}),
    )
    .await;
    assert_eq!((status, r["version"].as_i64()), (400, Some(2)), "{r}");
    assert_eq!(r["violations"][0]["path"], "/note", "{r}");

    let versions = get(&c, format!("{schema_url}/versions")).await;
    assert_eq!(
        versions["versions"].as_array().unwrap().len(),
        2,
        "{versions}"
    );
    let first = get(&c, format!("{schema_url}/versions/1")).await;
    assert_eq!(first["schema"], v1);
    let listed = get(&c, server.url("/schemas/shop")).await;
    assert_eq!(listed["types"][0]["latest"], 2, "{listed}");

    // Not a schema, or not JSON: 400 saying so; another namespace has its own registry.
    let (status, r) = post(&c, schema_url.clone(), &json!({"type": 12})).await;
    assert_eq!(status, 400, "{r}");
    assert!(
        r["error"]
            .as_str()
            .unwrap()
            .contains("not a usable JSON Schema"),
        "{r}"
    );
    let r = c.post(schema_url.clone()).body("{").send().await.unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let other = c
        .get(server.url("/schemas/other/order.created"))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status().as_u16(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_is_rate_limited_per_api_key() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&config_with_rate_limit(5), dir.path()).await;
    let c = client();
    let publish = |key: &'static str| {
        c.post(server.url("/events/shop"))
            .header("x-api-key", key)
            .json(&json!({"type": "order.created", "data": {}}))
            .send()
    };
    for n in 0..5 {
        let r = publish("key-a").await.unwrap();
        assert_eq!(r.status().as_u16(), 200, "publish {n}");
    }
    let refused = publish("key-a").await.unwrap();
    assert_eq!(refused.status().as_u16(), 429);
    let wait: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&wait), "Retry-After {wait}");
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["limit"], 5, "{body}");
    assert!(
        !body["tenant"].as_str().unwrap().contains("key-a"),
        "the key leaked: {body}"
    );
    // Another key has its own budget; the refused publish stored nothing.
    let r: Value = publish("key-b").await.unwrap().json().await.unwrap();
    assert_eq!(r["sequence"], 6, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_dead_letters_and_replay_delivers_them() {
    let (hooks, addr) = start_hooks().await;
    let dir = tempfile::tempdir().unwrap();
    let text = config().replace("EVENTS_MAX_ATTEMPTS = 100", "EVENTS_MAX_ATTEMPTS = 2");
    let server = TestServer::start(&text, dir.path()).await;
    let c = client();
    // A receiver that refuses everything: each event is dead-lettered after two attempts.
    hooks.fail_after("never", Some(0));
    subscribe(&c, server.url("/subscriptions/shop"), "**", addr, "never").await;
    for n in 0..3 {
        let (status, r) = post(
            &c,
            server.url("/events/shop"),
            &json!({"type": "order.created", "data": {"n": n}}),
        )
        .await;
        assert_eq!(status, 200, "{r}");
    }
    let status_url = server.url("/events/shop/status");
    eventually("three dead letters", || {
        let c = c.clone();
        let url = status_url.clone();
        async move { get(&c, url).await["deadLetters"] == 3 }
    })
    .await;
    let status = get(&c, status_url.clone()).await;
    assert_eq!(status["backlog"], 0, "{status}");
    assert_eq!(status["subscriptions"][0]["deadLetters"], 3, "{status}");
    assert!(
        status["subscriptions"][0]["lastError"].is_string(),
        "{status}"
    );
    let page = c
        .get(status_url.clone())
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert!(
        page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let html = page.text().await.unwrap();
    assert!(html.contains("<td>sub_1</td>"), "{html}");
    assert!(html.contains(&format!("{addr}/hook/never")), "{html}");
    assert!(html.contains("dead letters <b>3</b>"), "{html}");
    let r = c
        .get(server.url("/events/bad%20ns/status"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let dead = get(&c, server.url("/subscriptions/shop/dead-letters")).await;
    let listed = dead["deadLetters"].as_array().unwrap();
    assert_eq!(listed.len(), 3, "{dead}");
    assert!(listed.iter().all(|d| d["attempts"] == 2), "{dead}");
    assert_eq!(
        *hooks.refused.lock().unwrap(),
        6,
        "two refused attempts per event"
    );

    // The receiver recovers; replay delivers the dead letters, in order.
    hooks.fail_after("never", None);
    let (status, r) = post(
        &c,
        server.url("/subscriptions/shop/dead-letters/replay"),
        &json!({}),
    )
    .await;
    assert_eq!((status, r["replayed"].as_i64()), (200, Some(3)), "{r}");
    let h = hooks.clone();
    wait_until("the replayed events arrive", || {
        h.acknowledged("never").len() >= 3
    })
    .await;
    assert_eq!(numbers(&hooks.acknowledged("never")), [0, 1, 2]);
    eventually("the dead-letter list is empty", || {
        let (c, url) = (c.clone(), status_url.clone());
        async move { get(&c, url).await["deadLetters"] == 0 }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_writers_files_are_the_catalogs_events_table() {
    let dir = tempfile::tempdir().unwrap();
    let (data, args) = config_in(dir.path(), &config());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let c = client();
    let server = ChildServer::start(&data, &args);
    // Two rounds, two flushes: at least two files, so two snapshots.
    let mut published = Vec::new();
    publish_orders(&c, &server, 0..3, &mut published).await;
    archive_after_flush(&c, &server, &data).await;
    publish_orders(&c, &server, 3..7, &mut published).await;
    let archived = archive_after_flush(&c, &server, &data).await;
    let ids: Vec<&str> = archived.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids, published);

    let catalog = get(&c, server.url("/catalog/shop")).await;
    let tables = catalog["tables"].as_array().unwrap();
    assert_eq!(tables.len(), 1, "{catalog}");
    assert_eq!(
        (tables[0]["name"].as_str(), tables[0]["rows"].as_i64()),
        (Some(".events"), Some(7)),
        "{catalog}"
    );
    // The snapshots are exactly the files in the bucket, in the order they were written.
    let table = get(&c, server.url("/catalog/shop/.events")).await;
    let snapshots = table["snapshots"].as_array().unwrap();
    let listed: Vec<&str> = snapshots
        .iter()
        .map(|s| s["file"].as_str().unwrap())
        .collect();
    let bucket = data.join("buckets/events");
    let mut files = Vec::new();
    let mut dirs = vec![bucket.join("shop")];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                let key = path.strip_prefix(&bucket).unwrap().to_str().unwrap();
                files.push(key.to_string());
            }
        }
    }
    files.sort();
    assert!(files.len() >= 2, "{files:?}");
    assert_eq!(listed, files, "{table}");
    assert_eq!((snapshots[0]["firstSeq"].as_i64()), Some(1), "{table}");
    assert_eq!(table["lastSeq"].as_i64(), Some(7), "{table}");
    // The rows as of the last snapshot are exactly the published events, by id.
    let last = table["currentSnapshotId"].as_i64().unwrap();
    let rows = get(
        &c,
        server.url(&format!("/catalog/shop/.events/snapshots/{last}/rows")),
    )
    .await;
    let mut got: Vec<Value> = rows["rows"]
        .as_array()
        .unwrap_or_else(|| panic!("{rows}"))
        .iter()
        .map(|r| {
            assert_eq!(r["id"], r["doc"]["id"], "{r}");
            r["doc"].clone()
        })
        .collect();
    got.sort_by_key(|e| e["sequence"].as_i64().unwrap());
    assert_eq!(got, archived, "the rows are the events as archived");
    for (n, e) in got.iter().enumerate() {
        assert_eq!(
            (
                e["id"].as_str(),
                e["type"].as_str(),
                e["data"]["n"].as_i64(),
                e["namespace"].as_str()
            ),
            (
                Some(published[n].as_str()),
                Some("order.created"),
                Some(n as i64),
                Some("shop")
            )
        );
    }
    let schema = get(
        &c,
        server.url(&format!("/catalog/shop/.events/snapshots/{last}")),
    )
    .await;
    let mut fields: Vec<&str> = schema["schema"]["fields"]
        .as_array()
        .unwrap_or_else(|| panic!("{schema}"))
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    fields.sort();
    assert_eq!(
        fields,
        ["data", "id", "namespace", "sequence", "timestamp", "type"]
    );
    server.terminate();
}

//! events.do on Rookery over real HTTP (examples/events.toml, docs/EVENTS.md): subscriptions
//! with patterns, in-order delivery to a loopback webhook receiver, and no acknowledged event
//! lost across a `kill -9` during delivery; the event writer's files in the configured bucket.

mod common;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use common::{ChildServer, TestServer, client, eventually, wait_until};
use serde_json::{Value, json};

const EVENTS_CONFIG: &str = include_str!("../../../examples/events.toml");

/// examples/events.toml with loopback receivers allowed and short retry delays.
fn config() -> String {
    let mut text = EVENTS_CONFIG.to_string();
    for (from, to) in [
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
        let (status, r) = post(
            &c,
            subs.clone(),
            &json!({"pattern": pattern, "url": format!("http://{addr}/hook/{hook}")}),
        )
        .await;
        assert_eq!(status, 201, "{r}");
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
    let config_path = dir.path().join("events.toml");
    std::fs::write(&config_path, config()).unwrap();
    let data = dir.path().join("data");
    let args = ["--config", config_path.to_str().unwrap()];
    let c = client();
    let server = ChildServer::start(&data, &args);
    // The receiver takes five events, then fails until the server has been killed.
    hooks.fail_after("crash", Some(5));
    let (status, sub) = post(
        &c,
        server.url("/subscriptions/shop"),
        &json!({"pattern": "**", "url": format!("http://{addr}/hook/crash")}),
    )
    .await;
    assert_eq!(status, 201, "{sub}");
    let sub_url = server.url(&format!(
        "/subscriptions/shop/{}",
        sub["id"].as_str().unwrap()
    ));
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
    let sub_url = server.url(&format!(
        "/subscriptions/shop/{}",
        sub["id"].as_str().unwrap()
    ));
    eventually("the queue is empty", || {
        let (c, url) = (c.clone(), sub_url.clone());
        async move { get(&c, url).await["pending"] == 0 }
    })
    .await;
    server.terminate();
}

/// Publishes through `Subscriptions`, appends the stamped events to the namespace's
/// `EventWriter` by typed call (as the publishing worker is to), and finds them in the file the
/// flush wrote to the bucket examples/events.toml binds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_writer_flushes_published_events_to_the_configured_bucket() {
    use std::io::Read;

    use rookery_objects::EventSinkStub;

    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&config(), dir.path()).await;
    let c = client();
    let writer = server
        .runtime
        .namespace("EVENT_WRITER")
        .unwrap()
        .typed::<EventSinkStub>()
        .get_by_name("shop");
    let mut stamped = vec![];
    for n in 0..5_i64 {
        let data = json!({"n": n});
        let (status, r) = post(
            &c,
            server.url("/events/shop"),
            &json!({"type": "order.created", "data": data}),
        )
        .await;
        assert_eq!(status, 200, "{r}");
        stamped.push(json!({
            "id": r["id"], "namespace": "shop", "type": "order.created", "data": data,
            "timestamp": r["timestamp"], "sequence": r["sequence"],
        }));
    }
    let texts: Vec<String> = stamped.iter().map(Value::to_string).collect();
    let appended = writer.append(texts.clone()).await.unwrap();
    assert_eq!((appended.accepted, appended.highest_sequence), (5, 5));
    // A retried append writes nothing more.
    assert_eq!(writer.append(texts).await.unwrap().skipped, 5);
    let status = get(&c, server.url("/writer/shop")).await;
    assert_eq!(status["bufferedEvents"], 5, "{status}");
    let r = c
        .post(server.url("/writer/shop/flush"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let flushed: Value = r.json().await.unwrap();
    assert_eq!(
        (flushed["files"].as_u64(), flushed["events"].as_u64()),
        (Some(1), Some(5))
    );
    let status = get(&c, server.url("/writer/shop")).await;
    let file = status["lastFlush"]["file"].as_str().unwrap().to_string();
    assert!(
        file.starts_with("shop/") && file.ends_with("/000000000001-000000000005.ndjson.gz"),
        "{file}"
    );
    let path = dir.path().join("buckets/events").join(&file);
    let mut text = String::new();
    flate2::read::GzDecoder::new(std::fs::File::open(&path).unwrap())
        .read_to_string(&mut text)
        .unwrap();
    let written: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(written, stamped);
    server.stop().await;
}

//! Outbound HTTP (`env.http()`) against a test server on loopback: answers, time limit, size
//! cap, redirect limit, internal addresses refused unless listed (also by name and on a
//! redirect), and a request made in a turn held until the turn's writes are durable.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, State};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use bytes::Bytes;
use common::{TestServer, client, wait_until};
use rookery::prelude::*;
use rookery::testing::TestHarness;
use rookery::{Classes, OutboundErrorKind, Runtime};
use rookery_server::Config;
use rookery_server::outbound::{AllowList, HttpClient, OutboundSettings};
use serde_json::json;

/// A server the objects call: it answers, stalls, sends big bodies and redirects.
struct Upstream {
    addr: std::net::SocketAddr,
    seen: Arc<Seen>,
}

/// What the upstream server saw.
#[derive(Default)]
struct Seen {
    /// Paths of the requests that reached it.
    paths: Mutex<Vec<String>>,
    /// Asked at every request; what it said, in order.
    probe: Mutex<Option<Box<dyn Fn() -> bool + Send>>>,
    probed: Mutex<Vec<bool>>,
}

impl Seen {
    fn note(&self, path: &str) {
        if let Some(probe) = &*self.probe.lock().unwrap() {
            self.probed.lock().unwrap().push(probe());
        }
        self.paths.lock().unwrap().push(path.to_string());
    }

    fn count(&self) -> usize {
        self.paths.lock().unwrap().len()
    }
}

#[derive(serde::Deserialize)]
struct Params {
    n: Option<usize>,
    to: Option<String>,
}

impl Upstream {
    async fn start() -> Self {
        let seen = Arc::new(Seen::default());
        let app = Router::new()
            .route(
                "/hello",
                get(|State(s): State<Arc<Seen>>| async move {
                    s.note("/hello");
                    "hello"
                }),
            )
            .route(
                "/slow",
                get(|State(s): State<Arc<Seen>>| async move {
                    s.note("/slow");
                    std::future::pending::<()>().await;
                    "never"
                }),
            )
            .route(
                "/big",
                get(
                    |State(s): State<Arc<Seen>>, Query(p): Query<Params>| async move {
                        s.note("/big");
                        vec![b'x'; p.n.unwrap_or(0)]
                    },
                ),
            )
            .route(
                "/big-chunked",
                get(
                    |State(s): State<Arc<Seen>>, Query(p): Query<Params>| async move {
                        s.note("/big-chunked");
                        let chunks = (0..p.n.unwrap_or(0) / 100)
                            .map(|_| Ok::<_, std::io::Error>(Bytes::from(vec![b'y'; 100])));
                        axum::body::Body::from_stream(futures_util::stream::iter(chunks))
                    },
                ),
            )
            .route(
                "/redirect",
                get(
                    |State(s): State<Arc<Seen>>, Query(p): Query<Params>| async move {
                        s.note("/redirect");
                        let to = p.to.unwrap_or_default();
                        (StatusCode::FOUND, [(http::header::LOCATION, to)]).into_response()
                    },
                ),
            )
            .route(
                "/hook",
                post(|State(s): State<Arc<Seen>>, body: Bytes| async move {
                    s.note(&format!("/hook {}", String::from_utf8_lossy(&body)));
                    StatusCode::NO_CONTENT
                }),
            )
            .with_state(seen.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, seen }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

/// Calls the URL it is given, and answers with what came back; failures pass through.
struct Caller {
    state: ObjectState,
    env: Env,
}

impl DurableObject for Caller {
    fn new(state: ObjectState, env: Env) -> Self {
        Self { state, env }
    }

    async fn fetch(&mut self, req: Request) -> Result<Response> {
        let url = req.query::<String>("url")?.unwrap_or_default();
        match req.path() {
            "/get" => {
                let resp = self.env.http().fetch(Request::get(&url)?).await?;
                Response::json(&json!({
                    "status": resp.status().as_u16(),
                    "body": String::from_utf8_lossy(resp.body()),
                }))
            }
            "/notify" => {
                // A write, then a request that tells another server about it.
                self.state.storage().put("notified", &true)?;
                let resp = self
                    .env
                    .http()
                    .fetch(Request::post(&url)?.with_body("saved"))
                    .await?;
                Response::json(&json!({ "status": resp.status().as_u16() }))
            }
            _ => Ok(Response::not_found()),
        }
    }
}

fn settings(allow: &[&str], change: impl FnOnce(&mut OutboundSettings)) -> OutboundSettings {
    let mut s = OutboundSettings {
        allow: AllowList::parse(allow.iter().copied()).unwrap(),
        ..OutboundSettings::default()
    };
    change(&mut s);
    s
}

fn harness(settings: OutboundSettings) -> TestHarness {
    let client = HttpClient::new(settings).unwrap();
    TestHarness::from_builder::<Caller>(Runtime::builder_in_memory().outbound(Arc::new(client)))
        .unwrap()
}

async fn call(h: &TestHarness, url: &str) -> Result<serde_json::Value> {
    let path = format!("/get?url={}", encode(url));
    h.fetch("caller", Request::get(&path)?).await?.json_body()
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn kind(e: &Error) -> Option<OutboundErrorKind> {
    match e {
        Error::Outbound { kind, .. } => Some(*kind),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listed_address_answers() {
    let up = Upstream::start().await;
    let h = harness(settings(&["127.0.0.1"], |_| {}));
    let r = call(&h, &up.url("/hello")).await.unwrap();
    assert_eq!(r, json!({ "status": 200, "body": "hello" }));
    // A name counts by the addresses it resolves to.
    let by_name = format!("http://localhost:{}/hello", up.addr.port());
    let r = call(&h, &by_name).await.unwrap();
    assert_eq!(r["body"], "hello");
    assert_eq!(up.seen.count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_addresses_are_refused_unless_listed() {
    let up = Upstream::start().await;
    let port = up.addr.port();
    let h = harness(settings(&[], |_| {}));
    for url in [
        up.url("/hello"),
        format!("http://localhost:{port}/hello"),
        format!("http://[::ffff:127.0.0.1]:{port}/hello"),
        format!("http://0.0.0.0:{port}/hello"),
        format!("http://[::1]:{port}/hello"),
        format!("http://127.1:{port}/hello"),
    ] {
        let e = call(&h, &url).await.unwrap_err();
        assert_eq!(kind(&e), Some(OutboundErrorKind::Refused), "{url}: {e}");
        assert_eq!(e.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(e.public_message(), "an outbound request failed");
    }
    assert_eq!(up.seen.count(), 0, "nothing reached the server");
    // Listed, the address answers; every redirect hop is held to the same rule.
    let h = harness(settings(&["127.0.0.1"], |_| {}));
    for to in [
        format!("http://127.0.0.2:{port}/hello"),
        format!("http://[::1]:{port}/hello"),
    ] {
        let hop = up.url(&format!("/redirect?to={}", encode(&to)));
        let e = call(&h, &hop).await.unwrap_err();
        assert_eq!(kind(&e), Some(OutboundErrorKind::Refused), "{to}: {e}");
    }
    assert_eq!(*up.seen.paths.lock().unwrap(), ["/redirect", "/redirect"]);
    let hop = up.url(&format!("/redirect?to={}", encode(&up.url("/hello"))));
    assert_eq!(call(&h, &hop).await.unwrap()["body"], "hello");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_name_the_target_but_not_its_path_or_query() {
    let up = Upstream::start().await;
    let h = harness(settings(&[], |_| {}));
    let e = call(&h, &up.url("/private-path?token=hunter2"))
        .await
        .unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains(&format!("127.0.0.1:{}", up.addr.port())),
        "{text}"
    );
    assert!(
        !text.contains("hunter2") && !text.contains("private-path"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_server_times_out() {
    let up = Upstream::start().await;
    let h = harness(settings(&["127.0.0.1"], |s| {
        s.timeout = Duration::from_millis(200);
    }));
    let e = call(&h, &up.url("/slow")).await.unwrap_err();
    assert_eq!(kind(&e), Some(OutboundErrorKind::Timeout), "{e}");
    assert_eq!(e.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(up.seen.count(), 1, "the request did reach the server");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_over_the_size_cap_are_refused() {
    let up = Upstream::start().await;
    let h = harness(settings(&["127.0.0.1"], |s| s.max_response_bytes = 1000));
    let r = call(&h, &up.url("/big?n=1000")).await.unwrap();
    assert_eq!(r["body"].as_str().map(str::len), Some(1000));
    for path in ["/big?n=1001", "/big-chunked?n=5000"] {
        let e = call(&h, &up.url(path)).await.unwrap_err();
        assert_eq!(kind(&e), Some(OutboundErrorKind::TooLarge), "{path}: {e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_are_limited() {
    let up = Upstream::start().await;
    let h = harness(settings(&["127.0.0.1"], |s| s.max_redirects = 2));
    let hello = up.url("/hello");
    let one = up.url(&format!("/redirect?to={}", encode(&hello)));
    let two = up.url(&format!("/redirect?to={}", encode(&one)));
    let three = up.url(&format!("/redirect?to={}", encode(&two)));
    assert_eq!(call(&h, &two).await.unwrap()["body"], "hello");
    let e = call(&h, &three).await.unwrap_err();
    assert_eq!(kind(&e), Some(OutboundErrorKind::TooManyRedirects), "{e}");
}

/// A disk whose syncs wait until the test opens it.
#[derive(Default)]
struct Disk {
    open: Mutex<bool>,
    cv: Condvar,
    rounds: AtomicU64,
}

impl Disk {
    fn hook(self: &Arc<Self>) -> rookery::SyncHook {
        let disk = self.clone();
        Arc::new(move || {
            disk.rounds.fetch_add(1, Ordering::SeqCst);
            let mut open = disk.open.lock().unwrap();
            while !*open {
                open = disk.cv.wait(open).unwrap();
            }
            Ok(())
        })
    }

    fn is_open(&self) -> bool {
        *self.open.lock().unwrap()
    }

    fn set_open(&self, open: bool) {
        *self.open.lock().unwrap() = open;
        self.cv.notify_all();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_made_in_a_turn_waits_until_its_writes_are_durable() {
    let up = Upstream::start().await;
    let disk = Arc::new(Disk::default());
    {
        let disk = disk.clone();
        *up.seen.probe.lock().unwrap() = Some(Box::new(move || disk.is_open()));
    }
    let dir = tempfile::tempdir().unwrap();
    let client = HttpClient::new(settings(&["127.0.0.1"], |_| {})).unwrap();
    let builder = Runtime::builder(dir.path())
        .sync_hook(disk.hook())
        .outbound(Arc::new(client));
    let h = Arc::new(TestHarness::from_builder::<Caller>(builder).unwrap());
    let path = format!("/notify?url={}", encode(&up.url("/hook")));
    let call = {
        let h = h.clone();
        tokio::spawn(async move { h.fetch("notifier", Request::post(&path)?).await })
    };
    // Without the gate the request would reach the server before any sync began: the turn
    // commits only after the request returns.
    wait_until(
        "the write waits for the disk, or the request went out",
        || disk.rounds.load(Ordering::SeqCst) >= 1 || up.seen.count() > 0,
    )
    .await;
    assert_eq!(
        up.seen.count(),
        0,
        "the request left before its write was durable"
    );
    disk.set_open(true);
    let resp = call.await.unwrap().unwrap();
    assert_eq!(
        resp.json_body::<serde_json::Value>().unwrap()["status"],
        204
    );
    assert_eq!(*up.seen.paths.lock().unwrap(), ["/hook saved"]);
    assert_eq!(
        *up.seen.probed.lock().unwrap(),
        [true],
        "it arrived after the sync"
    );
    let notified: Option<bool> = h
        .run("notifier", |s| s.storage().get("notified"))
        .await
        .unwrap();
    assert_eq!(notified, Some(true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_takes_its_rules_from_the_outbound_section() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let text = r#"
[outbound]
allow = ["127.0.0.1"]
timeout_ms = 5000

[durable_objects]
bindings = [{ name = "CALLER", class_name = "Caller" }]

[[migrations]]
tag = "v1"
new_sqlite_classes = ["Caller"]

[[routes]]
path = "/caller/:name"
binding = "CALLER"
name_from = "name"
"#;
    let mut config = Config::parse("outbound.toml", text).unwrap();
    config.server.data_dir = dir.path().to_path_buf();
    let server = TestServer::start_with(&config, Classes::new().with::<Caller>("Caller")).await;
    let url = server.url(&format!("/caller/c/get?url={}", encode(&up.url("/hello"))));
    let r: serde_json::Value = client()
        .get(url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["body"], "hello");
    // A refused request answers 502 without saying what the target resolved to.
    let url = server.url(&format!(
        "/caller/c/get?url={}",
        encode(&format!("http://[::1]:{}/hello", up.addr.port()))
    ));
    let resp = client().get(url).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "an outbound request failed");
    server.stop().await;

    let bad =
        Config::parse("x.toml", "[outbound]\nallow = [\n  \"10.0.0.0/40\",\n]\n").unwrap_err();
    assert_eq!(bad.line, 3, "{bad}");
    assert!(bad.message.contains("10.0.0.0/40"), "{bad}");
    let bad = Config::parse("x.toml", "[outbound]\n\ntimeout_ms = 0\n").unwrap_err();
    assert_eq!(bad.line, 3, "{bad}");
}

//! Turn atomicity and isolation: failing, panicking, overloaded and cyclic objects.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{PROBE_CONFIG, TestServer, client, gate, live_instances, wait_until};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_turn_leaves_storage_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(PROBE_CONFIG, dir.path()).await;
    let c = client();
    let r = c
        .post(server.url("/probe/p/put?key=a&value=before"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let instance = |r: Value| r["instance"].as_u64().unwrap();
    let first = instance(
        c.get(server.url("/probe/p/instance"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap(),
    );

    let r = c
        .post(server.url("/probe/p/put-then-fail?key=a&value=after"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 500);
    let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let body: Value = r.json().await.unwrap();
    // A handler's own `Error::msg` can say anything (paths, SQL): the client gets the short
    // form and the request id, the log the message.
    assert_eq!(
        body,
        json!({"error": "internal error", "requestId": id}),
        "{body}"
    );
    let r: Value = c
        .get(server.url("/probe/p/get?key=a"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        r,
        json!({"value": "before"}),
        "the failed turn's write is rolled back"
    );
    let second = instance(
        c.get(server.url("/probe/p/instance"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap(),
    );
    assert_ne!(first, second, "the failed instance was dropped and rebuilt");

    let r = c
        .post(server.url("/probe/p/put-then-panic?key=a&value=panicked"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 500);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("panicked"),
        "{body}"
    );
    let r: Value = c
        .get(server.url("/probe/p/get?key=a"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        r,
        json!({"value": "before"}),
        "the panicked turn's write is rolled back"
    );

    // Bad JSON is the handler's 400, and also rolls nothing forward.
    let r = c
        .post(server.url("/probe/p/json"))
        .body("{oops")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("invalid JSON"),
        "{body}"
    );
    let r = c
        .post(server.url("/probe/p/json"))
        .body("[1,2]")
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"echo": [1, 2]}));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_object_does_not_disturb_others() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(PROBE_CONFIG, dir.path()).await;
    let c = client();
    // Two streams side by side (each within the mailbox bound of PROBE_CONFIG).
    let panics = async {
        for _ in 0..20 {
            let r = c
                .post(server.url("/probe/bad/put-then-panic"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 500);
        }
    };
    let counts = async {
        for _ in 0..20 {
            let r = c
                .post(server.url("/counter/good/increment"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
        }
    };
    tokio::join!(panics, counts);
    let r: Value = c
        .get(server.url("/counter/good"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r, json!({"value": 20}));
    // The panicking object itself serves the next request with a fresh instance.
    let r = c.get(server.url("/probe/bad/get")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_mailbox_answers_503() {
    let dir = tempfile::tempdir().unwrap();
    // PROBE_CONFIG sets mailbox_capacity = 4.
    let server = TestServer::start(PROBE_CONFIG, dir.path()).await;
    let c = client();
    let (release, entered) = gate("busy");
    let first = tokio::spawn(c.get(server.url("/probe/busy/wait")).send());
    wait_until("the first request holds the object", || {
        entered.load(Ordering::SeqCst) == 1
    })
    .await;
    // Four more fit in the mailbox, three are refused.
    let more: Vec<_> = (0..7)
        .map(|_| tokio::spawn(c.get(server.url("/probe/busy/wait")).send()))
        .collect();
    // Queued requests cannot finish while the gate is shut, so the first three to finish are
    // the refused ones.
    wait_until("three requests are refused", || {
        more.iter().filter(|t| t.is_finished()).count() == 3
    })
    .await;
    // Another object is unaffected meanwhile.
    let r = c
        .post(server.url("/counter/other/increment"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    release.add_permits(5);
    assert_eq!(first.await.unwrap().unwrap().status(), 200);
    let mut statuses = Vec::new();
    for task in more {
        let r = task.await.unwrap().unwrap();
        statuses.push(r.status().as_u16());
        if r.status() == 503 {
            let body: Value = r.json().await.unwrap();
            assert!(
                body["error"].as_str().unwrap().contains("overloaded"),
                "{body}"
            );
        }
    }
    statuses.sort_unstable();
    assert_eq!(
        statuses,
        [200, 200, 200, 200, 503, 503, 503],
        "mailbox of 4 plus the running turn"
    );
    assert_eq!(entered.load(Ordering::SeqCst), 5);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_cycle_fails_fast() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(PROBE_CONFIG, dir.path()).await;
    // A → B works.
    let r = client()
        .post(server.url("/probe/a/call?target=b"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"value": null}));
    // A → B → A is refused at once instead of waiting for the turn time limit.
    rookery_server::outbound::install_crypto_provider();
    let quick = reqwest::Client::builder()
        .timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let r = quick
        .post(server.url("/probe/a/call?target=b&then=a"))
        .send()
        .await
        .expect("an answer within a second");
    assert_eq!(r.status(), 508);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("call cycle"),
        "{body}"
    );
    // A → A as well.
    let r = quick
        .post(server.url("/probe/a/call?target=a"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 508);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_address_objects_and_forged_ids_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(PROBE_CONFIG, dir.path()).await;
    let c = client();
    let ns = server.runtime.namespace("PROBE").unwrap();
    let id = ns.id_from_name("named").to_hex();
    // By name and by id it is the same object.
    c.post(server.url("/probe/named/put?key=x&value=1"))
        .send()
        .await
        .unwrap();
    let r: Value = c
        .get(server.url(&format!("/probe-id/{id}/get?key=x")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r, json!({"value": "1"}));
    let r: Value = c
        .get(server.url(&format!("/probe-id/{id}/whoami")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["id"], json!(id));
    let r: Value = c
        .get(server.url("/probe/named/whoami"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        r,
        json!({"id": id, "name": "named"}),
        "an id minted from a name remembers it"
    );

    let mut forged = id.clone().into_bytes();
    forged[10] = if forged[10] == b'a' { b'b' } else { b'a' };
    let forged = String::from_utf8(forged).unwrap();
    let foreign = server
        .runtime
        .namespace("COUNTER")
        .unwrap()
        .id_from_name("named")
        .to_hex();
    for bad in [forged.as_str(), foreign.as_str(), "abc", &id.to_uppercase()] {
        let r = c
            .get(server.url(&format!("/probe-id/{bad}/get")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{bad}");
        let body: Value = r.json().await.unwrap();
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .contains("invalid object id"),
            "{body}"
        );
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_the_limit_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = PROBE_CONFIG.replace(
        "mailbox_capacity = 4",
        "mailbox_capacity = 4\nmax_body_bytes = 1024",
    );
    let server = TestServer::start(&config, dir.path()).await;
    let c = client();
    let r = c
        .post(server.url("/probe/p/json"))
        .body(vec![b' '; 2048])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let r = c
        .post(server.url("/probe/p/json"))
        .body("[1]")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_objects_are_evicted_and_come_back_with_their_data() {
    let dir = tempfile::tempdir().unwrap();
    let config = PROBE_CONFIG.replace(
        "mailbox_capacity = 4",
        "mailbox_capacity = 4\nidle_timeout_ms = 50",
    );
    let server = TestServer::start(&config, dir.path()).await;
    let c = client();
    c.post(server.url("/counter/e/increment?amount=7"))
        .send()
        .await
        .unwrap();
    let rt = server.runtime.clone();
    wait_until("the idle counter is evicted", || {
        rt.stats().live_objects == 0
    })
    .await;
    let before = server.runtime.stats().activations;
    let r: Value = c
        .get(server.url("/counter/e"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r, json!({"value": 7}));
    assert_eq!(
        server.runtime.stats().activations,
        before + 1,
        "a new activation served it"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_over_its_time_limit_is_rolled_back() {
    let dir = tempfile::tempdir().unwrap();
    let config = PROBE_CONFIG.replace(
        "mailbox_capacity = 4",
        "mailbox_capacity = 4\nturn_timeout_ms = 200",
    );
    let server = TestServer::start(&config, dir.path()).await;
    let c = client();
    c.post(server.url("/probe/slow/put?key=a&value=before"))
        .send()
        .await
        .unwrap();
    let r = c
        .post(server.url("/probe/slow/put-then-hang?key=a&value=after"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 500);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("time limit"),
        "{body}"
    );
    let r: Value = c
        .get(server.url("/probe/slow/get?key=a"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r, json!({"value": "before"}));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_live_objects_make_idle_ones_leave() {
    let dir = tempfile::tempdir().unwrap();
    let config = PROBE_CONFIG.replace(
        "mailbox_capacity = 4",
        "mailbox_capacity = 4\nmax_live_objects = 5",
    );
    let server = TestServer::start(&config, dir.path()).await;
    let c = client();
    for i in 0..30 {
        let r = c
            .post(server.url(&format!("/counter/many-{i}/increment?amount={i}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let rt = server.runtime.clone();
    wait_until("idle objects made room", || rt.stats().live_objects <= 5).await;
    for i in 0..30 {
        let r: Value = c
            .get(server.url(&format!("/counter/many-{i}")))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(r, json!({"value": i}), "evicted objects keep their data");
    }
    server.stop().await;
}

/// A tokio runtime that is shut down without waiting for its threads when dropped.
struct Detached(Option<tokio::runtime::Runtime>);

impl Detached {
    fn block_on<F: std::future::Future>(&self, future: F) -> F::Output {
        self.0.as_ref().expect("the runtime runs").block_on(future)
    }
}

impl Drop for Detached {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// Runaway SQL holds the thread that runs it until the time limit stops it, so the server runs
/// on threads of its own: if the limit failed, the test's client would still time out and the
/// test fail instead of hanging.
#[test]
fn runaway_sql_is_stopped_by_the_turn_time_limit() {
    let server_rt = Detached(Some(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap(),
    ));
    let dir = tempfile::tempdir().unwrap();
    let config = PROBE_CONFIG.replace(
        "mailbox_capacity = 4",
        "mailbox_capacity = 4\nturn_timeout_ms = 200",
    );
    let server = server_rt.block_on(TestServer::start(&config, dir.path()));
    let client_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    client_rt.block_on(async {
        let c = client();
        c.post(server.url("/probe/runaway/put?key=a&value=before"))
            .send()
            .await
            .unwrap();
        // A query that never ends by itself and never yields to the runtime.
        let r = c
            .post(server.url("/probe/runaway/runaway"))
            .send()
            .await
            .expect("the runaway turn is answered");
        assert_eq!(r.status(), 500);
        let body: Value = r.json().await.unwrap();
        assert!(
            body["error"].as_str().unwrap().contains("time limit"),
            "{body}"
        );
        // The object serves again, with its storage as it was.
        let r: Value = c
            .get(server.url("/probe/runaway/get?key=a"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(r, json!({"value": "before"}));
    });
    server_rt.block_on(server.stop());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eviction_racing_new_requests_loses_nothing_and_never_doubles_an_instance() {
    let dir = tempfile::tempdir().unwrap();
    let config = PROBE_CONFIG.replace(
        "mailbox_capacity = 4",
        "mailbox_capacity = 4\nidle_timeout_ms = 1",
    );
    let server = TestServer::start(&config, dir.path()).await;
    let rt = server.runtime.clone();
    let c = client();
    const REQUESTS: i64 = 2_000;
    const WAIT_EVERY: i64 = 8;
    let before = rt.stats().activations;
    for i in 1..=REQUESTS {
        // Every request waits for the answer to the one before, so evictions of the 1 ms idle
        // object fall between them; some wait until it has left, so it surely leaves often.
        if i % WAIT_EVERY == 0 {
            wait_until("the idle object left memory", || {
                rt.stats().live_objects == 0
            })
            .await;
        }
        let r = c
            .post(server.url("/probe/racer/incr?key=n"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "request {i}: {:?}", r.text().await);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body, json!({"value": i}), "request {i}");
    }
    let activations = rt.stats().activations - before;
    assert!(
        activations >= (REQUESTS / WAIT_EVERY) as u64,
        "{activations} activations"
    );
    assert_eq!(
        live_instances("racer").1,
        1,
        "two instances of the object were alive at once"
    );
    let r: Value = c
        .get(server.url("/probe/racer/get?key=n"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r, json!({"value": REQUESTS}));
    wait_until("the last instance is gone", || {
        rt.stats().live_objects == 0 && live_instances("racer").0 == 0
    })
    .await;
    server.stop().await;
}

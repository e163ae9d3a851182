//! The gateway against hostile and careless clients: slow and idle connections, too many
//! connections, forged client addresses, the runtime's own endpoints, what error bodies may
//! say, and the smaller surprises (HEAD, unrouted methods, empty names, Retry-After).

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{PATIENCE, PROBE_CONFIG, TestServer, captured_logs, client, gate, wait_until};
use rookery_server::config::DEMO_CONFIG;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// PROBE_CONFIG with more `[server]` settings.
fn probe_config(server: &str) -> String {
    PROBE_CONFIG.replacen("[server]\n", &format!("[server]\n{server}\n"), 1)
}

async fn connect(server: &TestServer) -> TcpStream {
    tokio::time::timeout(PATIENCE, TcpStream::connect(server.addr))
        .await
        .expect("connects in time")
        .expect("connects")
}

/// Everything the server sends until it closes the connection; fails the test if it does not
/// close it in time.
async fn read_to_close(stream: &mut (impl AsyncRead + Unpin)) -> String {
    let mut got = Vec::new();
    let read = tokio::time::timeout(PATIENCE, async {
        let mut chunk = [0u8; 4096];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    let text = String::from_utf8_lossy(&got).into_owned();
    assert!(
        read.is_ok(),
        "the server did not close the connection; it sent {text:?}"
    );
    text
}

/// One response with a Content-Length body: its head and its body.
async fn read_response(stream: &mut TcpStream) -> (String, String) {
    let mut got = Vec::new();
    tokio::time::timeout(PATIENCE, async {
        let mut byte = [0u8; 1];
        while !got.ends_with(b"\r\n\r\n") {
            assert_eq!(stream.read(&mut byte).await.unwrap(), 1, "response head");
            got.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&got).to_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map_or(0, |v| v.trim().parse().unwrap());
        let mut body = vec![0u8; length];
        stream.read_exact(&mut body).await.unwrap();
        got.extend_from_slice(&body);
    })
    .await
    .expect("a response in time");
    let text = String::from_utf8_lossy(&got).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    (head.to_string(), body.to_string())
}

async fn stats(server: &TestServer) -> Value {
    client()
        .get(server.url("/_rookery/stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

// ---- 7. Slow and idle clients, and the connection limit ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_and_silent_connections_are_cut_after_the_header_timeout() {
    let dir = tempfile::tempdir().unwrap();
    // A long keep-alive time: only the header timeout can cut these.
    let config = probe_config("header_read_timeout_ms = 300\nkeep_alive_timeout_ms = 600000");
    let server = TestServer::start(&config, dir.path()).await;

    // One header byte at a time, never finishing: each byte is progress, but the head as a
    // whole must arrive in time.
    let slow = connect(&server).await;
    let (mut rd, mut wr) = slow.into_split();
    wr.write_all(b"GET /counter/slow HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    let trickle = tokio::spawn(async move {
        while wr.write_all(b"a").await.is_ok() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let sent = read_to_close(&mut rd).await;
    trickle.abort();
    assert_eq!(sent, "", "no response, just the end of the connection");

    // A client that connects and says nothing.
    let mut silent = connect(&server).await;
    assert_eq!(read_to_close(&mut silent).await, "");

    let s = stats(&server).await;
    assert_eq!(s["connections"]["header_timeouts"], 2, "{s}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let dir = tempfile::tempdir().unwrap();
    // A long header time: only the idle timeout can cut this one.
    let config = probe_config("header_read_timeout_ms = 600000\nkeep_alive_timeout_ms = 200");
    let server = TestServer::start(&config, dir.path()).await;
    let mut conn = connect(&server).await;
    conn.write_all(b"GET /counter/idle HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let (head, body) = read_response(&mut conn).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, r#"{"value":0}"#);
    // Kept alive after the response, then closed when idle too long.
    assert_eq!(read_to_close(&mut conn).await, "");
    let s = stats(&server).await;
    assert_eq!(s["connections"]["idle_closed"], 1, "{s}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_gets_408_and_the_connection_closes() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&probe_config("body_read_timeout_ms = 300"), dir.path()).await;
    let mut conn = connect(&server).await;
    conn.write_all(b"POST /probe/p/json HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"a\":")
        .await
        .unwrap();
    let sent = read_to_close(&mut conn).await;
    assert!(sent.starts_with("HTTP/1.1 408"), "{sent}");
    assert!(sent.contains("did not arrive within 300 ms"), "{sent}");
    // The object never saw the request.
    let r: Value = client()
        .get(server.url("/probe/p/get?key=a"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r, json!({"value": null}));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_limit_are_refused_while_the_others_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let config = probe_config("max_connections = 2\nheader_read_timeout_ms = 600000");
    let server = TestServer::start(&config, dir.path()).await;
    let mut first = connect(&server).await;
    let mut second = connect(&server).await;
    // The server accepts in order, so the third finds both places taken.
    let mut third = connect(&server).await;
    let sent = read_to_close(&mut third).await;
    assert!(sent.starts_with("HTTP/1.1 503"), "{sent}");
    assert!(sent.to_lowercase().contains("retry-after: 1"), "{sent}");
    assert!(sent.contains("too many open connections"), "{sent}");

    // The open ones are still served.
    for conn in [&mut first, &mut second] {
        conn.write_all(
            b"POST /counter/cap/increment HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
        )
        .await
        .unwrap();
        let (head, _) = read_response(conn).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    }
    // Once one closes, a new client gets its place.
    drop(second);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let mut conn = connect(&server).await;
        conn.write_all(b"GET /counter/cap HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let sent = read_to_close(&mut conn).await;
        if sent.starts_with("HTTP/1.1 200") {
            assert!(sent.ends_with(r#"{"value":2}"#), "{sent}");
            break;
        }
        assert!(
            sent.starts_with("HTTP/1.1 503") || sent.is_empty(),
            "{sent}"
        );
        assert!(
            tokio::time::Instant::now() < deadline,
            "the closed connection's place was never given to another"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drop(first);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_outlive_the_http_timeouts() {
    let dir = tempfile::tempdir().unwrap();
    let config = probe_config("header_read_timeout_ms = 300\nkeep_alive_timeout_ms = 300");
    let server = TestServer::start(&config, dir.path()).await;
    let mut ws = common::ws::connect(&server, "/echo/e?tag=a").await;
    // A connection opened after the upgrade and cut by the header timeout shows that more
    // than both timeouts have passed since the upgrade.
    let mut silent = connect(&server).await;
    assert_eq!(read_to_close(&mut silent).await, "");
    futures_util::SinkExt::send(
        &mut ws,
        tokio_tungstenite::tungstenite::Message::text("still here"),
    )
    .await
    .unwrap();
    assert_eq!(common::ws::next_text(&mut ws).await, "echo:still here");
    server.stop().await;
}

// ---- 8. The client address behind a proxy ----

const RATE_CONFIG: &str = r#"
[server]
client_ip_header = "X-Forwarded-For"

[durable_objects]
bindings = [{ name = "RATE_LIMITER", class_name = "RateLimiter" }]

[[migrations]]
tag = "v1"
new_sqlite_classes = ["RateLimiter"]

[[routes]]
path = "/api"
rate_limit = { binding = "RATE_LIMITER", limit = 1, window_ms = 600000 }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxys_address_keys_the_rate_limit() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(RATE_CONFIG, dir.path()).await;
    let c = client();
    let status = |lines: &'static [&'static str]| {
        let mut req = c.get(server.url("/api/x"));
        for l in lines {
            req = req.header("x-forwarded-for", *l);
        }
        async move { req.send().await.unwrap().status().as_u16() }
    };
    // A client's own line comes first; the proxy appends the address it saw last.
    assert_eq!(status(&["6.6.6.1", "9.9.9.9"]).await, 200);
    assert_eq!(
        status(&["6.6.6.2", "9.9.9.9"]).await,
        429,
        "a forged first line does not buy a fresh budget"
    );
    assert_eq!(status(&["9.9.9.9, 8.8.8.8"]).await, 200);
    assert_eq!(status(&["8.8.8.8"]).await, 429);
    // An IPv4-mapped address is the IPv4 client.
    assert_eq!(status(&["::ffff:7.7.7.7"]).await, 200);
    assert_eq!(status(&["7.7.7.7"]).await, 429);
    // IPv6 clients share a budget per /64.
    assert_eq!(status(&["2001:db8:1:2::1"]).await, 200);
    assert_eq!(status(&["2001:db8:1:2:ffff:ffff:ffff:fffe"]).await, 429);
    assert_eq!(status(&["2001:db8:1:3::1"]).await, 200);
    server.stop().await;
}

// ---- 9. The runtime's own endpoints ----

const TOKENS: &str = "\n[auth.tokens]\n\"user-token\" = { user = \"u1\" }\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_endpoints_are_closed_when_auth_has_tokens_and_no_stats_token_is_set() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&format!("{PROBE_CONFIG}{TOKENS}"), dir.path()).await;
    let c = client();
    for auth in [None, Some("Bearer user-token")] {
        let mut req = c.get(server.url("/_rookery/stats"));
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 401, "{auth:?}");
        let body: Value = r.json().await.unwrap();
        assert!(
            body["error"].as_str().unwrap().contains("stats_token"),
            "says how to enable them: {body}"
        );
    }
    // The application's routes are not affected.
    let r = c.get(server.url("/counter/a")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_endpoints_need_the_stats_token_when_one_is_set() {
    let dir = tempfile::tempdir().unwrap();
    let config = format!("{}{TOKENS}", probe_config("stats_token = \"s3cret-stats\""));
    let server = TestServer::start(&config, dir.path()).await;
    let c = client();
    for path in ["/_rookery/stats", "/metrics"] {
        for auth in [
            None,
            Some("Bearer wrong"),
            Some("Bearer user-token"),
            Some("s3cret-stats"),
        ] {
            let mut req = c.get(server.url(path));
            if let Some(a) = auth {
                req = req.header("authorization", a);
            }
            let r = req.send().await.unwrap();
            assert_eq!(r.status(), 401, "{path} {auth:?}");
            assert!(r.headers().contains_key("www-authenticate"));
        }
    }
    let r = c
        .get(server.url("/metrics"))
        .header("authorization", "Bearer s3cret-stats")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    for gauge in [
        "rookery_live_objects",
        "rookery_live_bytes",
        "rookery_wal_bytes",
        "rookery_open_databases",
    ] {
        assert!(text.contains(gauge), "{gauge} missing from {text}");
    }
    let r = c
        .get(server.url("/_rookery/stats"))
        .header("authorization", "Bearer s3cret-stats")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert!(body["runtime"].is_object(), "{body}");
    // Without [auth] tokens and without a stats token (the demo), they stay open.
    server.stop().await;
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(DEMO_CONFIG, dir.path()).await;
    let r = c.get(server.url("/_rookery/stats")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    server.stop().await;
}

// ---- 11. What error bodies may say ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_failures_reach_the_client_as_a_short_message_and_the_log_in_full() {
    let logs = captured_logs();
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(PROBE_CONFIG, dir.path()).await;
    let c = client();
    for (path, body, internals) in [
        (
            "/probe/p/sql",
            "SELECT * FROM no_such_table",
            "no such table",
        ),
        ("/probe/p/internal", "", "/var/lib/rookery-secret"),
    ] {
        let r = c.post(server.url(path)).body(body).send().await.unwrap();
        assert_eq!(r.status(), 500, "{path}");
        let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
        let answer = r.text().await.unwrap();
        assert_eq!(
            serde_json::from_str::<Value>(&answer).unwrap(),
            json!({"error": "internal error", "requestId": id}),
            "{path}"
        );
        assert!(!answer.contains(internals), "{answer}");
        let log_line = |logs: &[u8]| {
            String::from_utf8_lossy(logs)
                .lines()
                .find(|l| l.contains(&id))
                .map(str::to_string)
        };
        let line = log_line(&logs.lock().unwrap()).expect("the failure is logged with its id");
        assert!(line.contains(internals), "{line}");
        if path.ends_with("internal") {
            assert!(
                line.contains("disk on fire"),
                "the cause is logged too: {line}"
            );
        }
    }
    // Errors about the request itself still say what is wrong.
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
    assert!(body.get("requestId").is_none(), "{body}");
    server.stop().await;
}

// ---- 13. Smaller surprises ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overloaded_object_says_when_to_retry() {
    let dir = tempfile::tempdir().unwrap();
    // PROBE_CONFIG sets mailbox_capacity = 4.
    let server = TestServer::start(PROBE_CONFIG, dir.path()).await;
    let c = client();
    let (release, entered) = gate("retry-after");
    let first = tokio::spawn(c.get(server.url("/probe/retry-after/wait")).send());
    wait_until("the first request holds the object", || {
        entered.load(Ordering::SeqCst) == 1
    })
    .await;
    let more: Vec<_> = (0..5)
        .map(|_| tokio::spawn(c.get(server.url("/probe/retry-after/wait")).send()))
        .collect();
    wait_until("one request is refused", || {
        more.iter().filter(|t| t.is_finished()).count() == 1
    })
    .await;
    release.add_permits(5);
    assert_eq!(first.await.unwrap().unwrap().status(), 200);
    let mut refused = 0;
    for task in more {
        let r = task.await.unwrap().unwrap();
        if r.status() == 503 {
            refused += 1;
            assert_eq!(r.headers()["retry-after"], "1");
            let body: Value = r.json().await.unwrap();
            assert!(body["error"].as_str().unwrap().contains("overloaded"));
        } else {
            assert_eq!(r.status(), 200);
            assert!(!r.headers().contains_key("retry-after"));
        }
    }
    assert_eq!(refused, 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_is_get_without_the_body() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(DEMO_CONFIG, dir.path()).await;
    let c = client();
    c.post(server.url("/counter/h/increment?amount=12345"))
        .send()
        .await
        .unwrap();
    let get = c.get(server.url("/counter/h")).send().await.unwrap();
    let get_type = get.headers()["content-type"].clone();
    let get_body = get.text().await.unwrap();
    assert_eq!(get_body, r#"{"value":12345}"#);

    let mut conn = connect(&server).await;
    conn.write_all(b"HEAD /counter/h HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let sent = read_to_close(&mut conn).await;
    let (head, body) = sent.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let head = head.to_lowercase();
    assert!(
        head.contains(&format!("content-length: {}", get_body.len())),
        "the length of the GET body: {head}"
    );
    assert!(
        head.contains(&format!("content-type: {}", get_type.to_str().unwrap())),
        "{head}"
    );
    assert_eq!(body, "", "no body");

    // A route that takes only GET takes HEAD too.
    let r = c.head(server.url("/api/x")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-ratelimit-remaining"], "99");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_method_the_route_does_not_take_is_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(DEMO_CONFIG, dir.path()).await;
    let r = client().post(server.url("/api/x")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"error": "Not found"})
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_object_name_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(DEMO_CONFIG, dir.path()).await;
    let c = client();
    for (method, path) in [
        ("POST", "/counter//increment"),
        ("GET", "/counter//anything"),
        ("GET", "/room//history"),
    ] {
        let r = c
            .request(method.parse().unwrap(), server.url(path))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{method} {path}");
        let body: Value = r.json().await.unwrap();
        assert!(
            body["error"].as_str().unwrap().contains("empty"),
            "{path}: {body}"
        );
    }
    assert_eq!(
        server.runtime.stats().activations,
        0,
        "no object was created"
    );
    server.stop().await;
}

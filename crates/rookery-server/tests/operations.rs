//! Operating the server: Prometheus metrics at `/metrics`, liveness at `/healthz` and
//! readiness at `/readyz`. The metrics recorder is the process's, shared by the tests of this
//! file: figures are checked as lower bounds.

mod common;

use common::{PATIENCE, TestServer, client};
use rookery_server::config::DEMO_CONFIG;
use serde_json::Value;

/// The value of the series rendered as `series` (the name and its labels), if present.
fn value_of(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        line.strip_prefix(series)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    })
}

async fn scrape(c: &reqwest::Client, server: &TestServer) -> String {
    let r = c.get(server.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let content_type = r.headers()["content-type"].to_str().unwrap().to_string();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    r.text().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_turns_and_commits_by_route_and_class_never_by_object() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(DEMO_CONFIG, dir.path()).await;
    let c = client();
    for i in 0..20 {
        let r = c
            .post(server.url(&format!("/counter/metrics-{i}/increment")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let r = c.get(server.url("/no/such/route")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let text = scrape(&c, &server).await;
    let at_least = |series: &str, n: f64| {
        let v = value_of(&text, series).unwrap_or_else(|| panic!("no {series} in:\n{text}"));
        assert!(v >= n, "{series} is {v}, expected at least {n}");
    };
    at_least(
        r#"rookery_http_requests_total{route="/counter/:name",status="200"}"#,
        20.0,
    );
    // The demo's worker takes what no route does.
    at_least(
        r#"rookery_http_requests_total{route="_worker",status="404"}"#,
        1.0,
    );
    at_least(
        r#"rookery_http_request_duration_seconds_count{route="/counter/:name"}"#,
        20.0,
    );
    at_least(
        r#"rookery_turn_duration_seconds_count{class="Counter"}"#,
        20.0,
    );
    at_least(r#"rookery_activations_total{class="Counter"}"#, 20.0);
    at_least("rookery_commits_total", 20.0);
    at_least("rookery_sync_round_duration_seconds_count", 1.0);
    at_least(r#"rookery_class_live_objects{class="Counter"}"#, 20.0);
    at_least("rookery_connections_accepted_total", 1.0);
    // One series per route and status: object names never become labels.
    assert!(
        !text.contains("metrics-7"),
        "an object name is a label:\n{text}"
    );
    let series = text
        .lines()
        .filter(|l| l.starts_with(r#"rookery_http_requests_total{route="/counter/:name""#))
        .count();
    assert_eq!(series, 1, "{text}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_data_directory_and_liveness_does_not() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("data");
    let server = TestServer::start(DEMO_CONFIG, &dir).await;
    let c = client();
    let get = |path: &'static str| {
        let c = c.clone();
        let url = server.url(path);
        async move {
            let r = c.get(url).send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap())
        }
    };
    assert_eq!(
        get("/healthz").await,
        (200, serde_json::json!({"status": "ok"}))
    );
    assert_eq!(
        get("/readyz").await,
        (200, serde_json::json!({"ready": true}))
    );
    std::fs::remove_dir_all(&dir).unwrap();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let body = loop {
        let (status, body) = get("/readyz").await;
        if status == 503 {
            break body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "readiness never noticed the missing directory (last: {status} {body})"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(
        body,
        serde_json::json!({"ready": false, "reason": "storage unavailable"}),
        "the public reason names no path"
    );
    assert_eq!(get("/healthz").await.0, 200, "the process still answers");
    server.stop().await;
}

#[test]
fn json_logs_are_one_object_per_line() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_rookery"))
        .args(["--log-format", "json", "serve", "--listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(dir.path())
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("rookery starts");
    let stderr = child.stderr.take().expect("stderr is piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // Every line up to the one that says the server serves is a JSON object.
    loop {
        let line = rx.recv_timeout(PATIENCE).expect("a log line");
        let v: Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            v["level"].is_string() && v["timestamp"].is_string(),
            "{line}"
        );
        if v["fields"]["message"] == "serving" {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_can_be_turned_off() {
    let dir = tempfile::tempdir().unwrap();
    assert!(DEMO_CONFIG.contains("\nchat_page = true\n"));
    let config = DEMO_CONFIG.replace(
        "\nchat_page = true\n",
        "\nchat_page = true\nmetrics = false\n",
    );
    let server = TestServer::start(&config, dir.path()).await;
    let c = client();
    let r = c.get(server.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert!(r.text().await.unwrap().contains("metrics = false"));
    // Everything else is served as before.
    let r = c
        .post(server.url("/counter/off/increment"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    server.stop().await;
}

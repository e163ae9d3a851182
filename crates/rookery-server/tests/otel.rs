//! OpenTelemetry export (the `otel` feature): a server started with `--otlp-endpoint` sends
//! its turn spans, with the class, the object id and the request id, to a collector over
//! OTLP/HTTP. The collector here is a loopback HTTP server reading OTLP's JSON encoding.

#![cfg(feature = "otel")]

mod common;

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::routing::post;
use common::{ChildServer, PATIENCE, client};

/// Starts a collector on loopback that keeps every body posted to `/v1/traces`.
async fn collector() -> (Arc<Mutex<Vec<String>>>, std::net::SocketAddr) {
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let kept = bodies.clone();
    let app = Router::new().route(
        "/v1/traces",
        post(move |body: Bytes| {
            let kept = kept.clone();
            async move {
                kept.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&body).into_owned());
                "{}"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (bodies, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turn_spans_reach_the_collector_with_class_object_and_request_id() {
    let (bodies, addr) = collector().await;
    let dir = tempfile::tempdir().unwrap();
    let endpoint = format!("http://{addr}");
    let server = ChildServer::start_with_env(
        dir.path(),
        "127.0.0.1:0",
        &["--otlp-endpoint", &endpoint],
        &[
            ("RUST_LOG", "warn,rookery::host::activation=info"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ("OTEL_BSP_SCHEDULE_DELAY", "50"),
        ],
    );
    let request_id = "otel-test-7f3a9c";
    let r = client()
        .post(server.url("/counter/traced/increment"))
        .header("x-request-id", request_id)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let body = loop {
        let found = bodies
            .lock()
            .unwrap()
            .iter()
            .find(|b| b.contains(request_id))
            .cloned();
        if let Some(body) = found {
            break body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no span with the request id reached the collector; got {:?}",
            bodies.lock().unwrap()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let export: serde_json::Value = serde_json::from_str(&body).unwrap();
    let spans: Vec<&serde_json::Value> = export["resourceSpans"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r["scopeSpans"].as_array().unwrap())
        .flat_map(|s| s["spans"].as_array().unwrap())
        .collect();
    let turn = spans
        .iter()
        .find(|s| s["name"] == "turn" && s.to_string().contains(request_id))
        .unwrap_or_else(|| panic!("no turn span in {body}"));
    let attribute = |key: &str| {
        turn["attributes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["key"] == key)
            .map(|a| a["value"]["stringValue"].clone())
    };
    assert_eq!(attribute("class"), Some("Counter".into()), "{turn}");
    assert_eq!(attribute("request_id"), Some(request_id.into()), "{turn}");
    assert_eq!(
        attribute("id").and_then(|v| v.as_str().map(str::len)),
        Some(64),
        "the object id: {turn}"
    );
    let service = export["resourceSpans"][0]["resource"]["attributes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a["key"] == "service.name" && a["value"]["stringValue"] == "rookery");
    assert!(service, "{body}");
    server.terminate();
}

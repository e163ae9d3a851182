//! Every turn runs in a span with the object's class and id and the request's id: a JSON log
//! line written during a turn names all three, and the request id is the one the response
//! carries.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use common::{PROBE_CONFIG, TestServer, client, wait_until};
use serde_json::Value;

/// Every log line of this test binary, as `rookery --log-format json` writes them.
fn json_logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = logs.clone();
        // The same layer as `main.rs` installs for `--log-format json`; at debug, to see the
        // runtime's own debug line from inside a turn.
        tracing_subscriber::fmt()
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .with_max_level(tracing::Level::DEBUG)
            .with_writer(move || Sink(sink.clone()))
            .init();
        logs
    })
    .clone()
}

struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The logged lines that mention `needle`, parsed.
fn lines_with(logs: &Mutex<Vec<u8>>, needle: &str) -> Vec<Value> {
    let text = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    text.lines()
        .filter(|l| l.contains(needle))
        .map(|l| serde_json::from_str(l).expect("every line is JSON"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turns_log_line_names_the_request_id_class_and_object() {
    let logs = json_logs();
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(PROBE_CONFIG, dir.path()).await;
    let who: Value = client()
        .get(server.url("/probe/logged/whoami"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = who["id"].as_str().unwrap().to_string();
    // A turn that fails inside the runtime logs an error from within the turn.
    let resp = client()
        .get(server.url("/probe/logged/internal"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 500);
    let request_id = resp
        .headers()
        .get("x-request-id")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let needle = "the turn failed in the runtime";
    wait_until("the turn's error is logged", || {
        !lines_with(&logs, needle).is_empty()
    })
    .await;
    let line = lines_with(&logs, needle).remove(0);
    let span = &line["span"];
    assert_eq!(span["name"], "turn", "{line}");
    assert_eq!(span["request_id"], request_id.as_str(), "{line}");
    assert_eq!(span["class"], "Probe", "{line}");
    assert_eq!(span["id"], id.as_str(), "{line}");
    // A request id the client sends is the one used.
    let resp = client()
        .get(server.url("/probe/logged/internal"))
        .header("x-request-id", "client-chosen-42")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-request-id"], "client-chosen-42");
    wait_until("the second error is logged", || {
        lines_with(&logs, needle).len() >= 2
    })
    .await;
    let line = lines_with(&logs, needle).remove(1);
    assert_eq!(line["span"]["request_id"], "client-chosen-42", "{line}");

    // A request one object sends another carries the id on: the callee's turn logs under it.
    // Probe nested-a calls nested-b, which calls nested-a back: refused as a cycle, logged in
    // nested-b's turn.
    let callee: Value = client()
        .get(server.url("/probe/nested-b/whoami"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let resp = client()
        .get(server.url("/probe/nested-a/call?target=nested-b&then=nested-a"))
        .header("x-request-id", "nested-7")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 508);
    let needle = "call refused: call cycle";
    wait_until("the refused call is logged", || {
        !lines_with(&logs, needle).is_empty()
    })
    .await;
    let line = lines_with(&logs, needle).remove(0);
    assert_eq!(line["span"]["name"], "turn", "{line}");
    assert_eq!(line["span"]["request_id"], "nested-7", "{line}");
    assert_eq!(line["span"]["id"], callee["id"], "{line}");
    server.stop().await;
}

//! Streamed response bodies: fed from later turns, output-gated like socket sends, dropped with
//! a failed turn, ended when the object lets go, closed for the object when the reader goes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use futures_util::FutureExt;
use rookery::prelude::*;
use rookery::testing::{TestHarness, wait_until};
use rookery::{Bytes, Runtime, StreamLink};
use serde_json::json;

/// An SSE feed: subscribers get every published message.
struct Feed {
    state: ObjectState,
    streams: Vec<BodyStream>,
}

impl DurableObject for Feed {
    fn new(state: ObjectState, _env: Env) -> Self {
        Self {
            state,
            streams: Vec::new(),
        }
    }

    async fn fetch(&mut self, req: Request) -> Result<Response> {
        match req.path() {
            "/subscribe" => {
                let stream = self.state.event_stream();
                stream.send_event(&SseEvent::new("hello").event("greeting"))?;
                self.streams.push(stream.clone());
                Ok(Response::stream(&stream))
            }
            "/publish" => {
                let text = req.query_raw("text").unwrap_or_default().to_string();
                let storage = self.state.storage();
                let n = storage.get::<u64>("published")?.unwrap_or(0) + 1;
                storage.put("published", &n)?;
                self.streams.retain(BodyStream::is_open);
                for stream in &self.streams {
                    stream.send_event(&SseEvent::new(text.clone()).id(n.to_string()))?;
                }
                Response::json(&json!({ "open": self.streams.len() }))
            }
            "/publish-then-fail" => {
                for stream in &self.streams {
                    stream.send_event(&SseEvent::new("never sent"))?;
                }
                Err(Error::msg("deliberate failure after sending"))
            }
            "/close" => {
                for stream in self.streams.drain(..) {
                    stream.send_event(&SseEvent::new("bye"))?;
                    stream.close();
                }
                Ok(Response::text("closed"))
            }
            "/let-go" => {
                self.streams.clear();
                Ok(Response::text("dropped"))
            }
            _ => Ok(Response::not_found()),
        }
    }
}

async fn subscribe(h: &TestHarness, name: &str) -> StreamLink {
    let mut resp = h
        .fetch(name, Request::get("/subscribe").unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap()),
        Some("text/event-stream")
    );
    assert_eq!(
        resp.headers()
            .get("cache-control")
            .map(|v| v.to_str().unwrap()),
        Some("no-cache")
    );
    let mut link = resp.take_stream_link().expect("a streamed body");
    assert_eq!(
        next(&mut link).await,
        Some("event: greeting\ndata: hello\n\n".into())
    );
    link
}

async fn next(link: &mut StreamLink) -> Option<String> {
    let chunk: Option<Bytes> = tokio::time::timeout(rookery::testing::PATIENCE, link.next())
        .await
        .expect("a chunk or the end in time")
        .map(|r| r.expect("not cut off"));
    chunk.map(|b| String::from_utf8(b.to_vec()).unwrap())
}

async fn publish(h: &TestHarness, name: &str, text: &str) -> u64 {
    let resp = h
        .fetch(
            name,
            Request::post(&format!("/publish?text={text}")).unwrap(),
        )
        .await
        .unwrap();
    resp.json_body::<serde_json::Value>().unwrap()["open"]
        .as_u64()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_is_fed_over_several_turns_and_freed_when_its_reader_goes() {
    let h = TestHarness::new::<Feed>().unwrap();
    let mut first = subscribe(&h, "news").await;
    let mut second = subscribe(&h, "news").await;
    for (i, text) in ["one", "two", "three"].into_iter().enumerate() {
        assert_eq!(publish(&h, "news", text).await, 2);
        let expected = format!("id: {}\ndata: {text}\n\n", i + 1);
        assert_eq!(next(&mut first).await, Some(expected.clone()));
        assert_eq!(next(&mut second).await, Some(expected));
    }
    drop(second);
    assert_eq!(
        publish(&h, "news", "four").await,
        1,
        "the object sees it closed"
    );
    assert_eq!(next(&mut first).await, Some("id: 4\ndata: four\n\n".into()));
    h.fetch("news", Request::post("/close").unwrap())
        .await
        .unwrap();
    assert_eq!(next(&mut first).await, Some("data: bye\n\n".into()));
    assert_eq!(next(&mut first).await, None, "closed by the object");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_body_ends_when_the_object_lets_go_and_a_failed_turn_sends_nothing() {
    let h = TestHarness::new::<Feed>().unwrap();
    let mut link = subscribe(&h, "dropping").await;
    h.fetch("dropping", Request::post("/let-go").unwrap())
        .await
        .unwrap();
    assert_eq!(next(&mut link).await, None);
    let mut link = subscribe(&h, "failing").await;
    let e = h
        .fetch("failing", Request::post("/publish-then-fail").unwrap())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("deliberate"), "{e}");
    // The failed turn's event is dropped; the instance that held the stream is gone with it.
    assert_eq!(next(&mut link).await, None);
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

    fn set_open(&self, open: bool) {
        *self.open.lock().unwrap() = open;
        self.cv.notify_all();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_turn_sends_waits_until_its_writes_are_durable() {
    let dir = tempfile::tempdir().unwrap();
    let disk = Arc::new(Disk::default());
    disk.set_open(true);
    let h = Arc::new(
        TestHarness::from_builder::<Feed>(Runtime::builder(dir.path()).sync_hook(disk.hook()))
            .unwrap(),
    );
    let mut link = subscribe(&h, "gated").await;
    disk.set_open(false);
    let rounds = disk.rounds.load(Ordering::SeqCst);
    let publishing = {
        let h = h.clone();
        tokio::spawn(async move { publish(&h, "gated", "durable").await })
    };
    wait_until("the publishing turn's commit waits for the disk", || {
        disk.rounds.load(Ordering::SeqCst) > rounds
    })
    .await;
    assert!(
        link.next().now_or_never().is_none(),
        "the event left before the write it follows was durable"
    );
    disk.set_open(true);
    assert_eq!(
        next(&mut link).await,
        Some("id: 1\ndata: durable\n\n".into())
    );
    assert_eq!(publishing.await.unwrap(), 1);
}

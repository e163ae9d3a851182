//! Server-sent events over HTTP: a stream fed over several turns arrives unbuffered, a client
//! that goes away frees its stream, and shutdown ends open streams instead of waiting on them.

mod common;
#[path = "../../rookery-cluster/tests/common/postgres.rs"]
mod postgres;

use common::{PATIENCE, TestServer, client};
use rookery::Classes;
use rookery::prelude::*;
use rookery_server::Config;
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
                stream.send_event(&SseEvent::new("welcome").event("hello"))?;
                self.streams.push(stream.clone());
                Ok(Response::stream(&stream))
            }
            "/publish" => {
                let text = req.query_raw("text").unwrap_or_default().to_string();
                let n = self.state.storage().get::<u64>("n")?.unwrap_or(0) + 1;
                self.state.storage().put("n", &n)?;
                self.streams.retain(BodyStream::is_open);
                for stream in &self.streams {
                    stream.send_event(&SseEvent::new(text.clone()).id(n.to_string()))?;
                }
                Response::json(&json!({ "open": self.streams.len() }))
            }
            _ => Ok(Response::not_found()),
        }
    }
}

const CONFIG: &str = r#"
[durable_objects]
bindings = [{ name = "FEED", class_name = "Feed" }]

[[migrations]]
tag = "v1"
new_sqlite_classes = ["Feed"]

[[routes]]
path = "/feed/:name"
binding = "FEED"
name_from = "name"
"#;

async fn start(dir: &std::path::Path) -> TestServer {
    let mut config = Config::parse("streams.toml", CONFIG).unwrap();
    config.server.data_dir = dir.to_path_buf();
    TestServer::start_with(&config, Classes::new().with::<Feed>("Feed")).await
}

/// Reads an event stream one event at a time.
struct Events {
    resp: reqwest::Response,
    buf: String,
}

impl Events {
    async fn open(server: &TestServer, name: &str) -> Self {
        let resp = client()
            .get(server.url(&format!("/feed/{name}/subscribe")))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        assert_eq!(resp.headers()["cache-control"], "no-cache");
        assert!(resp.headers().get("content-length").is_none());
        Self {
            resp,
            buf: String::new(),
        }
    }

    /// The next event, or `None` when the stream ended.
    async fn next(&mut self) -> Option<String> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let event = self.buf[..end].to_string();
                self.buf.drain(..end + 2);
                return Some(event);
            }
            let chunk = tokio::time::timeout(PATIENCE, self.resp.chunk())
                .await
                .expect("an event in time");
            match chunk {
                Ok(Some(bytes)) => self.buf.push_str(std::str::from_utf8(&bytes).unwrap()),
                Ok(None) | Err(_) => return None,
            }
        }
    }
}

async fn publish(server: &TestServer, name: &str, text: &str) -> u64 {
    let r: serde_json::Value = client()
        .post(server.url(&format!("/feed/{name}/publish?text={text}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    r["open"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_published_over_several_turns_arrive_and_a_gone_client_frees_its_stream() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut ann = Events::open(&server, "news").await;
    let mut bob = Events::open(&server, "news").await;
    assert_eq!(
        ann.next().await.as_deref(),
        Some("event: hello\ndata: welcome")
    );
    assert_eq!(
        bob.next().await.as_deref(),
        Some("event: hello\ndata: welcome")
    );
    for (i, text) in ["one", "two", "three"].into_iter().enumerate() {
        assert_eq!(publish(&server, "news", text).await, 2);
        let expected = format!("id: {}\ndata: {text}", i + 1);
        assert_eq!(ann.next().await, Some(expected.clone()));
        assert_eq!(bob.next().await, Some(expected));
    }
    // Bob goes away: the server notices and the object sees the stream closed.
    drop(bob);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut n = 3;
    loop {
        n += 1;
        let open = publish(&server, "news", "more").await;
        assert_eq!(ann.next().await, Some(format!("id: {n}\ndata: more")));
        if open == 1 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the gone client's stream stays open"
        );
    }
    server.stop().await;
    assert_eq!(ann.next().await, None, "shutdown ends the stream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_of_an_object_on_another_node_is_relayed_as_it_is_written() {
    let url = postgres::fresh_database().await;
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let node = |dir: &std::path::Path, id: &'static str| {
        let url = url.clone();
        let dir = dir.to_path_buf();
        async move {
            let mut config = Config::parse("streams.toml", CONFIG).unwrap();
            config.server.data_dir = dir;
            TestServer::start_clustered(&config, Classes::new().with::<Feed>("Feed"), &url, id)
                .await
        }
    };
    let a = node(dir_a.path(), "a").await;
    let b = node(dir_b.path(), "b").await;
    // Ann subscribes on A, which takes the feed; Bob on B, whose node relays A's stream.
    let mut ann = Events::open(&a, "wire").await;
    let mut bob = Events::open(&b, "wire").await;
    for events in [&mut ann, &mut bob] {
        assert_eq!(
            events.next().await.as_deref(),
            Some("event: hello\ndata: welcome")
        );
    }
    // Events published later, through either node, reach both, one at a time.
    for (i, (via, text)) in [(&b, "one"), (&a, "two"), (&b, "three")]
        .into_iter()
        .enumerate()
    {
        assert_eq!(publish(via, "wire", text).await, 2);
        let expected = format!("id: {}\ndata: {text}", i + 1);
        assert_eq!(ann.next().await, Some(expected.clone()));
        assert_eq!(bob.next().await, Some(expected));
    }
    drop((ann, bob));
    b.stop().await;
    a.stop().await;
}

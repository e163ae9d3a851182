//! The Rust client (`rookery-client`) against the real `rookery serve` with the demo app: two
//! clients chat with typing and presence, the server is killed with SIGKILL and restarted on
//! the same port and data directory, both clients reconnect on their own, the messages sent
//! while disconnected arrive, and neither client loses or duplicates a message. Also: the demo
//! serves the chat page (`/chat`) and its JavaScript client.

mod common;

use std::collections::HashSet;

use common::{ChildServer, PATIENCE, client};
use rookery_client::{ChatMessage, Client, ClientConfig, Event, OnlineUser};
use serde_json::{Value, json};
use tokio::time::{Duration, Instant};

/// One chat member: the client and everything it reported.
struct Member {
    name: &'static str,
    client: Client,
    messages: Vec<ChatMessage>,
    connects: usize,
    disconnects: usize,
    online: Vec<OnlineUser>,
    presence: Vec<(String, String)>,
    typing: Vec<(String, bool)>,
    errors: Vec<String>,
}

impl Member {
    fn join(addr: std::net::SocketAddr, user: &'static str, name: &'static str) -> Self {
        let config = ClientConfig::channel(&format!("http://{addr}"), "lobby")
            .query_identity(user, name, "read,write")
            // Short delays keep the test quick; the cap still applies.
            .backoff(Duration::from_millis(50), Duration::from_millis(800));
        Self {
            name: user,
            client: Client::connect(config).expect("client starts"),
            messages: Vec::new(),
            connects: 0,
            disconnects: 0,
            online: Vec::new(),
            presence: Vec::new(),
            typing: Vec::new(),
            errors: Vec::new(),
        }
    }

    fn record(&mut self, event: Event) {
        match event {
            Event::Connected { online, .. } => {
                self.connects += 1;
                self.online = online;
            }
            Event::Message(m) => self.messages.push(m),
            Event::Disconnected { retry_in, .. } => {
                assert!(
                    retry_in <= Duration::from_millis(800),
                    "capped: {retry_in:?}"
                );
                self.disconnects += 1;
            }
            Event::Presence {
                user_id, status, ..
            } => self.presence.push((user_id, status)),
            Event::Typing {
                user_id, is_typing, ..
            } => self.typing.push((user_id, is_typing)),
            Event::UserLeft { .. } => {}
            Event::ServerError(e) => self.errors.push(e),
            Event::Stopped(e) => panic!("{}: the client stopped: {e}", self.name),
        }
    }

    /// Reads events until `cond` holds, failing after [`PATIENCE`].
    async fn until(&mut self, what: &str, cond: impl Fn(&Member) -> bool) {
        let deadline = Instant::now() + PATIENCE;
        while !cond(self) {
            let event = tokio::time::timeout_at(deadline, self.client.next_event())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "{}: timed out waiting until {what}; messages so far: {:?}",
                        self.name,
                        self.contents()
                    )
                })
                .expect("the client runs");
            self.record(event);
        }
    }

    fn contents(&self) -> Vec<String> {
        self.messages.iter().map(|m| m.content.clone()).collect()
    }

    fn has(&self, content: &str) -> bool {
        self.messages.iter().any(|m| m.content == content)
    }

    /// Sends `content` and waits until both members have it.
    async fn say(&mut self, other: &mut Member, content: &str) {
        self.client.send_message(content).expect("sent");
        self.until(content, |m| m.has(content)).await;
        other.until(content, |m| m.has(content)).await;
    }
}

async fn server_messages(addr: std::net::SocketAddr) -> Vec<Value> {
    let r = client()
        .get(format!(
            "http://{addr}/channel/lobby/messages?limit=500&user=check&permissions=read"
        ))
        .send()
        .await
        .expect("GET /messages");
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.expect("JSON");
    body["messages"].as_array().expect("messages").clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_chat_across_a_kill_9_without_losing_or_duplicating() {
    let dir = tempfile::tempdir().unwrap();
    let server = ChildServer::start(dir.path(), &[]);
    let addr = server.addr;

    // The demo serves the chat page and its client from the binary.
    for (path, kind, needle) in [
        (
            "/chat",
            "text/html; charset=utf-8",
            "/chat/waddle-client.js",
        ),
        (
            "/chat/waddle-client.js",
            "text/javascript; charset=utf-8",
            "export class WaddleClient",
        ),
    ] {
        let r = client()
            .get(format!("http://{addr}{path}"))
            .send()
            .await
            .expect("GET");
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(r.headers()["content-type"], kind, "{path}");
        assert!(r.text().await.expect("body").contains(needle), "{path}");
    }

    let mut ann = Member::join(addr, "ann", "Ann");
    ann.until("ann is connected", |m| m.connects == 1).await;
    let mut bob = Member::join(addr, "bob", "Bob");
    bob.until("bob is connected", |m| m.connects == 1).await;
    let online: HashSet<&str> = bob.online.iter().map(|u| u.user_id.as_str()).collect();
    assert_eq!(
        online,
        HashSet::from(["ann", "bob"]),
        "bob sees who is online"
    );
    // Bob announced himself when he connected; Ann hears it.
    ann.until("ann sees bob online", |m| {
        m.presence.contains(&("bob".into(), "online".into()))
    })
    .await;

    // Typing: Bob sees Ann start; her message ends it.
    ann.client.set_typing(true).expect("typing");
    bob.until("bob sees ann typing", |m| {
        m.typing.contains(&("ann".into(), true))
    })
    .await;
    ann.say(&mut bob, "hello from ann").await;
    bob.until("ann stopped typing", |m| {
        m.typing.contains(&("ann".into(), false))
    })
    .await;
    bob.say(&mut ann, "hi ann").await;
    ann.say(&mut bob, "how are you?").await;
    assert_eq!(ann.contents(), ["hello from ann", "hi ann", "how are you?"]);
    assert_eq!(bob.contents(), ann.contents());

    // kill -9: no close frames; both notice on their own.
    server.kill9();
    ann.until("ann notices", |m| m.disconnects >= 1).await;
    bob.until("bob notices", |m| m.disconnects >= 1).await;
    assert!(!ann.client.is_connected() && !bob.client.is_connected());

    // Sent while disconnected: queued.
    ann.client
        .send_message("ann while offline")
        .expect("queued");
    bob.client
        .send_message("bob while offline")
        .expect("queued");
    assert_eq!((ann.client.queued(), bob.client.queued()), (1, 1));

    // The same port and data directory; nobody tells the clients.
    let server = ChildServer::start_at(dir.path(), &addr.to_string(), &[]);
    assert_eq!(server.addr, addr);
    for m in [&mut ann, &mut bob] {
        m.until("reconnected with both offline messages", |m| {
            m.connects >= 2 && m.has("ann while offline") && m.has("bob while offline")
        })
        .await;
        assert_eq!(m.client.queued(), 0);
    }

    // A message from the server side, and one more from each after the restart.
    let r = client()
        .post(format!(
            "http://{addr}/channel/lobby/message?user=bot&name=Bot&permissions=write"
        ))
        .json(&json!({ "content": "bot after restart" }))
        .send()
        .await
        .expect("POST /message");
    assert_eq!(r.status(), 200);
    ann.say(&mut bob, "ann is back").await;
    bob.say(&mut ann, "bob is back").await;
    for m in [&mut ann, &mut bob] {
        m.until("the bot's message", |m| m.has("bot after restart"))
            .await;
    }
    // A last message: anything duplicated or late would have come before it.
    ann.say(&mut bob, "bye").await;

    // Exactly what the server stored, in its order, once each, in both clients.
    let stored = server_messages(addr).await;
    let stored: Vec<(u64, String, String)> = stored
        .iter()
        .map(|m| {
            (
                m["sequence"].as_u64().expect("sequence"),
                m["id"].as_str().expect("id").to_string(),
                m["content"].as_str().expect("content").to_string(),
            )
        })
        .collect();
    assert_eq!(stored.len(), 9, "stored: {stored:?}");
    assert_eq!(
        stored.iter().map(|(s, _, _)| *s).collect::<Vec<_>>(),
        (1..=9).collect::<Vec<u64>>()
    );
    for m in [&ann, &bob] {
        let got: Vec<(u64, String, String)> = m
            .messages
            .iter()
            .map(|m| (m.sequence, m.id.clone(), m.content.clone()))
            .collect();
        assert_eq!(got, stored, "{} has every message once, in order", m.name);
        assert!(m.errors.is_empty(), "{}: {:?}", m.name, m.errors);
        assert_eq!(m.connects, 2, "{} reconnected once", m.name);
    }
    let mut offline: Vec<&str> = stored[3..5].iter().map(|(_, _, c)| c.as_str()).collect();
    offline.sort_unstable();
    assert_eq!(offline, ["ann while offline", "bob while offline"]);
    assert_eq!(
        stored[5..]
            .iter()
            .map(|(_, _, c)| c.as_str())
            .collect::<Vec<_>>(),
        ["bot after restart", "ann is back", "bob is back", "bye"]
    );

    ann.client.close().await;
    bob.client.close().await;
    server.terminate();
}

//! The Waddle and Channel objects over real connections: presence, typing indicators cleared by
//! the alarm, permissions, bad input, server-side delivery, and replay after a server restart.

mod common;

use std::path::Path;

use common::ws::{Ws, connect, next_json};
use common::{PATIENCE, TestServer, client, wait_until};
use futures_util::{SinkExt, StreamExt};
use rookery_server::Config;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// The Waddle demo: identities from the query, one route per object kind.
const WADDLE_CONFIG: &str = r#"
[server]
turn_timeout_ms = 5000

[auth]
query_identity = true

[durable_objects]
bindings = [
  { name = "WADDLE", class_name = "Waddle" },
  { name = "CHANNEL", class_name = "Channel" },
]

[[migrations]]
tag = "v1"
new_sqlite_classes = ["Waddle", "Channel"]

[[routes]]
path = "/ws/waddle/:id"
binding = "WADDLE"
name_from = "id"

[[routes]]
path = "/ws/channel/:id"
binding = "CHANNEL"
name_from = "id"

[[routes]]
path = "/channel/:id"
binding = "CHANNEL"
name_from = "id"
"#;

async fn start(data_dir: &Path) -> TestServer {
    let mut config = Config::parse("waddle.toml", WADDLE_CONFIG).expect("valid test config");
    config.server.data_dir = data_dir.to_path_buf();
    TestServer::start_with(&config, rookery_objects::builtin_classes()).await
}

/// The query that makes the gateway vouch for `user` (named `User <user>`).
fn who(user: &str, permissions: &str) -> String {
    format!("user={user}&name=User%20{user}&permissions={permissions}")
}

/// The next message of `kind`, skipping others (e.g. presence updates of other users).
async fn next_of(ws: &mut Ws, kind: &str) -> Value {
    loop {
        let m = next_json(ws).await;
        if m["type"] == kind {
            return m;
        }
    }
}

async fn say(ws: &mut Ws, value: &Value) {
    ws.send(Message::text(value.to_string())).await.unwrap();
}

async fn say_raw(ws: &mut Ws, text: &str) {
    ws.send(Message::text(text)).await.unwrap();
}

/// Closes cleanly and waits for the server's answer.
async fn close(mut ws: Ws) {
    ws.close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    }))
    .await
    .unwrap();
    loop {
        match tokio::time::timeout(PATIENCE, ws.next())
            .await
            .expect("the close in time")
        {
            Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
            Some(Ok(_)) => continue,
        }
    }
}

/// Posts `content` to channel `channel` from the server side as `user`.
async fn post(server: &TestServer, channel: &str, query: &str, content: &str) -> (u16, Value) {
    let r = client()
        .post(server.url(&format!("/channel/{channel}/message?{query}")))
        .json(&json!({ "content": content }))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

fn contents(messages: &Value) -> Vec<String> {
    messages
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["content"].as_str().unwrap().to_string())
        .collect()
}

fn sequences(messages: &Value) -> Vec<u64> {
    messages
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["sequence"].as_u64().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_goes_online_and_offline_with_the_last_socket() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut ann = connect(&server, &format!("/ws/waddle/w1?{}", who("ann", "read"))).await;
    let state = next_json(&mut ann).await;
    assert_eq!(state["type"], "presence_state");
    assert_eq!(state["users"].as_array().unwrap().len(), 1);
    assert_eq!(
        (
            state["users"][0]["userId"].as_str(),
            state["users"][0]["username"].as_str(),
            state["users"][0]["status"].as_str()
        ),
        (Some("ann"), Some("User ann"), Some("online"))
    );

    // Bob's first socket: ann sees him come online; bob sees both.
    let mut bob1 = connect(&server, &format!("/ws/waddle/w1?{}", who("bob", "read"))).await;
    let online = next_json(&mut ann).await;
    assert_eq!(online["type"], "presence_update");
    assert_eq!(
        (
            online["userId"].as_str(),
            online["username"].as_str(),
            online["status"].as_str()
        ),
        (Some("bob"), Some("User bob"), Some("online"))
    );
    assert!(online["timestamp"].as_i64().is_some());
    let state = next_json(&mut bob1).await;
    let ids: Vec<&str> = state["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["userId"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["ann", "bob"]);

    // A status change reaches everyone else, not the sender (seed 000).
    say(
        &mut bob1,
        &json!({"type": "presence_update", "status": "away"}),
    )
    .await;
    let u = next_json(&mut ann).await;
    assert_eq!(
        (
            u["type"].as_str(),
            u["userId"].as_str(),
            u["status"].as_str()
        ),
        (Some("presence_update"), Some("bob"), Some("away"))
    );
    // Bob's next frame is the error he provokes, not an echo of his own update.
    say_raw(&mut bob1, "{not json").await;
    assert_eq!(next_json(&mut bob1).await["type"], "error");

    // A second socket of bob's: no new announcement; closing one of two keeps him online.
    let mut bob2 = connect(&server, &format!("/ws/waddle/w1?{}", who("bob", "read"))).await;
    let state = next_json(&mut bob2).await;
    assert_eq!(state["users"][1]["status"], "away");
    close(bob1).await;
    let waddle = server
        .runtime
        .namespace("WADDLE")
        .unwrap()
        .get_by_name("w1");
    wait_until("bob's first socket is gone", || {
        waddle.websocket_count() == 2
    })
    .await;
    // Ann's next message is the one bob2 sends, not an offline for bob.
    say(
        &mut ann,
        &json!({"type": "presence_update", "status": "dnd"}),
    )
    .await;
    let next = next_json(&mut bob2).await;
    assert_eq!(
        (next["userId"].as_str(), next["status"].as_str()),
        (Some("ann"), Some("dnd"))
    );
    say(
        &mut bob2,
        &json!({"type": "presence_update", "status": "away"}),
    )
    .await;
    let next = next_json(&mut ann).await;
    assert_eq!(
        (next["userId"].as_str(), next["status"].as_str()),
        (Some("bob"), Some("away"))
    );

    // The last socket going (even abruptly) makes bob offline for everyone.
    drop(bob2);
    let offline = next_of(&mut ann, "presence_update").await;
    assert_eq!(
        (offline["userId"].as_str(), offline["status"].as_str()),
        (Some("bob"), Some("offline"))
    );

    let presence: Value = client()
        .get(server.url("/ws/waddle/w1/presence"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let users: Vec<(&str, &str)> = presence["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| (u["userId"].as_str().unwrap(), u["status"].as_str().unwrap()))
        .collect();
    assert_eq!(users, [("ann", "dnd"), ("bob", "offline")]);

    // Bad input is answered, not fatal.
    say_raw(&mut ann, "{not json").await;
    assert_eq!(
        next_json(&mut ann).await,
        json!({"type": "error", "message": "Invalid message format"})
    );
    say(&mut ann, &json!({"type": "dance"})).await;
    assert_eq!(
        next_json(&mut ann).await,
        json!({"type": "error", "message": "Unknown message type"})
    );
    say(
        &mut ann,
        &json!({"type": "presence_update", "status": "asleep"}),
    )
    .await;
    assert_eq!(next_json(&mut ann).await["type"], "error");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrades_without_an_identity_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    for path in ["/ws/waddle/w1", "/ws/channel/c1"] {
        // A client cannot claim an identity through the trusted headers: the gateway strips them.
        let mut req =
            tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
                format!("ws://{}{path}", server.addr),
            )
            .unwrap();
        req.headers_mut()
            .insert("x-rookery-user-id", "mallory".parse().unwrap());
        match tokio_tungstenite::connect_async(req).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status(), 401, "{path}");
                let body: Value =
                    serde_json::from_slice(resp.body().as_deref().unwrap_or_default()).unwrap();
                assert_eq!(body, json!({"error": "Unauthorized"}));
            }
            other => panic!("expected a 401 refusal for {path}, got {other:?}"),
        }
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_reaches_the_others_only_and_the_alarm_clears_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut ann = connect(
        &server,
        &format!("/ws/channel/c1?{}", who("ann", "read,write")),
    )
    .await;
    let mut bob = connect(
        &server,
        &format!("/ws/channel/c1?{}", who("bob", "read,write")),
    )
    .await;
    let initial = next_json(&mut ann).await;
    assert_eq!(
        (
            &initial["type"],
            &initial["lastSequence"],
            &initial["messages"],
            &initial["typing"]
        ),
        (&json!("initial_state"), &json!(0), &json!([]), &json!([]))
    );
    // Seed 004: who is connected, each with the time they joined.
    let online: Vec<&str> = initial["onlineUsers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["userId"].as_str().unwrap())
        .collect();
    assert!(online.contains(&"ann"), "{initial}");
    assert!(initial["onlineUsers"][0]["joinedAt"].as_i64().is_some());
    assert_eq!(next_json(&mut bob).await["type"], "initial_state");

    say(&mut ann, &json!({"type": "typing", "isTyping": true})).await;
    assert_eq!(
        next_json(&mut bob).await,
        json!({"type": "typing", "userId": "ann", "username": "User ann", "isTyping": true, "users": ["ann"]})
    );
    // The typist is not told about herself: her next message is the sync she asks for.
    say(&mut ann, &json!({"type": "sync", "after": 0})).await;
    assert_eq!(next_json(&mut ann).await["type"], "sync");

    // A newcomer learns who is typing from the initial state.
    let mut cat = connect(&server, &format!("/ws/channel/c1?{}", who("cat", "read"))).await;
    let initial = next_json(&mut cat).await;
    assert_eq!(initial["typing"], json!(["ann"]));

    // Nobody says stop: the alarm clears the indicator after 3 s, for everyone but ann.
    for ws in [&mut bob, &mut cat] {
        let cleared = next_json(ws).await;
        assert_eq!(
            cleared,
            json!({"type": "typing", "userId": "ann", "username": "User ann", "isTyping": false, "users": []})
        );
    }
    say(&mut ann, &json!({"type": "sync", "after": 0})).await;
    assert_eq!(
        next_json(&mut ann).await["type"],
        "sync",
        "ann got no typing of her own"
    );
    let mut late = connect(&server, &format!("/ws/channel/c1?{}", who("dan", "read"))).await;
    assert_eq!(next_json(&mut late).await["typing"], json!([]));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_need_write_permission_and_valid_input() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut reader = connect(&server, &format!("/ws/channel/c2?{}", who("rita", "read"))).await;
    let mut writer = connect(
        &server,
        &format!("/ws/channel/c2?{}", who("will", "read,write")),
    )
    .await;
    next_json(&mut reader).await;
    next_json(&mut writer).await;

    say(
        &mut reader,
        &json!({"type": "message", "content": "let me in"}),
    )
    .await;
    assert_eq!(
        next_json(&mut reader).await,
        json!({"type": "error", "message": "No write permission"})
    );
    say_raw(&mut reader, "{not json").await;
    assert_eq!(
        next_json(&mut reader).await,
        json!({"type": "error", "message": "Invalid message format"})
    );
    say(&mut reader, &json!({"type": "dance"})).await;
    assert_eq!(
        next_json(&mut reader).await,
        json!({"type": "error", "message": "Unknown message type"})
    );
    say(
        &mut writer,
        &json!({"type": "message", "content": "x".repeat(4_001)}),
    )
    .await;
    assert_eq!(next_json(&mut writer).await["type"], "error");

    // Refused messages used no sequence: the first accepted one is 1, and everyone gets it.
    say(&mut writer, &json!({"type": "message", "content": "hello"})).await;
    for ws in [&mut writer, &mut reader] {
        let m = next_json(ws).await;
        assert_eq!(m["type"], "message");
        assert_eq!(m["sequence"], 1);
        assert_eq!(
            (
                m["userId"].as_str(),
                m["username"].as_str(),
                m["content"].as_str()
            ),
            (Some("will"), Some("User will"), Some("hello"))
        );
        assert!(m["id"].as_str().is_some_and(|id| !id.is_empty()));
        assert!(m["timestamp"].as_i64().is_some());
    }

    // The same rules apply over HTTP.
    assert_eq!(post(&server, "c2", &who("rita", "read"), "hi").await.0, 403);
    assert_eq!(
        post(&server, "c2", &who("will", "write"), &"y".repeat(4_001))
            .await
            .0,
        400
    );
    let r = client()
        .post(server.url("/channel/c2/message"))
        .json(&json!({"content": "anonymous"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // The reader leaving is announced to those who stay.
    close(reader).await;
    let gone = next_json(&mut writer).await;
    assert_eq!(
        (gone["type"].as_str(), gone["userId"].as_str()),
        (Some("user_disconnected"), Some("rita"))
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_side_posts_reach_every_socket_in_sequence() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut ann = connect(&server, &format!("/ws/channel/c3?{}", who("ann", "read"))).await;
    next_json(&mut ann).await;
    for (i, text) in ["first", "second", "third"].into_iter().enumerate() {
        let (status, body) = post(&server, "c3", &who("sys", "write"), text).await;
        assert_eq!(status, 200);
        assert_eq!(body, json!({"success": true, "sequence": i + 1}));
    }
    for (i, text) in ["first", "second", "third"].into_iter().enumerate() {
        let m = next_json(&mut ann).await;
        assert_eq!(
            (
                m["sequence"].as_u64(),
                m["content"].as_str(),
                m["userId"].as_str()
            ),
            (Some(i as u64 + 1), Some(text), Some("sys"))
        );
    }
    let page: Value = client()
        .get(server.url(&format!(
            "/channel/c3/messages?after=1&limit=1&{}",
            who("ann", "read")
        )))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(contents(&page["messages"]), ["second"]);
    assert_eq!(
        (page["lastSequence"].as_u64(), page["hasMore"].as_bool()),
        (Some(3), Some(true))
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_reconnecting_after_a_restart_syncs_exactly_what_it_missed() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let path = format!("/ws/channel/c4?{}", who("ann", "read,write"));
    let mut ann = connect(&server, &path).await;
    next_json(&mut ann).await;
    // The client remembers the last sequence it saw.
    let mut last_seen = 0;
    for text in ["a", "b", "c"] {
        say(&mut ann, &json!({"type": "message", "content": text})).await;
        let m = next_json(&mut ann).await;
        assert_eq!(m["content"], text);
        last_seen = m["sequence"].as_u64().unwrap();
    }
    assert_eq!(last_seen, 3);
    server.stop().await;
    drop(ann);

    // While ann is away, a restarted server takes more messages.
    let server = start(dir.path()).await;
    let mut missed = Vec::new();
    for text in ["d", "e", "f", "g"] {
        let (status, body) = post(&server, "c4", &who("bob", "read,write"), text).await;
        assert_eq!(status, 200, "{body}");
        missed.push(body["sequence"].as_u64().unwrap());
    }
    assert_eq!(
        missed,
        [4, 5, 6, 7],
        "sequences carry on across the restart"
    );
    server.stop().await;

    // Another restart, then ann reconnects and asks for what came after her last sequence.
    let server = start(dir.path()).await;
    let mut ann = connect(&server, &path).await;
    let initial = next_json(&mut ann).await;
    assert_eq!(initial["type"], "initial_state");
    assert_eq!(initial["lastSequence"], 7);
    say(&mut ann, &json!({"type": "sync", "after": last_seen})).await;
    let sync = next_json(&mut ann).await;
    assert_eq!(sync["type"], "sync");
    assert_eq!(sequences(&sync["messages"]), [4, 5, 6, 7]);
    assert_eq!(contents(&sync["messages"]), ["d", "e", "f", "g"]);
    assert_eq!(
        (sync["lastSequence"].as_u64(), sync["hasMore"].as_bool()),
        (Some(7), Some(false))
    );
    // New messages carry on from there.
    say(&mut ann, &json!({"type": "message", "content": "back"})).await;
    assert_eq!(next_json(&mut ann).await["sequence"], 8);
    server.stop().await;
}

// ---- The seeds' own clients against the demo app (`rookery serve` without --config) ----

use common::ChildServer;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// How a connection of a seed client ended, as a browser reports it to `onclose`.
#[derive(Debug, PartialEq)]
enum Closed {
    /// The server sent a close frame: `wasClean == true`.
    Clean,
    /// The connection dropped without one: `wasClean == false` (code 1006).
    Unclean,
}

/// Reads frames until a text frame (`Ok`) or the end of the connection (`Err`).
async fn next_frame(ws: &mut Ws) -> Result<Value, Closed> {
    loop {
        match tokio::time::timeout(PATIENCE, ws.next())
            .await
            .expect("a frame in time")
        {
            Some(Ok(Message::Text(t))) => return Ok(serde_json::from_str(&t).unwrap()),
            Some(Ok(Message::Close(_))) => return Err(Closed::Clean),
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return Err(Closed::Unclean),
        }
    }
}

/// Seed 004 §4 `WaddleWebSocket`, ported: queues while offline, flushes and asks
/// `sync {afterMessageId}` on open, records `data.message.id` of every `message` frame and
/// reconnects (with exponential backoff) only when the close was not clean.
struct Seed004Client {
    /// The server's address: a restarted test server listens on a new port.
    base: String,
    path: String,
    ws: Option<Ws>,
    reconnect_attempts: u32,
    message_queue: Vec<Value>,
    last_message_id: Option<String>,
    /// Every frame `emit`ted, in order.
    events: Vec<Value>,
    /// The delay `scheduleReconnect` chose, if it was called (the test reconnects at once).
    scheduled: Option<u64>,
}

impl Seed004Client {
    fn new(base: String, channel: &str, query: &str) -> Self {
        Self {
            base,
            path: format!("/channel/{channel}/websocket?{query}"),
            ws: None,
            reconnect_attempts: 0,
            message_queue: Vec::new(),
            last_message_id: None,
            events: Vec::new(),
            scheduled: None,
        }
    }

    async fn connect(&mut self) {
        let url = format!("ws://{}{}", self.base, self.path);
        let (mut ws, _) = tokio::time::timeout(PATIENCE, tokio_tungstenite::connect_async(url))
            .await
            .expect("connects in time")
            .expect("upgrade accepted");
        // onopen
        self.reconnect_attempts = 0;
        for data in self.message_queue.drain(..) {
            say(&mut ws, &data).await;
        }
        if let Some(id) = &self.last_message_id {
            say(&mut ws, &json!({"type": "sync", "afterMessageId": id})).await;
        }
        self.ws = Some(ws);
    }

    async fn send(&mut self, data: Value) {
        match &mut self.ws {
            Some(ws) => say(ws, &data).await,
            None => self.message_queue.push(data),
        }
    }

    /// Handles the next frame (`onmessage`); at the end of the connection runs `onclose`.
    async fn pump(&mut self) -> Result<Value, Closed> {
        let ws = self.ws.as_mut().expect("connected");
        match next_frame(ws).await {
            Ok(data) => {
                if data["type"] == "message" {
                    // The seed reads `data.message.id`: a flat frame would throw here.
                    let id = data["message"]["id"].as_str().expect("data.message.id");
                    self.last_message_id = Some(id.to_string());
                }
                self.events.push(data.clone());
                Ok(data)
            }
            Err(closed) => {
                self.ws = None;
                if closed == Closed::Unclean {
                    // scheduleReconnect
                    self.scheduled = Some((1000 * 2u64.pow(self.reconnect_attempts)).min(30_000));
                    self.reconnect_attempts += 1;
                }
                Err(closed)
            }
        }
    }

    /// Pumps until a frame of `kind`.
    async fn until(&mut self, kind: &str) -> Value {
        loop {
            let data = self.pump().await.expect("still connected");
            if data["type"] == kind {
                return data;
            }
        }
    }
}

fn is_uuid(id: &str) -> bool {
    id.len() == 36
        && id.char_indices().all(|(i, c)| {
            matches!(i, 8 | 13 | 18 | 23) == (c == '-') && (c == '-' || c.is_ascii_hexdigit())
        })
}

async fn post_to(base: &str, channel: &str, query: &str, content: &str) -> u64 {
    let r = client()
        .post(format!("http://{base}/channel/{channel}/message?{query}"))
        .json(&json!({ "content": content }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json::<Value>().await.unwrap()["sequence"]
        .as_u64()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seed_004_client_reconnects_after_a_restart_and_replays_exactly_what_it_missed() {
    let dir = tempfile::tempdir().unwrap();
    let server = ChildServer::start(dir.path(), &[]);
    let mut ann = Seed004Client::new(
        server.addr.to_string(),
        "general",
        &who("ann", "read,write"),
    );
    ann.connect().await;
    let initial = ann.until("initial_state").await;
    let online = &initial["onlineUsers"];
    assert_eq!(online[0]["userId"], "ann");
    assert!(online[0]["joinedAt"].as_i64().unwrap() > 0, "{initial}");

    // Typing (seed 004's fields and seed 000's `users`) and seed 004's presence reach ann.
    let mut bob = tokio_tungstenite::connect_async(format!(
        "ws://{}/ws/channel/general?{}",
        server.addr,
        who("bob", "read,write")
    ))
    .await
    .unwrap()
    .0;
    next_of(&mut bob, "initial_state").await;
    say(&mut bob, &json!({"type": "typing", "isTyping": true})).await;
    let typing = ann.until("typing").await;
    assert_eq!(
        (
            &typing["userId"],
            &typing["username"],
            &typing["isTyping"],
            &typing["users"]
        ),
        (
            &json!("bob"),
            &json!("User bob"),
            &json!(true),
            &json!(["bob"])
        )
    );
    say(&mut bob, &json!({"type": "presence", "status": "away"})).await;
    assert_eq!(ann.until("presence").await["status"], "away");
    drop(bob);

    ann.send(json!({"type": "message", "content": "one", "threadId": "t1"}))
        .await;
    let one = ann.until("message").await;
    let id = one["message"]["id"].as_str().unwrap();
    assert!(is_uuid(id), "{id}");
    assert_eq!(
        one["message"],
        json!({"id": id, "sequence": 1, "channelId": "general", "userId": "ann",
               "username": "User ann", "content": "one", "timestamp": one["timestamp"],
               "threadId": "t1"})
    );
    // Seed 000's envelope: `type`, `sequence` and the message's fields, flat.
    assert_eq!(
        (one["sequence"].as_u64(), one["id"].as_str()),
        (Some(1), Some(id))
    );

    // First a graceful restart (SIGTERM), then a crash (SIGKILL): each time the client must see
    // an unclean close, reconnect, and get exactly the messages stored while it was away.
    // Every message's content, by sequence - 1.
    let mut stored: Vec<String> = vec!["one".into()];
    let mut server = Some(server);
    for (round, graceful) in [(0, true), (1, false)] {
        // The sequence of the last `message` frame the client read: where its last id points.
        let last_seen = ann
            .events
            .iter()
            .rev()
            .find(|e| e["type"] == "message")
            .and_then(|e| e["sequence"].as_u64())
            .unwrap();
        let old = server.take().unwrap();
        if graceful {
            old.terminate();
        } else {
            old.kill9();
        }
        let ended = loop {
            if let Err(closed) = ann.pump().await {
                break closed;
            }
        };
        assert_eq!(
            ended,
            Closed::Unclean,
            "round {round}: a browser would not reconnect"
        );
        assert_eq!(ann.scheduled, Some(1000));
        // Queued while offline, sent on open before the sync.
        let queued = format!("queued {round}");
        ann.send(json!({"type": "message", "content": queued}))
            .await;

        let new = ChildServer::start(dir.path(), &[]);
        for text in [format!("missed {round}a"), format!("missed {round}b")] {
            assert_eq!(
                post_to(
                    &new.addr.to_string(),
                    "general",
                    &who("bob", "write"),
                    &text
                )
                .await,
                stored.len() as u64 + 1
            );
            stored.push(text);
        }
        ann.base = new.addr.to_string();
        ann.events.clear();
        ann.connect().await;
        ann.until("sync").await;
        let opened_at = ann.events[0]["lastSequence"].as_u64().unwrap();
        assert_eq!(opened_at, stored.len() as u64);
        let (live, replayed): (Vec<&Value>, Vec<&Value>) = ann
            .events
            .iter()
            .filter(|e| e["type"] == "message")
            .partition(|e| e["replay"] != true);
        // The queued message is stored and sent live before the sync is read, so it is not
        // replayed; the replay holds exactly what was stored after the client's last id and
        // before it connected. (In round 1 that includes round 0's queued message: the seed's
        // client read it live before the replay, so its last id points at the replay's end.)
        let live: Vec<&str> = live
            .iter()
            .map(|e| e["content"].as_str().unwrap())
            .collect();
        assert_eq!(live, [queued.as_str()], "round {round}");
        stored.push(queued);
        assert_eq!(
            ann.events[1]["sequence"].as_u64(),
            Some(opened_at + 1),
            "round {round}"
        );
        let replayed: Vec<&str> = replayed
            .iter()
            .map(|e| e["content"].as_str().unwrap())
            .collect();
        let missed: Vec<&str> = stored[last_seen as usize..opened_at as usize]
            .iter()
            .map(String::as_str)
            .collect();
        assert_eq!(replayed, missed, "round {round}");
        let sync = ann.events.last().unwrap();
        assert_eq!(sync["replayed"], missed.len());
        ann.scheduled = None;
        server = Some(new);
    }
    let expected_last = stored.len() as u64;
    let server = server.unwrap();
    ann.send(json!({"type": "sync", "afterMessageId": "not-an-id"}))
        .await;
    assert_eq!(ann.until("error").await["type"], "error");
    ann.send(json!({"type": "sync", "after": expected_last - 1}))
        .await;
    let by_seq = ann.until("sync").await;
    assert_eq!(by_seq["messages"].as_array().unwrap().len(), 1);
    assert_eq!(by_seq["hasMore"], false);
    server.terminate();
}

/// Seed 000's `WaddleWebSocket`, ported: the token goes as the WebSocket subprotocol
/// (`new WebSocket(url, [token])`), every close reconnects (at most 5 attempts).
struct Seed000Client {
    base: String,
    waddle_id: String,
    query: String,
    token: String,
    ws: Option<Ws>,
    reconnect_attempts: u32,
    received: Vec<Value>,
}

impl Seed000Client {
    async fn connect(&mut self) {
        let url = format!(
            "ws://{}/ws/waddle/{}?{}",
            self.base, self.waddle_id, self.query
        );
        let mut req = url.into_client_request().unwrap();
        req.headers_mut()
            .insert("sec-websocket-protocol", self.token.parse().unwrap());
        // Like a browser, the client fails the handshake unless its protocol is echoed.
        let (ws, resp) = tokio::time::timeout(PATIENCE, tokio_tungstenite::connect_async(req))
            .await
            .expect("connects in time")
            .expect("handshake completes with the offered subprotocol");
        assert_eq!(
            resp.headers()["sec-websocket-protocol"],
            self.token.as_str()
        );
        self.reconnect_attempts = 0;
        self.ws = Some(ws);
    }

    async fn send(&mut self, kind: &str, data: Value) {
        let mut frame = data;
        frame["type"] = json!(kind);
        if let Some(ws) = &mut self.ws {
            say(ws, &frame).await;
        }
    }

    async fn update_presence(&mut self, status: &str) {
        self.send("presence_update", json!({ "status": status }))
            .await;
    }

    async fn send_typing_indicator(&mut self, channel_id: &str, is_typing: bool) {
        self.send(
            "typing",
            json!({ "channelId": channel_id, "isTyping": is_typing }),
        )
        .await;
    }

    /// The next message (`handleMessage`); `None` when the connection closed, after which the
    /// seed reconnects whatever the close was (the caller does, at the returned attempt).
    async fn next(&mut self) -> Option<Value> {
        match next_frame(self.ws.as_mut()?).await {
            Ok(m) => {
                self.received.push(m.clone());
                Some(m)
            }
            Err(_) => {
                self.ws = None;
                assert!(
                    self.reconnect_attempts < 5,
                    "Max reconnection attempts reached"
                );
                self.reconnect_attempts += 1;
                None
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seed_000_client_works_against_the_demo_app() {
    let dir = tempfile::tempdir().unwrap();
    let server = ChildServer::start(dir.path(), &[]);
    let client_of = |user: &str, base: String| Seed000Client {
        base,
        waddle_id: "w1".into(),
        query: who(user, "read,write"),
        token: format!("token-of-{user}"),
        ws: None,
        reconnect_attempts: 0,
        received: Vec::new(),
    };
    let mut ann = client_of("ann", server.addr.to_string());
    ann.connect().await;
    assert_eq!(ann.next().await.unwrap()["type"], "presence_state");
    let mut bob = client_of("bob", server.addr.to_string());
    bob.connect().await;
    assert_eq!(bob.next().await.unwrap()["type"], "presence_state");
    assert_eq!(ann.next().await.unwrap()["userId"], "bob");

    bob.update_presence("away").await;
    let update = ann.next().await.unwrap();
    assert_eq!(
        (update["userId"].as_str(), update["status"].as_str()),
        (Some("bob"), Some("away"))
    );
    // Bob's own update is not sent back: the next thing he gets is ann's typing.
    ann.send_typing_indicator("general", true).await;
    let typing = bob.next().await.unwrap();
    assert_eq!(
        typing,
        json!({"type": "typing", "channelId": "general", "userId": "ann",
               "username": "User ann", "isTyping": true})
    );

    // `/broadcast` of the Waddle reaches every socket; it needs admin.
    let url = format!("http://{}/ws/waddle/w1/broadcast?", server.addr);
    let notice = json!({"type": "announcement", "text": "hello"});
    let r = client()
        .post(format!("{url}{}", who("ops", "read")))
        .json(&notice)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = client()
        .post(format!("{url}{}", who("ops", "admin")))
        .json(&notice)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(ann.next().await.unwrap(), notice);
    assert_eq!(bob.next().await.unwrap(), notice);

    // After a restart the seed's client reconnects (it does on any close) and is back online.
    server.terminate();
    assert_eq!(ann.next().await, None);
    let server = ChildServer::start(dir.path(), &[]);
    ann.base = server.addr.to_string();
    ann.connect().await;
    let state = ann.next().await.unwrap();
    assert_eq!(state["type"], "presence_state");
    assert_eq!(state["users"][0]["userId"], "ann");
    assert_eq!(state["users"][0]["status"], "online");
    server.terminate();
}

/// The next `participants` frame on `ws`.
async fn participants(ws: &mut Ws) -> Value {
    next_of(ws, "participants").await
}

fn participant_ids(frame: &Value) -> Vec<&str> {
    frame["participants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["userId"].as_str().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voice_channel_keeps_its_session_across_a_crash_of_the_demo_app() {
    let dir = tempfile::tempdir().unwrap();
    let server = ChildServer::start(dir.path(), &[]);
    let open = |base: String, user: &str| {
        let url = format!("ws://{base}/ws/voice/lobby?{}", who(user, "read"));
        async move {
            tokio::time::timeout(PATIENCE, tokio_tungstenite::connect_async(url))
                .await
                .expect("connects in time")
                .expect("upgrade accepted")
                .0
        }
    };
    let mut ann = open(server.addr.to_string(), "ann").await;
    let mut bob = open(server.addr.to_string(), "bob").await;
    assert_eq!(participants(&mut ann).await["sessionId"], Value::Null);
    participants(&mut bob).await;
    say(&mut ann, &json!({"type": "join"})).await;
    let joined = participants(&mut bob).await;
    let session_id = joined["sessionId"].as_str().unwrap().to_string();
    assert!(session_id.ends_with("-lobby"), "{session_id}");
    assert_eq!(
        session_id.len(),
        64 + "-lobby".len(),
        "<object id>-<channel id>"
    );
    assert_eq!(participant_ids(&joined), ["ann"]);
    participants(&mut ann).await;
    say(&mut ann, &json!({"type": "mute"})).await;
    assert_eq!(
        participants(&mut bob).await["participants"][0]["audioEnabled"],
        false
    );

    // A crash: ann's record and the session survive; she comes back as she was.
    server.kill9();
    drop((ann, bob));
    let server = ChildServer::start(dir.path(), &[]);
    let mut bob = open(server.addr.to_string(), "bob").await;
    let seen = participants(&mut bob).await;
    assert_eq!(
        seen["sessionId"],
        session_id.as_str(),
        "the session is stored"
    );
    assert_eq!(
        participant_ids(&seen),
        Vec::<&str>::new(),
        "ann is not connected"
    );
    let mut ann = open(server.addr.to_string(), "ann").await;
    let back = participants(&mut bob).await;
    assert_eq!(participant_ids(&back), ["ann"]);
    assert_eq!(back["participants"][0]["audioEnabled"], false);
    assert_eq!(back["sessionId"], session_id.as_str());
    participants(&mut ann).await;

    // The last one leaving ends the session.
    say(&mut ann, &json!({"type": "leave"})).await;
    let ended = next_of(&mut bob, "session_ended").await;
    assert_eq!(ended["sessionId"], session_id.as_str());
    let list: Value = client()
        .get(server.url("/ws/voice/lobby/participants"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (&list["sessionId"], &list["participants"]),
        (&Value::Null, &json!([]))
    );
    server.terminate();
}

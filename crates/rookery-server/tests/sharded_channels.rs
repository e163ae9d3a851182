//! Sharded channels over real connections: sockets spread over `<channel>-shard-<i>` objects by
//! a stable hash, one sequencer, and every member sees every message in the same order.

mod common;

use common::ws::{Ws, connect, next_json};
use common::{TestServer, client, wait_until};
use futures_util::SinkExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

const CONFIG: &str = r#"
[auth]
query_identity = true

[durable_objects]
bindings = [
  { name = "CHANNEL", class_name = "Channel" },
  { name = "CHANNEL_SHARD", class_name = "ChannelShard" },
]

[[migrations]]
tag = "v1"
new_sqlite_classes = ["Channel", "ChannelShard"]

[[routes]]
path = "/ws/channel/:id"
binding = "CHANNEL"
name_from = "id"

[[routes]]
path = "/channel/:id"
binding = "CHANNEL"
name_from = "id"
"#;

const SHARDS: u32 = 4;
const USERS: usize = 12;
const EACH: usize = 5;

fn who(user: &str) -> String {
    format!("user={user}&name=User%20{user}&permissions=read,write")
}

async fn say(ws: &mut Ws, value: Value) {
    ws.send(Message::text(value.to_string())).await.unwrap();
}

async fn next_of(ws: &mut Ws, kind: &str) -> Value {
    loop {
        let m = next_json(ws).await;
        if m["type"] == kind {
            return m;
        }
    }
}

async fn set_shards(server: &TestServer, query: &str, body: Value) -> (u16, Value) {
    let r = client()
        .put(server.url(&format!("/channel/big/shards?{query}")))
        .json(&body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_on_different_shards_see_one_order() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(CONFIG, dir.path()).await;

    // Only an admin shards a channel, within bounds.
    let (status, _) = set_shards(&server, &who("ann"), json!({"count": SHARDS})).await;
    assert_eq!(status, 403);
    let admin = "user=ops&permissions=admin";
    assert_eq!(set_shards(&server, admin, json!({"count": 0})).await.0, 400);
    let (status, body) = set_shards(&server, admin, json!({"count": SHARDS})).await;
    assert_eq!(
        (status, body),
        (200, json!({"count": SHARDS, "span": SHARDS}))
    );

    // A message before anyone connects: part of everyone's initial state.
    let r = client()
        .post(server.url(&format!("/channel/big/message?{}", who("bot"))))
        .json(&json!({"content": "welcome"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let users: Vec<String> = (0..USERS).map(|i| format!("u{i}")).collect();
    let mut sockets = Vec::new();
    for user in &users {
        let mut ws = connect(&server, &format!("/ws/channel/big?{}", who(user))).await;
        let initial = next_of(&mut ws, "initial_state").await;
        assert_eq!(initial["lastSequence"], 1);
        assert_eq!(initial["messages"][0]["content"], "welcome");
        sockets.push(ws);
    }

    // Each socket is on its user's shard, none on the sequencer.
    let shards = server.runtime.namespace("CHANNEL_SHARD").unwrap();
    let mut per_shard = vec![0usize; SHARDS as usize];
    for user in &users {
        per_shard[rookery_objects::shard_index(user, SHARDS) as usize] += 1;
    }
    assert!(
        per_shard.iter().filter(|n| **n > 0).count() >= 2,
        "the hash spreads: {per_shard:?}"
    );
    for (i, expected) in per_shard.iter().enumerate() {
        let stub = shards.get_by_name(&rookery_objects::shard_name("big", i as u32));
        assert_eq!(stub.websocket_count(), *expected, "shard {i}");
    }
    let sequencer = server
        .runtime
        .namespace("CHANNEL")
        .unwrap()
        .get_by_name("big");
    assert_eq!(sequencer.websocket_count(), 0);

    // Everyone posts at once.
    for (ws, user) in sockets.iter_mut().zip(&users) {
        for k in 0..EACH {
            say(
                ws,
                json!({"type": "message", "content": format!("{user}:{k}")}),
            )
            .await;
        }
    }
    let total = USERS * EACH;
    let mut orders = Vec::new();
    for ws in &mut sockets {
        let mut seen = Vec::new();
        while seen.len() < total {
            let m = next_json(ws).await;
            if m["type"] == "message" {
                assert_eq!(m["message"]["id"], m["id"], "both seeds' shapes");
                seen.push((
                    m["sequence"].as_u64().unwrap(),
                    m["content"].as_str().unwrap().to_string(),
                ));
            }
        }
        orders.push(seen);
    }
    let expected: Vec<u64> = (2..2 + total as u64).collect();
    for (seen, user) in orders.iter().zip(&users) {
        let sequences: Vec<u64> = seen.iter().map(|(s, _)| *s).collect();
        assert_eq!(sequences, expected, "{user}: in sequence, no gaps");
        assert_eq!(seen, &orders[0], "{user}: the same order as u0");
    }
    // Each user's own messages are numbered in the order they were sent.
    for user in &users {
        let own: Vec<&str> = orders[0]
            .iter()
            .filter(|(_, c)| c.starts_with(&format!("{user}:")))
            .map(|(_, c)| c.as_str())
            .collect();
        let sent: Vec<String> = (0..EACH).map(|k| format!("{user}:{k}")).collect();
        assert_eq!(own, sent);
    }

    // Typing crosses shards and skips the typist; sync answers on a shard.
    say(&mut sockets[0], json!({"type": "typing", "isTyping": true})).await;
    for ws in &mut sockets[1..] {
        let typing = next_of(ws, "typing").await;
        assert_eq!(
            (&typing["userId"], &typing["isTyping"]),
            (&json!("u0"), &json!(true))
        );
    }
    say(
        &mut sockets[0],
        json!({"type": "sync", "after": total as u64}),
    )
    .await;
    let sync = next_json(&mut sockets[0]).await;
    assert_eq!(sync["type"], "sync", "u0 got no typing of her own: {sync}");
    assert_eq!(sync["messages"].as_array().unwrap().len(), 1);
    assert_eq!(sync["lastSequence"], 1 + total as u64);

    // Seed 004's sync by id, on a shard: messages after that id stored before this socket
    // opened (none: all came live), and an unknown id is an error.
    let page: Value = client()
        .get(server.url(&format!(
            "/channel/big/messages?after=0&limit=1&{}",
            who("u1")
        )))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let welcome_id = page["messages"][0]["id"].as_str().unwrap().to_string();
    say(
        &mut sockets[1],
        json!({"type": "sync", "afterMessageId": welcome_id}),
    )
    .await;
    let replay = next_of(&mut sockets[1], "sync").await;
    assert_eq!(
        (&replay["replayed"], &replay["lastSequence"]),
        (&json!(0), &json!(1 + total as u64))
    );
    say(
        &mut sockets[1],
        json!({"type": "sync", "afterMessageId": "nope"}),
    )
    .await;
    assert_eq!(next_of(&mut sockets[1], "error").await["type"], "error");

    // Leaving is announced across shards.
    let gone = sockets.remove(0);
    drop(gone);
    let left = next_of(&mut sockets[0], "user_disconnected").await;
    assert_eq!(left["userId"], "u0");
    wait_until("u0's socket is gone", || {
        shards
            .get_by_name(&rookery_objects::shard_name(
                "big",
                rookery_objects::shard_index("u0", SHARDS),
            ))
            .websocket_count()
            == per_shard[rookery_objects::shard_index("u0", SHARDS) as usize] - 1
    })
    .await;
    server.stop().await;
}

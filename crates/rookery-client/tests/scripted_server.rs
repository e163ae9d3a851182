//! The client against a scripted server on loopback, frame by frame: what it sends on a
//! reconnect (`sync` by the last id, then presence, then the offline queue), how it holds live
//! messages back until the replay ends, how it drops duplicates, and that a 401 stops it.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rookery_client::{Client, ClientConfig, ClientError, Event};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

const PATIENCE: Duration = Duration::from_secs(20);

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

fn msg(sequence: u64, content: &str) -> Value {
    json!({"sequence": sequence, "id": format!("id-{sequence}"), "channelId": "c", "userId": "u",
           "username": "U", "content": content, "timestamp": sequence, "threadId": null})
}

/// A `message` frame in the server's shape (flat and nested).
fn frame(message: &Value, replay: bool) -> Value {
    let mut f = message.clone();
    f["message"] = message.clone();
    f["type"] = json!("message");
    if replay {
        f["replay"] = json!(true);
    }
    f
}

/// A scripted server's listener, and a client of channel `c` on it that retries quickly.
async fn scripted_client() -> (TcpListener, Client) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let config = ClientConfig::channel(&format!("ws://{addr}"), "c")
        .backoff(Duration::from_millis(10), Duration::from_millis(50));
    (listener, Client::connect(config).expect("client"))
}

async fn accept(listener: &TcpListener) -> Ws {
    let (tcp, _) = tokio::time::timeout(PATIENCE, listener.accept())
        .await
        .expect("the client connects in time")
        .expect("accept");
    tokio_tungstenite::accept_async(tcp)
        .await
        .expect("handshake")
}

async fn say(ws: &mut Ws, value: Value) {
    ws.send(Message::text(value.to_string()))
        .await
        .expect("send");
}

/// The next text frame the client sent, as JSON.
async fn heard(ws: &mut Ws) -> Value {
    loop {
        match tokio::time::timeout(PATIENCE, ws.next())
            .await
            .expect("a frame in time")
        {
            Some(Ok(Message::Text(t))) => return serde_json::from_str(t.as_str()).expect("JSON"),
            Some(Ok(_)) => continue,
            other => panic!("expected a frame, got {other:?}"),
        }
    }
}

async fn event(client: &mut Client) -> Event {
    tokio::time::timeout(PATIENCE, client.next_event())
        .await
        .expect("an event in time")
        .expect("the client runs")
}

/// The next message event's content, skipping other events.
async fn next_message(client: &mut Client) -> (u64, String) {
    loop {
        if let Event::Message(m) = event(client).await {
            return (m.sequence, m.content);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_syncs_by_id_holds_live_messages_and_drops_duplicates() {
    let (listener, mut client) = scripted_client().await;

    // First connection: initial_state's messages are where the client starts.
    let mut ws = accept(&listener).await;
    say(&mut ws, json!({"type": "initial_state", "lastSequence": 1, "messages": [msg(1, "one")],
                        "typing": [], "onlineUsers": [{"userId": "u", "username": "U", "joinedAt": 1}]}))
    .await;
    assert_eq!(
        heard(&mut ws).await,
        json!({"type": "presence", "status": "online"})
    );
    assert!(matches!(
        event(&mut client).await,
        Event::Connected {
            last_sequence: 1,
            ..
        }
    ));
    assert_eq!(next_message(&mut client).await, (1, "one".into()));
    client.set_typing(true).expect("typing");
    assert_eq!(
        heard(&mut ws).await,
        json!({"type": "typing", "isTyping": true})
    );

    // The connection drops without a close frame.
    drop(ws);
    loop {
        if let Event::Disconnected { retry_in, .. } = event(&mut client).await {
            assert!(retry_in <= Duration::from_millis(50));
            break;
        }
    }
    client.send_message("queued").expect("queued");
    assert_eq!(client.queued(), 1);

    // Second connection: two messages were missed.
    let mut ws = accept(&listener).await;
    say(
        &mut ws,
        json!({"type": "initial_state", "lastSequence": 3,
                        "messages": [msg(1, "one"), msg(2, "two"), msg(3, "three")], "typing": []}),
    )
    .await;
    assert_eq!(
        heard(&mut ws).await,
        json!({"type": "sync", "afterMessageId": "id-1"})
    );
    assert_eq!(
        heard(&mut ws).await,
        json!({"type": "presence", "status": "online"})
    );
    assert_eq!(
        heard(&mut ws).await,
        json!({"type": "message", "content": "queued"})
    );
    assert_eq!(client.queued(), 0);
    // The queued message comes back live before the replay; the replay repeats one message.
    say(&mut ws, frame(&msg(4, "queued"), false)).await;
    say(&mut ws, frame(&msg(2, "two"), true)).await;
    say(&mut ws, frame(&msg(3, "three"), true)).await;
    say(&mut ws, frame(&msg(3, "three"), true)).await;
    say(
        &mut ws,
        json!({"type": "sync", "replayed": 3, "lastSequence": 3, "hasMore": false}),
    )
    .await;
    say(&mut ws, frame(&msg(4, "queued"), false)).await;
    say(&mut ws, frame(&msg(5, "five"), false)).await;
    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(next_message(&mut client).await);
    }
    assert_eq!(
        got,
        [
            (2, "two".into()),
            (3, "three".into()),
            (4, "queued".into()),
            (5, "five".into())
        ]
    );
    // Nothing more is pending: a last frame is the next message.
    say(&mut ws, frame(&msg(6, "six"), false)).await;
    assert_eq!(next_message(&mut client).await, (6, "six".into()));
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_handshake_stops_the_client() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let mut client =
        Client::connect(ClientConfig::channel(&format!("ws://{addr}"), "c")).expect("client");
    let (mut tcp, _) = tokio::time::timeout(PATIENCE, listener.accept())
        .await
        .expect("connects")
        .expect("accept");
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tcp.read(&mut buf).await.expect("read");
        assert!(n > 0, "the request head");
        head.extend_from_slice(&buf[..n]);
    }
    tcp.write_all(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n")
        .await
        .expect("write");
    assert_eq!(
        event(&mut client).await,
        Event::Stopped(ClientError::Refused(401))
    );
    assert!(
        tokio::time::timeout(PATIENCE, client.next_event())
            .await
            .expect("ends")
            .is_none()
    );
    assert_eq!(client.send_message("x"), Err(ClientError::Closed));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_before_any_message_syncs_from_sequence_zero() {
    let (listener, mut client) = scripted_client().await;
    let mut ws = accept(&listener).await;
    say(
        &mut ws,
        json!({"type": "initial_state", "lastSequence": 0, "messages": [], "typing": []}),
    )
    .await;
    assert_eq!(heard(&mut ws).await["type"], "presence");
    drop(ws);
    // More than initial_state's 50 messages arrive meanwhile: only a sync finds the first.
    let mut ws = accept(&listener).await;
    say(
        &mut ws,
        json!({"type": "initial_state", "lastSequence": 60,
                        "messages": [msg(60, "sixty")], "typing": []}),
    )
    .await;
    assert_eq!(heard(&mut ws).await, json!({"type": "sync", "after": 0}));
    say(
        &mut ws,
        json!({"type": "sync", "messages": [msg(1, "one")], "lastSequence": 60,
                        "hasMore": true}),
    )
    .await;
    loop {
        let frame = heard(&mut ws).await;
        if frame["type"] == "sync" {
            assert_eq!(frame, json!({"type": "sync", "afterMessageId": "id-1"}));
            break;
        }
    }
    say(&mut ws, frame(&msg(60, "sixty"), true)).await;
    say(
        &mut ws,
        json!({"type": "sync", "replayed": 1, "lastSequence": 60, "hasMore": false}),
    )
    .await;
    assert_eq!(next_message(&mut client).await, (1, "one".into()));
    assert_eq!(next_message(&mut client).await, (60, "sixty".into()));
    client.close().await;
}

//! WebSockets over real connections: the chat room, hibernation, limits and bad input.

mod common;

use std::sync::atomic::Ordering;

use common::ws::{Ws, connect, next_json, next_text};
use common::{PATIENCE, PROBE_CONFIG, TestServer, client, gate, wait_until};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// The close frame the server sends next (data before it is skipped).
async fn close_of(ws: &mut Ws) -> Option<CloseFrame> {
    loop {
        match tokio::time::timeout(PATIENCE, ws.next())
            .await
            .expect("the close in time")
        {
            Some(Ok(Message::Close(frame))) => return frame,
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return None,
        }
    }
}

async fn say(ws: &mut Ws, text: &str) {
    ws.send(Message::text(text)).await.unwrap();
}

/// Reads what the server sends up to its close frame: the number of data messages before it,
/// and the frame.
async fn read_to_close(ws: &mut Ws) -> (usize, Option<CloseFrame>) {
    let mut messages = 0;
    loop {
        match tokio::time::timeout(PATIENCE, ws.next())
            .await
            .expect("the close in time")
        {
            Some(Ok(Message::Close(frame))) => return (messages, frame),
            Some(Ok(Message::Text(_) | Message::Binary(_))) => messages += 1,
            Some(Ok(_)) => continue,
            Some(Err(e)) => panic!("the connection failed before its close frame: {e}"),
            None => panic!("the connection ended without a close frame"),
        }
    }
}

/// Whether the sockets tagged `tag` still take messages, as their object sees them; asked
/// through `driver`, a socket of the same object that reads its answers.
async fn open_states(driver: &mut Ws, tag: &str) -> Vec<bool> {
    say(driver, &format!("status {tag}")).await;
    let status = next_json(driver).await;
    serde_json::from_value(status["open"].clone()).unwrap()
}

/// Waits until the server has given up on the one socket tagged `tag` (its queue overflowed
/// and only the close frame is left for it), asking through `driver`.
async fn wait_until_given_up(driver: &mut Ws, tag: &str) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let open = open_states(driver, tag).await;
        assert_eq!(open.len(), 1, "one socket tagged {tag}");
        if !open[0] {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the server never gave up on the socket that does not read"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chat_room_follows_the_seed_protocol() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(PROBE_CONFIG, dir.path()).await;
    let mut ann = connect(&server, "/room/lobby/websocket?name=Ann").await;
    assert_eq!(
        next_json(&mut ann).await,
        json!({"type": "history", "messages": []})
    );
    let join = next_json(&mut ann).await;
    assert_eq!(
        (join["type"].as_str(), join["name"].as_str()),
        (Some("join"), Some("Ann"))
    );

    say(&mut ann, r#"{"type":"message","text":"hello"}"#).await;
    let m1 = next_json(&mut ann).await;
    assert_eq!(
        (
            m1["type"].as_str(),
            m1["name"].as_str(),
            m1["text"].as_str()
        ),
        (Some("message"), Some("Ann"), Some("hello"))
    );
    let id1: i64 = m1["id"]
        .as_str()
        .unwrap()
        .strip_prefix("message:")
        .unwrap()
        .parse()
        .unwrap();

    let mut bob = connect(&server, "/room/lobby/websocket").await;
    let history = next_json(&mut bob).await;
    assert_eq!(history["type"], "history");
    assert_eq!(history["messages"].as_array().unwrap().len(), 1);
    assert_eq!(history["messages"][0]["text"], "hello");
    assert_eq!(
        next_json(&mut bob).await["name"],
        "Anonymous",
        "bob sees his own join"
    );
    assert_eq!(
        next_json(&mut ann).await["type"],
        "join",
        "ann sees bob join"
    );

    // Two quick messages: ids strictly increase even within a millisecond.
    say(&mut bob, r#"{"type":"message","text":"one"}"#).await;
    say(&mut bob, r#"{"type":"message","text":"two"}"#).await;
    let mut ids = vec![id1];
    for ws in [&mut ann, &mut bob] {
        let (a, b) = (next_json(ws).await, next_json(ws).await);
        assert_eq!(
            (a["text"].as_str(), b["text"].as_str()),
            (Some("one"), Some("two"))
        );
        ids.push(a["id"].as_str().unwrap()[8..].parse().unwrap());
        ids.push(b["id"].as_str().unwrap()[8..].parse().unwrap());
    }
    assert!(ids[0] < ids[1] && ids[1] < ids[2], "{ids:?}");

    // Bad input gets an error reply, not a dropped connection.
    say(&mut bob, "{not json").await;
    assert_eq!(
        next_json(&mut bob).await,
        json!({"type": "error", "error": "Invalid JSON"})
    );
    say(&mut bob, r#"{"type":"dance"}"#).await;
    assert_eq!(next_json(&mut bob).await["type"], "error");

    // A clean close is answered by the server (not 1006) and the others see the leave.
    bob.close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    }))
    .await
    .unwrap();
    match close_of(&mut bob).await {
        Some(frame) => assert_eq!(frame.code, CloseCode::Normal),
        None => panic!("the server did not answer the close frame"),
    }
    let leave = next_json(&mut ann).await;
    assert_eq!(
        (leave["type"].as_str(), leave["name"].as_str()),
        (Some("leave"), Some("Anonymous"))
    );

    // An abrupt disconnect is seen as a leave too.
    let mut carl = connect(&server, "/room/lobby/websocket?name=Carl").await;
    next_json(&mut carl).await;
    assert_eq!(next_json(&mut ann).await["name"], "Carl");
    drop(carl);
    let leave = next_json(&mut ann).await;
    assert_eq!(
        (leave["type"].as_str(), leave["name"].as_str()),
        (Some("leave"), Some("Carl"))
    );

    let h: Value = client()
        .get(server.url("/room/lobby/history"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let texts: Vec<&str> = h
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["two", "one", "hello"], "newest first");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_clients_get_every_message_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(PROBE_CONFIG, dir.path()).await;
    const CLIENTS: usize = 1_000;
    const MESSAGES: usize = 100;
    let mut clients = Vec::with_capacity(CLIENTS);
    for i in 0..CLIENTS {
        clients.push(connect(&server, &format!("/echo/big/?who=c{i}")).await);
    }
    wait_until("all are connected", || {
        server
            .runtime
            .namespace("ECHO")
            .unwrap()
            .get_by_name("big")
            .websocket_count()
            == CLIENTS
    })
    .await;
    let readers: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, mut ws)| {
            tokio::spawn(async move {
                for m in 0..MESSAGES {
                    let text = next_text(&mut ws).await;
                    assert_eq!(
                        text,
                        format!("echo:m{m}"),
                        "client {i} got message {m} in order"
                    );
                }
                ws
            })
        })
        .collect();
    let mut sender = connect(&server, "/echo/big/?who=sender").await;
    for m in 0..MESSAGES {
        say(&mut sender, &format!("m{m}")).await;
    }
    for r in readers {
        r.await.unwrap();
    }
    for m in 0..MESSAGES {
        assert_eq!(next_text(&mut sender).await, format!("echo:m{m}"));
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hibernated_sockets_stay_connected_and_wake_the_object() {
    let dir = tempfile::tempdir().unwrap();
    let config = PROBE_CONFIG.replace(
        "mailbox_capacity = 4",
        "mailbox_capacity = 4\nhibernation_idle_ms = 50",
    );
    let server = TestServer::start(&config, dir.path()).await;
    let mut a = connect(&server, "/echo/h/?tag=red&who=ann").await;
    let mut b = connect(&server, "/echo/h/?tag=blue&who=bob").await;
    let rt = server.runtime.clone();
    wait_until("the idle object hibernates", || {
        rt.stats().live_objects == 0
    })
    .await;
    let activations = rt.stats().activations;

    // An auto-response is answered without waking the object.
    say(&mut a, "ping").await;
    assert_eq!(next_text(&mut a).await, "pong");
    assert_eq!(rt.stats().activations, activations);
    assert_eq!(rt.stats().live_objects, 0);

    // A message wakes it; the new instance finds both sockets, their tags and attachments.
    say(&mut a, "hello").await;
    assert_eq!(next_text(&mut a).await, "echo:hello");
    assert_eq!(next_text(&mut b).await, "echo:hello");
    assert_eq!(rt.stats().activations, activations + 1);
    say(&mut b, "whoami").await;
    let who = next_json(&mut b).await;
    assert_eq!(who["attachment"], json!({"who": "bob"}));
    assert_eq!(who["tags"], json!(["blue"]));
    assert_eq!(who["count"], 2, "storage carried over hibernation");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_and_bad_input_close_sockets_with_the_right_codes() {
    let dir = tempfile::tempdir().unwrap();
    let config = PROBE_CONFIG.replace(
        "mailbox_capacity = 4",
        "mailbox_capacity = 64\nmax_sockets_per_object = 2\nmax_ws_message_bytes = 1024",
    );
    let server = TestServer::start(&config, dir.path()).await;
    let mut a = connect(&server, "/echo/lim/").await;
    let _b = connect(&server, "/echo/lim/").await;
    // The third is refused before the handshake.
    let url = format!("ws://{}/echo/lim/", server.addr);
    match tokio_tungstenite::connect_async(url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 503);
            let body = String::from_utf8(resp.body().clone().unwrap_or_default()).unwrap();
            assert!(body.contains("channel full"), "{body}");
        }
        other => panic!("expected a 503 refusal, got {other:?}"),
    }
    // Too big a message closes with 1009.
    say(&mut a, &"x".repeat(2048)).await;
    let frame = close_of(&mut a).await.expect("a close frame");
    assert_eq!(u16::from(frame.code), 1009);
    // Once the server has seen it go, there is room again.
    let stub = server.runtime.namespace("ECHO").unwrap().get_by_name("lim");
    wait_until("the closed socket left", || stub.websocket_count() == 1).await;
    let mut c = connect(&server, "/echo/lim/").await;
    // A failing handler's sends are discarded; the socket stays open.
    say(&mut c, "fail").await;
    say(&mut c, "after").await;
    assert_eq!(next_text(&mut c).await, "echo:after");
    // Not a WebSocket request at all.
    let r = client().get(server.url("/echo/lim/")).send().await.unwrap();
    assert_eq!(r.status(), 400);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_read_is_closed_not_buffered_forever() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(PROBE_CONFIG, dir.path()).await;
    let mut slow = connect(&server, "/echo/slow/?tag=slow").await;
    let mut driver = connect(&server, "/echo/slow/?tag=driver").await;
    // 16 384 messages (64 MiB) in one turn for a client that reads nothing: more than the
    // queue and the kernel buffers hold.
    const SENT: usize = 16_384;
    say(&mut slow, &format!("flood {SENT} 4096")).await;
    // The client reads nothing until the server has given up on it.
    wait_until_given_up(&mut driver, "slow").await;
    let (received, frame) = read_to_close(&mut slow).await;
    assert_eq!(frame.map(|f| u16::from(f.code)), Some(1008));
    assert!(
        received < SENT,
        "all {received} messages were buffered for a client that did not read"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_of_many_small_turns_is_closed_and_its_queue_stays_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let config = PROBE_CONFIG.replace("mailbox_capacity = 4", "mailbox_capacity = 64");
    let server = TestServer::start(&config, dir.path()).await;
    let mut slow = connect(&server, "/echo/trickle/?tag=slow").await;
    let mut driver = connect(&server, "/echo/trickle/?tag=driver").await;
    // Each turn sends one message of 16 KiB to the client that never reads. The queue takes
    // 8 MiB, the connection holds one batch taken from it, the kernel a few MiB: far fewer
    // than the 4 096 turns (64 MiB) allowed here.
    const BATCH: usize = 64;
    const MOST: usize = 4_096;
    let mut sent = 0;
    loop {
        for _ in 0..BATCH {
            say(&mut driver, "send slow 16384").await;
        }
        sent += BATCH;
        // Answered after the turns before it: their sends are queued or dropped by now.
        let open = open_states(&mut driver, "slow").await;
        if open == [false] {
            break;
        }
        assert_eq!(open, [true]);
        assert!(
            sent < MOST,
            "{sent} messages of 16 KiB queued for a client that does not read, and still open"
        );
    }
    let (received, frame) = read_to_close(&mut slow).await;
    assert_eq!(frame.map(|f| u16::from(f.code)), Some(1008));
    assert!(
        received < sent,
        "all {received} messages were buffered for a client that did not read"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_is_closed_with_1013_when_its_objects_mailbox_stays_full() {
    let dir = tempfile::tempdir().unwrap();
    // PROBE_CONFIG sets mailbox_capacity = 4.
    let server = TestServer::start(PROBE_CONFIG, dir.path()).await;
    let mut watcher = connect(&server, "/echo/full/?tag=watcher").await;
    let mut ws = connect(&server, "/echo/full/").await;
    let (release, entered) = gate("echo-full");
    say(&mut ws, "wait").await;
    wait_until("the object is held", || entered.load(Ordering::SeqCst) == 1).await;
    // Four messages fill the mailbox; the fifth finds it full for good.
    for i in 0..5 {
        say(&mut ws, &format!("m{i}")).await;
    }
    let (_, frame) = read_to_close(&mut ws).await;
    assert_eq!(frame.map(|f| u16::from(f.code)), Some(1013));
    // Once the object moves again it works off its queue; the watcher sees each echo.
    release.add_permits(1);
    for i in 0..4 {
        assert_eq!(next_text(&mut watcher).await, format!("echo:m{i}"));
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_socket_keeps_its_object_in_memory_hibernatable_ones_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let config = PROBE_CONFIG.replace(
        "mailbox_capacity = 4",
        "mailbox_capacity = 4\nhibernation_idle_ms = 50\nidle_timeout_ms = 50",
    );
    let server = TestServer::start(&config, dir.path()).await;
    let rt = server.runtime.clone();
    // The object with a plain socket is idle from here on...
    let mut plain = connect(&server, "/echo/plain/?plain=1").await;
    say(&mut plain, "whoami").await;
    assert_eq!(next_json(&mut plain).await["count"], 1);
    // ...and one with a hibernatable socket from later on.
    let mut hib = connect(&server, "/echo/hib/").await;
    say(&mut hib, "whoami").await;
    assert_eq!(next_json(&mut hib).await["count"], 1);
    assert_eq!(rt.stats().live_objects, 2);
    // One of them leaves memory: it can only be the later one.
    wait_until("an idle object left memory", || {
        rt.stats().live_objects == 1
    })
    .await;
    let activations = rt.stats().activations;
    say(&mut plain, "whoami").await;
    assert_eq!(next_json(&mut plain).await["count"], 2);
    assert_eq!(
        rt.stats().activations,
        activations,
        "the object with a plain socket was evicted"
    );
    say(&mut hib, "whoami").await;
    assert_eq!(next_json(&mut hib).await["count"], 2);
    assert_eq!(
        rt.stats().activations,
        activations + 1,
        "the object with only a hibernatable socket stayed in memory"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_a_socket_handler_discards_its_sends() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(PROBE_CONFIG, dir.path()).await;
    let mut ws = connect(&server, "/echo/panicky/").await;
    say(&mut ws, "panic").await;
    say(&mut ws, "after").await;
    // Frames leave in turn order: had the panicking turn's send left, it would come first.
    assert_eq!(next_text(&mut ws).await, "echo:after");
    say(&mut ws, "whoami").await;
    let who = next_json(&mut ws).await;
    assert_eq!(
        who["count"], 2,
        "the panicking turn's write was rolled back"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_close_wakes_a_hibernated_object() {
    let dir = tempfile::tempdir().unwrap();
    let config = PROBE_CONFIG.replace(
        "mailbox_capacity = 4",
        "mailbox_capacity = 4\nhibernation_idle_ms = 50",
    );
    let server = TestServer::start(&config, dir.path()).await;
    let rt = server.runtime.clone();
    let mut leaving = connect(&server, "/echo/sleepy/").await;
    let mut staying = connect(&server, "/echo/sleepy/").await;
    wait_until("the idle object hibernates", || {
        rt.stats().live_objects == 0
    })
    .await;
    let activations = rt.stats().activations;
    leaving
        .close(Some(CloseFrame {
            code: CloseCode::from(4000),
            reason: "bye".into(),
        }))
        .await
        .unwrap();
    // The object's websocket_close tells the other socket.
    let closed = next_json(&mut staying).await;
    assert_eq!(
        (closed["code"].as_u64(), closed["clean"].as_bool()),
        (Some(4000), Some(true)),
        "{closed}"
    );
    assert_eq!(
        rt.stats().activations,
        activations + 1,
        "a new activation ran websocket_close"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_errors_close_with_1002_and_reach_the_object() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(PROBE_CONFIG, dir.path()).await;
    let mut watcher = connect(&server, "/echo/proto/").await;
    // A raw connection that completes the handshake, then sends an unmasked frame.
    let mut raw = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    raw.write_all(
        b"GET /echo/proto/ HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = [0u8; 1024];
    let n = raw.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 101"));
    // Client frames must be masked: this one is not.
    raw.write_all(&[0x81, 0x02, b'h', b'i']).await.unwrap();
    // The server says why in its close frame...
    let mut got = Vec::new();
    let code = loop {
        if let Some(code) = close_code_in(&got) {
            break code;
        }
        let n = tokio::time::timeout(PATIENCE, raw.read(&mut buf))
            .await
            .expect("the close frame in time")
            .unwrap();
        assert!(n > 0, "the connection ended without a close frame: {got:?}");
        got.extend_from_slice(&buf[..n]);
    };
    assert_eq!(code, 1002);
    // ...and the object hears of the error and of the end of the connection.
    let closed = next_json(&mut watcher).await;
    assert_eq!(closed["code"], 1002, "{closed}");
    assert_eq!(closed["clean"], false);
    server.stop().await;
}

/// The status code of the first close frame among the (unmasked: the server's) frames in
/// `bytes`, once they hold all of it.
fn close_code_in(mut bytes: &[u8]) -> Option<u16> {
    loop {
        let ([first, second], rest) = bytes.split_first_chunk::<2>()?;
        let (len, rest) = match second & 0x7f {
            126 => {
                let (ext, rest) = rest.split_first_chunk::<2>()?;
                (usize::from(u16::from_be_bytes(*ext)), rest)
            }
            127 => {
                let (ext, rest) = rest.split_first_chunk::<8>()?;
                (usize::try_from(u64::from_be_bytes(*ext)).ok()?, rest)
            }
            len => (usize::from(len), rest),
        };
        if rest.len() < len {
            return None;
        }
        let (payload, rest) = rest.split_at(len);
        if first & 0x0f == 0x8 {
            let (code, _) = payload.split_first_chunk::<2>()?;
            return Some(u16::from_be_bytes(*code));
        }
        bytes = rest;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_connection_reaches_websocket_close_as_1006() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(PROBE_CONFIG, dir.path()).await;
    let mut watcher = connect(&server, "/echo/drop/").await;
    let gone = connect(&server, "/echo/drop/").await;
    drop(gone);
    let closed = next_json(&mut watcher).await;
    assert_eq!(
        (closed["code"].as_u64(), closed["clean"].as_bool()),
        (Some(1006), Some(false)),
        "{closed}"
    );
    server.stop().await;
}

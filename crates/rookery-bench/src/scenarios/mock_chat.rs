//! A minimal in-process chat server speaking the template app's WebSocket protocol, so the
//! WebSocket scenarios can be tested end to end without the real server.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};

use crate::http::Target;

/// A deliberate protocol bug, to check that the verdicts catch it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Behave.
    None,
    /// Deliver `bench-1` twice to the first client of each room.
    DuplicateToFirst,
    /// Refuse every upgrade with a 400, like a server without WebSocket support.
    Refuse,
}

type Rooms = Arc<Mutex<HashMap<String, Vec<mpsc::UnboundedSender<String>>>>>;

/// Starts the mock on an ephemeral port and returns its target.
pub async fn start(fault: Fault) -> Target {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let rooms: Rooms = Arc::default();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            if fault == Fault::Refuse {
                tokio::spawn(refuse(stream));
            } else {
                tokio::spawn(serve(stream, Arc::clone(&rooms), fault));
            }
        }
    });
    Target::resolve(&url).await.unwrap()
}

fn broadcast(rooms: &Rooms, room: &str, text: &str, fault: Fault) {
    let rooms = rooms.lock().unwrap();
    for (i, client) in rooms.get(room).into_iter().flatten().enumerate() {
        let _ = client.send(text.to_owned());
        if fault == Fault::DuplicateToFirst && i == 0 && text.contains("\"bench-1\"") {
            let _ = client.send(text.to_owned());
        }
    }
}

async fn refuse(mut stream: tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = [0u8; 4096];
    let _ = stream.read(&mut buf).await;
    let _ = stream
        .write_all(
            b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain\r\ncontent-length: 18\r\n\r\n\
              Expected WebSocket",
        )
        .await;
}

async fn serve(stream: tokio::net::TcpStream, rooms: Rooms, fault: Fault) {
    let mut path = String::new();
    // tungstenite's callback signature fixes the (large) error type; nothing to shrink here.
    #[allow(clippy::result_large_err)]
    let callback = |req: &Request, resp: Response| {
        path = req.uri().path().to_owned();
        Ok(resp)
    };
    let Ok(ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else {
        return;
    };
    let room = path.trim_end_matches("/websocket").to_owned();
    let (mut sink, mut incoming) = ws.split();
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    let _ = tx.send(json!({"type": "history", "messages": []}).to_string());
    rooms
        .lock()
        .unwrap()
        .entry(room.clone())
        .or_default()
        .push(tx);
    broadcast(
        &rooms,
        &room,
        &json!({"type": "join", "name": "x"}).to_string(),
        fault,
    );
    let writer = tokio::spawn(async move {
        while let Some(text) = rx.recv().await {
            if sink.send(Message::text(text)).await.is_err() {
                break;
            }
        }
    });
    while let Some(Ok(msg)) = incoming.next().await {
        if let Message::Text(text) = msg {
            let parsed: Value = serde_json::from_str(text.as_str()).unwrap_or_default();
            let out = json!({
                "type": "message",
                "id": "message:1",
                "name": "c",
                "text": parsed["text"],
                "timestamp": 1,
            });
            broadcast(&rooms, &room, &out.to_string(), fault);
        }
    }
    writer.abort();
}

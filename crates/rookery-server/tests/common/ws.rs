//! WebSocket client helpers for tests over real sockets.

use futures_util::StreamExt;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

use super::{PATIENCE, TestServer};

/// A client connection.
pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens a WebSocket to `path` of `server`; the upgrade must succeed.
pub async fn connect(server: &TestServer, path: &str) -> Ws {
    let url = format!("ws://{}{}", server.addr, path);
    let (ws, resp) = tokio::time::timeout(PATIENCE, tokio_tungstenite::connect_async(url))
        .await
        .expect("connects in time")
        .expect("upgrade accepted");
    assert_eq!(resp.status(), 101);
    ws
}

/// The next data message (text), skipping control frames.
pub async fn next_text(ws: &mut Ws) -> String {
    loop {
        match tokio::time::timeout(PATIENCE, ws.next())
            .await
            .expect("a message in time")
        {
            Some(Ok(Message::Text(t))) => return t.to_string(),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("expected a text message, got {other:?}"),
        }
    }
}

/// The next data message as JSON.
pub async fn next_json(ws: &mut Ws) -> Value {
    serde_json::from_str(&next_text(ws).await).unwrap()
}

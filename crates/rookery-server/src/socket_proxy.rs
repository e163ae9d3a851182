//! WebSockets to an object another node owns: this node accepts the client's upgrade, opens a
//! WebSocket to the owner (`/_rookery/forward`, like a forwarded request) and relays messages
//! both ways.
//!
//! When the owner's side ends without a close frame (the node died, or the connection broke),
//! the client is closed with 1012 (service restart): it reconnects, and its next connection
//! reaches the object wherever it lives then. A close frame from either side is passed on.
//! Each relayed text message is copied once (the two WebSocket libraries have their own
//! string types); pings and pongs are answered on each hop, not relayed.

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use futures_util::{SinkExt, StreamExt};
use rookery::{Error, ObjectId, Request, close_code};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame as RemoteCloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message as RemoteMessage};

use crate::cluster::{forward_headers, forward_path, gone};

type Remote =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens the owner's side of the socket for `req` (the upgrade request as the object would see
/// it) and, once the owner accepted, answers the client's `upgrade` with the relay. An owner
/// that refuses or does not answer within a lease is [`Error::Elsewhere`] (503: retry).
pub(crate) async fn proxy(
    cluster: &rookery_cluster::Cluster,
    owner: String,
    class: &str,
    id: &ObjectId,
    req: Request,
    upgrade: WebSocketUpgrade,
    max_message: usize,
) -> rookery::Result<axum::response::Response> {
    let url = format!(
        "{}{}",
        owner
            .replacen("https://", "wss://", 1)
            .replacen("http://", "ws://", 1)
            .trim_end_matches('/'),
        forward_path(&req)
    );
    let mut request = url
        .into_client_request()
        .map_err(|e| Error::msg(format!("the owner's address {owner:?} is unusable: {e}")))?;
    let mut headers = forward_headers(cluster, class, id, req.headers())?;
    // The handshake's own headers are the WebSocket client's to set.
    for name in [
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-extensions",
        "sec-websocket-protocol",
    ] {
        headers.remove(name);
    }
    for (name, value) in &headers {
        request.headers_mut().insert(name.clone(), value.clone());
    }
    let connect = tokio_tungstenite::connect_async(request);
    let remote = match tokio::time::timeout(cluster.lease(), connect).await {
        Ok(Ok((remote, _))) => remote,
        Ok(Err(tungstenite::Error::Http(refused))) => {
            tracing::debug!(owner = %owner, status = %refused.status(), "the owner refused the socket");
            return Err(Error::Elsewhere(owner));
        }
        Ok(Err(e)) => return Err(gone(cluster, id, owner, &e.to_string())),
        Err(_elapsed) => return Err(gone(cluster, id, owner, "no answer within the lease")),
    };
    Ok(upgrade
        .max_message_size(max_message)
        .max_frame_size(max_message)
        .on_upgrade(move |client| relay(client, remote)))
}

/// Relays messages between the client and the owner until either side ends.
async fn relay(client: WebSocket, remote: Remote) {
    let (mut to_client, mut from_client) = client.split();
    let (mut to_remote, mut from_remote) = remote.split();
    loop {
        tokio::select! {
            message = from_client.next() => match message {
                Some(Ok(Message::Text(text))) => {
                    if to_remote.send(RemoteMessage::text(text.as_str())).await.is_err() {
                        let _ = to_client.send(moved()).await;
                        break;
                    }
                }
                Some(Ok(Message::Binary(bytes))) => {
                    if to_remote.send(RemoteMessage::Binary(bytes)).await.is_err() {
                        let _ = to_client.send(moved()).await;
                        break;
                    }
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Close(frame))) => {
                    let frame = frame.map(|f| RemoteCloseFrame {
                        code: CloseCode::from(f.code),
                        reason: f.reason.as_str().into(),
                    });
                    let _ = to_remote.send(RemoteMessage::Close(frame)).await;
                    break;
                }
                // The client went away without a close: the owner hears it the same way.
                Some(Err(_)) | None => {
                    let _ = to_remote.close().await;
                    break;
                }
            },
            message = from_remote.next() => match message {
                Some(Ok(RemoteMessage::Text(text))) => {
                    if to_client.send(Message::Text(text.as_str().into())).await.is_err() {
                        let _ = to_remote.close().await;
                        break;
                    }
                }
                Some(Ok(RemoteMessage::Binary(bytes))) => {
                    if to_client.send(Message::Binary(bytes)).await.is_err() {
                        let _ = to_remote.close().await;
                        break;
                    }
                }
                Some(Ok(RemoteMessage::Close(frame))) => {
                    let frame = frame.map(|f| CloseFrame {
                        code: f.code.into(),
                        reason: f.reason.as_str().into(),
                    });
                    let _ = to_client.send(Message::Close(frame)).await;
                    break;
                }
                Some(Ok(_)) => {}
                // The owner's side broke off (the node died): the client reconnects.
                Some(Err(_)) | None => {
                    let _ = to_client.send(moved()).await;
                    break;
                }
            },
        }
    }
}

/// The close that tells a client to reconnect: the object is moving to another node.
fn moved() -> Message {
    Message::Close(Some(CloseFrame {
        code: close_code::SERVICE_RESTART,
        reason: "the object's node went away; reconnect".into(),
    }))
}

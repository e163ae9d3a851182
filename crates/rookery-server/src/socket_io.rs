//! One WebSocket connection: frames between the network and the runtime's [`SocketLink`].
//!
//! The task writes what the runtime queues (batched: many frames, one flush), hands what the
//! client sends to the object, answers the client's close frame itself, and reports how the
//! connection ended: the client's code for a clean close, 1006 for a dropped connection, 1009
//! for a message over the limit, 1002 for a protocol error. A close the runtime queues with
//! 1006 drops the connection without a close frame (shutdown of hibernatable sockets).

use std::sync::{Arc, Mutex};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use futures_util::{SinkExt, StreamExt};
use rookery::{Outgoing, SocketLink, Undelivered, WsMessage, close_code};

/// Bytes the connection reads from the network at a time; small, so idle sockets are cheap
/// (about 7 KiB each in all, measured with 10 000): big messages take more reads.
const READ_BUFFER: usize = 1024;

/// Finishes the upgrade: the 101 response, and the connection task behind it.
pub(crate) fn upgrade(
    upgrade: WebSocketUpgrade,
    link: SocketLink,
    max_message: usize,
) -> axum::response::Response {
    // The link goes to whichever of the two callbacks runs.
    let link = Arc::new(Mutex::new(Some(link)));
    let on_fail = link.clone();
    upgrade
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .max_message_size(max_message)
        .max_frame_size(max_message)
        .on_failed_upgrade(move |e| {
            tracing::debug!(error = %e, "WebSocket handshake failed");
            // Dropping the link reports the connection as dropped (1006).
            drop(take(&on_fail));
        })
        .on_upgrade(move |ws| async move {
            if let Some(link) = take(&link) {
                run(ws, link).await;
            }
        })
}

fn take(link: &Mutex<Option<SocketLink>>) -> Option<SocketLink> {
    link.lock().unwrap_or_else(|e| e.into_inner()).take()
}

fn to_axum(message: WsMessage) -> Option<Message> {
    match message {
        WsMessage::Text(bytes) => Utf8Bytes::try_from(bytes).ok().map(Message::Text),
        WsMessage::Binary(bytes) => Some(Message::Binary(bytes)),
    }
}

fn close_frame(code: u16, reason: &str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: Utf8Bytes::from(reason),
    }))
}

/// How the connection ended, for the object's `websocket_close`.
struct Ending {
    code: u16,
    reason: String,
    clean: bool,
}

impl Ending {
    fn new(code: u16, reason: impl Into<String>, clean: bool) -> Self {
        Self {
            code,
            reason: reason.into(),
            clean,
        }
    }
}

async fn run(ws: WebSocket, link: SocketLink) {
    let (mut tx, mut rx) = ws.split();
    let mut out = Vec::new();
    let ending = loop {
        tokio::select! {
            () = link.ready() => {
                link.take_outgoing(&mut out);
                let mut close = None;
                for item in out.drain(..) {
                    match item {
                        Outgoing::Message(m) => {
                            if let Some(m) = to_axum(m)
                                && tx.feed(m).await.is_err()
                            {
                                break;
                            }
                        }
                        Outgoing::Close(code, reason) => {
                            close = Some((code, reason));
                            break;
                        }
                    }
                }
                if tx.flush().await.is_err() {
                    break Ending::new(close_code::ABNORMAL, "", false);
                }
                if let Some((code, reason)) = close {
                    if code == close_code::ABNORMAL {
                        // 1006 never goes on the wire: the runtime asks to drop the connection
                        // so that the client sees an unclean close and reconnects.
                        break Ending::new(code, reason, false);
                    }
                    // The runtime closes: say so, then give the client a moment to answer.
                    let _ = tx.send(close_frame(code, &reason)).await;
                    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
                        while let Some(Ok(m)) = rx.next().await {
                            if matches!(m, Message::Close(_)) {
                                break;
                            }
                        }
                    })
                    .await;
                    break Ending::new(code, reason, true);
                }
            }
            incoming = rx.next() => match incoming {
                Some(Ok(Message::Text(text))) => {
                    let message = WsMessage::Text(text.into());
                    if let Some(ending) = deliver(&link, &mut tx, message).await {
                        break ending;
                    }
                }
                Some(Ok(Message::Binary(bytes))) => {
                    if let Some(ending) = deliver(&link, &mut tx, WsMessage::Binary(bytes)).await {
                        break ending;
                    }
                }
                // The library queued the pong (and answers a close frame the same way);
                // flushing sends it now.
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {
                    let _ = tx.flush().await;
                }
                Some(Ok(Message::Close(frame))) => {
                    let _ = tx.flush().await;
                    break match frame {
                        Some(f) => Ending::new(f.code, f.reason.as_str(), true),
                        None => Ending::new(close_code::NO_STATUS, "", true),
                    };
                }
                Some(Err(e)) => break failure(&link, &mut tx, e).await,
                None => break Ending::new(close_code::ABNORMAL, "", false),
            },
        }
    };
    link.closed(ending.code, ending.reason, ending.clean).await;
}

type Sink = futures_util::stream::SplitSink<WebSocket, Message>;

/// Hands a client message to the object; an ending if the object cannot take it.
async fn deliver(link: &SocketLink, tx: &mut Sink, message: WsMessage) -> Option<Ending> {
    match link.incoming(message).await {
        Ok(None) => None,
        Ok(Some(reply)) => {
            let reply = to_axum(reply)?;
            tx.send(reply)
                .await
                .err()
                .map(|_| Ending::new(close_code::ABNORMAL, "", false))
        }
        Err(why) => {
            let (code, reason) = match why {
                Undelivered::Overloaded => {
                    (close_code::TRY_AGAIN_LATER, "the object is overloaded")
                }
                Undelivered::Unavailable => (close_code::INTERNAL, "the object is unavailable"),
            };
            let _ = tx.send(close_frame(code, reason)).await;
            Some(Ending::new(code, reason, true))
        }
    }
}

/// Closes the connection after a read error with the code the error calls for.
async fn failure(link: &SocketLink, tx: &mut Sink, error: axum::Error) -> Ending {
    use tungstenite::error::{CapacityError, Error as WsError, ProtocolError};
    let inner = error.into_inner();
    let (code, reason) = match inner.downcast_ref::<WsError>() {
        // The peer went away without a close frame: a dropped connection, not a bad one.
        Some(WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake)) => {
            return Ending::new(close_code::ABNORMAL, "", false);
        }
        Some(WsError::Capacity(CapacityError::MessageTooLong { .. })) => {
            (close_code::TOO_BIG, "message too big")
        }
        Some(WsError::Capacity(_)) => (close_code::TOO_BIG, "frame too big"),
        Some(WsError::Protocol(_) | WsError::Utf8(_)) => {
            (close_code::PROTOCOL_ERROR, "protocol error")
        }
        // The connection broke: nothing more can be said on it.
        _ => return Ending::new(close_code::ABNORMAL, "", false),
    };
    link.error(format!("{reason}: {inner}")).await;
    let _ = tx.send(close_frame(code, reason)).await;
    Ending::new(code, reason, false)
}

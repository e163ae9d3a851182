//! The transport side of a socket: what a connection task (the HTTP gateway's) uses to move
//! frames between the network and the runtime.

use std::sync::Arc;
use std::time::Duration;

use super::events::SocketEvent;
use super::inner::SocketInner;
use super::registry::ObjectSockets;
use super::{Outgoing, WebSocket, WsMessage, close_code};
use crate::error::Error;

/// Longest wait for an object's full mailbox before a socket's message is given up.
const MAX_BACKPRESSURE: Duration = Duration::from_secs(2);

/// Why a message from the client could not be handed to the object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Undelivered {
    /// The object stayed overloaded: close with 1013.
    Overloaded,
    /// The runtime is stopping or the object cannot run: close with 1011 or 1001.
    Unavailable,
}

/// One connection's handle on its socket.
///
/// Exactly one exists per accepted socket, made when the object answers with
/// `Response::websocket`. It ends the socket when the connection ends ([`SocketLink::closed`])
/// or, if it is dropped without that (the client went away before the handshake completed,
/// the response was lost), as a connection that dropped: the socket leaves its object and the
/// object's `websocket_close` runs with 1006. So no socket outlives its connection.
pub struct SocketLink {
    socket: Arc<SocketInner>,
    owner: Arc<ObjectSockets>,
    /// Whether the end was reported already.
    ended: bool,
}

impl std::fmt::Debug for SocketLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SocketLink")
            .field("id", &self.socket.id)
            .finish()
    }
}

impl SocketLink {
    /// The link for a socket an object accepted; `None` if its object is gone or the socket
    /// has its link already.
    pub(crate) fn new(ws: &WebSocket) -> Option<Self> {
        let owner = ws.owner.upgrade()?;
        if !ws.inner.claim() {
            return None;
        }
        Some(Self {
            owner,
            socket: ws.inner.clone(),
            ended: false,
        })
    }

    /// The socket's id.
    pub fn id(&self) -> u64 {
        self.socket.id
    }

    /// Waits until there is something to send.
    pub async fn ready(&self) {
        self.socket.ready().await;
    }

    /// Moves everything waiting to be sent into `buf`, in order.
    pub fn take_outgoing(&self, buf: &mut Vec<Outgoing>) {
        self.socket.take(buf);
    }

    /// Hands a message from the client to the object. Returns the automatic answer when the
    /// message is the object's auto-response request: the object is not involved then, and the
    /// caller sends the answer at once.
    pub async fn incoming(&self, message: WsMessage) -> Result<Option<WsMessage>, Undelivered> {
        if let Some(reply) = self.owner.auto_reply(&message) {
            let now = self.owner.clock.now_ms();
            self.socket
                .auto_response_at
                .store(now, std::sync::atomic::Ordering::Relaxed);
            return Ok(Some(reply));
        }
        self.dispatch(SocketEvent::Message(message)).await?;
        Ok(None)
    }

    /// Reports a protocol or size error on the connection to the object.
    pub async fn error(&self, error: String) {
        // A failure to report an error has nobody left to tell.
        let _ = self.dispatch(SocketEvent::Error(error)).await;
    }

    /// Reports the end of the connection: the socket leaves the object's set and the object's
    /// `websocket_close` runs (waking it from hibernation if needed).
    pub async fn closed(mut self, code: u16, reason: String, was_clean: bool) {
        self.ended = true;
        self.socket.end();
        self.owner.remove(self.socket.id);
        let _ = deliver(
            &self.owner,
            &self.socket,
            SocketEvent::Close {
                code,
                reason,
                was_clean,
            },
        )
        .await;
    }

    async fn dispatch(&self, event: SocketEvent) -> Result<(), Undelivered> {
        deliver(&self.owner, &self.socket, event).await
    }
}

impl Drop for SocketLink {
    fn drop(&mut self) {
        if !self.ended {
            abandon(&self.owner, &self.socket);
        }
    }
}

/// Ends a socket whose connection never came or went without a word: it leaves its object at
/// once, and the object hears of it as of a dropped connection (1006).
fn abandon(owner: &Arc<ObjectSockets>, socket: &Arc<SocketInner>) {
    socket.end();
    owner.remove(socket.id);
    let close = SocketEvent::Close {
        code: close_code::ABNORMAL,
        reason: String::new(),
        was_clean: false,
    };
    let (owner, socket) = (owner.clone(), socket.clone());
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => {
            handle.spawn(async move {
                let _ = deliver(&owner, &socket, close).await;
            });
        }
        // No runtime to wait on a full mailbox: one try.
        Err(_) => {
            if let Some(events) = owner.events.upgrade() {
                let ws = WebSocket {
                    inner: socket.clone(),
                    owner: Arc::downgrade(&owner),
                };
                let _ = events.deliver(&owner.addr, ws, close);
            }
        }
    }
}

impl ObjectSockets {
    /// Ends the sockets accepted by the turn that just ended that no response handed to a
    /// connection (the handler failed, or answered without `Response::websocket`).
    pub(crate) fn end_unclaimed(self: &Arc<Self>) {
        for socket in self.take_unclaimed() {
            abandon(self, &socket);
        }
    }
}

/// Hands `event` on `socket` to its object, waiting a while for a full mailbox.
pub(super) async fn deliver(
    owner: &Arc<ObjectSockets>,
    socket: &Arc<SocketInner>,
    event: SocketEvent,
) -> Result<(), Undelivered> {
    let Some(events) = owner.events.upgrade() else {
        return Err(Undelivered::Unavailable);
    };
    {
        let mut delay = Duration::from_millis(1);
        let mut waited = Duration::ZERO;
        loop {
            let ws = WebSocket {
                inner: socket.clone(),
                owner: Arc::downgrade(owner),
            };
            match events.clone().deliver(&owner.addr, ws, event.clone()) {
                Ok(()) => return Ok(()),
                // A full mailbox pushes back on the connection for a while, then gives up.
                Err(Error::Overloaded) if waited < MAX_BACKPRESSURE => {
                    tokio::time::sleep(delay).await;
                    waited += delay;
                    delay = (delay * 2).min(Duration::from_millis(100));
                }
                Err(Error::Overloaded) => return Err(Undelivered::Overloaded),
                Err(e) => {
                    tracing::debug!(error = %e, "socket event not delivered");
                    return Err(Undelivered::Unavailable);
                }
            }
        }
    }
}

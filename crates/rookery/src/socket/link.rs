//! The transport side of a socket: what a connection task (the HTTP gateway's) uses to move
//! frames between the network and the runtime.

use std::sync::Arc;
use std::time::Duration;

use super::events::SocketEvent;
use super::inner::SocketInner;
use super::registry::ObjectSockets;
use super::{Outgoing, WebSocket, WsMessage};
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
pub struct SocketLink {
    socket: Arc<SocketInner>,
    owner: Arc<ObjectSockets>,
}

impl std::fmt::Debug for SocketLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SocketLink")
            .field("id", &self.socket.id)
            .finish()
    }
}

impl SocketLink {
    /// The link for a socket an object accepted; `None` if its object is gone.
    pub fn new(ws: &WebSocket) -> Option<Self> {
        Some(Self {
            owner: ws.owner.upgrade()?,
            socket: ws.inner.clone(),
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
    pub async fn closed(self, code: u16, reason: String, was_clean: bool) {
        self.socket.end();
        self.owner.remove(self.socket.id);
        let _ = self
            .dispatch(SocketEvent::Close {
                code,
                reason,
                was_clean,
            })
            .await;
    }

    async fn dispatch(&self, event: SocketEvent) -> Result<(), Undelivered> {
        let Some(events) = self.owner.events.upgrade() else {
            return Err(Undelivered::Unavailable);
        };
        let mut delay = Duration::from_millis(1);
        let mut waited = Duration::ZERO;
        loop {
            let socket = WebSocket {
                inner: self.socket.clone(),
                owner: Arc::downgrade(&self.owner),
            };
            match events
                .clone()
                .deliver(&self.owner.addr, socket, event.clone())
            {
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

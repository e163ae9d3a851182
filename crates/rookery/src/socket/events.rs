//! What happens on a socket, and the narrow handle through which the transport side hands it to
//! the object's host.

use std::sync::Arc;

use super::{WebSocket, WsMessage};
use crate::addr::ObjectAddr;
use crate::error::Result;

/// Something that happened on one of an object's WebSockets; each one is a turn of the object.
#[derive(Debug, Clone)]
pub(crate) enum SocketEvent {
    /// The client sent a message.
    Message(WsMessage),
    /// The connection ended.
    Close {
        code: u16,
        reason: String,
        was_clean: bool,
    },
    /// A protocol or size error on the connection.
    Error(String),
}

/// Delivers socket events to objects: the host, seen from the socket layer.
pub(crate) trait SocketEvents: Send + Sync + 'static {
    /// Queues `event` on `socket` for the object at `addr`, activating it if needed;
    /// `Overloaded` when its mailbox is full.
    fn deliver(
        self: Arc<Self>,
        addr: &ObjectAddr,
        socket: WebSocket,
        event: SocketEvent,
    ) -> Result<()>;
}

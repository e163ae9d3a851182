//! WebSockets: accepted by objects, kept by the runtime, and able to outlive the instance.
//!
//! An object accepts an upgrade request with `ObjectState::accept_websocket` and answers with
//! `Response::websocket`. The runtime keeps the socket in the object's [`registry`], outside the
//! instance, so a *hibernatable* socket stays connected when the idle instance is evicted: the
//! next message builds a new instance and delivers the message to it, tags and attachment
//! intact. A *plain* socket keeps its object in memory instead.
//!
//! Sends made during a turn are output-gated like a response: they are held in the object's
//! outbox (`crate::outbox`) and leave once the turn's writes are durable, in turn order. A transport (the HTTP
//! gateway) drives each connection through a [`SocketLink`], which hands what the client sends
//! to the host through the narrow [`SocketEvents`] handle.

mod events;
mod inner;
mod link;
mod registry;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

pub(crate) use events::{SocketEvent, SocketEvents};
pub use link::{SocketLink, Undelivered};
pub(crate) use registry::ObjectSockets;

use inner::SocketInner;

use crate::error::{Error, Result};
use crate::outbox::{self, Release};

/// Close codes the runtime uses (RFC 6455 §7.4).
pub mod close_code {
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// The endpoint is going away (server shutdown).
    pub const GOING_AWAY: u16 = 1001;
    /// A protocol error.
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// No status code was given.
    pub const NO_STATUS: u16 = 1005;
    /// The connection ended without a close frame.
    pub const ABNORMAL: u16 = 1006;
    /// A policy was violated (e.g. the client does not read what it is sent).
    pub const POLICY: u16 = 1008;
    /// A message was too big.
    pub const TOO_BIG: u16 = 1009;
    /// The server met an unexpected condition.
    pub const INTERNAL: u16 = 1011;
    /// The object moved to another node; reconnect.
    pub const SERVICE_RESTART: u16 = 1012;
    /// Try again later (the object is overloaded).
    pub const TRY_AGAIN_LATER: u16 = 1013;
}

/// Most tags per socket.
pub const MAX_TAGS: usize = 10;
/// Longest tag, in bytes.
pub const MAX_TAG_BYTES: usize = 256;
/// Largest serialized attachment, in bytes.
pub const MAX_ATTACHMENT_BYTES: usize = 16 * 1024;

/// A WebSocket message. Cloning shares the bytes, so a broadcast encodes once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsMessage {
    /// A text message (always valid UTF-8).
    Text(Bytes),
    /// A binary message.
    Binary(Bytes),
}

impl WsMessage {
    /// A text message.
    pub fn text(text: impl Into<String>) -> Self {
        WsMessage::Text(Bytes::from(text.into()))
    }

    /// A text message holding `value` as JSON.
    pub fn json<T: Serialize + ?Sized>(value: &T) -> Result<Self> {
        // serde_json writes valid UTF-8.
        Ok(WsMessage::Text(Bytes::from(serde_json::to_vec(value)?)))
    }

    /// A text message from bytes that must be UTF-8.
    pub fn text_from_bytes(bytes: Bytes) -> Result<Self> {
        std::str::from_utf8(&bytes).map_err(|_| Error::bad_request("text is not UTF-8"))?;
        Ok(WsMessage::Text(bytes))
    }

    /// The text, if this is a text message.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            // Text is valid UTF-8 by construction.
            WsMessage::Text(b) => std::str::from_utf8(b).ok(),
            WsMessage::Binary(_) => None,
        }
    }

    /// The payload bytes.
    pub fn as_bytes(&self) -> &Bytes {
        match self {
            WsMessage::Text(b) | WsMessage::Binary(b) => b,
        }
    }

    /// The payload decoded as JSON; malformed JSON is a 400-class error.
    pub fn json_body<T: DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_slice(self.as_bytes())
            .map_err(|e| Error::bad_request(format!("invalid JSON: {e}")))
    }

    /// Payload length in bytes.
    pub fn len(&self) -> usize {
        self.as_bytes().len()
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.as_bytes().is_empty()
    }
}

impl From<&str> for WsMessage {
    fn from(s: &str) -> Self {
        WsMessage::text(s)
    }
}

impl From<String> for WsMessage {
    fn from(s: String) -> Self {
        WsMessage::text(s)
    }
}

/// What the runtime sends on a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outgoing {
    /// A message.
    Message(WsMessage),
    /// A close frame; nothing follows it. Code 1006 (which RFC 6455 forbids on the wire) means
    /// "drop the connection without a close frame", so that the client sees it as not clean.
    Close(u16, String),
}

/// One frame for one socket, as a turn's outbox holds it.
pub(crate) struct Frame {
    socket: Arc<SocketInner>,
    out: Outgoing,
}

impl Release for Frame {
    fn release(self) {
        self.socket.deliver(self.out);
    }
}

/// A WebSocket accepted by an object. Cheap to clone; all clones are the same socket.
#[derive(Clone)]
pub struct WebSocket {
    inner: Arc<SocketInner>,
    /// The object's socket set, through which a transport links the connection back.
    owner: Weak<ObjectSockets>,
}

impl std::fmt::Debug for WebSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebSocket")
            .field("id", &self.inner.id)
            .field("tags", &self.inner.tags)
            .finish()
    }
}

impl PartialEq for WebSocket {
    fn eq(&self, other: &Self) -> bool {
        self.inner.id == other.inner.id
    }
}

impl Eq for WebSocket {}

impl WebSocket {
    /// A number that identifies the socket within the runtime.
    pub fn id(&self) -> u64 {
        self.inner.id
    }

    /// The tags given when the socket was accepted.
    pub fn tags(&self) -> &[String] {
        &self.inner.tags
    }

    /// Whether the socket is still open for sending.
    pub fn is_open(&self) -> bool {
        self.inner.is_open()
    }

    /// When the runtime last answered this socket's auto-response request (ms since the
    /// epoch), if it ever did.
    pub(crate) fn auto_response_at(&self) -> Option<i64> {
        match self.inner.auto_response_at.load(Ordering::Relaxed) {
            0 => None,
            at => Some(at),
        }
    }

    /// Sends `message`. Inside a turn of the owning object it leaves once the turn's writes are
    /// durable (and is dropped if the turn fails); outside a turn, at once. Sends to a closed
    /// socket are dropped. A client that does not read fills its bounded queue and is closed
    /// with 1008.
    pub fn send(&self, message: impl Into<WsMessage>) {
        self.emit(Outgoing::Message(message.into()));
    }

    /// Queues `out` now, or, inside a turn of the socket's object, when the turn ends well and
    /// its writes are durable.
    fn emit(&self, out: Outgoing) {
        let frame = Frame {
            socket: self.inner.clone(),
            out,
        };
        let frame = match self.owner.upgrade() {
            Some(set) if outbox::in_turn_of(self.inner.owner) => set.outbox().hold(frame),
            _ => Some(frame),
        };
        if let Some(frame) = frame {
            frame.release();
        }
    }

    /// Sends `value` as a JSON text message.
    pub fn send_json<T: Serialize + ?Sized>(&self, value: &T) -> Result<()> {
        self.send(WsMessage::json(value)?);
        Ok(())
    }

    /// Closes the socket with `code` and `reason` (gated like a send).
    pub fn close(&self, code: u16, reason: &str) {
        self.emit(Outgoing::Close(code, truncate(reason, 123).to_string()));
    }

    /// Keeps `value` with the socket (at most 16 KiB as JSON); it survives hibernation.
    pub fn serialize_attachment<T: Serialize + ?Sized>(&self, value: &T) -> Result<()> {
        let bytes = serde_json::to_vec(value)?;
        if bytes.len() > MAX_ATTACHMENT_BYTES {
            return Err(Error::LimitExceeded(format!(
                "an attachment of {} bytes is over the {MAX_ATTACHMENT_BYTES}-byte limit",
                bytes.len()
            )));
        }
        *self
            .inner
            .attachment
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(Bytes::from(bytes));
        Ok(())
    }

    /// The value kept with [`WebSocket::serialize_attachment`], if any.
    pub fn deserialize_attachment<T: DeserializeOwned>(&self) -> Result<Option<T>> {
        let bytes = self
            .inner
            .attachment
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        match bytes {
            Some(bytes) => Ok(Some(serde_json::from_slice(&bytes)?)),
            None => Ok(None),
        }
    }
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Checks tags against the limits.
pub(crate) fn check_tags(tags: &[&str]) -> Result<()> {
    if tags.len() > MAX_TAGS {
        return Err(Error::LimitExceeded(format!(
            "{} tags; a socket may have at most {MAX_TAGS}",
            tags.len()
        )));
    }
    if let Some(t) = tags.iter().find(|t| t.len() > MAX_TAG_BYTES) {
        return Err(Error::LimitExceeded(format!(
            "a tag of {} bytes is over the {MAX_TAG_BYTES}-byte limit",
            t.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_keeps_characters_whole() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("héllo", 3), "hé");
        assert_eq!(truncate("abc", 10), "abc");
    }

    #[test]
    fn tag_limits() {
        assert!(check_tags(&["a"; 10]).is_ok());
        assert!(check_tags(&["a"; 11]).is_err());
        let long = "x".repeat(257);
        assert!(check_tags(&[long.as_str()]).is_err());
    }
}

//! The runtime's handle on one object, as its instance sees it: id, storage and sockets.

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::id::ObjectId;
use crate::request::Request;
use crate::socket::{ObjectSockets, WebSocket, WsMessage};
use crate::storage::{OutputGate, Storage};

/// The runtime's handle on one object: its id, its storage and its WebSockets.
#[derive(Clone)]
pub struct ObjectState {
    core: Arc<ObjectCore>,
}

/// What an [`ObjectState`] holds; owned by the activation, which closes the storage.
pub(crate) struct ObjectCore {
    pub(crate) id: ObjectId,
    pub(crate) class: Arc<str>,
    pub(crate) storage: Storage,
    pub(crate) sockets: Arc<ObjectSockets>,
    /// Set by [`ObjectState::abort`]; read once the turn ends.
    pub(crate) aborted: std::sync::atomic::AtomicBool,
}

impl ObjectState {
    pub(crate) fn new(core: ObjectCore) -> Self {
        Self {
            core: Arc::new(core),
        }
    }

    /// This object's id (with its name, when it was addressed by name).
    pub fn id(&self) -> &ObjectId {
        &self.core.id
    }

    /// The class this object belongs to.
    pub fn class(&self) -> &str {
        &self.core.class
    }

    /// Now, in milliseconds since the Unix epoch, by the runtime's clock (which tests can move).
    pub fn now_ms(&self) -> i64 {
        self.core.storage.clock().now_ms()
    }

    /// Restarts the object once the current turn ends: the instance is dropped, its sockets
    /// are closed with 1012 (service restart) and the next event opens the object afresh,
    /// applying a restore asked for with
    /// [`Storage::on_next_session_restore_bookmark`](crate::Storage::on_next_session_restore_bookmark).
    /// What the turn committed stands.
    pub fn abort(&self) {
        self.core
            .aborted
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Whether [`ObjectState::abort`] was called (and clears it).
    pub(crate) fn take_abort(&self) -> bool {
        self.core
            .aborted
            .swap(false, std::sync::atomic::Ordering::AcqRel)
    }

    /// This object's transactional storage.
    pub fn storage(&self) -> &Storage {
        &self.core.storage
    }

    /// Accepts the WebSocket of upgrade request `req` as a *hibernatable* socket with `tags`
    /// (at most 10 of at most 256 bytes): it stays connected when the instance is evicted, and
    /// its events build a new instance. Answer the request with `Response::websocket`.
    pub fn accept_websocket(&self, req: &Request, tags: &[&str]) -> Result<WebSocket> {
        Self::check_upgrade(req)?;
        self.core.sockets.accept(tags, true)
    }

    /// Accepts the WebSocket of upgrade request `req` as a *plain* socket: it keeps the object
    /// in memory while open and is closed with 1011 if the instance fails.
    pub fn accept_websocket_plain(&self, req: &Request) -> Result<WebSocket> {
        Self::check_upgrade(req)?;
        self.core.sockets.accept(&[], false)
    }

    fn check_upgrade(req: &Request) -> Result<()> {
        if req.is_websocket_upgrade() {
            Ok(())
        } else {
            Err(Error::bad_request("Expected WebSocket"))
        }
    }

    /// The object's open WebSockets, those tagged `tag` if given.
    pub fn get_websockets(&self, tag: Option<&str>) -> Vec<WebSocket> {
        self.core.sockets.list(tag)
    }

    /// The tags of `ws`.
    pub fn get_tags(&self, ws: &WebSocket) -> Vec<String> {
        ws.tags().to_vec()
    }

    /// Sends `message` to every open socket (tagged `tag` if given) except `except`; the
    /// message is encoded once and shared.
    pub fn broadcast(&self, message: &WsMessage, tag: Option<&str>, except: Option<&WebSocket>) {
        self.core
            .sockets
            .broadcast(message, tag, except.map(WebSocket::id));
    }

    /// Answers text message `request` with `response` on every socket of this object without
    /// waking the instance (e.g. `ping` → `pong`); `None` turns it off. Survives hibernation.
    pub fn set_websocket_auto_response(&self, pair: Option<(&str, &str)>) {
        self.core.sockets.set_auto_response(pair);
    }

    /// When the runtime last answered `ws`'s auto-response request (ms since the epoch).
    pub fn get_websocket_auto_response_timestamp(&self, ws: &WebSocket) -> Option<i64> {
        ws.auto_response_at()
    }

    /// A gate that opens when everything this object committed so far is durable.
    pub(crate) fn settled(&self) -> OutputGate {
        self.core.storage.settled()
    }

    /// The object's socket set.
    pub(crate) fn sockets(&self) -> &Arc<ObjectSockets> {
        &self.core.sockets
    }

    /// Takes the object's core back if no one else holds this state.
    pub(crate) fn into_core(self) -> Option<ObjectCore> {
        Arc::into_inner(self.core)
    }
}

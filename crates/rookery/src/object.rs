//! What an object author implements and what the runtime hands to each object.

use std::future::Future;
use std::sync::{Arc, Mutex, Weak};

use crate::alarm::AlarmInfo;
use crate::error::{Error, Result};
use crate::id::ObjectId;
use crate::request::Request;
use crate::response::Response;
use crate::runtime::RuntimeInner;
use crate::socket::registry::Frames;
use crate::socket::{ObjectSockets, Outgoing, SocketInner, WebSocket, WsMessage};
use crate::storage::Storage;
use crate::stub::Namespace;

/// A class of durable objects.
///
/// The runtime keeps at most one instance per object id and gives it one event at a time: each
/// handler call is a *turn* that runs to completion before the next starts. When a handler
/// returns `Ok`, the turn's storage writes commit together and its outputs are released once
/// they are durable; when it returns `Err`, panics or overruns the turn time limit, the writes
/// are rolled back and the instance is dropped, to be built afresh from storage.
pub trait DurableObject: Sized + Send + 'static {
    /// Builds an instance for the object that `state` belongs to.
    fn new(state: ObjectState, env: Env) -> Self;

    /// Handles an HTTP request addressed to this object.
    fn fetch(&mut self, req: Request) -> impl Future<Output = Result<Response>> + Send;

    /// Handles the object's alarm, set with `storage.set_alarm`. Runs as a turn like any other;
    /// the alarm is cleared when the turn starts (set it again from here to repeat). If this
    /// returns `Err`, panics or times out, the alarm is retried with exponential backoff (2 s,
    /// doubling, at most 6 retries) unless this handler set or deleted the alarm itself.
    fn alarm(&mut self, info: AlarmInfo) -> impl Future<Output = Result<()>> + Send {
        let _ = info;
        async { Ok(()) }
    }

    /// Handles a message from one of the object's WebSockets (a turn like any other).
    fn websocket_message(
        &mut self,
        ws: WebSocket,
        message: WsMessage,
    ) -> impl Future<Output = Result<()>> + Send {
        let _ = (ws, message);
        async { Ok(()) }
    }

    /// Handles the end of a WebSocket connection: `code` and `reason` from the client's close
    /// frame, or 1006 with `was_clean = false` when the connection just dropped. The socket is
    /// no longer among `get_websockets`.
    fn websocket_close(
        &mut self,
        ws: WebSocket,
        code: u16,
        reason: String,
        was_clean: bool,
    ) -> impl Future<Output = Result<()>> + Send {
        let _ = (ws, code, reason, was_clean);
        async { Ok(()) }
    }

    /// Handles a protocol or size error on a WebSocket; `websocket_close` follows.
    fn websocket_error(
        &mut self,
        ws: WebSocket,
        error: String,
    ) -> impl Future<Output = Result<()>> + Send {
        let _ = (ws, error);
        async { Ok(()) }
    }
}

/// The runtime's handle on one object: its id and its storage.
#[derive(Clone)]
pub struct ObjectState {
    core: Arc<ObjectCore>,
}

pub(crate) struct ObjectCore {
    pub(crate) id: ObjectId,
    pub(crate) class: Arc<str>,
    pub(crate) storage: Storage,
    pub(crate) sockets: Arc<ObjectSockets>,
    /// What the current turn sent on sockets, released when the turn's writes are durable.
    pub(crate) outbox: Mutex<Frames>,
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
        let sockets = self.core.sockets.list(tag);
        let mut outbox = self.outbox();
        outbox.reserve(sockets.len());
        for ws in sockets {
            if except != Some(&ws) {
                outbox.push((ws.inner, Outgoing::Message(message.clone())));
            }
        }
    }

    /// Answers text message `request` with `response` on every socket of this object without
    /// waking the instance (e.g. `ping` → `pong`); `None` turns it off. Survives hibernation.
    pub fn set_websocket_auto_response(&self, pair: Option<(&str, &str)>) {
        self.core.sockets.set_auto_response(pair);
    }

    /// When the runtime last answered `ws`'s auto-response request (ms since the epoch).
    pub fn get_websocket_auto_response_timestamp(&self, ws: &WebSocket) -> Option<i64> {
        match ws
            .inner
            .auto_response_at
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            0 => None,
            at => Some(at),
        }
    }

    fn outbox(&self) -> std::sync::MutexGuard<'_, Frames> {
        self.core.outbox.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `sockets` is this object's socket set.
    pub(crate) fn owns_sockets(&self, sockets: &Weak<ObjectSockets>) -> bool {
        std::ptr::eq(Arc::as_ptr(&self.core.sockets), sockets.as_ptr())
    }

    /// Holds a frame sent during the current turn.
    pub(crate) fn push_outgoing(&self, socket: Arc<SocketInner>, out: Outgoing) {
        self.outbox().push((socket, out));
    }

    /// Takes what the current turn sent.
    pub(crate) fn take_outbox(&self) -> Frames {
        std::mem::take(&mut *self.outbox())
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

/// The bindings an object can reach: namespaces of other classes by binding name.
#[derive(Clone)]
pub struct Env {
    rt: Arc<RuntimeInner>,
}

impl Env {
    pub(crate) fn new(rt: Arc<RuntimeInner>) -> Self {
        Self { rt }
    }

    /// The namespace bound under `binding`.
    pub fn namespace(&self, binding: &str) -> Result<Namespace> {
        RuntimeInner::namespace(&self.rt, binding)
    }
}

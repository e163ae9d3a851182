//! The runtime's handle on one object, as its instance sees it: id, storage, sockets, streams
//! and `wait_until` work.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;

use crate::background::{self, Background, Task};
use crate::error::{Error, Result};
use crate::id::ObjectId;
use crate::outbox;
use crate::request::Request;
use crate::socket::{Frame, ObjectSockets, WebSocket, WsMessage};
use crate::storage::{OutputGate, Storage};
use crate::stream::{self, BodyStream, Chunk, EVENT_STREAM, ObjectStreams};

/// The runtime's handle on one object: its id, its storage, its WebSockets and streams, and its
/// `wait_until` work.
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
    pub(crate) streams: ObjectStreams,
    pub(crate) background: Background,
}

/// What a turn emitted besides its reply, to release once its writes are durable or to discard
/// with it.
pub(crate) struct TurnOutputs {
    frames: Vec<Frame>,
    chunks: Vec<Chunk>,
    tasks: Vec<Task>,
}

impl TurnOutputs {
    /// Drops the outputs of a turn that failed.
    pub(crate) fn discard(self) {
        outbox::discard(self.frames);
        outbox::discard(self.chunks);
        outbox::discard(self.tasks);
    }
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
    ///
    /// Storage belongs to turns. `wait_until` work runs outside them, and calling this there
    /// panics (the panic is caught and logged with the work's other failures): its writes would
    /// join whichever turn runs at the moment. Work that must write calls the object instead,
    /// which runs a new turn.
    pub fn storage(&self) -> &Storage {
        if background::in_background() {
            panic!(
                "wait_until work called ObjectState::storage(): storage is reachable only inside \
                 a turn; call the object (a new turn) to read or write it"
            );
        }
        &self.core.storage
    }

    /// Runs `work` after this turn's outputs are released (its reply, sends and the writes
    /// they follow are durable), beside the object's later turns rather than inside them; if
    /// the turn fails, `work` is dropped with its writes. Outside a turn it starts at once.
    ///
    /// Each object may have `max_wait_until` pieces registered or running (256 by default;
    /// beyond, `Error::WaitUntilLimit`), each runs at most `wait_until_timeout` (30 s), and
    /// failures (errors, panics, the time limit) are logged with the object's class and id.
    /// The object stays in memory while work runs; at shutdown the runtime waits for it, up to
    /// the time limit. The work must not touch storage (see [`ObjectState::storage`]).
    pub fn wait_until<F>(&self, work: F) -> Result<()>
    where
        F: Future<Output = Result<()>> + Send + 'static,
    {
        self.core.background.add(Box::pin(work))
    }

    /// A new streamed response body with `content_type`, to answer with `Response::stream` and
    /// keep writing to from later turns. Sends from this object's turns are output-gated; the
    /// object stays in memory while a client reads one of its streams.
    pub fn stream(&self, content_type: &str) -> Result<BodyStream> {
        Ok(self
            .core
            .streams
            .create(stream::parse_content_type(content_type)?))
    }

    /// A new server-sent event stream (`text/event-stream`); see [`ObjectState::stream`].
    pub fn event_stream(&self) -> BodyStream {
        self.core
            .streams
            .create(HeaderValue::from_static(EVENT_STREAM))
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

    /// The id that marks this object's turns and outputs (see `crate::outbox`).
    pub(crate) fn owner(&self) -> u64 {
        self.core.sockets.owner()
    }

    /// Takes what the running turn emitted besides its reply.
    pub(crate) fn take_outputs(&self) -> TurnOutputs {
        TurnOutputs {
            frames: self.core.sockets.outbox().take(),
            chunks: self.core.streams.take(),
            tasks: self.core.background.take(),
        }
    }

    /// Releases what a turn emitted once everything committed so far is durable, after what
    /// earlier turns emitted.
    pub(crate) fn release_outputs(&self, sent: TurnOutputs) {
        // Most turns emit nothing of a kind; a gate costs a lock.
        if !sent.frames.is_empty() {
            self.core
                .sockets
                .outbox()
                .release(self.settled(), sent.frames);
        }
        if !sent.chunks.is_empty() {
            self.core.streams.release(self.settled(), sent.chunks);
        }
        if !sent.tasks.is_empty() {
            self.core.background.release(self.settled(), sent.tasks);
        }
    }

    /// Whether the object has work outside its turns (streams being read, `wait_until` work)
    /// that eviction would cut off.
    pub(crate) fn busy_outside_turns(&self) -> bool {
        self.core.streams.open() > 0 || self.core.background.pending() > 0
    }

    /// Waits up to `limit` for the object's `wait_until` work, then stops the rest; after
    /// this the object takes no more.
    pub(crate) async fn drain_background(&self, limit: Duration) {
        self.core.background.drain(limit).await;
    }

    /// Takes the object's core back if no one else holds this state.
    pub(crate) fn into_core(self) -> Option<ObjectCore> {
        Arc::into_inner(self.core)
    }
}

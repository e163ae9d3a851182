//! The sockets of one object, kept by the host so they outlive the instance; each socket's
//! bounded send queue; and the ordered, output-gated release of what turns send.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, Weak};

use bytes::Bytes;
use tokio::sync::Notify;

use super::{Outgoing, WebSocket, WsMessage, check_tags, close_code};
use crate::error::{Error, Result};
use crate::host::turn;
use crate::id::ObjectId;
use crate::runtime::{NamespaceInfo, RuntimeInner};
use crate::storage::OutputGate;

/// Most messages waiting to be written to one socket before it counts as a slow reader.
const MAX_QUEUED_MESSAGES: usize = 4096;
/// Most bytes waiting to be written to one socket before it counts as a slow reader.
const MAX_QUEUED_BYTES: usize = 8 * 1024 * 1024;

static NEXT_SOCKET_ID: AtomicU64 = AtomicU64::new(1);

/// Frames a turn sent, waiting for the turn's outcome.
pub(crate) type Frames = Vec<(Arc<SocketInner>, Outgoing)>;

/// One socket as the runtime keeps it.
pub(crate) struct SocketInner {
    pub(crate) id: u64,
    pub(crate) tags: Box<[String]>,
    pub(crate) hibernatable: bool,
    pub(crate) attachment: Mutex<Option<Bytes>>,
    /// When the runtime last answered this socket's auto-response request (ms; 0: never).
    pub(crate) auto_response_at: AtomicI64,
    queue: Mutex<Queue>,
    ready: Notify,
    pub(crate) owner: Weak<ObjectSockets>,
}

#[derive(Default)]
struct Queue {
    items: VecDeque<Outgoing>,
    bytes: usize,
    /// A close frame is queued or the connection is gone: nothing more is accepted.
    closing: bool,
}

impl SocketInner {
    fn queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the socket still takes messages.
    pub(crate) fn is_open(&self) -> bool {
        !self.queue().closing
    }

    /// Sends `out` now, or, inside a turn of the owning object, when the turn's writes are
    /// durable.
    pub(crate) fn emit(self: &Arc<Self>, out: Outgoing) {
        let mut out = Some(out);
        turn::with_current(|ctx| {
            if ctx.caller.owns_sockets(&self.owner)
                && let Some(out) = out.take()
            {
                ctx.caller.push_outgoing(self.clone(), out);
            }
        });
        if let Some(out) = out {
            self.deliver(out);
        }
    }

    /// Queues `out` for the connection.
    pub(crate) fn deliver(&self, out: Outgoing) {
        let mut q = self.queue();
        if q.closing {
            return;
        }
        match out {
            Outgoing::Close(..) => {
                q.closing = true;
                q.items.push_back(out);
            }
            Outgoing::Message(m) => {
                if q.items.len() >= MAX_QUEUED_MESSAGES || q.bytes + m.len() > MAX_QUEUED_BYTES {
                    // A client that does not read gets closed, not an ever-growing queue.
                    q.items.clear();
                    q.bytes = 0;
                    q.closing = true;
                    q.items.push_back(Outgoing::Close(
                        close_code::POLICY,
                        "send queue full: the client does not read".into(),
                    ));
                } else {
                    q.bytes += m.len();
                    q.items.push_back(Outgoing::Message(m));
                }
            }
        }
        drop(q);
        self.ready.notify_one();
    }

    /// Moves everything queued into `buf`.
    pub(crate) fn take(&self, buf: &mut Vec<Outgoing>) {
        let mut q = self.queue();
        q.bytes = 0;
        buf.extend(q.items.drain(..));
    }

    /// Waits until something is queued.
    pub(crate) async fn ready(&self) {
        if !self.queue().items.is_empty() {
            return;
        }
        // Only the connection's task waits here; `notify_one` keeps a permit for it.
        self.ready.notified().await;
    }

    /// Marks the connection gone: nothing more is queued.
    pub(crate) fn end(&self) {
        let mut q = self.queue();
        q.closing = true;
        q.items.clear();
        q.bytes = 0;
    }
}

/// Sends of earlier turns waiting for their gates, in turn order.
#[derive(Default)]
struct Release {
    pending: VecDeque<(OutputGate, Frames)>,
    draining: bool,
}

/// The sockets of one object.
pub(crate) struct ObjectSockets {
    pub(crate) ns: Arc<NamespaceInfo>,
    pub(crate) id: ObjectId,
    pub(crate) rt: Weak<RuntimeInner>,
    limit: usize,
    sockets: Mutex<HashMap<u64, Arc<SocketInner>>>,
    plain: AtomicUsize,
    /// The auto-response pair: a text request answered with a message, without the instance.
    auto: RwLock<Option<(Bytes, WsMessage)>>,
    release: Mutex<Release>,
}

impl ObjectSockets {
    pub(crate) fn new(rt: &Arc<RuntimeInner>, ns: Arc<NamespaceInfo>, id: ObjectId) -> Self {
        Self {
            ns,
            id,
            rt: Arc::downgrade(rt),
            limit: rt.options.host.max_sockets_per_object,
            sockets: Mutex::new(HashMap::new()),
            plain: AtomicUsize::new(0),
            auto: RwLock::new(None),
            release: Mutex::new(Release::default()),
        }
    }

    fn sockets(&self) -> MutexGuard<'_, HashMap<u64, Arc<SocketInner>>> {
        self.sockets.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a new socket.
    pub(crate) fn accept(self: &Arc<Self>, tags: &[&str], hibernatable: bool) -> Result<WebSocket> {
        check_tags(tags)?;
        let mut sockets = self.sockets();
        if sockets.len() >= self.limit {
            return Err(Error::SocketLimit(self.limit));
        }
        let inner = Arc::new(SocketInner {
            id: NEXT_SOCKET_ID.fetch_add(1, Ordering::Relaxed),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            hibernatable,
            attachment: Mutex::new(None),
            auto_response_at: AtomicI64::new(0),
            queue: Mutex::new(Queue::default()),
            ready: Notify::new(),
            owner: Arc::downgrade(self),
        });
        sockets.insert(inner.id, inner.clone());
        if !hibernatable {
            self.plain.fetch_add(1, Ordering::Relaxed);
        }
        Ok(WebSocket { inner })
    }

    /// Forgets a socket whose connection ended.
    pub(crate) fn remove(&self, id: u64) {
        if let Some(s) = self.sockets().remove(&id)
            && !s.hibernatable
        {
            self.plain.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// The open sockets, those with `tag` if given.
    pub(crate) fn list(&self, tag: Option<&str>) -> Vec<WebSocket> {
        self.sockets()
            .values()
            .filter(|s| tag.is_none_or(|t| s.tags.iter().any(|x| x == t)))
            .map(|s| WebSocket { inner: s.clone() })
            .collect()
    }

    /// Number of open sockets.
    pub(crate) fn len(&self) -> usize {
        self.sockets().len()
    }

    /// Number of open plain (non-hibernatable) sockets.
    pub(crate) fn plain(&self) -> usize {
        self.plain.load(Ordering::Relaxed)
    }

    /// Sets (or clears) the auto-response pair.
    pub(crate) fn set_auto_response(&self, pair: Option<(&str, &str)>) {
        *self.auto.write().unwrap_or_else(|e| e.into_inner()) = pair.map(|(req, resp)| {
            (
                Bytes::copy_from_slice(req.as_bytes()),
                WsMessage::text(resp),
            )
        });
    }

    /// The automatic answer to `message`, if it is the auto-response request.
    pub(crate) fn auto_reply(&self, message: &WsMessage) -> Option<WsMessage> {
        let auto = self.auto.read().unwrap_or_else(|e| e.into_inner());
        match (&*auto, message) {
            (Some((req, resp)), WsMessage::Text(text)) if req == text => Some(resp.clone()),
            _ => None,
        }
    }

    /// Releases `frames` when `gate` opens, after every earlier turn's frames.
    pub(crate) fn release(self: &Arc<Self>, gate: OutputGate, frames: Frames) {
        if frames.is_empty() {
            return;
        }
        let mut release = self.release.lock().unwrap_or_else(|e| e.into_inner());
        if !release.draining && release.pending.is_empty() && gate.is_open() {
            drop(release);
            deliver_all(frames);
            return;
        }
        release.pending.push_back((gate, frames));
        if !release.draining {
            release.draining = true;
            tokio::spawn(drain(self.clone()));
        }
    }

    /// Closes every socket (shutdown, or plain sockets when their instance is gone).
    pub(crate) fn close_all(&self, code: u16, reason: &str, plain_only: bool) {
        for s in self.sockets().values() {
            if !plain_only || !s.hibernatable {
                s.deliver(Outgoing::Close(code, reason.to_string()));
            }
        }
    }
}

fn deliver_all(frames: Frames) {
    for (socket, out) in frames {
        socket.deliver(out);
    }
}

async fn drain(sockets: Arc<ObjectSockets>) {
    loop {
        let next = {
            let mut release = sockets.release.lock().unwrap_or_else(|e| e.into_inner());
            match release.pending.pop_front() {
                Some(next) => next,
                None => {
                    release.draining = false;
                    return;
                }
            }
        };
        let (gate, frames) = next;
        // A failed commit discards what its turn sent.
        if gate.wait().await.is_ok() {
            deliver_all(frames);
        }
    }
}

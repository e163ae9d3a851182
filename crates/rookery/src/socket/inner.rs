//! One socket as the runtime keeps it: its tags, its attachment and its bounded send queue,
//! which the connection's task drains.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::Notify;

use super::{Outgoing, close_code};

/// Most messages waiting to be written to one socket before it counts as a slow reader.
const MAX_QUEUED_MESSAGES: usize = 4096;
/// Most bytes waiting to be written to one socket before it counts as a slow reader.
const MAX_QUEUED_BYTES: usize = 8 * 1024 * 1024;

/// One socket as the runtime keeps it.
pub(crate) struct SocketInner {
    pub(crate) id: u64,
    pub(crate) tags: Box<[String]>,
    pub(crate) hibernatable: bool,
    pub(crate) attachment: Mutex<Option<Bytes>>,
    /// When the runtime last answered this socket's auto-response request (ms; 0: never).
    pub(crate) auto_response_at: AtomicI64,
    /// Which object's outbox holds this socket's sends during that object's turns.
    pub(crate) owner: u64,
    /// Whether a response handed the socket to a connection.
    claimed: AtomicBool,
    queue: Mutex<Queue>,
    ready: Notify,
}

#[derive(Default)]
struct Queue {
    items: VecDeque<Outgoing>,
    bytes: usize,
    /// A close frame is queued or the connection is gone: nothing more is accepted.
    closing: bool,
}

impl SocketInner {
    /// A new open socket with `id` and `tags`, owned by the object whose sockets have `owner`.
    pub(crate) fn new(id: u64, owner: u64, tags: &[&str], hibernatable: bool) -> Self {
        Self {
            id,
            tags: tags.iter().map(|t| t.to_string()).collect(),
            hibernatable,
            attachment: Mutex::new(None),
            auto_response_at: AtomicI64::new(0),
            owner,
            claimed: AtomicBool::new(false),
            queue: Mutex::new(Queue::default()),
            ready: Notify::new(),
        }
    }

    fn queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks the socket handed to a connection; false if it was already.
    pub(crate) fn claim(&self) -> bool {
        !self.claimed.swap(true, Ordering::AcqRel)
    }

    /// Whether a response handed the socket to a connection.
    pub(crate) fn is_claimed(&self) -> bool {
        self.claimed.load(Ordering::Acquire)
    }

    /// Whether the socket still takes messages.
    pub(crate) fn is_open(&self) -> bool {
        !self.queue().closing
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

//! The sockets of one object, kept by the host so they outlive the instance.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, Weak};

use bytes::Bytes;

use super::events::SocketEvents;
use super::inner::SocketInner;
use super::{Frame, Outgoing, WebSocket, WsMessage, check_tags, close_code};
use crate::addr::ObjectAddr;
use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::outbox::Outbox;

/// Socket ids, unique within the process.
static NEXT_SOCKET_ID: AtomicU64 = AtomicU64::new(1);
/// Socket-set ids, unique within the process: the *owner* id that ties the object's turns to
/// its outboxes (sockets, streams, `wait_until` work).
static NEXT_SET_ID: AtomicU64 = AtomicU64::new(1);

/// The sockets of one object.
pub(crate) struct ObjectSockets {
    /// The object they belong to.
    pub(crate) addr: ObjectAddr,
    /// Where the connections' events go (the host).
    pub(super) events: Weak<dyn SocketEvents>,
    /// Stamps auto-responses.
    pub(super) clock: Arc<dyn Clock>,
    limit: usize,
    sockets: Mutex<HashMap<u64, Arc<SocketInner>>>,
    plain: AtomicUsize,
    /// The auto-response pair: a text request answered with a message, without the instance.
    auto: RwLock<Option<(Bytes, WsMessage)>>,
    outbox: Arc<Outbox<Frame>>,
    /// Sockets accepted during the running turn, to end at its end if no response claimed them.
    accepted: Mutex<Vec<Arc<SocketInner>>>,
    /// This set, for the sockets handed out (the transport links back through it).
    me: Weak<ObjectSockets>,
}

impl ObjectSockets {
    /// An empty set for the object at `addr`, holding at most `limit` sockets, whose events go
    /// to `events`.
    pub(crate) fn new(
        addr: ObjectAddr,
        events: Weak<dyn SocketEvents>,
        clock: Arc<dyn Clock>,
        limit: usize,
    ) -> Arc<Self> {
        Arc::new_cyclic(|me| Self {
            addr,
            events,
            clock,
            limit,
            sockets: Mutex::new(HashMap::new()),
            plain: AtomicUsize::new(0),
            auto: RwLock::new(None),
            outbox: Arc::new(Outbox::new(NEXT_SET_ID.fetch_add(1, Ordering::Relaxed))),
            accepted: Mutex::new(Vec::new()),
            me: me.clone(),
        })
    }

    fn handle(&self, inner: &Arc<SocketInner>) -> WebSocket {
        WebSocket {
            inner: inner.clone(),
            owner: self.me.clone(),
        }
    }

    /// Where this object's turns hold what they send.
    pub(crate) fn outbox(&self) -> &Arc<Outbox<Frame>> {
        &self.outbox
    }

    /// The id that marks this object's turns and outputs (see `crate::outbox`).
    pub(crate) fn owner(&self) -> u64 {
        self.outbox.owner()
    }

    fn sockets(&self) -> MutexGuard<'_, HashMap<u64, Arc<SocketInner>>> {
        self.sockets.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a new socket.
    pub(crate) fn accept(&self, tags: &[&str], hibernatable: bool) -> Result<WebSocket> {
        check_tags(tags)?;
        let mut sockets = self.sockets();
        if sockets.len() >= self.limit {
            return Err(Error::SocketLimit(self.limit));
        }
        let inner = Arc::new(SocketInner::new(
            NEXT_SOCKET_ID.fetch_add(1, Ordering::Relaxed),
            self.outbox.owner(),
            tags,
            hibernatable,
        ));
        sockets.insert(inner.id, inner.clone());
        if !hibernatable {
            self.plain.fetch_add(1, Ordering::Relaxed);
        }
        drop(sockets);
        self.accepted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(inner.clone());
        Ok(self.handle(&inner))
    }

    /// The sockets accepted since the last call that no response has claimed.
    pub(super) fn take_unclaimed(&self) -> Vec<Arc<SocketInner>> {
        let mut accepted = self.accepted.lock().unwrap_or_else(|e| e.into_inner());
        let mut unclaimed = std::mem::take(&mut *accepted);
        unclaimed.retain(|s| !s.is_claimed());
        unclaimed
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
            .map(|s| self.handle(s))
            .collect()
    }

    /// Sends `message` to every open socket (tagged `tag` if given) but the one with id
    /// `except`, held like any send of a turn; the message's bytes are shared, not copied.
    pub(crate) fn broadcast(&self, message: &WsMessage, tag: Option<&str>, except: Option<u64>) {
        let targets: Vec<Arc<SocketInner>> = self
            .sockets()
            .values()
            .filter(|s| Some(s.id) != except)
            .filter(|s| tag.is_none_or(|t| s.tags.iter().any(|x| x == t)))
            .cloned()
            .collect();
        let held = self.outbox.hold_with(|held| {
            held.reserve(targets.len());
            for s in &targets {
                held.push(Frame {
                    socket: s.clone(),
                    out: Outgoing::Message(message.clone()),
                });
            }
        });
        if held.is_none() {
            for s in targets {
                s.deliver(Outgoing::Message(message.clone()));
            }
        }
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

    /// At shutdown: plain sockets are closed with 1001; hibernatable ones are dropped without a
    /// close frame ([`Outgoing::Close`] with 1006), because their object outlives this process
    /// and a browser reports a dropped connection as not clean (`wasClean == false`), which is
    /// what makes clients such as Waddle's reconnect and replay (docs/PROTOCOL.md).
    pub(crate) fn close_for_shutdown(&self) {
        for s in self.sockets().values() {
            let code = if s.hibernatable {
                close_code::ABNORMAL
            } else {
                close_code::GOING_AWAY
            };
            s.deliver(Outgoing::Close(
                code,
                "the server is shutting down".to_string(),
            ));
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

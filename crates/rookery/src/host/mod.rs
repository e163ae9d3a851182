//! The host: the registry of live objects, their mailboxes, activation and eviction.
//!
//! Every live object is one tokio task that owns the instance and drains a bounded mailbox, one
//! event (turn) at a time. The registry maps object keys to mailboxes. A sender enqueues while
//! holding its registry shard, and an idle activation leaves the registry only under the same
//! shard lock and only with an empty mailbox, so an event is never lost to an activation that is
//! going away, and a second activation of the same object never runs beside the first.

pub(crate) mod activation;
mod alarm_turn;
mod placement;
pub(crate) mod turn;

use std::any::Any;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use tokio::sync::{mpsc, oneshot, watch};

pub use placement::{LocalPlacement, Location, Placement};

use crate::alarm::AlarmOutcome;
use crate::error::{Error, Result};
use crate::id::{ID_BYTES, ObjectId};
use crate::object::ObjectState;
use crate::request::Request;
use crate::response::Response;
use crate::runtime::{NamespaceInfo, RuntimeInner};
use crate::socket::{ObjectSockets, WebSocket, WsMessage, close_code};
use crate::storage::OutputGate;
use activation::Activation;
use turn::CallChain;

/// Identifies an object within a runtime: its namespace and its id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct ObjectKey {
    pub(crate) ns: u32,
    pub(crate) id: [u8; ID_BYTES],
}

/// An event for an object; each one is handled as one turn.
// Requests are the common event: keeping them inline saves an allocation per request.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Event {
    /// An HTTP request, from the gateway or another object.
    Fetch {
        req: Request,
        chain: CallChain,
        reply: oneshot::Sender<TurnOutput<Response>>,
    },
    /// The object's alarm may be due; `force` fires a set alarm whatever its time (tests).
    Alarm {
        force: bool,
        reply: oneshot::Sender<AlarmOutcome>,
    },
    /// Something happened on one of the object's WebSockets.
    Socket {
        socket: WebSocket,
        kind: SocketEventKind,
    },
    /// A closure run as a turn against the object's state, without its instance (tests, tools).
    Run {
        job: RunJob,
        reply: oneshot::Sender<TurnOutput<Box<dyn Any + Send>>>,
    },
}

/// What happened on a WebSocket.
#[derive(Debug, Clone)]
pub(crate) enum SocketEventKind {
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

/// Work for [`Event::Run`].
pub(crate) type RunJob = Box<dyn FnOnce(&ObjectState) -> Result<Box<dyn Any + Send>> + Send>;

/// A turn's result and the gate it must pass before anyone may see it.
pub(crate) struct TurnOutput<T> {
    pub(crate) result: Result<T>,
    pub(crate) gate: OutputGate,
}

/// Puts `event` in `mailbox`: `Ok(None)` when queued, `Ok(Some(event))` back when the mailbox
/// is closed, `Overloaded` when it is full.
fn offer(mailbox: &mpsc::Sender<Event>, event: Event) -> Result<Option<Event>> {
    match mailbox.try_send(event) {
        Ok(()) => Ok(None),
        Err(mpsc::error::TrySendError::Full(_)) => Err(Error::Overloaded),
        Err(mpsc::error::TrySendError::Closed(event)) => Ok(Some(event)),
    }
}

/// How the host runs objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostOptions {
    /// Events that may wait in one object's mailbox before it answers "overloaded".
    pub mailbox_capacity: usize,
    /// Wall-time limit of one turn.
    pub turn_timeout: Duration,
    /// How long an object stays in memory without events.
    pub idle_timeout: Duration,
    /// How long an object whose only activity is hibernatable WebSockets stays in memory.
    pub hibernation_idle: Duration,
    /// Most WebSockets per object; more are refused before the handshake.
    pub max_sockets_per_object: usize,
    /// Largest WebSocket message in bytes; a bigger one closes the socket with 1009.
    pub max_message_bytes: usize,
    /// Most objects in memory at once (each holds a few open files); beyond it, idle objects
    /// are evicted early. 0: derived from the process's open-file limit.
    pub max_live_objects: usize,
}

impl Default for HostOptions {
    fn default() -> Self {
        Self {
            mailbox_capacity: 1000,
            turn_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(70),
            hibernation_idle: Duration::from_secs(10),
            max_sockets_per_object: 32_768,
            max_message_bytes: 32 * 1024 * 1024,
            max_live_objects: 0,
        }
    }
}

struct Slot {
    mailbox: mpsc::Sender<Event>,
    generation: u64,
}

/// The registry of live objects.
pub(crate) struct Host {
    objects: DashMap<ObjectKey, Slot>,
    /// The WebSockets of each object that has any (or a live activation); kept here, not in
    /// the activation, so they outlive hibernation.
    sockets: DashMap<ObjectKey, Arc<ObjectSockets>>,
    generations: AtomicU64,
    closing: AtomicBool,
    /// Number of activations whose task has not finished.
    live: watch::Sender<usize>,
    activations: AtomicU64,
    /// Most live objects before idle ones are asked to leave.
    max_live: usize,
    /// Bumped to ask idle activations to leave memory.
    pressure: watch::Sender<u64>,
    /// How many more idle activations should leave.
    evictions_wanted: AtomicI64,
}

impl Host {
    pub(crate) fn new(max_live: usize) -> Self {
        Self {
            max_live: max_live.max(1),
            pressure: watch::Sender::new(0),
            evictions_wanted: AtomicI64::new(0),
            objects: DashMap::new(),
            sockets: DashMap::new(),
            generations: AtomicU64::new(0),
            closing: AtomicBool::new(false),
            live: watch::Sender::new(0),
            activations: AtomicU64::new(0),
        }
    }

    /// Objects that have a live activation now.
    pub(crate) fn live_objects(&self) -> usize {
        *self.live.borrow()
    }

    /// Activations started since the host began.
    pub(crate) fn activations(&self) -> u64 {
        self.activations.load(Ordering::Relaxed)
    }

    /// Delivers `event` to object `id` of namespace `ns`, activating it if needed.
    pub(crate) fn dispatch(
        rt: &Arc<RuntimeInner>,
        ns: &Arc<NamespaceInfo>,
        id: &ObjectId,
        mut event: Event,
    ) -> Result<()> {
        let host = &rt.host;
        let key = ObjectKey {
            ns: ns.idx,
            id: *id.as_bytes(),
        };
        if let Location::Remote(node) = rt.placement.locate(&ns.class_name, id) {
            return Err(Error::msg(format!(
                "object {id} is owned by node {node}; this node does not forward yet"
            )));
        }
        // A mailbox can be found closed only if its activation died unexpectedly; then the slot
        // is cleared and the event goes to a new activation.
        for _ in 0..3 {
            if host.closing.load(Ordering::SeqCst) {
                return Err(Error::ShuttingDown);
            }
            let offered = match host.objects.get(&key) {
                Some(slot) => offer(&slot.mailbox, event)?,
                None => {
                    let slot = host
                        .objects
                        .entry(key)
                        .or_insert_with(|| host.activate(rt, ns, id, key));
                    // Shutdown sets `closing` before it clears the registry: if it is not set
                    // now, this slot was inserted before the clear and goes with it.
                    if host.closing.load(Ordering::SeqCst) {
                        drop(slot);
                        host.objects.remove(&key);
                        return Err(Error::ShuttingDown);
                    }
                    offer(&slot.mailbox, event)?
                }
            };
            match offered {
                None => return Ok(()),
                Some(back) => {
                    event = back;
                    host.forget_closed(&key);
                }
            }
        }
        Err(Error::msg("the object could not be activated"))
    }

    /// Starts an activation of object `id` and returns its registry slot.
    fn activate(
        &self,
        rt: &Arc<RuntimeInner>,
        ns: &Arc<NamespaceInfo>,
        id: &ObjectId,
        key: ObjectKey,
    ) -> Slot {
        let (tx, rx) = mpsc::channel(rt.options.host.mailbox_capacity.max(1));
        let generation = self.generations.fetch_add(1, Ordering::Relaxed);
        self.activations.fetch_add(1, Ordering::Relaxed);
        self.live.send_modify(|n| *n += 1);
        self.relieve_pressure();
        ns.class.start(
            Activation {
                rt: rt.clone(),
                ns: ns.clone(),
                id: id.clone(),
                key,
                generation,
            },
            rx,
        );
        Slot {
            mailbox: tx,
            generation,
        }
    }

    /// Clears the slot of an activation that died with its mailbox.
    fn forget_closed(&self, key: &ObjectKey) {
        self.objects
            .remove_if(key, |_, slot| slot.mailbox.is_closed());
    }

    /// The socket set of an object, made if it has none.
    pub(crate) fn sockets_for(
        rt: &Arc<RuntimeInner>,
        ns: &Arc<NamespaceInfo>,
        id: &ObjectId,
        key: ObjectKey,
    ) -> Arc<ObjectSockets> {
        rt.host
            .sockets
            .entry(key)
            .or_insert_with(|| Arc::new(ObjectSockets::new(rt, ns.clone(), id.clone())))
            .clone()
    }

    /// The number of open WebSockets of an object.
    pub(crate) fn socket_count(&self, key: &ObjectKey) -> usize {
        self.sockets.get(key).map_or(0, |s| s.len())
    }

    /// Forgets an object's socket set if it has no sockets left (its activation is ending).
    pub(crate) fn drop_sockets_if_empty(&self, key: &ObjectKey) {
        self.sockets.remove_if(key, |_, s| s.len() == 0);
    }

    /// Asks idle activations to leave if too many objects are live: a tenth below the limit,
    /// so that the next activations do not ask again at once.
    fn relieve_pressure(&self) {
        let live = *self.live.borrow();
        if live > self.max_live && self.evictions_wanted.load(Ordering::Acquire) <= 0 {
            let excess = live - self.max_live * 9 / 10;
            self.evictions_wanted
                .store(i64::try_from(excess).unwrap_or(i64::MAX), Ordering::Release);
            self.pressure.send_modify(|n| *n += 1);
        }
    }

    /// A subscription to requests for idle activations to leave.
    pub(crate) fn pressure(&self) -> watch::Receiver<u64> {
        self.pressure.subscribe()
    }

    /// Whether an idle activation asked to leave should (one of the wanted evictions).
    pub(crate) fn take_eviction(&self) -> bool {
        self.evictions_wanted.fetch_sub(1, Ordering::AcqRel) > 0
    }

    /// Removes an idle activation's slot, if its mailbox is still empty.
    fn evict(&self, key: &ObjectKey, generation: u64, mailbox: &mpsc::Receiver<Event>) -> bool {
        self.objects
            .remove_if(key, |_, slot| {
                slot.generation == generation && mailbox.is_empty()
            })
            .is_some()
    }

    /// Removes a failed activation's slot.
    fn forget(&self, key: &ObjectKey, generation: u64) {
        self.objects
            .remove_if(key, |_, slot| slot.generation == generation);
    }

    /// Stops taking events, lets every activation finish what it has queued, and waits for them
    /// to close their storage (at most `wait`).
    pub(crate) async fn shutdown(&self, wait: Duration) -> bool {
        self.closing.store(true, Ordering::SeqCst);
        // Dropping the slots closes the mailboxes; each activation works off its queue and ends.
        self.objects.clear();
        for sockets in self.sockets.iter() {
            sockets.close_all(close_code::GOING_AWAY, "the server is shutting down", false);
        }
        let mut live = self.live.subscribe();
        tokio::time::timeout(wait, live.wait_for(|n| *n == 0))
            .await
            .is_ok()
    }
}

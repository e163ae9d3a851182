//! The host: the registry of live objects, their mailboxes, activation and eviction.
//!
//! Every live object is one tokio task that owns the instance and drains a bounded mailbox, one
//! event (turn) at a time. The registry maps object keys to mailboxes. A sender enqueues while
//! holding its registry shard, and an idle activation leaves the registry only under the same
//! shard lock and only with an empty mailbox, so an event is never lost to an activation that is
//! going away, and a second activation of the same object never runs beside the first.
//!
//! [`Host`] is a cheap handle: stubs, environments, the alarm scheduler and (through
//! [`SocketEvents`]) the sockets hold one to deliver events.

pub(crate) mod activation;
pub(crate) mod alarm_event;
mod alarm_turn;
pub(crate) mod class;
pub(crate) mod event;
mod placement;
pub(crate) mod turn;
pub(crate) mod waits;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use dashmap::DashMap;
use tokio::sync::{mpsc, watch};

pub use placement::{LocalPlacement, Location, Placement};

use crate::addr::{ClassInfo, ObjectAddr, ObjectKey};
use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::outbound::Outbound;
use crate::socket::{ObjectSockets, SocketEvent, SocketEvents, WebSocket};
use crate::storage::StorageContext;
use crate::vars::Vars;
use activation::{Activation, ClassFactory};
use event::Event;
use waits::Waits;

/// How the host runs objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostOptions {
    /// Events that may wait in one object's mailbox before it answers "overloaded".
    pub mailbox_capacity: usize,
    /// Wall-time limit of one turn.
    pub turn_timeout: Duration,
    /// Wall-time limit of an alarm handler's turn (longer: alarms do background work).
    pub alarm_timeout: Duration,
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
    /// Most `wait_until` work one object may have registered or running.
    pub max_wait_until: usize,
    /// Wall-time limit of one piece of `wait_until` work; also how long the runtime waits for
    /// an object's work before it closes the object.
    pub wait_until_timeout: Duration,
}

impl Default for HostOptions {
    fn default() -> Self {
        Self {
            mailbox_capacity: 1000,
            turn_timeout: Duration::from_secs(30),
            alarm_timeout: Duration::from_secs(15 * 60),
            idle_timeout: Duration::from_secs(70),
            hibernation_idle: Duration::from_secs(10),
            max_sockets_per_object: 32_768,
            max_message_bytes: 32 * 1024 * 1024,
            max_live_objects: 0,
            max_wait_until: 256,
            wait_until_timeout: Duration::from_secs(30),
        }
    }
}

/// A class the host can run: its description and how to start its activations.
pub(crate) struct HostedClass {
    pub(crate) info: Arc<ClassInfo>,
    pub(crate) factory: Arc<dyn ClassFactory>,
}

/// What a host is made of.
pub(crate) struct HostParts {
    /// The hosted classes, each at the position of its `ClassInfo::idx`.
    pub(crate) classes: Vec<HostedClass>,
    /// The classes reachable by binding name.
    pub(crate) bindings: HashMap<String, Arc<ClassInfo>>,
    /// What every object's storage shares.
    pub(crate) storage: Arc<StorageContext>,
    pub(crate) options: HostOptions,
    pub(crate) placement: Arc<dyn Placement>,
    /// What objects reach through `Env` besides namespaces.
    pub(crate) reach: Reach,
}

/// What objects reach through `Env` besides namespaces: vars and secrets, outbound HTTP.
#[derive(Clone)]
pub(crate) struct Reach {
    pub(crate) vars: Arc<Vars>,
    pub(crate) outbound: Arc<dyn Outbound>,
}

struct Slot {
    mailbox: mpsc::Sender<Event>,
    generation: u64,
}

/// A handle on the registry of live objects; cheap to clone.
#[derive(Clone)]
pub(crate) struct Host(Arc<HostInner>);

/// A handle that does not keep the host alive.
#[derive(Clone)]
pub(crate) struct WeakHost(Weak<HostInner>);

impl WeakHost {
    /// The host, if it is still there.
    pub(crate) fn upgrade(&self) -> Option<Host> {
        self.0.upgrade().map(Host)
    }
}

pub(crate) struct HostInner {
    objects: DashMap<ObjectKey, Slot>,
    /// The WebSockets of each object that has any (or a live activation); kept here, not in
    /// the activation, so they outlive hibernation.
    sockets: DashMap<ObjectKey, Arc<ObjectSockets>>,
    classes: Vec<HostedClass>,
    bindings: HashMap<String, Arc<ClassInfo>>,
    by_uid: HashMap<Arc<str>, Arc<ClassInfo>>,
    storage: Arc<StorageContext>,
    options: HostOptions,
    placement: Arc<dyn Placement>,
    reach: Reach,
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
    /// Activations that left the registry and are still closing their storage, by key: a new
    /// activation of the same object waits until its predecessor has let go of the files.
    retiring: DashMap<ObjectKey, (u64, watch::Sender<()>)>,
    /// The calls running turns wait for, to refuse deadlocks.
    waits: Arc<Waits>,
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

impl Host {
    /// A host of `parts`, with no live object yet.
    pub(crate) fn new(parts: HostParts) -> Self {
        let by_uid = parts
            .classes
            .iter()
            .map(|c| (c.info.uid.clone(), c.info.clone()))
            .collect();
        Self(Arc::new(HostInner {
            max_live: parts.options.max_live_objects.max(1),
            pressure: watch::Sender::new(0),
            evictions_wanted: AtomicI64::new(0),
            objects: DashMap::new(),
            sockets: DashMap::new(),
            classes: parts.classes,
            bindings: parts.bindings,
            by_uid,
            storage: parts.storage,
            options: parts.options,
            placement: parts.placement,
            reach: parts.reach,
            generations: AtomicU64::new(0),
            closing: AtomicBool::new(false),
            live: watch::Sender::new(0),
            activations: AtomicU64::new(0),
            retiring: DashMap::new(),
            waits: Arc::default(),
        }))
    }

    /// A handle that does not keep the host alive.
    pub(crate) fn downgrade(&self) -> WeakHost {
        WeakHost(Arc::downgrade(&self.0))
    }

    /// How objects are run.
    pub(crate) fn options(&self) -> &HostOptions {
        &self.0.options
    }

    /// What every object's storage shares.
    pub(crate) fn storage(&self) -> &Arc<StorageContext> {
        &self.0.storage
    }

    /// The calls running turns wait for.
    pub(crate) fn waits(&self) -> &Arc<Waits> {
        &self.0.waits
    }

    /// The clock alarms and objects run by.
    pub(crate) fn clock(&self) -> &Arc<dyn Clock> {
        &self.0.storage.clock
    }

    /// What objects reach through `Env` besides namespaces.
    pub(crate) fn reach(&self) -> &Reach {
        &self.0.reach
    }

    /// The class bound under `binding`.
    pub(crate) fn binding(&self, binding: &str) -> Result<&Arc<ClassInfo>> {
        self.0
            .bindings
            .get(binding)
            .ok_or_else(|| Error::UnknownBinding(binding.to_string()))
    }

    /// The binding names, sorted.
    pub(crate) fn binding_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.0.bindings.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// The hosted class with stable uid `uid`.
    pub(crate) fn class_by_uid(&self, uid: &str) -> Option<&Arc<ClassInfo>> {
        self.0.by_uid.get(uid)
    }

    /// Objects that have a live activation now.
    pub(crate) fn live_objects(&self) -> usize {
        *self.0.live.borrow()
    }

    /// Activations started since the host began.
    pub(crate) fn activations(&self) -> u64 {
        self.0.activations.load(Ordering::Relaxed)
    }

    /// Delivers `event` to the object at `addr`, activating it if needed.
    pub(crate) fn dispatch(&self, addr: &ObjectAddr, mut event: Event) -> Result<()> {
        let host = &self.0;
        let key = addr.key();
        if let Location::Remote(node) = host.placement.locate(&addr.class.name, &addr.id) {
            return Err(Error::msg(format!(
                "object {} is owned by node {node}; this node does not forward yet",
                addr.id
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
                        .or_insert_with(|| self.activate(addr));
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
                    host.objects
                        .remove_if(&key, |_, slot| slot.mailbox.is_closed());
                }
            }
        }
        Err(Error::msg("the object could not be activated"))
    }

    /// Starts an activation of the object at `addr` and returns its registry slot.
    fn activate(&self, addr: &ObjectAddr) -> Slot {
        let host = &self.0;
        let (tx, rx) = mpsc::channel(host.options.mailbox_capacity.max(1));
        let generation = host.generations.fetch_add(1, Ordering::Relaxed);
        host.activations.fetch_add(1, Ordering::Relaxed);
        host.live.send_modify(|n| *n += 1);
        self.relieve_pressure();
        let activation = Activation {
            host: self.clone(),
            addr: addr.clone(),
            generation,
        };
        match host.classes.get(addr.class.idx as usize) {
            Some(class) => class.factory.start(activation, rx),
            // Addresses are made from the host's own classes; a stray one finds its mailbox
            // closed and its event refused.
            None => {
                drop((activation, rx));
            }
        }
        Slot {
            mailbox: tx,
            generation,
        }
    }

    /// Counts an activation's task as ended.
    fn activation_ended(&self) {
        self.0.live.send_modify(|n| *n = n.saturating_sub(1));
    }

    /// The socket set of an object, made if it has none.
    pub(crate) fn sockets_for(&self, addr: &ObjectAddr) -> Arc<ObjectSockets> {
        let host = &self.0;
        host.sockets
            .entry(addr.key())
            .or_insert_with(|| {
                let weak: Weak<HostInner> = Arc::downgrade(&self.0);
                let events: Weak<dyn SocketEvents> = weak;
                ObjectSockets::new(
                    addr.clone(),
                    events,
                    host.storage.clock.clone(),
                    host.options.max_sockets_per_object,
                )
            })
            .clone()
    }

    /// The number of open WebSockets of the object at `addr`.
    pub(crate) fn socket_count(&self, addr: &ObjectAddr) -> usize {
        self.0.sockets.get(&addr.key()).map_or(0, |s| s.len())
    }

    /// The number of open WebSockets of all objects.
    pub(crate) fn sockets_open(&self) -> usize {
        self.0.sockets.iter().map(|s| s.len()).sum()
    }

    /// Forgets an object's socket set if it has no sockets left (its activation is ending).
    fn drop_sockets_if_empty(&self, key: &ObjectKey) {
        self.0.sockets.remove_if(key, |_, s| s.len() == 0);
    }

    /// Asks idle activations to leave if too many objects are live: a tenth below the limit,
    /// so that the next activations do not ask again at once.
    fn relieve_pressure(&self) {
        let host = &self.0;
        let live = *host.live.borrow();
        if live > host.max_live && host.evictions_wanted.load(Ordering::Acquire) <= 0 {
            let excess = live - host.max_live * 9 / 10;
            host.evictions_wanted
                .store(i64::try_from(excess).unwrap_or(i64::MAX), Ordering::Release);
            host.pressure.send_modify(|n| *n += 1);
        }
    }

    /// A subscription to requests for idle activations to leave.
    fn pressure(&self) -> watch::Receiver<u64> {
        self.0.pressure.subscribe()
    }

    /// Whether an idle activation asked to leave should (one of the wanted evictions).
    fn take_eviction(&self) -> bool {
        self.0.evictions_wanted.fetch_sub(1, Ordering::AcqRel) > 0
    }

    /// Removes an idle activation's slot, if its mailbox is still empty.
    fn evict(&self, key: &ObjectKey, generation: u64, mailbox: &mpsc::Receiver<Event>) -> bool {
        self.0
            .objects
            .remove_if(key, |_, slot| {
                slot.generation == generation && mailbox.is_empty()
            })
            .is_some()
    }

    /// Announces that activation `generation` of `key` may leave and close its storage; a new
    /// activation of the object waits for the returned guard to drop.
    fn begin_retiring(&self, key: ObjectKey, generation: u64) -> Retiring {
        self.0
            .retiring
            .insert(key, (generation, watch::Sender::new(())));
        Retiring {
            host: self.clone(),
            key,
            generation,
        }
    }

    /// Waits until no earlier activation of `key` is still closing.
    async fn wait_retired(&self, key: &ObjectKey) {
        let closed = match self.0.retiring.get(key) {
            Some(entry) => entry.1.subscribe(),
            None => return,
        };
        let mut closed = closed;
        // The sender is dropped when the predecessor is done; `changed` then ends.
        while closed.changed().await.is_ok() {}
    }

    /// Removes a failed activation's slot.
    fn forget(&self, key: &ObjectKey, generation: u64) {
        self.0
            .objects
            .remove_if(key, |_, slot| slot.generation == generation);
    }

    /// Stops taking events, lets every activation finish what it has queued, and waits for them
    /// to close their storage (at most `wait`, or longer if `wait_until` work may take longer).
    pub(crate) async fn shutdown(&self, wait: Duration) -> bool {
        let host = &self.0;
        let wait = wait.max(host.options.wait_until_timeout + Duration::from_secs(5));
        host.closing.store(true, Ordering::SeqCst);
        // Dropping the slots closes the mailboxes; each activation works off its queue and ends.
        host.objects.clear();
        for sockets in host.sockets.iter() {
            sockets.close_for_shutdown();
        }
        let mut live = host.live.subscribe();
        tokio::time::timeout(wait, live.wait_for(|n| *n == 0))
            .await
            .is_ok()
    }
}

/// An activation that is leaving: while it lives, a new activation of the object waits.
struct Retiring {
    host: Host,
    key: ObjectKey,
    generation: u64,
}

impl Drop for Retiring {
    fn drop(&mut self) {
        self.host
            .0
            .retiring
            .remove_if(&self.key, |_, (generation, _)| {
                *generation == self.generation
            });
    }
}

impl SocketEvents for HostInner {
    fn deliver(
        self: Arc<Self>,
        addr: &ObjectAddr,
        socket: WebSocket,
        event: SocketEvent,
    ) -> Result<()> {
        Host(self).dispatch(addr, Event::Socket { socket, event })
    }
}

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
mod class_stats;
pub(crate) mod event;
mod placement;
pub(crate) mod turn;
pub(crate) mod waits;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use dashmap::DashMap;
use tokio::sync::{Notify, mpsc, watch};

pub use class_stats::ClassStats;
pub use placement::{Forwarded, Forwarder, LocalPlacement, Location, Placement};

use crate::addr::{ClassInfo, ObjectAddr, ObjectKey};
use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::id::{ID_BYTES, ObjectId};
use crate::outbound::Outbound;
use crate::socket::{ObjectSockets, SocketEvent, SocketEvents, WebSocket};
use crate::storage::{self, StorageContext};
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
    /// Most objects in memory at once; beyond it, colder idle objects are evicted early.
    /// 0: 100 000.
    pub max_live_objects: usize,
    /// Most live objects with their database files open (one descriptor each); beyond it,
    /// colder idle objects close their files (they stay in memory and reopen them at their
    /// next event). 0: derived from the process's open-file limit.
    pub max_open_databases: usize,
    /// Most memory live objects may hold, in bytes: what SQLite counts of its own memory plus
    /// [`LIVE_OBJECT_BYTES`] per live object. Beyond it colder idle objects fold their WALs and
    /// free their page caches with their files open, then close their files (which frees their
    /// SQLite connections), then leave memory. 0: 1 GiB.
    pub max_live_bytes: u64,
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
            max_open_databases: 0,
            max_live_bytes: 0,
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
    /// Where requests for objects owned elsewhere go (`None`: they are refused).
    pub(crate) forwarder: Option<Arc<dyn Forwarder>>,
    /// What objects reach through `Env` besides namespaces.
    pub(crate) reach: Reach,
}

/// What objects reach through `Env` besides namespaces: vars and secrets, outbound HTTP,
/// buckets.
#[derive(Clone)]
pub(crate) struct Reach {
    pub(crate) vars: Arc<Vars>,
    pub(crate) outbound: Arc<dyn Outbound>,
    pub(crate) buckets: Arc<crate::bucket::Buckets>,
}

struct Slot {
    mailbox: mpsc::Sender<Box<Event>>,
    generation: u64,
    usage: Arc<Usage>,
    /// The object's id as it was addressed (with its name, if by name).
    id: ObjectId,
}

/// How recently an activation was used, whether it may make room, and what the host asks of
/// it; shared by its registry slot (which the senders touch) and its task.
#[derive(Debug, Default)]
pub(crate) struct Usage {
    /// The host's use count when an event was last sent to it.
    last: AtomicU64,
    /// It waits for events and may make room under pressure (set by the activation's task).
    evictable: AtomicBool,
    /// Its database files are open (set by the activation's task).
    files_open: AtomicBool,
    /// It may hold memory it could give back with its files open (a WAL, a page cache):
    /// set by every turn, cleared when it shrank.
    spare: AtomicBool,
    /// What the host asks of it: an `Ask` as a number.
    ask: AtomicU8,
    /// Wakes the activation to look at `ask`.
    asked: Notify,
    /// It agreed to leave; its answer counts once its task has ended (until then it is still
    /// live, and a new round would ask others for the same room).
    leaving: AtomicBool,
}

/// What the host asks of an idle activation under pressure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ask {
    /// Nothing (or the ask was answered).
    Nothing = 0,
    /// Close its database files: too many are open.
    CloseFiles = 1,
    /// Leave memory: too many objects are live.
    Leave = 2,
    /// Give back memory but keep the files open (fold the WAL, free the page cache): live
    /// objects hold too many bytes, and this costs no reopening.
    Shrink = 3,
}

impl Usage {
    /// Records whether the activation may make room now.
    pub(crate) fn set_evictable(&self, evictable: bool) {
        self.evictable.store(evictable, Ordering::Relaxed);
    }

    /// Records whether the activation's files are open.
    pub(crate) fn set_files_open(&self, open: bool) {
        self.files_open.store(open, Ordering::Relaxed);
    }

    /// Records whether the activation may hold memory a shrink would give back.
    pub(crate) fn set_spare(&self, spare: bool) {
        self.spare.store(spare, Ordering::Relaxed);
    }

    /// Waits until the host asks something of the activation.
    pub(crate) async fn asked(&self) {
        self.asked.notified().await;
    }

    /// Records that the activation leaves, as asked.
    pub(crate) fn set_leaving(&self) {
        self.leaving.store(true, Ordering::Release);
    }

    /// What the host asks, now answered.
    pub(crate) fn take_ask(&self) -> Ask {
        match self.ask.swap(Ask::Nothing as u8, Ordering::AcqRel) {
            1 => Ask::CloseFiles,
            2 => Ask::Leave,
            3 => Ask::Shrink,
            _ => Ask::Nothing,
        }
    }
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
    forwarder: Option<Arc<dyn Forwarder>>,
    reach: Reach,
    generations: AtomicU64,
    closing: AtomicBool,
    /// Number of activations whose task has not finished.
    live: watch::Sender<usize>,
    activations: AtomicU64,
    /// A look at the limits is scheduled after a round that freed nothing.
    look_scheduled: AtomicBool,
    /// Database files closed to make room (each reopened at its object's next turn).
    files_closed: AtomicU64,
    /// Most live objects before idle ones are asked to leave.
    max_live: usize,
    /// Most open database files before idle objects are asked to close theirs.
    max_open: usize,
    /// Most bytes live objects may hold before idle ones are asked to make room.
    max_bytes: u64,
    /// Counts events sent to objects: the clock of least-recent use.
    uses: AtomicU64,
    /// Turns ended, node-wide: every `TURNS_PER_BYTE_CHECK`th looks at the byte cap.
    turns_ended: AtomicU64,
    /// The current pressure round.
    round: Mutex<Round>,
    /// Activations that left the registry and are still closing their storage, by key: a new
    /// activation of the same object waits until its predecessor has let go of the files.
    retiring: DashMap<ObjectKey, (u64, watch::Sender<()>)>,
    /// The calls running turns wait for, to refuse deadlocks.
    waits: Arc<Waits>,
}

/// Puts `event` in `mailbox`: `Ok(None)` when queued, `Ok(Some(event))` back when the mailbox
/// is closed, `Overloaded` when it is full.
fn offer(mailbox: &mpsc::Sender<Box<Event>>, event: Event) -> Result<Option<Event>> {
    // Boxed: a mailbox's channel holds a block of 32 slots from the start, 32 pointers rather
    // than 32 events (about 8 KB) for every live object.
    match mailbox.try_send(Box::new(event)) {
        Ok(()) => Ok(None),
        Err(mpsc::error::TrySendError::Full(_)) => Err(Error::Overloaded),
        Err(mpsc::error::TrySendError::Closed(event)) => Ok(Some(*event)),
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
            max_open: parts.options.max_open_databases.max(1),
            max_bytes: parts.options.max_live_bytes.max(1),
            uses: AtomicU64::new(0),
            turns_ended: AtomicU64::new(0),
            round: Mutex::new(Round::default()),
            objects: DashMap::new(),
            sockets: DashMap::new(),
            classes: parts.classes,
            bindings: parts.bindings,
            by_uid,
            storage: parts.storage,
            options: parts.options,
            placement: parts.placement,
            forwarder: parts.forwarder,
            reach: parts.reach,
            generations: AtomicU64::new(0),
            closing: AtomicBool::new(false),
            live: watch::Sender::new(0),
            activations: AtomicU64::new(0),
            look_scheduled: AtomicBool::new(false),
            files_closed: AtomicU64::new(0),
            retiring: DashMap::new(),
            waits: Arc::default(),
        }))
    }

    /// A handle that does not keep the host alive.
    pub(crate) fn downgrade(&self) -> WeakHost {
        WeakHost(Arc::downgrade(&self.0))
    }

    /// Where requests for objects owned elsewhere go, if anywhere.
    pub(crate) fn forwarder(&self) -> Option<&Arc<dyn Forwarder>> {
        self.0.forwarder.as_ref()
    }

    /// Where the object at `addr` lives, as placement knows it.
    pub(crate) fn locate(&self, addr: &ObjectAddr) -> Location {
        self.0.placement.locate(&addr.class.name, &addr.id)
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

    /// The hosted classes, in the order of their `idx`.
    pub(crate) fn hosted_classes(&self) -> impl Iterator<Item = &Arc<ClassInfo>> {
        self.0.classes.iter().map(|c| &c.info)
    }

    /// The bindings that name the class `info`, sorted.
    pub(crate) fn bindings_of(&self, info: &ClassInfo) -> Vec<&str> {
        let mut names: Vec<&str> = self
            .0
            .bindings
            .iter()
            .filter(|(_, c)| c.idx == info.idx)
            .map(|(b, _)| b.as_str())
            .collect();
        names.sort_unstable();
        names
    }

    /// The names of the live objects of class `class` that were addressed by name, by id.
    pub(crate) fn live_names(&self, class: u32) -> HashMap<[u8; ID_BYTES], String> {
        self.0
            .objects
            .iter()
            .filter(|e| e.key().class == class)
            .filter_map(|e| Some((e.key().id, e.id.name()?.to_string())))
            .collect()
    }

    /// Whether the object `key` has a live activation now.
    pub(crate) fn is_live(&self, key: &ObjectKey) -> bool {
        self.0.objects.contains_key(key)
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

    /// Database files closed to make room since the host began.
    pub(crate) fn files_closed(&self) -> u64 {
        self.0.files_closed.load(Ordering::Relaxed)
    }

    /// Counts a database file closed to make room.
    pub(crate) fn file_closed(&self) {
        self.0.files_closed.fetch_add(1, Ordering::Relaxed);
    }

    /// Delivers `event` to the object at `addr`, activating it if needed.
    pub(crate) fn dispatch(&self, addr: &ObjectAddr, mut event: Event) -> Result<()> {
        let host = &self.0;
        let key = addr.key();
        if let Location::Remote(node) = self.locate(addr) {
            return Err(Error::Elsewhere(node));
        }
        // A mailbox can be found closed only if its activation died unexpectedly; then the slot
        // is cleared and the event goes to a new activation.
        for _ in 0..3 {
            if host.closing.load(Ordering::SeqCst) {
                return Err(Error::ShuttingDown);
            }
            let use_count = host.uses.fetch_add(1, Ordering::Relaxed);
            let offered = match host.objects.get(&key) {
                Some(slot) => {
                    slot.usage.last.store(use_count, Ordering::Relaxed);
                    offer(&slot.mailbox, event)?
                }
                None => {
                    let mut activated = false;
                    let slot = host.objects.entry(key).or_insert_with(|| {
                        activated = true;
                        self.activate(addr, use_count)
                    });
                    slot.usage.last.store(use_count, Ordering::Relaxed);
                    // Shutdown sets `closing` before it clears the registry: if it is not set
                    // now, this slot was inserted before the clear and goes with it.
                    if host.closing.load(Ordering::SeqCst) {
                        drop(slot);
                        host.objects.remove(&key);
                        return Err(Error::ShuttingDown);
                    }
                    let offered = offer(&slot.mailbox, event);
                    // Choosing whom to evict reads the whole registry: not under a shard lock.
                    drop(slot);
                    if activated {
                        self.relieve_pressure(Some(&key));
                    }
                    offered?
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
    fn activate(&self, addr: &ObjectAddr, use_count: u64) -> Slot {
        let host = &self.0;
        let (tx, rx) = mpsc::channel(host.options.mailbox_capacity.max(1));
        let generation = host.generations.fetch_add(1, Ordering::Relaxed);
        host.activations.fetch_add(1, Ordering::Relaxed);
        host.live.send_modify(|n| *n += 1);
        let usage = Arc::new(Usage {
            last: AtomicU64::new(use_count),
            ..Usage::default()
        });
        let activation = Activation {
            host: self.clone(),
            addr: addr.clone(),
            generation,
            usage: usage.clone(),
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
            usage,
            id: addr.id.clone(),
        }
    }

    /// Counts an activation's task as ended.
    fn activation_ended(&self, usage: &Usage) {
        self.0.live.send_modify(|n| *n = n.saturating_sub(1));
        // Left as asked, or asked but gone another way: the round must not wait for it.
        if usage.take_ask() != Ask::Nothing || usage.leaving.load(Ordering::Acquire) {
            self.pressure_answered();
        }
    }

    fn round(&self) -> std::sync::MutexGuard<'_, Round> {
        self.0.round.lock().unwrap_or_else(|e| e.into_inner())
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

    /// Closes every WebSocket of every object with `code` (hibernated ones too).
    pub(crate) fn close_all_sockets(&self, code: u16, reason: &str) {
        for sockets in self.0.sockets.iter() {
            sockets.close_all(code, reason, false);
        }
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

    /// Makes room if too many objects are live (they are asked to leave memory), too many
    /// database files are open (they are asked to close their files) or live objects hold more
    /// than `max_live_bytes` (they are asked to shrink, keeping their files open; when too few
    /// can, to close their files, which frees their SQLite connections; and once no idle one
    /// has a file open, to leave): down to a tenth below the object and file limits and to
    /// `BYTES_KEPT_PERCENT` of the byte cap, so that the next activations do not ask again at
    /// once. The ones asked are the coldest and others drawn from the colder half of those
    /// waiting for events with an empty mailbox (see `choose_cold`), never `fresh` (the object
    /// an event is on its way to).
    pub(crate) fn relieve_pressure(&self, fresh: Option<&ObjectKey>) {
        let host = &self.0;
        let live = *host.live.borrow();
        let open = host.storage.open_files.load(Ordering::Relaxed);
        let (ask, excess, limit) = if live > host.max_live {
            (Ask::Leave, live - host.max_live * 9 / 10, host.max_live)
        } else if open > host.max_open {
            (
                Ask::CloseFiles,
                open - host.max_open * 9 / 10,
                host.max_open,
            )
        } else {
            let sqlite = storage::sqlite_memory_used();
            let bytes = live_bytes(live, sqlite);
            if bytes <= host.max_bytes {
                return;
            }
            let over = bytes - host.max_bytes / 100 * BYTES_KEPT_PERCENT;
            // Closing files frees a connection's worth of SQLite memory each; leaving frees
            // an object's share of all of it.
            let per_open = sqlite / open.max(1) as u64;
            let per_live = bytes / live.max(1) as u64;
            let close = usize::try_from(over.div_ceil(per_open.max(1))).unwrap_or(usize::MAX);
            let leave = usize::try_from(over.div_ceil(per_live.max(1))).unwrap_or(usize::MAX);
            // First what costs no reopening: a shrink frees about a WAL's and a page cache's
            // worth (the WALs' average, and a few pages).
            let per_shrink = storage::wal_bytes() / open.max(1) as u64 + SHRINK_CACHE_BYTES;
            let shrink = usize::try_from(over.div_ceil(per_shrink)).unwrap_or(usize::MAX);
            if open > 0 && self.pick(fresh, Ask::Shrink, shrink.min(open), live) {
                return;
            }
            if open > 0 && self.pick(fresh, Ask::CloseFiles, close.min(open), live) {
                return;
            }
            (Ask::Leave, leave.min(live), live)
        };
        self.pick(fresh, ask, excess, limit);
    }

    /// Asks `excess` of the colder idle activations (not `fresh`) for `ask`,
    /// unless a round is under way; `limit` sizes the patience with a round that does not
    /// end. Returns whether it found any to ask (or a round is under way).
    fn pick(&self, fresh: Option<&ObjectKey>, ask: Ask, excess: usize, limit: usize) -> bool {
        let host = &self.0;
        let uses = host.uses.load(Ordering::Relaxed);
        let mut round = self.round();
        // One round at a time; a round whose picks never answered (they became busy) gives
        // way once events for another tenth of the limit went by.
        if round.pending > 0 && uses.saturating_sub(round.start) <= (limit / 10) as u64 {
            return true;
        }
        let mut idle: Vec<(u64, Arc<Usage>)> = host
            .objects
            .iter()
            .filter(|e| {
                Some(e.key()) != fresh
                    && e.usage.evictable.load(Ordering::Relaxed)
                    && (ask == Ask::Leave || e.usage.files_open.load(Ordering::Relaxed))
                    && (ask != Ask::Shrink || e.usage.spare.load(Ordering::Relaxed))
                    && e.mailbox.capacity() == e.mailbox.max_capacity()
            })
            .map(|e| (e.usage.last.load(Ordering::Relaxed), e.usage.clone()))
            .collect();
        // Too few to shrink for the room needed: closing files will free it.
        if ask == Ask::Shrink && idle.len() < excess {
            return false;
        }
        choose_cold(&mut idle, excess, uses);
        if idle.is_empty() {
            return false;
        }
        round.pending = idle.len();
        round.start = uses;
        round.live = *host.live.borrow();
        round.open = host.storage.open_files.load(Ordering::Relaxed);
        round.bytes = self.live_bytes();
        drop(round);
        for (_, usage) in idle {
            usage.ask.store(ask as u8, Ordering::Release);
            usage.asked.notify_one();
        }
        true
    }

    /// What live objects hold now, as `max_live_bytes` counts it.
    pub(crate) fn live_bytes(&self) -> u64 {
        live_bytes(*self.0.live.borrow(), storage::sqlite_memory_used())
    }

    /// After a turn of `fresh`: live objects' memory grows without new activations too (the
    /// WALs and page caches of objects already open), so now and then the caps are looked at.
    /// Not after every turn: over the byte cap, choosing whom to ask reads the whole registry,
    /// and SQLite's memory count takes its global allocator lock.
    pub(crate) fn turn_ended(&self, fresh: &ObjectKey) {
        if self.0.turns_ended.fetch_add(1, Ordering::Relaxed) % TURNS_PER_BYTE_CHECK == 0 {
            self.relieve_pressure(Some(fresh));
        }
    }

    /// Counts one answer to the current round (done, or declined).
    pub(crate) fn pressure_answered(&self) {
        let mut round = self.round();
        if round.pending == 0 {
            return;
        }
        round.pending -= 1;
        if round.pending > 0 {
            return;
        }
        // The round is over. One that freed something looks again at once: it may not have
        // been enough, and with no new event nothing else would look. One that freed nothing
        // (its picks were busy, or had commits on their way) looks again in a while: at once
        // it would ask them again and again.
        let freed = *self.0.live.borrow() < round.live
            || self.0.storage.open_files.load(Ordering::Relaxed) < round.open
            || self.live_bytes() < round.bytes;
        drop(round);
        if freed {
            self.relieve_pressure(None);
        } else {
            self.look_later();
        }
    }

    /// Looks at the limits again in a while: after a round that freed nothing (its picks had
    /// commits on their way, or were busy), no new event may come to look, and the live
    /// objects would stay over a limit for good.
    fn look_later(&self) {
        if self.0.look_scheduled.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.0.look_scheduled.store(false, Ordering::Release);
            return;
        };
        let host = self.downgrade();
        runtime.spawn(async move {
            tokio::time::sleep(LOOK_AGAIN_AFTER).await;
            if let Some(host) = host.upgrade() {
                host.0.look_scheduled.store(false, Ordering::Release);
                if !host.0.closing.load(Ordering::Acquire) {
                    host.relieve_pressure(None);
                }
            }
        });
    }

    /// Removes an idle activation's slot, if its mailbox is still empty.
    fn evict(
        &self,
        key: &ObjectKey,
        generation: u64,
        mailbox: &mpsc::Receiver<Box<Event>>,
    ) -> bool {
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

/// What live objects are counted to hold beyond SQLite's own memory, each: the task, its
/// mailbox, its state and its registry slot (measured by `rookery-bench objects-idle`).
pub const LIVE_OBJECT_BYTES: u64 = 8 * 1024;

/// Bytes `live` objects hold when SQLite counts `sqlite` bytes of its own.
fn live_bytes(live: usize, sqlite: u64) -> u64 {
    sqlite.saturating_add((live as u64).saturating_mul(LIVE_OBJECT_BYTES))
}

/// Keeps `excess` of `idle` (last use, activation): the coldest, and the rest chosen at random
/// among the colder half (never fewer than `excess` of the coldest), with `seed` varying the
/// draw.
///
/// Why not simply the least recently used: a load that goes round more objects than fit, in
/// a cycle, asks next for exactly the objects that have waited longest, so strict LRU makes
/// every request reopen a file. Drawn from the colder half, the objects asked are spread over
/// half a cycle and most requests find theirs open, while the warmer half (what a skewed load
/// keeps using) is never asked.
fn choose_cold<T>(idle: &mut Vec<(u64, T)>, excess: usize, seed: u64) {
    if idle.len() <= excess {
        return;
    }
    let cold = (idle.len() / 2).max(excess);
    if cold < idle.len() {
        idle.select_nth_unstable_by_key(cold, |(last, _)| *last);
        idle.truncate(cold);
    }
    // The coldest of all is always asked (what has waited longest is asked first); the rest
    // by a partial Fisher-Yates shuffle, a uniform draw from the rest of the colder half.
    if let Some(coldest) = (0..idle.len()).min_by_key(|&i| idle[i].0) {
        idle.swap(0, coldest);
    }
    let mut state = seed ^ 0x9E37_79B9_7F4A_7C15;
    for i in 1..excess {
        let remaining = (cold - i) as u64;
        let j = i + usize::try_from(splitmix64(&mut state) % remaining).unwrap_or(0);
        idle.swap(i, j);
    }
    idle.truncate(excess);
}

/// The next number of a SplitMix64 sequence (fast, and plenty for spreading a draw).
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// What a shrink is counted to free besides a WAL: a few pages of cache and the statements.
const SHRINK_CACHE_BYTES: u64 = 16 * 1024;

/// Over the byte cap, files are closed down to this share of it (percent). Closer to the cap
/// than the other limits' tenth: a file closed is a file reopened at its next request, and
/// each round is cheap (it frees bytes, not activations).
const BYTES_KEPT_PERCENT: u64 = 97;

/// How long after a round that freed nothing the limits are looked at again.
const LOOK_AGAIN_AFTER: std::time::Duration = std::time::Duration::from_millis(50);

/// Turns between two looks at the byte cap from `Host::turn_ended`.
const TURNS_PER_BYTE_CHECK: u64 = 32;

/// A round of asks to make room.
#[derive(Default)]
struct Round {
    /// Activations asked that have not answered yet.
    pending: usize,
    /// The host's use count when the round began.
    start: u64,
    /// Live objects when the round began.
    live: usize,
    /// What live objects held when the round began (a shrink frees bytes only).
    bytes: u64,
    /// Open databases when the round began.
    open: usize,
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

#[cfg(test)]
mod tests {
    use super::choose_cold;

    /// Candidates whose last use is their index.
    fn candidates(n: u64) -> Vec<(u64, u64)> {
        (0..n).map(|i| (i, i)).collect()
    }

    #[test]
    fn a_draw_comes_from_the_colder_half_and_is_spread_over_it() {
        let mut chosen = std::collections::HashSet::new();
        for seed in 0..200 {
            let mut idle = candidates(1000);
            idle.reverse();
            choose_cold(&mut idle, 10, seed);
            assert_eq!(idle.len(), 10);
            let distinct: std::collections::HashSet<_> = idle.iter().map(|(_, i)| *i).collect();
            assert_eq!(distinct.len(), 10, "no candidate chosen twice");
            assert!(idle.iter().all(|(last, _)| *last < 500), "{idle:?}");
            assert!(
                idle.iter().any(|(last, _)| *last == 0),
                "the coldest is asked"
            );
            chosen.extend(distinct);
        }
        // Strict LRU would have chosen 0..10 every time.
        assert!(chosen.len() > 400, "only {} distinct chosen", chosen.len());
    }

    #[test]
    fn asked_for_more_than_half_it_takes_the_coldest() {
        let mut idle = candidates(100);
        idle.reverse();
        choose_cold(&mut idle, 70, 7);
        let mut lasts: Vec<u64> = idle.iter().map(|(last, _)| *last).collect();
        lasts.sort_unstable();
        assert_eq!(lasts, (0..70).collect::<Vec<_>>());
        let mut few = candidates(3);
        choose_cold(&mut few, 5, 1);
        assert_eq!(few.len(), 3);
    }
}

//! The scheduler: wakes at the earliest indexed alarm time and delivers due alarms to their
//! objects, with bounded concurrency.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore, oneshot};
use tokio::task::JoinHandle;

use super::AlarmStats;
use super::lateness::Lateness;
use crate::addr::{AlarmKey, ObjectAddr};
use crate::host::alarm_event::{AlarmOutcome, AlarmReport};
use crate::host::event::Event;
use crate::host::{Host, Location, WeakHost};
use crate::id::ObjectId;
use crate::storage::{AlarmIndex, AlarmListener};

/// Alarm events in flight at once; a burst of due alarms is worked off this many at a time.
const CONCURRENCY: usize = 256;
/// How long to wait before trying again an object whose alarm event failed.
const FAILED_RETRY_AFTER: Duration = Duration::from_secs(1);
/// How long to wait before trying an object again that could not take its alarm.
const REDELIVER_AFTER: Duration = Duration::from_millis(100);

/// When the scheduler plans to look at the index next, and how to wake it sooner.
pub(crate) struct Wake {
    /// Signalled when an entry becomes earlier than the planned wake-up.
    changed: Notify,
    /// When the scheduler plans to look next (ms since the epoch).
    at: AtomicI64,
}

impl Wake {
    pub(crate) fn new() -> Self {
        Self {
            changed: Notify::new(),
            at: AtomicI64::new(i64::MAX),
        }
    }
}

impl AlarmListener for Wake {
    fn earlier(&self, at: i64) {
        if at < self.at.load(Ordering::Acquire) {
            self.changed.notify_one();
        }
    }
}

/// The scheduler's state, part of the runtime.
pub(crate) struct Scheduler {
    wake: Arc<Wake>,
    stopping: AtomicBool,
    /// The scheduler waits for deliveries to finish before it reads the index again.
    blocked: AtomicBool,
    /// Objects with an alarm event in flight (at most `CONCURRENCY`).
    in_flight: Mutex<HashSet<AlarmKey>>,
    permits: Arc<Semaphore>,
    task: Mutex<Option<JoinHandle<()>>>,
    delivered: AtomicU64,
    succeeded: AtomicU64,
    retried: AtomicU64,
    given_up: AtomicU64,
    lateness: Lateness,
}

impl Scheduler {
    /// A scheduler woken through `wake`, which the alarm index also holds.
    pub(crate) fn new(wake: Arc<Wake>) -> Self {
        Self {
            wake,
            stopping: AtomicBool::new(false),
            blocked: AtomicBool::new(false),
            in_flight: Mutex::new(HashSet::new()),
            permits: Arc::new(Semaphore::new(CONCURRENCY)),
            task: Mutex::new(None),
            delivered: AtomicU64::new(0),
            succeeded: AtomicU64::new(0),
            retried: AtomicU64::new(0),
            given_up: AtomicU64::new(0),
            lateness: Lateness::new(),
        }
    }

    fn in_flight(&self) -> MutexGuard<'_, HashSet<AlarmKey>> {
        self.in_flight.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts delivering the alarms of `host`'s objects.
    pub(crate) fn start(self: &Arc<Self>, host: &Host, handle: &tokio::runtime::Handle) {
        let task = handle.spawn(run(self.clone(), host.downgrade()));
        *self.task.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
    }

    /// Records what an alarm event came to.
    fn record(&self, report: AlarmReport) {
        if let Some(late) = report.late_ms {
            self.lateness.record(late);
        }
        let counter = match report.outcome {
            AlarmOutcome::Succeeded => &self.succeeded,
            AlarmOutcome::Retrying | AlarmOutcome::FailedAfterChange => &self.retried,
            AlarmOutcome::GivenUp => &self.given_up,
            AlarmOutcome::NotDue => return,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Stops delivering alarms and waits for the events in flight.
    pub(crate) async fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
        // Every in-flight delivery holds a permit.
        let _ = self.permits.acquire_many(CONCURRENCY as u32).await;
    }

    /// Counters, with the index's size and earliest time.
    pub(crate) fn stats(&self, index: &AlarmIndex) -> AlarmStats {
        AlarmStats {
            scheduled: index.len().unwrap_or(0),
            next_ms: index.next_at().ok().flatten(),
            delivered: self.delivered.load(Ordering::Relaxed),
            succeeded: self.succeeded.load(Ordering::Relaxed),
            retried: self.retried.load(Ordering::Relaxed),
            given_up: self.given_up.load(Ordering::Relaxed),
            in_flight: self.in_flight().len() as u64,
            lateness: self.lateness.summary(),
        }
    }
}

async fn run(sched: Arc<Scheduler>, host: WeakHost) {
    loop {
        if sched.stopping.load(Ordering::Acquire) {
            return;
        }
        let Some(live) = host.upgrade() else { return };
        let wake = sched.wake.changed.notified();
        tokio::pin!(wake);
        // Register for pokes before reading the index, so none is missed: any change after
        // this point that is earlier than the planned wake-up notifies.
        wake.as_mut().enable();
        sched.wake.at.store(i64::MAX, Ordering::Release);
        let clock = live.clock().clone();
        let now = clock.now_ms();
        let busy = sched.in_flight().len();
        let limit = busy + CONCURRENCY;
        let next = match live.storage().alarms.earliest(limit) {
            Ok(entries) => dispatch_due(&sched, &live, entries, limit, now),
            Err(e) => {
                tracing::error!(error = %e, "reading the alarm index");
                Some(now + 1_000)
            }
        };
        sched
            .wake
            .at
            .store(next.unwrap_or(i64::MAX), Ordering::Release);
        // Do not keep the host alive while waiting.
        drop(live);
        match next {
            Some(at) => {
                tokio::select! {
                    () = &mut wake => {}
                    () = clock.sleep_until(at) => {}
                }
            }
            None => wake.await,
        }
    }
}

/// Starts delivery of the due entries among `entries` (earliest first, read with `limit`);
/// returns when to look again, or `None` to wait for a poke.
///
/// Deliveries poke the scheduler when they end only if it asked (`blocked`), and only once
/// half of the slots are free, so that one index read serves many deliveries.
fn dispatch_due(
    sched: &Arc<Scheduler>,
    host: &Host,
    entries: Vec<(AlarmKey, i64)>,
    limit: usize,
    now: i64,
) -> Option<i64> {
    let fetched = entries.len();
    // Entries skipped because they were in flight may be due again when their delivery ends.
    let mut skipped = Vec::new();
    let mut next = None;
    let mut full = false;
    for (key, at) in entries {
        if sched.in_flight().contains(&key) {
            skipped.push(key);
            continue;
        }
        if at > now {
            next = Some(at);
            break;
        }
        let Ok(permit) = sched.permits.clone().try_acquire_owned() else {
            full = true;
            break;
        };
        sched.in_flight().insert(key.clone());
        let (sched, host) = (sched.clone(), host.clone());
        tokio::spawn(async move {
            deliver(&sched, &host, &key).await;
            let busy = {
                let mut in_flight = sched.in_flight();
                in_flight.remove(&key);
                in_flight.len()
            };
            drop(permit);
            if busy <= CONCURRENCY / 2 && sched.blocked.swap(false, Ordering::SeqCst) {
                sched.wake.changed.notify_one();
            }
        });
    }
    // The read was cut at its limit and everything in it was due: more may wait behind.
    let more = next.is_none() && fetched == limit;
    if full || more || !skipped.is_empty() {
        sched.blocked.store(true, Ordering::SeqCst);
        // Deliveries that ended before `blocked` was set did not poke: look at what they left.
        let freed = sched.permits.available_permits() > CONCURRENCY / 2 && (full || more);
        let ended = {
            let in_flight = sched.in_flight();
            skipped.iter().any(|k| !in_flight.contains(k))
        };
        if freed || ended {
            return Some(now);
        }
    }
    next
}

/// Delivers one alarm event and waits until the object has handled it.
async fn deliver(sched: &Scheduler, host: &Host, key: &AlarmKey) {
    let Some(class) = host.class_by_uid(&key.class_uid) else {
        return;
    };
    let addr = ObjectAddr::new(class.clone(), ObjectId::from_verified_bytes(key.id));
    let (reply, done) = oneshot::channel();
    sched.delivered.fetch_add(1, Ordering::Relaxed);
    let event = Event::Alarm {
        force: false,
        reply,
    };
    // Not handled: how long until the entry, still due, is tried again.
    let retry_after = match host.dispatch(&addr, event) {
        Ok(()) => match done.await {
            Ok(report) => {
                sched.record(report);
                return;
            }
            // The object could not handle it (e.g. its storage cannot be opened): wait before
            // the next attempt rather than spin.
            Err(_) => FAILED_RETRY_AFTER,
        },
        Err(e) => {
            tracing::debug!(object = %addr.describe(), error = %e, "alarm not delivered; will retry");
            REDELIVER_AFTER
        }
    };
    // In a cluster: the object lives on another node now, whose index has its alarm (or whose
    // sweep of the cluster's alarms finds it). This node's entry goes.
    if let Location::Remote(owner) = host.locate(&addr) {
        tracing::debug!(object = %addr.describe(), owner = %owner, "the alarm's object moved; dropping the entry here");
        let version = host.storage().alarms.next_version();
        if let Err(e) = host.storage().alarms.set_exact(key, None, version) {
            tracing::warn!(error = %e, "dropping an alarm entry");
        }
        return;
    }
    tokio::time::sleep(retry_after).await;
}

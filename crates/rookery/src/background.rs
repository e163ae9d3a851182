//! `wait_until` work: futures an object hands over in a turn that run once the turn's outputs
//! are released, beside the object's later turns rather than inside them.
//!
//! Work given in a turn is an output like a WebSocket send: held in the object's outbox, started
//! when the turn's writes are durable, dropped if the turn fails. Each object may have a bounded
//! number of pieces registered, held or running, and each runs under a time limit. Failures
//! (errors, panics, the time limit) are logged with the object's class and id. The activation
//! does not leave memory while work runs, and before it closes the object's storage (shutdown,
//! or a reset after a failed commit) it waits for the work, up to the time limit, and then
//! stops what is left.
//!
//! Work runs outside any turn, so it must not touch the object's storage: that would mix its
//! writes into whichever turn runs at the moment. `ObjectState::storage` refuses it there (see
//! [`in_background`]); work that needs to write calls the object, which is a new turn.

use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::FutureExt;
use tokio::sync::watch;
use tokio::task::AbortHandle;
use tracing::Instrument;

use crate::error::{Error, Result, panic_message};
use crate::id::ObjectId;
use crate::outbox::{Outbox, Release};
use crate::storage::OutputGate;

/// A piece of `wait_until` work.
pub(crate) type Work = Pin<Box<dyn Future<Output = Result<()>> + Send>>;

/// How much `wait_until` work an object may have, and for how long each piece may run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BackgroundLimits {
    /// Pieces registered and not finished (held, waiting for their gate, or running).
    pub(crate) max: usize,
    /// Wall time of one piece, from its start.
    pub(crate) timeout: Duration,
}

tokio::task_local! {
    /// Set on the task of every piece of `wait_until` work.
    static BACKGROUND: ();
}

/// Whether this task is running `wait_until` work (where storage is out of reach).
pub(crate) fn in_background() -> bool {
    BACKGROUND.try_with(|()| ()).is_ok()
}

/// One object's `wait_until` work.
pub(crate) struct Background {
    shared: Arc<Shared>,
    outbox: Arc<Outbox<Task>>,
}

struct Shared {
    class: Arc<str>,
    id: ObjectId,
    limits: BackgroundLimits,
    /// Pieces registered and not finished.
    count: watch::Sender<usize>,
    /// The running pieces, to stop them when the object closes.
    running: Mutex<HashMap<u64, AbortHandle>>,
    next_key: AtomicU64,
    /// No more work is taken (the object is closing).
    closed: AtomicBool,
    /// Work still running was stopped; nothing more starts.
    stopped: AtomicBool,
}

impl Shared {
    fn running(&self) -> MutexGuard<'_, HashMap<u64, AbortHandle>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Counts a piece of work until it is dropped: unstarted with a failed turn, finished, or
/// stopped.
struct Ticket(Arc<Shared>);

impl Drop for Ticket {
    fn drop(&mut self) {
        self.0.count.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// A piece of work as the outbox holds it.
pub(crate) struct Task {
    work: Work,
    ticket: Ticket,
}

impl Release for Task {
    fn release(self) {
        let shared = self.ticket.0.clone();
        if shared.stopped.load(Ordering::Acquire) {
            return;
        }
        let span = tracing::debug_span!("wait_until", class = %shared.class, id = %shared.id);
        // The piece removes itself from `running` when it ends; holding the lock until it is
        // in there keeps a quick piece from leaving a stale entry behind.
        let mut running = shared.running();
        let key = shared.next_key.fetch_add(1, Ordering::Relaxed);
        let handle = tokio::spawn(run(self, key).instrument(span));
        running.insert(key, handle.abort_handle());
    }
}

/// Runs one piece under its time limit, logging how it failed.
async fn run(task: Task, key: u64) {
    let Task { work, ticket } = task;
    let shared = ticket.0.clone();
    let limit = shared.limits.timeout;
    let guarded = BACKGROUND.scope((), AssertUnwindSafe(work).catch_unwind());
    let (class, id) = (&*shared.class, &shared.id);
    match tokio::time::timeout(limit, guarded).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => {
            tracing::warn!(class, %id, error = %e, "wait_until work failed");
        }
        Ok(Err(panic)) => {
            let message = panic_message(&*panic);
            tracing::error!(class, %id, panic = message, "wait_until work panicked");
        }
        Err(_) => {
            tracing::warn!(class, %id, ?limit, "wait_until work ran over its time limit and was stopped");
        }
    }
    shared.running().remove(&key);
    drop(ticket);
}

impl Background {
    /// The `wait_until` work of the object `class`/`id`, whose turns carry `owner`.
    pub(crate) fn new(owner: u64, class: Arc<str>, id: ObjectId, limits: BackgroundLimits) -> Self {
        Self {
            shared: Arc::new(Shared {
                class,
                id,
                limits,
                count: watch::Sender::new(0),
                running: Mutex::new(HashMap::new()),
                next_key: AtomicU64::new(0),
                closed: AtomicBool::new(false),
                stopped: AtomicBool::new(false),
            }),
            outbox: Arc::new(Outbox::new(owner)),
        }
    }

    /// Registers `work`: held for the end of the running turn of this object, else started now.
    pub(crate) fn add(&self, work: Work) -> Result<()> {
        let shared = &self.shared;
        if shared.closed.load(Ordering::Acquire) {
            return Err(Error::ShuttingDown);
        }
        let max = shared.limits.max;
        let taken = shared.count.send_if_modified(|n| {
            let free = *n < max;
            if free {
                *n += 1;
            }
            free
        });
        if !taken {
            return Err(Error::WaitUntilLimit(max));
        }
        let task = Task {
            work,
            ticket: Ticket(shared.clone()),
        };
        if let Some(task) = self.outbox.hold(task) {
            task.release();
        }
        Ok(())
    }

    /// Pieces registered and not finished.
    pub(crate) fn pending(&self) -> usize {
        *self.shared.count.borrow()
    }

    /// Takes the work the running turn registered.
    pub(crate) fn take(&self) -> Vec<Task> {
        self.outbox.take()
    }

    /// Starts `tasks` when `gate` opens, after every earlier turn's outputs.
    pub(crate) fn release(&self, gate: OutputGate, tasks: Vec<Task>) {
        self.outbox.release(gate, tasks);
    }

    /// Takes no more work, waits up to `limit` for what is registered, then stops the rest.
    /// Returns how many pieces were stopped.
    pub(crate) async fn drain(&self, limit: Duration) -> usize {
        let shared = &self.shared;
        shared.closed.store(true, Ordering::Release);
        let mut count = shared.count.subscribe();
        let pending = *count.borrow();
        if pending > 0 {
            tracing::debug!(class = %shared.class, id = %shared.id, pending, "waiting for wait_until work before closing");
        }
        if tokio::time::timeout(limit, count.wait_for(|n| *n == 0))
            .await
            .is_ok()
        {
            return 0;
        }
        shared.stopped.store(true, Ordering::Release);
        let handles: Vec<AbortHandle> = shared.running().drain().map(|(_, h)| h).collect();
        for handle in &handles {
            handle.abort();
        }
        tracing::warn!(
            class = %shared.class,
            id = %shared.id,
            stopped = handles.len(),
            "wait_until work still running when the object closed was stopped"
        );
        // A stopped piece drops its future (and whatever it holds of the object) when the
        // runtime next polls it; wait for that, briefly.
        let _ = tokio::time::timeout(Duration::from_secs(1), count.wait_for(|n| *n == 0)).await;
        handles.len()
    }
}

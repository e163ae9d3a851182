//! The durability pipeline: group sync of the node log, and the output gate.
//!
//! A turn commits to SQLite without waiting for the disk (`synchronous = OFF`) and appends its
//! pages to the node log; the object goes on with its next turn at once. The [`Syncer`] thread
//! writes what was appended and `fdatasync`s the log once per round, for every object that
//! committed in it, then raises each of those objects' durable sequence numbers. It also syncs
//! the files that ask for it (the alarm index); checkpointed objects are synced by a thread of
//! their own (`checkpoint_sync.rs`).
//!
//! Durability rests on `fdatasync` of the files themselves, never on `syncfs`: `syncfs` reports
//! no error for a file whose write-back failed, and file systems that cannot see it (FUSE, which
//! the power-loss tests run on) would take it as a no-op. Outputs of a turn hold an
//! [`OutputGate`] that opens when the durable sequence reaches the turn's sequence and the
//! commit log has acknowledged it.
//!
//! With [`Durability::Relaxed`] a commit counts as durable once its record is written to the
//! log (the page cache), which survives a crash of the process; the log is synced on a timer.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::checkpoint_sync::CheckpointSyncer;
use super::dir_health::DirHealth;
use super::log_record::Lsn;
use super::node_log::NodeLog;
use super::object_sync::ObjectSync;
use crate::error::Result;

/// What a committed write survives before its outputs are released.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Survives power loss: outputs wait until the object's WAL is synced to the disk.
    #[default]
    Strict,
    /// Survives a crash of the process, not of the machine: outputs wait only for the WAL write.
    Relaxed,
}

/// A hook run at the start of every sync round; an error fails the round. For tests that need
/// a slow or failing disk.
pub type SyncHook = Arc<dyn Fn() -> std::io::Result<()> + Send + Sync>;

/// The group-sync thread shared by every object of a runtime: it writes and syncs the node
/// log, and syncs the other files that ask for it (the alarm index); checkpointed objects are
/// synced by a thread of their own.
pub(crate) struct Syncer {
    queue: mpsc::Sender<Job>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// Syncs checkpointed database files (there are none without a node log).
    checkpoints: Option<CheckpointSyncer>,
    counters: Arc<Counters>,
    /// Whether a `Job::Log` is on its way: one wake-up serves any number of appends.
    log_signalled: Arc<AtomicBool>,
}

/// What the syncer has done so far.
#[derive(Default)]
struct Counters {
    rounds: AtomicU64,
    /// Sync calls, by both threads.
    syncs: Arc<AtomicU64>,
}

/// A message to the syncer thread.
enum Job {
    /// Make this file's latest commit durable (the alarm index's WAL).
    Sync(Arc<ObjectSync>),
    /// The node log has appends to write.
    Log,
    /// Finish the queued work and exit.
    Stop,
}

/// How often the node log is synced in relaxed durability (acknowledged writes of about this
/// long are what a power loss may take).
pub(crate) const RELAXED_SYNC_EVERY: Duration = Duration::from_millis(50);

impl Syncer {
    /// Starts the syncer thread, checking `health` (the data directory's) before every round
    /// and between rounds, and writing `log` (with `durability` deciding when it is synced).
    pub(crate) fn start(
        hook: Option<SyncHook>,
        health: Option<Arc<DirHealth>>,
        log: Option<Arc<NodeLog>>,
        durability: Durability,
    ) -> Result<Self> {
        let (tx, rx) = mpsc::channel::<Job>();
        let counters = Arc::new(Counters::default());
        let log_signalled = Arc::new(AtomicBool::new(false));
        let checkpoints = match &log {
            Some(log) => Some(CheckpointSyncer::start(
                health.clone(),
                log.clone(),
                counters.syncs.clone(),
            )?),
            None => None,
        };
        let mut worker = Worker {
            rx,
            counters: counters.clone(),
            hook,
            health,
            log,
            durability,
            log_signalled: log_signalled.clone(),
            round_seconds: metrics::histogram!(crate::telemetry::SYNC_ROUND_SECONDS),
        };
        let thread = std::thread::Builder::new()
            .name("rookery-sync".into())
            .spawn(move || worker.run())?;
        Ok(Self {
            queue: tx,
            thread: Mutex::new(Some(thread)),
            checkpoints,
            counters,
            log_signalled,
        })
    }

    /// Asks for `object`'s latest commit to be made durable (files outside the node log).
    pub(crate) fn request(&self, object: &Arc<ObjectSync>) {
        // The queue holds each object at most once: its length is bounded by the live objects.
        if object.queued.swap(true, Ordering::SeqCst) {
            return;
        }
        if self.queue.send(Job::Sync(object.clone())).is_err() {
            object.queued.store(false, Ordering::Release);
            object.fail();
        }
    }

    /// Tells the thread that the node log has appends to write and sync.
    pub(crate) fn log_appended(&self) {
        if !self.log_signalled.swap(true, Ordering::SeqCst) {
            let _ = self.queue.send(Job::Log);
        }
    }

    /// Asks for `file` (an object's database, just checkpointed with its commits up to
    /// `through`) to be synced, and the checkpoint recorded in the node log.
    pub(crate) fn checkpointed(
        &self,
        file: std::fs::File,
        key: crate::addr::AlarmKey,
        through: Lsn,
    ) {
        if let Some(checkpoints) = &self.checkpoints {
            checkpoints.checkpointed(file, key, through);
        }
    }

    /// Number of sync rounds and of sync calls (file, directory or file system) so far.
    pub(crate) fn counts(&self) -> (u64, u64) {
        (
            self.counters.rounds.load(Ordering::Relaxed),
            self.counters.syncs.load(Ordering::Relaxed),
        )
    }

    /// Whether the sync thread is running (it ends only when stopped, or if it panicked).
    pub(crate) fn alive(&self) -> bool {
        self.thread
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_some_and(|t| !t.is_finished())
    }

    /// Stops the threads after they have worked off their queues.
    pub(crate) fn stop(&self) {
        // Checkpoints first: their records then go out with the log's last round.
        if let Some(checkpoints) = &self.checkpoints {
            checkpoints.stop();
        }
        // The thread may already be gone; then there is nothing to stop.
        let _ = self.queue.send(Job::Stop);
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(thread) = thread
            && thread.join().is_err()
        {
            tracing::error!("the sync thread panicked");
        }
    }
}

struct Worker {
    rx: mpsc::Receiver<Job>,
    counters: Arc<Counters>,
    hook: Option<SyncHook>,
    health: Option<Arc<DirHealth>>,
    log: Option<Arc<NodeLog>>,
    durability: Durability,
    log_signalled: Arc<AtomicBool>,
    round_seconds: metrics::Histogram,
}

/// How often the data directory is checked fully while no round runs.
const HEALTH_EVERY: Duration = Duration::from_millis(500);

/// Files to sync in one round, outside the log.
#[derive(Default)]
struct Batch {
    objects: Vec<Arc<ObjectSync>>,
    log: bool,
}

impl Worker {
    fn run(&mut self) {
        let mut batch = Batch::default();
        let mut stop = false;
        let mut checked = Instant::now();
        let mut log_synced = Instant::now();
        let mut rounds_since_cleanup = 0u32;
        let wait = if self.durability == Durability::Relaxed && self.log.is_some() {
            RELAXED_SYNC_EVERY
        } else {
            HEALTH_EVERY
        };
        while !stop {
            if let Some(health) = &self.health
                && checked.elapsed() >= HEALTH_EVERY
            {
                // A failure is logged and remembered by the check itself.
                let _ = health.check_full();
                checked = Instant::now();
            }
            let first = match self.rx.recv_timeout(wait) {
                Ok(first) => Some(first),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            };
            for job in first.into_iter().chain(self.rx.try_iter()) {
                match job {
                    Job::Sync(object) => batch.objects.push(object),
                    Job::Log => {
                        self.log_signalled.store(false, Ordering::SeqCst);
                        batch.log = true;
                    }
                    Job::Stop => stop = true,
                }
            }
            // Relaxed durability writes at once and syncs the log on a timer; so does a stop.
            let timer_due = self.durability == Durability::Relaxed
                && log_synced.elapsed() >= RELAXED_SYNC_EVERY
                && self.log.as_ref().is_some_and(|log| log.synced_behind());
            if stop || timer_due {
                batch.log = self.log.is_some();
            }
            if batch.log || !batch.objects.is_empty() {
                if batch.log {
                    log_synced = Instant::now();
                }
                let started = Instant::now();
                self.round(&mut batch);
                self.round_seconds.record(started.elapsed().as_secs_f64());
                rounds_since_cleanup += 1;
                if rounds_since_cleanup >= 64 {
                    rounds_since_cleanup = 0;
                    if let Some(log) = &self.log {
                        log.remove_covered_segments();
                    }
                }
            }
        }
    }

    /// One round: the log written and synced, then the other files, then the gates opened.
    fn round(&self, batch: &mut Batch) {
        self.counters.rounds.fetch_add(1, Ordering::Relaxed);
        // Read each object's sequence before syncing: whatever it committed up to then is in
        // its file and covered by this round. A commit after that re-queues it.
        let targets: Vec<u64> = batch
            .objects
            .iter()
            .map(|o| {
                o.queued.store(false, Ordering::SeqCst);
                o.committed.load(Ordering::SeqCst)
            })
            .collect();
        let written = match (&self.log, batch.log) {
            (Some(log), true) => match log.write() {
                Ok(written) => Some(written),
                Err(e) => {
                    tracing::error!(error = %e, "writing the node log failed");
                    None
                }
            },
            _ => None,
        };
        batch.log = false;
        // Nothing is durable in a directory that is gone: its files have no names any more.
        let dir_problem = self.health.as_ref().and_then(|h| h.check_quick().err());
        let log_failed = self.log.as_ref().is_some_and(|log| log.failed());
        let outcome = match self.hook.as_ref().map(|hook| hook()) {
            _ if dir_problem.is_some() => {
                Err(std::io::Error::other(dir_problem.unwrap_or_default()))
            }
            _ if log_failed => Err(std::io::Error::other(
                "the node log failed earlier; restart the server",
            )),
            Some(Err(e)) => Err(e),
            _ => Ok(()),
        };
        if let (Some(log), Some(written)) = (&self.log, written) {
            match &outcome {
                Ok(()) => {
                    self.counters.syncs.fetch_add(1, Ordering::Relaxed);
                    if let Err(e) = log.sync(written) {
                        tracing::error!(error = %e, "syncing the node log failed");
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "sync failed");
                    log.fail(written);
                }
            }
        }
        for (object, seq) in batch.objects.drain(..).zip(targets) {
            let result = match &outcome {
                Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
                Ok(()) => {
                    self.counters.syncs.fetch_add(1, Ordering::Relaxed);
                    object.sync_wal()
                }
            };
            match result {
                Ok(()) => object.mark(seq, true, false),
                Err(e) => {
                    tracing::error!(wal = %object.wal_path.display(), error = %e, "sync failed");
                    object.fail();
                }
            }
        }
    }
}

//! The checkpoint syncer: makes checkpointed database files durable, off the commit path.
//!
//! A checkpoint copies an object's WAL (already durable in the node log) into its database
//! file. The file must be synced before the log may say so (a *cover* record), but nothing
//! waits for that except the removal of old log segments. So these syncs run on a thread of
//! their own: many objects closing their files at once under memory pressure queue one each,
//! and on the log's thread they held every commit of the node back while they ran.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;

use super::dir_health::DirHealth;
use super::log_record::Lsn;
use super::node_log::NodeLog;
use crate::addr::AlarmKey;
use crate::error::Result;

/// A message to the checkpoint syncer.
enum Job {
    /// An object's file received a checkpoint of its commits up to `through`.
    Checkpointed {
        file: std::fs::File,
        key: AlarmKey,
        through: Lsn,
    },
    /// Sync what is queued and exit.
    Stop,
}

/// The thread that syncs checkpointed files and records them in the node log.
pub(super) struct CheckpointSyncer {
    queue: mpsc::Sender<Job>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// Files queued and not yet synced (each holds a descriptor).
    waiting: Arc<AtomicUsize>,
    /// What a caller that finds the queue full needs to sync its file itself.
    health: Option<Arc<DirHealth>>,
    log: Arc<NodeLog>,
    syncs: Arc<AtomicU64>,
}

/// Files waiting for their sync at most; beyond it the caller syncs its own (each waiting
/// file holds a descriptor, and a slow disk must not let them run into the open-file limit).
const WAITING_MAX: usize = 1024;

impl CheckpointSyncer {
    /// Starts the thread; `health` is checked before each batch, `log` receives the records,
    /// `syncs` counts the file syncs.
    pub(super) fn start(
        health: Option<Arc<DirHealth>>,
        log: Arc<NodeLog>,
        syncs: Arc<AtomicU64>,
    ) -> Result<Self> {
        let (tx, rx) = mpsc::channel();
        let waiting = Arc::new(AtomicUsize::new(0));
        let thread = std::thread::Builder::new()
            .name("rookery-checkpoint".into())
            .spawn({
                let (health, log, syncs, waiting) =
                    (health.clone(), log.clone(), syncs.clone(), waiting.clone());
                move || run(&rx, health.as_deref(), &log, &syncs, &waiting)
            })?;
        Ok(Self {
            queue: tx,
            thread: Mutex::new(Some(thread)),
            waiting,
            health,
            log,
            syncs,
        })
    }

    /// Queues `file` (an object's database, checkpointed through `through`) for its sync;
    /// with `WAITING_MAX` files already waiting, syncs it here instead (the caller waits, as
    /// it would have for the old in-round sync).
    pub(super) fn checkpointed(&self, file: std::fs::File, key: AlarmKey, through: Lsn) {
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= WAITING_MAX {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            if !refused(self.health.as_deref(), &self.log) {
                sync_and_record((file, key, through), &self.log, &self.syncs);
            }
            return;
        }
        // A thread that is gone leaves the records in the log: safe, only longer.
        if self
            .queue
            .send(Job::Checkpointed { file, key, through })
            .is_err()
        {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Syncs everything queued, then stops the thread.
    pub(super) fn stop(&self) {
        let _ = self.queue.send(Job::Stop);
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(thread) = thread
            && thread.join().is_err()
        {
            tracing::error!("the checkpoint sync thread panicked");
        }
    }
}

/// Syncs one checkpointed file and, once it is durable, records that in the log.
fn sync_and_record(
    (file, key, through): (std::fs::File, AlarmKey, Lsn),
    log: &NodeLog,
    syncs: &AtomicU64,
) {
    syncs.fetch_add(1, Ordering::Relaxed);
    match file.sync_data() {
        // The record goes out with the log's next round: the file is durable now.
        Ok(()) => log.append_cover(crate::clock::system_now_ms(), &key, through, false),
        Err(e) => tracing::error!(error = %e, "syncing a checkpointed object failed"),
    }
}

/// Whether no record may be made now: a directory that is gone, or a log that failed, makes
/// none true; the commits stay in the log, which recovery replays.
fn refused(health: Option<&DirHealth>, log: &NodeLog) -> bool {
    health.is_some_and(|h| h.check_quick().is_err()) || log.failed()
}

fn run(
    rx: &mpsc::Receiver<Job>,
    health: Option<&DirHealth>,
    log: &NodeLog,
    syncs: &AtomicU64,
    waiting: &AtomicUsize,
) {
    let mut batch = Vec::new();
    let mut stop = false;
    while !stop {
        let Ok(first) = rx.recv() else { return };
        for job in std::iter::once(first).chain(rx.try_iter()) {
            match job {
                Job::Checkpointed { file, key, through } => batch.push((file, key, through)),
                Job::Stop => stop = true,
            }
        }
        let refused = refused(health, log);
        for job in batch.drain(..) {
            if !refused {
                sync_and_record(job, log, syncs);
            }
            waiting.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

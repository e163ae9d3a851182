//! The checkpoint syncer: makes checkpointed database files durable, off the commit path.
//!
//! A checkpoint copies an object's WAL (already durable in the node log) into its database
//! file. The file must be synced before the log may say so (a *cover* record), but nothing
//! waits for that except the removal of old log segments. So these syncs run on a thread of
//! their own: many objects closing their files at once under memory pressure queue one each,
//! and on the log's thread they held every commit of the node back while they ran.

use std::sync::atomic::{AtomicU64, Ordering};
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
}

impl CheckpointSyncer {
    /// Starts the thread; `health` is checked before each batch, `log` receives the records,
    /// `syncs` counts the file syncs.
    pub(super) fn start(
        health: Option<Arc<DirHealth>>,
        log: Arc<NodeLog>,
        syncs: Arc<AtomicU64>,
    ) -> Result<Self> {
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("rookery-checkpoint".into())
            .spawn(move || run(&rx, health.as_deref(), &log, &syncs))?;
        Ok(Self {
            queue: tx,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Queues `file` (an object's database, checkpointed through `through`) for its sync.
    ///
    /// The queue is unbounded but each job holds a descriptor of a file that was just closed
    /// by its object, so the number waiting is bounded by the open-file limit.
    pub(super) fn checkpointed(&self, file: std::fs::File, key: AlarmKey, through: Lsn) {
        // A thread that is gone leaves the records in the log: safe, only longer.
        let _ = self.queue.send(Job::Checkpointed { file, key, through });
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

fn run(rx: &mpsc::Receiver<Job>, health: Option<&DirHealth>, log: &NodeLog, syncs: &AtomicU64) {
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
        // A directory that is gone, or a log that failed, makes no record true: the commits
        // stay in the log, which recovery replays.
        let refused = health.is_some_and(|h| h.check_quick().is_err()) || log.failed();
        if refused {
            batch.clear();
            continue;
        }
        for job in batch.drain(..) {
            sync_and_record(job, log, syncs);
        }
    }
}

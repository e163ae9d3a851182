//! The durability pipeline: group fsync of committed turns, and the output gate.
//!
//! A turn commits to SQLite without waiting for the disk (`synchronous = NORMAL`), then asks the
//! [`Syncer`] to make its object's WAL durable. The object goes on with its next turn at once.
//! The syncer thread takes every object that committed since its last round, `fdatasync`s each
//! object's WAL once, and raises the object's durable sequence number; one sync covers all the
//! turns that object committed meanwhile. Outputs of a turn hold an [`OutputGate`] that opens
//! when the durable sequence reaches the turn's sequence.
//!
//! With [`Durability::Relaxed`] there is no syncer: a commit is durable as soon as SQLite has it
//! in the WAL, which survives a crash of the process but not of the machine.

use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;

use tokio::sync::{oneshot, watch};

use crate::error::{Error, Result};

/// What a committed write survives before its outputs are released.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Survives power loss: outputs wait for `fdatasync` of the object's WAL.
    #[default]
    Strict,
    /// Survives a crash of the process, not of the machine: outputs wait only for the WAL write.
    Relaxed,
}

/// How far an object's commits have been made durable.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct DurableState {
    /// Highest commit sequence number known durable.
    pub(crate) synced: u64,
    /// A sync failed: nothing after the last durable point may be released.
    pub(crate) failed: bool,
}

/// One object's durability bookkeeping, shared by its storage and the syncer.
pub(crate) struct ObjectSync {
    wal_path: PathBuf,
    dir: PathBuf,
    wal: Mutex<Option<File>>,
    /// Sequence number of the latest local commit.
    committed: AtomicU64,
    /// Whether the object is already in the syncer's queue.
    queued: AtomicBool,
    /// Whether the directory holding the WAL must be synced (its entry may be new).
    dir_unsynced: AtomicBool,
    state: watch::Sender<DurableState>,
}

impl ObjectSync {
    /// Bookkeeping for the database at `db_path`.
    pub(crate) fn new(db_path: &Path) -> Arc<Self> {
        let mut wal_path = db_path.as_os_str().to_owned();
        wal_path.push("-wal");
        Arc::new(Self {
            wal_path: PathBuf::from(wal_path),
            dir: db_path.parent().map(Path::to_path_buf).unwrap_or_default(),
            wal: Mutex::new(None),
            committed: AtomicU64::new(0),
            queued: AtomicBool::new(false),
            // SQLite creates the WAL file anew on every open after a clean close.
            dir_unsynced: AtomicBool::new(true),
            state: watch::Sender::new(DurableState::default()),
        })
    }

    /// Records a local commit with sequence `seq`.
    pub(crate) fn committed(&self, seq: u64) {
        self.committed.store(seq, Ordering::Release);
    }

    /// Marks everything up to `seq` durable.
    pub(crate) fn mark_durable(&self, seq: u64) {
        self.state.send_if_modified(|s| {
            let raise = seq > s.synced;
            if raise {
                s.synced = seq;
            }
            raise
        });
    }

    /// Whether a sync of this object ever failed.
    pub(crate) fn failed(&self) -> bool {
        self.state.borrow().failed
    }

    /// A gate that opens when commit `seq` is durable.
    pub(crate) fn gate(&self, seq: u64) -> OutputGate {
        let state = *self.state.borrow();
        if state.synced >= seq && !state.failed {
            return OutputGate::open();
        }
        OutputGate {
            durable: Some((self.state.subscribe(), seq)),
            log: None,
        }
    }

    fn sync_wal(&self) -> std::io::Result<()> {
        let mut wal = self.wal.lock().unwrap_or_else(|e| e.into_inner());
        if wal.is_none() {
            *wal = Some(File::open(&self.wal_path)?);
        }
        match wal.as_ref() {
            Some(file) => file.sync_data(),
            None => Ok(()),
        }
    }
}

/// The group-fsync thread shared by every object of a runtime.
pub(crate) struct Syncer {
    queue: mpsc::Sender<Job>,
    thread: Mutex<Option<JoinHandle<()>>>,
    rounds: Arc<AtomicU64>,
    syncs: Arc<AtomicU64>,
}

impl Syncer {
    /// Starts the syncer thread.
    pub(crate) fn start() -> Result<Self> {
        let (tx, rx) = mpsc::channel::<Job>();
        let rounds = Arc::new(AtomicU64::new(0));
        let syncs = Arc::new(AtomicU64::new(0));
        let (r, s) = (rounds.clone(), syncs.clone());
        let thread = std::thread::Builder::new()
            .name("rookery-sync".into())
            .spawn(move || run(rx, &r, &s))?;
        Ok(Self {
            queue: tx,
            thread: Mutex::new(Some(thread)),
            rounds,
            syncs,
        })
    }

    /// Asks for `object`'s latest commit to be made durable.
    pub(crate) fn request(&self, object: &Arc<ObjectSync>) {
        // The queue holds each object at most once: its length is bounded by the live objects.
        if object.queued.swap(true, Ordering::AcqRel) {
            return;
        }
        if self.queue.send(Job::Sync(object.clone())).is_err() {
            object.queued.store(false, Ordering::Release);
            object.state.send_modify(|s| s.failed = true);
        }
    }

    /// Number of sync rounds and of file syncs so far.
    pub(crate) fn counts(&self) -> (u64, u64) {
        (
            self.rounds.load(Ordering::Relaxed),
            self.syncs.load(Ordering::Relaxed),
        )
    }

    /// Stops the thread after it has worked off its queue.
    pub(crate) fn stop(&self) {
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

/// A message to the syncer thread.
enum Job {
    /// Make this object's latest commit durable.
    Sync(Arc<ObjectSync>),
    /// Finish the queued work and exit.
    Stop,
}

fn run(rx: mpsc::Receiver<Job>, rounds: &AtomicU64, syncs: &AtomicU64) {
    let mut batch = Vec::new();
    let mut dirs = HashSet::new();
    let mut stop = false;
    while !stop {
        let Ok(first) = rx.recv() else { break };
        for job in std::iter::once(first).chain(rx.try_iter()) {
            match job {
                Job::Sync(object) => batch.push(object),
                Job::Stop => stop = true,
            }
        }
        if batch.is_empty() {
            continue;
        }
        rounds.fetch_add(1, Ordering::Relaxed);
        // Read each object's sequence before syncing: whatever it committed up to then is in
        // the WAL file and covered by this round's sync. A commit after that re-queues it.
        let targets: Vec<u64> = batch
            .iter()
            .map(|o| {
                o.queued.store(false, Ordering::Release);
                o.committed.load(Ordering::Acquire)
            })
            .collect();
        for object in &batch {
            if object.dir_unsynced.swap(false, Ordering::AcqRel) {
                dirs.insert(object.dir.clone());
            }
        }
        let mut dir_failed = HashSet::new();
        for dir in dirs.drain() {
            syncs.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = File::open(&dir).and_then(|d| d.sync_all()) {
                tracing::error!(dir = %dir.display(), error = %e, "directory sync failed");
                dir_failed.insert(dir);
            }
        }
        for (object, seq) in batch.drain(..).zip(targets) {
            syncs.fetch_add(1, Ordering::Relaxed);
            let result = if dir_failed.contains(&object.dir) {
                Err(std::io::Error::other("directory sync failed"))
            } else {
                object.sync_wal()
            };
            match result {
                Ok(()) => object.mark_durable(seq),
                Err(e) => {
                    tracing::error!(wal = %object.wal_path.display(), error = %e, "WAL sync failed");
                    object.state.send_modify(|s| s.failed = true);
                }
            }
        }
    }
}

/// Holds back a turn's outputs until the writes they follow are durable.
#[derive(Debug)]
pub struct OutputGate {
    durable: Option<(watch::Receiver<DurableState>, u64)>,
    log: Option<oneshot::Receiver<Result<()>>>,
}

impl OutputGate {
    /// A gate with nothing to wait for.
    pub fn open() -> Self {
        Self {
            durable: None,
            log: None,
        }
    }

    /// This gate, also waiting for a commit-log acknowledgement.
    pub(crate) fn with_log(mut self, log: Option<oneshot::Receiver<Result<()>>>) -> Self {
        self.log = log;
        self
    }

    /// Waits until the outputs may be released; an error means they must be discarded.
    pub async fn wait(self) -> Result<()> {
        if let Some((mut rx, seq)) = self.durable {
            let state = rx
                .wait_for(|s| s.failed || s.synced >= seq)
                .await
                .map_err(|_| Error::Durability("the object's storage closed".into()))?;
            if state.synced < seq {
                return Err(Error::Durability(
                    "the write could not be made durable".into(),
                ));
            }
        }
        if let Some(log) = self.log {
            log.await
                .map_err(|_| Error::Durability("the commit log went away".into()))??;
        }
        Ok(())
    }
}

//! One object's durability bookkeeping, and the gate that holds its outputs back.
//!
//! The node log and the sync thread both raise an object's durable point; a turn's outputs
//! wait on it through an [`OutputGate`].

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::error::{Error, Result};

/// How far an object's commits have been made durable.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct DurableState {
    /// Highest commit sequence number synced to the disk.
    pub(crate) synced: u64,
    /// Highest commit sequence number acknowledged by the commit log.
    pub(crate) logged: u64,
    /// Making a commit durable failed: nothing after the last durable point may be released.
    pub(crate) failed: bool,
    /// The failure was the commit log's refusal of a stale epoch.
    pub(crate) fenced: bool,
}

impl DurableState {
    fn covers(&self, seq: u64) -> bool {
        self.synced >= seq && self.logged >= seq
    }
}

/// One object's durability bookkeeping, shared by its storage and the syncer.
///
/// Directory entries need no sync of ours: SQLite creates the WAL anew at every activation and
/// syncs its directory itself when it first syncs the new WAL's header, before any frame of a
/// commit is written; the database file's entry was made before that.
pub(crate) struct ObjectSync {
    db_path: PathBuf,
    /// Whether the database file is new: its header (written unsynced when it switched to
    /// WAL) must reach the disk with the first commit.
    db_unsynced: AtomicBool,
    pub(super) wal_path: PathBuf,
    wal: Mutex<Option<File>>,
    /// Sequence number of the latest local commit.
    pub(super) committed: AtomicU64,
    /// Whether the object is already in the syncer's queue.
    pub(super) queued: AtomicBool,
    state: watch::Sender<DurableState>,
}

impl ObjectSync {
    /// Bookkeeping for the database at `db_path`.
    pub(crate) fn new(db_path: &Path, new_db: bool) -> Arc<Self> {
        let mut wal_path = db_path.as_os_str().to_owned();
        wal_path.push("-wal");
        Arc::new(Self {
            db_path: db_path.to_path_buf(),
            db_unsynced: AtomicBool::new(new_db),
            wal_path: PathBuf::from(wal_path),
            wal: Mutex::new(None),
            committed: AtomicU64::new(0),
            queued: AtomicBool::new(false),
            state: watch::Sender::new(DurableState::default()),
        })
    }

    /// Records a local commit with sequence `seq`.
    pub(crate) fn committed(&self, seq: u64) {
        // Commits of the node index come from many threads: never move backwards. SeqCst
        // pairs with the syncer's clearing of `queued` (a store-buffering pattern).
        self.committed.fetch_max(seq, Ordering::SeqCst);
    }

    /// Marks everything up to `seq` synced (and, if `logged`, acknowledged by the log).
    pub(crate) fn mark(&self, seq: u64, synced: bool, logged: bool) {
        self.state.send_if_modified(|s| {
            let mut changed = false;
            // After a failed sync, a later successful one proves nothing about the pages the
            // failure may have dropped: the durable point stays where it was.
            if synced && !s.failed && seq > s.synced {
                s.synced = seq;
                changed = true;
            }
            if logged && seq > s.logged {
                s.logged = seq;
                changed = true;
            }
            changed
        });
    }

    /// Records that a commit could not be made durable.
    pub(crate) fn fail(&self) {
        self.state.send_modify(|s| s.failed = true);
    }

    /// Records that the commit log refused a commit for a stale epoch.
    pub(crate) fn fence(&self) {
        self.state.send_modify(|s| {
            s.failed = true;
            s.fenced = true;
        });
    }

    /// Whether making a commit durable ever failed.
    pub(crate) fn failed(&self) -> bool {
        self.state.borrow().failed
    }

    /// A gate that opens when commit `seq` is durable.
    pub(crate) fn gate(&self, seq: u64) -> OutputGate {
        if self.state.borrow().covers(seq) {
            return OutputGate::open();
        }
        OutputGate {
            durable: Some((self.state.subscribe(), seq)),
        }
    }

    pub(super) fn sync_wal(&self) -> std::io::Result<()> {
        if self.db_unsynced.swap(false, Ordering::AcqRel)
            && let Err(e) = File::open(&self.db_path).and_then(|f| f.sync_data())
        {
            self.db_unsynced.store(true, Ordering::Release);
            return Err(e);
        }
        let mut wal = self.wal.lock().unwrap_or_else(|e| e.into_inner());
        let file = match wal.take() {
            Some(file) => file,
            None => File::open(&self.wal_path)?,
        };
        let result = file.sync_data();
        *wal = Some(file);
        result
    }
}

/// Holds back a turn's outputs until the writes they follow are durable.
#[derive(Debug)]
pub struct OutputGate {
    durable: Option<(watch::Receiver<DurableState>, u64)>,
}

impl OutputGate {
    /// A gate with nothing to wait for.
    pub fn open() -> Self {
        Self { durable: None }
    }

    /// Whether there is nothing to wait for.
    pub fn is_open(&self) -> bool {
        self.durable.is_none()
    }

    /// Waits until the outputs may be released; an error means they must be discarded.
    pub async fn wait(self) -> Result<()> {
        if let Some((mut rx, seq)) = self.durable {
            let state = rx
                .wait_for(|s| s.failed || s.covers(seq))
                .await
                .map_err(|_| Error::Durability("the object's storage closed".into()))?;
            if state.fenced && !state.covers(seq) {
                return Err(Error::Fenced(
                    "the commit log refused the write: another node owns the object".into(),
                ));
            }
            if !state.covers(seq) {
                return Err(Error::Durability(
                    "the write could not be made durable".into(),
                ));
            }
        }
        Ok(())
    }
}

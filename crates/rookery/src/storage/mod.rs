//! Transactional storage of one object: a KV API over its own SQLite database, committed at the
//! end of every turn and made durable before the turn's outputs are released.

mod commit_log;
mod database;
mod durability;
mod kv;

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

pub use commit_log::{CommitLog, CommitRecord, LocalCommitLog};
pub use durability::{Durability, OutputGate};
pub use kv::ListOptions;

pub(crate) use durability::Syncer;

use database::Database;
use durability::ObjectSync;

use crate::error::Result;
use crate::id::ObjectId;

/// Limits on what an object may store; each breach is an error to the handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StorageLimits {
    /// Largest key in bytes (UTF-8).
    pub max_key_bytes: usize,
    /// Largest value in bytes, as encoded.
    pub max_value_bytes: usize,
    /// Most keys in one batch call.
    pub max_batch_keys: usize,
    /// Largest database of one object, in bytes.
    pub max_object_bytes: u64,
}

impl Default for StorageLimits {
    fn default() -> Self {
        Self {
            max_key_bytes: 2 * 1024,
            max_value_bytes: 2 * 1024 * 1024,
            max_batch_keys: 128,
            max_object_bytes: 10 * 1024 * 1024 * 1024,
        }
    }
}

/// What every object's storage shares within a runtime.
pub(crate) struct StorageContext {
    pub(crate) limits: StorageLimits,
    pub(crate) durability: Durability,
    pub(crate) syncer: Syncer,
    pub(crate) commit_log: Arc<dyn CommitLog>,
}

/// An object's storage. Reads see the turn's own writes; the writes commit together when the
/// turn ends well and vanish when it fails.
pub struct Storage {
    db: Mutex<Turn>,
    sync: Arc<ObjectSync>,
    ctx: Arc<StorageContext>,
    class: Arc<str>,
    id: ObjectId,
}

/// The database and the commit sequence, guarded together.
struct Turn {
    db: Database,
    /// Sequence number of the last commit that wrote something.
    seq: u64,
}

impl Storage {
    /// Opens the storage of object `id` of `class` at `path`.
    pub(crate) fn open(
        path: &Path,
        ctx: Arc<StorageContext>,
        class: Arc<str>,
        id: ObjectId,
    ) -> Result<Self> {
        let db = Database::open(path, ctx.limits.max_object_bytes)?;
        Ok(Self {
            sync: ObjectSync::new(db.path()),
            db: Mutex::new(Turn { db, seq: 0 }),
            ctx,
            class,
            id,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Turn> {
        // A panic inside a storage call leaves the turn to be rolled back; the data is intact.
        self.db.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The limits that apply to this storage.
    pub fn limits(&self) -> &StorageLimits {
        &self.ctx.limits
    }

    /// Ends the current turn: commits its writes if `commit`, otherwise rolls them back.
    /// Returns the gate that the turn's outputs must pass.
    pub(crate) fn finish_turn(&self, commit: bool) -> Result<OutputGate> {
        let mut turn = self.lock();
        if !commit {
            turn.db.rollback();
            return Ok(self.sync.gate(turn.seq));
        }
        if !turn.db.commit()? {
            return Ok(self.sync.gate(turn.seq));
        }
        turn.seq += 1;
        let seq = turn.seq;
        drop(turn);
        self.sync.committed(seq);
        match self.ctx.durability {
            Durability::Strict => self.ctx.syncer.request(&self.sync),
            Durability::Relaxed => self.sync.mark_durable(seq),
        }
        let ack = self.ctx.commit_log.append(&CommitRecord {
            class: &self.class,
            object: &self.id,
            seq,
        });
        Ok(self.sync.gate(seq).with_log(ack))
    }

    /// A gate that opens when everything committed so far is durable.
    pub(crate) fn settled(&self) -> OutputGate {
        let seq = self.lock().seq;
        self.sync.gate(seq)
    }

    /// Whether making a commit durable failed; the object must then be reset.
    pub(crate) fn failed(&self) -> bool {
        self.sync.failed()
    }

    /// Closes the database; uncommitted writes are rolled back.
    pub(crate) fn close(self) -> Result<()> {
        let turn = self.db.into_inner().unwrap_or_else(|e| e.into_inner());
        turn.db.close()
    }
}

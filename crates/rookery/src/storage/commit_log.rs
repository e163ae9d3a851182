//! The commit-log seam: where a committed turn goes beyond this node before its outputs are
//! released.
//!
//! Every commit is made durable on this node by the node log (`node_log.rs`). A [`CommitLog`]
//! is the stage after it, for a cluster: it receives the same pages with the object's *epoch*
//! (the ownership generation this activation holds) and acknowledges once its own copy is
//! durable; outputs wait for both. Fencing: [`CommitLog::activate`] hands out the epoch when an
//! object opens on this node, and an append whose epoch is no longer the owner's must be refused
//! with [`Error::Fenced`](crate::Error::Fenced): the turn's outputs are discarded, the caller
//! hears `Fenced`, and the object is reset (and activated again, which asks for a new epoch).
//!
//! [`LocalCommitLog`] is the single-node case: the node log alone, epoch 0, nothing to add.

use std::sync::Arc;

use tokio::sync::oneshot;

use super::PackedPages;
use crate::error::Result;
use crate::id::ObjectId;

/// A turn that committed locally.
#[derive(Debug)]
pub struct CommitRecord<'a> {
    /// Class of the object.
    pub class: &'a Arc<str>,
    /// The object.
    pub object: &'a ObjectId,
    /// The turn's commit sequence number within this activation.
    pub seq: u64,
    /// The epoch [`CommitLog::activate`] gave this activation.
    pub epoch: u64,
    /// Where the node log put the commit (`None` for objects kept in memory).
    pub lsn: Option<u64>,
    /// The database's size in pages after the commit (with `pages`).
    pub db_pages: u32,
    /// The pages the commit wrote, packed as the node log stores them, when
    /// [`CommitLog::wants_pages`] (else none).
    pub pages: PackedPages<'a>,
    /// The commit's change to the object's alarm: `Some(Some(ms))` set for that time (ms since
    /// the epoch), `Some(None)` deleted, `None` left alone.
    pub alarm: Option<Option<i64>>,
}

/// What the commit log says when an object opens on this node.
#[derive(Default)]
pub struct Grant {
    /// The epoch the activation's commits carry.
    pub epoch: u64,
    /// The object's database as the log holds it, when it must replace this node's copy (the
    /// object last ran elsewhere): `Some(empty)` means it stores nothing. `None` keeps the
    /// local database as it is.
    pub image: Option<Vec<u8>>,
    /// What the activation holds the object by, if it can end before the activation does (a
    /// cluster node's lease): looked at before every turn, and once it no longer holds, the
    /// object is reset before it serves anything more, and opens again (on this node if it
    /// may, else the request goes where the object is).
    pub lease: Option<Arc<dyn Lease>>,
}

impl std::fmt::Debug for Grant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grant")
            .field("epoch", &self.epoch)
            .field("image", &self.image.as_ref().map(Vec::len))
            .field("lease", &self.lease.is_some())
            .finish()
    }
}

/// A hold on objects that can end (see [`Grant::lease`]). Called before every turn: cheap.
pub trait Lease: Send + Sync + 'static {
    /// Whether the hold still stands.
    fn holds(&self) -> bool;
}

/// Receives every committed turn before its outputs are released.
pub trait CommitLog: Send + Sync + 'static {
    /// The object is opening on this node: the epoch its commits will carry, and its state
    /// when the log's copy must replace the local one. An error keeps it from opening (another
    /// node owns it, say). Called on a blocking thread inside the runtime.
    fn activate(&self, _class: &str, _object: &ObjectId) -> Result<Grant> {
        Ok(Grant::default())
    }

    /// Whether [`CommitLog::append`] needs the pages (logs that do not replicate say no).
    fn wants_pages(&self) -> bool {
        false
    }

    /// Appends a committed turn; `Some(ack)` makes outputs wait for `ack`, `None` means the turn
    /// is already as durable as this log makes it. A refusal for a stale epoch is
    /// [`Error::Fenced`](crate::Error::Fenced).
    fn append(&self, record: &CommitRecord<'_>) -> Option<oneshot::Receiver<Result<()>>>;
}

/// The single-node log: the node log holds everything, nothing more to wait for.
#[derive(Debug, Default, Clone, Copy)]
pub struct LocalCommitLog;

impl CommitLog for LocalCommitLog {
    fn append(&self, _record: &CommitRecord<'_>) -> Option<oneshot::Receiver<Result<()>>> {
        None
    }
}

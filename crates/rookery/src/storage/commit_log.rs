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

use tokio::sync::oneshot;

use crate::error::Result;
use crate::id::ObjectId;

/// One page a commit wrote.
#[derive(Debug, Clone, Copy)]
pub struct PageWrite<'a> {
    /// The page number, from 1.
    pub pgno: u32,
    /// The page's bytes (4 KiB).
    pub page: &'a [u8],
}

/// A turn that committed locally.
#[derive(Debug)]
pub struct CommitRecord<'a> {
    /// Class of the object.
    pub class: &'a str,
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
    /// The pages the commit wrote, in order, when [`CommitLog::wants_pages`] (else empty).
    pub pages: &'a [PageWrite<'a>],
}

/// Receives every committed turn before its outputs are released.
pub trait CommitLog: Send + Sync + 'static {
    /// The object is opening on this node: returns the epoch its commits will carry. An error
    /// keeps it from opening (another node owns it, say).
    fn activate(&self, _class: &str, _object: &ObjectId) -> Result<u64> {
        Ok(0)
    }

    /// Whether [`CommitLog::append`] needs the pages (gathering them costs an allocation per
    /// commit, so logs that do not replicate say no).
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

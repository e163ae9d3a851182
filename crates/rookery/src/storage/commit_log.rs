//! The commit-log seam: where a committed turn goes, beyond its object's own database, before
//! its outputs are released.
//!
//! On one node the object's SQLite database is the whole log ([`LocalCommitLog`]). In a cluster
//! an implementation appends each turn's changes to a replicated log, fenced by the owner's
//! epoch, and acknowledges when the append is durable; outputs wait for that acknowledgement.

use tokio::sync::oneshot;

use crate::error::Result;
use crate::id::ObjectId;

/// A turn that committed locally.
#[derive(Debug)]
pub struct CommitRecord<'a> {
    /// Class of the object.
    pub class: &'a str,
    /// The object.
    pub object: &'a ObjectId,
    /// The turn's commit sequence number within this activation.
    pub seq: u64,
}

/// Receives every committed turn before its outputs are released.
pub trait CommitLog: Send + Sync + 'static {
    /// Appends a committed turn; `Some(ack)` makes outputs wait for `ack`, `None` means the turn
    /// is already as durable as this log makes it.
    fn append(&self, record: &CommitRecord<'_>) -> Option<oneshot::Receiver<Result<()>>>;
}

/// The single-node log: the object's database holds everything, nothing more to wait for.
#[derive(Debug, Default, Clone, Copy)]
pub struct LocalCommitLog;

impl CommitLog for LocalCommitLog {
    fn append(&self, _record: &CommitRecord<'_>) -> Option<oneshot::Receiver<Result<()>>> {
        None
    }
}

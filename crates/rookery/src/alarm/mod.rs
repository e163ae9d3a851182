//! The alarm scheduler: wakes at the earliest time in the node's alarm index and delivers due
//! alarms to their objects.
//!
//! The index and the objects' own alarm records are storage (`storage/alarm_index.rs` states the
//! invariant between them: the index is never later than the truth); the alarm turn, which
//! reads the record and runs the handler, belongs to the host (`host/alarm_turn.rs`). What is
//! here only decides *when* to deliver, to whom, and how many at once.

mod lateness;
mod scheduler;

pub use lateness::LatenessSummary;
pub(crate) use scheduler::{Scheduler, Wake};

/// Counters of the alarm machinery.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct AlarmStats {
    /// Alarms in the node's index.
    pub scheduled: u64,
    /// The earliest time in the index, in ms since the epoch.
    pub next_ms: Option<i64>,
    /// Alarm events delivered to objects.
    pub delivered: u64,
    /// Handler runs that succeeded.
    pub succeeded: u64,
    /// Handler runs that failed and were scheduled for a retry.
    pub retried: u64,
    /// Alarms given up after their last retry.
    pub given_up: u64,
    /// Alarm events in flight now.
    pub in_flight: u64,
    /// How late handlers started after their alarm's time.
    pub lateness: LatenessSummary,
}

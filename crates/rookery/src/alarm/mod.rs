//! Alarms: one per object, stored with the object, fired at least once after their time.
//!
//! The object's own database holds the truth (`_rookery_meta` row `alarm`, committed with the
//! turn that set it). The node keeps an index of next alarm times (`index.rs`) so that the
//! scheduler (`scheduler.rs`) never has to open an object's database to know when it is due.
//! The index may say *earlier* than the truth, never later and never nothing when the object
//! has an alarm:
//!
//! - a turn that sets an alarm lowers the index entry (`min(old, new)`) and waits until that is
//!   durable *before* the turn commits, so no crash can leave an object's alarm unindexed;
//! - once the turn's commit is durable, the entry is set to the exact time (or removed); these
//!   exact updates carry a version, so a late one never overrides a newer one.
//!
//! A wake-up that finds no due alarm in the object (early, or already handled) just corrects the
//! index. The index can always be rebuilt from the objects' own records.

mod clock;
mod index;
mod lateness;
mod scheduler;

pub(crate) use clock::system_now_ms;
pub use clock::{Clock, ManualClock, SystemClock};
pub(crate) use index::{AlarmIndex, AlarmKey, scan_objects};
pub(crate) use lateness::Lateness;
pub use lateness::LatenessSummary;
pub use scheduler::AlarmOutcome;
pub(crate) use scheduler::Scheduler;

/// What an alarm handler learns about the alarm it handles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AlarmInfo {
    /// How many earlier attempts of this alarm failed.
    pub retry_count: u32,
    /// Whether this is a retry of a failed attempt.
    pub is_retry: bool,
    /// When the alarm was due, in milliseconds since the Unix epoch.
    pub scheduled_ms: i64,
}

/// Retries after a failed alarm handler before the alarm is given up.
pub const MAX_RETRIES: u32 = 6;

/// Delay before retry number `retry` (0-based): 2 s, doubling.
pub fn backoff_ms(retry: u32) -> i64 {
    2_000i64 << retry.min(30)
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_starts_at_two_seconds_and_doubles() {
        let seq: Vec<i64> = (0..MAX_RETRIES).map(backoff_ms).collect();
        assert_eq!(seq, vec![2_000, 4_000, 8_000, 16_000, 32_000, 64_000]);
    }
}

//! An alarm event: what its handler learns, the retry policy, and what the event came to.

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

/// What the handling of one alarm event came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlarmOutcome {
    /// Nothing was due (early wake-up, or already handled): the index was corrected.
    NotDue,
    /// The handler succeeded.
    Succeeded,
    /// The handler failed and a retry is scheduled.
    Retrying,
    /// The handler failed its last retry; the alarm is deleted.
    GivenUp,
    /// The handler failed but had set or deleted the alarm itself: no retry.
    FailedAfterChange,
}

/// What an alarm event came to, for whoever delivered it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AlarmReport {
    pub(crate) outcome: AlarmOutcome,
    /// How long after its time the handler started (ms); `None` if it did not run.
    pub(crate) late_ms: Option<u64>,
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

//! How late alarm handlers start: a fixed histogram, cheap to record from any thread.

use std::sync::atomic::{AtomicU64, Ordering};

/// 1 ms buckets below 100 ms, 100 ms buckets below 10 s, then one bucket for the rest.
const FINE: usize = 100;
const COARSE: usize = 99;
const BUCKETS: usize = FINE + COARSE + 1;

/// Lateness of handler starts, in milliseconds.
pub(crate) struct Lateness {
    buckets: [AtomicU64; BUCKETS],
    max: AtomicU64,
}

/// A summary of [`Lateness`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct LatenessSummary {
    /// Handler starts recorded.
    pub count: u64,
    /// Median lateness (ms), to the bucket's upper bound.
    pub p50_ms: u64,
    /// 99th percentile lateness (ms), to the bucket's upper bound.
    pub p99_ms: u64,
    /// Largest lateness (ms).
    pub max_ms: u64,
}

impl Lateness {
    pub(crate) fn new() -> Self {
        Self {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            max: AtomicU64::new(0),
        }
    }

    fn bucket(ms: u64) -> usize {
        match ms {
            ms if ms < FINE as u64 => ms as usize,
            ms if ms < 10_000 => FINE + (ms / 100) as usize - 1,
            _ => BUCKETS - 1,
        }
    }

    fn upper(bucket: usize) -> u64 {
        match bucket {
            b if b < FINE => b as u64,
            b if b < BUCKETS - 1 => (b - FINE + 2) as u64 * 100,
            _ => u64::MAX,
        }
    }

    /// Records one handler start `ms` after its time.
    pub(crate) fn record(&self, ms: u64) {
        self.buckets[Self::bucket(ms)].fetch_add(1, Ordering::Relaxed);
        self.max.fetch_max(ms, Ordering::Relaxed);
    }

    /// Percentiles so far.
    pub(crate) fn summary(&self) -> LatenessSummary {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let count: u64 = counts.iter().sum();
        let max = self.max.load(Ordering::Relaxed);
        let quantile = |q: f64| {
            let rank = ((count as f64) * q).ceil().max(1.0) as u64;
            let mut seen = 0;
            for (i, c) in counts.iter().enumerate() {
                seen += c;
                if seen >= rank {
                    return Self::upper(i).min(max);
                }
            }
            max
        };
        LatenessSummary {
            count,
            p50_ms: if count == 0 { 0 } else { quantile(0.5) },
            p99_ms: if count == 0 { 0 } else { quantile(0.99) },
            max_ms: max,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_come_from_the_buckets() {
        let l = Lateness::new();
        for ms in 0..100 {
            l.record(ms);
        }
        l.record(2_345);
        let s = l.summary();
        assert_eq!(s.count, 101);
        assert_eq!(s.p50_ms, 50);
        assert_eq!(s.p99_ms, 99);
        assert_eq!(s.max_ms, 2_345);
        assert_eq!(Lateness::bucket(2_345), FINE + 22);
        assert_eq!(Lateness::upper(FINE + 22), 2_400);
    }
}

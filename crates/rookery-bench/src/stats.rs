//! Latency samples and their summary (nearest-rank percentiles).

use std::time::Duration;

use serde::Serialize;

/// Latencies recorded by one task, in nanoseconds; merged after the run.
#[derive(Debug, Default, Clone)]
pub struct Samples {
    nanos: Vec<u64>,
}

impl Samples {
    /// An empty set with room for `n` samples, so recording never reallocates mid-run.
    pub fn with_capacity(n: usize) -> Self {
        Self {
            nanos: Vec::with_capacity(n),
        }
    }

    /// Records one latency.
    pub fn record(&mut self, latency: Duration) {
        // u64 nanoseconds cover 584 years; saturate rather than wrap.
        self.nanos
            .push(u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX));
    }

    /// Appends another task's samples.
    pub fn merge(&mut self, other: Samples) {
        self.nanos.extend(other.nanos);
    }

    /// How many samples were recorded.
    pub fn len(&self) -> usize {
        self.nanos.len()
    }

    /// Sorts the samples and summarises them; `None` when there are none.
    pub fn summarize(mut self) -> Option<LatencySummary> {
        if self.nanos.is_empty() {
            return None;
        }
        self.nanos.sort_unstable();
        let sorted = &self.nanos;
        let sum: u128 = sorted.iter().map(|&n| u128::from(n)).sum();
        let mean = sum / sorted.len() as u128;
        Some(LatencySummary {
            count: sorted.len(),
            p50_ms: ms(percentile(sorted, 50.0)),
            p99_ms: ms(percentile(sorted, 99.0)),
            max_ms: ms(sorted[sorted.len() - 1]),
            mean_ms: ms(u64::try_from(mean).unwrap_or(u64::MAX)),
        })
    }
}

/// The distribution of a set of latencies, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LatencySummary {
    /// Number of samples.
    pub count: usize,
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Slowest sample.
    pub max_ms: f64,
    /// Arithmetic mean.
    pub mean_ms: f64,
}

/// The nearest-rank percentile `p` (0–100] of ascending `sorted`; 0 when empty.
///
/// Nearest rank returns an actually observed sample, so p99 of 100 samples is the 99th one and
/// never an interpolated value nobody saw.
pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Nanoseconds as milliseconds rounded to microseconds, for readable JSON.
fn ms(nanos: u64) -> f64 {
    (nanos as f64 / 1_000.0).round() / 1_000.0
}

/// `count` events over `elapsed` as a rate per second, rounded to one decimal.
pub fn per_second(count: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs <= 0.0 {
        return 0.0;
    }
    (count as f64 / secs * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let sorted: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&sorted, 50.0), 50);
        assert_eq!(percentile(&sorted, 99.0), 99);
        assert_eq!(percentile(&sorted, 100.0), 100);
        assert_eq!(percentile(&sorted, 0.0), 1);
        assert_eq!(percentile(&[7], 99.0), 7);
        assert_eq!(percentile(&[], 50.0), 0);
        // Ten samples: p99 is the slowest, p50 the fifth.
        let ten: Vec<u64> = (1..=10).collect();
        assert_eq!(percentile(&ten, 99.0), 10);
        assert_eq!(percentile(&ten, 50.0), 5);
    }

    #[test]
    fn summary_sorts_merges_and_converts_to_ms() {
        let mut a = Samples::with_capacity(2);
        a.record(Duration::from_millis(3));
        a.record(Duration::from_micros(1_500));
        let mut b = Samples::default();
        b.record(Duration::from_millis(10));
        b.record(Duration::from_millis(2));
        a.merge(b);
        assert_eq!(a.len(), 4);
        let s = a.summarize().unwrap();
        assert_eq!(s.count, 4);
        assert_eq!(s.p50_ms, 2.0);
        assert_eq!(s.p99_ms, 10.0);
        assert_eq!(s.max_ms, 10.0);
        assert_eq!(s.mean_ms, 4.125);
    }

    #[test]
    fn empty_summary_is_none() {
        assert!(Samples::default().summarize().is_none());
    }

    #[test]
    fn rate_per_second() {
        assert_eq!(per_second(500, Duration::from_millis(250)), 2000.0);
        assert_eq!(per_second(5, Duration::ZERO), 0.0);
    }
}

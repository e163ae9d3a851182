//! The [`Metrics`](crate::Metrics) object's summaries, published to the process's metrics
//! recorder: with the server's Prometheus exporter, they appear at `/metrics` as
//!
//! - `rookery_app_metric_count_total{source, name}`: values recorded (counter);
//! - `rookery_app_metric_sum{source, name}`: their sum since the process started (gauge, so
//!   negative values are allowed);
//! - `rookery_app_metric_min` / `rookery_app_metric_max{source, name}`: the extremes of the
//!   last flushed period (gauges);
//! - `rookery_app_metric_series_dropped_total`: summaries not published because the series
//!   budget was spent.
//!
//! Labels come from applications (the object's name and the metric's name), so the number of
//! `(source, name)` series one process publishes is capped at [`MAX_SERIES`]: a scrape stays
//! small however many names are recorded. Summaries beyond the cap are counted, not
//! published (they were still flushed, as with any other target).

use std::collections::{BTreeMap, HashSet};
use std::sync::{LazyLock, Mutex};

use serde::{Deserialize, Serialize};

/// Most `(source, name)` series the process publishes.
pub const MAX_SERIES: usize = 10_000;

const COUNT: &str = "rookery_app_metric_count_total";
const SUM: &str = "rookery_app_metric_sum";
const MIN: &str = "rookery_app_metric_min";
const MAX: &str = "rookery_app_metric_max";
const DROPPED: &str = "rookery_app_metric_series_dropped_total";

/// The series published so far, shared by every Metrics object of the process.
static SERIES: LazyLock<SeriesBudget> = LazyLock::new(|| {
    describe();
    SeriesBudget::new(MAX_SERIES)
});

/// The summary of one metric over a period: what a Metrics object keeps between flushes and
/// publishes.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Sum of the recorded values.
    pub sum: f64,
    /// How many values were recorded.
    pub count: u64,
    /// The smallest value.
    pub min: f64,
    /// The largest value.
    pub max: f64,
}

/// Publishes one source's summaries, by metric name; returns how many were dropped for want of
/// budget.
pub fn publish(source: &str, summaries: &BTreeMap<String, Summary>) -> usize {
    let mut dropped = 0;
    for (name, p) in summaries {
        if !SERIES.admit(source, name) {
            dropped += 1;
            continue;
        }
        let labels = [("source", source.to_string()), ("name", name.to_string())];
        ::metrics::counter!(COUNT, &labels).increment(p.count);
        ::metrics::gauge!(SUM, &labels).increment(p.sum);
        ::metrics::gauge!(MIN, &labels).set(p.min);
        ::metrics::gauge!(MAX, &labels).set(p.max);
    }
    if dropped > 0 {
        ::metrics::counter!(DROPPED).increment(dropped as u64);
    }
    dropped
}

fn describe() {
    ::metrics::describe_counter!(
        COUNT,
        "Values recorded by Metrics objects, by source and name."
    );
    ::metrics::describe_gauge!(
        SUM,
        "Sum of the values recorded by Metrics objects since the process started."
    );
    ::metrics::describe_gauge!(MIN, "Smallest value of the last flushed period.");
    ::metrics::describe_gauge!(MAX, "Largest value of the last flushed period.");
    ::metrics::describe_counter!(
        DROPPED,
        "Metrics summaries not published: the process's series budget was spent."
    );
}

/// A set of series that grows up to a cap.
struct SeriesBudget {
    cap: usize,
    seen: Mutex<HashSet<(String, String)>>,
}

impl SeriesBudget {
    fn new(cap: usize) -> Self {
        Self {
            cap,
            seen: Mutex::new(HashSet::new()),
        }
    }

    /// Whether the series may be published: it already is, or there is room for it.
    fn admit(&self, source: &str, name: &str) -> bool {
        // A poisoned set is still a valid set: a panic cannot leave it half-inserted.
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let key = (source.to_string(), name.to_string());
        if seen.contains(&key) {
            return true;
        }
        if seen.len() >= self.cap {
            return false;
        }
        seen.insert(key);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_admits_known_series_and_refuses_new_ones_past_the_cap() {
        let budget = SeriesBudget::new(2);
        assert!(budget.admit("api", "latency"));
        assert!(budget.admit("api", "requests"));
        assert!(!budget.admit("api", "errors"), "a third series");
        assert!(!budget.admit("web", "latency"), "same name, other source");
        assert!(budget.admit("api", "latency"), "a known series stays");
    }
}

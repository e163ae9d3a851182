//! The server's own counters, `GET /_rookery/stats`, and what changed between two readings.

use std::time::Duration;

use anyhow::{Context, bail};
use hyper::{Method, StatusCode, Uri};
use serde::{Deserialize, Serialize};

use crate::http::Conn;
use crate::scenarios::{Outcome, truncate};

/// Where the server publishes its counters.
pub const STATS_PATH: &str = "/_rookery/stats";

/// One reading of `GET /_rookery/stats` (unknown fields are ignored).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub struct ServerStats {
    /// Object activations, commits and syncs.
    pub runtime: RuntimeCounters,
    /// The alarm machinery.
    pub alarms: AlarmCounters,
}

/// The `runtime` part of the stats.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub struct RuntimeCounters {
    /// Objects with a live activation now.
    pub live_objects: u64,
    /// Live objects with their database files open now (0 from servers that do not say).
    #[serde(default)]
    pub open_databases: u64,
    /// Memory the server counts against its cap for live objects, in bytes (0 from servers
    /// that do not say).
    #[serde(default)]
    pub live_bytes: u64,
    /// Activations started so far.
    pub activations: u64,
    /// Turns that committed writes so far.
    pub commits: u64,
    /// Rounds of the group-commit syncer so far.
    pub sync_rounds: u64,
    /// File and directory syncs issued so far.
    pub file_syncs: u64,
}

/// The `alarms` part of the stats.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub struct AlarmCounters {
    /// Alarms in the node's index now.
    pub scheduled: u64,
    /// The earliest alarm time in the index (ms since the epoch).
    pub next_ms: Option<i64>,
    /// Alarm events delivered to objects so far.
    pub delivered: u64,
    /// Handler runs that succeeded so far.
    pub succeeded: u64,
    /// Handler runs that failed and were retried so far.
    pub retried: u64,
    /// Alarms given up after their last retry so far.
    pub given_up: u64,
    /// Alarm events being handled now.
    pub in_flight: u64,
    /// How late handlers started, since the server started.
    pub lateness: Lateness,
}

/// The server's lateness histogram summary.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct Lateness {
    /// Handler starts recorded.
    pub count: u64,
    /// Median lateness in ms (to the histogram bucket's upper bound).
    pub p50_ms: u64,
    /// 99th percentile lateness in ms (to the bucket's upper bound).
    pub p99_ms: u64,
    /// Largest lateness in ms.
    pub max_ms: u64,
}

/// Parses a stats body; fails with the start of the body when it is not the expected JSON.
pub fn parse_stats(body: &[u8]) -> anyhow::Result<ServerStats> {
    serde_json::from_slice(body).with_context(|| {
        format!(
            "unexpected {STATS_PATH} body {:?}",
            truncate(&String::from_utf8_lossy(body), 200)
        )
    })
}

/// Reads the server's stats over `conn`.
pub async fn fetch(conn: &mut Conn) -> anyhow::Result<ServerStats> {
    let uri = Uri::from_static(STATS_PATH);
    let (status, body) = conn
        .send(Method::GET, uri)
        .await
        .with_context(|| format!("GET {STATS_PATH}"))?;
    if status != StatusCode::OK {
        bail!("GET {STATS_PATH} answered {status}");
    }
    parse_stats(&body)
}

/// What the runtime counters did between two readings (saturating: a restarted server cannot
/// make them negative).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RuntimeDelta {
    /// Activations started.
    pub activations: u64,
    /// Turns that committed writes.
    pub commits: u64,
    /// Group-commit rounds.
    pub sync_rounds: u64,
    /// File and directory syncs.
    pub file_syncs: u64,
}

impl RuntimeDelta {
    /// `after - before`.
    pub fn between(before: &ServerStats, after: &ServerStats) -> Self {
        let (b, a) = (&before.runtime, &after.runtime);
        Self {
            activations: a.activations.saturating_sub(b.activations),
            commits: a.commits.saturating_sub(b.commits),
            sync_rounds: a.sync_rounds.saturating_sub(b.sync_rounds),
            file_syncs: a.file_syncs.saturating_sub(b.file_syncs),
        }
    }

    /// File syncs per second of `elapsed`, to one decimal.
    pub fn fsyncs_per_s(&self, elapsed: Duration) -> f64 {
        crate::stats::per_second(self.file_syncs, elapsed)
    }

    /// Commits per group-commit round, to two decimals; `None` without a round.
    pub fn commits_per_sync_round(&self) -> Option<f64> {
        (self.sync_rounds > 0)
            .then(|| (self.commits as f64 / self.sync_rounds as f64 * 100.0).round() / 100.0)
    }

    /// Adds `commits`, `sync_rounds`, `file_syncs`, `fsyncs_per_s` and `commits_per_sync_round`
    /// over `elapsed` to `outcome`.
    pub fn add_figures(&self, outcome: &mut Outcome, elapsed: Duration) {
        outcome
            .figure("commits", self.commits)
            .figure("sync_rounds", self.sync_rounds)
            .figure("file_syncs", self.file_syncs)
            .figure("fsyncs_per_s", self.fsyncs_per_s(elapsed))
            .figure("commits_per_sync_round", self.commits_per_sync_round());
    }
}

/// What the alarm counters did between two readings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AlarmDelta {
    /// Alarm events delivered.
    pub delivered: u64,
    /// Handler runs that succeeded.
    pub succeeded: u64,
    /// Handler runs that failed and were retried.
    pub retried: u64,
    /// Alarms given up.
    pub given_up: u64,
    /// Handler starts recorded in the lateness histogram.
    pub handler_runs: u64,
}

impl AlarmDelta {
    /// `after - before`.
    pub fn between(before: &ServerStats, after: &ServerStats) -> Self {
        let (b, a) = (&before.alarms, &after.alarms);
        Self {
            delivered: a.delivered.saturating_sub(b.delivered),
            succeeded: a.succeeded.saturating_sub(b.succeeded),
            retried: a.retried.saturating_sub(b.retried),
            given_up: a.given_up.saturating_sub(b.given_up),
            handler_runs: a.lateness.count.saturating_sub(b.lateness.count),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEFORE: &str = r#"{"runtime":{"live_objects":3,"activations":10,"commits":100,
        "sync_rounds":40,"file_syncs":80},"alarms":{"scheduled":1000,"next_ms":1700000000000,
        "delivered":5,"succeeded":5,"retried":0,"given_up":0,"in_flight":0,
        "lateness":{"count":5,"p50_ms":1,"p99_ms":3,"max_ms":3}}}"#;

    const AFTER: &str = r#"{"runtime":{"live_objects":0,"activations":1010,"commits":5100,
        "sync_rounds":540,"file_syncs":1080,"future_field":1},"alarms":{"scheduled":0,
        "next_ms":null,"delivered":10005,"succeeded":10004,"retried":1,"given_up":0,
        "in_flight":0,"lateness":{"count":10005,"p50_ms":40,"p99_ms":900,"max_ms":1234}},
        "other":{}}"#;

    #[test]
    fn parses_the_stats_body() {
        let s = parse_stats(AFTER.as_bytes()).unwrap();
        assert_eq!(s.runtime.activations, 1010);
        assert_eq!(s.runtime.file_syncs, 1080);
        assert_eq!(s.alarms.scheduled, 0);
        assert_eq!(s.alarms.next_ms, None);
        assert_eq!(
            s.alarms.lateness,
            Lateness {
                count: 10005,
                p50_ms: 40,
                p99_ms: 900,
                max_ms: 1234
            }
        );
        let b = parse_stats(BEFORE.as_bytes()).unwrap();
        assert_eq!(b.alarms.next_ms, Some(1_700_000_000_000));
    }

    #[test]
    fn refuses_other_bodies() {
        let err = parse_stats(b"{\"error\":\"Not found\"}").unwrap_err();
        assert!(format!("{err:#}").contains("unexpected /_rookery/stats body"));
        assert!(parse_stats(b"").is_err());
        // A counter that went negative is not a counter.
        assert!(parse_stats(AFTER.replace("5100", "-1").as_bytes()).is_err());
    }

    #[test]
    fn runtime_deltas_and_rates() {
        let before = parse_stats(BEFORE.as_bytes()).unwrap();
        let after = parse_stats(AFTER.as_bytes()).unwrap();
        let d = RuntimeDelta::between(&before, &after);
        assert_eq!(
            d,
            RuntimeDelta {
                activations: 1000,
                commits: 5000,
                sync_rounds: 500,
                file_syncs: 1000
            }
        );
        assert_eq!(d.fsyncs_per_s(Duration::from_millis(2_000)), 500.0);
        assert_eq!(d.commits_per_sync_round(), Some(10.0));
        // Reversed (a restarted server): zero, not a wrap-around.
        let back = RuntimeDelta::between(&after, &before);
        assert_eq!(back, RuntimeDelta::default());
        assert_eq!(back.commits_per_sync_round(), None);
        let third = RuntimeDelta {
            commits: 10,
            sync_rounds: 3,
            ..RuntimeDelta::default()
        };
        assert_eq!(third.commits_per_sync_round(), Some(3.33));
    }

    #[test]
    fn runtime_figures() {
        let d = RuntimeDelta {
            activations: 1,
            commits: 50,
            sync_rounds: 20,
            file_syncs: 40,
        };
        let mut o = Outcome::new("counter-one", &serde_json::json!({}));
        d.add_figures(&mut o, Duration::from_secs(4));
        assert_eq!(o.figures["commits"], 50);
        assert_eq!(o.figures["sync_rounds"], 20);
        assert_eq!(o.figures["file_syncs"], 40);
        assert_eq!(o.figures["fsyncs_per_s"], 10.0);
        assert_eq!(o.figures["commits_per_sync_round"], 2.5);
    }

    #[test]
    fn alarm_deltas() {
        let before = parse_stats(BEFORE.as_bytes()).unwrap();
        let after = parse_stats(AFTER.as_bytes()).unwrap();
        assert_eq!(
            AlarmDelta::between(&before, &after),
            AlarmDelta {
                delivered: 10_000,
                succeeded: 9_999,
                retried: 1,
                given_up: 0,
                handler_runs: 10_000
            }
        );
    }
}

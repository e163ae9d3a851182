//! Prometheus metrics: the process's recorder, the request metrics each route keeps, and the
//! text served at `/metrics`, with the runtime's gauges read at scrape time.
//!
//! Events (requests, turns, sync rounds) are recorded as they happen through handles looked up
//! once, so the request path makes no map lookup or allocation for them; what the runtime
//! already counts (live objects, commits, alarms, connections) is read when scraped. Labels stay
//! bounded: route patterns, status codes and class names, never an object.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{Counter, Histogram, SharedString, Unit};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::conn::ConnectionStats;

/// Where the metrics are served, ahead of the configured routes.
pub const METRICS_PATH: &str = "/metrics";

/// Requests answered, by `route` (its pattern, or `_admin`, `_runtime`, `_worker`, `_none`)
/// and `status`.
const REQUESTS: &str = "rookery_http_requests_total";
/// Time to the response head, by `route` (histogram, seconds).
const REQUEST_SECONDS: &str = "rookery_http_request_duration_seconds";

/// Histogram buckets (seconds): 100 µs to 10 s.
const BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// How often the recorder folds recorded samples into its histograms: between scrapes,
/// samples wait in memory.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// The process's Prometheus recorder, installed on first use; `None` when the program that
/// embeds the server installed another recorder first (then `/metrics` says so).
pub(crate) fn handle() -> Option<&'static PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new().set_buckets(&BUCKETS).ok()?;
            match builder.install_recorder() {
                Ok(handle) => {
                    describe();
                    rookery::telemetry::describe();
                    let upkeep = handle.clone();
                    let spawned = std::thread::Builder::new()
                        .name("rookery-metrics".into())
                        .spawn(move || {
                            loop {
                                std::thread::sleep(UPKEEP_EVERY);
                                upkeep.run_upkeep();
                            }
                        });
                    if let Err(e) = spawned {
                        tracing::warn!(error = %e, "cannot start the metrics upkeep thread");
                    }
                    Some(handle)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "another metrics recorder is installed; /metrics is off");
                    None
                }
            }
        })
        .as_ref()
}

fn describe() {
    metrics::describe_counter!(REQUESTS, "HTTP requests answered, by route and status.");
    metrics::describe_histogram!(
        REQUEST_SECONDS,
        Unit::Seconds,
        "Time from a request to its response head, by route."
    );
}

/// The request metrics of one route (or one of the server's own paths).
pub(crate) struct RouteMetrics {
    route: SharedString,
    duration: OnceLock<Histogram>,
    /// One counter per common status, made on first use.
    by_status: [OnceLock<Counter>; STATUSES.len()],
}

/// Statuses with a counter kept ready; others are looked up per request.
const STATUSES: [&str; 26] = [
    "200", "201", "202", "204", "206", "301", "302", "304", "400", "401", "403", "404", "405",
    "408", "409", "413", "415", "422", "426", "429", "500", "501", "502", "503", "504", "507",
];

impl std::fmt::Debug for RouteMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteMetrics")
            .field("route", &&*self.route)
            .finish()
    }
}

impl Clone for RouteMetrics {
    /// A copy counts into the same series; its handles are looked up again on first use.
    fn clone(&self) -> Self {
        Self {
            route: self.route.clone(),
            duration: OnceLock::new(),
            by_status: std::array::from_fn(|_| OnceLock::new()),
        }
    }
}

impl RouteMetrics {
    /// The metrics of requests to `route`.
    pub(crate) fn new(route: &str) -> Self {
        Self {
            route: SharedString::from_owned(route.to_string()),
            duration: OnceLock::new(),
            by_status: std::array::from_fn(|_| OnceLock::new()),
        }
    }

    /// Counts a request answered with `status` after `elapsed`.
    pub(crate) fn record(&self, status: http::StatusCode, elapsed: Duration) {
        let code = status.as_str();
        match STATUSES.iter().position(|s| *s == code) {
            Some(i) => self.by_status[i]
                .get_or_init(|| {
                    metrics::counter!(REQUESTS, "route" => self.route.clone(), "status" => STATUSES[i])
                })
                .increment(1),
            None => {
                metrics::counter!(REQUESTS, "route" => self.route.clone(), "status" => code.to_string())
                    .increment(1);
            }
        }
        self.duration
            .get_or_init(|| metrics::histogram!(REQUEST_SECONDS, "route" => self.route.clone()))
            .record(elapsed.as_secs_f64());
    }
}

/// The request metrics of the paths the server answers itself.
pub(crate) struct OwnRoutes {
    /// `/_rookery/admin/...`.
    pub(crate) admin: RouteMetrics,
    /// `/_rookery/...`, `/metrics`, `/healthz`, `/readyz`.
    pub(crate) runtime: RouteMetrics,
    /// The built-in chat page (`/chat`, `/chat/...`).
    pub(crate) chat: RouteMetrics,
    /// What no route takes and the worker answers.
    pub(crate) worker: RouteMetrics,
    /// What nothing takes (404).
    pub(crate) none: RouteMetrics,
}

impl OwnRoutes {
    pub(crate) fn new() -> Self {
        Self {
            admin: RouteMetrics::new("_admin"),
            runtime: RouteMetrics::new("_runtime"),
            chat: RouteMetrics::new("_chat"),
            worker: RouteMetrics::new("_worker"),
            none: RouteMetrics::new("_none"),
        }
    }
}

/// The metrics text: the runtime's and the connections' figures are read now, then everything
/// is rendered. `None` when another recorder is installed.
pub(crate) fn render(runtime: &rookery::Runtime, connections: &ConnectionStats) -> Option<String> {
    let handle = handle()?;
    let stats = runtime.stats();
    set_gauge(
        "rookery_live_objects",
        "Objects with a live activation.",
        stats.live_objects as f64,
    );
    set_gauge(
        "rookery_live_bytes",
        "Memory live objects hold, as max_live_bytes counts it.",
        stats.live_bytes as f64,
    );
    set_gauge(
        "rookery_wal_bytes",
        "Bytes the objects' WALs hold in memory, not yet checkpointed.",
        stats.wal_bytes as f64,
    );
    set_gauge(
        "rookery_open_databases",
        "Live objects with their database file open.",
        stats.open_databases as f64,
    );
    set_gauge(
        "rookery_websockets_open",
        "WebSockets accepted and not yet ended.",
        stats.websockets as f64,
    );
    set_counter(
        "rookery_files_closed_total",
        "Database files closed to make room (reopened at their objects' next requests).",
        stats.files_closed,
    );
    set_counter(
        "rookery_commits_total",
        "Turns that committed writes.",
        stats.commits,
    );
    set_counter(
        "rookery_sync_rounds_total",
        "Group-commit rounds.",
        stats.sync_rounds,
    );
    set_counter(
        "rookery_file_syncs_total",
        "File and directory syncs issued.",
        stats.file_syncs,
    );
    for class in runtime.class_stats() {
        let name = SharedString::from_owned(class.class);
        for (metric, help, value) in [
            (
                "rookery_class_live_objects",
                "Live objects, by class.",
                class.live_objects,
            ),
            (
                "rookery_class_hibernated_objects",
                "Objects out of memory with hibernatable WebSockets connected, by class.",
                class.hibernated_objects,
            ),
            (
                "rookery_class_websockets_open",
                "WebSockets open, by class.",
                class.websockets,
            ),
            (
                "rookery_class_queued_events",
                "Events waiting in the live objects' mailboxes, by class.",
                class.queued_events,
            ),
        ] {
            metrics::describe_gauge!(metric, help);
            metrics::gauge!(metric, "class" => name.clone()).set(value as f64);
        }
    }
    let alarms = runtime.alarm_stats();
    set_gauge(
        "rookery_alarms_scheduled",
        "Alarms in the node's index.",
        alarms.scheduled as f64,
    );
    set_gauge(
        "rookery_alarms_in_flight",
        "Alarm events running now.",
        alarms.in_flight as f64,
    );
    set_counter(
        "rookery_alarms_delivered_total",
        "Alarm events delivered.",
        alarms.delivered,
    );
    set_counter(
        "rookery_alarms_succeeded_total",
        "Alarm handlers that succeeded.",
        alarms.succeeded,
    );
    set_counter(
        "rookery_alarms_retried_total",
        "Alarm handlers that failed and will retry.",
        alarms.retried,
    );
    set_counter(
        "rookery_alarms_given_up_total",
        "Alarms given up after their last retry.",
        alarms.given_up,
    );
    set_gauge(
        "rookery_alarm_lateness_p99_seconds",
        "99th percentile of how late alarm handlers started.",
        alarms.lateness.p99_ms as f64 / 1000.0,
    );
    set_gauge(
        "rookery_alarm_lateness_max_seconds",
        "Latest an alarm handler started after its time.",
        alarms.lateness.max_ms as f64 / 1000.0,
    );
    set_gauge(
        "rookery_connections_open",
        "HTTP connections open.",
        connections.open as f64,
    );
    set_counter(
        "rookery_connections_accepted_total",
        "HTTP connections accepted.",
        connections.accepted,
    );
    set_counter(
        "rookery_connections_refused_total",
        "HTTP connections refused at the connection limit.",
        connections.refused,
    );
    Some(handle.render())
}

fn set_gauge(name: &'static str, help: &'static str, value: f64) {
    metrics::describe_gauge!(name, help);
    metrics::gauge!(name).set(value);
}

fn set_counter(name: &'static str, help: &'static str, value: u64) {
    metrics::describe_counter!(name, help);
    metrics::counter!(name).absolute(value);
}

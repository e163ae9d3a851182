//! The runtime's metrics, recorded through the `metrics` facade. The program that embeds the
//! runtime installs a recorder (the server installs a Prometheus exporter); without one,
//! recording does nothing. Labels stay bounded: a class name, never an object.

use metrics::{Unit, describe_counter, describe_histogram};

/// How long a turn took, from its event to its commit (histogram, seconds), by `class`.
pub const TURN_SECONDS: &str = "rookery_turn_duration_seconds";
/// Activations started, by `class`.
pub const ACTIVATIONS: &str = "rookery_activations_total";
/// Activations that left memory on their own, by `class` and `reason` (`idle` or
/// `pressure`).
pub const EVICTIONS: &str = "rookery_evictions_total";
/// How long one group-commit round took: the log written and synced, the other files synced,
/// the gates opened (histogram, seconds).
pub const SYNC_ROUND_SECONDS: &str = "rookery_sync_round_duration_seconds";

/// Describes the runtime's metrics to the installed recorder.
pub fn describe() {
    describe_histogram!(
        TURN_SECONDS,
        Unit::Seconds,
        "Time a turn took, from its event to its commit, by class."
    );
    describe_counter!(ACTIVATIONS, "Activations started, by class.");
    describe_counter!(
        EVICTIONS,
        "Activations that left memory because they idled or other objects needed the room."
    );
    describe_histogram!(
        SYNC_ROUND_SECONDS,
        Unit::Seconds,
        "Time one group-commit round took (log written and synced, gates opened)."
    );
}

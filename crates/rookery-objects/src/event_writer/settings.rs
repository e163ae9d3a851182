//! The event writer's flush bounds, read once per instance from `[vars]`; a var that is not
//! a number in its range is ignored with a warning and the default applies.

use rookery::prelude::*;

use crate::config_var::var;

/// When a writer flushes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WriterSettings {
    /// Events per file, and the buffer size that flushes (`EVENTS_WRITER_MAX_EVENTS`, 1 000).
    pub max_events: u64,
    /// Uncompressed bytes per file, and the buffer size that flushes
    /// (`EVENTS_WRITER_MAX_BYTES`, 1 MiB).
    pub max_bytes: u64,
    /// Oldest a buffered event gets before a flush (`EVENTS_WRITER_MAX_AGE_MS`, 10 000).
    pub max_age_ms: i64,
}

impl Default for WriterSettings {
    fn default() -> Self {
        Self {
            max_events: 1_000,
            max_bytes: 1024 * 1024,
            max_age_ms: 10_000,
        }
    }
}

impl WriterSettings {
    /// The settings from `env`'s vars.
    pub(crate) fn from_env(env: &Env) -> Self {
        let d = Self::default();
        let age = var(
            env,
            "EVENTS_WRITER_MAX_AGE_MS",
            u64::try_from(d.max_age_ms).unwrap_or(10_000),
            1,
            86_400_000,
        );
        Self {
            max_events: var(env, "EVENTS_WRITER_MAX_EVENTS", d.max_events, 1, 1_000_000),
            max_bytes: var(
                env,
                "EVENTS_WRITER_MAX_BYTES",
                d.max_bytes,
                1,
                256 * 1024 * 1024,
            ),
            max_age_ms: i64::try_from(age).unwrap_or(d.max_age_ms),
        }
    }
}

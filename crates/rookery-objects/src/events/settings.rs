//! The bounds and retry settings of an events namespace, read once per instance from `[vars]`.
//!
//! A var that is not a number in its range is ignored with a warning, and the default applies:
//! a typo must not turn a bound off.

use std::hash::BuildHasher;

use rookery::prelude::*;

use crate::backoff::doubling_ms;
use crate::config_var::var;

/// The settings of one `Subscriptions` object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Settings {
    /// First retry delay (`EVENTS_RETRY_BASE_MS`, 1 000).
    pub retry_base_ms: i64,
    /// Longest retry delay (`EVENTS_RETRY_CAP_MS`, 300 000).
    pub retry_cap_ms: i64,
    /// Failed attempts after which an event is dead-lettered (`EVENTS_MAX_ATTEMPTS`, 8).
    pub max_attempts: i64,
    /// Subscriptions per namespace (`EVENTS_MAX_SUBSCRIPTIONS`, 100).
    pub max_subscriptions: i64,
    /// Undelivered events per subscription (`EVENTS_MAX_PENDING`, 10 000).
    pub max_pending: i64,
    /// Dead letters kept per subscription (`EVENTS_MAX_DEAD_LETTERS`, 10 000).
    pub max_dead_letters: i64,
    /// Largest publish body (`EVENTS_MAX_EVENT_BYTES`, 256 KiB).
    pub max_event_bytes: usize,
    /// How long a published id is remembered (`EVENTS_DEDUP_WINDOW_MS`, 24 h).
    pub dedup_window_ms: i64,
    /// Most published ids remembered (`EVENTS_DEDUP_MAX`, 100 000).
    pub dedup_max: i64,
    /// Delivery shards of the namespace (`EVENTS_SHARDS`, 0: none; at most 64).
    pub shards: i64,
    /// Matches within a minute that make a pattern hot (`EVENTS_HOT_EVENTS`, 600).
    pub hot_events: i64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            retry_base_ms: 1_000,
            retry_cap_ms: 300_000,
            max_attempts: 8,
            max_subscriptions: 100,
            max_pending: 10_000,
            max_dead_letters: 10_000,
            max_event_bytes: 256 * 1024,
            dedup_window_ms: 24 * 3600 * 1000,
            dedup_max: 100_000,
            shards: 0,
            hot_events: 600,
        }
    }
}

impl Settings {
    /// The settings from `env`'s vars.
    pub(crate) fn from_env(env: &Env) -> Self {
        let d = Self::default();
        let retry_base_ms = var(env, "EVENTS_RETRY_BASE_MS", d.retry_base_ms, 1, 3_600_000);
        Self {
            retry_base_ms,
            retry_cap_ms: var(
                env,
                "EVENTS_RETRY_CAP_MS",
                d.retry_cap_ms.max(retry_base_ms),
                retry_base_ms,
                86_400_000,
            ),
            max_attempts: var(env, "EVENTS_MAX_ATTEMPTS", d.max_attempts, 1, 100),
            max_subscriptions: var(
                env,
                "EVENTS_MAX_SUBSCRIPTIONS",
                d.max_subscriptions,
                1,
                10_000,
            ),
            max_pending: var(env, "EVENTS_MAX_PENDING", d.max_pending, 1, 1_000_000),
            max_dead_letters: var(
                env,
                "EVENTS_MAX_DEAD_LETTERS",
                d.max_dead_letters,
                1,
                1_000_000,
            ),
            max_event_bytes: var(
                env,
                "EVENTS_MAX_EVENT_BYTES",
                d.max_event_bytes,
                64,
                1024 * 1024,
            ),
            dedup_window_ms: var(
                env,
                "EVENTS_DEDUP_WINDOW_MS",
                d.dedup_window_ms,
                0,
                30 * 24 * 3600 * 1000,
            ),
            dedup_max: var(env, "EVENTS_DEDUP_MAX", d.dedup_max, 0, 10_000_000),
            shards: var(
                env,
                "EVENTS_SHARDS",
                d.shards,
                0,
                super::coordinator::MAX_SHARDS,
            ),
            hot_events: var(env, "EVENTS_HOT_EVENTS", d.hot_events, 1, 100_000_000),
        }
    }

    /// The undithered delay before attempt `failed + 1`: the base doubled per failed attempt,
    /// up to the cap.
    pub(crate) fn backoff_ceiling_ms(&self, failed: i64) -> i64 {
        doubling_ms(self.retry_base_ms, self.retry_cap_ms, failed)
    }

    /// The delay before the next attempt after `failed` failed ones: "equal jitter", a random
    /// point in the upper half of [`Self::backoff_ceiling_ms`], so that subscribers failing
    /// together do not retry together, yet the delay still grows.
    pub(crate) fn backoff_ms(&self, failed: i64) -> i64 {
        let ceiling = self.backoff_ceiling_ms(failed);
        let half = ceiling / 2;
        let spread = u64::try_from(ceiling - half + 1).unwrap_or(1);
        half + i64::try_from(random_u64() % spread).unwrap_or(0)
    }
}

/// A random number from the standard library's per-process hasher keys (no RNG dependency);
/// good for jitter and unguessable-enough ids, not for secrets.
pub(crate) fn random_u64() -> u64 {
    std::collections::hash_map::RandomState::new().hash_one(std::time::Instant::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_with_jitter_in_the_upper_half() {
        let s = Settings::default();
        let ceilings: Vec<i64> = (1..=11).map(|n| s.backoff_ceiling_ms(n)).collect();
        assert_eq!(
            ceilings,
            [
                1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 64_000, 128_000, 256_000, 300_000,
                300_000
            ]
        );
        for failed in 1..=12 {
            let ceiling = s.backoff_ceiling_ms(failed);
            for _ in 0..50 {
                let d = s.backoff_ms(failed);
                assert!(
                    (ceiling / 2..=ceiling).contains(&d),
                    "{failed}: {d} of {ceiling}"
                );
            }
        }
    }
}

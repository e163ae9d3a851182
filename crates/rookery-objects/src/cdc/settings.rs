//! The schedule and bounds of CDC and the catalog, read once per instance from `[vars]`. A var
//! that is not a number in its range is ignored with a warning, and the default applies.

use rookery::prelude::*;

use crate::backoff::doubling_ms;
use crate::config_var::var;

/// The settings of a `CdcProcessor` and a `Catalog`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Settings {
    /// How long after the first pending change a delta file is written (`CDC_FLUSH_MS`, 10 000).
    pub flush_ms: i64,
    /// Pending changes that make a delta file at once, and the most one file holds
    /// (`CDC_MAX_CHANGES`, 1 000).
    pub max_changes: i64,
    /// Pending changes beyond which writes are refused (`CDC_MAX_PENDING`, 100 000).
    pub max_pending: i64,
    /// Largest `POST /cdc` body (`CDC_MAX_DOC_BYTES`, 256 KiB).
    pub max_doc_bytes: usize,
    /// First retry delay after a failed flush (`CDC_RETRY_BASE_MS`, 1 000).
    pub retry_base_ms: i64,
    /// Longest retry delay (`CDC_RETRY_CAP_MS`, 60 000).
    pub retry_cap_ms: i64,
    /// Most documents "the table as of snapshot N" returns (`CATALOG_MAX_ROWS`, 10 000).
    pub max_rows: i64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            flush_ms: 10_000,
            max_changes: 1_000,
            max_pending: 100_000,
            max_doc_bytes: 256 * 1024,
            retry_base_ms: 1_000,
            retry_cap_ms: 60_000,
            max_rows: 10_000,
        }
    }
}

impl Settings {
    /// The settings from `env`'s vars.
    pub(crate) fn from_env(env: &Env) -> Self {
        let d = Self::default();
        let retry_base_ms = var(env, "CDC_RETRY_BASE_MS", d.retry_base_ms, 1, 3_600_000);
        Self {
            flush_ms: var(env, "CDC_FLUSH_MS", d.flush_ms, 1, 86_400_000),
            max_changes: var(env, "CDC_MAX_CHANGES", d.max_changes, 1, 100_000),
            max_pending: var(env, "CDC_MAX_PENDING", d.max_pending, 1, 10_000_000),
            max_doc_bytes: var(env, "CDC_MAX_DOC_BYTES", d.max_doc_bytes, 64, 1024 * 1024),
            retry_base_ms,
            retry_cap_ms: var(
                env,
                "CDC_RETRY_CAP_MS",
                d.retry_cap_ms.max(retry_base_ms),
                retry_base_ms,
                86_400_000,
            ),
            max_rows: var(env, "CATALOG_MAX_ROWS", d.max_rows, 1, 1_000_000),
        }
    }

    /// The delay before retrying after `failures` failed flushes in a row: the base doubled per
    /// failure after the first, up to the cap.
    pub(crate) fn retry_ms(&self, failures: i64) -> i64 {
        doubling_ms(self.retry_base_ms, self.retry_cap_ms, failures)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_double_to_the_cap() {
        let s = Settings::default();
        let delays: Vec<i64> = (1..=8).map(|n| s.retry_ms(n)).collect();
        assert_eq!(
            delays,
            [1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 60_000, 60_000]
        );
    }
}

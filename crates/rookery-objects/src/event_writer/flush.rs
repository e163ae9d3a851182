//! One flush: plan a batch (durably), write its file, commit it to the catalog, drop it from
//! the buffer.

use std::io::Write;

use flate2::Compression;
use flate2::write::GzEncoder;
use rookery::prelude::*;
use serde_json::Value;
use serde_json::value::RawValue;

use super::{BUCKET_BINDING, EventWriter, LastFlush, Meta, Plan};
use crate::cdc::{DeltaCommit, EVENTS_TABLE, Observed, Snapshot, commit_file};

/// Longest delay between retries of a failed flush.
const RETRY_CAP_MS: i64 = 300_000;
/// First delay after a failed flush.
const RETRY_BASE_MS: i64 = 1_000;

/// `YYYY-MM-DD` (UTC) of `ms` since the epoch.
pub fn utc_date(ms: i64) -> String {
    let (y, m, d) = rookery::civil_from_days(ms.div_euclid(86_400_000));
    format!("{y:04}-{m:02}-{d:02}")
}

/// The key of the file holding sequences `first` to `last` of `namespace`, whose first event
/// has timestamp `first_ms`.
pub fn file_name(namespace: &str, first_ms: i64, first: i64, last: i64) -> String {
    format!(
        "{namespace}/{}/{first:012}-{last:012}.ndjson.gz",
        utc_date(first_ms)
    )
}

/// `lines` as gzip-compressed NDJSON (one line each, each ending in a newline).
fn gzip_ndjson(lines: &[String]) -> std::io::Result<Vec<u8>> {
    let mut gz = GzEncoder::new(Vec::new(), Compression::default());
    for line in lines {
        gz.write_all(line.as_bytes())?;
        gz.write_all(b"\n")?;
    }
    gz.finish()
}

fn backoff_ms(failures: u32) -> i64 {
    crate::backoff::doubling_ms(RETRY_BASE_MS, RETRY_CAP_MS, i64::from(failures))
}

impl EventWriter {
    /// The batch to write next: the one planned before, or a new one from the oldest
    /// buffered events within the size bounds (at least one event), made durable before
    /// anything is written. `None` with an empty buffer.
    async fn plan(&mut self, meta: &mut Meta) -> Result<Option<Plan>> {
        if let Some(plan) = &meta.plan {
            return Ok(Some(plan.clone()));
        }
        let limit = i64::try_from(self.settings.max_events).unwrap_or(i64::MAX);
        let cursor = self.state.storage().sql().exec(
            "SELECT seq, length(CAST(body AS BLOB)) + 1 AS bytes FROM ew_buffer \
             WHERE batch IS NULL ORDER BY seq LIMIT ?",
            &[limit.into()],
        )?;
        let (mut first, mut last, mut events, mut bytes) = (None, 0_i64, 0_u64, 0_u64);
        for row in cursor.rows() {
            let seq: i64 = row.get("seq")?;
            let size = u64::try_from(row.get::<i64>("bytes")?).unwrap_or(0);
            if events > 0 && bytes.saturating_add(size) > self.settings.max_bytes {
                break;
            }
            first.get_or_insert(seq);
            last = seq;
            events += 1;
            bytes = bytes.saturating_add(size);
        }
        let Some(first) = first else {
            return Ok(None);
        };
        let head = self
            .state
            .storage()
            .sql()
            .exec("SELECT body FROM ew_buffer WHERE seq = ?", &[first.into()])?;
        let body: String = head.one()?.get("body")?;
        let first_ms = serde_json::from_str::<Value>(&body)?
            .get("timestamp")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        let batch = meta.next_batch.max(1);
        meta.next_batch = batch + 1;
        self.state.storage().sql().exec(
            "UPDATE ew_buffer SET batch = ? WHERE batch IS NULL AND seq BETWEEN ? AND ?",
            &[batch.into(), first.into(), last.into()],
        )?;
        let plan = Plan {
            batch,
            file: file_name(&self.namespace()?, first_ms, first, last),
            first,
            last,
            events,
            from: meta.cataloged.map(|c| c.saturating_add(1).min(first)),
            written: None,
        };
        meta.plan = Some(plan.clone());
        self.put_meta(meta)?;
        // The plan is on disk before its file can be: whatever happens to this turn, the
        // next attempt writes the same events under the same name.
        self.state.storage().sync().await?;
        Ok(Some(plan))
    }

    /// Writes the next batch and commits it to the catalog. `None`: nothing buffered;
    /// `Some(Err)`: the write or the commit failed (the buffer is kept, the error recorded, a
    /// retry set).
    pub(super) async fn flush_one(&mut self) -> Result<Option<Result<Plan, String>>> {
        let mut meta = self.meta()?;
        let Some(mut plan) = self.plan(&mut meta).await? else {
            return Ok(None);
        };
        let cursor = self.state.storage().sql().exec(
            "SELECT body FROM ew_buffer WHERE batch = ? ORDER BY seq",
            &[plan.batch.into()],
        )?;
        let lines = cursor
            .rows()
            .map(|row| row.get::<String>("body"))
            .collect::<Result<Vec<_>>>()?;
        let size = match plan.written {
            Some(size) => size,
            None => {
                let gz = gzip_ndjson(&lines)?;
                let size = u64::try_from(gz.len()).unwrap_or(u64::MAX);
                let written = match self.env.bucket(BUCKET_BINDING) {
                    Ok(bucket) => bucket.put(&plan.file, gz).await.map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                };
                if let Err(e) = written {
                    return self.failed(meta, &plan, e);
                }
                size
            }
        };
        plan.written = Some(size);
        let snapshot = match self.commit(&plan, &lines).await {
            Ok(snapshot) => snapshot,
            Err(e) => {
                // Kept with the failure: the retry commits the file without writing it again.
                meta.plan = Some(plan.clone());
                return self.failed(meta, &plan, e);
            }
        };
        self.state.storage().sql().exec(
            "DELETE FROM ew_buffer WHERE batch = ?",
            &[plan.batch.into()],
        )?;
        if let Some(s) = &snapshot {
            meta.cataloged = Some(meta.cataloged.unwrap_or(0).max(s.last_seq));
        }
        meta.plan = None;
        meta.files_written += 1;
        meta.events_written += u64::try_from(lines.len()).unwrap_or(0);
        meta.last_flush = Some(LastFlush {
            file: plan.file.clone(),
            first: plan.first,
            last: plan.last,
            events: plan.events,
            bytes: size,
            at: self.state.now_ms(),
            snapshot_id: snapshot.map(|s| s.snapshot_id),
        });
        meta.last_error = None;
        meta.failures = 0;
        meta.retry_at = None;
        self.put_meta(&meta)?;
        Ok(Some(Ok(plan)))
    }

    /// Records a failed write or commit of `plan`'s file and when to try again.
    fn failed(
        &self,
        mut meta: Meta,
        plan: &Plan,
        error: String,
    ) -> Result<Option<Result<Plan, String>>> {
        tracing::warn!(file = %plan.file, %error, "EventWriter: a flush failed; the buffer is kept");
        meta.failures = meta.failures.saturating_add(1);
        meta.last_error = Some(error.clone());
        meta.retry_at = Some(
            self.state
                .now_ms()
                .saturating_add(backoff_ms(meta.failures)),
        );
        self.put_meta(&meta)?;
        Ok(Some(Err(error)))
    }

    /// Commits the written file of `plan`, holding `lines`, as the next snapshot of the
    /// catalog's events table; `None` when no catalog is bound.
    async fn commit(&self, plan: &Plan, lines: &[String]) -> Result<Option<Snapshot>, String> {
        if !self.cataloging {
            return Ok(None);
        }
        let mut observed = Observed::default();
        for line in lines {
            let event: &RawValue = serde_json::from_str(line).map_err(|e| e.to_string())?;
            observed.add(event).map_err(|e| e.to_string())?;
        }
        let commit = DeltaCommit {
            table: EVENTS_TABLE.to_string(),
            file: plan.file.clone(),
            first_seq: plan.from.unwrap_or(plan.first),
            last_seq: plan.last,
            inserts: i64::try_from(lines.len()).map_err(|e| e.to_string())?,
            updates: 0,
            deletes: 0,
            fields: observed.into_fields(),
        };
        let namespace = self.namespace().map_err(|e| e.to_string())?;
        commit_file(&self.env, &namespace, commit).await.map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_utc_date_and_padded_sequences() {
        assert_eq!(utc_date(0), "1970-01-01");
        assert_eq!(utc_date(951_782_400_000), "2000-02-29");
        assert_eq!(utc_date(1_796_083_199_999), "2026-11-30");
        assert_eq!(utc_date(1_796_083_200_000), "2026-12-01");
        assert_eq!(utc_date(-1), "1969-12-31");
        assert_eq!(
            file_name("shop", 0, 1, 1000),
            "shop/1970-01-01/000000000001-000000001000.ndjson.gz"
        );
    }

    #[test]
    fn backoff_doubles_to_five_minutes() {
        let delays: Vec<i64> = (1..=11).map(backoff_ms).collect();
        assert_eq!(
            delays,
            [
                1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 64_000, 128_000, 256_000, 300_000,
                300_000
            ]
        );
        assert_eq!(backoff_ms(u32::MAX), 300_000);
    }
}

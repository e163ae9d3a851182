//! The event writer (issue 16, item 4; seed 003's `EventWriterDO`): one `EventWriter` object
//! per event namespace (named by the namespace) takes already-stamped events, buffers them in
//! its SQLite storage and flushes them to the bucket bound as `EVENTS_BUCKET`, as gzip-compressed
//! newline-delimited JSON, one file per flush:
//! `<namespace>/<YYYY-MM-DD of the first event, UTC>/<first seq, 12 digits>-<last seq, 12 digits>.ndjson.gz`.
//!
//! - **Appends** ([`EventSink::append`]): each event is a JSON object with at least `id`
//!   (string), `type` (string), `timestamp` (ms) and `sequence` (from 1, increasing per
//!   namespace). An event whose sequence was already accepted is skipped and counted, so a
//!   retried append never writes an event twice. Accepted sequences are kept as ranges
//!   (`accepted`): in order they are one range, "everything up to the highest"; appends that
//!   overtake each other (a worker appending two publishes concurrently) leave a gap that the
//!   late one fills, instead of being taken for a repeat. A file holds its events in sequence
//!   order; a late event goes into a later file.
//! - **Buffer**: table `ew_buffer (seq, received, body, batch)`; the counters are one
//!   key-value record (`meta`). The buffer is written in the turn, so it is durable before the
//!   append answers (the output gate).
//! - **Flushes**: by size (`EVENTS_WRITER_MAX_EVENTS`, 1 000; `EVENTS_WRITER_MAX_BYTES`, 1 MiB
//!   of uncompressed NDJSON), in the append's turn; by age (`EVENTS_WRITER_MAX_AGE_MS`,
//!   10 000, from when the oldest buffered event was received), by alarm; or when asked
//!   ([`EventSink::flush`], `POST /writer/flush`). A flush first marks its events as one batch
//!   with its file name and makes that durable (`storage.sync()`), then writes the file, then
//!   commits it to the namespace's catalog (binding `CATALOG`, when bound) as the next snapshot
//!   of its table [`EVENTS_TABLE`](crate::cdc::EVENTS_TABLE), then drops the batch from the
//!   buffer: the order of the CDC processor's flush (`cdc/processor.rs`), and the same commit
//!   call. If the turn fails after the file was written, the next flush writes the same batch
//!   under the same name again: same name, same content, and a commit the catalog already has
//!   answers the snapshot it made, so no written file stays unknown to the catalog and none is
//!   in it twice. A failed write or commit keeps the buffer and the batch, records the error
//!   and retries by alarm after 1 s, doubling to 5 min; appends meanwhile only buffer. After a
//!   failed commit the plan remembers that its file is written, so the retry only commits.
//! - **Status**: [`EventSink::status`], `GET /writer`. Appends have no HTTP form (see
//!   `fetch`).

mod accepted;
mod flush;
mod settings;
#[cfg(test)]
mod tests;

use rookery::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use accepted::Accepted;
use settings::WriterSettings;

pub use flush::{file_name, utc_date};

/// The binding of the bucket flushes go to.
pub const BUCKET_BINDING: &str = "EVENTS_BUCKET";
/// Most files one turn writes; a longer backlog continues in the next alarm.
pub const FILES_PER_TURN: u32 = 32;

const META: &str = "meta";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS ew_buffer (
  seq INTEGER PRIMARY KEY,
  received INTEGER NOT NULL,
  body TEXT NOT NULL,
  batch INTEGER
);
CREATE INDEX IF NOT EXISTS ew_buffer_batch ON ew_buffer (batch);
";

/// What an append did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Appended {
    /// Events buffered by this append.
    pub accepted: u64,
    /// Events skipped because their sequence was already accepted.
    pub skipped: u64,
    /// The highest sequence accepted so far.
    pub highest_sequence: i64,
    /// Files written during this append (size flushes).
    pub files_written: u64,
}

/// What a forced flush did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Flushed {
    /// Files written.
    pub files: u64,
    /// Events written.
    pub events: u64,
    /// Events still buffered (after a failure, or beyond one turn's files).
    pub remaining: u64,
    /// Why the last attempt failed, if it did.
    pub error: Option<String>,
}

/// The last file written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LastFlush {
    /// Its key in the bucket.
    pub file: String,
    /// First and last sequence in it.
    pub first: i64,
    /// Last sequence in it.
    pub last: i64,
    /// Events in it.
    pub events: u64,
    /// Its compressed size.
    pub bytes: u64,
    /// When it was written, ms since the epoch.
    pub at: i64,
    /// The catalog snapshot it became (none while no catalog is bound).
    #[serde(default)]
    pub snapshot_id: Option<i64>,
}

/// The writer's figures.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WriterStatus {
    /// Events buffered.
    pub buffered_events: u64,
    /// Their size as NDJSON, uncompressed.
    pub buffered_bytes: u64,
    /// How long ago the oldest buffered event was received, ms.
    pub oldest_age_ms: Option<i64>,
    /// The highest sequence accepted.
    pub highest_sequence: i64,
    /// Events skipped as already accepted.
    pub skipped: u64,
    /// Gaps in the accepted sequences given up on (a sequence in one arriving later is
    /// skipped as a repeat): at most 256 gaps are kept.
    pub gaps_closed: u64,
    /// Files written.
    pub files_written: u64,
    /// Events written to files.
    pub events_written: u64,
    /// The last file written.
    pub last_flush: Option<LastFlush>,
    /// Why the last flush failed, if the last attempt failed.
    pub last_error: Option<String>,
    /// Failed attempts since the last success.
    pub failures: u32,
    /// When a failed flush is tried again, ms since the epoch.
    pub next_retry_at: Option<i64>,
}

/// The event writer as a typed service.
#[rookery::service]
pub trait EventSink {
    /// Buffers `events`, each the JSON text of a stamped event (an object with `id`, `type`,
    /// `timestamp` and `sequence`); events whose sequence was already accepted are skipped.
    /// Invalid input refuses the whole append (`Error::BadRequest`), writing nothing.
    async fn append(&mut self, events: Vec<String>) -> rookery::Result<Appended>;
    /// Writes everything buffered now (at most [`FILES_PER_TURN`] files).
    async fn flush(&mut self) -> rookery::Result<Flushed>;
    /// The writer's figures.
    async fn status(&mut self) -> rookery::Result<WriterStatus>;
}

/// A batch being written: its events are marked `batch` in the buffer, and its file name is
/// fixed, so a retry writes the same file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Plan {
    batch: i64,
    file: String,
    first: i64,
    last: i64,
    events: u64,
    /// The first sequence its catalog snapshot accounts for: `first`, or less when sequences
    /// after the last committed file were never archived (a snapshot may not leave a hole).
    /// Fixed with the plan, so a retried commit is the same commit.
    #[serde(default)]
    from: Option<i64>,
    /// The file's compressed size once it is written: a retry then only commits it.
    #[serde(default)]
    written: Option<u64>,
}

/// The key-value record of counters.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Meta {
    accepted: Accepted,
    skipped: u64,
    /// Gaps closed in `accepted` (see `accepted`).
    gaps_closed: u64,
    files_written: u64,
    events_written: u64,
    last_flush: Option<LastFlush>,
    last_error: Option<String>,
    failures: u32,
    retry_at: Option<i64>,
    plan: Option<Plan>,
    next_batch: i64,
    /// The highest sequence the catalog's events table accounts for, from its last answer.
    #[serde(default)]
    cataloged: Option<i64>,
}

/// One namespace's event writer.
pub struct EventWriter {
    state: ObjectState,
    env: Env,
    settings: WriterSettings,
    /// Whether a catalog is bound (`CATALOG`): files are committed to it only then.
    cataloging: bool,
    /// The class's SQL tables, made once per instance.
    tables: Tables,
}

/// What the buffer holds.
struct BufferStats {
    events: u64,
    bytes: u64,
    oldest: Option<i64>,
}

/// A stamped event as the writer checks it: its sequence and its text.
fn parse_event(index: usize, text: &str) -> Result<(i64, String)> {
    let bad = |what: &str| Error::bad_request(format!("event {index}: {what}"));
    let value: Value = serde_json::from_str(text).map_err(|e| bad(&format!("not JSON ({e})")))?;
    let Value::Object(map) = &value else {
        return Err(bad("not a JSON object"));
    };
    if map
        .get("id")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        return Err(bad("\"id\" must be a non-empty string"));
    }
    if !map.get("type").is_some_and(Value::is_string) {
        return Err(bad("\"type\" must be a string"));
    }
    if map.get("timestamp").and_then(Value::as_i64).is_none() {
        return Err(bad("\"timestamp\" must be an integer (ms)"));
    }
    let sequence = map
        .get("sequence")
        .and_then(Value::as_i64)
        .filter(|s| *s >= 1)
        .ok_or_else(|| bad("\"sequence\" must be an integer from 1"))?;
    // Stored compact, one line: the NDJSON line as written.
    Ok((sequence, value.to_string()))
}

impl EventWriter {
    fn ensure_schema(&mut self) -> Result<()> {
        self.tables.ensure(&self.state, SCHEMA)
    }

    fn meta(&self) -> Result<Meta> {
        Ok(self.state.storage().get(META)?.unwrap_or_default())
    }

    fn put_meta(&self, meta: &Meta) -> Result<()> {
        self.state.storage().put(META, meta)
    }

    /// The namespace: the object's name, which must be one segment of a bucket key.
    fn namespace(&self) -> Result<String> {
        let name = self.state.id().name().unwrap_or_default().to_string();
        if name.contains('/') || rookery::validate_bucket_key(&name).is_err() {
            return Err(Error::bad_request(format!(
                "the event writer's name {name:?} is not a namespace (a non-empty name without '/', '\\\\', NUL, '.' or '..')"
            )));
        }
        Ok(name)
    }

    fn buffer_stats(&self) -> Result<BufferStats> {
        let cursor = self.state.storage().sql().exec(
            "SELECT COUNT(*) AS n, COALESCE(SUM(length(CAST(body AS BLOB)) + 1), 0) AS bytes, \
             MIN(received) AS oldest FROM ew_buffer",
            &[],
        )?;
        let row = cursor.one()?;
        let events: i64 = row.get("n")?;
        let bytes: i64 = row.get("bytes")?;
        Ok(BufferStats {
            events: u64::try_from(events).unwrap_or(0),
            bytes: u64::try_from(bytes).unwrap_or(0),
            oldest: row.get("oldest")?,
        })
    }

    /// Whether the buffer has reached a size bound.
    fn over_size(&self, stats: &BufferStats) -> bool {
        stats.events >= self.settings.max_events || stats.bytes >= self.settings.max_bytes
    }

    /// Sets the alarm: at the retry time while failing, else when the oldest buffered event
    /// comes of age; none with an empty buffer.
    fn rearm(&self, meta: &Meta) -> Result<()> {
        let stats = self.buffer_stats()?;
        let storage = self.state.storage();
        let at = match (stats.oldest, meta.retry_at) {
            (None, _) => None,
            (Some(_), Some(retry)) => Some(retry),
            (Some(oldest), None) => Some(oldest.saturating_add(self.settings.max_age_ms)),
        };
        let current = storage.get_alarm()?;
        match at {
            Some(at) if current != Some(at) => storage.set_alarm(at)?,
            None if current.is_some() => storage.delete_alarm()?,
            _ => {}
        }
        Ok(())
    }

    async fn do_append(&mut self, events: Vec<String>) -> Result<Appended> {
        self.ensure_schema()?;
        self.namespace()?;
        let mut parsed = events
            .iter()
            .enumerate()
            .map(|(i, text)| parse_event(i, text))
            .collect::<Result<Vec<_>>>()?;
        parsed.sort_by_key(|(seq, _)| *seq);
        let mut meta = self.meta()?;
        let now = self.state.now_ms();
        let mut out = Appended::default();
        for (seq, body) in parsed {
            let (new, closed) = meta.accepted.insert(seq);
            if closed {
                meta.gaps_closed += 1;
            }
            if !new {
                out.skipped += 1;
                continue;
            }
            self.state.storage().sql().exec(
                "INSERT INTO ew_buffer (seq, received, body) VALUES (?, ?, ?)",
                &[seq.into(), now.into(), body.into()],
            )?;
            out.accepted += 1;
        }
        meta.skipped += out.skipped;
        out.highest_sequence = meta.accepted.highest();
        self.put_meta(&meta)?;
        let backing_off = meta.retry_at.is_some_and(|at| at > now);
        if !backing_off {
            let mut files = 0;
            while files < FILES_PER_TURN && self.over_size(&self.buffer_stats()?) {
                match self.flush_one().await? {
                    Some(Ok(_)) => files += 1,
                    _ => break,
                }
            }
            out.files_written = u64::from(files);
        }
        self.rearm(&self.meta()?)?;
        Ok(out)
    }

    /// Flushes until the buffer is empty, a write fails, or [`FILES_PER_TURN`] files.
    async fn flush_all(&mut self) -> Result<Flushed> {
        self.ensure_schema()?;
        let mut out = Flushed::default();
        for _ in 0..FILES_PER_TURN {
            match self.flush_one().await? {
                None => break,
                Some(Ok(plan)) => {
                    out.files += 1;
                    out.events += plan.events;
                }
                Some(Err(e)) => {
                    out.error = Some(e);
                    break;
                }
            }
        }
        out.remaining = self.buffer_stats()?.events;
        let meta = self.meta()?;
        if out.remaining > 0 && out.error.is_none() && meta.retry_at.is_none() {
            // More than one turn's files: go on in an alarm now.
            self.state.storage().set_alarm(self.state.now_ms())?;
        } else {
            self.rearm(&meta)?;
        }
        Ok(out)
    }

    fn do_status(&mut self) -> Result<WriterStatus> {
        self.ensure_schema()?;
        let meta = self.meta()?;
        let stats = self.buffer_stats()?;
        let now = self.state.now_ms();
        Ok(WriterStatus {
            buffered_events: stats.events,
            buffered_bytes: stats.bytes,
            oldest_age_ms: stats.oldest.map(|at| now.saturating_sub(at).max(0)),
            highest_sequence: meta.accepted.highest(),
            skipped: meta.skipped,
            gaps_closed: meta.gaps_closed,
            files_written: meta.files_written,
            events_written: meta.events_written,
            last_flush: meta.last_flush,
            last_error: meta.last_error,
            failures: meta.failures,
            next_retry_at: meta.retry_at,
        })
    }
}

impl EventSink for EventWriter {
    async fn append(&mut self, events: Vec<String>) -> Result<Appended> {
        self.do_append(events).await
    }

    async fn flush(&mut self) -> Result<Flushed> {
        self.flush_all().await
    }

    async fn status(&mut self) -> Result<WriterStatus> {
        self.do_status()
    }
}

impl DurableObject for EventWriter {
    fn new(state: ObjectState, env: Env) -> Self {
        let settings = WriterSettings::from_env(&env);
        let cataloging = env.namespace(crate::cdc::CATALOG_BINDING).is_ok();
        Self {
            state,
            env,
            settings,
            cataloging,
            tables: Tables::default(),
        }
    }

    /// `GET /writer` (status) and `POST /writer/flush`. Appends are typed calls only: over a
    /// public route, anyone could write events, or a huge sequence that hides the real ones.
    async fn fetch(&mut self, req: Request) -> Result<Response> {
        let path = req.path().trim_end_matches('/').to_string();
        let method = req.method().clone();
        match (path.as_str(), method) {
            ("/writer", Method::GET) => Response::json(&self.do_status()?),
            ("/writer", _) => Ok(crate::input::method_not_allowed("GET")),
            ("/writer/flush", Method::POST) => {
                let flushed = self.flush_all().await?;
                let status = if flushed.error.is_some() {
                    StatusCode::SERVICE_UNAVAILABLE
                } else {
                    StatusCode::OK
                };
                Ok(Response::json(&flushed)?.with_status(status))
            }
            ("/writer/flush", _) => Ok(crate::input::method_not_allowed("POST")),
            _ => Ok(crate::input::not_found()),
        }
    }

    async fn call(&mut self, call: Call) -> Result<Reply> {
        EventSink::serve(self, call).await
    }

    async fn alarm(&mut self, _info: AlarmInfo) -> Result<()> {
        self.flush_all().await.map(drop)
    }
}
use crate::sql_tables::Tables;

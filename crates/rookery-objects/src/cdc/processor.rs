//! The CDC processor (seed 003's `CDCProcessorDO`): one `CdcProcessor` object per collection,
//! named `<namespace>/<collection>`, keeps the collection's current documents and the changes
//! not yet in a delta file.
//!
//! - `POST /cdc` `{op, id, doc}` checks the change against the current documents (insert of an
//!   existing id is 409, update or delete of a missing one 404), applies it, and appends it to
//!   the pending changes with the next sequence number and the time, in one turn; the answer
//!   leaves once that turn is durable (Rookery's output gate).
//! - `GET /cdc/docs/:id` is the current document; `GET /cdc` the collection's status.
//! - **Flushing** (`flush`) runs in the alarm, set `CDC_FLUSH_MS` after the
//!   first pending change, or at once when `CDC_MAX_CHANGES` are pending, and on
//!   `POST /cdc/flush`. It takes the oldest pending changes (at most `CDC_MAX_CHANGES`), writes
//!   them as one delta file to the bucket bound as `CDC_BUCKET`, commits the file to the
//!   namespace's catalog (binding `CATALOG`), and only then drops them from the pending changes.
//! - **Retries.** The range of a file is fixed before it is written and kept durably (`inflight`)
//!   until the catalog has it, so a retry after a failed write, a failed commit or a crash
//!   writes the same file under the same name with the same content and commits it again, which
//!   the catalog answers with the snapshot it already made. A failure leaves the changes
//!   pending, records `lastError`, and sets the alarm `CDC_RETRY_BASE_MS` later, doubled per
//!   failure in a row up to `CDC_RETRY_CAP_MS`.
//!
//! Storage: `cdc_docs (id, doc, seq, updated)` holds the current documents (as sent), and
//! `cdc_pending (seq, op, id, doc, ts)` the changes not yet committed to the catalog; counters
//! and the flush state are one key-value record (`meta`).

use rookery::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::json;
use serde_json::value::RawValue;

use super::catalog::{DeltaCommit, Snapshot, commit_file};
use super::change::{self, Change, Op};
use super::delta::{self, BUCKET_BINDING};
use super::names::split_processor_name;
use super::schema::Observed;
use super::settings::Settings;
use crate::events::{limit_error, retry_after};
use crate::input::{InputError, method_not_allowed, not_found};
use crate::sql_tables::Tables;

/// Delta files one flush writes at most before it lets other events in.
pub const FILES_PER_FLUSH: usize = 16;

/// The key-value record of counters and flush state.
const META: &str = "meta";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS cdc_docs (
  id TEXT PRIMARY KEY,
  doc TEXT NOT NULL,
  seq INTEGER NOT NULL,
  updated INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS cdc_pending (
  seq INTEGER PRIMARY KEY,
  op TEXT NOT NULL,
  id TEXT NOT NULL,
  doc TEXT,
  ts INTEGER NOT NULL
);
";

/// A delta file committed to the catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Delta {
    /// Its key in the bucket.
    pub file: String,
    /// Its first change.
    pub first_seq: i64,
    /// Its last change.
    pub last_seq: i64,
    /// How many changes it holds.
    pub changes: i64,
    /// The catalog snapshot it became.
    pub snapshot_id: i64,
    /// When it was committed, ms since the epoch.
    pub at: i64,
}

/// `GET /cdc/docs/:id` (a struct, not `json!`, so the document is written as it was sent).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Document<'a> {
    id: &'a str,
    doc: Box<RawValue>,
    /// The change that made this version.
    seq: i64,
    updated_at: i64,
}

/// Counters and flush state.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Meta {
    /// The next change's sequence number (the first is 1).
    next_seq: i64,
    /// Rows in `cdc_docs`.
    documents: i64,
    /// Rows in `cdc_pending`.
    pending: i64,
    /// Delta files committed so far.
    deltas: i64,
    /// The last one.
    last_delta: Option<Delta>,
    /// Why the last flush failed (cleared by a successful one).
    last_error: Option<String>,
    /// Failed flushes in a row.
    failures: i64,
    /// The range of the file being written and committed, fixed until the catalog has it.
    inflight: Option<(i64, i64)>,
}

/// The collection's status, `GET /cdc`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CdcStatus {
    /// The namespace.
    pub namespace: String,
    /// The collection (the catalog's table).
    pub collection: String,
    /// Current documents.
    pub documents: i64,
    /// Changes not yet in a committed delta file.
    pub pending: i64,
    /// The last change's sequence number (0 before the first).
    pub last_seq: i64,
    /// Delta files committed so far.
    pub deltas: i64,
    /// The last one.
    pub last_delta: Option<Delta>,
    /// Why the last flush failed, until one succeeds.
    pub last_error: Option<String>,
    /// Failed flushes in a row.
    pub failures: i64,
    /// When the next flush runs (the alarm), if any is due.
    pub next_flush_at: Option<i64>,
}

/// What a flush did.
#[derive(Debug, Default)]
pub(super) struct Flushed {
    /// Files written and committed.
    pub deltas: Vec<Delta>,
    /// Why it stopped early, if it failed.
    pub error: Option<String>,
}

/// One collection's documents and pending changes.
pub struct CdcProcessor {
    state: ObjectState,
    env: Env,
    settings: Settings,
    /// The class's SQL tables, made once per instance.
    tables: Tables,
}

impl CdcProcessor {
    fn ensure_schema(&mut self) -> Result<()> {
        self.tables.ensure(&self.state, SCHEMA)
    }

    fn meta(&self) -> Result<Meta> {
        let mut meta: Meta = self.state.storage().get(META)?.unwrap_or_default();
        meta.next_seq = meta.next_seq.max(1);
        Ok(meta)
    }

    fn put_meta(&self, meta: &Meta) -> Result<()> {
        self.state.storage().put(META, meta)
    }

    /// The namespace and collection, from the object's name.
    fn names(&self) -> Result<(String, String), String> {
        let name = self.state.id().name().unwrap_or_default();
        split_processor_name(name).map(|(n, c)| (n.to_string(), c.to_string()))
    }

    /// `POST /cdc`.
    fn write(&mut self, req: &Request) -> Result<Response> {
        let max = self.settings.max_doc_bytes;
        if req.body().len() > max {
            return Ok(limit_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!(
                    "the change is {} bytes; at most {max} are taken",
                    req.body().len()
                ),
                "CDC_MAX_DOC_BYTES",
            ));
        }
        let input = match change::parse(req.body()) {
            Ok(input) => input,
            Err(e) => return Ok(e.response()),
        };
        let mut meta = self.meta()?;
        if meta.pending >= self.settings.max_pending {
            let (name, value) = retry_after(1);
            return Ok(limit_error(
                StatusCode::TOO_MANY_REQUESTS,
                &format!(
                    "{} changes are waiting for a delta file; try again when they are written",
                    meta.pending
                ),
                "CDC_MAX_PENDING",
            )
            .with_header(name, value));
        }
        let sql = self.state.storage().sql();
        let exists = !sql
            .exec(
                "SELECT 1 FROM cdc_docs WHERE id = ?",
                &[input.id.as_str().into()],
            )?
            .is_empty();
        match (input.op, exists) {
            (Op::Insert, true) => {
                return Ok(InputError::invalid("id", "names an existing document")
                    .response()
                    .with_status(StatusCode::CONFLICT));
            }
            (Op::Update | Op::Delete, false) => {
                return Ok(InputError::invalid("id", "names no document")
                    .response()
                    .with_status(StatusCode::NOT_FOUND));
            }
            _ => {}
        }
        let seq = meta.next_seq;
        meta.next_seq += 1;
        let now = self.state.now_ms();
        let doc = input.doc.as_ref().map(|d| d.get());
        let id = input.id.as_str();
        match input.op {
            Op::Insert => {
                sql.exec(
                    "INSERT INTO cdc_docs (id, doc, seq, updated) VALUES (?, ?, ?, ?)",
                    &[id.into(), doc.into(), seq.into(), now.into()],
                )?;
                meta.documents += 1;
            }
            Op::Update => {
                sql.exec(
                    "UPDATE cdc_docs SET doc = ?, seq = ?, updated = ? WHERE id = ?",
                    &[doc.into(), seq.into(), now.into(), id.into()],
                )?;
            }
            Op::Delete => {
                sql.exec("DELETE FROM cdc_docs WHERE id = ?", &[id.into()])?;
                meta.documents -= 1;
            }
        }
        sql.exec(
            "INSERT INTO cdc_pending (seq, op, id, doc, ts) VALUES (?, ?, ?, ?, ?)",
            &[
                seq.into(),
                input.op.as_str().into(),
                id.into(),
                doc.into(),
                now.into(),
            ],
        )?;
        meta.pending += 1;
        self.schedule(&meta, now)?;
        self.put_meta(&meta)?;
        Response::json(&json!({
            "seq": seq,
            "op": input.op,
            "id": id,
            "ts": now,
            "pending": meta.pending,
        }))
    }

    /// Sets the alarm for the next flush after a write: at once when a file's worth is pending,
    /// else `CDC_FLUSH_MS` from now unless one is set. A flush that failed keeps its retry time.
    fn schedule(&self, meta: &Meta, now: i64) -> Result<()> {
        if meta.failures > 0 {
            return Ok(());
        }
        let storage = self.state.storage();
        let current = storage.get_alarm()?;
        if meta.pending >= self.settings.max_changes {
            if current.is_none_or(|at| at > now) {
                storage.set_alarm(now)?;
            }
        } else if current.is_none() {
            storage.set_alarm(now.saturating_add(self.settings.flush_ms))?;
        }
        Ok(())
    }

    /// `GET /cdc/docs/:id`.
    fn document(&self, id: &str) -> Result<Response> {
        let Some(id) = rookery::percent_decode(id) else {
            return Ok(InputError::invalid("id", "is not valid UTF-8").response());
        };
        let cursor = self.state.storage().sql().exec(
            "SELECT doc, seq, updated FROM cdc_docs WHERE id = ?",
            &[id.as_str().into()],
        )?;
        let Some(row) = cursor.rows().next() else {
            return Ok(not_found());
        };
        Response::json(&Document {
            id: &id,
            doc: RawValue::from_string(row.get("doc")?).map_err(Error::msg)?,
            seq: row.get("seq")?,
            updated_at: row.get("updated")?,
        })
    }

    /// The collection's status.
    pub fn status(&self) -> Result<CdcStatus> {
        let meta = self.meta()?;
        let (namespace, collection) = self.names().unwrap_or_default();
        Ok(CdcStatus {
            namespace,
            collection,
            documents: meta.documents,
            pending: meta.pending,
            last_seq: meta.next_seq - 1,
            deltas: meta.deltas,
            last_delta: meta.last_delta,
            last_error: meta.last_error,
            failures: meta.failures,
            next_flush_at: self.state.storage().get_alarm()?,
        })
    }

    /// `POST /cdc/flush`: writes every pending change now (at most [`FILES_PER_FLUSH`] files).
    async fn flush_http(&mut self) -> Result<Response> {
        let flushed = self.flush().await?;
        let pending = self.meta()?.pending;
        match flushed.error {
            None => Response::json(&json!({ "deltas": flushed.deltas, "pending": pending })),
            Some(error) => {
                let (name, value) = retry_after(1);
                Ok(Response::json(&json!({
                    "error": error,
                    "deltas": flushed.deltas,
                    "pending": pending,
                    "nextFlushAt": self.state.storage().get_alarm()?,
                }))?
                .with_status(StatusCode::SERVICE_UNAVAILABLE)
                .with_header(name, value))
            }
        }
    }

    /// Writes pending changes as delta files, oldest first, and commits each to the catalog;
    /// then sets the alarm for what is left. A failure is recorded (not returned): the changes
    /// stay pending and the alarm retries with backoff.
    pub(super) async fn flush(&mut self) -> Result<Flushed> {
        let mut out = Flushed::default();
        let (namespace, collection) = self.names().map_err(Error::bad_request)?;
        for _ in 0..FILES_PER_FLUSH {
            let mut meta = self.meta()?;
            if meta.pending == 0 {
                break;
            }
            let (first, last) = match meta.inflight {
                Some(range) => range,
                None => {
                    let range = self.next_range()?;
                    meta.inflight = Some(range);
                    self.put_meta(&meta)?;
                    // The range is durable before the file exists, so a retry after a crash
                    // writes the same file rather than leave one the catalog never hears of.
                    self.state.storage().sync().await?;
                    range
                }
            };
            let (changes, commit) = self.delta(&collection, &namespace, first, last)?;
            let result = self.write_and_commit(&namespace, &changes, commit).await;
            let now = self.state.now_ms();
            match result {
                Ok(snapshot) => {
                    let dropped = self.state.storage().sql().exec(
                        "DELETE FROM cdc_pending WHERE seq BETWEEN ? AND ?",
                        &[first.into(), last.into()],
                    )?;
                    meta.pending -= i64::try_from(dropped.rows_written()).unwrap_or(0);
                    let delta = Delta {
                        file: snapshot.file,
                        first_seq: first,
                        last_seq: last,
                        changes: last - first + 1,
                        snapshot_id: snapshot.snapshot_id,
                        at: now,
                    };
                    tracing::debug!(namespace, collection, file = %delta.file, snapshot = delta.snapshot_id, "CdcProcessor: delta committed");
                    meta.inflight = None;
                    meta.deltas += 1;
                    meta.last_delta = Some(delta.clone());
                    meta.last_error = None;
                    meta.failures = 0;
                    self.put_meta(&meta)?;
                    out.deltas.push(delta);
                }
                Err(why) => {
                    meta.failures += 1;
                    let at = now.saturating_add(self.settings.retry_ms(meta.failures));
                    tracing::warn!(namespace, collection, failures = meta.failures, error = %why, retry_at = at, "CdcProcessor: flush failed");
                    meta.last_error = Some(why.clone());
                    self.put_meta(&meta)?;
                    self.state.storage().set_alarm(at)?;
                    out.error = Some(why);
                    return Ok(out);
                }
            }
        }
        let pending = self.meta()?.pending;
        let storage = self.state.storage();
        if pending == 0 {
            storage.delete_alarm()?;
        } else if pending >= self.settings.max_changes || out.deltas.len() >= FILES_PER_FLUSH {
            storage.set_alarm(self.state.now_ms())?;
        } else {
            storage.set_alarm(self.state.now_ms() + self.settings.flush_ms)?;
        }
        Ok(out)
    }

    /// The range of the next file: the oldest pending changes, at most `CDC_MAX_CHANGES`.
    fn next_range(&self) -> Result<(i64, i64)> {
        let cursor = self.state.storage().sql().exec(
            "SELECT MIN(seq) AS first, MAX(seq) AS last FROM
               (SELECT seq FROM cdc_pending ORDER BY seq LIMIT ?)",
            &[self.settings.max_changes.into()],
        )?;
        let row = cursor.one()?;
        Ok((row.get("first")?, row.get("last")?))
    }

    /// The pending changes `first..=last` and their commit.
    fn delta(
        &self,
        collection: &str,
        namespace: &str,
        first: i64,
        last: i64,
    ) -> Result<(Vec<Change>, DeltaCommit)> {
        let cursor = self.state.storage().sql().exec(
            "SELECT seq, op, id, doc, ts FROM cdc_pending WHERE seq BETWEEN ? AND ? ORDER BY seq",
            &[first.into(), last.into()],
        )?;
        let mut changes = Vec::with_capacity(cursor.len());
        let mut observed = Observed::default();
        let mut commit = DeltaCommit {
            table: collection.to_string(),
            file: delta::file_key(namespace, collection, first, last),
            first_seq: first,
            last_seq: last,
            inserts: 0,
            updates: 0,
            deletes: 0,
            fields: Vec::new(),
        };
        for row in cursor.rows() {
            let op_name: String = row.get("op")?;
            let op = Op::parse(&op_name)
                .ok_or_else(|| Error::msg(format!("a pending change has op {op_name:?}")))?;
            let doc = row
                .get::<Option<String>>("doc")?
                .map(RawValue::from_string)
                .transpose()
                .map_err(Error::msg)?;
            if let Some(doc) = &doc {
                observed.add(doc).map_err(Error::msg)?;
            }
            match op {
                Op::Insert => commit.inserts += 1,
                Op::Update => commit.updates += 1,
                Op::Delete => commit.deletes += 1,
            }
            changes.push(Change {
                seq: row.get("seq")?,
                op,
                id: row.get("id")?,
                doc,
                ts: row.get("ts")?,
            });
        }
        if i64::try_from(changes.len()).ok() != Some(last - first + 1) {
            return Err(Error::msg(format!(
                "pending changes {first}..={last} are not all there ({} found)",
                changes.len()
            )));
        }
        commit.fields = observed.into_fields();
        Ok((changes, commit))
    }

    /// Writes the file and commits it; `Err` says why either failed.
    async fn write_and_commit(
        &self,
        namespace: &str,
        changes: &[Change],
        commit: DeltaCommit,
    ) -> Result<Snapshot, String> {
        let bytes = delta::encode(changes).map_err(|e| e.to_string())?;
        let bucket = self.env.bucket(BUCKET_BINDING).map_err(|e| e.to_string())?;
        bucket
            .put(&commit.file, bytes)
            .await
            .map_err(|e| format!("writing {}: {e}", commit.file))?;
        commit_file(&self.env, namespace, commit).await
    }
}

impl DurableObject for CdcProcessor {
    fn new(state: ObjectState, env: Env) -> Self {
        let settings = Settings::from_env(&env);
        Self {
            state,
            env,
            settings,
            tables: Tables::default(),
        }
    }

    async fn fetch(&mut self, req: Request) -> Result<Response> {
        if let Err(e) = self.names() {
            return Ok(Response::error(StatusCode::BAD_REQUEST, &e));
        }
        self.ensure_schema()?;
        let method = req.method().clone();
        let path = req.path().trim_end_matches('/').to_string();
        match path.as_str() {
            "/cdc" if method == Method::POST => self.write(&req),
            "/cdc" if method == Method::GET => Response::json(&self.status()?),
            "/cdc" => Ok(method_not_allowed("GET, POST")),
            "/cdc/flush" if method == Method::POST => self.flush_http().await,
            "/cdc/flush" => Ok(method_not_allowed("POST")),
            _ => match path.strip_prefix("/cdc/docs/") {
                Some(id) if !id.is_empty() && method == Method::GET => self.document(id),
                Some(id) if !id.is_empty() => Ok(method_not_allowed("GET")),
                _ => Ok(not_found()),
            },
        }
    }

    async fn alarm(&mut self, _info: AlarmInfo) -> Result<()> {
        if self.names().is_err() {
            return Ok(());
        }
        self.ensure_schema()?;
        self.flush().await.map(drop)
    }
}

//! Publishing: `POST /events` `{type, data, id?}`.
//!
//! The event is validated, stamped (`id` if absent, `timestamp`, `sequence`), stored once and
//! enqueued for every subscription whose pattern matches its type, all in one turn; the answer
//! leaves only when that turn is durable (Rookery's output gate). An `id` makes publishing
//! idempotent: the same id with the same `type` and `data` is stored once and answered the
//! same, as long as the id is remembered (`EVENTS_DEDUP_WINDOW_MS`, `EVENTS_DEDUP_MAX`); the
//! same id with a different event is `409`, naming the field `id`.

use std::collections::HashMap;

use rookery::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::coordinator::fnv1a;
use super::pattern::{MAX_TYPE_BYTES, Pattern, validate_type};
use super::settings::random_u64;
use super::{Subscriptions, limit_error, retry_after};
use crate::input::{Body, InputError};

/// Longest event id, in bytes.
pub const MAX_ID_BYTES: usize = 128;
/// Published ids forgotten per publish, at most (amortized clean-up).
const DEDUP_SWEEP: i64 = 64;

/// The answer to a publish (the same for a repeated id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Published {
    /// The event's id, given or made.
    pub id: String,
    /// Its position in the namespace, from 1.
    pub sequence: i64,
    /// When it was stamped, ms since the epoch.
    pub timestamp: i64,
    /// How many subscriptions it was enqueued for.
    pub matched: i64,
}

/// Whether `id` may be an event id: it travels as the `Idempotency-Key` header.
fn id_ok(id: &str) -> bool {
    id.bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'))
}

/// A stable hash, so a repeated publish can be told from a different one with the same id
/// without keeping its body.
fn fingerprint(text: &str) -> String {
    format!("{:016x}", fnv1a(text))
}

/// A subscription as publishing sees it.
struct Target {
    id: String,
    pattern: String,
    pending: i64,
    /// Whether it has a placement (see `coordinator`).
    placed: bool,
}

impl Subscriptions {
    /// `POST /events`.
    pub(super) fn publish(&mut self, req: &Request) -> Result<Response> {
        let max = self.settings.max_event_bytes;
        if req.body().len() > max {
            return Ok(limit_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!(
                    "the event is {} bytes; at most {max} are taken",
                    req.body().len()
                ),
                "EVENTS_MAX_EVENT_BYTES",
            ));
        }
        let (event_type, data, id) = match parse(req) {
            Ok(parsed) => parsed,
            Err(e) => return Ok(e.response()),
        };
        let print = fingerprint(&json!([event_type, data]).to_string());
        let sql = self.state.storage().sql();
        if let Some(id) = &id {
            let seen = sql.exec(
                "SELECT seq, ts, matched, fingerprint FROM ev_published WHERE id = ?",
                &[id.as_str().into()],
            )?;
            if let Some(row) = seen.rows().next() {
                if row.get::<String>("fingerprint")? != print {
                    return Ok(InputError::invalid(
                        "id",
                        "was already published with a different type or data",
                    )
                    .response()
                    .with_status(StatusCode::CONFLICT));
                }
                return Response::json(&Published {
                    id: id.clone(),
                    sequence: row.get("seq")?,
                    timestamp: row.get("ts")?,
                    matched: row.get("matched")?,
                });
            }
        }

        let targets = targets(&self.state, &mut self.patterns, &event_type)?;
        if let Some(full) = targets
            .iter()
            .find(|t| t.pending >= self.settings.max_pending)
        {
            let (name, value) = retry_after(1);
            return Ok(limit_error(
                StatusCode::TOO_MANY_REQUESTS,
                &format!(
                    "subscription {} has {} undelivered events; try again when it has caught up",
                    full.id, full.pending
                ),
                "EVENTS_MAX_PENDING",
            )
            .with_header(name, value));
        }

        let archiving = self.archiving();
        let mut meta = self.meta()?;
        if archiving && meta.next_seq - 1 - meta.archived >= self.settings.max_pending {
            let (name, value) = retry_after(1);
            return Ok(limit_error(
                StatusCode::TOO_MANY_REQUESTS,
                &format!(
                    "the event writer is {} events behind; try again when it has caught up",
                    meta.next_seq - 1 - meta.archived
                ),
                "EVENTS_MAX_PENDING",
            )
            .with_header(name, value));
        }
        let seq = meta.next_seq;
        meta.next_seq += 1;
        let now = self.state.now_ms();
        let id = id.unwrap_or_else(|| format!("evt_{seq}_{:016x}", random_u64()));
        let matched = i64::try_from(targets.len()).unwrap_or(i64::MAX);
        if !targets.is_empty() || archiving {
            let event = json!({
                "id": id,
                "namespace": self.namespace(),
                "type": event_type,
                "data": data,
                "timestamp": now,
                "sequence": seq,
            });
            sql.exec(
                "INSERT INTO ev_events (seq, id, body) VALUES (?, ?, ?)",
                &[seq.into(), id.as_str().into(), event.to_string().into()],
            )?;
        }
        for t in &targets {
            sql.exec(
                "INSERT INTO ev_pending (sub, seq) VALUES (?, ?)",
                &[t.id.as_str().into(), seq.into()],
            )?;
            // A queue that was empty is due now; one that is backing off stays as it is.
            sql.exec(
                "UPDATE ev_subscriptions SET pending = pending + 1,
                   next_attempt = CASE WHEN pending = 0 THEN ? ELSE next_attempt END
                 WHERE id = ?",
                &[now.into(), t.id.as_str().into()],
            )?;
        }
        sql.exec(
            "INSERT INTO ev_published (id, seq, ts, matched, fingerprint) VALUES (?, ?, ?, ?, ?)",
            &[
                id.as_str().into(),
                seq.into(),
                now.into(),
                matched.into(),
                print.into(),
            ],
        )?;
        meta.published += 1;
        self.forget_old_ids(&mut meta, now)?;
        if self.settings.shards > 0 {
            let unplaced: Vec<(&str, &str)> = targets
                .iter()
                .filter(|t| !t.placed)
                .map(|t| (t.id.as_str(), t.pattern.as_str()))
                .collect();
            if !unplaced.is_empty() {
                self.note_heat(&unplaced, now)?;
            }
        }
        self.put_meta(&meta)?;
        if !targets.is_empty() || archiving {
            self.rearm()?;
        }
        Response::json(&Published {
            id,
            sequence: seq,
            timestamp: now,
            matched,
        })
    }

    /// Forgets ids older than the window, and the oldest beyond the count bound, a few per
    /// publish so no publish pays for a long clean-up.
    fn forget_old_ids(&self, meta: &mut super::Meta, now: i64) -> Result<()> {
        let sql = self.state.storage().sql();
        let cutoff = now.saturating_sub(self.settings.dedup_window_ms);
        let old = sql.exec(
            "DELETE FROM ev_published WHERE id IN
               (SELECT id FROM ev_published WHERE ts < ? ORDER BY ts LIMIT ?)",
            &[cutoff.into(), DEDUP_SWEEP.into()],
        )?;
        meta.published -= i64::try_from(old.rows_written()).unwrap_or(0);
        let excess = (meta.published - self.settings.dedup_max).clamp(0, DEDUP_SWEEP);
        if excess > 0 {
            let gone = sql.exec(
                "DELETE FROM ev_published WHERE id IN
                   (SELECT id FROM ev_published ORDER BY ts LIMIT ?)",
                &[excess.into()],
            )?;
            meta.published -= i64::try_from(gone.rows_written()).unwrap_or(0);
        }
        meta.published = meta.published.max(0);
        Ok(())
    }
}

/// The body's `type`, `data` (null when absent) and `id`.
fn parse(req: &Request) -> Result<(String, Value, Option<String>), InputError> {
    let mut map = match serde_json::from_slice::<Value>(req.body()) {
        Ok(Value::Object(map)) => map,
        Ok(_) => return Err(InputError::Body("not an object".into())),
        Err(e) => return Err(InputError::Body(e.to_string())),
    };
    let data = map.remove("data").unwrap_or(Value::Null);
    let body = Body::from_value(Value::Object(map))?;
    let event_type = body.string("type", MAX_TYPE_BYTES)?;
    validate_type(&event_type).map_err(|e| InputError::invalid("type", e.to_string()))?;
    let id = if body.has("id") {
        let id = body.string("id", MAX_ID_BYTES)?;
        if !id_ok(&id) {
            return Err(InputError::invalid(
                "id",
                "may only hold letters, digits and '_', '-', '.', ':'",
            ));
        }
        Some(id)
    } else {
        None
    };
    Ok((event_type, data, id))
}

/// The subscriptions of the object whose pattern matches `event_type`, parsing each pattern
/// once per instance (`patterns`).
fn targets(
    state: &ObjectState,
    patterns: &mut HashMap<String, Pattern>,
    event_type: &str,
) -> Result<Vec<Target>> {
    let cursor = state.storage().sql().exec(
        "SELECT s.id, s.pattern, s.pending, pl.sub IS NOT NULL AS placed
           FROM ev_subscriptions s LEFT JOIN ev_placement pl ON pl.sub = s.id
          ORDER BY s.rowid",
        &[],
    )?;
    // Parsed patterns are kept per instance: a publish matches every subscription's
    // pattern, and parsing them all again each time was most of that work. The cache holds
    // at most the namespace's subscriptions (patterns of deleted ones are dropped when it
    // grows past twice that).
    if patterns.len() > 2 * cursor.len().max(1) {
        patterns.clear();
    }
    let mut out = Vec::new();
    for row in cursor.rows() {
        let t = Target {
            id: row.get("id")?,
            pattern: row.get("pattern")?,
            pending: row.get("pending")?,
            placed: row.get::<i64>("placed")? != 0,
        };
        if !patterns.contains_key(&t.pattern) {
            match Pattern::parse(&t.pattern) {
                Ok(p) => {
                    patterns.insert(t.pattern.clone(), p);
                }
                // Stored patterns were checked when created; a bad one matches nothing.
                Err(e) => {
                    tracing::warn!(subscription = %t.id, error = %e, "Subscriptions: a stored pattern does not parse");
                    continue;
                }
            }
        }
        if patterns
            .get(&t.pattern)
            .is_some_and(|p| p.matches(event_type))
        {
            out.push(t);
        }
    }
    Ok(out)
}

//! events.do's subscriptions on Rookery (issue 16, item 3; seed 003's `SubscriptionDO`): one
//! `Subscriptions` object per event namespace takes the namespace's published events, keeps
//! its subscriptions `{pattern, url}`, and delivers every matching event to every subscriber
//! by HTTP `POST`, at least once and in order per subscription, with retries by alarm and a
//! dead-letter list. docs/EVENTS.md has the HTTP API; this is how it works.
//!
//! - [`pattern`]: event types and the wildcard patterns (`user.*`, `*.created`, `**`).
//! - `publish`: `POST /events` — validation, idempotency by id, stamping, enqueueing.
//! - `subscriptions`: create, list, status and delete.
//! - `delivery`: the alarm that delivers, backs off, dead-letters; replay.
//! - `settings`: bounds and retry timing from `[vars]`.
//! - `coordinator`: the shard coordinator, which places hot patterns' subscriptions on
//!   delivery shards and moves them; `shard`: a delivery shard's side of it.
//!
//! **Why SQL tables, not key-value records.** Delivery state is a set of queues (one per
//! subscription) over one shared event log, and the questions asked of it are relational: the
//! oldest pending event of a subscription joined to its body, the subscriptions due now, the
//! earliest next attempt, whether any queue or dead-letter list still refers to an event. With
//! tables and indexes each of these is one indexed statement; with keys they would be prefix
//! scans plus hand-kept secondary indexes. Everything is in the object's own SQLite database,
//! in the turn's transaction, so a publish (event, queue entries, counters) commits or rolls
//! back as one. The tables:
//!
//! | table | holds | removed |
//! | --- | --- | --- |
//! | `ev_events (seq, id, body)` | the stamped event as delivered, once per event | when no queue or dead-letter list refers to it |
//! | `ev_published (id, seq, ts, matched, fingerprint)` | one row per published id, for idempotency | after `EVENTS_DEDUP_WINDOW_MS`, or oldest first beyond `EVENTS_DEDUP_MAX` |
//! | `ev_subscriptions` | pattern, url and the delivery state: `pending`, `attempts`, `last_error`, `next_attempt`, counters | on delete |
//! | `ev_pending (sub, seq)` | each subscription's queue, in `seq` order | on acknowledgement or dead-lettering |
//! | `ev_dead (sub, seq, attempts, last_error, dead_at)` | the dead-letter lists | on replay, delete, or beyond `EVENTS_MAX_DEAD_LETTERS` (oldest first, counted in `dropped`) |
//! | `ev_placement (sub, shard, epoch, carried, target, forget, …)` | the namespace's object: which shard delivers a subscription, and the steps of a move (`coordinator`) | when the subscription is home again, or deleted, and no shard holds a copy |
//! | `ev_owned (sub, epoch, fed, frozen)` | a shard: the subscriptions placed on it (`shard`) | when the coordinator has taken a released one back |
//!
//! The next sequence number and the next subscription number are one key-value record
//! (`meta`).
//!
//! **Delivery runs in the alarm**, as the event aggregator's does: the object's one alarm is
//! set for the earliest `next_attempt` of any subscription with pending events. Each alarm turn
//! makes at most [`DELIVERIES_PER_TURN`] attempts in rounds: a round sends the head event of
//! every due subscription at once and waits for all the answers; then the alarm is set again,
//! so publishes waiting in the mailbox get their turn between alarm turns. An attempt is an
//! outbound request *inside* the turn: Rookery commits the turn's writes so far before it
//! leaves, so the acknowledgement of the previous event is durable before the next one is
//! sent. The cost is that the object waits for the slowest receiver of each round (at most the
//! outbound `timeout_ms`); a slow receiver slows its whole namespace, though no longer by the
//! sum of every receiver's time. Delivery from `wait_until` work would remove the wait, at the
//! price of in-flight bookkeeping; not done yet.

pub mod archive;
mod bindings;
mod coordinator;
#[cfg(test)]
mod coordinator_tests;
mod delivery;
pub mod pattern;
mod publish;
pub mod schemas;
pub(crate) mod settings;
pub mod shard;
mod status_page;
mod subscriptions;
#[cfg(test)]
mod tests;
pub mod worker;

use rookery::prelude::*;
use rookery::{HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::input::{json_error, method_not_allowed, not_found};
use crate::sql_tables::Tables;
use settings::Settings;

pub use publish::Published;
pub use subscriptions::{DeadLetter, SubscriptionStatus};

/// Delivery attempts one alarm turn makes before it yields to other events.
pub const DELIVERIES_PER_TURN: usize = 16;

/// The key-value record of counters.
const META: &str = "meta";

/// The tables (see the module's documentation).
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS ev_events (
  seq INTEGER PRIMARY KEY,
  id TEXT NOT NULL,
  body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS ev_published (
  id TEXT PRIMARY KEY,
  seq INTEGER NOT NULL,
  ts INTEGER NOT NULL,
  matched INTEGER NOT NULL,
  fingerprint TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS ev_published_ts ON ev_published (ts);
CREATE TABLE IF NOT EXISTS ev_subscriptions (
  id TEXT PRIMARY KEY,
  pattern TEXT NOT NULL,
  url TEXT NOT NULL,
  created INTEGER NOT NULL,
  pending INTEGER NOT NULL DEFAULT 0,
  attempts INTEGER NOT NULL DEFAULT 0,
  last_error TEXT,
  next_attempt INTEGER,
  delivered INTEGER NOT NULL DEFAULT 0,
  dead INTEGER NOT NULL DEFAULT 0,
  dropped INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS ev_subscriptions_due ON ev_subscriptions (next_attempt);
CREATE TABLE IF NOT EXISTS ev_pending (
  sub TEXT NOT NULL,
  seq INTEGER NOT NULL,
  PRIMARY KEY (sub, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS ev_pending_seq ON ev_pending (seq);
CREATE TABLE IF NOT EXISTS ev_dead (
  sub TEXT NOT NULL,
  seq INTEGER NOT NULL,
  attempts INTEGER NOT NULL,
  last_error TEXT,
  dead_at INTEGER NOT NULL,
  PRIMARY KEY (sub, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS ev_dead_seq ON ev_dead (seq);
CREATE TABLE IF NOT EXISTS ev_placement (
  sub TEXT PRIMARY KEY,
  shard INTEGER NOT NULL,
  epoch INTEGER NOT NULL,
  carried INTEGER NOT NULL DEFAULT 0,
  target INTEGER,
  forget INTEGER,
  forget_epoch INTEGER,
  remote_pending INTEGER NOT NULL DEFAULT 0,
  failures INTEGER NOT NULL DEFAULT 0,
  next_step INTEGER NOT NULL DEFAULT 0,
  last_error TEXT
);
CREATE TABLE IF NOT EXISTS ev_owned (
  sub TEXT PRIMARY KEY,
  epoch INTEGER NOT NULL,
  fed INTEGER NOT NULL,
  frozen INTEGER NOT NULL DEFAULT 0
);
";

/// The SQL condition (on `ev_subscriptions s`) that this object delivers `s` itself: it is
/// not placed on a shard nor being moved (`coordinator`), and not a copy a shard released.
pub(crate) const DELIVERED_HERE: &str = "NOT EXISTS (SELECT 1 FROM ev_placement pl
     WHERE pl.sub = s.id AND (pl.shard != 0 OR pl.target IS NOT NULL))
   AND NOT EXISTS (SELECT 1 FROM ev_owned o WHERE o.sub = s.id AND o.frozen = 1)";

/// Counters kept as one key-value record.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
struct Meta {
    /// The sequence number of the next published event (the first is 1).
    next_seq: i64,
    /// The number in the next subscription's id.
    next_sub: i64,
    /// Rows in `ev_published`.
    published: i64,
    /// The highest sequence the event writer has accepted (see `archive`).
    archived: i64,
    /// Failed calls to the event writer since the last that succeeded.
    archive_failures: i64,
    /// Why the last call to the event writer failed.
    archive_error: Option<String>,
    /// When the next call to the event writer is due after a failure.
    archive_next: Option<i64>,
}

/// One event namespace: its published events, subscriptions and their delivery.
pub struct Subscriptions {
    state: ObjectState,
    env: Env,
    settings: Settings,
    /// The class's SQL tables, made once per instance.
    tables: Tables,
    /// Whether an event writer is bound (see `archive`).
    archiving: bool,
    /// Whether this object is a delivery shard (`<namespace>#<n>`, see `shard`), not a
    /// namespace's object: fixed by its name.
    shard: bool,
    /// Matches per pattern this minute (see `coordinator`).
    heat: coordinator::Heat,
    /// Whether placements beyond `EVENTS_SHARDS` were sent home (see `coordinator`).
    fitted: bool,
    /// Subscription patterns parsed, by their text (see `publish`).
    patterns: std::collections::HashMap<String, pattern::Pattern>,
}

/// A JSON error answer naming the var that sets the bound it hit.
pub(crate) fn limit_error(status: StatusCode, message: &str, limit: &str) -> Response {
    json_error(status, &json!({ "error": message, "limit": limit }))
}

impl Subscriptions {
    fn ensure_schema(&mut self) -> Result<()> {
        self.tables.ensure(&self.state, SCHEMA)
    }

    fn meta(&self) -> Result<Meta> {
        let mut meta: Meta = self.state.storage().get(META)?.unwrap_or_default();
        meta.next_seq = meta.next_seq.max(1);
        meta.next_sub = meta.next_sub.max(1);
        Ok(meta)
    }

    fn put_meta(&self, meta: &Meta) -> Result<()> {
        self.state.storage().put(META, meta)
    }

    /// The namespace: the object's name.
    fn namespace(&self) -> String {
        self.state.id().name().unwrap_or_default().to_string()
    }

    /// Sets the alarm for the earliest due subscription or archive step, or deletes it when
    /// nothing is pending.
    fn rearm(&self) -> Result<()> {
        let storage = self.state.storage();
        let cursor = storage.sql().exec(
            &format!(
                "SELECT MIN(next_attempt) AS next FROM ev_subscriptions s
                  WHERE pending > 0 AND {DELIVERED_HERE}"
            ),
            &[],
        )?;
        let delivery: Option<i64> = cursor.one()?.get("next")?;
        let next = [delivery, self.archive_due()?, self.coordinator_due()?]
            .into_iter()
            .flatten()
            .min();
        let current = storage.get_alarm()?;
        match next {
            Some(at) if current != Some(at) => storage.set_alarm(at)?,
            None if current.is_some() => storage.delete_alarm()?,
            _ => {}
        }
        Ok(())
    }
}

impl DurableObject for Subscriptions {
    fn new(state: ObjectState, env: Env) -> Self {
        let settings = Settings::from_env(&env);
        let shard = state.id().name().is_some_and(shard::is_shard_name);
        // A shard's events are archived by its namespace's object, which has them all.
        let archiving = !shard && env.namespace(archive::WRITER_BINDING).is_ok();
        Self {
            state,
            env,
            settings,
            tables: Tables::default(),
            archiving,
            shard,
            heat: coordinator::Heat::default(),
            fitted: false,
            patterns: std::collections::HashMap::new(),
        }
    }

    async fn fetch(&mut self, req: Request) -> Result<Response> {
        if self.is_shard() {
            return Ok(json_error(
                StatusCode::NOT_FOUND,
                &json!({ "error": "a delivery shard takes no requests; ask its namespace's object" }),
            ));
        }
        self.ensure_schema()?;
        self.fit_shard_count()?;
        let method = req.method().clone();
        let path = req.path().trim_end_matches('/').to_string();
        let rest = path.strip_prefix("/subscriptions");
        match (path.as_str(), rest) {
            ("/events", _) if method == Method::POST => self.publish(&req),
            ("/events", _) => Ok(method_not_allowed("POST")),
            (_, Some("")) if method == Method::GET => self.list().await,
            (_, Some("")) if method == Method::POST => self.create(&req),
            (_, Some("")) => Ok(method_not_allowed("GET, POST")),
            (_, Some("/dead-letters")) if method == Method::GET => self.dead_letters(&req).await,
            (_, Some("/dead-letters")) => Ok(method_not_allowed("GET")),
            (_, Some("/dead-letters/replay")) if method == Method::POST => self.replay(&req).await,
            (_, Some("/dead-letters/replay")) => Ok(method_not_allowed("POST")),
            (_, Some(id)) => match id.strip_prefix('/') {
                Some(id) if id.ends_with("/shard") && id.matches('/').count() == 1 => {
                    let id = id.trim_end_matches("/shard");
                    if method == Method::POST {
                        self.move_http(id, &req)
                    } else {
                        Ok(method_not_allowed("POST"))
                    }
                }
                Some(id) if !id.contains('/') => {
                    if method == Method::GET {
                        self.status_http(id).await
                    } else if method == Method::DELETE {
                        self.delete(id)
                    } else {
                        Ok(method_not_allowed("GET, DELETE"))
                    }
                }
                _ => Ok(not_found()),
            },
            _ => Ok(not_found()),
        }
    }

    async fn call(&mut self, call: Call) -> Result<Reply> {
        shard::DeliveryShard::serve(self, call).await
    }

    async fn alarm(&mut self, _info: AlarmInfo) -> Result<()> {
        self.ensure_schema()?;
        self.fit_shard_count()?;
        // Shards first: a feed is one quick typed call per shard, while home deliveries wait
        // for receivers (a hung one up to the outbound timeout).
        let keep_from = self.keep_from()?;
        self.coordinate(keep_from).await?;
        self.deliver().await?;
        self.archive().await?;
        self.rearm()
    }
}

/// The `Retry-After` header.
pub(crate) fn retry_after(seconds: u64) -> (HeaderName, HeaderValue) {
    (
        HeaderName::from_static("retry-after"),
        HeaderValue::from(seconds),
    )
}

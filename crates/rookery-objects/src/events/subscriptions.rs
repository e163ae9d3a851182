//! Subscriptions: create `{pattern, url}`, list, status of one, delete; the dead-letter list.
//!
//! A new subscription receives the events published after it was created, not earlier ones.
//! Deleting one drops its queue and dead letters.

use futures_util::future::join_all;
use rookery::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::pattern::{MAX_TYPE_BYTES, Pattern};
use super::{Subscriptions, limit_error};
use crate::input::{Body, InputError, not_found};

/// Longest subscriber URL, in bytes.
pub const MAX_URL_BYTES: usize = 2048;
/// Dead letters listed per request, unless `limit` says otherwise (at most 1 000).
const DEFAULT_LIST: i64 = 100;

/// A subscription and its delivery state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubscriptionStatus {
    /// `sub_<n>`.
    pub id: String,
    /// The pattern its events' types match.
    pub pattern: String,
    /// Where its events are `POST`ed.
    pub url: String,
    /// When it was created, ms since the epoch.
    pub created_at: i64,
    /// Events enqueued and not yet acknowledged or dead-lettered.
    pub pending: i64,
    /// Failed attempts at the event at the head of the queue.
    pub attempts: i64,
    /// Why the last attempt failed (kept until an attempt succeeds).
    pub last_error: Option<String>,
    /// When the head event is tried next (null when nothing is pending).
    pub next_attempt_at: Option<i64>,
    /// Events acknowledged (2xx) so far.
    pub delivered: i64,
    /// Events in its dead-letter list now.
    pub dead_letters: i64,
    /// Dead letters dropped because the list was full (`EVENTS_MAX_DEAD_LETTERS`).
    pub dropped: i64,
    /// The delivery shard that delivers it (null: the namespace's object does).
    #[serde(default)]
    pub shard: Option<i64>,
    /// Why its shard could not be asked for its state (the figures are then this object's
    /// part only).
    #[serde(default)]
    pub shard_error: Option<String>,
}

/// An event that exhausted its attempts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetter {
    /// The subscription it was for.
    pub subscription: String,
    /// The event as it was sent.
    pub event: Value,
    /// Attempts made.
    pub attempts: i64,
    /// Why the last one failed.
    pub last_error: Option<String>,
    /// When it was dead-lettered.
    pub dead_at: i64,
}

/// A dead letter as shards list it (the event as JSON text: typed calls carry no
/// `serde_json::Value`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetterText {
    /// The subscription it was for.
    pub subscription: String,
    /// Its sequence number.
    pub seq: i64,
    /// The event's JSON text.
    pub event: String,
    /// Attempts made.
    pub attempts: i64,
    /// Why the last one failed.
    pub last_error: Option<String>,
    /// When it was dead-lettered.
    pub dead_at: i64,
}

const COLUMNS: &str = "id, pattern, url, created, pending, attempts, last_error, next_attempt, \
                       delivered, dead, dropped";

fn status_of(row: &rookery::SqlRow<'_>) -> Result<SubscriptionStatus> {
    Ok(SubscriptionStatus {
        id: row.get("id")?,
        pattern: row.get("pattern")?,
        url: row.get("url")?,
        created_at: row.get("created")?,
        pending: row.get("pending")?,
        attempts: row.get("attempts")?,
        last_error: row.get("last_error")?,
        next_attempt_at: row.get("next_attempt")?,
        delivered: row.get("delivered")?,
        dead_letters: row.get("dead")?,
        dropped: row.get("dropped")?,
        shard: None,
        shard_error: None,
    })
}

/// Checks a subscriber URL: absolute `http` or `https` with a host.
fn check_url(url: &str) -> Result<(), InputError> {
    let bad = || InputError::invalid("url", "must be an absolute http:// or https:// URL");
    let req = Request::post(url).map_err(|_| bad())?;
    let uri = req.uri();
    match (uri.scheme_str(), uri.host()) {
        (Some("http" | "https"), Some(host)) if !host.is_empty() => Ok(()),
        _ => Err(bad()),
    }
}

impl Subscriptions {
    /// The status of subscription `id` as this object holds it, if it exists.
    pub(super) fn status(&self, id: &str) -> Result<Option<SubscriptionStatus>> {
        let cursor = self.state.storage().sql().exec(
            &format!("SELECT {COLUMNS} FROM ev_subscriptions WHERE id = ?"),
            &[id.into()],
        )?;
        cursor.rows().next().map(|r| status_of(&r)).transpose()
    }

    /// The statuses of the subscriptions this object delivers or holds, oldest first (a
    /// shard's released copies left out).
    pub(super) fn local_statuses(&self) -> Result<Vec<SubscriptionStatus>> {
        let cursor = self.state.storage().sql().exec(
            &format!(
                "SELECT {COLUMNS} FROM ev_subscriptions s WHERE NOT EXISTS
                   (SELECT 1 FROM ev_owned o WHERE o.sub = s.id AND o.frozen = 1)
                 ORDER BY rowid"
            ),
            &[],
        )?;
        cursor.rows().map(|r| status_of(&r)).collect()
    }

    /// `statuses` with the state of placed subscriptions asked of their shards: a shard's
    /// figures, plus the events this object has not handed it yet.
    async fn with_shards(
        &self,
        mut statuses: Vec<SubscriptionStatus>,
    ) -> Result<Vec<SubscriptionStatus>> {
        let mut asked = Vec::new();
        let mut calls = Vec::new();
        for (shard, subs) in self.carried_by_shard()? {
            if !statuses.iter().any(|s| subs.contains(&s.id)) {
                continue;
            }
            let stub = self.shard_stub(shard)?;
            asked.push((shard, subs));
            calls.push(async move { stub.statuses().await });
        }
        for ((shard, subs), remote) in asked.into_iter().zip(join_all(calls).await) {
            for status in statuses.iter_mut().filter(|s| subs.contains(&s.id)) {
                status.shard = Some(shard);
                match &remote {
                    Ok(remote) => {
                        if let Some(r) = remote.iter().find(|r| r.id == status.id) {
                            let here = status.pending;
                            *status = SubscriptionStatus {
                                pending: r.pending + here,
                                shard: Some(shard),
                                ..r.clone()
                            };
                        }
                    }
                    Err(e) => status.shard_error = Some(e.to_string()),
                }
            }
        }
        for status in &mut statuses {
            if status.shard.is_none()
                && let Some((shard, _)) = self.placement(&status.id)?
                && shard != 0
            {
                status.shard = Some(shard);
            }
        }
        Ok(statuses)
    }

    /// `GET /subscriptions/:id`.
    pub(super) async fn status_http(&self, id: &str) -> Result<Response> {
        match self.status(id)? {
            Some(s) => {
                let mut all = self.with_shards(vec![s]).await?;
                match all.pop() {
                    Some(s) => Response::json(&s),
                    None => Ok(not_found()),
                }
            }
            None => Ok(not_found()),
        }
    }

    /// `GET /subscriptions`: every subscription, oldest first.
    pub(super) async fn list(&self) -> Result<Response> {
        let subs = self.with_shards(self.local_statuses()?).await?;
        match self.archive_status()? {
            Some(archive) => Response::json(&json!({ "subscriptions": subs, "archive": archive })),
            None => Response::json(&json!({ "subscriptions": subs })),
        }
    }

    /// `POST /subscriptions` `{pattern, url}` → 201 with the new subscription's status.
    pub(super) fn create(&mut self, req: &Request) -> Result<Response> {
        let input = Body::parse(req).and_then(|body| {
            let pattern = body.string("pattern", MAX_TYPE_BYTES)?;
            Pattern::parse(&pattern).map_err(|e| InputError::invalid("pattern", e.to_string()))?;
            let url = body.string("url", MAX_URL_BYTES)?;
            check_url(&url)?;
            Ok((pattern, url))
        });
        let (pattern, url) = match input {
            Ok(v) => v,
            Err(e) => return Ok(e.response()),
        };
        let sql = self.state.storage().sql();
        let count: i64 = sql
            .exec("SELECT COUNT(*) AS n FROM ev_subscriptions", &[])?
            .one()?
            .get("n")?;
        let max = self.settings.max_subscriptions;
        if count >= max {
            return Ok(limit_error(
                StatusCode::INSUFFICIENT_STORAGE,
                &format!("this namespace has {count} subscriptions, the most it may have"),
                "EVENTS_MAX_SUBSCRIPTIONS",
            ));
        }
        let mut meta = self.meta()?;
        let id = format!("sub_{}", meta.next_sub);
        meta.next_sub += 1;
        sql.exec(
            "INSERT INTO ev_subscriptions (id, pattern, url, created) VALUES (?, ?, ?, ?)",
            &[
                id.as_str().into(),
                pattern.into(),
                url.into(),
                self.state.now_ms().into(),
            ],
        )?;
        self.put_meta(&meta)?;
        let status = self
            .status(&id)?
            .ok_or_else(|| Error::msg("the new subscription is missing"))?;
        tracing::debug!(subscription = %id, "Subscriptions: created");
        Ok(Response::json(&status)?.with_status(StatusCode::CREATED))
    }

    /// `DELETE /subscriptions/:id`: the subscription, its queue and its dead letters (a
    /// shard's copy is deleted by the coordinator's next step).
    pub(super) fn delete(&mut self, id: &str) -> Result<Response> {
        if self.status(id)?.is_none() {
            return Ok(not_found());
        }
        self.drop_subscription(id)?;
        self.unplace(id)?;
        self.rearm()?;
        Response::json(&json!({ "deleted": true, "id": id }))
    }

    /// Deletes subscription `id` with its queue and dead letters, and the events nothing else
    /// needs.
    pub(super) fn drop_subscription(&self, id: &str) -> Result<()> {
        let sql = self.state.storage().sql();
        sql.exec("DELETE FROM ev_subscriptions WHERE id = ?", &[id.into()])?;
        sql.exec("DELETE FROM ev_pending WHERE sub = ?", &[id.into()])?;
        sql.exec("DELETE FROM ev_dead WHERE sub = ?", &[id.into()])?;
        // Deletes are rare: one pass over the (bounded) stored events.
        sql.exec(
            "DELETE FROM ev_events WHERE seq < ?
               AND NOT EXISTS (SELECT 1 FROM ev_pending p WHERE p.seq = ev_events.seq)
               AND NOT EXISTS (SELECT 1 FROM ev_dead d WHERE d.seq = ev_events.seq)",
            &[self.keep_from()?.into()],
        )?;
        Ok(())
    }

    /// The dead letters this object holds, by subscription then sequence, at most `limit`.
    pub(super) fn local_dead_letters(
        &self,
        sub: Option<String>,
        limit: i64,
    ) -> Result<Vec<DeadLetterText>> {
        let cursor = self.state.storage().sql().exec(
            "SELECT d.sub, d.seq, d.attempts, d.last_error, d.dead_at, e.body
               FROM ev_dead d JOIN ev_events e ON e.seq = d.seq
              WHERE (? IS NULL OR d.sub = ?) AND NOT EXISTS
                (SELECT 1 FROM ev_owned o WHERE o.sub = d.sub AND o.frozen = 1)
              ORDER BY d.sub, d.seq LIMIT ?",
            &[sub.clone().into(), sub.into(), limit.into()],
        )?;
        let mut letters = Vec::with_capacity(cursor.len());
        for row in cursor.rows() {
            letters.push(DeadLetterText {
                subscription: row.get("sub")?,
                seq: row.get("seq")?,
                event: row.get("body")?,
                attempts: row.get("attempts")?,
                last_error: row.get("last_error")?,
                dead_at: row.get("dead_at")?,
            });
        }
        Ok(letters)
    }

    /// `GET /subscriptions/dead-letters?subscription=&limit=`: dead letters by subscription,
    /// then sequence, from this object and the shards.
    pub(super) async fn dead_letters(&self, req: &Request) -> Result<Response> {
        let limit = req.query::<i64>("limit")?.unwrap_or(DEFAULT_LIST);
        if !(1..=1_000).contains(&limit) {
            return Ok(
                InputError::invalid("limit", "must be an integer from 1 to 1000").response(),
            );
        }
        let sub = req.query::<String>("subscription")?;
        let mut letters = self.local_dead_letters(sub.clone(), limit)?;
        let mut asked = Vec::new();
        let mut calls = Vec::new();
        for (shard, subs) in self.carried_by_shard()? {
            if sub.as_ref().is_some_and(|id| !subs.contains(id)) {
                continue;
            }
            let stub = self.shard_stub(shard)?;
            let only = sub.clone();
            asked.push(shard);
            calls.push(async move { stub.dead_letters(only, limit).await });
        }
        // A shard that cannot be asked is named in the answer; the others' letters still list.
        let mut shard_errors = Vec::new();
        for (shard, answer) in asked.into_iter().zip(join_all(calls).await) {
            match answer {
                Ok(more) => letters.extend(more),
                Err(e) => shard_errors.push(json!({ "shard": shard, "error": e.to_string() })),
            }
        }
        letters.sort_by(|a, b| (&a.subscription, a.seq).cmp(&(&b.subscription, b.seq)));
        letters.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
        let letters = letters
            .into_iter()
            .map(|d| {
                Ok(DeadLetter {
                    subscription: d.subscription,
                    event: serde_json::from_str(&d.event).map_err(Error::msg)?,
                    attempts: d.attempts,
                    last_error: d.last_error,
                    dead_at: d.dead_at,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        if shard_errors.is_empty() {
            Response::json(&json!({ "deadLetters": letters }))
        } else {
            Response::json(&json!({ "deadLetters": letters, "shardErrors": shard_errors }))
        }
    }
}

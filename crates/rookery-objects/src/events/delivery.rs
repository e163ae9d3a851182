//! Delivery: the alarm `POST`s each due subscription's oldest pending event; replay of dead
//! letters.
//!
//! - **In order.** A subscription's head is its lowest pending sequence number; the next event
//!   is sent only once the head is acknowledged or dead-lettered.
//! - **At least once.** The head leaves the queue only after a 2xx answer (or when it is
//!   dead-lettered). A crash between the answer and the commit sends it again; receivers drop
//!   repeats by the `Idempotency-Key` header (the event id).
//! - **Backoff.** After a failed attempt (an error status, a timeout, a refused connection) the
//!   head is tried again after `EVENTS_RETRY_BASE_MS` doubled per failed attempt, up to
//!   `EVENTS_RETRY_CAP_MS`, with equal jitter (a random point in the upper half); after
//!   `EVENTS_MAX_ATTEMPTS` failed attempts it moves to the dead-letter list, and delivery goes
//!   on with the next event at once.
//! - **Replay** moves dead letters back into their queue (as many as `EVENTS_MAX_PENDING`
//!   leaves room for), where they take their place by sequence number: before newer pending
//!   events. It resets the subscription's backoff.
//!
//! Each request carries `Content-Type: application/json`, `Idempotency-Key: <event id>`,
//! `X-Rookery-Subscription: <subscription id>` and `X-Rookery-Attempt: <n>` (from 1); its body
//! is the event `{id, namespace, type, data, timestamp, sequence}`.

use futures_util::future::join_all;
use rookery::prelude::*;
use serde_json::json;

use super::{DELIVERED_HERE, DELIVERIES_PER_TURN, Subscriptions};
use crate::input::{Body, InputError};
use crate::webhook;

/// A due subscription's head event, about to be sent.
struct Head {
    sub: Due,
    seq: i64,
    event_id: String,
    body: String,
}

/// One due subscription.
struct Due {
    id: String,
    url: String,
    attempts: i64,
    pending: i64,
}

impl Subscriptions {
    /// The alarm: attempts for the due subscriptions, then the alarm for what is next.
    ///
    /// Each round takes the head event of every due subscription and sends them all at once:
    /// subscriptions are independent queues, so one slow receiver costs a round its answer
    /// time, not the sum of everyone's. Order within a subscription holds because a round
    /// sends at most its head.
    pub(super) async fn deliver(&mut self) -> Result<()> {
        let mut budget = DELIVERIES_PER_TURN;
        // The archive's cursor moves only after delivery, so one read serves the whole turn.
        let keep_from = self.keep_from()?;
        while budget > 0 {
            let now = self.state.now_ms();
            let cursor = self.state.storage().sql().exec(
                &format!(
                    "SELECT id, url, attempts, pending FROM ev_subscriptions s
                      WHERE pending > 0 AND next_attempt <= ? AND {DELIVERED_HERE}
                      ORDER BY next_attempt, rowid LIMIT ?"
                ),
                &[now.into(), i64::try_from(budget).unwrap_or(i64::MAX).into()],
            )?;
            let mut due = Vec::with_capacity(cursor.len());
            for row in cursor.rows() {
                due.push(Due {
                    id: row.get("id")?,
                    url: row.get("url")?,
                    attempts: row.get("attempts")?,
                    pending: row.get("pending")?,
                });
            }
            if due.is_empty() {
                break;
            }
            budget = budget.saturating_sub(due.len());
            let mut heads = Vec::with_capacity(due.len());
            for sub in due {
                if let Some(head) = self.head(sub)? {
                    heads.push(head);
                }
            }
            // Commit what the round found (and the last round settled) once, before any
            // request leaves: each request's own commit then has nothing left to write.
            self.state.storage().sync().await?;
            let outcomes = join_all(
                heads
                    .iter()
                    .map(|h| self.send(&h.sub, &h.event_id, h.body.clone(), h.sub.attempts + 1)),
            )
            .await;
            for (head, outcome) in heads.iter().zip(outcomes) {
                self.settle(head, outcome?, keep_from)?;
            }
        }
        Ok(())
    }

    /// `sub`'s oldest pending event, or `None` (after repairing its counter) if it has none.
    fn head(&self, sub: Due) -> Result<Option<Head>> {
        let head = self.state.storage().sql().exec(
            "SELECT p.seq, e.id, e.body FROM ev_pending p JOIN ev_events e ON e.seq = p.seq
              WHERE p.sub = ? ORDER BY p.seq LIMIT 1",
            &[sub.id.as_str().into()],
        )?;
        let Some(row) = head.rows().next() else {
            // The counter says pending but the queue is empty: repair rather than spin.
            tracing::warn!(subscription = %sub.id, "Subscriptions: pending count without a queue; reset");
            self.state.storage().sql().exec(
                "UPDATE ev_subscriptions SET pending = 0, attempts = 0, next_attempt = NULL WHERE id = ?",
                &[sub.id.as_str().into()],
            )?;
            return Ok(None);
        };
        Ok(Some(Head {
            seq: row.get("seq")?,
            event_id: row.get("id")?,
            body: row.get("body")?,
            sub,
        }))
    }

    /// Records the outcome of one attempt at `head`: acknowledged, retried later, or
    /// dead-lettered.
    fn settle(&self, head: &Head, outcome: Result<(), String>, keep_from: i64) -> Result<()> {
        let (sub, seq, event_id) = (&head.sub, head.seq, &head.event_id);
        let attempt = sub.attempts + 1;
        let now = self.state.now_ms();
        let sql = self.state.storage().sql();
        let next_head = if sub.pending > 1 { Some(now) } else { None };
        match outcome {
            Ok(()) => {
                sql.exec(
                    "DELETE FROM ev_pending WHERE sub = ? AND seq = ?",
                    &[sub.id.as_str().into(), seq.into()],
                )?;
                sql.exec(
                    "UPDATE ev_subscriptions SET pending = pending - 1, delivered = delivered + 1,
                       attempts = 0, last_error = NULL, next_attempt = ? WHERE id = ?",
                    &[next_head.into(), sub.id.as_str().into()],
                )?;
                self.forget_event(seq, keep_from)?;
            }
            Err(why) if attempt >= self.settings.max_attempts => {
                tracing::warn!(subscription = %sub.id, event = %event_id, attempts = attempt, error = %why, "Subscriptions: dead-lettered");
                self.dead_letter(&sub.id, seq, attempt, &why, now, keep_from)?;
                sql.exec(
                    "UPDATE ev_subscriptions SET pending = pending - 1, attempts = 0,
                       last_error = ?, next_attempt = ? WHERE id = ?",
                    &[why.into(), next_head.into(), sub.id.as_str().into()],
                )?;
            }
            Err(why) => {
                let at = now.saturating_add(self.settings.backoff_ms(attempt));
                tracing::debug!(subscription = %sub.id, event = %event_id, attempt, error = %why, next = at, "Subscriptions: delivery failed");
                sql.exec(
                    "UPDATE ev_subscriptions SET attempts = ?, last_error = ?, next_attempt = ?
                      WHERE id = ?",
                    &[
                        attempt.into(),
                        why.into(),
                        at.into(),
                        sub.id.as_str().into(),
                    ],
                )?;
            }
        }
        Ok(())
    }

    /// `POST`s the event; `Ok(Err(why))` is a failed attempt, `Err` a failure of the turn
    /// itself (e.g. its writes could not be made durable before the request).
    async fn send(
        &self,
        sub: &Due,
        event_id: &str,
        body: String,
        attempt: i64,
    ) -> Result<Result<(), String>> {
        let attempt = attempt.to_string();
        let headers = [
            ("idempotency-key", event_id),
            ("x-rookery-subscription", sub.id.as_str()),
            ("x-rookery-attempt", attempt.as_str()),
        ];
        webhook::post_json(&self.env, &sub.url, body, &headers).await
    }

    /// Moves `seq` from `sub`'s queue to its dead-letter list, dropping the list's oldest
    /// entry when it is full.
    fn dead_letter(
        &self,
        sub: &str,
        seq: i64,
        attempts: i64,
        why: &str,
        now: i64,
        keep_from: i64,
    ) -> Result<()> {
        let sql = self.state.storage().sql();
        sql.exec(
            "DELETE FROM ev_pending WHERE sub = ? AND seq = ?",
            &[sub.into(), seq.into()],
        )?;
        let dead: i64 = sql
            .exec(
                "SELECT dead FROM ev_subscriptions WHERE id = ?",
                &[sub.into()],
            )?
            .one()?
            .get("dead")?;
        if dead >= self.settings.max_dead_letters {
            let oldest = sql.exec(
                "DELETE FROM ev_dead WHERE sub = ? AND seq = (SELECT MIN(seq) FROM ev_dead WHERE sub = ?) RETURNING seq",
                &[sub.into(), sub.into()],
            )?;
            if let Some(row) = oldest.rows().next() {
                let dropped: i64 = row.get("seq")?;
                tracing::warn!(subscription = %sub, seq = dropped, "Subscriptions: dead-letter list full; dropped its oldest");
                sql.exec(
                    "UPDATE ev_subscriptions SET dead = dead - 1, dropped = dropped + 1 WHERE id = ?",
                    &[sub.into()],
                )?;
                self.forget_event(dropped, keep_from)?;
            }
        }
        sql.exec(
            "INSERT INTO ev_dead (sub, seq, attempts, last_error, dead_at) VALUES (?, ?, ?, ?, ?)",
            &[
                sub.into(),
                seq.into(),
                attempts.into(),
                why.into(),
                now.into(),
            ],
        )?;
        sql.exec(
            "UPDATE ev_subscriptions SET dead = dead + 1 WHERE id = ?",
            &[sub.into()],
        )?;
        Ok(())
    }

    /// Deletes event `seq` if no queue, dead-letter list or the archive needs it any more.
    /// `keep_from` is [`Subscriptions::keep_from`]: the archive still needs events from it on.
    pub(super) fn forget_event(&self, seq: i64, keep_from: i64) -> Result<()> {
        if seq >= keep_from {
            return Ok(());
        }
        self.state.storage().sql().exec(
            "DELETE FROM ev_events WHERE seq = ?
               AND NOT EXISTS (SELECT 1 FROM ev_pending WHERE seq = ?)
               AND NOT EXISTS (SELECT 1 FROM ev_dead WHERE seq = ?)",
            &[seq.into(), seq.into(), seq.into()],
        )?;
        Ok(())
    }

    /// `POST /subscriptions/dead-letters/replay` with an optional `{"subscription": id}`:
    /// dead letters back into their queues, here and on the shards → `{replayed, remaining}`.
    pub(super) async fn replay(&mut self, req: &Request) -> Result<Response> {
        let only = if req.body().is_empty() {
            None
        } else {
            match Body::parse(req).and_then(|b| {
                if b.has("subscription") {
                    b.string("subscription", 64).map(Some)
                } else {
                    Ok(None)
                }
            }) {
                Ok(only) => only,
                Err(e) => return Ok(e.response()),
            }
        };
        if let Some(id) = &only
            && self.status(id)?.is_none()
        {
            return Ok(InputError::invalid("subscription", "names no subscription").response());
        }
        let (mut replayed, mut remaining) = self.replay_local(only.as_deref())?;
        self.rearm()?;
        for (shard, subs) in self.carried_by_shard()? {
            if only.as_ref().is_some_and(|id| !subs.contains(id)) {
                continue;
            }
            let (r, left) = self.shard_stub(shard)?.replay(only.clone()).await?;
            replayed += r;
            remaining += left;
        }
        Response::json(&json!({ "replayed": replayed, "remaining": remaining }))
    }

    /// Moves the dead letters this object holds (of `only`, or of every subscription) back
    /// into their queues, as many as `EVENTS_MAX_PENDING` leaves room for →
    /// `(replayed, remaining)`.
    pub(super) fn replay_local(&self, only: Option<&str>) -> Result<(i64, i64)> {
        let sql = self.state.storage().sql();
        let cursor = sql.exec(
            "SELECT id, pending, dead FROM ev_subscriptions WHERE dead > 0 AND (? IS NULL OR id = ?)
              ORDER BY rowid",
            &[only.into(), only.into()],
        )?;
        let now = self.state.now_ms();
        let (mut replayed, mut remaining) = (0_i64, 0_i64);
        for row in cursor.rows() {
            let id: String = row.get("id")?;
            let pending: i64 = row.get("pending")?;
            let dead: i64 = row.get("dead")?;
            if self.owned(&id)?.is_some_and(|o| o.frozen) {
                // Released to the coordinator: its dead letters are no longer this object's.
                continue;
            }
            let room = (self.settings.max_pending - pending).clamp(0, dead);
            if room > 0 {
                let moved = sql.exec(
                    "INSERT INTO ev_pending (sub, seq)
                       SELECT sub, seq FROM ev_dead WHERE sub = ? ORDER BY seq LIMIT ?",
                    &[id.as_str().into(), room.into()],
                )?;
                let n = i64::try_from(moved.rows_written()).unwrap_or(0);
                sql.exec(
                    "DELETE FROM ev_dead WHERE sub = ? AND seq IN (SELECT seq FROM ev_pending WHERE sub = ?)",
                    &[id.as_str().into(), id.as_str().into()],
                )?;
                sql.exec(
                    "UPDATE ev_subscriptions SET pending = pending + ?, dead = dead - ?,
                       attempts = 0, next_attempt = ? WHERE id = ?",
                    &[n.into(), n.into(), now.into(), id.as_str().into()],
                )?;
                replayed += n;
                remaining += dead - n;
            } else {
                remaining += dead;
            }
        }
        Ok((replayed, remaining))
    }
}

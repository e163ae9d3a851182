//! The shard coordinator (seed 003's `ShardCoordinatorDO`): the namespace's object spreads the
//! subscriptions of hot patterns over delivery shards, `Subscriptions` objects named
//! `<namespace>#1` … `#EVENTS_SHARDS` (see `shard`), and moves them without losing or
//! repeating an event.
//!
//! **Why the namespace's object coordinates.** Every publish must know, in its own turn, where
//! each matching subscription is delivered; a coordinator in another object would cost a call
//! per publish, and a mapping that changes between the call and the enqueue. So the mapping
//! lives next to the queues, in `ev_placement`, and changes in the same single-threaded order
//! as publishes.
//!
//! **What a shard changes.** The namespace's object still stamps, stores and enqueues every
//! event, once; a placed subscription's queue in it holds only the events not yet handed to
//! its shard. The alarm feeds them over in batches (exactly once: the shard skips what it
//! already took), and the shard delivers them on its own alarm, with its own commits. A slow
//! or failing receiver then holds up its shard only, not the namespace's other subscribers,
//! and delivery work spreads over several objects (and, with a cluster, several nodes).
//!
//! **Placement.** With `EVENTS_SHARDS = n > 0`, a pattern is hot when it matches
//! `EVENTS_HOT_EVENTS` events within one minute (counted in memory: heat is advice, and a
//! restart only delays a placement); its subscriptions are then placed on shard
//! `1 + fnv(subscription id) % n`, a stable spread. A placement stays when the pattern cools
//! (moving back and forth would cost more than it saves). `POST /subscriptions/:id/shard
//! {"shard": k}` moves one by hand (`0` brings it home), and lowering `EVENTS_SHARDS` brings
//! home the subscriptions of shards that no longer exist.
//!
//! **A move** from shard A to B is three durable steps, each retried with backoff until done:
//! 1. feeding to A stops (`target` is set, in the turn that decides the move);
//! 2. A *releases* the subscription: in one turn it stops delivering it and answers its queue,
//!    dead letters and delivery state; the coordinator merges them back into its own queue
//!    (events by sequence number, so the order holds) and makes B the owner at a new epoch;
//! 3. A *forgets* its frozen copy; only then is B fed, with the delivery state and the queue.
//!
//! An acknowledged event left A's queue in the turn that recorded the acknowledgement, before
//! any release could read the queue, so it is never sent again; an event not acknowledged is in
//! exactly one queue at every step, so it is never lost. A crash between steps repeats a step,
//! and each step answers the same when repeated.

use std::collections::{BTreeMap, HashMap};

use futures_util::future::join_all;
use rookery::prelude::*;
use serde_json::json;

use super::Subscriptions;
use super::bindings::EVENTS_BINDING;
use super::shard::{CarriedEvent, DeliveryShardStub, Fed, Feed, Released, SubFeed, shard_name};
use crate::input::{Body, not_found};

/// Events fed to a shard per subscription per alarm turn, at most.
pub const FEED_BATCH: i64 = 256;
/// How soon the coordinator looks again at a shard whose queue for a subscription is full.
const ROOM_POLL_MS: i64 = 1_000;
/// Highest number of delivery shards per namespace.
pub const MAX_SHARDS: i64 = 64;

/// Matches per pattern in the current minute (see the module's documentation).
#[derive(Debug, Default)]
pub(super) struct Heat {
    minute: i64,
    counts: HashMap<String, i64>,
}

/// A subscription placed on a shard, as a feed reads it.
struct Placed {
    sub: String,
    shard: i64,
    epoch: i64,
    carried: bool,
    remote_pending: i64,
    pattern: String,
    url: String,
    created: i64,
}

/// What one feed sent for one subscription.
struct Sent {
    sub: String,
    carried: bool,
    last: Option<i64>,
    count: i64,
    full: bool,
}

/// A stable 64-bit FNV-1a hash.
pub(super) fn fnv1a(text: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The shard a hot subscription goes to among `shards`.
pub(super) fn home_shard(sub: &str, shards: i64) -> i64 {
    let n = u64::try_from(shards.max(1)).unwrap_or(1);
    1 + i64::try_from(fnv1a(sub) % n).unwrap_or(0)
}

impl Subscriptions {
    pub(super) fn shard_stub(&self, n: i64) -> Result<DeliveryShardStub> {
        Ok(self
            .env
            .namespace(EVENTS_BINDING)?
            .typed::<DeliveryShardStub>()
            .get_by_name(&shard_name(&self.namespace(), n)))
    }

    /// Counts a publish's matches per pattern and places the subscriptions of a pattern that
    /// just became hot. `unplaced` are the matched subscriptions not placed yet, with their
    /// patterns.
    pub(super) fn note_heat(&mut self, unplaced: &[(&str, &str)], now: i64) -> Result<()> {
        let minute = now.div_euclid(60_000);
        if self.heat.minute != minute {
            self.heat.minute = minute;
            self.heat.counts.clear();
        }
        let mut hot = Vec::new();
        for (_, pattern) in unplaced {
            let count = self.heat.counts.entry((*pattern).to_string()).or_default();
            *count += 1;
            if *count >= self.settings.hot_events {
                hot.push(*pattern);
            }
        }
        for (sub, pattern) in unplaced {
            if hot.contains(pattern) {
                let shard = home_shard(sub, self.settings.shards);
                tracing::info!(subscription = %sub, pattern = %pattern, shard, "Subscriptions: hot pattern; placing the subscription on a shard");
                self.request_move(sub, shard)?;
            }
        }
        Ok(())
    }

    /// Asks for `sub` to be delivered by shard `to` (0: by this object). `false` when a move
    /// of it is already under way.
    fn request_move(&self, sub: &str, to: i64) -> Result<bool> {
        let sql = self.state.storage().sql();
        let row = sql.exec(
            "SELECT shard, target, forget FROM ev_placement WHERE sub = ?",
            &[sub.into()],
        )?;
        match row.rows().next() {
            None if to == 0 => Ok(true),
            None => {
                sql.exec(
                    "INSERT INTO ev_placement (sub, shard, epoch, target) VALUES (?, 0, 0, ?)",
                    &[sub.into(), to.into()],
                )?;
                Ok(true)
            }
            Some(r) => {
                let shard: i64 = r.get("shard")?;
                let target: Option<i64> = r.get("target")?;
                if target.is_some() {
                    return Ok(target == Some(to));
                }
                if shard != to {
                    sql.exec(
                        "UPDATE ev_placement SET target = ?, failures = 0, next_step = 0
                          WHERE sub = ?",
                        &[to.into(), sub.into()],
                    )?;
                }
                Ok(true)
            }
        }
    }

    /// Brings home the subscriptions of shards beyond `EVENTS_SHARDS` (once per instance).
    pub(super) fn fit_shard_count(&mut self) -> Result<()> {
        if self.fitted || self.is_shard() {
            return Ok(());
        }
        // Placed on a shard that is gone, or on the way to one: home instead.
        let moved = self.state.storage().sql().exec(
            "UPDATE ev_placement SET target = 0, failures = 0, next_step = 0
              WHERE (shard > ?1 AND target IS NULL) OR target > ?1",
            &[self.settings.shards.into()],
        )?;
        if moved.rows_written() > 0 {
            tracing::info!(
                shards = self.settings.shards,
                moved = moved.rows_written(),
                "Subscriptions: fewer shards; bringing subscriptions home"
            );
        }
        self.fitted = true;
        Ok(())
    }

    /// `POST /subscriptions/:id/shard` `{"shard": k}` → 202 with the placement.
    pub(super) fn move_http(&mut self, id: &str, req: &Request) -> Result<Response> {
        if self.status(id)?.is_none() {
            return Ok(not_found());
        }
        let max = self.settings.shards;
        let bound = u64::try_from(max).unwrap_or(0);
        let to = match Body::parse(req).and_then(|b| b.integer("shard", 0, bound)) {
            Ok(to) => i64::try_from(to).unwrap_or(0),
            Err(e) => return Ok(e.response()),
        };
        if !self.request_move(id, to)? {
            return Ok(crate::input::json_error(
                StatusCode::CONFLICT,
                &json!({ "error": "a move of this subscription is under way; try again when it is done" }),
            ));
        }
        self.rearm()?;
        Ok(Response::json(&json!({ "id": id, "shard": to }))?.with_status(StatusCode::ACCEPTED))
    }

    /// The shard delivering `sub` (0: this object; during a move, the shard it is leaving) and
    /// whether that shard holds its state.
    pub(super) fn placement(&self, sub: &str) -> Result<Option<(i64, bool)>> {
        let cursor = self.state.storage().sql().exec(
            "SELECT shard, carried FROM ev_placement WHERE sub = ?",
            &[sub.into()],
        )?;
        cursor
            .rows()
            .next()
            .map(|r| Ok((r.get("shard")?, r.get::<i64>("carried")? != 0)))
            .transpose()
    }

    /// The shards that hold the state of some subscription, each with the subscriptions (a
    /// subscription being moved is still its old shard's until that shard releases it).
    pub(super) fn carried_by_shard(&self) -> Result<BTreeMap<i64, Vec<String>>> {
        let cursor = self.state.storage().sql().exec(
            "SELECT sub, shard FROM ev_placement WHERE shard != 0 AND carried = 1 ORDER BY shard",
            &[],
        )?;
        let mut out: BTreeMap<i64, Vec<String>> = BTreeMap::new();
        for row in cursor.rows() {
            out.entry(row.get("shard")?)
                .or_default()
                .push(row.get("sub")?);
        }
        Ok(out)
    }

    /// Deletes `sub`'s placement, leaving a step to delete its shard's copy if it has one.
    pub(super) fn unplace(&self, sub: &str) -> Result<()> {
        let sql = self.state.storage().sql();
        sql.exec(
            "UPDATE ev_placement SET forget = shard, forget_epoch = epoch, next_step = 0
              WHERE sub = ? AND forget IS NULL AND shard != 0",
            &[sub.into()],
        )?;
        sql.exec(
            "UPDATE ev_placement SET shard = 0, target = NULL WHERE sub = ?",
            &[sub.into()],
        )?;
        sql.exec(
            "DELETE FROM ev_placement WHERE sub = ? AND forget IS NULL",
            &[sub.into()],
        )?;
        Ok(())
    }

    /// When the coordinator's next step is due, if it has one.
    pub(super) fn coordinator_due(&self) -> Result<Option<i64>> {
        let cursor = self.state.storage().sql().exec(
            "SELECT MIN(pl.next_step) AS next FROM ev_placement pl
              WHERE pl.forget IS NOT NULL OR pl.target IS NOT NULL
                 OR (pl.shard != 0 AND (pl.carried = 0 OR EXISTS
                      (SELECT 1 FROM ev_subscriptions s WHERE s.id = pl.sub AND s.pending > 0)))",
            &[],
        )?;
        cursor.one()?.get("next")
    }

    /// The alarm's coordination: deletes released copies, moves, then feeds the shards.
    pub(super) async fn coordinate(&mut self, keep_from: i64) -> Result<()> {
        if self.is_shard() {
            return Ok(());
        }
        self.forget_released().await?;
        self.run_moves().await?;
        self.feed_shards(keep_from).await
    }

    /// Records a failed step of `sub`'s placement, to be retried with backoff.
    fn step_failed(&self, sub: &str, what: &str, e: Error) -> Result<()> {
        let sql = self.state.storage().sql();
        let failures: i64 = sql
            .exec(
                "UPDATE ev_placement SET failures = failures + 1 WHERE sub = ? RETURNING failures",
                &[sub.into()],
            )?
            .one()?
            .get("failures")?;
        let at = self
            .state
            .now_ms()
            .saturating_add(self.settings.backoff_ms(failures));
        tracing::warn!(subscription = %sub, error = %e, failures, next = at, "Subscriptions: {what} failed");
        let why = format!("{what}: {}", e.public_message());
        sql.exec(
            "UPDATE ev_placement SET next_step = ?, last_error = ? WHERE sub = ?",
            &[at.into(), why.into(), sub.into()],
        )?;
        Ok(())
    }

    async fn forget_released(&mut self) -> Result<()> {
        let now = self.state.now_ms();
        let cursor = self.state.storage().sql().exec(
            "SELECT sub, forget, forget_epoch FROM ev_placement
              WHERE forget IS NOT NULL AND next_step <= ?",
            &[now.into()],
        )?;
        let mut due = Vec::with_capacity(cursor.len());
        for row in cursor.rows() {
            let (sub, shard, epoch): (String, i64, i64) = (
                row.get("sub")?,
                row.get("forget")?,
                row.get("forget_epoch")?,
            );
            due.push((sub, shard, epoch));
        }
        for (sub, shard, epoch) in due {
            match self.shard_stub(shard)?.forget(sub.clone(), epoch).await {
                Ok(()) => {
                    let sql = self.state.storage().sql();
                    sql.exec(
                        "UPDATE ev_placement SET forget = NULL, forget_epoch = NULL,
                           failures = 0, last_error = NULL, next_step = 0 WHERE sub = ?",
                        &[sub.as_str().into()],
                    )?;
                    // Home again with nothing left elsewhere, or deleted: no placement.
                    sql.exec(
                        "DELETE FROM ev_placement WHERE sub = ? AND ((shard = 0 AND target IS NULL)
                           OR NOT EXISTS (SELECT 1 FROM ev_subscriptions WHERE id = ?))",
                        &[sub.as_str().into(), sub.as_str().into()],
                    )?;
                }
                Err(e) => {
                    self.step_failed(&sub, "deleting a moved subscription's old copy", e.into())?
                }
            }
        }
        Ok(())
    }

    async fn run_moves(&mut self) -> Result<()> {
        let now = self.state.now_ms();
        let cursor = self.state.storage().sql().exec(
            "SELECT sub, shard, epoch, target FROM ev_placement
              WHERE target IS NOT NULL AND forget IS NULL AND next_step <= ?",
            &[now.into()],
        )?;
        let mut due = Vec::with_capacity(cursor.len());
        for row in cursor.rows() {
            let (sub, shard, epoch, target): (String, i64, i64, i64) = (
                row.get("sub")?,
                row.get("shard")?,
                row.get("epoch")?,
                row.get("target")?,
            );
            due.push((sub, shard, epoch, target));
        }
        for (sub, shard, epoch, target) in due {
            let forget = if shard == 0 {
                None
            } else {
                match self.shard_stub(shard)?.release(sub.clone(), epoch).await {
                    Ok(released) => {
                        if released.known {
                            self.take_back(&sub, released)?;
                        }
                        Some(shard)
                    }
                    Err(e) => {
                        self.step_failed(
                            &sub,
                            "releasing a subscription from its shard",
                            e.into(),
                        )?;
                        continue;
                    }
                }
            };
            let sql = self.state.storage().sql();
            sql.exec(
                "UPDATE ev_placement SET shard = ?, epoch = epoch + 1, carried = 0, target = NULL,
                   forget = ?, forget_epoch = ?, remote_pending = 0, failures = 0,
                   last_error = NULL, next_step = 0 WHERE sub = ?",
                &[
                    target.into(),
                    forget.into(),
                    forget.map(|_| epoch).into(),
                    sub.as_str().into(),
                ],
            )?;
            sql.exec(
                "DELETE FROM ev_placement WHERE sub = ? AND shard = 0 AND forget IS NULL",
                &[sub.as_str().into()],
            )?;
            tracing::info!(subscription = %sub, from = shard, to = target, "Subscriptions: subscription moved");
        }
        Ok(())
    }

    /// Merges a released subscription's queue, dead letters and state into this object's.
    fn take_back(&self, sub: &str, released: Released) -> Result<()> {
        let sql = self.state.storage().sql();
        self.insert_events(released.events.iter())?;
        for seq in &released.pending {
            sql.exec(
                "INSERT OR IGNORE INTO ev_pending (sub, seq) VALUES (?, ?)",
                &[sub.into(), (*seq).into()],
            )?;
        }
        let carry = released.carry;
        self.insert_dead(sub, &carry.dead)?;
        sql.exec(
            "UPDATE ev_subscriptions SET
               pending = (SELECT COUNT(*) FROM ev_pending WHERE sub = ?1),
               dead = (SELECT COUNT(*) FROM ev_dead WHERE sub = ?1),
               attempts = ?2, last_error = ?3, delivered = ?4, dropped = ?5,
               next_attempt = ?6 WHERE id = ?1",
            &[
                sub.into(),
                carry.attempts.into(),
                carry.last_error.into(),
                carry.delivered.into(),
                carry.dropped.into(),
                carry.next_attempt.into(),
            ],
        )?;
        // The queue may be longer than the shard's: keep "due iff pending" true.
        sql.exec(
            "UPDATE ev_subscriptions SET next_attempt = CASE WHEN pending = 0 THEN NULL
               ELSE COALESCE(next_attempt, ?) END WHERE id = ?",
            &[self.state.now_ms().into(), sub.into()],
        )?;
        Ok(())
    }

    async fn feed_shards(&mut self, keep_from: i64) -> Result<()> {
        let now = self.state.now_ms();
        let cursor = self.state.storage().sql().exec(
            "SELECT pl.sub, pl.shard, pl.epoch, pl.carried, pl.remote_pending,
                    s.pattern, s.url, s.created
               FROM ev_placement pl JOIN ev_subscriptions s ON s.id = pl.sub
              WHERE pl.shard != 0 AND pl.target IS NULL AND pl.forget IS NULL
                AND pl.next_step <= ? AND (pl.carried = 0 OR s.pending > 0)
              ORDER BY pl.shard, s.rowid",
            &[now.into()],
        )?;
        let mut placed = Vec::with_capacity(cursor.len());
        for row in cursor.rows() {
            placed.push(Placed {
                sub: row.get("sub")?,
                shard: row.get("shard")?,
                epoch: row.get("epoch")?,
                carried: row.get::<i64>("carried")? != 0,
                remote_pending: row.get("remote_pending")?,
                pattern: row.get("pattern")?,
                url: row.get("url")?,
                created: row.get("created")?,
            });
        }
        if placed.is_empty() {
            return Ok(());
        }
        let mut feeds: BTreeMap<i64, (Building, Vec<Sent>)> = BTreeMap::new();
        for p in placed {
            let (building, sent) = feeds.entry(p.shard).or_default();
            sent.push(self.add_to_feed(building, p)?);
        }
        let mut calls = Vec::with_capacity(feeds.len());
        let mut sents = Vec::with_capacity(feeds.len());
        for (shard, (building, sent)) in feeds {
            let stub = self.shard_stub(shard)?;
            let feed = Feed {
                events: building.events.into_values().collect(),
                subs: building.subs,
            };
            calls.push(async move { stub.feed(feed).await });
            sents.push(sent);
        }
        let answers = join_all(calls).await;
        for (sent, answer) in sents.into_iter().zip(answers) {
            match answer {
                Ok(fed) => self.fed(&sent, &fed, keep_from)?,
                Err(e) => {
                    let e = Error::from(e);
                    for s in &sent {
                        self.step_failed(
                            &s.sub,
                            "feeding a shard",
                            Error::msg(e.public_message()),
                        )?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Adds `p`'s next events (and its state, on the first feed of the placement) to `feed`.
    fn add_to_feed(&self, feed: &mut Building, p: Placed) -> Result<Sent> {
        let sql = self.state.storage().sql();
        let room = (self.settings.max_pending - p.remote_pending).clamp(0, FEED_BATCH);
        let queue = sql.exec(
            "SELECT p.seq, e.id, e.body FROM ev_pending p JOIN ev_events e ON e.seq = p.seq
              WHERE p.sub = ? ORDER BY p.seq LIMIT ?",
            &[p.sub.as_str().into(), room.into()],
        )?;
        let mut seqs = Vec::with_capacity(queue.len());
        for row in queue.rows() {
            let seq: i64 = row.get("seq")?;
            seqs.push(seq);
            feed.add_event(seq, row.get("id")?, row.get("body")?);
        }
        let carry = if p.carried {
            None
        } else {
            let carry = self.read_carry(&p.sub, |e| {
                feed.events.entry(e.seq).or_insert(e);
            })?;
            Some(carry)
        };
        let sent = Sent {
            sub: p.sub.clone(),
            carried: p.carried,
            last: seqs.last().copied(),
            count: i64::try_from(seqs.len()).unwrap_or(i64::MAX),
            full: room == 0,
        };
        feed.subs.push(SubFeed {
            id: p.sub,
            pattern: p.pattern,
            url: p.url,
            created: p.created,
            epoch: p.epoch,
            carry,
            seqs,
        });
        Ok(sent)
    }

    /// Drops what a shard took from this object's queues.
    fn fed(&self, sent: &[Sent], fed: &Fed, keep_from: i64) -> Result<()> {
        let sql = self.state.storage().sql();
        let now = self.state.now_ms();
        for s in sent {
            let mut gone = Vec::new();
            if let Some(last) = s.last {
                let rows = sql.exec(
                    "DELETE FROM ev_pending WHERE sub = ? AND seq <= ? RETURNING seq",
                    &[s.sub.as_str().into(), last.into()],
                )?;
                for row in rows.rows() {
                    gone.push(row.get::<i64>("seq")?);
                }
                sql.exec(
                    "UPDATE ev_subscriptions SET pending = MAX(pending - ?, 0) WHERE id = ?",
                    &[s.count.into(), s.sub.as_str().into()],
                )?;
            }
            if !s.carried {
                let rows = sql.exec(
                    "DELETE FROM ev_dead WHERE sub = ? RETURNING seq",
                    &[s.sub.as_str().into()],
                )?;
                for row in rows.rows() {
                    gone.push(row.get::<i64>("seq")?);
                }
                sql.exec(
                    "UPDATE ev_subscriptions SET dead = 0, attempts = 0, last_error = NULL
                      WHERE id = ?",
                    &[s.sub.as_str().into()],
                )?;
            }
            let remote = fed
                .pending
                .iter()
                .find(|(id, _)| *id == s.sub)
                .map_or(0, |(_, n)| *n);
            // A full shard queue is looked at again soon, not at once: it drains by delivery.
            let next = if s.full { now + ROOM_POLL_MS } else { 0 };
            sql.exec(
                "UPDATE ev_placement SET carried = 1, remote_pending = ?, failures = 0,
                   last_error = NULL, next_step = ? WHERE sub = ?",
                &[remote.into(), next.into(), s.sub.as_str().into()],
            )?;
            for seq in gone {
                self.forget_event(seq, keep_from)?;
            }
        }
        Ok(())
    }
}

/// A feed being put together: each event once, however many subscriptions name it.
#[derive(Default)]
struct Building {
    events: BTreeMap<i64, CarriedEvent>,
    subs: Vec<SubFeed>,
}

impl Building {
    fn add_event(&mut self, seq: i64, id: String, body: String) {
        self.events
            .entry(seq)
            .or_insert_with(|| CarriedEvent { seq, id, body });
    }
}

//! A delivery shard: a `Subscriptions` object named `<namespace>#<n>` that delivers the
//! subscriptions the namespace's coordinator placed on it (see `coordinator`).
//!
//! A shard takes no publishes and no HTTP requests: the namespace's object feeds it, by typed
//! calls ([`DeliveryShard`]), each placed subscription's events in sequence order, and the
//! shard delivers them with the same code, queues and dead-letter lists as the namespace's own
//! object. What it adds is bookkeeping of ownership, in `ev_owned (sub, epoch, fed, frozen)`:
//!
//! - **Feeding is exactly once.** `fed` is the highest sequence number the shard took for the
//!   subscription; a feed repeated after a lost answer or a crash of the sender skips what the
//!   shard already has, so no event is enqueued twice.
//! - **A move freezes first.** [`DeliveryShard::release`] freezes the subscription (the shard
//!   stops delivering it in the same turn) and hands back its queue, dead letters and delivery
//!   state; it answers the same when asked again. Only after the coordinator has durably taken
//!   that state does it ask [`DeliveryShard::forget`] to delete the frozen copy. An event is
//!   therefore delivered by one owner at a time, and an event the receiver acknowledged is
//!   gone from the queue before the queue moves: a move neither loses nor repeats one.
//! - **Epochs fence stale requests.** Each placement of a subscription on a shard has an
//!   epoch; a feed, release or forget for another epoch than the shard's copy is refused or
//!   ignored, so a late message from before a move cannot touch the copy of a later one.

use std::collections::{BTreeMap, HashSet};

use rookery::prelude::*;
use serde::{Deserialize, Serialize};

use super::Subscriptions;
use super::subscriptions::{DeadLetterText, SubscriptionStatus};

/// What separates a namespace from a shard number in a shard's object name.
pub const SHARD_MARK: char = '#';

/// Whether `name` is a delivery shard's object name.
pub fn is_shard_name(name: &str) -> bool {
    name.contains(SHARD_MARK)
}

/// The object name of `namespace`'s shard `n` (from 1).
pub fn shard_name(namespace: &str, n: i64) -> String {
    format!("{namespace}{SHARD_MARK}{n}")
}

/// A stored event as a feed or a release carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CarriedEvent {
    /// Its sequence number in the namespace.
    pub seq: i64,
    /// Its id (the `Idempotency-Key` of deliveries).
    pub id: String,
    /// The stamped event's JSON text, as delivered.
    pub body: String,
}

/// A dead letter as it moves with its subscription.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CarriedDead {
    /// The event's sequence number.
    pub seq: i64,
    /// Attempts made.
    pub attempts: i64,
    /// Why the last one failed.
    pub last_error: Option<String>,
    /// When it was dead-lettered.
    pub dead_at: i64,
}

/// A subscription's delivery state, as it moves from one owner to the next.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Carry {
    /// Failed attempts at the head event.
    pub attempts: i64,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// When the head is tried next.
    pub next_attempt: Option<i64>,
    /// Events acknowledged so far.
    pub delivered: i64,
    /// Dead letters dropped from a full list so far.
    pub dropped: i64,
    /// The dead-letter list (its events travel with the feed or release).
    pub dead: Vec<CarriedDead>,
}

/// One subscription's part of a feed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubFeed {
    /// The subscription's id.
    pub id: String,
    /// Its pattern.
    pub pattern: String,
    /// Its URL.
    pub url: String,
    /// When it was created.
    pub created: i64,
    /// The placement's epoch.
    pub epoch: i64,
    /// Its delivery state, sent with the first feed of an epoch.
    pub carry: Option<Carry>,
    /// The sequence numbers to enqueue, ascending.
    pub seqs: Vec<i64>,
}

/// Events for some of a shard's subscriptions.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Feed {
    /// Every event the subscriptions' parts name, once each.
    pub events: Vec<CarriedEvent>,
    /// The subscriptions' parts.
    pub subs: Vec<SubFeed>,
}

/// A feed's answer: each subscription's queue length on the shard after it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fed {
    /// `(subscription, pending)`.
    pub pending: Vec<(String, i64)>,
}

/// A released subscription's state, queue and dead letters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Released {
    /// Whether the shard had the subscription at that epoch (if not, it never took a feed
    /// for it and there is nothing to take over).
    pub known: bool,
    /// Its delivery state.
    pub carry: Carry,
    /// The sequence numbers in its queue, ascending.
    pub pending: Vec<i64>,
    /// The events its queue and dead letters refer to.
    pub events: Vec<CarriedEvent>,
}

/// A delivery shard, as the namespace's object calls it.
#[rookery::service]
pub trait DeliveryShard {
    /// Enqueues events for subscriptions placed here, adopting a subscription on its first
    /// feed of an epoch; what was already fed is skipped.
    async fn feed(&mut self, feed: Feed) -> rookery::Result<Fed>;
    /// Stops delivering `sub` and answers its state, queue and dead letters (the same when
    /// asked again).
    async fn release(&mut self, sub: String, epoch: i64) -> rookery::Result<Released>;
    /// Deletes the copy of `sub` placed here at `epoch`, with its queue and dead letters.
    async fn forget(&mut self, sub: String, epoch: i64) -> rookery::Result<()>;
    /// The status of every subscription delivered here.
    async fn statuses(&mut self) -> rookery::Result<Vec<SubscriptionStatus>>;
    /// Dead letters of `sub` (or every subscription), at most `limit`.
    async fn dead_letters(
        &mut self,
        sub: Option<String>,
        limit: i64,
    ) -> rookery::Result<Vec<DeadLetterText>>;
    /// Moves dead letters of `sub` (or every subscription) back into their queues →
    /// `(replayed, remaining)`.
    async fn replay(&mut self, sub: Option<String>) -> rookery::Result<(i64, i64)>;
}

/// The shard's record of one subscription placed on it.
pub(super) struct Owned {
    epoch: i64,
    fed: i64,
    /// Released: no longer delivered here.
    pub(super) frozen: bool,
}

impl Subscriptions {
    /// Whether this object is a delivery shard rather than a namespace's object.
    pub(super) fn is_shard(&self) -> bool {
        self.shard
    }

    fn refuse_unless_shard(&self) -> Result<()> {
        if self.is_shard() {
            Ok(())
        } else {
            Err(Error::BadRequest(
                "only a delivery shard (<namespace>#<n>) takes shard calls".into(),
            ))
        }
    }

    pub(super) fn owned(&self, sub: &str) -> Result<Option<Owned>> {
        let cursor = self.state.storage().sql().exec(
            "SELECT epoch, fed, frozen FROM ev_owned WHERE sub = ?",
            &[sub.into()],
        )?;
        let Some(row) = cursor.rows().next() else {
            return Ok(None);
        };
        Ok(Some(Owned {
            epoch: row.get("epoch")?,
            fed: row.get("fed")?,
            frozen: row.get::<i64>("frozen")? != 0,
        }))
    }

    /// Takes a subscription placed here for the first time at `part.epoch`.
    fn adopt(&self, part: &SubFeed) -> Result<()> {
        let sql = self.state.storage().sql();
        let carry = part.carry.clone().unwrap_or_default();
        let dead = i64::try_from(carry.dead.len()).unwrap_or(i64::MAX);
        sql.exec(
            "INSERT INTO ev_subscriptions (id, pattern, url, created, attempts, last_error,
               next_attempt, delivered, dead, dropped) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            &[
                part.id.as_str().into(),
                part.pattern.as_str().into(),
                part.url.as_str().into(),
                part.created.into(),
                carry.attempts.into(),
                carry.last_error.into(),
                carry.next_attempt.into(),
                carry.delivered.into(),
                dead.into(),
                carry.dropped.into(),
            ],
        )?;
        self.insert_dead(&part.id, &carry.dead)?;
        sql.exec(
            "INSERT INTO ev_owned (sub, epoch, fed, frozen) VALUES (?, ?, 0, 0)",
            &[part.id.as_str().into(), part.epoch.into()],
        )?;
        Ok(())
    }

    async fn shard_feed(&mut self, feed: Feed) -> Result<Fed> {
        self.refuse_unless_shard()?;
        self.ensure_schema()?;
        let now = self.state.now_ms();
        let sql = self.state.storage().sql();
        let mut needed: HashSet<i64> = HashSet::new();
        let mut answer = Fed::default();
        for part in &feed.subs {
            let owned = match self.owned(&part.id)? {
                None => {
                    self.adopt(part)?;
                    needed.extend(part.carry.iter().flat_map(|c| c.dead.iter().map(|d| d.seq)));
                    Owned {
                        epoch: part.epoch,
                        fed: 0,
                        frozen: false,
                    }
                }
                Some(o) => o,
            };
            if owned.epoch != part.epoch || owned.frozen {
                return Err(Error::BadRequest(format!(
                    "subscription {} is placed here at epoch {}{}, not fed at epoch {}",
                    part.id,
                    owned.epoch,
                    if owned.frozen { " (released)" } else { "" },
                    part.epoch
                )));
            }
            let mut added = 0_i64;
            let mut fed = owned.fed;
            for &seq in part.seqs.iter().filter(|&&s| s > owned.fed) {
                sql.exec(
                    "INSERT OR IGNORE INTO ev_pending (sub, seq) VALUES (?, ?)",
                    &[part.id.as_str().into(), seq.into()],
                )?;
                needed.insert(seq);
                added += 1;
                fed = fed.max(seq);
            }
            if added > 0 {
                sql.exec(
                    "UPDATE ev_subscriptions SET pending = pending + ?,
                       next_attempt = COALESCE(next_attempt, ?) WHERE id = ?",
                    &[added.into(), now.into(), part.id.as_str().into()],
                )?;
                sql.exec(
                    "UPDATE ev_owned SET fed = ? WHERE sub = ?",
                    &[fed.into(), part.id.as_str().into()],
                )?;
            }
            let pending: i64 = sql
                .exec(
                    "SELECT pending FROM ev_subscriptions WHERE id = ?",
                    &[part.id.as_str().into()],
                )?
                .one()?
                .get("pending")?;
            answer.pending.push((part.id.clone(), pending));
        }
        self.insert_events(feed.events.iter().filter(|e| needed.contains(&e.seq)))?;
        self.rearm()?;
        Ok(answer)
    }

    async fn shard_release(&mut self, sub: String, epoch: i64) -> Result<Released> {
        self.refuse_unless_shard()?;
        self.ensure_schema()?;
        match self.owned(&sub)? {
            Some(o) if o.epoch == epoch => {}
            _ => return Ok(Released::default()),
        }
        let sql = self.state.storage().sql();
        sql.exec(
            "UPDATE ev_owned SET frozen = 1 WHERE sub = ?",
            &[sub.as_str().into()],
        )?;
        let mut events = BTreeMap::new();
        let carry = self.read_carry(&sub, |event| {
            events.insert(event.seq, event);
        })?;
        let mut pending = Vec::new();
        let queue = sql.exec(
            "SELECT p.seq, e.id, e.body FROM ev_pending p JOIN ev_events e ON e.seq = p.seq
              WHERE p.sub = ? ORDER BY p.seq",
            &[sub.as_str().into()],
        )?;
        for row in queue.rows() {
            let event = carried_event(&row)?;
            pending.push(event.seq);
            events.insert(event.seq, event);
        }
        self.rearm()?;
        Ok(Released {
            known: true,
            carry,
            pending,
            events: events.into_values().collect(),
        })
    }

    /// Stores carried events this object does not have yet.
    pub(super) fn insert_events<'a>(
        &self,
        events: impl Iterator<Item = &'a CarriedEvent>,
    ) -> Result<()> {
        let sql = self.state.storage().sql();
        for e in events {
            sql.exec(
                "INSERT OR IGNORE INTO ev_events (seq, id, body) VALUES (?, ?, ?)",
                &[e.seq.into(), e.id.as_str().into(), e.body.as_str().into()],
            )?;
        }
        Ok(())
    }

    /// Adds carried dead letters to `sub`'s list (their events must be stored too).
    pub(super) fn insert_dead(&self, sub: &str, dead: &[CarriedDead]) -> Result<()> {
        let sql = self.state.storage().sql();
        for d in dead {
            sql.exec(
                "INSERT OR IGNORE INTO ev_dead (sub, seq, attempts, last_error, dead_at)
                 VALUES (?, ?, ?, ?, ?)",
                &[
                    sub.into(),
                    d.seq.into(),
                    d.attempts.into(),
                    d.last_error.clone().into(),
                    d.dead_at.into(),
                ],
            )?;
        }
        Ok(())
    }

    /// `sub`'s delivery state and dead letters, handing each dead letter's event to `event`.
    pub(super) fn read_carry(
        &self,
        sub: &str,
        mut event: impl FnMut(CarriedEvent),
    ) -> Result<Carry> {
        let sql = self.state.storage().sql();
        let cursor = sql.exec(
            "SELECT attempts, last_error, next_attempt, delivered, dropped
               FROM ev_subscriptions WHERE id = ?",
            &[sub.into()],
        )?;
        let row = cursor.one()?;
        let mut carry = Carry {
            attempts: row.get("attempts")?,
            last_error: row.get("last_error")?,
            next_attempt: row.get("next_attempt")?,
            delivered: row.get("delivered")?,
            dropped: row.get("dropped")?,
            dead: Vec::new(),
        };
        let dead = sql.exec(
            "SELECT d.seq, d.attempts, d.last_error, d.dead_at, e.id, e.body
               FROM ev_dead d JOIN ev_events e ON e.seq = d.seq
              WHERE d.sub = ? ORDER BY d.seq",
            &[sub.into()],
        )?;
        for row in dead.rows() {
            carry.dead.push(CarriedDead {
                seq: row.get("seq")?,
                attempts: row.get("attempts")?,
                last_error: row.get("last_error")?,
                dead_at: row.get("dead_at")?,
            });
            event(carried_event(&row)?);
        }
        Ok(carry)
    }

    async fn shard_forget(&mut self, sub: String, epoch: i64) -> Result<()> {
        self.refuse_unless_shard()?;
        self.ensure_schema()?;
        match self.owned(&sub)? {
            Some(o) if o.epoch == epoch => {}
            // Another epoch's copy, or none: nothing of this placement is left.
            _ => return Ok(()),
        }
        self.state
            .storage()
            .sql()
            .exec("DELETE FROM ev_owned WHERE sub = ?", &[sub.as_str().into()])?;
        self.drop_subscription(&sub)?;
        self.rearm()
    }
}

fn carried_event(row: &rookery::SqlRow<'_>) -> Result<CarriedEvent> {
    Ok(CarriedEvent {
        seq: row.get("seq")?,
        id: row.get("id")?,
        body: row.get("body")?,
    })
}

impl DeliveryShard for Subscriptions {
    async fn feed(&mut self, feed: Feed) -> Result<Fed> {
        self.shard_feed(feed).await
    }

    async fn release(&mut self, sub: String, epoch: i64) -> Result<Released> {
        self.shard_release(sub, epoch).await
    }

    async fn forget(&mut self, sub: String, epoch: i64) -> Result<()> {
        self.shard_forget(sub, epoch).await
    }

    async fn statuses(&mut self) -> Result<Vec<SubscriptionStatus>> {
        self.refuse_unless_shard()?;
        self.ensure_schema()?;
        self.local_statuses()
    }

    async fn dead_letters(
        &mut self,
        sub: Option<String>,
        limit: i64,
    ) -> Result<Vec<DeadLetterText>> {
        self.refuse_unless_shard()?;
        self.ensure_schema()?;
        self.local_dead_letters(sub, limit)
    }

    async fn replay(&mut self, sub: Option<String>) -> Result<(i64, i64)> {
        self.refuse_unless_shard()?;
        self.ensure_schema()?;
        let counts = self.replay_local(sub.as_deref())?;
        self.rearm()?;
        Ok(counts)
    }
}

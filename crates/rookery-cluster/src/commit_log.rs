//! [`CommitLog`] on PostgreSQL: ownership at activation, fenced group commits, and the handover
//! of an object's database to whichever node opens it next.
//!
//! **Activation** claims the object: its row in `rookery_objects` takes this node's session
//! and a raised epoch, if the object is unowned, owned by this session, or owned by a session
//! whose lease ran out. Otherwise the object stays where it is and the activation is refused.
//! The node's own copy of the database is kept only when it is known to equal the cluster's:
//! this process saw every commit of the object acknowledged and the cluster's last commit is
//! the last one it saw. Otherwise the database is rebuilt from the snapshot and the commits.
//!
//! **Commits** queue to one task, which appends each batch in one statement. The statement
//! inserts only the commits whose epoch is their object's current one, while this node's
//! session is the owner and its lease holds, and it locks those owner rows until it commits.
//! A takeover (which updates the row) therefore waits for an append in flight to finish, or
//! makes it fail; it can never slip in between the check and the insert. A node paused past its
//! lease finds, when it wakes, that every append it sends is refused.

use std::collections::HashSet;
use std::sync::Arc;

use dashmap::DashMap;
use deadpool_postgres::Pool;
use rookery::{CommitLog, CommitRecord, Error, Grant, ObjectId};
use tokio::sync::{mpsc, oneshot};

use crate::error::ClusterError;
use crate::image::{self, Position};
use crate::membership::{Membership, SessionLease};
use crate::placement::KnownOwners;
use crate::shard::{Shard, shard_of};

/// Commits waiting for the append task at most; beyond it, commits fail at once.
///
/// One append statement in flight per node, not several: with four lanes (by object) the
/// batches shrank, PostgreSQL committed more, smaller transactions at the same rate its disk
/// syncs allow, and counter-many on one node fell from 6-7k to 3.1k req/s on this machine
/// (docs/BENCHMARKS.md, "Issue 17").
const QUEUE: usize = 8192;
/// Commits one statement carries at most.
const MAX_BATCH: usize = 512;
/// Commit rows after a snapshot that make an activation fold them into a new one.
const COMPACT_AFTER: usize = 64;
/// Commits of one object appended by this node between background compactions.
const COMPACT_EVERY: u32 = 1000;
/// Objects this node keeps a [`Mark`] for at most. Past it the marks are dropped: objects
/// activated later rebuild their databases from the cluster once (safe, only slower).
const MAX_MARKS: usize = 1_000_000;

/// An object, by its id's bytes: ids carry their class's key, so they do not collide across
/// classes, and looking one up allocates nothing.
type Key = [u8; 32];

/// What this process knows of an object's commits in the cluster.
#[derive(Debug, Clone, Copy)]
struct Mark {
    /// The epoch of the activation here.
    epoch: i64,
    /// The cluster's last commit of the object, as far as this node knows.
    at: Option<Position>,
    /// Appends sent and not answered.
    pending: u32,
    /// Every append of the object was accepted (its local database matches the cluster's).
    clean: bool,
    /// Appends accepted since the last compaction.
    since_compaction: u32,
}

/// A commit on its way to PostgreSQL.
struct Pending {
    class: Arc<str>,
    object: ObjectId,
    epoch: i64,
    seq: i64,
    db_pages: i32,
    count: i32,
    pages: Vec<u8>,
    /// The commit's change to the alarm (see [`CommitRecord::alarm`]).
    alarm: Option<Option<i64>>,
    ack: oneshot::Sender<rookery::Result<()>>,
}

/// The cluster's commit log (see the module docs).
pub(crate) struct PgCommitLog {
    /// One per database of the cluster, in the order of its shards.
    shards: Vec<ShardLog>,
    handle: tokio::runtime::Handle,
    marks: Arc<DashMap<Key, Mark>>,
    owners: Arc<KnownOwners>,
}

/// The commit log's part in one database: where its objects are claimed and their commits go.
struct ShardLog {
    pool: Pool,
    membership: Arc<Membership>,
    queue: mpsc::Sender<Pending>,
}

impl PgCommitLog {
    /// The log over `shards`, with an append task per shard spawned on the current runtime.
    pub(crate) fn start(shards: &[Shard], owners: Arc<KnownOwners>) -> Arc<Self> {
        let marks = Arc::new(DashMap::new());
        let shards = shards
            .iter()
            .map(|shard| {
                let (queue, rx) = mpsc::channel(QUEUE);
                tokio::spawn(append_task(
                    shard.pool.clone(),
                    shard.membership.clone(),
                    marks.clone(),
                    rx,
                ));
                ShardLog {
                    pool: shard.pool.clone(),
                    membership: shard.membership.clone(),
                    queue,
                }
            })
            .collect();
        Arc::new(Self {
            shards,
            handle: tokio::runtime::Handle::current(),
            marks,
            owners,
        })
    }

    /// The shard that holds `object`.
    fn shard(&self, object: &ObjectId) -> &ShardLog {
        &self.shards[shard_of(object, self.shards.len())]
    }

    async fn claim_and_load(&self, class: &str, object: &ObjectId) -> Result<Grant, Error> {
        let shard = self.shard(object);
        let hex = object.to_hex();
        let key: Key = *object.as_bytes();
        let mut client = shard.pool.get().await.map_err(ClusterError::from)?;
        let generation = shard.membership.generation();
        let epoch = match claim(&client, &shard.membership, class, &hex).await {
            Ok(epoch) => epoch,
            Err(Error::Elsewhere(address)) => {
                self.owners.learn(object, address.clone());
                return Err(Error::Elsewhere(address));
            }
            Err(e) => return Err(e),
        };
        self.owners.forget(object);
        let last = image::last_position(&client, class, &hex).await?;
        let current = self
            .marks
            .get(&key)
            .is_some_and(|m| m.clean && m.pending == 0 && m.at == last);
        let image = if current {
            None
        } else {
            let image = image::load(&mut client, class, &hex).await?;
            if image.commits >= COMPACT_AFTER {
                let folded = image::Image {
                    bytes: image.bytes.clone(),
                    ..image
                };
                let (pool, class, hex) = (shard.pool.clone(), class.to_string(), hex.clone());
                tokio::spawn(async move {
                    if let Err(e) = compact_with(&pool, &class, &hex, Some(folded)).await {
                        tracing::warn!(class, object = %hex, error = %e, "compacting an object's commits failed");
                    }
                });
            }
            Some(image.bytes)
        };
        if self.marks.len() >= MAX_MARKS {
            // Only marks without appends in flight go: those still count for their objects.
            self.marks.retain(|_, mark| mark.pending > 0);
        }
        self.marks.insert(
            key,
            Mark {
                epoch,
                at: last,
                pending: 0,
                clean: true,
                since_compaction: 0,
            },
        );
        Ok(Grant {
            epoch: epoch as u64,
            image,
            lease: Some(Arc::new(SessionLease {
                membership: shard.membership.clone(),
                generation,
            })),
        })
    }
}

impl CommitLog for PgCommitLog {
    fn activate(&self, class: &str, object: &ObjectId) -> rookery::Result<Grant> {
        // Activations run on the runtime's blocking pool, where blocking on it is allowed.
        let lease = self.shard(object).membership.lease();
        self.handle.block_on(async {
            tokio::time::timeout(lease, self.claim_and_load(class, object))
                .await
                .unwrap_or_else(|_| {
                    Err(Error::StorageUnavailable(
                        "the cluster database did not answer the activation in time".into(),
                    ))
                })
        })
    }

    fn wants_pages(&self) -> bool {
        true
    }

    fn append(&self, record: &CommitRecord<'_>) -> Option<oneshot::Receiver<rookery::Result<()>>> {
        let (ack, rx) = oneshot::channel();
        let key: Key = *record.object.as_bytes();
        let (Ok(seq), Ok(db_pages), Ok(count)) = (
            i64::try_from(record.seq),
            i32::try_from(record.db_pages),
            i32::try_from(record.pages.count()),
        ) else {
            let _ = ack.send(Err(Error::msg("a commit too large for the cluster")));
            return Some(rx);
        };
        if let Some(mut mark) = self.marks.get_mut(&key) {
            mark.pending += 1;
        }
        let pending = Pending {
            class: record.class.clone(),
            object: record.object.clone(),
            epoch: record.epoch as i64,
            seq,
            db_pages,
            count,
            pages: record.pages.bytes().to_vec(),
            alarm: record.alarm,
            ack,
        };
        if let Err(refused) = self.shard(record.object).queue.try_send(pending) {
            let pending = match refused {
                mpsc::error::TrySendError::Full(p) | mpsc::error::TrySendError::Closed(p) => p,
            };
            settle(&self.marks, pending.object.as_bytes(), None);
            let _ = pending.ack.send(Err(Error::StorageUnavailable(
                "the cluster's commit queue is full".into(),
            )));
        }
        Some(rx)
    }
}

/// Claims `class`/`object` for this node's session under a new epoch, or says who owns it.
async fn claim(
    client: &deadpool_postgres::Client,
    membership: &Membership,
    class: &str,
    object: &str,
) -> Result<i64, Error> {
    let session = membership.session();
    let row = client
        .query_opt(
            "INSERT INTO rookery_objects AS o (class, object, node_id, session, epoch)
             SELECT $1, $2, $3, $4, 1
             WHERE EXISTS (SELECT 1 FROM rookery_nodes WHERE session = $4 AND lease_until > now())
             ON CONFLICT (class, object) DO UPDATE
                 SET node_id = EXCLUDED.node_id, session = EXCLUDED.session, epoch = o.epoch + 1
                 WHERE o.session = EXCLUDED.session
                    OR NOT EXISTS (SELECT 1 FROM rookery_nodes n
                                   WHERE n.session = o.session AND n.lease_until > now())
             RETURNING epoch",
            &[&class, &object, &membership.node_id, &&*session],
        )
        .await
        .map_err(ClusterError::from)?;
    if let Some(row) = row {
        return Ok(row.get(0));
    }
    if !membership.holds() {
        return Err(Error::StorageUnavailable(
            "this node's cluster lease has run out; it is joining again".into(),
        ));
    }
    let owner = client
        .query_opt(
            "SELECT o.node_id, n.advertise FROM rookery_objects o
             LEFT JOIN rookery_nodes n ON n.session = o.session
             WHERE o.class = $1 AND o.object = $2",
            &[&class, &object],
        )
        .await
        .map_err(ClusterError::from)?;
    Err(
        match owner.and_then(|row| row.get::<_, Option<String>>(1)) {
            Some(address) => Error::Elsewhere(address),
            // Its owner's row went as we looked: the next try claims it.
            None => Error::Fenced("the object changed owner; retry".into()),
        },
    )
}

/// Folds the commits of an object into a new snapshot.
async fn compact_with(
    pool: &Pool,
    class: &str,
    object: &str,
    image: Option<image::Image>,
) -> Result<(), ClusterError> {
    let mut client = pool.get().await?;
    let image = match image {
        Some(image) => image,
        None => image::load(&mut client, class, object).await?,
    };
    image::compact(&mut client, class, object, &image).await
}

/// Records the answer to one append of `key`: accepted at `at`, or not.
fn settle(marks: &DashMap<Key, Mark>, key: &Key, at: Option<(i64, i64)>) -> bool {
    let Some(mut mark) = marks.get_mut(key) else {
        return false;
    };
    mark.pending = mark.pending.saturating_sub(1);
    match at {
        Some((epoch, seq)) if epoch == mark.epoch => {
            mark.at = Some((epoch, seq));
            mark.since_compaction += 1;
            if mark.since_compaction >= COMPACT_EVERY {
                mark.since_compaction = 0;
                return true;
            }
        }
        Some(_) => {}
        None => mark.clean = false,
    }
    false
}

/// Appends queued commits, a batch per statement, and answers each.
async fn append_task(
    pool: Pool,
    membership: Arc<Membership>,
    marks: Arc<DashMap<Key, Mark>>,
    mut rx: mpsc::Receiver<Pending>,
) {
    let mut batch: Vec<Pending> = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        // An append that takes longer than a lease is given up (it may still commit: its
        // callers hear an error, never a success, and the object starts over).
        let outcome =
            tokio::time::timeout(membership.lease(), append_batch(&pool, &membership, &batch))
                .await
                .unwrap_or_else(|_| {
                    Err(ClusterError::Pool(
                        "the cluster database did not answer the append in time".into(),
                    ))
                });
        for (i, p) in batch.drain(..).enumerate() {
            let key = p.object.as_bytes();
            let result = match &outcome {
                Ok(accepted) if accepted.get(i).copied().unwrap_or(false) => {
                    if settle(&marks, key, Some((p.epoch, p.seq))) {
                        let (pool, class, object) =
                            (pool.clone(), p.class.clone(), p.object.to_hex());
                        tokio::spawn(async move {
                            if let Err(e) = compact_with(&pool, &class, &object, None).await {
                                tracing::warn!(class = %class, object, error = %e, "compacting an object's commits failed");
                            }
                        });
                    }
                    Ok(())
                }
                Ok(_) => {
                    settle(&marks, key, None);
                    Err(Error::Fenced(
                        "another node owns the object now, or this node's lease ran out".into(),
                    ))
                }
                Err(e) => {
                    settle(&marks, key, None);
                    Err(Error::StorageUnavailable(format!(
                        "the cluster database did not take the commit: {e}"
                    )))
                }
            };
            let _ = p.ack.send(result);
        }
    }
}

/// Appends `batch` in one statement; returns, for each commit in order, whether it was
/// accepted.
async fn append_batch(
    pool: &Pool,
    membership: &Membership,
    batch: &[Pending],
) -> Result<Vec<bool>, ClusterError> {
    let client = pool.get().await?;
    let session = membership.session();
    let classes: Vec<&str> = batch.iter().map(|p| &*p.class).collect();
    let objects: Vec<String> = batch.iter().map(|p| p.object.to_hex()).collect();
    let epochs: Vec<i64> = batch.iter().map(|p| p.epoch).collect();
    let seqs: Vec<i64> = batch.iter().map(|p| p.seq).collect();
    let db_pages: Vec<i32> = batch.iter().map(|p| p.db_pages).collect();
    let counts: Vec<i32> = batch.iter().map(|p| p.count).collect();
    let pages: Vec<&[u8]> = batch.iter().map(|p| p.pages.as_slice()).collect();
    // Alarm changes: 0 none, 1 set, 2 deleted; only an object's last change in the batch
    // counts (one statement may not change a row twice).
    let mut alarm_ops = vec![0i32; batch.len()];
    let mut alarm_ms = vec![0i64; batch.len()];
    let mut changed: HashSet<&Key> = HashSet::new();
    for (i, p) in batch.iter().enumerate().rev() {
        if let Some(change) = p.alarm
            && changed.insert(p.object.as_bytes())
        {
            alarm_ops[i] = if change.is_some() { 1 } else { 2 };
            alarm_ms[i] = change.unwrap_or(0);
        }
    }
    let statement = client
        .prepare_cached(
            "WITH batch AS (
                 SELECT * FROM unnest($1::text[], $2::text[], $3::int8[], $4::int8[],
                                      $5::int4[], $6::int4[], $7::bytea[], $9::int4[], $10::int8[])
                     WITH ORDINALITY
                     AS b(class, object, epoch, seq, db_pages, page_count, pages, alarm_op, alarm_ms, i)
             ), owned AS (
                 SELECT o.class, o.object, o.epoch FROM rookery_objects o
                 WHERE (o.class, o.object) IN (SELECT class, object FROM batch)
                   AND o.session = $8
                   AND EXISTS (SELECT 1 FROM rookery_nodes n
                               WHERE n.session = $8 AND n.lease_until > now())
                 FOR SHARE OF o
             ), inserted AS (
                 INSERT INTO rookery_commits
                     (class, object, epoch, seq, db_pages, page_count, pages)
                 SELECT b.class, b.object, b.epoch, b.seq, b.db_pages, b.page_count, b.pages
                 FROM batch b JOIN owned o
                     ON o.class = b.class AND o.object = b.object AND o.epoch = b.epoch
                 ON CONFLICT DO NOTHING
                 RETURNING class, object, epoch, seq
             ), changes AS (
                 SELECT b.class, b.object, b.alarm_op, b.alarm_ms FROM batch b JOIN inserted i
                     ON i.class = b.class AND i.object = b.object
                    AND i.epoch = b.epoch AND i.seq = b.seq
                 WHERE b.alarm_op <> 0
             ), alarms_set AS (
                 INSERT INTO rookery_alarms AS a (class, object, due_ms)
                 SELECT class, object, alarm_ms FROM changes WHERE alarm_op = 1
                 ON CONFLICT (class, object) DO UPDATE SET due_ms = EXCLUDED.due_ms
             ), alarms_deleted AS (
                 DELETE FROM rookery_alarms a USING changes c
                 WHERE c.alarm_op = 2 AND a.class = c.class AND a.object = c.object
             )
             SELECT b.i FROM batch b JOIN inserted n
                 ON n.class = b.class AND n.object = b.object
                AND n.epoch = b.epoch AND n.seq = b.seq",
        )
        .await?;
    let rows = client
        .query(
            &statement,
            &[
                &classes, &objects, &epochs, &seqs, &db_pages, &counts, &pages, &&*session,
                &alarm_ops, &alarm_ms,
            ],
        )
        .await?;
    let mut accepted = vec![false; batch.len()];
    for row in rows {
        // Ordinalities count from 1.
        let at = usize::try_from(row.get::<_, i64>(0) - 1)
            .map_err(|_| ClusterError::Data("an append answer out of its batch".into()))?;
        if let Some(slot) = accepted.get_mut(at) {
            *slot = true;
        }
    }
    Ok(accepted)
}

//! Rookery's cluster mode: several nodes over one PostgreSQL database, each object owned by at
//! most one node at a time, every commit fenced by its owner's epoch.
//!
//! PostgreSQL holds the truth; a node's SQLite files are a cache of it. A node joins with
//! [`Cluster::connect`] and hands the runtime its [`CommitLog`] and [`ClassKeys`]:
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use rookery_cluster::{Cluster, ClusterConfig, DEFAULT_LEASE};
//! let cluster = Cluster::connect(ClusterConfig {
//!     database_url: "postgres://postgres@127.0.0.1:5432/postgres".into(),
//!     node_id: "a".into(),
//!     advertise: "http://127.0.0.1:8787".into(),
//!     lease: DEFAULT_LEASE,
//!     shards: Vec::new(),
//! })
//! .await?;
//! let runtime = rookery::Runtime::builder("/var/lib/rookery")
//!     .commit_log(cluster.commit_log())
//!     .class_keys(cluster.class_keys());
//! # Ok(()) }
//! ```
//!
//! See `commit_log.rs` for ownership and fencing, `membership.rs` for leases, `image.rs` for
//! how an object's database is rebuilt, and `schema.rs` for the tables.

mod alarms;
mod class_keys;
mod commit_log;
mod config;
mod error;
mod image;
mod membership;
mod placement;
mod schema;
mod shard;

use std::sync::Arc;

use deadpool_postgres::Pool;
use rookery::{ClassKeys, CommitLog, Placement};
use tokio::task::JoinHandle;

pub use alarms::OWN_SLACK_MS;
pub use config::{ClusterConfig, DEFAULT_LEASE};
pub use error::ClusterError;
pub use schema::SCHEMA_VERSION;

use class_keys::PgClassKeys;
use commit_log::PgCommitLog;
use membership::Membership;
use placement::KnownOwners;
use shard::Shard;

/// A node's membership of a cluster.
pub struct Cluster {
    /// The cluster's databases; the first is the home (see `shard.rs`).
    shards: Vec<Shard>,
    log: Arc<PgCommitLog>,
    keys: Arc<PgClassKeys>,
    owners: Arc<KnownOwners>,
    forward_token: String,
    /// Lease renewals, one task per shard.
    heartbeats: std::sync::Mutex<Vec<JoinHandle<()>>>,
    /// Alarm sweeps, one task per shard.
    alarm_sweeps: std::sync::Mutex<Vec<JoinHandle<()>>>,
    /// The runtime over this cluster, while attached: its sockets are closed when a lease is
    /// lost.
    runtime: Arc<std::sync::Mutex<Option<rookery::Runtime>>>,
}

/// A node as the cluster lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// Its node id.
    pub node_id: String,
    /// Where other nodes reach it.
    pub advertise: String,
    /// Whether its lease holds now.
    pub live: bool,
    /// Objects its current session owns.
    pub objects: i64,
}

impl Cluster {
    /// Joins the cluster: creates or checks the schema, registers this node under a new
    /// session, and starts renewing its lease.
    pub async fn connect(config: ClusterConfig) -> Result<Self, ClusterError> {
        config.validate()?;
        let mut shards = Vec::new();
        for url in config.databases() {
            shards.push(Shard::open(url, &config).await?);
        }
        let home = shards[0].pool.get().await?;
        let keys = Arc::new(PgClassKeys::load(&home, &config.database_url).await?);
        let forward_token = hex::encode(schema::secret(&home, "forward").await?);
        drop(home);
        let runtime = Arc::new(std::sync::Mutex::new(None));
        let heartbeats = shards
            .iter()
            .map(|shard| {
                tokio::spawn(renew(
                    shard.pool.clone(),
                    shard.membership.clone(),
                    runtime.clone(),
                ))
            })
            .collect();
        let owners = Arc::new(KnownOwners::new(config.lease));
        let log = PgCommitLog::start(&shards, owners.clone());
        Ok(Self {
            shards,
            log,
            keys,
            owners,
            forward_token,
            heartbeats: std::sync::Mutex::new(heartbeats),
            alarm_sweeps: std::sync::Mutex::new(Vec::new()),
            runtime,
        })
    }

    /// The home database's side of this node.
    fn home(&self) -> &Shard {
        &self.shards[0]
    }

    /// The commit log to give the runtime ([`rookery::RuntimeBuilder::commit_log`]).
    pub fn commit_log(&self) -> Arc<dyn CommitLog> {
        self.log.clone()
    }

    /// The class keys to give the runtime ([`rookery::RuntimeBuilder::class_keys`]).
    pub fn class_keys(&self) -> Arc<dyn ClassKeys> {
        self.keys.clone()
    }

    /// Where objects live as far as this node knows (give it to
    /// [`rookery::RuntimeBuilder::placement`]).
    pub fn placement(&self) -> Arc<dyn Placement> {
        self.owners.clone()
    }

    /// The owner this node knew for object `id` did not answer: the next request tries to
    /// take the object over (which works once that owner's lease ran out) or learns the
    /// owner anew.
    pub fn owner_unreachable(&self, id: &rookery::ObjectId) {
        self.owners.forget(id);
    }

    /// How long this node's lease lasts without renewal.
    pub fn lease(&self) -> std::time::Duration {
        self.home().membership.lease()
    }

    /// The token nodes present to each other on forwarded requests (the same on every node).
    pub fn forward_token(&self) -> &str {
        &self.forward_token
    }

    /// The address other nodes reach this one at.
    pub fn advertise(&self) -> &str {
        &self.home().membership.advertise
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.home().membership.node_id
    }

    /// Whether this node's leases hold now, in every database (it may serve its objects).
    pub fn holds_lease(&self) -> bool {
        self.shards.iter().all(|shard| shard.membership.holds())
    }

    /// Every node the cluster knows, with the objects each owns (in all its databases).
    pub async fn nodes(&self) -> Result<Vec<NodeInfo>, ClusterError> {
        let mut owned: std::collections::HashMap<String, i64> = Default::default();
        for shard in &self.shards {
            let client = shard.pool.get().await?;
            for row in client
                .query(
                    "SELECT n.node_id, (SELECT count(*) FROM rookery_objects o
                                        WHERE o.session = n.session)
                     FROM rookery_nodes n",
                    &[],
                )
                .await?
            {
                *owned.entry(row.get(0)).or_default() += row.get::<_, i64>(1);
            }
        }
        let client = self.home().pool.get().await?;
        let rows = client
            .query(
                "SELECT node_id, advertise, lease_until > now() FROM rookery_nodes
                 ORDER BY node_id",
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|row| {
                let node_id: String = row.get(0);
                NodeInfo {
                    objects: owned.get(&node_id).copied().unwrap_or(0),
                    node_id,
                    advertise: row.get(1),
                    live: row.get(2),
                }
            })
            .collect())
    }

    /// Connects the cluster to the runtime over it: starts waking, on this node, objects whose
    /// alarms are due while their node is gone (see `alarms.rs`), and closes the runtime's
    /// WebSockets with 1012 when a lease turns out lost. Undo it with [`Cluster::detach`]
    /// before the runtime shuts down: it holds the runtime.
    pub fn attach(&self, runtime: rookery::Runtime) {
        *lock(&self.runtime) = Some(runtime.clone());
        let tasks: Vec<JoinHandle<()>> = self
            .shards
            .iter()
            .map(|shard| {
                tokio::spawn(alarms::sweep(
                    shard.pool.clone(),
                    shard.membership.clone(),
                    runtime.clone(),
                ))
            })
            .collect();
        let old = std::mem::replace(&mut *lock(&self.alarm_sweeps), tasks);
        for task in old {
            task.abort();
        }
    }

    /// Stops the alarm sweep and lets go of the runtime.
    pub async fn detach(&self) {
        let tasks = std::mem::take(&mut *lock(&self.alarm_sweeps));
        stop(tasks).await;
        lock(&self.runtime).take();
    }

    /// Stops renewing the lease, as a node cut off from the database would: once it runs out,
    /// this node's objects stop serving (each is reset before its next turn and cannot be
    /// claimed again) and other nodes may take them over. For tests of failover.
    pub async fn stop_renewing(&self) {
        let tasks = std::mem::take(&mut *lock(&self.heartbeats));
        stop(tasks).await;
    }

    /// Up to `limit` objects node `node_id`'s current sessions own, as `(class, id)` in hex,
    /// ordered by class and id, after `after` (for paging).
    pub async fn owned_by(
        &self,
        node_id: &str,
        after: Option<(&str, &str)>,
        limit: i64,
    ) -> Result<Vec<(String, String)>, ClusterError> {
        let (after_class, after_object) = after.unwrap_or(("", ""));
        let limit = limit.clamp(1, 1000);
        let mut objects = Vec::new();
        for shard in &self.shards {
            let client = shard.pool.get().await?;
            let rows = client
                .query(
                    "SELECT o.class, o.object FROM rookery_objects o
                     JOIN rookery_nodes n ON n.session = o.session
                     WHERE n.node_id = $1 AND (o.class, o.object) > ($2, $3)
                     ORDER BY o.class, o.object LIMIT $4",
                    &[&node_id, &after_class, &after_object, &limit],
                )
                .await?;
            objects.extend(rows.iter().map(|r| (r.get(0), r.get(1))));
        }
        objects.sort();
        objects.truncate(limit as usize);
        Ok(objects)
    }

    /// Leaves the cluster: stops renewing and ends the lease at once, so that other nodes may
    /// take this node's objects without waiting for it to run out. Call after the runtime
    /// stopped (its last commits are in).
    pub async fn leave(&self) -> Result<(), ClusterError> {
        // Awaited: a renewal still in flight must not land after the release.
        self.stop_renewing().await;
        for shard in &self.shards {
            let client = shard.pool.get().await?;
            shard.membership.release(&client).await?;
        }
        tracing::info!(node = %self.node_id(), "left the cluster");
        Ok(())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for task in lock(&self.heartbeats).drain(..) {
            task.abort();
        }
        for task in lock(&self.alarm_sweeps).drain(..) {
            task.abort();
        }
    }
}

fn lock<T>(tasks: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    tasks.lock().unwrap_or_else(|e| e.into_inner())
}

/// Aborts `tasks` and waits until each has ended.
async fn stop(tasks: Vec<JoinHandle<()>>) {
    for task in tasks {
        task.abort();
        let _ = task.await;
    }
}

/// Renews the lease every quarter of it; registers anew when it ran out, after closing the
/// attached runtime's sockets (their objects may live elsewhere now: 1012 makes their
/// clients reconnect to whoever owns them).
async fn renew(
    pool: Pool,
    membership: Arc<Membership>,
    runtime: Arc<std::sync::Mutex<Option<rookery::Runtime>>>,
) {
    let mut tick = tokio::time::interval(membership.renew_every());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let client = match pool.get().await {
            Ok(client) => client,
            Err(e) => {
                tracing::warn!(error = %e, "cannot reach the cluster database to renew the lease");
                continue;
            }
        };
        // A renewal that hangs must not hold up the next: the lease runs out on its own.
        let renewed = tokio::time::timeout(membership.renew_every(), membership.renew(&client))
            .await
            .unwrap_or_else(|_| {
                Err(ClusterError::Pool(
                    "the cluster database did not answer in time".into(),
                ))
            });
        match renewed {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(node = %membership.node_id, "the cluster lease ran out; joining again under a new session");
                if let Some(runtime) = lock(&runtime).as_ref() {
                    runtime.close_all_sockets(
                        rookery::close_code::SERVICE_RESTART,
                        "this node lost its objects; reconnect",
                    );
                }
                if let Err(e) = membership.register(&client).await {
                    tracing::warn!(error = %e, "joining the cluster again failed");
                }
            }
            Err(e) => tracing::warn!(error = %e, "renewing the cluster lease failed"),
        }
    }
}

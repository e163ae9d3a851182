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

use std::sync::Arc;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use rookery::{ClassKeys, CommitLog, Placement};
use tokio::task::JoinHandle;
use tokio_postgres::NoTls;

pub use alarms::OWN_SLACK_MS;
pub use config::{ClusterConfig, DEFAULT_LEASE};
pub use error::ClusterError;
pub use schema::SCHEMA_VERSION;

use class_keys::PgClassKeys;
use commit_log::PgCommitLog;
use membership::Membership;
use placement::KnownOwners;

/// Connections each node keeps to PostgreSQL at most.
const POOL_SIZE: usize = 16;

/// A node's membership of a cluster.
pub struct Cluster {
    pool: Pool,
    membership: Arc<Membership>,
    log: Arc<PgCommitLog>,
    keys: Arc<PgClassKeys>,
    owners: Arc<KnownOwners>,
    forward_token: String,
    heartbeat: std::sync::Mutex<Option<JoinHandle<()>>>,
    alarm_sweep: std::sync::Mutex<Option<JoinHandle<()>>>,
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
        let mut pg: tokio_postgres::Config = config
            .database_url
            .parse()
            .map_err(|e| ClusterError::Config(format!("database_url: {e}")))?;
        // Nothing waits on PostgreSQL longer than a lease: past it this node's objects are
        // not its own anyway, and callers should hear an error, not hang.
        pg.connect_timeout(config.lease);
        let manager = Manager::from_config(
            pg,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(config.lease))
            .create_timeout(Some(config.lease))
            .recycle_timeout(Some(config.lease))
            .build()
            .map_err(|e| ClusterError::Pool(e.to_string()))?;
        {
            let mut client = pool.get().await?;
            schema::migrate(&mut client).await?;
        }
        let client = pool.get().await?;
        let keys = Arc::new(PgClassKeys::load(&client, &config.database_url).await?);
        let membership = Arc::new(Membership::new(
            config.node_id.clone(),
            config.advertise.clone(),
            config.lease,
        ));
        membership.register(&client).await?;
        let forward_token = hex::encode(schema::secret(&client, "forward").await?);
        drop(client);
        let heartbeat = tokio::spawn(renew(pool.clone(), membership.clone()));
        let owners = Arc::new(KnownOwners::new(config.lease));
        let log = PgCommitLog::start(pool.clone(), membership.clone(), owners.clone());
        Ok(Self {
            pool,
            membership,
            log,
            keys,
            owners,
            forward_token,
            heartbeat: std::sync::Mutex::new(Some(heartbeat)),
            alarm_sweep: std::sync::Mutex::new(None),
        })
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
        self.membership.lease()
    }

    /// The token nodes present to each other on forwarded requests (the same on every node).
    pub fn forward_token(&self) -> &str {
        &self.forward_token
    }

    /// The address other nodes reach this one at.
    pub fn advertise(&self) -> &str {
        &self.membership.advertise
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.membership.node_id
    }

    /// Whether this node's lease holds now (it may serve its objects).
    pub fn holds_lease(&self) -> bool {
        self.membership.holds()
    }

    /// Every node the cluster knows, with the objects each owns.
    pub async fn nodes(&self) -> Result<Vec<NodeInfo>, ClusterError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT n.node_id, n.advertise, n.lease_until > now(),
                        (SELECT count(*) FROM rookery_objects o WHERE o.session = n.session)
                 FROM rookery_nodes n ORDER BY n.node_id",
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|row| NodeInfo {
                node_id: row.get(0),
                advertise: row.get(1),
                live: row.get(2),
                objects: row.get(3),
            })
            .collect())
    }

    /// Starts waking, on this node, objects whose alarms are due while their node is gone
    /// (see `alarms.rs`). Stop it with [`Cluster::stop_alarm_sweep`] before the runtime shuts
    /// down: it holds the runtime.
    pub fn start_alarm_sweep(&self, runtime: rookery::Runtime) {
        let task = tokio::spawn(alarms::sweep(
            self.pool.clone(),
            self.membership.clone(),
            runtime,
        ));
        if let Some(old) = self
            .alarm_sweep
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .replace(task)
        {
            old.abort();
        }
    }

    /// Stops the alarm sweep and lets go of its runtime.
    pub async fn stop_alarm_sweep(&self) {
        let task = self
            .alarm_sweep
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
    }

    /// Stops renewing the lease, as a node cut off from the database would: once it runs out,
    /// this node's objects stop serving (each is reset before its next turn and cannot be
    /// claimed again) and other nodes may take them over. For tests of failover.
    pub async fn stop_renewing(&self) {
        if let Some(task) = self.heartbeat_task() {
            task.abort();
            let _ = task.await;
        }
    }

    /// Up to `limit` objects node `node_id`'s current session owns, as `(class, id)` in hex,
    /// ordered by class and id, after `after` (for paging).
    pub async fn owned_by(
        &self,
        node_id: &str,
        after: Option<(&str, &str)>,
        limit: i64,
    ) -> Result<Vec<(String, String)>, ClusterError> {
        let client = self.pool.get().await?;
        let (after_class, after_object) = after.unwrap_or(("", ""));
        let rows = client
            .query(
                "SELECT o.class, o.object FROM rookery_objects o
                 JOIN rookery_nodes n ON n.session = o.session
                 WHERE n.node_id = $1 AND (o.class, o.object) > ($2, $3)
                 ORDER BY o.class, o.object LIMIT $4",
                &[&node_id, &after_class, &after_object, &limit.clamp(1, 1000)],
            )
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Leaves the cluster: stops renewing and ends the lease at once, so that other nodes may
    /// take this node's objects without waiting for it to run out. Call after the runtime
    /// stopped (its last commits are in).
    pub async fn leave(&self) -> Result<(), ClusterError> {
        let heartbeat = self.heartbeat_task();
        if let Some(task) = heartbeat {
            task.abort();
            // Awaited: a renewal still in flight must not land after the release.
            let _ = task.await;
        }
        let client = self.pool.get().await?;
        self.membership.release(&client).await?;
        tracing::info!(node = %self.membership.node_id, "left the cluster");
        Ok(())
    }
}

impl Cluster {
    fn heartbeat_task(&self) -> Option<JoinHandle<()>> {
        self.heartbeat
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(task) = self.heartbeat_task() {
            task.abort();
        }
        if let Some(task) = self
            .alarm_sweep
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            task.abort();
        }
    }
}

/// Renews the lease every quarter of it; registers anew when it ran out.
async fn renew(pool: Pool, membership: Arc<Membership>) {
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
                if let Err(e) = membership.register(&client).await {
                    tracing::warn!(error = %e, "joining the cluster again failed");
                }
            }
            Err(e) => tracing::warn!(error = %e, "renewing the cluster lease failed"),
        }
    }
}

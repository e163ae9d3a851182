//! One PostgreSQL database of the cluster: a pool of connections to it and this node's
//! membership of it.
//!
//! A cluster has one database, or several (`shards`) for more write throughput: each object
//! lives in one of them, chosen by a stable hash of its id, and everything about it (owner,
//! commits, snapshot, alarm) is there. A node registers in every shard under a session of
//! that shard and renews each lease; fencing stays inside one database, since an object's
//! commit and its owner's lease are checked in the same statement. The first database (the
//! *home*) also keeps what the whole cluster shares: class keys, the forward token, and the
//! list of nodes shown to operators.

use std::sync::Arc;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use rookery::ObjectId;
use tokio_postgres::NoTls;

use crate::config::ClusterConfig;
use crate::error::ClusterError;
use crate::membership::Membership;
use crate::schema;

/// Connections each node keeps to each database at most.
const POOL_SIZE: usize = 16;

/// A database of the cluster, as this node uses it.
pub(crate) struct Shard {
    pub(crate) pool: Pool,
    pub(crate) membership: Arc<Membership>,
}

impl Shard {
    /// Connects to `url`, creates or checks the schema, and registers this node.
    pub(crate) async fn open(url: &str, config: &ClusterConfig) -> Result<Self, ClusterError> {
        let mut pg: tokio_postgres::Config = url
            .parse()
            .map_err(|e| ClusterError::Config(format!("database URL: {e}")))?;
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
        let membership = Arc::new(Membership::new(
            config.node_id.clone(),
            config.advertise.clone(),
            config.lease,
        ));
        membership.register(&*pool.get().await?).await?;
        Ok(Self { pool, membership })
    }
}

/// The shard, of `count`, that holds object `id`: its id's first bytes (an HMAC, so uniform)
/// modulo the count. Stable as long as the list of shards is.
pub(crate) fn shard_of(id: &ObjectId, count: usize) -> usize {
    let mut first = [0u8; 8];
    first.copy_from_slice(&id.as_bytes()[..8]);
    (u64::from_le_bytes(first) % count.max(1) as u64) as usize
}

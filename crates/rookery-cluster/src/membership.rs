//! This node's membership: the session of its process and the lease on everything it owns.
//!
//! A node's objects are owned by its *session* (a fresh random id per registration), and the
//! session holds as long as its row's `lease_until` lies ahead on PostgreSQL's clock. One
//! statement renews it for all the node's objects at once. A node that cannot renew in time
//! loses its objects: other nodes may claim them, and its own commits are refused (the commit
//! statement checks the lease). It then registers again under a new session, so nothing it
//! held before can ever be taken for current again.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tokio_postgres::Client;

use crate::error::ClusterError;

/// This node's place in the cluster.
#[derive(Debug)]
pub(crate) struct Membership {
    pub(crate) node_id: String,
    pub(crate) advertise: String,
    lease: Duration,
    session: RwLock<Arc<str>>,
    /// Registrations so far: a hold taken under one ends with the next.
    generation: AtomicU64,
    /// Until when the lease holds, by this node's clock, in nanoseconds after `base` (0: not
    /// held). Counted from before the renewal was sent, so never later than PostgreSQL's.
    /// Atomic: every turn of every object looks at it.
    deadline: AtomicU64,
    base: Instant,
}

impl Membership {
    /// A member that has not registered yet.
    pub(crate) fn new(node_id: String, advertise: String, lease: Duration) -> Self {
        Self {
            node_id,
            advertise,
            lease,
            session: RwLock::new(Arc::from("")),
            generation: AtomicU64::new(0),
            deadline: AtomicU64::new(0),
            base: Instant::now(),
        }
    }

    /// The current registration's number.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn set_deadline(&self, at: Option<Instant>) {
        let ns = at.map_or(0, |at| {
            u64::try_from(at.saturating_duration_since(self.base).as_nanos())
                .unwrap_or(u64::MAX)
                .max(1)
        });
        self.deadline.store(ns, Ordering::Release);
    }

    /// The current session.
    pub(crate) fn session(&self) -> Arc<str> {
        self.session
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Whether the lease holds now, by this node's clock.
    pub(crate) fn holds(&self) -> bool {
        let deadline = self.deadline.load(Ordering::Acquire);
        deadline != 0 && (self.base.elapsed().as_nanos() as u64) < deadline
    }

    /// How long the lease lasts without renewal.
    pub(crate) fn lease(&self) -> Duration {
        self.lease
    }

    /// How often the lease is renewed.
    pub(crate) fn renew_every(&self) -> Duration {
        self.lease / 4
    }

    fn lease_ms(&self) -> i64 {
        i64::try_from(self.lease.as_millis()).unwrap_or(i64::MAX)
    }

    /// Registers under a new session, replacing whatever session this node id had: objects
    /// the old session owned become free to claim (by this node too, under a new epoch).
    pub(crate) async fn register(&self, client: &Client) -> Result<(), ClusterError> {
        let session = new_session()?;
        let sent = Instant::now();
        client
            .execute(
                "INSERT INTO rookery_nodes (node_id, session, advertise, lease_until, started_at)
                 VALUES ($1, $2, $3, now() + $4::int8 * interval '1 millisecond', now())
                 ON CONFLICT (node_id) DO UPDATE SET session = EXCLUDED.session,
                     advertise = EXCLUDED.advertise, lease_until = EXCLUDED.lease_until,
                     started_at = EXCLUDED.started_at",
                &[&self.node_id, &session, &self.advertise, &self.lease_ms()],
            )
            .await?;
        *self.session.write().unwrap_or_else(|e| e.into_inner()) = Arc::from(session.as_str());
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.set_deadline(Some(sent + self.lease));
        tracing::info!(node = %self.node_id, session = %session, "joined the cluster");
        Ok(())
    }

    /// Renews the lease; `false` if it had run out (the session is over).
    pub(crate) async fn renew(&self, client: &Client) -> Result<bool, ClusterError> {
        let session = self.session();
        let sent = Instant::now();
        let renewed = client
            .execute(
                "UPDATE rookery_nodes SET lease_until = now() + $3::int8 * interval '1 millisecond'
                 WHERE node_id = $1 AND session = $2 AND lease_until > now()",
                &[&self.node_id, &&*session, &self.lease_ms()],
            )
            .await?
            == 1;
        if renewed {
            self.set_deadline(Some(sent + self.lease));
        }
        Ok(renewed)
    }

    /// Ends the lease now, so that other nodes may take this node's objects at once (a clean
    /// stop, after the last commit).
    pub(crate) async fn release(&self, client: &Client) -> Result<(), ClusterError> {
        let session = self.session();
        self.set_deadline(None);
        client
            .execute(
                "UPDATE rookery_nodes SET lease_until = now() WHERE session = $1",
                &[&&*session],
            )
            .await?;
        Ok(())
    }
}

/// A fresh session id: 16 random bytes in hex.
fn new_session() -> Result<String, ClusterError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes)
        .map_err(|e| ClusterError::Config(format!("no randomness for a session id: {e}")))?;
    Ok(hex::encode(bytes))
}

/// An activation's hold on its object: the registration it was claimed under, while the lease
/// holds. A node that lost its lease (or joined again since) resets such objects before they
/// serve anything more.
pub(crate) struct SessionLease {
    pub(crate) membership: Arc<Membership>,
    pub(crate) generation: u64,
}

impl rookery::Lease for SessionLease {
    fn holds(&self) -> bool {
        self.membership.generation() == self.generation && self.membership.holds()
    }
}

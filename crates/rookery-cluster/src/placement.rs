//! Which node owns an object, as far as this node has learnt: the owners its activations met.
//!
//! The cluster's tables are the truth; this is a cache of refusals. An activation that finds
//! the object owned elsewhere records the owner's address here, so the next requests go
//! straight to it (through the server's forwarder) without asking PostgreSQL. An entry lasts
//! one lease: after that the owner may have died or moved, and the next request tries to
//! activate the object here again, which either takes it over or learns the new owner.

use std::time::{Duration, Instant};

use dashmap::DashMap;
use rookery::{Location, ObjectId, Placement};

/// Owners remembered at most; past it, entries whose time is up go, and if that is not
/// enough, all of them (forgetting only costs the next request a claim that is refused).
const MAX_KNOWN: usize = 1_000_000;

/// Remote owners this node knows of, by object id (ids carry their class's key, so they do not
/// collide across classes).
#[derive(Debug)]
pub(crate) struct KnownOwners {
    owners: DashMap<[u8; 32], (String, Instant)>,
    ttl: Duration,
}

impl KnownOwners {
    /// Entries last `ttl`.
    pub(crate) fn new(ttl: Duration) -> Self {
        Self {
            owners: DashMap::new(),
            ttl,
        }
    }

    /// The object `id` is owned by the node at `address`.
    pub(crate) fn learn(&self, id: &ObjectId, address: String) {
        if self.owners.len() >= MAX_KNOWN {
            let now = Instant::now();
            self.owners.retain(|_, (_, until)| *until > now);
            if self.owners.len() >= MAX_KNOWN {
                self.owners.clear();
            }
        }
        self.owners
            .insert(*id.as_bytes(), (address, Instant::now() + self.ttl));
    }

    /// The object `id` is owned here now.
    pub(crate) fn forget(&self, id: &ObjectId) {
        self.owners.remove(id.as_bytes());
    }
}

impl Placement for KnownOwners {
    fn locate(&self, _class: &str, id: &ObjectId) -> Location {
        let Some(entry) = self.owners.get(id.as_bytes()) else {
            return Location::Local;
        };
        if Instant::now() < entry.1 {
            return Location::Remote(entry.0.clone());
        }
        drop(entry);
        self.owners.remove(id.as_bytes());
        Location::Local
    }
}

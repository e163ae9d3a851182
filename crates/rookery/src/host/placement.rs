//! The placement seam: which node owns an object.
//!
//! A single node owns every object ([`LocalPlacement`]). In a cluster an implementation answers
//! from leased ownership records, and the host forwards events for objects it does not own.

use crate::id::ObjectId;

/// Where an object lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// On this node.
    Local,
    /// On another node, by its address.
    Remote(String),
}

/// Decides which node owns an object.
pub trait Placement: Send + Sync + 'static {
    /// The owner of object `id` of `class`.
    fn locate(&self, class: &str, id: &ObjectId) -> Location;
}

/// Every object lives on this node.
#[derive(Debug, Default, Clone, Copy)]
pub struct LocalPlacement;

impl Placement for LocalPlacement {
    fn locate(&self, _class: &str, _id: &ObjectId) -> Location {
        Location::Local
    }
}

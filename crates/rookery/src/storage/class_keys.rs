//! Where a class's uid and id secret come from.
//!
//! On one node they are drawn at random when a migration creates the class and kept in the
//! catalog. Nodes of a cluster must agree on them: an object's id is minted with its class's
//! secret, and its state is found by class and id, so every node has to mint the same id for
//! the same name. A [`ClassKeys`] other than [`LocalClassKeys`] is asked for every class a
//! node has, and its answer is the one the node keeps.

use crate::error::StartError;

/// A class's identity: the directory name of its objects and the secret its ids are minted
/// with.
#[derive(Clone, PartialEq, Eq)]
pub struct ClassKey {
    /// 32 hex digits, fixed when the class is created.
    pub uid: String,
    /// The secret ids are minted and checked with.
    pub secret: [u8; 32],
}

impl std::fmt::Debug for ClassKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClassKey")
            .field("uid", &self.uid)
            .finish_non_exhaustive()
    }
}

/// Settles the key of each class among the nodes that share objects.
pub trait ClassKeys: Send + Sync + 'static {
    /// The key class `name` has: the one recorded already, or `proposed`, recorded now, if
    /// there is none. Called when a migration creates the class (with a random proposal) and at
    /// every start for each class the node has (proposing its own key; an answer that differs
    /// keeps the node from starting).
    fn agree(&self, name: &str, proposed: ClassKey) -> Result<ClassKey, StartError>;
}

/// One node alone: every proposal stands.
#[derive(Debug, Default, Clone, Copy)]
pub struct LocalClassKeys;

impl ClassKeys for LocalClassKeys {
    fn agree(&self, _name: &str, proposed: ClassKey) -> Result<ClassKey, StartError> {
        Ok(proposed)
    }
}

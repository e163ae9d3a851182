//! What an object can reach besides its own state: the namespaces bound in the configuration.

use crate::error::Result;
use crate::host::Host;
use crate::stub::Namespace;

/// The bindings an object can reach: namespaces of other classes by binding name.
#[derive(Clone)]
pub struct Env {
    host: Host,
}

impl Env {
    pub(crate) fn new(host: Host) -> Self {
        Self { host }
    }

    /// The namespace bound under `binding`.
    pub fn namespace(&self, binding: &str) -> Result<Namespace> {
        Namespace::bound(&self.host, binding)
    }
}

//! Where delta files go: the bucket bound as `CDC_BUCKET`.
//!
//! Until the runtime has bucket bindings, opening the store fails, so every flush fails with
//! that reason and its changes stay pending.

use rookery::prelude::*;

/// The binding of the bucket delta files are written to.
pub const BUCKET_BINDING: &str = "CDC_BUCKET";

/// The bucket delta files are written to and read back from.
pub(crate) struct DeltaStore;

impl DeltaStore {
    /// The store bound as [`BUCKET_BINDING`].
    pub(crate) fn open(_env: &Env) -> Result<Self> {
        Err(Error::msg(format!(
            "no bucket bound as {BUCKET_BINDING}: this build has no bucket bindings"
        )))
    }

    /// Writes `bytes` under `key`, replacing what was there, atomically and durably.
    pub(crate) async fn put(&self, _key: &str, _bytes: Vec<u8>) -> Result<()> {
        Err(Error::msg("no bucket"))
    }

    /// The bytes under `key`, if any.
    pub(crate) async fn get(&self, _key: &str) -> Result<Option<Vec<u8>>> {
        Err(Error::msg("no bucket"))
    }
}

//! Creating a class's SQL tables once per object instance.

use rookery::prelude::*;

/// Whether this instance already ran its class's `CREATE TABLE IF NOT EXISTS` script. A failed
/// turn drops the instance, so a rolled-back creation is never taken for a done one.
#[derive(Debug, Default)]
pub(crate) struct Tables {
    ready: bool,
}

impl Tables {
    /// Runs `schema` on the object's database the first time it is asked for.
    pub(crate) fn ensure(&mut self, state: &ObjectState, schema: &str) -> Result<()> {
        if !self.ready {
            state.storage().sql().exec(schema, &[])?;
            self.ready = true;
        }
        Ok(())
    }
}

//! Where delta files go: the bucket bound as `CDC_BUCKET`.
//!
//! Until the runtime has bucket bindings, opening the store fails outside tests, so every flush
//! fails with that reason and its changes stay pending. Tests register an in-memory store per
//! namespace ([`testing`]).

use rookery::prelude::*;

/// The binding of the bucket delta files are written to.
pub const BUCKET_BINDING: &str = "CDC_BUCKET";

/// The bucket delta files are written to and read back from.
pub(crate) struct DeltaStore {
    #[cfg(test)]
    memory: std::sync::Arc<testing::MemoryStore>,
}

impl DeltaStore {
    /// The store bound as [`BUCKET_BINDING`], for the objects of `namespace`.
    pub(crate) fn open(_env: &Env, _namespace: &str) -> Result<Self> {
        #[cfg(test)]
        if let Some(memory) = testing::store(_namespace) {
            return Ok(Self { memory });
        }
        Err(Error::msg(format!(
            "no bucket bound as {BUCKET_BINDING}: this build has no bucket bindings"
        )))
    }

    /// Writes `bytes` under `key`, replacing what was there, atomically and durably.
    pub(crate) async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<()> {
        #[cfg(test)]
        return self.memory.put(key, bytes);
        #[cfg(not(test))]
        {
            let _ = (key, bytes);
            Err(Error::msg("no bucket"))
        }
    }

    /// The bytes under `key`, if any.
    pub(crate) async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        #[cfg(test)]
        return Ok(self.memory.get(key));
        #[cfg(not(test))]
        {
            let _ = key;
            Err(Error::msg("no bucket"))
        }
    }
}

/// In-memory stores for tests, one per namespace.
#[cfg(test)]
pub(crate) mod testing {
    use std::collections::{BTreeMap, HashMap};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex, OnceLock};

    use rookery::prelude::*;

    /// Files by key; `failing` makes writes fail.
    #[derive(Default)]
    pub(crate) struct MemoryStore {
        pub files: Mutex<BTreeMap<String, Vec<u8>>>,
        pub failing: AtomicBool,
    }

    impl MemoryStore {
        pub(crate) fn put(&self, key: &str, bytes: Vec<u8>) -> Result<()> {
            if self.failing.load(Ordering::SeqCst) {
                return Err(Error::msg("the test store refuses writes"));
            }
            self.files.lock().unwrap().insert(key.to_string(), bytes);
            Ok(())
        }

        pub(crate) fn get(&self, key: &str) -> Option<Vec<u8>> {
            self.files.lock().unwrap().get(key).cloned()
        }
    }

    fn stores() -> &'static Mutex<HashMap<String, Arc<MemoryStore>>> {
        static STORES: OnceLock<Mutex<HashMap<String, Arc<MemoryStore>>>> = OnceLock::new();
        STORES.get_or_init(Default::default)
    }

    /// A new store for the objects of `namespace`.
    pub(crate) fn register(namespace: &str) -> Arc<MemoryStore> {
        let store = Arc::new(MemoryStore::default());
        stores()
            .lock()
            .unwrap()
            .insert(namespace.to_string(), store.clone());
        store
    }

    pub(super) fn store(namespace: &str) -> Option<Arc<MemoryStore>> {
        stores().lock().unwrap().get(namespace).cloned()
    }
}

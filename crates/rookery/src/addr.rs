//! Where an object is: its class, its id, and the keys and file derived from the two.
//!
//! Every other layer names an object by an [`ObjectAddr`]: the host's registry key, the alarm
//! index's key and the database file all come from here, so they cannot disagree.

use std::fs;
use std::path::PathBuf;
use std::sync::Arc;

use crate::durable_dir::{create_dir_durable, sync_dir};
use crate::error::Result;
use crate::id::{ID_BYTES, IdMinter, ObjectId};

/// One class as a runtime hosts it: a stable uid, a name and where its objects live.
#[derive(Debug)]
pub(crate) struct ClassInfo {
    /// Position among the runtime's hosted classes; part of every registry key.
    pub(crate) idx: u32,
    /// The class's stable uid, kept across renames; names its directory and alarm entries.
    pub(crate) uid: Arc<str>,
    /// The class's current name.
    pub(crate) name: Arc<str>,
    /// Where the class's object databases live; `None` in memory.
    pub(crate) dir: Option<PathBuf>,
    /// Mints and checks the class's object ids.
    pub(crate) minter: IdMinter,
}

impl ClassInfo {
    /// Makes the class's 16 shard directories (named by the ids' first hex digit, so that
    /// many objects do not crowd one directory) and syncs their entries, so that activating
    /// an object creates no directory.
    pub(crate) fn prepare_dirs(&self) -> Result<()> {
        let Some(root) = &self.dir else {
            return Ok(());
        };
        let mut created = create_dir_durable(root)?;
        for shard in "0123456789abcdef".chars() {
            let dir = root.join(shard.to_string());
            if !dir.is_dir() {
                fs::create_dir(&dir)?;
                created = true;
            }
        }
        if created {
            // The shard directories' names must be durable before any object inside them is.
            sync_dir(root)?;
        }
        Ok(())
    }
}

/// Identifies a live object within a runtime, cheaply: its class's position and its id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct ObjectKey {
    pub(crate) class: u32,
    pub(crate) id: [u8; ID_BYTES],
}

/// Identifies an object across restarts and class renames: its class's uid and its id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct AlarmKey {
    pub(crate) class_uid: Arc<str>,
    pub(crate) id: [u8; ID_BYTES],
}

/// Where an object's database lives.
#[derive(Debug, Clone)]
pub(crate) enum Location {
    /// A file (WAL mode, durable).
    File(PathBuf),
    /// Memory only, gone when the runtime stops (for tests).
    Memory,
}

/// One object: its class and its id.
#[derive(Debug, Clone)]
pub(crate) struct ObjectAddr {
    pub(crate) class: Arc<ClassInfo>,
    pub(crate) id: ObjectId,
}

impl ObjectAddr {
    /// The object `id` of `class`.
    pub(crate) fn new(class: Arc<ClassInfo>, id: ObjectId) -> Self {
        Self { class, id }
    }

    /// The host's registry key.
    pub(crate) fn key(&self) -> ObjectKey {
        ObjectKey {
            class: self.class.idx,
            id: *self.id.as_bytes(),
        }
    }

    /// The key of the object's entry in the node's alarm index.
    pub(crate) fn alarm_key(&self) -> AlarmKey {
        AlarmKey {
            class_uid: self.class.uid.clone(),
            id: *self.id.as_bytes(),
        }
    }

    /// Where the object's database lives (its shard directory exists since start-up).
    pub(crate) fn location(&self) -> Location {
        let Some(root) = &self.class.dir else {
            return Location::Memory;
        };
        let hex = self.id.to_hex();
        Location::File(root.join(&hex[..1]).join(format!("{hex}.sqlite")))
    }

    /// The object as people read it: its name if known, else its hex id.
    pub(crate) fn describe(&self) -> String {
        format!(
            "{} {}",
            self.class.name,
            self.id
                .name()
                .map_or_else(|| self.id.to_hex(), str::to_string)
        )
    }
}

//! The node's index of alarm times: `alarms.sqlite` in the data directory.
//!
//! The object's own database holds the truth (`_rookery_meta` row `alarm`, committed with the
//! turn that set it, `alarm.rs`). The node keeps this index of next alarm times so that the
//! scheduler never has to open an object's database to know when it is due. The index may say
//! *earlier* than the truth, never later and never nothing when the object has an alarm:
//!
//! - a turn that sets an alarm lowers the index entry (`min(old, new)`) and waits until that is
//!   durable *before* the turn commits, so no crash can leave an object's alarm unindexed;
//! - once the turn's commit is durable, the entry is set to the exact time (or removed); these
//!   exact updates carry a version, so a late one never overrides a newer one.
//!
//! A wake-up that finds no due alarm in the object (early, or already handled) just corrects the
//! index. The index can always be rebuilt from the objects' own records ([`scan_objects`]).
//!
//! One row per object with an alarm: `(class uid, object id) → (at, version)`, with an index on
//! `at`. Every operation is one B-tree lookup or range scan: O(log n), and the scheduler only
//! ever holds a bounded batch of rows in memory however many alarms are scheduled.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use rusqlite::{Connection, OptionalExtension, params};

use super::{Durability, ObjectSync, Syncer};
use crate::addr::AlarmKey;
use crate::error::Result;
use crate::id::ID_BYTES;

/// Told when an entry may have become earlier than anything seen before: the scheduler, which
/// then decides whether to look again.
pub(crate) trait AlarmListener: Send + Sync + 'static {
    /// An entry is now due at `at` (ms since the epoch); `i64::MIN` when many entries changed.
    fn earlier(&self, at: i64);
}

/// The index database.
pub(crate) struct AlarmIndex {
    conn: Mutex<Connection>,
    /// Durability bookkeeping of the index's own WAL (`None` in memory).
    sync: Option<Mutex<Arc<ObjectSync>>>,
    path: Option<std::path::PathBuf>,
    durability: Durability,
    /// Sequence of the index's own writes, for its durability gate.
    seq: AtomicU64,
    /// Versions order the updates of one object's entry.
    versions: AtomicU64,
    /// Hears of entries that became earlier.
    listener: Arc<dyn AlarmListener>,
}

impl AlarmIndex {
    /// Opens the index at `path`, or in memory when `path` is `None`; `listener` hears of
    /// entries that became earlier.
    pub(crate) fn open(
        path: Option<&Path>,
        durability: Durability,
        listener: Arc<dyn AlarmListener>,
    ) -> Result<Self> {
        let conn = match path {
            Some(path) => {
                let conn = Connection::open(path)?;
                // One process serves a data directory (its lock): an exclusive lock keeps the
                // WAL index in the heap, with no shared-memory file to map.
                conn.execute_batch(
                    "PRAGMA locking_mode = EXCLUSIVE; PRAGMA journal_mode = WAL;
                     PRAGMA synchronous = NORMAL;",
                )?;
                conn
            }
            None => Connection::open_in_memory()?,
        };
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS alarms (
                 class TEXT NOT NULL,
                 id BLOB NOT NULL,
                 at INTEGER NOT NULL,
                 version INTEGER NOT NULL,
                 PRIMARY KEY (class, id)
             ) WITHOUT ROWID;
             CREATE INDEX IF NOT EXISTS alarms_by_time ON alarms (at);",
        )?;
        let top: i64 = conn.query_row("SELECT coalesce(max(version), 0) FROM alarms", [], |r| {
            r.get(0)
        })?;
        Ok(Self {
            conn: Mutex::new(conn),
            sync: path.map(|p| Mutex::new(ObjectSync::new(p, true))),
            path: path.map(Path::to_path_buf),
            durability,
            seq: AtomicU64::new(0),
            versions: AtomicU64::new(u64::try_from(top).unwrap_or(0)),
            listener,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A version newer than every version handed out so far.
    pub(crate) fn next_version(&self) -> u64 {
        self.versions.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Makes the entry of `key` no later than `at`, and waits until that is durable.
    pub(crate) async fn lower(
        &self,
        key: &AlarmKey,
        at: i64,
        version: u64,
        syncer: &Syncer,
    ) -> Result<()> {
        let seq = {
            let conn = self.lock();
            conn.prepare_cached(
                "INSERT INTO alarms (class, id, at, version) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT DO UPDATE SET at = min(at, excluded.at),
                                           version = max(version, excluded.version)",
            )?
            .execute(params![&*key.class_uid, &key.id[..], at, version as i64])?;
            self.seq.fetch_add(1, Ordering::Relaxed) + 1
        };
        self.listener.earlier(at);
        if let (Some(slot), Durability::Strict) = (&self.sync, self.durability) {
            let sync = slot.lock().unwrap_or_else(|e| e.into_inner()).clone();
            sync.committed(seq);
            // The index is node-local: no commit log acknowledges it.
            sync.mark(seq, false, true);
            syncer.request(&sync);
            if let Err(e) = sync.gate(seq).wait().await {
                // Start a fresh durability record so one failed sync does not fail every
                // later alarm change; this change's turn fails and is rolled back.
                if let Some(path) = &self.path {
                    let fresh = ObjectSync::new(path, false);
                    fresh.committed(seq);
                    fresh.mark(seq, false, true);
                    *slot.lock().unwrap_or_else(|e| e.into_inner()) = fresh;
                }
                return Err(e);
            }
        }
        Ok(())
    }

    /// Sets the entry of `key` to exactly `at` (or removes it for `None`), unless a newer
    /// version has touched it.
    pub(crate) fn set_exact(&self, key: &AlarmKey, at: Option<i64>, version: u64) -> Result<()> {
        let conn = self.lock();
        match at {
            Some(at) => conn
                .prepare_cached(
                    "INSERT INTO alarms (class, id, at, version) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT DO UPDATE SET at = excluded.at, version = excluded.version
                     WHERE version <= excluded.version",
                )?
                .execute(params![&*key.class_uid, &key.id[..], at, version as i64])?,
            None => conn
                .prepare_cached(
                    "DELETE FROM alarms WHERE class = ?1 AND id = ?2 AND version <= ?3",
                )?
                .execute(params![&*key.class_uid, &key.id[..], version as i64])?,
        };
        if let Some(at) = at {
            self.listener.earlier(at);
        }
        Ok(())
    }

    /// Restricts [`AlarmIndex::earliest`] to the classes this server hosts; alarms of other
    /// classes wait for a server that hosts them.
    pub(crate) fn set_hosted(&self, classes: &[Arc<str>]) -> Result<()> {
        let conn = self.lock();
        conn.execute_batch(
            "CREATE TEMP TABLE IF NOT EXISTS hosted (class TEXT PRIMARY KEY) WITHOUT ROWID;
             DELETE FROM temp.hosted;",
        )?;
        let mut stmt = conn.prepare("INSERT OR IGNORE INTO temp.hosted (class) VALUES (?1)")?;
        for class in classes {
            stmt.execute([&**class])?;
        }
        Ok(())
    }

    /// The earliest `limit` entries of hosted classes, earliest first.
    pub(crate) fn earliest(&self, limit: usize) -> Result<Vec<(AlarmKey, i64)>> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT class, id, at FROM alarms
             WHERE class IN (SELECT class FROM temp.hosted)
             ORDER BY at LIMIT ?1",
        )?;
        let rows = stmt.query_map([limit as i64], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, Vec<u8>>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (class, id, at) = row?;
            if let Ok(id) = <[u8; ID_BYTES]>::try_from(id.as_slice()) {
                out.push((
                    AlarmKey {
                        class_uid: Arc::from(class),
                        id,
                    },
                    at,
                ));
            }
        }
        Ok(out)
    }

    /// The earliest time in the index.
    pub(crate) fn next_at(&self) -> Result<Option<i64>> {
        let conn = self.lock();
        Ok(conn.query_row("SELECT min(at) FROM alarms", [], |r| r.get(0))?)
    }

    /// The entry of `key`, if any.
    pub(crate) fn get(&self, key: &AlarmKey) -> Result<Option<i64>> {
        let conn = self.lock();
        Ok(conn
            .prepare_cached("SELECT at FROM alarms WHERE class = ?1 AND id = ?2")?
            .query_row(params![&*key.class_uid, &key.id[..]], |r| r.get(0))
            .optional()?)
    }

    /// Number of entries.
    pub(crate) fn len(&self) -> Result<u64> {
        let conn = self.lock();
        let n: i64 = conn.query_row("SELECT count(*) FROM alarms", [], |r| r.get(0))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// Replaces the entries not touched since version `scanned_at` with `entries`, a scan of
    /// the objects' own records that began after `scanned_at` was handed out. Entries changed
    /// meanwhile keep the earlier of the two times.
    /// Entries of `keep` (objects the scan could not read) stay as they are.
    pub(crate) fn replace_all(
        &self,
        entries: &[(AlarmKey, i64)],
        scanned_at: u64,
        keep: &[AlarmKey],
    ) -> Result<()> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let mut kept = Vec::new();
        for key in keep {
            let at: Option<i64> = tx
                .query_row(
                    "SELECT at FROM alarms WHERE class = ?1 AND id = ?2",
                    params![&*key.class_uid, &key.id[..]],
                    |r| r.get(0),
                )
                .optional()?;
            kept.extend(at.map(|at| (key.clone(), at)));
        }
        tx.execute(
            "DELETE FROM alarms WHERE version <= ?1",
            [scanned_at as i64],
        )?;
        {
            let mut stmt = tx.prepare(
                "INSERT INTO alarms (class, id, at, version) VALUES (?1, ?2, ?3, 0)
                 ON CONFLICT DO UPDATE SET at = min(at, excluded.at)",
            )?;
            for (key, at) in entries.iter().chain(&kept) {
                stmt.execute(params![&*key.class_uid, &key.id[..], at])?;
            }
        }
        tx.commit()?;
        drop(conn);
        self.listener.earlier(i64::MIN);
        Ok(())
    }
}

/// What a scan of the objects' own alarm records found.
#[derive(Default)]
pub(crate) struct Scan {
    /// Objects with an alarm, and its time.
    pub(crate) found: Vec<(AlarmKey, i64)>,
    /// Objects that could not be read because a live activation holds them; their index
    /// entries are kept (their turns keep them right).
    pub(crate) busy: Vec<AlarmKey>,
}

/// Reads every object's own alarm record under `objects_dir` (`<class uid>/<x>/<id>.sqlite`),
/// for rebuilding the index. Opens each database read-only.
pub(crate) fn scan_objects(objects_dir: &Path) -> Result<Scan> {
    let mut scan = Scan::default();
    for class in std::fs::read_dir(objects_dir)? {
        let class = class?;
        let Some(uid) = class.file_name().to_str().map(Arc::<str>::from) else {
            continue;
        };
        if !class.path().is_dir() {
            continue;
        }
        for shard in std::fs::read_dir(class.path())? {
            let shard = shard?.path();
            if !shard.is_dir() {
                continue;
            }
            for file in std::fs::read_dir(&shard)? {
                let path = file?.path();
                let Some(stem) = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.strip_suffix(".sqlite"))
                else {
                    continue;
                };
                let mut id = [0u8; ID_BYTES];
                if hex::decode_to_slice(stem, &mut id).is_err() {
                    continue;
                }
                // An object that emptied its storage may remove its file while the scan runs.
                let conn = match Connection::open_with_flags(
                    &path,
                    rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
                ) {
                    Ok(conn) => conn,
                    Err(_) if !path.exists() => continue,
                    Err(e) => return Err(e.into()),
                };
                let key = AlarmKey {
                    class_uid: uid.clone(),
                    id,
                };
                let at = conn
                    .query_row(
                        "SELECT value FROM main._rookery_meta WHERE key = 'alarm'",
                        [],
                        |r| r.get::<_, i64>(0),
                    )
                    .optional();
                match at {
                    Ok(Some(at)) => scan.found.push((key, at)),
                    Ok(None) => {}
                    // A live activation holds the database exclusively.
                    Err(e) if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy) => {
                        scan.busy.push(key);
                    }
                    // A database from before alarms existed has no meta table.
                    Err(rusqlite::Error::SqliteFailure(_, Some(ref m)))
                        if m.contains("no such table") => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
    Ok(scan)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u32) -> AlarmKey {
        let mut id = [0u8; ID_BYTES];
        id[..4].copy_from_slice(&i.to_be_bytes());
        AlarmKey {
            class_uid: Arc::from("c"),
            id,
        }
    }

    struct Deaf;

    impl AlarmListener for Deaf {
        fn earlier(&self, _at: i64) {}
    }

    #[test]
    fn a_million_alarms_are_held_and_read_in_time_order() {
        let index = AlarmIndex::open(None, Durability::Relaxed, Arc::new(Deaf)).unwrap();
        index.set_hosted(&[Arc::from("c")]).unwrap();
        // Times in a scrambled order, so the index, not the insertion order, sorts them.
        let entries: Vec<(AlarmKey, i64)> = (0..1_000_000u32)
            .map(|i| (key(i), (u64::from(i) * 2_654_435_761 % 1_000_000) as i64))
            .collect();
        index.replace_all(&entries, 0, &[]).unwrap();
        assert_eq!(index.len().unwrap(), 1_000_000);
        assert_eq!(index.next_at().unwrap(), Some(0));
        let first = index.earliest(5).unwrap();
        let times: Vec<i64> = first.iter().map(|(_, at)| *at).collect();
        assert_eq!(times, vec![0, 1, 2, 3, 4]);
        // An update reorders one entry without touching the others.
        let (k, _) = &first[0];
        index
            .set_exact(k, Some(2_000_000), index.next_version())
            .unwrap();
        assert_eq!(index.next_at().unwrap(), Some(1));
        index.set_exact(k, None, index.next_version()).unwrap();
        assert_eq!(index.len().unwrap(), 999_999);
    }
}

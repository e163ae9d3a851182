//! Transactional storage of one object: a KV API and a SQL API over its own SQLite database,
//! committed at the end of every turn and made durable before the turn's outputs are released.

mod alarm;
mod alarm_index;
mod catalog;
mod commit_log;
mod database;
mod dir_health;
mod dir_lock;
mod durability;
mod kv;
mod policy;
mod sql;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

pub use catalog::Migration;
pub use commit_log::{CommitLog, CommitRecord, LocalCommitLog};
pub use durability::{Durability, OutputGate, SyncHook};
pub use kv::ListOptions;
pub use sql::{ColumnIndex, FromSqlValue, Sql, SqlCursor, SqlRow, SqlValue};

pub(crate) use alarm_index::{AlarmIndex, AlarmListener, scan_objects};
pub(crate) use catalog::{Catalog, ClassRecord};
pub(crate) use dir_health::DirHealth;
pub(crate) use dir_lock::DirLock;
pub(crate) use durability::{ObjectSync, Syncer};

use database::Database;

use crate::addr::{AlarmKey, Location, ObjectAddr};
use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::id::ObjectId;

/// Limits on what an object may store; each breach is an error to the handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StorageLimits {
    /// Largest key in bytes (UTF-8).
    pub max_key_bytes: usize,
    /// Largest value in bytes, as encoded.
    pub max_value_bytes: usize,
    /// Most keys in one batch call.
    pub max_batch_keys: usize,
    /// Largest database of one object, in bytes.
    pub max_object_bytes: u64,
}

impl Default for StorageLimits {
    fn default() -> Self {
        Self {
            max_key_bytes: 2 * 1024,
            max_value_bytes: 2 * 1024 * 1024,
            max_batch_keys: 128,
            max_object_bytes: 10 * 1024 * 1024 * 1024,
        }
    }
}

/// What every object's storage shares within a runtime.
pub(crate) struct StorageContext {
    pub(crate) limits: StorageLimits,
    pub(crate) durability: Durability,
    pub(crate) syncer: Syncer,
    pub(crate) commit_log: Arc<dyn CommitLog>,
    /// Commits that wrote something, over all objects.
    pub(crate) commits: AtomicU64,
    /// The node's index of alarm times.
    pub(crate) alarms: AlarmIndex,
    /// The clock alarms run by.
    pub(crate) clock: Arc<dyn Clock>,
    /// Whether the data directory is usable (`None` in memory).
    pub(crate) health: Option<Arc<DirHealth>>,
}

impl StorageContext {
    /// Refuses commits while the data directory is gone or unwritable; in relaxed durability,
    /// where no sync round checks it, it is checked here.
    fn check_dir(&self) -> Result<()> {
        let Some(health) = &self.health else {
            return Ok(());
        };
        let checked = if self.durability == Durability::Relaxed {
            health.check_quick()
        } else if health.is_ok() {
            Ok(())
        } else {
            Err(health.problem())
        };
        checked.map_err(Error::StorageUnavailable)
    }
}

/// How a turn changed the object's alarm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AlarmChange {
    /// Set for this time (ms since the epoch).
    Set(i64),
    /// Deleted.
    Deleted,
}

impl AlarmChange {
    /// The alarm time after the change; `None` if deleted.
    pub(crate) fn at(self) -> Option<i64> {
        match self {
            AlarmChange::Set(at) => Some(at),
            AlarmChange::Deleted => None,
        }
    }
}

/// An object's storage. Reads see the turn's own writes; the writes commit together when the
/// turn ends well and vanish when it fails.
pub struct Storage {
    db: Mutex<Turn>,
    sync: Arc<ObjectSync>,
    ctx: Arc<StorageContext>,
    class: Arc<str>,
    id: ObjectId,
    alarm_key: AlarmKey,
    in_memory: bool,
    /// See [`Storage::take_index_update`].
    index_update: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// The database and the commit sequence, guarded together.
struct Turn {
    db: Database,
    /// Sequence number of the last commit that wrote something.
    seq: u64,
    /// The last alarm change of the current turn.
    alarm: Option<AlarmChange>,
    /// Whether object code (not the runtime) changed the alarm in the current turn.
    alarm_by_handler: bool,
}

impl Storage {
    /// Opens the storage of the object at `addr`.
    pub(crate) fn open(addr: &ObjectAddr, ctx: Arc<StorageContext>) -> Result<Self> {
        let location = &addr.location();
        // A WAL left by a crash (or by a reset after a failed sync) may hold commits that were
        // never synced; nothing read from it may leave before it is. A clean close removes it.
        let leftover_wal = match location {
            Location::File(path) => {
                let mut wal = path.as_os_str().to_owned();
                wal.push("-wal");
                std::fs::metadata(PathBuf::from(wal)).is_ok_and(|m| m.len() > 0)
            }
            Location::Memory => false,
        };
        let new_db = match location {
            Location::File(path) => !path.exists(),
            Location::Memory => false,
        };
        let db = Database::open(location, ctx.limits.max_object_bytes).map_err(|e| match e {
            Error::Sqlite(_) | Error::Io(_) => Error::internal(
                format!(
                    "the database of {} at {} cannot be opened",
                    addr.describe(),
                    match location {
                        Location::File(path) => path.display().to_string(),
                        Location::Memory => "(memory)".to_string(),
                    }
                ),
                e,
            ),
            e => e,
        })?;
        let sync = ObjectSync::new(db.path().unwrap_or(Path::new("")), new_db);
        let seq = u64::from(leftover_wal && ctx.durability == Durability::Strict);
        if seq > 0 {
            sync.committed(seq);
            sync.mark(seq, false, true);
            ctx.syncer.request(&sync);
        }
        Ok(Self {
            in_memory: db.path().is_none(),
            sync,
            db: Mutex::new(Turn {
                db,
                seq,
                alarm: None,
                alarm_by_handler: false,
            }),
            ctx,
            class: addr.class.name.clone(),
            id: addr.id.clone(),
            alarm_key: addr.alarm_key(),
            index_update: Mutex::new(None),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Turn> {
        // A panic inside a storage call leaves the turn to be rolled back; the data is intact.
        self.db.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The name the object was first addressed by, as recorded in its database; records
    /// `name` if none is recorded yet. Objects woken by id alone (alarms) learn their name here.
    pub(crate) fn remember_name(&self, name: Option<&str>) -> Result<Option<String>> {
        self.lock().db.remember_name(name)
    }

    /// Sets when the current turn's storage calls must stop (`None`: no limit).
    pub(crate) fn set_deadline(&self, limit: Option<std::time::Duration>) {
        let at = limit.map_or(u64::MAX, |d| {
            database::process_ms().saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        });
        self.lock().db.deadline.store(at, Ordering::Relaxed);
    }

    /// The runtime's clock.
    pub(crate) fn clock(&self) -> &Arc<dyn Clock> {
        &self.ctx.clock
    }

    /// The limits that apply to this storage.
    pub fn limits(&self) -> &StorageLimits {
        &self.ctx.limits
    }

    /// Commits the writes of the turn so far and waits until they are durable.
    ///
    /// Writes made after `sync` belong to the rest of the turn: if the turn then fails, only
    /// they are rolled back.
    pub async fn sync(&self) -> Result<()> {
        self.finish_turn(true).await?.wait().await
    }

    /// Runs `f` as a nested transaction: its writes are kept if it returns `Ok` and undone if it
    /// returns `Err` (the error is passed on). It nests inside the turn and inside other
    /// transactions; the turn's own failure still undoes everything.
    pub fn transaction<T>(&self, f: impl FnOnce(&Storage) -> Result<T>) -> Result<T> {
        let (name, alarm_before) = {
            let mut turn = self.lock();
            turn.db.txn_for_write()?;
            turn.db.savepoints += 1;
            let name = format!("rookery_txn_{}", turn.db.savepoints);
            turn.db.conn.execute_batch(&format!("SAVEPOINT {name}"))?;
            (name, (turn.alarm, turn.alarm_by_handler))
        };
        let result = f(self);
        let mut turn = self.lock();
        turn.db.savepoints = turn.db.savepoints.saturating_sub(1);
        let end = if result.is_ok() {
            format!("RELEASE {name}")
        } else {
            // The alarm change goes with the rows: the pending index update must agree with
            // the record the rollback restores.
            (turn.alarm, turn.alarm_by_handler) = alarm_before;
            format!("ROLLBACK TO {name}; RELEASE {name}")
        };
        turn.db.conn.execute_batch(&end)?;
        result
    }

    /// Deletes every key, every table of the object's own SQL and the alarm.
    pub fn delete_all(&self) -> Result<()> {
        let mut turn = self.lock();
        let conn = turn.db.txn_for_write()?;
        conn.execute("DELETE FROM main._rookery_kv", [])?;
        conn.execute(
            "DELETE FROM main._rookery_meta WHERE key IN ('alarm', 'alarm_retries')",
            [],
        )?;
        turn.alarm = Some(AlarmChange::Deleted);
        turn.alarm_by_handler = true;
        let conn = turn.db.txn_for_write()?;
        // Parent tables may go before their children; the checks run at commit, when all
        // of them are gone.
        conn.execute_batch("PRAGMA defer_foreign_keys = ON")?;
        let objects: Vec<(String, String)> = conn
            .prepare(
                "SELECT type, name FROM sqlite_schema
                 WHERE type IN ('table', 'view', 'trigger')
                   AND name NOT LIKE '\\_rookery\\_%' ESCAPE '\\'
                   AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'
                 ORDER BY type = 'table'",
            )?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        for (kind, name) in objects {
            let quoted = name.replace('"', "\"\"");
            conn.execute_batch(&format!(
                "DROP {} IF EXISTS \"{quoted}\"",
                kind.to_uppercase()
            ))?;
        }
        Ok(())
    }

    /// Ends the current turn: commits its writes if `commit`, otherwise rolls them back.
    /// Returns the gate that the turn's outputs must pass.
    pub(crate) async fn finish_turn(&self, commit: bool) -> Result<OutputGate> {
        let change = {
            let mut turn = self.lock();
            let change = turn.alarm.take();
            turn.alarm_by_handler = false;
            if !commit {
                turn.db.rollback();
                return Ok(self.sync.gate(turn.seq));
            }
            change
        };
        let version = change.map(|_| self.ctx.alarms.next_version());
        if let (Some(AlarmChange::Set(at)), Some(version)) = (change, version) {
            // The index must know of the alarm before the commit can reach the disk.
            let lowered = self
                .ctx
                .alarms
                .lower(&self.alarm_key, at, version, &self.ctx.syncer)
                .await;
            if let Err(e) = lowered {
                self.lock().db.rollback();
                return Err(e);
            }
        }
        let mut turn = self.lock();
        if turn.db.is_dirty()
            && let Err(e) = self.ctx.check_dir()
        {
            turn.db.rollback();
            return Err(e);
        }
        if !turn.db.commit()? {
            return Ok(self.sync.gate(turn.seq));
        }
        turn.seq += 1;
        let seq = turn.seq;
        drop(turn);
        self.ctx.commits.fetch_add(1, Ordering::Relaxed);
        self.sync.committed(seq);
        let local = self.in_memory || self.ctx.durability == Durability::Relaxed;
        let ack = self.ctx.commit_log.append(&CommitRecord {
            class: &self.class,
            object: &self.id,
            seq,
        });
        match ack {
            None => self.sync.mark(seq, local, true),
            Some(ack) => {
                if local {
                    self.sync.mark(seq, true, false);
                }
                let sync = self.sync.clone();
                tokio::spawn(async move {
                    match ack.await {
                        Ok(Ok(())) => sync.mark(seq, false, true),
                        Ok(Err(e)) => {
                            tracing::error!(error = %e, seq, "the commit log refused a commit");
                            sync.fail();
                        }
                        Err(_) => sync.fail(),
                    }
                });
            }
        }
        if !local {
            self.ctx.syncer.request(&self.sync);
        }
        if let (Some(change), Some(version)) = (change, version) {
            self.index_alarm_when_durable(self.sync.gate(seq), change.at(), version);
        }
        Ok(self.sync.gate(seq))
    }

    /// Once `gate` opens, sets the index entry to exactly `at` (or removes it).
    pub(crate) fn index_alarm_when_durable(&self, gate: OutputGate, at: Option<i64>, version: u64) {
        let ctx = self.ctx.clone();
        let key = self.alarm_key.clone();
        let set = move || {
            if let Err(e) = ctx.alarms.set_exact(&key, at, version) {
                tracing::error!(error = %e, "updating the alarm index");
            }
        };
        if gate.is_open() {
            set();
        } else {
            let update = tokio::spawn(async move {
                // A failed commit leaves the index earlier than the truth, which is safe.
                if gate.wait().await.is_ok() {
                    set();
                }
            });
            *self.index_update.lock().unwrap_or_else(|e| e.into_inner()) = Some(update);
        }
    }

    /// The latest index update still waiting for its commit to be durable, if any: the
    /// scheduler waits for it before it looks at this object's entry again.
    pub(crate) fn take_index_update(&self) -> Option<tokio::task::JoinHandle<()>> {
        self.index_update
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    /// Corrects the index entry to what the object's record says, once what was read is durable.
    pub(crate) fn reindex_alarm(&self, at: Option<i64>) {
        let version = self.ctx.alarms.next_version();
        self.index_alarm_when_durable(self.settled(), at, version);
    }

    /// A gate that opens when everything committed so far is durable.
    pub(crate) fn settled(&self) -> OutputGate {
        let seq = self.lock().seq;
        self.sync.gate(seq)
    }

    /// The object's database file, if it has one.
    pub(crate) fn path(&self) -> Option<PathBuf> {
        self.lock().db.path().map(Path::to_path_buf)
    }

    /// Whether making a commit durable failed; the object must then be reset.
    pub(crate) fn failed(&self) -> bool {
        self.sync.failed()
    }

    /// Closes the database; uncommitted writes are rolled back.
    pub(crate) fn close(self) -> Result<()> {
        let turn = self.db.into_inner().unwrap_or_else(|e| e.into_inner());
        turn.db.close()
    }
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Storage")
            .field("class", &self.class)
            .field("id", &self.id)
            .finish()
    }
}

//! Transactional storage of one object: a KV API and a SQL API over its own SQLite database,
//! committed at the end of every turn and made durable before the turn's outputs are released.

mod alarm;
mod alarm_index;
mod catalog;
mod checkpoint_sync;
mod class_keys;
mod commit_log;
mod database;
mod dir_health;
mod dir_lock;
mod durability;
mod history;
mod inspect;
mod kv;
mod log_record;
mod mem_wal;
mod node_log;
mod object_sync;
mod packed_pages;
mod policy;
mod recovery;
mod restore;
mod sql;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

pub use catalog::Migration;
pub use class_keys::{ClassKey, ClassKeys, LocalClassKeys};
pub use commit_log::{CommitLog, CommitRecord, Grant, Lease, LocalCommitLog};
pub use durability::{Durability, SyncHook};
pub use history::HistoryOptions;
pub use inspect::TableInfo;
pub use kv::ListOptions;
pub use object_sync::OutputGate;
pub use packed_pages::{PAGE_BYTES, Packed, PackedPages, Page, pack_image};
pub use sql::{ColumnIndex, FromSqlValue, Sql, SqlCursor, SqlRow, SqlValue};

pub(crate) use alarm_index::{AlarmIndex, AlarmListener, scan_objects};
pub(crate) use catalog::{Catalog, ClassRecord};
pub(crate) use dir_health::DirHealth;
pub(crate) use dir_lock::DirLock;
pub(crate) use durability::Syncer;
pub(crate) use history::History;
pub(crate) use node_log::{NodeLog, SEGMENT_BYTES};
pub(crate) use object_sync::ObjectSync;
pub(crate) use recovery::recover;

pub(crate) use database::configure_sqlite;
use database::{Closed, Database, FRAME_BYTES};

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
    /// Most SQLite page cache of one live object, in KiB: every live object has its own, so
    /// this bounds memory per object (pages beyond it are read again from the OS cache).
    pub page_cache_kib: u32,
    /// Most prepared statements one live object keeps for reuse.
    pub statement_cache: usize,
}

impl Default for StorageLimits {
    fn default() -> Self {
        Self {
            max_key_bytes: 2 * 1024,
            max_value_bytes: 2 * 1024 * 1024,
            max_batch_keys: 128,
            max_object_bytes: 10 * 1024 * 1024 * 1024,
            page_cache_kib: 32,
            statement_cache: 16,
        }
    }
}

/// What every object's storage shares within a runtime.
pub(crate) struct StorageContext {
    pub(crate) limits: StorageLimits,
    /// Object databases whose files are open now (one descriptor each).
    pub(crate) open_files: Arc<std::sync::atomic::AtomicUsize>,
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
    /// The node log every object's commits go to (`None` in memory).
    pub(crate) log: Option<Arc<NodeLog>>,
    /// The log's retained history (`None` in memory or with history off).
    pub(crate) history: Option<Arc<History>>,
}

impl StorageContext {
    /// Compacts the log's expired history into snapshots (only what size and free space
    /// force, without `by_age`); how many segments it folded.
    pub(crate) fn compact_history(&self, by_age: bool) -> std::io::Result<usize> {
        match (&self.log, &self.history) {
            (Some(log), Some(history)) => history.compact(log, self.clock.now_ms(), by_age),
            _ => Ok(0),
        }
    }

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
    /// Where the object's database lives (`None` in memory).
    db_path: Option<PathBuf>,
    /// The epoch the commit log gave this activation.
    epoch: u64,
    /// The commit log's hold on the object, if it can end.
    lease: Option<Arc<dyn Lease>>,
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
    /// The alarm handler's own record of the alarm (see `alarm.rs`): `Some` while a handler
    /// runs, holding whether object code changed the alarm since the handler began.
    firing: Option<bool>,
    /// The furthest bookmark handed out in the current turn: its outputs wait until the log
    /// is durable through it.
    bookmark: Option<log_record::Lsn>,
}

impl Storage {
    /// Opens the storage of the object at `addr`.
    pub(crate) fn open(addr: &ObjectAddr, ctx: Arc<StorageContext>) -> Result<Self> {
        let location = &addr.location();
        let alarm_key = addr.alarm_key();
        let grant = ctx.commit_log.activate(&addr.class.name, &addr.id)?;
        let (epoch, lease) = (grant.epoch, grant.lease.clone());
        if let (Location::File(path), Some(image)) = (location, &grant.image) {
            restore::install(&ctx, &alarm_key, path, image)?;
        }
        if let Location::File(path) = location
            && let Some(at) = restore::pending(path)?
        {
            restore::run(&ctx, &alarm_key, path, at)?;
        }
        // A WAL at open is a crash's: what it holds that the node log has was replayed into the
        // file at start-up, and the rest never became durable. Only when this process's log
        // still holds commits the file lacks (an earlier activation could not close) does the
        // WAL count, and it is folded into the file at once.
        let behind = ctx.log.as_ref().is_some_and(|log| log.behind(&alarm_key));
        if let (Location::File(path), false) = (location, behind) {
            recovery::discard_wal(path)?;
        }
        let mut db =
            Database::open(location, &ctx.limits, &ctx.open_files).map_err(|e| match e {
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
        if behind {
            db.checkpoint()?;
        }
        let sync = ObjectSync::new(db.path().unwrap_or(Path::new("")), false);
        let storage = Self {
            sync,
            db: Mutex::new(Turn {
                db,
                seq: 0,
                alarm: None,
                alarm_by_handler: false,
                firing: None,
                bookmark: None,
            }),
            ctx,
            class: addr.class.name.clone(),
            id: addr.id.clone(),
            alarm_key,
            epoch,
            lease,
            db_path: match location {
                Location::File(path) => Some(path.clone()),
                Location::Memory => None,
            },
            index_update: Mutex::new(None),
        };
        if grant.image.is_some() {
            // The database came from elsewhere with its alarm: this node's index learns it.
            storage.reindex_alarm(storage.get_alarm()?);
        }
        Ok(storage)
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
            turn.db.txn()?.execute_batch(&format!("SAVEPOINT {name}"))?;
            (name, (turn.alarm, turn.alarm_by_handler, turn.firing))
        };
        let result = f(self);
        let mut turn = self.lock();
        turn.db.savepoints = turn.db.savepoints.saturating_sub(1);
        let end = if result.is_ok() {
            format!("RELEASE {name}")
        } else {
            // The alarm change goes with the rows: the pending index update must agree with
            // the record the rollback restores.
            (turn.alarm, turn.alarm_by_handler, turn.firing) = alarm_before;
            format!("ROLLBACK TO {name}; RELEASE {name}")
        };
        turn.db.txn()?.execute_batch(&end)?;
        result
    }

    /// A bookmark for the object's state as of now (everything committed so far), for
    /// [`Storage::on_next_session_restore_bookmark`].
    pub fn get_current_bookmark(&self) -> Result<String> {
        let (log, _) = self.history()?;
        Ok(self.hand_out(log.next_lsn()))
    }

    /// A bookmark for the object's state at `time_ms` (ms since the Unix epoch, by the
    /// runtime's clock): after every commit made at or before it. Refused when that time is
    /// older than the retained history.
    pub fn get_bookmark_for_time(&self, time_ms: i64) -> Result<String> {
        let (log, history) = self.history()?;
        let at = history.bookmark_for_time(log, time_ms)?;
        Ok(self.hand_out(at))
    }

    /// Asks for the object to start over at `bookmark` the next time it opens (call
    /// [`ObjectState::abort`](crate::ObjectState::abort) to make that now). Returns a bookmark
    /// of the state as of now, which undoes the restore.
    pub fn on_next_session_restore_bookmark(&self, bookmark: &str) -> Result<String> {
        let at = history::parse_bookmark(bookmark)?;
        let (log, history) = self.history()?;
        history.check(log, at)?;
        let Some(path) = &self.db_path else {
            return Err(Error::BadRequest(
                "an object kept in memory has no history".into(),
            ));
        };
        restore::request(path, at)?;
        Ok(self.hand_out(log.next_lsn()))
    }

    /// Writes bookmark `at` and holds the turn's outputs until the log is durable through it:
    /// after a crash, positions that never became durable are given to new records, and a
    /// bookmark among them would restore to a state it never named.
    fn hand_out(&self, at: log_record::Lsn) -> String {
        let mut turn = self.lock();
        turn.bookmark = turn.bookmark.max(Some(at));
        history::format_bookmark(at)
    }

    fn history(&self) -> Result<(&NodeLog, &History)> {
        match (&self.ctx.log, &self.ctx.history, &self.db_path) {
            (Some(log), Some(history), Some(_)) => Ok((log, history)),
            (Some(_), None, Some(_)) => Err(Error::BadRequest(
                "point-in-time recovery is off on this server (history retention is zero)".into(),
            )),
            _ => Err(Error::BadRequest(
                "an object kept in memory has no history".into(),
            )),
        }
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
        if let Some(touched) = turn.firing.as_mut() {
            *touched = true;
        }
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
        let gate = self.commit_turn(commit).await;
        let bookmark = self.lock().bookmark.take();
        let gate = gate?;
        match (bookmark, &self.ctx.log) {
            (Some(at), Some(log)) if log.synced() < at => {
                self.ctx.syncer.log_appended();
                Ok(gate.and_logged(log.durable_wait(at)))
            }
            _ => Ok(gate),
        }
    }

    /// Commits (or rolls back) the turn's transaction; the gate waits for the commit.
    async fn commit_turn(&self, commit: bool) -> Result<OutputGate> {
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
        self.ctx.commits.fetch_add(1, Ordering::Relaxed);
        self.sync.committed(seq);
        let relaxed = self.ctx.durability == Durability::Relaxed;
        let logged = match &self.ctx.log {
            Some(log) => self.log_commit(log, &mut turn.db, seq, relaxed),
            None => Ok(None),
        };
        drop(turn);
        let logged = match logged {
            // Strict: the gate opens when the log round that holds the record is synced.
            Ok(Some(logged)) if !relaxed => {
                self.ctx.syncer.log_appended();
                Some(logged)
            }
            // Relaxed: the record is written; the sync thread syncs the log on its timer (a
            // signal here would make every commit a sync round).
            Ok(Some(logged)) => {
                self.sync.mark(seq, true, false);
                Some(logged)
            }
            // No log (memory): as durable as it gets.
            Ok(None) => {
                self.sync.mark(seq, true, false);
                None
            }
            Err(e) => {
                // The commit stands in SQLite but can never become durable: the object resets,
                // and the node takes no writes until it restarts (and recovers from the log).
                tracing::error!(error = %e, "appending to the node log failed");
                self.sync.fail();
                return Err(Error::StorageUnavailable(format!(
                    "the node log cannot take writes ({e}); restart the server"
                )));
            }
        };
        let ack = self.ctx.commit_log.append(&CommitRecord {
            class: &self.class,
            object: &self.id,
            seq,
            epoch: self.epoch,
            lsn: logged.as_ref().map(|l| l.lsn),
            db_pages: logged.as_ref().map_or(0, |l| l.db_pages),
            pages: match &logged {
                Some(logged) if self.ctx.commit_log.wants_pages() => logged.packed.view(),
                _ => PackedPages::new(0, &[]),
            },
            alarm: change.map(AlarmChange::at),
        });
        match ack {
            None => self.sync.mark(seq, false, true),
            Some(ack) => {
                let sync = self.sync.clone();
                tokio::spawn(async move {
                    match ack.await {
                        Ok(Ok(())) => sync.mark(seq, false, true),
                        Ok(Err(Error::Fenced(reason))) => {
                            tracing::warn!(
                                reason,
                                seq,
                                "the commit log fenced this node off the object"
                            );
                            sync.fence();
                        }
                        Ok(Err(e)) => {
                            tracing::error!(error = %e, seq, "the commit log refused a commit");
                            sync.fail();
                        }
                        Err(_) => sync.fail(),
                    }
                });
            }
        }
        if let (Some(change), Some(version)) = (change, version) {
            self.index_alarm_when_durable(self.sync.gate(seq), change.at(), version);
        }
        Ok(self.sync.gate(seq))
    }

    /// Appends the commit just made (sequence `seq`) to the node log: the frames it wrote to
    /// the WAL, read back. What was logged, if anything.
    fn log_commit(
        &self,
        log: &NodeLog,
        db: &mut Database,
        seq: u64,
        write_now: bool,
    ) -> Result<Option<Logged>> {
        let Some((db_pages, raw)) = db.take_commit_frames()? else {
            return Ok(None);
        };
        let frames: Vec<log_record::Frame<'_>> = raw
            .chunks_exact(FRAME_BYTES)
            .map(|f| log_record::Frame {
                pgno: u32::from_be_bytes([f[0], f[1], f[2], f[3]]),
                page: &f[24..],
            })
            .collect();
        let packed = log_record::pack(&frames);
        let lsn = log.append_commit(
            self.ctx.clock.now_ms(),
            &self.alarm_key,
            seq,
            db_pages,
            &packed,
            &self.sync,
            write_now,
        )?;
        db.frames_logged();
        Ok(Some(Logged {
            lsn,
            db_pages,
            packed,
        }))
    }

    /// Whether the node log holds, durably, every commit of this object.
    fn logged(&self) -> bool {
        match &self.ctx.log {
            Some(log) => log
                .last_uncovered(&self.alarm_key)
                .is_none_or(|last| log.synced() > last),
            None => true,
        }
    }

    /// Waits until the node log holds, durably, every commit of this object (in relaxed
    /// durability, outputs go before that; a checkpoint may not).
    pub(crate) async fn wait_logged(&self) {
        let Some(log) = &self.ctx.log else { return };
        let Some(last) = log.last_uncovered(&self.alarm_key) else {
            return;
        };
        self.ctx.syncer.log_appended();
        let mut synced = log.synced_watch();
        let _ = synced.wait_for(|s| *s > last || log.failed()).await;
    }

    /// Whether the WAL is long enough to fold into the file: the caller waits for the log
    /// ([`Storage::wait_logged`]) and then calls [`Storage::maybe_checkpoint`], so that an
    /// object that never stops writing is still checkpointed (and its log segments freed).
    pub(crate) fn checkpoint_due(&self) -> bool {
        self.ctx.log.is_some() && self.lock().db.wal_frames() >= CHECKPOINT_FRAMES
    }

    /// Folds a long WAL into the database file once the log holds it durably, between turns:
    /// the WAL stays short, and the log's old segments can go.
    pub(crate) fn maybe_checkpoint(&self) {
        self.checkpoint_from(CHECKPOINT_FRAMES);
    }

    /// Folds the WAL into the database file if it holds at least `frames` frames and the log
    /// holds all of them durably; the file's sync and the log's record follow in a sync round.
    fn checkpoint_from(&self, frames: u32) {
        let Some(log) = &self.ctx.log else { return };
        let mut turn = self.lock();
        let held = turn.db.wal_frames();
        if held == 0 || held < frames || !self.logged() || log.failed() {
            return;
        }
        let Some(through) = log.last_uncovered(&self.alarm_key) else {
            return;
        };
        if let Err(e) = turn.db.checkpoint() {
            tracing::warn!(error = %e, "checkpointing the object's WAL");
            return;
        }
        if let Some(path) = turn.db.path() {
            match std::fs::File::open(path) {
                Ok(file) => self
                    .ctx
                    .syncer
                    .checkpointed(file, self.alarm_key.clone(), through),
                Err(e) => tracing::warn!(error = %e, "opening the object's file to sync it"),
            }
        }
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

    /// Closes the file of the idle object; the next storage call reopens it. A WAL whose
    /// commits the log holds durably is folded into the file first, so that closing frees its
    /// memory too; one with commits still on their way stays in memory as it is. Returns
    /// whether the file is closed.
    pub(crate) fn close_files(&self) -> bool {
        self.checkpoint_from(1);
        match self.lock().db.close_files() {
            Ok(closed) => closed,
            Err(e) => {
                tracing::warn!(error = %e, "closing the object's files");
                false
            }
        }
    }

    /// Gives back memory without closing the files: the WAL folded into the file (once the
    /// log holds it durably) and the page cache and cached statements freed.
    pub(crate) fn shrink(&self) {
        self.checkpoint_from(1);
        self.lock().db.release_memory();
    }

    /// Whether the object's files are open (it holds descriptors).
    pub(crate) fn files_open(&self) -> bool {
        self.lock().db.files_open()
    }

    /// Whether the object's files were reopened since the last call.
    pub(crate) fn take_reopened(&self) -> bool {
        self.lock().db.take_reopened()
    }

    /// Whether the commit log's hold on the object ended (another node may own it now).
    pub(crate) fn lease_lost(&self) -> bool {
        self.lease.as_ref().is_some_and(|l| !l.holds())
    }

    /// Whether making a commit durable failed, or the commit log's hold on the object ended;
    /// the object must then be reset.
    pub(crate) fn failed(&self) -> bool {
        self.sync.failed() || self.lease_lost()
    }

    /// Closes the database; uncommitted writes are rolled back. Once the node log holds every
    /// commit durably, the WAL is folded into the file, the file synced and that recorded in
    /// the log (or an emptied file removed, and that recorded); otherwise the WAL is left for
    /// recovery.
    pub(crate) fn close(self) -> Result<()> {
        let checkpoint = self.logged() && !self.ctx.log.as_ref().is_some_and(|l| l.failed());
        let through = self
            .ctx
            .log
            .as_ref()
            .and_then(|log| log.last_uncovered(&self.alarm_key));
        let turn = self.db.into_inner().unwrap_or_else(|e| e.into_inner());
        let closed = turn.db.close(checkpoint)?;
        let Some(log) = &self.ctx.log else {
            return Ok(());
        };
        let now = self.ctx.clock.now_ms();
        match closed {
            Closed::Kept(path) => {
                if let Some(through) = through {
                    std::fs::File::open(&path)?.sync_data()?;
                    log.append_cover(now, &self.alarm_key, through, false);
                }
            }
            Closed::Removed(path) => {
                // The removal must be durable before the log says so.
                if let Some(dir) = path.parent() {
                    crate::durable_dir::sync_dir(dir)?;
                }
                log.append_cover(now, &self.alarm_key, through.unwrap_or(0), true);
            }
            Closed::NoFile | Closed::Left => {}
        }
        Ok(())
    }
}

/// Bytes of heap SQLite holds now, over every connection of the process (its own count), and
/// the objects' WALs held in memory.
pub(crate) fn sqlite_memory_used() -> u64 {
    // SAFETY: a plain read of SQLite's memory statistics; callable from any thread.
    let used = unsafe { rusqlite::ffi::sqlite3_memory_used() };
    // The objects' WALs are in memory too (outside SQLite's own count).
    u64::try_from(used)
        .unwrap_or(0)
        .saturating_add(mem_wal::bytes())
}

/// Bytes the objects' WALs hold in memory, over the process.
pub(crate) fn wal_bytes() -> u64 {
    mem_wal::bytes()
}

/// A commit as the node log took it.
struct Logged {
    lsn: log_record::Lsn,
    db_pages: u32,
    /// The commit's pages, as the log took them.
    packed: log_record::Packed,
}

/// A WAL longer than this many frames is folded into its file between turns.
const CHECKPOINT_FRAMES: u32 = 1000;

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Storage")
            .field("class", &self.class)
            .field("id", &self.id)
            .finish()
    }
}

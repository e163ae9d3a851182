//! One object's SQLite database and the transaction that spans a turn.
//!
//! Every object has its own database file in WAL mode, its WAL kept in memory (`mem_wal.rs`).
//! A turn's storage operations run inside one SQLite transaction that the runtime opens lazily
//! at the first operation and commits when the turn succeeds, or rolls back when it fails. The
//! database runs with `synchronous = OFF`: a commit's frames are read back from the WAL and
//! appended to the node log, the durability pipeline (`durability.rs`) makes the log durable
//! before the turn's outputs leave, and the WAL is checkpointed into the file only once the log
//! holds every commit in it.
//!
//! The object's own SQL runs under an authorizer (`policy.rs`) that keeps it away from the
//! runtime's tables and from transaction control, attachments and durability settings.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rusqlite::config::DbConfig;
use rusqlite::{Connection, OpenFlags, OptionalExtension};

use super::StorageLimits;
use super::mem_wal;
use super::policy::{Policy, RESERVED_PREFIX, reserved};
use crate::addr::Location;
use crate::error::{Error, Result};

/// Page size used for new databases; also the unit of the size limit.
pub(crate) const PAGE_SIZE: u64 = 4096;

/// An open object database and the state of the current turn's transaction.
pub(crate) struct Database {
    /// The connection; `None` while the files are closed (`close_files`) until the next use.
    conn: Option<Connection>,
    /// Connections to object files open in the runtime, this one's included while open.
    open_files: Arc<AtomicUsize>,
    /// Whether this database is counted in `open_files`.
    counted: bool,
    /// The files were opened (made, or reopened) since the last `take_reopened`.
    reopened: bool,
    location: Location,
    /// The file does not exist yet; `conn` is an empty in-memory stand-in.
    absent: bool,
    /// The size limit, applied to every connection.
    max_bytes: u64,
    /// Most page cache of the connection, in KiB.
    cache_kib: u32,
    /// Most prepared statements the connection keeps.
    statements: usize,
    /// The object's name, recorded with its first write.
    pending_name: Option<String>,
    /// Frames in the WAL after the last commit, as SQLite's WAL hook reports them.
    wal_frames: Arc<AtomicU32>,
    /// Frames of the WAL already handed to the node log.
    logged_frames: u32,
    /// Why the last checkpoint failed, if it did: a WAL that cannot be folded into the file
    /// only grows, and past `WAL_LIMIT_FRAMES` commits are refused with this reason.
    checkpoint_failure: Option<CheckpointFailure>,
    in_txn: bool,
    dirty: bool,
    /// Depth of nested `transaction` savepoints.
    pub(crate) savepoints: u32,
    /// Whether the statements being prepared are the object's own SQL.
    user_sql: Arc<AtomicBool>,
    policy: Arc<Policy>,
    /// When the current turn must stop, in ms on the process clock (`u64::MAX`: no turn).
    pub(crate) deadline: Arc<AtomicU64>,
}

/// Milliseconds since the process's first use of this clock; monotonic.
pub(crate) fn process_ms() -> u64 {
    static START: std::sync::LazyLock<Instant> = std::sync::LazyLock::new(Instant::now);
    u64::try_from(START.elapsed().as_millis()).unwrap_or(u64::MAX)
}

impl Database {
    /// Opens the database at `location`, within `limits` (size, page cache, statements). A file
    /// that does not exist yet is not made here: until the object first writes, an empty
    /// database in memory stands in for it, so that reading an object that never wrote leaves
    /// nothing on disk.
    /// `open_files` counts the runtime's open database files.
    pub(crate) fn open(
        location: &Location,
        limits: &StorageLimits,
        open_files: &Arc<AtomicUsize>,
    ) -> Result<Self> {
        configure_sqlite();
        let (conn, absent) = match location {
            Location::File(path) if !path.exists() => (open_memory()?, true),
            Location::File(path) => (open_file(path, false)?, false),
            Location::Memory => (open_memory()?, false),
        };
        let mut db = Self {
            conn: Some(conn),
            open_files: open_files.clone(),
            counted: false,
            reopened: false,
            location: location.clone(),
            absent,
            max_bytes: limits.max_object_bytes,
            cache_kib: limits.page_cache_kib,
            statements: limits.statement_cache,
            pending_name: None,
            wal_frames: Arc::new(AtomicU32::new(0)),
            logged_frames: 0,
            checkpoint_failure: None,
            in_txn: false,
            dirty: false,
            savepoints: 0,
            user_sql: Arc::new(AtomicBool::new(false)),
            policy: Arc::new(Policy::default()),
            deadline: Arc::new(AtomicU64::new(u64::MAX)),
        };
        db.count_open(matches!(location, Location::File(_)) && !absent);
        db.prepare_conn()?;
        Ok(db)
    }

    /// The open connection (every caller reopens closed files first, with `resume`).
    fn conn(&self) -> Result<&Connection> {
        self.conn
            .as_ref()
            .ok_or_else(|| Error::msg("the object's database files are closed"))
    }

    /// The open connection, to set its hooks.
    fn conn_mut(&mut self) -> Result<&mut Connection> {
        self.conn
            .as_mut()
            .ok_or_else(|| Error::msg("the object's database files are closed"))
    }

    /// Keeps the runtime's count of open database files.
    fn count_open(&mut self, open: bool) {
        if open != self.counted {
            if open {
                self.open_files.fetch_add(1, Ordering::Relaxed);
            } else {
                self.open_files.fetch_sub(1, Ordering::Relaxed);
            }
            self.counted = open;
        }
    }

    /// Whether the connection (and with it the database file and the WAL) is open.
    pub(crate) fn files_open(&self) -> bool {
        self.conn.is_some() && self.counted
    }

    /// Whether the files were reopened since the last call.
    pub(crate) fn take_reopened(&mut self) -> bool {
        std::mem::take(&mut self.reopened)
    }

    /// Closes the connection of an idle object, and with it the database file, when every
    /// commit it made is in the node log (durable or not: the WAL, in memory, is what an open
    /// connection would have read too). Nothing is checkpointed here (`Storage::close_files`
    /// checkpoints first when it may) and the WAL stays as it is; the next storage call
    /// reopens the file. Returns whether it is closed now.
    pub(crate) fn close_files(&mut self) -> Result<bool> {
        if self.conn.is_none() {
            return Ok(true);
        }
        if self.absent
            || !matches!(self.location, Location::File(_))
            || self.in_txn
            || self.logged_frames != self.wal_frames()
        {
            return Ok(false);
        }
        let Some(conn) = self.conn.take() else {
            return Ok(true);
        };
        self.count_open(false);
        conn.close().map_err(|(_, e)| Error::Sqlite(e))?;
        Ok(true)
    }

    /// Gives back the memory the connection holds beyond its own: the page cache's unused
    /// pages and the cached statements (both made again as used). The files stay open.
    pub(crate) fn release_memory(&mut self) {
        if self.in_txn {
            return;
        }
        let Some(conn) = self.conn.as_ref() else {
            return;
        };
        conn.flush_prepared_statement_cache();
        // SAFETY: the handle is this open connection's, used on this thread only; SQLite
        // frees only the cache pages no statement holds (none do between turns).
        unsafe {
            rusqlite::ffi::sqlite3_db_release_memory(conn.handle());
        }
    }

    /// Reopens files closed by `close_files`. SQLite reads the WAL back (the exclusive lock
    /// keeps its index in memory) and finds exactly the frames it held: only whole commits,
    /// all of them in the node log, so the frame counts stay right.
    fn resume(&mut self) -> Result<()> {
        if self.conn.is_some() {
            return Ok(());
        }
        let Location::File(path) = &self.location else {
            return Err(Error::msg("a database in memory cannot be reopened"));
        };
        self.conn = Some(open_file(path, false)?);
        self.count_open(true);
        self.reopened = true;
        self.prepare_conn()
    }

    /// Readies a fresh connection: safety settings, the runtime's tables, the size limit, the
    /// SQL policy and the turn's time limit.
    fn prepare_conn(&mut self) -> Result<()> {
        let file = matches!(self.location, Location::File(_)) && !self.absent;
        let frames = self.wal_frames.clone();
        let deadline = self.deadline.clone();
        let user_sql = self.user_sql.clone();
        let policy = self.policy.clone();
        let (cache_kib, max_bytes, statements) = (self.cache_kib, self.max_bytes, self.statements);
        let conn = self.conn_mut()?;
        // Refuse writes to the schema table and other ways to corrupt the file from SQL.
        conn.set_db_config(DbConfig::SQLITE_DBCONFIG_DEFENSIVE, true)?;
        // SQLite's default page cache (2 MB, with the first 20 pages allocated at once) and
        // lookaside (120 KB, all touched when the connection opens) are sized for one big
        // database; here every live object has a connection, and most objects are small.
        // Pages beyond the cache are read again from the operating system's cache.
        conn.execute_batch(&format!(
            "PRAGMA cache_size = -{};
             PRAGMA max_page_count = {};
             BEGIN;
             CREATE TABLE IF NOT EXISTS main._rookery_kv (
                 key BLOB PRIMARY KEY,
                 value BLOB NOT NULL
             ) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS main._rookery_meta (
                 key TEXT PRIMARY KEY,
                 value ANY
             ) WITHOUT ROWID;
             COMMIT;",
            cache_kib.max(1),
            (max_bytes / PAGE_SIZE).max(16)
        ))?;
        conn.set_prepared_statement_cache_capacity(statements);
        if file {
            // Checkpoints are the runtime's alone (see `checkpoint`), also at close.
            conn.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)?;
            // The hook reports the WAL's size after every commit, so each commit's frames can
            // go to the node log. It also turns SQLite's automatic checkpoints off: the runtime
            // checkpoints only once the node log holds what is copied.
            conn.wal_hook(Some(
                move |_: &mut rusqlite::hooks::Wal, n: std::ffi::c_int| {
                    frames.store(u32::try_from(n).unwrap_or(0), Ordering::Release);
                    Ok(())
                },
            ))?;
        }
        conn.authorizer(Some(move |ctx: rusqlite::hooks::AuthContext<'_>| {
            if user_sql.load(Ordering::Relaxed) {
                policy.judge(&ctx)
            } else {
                rusqlite::hooks::Authorization::Allow
            }
        }))?;
        // A turn's time limit must also stop runaway SQL, which never yields to the runtime.
        conn.progress_handler(
            10_000,
            Some(move || process_ms() > deadline.load(Ordering::Relaxed)),
        )?;
        Ok(())
    }

    /// The name the object was first addressed by, as recorded in its database; records
    /// `name` (now, or with the first write if the file is not made yet) if none is recorded.
    pub(crate) fn remember_name(&mut self, name: Option<&str>) -> Result<Option<String>> {
        self.resume()?;
        let stored: Option<String> = self
            .conn()?
            .prepare_cached("SELECT value FROM main._rookery_meta WHERE key = 'name'")?
            .query_row([], |r| r.get(0))
            .optional()?;
        if let (None, Some(name)) = (&stored, name) {
            if self.absent {
                self.pending_name = Some(name.to_string());
            } else {
                self.conn()?
                    .prepare_cached(
                        "INSERT INTO main._rookery_meta (key, value) VALUES ('name', ?1)",
                    )?
                    .execute([name])?;
            }
        }
        Ok(stored)
    }

    /// Makes the object's file, for its first write: the in-memory stand-in held nothing but
    /// reads, so the turn goes on in a transaction on the file.
    fn materialize(&mut self) -> Result<()> {
        let Location::File(path) = &self.location else {
            return Ok(());
        };
        if !self.absent {
            return Ok(());
        }
        let conn = open_file(path, true).map_err(|e| match e {
            // The shard directory is gone: the data directory was removed under us.
            Error::Sqlite(e) if e.sqlite_error_code() == Some(rusqlite::ErrorCode::CannotOpen) => {
                Error::StorageUnavailable(format!("cannot create {}: {e}", path.display()))
            }
            e => e,
        })?;
        if let Some(stand_in) = &self.conn
            && self.in_txn
            && !stand_in.is_autocommit()
        {
            // Only reads ran on the stand-in: nothing to carry over.
            let _ = stand_in.execute_batch("ROLLBACK");
        }
        self.in_txn = false;
        self.savepoints = 0;
        self.conn = Some(conn);
        self.absent = false;
        self.count_open(true);
        self.reopened = true;
        self.prepare_conn()?;
        if let Some(name) = self.pending_name.take() {
            self.txn()?
                .prepare_cached(
                    "INSERT OR IGNORE INTO main._rookery_meta (key, value) VALUES ('name', ?1)",
                )?
                .execute([name])?;
        }
        Ok(())
    }

    /// The file of the database, if it has one.
    pub(crate) fn path(&self) -> Option<&Path> {
        match &self.location {
            Location::File(path) => Some(path),
            Location::Memory => None,
        }
    }

    /// The connection, inside the turn's transaction (opened now if needed).
    pub(crate) fn txn(&mut self) -> Result<&Connection> {
        self.resume()?;
        if !self.in_txn {
            // Cached: every turn that touches storage begins, and parsing it each time showed.
            self.conn()?.prepare_cached("BEGIN")?.execute([])?;
            self.in_txn = true;
        } else if self.conn()?.is_autocommit() {
            // SQLite rolled the whole transaction back after an error (e.g. a full disk).
            // Going on would run later writes outside any transaction.
            return Err(Error::msg(
                "the turn's transaction was aborted by an earlier storage error",
            ));
        }
        self.conn()
    }

    /// The connection, inside the turn's transaction, for an operation that writes (making
    /// the object's file first if it has none).
    pub(crate) fn txn_for_write(&mut self) -> Result<&Connection> {
        if self.absent {
            self.materialize()?;
        }
        self.dirty = true;
        self.txn()
    }

    /// Runs `f` with the object's own SQL judged by the policy; maps refusals to clear errors.
    /// On an object with no file yet, SQL that only reads runs on the empty stand-in; SQL that
    /// changes anything is undone there and runs again on the file, made for it.
    pub(crate) fn as_user<T>(
        &mut self,
        f: impl Fn(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T> {
        if self.absent {
            let changes = self.conn()?.total_changes();
            let schema = self.schema_version()?;
            let (result, changed) = self.user_call(&f, true)?;
            if !changed
                && self.conn()?.total_changes() == changes
                && self.schema_version()? == schema
            {
                return result;
            }
            self.materialize()?;
        }
        self.dirty = true;
        self.user_call(&f, false).map(|(result, _)| result)?
    }

    /// One call of the object's SQL in its own savepoint; with `probe`, the savepoint is
    /// always undone. Returns the result and whether the schema changed.
    fn user_call<T>(
        &mut self,
        f: &impl Fn(&Connection) -> rusqlite::Result<T>,
        probe: bool,
    ) -> Result<(Result<T>, bool)> {
        self.txn()?;
        let conn = self.conn()?;
        // Each call is all or nothing, and can be undone if it turns out to have renamed
        // something into the runtime's names (the authorizer never sees a rename's new name).
        conn.execute_batch("SAVEPOINT rookery_sql")?;
        let schema_before = self.schema_version()?;
        self.policy.clear();
        self.user_sql.store(true, Ordering::Relaxed);
        let result = f(conn);
        self.user_sql.store(false, Ordering::Relaxed);
        let result = result.map_err(|e| match self.policy.take_refusal() {
            Some(why) => Error::SqlRefused(why),
            None => map_sqlite(conn, e),
        });
        let schema_changed = self.schema_version()? != schema_before;
        let result = match result {
            Ok(value) if schema_changed => self.check_reserved_names().map(|()| value),
            other => other,
        };
        let end = if result.is_ok() && !probe {
            "RELEASE rookery_sql"
        } else {
            "ROLLBACK TO rookery_sql; RELEASE rookery_sql"
        };
        if !conn.is_autocommit() {
            conn.execute_batch(end)?;
        }
        Ok((result, schema_changed))
    }

    fn schema_version(&self) -> Result<i64> {
        Ok(self
            .conn()?
            .query_row("PRAGMA main.schema_version", [], |r| r.get(0))?)
    }

    /// Refuses a schema with runtime names other than the runtime's own tables.
    fn check_reserved_names(&self) -> Result<()> {
        let mut stmt = self
            .conn()?
            .prepare_cached("SELECT name FROM main.sqlite_schema")?;
        let names = stmt.query_map([], |r| r.get::<_, String>(0))?;
        for name in names {
            let name = name?;
            if reserved(&name) && name != "_rookery_kv" && name != "_rookery_meta" {
                return Err(Error::SqlRefused(format!(
                    "{name:?}: names starting with {RESERVED_PREFIX} belong to the runtime"
                )));
            }
        }
        Ok(())
    }

    /// Whether the turn's transaction has written something.
    pub(crate) fn is_dirty(&self) -> bool {
        self.in_txn && self.dirty
    }

    /// Commits the turn's transaction; returns whether it wrote anything.
    pub(crate) fn commit(&mut self) -> Result<bool> {
        if !self.in_txn {
            return Ok(false);
        }
        if self.conn()?.is_autocommit() {
            self.in_txn = false;
            self.dirty = false;
            return Err(Error::msg(
                "the turn's transaction was aborted by an earlier storage error",
            ));
        }
        let wrote = self.dirty;
        if wrote && self.wal_frames() >= WAL_LIMIT_FRAMES {
            // The WAL lives in memory and is folded into the file only by checkpoints: while
            // those fail, memory must stay bounded and the reason reach the client.
            self.rollback();
            return Err(match self.checkpoint_failure {
                Some(CheckpointFailure::DiskFull) => Error::InsufficientStorage(
                    "the disk is full: the object's changes cannot be written to its file".into(),
                ),
                Some(CheckpointFailure::Other) | None => Error::StorageUnavailable(
                    "the object's changes cannot be written to its file".into(),
                ),
            });
        }
        let committed = self
            .conn()?
            .prepare_cached("COMMIT")
            .and_then(|mut commit| commit.execute([]).map(drop));
        match committed {
            Ok(()) => {
                self.in_txn = false;
                self.dirty = false;
                self.savepoints = 0;
                Ok(wrote)
            }
            Err(e) => {
                let e = match &self.conn {
                    Some(conn) => map_sqlite(conn, e),
                    None => Error::Sqlite(e),
                };
                self.rollback();
                Err(e)
            }
        }
    }

    /// Rolls the turn's transaction back, leaving storage as it was before the turn.
    pub(crate) fn rollback(&mut self) {
        if self.in_txn {
            if let Some(conn) = &self.conn
                && !conn.is_autocommit()
                && let Err(e) = conn.execute_batch("ROLLBACK")
            {
                tracing::warn!(error = %e, "rollback failed");
            }
            self.in_txn = false;
            self.dirty = false;
            self.savepoints = 0;
        }
    }

    /// Whether the object stores nothing: no key, no table of its own, no alarm.
    fn is_empty(&self) -> Result<bool> {
        Ok(self.conn()?.query_row(
            "SELECT NOT EXISTS (SELECT 1 FROM main._rookery_kv)
                AND NOT EXISTS (SELECT 1 FROM main._rookery_meta
                                WHERE key IN ('alarm', 'alarm_retries'))
                AND NOT EXISTS (SELECT 1 FROM main.sqlite_schema
                                WHERE name NOT LIKE '\\_rookery\\_%' ESCAPE '\\'
                                  AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\')",
            [],
            |r| r.get(0),
        )?)
    }

    /// Closes the database. With `checkpoint` (the node log holds every commit durably), the
    /// WAL is folded into the file first (unsynced: the caller syncs it), and a file that holds
    /// nothing any more is removed: an object that stores nothing has no file. Without, the WAL
    /// is left as it is, for recovery.
    pub(crate) fn close(mut self, checkpoint: bool) -> Result<Closed> {
        self.rollback();
        if checkpoint {
            // The files were closed while idle: the checkpoint (and the look at whether the
            // object still stores anything) needs them.
            self.resume()?;
        }
        let (path, empty) = match &self.location {
            // Closed files hold what they held when the object went idle: not nothing,
            // unless the object left them empty (then it is looked at when next opened).
            Location::File(path) if !self.absent => {
                (Some(path.clone()), self.conn.is_some() && self.is_empty()?)
            }
            _ => (None, false),
        };
        if checkpoint {
            self.checkpoint()?;
        }
        self.count_open(false);
        if let Some(conn) = self.conn.take() {
            conn.close().map_err(|(_, e)| Error::Sqlite(e))?;
        }
        let Some(path) = path else {
            return Ok(Closed::NoFile);
        };
        if !checkpoint {
            // Commits the log never took are cut from the WAL: what stays is what the log has.
            let keep = WAL_HEADER_BYTES + u64::from(self.logged_frames) * FRAME_BYTES as u64;
            if self.logged_frames == 0 {
                mem_wal::discard(&path);
            } else {
                mem_wal::truncate(&path, keep);
            }
            return Ok(Closed::Left);
        }
        mem_wal::discard(&path);
        // The WAL is empty now; a database file without its WAL is whole.
        let removed = if empty {
            ["-wal", "-shm", ""].as_slice()
        } else {
            ["-wal", "-shm"].as_slice()
        };
        for suffix in removed {
            let mut file = path.as_os_str().to_owned();
            file.push(suffix);
            match std::fs::remove_file(std::path::PathBuf::from(file)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(if empty {
            Closed::Removed(path)
        } else {
            Closed::Kept(path)
        })
    }

    /// The frames the last commit added to the WAL, read back for the node log; `None` for a
    /// database kept in memory. Returns the database size in pages after the commit and the
    /// raw frames (24-byte header and page each).
    pub(crate) fn take_commit_frames(&mut self) -> Result<Option<(u32, Vec<u8>)>> {
        let Location::File(path) = &self.location else {
            return Ok(None);
        };
        if self.absent {
            return Ok(None);
        }
        let now = self.wal_frames.load(Ordering::Acquire);
        // Only the runtime's own checkpoints restart the WAL (and reset the count); a smaller
        // count would mean a restart it did not make.
        let from = if now < self.logged_frames {
            tracing::warn!("the WAL restarted unexpectedly; logging it whole");
            0
        } else {
            self.logged_frames
        };
        if now == from {
            return Ok(None);
        }
        let count = (now - from) as usize;
        let mut frames = vec![0u8; count * FRAME_BYTES];
        let at = WAL_HEADER_BYTES + u64::from(from) * FRAME_BYTES as u64;
        read_wal(self.conn()?, path, &mut frames, at)?;
        let last = &frames[(count - 1) * FRAME_BYTES..];
        let db_pages = u32::from_be_bytes([last[4], last[5], last[6], last[7]]);
        if db_pages == 0 {
            return Err(Error::msg(
                "the last frame of a commit is not a commit frame",
            ));
        }
        Ok(Some((db_pages, frames)))
    }

    /// Records that the frames read by the last `take_commit_frames` are in the node log.
    pub(crate) fn frames_logged(&mut self) {
        self.logged_frames = self.wal_frames.load(Ordering::Acquire);
    }

    /// Frames in the WAL now.
    pub(crate) fn wal_frames(&self) -> u32 {
        self.wal_frames.load(Ordering::Acquire)
    }

    /// Copies the WAL into the database file and empties it (no sync: the caller syncs the
    /// file, and may only call this once the node log holds every commit in the WAL).
    pub(crate) fn checkpoint(&mut self) -> Result<()> {
        if self.absent || !matches!(self.location, Location::File(_)) {
            return Ok(());
        }
        self.resume()?;
        let result = self
            .conn()?
            .query_row("PRAGMA main.wal_checkpoint(TRUNCATE)", [], |r| {
                r.get::<_, i64>(0)
            });
        let busy = match result {
            Ok(busy) => busy,
            Err(e) => {
                let full = e.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull);
                self.checkpoint_failure = Some(if full {
                    CheckpointFailure::DiskFull
                } else {
                    CheckpointFailure::Other
                });
                return Err(e.into());
            }
        };
        if busy != 0 {
            self.checkpoint_failure = Some(CheckpointFailure::Other);
            return Err(Error::msg("the WAL checkpoint could not complete"));
        }
        self.checkpoint_failure = None;
        self.wal_frames.store(0, Ordering::Release);
        self.logged_frames = 0;
        Ok(())
    }
}

/// What the admin tools may do with a database: read it as it is, outside any turn's writes.
impl Database {
    /// Whether the object has a file (it wrote at least once and was not emptied and closed).
    pub(crate) fn has_file(&self) -> bool {
        matches!(self.location, Location::File(_)) && !self.absent
    }

    /// Runs `f` on the connection for an operator's read-only query: writes are refused by
    /// SQLite (`query_only`), the object's SQL policy applies (no ATTACH, no transaction
    /// control, no settings, not the runtime's tables), and the query is interrupted once
    /// `limit` has passed.
    pub(crate) fn read_only<T>(
        &mut self,
        limit: Duration,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T> {
        self.resume()?;
        let previous = self.deadline.load(Ordering::Relaxed);
        let until =
            process_ms().saturating_add(u64::try_from(limit.as_millis()).unwrap_or(u64::MAX));
        self.deadline.store(previous.min(until), Ordering::Relaxed);
        let conn = self.conn()?;
        conn.execute_batch("PRAGMA query_only = ON")?;
        self.policy.clear();
        self.user_sql.store(true, Ordering::Relaxed);
        let result = f(conn);
        self.user_sql.store(false, Ordering::Relaxed);
        let reset = conn.execute_batch("PRAGMA query_only = OFF");
        self.deadline.store(previous, Ordering::Relaxed);
        let result = result.map_err(|e| match self.policy.take_refusal() {
            Some(why) => Error::SqlRefused(why),
            None if e.sqlite_error_code() == Some(rusqlite::ErrorCode::OperationInterrupted) => {
                Error::BadRequest(format!(
                    "the query ran longer than {} ms and was stopped",
                    limit.as_millis()
                ))
            }
            None => match e.sqlite_error_code() {
                Some(rusqlite::ErrorCode::ReadOnly) => {
                    Error::BadRequest("the query would write; only reading is allowed".into())
                }
                _ => Error::BadRequest(format!("the query failed: {e}")),
            },
        });
        reset?;
        result
    }

    /// Copies the database as it is now (the WAL's commits included) into a new file at
    /// `dest` with SQLite's online backup, and syncs it. Returns whether there was a file to
    /// copy.
    pub(crate) fn backup_to(&mut self, dest: &Path) -> Result<bool> {
        if !self.has_file() {
            return Ok(false);
        }
        self.resume()?;
        let mut target = Connection::open(dest)?;
        {
            let backup = rusqlite::backup::Backup::new(self.conn()?, &mut target)?;
            // One step copies every page: the object's turn waits for it anyway.
            match backup.step(-1)? {
                rusqlite::backup::StepResult::Done => {}
                other => {
                    return Err(Error::msg(format!(
                        "the backup of the object's database did not finish: {other:?}"
                    )));
                }
            }
        }
        target.close().map_err(|(_, e)| Error::Sqlite(e))?;
        std::fs::File::open(dest)?.sync_all()?;
        Ok(true)
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        self.count_open(false);
    }
}

/// What closing a database left on disk.
#[derive(Debug)]
pub(crate) enum Closed {
    /// Nothing: the database lived in memory or was never made.
    NoFile,
    /// The file, with the WAL checkpointed into it (not yet synced).
    Kept(std::path::PathBuf),
    /// The file and its WAL (in memory) as they were, less the commits the log never took
    /// (the log did not hold every commit durably).
    Left,
    /// The file held nothing and was removed (the removal not yet synced).
    Removed(std::path::PathBuf),
}

/// Why a checkpoint failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CheckpointFailure {
    /// The disk (or the file system) is full.
    DiskFull,
    /// Anything else.
    Other,
}

/// A WAL this many frames long (about 16 MiB, four times the checkpoint threshold) takes no
/// more commits: it only gets there while checkpoints fail, and it is held in memory.
const WAL_LIMIT_FRAMES: u32 = 4000;

/// Bytes of a WAL file's header.
const WAL_HEADER_BYTES: u64 = 32;
/// Bytes of one WAL frame: a 24-byte header and a page.
pub(crate) const FRAME_BYTES: usize = 24 + PAGE_SIZE as usize;

/// Lookaside slots per connection and their size: a few KiB instead of SQLite's 120 KiB.
const LOOKASIDE_SLOTS: std::ffi::c_int = 32;
/// Bytes of one lookaside slot (SQLite's default slot size is 1 200).
const LOOKASIDE_SLOT_BYTES: std::ffi::c_int = 256;

/// Whether `configure_sqlite` set SQLite's defaults before it started.
static CONFIGURED: AtomicBool = AtomicBool::new(false);

/// Sets SQLite's process-wide memory defaults for many small connections, once, before SQLite
/// starts (it refuses later, and then changes nothing): no bulk page-cache allocation when a
/// connection first reads (SQLite's default takes up to 20 pages at once; here pages are
/// taken as used, so a counter holds three or four) and a small lookaside for every
/// connection, instead of 120 KB allocated and given back at each open.
pub(crate) fn configure_sqlite() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: sqlite3_config with the arguments each option takes (PAGECACHE: a null
        // buffer, then two ints; LOOKASIDE: two ints); SQLite only records them, and refuses
        // once it has started.
        let (page_cache, lookaside) = unsafe {
            (
                rusqlite::ffi::sqlite3_config(
                    rusqlite::ffi::SQLITE_CONFIG_PAGECACHE,
                    std::ptr::null_mut::<std::ffi::c_void>(),
                    0 as std::ffi::c_int,
                    0 as std::ffi::c_int,
                ),
                rusqlite::ffi::sqlite3_config(
                    rusqlite::ffi::SQLITE_CONFIG_LOOKASIDE,
                    LOOKASIDE_SLOT_BYTES,
                    LOOKASIDE_SLOTS,
                ),
            )
        };
        let ok = page_cache == rusqlite::ffi::SQLITE_OK && lookaside == rusqlite::ffi::SQLITE_OK;
        CONFIGURED.store(ok, Ordering::Release);
        if !ok {
            tracing::debug!(
                page_cache,
                lookaside,
                "SQLite started before the runtime: each connection is sized on its own"
            );
        }
    });
}

/// Gives the fresh connection `conn` (nothing run on it yet) a small lookaside allocator,
/// unless every connection already has one (`configure_sqlite`). Best effort: SQLite refuses
/// while lookaside memory is in use, and the default then stays.
fn shrink_lookaside(conn: &Connection) {
    if CONFIGURED.load(Ordering::Acquire) {
        return;
    }
    // SAFETY: the handle is the open connection's; with a null buffer SQLite allocates the
    // slots itself; the variadic arguments are the (void*, int, int) SQLITE_DBCONFIG_LOOKASIDE
    // takes.
    let rc = unsafe {
        rusqlite::ffi::sqlite3_db_config(
            conn.handle(),
            rusqlite::ffi::SQLITE_DBCONFIG_LOOKASIDE,
            std::ptr::null_mut::<std::ffi::c_void>(),
            LOOKASIDE_SLOT_BYTES,
            LOOKASIDE_SLOTS,
        )
    };
    if rc != rusqlite::ffi::SQLITE_OK {
        tracing::debug!(rc, "the lookaside allocator keeps its default size");
    }
}

/// Reads `buf.len()` bytes of the WAL at `offset` through SQLite's own handle on it (the WAL
/// is in memory, `mem_wal`, so that handle is the only way to it).
fn read_wal(conn: &Connection, db_path: &Path, buf: &mut [u8], offset: u64) -> Result<()> {
    let mut file: *mut rusqlite::ffi::sqlite3_file = std::ptr::null_mut();
    // SAFETY: the handle is the open connection's; SQLITE_FCNTL_JOURNAL_POINTER writes one
    // `sqlite3_file*` (the WAL's, in WAL mode) into `file`.
    let rc = unsafe {
        rusqlite::ffi::sqlite3_file_control(
            conn.handle(),
            c"main".as_ptr(),
            rusqlite::ffi::SQLITE_FCNTL_JOURNAL_POINTER,
            (&raw mut file).cast(),
        )
    };
    // SAFETY: a non-null pointer from SQLite is its open WAL file, valid while the connection
    // is open and untouched by others: the caller holds the connection (`&Connection` of a
    // database whose turn lock is held) between transactions.
    let methods = if rc == rusqlite::ffi::SQLITE_OK && !file.is_null() {
        unsafe { (*file).pMethods }
    } else {
        std::ptr::null()
    };
    // SAFETY: as above; `pMethods` is null for a file SQLite has not opened.
    let read = if methods.is_null() {
        None
    } else {
        unsafe { (*methods).xRead }
    };
    let (Some(read), Ok(amount), Ok(at)) = (
        read,
        std::ffi::c_int::try_from(buf.len()),
        i64::try_from(offset),
    ) else {
        // The WAL is in memory (`mem_wal`): only SQLite's handle reaches it.
        return Err(Error::msg(format!(
            "the WAL of {} is not open for reading back",
            db_path.display()
        )));
    };
    // SAFETY: `buf` is valid for `amount` bytes; `file` and `read` are SQLite's, as above.
    let rc = unsafe { read(file, buf.as_mut_ptr().cast(), amount, at) };
    if rc != rusqlite::ffi::SQLITE_OK {
        return Err(Error::msg(format!(
            "reading the WAL back for the node log failed (SQLite code {rc})"
        )));
    }
    Ok(())
}

/// Opens an in-memory database (an object kept in memory, or the stand-in for a file not made).
fn open_memory() -> Result<Connection> {
    let conn = Connection::open_in_memory()?;
    shrink_lookaside(&conn);
    Ok(conn)
}

/// Opens an object's database file in WAL mode with an exclusive lock, creating it if `new`.
fn open_file(path: &Path, new: bool) -> Result<Connection> {
    let flags = if new {
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX
    };
    // SQLite's `unix-none` VFS: the same files, no POSIX locks and, above all, no lookup in
    // the process-wide list of open inodes that the default `unix` VFS walks under a global
    // mutex at every open and close (time proportional to the databases already open: half
    // the CPU of a server holding 7 000 open objects went there). Locks add nothing here:
    // the data directory's lock keeps other processes out, and within the process one
    // connection per object file is the host's invariant (a new activation waits until its
    // predecessor has closed its storage: `Host::wait_retired`). The exclusive locking mode
    // keeps the WAL index in the heap, which a VFS without shared memory needs.
    //
    // Its WAL is kept in memory (`mem_wal`): the node log, not the WAL, makes commits durable.
    if !mem_wal::register() {
        return Err(Error::msg("the in-memory WAL VFS could not be registered"));
    }
    let conn = Connection::open_with_flags_and_vfs(path, flags, mem_wal::VFS_NAME)?;
    shrink_lookaside(&conn);
    // Without locks nothing is ever busy; kept so that a change of VFS cannot turn a brief
    // overlap into an error.
    conn.busy_timeout(Duration::from_secs(5))?;
    // One connection per object: an exclusive lock taken once saves the file locks of every
    // transaction, and the WAL index lives in the heap, not in a `-shm` file.
    if new {
        // Switching a new, empty file to WAL needs neither a rollback journal nor a sync:
        // until its first commit is synced, an empty database is all there is to lose.
        conn.execute_batch(&format!(
            "PRAGMA locking_mode = EXCLUSIVE;
             PRAGMA synchronous = OFF;
             PRAGMA page_size = {PAGE_SIZE};
             PRAGMA journal_mode = OFF;
             PRAGMA journal_mode = WAL;"
        ))?;
    } else {
        // Never the trick above on an existing file: leaving WAL mode checkpoints a WAL a
        // crash left behind, without syncing it, and deletes it.
        conn.execute_batch(
            "PRAGMA locking_mode = EXCLUSIVE;
             PRAGMA journal_mode = WAL;
             PRAGMA synchronous = OFF;",
        )?;
    }
    Ok(conn)
}

/// Turns SQLite's errors that a handler or client can act on into their own kinds: the turn's
/// time limit, the object's size limit, and a full disk (both of the last two are SQLite's
/// "database or disk is full"; the page count of `conn` tells which).
pub(crate) fn map_sqlite(conn: &Connection, e: rusqlite::Error) -> Error {
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::OperationInterrupted) => Error::ObjectFailed {
            status: http::StatusCode::INTERNAL_SERVER_ERROR,
            message: "the turn exceeded its time limit inside a storage call".into(),
        },
        Some(rusqlite::ErrorCode::DiskFull) if at_page_limit(conn) => {
            Error::LimitExceeded("the object's storage is full".into())
        }
        Some(rusqlite::ErrorCode::DiskFull) => {
            Error::InsufficientStorage(format!("the disk is full: {e}"))
        }
        _ => Error::Sqlite(e),
    }
}

/// Whether the database has reached its page limit (the object's size limit), as opposed to
/// the disk being full.
fn at_page_limit(conn: &Connection) -> bool {
    let pages = |pragma: &str| conn.query_row(pragma, [], |r| r.get::<_, i64>(0)).ok();
    match (
        pages("PRAGMA main.page_count"),
        pages("PRAGMA main.max_page_count"),
    ) {
        // A write that needs a few more pages than are left fails just below the limit.
        (Some(count), Some(max)) => count + 16 >= max,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How many descriptors this process holds on files under `dir`.
    fn fds_under(dir: &Path) -> usize {
        let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
            return 0;
        };
        entries
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .filter(|target| target.starts_with(dir))
            .count()
    }

    /// One increment of a counter kept under `k`, committed and handed to the "log".
    fn increment(db: &mut Database, value: i64) -> (u32, Vec<u8>) {
        db.txn_for_write()
            .unwrap()
            .execute(
                "INSERT OR REPLACE INTO main._rookery_kv (key, value) VALUES (x'6b', ?1)",
                [value],
            )
            .unwrap();
        assert!(db.commit().unwrap());
        let frames = db.take_commit_frames().unwrap().unwrap();
        db.frames_logged();
        frames
    }

    #[test]
    fn an_open_object_holds_one_descriptor_and_its_wal_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let dir_path = dir.path().canonicalize().unwrap();
        let path = dir_path.join("o.sqlite");
        let mut db = Database::open(
            &Location::File(path.clone()),
            &StorageLimits::default(),
            &Arc::default(),
        )
        .unwrap();
        let mut wal_path = path.as_os_str().to_owned();
        wal_path.push("-wal");
        let mut at = WAL_HEADER_BYTES;
        for value in 0..5 {
            let (db_pages, frames) = increment(&mut db, value);
            assert!(db_pages > 0);
            assert_eq!(frames.len() % FRAME_BYTES, 0);
            // What SQLite's handle gave is what the WAL holds.
            let wal = mem_wal::read(&path).expect("the WAL is in memory");
            let at_usize = usize::try_from(at).unwrap();
            assert_eq!(&wal[at_usize..at_usize + frames.len()], &frames[..]);
            at += frames.len() as u64;
        }
        // The database file only: the WAL is in memory, and no `-shm` (the exclusive lock
        // keeps the index in memory).
        assert_eq!(fds_under(&dir_path), 1);
        assert!(!std::path::Path::new(&wal_path).exists());
        // Closed while idle and reopened, the object still reads its last commit.
        assert!(db.close_files().unwrap());
        assert_eq!(fds_under(&dir_path), 0);
        let value: i64 = db
            .txn()
            .unwrap()
            .query_row(
                "SELECT value FROM main._rookery_kv WHERE key = x'6b'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(value, 4);
        db.rollback();
        assert!(matches!(db.close(true).unwrap(), Closed::Kept(_)));
        assert_eq!(fds_under(&dir_path), 0);
        // Checkpointed at close: the WAL is gone and the file holds everything.
        assert!(mem_wal::read(&path).is_none());
        let plain = Connection::open(&path).unwrap();
        let value: i64 = plain
            .query_row(
                "SELECT value FROM main._rookery_kv WHERE key = x'6b'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(value, 4);
    }

    /// Heap bytes SQLite reports for one kind of use of `conn`'s memory.
    fn db_status(conn: &Connection, what: std::ffi::c_int) -> i64 {
        let (mut current, mut highest) = (0, 0);
        // SAFETY: the handle is the open connection's; SQLite writes the two ints.
        let rc = unsafe {
            rusqlite::ffi::sqlite3_db_status(conn.handle(), what, &mut current, &mut highest, 0)
        };
        assert_eq!(rc, rusqlite::ffi::SQLITE_OK);
        i64::from(current)
    }

    #[test]
    fn a_small_object_keeps_a_small_page_cache() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.sqlite");
        let limits = StorageLimits::default();
        let mut db = Database::open(&Location::File(path), &limits, &Arc::default()).unwrap();
        for value in 0..20 {
            increment(&mut db, value);
        }
        let size: i64 = db
            .conn()
            .unwrap()
            .query_row("PRAGMA cache_size", [], |r| r.get(0))
            .unwrap();
        assert_eq!(size, -i64::from(limits.page_cache_kib));
        // SQLite's own default would allocate 20 pages (about 90 KB) at the first read.
        let cache = db_status(
            db.conn().unwrap(),
            rusqlite::ffi::SQLITE_DBSTATUS_CACHE_USED,
        );
        assert!(cache <= 40 * 1024, "page cache of a counter: {cache} bytes");
        db.close(true).unwrap();

        let bigger = StorageLimits {
            page_cache_kib: 4096,
            ..StorageLimits::default()
        };
        let db = Database::open(&Location::Memory, &bigger, &Arc::default()).unwrap();
        let size: i64 = db
            .conn()
            .unwrap()
            .query_row("PRAGMA cache_size", [], |r| r.get(0))
            .unwrap();
        assert_eq!(size, -4096, "the cache is configurable");
    }
}

//! One object's SQLite database and the transaction that spans a turn.
//!
//! Every object has its own database file in WAL mode. A turn's storage operations run inside one
//! SQLite transaction that the runtime opens lazily at the first operation and commits when the
//! turn succeeds, or rolls back when it fails. The database runs with `synchronous = NORMAL`:
//! a commit writes the WAL without waiting for the disk, SQLite itself syncs the WAL before every
//! checkpoint (so a checkpoint never makes the database depend on an un-synced WAL), and the
//! durability pipeline (`durability.rs`) makes each commit durable before its outputs leave.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use crate::error::{Error, Result};

/// Page size used for new databases; also the unit of the size limit.
const PAGE_SIZE: u64 = 4096;

/// An open object database and the state of the current turn's transaction.
pub(crate) struct Database {
    conn: Connection,
    path: PathBuf,
    in_txn: bool,
    dirty: bool,
}

impl Database {
    /// Opens (creating if needed) the database at `path`, limited to `max_bytes` of pages.
    pub(crate) fn open(path: &Path, max_bytes: u64) -> Result<Self> {
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags)?;
        // Another connection can only exist for a moment, while an evicted activation closes
        // and a new one opens; wait for it rather than fail.
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.execute_batch(&format!(
            "PRAGMA page_size = {PAGE_SIZE};
             PRAGMA journal_mode = WAL;
             PRAGMA synchronous = NORMAL;
             PRAGMA max_page_count = {};
             CREATE TABLE IF NOT EXISTS _rookery_kv (
                 key BLOB PRIMARY KEY,
                 value BLOB NOT NULL
             ) WITHOUT ROWID;",
            (max_bytes / PAGE_SIZE).max(16)
        ))?;
        conn.set_prepared_statement_cache_capacity(64);
        Ok(Self {
            conn,
            path: path.to_path_buf(),
            in_txn: false,
            dirty: false,
        })
    }

    /// The path of the database file.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The connection, inside the turn's transaction (opened now if needed).
    pub(crate) fn txn(&mut self) -> Result<&Connection> {
        if !self.in_txn {
            self.conn.execute_batch("BEGIN")?;
            self.in_txn = true;
        }
        Ok(&self.conn)
    }

    /// The connection, inside the turn's transaction, for an operation that writes.
    pub(crate) fn txn_for_write(&mut self) -> Result<&Connection> {
        self.dirty = true;
        self.txn()
    }

    /// Commits the turn's transaction; returns whether it wrote anything.
    pub(crate) fn commit(&mut self) -> Result<bool> {
        if !self.in_txn {
            return Ok(false);
        }
        let wrote = self.dirty;
        match self.conn.execute_batch("COMMIT") {
            Ok(()) => {
                self.in_txn = false;
                self.dirty = false;
                Ok(wrote)
            }
            Err(e) => {
                self.rollback();
                Err(map_sqlite(e))
            }
        }
    }

    /// Rolls the turn's transaction back, leaving storage as it was before the turn.
    pub(crate) fn rollback(&mut self) {
        if self.in_txn {
            if let Err(e) = self.conn.execute_batch("ROLLBACK") {
                // SQLite rolls back by itself after some errors; a failing ROLLBACK then only
                // says there was nothing left to roll back.
                tracing::debug!(error = %e, "rollback");
            }
            self.in_txn = false;
            self.dirty = false;
        }
    }

    /// Closes the database, checkpointing its WAL.
    pub(crate) fn close(mut self) -> Result<()> {
        self.rollback();
        self.conn.close().map_err(|(_, e)| Error::Sqlite(e))
    }
}

/// Turns SQLite's "database or disk is full" into the size-limit error a handler can act on.
pub(crate) fn map_sqlite(e: rusqlite::Error) -> Error {
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DiskFull) => {
            Error::LimitExceeded("the object's storage is full".into())
        }
        _ => Error::Sqlite(e),
    }
}

//! Restoring an object to a bookmark when it next opens (point-in-time recovery).
//!
//! `on_next_session_restore_bookmark` leaves a marker beside the object's database. When the
//! object next opens, its state at the bookmark is rebuilt from history and goes through the
//! node log like any commit, as one record holding every page (or a removal record when it
//! stored nothing then): once that record is durable the file is rewritten, and a crash at any
//! point either leaves the marker (the restore runs again, to the same state) or replays the
//! record. The marker is removed, durably, before the object serves anything.
//!
//! [`install`] is the same replacement for a database that comes whole from elsewhere: in a
//! cluster, the state the replicated commit log holds for an object that last ran on another
//! node.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::history::format_bookmark;
use super::log_record::{self, Lsn};
use super::{ObjectSync, StorageContext};
use crate::addr::AlarmKey;
use crate::durable_dir::{create_dir_durable, sync_dir, write_file_durable};
use crate::error::{Error, Result};

/// The marker beside database `db` that asks for a restore.
fn marker(db: &Path) -> PathBuf {
    let mut path = db.as_os_str().to_owned();
    path.push(".restore");
    PathBuf::from(path)
}

/// Asks, durably, for the object whose database is `db` to be restored to `at` when it next
/// opens.
pub(crate) fn request(db: &Path, at: Lsn) -> io::Result<()> {
    if let Some(dir) = db.parent() {
        create_dir_durable(dir)?;
    }
    write_file_durable(&marker(db), format_bookmark(at).as_bytes())
}

/// The restore asked for the object whose database is `db`, if any.
pub(crate) fn pending(db: &Path) -> Result<Option<Lsn>> {
    match fs::read_to_string(marker(db)) {
        Ok(text) => super::history::parse_bookmark(text.trim()).map(Some),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Restores object `key` (database `db`) to `at`, durably, and removes the marker. Runs on a
/// blocking thread, before the database is opened.
pub(crate) fn run(ctx: &StorageContext, key: &AlarmKey, db: &Path, at: Lsn) -> Result<()> {
    let (Some(log), Some(history)) = (&ctx.log, &ctx.history) else {
        return Err(Error::BadRequest(
            "point-in-time recovery is off on this server".into(),
        ));
    };
    // Every record before the bookmark must be in the files history reads.
    wait_synced(ctx, at)?;
    let image = history.image_at(log, key, at, db.exists())?;
    install(ctx, key, db, &image)?;
    fs::remove_file(marker(db))?;
    if let Some(dir) = db.parent() {
        sync_dir(dir)?;
    }
    tracing::info!(bookmark = %format_bookmark(at), bytes = image.len(), "restored the object to a bookmark");
    Ok(())
}

/// Replaces the database `db` of object `key` with `image` (empty: the object stores nothing),
/// durably, before it opens: the image goes through the node log as one record holding every
/// page (or a removal record), and only once that is durable is the file rewritten, so a crash
/// at any point leaves either the old file or a record that recovery replays. Runs on a
/// blocking thread.
pub(crate) fn install(ctx: &StorageContext, key: &AlarmKey, db: &Path, image: &[u8]) -> Result<()> {
    let Some(log) = &ctx.log else {
        // No node log (tests that run without one): the file alone.
        super::recovery::discard_wal(db)?;
        if image.is_empty() {
            return remove_if_there(db);
        }
        if let Some(dir) = db.parent() {
            create_dir_durable(dir)?;
        }
        return Ok(write_file_durable(db, image)?);
    };
    if image.is_empty() && !db.exists() && log.last_uncovered(key).is_none() {
        // Nothing here to replace (a new object): no record, no sync round.
        return Ok(());
    }
    let now = ctx.clock.now_ms();
    let commit = if image.is_empty() {
        let through = log.last_uncovered(key).unwrap_or(0);
        log.append_cover(now, key, through, true);
        None
    } else {
        let packed = log_record::pack_image(image);
        let pages = packed.count();
        let unused = ObjectSync::new(db, false);
        Some(log.append_commit(now, key, 0, pages, &packed, &unused, false)?)
    };
    // The log says what the file will hold before the file holds it.
    wait_synced(ctx, log.next_lsn())?;
    super::recovery::discard_wal(db)?;
    match commit {
        None => remove_if_there(db)?,
        Some(lsn) => {
            if let Some(dir) = db.parent() {
                create_dir_durable(dir)?;
            }
            write_file_durable(db, image)?;
            log.append_cover(now, key, lsn, false);
        }
    }
    Ok(())
}

fn remove_if_there(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Blocks until the node log is durable up to `lsn`.
fn wait_synced(ctx: &StorageContext, lsn: Lsn) -> Result<()> {
    let Some(log) = &ctx.log else { return Ok(()) };
    if log.synced() >= lsn {
        return Ok(());
    }
    ctx.syncer.log_appended();
    let mut synced = log.synced_watch();
    let wait = synced.wait_for(|s| *s >= lsn || log.failed());
    // Storage opens on the runtime's blocking pool, where the runtime's handle is current.
    let handle = tokio::runtime::Handle::try_current()
        .map_err(|e| Error::internal("restoring outside the runtime", e))?;
    let _ = handle.block_on(wait);
    if log.failed() {
        return Err(Error::StorageUnavailable(
            "the node log cannot take writes; restart the server".into(),
        ));
    }
    Ok(())
}

//! Restoring an object to a bookmark when it next opens (point-in-time recovery).
//!
//! `on_next_session_restore_bookmark` leaves a marker beside the object's database. When the
//! object next opens, its state at the bookmark is rebuilt from history and goes through the
//! node log like any commit, as one record holding every page (or a removal record when it
//! stored nothing then): once that record is durable the file is rewritten, and a crash at any
//! point either leaves the marker (the restore runs again, to the same state) or replays the
//! record. The marker is removed, durably, before the object serves anything.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::history::format_bookmark;
use super::log_record::{self, Frame, Lsn, PAGE_BYTES};
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
    let now = ctx.clock.now_ms();
    let commit = if image.is_empty() {
        let through = log.last_uncovered(key).unwrap_or(0);
        log.append_cover(now, key, through, true);
        None
    } else {
        let frames: Vec<Frame<'_>> = image
            .chunks_exact(PAGE_BYTES)
            .zip(1u32..)
            .map(|(page, pgno)| Frame { pgno, page })
            .collect();
        let pages = u32::try_from(frames.len())
            .map_err(|_| Error::msg("the restored database is too large"))?;
        let unused = ObjectSync::new(db, false);
        let packed = log_record::pack(&frames);
        Some(log.append_commit(now, key, 0, pages, &packed, &unused, false)?)
    };
    // The log says what the file will hold before the file holds it.
    wait_synced(ctx, log.next_lsn())?;
    super::recovery::discard_wal(db)?;
    match commit {
        None => match fs::remove_file(db) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        },
        Some(lsn) => {
            write_file_durable(db, &image)?;
            log.append_cover(now, key, lsn, false);
        }
    }
    fs::remove_file(marker(db))?;
    if let Some(dir) = db.parent() {
        sync_dir(dir)?;
    }
    tracing::info!(bookmark = %format_bookmark(at), bytes = image.len(), "restored the object to a bookmark");
    Ok(())
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

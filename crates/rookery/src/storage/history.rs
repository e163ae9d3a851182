//! Point-in-time recovery: the node log's covered segments kept as history, bookmarks into it,
//! and an object's state rebuilt at a bookmark.
//!
//! With history on, a segment that recovery no longer needs stays in `log/` for the retention
//! period. Once its newest commit is older than that (or the history outgrows its byte cap), it
//! is *compacted*: for each object in it, its records are applied to the object's snapshot in
//! `history/<class uid>/<id>.sqlite` (the object's state as of the oldest retained segment),
//! the snapshots are synced, `history/horizon` records where the history now begins, and the
//! segment is retired.
//!
//! A bookmark is a position in the log, written as 16 hex digits (so bookmarks sort as they
//! were taken). An object's state at bookmark `b` is its snapshot (or nothing) with its records
//! before `b` applied. History is complete from an object's *base*: a removal, or a commit that
//! wrote every page (an object's first commit, a restore). Objects written before the node log
//! kept history have no base until they are restored or emptied; their bookmarks before one
//! are refused.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use super::log_record::{self, Kind, Lsn, PAGE_BYTES, Record};
use super::node_log::NodeLog;
use crate::addr::AlarmKey;
use crate::durable_dir::{create_dir_durable, sync_dir, write_file_durable};
use crate::error::{Error, Result};

/// How much of the node log is kept for point-in-time recovery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryOptions {
    /// How far back an object can be restored; zero turns history off (covered segments are
    /// retired at once). Default 7 days.
    pub retention: Duration,
    /// The most bytes of log kept as history; older segments are compacted sooner when it is
    /// passed (bookmarks before them are then refused). Default 10 GiB.
    pub max_bytes: u64,
}

impl Default for HistoryOptions {
    fn default() -> Self {
        Self {
            retention: Duration::from_secs(7 * 24 * 3600),
            max_bytes: 10 * 1024 * 1024 * 1024,
        }
    }
}

impl HistoryOptions {
    /// Whether history is kept at all.
    pub fn enabled(&self) -> bool {
        !self.retention.is_zero()
    }
}

/// The file that says where the retained history begins.
const HORIZON_FILE: &str = "horizon";

/// Writes a bookmark for log position `lsn`.
pub(crate) fn format_bookmark(lsn: Lsn) -> String {
    format!("{lsn:016x}")
}

/// Reads a bookmark written by [`format_bookmark`].
pub(crate) fn parse_bookmark(text: &str) -> Result<Lsn> {
    if text.len() != 16 {
        return Err(Error::BadRequest(format!(
            "{text:?} is not a bookmark (16 hex digits)"
        )));
    }
    Lsn::from_str_radix(text, 16)
        .map_err(|_| Error::BadRequest(format!("{text:?} is not a bookmark (16 hex digits)")))
}

/// The retained history of the node log and the objects' snapshots.
#[derive(Debug)]
pub(crate) struct History {
    dir: PathBuf,
    options: HistoryOptions,
    /// Compaction and image building exclusive of each other (both read the oldest segments
    /// and the snapshots).
    busy: Mutex<()>,
}

impl History {
    /// The history kept in `dir` (made if missing).
    pub(crate) fn open(dir: &Path, options: HistoryOptions) -> io::Result<Self> {
        create_dir_durable(dir)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            options,
            busy: Mutex::new(()),
        })
    }

    /// Where history begins (a log position) and the time of the newest commit compacted
    /// away, if any was.
    fn horizon(&self) -> io::Result<Option<(Lsn, i64)>> {
        let path = self.dir.join(HORIZON_FILE);
        match fs::read_to_string(&path) {
            Ok(text) => {
                let mut parts = text.split_whitespace().map(str::parse::<i64>);
                match (parts.next(), parts.next()) {
                    (Some(Ok(lsn)), Some(Ok(time))) if lsn >= 0 => Ok(Some((lsn as Lsn, time))),
                    _ => Err(io::Error::other(format!("{} is damaged", path.display()))),
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn snapshot_path(&self, key: &AlarmKey) -> PathBuf {
        self.dir
            .join(&*key.class_uid)
            .join(format!("{}.sqlite", hex::encode(key.id)))
    }

    /// The earliest position a bookmark may have: where the oldest retained segment starts.
    fn earliest(&self, log: &NodeLog) -> io::Result<Lsn> {
        let oldest = log.segments().first().map(|(s, _)| *s);
        let horizon = self.horizon()?.map(|(lsn, _)| lsn);
        Ok(oldest
            .into_iter()
            .chain(horizon)
            .max()
            .unwrap_or_else(|| log.next_lsn()))
    }

    /// Checks that a bookmark at `at` lies within the retained history.
    pub(crate) fn check(&self, log: &NodeLog, at: Lsn) -> Result<()> {
        let earliest = self.earliest(log)?;
        if at < earliest {
            return Err(Error::BadRequest(format!(
                "bookmark {} is older than the retained history (it begins at {})",
                format_bookmark(at),
                format_bookmark(earliest)
            )));
        }
        if at > log.next_lsn() {
            return Err(Error::BadRequest(format!(
                "bookmark {} is ahead of the log",
                format_bookmark(at)
            )));
        }
        Ok(())
    }

    /// The position right after the last commit made at or before `time_ms`.
    pub(crate) fn bookmark_for_time(&self, log: &NodeLog, time_ms: i64) -> Result<Lsn> {
        let _busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, compacted)) = self.horizon()?
            && time_ms < compacted
        {
            return Err(Error::BadRequest(format!(
                "{time_ms} is older than the retained history (it holds commits after {compacted})"
            )));
        }
        for (start, path) in log.segments() {
            let bytes = fs::read(&path)?;
            for (lsn, record) in log_record::records(&bytes, start) {
                // Only commits carry the objects' clock; covers are stamped by the node.
                if record.kind == Kind::Commit && record.time_ms > time_ms {
                    return Ok(lsn);
                }
            }
        }
        Ok(log.next_lsn())
    }

    /// The state of object `key` at `at`: its database pages (empty: it stored nothing).
    /// `has_file` says whether the object has a database file now.
    pub(crate) fn image_at(
        &self,
        log: &NodeLog,
        key: &AlarmKey,
        at: Lsn,
        has_file: bool,
    ) -> Result<Vec<u8>> {
        let _busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        self.check(log, at)?;
        let snapshot = self.snapshot_path(key);
        // `None`: the state is not known (no base seen yet).
        let mut image = match fs::read(&snapshot) {
            Ok(bytes) => Some(bytes),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e.into()),
        };
        let mut any_before = false;
        let mut first_after: Option<bool> = None;
        'segments: for (start, path) in log.segments() {
            let bytes = fs::read(&path)?;
            for (lsn, record) in log_record::records(&bytes, start) {
                if record.key != *key || record.kind == Kind::Checkpoint {
                    continue;
                }
                if lsn >= at {
                    first_after = Some(record.is_base());
                    break 'segments;
                }
                any_before = true;
                if record.is_base() {
                    image = Some(Vec::new());
                }
                if let Some(image) = &mut image {
                    apply_to_vec(image, &record)?;
                }
            }
        }
        match image {
            Some(image) => Ok(image),
            // Nothing of the object before `at`, and either its history starts afresh after it
            // or it has no file: it stored nothing then.
            None if !any_before
                && (first_after == Some(true) || (first_after.is_none() && !has_file)) =>
            {
                Ok(Vec::new())
            }
            None => Err(Error::BadRequest(format!(
                "the history of this object at {} is not complete: it was written before the \
                 node log kept history",
                format_bookmark(at)
            ))),
        }
    }

    /// Compacts the segments whose commits are past retention (or past the byte cap, or all
    /// the disk can spare) into the snapshots and retires them; `now_ms` is the current time.
    /// Without `by_age`, only the cheap checks run (size and free space, no segment is read
    /// unless one of them says so). Returns how many.
    pub(crate) fn compact(&self, log: &NodeLog, now_ms: i64, by_age: bool) -> io::Result<usize> {
        let _busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        let retention_ms = i64::try_from(self.options.retention.as_millis()).unwrap_or(i64::MAX);
        let mut done = 0;
        loop {
            let segments = log.segments();
            let recovery_start = log.recovery_start();
            let [(start, path), (end, _), ..] = &segments[..] else {
                break;
            };
            let (start, end) = (*start, *end);
            if end > recovery_start {
                // Recovery still needs it.
                break;
            }
            let over_cap = recovery_start - start > self.options.max_bytes;
            // History never fills the disk under the log: with less than a few segments'
            // room left, the oldest goes whatever its age.
            let pressed = free_bytes(&self.dir).is_some_and(|free| free < 4 * (end - start));
            if !by_age && !over_cap && !pressed {
                break;
            }
            let bytes = fs::read(path)?;
            let records: Vec<(Lsn, Record<'_>)> = log_record::records(&bytes, start).collect();
            let newest = records
                .iter()
                .filter(|(_, r)| r.kind == Kind::Commit)
                .map(|(_, r)| r.time_ms)
                .max();
            let expired = newest.is_none_or(|t| t < now_ms.saturating_sub(retention_ms));
            if !expired && !over_cap && !pressed {
                break;
            }
            self.fold(&records)?;
            let compacted = newest
                .or(self.horizon()?.map(|(_, t)| t))
                .unwrap_or(i64::MIN);
            write_file_durable(
                &self.dir.join(HORIZON_FILE),
                format!("{end} {compacted}\n").as_bytes(),
            )?;
            if !log.retire(start)? {
                break;
            }
            tracing::debug!(
                segment = start,
                "compacted a log segment into the snapshots"
            );
            done += 1;
        }
        Ok(done)
    }

    /// Applies a segment's records to the snapshots of their objects, durably.
    fn fold(&self, records: &[(Lsn, Record<'_>)]) -> io::Result<()> {
        let mut by_object: HashMap<&AlarmKey, Vec<&Record<'_>>> = HashMap::new();
        for (_, record) in records {
            if record.kind != Kind::Checkpoint {
                by_object.entry(&record.key).or_default().push(record);
            }
        }
        let mut dirs = std::collections::BTreeSet::new();
        for (key, records) in by_object {
            let path = self.snapshot_path(key);
            let mut file = match OpenOptions::new().read(true).write(true).open(&path) {
                Ok(file) => Some(file),
                Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                Err(e) => return Err(e),
            };
            for record in records {
                if record.is_base() {
                    if file.is_none() {
                        if let Some(dir) = path.parent()
                            && create_dir_durable(dir)?
                        {
                            dirs.insert(self.dir.clone());
                        }
                        file = Some(File::create(&path)?);
                        if let Some(dir) = path.parent() {
                            dirs.insert(dir.to_path_buf());
                        }
                    }
                    if let Some(file) = &file {
                        file.set_len(0)?;
                    }
                }
                // Without a base, the object's state is unknown: nothing to apply to.
                let Some(file) = &file else { continue };
                if record.kind == Kind::Commit {
                    for frame in record.frames() {
                        let frame = frame?;
                        let at = u64::from(frame.pgno.saturating_sub(1)) * PAGE_BYTES as u64;
                        file.write_all_at(&frame.page, at)?;
                    }
                    file.set_len(u64::from(record.db_pages) * PAGE_BYTES as u64)?;
                }
            }
            if let Some(file) = file {
                file.sync_all()?;
            }
        }
        for dir in dirs {
            sync_dir(&dir)?;
        }
        Ok(())
    }
}

/// Bytes free for unprivileged use on the file system holding `dir`.
fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `path` is a valid C string and `stat` is written by the call before it is read.
    let r = unsafe { libc::statvfs(path.as_ptr(), stat.as_mut_ptr()) };
    if r != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so it filled `stat`.
    let stat = unsafe { stat.assume_init() };
    Some(stat.f_bavail.saturating_mul(stat.f_frsize))
}

/// Applies a commit's pages (or a removal) to an image held in memory.
fn apply_to_vec(image: &mut Vec<u8>, record: &Record<'_>) -> io::Result<()> {
    if record.kind != Kind::Commit {
        image.clear();
        return Ok(());
    }
    record.pages().apply(image, record.db_pages)
}

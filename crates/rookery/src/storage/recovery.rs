//! Recovery at start-up: the node log's commits replayed into the objects' files.
//!
//! For each object, the commits after its last checkpoint (or removal) record are applied to its
//! database file, page by page and in log order, and the file is truncated to the size the last
//! commit gave it and synced. Whatever a crash or a power cut left in the file or its WAL, the
//! result is the object's last durable commit: pages the file lacks come from the log, pages a
//! torn checkpoint wrote half are written again, and the WAL (which may hold commits that never
//! became durable) is discarded. Once every object is brought up to date, the old segments are
//! no longer needed for recovery: they are kept as history (point-in-time recovery) or retired,
//! and `log/start` says that the next recovery begins after them.
//!
//! A data directory from before the node log (no `log/` directory) is brought over first: every
//! object's WAL is checkpointed into its file by SQLite and the file synced.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::log_record::{self, End, Kind, Lsn, PAGE_BYTES};
use super::node_log::{SPARE_PREFIX, read_start, segment_name, segment_start, write_start};
use crate::addr::AlarmKey;
use crate::durable_dir::{create_dir_durable, sync_dir};

/// What recovery found and did.
#[derive(Debug, Default)]
pub(crate) struct Recovered {
    /// Where the log goes on.
    pub(crate) next: Lsn,
    /// Objects whose files were brought up to date from the log.
    pub(crate) replayed: usize,
    /// Objects whose files were removed (they stored nothing any more).
    pub(crate) removed: usize,
    /// When the newest commit replayed was made (ms since the epoch).
    pub(crate) newest_ms: Option<i64>,
    /// The segments kept as history, by where each starts.
    pub(crate) history: BTreeMap<Lsn, PathBuf>,
}

/// Where one object's commits to apply are.
#[derive(Default)]
struct Pending {
    /// Commits after the last cover, as (segment start, offset in segment, length).
    commits: Vec<(Lsn, usize, usize)>,
    /// The last cover was a removal: the file starts over from nothing.
    from_empty: bool,
    /// The object's last record was a removal.
    removed: bool,
    /// The commit sequence of the last commit seen (within the activation that made it).
    last_seq: u64,
}

/// Brings every object's file up to date with the log in `log_dir`, then keeps the segments as
/// history (`keep_history`) or retires them. `objects_dir` holds `<class uid>/<x>/<id>.sqlite`.
pub(crate) fn recover(
    log_dir: &Path,
    objects_dir: &Path,
    keep_history: bool,
) -> io::Result<Recovered> {
    if !log_dir.exists() {
        let moved = checkpoint_legacy_wals(objects_dir)?;
        if moved > 0 {
            tracing::info!(
                objects = moved,
                "folded the objects' WALs into their files for the node log"
            );
        }
        create_dir_durable(log_dir)?;
        return Ok(Recovered::default());
    }
    let mut segments: BTreeMap<Lsn, PathBuf> = BTreeMap::new();
    for entry in fs::read_dir(log_dir)? {
        let path = entry?.path();
        if let Some(start) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(segment_start)
        {
            segments.insert(start, path);
        }
    }
    // Segments before the recorded start hold no commit an object's file lacks.
    let first = read_start(log_dir)?.unwrap_or(0);
    let rest = segments.split_off(&first);
    let history_only = std::mem::replace(&mut segments, rest);
    let mut pending: HashMap<AlarmKey, Pending> = HashMap::new();
    let mut next: Lsn = segments.keys().next().copied().unwrap_or(first);
    let mut torn_at: Option<Lsn> = None;
    let mut newest_ms = None;
    for (&start, path) in &segments {
        if torn_at.is_some() {
            // Written after a tail that never became durable: not durable either.
            break;
        }
        if start != next && next != 0 {
            return Err(io::Error::other(format!(
                "the node log has a gap before {} (expected a segment at {next})",
                path.display()
            )));
        }
        let bytes = fs::read(path)?;
        let mut at = 0usize;
        loop {
            match log_record::decode(&bytes[at..], start + at as u64) {
                Ok((record, len)) => {
                    let p = pending.entry(record.key.clone()).or_default();
                    match record.kind {
                        Kind::Commit => {
                            if record.is_base() {
                                // A whole image (a restore): what came before does not matter.
                                p.commits.clear();
                                p.from_empty = true;
                            }
                            p.commits.push((start, at, len));
                            p.last_seq = record.value;
                            newest_ms = newest_ms.max(Some(record.time_ms));
                            p.removed = false;
                        }
                        Kind::Checkpoint => {
                            p.commits.clear();
                            p.removed = false;
                        }
                        Kind::Removed => {
                            p.commits.clear();
                            p.from_empty = true;
                            p.removed = true;
                        }
                    }
                    at += len;
                }
                Err(End::Clean) => break,
                // A segment is closed after its last record: what follows in a reused file is
                // an earlier use's leftovers, not a torn write.
                Err(End::Torn) if at > 0 && segments.contains_key(&(start + at as u64)) => break,
                Err(End::Torn) => {
                    torn_at = Some(start + at as u64);
                    if at < bytes.len() {
                        tracing::warn!(
                            segment = %path.display(),
                            offset = at,
                            discarded = bytes.len() - at,
                            "the node log ends in a record that never became durable"
                        );
                    }
                    break;
                }
            }
        }
        next = start + at as u64;
    }
    if torn_at.is_some() {
        // Segments begun after the torn record hold nothing durable; left in place they would
        // read as history at positions the log is about to give to new records.
        let stale = segments.split_off(&(next + 1));
        for path in stale.values() {
            tracing::warn!(segment = %path.display(), "removing a log segment written after the torn record");
            fs::remove_file(path)?;
        }
        if !stale.is_empty() {
            sync_dir(log_dir)?;
        }
    }
    let mut done = Recovered {
        next,
        newest_ms,
        ..Recovered::default()
    };
    let mut dirs_to_sync = std::collections::BTreeSet::new();
    for (key, p) in &pending {
        let class_dir = objects_dir.join(&*key.class_uid);
        if !class_dir.is_dir() {
            // The class was deleted: its objects are gone with it.
            continue;
        }
        let hex = hex::encode(key.id);
        let shard = class_dir.join(&hex[..1]);
        let db = shard.join(format!("{hex}.sqlite"));
        if p.removed {
            if remove_object(&db)? {
                dirs_to_sync.insert(shard);
                done.removed += 1;
            }
            continue;
        }
        if p.commits.is_empty() {
            continue;
        }
        create_dir_durable(&shard)?;
        let existed = db.exists();
        apply(&db, &segments, &p.commits, p.from_empty)?;
        tracing::debug!(object = %db.display(), commits = p.commits.len(), last_seq = p.last_seq, "replayed");
        if !existed {
            dirs_to_sync.insert(shard);
        }
        done.replayed += 1;
    }
    for dir in dirs_to_sync {
        sync_dir(&dir)?;
    }
    if done.replayed + done.removed > 0 {
        tracing::info!(
            replayed = done.replayed,
            removed = done.removed,
            newest_ms = ?done.newest_ms,
            "recovered the objects from the node log"
        );
    }
    // Every object's file now holds all it ever committed durably: recovery needs no segment
    // so far again.
    if read_start(log_dir)? != Some(next) {
        write_start(log_dir, next)?;
    }
    if keep_history {
        let mut history = history_only;
        history.extend(segments);
        done.history = history;
        return Ok(done);
    }
    segments.extend(history_only);
    // A few segments are kept for reuse (allocated already).
    let mut kept = fs::read_dir(log_dir)?
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(SPARE_PREFIX))
        })
        .count();
    for (start, path) in &segments {
        if kept < 2 {
            fs::rename(path, log_dir.join(format!("{SPARE_PREFIX}{start}")))?;
            kept += 1;
        } else {
            fs::remove_file(path)?;
        }
    }
    sync_dir(log_dir)?;
    Ok(done)
}

/// Removes the WAL of database `db` (in memory, or a file left by an older version) and its
/// shared-memory file, if there are any.
pub(crate) fn discard_wal(db: &Path) -> io::Result<()> {
    super::mem_wal::discard(db);
    for suffix in ["-wal", "-shm"] {
        let mut side = db.as_os_str().to_owned();
        side.push(suffix);
        match fs::remove_file(PathBuf::from(side)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Applies the commits at `commits` (in order) to the database file `db`, discarding its WAL.
fn apply(
    db: &Path,
    segments: &BTreeMap<Lsn, PathBuf>,
    commits: &[(Lsn, usize, usize)],
    from_empty: bool,
) -> io::Result<()> {
    discard_wal(db)?;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(from_empty)
        .open(db)?;
    let mut open_segment: Option<(Lsn, File)> = None;
    let mut buf = Vec::new();
    let mut db_pages = 0u32;
    for &(segment, offset, len) in commits {
        if open_segment.as_ref().map(|(s, _)| *s) != Some(segment) {
            let path = segments.get(&segment).ok_or_else(|| {
                io::Error::other(format!("segment {} vanished", segment_name(segment)))
            })?;
            open_segment = Some((segment, File::open(path)?));
        }
        let Some((_, seg)) = &open_segment else {
            continue;
        };
        buf.resize(len, 0);
        seg.read_exact_at(&mut buf, offset as u64)?;
        let (record, _) = log_record::decode(&buf, segment + offset as u64)
            .map_err(|_| io::Error::other("a log record changed while recovering"))?;
        for frame in record.frames() {
            let frame = frame?;
            let at = u64::from(frame.pgno.saturating_sub(1)) * PAGE_BYTES as u64;
            file.write_all_at(&frame.page, at)?;
        }
        db_pages = record.db_pages;
    }
    if db_pages > 0 {
        file.set_len(u64::from(db_pages) * PAGE_BYTES as u64)?;
    }
    file.sync_all()
}

/// Removes an object's files; whether there was one.
fn remove_object(db: &Path) -> io::Result<bool> {
    let mut any = false;
    for suffix in ["-wal", "-shm", ""] {
        let mut file = db.as_os_str().to_owned();
        file.push(suffix);
        match fs::remove_file(PathBuf::from(file)) {
            Ok(()) => any = true,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(any)
}

/// Checkpoints every object's WAL into its file and syncs it: a data directory from before the
/// node log counts on the WALs.
fn checkpoint_legacy_wals(objects_dir: &Path) -> io::Result<usize> {
    let mut moved = 0;
    let Ok(classes) = fs::read_dir(objects_dir) else {
        return Ok(0);
    };
    for class in classes {
        let class = class?.path();
        if !class.is_dir() {
            continue;
        }
        for shard in fs::read_dir(&class)? {
            let shard = shard?.path();
            if !shard.is_dir() {
                continue;
            }
            for file in fs::read_dir(&shard)? {
                let wal = file?.path();
                let Some(db) = wal
                    .to_str()
                    .and_then(|p| p.strip_suffix("-wal"))
                    .map(PathBuf::from)
                else {
                    continue;
                };
                if !db.exists() {
                    continue;
                }
                let conn = rusqlite::Connection::open(&db).map_err(io::Error::other)?;
                conn.execute_batch(
                    "PRAGMA locking_mode = EXCLUSIVE; PRAGMA journal_mode = WAL;
                     PRAGMA synchronous = FULL; PRAGMA wal_checkpoint(TRUNCATE);",
                )
                .map_err(io::Error::other)?;
                drop(conn);
                File::open(&db)?.sync_all()?;
                moved += 1;
            }
        }
    }
    Ok(moved)
}

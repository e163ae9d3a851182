//! The node log: every object's committed turns, appended to one file, made durable together.
//!
//! A turn's commit writes its pages to the object's own WAL (in the page cache, never synced by
//! SQLite) and appends the same pages, with the object, its commit sequence and a checksum, to
//! this log. The sync thread writes what was appended and `fdatasync`s the log once per round:
//! one sync makes every object's turns of that round durable, and the output gate of each turn
//! opens when its record is on disk.
//!
//! The invariant that makes the object files safe without syncs of their own: an object's
//! database file only ever receives pages by a checkpoint, and a checkpoint runs only once all
//! of the object's commits are durable in the log. After the file is synced, a *checkpoint*
//! record says so; an emptied object's removal is a *removed* record. Recovery (`recovery.rs`)
//! replays, for each object, the commits after its last such record onto its file, which gives
//! exactly the last durable commit, whatever state a crash or power cut left the file and its WAL
//! in.
//!
//! The log is a directory of segments named by the LSN they start at. A new segment is begun
//! once the current one passes [`SEGMENT_BYTES`]; a segment is retired once every commit in it
//! is covered by a durable checkpoint of its object: kept as a spare for a later segment (its
//! space already allocated, its old records unmistakable by their LSNs) or removed.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;

use super::log_record::{self, Kind, Lsn, Packed};
use super::object_sync::{LogWait, ObjectSync};
use crate::addr::AlarmKey;
use crate::durable_dir::sync_dir;

/// A segment is closed and a new one begun once it holds this many bytes.
pub(crate) const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// A segment's file is filled with zeros this far ahead of what is written: writes then
/// overwrite allocated space, and the round's `fdatasync` has no file size to commit.
const ZERO_AHEAD: u64 = 1024 * 1024;
/// Covered segments kept (renamed) for reuse instead of removed.
const SPARES: usize = 2;

/// The file name of the segment that starts at `lsn`.
pub(crate) fn segment_name(lsn: Lsn) -> String {
    format!("{lsn:020}.log")
}

/// The LSN a segment file starts at, from its name.
pub(crate) fn segment_start(name: &str) -> Option<Lsn> {
    name.strip_suffix(".log")?.parse().ok()
}

/// A commit appended but not yet durable: whose gate to open when it is.
struct Waiting {
    sync: Arc<ObjectSync>,
    seq: u64,
}

/// What is appended and not yet written, and the file it goes to.
struct Tail {
    buffer: Vec<u8>,
    waiting: Vec<Waiting>,
    /// The LSN of the next byte appended.
    next: Lsn,
    /// The LSN up to which bytes are written to the file.
    written: Lsn,
    file: Arc<File>,
    /// Where the current segment starts.
    segment: Lsn,
    /// Bytes in the current segment, written or not.
    segment_len: u64,
    /// A segment is closed once it holds this many bytes.
    segment_bytes: u64,
    /// Bytes of the current segment's file that are allocated (written or zeros).
    prepared: u64,
}

/// Per object, the commits its own file may lack: the first and last such LSN.
#[derive(Default)]
struct Uncovered {
    by_object: HashMap<AlarmKey, (Lsn, Lsn)>,
    /// Covers appended but maybe not durable yet: `(first commit covered, end of the cover
    /// record)`. Until the log is synced past the record, recovery still needs the commits it
    /// covers (a removed file with its removal record lost must not meet a partial history).
    pending: Vec<(Lsn, Lsn)>,
}

/// What a round wrote: the file to sync and the commits whose gates open when it is synced.
pub(crate) struct Written {
    file: Arc<File>,
    waiting: Vec<Waiting>,
    /// The log is durable up to here once `file` is synced.
    through: Lsn,
}

/// The node log.
pub(crate) struct NodeLog {
    dir: PathBuf,
    tail: Mutex<Tail>,
    uncovered: Mutex<Uncovered>,
    /// The segments on disk and where each starts, oldest first.
    segments: Mutex<BTreeMap<Lsn, PathBuf>>,
    /// Covered segments renamed for reuse, oldest first.
    spares: Mutex<Vec<PathBuf>>,
    /// Covered segments are kept as history (point-in-time recovery) instead of retired.
    keep_history: bool,
    /// Where recovery starts reading: no segment before it holds a commit an object's file
    /// lacks (kept durably in [`START_FILE`]).
    start: Mutex<Lsn>,
    /// Set once writing or syncing the log failed: nothing may count as durable after that.
    failed: Arc<AtomicBool>,
    /// How far the log is synced.
    synced: watch::Sender<Lsn>,
}

impl std::fmt::Debug for NodeLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeLog").field("dir", &self.dir).finish()
    }
}

impl NodeLog {
    /// Opens the log in `dir` for appending at `next` (where recovery found its end), in a new
    /// segment; `segments` are the ones recovery kept.
    /// With `keep_history`, covered segments stay (as history) until [`NodeLog::retire`]; a
    /// new segment begins once one holds `segment_bytes`.
    pub(crate) fn open(
        dir: &Path,
        next: Lsn,
        segments: BTreeMap<Lsn, PathBuf>,
        keep_history: bool,
        segment_bytes: u64,
    ) -> io::Result<Self> {
        let mut spares = Vec::new();
        for entry in fs::read_dir(dir)? {
            let path = entry?.path();
            if path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(SPARE_PREFIX))
            {
                spares.push(path);
            }
        }
        let (file, path, prepared) = new_segment(dir, next, spares.pop(), segment_bytes)?;
        let mut all = segments;
        all.insert(next, path);
        Ok(Self {
            dir: dir.to_path_buf(),
            tail: Mutex::new(Tail {
                buffer: Vec::with_capacity(1 << 20),
                waiting: Vec::new(),
                next,
                written: next,
                file: Arc::new(file),
                segment: next,
                segment_len: 0,
                segment_bytes,
                prepared,
            }),
            uncovered: Mutex::new(Uncovered::default()),
            segments: Mutex::new(all),
            spares: Mutex::new(spares),
            keep_history,
            start: Mutex::new(read_start(dir)?.unwrap_or(0).min(next)),
            failed: Arc::new(AtomicBool::new(false)),
            synced: watch::Sender::new(next),
        })
    }

    fn tail(&self) -> MutexGuard<'_, Tail> {
        self.tail.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn uncovered(&self) -> MutexGuard<'_, Uncovered> {
        self.uncovered.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a write or sync of the log failed (the node must restart to write again).
    pub(crate) fn failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    /// Appends a commit of object `key` with sequence `seq`; `sync`'s gate for `seq` opens once
    /// it is durable. With `write_now`, the record is written to the file before this returns
    /// (it survives a crash of the process, not yet of the machine). Returns its LSN.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn append_commit(
        &self,
        time_ms: i64,
        key: &AlarmKey,
        seq: u64,
        db_pages: u32,
        packed: &Packed,
        sync: &Arc<ObjectSync>,
        write_now: bool,
    ) -> io::Result<Lsn> {
        if self.failed() {
            return Err(io::Error::other("the node log failed earlier"));
        }
        // A larger record would read back as a torn tail, ending the log at it.
        if packed.len() > log_record::MAX_BODY - 1024 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "a commit of {} bytes of pages is larger than the log takes ({} bytes)",
                    packed.len(),
                    log_record::MAX_BODY - 1024
                ),
            ));
        }
        let mut tail = self.tail();
        let lsn = tail.next;
        let before = tail.buffer.len();
        log_record::encode_commit(&mut tail.buffer, lsn, time_ms, key, seq, db_pages, packed);
        let len = (tail.buffer.len() - before) as u64;
        tail.next += len;
        tail.segment_len += len;
        if !write_now {
            tail.waiting.push(Waiting {
                sync: sync.clone(),
                seq,
            });
        }
        {
            let mut uncovered = self.uncovered();
            let entry = uncovered.by_object.entry(key.clone()).or_insert((lsn, lsn));
            entry.1 = lsn;
        }
        if write_now {
            self.write_locked(&mut tail)?;
        }
        Ok(lsn)
    }

    /// Appends that object `key`'s own file now holds, durably, all its commits up to
    /// `through` (or that the file was removed, with `removed`).
    pub(crate) fn append_cover(&self, time_ms: i64, key: &AlarmKey, through: Lsn, removed: bool) {
        let kind = if removed {
            Kind::Removed
        } else {
            Kind::Checkpoint
        };
        let end = {
            let mut tail = self.tail();
            let before = tail.buffer.len();
            let lsn = tail.next;
            log_record::encode_cover(&mut tail.buffer, lsn, kind, time_ms, key, through);
            let len = (tail.buffer.len() - before) as u64;
            tail.next += len;
            tail.segment_len += len;
            tail.next
        };
        let mut uncovered = self.uncovered();
        if let Some(&(first, last)) = uncovered.by_object.get(key)
            && last <= through
        {
            uncovered.by_object.remove(key);
            uncovered.pending.push((first, end));
        }
    }

    /// Whether object `key` has commits its own file may lack (its WAL then matters).
    pub(crate) fn behind(&self, key: &AlarmKey) -> bool {
        self.uncovered().by_object.contains_key(key)
    }

    /// The LSN of the last commit of `key`, if its file may lack it.
    pub(crate) fn last_uncovered(&self, key: &AlarmKey) -> Option<Lsn> {
        self.uncovered().by_object.get(key).map(|(_, last)| *last)
    }

    fn write_locked(&self, tail: &mut Tail) -> io::Result<()> {
        if tail.buffer.is_empty() {
            return Ok(());
        }
        let at = tail.written - tail.segment;
        let end = at + tail.buffer.len() as u64;
        let result = tail.file.write_all_at(&tail.buffer, at).and_then(|()| {
            if end > tail.prepared {
                // Zeros ahead, so that the next rounds overwrite instead of growing the file.
                // (Growing it a megabyte at a time, not each round: a round that changes the
                // file's size makes its `fdatasync` commit the inode too. Pages are compressed,
                // so a megabyte lasts thousands of commits.)
                let target = end + ZERO_AHEAD;
                write_zeros(&tail.file, end, target)?;
                tail.prepared = target;
            }
            Ok(())
        });
        tail.written = tail.next;
        tail.buffer.clear();
        if result.is_err() {
            self.mark_failed();
        }
        result
    }

    /// Marks the log failed and wakes everyone waiting for it to be durable: they must see
    /// the failure, or they would wait for a sync that never comes.
    fn mark_failed(&self) {
        self.failed.store(true, Ordering::Release);
        self.synced.send_modify(|_| ());
    }

    /// Fails the commits in `waiting`: none of them can become durable.
    fn fail_waiting(&self, waiting: Vec<Waiting>) {
        self.mark_failed();
        for w in waiting {
            w.sync.fail();
        }
    }

    /// Writes what was appended (beginning a new segment afterwards if the current one is
    /// full); the caller syncs the returned file, then opens the returned gates.
    pub(crate) fn write(&self) -> io::Result<Written> {
        let mut tail = self.tail();
        if let Err(e) = self.write_locked(&mut tail) {
            let waiting = std::mem::take(&mut tail.waiting);
            drop(tail);
            self.fail_waiting(waiting);
            return Err(e);
        }
        let written = Written {
            file: tail.file.clone(),
            waiting: std::mem::take(&mut tail.waiting),
            through: tail.next,
        };
        if tail.segment_len >= tail.segment_bytes {
            let spare = self.spares.lock().unwrap_or_else(|e| e.into_inner()).pop();
            let (file, path, prepared) =
                match new_segment(&self.dir, tail.next, spare, tail.segment_bytes) {
                    Ok(segment) => segment,
                    Err(e) => {
                        drop(tail);
                        self.fail_waiting(written.waiting);
                        return Err(e);
                    }
                };
            tail.file = Arc::new(file);
            tail.segment = tail.next;
            tail.written = tail.next;
            tail.segment_len = 0;
            tail.prepared = prepared;
            self.segments
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(tail.next, path);
        }
        Ok(written)
    }

    /// Makes `written` durable; on success its commits' gates open.
    pub(crate) fn sync(&self, written: Written) -> io::Result<()> {
        if let Err(e) = written.file.sync_data() {
            // After a failed sync the kernel may have dropped the pages: nothing written since
            // the last good sync can ever count as durable.
            self.fail_waiting(written.waiting);
            return Err(e);
        }
        self.synced.send_if_modified(|s| {
            let moved = written.through > *s;
            *s = (*s).max(written.through);
            moved
        });
        for w in written.waiting {
            w.sync.mark(w.seq, true, false);
        }
        Ok(())
    }

    /// Fails `written`'s commits without syncing (a failed round).
    pub(crate) fn fail(&self, written: Written) {
        self.fail_waiting(written.waiting);
    }

    /// Whether something written is not synced yet.
    pub(crate) fn synced_behind(&self) -> bool {
        self.synced() < self.tail().next
    }

    /// How far the log is durable.
    pub(crate) fn synced(&self) -> Lsn {
        *self.synced.borrow()
    }

    /// A wait for the log to be durable through `through`.
    pub(crate) fn durable_wait(&self, through: Lsn) -> LogWait {
        LogWait {
            synced: self.synced.subscribe(),
            through,
            failed: self.failed.clone(),
        }
    }

    /// A subscription to the durable point.
    pub(crate) fn synced_watch(&self) -> watch::Receiver<Lsn> {
        self.synced.subscribe()
    }

    /// Removes the segments that hold no commit an object's file may still lack.
    pub(crate) fn remove_covered_segments(&self) {
        let synced = self.synced();
        let oldest_needed = {
            let mut uncovered = self.uncovered();
            uncovered.pending.retain(|(_, end)| *end > synced);
            let by_object = uncovered.by_object.values().map(|(first, _)| *first);
            by_object
                .chain(uncovered.pending.iter().map(|(first, _)| *first))
                .min()
        };
        let current = self.tail().segment;
        let limit = oldest_needed.unwrap_or(current).min(current);
        if self.keep_history {
            self.advance_start(limit);
            return;
        }
        let mut segments = self.segments.lock().unwrap_or_else(|e| e.into_inner());
        // A segment ends where the next begins: it can go if that is at or before the limit.
        let starts: Vec<Lsn> = segments.keys().copied().collect();
        for pair in starts.windows(2) {
            let (start, end) = (pair[0], pair[1]);
            if end > limit {
                break;
            }
            if let Some(path) = segments.remove(&start)
                && let Err(e) = self.retire_file(start, &path)
            {
                tracing::warn!(segment = %path.display(), error = %e, "cannot retire a log segment");
                segments.insert(start, path);
                break;
            }
        }
    }

    /// Moves where recovery starts up to the segment that holds `limit` (no commit before it
    /// is needed by any object's file), durably.
    fn advance_start(&self, limit: Lsn) {
        let segments = self.segments.lock().unwrap_or_else(|e| e.into_inner());
        let Some(&start) = segments.range(..=limit).next_back().map(|(s, _)| s) else {
            return;
        };
        let mut current = self.start.lock().unwrap_or_else(|e| e.into_inner());
        if start <= *current {
            return;
        }
        match write_start(&self.dir, start) {
            Ok(()) => *current = start,
            Err(e) => tracing::warn!(error = %e, "cannot record where log recovery starts"),
        }
    }

    /// Where recovery starts reading: segments before it are history only.
    pub(crate) fn recovery_start(&self) -> Lsn {
        *self.start.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The segments on disk, oldest first, with where each starts.
    pub(crate) fn segments(&self) -> Vec<(Lsn, PathBuf)> {
        let segments = self.segments.lock().unwrap_or_else(|e| e.into_inner());
        segments.iter().map(|(s, p)| (*s, p.clone())).collect()
    }

    /// The LSN the next record gets.
    pub(crate) fn next_lsn(&self) -> Lsn {
        self.tail().next
    }

    /// Retires the oldest segment, which starts at `start`, if recovery no longer needs it
    /// (history compacted it). Whether it was retired.
    pub(crate) fn retire(&self, start: Lsn) -> io::Result<bool> {
        let recovery_start = self.recovery_start();
        let mut segments = self.segments.lock().unwrap_or_else(|e| e.into_inner());
        let ends = segments.range(start + 1..).next().map(|(s, _)| *s);
        if segments.keys().next() != Some(&start) || ends.is_none_or(|end| end > recovery_start) {
            return Ok(false);
        }
        let Some(path) = segments.remove(&start) else {
            return Ok(false);
        };
        if let Err(e) = self.retire_file(start, &path) {
            segments.insert(start, path);
            return Err(e);
        }
        Ok(true)
    }

    /// Keeps a retired segment's file as a spare for reuse, or removes it.
    fn retire_file(&self, start: Lsn, path: &Path) -> io::Result<()> {
        let mut spares = self.spares.lock().unwrap_or_else(|e| e.into_inner());
        if spares.len() < SPARES {
            let spare = self.dir.join(format!("{SPARE_PREFIX}{start}"));
            fs::rename(path, &spare)?;
            spares.push(spare);
        } else {
            fs::remove_file(path)?;
        }
        tracing::debug!(segment = %path.display(), "retired a covered log segment");
        Ok(())
    }
}

/// The file that says where recovery starts reading the log.
pub(crate) const START_FILE: &str = "start";

/// Where recovery starts reading the log in `dir`, if recorded.
pub(crate) fn read_start(dir: &Path) -> io::Result<Option<Lsn>> {
    match fs::read_to_string(dir.join(START_FILE)) {
        Ok(text) => text.trim().parse().map(Some).map_err(|_| {
            io::Error::other(format!("{} is damaged", dir.join(START_FILE).display()))
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Records, durably, that recovery may start reading the log in `dir` at `start`.
pub(crate) fn write_start(dir: &Path, start: Lsn) -> io::Result<()> {
    crate::durable_dir::write_file_durable(&dir.join(START_FILE), start.to_string().as_bytes())
}

/// The name prefix of retired segments kept for reuse (not read by recovery).
pub(crate) const SPARE_PREFIX: &str = "spare-";

/// Makes the segment starting at `lsn`, from a retired one if there is one (already allocated:
/// its old records carry other LSNs and can never pass for new ones), and makes its name
/// durable. Returns the file, its path and how many of its bytes are allocated.
///
/// A new file's whole size is reserved up front where the file system allows, so that a
/// filling disk refuses the objects' own writes (507, nothing written) before it can refuse the
/// log's.
fn new_segment(
    dir: &Path,
    lsn: Lsn,
    spare: Option<PathBuf>,
    segment_bytes: u64,
) -> io::Result<(File, PathBuf, u64)> {
    let path = dir.join(segment_name(lsn));
    let reused = match spare {
        Some(spare) => fs::rename(&spare, &path).is_ok(),
        None => false,
    };
    let file = OpenOptions::new()
        .create(true)
        .truncate(!reused)
        .write(true)
        .read(true)
        .open(&path)?;
    let prepared = if reused {
        file.metadata()?.len()
    } else {
        reserve(&file, segment_bytes + ZERO_AHEAD);
        write_zeros(&file, 0, ZERO_AHEAD)?;
        file.sync_all()?;
        ZERO_AHEAD
    };
    sync_dir(dir)?;
    Ok((file, path, prepared))
}

/// Reserves `len` bytes of space for `file` without changing its size, best effort.
fn reserve(file: &File, len: u64) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let len = libc::off_t::try_from(len).unwrap_or(libc::off_t::MAX);
        // SAFETY: fallocate only reads the descriptor, which `file` keeps open.
        let r = unsafe { libc::fallocate(file.as_raw_fd(), libc::FALLOC_FL_KEEP_SIZE, 0, len) };
        if r != 0 {
            tracing::debug!(error = %io::Error::last_os_error(), "cannot reserve space for a log segment");
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, len);
}

/// Writes zeros over `from..to` of `file`.
fn write_zeros(file: &File, from: u64, to: u64) -> io::Result<()> {
    const CHUNK: usize = 64 * 1024;
    static ZEROS: [u8; CHUNK] = [0u8; CHUNK];
    let mut at = from;
    while at < to {
        let n = usize::try_from(to - at).unwrap_or(CHUNK).min(CHUNK);
        file.write_all_at(&ZEROS[..n], at)?;
        at += n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::ID_BYTES;
    use crate::storage::log_record::{Frame, PAGE_BYTES};
    use crate::storage::recovery::recover;

    fn key() -> AlarmKey {
        AlarmKey {
            class_uid: Arc::from("c1"),
            id: [3; ID_BYTES],
        }
    }

    /// A page that does not compress, different for each `value`: records take whole pages,
    /// so these tests know how many fit in a segment.
    fn page_of(value: u8) -> Vec<u8> {
        let mut x = u64::from(value).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..PAGE_BYTES)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    /// Appends one commit that sets pages `1..=pages` to `page_of(value)`, and makes it
    /// durable.
    fn commit(log: &NodeLog, sync: &Arc<ObjectSync>, seq: u64, value: u8, pages: u32) -> Lsn {
        let page = page_of(value);
        let frames: Vec<Frame<'_>> = (1..=pages)
            .map(|pgno| Frame { pgno, page: &page })
            .collect();
        let lsn = log
            .append_commit(
                0,
                &key(),
                seq,
                pages,
                &log_record::pack(&frames),
                sync,
                false,
            )
            .unwrap();
        let written = log.write().unwrap();
        log.sync(written).unwrap();
        lsn
    }

    fn spares(dir: &Path) -> usize {
        fs::read_dir(dir)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_str()
                    .is_some_and(|n| n.starts_with(SPARE_PREFIX))
            })
            .count()
    }

    #[test]
    fn reused_segments_recover_exactly_the_last_commit() {
        let tmp = tempfile::tempdir().unwrap();
        let log_dir = tmp.path().join("log");
        let objects = tmp.path().join("objects");
        fs::create_dir_all(&log_dir).unwrap();
        fs::create_dir_all(objects.join("c1")).unwrap();
        let sync = ObjectSync::new(&objects.join("c1").join("x.sqlite"), true);
        // Segments of about three records, records of one to three pages: where a reused
        // segment's new records end, its old ones are cut at another place.
        let log = NodeLog::open(&log_dir, 0, BTreeMap::new(), false, 3 * 4096).unwrap();
        let mut seq = 0;
        let mut last = 0;
        for round in 0..4 {
            for n in 0..12u32 {
                seq += 1;
                last = commit(&log, &sync, seq, seq as u8, 1 + (n + round) % 3);
            }
            // The object's file now holds everything (as a checkpoint would leave it): the
            // covered segments retire once the cover itself is durable, not before.
            log.append_cover(0, &key(), last, false);
            let before = log.segments.lock().unwrap().len();
            log.remove_covered_segments();
            assert_eq!(
                log.segments.lock().unwrap().len(),
                before,
                "a cover not yet durable pins its segments"
            );
            let written = log.write().unwrap();
            log.sync(written).unwrap();
            log.remove_covered_segments();
            assert_eq!(
                spares(&log_dir),
                SPARES,
                "round {round}: retired segments kept"
            );
        }
        // Commits after the last cover, over reused segments, then a crash.
        for n in 0..10u32 {
            seq += 1;
            commit(&log, &sync, seq, seq as u8, 1 + n % 3);
        }
        let segments = log.segments.lock().unwrap().len();
        assert!(segments > 2, "the tail spans several segments ({segments})");
        drop(log);
        let recovered = recover(&log_dir, &objects, false).unwrap();
        assert_eq!(recovered.replayed, 1);
        let hex = hex::encode([3u8; ID_BYTES]);
        let db = objects
            .join("c1")
            .join(&hex[..1])
            .join(format!("{hex}.sqlite"));
        let bytes = fs::read(&db).unwrap();
        // The last commit (n = 9) left a database of one page.
        assert_eq!(bytes.len(), PAGE_BYTES, "the last commit's page count");
        assert!(bytes == page_of(seq as u8), "page 1 holds the last commit");
        assert!(
            recovered.next > last,
            "the log goes on after what it replayed"
        );
    }

    #[test]
    fn segments_after_a_torn_record_are_not_kept_as_history() {
        let tmp = tempfile::tempdir().unwrap();
        let log_dir = tmp.path().join("log");
        let objects = tmp.path().join("objects");
        fs::create_dir_all(&log_dir).unwrap();
        fs::create_dir_all(objects.join("c1")).unwrap();
        let sync = ObjectSync::new(&objects.join("c1").join("x.sqlite"), true);
        let log = NodeLog::open(&log_dir, 0, BTreeMap::new(), true, 3 * 4096).unwrap();
        let lsns: Vec<Lsn> = (1..=12u64)
            .map(|seq| commit(&log, &sync, seq, seq as u8, 1))
            .collect();
        let segments: Vec<Lsn> = log.segments().iter().map(|(s, _)| *s).collect();
        assert!(segments.len() > 3, "several segments: {segments:?}");
        drop(log);
        // A power cut tore the second record; the disk kept what came after it.
        let torn = lsns[1];
        let first = log_dir.join(segment_name(segments[0]));
        let file = OpenOptions::new().write(true).open(&first).unwrap();
        file.write_all_at(&[0xAB; 64], torn - segments[0] + 40)
            .unwrap();
        drop(file);
        let recovered = recover(&log_dir, &objects, true).unwrap();
        assert_eq!(recovered.next, torn, "the log goes on at the torn record");
        let kept: Vec<Lsn> = recovered.history.keys().copied().collect();
        assert_eq!(
            kept,
            vec![segments[0]],
            "only the segment up to the torn record stays"
        );
        for later in &segments[1..] {
            assert!(
                !log_dir.join(segment_name(*later)).exists(),
                "segment {later} outlived recovery"
            );
        }
    }
}

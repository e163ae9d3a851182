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
//! once the current one passes [`SEGMENT_BYTES`]; a segment is removed once every commit in it
//! is covered by a durable checkpoint of its object.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;

use super::durability::ObjectSync;
use super::log_record::{self, Frame, Kind, Lsn};
use crate::addr::AlarmKey;
use crate::durable_dir::sync_dir;

/// A segment is closed and a new one begun once it holds this many bytes.
pub(crate) const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;

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
    file: Arc<File>,
    /// Where the current segment starts.
    segment: Lsn,
    /// Bytes in the current segment, written or not.
    segment_len: u64,
}

/// Per object, the commits its own file may lack: the first and last such LSN.
#[derive(Default)]
struct Uncovered {
    by_object: HashMap<AlarmKey, (Lsn, Lsn)>,
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
    /// Set once writing or syncing the log failed: nothing may count as durable after that.
    failed: AtomicBool,
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
    pub(crate) fn open(
        dir: &Path,
        next: Lsn,
        segments: BTreeMap<Lsn, PathBuf>,
    ) -> io::Result<Self> {
        let (file, path) = new_segment(dir, next)?;
        let mut all = segments;
        all.insert(next, path);
        Ok(Self {
            dir: dir.to_path_buf(),
            tail: Mutex::new(Tail {
                buffer: Vec::with_capacity(1 << 20),
                waiting: Vec::new(),
                next,
                file: Arc::new(file),
                segment: next,
                segment_len: 0,
            }),
            uncovered: Mutex::new(Uncovered::default()),
            segments: Mutex::new(all),
            failed: AtomicBool::new(false),
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
        frames: &[Frame<'_>],
        sync: &Arc<ObjectSync>,
        write_now: bool,
    ) -> io::Result<Lsn> {
        if self.failed() {
            return Err(io::Error::other("the node log failed earlier"));
        }
        let mut tail = self.tail();
        let lsn = tail.next;
        let before = tail.buffer.len();
        log_record::encode_commit(&mut tail.buffer, time_ms, key, seq, db_pages, frames);
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
        {
            let mut tail = self.tail();
            let before = tail.buffer.len();
            log_record::encode_cover(&mut tail.buffer, kind, time_ms, key, through);
            let len = (tail.buffer.len() - before) as u64;
            tail.next += len;
            tail.segment_len += len;
        }
        let mut uncovered = self.uncovered();
        if let Some((_, last)) = uncovered.by_object.get(key)
            && *last <= through
        {
            uncovered.by_object.remove(key);
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
        let result = (&*tail.file).write_all(&tail.buffer);
        tail.buffer.clear();
        if result.is_err() {
            self.failed.store(true, Ordering::Release);
        }
        result
    }

    /// Writes what was appended (beginning a new segment afterwards if the current one is
    /// full); the caller syncs the returned file, then opens the returned gates.
    pub(crate) fn write(&self) -> io::Result<Written> {
        let mut tail = self.tail();
        self.write_locked(&mut tail)?;
        let written = Written {
            file: tail.file.clone(),
            waiting: std::mem::take(&mut tail.waiting),
            through: tail.next,
        };
        if tail.segment_len >= SEGMENT_BYTES {
            let (file, path) = new_segment(&self.dir, tail.next)?;
            tail.file = Arc::new(file);
            tail.segment = tail.next;
            tail.segment_len = 0;
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
            self.failed.store(true, Ordering::Release);
            for w in written.waiting {
                w.sync.fail();
            }
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
        self.failed.store(true, Ordering::Release);
        for w in written.waiting {
            w.sync.fail();
        }
    }

    /// Whether something written is not synced yet.
    pub(crate) fn synced_behind(&self) -> bool {
        self.synced() < self.tail().next
    }

    /// How far the log is durable.
    pub(crate) fn synced(&self) -> Lsn {
        *self.synced.borrow()
    }

    /// A subscription to the durable point.
    pub(crate) fn synced_watch(&self) -> watch::Receiver<Lsn> {
        self.synced.subscribe()
    }

    /// Removes the segments that hold no commit an object's file may still lack.
    pub(crate) fn remove_covered_segments(&self) {
        let oldest_needed = {
            let uncovered = self.uncovered();
            uncovered.by_object.values().map(|(first, _)| *first).min()
        };
        let current = self.tail().segment;
        let limit = oldest_needed.unwrap_or(current).min(current);
        let mut segments = self.segments.lock().unwrap_or_else(|e| e.into_inner());
        // A segment ends where the next begins: it can go if that is at or before the limit.
        let starts: Vec<Lsn> = segments.keys().copied().collect();
        for pair in starts.windows(2) {
            let (start, end) = (pair[0], pair[1]);
            if end > limit {
                break;
            }
            if let Some(path) = segments.remove(&start) {
                match fs::remove_file(&path) {
                    Ok(()) => {
                        tracing::debug!(segment = %path.display(), "removed a covered log segment")
                    }
                    Err(e) => {
                        tracing::warn!(segment = %path.display(), error = %e, "cannot remove a log segment");
                        segments.insert(start, path);
                        break;
                    }
                }
            }
        }
    }
}

/// Creates the segment starting at `lsn` and makes its name durable. Its space is reserved
/// up front where the file system allows, so that a filling disk refuses the objects' own
/// writes (507, nothing written) before it can refuse the log's.
fn new_segment(dir: &Path, lsn: Lsn) -> io::Result<(File, PathBuf)> {
    let path = dir.join(segment_name(lsn));
    let file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)?;
    reserve(&file);
    sync_dir(dir)?;
    file.sync_all()?;
    Ok((file, path))
}

/// Reserves a segment's space (zeros, read back as the log's end), best effort.
fn reserve(file: &File) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let len = libc::off_t::try_from(SEGMENT_BYTES).unwrap_or(libc::off_t::MAX);
        // SAFETY: fallocate only reads the descriptor, which `file` keeps open.
        let r = unsafe { libc::fallocate(file.as_raw_fd(), libc::FALLOC_FL_KEEP_SIZE, 0, len) };
        if r != 0 {
            tracing::debug!(error = %io::Error::last_os_error(), "cannot reserve space for a log segment");
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = file;
}

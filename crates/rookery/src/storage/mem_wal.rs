//! Object WALs kept in memory: a SQLite VFS whose WAL files live in the heap.
//!
//! The node log (`node_log.rs`) is what makes an object's commit durable. The object's WAL only
//! holds commits until they are checkpointed into the object's file, and recovery after a crash
//! replays the log into the files and discards every WAL (`recovery.rs`). So a WAL never needs
//! to reach the disk. On disk it cost every open object a second descriptor (the number of
//! live objects was bounded by half the open-file limit), every commit a buffered write through
//! the file system, and every new object a second file to create and later remove.
//!
//! This VFS is SQLite's `unix-none` (see `database::open_file` for why no locks) for every file
//! but a WAL: a WAL is a buffer in a process-wide table, keyed by its full path. It outlives
//! the connection that wrote it, as a file would: an idle object's connection is closed and
//! reopened (`Database::close_files`), and SQLite then reads the same frames back. It goes when
//! SQLite deletes it or the runtime discards it (after a checkpoint, or when a file is replaced
//! by recovery or a restore).
//!
//! What bounds it: an object's WAL holds at most the frames since its last checkpoint (between
//! turns past `CHECKPOINT_FRAMES`, and at close), in memory now instead of the page cache;
//! `bytes()` reports the total, which counts against the live objects' byte cap.

use std::collections::HashMap;
use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, OnceLock};

use rusqlite::ffi;

/// The VFS's name, as given to `Connection::open_with_flags_and_vfs`.
pub(crate) const VFS_NAME: &CStr = c"rookery-mem-wal";

/// The VFS every call but a WAL's goes to.
const BASE_VFS: &CStr = c"unix-none";

/// One WAL's bytes.
#[derive(Default)]
struct WalBuf {
    bytes: Mutex<Vec<u8>>,
}

impl WalBuf {
    fn lock(&self) -> MutexGuard<'_, Vec<u8>> {
        self.bytes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Cuts the WAL to `len` bytes if it is longer, giving back the memory beyond it.
    fn cut(&self, len: usize) {
        let mut bytes = self.lock();
        if bytes.len() > len {
            BYTES.fetch_sub(
                i64::try_from(bytes.len() - len).unwrap_or(0),
                Ordering::Relaxed,
            );
            bytes.truncate(len);
            // An emptied WAL of an idle object should not keep its largest size.
            bytes.shrink_to(len);
        }
    }
}

/// Drops the WAL named `key` from the table; returns whether there was one.
fn remove(key: &[u8]) -> bool {
    let Some(buf) = wals().remove(key) else {
        return false;
    };
    // Its open handles (none, when SQLite deletes it) see it empty.
    buf.cut(0);
    true
}

/// Every WAL of the process, by full path.
static WALS: LazyLock<Mutex<HashMap<Vec<u8>, Arc<WalBuf>>>> = LazyLock::new(Default::default);

/// Bytes held by every WAL (their lengths).
static BYTES: AtomicI64 = AtomicI64::new(0);

fn wals() -> MutexGuard<'static, HashMap<Vec<u8>, Arc<WalBuf>>> {
    WALS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Bytes every WAL in memory holds now.
pub(crate) fn bytes() -> u64 {
    u64::try_from(BYTES.load(Ordering::Relaxed)).unwrap_or(0)
}

/// The VFS this one wraps.
struct Vfs {
    base: *mut ffi::sqlite3_vfs,
}

// SAFETY: SQLite's registered VFS object, never freed and never changed; SQLite calls into it
// from any thread.
unsafe impl Send for Vfs {}
unsafe impl Sync for Vfs {}

static VFS: OnceLock<Option<Vfs>> = OnceLock::new();

/// Registers the VFS with SQLite (once); returns whether it is there.
pub(crate) fn register() -> bool {
    VFS.get_or_init(|| {
        // SAFETY: a lookup by name in SQLite's list of VFSes; the result is null or a VFS
        // SQLite keeps for the life of the process.
        let base = unsafe { ffi::sqlite3_vfs_find(BASE_VFS.as_ptr()) };
        if base.is_null() {
            tracing::error!("SQLite has no unix-none VFS");
            return None;
        }
        // SAFETY: `base` is a valid VFS (above); copied, then the copy is changed.
        let mut vfs = unsafe { *base };
        vfs.szOsFile = vfs
            .szOsFile
            .max(c_int::try_from(size_of::<MemFile>()).unwrap_or(0));
        vfs.pNext = std::ptr::null_mut();
        vfs.zName = VFS_NAME.as_ptr();
        vfs.xOpen = Some(x_open);
        vfs.xDelete = Some(x_delete);
        vfs.xAccess = Some(x_access);
        let ours = Box::into_raw(Box::new(vfs));
        // SAFETY: `ours` is a complete VFS that lives for the rest of the process (leaked);
        // not made the default.
        let rc = unsafe { ffi::sqlite3_vfs_register(ours, 0) };
        if rc != ffi::SQLITE_OK {
            tracing::error!(rc, "registering the in-memory WAL VFS failed");
            return None;
        }
        Some(Vfs { base })
    })
    .is_some()
}

fn vfs() -> Option<&'static Vfs> {
    VFS.get().and_then(Option::as_ref)
}

/// The key of the WAL of the database at `db`: its full path as SQLite makes it, plus `-wal`.
fn key_of(db: &Path) -> Option<Vec<u8>> {
    let vfs = vfs()?;
    let name = CString::new(db.as_os_str().as_bytes()).ok()?;
    // SAFETY: `vfs.base` is valid (see `Vfs`); its `mxPathname` bounds what it writes.
    let size = unsafe { (*vfs.base).mxPathname }.max(512);
    let mut out = vec![0u8; usize::try_from(size).ok()? + 1];
    // SAFETY: as above; `out` has room for `size` bytes and a terminator.
    let full = unsafe { (*vfs.base).xFullPathname? };
    let rc = unsafe { full(vfs.base, name.as_ptr(), size, out.as_mut_ptr().cast()) };
    if rc != ffi::SQLITE_OK {
        return None;
    }
    let end = out.iter().position(|&b| b == 0)?;
    out.truncate(end);
    out.extend_from_slice(b"-wal");
    Some(out)
}

/// The key SQLite gives a WAL it names: its full path, as is.
///
/// # Safety
/// `name` is null or a NUL-terminated string.
unsafe fn key_from(name: *const c_char) -> Option<Vec<u8>> {
    if name.is_null() {
        return None;
    }
    // SAFETY: the caller's promise.
    Some(unsafe { CStr::from_ptr(name) }.to_bytes().to_vec())
}

/// Drops the WAL of the database at `db`, if one is in memory (its commits are in the file or
/// are given up).
pub(crate) fn discard(db: &Path) {
    if let Some(key) = key_of(db) {
        remove(&key);
    }
}

/// Cuts the WAL of the database at `db` to `len` bytes (no-op if it is shorter or absent).
pub(crate) fn truncate(db: &Path, len: u64) {
    let Some(key) = key_of(db) else { return };
    if let Some(buf) = wals().get(&key).cloned() {
        buf.cut(usize::try_from(len).unwrap_or(usize::MAX));
    }
}

/// A copy of the WAL of the database at `db`, if one is in memory.
#[cfg(test)]
pub(crate) fn read(db: &Path) -> Option<Vec<u8>> {
    let key = key_of(db)?;
    let buf = wals().get(&key).cloned()?;
    Some(buf.lock().clone())
}

/// An open WAL: SQLite's file header, then our handle on the buffer.
#[repr(C)]
struct MemFile {
    base: ffi::sqlite3_file,
    wal: *const WalBuf,
}

/// The methods of a WAL in memory (version 1: no shared memory, no mapping).
static METHODS: ffi::sqlite3_io_methods = ffi::sqlite3_io_methods {
    iVersion: 1,
    xClose: Some(mem_close),
    xRead: Some(mem_read),
    xWrite: Some(mem_write),
    xTruncate: Some(mem_truncate),
    xSync: Some(mem_sync),
    xFileSize: Some(mem_file_size),
    xLock: Some(mem_lock),
    xUnlock: Some(mem_lock),
    xCheckReservedLock: Some(mem_check_reserved_lock),
    xFileControl: Some(mem_file_control),
    xSectorSize: Some(mem_sector_size),
    xDeviceCharacteristics: Some(mem_device_characteristics),
    xShmMap: None,
    xShmLock: None,
    xShmBarrier: None,
    xShmUnmap: None,
    xFetch: None,
    xUnfetch: None,
};

/// # Safety
/// `file` is a `MemFile` this module opened (SQLite passes back what `x_open` set up).
unsafe fn buf_of<'a>(file: *mut ffi::sqlite3_file) -> &'a WalBuf {
    // SAFETY: the caller's promise; `wal` came from `Arc::into_raw` and is released only by
    // `mem_close`, after which SQLite makes no call on the file.
    unsafe { &*(*file.cast::<MemFile>()).wal }
}

unsafe extern "C" fn x_open(
    _vfs: *mut ffi::sqlite3_vfs,
    name: ffi::sqlite3_filename,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    let Some(vfs) = vfs() else {
        return ffi::SQLITE_ERROR;
    };
    if flags & ffi::SQLITE_OPEN_WAL == 0 {
        // SAFETY: the base VFS opens every other file, into space SQLite sized for the larger
        // of the two kinds (`szOsFile`); its own methods then serve the file directly.
        return match unsafe { (*vfs.base).xOpen } {
            Some(open) => unsafe { open(vfs.base, name, file, flags, out_flags) },
            None => ffi::SQLITE_ERROR,
        };
    }
    // SAFETY: SQLite names every WAL it opens.
    let Some(key) = (unsafe { key_from(name) }) else {
        return ffi::SQLITE_CANTOPEN;
    };
    let buf = wals().entry(key).or_default().clone();
    // SAFETY: `file` points to `szOsFile` bytes, at least a `MemFile`.
    unsafe {
        file.cast::<MemFile>().write(MemFile {
            base: ffi::sqlite3_file { pMethods: &METHODS },
            wal: Arc::into_raw(buf),
        });
        if !out_flags.is_null() {
            *out_flags = flags;
        }
    }
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_delete(
    _vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    sync_dir: c_int,
) -> c_int {
    // SAFETY: SQLite passes a NUL-terminated name.
    if let Some(key) = unsafe { key_from(name) }
        && remove(&key)
    {
        return ffi::SQLITE_OK;
    }
    match vfs().and_then(|v| unsafe { (*v.base).xDelete }.map(|d| (v, d))) {
        // SAFETY: the base VFS deletes files that are not WALs in memory.
        Some((v, delete)) => unsafe { delete(v.base, name, sync_dir) },
        None => ffi::SQLITE_ERROR,
    }
}

unsafe extern "C" fn x_access(
    _vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    flags: c_int,
    out: *mut c_int,
) -> c_int {
    // SAFETY: SQLite passes a NUL-terminated name.
    if let Some(key) = unsafe { key_from(name) }
        && key.ends_with(b"-wal")
    {
        let exists = wals().contains_key(&key);
        // SAFETY: SQLite passes where the answer goes.
        unsafe { *out = c_int::from(exists) };
        return ffi::SQLITE_OK;
    }
    match vfs().and_then(|v| unsafe { (*v.base).xAccess }.map(|a| (v, a))) {
        // SAFETY: the base VFS answers for every other file.
        Some((v, access)) => unsafe { access(v.base, name, flags, out) },
        None => ffi::SQLITE_ERROR,
    }
}

unsafe extern "C" fn mem_close(file: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: `file` is a `MemFile` (see `buf_of`); its handle is released once, here.
    unsafe {
        let mem = file.cast::<MemFile>();
        drop(Arc::from_raw((*mem).wal));
        (*mem).base.pMethods = std::ptr::null();
    }
    ffi::SQLITE_OK
}

unsafe extern "C" fn mem_read(
    file: *mut ffi::sqlite3_file,
    out: *mut c_void,
    amount: c_int,
    offset: ffi::sqlite3_int64,
) -> c_int {
    let (Ok(amount), Ok(offset)) = (usize::try_from(amount), usize::try_from(offset)) else {
        return ffi::SQLITE_IOERR_READ;
    };
    // SAFETY: see `buf_of`; `out` has room for `amount` bytes.
    let bytes = unsafe { buf_of(file) }.lock();
    let out = unsafe { std::slice::from_raw_parts_mut(out.cast::<u8>(), amount) };
    let have = bytes.len().saturating_sub(offset).min(amount);
    if have > 0 {
        out[..have].copy_from_slice(&bytes[offset..offset + have]);
    }
    if have < amount {
        // SQLite requires the rest zeroed on a short read.
        out[have..].fill(0);
        return ffi::SQLITE_IOERR_SHORT_READ;
    }
    ffi::SQLITE_OK
}

unsafe extern "C" fn mem_write(
    file: *mut ffi::sqlite3_file,
    data: *const c_void,
    amount: c_int,
    offset: ffi::sqlite3_int64,
) -> c_int {
    let (Ok(amount), Ok(offset)) = (usize::try_from(amount), usize::try_from(offset)) else {
        return ffi::SQLITE_IOERR_WRITE;
    };
    let Some(end) = offset.checked_add(amount) else {
        return ffi::SQLITE_IOERR_WRITE;
    };
    // SAFETY: see `buf_of`; `data` holds `amount` bytes.
    let mut bytes = unsafe { buf_of(file) }.lock();
    let data = unsafe { std::slice::from_raw_parts(data.cast::<u8>(), amount) };
    let len = bytes.len();
    if len < end {
        if bytes.try_reserve(end - len).is_err() {
            return ffi::SQLITE_IOERR_NOMEM;
        }
        BYTES.fetch_add(i64::try_from(end - len).unwrap_or(0), Ordering::Relaxed);
        if offset == len {
            // SQLite appends frames: one copy, no zeroing first.
            bytes.extend_from_slice(data);
            return ffi::SQLITE_OK;
        }
        bytes.resize(end, 0);
    }
    bytes[offset..end].copy_from_slice(data);
    ffi::SQLITE_OK
}

unsafe extern "C" fn mem_truncate(file: *mut ffi::sqlite3_file, size: ffi::sqlite3_int64) -> c_int {
    let Ok(size) = usize::try_from(size) else {
        return ffi::SQLITE_IOERR_TRUNCATE;
    };
    // SAFETY: see `buf_of`.
    unsafe { buf_of(file) }.cut(size);
    ffi::SQLITE_OK
}

unsafe extern "C" fn mem_sync(_file: *mut ffi::sqlite3_file, _flags: c_int) -> c_int {
    // Durability is the node log's: a WAL in memory has nothing to sync.
    ffi::SQLITE_OK
}

unsafe extern "C" fn mem_file_size(
    file: *mut ffi::sqlite3_file,
    size: *mut ffi::sqlite3_int64,
) -> c_int {
    // SAFETY: see `buf_of`; SQLite passes where the size goes.
    let len = unsafe { buf_of(file) }.lock().len();
    unsafe { *size = ffi::sqlite3_int64::try_from(len).unwrap_or(i64::MAX) };
    ffi::SQLITE_OK
}

unsafe extern "C" fn mem_lock(_file: *mut ffi::sqlite3_file, _level: c_int) -> c_int {
    // One connection per object file (`database::open_file`): nothing to lock against.
    ffi::SQLITE_OK
}

unsafe extern "C" fn mem_check_reserved_lock(
    _file: *mut ffi::sqlite3_file,
    out: *mut c_int,
) -> c_int {
    // SAFETY: SQLite passes where the answer goes.
    unsafe { *out = 0 };
    ffi::SQLITE_OK
}

unsafe extern "C" fn mem_file_control(
    _file: *mut ffi::sqlite3_file,
    _op: c_int,
    _arg: *mut c_void,
) -> c_int {
    ffi::SQLITE_NOTFOUND
}

unsafe extern "C" fn mem_sector_size(_file: *mut ffi::sqlite3_file) -> c_int {
    4096
}

unsafe extern "C" fn mem_device_characteristics(_file: *mut ffi::sqlite3_file) -> c_int {
    ffi::SQLITE_IOCAP_POWERSAFE_OVERWRITE | ffi::SQLITE_IOCAP_SEQUENTIAL
}

#[cfg(test)]
mod tests {
    use rusqlite::{Connection, OpenFlags};

    use super::*;

    fn open(path: &Path) -> Connection {
        assert!(register());
        let conn = Connection::open_with_flags_and_vfs(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            VFS_NAME,
        )
        .unwrap();
        conn.execute_batch(
            "PRAGMA locking_mode = EXCLUSIVE; PRAGMA journal_mode = WAL; PRAGMA synchronous = OFF;",
        )
        .unwrap();
        conn.set_db_config(
            rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
            true,
        )
        .unwrap();
        conn
    }

    fn sum(conn: &Connection) -> i64 {
        conn.query_row("SELECT coalesce(sum(x), 0) FROM t", [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn commits_stay_in_memory_across_a_reopen_and_reach_the_file_at_a_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.sqlite");
        let conn = open(&path);
        conn.execute_batch("CREATE TABLE t (x INTEGER); INSERT INTO t VALUES (1), (2);")
            .unwrap();
        drop(conn);
        let mut wal = path.as_os_str().to_owned();
        wal.push("-wal");
        assert!(
            !Path::new(&wal).exists(),
            "the WAL must not be a file on disk"
        );
        let held = read(&path).expect("the WAL is in memory");
        assert!(held.len() > 32, "the WAL holds the commits' frames");
        assert!(bytes() >= held.len() as u64);

        // Reopened, the connection reads the commits back from the WAL in memory.
        let conn = open(&path);
        assert_eq!(sum(&conn), 3);
        conn.execute_batch("INSERT INTO t VALUES (4)").unwrap();
        let busy: i64 = conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))
            .unwrap();
        assert_eq!(busy, 0);
        drop(conn);
        discard(&path);
        assert!(read(&path).is_none());

        // The file alone now holds everything: read it with SQLite's own VFS.
        let plain = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
        assert_eq!(sum(&plain), 7);
    }

    #[test]
    fn a_discarded_wal_loses_what_was_not_checkpointed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.sqlite");
        let conn = open(&path);
        conn.execute_batch("CREATE TABLE t (x INTEGER); INSERT INTO t VALUES (5);")
            .unwrap();
        let busy: i64 = conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))
            .unwrap();
        assert_eq!(busy, 0);
        conn.execute_batch("INSERT INTO t VALUES (6)").unwrap();
        drop(conn);
        // As after a crash: the WAL is gone, the file has the checkpointed state.
        discard(&path);
        let conn = open(&path);
        assert_eq!(sum(&conn), 5);
    }

    #[test]
    fn a_wal_cut_back_keeps_only_the_commits_before_the_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.sqlite");
        let conn = open(&path);
        conn.execute_batch("CREATE TABLE t (x INTEGER); INSERT INTO t VALUES (1);")
            .unwrap();
        drop(conn);
        let first = read(&path).unwrap().len() as u64;
        let conn = open(&path);
        conn.execute_batch("INSERT INTO t VALUES (10)").unwrap();
        drop(conn);
        assert!(read(&path).unwrap().len() as u64 > first);
        truncate(&path, first);
        let conn = open(&path);
        assert_eq!(sum(&conn), 1);
    }
}

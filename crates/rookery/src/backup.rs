//! Backups on disk: what a backup directory holds, how the object files of a class directory
//! are found and described, and restoring a backup into an empty data directory.
//!
//! A backup directory holds `rookery.sqlite` (the catalog), `objects/<class uid>/<x>/<id>.sqlite`
//! (one consistent copy of each object's database) and, written last, `rookery-backup.json`:
//! a directory without it is an unfinished backup and is refused by [`restore_backup`].
//! Taking one is [`Admin::backup`](crate::Admin::backup).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use rusqlite::{Connection, OpenFlags, OptionalExtension};

use crate::admin_error::{AdminError, AdminResult};
use crate::durable_dir::sync_dir;
use crate::error::Error;
use crate::id::ID_BYTES;

/// The file a finished backup holds last: what it copied, as JSON.
pub const BACKUP_MANIFEST: &str = "rookery-backup.json";
/// The catalog's file name, in a data directory and in a backup.
const CATALOG: &str = "rookery.sqlite";
/// Where object databases live, in a data directory and in a backup.
const OBJECTS: &str = "objects";

/// One object database found in a class directory.
#[derive(Debug, Clone)]
pub(crate) struct ObjectFile {
    /// The object's id.
    pub(crate) id: [u8; ID_BYTES],
    /// The name the file records, once looked up (see [`read_name`]).
    pub(crate) name: Option<String>,
    /// Bytes of the database (and of a WAL file an older version left, if any).
    pub(crate) bytes: u64,
    /// When the database or its WAL last changed, in ms since the Unix epoch.
    pub(crate) modified_ms: Option<i64>,
}

/// The ids of the object databases in `class_dir` (its 16 shard directories), sorted.
pub(crate) fn list_ids(class_dir: &Path) -> io::Result<Vec<[u8; ID_BYTES]>> {
    let mut ids = Vec::new();
    for shard in "0123456789abcdef".chars() {
        let dir = class_dir.join(shard.to_string());
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            let Some(hex) = name.to_str().and_then(|n| n.strip_suffix(".sqlite")) else {
                continue;
            };
            let mut id = [0u8; ID_BYTES];
            if hex.len() == ID_BYTES * 2 && hex::decode_to_slice(hex, &mut id).is_ok() {
                ids.push(id);
            }
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

/// The object databases in `class_dir`, sorted by id, described without their names.
pub(crate) fn list_files(class_dir: &Path) -> io::Result<Vec<ObjectFile>> {
    let mut files = Vec::new();
    for id in list_ids(class_dir)? {
        let hex = hex::encode(id);
        let path = class_dir.join(&hex[..1]).join(format!("{hex}.sqlite"));
        // Removed since it was listed: an object deleted meanwhile.
        if let Some(file) = stat(id, &path)? {
            files.push(file);
        }
    }
    Ok(files)
}

/// The path of the object database `id` in `class_dir`.
pub(crate) fn path_in(class_dir: &Path, id: &[u8; ID_BYTES]) -> PathBuf {
    let hex = hex::encode(id);
    class_dir.join(&hex[..1]).join(format!("{hex}.sqlite"))
}

/// Size and time of the database at `path` and its WAL; `None` if there is no database.
fn stat(id: [u8; ID_BYTES], path: &Path) -> io::Result<Option<ObjectFile>> {
    let meta = match fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    let wal = fs::metadata(PathBuf::from(wal)).ok();
    let modified = [Some(&meta), wal.as_ref()]
        .into_iter()
        .flatten()
        .filter_map(|m| m.modified().ok())
        .filter_map(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .max();
    Ok(Some(ObjectFile {
        id,
        name: None,
        bytes: meta.len() + wal.map_or(0, |m| m.len()),
        modified_ms: modified,
    }))
}

/// The database at `path` described, its name included; `None` if there is none.
pub(crate) fn describe_file(path: &Path) -> io::Result<Option<ObjectFile>> {
    let Some(hex) = path
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_suffix(".sqlite"))
    else {
        return Ok(None);
    };
    let mut id = [0u8; ID_BYTES];
    if hex::decode_to_slice(hex, &mut id).is_err() {
        return Ok(None);
    }
    Ok(stat(id, path)?.map(|mut file| {
        file.name = read_name(path);
        file
    }))
}

/// The name the object database at `path` records, read without locking or writing
/// anything (SQLite's `immutable`): a live object holds its file locked, and its name may
/// still be only in its WAL, so the answer is `None` then.
pub(crate) fn read_name(path: &Path) -> Option<String> {
    let text = path.to_str()?;
    let uri = format!(
        "file:{}?immutable=1",
        text.replace('%', "%25")
            .replace('?', "%3f")
            .replace('#', "%23")
    );
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
        | OpenFlags::SQLITE_OPEN_URI
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(uri, flags).ok()?;
    conn.query_row(
        "SELECT value FROM main._rookery_meta WHERE key = 'name'",
        [],
        |r| r.get::<_, String>(0),
    )
    .optional()
    .ok()
    .flatten()
}

/// Whether `dir` is absent or an empty directory.
fn is_empty_dir(dir: &Path) -> io::Result<bool> {
    match fs::read_dir(dir) {
        Ok(mut entries) => Ok(entries.next().is_none()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(e),
    }
}

/// Starts a backup of `data_dir` in `dest`: refuses a `dest` that holds anything or lies
/// inside the data directory, makes it, and copies the catalog.
pub(crate) fn begin(data_dir: &Path, dest: &Path) -> AdminResult<()> {
    if !dest.is_absolute() {
        return Err(AdminError::BadInput(format!(
            "the backup directory {} must be an absolute path (it is made by the server)",
            dest.display()
        )));
    }
    if !is_empty_dir(dest).map_err(Error::from)? {
        return Err(AdminError::BadInput(format!(
            "the backup directory {} is not empty",
            dest.display()
        )));
    }
    let data = fs::canonicalize(data_dir).map_err(Error::from)?;
    let parent = dest.parent().map(fs::canonicalize).transpose();
    if let Ok(Some(parent)) = parent
        && parent.starts_with(&data)
    {
        return Err(AdminError::BadInput(
            "the backup directory must be outside the data directory".into(),
        ));
    }
    fs::create_dir_all(dest).map_err(Error::from)?;
    let catalog = Connection::open_with_flags(
        data_dir.join(CATALOG),
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(Error::from)?;
    // As the runtime opens it: no `-shm` file beside it.
    catalog
        .execute_batch("PRAGMA locking_mode = EXCLUSIVE;")
        .map_err(Error::from)?;
    catalog
        .busy_timeout(std::time::Duration::from_secs(5))
        .map_err(Error::from)?;
    let target = dest.join(CATALOG);
    {
        let mut copy = Connection::open(&target).map_err(Error::from)?;
        let backup = rusqlite::backup::Backup::new(&catalog, &mut copy).map_err(Error::from)?;
        match backup.step(-1).map_err(Error::from)? {
            rusqlite::backup::StepResult::Done => {}
            other => {
                return Err(AdminError::Runtime(Error::msg(format!(
                    "the backup of the catalog did not finish: {other:?}"
                ))));
            }
        }
    }
    fs::File::open(&target)
        .and_then(|f| f.sync_all())
        .map_err(Error::from)?;
    Ok(())
}

/// Where the copy of object `hex` of class `uid` goes in backup `dest` (its directory made).
pub(crate) fn object_path(dest: &Path, uid: &str, hex: &str) -> io::Result<PathBuf> {
    let dir = dest.join(OBJECTS).join(uid).join(&hex[..1]);
    fs::create_dir_all(&dir)?;
    Ok(dir.join(format!("{hex}.sqlite")))
}

/// Ends a backup: syncs its directories, then writes its manifest, which marks it whole.
pub(crate) fn finish(dest: &Path, manifest: &[u8]) -> AdminResult<()> {
    sync_tree(dest).map_err(Error::from)?;
    let path = dest.join(BACKUP_MANIFEST);
    fs::write(&path, manifest).map_err(Error::from)?;
    fs::File::open(&path)
        .and_then(|f| f.sync_all())
        .map_err(Error::from)?;
    sync_dir(dest).map_err(Error::from)?;
    Ok(())
}

/// Syncs every directory under `dir`, and `dir`.
fn sync_tree(dir: &Path) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            sync_tree(&entry.path())?;
        }
    }
    sync_dir(dir)
}

/// What a restore copied.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RestoreReport {
    /// Object databases copied.
    pub objects: usize,
    /// Bytes copied.
    pub bytes: u64,
}

/// Copies the finished backup in `backup_dir` into `data_dir`, which must be absent or empty
/// (a server must not be running on it). Start a server on `data_dir` afterwards: it finds
/// every object as the backup copied it, and rebuilds its alarm index.
pub fn restore_backup(backup_dir: &Path, data_dir: &Path) -> AdminResult<RestoreReport> {
    if !backup_dir.join(BACKUP_MANIFEST).is_file() || !backup_dir.join(CATALOG).is_file() {
        return Err(AdminError::BadInput(format!(
            "{} is not a finished Rookery backup (it lacks {BACKUP_MANIFEST} or {CATALOG})",
            backup_dir.display()
        )));
    }
    if !is_empty_dir(data_dir).map_err(Error::from)? {
        return Err(AdminError::BadInput(format!(
            "the data directory {} is not empty: restore only into an empty one",
            data_dir.display()
        )));
    }
    fs::create_dir_all(data_dir).map_err(Error::from)?;
    let mut report = RestoreReport {
        objects: 0,
        bytes: 0,
    };
    copy_file(
        &backup_dir.join(CATALOG),
        &data_dir.join(CATALOG),
        &mut report,
    )
    .map_err(Error::from)?;
    let objects = backup_dir.join(OBJECTS);
    if objects.is_dir() {
        copy_tree(&objects, &data_dir.join(OBJECTS), &mut report).map_err(Error::from)?;
    }
    sync_tree(data_dir).map_err(Error::from)?;
    Ok(report)
}

/// Copies the object databases under `from` into `to`, syncing each.
fn copy_tree(from: &Path, to: &Path, report: &mut RestoreReport) -> io::Result<()> {
    fs::create_dir_all(to)?;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &target, report)?;
        } else if entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.ends_with(".sqlite"))
        {
            copy_file(&entry.path(), &target, report)?;
            report.objects += 1;
        }
    }
    Ok(())
}

/// Copies one file and syncs the copy.
fn copy_file(from: &Path, to: &Path, report: &mut RestoreReport) -> io::Result<()> {
    report.bytes += fs::copy(from, to)?;
    fs::File::open(to)?.sync_all()
}

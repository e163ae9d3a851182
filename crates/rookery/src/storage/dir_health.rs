//! Whether the data directory is still there and writable.
//!
//! Open files outlive their directory: if the data directory is deleted (or replaced, or its
//! file system turns read-only) while the server runs, SQLite goes on committing into files
//! that no longer have a name, and every acknowledged write would be lost at the next start.
//! So the directory is checked: cheaply (one `stat`) before every sync round and, in relaxed
//! durability, before every commit; fully (a probe file written and removed) every half
//! second by the sync thread. A failed check turns commits into `StorageUnavailable` errors.
//! A directory that was replaced never counts as healthy again; one that was only unwritable
//! does once it is writable.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

/// The probe file the full check writes and removes.
const PROBE: &str = ".rookery-probe";

/// The health of one data directory.
#[derive(Debug)]
pub(crate) struct DirHealth {
    dir: PathBuf,
    /// The directory's identity when the runtime started: (device, inode).
    identity: (u64, u64),
    ok: AtomicBool,
    /// Set once the directory was found replaced or gone: that cannot heal.
    lost: AtomicBool,
    problem: Mutex<String>,
}

impl DirHealth {
    /// Watches `dir`, as it is now.
    pub(crate) fn new(dir: &Path) -> std::io::Result<Self> {
        Ok(Self {
            identity: identity(dir)?,
            dir: dir.to_path_buf(),
            ok: AtomicBool::new(true),
            lost: AtomicBool::new(false),
            problem: Mutex::new(String::new()),
        })
    }

    /// Whether the last check found the directory usable.
    pub(crate) fn is_ok(&self) -> bool {
        self.ok.load(Ordering::Acquire)
    }

    /// What the last failed check found.
    pub(crate) fn problem(&self) -> String {
        self.problem
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The cheap check: the directory is still the one the runtime started with.
    pub(crate) fn check_quick(&self) -> Result<(), String> {
        if self.lost.load(Ordering::Acquire) {
            return Err(self.problem());
        }
        match identity(&self.dir) {
            Ok(id) if id == self.identity => Ok(()),
            Ok(_) => Err(self.fail(true, "was replaced by another directory")),
            Err(e) => Err(self.fail(true, &format!("is gone ({e})"))),
        }
    }

    /// The full check: the quick one, then a file written and removed.
    pub(crate) fn check_full(&self) -> Result<(), String> {
        self.check_quick()?;
        let probe = self.dir.join(PROBE);
        match fs::write(&probe, b"").and_then(|()| fs::remove_file(&probe)) {
            Ok(()) => {
                self.ok.store(true, Ordering::Release);
                Ok(())
            }
            Err(e) => Err(self.fail(false, &format!("cannot be written ({e})"))),
        }
    }

    fn fail(&self, lost: bool, what: &str) -> String {
        let problem = format!("the data directory {} {what}", self.dir.display());
        if self.ok.swap(false, Ordering::AcqRel) {
            tracing::error!("{problem}; writes are refused until it is back");
        }
        if lost {
            self.lost.store(true, Ordering::Release);
        }
        *self.problem.lock().unwrap_or_else(|e| e.into_inner()) = problem.clone();
        problem
    }
}

#[cfg(unix)]
fn identity(dir: &Path) -> std::io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = fs::metadata(dir)?;
    if !m.is_dir() {
        return Err(std::io::Error::other("not a directory"));
    }
    Ok((m.dev(), m.ino()))
}

#[cfg(not(unix))]
fn identity(dir: &Path) -> std::io::Result<(u64, u64)> {
    fs::metadata(dir).map(|_| (0, 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deleted_or_replaced_directory_stays_unhealthy() {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("data");
        fs::create_dir(&dir).unwrap();
        let health = DirHealth::new(&dir).unwrap();
        assert!(health.check_full().is_ok() && health.is_ok());
        fs::remove_dir_all(&dir).unwrap();
        let problem = health.check_quick().unwrap_err();
        assert!(problem.contains("is gone"), "{problem}");
        assert!(!health.is_ok());
        // The same path made again is another directory: the old data is not in it.
        fs::create_dir(&dir).unwrap();
        assert!(health.check_full().is_err());
        assert!(!health.is_ok());
    }
}

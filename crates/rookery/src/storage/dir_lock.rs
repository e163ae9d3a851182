//! The data directory's lock: one process at a time may serve a data directory.
//!
//! Two servers on one directory would each believe they own every object and acknowledge the
//! same writes twice. The lock is an exclusive `flock` on `rookery.lock`, held as long as the
//! runtime lives and released by the kernel when the process dies (also on `kill -9`), so a
//! crash never leaves a stale lock behind. The file holds the holder's pid, for the error the
//! next process shows.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use crate::error::StartError;

/// The lock file's name in the data directory.
pub(crate) const LOCK_FILE: &str = "rookery.lock";

/// A held lock on a data directory; released when dropped.
#[derive(Debug)]
pub(crate) struct DirLock {
    // Held open: closing the file releases the lock.
    _file: File,
}

impl DirLock {
    /// Locks `data_dir` for this process, or says which process holds it.
    pub(crate) fn acquire(data_dir: &Path) -> Result<Self, StartError> {
        let path = data_dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        if !try_lock(&file)? {
            let mut holder = String::new();
            // The pid is for the message only; an unreadable one is reported as unknown.
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            return Err(StartError::Locked(format!(
                "the data directory {} is in use by another Rookery process (pid {}); stop it \
                 first, or give this one another --data-dir",
                data_dir.display(),
                if holder.is_empty() { "unknown" } else { holder }
            )));
        }
        file.set_len(0)?;
        file.seek(SeekFrom::Start(0))?;
        writeln!(file, "{}", std::process::id())?;
        Ok(Self { _file: file })
    }
}

#[cfg(unix)]
fn try_lock(file: &File) -> std::io::Result<bool> {
    use std::os::fd::AsRawFd;
    // SAFETY: flock only reads the descriptor, which `file` keeps open.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(e)
    }
}

#[cfg(not(unix))]
fn try_lock(_file: &File) -> std::io::Result<bool> {
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_directory_is_refused_with_the_holders_pid() {
        let dir = tempfile::tempdir().unwrap();
        let first = DirLock::acquire(dir.path()).unwrap();
        let second = DirLock::acquire(dir.path()).unwrap_err().to_string();
        assert!(
            second.contains("in use by another Rookery process"),
            "{second}"
        );
        assert!(
            second.contains(&format!("pid {}", std::process::id())),
            "{second}"
        );
        drop(first);
        DirLock::acquire(dir.path()).expect("free again once the holder is gone");
    }
}

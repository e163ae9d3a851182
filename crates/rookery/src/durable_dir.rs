//! Directories whose entries survive power loss.
//!
//! A new directory (or file) exists after a power cut only once the directory holding its name
//! has been synced: `mkdir` alone leaves the name in the page cache. Every directory the
//! runtime makes is made through here.

use std::fs::{self, File};
use std::io;
use std::path::Path;

/// Makes `dir` and any missing ancestors, and syncs the parent of each one made, so that the
/// whole path survives power loss. Returns whether anything was made.
pub(crate) fn create_dir_durable(dir: &Path) -> io::Result<bool> {
    if dir.is_dir() {
        return Ok(false);
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_dir_durable(parent)?;
    }
    match fs::create_dir(dir) {
        Ok(()) => {}
        // Made meanwhile by someone else: still sync its parent, as they may not have.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => {}
        Err(e) => return Err(e),
    }
    sync_dir(
        dir.parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new(".")),
    )?;
    Ok(true)
}

/// Replaces the file at `path` with `bytes`, durably and atomically (a temporary file,
/// synced, renamed over it, the directory synced).
pub(crate) fn write_file_durable(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    {
        let mut file = File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    sync_dir(
        path.parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new(".")),
    )
}

/// Makes the entries of `dir` (names made, removed or renamed in it) durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn makes_every_missing_level_and_reports_it() {
        let root = tempfile::tempdir().unwrap();
        let deep = root.path().join("a").join("b").join("c");
        assert!(create_dir_durable(&deep).unwrap());
        assert!(deep.is_dir());
        assert!(
            !create_dir_durable(&deep).unwrap(),
            "nothing to make the second time"
        );
    }
}

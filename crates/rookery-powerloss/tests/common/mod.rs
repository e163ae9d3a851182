//! Shared fixtures: a mounted filesystem in a temporary directory.
#![allow(dead_code)]

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use rookery_powerloss::PowerLossFs;
use tempfile::TempDir;

/// A mounted filesystem; fields drop in order, so it unmounts before the directory goes.
pub struct Fixture {
    pub fs: PowerLossFs,
    pub mnt: PathBuf,
    pub backing: PathBuf,
    pub _dir: TempDir,
}

impl Fixture {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let backing = dir.path().join("backing");
        let mnt = dir.path().join("mnt");
        fs::create_dir(&backing).expect("mkdir backing");
        fs::create_dir(&mnt).expect("mkdir mnt");
        let fs = PowerLossFs::mount(&backing, &mnt).expect("mount (needs root and /dev/fuse)");
        let mnt = fs.mountpoint().to_path_buf();
        let backing = fs.backing_dir().to_path_buf();
        Self {
            fs,
            mnt,
            backing,
            _dir: dir,
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    pub fn cut(&self) {
        self.fs.power_cut().expect("power cut");
    }
}

/// fsync of a directory (FUSE fsyncdir).
pub fn sync_dir(path: &Path) {
    File::open(path)
        .and_then(|d| d.sync_all())
        .expect("fsync dir");
}

/// Creates or replaces `path` with `data`; `sync` = fdatasync it.
pub fn write_file(path: &Path, data: &[u8], sync: bool) {
    let mut f = File::create(path).expect("create");
    f.write_all(data).expect("write");
    if sync {
        f.sync_data().expect("fdatasync");
    }
}

/// Appends `data` to `path`; `sync` = fsync it.
pub fn append(path: &Path, data: &[u8], sync: bool) {
    let mut f = OpenOptions::new()
        .append(true)
        .open(path)
        .expect("open for append");
    f.write_all(data).expect("append");
    if sync {
        f.sync_all().expect("fsync");
    }
}

/// The content of `path`, or `None` if it does not exist.
pub fn read(path: &Path) -> Option<Vec<u8>> {
    match File::open(path) {
        Ok(mut f) => {
            let mut buf = Vec::new();
            f.read_to_end(&mut buf).expect("read");
            Some(buf)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => panic!("open {}: {e}", path.display()),
    }
}

/// Sorted names in a directory.
pub fn list(path: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(path)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

//! Measures what `syncfs(2)` and `sync(2)` on the mount send to the filesystem.
//!
//! fuser logs every request it receives (known or not, e.g. `FUSE_SYNCFS`, opcode 50, which it
//! does not decode) at debug level before dispatching it, so capturing its log around a call
//! shows every request that call caused. An `fsync` is the positive control. This file holds a
//! single test so no other test's requests mix into the capture.

mod common;

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use common::*;

static CAPTURING: AtomicBool = AtomicBool::new(false);
static CAPTURED: Mutex<Vec<String>> = Mutex::new(Vec::new());

struct Capture;

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }

    fn log(&self, record: &log::Record) {
        if !CAPTURING.load(Ordering::SeqCst) {
            return;
        }
        let line = record.args().to_string();
        if line.starts_with("FUSE(") {
            CAPTURED
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(line);
        }
    }

    fn flush(&self) {}
}

static LOGGER: Capture = Capture;

/// The FUSE requests received while `f` runs.
fn requests_during(f: impl FnOnce()) -> Vec<String> {
    CAPTURED.lock().unwrap().clear();
    CAPTURING.store(true, Ordering::SeqCst);
    f();
    CAPTURING.store(false, Ordering::SeqCst);
    std::mem::take(&mut *CAPTURED.lock().unwrap())
}

#[test]
fn syncfs_and_sync_send_nothing_to_the_filesystem() {
    log::set_logger(&LOGGER).expect("logger");
    log::set_max_level(log::LevelFilter::Trace);
    let fx = Fixture::new();

    let path = fx.path("f");
    let mut file = File::create(&path).unwrap();
    file.write_all(b"fsynced").unwrap();
    let root = File::open(&fx.mnt).unwrap();
    sync_dir(&fx.mnt);
    let counts = fx.fs.sync_counts();

    // Positive control: an fsync shows up as a request.
    let control = requests_during(|| file.sync_all().unwrap());
    eprintln!("fsync sent: {control:?}");
    assert!(
        control.iter().any(|r| r.contains("FSYNC")),
        "the capture does not work: {control:?}"
    );
    file.write_all(b" + only syncfs'd").unwrap();
    let counts_after_control = fx.fs.sync_counts();
    assert_eq!(counts_after_control.fsync, counts.fsync + 1);

    // SAFETY: a valid descriptor on the mount.
    let syncfs = requests_during(|| assert_eq!(unsafe { libc::syncfs(root.as_raw_fd()) }, 0));
    eprintln!("syncfs(2) sent: {syncfs:?}");
    // SAFETY: sync(2) has no arguments and cannot fail.
    let sync = requests_during(|| unsafe { libc::sync() });
    eprintln!("sync(2) sent: {sync:?}");
    assert_eq!(
        syncfs,
        Vec::<String>::new(),
        "syncfs reached the filesystem"
    );
    assert_eq!(sync, Vec::<String>::new(), "sync reached the filesystem");
    assert_eq!(fx.fs.sync_counts(), counts_after_control);

    // So what only syncfs/sync covered is lost at a power cut.
    assert_eq!(read(&path).unwrap(), b"fsynced + only syncfs'd");
    drop(file);
    fx.cut();
    assert_eq!(read(&path).unwrap(), b"fsynced");
}

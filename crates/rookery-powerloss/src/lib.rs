//! A FUSE pass-through filesystem that loses unsynced data on command, for power-loss tests
//! (in the spirit of LazyFS).
//!
//! `kill -9` leaves the kernel page cache alone, so a crash test built on it cannot see a
//! missing `fsync`. Run the process under test with its data on a [`PowerLossFs`] mount, kill
//! it, call [`PowerLossFs::power_cut`], and start it again: whatever was not synced is gone,
//! exactly as the contract below says.
//!
//! ```no_run
//! # fn main() -> Result<(), rookery_powerloss::Error> {
//! let fs = rookery_powerloss::PowerLossFs::mount("/tmp/backing", "/tmp/mnt")?;
//! // ... run a server with its data dir under /tmp/mnt, SIGKILL it, wait for it ...
//! fs.power_cut()?;
//! assert!(fs.sync_counts().fdatasync > 0);
//! // ... start the server again on /tmp/mnt and check what survived ...
//! drop(fs); // unmounts
//! # Ok(())
//! # }
//! ```
//!
//! # The contract
//!
//! The filesystem shows a *current* state (what processes see) and keeps a *durable* state
//! (what survives a power cut). The durable state is exactly the backing directory (less its
//! private `.rookery-powerloss` subdirectory); the difference lives in memory.
//!
//! - **File data.** `write`, `truncate`/`ftruncate`, `open(O_TRUNC)` and `fallocate` (plain
//!   allocation; `FALLOC_FL_KEEP_SIZE` is a no-op, hole punching is refused) change only the
//!   current state. Reads see the current state. `fsync` and `fdatasync` (the same here) make
//!   the whole current content of that file, size included, durable. Nothing else does:
//!   not `close`, not `syncfs`, not `sync` (see below).
//! - **Directory entries.** `create`, `mknod` (regular files only), `mkdir`, `symlink`, `link`,
//!   `unlink`, `rmdir` and `rename` change only the current state. `fsync` of a directory
//!   (FUSE `fsyncdir`) makes that directory's current list of entries durable, each name
//!   pointing at the same file or directory it points at now, and nothing else: neither the
//!   entries of its subdirectories nor its own name in its parent.
//! - **Data and name are independent (the strict model).** A file whose data was synced but
//!   whose name was not is lost at a power cut; a name that was synced keeps whatever data of
//!   its file was synced (empty if none). ext4 and others often keep more than this; the model
//!   is the least a program may count on, so code that passes here is right on them too.
//! - **Consequences of "per directory".** A rename from directory A to directory B is durable in
//!   B once B is synced and gone from A once A is synced; until both are, a power cut can leave
//!   a file under both names (two hard links) or under neither. A directory has one backing
//!   directory, so a directory renamed across parents takes its durable name with it when the
//!   new parent is synced. A new directory that was never synced comes back empty; one whose
//!   own name was never synced in its parent comes back not at all, with all below it.
//! - **Attributes.** `chmod` and `chown` go straight to the backing file, so they are durable at
//!   once (not modelled). Timestamps are kept in memory and not preserved across a power cut.
//!   Sizes and link counts are exact; `st_ino` is the FUSE node id, stable while mounted.
//! - **Power cut.** [`PowerLossFs::power_cut`] drops the current state: file contents revert to
//!   their last synced content, entries created since their directory's last sync vanish, and
//!   entries removed or renamed since then come back. To leave no kernel cache behind, it
//!   unmounts and mounts again; inside one mount nothing is cached by the kernel either
//!   (direct I/O, zero attribute and entry timeouts). Kill the process under test and wait for
//!   it first; if a file is still open, the old mount is detached lazily and every request on
//!   it fails with `EIO`, so a straggler can never write into the new state.
//! - **Unmount** (dropping [`PowerLossFs`]) also drops the current state: afterwards the backing
//!   directory is exactly the durable state, and mounting it again shows just that.
//! - **Sync counts.** [`PowerLossFs::sync_counts`] counts `fsync`, `fdatasync` and `fsyncdir`
//!   requests received, across power cuts.
//!
//! # What `syncfs(2)` and `sync(2)` do on the mount
//!
//! Measured on this project's machines (Linux 6.18; the `syncfs` integration test repeats the
//! measurement on every run, with an `fsync` as positive control): **neither call sends any
//! FUSE request at all.** No `FUSE_SYNCFS` (opcode 50), no `FSYNC` or `FLUSH` of the files
//! that are open, no `WRITE`. The kernel sends `FUSE_SYNCFS` only on connections whose
//! `sync_fs` flag is set, which virtiofs does and a `/dev/fuse` mount never does; and with
//! direct I/O there are no dirty pages for `sync` to write back. So `syncfs` and `sync` make
//! nothing durable here, and writes that only they covered are lost at a power cut. That is
//! stricter than ext4 or xfs, where `syncfs` writes and flushes everything: a program that
//! relies on `syncfs` will see those writes lost on this filesystem although a real disk would
//! have kept them (Rookery stopped relying on it when this was measured).
//!
//! # Limits
//!
//! - Regular files, directories, symlinks and hard links only: `mknod` of devices, FIFOs and
//!   sockets fails with `EPERM`; `RENAME_EXCHANGE` and `RENAME_WHITEOUT` with `EINVAL`; hole
//!   punching and other `fallocate` modes with `EOPNOTSUPP`; extended attributes are not
//!   supported. No writable shared `mmap` (direct I/O).
//! - A directory sync that would make the durable tree a cycle (durably `x/p`, currently `p/x`,
//!   then only `p` synced) fails with `EIO`; syncing the old parent first avoids it. Any other
//!   failure to apply a directory sync to the backing directory also answers `EIO`.
//! - Inode numbers change across a power cut (the mount is new), but are never reused by one
//!   [`PowerLossFs`].
//! - The backing directory itself is not fsynced: the simulated power cut is the only failure
//!   modelled, and it never touches what reached the backing directory.
//! - One thread serves all requests; fine for tests, not for benchmarks.
//!
//! # How it works
//!
//! The backing directory mirrors the durable namespace. Its hidden `.rookery-powerloss`
//! subdirectory (staging) holds a hard link to every file the model knows, so a file's durable
//! content can outlive its last durable name and be linked under a new one at a directory
//! sync, and the backing directories of directories that have no durable name yet. File
//! writes are kept in memory as extents over the durable content until `fsync` writes them
//! into the backing file. Each directory keeps its current and its durable entries; `fsyncdir`
//! applies the difference to its backing directory (unlink/link for files, rename for
//! directories). A power cut drops the in-memory state, empties the staging area and reads the
//! mirror again.
//!
//! # Requirements
//!
//! Root and `/dev/fuse`: the filesystem is mounted with `mount(2)` directly, so neither
//! `fusermount3` (Debian's `fuse3`) nor libfuse is needed. Everything runs in background
//! threads of the calling process.

mod error;
mod fuse;
mod overlay;
mod state;
mod sys;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use fuser::SessionACL;
use tracing::{info, warn};

pub use crate::error::Error;
pub use crate::state::STAGING;

use crate::fuse::{Counters, FuseFs, Live, Shared};
use crate::state::State;

/// How many sync requests the filesystem has received (cumulative across power cuts).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncCounts {
    /// `fsync` of a file.
    pub fsync: u64,
    /// `fdatasync` of a file.
    pub fdatasync: u64,
    /// `fsync` or `fdatasync` of a directory.
    pub fsyncdir: u64,
}

impl SyncCounts {
    /// File syncs of either kind.
    pub fn files(&self) -> u64 {
        self.fsync + self.fdatasync
    }
}

/// One mounted session: the thread serving `/dev/fuse` for it.
struct Session {
    thread: JoinHandle<io::Result<()>>,
}

/// A mounted power-loss filesystem; dropping it unmounts (see the crate docs for the contract).
pub struct PowerLossFs {
    shared: Arc<Shared>,
    session: Mutex<Option<Session>>,
    backing: PathBuf,
    mountpoint: PathBuf,
    /// Set once unmounted, so `Drop` does nothing more.
    closed: bool,
}

impl std::fmt::Debug for PowerLossFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PowerLossFs")
            .field("backing", &self.backing)
            .field("mountpoint", &self.mountpoint)
            .field("sync_counts", &self.sync_counts())
            .finish()
    }
}

impl PowerLossFs {
    /// Mounts the durable state stored in `backing_dir` at `mountpoint` (both must exist).
    pub fn mount(
        backing_dir: impl AsRef<Path>,
        mountpoint: impl AsRef<Path>,
    ) -> Result<Self, Error> {
        let backing = canonical_dir(backing_dir.as_ref())?;
        let mountpoint = canonical_dir(mountpoint.as_ref())?;
        if backing.starts_with(&mountpoint) || mountpoint.starts_with(&backing) {
            // Scanning or serving one through the other would recurse into our own mount.
            return Err(Error::InvalidPaths(format!(
                "backing dir {} and mountpoint {} must not contain each other",
                backing.display(),
                mountpoint.display()
            )));
        }
        let state = State::load(&backing, state::ROOT + 1)?;
        let shared = Arc::new(Shared {
            live: Mutex::new(Live {
                epoch: 1,
                state: Some(state),
            }),
            counts: Counters::default(),
            sync_delay_us: AtomicU64::new(0),
        });
        let session = start_session(&shared, 1, &mountpoint)?;
        info!(backing = %backing.display(), mountpoint = %mountpoint.display(), "mounted");
        Ok(Self {
            shared,
            session: Mutex::new(Some(session)),
            backing,
            mountpoint,
            closed: false,
        })
    }

    /// Simulates a power cut: drops everything not durable and remounts the durable state.
    pub fn power_cut(&self) -> Result<(), Error> {
        let mut session = self.session.lock().unwrap_or_else(PoisonError::into_inner);
        // Retire the epoch first, so anything still reaching the old mount fails from now on.
        let next_ino = {
            let mut live = self.shared.lock();
            live.epoch += 1;
            let next = live.state.as_ref().map(State::next_ino);
            live.state = None;
            next
        };
        if let Some(old) = session.take() {
            stop_session(&self.mountpoint, old)?;
        }
        let state = State::load(&self.backing, next_ino.unwrap_or(state::ROOT + 1))?;
        let epoch = {
            let mut live = self.shared.lock();
            live.state = Some(state);
            live.epoch
        };
        *session = Some(start_session(&self.shared, epoch, &self.mountpoint)?);
        info!(mountpoint = %self.mountpoint.display(), epoch, "power cut");
        Ok(())
    }

    /// Makes every file `fsync`/`fdatasync` take `delay`, like a disk whose cache flush takes
    /// that long (requests wait behind it). Writes acknowledged before their sync then stay
    /// unsynced for a while, so a test that cuts the power finds them.
    pub fn set_sync_delay(&self, delay: std::time::Duration) {
        let micros = u64::try_from(delay.as_micros()).unwrap_or(u64::MAX);
        self.shared.sync_delay_us.store(micros, Ordering::Relaxed);
    }

    /// The sync requests received so far.
    pub fn sync_counts(&self) -> SyncCounts {
        let c = &self.shared.counts;
        SyncCounts {
            fsync: c.fsync.load(Ordering::Relaxed),
            fdatasync: c.fdatasync.load(Ordering::Relaxed),
            fsyncdir: c.fsyncdir.load(Ordering::Relaxed),
        }
    }

    /// The mountpoint (canonical).
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// The backing directory (canonical).
    pub fn backing_dir(&self) -> &Path {
        &self.backing
    }

    /// Unmounts, dropping the current state; the backing dir is left as the durable state.
    pub fn unmount(mut self) -> Result<(), Error> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<(), Error> {
        if self.closed {
            return Ok(());
        }
        self.closed = true;
        let session = self
            .session
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        {
            let mut live = self.shared.lock();
            live.epoch += 1;
            live.state = None;
        }
        let stopped = match session {
            Some(s) => stop_session(&self.mountpoint, s),
            None => Ok(()),
        };
        let cleaned = State::remove_staging(&self.backing);
        info!(mountpoint = %self.mountpoint.display(), "unmounted");
        stopped.and(cleaned)
    }
}

impl Drop for PowerLossFs {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            warn!(error = %e, "unmount failed");
        }
    }
}

fn canonical_dir(path: &Path) -> Result<PathBuf, Error> {
    let canonical = path
        .canonicalize()
        .map_err(|e| Error::io("resolve", path, e))?;
    if !canonical.is_dir() {
        return Err(Error::InvalidPaths(format!(
            "{} is not a directory",
            path.display()
        )));
    }
    Ok(canonical)
}

fn start_session(shared: &Arc<Shared>, epoch: u64, mountpoint: &Path) -> Result<Session, Error> {
    let fd = sys::mount_fuse(mountpoint, "rookery-powerloss").map_err(|source| Error::Mount {
        path: mountpoint.to_path_buf(),
        source,
    })?;
    let mut config = fuser::Config::default();
    config.n_threads = Some(1);
    let fs = FuseFs {
        shared: Arc::clone(shared),
        epoch,
    };
    // The session gets only the descriptor: it has no mount of its own to unmount, so its end
    // (which for a lazily detached mount comes late) can never touch a newer mount.
    let session = match fuser::Session::from_fd(fs, fd, SessionACL::All, config) {
        Ok(s) => s,
        Err(source) => {
            if let Err(e) = sys::umount(mountpoint, true) {
                warn!(error = %e, "could not unmount after a failed handshake");
            }
            return Err(Error::Mount {
                path: mountpoint.to_path_buf(),
                source,
            });
        }
    };
    let thread = std::thread::Builder::new()
        .name("powerloss-fuse".into())
        .spawn(move || session.run());
    match thread {
        Ok(thread) => Ok(Session { thread }),
        Err(e) => {
            if let Err(e) = sys::umount(mountpoint, true) {
                warn!(error = %e, "could not unmount after failing to start");
            }
            Err(Error::io("spawn fuse thread", mountpoint, e))
        }
    }
}

/// Unmounts and waits for the session thread; detaches lazily if files are still open.
fn stop_session(mountpoint: &Path, session: Session) -> Result<(), Error> {
    match sys::umount(mountpoint, false) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
            warn!(
                mountpoint = %mountpoint.display(),
                "mount busy (a file is still open on it): detaching lazily"
            );
            sys::umount(mountpoint, true).map_err(|source| Error::Unmount {
                path: mountpoint.to_path_buf(),
                source,
            })?;
            // The session ends when the last open file is closed; its requests fail until then.
            // Dropping the handle detaches the thread instead of waiting for that.
            drop(session);
            return Ok(());
        }
        // Not mounted any more (someone unmounted it): the session has ended on its own.
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
        Err(source) => {
            return Err(Error::Unmount {
                path: mountpoint.to_path_buf(),
                source,
            });
        }
    }
    match session.thread.join() {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => {
            warn!(error = %e, "fuse session ended with an error");
            Ok(())
        }
        Err(_) => Err(Error::Unmount {
            path: mountpoint.to_path_buf(),
            source: io::Error::other("fuse session thread panicked"),
        }),
    }
}

//! The filesystem model: the current (volatile) view, the durable state, and how a sync moves
//! one into the other.
//!
//! Layout of the backing directory while mounted:
//! - everything except [`STAGING`] mirrors the durable namespace exactly;
//! - `STAGING/<ino>` is a hard link to every regular file and symlink the model knows (so its
//!   content can be reached, linked under a new durable name, or outlive its last durable name),
//!   and the backing directory of every directory that has no durable name yet;
//! - `STAGING/trash-<ino>` are durably removed directories being deleted.
//!
//! Durable file content is the backing file's content (shared by all its links). Volatile
//! content is an [`Overlay`] in memory. Durable entries of a directory are the entries of its
//! backing directory, mirrored in [`DirData::durable`]; current entries are [`DirData::entries`].

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{Errno, FileAttr, FileType, INodeNo};
use tracing::{debug, warn};

use crate::error::Error;
use crate::overlay::Overlay;
use crate::sys;

/// Inode number as the kernel sees it (and as `stat` reports it).
pub(crate) type Ino = u64;

/// The root directory's inode number (fixed by FUSE).
pub(crate) const ROOT: Ino = 1;

/// Name of the private directory inside the backing directory; hidden from the mount.
pub const STAGING: &str = ".rookery-powerloss";

type Res<T> = Result<T, Errno>;

fn errno(e: io::Error) -> Errno {
    Errno::from(e)
}

/// Where a directory's backing directory is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Loc {
    /// The backing root itself.
    Root,
    /// `STAGING/<ino>`: the directory has no durable name.
    Staging,
    /// Durably named `name` in directory `parent`.
    In(Ino, OsString),
    /// Durably removed; being or already deleted.
    Gone,
}

#[derive(Debug)]
struct FileData {
    /// The backing file (`STAGING/<ino>`), opened on first use.
    content: Option<File>,
    /// Length of the backing file, i.e. of the durable content.
    durable_len: u64,
    overlay: Overlay,
}

#[derive(Debug)]
struct DirData {
    /// The backing directory, which this descriptor follows through renames.
    fd: File,
    /// Current entries: what lookups and readdir see.
    entries: BTreeMap<OsString, Ino>,
    /// Durable entries: exactly the entries of the backing directory.
    durable: BTreeMap<OsString, Ino>,
    /// Current parent.
    parent: Ino,
    loc: Loc,
    /// Removed from the current namespace (rmdir, or replaced by a rename).
    removed: bool,
}

#[derive(Debug)]
enum Kind {
    File(FileData),
    Dir(DirData),
    Symlink(Vec<u8>),
}

#[derive(Debug)]
struct Node {
    kind: Kind,
    perm: u16,
    uid: u32,
    gid: u32,
    atime: SystemTime,
    mtime: SystemTime,
    ctime: SystemTime,
    /// Current names (files and symlinks; directories compute theirs).
    nlink: u32,
    /// Open file handles.
    open: u32,
    /// Durable names (files and symlinks), so a node nobody can reach again can be dropped.
    durable_refs: u32,
}

/// An open file or directory handle.
#[derive(Debug)]
enum Handle {
    File { ino: Ino, append: bool },
    Dir { entries: Vec<DirEntry> },
}

/// One entry of a directory listing.
#[derive(Debug, Clone)]
pub(crate) struct DirEntry {
    pub(crate) ino: Ino,
    pub(crate) kind: FileType,
    pub(crate) name: OsString,
}

/// Attribute changes requested by `setattr`.
#[derive(Debug, Default)]
pub(crate) struct SetAttr {
    pub(crate) mode: Option<u32>,
    pub(crate) uid: Option<u32>,
    pub(crate) gid: Option<u32>,
    pub(crate) size: Option<u64>,
    pub(crate) atime: Option<SystemTime>,
    pub(crate) mtime: Option<SystemTime>,
}

/// Who is creating a node.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Owner {
    pub(crate) uid: u32,
    pub(crate) gid: u32,
}

/// The whole model of one mount (one epoch: a power cut builds a new one from the backing dir).
#[derive(Debug)]
pub(crate) struct State {
    staging_path: PathBuf,
    staging: File,
    nodes: HashMap<Ino, Node>,
    next_ino: Ino,
    handles: HashMap<u64, Handle>,
    next_fh: u64,
}

fn staged_name(ino: Ino) -> OsString {
    OsString::from(ino.to_string())
}

fn time(secs: i64, nsecs: i64) -> SystemTime {
    let nanos = Duration::from_nanos(u64::try_from(nsecs).unwrap_or(0));
    match u64::try_from(secs) {
        Ok(s) => UNIX_EPOCH + Duration::from_secs(s) + nanos,
        Err(_) => UNIX_EPOCH,
    }
}

fn name_ok(parent: Ino, name: &OsStr) -> Res<()> {
    if name.len() > 255 {
        return Err(Errno::ENAMETOOLONG);
    }
    if name.is_empty() || name.as_bytes().contains(&b'/') {
        return Err(Errno::EINVAL);
    }
    if parent == ROOT && name == STAGING {
        // The staging directory shares the backing root: this name must stay ours.
        return Err(Errno::EACCES);
    }
    Ok(())
}

impl Node {
    fn from_stat(kind: Kind, st: &libc::stat) -> Self {
        Self {
            kind,
            perm: (st.st_mode & 0o7777) as u16,
            uid: st.st_uid,
            gid: st.st_gid,
            atime: time(st.st_atime, st.st_atime_nsec),
            mtime: time(st.st_mtime, st.st_mtime_nsec),
            ctime: time(st.st_ctime, st.st_ctime_nsec),
            nlink: 1,
            open: 0,
            durable_refs: 1,
        }
    }

    fn new(kind: Kind, perm: u16, owner: Owner) -> Self {
        let now = SystemTime::now();
        Self {
            kind,
            perm,
            uid: owner.uid,
            gid: owner.gid,
            atime: now,
            mtime: now,
            ctime: now,
            nlink: 1,
            open: 0,
            durable_refs: 0,
        }
    }

    fn file_type(&self) -> FileType {
        match self.kind {
            Kind::File(_) => FileType::RegularFile,
            Kind::Dir(_) => FileType::Directory,
            Kind::Symlink(_) => FileType::Symlink,
        }
    }

    fn dir(&self) -> Res<&DirData> {
        match &self.kind {
            Kind::Dir(d) => Ok(d),
            _ => Err(Errno::ENOTDIR),
        }
    }

    fn dir_mut(&mut self) -> Res<&mut DirData> {
        match &mut self.kind {
            Kind::Dir(d) => Ok(d),
            _ => Err(Errno::ENOTDIR),
        }
    }

    fn touch(&mut self) {
        let now = SystemTime::now();
        self.mtime = now;
        self.ctime = now;
    }
}

impl State {
    /// Builds the model of the durable state in `backing`: wipes the staging area, then scans
    /// the mirror. Inode numbers continue from `next_ino`, so they are never reused.
    pub(crate) fn load(backing: &Path, next_ino: Ino) -> Result<Self, Error> {
        let staging_path = backing.join(STAGING);
        match std::fs::remove_dir_all(&staging_path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("clear staging dir", &staging_path, e)),
        }
        std::fs::create_dir(&staging_path)
            .map_err(|e| Error::io("create staging dir", &staging_path, e))?;
        let staging = sys::open_dir(&staging_path)
            .map_err(|e| Error::io("open staging dir", &staging_path, e))?;
        let root_fd =
            sys::open_dir(backing).map_err(|e| Error::io("open backing dir", backing, e))?;
        let st = sys::fstat(&root_fd).map_err(|e| Error::io("stat backing dir", backing, e))?;
        let mut state = Self {
            staging_path,
            staging,
            nodes: HashMap::new(),
            next_ino: next_ino.max(ROOT + 1),
            handles: HashMap::new(),
            next_fh: 1,
        };
        let root = Node::from_stat(
            Kind::Dir(DirData {
                fd: root_fd,
                entries: BTreeMap::new(),
                durable: BTreeMap::new(),
                parent: ROOT,
                loc: Loc::Root,
                removed: false,
            }),
            &st,
        );
        state.nodes.insert(ROOT, root);
        let mut seen = HashMap::new();
        state.scan(ROOT, backing.to_path_buf(), &mut seen)?;
        debug!(nodes = state.nodes.len(), "loaded durable state");
        Ok(state)
    }

    /// The next inode number to hand out (carried across power cuts).
    pub(crate) fn next_ino(&self) -> Ino {
        self.next_ino
    }

    fn alloc_ino(&mut self) -> Ino {
        let ino = self.next_ino;
        self.next_ino += 1;
        ino
    }

    fn scan(
        &mut self,
        dir: Ino,
        path: PathBuf,
        seen: &mut HashMap<(u64, u64), Ino>,
    ) -> Result<(), Error> {
        let dir_fd = self
            .node(dir)
            .and_then(Node::dir)
            .map_err(|e| Error::io("scan", &path, io::Error::from_raw_os_error(e.code())))?
            .fd
            .try_clone()
            .map_err(|e| Error::io("dup dir fd", &path, e))?;
        let listing = std::fs::read_dir(&path).map_err(|e| Error::io("read dir", &path, e))?;
        let mut names = Vec::new();
        for entry in listing {
            let entry = entry.map_err(|e| Error::io("read dir", &path, e))?;
            let name = entry.file_name();
            if dir == ROOT && name == STAGING {
                continue;
            }
            names.push(name);
        }
        names.sort();
        for name in names {
            let child_path = path.join(&name);
            let st = sys::lstatat(&dir_fd, &name).map_err(|e| Error::io("stat", &child_path, e))?;
            let fmt = st.st_mode & libc::S_IFMT;
            let ino = match fmt {
                libc::S_IFREG | libc::S_IFLNK => {
                    let id = (st.st_dev, st.st_ino);
                    if let Some(&ino) = seen.get(&id) {
                        if let Some(node) = self.nodes.get_mut(&ino) {
                            node.nlink += 1;
                            node.durable_refs += 1;
                        }
                        ino
                    } else {
                        let ino = self.alloc_ino();
                        sys::linkat(&dir_fd, &name, &self.staging, &staged_name(ino))
                            .map_err(|e| Error::io("stage", &child_path, e))?;
                        let kind = if fmt == libc::S_IFREG {
                            Kind::File(FileData {
                                content: None,
                                durable_len: st.st_size as u64,
                                overlay: Overlay::clean(st.st_size as u64),
                            })
                        } else {
                            let target = sys::readlinkat(&dir_fd, &name)
                                .map_err(|e| Error::io("readlink", &child_path, e))?;
                            Kind::Symlink(target)
                        };
                        self.nodes.insert(ino, Node::from_stat(kind, &st));
                        seen.insert(id, ino);
                        ino
                    }
                }
                libc::S_IFDIR => {
                    let ino = self.alloc_ino();
                    let fd = sys::open_dir_at(&dir_fd, &name)
                        .map_err(|e| Error::io("open dir", &child_path, e))?;
                    let kind = Kind::Dir(DirData {
                        fd,
                        entries: BTreeMap::new(),
                        durable: BTreeMap::new(),
                        parent: dir,
                        loc: Loc::In(dir, name.clone()),
                        removed: false,
                    });
                    self.nodes.insert(ino, Node::from_stat(kind, &st));
                    self.scan(ino, child_path, seen)?;
                    ino
                }
                _ => {
                    warn!(path = %child_path.display(), "skipping a special file in the backing dir");
                    continue;
                }
            };
            let d = self
                .nodes
                .get_mut(&dir)
                .and_then(|n| n.dir_mut().ok())
                .ok_or_else(|| Error::InvalidPaths(format!("lost {}", path.display())))?;
            d.entries.insert(name.clone(), ino);
            d.durable.insert(name, ino);
        }
        Ok(())
    }

    /// Deletes the staging area (after unmount, leaving the backing dir = the durable state).
    pub(crate) fn remove_staging(backing: &Path) -> Result<(), Error> {
        let staging = backing.join(STAGING);
        match std::fs::remove_dir_all(&staging) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("remove staging dir", staging, e)),
        }
    }

    fn node(&self, ino: Ino) -> Res<&Node> {
        self.nodes.get(&ino).ok_or(Errno::ENOENT)
    }

    fn node_mut(&mut self, ino: Ino) -> Res<&mut Node> {
        self.nodes.get_mut(&ino).ok_or(Errno::ENOENT)
    }

    fn dir(&self, ino: Ino) -> Res<&DirData> {
        self.node(ino)?.dir()
    }

    fn dir_mut(&mut self, ino: Ino) -> Res<&mut DirData> {
        self.node_mut(ino)?.dir_mut()
    }

    /// The attributes the kernel sees for `ino`.
    pub(crate) fn attr(&self, ino: Ino) -> Res<FileAttr> {
        let node = self.node(ino)?;
        let (size, nlink) = match &node.kind {
            Kind::File(f) => (f.overlay.size(), node.nlink),
            Kind::Symlink(t) => (t.len() as u64, node.nlink),
            Kind::Dir(d) => {
                let subdirs = d
                    .entries
                    .values()
                    .filter(|c| matches!(self.nodes.get(c).map(|n| &n.kind), Some(Kind::Dir(_))))
                    .count();
                let links = if d.removed { 0 } else { 2 + subdirs };
                (4096, u32::try_from(links).unwrap_or(u32::MAX))
            }
        };
        Ok(FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: node.atime,
            mtime: node.mtime,
            ctime: node.ctime,
            crtime: node.ctime,
            kind: node.file_type(),
            perm: node.perm,
            nlink,
            uid: node.uid,
            gid: node.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        })
    }

    /// Finds `name` in directory `parent`.
    pub(crate) fn lookup(&self, parent: Ino, name: &OsStr) -> Res<FileAttr> {
        let ino = *self.dir(parent)?.entries.get(name).ok_or(Errno::ENOENT)?;
        self.attr(ino)
    }

    /// Applies `chmod`, `chown`, `truncate` and `utimes`.
    pub(crate) fn setattr(&mut self, ino: Ino, set: SetAttr) -> Res<FileAttr> {
        let staged = staged_name(ino);
        let State { nodes, staging, .. } = self;
        let node = nodes.get_mut(&ino).ok_or(Errno::ENOENT)?;
        if let Some(size) = set.size {
            match &mut node.kind {
                Kind::File(f) => f.overlay.truncate(size),
                Kind::Dir(_) => return Err(Errno::EISDIR),
                Kind::Symlink(_) => return Err(Errno::EINVAL),
            }
            node.touch();
        }
        // Mode and owner pass straight through to the backing inode: they are not part of the
        // power-loss model (durable at once), which keeps them simple and exact.
        if let Some(mode) = set.mode {
            let perm = (mode & 0o7777) as u16;
            match &node.kind {
                Kind::Dir(d) => backing_chmod_dir(d, perm).map_err(errno)?,
                Kind::File(_) => sys::fchmodat(staging, &staged, u32::from(perm)).map_err(errno)?,
                Kind::Symlink(_) => {}
            }
            node.perm = perm;
            node.ctime = SystemTime::now();
        }
        if set.uid.is_some() || set.gid.is_some() {
            let uid = set.uid.unwrap_or(node.uid);
            let gid = set.gid.unwrap_or(node.gid);
            match &node.kind {
                Kind::Dir(d) => backing_chown_dir(d, uid, gid).map_err(errno)?,
                _ => sys::fchownat(staging, &staged, uid, gid).map_err(errno)?,
            }
            node.uid = uid;
            node.gid = gid;
            node.ctime = SystemTime::now();
        }
        if let Some(t) = set.atime {
            node.atime = t;
        }
        if let Some(t) = set.mtime {
            node.mtime = t;
            node.ctime = SystemTime::now();
        }
        self.attr(ino)
    }

    /// The target of a symlink.
    pub(crate) fn readlink(&self, ino: Ino) -> Res<Vec<u8>> {
        match &self.node(ino)?.kind {
            Kind::Symlink(t) => Ok(t.clone()),
            _ => Err(Errno::EINVAL),
        }
    }

    fn check_new_name(&self, parent: Ino, name: &OsStr) -> Res<()> {
        name_ok(parent, name)?;
        let d = self.dir(parent)?;
        if d.removed {
            return Err(Errno::ENOENT);
        }
        if d.entries.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        Ok(())
    }

    fn add_entry(&mut self, parent: Ino, name: &OsStr, ino: Ino) -> Res<()> {
        let p = self.node_mut(parent)?;
        p.touch();
        p.dir_mut()?.entries.insert(name.to_os_string(), ino);
        Ok(())
    }

    /// Creates an empty regular file `name` in `parent`.
    pub(crate) fn mknod(
        &mut self,
        parent: Ino,
        name: &OsStr,
        mode: u32,
        owner: Owner,
    ) -> Res<FileAttr> {
        if mode & libc::S_IFMT != libc::S_IFREG && mode & libc::S_IFMT != 0 {
            // Devices, FIFOs and sockets are not part of what the model covers.
            return Err(Errno::EPERM);
        }
        self.check_new_name(parent, name)?;
        let ino = self.alloc_ino();
        let perm = (mode & 0o7777) as u16;
        let file = sys::openat(
            &self.staging,
            &staged_name(ino),
            libc::O_RDWR | libc::O_CREAT | libc::O_EXCL,
            u32::from(perm),
        )
        .map_err(errno)?;
        // The umask already applied by the kernel can make the backing mode differ; set it.
        sys::fchmodat(&self.staging, &staged_name(ino), u32::from(perm)).map_err(errno)?;
        chown_staged(&self.staging, ino, owner);
        let node = Node::new(
            Kind::File(FileData {
                content: Some(file),
                durable_len: 0,
                overlay: Overlay::clean(0),
            }),
            perm,
            owner,
        );
        self.nodes.insert(ino, node);
        self.add_entry(parent, name, ino)?;
        self.attr(ino)
    }

    /// Creates directory `name` in `parent`.
    pub(crate) fn mkdir(
        &mut self,
        parent: Ino,
        name: &OsStr,
        mode: u32,
        owner: Owner,
    ) -> Res<FileAttr> {
        self.check_new_name(parent, name)?;
        let ino = self.alloc_ino();
        let perm = (mode & 0o7777) as u16;
        let staged = staged_name(ino);
        sys::mkdirat(&self.staging, &staged, u32::from(perm)).map_err(errno)?;
        sys::fchmodat(&self.staging, &staged, u32::from(perm)).map_err(errno)?;
        chown_staged(&self.staging, ino, owner);
        let fd = sys::open_dir_at(&self.staging, &staged).map_err(errno)?;
        let node = Node::new(
            Kind::Dir(DirData {
                fd,
                entries: BTreeMap::new(),
                durable: BTreeMap::new(),
                parent,
                loc: Loc::Staging,
                removed: false,
            }),
            perm,
            owner,
        );
        self.nodes.insert(ino, node);
        self.add_entry(parent, name, ino)?;
        self.attr(ino)
    }

    /// Creates symlink `name` in `parent` pointing at `target`.
    pub(crate) fn symlink(
        &mut self,
        parent: Ino,
        name: &OsStr,
        target: &OsStr,
        owner: Owner,
    ) -> Res<FileAttr> {
        self.check_new_name(parent, name)?;
        let ino = self.alloc_ino();
        sys::symlinkat(target, &self.staging, &staged_name(ino)).map_err(errno)?;
        chown_staged(&self.staging, ino, owner);
        let node = Node::new(Kind::Symlink(target.as_bytes().to_vec()), 0o777, owner);
        self.nodes.insert(ino, node);
        self.add_entry(parent, name, ino)?;
        self.attr(ino)
    }

    /// Adds the name `name` in `parent` for file `ino`.
    pub(crate) fn link(&mut self, ino: Ino, parent: Ino, name: &OsStr) -> Res<FileAttr> {
        if matches!(self.node(ino)?.kind, Kind::Dir(_)) {
            return Err(Errno::EPERM);
        }
        self.check_new_name(parent, name)?;
        let node = self.node_mut(ino)?;
        node.nlink += 1;
        node.ctime = SystemTime::now();
        self.add_entry(parent, name, ino)?;
        self.attr(ino)
    }

    /// Drops one current name of a file or symlink.
    fn drop_name(&mut self, ino: Ino) {
        if let Some(node) = self.nodes.get_mut(&ino) {
            node.nlink = node.nlink.saturating_sub(1);
            node.ctime = SystemTime::now();
        }
        self.release_if_unreachable(ino);
    }

    /// Frees what a file nobody can reach any more holds: its volatile data once it has no
    /// name and no open handle, and the node itself once it has no durable name either.
    fn release_if_unreachable(&mut self, ino: Ino) {
        let Some(node) = self.nodes.get_mut(&ino) else {
            return;
        };
        if matches!(node.kind, Kind::Dir(_)) || node.nlink > 0 || node.open > 0 {
            return;
        }
        if let Kind::File(f) = &mut node.kind {
            f.content = None;
            f.overlay = Overlay::clean(f.durable_len);
        }
        if node.durable_refs == 0 {
            self.nodes.remove(&ino);
            if let Err(e) = sys::unlinkat(&self.staging, &staged_name(ino), 0) {
                warn!(ino, error = %e, "could not remove a staged file");
            }
        }
    }

    /// Removes the file or symlink `name` from `parent`.
    pub(crate) fn unlink(&mut self, parent: Ino, name: &OsStr) -> Res<()> {
        let ino = *self.dir(parent)?.entries.get(name).ok_or(Errno::ENOENT)?;
        if matches!(self.node(ino)?.kind, Kind::Dir(_)) {
            return Err(Errno::EISDIR);
        }
        let p = self.node_mut(parent)?;
        p.touch();
        p.dir_mut()?.entries.remove(name);
        self.drop_name(ino);
        Ok(())
    }

    /// Removes the empty directory `name` from `parent`.
    pub(crate) fn rmdir(&mut self, parent: Ino, name: &OsStr) -> Res<()> {
        let ino = *self.dir(parent)?.entries.get(name).ok_or(Errno::ENOENT)?;
        let d = self.dir(ino)?;
        if !d.entries.is_empty() {
            return Err(Errno::ENOTEMPTY);
        }
        self.dir_mut(ino)?.removed = true;
        let p = self.node_mut(parent)?;
        p.touch();
        p.dir_mut()?.entries.remove(name);
        Ok(())
    }

    /// Whether directory `ino` is `ancestor` or below it.
    fn is_within(&self, mut ino: Ino, ancestor: Ino) -> Res<bool> {
        loop {
            if ino == ancestor {
                return Ok(true);
            }
            if ino == ROOT {
                return Ok(false);
            }
            ino = self.dir(ino)?.parent;
        }
    }

    /// Renames `parent/name` to `new_parent/new_name` (`flags` as in `renameat2`).
    pub(crate) fn rename(
        &mut self,
        parent: Ino,
        name: &OsStr,
        new_parent: Ino,
        new_name: &OsStr,
        flags: u32,
    ) -> Res<()> {
        if flags & !libc::RENAME_NOREPLACE != 0 {
            // RENAME_EXCHANGE and RENAME_WHITEOUT are not modelled.
            return Err(Errno::EINVAL);
        }
        name_ok(new_parent, new_name)?;
        let ino = *self.dir(parent)?.entries.get(name).ok_or(Errno::ENOENT)?;
        let target_dir = self.dir(new_parent)?;
        if target_dir.removed {
            return Err(Errno::ENOENT);
        }
        let existing = target_dir.entries.get(new_name).copied();
        let moving_dir = matches!(self.node(ino)?.kind, Kind::Dir(_));
        if moving_dir && self.is_within(new_parent, ino)? {
            return Err(Errno::EINVAL);
        }
        if let Some(old) = existing {
            if old == ino {
                // Two names of the same file: POSIX says do nothing.
                return Ok(());
            }
            if flags & libc::RENAME_NOREPLACE != 0 {
                return Err(Errno::EEXIST);
            }
            match (&self.node(old)?.kind, moving_dir) {
                (Kind::Dir(d), true) => {
                    if !d.entries.is_empty() {
                        return Err(Errno::ENOTEMPTY);
                    }
                }
                (Kind::Dir(_), false) => return Err(Errno::EISDIR),
                (_, true) => return Err(Errno::ENOTDIR),
                (_, false) => {}
            }
        }
        let p = self.node_mut(parent)?;
        p.touch();
        p.dir_mut()?.entries.remove(name);
        let np = self.node_mut(new_parent)?;
        np.touch();
        np.dir_mut()?.entries.insert(new_name.to_os_string(), ino);
        if let Some(old) = existing {
            match self.node_mut(old)?.kind {
                Kind::Dir(ref mut d) => d.removed = true,
                _ => self.drop_name(old),
            }
        }
        let node = self.node_mut(ino)?;
        node.ctime = SystemTime::now();
        if let Kind::Dir(d) = &mut node.kind {
            d.parent = new_parent;
        }
        Ok(())
    }

    fn new_handle(&mut self, handle: Handle) -> u64 {
        let fh = self.next_fh;
        self.next_fh += 1;
        self.handles.insert(fh, handle);
        fh
    }

    /// Opens file `ino` with open(2) `flags`; returns the handle.
    pub(crate) fn open(&mut self, ino: Ino, flags: i32) -> Res<u64> {
        let node = self.node_mut(ino)?;
        match &mut node.kind {
            Kind::File(f) => {
                if flags & libc::O_TRUNC != 0 && flags & libc::O_ACCMODE != libc::O_RDONLY {
                    f.overlay.truncate(0);
                    node.touch();
                }
            }
            Kind::Dir(_) => return Err(Errno::EISDIR),
            Kind::Symlink(_) => return Err(Errno::ELOOP),
        }
        node.open += 1;
        Ok(self.new_handle(Handle::File {
            ino,
            append: flags & libc::O_APPEND != 0,
        }))
    }

    /// `open(O_CREAT)`: creates `name` in `parent` unless it exists, then opens it.
    pub(crate) fn create(
        &mut self,
        parent: Ino,
        name: &OsStr,
        mode: u32,
        flags: i32,
        owner: Owner,
    ) -> Res<(FileAttr, u64)> {
        let existing = self.dir(parent)?.entries.get(name).copied();
        let ino = match existing {
            Some(_) if flags & libc::O_EXCL != 0 => return Err(Errno::EEXIST),
            Some(ino) => ino,
            None => {
                self.mknod(parent, name, libc::S_IFREG | (mode & 0o7777), owner)?
                    .ino
                    .0
            }
        };
        let fh = self.open(ino, flags)?;
        Ok((self.attr(ino)?, fh))
    }

    fn file_handle(&self, fh: u64) -> Res<(Ino, bool)> {
        match self.handles.get(&fh) {
            Some(Handle::File { ino, append }) => Ok((*ino, *append)),
            _ => Err(Errno::EBADF),
        }
    }

    /// Reads from an open file.
    pub(crate) fn read(&mut self, fh: u64, offset: u64, size: u32) -> Res<Vec<u8>> {
        let (ino, _) = self.file_handle(fh)?;
        let State { nodes, staging, .. } = self;
        let node = nodes.get_mut(&ino).ok_or(Errno::EBADF)?;
        let Kind::File(f) = &mut node.kind else {
            return Err(Errno::EISDIR);
        };
        let content = content(staging, ino, &mut f.content)?;
        f.overlay
            .read(offset, u64::from(size), f.durable_len, |off, buf| {
                read_full_at(content, off, buf)
            })
            .map_err(errno)
    }

    /// Writes to an open file (at its end if it was opened with `O_APPEND`).
    pub(crate) fn write(&mut self, fh: u64, offset: u64, data: &[u8]) -> Res<u32> {
        let (ino, append) = self.file_handle(fh)?;
        let node = self.node_mut(ino)?;
        let Kind::File(f) = &mut node.kind else {
            return Err(Errno::EISDIR);
        };
        let offset = if append { f.overlay.size() } else { offset };
        offset
            .checked_add(data.len() as u64)
            .filter(|end| *end <= i64::MAX as u64)
            .ok_or(Errno::EFBIG)?;
        f.overlay.write(offset, data);
        node.touch();
        u32::try_from(data.len()).map_err(|_| Errno::EINVAL)
    }

    /// `fallocate`: plain allocation only (it can grow the file); holes are not modelled.
    pub(crate) fn fallocate(&mut self, fh: u64, offset: u64, length: u64, mode: i32) -> Res<()> {
        let (ino, _) = self.file_handle(fh)?;
        let node = self.node_mut(ino)?;
        let Kind::File(f) = &mut node.kind else {
            return Err(Errno::EISDIR);
        };
        let end = offset.checked_add(length).ok_or(Errno::EFBIG)?;
        match mode {
            0 => {
                if end > f.overlay.size() {
                    f.overlay.truncate(end);
                    node.touch();
                }
                Ok(())
            }
            libc::FALLOC_FL_KEEP_SIZE => Ok(()),
            _ => Err(Errno::EOPNOTSUPP),
        }
    }

    /// Closes a file handle.
    pub(crate) fn release(&mut self, fh: u64) {
        if let Some(Handle::File { ino, .. }) = self.handles.remove(&fh) {
            if let Some(node) = self.nodes.get_mut(&ino) {
                node.open = node.open.saturating_sub(1);
            }
            self.release_if_unreachable(ino);
        }
    }

    /// Makes the file's current content durable (fsync and fdatasync alike).
    pub(crate) fn fsync(&mut self, ino: Ino) -> Res<()> {
        let State { nodes, staging, .. } = self;
        let node = nodes.get_mut(&ino).ok_or(Errno::ENOENT)?;
        let Kind::File(f) = &mut node.kind else {
            // Symlinks have nothing volatile; directories come through fsyncdir.
            return Ok(());
        };
        if !f.overlay.is_dirty(f.durable_len) {
            return Ok(());
        }
        let buffered = f.overlay.buffered_bytes();
        let content = content(staging, ino, &mut f.content)?;
        let flush = f.overlay.flush(f.durable_len);
        let size = flush.size;
        let applied = (|| {
            if flush.keep < f.durable_len {
                content.set_len(flush.keep)?;
            }
            for (start, data) in flush.extents {
                content.write_all_at(data, *start)?;
            }
            content.set_len(size)
        })();
        if let Err(e) = applied {
            // Part of it may have reached the backing file, as with a real failed fsync; the
            // overlay still holds everything, so the view stays right.
            f.durable_len = sys::fstat(content).map_or(0, |st| st.st_size as u64);
            return Err(errno(e));
        }
        // No fsync of the backing file: the simulated power cut is the only failure modelled,
        // and it never touches what reached the backing directory.
        f.durable_len = size;
        f.overlay.mark_clean();
        debug!(ino, size, buffered, "file synced");
        Ok(())
    }

    /// Opens a directory: the listing is taken now, so later changes do not disturb it.
    pub(crate) fn opendir(&mut self, ino: Ino) -> Res<u64> {
        let d = self.dir(ino)?;
        let mut entries = vec![
            DirEntry {
                ino,
                kind: FileType::Directory,
                name: ".".into(),
            },
            DirEntry {
                ino: d.parent,
                kind: FileType::Directory,
                name: "..".into(),
            },
        ];
        for (name, child) in &d.entries {
            let kind = self.node(*child)?.file_type();
            entries.push(DirEntry {
                ino: *child,
                kind,
                name: name.clone(),
            });
        }
        Ok(self.new_handle(Handle::Dir { entries }))
    }

    /// The listing of an open directory from position `offset` on.
    pub(crate) fn readdir(&self, fh: u64, offset: u64) -> Res<&[DirEntry]> {
        match self.handles.get(&fh) {
            Some(Handle::Dir { entries }) => {
                let from = usize::try_from(offset).unwrap_or(usize::MAX);
                Ok(entries.get(from..).unwrap_or(&[]))
            }
            _ => Err(Errno::EBADF),
        }
    }

    /// Closes a directory handle.
    pub(crate) fn releasedir(&mut self, fh: u64) {
        self.handles.remove(&fh);
    }

    /// Makes the current entries of directory `ino` durable.
    pub(crate) fn fsyncdir(&mut self, ino: Ino) -> Res<()> {
        let d = self.dir(ino)?;
        if d.removed {
            // Its backing directory is gone or unreachable: nothing can become durable there.
            return Ok(());
        }
        let removals: Vec<(OsString, Ino)> = d
            .durable
            .iter()
            .filter(|(name, child)| d.entries.get(*name) != Some(*child))
            .map(|(n, c)| (n.clone(), *c))
            .collect();
        let additions: Vec<(OsString, Ino)> = d
            .entries
            .iter()
            .filter(|(name, child)| d.durable.get(*name) != Some(*child))
            .map(|(n, c)| (n.clone(), *c))
            .collect();
        let changes = removals.len() + additions.len();
        // Removals first: a name may be removed and added again for another node. A failure
        // leaves the steps done so far applied (durable map and backing dir agree after each).
        let applied = removals
            .into_iter()
            .try_for_each(|(name, child)| self.durable_remove(ino, &name, child))
            .and_then(|()| {
                additions
                    .into_iter()
                    .try_for_each(|(name, child)| self.durable_add(ino, &name, child))
            });
        if let Err(e) = applied {
            let cause = io::Error::from_raw_os_error(e.code());
            warn!(ino, error = %cause, "directory sync failed");
            // What a disk reports when it cannot make metadata durable.
            return Err(Errno::EIO);
        }
        debug!(ino, changes, "directory synced");
        Ok(())
    }

    fn durable_remove(&mut self, dir: Ino, name: &OsStr, child: Ino) -> Res<()> {
        let live_dir = match self.nodes.get(&child).map(|n| &n.kind) {
            Some(Kind::Dir(c)) => Some(!c.removed),
            _ => None,
        };
        match live_dir {
            Some(false) => {
                self.evacuate(child)?;
                // Deleted for good: move it out of the mirror, then delete its tree.
                let trash = OsString::from(format!("trash-{child}"));
                sys::rename_noreplace(&self.dir(dir)?.fd, name, &self.staging, &trash)
                    .map_err(errno)?;
                let path = self.staging_path.join(&trash);
                if let Err(e) = std::fs::remove_dir_all(&path) {
                    warn!(path = %path.display(), error = %e, "could not delete a removed dir");
                }
                set_loc(&mut self.nodes, child, Loc::Gone);
            }
            Some(true) => {
                // Still alive under another name: park it until that name is synced.
                sys::rename_noreplace(&self.dir(dir)?.fd, name, &self.staging, &staged_name(child))
                    .map_err(errno)?;
                set_loc(&mut self.nodes, child, Loc::Staging);
            }
            None => {
                sys::unlinkat(&self.dir(dir)?.fd, name, 0).map_err(errno)?;
                if let Some(n) = self.nodes.get_mut(&child) {
                    n.durable_refs = n.durable_refs.saturating_sub(1);
                }
            }
        }
        self.dir_mut(dir)?.durable.remove(name);
        self.release_if_unreachable(child);
        Ok(())
    }

    /// Before the backing tree of the removed directory `dead` is deleted: parks live
    /// directories that are still durably inside it (moved out in the current state, not yet
    /// synced at their new place) in the staging area, and forgets the durable names of files
    /// in it, all the way down.
    fn evacuate(&mut self, dead: Ino) -> Res<()> {
        let entries = std::mem::take(&mut self.dir_mut(dead)?.durable);
        for (name, child) in entries {
            let live_dir = match self.nodes.get(&child).map(|n| &n.kind) {
                Some(Kind::Dir(c)) => Some(!c.removed),
                _ => None,
            };
            match live_dir {
                Some(true) => {
                    let dead_fd = &self.dir(dead)?.fd;
                    sys::rename_noreplace(dead_fd, &name, &self.staging, &staged_name(child))
                        .map_err(errno)?;
                    set_loc(&mut self.nodes, child, Loc::Staging);
                }
                Some(false) => {
                    self.evacuate(child)?;
                    set_loc(&mut self.nodes, child, Loc::Gone);
                }
                None => {
                    if let Some(n) = self.nodes.get_mut(&child) {
                        n.durable_refs = n.durable_refs.saturating_sub(1);
                    }
                    self.release_if_unreachable(child);
                }
            }
        }
        Ok(())
    }

    fn durable_add(&mut self, dir: Ino, name: &OsStr, child: Ino) -> Res<()> {
        let State { nodes, staging, .. } = self;
        let dir_fd = &nodes.get(&dir).ok_or(Errno::ENOENT)?.dir()?.fd;
        let mut moved_from = None;
        match &nodes.get(&child).ok_or(Errno::ENOENT)?.kind {
            Kind::Dir(c) => {
                // A directory has one backing directory: move it here. If it was durably named
                // elsewhere, that old name goes away now (a directory cannot have two names).
                match &c.loc {
                    Loc::Staging => {
                        sys::rename_noreplace(staging, &staged_name(child), dir_fd, name)
                            .map_err(errno)?;
                    }
                    Loc::In(from, from_name) => {
                        let from_fd = &nodes.get(from).ok_or(Errno::ENOENT)?.dir()?.fd;
                        sys::rename_noreplace(from_fd, from_name, dir_fd, name).map_err(|e| {
                            if e.raw_os_error() == Some(libc::EINVAL) {
                                // The durable tree would contain a cycle: see the crate docs.
                                warn!(dir, child, "directory sync would make a durable cycle");
                            }
                            errno(e)
                        })?;
                        moved_from = Some((*from, from_name.clone()));
                    }
                    Loc::Root | Loc::Gone => return Err(Errno::EIO),
                }
                set_loc(nodes, child, Loc::In(dir, name.to_os_string()));
            }
            _ => {
                sys::linkat(staging, &staged_name(child), dir_fd, name).map_err(errno)?;
                if let Some(n) = nodes.get_mut(&child) {
                    n.durable_refs += 1;
                }
            }
        }
        if let Some((from, from_name)) = moved_from
            && let Ok(d) = self.dir_mut(from)
        {
            d.durable.remove(&from_name);
        }
        self.dir_mut(dir)?
            .durable
            .insert(name.to_os_string(), child);
        Ok(())
    }

    /// Statistics of the backing filesystem.
    pub(crate) fn statfs(&self) -> Res<libc::statvfs> {
        sys::fstatvfs(&self.dir(ROOT)?.fd).map_err(errno)
    }

    /// Whether `ino` exists (permissions are checked by the kernel: `default_permissions`).
    pub(crate) fn access(&self, ino: Ino) -> Res<()> {
        self.node(ino).map(|_| ())
    }
}

fn set_loc(nodes: &mut HashMap<Ino, Node>, ino: Ino, loc: Loc) {
    if let Some(Node {
        kind: Kind::Dir(d), ..
    }) = nodes.get_mut(&ino)
    {
        d.loc = loc;
    }
}

fn backing_chmod_dir(d: &DirData, perm: u16) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    d.fd.set_permissions(std::fs::Permissions::from_mode(u32::from(perm)))
}

fn backing_chown_dir(d: &DirData, uid: u32, gid: u32) -> io::Result<()> {
    std::os::unix::fs::fchown(&d.fd, Some(uid), Some(gid))
}

/// Gives a new backing node the creator's owner, as a real filesystem would.
fn chown_staged(staging: &File, ino: Ino, owner: Owner) {
    if let Err(e) = sys::fchownat(staging, &staged_name(ino), owner.uid, owner.gid) {
        debug!(ino, error = %e, "could not chown a new node (not root?)");
    }
}

/// The backing file of `ino`, opened on first use.
fn content<'a>(staging: &File, ino: Ino, slot: &'a mut Option<File>) -> Res<&'a File> {
    if slot.is_none() {
        *slot = Some(sys::openat(staging, &staged_name(ino), libc::O_RDWR, 0).map_err(errno)?);
    }
    slot.as_ref().ok_or(Errno::EIO)
}

/// Fills `buf` from `file` at `offset`, with zeros past its end.
fn read_full_at(file: &File, mut offset: u64, mut buf: &mut [u8]) -> io::Result<()> {
    while !buf.is_empty() {
        match file.read_at(buf, offset) {
            Ok(0) => {
                buf.fill(0);
                return Ok(());
            }
            Ok(n) => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

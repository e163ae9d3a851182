//! Thin wrappers over the `*at` system calls the backing store needs.
//!
//! Directories are addressed by open descriptors rather than paths: a descriptor follows its
//! directory through renames, so the model never has to recompute backing paths.

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// A name as a C string; names with a NUL byte cannot exist.
pub(crate) fn cname(name: &OsStr) -> io::Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Opens `name` in `dir` with `flags` (and `mode` when creating).
pub(crate) fn openat(dir: &File, name: &OsStr, flags: libc::c_int, mode: u32) -> io::Result<File> {
    let name = cname(name)?;
    // SAFETY: a valid descriptor and a NUL-terminated name; the result is checked before use.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            flags | libc::O_CLOEXEC,
            mode as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by openat and is owned by nobody else.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// Opens a directory for use with the other `*at` calls.
pub(crate) fn open_dir_at(dir: &File, name: &OsStr) -> io::Result<File> {
    openat(
        dir,
        name,
        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
        0,
    )
}

/// Opens a directory by path.
pub(crate) fn open_dir(path: &Path) -> io::Result<File> {
    let path = cname(path.as_os_str())?;
    // SAFETY: NUL-terminated path; the result is checked before use.
    let fd = unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by open and is owned by nobody else.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// Creates a directory `name` in `dir`.
pub(crate) fn mkdirat(dir: &File, name: &OsStr, mode: u32) -> io::Result<()> {
    let name = cname(name)?;
    // SAFETY: valid descriptor and NUL-terminated name.
    check(unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode as libc::mode_t) })
}

/// Creates a symbolic link `name` in `dir` pointing at `target`.
pub(crate) fn symlinkat(target: &OsStr, dir: &File, name: &OsStr) -> io::Result<()> {
    let target = cname(target)?;
    let name = cname(name)?;
    // SAFETY: valid descriptor and NUL-terminated strings.
    check(unsafe { libc::symlinkat(target.as_ptr(), dir.as_raw_fd(), name.as_ptr()) })
}

/// Adds the hard link `new_dir/new` for `old_dir/old` (symlinks are linked, not followed).
pub(crate) fn linkat(old_dir: &File, old: &OsStr, new_dir: &File, new: &OsStr) -> io::Result<()> {
    let old = cname(old)?;
    let new = cname(new)?;
    // SAFETY: valid descriptors and NUL-terminated names.
    check(unsafe {
        libc::linkat(
            old_dir.as_raw_fd(),
            old.as_ptr(),
            new_dir.as_raw_fd(),
            new.as_ptr(),
            0,
        )
    })
}

/// Removes the entry `name` from `dir` (`AT_REMOVEDIR` for directories).
pub(crate) fn unlinkat(dir: &File, name: &OsStr, flags: libc::c_int) -> io::Result<()> {
    let name = cname(name)?;
    // SAFETY: valid descriptor and NUL-terminated name.
    check(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), flags) })
}

/// Moves `old_dir/old` to `new_dir/new`, failing rather than replacing an existing entry.
pub(crate) fn rename_noreplace(
    old_dir: &File,
    old: &OsStr,
    new_dir: &File,
    new: &OsStr,
) -> io::Result<()> {
    let old = cname(old)?;
    let new = cname(new)?;
    // SAFETY: valid descriptors and NUL-terminated names.
    check(unsafe {
        libc::renameat2(
            old_dir.as_raw_fd(),
            old.as_ptr(),
            new_dir.as_raw_fd(),
            new.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    })
}

/// Reads the target of the symbolic link `name` in `dir`.
pub(crate) fn readlinkat(dir: &File, name: &OsStr) -> io::Result<Vec<u8>> {
    let name = cname(name)?;
    let mut buf = vec![0u8; libc::PATH_MAX as usize];
    // SAFETY: valid descriptor, NUL-terminated name, and a buffer of the given length.
    let n = unsafe {
        libc::readlinkat(
            dir.as_raw_fd(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(buf)
}

/// `fstatat` without following symlinks.
pub(crate) fn lstatat(dir: &File, name: &OsStr) -> io::Result<libc::stat> {
    let name = cname(name)?;
    // SAFETY: all-zero bytes are a valid `stat`; the kernel fills it in.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid descriptor, NUL-terminated name and a writable `stat`.
    check(unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    Ok(st)
}

/// `fstat` of an open descriptor.
pub(crate) fn fstat(file: &File) -> io::Result<libc::stat> {
    // SAFETY: all-zero bytes are a valid `stat`; the kernel fills it in.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid descriptor and a writable `stat`.
    check(unsafe { libc::fstat(file.as_raw_fd(), &mut st) })?;
    Ok(st)
}

/// Changes the permission bits of `name` in `dir` (never through a symlink).
pub(crate) fn fchmodat(dir: &File, name: &OsStr, mode: u32) -> io::Result<()> {
    let name = cname(name)?;
    // SAFETY: valid descriptor and NUL-terminated name.
    check(unsafe { libc::fchmodat(dir.as_raw_fd(), name.as_ptr(), mode as libc::mode_t, 0) })
}

/// Changes the owner of `name` in `dir` (of the link itself for symlinks).
pub(crate) fn fchownat(dir: &File, name: &OsStr, uid: u32, gid: u32) -> io::Result<()> {
    let name = cname(name)?;
    // SAFETY: valid descriptor and NUL-terminated name.
    check(unsafe {
        libc::fchownat(
            dir.as_raw_fd(),
            name.as_ptr(),
            uid,
            gid,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })
}

/// Statistics of the filesystem holding `file`.
pub(crate) fn fstatvfs(file: &File) -> io::Result<libc::statvfs> {
    // SAFETY: all-zero bytes are a valid `statvfs`; the kernel fills it in.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid descriptor and a writable `statvfs`.
    check(unsafe { libc::fstatvfs(file.as_raw_fd(), &mut st) })?;
    Ok(st)
}

/// Unmounts `path`; `lazy` detaches it even while files on it are still open.
pub(crate) fn umount(path: &Path, lazy: bool) -> io::Result<()> {
    let path = cname(path.as_os_str())?;
    let flags = if lazy { libc::MNT_DETACH } else { 0 };
    // SAFETY: NUL-terminated path.
    check(unsafe { libc::umount2(path.as_ptr(), flags) })
}

/// Mounts a FUSE filesystem at `path` with `mount(2)` (we are root: no `fusermount3`) and
/// returns the `/dev/fuse` descriptor serving it. We mount and unmount ourselves so that no
/// library ever unmounts by path, which could hit a newer mount at the same place.
pub(crate) fn mount_fuse(path: &Path, fsname: &str) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::OwnedFd;
    let dev = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")?;
    let root_mode = std::fs::metadata(path)?.permissions();
    let root_mode = std::os::unix::fs::PermissionsExt::mode(&root_mode) & libc::S_IFMT;
    // SAFETY: getuid/getgid cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    // default_permissions: the kernel checks modes itself; allow_other: any user may enter
    // (the process under test may drop privileges).
    let options = format!(
        "fd={},rootmode={root_mode:o},user_id={uid},group_id={gid},default_permissions,allow_other",
        dev.as_raw_fd()
    );
    let source = CString::new(fsname).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let target = cname(path.as_os_str())?;
    let fstype = c"fuse";
    let data = CString::new(options).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: NUL-terminated strings that outlive the call.
    check(unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV,
            data.as_ptr().cast(),
        )
    })?;
    Ok(OwnedFd::from(dev))
}

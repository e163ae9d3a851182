//! The power-loss contract, one rule per test, on a real mount (needs root and /dev/fuse).

mod common;

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};

use common::*;
use rookery_powerloss::{PowerLossFs, STAGING};

#[test]
fn unsynced_write_is_lost() {
    let fx = Fixture::new();
    let p = fx.path("f");
    write_file(&p, b"old content", true);
    sync_dir(&fx.mnt);
    let f = OpenOptions::new().write(true).open(&p).unwrap();
    f.write_all_at(b"NEW", 0).unwrap();
    drop(f);
    // The process sees its own write, like a page cache.
    assert_eq!(read(&p).unwrap(), b"NEW content");
    fx.cut();
    assert_eq!(read(&p).unwrap(), b"old content");
}

#[test]
fn synced_write_is_kept_and_counted() {
    let fx = Fixture::new();
    let before = fx.fs.sync_counts();
    let p = fx.path("f");
    write_file(&p, b"v1", true);
    sync_dir(&fx.mnt);
    let mut f = OpenOptions::new().write(true).open(&p).unwrap();
    f.write_all(b"v2").unwrap();
    f.sync_all().unwrap();
    drop(f);
    let after = fx.fs.sync_counts();
    assert_eq!(after.fdatasync - before.fdatasync, 1);
    assert_eq!(after.fsync - before.fsync, 1);
    assert_eq!(after.fsyncdir - before.fsyncdir, 1);
    assert_eq!(after.files(), 2);
    fx.cut();
    assert_eq!(read(&p).unwrap(), b"v2");
    // Counts survive power cuts.
    assert_eq!(fx.fs.sync_counts(), after);
}

#[test]
fn append_after_sync_is_lost_down_to_the_synced_length() {
    let fx = Fixture::new();
    let p = fx.path("log");
    let a = vec![b'a'; 1000];
    write_file(&p, &a, true);
    sync_dir(&fx.mnt);
    append(&p, &[b'b'; 100], true);
    append(&p, &[b'c'; 500], false);
    assert_eq!(fs::metadata(&p).unwrap().len(), 1600);
    fx.cut();
    let got = read(&p).unwrap();
    assert_eq!(got.len(), 1100);
    assert_eq!(&got[..1000], &a[..]);
    assert!(got[1000..].iter().all(|&b| b == b'b'));
    assert_eq!(fs::metadata(&p).unwrap().len(), 1100);
}

#[test]
fn unsynced_truncate_reverts() {
    let fx = Fixture::new();
    let p = fx.path("f");
    write_file(&p, b"abcdef", true);
    sync_dir(&fx.mnt);

    // ftruncate down, then back up: the cut-off bytes read as zeros, not as the old ones.
    let f = OpenOptions::new().write(true).open(&p).unwrap();
    f.set_len(2).unwrap();
    assert_eq!(read(&p).unwrap(), b"ab");
    f.set_len(4).unwrap();
    assert_eq!(read(&p).unwrap(), b"ab\0\0");
    drop(f);
    fx.cut();
    assert_eq!(read(&p).unwrap(), b"abcdef");

    // open(O_TRUNC) is a truncate too.
    drop(File::create(&p).unwrap());
    assert_eq!(read(&p).unwrap(), b"");
    fx.cut();
    assert_eq!(read(&p).unwrap(), b"abcdef");

    // Synced truncate sticks.
    let f = OpenOptions::new().write(true).open(&p).unwrap();
    f.set_len(3).unwrap();
    f.sync_data().unwrap();
    drop(f);
    fx.cut();
    assert_eq!(read(&p).unwrap(), b"abc");
}

#[test]
fn new_file_needs_both_data_sync_and_dir_sync() {
    let fx = Fixture::new();
    // Data synced, directory not: the name is not durable, so the file is gone.
    write_file(&fx.path("data-only"), b"x", true);
    // Directory synced, data not: the name survives, with the data synced so far (none).
    write_file(&fx.path("name-only"), b"y", false);
    sync_dir(&fx.mnt);
    write_file(&fx.path("late"), b"z", true);
    // Both: survives whole.
    write_file(&fx.path("both"), b"w", false);
    File::open(fx.path("both")).unwrap().sync_data().unwrap();
    write_file(&fx.path("never"), b"v", false);
    sync_dir(&fx.mnt);
    assert_eq!(
        list(&fx.mnt),
        ["both", "data-only", "late", "name-only", "never"]
    );
    fs::write(fx.path("after-last-sync"), b"u").unwrap();
    fx.cut();
    assert_eq!(
        list(&fx.mnt),
        ["both", "data-only", "late", "name-only", "never"]
    );
    assert_eq!(read(&fx.path("both")).unwrap(), b"w");
    assert_eq!(read(&fx.path("late")).unwrap(), b"z");
    // "data-only" got its name synced by the second directory sync after its data sync.
    assert_eq!(read(&fx.path("data-only")).unwrap(), b"x");
    assert_eq!(read(&fx.path("name-only")).unwrap(), b"");
    assert_eq!(read(&fx.path("never")).unwrap(), b"");

    // A data-synced file whose directory is never synced vanishes.
    write_file(&fx.path("vanishes"), b"synced data", true);
    fx.cut();
    assert_eq!(read(&fx.path("vanishes")), None);
}

#[test]
fn unsynced_unlink_comes_back() {
    let fx = Fixture::new();
    let p = fx.path("f");
    write_file(&p, b"keep me", true);
    sync_dir(&fx.mnt);
    fs::remove_file(&p).unwrap();
    assert_eq!(read(&p), None);
    fx.cut();
    assert_eq!(read(&p).unwrap(), b"keep me");
    fs::remove_file(&p).unwrap();
    sync_dir(&fx.mnt);
    fx.cut();
    assert_eq!(read(&p), None);
}

#[test]
fn unsynced_rename_reverts_both_names() {
    let fx = Fixture::new();
    let a = fx.path("a");
    let b = fx.path("b");
    write_file(&a, b"A", true);
    write_file(&b, b"B", true);
    sync_dir(&fx.mnt);
    fs::rename(&a, &b).unwrap();
    assert_eq!(read(&a), None);
    assert_eq!(read(&b).unwrap(), b"A");
    fx.cut();
    assert_eq!(read(&a).unwrap(), b"A");
    assert_eq!(read(&b).unwrap(), b"B");

    // The atomic-replace pattern: synced temp file renamed over, then the directory synced.
    let tmp = fx.path("b.tmp");
    write_file(&tmp, b"B2", true);
    fs::rename(&tmp, &b).unwrap();
    sync_dir(&fx.mnt);
    fx.cut();
    assert_eq!(list(&fx.mnt), ["a", "b"]);
    assert_eq!(read(&b).unwrap(), b"B2");
}

#[test]
fn directories_follow_the_same_rules() {
    let fx = Fixture::new();
    let sub = fx.path("sub");
    fs::create_dir(&sub).unwrap();
    write_file(&sub.join("f"), b"inner", true);
    sync_dir(&sub);
    // sub's own name was never synced in the root: it is gone with everything in it.
    fx.cut();
    assert!(!sub.exists());

    fs::create_dir(&sub).unwrap();
    write_file(&sub.join("f"), b"inner", true);
    sync_dir(&sub);
    sync_dir(&fx.mnt);
    fs::create_dir(sub.join("nested")).unwrap();
    sync_dir(&sub);
    write_file(&sub.join("nested/g"), b"never synced dir", true);
    fx.cut();
    assert_eq!(read(&sub.join("f")).unwrap(), b"inner");
    assert_eq!(list(&sub), ["f", "nested"]);
    assert_eq!(list(&sub.join("nested")), Vec::<String>::new());

    // rmdir and rename of directories revert too.
    fs::remove_dir(sub.join("nested")).unwrap();
    fs::rename(&sub, fx.path("renamed")).unwrap();
    fx.cut();
    assert_eq!(list(&fx.mnt), ["sub"]);
    assert_eq!(list(&sub), ["f", "nested"]);

    // Same-parent directory rename, synced.
    fs::rename(&sub, fx.path("renamed")).unwrap();
    sync_dir(&fx.mnt);
    fx.cut();
    assert_eq!(list(&fx.mnt), ["renamed"]);
    assert_eq!(read(&fx.path("renamed/f")).unwrap(), b"inner");

    // A removed directory with durable content, synced away.
    fs::remove_file(fx.path("renamed/f")).unwrap();
    fs::remove_dir(fx.path("renamed/nested")).unwrap();
    fs::remove_dir(fx.path("renamed")).unwrap();
    sync_dir(&fx.mnt);
    fx.cut();
    assert_eq!(list(&fx.mnt), Vec::<String>::new());
}

#[test]
fn rename_across_directories_is_durable_per_directory() {
    let fx = Fixture::new();
    for d in ["a", "b"] {
        fs::create_dir(fx.path(d)).unwrap();
    }
    write_file(&fx.path("a/x"), b"X", true);
    sync_dir(&fx.path("a"));
    sync_dir(&fx.mnt);

    // Only the target synced: the file has both names after the cut.
    fs::rename(fx.path("a/x"), fx.path("b/x")).unwrap();
    sync_dir(&fx.path("b"));
    fx.cut();
    assert_eq!(read(&fx.path("a/x")).unwrap(), b"X");
    assert_eq!(read(&fx.path("b/x")).unwrap(), b"X");
    let (ma, mb) = (
        fs::metadata(fx.path("a/x")).unwrap(),
        fs::metadata(fx.path("b/x")).unwrap(),
    );
    assert_eq!(ma.ino(), mb.ino());
    assert_eq!(ma.nlink(), 2);

    // Both synced: only the new name.
    fs::remove_file(fx.path("a/x")).unwrap();
    sync_dir(&fx.path("a"));
    fx.cut();
    assert_eq!(list(&fx.path("a")), Vec::<String>::new());
    assert_eq!(read(&fx.path("b/x")).unwrap(), b"X");

    // Only the source synced: no name at all.
    fs::rename(fx.path("b/x"), fx.path("a/x")).unwrap();
    sync_dir(&fx.path("b"));
    fx.cut();
    assert_eq!(read(&fx.path("a/x")), None);
    assert_eq!(read(&fx.path("b/x")), None);

    // A directory moved across parents takes its durable name along when the target syncs.
    fs::create_dir(fx.path("a/d")).unwrap();
    write_file(&fx.path("a/d/f"), b"F", true);
    sync_dir(&fx.path("a/d"));
    sync_dir(&fx.path("a"));
    fs::rename(fx.path("a/d"), fx.path("b/d")).unwrap();
    sync_dir(&fx.path("b"));
    fx.cut();
    assert_eq!(list(&fx.path("a")), Vec::<String>::new());
    assert_eq!(read(&fx.path("b/d/f")).unwrap(), b"F");
}

#[test]
fn open_unlinked_file_keeps_working_and_its_synced_data_returns_with_its_name() {
    let fx = Fixture::new();
    let p = fx.path("f");
    write_file(&p, b"durable", true);
    sync_dir(&fx.mnt);
    let mut f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
    fs::remove_file(&p).unwrap();
    f.write_all(b"DURABLE and more").unwrap();
    f.sync_data().unwrap();
    f.seek(SeekFrom::Start(0)).unwrap();
    let mut back = String::new();
    f.read_to_string(&mut back).unwrap();
    assert_eq!(back, "DURABLE and more");
    assert_eq!(f.metadata().unwrap().nlink(), 0);
    drop(f);
    fx.cut();
    // The unlink was never synced, the data was.
    assert_eq!(read(&p).unwrap(), b"DURABLE and more");
}

#[test]
fn posix_open_flags_inodes_and_sizes() {
    let fx = Fixture::new();
    let p = fx.path("f");

    // O_CREAT|O_EXCL.
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o640)
        .open(&p)
        .unwrap();
    f.write_all(b"12345").unwrap();
    let err = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&p)
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists);
    let meta = fs::metadata(&p).unwrap();
    assert_eq!(meta.len(), 5);
    assert_eq!(meta.mode() & 0o777, 0o640);
    assert!(meta.is_file());

    // O_APPEND writes at the end whatever the file position, also across two handles.
    let mut a1 = OpenOptions::new().append(true).open(&p).unwrap();
    let mut a2 = OpenOptions::new().append(true).open(&p).unwrap();
    a1.write_all(b"a").unwrap();
    a2.write_all(b"b").unwrap();
    a1.write_all(b"c").unwrap();
    f.write_all_at(b"X", 0).unwrap();
    assert_eq!(read(&p).unwrap(), b"X2345abc");
    drop((a1, a2, f));

    // Inode numbers: distinct, stable, shared by hard links, and directories have theirs.
    write_file(&fx.path("g"), b"", false);
    fs::hard_link(&p, fx.path("h")).unwrap();
    let (mf, mg, mh) = (
        fs::metadata(&p).unwrap(),
        fs::metadata(fx.path("g")).unwrap(),
        fs::metadata(fx.path("h")).unwrap(),
    );
    assert_ne!(mf.ino(), mg.ino());
    assert_eq!(mf.ino(), mh.ino());
    assert_eq!(mf.nlink(), 2);
    assert_eq!(fs::metadata(&p).unwrap().ino(), mf.ino());
    assert_eq!(fs::metadata(&fx.mnt).unwrap().ino(), 1);
    fs::create_dir(fx.path("d")).unwrap();
    assert_eq!(fs::metadata(&fx.mnt).unwrap().nlink(), 3);

    // Symlinks.
    std::os::unix::fs::symlink("f", fx.path("s")).unwrap();
    assert_eq!(fs::read_link(fx.path("s")).unwrap().to_str(), Some("f"));
    assert_eq!(read(&fx.path("s")).unwrap(), b"X2345abc");

    // Sparse writes past the end read zeros in between.
    let f = OpenOptions::new().write(true).open(fx.path("g")).unwrap();
    f.write_all_at(b"z", 9).unwrap();
    assert_eq!(read(&fx.path("g")).unwrap(), b"\0\0\0\0\0\0\0\0\0z");
    assert_eq!(f.metadata().unwrap().len(), 10);

    assert_eq!(list(&fx.mnt), ["d", "f", "g", "h", "s"]);
    // The staging area is not visible and its name cannot be taken.
    assert!(!fx.path(STAGING).exists());
    assert!(fs::create_dir(fx.path(STAGING)).is_err());

    // statfs works (df would use it).
    let st = rustix_statvfs(&fx.mnt);
    assert!(st > 0);
}

fn rustix_statvfs(path: &std::path::Path) -> u64 {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: zeroed statvfs is valid; path is NUL-terminated.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
    st.f_blocks
}

#[test]
fn a_file_open_across_a_power_cut_fails_instead_of_leaking_into_the_new_state() {
    let fx = Fixture::new();
    let p = fx.path("f");
    write_file(&p, b"durable", true);
    sync_dir(&fx.mnt);
    let f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
    // The mount is busy, so the power cut detaches it lazily.
    fx.cut();
    assert!(f.write_all_at(b"ghost", 0).is_err());
    let mut buf = [0u8; 4];
    assert!(f.read_at(&mut buf, 0).is_err());
    drop(f);
    assert_eq!(read(&p).unwrap(), b"durable");
    write_file(&p, b"still works", true);
    assert_eq!(read(&p).unwrap(), b"still works");
}

#[test]
fn unmount_leaves_exactly_the_durable_state_and_mounts_again() {
    let fx = Fixture::new();
    fs::create_dir(fx.path("d")).unwrap();
    write_file(&fx.path("d/kept"), b"kept", true);
    write_file(&fx.path("d/name-only"), b"lost data", false);
    sync_dir(&fx.path("d"));
    sync_dir(&fx.mnt);
    write_file(&fx.path("d/lost"), b"lost", true);
    write_file(&fx.path("top-lost"), b"lost", true);
    let backing = fx.backing.clone();
    let mnt = fx.mnt.clone();
    let Fixture { fs: plfs, _dir, .. } = fx;
    plfs.unmount().unwrap();
    assert_eq!(list(&backing), ["d"]);
    assert_eq!(list(&backing.join("d")), ["kept", "name-only"]);
    assert_eq!(fs::read(backing.join("d/kept")).unwrap(), b"kept");
    assert_eq!(fs::read(backing.join("d/name-only")).unwrap(), b"");
    assert_eq!(fs::metadata(backing.join("d/kept")).unwrap().nlink(), 1);

    let again = PowerLossFs::mount(&backing, &mnt).unwrap();
    assert_eq!(read(&mnt.join("d/kept")).unwrap(), b"kept");
    assert_eq!(list(&mnt.join("d")), ["kept", "name-only"]);
    drop(again);
}

#[test]
fn large_files_round_trip() {
    let fx = Fixture::new();
    let p = fx.path("big");
    let data: Vec<u8> = (0..8 * 1024 * 1024u32)
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    write_file(&p, &data, true);
    sync_dir(&fx.mnt);
    // Overwrite the middle without syncing.
    let f = OpenOptions::new().write(true).open(&p).unwrap();
    f.write_all_at(&vec![0xff; 3 * 1024 * 1024], 2 * 1024 * 1024)
        .unwrap();
    drop(f);
    let cur = read(&p).unwrap();
    assert!(
        cur[2 * 1024 * 1024..5 * 1024 * 1024]
            .iter()
            .all(|&b| b == 0xff)
    );
    assert_eq!(&cur[..2 * 1024 * 1024], &data[..2 * 1024 * 1024]);
    fx.cut();
    assert!(read(&p).unwrap() == data);
}

#[test]
fn a_directory_moved_out_of_a_removed_one_is_kept() {
    let fx = Fixture::new();
    fs::create_dir_all(fx.path("s/x")).unwrap();
    write_file(&fx.path("s/x/f"), b"F", true);
    sync_dir(&fx.path("s/x"));
    sync_dir(&fx.path("s"));
    sync_dir(&fx.mnt);
    // x leaves s, s is removed, and the root is synced: s's backing tree is deleted, but x,
    // which is durably still inside it, must not go with it.
    fs::rename(fx.path("s/x"), fx.path("x2")).unwrap();
    fs::remove_dir(fx.path("s")).unwrap();
    sync_dir(&fx.mnt);
    fx.cut();
    assert_eq!(list(&fx.mnt), ["x2"]);
    assert_eq!(read(&fx.path("x2/f")).unwrap(), b"F");

    // The same, but the new parent is not synced: x's only durable name was inside s.
    fs::create_dir(fx.path("q")).unwrap();
    sync_dir(&fx.mnt);
    fs::create_dir(fx.path("x2/sub")).unwrap();
    sync_dir(&fx.path("x2"));
    fs::rename(fx.path("x2/sub"), fx.path("q/sub")).unwrap();
    fs::remove_file(fx.path("x2/f")).unwrap();
    fs::remove_dir(fx.path("x2")).unwrap();
    sync_dir(&fx.mnt);
    assert_eq!(list(&fx.path("q")), ["sub"]);
    fx.cut();
    assert_eq!(list(&fx.mnt), ["q"]);
    assert_eq!(list(&fx.path("q")), Vec::<String>::new());
}

#[test]
fn a_directory_sync_that_would_make_a_durable_cycle_fails_until_the_old_parent_is_synced() {
    let fx = Fixture::new();
    fs::create_dir_all(fx.path("x/p")).unwrap();
    sync_dir(&fx.path("x"));
    sync_dir(&fx.mnt);
    // Swap the nesting: durably x/p, currently p/x.
    fs::rename(fx.path("x/p"), fx.path("p")).unwrap();
    fs::rename(fx.path("x"), fx.path("p/x")).unwrap();
    let err = File::open(fx.path("p")).unwrap().sync_all().unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO));
    sync_dir(&fx.mnt);
    sync_dir(&fx.path("p"));
    fx.cut();
    assert_eq!(list(&fx.mnt), ["p"]);
    assert_eq!(list(&fx.path("p")), ["x"]);
    assert_eq!(list(&fx.path("p/x")), Vec::<String>::new());
}

//! Support for the `kill -9` tests: finding the objects' databases, a seeded generator for
//! kill moments, and integrity checks that leave the data directory as the crash left it.

use std::path::{Path, PathBuf};

/// Every object database under `data_dir`.
pub fn object_databases(data_dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![data_dir.join("objects")];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "sqlite") {
                out.push(path);
            }
        }
    }
    out
}

/// A small deterministic generator for kill moments, seeded per run and printed on failure.
pub fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// Runs `PRAGMA integrity_check` on every object database under `data`, each on a copy of
/// its file (and of a WAL file, should one be there: an object's WAL is in the server's
/// memory). Meant for files recovery has brought up to date, while the server writes
/// nothing: right after a crash a file may hold half a checkpoint, which the node log mends
/// at the next start. Never on the files themselves: opening them could change them.
pub fn integrity_check_all(data: &Path, what: &str) {
    let dbs = object_databases(data);
    // A thread per core's share: a thousand small databases per round.
    std::thread::scope(|scope| {
        for part in dbs.chunks(dbs.len().div_ceil(4).max(1)) {
            scope.spawn(move || {
                let scratch = tempfile::tempdir().unwrap();
                for db in part {
                    let copy = scratch.path().join("check.sqlite");
                    let copy_wal = scratch.path().join("check.sqlite-wal");
                    std::fs::copy(db, &copy).unwrap();
                    let mut wal = db.as_os_str().to_owned();
                    wal.push("-wal");
                    match std::fs::copy(PathBuf::from(wal), &copy_wal) {
                        Ok(_) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                            let _ = std::fs::remove_file(&copy_wal);
                        }
                        Err(e) => panic!("{what}: copying the WAL of {}: {e}", db.display()),
                    }
                    let conn = rusqlite::Connection::open(&copy).unwrap();
                    let check: String = conn
                        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
                        .unwrap();
                    assert_eq!(check, "ok", "{what}: {}", db.display());
                    drop(conn);
                    for side in ["check.sqlite", "check.sqlite-wal", "check.sqlite-shm"] {
                        let _ = std::fs::remove_file(scratch.path().join(side));
                    }
                }
            });
        }
    });
}

//! SQLite in WAL mode (as Rookery runs it: `locking_mode=EXCLUSIVE`, no mmap, no -shm) across
//! SIGKILL + power cut. The writer is a child process (this test binary run again as the
//! ignored test `sqlite_child`), killed like the server under test will be.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use rusqlite::Connection;

const CHILD_ENV: &str = "ROOKERY_POWERLOSS_SQLITE_CHILD";
const PREFIX: &str = "powerloss-child:";
const TIMEOUT: Duration = Duration::from_secs(120);

fn payload(id: i64) -> Vec<u8> {
    let len = 300 + (id as usize * 977) % 6000;
    (0..len).map(|i| (id as usize * 31 + i) as u8).collect()
}

fn open(path: &Path) -> Connection {
    let conn = Connection::open(path).expect("open db");
    conn.pragma_update(None, "locking_mode", "EXCLUSIVE")
        .unwrap();
    let mode: String = conn
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    conn.pragma_update(None, "mmap_size", 0).unwrap();
    // Checkpoint often, so the database file itself is written and synced during the run.
    conn.pragma_update(None, "wal_autocheckpoint", 40).unwrap();
    conn
}

/// The writer. Plan in the environment: `db path|FULL commits|OFF commits` (FULL commits `0`
/// = commit with synchronous=FULL until killed). Prints each commit after it returned.
#[test]
#[ignore = "only run as a child process by the other tests"]
fn sqlite_child() {
    let Ok(plan) = std::env::var(CHILD_ENV) else {
        return;
    };
    let parts: Vec<&str> = plan.split('|').collect();
    let (path, full, off): (&str, i64, i64) = (
        parts[0],
        parts[1].parse().unwrap(),
        parts[2].parse().unwrap(),
    );
    let mut conn = open(Path::new(path));
    conn.pragma_update(None, "synchronous", "FULL").unwrap();
    conn.execute(
        "CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, payload BLOB NOT NULL)",
        [],
    )
    .unwrap();
    println!("{PREFIX} created");
    let commit = |conn: &mut Connection, id: i64| {
        let tx = conn.transaction().unwrap();
        tx.execute(
            "INSERT INTO t (id, payload) VALUES (?1, ?2)",
            (id, payload(id)),
        )
        .unwrap();
        tx.commit().unwrap();
    };
    let mut id = 1;
    while full == 0 || id <= full {
        commit(&mut conn, id);
        println!("{PREFIX} committed {id}");
        id += 1;
    }
    conn.pragma_update(None, "synchronous", "OFF").unwrap();
    for _ in 0..off {
        commit(&mut conn, id);
        println!("{PREFIX} unsynced {id}");
        id += 1;
    }
    println!("{PREFIX} done");
    // Wait to be killed, with the database open.
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
}

struct Writer {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Writer {
    fn spawn(db: &Path, full: i64, off: i64) -> Self {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["sqlite_child", "--exact", "--ignored", "--nocapture"])
            .args(["--test-threads=1"])
            .env(CHILD_ENV, format!("{}|{full}|{off}", db.display()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            // libtest may print "test sqlite_child ... " on the same line; keep draining to
            // the end so the child never writes into a closed pipe.
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(at) = line.find(PREFIX) {
                    let _ = tx.send(line[at + PREFIX.len()..].trim().to_string());
                }
            }
        });
        Self { child, lines }
    }

    /// The next line from the child, within the time limit.
    fn next(&self, deadline: Instant) -> String {
        let left = deadline.saturating_duration_since(Instant::now());
        self.lines
            .recv_timeout(left)
            .expect("child output within the time limit")
    }

    /// SIGKILL, wait (bounded) until it is gone, so nothing holds the mount, and return the
    /// lines it printed that were not read yet.
    fn kill(mut self) -> Vec<String> {
        self.child.kill().expect("kill");
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.child.try_wait().expect("wait").is_none() {
            assert!(Instant::now() < deadline, "child did not die");
            std::thread::sleep(Duration::from_millis(5));
        }
        // The reader ends at the end of the pipe, which closes the channel.
        let mut rest = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => rest.push(line),
                Err(mpsc::RecvTimeoutError::Disconnected) => return rest,
                Err(mpsc::RecvTimeoutError::Timeout) => panic!("child output did not end"),
            }
        }
    }
}

/// Rows after recovery; asserts the database is not corrupt and every payload is right.
fn recovered_ids(db: &Path) -> Vec<i64> {
    let conn = open(db);
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    let mut stmt = conn
        .prepare("SELECT id, payload FROM t ORDER BY id")
        .unwrap();
    let rows: Vec<(i64, Vec<u8>)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    for (id, data) in &rows {
        assert!(*data == payload(*id), "payload of row {id} is wrong");
    }
    rows.into_iter().map(|(id, _)| id).collect()
}

#[test]
fn sqlite_full_commits_survive_a_power_cut() {
    let fx = Fixture::new();
    let db = fx.path("data/objects.sqlite");
    std::fs::create_dir(fx.path("data")).unwrap();
    sync_dir(&fx.mnt);
    let deadline = Instant::now() + TIMEOUT;
    let writer = Writer::spawn(&db, 150, 0);
    assert_eq!(writer.next(deadline), "created");
    for id in 1..=150 {
        assert_eq!(writer.next(deadline), format!("committed {id}"));
    }
    assert_eq!(writer.next(deadline), "done");
    assert_eq!(writer.kill(), Vec::<String>::new());
    let counts = fx.fs.sync_counts();
    assert!(counts.files() >= 150, "{counts:?}");
    // SQLite syncs the directory when it creates the WAL, which makes the database's name
    // durable too; without that the database would be gone here.
    assert!(counts.fsyncdir >= 1, "{counts:?}");
    fx.cut();
    assert_eq!(recovered_ids(&db), (1..=150).collect::<Vec<_>>());
}

#[test]
fn sqlite_unsynced_commits_are_lost_cleanly() {
    let fx = Fixture::new();
    let db = fx.path("db.sqlite");
    let deadline = Instant::now() + TIMEOUT;
    let writer = Writer::spawn(&db, 60, 60);
    let mut last = String::new();
    while last != "done" {
        last = writer.next(deadline);
    }
    assert_eq!(writer.kill(), Vec::<String>::new());
    fx.cut();
    let ids = recovered_ids(&db);
    // The synchronous=OFF commits after the last sync are all gone (nothing synced them), or
    // all there; never a gap, never a synced commit lost, never a corrupt file.
    assert!(
        ids == (1..=60).collect::<Vec<_>>() || ids == (1..=120).collect::<Vec<_>>(),
        "recovered {} rows: {:?}..{:?}",
        ids.len(),
        ids.first(),
        ids.last()
    );
    assert_eq!(ids.len(), 60, "this model loses every unsynced commit");
}

#[test]
fn sqlite_killed_mid_stream_keeps_every_acknowledged_commit() {
    let fx = Fixture::new();
    let db = fx.path("db.sqlite");
    let deadline = Instant::now() + TIMEOUT;
    let writer = Writer::spawn(&db, 0, 0);
    assert_eq!(writer.next(deadline), "created");
    let commit_id = |line: &str| -> i64 {
        line.strip_prefix("committed ")
            .and_then(|n| n.parse().ok())
            .expect("a commit line")
    };
    let mut acked = 0;
    while acked < 120 {
        acked = commit_id(&writer.next(deadline));
    }
    // Killed while committing. Every commit whose COMMIT returned was printed after it, so
    // all printed ones must survive; the one in flight may or may not have made it.
    for line in writer.kill() {
        acked = commit_id(&line);
    }
    fx.cut();
    let ids = recovered_ids(&db);
    let n = ids.len() as i64;
    assert_eq!(ids, (1..=n).collect::<Vec<_>>(), "not a prefix");
    assert!(n >= acked, "acknowledged commit lost: {n} < {acked}");
    assert!(n <= acked + 1, "more rows than commits: {n} > {acked} + 1");
}

//! Power loss: the server runs on a file system that drops everything not synced when told
//! (`rookery-powerloss`), is killed with SIGKILL under load, the unsynced data is dropped as a
//! power cut would, and the server starts again on what is left.
//!
//! - `strict` promises that a write whose response the client saw survives: every counter holds
//!   at least what its writer saw acknowledged (and at most one increment more: the one in
//!   flight when the power went), and every new object whose creation was acknowledged exists.
//! - `relaxed` promises survival of a process crash only. After power loss an object keeps a
//!   prefix of its writes: its most recent acknowledged writes may be gone, never a later one
//!   without the earlier, and nothing is corrupt. The test checks exactly that.
//!
//! Every writer owns its counter, so one lost acknowledgement cannot hide behind another
//! writer's increment. After each restart the server itself recovers the WAL the crash left
//! (the test opens no database before it); at the end every database passes
//! `PRAGMA integrity_check`.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use common::{ChildServer, client, wait_until};
use rookery_powerloss::PowerLossFs;
use serde_json::Value;

/// Writers, each with its own counter.
const WRITERS: usize = 12;
/// Kill / power-cut / restart cycles per durability setting.
const CYCLES: usize = 3;
/// Acknowledged increments, over all writers, before each kill.
const ACKED_PER_CYCLE: u64 = 240;

#[derive(Default)]
struct Ledger {
    /// The highest value each writer's counter was acknowledged with.
    acked: Vec<AtomicU64>,
    /// Fresh objects whose first increment was acknowledged.
    fresh: Mutex<Vec<String>>,
    /// Acknowledged increments in this cycle.
    count: AtomicU64,
}

async fn get(server: &ChildServer, name: &str) -> i64 {
    let r: Value = client()
        .get(server.url(&format!("/counter/{name}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    r["value"].as_i64().expect("a counter value")
}

/// One writer: increments its own counter until told to stop (or the server dies), and every
/// eighth time creates a new counter with one increment.
async fn writer(url: String, i: usize, cycle: usize, ledger: Arc<Ledger>, stop: Arc<AtomicBool>) {
    let c = client();
    let mut n = 0usize;
    while !stop.load(Ordering::SeqCst) {
        n += 1;
        let fresh = n % 8 == 0;
        let name = if fresh {
            format!("fresh-{cycle}-{i}-{n}")
        } else {
            format!("w{i}")
        };
        let Ok(r) = c
            .post(format!("{url}/counter/{name}/increment"))
            .send()
            .await
        else {
            break;
        };
        if r.status() != 200 {
            break;
        }
        // Only a complete response counts as acknowledged.
        let Ok(body) = r.json::<Value>().await else {
            break;
        };
        let Some(value) = body["value"].as_i64() else {
            break;
        };
        if fresh {
            ledger.fresh.lock().unwrap().push(name);
        } else {
            ledger.acked[i].fetch_max(u64::try_from(value).unwrap_or(0), Ordering::SeqCst);
        }
        ledger.count.fetch_add(1, Ordering::SeqCst);
    }
}

/// Every SQLite database under `dir`.
fn databases(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "sqlite") {
                found.push(path);
            }
        }
    }
    found
}

async fn power_loss_cycles(durability: &str) {
    let backing = tempfile::tempdir().unwrap();
    let mount = tempfile::tempdir().unwrap();
    let fs = PowerLossFs::mount(backing.path(), mount.path()).expect("mounts (needs root)");
    // A flush takes a while, as on a real disk: a write answered before its sync would stay
    // unsynced long enough for the power cut to find it.
    fs.set_sync_delay(std::time::Duration::from_millis(2));
    let data = mount.path().join("data");
    let args = ["--durability", durability];
    // What each counter held after the last restart.
    let mut base = [0i64; WRITERS];
    let mut all_fresh: BTreeMap<String, bool> = BTreeMap::new();
    let mut lost_writes = 0;
    for cycle in 0..CYCLES {
        let server = ChildServer::start(&data, &args);
        let ledger = Arc::new(Ledger {
            acked: (0..WRITERS)
                .map(|i| AtomicU64::new(u64::try_from(base[i]).unwrap_or(0)))
                .collect(),
            ..Ledger::default()
        });
        let stop = Arc::new(AtomicBool::new(false));
        let url = server.url("");
        let writers: Vec<_> = (0..WRITERS)
            .map(|i| tokio::spawn(writer(url.clone(), i, cycle, ledger.clone(), stop.clone())))
            .collect();
        wait_until("enough increments are acknowledged", || {
            ledger.count.load(Ordering::SeqCst) >= ACKED_PER_CYCLE
        })
        .await;
        // The power goes while the writers are still writing.
        server.kill9();
        stop.store(true, Ordering::SeqCst);
        for w in writers {
            w.await.unwrap();
        }
        fs.power_cut().expect("power cut");

        let server = ChildServer::start(&data, &args);
        for (i, b) in base.iter_mut().enumerate() {
            let acked = i64::try_from(ledger.acked[i].load(Ordering::SeqCst)).unwrap();
            let now = get(&server, &format!("w{i}")).await;
            // One increment may have been in flight: durable but not yet answered.
            assert!(
                now <= acked + 1,
                "{durability}: w{i} holds {now}, more than the {acked} acknowledged and one in flight"
            );
            if durability == "strict" {
                assert!(
                    now >= acked,
                    "{durability}: w{i} lost acknowledged writes after power loss: {now} < {acked} (cycle {cycle})"
                );
            } else {
                // A prefix: the counter never goes below what it held before this cycle's
                // writes unless those are all that was lost, and never below zero.
                assert!(now >= 0, "{durability}: w{i} holds {now}");
                lost_writes += (acked - now).max(0);
            }
            *b = now;
        }
        let fresh = ledger.fresh.lock().unwrap().clone();
        for name in &fresh {
            let now = get(&server, name).await;
            if durability == "strict" {
                assert_eq!(
                    now, 1,
                    "{durability}: the acknowledged new object {name} is gone after power loss"
                );
            } else {
                assert!(now == 0 || now == 1, "{durability}: {name} holds {now}");
            }
            all_fresh.insert(name.clone(), now == 1);
        }
        let stats: Value = client()
            .get(server.url("/_rookery/stats"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(stats["runtime"]["live_objects"].as_u64().unwrap() > 0);
        server.terminate();
    }
    assert!(
        !all_fresh.is_empty(),
        "the writers created new objects under load"
    );
    if durability == "strict" {
        assert!(
            fs.sync_counts().files() > 0,
            "strict durability synced files on the test file system"
        );
    }
    eprintln!(
        "{durability}: {} fresh objects, {lost_writes} acknowledged increments lost to power cuts, {:?}",
        all_fresh.len(),
        fs.sync_counts()
    );
    // After a clean stop, what is durable (the backing directory once unmounted) is whole.
    fs.unmount().expect("unmounts");
    let dbs = databases(&backing.path().join("data"));
    if durability == "strict" {
        assert!(dbs.len() > WRITERS, "the objects' databases are there");
    }
    for db in dbs {
        let conn = rusqlite::Connection::open(&db).unwrap();
        let check: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(check, "ok", "{}", db.display());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_loses_no_acknowledged_write_to_power_loss() {
    power_loss_cycles("strict").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relaxed_loses_only_a_suffix_of_writes_to_power_loss_and_nothing_is_corrupt() {
    power_loss_cycles("relaxed").await;
}

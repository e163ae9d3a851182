//! Many `kill -9` rounds under writes to 1 000 objects: no acknowledged turn lost, no database
//! torn, and a point-in-time restore to bookmarks taken mid-run gives exactly the state
//! acknowledged at each bookmark. `ROOKERY_CRASH_ROUNDS` sets the rounds (20 by default; the
//! issue's full run is 100).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use common::crash::{integrity_check_all, xorshift};
use common::{ChildServer, client, wait_until};
use futures_util::StreamExt;
use serde_json::{Value, json};

const KV_CONFIG: &str = include_str!("../../../examples/kv.toml");
const OBJECTS: usize = 1_000;
const WRITERS: usize = 8;
const ADMIN_TOKEN: &str = "crash-history-admin-token";
/// Objects whose state is bookmarked mid-run and restored at the end.
const BOOKMARKED: usize = 10;

/// The one value an object's three keys hold (`None`: nothing stored); panics on a torn turn.
async fn stored(c: &reqwest::Client, server: &ChildServer, object: usize) -> Option<u64> {
    let r: Value = c
        .get(server.url(&format!("/kv/o-{object}?prefix=")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let values: Vec<u64> = r["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["value"].as_u64().unwrap())
        .collect();
    if values.is_empty() {
        return None;
    }
    assert_eq!(values.len(), 3, "object {object}: {r}");
    assert!(
        values.iter().all(|v| *v == values[0]),
        "object {object}: half a turn is visible: {values:?}"
    );
    Some(values[0])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_rounds_over_many_objects_lose_nothing_and_restore_to_bookmarks_exactly() {
    let rounds: u64 = std::env::var("ROOKERY_CRASH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(20);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("kv.toml");
    std::fs::write(&config, KV_CONFIG).unwrap();
    let config = config.to_str().unwrap().to_string();
    let args = ["--config", &config, "--admin-token", ADMIN_TOKEN];
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    let initial_seed = seed;
    // Per object: the highest value acknowledged, and the highest sent, over all rounds.
    let acked: Arc<Vec<AtomicU64>> = Arc::new((0..OBJECTS).map(|_| AtomicU64::new(0)).collect());
    let sent: Arc<Vec<AtomicU64>> = Arc::new((0..OBJECTS).map(|_| AtomicU64::new(0)).collect());
    // Bookmarked objects: (object, bookmark, the value acknowledged at it).
    let mut bookmarks: Vec<(usize, String, Option<u64>)> = Vec::new();
    let c = client();
    for round in 0..rounds {
        let server = ChildServer::start(&data, &args);
        let stop = Arc::new(AtomicBool::new(false));
        let progress = Arc::new(AtomicU64::new(0));
        let round_seed = xorshift(&mut seed);
        let workers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let (acked, sent, stop, progress) =
                    (acked.clone(), sent.clone(), stop.clone(), progress.clone());
                let base = server.url("/kv/o-");
                let mut pick = round_seed ^ (w as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                tokio::spawn(async move {
                    let c = client();
                    while !stop.load(Ordering::SeqCst) {
                        // Writer w owns the objects o ≡ w (mod WRITERS): one request at a time
                        // per object, so `sent` and `acked` bound what each object can hold.
                        let o = w + WRITERS * (xorshift(&mut pick) as usize % (OBJECTS / WRITERS));
                        let v = sent[o].load(Ordering::SeqCst) + 1;
                        sent[o].store(v, Ordering::SeqCst);
                        let body = json!({ "put": { "a": v, "b": v, "c": v } });
                        let Ok(r) = c.post(format!("{base}{o}")).json(&body).send().await else {
                            break;
                        };
                        // Only a complete 200 response counts as acknowledged.
                        if r.status() != 200 || r.bytes().await.is_err() {
                            break;
                        }
                        acked[o].store(v, Ordering::SeqCst);
                        progress.fetch_add(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        let target = 20 + xorshift(&mut seed) % 300;
        wait_until("writes are acknowledged", || {
            progress.load(Ordering::SeqCst) >= target
        })
        .await;
        server.kill9();
        stop.store(true, Ordering::SeqCst);
        for w in workers {
            w.await.unwrap();
        }
        let server = ChildServer::start(&data, &args);
        let written: Vec<usize> = (0..OBJECTS)
            .filter(|o| sent[*o].load(Ordering::SeqCst) > 0)
            .collect();
        let found: Vec<(usize, u64)> = futures_util::stream::iter(written)
            .map(|o| {
                let (c, server) = (&c, &server);
                async move { (o, stored(c, server, o).await.unwrap_or(0)) }
            })
            .buffer_unordered(16)
            .collect()
            .await;
        for (o, found) in found {
            let (a, s) = (
                acked[o].load(Ordering::SeqCst),
                sent[o].load(Ordering::SeqCst),
            );
            assert!(
                found >= a && found <= s,
                "round {round} (seed {initial_seed}) object {o}: found {found} with {a} acknowledged and {s} sent"
            );
            // The next round continues from what survived.
            sent[o].store(found, Ordering::SeqCst);
            acked[o].store(found, Ordering::SeqCst);
        }
        if round == rounds / 2 {
            // Mid-run, at a quiet moment: every object holds exactly what was acknowledged.
            for k in 0..BOOKMARKED {
                let o = k * (OBJECTS / BOOKMARKED) + 1;
                let r: Value = c
                    .get(server.url(&format!("/_rookery/admin/objects/KV/o-{o}/bookmark")))
                    .bearer_auth(ADMIN_TOKEN)
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                let bookmark = r["bookmark"].as_str().unwrap().to_string();
                bookmarks.push((o, bookmark, stored(&c, &server, o).await));
            }
        }
        // What recovery made of the files, while the server only reads.
        integrity_check_all(&data, &format!("round {round} (seed {initial_seed})"));
        server.kill9();
    }
    assert_eq!(bookmarks.len(), BOOKMARKED, "bookmarks were taken");
    let server = ChildServer::start(&data, &args);
    // The admin API wants its token.
    let refused = c
        .post(server.url("/_rookery/admin/objects/KV/o-1/restore"))
        .json(&json!({ "bookmark": bookmarks[0].1 }))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    let mut changed_since = 0;
    for (o, bookmark, expected) in &bookmarks {
        if stored(&c, &server, *o).await != *expected {
            changed_since += 1;
        }
        let r = c
            .post(server.url(&format!("/_rookery/admin/objects/KV/o-{o}/restore")))
            .bearer_auth(ADMIN_TOKEN)
            .json(&json!({ "bookmark": bookmark }))
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            200,
            "restore of o-{o}: {}",
            r.text().await.unwrap()
        );
        assert_eq!(
            stored(&c, &server, *o).await,
            *expected,
            "(seed {initial_seed}) o-{o} restored to {bookmark}"
        );
    }
    assert!(
        changed_since > 0 || rounds < 4,
        "the bookmarked objects were written after their bookmarks (else the restores prove nothing)"
    );
    server.terminate();
    integrity_check_all(&data, "after the restores");
}

//! Durability across restarts of the real binary: a clean stop, and `kill -9` in the middle of
//! a burst of increments.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use common::crash::{integrity_check_all, xorshift};
use common::{ChildServer, client, get_json, wait_until};
use serde_json::Value;

async fn value(server: &ChildServer, name: impl std::fmt::Display) -> i64 {
    get_json(server.url(&format!("/counter/{name}"))).await["value"]
        .as_i64()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_survive_a_clean_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = ChildServer::start(dir.path(), &[]);
    let c = client();
    for i in 0..25 {
        let r = c
            .post(server.url(&format!("/counter/c{}/increment?amount={i}", i % 5)))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let before: Vec<i64> =
        futures_util::future::join_all((0..5).map(|i| value(&server, format!("c{i}")))).await;
    server.terminate();
    let server = ChildServer::start(dir.path(), &[]);
    let after: Vec<i64> =
        futures_util::future::join_all((0..5).map(|i| value(&server, format!("c{i}")))).await;
    assert_eq!(before, after);
    assert_eq!(after.iter().sum::<i64>(), (0..25).sum::<i64>());
    server.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_increments_survive_kill_9() {
    const WRITERS: usize = 16;
    let dir = tempfile::tempdir().unwrap();
    // Each writer owns its counter, so one lost acknowledgement cannot hide behind another
    // writer's increment: per writer, the value its last acknowledged increment returned.
    let mut acked = [0i64; WRITERS];
    for round in 0..3 {
        let server = ChildServer::start(dir.path(), &[]);
        let progress = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let workers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let (progress, stop) = (progress.clone(), stop.clone());
                let url = server.url(&format!("/counter/burst-{w}/increment"));
                let mut last = acked[w];
                tokio::spawn(async move {
                    let c = client();
                    // Whether an increment was sent and its answer never fully read.
                    let mut unanswered = false;
                    while !stop.load(Ordering::SeqCst) {
                        unanswered = true;
                        let Ok(r) = c.post(&url).send().await else {
                            break;
                        };
                        if r.status() != 200 {
                            break;
                        }
                        // Only a complete 200 response counts as acknowledged.
                        let Ok(body) = r.json::<Value>().await else {
                            break;
                        };
                        let value = body["value"].as_i64().unwrap();
                        assert_eq!(value, last + 1, "writer {w}: an increment adds one");
                        last = value;
                        unanswered = false;
                        progress.fetch_add(1, Ordering::SeqCst);
                    }
                    (last, unanswered)
                })
            })
            .collect();
        let threshold = 100 + round * 50;
        wait_until("enough increments are acknowledged", || {
            progress.load(Ordering::SeqCst) >= threshold
        })
        .await;
        server.kill9();
        stop.store(true, Ordering::SeqCst);
        let mut outcomes = Vec::new();
        for w in workers {
            outcomes.push(w.await.unwrap());
        }
        let server = ChildServer::start(dir.path(), &[]);
        for (w, (last, unanswered)) in outcomes.into_iter().enumerate() {
            let found = value(&server, format!("burst-{w}")).await;
            // Exactly what was acknowledged; one more only if an increment was unanswered
            // when the server died (it may have committed without its answer arriving).
            let allowed = if unanswered {
                vec![last, last + 1]
            } else {
                vec![last]
            };
            assert!(
                allowed.contains(&found),
                "round {round} writer {w}: {last} acknowledged (one more unanswered: {unanswered}), {found} found after kill -9"
            );
            acked[w] = found;
        }
        server.terminate();
    }
}

const KV_CONFIG: &str = include_str!("../../../examples/kv.toml");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_kills_lose_no_acknowledged_turn_and_tear_none() {
    const WRITERS: usize = 8;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("kv.toml");
    std::fs::write(&config, KV_CONFIG).unwrap();
    let config = config.to_str().unwrap().to_string();
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    let initial_seed = seed;
    // Per writer: the highest value acknowledged, and the highest sent, over all rounds.
    let acked: Arc<Vec<AtomicU64>> = Arc::new((0..WRITERS).map(|_| AtomicU64::new(0)).collect());
    let sent: Arc<Vec<AtomicU64>> = Arc::new((0..WRITERS).map(|_| AtomicU64::new(0)).collect());
    for round in 0..20 {
        let server = ChildServer::start(&data, &["--config", &config]);
        let stop = Arc::new(AtomicBool::new(false));
        let progress = Arc::new(AtomicU64::new(0));
        let workers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let (acked, sent, stop, progress) =
                    (acked.clone(), sent.clone(), stop.clone(), progress.clone());
                let url = server.url(&format!("/kv/writer-{w}"));
                tokio::spawn(async move {
                    let c = client();
                    while !stop.load(Ordering::SeqCst) {
                        // One turn writes three keys, each with the same new value.
                        let v = sent[w].load(Ordering::SeqCst) + 1;
                        sent[w].store(v, Ordering::SeqCst);
                        let body = serde_json::json!({ "put": { "a": v, "b": v, "c": v } });
                        let Ok(r) = c.post(&url).json(&body).send().await else {
                            break;
                        };
                        // Only a complete 200 response counts as acknowledged.
                        if r.status() != 200 || r.bytes().await.is_err() {
                            break;
                        }
                        acked[w].store(v, Ordering::SeqCst);
                        progress.fetch_add(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        // Kill after a random number of acknowledged turns in this round.
        let target = 5 + xorshift(&mut seed) % 150;
        wait_until("writes are acknowledged", || {
            progress.load(Ordering::SeqCst) >= target
        })
        .await;
        server.kill9();
        stop.store(true, Ordering::SeqCst);
        for w in workers {
            w.await.unwrap();
        }
        let server = ChildServer::start(&data, &["--config", &config]);
        let c = client();
        for w in 0..WRITERS {
            let r: Value = c
                .get(server.url(&format!("/kv/writer-{w}?prefix=")))
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
            let (a, s) = (
                acked[w].load(Ordering::SeqCst),
                sent[w].load(Ordering::SeqCst),
            );
            if a == 0 && values.is_empty() {
                continue;
            }
            assert_eq!(
                values.len(),
                3,
                "round {round} (seed {initial_seed}) writer {w}: {r}"
            );
            assert!(
                values.iter().all(|v| *v == values[0]),
                "round {round} (seed {initial_seed}) writer {w}: half a turn is visible: {values:?}"
            );
            assert!(
                values[0] >= a && values[0] <= s,
                "round {round} (seed {initial_seed}) writer {w}: found {} with {a} acknowledged and {s} sent",
                values[0]
            );
            // The next round continues from what survived.
            sent[w].store(values[0], Ordering::SeqCst);
            acked[w].store(values[0], Ordering::SeqCst);
        }
        // What recovery made of the files, while the server only reads.
        integrity_check_all(&data, &format!("round {round} (seed {initial_seed})"));
        server.terminate();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alarms_due_while_the_server_was_down_fire_after_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("kv.toml");
    std::fs::write(&config, KV_CONFIG).unwrap();
    let config = config.to_str().unwrap().to_string();
    let server = ChildServer::start(&data, &["--config", &config]);
    let c = client();
    let ttl_ms = 300;
    let put_at = std::time::Instant::now();
    for i in 0..5 {
        let r = c
            .put(server.url(&format!("/kv/ttl-{i}/k?ttl_ms={ttl_ms}")))
            .json(&serde_json::json!({ "v": i }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let r = c
        .put(server.url("/kv/ttl-0/keep"))
        .json(&1)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    server.kill9();
    // Let the expiry time pass while the server is down.
    let expiry = put_at + std::time::Duration::from_millis(ttl_ms + 50);
    wait_until("the keys' time has passed", || {
        std::time::Instant::now() >= expiry
    })
    .await;
    let server = ChildServer::start(&data, &["--config", &config]);
    for i in 0..5 {
        let url = server.url(&format!("/kv/ttl-{i}/k"));
        let deadline = tokio::time::Instant::now() + common::PATIENCE;
        loop {
            let status = c.get(&url).send().await.unwrap().status();
            if status == 404 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "key {i} never expired"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
    let r = c.get(server.url("/kv/ttl-0/keep")).send().await.unwrap();
    assert_eq!(r.status(), 200, "keys without a ttl stay");
    // The scheduler counts an alarm once the handler's commit is durable and the index agrees,
    // which may be just after its deletion became visible.
    let deadline = tokio::time::Instant::now() + common::PATIENCE;
    loop {
        let stats: Value = c
            .get(server.url("/_rookery/stats"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if stats["alarms"]["succeeded"].as_u64().unwrap() >= 5 && stats["alarms"]["scheduled"] == 0
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the alarms did not all succeed: {stats}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    server.terminate();
}

//! Durability across restarts of the real binary: a clean stop, and `kill -9` in the middle of
//! a burst of increments.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use common::{ChildServer, client, wait_until};
use serde_json::Value;

async fn value(server: &ChildServer, name: impl std::fmt::Display) -> i64 {
    let r: Value = client()
        .get(server.url(&format!("/counter/{name}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    r["value"].as_i64().unwrap()
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
    let dir = tempfile::tempdir().unwrap();
    for round in 0..3 {
        let server = ChildServer::start(dir.path(), &[]);
        let start = value(&server, "burst").await;
        let acked = Arc::new(AtomicU64::new(0));
        let sent = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let url = server.url("/counter/burst/increment");
        let workers: Vec<_> = (0..16)
            .map(|_| {
                let (acked, sent, stop, url) =
                    (acked.clone(), sent.clone(), stop.clone(), url.clone());
                tokio::spawn(async move {
                    let c = client();
                    while !stop.load(Ordering::SeqCst) {
                        sent.fetch_add(1, Ordering::SeqCst);
                        match c.post(&url).send().await {
                            Ok(r) if r.status() == 200 => {
                                // Only a complete 200 response counts as acknowledged.
                                if r.bytes().await.is_ok() {
                                    acked.fetch_add(1, Ordering::SeqCst);
                                }
                            }
                            _ => break,
                        }
                    }
                })
            })
            .collect();
        let threshold = 100 + round * 50;
        wait_until("enough increments are acknowledged", || {
            acked.load(Ordering::SeqCst) >= threshold
        })
        .await;
        server.kill9();
        stop.store(true, Ordering::SeqCst);
        for w in workers {
            w.await.unwrap();
        }
        let (acked, sent) = (
            acked.load(Ordering::SeqCst) as i64,
            sent.load(Ordering::SeqCst) as i64,
        );
        let server = ChildServer::start(dir.path(), &[]);
        let after = value(&server, "burst").await - start;
        assert!(
            after >= acked && after <= sent,
            "round {round}: {acked} acknowledged, {sent} sent, {after} found after kill -9"
        );
        server.terminate();
    }
}

//! Connection storms leave nothing behind: clients that vanish mid-upgrade or right after it
//! leave no socket registered, no user online, and no memory held.

mod common;

use std::time::Duration;

use common::{ChildServer, PATIENCE, client};
use futures_util::StreamExt;
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// How many clients of each kind a storm sends.
const STORM: usize = 1_000;
/// How many of them are under way at once.
const AT_ONCE: usize = 50;

/// The server's resident memory in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

async fn stats(server: &ChildServer) -> Value {
    client()
        .get(server.url("/_rookery/stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Sends an upgrade request and resets the connection at once, before any answer.
async fn aborted_upgrade(addr: std::net::SocketAddr, user: usize) {
    let mut tcp = TcpStream::connect(addr).await.expect("connects");
    let request = format!(
        "GET /ws/waddle/storm?user=ghost{user} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n"
    );
    tcp.write_all(request.as_bytes()).await.expect("sends");
    // Linger 0: the close is a reset, as when a client process dies. (Deprecated because a
    // non-zero linger blocks on drop; zero never does.)
    #[allow(deprecated)]
    tcp.set_linger(Some(Duration::ZERO)).expect("linger");
    drop(tcp);
}

/// Completes an upgrade, reads the first message, then drops the connection without a close
/// frame.
async fn dropped_socket(addr: std::net::SocketAddr, user: usize) {
    let url = format!("ws://{addr}/ws/waddle/storm?user=dropped{user}");
    let (mut ws, _) = tokio::time::timeout(PATIENCE, tokio_tungstenite::connect_async(url))
        .await
        .expect("connects in time")
        .expect("upgrade accepted");
    let _ = tokio::time::timeout(PATIENCE, ws.next()).await;
    drop(ws);
}

async fn storm<F, Fut>(kind: F)
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let mut running = tokio::task::JoinSet::new();
    for i in 0..STORM {
        if running.len() >= AT_ONCE {
            running
                .join_next()
                .await
                .expect("a task")
                .expect("no panic");
        }
        running.spawn(kind(i));
    }
    while let Some(done) = running.join_next().await {
        done.expect("no panic");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_vanishing_clients_leaves_no_socket_and_no_memory() {
    let dir = tempfile::tempdir().unwrap();
    let server = ChildServer::start(dir.path(), &[]);
    let addr = server.addr;
    let pid = server.child.id();
    // Warm up, so that the baseline includes what serving sockets costs once (thread
    // stacks, allocator arenas, the object's database).
    storm(move |i| dropped_socket(addr, i % 20)).await;
    wait_until_no_sockets(&server).await;
    let baseline = rss_kib(pid);

    storm(move |i| aborted_upgrade(addr, i)).await;
    wait_until_no_sockets(&server).await;
    storm(move |i| dropped_socket(addr, i)).await;
    wait_until_no_sockets(&server).await;

    let presence: Value = client()
        .get(server.url("/ws/waddle/storm/presence"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let online: Vec<&Value> = presence["users"]
        .as_array()
        .expect("users")
        .iter()
        .filter(|u| u["status"] != "offline")
        .collect();
    assert!(online.is_empty(), "no ghost is online: {online:?}");

    let after = rss_kib(pid);
    eprintln!("server RSS: {baseline} KiB after the warm-up, {after} KiB after the storms");
    assert!(
        after <= baseline + 16 * 1024,
        "memory returns to its baseline: {baseline} KiB before, {after} KiB after the storm"
    );
    server.terminate();
}

async fn wait_until_no_sockets(server: &ChildServer) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let s = stats(server).await;
        if s["runtime"]["websockets"] == 0 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "sockets still registered: {}",
            s["runtime"]["websockets"]
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

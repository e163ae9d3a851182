//! Cluster mode across processes: three `rookery serve` nodes on loopback ports over one
//! PostgreSQL (started by the test itself unless `ROOKERY_TEST_POSTGRES` names one).

mod common;
#[path = "../../rookery-cluster/tests/common/postgres.rs"]
mod postgres;

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{ChildServer, PATIENCE, client, eventually, get_json};
use serde_json::Value;

/// The demo app.
const DEMO: &str = include_str!("../../../examples/demo.toml");
/// The key-value store, whose keys expire by alarm.
const KV: &str = include_str!("../../../examples/kv.toml");

/// `app` with a lease short enough for failover tests.
fn node_config(dir: &Path, url: &str, app: &str) -> std::path::PathBuf {
    let text = format!(
        "{app}\n[cluster]\ndatabase_url = \"{url}\"\nnode_id = \"set-by-flag\"\nadvertise = \"http://set-by-flag\"\nlease_ms = 2000\n"
    );
    let path = dir.join("rookery.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// A free loopback port (bound and released; the node binds it again at once).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Node `id` of the cluster on `url` running `app`, with its own data directory under `root`.
fn start_node(root: &Path, url: &str, app: &str, id: &str, port: u16) -> ChildServer {
    let data = root.join(id);
    std::fs::create_dir_all(&data).unwrap();
    let config = node_config(&data, url, app);
    let advertise = format!("http://127.0.0.1:{port}");
    ChildServer::start_at(
        &data.join("data"),
        &format!("127.0.0.1:{port}"),
        &[
            "--config",
            config.to_str().unwrap(),
            "--node-id",
            id,
            "--advertise",
            &advertise,
        ],
    )
}

/// Three nodes of the demo app, `n0` to `n2`.
async fn three_nodes(root: &Path) -> (String, Vec<ChildServer>) {
    three_nodes_of(root, DEMO).await
}

/// Three nodes of `app`.
async fn three_nodes_of(root: &Path, app: &str) -> (String, Vec<ChildServer>) {
    let url = postgres::fresh_database().await;
    let nodes = (0..3)
        .map(|i| start_node(root, &url, app, &format!("n{i}"), free_port()))
        .collect();
    (url, nodes)
}

/// `POST /counter/:name/increment` through `node`: the new value, or the status.
async fn increment(http: &reqwest::Client, node: &ChildServer, name: &str) -> Result<i64, String> {
    let resp = http
        .post(node.url(&format!("/counter/{name}/increment")))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status();
    if status != 200 {
        return Err(format!(
            "{status}: {}",
            resp.text().await.unwrap_or_default()
        ));
    }
    let body: Value = resp.json().await.map_err(|e| e.to_string())?;
    body["value"]
        .as_i64()
        .ok_or_else(|| format!("no value in {body}"))
}

async fn read(node: &ChildServer, name: &str) -> i64 {
    get_json(node.url(&format!("/counter/{name}"))).await["value"]
        .as_i64()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_serve_the_demo_through_any_node_in_one_order() {
    let root = tempfile::tempdir().unwrap();
    let (_url, nodes) = three_nodes(root.path()).await;
    let http = client();
    // Each counter is touched first through a different node, then through all of them in
    // turn: wherever it lives, every increment sees the one before it.
    for round in 0..9 {
        for k in 0..5 {
            let node = &nodes[(round + k) % 3];
            assert_eq!(
                increment(&http, node, &format!("c{k}")).await.unwrap(),
                round as i64 + 1,
                "counter c{k}, round {round}, through {}",
                node.addr
            );
        }
    }
    for node in &nodes {
        for k in 0..5 {
            assert_eq!(read(node, &format!("c{k}")).await, 9);
        }
        let ready = http.get(node.url("/readyz")).send().await.unwrap();
        assert_eq!(ready.status(), 200);
    }
    let cluster = get_json(nodes[0].url("/_rookery/cluster")).await;
    assert_eq!(cluster["self"], "n0");
    let listed = cluster["nodes"].as_array().unwrap();
    assert_eq!(listed.len(), 3, "{cluster}");
    assert!(listed.iter().all(|n| n["live"] == true), "{cluster}");
    let owned: i64 = listed.iter().map(|n| n["objects"].as_i64().unwrap()).sum();
    assert!(owned >= 5, "every counter has an owner: {cluster}");
    // Which ones: each node's page lists what it owns, and together they are every counter.
    let mut all = Vec::new();
    for n in listed {
        let page = get_json(nodes[1].url(&format!(
            "/_rookery/cluster/nodes/{}/objects",
            n["nodeId"].as_str().unwrap()
        )))
        .await;
        let objects = page["objects"].as_array().unwrap();
        assert_eq!(
            objects.len() as i64,
            n["objects"].as_i64().unwrap(),
            "{page}"
        );
        all.extend(
            objects
                .iter()
                .filter(|o| o.as_str().unwrap().starts_with("Counter/"))
                .cloned(),
        );
    }
    assert_eq!(all.len(), 5, "{all:?}");
    // The demo worker asks the client's rate limiter with a typed call: one limiter, wherever
    // the request lands, so the budget goes down by one per request across the nodes.
    for (i, node) in nodes.iter().enumerate() {
        let resp = http.get(node.url("/api/ping")).send().await.unwrap();
        assert_eq!(resp.status(), 200, "through {}", node.addr);
        let remaining = resp.headers()["x-ratelimit-remaining"]
            .to_str()
            .unwrap()
            .to_string();
        assert_eq!(remaining, (99 - i).to_string(), "through {}", node.addr);
    }
    // The chat room: Ann on n0, Bob on n2 (his socket relayed to wherever the room lives), the
    // history read through n1.
    let mut ann = socket(&nodes[0], "/room/lobby/websocket?name=Ann")
        .await
        .unwrap();
    next_of(&mut ann, "join").await;
    let mut bob = socket(&nodes[2], "/room/lobby/websocket?name=Bob")
        .await
        .unwrap();
    next_of(&mut bob, "join").await;
    say(
        &mut ann,
        serde_json::json!({"type": "message", "text": "hello"}),
    )
    .await;
    let heard = next_of(&mut bob, "message").await;
    assert_eq!(
        (&heard["name"], &heard["text"]),
        (&serde_json::json!("Ann"), &serde_json::json!("hello"))
    );
    let history = get_json(nodes[1].url("/room/lobby/history")).await;
    assert_eq!(history[0]["text"], "hello", "{history}");
    drop((ann, bob));
    // Nothing but nodes may use the forwarding path.
    let forged = http
        .post(nodes[1].url("/_rookery/forward/increment"))
        .header("x-rookery-forward-class", "Counter")
        .header("x-rookery-cluster-token", "guess")
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 403);
    for node in nodes {
        node.terminate();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_owner_under_load_loses_no_acknowledged_increment() {
    let root = tempfile::tempdir().unwrap();
    let (_url, mut nodes) = three_nodes(root.path()).await;
    let http = client();
    let names: Vec<String> = (0..4).map(|k| format!("busy{k}")).collect();
    // n0 owns them all.
    for name in &names {
        assert_eq!(increment(&http, &nodes[0], name).await.unwrap(), 1);
    }
    let survivors = nodes.split_off(1);
    let owner = nodes.pop().unwrap();
    // Writers through n1 and n2 (forwarded to n0 while it lives).
    let acked: HashMap<String, (i64, i64)> = names.iter().map(|n| (n.clone(), (1, 1))).collect();
    let acked = std::sync::Arc::new(std::sync::Mutex::new(acked));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let (http, name, acked, stop) = (http.clone(), name.clone(), acked.clone(), stop.clone());
        let urls: Vec<String> = survivors
            .iter()
            .map(|n| n.url(&format!("/counter/{name}/increment")))
            .collect();
        writers.push(tokio::spawn(async move {
            let mut turn = i;
            let mut gap_started: Option<Instant> = None;
            let mut longest_gap = Duration::ZERO;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                turn += 1;
                acked.lock().unwrap().get_mut(&name).unwrap().1 += 1;
                let ok = match http.post(&urls[turn % urls.len()]).send().await {
                    Ok(resp) if resp.status() == 200 => resp.json::<Value>().await.is_ok(),
                    _ => false,
                };
                if ok {
                    acked.lock().unwrap().get_mut(&name).unwrap().0 += 1;
                    if let Some(started) = gap_started.take() {
                        longest_gap = longest_gap.max(started.elapsed());
                    }
                } else {
                    gap_started.get_or_insert_with(Instant::now);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            longest_gap
        }));
    }
    // Some acknowledged increments through the owner, then it dies.
    eventually("the writers get through n0", || {
        let acked = acked.clone();
        async move { acked.lock().unwrap().values().all(|(ok, _)| *ok >= 20) }
    })
    .await;
    owner.kill9();
    let at_kill: HashMap<String, i64> = acked
        .lock()
        .unwrap()
        .iter()
        .map(|(n, (ok, _))| (n.clone(), *ok))
        .collect();
    // After the lease, n1 and n2 take the counters over and the writers go on.
    eventually("the survivors take the counters over", || {
        let (acked, at_kill) = (acked.clone(), at_kill.clone());
        async move {
            acked
                .lock()
                .unwrap()
                .iter()
                .all(|(n, (ok, _))| *ok >= at_kill[n] + 20)
        }
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for writer in writers {
        let gap = writer.await.unwrap();
        assert!(gap < PATIENCE, "a writer waited {gap:?}");
    }
    let acked = acked.lock().unwrap().clone();
    for name in &names {
        let (ok, tried) = acked[name];
        let value = read(&survivors[0], name).await;
        // Every acknowledged increment is there; an unanswered one may be too (it committed
        // and the answer was lost with the node), never more than were sent.
        assert!(
            value >= ok && value <= tried,
            "{name}: value {value}, acknowledged {ok}, sent {tried}"
        );
        assert_eq!(read(&survivors[1], name).await, value);
    }
    for node in survivors {
        node.terminate();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_owner_resumed_after_its_lease_never_writes_again() {
    let root = tempfile::tempdir().unwrap();
    let (_url, nodes) = three_nodes(root.path()).await;
    let http = client();
    for want in 1..=3 {
        assert_eq!(increment(&http, &nodes[0], "paused").await.unwrap(), want);
    }
    // A quiet socket on n0: it sends nothing, so only n0 itself can tell it to go.
    let mut watcher = socket(
        &nodes[0],
        "/channel/quiet/websocket?user=wat&name=wat&permissions=read",
    )
    .await
    .unwrap();
    next_of(&mut watcher, "initial_state").await;
    let pid = i32::try_from(nodes[0].child.id()).unwrap();
    // SAFETY: signalling our own child process.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    // n1 takes over once n0's lease runs out.
    let mut value = 0;
    let deadline = Instant::now() + PATIENCE;
    while value == 0 {
        match increment(&http, &nodes[1], "paused").await {
            Ok(v) => value = v,
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
        assert!(Instant::now() < deadline, "n1 never took over");
    }
    assert_eq!(value, 4, "n1 continues from n0's acknowledged increments");
    assert_eq!(increment(&http, &nodes[2], "paused").await.unwrap(), 5);
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);
    // n0 wakes with the object in memory at 3: it may refuse for a moment, but whatever it
    // answers comes from the owner, and no write of its own gets through.
    let mut expected = 5;
    let deadline = Instant::now() + PATIENCE;
    let mut through_n0 = 0;
    while through_n0 < 3 {
        match increment(&http, &nodes[0], "paused").await {
            Ok(v) => {
                expected += 1;
                assert_eq!(v, expected, "n0 answered from stale state");
                through_n0 += 1;
            }
            Err(e) => {
                assert!(e.starts_with("503"), "n0 refused with {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        assert!(Instant::now() < deadline, "n0 never forwarded to the owner");
    }
    for node in &nodes {
        assert_eq!(read(node, "paused").await, expected);
    }
    // Waking up without its lease, n0 closed its sockets with 1012: their objects may live
    // elsewhere now, and the clients reconnect to whoever owns them.
    let closed = loop {
        use futures_util::StreamExt;
        match tokio::time::timeout(PATIENCE, watcher.next())
            .await
            .expect("a close in time")
        {
            Some(Ok(tokio_tungstenite::tungstenite::Message::Close(frame))) => break frame,
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(closed.map(|f| u16::from(f.code)), Some(1012));
    for node in nodes {
        node.terminate();
    }
}

/// A WebSocket to `path` on `node`; `Err` holds the refusal (e.g. 503 while an object moves).
async fn socket(node: &ChildServer, path: &str) -> Result<common::ws::Ws, String> {
    let url = format!("ws://{}{}", node.addr, path);
    match tokio::time::timeout(PATIENCE, tokio_tungstenite::connect_async(url)).await {
        Ok(Ok((ws, _))) => Ok(ws),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no answer".into()),
    }
}

/// The next frame of `kind` on `ws`, skipping others.
async fn next_of(ws: &mut common::ws::Ws, kind: &str) -> Value {
    loop {
        let frame = common::ws::next_json(ws).await;
        if frame["type"] == kind {
            return frame;
        }
    }
}

async fn say(ws: &mut common::ws::Ws, frame: Value) {
    use futures_util::SinkExt;
    ws.send(tokio_tungstenite::tungstenite::Message::text(
        frame.to_string(),
    ))
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_client_reached_through_another_node_reconnects_after_the_owner_dies_and_replays()
{
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;

    let root = tempfile::tempdir().unwrap();
    // Objects with only hibernatable sockets leave memory after 300 ms.
    let app = DEMO.replacen("[server]\n", "[server]\nhibernation_idle_ms = 300\n", 1);
    let (_url, mut nodes) = three_nodes_of(root.path(), &app).await;
    let path = |user: &str| {
        format!("/channel/room/websocket?user={user}&name={user}&permissions=read,write")
    };
    // Ann talks to n0, which takes the channel.
    let mut ann = socket(&nodes[0], &path("ann")).await.unwrap();
    next_of(&mut ann, "initial_state").await;
    say(
        &mut ann,
        serde_json::json!({"type": "message", "content": "before"}),
    )
    .await;
    let before = next_of(&mut ann, "message").await;
    let before_id = before["message"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{before}"))
        .to_string();
    // Bob reaches the channel through n1, which relays his socket to n0.
    let mut bob = socket(&nodes[1], &path("bob")).await.unwrap();
    let initial = next_of(&mut bob, "initial_state").await;
    assert_eq!(initial["messages"][0]["content"], "before", "{initial}");
    // Hibernation works as on one node: the channel leaves n0's memory with both sockets
    // open (one of them relayed through n1), and a message wakes it and reaches both.
    eventually("the channel hibernates on its owner", || {
        let url = nodes[0].url("/_rookery/stats");
        async move { get_json(url).await["runtime"]["live_objects"] == 0 }
    })
    .await;
    say(
        &mut ann,
        serde_json::json!({"type": "message", "content": "second"}),
    )
    .await;
    assert_eq!(
        next_of(&mut bob, "message").await["message"]["content"],
        "second"
    );
    // The owner dies: Bob is told to reconnect (1012), not left hanging.
    let owner = nodes.remove(0);
    owner.kill9();
    let closed = loop {
        match tokio::time::timeout(PATIENCE, bob.next())
            .await
            .expect("a close in time")
        {
            Some(Ok(Message::Close(frame))) => break frame,
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(closed.map(|f| u16::from(f.code)), Some(1012));
    // He reconnects through the same node (refused while the lease runs out), and the channel,
    // now on a surviving node, still has everything; a sync after the first message replays
    // the second.
    let deadline = Instant::now() + PATIENCE;
    let mut bob = loop {
        match socket(&nodes[0], &path("bob")).await {
            Ok(ws) => break ws,
            Err(e) => assert!(e.contains("503"), "refused with {e}"),
        }
        assert!(Instant::now() < deadline, "Bob never got back in");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let initial = next_of(&mut bob, "initial_state").await;
    let contents: Vec<&str> = initial["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert_eq!(contents, vec!["before", "second"], "{initial}");
    say(
        &mut bob,
        serde_json::json!({"type": "sync", "afterMessageId": before_id}),
    )
    .await;
    // Replayed as `message` frames, then the `sync` that closes the replay.
    let mut replayed = Vec::new();
    let sync = loop {
        let frame = common::ws::next_json(&mut bob).await;
        match frame["type"].as_str() {
            Some("message") => replayed.push(frame["message"]["content"].clone()),
            Some("sync") => break frame,
            _ => {}
        }
    };
    if let Some(messages) = sync["messages"].as_array() {
        replayed.extend(messages.iter().map(|m| m["content"].clone()));
    }
    assert_eq!(replayed, vec![serde_json::json!("second")], "{sync}");
    for node in nodes {
        node.terminate();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alarm_due_on_a_killed_node_fires_on_another() {
    let root = tempfile::tempdir().unwrap();
    let (url, mut nodes) = three_nodes_of(root.path(), KV).await;
    let pg = postgres::connect(&url).await;
    let http = client();
    // A key that expires in 3 s, on n0; its object's alarm is in the cluster's table.
    let put = http
        .put(nodes[0].url("/kv/shelf/milk?ttl_ms=3000"))
        .json(&serde_json::json!("fresh"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        put.status(),
        200,
        "{}",
        put.text().await.unwrap_or_default()
    );
    assert_eq!(alarm_rows(&pg).await, 1);
    nodes.remove(0).kill9();
    // Nobody asks for the object: another node's sweep wakes it when the alarm is due (and
    // n0's lease is over), its handler deletes the key and the alarm with it.
    let deadline = Instant::now() + PATIENCE;
    while alarm_rows(&pg).await != 0 {
        assert!(Instant::now() < deadline, "the alarm never fired elsewhere");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let owner: String = pg
        .query_one("SELECT node_id FROM rookery_objects", &[])
        .await
        .unwrap()
        .get(0);
    assert!(owner == "n1" || owner == "n2", "owned by {owner}");
    let gone = http
        .get(nodes[0].url("/kv/shelf/milk"))
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), 404);
    for node in nodes {
        node.terminate();
    }
}

async fn alarm_rows(pg: &tokio_postgres::Client) -> i64 {
    pg.query_one("SELECT count(*) FROM rookery_alarms", &[])
        .await
        .unwrap()
        .get(0)
}

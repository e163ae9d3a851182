//! Shared test support: servers on ephemeral ports (in-process or as a child process) and a
//! probe object class whose handlers misbehave on request.

#![allow(dead_code, unused_imports)]

pub mod crash;
pub mod ws;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, OnceLock};
use std::time::Duration;

use rookery::prelude::*;
pub use rookery::testing::wait_until;
use rookery::{Classes, Runtime};
use rookery_server::{Config, Server};
use serde_json::{Value, json};
use tokio::sync::{Semaphore, oneshot};

/// How long any condition in a test may take before the test fails.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// A server running inside the test process.
pub struct TestServer {
    pub addr: SocketAddr,
    pub runtime: Runtime,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestServer {
    /// Starts `config_text` (with its data_dir replaced by `data_dir`) and the probe class.
    pub async fn start(config_text: &str, data_dir: &Path) -> Self {
        let mut config = Config::parse("test.toml", config_text).expect("valid test config");
        config.server.data_dir = data_dir.to_path_buf();
        let classes = rookery_objects::builtin_classes()
            .with::<Probe>("Probe")
            .with::<Echo>("Echo");
        Self::start_with(&config, classes).await
    }

    /// Starts `config` with `classes`.
    pub async fn start_with(config: &Config, classes: Classes) -> Self {
        let server = Server::new(config, classes).expect("server starts");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(server, listener)
    }

    /// Starts `config` with `classes` as node `node_id` of the cluster on `database_url`.
    pub async fn start_clustered(
        config: &Config,
        classes: Classes,
        database_url: &str,
        node_id: &str,
    ) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cluster = rookery_cluster::Cluster::connect(rookery_cluster::ClusterConfig {
            database_url: database_url.to_string(),
            node_id: node_id.to_string(),
            advertise: format!("http://{addr}"),
            lease: Duration::from_secs(2),
            shards: Vec::new(),
        })
        .await
        .expect("joins the cluster");
        let server = Server::in_cluster(config, classes, std::sync::Arc::new(cluster))
            .expect("server starts");
        Self::serve(server, listener)
    }

    fn serve(server: Server, listener: tokio::net::TcpListener) -> Self {
        let runtime = server.runtime().clone();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            server
                .serve(listener, async {
                    let _ = stopped.await;
                })
                .await
                .expect("server runs");
        });
        Self {
            addr,
            runtime,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Shuts the server down gracefully and waits until its storage is closed.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(PATIENCE, task)
                .await
                .expect("server stops in time")
                .expect("server task");
        }
    }
}

/// The `rookery` binary running as a child process; killed if the test ends without stopping
/// it (a failed assertion), so that no server outlives its test.
pub struct ChildServer {
    pub child: Child,
    pub addr: SocketAddr,
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl ChildServer {
    /// Starts `rookery serve` on an ephemeral port with `data_dir` and `extra` arguments.
    pub fn start(data_dir: &Path, extra: &[&str]) -> Self {
        Self::start_at(data_dir, "127.0.0.1:0", extra)
    }

    /// Starts `rookery serve` on `listen` (e.g. the address of a server that was killed).
    pub fn start_at(data_dir: &Path, listen: &str, extra: &[&str]) -> Self {
        Self::start_with_env(data_dir, listen, extra, &[])
    }

    /// Starts `rookery serve` on `listen` with environment variables `env` (`RUST_LOG` is
    /// `warn` unless given).
    pub fn start_with_env(
        data_dir: &Path,
        listen: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_rookery"))
            .args(["serve", "--listen", listen, "--data-dir"])
            .arg(data_dir)
            .args(extra)
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("rookery starts");
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = line.strip_prefix("rookery listening on http://") {
                    let _ = tx.send(addr.parse::<SocketAddr>().expect("address"));
                }
            }
        });
        let addr = rx
            .recv_timeout(PATIENCE)
            .expect("the server announces its address");
        Self { child, addr }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Kills the process with SIGKILL and reaps it.
    pub fn kill9(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reaped");
    }

    /// Stops the process with SIGTERM and waits for a clean exit.
    pub fn terminate(mut self) {
        let pid = i32::try_from(self.child.id()).expect("pid");
        // SAFETY: sending a signal to our own child process.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        let deadline = std::time::Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                assert!(status.success(), "clean exit after SIGTERM: {status}");
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "server did not stop in time"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// `GET url`, answered with JSON (panics otherwise).
pub async fn get_json(url: String) -> Value {
    client()
        .get(&url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
        .json()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: not JSON: {e}"))
}

pub fn client() -> reqwest::Client {
    // reqwest has rustls without a provider here (the server's outbound client brings ring).
    rookery_server::outbound::install_crypto_provider();
    reqwest::Client::builder()
        .timeout(PATIENCE)
        .build()
        .unwrap()
}

/// A configuration with the demo's classes plus the probe class under `PROBE`.
pub const PROBE_CONFIG: &str = r#"
[server]
mailbox_capacity = 4

[durable_objects]
bindings = [
  { name = "PROBE", class_name = "Probe" },
  { name = "COUNTER", class_name = "Counter" },
  { name = "ECHO", class_name = "Echo" },
  { name = "CHAT_ROOM", class_name = "ChatRoom" },
]

[[migrations]]
tag = "v1"
new_sqlite_classes = ["Probe", "Counter", "Echo", "ChatRoom"]

[[routes]]
path = "/echo/:name"
binding = "ECHO"
name_from = "name"

[[routes]]
path = "/room/:room"
binding = "CHAT_ROOM"
name_from = "room"

[[routes]]
path = "/probe/:name"
binding = "PROBE"
name_from = "name"

[[routes]]
path = "/probe-id/:id"
binding = "PROBE"
id_from = "id"

[[routes]]
path = "/counter/:name"
binding = "COUNTER"
name_from = "name"
"#;

/// Per-object-name gates that `/wait` blocks on, and counts of turns that reached them.
static GATES: LazyLock<Mutex<HashMap<String, Gate>>> = LazyLock::new(Default::default);

/// A probe's gate: permits to pass `/wait`, and how many turns reached it.
pub type Gate = (Arc<Semaphore>, Arc<AtomicU64>);

/// The gate and entry counter of the probe called `name`.
pub fn gate(name: &str) -> Gate {
    GATES
        .lock()
        .unwrap()
        .entry(name.to_string())
        .or_insert_with(|| (Arc::new(Semaphore::new(0)), Arc::new(AtomicU64::new(0))))
        .clone()
}

/// Counts instances ever built, so tests can see an instance being replaced.
static INSTANCES: AtomicU64 = AtomicU64::new(0);

/// Per probe name: instances alive now, and the most ever alive at once.
static LIVE: LazyLock<Mutex<HashMap<String, (u64, u64)>>> = LazyLock::new(Default::default);

/// The instances of the probe called `name` alive now, and the most ever alive at once.
pub fn live_instances(name: &str) -> (u64, u64) {
    LIVE.lock().unwrap().get(name).copied().unwrap_or((0, 0))
}

/// A test object that stores, fails, panics, waits and calls other objects on request.
pub struct Probe {
    state: ObjectState,
    env: Env,
    instance: u64,
    /// The key of this instance in [`LIVE`].
    name: String,
}

impl Drop for Probe {
    fn drop(&mut self) {
        if let Some(live) = LIVE.lock().unwrap().get_mut(&self.name) {
            live.0 -= 1;
        }
    }
}

impl DurableObject for Probe {
    fn new(state: ObjectState, env: Env) -> Self {
        let name = state
            .id()
            .name()
            .map_or_else(|| state.id().to_hex(), str::to_string);
        {
            let mut live = LIVE.lock().unwrap();
            let entry = live.entry(name.clone()).or_default();
            entry.0 += 1;
            entry.1 = entry.1.max(entry.0);
        }
        Self {
            state,
            env,
            instance: INSTANCES.fetch_add(1, Ordering::Relaxed),
            name,
        }
    }

    async fn fetch(&mut self, req: Request) -> Result<Response> {
        let storage = self.state.storage();
        let key = req.query_raw("key").unwrap_or("k").to_string();
        match req.path() {
            "/get" => Response::json(&json!({ "value": storage.get::<Value>(&key)? })),
            "/put" => {
                storage.put(&key, &req.query_raw("value").unwrap_or(""))?;
                Response::json(&json!({ "ok": true }))
            }
            "/delete" => Response::json(&json!({ "deleted": storage.delete(&key)? })),
            "/incr" => {
                let n = storage.get::<i64>(&key)?.unwrap_or(0) + 1;
                storage.put(&key, &n)?;
                Response::json(&json!({ "value": n }))
            }
            "/delete-all" => {
                storage.delete_all()?;
                Response::json(&json!({ "ok": true }))
            }
            "/put-then-fail" => {
                storage.put(&key, &req.query_raw("value").unwrap_or(""))?;
                Err(Error::msg("deliberate failure after a write"))
            }
            "/put-then-panic" => {
                storage.put(&key, &req.query_raw("value").unwrap_or(""))?;
                panic!("deliberate panic after a write");
            }
            "/put-then-hang" => {
                storage.put(&key, &req.query_raw("value").unwrap_or(""))?;
                std::future::pending::<()>().await;
                unreachable!("a pending future never completes")
            }
            "/runaway" => {
                // Never ends by itself: only the turn time limit stops it.
                let sql = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c";
                storage.sql().exec(sql, &[])?;
                Response::json(&json!({ "finished": true }))
            }
            "/json" => {
                let body: Value = req.json()?;
                Response::json(&json!({ "echo": body }))
            }
            "/instance" => Response::json(&json!({ "instance": self.instance })),
            "/sql" => {
                // Runs the body as SQL: bad SQL fails with SQLite's own message.
                let sql = std::str::from_utf8(req.body()).map_err(Error::bad_request)?;
                storage.sql().exec(sql, &[])?;
                Response::json(&json!({ "ok": true }))
            }
            "/internal" => Err(Error::internal(
                "cannot open /var/lib/rookery-secret/objects/probe.sqlite",
                std::io::Error::other("disk on fire"),
            )),
            "/wait" => {
                let name = self.state.id().name().unwrap_or("").to_string();
                let (sem, entered) = gate(&name);
                entered.fetch_add(1, Ordering::SeqCst);
                sem.acquire().await.map_err(Error::msg)?.forget();
                Response::json(&json!({ "waited": true }))
            }
            "/call" => {
                // Calls the probe named `target`, asking it to call `then` (if given).
                let target = req.query_raw("target").unwrap_or("");
                let uri = match req.query_raw("then") {
                    Some(then) => format!("/call?target={then}"),
                    None => "/get".to_string(),
                };
                let resp = self
                    .env
                    .namespace("PROBE")?
                    .get_by_name(target)
                    .fetch(Request::post(&uri)?)
                    .await?;
                Ok(resp)
            }
            "/whoami" => Response::json(&json!({
                "id": self.state.id().to_hex(),
                "name": self.state.id().name(),
            })),
            _ => Ok(Response::not_found()),
        }
    }
}

/// A WebSocket test object: hibernatable sockets tagged from the query, attachments, an
/// auto-response, and commands sent as text.
pub struct Echo {
    state: ObjectState,
}

impl DurableObject for Echo {
    fn new(state: ObjectState, _env: Env) -> Self {
        state.set_websocket_auto_response(Some(("ping", "pong")));
        Self { state }
    }

    async fn fetch(&mut self, req: Request) -> Result<Response> {
        if !req.is_websocket_upgrade() {
            return Ok(Response::text("Expected WebSocket").with_status(StatusCode::BAD_REQUEST));
        }
        let tag = req.query::<String>("tag")?.unwrap_or_else(|| "none".into());
        let ws = if req.query_raw("plain").is_some() {
            self.state.accept_websocket_plain(&req)?
        } else {
            self.state.accept_websocket(&req, &[&tag])?
        };
        ws.serialize_attachment(
            &json!({ "who": req.query::<String>("who")?.unwrap_or_default() }),
        )?;
        Ok(Response::websocket(&ws))
    }

    async fn websocket_message(&mut self, ws: WebSocket, message: WsMessage) -> Result<()> {
        let text = message.as_text().unwrap_or("").to_string();
        let storage = self.state.storage();
        let n = storage.get::<i64>("messages")?.unwrap_or(0) + 1;
        storage.put("messages", &n)?;
        if let Some(rest) = text.strip_prefix("flood ") {
            // "flood N SIZE": N messages of SIZE bytes to the sender.
            let mut parts = rest.split(' ').filter_map(|p| p.parse::<usize>().ok());
            let (count, size) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
            let payload = WsMessage::text("x".repeat(size));
            for _ in 0..count {
                ws.send(payload.clone());
            }
            return Ok(());
        }
        if text == "whoami" {
            let who: Option<Value> = ws.deserialize_attachment()?;
            return ws.send_json(
                &json!({ "attachment": who, "tags": self.state.get_tags(&ws), "count": n }),
            );
        }
        if text == "fail" {
            ws.send("never sent: the turn fails");
            return Err(Error::msg("deliberate failure in a socket handler"));
        }
        if text == "panic" {
            ws.send("never sent: the turn panics");
            panic!("deliberate panic in a socket handler");
        }
        if let Some(rest) = text.strip_prefix("send ") {
            // "send TAG SIZE": one message of SIZE bytes to the sockets tagged TAG.
            let (tag, size) = rest.split_once(' ').unwrap_or((rest, "0"));
            let payload = WsMessage::text("x".repeat(size.parse().unwrap_or(0)));
            for socket in self.state.get_websockets(Some(tag)) {
                socket.send(payload.clone());
            }
            return Ok(());
        }
        if let Some(tag) = text.strip_prefix("status ") {
            // Whether each socket tagged TAG still takes messages.
            let open: Vec<bool> = self
                .state
                .get_websockets(Some(tag))
                .iter()
                .map(WebSocket::is_open)
                .collect();
            return ws.send_json(&json!({ "open": open }));
        }
        if text == "wait" {
            // Holds the object until the test opens the gate named `echo-NAME`.
            let name = format!("echo-{}", self.state.id().name().unwrap_or(""));
            let (sem, entered) = gate(&name);
            entered.fetch_add(1, Ordering::SeqCst);
            sem.acquire().await.map_err(Error::msg)?.forget();
            return Ok(());
        }
        self.state
            .broadcast(&WsMessage::text(format!("echo:{text}")), None, None);
        Ok(())
    }

    async fn websocket_close(
        &mut self,
        ws: WebSocket,
        code: u16,
        reason: String,
        was_clean: bool,
    ) -> Result<()> {
        let storage = self.state.storage();
        storage.put(
            &format!("closed:{}", ws.id()),
            &json!({ "code": code, "reason": reason, "clean": was_clean }),
        )?;
        self.state.broadcast(
            &WsMessage::json(&json!({ "closed": ws.id(), "code": code, "clean": was_clean }))?,
            None,
            None,
        );
        Ok(())
    }
}

/// Everything logged at WARN and above by every server of this test binary.
pub fn captured_logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = logs.clone();
        let _ = tracing_subscriber::fmt()
            .with_max_level(tracing_subscriber::filter::LevelFilter::WARN)
            .with_ansi(false)
            .with_writer(move || LogWriter(sink.clone()))
            .try_init();
        logs
    })
    .clone()
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Polls `check` (an HTTP exchange) until it returns true, within the test's patience.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

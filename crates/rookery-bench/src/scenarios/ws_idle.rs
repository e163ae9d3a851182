//! `ws-idle`: hold M chat connections open over R rooms and measure what they cost the server in
//! resident memory.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

use super::ws_client::{WsSink, WsStream, connect_all, within};
use super::{Outcome, Verdict, unique_prefix};
use crate::http::Target;
use crate::sys::{cap_clients, check_pid, rss_kib, socket_capacity};

/// How long the server's memory may take to stop changing after the last connection opened.
const SETTLE_LIMIT: Duration = Duration::from_secs(30);
/// Time between two memory readings while settling.
const SETTLE_POLL: Duration = Duration::from_millis(250);
/// Consecutive unchanged readings that count as settled (one second's worth).
const SETTLE_READINGS: u32 = 4;
/// How long the pongs may take to come back.
const PONG_TIMEOUT: Duration = Duration::from_secs(30);

/// Settings of `ws-idle`.
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct WsIdleArgs {
    /// WebSocket connections to hold open.
    #[arg(long, default_value_t = 10_000)]
    pub clients: u64,
    /// Rooms to spread them over (client i joins room i % rooms).
    #[arg(long, default_value_t = 100)]
    pub rooms: u64,
    /// Server process id, to read its memory from /proc (without it, no memory figures).
    #[arg(long)]
    #[serde(skip)]
    pub pid: Option<u32>,
}

/// Counters the idle readers share.
#[derive(Default)]
struct Shared {
    pongs: AtomicU64,
    lost: AtomicU64,
    first_lost: Mutex<Option<String>>,
}

/// Drains one idle connection (history and joins), counting pongs and an early end.
async fn reader(mut stream: WsStream, shared: Arc<Shared>) {
    loop {
        match stream.next().await {
            Some(Ok(Message::Pong(_))) => {
                shared.pongs.fetch_add(1, Ordering::AcqRel);
            }
            Some(Ok(Message::Close(_))) | None => {
                lost(&shared, "closed by the server".into());
                return;
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                lost(&shared, e.to_string());
                return;
            }
        }
    }
}

fn lost(shared: &Shared, why: String) {
    shared.lost.fetch_add(1, Ordering::AcqRel);
    if let Ok(mut first) = shared.first_lost.lock() {
        first.get_or_insert(why);
    }
}

/// Decides when a series of memory readings has stopped changing.
#[derive(Debug, Default)]
pub struct Settler {
    last: Option<u64>,
    unchanged: u32,
}

impl Settler {
    /// Takes a reading in KiB; true once [`SETTLE_READINGS`] consecutive readings stayed within
    /// 0.2 % (at least 256 KiB) of the one before: allocator noise is not growth.
    pub fn observe(&mut self, kib: u64) -> bool {
        if let Some(last) = self.last {
            let tolerance = (kib / 500).max(256);
            if kib.abs_diff(last) <= tolerance {
                self.unchanged += 1;
            } else {
                self.unchanged = 0;
            }
        }
        self.last = Some(kib);
        self.unchanged >= SETTLE_READINGS
    }
}

/// Polls the server's RSS until it settles or [`SETTLE_LIMIT`] passes: (KiB, settled, time).
pub(crate) async fn settle(pid: u32) -> anyhow::Result<(u64, bool, Duration)> {
    let start = Instant::now();
    let mut settler = Settler::default();
    loop {
        let kib = rss_kib(pid)?;
        if settler.observe(kib) {
            return Ok((kib, true, start.elapsed()));
        }
        if start.elapsed() >= SETTLE_LIMIT {
            return Ok((kib, false, start.elapsed()));
        }
        tokio::time::sleep(SETTLE_POLL).await;
    }
}

/// Runs `ws-idle`.
pub async fn ws_idle(target: &Target, args: &WsIdleArgs) -> Outcome {
    let mut outcome = Outcome::new("ws-idle", args);
    let prefix = unique_prefix("idle");
    outcome
        .settings
        .insert("prefix".into(), prefix.clone().into());
    match ws_idle_inner(target, args, &prefix, &mut outcome).await {
        Ok(verdict) => outcome.verdict(verdict),
        Err(e) => outcome.failed(format!("{e:#}")),
    }
}

async fn ws_idle_inner(
    target: &Target,
    args: &WsIdleArgs,
    prefix: &str,
    outcome: &mut Outcome,
) -> anyhow::Result<Verdict> {
    anyhow::ensure!(args.rooms > 0, "--rooms must be at least 1");
    if let Some(pid) = args.pid {
        check_pid(pid)?;
    }
    let (clients, cap_note) = cap_clients(args.clients, socket_capacity()?);
    let before = args.pid.map(rss_kib).transpose()?;

    let shared = Arc::new(Shared::default());
    let mut sinks: Vec<WsSink> = Vec::with_capacity(usize::try_from(clients).unwrap_or(0));
    let mut readers: Vec<JoinHandle<()>> = Vec::with_capacity(sinks.capacity());
    let started = Instant::now();
    let connected = connect_all(
        target,
        clients,
        |i| format!("/room/{prefix}-{}/websocket?name=c{i}", i % args.rooms),
        |_, ws| {
            let (sink, stream) = ws.split();
            sinks.push(sink);
            readers.push(tokio::spawn(reader(stream, Arc::clone(&shared))));
        },
    )
    .await;
    outcome
        .figure("clients", clients)
        .figure("connected", sinks.len())
        .figure("connect_ms", started.elapsed().as_millis() as u64);
    let connect_error = connected.err().map(|e| format!("{e:#}"));

    if connect_error.is_none() {
        match (args.pid, before) {
            (Some(pid), Some(before)) => {
                let (after, settled, took) = settle(pid).await?;
                let per_socket = if sinks.is_empty() {
                    0.0
                } else {
                    ((after as f64 - before as f64) / sinks.len() as f64 * 10.0).round() / 10.0
                };
                outcome
                    .figure("rss_before_kib", before)
                    .figure("rss_after_kib", after)
                    .figure("kib_per_socket", per_socket)
                    .figure("rss_settled", settled)
                    .figure("settle_ms", took.as_millis() as u64);
            }
            // Without a pid there is nothing to wait for but the joins; give them a moment so
            // the pings below do not queue behind them.
            _ => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    }

    // Still open? Every connection must answer a ping.
    let mut ping_failures = 0u64;
    for sink in &mut sinks {
        let sent = within(
            PONG_TIMEOUT,
            "sending a ping",
            sink.send(Message::Ping(Bytes::from_static(b"rookery-bench"))),
        )
        .await;
        if !matches!(sent, Ok(Ok(()))) {
            ping_failures += 1;
        }
    }
    let expected = sinks.len() as u64;
    let deadline = Instant::now() + PONG_TIMEOUT;
    while shared.pongs.load(Ordering::Acquire) + shared.lost.load(Ordering::Acquire) < expected
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pongs = shared.pongs.load(Ordering::Acquire);
    let lost = shared.lost.load(Ordering::Acquire);
    outcome.figure("pongs", pongs);
    for r in &readers {
        r.abort();
    }
    drop(sinks);

    let first_lost = shared.first_lost.lock().ok().and_then(|f| f.clone());
    let mut verdict = idle_verdict(
        clients,
        expected,
        pongs,
        lost + ping_failures,
        connect_error,
        first_lost,
    );
    if let Some(note) = cap_note {
        verdict.detail = format!("{}; {note}", verdict.detail);
    }
    Ok(verdict)
}

/// `ws-idle` passes when all `clients` connected and every one still answered a ping at the end.
pub fn idle_verdict(
    clients: u64,
    connected: u64,
    pongs: u64,
    lost: u64,
    connect_error: Option<String>,
    first_lost: Option<String>,
) -> Verdict {
    let mut problems: Vec<String> = connect_error.into_iter().collect();
    if connected < clients && problems.is_empty() {
        problems.push(format!("only {connected} of {clients} connected"));
    }
    if lost > 0 {
        problems.push(format!(
            "{lost} connections ended early (first: {})",
            first_lost.as_deref().unwrap_or("ping not sent")
        ));
    }
    if pongs < connected {
        problems.push(format!(
            "{pongs} of {connected} connections answered a ping within {} s",
            PONG_TIMEOUT.as_secs()
        ));
    }
    Verdict::from_problems(
        problems,
        format!("all {clients} connections opened and still answered a ping at the end"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settles_after_steady_readings() {
        let mut s = Settler::default();
        assert!(!s.observe(100_000));
        assert!(!s.observe(150_000)); // still growing
        assert!(!s.observe(150_100));
        assert!(!s.observe(150_000));
        assert!(!s.observe(150_200));
        assert!(s.observe(150_100));
    }

    #[test]
    fn growth_resets_settling() {
        let mut s = Settler::default();
        for _ in 0..4 {
            s.observe(10_000);
        }
        assert!(!s.observe(20_000));
        assert!(!s.observe(20_000));
    }

    #[test]
    fn idle_verdicts() {
        assert!(idle_verdict(10, 10, 10, 0, None, None).ok);
        let v = idle_verdict(10, 10, 9, 1, None, Some("reset".into()));
        assert!(!v.ok);
        assert!(
            v.detail
                .contains("1 connections ended early (first: reset)"),
            "{}",
            v.detail
        );
        assert!(
            v.detail.contains("9 of 10 connections answered"),
            "{}",
            v.detail
        );
        let refused = idle_verdict(10, 0, 0, 0, Some("HTTP 400".into()), None);
        assert!(!refused.ok);
        assert_eq!(refused.detail, "HTTP 400");
    }

    #[tokio::test]
    async fn end_to_end_against_a_mock_server() {
        let target = super::super::mock_chat::start(super::super::mock_chat::Fault::None).await;
        // The mock runs in this process, so its memory is ours.
        let args = WsIdleArgs {
            clients: 30,
            rooms: 3,
            pid: Some(std::process::id()),
        };
        let o = ws_idle(&target, &args).await;
        assert!(o.ok, "{}", o.detail);
        assert_eq!(o.figures["connected"], 30);
        assert_eq!(o.figures["pongs"], 30);
        assert!(o.figures["rss_after_kib"].as_u64().unwrap() > 0);
    }
}

//! `ws-fanout`: M chat clients in one room, one of them sends R messages one at a time, and
//! each message's latency is the time until the last of the M clients has it. The room is a
//! ChatRoom, or with `--channel-shards N` a Waddle Channel split over N shards (1: unsharded).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

use super::ws_client::{
    Event, READY_TEXT, SeqChecker, WsSink, WsStream, bench_text, channel_frame, chat_frame,
    classify, connect_all, within,
};
use super::{Outcome, Verdict, unique_prefix};
use crate::http::Target;
use crate::stats::{Samples, per_second};
use crate::sys::{cap_clients, socket_capacity};

/// How long every client may take to drain the join notices and receive the barrier message;
/// joins grow with the square of the clients (each join goes to everyone already there).
const READY_TIMEOUT: Duration = Duration::from_secs(180);
/// How long one message may take to reach every client.
const MESSAGE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the readers may take to hand in their logs once told to stop.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Settings of `ws-fanout`.
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct WsFanoutArgs {
    /// WebSocket clients in the room.
    #[arg(long, default_value_t = 1_000)]
    pub clients: u64,
    /// Messages sent, one at a time.
    #[arg(long, default_value_t = 100)]
    pub messages: u32,
    /// Room name (default: a fresh random one).
    #[arg(long)]
    pub room: Option<String>,
    /// Use a Waddle Channel (`/ws/channel/:room`, identities from the query as in the demo)
    /// instead of a ChatRoom, sharded this many ways (`PUT /channel/:room/shards`) when over 1.
    #[arg(long)]
    pub channel_shards: Option<u32>,
}

/// What one client saw.
#[derive(Debug, Default, Clone)]
pub struct ClientLog {
    /// Which client (the `cI` of its name).
    pub client: u64,
    /// Order of the `bench-<i>` messages.
    pub seq: SeqChecker,
    /// Join notices received.
    pub joins: u64,
    /// Frames that were not the protocol's JSON.
    pub unparsed: u64,
    /// Why the connection ended before the run did, if it did.
    pub lost: Option<String>,
}

/// A milestone a reader reports to the sender.
enum Reached {
    /// Every client has the barrier message; the instant the last one got it.
    Ready(Instant),
    /// Every client has `bench-<i>`; the instant the last one got it.
    Bench(u32, Instant),
    /// A client's connection ended early.
    Lost(u64, String),
}

/// State the readers share with the sender.
struct Shared {
    clients: u32,
    /// Per message, how many clients have it.
    arrivals: Vec<AtomicU32>,
    /// How many clients have the barrier message.
    ready: AtomicU32,
    events: mpsc::UnboundedSender<Reached>,
}

impl Shared {
    /// Counts one arrival; the client completing the set reports the instant, which is the
    /// latency's end (measured at the receiver, not when the sender gets around to noticing).
    fn arrive(&self, counter: &AtomicU32, reached: impl FnOnce(Instant) -> Reached) {
        if counter.fetch_add(1, Ordering::AcqRel) + 1 == self.clients {
            let _ = self.events.send(reached(Instant::now()));
        }
    }
}

/// Reads one client's frames until told to stop or the connection ends.
async fn reader(
    index: u64,
    mut stream: WsStream,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) -> ClientLog {
    let mut log = ClientLog {
        client: index,
        ..ClientLog::default()
    };
    let mut ready_seen = false;
    loop {
        let frame = tokio::select! {
            biased;
            _ = stop.changed() => break,
            frame = stream.next() => frame,
        };
        let text = match frame {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(_))) | None => {
                log.lost = Some("closed by the server".into());
                break;
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => {
                log.lost = Some(e.to_string());
                break;
            }
        };
        match classify(text.as_str()) {
            Event::Bench(i) => {
                log.seq.observe(i);
                if let Some(counter) = shared.arrivals.get(i as usize) {
                    shared.arrive(counter, |at| Reached::Bench(i, at));
                }
            }
            Event::Ready if !ready_seen => {
                ready_seen = true;
                shared.arrive(&shared.ready, Reached::Ready);
            }
            Event::Join => log.joins += 1,
            Event::Unparsed => log.unparsed += 1,
            Event::Ready | Event::Other => {}
        }
    }
    if let Some(why) = &log.lost {
        let _ = shared.events.send(Reached::Lost(index, why.clone()));
    }
    log
}

/// What the sender waits for.
#[derive(Clone, Copy)]
enum Want {
    Ready,
    Bench(u32),
}

/// Waits until the readers report `want`, failing on a lost client or after `limit`.
async fn wait_for(
    events: &mut mpsc::UnboundedReceiver<Reached>,
    shared: &Shared,
    want: Want,
    limit: Duration,
) -> Result<Instant, String> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Err(_) => {
                let (what, counter) = match want {
                    Want::Ready => (READY_TEXT.to_owned(), &shared.ready),
                    Want::Bench(i) => (bench_text(i), &shared.arrivals[i as usize]),
                };
                return Err(format!(
                    "{what} reached {} of {} clients within {} s",
                    counter.load(Ordering::Acquire),
                    shared.clients,
                    limit.as_secs()
                ));
            }
            Ok(None) => return Err("every reader stopped".into()),
            Ok(Some(Reached::Lost(client, why))) => {
                return Err(format!("client {client} lost its connection: {why}"));
            }
            Ok(Some(Reached::Ready(at))) if matches!(want, Want::Ready) => return Ok(at),
            Ok(Some(Reached::Bench(i, at))) if matches!(want, Want::Bench(w) if w == i) => {
                return Ok(at);
            }
            Ok(Some(_)) => {}
        }
    }
}

/// Timings of the measured phase.
struct Measured {
    ready: Duration,
    messages: Duration,
}

/// Sends the barrier, then the R messages one at a time, recording each one's latency.
async fn measure(
    sender: &mut WsSink,
    events: &mut mpsc::UnboundedReceiver<Reached>,
    shared: &Shared,
    messages: u32,
    samples: &mut Samples,
    frame: fn(&str) -> String,
) -> Result<Measured, String> {
    // The barrier: every client gets it after the joins broadcast before it, so once all have
    // it the join storm is over and the measured messages do not queue behind it.
    let sent = Instant::now();
    send_text(sender, &frame(READY_TEXT)).await?;
    let ready = wait_for(events, shared, Want::Ready, READY_TIMEOUT).await?;
    let ready = ready.saturating_duration_since(sent);
    let start = Instant::now();
    for i in 0..messages {
        let sent = Instant::now();
        send_text(sender, &frame(&bench_text(i))).await?;
        let at = wait_for(events, shared, Want::Bench(i), MESSAGE_TIMEOUT).await?;
        samples.record(at.saturating_duration_since(sent));
    }
    Ok(Measured {
        ready,
        messages: start.elapsed(),
    })
}

/// Sends the message `frame` from `sender`.
async fn send_text(sender: &mut WsSink, frame: &str) -> Result<(), String> {
    let what = format!("sending {frame}");
    within(
        MESSAGE_TIMEOUT,
        &what,
        sender.send(Message::text(frame.to_string())),
    )
    .await
    .map_err(|e| format!("{e:#}"))?
    .map_err(|e| format!("{what}: {e}"))
}

/// Runs `ws-fanout`.
pub async fn ws_fanout(target: &Target, args: &WsFanoutArgs) -> Outcome {
    let room = args.room.clone().unwrap_or_else(|| unique_prefix("room"));
    let mut settings = args.clone();
    settings.room = Some(room.clone());
    let mut outcome = Outcome::new("ws-fanout", &settings);
    let capacity = match socket_capacity() {
        Ok(c) => c,
        Err(e) => return outcome.failed(format!("{e:#}")),
    };
    let (clients, cap_note) = cap_clients(args.clients, capacity);
    let Ok(clients32) = u32::try_from(clients) else {
        return outcome.failed(format!("{clients} clients is more than this tool handles"));
    };
    if clients == 0 {
        return outcome.failed("no clients to run with");
    }

    let (events_tx, mut events) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        clients: clients32,
        arrivals: (0..args.messages).map(|_| AtomicU32::new(0)).collect(),
        ready: AtomicU32::new(0),
        events: events_tx,
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut sinks: Vec<Option<WsSink>> = (0..clients).map(|_| None).collect();
    let mut readers: Vec<JoinHandle<ClientLog>> = Vec::with_capacity(sinks.len());

    if let Some(shards) = args.channel_shards.filter(|n| *n > 1) {
        if let Err(e) = shard_channel(target, &room, shards).await {
            return outcome.failed(format!("sharding the channel: {e:#}"));
        }
    }
    let channel = args.channel_shards.is_some();
    let started = Instant::now();
    let connected = connect_all(
        target,
        clients,
        |i| {
            if channel {
                format!("/ws/channel/{room}?user=c{i}&permissions=read,write")
            } else {
                format!("/room/{room}/websocket?name=c{i}")
            }
        },
        |i, ws| {
            let (sink, stream) = ws.split();
            sinks[i as usize] = Some(sink);
            let reader = reader(i, stream, Arc::clone(&shared), stop_rx.clone());
            readers.push(tokio::spawn(reader));
        },
    )
    .await;
    outcome
        .figure("clients", clients)
        .figure("connected", readers.len())
        .figure("connect_ms", started.elapsed().as_millis() as u64);

    let mut samples = Samples::with_capacity(args.messages as usize);
    let phase = match connected {
        Err(e) => Err(format!("{e:#}")),
        Ok(()) => match sinks.first_mut().and_then(Option::as_mut) {
            Some(sender) => {
                let frame = if channel { channel_frame } else { chat_frame };
                measure(
                    sender,
                    &mut events,
                    &shared,
                    args.messages,
                    &mut samples,
                    frame,
                )
                .await
            }
            None => Err("client 0 has no connection".into()),
        },
    };

    let _ = stop_tx.send(true);
    let logs = collect_logs(readers).await;
    drop(sinks);
    if let Ok(m) = &phase {
        let deliveries = clients * u64::from(args.messages);
        outcome
            .figure("throughput", per_second(deliveries, m.messages))
            .figure("throughput_unit", "deliveries/s")
            .figure("ready_ms", m.ready.as_millis() as u64);
    }
    outcome.figure("latency", samples.summarize()).figure(
        "join_messages",
        logs.iter().flatten().map(|l| l.joins).sum::<u64>(),
    );
    let mut verdict = fanout_verdict(clients, args.messages, phase.err(), &logs);
    if let Some(note) = cap_note {
        verdict.detail = format!("{}; {note}", verdict.detail);
    }
    outcome.verdict(verdict)
}

/// Splits Waddle channel `room` over `shards` shards (as an `admin` of the demo's query
/// identities).
async fn shard_channel(target: &Target, room: &str, shards: u32) -> anyhow::Result<()> {
    let mut conn = crate::http::Conn::open(target).await?;
    let uri = crate::http::path_uri(format!(
        "/channel/{room}/shards?user=bench&permissions=admin"
    ))?;
    let body = serde_json::json!({ "count": shards }).to_string();
    let (status, answer) = conn.send_body(hyper::Method::PUT, uri, body.into()).await?;
    anyhow::ensure!(
        status.is_success(),
        "HTTP {status}: {}",
        String::from_utf8_lossy(&answer)
    );
    Ok(())
}

/// Waits for every reader's log; a reader that does not stop in time yields `None`.
async fn collect_logs(readers: Vec<JoinHandle<ClientLog>>) -> Vec<Option<ClientLog>> {
    let deadline = tokio::time::Instant::now() + STOP_TIMEOUT;
    let mut logs = Vec::with_capacity(readers.len());
    for handle in readers {
        let abort = handle.abort_handle();
        match tokio::time::timeout_at(deadline, handle).await {
            Ok(Ok(log)) => logs.push(Some(log)),
            Ok(Err(_)) => logs.push(None),
            Err(_) => {
                abort.abort();
                logs.push(None);
            }
        }
    }
    logs
}

/// `ws-fanout` passes when the run completed and each of the `clients` logs shows all
/// `messages` exactly once and in order, on a connection that stayed open, with nothing but
/// protocol JSON.
pub fn fanout_verdict(
    clients: u64,
    messages: u32,
    phase_error: Option<String>,
    logs: &[Option<ClientLog>],
) -> Verdict {
    let mut problems: Vec<String> = phase_error.into_iter().collect();
    let missing = clients.saturating_sub(logs.iter().flatten().count() as u64);
    if missing > 0 && problems.is_empty() {
        problems.push(format!("{missing} clients did not report"));
    }
    let mut incomplete = 0u64;
    let mut first_incomplete = None;
    let mut lost = 0u64;
    let mut unparsed = 0u64;
    for log in logs.iter().flatten() {
        let c = log.client;
        unparsed += log.unparsed;
        if log.lost.is_some() {
            lost += 1;
        }
        if log.seq.next != messages || log.seq.violations > 0 {
            incomplete += 1;
            first_incomplete.get_or_insert_with(|| match &log.seq.first_violation {
                Some(v) => format!("client {c}: {v}"),
                None => format!("client {c} got {} of {messages}", log.seq.next),
            });
        }
    }
    // After a phase error the per-client counts only repeat it; keep the detail readable.
    if incomplete > 0 && problems.is_empty() {
        problems.push(format!(
            "{incomplete} clients did not get every message exactly once in order (first: {})",
            first_incomplete.unwrap_or_default()
        ));
    }
    if lost > 0 {
        problems.push(format!("{lost} connections ended early"));
    }
    if unparsed > 0 {
        problems.push(format!("{unparsed} frames were not protocol JSON"));
    }
    Verdict::from_problems(
        problems,
        format!("all {clients} clients got all {messages} messages exactly once, in order"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(messages: u32) -> ClientLog {
        let mut log = ClientLog::default();
        for i in 0..messages {
            log.seq.observe(i);
        }
        log
    }

    #[test]
    fn passes_when_everyone_has_everything() {
        let logs = vec![Some(complete(3)), Some(complete(3))];
        let v = fanout_verdict(2, 3, None, &logs);
        assert!(v.ok, "{}", v.detail);
        assert!(v.detail.contains("all 2 clients got all 3 messages"));
    }

    #[test]
    fn fails_on_a_short_or_disordered_client() {
        let mut dup = complete(3);
        dup.seq.observe(2);
        let mut short = complete(2);
        short.client = 7;
        let logs = vec![Some(complete(3)), Some(short), Some(dup)];
        let v = fanout_verdict(3, 3, None, &logs);
        assert!(!v.ok);
        assert!(v.detail.contains("2 clients did not get"), "{}", v.detail);
        assert!(v.detail.contains("client 7 got 2 of 3"), "{}", v.detail);
    }

    #[tokio::test]
    async fn refused_upgrade_is_the_detail() {
        let target = super::super::mock_chat::start(super::super::mock_chat::Fault::Refuse).await;
        let args = WsFanoutArgs {
            clients: 10,
            messages: 5,
            room: Some("r".into()),
            channel_shards: None,
        };
        let o = ws_fanout(&target, &args).await;
        assert!(!o.ok);
        assert!(
            o.detail
                .contains("refused: HTTP 400 Bad Request \"Expected WebSocket\""),
            "{}",
            o.detail
        );
        assert!(o.detail.contains("(0 of 10 connected)"), "{}", o.detail);
        assert_eq!(o.figures["connected"], 0);
    }

    #[test]
    fn lost_connections_and_garbage_fail() {
        let mut lost = complete(2);
        lost.lost = Some("reset".into());
        let mut garbage = complete(2);
        garbage.unparsed = 3;
        let v = fanout_verdict(2, 2, None, &[Some(lost), Some(garbage)]);
        assert!(!v.ok);
        assert!(
            v.detail.contains("1 connections ended early"),
            "{}",
            v.detail
        );
        assert!(
            v.detail.contains("3 frames were not protocol JSON"),
            "{}",
            v.detail
        );
    }

    #[test]
    fn missing_reports_fail() {
        let v = fanout_verdict(2, 1, None, &[Some(complete(1)), None]);
        assert!(!v.ok);
        assert!(
            v.detail.contains("1 clients did not report"),
            "{}",
            v.detail
        );
    }

    #[tokio::test]
    async fn end_to_end_against_a_correct_server() {
        let target = super::super::mock_chat::start(super::super::mock_chat::Fault::None).await;
        let args = WsFanoutArgs {
            clients: 20,
            messages: 5,
            room: None,
            channel_shards: None,
        };
        let o = ws_fanout(&target, &args).await;
        assert!(o.ok, "{}", o.detail);
        assert_eq!(o.figures["connected"], 20);
        assert_eq!(o.figures["latency"]["count"], 5);
        // Each join goes to everyone already in the room: 20 + 19 + ... + 1.
        assert_eq!(o.figures["join_messages"], 210);
    }

    #[tokio::test]
    async fn end_to_end_catches_a_duplicate() {
        let target =
            super::super::mock_chat::start(super::super::mock_chat::Fault::DuplicateToFirst).await;
        let args = WsFanoutArgs {
            clients: 5,
            messages: 3,
            room: Some("dup".into()),
            channel_shards: None,
        };
        let o = ws_fanout(&target, &args).await;
        assert!(!o.ok);
        assert!(
            o.detail.contains("bench-1 again after bench-1"),
            "{}",
            o.detail
        );
    }
}

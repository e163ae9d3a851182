//! `events`: events.do's publish and webhook delivery (docs/EVENTS.md, the built-in
//! `Subscriptions` class). N subscriptions in one fresh namespace all match the published type;
//! E events are published over C keep-alive connections; a webhook receiver inside this
//! process (one URL path per subscription) acknowledges every delivery with a 200 and records
//! when each event arrived. Measured: events/s published, deliveries/s and events/s delivered,
//! and the latency from sending a publish request to the event's arrival at a subscriber.
//! Checked: every subscription got every acknowledged event, first arrivals in increasing
//! `sequence` order (repeats are allowed, as delivery is at least once, and counted).
//!
//! The server needs [`CONFIG`]: examples/events.toml itself, with loopback
//! receivers allowed. `rookery-bench run` starts it so; by hand, `rookery-bench events-config`
//! prints it.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::counter::Tally;
use super::{Outcome, Verdict, truncate, unique_prefix};
use crate::http::{Conn, Target, path_uri};
use crate::server_stats::{self, AlarmDelta, RuntimeDelta};
use crate::stats::{Samples, per_second};

/// examples/events.toml, as users run it.
const EXAMPLE: &str = include_str!("../../../../examples/events.toml");

/// What the bench changes in [`EXAMPLE`]: `[outbound] allow` for the receiver on 127.0.0.1;
/// retries after 10-200 ms rather than seconds, and no dead letter before 100 attempts, so a
/// failed attempt does not stall a run; `EVENTS_MAX_PENDING` at its largest, so publishing is
/// never refused while delivery lags behind; and no rate limit, since the bench is one tenant
/// publishing as fast as it can. Schema validation stays on the path (no schema is registered,
/// so every event passes after the registry is asked).
const CHANGES: &[(&str, &str)] = &[
    ("allow = []", "allow = [\"127.0.0.1\"]"),
    ("EVENTS_RETRY_BASE_MS = 1000", "EVENTS_RETRY_BASE_MS = 10"),
    ("EVENTS_RETRY_CAP_MS = 300000", "EVENTS_RETRY_CAP_MS = 200"),
    ("EVENTS_MAX_ATTEMPTS = 8", "EVENTS_MAX_ATTEMPTS = 100"),
    ("EVENTS_MAX_PENDING = 10000", "EVENTS_MAX_PENDING = 1000000"),
    ("EVENTS_RATE_LIMIT = 1000", "EVENTS_RATE_LIMIT = 0"),
];

/// The configuration the server needs: [`EXAMPLE`] with [`CHANGES`].
pub static CONFIG: LazyLock<String> = LazyLock::new(|| {
    CHANGES
        .iter()
        .fold(EXAMPLE.to_string(), |text, (from, to)| {
            text.replace(from, to)
        })
});

/// The type of every published event; every subscription's pattern matches it.
const EVENT_TYPE: &str = "bench.event";
/// The subscriptions' pattern.
const PATTERN: &str = "bench.*";
/// How often the subscriptions' status is read while waiting for the server's side to settle.
const STATUS_POLL: Duration = Duration::from_millis(20);

/// Settings of `events`.
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct EventsArgs {
    /// Subscriptions in the namespace, each with its own receiver path; all match every event.
    #[arg(long, default_value_t = 1)]
    pub subscriptions: usize,
    /// Events published.
    #[arg(long, default_value_t = 5_000)]
    pub events: u64,
    /// Concurrent publishing connections.
    #[arg(long, alias = "connections", default_value_t = 32)]
    pub conns: usize,
    /// How long to wait, after the last publish answer, for every delivery (seconds).
    #[arg(long, default_value_t = 300)]
    #[serde(skip)]
    pub deliver_timeout_s: u64,
}

/// The body fields of a publish answer the scenario reads.
#[derive(Deserialize)]
struct PublishAnswer {
    sequence: u64,
    matched: u64,
}

/// The body field of a delivered event the receiver reads.
#[derive(Deserialize)]
struct Delivered {
    sequence: u64,
}

/// The fields of a subscription's status the scenario reads.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Status {
    url: String,
    pending: u64,
    delivered: u64,
    dead_letters: u64,
}

#[derive(Deserialize)]
struct StatusList {
    subscriptions: Vec<Status>,
}

/// One acknowledged publish: its sequence number and when its request was sent.
#[derive(Debug, Clone, Copy)]
struct Acked {
    sequence: u64,
    sent: Instant,
    matched: u64,
}

/// What the receiver got.
struct Inbox {
    /// Per subscription, in arrival order: (sequence, arrival time).
    hooks: Vec<Mutex<Vec<(u64, Instant)>>>,
    /// Requests that were not a delivery the scenario asked for (wrong path, unreadable body);
    /// the first one's description.
    strays: AtomicU64,
    first_stray: Mutex<Option<String>>,
    /// Woken after every recorded delivery.
    arrived: Notify,
}

impl Inbox {
    fn new(subscriptions: usize) -> Self {
        Self {
            hooks: (0..subscriptions).map(|_| Mutex::new(Vec::new())).collect(),
            strays: AtomicU64::new(0),
            first_stray: Mutex::new(None),
            arrived: Notify::new(),
        }
    }

    fn stray(&self, what: String) {
        self.strays.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first_stray.lock().unwrap_or_else(|e| e.into_inner());
        first.get_or_insert(what);
    }

    /// The sequences subscription `k` received, in arrival order.
    fn sequences(&self, k: usize) -> Vec<u64> {
        lock(&self.hooks[k]).iter().map(|&(s, _)| s).collect()
    }

    /// Whether every subscription has received every sequence of `acked`.
    fn has_all(&self, acked: &[u64]) -> bool {
        self.hooks.iter().all(|hook| {
            let got = lock(hook);
            // Cheap test first: fewer arrivals than events cannot cover them.
            if got.len() < acked.len() {
                return false;
            }
            let seen: HashSet<u64> = got.iter().map(|&(s, _)| s).collect();
            acked.iter().all(|s| seen.contains(s))
        })
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The webhook receiver: an HTTP/1 server on 127.0.0.1 answering `POST /hook/<k>` with 200.
/// Dropping it stops accepting and closes its connections.
struct Receiver {
    addr: SocketAddr,
    accept: JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl Receiver {
    async fn start(inbox: Arc<Inbox>) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the webhook receiver")?;
        let addr = listener.local_addr()?;
        let accept = tokio::spawn(async move {
            // Connections end with the accept task: aborting it drops the set, which aborts them.
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    // Out of descriptors, say: try again shortly rather than spin.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let inbox = Arc::clone(&inbox);
                connections.spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let inbox = Arc::clone(&inbox);
                        async move { Ok::<_, Infallible>(receive(&inbox, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
                // Reap finished connections so the set does not grow for ever.
                while connections.try_join_next().is_some() {}
            }
        });
        Ok(Self { addr, accept })
    }

    fn url(&self, k: usize) -> String {
        format!("http://{}/hook/{k}", self.addr)
    }
}

/// Records one delivery and acknowledges it; anything else is counted as a stray and still
/// answered 200, so that the server does not retry it for ever.
async fn receive(inbox: &Inbox, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let hook = req
        .uri()
        .path()
        .strip_prefix("/hook/")
        .and_then(|k| k.parse::<usize>().ok())
        .filter(|&k| k < inbox.hooks.len());
    let path = req.uri().path().to_owned();
    let body = req.into_body().collect().await.map(|b| b.to_bytes());
    let at = Instant::now();
    match (hook, body) {
        (Some(k), Ok(body)) => match serde_json::from_slice::<Delivered>(&body) {
            Ok(event) => {
                lock(&inbox.hooks[k]).push((event.sequence, at));
                inbox.arrived.notify_one();
            }
            Err(_) => inbox.stray(format!(
                "{path}: body without a sequence: {}",
                truncate(&String::from_utf8_lossy(&body), 120)
            )),
        },
        (None, _) => inbox.stray(format!("a request for {path}")),
        (_, Err(e)) => inbox.stray(format!("{path}: reading the body: {e}")),
    }
    Response::new(Full::new(Bytes::from_static(b"ok")))
}

/// What one subscription's arrivals say against the acknowledged sequences.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct HookCheck {
    /// Distinct acknowledged events received.
    pub received: u64,
    /// Arrivals of an event already received.
    pub duplicates: u64,
    /// Arrivals of events no publish was acknowledged for (a publish whose answer was lost);
    /// allowed.
    pub unacknowledged: u64,
    /// Acknowledged events never received, at most the first 5, and how many in all.
    pub missing: Vec<u64>,
    /// How many acknowledged events were never received.
    pub missing_count: u64,
    /// First arrivals that came after a higher sequence (previous, this), at most the first 5,
    /// and how many in all.
    pub out_of_order: Vec<(u64, u64)>,
    /// How many first arrivals came after a higher sequence.
    pub out_of_order_count: u64,
}

impl HookCheck {
    /// Whether nothing was missing or out of order (duplicates and unacknowledged arrivals are
    /// allowed).
    pub fn ok(&self) -> bool {
        self.missing_count == 0 && self.out_of_order_count == 0
    }
}

/// Checks one subscription's `arrivals` (sequences in arrival order) against the `acked`
/// sequences: every acknowledged event must arrive, and each event's first arrival must come
/// after every lower one's. A repeat of an event already received is a duplicate, counted.
pub fn check_hook(acked: &HashSet<u64>, arrivals: &[u64]) -> HookCheck {
    let mut check = HookCheck::default();
    let mut seen = HashSet::with_capacity(arrivals.len());
    let mut highest: Option<u64> = None;
    for &s in arrivals {
        if !seen.insert(s) {
            check.duplicates += 1;
            continue;
        }
        if acked.contains(&s) {
            check.received += 1;
        } else {
            check.unacknowledged += 1;
        }
        if let Some(h) = highest.filter(|&h| s < h) {
            check.out_of_order_count += 1;
            if check.out_of_order.len() < 5 {
                check.out_of_order.push((h, s));
            }
        }
        highest = highest.max(Some(s));
    }
    let mut missing: Vec<u64> = acked
        .iter()
        .copied()
        .filter(|s| !seen.contains(s))
        .collect();
    missing.sort_unstable();
    check.missing_count = missing.len() as u64;
    missing.truncate(5);
    check.missing = missing;
    check
}

/// The problems of the subscriptions' checks, one line per failing subscription.
pub fn hook_problems(checks: &[HookCheck]) -> Vec<String> {
    checks
        .iter()
        .enumerate()
        .filter(|(_, c)| !c.ok())
        .map(|(k, c)| {
            let mut parts = Vec::new();
            if c.missing_count > 0 {
                parts.push(format!(
                    "{} acknowledged events never arrived (first: {:?})",
                    c.missing_count, c.missing
                ));
            }
            if c.out_of_order_count > 0 {
                let pairs: Vec<String> = c
                    .out_of_order
                    .iter()
                    .map(|(h, s)| format!("{s} after {h}"))
                    .collect();
                parts.push(format!(
                    "{} events arrived after a later one ({})",
                    c.out_of_order_count,
                    pairs.join(", ")
                ));
            }
            format!("subscription {k}: {}", parts.join("; "))
        })
        .collect()
}

/// Runs `events` against a namespace of its own.
pub async fn events(target: &Target, args: &EventsArgs) -> Outcome {
    let outcome = Outcome::new("events", args);
    match run(target, args, outcome.clone()).await {
        Ok(done) => done,
        Err(e) => outcome.failed(format!("{e:#}")),
    }
}

async fn run(target: &Target, args: &EventsArgs, mut outcome: Outcome) -> anyhow::Result<Outcome> {
    anyhow::ensure!(args.subscriptions > 0, "--subscriptions must be at least 1");
    anyhow::ensure!(args.events > 0, "--events must be at least 1");
    anyhow::ensure!(args.conns > 0, "--conns must be at least 1");
    let namespace = unique_prefix("events");
    outcome
        .settings
        .insert("namespace".into(), namespace.clone().into());
    if let Some(load) = loadavg() {
        outcome.figure("loadavg_before", load);
    }

    let inbox = Arc::new(Inbox::new(args.subscriptions));
    let receiver = Receiver::start(Arc::clone(&inbox)).await?;
    let mut conn = Conn::open(target).await?;
    let subscriptions_uri = path_uri(format!("/subscriptions/{namespace}"))?;
    for k in 0..args.subscriptions {
        let body = serde_json::json!({"pattern": PATTERN, "url": receiver.url(k)});
        let (status, answer) = conn
            .send_body(
                Method::POST,
                subscriptions_uri.clone(),
                Bytes::from(serde_json::to_vec(&body)?),
            )
            .await
            .context("creating a subscription")?;
        if status != StatusCode::CREATED {
            bail!(
                "creating subscription {k} answered {status} {}",
                truncate(&String::from_utf8_lossy(&answer), 200)
            );
        }
    }

    let before = server_stats::fetch(&mut conn).await.ok();
    let publish = publish_all(target, args, &namespace).await?;
    let deadline = Instant::now() + Duration::from_secs(args.deliver_timeout_s);
    let mut acked: Vec<u64> = publish.acked.iter().map(|a| a.sequence).collect();
    acked.sort_unstable();
    let complete = wait_for(&inbox, &acked, deadline).await;
    // The set-up connection sat idle through publishing and delivery, longer than the server
    // keeps an idle connection open: read the status and stats on a fresh one.
    let mut conn = Conn::open(target).await?;
    // The last acknowledgement is committed after the receiver answered: wait (within the same
    // deadline) until the server's side shows nothing pending.
    let statuses = settled_statuses(&mut conn, &subscriptions_uri, deadline).await;
    let after = server_stats::fetch(&mut conn).await.ok();
    drop(receiver);
    if let Some(load) = loadavg() {
        outcome.figure("loadavg_after", load);
    }

    // Figures.
    let acked_set: HashSet<u64> = acked.iter().copied().collect();
    let sent: HashMap<u64, Instant> = publish.acked.iter().map(|a| (a.sequence, a.sent)).collect();
    let mut latency = Samples::with_capacity(acked.len() * args.subscriptions);
    let mut last_arrival = publish.start;
    let mut during_publish = 0_u64;
    for hook in &inbox.hooks {
        let mut firsts = HashSet::new();
        for &(s, at) in lock(hook).iter() {
            last_arrival = last_arrival.max(at);
            if !firsts.insert(s) {
                continue;
            }
            if let Some(&sent) = sent.get(&s) {
                latency.record(at.saturating_duration_since(sent));
                if at <= publish.end {
                    during_publish += 1;
                }
            }
        }
    }
    let deliveries = latency.len() as u64;
    let n = args.subscriptions as u64;
    let publish_elapsed = publish.end - publish.start;
    let deliver_elapsed = last_arrival.saturating_duration_since(publish.start);
    let publish_latency = publish.samples.summarize();
    outcome
        .figure(
            "throughput",
            per_second(publish.acked.len() as u64, publish_elapsed),
        )
        .figure("throughput_unit", "events/s published")
        .figure("latency", latency.summarize())
        .figure(
            "delivered_events_per_s",
            (per_second(deliveries, deliver_elapsed) / n as f64 * 10.0).round() / 10.0,
        )
        .figure("deliveries_per_s", per_second(deliveries, deliver_elapsed))
        .figure("deliveries", deliveries)
        .figure("publish_p50_ms", publish_latency.map(|l| l.p50_ms))
        .figure("publish_p99_ms", publish_latency.map(|l| l.p99_ms))
        .figure("publish_ms", publish_elapsed.as_millis() as u64)
        .figure("deliver_ms", deliver_elapsed.as_millis() as u64)
        .figure(
            "drain_ms",
            last_arrival
                .saturating_duration_since(publish.end)
                .as_millis() as u64,
        )
        .figure("delivered_during_publish", during_publish)
        .figure("errors", publish.tally.bad_status + publish.tally.failed);
    if let (Some(before), Some(after)) = (before, after) {
        RuntimeDelta::between(&before, &after).add_figures(&mut outcome, deliver_elapsed);
        let alarms = AlarmDelta::between(&before, &after);
        outcome.figure("alarm_runs", alarms.handler_runs);
        if alarms.handler_runs > 0 {
            outcome.figure(
                "deliveries_per_alarm_run",
                (deliveries as f64 / alarms.handler_runs as f64 * 100.0).round() / 100.0,
            );
        }
    }

    // Verdict.
    let mut problems = publish.tally.problems(args.events);
    if publish.repeated_sequences > 0 {
        problems.push(format!(
            "{} publish answers repeated an earlier answer's sequence",
            publish.repeated_sequences
        ));
    }
    let unmatched = publish.acked.iter().filter(|a| a.matched != n).count();
    if unmatched > 0 {
        problems.push(format!(
            "{unmatched} publish answers said matched ≠ {n} subscriptions"
        ));
    }
    let checks: Vec<HookCheck> = (0..args.subscriptions)
        .map(|k| check_hook(&acked_set, &inbox.sequences(k)))
        .collect();
    let duplicates: u64 = checks.iter().map(|c| c.duplicates).sum();
    let unacknowledged: u64 = checks.iter().map(|c| c.unacknowledged).sum();
    outcome
        .figure("duplicates", duplicates)
        .figure("unacknowledged_delivered", unacknowledged);
    if !complete {
        problems.push(format!(
            "not every delivery arrived within {} s of the last publish answer",
            args.deliver_timeout_s
        ));
    }
    problems.extend(hook_problems(&checks));
    let strays = inbox.strays.load(Ordering::Relaxed);
    if strays > 0 {
        let first = lock(&inbox.first_stray).clone().unwrap_or_default();
        problems.push(format!(
            "{strays} requests to the receiver were not readable deliveries (first: {first})"
        ));
    }
    match statuses {
        Ok(list) => problems.extend(status_problems(&list, acked.len() as u64)),
        Err(e) => problems.push(format!("reading the subscriptions' status: {e:#}")),
    }
    Ok(outcome.verdict(Verdict::from_problems(
        problems,
        format!(
            "{} events acknowledged; each of {n} subscriptions received every one, in increasing \
             sequence order ({duplicates} duplicates); the server reports nothing pending and no \
             dead letters",
            acked.len()
        ),
    )))
}

/// What publishing produced.
struct Published {
    acked: Vec<Acked>,
    samples: Samples,
    tally: Tally,
    /// Answers whose sequence an earlier answer already had.
    repeated_sequences: u64,
    start: Instant,
    end: Instant,
}

/// Publishes `args.events` events over `args.conns` connections (opened before the clock
/// starts), handing out requests from a shared ticket counter.
async fn publish_all(
    target: &Target,
    args: &EventsArgs,
    namespace: &str,
) -> anyhow::Result<Published> {
    let uri = path_uri(format!("/events/{namespace}"))?;
    let mut opened = Vec::with_capacity(args.conns);
    for _ in 0..args.conns {
        opened.push(Conn::open(target).await?);
    }
    let tickets = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut workers = Vec::with_capacity(args.conns);
    for conn in opened {
        let (target, uri, tickets) = (target.clone(), uri.clone(), Arc::clone(&tickets));
        let events = args.events;
        workers.push(tokio::spawn(async move {
            publish_loop(conn, &target, &uri, &tickets, events).await
        }));
    }
    let mut acked = Vec::with_capacity(usize::try_from(args.events).unwrap_or(0));
    let mut samples = Samples::default();
    let mut tally = Tally::default();
    for w in workers {
        let (a, s, t) = w.await.context("a publishing worker panicked")?;
        acked.extend(a);
        samples.merge(s);
        tally.merge(t);
    }
    let end = Instant::now();
    let mut seen = HashSet::with_capacity(acked.len());
    let repeated_sequences = acked.iter().filter(|a| !seen.insert(a.sequence)).count() as u64;
    Ok(Published {
        acked,
        samples,
        tally,
        repeated_sequences,
        start,
        end,
    })
}

/// One connection's publishing loop; reconnects once after a failed request.
async fn publish_loop(
    mut conn: Conn,
    target: &Target,
    uri: &Uri,
    tickets: &AtomicU64,
    events: u64,
) -> (Vec<Acked>, Samples, Tally) {
    let mut acked = Vec::new();
    let mut samples = Samples::default();
    let mut tally = Tally::default();
    loop {
        let i = tickets.fetch_add(1, Ordering::Relaxed);
        if i >= events {
            break;
        }
        let body = format!(r#"{{"type":"{EVENT_TYPE}","data":{{"i":{i}}}}}"#);
        let sent = Instant::now();
        match conn
            .send_body(Method::POST, uri.clone(), Bytes::from(body))
            .await
        {
            Ok((status, body)) => {
                samples.record(sent.elapsed());
                match serde_json::from_slice::<PublishAnswer>(&body) {
                    Ok(a) if status == StatusCode::OK => {
                        tally.ok += 1;
                        acked.push(Acked {
                            sequence: a.sequence,
                            sent,
                            matched: a.matched,
                        });
                    }
                    _ => tally.bad_answer("publish: ", status, &body),
                }
            }
            Err(e) => {
                tally.failed += 1;
                tally.note(|| format!("publish: {e:#}"));
                match Conn::open(target).await {
                    Ok(fresh) => conn = fresh,
                    Err(e) => {
                        tally.note(|| format!("reconnecting: {e:#}"));
                        break;
                    }
                }
            }
        }
    }
    (acked, samples, tally)
}

/// Waits until every subscription has every sequence of `acked`, woken by each arrival; false
/// when `deadline` passes first.
async fn wait_for(inbox: &Inbox, acked: &[u64], deadline: Instant) -> bool {
    loop {
        if inbox.has_all(acked) {
            return true;
        }
        let woken = tokio::time::timeout_at(deadline.into(), inbox.arrived.notified()).await;
        if woken.is_err() {
            return inbox.has_all(acked);
        }
    }
}

/// The subscriptions' status once none has pending events, or the last one read when
/// `deadline` passes first.
async fn settled_statuses(
    conn: &mut Conn,
    uri: &Uri,
    deadline: Instant,
) -> anyhow::Result<Vec<Status>> {
    loop {
        let (status, body) = conn.send(Method::GET, uri.clone()).await?;
        if status != StatusCode::OK {
            bail!(
                "GET {uri} answered {status} {}",
                truncate(&String::from_utf8_lossy(&body), 200)
            );
        }
        let list: StatusList = serde_json::from_slice(&body).with_context(|| {
            format!(
                "GET {uri}: {}",
                truncate(&String::from_utf8_lossy(&body), 200)
            )
        })?;
        if list.subscriptions.iter().all(|s| s.pending == 0) || Instant::now() >= deadline {
            return Ok(list.subscriptions);
        }
        tokio::time::sleep(STATUS_POLL).await;
    }
}

/// Problems in the server's own account: events still pending, dead letters, fewer
/// acknowledgements counted than events published.
fn status_problems(list: &[Status], acked: u64) -> Vec<String> {
    list.iter()
        .filter(|s| s.pending > 0 || s.dead_letters > 0 || s.delivered < acked)
        .map(|s| {
            format!(
                "the server reports {} pending, {} delivered of {acked}, {} dead letters for {}",
                s.pending, s.delivered, s.dead_letters, s.url
            )
        })
        .collect()
}

/// The 1, 5 and 15 minute load averages from /proc/loadavg (`0.58 1.19 1.75`).
fn loadavg() -> Option<String> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    Some(
        text.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acked(seqs: impl IntoIterator<Item = u64>) -> HashSet<u64> {
        seqs.into_iter().collect()
    }

    #[test]
    fn every_event_in_order_passes() {
        let c = check_hook(&acked(1..=5), &[1, 2, 3, 4, 5]);
        assert!(c.ok(), "{c:?}");
        assert_eq!(c.received, 5);
        assert_eq!(c.duplicates, 0);
        assert!(hook_problems(&[c]).is_empty());
    }

    #[test]
    fn a_gap_fails() {
        let c = check_hook(&acked(1..=5), &[1, 2, 4, 5]);
        assert!(!c.ok());
        assert_eq!(c.missing, vec![3]);
        assert_eq!(c.missing_count, 1);
        let problems = hook_problems(&[check_hook(&acked(1..=2), &[1, 2]), c]);
        assert_eq!(problems.len(), 1);
        assert!(problems[0].starts_with("subscription 1: 1 acknowledged events never arrived"));
    }

    #[test]
    fn a_duplicate_is_counted_not_failed() {
        // A crash between the receiver's answer and the commit sends the head again.
        let c = check_hook(&acked(1..=4), &[1, 2, 2, 3, 4, 4]);
        assert!(c.ok(), "{c:?}");
        assert_eq!(c.duplicates, 2);
        assert_eq!(c.received, 4);
    }

    #[test]
    fn a_reordering_fails() {
        let c = check_hook(&acked(1..=4), &[1, 3, 2, 4]);
        assert!(!c.ok());
        assert_eq!(c.missing_count, 0);
        assert_eq!(c.out_of_order, vec![(3, 2)]);
        assert!(hook_problems(&[c])[0].contains("2 after 3"));
    }

    #[test]
    fn unacknowledged_events_are_allowed() {
        // Event 3 was stored but its publish answer was lost: delivering it is right.
        let c = check_hook(&acked([1, 2, 4]), &[1, 2, 3, 4]);
        assert!(c.ok(), "{c:?}");
        assert_eq!(c.unacknowledged, 1);
        assert_eq!(c.received, 3);
    }

    #[test]
    fn nothing_received_lists_the_first_missing() {
        let c = check_hook(&acked(1..=100), &[]);
        assert_eq!(c.missing, vec![1, 2, 3, 4, 5]);
        assert_eq!(c.missing_count, 100);
    }

    #[test]
    fn status_problems_name_pending_and_dead_letters() {
        let status = |pending, delivered, dead_letters| Status {
            url: "http://h/hook/0".into(),
            pending,
            delivered,
            dead_letters,
        };
        assert!(status_problems(&[status(0, 10, 0)], 10).is_empty());
        assert_eq!(status_problems(&[status(1, 9, 0)], 10).len(), 1);
        assert_eq!(status_problems(&[status(0, 10, 1)], 10).len(), 1);
    }

    /// The scenario's configuration keeps examples/events.toml's binding and routes, so the
    /// benchmark measures what the example serves.
    #[test]
    fn config_is_the_example_with_each_change_applied() {
        for (from, to) in CHANGES {
            assert_eq!(
                EXAMPLE.matches(from).count(),
                1,
                "examples/events.toml lost {from:?}"
            );
            assert!(CONFIG.contains(to), "{to:?}");
        }
        assert!(CONFIG.contains(r#"allow = ["127.0.0.1"]"#));
    }
}

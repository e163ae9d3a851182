//! `alarms`: N keys with a TTL over K `KvStore` objects, every key expiring at its own moment
//! within one window (one second by default) a few seconds after the set-up. Each object's
//! alarm deletes its due keys and re-arms for the next expiry, so the server runs about N
//! alarms in that window. Measured: how long until no alarm is left, how late the handlers
//! started, and what the server's memory and storage did meanwhile.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use bytes::Bytes;
use hyper::{Method, StatusCode, Uri};
use serde::Serialize;

use super::{Outcome, Verdict, truncate, unique_prefix};
use crate::http::{Conn, Target, path_uri};
use crate::server_stats::{self, AlarmDelta, RuntimeDelta, ServerStats};
use crate::stats::per_second;
use crate::sys::{check_pid, rss_kib};

/// The configuration the server needs for this scenario: one `KvStore` per name under `/kv/`.
pub const CONFIG: &str = include_str!("../../../../examples/kv.toml");

/// Time between the estimated end of the set-up and the window start, so that late set-up
/// writes never expire before they are sent.
const LEAD: Duration = Duration::from_secs(3);
/// The set-up may take this many times as long as the pilot's rate predicts.
const SETUP_MARGIN: f64 = 1.5;
/// How often the server's stats and memory are read during the drain.
const POLL: Duration = Duration::from_millis(100);
/// Keys read back before and after the drain.
const SAMPLE: usize = 200;

/// Settings of `alarms`.
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct AlarmsArgs {
    /// `KvStore` objects (`/kv/NAME`); key g goes to object g % objects.
    #[arg(long, default_value_t = 10_000)]
    pub objects: u64,
    /// Keys with a TTL in all; each expires at its own time within the window.
    #[arg(long, default_value_t = 100_000)]
    pub alarms: u64,
    /// Concurrent connections for the set-up writes.
    #[arg(long, default_value_t = 32)]
    pub conns: usize,
    /// Length of the window every expiry falls in, in ms.
    #[arg(long, default_value_t = 1_000)]
    pub window_ms: u64,
    /// Server process id, to read its memory from /proc (without it, no memory figures).
    #[arg(long)]
    #[serde(skip)]
    pub pid: Option<u32>,
}

/// Object `k` and key number `j` (within that object) of global key `g`.
pub fn key_of(g: u64, objects: u64) -> (u64, u64) {
    (g % objects, g / objects)
}

/// When global key `g` of `n` expires, in ms after the window start: spread evenly over the
/// window, so object k's keys are `window * objects / n` ms apart.
pub fn offset_ms(g: u64, n: u64, window_ms: u64) -> i64 {
    if n == 0 {
        return 0;
    }
    i64::try_from(u128::from(g) * u128::from(window_ms) / u128::from(n)).unwrap_or(i64::MAX)
}

/// The `ttl_ms` that makes a key written at `now_ms` expire at `target_ms + offset_ms` (all
/// wall-clock ms); `None` when that moment has already passed (the set-up overran the window).
pub fn ttl_ms(target_ms: i64, offset_ms: i64, now_ms: i64) -> Option<i64> {
    let ttl = target_ms.saturating_add(offset_ms).saturating_sub(now_ms);
    (ttl > 0).then_some(ttl)
}

/// The window start: the set-up of `total` keys at the pilot's rate (`pilot` keys in
/// `pilot_elapsed`), with [`SETUP_MARGIN`], plus [`LEAD`], after `now_ms`.
pub fn choose_window_start(now_ms: i64, pilot: u64, pilot_elapsed: Duration, total: u64) -> i64 {
    let per_key = pilot_elapsed.as_secs_f64() / pilot.max(1) as f64;
    let setup_ms = (per_key * total as f64 * SETUP_MARGIN * 1_000.0).ceil();
    let setup_ms = if setup_ms.is_finite() {
        setup_ms.min(1e12) as i64
    } else {
        0
    };
    now_ms
        .saturating_add(setup_ms)
        .saturating_add(LEAD.as_millis() as i64)
}

/// The order the set-up writes keys `0..n` in: objects in blocks of `width`, each block's
/// keys round-robin over its objects. Each object is busy only while its block is written
/// (once activated, not re-activated after an eviction), and `width` connections mostly write
/// to different objects at once.
pub fn send_order(n: u64, objects: u64, width: u64) -> Vec<u64> {
    let mut order = Vec::with_capacity(usize::try_from(n).unwrap_or(0));
    if objects == 0 {
        return order;
    }
    let width = width.max(1);
    let per_object = n.div_ceil(objects);
    let mut first = 0;
    while first < objects {
        let last = (first + width).min(objects);
        for j in 0..per_object {
            for k in first..last {
                let g = j * objects + k;
                if g < n {
                    order.push(g);
                }
            }
        }
        first = last;
    }
    order
}

/// Distinct (object, expiry offset) pairs of `n` keys: the alarm runs the set-up asks for
/// (keys of one object expiring in the same millisecond share a run).
pub fn distinct_expiries(n: u64, objects: u64, window_ms: u64) -> u64 {
    let mut seen = HashSet::with_capacity(usize::try_from(n).unwrap_or(0));
    for g in 0..n {
        seen.insert((g % objects.max(1), offset_ms(g, n, window_ms)));
    }
    seen.len() as u64
}

/// Up to `count` distinct keys of `0..n`, pseudo-random from `seed` (SplitMix64).
pub fn sample_keys(n: u64, count: usize, seed: u64) -> Vec<u64> {
    let want = usize::try_from(n).map_or(count, |n| n.min(count));
    let mut state = seed;
    let mut seen = HashSet::with_capacity(want);
    let mut picked = Vec::with_capacity(want);
    while picked.len() < want {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        let g = z % n;
        if seen.insert(g) {
            picked.push(g);
        }
    }
    picked
}

/// Wall-clock time in ms since the Unix epoch, the clock the server's alarms use.
fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// One request of a parallel batch.
struct Req {
    method: Method,
    uri: Uri,
    body: Bytes,
}

/// What came back for one request: the status (with the start of the body when it was an
/// error), or why nothing came back.
type Answer = Result<(StatusCode, String), String>;

/// Sends `count` requests over `conns` connections, request i built by `make(i)` just before it
/// is sent; returns every answer in request order and the time from the first request to the
/// last answer (connections are opened before the clock starts).
async fn run_all<F>(
    target: &Target,
    conns: usize,
    count: usize,
    make: F,
) -> anyhow::Result<(Vec<Answer>, Duration)>
where
    F: Fn(usize) -> anyhow::Result<Req> + Send + Sync + 'static,
{
    anyhow::ensure!(conns > 0, "--conns must be at least 1");
    let conns = conns.min(count.max(1));
    let mut opened = Vec::with_capacity(conns);
    for _ in 0..conns {
        opened.push(Conn::open(target).await?);
    }
    let make = Arc::new(make);
    let tickets = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut workers = Vec::with_capacity(conns);
    for mut conn in opened {
        let make = Arc::clone(&make);
        let tickets = Arc::clone(&tickets);
        let target = target.clone();
        workers.push(tokio::spawn(async move {
            let mut answers: Vec<(usize, Answer)> = Vec::new();
            loop {
                let i = tickets.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    break;
                }
                let req = match make(i) {
                    Ok(r) => r,
                    Err(e) => {
                        answers.push((i, Err(format!("{e:#}"))));
                        continue;
                    }
                };
                match conn.send_body(req.method, req.uri, req.body).await {
                    Ok((status, body)) => {
                        let text = if status.is_success() {
                            String::new()
                        } else {
                            truncate(&String::from_utf8_lossy(&body), 120)
                        };
                        answers.push((i, Ok((status, text))));
                    }
                    Err(e) => {
                        answers.push((i, Err(format!("{e:#}"))));
                        match Conn::open(&target).await {
                            Ok(fresh) => conn = fresh,
                            // The other connections take the remaining tickets.
                            Err(_) => break,
                        }
                    }
                }
            }
            answers
        }));
    }
    let mut all: Vec<Option<Answer>> = (0..count).map(|_| None).collect();
    for w in workers {
        for (i, answer) in w.await.context("a request worker panicked")? {
            if let Some(slot) = all.get_mut(i) {
                *slot = Some(answer);
            }
        }
    }
    let elapsed = start.elapsed();
    let answers = all
        .into_iter()
        .map(|a| a.unwrap_or_else(|| Err("not sent: every connection was lost".into())))
        .collect();
    Ok((answers, elapsed))
}

/// How many `answers` have status `expected`, and a problem line about the others (`what`
/// names the requests), or `None` when all do.
pub fn check_answers(answers: &[Answer], expected: StatusCode, what: &str) -> Option<String> {
    let mut wrong = 0u64;
    let mut failed = 0u64;
    let mut first = None;
    for (i, answer) in answers.iter().enumerate() {
        match answer {
            Ok((status, _)) if *status == expected => {}
            Ok((status, body)) => {
                wrong += 1;
                first.get_or_insert_with(|| format!("#{i}: {status} {body}"));
            }
            Err(e) => {
                failed += 1;
                first.get_or_insert_with(|| format!("#{i}: {e}"));
            }
        }
    }
    (wrong + failed > 0).then(|| {
        format!(
            "{what}: {wrong} of {} answered another status than {} and {failed} got no answer \
             (first: {})",
            answers.len(),
            expected.as_u16(),
            first.unwrap_or_default().trim_end()
        )
    })
}

/// The names and paths of the scenario's keys.
#[derive(Clone)]
struct Keys {
    prefix: Arc<str>,
    objects: u64,
}

impl Keys {
    /// `/kv/PREFIX-K/kJ` for global key `g`, with `?ttl_ms=` when given.
    fn path(&self, g: u64, ttl: Option<i64>) -> anyhow::Result<Uri> {
        let (k, j) = key_of(g, self.objects);
        let path = match ttl {
            Some(ttl) => format!("/kv/{}-{k}/k{j}?ttl_ms={ttl}", self.prefix),
            None => format!("/kv/{}-{k}/k{j}", self.prefix),
        };
        path_uri(path)
    }
}

/// The value stored under global key `g`.
fn value_of(g: u64) -> Bytes {
    Bytes::from(format!("{{\"g\":{g}}}"))
}

/// Runs `alarms`.
pub async fn alarms(target: &Target, args: &AlarmsArgs) -> Outcome {
    let mut outcome = Outcome::new("alarms", args);
    let prefix = unique_prefix("ttl");
    outcome
        .settings
        .insert("prefix".into(), prefix.clone().into());
    match alarms_inner(target, args, &prefix, &mut outcome).await {
        Ok(verdict) => outcome.verdict(verdict),
        Err(e) => outcome.failed(format!("{e:#}")),
    }
}

/// What the drain observed.
struct Drain {
    /// The last stats reading.
    last: ServerStats,
    /// From the window start until no alarm was scheduled or running; `None` on timeout.
    took: Option<Duration>,
    /// Time polled.
    polled: Duration,
    rss_peak_kib: Option<u64>,
    rss_end_kib: Option<u64>,
    live_objects_peak: u64,
}

/// Polls stats (and memory) every [`POLL`] from `window_start` until the server has no alarm
/// scheduled or in flight, or `limit` passes.
async fn watch_drain(
    conn: &mut Conn,
    target: &Target,
    pid: Option<u32>,
    window_start: Instant,
    limit: Duration,
) -> anyhow::Result<Drain> {
    tokio::time::sleep_until(window_start.into()).await;
    let mut ticker = tokio::time::interval(POLL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut rss_peak_kib: Option<u64> = None;
    let mut live_objects_peak = 0;
    loop {
        ticker.tick().await;
        if let Some(pid) = pid {
            let kib = rss_kib(pid)?;
            rss_peak_kib = Some(rss_peak_kib.map_or(kib, |p| p.max(kib)));
        }
        let stats = match server_stats::fetch(conn).await {
            Ok(s) => s,
            // The poll connection may have been closed; one fresh try.
            Err(_) => {
                *conn = Conn::open(target).await?;
                server_stats::fetch(conn).await?
            }
        };
        live_objects_peak = live_objects_peak.max(stats.runtime.live_objects);
        let polled = window_start.elapsed();
        let drained = stats.alarms.scheduled == 0 && stats.alarms.in_flight == 0;
        if drained || polled >= limit {
            let rss_end_kib = pid.map(rss_kib).transpose()?;
            return Ok(Drain {
                last: stats,
                took: drained.then_some(polled),
                polled,
                rss_peak_kib: match (rss_peak_kib, rss_end_kib) {
                    (Some(p), Some(e)) => Some(p.max(e)),
                    (p, e) => p.or(e),
                },
                rss_end_kib,
                live_objects_peak,
            });
        }
    }
}

/// How long the drain may take: two minutes, or more for big runs (250 alarms/s).
fn drain_limit(alarms: u64) -> Duration {
    Duration::from_secs((alarms / 250).max(120))
}

async fn alarms_inner(
    target: &Target,
    args: &AlarmsArgs,
    prefix: &str,
    outcome: &mut Outcome,
) -> anyhow::Result<Verdict> {
    anyhow::ensure!(args.objects > 0, "--objects must be at least 1");
    anyhow::ensure!(args.alarms > 0, "--alarms must be at least 1");
    anyhow::ensure!(args.window_ms > 0, "--window-ms must be at least 1");
    if let Some(pid) = args.pid {
        check_pid(pid)?;
    }
    let n = args.alarms;
    let count = usize::try_from(n).context("--alarms is too large")?;
    let keys = Keys {
        prefix: Arc::from(prefix),
        objects: args.objects,
    };
    let order: Arc<Vec<u64>> = Arc::new(send_order(n, args.objects, args.conns as u64));
    // The stats endpoint must work before anything is written: the figures rely on it.
    let mut poll_conn = Conn::open(target).await?;
    server_stats::fetch(&mut poll_conn).await?;

    // Pilot (not timed in the figures): the first keys in set-up order, without a TTL, to
    // learn how fast the set-up goes and so when the window can start.
    let pilot = (count / 20).max(args.conns * 20).min(count);
    let (answers, pilot_elapsed) = {
        let (keys, order) = (keys.clone(), Arc::clone(&order));
        run_all(target, args.conns, pilot, move |i| {
            let g = order[i];
            Ok(Req {
                method: Method::PUT,
                uri: keys.path(g, None)?,
                body: value_of(g),
            })
        })
        .await?
    };
    if let Some(mut problem) = check_answers(&answers, StatusCode::OK, "pilot writes") {
        if answers
            .iter()
            .any(|a| matches!(a, Ok((StatusCode::NOT_FOUND, _))))
        {
            problem.push_str(
                "; is the server running the configuration `rookery-bench alarms-config` prints?",
            );
        }
        return Ok(Verdict::fail(problem));
    }
    let target_ms = choose_window_start(now_ms(), pilot as u64, pilot_elapsed, n);

    // Set-up: every key with the TTL that makes it expire at its own moment of the window.
    let late = Arc::new(AtomicU64::new(0));
    let setup_started = Instant::now();
    let (answers, setup_elapsed) = {
        let (keys, order, late) = (keys.clone(), Arc::clone(&order), Arc::clone(&late));
        let window_ms = args.window_ms;
        run_all(target, args.conns, count, move |i| {
            let g = order[i];
            let ttl = match ttl_ms(target_ms, offset_ms(g, n, window_ms), now_ms()) {
                Some(ttl) => ttl,
                None => {
                    late.fetch_add(1, Ordering::Relaxed);
                    1
                }
            };
            Ok(Req {
                method: Method::PUT,
                uri: keys.path(g, Some(ttl))?,
                body: value_of(g),
            })
        })
        .await?
    };
    outcome
        .figure("setup_ms", setup_started.elapsed().as_millis() as u64)
        .figure("setup_writes_per_s", per_second(n, setup_elapsed));
    let mut problems = Vec::new();
    if let Some(problem) = check_answers(&answers, StatusCode::OK, "set-up writes") {
        problems.push(problem);
    }
    let late = late.load(Ordering::Relaxed);
    if late > 0 {
        problems.push(format!(
            "the set-up overran the window: {late} keys were written after their expiry time"
        ));
    }
    if !problems.is_empty() {
        return Ok(Verdict::from_problems(problems, ""));
    }

    // Every sampled key is there before the window (so a 404 afterwards means deleted, not a
    // wrong route).
    let sample = Arc::new(sample_keys(n, SAMPLE, target_ms as u64));
    let read_back = |keys: Keys, sample: Arc<Vec<u64>>| {
        move |i: usize| {
            Ok(Req {
                method: Method::GET,
                uri: keys.path(sample[i], None)?,
                body: Bytes::new(),
            })
        }
    };
    let (present, _) = run_all(
        target,
        args.conns,
        sample.len(),
        read_back(keys.clone(), Arc::clone(&sample)),
    )
    .await?;
    if let Some(problem) = check_answers(&present, StatusCode::OK, "sampled keys before the window")
    {
        return Ok(Verdict::fail(problem));
    }

    let before = match server_stats::fetch(&mut poll_conn).await {
        Ok(s) => s,
        // The connection idled through the set-up; the server may have closed it.
        Err(_) => {
            poll_conn = Conn::open(target).await?;
            server_stats::fetch(&mut poll_conn).await?
        }
    };
    let rss_before = args.pid.map(rss_kib).transpose()?;
    let slack_ms = target_ms - now_ms();
    outcome.figure("slack_ms", slack_ms);
    if slack_ms <= 0 {
        return Ok(Verdict::fail(format!(
            "the set-up and read-back ended {} ms after the window start; the drain cannot be \
             told apart from the set-up",
            -slack_ms
        )));
    }
    let window_start = Instant::now() + Duration::from_millis(slack_ms as u64);
    let drain = watch_drain(
        &mut poll_conn,
        target,
        args.pid,
        window_start,
        drain_limit(n),
    )
    .await?;
    let after = drain.last;
    let runtime = RuntimeDelta::between(&before, &after);
    let alarms = AlarmDelta::between(&before, &after);
    let measured = drain.took.unwrap_or(drain.polled);
    outcome
        .figure("throughput", per_second(alarms.handler_runs, measured))
        .figure("throughput_unit", "alarm runs/s")
        .figure("drain_ms", drain.took.map(|d| d.as_millis() as u64))
        .figure(
            "expiry_times",
            distinct_expiries(n, args.objects, args.window_ms),
        )
        .figure("alarm_runs", alarms.handler_runs)
        .figure("deliveries", alarms.delivered)
        .figure("retried", alarms.retried)
        .figure("given_up", alarms.given_up)
        .figure("lateness", after.alarms.lateness)
        .figure("activations", runtime.activations)
        .figure("live_objects_peak", drain.live_objects_peak)
        .figure("rss_before_kib", rss_before)
        .figure("rss_peak_kib", drain.rss_peak_kib)
        .figure("rss_end_kib", drain.rss_end_kib);
    runtime.add_figures(outcome, measured);
    if before.alarms.lateness.count > 0 {
        outcome.figure("handler_runs_before_window", before.alarms.lateness.count);
    }

    // Afterwards every sampled key is gone.
    let (gone, _) = run_all(
        target,
        args.conns,
        sample.len(),
        read_back(keys.clone(), Arc::clone(&sample)),
    )
    .await?;
    let mut problems = Vec::new();
    if drain.took.is_none() {
        problems.push(format!(
            "after {} s {} alarms were still scheduled and {} running",
            drain.polled.as_secs(),
            after.alarms.scheduled,
            after.alarms.in_flight
        ));
    }
    if let Some(problem) = check_answers(&gone, StatusCode::NOT_FOUND, "sampled keys afterwards") {
        problems.push(problem);
    }
    if alarms.given_up > 0 || after.alarms.given_up > 0 {
        problems.push(format!(
            "{} alarms were given up",
            after.alarms.given_up.max(alarms.given_up)
        ));
    }
    Ok(Verdict::from_problems(
        problems,
        format!(
            "all {n} keys written with their TTL; the server ran every expiry (no alarm left, \
             none given up) and {} sampled keys, present before, answer 404 afterwards",
            sample.len()
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_go_round_robin_over_the_objects() {
        assert_eq!(key_of(0, 10), (0, 0));
        assert_eq!(key_of(9, 10), (9, 0));
        assert_eq!(key_of(10, 10), (0, 1));
        assert_eq!(key_of(99_999, 10_000), (9_999, 9));
    }

    #[test]
    fn offsets_spread_over_the_window() {
        let n = 100_000;
        assert_eq!(offset_ms(0, n, 1_000), 0);
        assert_eq!(offset_ms(n - 1, n, 1_000), 999);
        assert_eq!(offset_ms(50_000, n, 1_000), 500);
        // Object 7's keys (g = 7, 10 007, 20 007, ...) are 100 ms apart.
        let object7: Vec<i64> = (0..10)
            .map(|j| offset_ms(j * 10_000 + 7, n, 1_000))
            .collect();
        assert_eq!(object7, [0, 100, 200, 300, 400, 500, 600, 700, 800, 900]);
        assert_eq!(offset_ms(3, 0, 1_000), 0);
        assert_eq!(offset_ms(u64::MAX - 1, u64::MAX, u64::MAX), i64::MAX);
    }

    #[test]
    fn ttl_counts_from_the_time_of_sending() {
        let target = 1_700_000_010_000;
        // Sent 7 s before the window start: expires 7 s + offset later.
        assert_eq!(ttl_ms(target, 250, target - 7_000), Some(7_250));
        // Sent inside the window but before its own moment: still in time.
        assert_eq!(ttl_ms(target, 250, target + 100), Some(150));
        // Its moment has come or passed: too late to write with a TTL.
        assert_eq!(ttl_ms(target, 250, target + 250), None);
        assert_eq!(ttl_ms(target, 250, target + 10_000), None);
        assert_eq!(ttl_ms(i64::MAX, 1, 0), Some(i64::MAX));
    }

    #[test]
    fn window_start_leaves_room_for_the_setup() {
        // 1 000 pilot keys in 0.5 s: 100 000 keys take 50 s, 75 s with the margin, plus 3 s.
        assert_eq!(
            choose_window_start(1_000, 1_000, Duration::from_millis(500), 100_000),
            1_000 + 75_000 + 3_000
        );
        // A pilot faster than the clock can tell still leaves the lead.
        assert_eq!(choose_window_start(0, 10, Duration::ZERO, 10), 3_000);
        assert_eq!(choose_window_start(0, 0, Duration::ZERO, 10), 3_000);
    }

    #[test]
    fn send_order_is_a_permutation_in_object_blocks() {
        for (n, objects, width) in [(100, 10, 4), (95, 10, 4), (7, 10, 3), (10, 1, 32)] {
            let order = send_order(n, objects, width);
            let mut sorted = order.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, (0..n).collect::<Vec<_>>(), "{n} {objects} {width}");
        }
        // 3 objects per block: objects 0-2 first, round-robin, then 3-5, ...
        let order = send_order(20, 10, 3);
        let objects: Vec<u64> = order.iter().map(|&g| key_of(g, 10).0).collect();
        assert_eq!(
            objects,
            [0, 1, 2, 0, 1, 2, 3, 4, 5, 3, 4, 5, 6, 7, 8, 6, 7, 8, 9, 9]
        );
        assert!(send_order(10, 0, 3).is_empty());
    }

    #[test]
    fn distinct_expiries_count_shared_milliseconds_once() {
        // 10 keys per object, 100 ms apart: all distinct.
        assert_eq!(distinct_expiries(100_000, 10_000, 1_000), 100_000);
        // 2 000 keys on one object in 1 000 ms: two per millisecond.
        assert_eq!(distinct_expiries(2_000, 1, 1_000), 1_000);
    }

    #[test]
    fn samples_are_distinct_and_in_range() {
        let s = sample_keys(100_000, 200, 42);
        assert_eq!(s.len(), 200);
        assert!(s.iter().all(|&g| g < 100_000));
        assert_eq!(s.iter().collect::<HashSet<_>>().len(), 200);
        assert_eq!(s, sample_keys(100_000, 200, 42));
        assert_ne!(s, sample_keys(100_000, 200, 43));
        let mut all = sample_keys(5, 200, 1);
        all.sort_unstable();
        assert_eq!(all, [0, 1, 2, 3, 4]);
    }

    #[test]
    fn answers_are_checked_against_the_expected_status() {
        let answers: Vec<Answer> = vec![
            Ok((StatusCode::NOT_FOUND, String::new())),
            Ok((StatusCode::OK, String::new())),
            Err("timed out".into()),
            Ok((
                StatusCode::INTERNAL_SERVER_ERROR,
                "{\"error\":\"x\"}".into(),
            )),
        ];
        assert_eq!(
            check_answers(&answers[..1], StatusCode::NOT_FOUND, "k"),
            None
        );
        let problem = check_answers(&answers, StatusCode::NOT_FOUND, "keys").unwrap();
        assert_eq!(
            problem,
            "keys: 2 of 4 answered another status than 404 and 1 got no answer (first: #1: \
             200 OK)"
        );
    }

    #[test]
    fn the_config_binds_kv_store_under_kv() {
        assert!(CONFIG.contains(r#"{ name = "KV", class_name = "KvStore" }"#));
        assert!(CONFIG.contains(r#"new_sqlite_classes = ["KvStore"]"#));
        assert!(CONFIG.contains(r#"path = "/kv/:name""#));
        assert!(CONFIG.contains(r#"name_from = "name""#));
    }

    #[test]
    fn drain_limit_grows_with_the_size() {
        assert_eq!(drain_limit(10_000), Duration::from_secs(120));
        assert_eq!(drain_limit(100_000), Duration::from_secs(400));
    }
}

//! `counter-one` and `counter-many`: increments over many keep-alive connections, then a check
//! that every acknowledged increment is in the counters.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use hyper::{Method, StatusCode, Uri};
use serde::Serialize;

use super::{Outcome, Verdict, truncate, unique_prefix};
use crate::http::{Conn, Target, path_uri, read_counter};
use crate::server_stats::{self, RuntimeDelta, ServerStats};
use crate::stats::{Samples, per_second};

/// Settings of `counter-one`.
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct CounterOneArgs {
    /// Concurrent connections.
    #[arg(long, default_value_t = 32)]
    pub conns: usize,
    /// Total increments.
    #[arg(long, default_value_t = 50_000)]
    pub requests: u64,
    /// Counter name (default: a fresh random one, which starts at 0; a reused one is checked
    /// against its value before the run).
    #[arg(long)]
    pub name: Option<String>,
}

/// Settings of `counter-many`.
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct CounterManyArgs {
    /// Number of counters; request i goes to counter i % objects.
    #[arg(long, default_value_t = 1_000)]
    pub objects: u64,
    /// Total increments.
    #[arg(long, default_value_t = 50_000)]
    pub requests: u64,
    /// Concurrent connections.
    #[arg(long, default_value_t = 32)]
    pub conns: usize,
    /// Increment every counter once before the measured run (not timed, and checked like the
    /// rest), so that the run measures live objects rather than first activations.
    #[arg(long)]
    pub warmup: bool,
}

/// How the answers of a load run went.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tally {
    /// Answered 200.
    pub ok: u64,
    /// Answered with another status.
    pub bad_status: u64,
    /// Got no answer (connection error or timeout).
    pub failed: u64,
    /// The first non-200 answer or failure, for the detail.
    pub first_error: Option<String>,
}

impl Tally {
    /// Keeps `error` as the first error, unless one is kept already.
    pub(crate) fn note(&mut self, error: impl FnOnce() -> String) {
        if self.first_error.is_none() {
            self.first_error = Some(error());
        }
    }

    /// Counts an answer that was not the expected one; keeps it (`what` says to which
    /// request) as the first error unless one is kept already.
    pub(crate) fn bad_answer(&mut self, what: &str, status: StatusCode, body: &[u8]) {
        self.bad_status += 1;
        self.note(|| {
            format!(
                "{what}{status} {}",
                truncate(&String::from_utf8_lossy(body), 120)
            )
        });
    }

    /// Adds another connection's tally.
    pub(crate) fn merge(&mut self, other: Tally) {
        self.ok += other.ok;
        self.bad_status += other.bad_status;
        self.failed += other.failed;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }

    /// Requests that got no 200, as verdict problems.
    pub(crate) fn problems(&self, expected: u64) -> Vec<String> {
        let mut problems = Vec::new();
        let first = self.first_error.as_deref().unwrap_or("?");
        if self.bad_status > 0 {
            problems.push(format!(
                "{} answers were not 200 (first: {first})",
                self.bad_status
            ));
        }
        if self.failed > 0 {
            problems.push(format!(
                "{} requests got no answer (first: {first})",
                self.failed
            ));
        }
        let answered = self.ok + self.bad_status + self.failed;
        if answered < expected {
            problems.push(format!(
                "only {answered} of {expected} requests were sent (connections lost)"
            ));
        }
        problems
    }
}

/// What [`drive`] measured.
pub(crate) struct Load {
    pub(crate) samples: Samples,
    pub(crate) tally: Tally,
    pub(crate) elapsed: Duration,
    /// The 200 answers' bodies with their request numbers, when [`drive_posts`] was asked to
    /// keep them.
    pub(crate) answers: Vec<(u64, Bytes)>,
}

/// Sends `requests` POSTs over `conns` connections, request i to `paths[i % paths.len()]`.
pub(crate) async fn drive(
    target: &Target,
    conns: usize,
    requests: u64,
    paths: Vec<Uri>,
) -> anyhow::Result<Load> {
    let posts = paths.into_iter().map(|p| (p, Bytes::new())).collect();
    drive_posts(target, conns, requests, posts, false).await
}

/// Sends `requests` POSTs over `conns` connections, request i with `posts[i % posts.len()]`
/// (path and JSON body, none when empty); keeps the 200 answers' bodies when `keep` is set.
///
/// Connections are opened before the clock starts so throughput measures requests, not TCP
/// handshakes. Requests are handed out from a shared ticket counter so a slow connection does
/// not leave the others idle at the end.
pub(crate) async fn drive_posts(
    target: &Target,
    conns: usize,
    requests: u64,
    posts: Vec<(Uri, Bytes)>,
    keep: bool,
) -> anyhow::Result<Load> {
    anyhow::ensure!(conns > 0, "--conns must be at least 1");
    anyhow::ensure!(!posts.is_empty(), "no objects to send to");
    let mut opened = Vec::with_capacity(conns);
    for _ in 0..conns {
        opened.push(Conn::open(target).await?);
    }
    let posts = Arc::new(posts);
    let tickets = Arc::new(AtomicU64::new(0));
    let per_conn = usize::try_from(requests / conns as u64 + 1).unwrap_or(usize::MAX);
    let start = Instant::now();
    let mut workers = Vec::with_capacity(conns);
    for conn in opened {
        let target = target.clone();
        let posts = Arc::clone(&posts);
        let tickets = Arc::clone(&tickets);
        let job = Job {
            target,
            posts,
            tickets,
            requests,
            capacity: per_conn,
            keep,
        };
        workers.push(tokio::spawn(async move { job.work(conn).await }));
    }
    let mut samples = Samples::with_capacity(usize::try_from(requests).unwrap_or(0));
    let mut tally = Tally::default();
    let mut answers = Vec::new();
    for w in workers {
        let (s, t, a) = w.await.context("a load worker panicked")?;
        samples.merge(s);
        tally.merge(t);
        answers.extend(a);
    }
    Ok(Load {
        samples,
        tally,
        elapsed: start.elapsed(),
        answers,
    })
}

/// What one load connection works through.
struct Job {
    target: Target,
    posts: Arc<Vec<(Uri, Bytes)>>,
    tickets: Arc<AtomicU64>,
    requests: u64,
    capacity: usize,
    keep: bool,
}

impl Job {
    /// One connection's loop: take a ticket, send, record; reconnect once after a failure.
    async fn work(self, mut conn: Conn) -> (Samples, Tally, Vec<(u64, Bytes)>) {
        let mut samples = Samples::with_capacity(self.capacity);
        let mut tally = Tally::default();
        let mut answers = Vec::with_capacity(if self.keep { self.capacity } else { 0 });
        let kinds = self.posts.len() as u64;
        loop {
            let i = self.tickets.fetch_add(1, Ordering::Relaxed);
            if i >= self.requests {
                break;
            }
            // Uri and Bytes clones share their bytes: no allocation per request.
            let (uri, body) = self.posts[(i % kinds) as usize].clone();
            let sent = Instant::now();
            match conn.send_body(Method::POST, uri, body).await {
                Ok((status, body)) => {
                    samples.record(sent.elapsed());
                    if status == StatusCode::OK {
                        tally.ok += 1;
                        if self.keep {
                            answers.push((i, body));
                        }
                    } else {
                        tally.bad_answer("", status, &body);
                    }
                }
                Err(e) => {
                    tally.failed += 1;
                    tally.note(|| format!("{e:#}"));
                    match Conn::open(&self.target).await {
                        Ok(fresh) => conn = fresh,
                        Err(e) => {
                            tally.note(|| format!("reconnecting: {e:#}"));
                            break;
                        }
                    }
                }
            }
        }
        (samples, tally, answers)
    }
}

/// Adds the load figures every counter scenario reports.
pub(crate) fn load_figures(outcome: &mut Outcome, load: &Load) {
    outcome
        .figure(
            "throughput",
            per_second(load.samples.len() as u64, load.elapsed),
        )
        .figure("throughput_unit", "req/s")
        .figure("latency", load.samples.clone().summarize())
        .figure("errors", load.tally.bad_status + load.tally.failed)
        .figure("elapsed_ms", load.elapsed.as_millis() as u64);
}

/// Reads the server's stats; when that fails, says so in a `server_stats` figure instead (the
/// storage figures are measurements, not part of the verdict).
async fn stats_or_note(conn: &mut Conn, outcome: &mut Outcome) -> Option<ServerStats> {
    match server_stats::fetch(conn).await {
        Ok(stats) => Some(stats),
        Err(e) => {
            outcome.figure("server_stats", format!("unavailable: {e:#}"));
            None
        }
    }
}

/// Adds the storage figures of the measured phase, from stats read just before and just after.
fn storage_figures(
    outcome: &mut Outcome,
    before: Option<ServerStats>,
    after: Option<ServerStats>,
    elapsed: Duration,
) {
    if let (Some(before), Some(after)) = (before, after) {
        RuntimeDelta::between(&before, &after).add_figures(outcome, elapsed);
    }
}

/// Runs `counter-one`.
pub async fn counter_one(target: &Target, args: &CounterOneArgs) -> Outcome {
    let name = args.name.clone().unwrap_or_else(|| unique_prefix("one"));
    let mut settings = args.clone();
    settings.name = Some(name.clone());
    let outcome = Outcome::new("counter-one", &settings);
    match counter_one_inner(target, args, &name, outcome.clone()).await {
        Ok(done) => done,
        Err(e) => outcome.failed(format!("{e:#}")),
    }
}

async fn counter_one_inner(
    target: &Target,
    args: &CounterOneArgs,
    name: &str,
    mut outcome: Outcome,
) -> anyhow::Result<Outcome> {
    let path = path_uri(format!("/counter/{name}/increment"))?;
    // A fresh name starts at 0; a reused `--name` starts wherever earlier runs left it.
    let mut conn = Conn::open(target).await?;
    let start = read_counter(&mut conn, name).await?;
    let before = stats_or_note(&mut conn, &mut outcome).await;
    let load = drive(target, args.conns, args.requests, vec![path]).await?;
    load_figures(&mut outcome, &load);
    // A fresh connection: the server may have closed the idle one during the run.
    let mut conn = Conn::open(target).await?;
    let after = match before {
        Some(_) => stats_or_note(&mut conn, &mut outcome).await,
        None => None,
    };
    storage_figures(&mut outcome, before, after, load.elapsed);
    let value = read_counter(&mut conn, name).await;
    let verdict = one_verdict(args.requests, start, &load.tally, value);
    Ok(outcome.verdict(verdict))
}

/// `counter-one` passes when all `increments` answered 200 and the counter, which read `start`
/// before the run, reads exactly `start + increments` afterwards (more would mean a replayed
/// write, fewer a lost one).
pub fn one_verdict(
    increments: u64,
    start: i64,
    tally: &Tally,
    value: anyhow::Result<i64>,
) -> Verdict {
    let mut problems = tally.problems(increments);
    let expected = i128::from(start) + i128::from(increments);
    match value {
        Ok(v) if i128::from(v) == expected => {}
        Ok(v) => problems.push(format!(
            "the counter reads {v}, expected {expected} ({start} before the run + {increments})"
        )),
        Err(e) => problems.push(format!("cannot read the counter: {e:#}")),
    }
    let from = if start == 0 {
        String::new()
    } else {
        format!(" (from {start})")
    };
    Verdict::from_problems(
        problems,
        format!("all {increments} increments answered 200 and the counter reads {expected}{from}"),
    )
}

/// Runs `counter-many`.
pub async fn counter_many(target: &Target, args: &CounterManyArgs) -> Outcome {
    let outcome = Outcome::new("counter-many", args);
    match counter_many_inner(target, args, outcome.clone()).await {
        Ok(done) => done,
        Err(e) => outcome.failed(format!("{e:#}")),
    }
}

async fn counter_many_inner(
    target: &Target,
    args: &CounterManyArgs,
    mut outcome: Outcome,
) -> anyhow::Result<Outcome> {
    anyhow::ensure!(args.objects > 0, "--objects must be at least 1");
    let prefix = unique_prefix("many");
    outcome
        .settings
        .insert("prefix".into(), prefix.clone().into());
    let names: Vec<String> = (0..args.objects).map(|k| format!("{prefix}-{k}")).collect();
    let paths = names
        .iter()
        .map(|n| path_uri(format!("/counter/{n}/increment")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    // What every counter holds before the measured run.
    let mut warmed = 0;
    if args.warmup {
        let warm = drive(target, args.conns, args.objects, paths.clone()).await?;
        outcome
            .figure("warmup_ms", warm.elapsed.as_millis() as u64)
            .figure(
                "warmup_throughput",
                per_second(warm.samples.len() as u64, warm.elapsed),
            );
        let problems = warm.tally.problems(args.objects);
        if !problems.is_empty() {
            return Ok(outcome.failed(format!("warm-up: {}", problems.join("; "))));
        }
        warmed = 1;
    }
    let before = stats_or_note(&mut Conn::open(target).await?, &mut outcome).await;
    let load = drive(target, args.conns, args.requests, paths).await?;
    load_figures(&mut outcome, &load);
    let mut conn = Conn::open(target).await?;
    let after = match before {
        Some(_) => stats_or_note(&mut conn, &mut outcome).await,
        None => None,
    };
    storage_figures(&mut outcome, before, after, load.elapsed);
    let mut values = Vec::with_capacity(names.len());
    for name in &names {
        values.push(read_counter(&mut conn, name).await);
    }
    let verdict = many_verdict(args.requests, warmed, &load.tally, &values);
    Ok(outcome.verdict(verdict))
}

/// How many of `requests` increments counter `k` of `objects` receives when request i goes to
/// counter i % objects.
pub fn expected_count(k: u64, objects: u64, requests: u64) -> u64 {
    requests / objects + u64::from(k < requests % objects)
}

/// `counter-many` passes when every increment answered 200, every counter holds exactly its
/// share and so the sum is `requests`.
pub fn many_verdict(
    requests: u64,
    start: u64,
    tally: &Tally,
    values: &[anyhow::Result<i64>],
) -> Verdict {
    let mut problems = tally.problems(requests);
    let objects = values.len() as u64;
    let mut sum: i128 = 0;
    let mut wrong = 0u64;
    let mut unreadable = 0u64;
    let mut first_wrong = None;
    for (k, value) in values.iter().enumerate() {
        let expected = start + expected_count(k as u64, objects, requests);
        match value {
            Ok(v) => {
                sum += i128::from(*v);
                if i128::from(*v) != i128::from(expected) {
                    wrong += 1;
                    first_wrong.get_or_insert_with(|| {
                        format!("counter {k} reads {v}, expected {expected}")
                    });
                }
            }
            Err(e) => {
                unreadable += 1;
                first_wrong.get_or_insert_with(|| format!("counter {k}: {e:#}"));
            }
        }
    }
    let total = i128::from(requests) + i128::from(start) * i128::from(objects);
    if sum != total {
        problems.push(format!("the counters sum to {sum}, expected {total}"));
    }
    if wrong + unreadable > 0 {
        problems.push(format!(
            "{wrong} counters hold a wrong value and {unreadable} could not be read (first: {})",
            first_wrong.unwrap_or_default()
        ));
    }
    Verdict::from_problems(
        problems,
        format!(
            "all {requests} increments answered 200; each of the {objects} counters holds its \
             share{} and they sum to {total}",
            if start > 0 {
                format!(" (after {start} of warm-up)")
            } else {
                String::new()
            }
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clean(ok: u64) -> Tally {
        Tally {
            ok,
            ..Tally::default()
        }
    }

    #[test]
    fn expected_counts_cover_every_request() {
        assert_eq!(expected_count(0, 3, 10), 4);
        assert_eq!(expected_count(1, 3, 10), 3);
        assert_eq!(expected_count(2, 3, 10), 3);
        let total: u64 = (0..7).map(|k| expected_count(k, 7, 1000)).sum();
        assert_eq!(total, 1000);
        // Fewer requests than objects: the first ones get one each.
        assert_eq!(expected_count(4, 10, 5), 1);
        assert_eq!(expected_count(5, 10, 5), 0);
    }

    #[test]
    fn one_verdict_passes_only_on_exact_value() {
        let v = one_verdict(100, 0, &clean(100), Ok(100));
        assert!(v.ok);
        assert_eq!(
            v.detail,
            "all 100 increments answered 200 and the counter reads 100"
        );
        let lost = one_verdict(100, 0, &clean(100), Ok(99));
        assert!(!lost.ok);
        assert!(
            lost.detail.contains("reads 99, expected 100"),
            "{}",
            lost.detail
        );
        // Too many is as wrong as too few: a replayed write.
        assert!(!one_verdict(100, 0, &clean(100), Ok(101)).ok);
        assert!(!one_verdict(100, 0, &clean(100), Err(anyhow::anyhow!("boom"))).ok);
    }

    #[test]
    fn one_verdict_counts_from_the_starting_value() {
        let v = one_verdict(10, 10, &clean(10), Ok(20));
        assert!(v.ok, "{}", v.detail);
        assert!(v.detail.contains("reads 20 (from 10)"), "{}", v.detail);
        assert!(!one_verdict(10, 10, &clean(10), Ok(10)).ok);
    }

    #[test]
    fn one_verdict_fails_on_non_200_even_with_right_value() {
        let tally = Tally {
            ok: 99,
            bad_status: 1,
            failed: 0,
            first_error: Some("503 Service Unavailable".into()),
        };
        let v = one_verdict(100, 0, &tally, Ok(100));
        assert!(!v.ok);
        assert!(v.detail.contains("1 answers were not 200"), "{}", v.detail);
        assert!(v.detail.contains("503"), "{}", v.detail);
    }

    #[test]
    fn one_verdict_notices_unsent_requests() {
        let v = one_verdict(100, 0, &clean(90), Ok(90));
        assert!(!v.ok);
        assert!(v.detail.contains("only 90 of 100"), "{}", v.detail);
    }

    #[test]
    fn many_verdict_checks_each_counter_and_the_sum() {
        let good: Vec<anyhow::Result<i64>> = vec![Ok(4), Ok(3), Ok(3)];
        assert!(many_verdict(10, 0, &clean(10), &good).ok);
        // Same sum, wrong distribution: still a failure.
        let shuffled: Vec<anyhow::Result<i64>> = vec![Ok(3), Ok(4), Ok(3)];
        let v = many_verdict(10, 0, &clean(10), &shuffled);
        assert!(!v.ok);
        assert!(
            v.detail.contains("2 counters hold a wrong value"),
            "{}",
            v.detail
        );
        assert!(!v.detail.contains("sum to"), "{}", v.detail);
        let lost: Vec<anyhow::Result<i64>> = vec![Ok(4), Ok(2), Ok(3)];
        let v = many_verdict(10, 0, &clean(10), &lost);
        assert!(v.detail.contains("sum to 9, expected 10"), "{}", v.detail);
        let unreadable: Vec<anyhow::Result<i64>> = vec![Ok(4), Err(anyhow::anyhow!("x")), Ok(3)];
        assert!(!many_verdict(10, 0, &clean(10), &unreadable).ok);
        // After a warm-up increment each, every counter holds one more.
        let warmed: Vec<anyhow::Result<i64>> = vec![Ok(5), Ok(4), Ok(4)];
        assert!(many_verdict(10, 1, &clean(10), &warmed).ok);
        assert!(
            !many_verdict(10, 1, &clean(10), &good).ok,
            "the warm-up lost"
        );
    }
}

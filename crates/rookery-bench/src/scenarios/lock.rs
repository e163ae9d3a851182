//! `lock`: acquire/release pairs per second of seed 002's distributed lock (the demo's
//! `DistributedLock` under `/locks/:name`), then checks that no two holders ever overlapped,
//! that every grant's fencing token was new, and that every lock is free at the end.
//!
//! Connection c works on lock id `c % locks` of one lock object: with `--locks` equal to
//! `--conns` no two connections contend; with `--locks 1` all of them fight for one lock and a
//! refused acquire is retried at once.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use hyper::{Method, StatusCode, Uri};
use serde::{Deserialize, Serialize};

use super::counter::Tally;
use super::{Outcome, Verdict, unique_prefix};
use crate::http::{Conn, Target, path_uri};
use crate::stats::{Samples, per_second};

/// Settings of `lock`.
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct LockArgs {
    /// Concurrent connections, each acquiring and releasing in a loop.
    #[arg(long, default_value_t = 32)]
    pub conns: usize,
    /// Acquire/release pairs to complete.
    #[arg(long, default_value_t = 10_000)]
    pub pairs: u64,
    /// Lock ids in the lock object; connection c uses id c % locks.
    #[arg(long, default_value_t = 32)]
    pub locks: usize,
}

/// A lease long enough never to end during a run, so only releases free a lock.
const TTL_MS: u64 = 600_000;

/// One grant as the client saw it: which lock, its token, when the grant arrived and when its
/// release was sent (since the run started).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// Index of the lock id.
    pub lock: usize,
    /// The fencing token.
    pub token: u64,
    /// When the acquire's answer arrived.
    pub granted: Duration,
    /// When the release was sent.
    pub released: Duration,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AcquireAnswer {
    acquired: bool,
    token: Option<u64>,
}

#[derive(Deserialize)]
struct ReleaseAnswer {
    released: bool,
}

#[derive(Deserialize)]
struct StatusAnswer {
    locked: bool,
}

/// What one connection did.
#[derive(Default)]
struct Work {
    samples: Samples,
    tally: Tally,
    grants: Vec<Grant>,
    refused: u64,
}

/// The paths and bodies one run uses.
struct Plan {
    acquire: Uri,
    release: Uri,
    /// The acquire body of each lock id.
    bodies: Vec<Bytes>,
    ids: Vec<String>,
}

/// Runs `lock`.
pub async fn lock(target: &Target, args: &LockArgs) -> Outcome {
    let outcome = Outcome::new("lock", args);
    match run(target, args, outcome.clone()).await {
        Ok(done) => done,
        Err(e) => outcome.failed(format!("{e:#}")),
    }
}

async fn run(target: &Target, args: &LockArgs, mut outcome: Outcome) -> anyhow::Result<Outcome> {
    anyhow::ensure!(args.conns > 0, "--conns must be at least 1");
    anyhow::ensure!(args.locks > 0, "--locks must be at least 1");
    let name = unique_prefix("lock");
    outcome.settings.insert("name".into(), name.clone().into());
    let ids: Vec<String> = (0..args.locks).map(|k| format!("job-{k}")).collect();
    let bodies = ids
        .iter()
        .map(|id| {
            let body = serde_json::json!({"lockId": id, "ttl": TTL_MS});
            Ok(Bytes::from(serde_json::to_vec(&body)?))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let plan = Arc::new(Plan {
        acquire: path_uri(format!("/locks/{name}/acquire"))?,
        release: path_uri(format!("/locks/{name}/release"))?,
        bodies,
        ids,
    });
    let mut opened = Vec::with_capacity(args.conns);
    for _ in 0..args.conns {
        opened.push(Conn::open(target).await?);
    }
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut workers = Vec::with_capacity(args.conns);
    for (c, conn) in opened.into_iter().enumerate() {
        let plan = Arc::clone(&plan);
        let done = Arc::clone(&done);
        let pairs = args.pairs;
        let lock = c % args.locks;
        workers.push(tokio::spawn(async move {
            work(conn, &plan, lock, &done, pairs, start).await
        }));
    }
    let mut all = Work::default();
    for w in workers {
        let w = w.await.context("a load worker panicked")?;
        all.samples.merge(w.samples);
        all.tally.merge(w.tally);
        all.grants.extend(w.grants);
        all.refused += w.refused;
    }
    let elapsed = start.elapsed();
    let completed = all.grants.len() as u64;
    outcome
        .figure("throughput", per_second(completed, elapsed))
        .figure("throughput_unit", "pairs/s")
        .figure("latency", all.samples.summarize())
        .figure("pairs", completed)
        .figure("acquires_refused", all.refused)
        .figure("errors", all.tally.bad_status + all.tally.failed)
        .figure("elapsed_ms", elapsed.as_millis() as u64);

    let mut problems = all.tally.problems(0);
    if completed < args.pairs {
        problems.push(format!(
            "only {completed} of {} pairs completed",
            args.pairs
        ));
    }
    problems.extend(check_grants(&mut all.grants));
    let mut conn = Conn::open(target).await?;
    let mut held = Vec::new();
    for id in &plan.ids {
        let uri = path_uri(format!("/locks/{name}/status?lockId={id}"))?;
        let (status, body) = conn.send(Method::GET, uri).await?;
        let answer: StatusAnswer = serde_json::from_slice(&body).with_context(|| {
            format!(
                "status of {id}: {status} {}",
                String::from_utf8_lossy(&body)
            )
        })?;
        if answer.locked {
            held.push(id.clone());
        }
    }
    if !held.is_empty() {
        problems.push(format!(
            "still locked after every release: {}",
            held.join(", ")
        ));
    }
    Ok(outcome.verdict(Verdict::from_problems(
        problems,
        format!(
            "{completed} grants on {} lock ids: every token new, no two holders of one lock overlapped, every release accepted, every lock free at the end",
            args.locks
        ),
    )))
}

/// One connection's loop: acquire its lock (again at once when refused), release it with the
/// token, until `pairs` pairs are done in all. A pair's latency runs from the acquire that
/// won to the release's answer.
async fn work(
    mut conn: Conn,
    plan: &Plan,
    lock: usize,
    done: &AtomicU64,
    pairs: u64,
    start: Instant,
) -> Work {
    let mut w = Work::default();
    let failed = |w: &mut Work, what: String| {
        w.tally.failed += 1;
        w.tally.note(|| what);
    };
    while done.load(Ordering::Relaxed) < pairs {
        let sent = Instant::now();
        let answer = conn
            .send_body(
                Method::POST,
                plan.acquire.clone(),
                plan.bodies[lock].clone(),
            )
            .await;
        let (status, body) = match answer {
            Ok(a) => a,
            Err(e) => {
                // A lost connection may have lost a grant too: the lock would stay held until
                // its lease ends, so this connection stops rather than wait.
                failed(&mut w, format!("acquire: {e:#}"));
                break;
            }
        };
        let granted = start.elapsed();
        let token = match serde_json::from_slice::<AcquireAnswer>(&body) {
            Ok(a) if status == StatusCode::OK && a.acquired => a.token,
            Ok(_) if status == StatusCode::OK => {
                w.refused += 1;
                continue;
            }
            _ => {
                w.tally.bad_answer("acquire: ", status, &body);
                break;
            }
        };
        let Some(token) = token else {
            failed(&mut w, "acquire: a grant without a token".into());
            break;
        };
        let released = start.elapsed();
        let body = format!(r#"{{"lockId":"{}","token":{token}}}"#, plan.ids[lock]);
        match conn
            .send_body(Method::POST, plan.release.clone(), Bytes::from(body))
            .await
        {
            Ok((status, body))
                if status == StatusCode::OK
                    && serde_json::from_slice::<ReleaseAnswer>(&body).is_ok_and(|r| r.released) =>
            {
                w.samples.record(sent.elapsed());
                w.tally.ok += 1;
                w.grants.push(Grant {
                    lock,
                    token,
                    granted,
                    released,
                });
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok((status, body)) => {
                w.tally.bad_answer("release: ", status, &body);
                break;
            }
            Err(e) => {
                failed(&mut w, format!("release: {e:#}"));
                break;
            }
        }
    }
    w
}

/// Problems with the grants: a token given twice, or a grant that arrived before the release
/// of the previous grant of the same lock was sent (two holders at once).
pub fn check_grants(grants: &mut [Grant]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut seen = HashSet::with_capacity(grants.len());
    let repeated = grants.iter().filter(|g| !seen.insert(g.token)).count();
    if repeated > 0 {
        problems.push(format!("{repeated} grants reused an earlier token"));
    }
    grants.sort_by_key(|g| (g.lock, g.token));
    let overlaps: Vec<String> = grants
        .windows(2)
        .filter(|p| p[0].lock == p[1].lock && p[1].granted < p[0].released)
        .take(5)
        .map(|p| {
            format!(
                "lock {} granted token {} at {:?}, before token {}'s release was sent at {:?}",
                p[1].lock, p[1].token, p[1].granted, p[0].token, p[0].released
            )
        })
        .collect();
    if !overlaps.is_empty() {
        problems.push(format!("two holders at once: {}", overlaps.join("; ")));
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(lock: usize, token: u64, granted: u64, released: u64) -> Grant {
        Grant {
            lock,
            token,
            granted: Duration::from_millis(granted),
            released: Duration::from_millis(released),
        }
    }

    #[test]
    fn grants_one_after_another_pass() {
        let mut g = vec![grant(0, 2, 5, 6), grant(0, 1, 1, 2), grant(1, 3, 1, 9)];
        assert!(check_grants(&mut g).is_empty());
    }

    #[test]
    fn a_grant_before_the_previous_release_is_two_holders() {
        let mut g = vec![grant(0, 1, 1, 5), grant(0, 2, 3, 6)];
        let problems = check_grants(&mut g);
        assert_eq!(problems.len(), 1);
        assert!(problems[0].contains("two holders"), "{problems:?}");
    }

    #[test]
    fn a_token_given_twice_is_caught() {
        let mut g = vec![grant(0, 1, 1, 2), grant(1, 1, 1, 2)];
        assert!(check_grants(&mut g)[0].contains("reused"));
    }
}

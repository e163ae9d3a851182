//! `cold-start`: one request at a time, each to a counter that never existed, so every request
//! pays for activating a new object (and creating its storage).

use std::time::{Duration, Instant};

use hyper::{Method, StatusCode};
use serde::Serialize;

use super::{Outcome, Verdict, truncate, unique_prefix};
use crate::http::{Conn, Target, counter_value, path_uri};
use crate::server_stats::{self, RuntimeDelta};
use crate::stats::{Samples, per_second};

/// Settings of `cold-start`.
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct ColdStartArgs {
    /// Number of fresh counters, each incremented once.
    #[arg(long, default_value_t = 2_000)]
    pub objects: u64,
}

/// What came back for one first increment.
#[derive(Debug)]
pub enum FirstAnswer {
    /// 200 with this counter value.
    Value(i64),
    /// A status other than 200, or a 200 whose body was not `{"value":n}`.
    Wrong(String),
    /// No answer at all.
    Failed(String),
}

/// Runs `cold-start`.
pub async fn cold_start(target: &Target, args: &ColdStartArgs) -> Outcome {
    let mut outcome = Outcome::new("cold-start", args);
    let prefix = unique_prefix("cold");
    outcome
        .settings
        .insert("prefix".into(), prefix.clone().into());
    let (samples, answers, elapsed) = match touch_each(target, &prefix, args.objects).await {
        Ok(done) => done,
        Err((answers, e)) => {
            outcome.figure("errors", answers.len());
            return outcome.failed(e);
        }
    };
    first_touch_figures(&mut outcome, samples, &answers, elapsed);
    outcome.verdict(cold_verdict(args.objects, &answers, 1, "fresh"))
}

/// The server configuration `cold-evicted` needs: the demo's `Counter`, evicted after
/// [`EVICT_IDLE_MS`] without events.
pub const EVICTED_CONFIG: &str = r#"# `rookery-bench cold-evicted`: the demo's Counter, evicted after 250 ms without events,
# so that a second request finds the object's database on disk and no live activation.
[server]
idle_timeout_ms = 250

[durable_objects]
bindings = [
  { name = "COUNTER", class_name = "Counter" },
]

[[migrations]]
tag = "v1"
new_sqlite_classes = ["Counter"]

[[routes]]
path = "/counter/:name"
binding = "COUNTER"
name_from = "name"
"#;

/// The idle time [`EVICTED_CONFIG`] sets.
pub const EVICT_IDLE_MS: u64 = 250;

/// How long `cold-evicted` waits for the server to have no live object.
const EVICT_PATIENCE: Duration = Duration::from_secs(60);

/// Settings of `cold-evicted`.
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct ColdEvictedArgs {
    /// Number of counters, each incremented once (untimed), evicted, then incremented again.
    #[arg(long, default_value_t = 2_000)]
    pub objects: u64,
}

/// Runs `cold-evicted`: K counters get one increment each (untimed); once the server reports
/// no live object (idle eviction, see [`EVICTED_CONFIG`]) each gets a second increment, one at
/// a time, which must answer 2 — each timed request activates an object whose file exists.
pub async fn cold_evicted(target: &Target, args: &ColdEvictedArgs) -> Outcome {
    let mut outcome = Outcome::new("cold-evicted", args);
    let prefix = unique_prefix("evicted");
    outcome
        .settings
        .insert("prefix".into(), prefix.clone().into());
    // Set-up: create every object.
    let (_, created, _) = match touch_each(target, &prefix, args.objects).await {
        Ok(done) => done,
        Err((_, e)) => return outcome.failed(format!("set-up: {e}")),
    };
    let setup = cold_verdict(args.objects, &created, 1, "fresh");
    if !setup.ok {
        return outcome.failed(format!("set-up: {}", setup.detail));
    }
    // Wait until all of them have left memory.
    let waited = Instant::now();
    let mut conn = match Conn::open(target).await {
        Ok(c) => c,
        Err(e) => return outcome.failed(format!("{e:#}")),
    };
    let before = loop {
        tokio::time::sleep(Duration::from_millis(EVICT_IDLE_MS)).await;
        match server_stats::fetch(&mut conn).await {
            Ok(stats) if stats.runtime.live_objects == 0 => break stats,
            Ok(stats) if waited.elapsed() > EVICT_PATIENCE => {
                return outcome.failed(format!(
                    "{} objects still live {} s after the set-up (is the server running                      `rookery-bench cold-evicted-config`?)",
                    stats.runtime.live_objects,
                    EVICT_PATIENCE.as_secs()
                ));
            }
            Ok(_) => {}
            Err(e) => return outcome.failed(format!("{e:#}")),
        }
    };
    outcome.figure("evict_wait_ms", waited.elapsed().as_millis() as u64);
    drop(conn);
    let (samples, answers, elapsed) = match touch_each(target, &prefix, args.objects).await {
        Ok(done) => done,
        Err((answers, e)) => {
            outcome.figure("errors", answers.len());
            return outcome.failed(e);
        }
    };
    first_touch_figures(&mut outcome, samples, &answers, elapsed);
    if let Ok(mut conn) = Conn::open(target).await {
        if let Ok(after) = server_stats::fetch(&mut conn).await {
            let delta = RuntimeDelta::between(&before, &after);
            outcome
                .figure("activations", delta.activations)
                .figure("file_syncs", delta.file_syncs);
        }
    }
    outcome.verdict(cold_verdict(args.objects, &answers, 2, "evicted"))
}

/// One increment on each of `objects` counters `{prefix}-{i}`, one at a time over one
/// connection; the latency of each, the answers and the elapsed time. On a connection that
/// cannot be reopened, the answers so far and the error.
async fn touch_each(
    target: &Target,
    prefix: &str,
    objects: u64,
) -> Result<(Samples, Vec<FirstAnswer>, Duration), (Vec<FirstAnswer>, String)> {
    // One connection for the whole run: the figure is object activation, not TCP set-up.
    let mut conn = match Conn::open(target).await {
        Ok(c) => c,
        Err(e) => return Err((Vec::new(), format!("{e:#}"))),
    };
    let capacity = usize::try_from(objects).unwrap_or(0);
    let mut samples = Samples::with_capacity(capacity);
    let mut answers = Vec::with_capacity(capacity);
    let start = Instant::now();
    for i in 0..objects {
        let uri = match path_uri(format!("/counter/{prefix}-{i}/increment")) {
            Ok(u) => u,
            Err(e) => return Err((answers, format!("{e:#}"))),
        };
        let sent = Instant::now();
        let answer = match conn.send(Method::POST, uri).await {
            Ok((status, body)) => {
                samples.record(sent.elapsed());
                if status != StatusCode::OK {
                    FirstAnswer::Wrong(format!(
                        "{status} {}",
                        truncate(&String::from_utf8_lossy(&body), 120)
                    ))
                } else {
                    match counter_value(&body) {
                        Ok(v) => FirstAnswer::Value(v),
                        Err(e) => FirstAnswer::Wrong(format!("{e:#}")),
                    }
                }
            }
            Err(e) => {
                let failed = FirstAnswer::Failed(format!("{e:#}"));
                // Keep going on a fresh connection so one hiccup does not hide the rest.
                match Conn::open(target).await {
                    Ok(c) => conn = c,
                    Err(e) => {
                        answers.push(failed);
                        return Err((answers, format!("reconnecting after request {i}: {e:#}")));
                    }
                }
                failed
            }
        };
        answers.push(answer);
    }
    Ok((samples, answers, start.elapsed()))
}

/// The figures of a run of [`touch_each`].
fn first_touch_figures(
    outcome: &mut Outcome,
    samples: Samples,
    answers: &[FirstAnswer],
    elapsed: Duration,
) {
    outcome
        .figure("throughput", per_second(samples.len() as u64, elapsed))
        .figure("throughput_unit", "objects/s")
        .figure("latency", samples.summarize())
        .figure(
            "errors",
            answers
                .iter()
                .filter(|a| !matches!(a, FirstAnswer::Value(_)))
                .count(),
        );
}

/// `cold-start` passes when every fresh counter answered 200 with value 1 (anything else means
/// the object was not new, or its first write went wrong); `cold-evicted` when every evicted
/// counter answered 2 (its first increment survived eviction). `kind` names the counters.
pub fn cold_verdict(objects: u64, answers: &[FirstAnswer], expect: i64, kind: &str) -> Verdict {
    let mut wrong_value = 0u64;
    let mut wrong = 0u64;
    let mut failed = 0u64;
    let mut first = None;
    for (i, answer) in answers.iter().enumerate() {
        match answer {
            FirstAnswer::Value(v) if *v == expect => {}
            FirstAnswer::Value(v) => {
                wrong_value += 1;
                first.get_or_insert_with(|| format!("object {i} answered value {v}"));
            }
            FirstAnswer::Wrong(e) => {
                wrong += 1;
                first.get_or_insert_with(|| format!("object {i}: {e}"));
            }
            FirstAnswer::Failed(e) => {
                failed += 1;
                first.get_or_insert_with(|| format!("object {i}: {e}"));
            }
        }
    }
    let mut problems = Vec::new();
    if answers.len() as u64 != objects {
        problems.push(format!("{} of {objects} objects tried", answers.len()));
    }
    if wrong_value + wrong + failed > 0 {
        problems.push(format!(
            "{wrong_value} answered a value other than {expect}, {wrong} a wrong answer, {failed} \
             nothing (first: {})",
            first.unwrap_or_default()
        ));
    }
    Verdict::from_problems(
        problems,
        format!("all {objects} {kind} counters answered 200 with value {expect}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_ones_pass() {
        let answers = vec![FirstAnswer::Value(1), FirstAnswer::Value(1)];
        assert!(cold_verdict(2, &answers, 1, "fresh").ok);
    }

    #[test]
    fn reused_or_failed_objects_fail() {
        let answers = vec![
            FirstAnswer::Value(1),
            FirstAnswer::Value(2),
            FirstAnswer::Failed("timeout".into()),
        ];
        let v = cold_verdict(3, &answers, 1, "fresh");
        assert!(!v.ok);
        assert!(
            v.detail.contains("1 answered a value other than 1"),
            "{}",
            v.detail
        );
        assert!(v.detail.contains("1 nothing"), "{}", v.detail);
        assert!(
            v.detail.contains("object 1 answered value 2"),
            "{}",
            v.detail
        );
    }

    #[test]
    fn evicted_counters_must_answer_two() {
        let answers = vec![FirstAnswer::Value(2), FirstAnswer::Value(1)];
        let v = cold_verdict(2, &answers, 2, "evicted");
        assert!(!v.ok);
        assert!(
            v.detail.contains("object 1 answered value 1"),
            "{}",
            v.detail
        );
        let v = cold_verdict(1, &[FirstAnswer::Value(2)], 2, "evicted");
        assert!(v.ok);
        assert!(
            v.detail
                .contains("evicted counters answered 200 with value 2")
        );
    }

    #[test]
    fn evicted_config_is_a_counter_with_a_short_idle_time() {
        assert!(EVICTED_CONFIG.contains(&format!("idle_timeout_ms = {EVICT_IDLE_MS}")));
        assert!(EVICTED_CONFIG.contains(r#"path = "/counter/:name""#));
    }

    #[test]
    fn missing_answers_fail() {
        let v = cold_verdict(3, &[FirstAnswer::Value(1)], 1, "fresh");
        assert!(!v.ok);
        assert!(v.detail.contains("1 of 3"), "{}", v.detail);
    }
}

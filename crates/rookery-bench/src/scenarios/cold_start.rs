//! `cold-start`: one request at a time, each to a counter that never existed, so every request
//! pays for activating a new object (and creating its storage).

use std::time::Instant;

use hyper::{Method, StatusCode};
use serde::Serialize;

use super::{Outcome, Verdict, truncate, unique_prefix};
use crate::http::{Conn, Target, counter_value, path_uri};
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
    // One connection for the whole run: the figure is object activation, not TCP set-up.
    let mut conn = match Conn::open(target).await {
        Ok(c) => c,
        Err(e) => return outcome.failed(format!("{e:#}")),
    };
    let capacity = usize::try_from(args.objects).unwrap_or(0);
    let mut samples = Samples::with_capacity(capacity);
    let mut answers = Vec::with_capacity(capacity);
    let start = Instant::now();
    for i in 0..args.objects {
        let uri = match path_uri(format!("/counter/{prefix}-{i}/increment")) {
            Ok(u) => u,
            Err(e) => return outcome.failed(format!("{e:#}")),
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
                        outcome.figure("errors", answers.len());
                        return outcome.failed(format!("reconnecting after request {i}: {e:#}"));
                    }
                }
                failed
            }
        };
        answers.push(answer);
    }
    let elapsed = start.elapsed();
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
    outcome.verdict(cold_verdict(args.objects, &answers))
}

/// `cold-start` passes when every fresh counter answered 200 with value 1 (anything else means
/// the object was not new, or its first write went wrong).
pub fn cold_verdict(objects: u64, answers: &[FirstAnswer]) -> Verdict {
    let mut wrong_value = 0u64;
    let mut wrong = 0u64;
    let mut failed = 0u64;
    let mut first = None;
    for (i, answer) in answers.iter().enumerate() {
        match answer {
            FirstAnswer::Value(1) => {}
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
            "{wrong_value} answered a value other than 1, {wrong} a wrong answer, {failed} \
             nothing (first: {})",
            first.unwrap_or_default()
        ));
    }
    Verdict::from_problems(
        problems,
        format!("all {objects} fresh counters answered 200 with value 1"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_ones_pass() {
        let answers = vec![FirstAnswer::Value(1), FirstAnswer::Value(1)];
        assert!(cold_verdict(2, &answers).ok);
    }

    #[test]
    fn reused_or_failed_objects_fail() {
        let answers = vec![
            FirstAnswer::Value(1),
            FirstAnswer::Value(2),
            FirstAnswer::Failed("timeout".into()),
        ];
        let v = cold_verdict(3, &answers);
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
    fn missing_answers_fail() {
        let v = cold_verdict(3, &[FirstAnswer::Value(1)]);
        assert!(!v.ok);
        assert!(v.detail.contains("1 of 3"), "{}", v.detail);
    }
}

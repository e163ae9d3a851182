//! `limiters`: decisions per second of each of seed 002's rate-limiting algorithms (the demo's
//! `AdvancedRateLimiter` under `/limits/:name/check...`), then a check that every key was
//! allowed exactly its limit: never one more, never one fewer.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::counter::{drive_posts, load_figures};
use super::{Outcome, Verdict, unique_prefix};
use crate::http::{Target, path_uri};

/// Settings of `limiters`.
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct LimitersArgs {
    /// The algorithm asked.
    #[arg(long, value_enum, default_value_t = Algorithm::FixedWindow)]
    pub algorithm: Algorithm,
    /// Concurrent connections.
    #[arg(long, default_value_t = 32)]
    pub conns: usize,
    /// Decisions asked of each algorithm.
    #[arg(long, default_value_t = 20_000)]
    pub decisions: u64,
    /// Keys per limiter; decision i is for key i % keys. Each key's limit is half the
    /// decisions it gets, so half are allowed and half refused.
    #[arg(long, default_value_t = 100)]
    pub keys: u64,
}

/// Seed 002's rate-limiting algorithms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Algorithm {
    /// `/check/fixed-window` `{key, limit, window}`.
    FixedWindow,
    /// `/check/sliding-window` `{key, limit, window}`.
    SlidingWindow,
    /// `/check/token-bucket` `{key, capacity, refillRate, tokens}`.
    TokenBucket,
    /// `/check/leaky-bucket` `{key, capacity, leakRate}`.
    LeakyBucket,
}

impl Algorithm {
    /// Every algorithm, in the report's order.
    pub const ALL: [Algorithm; 4] = [
        Algorithm::FixedWindow,
        Algorithm::SlidingWindow,
        Algorithm::TokenBucket,
        Algorithm::LeakyBucket,
    ];

    /// The name on the command line and in the path after `/check/`.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::FixedWindow => "fixed-window",
            Algorithm::SlidingWindow => "sliding-window",
            Algorithm::TokenBucket => "token-bucket",
            Algorithm::LeakyBucket => "leaky-bucket",
        }
    }

    /// The request body for `key` with `limit` places.
    fn body(self, key: &str, limit: u64) -> serde_json::Value {
        match self {
            Algorithm::TokenBucket => {
                json!({"key": key, "capacity": limit, "refillRate": CRAWL, "tokens": 1})
            }
            Algorithm::LeakyBucket => json!({"key": key, "capacity": limit, "leakRate": CRAWL}),
            Algorithm::FixedWindow | Algorithm::SlidingWindow => {
                json!({"key": key, "limit": limit, "window": YEAR_MS})
            }
        }
    }
}

/// A window long enough that nothing frees up during a run (a year, in ms).
const YEAR_MS: u64 = 365 * 24 * 3600 * 1000;
/// A refill or leak rate so slow that no whole token frees up during a run (per second).
const CRAWL: f64 = 0.000_001;

/// The part of every limiter answer the verdict reads.
#[derive(Deserialize)]
struct Decision {
    allowed: bool,
}

/// Runs `limiters` against a limiter object of its own.
pub async fn limiters(target: &Target, args: &LimitersArgs) -> Outcome {
    let outcome = Outcome::new("limiters", args);
    match run(target, args, outcome.clone()).await {
        Ok(done) => done,
        Err(e) => outcome.failed(format!("{e:#}")),
    }
}

async fn run(
    target: &Target,
    args: &LimitersArgs,
    mut outcome: Outcome,
) -> anyhow::Result<Outcome> {
    anyhow::ensure!(args.keys > 0, "--keys must be at least 1");
    anyhow::ensure!(
        args.decisions >= 2 * args.keys,
        "--decisions must be at least twice --keys (each key's limit is half its decisions)"
    );
    let algorithm = args.algorithm.as_str();
    let name = unique_prefix(algorithm);
    outcome.settings.insert("name".into(), name.clone().into());
    let uri = path_uri(format!("/limits/{name}/check/{algorithm}"))?;
    let sent = per_key(args.decisions, args.keys);
    let limits: Vec<u64> = sent.iter().map(|n| n / 2).collect();
    let posts = limits
        .iter()
        .enumerate()
        .map(|(k, &limit)| {
            let body = serde_json::to_vec(&args.algorithm.body(&format!("key-{k}"), limit))?;
            Ok((uri.clone(), Bytes::from(body)))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let load = drive_posts(target, args.conns, args.decisions, posts, true).await?;
    load_figures(&mut outcome, &load);
    outcome.figure("throughput_unit", "decisions/s");
    let mut allowed = vec![0_u64; limits.len()];
    let mut unreadable = 0_u64;
    for (i, body) in &load.answers {
        match serde_json::from_slice::<Decision>(body) {
            Ok(d) if d.allowed => allowed[(i % args.keys) as usize] += 1,
            Ok(_) => {}
            Err(_) => unreadable += 1,
        }
    }
    let total: u64 = allowed.iter().sum();
    outcome.figure("allowed", total);
    let mut problems = load.tally.problems(args.decisions);
    if unreadable > 0 {
        problems.push(format!("{unreadable} answers had no `allowed`"));
    }
    let wrong: Vec<String> = allowed
        .iter()
        .zip(&limits)
        .enumerate()
        .filter(|(_, (a, l))| a != l)
        .take(5)
        .map(|(k, (a, l))| format!("key-{k} allowed {a} of limit {l}"))
        .collect();
    if !wrong.is_empty() {
        problems.push(format!(
            "keys not held to their limit: {}",
            wrong.join(", ")
        ));
    }
    let expected: u64 = limits.iter().sum();
    Ok(outcome.verdict(Verdict::from_problems(
        problems,
        format!(
            "all {} decisions answered 200; each of {} keys allowed exactly its limit ({expected} allowed in all)",
            args.decisions, args.keys
        ),
    )))
}

/// How many of `decisions` go to each of `keys` keys when decision i goes to key i % keys.
fn per_key(decisions: u64, keys: u64) -> Vec<u64> {
    (0..keys)
        .map(|k| decisions / keys + u64::from(k < decisions % keys))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions_are_spread_over_keys_as_the_driver_sends_them() {
        assert_eq!(per_key(10, 3), vec![4, 3, 3]);
        assert_eq!(per_key(9, 3), vec![3, 3, 3]);
        assert_eq!(per_key(20_000, 100).iter().sum::<u64>(), 20_000);
    }

    #[test]
    fn bodies_carry_each_algorithms_fields() {
        assert_eq!(Algorithm::FixedWindow.body("k", 5)["limit"], 5);
        assert_eq!(Algorithm::SlidingWindow.body("k", 5)["window"], YEAR_MS);
        assert_eq!(Algorithm::TokenBucket.body("k", 5)["capacity"], 5);
        assert_eq!(Algorithm::LeakyBucket.body("k", 5)["leakRate"], CRAWL);
    }
}

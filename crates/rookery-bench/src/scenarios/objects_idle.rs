//! `objects-idle`: make K counters live (one increment each), leave them idle in memory and
//! measure what each costs the server in resident memory.

use serde::Serialize;

use super::counter::drive;
use super::ws_idle::settle;
use super::{Outcome, Verdict, unique_prefix};
use crate::http::{Conn, Target, path_uri, read_counter};
use crate::server_stats;
use crate::sys::{check_pid, rss_kib};

/// The server configuration `objects-idle` needs: the demo's Counter, kept in memory for an
/// hour and with room for 200 000 live objects, so that no object leaves memory during the run.
pub const CONFIG: &str = r#"# `rookery-bench objects-idle`: counters stay live (no idle eviction within the run).
[server]
idle_timeout_ms = 3600000
max_live_objects = 200000

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

/// Counters read back after the run to check their values (evenly spread over all of them).
const CHECKED: u64 = 1_000;

/// Settings of `objects-idle`.
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct ObjectsIdleArgs {
    /// Counters to make live, each incremented once.
    #[arg(long, default_value_t = 100_000)]
    pub objects: u64,
    /// Concurrent connections for the increments.
    #[arg(long, default_value_t = 32)]
    pub conns: usize,
    /// Server process id, to read its memory from /proc (required).
    #[arg(long)]
    #[serde(skip)]
    pub pid: u32,
}

/// Runs `objects-idle`.
pub async fn objects_idle(target: &Target, args: &ObjectsIdleArgs) -> Outcome {
    let mut outcome = Outcome::new("objects-idle", args);
    let prefix = unique_prefix("idle-obj");
    outcome
        .settings
        .insert("prefix".into(), prefix.clone().into());
    match objects_idle_inner(target, args, &prefix, &mut outcome).await {
        Ok(verdict) => outcome.verdict(verdict),
        Err(e) => outcome.failed(format!("{e:#}")),
    }
}

async fn objects_idle_inner(
    target: &Target,
    args: &ObjectsIdleArgs,
    prefix: &str,
    outcome: &mut Outcome,
) -> anyhow::Result<Verdict> {
    anyhow::ensure!(args.objects > 0, "--objects must be at least 1");
    check_pid(args.pid)?;
    let mut conn = Conn::open(target).await?;
    let before_stats = server_stats::fetch(&mut conn).await?;
    let before = rss_kib(args.pid)?;
    let paths = (0..args.objects)
        .map(|k| path_uri(format!("/counter/{prefix}-{k}/increment")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let load = drive(target, args.conns, args.objects, paths).await?;
    let mut problems = load.tally.problems(args.objects);
    let (after, settled, took) = settle(args.pid).await?;
    // The first connection idled through the increments: the server may have closed it.
    let mut conn = Conn::open(target).await?;
    let stats = server_stats::fetch(&mut conn).await?;
    let live = stats
        .runtime
        .live_objects
        .saturating_sub(before_stats.runtime.live_objects);
    let per_object = (after as f64 - before as f64) / args.objects as f64;
    outcome
        .figure("increments_ms", load.elapsed.as_millis() as u64)
        .figure("live_objects", live)
        .figure("open_databases", stats.runtime.open_databases)
        .figure("live_bytes", stats.runtime.live_bytes)
        .figure("rss_before_kib", before)
        .figure("rss_after_kib", after)
        .figure("kib_per_object", (per_object * 10.0).round() / 10.0)
        .figure("rss_settled", settled)
        .figure("settle_ms", took.as_millis() as u64);
    if live < args.objects {
        problems.push(format!(
            "only {live} of {} counters are live (run the server with `objects-idle-config`)",
            args.objects
        ));
    }
    // Every counter that answered is live, idle, and holds exactly its one increment.
    let step = (args.objects / CHECKED).max(1);
    let mut wrong = Vec::new();
    for k in (0..args.objects).step_by(usize::try_from(step).unwrap_or(1)) {
        match read_counter(&mut conn, &format!("{prefix}-{k}")).await {
            Ok(1) => {}
            Ok(v) => wrong.push(format!("counter {k} reads {v}, expected 1")),
            Err(e) => wrong.push(format!("counter {k}: {e:#}")),
        }
    }
    if let Some(first) = wrong.first() {
        problems.push(format!(
            "{} counters read wrong (first: {first})",
            wrong.len()
        ));
    }
    Ok(Verdict::from_problems(
        problems,
        format!(
            "all {} counters answered their increment, stayed live and the ones read back hold 1",
            args.objects
        ),
    ))
}

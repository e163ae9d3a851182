//! `rookery-bench run`: every scenario at fixed sizes, each against a freshly started server,
//! then the Markdown report.

use std::path::PathBuf;

use anyhow::{Context, bail};
use serde::Serialize;

use crate::http::Target;
use crate::machine::{Machine, commit, utc_now};
use crate::report::{Meta, Section, render};
use crate::scenarios::Outcome;
use crate::scenarios::alarms::{self, AlarmsArgs};
use crate::scenarios::cold_start::{
    self, ColdEvictedArgs, ColdStartArgs, cold_evicted, cold_start,
};
use crate::scenarios::counter::{CounterManyArgs, CounterOneArgs, counter_many, counter_one};
use crate::scenarios::events::{self, EventsArgs};
use crate::scenarios::limiters::{Algorithm, LimitersArgs, limiters};
use crate::scenarios::lock::{LockArgs, lock};
use crate::scenarios::ws_fanout::{WsFanoutArgs, ws_fanout};
use crate::scenarios::ws_idle::{WsIdleArgs, ws_idle};
use crate::server::{Exit, ServerProcess};
use crate::sys::nofile_hard_limit;

/// The scenario names `--only` accepts.
pub const SCENARIOS: &[&str] = &[
    "counter-one",
    "counter-many",
    "limiters",
    "lock",
    "cold-start",
    "cold-evicted",
    "ws-fanout",
    "ws-idle",
    "alarms",
    "events",
];

/// The WebSocket count `ws-idle` aims at; a machine whose open-file limit is lower says so in
/// the report.
pub const WS_IDLE_TARGET: u64 = 50_000;

/// The server's durability setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Every acknowledged write survives power loss.
    Strict,
    /// Acknowledged writes survive a process crash.
    Relaxed,
}

impl Durability {
    /// The name `rookery serve --durability` takes.
    pub fn as_str(self) -> &'static str {
        match self {
            Durability::Strict => "strict",
            Durability::Relaxed => "relaxed",
        }
    }
}

/// Options of `run`.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// The server binary (built beforehand: `cargo build --release -p rookery-server`).
    #[arg(long, default_value = "target/release/rookery")]
    pub server: PathBuf,
    /// Durability settings to run, comma-separated (e.g. `strict,relaxed`).
    #[arg(long, value_delimiter = ',', default_value = "strict")]
    pub durability: Vec<Durability>,
    /// Write the report here instead of printing it.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Sizes about ten times smaller, for a smoke run.
    #[arg(long)]
    pub quick: bool,
    /// Run only these scenarios, comma-separated (counter-one, counter-many, limiters, lock,
    /// cold-start, cold-evicted, ws-fanout, ws-idle, alarms, events).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// A Markdown file whose text is appended to the report as its "Notes" section (read when
    /// the run starts).
    #[arg(long)]
    pub notes: Option<PathBuf>,
}

/// One scenario at its size.
#[derive(Debug, Clone)]
pub enum Planned {
    /// `counter-one`.
    CounterOne(CounterOneArgs),
    /// `counter-many`.
    CounterMany(CounterManyArgs),
    /// `limiters`, one algorithm.
    Limiters(LimitersArgs),
    /// `lock`.
    Lock(LockArgs),
    /// `cold-start`.
    ColdStart(ColdStartArgs),
    /// `cold-evicted`, on a server with a short idle time.
    ColdEvicted(ColdEvictedArgs),
    /// `ws-fanout`.
    WsFanout(WsFanoutArgs),
    /// `ws-idle`; the server pid is filled in at run time.
    WsIdle(WsIdleArgs),
    /// `alarms`, on a server with the KvStore configuration; the pid is filled in at run time.
    Alarms(AlarmsArgs),
    /// `events`, on a server with the events configuration.
    Events(EventsArgs),
}

impl Planned {
    /// The scenario's name.
    pub fn name(&self) -> &'static str {
        match self {
            Planned::CounterOne(_) => "counter-one",
            Planned::CounterMany(_) => "counter-many",
            Planned::Limiters(_) => "limiters",
            Planned::Lock(_) => "lock",
            Planned::ColdStart(_) => "cold-start",
            Planned::ColdEvicted(_) => "cold-evicted",
            Planned::WsFanout(_) => "ws-fanout",
            Planned::WsIdle(_) => "ws-idle",
            Planned::Alarms(_) => "alarms",
            Planned::Events(_) => "events",
        }
    }

    /// The subcommand arguments that run this scenario on its own against `url`.
    pub fn command(&self, url: &str) -> String {
        format!("{} --url {url} {}", self.name(), self.sizes())
    }

    /// The size flags of this scenario.
    fn sizes(&self) -> String {
        match self {
            Planned::CounterOne(a) => format!("--conns {} --requests {}", a.conns, a.requests),
            Planned::CounterMany(a) => format!(
                "--objects {} --requests {} --conns {}",
                a.objects, a.requests, a.conns
            ),
            Planned::Limiters(a) => format!(
                "--algorithm {} --decisions {} --keys {} --conns {}",
                a.algorithm.as_str(),
                a.decisions,
                a.keys,
                a.conns
            ),
            Planned::Lock(a) => format!(
                "--pairs {} --locks {} --conns {}",
                a.pairs, a.locks, a.conns
            ),
            Planned::ColdStart(a) => format!("--objects {}", a.objects),
            Planned::ColdEvicted(a) => format!("--objects {}", a.objects),
            Planned::WsFanout(a) => format!("--clients {} --messages {}", a.clients, a.messages),
            // `$!` is the server started in the background just before.
            Planned::WsIdle(a) => format!("--clients {} --rooms {} --pid $!", a.clients, a.rooms),
            Planned::Alarms(a) => format!("--objects {} --alarms {} --pid $!", a.objects, a.alarms),
            Planned::Events(a) => format!(
                "--subscriptions {} --events {} --conns {}",
                a.subscriptions, a.events, a.conns
            ),
        }
    }

    /// The configuration the server needs for this scenario, when not the built-in demo.
    pub fn server_config(&self) -> Option<&'static str> {
        match self {
            Planned::Alarms(_) => Some(alarms::CONFIG),
            Planned::ColdEvicted(_) => Some(cold_start::EVICTED_CONFIG),
            Planned::Events(_) => Some(events::CONFIG.as_str()),
            _ => None,
        }
    }

    /// An outcome carrying only this scenario's settings, for failures before it could run.
    fn stub(&self) -> Outcome {
        match self {
            Planned::CounterOne(a) => Outcome::new(self.name(), a),
            Planned::CounterMany(a) => Outcome::new(self.name(), a),
            Planned::Limiters(a) => Outcome::new(self.name(), a),
            Planned::Lock(a) => Outcome::new(self.name(), a),
            Planned::ColdStart(a) => Outcome::new(self.name(), a),
            Planned::ColdEvicted(a) => Outcome::new(self.name(), a),
            Planned::WsFanout(a) => Outcome::new(self.name(), a),
            Planned::WsIdle(a) => Outcome::new(self.name(), a),
            Planned::Alarms(a) => Outcome::new(self.name(), a),
            Planned::Events(a) => Outcome::new(self.name(), a),
        }
    }

    /// Runs the scenario against `target`, served by process `pid`.
    async fn run(&self, target: &Target, pid: u32) -> Outcome {
        match self {
            Planned::CounterOne(a) => counter_one(target, a).await,
            Planned::CounterMany(a) => counter_many(target, a).await,
            Planned::Limiters(a) => limiters(target, a).await,
            Planned::Lock(a) => lock(target, a).await,
            Planned::ColdStart(a) => cold_start(target, a).await,
            Planned::ColdEvicted(a) => cold_evicted(target, a).await,
            Planned::WsFanout(a) => ws_fanout(target, a).await,
            Planned::WsIdle(a) => {
                let mut a = a.clone();
                a.pid = Some(pid);
                ws_idle(target, &a).await
            }
            Planned::Alarms(a) => {
                let mut a = a.clone();
                a.pid = Some(pid);
                alarms::alarms(target, &a).await
            }
            Planned::Events(a) => events::events(target, a).await,
        }
    }
}

/// The scenario list at full size, or about ten times smaller with `quick`, keeping only the
/// names in `only` (all when empty).
pub fn plan(quick: bool, only: &[String]) -> anyhow::Result<Vec<Planned>> {
    for name in only {
        if !SCENARIOS.contains(&name.as_str()) {
            bail!("unknown scenario {name:?}; known: {}", SCENARIOS.join(", "));
        }
    }
    let scale = if quick { 10 } else { 1 };
    let mut all = vec![
        Planned::CounterOne(CounterOneArgs {
            conns: 32,
            requests: 50_000 / scale,
            name: None,
        }),
        Planned::CounterMany(CounterManyArgs {
            objects: 1_000 / scale,
            requests: 50_000 / scale,
            conns: 32,
            warmup: false,
        }),
        Planned::Lock(LockArgs {
            conns: 32,
            pairs: 10_000 / scale,
            locks: 32,
        }),
        Planned::Lock(LockArgs {
            conns: 32,
            pairs: 2_000 / scale,
            locks: 1,
        }),
        Planned::ColdStart(ColdStartArgs {
            objects: 2_000 / scale,
        }),
        Planned::ColdEvicted(ColdEvictedArgs {
            objects: 2_000 / scale,
        }),
        Planned::WsFanout(WsFanoutArgs {
            clients: 1_000 / scale,
            messages: 100 / scale as u32,
            room: None,
            channel_shards: None,
        }),
        Planned::WsFanout(WsFanoutArgs {
            clients: 10_000 / scale,
            messages: 20 / scale as u32,
            room: None,
            channel_shards: None,
        }),
        // About 100 clients per room, as in a busy chat service. 50 000 clients would need
        // more than the open-file hard limit of 20 000 that many machines have (the report
        // says so); 18 000 leaves room for everything else both processes open.
        Planned::WsIdle(WsIdleArgs {
            clients: 10_000 / scale,
            rooms: 100 / scale,
            pid: None,
        }),
        Planned::WsIdle(WsIdleArgs {
            clients: 18_000 / scale,
            rooms: 180 / scale,
            pid: None,
        }),
        Planned::Alarms(AlarmsArgs {
            objects: 10_000 / scale,
            alarms: 100_000 / scale,
            conns: 32,
            window_ms: 1_000,
            pid: None,
        }),
        // One namespace, one and eight webhook subscriptions of every event.
        Planned::Events(EventsArgs {
            subscriptions: 1,
            events: 5_000 / scale,
            conns: 32,
            deliver_timeout_s: 300,
        }),
        Planned::Events(EventsArgs {
            subscriptions: 8,
            events: 5_000 / scale,
            conns: 32,
            deliver_timeout_s: 300,
        }),
    ];
    // The limiters follow counter-many, one row per algorithm.
    let limiter_rows = Algorithm::ALL.map(|algorithm| {
        Planned::Limiters(LimitersArgs {
            algorithm,
            conns: 32,
            decisions: 20_000 / scale,
            keys: 100 / scale,
        })
    });
    all.splice(2..2, limiter_rows);
    Ok(all
        .into_iter()
        .filter(|p| only.is_empty() || only.iter().any(|n| n == p.name()))
        .collect())
}

/// Runs the plan for every durability setting and writes the report.
pub async fn run(args: &RunArgs, load_generator: &str, run_command: String) -> anyhow::Result<()> {
    if !args.server.is_file() {
        bail!(
            "{} not found: build it first with `cargo build --release -p rookery-server`, or \
             pass --server",
            args.server.display()
        );
    }
    let planned = plan(args.quick, &args.only)?;
    let notes = match &args.notes {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("reading the notes {}", path.display()))?,
        ),
        None => None,
    };
    let hard_limit = nofile_hard_limit().ok();
    let largest_ws_idle = planned
        .iter()
        .filter_map(|p| match p {
            Planned::WsIdle(a) => Some(a.clients),
            _ => None,
        })
        .max();
    let total = planned.len() * args.durability.len();
    let mut sections = Vec::new();
    let mut done = 0;
    for &durability in &args.durability {
        let mut outcomes = Vec::with_capacity(planned.len());
        for p in &planned {
            done += 1;
            eprintln!(
                "[{done}/{total}] {} {} (durability {})",
                p.name(),
                p.sizes(),
                durability.as_str()
            );
            let mut outcome = run_one(args, durability, p).await;
            if let (Planned::WsIdle(a), Some(hard), Some(largest)) =
                (p, hard_limit, largest_ws_idle)
            {
                outcome.notes.extend(ws_idle_note(a.clients, largest, hard));
            }
            // Progress on stderr; the report (or stdout) gets the table.
            eprintln!(
                "{}",
                serde_json::to_string(&outcome).unwrap_or_else(|e| e.to_string())
            );
            outcomes.push(outcome);
        }
        sections.push(Section {
            durability: durability.as_str().to_owned(),
            outcomes,
        });
    }
    let first_durability = args.durability.first().map_or("strict", |d| d.as_str());
    let meta = Meta {
        machine: Machine::detect(),
        commit: commit(),
        date: utc_now(),
        load_generator: load_generator.to_owned(),
        run_command,
        scenario_commands: scenario_commands(&planned, first_durability),
        notes,
    };
    let report = render(&meta, &sections);
    match &args.out {
        Some(path) => {
            std::fs::write(path, report).with_context(|| format!("writing {}", path.display()))?;
            eprintln!("wrote {}", path.display());
        }
        None => print!("{report}"),
    }
    let failed = sections
        .iter()
        .flat_map(|s| &s.outcomes)
        .filter(|o| !o.ok)
        .count();
    eprintln!("{} of {total} scenarios passed", total - failed);
    Ok(())
}

/// One scenario on a fresh server; the server's fate is part of the verdict.
async fn run_one(args: &RunArgs, durability: Durability, p: &Planned) -> Outcome {
    let server =
        match ServerProcess::start(&args.server, durability.as_str(), p.server_config()).await {
            Ok(s) => s,
            Err(e) => return p.stub().failed(format!("server did not start: {e:#}")),
        };
    let outcome = match Target::resolve(&server.url).await {
        Ok(target) => p.run(&target, server.pid).await,
        Err(e) => p.stub().failed(format!("{e:#}")),
    };
    match server.stop().await {
        Exit::Clean => outcome,
        // A crash during the run fails the scenario whatever the client saw.
        Exit::DiedEarly(how) => {
            let detail = format!("{}; the server {how} during the scenario", outcome.detail);
            outcome.failed(detail)
        }
        Exit::Unclean(how) => {
            let mut outcome = outcome;
            outcome.detail = format!("{}; note: {how}", outcome.detail);
            outcome
        }
    }
}

/// The commands that repeat `planned` by hand: first those for the demo server the report's
/// reproduction section starts on port 8787, then each scenario that needs a configuration of
/// its own with a server of its own on 8788, 8789, ... (so `$!` of the `ws-idle` lines is
/// still the demo server).
pub fn scenario_commands(planned: &[Planned], durability: &str) -> Vec<String> {
    let mut lines: Vec<String> = planned
        .iter()
        .filter(|p| p.server_config().is_none())
        .map(|p| {
            format!(
                "target/release/rookery-bench {}",
                p.command("http://127.0.0.1:8787")
            )
        })
        .collect();
    for (k, p) in planned
        .iter()
        .filter(|p| p.server_config().is_some())
        .enumerate()
    {
        let port = 8788 + k;
        let config = format!("rookery-{}.toml", p.name());
        lines.push(format!(
            "# {} needs a server of its own, with the configuration `rookery-bench {}-config` \
             prints",
            p.name(),
            p.name()
        ));
        lines.push(format!(
            "target/release/rookery-bench {}-config > {config}",
            p.name()
        ));
        lines.push(format!(
            "target/release/rookery serve --config {config} --listen 127.0.0.1:{port} --data-dir \
             \"$(mktemp -d)\" --durability {durability} &"
        ));
        lines.push(format!(
            "target/release/rookery-bench {}",
            p.command(&format!("http://127.0.0.1:{port}"))
        ));
    }
    lines
}

/// The report note of a `ws-idle` row with `clients` connections when the largest planned
/// size is `largest` and the open-file hard limit is `hard`: said on the largest row when the
/// limit keeps [`WS_IDLE_TARGET`] out of reach.
pub fn ws_idle_note(clients: u64, largest: u64, hard: u64) -> Option<String> {
    // Each WebSocket takes one descriptor in the load generator and one in the server.
    (clients == largest && hard < WS_IDLE_TARGET + 1_000).then(|| {
        format!(
            "{WS_IDLE_TARGET} connections cannot be reached on this machine: the per-process \
             open-file hard limit is {hard}, for the load generator and the server alike, and \
             every WebSocket takes a descriptor in each; {clients} is the largest size this \
             run tries"
        )
    })
}

/// `args` joined into a shell command line, quoting what the shell would split or expand.
pub fn shell_join<'a>(args: impl IntoIterator<Item = &'a str>) -> String {
    args.into_iter()
        .map(|a| {
            let plain = !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c));
            if plain {
                a.to_owned()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_plan_has_every_scenario_at_its_size() {
        let p = plan(false, &[]).unwrap();
        let names: Vec<_> = p.iter().map(Planned::name).collect();
        assert_eq!(
            names,
            [
                "counter-one",
                "counter-many",
                "limiters",
                "limiters",
                "limiters",
                "limiters",
                "lock",
                "lock",
                "cold-start",
                "cold-evicted",
                "ws-fanout",
                "ws-fanout",
                "ws-idle",
                "ws-idle",
                "alarms",
                "events",
                "events"
            ]
        );
        assert_eq!(
            p[0].command("U"),
            "counter-one --url U --conns 32 --requests 50000"
        );
        assert_eq!(
            p[1].command("U"),
            "counter-many --url U --objects 1000 --requests 50000 --conns 32"
        );
        assert_eq!(
            p[2].command("U"),
            "limiters --url U --algorithm fixed-window --decisions 20000 --keys 100 --conns 32"
        );
        assert_eq!(
            p[5].command("U"),
            "limiters --url U --algorithm leaky-bucket --decisions 20000 --keys 100 --conns 32"
        );
        assert_eq!(
            p[6].command("U"),
            "lock --url U --pairs 10000 --locks 32 --conns 32"
        );
        assert_eq!(
            p[7].command("U"),
            "lock --url U --pairs 2000 --locks 1 --conns 32"
        );
        assert_eq!(p[8].command("U"), "cold-start --url U --objects 2000");
        assert_eq!(p[9].command("U"), "cold-evicted --url U --objects 2000");
        assert_eq!(
            p[10].command("U"),
            "ws-fanout --url U --clients 1000 --messages 100"
        );
        assert_eq!(
            p[11].command("U"),
            "ws-fanout --url U --clients 10000 --messages 20"
        );
        assert_eq!(
            p[12].command("U"),
            "ws-idle --url U --clients 10000 --rooms 100 --pid $!"
        );
        assert_eq!(
            p[13].command("U"),
            "ws-idle --url U --clients 18000 --rooms 180 --pid $!"
        );
        assert_eq!(
            p[14].command("U"),
            "alarms --url U --objects 10000 --alarms 100000 --pid $!"
        );
        assert_eq!(
            p[15].command("U"),
            "events --url U --subscriptions 1 --events 5000 --conns 32"
        );
        assert_eq!(
            p[16].command("U"),
            "events --url U --subscriptions 8 --events 5000 --conns 32"
        );
        assert!(p[9].server_config().is_some());
        assert!(p[14].server_config().is_some());
        assert!(p[16].server_config().is_some());
        let own: Vec<_> = p.iter().filter(|p| p.server_config().is_some()).collect();
        assert_eq!(own.len(), 4);
    }

    #[test]
    fn quick_alarms_and_ws_idle_sizes() {
        let only = vec!["alarms".to_owned(), "ws-idle".to_owned()];
        let commands: Vec<_> = plan(true, &only)
            .unwrap()
            .iter()
            .map(|p| p.command("U"))
            .collect();
        assert_eq!(
            commands,
            [
                "ws-idle --url U --clients 1000 --rooms 10 --pid $!",
                "ws-idle --url U --clients 1800 --rooms 18 --pid $!",
                "alarms --url U --objects 1000 --alarms 10000 --pid $!",
            ]
        );
    }

    #[test]
    fn scenarios_with_their_own_config_come_last_on_their_own_server() {
        let p = plan(true, &["alarms".to_owned(), "counter-one".to_owned()]).unwrap();
        let lines = scenario_commands(&p, "relaxed");
        assert_eq!(
            lines[0],
            "target/release/rookery-bench counter-one --url http://127.0.0.1:8787 --conns 32 \
             --requests 5000"
        );
        assert!(lines[1].starts_with("# alarms needs a server of its own"));
        assert_eq!(
            lines[2],
            "target/release/rookery-bench alarms-config > rookery-alarms.toml"
        );
        assert_eq!(
            lines[3],
            "target/release/rookery serve --config rookery-alarms.toml --listen 127.0.0.1:8788 \
             --data-dir \"$(mktemp -d)\" --durability relaxed &"
        );
        assert_eq!(
            lines[4],
            "target/release/rookery-bench alarms --url http://127.0.0.1:8788 --objects 1000 \
             --alarms 10000 --pid $!"
        );
        assert_eq!(lines.len(), 5);
    }

    #[test]
    fn ws_idle_note_only_on_the_largest_row_below_the_target() {
        assert_eq!(ws_idle_note(10_000, 18_000, 20_000), None);
        let note = ws_idle_note(18_000, 18_000, 20_000).unwrap();
        assert!(
            note.starts_with("50000 connections cannot be reached"),
            "{note}"
        );
        assert!(note.contains("hard limit is 20000"), "{note}");
        assert!(note.contains("18000 is the largest size"), "{note}");
        assert_eq!(ws_idle_note(18_000, 18_000, 1_048_576), None);
    }

    #[test]
    fn quick_plan_is_ten_times_smaller_and_filtered() {
        let only = vec!["counter-one".to_owned(), "ws-fanout".to_owned()];
        let p = plan(true, &only).unwrap();
        let commands: Vec<_> = p.iter().map(|p| p.command("U")).collect();
        assert_eq!(
            commands,
            [
                "counter-one --url U --conns 32 --requests 5000",
                "ws-fanout --url U --clients 100 --messages 10",
                "ws-fanout --url U --clients 1000 --messages 2",
            ]
        );
    }

    #[test]
    fn unknown_scenarios_are_refused() {
        let err = plan(false, &["counter-two".to_owned()]).unwrap_err();
        assert!(err.to_string().contains("unknown scenario \"counter-two\""));
    }

    #[test]
    fn shell_join_quotes_only_when_needed() {
        assert_eq!(
            shell_join([
                "run",
                "--only",
                "counter-one,cold-start",
                "--out",
                "docs/B.md"
            ]),
            "run --only counter-one,cold-start --out docs/B.md"
        );
        assert_eq!(shell_join(["a b", "it's", ""]), "'a b' 'it'\\''s' ''");
    }
}

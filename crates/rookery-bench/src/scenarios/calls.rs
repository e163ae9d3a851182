//! `call-round-trip`: a typed call against `fetch` between the same two objects, in process.
//!
//! The runtime runs inside the benchmark (no server, no sockets): a `Caller` object's turn
//! makes N calls to one `Callee` object one after another, timing each, first as typed calls
//! (`Echo::ping`) and then as `fetch` of the same work, and reports calls/s and the latency of
//! one round trip for each. The callee's turn either only reads (the cost of the call itself)
//! or, with `--writes`, adds to a stored counter (each answer then waits for a disk sync).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use rookery::prelude::*;
use rookery::{Durability, Migration, Runtime, RuntimeOptions};
use serde::{Deserialize, Serialize};

use super::{Outcome, Verdict, unique_prefix};
use crate::stats::{Samples, per_second};

/// Settings of `call-round-trip`.
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct CallRoundTripArgs {
    /// Round trips per way of calling (typed call, fetch).
    #[arg(long, default_value_t = 20_000)]
    pub calls: u64,
    /// Rounds the measured calls are split into; the two ways alternate, in alternating order.
    #[arg(long, default_value_t = 10)]
    pub rounds: u64,
    /// Round trips of each way before the measured rounds, not counted.
    #[arg(long, default_value_t = 1_000)]
    pub warmup: u64,
    /// The callee adds to a stored counter in every call (each answer waits for durability)
    /// instead of only reading it.
    #[arg(long)]
    pub writes: bool,
    /// Relaxed durability (survives a process crash, not power loss) instead of strict.
    #[arg(long)]
    pub relaxed: bool,
    /// Directory the objects' data goes under (a fresh subdirectory, removed afterwards).
    #[arg(long, default_value_os_t = std::env::temp_dir())]
    #[serde(skip)]
    pub data_dir: PathBuf,
}

/// What the callee serves to typed calls.
#[rookery::service]
pub trait Echo {
    /// The callee's counter plus `add` (stored when `write`).
    async fn ping(&mut self, add: i64, write: bool) -> rookery::Result<i64>;
}

/// The object called.
pub struct Callee {
    state: ObjectState,
}

impl Callee {
    fn bump(&self, add: i64, write: bool) -> Result<i64> {
        let storage = self.state.storage();
        let value = storage.get::<i64>("n")?.unwrap_or(0) + add;
        if write {
            storage.put("n", &value)?;
        }
        Ok(value)
    }
}

/// The arguments of `ping`, as `fetch` carries them (JSON body).
#[derive(Serialize, Deserialize)]
struct Ping {
    add: i64,
    write: bool,
}

impl DurableObject for Callee {
    fn new(state: ObjectState, _env: Env) -> Self {
        Self { state }
    }

    /// The same work as `ping`, over HTTP.
    async fn fetch(&mut self, req: Request) -> Result<Response> {
        let ping: Ping = req.json()?;
        Response::json(&self.bump(ping.add, ping.write)?)
    }

    async fn call(&mut self, call: Call) -> Result<Reply> {
        Echo::serve(self, call).await
    }
}

impl Echo for Callee {
    async fn ping(&mut self, add: i64, write: bool) -> Result<i64> {
        self.bump(add, write)
    }
}

/// How the caller reaches the callee.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Way {
    Call,
    Fetch,
}

impl Way {
    fn name(self) -> &'static str {
        match self {
            Way::Call => "call",
            Way::Fetch => "fetch",
        }
    }
}

/// What the caller is asked to do in one turn.
#[derive(Serialize, Deserialize)]
struct Run {
    way: Way,
    callee: String,
    calls: u64,
    write: bool,
}

/// What one run measured, in the caller's turn.
#[derive(Serialize, Deserialize)]
struct Measured {
    /// Nanoseconds of each round trip.
    nanos: Vec<u64>,
    /// Nanoseconds from the first call sent to the last answer.
    elapsed_nanos: u64,
    /// The callee's counter as the last answer said.
    last: i64,
}

/// The object whose turn makes the calls.
pub struct Caller {
    env: Env,
}

impl DurableObject for Caller {
    fn new(_state: ObjectState, env: Env) -> Self {
        Self { env }
    }

    async fn fetch(&mut self, req: Request) -> Result<Response> {
        let run: Run = req.json()?;
        let ns = self.env.namespace("CALLEE")?;
        let typed = ns.clone().typed::<EchoStub>().get_by_name(&run.callee);
        let plain = ns.get_by_name(&run.callee);
        let mut nanos = Vec::with_capacity(usize::try_from(run.calls).unwrap_or(0));
        let mut last = 0;
        let start = Instant::now();
        for _ in 0..run.calls {
            let sent = Instant::now();
            last = match run.way {
                Way::Call => typed.ping(1, run.write).await?,
                Way::Fetch => {
                    let req = Request::post("/ping")?.with_json(&Ping {
                        add: 1,
                        write: run.write,
                    })?;
                    plain.fetch(req).await?.json_body::<i64>()?
                }
            };
            nanos.push(u64::try_from(sent.elapsed().as_nanos()).unwrap_or(u64::MAX));
        }
        let elapsed_nanos = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        Response::json(&Measured {
            nanos,
            elapsed_nanos,
            last,
        })
    }
}

/// Runs `call-round-trip`.
pub async fn call_round_trip(args: &CallRoundTripArgs) -> Outcome {
    let mut outcome = Outcome::new("call-round-trip", args);
    match measure(args, &mut outcome).await {
        Ok(verdict) => outcome.verdict(verdict),
        Err(e) => outcome.failed(format!("{e:#}")),
    }
}

async fn measure(args: &CallRoundTripArgs, outcome: &mut Outcome) -> anyhow::Result<Verdict> {
    let dir = args.data_dir.join(unique_prefix("rookery-bench-calls"));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let result = measure_in(args, &dir, outcome).await;
    if let Err(e) = std::fs::remove_dir_all(&dir) {
        eprintln!("rookery-bench: leaving {}: {e}", dir.display());
    }
    result
}

async fn measure_in(
    args: &CallRoundTripArgs,
    dir: &std::path::Path,
    outcome: &mut Outcome,
) -> anyhow::Result<Verdict> {
    let durability = if args.relaxed {
        Durability::Relaxed
    } else {
        Durability::Strict
    };
    outcome
        .settings
        .insert("durability".into(), format!("{durability:?}").into());
    let runtime = Runtime::builder(dir)
        .class::<Caller>("Caller")
        .class::<Callee>("Callee")
        .binding("CALLER", "Caller")
        .binding("CALLEE", "Callee")
        .migration(Migration {
            tag: "v1".into(),
            new_classes: vec!["Caller".into(), "Callee".into()],
            ..Migration::default()
        })
        .options(RuntimeOptions {
            durability,
            ..RuntimeOptions::default()
        })
        .build()
        .context("starting the runtime")?;
    let caller = runtime.namespace("CALLER")?.get_by_name("caller");
    let run = |way: Way, calls: u64| {
        let caller = caller.clone();
        let write = args.writes;
        async move {
            let req = Request::post("/run")?.with_json(&Run {
                way,
                callee: "callee".into(),
                calls,
                write,
            })?;
            let measured: Measured = caller.fetch(req).await?.json_body()?;
            anyhow::Ok(measured)
        }
    };
    let mut problems = Vec::new();
    let mut expected = 0i64;
    let mut counted = |last: i64, name: &str, calls: u64, problems: &mut Vec<String>| {
        if args.writes {
            expected += i64::try_from(calls).unwrap_or(i64::MAX);
            if last != expected {
                problems.push(format!(
                    "{name}: the callee's counter reads {last}, expected {expected}"
                ));
            }
        } else if last != 1 {
            problems.push(format!("{name}: the callee answered {last}, expected 1"));
        }
    };
    for way in [Way::Call, Way::Fetch] {
        let measured = run(way, args.warmup).await.context("warming up")?;
        counted(measured.last, "warm-up", args.warmup, &mut problems);
    }
    // The two ways take turns, in alternating order, so that neither gets the quieter moments
    // of a shared machine.
    let rounds = args.rounds.max(1);
    let per_round = args.calls.div_ceil(rounds);
    let mut samples = [Samples::default(), Samples::default()];
    let mut elapsed = [Duration::ZERO; 2];
    let mut done = [0u64; 2];
    for round in 0..rounds {
        let order = if round % 2 == 0 {
            [Way::Call, Way::Fetch]
        } else {
            [Way::Fetch, Way::Call]
        };
        for way in order {
            let i = usize::from(way == Way::Fetch);
            let measured = run(way, per_round).await?;
            counted(measured.last, way.name(), per_round, &mut problems);
            for n in &measured.nanos {
                samples[i].record(Duration::from_nanos(*n));
            }
            elapsed[i] += Duration::from_nanos(measured.elapsed_nanos);
            done[i] += per_round;
        }
    }
    for (i, samples) in samples.into_iter().enumerate() {
        let name = [Way::Call, Way::Fetch][i].name();
        outcome.figure(&format!("{name}_per_s"), per_second(done[i], elapsed[i]));
        outcome.figure(&format!("{name}_latency"), samples.summarize());
    }
    runtime.shutdown().await;
    Ok(Verdict::from_problems(
        problems,
        format!(
            "every one of the {} typed calls and {} fetches answered with the callee's counter{}",
            done[0],
            done[1],
            if args.writes {
                ", which holds every write"
            } else {
                ""
            }
        ),
    ))
}

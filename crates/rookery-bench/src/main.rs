//! `rookery-bench`: load generator and benchmark scenarios for a running Rookery server.
//!
//! Each scenario subcommand prints one JSON line: its settings, its figures and a correctness
//! verdict; it exits with status 1 when the verdict fails. `run` starts the server itself for
//! every scenario and writes a Markdown report.

mod http;
mod machine;
mod report;
mod runner;
mod scenarios;
mod server;
mod server_stats;
mod stats;
mod sys;

use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::http::Target;
use crate::runner::{RunArgs, shell_join};
use crate::scenarios::Outcome;
use crate::scenarios::alarms::{AlarmsArgs, alarms};
use crate::scenarios::calls::{CallRoundTripArgs, call_round_trip};
use crate::scenarios::cold_start::{ColdEvictedArgs, ColdStartArgs, cold_evicted, cold_start};
use crate::scenarios::counter::{CounterManyArgs, CounterOneArgs, counter_many, counter_one};
use crate::scenarios::events::{EventsArgs, events};
use crate::scenarios::limiters::{LimitersArgs, limiters};
use crate::scenarios::lock::{LockArgs, lock};
use crate::scenarios::objects_idle::{ObjectsIdleArgs, objects_idle};
use crate::scenarios::ws_fanout::{WsFanoutArgs, ws_fanout};
use crate::scenarios::ws_idle::{WsIdleArgs, ws_idle};

#[derive(Parser)]
#[command(
    name = "rookery-bench",
    version,
    about = "Load generator and benchmark scenarios for Rookery"
)]
struct Cli {
    /// Tokio worker threads of the load generator; 1 runs a current-thread runtime.
    #[arg(long, global = true, default_value_t = 1)]
    threads: usize,
    #[command(subcommand)]
    command: Command,
}

/// Where a scenario sends its load.
#[derive(clap::Args)]
struct Server {
    /// Base URL of the server under test.
    #[arg(long, default_value = "http://127.0.0.1:8787")]
    url: String,
}

#[derive(Subcommand)]
enum Command {
    /// N increments of one counter over C connections; checks the counter reads N.
    CounterOne {
        #[command(flatten)]
        server: Server,
        #[command(flatten)]
        args: CounterOneArgs,
    },
    /// N increments over K counters (request i to counter i % K); checks every counter.
    CounterMany {
        #[command(flatten)]
        server: Server,
        #[command(flatten)]
        args: CounterManyArgs,
    },
    /// N decisions of one rate-limiting algorithm over K keys (seed 002's limiter); checks
    /// each key was allowed exactly its limit.
    Limiters {
        #[command(flatten)]
        server: Server,
        #[command(flatten)]
        args: LimitersArgs,
    },
    /// Acquire/release pairs of seed 002's distributed lock over C connections and L lock
    /// ids; checks no two holders overlapped and every token was new.
    Lock {
        #[command(flatten)]
        server: Server,
        #[command(flatten)]
        args: LockArgs,
    },
    /// N webhook subscriptions of one namespace receive E events published over C connections
    /// (events.do's `Subscriptions`); events/s published and delivered, publish-to-delivery
    /// latency; checks every subscription got every acknowledged event, in order. Needs a
    /// server with the `events-config` configuration.
    Events {
        #[command(flatten)]
        server: Server,
        #[command(flatten)]
        args: EventsArgs,
    },
    /// Prints the server configuration `events` needs (examples/events.toml's routes, loopback
    /// receivers allowed).
    EventsConfig,
    /// One increment each on K counters never used before, one at a time.
    ColdStart {
        #[command(flatten)]
        server: Server,
        #[command(flatten)]
        args: ColdStartArgs,
    },
    /// K counters incremented once, left idle until evicted, then incremented again one at a
    /// time (each timed request activates an object whose file exists). Needs a server with
    /// the `cold-evicted-config` configuration.
    ColdEvicted {
        #[command(flatten)]
        server: Server,
        #[command(flatten)]
        args: ColdEvictedArgs,
    },
    /// Prints the server configuration `cold-evicted` needs (Counter, 250 ms idle eviction).
    ColdEvictedConfig,
    /// M chat clients in one room; one sends R messages; latency until all have each one.
    WsFanout {
        #[command(flatten)]
        server: Server,
        #[command(flatten)]
        args: WsFanoutArgs,
    },
    /// Holds M WebSockets open over R rooms and reports the server's memory per socket.
    WsIdle {
        #[command(flatten)]
        server: Server,
        #[command(flatten)]
        args: WsIdleArgs,
    },
    /// K KvStore objects, N keys with a TTL expiring within one second; how fast the server
    /// runs the expiry alarms. Needs a server with the `alarms-config` configuration.
    Alarms {
        #[command(flatten)]
        server: Server,
        #[command(flatten)]
        args: AlarmsArgs,
    },
    /// A typed call against `fetch` between the same two objects: calls/s and round-trip
    /// latency. Runs the runtime in this process (no server needed).
    CallRoundTrip {
        #[command(flatten)]
        args: CallRoundTripArgs,
    },
    /// Prints the server configuration `alarms` needs (a KvStore under /kv/:name).
    AlarmsConfig,
    /// Makes K counters live with one increment each, leaves them idle and reports the
    /// server's memory per live object. Needs a server with the `objects-idle-config`
    /// configuration.
    ObjectsIdle {
        #[command(flatten)]
        server: Server,
        #[command(flatten)]
        args: ObjectsIdleArgs,
    },
    /// Prints the server configuration `objects-idle` needs (Counter, no idle eviction).
    ObjectsIdleConfig,
    /// Starts the server for every scenario at fixed sizes and writes the Markdown report
    /// (exits 0 once the report is written, whatever the verdicts).
    Run(RunArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Thousands of sockets need thousands of descriptors; the WebSocket scenarios check again
    // and cap their client count to what is left.
    if let Err(e) = sys::raise_nofile_limit() {
        eprintln!("rookery-bench: warning: {e:#}");
    }
    let runtime = if cli.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cli.threads)
            .enable_all()
            .build()
    };
    let result = runtime
        .context("starting the async runtime")
        .and_then(|rt| rt.block_on(dispatch(cli)));
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("rookery-bench: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// A human description of the load generator's runtime, for the report.
fn runtime_description(threads: usize) -> String {
    if threads <= 1 {
        "rookery-bench on a tokio current-thread runtime, same machine as the server".into()
    } else {
        format!(
            "rookery-bench on a tokio runtime with {threads} workers, same machine as the server"
        )
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let outcome = match cli.command {
        Command::CounterOne { server, args } => counter_one(&target(&server).await?, &args).await,
        Command::CounterMany { server, args } => counter_many(&target(&server).await?, &args).await,
        Command::Limiters { server, args } => limiters(&target(&server).await?, &args).await,
        Command::Lock { server, args } => lock(&target(&server).await?, &args).await,
        Command::Events { server, args } => events(&target(&server).await?, &args).await,
        Command::EventsConfig => {
            print!("{}", *scenarios::events::CONFIG);
            return Ok(ExitCode::SUCCESS);
        }
        Command::ColdStart { server, args } => cold_start(&target(&server).await?, &args).await,
        Command::ColdEvicted { server, args } => cold_evicted(&target(&server).await?, &args).await,
        Command::ColdEvictedConfig => {
            print!("{}", scenarios::cold_start::EVICTED_CONFIG);
            return Ok(ExitCode::SUCCESS);
        }
        Command::WsFanout { server, args } => ws_fanout(&target(&server).await?, &args).await,
        Command::WsIdle { server, args } => ws_idle(&target(&server).await?, &args).await,
        Command::Alarms { server, args } => alarms(&target(&server).await?, &args).await,
        Command::CallRoundTrip { args } => call_round_trip(&args).await,
        Command::AlarmsConfig => {
            print!("{}", scenarios::alarms::CONFIG);
            return Ok(ExitCode::SUCCESS);
        }
        Command::ObjectsIdle { server, args } => objects_idle(&target(&server).await?, &args).await,
        Command::ObjectsIdleConfig => {
            print!("{}", scenarios::objects_idle::CONFIG);
            return Ok(ExitCode::SUCCESS);
        }
        Command::Run(args) => {
            let argv: Vec<String> = std::env::args().skip(1).collect();
            let run_command = format!(
                "target/release/rookery-bench {}",
                shell_join(argv.iter().map(String::as_str))
            );
            runner::run(&args, &runtime_description(cli.threads), run_command).await?;
            return Ok(ExitCode::SUCCESS);
        }
    };
    print_outcome(&outcome)?;
    Ok(if outcome.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn target(server: &Server) -> anyhow::Result<Target> {
    Target::resolve(&server.url).await
}

/// Prints the outcome as one JSON line.
fn print_outcome(outcome: &Outcome) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string(outcome)?);
    Ok(())
}

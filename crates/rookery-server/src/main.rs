//! The `rookery` command.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use rookery::Clock;
use rookery::Durability;
use rookery_server::admin_client::{self, AdminTarget};
use rookery_server::otel;
use rookery_server::{Config, Server};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

#[derive(Parser)]
#[command(
    name = "rookery",
    version,
    about = "A self-hosted Durable Objects runtime"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// How logs are written to stderr: `text` for people, `json` (one object per line, with
    /// the span fields such as the request id, class and object id) for log collectors.
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Export spans to this OpenTelemetry collector over OTLP/HTTP (its base URL, e.g.
    /// `http://127.0.0.1:4318`); needs a binary built with `--features otel`. The standard
    /// `OTEL_EXPORTER_OTLP_*` variables also turn it on and tune it (docs/OPERATIONS.md).
    #[arg(long, global = true, value_name = "URL")]
    otlp_endpoint: Option<String>,
}

/// How logs are written.
#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the objects and routes of a configuration (the built-in demo app by default).
    Serve(ServeArgs),
    /// The objects of a running server, through its admin API (`[server] admin_token`).
    #[command(subcommand)]
    Objects(ObjectsCommand),
    /// Has a running server copy every object and its catalog into DIR (absent or empty; on
    /// the server's machine), through its admin API; writes wait for one object's copy at most.
    Backup {
        /// Where the backup goes.
        dir: PathBuf,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Copies a backup made by `rookery backup` into an empty data directory; start the server
    /// on it afterwards. The server must not be running on that directory.
    Restore {
        /// The backup.
        dir: PathBuf,
        /// The data directory to fill (absent or empty).
        #[arg(long, default_value = "./rookery-data")]
        data_dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum ObjectsCommand {
    /// Lists the objects of a class that store something: id, name, size, alarm, sockets.
    Ls {
        /// The class name or binding, e.g. COUNTER.
        class: String,
        /// Only objects whose name starts with this.
        #[arg(long)]
        prefix: Option<String>,
        /// Start after this object id (the `cursor` of the previous page).
        #[arg(long)]
        cursor: Option<String>,
        /// Most objects to list (at most 1000).
        #[arg(long)]
        limit: Option<usize>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Shows one object: its size, alarm, sockets, tables and first key-value entries.
    Show {
        /// The class name or binding.
        class: String,
        /// The object's name or id.
        object: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Deletes one object: its WebSockets close, its storage and alarm are deleted.
    Rm {
        /// The class name or binding.
        class: String,
        /// The object's name or id.
        object: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Prints a bookmark of an object's state now, or at --time.
    Bookmark {
        /// The binding, e.g. COUNTER.
        binding: String,
        /// The object's name.
        name: String,
        /// Milliseconds since the Unix epoch, or an age such as 15m, 2h, 1d.
        #[arg(long)]
        time: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Restores an object to a bookmark or to its state at a time (point-in-time recovery);
    /// prints a bookmark that undoes it.
    Restore {
        /// The binding, e.g. COUNTER.
        binding: String,
        /// The object's name.
        name: String,
        /// A bookmark (from `rookery objects bookmark` or the object's own code).
        #[arg(long, required_unless_present = "time", conflicts_with = "time")]
        bookmark: Option<String>,
        /// Milliseconds since the Unix epoch, or an age such as 15m, 2h, 1d.
        #[arg(long)]
        time: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

#[derive(clap::Args)]
struct AdminArgs {
    /// The server's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8787")]
    url: String,
    /// The admin token; else the environment variable ROOKERY_ADMIN_TOKEN.
    #[arg(long)]
    token: Option<String>,
}

impl AdminArgs {
    fn target(self) -> anyhow::Result<AdminTarget> {
        let token = match self.token {
            Some(token) => token,
            None => std::env::var("ROOKERY_ADMIN_TOKEN")
                .context("give --token or set ROOKERY_ADMIN_TOKEN")?,
        };
        Ok(AdminTarget {
            url: self.url,
            token,
        })
    }
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Configuration file (rookery.toml); without it, the built-in demo app.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Address to listen on, overriding the configuration.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Data directory, overriding the configuration.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Header carrying the client IP (e.g. CF-Connecting-IP), overriding the configuration.
    #[arg(long)]
    client_ip_header: Option<String>,
    /// `strict` (survives power loss) or `relaxed` (survives a process crash).
    #[arg(long, value_parser = parse_durability)]
    durability: Option<Durability>,
    /// Most HTTP connections open at once, overriding the configuration.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    max_connections: Option<u64>,
    /// Turns the admin API on with this bearer token (at least 16 characters), overriding the
    /// configuration.
    #[arg(long)]
    admin_token: Option<String>,
    /// Runs as a node of the cluster on this PostgreSQL database (`postgres://...`), overriding
    /// `[cluster] database_url`; needs a node id and an advertised address.
    #[arg(long, value_name = "URL")]
    cluster: Option<String>,
    /// This node's id in the cluster, overriding `[cluster] node_id`.
    #[arg(long)]
    node_id: Option<String>,
    /// The address other nodes reach this one at, overriding `[cluster] advertise`.
    #[arg(long, value_name = "URL")]
    advertise: Option<String>,
}

/// Threads of the blocking pool (opening, checkpointing and closing object databases).
const BLOCKING_THREADS: usize = 32;

fn parse_durability(s: &str) -> Result<Durability, String> {
    match s {
        "strict" => Ok(Durability::Strict),
        "relaxed" => Ok(Durability::Relaxed),
        _ => Err(format!("{s:?} is not a durability; use strict or relaxed")),
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Logs go to stderr: stdout carries what the commands print (the listening address,
    // bookmarks), which scripts read.
    let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let logs = match cli.log_format {
        LogFormat::Text => logs.boxed(),
        LogFormat::Json => logs
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .boxed(),
    };
    let (export, _export_guard) = match otel::layer(cli.otlp_endpoint.as_deref())? {
        Some((layer, guard)) => (Some(layer), Some(guard)),
        None => (None, None),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(logs)
        .with(export)
        .init();
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::Objects(command) => objects(command),
        Command::Backup { dir, admin } => {
            // The server writes the backup: it needs the path whole.
            let dir = std::path::absolute(&dir)
                .with_context(|| format!("the backup directory {}", dir.display()))?;
            let target = admin.target()?;
            let answer = client_runtime()?.block_on(admin_client::backup(&target, &dir))?;
            println!("{answer}");
            Ok(())
        }
        Command::Restore { dir, data_dir } => {
            let report = rookery::restore_backup(&dir, &data_dir)?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(())
        }
    }
}

/// The async runtime of a command that talks to a server.
fn client_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn objects(command: ObjectsCommand) -> anyhow::Result<()> {
    let runtime = client_runtime()?;
    let now = rookery::SystemClock.now_ms();
    let time = |t: Option<String>| -> anyhow::Result<Option<i64>> {
        t.map(|t| admin_client::parse_time(&t, now).map_err(anyhow::Error::msg))
            .transpose()
    };
    let answer = runtime.block_on(async {
        match command {
            ObjectsCommand::Ls {
                class,
                prefix,
                cursor,
                limit,
                admin,
            } => {
                let target = admin.target()?;
                Ok::<_, anyhow::Error>(
                    admin_client::list_objects(
                        &target,
                        &class,
                        prefix.as_deref(),
                        cursor.as_deref(),
                        limit,
                    )
                    .await?,
                )
            }
            ObjectsCommand::Show {
                class,
                object,
                admin,
            } => Ok(admin_client::show_object(&admin.target()?, &class, &object).await?),
            ObjectsCommand::Rm {
                class,
                object,
                admin,
            } => Ok(admin_client::delete_object(&admin.target()?, &class, &object).await?),
            ObjectsCommand::Bookmark {
                binding,
                name,
                time: at,
                admin,
            } => {
                let target = admin.target()?;
                Ok::<_, anyhow::Error>(
                    admin_client::bookmark(&target, &binding, &name, time(at)?).await?,
                )
            }
            ObjectsCommand::Restore {
                binding,
                name,
                bookmark,
                time: at,
                admin,
            } => {
                let target = admin.target()?;
                Ok(
                    admin_client::restore(&target, &binding, &name, bookmark.as_deref(), time(at)?)
                        .await?,
                )
            }
        }
    })?;
    println!("{answer}");
    Ok(())
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::demo(),
    };
    if let Some(listen) = args.listen {
        config.server.listen = listen;
    }
    if let Some(dir) = args.data_dir {
        config.server.data_dir = dir;
    }
    if let Some(header) = args.client_ip_header {
        config.server.client_ip_header = Some(header);
    }
    if let Some(durability) = args.durability {
        config.server.durability = durability;
    }
    if let Some(token) = args.admin_token {
        anyhow::ensure!(
            token.trim().len() >= 16,
            "--admin-token must be at least 16 characters"
        );
        config.server.admin_token = Some(token);
    }
    apply_cluster_flags(&mut config, args.cluster, args.node_id, args.advertise)?;
    if let Some(max) = args.max_connections {
        config.server.max_connections = usize::try_from(max)
            .unwrap_or(usize::MAX)
            .min(tokio::sync::Semaphore::MAX_PERMITS);
    }
    raise_open_file_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // Objects open and close their databases on the blocking pool; under churn tokio's
        // default (512 threads) grows hundreds of threads that only contend for the disk.
        .max_blocking_threads(BLOCKING_THREADS)
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        // Listen first: a port in use must stop the start before any migration is applied.
        let listener = tokio::net::TcpListener::bind(config.server.listen)
            .await
            .with_context(|| format!("listening on {}", config.server.listen))?;
        let server = match rookery_server::join_cluster(&config).await? {
            Some(cluster) => {
                tracing::info!(node = %cluster.node_id(), advertise = %cluster.advertise(), "joined the cluster");
                Server::in_cluster(&config, rookery_objects::builtin_classes(), cluster)?
            }
            None => Server::new(&config, rookery_objects::builtin_classes())?,
        };
        let addr = listener.local_addr()?;
        tracing::info!(
            config = %config.source,
            data_dir = %config.server.data_dir.display(),
            durability = ?config.server.durability,
            "serving"
        );
        // Tests and scripts read this line to find the port.
        println!("rookery listening on http://{addr}");
        server.serve(listener, shutdown_signal()).await?;
        tracing::info!("stopped");
        anyhow::Ok(())
    })
}

/// `--cluster`, `--node-id` and `--advertise` over `[cluster]`: together they make a section
/// where the configuration has none.
fn apply_cluster_flags(
    config: &mut Config,
    url: Option<String>,
    node_id: Option<String>,
    advertise: Option<String>,
) -> anyhow::Result<()> {
    if url.is_none() && node_id.is_none() && advertise.is_none() {
        return Ok(());
    }
    let section = match (config.cluster.take(), url) {
        (Some(mut section), url) => {
            if let Some(url) = url {
                section.database_url = url;
            }
            section
        }
        (None, Some(url)) => rookery_server::config::ClusterSection {
            database_url: url,
            node_id: node_id.clone().context("--cluster needs --node-id")?,
            advertise: advertise.clone().context("--cluster needs --advertise")?,
            lease_ms: rookery_cluster::DEFAULT_LEASE.as_millis() as u64,
            shards: Vec::new(),
        },
        (None, None) => anyhow::bail!("--node-id and --advertise need --cluster (or [cluster])"),
    };
    config.cluster = Some(rookery_server::config::ClusterSection {
        node_id: node_id.unwrap_or(section.node_id.clone()),
        advertise: advertise.unwrap_or(section.advertise.clone()),
        ..section
    });
    Ok(())
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGTERM");
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down");
}

/// Every live object holds a few files open; allow as many as the system lets us.
fn raise_open_file_limit() {
    #[cfg(unix)]
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                tracing::warn!("cannot raise the open-file limit");
            }
        }
    }
}

//! The runtime: classes, bindings and the data directory brought together, ready to host objects.
//!
//! This file only assembles: it opens the catalog and the alarm index, builds the host and
//! starts the scheduler. Everything it assembles works through the handles it hands out.

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::addr::ClassInfo;
use crate::alarm::{AlarmStats, Scheduler, Wake};
use crate::bucket::Buckets;
use crate::clock::{Clock, SystemClock};
use crate::durable_dir::create_dir_durable;
use crate::env::Env;
use crate::error::{Error, Result, StartError};
use crate::host::activation::{ClassFactory, Factory};
use crate::host::{
    Forwarder, Host, HostOptions, HostParts, HostedClass, LocalPlacement, Placement, Reach,
};
use crate::object::DurableObject;
use crate::outbound::{NotConfigured, Outbound};
use crate::storage::{
    AlarmIndex, Catalog, ClassKeys, ClassRecord, CommitLog, DirHealth, DirLock, Durability,
    History, HistoryOptions, LocalClassKeys, LocalCommitLog, Migration, NodeLog, StorageContext,
    StorageLimits, SyncHook, Syncer, recover, scan_objects,
};
use crate::stub::{Namespace, Stub};
use crate::vars::Vars;
use crate::worker::{SharedWorker, Worker};

/// Everything about how a runtime runs its objects.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RuntimeOptions {
    /// Mailboxes, turn time limit and eviction.
    pub host: HostOptions,
    /// Storage limits.
    pub storage: StorageLimits,
    /// What a commit survives before its outputs are released.
    pub durability: Durability,
    /// How much history is kept for point-in-time recovery.
    pub history: HistoryOptions,
}

/// The object classes a runtime can host, by class name, and the workers a server can put in
/// front of them, by worker name.
#[derive(Clone, Default)]
pub struct Classes {
    map: HashMap<String, Arc<dyn ClassFactory>>,
    workers: HashMap<String, SharedWorker>,
}

impl fmt::Debug for Classes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set()
            .entries(self.map.keys().chain(self.workers.keys()))
            .finish()
    }
}

impl Classes {
    /// No classes.
    pub fn new() -> Self {
        Self::default()
    }

    /// These classes and `C` under `name`.
    pub fn with<C: DurableObject>(mut self, name: &str) -> Self {
        self.add::<C>(name);
        self
    }

    /// Adds `C` under `name`, replacing any class of that name.
    pub fn add<C: DurableObject>(&mut self, name: &str) {
        self.map
            .insert(name.to_string(), Arc::new(Factory::<C>::new()));
    }

    /// Adds every class and worker of `other`.
    pub fn extend(&mut self, other: Classes) {
        self.map.extend(other.map);
        self.workers.extend(other.workers);
    }

    /// These classes, and `worker` under `name` (a configuration picks it with
    /// `[worker] name`).
    pub fn with_worker(mut self, name: &str, worker: impl Worker) -> Self {
        self.workers
            .insert(name.to_string(), SharedWorker::new(worker));
        self
    }

    /// The worker registered as `name`.
    pub fn worker(&self, name: &str) -> Option<&SharedWorker> {
        self.workers.get(name)
    }

    /// The registered worker names, sorted.
    pub fn worker_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.workers.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// Whether a class called `name` is known.
    pub fn contains(&self, name: &str) -> bool {
        self.map.contains_key(name)
    }

    /// The known class names, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.map.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }
}

/// Assembles a [`Runtime`].
pub struct RuntimeBuilder {
    /// `None` keeps everything in memory.
    data_dir: Option<PathBuf>,
    classes: Classes,
    bindings: Vec<(String, String)>,
    migrations: Vec<Migration>,
    options: RuntimeOptions,
    commit_log: Arc<dyn CommitLog>,
    class_keys: Arc<dyn ClassKeys>,
    placement: Arc<dyn Placement>,
    forwarder: Option<Arc<dyn Forwarder>>,
    sync_hook: Option<SyncHook>,
    log_segment_bytes: u64,
    clock: Arc<dyn Clock>,
    reach: Reach,
}

impl RuntimeBuilder {
    /// Hosts class `C` under `name`.
    pub fn class<C: DurableObject>(mut self, name: &str) -> Self {
        self.classes.add::<C>(name);
        self
    }

    /// Hosts all of `classes`.
    pub fn classes(mut self, classes: Classes) -> Self {
        self.classes.extend(classes);
        self
    }

    /// Makes the namespace of `class_name` reachable as `binding`.
    pub fn binding(mut self, binding: &str, class_name: &str) -> Self {
        self.bindings
            .push((binding.to_string(), class_name.to_string()));
        self
    }

    /// Adds a migration; migrations apply in the order they were added.
    pub fn migration(mut self, migration: Migration) -> Self {
        self.migrations.push(migration);
        self
    }

    /// Sets the runtime's options.
    pub fn options(mut self, options: RuntimeOptions) -> Self {
        self.options = options;
        self
    }

    /// Uses `log` as the commit log instead of the local one.
    pub fn commit_log(mut self, log: Arc<dyn CommitLog>) -> Self {
        self.commit_log = log;
        self
    }

    /// Settles class keys with `keys` (the nodes of a cluster share them) instead of drawing
    /// them on this node alone.
    pub fn class_keys(mut self, keys: Arc<dyn ClassKeys>) -> Self {
        self.class_keys = keys;
        self
    }

    /// Sends requests for objects another node owns through `forwarder` (else they are
    /// refused with [`Error::Elsewhere`](crate::Error::Elsewhere)).
    pub fn forwarder(mut self, forwarder: Arc<dyn Forwarder>) -> Self {
        self.forwarder = Some(forwarder);
        self
    }

    /// Uses `placement` instead of hosting every object locally.
    pub fn placement(mut self, placement: Arc<dyn Placement>) -> Self {
        self.placement = placement;
        self
    }

    /// Runs `hook` at the start of every sync round; an error fails the round's commits.
    /// For tests that simulate a slow or failing disk.
    pub fn sync_hook(mut self, hook: SyncHook) -> Self {
        self.sync_hook = Some(hook);
        self
    }

    /// Begins a new node log segment once the current one holds `bytes` (default 64 MiB);
    /// history is compacted and retired a segment at a time.
    pub fn log_segment_bytes(mut self, bytes: u64) -> Self {
        self.log_segment_bytes = bytes.max(4096);
        self
    }

    /// Runs alarms by `clock` instead of the system clock (tests move a [`crate::ManualClock`]).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Gives objects `vars` (vars and secrets, through `Env::var` and `Env::secret`).
    pub fn vars(mut self, vars: Vars) -> Self {
        self.reach.vars = Arc::new(vars);
        self
    }

    /// Sends objects' outbound HTTP (`Env::http`) through `client`; without one, every
    /// outbound request fails.
    pub fn outbound(mut self, client: Arc<dyn Outbound>) -> Self {
        self.reach.outbound = client;
        self
    }

    /// Gives objects and the worker `buckets` (through `Env::bucket`).
    pub fn buckets(mut self, buckets: Buckets) -> Self {
        self.reach.buckets = Arc::new(buckets);
        self
    }

    /// Opens the data directory, applies pending migrations and checks every binding.
    pub fn build(self) -> Result<Runtime, StartError> {
        // SQLite's memory defaults can only be set before its first connection.
        crate::storage::configure_sqlite();
        // The lock comes first: nothing of the directory is read or changed without it.
        let (lock, mut catalog) = match &self.data_dir {
            Some(dir) => {
                create_dir_durable(dir)?;
                let lock = DirLock::acquire(dir)?;
                check_layout(dir)?;
                (Some(lock), Catalog::open(dir)?)
            }
            None => (None, Catalog::in_memory()?),
        };
        // Migrations commit only if every binding can be served afterwards.
        catalog.migrate(&self.migrations, self.class_keys.as_ref(), |records| {
            check_bindings(&self.bindings, &self.classes, records)
        })?;
        // Every class that exists here and that this server can run is hosted, bound or not,
        // so that its alarms fire.
        let mut classes: Vec<HostedClass> = Vec::new();
        let mut by_name: HashMap<String, Arc<ClassInfo>> = HashMap::new();
        for record in catalog.classes()? {
            let Some(factory) = self.classes.map.get(&record.name) else {
                continue;
            };
            let info = Arc::new(ClassInfo {
                idx: u32::try_from(classes.len())
                    .map_err(|_| StartError::Config("too many classes".into()))?,
                uid: Arc::from(record.uid.as_str()),
                name: Arc::from(record.name.as_str()),
                dir: self.data_dir.as_ref().map(|_| record.dir.clone()),
                minter: record.minter.clone(),
            });
            info.prepare_dirs()?;
            by_name.insert(record.name.clone(), info.clone());
            classes.push(HostedClass {
                info,
                factory: factory.clone(),
            });
        }
        let mut bindings = HashMap::new();
        for (binding, class_name) in &self.bindings {
            let info = by_name.get(class_name).cloned().ok_or_else(|| {
                let message = if self.classes.contains(class_name) {
                    format!("class {class_name:?} does not exist; a migration must create it (new_sqlite_classes = [{class_name:?}])")
                } else {
                    format!(
                        "class {class_name:?} is not known to this server (known: {})",
                        self.classes.names().join(", ")
                    )
                };
                StartError::Binding {
                    binding: binding.clone(),
                    message,
                }
            })?;
            if bindings.insert(binding.clone(), info).is_some() {
                return Err(StartError::Binding {
                    binding: binding.clone(),
                    message: "declared twice".into(),
                });
            }
        }
        // The node log first: every object's file is brought up to date with it before
        // anything (the alarm index rebuild included) reads one.
        let history = match &self.data_dir {
            Some(dir) if self.options.history.enabled() => Some(Arc::new(History::open(
                &dir.join("history"),
                self.options.history,
            )?)),
            _ => None,
        };
        let log = match &self.data_dir {
            Some(dir) => {
                let log_dir = dir.join("log");
                let keep = history.is_some();
                let recovered = recover(&log_dir, &catalog.objects_dir, keep)?;
                Some(Arc::new(NodeLog::open(
                    &log_dir,
                    recovered.next,
                    recovered.history,
                    keep,
                    self.log_segment_bytes,
                )?))
            }
            None => None,
        };
        let wake = Arc::new(Wake::new());
        let index_path = self.data_dir.as_ref().map(|d| d.join("alarms.sqlite"));
        let mut fresh_index = index_path.as_ref().is_some_and(|p| !p.exists());
        let alarms =
            match AlarmIndex::open(index_path.as_deref(), self.options.durability, wake.clone()) {
                Ok(index) => index,
                // The index is derived data: a damaged one is set aside and rebuilt.
                Err(e) => {
                    let Some(path) = index_path.as_deref() else {
                        return Err(e.into());
                    };
                    let aside = set_aside(path)?;
                    tracing::error!(
                        index = %path.display(),
                        moved_to = %aside.display(),
                        error = %e,
                        "the alarm index cannot be used; rebuilding it from the objects"
                    );
                    fresh_index = true;
                    AlarmIndex::open(Some(path), self.options.durability, wake.clone())?
                }
            };
        if fresh_index {
            // A data directory without its index (first start, or the index was removed):
            // rebuild it from the objects' own records.
            let scanned_at = alarms.next_version();
            let scan = scan_objects(&catalog.objects_dir)?;
            if !scan.found.is_empty() {
                tracing::info!(
                    alarms = scan.found.len(),
                    "rebuilt the alarm index from the objects"
                );
            }
            alarms.replace_all(&scan.found, scanned_at, &scan.busy)?;
        }
        let health = match &self.data_dir {
            Some(dir) => Some(Arc::new(DirHealth::new(dir)?)),
            None => None,
        };
        let hosted: Vec<Arc<str>> = classes.iter().map(|c| c.info.uid.clone()).collect();
        alarms.set_hosted(&hosted)?;
        let storage = Arc::new(StorageContext {
            limits: self.options.storage,
            open_files: Arc::default(),
            durability: self.options.durability,
            syncer: Syncer::start(
                self.sync_hook,
                health.clone(),
                log.clone(),
                self.options.durability,
            )?,
            commit_log: self.commit_log,
            commits: AtomicU64::new(0),
            alarms,
            clock: self.clock,
            health,
            log,
            history,
        });
        let mut options = self.options;
        if options.host.max_live_objects == 0 {
            options.host.max_live_objects = DEFAULT_MAX_LIVE;
        }
        if options.host.max_open_databases == 0 {
            options.host.max_open_databases = default_max_open();
        }
        if options.host.max_live_bytes == 0 {
            options.host.max_live_bytes = DEFAULT_MAX_LIVE_BYTES;
        }
        let host = Host::new(HostParts {
            classes,
            bindings,
            storage: storage.clone(),
            options: options.host,
            placement: self.placement,
            forwarder: self.forwarder,
            reach: self.reach,
        });
        let handle = tokio::runtime::Handle::try_current().map_err(|_| {
            StartError::Config("a runtime must be built inside a tokio runtime".into())
        })?;
        let scheduler = Arc::new(Scheduler::new(wake));
        scheduler.start(&host, &handle);
        if storage.history.is_some() {
            compact_history_periodically(&storage, &handle, self.options.history);
        }
        Ok(Runtime {
            inner: Arc::new(RuntimeInner {
                host,
                scheduler,
                storage,
                options,
                data_dir: self.data_dir,
                _lock: lock,
            }),
        })
    }
}

/// Compacts history that the byte cap or the free disk space forces out every second, and
/// expired history now and then (a tenth of the retention, at most once a minute), until the
/// runtime is dropped.
fn compact_history_periodically(
    storage: &Arc<StorageContext>,
    handle: &tokio::runtime::Handle,
    options: HistoryOptions,
) {
    const PRESSURE_EVERY: Duration = Duration::from_secs(1);
    let by_age_every = (options.retention / 10).clamp(PRESSURE_EVERY, Duration::from_secs(60));
    let ticks_per_age_check = (by_age_every.as_millis() / PRESSURE_EVERY.as_millis()).max(1);
    let storage = Arc::downgrade(storage);
    handle.spawn(async move {
        let mut tick = tokio::time::interval(PRESSURE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        let mut ticks = 0u128;
        loop {
            tick.tick().await;
            ticks += 1;
            let by_age = ticks % ticks_per_age_check == 0;
            let Some(storage) = storage.upgrade() else {
                break;
            };
            let compacted =
                tokio::task::spawn_blocking(move || storage.compact_history(by_age)).await;
            if let Ok(Err(e)) = compacted {
                tracing::warn!(error = %e, "compacting the log's history");
            }
        }
    });
}

/// Moves a damaged database file aside, for inspection (its WAL and shared-memory files are
/// removed: they belong to the damaged file); returns where it went.
fn set_aside(path: &Path) -> Result<PathBuf, StartError> {
    let stamp = crate::clock::system_now_ms();
    let mut aside = path.as_os_str().to_owned();
    aside.push(format!(".damaged-{stamp}"));
    let aside = PathBuf::from(aside);
    fs::rename(path, &aside)?;
    for suffix in ["-wal", "-shm"] {
        let mut side = path.as_os_str().to_owned();
        side.push(suffix);
        // Absent side files are the common case.
        let _ = fs::remove_file(PathBuf::from(side));
    }
    Ok(aside)
}

/// Refuses bindings that name a class that will not exist, or that this server cannot run.
fn check_bindings(
    bindings: &[(String, String)],
    classes: &Classes,
    records: &[ClassRecord],
) -> Result<(), StartError> {
    let mut seen = std::collections::HashSet::new();
    for (binding, class_name) in bindings {
        let message = if !classes.contains(class_name) {
            format!(
                "class {class_name:?} is not known to this server (known: {})",
                classes.names().join(", ")
            )
        } else if !records.iter().any(|r| &r.name == class_name) {
            format!(
                "class {class_name:?} does not exist; a migration must create it (new_sqlite_classes = [{class_name:?}])"
            )
        } else if !seen.insert(binding) {
            "declared twice".to_string()
        } else {
            continue;
        };
        return Err(StartError::Binding {
            binding: binding.clone(),
            message,
        });
    }
    Ok(())
}

/// Live objects by default: an idle object whose files are closed costs a few KiB.
const DEFAULT_MAX_LIVE: usize = 100_000;
/// Most bytes live objects hold unless configured (see `HostOptions::max_live_bytes`).
const DEFAULT_MAX_LIVE_BYTES: u64 = 1024 * 1024 * 1024;

/// Open object databases this process's open-file limit allows.
fn default_max_open() -> usize {
    max_open_for(open_file_limit())
}

/// The process's soft open-file limit, if it can be read.
fn open_file_limit() -> Option<usize> {
    #[cfg(unix)]
    {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes only into `lim`.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
            return Some(usize::try_from(lim.rlim_cur).unwrap_or(usize::MAX));
        }
    }
    None
}

/// Open object databases an open-file limit of `files` allows: each holds one (its database
/// file; the WAL is in memory), and a quarter of the limit stays for sockets and the rest. At
/// least 64, at most a million; 10 000 when the limit is unknown.
fn max_open_for(files: Option<usize>) -> usize {
    match files {
        Some(files) => (files / 4 * 3).clamp(64, 1_000_000),
        None => 10_000,
    }
}

/// A running set of durable object classes over one data directory.
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<RuntimeInner>,
}

/// Why a runtime cannot take writes now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotReady {
    /// The data directory is gone, replaced or not writable (the check's finding; it may name
    /// the directory).
    #[error("storage unavailable: {0}")]
    Storage(String),
    /// The thread that makes commits durable stopped.
    #[error("the sync thread stopped")]
    SyncStopped,
    /// Writing or syncing the node log failed: no write is taken until a restart.
    #[error("the node log failed; restart the server")]
    LogFailed,
}

impl NotReady {
    /// A short reason that names no path, for unauthenticated callers.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Storage(_) => "storage unavailable",
            Self::SyncStopped => "sync thread stopped",
            Self::LogFailed => "node log failed",
        }
    }
}

/// Counters that show what the runtime is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct RuntimeStats {
    /// Objects with a live activation.
    pub live_objects: usize,
    /// Live objects whose database files are open now (one descriptor each).
    pub open_databases: usize,
    /// Bytes the objects' WALs hold in memory (commits not yet checkpointed into their files),
    /// over every runtime of the process.
    pub wal_bytes: u64,
    /// Memory live objects hold as `max_live_bytes` counts it: SQLite's heap plus an
    /// estimate per live object.
    pub live_bytes: u64,
    /// Activations started so far.
    pub activations: u64,
    /// Database files closed to make room so far (each is reopened at its object's next
    /// request: steady growth means the byte cap or the open-file limit is below the objects
    /// in use).
    pub files_closed: u64,
    /// Turns that committed writes so far.
    pub commits: u64,
    /// Rounds of the group-commit syncer so far.
    pub sync_rounds: u64,
    /// File and directory syncs issued so far.
    pub file_syncs: u64,
    /// WebSockets registered with their objects now (accepted and not yet ended).
    pub websockets: usize,
}

impl Runtime {
    /// A builder for a runtime keeping its data in `data_dir`.
    pub fn builder(data_dir: impl AsRef<Path>) -> RuntimeBuilder {
        Self::builder_at(Some(data_dir.as_ref().to_path_buf()))
    }

    /// A builder for a runtime that keeps everything in memory, for tests: nothing survives
    /// the runtime, and idle objects are never evicted (that would lose their state).
    pub fn builder_in_memory() -> RuntimeBuilder {
        Self::builder_at(None)
    }

    fn builder_at(data_dir: Option<PathBuf>) -> RuntimeBuilder {
        RuntimeBuilder {
            data_dir,
            classes: Classes::new(),
            bindings: Vec::new(),
            migrations: Vec::new(),
            options: RuntimeOptions::default(),
            commit_log: Arc::new(LocalCommitLog),
            class_keys: Arc::new(LocalClassKeys),
            placement: Arc::new(LocalPlacement),
            forwarder: None,
            sync_hook: None,
            log_segment_bytes: crate::storage::SEGMENT_BYTES,
            clock: Arc::new(SystemClock),
            reach: Reach {
                vars: Arc::new(Vars::new()),
                outbound: Arc::new(NotConfigured),
                buckets: Arc::new(Buckets::new()),
            },
        }
    }

    /// The namespace bound under `binding`.
    pub fn namespace(&self, binding: &str) -> Result<Namespace> {
        Namespace::bound(&self.inner.host, binding)
    }

    /// The namespace of the class named `class`, bound or not (what a node serving a
    /// forwarded request needs: requests travel between nodes by class, not binding).
    pub fn namespace_of_class(&self, class: &str) -> Result<Namespace> {
        Namespace::of_class(&self.inner.host, class)
    }

    /// Closes every WebSocket of every object on this node with `code`: what a cluster node
    /// does when it lost its objects (1012: the clients reconnect and reach the new owner).
    pub fn close_all_sockets(&self, code: u16, reason: &str) {
        self.inner.host.close_all_sockets(code, reason);
    }

    /// What a worker reaches: the namespaces bound in this runtime.
    pub fn env(&self) -> Env {
        Env::new(self.inner.host.clone())
    }

    /// The binding names, sorted.
    pub fn bindings(&self) -> Vec<&str> {
        self.inner.host.binding_names()
    }

    /// The options the runtime runs with.
    pub fn options(&self) -> &RuntimeOptions {
        &self.inner.options
    }

    /// The data directory; `None` when the runtime keeps everything in memory.
    pub fn data_dir(&self) -> Option<&Path> {
        self.inner.data_dir.as_deref()
    }

    /// The operator's handle: list classes and objects, inspect, delete or back them up
    /// (see [`crate::Admin`]; the server serves it as its admin API).
    pub fn admin(&self) -> crate::admin::Admin {
        crate::admin::Admin::new(self.inner.host.clone(), self.inner.data_dir.clone())
    }

    /// What the runtime is doing now.
    pub fn stats(&self) -> RuntimeStats {
        let (sync_rounds, file_syncs) = self.inner.storage.syncer.counts();
        RuntimeStats {
            live_objects: self.inner.host.live_objects(),
            open_databases: self.inner.storage.open_files.load(Ordering::Relaxed),
            wal_bytes: crate::storage::wal_bytes(),
            live_bytes: self.inner.host.live_bytes(),
            activations: self.inner.host.activations(),
            files_closed: self.inner.host.files_closed(),
            commits: self.inner.storage.commits.load(Ordering::Relaxed),
            sync_rounds,
            file_syncs,
            websockets: self.inner.host.sockets_open(),
        }
    }

    /// Per class: live and hibernated objects, WebSockets and queued events (one pass over
    /// the live objects).
    pub fn class_stats(&self) -> Vec<crate::host::ClassStats> {
        self.inner.host.class_stats()
    }

    /// Whether the runtime can take writes: its data directory is there and writable, the sync
    /// thread runs and the node log has not failed.
    pub fn readiness(&self) -> std::result::Result<(), NotReady> {
        let storage = &self.inner.storage;
        if let Some(health) = &storage.health
            && !health.is_ok()
        {
            return Err(NotReady::Storage(health.problem()));
        }
        if !storage.syncer.alive() {
            return Err(NotReady::SyncStopped);
        }
        if storage.log.as_ref().is_some_and(|log| log.failed()) {
            return Err(NotReady::LogFailed);
        }
        Ok(())
    }

    /// What the alarm machinery is doing now.
    pub fn alarm_stats(&self) -> AlarmStats {
        self.inner.scheduler.stats(&self.inner.storage.alarms)
    }

    /// Rebuilds the node's alarm index from every object's own alarm record (reading each
    /// object database once); returns how many objects it found with an alarm or could not
    /// read. Safe while serving: entries changed during the scan, and those of live objects
    /// (whose databases are locked by their activation), are kept.
    pub async fn rebuild_alarm_index(&self) -> Result<usize> {
        let Some(dir) = self.inner.data_dir.clone() else {
            return Ok(0);
        };
        // Entries changed after this version are newer than the scan and are kept.
        let scanned_at = self.inner.storage.alarms.next_version();
        let scan = tokio::task::spawn_blocking(move || scan_objects(&dir.join("objects")))
            .await
            .map_err(|e| Error::internal("the index rebuild failed", e))??;
        self.inner
            .storage
            .alarms
            .replace_all(&scan.found, scanned_at, &scan.busy)?;
        Ok(scan.found.len() + scan.busy.len())
    }

    /// Compacts the history that is past its retention (or its byte cap) into snapshots now,
    /// as the runtime does by itself now and then; returns how many log segments it folded.
    pub async fn compact_history(&self) -> Result<usize> {
        let storage = self.inner.storage.clone();
        let compacted = tokio::task::spawn_blocking(move || storage.compact_history(true))
            .await
            .map_err(|e| Error::internal("compacting the history failed", e))?;
        Ok(compacted?)
    }

    /// A bookmark of the object `name` of `binding`: of its state now, or at `time_ms`
    /// (point-in-time recovery; see [`crate::Storage::get_bookmark_for_time`]).
    pub async fn object_bookmark(
        &self,
        binding: &str,
        name: &str,
        time_ms: Option<i64>,
    ) -> Result<String> {
        let stub = self.namespace(binding)?.get_by_name(name);
        stub.run(move |state| match time_ms {
            Some(t) => state.storage().get_bookmark_for_time(t),
            None => state.storage().get_current_bookmark(),
        })
        .await
    }

    /// Restores the object `name` of `binding` to `bookmark` now (its instance restarts, its
    /// sockets close with 1012); returns a bookmark that undoes the restore.
    pub async fn restore_object(
        &self,
        binding: &str,
        name: &str,
        bookmark: &str,
    ) -> Result<String> {
        let stub = self.namespace(binding)?.get_by_name(name);
        let bookmark = bookmark.to_string();
        let undo = stub
            .run(move |state| {
                let undo = state
                    .storage()
                    .on_next_session_restore_bookmark(&bookmark)?;
                state.abort();
                Ok(undo)
            })
            .await?;
        // The restore is applied when the object opens again; an empty turn opens it and
        // fails if the restore cannot be made.
        stub.run(|_| Ok(())).await?;
        Ok(undo)
    }

    /// The clock alarms run by.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.inner.storage.clock
    }

    /// The time the node's alarm index holds for `stub`'s object (may be earlier than its
    /// record).
    pub(crate) fn indexed_alarm(&self, stub: &Stub) -> Result<Option<i64>> {
        self.inner.storage.alarms.get(&stub.addr().alarm_key())
    }

    /// Stops taking events, finishes the queued ones, makes every commit durable and closes
    /// every object's database. Returns whether everything closed in time.
    pub async fn shutdown(&self) -> bool {
        self.inner.scheduler.stop().await;
        let wait = self.inner.options.host.turn_timeout + Duration::from_secs(5);
        let closed = self.inner.host.shutdown(wait).await;
        let storage = self.inner.storage.clone();
        // Joining the sync thread blocks; it has at most one round left.
        let stopped = tokio::task::spawn_blocking(move || storage.syncer.stop()).await;
        closed && stopped.is_ok()
    }
}

/// The parts of a runtime; private to this file, which only assembles them.
struct RuntimeInner {
    host: Host,
    scheduler: Arc<Scheduler>,
    storage: Arc<StorageContext>,
    options: RuntimeOptions,
    data_dir: Option<PathBuf>,
    /// Held while the runtime lives: one process per data directory.
    _lock: Option<DirLock>,
}

/// Refuses a data directory where one of the runtime's directories is something else (a file
/// someone wrote there), naming it: opening it would fail with a bare "Not a directory".
fn check_layout(dir: &Path) -> Result<(), StartError> {
    for name in ["objects", "log", "history"] {
        let path = dir.join(name);
        if path.exists() && !path.is_dir() {
            return Err(StartError::DataDir(format!(
                "{} must be a directory (Rookery keeps its {name} there) but is not; \
                 move it out of the data directory",
                path.display()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_databases_follow_the_open_file_limit() {
        assert_eq!(max_open_for(Some(1_024)), 768);
        assert_eq!(max_open_for(Some(65_536)), 49_152);
        assert_eq!(max_open_for(Some(20_000)), 15_000);
        // A low limit still allows some objects (at least 64); an unlimited one is capped.
        assert_eq!(max_open_for(Some(60)), 64);
        assert_eq!(max_open_for(Some(100)), 75);
        assert_eq!(max_open_for(Some(usize::MAX)), 1_000_000);
        assert_eq!(max_open_for(None), 10_000);
    }

    /// Set in the child process of `the_default_comes_from_the_process_limit`.
    const CHILD_LIMIT: &str = "ROOKERY_TEST_NOFILE";

    /// In a child process (so that no other test runs with the lowered limit), lowers the soft
    /// open-file limit and checks that the default follows it.
    #[test]
    #[cfg(unix)]
    fn the_default_comes_from_the_process_limit() {
        if let Ok(limit) = std::env::var(CHILD_LIMIT) {
            let limit: usize = limit.parse().unwrap();
            let mut lim = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: getrlimit and setrlimit only touch `lim`; this process is the test's own
            // child and runs only this test.
            unsafe {
                assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
                lim.rlim_cur = libc::rlim_t::try_from(limit).unwrap();
                assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
            }
            assert_eq!(open_file_limit(), Some(limit));
            // Both limits the parent sets are within the bounds: three eighths of the limit.
            assert_eq!(default_max_open(), limit / 4 * 3);
            return;
        }
        for limit in [1_000, 400] {
            let out = std::process::Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "runtime::tests::the_default_comes_from_the_process_limit",
                    "--test-threads=1",
                ])
                .env(CHILD_LIMIT, limit.to_string())
                .output()
                .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success() && stdout.contains("1 passed"),
                "child with limit {limit}: {stdout}{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

//! One activation of an object: the task that owns its instance and storage and runs its turns.

use std::marker::PhantomData;

use tokio::sync::mpsc;
use tracing::Instrument;

use super::alarm_turn;
use super::class::{Instance, instance_of};
use super::event::{Event, TurnOutput};
use super::turn::{self, TurnContext};
use super::{Ask, Host, Usage};
use crate::addr::{ObjectAddr, ObjectKey};
use crate::background::{Background, BackgroundLimits};
use crate::error::{Error, Result};
use crate::socket::close_code;
use crate::state::{ObjectCore, ObjectState};
use crate::storage::{OutputGate, Storage};
use crate::stream::ObjectStreams;
use crate::telemetry;

/// Everything an activation needs to know about its object.
pub(crate) struct Activation {
    pub(crate) host: Host,
    pub(crate) addr: ObjectAddr,
    pub(crate) generation: u64,
    /// Shared with the registry slot: how recently used, whether it may leave under pressure.
    pub(crate) usage: std::sync::Arc<Usage>,
}

/// Starts activations of one class; the class's type is erased behind it.
pub(crate) trait ClassFactory: Send + Sync + 'static {
    /// Spawns the task of `activation`, which drains `mailbox`.
    fn start(&self, activation: Activation, mailbox: mpsc::Receiver<Box<Event>>);
}

/// The factory of instances of type `I`.
pub(crate) struct Factory<I>(PhantomData<fn() -> I>);

impl<I> Factory<I> {
    pub(crate) fn new() -> Self {
        Self(PhantomData)
    }
}

impl<I: Instance> ClassFactory for Factory<I> {
    fn start(&self, activation: Activation, mailbox: mpsc::Receiver<Box<Event>>) {
        let span = tracing::debug_span!(
            "object",
            class = %activation.addr.class.name,
            id = %activation.addr.id,
        );
        tokio::spawn(run::<I>(activation, mailbox).instrument(span));
    }
}

/// Decrements the host's count of live activations when the task ends, however it ends.
struct LiveGuard(Host, std::sync::Arc<Usage>);

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0.activation_ended(&self.1);
    }
}

impl Activation {
    /// Opens the object's storage on the blocking pool: creating a database touches the disk,
    /// and must not hold up the other objects on this worker.
    async fn open(&self) -> Result<ObjectState> {
        // A predecessor that is still closing holds the file (and may remove it if empty).
        self.host.wait_retired(&self.addr.key()).await;
        let (host, addr) = (self.host.clone(), self.addr.clone());
        tokio::task::spawn_blocking(move || open_state(&host, &addr))
            .await
            .map_err(|e| Error::internal("opening the object's storage failed", e))?
    }
}

fn open_state(host: &Host, addr: &ObjectAddr) -> Result<ObjectState> {
    let storage = Storage::open(addr, host.storage().clone())?;
    let id = match storage.remember_name(addr.id.name())? {
        Some(name) if addr.id.name().is_none() => addr.id.with_name(&name),
        _ => addr.id.clone(),
    };
    let sockets = host.sockets_for(addr);
    let options = host.options();
    let limits = BackgroundLimits {
        max: options.max_wait_until,
        timeout: options.wait_until_timeout,
    };
    Ok(ObjectState::new(ObjectCore {
        streams: ObjectStreams::new(sockets.owner()),
        background: Background::new(sockets.owner(), addr.class.name.clone(), id.clone(), limits),
        id,
        class: addr.class.name.clone(),
        storage,
        sockets,
        aborted: Default::default(),
    }))
}

/// The task of one activation: opens the object, then runs one turn per event until the object
/// is evicted or the host shuts down.
pub(crate) async fn run<I: Instance>(act: Activation, mut mailbox: mpsc::Receiver<Box<Event>>) {
    let _live = LiveGuard(act.host.clone(), act.usage.clone());
    tracing::debug!("activated");
    let mut state = match act.open().await {
        Ok(state) => state,
        Err(e) => {
            log_open_error(&e, "opened");
            fail_with(&act, mailbox, None, &open_error(&e, "opened")).await;
            return;
        }
    };
    let options = *act.host.options();
    let key = act.addr.key();
    let class = act.addr.class.name.to_string();
    metrics::counter!(telemetry::ACTIVATIONS, "class" => class.clone()).increment(1);
    // Looked up once: recording a turn then costs no map lookup or allocation.
    let turn_seconds = metrics::histogram!(telemetry::TURN_SECONDS, "class" => class.clone());
    let evicted = |reason: &'static str| {
        metrics::counter!(telemetry::EVICTIONS, "class" => class.clone(), "reason" => reason)
            .increment(1);
    };
    let mut instance: Option<I> = None;
    // One more live object, perhaps with its files open: room may be needed.
    act.host.relieve_pressure(Some(&key));
    // Held from leaving the registry until the storage is closed.
    let mut retiring = None;
    loop {
        act.usage.set_files_open(state.storage().files_open());
        if state.storage().take_reopened() {
            // Files opened by the last turn (reopened, or made): room may be needed.
            act.host.relieve_pressure(Some(&key));
        }
        let sockets = state.sockets();
        // Plain sockets belong to the live instance; with only hibernatable ones the object
        // may leave memory sooner, and they stay connected.
        let idle = if sockets.plain() > 0 {
            None
        } else if sockets.len() > 0 {
            Some(options.hibernation_idle)
        } else {
            Some(options.idle_timeout)
        };
        // Objects kept in memory only, or held by plain sockets, never leave under pressure.
        let durable = act.addr.class.dir.is_some();
        let evictable = idle.is_some() && durable;
        act.usage.set_evictable(evictable);
        let next = tokio::select! {
            next = async {
                match idle {
                    Some(idle) => tokio::time::timeout(idle, mailbox.recv()).await.map_err(|_| Wake::Idle),
                    None => Ok(mailbox.recv().await),
                }
            } => next,
            () = act.usage.asked(), if evictable => Err(Wake::Pressure),
        };
        act.usage.set_evictable(false);
        let event = match next {
            Ok(Some(event)) => *event,
            // The host dropped the mailbox: shutting down, the queue is worked off.
            Ok(None) => break,
            // The host picked this object, one of the colder ones, to make room. One
            // with streams or wait_until work only closes its files.
            Err(Wake::Pressure) => {
                let ask = act.usage.take_ask();
                if ask == Ask::Leave && !state.busy_outside_turns() {
                    let leaving = act.host.begin_retiring(key, act.generation);
                    if act.host.evict(&key, act.generation, &mailbox) {
                        tracing::debug!("evicted to make room");
                        evicted("pressure");
                        // Answered when the task ends (`LiveGuard`), no longer live.
                        act.usage.set_leaving();
                        retiring = Some(leaving);
                        break;
                    }
                }
                if ask == Ask::Shrink {
                    state.storage().shrink();
                    act.usage.set_spare(false);
                    act.host.pressure_answered();
                    continue;
                }
                if ask != Ask::Nothing {
                    if state.storage().close_files() {
                        tracing::debug!("closed its files to make room");
                        act.host.file_closed();
                        act.usage.set_files_open(false);
                    }
                    // Answered once the files are closed: the count of open ones is right.
                    act.host.pressure_answered();
                }
                continue;
            }
            // Streams being read and wait_until work would be cut off: the object stays.
            Err(_) if state.busy_outside_turns() => {
                tracing::debug!(
                    "staying in memory: a stream is being read or wait_until work runs"
                );
                continue;
            }
            Err(Wake::Idle) => {
                // An object kept in memory only would lose its state: it stays.
                if durable {
                    let leaving = act.host.begin_retiring(key, act.generation);
                    if act.host.evict(&key, act.generation, &mailbox) {
                        tracing::debug!("evicted after idling");
                        evicted("idle");
                        retiring = Some(leaving);
                        break;
                    }
                }
                continue;
            }
        };
        if state.storage().failed() {
            // A commit could not be made durable: start over from what the disk has. The old
            // database goes first: it holds the file's exclusive lock.
            instance = None;
            if state.storage().lease_lost() {
                // In a cluster: the object may live on another node now; its clients reconnect
                // (1012, service restart) and reach it wherever it is.
                tracing::info!("resetting the object: this node's hold on it ended");
                state
                    .sockets()
                    .close_all(close_code::SERVICE_RESTART, "the object moved", true);
            } else {
                tracing::warn!("resetting the object after a failed commit");
                state
                    .sockets()
                    .close_all(close_code::INTERNAL, "the object was reset", true);
            }
            // Work that holds the old state would keep its database open.
            state.drain_background(options.wait_until_timeout).await;
            close(state);
            state = match act.open().await {
                Ok(fresh) => fresh,
                Err(e) => {
                    log_open_error(&e, "reopened");
                    fail_with(&act, mailbox, Some(event), &open_error(&e, "reopened")).await;
                    return;
                }
            };
        }
        let started = std::time::Instant::now();
        let span = turn_span(&act.addr, &event);
        handle(&act, &state, &mut instance, event)
            .instrument(span)
            .await;
        turn_seconds.record(started.elapsed().as_secs_f64());
        // The turn may have grown the WAL or filled the page cache.
        act.usage.set_spare(true);
        if state.take_abort() {
            tracing::info!("restarting the object: it aborted");
            instance = None;
            state
                .sockets()
                .close_all(close_code::SERVICE_RESTART, "the object restarted", true);
            if let Err(e) = state.settled().wait().await {
                tracing::error!(error = %e, "restarting with writes that are not durable");
            }
            state.storage().wait_logged().await;
            let closing = state;
            if tokio::task::spawn_blocking(move || close(closing))
                .await
                .is_err()
            {
                tracing::error!("closing the object's database panicked");
            }
            state = match act.open().await {
                Ok(fresh) => fresh,
                Err(e) => {
                    log_open_error(&e, "reopened");
                    fail_with(&act, mailbox, None, &open_error(&e, "reopened")).await;
                    return;
                }
            };
            continue;
        }
        if state.storage().checkpoint_due() {
            // A busy object always has a commit in flight: wait for it once per thousand
            // frames, or its WAL (and the log it pins) would grow without end.
            state.storage().wait_logged().await;
        }
        state.storage().maybe_checkpoint();
        act.host.turn_ended(&key);
    }
    drop(instance);
    // Close only when everything committed is durable, so no gate waits on a closed database;
    // and only once the node log holds it, so that the checkpoint at close may copy it.
    if let Err(e) = state.settled().wait().await {
        tracing::error!(error = %e, "closing with writes that are not durable");
    }
    // Eviction waits until there is no work (above); shutdown gives it its time limit.
    state.drain_background(options.wait_until_timeout).await;
    state.storage().wait_logged().await;
    // Plain sockets end with their instance; hibernatable ones wait for the next activation.
    state
        .sockets()
        .close_all(close_code::GOING_AWAY, "the object stopped", true);
    act.host.drop_sockets_if_empty(&key);
    // Closing checkpoints the WAL, which syncs the disk: off the worker threads.
    if tokio::task::spawn_blocking(move || close(state))
        .await
        .is_err()
    {
        tracing::error!("closing the object's database panicked");
    }
    drop(retiring);
    tracing::debug!("closed");
}

/// Runs one event as a turn.
async fn handle<I: Instance>(
    act: &Activation,
    state: &ObjectState,
    instance: &mut Option<I>,
    event: Event,
) {
    let limit = act.host.options().turn_timeout;
    let ctx = |chain: &[ObjectKey]| {
        let chain = chain.iter().copied().chain([act.addr.key()]).collect();
        TurnContext::new(chain, state.clone())
    };
    match event {
        Event::Alarm { force, reply } => {
            match alarm_turn::run(&act.host, act.addr.key(), state, instance, force).await {
                Ok(report) => {
                    // The scheduler looks at the entry again when it hears back: by then the
                    // entry must say what this turn decided, or the alarm comes round again.
                    match state.storage().take_index_update() {
                        None => {
                            let _ = reply.send(report);
                        }
                        Some(update) => {
                            tokio::spawn(async move {
                                let _ = update.await;
                                let _ = reply.send(report);
                            });
                        }
                    }
                }
                // The turn was rolled back; dropping the reply tells the scheduler, and the
                // index still holds the alarm, so it comes back.
                Err(e) => {
                    tracing::error!(error = %e, "alarm event failed");
                    reset(instance, state);
                }
            }
        }
        Event::Run { job, fresh, reply } => {
            // The job may change what the instance caches: the next event builds a fresh one.
            if fresh {
                *instance = None;
            }
            let run = async { job(state) };
            let result = turn::run(run, ctx(&[]), limit).await;
            let (result, gate) = turn::finish(state, result).await;
            let _ = reply.send(TurnOutput { result, gate });
        }
        Event::Fetch { req, chain, reply } => {
            let request_id = req.headers().get(REQUEST_ID_HEADER).cloned();
            let ctx = ctx(&chain).serving(request_id);
            let result = match instance_of(instance, state, &act.host) {
                Ok(object) => turn::run(object.on_fetch(req), ctx, limit).await,
                Err(e) => Err(e),
            };
            let (result, gate) = turn::finish(state, result).await;
            if result.is_err() {
                reset(instance, state);
            }
            // The caller may have given up waiting; the turn stands either way.
            let _ = reply.send(TurnOutput { result, gate });
        }
        Event::Call { call, chain, reply } => {
            let result = match instance_of(instance, state, &act.host) {
                Ok(object) => turn::run(object.on_call(call), ctx(&chain), limit).await,
                Err(e) => Err(e),
            };
            // A method that returned its own error failed: its writes roll back like any
            // failed turn's, and its error still goes back to the caller.
            let succeeded = result.as_ref().is_ok_and(|r| !r.raised());
            let (result, gate) = turn::finish_as(state, result, succeeded).await;
            if !succeeded || result.is_err() {
                reset(instance, state);
            }
            let _ = reply.send(TurnOutput { result, gate });
        }
        Event::Socket { socket, event } => {
            let result = match instance_of(instance, state, &act.host) {
                Ok(object) => turn::run(object.on_socket(socket, event), ctx(&[]), limit).await,
                Err(e) => Err(e),
            };
            let (result, _gate) = turn::finish(state, result).await;
            if let Err(e) = result {
                tracing::warn!(error = %e, "WebSocket handler failed");
                reset(instance, state);
            }
        }
    }
}

/// The span of one turn: the object's class and id, and the request id of a request (the
/// gateway's `X-Request-Id`), so that every log line of the turn names all three.
fn turn_span(addr: &ObjectAddr, event: &Event) -> tracing::Span {
    let request_id = match event {
        Event::Fetch { req, .. } => req.header(REQUEST_ID_HEADER),
        _ => None,
    };
    tracing::info_span!(
        "turn",
        class = %addr.class.name,
        id = %addr.id,
        request_id = request_id.unwrap_or("-"),
    )
}

/// The header the gateway passes a request's id in (and `Stub::fetch` passes on).
pub(crate) const REQUEST_ID_HEADER: &str = "x-request-id";

/// Why an activation woke without an event.
enum Wake {
    /// Its idle time passed.
    Idle,
    /// Too many objects are live.
    Pressure,
}

/// Drops a failed instance; its plain sockets go with it.
fn reset<I>(instance: &mut Option<I>, state: &ObjectState) {
    if instance.take().is_some() {
        state
            .sockets()
            .close_all(close_code::INTERNAL, "the object failed", true);
    }
}

/// Logs why the object's storage could not be `what` (opened, reopened): another node owning
/// it is how a cluster works, not a failure.
fn log_open_error(e: &Error, what: &str) {
    match e {
        Error::Elsewhere(owner) => tracing::debug!(%owner, "the object is owned by another node"),
        Error::Fenced(_) | Error::StorageUnavailable(_) => {
            tracing::warn!(error = %e, "the object's storage cannot be {what}")
        }
        _ => tracing::error!(error = %e, "the object's storage cannot be {what}"),
    }
}

/// What the events waiting for an object whose storage could not be `what` (opened,
/// reopened) are told: refusals that say why (another node owns the object, storage is down)
/// as they are, so that callers get their status and can retry or go elsewhere; anything
/// else as an internal error.
fn open_error(e: &Error, what: &'static str) -> impl Fn() -> Error + Sync + use<> {
    let message = format!("the object's storage cannot be {what}: {e}");
    let kept = refusal(e);
    move || {
        kept.as_ref()
            .and_then(refusal)
            .unwrap_or_else(|| Error::Other(message.clone()))
    }
}

/// A copy of `e` if it is a refusal that says why (errors are not `Clone`).
fn refusal(e: &Error) -> Option<Error> {
    match e {
        Error::Fenced(why) => Some(Error::Fenced(why.clone())),
        Error::Elsewhere(at) => Some(Error::Elsewhere(at.clone())),
        Error::StorageUnavailable(why) => Some(Error::StorageUnavailable(why.clone())),
        _ => None,
    }
}

/// Ends an activation that cannot run: leaves the registry, then refuses `first` and every
/// event still queued with the error `make` makes (see [`open_error`]), or that storage is
/// unavailable when the data directory is gone.
async fn fail_with(
    act: &Activation,
    mut mailbox: mpsc::Receiver<Box<Event>>,
    first: Option<Event>,
    make: &(dyn Fn() -> Error + Sync),
) {
    act.host.forget(&act.addr.key(), act.generation);
    mailbox.close();
    let unavailable = act
        .host
        .storage()
        .health
        .as_ref()
        .filter(|h| !h.is_ok())
        .map(|h| h.problem());
    let error = || match &unavailable {
        Some(problem) => Error::StorageUnavailable(problem.clone()),
        None => make(),
    };
    if let Some(event) = first {
        reject(event, error());
    }
    while let Some(event) = mailbox.recv().await {
        reject(*event, error());
    }
}

/// Answers an event that cannot be handled with `error`.
fn reject(event: Event, error: Error) {
    match event {
        Event::Fetch { reply, .. } => {
            let _ = reply.send(TurnOutput {
                result: Err(error),
                gate: OutputGate::open(),
            });
        }
        Event::Run { reply, .. } => {
            let _ = reply.send(TurnOutput {
                result: Err(error),
                gate: OutputGate::open(),
            });
        }
        Event::Call { reply, .. } => {
            let _ = reply.send(TurnOutput {
                result: Err(error),
                gate: OutputGate::open(),
            });
        }
        // The connection learns nothing; the object could not run.
        Event::Socket { .. } => {}
        // Dropping the reply tells the scheduler; the alarm stays indexed and comes back.
        Event::Alarm { .. } => {}
    }
}

/// Closes the object's database if no one else holds its state.
fn close(state: ObjectState) {
    if let Some(core) = state.into_core()
        && let Err(e) = core.storage.close()
    {
        tracing::warn!(error = %e, "closing the object's database");
    }
}

//! One activation of an object: the task that owns its instance and storage and runs its turns.

use std::marker::PhantomData;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};

use http::StatusCode;
use tokio::sync::mpsc;
use tracing::Instrument;

use super::turn::{self, TurnContext};
use super::{Event, Host, ObjectKey, SocketEventKind, TurnOutput};
use crate::alarm::AlarmKey;
use crate::error::{Error, Result};
use crate::id::ObjectId;
use crate::object::{DurableObject, Env, ObjectCore, ObjectState};
use crate::runtime::{NamespaceInfo, RuntimeInner};
use crate::socket::close_code;
use crate::storage::{OutputGate, Storage};

/// Everything an activation needs to know about its object.
pub(crate) struct Activation {
    pub(crate) rt: Arc<RuntimeInner>,
    pub(crate) ns: Arc<NamespaceInfo>,
    pub(crate) id: ObjectId,
    pub(crate) key: ObjectKey,
    pub(crate) generation: u64,
}

/// Starts activations of one class; the class's type is erased behind it.
pub(crate) trait ClassFactory: Send + Sync + 'static {
    /// Spawns the task of `activation`, which drains `mailbox`.
    fn start(&self, activation: Activation, mailbox: mpsc::Receiver<Event>);
}

/// The factory of class `C`.
pub(crate) struct Factory<C>(PhantomData<fn() -> C>);

impl<C> Factory<C> {
    pub(crate) fn new() -> Self {
        Self(PhantomData)
    }
}

impl<C: DurableObject> ClassFactory for Factory<C> {
    fn start(&self, activation: Activation, mailbox: mpsc::Receiver<Event>) {
        let span = tracing::debug_span!(
            "object",
            class = %activation.ns.class_name,
            id = %activation.id,
        );
        tokio::spawn(run::<C>(activation, mailbox).instrument(span));
    }
}

/// Decrements the host's count of live activations when the task ends, however it ends.
struct LiveGuard(Arc<RuntimeInner>);

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0.host.live.send_modify(|n| *n = n.saturating_sub(1));
    }
}

impl Activation {
    /// Opens the object's storage on the blocking pool: creating a database touches the disk,
    /// and must not hold up the other objects on this worker.
    async fn open(&self) -> Result<ObjectState> {
        let act = Activation {
            rt: self.rt.clone(),
            ns: self.ns.clone(),
            id: self.id.clone(),
            key: self.key,
            generation: self.generation,
        };
        tokio::task::spawn_blocking(move || act.open_state())
            .await
            .map_err(|e| Error::msg(format!("opening the object's storage failed: {e}")))?
    }

    fn open_state(&self) -> Result<ObjectState> {
        let location = self.ns.object_location(&self.id)?;
        let storage = Storage::open(
            &location,
            self.rt.storage.clone(),
            self.ns.class_name.clone(),
            AlarmKey {
                class_uid: self.ns.uid.clone(),
                id: *self.id.as_bytes(),
            },
            self.id.clone(),
        )?;
        let id = match storage.remember_name(self.id.name())? {
            Some(name) if self.id.name().is_none() => self.id.with_name(&name),
            _ => self.id.clone(),
        };
        Ok(ObjectState::new(ObjectCore {
            id,
            class: self.ns.class_name.clone(),
            storage,
            sockets: Host::sockets_for(&self.rt, &self.ns, &self.id, self.key),
            outbox: Mutex::new(Vec::new()),
        }))
    }
}

async fn run<C: DurableObject>(act: Activation, mut mailbox: mpsc::Receiver<Event>) {
    let _live = LiveGuard(act.rt.clone());
    tracing::debug!("activated");
    let mut state = match act.open().await {
        Ok(state) => state,
        Err(e) => {
            tracing::error!(error = %e, "cannot open the object's storage");
            act.rt.host.forget(&act.key, act.generation);
            mailbox.close();
            let message = format!("the object's storage cannot be opened: {e}");
            while let Some(event) = mailbox.recv().await {
                reject(event, &message);
            }
            return;
        }
    };
    let env = Env::new(act.rt.clone());
    let options = act.rt.options.host;
    let mut instance: Option<C> = None;
    let mut pressure = act.rt.host.pressure();
    pressure.mark_unchanged();
    loop {
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
        let evictable = idle.is_some() && act.ns.dir.is_some();
        let next = tokio::select! {
            next = async {
                match idle {
                    Some(idle) => tokio::time::timeout(idle, mailbox.recv()).await.map_err(|_| Wake::Idle),
                    None => Ok(mailbox.recv().await),
                }
            } => next,
            Ok(()) = pressure.changed(), if evictable => Err(Wake::Pressure),
        };
        let event = match next {
            Ok(Some(event)) => event,
            // The host dropped the mailbox: shutting down, the queue is worked off.
            Ok(None) => break,
            Err(Wake::Pressure) => {
                if act.rt.host.take_eviction()
                    && act.rt.host.evict(&act.key, act.generation, &mailbox)
                {
                    tracing::debug!("evicted to make room");
                    break;
                }
                continue;
            }
            Err(Wake::Idle) => {
                // An object kept in memory only would lose its state: it stays.
                if act.ns.dir.is_some() && act.rt.host.evict(&act.key, act.generation, &mailbox) {
                    tracing::debug!("evicted after idling");
                    break;
                }
                continue;
            }
        };
        if state.storage().failed() {
            // A commit could not be made durable: start over from what the disk has. The old
            // database goes first: it holds the file's exclusive lock.
            tracing::warn!("resetting the object after a failed commit");
            instance = None;
            state
                .sockets()
                .close_all(close_code::INTERNAL, "the object was reset", true);
            close(state);
            state = match act.open().await {
                Ok(fresh) => fresh,
                Err(e) => {
                    let message = format!("the object's storage cannot be reopened: {e}");
                    tracing::error!("{message}");
                    act.rt.host.forget(&act.key, act.generation);
                    mailbox.close();
                    reject(event, &message);
                    while let Some(event) = mailbox.recv().await {
                        reject(event, &message);
                    }
                    return;
                }
            };
        }
        if let Event::Alarm { force, reply } = event {
            let outcome =
                super::alarm_turn::run::<C>(&act, &state, &env, &mut instance, force).await;
            match outcome {
                Ok(outcome) => {
                    state
                        .sockets()
                        .release(state.storage().settled(), state.take_outbox());
                    // The scheduler looks at the entry again when it hears back: by then the
                    // entry must say what this turn decided, or the alarm comes round again.
                    match state.storage().take_index_update() {
                        None => {
                            let _ = reply.send(outcome);
                        }
                        Some(update) => {
                            tokio::spawn(async move {
                                let _ = update.await;
                                let _ = reply.send(outcome);
                            });
                        }
                    }
                }
                Err(e) => {
                    drop(state.take_outbox());
                    // Undo whatever the failed event wrote; the record is then untouched and the
                    // index still holds the alarm, so it comes back.
                    tracing::error!(error = %e, "alarm event failed");
                    if let Err(e) = state.storage().finish_turn(false).await {
                        tracing::error!(error = %e, "rolling back a failed alarm event");
                    }
                    reset(&mut instance, &state);
                }
            }
            continue;
        }
        if let Event::Run { job, reply } = event {
            // The job may change what the instance caches: the next event builds a fresh one.
            instance = None;
            let ctx = TurnContext {
                chain: Arc::from([act.key]),
                caller: state.clone(),
            };
            let run = async { job(&state) };
            let result = turn::run(run, ctx, options.turn_timeout).await;
            let (result, gate) = finish(&state, result).await;
            let _ = reply.send(TurnOutput { result, gate });
            continue;
        }
        let object = match instance_of(&mut instance, &state, &env) {
            Ok(object) => object,
            Err(message) => {
                reject(event, &message);
                continue;
            }
        };
        let ctx = |chain: &[ObjectKey]| TurnContext {
            chain: chain.iter().copied().chain([act.key]).collect(),
            caller: state.clone(),
        };
        match event {
            Event::Fetch { req, chain, reply } => {
                let result = turn::run(object.fetch(req), ctx(&chain), options.turn_timeout).await;
                let (result, gate) = finish(&state, result).await;
                if result.is_err() {
                    reset(&mut instance, &state);
                }
                // The caller may have given up waiting; the turn stands either way.
                let _ = reply.send(TurnOutput { result, gate });
            }
            Event::Socket { socket, kind } => {
                let handler = async {
                    match kind {
                        SocketEventKind::Message(m) => object.websocket_message(socket, m).await,
                        SocketEventKind::Close {
                            code,
                            reason,
                            was_clean,
                        } => {
                            object
                                .websocket_close(socket, code, reason, was_clean)
                                .await
                        }
                        SocketEventKind::Error(e) => object.websocket_error(socket, e).await,
                    }
                };
                let result = turn::run(handler, ctx(&[]), options.turn_timeout).await;
                let (result, _gate) = finish(&state, result).await;
                if let Err(e) = result {
                    tracing::warn!(error = %e, "WebSocket handler failed");
                    reset(&mut instance, &state);
                }
            }
            // Handled above.
            Event::Run { .. } | Event::Alarm { .. } => {}
        }
    }
    drop(instance);
    // Close only when everything committed is durable, so no gate waits on a closed database.
    if let Err(e) = state.storage().settled().wait().await {
        tracing::error!(error = %e, "closing with writes that are not durable");
    }
    // Plain sockets end with their instance; hibernatable ones wait for the next activation.
    state
        .sockets()
        .close_all(close_code::GOING_AWAY, "the object stopped", true);
    act.rt.host.drop_sockets_if_empty(&act.key);
    // Closing checkpoints the WAL, which syncs the disk: off the worker threads.
    if tokio::task::spawn_blocking(move || close(state))
        .await
        .is_err()
    {
        tracing::error!("closing the object's database panicked");
    }
    tracing::debug!("closed");
}

/// The live instance, built now if there is none; an error if building it panicked.
pub(super) fn instance_of<'a, C: DurableObject>(
    instance: &'a mut Option<C>,
    state: &ObjectState,
    env: &Env,
) -> Result<&'a mut C, String> {
    if instance.is_none() {
        let (s, e) = (state.clone(), env.clone());
        let built =
            std::panic::catch_unwind(AssertUnwindSafe(|| C::new(s, e))).map_err(|panic| {
                format!(
                    "the object panicked while starting: {}",
                    turn::panic_message(&*panic)
                )
            })?;
        *instance = Some(built);
    }
    instance
        .as_mut()
        .ok_or_else(|| "the object has no instance".to_string())
}

/// Why an activation woke without an event.
enum Wake {
    /// Its idle time passed.
    Idle,
    /// Too many objects are live.
    Pressure,
}

/// Commits or rolls back the turn that produced `result`; returns the turn's final result and
/// the gate its outputs must pass.
async fn finish<T>(state: &ObjectState, result: Result<T>) -> (Result<T>, OutputGate) {
    let storage = state.storage();
    let sent = state.take_outbox();
    match storage.finish_turn(result.is_ok()).await {
        Ok(gate) => {
            // What a failed turn sent is discarded with its writes.
            if result.is_ok() {
                state.sockets().release(storage.settled(), sent);
            }
            (result, gate)
        }
        Err(e) => {
            tracing::error!(error = %e, "commit failed; the turn is rolled back");
            (Err(e), storage.settled())
        }
    }
}

/// Drops a failed instance; its plain sockets go with it.
fn reset<C>(instance: &mut Option<C>, state: &ObjectState) {
    if instance.take().is_some() {
        state
            .sockets()
            .close_all(close_code::INTERNAL, "the object failed", true);
    }
}

/// Answers an event that cannot be handled.
fn reject(event: Event, message: &str) {
    let error = Error::ObjectFailed {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        message: message.to_string(),
    };
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

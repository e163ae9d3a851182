//! Namespaces and stubs: how the gateway and objects address and call objects.

use std::sync::Arc;

use tokio::sync::oneshot;

use crate::addr::{ClassInfo, ObjectAddr};
use crate::error::{Error, Result};
use crate::host::alarm_event::AlarmReport;
use crate::host::event::{Event, RunJob};
use crate::host::{Host, turn};
use crate::id::ObjectId;
use crate::request::Request;
use crate::response::Response;
use crate::state::ObjectState;

/// All objects of one class, as reached through a binding.
#[derive(Clone)]
pub struct Namespace {
    host: Host,
    class: Arc<ClassInfo>,
}

impl std::fmt::Debug for Namespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Namespace")
            .field("class", &self.class.name)
            .finish()
    }
}

impl Namespace {
    /// The namespace of the class bound under `binding` in `host`.
    pub(crate) fn bound(host: &Host, binding: &str) -> Result<Self> {
        Ok(Self {
            class: host.binding(binding)?.clone(),
            host: host.clone(),
        })
    }

    /// The class of this namespace's objects.
    pub fn class_name(&self) -> &str {
        &self.class.name
    }

    /// The id of the object called `name`: always the same for the same name.
    pub fn id_from_name(&self, name: &str) -> ObjectId {
        self.class.minter.id_from_name(name)
    }

    /// A new, random object id.
    pub fn new_unique_id(&self) -> Result<ObjectId> {
        self.class.minter.new_unique_id()
    }

    /// Parses an id written as 64 hex characters; refuses ids this namespace did not mint.
    pub fn id_from_string(&self, hex: &str) -> Result<ObjectId> {
        self.class.minter.id_from_string(hex)
    }

    /// A stub for object `id`.
    pub fn get(&self, id: ObjectId) -> Stub {
        Stub {
            host: self.host.clone(),
            addr: ObjectAddr::new(self.class.clone(), id),
        }
    }

    /// A stub for the object called `name`.
    pub fn get_by_name(&self, name: &str) -> Stub {
        self.get(self.id_from_name(name))
    }
}

/// A handle for calling one object.
#[derive(Clone)]
pub struct Stub {
    host: Host,
    addr: ObjectAddr,
}

impl std::fmt::Debug for Stub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stub")
            .field("class", &self.addr.class.name)
            .field("id", &self.addr.id)
            .finish()
    }
}

/// Waits for the answer of an event and then for the gate its outputs must pass.
async fn answer<T>(answer: oneshot::Receiver<crate::host::event::TurnOutput<T>>) -> Result<T> {
    let output = answer
        .await
        .map_err(|e| Error::internal("the object stopped before answering", e))?;
    let gated = output.gate.wait().await;
    match (gated, output.result) {
        // The node cannot make anything durable: say so rather than that this write failed.
        (_, Err(e @ Error::StorageUnavailable(_))) => Err(e),
        (Err(e), _) => Err(e),
        (Ok(()), result) => result,
    }
}

impl Stub {
    /// The id of the object this stub calls.
    pub fn id(&self) -> &ObjectId {
        &self.addr.id
    }

    /// The address of the object this stub calls.
    pub(crate) fn addr(&self) -> &ObjectAddr {
        &self.addr
    }

    /// Sends `req` to the object and returns its response once the writes behind it are durable.
    ///
    /// Called inside a turn, the call first waits until the calling object's committed writes
    /// are durable (the output gate), and fails at once if the callee is already waiting further
    /// up the call chain, since that call could never be served.
    pub async fn fetch(&self, req: Request) -> Result<Response> {
        let key = self.addr.key();
        let caller = turn::with_current(|ctx| (ctx.chain.clone(), ctx.settled()));
        let chain = match caller {
            Some((chain, settled)) => {
                if chain.contains(&key) {
                    return Err(Error::CallCycle(self.addr.describe()));
                }
                settled.wait().await?;
                chain
            }
            None => Arc::from([]),
        };
        let (reply, rx) = oneshot::channel();
        self.host
            .dispatch(&self.addr, Event::Fetch { req, chain, reply })?;
        answer(rx).await
    }

    /// Runs `job` as a turn against the object's state (storage), serial with its other events,
    /// committed if it returns `Ok`. The next event builds a fresh instance from storage.
    pub(crate) async fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce(&ObjectState) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let (reply, rx) = oneshot::channel();
        let job: RunJob =
            Box::new(move |state| job(state).map(|v| Box::new(v) as Box<dyn std::any::Any + Send>));
        self.host.dispatch(&self.addr, Event::Run { job, reply })?;
        let value = answer(rx).await?;
        value
            .downcast::<T>()
            .map(|v| *v)
            .map_err(|_| Error::msg("a job's result has the wrong type"))
    }

    /// Delivers the object's alarm event now; with `force`, a set alarm fires whatever its time.
    pub(crate) async fn alarm(&self, force: bool) -> Result<AlarmReport> {
        let (reply, rx) = oneshot::channel();
        self.host
            .dispatch(&self.addr, Event::Alarm { force, reply })?;
        rx.await
            .map_err(|_| Error::msg("the alarm event failed; the alarm stays scheduled"))
    }

    /// The number of open WebSockets of the object (0 if it has none).
    pub fn websocket_count(&self) -> usize {
        self.host.socket_count(&self.addr)
    }

    /// The most WebSockets one object may have.
    pub fn websocket_limit(&self) -> usize {
        self.host.options().max_sockets_per_object
    }
}

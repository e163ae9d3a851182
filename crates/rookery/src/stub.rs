//! Namespaces and stubs: how the gateway and objects address and call objects.

use std::sync::Arc;

use tokio::sync::oneshot;

use crate::alarm::{AlarmKey, AlarmOutcome};
use crate::error::{Error, Result};
use crate::host::turn;
use crate::host::{Event, Host, ObjectKey, RunJob};
use crate::id::ObjectId;
use crate::object::ObjectState;
use crate::request::Request;
use crate::response::Response;
use crate::runtime::{NamespaceInfo, RuntimeInner};

/// All objects of one class, as reached through a binding.
#[derive(Clone)]
pub struct Namespace {
    rt: Arc<RuntimeInner>,
    ns: Arc<NamespaceInfo>,
}

impl std::fmt::Debug for Namespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Namespace")
            .field("class", &self.ns.class_name)
            .finish()
    }
}

impl Namespace {
    pub(crate) fn new(rt: Arc<RuntimeInner>, ns: Arc<NamespaceInfo>) -> Self {
        Self { rt, ns }
    }

    /// The class of this namespace's objects.
    pub fn class_name(&self) -> &str {
        &self.ns.class_name
    }

    /// The id of the object called `name`: always the same for the same name.
    pub fn id_from_name(&self, name: &str) -> ObjectId {
        self.ns.minter.id_from_name(name)
    }

    /// A new, random object id.
    pub fn new_unique_id(&self) -> Result<ObjectId> {
        self.ns.minter.new_unique_id()
    }

    /// Parses an id written as 64 hex characters; refuses ids this namespace did not mint.
    pub fn id_from_string(&self, hex: &str) -> Result<ObjectId> {
        self.ns.minter.id_from_string(hex)
    }

    /// A stub for object `id`.
    pub fn get(&self, id: ObjectId) -> Stub {
        Stub {
            rt: self.rt.clone(),
            ns: self.ns.clone(),
            id,
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
    rt: Arc<RuntimeInner>,
    ns: Arc<NamespaceInfo>,
    id: ObjectId,
}

impl std::fmt::Debug for Stub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stub")
            .field("class", &self.ns.class_name)
            .field("id", &self.id)
            .finish()
    }
}

impl Stub {
    /// The id of the object this stub calls.
    pub fn id(&self) -> &ObjectId {
        &self.id
    }

    /// Sends `req` to the object and returns its response once the writes behind it are durable.
    ///
    /// Called inside a turn, the call first waits until the calling object's committed writes
    /// are durable (the output gate), and fails at once if the callee is already waiting further
    /// up the call chain, since that call could never be served.
    pub async fn fetch(&self, req: Request) -> Result<Response> {
        let key = ObjectKey {
            ns: self.ns.idx,
            id: *self.id.as_bytes(),
        };
        let chain = match turn::current() {
            Some(ctx) => {
                if ctx.chain.contains(&key) {
                    return Err(Error::CallCycle(format!(
                        "{} {}",
                        self.ns.class_name,
                        self.id
                            .name()
                            .map_or_else(|| self.id.to_hex(), str::to_string)
                    )));
                }
                ctx.caller.storage().settled().wait().await?;
                ctx.chain
            }
            None => Arc::from([]),
        };
        let (reply, answer) = oneshot::channel();
        Host::dispatch(
            &self.rt,
            &self.ns,
            &self.id,
            Event::Fetch { req, chain, reply },
        )?;
        let output = answer
            .await
            .map_err(|_| Error::msg("the object stopped before answering"))?;
        output.gate.wait().await?;
        output.result
    }
}

impl Stub {
    /// Runs `job` as a turn against the object's state (storage), serial with its other events,
    /// committed if it returns `Ok`. The next event builds a fresh instance from storage.
    pub(crate) async fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce(&ObjectState) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let (reply, answer) = oneshot::channel();
        let job: RunJob =
            Box::new(move |state| job(state).map(|v| Box::new(v) as Box<dyn std::any::Any + Send>));
        Host::dispatch(&self.rt, &self.ns, &self.id, Event::Run { job, reply })?;
        let output = answer
            .await
            .map_err(|_| Error::msg("the object stopped before answering"))?;
        output.gate.wait().await?;
        let value = output.result?;
        value
            .downcast::<T>()
            .map(|v| *v)
            .map_err(|_| Error::msg("a job's result has the wrong type"))
    }
}

impl Stub {
    /// Delivers the object's alarm event now; with `force`, a set alarm fires whatever its time.
    pub(crate) async fn alarm(&self, force: bool) -> Result<AlarmOutcome> {
        let (reply, answer) = oneshot::channel();
        Host::dispatch(&self.rt, &self.ns, &self.id, Event::Alarm { force, reply })?;
        answer
            .await
            .map_err(|_| Error::msg("the alarm event failed; the alarm stays scheduled"))
    }

    /// The time the node's alarm index holds for this object (may be earlier than its record).
    pub(crate) fn indexed_alarm(&self) -> Result<Option<i64>> {
        self.rt.storage.alarms.get(&AlarmKey {
            class_uid: self.ns.uid.clone(),
            id: *self.id.as_bytes(),
        })
    }
}

impl Stub {
    /// The number of open WebSockets of the object (0 if it has none).
    pub fn websocket_count(&self) -> usize {
        self.rt.host.socket_count(&ObjectKey {
            ns: self.ns.idx,
            id: *self.id.as_bytes(),
        })
    }

    /// The most WebSockets one object may have.
    pub fn websocket_limit(&self) -> usize {
        self.rt.options.host.max_sockets_per_object
    }
}

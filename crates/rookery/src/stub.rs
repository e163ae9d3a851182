//! Namespaces and stubs: how the gateway, workers and objects address and call objects.

use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;

use tokio::sync::oneshot;

use crate::addr::{ClassInfo, ObjectAddr};
use crate::call::{Call, CallResult, MethodResult, Reply};
use crate::error::{Error, Result};
use crate::host::activation::REQUEST_ID_HEADER;
use crate::host::alarm_event::{AlarmOutcome, AlarmReport};
use crate::host::event::{Event, RunJob, TurnOutput};
use crate::host::turn::{CallChain, TurnContext};
use crate::host::{Forwarded, Host, Location, turn};
use crate::id::ObjectId;
use crate::request::Request;
use crate::response::Response;
use crate::state::ObjectState;

/// All objects of one class, as reached through a binding. `S` is what reaches one object:
/// a [`Stub`] (HTTP requests and any call), or the typed stub of a service (see
/// [`crate::service`]), which [`Namespace::typed`] picks.
pub struct Namespace<S = Stub> {
    host: Host,
    class: Arc<ClassInfo>,
    stub: PhantomData<fn() -> S>,
}

impl<S> Clone for Namespace<S> {
    fn clone(&self) -> Self {
        Self {
            host: self.host.clone(),
            class: self.class.clone(),
            stub: PhantomData,
        }
    }
}

impl<S> std::fmt::Debug for Namespace<S> {
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
            stub: PhantomData,
        })
    }

    /// The namespace of the hosted class named `class`, bound or not.
    pub(crate) fn of_class(host: &Host, class: &str) -> Result<Self> {
        let info = host
            .hosted_classes()
            .find(|c| &*c.name == class)
            .ok_or_else(|| Error::UnknownBinding(class.to_string()))?;
        Ok(Self {
            class: info.clone(),
            host: host.clone(),
            stub: PhantomData,
        })
    }
}

impl<S> Namespace<S> {
    /// This namespace, reaching its objects through typed stubs `T` (e.g. the `LockStub` of a
    /// `#[rookery::service] trait Lock`). A method the class does not serve fails its call
    /// with [`Error::UnknownMethod`].
    pub fn typed<T: From<Stub>>(self) -> Namespace<T> {
        Namespace {
            host: self.host,
            class: self.class,
            stub: PhantomData,
        }
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
}

impl<S: From<Stub>> Namespace<S> {
    /// A stub for object `id`.
    pub fn get(&self, id: ObjectId) -> S {
        S::from(Stub {
            host: self.host.clone(),
            addr: ObjectAddr::new(self.class.clone(), id),
        })
    }

    /// A stub for the object called `name`.
    pub fn get_by_name(&self, name: &str) -> S {
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
async fn answer<T>(answer: oneshot::Receiver<TurnOutput<T>>) -> Result<T> {
    let output = answer.await.map_err(stopped)?;
    gated(output).await
}

/// The result of a turn once the gate its outputs must pass has opened.
async fn gated<T>(output: TurnOutput<T>) -> Result<T> {
    let gated = output.gate.wait().await;
    match (gated, output.result) {
        // The node cannot make anything durable: say so rather than that this write failed.
        (_, Err(e @ Error::StorageUnavailable(_))) => Err(e),
        (Err(e), _) => Err(e),
        (Ok(()), result) => result,
    }
}

fn stopped(e: oneshot::error::RecvError) -> Error {
    Error::internal("the object stopped before answering", e)
}

impl Stub {
    /// A stub for the object at `addr`.
    pub(crate) fn new(host: Host, addr: ObjectAddr) -> Self {
        Self { host, addr }
    }

    /// The id of the object this stub calls.
    pub fn id(&self) -> &ObjectId {
        &self.addr.id
    }

    /// The name of the object's class.
    pub fn class_name(&self) -> &str {
        &self.addr.class.name
    }

    /// The address of the object this stub calls.
    pub(crate) fn addr(&self) -> &ObjectAddr {
        &self.addr
    }

    /// Sends `req` to the object and returns its response once the writes behind it are durable.
    ///
    /// Called inside a turn, the call first waits until the calling object's committed writes
    /// are durable (the output gate), and fails at once if the callee is already waiting further
    /// up the call chain ([`Error::CallCycle`]) or its running turn waits on the caller
    /// ([`Error::Deadlock`]), since that call could never be served.
    ///
    /// A request sent from a turn that serves a request with an id (`X-Request-Id`) carries
    /// that id too, unless it has one of its own: the callee's turn logs under the same id.
    ///
    /// In a cluster, a request for an object another node owns goes to that node (see
    /// [`crate::Forwarder`]); a WebSocket upgrade is not forwarded and is refused with
    /// [`Error::Elsewhere`].
    pub async fn fetch(&self, mut req: Request) -> Result<Response> {
        if !req.headers().contains_key(REQUEST_ID_HEADER)
            && let Some(Some(id)) = turn::with_current(|ctx| ctx.request_id().cloned())
        {
            req = req.with_header(http::HeaderName::from_static(REQUEST_ID_HEADER), id);
        }
        let Some(forwarder) = self
            .host
            .forwarder()
            .filter(|_| !req.is_websocket_upgrade())
        else {
            return self.fetch_here(req).await;
        };
        self.here_or_at_owner(
            req,
            |req| self.fetch_here(req),
            |address, req| forwarder.fetch(&address, &self.addr.class.name, &self.addr.id, req),
        )
        .await
    }

    /// [`Stub::fetch`] on this node only: an object owned elsewhere is refused with
    /// [`Error::Elsewhere`], never forwarded (what a node does with a request forwarded to it).
    pub async fn fetch_here(&self, req: Request) -> Result<Response> {
        self.deliver(|chain, reply| Event::Fetch { req, chain, reply })
            .await
    }

    /// Calls a method of the object: a turn of the object, serial with its other events,
    /// atomic, and answered once its writes are durable; refused like [`Stub::fetch`] when it
    /// would close a cycle or a deadlock. Typed stubs (see [`crate::service`]) call this; `R`
    /// is the method's return type.
    ///
    /// In a cluster, a call to an object another node owns goes to that node, like
    /// [`Stub::fetch`].
    pub async fn call<R: MethodResult>(&self, call: Call) -> CallResult<R> {
        let Some(forwarder) = self.host.forwarder() else {
            return self.call_here(call).await?.decode::<R>();
        };
        self.here_or_at_owner(
            call,
            |call| self.call_here(call),
            |address, call| forwarder.call(&address, &self.addr.class.name, &self.addr.id, call),
        )
        .await?
        .decode::<R>()
    }

    /// Serves `message` here (`here`), or at the owner (`owner`, with its address) when
    /// placement knows the object lives elsewhere or its activation here finds out (this node
    /// cannot know sooner: ownership is learnt when the object activates). An object live here
    /// is served here without keeping a copy: the rare request that meets it just as its lease
    /// ends is refused with [`Error::Elsewhere`] (503, retry) instead of forwarded.
    async fn here_or_at_owner<M: Clone, T, Here>(
        &self,
        message: M,
        here: impl FnOnce(M) -> Here,
        owner: impl FnOnce(String, M) -> Forwarded<T>,
    ) -> Result<T>
    where
        Here: Future<Output = Result<T>>,
    {
        if self.host.is_live(&self.addr.key()) {
            return here(message).await;
        }
        if let Location::Remote(address) = self.host.locate(&self.addr) {
            return owner(address, message).await;
        }
        let copy = message.clone();
        match here(message).await {
            Err(Error::Elsewhere(address)) => owner(address, copy).await,
            answer => answer,
        }
    }

    /// [`Stub::call`] on this node only: the encoded reply, or [`Error::Elsewhere`] for an
    /// object another node owns (what a node does with a call forwarded to it).
    pub async fn call_here(&self, call: Call) -> Result<Reply> {
        self.deliver(|chain, reply| Event::Call { call, chain, reply })
            .await
    }

    /// Delivers the event that `event` makes (with the call chain and the reply channel) and
    /// waits for its answer, then for the gate the answer must pass.
    async fn deliver<T>(
        &self,
        event: impl FnOnce(CallChain, oneshot::Sender<TurnOutput<T>>) -> Event,
    ) -> Result<T> {
        let callee = self.addr.key();
        let (chain, waiting) = match turn::with_current(TurnContext::clone) {
            None => (CallChain::from([]), None),
            Some(ctx) => {
                if ctx.chain.contains(&callee) {
                    tracing::debug!(callee = %self.addr.describe(), "call refused: call cycle");
                    return Err(Error::CallCycle(self.addr.describe()));
                }
                ctx.settled().wait().await?;
                let waiting = match ctx.object() {
                    Some(caller) => match self.host.waits().enter(caller, callee) {
                        Some(waiting) => Some(waiting),
                        None => {
                            let message = format!(
                                "{} is running a turn that waits, through its calls, on {}, \
                                 whose turn makes this call",
                                self.addr.describe(),
                                ctx.describe()
                            );
                            tracing::debug!(%message, "call refused: deadlock");
                            return Err(Error::Deadlock(message));
                        }
                    },
                    None => None,
                };
                (ctx.chain.clone(), waiting)
            }
        };
        let (reply, rx) = oneshot::channel();
        self.host.dispatch(&self.addr, event(chain, reply))?;
        let output = rx.await.map_err(stopped)?;
        // The callee's turn is over: from here on the caller waits for the disk, not for the
        // callee, and must not look like it is waiting on its turn.
        drop(waiting);
        gated(output).await
    }

    /// Runs `job` as a turn against the object's state (storage), serial with its other events,
    /// committed if it returns `Ok`. The next event builds a fresh instance from storage.
    pub(crate) async fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce(&ObjectState) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        self.run_job(job, true).await
    }

    /// Runs `job` as [`Stub::run`] does, keeping the object's instance: for jobs that only
    /// read, or copy, its storage.
    pub(crate) async fn run_reading<T: Send + 'static>(
        &self,
        job: impl FnOnce(&ObjectState) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        self.run_job(job, false).await
    }

    async fn run_job<T: Send + 'static>(
        &self,
        job: impl FnOnce(&ObjectState) -> Result<T> + Send + 'static,
        fresh: bool,
    ) -> Result<T> {
        let (reply, rx) = oneshot::channel();
        let job: RunJob =
            Box::new(move |state| job(state).map(|v| Box::new(v) as Box<dyn std::any::Any + Send>));
        self.host
            .dispatch(&self.addr, Event::Run { job, fresh, reply })?;
        let value = answer(rx).await?;
        value
            .downcast::<T>()
            .map(|v| *v)
            .map_err(|_| Error::msg("a job's result has the wrong type"))
    }

    /// Wakes the object for its alarm: the handler runs if the alarm is due, and this node's
    /// alarm index learns what the object's record says either way (what a cluster node does
    /// for an alarm whose owner is gone).
    pub async fn fire_alarm(&self) -> Result<AlarmOutcome> {
        Ok(self.alarm(false).await?.outcome)
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

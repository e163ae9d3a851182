//! What an object author implements and what the runtime hands to each object.

use std::future::Future;
use std::sync::Arc;

use crate::alarm::AlarmInfo;
use crate::error::Result;
use crate::id::ObjectId;
use crate::request::Request;
use crate::response::Response;
use crate::runtime::RuntimeInner;
use crate::storage::Storage;
use crate::stub::Namespace;

/// A class of durable objects.
///
/// The runtime keeps at most one instance per object id and gives it one event at a time: each
/// handler call is a *turn* that runs to completion before the next starts. When a handler
/// returns `Ok`, the turn's storage writes commit together and its outputs are released once
/// they are durable; when it returns `Err`, panics or overruns the turn time limit, the writes
/// are rolled back and the instance is dropped, to be built afresh from storage.
pub trait DurableObject: Sized + Send + 'static {
    /// Builds an instance for the object that `state` belongs to.
    fn new(state: ObjectState, env: Env) -> Self;

    /// Handles an HTTP request addressed to this object.
    fn fetch(&mut self, req: Request) -> impl Future<Output = Result<Response>> + Send;

    /// Handles the object's alarm, set with `storage.set_alarm`. Runs as a turn like any other;
    /// the alarm is cleared when the turn starts (set it again from here to repeat). If this
    /// returns `Err`, panics or times out, the alarm is retried with exponential backoff (2 s,
    /// doubling, at most 6 retries) unless this handler set or deleted the alarm itself.
    fn alarm(&mut self, info: AlarmInfo) -> impl Future<Output = Result<()>> + Send {
        let _ = info;
        async { Ok(()) }
    }
}

/// The runtime's handle on one object: its id and its storage.
#[derive(Clone)]
pub struct ObjectState {
    core: Arc<ObjectCore>,
}

pub(crate) struct ObjectCore {
    pub(crate) id: ObjectId,
    pub(crate) class: Arc<str>,
    pub(crate) storage: Storage,
}

impl ObjectState {
    pub(crate) fn new(core: ObjectCore) -> Self {
        Self {
            core: Arc::new(core),
        }
    }

    /// This object's id (with its name, when it was addressed by name).
    pub fn id(&self) -> &ObjectId {
        &self.core.id
    }

    /// The class this object belongs to.
    pub fn class(&self) -> &str {
        &self.core.class
    }

    /// Now, in milliseconds since the Unix epoch, by the runtime's clock (which tests can move).
    pub fn now_ms(&self) -> i64 {
        self.core.storage.clock().now_ms()
    }

    /// This object's transactional storage.
    pub fn storage(&self) -> &Storage {
        &self.core.storage
    }

    /// Takes the object's core back if no one else holds this state.
    pub(crate) fn into_core(self) -> Option<ObjectCore> {
        Arc::into_inner(self.core)
    }
}

/// The bindings an object can reach: namespaces of other classes by binding name.
#[derive(Clone)]
pub struct Env {
    rt: Arc<RuntimeInner>,
}

impl Env {
    pub(crate) fn new(rt: Arc<RuntimeInner>) -> Self {
        Self { rt }
    }

    /// The namespace bound under `binding`.
    pub fn namespace(&self, binding: &str) -> Result<Namespace> {
        RuntimeInner::namespace(&self.rt, binding)
    }
}

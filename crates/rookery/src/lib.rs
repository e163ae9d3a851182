//! Rookery: a self-hosted Durable Objects runtime.
//!
//! A *durable object* is a named, single-threaded piece of state with its own transactional
//! storage. Implement [`DurableObject`] for a type, register it in a [`Runtime`] under a class
//! name, bind the class, and reach its objects through [`Namespace`] and [`Stub`].
//!
//! ```no_run
//! use rookery::prelude::*;
//!
//! struct Counter { state: ObjectState }
//!
//! impl DurableObject for Counter {
//!     fn new(state: ObjectState, _env: Env) -> Self { Self { state } }
//!
//!     async fn fetch(&mut self, _req: Request) -> Result<Response> {
//!         let storage = self.state.storage();
//!         let value = storage.get::<i64>("value")?.unwrap_or(0) + 1;
//!         storage.put("value", &value)?; // durable before the response leaves
//!         Response::json(&serde_json::json!({ "value": value }))
//!     }
//! }
//! ```

// Layers, from the bottom; every module imports only modules below it (docs/ARCHITECTURE.md).
// values
mod addr;
mod admin;
mod admin_error;
mod backup;
mod bucket;
mod call;
mod clock;
mod durable_dir;
mod error;
mod id;
pub mod identity;
mod request;
pub mod telemetry;
mod vars;
// storage: object databases, the commit pipeline, the alarm index, the catalog
mod storage;
// what turns emit, held until durable; then sockets, streams and wait_until work, which use it
mod background;
mod outbox;
mod socket;
mod stream;
// what objects see of themselves
mod outbound;
mod response;
mod state;
// the host: registry, mailboxes, activations, turns
mod host;
// ways in: stubs and the environment, then the object trait on top of them
mod env;
mod object;
mod stub;
mod worker;
// the alarm scheduler
mod alarm;
// assembly
mod runtime;
pub mod testing;

pub use admin::{
    Admin, AlarmRun, BackupReport, ClassSummary, DEFAULT_PAGE, KvEntry, KvPage, MAX_PAGE,
    ObjectDetail, ObjectPage, ObjectQuery, ObjectSummary, QUERY_TIME_LIMIT, QueryRows,
};
pub use admin_error::{AdminError, AdminResult};
pub use alarm::{AlarmStats, LatenessSummary};
pub use backup::{BACKUP_MANIFEST, RestoreReport, restore_backup};
pub use bucket::{
    Bucket, BucketEntry, BucketError, Buckets, MAX_BUCKET_KEY_BYTES, TEMP_DIR as BUCKET_TEMP_DIR,
    validate_key as validate_bucket_key,
};
pub use call::{Call, CallError, CallResult, MethodResult, Reply};
pub use clock::{Clock, ManualClock, SystemClock, civil_from_days};
pub use env::{Env, Http};
pub use error::{Error, OutboundErrorKind, Result, StartError};
pub use host::alarm_event::{AlarmInfo, AlarmOutcome, MAX_RETRIES, backoff_ms};
pub use host::{
    ClassStats, Forwarded, Forwarder, HostOptions, LIVE_OBJECT_BYTES, LocalPlacement, Location,
    Placement,
};
pub use id::{IdMinter, ObjectId};
pub use object::DurableObject;
pub use outbound::Outbound;
pub use request::{Request, percent_decode, percent_encode};
pub use response::Response;
pub use runtime::{Classes, NotReady, Runtime, RuntimeBuilder, RuntimeOptions, RuntimeStats};
pub use socket::{
    MAX_ATTACHMENT_BYTES, MAX_TAG_BYTES, MAX_TAGS, Outgoing, SocketLink, Undelivered, WebSocket,
    WsMessage, close_code,
};
pub use state::ObjectState;
pub use storage::{
    ClassKey, ClassKeys, ColumnIndex, CommitLog, CommitRecord, Durability, FromSqlValue, Grant,
    HistoryOptions, Lease, ListOptions, LocalClassKeys, LocalCommitLog, Migration, OutputGate,
    PAGE_BYTES, Packed, PackedPages, Page, Sql, SqlCursor, SqlRow, SqlValue, Storage,
    StorageLimits, SyncHook, TableInfo, pack_image,
};
pub use stream::{
    BodyStream, EVENT_STREAM, MAX_QUEUED_CHUNKS, MAX_QUEUED_STREAM_BYTES, SseEvent, StreamCut,
    StreamLink,
};
pub use stub::{Namespace, Stub};
pub use vars::{Secret, Vars};
pub use worker::{SharedWorker, Worker};

pub use bytes::Bytes;
pub use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};

/// Declares the methods an object serves to typed calls (RPC): the attribute on a trait of
/// `async fn`s.
///
/// ```
/// use rookery::prelude::*;
/// use serde::{Deserialize, Serialize};
///
/// /// What `acquire` can refuse with: the service's own error type, sent back to the caller.
/// #[derive(Debug, Serialize, Deserialize)]
/// pub enum LockError {
///     Held { by: String },
///     Storage(String),
/// }
///
/// impl From<Error> for LockError {
///     fn from(e: Error) -> Self { LockError::Storage(e.to_string()) }
/// }
///
/// #[rookery::service]
/// pub trait Lock {
///     /// Takes the lock for `owner` for `ttl_ms`.
///     async fn acquire(&mut self, owner: String, ttl_ms: u64) -> Result<(), LockError>;
///     /// Gives the lock up; whether `owner` held it.
///     async fn release(&mut self, owner: String) -> rookery::Result<bool>;
/// }
///
/// pub struct DistributedLock { state: ObjectState }
///
/// impl DurableObject for DistributedLock {
///     fn new(state: ObjectState, _env: Env) -> Self { Self { state } }
///     async fn fetch(&mut self, _req: Request) -> Result<Response> { Ok(Response::not_found()) }
///     // Typed calls reach the object here; `serve` is generated.
///     async fn call(&mut self, call: Call) -> Result<Reply> { Lock::serve(self, call).await }
/// }
///
/// impl Lock for DistributedLock {
///     async fn acquire(&mut self, owner: String, ttl_ms: u64) -> Result<(), LockError> {
///         let (storage, now) = (self.state.storage(), self.state.now_ms());
///         if let Some((by, until)) = storage.get::<(String, i64)>("holder")? {
///             if by != owner && until > now {
///                 return Err(LockError::Held { by });
///             }
///         }
///         storage.put("holder", &(owner, now + ttl_ms as i64))?;
///         Ok(())
///     }
///
///     async fn release(&mut self, owner: String) -> rookery::Result<bool> {
///         let storage = self.state.storage();
///         let held = storage.get::<(String, i64)>("holder")?.is_some_and(|(by, _)| by == owner);
///         if held {
///             storage.delete("holder")?;
///         }
///         Ok(held)
///     }
/// }
///
/// // From another object, a worker or the gateway:
/// async fn take(env: &Env) -> Result<bool> {
///     let lock = env.namespace("LOCKS")?.typed::<LockStub>().get_by_name("jobs");
///     match lock.acquire("worker-1".into(), 30_000).await {
///         Ok(()) => {}
///         Err(CallError::Object(LockError::Held { .. })) => return Ok(false),
///         Err(e) if e.is_retryable() => return Err(Error::Overloaded), // did not run
///         Err(e) => return Err(Error::msg(format!("{e:?}"))),
///     }
///     // A method returning `rookery::Result` passes its failure on with `?`.
///     Ok(lock.release("worker-1".into()).await?)
/// }
/// ```
///
/// The attribute keeps the trait (each method now returns a `Send` future, so an implementation
/// writes plain `async fn`s) and adds:
///
/// - `serve(&mut self, call)`: runs a [`Call`] of one of the trait's methods; implement
///   [`DurableObject::call`] with it;
/// - `<Trait>Stub`, a typed stub: `From<Stub>`, `Deref<Target = Stub>`, and one method per trait
///   method returning [`CallResult`]: the method's value, or a [`CallError`] that is either the
///   method's own error ([`CallError::Object`]) or the runtime's ([`CallError::Runtime`]).
///
/// Methods take `&mut self` (or `&self`) and owned serde arguments, and return `Result<T, E>`
/// with serde `T` and `E`; `E` may be [`Error`] itself. Arguments, values and errors are
/// encoded (postcard) on their way, as they will be between nodes. A call is a turn of the
/// callee: a method that returns `Err` fails it, so its writes roll back and its instance is
/// rebuilt, as for `fetch`.
pub use rookery_macros::service;

/// The names most objects need.
pub mod prelude {
    pub use crate::{
        AlarmInfo, BodyStream, Call, CallError, DurableObject, Env, Error, ListOptions, Method,
        Namespace, ObjectId, ObjectState, OutboundErrorKind, Reply, Request, Response, Result,
        Secret, SqlValue, SseEvent, StatusCode, Storage, Stub, WebSocket, Worker, WsMessage,
    };
}

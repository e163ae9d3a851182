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
mod clock;
mod durable_dir;
mod error;
mod id;
pub mod identity;
mod request;
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
// the alarm scheduler
mod alarm;
// assembly
mod runtime;
pub mod testing;

pub use alarm::{AlarmStats, LatenessSummary};
pub use clock::{Clock, ManualClock, SystemClock};
pub use env::{Env, Http};
pub use error::{Error, OutboundErrorKind, Result, StartError};
pub use host::alarm_event::{AlarmInfo, AlarmOutcome, MAX_RETRIES, backoff_ms};
pub use host::{HostOptions, LocalPlacement, Location, Placement};
pub use id::{IdMinter, ObjectId};
pub use object::DurableObject;
pub use outbound::Outbound;
pub use request::{Request, percent_decode};
pub use response::Response;
pub use runtime::{Classes, Runtime, RuntimeBuilder, RuntimeOptions, RuntimeStats};
pub use socket::{
    MAX_ATTACHMENT_BYTES, MAX_TAG_BYTES, MAX_TAGS, Outgoing, SocketLink, Undelivered, WebSocket,
    WsMessage, close_code,
};
pub use state::ObjectState;
pub use storage::{
    ColumnIndex, CommitLog, CommitRecord, Durability, FromSqlValue, ListOptions, LocalCommitLog,
    Migration, OutputGate, Sql, SqlCursor, SqlRow, SqlValue, Storage, StorageLimits, SyncHook,
};
pub use stream::{
    BodyStream, EVENT_STREAM, MAX_QUEUED_CHUNKS, MAX_QUEUED_STREAM_BYTES, SseEvent, StreamCut,
    StreamLink,
};
pub use stub::{Namespace, Stub};
pub use vars::{Secret, Vars};

pub use bytes::Bytes;
pub use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};

/// The names most objects need.
pub mod prelude {
    pub use crate::{
        AlarmInfo, BodyStream, DurableObject, Env, Error, ListOptions, Method, Namespace, ObjectId,
        ObjectState, OutboundErrorKind, Request, Response, Result, Secret, SqlValue, SseEvent,
        StatusCode, Storage, Stub, WebSocket, WsMessage,
    };
}

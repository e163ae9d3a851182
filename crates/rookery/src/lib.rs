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

mod alarm;
mod catalog;
mod error;
mod host;
mod id;
mod object;
mod request;
mod response;
mod runtime;
mod socket;
mod storage;
mod stub;
pub mod testing;

pub use alarm::{
    AlarmInfo, AlarmOutcome, AlarmStats, Clock, MAX_RETRIES, ManualClock, SystemClock, backoff_ms,
};
pub use catalog::Migration;
pub use error::{Error, Result};
pub use host::{HostOptions, LocalPlacement, Location, Placement};
pub use id::{IdMinter, ObjectId};
pub use object::{DurableObject, Env, ObjectState};
pub use request::{Request, percent_decode};
pub use response::Response;
pub use runtime::{Classes, Runtime, RuntimeBuilder, RuntimeOptions, RuntimeStats};
pub use socket::{
    MAX_ATTACHMENT_BYTES, MAX_TAG_BYTES, MAX_TAGS, Outgoing, SocketLink, Undelivered, WebSocket,
    WsMessage, close_code,
};
pub use storage::{
    ColumnIndex, CommitLog, CommitRecord, Durability, FromSqlValue, ListOptions, LocalCommitLog,
    OutputGate, Sql, SqlCursor, SqlRow, SqlValue, Storage, StorageLimits, SyncHook,
};
pub use stub::{Namespace, Stub};

pub use bytes::Bytes;
pub use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};

/// The names most objects need.
pub mod prelude {
    pub use crate::{
        AlarmInfo, DurableObject, Env, Error, ListOptions, Method, Namespace, ObjectId,
        ObjectState, Request, Response, Result, SqlValue, StatusCode, Storage, Stub, WebSocket,
        WsMessage,
    };
}

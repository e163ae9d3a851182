//! The events a host delivers to objects; each one is handled as one turn.

use std::any::Any;

use tokio::sync::oneshot;

use super::alarm_event::AlarmReport;
use super::turn::CallChain;
use crate::call::{Call, Reply};
use crate::error::Result;
use crate::request::Request;
use crate::response::Response;
use crate::socket::{SocketEvent, WebSocket};
use crate::state::ObjectState;
use crate::storage::OutputGate;

/// An event for an object; each one is handled as one turn.
// Requests are the common event: kept inline, so the one box the mailbox puts each event in
// is its only allocation.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Event {
    /// An HTTP request, from the gateway or another object.
    Fetch {
        req: Request,
        chain: CallChain,
        reply: oneshot::Sender<TurnOutput<Response>>,
    },
    /// A typed call of one of the object's methods, from another object, a worker or the
    /// gateway.
    Call {
        call: Call,
        chain: CallChain,
        reply: oneshot::Sender<TurnOutput<Reply>>,
    },
    /// The object's alarm may be due; `force` fires a set alarm whatever its time (tests).
    Alarm {
        force: bool,
        reply: oneshot::Sender<AlarmReport>,
    },
    /// Something happened on one of the object's WebSockets.
    Socket {
        socket: WebSocket,
        event: SocketEvent,
    },
    /// A closure run as a turn against the object's state, without its instance (tests, tools).
    Run {
        job: RunJob,
        /// Whether the next event builds a fresh instance (the job may change what the
        /// instance caches); read-only jobs keep it.
        fresh: bool,
        reply: oneshot::Sender<TurnOutput<Box<dyn Any + Send>>>,
    },
}

/// Work for [`Event::Run`].
pub(crate) type RunJob = Box<dyn FnOnce(&ObjectState) -> Result<Box<dyn Any + Send>> + Send>;

/// A turn's result and the gate it must pass before anyone may see it.
pub(crate) struct TurnOutput<T> {
    pub(crate) result: Result<T>,
    pub(crate) gate: OutputGate,
}

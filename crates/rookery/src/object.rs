//! What an object author implements: the [`DurableObject`] trait, and how the host runs it.

use std::future::Future;

use crate::call::{Call, Reply};
use crate::env::Env;
use crate::error::Result;
use crate::host::Host;
use crate::host::alarm_event::AlarmInfo;
use crate::host::class::Instance;
use crate::request::Request;
use crate::response::Response;
use crate::socket::{SocketEvent, WebSocket, WsMessage};
use crate::state::ObjectState;

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

    /// Handles a typed call of one of the object's methods (a turn like any other). An object
    /// that serves a [`crate::service`] trait answers with its generated `serve`:
    /// `async fn call(&mut self, call: Call) -> Result<Reply> { Lock::serve(self, call).await }`.
    /// The default serves no methods.
    fn call(&mut self, call: Call) -> impl Future<Output = Result<Reply>> + Send {
        async move { Err(call.unknown()) }
    }

    /// Handles the object's alarm, set with `storage.set_alarm`. Runs as a turn like any other;
    /// the alarm is cleared when the turn starts (set it again from here to repeat). Its time
    /// limit is the alarm's own (`alarm_timeout`, 15 minutes), not a request's. If this
    /// returns `Err`, panics or times out, the alarm is retried with exponential backoff (2 s,
    /// doubling, at most 6 retries) unless this handler set or deleted the alarm itself.
    fn alarm(&mut self, info: AlarmInfo) -> impl Future<Output = Result<()>> + Send {
        let _ = info;
        async { Ok(()) }
    }

    /// Handles a message from one of the object's WebSockets (a turn like any other).
    fn websocket_message(
        &mut self,
        ws: WebSocket,
        message: WsMessage,
    ) -> impl Future<Output = Result<()>> + Send {
        let _ = (ws, message);
        async { Ok(()) }
    }

    /// Handles the end of a WebSocket connection: `code` and `reason` from the client's close
    /// frame, or 1006 with `was_clean = false` when the connection just dropped. The socket is
    /// no longer among `get_websockets`.
    fn websocket_close(
        &mut self,
        ws: WebSocket,
        code: u16,
        reason: String,
        was_clean: bool,
    ) -> impl Future<Output = Result<()>> + Send {
        let _ = (ws, code, reason, was_clean);
        async { Ok(()) }
    }

    /// Handles a protocol or size error on a WebSocket; `websocket_close` follows.
    fn websocket_error(
        &mut self,
        ws: WebSocket,
        error: String,
    ) -> impl Future<Output = Result<()>> + Send {
        let _ = (ws, error);
        async { Ok(()) }
    }
}

impl<C: DurableObject> Instance for C {
    fn build(state: ObjectState, host: &Host) -> Self {
        C::new(state, Env::new(host.clone()))
    }

    fn on_fetch(&mut self, req: Request) -> impl Future<Output = Result<Response>> + Send {
        self.fetch(req)
    }

    fn on_call(&mut self, call: Call) -> impl Future<Output = Result<Reply>> + Send {
        self.call(call)
    }

    fn on_alarm(&mut self, info: AlarmInfo) -> impl Future<Output = Result<()>> + Send {
        self.alarm(info)
    }

    async fn on_socket(&mut self, ws: WebSocket, event: SocketEvent) -> Result<()> {
        match event {
            SocketEvent::Message(m) => self.websocket_message(ws, m).await,
            SocketEvent::Close {
                code,
                reason,
                was_clean,
            } => self.websocket_close(ws, code, reason, was_clean).await,
            SocketEvent::Error(e) => self.websocket_error(ws, e).await,
        }
    }
}

//! What the host needs of an object class: an instance it can build and give events to.
//!
//! The host runs instances without knowing the object trait that authors implement; the layer
//! above implements [`Instance`] for every `DurableObject`.

use std::future::Future;
use std::panic::AssertUnwindSafe;

use http::StatusCode;

use super::Host;
use super::alarm_event::AlarmInfo;
use crate::call::{Call, Reply};
use crate::error::{Error, Result, panic_message};
use crate::request::Request;
use crate::response::Response;
use crate::socket::{SocketEvent, WebSocket};
use crate::state::ObjectState;

/// A live instance of an object class, as the host drives it: one handler call per turn.
pub(crate) trait Instance: Sized + Send + 'static {
    /// Builds the instance of the object that `state` belongs to.
    fn build(state: ObjectState, host: &Host) -> Self;

    /// Handles an HTTP request.
    fn on_fetch(&mut self, req: Request) -> impl Future<Output = Result<Response>> + Send;

    /// Handles a typed call: runs the method, answers with its encoded result.
    fn on_call(&mut self, call: Call) -> impl Future<Output = Result<Reply>> + Send;

    /// Handles the object's alarm.
    fn on_alarm(&mut self, info: AlarmInfo) -> impl Future<Output = Result<()>> + Send;

    /// Handles an event on one of the object's WebSockets.
    fn on_socket(
        &mut self,
        ws: WebSocket,
        event: SocketEvent,
    ) -> impl Future<Output = Result<()>> + Send;
}

/// The live instance, built now if there is none; an error if building it panicked.
pub(crate) fn instance_of<'a, I: Instance>(
    instance: &'a mut Option<I>,
    state: &ObjectState,
    host: &Host,
) -> Result<&'a mut I> {
    if instance.is_none() {
        let s = state.clone();
        let built =
            std::panic::catch_unwind(AssertUnwindSafe(|| I::build(s, host))).map_err(|panic| {
                let message = format!(
                    "the object panicked while starting: {}",
                    panic_message(&*panic)
                );
                tracing::error!("{message}");
                Error::ObjectFailed {
                    status: StatusCode::INTERNAL_SERVER_ERROR,
                    message,
                }
            })?;
        *instance = Some(built);
    }
    instance.as_mut().ok_or_else(|| Error::ObjectFailed {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        message: "the object has no instance".into(),
    })
}

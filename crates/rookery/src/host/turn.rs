//! One turn: a handler call run to completion, with panics caught and a time limit.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use http::StatusCode;

use super::ObjectKey;
use crate::error::{Error, Result};
use crate::object::ObjectState;

/// The objects waiting on each other, outermost first, for the call that started a turn.
pub(crate) type CallChain = Arc<[ObjectKey]>;

/// What a running turn knows about itself; reachable from stubs called inside it.
#[derive(Clone)]
pub(crate) struct TurnContext {
    /// The call chain including the object running this turn.
    pub(crate) chain: CallChain,
    /// The object running this turn, whose earlier writes must be durable before it calls out.
    pub(crate) caller: ObjectState,
}

tokio::task_local! {
    static TURN: TurnContext;
}

/// The context of the turn running on this task, if any.
pub(crate) fn current() -> Option<TurnContext> {
    TURN.try_with(Clone::clone).ok()
}

/// Runs `f` with the context of the turn running on this task, if any, without cloning it.
pub(crate) fn with_current<R>(f: impl FnOnce(&TurnContext) -> R) -> Option<R> {
    TURN.try_with(f).ok()
}

/// Runs `handler` as a turn: within `ctx`, at most `limit` long, with panics turned into errors.
pub(crate) async fn run<T>(
    handler: impl Future<Output = Result<T>>,
    ctx: TurnContext,
    limit: Duration,
) -> Result<T> {
    let storage_owner = ctx.caller.clone();
    storage_owner.storage().set_deadline(Some(limit));
    let guarded = TURN.scope(ctx, AssertUnwindSafe(handler).catch_unwind());
    let outcome = tokio::time::timeout(limit, guarded).await;
    storage_owner.storage().set_deadline(None);
    match outcome {
        Ok(Ok(result)) => result,
        Ok(Err(panic)) => Err(Error::ObjectFailed {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: format!("the object panicked: {}", panic_message(&*panic)),
        }),
        Err(_) => Err(Error::ObjectFailed {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: format!("the turn exceeded its time limit of {limit:?}"),
        }),
    }
}

/// The message a panic carried, if it was text.
pub(crate) fn panic_message(panic: &(dyn Any + Send)) -> &str {
    if let Some(s) = panic.downcast_ref::<&str>() {
        s
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s
    } else {
        "(no message)"
    }
}

//! One turn: a handler call run to completion, with panics caught and a time limit, and the
//! one way every turn ends (commit or roll back, release or drop what it sent).

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use http::StatusCode;

use crate::addr::ObjectKey;
use crate::error::{Error, Result, panic_message};
use crate::outbox;
use crate::state::ObjectState;
use crate::storage::OutputGate;

/// The objects waiting on each other, outermost first, for the call that started a turn.
pub(crate) type CallChain = Arc<[ObjectKey]>;

/// What a running turn knows about itself; reachable from stubs called inside it.
#[derive(Clone)]
pub(crate) struct TurnContext {
    /// The call chain including the object running this turn.
    pub(crate) chain: CallChain,
    /// The object running this turn.
    state: ObjectState,
    /// The id of the request this turn serves (its `X-Request-Id`), if it serves one: calls
    /// the turn makes pass it on.
    request_id: Option<http::HeaderValue>,
}

impl TurnContext {
    /// The context of a turn of `state`'s object, called along `chain` (which includes it).
    pub(crate) fn new(chain: CallChain, state: ObjectState) -> Self {
        Self {
            chain,
            state,
            request_id: None,
        }
    }

    /// This context, for a turn that serves the request `request_id`.
    pub(crate) fn serving(mut self, request_id: Option<http::HeaderValue>) -> Self {
        self.request_id = request_id;
        self
    }

    /// The id of the request this turn serves, if any.
    pub(crate) fn request_id(&self) -> Option<&http::HeaderValue> {
        self.request_id.as_ref()
    }

    /// The object running this turn: the last of its call chain.
    pub(crate) fn object(&self) -> Option<ObjectKey> {
        self.chain.last().copied()
    }

    /// The object running this turn, as people read it.
    pub(crate) fn describe(&self) -> String {
        let id = self.state.id();
        format!(
            "{} {}",
            self.state.class(),
            id.name().map_or_else(|| id.to_hex(), str::to_string)
        )
    }

    /// A gate that opens when everything the running object committed so far is durable:
    /// what it sends out of the turn must wait for it.
    pub(crate) fn settled(&self) -> OutputGate {
        self.state.settled()
    }

    /// The object running this turn.
    pub(crate) fn state(&self) -> &ObjectState {
        &self.state
    }
}

tokio::task_local! {
    static TURN: TurnContext;
}

/// Runs `f` with the context of the turn running on this task, if any.
pub(crate) fn with_current<R>(f: impl FnOnce(&TurnContext) -> R) -> Option<R> {
    TURN.try_with(f).ok()
}

/// Runs `handler` as a turn: within `ctx`, at most `limit` long, with panics turned into errors
/// and what it emits (socket sends, stream chunks, `wait_until` work) held for the turn's end.
pub(crate) async fn run<T>(
    handler: impl Future<Output = Result<T>>,
    ctx: TurnContext,
    limit: Duration,
) -> Result<T> {
    let state = ctx.state.clone();
    let started = std::time::Instant::now();
    state.storage().set_deadline(Some(limit));
    let guarded = TURN.scope(
        ctx,
        outbox::in_turn(state.owner(), AssertUnwindSafe(handler).catch_unwind()),
    );
    let outcome = tokio::time::timeout(limit, guarded).await;
    state.storage().set_deadline(None);
    match outcome {
        // A storage call stopped by the deadline fails with its own error; it is still the
        // time limit that ended the turn.
        Ok(Ok(Err(_))) if started.elapsed() >= limit => Err(Error::Timeout(limit)),
        Ok(Ok(result)) => result,
        Ok(Err(panic)) => Err(Error::ObjectFailed {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: format!("the object panicked: {}", panic_message(&*panic)),
        }),
        Err(_) => Err(Error::Timeout(limit)),
    }
}

/// Ends the turn that produced `result`, whatever its kind: commits its writes and releases what
/// it sent once they are durable, or, if it failed, rolls both back. Returns the turn's final
/// result (a failed commit turns `Ok` into that error) and the gate its outputs must pass.
pub(crate) async fn finish<T>(state: &ObjectState, result: Result<T>) -> (Result<T>, OutputGate) {
    let succeeded = result.is_ok();
    finish_as(state, result, succeeded).await
}

/// [`finish`] for a turn whose value says itself whether it succeeded: a call whose method
/// returned its own error answers with that error as a value, yet its turn failed and rolls
/// back.
pub(crate) async fn finish_as<T>(
    state: &ObjectState,
    result: Result<T>,
    succeeded: bool,
) -> (Result<T>, OutputGate) {
    let storage = state.storage();
    if let Err(e @ (Error::Sqlite(_) | Error::Io(_) | Error::Internal { .. })) = &result {
        // The client learns only that something failed inside; the log says where.
        tracing::error!(
            object = %state.sockets().addr.describe(),
            path = %storage.path().map_or_else(|| "(memory)".into(), |p| p.display().to_string()),
            error = %e,
            "the turn failed in the runtime"
        );
    }
    let sent = state.take_outputs();
    // A socket accepted but handed to no connection would never hear from one.
    state.sockets().end_unclaimed();
    match storage.finish_turn(succeeded).await {
        Ok(gate) => {
            // What a failed turn sent is discarded with its writes.
            if succeeded {
                state.release_outputs(sent);
            } else {
                sent.discard();
            }
            (result, gate)
        }
        Err(e) => {
            sent.discard();
            tracing::error!(error = %e, "commit failed; the turn is rolled back");
            (Err(e), storage.settled())
        }
    }
}

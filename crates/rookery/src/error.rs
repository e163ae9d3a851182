//! The error type of the runtime and of object handlers.

use http::StatusCode;

/// Result with Rookery's [`Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the runtime or in an object's handler.
///
/// Each variant maps to an HTTP status (see [`Error::status`]) so the gateway can answer a
/// client without guessing. Errors that can only happen while a runtime starts are
/// [`StartError`]s, not variants here.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A string that is not an object id of the namespace it was given to.
    #[error("invalid object id: {0}")]
    InvalidId(&'static str),
    /// A binding name that the configuration does not declare.
    #[error("no durable object binding named {0:?}")]
    UnknownBinding(String),
    /// A bucket binding name that the configuration does not declare (`[[r2_buckets]]`).
    #[error("no bucket binding named {0:?}")]
    UnknownBucket(String),
    /// The object's mailbox is full.
    #[error("object is overloaded: too many pending events")]
    Overloaded,
    /// The object has as many WebSockets as it may have.
    #[error("channel full: the object has its maximum of {0} WebSockets")]
    SocketLimit(usize),
    /// A call that would wait on an object already waiting further up the same call chain.
    #[error("call cycle: {0} is already handling a call further up this chain")]
    CallCycle(String),
    /// A call from a turn to an object whose running turn waits, through other calls, on the
    /// caller: neither could finish. Refused before it was sent.
    #[error("deadlock: {0}")]
    Deadlock(String),
    /// A typed call of a method the object does not serve.
    #[error("no such method: {0}")]
    UnknownMethod(String),
    /// The turn ran over its time limit; its writes were rolled back.
    #[error("the turn exceeded its time limit of {0:?}")]
    Timeout(std::time::Duration),
    /// The object's turn failed (handler error, panic or time limit); its writes were rolled back.
    #[error("{message}")]
    ObjectFailed {
        /// Status to answer with.
        status: StatusCode,
        /// What failed.
        message: String,
    },
    /// Input that the handler or runtime refuses; maps to 400.
    #[error("{0}")]
    BadRequest(String),
    /// A storage limit was exceeded (key, value, batch or object size).
    #[error("storage limit exceeded: {0}")]
    LimitExceeded(String),
    /// The object's SQL was refused before it ran.
    #[error("SQL refused: {0}")]
    SqlRefused(String),
    /// A write could not be made durable; outputs that depended on it are discarded.
    #[error("commit failed: {0}")]
    Durability(String),
    /// The runtime is shutting down and takes no new events.
    #[error("the runtime is shutting down")]
    ShuttingDown,
    /// The disk under the data directory is full; nothing of the turn was written.
    #[error("insufficient storage: {0}")]
    InsufficientStorage(String),
    /// The data directory is gone or cannot be written; writes are refused, not lost.
    #[error("storage unavailable: {0}")]
    StorageUnavailable(String),
    /// The commit log refused a commit: this node no longer owns the object (its epoch is
    /// stale). The write is not acknowledged; a retry reaches the owner.
    #[error("fenced: {0}")]
    Fenced(String),
    /// The object is owned by another node, reachable at this address; without a
    /// [`Forwarder`](crate::Forwarder) (or for a WebSocket), the caller is told to retry.
    #[error("the object is owned by the node at {0}")]
    Elsewhere(String),
    /// The embedded database failed.
    #[error("storage error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A value could not be encoded or decoded as JSON.
    #[error("JSON error: {0}")]
    Json(#[from] serde_json::Error),
    /// A file system operation failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// A failure of the runtime, with the error that caused it.
    #[error("{message}")]
    Internal {
        /// What failed.
        message: String,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Any other failure, described by its message.
    #[error("{0}")]
    Other(String),
    /// The object has as much `wait_until` work as it may have.
    #[error(
        "too much wait_until work: the object has its maximum of {0} pieces running or waiting"
    )]
    WaitUntilLimit(usize),
    /// An outbound HTTP request failed; `kind` says how. The message names the target's
    /// scheme, host and port, never its path, query or headers (they may carry secrets).
    #[error("outbound request {message}")]
    Outbound {
        /// How it failed.
        kind: OutboundErrorKind,
        /// What failed, for the log.
        message: String,
    },
}

/// How an outbound HTTP request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum OutboundErrorKind {
    /// The request is not one the client sends (not an absolute http or https URL).
    InvalidRequest,
    /// The target is a loopback, private or otherwise internal address that `[outbound] allow`
    /// does not list (checked after name resolution, on every redirect).
    Refused,
    /// No answer within the time limit.
    Timeout,
    /// The response body is over the size limit.
    TooLarge,
    /// More redirects than the limit.
    TooManyRedirects,
    /// The connection could not be made or broke.
    Connect,
    /// No outbound HTTP client is configured in this runtime.
    NotConfigured,
}

/// Why a runtime could not start. Nothing of a failed start is applied: no migration is
/// recorded and no data is touched.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// A configuration problem.
    #[error("{0}")]
    Config(String),
    /// A binding that cannot be served.
    #[error("binding {binding:?}: {message}")]
    Binding {
        /// The binding's name.
        binding: String,
        /// What is wrong.
        message: String,
    },
    /// A migration that cannot be applied; nothing of it was applied.
    #[error("migration {tag:?}: {message}")]
    Migration {
        /// The migration's tag.
        tag: String,
        /// What is wrong.
        message: String,
    },
    /// The data directory is in a state Rookery refuses to start on (nothing was changed).
    #[error("{0}")]
    DataDir(String),
    /// Another process serves the data directory.
    #[error("{0}")]
    Locked(String),
    /// The data directory cannot be used.
    #[error(transparent)]
    Storage(#[from] Error),
}

impl From<rusqlite::Error> for StartError {
    fn from(e: rusqlite::Error) -> Self {
        StartError::Storage(Error::Sqlite(e))
    }
}

impl From<std::io::Error> for StartError {
    fn from(e: std::io::Error) -> Self {
        StartError::Storage(Error::Io(e))
    }
}

impl Error {
    /// An error carrying only a message; maps to 500.
    pub fn msg(message: impl std::fmt::Display) -> Self {
        Error::Other(message.to_string())
    }

    /// A runtime failure described by `message`, caused by `source`; maps to 500.
    pub fn internal(
        message: impl std::fmt::Display,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Error::Internal {
            message: message.to_string(),
            source: Box::new(source),
        }
    }

    /// A client error carrying a message; maps to 400.
    pub fn bad_request(message: impl std::fmt::Display) -> Self {
        Error::BadRequest(message.to_string())
    }

    /// What a client may be told of this error: the message for errors about the request or
    /// the object's own behaviour, a short generic text for failures inside the runtime (whose
    /// messages can name files, paths or SQLite internals; log those instead).
    pub fn public_message(&self) -> std::borrow::Cow<'_, str> {
        use std::borrow::Cow;
        match self {
            Error::InvalidId(_)
            | Error::UnknownBinding(_)
            | Error::UnknownBucket(_)
            | Error::Overloaded
            | Error::SocketLimit(_)
            | Error::CallCycle(_)
            | Error::Deadlock(_)
            | Error::UnknownMethod(_)
            | Error::Timeout(_)
            | Error::ObjectFailed { .. }
            | Error::BadRequest(_)
            | Error::LimitExceeded(_)
            | Error::SqlRefused(_)
            | Error::WaitUntilLimit(_)
            | Error::ShuttingDown => Cow::Owned(self.to_string()),
            Error::InsufficientStorage(_) => Cow::Borrowed("insufficient storage"),
            Error::StorageUnavailable(_) => Cow::Borrowed("storage unavailable"),
            Error::Fenced(_) | Error::Elsewhere(_) => {
                Cow::Borrowed("the object is owned by another node; retry")
            }
            Error::Durability(_) => Cow::Borrowed("the write could not be made durable"),
            Error::Sqlite(_)
            | Error::Json(_)
            | Error::Io(_)
            | Error::Internal { .. }
            | Error::Other(_) => Cow::Borrowed("internal error"),
            // Where an object's request went, and what its target resolved to, is for the log:
            // the URL may have come from a client probing the network.
            Error::Outbound {
                kind: OutboundErrorKind::Timeout,
                ..
            } => Cow::Borrowed("an outbound request timed out"),
            Error::Outbound { .. } => Cow::Borrowed("an outbound request failed"),
        }
    }

    /// Seconds a client should wait before retrying, for errors that pass with time.
    pub fn retry_after(&self) -> Option<u32> {
        match self {
            Error::Overloaded
            | Error::ShuttingDown
            | Error::StorageUnavailable(_)
            | Error::Fenced(_)
            | Error::Elsewhere(_)
            | Error::WaitUntilLimit(_) => Some(1),
            _ => None,
        }
    }

    /// Whether a call that met this error may be sent again: it certainly did not run (it was
    /// refused before the object saw it), and the refusal passes with time. A deadlock passes
    /// once the calling turn has ended, so retry from a later turn, not from the same one.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::Overloaded | Error::ShuttingDown | Error::Deadlock(_)
        )
    }

    /// The HTTP status that answers a client who caused or met this error.
    pub fn status(&self) -> StatusCode {
        match self {
            Error::InvalidId(_) | Error::BadRequest(_) => StatusCode::BAD_REQUEST,
            Error::UnknownBinding(_) => StatusCode::NOT_FOUND,
            Error::Overloaded
            | Error::ShuttingDown
            | Error::SocketLimit(_)
            | Error::WaitUntilLimit(_) => StatusCode::SERVICE_UNAVAILABLE,
            Error::CallCycle(_) | Error::Deadlock(_) => StatusCode::LOOP_DETECTED,
            Error::UnknownMethod(_) => StatusCode::NOT_IMPLEMENTED,
            Error::Timeout(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Error::ObjectFailed { status, .. } => *status,
            Error::LimitExceeded(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Error::InsufficientStorage(_) => StatusCode::INSUFFICIENT_STORAGE,
            Error::StorageUnavailable(_) | Error::Fenced(_) | Error::Elsewhere(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Error::Durability(_)
            | Error::UnknownBucket(_)
            | Error::SqlRefused(_)
            | Error::Sqlite(_)
            | Error::Json(_)
            | Error::Io(_)
            | Error::Internal { .. }
            | Error::Other(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Error::Outbound {
                kind: OutboundErrorKind::Timeout,
                ..
            } => StatusCode::GATEWAY_TIMEOUT,
            Error::Outbound { .. } => StatusCode::BAD_GATEWAY,
        }
    }
}

/// The message a panic carried, if it was text.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    if let Some(s) = panic.downcast_ref::<&str>() {
        s
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s
    } else {
        "(no message)"
    }
}

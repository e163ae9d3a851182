//! Typed calls as values: a call of an object's method, its reply, and the error a caller sees.
//!
//! Arguments, results and the callee's own errors travel encoded with postcard (a compact
//! binary serde format), on one node as between nodes: the caller never shares memory with the
//! callee, and the same call can later cross the network unchanged.

use std::borrow::Cow;
use std::fmt;

use http::StatusCode;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A call of one method of an object, with its arguments encoded.
#[derive(Debug, Clone)]
pub struct Call {
    service: Cow<'static, str>,
    method: Cow<'static, str>,
    args: Vec<u8>,
}

impl Call {
    /// A call of `service`'s `method` with `args` (a tuple of the method's arguments).
    pub fn new<A: Serialize + ?Sized>(
        service: &'static str,
        method: &'static str,
        args: &A,
    ) -> Result<Self> {
        let args = postcard::to_allocvec(args).map_err(|e| {
            Error::internal(
                format!("the arguments of {service}.{method} cannot be encoded"),
                e,
            )
        })?;
        Ok(Self {
            service: Cow::Borrowed(service),
            method: Cow::Borrowed(method),
            args,
        })
    }

    /// A call made of its parts as they travel between nodes: service, method and the encoded
    /// arguments ([`Call::into_encoded_args`]).
    pub fn from_parts(service: String, method: String, args: Vec<u8>) -> Self {
        Self {
            service: Cow::Owned(service),
            method: Cow::Owned(method),
            args,
        }
    }

    /// The arguments as encoded (what travels to another node), taking the call apart.
    pub fn into_encoded_args(self) -> Vec<u8> {
        self.args
    }

    /// The service (trait) whose method is called.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// The method called.
    pub fn method(&self) -> &str {
        &self.method
    }

    /// The arguments, decoded as `A` (the tuple of the method's argument types).
    pub fn args<A: DeserializeOwned>(&self) -> Result<A> {
        postcard::from_bytes(&self.args).map_err(|e| {
            Error::bad_request(format!(
                "the arguments of {}.{} do not decode: {e}",
                self.service, self.method
            ))
        })
    }

    /// The error for a call of a method the object does not serve.
    pub fn unknown(&self) -> Error {
        Error::UnknownMethod(format!("{}.{}", self.service, self.method))
    }
}

/// What a typed method returns: `Result<T, E>` with serde types `T` and `E`.
#[diagnostic::on_unimplemented(
    message = "a service method returns `Result<T, E>` with serde types T and E, not `{Self}`",
    label = "the method's return type"
)]
pub trait MethodResult: Send + 'static {
    /// What the method returns when it succeeds.
    type Value: Serialize + DeserializeOwned + Send + 'static;
    /// The method's own error.
    type Error: Serialize + DeserializeOwned + Send + 'static;

    /// The result itself.
    fn into_result(self) -> Result<Self::Value, Self::Error>;
}

impl<T, E> MethodResult for Result<T, E>
where
    T: Serialize + DeserializeOwned + Send + 'static,
    E: Serialize + DeserializeOwned + Send + 'static,
{
    type Value = T;
    type Error = E;

    fn into_result(self) -> Result<T, E> {
        self
    }
}

/// What a typed call of a method returning `R` comes to for its caller.
pub type CallResult<R> = Result<<R as MethodResult>::Value, CallError<<R as MethodResult>::Error>>;

/// The encoded answer of a called method: its value, or its own error.
#[derive(Debug)]
pub struct Reply {
    /// Whether the method returned its own error: the turn then fails, and its writes roll back.
    raised: bool,
    bytes: Vec<u8>,
}

impl Reply {
    /// The reply carrying what a method returned.
    pub fn of<R: MethodResult>(result: R) -> Result<Self> {
        let (raised, bytes) = match result.into_result() {
            Ok(value) => (false, postcard::to_allocvec(&value)),
            Err(error) => (true, postcard::to_allocvec(&error)),
        };
        let bytes =
            bytes.map_err(|e| Error::internal("the method's answer cannot be encoded", e))?;
        Ok(Self { raised, bytes })
    }

    /// A reply made of its parts as they travel between nodes.
    pub fn from_parts(raised: bool, bytes: Vec<u8>) -> Self {
        Self { raised, bytes }
    }

    /// The encoded answer (what travels back from another node).
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Whether the method returned its own error (so its turn must not commit).
    pub fn raised(&self) -> bool {
        self.raised
    }

    /// The method's answer as its caller sees it.
    pub(crate) fn decode<R: MethodResult>(&self) -> CallResult<R> {
        let undecodable = |e: postcard::Error| {
            CallError::Runtime(Error::internal("the method's answer does not decode", e))
        };
        if self.raised {
            let error = postcard::from_bytes(&self.bytes).map_err(undecodable)?;
            Err(CallError::Object(error))
        } else {
            postcard::from_bytes(&self.bytes).map_err(undecodable)
        }
    }
}

/// Why a typed call failed: the callee's own error, or the runtime's.
#[derive(Debug)]
pub enum CallError<E> {
    /// The method returned its own error. The callee's turn failed: its writes were rolled back
    /// and its instance rebuilt.
    Object(E),
    /// The runtime's error: the call was refused before it ran ([`Error::Overloaded`],
    /// [`Error::ShuttingDown`], [`Error::CallCycle`], [`Error::Deadlock`],
    /// [`Error::UnknownMethod`]), or the callee's turn failed around the method (panic,
    /// [`Error::Timeout`], a commit that could not be made durable).
    Runtime(Error),
}

impl<E> CallError<E> {
    /// Whether sending the call again is safe and may succeed: it certainly did not run, and the
    /// refusal passes with time (overloaded, shutting down, deadlock). A call that failed after
    /// it ran may have made calls of its own that committed, so it is never retryable.
    pub fn is_retryable(&self) -> bool {
        match self {
            CallError::Object(_) => false,
            CallError::Runtime(e) => e.is_retryable(),
        }
    }

    /// The callee's own error, if that is what this is.
    pub fn object(&self) -> Option<&E> {
        match self {
            CallError::Object(e) => Some(e),
            CallError::Runtime(_) => None,
        }
    }

    /// The runtime's error, if that is what this is.
    pub fn runtime(&self) -> Option<&Error> {
        match self {
            CallError::Object(_) => None,
            CallError::Runtime(e) => Some(e),
        }
    }
}

impl<E> From<Error> for CallError<E> {
    fn from(e: Error) -> Self {
        CallError::Runtime(e)
    }
}

/// A caller whose own handler returns [`Error`] can pass a call's failure on with `?`; the
/// callee's error becomes a runtime error through `E: Into<Error>`.
impl<E: Into<Error>> From<CallError<E>> for Error {
    fn from(e: CallError<E>) -> Self {
        match e {
            CallError::Object(e) => e.into(),
            CallError::Runtime(e) => e,
        }
    }
}

impl<E: fmt::Display> fmt::Display for CallError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallError::Object(e) => e.fmt(f),
            CallError::Runtime(e) => e.fmt(f),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for CallError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CallError::Object(e) => Some(e),
            CallError::Runtime(e) => Some(e),
        }
    }
}

/// [`Error`] as it crosses to a caller, so that a method may return `rookery::Result<T>`:
/// each kind keeps its kind and text; failures inside the runtime (SQLite, I/O, JSON) arrive
/// as [`Error::Other`] with their message, which clients never see.
#[derive(Serialize, Deserialize)]
enum WireError {
    BadRequest(String),
    UnknownBinding(String),
    Overloaded,
    SocketLimit(u64),
    CallCycle(String),
    Deadlock(String),
    UnknownMethod(String),
    Timeout(std::time::Duration),
    ObjectFailed { status: u16, message: String },
    LimitExceeded(String),
    SqlRefused(String),
    Durability(String),
    ShuttingDown,
    InsufficientStorage(String),
    StorageUnavailable(String),
    Other(String),
}

impl From<&Error> for WireError {
    fn from(e: &Error) -> Self {
        match e {
            Error::BadRequest(m) => WireError::BadRequest(m.clone()),
            Error::InvalidId(_) => WireError::BadRequest(e.to_string()),
            Error::UnknownBinding(b) => WireError::UnknownBinding(b.clone()),
            Error::Overloaded => WireError::Overloaded,
            Error::SocketLimit(n) => WireError::SocketLimit(u64::try_from(*n).unwrap_or(u64::MAX)),
            Error::CallCycle(m) => WireError::CallCycle(m.clone()),
            Error::Deadlock(m) => WireError::Deadlock(m.clone()),
            Error::UnknownMethod(m) => WireError::UnknownMethod(m.clone()),
            Error::Timeout(d) => WireError::Timeout(*d),
            Error::ObjectFailed { status, message } => WireError::ObjectFailed {
                status: status.as_u16(),
                message: message.clone(),
            },
            Error::LimitExceeded(m) => WireError::LimitExceeded(m.clone()),
            Error::SqlRefused(m) => WireError::SqlRefused(m.clone()),
            Error::Durability(m) => WireError::Durability(m.clone()),
            Error::ShuttingDown => WireError::ShuttingDown,
            Error::InsufficientStorage(m) => WireError::InsufficientStorage(m.clone()),
            Error::StorageUnavailable(m) => WireError::StorageUnavailable(m.clone()),
            // The rest are failures inside the runtime; kinds added later travel as text too.
            other => WireError::Other(other.to_string()),
        }
    }
}

impl From<WireError> for Error {
    fn from(w: WireError) -> Self {
        match w {
            WireError::BadRequest(m) => Error::BadRequest(m),
            WireError::UnknownBinding(b) => Error::UnknownBinding(b),
            WireError::Overloaded => Error::Overloaded,
            WireError::SocketLimit(n) => {
                Error::SocketLimit(usize::try_from(n).unwrap_or(usize::MAX))
            }
            WireError::CallCycle(m) => Error::CallCycle(m),
            WireError::Deadlock(m) => Error::Deadlock(m),
            WireError::UnknownMethod(m) => Error::UnknownMethod(m),
            WireError::Timeout(d) => Error::Timeout(d),
            WireError::ObjectFailed { status, message } => Error::ObjectFailed {
                status: StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                message,
            },
            WireError::LimitExceeded(m) => Error::LimitExceeded(m),
            WireError::SqlRefused(m) => Error::SqlRefused(m),
            WireError::Durability(m) => Error::Durability(m),
            WireError::ShuttingDown => Error::ShuttingDown,
            WireError::InsufficientStorage(m) => Error::InsufficientStorage(m),
            WireError::StorageUnavailable(m) => Error::StorageUnavailable(m),
            WireError::Other(m) => Error::Other(m),
        }
    }
}

impl Serialize for Error {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        WireError::from(self).serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Error {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        WireError::deserialize(deserializer).map(Error::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum LockError {
        Held { by: String },
    }

    #[test]
    fn arguments_and_answers_round_trip_compactly() {
        let call = Call::new("Lock", "acquire", &("worker-1".to_string(), 30_000u64)).unwrap();
        assert_eq!(call.args.len(), 1 + 8 + 3, "length, bytes, varint");
        let (owner, ttl): (String, u64) = call.args().unwrap();
        assert_eq!((owner.as_str(), ttl), ("worker-1", 30_000));
        assert!(
            call.args::<(String, u64, String)>().is_err(),
            "too few bytes"
        );

        let ok = Reply::of(Ok::<bool, LockError>(true)).unwrap();
        assert!(!ok.raised());
        assert!(ok.decode::<Result<bool, LockError>>().unwrap());
        let raised = Reply::of(Err::<bool, _>(LockError::Held { by: "w2".into() })).unwrap();
        assert!(raised.raised());
        match raised.decode::<Result<bool, LockError>>() {
            Err(CallError::Object(e)) => assert_eq!(e, LockError::Held { by: "w2".into() }),
            other => panic!("expected the callee's own error, got {other:?}"),
        }
    }

    #[test]
    fn runtime_errors_keep_their_kind_across_the_wire() {
        let cases = [
            Error::Overloaded,
            Error::CallCycle("Probe a".into()),
            Error::Deadlock("Probe b".into()),
            Error::Timeout(std::time::Duration::from_millis(1500)),
            Error::ObjectFailed {
                status: StatusCode::IM_A_TEAPOT,
                message: "teapot".into(),
            },
            Error::bad_request("nope"),
            Error::InvalidId("too short"),
        ];
        for e in cases {
            let bytes = postcard::to_allocvec(&e).unwrap();
            let back: Error = postcard::from_bytes(&bytes).unwrap();
            assert_eq!(back.status(), e.status(), "{e}");
            assert_eq!(back.to_string(), e.to_string(), "{e}");
            assert_eq!(back.is_retryable(), e.is_retryable(), "{e}");
        }
        let inner = Error::internal("opening /secret/path", std::io::Error::other("x"));
        let bytes = postcard::to_allocvec(&inner).unwrap();
        let back: Error = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back.public_message(), "internal error");
    }

    #[test]
    fn only_calls_that_did_not_run_are_retryable() {
        assert!(CallError::<()>::Runtime(Error::Overloaded).is_retryable());
        assert!(CallError::<()>::Runtime(Error::ShuttingDown).is_retryable());
        assert!(!CallError::<()>::Runtime(Error::CallCycle("a".into())).is_retryable());
        assert!(
            !CallError::<()>::Runtime(Error::Timeout(std::time::Duration::from_secs(1)))
                .is_retryable()
        );
        assert!(!CallError::Object(Error::Overloaded).is_retryable());
    }
}

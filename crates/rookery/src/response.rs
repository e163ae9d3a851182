//! The HTTP response an object's `fetch` returns.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use serde::de::DeserializeOwned;

use crate::error::Result;
use crate::socket::{SocketLink, WebSocket};
use crate::stream::{BodyStream, StreamLink};

/// A response: status, headers and a body (complete, or streamed by the object).
#[derive(Debug)]
pub struct Response {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    /// The accepted socket this response hands to the client's connection. Dropped unused
    /// (the client went away, the response was lost), it ends the socket.
    websocket: Option<SocketLink>,
    /// The streamed body this response hands to the client's connection, instead of `body`.
    /// Dropped unused, it closes the stream.
    stream: Option<StreamLink>,
}

impl Response {
    /// A response with `status`, no headers and `body`.
    pub fn new(status: StatusCode, body: impl Into<Bytes>) -> Self {
        Self {
            status,
            headers: HeaderMap::new(),
            body: body.into(),
            websocket: None,
            stream: None,
        }
    }

    /// The answer to a WebSocket upgrade: 101, handing `ws` (from `accept_websocket`) to the
    /// client's connection. A socket can be handed over once; a second response for it, or a
    /// socket whose object is gone, answers 500.
    pub fn websocket(ws: &WebSocket) -> Self {
        match SocketLink::new(ws) {
            Some(link) => {
                let mut resp = Self::new(StatusCode::SWITCHING_PROTOCOLS, Bytes::new());
                resp.websocket = Some(link);
                resp
            }
            None => Self::error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the WebSocket was handed over already or its object is gone",
            ),
        }
    }

    /// The link to the socket this response hands to the client's connection, if it is an
    /// upgrade. The transport must drive it (or drop it, which ends the socket).
    pub fn take_socket_link(&mut self) -> Option<SocketLink> {
        self.websocket.take()
    }

    /// A 200 response whose body is `stream` (from `ObjectState::stream` or `event_stream`),
    /// written as the object sends to it, unbuffered, until the object closes it or drops its
    /// last handle. A stream can be handed over once; a second response for it answers 500.
    pub fn stream(stream: &BodyStream) -> Self {
        match StreamLink::new(stream) {
            Some(link) => {
                let mut resp = Self::new(StatusCode::OK, Bytes::new())
                    .with_header(http::header::CONTENT_TYPE, stream.content_type().clone())
                    .with_header(
                        http::header::CACHE_CONTROL,
                        HeaderValue::from_static("no-cache"),
                    )
                    // Proxies such as nginx would otherwise hold the events back.
                    .with_header(
                        HeaderName::from_static("x-accel-buffering"),
                        HeaderValue::from_static("no"),
                    );
                resp.stream = Some(link);
                resp
            }
            None => Self::error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the stream was handed to another response already",
            ),
        }
    }

    /// The streamed body of this response, if it has one. The transport must drive it (or
    /// drop it, which closes the stream).
    pub fn take_stream_link(&mut self) -> Option<StreamLink> {
        self.stream.take()
    }

    /// A 200 response with `value` encoded as JSON.
    pub fn json<T: serde::Serialize + ?Sized>(value: &T) -> Result<Self> {
        Ok(Self::json_bytes(serde_json::to_vec(value)?))
    }

    /// A 200 response whose body is already-encoded JSON.
    pub fn json_bytes(body: impl Into<Bytes>) -> Self {
        Self::new(StatusCode::OK, body).with_header(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )
    }

    /// A 200 plain-text response.
    pub fn text(body: impl Into<String>) -> Self {
        Self::new(StatusCode::OK, body.into()).with_header(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        )
    }

    /// A JSON error response: `{"error": message}` with `status`.
    pub fn error(status: StatusCode, message: &str) -> Self {
        let body = serde_json::json!({ "error": message }).to_string();
        Self::json_bytes(body).with_status(status)
    }

    /// A 404 JSON response.
    pub fn not_found() -> Self {
        Self::error(StatusCode::NOT_FOUND, "Not found")
    }

    /// This response with another status.
    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    /// This response with one more header.
    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.append(name, value);
        self
    }

    /// The status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The headers.
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// The headers, for changing.
    pub fn headers_mut(&mut self) -> &mut HeaderMap {
        &mut self.headers
    }

    /// The body bytes.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// The body decoded as JSON.
    pub fn json_body<T: DeserializeOwned>(&self) -> Result<T> {
        Ok(serde_json::from_slice(&self.body)?)
    }

    /// Splits the response into status, headers and body.
    pub fn into_parts(self) -> (StatusCode, HeaderMap, Bytes) {
        (self.status, self.headers, self.body)
    }
}

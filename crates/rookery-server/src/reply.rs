//! HTTP answers shared by the gateway and the admin API: errors with their public message,
//! 401s, and the bearer-token check.

use axum::body::Body;
use http::{HeaderValue, StatusCode};
use rookery::{Error, Response};

/// A JSON error response.
pub(crate) fn error_response(status: StatusCode, message: &str) -> axum::response::Response {
    into_axum(Response::error(status, message))
}

/// The answer to a failed request: the error's client-safe message (and, for a 5xx, the
/// request id, to find the log line) with its status and `Retry-After` when waiting helps.
/// The whole error, with its causes, goes to the log only: it can name files and SQLite
/// internals.
pub(crate) fn failure(e: &Error, request_id: &HeaderValue) -> axum::response::Response {
    let status = e.status();
    let public = e.public_message();
    let id = request_id.to_str().unwrap_or("-");
    let error = error_chain(e);
    if public != e.to_string() {
        tracing::error!(request_id = id, status = status.as_u16(), %error, "request failed");
    } else if status.is_server_error() {
        tracing::warn!(request_id = id, status = status.as_u16(), %error, "request failed");
    } else {
        tracing::debug!(request_id = id, status = status.as_u16(), %error, "request refused");
    }
    let mut body = serde_json::json!({ "error": public });
    if status.is_server_error() {
        body["requestId"] = id.into();
    }
    let mut response = into_axum(Response::json_bytes(body.to_string()).with_status(status));
    if let Some(seconds) = e.retry_after() {
        response
            .headers_mut()
            .insert(http::header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

/// An error and every error under it, `outer: inner: innermost`.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        // Wrappers often repeat their cause's text; say it once.
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Whether two secrets are equal, in time that does not depend on where they differ.
pub(crate) fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The HTTP response for a runtime [`Response`].
pub(crate) fn into_axum(resp: Response) -> axum::response::Response {
    let (status, headers, body) = resp.into_parts();
    let mut out = axum::response::Response::new(Body::from(body));
    *out.status_mut() = status;
    *out.headers_mut() = headers;
    out
}

/// An answer to a caller without the access the runtime's endpoints need.
pub(crate) fn unauthorized(message: &str) -> axum::response::Response {
    let mut response = error_response(StatusCode::UNAUTHORIZED, message);
    response.headers_mut().insert(
        http::header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"rookery\""),
    );
    response
}

/// Whether `headers` carry `token` as a bearer token (compared in constant time).
pub(crate) fn presents_token(headers: &http::HeaderMap, token: &str) -> bool {
    headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .is_some_and(|p| same_secret(p.as_bytes(), token.as_bytes()))
}

//! The admin API under `/_rookery/admin/`: off unless `[server] admin_token` (or
//! `--admin-token`) is set, and then only for callers presenting it as a bearer token.
//!
//! - `GET /_rookery/admin/objects/{binding}/{name}/bookmark[?time=<ms>]` → `{"bookmark": …}`:
//!   the object's state now, or at a time (point-in-time recovery).
//! - `POST /_rookery/admin/objects/{binding}/{name}/restore` with `{"bookmark": …}` or
//!   `{"time": <ms>}` → `{"restoredTo": …, "undo": …}`: the object restarts at that point.

use axum::extract::Request as AxumRequest;
use http::{HeaderValue, Method, StatusCode};
use http_body_util::{BodyExt, Limited};
use rookery::{Error, Response, Runtime, percent_decode};
use serde::Deserialize;
use serde_json::json;

use crate::reply::{error_response, failure, into_axum, presents_token, unauthorized};

/// Where the admin API lives.
pub(crate) const ADMIN_PREFIX: &str = "/_rookery/admin/";

/// Largest admin request body.
const MAX_BODY: usize = 64 * 1024;

/// What a restore asks for.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RestoreBody {
    bookmark: Option<String>,
    time: Option<i64>,
}

/// Serves one admin request.
pub(crate) async fn serve(
    runtime: &Runtime,
    admin_token: Option<&str>,
    req: AxumRequest,
    request_id: &HeaderValue,
) -> axum::response::Response {
    let Some(token) = admin_token else {
        return error_response(StatusCode::NOT_FOUND, "Not found");
    };
    if !presents_token(req.headers(), token) {
        return unauthorized("the admin API needs the admin token as a bearer token");
    }
    let path = req.uri().path().to_string();
    let rest = path.strip_prefix(ADMIN_PREFIX).unwrap_or_default();
    let Some(parts) = rest
        .split('/')
        .map(percent_decode)
        .collect::<Option<Vec<String>>>()
    else {
        return error_response(
            StatusCode::BAD_REQUEST,
            "the path is not valid percent-encoding",
        );
    };
    let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
    let result = match (req.method().clone(), parts.as_slice()) {
        (Method::GET, ["objects", binding, name, "bookmark"]) => {
            let time = match query_time(req.uri().query()) {
                Ok(time) => time,
                Err(e) => return failure(&e, request_id),
            };
            runtime
                .object_bookmark(binding, name, time)
                .await
                .map(|bookmark| json!({ "bookmark": bookmark }))
        }
        (Method::POST, ["objects", binding, name, "restore"]) => {
            restore(runtime, binding, name, req).await
        }
        (_, ["objects", _, _, "bookmark" | "restore"]) => {
            return error_response(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed");
        }
        _ => return error_response(StatusCode::NOT_FOUND, "Not found"),
    };
    match result {
        Ok(body) => into_axum(Response::json_bytes(body.to_string())),
        Err(e) => failure(&e, request_id),
    }
}

/// Restores an object to the bookmark or time in the request's body.
async fn restore(
    runtime: &Runtime,
    binding: &str,
    name: &str,
    req: AxumRequest,
) -> rookery::Result<serde_json::Value> {
    let bytes = Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|_| {
            Error::BadRequest(format!("the body must be JSON of at most {MAX_BODY} bytes"))
        })?
        .to_bytes();
    let body: RestoreBody = serde_json::from_slice(&bytes).map_err(|e| {
        Error::BadRequest(format!(
            "the body must be {{\"bookmark\": \"…\"}} or {{\"time\": <ms>}}: {e}"
        ))
    })?;
    let bookmark = match (body.bookmark, body.time) {
        (Some(bookmark), None) => bookmark,
        (None, Some(time)) => runtime.object_bookmark(binding, name, Some(time)).await?,
        _ => {
            return Err(Error::BadRequest(
                "give exactly one of \"bookmark\" and \"time\"".into(),
            ));
        }
    };
    let undo = runtime.restore_object(binding, name, &bookmark).await?;
    Ok(json!({ "restoredTo": bookmark, "undo": undo }))
}

/// The `time` query parameter, if given.
fn query_time(query: Option<&str>) -> rookery::Result<Option<i64>> {
    let Some(query) = query else { return Ok(None) };
    for pair in query.split('&') {
        if let Some(value) = pair.strip_prefix("time=") {
            return value.parse().map(Some).map_err(|_| {
                Error::BadRequest(format!(
                    "time={value:?} is not milliseconds since the epoch"
                ))
            });
        }
    }
    Ok(None)
}

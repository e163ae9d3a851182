//! The admin API under `/_rookery/admin/`: off unless `[server] admin_token` (or
//! `--admin-token`) is set, and then only for callers presenting it as a bearer token.
//!
//! - `GET /_rookery/admin/objects/{binding}/{name}/bookmark[?time=<ms>]` → `{"bookmark": …}`:
//!   the object's state now, or at a time (point-in-time recovery).
//! - `POST /_rookery/admin/objects/{binding}/{name}/restore` with `{"bookmark": …}` or
//!   `{"time": <ms>}` → `{"restoredTo": …, "undo": …}`: the object restarts at that point.
//! - `GET classes` → `{"classes": […]}`; `GET classes/{class}/objects[?prefix&cursor&limit]`
//!   → a page of objects; `GET|DELETE classes/{class}/objects/{object}` → one object, or
//!   deletes it; `GET …/{object}/kv[?prefix&cursor&limit]` → its entries; `POST …/{object}/query`
//!   with `{"sql": …}` → rows (read-only); `POST …/{object}/alarm` → runs its alarm now.
//! - `POST backup` with `{"dir": "/absolute/path"}` → a backup of every object.
//!
//! `{class}` is a class name or a binding; `{object}` an object id or name (see
//! [`rookery::Admin`]). The paths are relative to `/_rookery/admin/`.

use axum::extract::Request as AxumRequest;
use http::{HeaderValue, Method, StatusCode};
use http_body_util::{BodyExt, Limited};
use rookery::{AdminError, AdminResult, Error, ObjectQuery, Response, Runtime, percent_decode};
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
    let query = req.uri().query().map(str::to_string);
    if let ["classes", ..] | ["backup"] = parts.as_slice() {
        match allowed(&parts) {
            None => return error_response(StatusCode::NOT_FOUND, "Not found"),
            Some(methods) if !methods.contains(req.method()) => {
                return error_response(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed");
            }
            Some(_) => {}
        }
        return match operations(
            runtime,
            &req.method().clone(),
            &parts,
            query.as_deref(),
            req,
        )
        .await
        {
            Ok(body) => into_axum(Response::json_bytes(body.to_string())),
            Err(AdminError::Runtime(e)) => failure(&e, request_id),
            Err(e) => error_response(e.status(), &e.to_string()),
        };
    }
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

/// What `POST …/query` sends.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QueryBody {
    sql: String,
}

/// What `POST backup` sends.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BackupBody {
    dir: std::path::PathBuf,
}

/// The operations on classes and objects, and backups.
async fn operations(
    runtime: &Runtime,
    method: &Method,
    parts: &[&str],
    query: Option<&str>,
    req: AxumRequest,
) -> AdminResult<serde_json::Value> {
    let admin = runtime.admin();
    let param = |name: &str| query_param(query, name);
    let limit = || -> AdminResult<Option<usize>> {
        param("limit")
            .map(|l| {
                l.parse()
                    .map_err(|_| AdminError::BadInput(format!("limit={l:?} is not a number")))
            })
            .transpose()
    };
    match (method, parts) {
        (&Method::GET, ["classes"]) => Ok(json!({ "classes": admin.classes() })),
        (&Method::GET, ["classes", class, "objects"]) => {
            let query = ObjectQuery {
                prefix: param("prefix"),
                cursor: param("cursor"),
                limit: limit()?,
            };
            json(&admin.list_objects(class, &query).await?)
        }
        (&Method::GET, ["classes", class, "objects", object]) => {
            json(&admin.object_detail(class, object).await?)
        }
        (&Method::DELETE, ["classes", class, "objects", object]) => {
            admin.delete_object(class, object).await?;
            Ok(json!({ "deleted": true }))
        }
        (&Method::GET, ["classes", class, "objects", object, "kv"]) => {
            let page = admin
                .kv_entries(
                    class,
                    object,
                    param("prefix").as_deref(),
                    param("cursor").as_deref(),
                    limit()?,
                )
                .await?;
            json(&page)
        }
        (&Method::POST, ["classes", class, "objects", object, "query"]) => {
            let body: QueryBody = read_json(req, "{\"sql\": \"SELECT …\"}").await?;
            json(&admin.query(class, object, &body.sql).await?)
        }
        (&Method::POST, ["classes", class, "objects", object, "alarm"]) => {
            json(&admin.run_alarm(class, object).await?)
        }
        (&Method::POST, ["backup"]) => {
            let body: BackupBody = read_json(req, "{\"dir\": \"/absolute/path\"}").await?;
            json(&admin.backup(&body.dir).await?)
        }
        // `serve` checked the path and the method with `allowed`.
        _ => Err(AdminError::BadInput(format!(
            "{method} is not allowed on this path"
        ))),
    }
}

/// The methods a path of [`operations`] takes; `None` for a path it does not serve.
fn allowed(parts: &[&str]) -> Option<&'static [Method]> {
    Some(match parts {
        ["classes"] | ["classes", _, "objects"] | ["classes", _, "objects", _, "kv"] => {
            &[Method::GET]
        }
        ["classes", _, "objects", _] => &[Method::GET, Method::DELETE],
        ["backup"] | ["classes", _, "objects", _, "query" | "alarm"] => &[Method::POST],
        _ => return None,
    })
}

/// An answer of [`operations`] as JSON.
fn json<T: serde::Serialize>(value: &T) -> AdminResult<serde_json::Value> {
    serde_json::to_value(value).map_err(|e| AdminError::Runtime(Error::from(e)))
}

/// The request's body as JSON of shape `shape`.
async fn read_json<T: serde::de::DeserializeOwned>(
    req: AxumRequest,
    shape: &str,
) -> AdminResult<T> {
    let bytes = Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|_| {
            AdminError::BadInput(format!("the body must be JSON of at most {MAX_BODY} bytes"))
        })?
        .to_bytes();
    serde_json::from_slice(&bytes)
        .map_err(|e| AdminError::BadInput(format!("the body must be {shape}: {e}")))
}

/// The percent-decoded value of query parameter `name`.
pub(crate) fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then(|| percent_decode(&value.replace('+', " ")))?
    })
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

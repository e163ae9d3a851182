//! The owner's side of cluster forwarding: requests, WebSocket upgrades and typed calls that
//! another node sent on (`cluster.rs` says how they travel), served here without forwarding
//! them again.

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use http_body_util::{BodyExt, Limited};
use rookery::{Call, ObjectId, Request};

use crate::cluster::{CLASS, FORWARD_PREFIX, ID, METHOD, NAME, RAISED, SERVICE, TOKEN};
use crate::gateway::{Gateway, upgrade_of};
use crate::reply::{error_response, failure, same_secret};

impl Gateway {
    /// Serves a request another node forwarded (see the module docs), WebSocket upgrades too.
    pub(crate) async fn serve_forwarded(
        &self,
        token: &str,
        req: axum::extract::Request,
    ) -> axum::response::Response {
        let (mut parts, body) = req.into_parts();
        let stub = match self.forwarded_object(token, &parts.headers) {
            Ok(stub) => stub,
            Err(refused) => return refused,
        };
        let Some(rest) = parts
            .uri
            .path_and_query()
            .and_then(|p| p.as_str().strip_prefix(FORWARD_PREFIX))
        else {
            return error_response(StatusCode::BAD_REQUEST, "not a forwarded path");
        };
        let uri = match (if rest.is_empty() { "/" } else { rest }).parse() {
            Ok(uri) => uri,
            Err(_) => return error_response(StatusCode::BAD_REQUEST, "invalid forwarded path"),
        };
        let upgrade = match upgrade_of(&mut parts).await {
            Ok(upgrade) => upgrade,
            Err(refused) => return refused,
        };
        let body = match Limited::new(body, self.max_body_bytes).collect().await {
            Ok(body) => body.to_bytes(),
            Err(_) => {
                return error_response(StatusCode::PAYLOAD_TOO_LARGE, "the body is too large");
            }
        };
        let mut headers = parts.headers;
        for name in [&CLASS, &ID, &NAME, &TOKEN] {
            headers.remove(name);
        }
        let req = Request::from_parts(parts.method, uri, headers, body);
        let request_id = HeaderValue::from_static("-");
        match stub.fetch_here(req).await {
            // A streamed answer goes out as it is written (the forwarding node relays it).
            Ok(resp) => self
                .respond(resp, upgrade)
                .unwrap_or_else(|e| failure(&e, &request_id)),
            Err(e) => failure(&e, &request_id),
        }
    }

    /// Serves a typed call another node forwarded.
    pub(crate) async fn serve_forwarded_call(
        &self,
        token: &str,
        req: axum::extract::Request,
    ) -> axum::response::Response {
        let (parts, body) = req.into_parts();
        let stub = match self.forwarded_object(token, &parts.headers) {
            Ok(stub) => stub,
            Err(refused) => return refused,
        };
        let header = |name: &HeaderName| parts.headers.get(name).and_then(|v| v.to_str().ok());
        let (Some(service), Some(method)) = (header(&SERVICE), header(&METHOD)) else {
            return error_response(
                StatusCode::BAD_REQUEST,
                "a forwarded call without its method",
            );
        };
        let (service, method) = (service.to_string(), method.to_string());
        let args = match Limited::new(body, self.max_body_bytes).collect().await {
            Ok(body) => body.to_bytes().to_vec(),
            Err(_) => {
                return error_response(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "the arguments are too large",
                );
            }
        };
        let call = Call::from_parts(service, method, args);
        match stub.call_here(call).await {
            Ok(reply) => {
                let mut response =
                    axum::response::Response::new(axum::body::Body::from(reply.bytes().to_vec()));
                response.headers_mut().insert(
                    RAISED,
                    HeaderValue::from_static(if reply.raised() { "1" } else { "0" }),
                );
                response
            }
            Err(e) => failure(&e, &HeaderValue::from_static("-")),
        }
    }

    /// The object a forwarded request or call is for, once its token proved it came from a node.
    #[allow(clippy::result_large_err)]
    fn forwarded_object(
        &self,
        token: &str,
        headers: &HeaderMap,
    ) -> Result<rookery::Stub, axum::response::Response> {
        let presented = headers.get(&TOKEN).map(HeaderValue::as_bytes);
        if !presented.is_some_and(|p| same_secret(p, token.as_bytes())) {
            return Err(error_response(
                StatusCode::FORBIDDEN,
                "only cluster nodes may forward requests",
            ));
        }
        let header = |name: &HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
        let (Some(class), Some(id)) = (header(&CLASS), header(&ID)) else {
            return Err(error_response(
                StatusCode::BAD_REQUEST,
                "a forwarded request without its object",
            ));
        };
        let namespace = self
            .runtime
            .namespace_of_class(class)
            .map_err(|e| error_response(StatusCode::NOT_FOUND, &e.to_string()))?;
        let id = object_id(&namespace, id, header(&NAME))?;
        Ok(namespace.get(id))
    }
}

/// The id a forwarded request or call names (by name when it has one: objects see names).
#[allow(clippy::result_large_err)]
fn object_id(
    namespace: &rookery::Namespace,
    id: &str,
    name: Option<&str>,
) -> Result<ObjectId, axum::response::Response> {
    match name.and_then(rookery::percent_decode) {
        Some(name) => {
            let named = namespace.id_from_name(&name);
            if named.to_hex() != id {
                return Err(error_response(
                    StatusCode::BAD_REQUEST,
                    "the object's name and id differ",
                ));
            }
            Ok(named)
        }
        None => namespace
            .id_from_string(id)
            .map_err(|e| error_response(StatusCode::BAD_REQUEST, &e.public_message())),
    }
}

//! The HTTP gateway: matches a request to a route, applies the route's rate limit, picks the
//! object, and forwards the request through a stub.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::FromRequestParts;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, State};
use axum::response::IntoResponse;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, StatusCode};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use rookery::{Error, Request, Response, SharedWorker, identity, percent_decode};
use tracing::Instrument;

use crate::client_ip::{client_ip, rate_limit_key};
use crate::conn::Connections;
use crate::identity::{Authenticator, Unauthorized, Verified};
use crate::prometheus::{METRICS_PATH, OwnRoutes, RouteMetrics};
use crate::reply::{error_response, failure, into_axum, presents_token, unauthorized};
use crate::{socket_io, stream_io};

use crate::routes::{Matched, Pick, RateLimit, Routes};

/// The header that carries the request id on every response.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const RATE_LIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");

/// Where the runtime's counters are served (JSON), ahead of the configured routes.
pub const STATS_PATH: &str = "/_rookery/stats";
/// The cluster's nodes (`GET`), on a cluster node.
pub const CLUSTER_PATH: &str = "/_rookery/cluster";
/// `<node>/objects` under it: the objects a node owns.
const CLUSTER_NODES_PREFIX: &str = "/_rookery/cluster/nodes/";

/// The prefix of every path the runtime serves itself; configured routes never see these.
const RUNTIME_PREFIX: &str = "/_rookery/";

/// Answers 200 while the process runs (liveness); ahead of the configured routes, open to all.
pub const HEALTHZ_PATH: &str = "/healthz";
/// Answers 200 while the server can take writes, else 503 with the reason (readiness); ahead
/// of the configured routes, open to all.
pub const READYZ_PATH: &str = "/readyz";

/// Who may use the runtime's own endpoints (`/_rookery/...`), besides the admin token's holders.
#[derive(Debug)]
pub(crate) enum RuntimeAccess {
    /// Callers presenting this bearer token (`[server] stats_token`).
    Token(String),
    /// Anyone: no token is set and `[auth]` has no tokens either (the demo).
    Open,
    /// No one: `[auth]` has tokens but no `stats_token` is set.
    Closed,
}

/// Everything the gateway needs per request.
pub(crate) struct Gateway {
    pub(crate) routes: Routes,
    pub(crate) runtime: rookery::Runtime,
    pub(crate) client_ip_header: Option<HeaderName>,
    pub(crate) max_body_bytes: usize,
    pub(crate) max_message_bytes: usize,
    /// Time a client has to send the whole request body.
    pub(crate) body_read_timeout: Duration,
    pub(crate) auth: Authenticator,
    pub(crate) runtime_access: RuntimeAccess,
    /// The admin API's bearer token; `None` turns the API off.
    pub(crate) admin_token: Option<String>,
    /// Whether the built-in chat page is served (`[server] chat_page`).
    pub(crate) chat_page: bool,
    /// Whether `/metrics` is served (`[server] metrics`).
    pub(crate) metrics: bool,
    pub(crate) connections: Arc<Connections>,
    pub(crate) request_ids: RequestIds,
    /// The worker, if the configuration names one.
    pub(crate) worker: Option<SharedWorker>,
    /// What the worker reaches.
    pub(crate) env: rookery::Env,
    /// Turns true when the server begins to shut down: streamed bodies end then.
    pub(crate) stopping: tokio::sync::watch::Sender<bool>,
    /// The request metrics of the paths the server answers itself.
    pub(crate) own_metrics: OwnRoutes,
    /// The cluster this server is a node of, if any.
    pub(crate) cluster: Option<Arc<rookery_cluster::Cluster>>,
}

/// Makes request ids: a per-process random prefix and a counter.
pub(crate) struct RequestIds {
    prefix: u32,
    next: AtomicU64,
}

impl RequestIds {
    pub(crate) fn new() -> Self {
        let mut prefix = [0u8; 4];
        // Without randomness the ids are still unique within the process.
        let _ = getrandom::fill(&mut prefix);
        Self {
            prefix: u32::from_le_bytes(prefix),
            next: AtomicU64::new(1),
        }
    }

    /// The client's id when it sent a usable one, else a fresh one.
    fn for_request(&self, headers: &http::HeaderMap) -> HeaderValue {
        if let Some(v) = headers.get(&REQUEST_ID)
            && (1..=128).contains(&v.len())
            && v.as_bytes().iter().all(|b| b.is_ascii_graphic())
        {
            return v.clone();
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let id = format!("{:08x}-{n:x}", self.prefix);
        HeaderValue::from_str(&id).unwrap_or(HeaderValue::from_static("-"))
    }
}

/// Handles every request that reaches the server.
pub(crate) async fn handle(
    State(gw): State<Arc<Gateway>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut req: axum::extract::Request,
) -> axum::response::Response {
    let started = Instant::now();
    let request_id = gw.request_ids.for_request(req.headers());
    let logged = tracing::enabled!(tracing::Level::DEBUG)
        .then(|| (req.method().clone(), req.uri().path().to_string()));
    // HEAD is GET without the body: routes, methods and objects see GET.
    let head = req.method() == Method::HEAD;
    if head {
        *req.method_mut() = Method::GET;
    }
    // At debug level: a span per request is not free, and most deployments log at info.
    let span = tracing::debug_span!("request", request_id = request_id.to_str().unwrap_or("-"),);
    let (metrics, mut response) = gw.serve(peer, req, &request_id).instrument(span).await;
    metrics.record(response.status(), started.elapsed());
    if head {
        response = without_body(response);
    }
    if let Some((method, path)) = logged {
        tracing::debug!(
            request_id = ?request_id,
            %method,
            path,
            status = response.status().as_u16(),
            micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
            "request"
        );
    }
    response.headers_mut().insert(REQUEST_ID, request_id);
    response
}

/// The response to a HEAD request: the GET response's status and headers, with the length of
/// the body it would have had, and no body.
fn without_body(mut response: axum::response::Response) -> axum::response::Response {
    let length = http_body::Body::size_hint(response.body()).exact();
    if let Some(length) = length
        && !response
            .headers()
            .contains_key(http::header::CONTENT_LENGTH)
    {
        response
            .headers_mut()
            .insert(http::header::CONTENT_LENGTH, HeaderValue::from(length));
    }
    *response.body_mut() = Body::empty();
    response
}

impl Gateway {
    /// Answers a request; also says whose metrics it counts in.
    async fn serve(
        &self,
        peer: SocketAddr,
        req: axum::extract::Request,
        request_id: &HeaderValue,
    ) -> (&RouteMetrics, axum::response::Response) {
        let path = req.uri().path();
        // The admin page's paths are under the admin API's prefix, but need no token.
        if crate::admin_page::is_page_path(path) {
            let response = crate::admin_page::serve(self.admin_token.is_some(), req.method(), path);
            return (&self.own_metrics.admin, response);
        }
        if path.starts_with(crate::admin::ADMIN_PREFIX) {
            let response =
                crate::admin::serve(&self.runtime, self.admin_token.as_deref(), req, request_id)
                    .await;
            return (&self.own_metrics.admin, response);
        }
        if let Some(cluster) = &self.cluster
            && path == crate::cluster::FORWARD_CALL_PATH
        {
            let response = self
                .serve_forwarded_call(cluster.forward_token(), req)
                .await;
            return (&self.own_metrics.runtime, response);
        }
        if let Some(cluster) = &self.cluster
            && path.starts_with(crate::cluster::FORWARD_PREFIX)
        {
            let response = self.serve_forwarded(cluster.forward_token(), req).await;
            return (&self.own_metrics.runtime, response);
        }
        if path == CLUSTER_PATH || path.starts_with(CLUSTER_NODES_PREFIX) {
            let response = match self.refuse_runtime_access(&req) {
                Some(refused) => refused,
                None => match path.strip_prefix(CLUSTER_NODES_PREFIX) {
                    Some(node) => {
                        let after = crate::admin::query_param(req.uri().query(), "after");
                        self.cluster_objects(node, after.as_deref()).await
                    }
                    None => self.cluster_nodes().await,
                },
            };
            return (&self.own_metrics.runtime, response);
        }
        if path.starts_with(RUNTIME_PREFIX) || path == METRICS_PATH {
            return (&self.own_metrics.runtime, self.runtime_endpoint(&req));
        }
        if path == HEALTHZ_PATH || path == READYZ_PATH {
            return (&self.own_metrics.runtime, self.health(path));
        }
        if self.chat_page && crate::chat_page::is_chat_path(path) {
            return (
                &self.own_metrics.chat,
                crate::chat_page::serve(req.method(), path),
            );
        }
        let client = client_ip(req.headers(), self.client_ip_header.as_ref(), peer.ip());
        let Some(matched) = self.routes.find(req.method(), req.uri().path()) else {
            // What no route takes is the worker's, if there is one; as in the seed, else 404.
            return match &self.worker {
                Some(worker) => (
                    &self.own_metrics.worker,
                    self.to_worker(worker, req, client)
                        .await
                        .unwrap_or_else(|e| failure(&e, request_id)),
                ),
                None => (
                    &self.own_metrics.none,
                    error_response(StatusCode::NOT_FOUND, "Not found"),
                ),
            };
        };
        let route = matched.route;
        let metrics = &route.metrics;
        let object = match self.pick(&matched) {
            Ok(object) => object,
            Err(e) => return (metrics, failure(&e, request_id)),
        };
        let remaining = match &route.rate_limit {
            None => None,
            Some(rl) => match self.check_rate(rl, client).await {
                Ok(Some(remaining)) => Some(remaining),
                Ok(None) => {
                    return (
                        metrics,
                        error_response(StatusCode::TOO_MANY_REQUESTS, "Rate limited"),
                    );
                }
                Err(e) => return (metrics, failure(&e, request_id)),
            },
        };
        // The object (or worker) sees the request id, and its turn's span carries it.
        let mut req = req;
        req.headers_mut().insert(REQUEST_ID, request_id.clone());
        let answer = match (object, &self.worker) {
            (Some((stub, path)), _) => self.forward(stub, path, req, client).await,
            (None, Some(worker)) if route.worker => self.to_worker(worker, req, client).await,
            (None, _) => Ok(into_axum(Response::json_bytes(Bytes::from_static(
                b"{\"ok\":true}",
            )))),
        };
        let mut response = answer.unwrap_or_else(|e| failure(&e, request_id));
        if let Some(remaining) = remaining {
            response
                .headers_mut()
                .insert(RATE_LIMIT_REMAINING, HeaderValue::from(remaining));
        }
        (metrics, response)
    }

    /// `/healthz` (the process answers) and `/readyz` (it can take writes).
    fn health(&self, path: &str) -> axum::response::Response {
        if path == HEALTHZ_PATH {
            return into_axum(Response::json_bytes(Bytes::from_static(
                b"{\"status\":\"ok\"}",
            )));
        }
        let reason = if *self.stopping.borrow() {
            Some("shutting down")
        } else if self.cluster.as_ref().is_some_and(|c| !c.holds_lease()) {
            Some("the cluster lease is not held")
        } else {
            match self.runtime.readiness() {
                Ok(()) => None,
                Err(e) => {
                    tracing::warn!(error = %e, "not ready");
                    Some(e.kind())
                }
            }
        };
        match reason {
            None => into_axum(Response::json_bytes(Bytes::from_static(
                b"{\"ready\":true}",
            ))),
            Some(reason) => {
                let body = serde_json::json!({ "ready": false, "reason": reason });
                let mut response = into_axum(Response::json_bytes(body.to_string()));
                *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                response
            }
        }
    }

    /// `GET /_rookery/cluster`: the cluster's nodes and how many objects each owns (behind
    /// the runtime endpoints' access); 404 on a server that is not a node.
    async fn cluster_nodes(&self) -> axum::response::Response {
        let Some(cluster) = &self.cluster else {
            return error_response(StatusCode::NOT_FOUND, "this server is not a cluster node");
        };
        match cluster.nodes().await {
            Ok(nodes) => {
                let nodes: Vec<serde_json::Value> = nodes
                    .iter()
                    .map(|n| {
                        serde_json::json!({
                            "nodeId": n.node_id,
                            "advertise": n.advertise,
                            "live": n.live,
                            "objects": n.objects,
                        })
                    })
                    .collect();
                let body = serde_json::json!({ "self": cluster.node_id(), "nodes": nodes });
                into_axum(Response::json_bytes(body.to_string()))
            }
            Err(e) => error_response(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
        }
    }

    /// `GET /_rookery/cluster/nodes/<node>/objects[?after=<class>/<id>]`: a page of 1 000 of the
    /// objects `node` owns, as `class/id`, and where the next page starts.
    async fn cluster_objects(&self, rest: &str, after: Option<&str>) -> axum::response::Response {
        let Some(cluster) = &self.cluster else {
            return error_response(StatusCode::NOT_FOUND, "this server is not a cluster node");
        };
        let Some(node) = rest.strip_suffix("/objects") else {
            return error_response(StatusCode::NOT_FOUND, "Not found");
        };
        let after = after.and_then(|a| a.split_once('/'));
        match cluster.owned_by(node, after, 1000).await {
            Ok(objects) => {
                let next = (objects.len() == 1000)
                    .then(|| objects.last().map(|(c, o)| format!("{c}/{o}")))
                    .flatten();
                let objects: Vec<String> =
                    objects.iter().map(|(c, o)| format!("{c}/{o}")).collect();
                let body = serde_json::json!({ "node": node, "objects": objects, "next": next });
                into_axum(Response::json_bytes(body.to_string()))
            }
            Err(e) => error_response(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
        }
    }

    /// The runtime's own endpoints, behind their own access setting.
    fn runtime_endpoint(&self, req: &axum::extract::Request) -> axum::response::Response {
        if let Some(refused) = self.refuse_runtime_access(req) {
            return refused;
        }
        if req.uri().path() == STATS_PATH && req.method() == Method::GET {
            return self.stats();
        }
        if req.uri().path() == METRICS_PATH && req.method() == Method::GET {
            if !self.metrics {
                return error_response(
                    StatusCode::NOT_FOUND,
                    "metrics are off ([server] metrics = false)",
                );
            }
            return self.metrics();
        }
        error_response(StatusCode::NOT_FOUND, "Not found")
    }

    /// The answer to a caller without access to the runtime's endpoints, if it has none.
    fn refuse_runtime_access(
        &self,
        req: &axum::extract::Request,
    ) -> Option<axum::response::Response> {
        // The admin token opens them too (the admin page shows a few figures).
        let admin = self
            .admin_token
            .as_deref()
            .is_some_and(|token| presents_token(req.headers(), token));
        match &self.runtime_access {
            _ if admin => None,
            RuntimeAccess::Open => None,
            RuntimeAccess::Token(token) => (!presents_token(req.headers(), token)).then(|| {
                unauthorized("the runtime's endpoints need the stats token as a bearer token")
            }),
            RuntimeAccess::Closed => Some(unauthorized(
                "the runtime's endpoints are closed because [auth] has tokens; set \
                 [server] stats_token and send it as a bearer token",
            )),
        }
    }

    /// The runtime's counters as JSON.
    fn stats(&self) -> axum::response::Response {
        let body = serde_json::json!({
            "runtime": self.runtime.stats(),
            "alarms": self.runtime.alarm_stats(),
            "connections": self.connections.stats(),
        });
        into_axum(Response::json_bytes(body.to_string()))
    }

    /// The metrics in the Prometheus text format.
    fn metrics(&self) -> axum::response::Response {
        let Some(text) = crate::prometheus::render(&self.runtime, &self.connections.stats()) else {
            return error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "metrics are off: the program that embeds the server installed another metrics recorder",
            );
        };
        let mut response = axum::response::Response::new(Body::from(text));
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        );
        response
    }

    /// The stub and object path a matched route leads to, if it leads to an object.
    fn pick(&self, m: &Matched<'_, '_>) -> rookery::Result<Option<(rookery::Stub, String)>> {
        let Some(target) = &m.route.target else {
            return Ok(None);
        };
        let ns = &target.namespace;
        let id = match &target.pick {
            Pick::Name(params) => {
                let mut name = String::new();
                for param in params {
                    let raw = m.params.get(param).unwrap_or("");
                    if raw.is_empty() {
                        return Err(Error::bad_request(format!(
                            "the object name (path parameter {param:?}) is empty"
                        )));
                    }
                    let part = percent_decode(raw)
                        .ok_or_else(|| Error::bad_request("the object name is not valid UTF-8"))?;
                    // Joined by '/', the parts must not hold one: `a%2Fb/c` is not `a/b%2Fc`.
                    if params.len() > 1 && part.contains('/') {
                        return Err(Error::bad_request(format!(
                            "path parameter {param:?} of the object name holds a '/'"
                        )));
                    }
                    if !name.is_empty() {
                        name.push('/');
                    }
                    name.push_str(&part);
                }
                ns.id_from_name(&name)
            }
            Pick::Id(param) => ns.id_from_string(m.params.get(param).unwrap_or(""))?,
        };
        Ok(Some((ns.get(id), m.object_path())))
    }

    /// Asks the client's limiter object; `Some(remaining)` if the request may pass.
    async fn check_rate(&self, rl: &RateLimit, ip: IpAddr) -> rookery::Result<Option<u64>> {
        #[derive(serde::Deserialize)]
        struct Verdict {
            allowed: bool,
            remaining: u64,
        }
        let stub = rl.namespace.get_by_name(&rate_limit_key(ip));
        let resp = stub.fetch(Request::get(&rl.uri)?).await?;
        let verdict: Verdict = resp
            .json_body()
            .map_err(|e| Error::msg(format!("the rate limiter answered {}: {e}", resp.status())))?;
        Ok(verdict.allowed.then_some(verdict.remaining))
    }

    /// 408 for a body that did not arrive in time; the connection closes after it, since the
    /// rest of the body may still be on its way.
    fn body_too_slow(&self) -> axum::response::Response {
        let millis = self.body_read_timeout.as_millis();
        tracing::debug!(millis, "request body too slow");
        let mut response = error_response(
            StatusCode::REQUEST_TIMEOUT,
            &format!("the request body did not arrive within {millis} ms"),
        );
        response
            .headers_mut()
            .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        response
    }

    /// Sends a request to the object of its route, as `path` (the route's rewrite).
    async fn forward(
        &self,
        stub: rookery::Stub,
        path: String,
        req: axum::extract::Request,
        client: IpAddr,
    ) -> rookery::Result<axum::response::Response> {
        let (mut parts, body) = req.into_parts();
        // Refused before the handshake, so a full object costs the client one round trip.
        if is_websocket_upgrade(&parts.headers) && stub.websocket_count() >= stub.websocket_limit()
        {
            return Err(Error::SocketLimit(stub.websocket_limit()));
        }
        let upgrade = match upgrade_of(&mut parts).await {
            Ok(upgrade) => upgrade,
            Err(refused) => return Ok(refused),
        };
        let uri = match parts.uri.query() {
            Some(q) => format!("{path}?{q}"),
            None => path,
        };
        let uri = uri
            .parse()
            .map_err(|e| Error::bad_request(format!("invalid path: {e}")))?;
        let (req, verified) = match self.admit(parts, body, uri, client, Tokens::Refuse).await? {
            Ok(admitted) => admitted,
            Err(answer) => return Ok(answer),
        };
        let upgrade = choose_protocol(upgrade, verified);
        // A socket to an object another node owns is relayed through this node.
        let copy = match (&self.cluster, &upgrade) {
            (Some(_), Some(_)) => Some(req.clone()),
            _ => None,
        };
        match stub.fetch(req).await {
            Err(Error::Elsewhere(owner)) => match (&self.cluster, upgrade, copy) {
                (Some(cluster), Some(upgrade), Some(req)) => {
                    crate::socket_proxy::proxy(
                        cluster,
                        owner,
                        stub.class_name(),
                        stub.id(),
                        req,
                        upgrade,
                        self.max_message_bytes,
                    )
                    .await
                }
                _ => Err(Error::Elsewhere(owner)),
            },
            Err(e) => Err(e),
            Ok(resp) => self.respond(resp, upgrade),
        }
    }

    /// Hands a request to the worker, with the client's path and query.
    async fn to_worker(
        &self,
        worker: &SharedWorker,
        req: axum::extract::Request,
        client: IpAddr,
    ) -> rookery::Result<axum::response::Response> {
        let (mut parts, body) = req.into_parts();
        let upgrade = match upgrade_of(&mut parts).await {
            Ok(upgrade) => upgrade,
            Err(refused) => return Ok(refused),
        };
        let uri = parts.uri.clone();
        // The worker may check tokens of its own: one `[auth]` does not know is its to judge.
        let (req, verified) = match self.admit(parts, body, uri, client, Tokens::PassOn).await? {
            Ok(admitted) => admitted,
            Err(answer) => return Ok(answer),
        };
        let resp = worker.fetch(req, &self.env).await?;
        self.respond(resp, choose_protocol(upgrade, verified))
    }

    /// The request as an object or the worker receives it: the body read within its size and
    /// time limits, the identity headers the gateway's own (see `rookery::identity`) and the
    /// client's address in `x-rookery-client-ip`; with what the credential check verified.
    /// `Err` holds the answer when the gateway answers itself (a body too slow, a credential
    /// that does not verify where `tokens` refuses them).
    async fn admit(
        &self,
        mut parts: http::request::Parts,
        body: Body,
        uri: http::Uri,
        client: IpAddr,
        tokens: Tokens,
    ) -> rookery::Result<Result<(Request, Verified), axum::response::Response>> {
        let collect = Limited::new(body, self.max_body_bytes).collect();
        let body = match tokio::time::timeout(self.body_read_timeout, collect).await {
            Err(_elapsed) => return Ok(Err(self.body_too_slow())),
            Ok(collected) => collected,
        };
        let body = match body {
            Ok(collected) => collected.to_bytes(),
            Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
                return Err(Error::LimitExceeded(format!(
                    "the request body is over {} bytes",
                    self.max_body_bytes
                )));
            }
            Err(e) => {
                return Err(Error::bad_request(format!(
                    "cannot read the request body: {e}"
                )));
            }
        };
        let verified = match self.auth.apply(&mut parts.headers, parts.uri.query()) {
            Ok(verified) => verified,
            Err(Unauthorized) if matches!(tokens, Tokens::Refuse) => {
                return Ok(Err(error_response(
                    StatusCode::UNAUTHORIZED,
                    "Unauthorized",
                )));
            }
            Err(Unauthorized) => Verified::default(),
        };
        // What a client sent under this name is not its address.
        parts.headers.remove(identity::CLIENT_IP);
        if let Ok(ip) = HeaderValue::try_from(client.to_string()) {
            parts.headers.insert(identity::CLIENT_IP, ip);
        }
        Ok(Ok((
            Request::from_parts(parts.method, uri, parts.headers, body),
            verified,
        )))
    }

    /// The HTTP answer to `resp`: as it is, or, when it hands over a WebSocket the object
    /// accepted, the end of the handshake of `upgrade`.
    pub(crate) fn respond(
        &self,
        mut resp: Response,
        upgrade: Option<WebSocketUpgrade>,
    ) -> rookery::Result<axum::response::Response> {
        if let Some(stream) = resp.take_stream_link() {
            return Ok(stream_io::respond(resp, stream, self.stopping.subscribe()));
        }
        let Some(link) = resp.take_socket_link() else {
            return Ok(into_axum(resp));
        };
        match upgrade {
            Some(upgrade) => Ok(socket_io::upgrade(upgrade, link, self.max_message_bytes)),
            // Dropping the link ends the socket: it has no connection to serve it.
            None => Err(Error::msg(
                "the object answered with a WebSocket to a request that is not an upgrade",
            )),
        }
    }
}

/// What `Gateway::admit` does with a bearer token `[auth]` does not know.
#[derive(Clone, Copy)]
enum Tokens {
    /// Answers 401 (routes to objects).
    Refuse,
    /// Passes the request on without an identity (the worker judges).
    PassOn,
}

/// The upgrade a WebSocket request asks for, taken from it to finish the handshake later;
/// `Err` holds the answer to a malformed upgrade request.
pub(crate) async fn upgrade_of(
    parts: &mut http::request::Parts,
) -> Result<Option<WebSocketUpgrade>, axum::response::Response> {
    if !is_websocket_upgrade(&parts.headers) {
        return Ok(None);
    }
    // A browser fails the handshake unless the server picks one of the subprotocols it offered.
    // Clients such as Waddle's pass a token there (`new WebSocket(url, [token])`), so the first
    // offered value is echoed as the chosen protocol.
    let offered = parts
        .headers
        .get(http::header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').map(str::trim).find(|p| !p.is_empty()))
        .map(str::to_string);
    WebSocketUpgrade::from_request_parts(parts, &())
        .await
        .map(|upgrade| match offered {
            Some(protocol) => Some(upgrade.protocols([protocol])),
            None => Some(upgrade),
        })
        .map_err(IntoResponse::into_response)
}

/// `upgrade`, choosing the subprotocol that carried the credential when one did (by default
/// the first offered one is echoed).
fn choose_protocol(
    upgrade: Option<WebSocketUpgrade>,
    verified: Verified,
) -> Option<WebSocketUpgrade> {
    match (upgrade, verified.protocol) {
        (Some(upgrade), Some(protocol)) => Some(upgrade.protocols([protocol])),
        (upgrade, _) => upgrade,
    }
}

/// Whether the request asks for a WebSocket upgrade.
fn is_websocket_upgrade(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

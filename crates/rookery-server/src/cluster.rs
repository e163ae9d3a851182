//! The server's side of cluster mode: requests travel to the node that owns their object.
//!
//! A node that receives a request for an object another node owns sends it on
//! ([`NodeForwarder`], the runtime's [`Forwarder`]) as the object would have seen it: its
//! method, the path and query after routing, the headers the gateway set (identity included:
//! the first node checked the credentials) and the body. It goes to `/_rookery/forward` on the
//! owner with the object's class and id in headers and the cluster's token, which only nodes
//! know (it lives in PostgreSQL). The owner serves it (`forwarded.rs`) without forwarding it
//! again: if the object moved meanwhile, the caller hears 503 and retries.
//!
//! WebSockets go the same way, relayed by the node the client reached (`socket_proxy.rs`), and
//! so do streamed answers (server-sent events), chunk by chunk.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use rookery::{BodyStream, Call, Error, Forwarded, Forwarder, ObjectId, Reply, Request, Response};

/// The path prefix forwarded requests arrive under.
pub const FORWARD_PREFIX: &str = "/_rookery/forward";
/// The path forwarded typed calls arrive at.
pub const FORWARD_CALL_PATH: &str = "/_rookery/call";
/// A forwarded call's service and method.
pub(crate) const SERVICE: HeaderName = HeaderName::from_static("x-rookery-call-service");
pub(crate) const METHOD: HeaderName = HeaderName::from_static("x-rookery-call-method");
/// Whether a forwarded call's method raised its own error (`1`) or returned (`0`).
pub(crate) const RAISED: HeaderName = HeaderName::from_static("x-rookery-call-raised");
/// The class of the object a forwarded request is for.
pub(crate) const CLASS: HeaderName = HeaderName::from_static("x-rookery-forward-class");
/// Its id, in hex.
pub(crate) const ID: HeaderName = HeaderName::from_static("x-rookery-forward-id");
/// Its name, when it was addressed by name (objects see their names).
pub(crate) const NAME: HeaderName = HeaderName::from_static("x-rookery-forward-name");
/// The cluster's token.
pub(crate) const TOKEN: HeaderName = HeaderName::from_static("x-rookery-cluster-token");

/// Sends requests to the node that owns their object, over pooled HTTP connections.
pub struct NodeForwarder {
    client: reqwest::Client,
    cluster: Arc<rookery_cluster::Cluster>,
}

impl NodeForwarder {
    /// A forwarder for `cluster`'s node. An owner that does not begin its answer within one
    /// lease is taken for gone (paused, cut off, dead): the caller hears 503 and its retry
    /// tries to take the object over, which succeeds once the owner's lease ran out. (A turn
    /// longer than the lease is answered 503 the same way, though it ran.) A streamed answer
    /// may then go on for as long as the owner writes it.
    pub fn new(cluster: Arc<rookery_cluster::Cluster>) -> Result<Self, Error> {
        let client = reqwest::Client::builder()
            .connect_timeout(cluster.lease().min(Duration::from_secs(2)))
            .pool_max_idle_per_host(64)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| Error::internal("building the cluster's HTTP client", e))?;
        Ok(Self { client, cluster })
    }
}

impl Forwarder for NodeForwarder {
    fn fetch(&self, address: &str, class: &str, id: &ObjectId, req: Request) -> Forwarded {
        let url = format!("{}{}", address.trim_end_matches('/'), forward_path(&req));
        let headers = forward_headers(&self.cluster, class, id, req.headers());
        let request = self
            .client
            .request(req.method().clone(), url)
            .body(req.body().clone());
        let (cluster, id, address) = (self.cluster.clone(), id.clone(), address.to_string());
        Box::pin(async move {
            let answer = send(&cluster, &id, address, request.headers(headers?)).await?;
            let status = answer.status();
            let mut headers = answer.headers().clone();
            strip_hop_by_hop(&mut headers);
            // The owner sends a length with every whole answer; one without is a stream.
            if !answer.headers().contains_key(http::header::CONTENT_LENGTH) {
                return relay_stream(answer, status, headers);
            }
            let mut response = Response::new(status, body_of(answer).await?);
            *response.headers_mut() = headers;
            Ok(response)
        })
    }

    fn call(&self, address: &str, class: &str, id: &ObjectId, call: Call) -> Forwarded<Reply> {
        let url = format!("{}{FORWARD_CALL_PATH}", address.trim_end_matches('/'));
        let headers =
            forward_headers(&self.cluster, class, id, &HeaderMap::new()).and_then(|mut h| {
                h.insert(SERVICE, header_value(call.service())?);
                h.insert(METHOD, header_value(call.method())?);
                Ok(h)
            });
        let request = self.client.post(url).body(call.into_encoded_args());
        let (cluster, id, address) = (self.cluster.clone(), id.clone(), address.to_string());
        Box::pin(async move {
            let answer = send(&cluster, &id, address.clone(), request.headers(headers?)).await?;
            let status = answer.status();
            let raised = answer.headers().get(&RAISED).is_some_and(|v| v == "1");
            let body = body_of(answer).await?;
            match status {
                StatusCode::OK => Ok(Reply::from_parts(raised, body.to_vec())),
                // The owner could not serve it (the object moved again, storage down): retry.
                StatusCode::SERVICE_UNAVAILABLE => Err(Error::Elsewhere(address)),
                status => Err(Error::ObjectFailed {
                    status,
                    message: String::from_utf8_lossy(&body).into_owned(),
                }),
            }
        })
    }
}

/// Sends a forwarded request to the owner at `address` and waits for its answer to begin, at
/// most a lease: one that does not is taken for gone ([`gone`]).
async fn send(
    cluster: &rookery_cluster::Cluster,
    id: &ObjectId,
    address: String,
    request: reqwest::RequestBuilder,
) -> Result<reqwest::Response, Error> {
    match tokio::time::timeout(cluster.lease(), request.send()).await {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(e)) => Err(gone(cluster, id, address, &e.to_string())),
        Err(_) => Err(gone(cluster, id, address, "no answer within the lease")),
    }
}

/// The whole body of the owner's answer.
async fn body_of(answer: reqwest::Response) -> Result<bytes::Bytes, Error> {
    answer
        .bytes()
        .await
        .map_err(|e| Error::StorageUnavailable(format!("the owner node's answer broke off: {e}")))
}

/// The owner at `address` did not answer: forgotten, so that the retry tries to take the
/// object over.
pub(crate) fn gone(
    cluster: &rookery_cluster::Cluster,
    id: &ObjectId,
    address: String,
    why: &str,
) -> Error {
    tracing::warn!(owner = %address, error = why, "the owner node did not answer");
    cluster.owner_unreachable(id);
    Error::Elsewhere(address)
}

/// A streamed answer of the owner (server-sent events, say), relayed chunk by chunk as it
/// arrives, for as long as the client reads it.
fn relay_stream(
    mut answer: reqwest::Response,
    status: StatusCode,
    headers: HeaderMap,
) -> Result<Response, Error> {
    let content_type = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/octet-stream")
        .to_string();
    let stream = BodyStream::new(&content_type)?;
    let mut response = Response::stream(&stream).with_status(status);
    response.headers_mut().extend(headers);
    tokio::spawn(async move {
        // Ends when the owner ends the body, the connection breaks, or the client left (seen
        // at the next chunk; the owner's keep-alives bring one).
        while stream.is_open() {
            match answer.chunk().await {
                Ok(Some(chunk)) => stream.send(chunk),
                Ok(None) | Err(_) => break,
            }
        }
        stream.close();
    });
    Ok(response)
}

/// Where on the owner a request for `req` goes: the forwarding prefix, then the path and
/// query the object sees.
pub(crate) fn forward_path(req: &Request) -> String {
    format!(
        "{FORWARD_PREFIX}{}",
        req.uri().path_and_query().map_or("/", |p| p.as_str())
    )
}

/// The headers a forwarded request carries: its own (less those of one connection), the
/// object's class, id and name, and the cluster's token.
pub(crate) fn forward_headers(
    cluster: &rookery_cluster::Cluster,
    class: &str,
    id: &ObjectId,
    own: &HeaderMap,
) -> Result<HeaderMap, Error> {
    let mut headers = own.clone();
    strip_hop_by_hop(&mut headers);
    headers.insert(TOKEN, header_value(cluster.forward_token())?);
    headers.insert(CLASS, header_value(class)?);
    headers.insert(ID, header_value(&id.to_hex())?);
    if let Some(name) = id.name() {
        headers.insert(NAME, header_value(&rookery::percent_encode(name))?);
    }
    Ok(headers)
}

/// `text` as a header value, or why it cannot be one.
fn header_value(text: &str) -> Result<HeaderValue, Error> {
    HeaderValue::from_str(text)
        .map_err(|_| Error::msg(format!("{text:?} cannot travel in a header")))
}

/// Headers that belong to one connection, not to the request.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    for name in [
        http::header::CONNECTION,
        http::header::HOST,
        http::header::CONTENT_LENGTH,
        http::header::TRANSFER_ENCODING,
        http::header::UPGRADE,
        HeaderName::from_static("keep-alive"),
        http::header::TE,
        http::header::TRAILER,
        http::header::PROXY_AUTHORIZATION,
    ] {
        headers.remove(name);
    }
}

/// A shareable forwarder for `cluster`'s node.
pub(crate) fn forwarder(
    cluster: Arc<rookery_cluster::Cluster>,
) -> Result<Arc<dyn Forwarder>, Error> {
    Ok(Arc::new(NodeForwarder::new(cluster)?))
}

//! The HTTP side of the load generator: the server address and one keep-alive HTTP/1 connection.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{CONTENT_TYPE, HOST, HeaderValue};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::net::TcpStream;

/// How long one request may take before it counts as failed; above the server's 30 s turn limit
/// so a slow turn shows up as its own answer rather than as our timeout.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(45);

/// How long opening one TCP connection may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// The server under test: where to connect and what to put in `Host`.
#[derive(Debug, Clone)]
pub struct Target {
    /// Resolved socket address.
    pub addr: SocketAddr,
    /// `host:port` as given, for the `Host` header and WebSocket URLs.
    pub authority: String,
    /// `authority` as a header value, built once and cloned (a reference count) per request.
    host_header: HeaderValue,
}

impl Target {
    /// Parses `http://host:port[/]` and resolves the host.
    pub async fn resolve(url: &str) -> anyhow::Result<Self> {
        let authority = authority_of(url)?.to_owned();
        let addr = tokio::net::lookup_host(&authority)
            .await
            .with_context(|| format!("resolving {authority}"))?
            .next()
            .with_context(|| format!("{authority} resolves to no address"))?;
        let host_header = HeaderValue::from_str(&authority)
            .with_context(|| format!("{authority:?} is not a valid Host header"))?;
        Ok(Self {
            addr,
            authority,
            host_header,
        })
    }

    /// The WebSocket URL of `path_and_query` on this server.
    pub fn ws_url(&self, path_and_query: &str) -> String {
        format!("ws://{}{}", self.authority, path_and_query)
    }
}

/// The `host:port` of an `http://host:port[/]` URL; other schemes and paths are refused because
/// the scenarios build their own paths.
pub fn authority_of(url: &str) -> anyhow::Result<&str> {
    let Some(rest) = url.strip_prefix("http://") else {
        bail!("{url:?}: expected http://HOST:PORT");
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.is_empty() || authority.contains('/') {
        bail!("{url:?}: expected http://HOST:PORT with no path");
    }
    if !authority.contains(':') {
        bail!("{url:?}: give the port explicitly (http://HOST:PORT)");
    }
    Ok(authority)
}

/// A path as a request target; fails on characters a URI cannot carry (e.g. from `--name`).
pub fn path_uri(path: String) -> anyhow::Result<Uri> {
    Uri::try_from(path.as_str()).with_context(|| format!("{path:?} is not a valid request path"))
}

/// One keep-alive HTTP/1 connection sending requests one after the other.
pub struct Conn {
    sender: SendRequest<Full<Bytes>>,
    host: HeaderValue,
}

impl Conn {
    /// Opens a TCP connection to `target` and performs the HTTP/1 handshake.
    pub async fn open(target: &Target) -> anyhow::Result<Self> {
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target.addr))
            .await
            .with_context(|| format!("connecting to {} timed out", target.addr))?
            .with_context(|| format!("connecting to {}", target.addr))?;
        // Requests are tiny and sequential: without NODELAY each one can wait for a delayed ACK.
        stream.set_nodelay(true)?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .context("HTTP/1 handshake")?;
        // The connection task ends when the server closes or `sender` is dropped; a failure shows
        // up as an error on the next request, so its result is not needed here.
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Self {
            sender,
            host: target.host_header.clone(),
        })
    }

    /// Sends one request with an empty body and reads the whole response, within
    /// [`REQUEST_TIMEOUT`].
    pub async fn send(&mut self, method: Method, uri: Uri) -> anyhow::Result<(StatusCode, Bytes)> {
        self.send_body(method, uri, Bytes::new()).await
    }

    /// Sends one request with a JSON `body` (none when empty) and reads the whole response,
    /// within [`REQUEST_TIMEOUT`].
    pub async fn send_body(
        &mut self,
        method: Method,
        uri: Uri,
        body: Bytes,
    ) -> anyhow::Result<(StatusCode, Bytes)> {
        tokio::time::timeout(REQUEST_TIMEOUT, self.send_inner(method, uri, body))
            .await
            .context("request timed out")?
    }

    async fn send_inner(
        &mut self,
        method: Method,
        uri: Uri,
        body: Bytes,
    ) -> anyhow::Result<(StatusCode, Bytes)> {
        self.sender.ready().await.context("connection closed")?;
        let json = !body.is_empty();
        // An empty `Full` is an empty body, exactly like `Empty`.
        let mut req = Request::new(Full::new(body));
        *req.method_mut() = method;
        *req.uri_mut() = uri;
        req.headers_mut().insert(HOST, self.host.clone());
        if json {
            req.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        let resp = self.sender.send_request(req).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }
}

/// The body of every counter answer.
#[derive(Debug, Deserialize)]
struct CounterBody {
    value: i64,
}

/// The `value` of a counter answer `{"value":n}`.
pub fn counter_value(body: &[u8]) -> anyhow::Result<i64> {
    let parsed: CounterBody = serde_json::from_slice(body).with_context(|| {
        format!(
            "expected {{\"value\":n}}, got {:?}",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        )
    })?;
    Ok(parsed.value)
}

/// Reads counter `name` with `GET /counter/NAME` on `conn`.
pub async fn read_counter(conn: &mut Conn, name: &str) -> anyhow::Result<i64> {
    let (status, body) = conn
        .send(Method::GET, path_uri(format!("/counter/{name}"))?)
        .await
        .with_context(|| format!("GET /counter/{name}"))?;
    if status != StatusCode::OK {
        bail!("GET /counter/{name} answered {status}");
    }
    counter_value(&body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authority_from_url() {
        assert_eq!(
            authority_of("http://127.0.0.1:8787").unwrap(),
            "127.0.0.1:8787"
        );
        assert_eq!(authority_of("http://localhost:1/").unwrap(), "localhost:1");
        assert!(authority_of("https://127.0.0.1:8787").is_err());
        assert!(authority_of("127.0.0.1:8787").is_err());
        assert!(authority_of("http://127.0.0.1:8787/counter").is_err());
        assert!(authority_of("http://127.0.0.1").is_err());
        assert!(authority_of("http://").is_err());
    }

    #[test]
    fn parses_counter_bodies() {
        assert_eq!(counter_value(br#"{"value":42}"#).unwrap(), 42);
        assert_eq!(counter_value(br#"{ "value" : -3 }"#).unwrap(), -3);
        assert!(counter_value(br#"{"error":"Not found"}"#).is_err());
        assert!(counter_value(b"").is_err());
    }

    #[test]
    fn path_uri_refuses_spaces() {
        assert!(path_uri("/counter/a b".into()).is_err());
        assert_eq!(path_uri("/counter/a".into()).unwrap().path(), "/counter/a");
    }
}

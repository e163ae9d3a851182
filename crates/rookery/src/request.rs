//! The HTTP request an object's `fetch` receives.

use std::net::IpAddr;
use std::str::FromStr;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

/// A request delivered to an object: method, path and query as the object sees them, headers and
/// a fully received body.
#[derive(Debug, Clone)]
pub struct Request {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
}

impl Request {
    /// A request with `method` for `uri` (a path with an optional query, e.g. `/increment?amount=2`).
    pub fn new(method: Method, uri: &str) -> Result<Self> {
        let uri: Uri = uri
            .parse()
            .map_err(|e| Error::bad_request(format!("invalid request URI {uri:?}: {e}")))?;
        Ok(Self::from_parts(
            method,
            uri,
            HeaderMap::new(),
            Bytes::new(),
        ))
    }

    /// A GET request for `uri`.
    pub fn get(uri: &str) -> Result<Self> {
        Self::new(Method::GET, uri)
    }

    /// A POST request for `uri`.
    pub fn post(uri: &str) -> Result<Self> {
        Self::new(Method::POST, uri)
    }

    /// A request assembled from its parts.
    pub fn from_parts(method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Self {
        Self {
            method,
            uri,
            headers,
            body,
        }
    }

    /// This request with `body` as its body.
    pub fn with_body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self
    }

    /// This request with a JSON body and the matching content type.
    pub fn with_json<T: serde::Serialize + ?Sized>(mut self, value: &T) -> Result<Self> {
        self.body = Bytes::from(serde_json::to_vec(value)?);
        self.headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        Ok(self)
    }

    /// This request for another path and query (`/increment?amount=2`), as a worker hands a
    /// request on to an object.
    pub fn with_uri(mut self, uri: &str) -> Result<Self> {
        self.uri = uri
            .parse()
            .map_err(|e| Error::bad_request(format!("invalid request URI {uri:?}: {e}")))?;
        Ok(self)
    }

    /// This request with one more header.
    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.append(name, value);
        self
    }

    /// The request method.
    pub fn method(&self) -> &Method {
        &self.method
    }

    /// The full URI as the object sees it.
    pub fn uri(&self) -> &Uri {
        &self.uri
    }

    /// The path, always starting with `/`.
    pub fn path(&self) -> &str {
        match self.uri.path() {
            "" => "/",
            path => path,
        }
    }

    /// The raw query string, if any.
    pub fn query_string(&self) -> Option<&str> {
        self.uri.query()
    }

    /// The raw (still percent-encoded) value of query parameter `name`, if present.
    pub fn query_raw(&self, name: &str) -> Option<&str> {
        self.uri.query()?.split('&').find_map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (key == name).then_some(value)
        })
    }

    /// Query parameter `name`, decoded (`%XX` escapes, `+` for space), parsed as `T`;
    /// `Ok(None)` when absent, a 400 error when malformed.
    pub fn query<T: FromStr>(&self, name: &str) -> Result<Option<T>> {
        let Some(raw) = self.query_raw(name) else {
            return Ok(None);
        };
        let invalid = || Error::bad_request(format!("invalid query parameter {name:?}"));
        let decoded = percent_decode(&raw.replace('+', " ")).ok_or_else(invalid)?;
        decoded.parse().map(Some).map_err(|_| invalid())
    }

    /// The request headers.
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// A header's value as text, if present and valid.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)?.to_str().ok()
    }

    /// The client's IP address, as the gateway determined it (see [`crate::identity::CLIENT_IP`]);
    /// `None` for a request that did not come through the gateway.
    pub fn client_ip(&self) -> Option<IpAddr> {
        self.header(crate::identity::CLIENT_IP.as_str())?
            .parse()
            .ok()
    }

    /// The body bytes.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// The body decoded as JSON; malformed JSON is a 400 error.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_slice(&self.body)
            .map_err(|e| Error::bad_request(format!("invalid JSON body: {e}")))
    }

    /// Whether this request asks for a WebSocket upgrade.
    pub fn is_websocket_upgrade(&self) -> bool {
        self.headers
            .get(http::header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
    }
}

/// Decodes `%XX` escapes (a `%` not followed by two hex digits stays as it is); `None` if the
/// result is not UTF-8.
pub fn percent_decode(s: &str) -> Option<String> {
    if !s.contains('%') {
        return Some(s.to_string());
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            )
        {
            out.push((hi * 16 + lo) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Encodes `s` for a URL path segment or query value: every byte but ASCII letters, digits and
/// `-._~` as `%XX` (what [`percent_decode`] takes back).
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_encoding_escapes_all_but_unreserved_and_decodes_back() {
        let text = "room 1/ä-._~%+";
        assert_eq!(percent_encode(text), "room%201%2F%C3%A4-._~%25%2B");
        assert_eq!(percent_decode(&percent_encode(text)).as_deref(), Some(text));
    }

    #[test]
    fn query_parameters_parse_or_fail_clearly() {
        let req = Request::post("/increment?amount=5&x=&flag").unwrap();
        assert_eq!(req.path(), "/increment");
        assert_eq!(req.query::<i64>("amount").unwrap(), Some(5));
        assert_eq!(req.query::<i64>("missing").unwrap(), None);
        assert_eq!(req.query_raw("x"), Some(""));
        assert_eq!(req.query_raw("flag"), Some(""));
        assert!(matches!(req.query::<i64>("x"), Err(Error::BadRequest(_))));
        let bad = Request::post("/increment?amount=1.5").unwrap();
        assert!(matches!(
            bad.query::<i64>("amount"),
            Err(Error::BadRequest(_))
        ));
    }

    #[test]
    fn query_values_are_decoded() {
        let req = Request::get("/?name=a%20b+c&bad=%ff").unwrap();
        assert_eq!(
            req.query::<String>("name").unwrap().as_deref(),
            Some("a b c")
        );
        assert!(req.query::<String>("bad").is_err());
        assert_eq!(percent_decode("%e2%9c%93").as_deref(), Some("✓"));
        assert_eq!(percent_decode("100%").as_deref(), Some("100%"));
        assert_eq!(percent_decode("%ff"), None);
    }

    #[test]
    fn malformed_json_is_a_bad_request() {
        let req = Request::post("/").unwrap().with_body("{not json");
        let err = req.json::<serde_json::Value>().unwrap_err();
        assert_eq!(err.status(), http::StatusCode::BAD_REQUEST);
    }
}

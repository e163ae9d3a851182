//! Outbound HTTP for objects (`env.http()`): one pooled reqwest client over rustls (ring), with
//! time limits, a response size cap, a redirect limit, and internal addresses refused unless
//! `[outbound] allow` lists them.
//!
//! The address rule is applied where the connection is made, so neither a name nor a redirect
//! can get round it: names go through [`resolve::Resolver`], which hands the connector only the
//! addresses the rule permits (the connector dials exactly those, so a second lookup cannot
//! change the answer), and address literals, which the connector dials without resolving, are
//! checked before the request and again on every redirect hop. Proxies from the environment are
//! ignored: a proxy would resolve the name itself.

mod addresses;
mod resolve;

use std::error::Error as StdError;
use std::sync::{Arc, Once};
use std::time::Duration;

use bytes::BytesMut;
use futures_util::future::BoxFuture;
use http::HeaderMap;
use reqwest::redirect::{Attempt, Policy};
use reqwest::{Client, Url};
use rookery::{Error, Outbound, OutboundErrorKind, Request, Response};

pub use addresses::AllowList;
use resolve::{Refusal, Resolver};

/// How the outbound client behaves (`[outbound]` in `rookery.toml`).
#[derive(Debug, Clone)]
pub struct OutboundSettings {
    /// Internal addresses and names requests may reach.
    pub allow: AllowList,
    /// Time for a whole request, from connecting to the end of the response body.
    pub timeout: Duration,
    /// Time to establish a connection.
    pub connect_timeout: Duration,
    /// Largest response body accepted, in bytes.
    pub max_response_bytes: usize,
    /// Most redirects followed for one request.
    pub max_redirects: usize,
    /// Most idle connections kept per host for reuse.
    pub max_idle_per_host: usize,
}

impl Default for OutboundSettings {
    fn default() -> Self {
        Self {
            allow: AllowList::default(),
            timeout: Duration::from_secs(15),
            connect_timeout: Duration::from_secs(5),
            max_response_bytes: 16 * 1024 * 1024,
            max_redirects: 5,
            max_idle_per_host: 32,
        }
    }
}

/// The outbound HTTP client of a server, shared by all its objects.
#[derive(Debug, Clone)]
pub struct HttpClient {
    client: Client,
    allow: Arc<AllowList>,
    max_response_bytes: usize,
}

/// Installs ring as rustls's crypto provider once per process, unless the embedding program
/// installed one first. `HttpClient::new` calls it; any other reqwest client in a program that
/// links this crate must be built after it (reqwest is built without a provider of its own).
pub fn install_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // An error means a provider is installed already, which serves as well.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

impl HttpClient {
    /// A client with `settings`.
    pub fn new(settings: OutboundSettings) -> rookery::Result<Self> {
        install_crypto_provider();
        let allow = Arc::new(settings.allow);
        let max_redirects = settings.max_redirects;
        let redirect_rule = allow.clone();
        let client = Client::builder()
            .no_proxy()
            .dns_resolver(Arc::new(Resolver::new(allow.clone())))
            .redirect(Policy::custom(move |attempt| {
                follow(attempt, &redirect_rule, max_redirects)
            }))
            // The Referer would carry the previous URL, secrets in its query included.
            .referer(false)
            .timeout(settings.timeout)
            .connect_timeout(settings.connect_timeout)
            .pool_max_idle_per_host(settings.max_idle_per_host)
            .user_agent(concat!("rookery/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::internal("the outbound HTTP client cannot be built", e))?;
        Ok(Self {
            client,
            allow,
            max_response_bytes: settings.max_response_bytes,
        })
    }

    async fn send(&self, req: Request) -> rookery::Result<Response> {
        let url = Url::parse(&req.uri().to_string()).map_err(|e| Error::Outbound {
            kind: OutboundErrorKind::InvalidRequest,
            message: format!("not sent: the URL is not absolute ({e})"),
        })?;
        let target = target_of(&url);
        let fail = |kind, what: String| Error::Outbound {
            kind,
            message: format!("to {target} {what}"),
        };
        if let Err(refusal) = check_url(&url, &self.allow) {
            return Err(fail(refusal.kind(), format!("refused: {refusal}")));
        }
        let mut resp = self
            .client
            .request(req.method().clone(), url)
            .headers(req.headers().clone())
            .body(req.body().clone())
            .send()
            .await
            .map_err(|e| classify(e, &target))?;
        let cap = self.max_response_bytes;
        let too_large = || {
            fail(
                OutboundErrorKind::TooLarge,
                format!("failed: the response body is over the {cap}-byte limit"),
            )
        };
        if resp
            .content_length()
            .is_some_and(|n| n > u64::try_from(cap).unwrap_or(u64::MAX))
        {
            return Err(too_large());
        }
        let status = resp.status();
        let headers = end_to_end(resp.headers());
        let mut body = BytesMut::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| classify(e, &target))? {
            if body.len() + chunk.len() > cap {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        let mut out = Response::new(status, body.freeze());
        *out.headers_mut() = headers;
        Ok(out)
    }
}

impl Outbound for HttpClient {
    fn fetch(&self, request: Request) -> BoxFuture<'_, rookery::Result<Response>> {
        Box::pin(self.send(request))
    }
}

/// The headers of a response that belong to its content, not to the connection it came on (an
/// object may pass the response on as its own).
fn end_to_end(headers: &HeaderMap) -> HeaderMap {
    const HOP_BY_HOP: [&str; 9] = [
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
    ];
    let mut out = headers.clone();
    for name in HOP_BY_HOP {
        out.remove(name);
    }
    out
}

/// Scheme, host and port of `url`: what errors and logs may say of a target (its path, query
/// and credentials may hold secrets).
fn target_of(url: &Url) -> String {
    let host = url.host_str().unwrap_or("?");
    match url.port_or_known_default() {
        Some(port) => format!("{}://{host}:{port}", url.scheme()),
        None => format!("{}://{host}", url.scheme()),
    }
}

/// Whether `url` may be requested as far as can be told before resolving its name: an http or
/// https URL whose host, if an address, the rule permits.
fn check_url(url: &Url, allow: &AllowList) -> Result<(), Refusal> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(Refusal::Scheme(url.scheme().to_string()));
    }
    let Some(host) = url.host_str() else {
        return Err(Refusal::Scheme(url.scheme().to_string()));
    };
    // The URL parser has written every form of an IPv4 address (`127.1`, `0x7f000001`) out
    // in full, and IPv6 addresses in brackets.
    let Ok(ip) = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<std::net::IpAddr>()
    else {
        return Ok(());
    };
    if allow.permits(None, ip) {
        Ok(())
    } else {
        Err(Refusal::Address {
            address: ip,
            why: addresses::internal(ip).unwrap_or("internal"),
        })
    }
}

/// The redirect rule: at most `max` hops, each to a URL that [`check_url`] accepts.
fn follow(attempt: Attempt<'_>, allow: &AllowList, max: usize) -> reqwest::redirect::Action {
    if attempt.previous().len() > max {
        return attempt.error(Refusal::TooManyRedirects(max));
    }
    match check_url(attempt.url(), allow) {
        Ok(()) => attempt.follow(),
        Err(refusal) => attempt.error(refusal),
    }
}

/// An outbound error for a failed reqwest call to `target`.
fn classify(e: reqwest::Error, target: &str) -> Error {
    // reqwest's own text names the whole URL; only the target may be told.
    let e = e.without_url();
    let (kind, what) = match find::<Refusal>(&e) {
        Some(refusal) => (refusal.kind(), format!("refused: {refusal}")),
        None if e.is_timeout() => (OutboundErrorKind::Timeout, "timed out".to_string()),
        None if e.is_builder() => (
            OutboundErrorKind::InvalidRequest,
            format!("not sent: {}", chain(&e)),
        ),
        None => (OutboundErrorKind::Connect, format!("failed: {}", chain(&e))),
    };
    Error::Outbound {
        kind,
        message: format!("to {target} {what}"),
    }
}

/// The first error of type `T` in `e`'s chain of causes.
fn find<'a, T: StdError + 'static>(e: &'a (dyn StdError + 'static)) -> Option<&'a T> {
    let mut next = Some(e);
    while let Some(err) = next {
        if let Some(found) = err.downcast_ref::<T>() {
            return Some(found);
        }
        next = err.source();
    }
    None
}

/// An error and its causes, `outer: inner`, each said once.
fn chain(e: &(dyn StdError + 'static)) -> String {
    let mut text = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        next = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_name_no_path_query_or_credentials() {
        let url = Url::parse("https://user:pw@hooks.example.com/t/secret?token=abc").unwrap();
        assert_eq!(target_of(&url), "https://hooks.example.com:443");
    }

    #[test]
    fn address_literals_are_checked_before_sending() {
        let none = AllowList::default();
        for url in [
            "http://127.0.0.1/",
            "http://127.1/",
            "http://0x7f000001/",
            "http://0.0.0.0:8080/",
            "http://[::1]/",
            "http://[::ffff:127.0.0.1]/",
            "http://[fe80::1]/",
            "http://169.254.169.254/latest/meta-data",
        ] {
            let url = Url::parse(url).unwrap();
            assert!(check_url(&url, &none).is_err(), "{url}");
        }
        assert!(check_url(&Url::parse("http://93.184.216.34/").unwrap(), &none).is_ok());
        assert!(check_url(&Url::parse("http://example.com/").unwrap(), &none).is_ok());
        assert!(check_url(&Url::parse("ftp://example.com/").unwrap(), &none).is_err());
        assert!(check_url(&Url::parse("file:///etc/passwd").unwrap(), &none).is_err());
    }
}

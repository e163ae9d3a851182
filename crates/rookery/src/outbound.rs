//! Outbound HTTP: the narrow trait through which objects reach other servers.
//!
//! The runtime does not depend on an HTTP client. Whoever builds it injects an [`Outbound`]
//! (`RuntimeBuilder::outbound`): the server's is `rookery_server::outbound::HttpClient`, and
//! tests can inject their own. The implementation owns the policy (time limits, a response size
//! cap, a redirect limit, refusing internal addresses unless allowed); `Env::http` adds the
//! output gate in front of it.

use futures_util::future::BoxFuture;

use crate::error::{Error, OutboundErrorKind, Result};
use crate::request::Request;
use crate::response::Response;

/// Sends HTTP requests to other servers on behalf of objects.
pub trait Outbound: Send + Sync + 'static {
    /// Sends `request` (its URI an absolute `http` or `https` URL) and returns the whole
    /// response. Failures are `Error::Outbound`, whose message must not carry the URL's path,
    /// query or the request's headers (they may hold secrets).
    fn fetch(&self, request: Request) -> BoxFuture<'_, Result<Response>>;
}

/// The client of a runtime built without one: every request fails.
pub(crate) struct NotConfigured;

impl Outbound for NotConfigured {
    fn fetch(&self, _request: Request) -> BoxFuture<'_, Result<Response>> {
        Box::pin(async {
            Err(Error::Outbound {
                kind: OutboundErrorKind::NotConfigured,
                message: "not sent: this runtime has no outbound HTTP client".into(),
            })
        })
    }
}

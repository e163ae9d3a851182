//! Name resolution for outbound requests: the system resolver, with every address the allow
//! rule refuses taken out before the connector sees the list.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use rookery::OutboundErrorKind;

use super::addresses::{self, AllowList};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why an outbound request was refused before it reached anyone.
#[derive(Debug, thiserror::Error)]
pub(super) enum Refusal {
    /// The target is an internal address.
    #[error("{address} is {why}, which [outbound] allow does not list")]
    Address { address: IpAddr, why: &'static str },
    /// The target's name resolves only to internal addresses.
    #[error(
        "{host} resolves only to internal addresses ({addresses}), which [outbound] allow does not list"
    )]
    Resolved { host: String, addresses: String },
    /// A redirect past the limit.
    #[error("more than {0} redirects")]
    TooManyRedirects(usize),
    /// Not an http or https URL.
    #[error("{0:?} is not http or https")]
    Scheme(String),
}

impl Refusal {
    /// The kind of outbound error this refusal is.
    pub(super) fn kind(&self) -> OutboundErrorKind {
        match self {
            Refusal::Address { .. } | Refusal::Resolved { .. } => OutboundErrorKind::Refused,
            Refusal::TooManyRedirects(_) => OutboundErrorKind::TooManyRedirects,
            Refusal::Scheme(_) => OutboundErrorKind::InvalidRequest,
        }
    }
}

/// Resolves names with the system resolver and keeps only the addresses the rule permits.
pub(super) struct Resolver {
    allow: Arc<AllowList>,
}

impl Resolver {
    pub(super) fn new(allow: Arc<AllowList>) -> Self {
        Self { allow }
    }
}

impl Resolve for Resolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow = self.allow.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let (permitted, refused): (Vec<SocketAddr>, Vec<SocketAddr>) = found
                .into_iter()
                .partition(|a| allow.permits(Some(&host), a.ip()));
            if permitted.is_empty() && !refused.is_empty() {
                let addresses = refused
                    .iter()
                    .map(|a| {
                        let why = addresses::internal(a.ip()).unwrap_or("internal");
                        format!("{} {why}", a.ip())
                    })
                    .collect::<Vec<_>>()
                    .join(", ");
                let refusal: BoxError = Box::new(Refusal::Resolved { host, addresses });
                return Err(refusal);
            }
            Ok::<Addrs, BoxError>(Box::new(permitted.into_iter()))
        })
    }
}

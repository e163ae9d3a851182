//! What an object can reach besides its own state: the namespaces bound in the configuration,
//! vars and secrets, outbound HTTP and buckets.

use std::sync::Arc;

use crate::bucket::Bucket;
use crate::error::{Error, Result};
use crate::host::{Host, turn};
use crate::outbound::Outbound;
use crate::request::Request;
use crate::response::Response;
use crate::stub::Namespace;
use crate::vars::Secret;

/// The bindings an object can reach: namespaces of other classes by binding name, vars and
/// secrets, and outbound HTTP.
#[derive(Clone)]
pub struct Env {
    host: Host,
}

impl Env {
    pub(crate) fn new(host: Host) -> Self {
        Self { host }
    }

    /// The namespace bound under `binding`.
    pub fn namespace(&self, binding: &str) -> Result<Namespace> {
        Namespace::bound(&self.host, binding)
    }

    /// The var called `name` (`[vars]` in `rookery.toml`).
    pub fn var(&self, name: &str) -> Option<&str> {
        self.host.reach().vars.var(name)
    }

    /// The secret called `name` (from the environment or the secrets file).
    pub fn secret(&self, name: &str) -> Option<Secret> {
        self.host.reach().vars.secret(name).cloned()
    }

    /// The bucket bound under `binding` (`[[r2_buckets]]` in `rookery.toml`).
    pub fn bucket(&self, binding: &str) -> Result<Bucket> {
        self.host
            .reach()
            .buckets
            .get(binding)
            .ok_or_else(|| Error::UnknownBucket(binding.to_string()))
    }

    /// The outbound HTTP client.
    pub fn http(&self) -> Http {
        Http {
            client: self.host.reach().outbound.clone(),
        }
    }
}

/// Outbound HTTP, under the runtime's limits and address rules (`[outbound]`).
#[derive(Clone)]
pub struct Http {
    client: Arc<dyn Outbound>,
}

impl std::fmt::Debug for Http {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Http")
    }
}

impl Http {
    /// Sends `req`, whose URI is an absolute `http` or `https` URL, and returns the whole
    /// response (any status; failures to get one are `Error::Outbound`).
    ///
    /// A request is an output. Made inside a turn, it first commits the turn's writes so far
    /// and waits until they are durable, as `storage.sync()` does, so the other server never
    /// hears of a write that could still be lost; those writes then stay even if the turn
    /// fails later. Outside a turn (in `wait_until` work) it leaves at once.
    pub async fn fetch(&self, req: Request) -> Result<Response> {
        let object = turn::with_current(|ctx| ctx.state().clone());
        if let Some(object) = object {
            object.storage().sync().await?;
        }
        self.client.fetch(req).await
    }
}

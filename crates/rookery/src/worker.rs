//! The worker: code in front of the objects, as a Cloudflare Worker is.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::env::Env;
use crate::error::Result;
use crate::request::Request;
use crate::response::Response;

/// Code that sees requests before any object does: the requests no `[[routes]]` entry takes,
/// and those a route gives to it (`worker = true`). It can check a token, pick an object by
/// hashing a key, ask several objects, answer itself, or hand the request on with
/// `env.namespace(..)?.get_by_name(..).fetch(req)`: a WebSocket upgrade too, since the object's
/// 101 answer, returned from here, is what the gateway completes the handshake for.
///
/// A worker has no state of its own and runs concurrently for many requests; what must be
/// consistent lives in objects.
pub trait Worker: Send + Sync + 'static {
    /// Handles one request. The path and query are the client's; the identity headers
    /// (`rookery::identity`) are the gateway's, as is `x-rookery-client-ip`.
    fn fetch(&self, req: Request, env: &Env) -> impl Future<Output = Result<Response>> + Send;
}

/// The future of one erased worker call.
type WorkerFuture<'a> = Pin<Box<dyn Future<Output = Result<Response>> + Send + 'a>>;

/// [`Worker`] with its future boxed, so that workers of any type can sit behind one pointer.
trait DynWorker: Send + Sync + 'static {
    fn fetch<'a>(&'a self, req: Request, env: &'a Env) -> WorkerFuture<'a>;
}

impl<W: Worker> DynWorker for W {
    fn fetch<'a>(&'a self, req: Request, env: &'a Env) -> WorkerFuture<'a> {
        Box::pin(Worker::fetch(self, req, env))
    }
}

/// A worker of any type, as the gateway holds it; cheap to clone.
#[derive(Clone)]
pub struct SharedWorker(Arc<dyn DynWorker>);

impl std::fmt::Debug for SharedWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedWorker")
    }
}

impl SharedWorker {
    /// Shares `worker`.
    pub fn new(worker: impl Worker) -> Self {
        Self(Arc::new(worker))
    }

    /// Hands `req` to the worker.
    pub async fn fetch(&self, req: Request, env: &Env) -> Result<Response> {
        self.0.fetch(req, env).await
    }
}

//! An outbound HTTP endpoint for the objects' tests: keeps the JSON bodies posted to it (with
//! their `Idempotency-Key`), or answers 503 while told to fail.

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use rookery::prelude::*;
use rookery::{Outbound, StatusCode};
use serde_json::Value;

/// A recording endpoint at one URL.
pub(crate) struct Endpoint {
    url: &'static str,
    posts: Mutex<Vec<(Value, String)>>,
    failing: AtomicBool,
}

impl Endpoint {
    /// An endpoint that expects every request at `url`.
    pub(crate) fn new(url: &'static str) -> Self {
        Self {
            url,
            posts: Mutex::new(Vec::new()),
            failing: AtomicBool::new(false),
        }
    }

    /// While `failing`, every request gets 503 and is not kept.
    pub(crate) fn fail(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }

    /// The bodies taken so far, in order.
    pub(crate) fn bodies(&self) -> Vec<Value> {
        self.posts
            .lock()
            .unwrap()
            .iter()
            .map(|(b, _)| b.clone())
            .collect()
    }

    /// The `Idempotency-Key` of the `i`th body taken (empty without one).
    pub(crate) fn key(&self, i: usize) -> String {
        self.posts.lock().unwrap()[i].1.clone()
    }
}

impl Outbound for Endpoint {
    fn fetch(
        &self,
        request: Request,
    ) -> Pin<Box<dyn Future<Output = Result<Response>> + Send + '_>> {
        Box::pin(async move {
            if self.failing.load(Ordering::SeqCst) {
                return Ok(Response::error(StatusCode::SERVICE_UNAVAILABLE, "down"));
            }
            assert_eq!(request.uri().to_string(), self.url);
            let key = request
                .header("idempotency-key")
                .unwrap_or_default()
                .to_string();
            let body: Value = request.json()?;
            self.posts.lock().unwrap().push((body, key));
            Ok(Response::text("ok"))
        })
    }
}

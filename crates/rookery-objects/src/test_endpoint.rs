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

/// One request a [`Receivers`] took, whether it acknowledged it or not.
#[derive(Debug, Clone)]
pub(crate) struct Taken {
    /// The request's URL.
    pub(crate) url: String,
    /// Its JSON body.
    pub(crate) body: Value,
    /// Its `Idempotency-Key` (empty without one).
    pub(crate) key: String,
    /// The status it was answered with.
    pub(crate) status: u16,
}

/// Recording receivers at any number of URLs, each of which can be told to answer with an
/// error status.
#[derive(Default)]
pub(crate) struct Receivers {
    taken: Mutex<Vec<Taken>>,
    failing: Mutex<std::collections::HashMap<String, u16>>,
}

impl Receivers {
    /// Makes `url` answer `status` (`None`: 200 again).
    pub(crate) fn fail(&self, url: &str, status: Option<u16>) {
        let mut failing = self.failing.lock().unwrap();
        match status {
            Some(s) => failing.insert(url.to_string(), s),
            None => failing.remove(url),
        };
    }

    /// Every request taken, in order.
    pub(crate) fn taken(&self) -> Vec<Taken> {
        self.taken.lock().unwrap().clone()
    }

    /// The bodies `url` acknowledged (2xx), in order.
    pub(crate) fn acknowledged(&self, url: &str) -> Vec<Value> {
        self.taken()
            .into_iter()
            .filter(|t| t.url == url && t.status < 300)
            .map(|t| t.body)
            .collect()
    }

    /// The requests `url` took, acknowledged or not.
    pub(crate) fn attempts(&self, url: &str) -> Vec<Taken> {
        self.taken().into_iter().filter(|t| t.url == url).collect()
    }
}

impl Outbound for Receivers {
    fn fetch(
        &self,
        request: Request,
    ) -> Pin<Box<dyn Future<Output = Result<Response>> + Send + '_>> {
        Box::pin(async move {
            let url = request.uri().to_string();
            let status = self
                .failing
                .lock()
                .unwrap()
                .get(&url)
                .copied()
                .unwrap_or(200);
            let key = request
                .header("idempotency-key")
                .unwrap_or_default()
                .to_string();
            let body: Value = request.json()?;
            self.taken.lock().unwrap().push(Taken {
                url,
                body,
                key,
                status,
            });
            let status = StatusCode::from_u16(status).map_err(Error::msg)?;
            Ok(Response::text("ok").with_status(status))
        })
    }
}

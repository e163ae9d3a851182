//! The demo app's worker: seed 001's `/api/*` middleware. `GET /api/...` passes once the
//! client's rate limiter (a typed call, [`Limiter::check`](crate::Limiter::check)) admits it, 100 requests per minute
//! per client IP; it answers `{"ok":true}` with `X-RateLimit-Remaining`, or 429
//! `{"error":"Rate limited"}`. Everything else no route takes is 404, as in the seed.

use rookery::identity::client_key;
use rookery::prelude::*;
use rookery::{Bytes, HeaderName, HeaderValue};

use crate::rate_limiter::LimiterStub;

/// Requests per window the API admits per client, and the window, as in the seed.
const API_LIMIT: u32 = 100;
const API_WINDOW_MS: u64 = 60_000;
const RATE_LIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");

/// The demo app's worker (`[worker] name = "Demo"`); needs a `RATE_LIMITER` binding of the
/// `RateLimiter` class.
#[derive(Debug, Default, Clone, Copy)]
pub struct DemoWorker;

impl Worker for DemoWorker {
    async fn fetch(&self, req: Request, env: &Env) -> Result<Response> {
        let path = req.path();
        let api = path == "/api" || path.starts_with("/api/");
        if !api || req.method() != Method::GET {
            return Ok(Response::not_found());
        }
        // The gateway always sets the client's address; without it, all share one budget.
        let client = req
            .client_ip()
            .map_or_else(|| "unknown".to_string(), client_key);
        let limiter = env
            .namespace("RATE_LIMITER")?
            .typed::<LimiterStub>()
            .get_by_name(&client);
        let verdict = limiter.check(API_LIMIT, API_WINDOW_MS).await?;
        if !verdict.allowed {
            return Ok(Response::error(
                StatusCode::TOO_MANY_REQUESTS,
                "Rate limited",
            ));
        }
        Ok(Response::json_bytes(Bytes::from_static(b"{\"ok\":true}"))
            .with_header(RATE_LIMIT_REMAINING, HeaderValue::from(verdict.remaining)))
    }
}

//! The events platform's worker (`[worker] name = "Events"`): what stands in front of a
//! namespace's objects on `POST /events/:namespace`, as seed 003's Worker does.
//!
//! 1. **Rate limit per tenant** (seed 003 item 4): the tenant is the caller's API key
//!    (`X-API-Key`, by its SHA-256, never in clear), else its verified user id, else its
//!    address. Each tenant has an `AdvancedRateLimiter` object (`events:<tenant>`, bound as
//!    `EVENTS_LIMITER`) that admits `EVENTS_RATE_LIMIT` events per sliding
//!    `EVENTS_RATE_WINDOW_MS`; beyond that the answer is 429 with `Retry-After`.
//! 2. **Validate** the event's `data` against its type's latest schema (the namespace's
//!    `SchemaRegistry`, bound as `SCHEMAS`): a 400 lists every violation.
//! 3. **Publish**: the namespace's `Subscriptions` object (bound as `EVENTS`) stamps, stores and
//!    enqueues the event, and answers once it is durable.
//!
//! `GET /events/:namespace/status` shows what is going on (subscriptions, backlog, dead
//! letters, schemas): JSON, or a small HTML page for a browser.
//!
//! The limiter and the registry are optional: without an `EVENTS_LIMITER` or `SCHEMAS`
//! binding that step is skipped, so a minimal config needs only `EVENTS`.

use std::sync::OnceLock;

use rookery::identity::client_key;
use rookery::prelude::*;
use rookery::{HeaderName, HeaderValue};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

pub use super::bindings::{EVENTS_BINDING, LIMITER_BINDING, SCHEMAS_BINDING};
use super::pattern::MAX_TYPE_BYTES;
use super::schemas::SchemaCheckStub;
use super::status_page;
use crate::advanced_rate_limiter::RateLimitsStub;
use crate::config_var::var;
use crate::input::json_error;
use crate::names::check_name;

const API_KEY: HeaderName = HeaderName::from_static("x-api-key");

/// The worker's settings, read from `[vars]` on its first request.
#[derive(Debug, Clone, Copy)]
struct Settings {
    /// Events a tenant may publish per window (`EVENTS_RATE_LIMIT`, 1 000; 0 turns the limit
    /// off).
    rate_limit: u64,
    /// The sliding window (`EVENTS_RATE_WINDOW_MS`, 1 000).
    rate_window_ms: u64,
    /// Largest publish body (`EVENTS_MAX_EVENT_BYTES`, as the `Subscriptions` object reads it).
    max_event_bytes: usize,
}

/// The events platform's worker.
#[derive(Debug, Default)]
pub struct EventsWorker {
    settings: OnceLock<Settings>,
}

impl EventsWorker {
    fn settings(&self, env: &Env) -> Settings {
        *self.settings.get_or_init(|| Settings {
            rate_limit: var(env, "EVENTS_RATE_LIMIT", 1_000, 0, 10_000_000),
            rate_window_ms: var(env, "EVENTS_RATE_WINDOW_MS", 1_000, 1, 86_400_000),
            max_event_bytes: super::settings::Settings::from_env(env).max_event_bytes,
        })
    }
}

/// Who is publishing, for the rate limit: `key:<sha-256 of the API key>`, `user:<id>`,
/// `ip:<address>` or `anonymous`.
pub fn tenant_of(req: &Request) -> String {
    if let Some(key) = req.headers().get(API_KEY) {
        let digest = Sha256::digest(key.as_bytes());
        return format!("key:{}", hex::encode(&digest[..16]));
    }
    if let Some(user) = req.header(rookery::identity::USER_ID.as_str()) {
        return format!("user:{user}");
    }
    match req.client_ip() {
        Some(ip) => format!("ip:{}", client_key(ip)),
        None => "anonymous".to_string(),
    }
}

impl Worker for EventsWorker {
    async fn fetch(&self, req: Request, env: &Env) -> Result<Response> {
        let path = req.path().trim_end_matches('/').to_string();
        let Some(rest) = path.strip_prefix("/events/") else {
            return Ok(Response::not_found());
        };
        let (namespace, tail) = rest.split_once('/').unwrap_or((rest, ""));
        if let Err(why) = check_name(namespace) {
            return Ok(json_error(
                StatusCode::BAD_REQUEST,
                &json!({ "error": format!("namespace: {why}") }),
            ));
        }
        match (tail, req.method()) {
            ("", m) if *m == Method::POST => self.publish(req, env, namespace).await,
            ("status", m) if *m == Method::GET => status_page::status(&req, env, namespace).await,
            ("" | "status", _) => Ok(Response::error(
                StatusCode::METHOD_NOT_ALLOWED,
                "POST /events/:namespace publishes; GET /events/:namespace/status shows",
            )),
            _ => Ok(Response::not_found()),
        }
    }
}

impl EventsWorker {
    async fn publish(&self, req: Request, env: &Env, namespace: &str) -> Result<Response> {
        let settings = self.settings(env);
        if settings.rate_limit > 0
            && let Ok(limiters) = env.namespace(LIMITER_BINDING)
        {
            let tenant = tenant_of(&req);
            let limiter = limiters
                .typed::<RateLimitsStub>()
                .get_by_name(&format!("events:{tenant}"));
            let verdict = limiter
                .sliding_window(
                    "publish".to_string(),
                    settings.rate_limit,
                    settings.rate_window_ms,
                )
                .await?;
            if !verdict.allowed {
                let wait_ms = u64::try_from(verdict.retry_after.max(1)).unwrap_or(1);
                return Ok(json_error(
                    StatusCode::TOO_MANY_REQUESTS,
                    &json!({
                        "error": "rate limited",
                        "tenant": tenant,
                        "limit": settings.rate_limit,
                        "windowMs": settings.rate_window_ms,
                        "retryAfterMs": wait_ms,
                    }),
                )
                .with_header(
                    HeaderName::from_static("retry-after"),
                    HeaderValue::from(wait_ms.div_ceil(1000)),
                ));
            }
        }
        // An oversized or malformed body goes on unvalidated: the Subscriptions object
        // refuses it with the same answers as without a worker.
        if req.body().len() <= settings.max_event_bytes
            && let Ok(schemas) = env.namespace(SCHEMAS_BINDING)
            && let Some((event_type, data)) = type_and_data(req.body())
        {
            let registry = schemas.typed::<SchemaCheckStub>().get_by_name(namespace);
            let verdict = registry.validate(event_type.clone(), data).await?;
            if !verdict.valid {
                let error = match verdict.version {
                    Some(v) => {
                        format!(
                            "the event's data does not match the schema of {event_type} (version {v})"
                        )
                    }
                    None => format!("event type {event_type} has no schema"),
                };
                return Ok(json_error(
                    StatusCode::BAD_REQUEST,
                    &json!({
                        "error": error,
                        "type": event_type,
                        "version": verdict.version,
                        "violations": verdict.violations,
                    }),
                ));
            }
        }
        let events = env.namespace(EVENTS_BINDING)?.get_by_name(namespace);
        events.fetch(req.with_uri("/events")?).await
    }
}

/// The event's `type` and its `data` as JSON text (`null` when absent), if the body is an
/// object with a string `type` of a sane length.
fn type_and_data(body: &[u8]) -> Option<(String, String)> {
    let Ok(Value::Object(mut map)) = serde_json::from_slice::<Value>(body) else {
        return None;
    };
    let event_type = match map.remove("type") {
        Some(Value::String(t)) if t.len() <= MAX_TYPE_BYTES => t,
        _ => return None,
    };
    let data = map.remove("data").unwrap_or(Value::Null);
    Some((event_type, data.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenants_by_key_then_user_then_address() {
        let keyed = Request::post("/events/shop")
            .unwrap()
            .with_header(API_KEY, HeaderValue::from_static("secret-1"))
            .with_header(
                rookery::identity::USER_ID,
                HeaderValue::from_static("alice"),
            );
        let t = tenant_of(&keyed);
        assert!(t.starts_with("key:") && t.len() == 4 + 32, "{t}");
        assert!(
            !t.contains("secret"),
            "the key must not appear in clear: {t}"
        );
        let user = Request::post("/events/shop").unwrap().with_header(
            rookery::identity::USER_ID,
            HeaderValue::from_static("alice"),
        );
        assert_eq!(tenant_of(&user), "user:alice");
        let ip = Request::post("/events/shop").unwrap().with_header(
            rookery::identity::CLIENT_IP,
            HeaderValue::from_static("10.1.2.3"),
        );
        assert_eq!(tenant_of(&ip), "ip:10.1.2.3");
        assert_eq!(tenant_of(&Request::post("/e").unwrap()), "anonymous");
    }

    #[test]
    fn type_and_data_of_a_body() {
        assert_eq!(
            type_and_data(br#"{"type":"a.b","data":{"x":1}}"#),
            Some(("a.b".into(), r#"{"x":1}"#.into()))
        );
        assert_eq!(
            type_and_data(br#"{"type":"a.b"}"#),
            Some(("a.b".into(), "null".into()))
        );
        assert_eq!(type_and_data(br#"{"type":1}"#), None);
        assert_eq!(type_and_data(b"[1]"), None);
        assert_eq!(type_and_data(b"{"), None);
    }
}

//! A durable counter: `GET /` reads it, `POST /increment`, `/decrement` and `/reset` change it.

use rookery::prelude::*;
use serde_json::json;

/// A named integer that survives restarts.
pub struct Counter {
    state: ObjectState,
    /// The value as last committed; loaded on the first request.
    value: Option<i64>,
}

impl Counter {
    fn value(&mut self) -> Result<i64> {
        match self.value {
            Some(v) => Ok(v),
            None => {
                let v = self.state.storage().get("value")?.unwrap_or(0);
                self.value = Some(v);
                Ok(v)
            }
        }
    }

    fn set(&mut self, value: i64) -> Result<Response> {
        self.state.storage().put("value", &value)?;
        self.value = Some(value);
        Response::json(&json!({ "value": value }))
    }
}

/// The `amount` query parameter: an integer, 1 when absent.
fn amount(req: &Request) -> Option<i64> {
    match req.query_raw("amount") {
        None => Some(1),
        Some(raw) => raw.parse().ok(),
    }
}

fn invalid_amount() -> Response {
    Response::error(StatusCode::BAD_REQUEST, "Invalid amount")
}

impl DurableObject for Counter {
    fn new(state: ObjectState, _env: Env) -> Self {
        Self { state, value: None }
    }

    async fn fetch(&mut self, req: Request) -> Result<Response> {
        let path = req.path().trim_end_matches('/');
        match (req.method(), path) {
            (&Method::GET, "") => {
                let value = self.value()?;
                Response::json(&json!({ "value": value }))
            }
            (&Method::POST, "/increment" | "/decrement") => {
                let Some(amount) = amount(&req) else {
                    return Ok(invalid_amount());
                };
                let value = self.value()?;
                let next = if path == "/increment" {
                    value.checked_add(amount)
                } else {
                    value.checked_sub(amount)
                };
                match next {
                    Some(next) => self.set(next),
                    None => Ok(Response::error(
                        StatusCode::BAD_REQUEST,
                        "Invalid amount: the counter would overflow",
                    )),
                }
            }
            (&Method::POST, "/reset") => self.set(0),
            _ => Ok(Response::not_found()),
        }
    }
}

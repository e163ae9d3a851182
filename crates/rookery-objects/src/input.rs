//! Reading the JSON bodies of the pattern classes' HTTP forms, with errors that name the field:
//! a missing or wrong field is a 400 `{"error": "...", "field": "<name>"}`.

use rookery::prelude::*;
use serde_json::{Map, Value, json};

/// Why a request's input was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    /// The body is not a JSON object.
    #[error("the body must be a JSON object: {0}")]
    Body(String),
    /// A required field is absent (or null).
    #[error("missing field \"{0}\"")]
    Missing(&'static str),
    /// A field has the wrong type or is out of range.
    #[error("field \"{field}\" {expected}")]
    Invalid {
        /// The field's name.
        field: &'static str,
        /// What it should have been.
        expected: String,
    },
}

impl InputError {
    /// The field the error is about, if any.
    pub fn field(&self) -> Option<&'static str> {
        match self {
            Self::Body(_) => None,
            Self::Missing(field) | Self::Invalid { field, .. } => Some(field),
        }
    }

    /// The 400 answer: `{"error": message, "field": name}`.
    pub fn response(&self) -> Response {
        let body = match self.field() {
            Some(field) => json!({ "error": self.to_string(), "field": field }),
            None => json!({ "error": self.to_string() }),
        };
        json_error(StatusCode::BAD_REQUEST, &body)
    }

    /// A field that is out of range.
    pub fn invalid(field: &'static str, expected: impl Into<String>) -> Self {
        Self::Invalid {
            field,
            expected: expected.into(),
        }
    }
}

impl From<InputError> for Error {
    fn from(e: InputError) -> Self {
        Error::bad_request(e)
    }
}

/// A request's JSON object body.
pub struct Body(Map<String, Value>);

impl Body {
    /// Parses `req`'s body as a JSON object.
    pub fn parse(req: &Request) -> Result<Self, InputError> {
        match serde_json::from_slice::<Value>(req.body()) {
            Ok(Value::Object(map)) => Ok(Self(map)),
            Ok(_) => Err(InputError::Body("not an object".into())),
            Err(e) => Err(InputError::Body(e.to_string())),
        }
    }

    /// A JSON value that must be an object.
    pub fn from_value(value: Value) -> Result<Self, InputError> {
        match value {
            Value::Object(map) => Ok(Self(map)),
            _ => Err(InputError::Body("not an object".into())),
        }
    }

    /// A required finite number.
    pub fn number(&self, field: &'static str) -> Result<f64, InputError> {
        let value = self.present(field).ok_or(InputError::Missing(field))?;
        value
            .as_f64()
            .filter(|n| n.is_finite())
            .ok_or_else(|| InputError::invalid(field, "must be a finite number"))
    }

    fn present(&self, field: &'static str) -> Option<&Value> {
        self.0.get(field).filter(|v| !v.is_null())
    }

    /// A required non-empty string of at most `max` bytes.
    pub fn string(&self, field: &'static str, max: usize) -> Result<String, InputError> {
        match self.present(field) {
            None => Err(InputError::Missing(field)),
            Some(Value::String(s)) if !s.is_empty() && s.len() <= max => Ok(s.clone()),
            Some(_) => Err(InputError::invalid(
                field,
                format!("must be a non-empty string of at most {max} bytes"),
            )),
        }
    }

    /// A required integer from `min` to `max`.
    pub fn integer(&self, field: &'static str, min: u64, max: u64) -> Result<u64, InputError> {
        let value = self.present(field).ok_or(InputError::Missing(field))?;
        value
            .as_u64()
            .filter(|n| (min..=max).contains(n))
            .ok_or_else(|| {
                InputError::invalid(field, format!("must be an integer from {min} to {max}"))
            })
    }

    /// A required finite number greater than 0 and at most `max`.
    pub fn positive(&self, field: &'static str, max: f64) -> Result<f64, InputError> {
        let value = self.present(field).ok_or(InputError::Missing(field))?;
        value
            .as_f64()
            .filter(|n| n.is_finite() && *n > 0.0 && *n <= max)
            .ok_or_else(|| {
                InputError::invalid(field, format!("must be a number above 0 and at most {max}"))
            })
    }

    /// An optional field: `None` when absent or null.
    pub fn has(&self, field: &'static str) -> bool {
        self.present(field).is_some()
    }
}

/// The seed's `error(message, status)`: a JSON `{"error": message}` with `status`.
pub fn error(status: StatusCode, message: &str) -> Response {
    Response::error(status, message)
}

/// `body` as a JSON answer with `status`: for errors that carry more than a message.
pub fn json_error(status: StatusCode, body: &Value) -> Response {
    Response::json_bytes(body.to_string()).with_status(status)
}

/// 405 for a path that exists but not with this method.
pub fn method_not_allowed(allow: &'static str) -> Response {
    Response::error(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed").with_header(
        rookery::HeaderName::from_static("allow"),
        rookery::HeaderValue::from_static(allow),
    )
}

/// The seed's `error('Not found', 404)`.
pub fn not_found() -> Response {
    Response::error(StatusCode::NOT_FOUND, "Not found")
}

//! Configuration values objects read through `Env`: plain vars (`[vars]` in `rookery.toml`) and
//! secrets, whose values never show in logs, errors or debug output.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use http::HeaderValue;

use crate::error::{Error, Result};

/// A secret value (an API key, a signing key). Its `Debug` and `Display` print `[redacted]`,
/// and it cannot be serialized, so logging or returning it by mistake shows nothing; read the
/// value with [`Secret::expose`] where it is needed.
#[derive(Clone)]
pub struct Secret(Arc<str>);

impl Secret {
    /// A secret holding `value`.
    pub fn new(value: impl Into<String>) -> Self {
        Self(Arc::from(value.into()))
    }

    /// The secret's value. Keep it out of logs and responses.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether `candidate` equals the secret, in time that does not depend on where they
    /// differ (for checking presented tokens).
    pub fn matches(&self, candidate: &str) -> bool {
        let (a, b) = (self.0.as_bytes(), candidate.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }

    /// The secret as a header value marked sensitive, so `http`'s debug output hides it too
    /// (e.g. `Authorization` on an outbound request).
    pub fn header_value(&self) -> Result<HeaderValue> {
        let mut value = HeaderValue::from_str(&self.0)
            .map_err(|_| Error::bad_request("the secret is not a valid header value"))?;
        value.set_sensitive(true);
        Ok(value)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// The vars and secrets of a runtime, by name.
#[derive(Clone, Default)]
pub struct Vars {
    vars: BTreeMap<String, String>,
    secrets: BTreeMap<String, Secret>,
}

impl fmt::Debug for Vars {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vars")
            .field("vars", &self.vars)
            .field("secrets", &self.secrets.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Vars {
    /// No vars, no secrets.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets var `name` to `value`.
    pub fn set_var(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.vars.insert(name.into(), value.into());
    }

    /// Sets secret `name`.
    pub fn set_secret(&mut self, name: impl Into<String>, value: Secret) {
        self.secrets.insert(name.into(), value);
    }

    /// The var called `name`.
    pub fn var(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str)
    }

    /// The secret called `name`.
    pub fn secret(&self, name: &str) -> Option<&Secret> {
        self.secrets.get(name)
    }

    /// The names of the vars, sorted.
    pub fn var_names(&self) -> impl Iterator<Item = &str> {
        self.vars.keys().map(String::as_str)
    }

    /// The names of the secrets, sorted.
    pub fn secret_names(&self) -> impl Iterator<Item = &str> {
        self.secrets.keys().map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s}"), "[redacted]");
        assert_eq!(format!("{s:?}"), "Secret([redacted])");
        let mut vars = Vars::new();
        vars.set_var("MODE", "prod");
        vars.set_secret("TOKEN", s.clone());
        let shown = format!("{vars:?}");
        assert!(shown.contains("TOKEN") && shown.contains("prod"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(format!("{:?}", s.header_value().unwrap()).contains("Sensitive"));
        assert!(s.matches("hunter2") && !s.matches("hunter3") && !s.matches("hunter"));
        assert_eq!(vars.secret("TOKEN").map(Secret::expose), Some("hunter2"));
    }
}

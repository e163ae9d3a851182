//! Who the caller is: verified at the gateway and passed to objects in headers they can trust.
//!
//! The gateway removes any `x-rookery-user-*` / `x-rookery-permissions` headers the client sent,
//! then sets them from a credential: a configured bearer token or a JWT (`[auth.jwt]`), from
//! `Authorization: Bearer` or, for browsers (which cannot set headers on a WebSocket), offered
//! as a WebSocket subprotocol; or, with `query_identity` (for demos), from the query parameters
//! `user`, `name` and `permissions`. A credential that does not verify is refused.

use std::collections::HashMap;

use http::{HeaderMap, HeaderName, HeaderValue};
use rookery::Request;
pub use rookery::identity::{PERMISSIONS, USER_ID, USER_NAME};

use crate::config::{AuthConfig, Identity};
use crate::jwt::{JwtConfigError, JwtVerifier};

/// Verifies callers.
#[derive(Debug, Default)]
pub(crate) struct Authenticator {
    query_identity: bool,
    tokens: HashMap<String, Identity>,
    jwt: Option<JwtVerifier>,
}

/// The credential did not verify: an unknown token, or a JWT that failed a check.
#[derive(Debug)]
pub(crate) struct Unauthorized;

/// What [`Authenticator::apply`] verified.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Verified {
    /// The offered WebSocket subprotocol that carried the credential: the one to choose in
    /// the handshake (a browser fails it unless the server echoes one it offered).
    pub(crate) protocol: Option<String>,
}

impl Authenticator {
    /// The authenticator of `config`, with the JWT keys it names read.
    pub(crate) fn new(config: &AuthConfig) -> Result<Self, JwtConfigError> {
        Ok(Self {
            query_identity: config.query_identity,
            tokens: config.tokens.clone().into_iter().collect(),
            jwt: config.jwt.as_ref().map(JwtVerifier::new).transpose()?,
        })
    }

    /// The identity `token` proves, if any: a configured token, else a verified JWT.
    fn token_identity(&self, token: &str) -> Option<Identity> {
        if let Some(id) = self.tokens.get(token) {
            return Some(id.clone());
        }
        let jwt = self.jwt.as_ref()?;
        if !JwtVerifier::looks_like_jwt(token) {
            return None;
        }
        jwt.verify(token)
            .inspect_err(|e| tracing::debug!(error = %e, "refused a JWT"))
            .ok()
    }

    /// The credential offered as a WebSocket subprotocol, with its identity: `Ok(None)` when
    /// no offered protocol is a credential, `Err` when one is meant as one and fails.
    fn protocol_credential(
        &self,
        headers: &HeaderMap,
    ) -> Result<Option<(String, Identity)>, Unauthorized> {
        let offered = headers
            .get_all(http::header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|p| !p.is_empty());
        for protocol in offered {
            if let Some(id) = self.tokens.get(protocol) {
                return Ok(Some((protocol.to_string(), id.clone())));
            }
            if self.jwt.is_some() && JwtVerifier::looks_like_jwt(protocol) {
                return match self.token_identity(protocol) {
                    Some(id) => Ok(Some((protocol.to_string(), id))),
                    None => Err(Unauthorized),
                };
            }
        }
        Ok(None)
    }

    /// Replaces the identity headers of a request with the verified identity, if any.
    pub(crate) fn apply(
        &self,
        headers: &mut HeaderMap,
        query: Option<&str>,
    ) -> Result<Verified, Unauthorized> {
        for h in [&USER_ID, &USER_NAME, &PERMISSIONS] {
            headers.remove(h);
        }
        let bearer = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        let mut verified = Verified::default();
        let identity = match bearer {
            Some(token) => Some(self.token_identity(token).ok_or(Unauthorized)?),
            None => match self.protocol_credential(headers)? {
                Some((protocol, id)) => {
                    verified.protocol = Some(protocol);
                    Some(id)
                }
                None if self.query_identity => from_query(query),
                None => None,
            },
        };
        if let Some(id) = identity {
            let set = |headers: &mut HeaderMap, name: &HeaderName, value: &str| {
                // UTF-8 passes as bytes (objects read it back as UTF-8); values with control
                // characters are left out rather than guessed at.
                if let Ok(v) = HeaderValue::from_bytes(value.as_bytes()) {
                    headers.insert(name.clone(), v);
                }
            };
            set(headers, &USER_ID, &id.user);
            set(
                headers,
                &USER_NAME,
                if id.name.is_empty() {
                    &id.user
                } else {
                    &id.name
                },
            );
            set(headers, &PERMISSIONS, &id.permissions.join(","));
        }
        Ok(verified)
    }
}

/// The identity claimed in the query (`user`, `name`, `permissions`), if a user is given.
fn from_query(query: Option<&str>) -> Option<Identity> {
    let req = Request::get(&format!("/?{}", query?)).ok()?;
    let user: String = req
        .query("user")
        .ok()
        .flatten()
        .filter(|u: &String| !u.is_empty())?;
    let name = req.query("name").ok().flatten().unwrap_or_default();
    let permissions = req
        .query::<String>("permissions")
        .ok()
        .flatten()
        .map_or_else(
            || vec!["read".to_string()],
            |p| p.split(',').map(str::to_string).collect(),
        );
    Some(Identity {
        user,
        name,
        permissions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(query_identity: bool) -> Authenticator {
        let mut tokens = HashMap::new();
        tokens.insert(
            "t1".to_string(),
            Identity {
                user: "u1".into(),
                name: "Ann".into(),
                permissions: vec!["read".into(), "write".into()],
            },
        );
        Authenticator {
            query_identity,
            tokens,
            jwt: None,
        }
    }

    #[test]
    fn tokens_set_the_identity_and_forged_headers_are_dropped() {
        let mut h = HeaderMap::new();
        h.insert(USER_ID, HeaderValue::from_static("admin"));
        h.insert(
            http::header::AUTHORIZATION,
            HeaderValue::from_static("Bearer t1"),
        );
        auth(false).apply(&mut h, None).unwrap();
        assert_eq!(h[&USER_ID], "u1");
        assert_eq!(h[&USER_NAME], "Ann");
        assert_eq!(h[&PERMISSIONS], "read,write");

        let mut h = HeaderMap::new();
        h.insert(USER_ID, HeaderValue::from_static("admin"));
        auth(false).apply(&mut h, Some("user=x")).unwrap();
        assert!(
            h.get(&USER_ID).is_none(),
            "no token, no query identity: anonymous"
        );

        let mut h = HeaderMap::new();
        h.insert(
            http::header::AUTHORIZATION,
            HeaderValue::from_static("Bearer nope"),
        );
        assert!(auth(true).apply(&mut h, Some("user=x")).is_err());
    }

    #[test]
    fn the_demo_takes_the_identity_from_the_query() {
        let mut h = HeaderMap::new();
        auth(true)
            .apply(&mut h, Some("user=u%202&name=Bo&permissions=read"))
            .unwrap();
        assert_eq!(h[&USER_ID], "u 2");
        assert_eq!(h[&USER_NAME], "Bo");
        assert_eq!(h[&PERMISSIONS], "read");
    }
}

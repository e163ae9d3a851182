//! JSON Web Tokens for `[auth.jwt]`: signatures and claims checked by the `jsonwebtoken` crate,
//! the verified claims mapped to the caller's identity (user id, name, permissions).
//!
//! Keys are read once, at start: an HS256 secret from a file, an RS256 or EdDSA public key from
//! a PEM file, and any number of keys from a JWKS file (chosen by the token's `kid`). A token
//! must name an algorithm one of the keys is for (`none` never is), carry `exp`, and pass the
//! configured `iss` and `aud`; `nbf` is checked when present. Clock skew of `leeway_seconds` is
//! allowed on `exp` and `nbf`.

use std::path::{Path, PathBuf};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use crate::config::{Identity, JwtConfig};

/// Why the keys of `[auth.jwt]` cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum JwtConfigError {
    /// No key file is configured.
    #[error(
        "[auth.jwt] needs a key: hs256_secret_file, rs256_public_key_file, eddsa_public_key_file or jwks_file"
    )]
    NoKey,
    /// A key file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A key file holds no usable key.
    #[error("{path}: {message}")]
    BadKey {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
}

/// Why a token proves no identity.
#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    /// The token is not a JWT, or its signature, algorithm or claims did not pass.
    #[error("invalid token: {0}")]
    Invalid(#[from] jsonwebtoken::errors::Error),
    /// No configured key is for the token's algorithm (and `kid`).
    #[error("no key for this token's algorithm or key id")]
    NoKey,
    /// The verified token has no usable user id.
    #[error("the token has no {0:?} claim naming the user")]
    NoUser(String),
}

/// One key a token may be signed with.
struct VerifyKey {
    /// The JWKS `kid`, if the key came with one.
    kid: Option<String>,
    algorithm: Algorithm,
    key: DecodingKey,
}

/// Verifies tokens against the configured keys and reads the identity from their claims.
pub(crate) struct JwtVerifier {
    keys: Vec<VerifyKey>,
    config: JwtConfig,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("keys", &self.keys.len())
            .finish_non_exhaustive()
    }
}

fn read(path: &Path) -> Result<Vec<u8>, JwtConfigError> {
    std::fs::read(path).map_err(|source| JwtConfigError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn bad_key(path: &Path, message: impl std::fmt::Display) -> JwtConfigError {
    JwtConfigError::BadKey {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

/// The algorithm a JWKS key is for: its `alg` if it has one, else the usual one for its type.
fn jwk_algorithm(jwk: &jsonwebtoken::jwk::Jwk) -> Option<Algorithm> {
    if let Some(alg) = jwk.common.key_algorithm {
        return match alg {
            KeyAlgorithm::HS256 => Some(Algorithm::HS256),
            KeyAlgorithm::HS384 => Some(Algorithm::HS384),
            KeyAlgorithm::HS512 => Some(Algorithm::HS512),
            KeyAlgorithm::ES256 => Some(Algorithm::ES256),
            KeyAlgorithm::ES384 => Some(Algorithm::ES384),
            KeyAlgorithm::RS256 => Some(Algorithm::RS256),
            KeyAlgorithm::RS384 => Some(Algorithm::RS384),
            KeyAlgorithm::RS512 => Some(Algorithm::RS512),
            KeyAlgorithm::PS256 => Some(Algorithm::PS256),
            KeyAlgorithm::PS384 => Some(Algorithm::PS384),
            KeyAlgorithm::PS512 => Some(Algorithm::PS512),
            KeyAlgorithm::EdDSA => Some(Algorithm::EdDSA),
            _ => None,
        };
    }
    match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Some(Algorithm::RS256),
        AlgorithmParameters::OctetKeyPair(_) => Some(Algorithm::EdDSA),
        AlgorithmParameters::OctetKey(_) => Some(Algorithm::HS256),
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => Some(Algorithm::ES256),
            EllipticCurve::P384 => Some(Algorithm::ES384),
            _ => None,
        },
    }
}

impl JwtVerifier {
    /// Reads the keys `config` names.
    pub(crate) fn new(config: &JwtConfig) -> Result<Self, JwtConfigError> {
        let mut keys = Vec::new();
        if let Some(path) = &config.hs256_secret_file {
            let bytes = read(path)?;
            let secret = bytes.strip_suffix(b"\n").unwrap_or(&bytes);
            let secret = secret.strip_suffix(b"\r").unwrap_or(secret);
            if secret.len() < 32 {
                return Err(bad_key(
                    path,
                    "an HS256 secret needs at least 32 bytes (256 bits)",
                ));
            }
            keys.push(VerifyKey {
                kid: None,
                algorithm: Algorithm::HS256,
                key: DecodingKey::from_secret(secret),
            });
        }
        if let Some(path) = &config.rs256_public_key_file {
            let key = DecodingKey::from_rsa_pem(&read(path)?).map_err(|e| bad_key(path, e))?;
            keys.push(VerifyKey {
                kid: None,
                algorithm: Algorithm::RS256,
                key,
            });
        }
        if let Some(path) = &config.eddsa_public_key_file {
            let key = DecodingKey::from_ed_pem(&read(path)?).map_err(|e| bad_key(path, e))?;
            keys.push(VerifyKey {
                kid: None,
                algorithm: Algorithm::EdDSA,
                key,
            });
        }
        if let Some(path) = &config.jwks_file {
            let set: JwkSet = serde_json::from_slice(&read(path)?).map_err(|e| bad_key(path, e))?;
            let before = keys.len();
            for jwk in &set.keys {
                let Some(algorithm) = jwk_algorithm(jwk) else {
                    tracing::warn!(file = %path.display(), kid = ?jwk.common.key_id, "skipping a JWKS key of an unsupported type");
                    continue;
                };
                let key = DecodingKey::from_jwk(jwk).map_err(|e| bad_key(path, e))?;
                keys.push(VerifyKey {
                    kid: jwk.common.key_id.clone(),
                    algorithm,
                    key,
                });
            }
            if keys.len() == before {
                return Err(bad_key(path, "the JWKS holds no supported key"));
            }
        }
        if keys.is_empty() {
            return Err(JwtConfigError::NoKey);
        }
        Ok(Self {
            keys,
            config: config.clone(),
        })
    }

    /// Whether `token` has the shape of a JWT (three base64url parts), so it is worth verifying.
    pub(crate) fn looks_like_jwt(token: &str) -> bool {
        let parts: Vec<&str> = token.split('.').collect();
        parts.len() == 3
            && parts[..2].iter().all(|p| !p.is_empty())
            && token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    }

    fn validation(&self, algorithm: Algorithm) -> Validation {
        let mut v = Validation::new(algorithm);
        v.leeway = self.config.leeway_seconds;
        v.validate_nbf = true;
        v.set_required_spec_claims(&["exp"]);
        if let Some(iss) = &self.config.issuer {
            v.set_issuer(&[iss]);
            v.required_spec_claims.insert("iss".into());
        }
        if let Some(aud) = &self.config.audience {
            v.set_audience(&[aud]);
            v.required_spec_claims.insert("aud".into());
        }
        v
    }

    /// The identity `token` proves: signature, algorithm, `exp`, `nbf`, `iss` and `aud`
    /// checked, then the user, name and permissions read from the claims.
    pub(crate) fn verify(&self, token: &str) -> Result<Identity, JwtError> {
        let header = jsonwebtoken::decode_header(token)?;
        let for_alg = self.keys.iter().filter(|k| k.algorithm == header.alg);
        let candidates: Vec<&VerifyKey> = match &header.kid {
            Some(kid) if self.keys.iter().any(|k| k.kid.as_ref() == Some(kid)) => {
                for_alg.filter(|k| k.kid.as_ref() == Some(kid)).collect()
            }
            _ => for_alg.collect(),
        };
        let mut last = JwtError::NoKey;
        for key in candidates {
            match jsonwebtoken::decode::<Map<String, Value>>(
                token,
                &key.key,
                &self.validation(key.algorithm),
            ) {
                Ok(data) => return self.identity(&data.claims),
                Err(e) => last = e.into(),
            }
        }
        Err(last)
    }

    /// The identity in verified `claims`.
    fn identity(&self, claims: &Map<String, Value>) -> Result<Identity, JwtError> {
        let text = |name: &str| {
            claims
                .get(name)
                .and_then(Value::as_str)
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
        };
        let user = text(&self.config.user_claim)
            .ok_or_else(|| JwtError::NoUser(self.config.user_claim.clone()))?;
        let name = text(&self.config.name_claim).unwrap_or_default();
        let permissions = match claims.get(&self.config.permissions_claim) {
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect(),
            Some(Value::String(s)) => s
                .split([' ', ','])
                .filter(|p| !p.is_empty())
                .map(str::to_string)
                .collect(),
            _ => self.config.default_permissions.clone(),
        };
        Ok(Identity {
            user,
            name,
            permissions,
        })
    }
}

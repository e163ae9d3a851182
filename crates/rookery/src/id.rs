//! Object ids: 64 lowercase hex characters that authenticate themselves.
//!
//! An id is 16 bytes of body followed by a 16-byte HMAC-SHA256 tag of that body, keyed by the
//! namespace's secret. Ids minted from a name use an HMAC of the name as body, so the same name
//! always gives the same id within a namespace and a different one in every other namespace.
//! `id_from_string` recomputes the tag, so an id that this namespace never minted (forged,
//! mistyped, or from another namespace) is refused.

use std::fmt;
use std::sync::Arc;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::error::{Error, Result};

type HmacSha256 = Hmac<Sha256>;

/// Length of an id in bytes.
pub const ID_BYTES: usize = 32;
const BODY_BYTES: usize = 16;

/// The address of one durable object within its namespace.
#[derive(Clone)]
pub struct ObjectId {
    bytes: [u8; ID_BYTES],
    name: Option<Arc<str>>,
}

impl ObjectId {
    /// An id from its bytes, already verified (e.g. read back from the node's own index).
    pub(crate) fn from_verified_bytes(bytes: [u8; ID_BYTES]) -> Self {
        Self { bytes, name: None }
    }

    /// This id, remembering `name` as the name it was minted from.
    pub(crate) fn with_name(&self, name: &str) -> Self {
        Self {
            bytes: self.bytes,
            name: Some(Arc::from(name)),
        }
    }

    /// The raw 32 bytes of the id.
    pub fn as_bytes(&self) -> &[u8; ID_BYTES] {
        &self.bytes
    }

    /// The name this id was minted from, if it was minted with `id_from_name`.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// The id as 64 lowercase hex characters.
    pub fn to_hex(&self) -> String {
        hex::encode(self.bytes)
    }
}

impl PartialEq for ObjectId {
    fn eq(&self, other: &Self) -> bool {
        self.bytes == other.bytes
    }
}

impl Eq for ObjectId {}

impl std::hash::Hash for ObjectId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.bytes.hash(state);
    }
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = [0u8; ID_BYTES * 2];
        // Encoding into a buffer of exactly twice the input length cannot fail.
        if hex::encode_to_slice(self.bytes, &mut buf).is_err() {
            return Err(fmt::Error);
        }
        f.write_str(std::str::from_utf8(&buf).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.name {
            Some(name) => write!(f, "ObjectId({self}, name={name:?})"),
            None => write!(f, "ObjectId({self})"),
        }
    }
}

/// A namespace's secret: mints and verifies its ids.
#[derive(Clone)]
pub struct IdMinter {
    secret: [u8; 32],
}

impl fmt::Debug for IdMinter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("IdMinter(..)")
    }
}

impl IdMinter {
    /// A minter keyed by `secret`.
    pub fn new(secret: [u8; 32]) -> Self {
        Self { secret }
    }

    /// A fresh random secret.
    pub fn random_secret() -> Result<[u8; 32]> {
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).map_err(|e| Error::msg(format!("no randomness: {e}")))?;
        Ok(secret)
    }

    fn mac(&self, domain: &[u8], data: &[u8]) -> HmacSha256 {
        // HMAC takes keys of any length; 32 bytes is always accepted.
        let mut mac = <HmacSha256 as Mac>::new_from_slice(&self.secret)
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
        mac.update(domain);
        mac.update(data);
        mac
    }

    fn seal(&self, body: [u8; BODY_BYTES], name: Option<Arc<str>>) -> ObjectId {
        let tag = self.mac(b"rookery-id\0", &body).finalize().into_bytes();
        let mut bytes = [0u8; ID_BYTES];
        bytes[..BODY_BYTES].copy_from_slice(&body);
        bytes[BODY_BYTES..].copy_from_slice(&tag[..ID_BYTES - BODY_BYTES]);
        ObjectId { bytes, name }
    }

    /// The id for `name`: the same for the same name, always.
    pub fn id_from_name(&self, name: &str) -> ObjectId {
        let digest = self
            .mac(b"rookery-name\0", name.as_bytes())
            .finalize()
            .into_bytes();
        let mut body = [0u8; BODY_BYTES];
        body.copy_from_slice(&digest[..BODY_BYTES]);
        self.seal(body, Some(Arc::from(name)))
    }

    /// A new random id.
    pub fn new_unique_id(&self) -> Result<ObjectId> {
        let mut body = [0u8; BODY_BYTES];
        getrandom::fill(&mut body).map_err(|e| Error::msg(format!("no randomness: {e}")))?;
        Ok(self.seal(body, None))
    }

    /// Parses and verifies an id given as 64 hex characters.
    pub fn id_from_string(&self, hex_id: &str) -> Result<ObjectId> {
        if hex_id.len() != ID_BYTES * 2 {
            return Err(Error::InvalidId("an id is 64 hex characters"));
        }
        if hex_id.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(Error::InvalidId("an id is written in lowercase hex"));
        }
        let mut bytes = [0u8; ID_BYTES];
        hex::decode_to_slice(hex_id, &mut bytes)
            .map_err(|_| Error::InvalidId("an id is 64 hex characters"))?;
        let tag = &bytes[BODY_BYTES..];
        self.mac(b"rookery-id\0", &bytes[..BODY_BYTES])
            .verify_truncated_left(tag)
            .map_err(|_| Error::InvalidId("this id was not minted by this namespace"))?;
        Ok(ObjectId { bytes, name: None })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minter(seed: u8) -> IdMinter {
        IdMinter::new([seed; 32])
    }

    #[test]
    fn name_ids_are_deterministic_and_remember_the_name() {
        let m = minter(1);
        let a = m.id_from_name("alice");
        assert_eq!(a, m.id_from_name("alice"));
        assert_ne!(a, m.id_from_name("bob"));
        assert_eq!(a.name(), Some("alice"));
        let hex = a.to_string();
        assert_eq!(hex.len(), 64);
        assert!(
            hex.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        assert_eq!(hex, a.to_hex());
    }

    #[test]
    fn ids_round_trip_through_strings() {
        let m = minter(2);
        let named = m.id_from_name("room-1");
        assert_eq!(m.id_from_string(&named.to_string()).unwrap(), named);
        let unique = m.new_unique_id().unwrap();
        assert_eq!(m.id_from_string(&unique.to_string()).unwrap(), unique);
        assert_ne!(unique, m.new_unique_id().unwrap());
        assert_eq!(unique.name(), None);
    }

    #[test]
    fn forged_foreign_and_malformed_ids_are_refused() {
        let m = minter(3);
        let id = m.id_from_name("x").to_string();
        // Flip one hex digit of the body: the tag no longer matches.
        let mut forged = id.clone().into_bytes();
        forged[0] = if forged[0] == b'0' { b'1' } else { b'0' };
        let forged = String::from_utf8(forged).unwrap();
        assert!(matches!(
            m.id_from_string(&forged),
            Err(Error::InvalidId(_))
        ));
        // An id from another namespace.
        assert!(matches!(
            minter(4).id_from_string(&id),
            Err(Error::InvalidId(_))
        ));
        for bad in ["", "abc", &id[..63], &id.to_uppercase(), &"zz".repeat(32)] {
            assert!(
                matches!(m.id_from_string(bad), Err(Error::InvalidId(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn namespaces_give_different_ids_for_the_same_name() {
        assert_ne!(minter(5).id_from_name("n"), minter(6).id_from_name("n"));
    }
}

//! A change to a collection: what `POST /cdc` takes (`{op, id, doc}`), and the line of a delta
//! file it becomes (`{seq, op, id, doc, ts}`).
//!
//! Documents are kept as the text the client sent (checked to be a JSON object), so a delta file
//! and `GET /cdc/docs/:id` give back the document byte for byte: key order, number forms and
//! all.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::input::InputError;

/// Longest document id, in bytes.
pub const MAX_ID_BYTES: usize = 256;

/// What a change does to its document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    /// A new document; its id must not exist.
    Insert,
    /// Replaces an existing document whole.
    Update,
    /// Removes an existing document.
    Delete,
}

impl Op {
    /// The op's name, as written in the JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Insert => "insert",
            Op::Update => "update",
            Op::Delete => "delete",
        }
    }

    /// The op called `name`.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "insert" => Some(Op::Insert),
            "update" => Some(Op::Update),
            "delete" => Some(Op::Delete),
            _ => None,
        }
    }
}

/// One applied change: a line of a delta file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Change {
    /// Its position in the collection: 1, 2, … with no gaps.
    pub seq: i64,
    /// What it did.
    pub op: Op,
    /// The document's id.
    pub id: String,
    /// The document after the change: null for a delete.
    pub doc: Option<Box<RawValue>>,
    /// When it was applied, ms since the epoch.
    pub ts: i64,
}

/// A checked `POST /cdc` body.
#[derive(Debug)]
pub struct Input {
    /// The op.
    pub op: Op,
    /// The document's id: 1 to [`MAX_ID_BYTES`] bytes.
    pub id: String,
    /// The document, a JSON object (for insert and update; `None` for delete).
    pub doc: Option<Box<RawValue>>,
}

/// `v` unless it is JSON `null`.
fn present(v: Option<&RawValue>) -> Option<&RawValue> {
    v.filter(|v| v.get() != "null")
}

/// Checks a `POST /cdc` body: `op` one of the three, `id` a string of 1 to [`MAX_ID_BYTES`]
/// bytes, `doc` an object for insert and update and absent (or null) for delete. Other members
/// are ignored.
pub fn parse(body: &[u8]) -> Result<Input, InputError> {
    let members: HashMap<String, &RawValue> = match serde_json::from_slice::<&RawValue>(body) {
        Ok(raw) if raw.get().starts_with('{') => {
            serde_json::from_str(raw.get()).map_err(|e| InputError::Body(e.to_string()))?
        }
        Ok(_) => return Err(InputError::Body("not an object".into())),
        Err(e) => return Err(InputError::Body(e.to_string())),
    };
    let op_raw = present(members.get("op").copied()).ok_or(InputError::Missing("op"))?;
    let op = serde_json::from_str::<String>(op_raw.get())
        .ok()
        .and_then(|name| Op::parse(&name))
        .ok_or_else(|| InputError::invalid("op", "must be \"insert\", \"update\" or \"delete\""))?;
    let id_raw = present(members.get("id").copied()).ok_or(InputError::Missing("id"))?;
    let id = serde_json::from_str::<String>(id_raw.get())
        .ok()
        .filter(|id| !id.is_empty() && id.len() <= MAX_ID_BYTES)
        .ok_or_else(|| {
            InputError::invalid(
                "id",
                format!("must be a non-empty string of at most {MAX_ID_BYTES} bytes"),
            )
        })?;
    let doc = present(members.get("doc").copied());
    let doc = match (op, doc) {
        (Op::Delete, None) => None,
        (Op::Delete, Some(_)) => {
            return Err(InputError::invalid(
                "doc",
                "must be absent or null for a delete",
            ));
        }
        (_, None) => return Err(InputError::Missing("doc")),
        (_, Some(doc)) if doc.get().starts_with('{') => Some(doc.to_owned()),
        (_, Some(_)) => return Err(InputError::invalid("doc", "must be a JSON object")),
    };
    Ok(Input { op, id, doc })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(body: &str) -> Option<&'static str> {
        parse(body.as_bytes()).unwrap_err().field()
    }

    #[test]
    fn bodies_are_checked_field_by_field() {
        let ok = parse(br#"{"op":"insert","id":"a","doc":{"b": 1,"a":[2]},"extra":1}"#).unwrap();
        assert_eq!((ok.op, ok.id.as_str()), (Op::Insert, "a"));
        assert_eq!(ok.doc.unwrap().get(), r#"{"b": 1,"a":[2]}"#, "kept as sent");
        let del = parse(br#"{"op":"delete","id":"a","doc":null}"#).unwrap();
        assert!(del.doc.is_none());

        assert!(matches!(parse(b"[1]"), Err(InputError::Body(_))));
        assert!(matches!(parse(b"{"), Err(InputError::Body(_))));
        assert_eq!(field(r#"{"id":"a","doc":{}}"#), Some("op"));
        assert_eq!(field(r#"{"op":"upsert","id":"a","doc":{}}"#), Some("op"));
        assert_eq!(field(r#"{"op":7,"id":"a","doc":{}}"#), Some("op"));
        assert_eq!(field(r#"{"op":"insert","doc":{}}"#), Some("id"));
        assert_eq!(field(r#"{"op":"insert","id":"","doc":{}}"#), Some("id"));
        assert_eq!(field(r#"{"op":"insert","id":3,"doc":{}}"#), Some("id"));
        let long = format!(r#"{{"op":"insert","id":"{}","doc":{{}}}}"#, "x".repeat(257));
        assert_eq!(field(&long), Some("id"));
        assert_eq!(field(r#"{"op":"insert","id":"a"}"#), Some("doc"));
        assert_eq!(field(r#"{"op":"update","id":"a","doc":[1]}"#), Some("doc"));
        assert_eq!(field(r#"{"op":"update","id":"a","doc":"x"}"#), Some("doc"));
        assert_eq!(field(r#"{"op":"delete","id":"a","doc":{}}"#), Some("doc"));
    }

    #[test]
    fn a_change_is_one_json_line_with_the_document_as_sent() {
        let c = Change {
            seq: 7,
            op: Op::Delete,
            id: "a".into(),
            doc: None,
            ts: 5,
        };
        assert_eq!(
            serde_json::to_string(&c).unwrap(),
            r#"{"seq":7,"op":"delete","id":"a","doc":null,"ts":5}"#
        );
    }
}

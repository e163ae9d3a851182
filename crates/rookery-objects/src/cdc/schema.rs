//! A table's schema, inferred from its documents' top-level fields, and how it evolves.
//!
//! - A field's type is the set of JSON types it was seen with: `string`, `number`, `boolean`,
//!   `object`, `array`, `null`. One type is written as itself (`"number"`); several as a union
//!   in a fixed order (`"number|string"`, `"null|string"`).
//! - Every field is optional: a document without it says nothing about it, and a delete removes
//!   nothing from the schema.
//! - **Evolution** only widens: a new field is appended with the next field id (ids are never
//!   reused or renumbered); a field seen with a type it did not have gets the union. Either makes
//!   a new schema version; a delta that adds nothing keeps the version. So every version reads
//!   every document an older version described.
//! - A table keeps at most [`MAX_FIELDS`] fields; later new fields are left out of the schema
//!   (logged), not refused: the delta files still hold the documents whole.

use std::collections::HashMap;
use std::fmt;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;

/// Most fields a table's schema keeps.
pub const MAX_FIELDS: usize = 1_000;

/// The JSON types, in the order a union is written.
const NAMES: [&str; 6] = ["array", "boolean", "null", "number", "object", "string"];

/// A set of JSON types (a bit per entry of `NAMES`); written `"number|string"`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct TypeSet(u8);

impl TypeSet {
    /// The type of one JSON value, from its text.
    pub fn of(raw: &RawValue) -> Self {
        let bit = match raw.get().as_bytes().first() {
            Some(b'[') => 0,
            Some(b't' | b'f') => 1,
            Some(b'n') => 2,
            Some(b'{') => 4,
            Some(b'"') => 5,
            _ => 3,
        };
        Self(1 << bit)
    }

    /// Both sets' types.
    pub fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    /// Whether every type of `other` is in this set.
    pub fn covers(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// Parses `"number|string"`.
    pub fn parse(text: &str) -> Option<Self> {
        let mut set = 0;
        for part in text.split('|') {
            set |= 1 << NAMES.iter().position(|n| *n == part)?;
        }
        Some(Self(set))
    }
}

impl fmt::Display for TypeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (bit, name) in NAMES.iter().enumerate() {
            if self.0 & (1 << bit) != 0 {
                if !first {
                    f.write_str("|")?;
                }
                f.write_str(name)?;
                first = false;
            }
        }
        Ok(())
    }
}

impl Serialize for TypeSet {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for TypeSet {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Self::parse(&text).ok_or_else(|| D::Error::custom(format!("not a JSON type: {text:?}")))
    }
}

/// A top-level field and the types it was seen with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldTypes {
    /// The field's name.
    pub name: String,
    /// Its types.
    #[serde(rename = "type")]
    pub types: TypeSet,
}

/// The fields of some documents, in the order they first appear.
#[derive(Debug, Default)]
pub struct Observed {
    fields: Vec<FieldTypes>,
    index: HashMap<String, usize>,
}

impl Observed {
    /// Adds the top-level fields of the JSON object `doc`.
    pub fn add(&mut self, doc: &RawValue) -> serde_json::Result<()> {
        let map: Vec<(String, &RawValue)> = serde_json::from_str::<RawObject<'_>>(doc.get())?.0;
        for (name, value) in map {
            let types = TypeSet::of(value);
            match self.index.get(&name) {
                Some(&i) => self.fields[i].types = self.fields[i].types.union(types),
                None => {
                    self.index.insert(name.clone(), self.fields.len());
                    self.fields.push(FieldTypes { name, types });
                }
            }
        }
        Ok(())
    }

    /// The fields seen.
    pub fn into_fields(self) -> Vec<FieldTypes> {
        self.fields
    }
}

/// A JSON object's members in document order, values left as text.
struct RawObject<'a>(Vec<(String, &'a RawValue)>);

impl<'de: 'a, 'a> Deserialize<'de> for RawObject<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Members;
        impl<'de> serde::de::Visitor<'de> for Members {
            type Value = RawObject<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, &'de RawValue>()? {
                    out.push((k, v));
                }
                Ok(RawObject(out))
            }
        }
        d.deserialize_map(Members)
    }
}

/// One field of a schema version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Field {
    /// Its id in the table: 1, 2, … in the order fields appeared; never reused.
    pub id: u32,
    /// Its name.
    pub name: String,
    /// The JSON types it was seen with.
    #[serde(rename = "type")]
    pub types: TypeSet,
}

/// A schema version's fields.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fields(pub Vec<Field>);

impl Fields {
    /// These fields widened by `seen`, or `None` if `seen` adds nothing. New fields beyond
    /// [`MAX_FIELDS`] are left out.
    pub fn evolve(&self, seen: &[FieldTypes]) -> Option<Fields> {
        let mut next = self.clone();
        let mut changed = false;
        let mut next_id = self.0.iter().map(|f| f.id).max().unwrap_or(0) + 1;
        for s in seen {
            let full = next.0.len() >= MAX_FIELDS;
            match next.0.iter_mut().find(|f| f.name == s.name) {
                Some(f) if f.types.covers(s.types) => {}
                Some(f) => {
                    f.types = f.types.union(s.types);
                    changed = true;
                }
                None if full => {
                    tracing::warn!(field = %s.name, "Catalog: the table has {MAX_FIELDS} fields; a new one is left out of its schema");
                }
                None => {
                    next.0.push(Field {
                        id: next_id,
                        name: s.name.clone(),
                        types: s.types,
                    });
                    next_id += 1;
                    changed = true;
                }
            }
        }
        changed.then_some(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(text: &str) -> Box<RawValue> {
        RawValue::from_string(text.to_string()).unwrap()
    }

    fn observe(docs: &[&str]) -> Vec<FieldTypes> {
        let mut o = Observed::default();
        for d in docs {
            o.add(&raw(d)).unwrap();
        }
        o.into_fields()
    }

    #[test]
    fn types_are_inferred_and_written_as_unions() {
        let seen = observe(&[
            r#"{"s":"x","n":1.5,"b":true,"o":{"a":1},"a":[1],"z":null}"#,
            r#"{"n":"one","b":false}"#,
        ]);
        let written: Vec<String> = seen
            .iter()
            .map(|f| format!("{}:{}", f.name, f.types))
            .collect();
        assert_eq!(
            written,
            [
                "s:string",
                "n:number|string",
                "b:boolean",
                "o:object",
                "a:array",
                "z:null"
            ]
        );
        for f in &seen {
            assert_eq!(TypeSet::parse(&f.types.to_string()), Some(f.types));
        }
        assert_eq!(TypeSet::parse("number|text"), None);
    }

    #[test]
    fn evolution_only_widens_and_keeps_field_ids() {
        let v1 = Fields::default()
            .evolve(&observe(&[r#"{"name":"a","price":1}"#]))
            .unwrap();
        assert_eq!(
            v1.0.iter()
                .map(|f| (f.id, f.name.as_str()))
                .collect::<Vec<_>>(),
            [(1, "name"), (2, "price")]
        );
        // Nothing new, or fewer fields: the same version.
        assert_eq!(v1.evolve(&observe(&[r#"{"price":2}"#, "{}"])), None);
        // A new field is appended with the next id.
        let v2 = v1
            .evolve(&observe(&[r#"{"tags":["x"],"name":"b"}"#]))
            .unwrap();
        assert_eq!(v2.0[2].id, 3);
        assert_eq!(v2.0[2].name, "tags");
        // A known field seen with another type becomes a union.
        let v3 = v2.evolve(&observe(&[r#"{"price":"12.50"}"#])).unwrap();
        assert_eq!(v3.0[1].types.to_string(), "number|string");
        assert_eq!(v3.evolve(&observe(&[r#"{"price":"3"}"#])), None);
    }
}

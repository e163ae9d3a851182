//! Whether a new version of an event type's schema is backward compatible with the one before:
//! every event a publisher could send under the old version must still be accepted under the
//! new one, so registering a version never breaks a publisher that has not changed.
//!
//! Deciding that for arbitrary JSON Schemas is as hard as comparing two programs, so the check
//! works keyword by keyword, at every level of `properties` and `items`, and refuses what it
//! cannot reason about:
//!
//! | keyword | a new version may |
//! | --- | --- |
//! | `type` | keep or add types (`integer` counts as part of `number`), never drop one |
//! | `required` | keep or drop names, never add one (old events lack the field) |
//! | `properties` | add optional fields; keep every old field, each checked by these rules; drop one only while additional properties are allowed |
//! | `additionalProperties` | stay allowed, or stay a schema checked by these rules; never turn `false` |
//! | `items` | stay a schema checked by these rules |
//! | `enum`, `const` | keep every old value; never appear where there was none |
//! | `minimum`, `exclusiveMinimum`, `minLength`, `minItems`, `minProperties` | stay or go down; never appear |
//! | `maximum`, `exclusiveMaximum`, `maxLength`, `maxItems`, `maxProperties` | stay or go up; never appear |
//! | `pattern`, `multipleOf`, `uniqueItems` | stay the same, or go away |
//! | annotations (`title`, `description`, `default`, `examples`, `format`, `$comment`, `$schema`, `$id`, `deprecated`, `readOnly`, `writeOnly`) | change freely |
//! | anything else (`$ref`, `$defs`, `allOf`, `anyOf`, `oneOf`, `not`, `if`, `patternProperties`, …) | stay exactly the same, or go away |
//!
//! Adding an optional field is allowed although, strictly, an old event could have carried an
//! undeclared field of that name with another type: publishers rarely send fields their schema
//! does not name, and refusing every new field would make schemas impossible to grow.
//! `format` is an annotation because the registry does not assert formats.

use serde_json::{Map, Value};

/// Keywords that do not constrain what is valid.
const ANNOTATIONS: &[&str] = &[
    "title",
    "description",
    "default",
    "examples",
    "format",
    "$comment",
    "$schema",
    "$id",
    "deprecated",
    "readOnly",
    "writeOnly",
];

/// Keywords the rules above look into.
const UNDERSTOOD: &[&str] = &[
    "type",
    "required",
    "properties",
    "additionalProperties",
    "items",
    "enum",
    "const",
    "minimum",
    "exclusiveMinimum",
    "minLength",
    "minItems",
    "minProperties",
    "maximum",
    "exclusiveMaximum",
    "maxLength",
    "maxItems",
    "maxProperties",
    "pattern",
    "multipleOf",
    "uniqueItems",
];

/// Lower bounds: a new version may lower them, not raise or add them.
const LOWER_BOUNDS: &[&str] = &[
    "minimum",
    "exclusiveMinimum",
    "minLength",
    "minItems",
    "minProperties",
];

/// Upper bounds: a new version may raise them, not lower or add them.
const UPPER_BOUNDS: &[&str] = &[
    "maximum",
    "exclusiveMaximum",
    "maxLength",
    "maxItems",
    "maxProperties",
];

/// Keywords a new version may keep or drop, never add or change.
const FIXED: &[&str] = &["pattern", "multipleOf", "uniqueItems"];

/// Every reason `new` would refuse an event `old` accepted, each naming where in the schema;
/// empty when `new` is compatible.
pub fn breaking_changes(old: &Value, new: &Value) -> Vec<String> {
    let mut out = Vec::new();
    compare(old, new, "#", &mut out);
    out
}

/// A schema as a keyword map: `true` is `{}`; `false` is `None` (accepts nothing).
fn as_map(schema: &Value) -> Option<Map<String, Value>> {
    match schema {
        Value::Bool(true) => Some(Map::new()),
        Value::Object(map) => Some(map.clone()),
        _ => None,
    }
}

fn compare(old: &Value, new: &Value, at: &str, out: &mut Vec<String>) {
    let Some(old) = as_map(old) else {
        // The old schema accepted nothing, so nothing can break.
        return;
    };
    let Some(new) = as_map(new) else {
        out.push(format!("{at}: the new schema accepts nothing"));
        return;
    };
    types(&old, &new, at, out);
    required(&old, &new, at, out);
    properties(&old, &new, at, out);
    if let (Some(o), Some(n)) = (old.get("items"), new.get("items")) {
        compare(o, n, &format!("{at}/items"), out);
    } else if new.get("items").is_some_and(|n| !permissive(n)) {
        out.push(format!("{at}/items: a constraint on items was added"));
    }
    values(&old, &new, at, out);
    for key in LOWER_BOUNDS {
        bound(&old, &new, key, at, |o, n| n <= o, "raised", out);
    }
    for key in UPPER_BOUNDS {
        bound(&old, &new, key, at, |o, n| n >= o, "lowered", out);
    }
    for key in FIXED {
        if let Some(n) = new.get(*key)
            && old.get(*key) != Some(n)
        {
            out.push(format!("{at}/{key}: added or changed"));
        }
    }
    for (key, n) in &new {
        let known = ANNOTATIONS.contains(&key.as_str()) || UNDERSTOOD.contains(&key.as_str());
        if !known && old.get(key) != Some(n) {
            out.push(format!(
                "{at}/{key}: changes to \"{key}\" are not checked for compatibility; \
                 keep it as it was, or register a new event type"
            ));
        }
    }
}

/// Whether `schema` accepts everything (`true`, `{}`, or only annotations).
fn permissive(schema: &Value) -> bool {
    match schema {
        Value::Bool(b) => *b,
        Value::Object(map) => map.keys().all(|k| ANNOTATIONS.contains(&k.as_str())),
        _ => false,
    }
}

/// The JSON types `schema` lets through, `None` meaning all.
fn type_set(schema: &Map<String, Value>) -> Option<Vec<String>> {
    match schema.get("type")? {
        Value::String(t) => Some(vec![t.clone()]),
        Value::Array(ts) => Some(
            ts.iter()
                .filter_map(|t| t.as_str().map(str::to_string))
                .collect(),
        ),
        _ => None,
    }
}

fn types(old: &Map<String, Value>, new: &Map<String, Value>, at: &str, out: &mut Vec<String>) {
    let Some(new_types) = type_set(new) else {
        return;
    };
    let old_types = type_set(old).unwrap_or_else(|| {
        [
            "null", "boolean", "object", "array", "number", "string", "integer",
        ]
        .iter()
        .map(|t| (*t).to_string())
        .collect()
    });
    let has = |t: &str| {
        new_types
            .iter()
            .any(|n| n == t || (t == "integer" && n == "number"))
    };
    let lost: Vec<&str> = old_types
        .iter()
        .map(String::as_str)
        .filter(|t| !has(t))
        .collect();
    if !lost.is_empty() {
        out.push(format!("{at}/type: no longer accepts {}", lost.join(", ")));
    }
}

fn names(schema: &Map<String, Value>) -> Vec<&str> {
    schema
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

fn required(old: &Map<String, Value>, new: &Map<String, Value>, at: &str, out: &mut Vec<String>) {
    let was = names(old);
    let added: Vec<&str> = names(new)
        .into_iter()
        .filter(|n| !was.contains(n))
        .collect();
    if !added.is_empty() {
        out.push(format!(
            "{at}/required: {} became required; events without {} would be refused",
            quoted(&added),
            if added.len() == 1 { "it" } else { "them" }
        ));
    }
}

fn quoted(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("\"{n}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

fn properties(old: &Map<String, Value>, new: &Map<String, Value>, at: &str, out: &mut Vec<String>) {
    let empty = Map::new();
    let old_props = old
        .get("properties")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let new_props = new
        .get("properties")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let new_extra = new.get("additionalProperties");
    for (name, was) in old_props {
        let here = format!("{at}/properties/{name}");
        match (new_props.get(name), new_extra) {
            (Some(now), _) => compare(was, now, &here, out),
            (None, None) => {}
            (None, Some(extra)) => compare(was, extra, &here, out),
        }
    }
    match (old.get("additionalProperties"), new_extra) {
        (_, None) => {}
        (Some(o), Some(n)) => compare(o, n, &format!("{at}/additionalProperties"), out),
        (None, Some(n)) if !permissive(n) => out.push(format!(
            "{at}/additionalProperties: fields the schema does not name were allowed and no longer are"
        )),
        (None, Some(_)) => {}
    }
}

fn values(old: &Map<String, Value>, new: &Map<String, Value>, at: &str, out: &mut Vec<String>) {
    if let Some(n) = new.get("enum").and_then(Value::as_array) {
        let old_values: Option<Vec<&Value>> = match (old.get("enum"), old.get("const")) {
            (Some(Value::Array(o)), _) => Some(o.iter().collect()),
            (_, Some(c)) => Some(vec![c]),
            _ => None,
        };
        match old_values {
            None => out.push(format!("{at}/enum: added; other values would be refused")),
            Some(o) => {
                let lost: Vec<String> = o
                    .into_iter()
                    .filter(|v| !n.contains(v))
                    .map(Value::to_string)
                    .collect();
                if !lost.is_empty() {
                    out.push(format!("{at}/enum: no longer lists {}", lost.join(", ")));
                }
            }
        }
    }
    if let Some(n) = new.get("const")
        && old.get("const") != Some(n)
    {
        let only_value = old
            .get("enum")
            .and_then(Value::as_array)
            .is_some_and(|o| o.iter().all(|v| v == n));
        if !only_value {
            out.push(format!("{at}/const: added or changed"));
        }
    }
}

fn bound(
    old: &Map<String, Value>,
    new: &Map<String, Value>,
    key: &str,
    at: &str,
    ok: impl Fn(f64, f64) -> bool,
    verb: &str,
    out: &mut Vec<String>,
) {
    let Some(n) = new.get(key) else {
        return;
    };
    match (old.get(key).and_then(Value::as_f64), n.as_f64()) {
        (Some(o), Some(n)) if ok(o, n) => {}
        (Some(o), Some(n)) => out.push(format!("{at}/{key}: {verb} from {o} to {n}")),
        (None, _) => out.push(format!("{at}/{key}: added")),
        (Some(_), None) => out.push(format!("{at}/{key}: is not a number")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn breaks(old: Value, new: Value) -> Vec<String> {
        breaking_changes(&old, &new)
    }

    #[test]
    fn adding_an_optional_field_or_widening_is_compatible() {
        let v1 = json!({"type": "object", "properties": {"id": {"type": "integer"}}, "required": ["id"]});
        let v2 = json!({
            "type": "object",
            "description": "an order",
            "properties": {"id": {"type": ["number", "string"]}, "note": {"type": "string"}},
            "required": []
        });
        assert_eq!(breaks(v1, v2), Vec::<String>::new());
    }

    #[test]
    fn a_new_required_field_breaks() {
        let v1 = json!({"type": "object", "properties": {"id": {"type": "integer"}}});
        let v2 = json!({"type": "object", "properties": {"id": {"type": "integer"}, "sku": {"type": "string"}}, "required": ["sku"]});
        let b = breaks(v1, v2);
        assert_eq!(b.len(), 1, "{b:?}");
        assert!(
            b[0].starts_with("#/required: \"sku\" became required"),
            "{b:?}"
        );
    }

    #[test]
    fn narrowing_a_field_breaks_and_names_where() {
        let v1 = json!({"properties": {"qty": {"type": "number", "maximum": 100}, "state": {"enum": ["a", "b"]}}});
        let v2 = json!({"properties": {"qty": {"type": "integer", "maximum": 10}, "state": {"enum": ["a"]}}});
        let b = breaks(v1, v2);
        assert!(
            b.contains(&"#/properties/qty/type: no longer accepts number".to_string()),
            "{b:?}"
        );
        assert!(
            b.contains(&"#/properties/qty/maximum: lowered from 100 to 10".to_string()),
            "{b:?}"
        );
        assert!(
            b.contains(&"#/properties/state/enum: no longer lists \"b\"".to_string()),
            "{b:?}"
        );
        assert_eq!(b.len(), 3, "{b:?}");
    }

    #[test]
    fn closing_the_object_or_dropping_a_field_from_a_closed_one_breaks() {
        let open = json!({"properties": {"a": {"type": "string"}}});
        let closed =
            json!({"properties": {"a": {"type": "string"}}, "additionalProperties": false});
        assert_eq!(breaks(open.clone(), closed.clone()).len(), 1);
        let dropped = json!({"properties": {}, "additionalProperties": false});
        let b = breaks(closed, dropped);
        assert_eq!(
            b,
            vec!["#/properties/a: the new schema accepts nothing".to_string()]
        );
        // Dropping a field from an open object lets it through as an additional property.
        assert!(breaks(open, json!({})).is_empty());
    }

    #[test]
    fn unknown_keywords_must_stay_the_same() {
        let v1 = json!({"oneOf": [{"type": "string"}, {"type": "number"}]});
        assert!(breaks(v1.clone(), v1.clone()).is_empty());
        let v2 = json!({"oneOf": [{"type": "string"}]});
        let b = breaks(v1.clone(), v2);
        assert_eq!(b.len(), 1);
        assert!(b[0].contains("\"oneOf\" are not checked"), "{b:?}");
        // Removing it only loosens.
        assert!(breaks(v1, json!({})).is_empty());
    }

    #[test]
    fn bounds_and_items() {
        let v1 =
            json!({"type": "array", "items": {"type": "string", "minLength": 2}, "maxItems": 5});
        let v2 =
            json!({"type": "array", "items": {"type": "string", "minLength": 1}, "maxItems": 9});
        assert!(breaks(v1.clone(), v2).is_empty());
        let v3 = json!({"type": "array", "items": {"type": "string", "minLength": 3, "pattern": "^a"}, "minItems": 1});
        let b = breaks(v1, v3);
        assert!(
            b.contains(&"#/items/minLength: raised from 2 to 3".to_string()),
            "{b:?}"
        );
        assert!(
            b.contains(&"#/items/pattern: added or changed".to_string()),
            "{b:?}"
        );
        assert!(b.contains(&"#/minItems: added".to_string()), "{b:?}");
    }

    #[test]
    fn boolean_schemas() {
        assert!(breaks(json!(false), json!({"type": "string"})).is_empty());
        assert!(breaks(json!({"type": "string"}), json!(true)).is_empty());
        assert_eq!(breaks(json!(true), json!(false)).len(), 1);
        assert_eq!(breaks(json!(true), json!({"type": "string"})).len(), 1);
    }
}

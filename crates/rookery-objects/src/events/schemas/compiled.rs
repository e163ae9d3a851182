//! A registered JSON Schema, compiled once and checked against events' data.
//!
//! Schemas are compiled by `boon` (drafts 4, 6, 7, 2019-09 and 2020-12; 2020-12 when `$schema`
//! is absent). A schema may refer only to itself and to the drafts' meta-schemas: the compiler
//! is given a loader that refuses every other URL, so registering a schema can never make the
//! server read a file or reach the network.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Where a registered schema lives, as far as `$id`-less references are concerned.
const LOCATION: &str = "urn:rookery:event-schema";

/// Violations listed per refused event, at most.
pub const MAX_VIOLATIONS: usize = 100;

/// One way an event's data fails its schema.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violation {
    /// The JSON Pointer of the offending value inside `data` (`""` for `data` itself).
    pub path: String,
    /// What is wrong with it.
    pub message: String,
}

/// A schema ready to validate with.
pub struct CompiledSchema {
    schemas: boon::Schemas,
    index: boon::SchemaIndex,
}

impl std::fmt::Debug for CompiledSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CompiledSchema")
    }
}

/// Refuses every URL: a registered schema reaches no file and no network.
struct NoLoader;

impl boon::UrlLoader for NoLoader {
    fn load(&self, url: &str) -> Result<Value, Box<dyn std::error::Error>> {
        Err(format!("{url} is not available: a schema may refer only to itself").into())
    }
}

impl CompiledSchema {
    /// Compiles `schema`, or says why it is not a usable JSON Schema.
    pub fn compile(schema: &Value) -> Result<Self, String> {
        if !matches!(schema, Value::Object(_) | Value::Bool(_)) {
            return Err("a JSON Schema is an object or a boolean".into());
        }
        let mut compiler = boon::Compiler::new();
        compiler.use_loader(Box::new(NoLoader));
        compiler
            .add_resource(LOCATION, schema.clone())
            .map_err(|e| e.to_string())?;
        let mut schemas = boon::Schemas::new();
        let index = compiler
            .compile(LOCATION, &mut schemas)
            .map_err(|e| e.to_string())?;
        Ok(Self { schemas, index })
    }

    /// Every way `data` fails the schema (at most [`MAX_VIOLATIONS`]); empty when it is valid.
    pub fn violations(&self, data: &Value) -> Vec<Violation> {
        let Err(error) = self.schemas.validate(data, self.index) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        leaves(&error, &mut out);
        out
    }
}

/// The innermost errors of `error`: each is one concrete reason, where the outer ones only
/// group them ("allOf failed", "properties failed").
fn leaves(error: &boon::ValidationError<'_, '_>, out: &mut Vec<Violation>) {
    if out.len() >= MAX_VIOLATIONS {
        return;
    }
    if error.causes.is_empty() {
        out.push(Violation {
            path: error.instance_location.to_string(),
            message: error.kind.to_string(),
        });
        return;
    }
    for cause in &error.causes {
        leaves(cause, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lists_every_violation_with_its_path() {
        let schema = CompiledSchema::compile(&json!({
            "type": "object",
            "properties": {
                "id": {"type": "integer"},
                "email": {"type": "string", "maxLength": 5},
                "items": {"type": "array", "items": {"type": "string"}}
            },
            "required": ["id", "sku"]
        }))
        .unwrap();
        assert!(schema.violations(&json!({"id": 1, "sku": "x"})).is_empty());
        let v =
            schema.violations(&json!({"id": "one", "email": "long@example", "items": ["a", 2]}));
        let paths: Vec<&str> = v.iter().map(|v| v.path.as_str()).collect();
        assert_eq!(v.len(), 4, "{v:?}");
        for want in ["", "/id", "/email", "/items/1"] {
            assert!(paths.contains(&want), "{want} missing from {v:?}");
        }
        let missing = v.iter().find(|v| v.path.is_empty()).unwrap();
        assert!(missing.message.contains("sku"), "{missing:?}");
    }

    #[test]
    fn refuses_bad_schemas_and_outside_references() {
        assert!(CompiledSchema::compile(&json!(3)).is_err());
        assert!(CompiledSchema::compile(&json!({"type": "no-such-type"})).is_err());
        let e = CompiledSchema::compile(&json!({"$ref": "file:///etc/passwd"})).unwrap_err();
        assert!(e.contains("/etc/passwd"), "{e}");
        let e =
            CompiledSchema::compile(&json!({"$ref": "https://example.com/s.json"})).unwrap_err();
        assert!(e.contains("example.com"), "{e}");
        // Local references and the drafts' meta-schemas work.
        let s = CompiledSchema::compile(&json!({
            "$schema": "http://json-schema.org/draft-07/schema#",
            "definitions": {"n": {"type": "number"}},
            "properties": {"x": {"$ref": "#/definitions/n"}}
        }))
        .unwrap();
        assert_eq!(s.violations(&json!({"x": "a"})).len(), 1);
        assert!(
            CompiledSchema::compile(&json!(true))
                .unwrap()
                .violations(&json!(1))
                .is_empty()
        );
    }
}

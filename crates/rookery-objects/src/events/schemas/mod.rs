//! events.do's schema registry on Rookery (issue 16, item 2; seed 003's `SchemaRegistryDO`):
//! one `SchemaRegistry` object per event namespace keeps a JSON Schema per event type, in
//! numbered versions, and validates events' `data` against the latest one.
//!
//! - `compiled`: compiling a schema and listing every violation of an event.
//! - `compat`: the rules a new version must keep to be registered (backward compatibility).
//!
//! HTTP (the route rewrites `/schemas/:namespace…` to `/schemas…`; docs/EVENTS.md):
//!
//! | request | answer |
//! | --- | --- |
//! | `GET /schemas` | `{namespace, types: [{type, latest, versions}]}` |
//! | `POST /schemas/<type>` with a JSON Schema as the body | `201 {type, version, created}`; `200` with `"unchanged": true` when it equals the latest; `400` when it is not a usable schema; `409 {breaking: [...]}` when it is not backward compatible |
//! | `GET /schemas/<type>` | the latest version `{type, version, created, schema}` |
//! | `GET /schemas/<type>/versions` | `{type, versions: [{version, created}]}` |
//! | `GET /schemas/<type>/versions/<n>` | that version |
//! | `POST /schemas/<type>/validate` with data as the body | `{valid, version, violations}` |
//!
//! Publishing asks [`SchemaCheck::validate`] through a typed call. A type without a schema
//! passes unless `EVENTS_REQUIRE_SCHEMA` is `true`.

mod compat;
mod compiled;

use std::collections::HashMap;
use std::sync::Arc;

use rookery::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::pattern::{MAX_TYPE_BYTES, validate_type};
use crate::config_var::var;
use crate::input::{error, json_error, method_not_allowed, not_found};
use crate::sql_tables::Tables;

pub use compat::breaking_changes;
pub use compiled::{CompiledSchema, MAX_VIOLATIONS, Violation};

/// The versions table.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS sr_versions (
  type TEXT NOT NULL,
  version INTEGER NOT NULL,
  created INTEGER NOT NULL,
  schema TEXT NOT NULL,
  PRIMARY KEY (type, version)
) WITHOUT ROWID;
";

/// The registry's answer about one event's data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Validation {
    /// Whether the data may be published.
    pub valid: bool,
    /// The schema version that decided, if the type has one.
    pub version: Option<i64>,
    /// Every violation found (at most [`MAX_VIOLATIONS`]); with `valid` and no version, why
    /// an unregistered type was refused.
    pub violations: Vec<Violation>,
}

/// The registry as a typed service.
#[rookery::service]
pub trait SchemaCheck {
    /// Checks `data_json` (the event's `data` as JSON text: typed calls carry no free-form
    /// JSON values) against the latest schema of `event_type`.
    async fn validate(
        &mut self,
        event_type: String,
        data_json: String,
    ) -> rookery::Result<Validation>;
}

/// Bounds, from `[vars]`.
#[derive(Debug, Clone, Copy)]
struct Limits {
    /// Largest schema (`EVENTS_MAX_SCHEMA_BYTES`, 64 KiB).
    max_schema_bytes: usize,
    /// Event types with schemas per namespace (`EVENTS_MAX_SCHEMA_TYPES`, 1 000).
    max_types: i64,
    /// Versions kept per type (`EVENTS_MAX_SCHEMA_VERSIONS`, 1 000).
    max_versions: i64,
    /// Whether a type without a schema is refused (`EVENTS_REQUIRE_SCHEMA`, false).
    require_schema: bool,
}

impl Limits {
    fn from_env(env: &Env) -> Self {
        Self {
            max_schema_bytes: var(env, "EVENTS_MAX_SCHEMA_BYTES", 64 * 1024, 64, 1024 * 1024),
            max_types: var(env, "EVENTS_MAX_SCHEMA_TYPES", 1_000, 1, 100_000),
            max_versions: var(env, "EVENTS_MAX_SCHEMA_VERSIONS", 1_000, 1, 100_000),
            require_schema: env
                .var("EVENTS_REQUIRE_SCHEMA")
                .is_some_and(|v| matches!(v.trim_matches('"'), "true" | "1")),
        }
    }
}

/// The latest version of a type, compiled.
struct Latest {
    version: i64,
    compiled: Arc<CompiledSchema>,
}

/// One namespace's event schemas.
pub struct SchemaRegistry {
    state: ObjectState,
    limits: Limits,
    /// The class's SQL tables, made once per instance.
    tables: Tables,
    /// Compiled latest versions, filled as types are asked about; `None` = no schema.
    cache: HashMap<String, Option<Latest>>,
}

/// A stored version.
#[derive(Debug, Clone, Serialize)]
struct Version {
    #[serde(rename = "type")]
    event_type: String,
    version: i64,
    created: i64,
    schema: Value,
}

fn bad_request(message: impl Into<String>) -> Response {
    error(StatusCode::BAD_REQUEST, &message.into())
}

impl SchemaRegistry {
    fn ensure_schema(&mut self) -> Result<()> {
        self.tables.ensure(&self.state, SCHEMA)
    }

    /// The stored version `version` of `event_type`, or the latest with `None`.
    fn version(&self, event_type: &str, version: Option<i64>) -> Result<Option<Version>> {
        let sql = self.state.storage().sql();
        let cursor = match version {
            Some(v) => sql.exec(
                "SELECT version, created, schema FROM sr_versions WHERE type = ? AND version = ?",
                &[event_type.into(), v.into()],
            )?,
            None => sql.exec(
                "SELECT version, created, schema FROM sr_versions WHERE type = ?
                  ORDER BY version DESC LIMIT 1",
                &[event_type.into()],
            )?,
        };
        let Some(row) = cursor.rows().next() else {
            return Ok(None);
        };
        let text: String = row.get("schema")?;
        let schema = serde_json::from_str(&text).map_err(|e| {
            Error::msg(format!(
                "a stored schema of {event_type} does not parse: {e}"
            ))
        })?;
        Ok(Some(Version {
            event_type: event_type.to_string(),
            version: row.get("version")?,
            created: row.get("created")?,
            schema,
        }))
    }

    /// The compiled latest version of `event_type`, from the cache or storage.
    fn latest(&mut self, event_type: &str) -> Result<Option<(i64, Arc<CompiledSchema>)>> {
        if let Some(known) = self.cache.get(event_type) {
            return Ok(known.as_ref().map(|l| (l.version, l.compiled.clone())));
        }
        let latest = match self.version(event_type, None)? {
            None => None,
            Some(v) => {
                // It compiled when it was registered; the same compiler must take it again.
                let compiled = CompiledSchema::compile(&v.schema).map_err(|e| {
                    Error::msg(format!("stored schema {event_type} v{}: {e}", v.version))
                })?;
                Some(Latest {
                    version: v.version,
                    compiled: Arc::new(compiled),
                })
            }
        };
        let answer = latest.as_ref().map(|l| (l.version, l.compiled.clone()));
        // The cache holds at most the registry's bound of types, plus types asked about
        // without a schema: forget those first when it grows.
        if self.cache.len() >= 2 * usize::try_from(self.limits.max_types).unwrap_or(1_000) {
            self.cache.retain(|_, v| v.is_some());
        }
        self.cache.insert(event_type.to_string(), latest);
        Ok(answer)
    }

    fn check(&mut self, event_type: &str, data: &Value) -> Result<Validation> {
        match self.latest(event_type)? {
            Some((version, compiled)) => {
                let violations = compiled.violations(data);
                Ok(Validation {
                    valid: violations.is_empty(),
                    version: Some(version),
                    violations,
                })
            }
            None if self.limits.require_schema => Ok(Validation {
                valid: false,
                version: None,
                violations: vec![Violation {
                    path: String::new(),
                    message: format!(
                        "event type {event_type} has no registered schema, and this namespace \
                         requires one (EVENTS_REQUIRE_SCHEMA)"
                    ),
                }],
            }),
            None => Ok(Validation {
                valid: true,
                version: None,
                violations: Vec::new(),
            }),
        }
    }

    /// `GET /schemas`.
    fn list(&self) -> Result<Response> {
        let cursor = self.state.storage().sql().exec(
            "SELECT type, MAX(version) AS latest, COUNT(*) AS versions FROM sr_versions
              GROUP BY type ORDER BY type",
            &[],
        )?;
        let mut types = Vec::with_capacity(cursor.len());
        for row in cursor.rows() {
            types.push(json!({
                "type": row.get::<String>("type")?,
                "latest": row.get::<i64>("latest")?,
                "versions": row.get::<i64>("versions")?,
            }));
        }
        let namespace = self.state.id().name().unwrap_or_default();
        Response::json(&json!({ "namespace": namespace, "types": types }))
    }

    /// `POST /schemas/<type>`.
    fn register(&mut self, event_type: &str, req: &Request) -> Result<Response> {
        let max = self.limits.max_schema_bytes;
        if req.body().len() > max {
            return Ok(json_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &json!({
                    "error": format!("the schema is {} bytes; at most {max} are taken", req.body().len()),
                    "limit": "EVENTS_MAX_SCHEMA_BYTES",
                }),
            ));
        }
        let schema: Value = match serde_json::from_slice(req.body()) {
            Ok(v) => v,
            Err(e) => return Ok(bad_request(format!("the body must be a JSON Schema: {e}"))),
        };
        if let Err(e) = CompiledSchema::compile(&schema) {
            return Ok(bad_request(format!("not a usable JSON Schema: {e}")));
        }
        let previous = self.version(event_type, None)?;
        let now = self.state.now_ms();
        let version = match &previous {
            Some(p) if p.schema == schema => {
                return Response::json(&json!({
                    "type": event_type, "version": p.version, "created": p.created, "unchanged": true,
                }));
            }
            Some(p) => {
                let breaking = breaking_changes(&p.schema, &schema);
                if !breaking.is_empty() {
                    return Ok(json_error(
                        StatusCode::CONFLICT,
                        &json!({
                            "error": format!(
                                "the schema is not backward compatible with version {} of {event_type}",
                                p.version
                            ),
                            "type": event_type,
                            "latest": p.version,
                            "breaking": breaking,
                        }),
                    ));
                }
                if p.version >= self.limits.max_versions {
                    return Ok(json_error(
                        StatusCode::CONFLICT,
                        &json!({
                            "error": format!("{event_type} already has {} versions", p.version),
                            "limit": "EVENTS_MAX_SCHEMA_VERSIONS",
                        }),
                    ));
                }
                p.version + 1
            }
            None => {
                let cursor = self
                    .state
                    .storage()
                    .sql()
                    .exec("SELECT COUNT(DISTINCT type) AS n FROM sr_versions", &[])?;
                let types: i64 = cursor.one()?.get("n")?;
                if types >= self.limits.max_types {
                    return Ok(json_error(
                        StatusCode::CONFLICT,
                        &json!({
                            "error": format!("this namespace already has schemas for {types} event types"),
                            "limit": "EVENTS_MAX_SCHEMA_TYPES",
                        }),
                    ));
                }
                1
            }
        };
        self.state.storage().sql().exec(
            "INSERT INTO sr_versions (type, version, created, schema) VALUES (?, ?, ?, ?)",
            &[
                event_type.into(),
                version.into(),
                now.into(),
                schema.to_string().into(),
            ],
        )?;
        self.cache.remove(event_type);
        Ok(Response::json_bytes(
            json!({ "type": event_type, "version": version, "created": now }).to_string(),
        )
        .with_status(StatusCode::CREATED))
    }

    /// `GET /schemas/<type>/versions`.
    fn versions(&self, event_type: &str) -> Result<Response> {
        let cursor = self.state.storage().sql().exec(
            "SELECT version, created FROM sr_versions WHERE type = ? ORDER BY version",
            &[event_type.into()],
        )?;
        if cursor.is_empty() {
            return Ok(no_schema(event_type));
        }
        let mut versions = Vec::with_capacity(cursor.len());
        for row in cursor.rows() {
            versions.push(json!({
                "version": row.get::<i64>("version")?,
                "created": row.get::<i64>("created")?,
            }));
        }
        Response::json(&json!({ "type": event_type, "versions": versions }))
    }

    fn show(&self, event_type: &str, version: Option<i64>) -> Result<Response> {
        match self.version(event_type, version)? {
            Some(v) => Response::json(&v),
            None => Ok(no_schema(event_type)),
        }
    }

    /// `POST /schemas/<type>/validate`.
    fn validate_http(&mut self, event_type: &str, req: &Request) -> Result<Response> {
        let data: Value = match serde_json::from_slice(req.body()) {
            Ok(v) => v,
            Err(e) => return Ok(bad_request(format!("the body must be JSON: {e}"))),
        };
        let verdict = self.check(event_type, &data)?;
        Response::json(&verdict)
    }
}

fn no_schema(event_type: &str) -> Response {
    json_error(
        StatusCode::NOT_FOUND,
        &json!({ "error": format!("no schema is registered for {event_type}") }),
    )
}

impl SchemaCheck for SchemaRegistry {
    async fn validate(&mut self, event_type: String, data_json: String) -> Result<Validation> {
        self.ensure_schema()?;
        if event_type.len() > MAX_TYPE_BYTES || validate_type(&event_type).is_err() {
            return Err(Error::bad_request(format!(
                "{event_type:?} is not an event type"
            )));
        }
        let data: Value = serde_json::from_str(&data_json)
            .map_err(|e| Error::bad_request(format!("data is not JSON: {e}")))?;
        self.check(&event_type, &data)
    }
}

impl DurableObject for SchemaRegistry {
    fn new(state: ObjectState, env: Env) -> Self {
        Self {
            state,
            limits: Limits::from_env(&env),
            tables: Tables::default(),
            cache: HashMap::new(),
        }
    }

    async fn fetch(&mut self, req: Request) -> Result<Response> {
        self.ensure_schema()?;
        let method = req.method().clone();
        let path = req.path().trim_end_matches('/').to_string();
        let Some(rest) = path.strip_prefix("/schemas") else {
            return Ok(not_found());
        };
        let parts: Vec<&str> = rest.split('/').skip(1).collect();
        let event_type = parts.first().copied().unwrap_or_default();
        if !event_type.is_empty()
            && let Err(e) = validate_type(event_type)
        {
            return Ok(bad_request(format!(
                "{event_type:?} is not an event type: {e}"
            )));
        }
        match (parts.as_slice(), &method) {
            ([], m) if *m == Method::GET => self.list(),
            ([], _) => Ok(method_not_allowed("GET")),
            ([_], m) if *m == Method::POST || *m == Method::PUT => self.register(event_type, &req),
            ([_], m) if *m == Method::GET => self.show(event_type, None),
            ([_], _) => Ok(method_not_allowed("GET, POST, PUT")),
            ([_, "versions"], m) if *m == Method::GET => self.versions(event_type),
            ([_, "versions", n], m) if *m == Method::GET => match n.parse::<i64>() {
                Ok(n) if n >= 1 => self.show(event_type, Some(n)),
                _ => Ok(bad_request(format!("{n:?} is not a version number"))),
            },
            ([_, "validate"], m) if *m == Method::POST => self.validate_http(event_type, &req),
            ([_, "versions", ..] | [_, "validate"], _) => Ok(method_not_allowed("GET or POST")),
            _ => Ok(not_found()),
        }
    }

    async fn call(&mut self, call: Call) -> Result<Reply> {
        SchemaCheck::serve(self, call).await
    }
}

//! A JSON key-value store over HTTP: the storage API of one object, for tools and tests.
//!
//! | request | effect |
//! | --- | --- |
//! | `GET /KEY` | the value, or 404 |
//! | `PUT /KEY` with a JSON body | stores it |
//! | `DELETE /KEY` | `{"deleted": bool}` |
//! | `GET /?prefix=&start=&start_after=&end=&limit=&reverse=` | `{"entries": [{"key", "value"}]}` |
//! | `POST /` with `{"put": {KEY: VALUE}, "delete": [KEY], "ttl_ms": N}` | applies all of it in one turn |
//!
//! `PUT /KEY?ttl_ms=N` (or `ttl_ms` in a batch) makes the keys expire N ms later: the object's
//! alarm deletes them, within milliseconds of their time and also after a restart. Until the
//! alarm has run, an expired key can still be read. Writing a key again without `ttl_ms`
//! makes it permanent.

use rookery::prelude::*;
use serde_json::{Value, json};

/// A key-value store object.
pub struct KvStore {
    state: ObjectState,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Batch {
    #[serde(default)]
    put: serde_json::Map<String, Value>,
    #[serde(default)]
    delete: Vec<String>,
    #[serde(default)]
    ttl_ms: Option<i64>,
}

/// Expired keys deleted per alarm run; more wait for the next run, right after.
const EXPIRE_BATCH: i64 = 1_000;

/// Decodes `%XX` escapes of a key taken from the path or query.
fn decode(raw: &str) -> Result<String> {
    rookery::percent_decode(raw).ok_or_else(|| Error::bad_request("the key is not valid UTF-8"))
}

impl KvStore {
    fn ensure_expiry_table(&self) -> Result<()> {
        self.state.storage().sql().exec(
            "CREATE TABLE IF NOT EXISTS kv_expiry (key TEXT PRIMARY KEY, at INTEGER NOT NULL) WITHOUT ROWID;
             CREATE INDEX IF NOT EXISTS kv_expiry_at ON kv_expiry (at);",
            &[],
        )?;
        Ok(())
    }

    /// Records when `key` expires (`None`: never) and makes sure the alarm is early enough.
    fn set_expiry(&self, key: &str, ttl_ms: Option<i64>) -> Result<()> {
        let sql = self.state.storage().sql();
        match ttl_ms {
            None => {
                sql.exec("DELETE FROM kv_expiry WHERE key = ?", &[key.into()])?;
            }
            Some(ttl) if ttl > 0 => {
                let at = self.state.now_ms().saturating_add(ttl);
                sql.exec(
                    "INSERT OR REPLACE INTO kv_expiry (key, at) VALUES (?, ?)",
                    &[key.into(), at.into()],
                )?;
                let storage = self.state.storage();
                if storage.get_alarm()?.is_none_or(|current| current > at) {
                    storage.set_alarm(at)?;
                }
            }
            Some(_) => return Err(Error::bad_request("ttl_ms must be positive")),
        }
        Ok(())
    }

    fn list(&self, req: &Request) -> Result<Response> {
        let text = |name: &str| req.query_raw(name).map(decode).transpose();
        let options = ListOptions {
            prefix: text("prefix")?,
            start: text("start")?,
            start_after: text("start_after")?,
            end: text("end")?,
            limit: req.query("limit")?,
            reverse: req.query("reverse")?.unwrap_or(false),
        };
        let entries: Vec<(String, Value)> = self.state.storage().list(&options)?;
        let entries: Vec<Value> = entries
            .into_iter()
            .map(|(key, value)| json!({ "key": key, "value": value }))
            .collect();
        Response::json(&json!({ "entries": entries }))
    }

    fn batch(&self, req: &Request) -> Result<Response> {
        let batch: Batch = req.json()?;
        let storage = self.state.storage();
        let puts: Vec<(&String, &Value)> = batch.put.iter().collect();
        for chunk in puts.chunks(storage.limits().max_batch_keys) {
            storage.put_many(chunk)?;
        }
        for key in batch.put.keys() {
            self.set_expiry(key, batch.ttl_ms)?;
        }
        let mut deleted = 0;
        for chunk in batch.delete.chunks(storage.limits().max_batch_keys) {
            deleted += storage.delete_many(chunk)?;
        }
        for key in &batch.delete {
            self.set_expiry(key, None)?;
        }
        Response::json(&json!({ "ok": true, "put": puts.len(), "deleted": deleted }))
    }
}

impl DurableObject for KvStore {
    fn new(state: ObjectState, _env: Env) -> Self {
        Self { state }
    }

    async fn fetch(&mut self, req: Request) -> Result<Response> {
        if *req.method() != Method::GET {
            self.ensure_expiry_table()?;
        }
        let path = req.path();
        if path == "/" {
            return match *req.method() {
                Method::GET => self.list(&req),
                Method::POST => self.batch(&req),
                _ => Ok(Response::error(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "Method not allowed",
                )),
            };
        }
        let key = decode(&path[1..])?;
        let storage = self.state.storage();
        match *req.method() {
            Method::GET => match storage.get_raw(&key)? {
                Some(value) => Ok(Response::json_bytes(value)),
                None => Ok(Response::not_found()),
            },
            Method::PUT => {
                let value: Value = req.json()?;
                storage.put(&key, &value)?;
                self.set_expiry(&key, req.query("ttl_ms")?)?;
                Response::json(&json!({ "ok": true }))
            }
            Method::DELETE => {
                let deleted = storage.delete(&key)?;
                self.set_expiry(&key, None)?;
                Response::json(&json!({ "deleted": deleted }))
            }
            _ => Ok(Response::error(
                StatusCode::METHOD_NOT_ALLOWED,
                "Method not allowed",
            )),
        }
    }

    async fn alarm(&mut self, _info: AlarmInfo) -> Result<()> {
        self.expire()
    }
}

impl KvStore {
    /// Deletes the keys whose time has come and sets the alarm for the next.
    fn expire(&self) -> Result<()> {
        self.ensure_expiry_table()?;
        let storage = self.state.storage();
        let sql = storage.sql();
        let now = self.state.now_ms();
        let due = sql.exec(
            "SELECT key FROM kv_expiry WHERE at <= ? ORDER BY at LIMIT ?",
            &[now.into(), EXPIRE_BATCH.into()],
        )?;
        let keys: Vec<String> = due.rows().map(|r| r.get(0)).collect::<Result<_>>()?;
        for chunk in keys.chunks(storage.limits().max_batch_keys) {
            storage.delete_many(chunk)?;
        }
        for key in &keys {
            sql.exec(
                "DELETE FROM kv_expiry WHERE key = ?",
                &[key.as_str().into()],
            )?;
        }
        let next = sql.exec("SELECT min(at) FROM kv_expiry", &[])?;
        match next.one()?.get::<Option<i64>>(0)? {
            Some(at) => storage.set_alarm(at),
            None => Ok(()),
        }
    }
}

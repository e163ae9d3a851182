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
//!
//! Values are kept as the JSON text the client sent (checked to be JSON, never re-encoded), so
//! integers beyond 64 bits and floats come back exactly as they went in.

use std::collections::BTreeMap;

use rookery::prelude::*;
use serde_json::json;
use serde_json::value::RawValue;

/// A key-value store object.
pub struct KvStore {
    state: ObjectState,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Batch {
    #[serde(default)]
    put: BTreeMap<String, Box<RawValue>>,
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
        #[derive(serde::Serialize)]
        struct Entry {
            key: String,
            // Written out as stored: a `serde_json::Value` would round big integers.
            value: Box<RawValue>,
        }
        #[derive(serde::Serialize)]
        struct Listing {
            entries: Vec<Entry>,
        }
        let entries = self
            .state
            .storage()
            .list::<Box<RawValue>>(&options)?
            .into_iter()
            .map(|(key, value)| Entry { key, value })
            .collect();
        Response::json(&Listing { entries })
    }

    fn batch(&self, req: &Request) -> Result<Response> {
        let batch: Batch = req.json()?;
        let storage = self.state.storage();
        let puts: Vec<(&String, &RawValue)> = batch
            .put
            .iter()
            .map(|(key, value)| (key, value.as_ref()))
            .collect();
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
                let value: Box<RawValue> = req.json()?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use rookery::testing::TestHarness;

    async fn send(h: &TestHarness, method: Method, uri: &str, body: &str) -> Response {
        let req = Request::from_parts(
            method,
            uri.parse().unwrap(),
            rookery::HeaderMap::new(),
            bytes_of(body),
        );
        h.fetch("kv", req).await.unwrap()
    }

    fn bytes_of(s: &str) -> rookery::Bytes {
        rookery::Bytes::copy_from_slice(s.as_bytes())
    }

    fn text(resp: &Response) -> &str {
        std::str::from_utf8(resp.body()).unwrap()
    }

    #[tokio::test]
    async fn numbers_come_back_exactly_as_sent() {
        let h = TestHarness::new::<KvStore>().unwrap();
        let values = [
            "123456789012345678901234567890",
            "-123456789012345678901234567890",
            "18446744073709551615",
            "18446744073709551616",
            "-9223372036854775809",
            "0.1",
            "1e400",
            "3.141592653589793238462643383279",
            "1.0",
            r#"{"n":123456789012345678901234567890,"f":2.50,"list":[18446744073709551616,-1e-400]}"#,
        ];
        for (i, v) in values.iter().enumerate() {
            let r = send(&h, Method::PUT, &format!("/k{i}"), v).await;
            assert_eq!(r.status(), StatusCode::OK, "PUT {v}: {}", text(&r));
            let r = send(&h, Method::GET, &format!("/k{i}"), "").await;
            assert_eq!(text(&r), *v, "GET gives back what PUT sent");
        }
        // A batch and a listing keep them too.
        let batch =
            r#"{"put":{"b1":98765432109876543210987654321,"b2":{"x":-18446744073709551617}}}"#;
        let r = send(&h, Method::POST, "/", batch).await;
        assert_eq!(r.status(), StatusCode::OK, "{}", text(&r));
        let r = send(&h, Method::GET, "/b1", "").await;
        assert_eq!(text(&r), "98765432109876543210987654321");
        let r = send(&h, Method::GET, "/?prefix=b", "").await;
        assert_eq!(
            text(&r),
            r#"{"entries":[{"key":"b1","value":98765432109876543210987654321},{"key":"b2","value":{"x":-18446744073709551617}}]}"#
        );
    }

    #[tokio::test]
    async fn values_that_are_not_json_are_refused() {
        let h = TestHarness::new::<KvStore>().unwrap();
        for bad in ["", "{oops", "1 2", "[1,]", "NaN"] {
            let r = h
                .fetch(
                    "kv",
                    Request::from_parts(
                        Method::PUT,
                        "/k".parse().unwrap(),
                        rookery::HeaderMap::new(),
                        bytes_of(bad),
                    ),
                )
                .await;
            let status = match r {
                Ok(r) => r.status(),
                Err(e) => e.status(),
            };
            assert_eq!(status, StatusCode::BAD_REQUEST, "{bad:?}");
        }
        let r = send(&h, Method::GET, "/k", "").await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "nothing was stored");
    }
}

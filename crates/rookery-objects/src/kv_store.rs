//! A JSON key-value store over HTTP: the storage API of one object, for tools and tests.
//!
//! | request | effect |
//! | --- | --- |
//! | `GET /KEY` | the value, or 404 |
//! | `PUT /KEY` with a JSON body | stores it |
//! | `DELETE /KEY` | `{"deleted": bool}` |
//! | `GET /?prefix=&start=&start_after=&end=&limit=&reverse=` | `{"entries": [{"key", "value"}]}` |
//! | `POST /` with `{"put": {KEY: VALUE}, "delete": [KEY]}` | applies all of it in one turn |

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
}

/// Decodes `%XX` escapes of a key taken from the path.
fn decode(raw: &str) -> Result<String> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(hi), Some(lo)) => {
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| Error::bad_request("the key is not valid UTF-8"))
}

impl KvStore {
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
        let mut deleted = 0;
        for chunk in batch.delete.chunks(storage.limits().max_batch_keys) {
            deleted += storage.delete_many(chunk)?;
        }
        Response::json(&json!({ "ok": true, "put": puts.len(), "deleted": deleted }))
    }
}

impl DurableObject for KvStore {
    fn new(state: ObjectState, _env: Env) -> Self {
        Self { state }
    }

    async fn fetch(&mut self, req: Request) -> Result<Response> {
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
                Response::json(&json!({ "ok": true }))
            }
            Method::DELETE => Response::json(&json!({ "deleted": storage.delete(&key)? })),
            _ => Ok(Response::error(
                StatusCode::METHOD_NOT_ALLOWED,
                "Method not allowed",
            )),
        }
    }
}

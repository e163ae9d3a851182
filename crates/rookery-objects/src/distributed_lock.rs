//! Seed 002's distributed lock, with fencing tokens: one object per lock namespace (the path's
//! name), any number of locks in it, by typed call ([`Lock`]) or HTTP:
//!
//! - `POST /acquire` `{lockId?, ttl, owner?}` → `{acquired, lockId, token, expiresAt,
//!   retryAfter}`. `lockId` defaults to the object's name. A grant's `token` is greater than
//!   every token granted before by this object, for any lock; a refusal has `token: null`, the
//!   holder's `expiresAt` and `retryAfter` ms.
//! - `POST /release` `{lockId?, token}` → `{released: true, lockId}`; a token that does not hold
//!   the lock (stale, or never granted) is 409 `{released: false, error}` and changes nothing.
//! - `GET /status?lockId=` → `{lockId, locked, token, owner, expiresAt}`.
//!
//! A lock is held until its holder releases it or its `ttl` passes; expiry is by the clock, so
//! a lock past its time is free at once, and the alarm deletes expired locks' records. Turns are
//! serial: however many callers ask at once, exactly one holds a free lock.

use rookery::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::input::{Body, InputError, method_not_allowed, not_found};

/// Longest lock id and owner, in bytes.
const MAX_ID_BYTES: usize = 512;
/// Longest lease: a day.
const MAX_TTL_MS: u64 = 24 * 3600 * 1000;
const LOCK: &str = "lock:";
const INDEX: &str = "x:";
const FENCE: &str = "fence";

/// The answer to an acquire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Acquired {
    /// Whether the caller now holds the lock.
    pub acquired: bool,
    /// The lock asked for.
    pub lock_id: String,
    /// The fencing token of the grant; `None` when refused.
    pub token: Option<u64>,
    /// When the lease ends (the caller's when acquired, the holder's when refused), ms since
    /// the epoch.
    pub expires_at: i64,
    /// Ms until the holder's lease ends; 0 when acquired.
    pub retry_after: i64,
}

/// A lock's current state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LockStatus {
    /// The lock.
    pub lock_id: String,
    /// Whether someone holds it now.
    pub locked: bool,
    /// The holder's fencing token.
    pub token: Option<u64>,
    /// The holder's owner name, if it gave one.
    pub owner: Option<String>,
    /// When the holder's lease ends.
    pub expires_at: Option<i64>,
}

/// What a lock call can refuse.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum LockError {
    /// The token does not hold the lock: it is stale (the lease ended, or a newer holder has
    /// it) or was never granted.
    #[error("token {token} does not hold lock {lock_id:?}")]
    NotHolder {
        /// The lock.
        lock_id: String,
        /// The token presented.
        token: u64,
    },
    /// A lock id or ttl out of range.
    #[error("{0}")]
    BadRequest(String),
    /// The runtime failed (storage); nothing was changed.
    #[error("{0}")]
    Runtime(String),
}

impl From<Error> for LockError {
    fn from(e: Error) -> Self {
        match e {
            Error::BadRequest(m) => Self::BadRequest(m),
            e => Self::Runtime(e.to_string()),
        }
    }
}

impl From<InputError> for LockError {
    fn from(e: InputError) -> Self {
        Self::BadRequest(e.to_string())
    }
}

/// The lock as a typed service.
#[rookery::service]
pub trait Lock {
    /// Takes `lock_id` for `ttl_ms` (1 ms to a day) if it is free or its lease has ended.
    async fn acquire(&mut self, lock_id: String, ttl_ms: u64) -> Result<Acquired, LockError>;
    /// Frees `lock_id` if `token` holds it; a stale token is [`LockError::NotHolder`].
    async fn release(&mut self, lock_id: String, token: u64) -> Result<(), LockError>;
    /// Who holds `lock_id`.
    async fn status(&mut self, lock_id: String) -> Result<LockStatus, LockError>;
}

/// One granted lease.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Lease {
    token: u64,
    expires_at: i64,
    owner: Option<String>,
}

fn index_key(at: i64, lock_id: &str) -> String {
    format!("{INDEX}{:020}:{lock_id}", at.max(0))
}

fn check_id(field: &'static str, id: &str) -> Result<(), InputError> {
    if id.is_empty() || id.len() > MAX_ID_BYTES {
        return Err(InputError::invalid(
            field,
            format!("must be a non-empty string of at most {MAX_ID_BYTES} bytes"),
        ));
    }
    Ok(())
}

/// A namespace of locks.
pub struct DistributedLock {
    state: ObjectState,
}

impl DistributedLock {
    fn lease(&self, lock_id: &str) -> Result<Option<Lease>> {
        self.state.storage().get(&format!("{LOCK}{lock_id}"))
    }

    fn grant(
        &mut self,
        lock_id: &str,
        ttl_ms: u64,
        owner: Option<String>,
    ) -> Result<Acquired, LockError> {
        check_id("lockId", lock_id)?;
        if !(1..=MAX_TTL_MS).contains(&ttl_ms) {
            return Err(InputError::invalid(
                "ttl",
                format!("must be an integer from 1 to {MAX_TTL_MS}"),
            )
            .into());
        }
        if let Some(owner) = &owner {
            check_id("owner", owner)?;
        }
        let now = self.state.now_ms();
        let storage = self.state.storage();
        let current = self.lease(lock_id)?;
        if let Some(lease) = current.as_ref().filter(|l| l.expires_at > now) {
            return Ok(Acquired {
                acquired: false,
                lock_id: lock_id.to_string(),
                token: None,
                expires_at: lease.expires_at,
                retry_after: lease.expires_at - now,
            });
        }
        if let Some(old) = current {
            storage.delete(&index_key(old.expires_at, lock_id))?;
        }
        let token = storage.get::<u64>(FENCE)?.unwrap_or(0) + 1;
        let expires_at = now.saturating_add(i64::try_from(ttl_ms).unwrap_or(i64::MAX));
        storage.put(FENCE, &token)?;
        storage.put(
            &format!("{LOCK}{lock_id}"),
            &Lease {
                token,
                expires_at,
                owner,
            },
        )?;
        storage.put(&index_key(expires_at, lock_id), &())?;
        if storage.get_alarm()?.is_none_or(|at| at > expires_at) {
            storage.set_alarm(expires_at)?;
        }
        Ok(Acquired {
            acquired: true,
            lock_id: lock_id.to_string(),
            token: Some(token),
            expires_at,
            retry_after: 0,
        })
    }

    fn free(&mut self, lock_id: &str, token: u64) -> Result<(), LockError> {
        check_id("lockId", lock_id)?;
        match self.lease(lock_id)? {
            Some(lease) if lease.token == token => {
                let storage = self.state.storage();
                storage.delete(&format!("{LOCK}{lock_id}"))?;
                storage.delete(&index_key(lease.expires_at, lock_id))?;
                Ok(())
            }
            _ => Err(LockError::NotHolder {
                lock_id: lock_id.to_string(),
                token,
            }),
        }
    }

    fn describe(&self, lock_id: &str) -> Result<LockStatus, LockError> {
        check_id("lockId", lock_id)?;
        let now = self.state.now_ms();
        let lease = self.lease(lock_id)?.filter(|l| l.expires_at > now);
        Ok(LockStatus {
            lock_id: lock_id.to_string(),
            locked: lease.is_some(),
            token: lease.as_ref().map(|l| l.token),
            owner: lease.as_ref().and_then(|l| l.owner.clone()),
            expires_at: lease.map(|l| l.expires_at),
        })
    }

    /// The lock a request names: its `lockId`, or the object's own name.
    fn lock_id(&self, body: &Body) -> Result<String, InputError> {
        if body.has("lockId") {
            body.string("lockId", MAX_ID_BYTES)
        } else {
            self.state
                .id()
                .name()
                .map(str::to_string)
                .ok_or(InputError::Missing("lockId"))
        }
    }

    fn http(&mut self, path: &str, req: &Request) -> Result<Response, LockError> {
        if path == "/status" {
            let lock_id = match req.query_raw("lockId") {
                Some(_) => req.query::<String>("lockId")?.unwrap_or_default(),
                None => self.state.id().name().unwrap_or_default().to_string(),
            };
            return Ok(Response::json(&self.describe(&lock_id)?)?);
        }
        let body = Body::parse(req)?;
        let lock_id = self.lock_id(&body)?;
        if path == "/acquire" {
            let ttl = body.integer("ttl", 1, MAX_TTL_MS)?;
            let owner = if body.has("owner") {
                Some(body.string("owner", MAX_ID_BYTES)?)
            } else {
                None
            };
            return Ok(Response::json(&self.grant(&lock_id, ttl, owner)?)?);
        }
        let token = body.integer("token", 1, u64::MAX)?;
        self.free(&lock_id, token)?;
        Ok(Response::json(
            &json!({ "released": true, "lockId": lock_id }),
        )?)
    }
}

impl Lock for DistributedLock {
    async fn acquire(&mut self, lock_id: String, ttl_ms: u64) -> Result<Acquired, LockError> {
        self.grant(&lock_id, ttl_ms, None)
    }

    async fn release(&mut self, lock_id: String, token: u64) -> Result<(), LockError> {
        self.free(&lock_id, token)
    }

    async fn status(&mut self, lock_id: String) -> Result<LockStatus, LockError> {
        self.describe(&lock_id)
    }
}

impl DurableObject for DistributedLock {
    fn new(state: ObjectState, _env: Env) -> Self {
        Self { state }
    }

    async fn fetch(&mut self, req: Request) -> Result<Response> {
        let path = req.path().to_string();
        let (method, allow) = match path.as_str() {
            "/acquire" | "/release" => (Method::POST, "POST"),
            "/status" => (Method::GET, "GET"),
            _ => return Ok(not_found()),
        };
        if req.method() != method {
            return Ok(method_not_allowed(allow));
        }
        // Input errors come back before anything is written, so answering them commits nothing.
        match self.http(&path, &req) {
            Ok(response) => Ok(response),
            Err(LockError::NotHolder { lock_id, token }) => Ok(Response::json(&json!({
                "released": false,
                "lockId": lock_id,
                "error": format!("token {token} does not hold the lock"),
            }))?
            .with_status(StatusCode::CONFLICT)),
            Err(LockError::BadRequest(message)) => {
                let field = ["lockId", "ttl", "token", "owner"]
                    .into_iter()
                    .find(|f| message.contains(&format!("\"{f}\"")));
                let body = match field {
                    Some(field) => json!({ "error": message, "field": field }),
                    None => json!({ "error": message }),
                };
                Ok(Response::json(&body)?.with_status(StatusCode::BAD_REQUEST))
            }
            Err(LockError::Runtime(message)) => Err(Error::msg(message)),
        }
    }

    async fn call(&mut self, call: Call) -> Result<Reply> {
        Lock::serve(self, call).await
    }

    async fn alarm(&mut self, _info: AlarmInfo) -> Result<()> {
        let storage = self.state.storage();
        let now = self.state.now_ms();
        let due_end = format!("{INDEX}{:020}", now.saturating_add(1).max(0));
        loop {
            let due = storage.list_raw(
                &ListOptions::new()
                    .prefix(INDEX)
                    .end(due_end.clone())
                    .limit(storage.limits().max_batch_keys),
            )?;
            if due.is_empty() {
                break;
            }
            for (index, _) in due {
                storage.delete(&index)?;
                let Some(lock_id) = index.get(INDEX.len() + 21..) else {
                    continue;
                };
                let key = format!("{LOCK}{lock_id}");
                if storage
                    .get::<Lease>(&key)?
                    .is_some_and(|l| l.expires_at <= now)
                {
                    storage.delete(&key)?;
                }
            }
        }
        let next = storage.list_raw(&ListOptions::new().prefix(INDEX).limit(1))?;
        if let Some(at) = next
            .first()
            .and_then(|(k, _)| k.get(INDEX.len()..INDEX.len() + 20))
            .and_then(|t| t.parse::<i64>().ok())
        {
            storage.set_alarm(at)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rookery::Clock;
    use rookery::testing::{PATIENCE, TestHarness};
    use serde_json::Value;
    use std::sync::Arc;
    use std::time::Duration;

    fn stub(h: &TestHarness) -> LockStub {
        h.namespace()
            .unwrap()
            .typed::<LockStub>()
            .get_by_name("jobs")
    }

    async fn post(h: &TestHarness, path: &str, body: Value) -> (u16, Value) {
        let r = h
            .fetch(
                "jobs",
                Request::post(path).unwrap().with_json(&body).unwrap(),
            )
            .await
            .unwrap();
        (r.status().as_u16(), r.json_body().unwrap())
    }

    #[tokio::test]
    async fn one_holder_at_a_time_and_every_grant_has_a_greater_token() {
        let h = TestHarness::new::<DistributedLock>().unwrap();
        let lock = stub(&h);
        let a = lock.acquire("a".into(), 10_000).await.unwrap();
        assert!(a.acquired);
        let refused = lock.acquire("a".into(), 10_000).await.unwrap();
        assert!(!refused.acquired);
        assert_eq!(refused.token, None);
        assert_eq!(
            (refused.expires_at, refused.retry_after),
            (a.expires_at, 10_000)
        );
        let b = lock.acquire("b".into(), 10_000).await.unwrap();
        assert!(
            b.acquired && b.token > a.token,
            "another lock, a greater token"
        );
        lock.release("a".into(), a.token.unwrap()).await.unwrap();
        assert!(!lock.status("a".into()).await.unwrap().locked);
        let again = lock.acquire("a".into(), 10_000).await.unwrap();
        assert!(again.acquired && again.token > b.token);
    }

    #[tokio::test]
    async fn a_stale_token_cannot_release_a_newer_holders_lock() {
        let h = TestHarness::new::<DistributedLock>().unwrap();
        let lock = stub(&h);
        let old = lock
            .acquire("a".into(), 1_000)
            .await
            .unwrap()
            .token
            .unwrap();
        // The lease ends by the clock: the lock is free at once, alarm or not.
        h.advance(Duration::from_millis(1_000));
        let new = lock
            .acquire("a".into(), 1_000)
            .await
            .unwrap()
            .token
            .unwrap();
        assert!(new > old);
        match lock.release("a".into(), old).await {
            Err(CallError::Object(LockError::NotHolder { token, .. })) => assert_eq!(token, old),
            other => panic!("a stale token released the lock: {other:?}"),
        }
        assert_eq!(lock.status("a".into()).await.unwrap().token, Some(new));
        lock.release("a".into(), new).await.unwrap();
        assert!(matches!(
            lock.release("a".into(), new).await,
            Err(CallError::Object(LockError::NotHolder { .. }))
        ));
        assert!(matches!(
            lock.acquire("a".into(), 0).await,
            Err(CallError::Object(LockError::BadRequest(m))) if m.contains("ttl")
        ));
    }

    #[tokio::test]
    async fn many_concurrent_acquires_make_exactly_one_holder() {
        let h = Arc::new(TestHarness::new::<DistributedLock>().unwrap());
        let tasks: Vec<_> = (0..100)
            .map(|_| {
                let h = h.clone();
                tokio::spawn(async move { stub(&h).acquire("x".into(), 60_000).await.unwrap() })
            })
            .collect();
        let mut holders = Vec::new();
        for t in tasks {
            let a = t.await.unwrap();
            if a.acquired {
                holders.push(a.token);
            }
        }
        assert_eq!(holders.len(), 1, "{holders:?}");
    }

    #[tokio::test]
    async fn the_alarm_deletes_expired_leases_and_tokens_keep_growing() {
        let h = TestHarness::new::<DistributedLock>().unwrap();
        let lock = stub(&h);
        let first = lock
            .acquire("a".into(), 5_000)
            .await
            .unwrap()
            .token
            .unwrap();
        lock.acquire("b".into(), 60_000).await.unwrap();
        assert_eq!(
            h.indexed_alarm("jobs").unwrap(),
            Some(h.clock().unwrap().now_ms() + 5_000)
        );
        h.advance(Duration::from_millis(5_000));
        let leases = || async {
            h.run("jobs", |s| {
                s.storage().list_raw(&ListOptions::new().prefix(LOCK))
            })
            .await
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect::<Vec<_>>()
        };
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while leases().await != ["lock:b"] {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the expired lease stayed"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let alarm = h.run("jobs", |s| s.storage().get_alarm()).await.unwrap();
        assert_eq!(
            alarm,
            Some(h.clock().unwrap().now_ms() + 55_000),
            "b's expiry is next"
        );
        let next = lock
            .acquire("a".into(), 5_000)
            .await
            .unwrap()
            .token
            .unwrap();
        assert!(next > first + 1, "tokens never restart after a cleanup");
    }

    #[tokio::test]
    async fn the_http_form_names_bad_fields_and_refuses_stale_tokens_with_409() {
        let h = TestHarness::new::<DistributedLock>().unwrap();
        // Without a lockId the lock is the object's own name.
        let (status, a) = post(&h, "/acquire", json!({"ttl": 30_000, "owner": "w1"})).await;
        assert_eq!(status, 200);
        assert_eq!(
            (a["acquired"].as_bool(), a["lockId"].as_str()),
            (Some(true), Some("jobs"))
        );
        let token = a["token"].as_u64().unwrap();
        let r = h
            .fetch("jobs", Request::get("/status").unwrap())
            .await
            .unwrap();
        let s: Value = r.json_body().unwrap();
        assert_eq!(
            (s["locked"].as_bool(), s["owner"].as_str()),
            (Some(true), Some("w1"))
        );
        let (status, r) = post(&h, "/release", json!({"token": token + 1})).await;
        assert_eq!(status, 409);
        assert_eq!(r["released"], false);
        for (path, body, field) in [
            ("/acquire", json!({}), "ttl"),
            ("/acquire", json!({"ttl": "soon"}), "ttl"),
            ("/acquire", json!({"ttl": 1, "lockId": ""}), "lockId"),
            ("/release", json!({"lockId": "jobs"}), "token"),
            ("/release", json!({"token": -1}), "token"),
        ] {
            let (status, r) = post(&h, path, body.clone()).await;
            assert_eq!(status, 400, "{path} {body}");
            assert_eq!(r["field"], field, "{path} {body}: {r}");
        }
        let (status, r) = post(&h, "/release", json!({"token": token})).await;
        assert_eq!((status, r["released"].as_bool()), (200, Some(true)));
        let r = h
            .fetch("jobs", Request::get("/acquire").unwrap())
            .await
            .unwrap();
        assert_eq!(r.status(), 405);
    }
}

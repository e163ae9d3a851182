//! A sliding-window-log rate limiter: `GET /?limit=N&window=MS`, or the typed call
//! [`Limiter::check`], admits at most `limit` requests in any `window` milliseconds.
//!
//! Every admitted request is stored under `req:<seq>`, where `seq` is strictly increasing (the
//! time in microseconds, or one more than the last), so requests within the same millisecond
//! never share a key and never slip past the limit. Requests only add entries; the object's
//! alarm removes the expired ones, at most once a second.

use std::collections::VecDeque;

use rookery::prelude::*;
use serde::{Deserialize, Serialize};

/// Most requests per window one limiter accepts as a limit; bounds its memory.
const MAX_LIMIT: usize = 100_000;
/// Cleanup runs no more often than this.
const MIN_CLEANUP_INTERVAL_MS: i64 = 1_000;
const PREFIX: &str = "req:";

/// What the limiter answers: whether the request may pass, how many more may within the
/// window, and when the oldest admitted request leaves it (ms since the epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    /// Whether the request may pass.
    pub allowed: bool,
    /// How many more requests may pass within the window.
    pub remaining: u64,
    /// When the oldest admitted request leaves the window, in ms since the epoch.
    pub reset: i64,
}

/// The limiter as a typed service.
#[rookery::service]
pub trait Limiter {
    /// Admits one request if fewer than `limit` (1 to 100 000) were admitted in the last
    /// `window_ms` milliseconds; other limits are a bad request.
    async fn check(&mut self, limit: u32, window_ms: u64) -> rookery::Result<Verdict>;
}

/// One client's request log.
pub struct RateLimiter {
    state: ObjectState,
    /// Admitted requests as (sequence, time in ms), oldest first; loaded on the first event.
    log: Option<VecDeque<(u64, i64)>>,
    /// The window the last request asked for, kept for the cleanup alarm.
    window: Option<i64>,
    /// Whether a cleanup alarm is known to be set.
    alarm_set: bool,
}

fn key(seq: u64) -> String {
    format!("{PREFIX}{seq:020}")
}

impl RateLimiter {
    fn load(&mut self) -> Result<()> {
        if self.log.is_none() {
            let storage = self.state.storage();
            let entries = storage.list::<i64>(&ListOptions::new().prefix(PREFIX))?;
            let mut log = VecDeque::with_capacity(entries.len());
            for (key, at) in entries {
                let seq = key[PREFIX.len()..]
                    .parse()
                    .map_err(|_| Error::msg(format!("malformed rate-limiter key {key:?}")))?;
                log.push_back((seq, at));
            }
            self.log = Some(log);
            self.window = storage.get("window")?;
            self.alarm_set = storage.get_alarm()?.is_some();
        }
        Ok(())
    }

    /// Makes sure a cleanup alarm is set for when the oldest entry expires.
    fn arm(&mut self, now: i64) -> Result<()> {
        let (Some(log), Some(window)) = (&self.log, self.window) else {
            return Ok(());
        };
        if self.alarm_set {
            return Ok(());
        }
        if let Some(&(_, oldest)) = log.front() {
            let at = (oldest + window).max(now + MIN_CLEANUP_INTERVAL_MS);
            self.state.storage().set_alarm(at)?;
            self.alarm_set = true;
        }
        Ok(())
    }
}

impl RateLimiter {
    /// Admits one request if fewer than `limit` were admitted in the last `window` ms.
    fn admit(&mut self, limit: usize, window: i64) -> Result<Verdict> {
        if limit == 0 || limit > MAX_LIMIT || window <= 0 {
            return Err(Error::bad_request(format!(
                "limit must be 1 to {MAX_LIMIT} and window at least 1 ms"
            )));
        }
        self.load()?;
        if self.window != Some(window) {
            self.state.storage().put("window", &window)?;
            self.window = Some(window);
        }
        let now = self.state.now_ms();
        let window_start = now - window;
        let log = self.log.get_or_insert_default();
        // Expired entries leave the in-memory log now and storage at the next cleanup.
        while log
            .front()
            .is_some_and(|&(_, at)| at < window_start || log.len() > limit)
        {
            log.pop_front();
        }
        let reset = log.front().map_or(now, |&(_, at)| at + window);
        if log.len() >= limit {
            return Ok(Verdict {
                allowed: false,
                remaining: 0,
                reset,
            });
        }
        let micros = u64::try_from(now).unwrap_or(0) * 1000;
        let seq = log.back().map_or(micros, |&(last, _)| micros.max(last + 1));
        self.state.storage().put(&key(seq), &now)?;
        log.push_back((seq, now));
        let remaining = u64::try_from(limit - log.len()).unwrap_or(u64::MAX);
        self.arm(now)?;
        Ok(Verdict {
            allowed: true,
            remaining,
            reset,
        })
    }
}

impl Limiter for RateLimiter {
    async fn check(&mut self, limit: u32, window_ms: u64) -> Result<Verdict> {
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        let window = i64::try_from(window_ms).unwrap_or(i64::MAX);
        self.admit(limit, window)
    }
}

impl DurableObject for RateLimiter {
    fn new(state: ObjectState, _env: Env) -> Self {
        Self {
            state,
            log: None,
            window: None,
            alarm_set: false,
        }
    }

    async fn fetch(&mut self, req: Request) -> Result<Response> {
        let limit: usize = req.query("limit")?.unwrap_or(100);
        let window: i64 = req.query("window")?.unwrap_or(60_000);
        match self.admit(limit, window) {
            Ok(verdict) if verdict.allowed => Response::json(&verdict),
            Ok(verdict) => Ok(Response::json(&verdict)?.with_status(StatusCode::TOO_MANY_REQUESTS)),
            // Nothing was written: the refusal is an answer, not a failed turn.
            Err(Error::BadRequest(message)) => {
                Ok(Response::error(StatusCode::BAD_REQUEST, &message))
            }
            Err(e) => Err(e),
        }
    }

    async fn call(&mut self, call: Call) -> Result<Reply> {
        Limiter::serve(self, call).await
    }

    async fn alarm(&mut self, _info: AlarmInfo) -> Result<()> {
        self.load()?;
        self.alarm_set = false;
        let now = self.state.now_ms();
        let Some(window) = self.window else {
            return Ok(());
        };
        // Keys sort by time: everything before the window's first key has expired.
        let cutoff = key(u64::try_from(now - window).unwrap_or(0) * 1000);
        let storage = self.state.storage();
        loop {
            let expired = storage.list_raw(
                &ListOptions::new()
                    .prefix(PREFIX)
                    .end(cutoff.clone())
                    .limit(storage.limits().max_batch_keys),
            )?;
            if expired.is_empty() {
                break;
            }
            let keys: Vec<&str> = expired.iter().map(|(k, _)| k.as_str()).collect();
            storage.delete_many(&keys)?;
        }
        if let Some(log) = &mut self.log {
            while log.front().is_some_and(|&(_, at)| at < now - window) {
                log.pop_front();
            }
        }
        self.arm(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rookery::testing::TestHarness;
    use std::time::Duration;

    async fn check(h: &TestHarness) -> (u16, serde_json::Value) {
        let r = h
            .fetch("ip", Request::get("/?limit=3&window=10000").unwrap())
            .await
            .unwrap();
        (r.status().as_u16(), r.json_body().unwrap())
    }

    #[tokio::test]
    async fn the_typed_check_is_the_same_limiter() {
        let h = TestHarness::new::<RateLimiter>().unwrap();
        let limiter = h
            .namespace()
            .unwrap()
            .typed::<LimiterStub>()
            .get_by_name("ip");
        let first = limiter.check(3, 10_000).await.unwrap();
        assert_eq!((first.allowed, first.remaining), (true, 2));
        // The HTTP form counts against the same log.
        assert_eq!(check(&h).await.1["remaining"], 1);
        assert_eq!(limiter.check(3, 10_000).await.unwrap().remaining, 0);
        let refused = limiter.check(3, 10_000).await.unwrap();
        assert_eq!((refused.allowed, refused.remaining), (false, 0));
        match limiter.check(0, 10_000).await {
            Err(CallError::Object(Error::BadRequest(m))) => assert!(m.contains("limit"), "{m}"),
            other => panic!("expected a bad request, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn the_window_slides_and_the_alarm_cleans_up() {
        let h = TestHarness::new::<RateLimiter>().unwrap();
        for remaining in [2, 1, 0] {
            let (status, body) = check(&h).await;
            assert_eq!((status, body["remaining"].as_u64()), (200, Some(remaining)));
        }
        assert_eq!(check(&h).await.0, 429);
        async fn stored(h: &TestHarness) -> usize {
            h.run("ip", |s| {
                s.storage()
                    .list_raw(&ListOptions::new().prefix(PREFIX))
                    .map(|l| l.len())
            })
            .await
            .unwrap()
        }
        assert_eq!(stored(&h).await, 3);
        // After the window, requests pass again and the alarm removes the old entries.
        h.advance(Duration::from_millis(10_001));
        assert_eq!(check(&h).await.0, 200);
        // The alarm came due with the clock: wait (bounded) for the cleanup.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while stored(&h).await != 1 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the old entries were never removed"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let alarm = h.run("ip", |s| s.storage().get_alarm()).await.unwrap();
        assert!(alarm.is_some(), "the next cleanup is scheduled");
    }
}

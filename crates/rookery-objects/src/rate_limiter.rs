//! A sliding-window-log rate limiter: `GET /?limit=N&window=MS` admits at most `limit` requests
//! in any `window` milliseconds.
//!
//! Every admitted request is stored under `req:<seq>`, where `seq` is strictly increasing (the
//! time in microseconds, or one more than the last), so requests within the same millisecond
//! never share a key and never slip past the limit.

use std::collections::VecDeque;

use rookery::prelude::*;
use serde_json::json;

use crate::now_ms;

/// Most requests per window one limiter accepts as a limit; bounds its memory.
const MAX_LIMIT: usize = 100_000;
const PREFIX: &str = "req:";

/// One client's request log.
pub struct RateLimiter {
    state: ObjectState,
    /// Admitted requests as (sequence, time in ms), oldest first; loaded on the first request.
    log: Option<VecDeque<(u64, u64)>>,
}

fn key(seq: u64) -> String {
    format!("{PREFIX}{seq:020}")
}

impl RateLimiter {
    fn load(&mut self) -> Result<&mut VecDeque<(u64, u64)>> {
        if self.log.is_none() {
            let entries = self
                .state
                .storage()
                .list::<u64>(&ListOptions::new().prefix(PREFIX))?;
            let mut log = VecDeque::with_capacity(entries.len());
            for (key, at) in entries {
                let seq = key[PREFIX.len()..]
                    .parse()
                    .map_err(|_| Error::msg(format!("malformed rate-limiter key {key:?}")))?;
                log.push_back((seq, at));
            }
            self.log = Some(log);
        }
        Ok(self.log.get_or_insert_default())
    }
}

impl DurableObject for RateLimiter {
    fn new(state: ObjectState, _env: Env) -> Self {
        Self { state, log: None }
    }

    async fn fetch(&mut self, req: Request) -> Result<Response> {
        let limit: usize = req.query("limit")?.unwrap_or(100);
        let window: u64 = req.query("window")?.unwrap_or(60_000);
        if limit == 0 || limit > MAX_LIMIT || window == 0 {
            return Ok(Response::error(
                StatusCode::BAD_REQUEST,
                &format!("limit must be 1 to {MAX_LIMIT} and window at least 1 ms"),
            ));
        }
        let now = now_ms();
        let window_start = now.saturating_sub(window);
        let state = self.state.clone();
        let storage = state.storage();
        let log = self.load()?;
        let mut expired = Vec::new();
        while let Some(&(seq, at)) = log.front() {
            if at >= window_start && log.len() <= limit {
                break;
            }
            expired.push(key(seq));
            log.pop_front();
        }
        for batch in expired.chunks(storage.limits().max_batch_keys) {
            storage.delete_many(batch)?;
        }
        let reset = log.front().map_or(now, |&(_, at)| at + window);
        if log.len() >= limit {
            return Ok(Response::json(&json!({
                "allowed": false,
                "remaining": 0,
                "reset": reset,
            }))?
            .with_status(StatusCode::TOO_MANY_REQUESTS));
        }
        let seq = log
            .back()
            .map_or(now * 1000, |&(last, _)| (now * 1000).max(last + 1));
        storage.put(&key(seq), &now)?;
        log.push_back((seq, now));
        Response::json(&json!({
            "allowed": true,
            "remaining": limit - log.len(),
            "reset": reset,
        }))
    }
}

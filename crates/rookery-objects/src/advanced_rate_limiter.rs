//! Seed 002's advanced rate limiter: one object per limiter name, any number of keys in it, and
//! four algorithms, by HTTP (`POST` with a JSON body) or by typed call ([`RateLimits`]):
//!
//! | path | body | algorithm |
//! | --- | --- | --- |
//! | `/check` (also `/check/fixed-window`) | `{key, limit, window}` | fixed window: at most `limit` per aligned window of `window` ms |
//! | `/check/sliding-window` | `{key, limit, window}` | sliding log: at most `limit` in any `window` ms |
//! | `/check/token-bucket` | `{key, capacity, refillRate, tokens?}` | `capacity` tokens, `refillRate` per second, each request takes `tokens` (1) |
//! | `/check/leaky-bucket` | `{key, capacity, leakRate}` | a bucket of `capacity` requests leaking `leakRate` per second |
//!
//! Windows answer `{allowed, count, limit, remaining, resetAt, retryAfter}`, buckets
//! `{allowed, remaining, capacity, resetAt, retryAfter}` (times in ms since the epoch,
//! `retryAfter` in ms, 0 when allowed), always with status 200: the check itself succeeded. A
//! missing or wrong field is 400 `{"error": .., "field": ..}` and changes nothing.
//!
//! Turns are serial, so decisions are exact however many callers ask at once. Each key's state
//! is one stored record (`k:<algorithm>:<key>`) with the time after which it no longer matters;
//! an index (`x:<time>:<record>`) lets the alarm delete expired records without scanning.

use rookery::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

use crate::input::{Body, InputError, method_not_allowed, not_found};

/// Longest key, in bytes.
const MAX_KEY_BYTES: u64 = 512;
/// Highest `limit` of a fixed window.
const MAX_FIXED_LIMIT: u64 = 1_000_000_000;
/// Highest `limit` of a sliding window: its log keeps one time per admitted request.
const MAX_SLIDING_LIMIT: u64 = 10_000;
/// Longest window: a year in ms.
const MAX_WINDOW_MS: u64 = 366 * 24 * 3600 * 1000;
/// Highest bucket capacity.
const MAX_CAPACITY: u64 = 1_000_000_000;
/// Highest refill or leak rate, per second.
const MAX_RATE: f64 = 1e9;
/// Cleanup alarms come no more often than this.
const MIN_CLEANUP_INTERVAL_MS: i64 = 1_000;
/// Most index entries one alarm handles before it continues in the next.
const MAX_CLEANUP_PER_ALARM: usize = 5_000;
const RECORD: &str = "k:";
const INDEX: &str = "x:";

/// The answer of a window algorithm (fixed or sliding).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WindowDecision {
    /// Whether the request may pass.
    pub allowed: bool,
    /// Requests counted in the window, this one included when allowed.
    pub count: u64,
    /// The limit asked for.
    pub limit: u64,
    /// How many more may pass now.
    pub remaining: u64,
    /// When a slot frees: the window's end (fixed) or the oldest request's expiry (sliding).
    pub reset_at: i64,
    /// Ms to wait before a retry can pass; 0 when allowed.
    pub retry_after: i64,
}

/// The answer of a bucket algorithm (token or leaky).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BucketDecision {
    /// Whether the request may pass.
    pub allowed: bool,
    /// Whole tokens left (token bucket) or free places in the bucket (leaky bucket).
    pub remaining: u64,
    /// The capacity asked for.
    pub capacity: u64,
    /// When the bucket is full again (token) or empty (leaky), in ms since the epoch.
    pub reset_at: i64,
    /// Ms to wait before a retry can pass; 0 when allowed.
    pub retry_after: i64,
}

/// The advanced rate limiter as a typed service; each method is one check of `key`.
#[rookery::service]
pub trait RateLimits {
    /// At most `limit` requests per aligned window of `window_ms`.
    async fn fixed_window(
        &mut self,
        key: String,
        limit: u64,
        window_ms: u64,
    ) -> rookery::Result<WindowDecision>;
    /// At most `limit` requests in any `window_ms`.
    async fn sliding_window(
        &mut self,
        key: String,
        limit: u64,
        window_ms: u64,
    ) -> rookery::Result<WindowDecision>;
    /// Takes `tokens` from a bucket of `capacity` refilled at `refill_rate` tokens per second.
    async fn token_bucket(
        &mut self,
        key: String,
        capacity: u64,
        refill_rate: f64,
        tokens: f64,
    ) -> rookery::Result<BucketDecision>;
    /// Adds one request to a bucket of `capacity` leaking `leak_rate` requests per second.
    async fn leaky_bucket(
        &mut self,
        key: String,
        capacity: u64,
        leak_rate: f64,
    ) -> rookery::Result<BucketDecision>;
}

/// The state of one key under one algorithm.
#[derive(Debug, Clone, Serialize, Deserialize)]
enum KeyState {
    Fixed { start: i64, window: i64, count: u64 },
    Sliding { log: VecDeque<i64> },
    Token { tokens: f64, at: i64 },
    Leaky { level: f64, at: i64 },
}

/// A stored key: its state, when it stops mattering, and where the index has it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    state: KeyState,
    expires_at: i64,
    indexed_at: Option<i64>,
}

fn index_key(at: i64, record: &str) -> String {
    format!("{INDEX}{:020}:{record}", at.max(0))
}

/// Ms (rounded up) for `amount` at `rate` per second.
fn ms_for(amount: f64, rate: f64) -> i64 {
    let ms = (amount.max(0.0) / rate * 1000.0).ceil();
    if ms >= i64::MAX as f64 {
        i64::MAX
    } else {
        ms as i64
    }
}

fn whole(x: f64) -> u64 {
    if x <= 0.0 { 0 } else { x.floor() as u64 }
}

fn check_key(key: &str) -> Result<(), InputError> {
    if key.is_empty() || key.len() as u64 > MAX_KEY_BYTES {
        return Err(InputError::invalid(
            "key",
            format!("must be a non-empty string of at most {MAX_KEY_BYTES} bytes"),
        ));
    }
    Ok(())
}

fn check_range(field: &'static str, n: u64, min: u64, max: u64) -> Result<(), InputError> {
    if (min..=max).contains(&n) {
        Ok(())
    } else {
        Err(InputError::invalid(
            field,
            format!("must be an integer from {min} to {max}"),
        ))
    }
}

fn check_rate(field: &'static str, rate: f64) -> Result<(), InputError> {
    if rate.is_finite() && rate > 0.0 && rate <= MAX_RATE {
        Ok(())
    } else {
        Err(InputError::invalid(
            field,
            format!("must be a number above 0 and at most {MAX_RATE}"),
        ))
    }
}

/// One limiter name's keys.
pub struct AdvancedRateLimiter {
    state: ObjectState,
    /// The alarm as last read or set: `None` until read, then its time if any.
    alarm_at: Option<Option<i64>>,
}

impl AdvancedRateLimiter {
    fn load(&self, record: &str) -> Result<Option<Record>> {
        self.state.storage().get(record)
    }

    /// Stores `state` for `record` until `expires_at`, indexing it and arming the cleanup.
    fn save(
        &mut self,
        record: &str,
        old: Option<Record>,
        state: KeyState,
        expires_at: i64,
    ) -> Result<()> {
        let storage = self.state.storage();
        let mut indexed_at = old.and_then(|r| r.indexed_at);
        if indexed_at.is_none() {
            storage.put(&index_key(expires_at, record), &())?;
            indexed_at = Some(expires_at);
        }
        storage.put(
            record,
            &Record {
                state,
                expires_at,
                indexed_at,
            },
        )?;
        let at = indexed_at.unwrap_or(expires_at);
        let current = match self.alarm_at {
            Some(current) => current,
            None => storage.get_alarm()?,
        };
        let wanted = at.max(self.state.now_ms() + MIN_CLEANUP_INTERVAL_MS);
        match current {
            Some(current) if current <= wanted => self.alarm_at = Some(Some(current)),
            _ => {
                storage.set_alarm(wanted)?;
                self.alarm_at = Some(Some(wanted));
            }
        }
        Ok(())
    }

    fn fixed(&mut self, key: &str, limit: u64, window_ms: u64) -> Result<WindowDecision> {
        check_key(key)?;
        check_range("limit", limit, 1, MAX_FIXED_LIMIT)?;
        check_range("window", window_ms, 1, MAX_WINDOW_MS)?;
        let window = window_ms as i64;
        let now = self.state.now_ms();
        let start = now - now.rem_euclid(window);
        let reset_at = start + window;
        let record = format!("{RECORD}fixed:{key}");
        let old = self.load(&record)?;
        let mut count = match &old {
            Some(Record {
                state:
                    KeyState::Fixed {
                        start: s,
                        window: w,
                        count,
                    },
                ..
            }) if *s == start && *w == window => *count,
            _ => 0,
        };
        let allowed = count < limit;
        if allowed {
            count += 1;
            self.save(
                &record,
                old,
                KeyState::Fixed {
                    start,
                    window,
                    count,
                },
                reset_at,
            )?;
        }
        Ok(WindowDecision {
            allowed,
            count,
            limit,
            remaining: limit.saturating_sub(count),
            reset_at,
            retry_after: if allowed { 0 } else { reset_at - now },
        })
    }

    fn sliding(&mut self, key: &str, limit: u64, window_ms: u64) -> Result<WindowDecision> {
        check_key(key)?;
        check_range("limit", limit, 1, MAX_SLIDING_LIMIT)?;
        check_range("window", window_ms, 1, MAX_WINDOW_MS)?;
        let window = window_ms as i64;
        let now = self.state.now_ms();
        let record = format!("{RECORD}sliding:{key}");
        let old = self.load(&record)?;
        let mut log = match &old {
            Some(Record {
                state: KeyState::Sliding { log },
                ..
            }) => log.clone(),
            _ => VecDeque::new(),
        };
        // A request made at `t` counts until `t + window`.
        while log
            .front()
            .is_some_and(|&t| t <= now - window || log.len() as u64 > limit)
        {
            log.pop_front();
        }
        let allowed = (log.len() as u64) < limit;
        if allowed {
            log.push_back(now);
        }
        let count = log.len() as u64;
        let reset_at = log.front().map_or(now, |&t| t + window);
        let expires_at = log.back().map_or(now, |&t| t + window);
        if allowed {
            self.save(&record, old, KeyState::Sliding { log }, expires_at)?;
        }
        Ok(WindowDecision {
            allowed,
            count,
            limit,
            remaining: limit.saturating_sub(count),
            reset_at,
            retry_after: if allowed { 0 } else { reset_at - now },
        })
    }

    fn token(
        &mut self,
        key: &str,
        capacity: u64,
        rate: f64,
        tokens: f64,
    ) -> Result<BucketDecision> {
        check_key(key)?;
        check_range("capacity", capacity, 1, MAX_CAPACITY)?;
        check_rate("refillRate", rate)?;
        if !(tokens.is_finite() && tokens > 0.0 && tokens <= capacity as f64) {
            return Err(InputError::invalid(
                "tokens",
                "must be a number above 0 and at most capacity",
            )
            .into());
        }
        let cap = capacity as f64;
        let now = self.state.now_ms();
        let record = format!("{RECORD}token:{key}");
        let old = self.load(&record)?;
        let mut level = match &old {
            Some(Record {
                state: KeyState::Token { tokens, at },
                ..
            }) => (tokens + (now - at).max(0) as f64 * rate / 1000.0).min(cap),
            _ => cap,
        };
        let allowed = level >= tokens;
        if allowed {
            level -= tokens;
        }
        let reset_at = now.saturating_add(ms_for(cap - level, rate));
        if allowed {
            self.save(
                &record,
                old,
                KeyState::Token {
                    tokens: level,
                    at: now,
                },
                reset_at,
            )?;
        }
        Ok(BucketDecision {
            allowed,
            remaining: whole(level),
            capacity,
            reset_at,
            retry_after: if allowed {
                0
            } else {
                ms_for(tokens - level, rate)
            },
        })
    }

    fn leaky(&mut self, key: &str, capacity: u64, rate: f64) -> Result<BucketDecision> {
        check_key(key)?;
        check_range("capacity", capacity, 1, MAX_CAPACITY)?;
        check_rate("leakRate", rate)?;
        let cap = capacity as f64;
        let now = self.state.now_ms();
        let record = format!("{RECORD}leaky:{key}");
        let old = self.load(&record)?;
        let mut level = match &old {
            Some(Record {
                state: KeyState::Leaky { level, at },
                ..
            }) => (level - (now - at).max(0) as f64 * rate / 1000.0).max(0.0),
            _ => 0.0,
        };
        let allowed = level + 1.0 <= cap;
        if allowed {
            level += 1.0;
        }
        let reset_at = now.saturating_add(ms_for(level, rate));
        if allowed {
            self.save(&record, old, KeyState::Leaky { level, at: now }, reset_at)?;
        }
        Ok(BucketDecision {
            allowed,
            remaining: whole(cap - level),
            capacity,
            reset_at,
            retry_after: if allowed {
                0
            } else {
                ms_for(level + 1.0 - cap, rate)
            },
        })
    }

    /// Answers one HTTP check.
    fn check(&mut self, path: &str, req: &Request) -> Result<Response> {
        let body = match Body::parse(req) {
            Ok(body) => body,
            Err(e) => return Ok(e.response()),
        };
        let answer = match path {
            "/check" | "/check/fixed-window" | "/check/sliding-window" => (|| {
                let key = body.string("key", MAX_KEY_BYTES as usize)?;
                let max = if path == "/check/sliding-window" {
                    MAX_SLIDING_LIMIT
                } else {
                    MAX_FIXED_LIMIT
                };
                let limit = body.integer("limit", 1, max)?;
                let window = body.integer("window", 1, MAX_WINDOW_MS)?;
                Ok::<_, InputError>((key, limit, window))
            })()
            .map(|(key, limit, window)| {
                if path == "/check/sliding-window" {
                    self.sliding(&key, limit, window)
                        .and_then(|d| Response::json(&d))
                } else {
                    self.fixed(&key, limit, window)
                        .and_then(|d| Response::json(&d))
                }
            }),
            "/check/token-bucket" => (|| {
                let key = body.string("key", MAX_KEY_BYTES as usize)?;
                let capacity = body.integer("capacity", 1, MAX_CAPACITY)?;
                let rate = body.positive("refillRate", MAX_RATE)?;
                let tokens = if body.has("tokens") {
                    body.positive("tokens", capacity as f64)?
                } else {
                    1.0
                };
                Ok::<_, InputError>((key, capacity, rate, tokens))
            })()
            .map(|(key, capacity, rate, tokens)| {
                self.token(&key, capacity, rate, tokens)
                    .and_then(|d| Response::json(&d))
            }),
            _ => (|| {
                let key = body.string("key", MAX_KEY_BYTES as usize)?;
                let capacity = body.integer("capacity", 1, MAX_CAPACITY)?;
                let rate = body.positive("leakRate", MAX_RATE)?;
                Ok::<_, InputError>((key, capacity, rate))
            })()
            .map(|(key, capacity, rate)| {
                self.leaky(&key, capacity, rate)
                    .and_then(|d| Response::json(&d))
            }),
        };
        match answer {
            Ok(response) => response,
            Err(e) => Ok(e.response()),
        }
    }
}

impl RateLimits for AdvancedRateLimiter {
    async fn fixed_window(
        &mut self,
        key: String,
        limit: u64,
        window_ms: u64,
    ) -> Result<WindowDecision> {
        self.fixed(&key, limit, window_ms)
    }

    async fn sliding_window(
        &mut self,
        key: String,
        limit: u64,
        window_ms: u64,
    ) -> Result<WindowDecision> {
        self.sliding(&key, limit, window_ms)
    }

    async fn token_bucket(
        &mut self,
        key: String,
        capacity: u64,
        refill_rate: f64,
        tokens: f64,
    ) -> Result<BucketDecision> {
        self.token(&key, capacity, refill_rate, tokens)
    }

    async fn leaky_bucket(
        &mut self,
        key: String,
        capacity: u64,
        leak_rate: f64,
    ) -> Result<BucketDecision> {
        self.leaky(&key, capacity, leak_rate)
    }
}

impl DurableObject for AdvancedRateLimiter {
    fn new(state: ObjectState, _env: Env) -> Self {
        Self {
            state,
            alarm_at: None,
        }
    }

    async fn fetch(&mut self, req: Request) -> Result<Response> {
        let path = req.path().to_string();
        match path.as_str() {
            "/check"
            | "/check/fixed-window"
            | "/check/sliding-window"
            | "/check/token-bucket"
            | "/check/leaky-bucket" => {
                if req.method() != Method::POST {
                    return Ok(method_not_allowed("POST"));
                }
                self.check(&path, &req)
            }
            _ => Ok(not_found()),
        }
    }

    async fn call(&mut self, call: Call) -> Result<Reply> {
        RateLimits::serve(self, call).await
    }

    async fn alarm(&mut self, _info: AlarmInfo) -> Result<()> {
        // The alarm is cleared as its turn starts.
        self.alarm_at = Some(None);
        let storage = self.state.storage();
        let now = self.state.now_ms();
        let due_end = format!("{INDEX}{:020}", now.saturating_add(1).max(0));
        let mut handled = 0;
        while handled < MAX_CLEANUP_PER_ALARM {
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
                handled += 1;
                storage.delete(&index)?;
                // `x:` + 20 digits + `:` precede the record's key.
                let Some(record) = index.get(INDEX.len() + 21..) else {
                    continue;
                };
                let Some(mut rec) = storage.get::<Record>(record)? else {
                    continue;
                };
                if rec.expires_at <= now {
                    storage.delete(record)?;
                } else {
                    // Still in use: index it again at its current expiry.
                    storage.put(&index_key(rec.expires_at, record), &())?;
                    rec.indexed_at = Some(rec.expires_at);
                    storage.put(record, &rec)?;
                }
            }
        }
        let next = storage.list_raw(&ListOptions::new().prefix(INDEX).limit(1))?;
        if let Some((index, _)) = next.first() {
            let at: i64 = index
                .get(INDEX.len()..INDEX.len() + 20)
                .and_then(|t| t.parse().ok())
                .unwrap_or(now);
            let at = at.max(now + MIN_CLEANUP_INTERVAL_MS);
            let at = if handled >= MAX_CLEANUP_PER_ALARM {
                now
            } else {
                at
            };
            storage.set_alarm(at)?;
            self.alarm_at = Some(Some(at));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;

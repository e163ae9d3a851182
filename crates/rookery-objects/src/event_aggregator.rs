//! Seed 002's event aggregator: buffers events durably and delivers them in batches to an
//! outbound HTTP endpoint, at least once. One object per stream (the path's name).
//!
//! - `POST /` (or `/events`) with a JSON object (one event) or array (several) →
//!   `{"accepted":k,"buffered":n}`; each event is stored before the answer leaves, so a
//!   buffered event survives `kill -9`. More than 100 000 buffered is 503 `buffer full`.
//! - `POST /flush`: deliver now. `GET /` (or `/stats`): `{buffered, delivered, attempts,
//!   lastError}`.
//! - Typed: [`Aggregate::add`] (the event as JSON text), [`Aggregate::flush`],
//!   [`Aggregate::stats`].
//!
//! Delivery runs in the object's alarm: when `EVENTS_BATCH_SIZE` (100) events are buffered, or
//! `EVENTS_FLUSH_INTERVAL_MS` (10 000) after the first buffered event, the oldest batch is
//! `POST`ed as a JSON array to the `EVENTS_ENDPOINT` var, with an `Idempotency-Key` header
//! naming the batch's first and last sequence numbers. Only a 2xx answer deletes the batch; a
//! failure keeps it and retries after 1 s, 2 s, 4 s, ... up to 5 minutes. Without an endpoint,
//! events stay buffered.

use std::time::Duration;

use rookery::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::input::{error, method_not_allowed, not_found};
use crate::webhook;

/// Most events one object buffers.
pub const MAX_BUFFERED: u64 = 100_000;
/// Events per delivery, unless `EVENTS_BATCH_SIZE` says otherwise.
const DEFAULT_BATCH: usize = 100;
/// Most events per delivery `EVENTS_BATCH_SIZE` may ask for (one storage list per batch).
const MAX_BATCH: usize = 1_000;
/// Time from the first buffered event to its delivery, unless `EVENTS_FLUSH_INTERVAL_MS` says
/// otherwise.
const DEFAULT_INTERVAL_MS: i64 = 10_000;
/// First retry delay after a failed delivery; doubles up to [`MAX_BACKOFF_MS`].
const FIRST_BACKOFF_MS: i64 = 1_000;
/// Longest retry delay.
const MAX_BACKOFF_MS: i64 = 300_000;
const EVENT: &str = "ev:";
const META: &str = "meta";
/// What the aggregator reports about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AggregatorStats {
    /// Events stored and not yet delivered.
    pub buffered: u64,
    /// Events delivered (answered 2xx) so far.
    pub delivered: u64,
    /// Failed deliveries since the last success.
    pub attempts: u32,
    /// Why the last delivery failed, if it did.
    pub last_error: Option<String>,
}

/// The aggregator as a typed service.
#[rookery::service]
pub trait Aggregate {
    /// Buffers one event, given as JSON text; returns how many are buffered.
    async fn add(&mut self, event_json: String) -> rookery::Result<u64>;
    /// Delivers the buffered events now (in the alarm, right after this call).
    async fn flush(&mut self) -> rookery::Result<()>;
    /// The buffer's figures.
    async fn stats(&mut self) -> rookery::Result<AggregatorStats>;
}

/// The stored figures and the next sequence number.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Meta {
    next_seq: u64,
    #[serde(flatten)]
    stats: AggregatorStats,
}

fn event_key(seq: u64) -> String {
    format!("{EVENT}{seq:020}")
}

/// One stream's buffer.
pub struct EventAggregator {
    state: ObjectState,
    env: Env,
}

impl EventAggregator {
    fn meta(&self) -> Result<Meta> {
        Ok(self.state.storage().get(META)?.unwrap_or_default())
    }

    fn batch_size(&self) -> usize {
        self.env
            .var("EVENTS_BATCH_SIZE")
            .and_then(|v| v.trim_matches('"').parse().ok())
            .filter(|n| (1..=MAX_BATCH).contains(n))
            .unwrap_or(DEFAULT_BATCH)
    }

    fn interval_ms(&self) -> i64 {
        self.env
            .var("EVENTS_FLUSH_INTERVAL_MS")
            .and_then(|v| v.trim_matches('"').parse().ok())
            .filter(|n: &i64| *n > 0)
            .unwrap_or(DEFAULT_INTERVAL_MS)
    }

    /// Stores `events` and arms the delivery; returns how many are buffered.
    fn buffer(&mut self, events: Vec<Value>) -> Result<u64> {
        let mut meta = self.meta()?;
        let count = u64::try_from(events.len()).unwrap_or(u64::MAX);
        if meta.stats.buffered.saturating_add(count) > MAX_BUFFERED {
            return Err(Error::Overloaded);
        }
        let storage = self.state.storage();
        for event in &events {
            storage.put(&event_key(meta.next_seq), event)?;
            meta.next_seq += 1;
        }
        meta.stats.buffered += count;
        storage.put(META, &meta)?;
        let now = self.state.now_ms();
        let full = meta.stats.buffered >= u64::try_from(self.batch_size()).unwrap_or(u64::MAX);
        // While a failed delivery backs off, the alarm stays where the backoff put it.
        let wanted = if full && meta.stats.attempts == 0 {
            Some(now)
        } else if storage.get_alarm()?.is_none() {
            Some(now + self.interval_ms())
        } else {
            None
        };
        if let Some(at) = wanted
            && storage.get_alarm()?.is_none_or(|current| current > at)
        {
            storage.set_alarm(at)?;
        }
        Ok(meta.stats.buffered)
    }

    /// Delivers the oldest batch; sets the alarm for what comes next.
    async fn deliver(&mut self) -> Result<()> {
        let mut meta = self.meta()?;
        if meta.stats.buffered == 0 {
            return Ok(());
        }
        let Some(endpoint) = self.env.var("EVENTS_ENDPOINT").map(str::to_string) else {
            tracing::warn!("EventAggregator: no EVENTS_ENDPOINT var; events stay buffered");
            return Ok(());
        };
        let storage = self.state.storage();
        let batch = storage.list_raw(
            &ListOptions::new()
                .prefix(EVENT)
                .limit(self.batch_size().min(storage.limits().max_batch_keys)),
        )?;
        let (Some((first, _)), Some((last, _))) = (batch.first(), batch.last()) else {
            return Ok(());
        };
        let key = format!(
            "{}:{}-{}",
            self.state.id(),
            &first[EVENT.len()..],
            &last[EVENT.len()..]
        );
        let mut body =
            Vec::with_capacity(batch.iter().map(|(_, v)| v.len() + 1).sum::<usize>() + 2);
        body.push(b'[');
        for (i, (_, value)) in batch.iter().enumerate() {
            if i > 0 {
                body.push(b',');
            }
            body.extend_from_slice(value);
        }
        body.push(b']');
        let outcome =
            webhook::post_json(&self.env, &endpoint, body, &[("idempotency-key", &key)]).await?;
        let now = self.state.now_ms();
        let storage = self.state.storage();
        match outcome {
            Ok(()) => {
                let keys: Vec<&str> = batch.iter().map(|(k, _)| k.as_str()).collect();
                storage.delete_many(&keys)?;
                let sent = u64::try_from(keys.len()).unwrap_or(u64::MAX);
                meta.stats.buffered = meta.stats.buffered.saturating_sub(sent);
                meta.stats.delivered += sent;
                meta.stats.attempts = 0;
                meta.stats.last_error = None;
                let full =
                    meta.stats.buffered >= u64::try_from(self.batch_size()).unwrap_or(u64::MAX);
                if full {
                    storage.set_alarm(now)?;
                } else if meta.stats.buffered > 0 {
                    storage.set_alarm(now + self.interval_ms())?;
                }
            }
            Err(why) => {
                tracing::warn!(error = %why, "EventAggregator: delivery failed; the batch is kept");
                meta.stats.attempts = meta.stats.attempts.saturating_add(1);
                meta.stats.last_error = Some(why);
                let backoff = crate::backoff::doubling_ms(
                    FIRST_BACKOFF_MS,
                    MAX_BACKOFF_MS,
                    i64::from(meta.stats.attempts),
                );
                storage.set_alarm(now + backoff)?;
            }
        }
        storage.put(META, &meta)
    }

    fn add_http(&mut self, req: &Request) -> Result<Response> {
        let events = match serde_json::from_slice::<Value>(req.body()) {
            Ok(Value::Array(events)) => events,
            Ok(event @ Value::Object(_)) => vec![event],
            _ => {
                return Ok(error(
                    StatusCode::BAD_REQUEST,
                    "the body must be a JSON object (an event) or an array of events",
                ));
            }
        };
        let accepted = events.len();
        match self.buffer(events) {
            Ok(buffered) => Response::json(&json!({ "accepted": accepted, "buffered": buffered })),
            Err(Error::Overloaded) => Ok(error(StatusCode::SERVICE_UNAVAILABLE, "buffer full")),
            Err(e) => Err(e),
        }
    }
}

impl Aggregate for EventAggregator {
    async fn add(&mut self, event_json: String) -> Result<u64> {
        let event: Value = serde_json::from_str(&event_json)
            .map_err(|e| Error::bad_request(format!("the event is not JSON: {e}")))?;
        self.buffer(vec![event])
    }

    async fn flush(&mut self) -> Result<()> {
        self.state.storage().set_alarm_after(Duration::ZERO)
    }

    async fn stats(&mut self) -> Result<AggregatorStats> {
        Ok(self.meta()?.stats)
    }
}

impl DurableObject for EventAggregator {
    fn new(state: ObjectState, env: Env) -> Self {
        Self { state, env }
    }

    async fn fetch(&mut self, req: Request) -> Result<Response> {
        let post = req.method() == Method::POST;
        match req.path() {
            "/" | "/events" if post => self.add_http(&req),
            "/flush" if post => {
                Aggregate::flush(self).await?;
                Response::json(&json!({ "scheduled": true }))
            }
            "/flush" => Ok(method_not_allowed("POST")),
            "/" | "/stats" if req.method() == Method::GET => Response::json(&self.meta()?.stats),
            "/" | "/events" | "/stats" => Ok(method_not_allowed("GET, POST")),
            _ => Ok(not_found()),
        }
    }

    async fn call(&mut self, call: Call) -> Result<Reply> {
        Aggregate::serve(self, call).await
    }

    async fn alarm(&mut self, _info: AlarmInfo) -> Result<()> {
        self.deliver().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_endpoint::Endpoint;
    use rookery::testing::{TestHarness, wait_until};
    use rookery::{Clock, ManualClock, Runtime, SystemClock, Vars};
    use std::sync::Arc;

    const URL: &str = "https://analytics.example.com/events";

    /// The batches `endpoint` took, in order.
    fn received(endpoint: &Endpoint) -> Vec<Vec<Value>> {
        endpoint
            .bodies()
            .into_iter()
            .map(|b| serde_json::from_value(b).unwrap())
            .collect()
    }

    fn harness(endpoint: Arc<Endpoint>, interval_ms: &str) -> (TestHarness, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::new(SystemClock.now_ms()));
        let mut vars = Vars::new();
        vars.set_var("EVENTS_ENDPOINT", URL);
        vars.set_var("EVENTS_FLUSH_INTERVAL_MS", interval_ms);
        let builder = Runtime::builder_in_memory()
            .clock(clock.clone())
            .vars(vars)
            .outbound(endpoint);
        (
            TestHarness::from_builder::<EventAggregator>(builder).unwrap(),
            clock,
        )
    }

    fn stub(h: &TestHarness) -> AggregateStub {
        h.namespace()
            .unwrap()
            .typed::<AggregateStub>()
            .get_by_name("clicks")
    }

    #[tokio::test]
    async fn the_hundredth_event_flushes_a_batch_in_order() {
        let endpoint = Arc::new(Endpoint::new(URL));
        let (h, _clock) = harness(endpoint.clone(), "600000");
        let agg = stub(&h);
        for i in 0..99 {
            assert_eq!(agg.add(json!({"n": i}).to_string()).await.unwrap(), i + 1);
        }
        assert!(
            received(&endpoint).is_empty(),
            "99 events wait for the interval"
        );
        agg.add(json!({"n": 99}).to_string()).await.unwrap();
        let e = endpoint.clone();
        wait_until("the batch of 100 is delivered", || received(&e).len() == 1).await;
        let batch = &received(&endpoint)[0];
        assert_eq!(batch.len(), 100);
        assert!(
            batch.iter().enumerate().all(|(i, v)| v["n"] == i),
            "in order"
        );
        let key = endpoint.key(0);
        assert!(
            key.ends_with(":00000000000000000000-00000000000000000099"),
            "{key}"
        );
        let h2 = &h;
        let deadline = tokio::time::Instant::now() + rookery::testing::PATIENCE;
        loop {
            let stats = stub(h2).stats().await.unwrap();
            if stats.delivered == 100 {
                assert_eq!(stats.buffered, 0);
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "{stats:?}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn the_interval_flushes_a_partial_batch() {
        let endpoint = Arc::new(Endpoint::new(URL));
        let (h, clock) = harness(endpoint.clone(), "5000");
        let r = h
            .fetch(
                "clicks",
                Request::post("/")
                    .unwrap()
                    .with_json(&json!([{"a": 1}, {"a": 2}]))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(
            r.json_body::<Value>().unwrap(),
            json!({"accepted": 2, "buffered": 2})
        );
        let alarm = h.run("clicks", |s| s.storage().get_alarm()).await.unwrap();
        assert_eq!(alarm, Some(clock.now_ms() + 5_000));
        clock.advance(5_000);
        let e = endpoint.clone();
        wait_until("the interval's flush", || received(&e).len() == 1).await;
        assert_eq!(
            received(&endpoint)[0],
            vec![json!({"a": 1}), json!({"a": 2})]
        );
    }

    #[tokio::test]
    async fn a_failed_flush_keeps_the_batch_and_retries_with_backoff() {
        let endpoint = Arc::new(Endpoint::new(URL));
        endpoint.fail(true);
        let (h, clock) = harness(endpoint.clone(), "1000");
        let agg = stub(&h);
        agg.add(r#"{"id":"e1"}"#.into()).await.unwrap();
        // Each failure doubles the wait: 1 s, 2 s, 4 s after the failed attempt.
        let mut now = clock.now_ms() + 1_000;
        clock.set(now);
        for (attempt, backoff) in [(1, 1_000), (2, 2_000), (3, 4_000)] {
            let deadline = tokio::time::Instant::now() + rookery::testing::PATIENCE;
            loop {
                let stats = agg.stats().await.unwrap();
                if stats.attempts == attempt {
                    assert_eq!(stats.buffered, 1, "the batch is kept");
                    assert!(stats.last_error.unwrap().contains("503"));
                    break;
                }
                assert!(tokio::time::Instant::now() < deadline, "{stats:?}");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let alarm = h.run("clicks", |s| s.storage().get_alarm()).await.unwrap();
            assert_eq!(alarm, Some(now + backoff), "attempt {attempt}");
            now += backoff;
            if attempt == 3 {
                endpoint.fail(false);
            }
            clock.set(now);
        }
        let e = endpoint.clone();
        wait_until("the kept batch is delivered", || received(&e).len() == 1).await;
        assert_eq!(received(&endpoint)[0], vec![json!({"id": "e1"})]);
    }

    #[tokio::test]
    async fn bad_events_are_refused() {
        let endpoint = Arc::new(Endpoint::new(URL));
        let (h, _clock) = harness(endpoint, "1000");
        let r = h
            .fetch("clicks", Request::post("/").unwrap().with_body("42"))
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        assert!(matches!(
            stub(&h).add("{oops".into()).await,
            Err(CallError::Object(Error::BadRequest(_)))
        ));
        let r = h
            .fetch("clicks", Request::get("/stats").unwrap())
            .await
            .unwrap();
        assert_eq!(r.json_body::<Value>().unwrap()["buffered"], 0);
    }
}

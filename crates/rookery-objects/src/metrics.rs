//! Seed 002's metrics object: `record(name, value)` adds to a per-name summary (sum, count,
//! min, max); an alarm flushes the summaries every `METRICS_FLUSH_INTERVAL_MS` (60 000), not
//! at random. One object per metrics source (the path's name).
//!
//! - `POST /record` `{name, value}` (or an array of them) → `{"recorded":k}`; `GET /` → the
//!   summaries not yet flushed and the flush figures. Typed: [`MetricsService`].
//! - A flush `POST`s `{"source", "from", "to", "metrics": {name: {sum, count, min, max}}}` to the
//!   `METRICS_ENDPOINT` var; only a 2xx answer clears the summaries, a failure keeps them (new
//!   records add to them) and retries after 1 s, 2 s, 4 s, ... up to 5 minutes. Without an
//!   endpoint the summaries go to the server's own metrics (Prometheus at `/metrics`, see
//!   [`crate::app_metrics`]) and, at debug level, to its log (the seed's `console.log`).
//!
//! Summaries are stored with every record, so an acknowledged record survives a crash.

use std::collections::BTreeMap;

use rookery::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::app_metrics::{self, Summary};
use crate::input::{Body, InputError, method_not_allowed, not_found};
use crate::webhook;

/// Longest metric name, in bytes.
const MAX_NAME_BYTES: usize = 256;
/// Most distinct names one object summarizes between flushes.
const MAX_NAMES: usize = 10_000;
/// Time between flushes, unless `METRICS_FLUSH_INTERVAL_MS` says otherwise.
const DEFAULT_INTERVAL_MS: i64 = 60_000;
/// First retry delay after a failed flush; doubles up to [`MAX_BACKOFF_MS`].
const FIRST_BACKOFF_MS: i64 = 1_000;
/// Longest retry delay.
const MAX_BACKOFF_MS: i64 = 300_000;
const KEY: &str = "pending";

/// The metrics object as a typed service.
#[rookery::service]
pub trait MetricsService {
    /// Adds `value` to the summary of `name`.
    async fn record(&mut self, name: String, value: f64) -> rookery::Result<()>;
    /// The summaries not yet flushed, by name.
    async fn pending(&mut self) -> rookery::Result<BTreeMap<String, Summary>>;
}

/// What is stored: the summaries since `from`, and the flush state.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Pending {
    from: Option<i64>,
    metrics: BTreeMap<String, Summary>,
    attempts: u32,
    last_error: Option<String>,
    flushed: u64,
}

/// One source's metrics.
pub struct Metrics {
    state: ObjectState,
    env: Env,
}

impl Metrics {
    fn load(&self) -> Result<Pending> {
        Ok(self.state.storage().get(KEY)?.unwrap_or_default())
    }

    fn interval_ms(&self) -> i64 {
        self.env
            .var("METRICS_FLUSH_INTERVAL_MS")
            .and_then(|v| v.trim_matches('"').parse().ok())
            .filter(|n: &i64| *n > 0)
            .unwrap_or(DEFAULT_INTERVAL_MS)
    }

    fn add(&mut self, records: &[(String, f64)]) -> Result<()> {
        let mut pending = self.load()?;
        for (name, value) in records {
            if name.is_empty() || name.len() > MAX_NAME_BYTES {
                return Err(InputError::invalid(
                    "name",
                    format!("must be a non-empty string of at most {MAX_NAME_BYTES} bytes"),
                )
                .into());
            }
            if !value.is_finite() {
                return Err(InputError::invalid("value", "must be a finite number").into());
            }
            if pending.metrics.len() >= MAX_NAMES && !pending.metrics.contains_key(name) {
                return Err(Error::bad_request(format!(
                    "more than {MAX_NAMES} metric names between flushes"
                )));
            }
            let s = pending.metrics.entry(name.clone()).or_insert(Summary {
                sum: 0.0,
                count: 0,
                min: *value,
                max: *value,
            });
            s.sum += value;
            s.count += 1;
            s.min = s.min.min(*value);
            s.max = s.max.max(*value);
        }
        let now = self.state.now_ms();
        pending.from.get_or_insert(now);
        let storage = self.state.storage();
        storage.put(KEY, &pending)?;
        if storage.get_alarm()?.is_none() {
            storage.set_alarm(now + self.interval_ms())?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<()> {
        let mut pending = self.load()?;
        if pending.metrics.is_empty() {
            return Ok(());
        }
        let now = self.state.now_ms();
        let source = self
            .state
            .id()
            .name()
            .map_or_else(|| self.state.id().to_string(), str::to_string);
        let report = json!({
            "source": source,
            "from": pending.from,
            "to": now,
            "metrics": pending.metrics,
        });
        let outcome = match self.env.var("METRICS_ENDPOINT").map(str::to_string) {
            None => {
                tracing::debug!(metrics = %report, "metrics");
                let dropped = app_metrics::publish(&source, &pending.metrics);
                if dropped > 0 {
                    tracing::warn!(
                        dropped,
                        max_series = app_metrics::MAX_SERIES,
                        "Metrics: the process's series budget is spent; summaries not published"
                    );
                }
                Ok(())
            }
            Some(endpoint) => {
                webhook::post_json(&self.env, &endpoint, report.to_string(), &[]).await?
            }
        };
        let storage = self.state.storage();
        match outcome {
            Ok(()) => {
                pending.flushed += 1;
                pending.metrics.clear();
                pending.from = None;
                pending.attempts = 0;
                pending.last_error = None;
            }
            Err(why) => {
                tracing::warn!(error = %why, "Metrics: flush failed; the summaries are kept");
                pending.attempts = pending.attempts.saturating_add(1);
                pending.last_error = Some(why);
                let backoff = crate::backoff::doubling_ms(
                    FIRST_BACKOFF_MS,
                    MAX_BACKOFF_MS,
                    i64::from(pending.attempts),
                );
                storage.set_alarm(now + backoff)?;
            }
        }
        storage.put(KEY, &pending)
    }

    fn record_http(&mut self, req: &Request) -> Result<Response> {
        let items = match serde_json::from_slice::<Value>(req.body()) {
            Ok(Value::Array(items)) => items,
            Ok(item) => vec![item],
            Err(e) => return Ok(InputError::Body(e.to_string()).response()),
        };
        let mut records = Vec::with_capacity(items.len());
        for item in items {
            let body = match Body::from_value(item) {
                Ok(body) => body,
                Err(e) => return Ok(e.response()),
            };
            let parsed = body
                .string("name", MAX_NAME_BYTES)
                .and_then(|name| body.number("value").map(|v| (name, v)));
            match parsed {
                Ok(record) => records.push(record),
                Err(e) => return Ok(e.response()),
            }
        }
        self.add(&records)?;
        Response::json(&json!({ "recorded": records.len() }))
    }
}

impl MetricsService for Metrics {
    async fn record(&mut self, name: String, value: f64) -> Result<()> {
        self.add(&[(name, value)])
    }

    async fn pending(&mut self) -> Result<BTreeMap<String, Summary>> {
        Ok(self.load()?.metrics)
    }
}

impl DurableObject for Metrics {
    fn new(state: ObjectState, env: Env) -> Self {
        Self { state, env }
    }

    async fn fetch(&mut self, req: Request) -> Result<Response> {
        match req.path() {
            "/record" if req.method() == Method::POST => self.record_http(&req),
            "/record" => Ok(method_not_allowed("POST")),
            "/" if req.method() == Method::GET => Response::json(&self.load()?),
            "/" => Ok(method_not_allowed("GET")),
            _ => Ok(not_found()),
        }
    }

    async fn call(&mut self, call: Call) -> Result<Reply> {
        MetricsService::serve(self, call).await
    }

    async fn alarm(&mut self, _info: AlarmInfo) -> Result<()> {
        self.flush().await?;
        // The next period starts now, whether or not anything was recorded.
        let storage = self.state.storage();
        if storage.get_alarm()?.is_none() && !self.load()?.metrics.is_empty() {
            storage.set_alarm(self.state.now_ms() + self.interval_ms())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_endpoint::Endpoint;
    use rookery::testing::{PATIENCE, TestHarness, wait_until};
    use rookery::{Clock, ManualClock, Runtime, SystemClock, Vars};
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn a_failed_flush_keeps_the_summaries_and_retries_with_backoff() {
        let endpoint = Arc::new(Endpoint::new("https://metrics.example.com/in"));
        endpoint.fail(true);
        let clock = Arc::new(ManualClock::new(SystemClock.now_ms()));
        let mut vars = Vars::new();
        vars.set_var("METRICS_ENDPOINT", "https://metrics.example.com/in");
        vars.set_var("METRICS_FLUSH_INTERVAL_MS", "10000");
        let builder = Runtime::builder_in_memory()
            .clock(clock.clone())
            .vars(vars)
            .outbound(endpoint.clone());
        let h = TestHarness::from_builder::<Metrics>(builder).unwrap();
        let m = h
            .namespace()
            .unwrap()
            .typed::<MetricsServiceStub>()
            .get_by_name("api");
        m.record("latency_ms".into(), 10.0).await.unwrap();
        let start = clock.now_ms();
        let alarm = h.run("api", |s| s.storage().get_alarm()).await.unwrap();
        assert_eq!(alarm, Some(start + 10_000), "the period's flush");
        let mut now = start + 10_000;
        clock.set(now);
        // Each failure keeps the summaries and doubles the wait: 1 s, 2 s, 4 s.
        for (attempt, backoff) in [(1_u32, 1_000), (2, 2_000), (3, 4_000)] {
            let deadline = tokio::time::Instant::now() + PATIENCE;
            loop {
                let state: Value = h
                    .fetch("api", Request::get("/").unwrap())
                    .await
                    .unwrap()
                    .json_body()
                    .unwrap();
                if state["attempts"] == attempt {
                    assert!(
                        state["lastError"].as_str().unwrap().contains("503"),
                        "{state}"
                    );
                    assert_eq!(state["metrics"]["latency_ms"]["count"], attempt, "{state}");
                    break;
                }
                assert!(tokio::time::Instant::now() < deadline, "{state}");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let alarm = h.run("api", |s| s.storage().get_alarm()).await.unwrap();
            assert_eq!(alarm, Some(now + backoff), "attempt {attempt}");
            // Records made while the endpoint is down join the kept summaries.
            m.record("latency_ms".into(), 20.0).await.unwrap();
            now += backoff;
            if attempt == 3 {
                endpoint.fail(false);
            }
            clock.set(now);
        }
        let e = endpoint.clone();
        wait_until("the kept summaries are delivered", || e.bodies().len() == 1).await;
        let report = endpoint.bodies()[0].clone();
        assert_eq!(report["source"], "api");
        assert_eq!(report["from"], start);
        assert_eq!(
            report["metrics"]["latency_ms"],
            json!({"sum": 70.0, "count": 4, "min": 10.0, "max": 20.0})
        );
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while !m.pending().await.unwrap().is_empty() {
            assert!(tokio::time::Instant::now() < deadline, "never cleared");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn records_are_summarized_and_flushed_by_the_alarm() {
        let h = TestHarness::new::<Metrics>().unwrap();
        let m = h
            .namespace()
            .unwrap()
            .typed::<MetricsServiceStub>()
            .get_by_name("api");
        m.record("latency_ms".into(), 12.0).await.unwrap();
        m.record("latency_ms".into(), 30.0).await.unwrap();
        let r = h
            .fetch(
                "api",
                Request::post("/record")
                    .unwrap()
                    .with_json(&json!([{"name": "requests", "value": 1}, {"name": "latency_ms", "value": 3}]))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(r.json_body::<Value>().unwrap(), json!({"recorded": 2}));
        let pending = m.pending().await.unwrap();
        assert_eq!(
            pending["latency_ms"],
            Summary {
                sum: 45.0,
                count: 3,
                min: 3.0,
                max: 30.0
            }
        );
        assert_eq!(pending["requests"].count, 1);
        for (body, field) in [
            (json!({"value": 1}), "name"),
            (json!({"name": "x"}), "value"),
            (json!({"name": "x", "value": "high"}), "value"),
        ] {
            let r = h
                .fetch(
                    "api",
                    Request::post("/record").unwrap().with_json(&body).unwrap(),
                )
                .await
                .unwrap();
            assert_eq!(r.status(), 400, "{body}");
            assert_eq!(r.json_body::<Value>().unwrap()["field"], field);
        }
        // No endpoint: the flush logs the summaries and clears them, when the period ends.
        h.advance(Duration::from_millis(60_000));
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while !m.pending().await.unwrap().is_empty() {
            assert!(tokio::time::Instant::now() < deadline, "never flushed");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let r = h.fetch("api", Request::get("/").unwrap()).await.unwrap();
        assert_eq!(r.json_body::<Value>().unwrap()["flushed"], 1);
    }
}

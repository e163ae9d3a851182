//! Alarms: timing, replacement, deletion, retries with backoff, atomicity with the turn,
//! serial execution, restarts and the index rebuild.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::task::Poll;
use std::time::Duration;

use rookery::prelude::*;
use rookery::testing::{TestHarness, wait_until};
use rookery::{AlarmOutcome, Clock, HostOptions, ManualClock, Runtime, RuntimeOptions, backoff_ms};
use serde_json::json;
use tokio::sync::Semaphore;

/// One handler call: (retry_count, is_retry, clock at the call, scheduled time).
type Call = (u32, bool, i64, i64);

static CALLS: LazyLock<Mutex<HashMap<String, Vec<Call>>>> = LazyLock::new(Default::default);

fn calls(name: &str) -> Vec<Call> {
    CALLS.lock().unwrap().get(name).cloned().unwrap_or_default()
}

/// What a test sees of one object's gated alarm handler and of the requests beside it.
struct Watch {
    /// Permits the handler in mode `gate` waits for.
    permits: Semaphore,
    /// Gated handlers that started.
    entered: AtomicU64,
    /// Whether a gated handler is running now.
    alarm_running: AtomicBool,
    /// `/busy` requests served, and how many of them while a gated handler was running.
    requests: AtomicU64,
    overlaps: AtomicU64,
}

static WATCHES: LazyLock<Mutex<HashMap<String, Arc<Watch>>>> = LazyLock::new(Default::default);

fn watch(name: &str) -> Arc<Watch> {
    WATCHES
        .lock()
        .unwrap()
        .entry(name.to_string())
        .or_insert_with(|| {
            Arc::new(Watch {
                permits: Semaphore::new(0),
                entered: AtomicU64::new(0),
                alarm_running: AtomicBool::new(false),
                requests: AtomicU64::new(0),
                overlaps: AtomicU64::new(0),
            })
        })
        .clone()
}

/// Sets, deletes and reports its alarm on request; its handler behaves as its stored `mode`.
struct Alarmist {
    state: ObjectState,
}

impl DurableObject for Alarmist {
    fn new(state: ObjectState, _env: Env) -> Self {
        Self { state }
    }

    async fn fetch(&mut self, req: Request) -> Result<Response> {
        let s = self.state.storage();
        if let Some(mode) = req.query_raw("mode") {
            s.put("mode", mode)?;
        }
        match req.path() {
            "/set" => {
                let at = match req.query::<i64>("in")? {
                    Some(delay) => self.state.now_ms() + delay,
                    None => req.query::<i64>("at")?.unwrap_or(0),
                };
                s.set_alarm(at)?;
                Response::json(&json!({ "at": at }))
            }
            "/set-then-fail" => {
                s.set_alarm(self.state.now_ms())?;
                Err(Error::msg("fails after setting the alarm"))
            }
            "/delete" => {
                s.delete_alarm()?;
                Response::json(&json!({}))
            }
            "/alarm" => Response::json(&json!({ "at": s.get_alarm()? })),
            "/busy" => {
                let w = watch(self.state.id().name().unwrap_or_default());
                if w.alarm_running.load(Ordering::SeqCst) {
                    w.overlaps.fetch_add(1, Ordering::SeqCst);
                }
                w.requests.fetch_add(1, Ordering::SeqCst);
                Response::json(&json!({}))
            }
            _ => Ok(Response::not_found()),
        }
    }

    async fn alarm(&mut self, info: AlarmInfo) -> Result<()> {
        let name = self
            .state
            .id()
            .name()
            .map(str::to_string)
            .unwrap_or_else(|| self.state.id().to_hex());
        let now = self.state.now_ms();
        CALLS
            .lock()
            .unwrap()
            .entry(name.clone())
            .or_default()
            .push((info.retry_count, info.is_retry, now, info.scheduled_ms));
        let s = self.state.storage();
        s.put("fired", &(s.get::<i64>("fired")?.unwrap_or(0) + 1))?;
        let w = watch(&name);
        match s.get::<String>("mode")?.as_deref() {
            Some("fail") => Err(Error::msg("the handler fails")),
            Some("panic") => panic!("the handler panics"),
            Some("reset-and-fail") => {
                s.set_alarm(now + 10_000)?;
                Err(Error::msg("fails after re-setting"))
            }
            Some("delete-and-fail") => {
                s.delete_alarm()?;
                Err(Error::msg("fails after deleting"))
            }
            Some("gate") => {
                // Runs until the test hands out a permit.
                w.alarm_running.store(true, Ordering::SeqCst);
                w.entered.fetch_add(1, Ordering::SeqCst);
                w.permits.acquire().await.map_err(Error::msg)?.forget();
                w.alarm_running.store(false, Ordering::SeqCst);
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

async fn post(h: &TestHarness, name: &str, uri: &str) -> serde_json::Value {
    h.fetch(name, Request::post(uri).unwrap())
        .await
        .unwrap()
        .json_body()
        .unwrap()
}

fn now(h: &TestHarness) -> i64 {
    h.clock().unwrap().now_ms()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alarm_fires_at_its_time_by_the_system_clock() {
    let h = TestHarness::from_builder::<Alarmist>(Runtime::builder_in_memory()).unwrap();
    let set = post(&h, "sys", "/set?in=30").await;
    wait_until("the alarm fired", || calls("sys").len() == 1).await;
    let (retry, is_retry, fired_at, scheduled) = calls("sys")[0];
    assert_eq!((retry, is_retry), (0, false));
    assert_eq!(scheduled, set["at"].as_i64().unwrap());
    assert!(fired_at >= scheduled, "never early");
    assert_eq!(
        post(&h, "sys", "/alarm").await,
        json!({"at": null}),
        "a fired alarm is cleared"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setting_replaces_and_deleting_removes() {
    let h = TestHarness::new::<Alarmist>().unwrap();
    let t = now(&h);
    post(&h, "r", &format!("/set?at={}", t + 1_000)).await;
    post(&h, "r", &format!("/set?at={}", t + 5_000)).await;
    assert_eq!(post(&h, "r", "/alarm").await, json!({"at": t + 5_000}));
    wait_until("the index holds the replacement", || {
        h.indexed_alarm("r").unwrap() == Some(t + 5_000)
    })
    .await;
    // Past the replaced time: a witness alarm fires, the replaced one does not.
    post(&h, "witness", &format!("/set?at={}", t + 1_000)).await;
    h.advance(Duration::from_millis(1_000));
    wait_until("the witness fired", || calls("witness").len() == 1).await;
    assert!(calls("r").is_empty());
    h.advance(Duration::from_millis(4_000));
    wait_until("the replacement fired", || calls("r").len() == 1).await;
    assert_eq!(calls("r")[0].3, t + 5_000);

    post(&h, "r", &format!("/set?at={}", t + 6_000)).await;
    post(&h, "r", "/delete").await;
    wait_until("the index forgot the deleted alarm", || {
        h.indexed_alarm("r").unwrap().is_none()
    })
    .await;
    post(&h, "witness", &format!("/set?at={}", t + 7_000)).await;
    h.advance(Duration::from_millis(3_000));
    wait_until("the witness fired again", || calls("witness").len() == 2).await;
    assert_eq!(calls("r").len(), 1, "a deleted alarm does not fire");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_handler_is_retried_with_exponential_backoff_then_given_up() {
    let h = TestHarness::new::<Alarmist>().unwrap();
    let t0 = now(&h);
    post(&h, "f", &format!("/set?at={t0}&mode=fail")).await;
    let mut expected_at = t0;
    for attempt in 0..=6u32 {
        wait_until("the next attempt ran", || {
            calls("f").len() == attempt as usize + 1
        })
        .await;
        let (retry, is_retry, fired_at, _) = calls("f")[attempt as usize];
        assert_eq!((retry, is_retry), (attempt, attempt > 0));
        assert_eq!(fired_at, expected_at, "attempt {attempt} ran at its time");
        if attempt < 6 {
            let next = post(&h, "f", "/alarm").await["at"].as_i64().unwrap();
            assert_eq!(
                next - fired_at,
                backoff_ms(attempt),
                "backoff before retry {}",
                attempt + 1
            );
            expected_at = next;
            h.advance(Duration::from_millis(backoff_ms(attempt) as u64));
        }
    }
    let rt = h.runtime().clone();
    wait_until("the alarm is given up", || rt.alarm_stats().given_up == 1).await;
    assert_eq!(post(&h, "f", "/alarm").await, json!({"at": null}));
    // Every failed attempt rolled back its writes.
    let fired: Option<i64> = h
        .run("f", |state| state.storage().get("fired"))
        .await
        .unwrap();
    assert_eq!(fired, None);
    let gaps: Vec<i64> = (0..6).map(backoff_ms).collect();
    assert_eq!(gaps, vec![2_000, 4_000, 8_000, 16_000, 32_000, 64_000]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_that_changes_its_alarm_before_failing_is_not_retried() {
    let h = TestHarness::new::<Alarmist>().unwrap();
    let t = now(&h);
    // Far enough ahead that only `fire_alarm` runs it.
    post(
        &h,
        "reset",
        &format!("/set?at={}&mode=reset-and-fail", t + 500),
    )
    .await;
    assert_eq!(
        h.fire_alarm("reset").await.unwrap(),
        AlarmOutcome::FailedAfterChange
    );
    assert_eq!(
        post(&h, "reset", "/alarm").await,
        json!({"at": t + 10_000}),
        "its own new time"
    );
    h.advance(Duration::from_millis(10_000));
    wait_until("the re-set alarm fired", || calls("reset").len() == 2).await;
    assert_eq!(calls("reset")[1].0, 0, "a fresh alarm, not a retry");

    post(
        &h,
        "del",
        &format!("/set?at={}&mode=delete-and-fail", now(&h) + 500),
    )
    .await;
    assert_eq!(
        h.fire_alarm("del").await.unwrap(),
        AlarmOutcome::FailedAfterChange
    );
    assert_eq!(post(&h, "del", "/alarm").await, json!({"at": null}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alarm_changes_commit_and_roll_back_with_their_turn() {
    let h = TestHarness::new::<Alarmist>().unwrap();
    let r = h
        .fetch("rb", Request::post("/set-then-fail").unwrap())
        .await;
    assert!(r.is_err());
    assert_eq!(post(&h, "rb", "/alarm").await, json!({"at": null}));
    assert_eq!(h.indexed_alarm("rb").unwrap(), None);
    // A panicking handler's alarm is not lost: it comes back as a retry.
    let t = now(&h);
    post(&h, "p", &format!("/set?at={}&mode=panic", t + 500)).await;
    assert_eq!(h.fire_alarm("p").await.unwrap(), AlarmOutcome::Retrying);
    assert_eq!(post(&h, "p", "/alarm").await, json!({"at": t + 2_000}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_transaction_takes_its_alarm_change_with_it() {
    let h = TestHarness::new::<Alarmist>().unwrap();
    let at = now(&h) + 1_000;
    post(&h, "txn", &format!("/set?at={at}")).await;
    // The transaction deletes the alarm, then fails; the turn itself commits.
    h.run("txn", |state| {
        let failed = state.storage().transaction(|s| {
            s.delete_alarm()?;
            Err::<(), _>(Error::msg("the transaction fails"))
        });
        assert!(failed.is_err());
        Ok(())
    })
    .await
    .unwrap();
    assert_eq!(post(&h, "txn", "/alarm").await, json!({ "at": at }));
    assert_eq!(
        h.indexed_alarm("txn").unwrap(),
        Some(at),
        "the index still holds the alarm the record keeps"
    );
    h.advance(Duration::from_millis(1_000));
    wait_until("the alarm fired", || calls("txn").len() == 1).await;
}

/// Requests sent to an object while its alarm handler runs (and the object's mailbox size).
const HELD: usize = 20;

/// A harness on a manual clock whose objects' mailboxes hold [`HELD`] events.
fn gated_harness() -> (Arc<TestHarness>, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(rookery::SystemClock.now_ms()));
    let options = RuntimeOptions {
        host: HostOptions {
            mailbox_capacity: HELD,
            ..HostOptions::default()
        },
        ..RuntimeOptions::default()
    };
    let builder = Runtime::builder_in_memory()
        .clock(clock.clone())
        .options(options);
    let h = TestHarness::from_builder::<Alarmist>(builder).unwrap();
    (Arc::new(h), clock)
}

/// With the gated alarm handler of `name` started, sends it [`HELD`] requests and checks that
/// none runs (and all stay queued) until the handler is let go; then all are served, none
/// beside the handler.
async fn requests_wait_for_the_running_alarm(h: &Arc<TestHarness>, name: &str) {
    let w = watch(name);
    wait_until("the alarm handler runs", || {
        w.entered.load(Ordering::SeqCst) == 1
    })
    .await;
    let mut requests = Vec::new();
    for _ in 0..HELD {
        let (h, name) = (h.clone(), name.to_string());
        let mut request =
            Box::pin(async move { h.fetch(&name, Request::get("/busy").unwrap()).await });
        // Polled once, the request is in the object's mailbox.
        let first = std::future::poll_fn(|cx| Poll::Ready(request.as_mut().poll(cx))).await;
        assert!(first.is_pending(), "a request was answered at once");
        requests.push(tokio::spawn(request));
    }
    // A round trip through another object leaves a runtime that does not hold requests back
    // ample time to serve them.
    post(h, &format!("{name}-elsewhere"), "/alarm").await;
    assert_eq!(
        w.requests.load(Ordering::SeqCst),
        0,
        "a request ran while the alarm handler was running"
    );
    // All of them are still queued: the mailbox is full.
    let refused = h.fetch(name, Request::get("/busy").unwrap()).await;
    assert!(
        matches!(refused, Err(Error::Overloaded)),
        "the mailbox should hold all {HELD} requests: {refused:?}"
    );
    assert!(requests.iter().all(|r| !r.is_finished()));

    w.permits.add_permits(1);
    for r in requests {
        assert_eq!(r.await.unwrap().unwrap().status(), 200);
    }
    assert_eq!(w.requests.load(Ordering::SeqCst), HELD as u64);
    assert_eq!(w.overlaps.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alarm_never_overlaps_a_request_on_its_object() {
    let (h, clock) = gated_harness();
    post(
        &h,
        "forced",
        &format!("/set?at={}&mode=gate", clock.now_ms() + 500),
    )
    .await;
    let fire = {
        let h = h.clone();
        tokio::spawn(async move { h.fire_alarm("forced").await })
    };
    requests_wait_for_the_running_alarm(&h, "forced").await;
    assert_eq!(fire.await.unwrap().unwrap(), AlarmOutcome::Succeeded);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alarm_fired_by_the_scheduler_holds_back_requests_too() {
    let (h, clock) = gated_harness();
    let at = clock.now_ms() + 500;
    post(&h, "scheduled", &format!("/set?at={at}&mode=gate")).await;
    wait_until("the alarm is indexed", || {
        h.indexed_alarm("scheduled").unwrap() == Some(at)
    })
    .await;
    clock.advance(500);
    requests_wait_for_the_running_alarm(&h, "scheduled").await;
    let rt = h.runtime().clone();
    wait_until("the alarm succeeded", || rt.alarm_stats().succeeded == 1).await;
    assert_eq!(calls("scheduled").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn due_alarms_fire_after_a_restart_and_the_index_rebuilds() {
    let dir = tempfile::tempdir().unwrap();
    let h = TestHarness::with_data_dir::<Alarmist>(dir.path()).unwrap();
    let t = now(&h);
    for name in ["d1", "d2", "d3"] {
        post(&h, name, &format!("/set?at={}", t + 1_000)).await;
    }
    assert!(h.shutdown().await);
    // Start again an hour later: everything is overdue and fires at start-up.
    let h = TestHarness::with_data_dir::<Alarmist>(dir.path()).unwrap();
    h.clock().unwrap().set(t + 3_600_000);
    for name in ["d1", "d2", "d3"] {
        wait_until("the overdue alarm fired", || calls(name).len() == 1).await;
    }
    for name in ["r1", "r2"] {
        post(&h, name, &format!("/set?at={}", t + 7_200_000)).await;
    }
    assert!(h.shutdown().await);
    // Lose the index: the next start rebuilds it from the objects' own records.
    std::fs::remove_file(dir.path().join("alarms.sqlite")).unwrap();
    let h = TestHarness::with_data_dir::<Alarmist>(dir.path()).unwrap();
    assert_eq!(h.runtime().alarm_stats().scheduled, 2);
    assert_eq!(h.runtime().rebuild_alarm_index().await.unwrap(), 2);
    h.clock().unwrap().set(t + 7_200_000);
    for name in ["r1", "r2"] {
        wait_until("the rebuilt alarm fired", || calls(name).len() == 1).await;
    }
    assert!(h.shutdown().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_due_alarms_is_worked_off() {
    let h = TestHarness::new::<Alarmist>().unwrap();
    let t = now(&h);
    for i in 0..1_000 {
        post(
            &h,
            &format!("burst-{i}"),
            &format!("/set?at={}", t + 1 + (i % 7)),
        )
        .await;
    }
    let rt = h.runtime().clone();
    wait_until("all are indexed", || rt.alarm_stats().scheduled == 1_000).await;
    h.advance(Duration::from_millis(100));
    wait_until("all fired", || rt.alarm_stats().succeeded == 1_000).await;
    wait_until("the index is empty", || rt.alarm_stats().scheduled == 0).await;
    for i in (0..1_000).step_by(97) {
        assert_eq!(calls(&format!("burst-{i}")).len(), 1);
    }
}

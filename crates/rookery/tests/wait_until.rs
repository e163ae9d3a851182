//! `state.wait_until`: work that runs once the turn's outputs are released, beside the object's
//! later turns; bounded in count and time; waited for before eviction and at shutdown; failures
//! logged with the object's class and id; storage out of its reach.

use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, LazyLock, Mutex, OnceLock};
use std::time::Duration;

use rookery::prelude::*;
use rookery::testing::{BINDING, TestHarness, wait_until};
use rookery::{HostOptions, Runtime, RuntimeOptions};
use tokio::sync::Semaphore;

/// What the test sees of the work registered by the object of one name.
struct Probe {
    /// The work began.
    started: AtomicBool,
    /// When it began, the disk had let the turn's sync finish.
    started_after_sync: AtomicBool,
    /// The work got past its gate and ended.
    finished: AtomicBool,
    /// When it ended, `Runtime::shutdown` had returned already.
    finished_after_shutdown: AtomicBool,
    /// Set by the test once `Runtime::shutdown` returned.
    shutdown_returned: AtomicBool,
    /// Work of a turn that failed ran (it must not).
    ran_for_failed_turn: AtomicBool,
    /// Permits for the work to go on.
    gate: Semaphore,
    /// The disk of the test, if it has one.
    disk: Mutex<Option<Arc<Disk>>>,
}

impl Default for Probe {
    fn default() -> Self {
        Self {
            started: AtomicBool::new(false),
            started_after_sync: AtomicBool::new(false),
            finished: AtomicBool::new(false),
            finished_after_shutdown: AtomicBool::new(false),
            shutdown_returned: AtomicBool::new(false),
            ran_for_failed_turn: AtomicBool::new(false),
            gate: Semaphore::new(0),
            disk: Mutex::new(None),
        }
    }
}

static PROBES: LazyLock<Mutex<HashMap<String, Arc<Probe>>>> = LazyLock::new(Default::default);

fn probe(name: &str) -> Arc<Probe> {
    PROBES
        .lock()
        .unwrap()
        .entry(name.to_string())
        .or_default()
        .clone()
}

/// A disk whose syncs wait until the test opens it.
#[derive(Default)]
struct Disk {
    open: Mutex<bool>,
    cv: Condvar,
    rounds: AtomicU64,
}

impl Disk {
    fn hook(self: &Arc<Self>) -> rookery::SyncHook {
        let disk = self.clone();
        Arc::new(move || {
            disk.rounds.fetch_add(1, Ordering::SeqCst);
            let mut open = disk.open.lock().unwrap();
            while !*open {
                open = disk.cv.wait(open).unwrap();
            }
            Ok(())
        })
    }

    fn is_open(&self) -> bool {
        *self.open.lock().unwrap()
    }

    fn set_open(&self, open: bool) {
        *self.open.lock().unwrap() = open;
        self.cv.notify_all();
    }
}

/// Everything this test binary logged, at DEBUG and above.
fn logs() -> String {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    let logs = LOGS.get_or_init(|| {
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = logs.clone();
        let _ = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || Sink(sink.clone()))
            .try_init();
        logs
    });
    String::from_utf8_lossy(&logs.lock().unwrap()).into_owned()
}

struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// An object that hands work to `wait_until` in the ways the tests need.
struct Tasks {
    state: ObjectState,
    env: Env,
}

impl DurableObject for Tasks {
    fn new(state: ObjectState, env: Env) -> Self {
        Self { state, env }
    }

    async fn fetch(&mut self, req: Request) -> Result<Response> {
        let name = self.state.id().name().unwrap_or_default().to_string();
        let storage = self.state.storage();
        match req.path() {
            // Work that waits at its probe's gate.
            "/start" => {
                storage.put("registered", &true)?;
                let p = probe(&name);
                self.state.wait_until(async move {
                    let synced = p.disk.lock().unwrap().as_ref().is_none_or(|d| d.is_open());
                    p.started_after_sync.store(synced, Ordering::SeqCst);
                    p.started.store(true, Ordering::SeqCst);
                    p.gate.acquire().await.map_err(Error::msg)?.forget();
                    let after = p.shutdown_returned.load(Ordering::SeqCst);
                    p.finished_after_shutdown.store(after, Ordering::SeqCst);
                    p.finished.store(true, Ordering::SeqCst);
                    Ok(())
                })?;
                Ok(Response::text("registered"))
            }
            "/ping" => Ok(Response::text("pong")),
            "/start-then-fail" => {
                let p = probe(&name);
                self.state.wait_until(async move {
                    p.ran_for_failed_turn.store(true, Ordering::SeqCst);
                    Ok(())
                })?;
                Err(Error::msg("the turn fails after registering work"))
            }
            "/fail" => {
                self.state
                    .wait_until(async { Err(Error::msg("deliberate wait_until failure")) })?;
                Ok(Response::text("ok"))
            }
            "/panic" => {
                self.state
                    .wait_until(async { panic!("deliberate wait_until panic") })?;
                Ok(Response::text("ok"))
            }
            "/forever" => {
                self.state.wait_until(std::future::pending())?;
                Ok(Response::text("ok"))
            }
            "/touch-storage" => {
                let state = self.state.clone();
                self.state.wait_until(async move {
                    state.storage().put("from-work", &true)?;
                    Ok(())
                })?;
                Ok(Response::text("ok"))
            }
            "/call-back" => {
                let stub = self.env.namespace(BINDING)?.get(self.state.id().clone());
                self.state.wait_until(async move {
                    stub.fetch(Request::post("/record")?).await?;
                    Ok(())
                })?;
                Ok(Response::text("ok"))
            }
            "/record" => {
                storage.put("recorded", &true)?;
                probe(&name).finished.store(true, Ordering::SeqCst);
                Ok(Response::text("recorded"))
            }
            _ => Ok(Response::not_found()),
        }
    }
}

fn options(change: impl FnOnce(&mut HostOptions)) -> RuntimeOptions {
    let mut options = RuntimeOptions::default();
    change(&mut options.host);
    options
}

async fn send(h: &TestHarness, name: &str, path: &str) -> Result<Response> {
    h.fetch(name, Request::post(path)?).await
}

fn id_hex(h: &TestHarness, name: &str) -> String {
    h.namespace().unwrap().id_from_name(name).to_hex()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_starts_after_the_reply_is_released_and_does_not_hold_the_object() {
    let dir = tempfile::tempdir().unwrap();
    let disk = Arc::new(Disk::default());
    let h = Arc::new(
        TestHarness::from_builder::<Tasks>(Runtime::builder(dir.path()).sync_hook(disk.hook()))
            .unwrap(),
    );
    let p = probe("after-reply");
    *p.disk.lock().unwrap() = Some(disk.clone());
    let replied = Arc::new(AtomicBool::new(false));
    let reply = {
        let (h, replied) = (h.clone(), replied.clone());
        tokio::spawn(async move {
            let r = send(&h, "after-reply", "/start").await;
            replied.store(true, Ordering::SeqCst);
            r
        })
    };
    // The turn has ended and its write waits for the disk: neither reply nor work may go.
    wait_until("the turn's commit waits for the disk", || {
        disk.rounds.load(Ordering::SeqCst) >= 1
    })
    .await;
    assert!(!replied.load(Ordering::SeqCst));
    disk.set_open(true);
    let r = reply.await.unwrap().unwrap();
    assert_eq!(r.body().as_ref(), b"registered");
    wait_until("the work starts", || p.started.load(Ordering::SeqCst)).await;
    assert!(
        p.started_after_sync.load(Ordering::SeqCst),
        "the work started before the turn's writes were durable"
    );
    // The reply came while the work is still waiting, and the object serves other turns.
    assert!(!p.finished.load(Ordering::SeqCst));
    let pong = send(&h, "after-reply", "/ping").await.unwrap();
    assert_eq!(pong.body().as_ref(), b"pong");
    assert!(!p.finished.load(Ordering::SeqCst));
    p.gate.add_permits(1);
    wait_until("the work ends", || p.finished.load(Ordering::SeqCst)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_waits_for_running_work() {
    logs(); // capture from the start
    let h = TestHarness::new::<Tasks>().unwrap();
    let runtime = h.runtime().clone();
    let p = probe("drained");
    send(&h, "drained", "/start").await.unwrap();
    wait_until("the work starts", || p.started.load(Ordering::SeqCst)).await;
    let stopping = {
        let p = p.clone();
        tokio::spawn(async move {
            let closed = runtime.shutdown().await;
            p.shutdown_returned.store(true, Ordering::SeqCst);
            closed
        })
    };
    let id = id_hex(&h, "drained");
    wait_until("the object waits for its work before closing", || {
        logs()
            .lines()
            .any(|l| l.contains("waiting for wait_until work before closing") && l.contains(&id))
    })
    .await;
    assert!(!p.shutdown_returned.load(Ordering::SeqCst));
    p.gate.add_permits(1);
    assert!(stopping.await.unwrap(), "everything closed in time");
    assert!(p.finished.load(Ordering::SeqCst));
    assert!(
        !p.finished_after_shutdown.load(Ordering::SeqCst),
        "shutdown returned before the work ended"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_over_its_time_limit_is_stopped_and_logged_and_shutdown_goes_on() {
    logs(); // capture from the start
    let builder = Runtime::builder_in_memory().options(options(|o| {
        o.wait_until_timeout = Duration::from_millis(100);
    }));
    let h = TestHarness::from_builder::<Tasks>(builder).unwrap();
    send(&h, "endless", "/forever").await.unwrap();
    let id = id_hex(&h, "endless");
    wait_until("the endless work is stopped at its limit", || {
        logs()
            .lines()
            .any(|l| l.contains("ran over its time limit") && l.contains(&id) && l.contains("TEST"))
    })
    .await;
    send(&h, "endless", "/forever").await.unwrap();
    assert!(
        h.shutdown().await,
        "shutdown does not wait beyond the limit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_logged_with_class_and_id() {
    logs(); // capture from the start
    let h = TestHarness::new::<Tasks>().unwrap();
    for (name, path, text) in [
        ("fails", "/fail", "deliberate wait_until failure"),
        ("panics", "/panic", "deliberate wait_until panic"),
        (
            "touches-storage",
            "/touch-storage",
            "storage is reachable only inside a turn",
        ),
    ] {
        send(&h, name, path).await.unwrap();
        let id = id_hex(&h, name);
        wait_until(&format!("the failure of {path} is logged"), || {
            logs()
                .lines()
                .any(|l| l.contains(text) && l.contains(&id) && l.contains("TEST"))
        })
        .await;
    }
    // The work's write never happened, nor was it slipped into a later turn.
    send(&h, "touches-storage", "/ping").await.unwrap();
    let written: Option<bool> = h
        .run("touches-storage", |s| s.storage().get("from-work"))
        .await
        .unwrap();
    assert_eq!(written, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_writes_by_calling_its_object_which_is_a_new_turn() {
    let h = TestHarness::new::<Tasks>().unwrap();
    let p = probe("calls-back");
    send(&h, "calls-back", "/call-back").await.unwrap();
    wait_until("the call back runs its turn", || {
        p.finished.load(Ordering::SeqCst)
    })
    .await;
    // The call's turn committed its write before answering the work.
    let recorded: Option<bool> = h
        .run("calls-back", |s| s.storage().get("recorded"))
        .await
        .unwrap();
    assert_eq!(recorded, Some(true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_is_bounded_per_object_and_dropped_with_a_failed_turn() {
    let builder = Runtime::builder_in_memory().options(options(|o| o.max_wait_until = 2));
    let h = TestHarness::from_builder::<Tasks>(builder).unwrap();
    let p = probe("bounded");
    send(&h, "bounded", "/start").await.unwrap();
    send(&h, "bounded", "/start").await.unwrap();
    let third = send(&h, "bounded", "/start").await.unwrap_err();
    assert!(matches!(third, Error::WaitUntilLimit(2)), "{third}");
    assert_eq!(third.status(), StatusCode::SERVICE_UNAVAILABLE);
    p.gate.add_permits(2);
    wait_until("both pieces end", || p.finished.load(Ordering::SeqCst)).await;
    // Work of a failed turn never starts, and frees its place.
    let failed = probe("bounded-fail");
    let one = Runtime::builder_in_memory().options(options(|o| o.max_wait_until = 1));
    let h = TestHarness::from_builder::<Tasks>(one).unwrap();
    send(&h, "bounded-fail", "/start-then-fail")
        .await
        .unwrap_err();
    send(&h, "bounded-fail", "/start").await.unwrap();
    wait_until("the second piece starts", || {
        failed.started.load(Ordering::SeqCst)
    })
    .await;
    failed.gate.add_permits(1);
    wait_until("it ends", || failed.finished.load(Ordering::SeqCst)).await;
    assert!(!failed.ran_for_failed_turn.load(Ordering::SeqCst));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_with_running_work_is_not_evicted() {
    logs(); // capture from the start
    let dir = tempfile::tempdir().unwrap();
    let builder = Runtime::builder(dir.path()).options(options(|o| {
        o.idle_timeout = Duration::from_millis(20);
    }));
    let h = TestHarness::from_builder::<Tasks>(builder).unwrap();
    let p = probe("kept");
    send(&h, "kept", "/start").await.unwrap();
    wait_until("the work starts", || p.started.load(Ordering::SeqCst)).await;
    let id = id_hex(&h, "kept");
    wait_until("the idle object stays for its work", || {
        logs()
            .lines()
            .any(|l| l.contains("staying in memory") && l.contains(&id))
    })
    .await;
    assert_eq!(h.runtime().stats().live_objects, 1);
    p.gate.add_permits(1);
    wait_until("the object leaves once the work ended", || {
        h.runtime().stats().live_objects == 0
    })
    .await;
}

//! A harness for testing object classes in-process, without a server.
//!
//! ```
//! use rookery::prelude::*;
//! use rookery::testing::TestHarness;
//!
//! struct Greeter { state: ObjectState }
//!
//! impl DurableObject for Greeter {
//!     fn new(state: ObjectState, _env: Env) -> Self { Self { state } }
//!     async fn fetch(&mut self, req: Request) -> Result<Response> {
//!         let name = req.query_raw("name").unwrap_or("world").to_string();
//!         self.state.storage().put("last", &name)?;
//!         Ok(Response::text(format!("hello {name}")))
//!     }
//! }
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let harness = TestHarness::new::<Greeter>().unwrap();
//! let resp = harness.fetch("g1", Request::get("/?name=ada").unwrap()).await.unwrap();
//! assert_eq!(resp.body().as_ref(), b"hello ada");
//! // Read the object's storage directly, as a turn of its own.
//! let last: Option<String> = harness
//!     .run("g1", |state| state.storage().get("last"))
//!     .await
//!     .unwrap();
//! assert_eq!(last.as_deref(), Some("ada"));
//! # });
//! ```

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::clock::{ManualClock, system_now_ms};
use crate::error::{Result, StartError};
use crate::host::alarm_event::AlarmOutcome;
use crate::object::DurableObject;
use crate::request::Request;
use crate::response::Response;
use crate::runtime::{Runtime, RuntimeBuilder};
use crate::state::ObjectState;
use crate::storage::Migration;
use crate::stub::Namespace;

/// The binding and class name under which the harness hosts the class under test.
pub const BINDING: &str = "TEST";

/// A class that does nothing by itself (every request is 404): tests drive its storage
/// through [`TestHarness::run`].
#[derive(Debug)]
pub struct Blank;

impl DurableObject for Blank {
    fn new(_state: ObjectState, _env: crate::env::Env) -> Self {
        Blank
    }

    async fn fetch(&mut self, _req: Request) -> Result<Response> {
        Ok(Response::not_found())
    }
}

/// How long test helpers wait for a condition before they fail the test.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// Waits until `cond` holds, checking every few milliseconds; panics naming `what` if it does
/// not within [`PATIENCE`].
pub async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Runs one object class in-process: send its objects requests, read and change their storage,
/// move the clock and fire alarms.
///
/// The harnesses made by [`TestHarness::new`] and [`TestHarness::with_data_dir`] run on a
/// [`ManualClock`] that starts at the current time and moves only when the test says so, so
/// alarms fire exactly when the test advances past them.
pub struct TestHarness {
    runtime: Runtime,
    binding: String,
    clock: Option<Arc<ManualClock>>,
}

impl TestHarness {
    /// A harness for class `C` with all state in memory and a manual clock.
    pub fn new<C: DurableObject>() -> Result<Self, StartError> {
        Self::with_manual_clock::<C>(Runtime::builder_in_memory())
    }

    /// A harness for class `C` keeping its state in `data_dir` (durable, like a server), with a
    /// manual clock.
    pub fn with_data_dir<C: DurableObject>(data_dir: impl AsRef<Path>) -> Result<Self, StartError> {
        Self::with_manual_clock::<C>(Runtime::builder(data_dir))
    }

    fn with_manual_clock<C: DurableObject>(builder: RuntimeBuilder) -> Result<Self, StartError> {
        let clock = Arc::new(ManualClock::new(system_now_ms()));
        let mut harness = Self::from_builder::<C>(builder.clock(clock.clone()))?;
        harness.clock = Some(clock);
        Ok(harness)
    }

    /// A harness for class `C` from a builder that may carry other classes and options; `C` is
    /// added as class and binding `TEST`.
    pub fn from_builder<C: DurableObject>(builder: RuntimeBuilder) -> Result<Self, StartError> {
        let runtime = builder
            .class::<C>(BINDING)
            .binding(BINDING, BINDING)
            .migration(Migration {
                tag: "rookery-test-harness".into(),
                new_classes: vec![BINDING.into()],
                ..Migration::default()
            })
            .build()?;
        Ok(Self::from_runtime(runtime, BINDING))
    }

    /// A harness over an existing runtime, sending to the objects of `binding`.
    pub fn from_runtime(runtime: Runtime, binding: &str) -> Self {
        Self {
            runtime,
            binding: binding.to_string(),
            clock: None,
        }
    }

    /// The manual clock, if the harness runs on one.
    pub fn clock(&self) -> Option<&ManualClock> {
        self.clock.as_deref()
    }

    /// Moves the manual clock forward by `by`; due alarms then fire. Does nothing with the
    /// system clock.
    pub fn advance(&self, by: Duration) {
        if let Some(clock) = &self.clock {
            clock.advance(i64::try_from(by.as_millis()).unwrap_or(i64::MAX));
        }
    }

    /// Fires the alarm of the object called `name` now, whatever time it is set for, and waits
    /// for the handler; `NotDue` if no alarm is set.
    pub async fn fire_alarm(&self, name: &str) -> Result<AlarmOutcome> {
        let report = self.namespace()?.get_by_name(name).alarm(true).await?;
        Ok(report.outcome)
    }

    /// The alarm time the node's index holds for the object called `name`. It is never later
    /// than the object's own record, and equals it once the object's commits are durable.
    pub fn indexed_alarm(&self, name: &str) -> Result<Option<i64>> {
        self.runtime
            .indexed_alarm(&self.namespace()?.get_by_name(name))
    }

    /// The runtime behind the harness.
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// The namespace of the class under test.
    pub fn namespace(&self) -> Result<Namespace> {
        self.runtime.namespace(&self.binding)
    }

    /// Sends `req` to the object called `name`, as the gateway would.
    pub async fn fetch(&self, name: &str, req: Request) -> Result<Response> {
        self.namespace()?.get_by_name(name).fetch(req).await
    }

    /// Runs `job` as a turn of the object called `name` with its state: reads see its storage,
    /// writes commit if `job` returns `Ok`. The next event meets a fresh instance built from
    /// storage, so instances that cache storage see the job's writes.
    pub async fn run<T: Send + 'static>(
        &self,
        name: &str,
        job: impl FnOnce(&ObjectState) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        self.namespace()?.get_by_name(name).run(job).await
    }

    /// Stops the runtime, closing every object's storage.
    pub async fn shutdown(self) -> bool {
        self.runtime.shutdown().await
    }
}

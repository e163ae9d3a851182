//! Typed calls (RPC) between objects: results, the callee's own errors, atomicity, overload,
//! call cycles, deadlocks between independent turns, and the output gate.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, LazyLock, Mutex};
use std::time::Duration;

use rookery::prelude::*;
use rookery::testing::{PATIENCE, TestHarness, wait_until};
use rookery::{HostOptions, Runtime, RuntimeOptions};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

/// An account's own error, which crosses back to the caller as it is.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub enum AccountError {
    Insufficient { balance: i64 },
    Storage(String),
}

impl From<Error> for AccountError {
    fn from(e: Error) -> Self {
        AccountError::Storage(e.to_string())
    }
}

#[rookery::service]
pub trait Account {
    /// The balance.
    async fn balance(&mut self) -> rookery::Result<i64>;
    /// Adds `amount`; the new balance.
    async fn deposit(&mut self, amount: i64) -> rookery::Result<i64>;
    /// Takes `amount`: writes the new balance, then refuses if it went below zero.
    async fn withdraw(&mut self, amount: i64) -> Result<i64, AccountError>;
    /// Withdraws here and deposits at `to`, by a call from this object's turn.
    async fn transfer(&mut self, to: String, amount: i64) -> Result<i64, AccountError>;
    /// Which instance answers (instances are numbered as they are built).
    async fn instance(&mut self) -> rookery::Result<u64>;
    /// Waits until the test lets this object's gate open.
    async fn hold(&mut self) -> rookery::Result<()>;
    /// Calls the first object of `route` with the rest of it; the objects visited.
    async fn hop(&mut self, route: Vec<String>) -> rookery::Result<Vec<String>>;
    /// Waits at this object's gate, then asks `other` for its balance.
    async fn ask_after_gate(&mut self, other: String) -> rookery::Result<i64>;
    /// Writes, then panics.
    async fn panic(&mut self) -> rookery::Result<()>;
    /// Writes, then never ends.
    async fn hang(&mut self) -> rookery::Result<()>;
}

/// A service no class here serves.
#[rookery::service]
pub trait Unserved {
    async fn nothing(&mut self) -> rookery::Result<()>;
}

static INSTANCES: AtomicU64 = AtomicU64::new(0);

/// Per-object gates that `hold` and `ask_after_gate` wait at, and how many turns reached them.
static GATES: LazyLock<Mutex<HashMap<String, Gate>>> = LazyLock::new(Default::default);

type Gate = (Arc<Semaphore>, Arc<AtomicU64>);

fn gate(name: &str) -> Gate {
    GATES
        .lock()
        .unwrap()
        .entry(name.to_string())
        .or_insert_with(|| (Arc::new(Semaphore::new(0)), Arc::new(AtomicU64::new(0))))
        .clone()
}

fn entered(name: &str) -> u64 {
    gate(name).1.load(Ordering::SeqCst)
}

/// Deposits that ran per object name (counted in the turn, committed or not).
static DEPOSITS: LazyLock<Mutex<HashMap<String, u64>>> = LazyLock::new(Default::default);

fn deposits(name: &str) -> u64 {
    DEPOSITS.lock().unwrap().get(name).copied().unwrap_or(0)
}

/// Withdrawals that ran per object name.
static WITHDRAWALS: LazyLock<Mutex<HashMap<String, u64>>> = LazyLock::new(Default::default);

fn withdrawals(name: &str) -> u64 {
    WITHDRAWALS.lock().unwrap().get(name).copied().unwrap_or(0)
}

pub struct Bank {
    state: ObjectState,
    env: Env,
    instance: u64,
}

impl Bank {
    fn name(&self) -> String {
        self.state.id().name().unwrap_or_default().to_string()
    }

    fn accounts(&self) -> Result<rookery::Namespace<AccountStub>> {
        Ok(self
            .env
            .namespace(rookery::testing::BINDING)?
            .typed::<AccountStub>())
    }

    async fn wait_at_gate(&self) -> Result<()> {
        let (sem, entered) = gate(&self.name());
        entered.fetch_add(1, Ordering::SeqCst);
        sem.acquire().await.map_err(Error::msg)?.forget();
        Ok(())
    }
}

impl DurableObject for Bank {
    fn new(state: ObjectState, env: Env) -> Self {
        Self {
            state,
            env,
            instance: INSTANCES.fetch_add(1, Ordering::SeqCst),
        }
    }

    async fn fetch(&mut self, _req: Request) -> Result<Response> {
        Ok(Response::not_found())
    }

    async fn call(&mut self, call: Call) -> Result<Reply> {
        Account::serve(self, call).await
    }
}

impl Account for Bank {
    async fn balance(&mut self) -> Result<i64> {
        Ok(self.state.storage().get("balance")?.unwrap_or(0))
    }

    async fn deposit(&mut self, amount: i64) -> Result<i64> {
        *DEPOSITS.lock().unwrap().entry(self.name()).or_default() += 1;
        let balance = self.balance().await? + amount;
        self.state.storage().put("balance", &balance)?;
        Ok(balance)
    }

    async fn withdraw(&mut self, amount: i64) -> Result<i64, AccountError> {
        *WITHDRAWALS.lock().unwrap().entry(self.name()).or_default() += 1;
        let before = self.balance().await?;
        let balance = before - amount;
        // Written first: the refusal below must take this write back with it.
        self.state.storage().put("balance", &balance)?;
        if balance < 0 {
            return Err(AccountError::Insufficient { balance: before });
        }
        Ok(balance)
    }

    async fn transfer(&mut self, to: String, amount: i64) -> Result<i64, AccountError> {
        let left = self.withdraw(amount).await?;
        self.accounts()?
            .get_by_name(&to)
            .deposit(amount)
            .await
            .map_err(|e| AccountError::Storage(e.to_string()))?;
        Ok(left)
    }

    async fn instance(&mut self) -> Result<u64> {
        Ok(self.instance)
    }

    async fn hold(&mut self) -> Result<()> {
        self.wait_at_gate().await
    }

    async fn hop(&mut self, route: Vec<String>) -> Result<Vec<String>> {
        let mut visited = vec![self.name()];
        if let Some((next, rest)) = route.split_first() {
            let stub = self.accounts()?.get_by_name(next);
            visited.extend(stub.hop(rest.to_vec()).await?);
        }
        Ok(visited)
    }

    async fn ask_after_gate(&mut self, other: String) -> Result<i64> {
        self.wait_at_gate().await?;
        Ok(self.accounts()?.get_by_name(&other).balance().await?)
    }

    async fn panic(&mut self) -> Result<()> {
        self.state.storage().put("balance", &-1)?;
        panic!("deliberate panic in a called method");
    }

    async fn hang(&mut self) -> Result<()> {
        self.state.storage().put("balance", &-1)?;
        std::future::pending::<()>().await;
        Ok(())
    }
}

fn options(mailbox_capacity: usize, turn_timeout: Duration) -> RuntimeOptions {
    RuntimeOptions {
        host: HostOptions {
            mailbox_capacity,
            turn_timeout,
            ..HostOptions::default()
        },
        ..RuntimeOptions::default()
    }
}

/// A harness over `Bank`, in memory, with a turn limit beyond the tests' patience (so a hang
/// is seen as a hang, not ended by the limit).
fn bank() -> TestHarness {
    let builder = Runtime::builder_in_memory().options(options(1000, PATIENCE * 3));
    TestHarness::from_builder::<Bank>(builder).unwrap()
}

fn account(h: &TestHarness, name: &str) -> AccountStub {
    h.namespace()
        .unwrap()
        .typed::<AccountStub>()
        .get_by_name(name)
}

/// Waits at most [`PATIENCE`] for `f`; a call that hangs fails the test.
async fn soon<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, f)
        .await
        .expect("the call answered in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_returns_the_methods_value_and_objects_call_objects() {
    let h = bank();
    let alice = account(&h, "alice");
    assert_eq!(alice.deposit(10).await.unwrap(), 10);
    assert_eq!(alice.deposit(5).await.unwrap(), 15);
    assert_eq!(alice.balance().await.unwrap(), 15);
    // alice's turn calls bob.
    assert_eq!(alice.transfer("bob".into(), 4).await.unwrap(), 11);
    assert_eq!(account(&h, "bob").balance().await.unwrap(), 4);
    // The stub is still a stub: its id is the object's.
    assert_eq!(alice.id(), &h.namespace().unwrap().id_from_name("alice"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_callees_own_error_comes_back_typed_and_its_writes_roll_back() {
    let h = bank();
    let carol = account(&h, "carol");
    carol.deposit(5).await.unwrap();
    let before = carol.instance().await.unwrap();
    match carol.withdraw(8).await {
        Err(CallError::Object(AccountError::Insufficient { balance })) => assert_eq!(balance, 5),
        other => panic!("expected the account's own error, got {other:?}"),
    }
    assert_eq!(
        carol.balance().await.unwrap(),
        5,
        "the failed call's write (-3) is rolled back"
    );
    assert_ne!(
        carol.instance().await.unwrap(),
        before,
        "the failed call's instance is dropped and rebuilt"
    );
    // Not retryable: the call ran.
    assert!(!carol.withdraw(8).await.unwrap_err().is_retryable());
    // A transfer that fails at its source leaves both ends as they were.
    assert!(carol.transfer("dave".into(), 100).await.is_err());
    assert_eq!(account(&h, "dave").balance().await.unwrap(), 0);
    assert_eq!(carol.balance().await.unwrap(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_turn_around_the_method_is_the_runtimes_error() {
    let builder = Runtime::builder_in_memory().options(options(1000, Duration::from_millis(200)));
    let h = TestHarness::from_builder::<Bank>(builder).unwrap();
    let erin = account(&h, "erin");
    erin.deposit(3).await.unwrap();
    match erin.panic().await {
        Err(CallError::Runtime(Error::ObjectFailed { message, .. })) => {
            assert!(message.contains("deliberate panic"), "{message}");
        }
        other => panic!("expected a failed turn, got {other:?}"),
    }
    match erin.hang().await {
        Err(e @ CallError::Runtime(Error::Timeout(_))) => assert!(!e.is_retryable()),
        other => panic!("expected the time limit, got {other:?}"),
    }
    assert_eq!(erin.balance().await.unwrap(), 3, "both writes rolled back");
    // A method the class does not serve.
    let unserved = h
        .namespace()
        .unwrap()
        .typed::<UnservedStub>()
        .get_by_name("erin");
    match unserved.nothing().await {
        Err(CallError::Runtime(Error::UnknownMethod(m))) => assert_eq!(m, "Unserved.nothing"),
        other => panic!("expected an unknown method, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_mailbox_refuses_the_call_and_says_a_retry_is_safe() {
    let builder = Runtime::builder_in_memory().options(options(1, PATIENCE * 3));
    let h = Arc::new(TestHarness::from_builder::<Bank>(builder).unwrap());
    let busy = account(&h, "busy");
    let holding = tokio::spawn({
        let busy = busy.clone();
        async move { busy.hold().await }
    });
    wait_until("the first call holds the object", || entered("busy") == 1).await;
    // One more fits in the mailbox of one: polled once, the call is in the mailbox.
    let mut queued = std::pin::pin!(busy.deposit(1));
    tokio::select! {
        biased;
        early = &mut queued => panic!("a call got through while the object was held: {early:?}"),
        () = std::future::ready(()) => {}
    }
    // The next is refused at once.
    let refused = soon(busy.balance()).await.unwrap_err();
    assert!(
        matches!(refused, CallError::Runtime(Error::Overloaded)),
        "{refused:?}"
    );
    assert!(refused.is_retryable(), "an overloaded call did not run");
    gate("busy").0.add_permits(1);
    soon(holding).await.unwrap().unwrap();
    assert_eq!(soon(queued).await.unwrap(), 1);
    assert_eq!(
        busy.balance().await.unwrap(),
        1,
        "the retry now gets through"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_cycle_fails_fast() {
    let h = bank();
    let a = account(&h, "cycle-a");
    assert_eq!(
        soon(a.hop(vec!["cycle-b".into(), "cycle-c".into()]))
            .await
            .unwrap(),
        ["cycle-a", "cycle-b", "cycle-c"],
        "a chain without a cycle goes through"
    );
    // a → b → a: b's call is refused, and b passes the refusal on as its own error.
    let e = soon(a.hop(vec!["cycle-b".into(), "cycle-a".into()]))
        .await
        .unwrap_err();
    assert!(matches!(e, CallError::Object(Error::CallCycle(_))), "{e:?}");
    // a → a.
    let e = soon(a.hop(vec!["cycle-a".into()])).await.unwrap_err();
    assert!(matches!(e, CallError::Object(Error::CallCycle(_))), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_turns_that_call_each_other_are_told_of_the_deadlock() {
    let h = bank();
    let (x, y) = (account(&h, "dl-x"), account(&h, "dl-y"));
    x.deposit(1).await.unwrap();
    y.deposit(2).await.unwrap();
    // Two independent turns: x's asks y, y's asks x, each once both are running.
    let x_asks = tokio::spawn({
        let x = x.clone();
        async move { x.ask_after_gate("dl-y".into()).await }
    });
    let y_asks = tokio::spawn({
        let y = y.clone();
        async move { y.ask_after_gate("dl-x".into()).await }
    });
    wait_until("both turns are running", || {
        entered("dl-x") == 1 && entered("dl-y") == 1
    })
    .await;
    gate("dl-x").0.add_permits(1);
    gate("dl-y").0.add_permits(1);
    let results = [soon(x_asks).await.unwrap(), soon(y_asks).await.unwrap()];
    // The second to wait is refused; its turn ends, so the first's call is served.
    let refused: Vec<&CallError<Error>> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert_eq!(refused.len(), 1, "{results:?}");
    let CallError::Object(Error::Deadlock(message)) = refused[0] else {
        panic!("expected a deadlock, got {:?}", refused[0]);
    };
    assert!(
        message.contains("dl-x") && message.contains("dl-y"),
        "{message}"
    );
    let answered: Vec<i64> = results
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .copied()
        .collect();
    assert!(answered == [2] || answered == [1], "{answered:?}");
    // Nothing is left waiting: the same calls, one after the other, both go through.
    let x_asks = tokio::spawn({
        let x = x.clone();
        async move { x.ask_after_gate("dl-y".into()).await }
    });
    gate("dl-x").0.add_permits(1);
    assert_eq!(soon(x_asks).await.unwrap().unwrap(), 2);
}

/// A disk whose syncs wait until the test opens it.
#[derive(Default)]
struct Disk {
    open: Mutex<bool>,
    cv: Condvar,
}

impl Disk {
    fn hook(self: &Arc<Self>) -> rookery::SyncHook {
        let disk = self.clone();
        Arc::new(move || {
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

    fn open(&self) {
        *self.open.lock().unwrap() = true;
        self.cv.notify_all();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_calls_answer_never_precedes_the_durability_of_its_writes() {
    let dir = tempfile::tempdir().unwrap();
    let disk = Arc::new(Disk::default());
    let builder = Runtime::builder(dir.path())
        .sync_hook(disk.hook())
        .options(options(1000, PATIENCE * 3));
    let h = TestHarness::from_builder::<Bank>(builder).unwrap();
    let gated = account(&h, "gated");
    // Whether the disk was open when the answer arrived.
    let seen_open = Arc::new(AtomicBool::new(false));
    let call = tokio::spawn({
        let (gated, disk, seen_open) = (gated.clone(), disk.clone(), seen_open.clone());
        async move {
            let balance = gated.deposit(7).await;
            seen_open.store(disk.is_open(), Ordering::SeqCst);
            balance
        }
    });
    wait_until("the deposit runs", || deposits("gated") == 1).await;
    // The object's next turn starts only after the deposit's turn ended and answered: from
    // then on, an answer that did not wait for the disk would be on its way.
    let next = tokio::spawn({
        let gated = gated.clone();
        async move { gated.hold().await }
    });
    wait_until("the object runs its next turn", || entered("gated") == 1).await;
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert!(
        !call.is_finished(),
        "the call's answer arrived before its write was durable"
    );
    // Nor does the object's own next call leave before its committed deposit is durable.
    let relay = tokio::spawn({
        let gated = gated.clone();
        async move { gated.transfer("payee".into(), 1).await }
    });
    gate("gated").0.add_permits(1);
    wait_until("the transfer runs", || withdrawals("gated") == 1).await;
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert_eq!(
        deposits("payee"),
        0,
        "a call left before the caller's committed writes were durable"
    );
    disk.open();
    assert_eq!(soon(call).await.unwrap().unwrap(), 7);
    assert!(
        seen_open.load(Ordering::SeqCst),
        "the answer arrived while the disk still held the write"
    );
    soon(next).await.unwrap().unwrap();
    assert_eq!(soon(relay).await.unwrap().unwrap(), 6);
    assert_eq!(account(&h, "payee").balance().await.unwrap(), 1);
}

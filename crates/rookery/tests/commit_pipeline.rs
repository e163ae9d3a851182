//! The commit pipeline: outputs wait for durability, turns do not; syncs are shared; a failed
//! sync discards outputs and resets the object. Every kind of output is gated: responses,
//! WebSocket sends and calls to other objects.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, LazyLock, Mutex};
use std::task::Poll;
use std::time::Duration;

use rookery::prelude::*;
use rookery::testing::{BINDING, PATIENCE, TestHarness, wait_until};
use rookery::{
    ClassKey, ClassKeys, CommitLog, CommitRecord, Grant, HeaderName, HeaderValue, Outgoing,
    Runtime, SocketLink, StartError,
};
use serde_json::json;
use tokio::sync::oneshot;

/// Turns handled per object name (requests and socket messages), and instances built.
static TURNS: LazyLock<Mutex<HashMap<String, u64>>> = LazyLock::new(Default::default);
static INSTANCES: AtomicU64 = AtomicU64::new(0);
/// Callers whose call to another object has been polled once (see `/call`).
static CALLS_POLLED: LazyLock<Mutex<HashSet<String>>> = LazyLock::new(Default::default);

fn turns(name: &str) -> u64 {
    TURNS.lock().unwrap().get(name).copied().unwrap_or(0)
}

struct Writer {
    state: ObjectState,
    env: Env,
    instance: u64,
}

impl Writer {
    fn name(&self) -> String {
        self.state.id().name().unwrap_or_default().to_string()
    }

    /// Increments `n` in storage and returns the new value.
    fn bump(&self) -> Result<i64> {
        let s = self.state.storage();
        let n = s.get::<i64>("n")?.unwrap_or(0) + 1;
        s.put("n", &n)?;
        Ok(n)
    }
}

impl DurableObject for Writer {
    fn new(state: ObjectState, env: Env) -> Self {
        Self {
            state,
            env,
            instance: INSTANCES.fetch_add(1, Ordering::SeqCst),
        }
    }

    async fn fetch(&mut self, req: Request) -> Result<Response> {
        let name = self.name();
        *TURNS.lock().unwrap().entry(name.clone()).or_default() += 1;
        let s = self.state.storage();
        if req.is_websocket_upgrade() {
            let ws = self.state.accept_websocket(&req, &[])?;
            return Ok(Response::websocket(&ws));
        }
        match req.path() {
            "/put" => Response::json(&json!({ "n": self.bump()? })),
            "/get" => {
                Response::json(&json!({ "n": s.get::<i64>("n")?, "instance": self.instance }))
            }
            "/put-sync-fail" => {
                s.put("a", &1)?;
                s.sync().await?;
                s.put("b", &2)?;
                Err(Error::msg("failing after sync"))
            }
            "/call" => {
                // Calls `target`'s `/put`. The call is polled once before it is awaited, and
                // that is recorded: a call that did not wait for this object's output gate
                // has reached the other object's mailbox by then.
                let target = req.query_raw("target").unwrap_or_default().to_string();
                let stub = self.env.namespace(BINDING)?.get_by_name(&target);
                let mut call = std::pin::pin!(stub.fetch(Request::post("/put")?));
                let first = std::future::poll_fn(|cx| Poll::Ready(call.as_mut().poll(cx))).await;
                CALLS_POLLED.lock().unwrap().insert(name);
                match first {
                    Poll::Ready(answer) => answer,
                    Poll::Pending => call.await,
                }
            }
            _ => Ok(Response::not_found()),
        }
    }

    /// `put LABEL` increments `n` and sends `LABEL` back; `mark` does nothing (its turn starting
    /// shows that every earlier turn of the object has ended).
    async fn websocket_message(&mut self, ws: WebSocket, message: WsMessage) -> Result<()> {
        *TURNS.lock().unwrap().entry(self.name()).or_default() += 1;
        let text = message.as_text().unwrap_or_default().to_string();
        if let Some(label) = text.strip_prefix("put ") {
            self.bump()?;
            ws.send(label);
        } else if let Some(label) = text.strip_prefix("say ") {
            // Sends without writing: nothing of its own to wait for.
            ws.send(label);
        }
        Ok(())
    }
}

/// A disk whose syncs wait for a gate, can be made to fail, and count rounds.
#[derive(Default)]
struct Disk {
    open: Mutex<bool>,
    cv: Condvar,
    fail_next: AtomicBool,
    rounds: AtomicU64,
    delay: Mutex<Option<Duration>>,
}

impl Disk {
    fn hook(self: &Arc<Self>) -> rookery::SyncHook {
        let disk = self.clone();
        Arc::new(move || {
            disk.rounds.fetch_add(1, Ordering::SeqCst);
            if let Some(d) = *disk.delay.lock().unwrap() {
                std::thread::sleep(d);
            }
            let mut open = disk.open.lock().unwrap();
            while !*open {
                open = disk.cv.wait(open).unwrap();
            }
            if disk.fail_next.swap(false, Ordering::SeqCst) {
                return Err(std::io::Error::other("injected sync failure"));
            }
            Ok(())
        })
    }

    fn set_open(&self, open: bool) {
        *self.open.lock().unwrap() = open;
        self.cv.notify_all();
    }
}

fn harness(dir: &std::path::Path, disk: &Arc<Disk>) -> TestHarness {
    TestHarness::from_builder::<Writer>(Runtime::builder(dir).sync_hook(disk.hook())).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_wait_for_the_disk_but_the_next_turn_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let disk = Arc::new(Disk::default());
    let h = Arc::new(harness(dir.path(), &disk));
    let send = |path: &'static str| {
        let h = h.clone();
        tokio::spawn(async move { h.fetch("gated", Request::post(path).unwrap()).await })
    };
    let first = send("/put");
    wait_until("the first commit reaches the disk", || {
        disk.rounds.load(Ordering::SeqCst) >= 1
    })
    .await;
    let second = send("/get");
    wait_until(
        "the second turn ran while the first sync is pending",
        || turns("gated") == 2,
    )
    .await;
    // Both turns are done, neither may be seen: the first wrote, the second read that write.
    tokio::task::yield_now().await;
    assert!(
        !first.is_finished(),
        "a response left before its write was durable"
    );
    assert!(
        !second.is_finished(),
        "a response based on an undurable read left"
    );
    disk.set_open(true);
    let first = first.await.unwrap().unwrap();
    let second = second.await.unwrap().unwrap();
    assert_eq!(first.json_body::<serde_json::Value>().unwrap()["n"], 1);
    assert_eq!(second.json_body::<serde_json::Value>().unwrap()["n"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_share_syncs() {
    let dir = tempfile::tempdir().unwrap();
    let disk = Arc::new(Disk::default());
    disk.set_open(true);
    // A slow disk: every round takes 5 ms, during which the object keeps committing.
    *disk.delay.lock().unwrap() = Some(Duration::from_millis(5));
    let h = Arc::new(harness(dir.path(), &disk));
    let before = h.runtime().stats();
    let clients: Vec<_> = (0..32)
        .map(|_| {
            let h = h.clone();
            tokio::spawn(async move {
                for _ in 0..20 {
                    let r = h
                        .fetch("shared", Request::post("/put").unwrap())
                        .await
                        .unwrap();
                    assert_eq!(r.status(), 200);
                }
            })
        })
        .collect();
    for c in clients {
        c.await.unwrap();
    }
    let after = h.runtime().stats();
    let commits = after.commits - before.commits;
    let rounds = after.sync_rounds - before.sync_rounds;
    assert_eq!(commits, 640);
    assert!(
        rounds * 4 <= commits,
        "{rounds} sync rounds for {commits} commits"
    );
    let n = h
        .fetch("shared", Request::get("/get").unwrap())
        .await
        .unwrap();
    assert_eq!(n.json_body::<serde_json::Value>().unwrap()["n"], 640);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_sync_discards_the_output_and_stops_writes_until_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let disk = Arc::new(Disk::default());
    disk.set_open(true);
    let h = harness(dir.path(), &disk);
    let r = h.fetch("f", Request::post("/put").unwrap()).await.unwrap();
    assert_eq!(r.json_body::<serde_json::Value>().unwrap()["n"], 1);
    let before = h.fetch("f", Request::get("/get").unwrap()).await.unwrap();
    let instance = before.json_body::<serde_json::Value>().unwrap()["instance"].clone();

    disk.fail_next.store(true, Ordering::SeqCst);
    let failed = h.fetch("f", Request::post("/put").unwrap()).await;
    match failed {
        Err(Error::Durability(_)) => {}
        other => panic!("expected a durability error, got {other:?}"),
    }
    let after = h.fetch("f", Request::get("/get").unwrap()).await.unwrap();
    let after = after.json_body::<serde_json::Value>().unwrap();
    assert_ne!(after["instance"], instance, "the object was reset");
    // After a failed sync nothing written since the last good one can ever count as durable:
    // the node takes no writes until it restarts and recovers from what is on disk.
    match h.fetch("f", Request::post("/put").unwrap()).await {
        Err(Error::StorageUnavailable(_)) => {}
        other => panic!("expected storage unavailable, got {other:?}"),
    }
    assert!(h.shutdown().await);
    let h = harness(dir.path(), &disk);
    let after = h.fetch("f", Request::get("/get").unwrap()).await.unwrap();
    let n = after.json_body::<serde_json::Value>().unwrap()["n"].clone();
    // What the failed sync's write left is unknown to the client: it never saw it succeed.
    assert!(n == 1 || n == 2, "{n}");
    let r = h.fetch("f", Request::post("/put").unwrap()).await.unwrap();
    assert_eq!(r.status(), 200, "the object works again after the restart");
}

/// A bookmark names a log position; until the log is durable through it, a crash could give
/// that position to other records. So the turn that hands one out answers only once the log is
/// durable through it, and a log that fails before then fails the answer too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bookmark_is_answered_only_once_the_log_is_durable_through_it() {
    let dir = tempfile::tempdir().unwrap();
    let disk = Arc::new(Disk::default());
    let h = Arc::new(harness(dir.path(), &disk));
    // Another object's commit is in the log, its sync round held by the disk.
    let put = {
        let h = h.clone();
        tokio::spawn(async move { h.fetch("writes", Request::post("/put").unwrap()).await })
    };
    wait_until("the commit's sync round started", || {
        disk.rounds.load(Ordering::SeqCst) >= 1
    })
    .await;
    let asked = Arc::new(AtomicBool::new(false));
    let bookmark = {
        let (h, asked) = (h.clone(), asked.clone());
        tokio::spawn(async move {
            h.run("bookmarked", move |state| {
                let bookmark = state.storage().get_current_bookmark();
                asked.store(true, Ordering::SeqCst);
                bookmark
            })
            .await
        })
    };
    wait_until("the bookmark was taken", || asked.load(Ordering::SeqCst)).await;
    // The round fails: the log is durable through neither the commit nor the bookmark.
    disk.fail_next.store(true, Ordering::SeqCst);
    disk.set_open(true);
    let answer = tokio::time::timeout(PATIENCE, bookmark)
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(answer, Err(Error::Durability(_))),
        "a bookmark past the durable log was handed out: {answer:?}"
    );
    let put = tokio::time::timeout(PATIENCE, put).await.unwrap().unwrap();
    assert!(put.is_err(), "the commit was acknowledged: {put:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_commits_the_turn_so_far() {
    let dir = tempfile::tempdir().unwrap();
    let disk = Arc::new(Disk::default());
    disk.set_open(true);
    let h = harness(dir.path(), &disk);
    let r = h.fetch("s", Request::post("/put-sync-fail").unwrap()).await;
    assert!(r.is_err());
    let (a, b) = h
        .run("s", |state| {
            Ok((
                state.storage().get::<i64>("a")?,
                state.storage().get::<i64>("b")?,
            ))
        })
        .await
        .unwrap();
    assert_eq!(
        (a, b),
        (Some(1), None),
        "writes before sync() stay, writes after it roll back"
    );
}

/// A commit log whose acknowledgements the test releases by hand.
#[derive(Default)]
struct HeldLog {
    pending: Mutex<Vec<oneshot::Sender<Result<()>>>>,
    appended: AtomicU64,
}

impl CommitLog for HeldLog {
    fn append(&self, _record: &CommitRecord<'_>) -> Option<oneshot::Receiver<Result<()>>> {
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap().push(tx);
        self.appended.fetch_add(1, Ordering::SeqCst);
        Some(rx)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_wait_for_the_commit_log_and_its_refusal_discards_them() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(HeldLog::default());
    let h = Arc::new(
        TestHarness::from_builder::<Writer>(Runtime::builder(dir.path()).commit_log(log.clone()))
            .unwrap(),
    );
    let h2 = h.clone();
    let req = tokio::spawn(async move { h2.fetch("l", Request::post("/put").unwrap()).await });
    wait_until("the commit is appended", || {
        log.appended.load(Ordering::SeqCst) == 1
    })
    .await;
    tokio::task::yield_now().await;
    assert!(
        !req.is_finished(),
        "a response left before the log acknowledged its commit"
    );
    for ack in log.pending.lock().unwrap().drain(..) {
        ack.send(Ok(())).unwrap();
    }
    assert_eq!(req.await.unwrap().unwrap().status(), 200);

    let h2 = h.clone();
    let req = tokio::spawn(async move { h2.fetch("l", Request::post("/put").unwrap()).await });
    wait_until("the second commit is appended", || {
        log.appended.load(Ordering::SeqCst) == 2
    })
    .await;
    for ack in log.pending.lock().unwrap().drain(..) {
        ack.send(Err(Error::msg("fenced: another node owns this object")))
            .unwrap();
    }
    assert!(matches!(req.await.unwrap(), Err(Error::Durability(_))));
}

/// What the fencing log saw of a commit: epoch, LSN, database pages, pages handed over.
type Seen = (u64, Option<u64>, u32, usize);

/// A replicated log in miniature: it hands out epochs and refuses commits of a stale one.
#[derive(Default)]
struct FencingLog {
    /// The owner's epoch; an activation gets the next one.
    owner: AtomicU64,
    /// (epoch, lsn, db_pages, pages) of every commit appended.
    seen: Mutex<Vec<Seen>>,
}

impl CommitLog for FencingLog {
    fn activate(&self, _class: &str, _object: &ObjectId) -> Result<Grant> {
        Ok(Grant {
            epoch: self.owner.fetch_add(1, Ordering::SeqCst) + 1,
            ..Grant::default()
        })
    }

    fn wants_pages(&self) -> bool {
        true
    }

    fn append(&self, record: &CommitRecord<'_>) -> Option<oneshot::Receiver<Result<()>>> {
        self.seen.lock().unwrap().push((
            record.epoch,
            record.lsn,
            record.db_pages,
            record.pages.count() as usize,
        ));
        if record.epoch >= self.owner.load(Ordering::SeqCst) {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        let _ = tx.send(Err(Error::Fenced(format!(
            "epoch {} is stale",
            record.epoch
        ))));
        Some(rx)
    }
}

#[tokio::test]
async fn a_commit_of_a_stale_epoch_is_fenced_and_the_object_opens_again_with_a_new_one() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(FencingLog::default());
    let h =
        TestHarness::from_builder::<Writer>(Runtime::builder(dir.path()).commit_log(log.clone()))
            .unwrap();
    let put = || h.fetch("f", Request::post("/put").unwrap());
    assert_eq!(put().await.unwrap().status(), 200);
    {
        let seen = log.seen.lock().unwrap();
        let (epoch, lsn, db_pages, pages) = seen[0];
        assert_eq!(epoch, 1, "the activation's epoch travels with its commits");
        assert!(lsn.is_some(), "the node log's position travels too");
        assert!(
            db_pages > 0 && pages > 0,
            "a log that wants pages gets them"
        );
    }
    // Another node takes the object over: this node's next commit is refused, the caller is
    // told, and no acknowledgement goes out.
    log.owner.fetch_add(1, Ordering::SeqCst);
    match put().await {
        Err(Error::Fenced(_)) => {}
        other => panic!("expected Fenced, got {other:?}"),
    }
    assert_eq!(Error::Fenced(String::new()).status(), 503);
    // The object is reset; opening it again asks for a new epoch, and its commits carry it.
    assert_eq!(put().await.unwrap().status(), 200);
    let last = *log.seen.lock().unwrap().last().unwrap();
    assert_eq!(last.0, 3, "the new activation's epoch");
    assert!(h.shutdown().await);
}

/// A replicated log in miniature: it keeps each object's database, built from the pages of
/// its commits, and hands it to whichever node opens the object next.
struct ReplicaLog {
    /// The node this view of the log serves.
    node: u32,
}

/// Two nodes' views of the one [`ReplicaLog`].
fn replica_pair() -> (Arc<ReplicaLog>, Arc<ReplicaLog>) {
    (
        Arc::new(ReplicaLog { node: 1 }),
        Arc::new(ReplicaLog { node: 2 }),
    )
}

/// An object's database image in the replica log, and the node that wrote it last.
type Replica = (Vec<u8>, u32);

/// What the replica log holds, per object.
static SHARED_IMAGES: LazyLock<Mutex<HashMap<ObjectId, Replica>>> = LazyLock::new(Default::default);

impl CommitLog for ReplicaLog {
    fn activate(&self, _class: &str, object: &ObjectId) -> Result<Grant> {
        let images = SHARED_IMAGES.lock().unwrap();
        // Ran here last (or never ran): the local copy stands.
        let image = match images.get(object) {
            Some((image, node)) if *node != self.node => Some(image.clone()),
            _ => None,
        };
        eprintln!(
            "activate node {} image {:?}",
            self.node,
            image.as_ref().map(Vec::len)
        );
        Ok(Grant {
            epoch: 1,
            image,
            ..Grant::default()
        })
    }

    fn wants_pages(&self) -> bool {
        true
    }

    fn append(&self, record: &CommitRecord<'_>) -> Option<oneshot::Receiver<Result<()>>> {
        let mut images = SHARED_IMAGES.lock().unwrap();
        let entry = images.entry(record.object.clone()).or_default();
        entry.1 = self.node;
        eprintln!(
            "append node {} pages {} db {}",
            self.node,
            record.pages.count(),
            record.db_pages
        );
        let (tx, rx) = oneshot::channel();
        let _ = tx.send(
            record
                .pages
                .apply(&mut entry.0, record.db_pages)
                .map_err(|e| Error::msg(format!("bad pages: {e}"))),
        );
        Some(rx)
    }
}

/// Class keys both nodes of the pair agree on: the first proposal for a name stands.
struct SharedKeys;

static SHARED_KEYS: LazyLock<Mutex<HashMap<String, ClassKey>>> = LazyLock::new(Default::default);

impl ClassKeys for SharedKeys {
    fn agree(&self, name: &str, proposed: ClassKey) -> Result<ClassKey, StartError> {
        let mut keys = SHARED_KEYS.lock().unwrap();
        Ok(keys.entry(name.to_string()).or_insert(proposed).clone())
    }
}

/// A node of the pair: its data directory, its view of the replica log, the shared keys.
fn replica_node(dir: &std::path::Path, log: Arc<ReplicaLog>) -> TestHarness {
    TestHarness::from_builder::<Writer>(
        Runtime::builder(dir)
            .commit_log(log)
            .class_keys(Arc::new(SharedKeys)),
    )
    .unwrap()
}

#[tokio::test]
async fn an_object_opens_elsewhere_with_the_state_its_commit_log_hands_over() {
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (log_a, log_b) = replica_pair();
    let a = replica_node(dir_a.path(), log_a);
    for want in 1..=3 {
        let resp = a
            .fetch("moving", Request::post("/put").unwrap())
            .await
            .unwrap();
        assert_eq!(resp.json_body::<serde_json::Value>().unwrap()["n"], want);
    }
    assert!(a.shutdown().await);
    // Node B never saw the object: it opens with the log's copy, not an empty database.
    let b = replica_node(dir_b.path(), log_b);
    let resp = b
        .fetch("moving", Request::post("/put").unwrap())
        .await
        .unwrap();
    assert_eq!(resp.json_body::<serde_json::Value>().unwrap()["n"], 4);
    assert!(b.shutdown().await);
    // Back on A, whose own file still says 3: the log's copy (4) wins.
    let (log_a, _) = replica_pair();
    let a = replica_node(dir_a.path(), log_a);
    let resp = a
        .fetch("moving", Request::get("/get").unwrap())
        .await
        .unwrap();
    assert_eq!(resp.json_body::<serde_json::Value>().unwrap()["n"], 4);
    assert!(a.shutdown().await);
}

fn upgrade(path: &str) -> Request {
    Request::get(path).unwrap().with_header(
        HeaderName::from_static("upgrade"),
        HeaderValue::from_static("websocket"),
    )
}

/// Opens a WebSocket to the object called `name`, as a connection would hold it.
async fn open_socket(h: &TestHarness, name: &str) -> SocketLink {
    let mut resp = h.fetch(name, upgrade("/ws")).await.unwrap();
    resp.take_socket_link()
        .expect("the object handed the socket over")
}

/// Hands `text` to the object as a message from the client.
async fn say(link: &SocketLink, text: &str) {
    assert_eq!(link.incoming(WsMessage::text(text)).await, Ok(None));
}

/// Waits until the socket has `n` frames for the client (in all, with `got`), and returns them.
async fn frames(link: &SocketLink, mut got: Vec<Outgoing>, n: usize) -> Vec<Outgoing> {
    while got.len() < n {
        tokio::time::timeout(PATIENCE, link.ready())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {n} frames; got {got:?}"));
        link.take_outgoing(&mut got);
    }
    got
}

fn text(s: &str) -> Outgoing {
    Outgoing::Message(WsMessage::text(s))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_sends_wait_for_the_disk_leave_in_turn_order_and_die_with_a_failed_sync() {
    let dir = tempfile::tempdir().unwrap();
    let disk = Arc::new(Disk::default());
    disk.set_open(true);
    let h = harness(dir.path(), &disk);
    let link = open_socket(&h, "ws").await;

    // The disk stops: twenty turns commit and send, none of it may leave.
    disk.set_open(false);
    let turns_before = turns("ws");
    for i in 1..=20 {
        say(&link, &format!("put {i}")).await;
    }
    // When `mark` starts, the twenty turns have ended and released what they sent, if
    // anything could be released.
    say(&link, "mark").await;
    wait_until("the twenty turns have ended", || {
        turns("ws") == turns_before + 21
    })
    .await;
    wait_until("their sync waits for the disk", || {
        disk.rounds.load(Ordering::SeqCst) >= 1
    })
    .await;
    let mut got = Vec::new();
    link.take_outgoing(&mut got);
    assert!(
        got.is_empty(),
        "sends left before their turn's writes were durable: {got:?}"
    );

    // The disk comes back: everything leaves, in turn order.
    disk.set_open(true);
    let got = frames(&link, got, 20).await;
    let expected: Vec<Outgoing> = (1..=20).map(|i| text(&i.to_string())).collect();
    assert_eq!(got, expected);

    // A failed sync: what its turn sent never leaves. The node then takes no writes until it
    // restarts (what a write turn sends dies with it); a turn that writes nothing still sends.
    disk.fail_next.store(true, Ordering::SeqCst);
    say(&link, "put doomed").await;
    // A request behind that turn is answered only once the sync has failed (with an error if
    // it was served before the object noticed); the next turn then runs on a reset object.
    let _ = h.fetch("ws", Request::get("/get").unwrap()).await;
    assert!(!disk.fail_next.load(Ordering::SeqCst), "the sync failed");
    say(&link, "put refused").await;
    say(&link, "say after").await;
    let got = frames(&link, Vec::new(), 1).await;
    assert_eq!(
        got[0],
        text("after"),
        "the first frame after the failed sync: {got:?}"
    );
    assert_eq!(got.len(), 1, "{got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_does_not_reach_its_callee_before_the_callers_writes_are_durable() {
    let dir = tempfile::tempdir().unwrap();
    let disk = Arc::new(Disk::default());
    let h = Arc::new(harness(dir.path(), &disk));
    let send = |path: &'static str| {
        let h = h.clone();
        tokio::spawn(async move { h.fetch("caller", Request::post(path).unwrap()).await })
    };
    // The caller writes; the disk holds the sync.
    let put = send("/put");
    wait_until("the write waits for the disk", || {
        disk.rounds.load(Ordering::SeqCst) >= 1
    })
    .await;
    let activations = h.runtime().stats().activations;
    // Its next turn calls another object.
    let call = send("/call?target=callee");
    wait_until("the call has been polled", || {
        CALLS_POLLED.lock().unwrap().contains("caller")
    })
    .await;
    assert_eq!(
        h.runtime().stats().activations,
        activations,
        "the call reached the callee before the caller's writes were durable"
    );
    assert_eq!(turns("callee"), 0);
    assert!(!put.is_finished() && !call.is_finished());

    disk.set_open(true);
    assert_eq!(put.await.unwrap().unwrap().status(), 200);
    let answer = call.await.unwrap().unwrap();
    assert_eq!(answer.json_body::<serde_json::Value>().unwrap()["n"], 1);
    assert_eq!(turns("callee"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_round_of_one_object_syncs_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let disk = Arc::new(Disk::default());
    disk.set_open(true);
    let h = Arc::new(harness(dir.path(), &disk));
    let put = |name: String| {
        let h = h.clone();
        tokio::spawn(async move { h.fetch(&name, Request::post("/put").unwrap()).await })
    };

    // Rounds of one object: each answered write is a round of its own.
    let before = h.runtime().stats();
    for _ in 0..10 {
        put("single".into()).await.unwrap().unwrap();
    }
    let after = h.runtime().stats();
    let rounds = after.sync_rounds - before.sync_rounds;
    let syncs = after.file_syncs - before.file_syncs;
    assert!(rounds >= 10, "{rounds} rounds for 10 answered writes");
    assert!(
        syncs >= rounds,
        "{syncs} file syncs in {rounds} rounds of one object each"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_of_many_objects_is_made_durable_by_one_sync() {
    let dir = tempfile::tempdir().unwrap();
    let disk = Arc::new(Disk::default());
    let h = Arc::new(harness(dir.path(), &disk));
    let put = |name: String| {
        let h = h.clone();
        tokio::spawn(async move { h.fetch(&name, Request::post("/put").unwrap()).await })
    };
    // The disk holds a first round (one object) while eight more objects commit, so the next
    // round has all eight: one sync of the node log covers them all (never a `syncfs`, which
    // some file systems, FUSE among them, do not see).
    let before = h.runtime().stats();
    let rounds_before = disk.rounds.load(Ordering::SeqCst);
    let plug = put("plug".into());
    wait_until("the first round waits for the disk", || {
        disk.rounds.load(Ordering::SeqCst) > rounds_before
    })
    .await;
    let many: Vec<_> = (0..8).map(|i| put(format!("many-{i}"))).collect();
    let rt = h.runtime().clone();
    wait_until("all nine have committed", || {
        rt.stats().commits - before.commits == 9
    })
    .await;
    disk.set_open(true);
    assert_eq!(plug.await.unwrap().unwrap().status(), 200);
    for m in many {
        assert_eq!(m.await.unwrap().unwrap().status(), 200);
    }
    let after = h.runtime().stats();
    let syncs = after.file_syncs - before.file_syncs;
    let rounds = after.sync_rounds - before.sync_rounds;
    // One sync of the node log makes a round durable, however many objects it holds.
    assert!(syncs >= rounds, "{syncs} syncs for {rounds} rounds");
    assert!(
        rounds < 9,
        "the eight objects shared rounds: {rounds} rounds for 9 commits"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_that_never_stops_writing_is_still_checkpointed() {
    let dir = tempfile::tempdir().unwrap();
    // A disk whose syncs take a while: eight writers then keep a commit of the object in
    // flight at every moment between its turns, for several thousand WAL frames.
    let slow: rookery::SyncHook = Arc::new(|| {
        std::thread::sleep(Duration::from_millis(2));
        Ok(())
    });
    let h = Arc::new(
        TestHarness::from_builder::<Writer>(Runtime::builder(dir.path()).sync_hook(slow)).unwrap(),
    );
    let writers: Vec<_> = (0..8)
        .map(|_| {
            let h = h.clone();
            tokio::spawn(async move {
                for _ in 0..400 {
                    let r = h
                        .fetch("hot", Request::post("/put").unwrap())
                        .await
                        .unwrap();
                    assert_eq!(r.status(), 200);
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    // A WAL frame is a 4 KiB page and a 24-byte header; the runtime folds the WAL into the
    // file once it passes 1 000 frames.
    // The WALs are in memory; this counts every runtime's in the process (the other tests'
    // objects hold a few frames each).
    let wal = h.runtime().stats().wal_bytes;
    assert!(
        wal < 1_500 * 4_120,
        "the WAL of a busy object grew to {wal} bytes: it was never checkpointed"
    );
}

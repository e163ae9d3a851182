//! What a turn sends on its object's sockets: held while the turn runs, then released, in turn
//! order, once the writes the sends follow are durable (or dropped with a failed turn).
//!
//! A turn runs inside [`in_turn`], which marks the task as running a turn of one object; a send
//! from that task to one of that object's sockets is held in the object's outbox. Sends from
//! anywhere else (another object's turn, a task outside any turn) leave at once.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};

use super::Outgoing;
use super::inner::SocketInner;
use crate::storage::OutputGate;

/// Frames a turn sent, waiting for the turn's outcome.
pub(crate) type Frames = Vec<(Arc<SocketInner>, Outgoing)>;

tokio::task_local! {
    /// The outbox of the object whose turn this task is running.
    static TURN_OUTBOX: Arc<Outbox>;
}

/// Runs `turn` as a turn of the object owning `outbox`: what it sends on the object's sockets
/// is held there.
pub(crate) async fn in_turn<F: Future>(outbox: Arc<Outbox>, turn: F) -> F::Output {
    TURN_OUTBOX.scope(outbox, turn).await
}

/// Sends `out` on `socket` now, or, inside a turn of the socket's object, when the turn ends
/// well and its writes are durable.
pub(super) fn emit(socket: &Arc<SocketInner>, out: Outgoing) {
    let mut out = Some(out);
    let _ = TURN_OUTBOX.try_with(|outbox| {
        if outbox.owner == socket.owner
            && let Some(out) = out.take()
        {
            outbox.held().push((socket.clone(), out));
        }
    });
    if let Some(out) = out {
        socket.deliver(out);
    }
}

/// One object's held and releasing frames.
pub(crate) struct Outbox {
    /// The id its sockets carry as their owner.
    owner: u64,
    /// What the running turn sent so far.
    held: Mutex<Frames>,
    /// Frames of ended turns waiting for their gates, in turn order.
    release: Mutex<Release>,
}

#[derive(Default)]
struct Release {
    pending: VecDeque<(OutputGate, Frames)>,
    draining: bool,
}

impl Outbox {
    /// The outbox of the sockets owned by `owner`.
    pub(super) fn new(owner: u64) -> Self {
        Self {
            owner,
            held: Mutex::new(Vec::new()),
            release: Mutex::new(Release::default()),
        }
    }

    /// The id this outbox's sockets carry.
    pub(super) fn owner(&self) -> u64 {
        self.owner
    }

    fn held(&self) -> MutexGuard<'_, Frames> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `hold` on the held frames if this task is running a turn of this outbox's object.
    pub(super) fn hold_if_in_turn<R>(&self, hold: impl FnOnce(&mut Frames) -> R) -> Option<R> {
        TURN_OUTBOX
            .try_with(|current| (current.owner == self.owner).then(|| hold(&mut self.held())))
            .ok()
            .flatten()
    }

    /// Takes what the running turn sent (to release or drop when it ends).
    pub(super) fn take(&self) -> Frames {
        std::mem::take(&mut *self.held())
    }

    /// Releases `frames` when `gate` opens, after every earlier turn's frames.
    pub(super) fn release(self: &Arc<Self>, gate: OutputGate, frames: Frames) {
        if frames.is_empty() {
            return;
        }
        let mut release = self.release.lock().unwrap_or_else(|e| e.into_inner());
        if !release.draining && release.pending.is_empty() && gate.is_open() {
            drop(release);
            deliver_all(frames);
            return;
        }
        release.pending.push_back((gate, frames));
        if !release.draining {
            release.draining = true;
            tokio::spawn(drain(self.clone()));
        }
    }
}

fn deliver_all(frames: Frames) {
    for (socket, out) in frames {
        socket.deliver(out);
    }
}

async fn drain(outbox: Arc<Outbox>) {
    loop {
        let next = {
            let mut release = outbox.release.lock().unwrap_or_else(|e| e.into_inner());
            match release.pending.pop_front() {
                Some(next) => next,
                None => {
                    release.draining = false;
                    return;
                }
            }
        };
        let (gate, frames) = next;
        // A failed commit discards what its turn sent.
        if gate.wait().await.is_ok() {
            deliver_all(frames);
        }
    }
}

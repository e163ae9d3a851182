//! What a turn emits besides its reply (WebSocket frames, stream chunks, `wait_until` work):
//! held while the turn runs, then released, in turn order, once the writes they follow are
//! durable, or discarded with a failed turn.
//!
//! A turn runs inside [`in_turn`], which marks its task with the *owner* id of its object; an
//! output emitted from that task for the same owner is held in the object's [`Outbox`].
//! Outputs emitted anywhere else (another object's turn, a task outside any turn) are released
//! at once.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::storage::OutputGate;

tokio::task_local! {
    /// The owner id of the object whose turn this task is running.
    static TURN_OWNER: u64;
}

/// Runs `turn` as a turn of the object whose outputs carry `owner`.
pub(crate) async fn in_turn<F: Future>(owner: u64, turn: F) -> F::Output {
    TURN_OWNER.scope(owner, turn).await
}

/// Whether this task is running a turn of the object whose outputs carry `owner`.
pub(crate) fn in_turn_of(owner: u64) -> bool {
    TURN_OWNER.try_with(|o| *o == owner).unwrap_or(false)
}

/// An output a turn can emit.
pub(crate) trait Release: Send + 'static {
    /// Lets the output take effect (deliver the frame, start the work).
    fn release(self);

    /// Drops the output of a turn that failed or whose writes did not become durable. Most
    /// outputs vanish; one that must not be lost (a stream's end when its last handle is gone)
    /// takes effect anyway.
    fn discard(self)
    where
        Self: Sized,
    {
    }
}

/// One object's held and releasing outputs of one kind.
pub(crate) struct Outbox<T> {
    /// The id this object's turns and outputs carry.
    owner: u64,
    /// What the running turn emitted so far.
    held: Mutex<Vec<T>>,
    /// Outputs of ended turns waiting for their gates, in turn order.
    pending: Mutex<Pending<T>>,
}

struct Pending<T> {
    queue: VecDeque<(OutputGate, Vec<T>)>,
    draining: bool,
}

impl<T: Release> Outbox<T> {
    /// An empty outbox for the object whose outputs carry `owner`.
    pub(crate) fn new(owner: u64) -> Self {
        Self {
            owner,
            held: Mutex::new(Vec::new()),
            pending: Mutex::new(Pending {
                queue: VecDeque::new(),
                draining: false,
            }),
        }
    }

    /// The id this outbox's object carries.
    pub(crate) fn owner(&self) -> u64 {
        self.owner
    }

    fn held(&self) -> MutexGuard<'_, Vec<T>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `hold` on the held outputs if this task is running a turn of this outbox's object.
    pub(crate) fn hold_with<R>(&self, hold: impl FnOnce(&mut Vec<T>) -> R) -> Option<R> {
        in_turn_of(self.owner).then(|| hold(&mut self.held()))
    }

    /// Holds `item` for the end of the running turn of this outbox's object; outside such a
    /// turn it is handed back, for the caller to release at once.
    pub(crate) fn hold(&self, item: T) -> Option<T> {
        let mut item = Some(item);
        self.hold_with(|held| held.extend(item.take()));
        item
    }

    /// Like [`Outbox::hold`], but outside a turn `item` is released after what earlier turns
    /// emitted and is still waiting for its gate, not ahead of it.
    pub(crate) fn emit_in_order(self: &Arc<Self>, item: T) {
        if let Some(item) = self.hold(item) {
            self.release(OutputGate::open(), vec![item]);
        }
    }

    /// Takes what the running turn emitted (to release or discard when it ends).
    pub(crate) fn take(&self) -> Vec<T> {
        std::mem::take(&mut *self.held())
    }

    /// Releases `items` when `gate` opens, after every earlier turn's outputs; discards them if
    /// the gate reports that the writes they follow were lost.
    pub(crate) fn release(self: &Arc<Self>, gate: OutputGate, items: Vec<T>) {
        if items.is_empty() {
            return;
        }
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if !pending.draining && pending.queue.is_empty() && gate.is_open() {
            drop(pending);
            items.into_iter().for_each(T::release);
            return;
        }
        pending.queue.push_back((gate, items));
        if !pending.draining {
            pending.draining = true;
            tokio::spawn(drain(self.clone()));
        }
    }
}

/// Drops the outputs of a failed turn.
pub(crate) fn discard<T: Release>(items: Vec<T>) {
    items.into_iter().for_each(T::discard);
}

async fn drain<T: Release>(outbox: Arc<Outbox<T>>) {
    loop {
        let next = {
            let mut pending = outbox.pending.lock().unwrap_or_else(|e| e.into_inner());
            match pending.queue.pop_front() {
                Some(next) => next,
                None => {
                    pending.draining = false;
                    return;
                }
            }
        };
        let (gate, items) = next;
        // A failed commit discards what its turn emitted.
        if gate.wait().await.is_ok() {
            items.into_iter().for_each(T::release);
        } else {
            discard(items);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Note(Arc<Mutex<Vec<&'static str>>>, &'static str);

    impl Release for Note {
        fn release(self) {
            self.0.lock().unwrap().push(self.1);
        }

        fn discard(self) {
            self.0.lock().unwrap().push("discarded");
        }
    }

    #[tokio::test]
    async fn outputs_are_held_only_in_a_turn_of_their_owner() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let outbox = Arc::new(Outbox::new(7));
        outbox.emit_in_order(Note(log.clone(), "outside"));
        in_turn(8, async {
            outbox.emit_in_order(Note(log.clone(), "other object's turn"))
        })
        .await;
        assert!(
            in_turn(7, async { outbox.hold(Note(log.clone(), "held")) })
                .await
                .is_none()
        );
        assert_eq!(*log.lock().unwrap(), ["outside", "other object's turn"]);
        let held = outbox.take();
        assert_eq!(held.len(), 1);
        discard(held);
        assert_eq!(log.lock().unwrap().last(), Some(&"discarded"));
    }
}

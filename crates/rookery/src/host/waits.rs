//! Who waits on whom: the calls that running turns wait for, so that a call that would close a
//! loop of turns waiting on each other (a deadlock) is refused instead of hanging until the
//! turns' time limits.
//!
//! An object runs one turn at a time, so "object X waits on Y" means: X's running turn is
//! waiting for the answer of a call to Y. Y cannot serve that call until its own running turn
//! ends. Before a turn of X waits on Y, [`Waits::enter`] follows Y's waits (and theirs); if
//! they lead back to X, every turn on the loop waits for the next one and none can end.
//!
//! The check and the record are one step under one lock, so two turns that call each other at
//! the same moment cannot both pass: whichever comes second sees the first's wait.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::addr::ObjectKey;

/// The waits of every running turn on this node.
#[derive(Default)]
pub(crate) struct Waits {
    /// For each object whose running turn waits on calls: the objects it waits on (one entry
    /// per outstanding call, so a turn may fan out).
    edges: Mutex<HashMap<ObjectKey, Vec<ObjectKey>>>,
}

/// A recorded wait; dropping it (the answer came, or the caller gave up) removes it.
pub(crate) struct Waiting {
    waits: Arc<Waits>,
    from: ObjectKey,
    to: ObjectKey,
}

impl Waits {
    fn edges(&self) -> MutexGuard<'_, HashMap<ObjectKey, Vec<ObjectKey>>> {
        // The map is consistent after every step; a panic elsewhere cannot leave it half done.
        self.edges
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records that the running turn of `from` waits on a call to `to`, unless the running turn
    /// of `to` waits, directly or through others, on `from`: then `None`, and nothing is
    /// recorded.
    pub(crate) fn enter(self: &Arc<Self>, from: ObjectKey, to: ObjectKey) -> Option<Waiting> {
        let mut edges = self.edges();
        if reaches(&edges, to, from) {
            return None;
        }
        edges.entry(from).or_default().push(to);
        Some(Waiting {
            waits: self.clone(),
            from,
            to,
        })
    }
}

/// Whether the waits starting at `start` lead to `target`.
fn reaches(
    edges: &HashMap<ObjectKey, Vec<ObjectKey>>,
    start: ObjectKey,
    target: ObjectKey,
) -> bool {
    // Most callees wait on nothing: no walk, no allocation.
    let Some(first) = edges.get(&start) else {
        return false;
    };
    let mut stack: Vec<ObjectKey> = first.clone();
    let mut seen: Vec<ObjectKey> = vec![start];
    while let Some(key) = stack.pop() {
        if key == target {
            return true;
        }
        if seen.contains(&key) {
            continue;
        }
        seen.push(key);
        if let Some(next) = edges.get(&key) {
            stack.extend_from_slice(next);
        }
    }
    false
}

impl Drop for Waiting {
    fn drop(&mut self) {
        let mut edges = self.waits.edges();
        if let Some(to) = edges.get_mut(&self.from) {
            if let Some(i) = to.iter().position(|k| *k == self.to) {
                to.swap_remove(i);
            }
            if to.is_empty() {
                edges.remove(&self.from);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> ObjectKey {
        ObjectKey {
            class: 0,
            id: [n; crate::id::ID_BYTES],
        }
    }

    #[test]
    fn a_wait_that_would_close_a_loop_is_refused() {
        let waits = Arc::new(Waits::default());
        let (a, b, c) = (key(1), key(2), key(3));
        let ab = waits.enter(a, b).expect("a may wait on b");
        let bc = waits.enter(b, c).expect("b may wait on c");
        assert!(waits.enter(c, a).is_none(), "c → a → b → c");
        assert!(waits.enter(b, a).is_none(), "b → a → b");
        // Fan-out: a second wait of a's turn.
        let ac = waits.enter(a, c).expect("a may wait on c too");
        drop(bc);
        let ca = waits.enter(c, a);
        assert!(ca.is_none(), "a still waits on c");
        drop(ac);
        let ca = waits
            .enter(c, a)
            .expect("a's turn waits on b only, and b on nothing");
        drop((ab, ca));
        assert!(
            waits.edges().is_empty(),
            "every wait is gone with its guard"
        );
    }
}

//! What each class has in memory now, read in one pass over the registry (for metrics).

use super::Host;
use crate::addr::ObjectKey;

/// What one class has in memory now.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ClassStats {
    /// The class's name.
    pub class: String,
    /// Objects with a live activation.
    pub live_objects: usize,
    /// Objects out of memory whose hibernatable WebSockets stay connected.
    pub hibernated_objects: usize,
    /// WebSockets open.
    pub websockets: usize,
    /// Events waiting in the live objects' mailboxes.
    pub queued_events: usize,
}

impl Host {
    /// Per class, in class order: live and hibernated objects, WebSockets, queued events.
    pub(crate) fn class_stats(&self) -> Vec<ClassStats> {
        let host = &self.0;
        let mut out: Vec<ClassStats> = host
            .classes
            .iter()
            .map(|c| ClassStats {
                class: c.info.name.to_string(),
                ..Default::default()
            })
            .collect();
        for slot in host.objects.iter() {
            if let Some(stats) = out.get_mut(slot.key().class as usize) {
                stats.live_objects += 1;
                let mailbox = &slot.value().mailbox;
                stats.queued_events += mailbox.max_capacity() - mailbox.capacity();
            }
        }
        // Collected first: looking into `objects` while holding a shard of `sockets` could
        // wait on a writer that waits on that shard.
        let with_sockets: Vec<(ObjectKey, usize)> = host
            .sockets
            .iter()
            .filter(|s| s.len() > 0)
            .map(|s| (*s.key(), s.len()))
            .collect();
        for (key, sockets) in with_sockets {
            if let Some(stats) = out.get_mut(key.class as usize) {
                stats.websockets += sockets;
                if !host.objects.contains_key(&key) {
                    stats.hibernated_objects += 1;
                }
            }
        }
        out
    }
}

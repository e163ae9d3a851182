//! Built-in Rookery object classes, reproducing the workloads of our users: a counter, a
//! sliding-window rate limiter, a chat room and a JSON key-value store.

mod chat_room;
mod counter;
mod kv_store;
mod rate_limiter;

pub use chat_room::ChatRoom;
pub use counter::Counter;
pub use kv_store::KvStore;
pub use rate_limiter::RateLimiter;

use rookery::Classes;

/// Every built-in class under its class name.
pub fn builtin_classes() -> Classes {
    Classes::new()
        .with::<Counter>("Counter")
        .with::<RateLimiter>("RateLimiter")
        .with::<ChatRoom>("ChatRoom")
        .with::<KvStore>("KvStore")
}

//! Built-in Rookery object classes, reproducing the workloads of our users: a counter, a
//! sliding-window rate limiter, a chat room, a JSON key-value store, and the Waddle presence,
//! channel and voice channel objects; and the demo app's worker.

mod channel;
mod channel_shards;
mod chat_room;
mod counter;
mod demo_worker;
mod kv_store;
mod member;
mod rate_limiter;
#[cfg(test)]
mod test_client;
mod voice_channel;
mod voice_session;
mod waddle;

pub use channel::Channel;
pub use channel_shards::{
    CHANNEL_BINDING, ChannelShard, MAX_SHARDS, SHARD_BINDING, shard_index, shard_name,
};
pub use chat_room::ChatRoom;
pub use counter::Counter;
pub use demo_worker::DemoWorker;
pub use kv_store::KvStore;
pub use rate_limiter::{Limiter, LimiterStub, RateLimiter, Verdict};
pub use voice_channel::{MAX_PARTICIPANTS, VoiceChannel};
pub use voice_session::{LocalSessions, SessionProvider, SessionRequest, VoiceSession};
pub use waddle::Waddle;

use rookery::Classes;

/// Every built-in class under its class name, and the demo app's worker as `Demo`.
pub fn builtin_classes() -> Classes {
    Classes::new()
        .with::<Counter>("Counter")
        .with::<RateLimiter>("RateLimiter")
        .with::<ChatRoom>("ChatRoom")
        .with::<KvStore>("KvStore")
        .with::<Waddle>("Waddle")
        .with::<Channel>("Channel")
        .with::<ChannelShard>("ChannelShard")
        .with::<VoiceChannel>("VoiceChannel")
        .with_worker("Demo", DemoWorker)
}

//! Built-in Rookery object classes, reproducing the workloads of our users: a counter, a
//! sliding-window rate limiter, a chat room, a JSON key-value store, and the Waddle presence,
//! channel and voice channel objects; seed 002's patterns (docs/PATTERNS.md: rate limiting
//! with four algorithms, a distributed lock, leader election, a WebSocket room, a game server,
//! an event aggregator, metrics); seed 003's event subscriptions (`events`), event writer
//! (`event_writer`), CDC and catalog (`cdc`); and the demo app's worker.

mod advanced_rate_limiter;
pub mod app_metrics;
mod backoff;
pub mod cdc;
mod channel;
mod channel_shards;
mod chat_room;
mod config_var;
mod counter;
mod demo_worker;
mod distributed_lock;
mod event_aggregator;
pub mod event_writer;
pub mod events;
mod game_server;
pub mod input;
mod kv_store;
mod leader_election;
mod member;
mod metrics;
mod names;
mod rate_limiter;
mod sql_tables;
#[cfg(test)]
mod test_client;
#[cfg(test)]
mod test_endpoint;
mod voice_channel;
mod voice_session;
mod waddle;
mod webhook;
mod websocket_room;

pub use advanced_rate_limiter::{
    AdvancedRateLimiter, BucketDecision, RateLimits, RateLimitsStub, WindowDecision,
};
pub use app_metrics::Summary;
pub use cdc::{Catalog, CdcProcessor};
pub use channel::Channel;
pub use channel_shards::{
    CHANNEL_BINDING, ChannelShard, MAX_SHARDS, SHARD_BINDING, shard_index, shard_name,
};
pub use chat_room::ChatRoom;
pub use counter::Counter;
pub use demo_worker::DemoWorker;
pub use distributed_lock::{Acquired, DistributedLock, Lock, LockError, LockStatus, LockStub};
pub use event_aggregator::{Aggregate, AggregateStub, AggregatorStats, EventAggregator};
pub use event_writer::{
    Appended, EventSink, EventSinkStub, EventWriter, Flushed, LastFlush, WriterStatus,
};
pub use events::Subscriptions;
pub use events::schemas::{SchemaCheck, SchemaCheckStub, SchemaRegistry, Validation};
pub use events::worker::EventsWorker;
pub use game_server::{GameServer, MAX_PLAYERS, Player};
pub use kv_store::KvStore;
pub use leader_election::{Election, ElectionStub, LeaderElection, Leadership};
pub use metrics::{Metrics, MetricsService, MetricsServiceStub};
pub use rate_limiter::{Limiter, LimiterStub, RateLimiter, Verdict};
pub use voice_channel::{MAX_PARTICIPANTS, VoiceChannel};
pub use voice_session::{LocalSessions, SessionProvider, SessionRequest, VoiceSession};
pub use waddle::Waddle;
pub use websocket_room::WebSocketRoom;

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
        .with::<AdvancedRateLimiter>("AdvancedRateLimiter")
        .with::<DistributedLock>("DistributedLock")
        .with::<LeaderElection>("LeaderElection")
        .with::<WebSocketRoom>("WebSocketRoom")
        .with::<GameServer>("GameServer")
        .with::<EventAggregator>("EventAggregator")
        .with::<Subscriptions>("Subscriptions")
        .with::<SchemaRegistry>("SchemaRegistry")
        .with::<CdcProcessor>("CdcProcessor")
        .with::<Catalog>("Catalog")
        .with::<EventWriter>("EventWriter")
        .with::<Metrics>("Metrics")
        .with::<ChannelShard>("ChannelShard")
        .with::<VoiceChannel>("VoiceChannel")
        .with_worker("Demo", DemoWorker)
        .with_worker("Events", EventsWorker::default())
}

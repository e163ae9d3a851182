//! Sharded channels (seed 004 §6, seed 000's hash-based sharding): a channel with
//! `shard_count > 1` keeps its sockets on `<channel>-shard-<fnv1a(user) % n>` objects of the
//! `ChannelShard` class (binding `CHANNEL_SHARD`), while the channel's own object (binding
//! `CHANNEL`) stays the **sequencer**: it numbers and stores every message, and fans each frame
//! out to every shard with a typed call inside the turn that made it, waiting for all of them.
//! Turns of one object are serial, so frame N reaches every shard before frame N+1: every member
//! sees one order, whatever shard they are on.
//!
//! Calls go one way inside turns only (sequencer → shard). A shard forwards its clients' frames
//! to the sequencer from `wait_until` work, after its turn, chained so they keep their order;
//! so no turn of a shard ever waits on the sequencer, and the two can never wait on each other.
//!
//! - Upgrades reach the sequencer (its routes are unchanged); it picks the user's shard by a
//!   stable hash (64-bit FNV-1a of the user id) and hands the upgrade over with the initial
//!   state in the request body.
//! - `PUT /shards {"count": n}` (permission `admin`) sets the count; `GET /shards` reads it.
//!   Frames go to every shard that was ever in use (`span`), so sockets opened under an earlier,
//!   larger count keep receiving until they reconnect.

use std::future::Future;

use rookery::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::member::{
    Member, Refusal, STATUSES, check_message, error_reply, online_users, upgrading_member,
};

/// The binding of the shard objects.
pub const SHARD_BINDING: &str = "CHANNEL_SHARD";
/// The binding of the channels (the sequencers).
pub const CHANNEL_BINDING: &str = "CHANNEL";
/// The key of the shard count in the sequencer's storage.
const COUNT_KEY: &str = "shards:count";
/// The key of the highest shard count ever set.
const SPAN_KEY: &str = "shards:span";
/// Most shards a channel may have.
pub const MAX_SHARDS: u32 = 256;
/// The key of a shard's channel name.
const CHANNEL_KEY: &str = "channel";

/// The author of a frame a shard forwards: the member's identity as the shard verified it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Author {
    /// The user's id.
    pub(crate) user_id: String,
    /// The display name.
    pub(crate) username: String,
}

impl From<Author> for Member {
    fn from(a: Author) -> Self {
        Member {
            user_id: a.user_id,
            username: a.username,
            permissions: Vec::new(),
            joined_at: 0,
            since_sequence: None,
        }
    }
}

impl From<&Member> for Author {
    fn from(m: &Member) -> Self {
        Self {
            user_id: m.user_id.clone(),
            username: m.username.clone(),
        }
    }
}

/// What a channel's sequencer does for its shards' clients (checks of permission and content
/// are the shard's, before it forwards).
#[rookery::service]
pub(crate) trait Sequencer {
    /// Numbers, stores and fans out a message; its sequence.
    async fn post(
        &mut self,
        member: Author,
        content: String,
        thread_id: Option<String>,
    ) -> rookery::Result<u64>;
    /// Starts or stops `member`'s typing indicator.
    async fn typing(&mut self, member: Author, is_typing: bool) -> rookery::Result<()>;
    /// Relays seed 004's `presence`.
    async fn presence(&mut self, member: Author, status: String) -> rookery::Result<()>;
    /// `member`'s last socket closed.
    async fn left(&mut self, member: Author) -> rookery::Result<()>;
    /// The frames answering the `sync` frame `request` of a socket opened at `since`.
    async fn sync(&mut self, request: String, since: Option<u64>) -> rookery::Result<Vec<String>>;
}

/// What a shard does for its sequencer.
#[rookery::service]
pub(crate) trait ShardRelay {
    /// Sends each frame to this shard's sockets, except those of its user, if any.
    async fn relay(&mut self, frames: Vec<(String, Option<String>)>) -> rookery::Result<()>;
}

/// The shard of `user_id` among `count`: 64-bit FNV-1a of the id, modulo `count`. Stable
/// across builds and platforms (unlike the standard library's hasher).
pub fn shard_index(user_id: &str, count: u32) -> u32 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in user_id.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    u32::try_from(hash % u64::from(count.max(1))).unwrap_or(0)
}

/// The name of shard `index` of `channel`.
pub fn shard_name(channel: &str, index: u32) -> String {
    format!("{channel}-shard-{index}")
}

/// The channel's shard count (1 when not sharded).
pub(crate) fn count(state: &ObjectState) -> Result<u32> {
    Ok(state.storage().get::<u32>(COUNT_KEY)?.unwrap_or(1))
}

/// How many shards get the channel's frames: every one ever in use (0 when never sharded).
pub(crate) fn span(state: &ObjectState) -> Result<u32> {
    Ok(state.storage().get::<u32>(SPAN_KEY)?.unwrap_or(0))
}

/// `GET /shards` and `PUT /shards {"count": n}` (needs `admin`).
pub(crate) fn configure(state: &ObjectState, req: &Request) -> Result<Response> {
    if req.method() == Method::PUT {
        let Some(member) = Member::from_request(req) else {
            return Ok(Response::error(StatusCode::UNAUTHORIZED, "Unauthorized"));
        };
        if !member.may("admin") {
            return Ok(Response::error(
                StatusCode::FORBIDDEN,
                "No admin permission",
            ));
        }
        let count = req
            .json::<Value>()
            .ok()
            .and_then(|b| b.get("count").and_then(Value::as_u64))
            .and_then(|n| u32::try_from(n).ok())
            .filter(|n| (1..=MAX_SHARDS).contains(n));
        let Some(count) = count else {
            return Ok(Response::error(
                StatusCode::BAD_REQUEST,
                &format!("shards needs count: 1 to {MAX_SHARDS}"),
            ));
        };
        state.storage().put(COUNT_KEY, &count)?;
        if count > 1 && count > span(state)? {
            state.storage().put(SPAN_KEY, &count)?;
        }
    }
    Response::json(&json!({ "count": count(state)?, "span": span(state)? }))
}

/// Hands the upgrade `req` of `member` to their shard of `channel`, which starts the socket
/// from `initial` (the sequencer's `initial_state`).
pub(crate) async fn connect(
    env: &Env,
    channel: &str,
    count: u32,
    member: &Member,
    req: Request,
    initial: &Value,
) -> Result<Response> {
    let shard = shard_name(channel, shard_index(&member.user_id, count));
    let body = json!({ "channel": channel, "initial": initial });
    env.namespace(SHARD_BINDING)?
        .get_by_name(&shard)
        .fetch(req.with_body(serde_json::to_vec(&body)?))
        .await
}

/// Sends `frames` to every shard of `channel` in use, all at once, and waits for them. A shard
/// that fails is logged: its members get the messages from `sync` when they reconnect.
pub(crate) async fn fan_out(
    state: &ObjectState,
    env: &Env,
    channel: &str,
    frames: Vec<(String, Option<String>)>,
) -> Result<()> {
    let namespace = env.namespace(SHARD_BINDING)?.typed::<ShardRelayStub>();
    let calls: Vec<_> = (0..span(state)?)
        .map(|i| {
            let stub = namespace.get_by_name(&shard_name(channel, i));
            let frames = frames.clone();
            async move { (i, stub.relay(frames).await) }
        })
        .collect();
    for (i, result) in join_all(calls).await {
        if let Err(e) = result {
            tracing::warn!(channel, shard = i, error = %e, "a shard missed frames");
        }
    }
    Ok(())
}

/// Runs `futures` concurrently; their outputs in order.
async fn join_all<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut futures: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    std::task::Poll::Ready(value) => *output = Some(value),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().flatten().collect()
}

/// Sends `message` to every socket of `state` not tagged `except_user`.
pub(crate) fn send_except_user(
    state: &ObjectState,
    message: &WsMessage,
    except_user: Option<&str>,
) {
    for ws in state.get_websockets(None) {
        if except_user.is_none_or(|u| !ws.tags().iter().any(|t| t == u)) {
            ws.send(message.clone());
        }
    }
}

/// A frame a shard forwards to its sequencer.
enum Forward {
    Post {
        content: String,
        thread_id: Option<String>,
    },
    Typing(bool),
    Presence(String),
    Left,
    Sync {
        request: String,
        since: Option<u64>,
    },
}

/// One shard of a sharded channel: holds the sockets of the users that hash to it, relays the
/// sequencer's frames to them, and forwards their frames to the sequencer.
pub struct ChannelShard {
    state: ObjectState,
    env: Env,
    /// Done when the last forwarded frame has been answered: the next one waits for it.
    last_forward: Option<tokio::sync::oneshot::Receiver<()>>,
}

impl ChannelShard {
    /// The sequencer's name (stored when the first socket arrived).
    fn channel(&self) -> Result<Option<String>> {
        self.state.storage().get::<String>(CHANNEL_KEY)
    }

    async fn connect(&mut self, req: Request) -> Result<Response> {
        let mut member = match upgrading_member(&req) {
            Ok(member) => member,
            Err((status, why)) => return Ok(Response::error(status, why)),
        };
        let Ok(body) = req.json::<Value>() else {
            return Ok(Response::error(
                StatusCode::BAD_REQUEST,
                "A shard takes sockets from its channel only",
            ));
        };
        let (Some(channel), Some(initial)) = (body["channel"].as_str(), body.get("initial")) else {
            return Ok(Response::error(
                StatusCode::BAD_REQUEST,
                "A shard takes sockets from its channel only",
            ));
        };
        if self.channel()?.as_deref() != Some(channel) {
            self.state.storage().put(CHANNEL_KEY, &channel)?;
        }
        member.since_sequence = initial["lastSequence"].as_u64();
        let ws = member.accept(&self.state, &req)?;
        let mut initial = initial.clone();
        initial["onlineUsers"] = json!(online_users(&self.state));
        ws.send_json(&initial)?;
        Ok(Response::websocket(&ws))
    }

    /// Forwards `what` from `member` (on `ws`) to the sequencer after this turn, behind the
    /// frames forwarded before it; errors and `sync` answers go back to `ws`.
    fn forward(&mut self, ws: &WebSocket, member: &Member, what: Forward) -> Result<()> {
        let Some(channel) = self.channel()? else {
            return error_reply(ws, "The request failed: this shard has no channel");
        };
        let sequencer = self
            .env
            .namespace(CHANNEL_BINDING)?
            .typed::<SequencerStub>()
            .get_by_name(&channel);
        let author = Author::from(member);
        let ws = ws.clone();
        let previous = self.last_forward.take();
        let (done, next) = tokio::sync::oneshot::channel();
        self.last_forward = Some(next);
        self.state.wait_until(async move {
            if let Some(previous) = previous {
                // Dropped without a send when the earlier work failed: go on either way.
                let _ = previous.await;
            }
            let outcome: Result<()> = async {
                match what {
                    Forward::Post { content, thread_id } => {
                        sequencer.post(author, content, thread_id).await?;
                    }
                    Forward::Typing(on) => sequencer.typing(author, on).await?,
                    Forward::Presence(status) => sequencer.presence(author, status).await?,
                    Forward::Left => sequencer.left(author).await?,
                    Forward::Sync { request, since } => {
                        for frame in sequencer.sync(request, since).await? {
                            ws.send(WsMessage::text(frame));
                        }
                    }
                }
                Ok(())
            }
            .await;
            if let Err(e) = &outcome {
                let _ = error_reply(&ws, &format!("The request failed: {e}"));
            }
            let _ = done.send(());
            Ok(())
        })
    }

    fn on_message(&mut self, ws: &WebSocket, message: WsMessage) -> Result<()> {
        let Some(member) = Member::of(ws) else {
            return error_reply(ws, "Unknown user");
        };
        let Ok(data) = message.json_body::<Value>() else {
            return error_reply(ws, "Invalid message format");
        };
        let what = match data.get("type").and_then(Value::as_str) {
            Some("message") => match check_message(&member, &data) {
                Ok((content, thread_id)) => Forward::Post { content, thread_id },
                Err(Refusal(_, why)) => return error_reply(ws, &why),
            },
            Some("typing") => match data.get("isTyping").and_then(Value::as_bool) {
                Some(on) => Forward::Typing(on),
                None => return error_reply(ws, "typing needs isTyping: true or false"),
            },
            Some("presence") => match data
                .get("status")
                .and_then(Value::as_str)
                .filter(|s| STATUSES.contains(s))
            {
                Some(status) => Forward::Presence(status.to_string()),
                None => {
                    return error_reply(ws, "Invalid status: use online, away, dnd or offline");
                }
            },
            Some("sync") => Forward::Sync {
                request: data.to_string(),
                since: member.since_sequence,
            },
            _ => return error_reply(ws, "Unknown message type"),
        };
        self.forward(ws, &member, what)
    }
}

impl ShardRelay for ChannelShard {
    async fn relay(&mut self, frames: Vec<(String, Option<String>)>) -> Result<()> {
        for (frame, except_user) in frames {
            send_except_user(&self.state, &WsMessage::text(frame), except_user.as_deref());
        }
        Ok(())
    }
}

impl DurableObject for ChannelShard {
    fn new(state: ObjectState, env: Env) -> Self {
        Self {
            state,
            env,
            last_forward: None,
        }
    }

    async fn fetch(&mut self, req: Request) -> Result<Response> {
        if req.is_websocket_upgrade() {
            return self.connect(req).await;
        }
        Ok(Response::not_found())
    }

    async fn call(&mut self, call: Call) -> Result<Reply> {
        ShardRelay::serve(self, call).await
    }

    async fn websocket_message(&mut self, ws: WebSocket, message: WsMessage) -> Result<()> {
        self.on_message(&ws, message)
    }

    async fn websocket_close(
        &mut self,
        ws: WebSocket,
        _code: u16,
        _reason: String,
        _was_clean: bool,
    ) -> Result<()> {
        let Some(member) = Member::of(&ws) else {
            return Ok(());
        };
        // A user's sockets all hash to this shard: none left here means none left at all.
        if !self.state.get_websockets(Some(&member.user_id)).is_empty() {
            return Ok(());
        }
        self.forward(&ws, &member, Forward::Left)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shard_of_a_user_is_fnv1a_and_never_changes() {
        // FNV-1a 64 of "a" is 0xaf63dc4c8601ec8c, as published: the hash is the standard one.
        assert_eq!(shard_index("a", 8), (0xaf63_dc4c_8601_ec8c_u64 % 8) as u32);
        assert_eq!(shard_index("a", 8), 4);
        assert_eq!(shard_index("user-42", 8), 3);
        assert_eq!(shard_index("", 7), 2);
        assert_eq!(shard_index("anyone", 1), 0);
        assert_eq!(shard_index("anyone", 0), 0, "no shards means shard 0");
        assert_eq!(shard_name("general", 3), "general-shard-3");
    }
}

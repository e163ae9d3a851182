//! A Waddle channel: sequenced, stored messages and typing indicators over hibernatable
//! WebSockets. The protocol is in `docs/PROTOCOL.md`.
//!
//! - An upgrade carries the caller's identity in the gateway's trusted headers (see
//!   [`crate::Waddle`]); without a user id it is refused with 401. The new socket gets
//!   `{"type":"initial_state","lastSequence":N,"messages":[the last 50],"typing":[user ids]}`.
//! - `{"type":"message","content":..,"threadId":..}` (needs `write`) is numbered with the
//!   channel's next sequence, stored under `msg:<20-digit sequence>` and broadcast to everyone,
//!   the sender too, in a frame both seeds read: seed 000's flat envelope (`sequence` and the
//!   message's fields) and seed 004's `message` object. Its `id` is a UUID (version 8) that
//!   encodes the channel and the sequence, so `sync` by id needs no index.
//!   `POST /message` with `{"content":..}` does the same from the server side.
//! - `{"type":"typing","isTyping":bool}` goes to everyone but the typist, with the current
//!   typists in `users` (seed 000). A typing indicator
//!   expires 3 s after the last `isTyping:true`: expiries are stored under `typing:<userId>` and
//!   the object's alarm, set for the earliest, clears the expired ones and broadcasts
//!   `isTyping:false`. Nothing lives in memory, so nothing leaks across hibernation or restarts.
//! - `{"type":"sync","after":SEQ}` replays what a reconnecting client missed, 500 at a time;
//!   seed 004's `{"type":"sync","afterMessageId":ID}` gets them as `message` frames.
//! - Seed 004's `{"type":"presence","status":..}` is relayed to the others, not stored.
//! - `GET /messages?after=SEQ&limit=N` pages through the history.
//! - When a user's last socket closes, their typing indicator is cleared and everyone gets
//!   `{"type":"user_disconnected","userId",..}`.
//! - With `PUT /shards {"count":n}` (n > 1) the channel is sharded: new sockets live on
//!   `ChannelShard` objects and this object sequences and fans out (see `channel_shards.rs`).

use rookery::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use std::sync::Mutex;

use crate::channel_shards as shards;
use crate::member::{
    Member, Refusal, STATUSES, check_message, error_reply, online_users, upgrading_member,
};

/// The key of the last sequence handed out.
const SEQ_KEY: &str = "seq";
/// Messages are stored under this prefix and their 20-digit sequence.
const MSG_PREFIX: &str = "msg:";
/// Typing expiries are stored under this prefix and the user id.
const TYPING_PREFIX: &str = "typing:";
/// How long a typing indicator lasts after the last `isTyping:true`.
const TYPING_TTL_MS: i64 = 3_000;
/// How many messages a new socket gets.
const INITIAL_MESSAGES: usize = 50;
/// Most messages in one `sync` reply or `GET /messages` page.
const MAX_PAGE: usize = 500;
/// The low 62 bits of a message id hold the sequence.
const SEQ_BITS: u64 = (1 << 62) - 1;

/// The id of message `seq` of the channel whose object id is `object_hex`: a UUID of version 8
/// (RFC 9562, "custom") whose first 60 free bits are the object id's and whose last 62 bits
/// are the sequence. Stable, unique per channel and message, and decodable by [`seq_of_id`].
fn message_id(object_hex: &str, seq: u64) -> String {
    let prefix = |range: std::ops::Range<usize>| object_hex.get(range).unwrap_or("000000000000");
    let tail = (2u64 << 62) | (seq & SEQ_BITS);
    let tail = format!("{tail:016x}");
    format!(
        "{}-{}-8{}-{}-{}",
        prefix(0..8),
        prefix(8..12),
        prefix(12..15),
        &tail[..4],
        &tail[4..]
    )
}

/// The sequence of message `id` of this channel, from a [`message_id`] or from the
/// `<16 hex>-<sequence>` ids of messages stored before ids were UUIDs; `None` for anything else.
fn seq_of_id(object_hex: &str, id: &str) -> Option<u64> {
    if let Some((prefix, seq)) = id.split_once('-')
        && prefix.len() == 16
        && object_hex.get(..16) == Some(prefix)
    {
        return seq.parse().ok();
    }
    let hex: String = id.chars().filter(|c| *c != '-').collect();
    if id.len() != 36 || hex.len() != 32 || hex.get(12..13) != Some("8") {
        return None;
    }
    let ours = format!("{}{}", object_hex.get(..12)?, object_hex.get(12..15)?);
    if format!("{}{}", &hex[..12], &hex[13..16]) != ours {
        return None;
    }
    let tail = u64::from_str_radix(hex.get(16..)?, 16).ok()?;
    (tail >> 62 == 2).then_some(tail & SEQ_BITS)
}

/// The storage key of message `seq`: ordered like the sequence.
fn msg_key(seq: u64) -> String {
    format!("{MSG_PREFIX}{seq:020}")
}

/// A stored message, as it appears in every list.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoredMessage {
    sequence: u64,
    id: String,
    /// The channel's name; empty in messages stored before it was kept (filled in on reading).
    #[serde(default)]
    channel_id: String,
    user_id: String,
    username: String,
    content: String,
    timestamp: i64,
    /// The thread the message answers, as the client gave it (seed 004); `null` if none.
    #[serde(default)]
    thread_id: Option<String>,
}

impl StoredMessage {
    /// The `message` frame: seed 000's envelope (`type`, `sequence` and the message's fields,
    /// flat) with seed 004's `message` object inside.
    fn frame(&self) -> Result<Value> {
        let mut out = serde_json::to_value(self)?;
        out["message"] = serde_json::to_value(self)?;
        out["type"] = json!("message");
        Ok(out)
    }
}

/// A stored typing indicator.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Typing {
    username: String,
    expires_at: i64,
}

/// One channel.
pub struct Channel {
    state: ObjectState,
    env: Env,
    /// The last sequence handed out, once read from storage.
    last_seq: Option<u64>,
    /// Frames of this event for the shards (with the user whose sockets skip them), sent by
    /// [`Channel::flush_fanout`] at the end of the event; empty unless the channel is sharded.
    fanout: Mutex<Vec<(String, Option<String>)>>,
}

impl Channel {
    /// The channel's name as clients know it (the object's name; its hex id if unnamed).
    fn channel_id(&self) -> String {
        let id = self.state.id();
        id.name().map_or_else(|| id.to_hex(), str::to_string)
    }

    /// `messages` with the channel id filled in where storage predates it.
    fn complete(&self, messages: Vec<(String, StoredMessage)>) -> Vec<StoredMessage> {
        let channel_id = self.channel_id();
        messages
            .into_iter()
            .map(|(_, mut m)| {
                if m.channel_id.is_empty() {
                    m.channel_id.clone_from(&channel_id);
                }
                m
            })
            .collect()
    }

    fn last_sequence(&mut self) -> Result<u64> {
        match self.last_seq {
            Some(seq) => Ok(seq),
            None => {
                let seq = self.state.storage().get::<u64>(SEQ_KEY)?.unwrap_or(0);
                self.last_seq = Some(seq);
                Ok(seq)
            }
        }
    }

    /// Up to `limit` messages after sequence `after`, oldest first, and whether more follow.
    fn page(&self, after: u64, limit: usize) -> Result<(Vec<StoredMessage>, bool)> {
        self.page_until(after, None, limit)
    }

    /// [`Self::page`] holding only messages up to sequence `until`, if given.
    fn page_until(
        &self,
        after: u64,
        until: Option<u64>,
        limit: usize,
    ) -> Result<(Vec<StoredMessage>, bool)> {
        let mut options = ListOptions::new()
            .prefix(MSG_PREFIX)
            .start_after(msg_key(after))
            .limit(limit.saturating_add(1));
        if let Some(until) = until {
            options = options.end(msg_key(until.saturating_add(1)));
        }
        let mut messages = self.state.storage().list::<StoredMessage>(&options)?;
        let more = messages.len() > limit;
        messages.truncate(limit);
        Ok((self.complete(messages), more))
    }

    /// The last `n` messages, oldest first.
    fn recent(&self, n: usize) -> Result<Vec<StoredMessage>> {
        let mut messages = self
            .state
            .storage()
            .list::<StoredMessage>(&ListOptions::new().prefix(MSG_PREFIX).reverse(true).limit(n))?;
        messages.reverse();
        Ok(self.complete(messages))
    }

    /// Numbers, stores and broadcasts a message of `member` (already checked). Everything is
    /// stored before anything is sent, so an error leaves nothing behind.
    fn deliver(
        &mut self,
        member: &Member,
        content: String,
        thread_id: Option<String>,
    ) -> Result<StoredMessage> {
        let sequence = self.last_sequence()? + 1;
        let message = StoredMessage {
            sequence,
            id: message_id(&self.state.id().to_hex(), sequence),
            channel_id: self.channel_id(),
            user_id: member.user_id.clone(),
            username: member.username.clone(),
            content,
            timestamp: self.state.now_ms(),
            thread_id,
        };
        let was_typing = self.state.storage().transaction(|txn| {
            txn.put(&msg_key(sequence), &message)?;
            txn.put(SEQ_KEY, &sequence)?;
            // Whoever posts has stopped typing.
            self.clear_typing(&member.user_id)
        })?;
        self.last_seq = Some(sequence);
        if was_typing {
            self.send_to_others(
                &member.user_id,
                &self.typing_update(&member.user_id, &member.username, false)?,
            )?;
        }
        let frame = message.frame()?;
        self.state.broadcast(&WsMessage::json(&frame)?, None, None);
        self.queue_fanout(&frame, None)?;
        Ok(message)
    }

    /// Sends `value` to every socket not belonging to `user_id`, on the shards too.
    fn send_to_others(&self, user_id: &str, value: &Value) -> Result<()> {
        shards::send_except_user(&self.state, &WsMessage::json(value)?, Some(user_id));
        self.queue_fanout(value, Some(user_id))
    }

    /// Queues `frame` for every shard's sockets (but `except_user`'s), if the channel has
    /// shards.
    fn queue_fanout(&self, frame: &Value, except_user: Option<&str>) -> Result<()> {
        if shards::span(&self.state)? > 0 {
            self.fanout
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push((frame.to_string(), except_user.map(str::to_string)));
        }
        Ok(())
    }

    /// Sends the frames this event queued to every shard, in order, and waits for them: the
    /// next event's frames cannot overtake them.
    async fn flush_fanout(&self) -> Result<()> {
        let frames = std::mem::take(
            &mut *self
                .fanout
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        if frames.is_empty() {
            return Ok(());
        }
        shards::fan_out(&self.state, &self.env, &self.channel_id(), frames).await
    }

    /// A `typing` frame: seed 004's fields and seed 000's `users`, the user ids typing now
    /// (read after the change, so they include or exclude `user_id` already).
    fn typing_update(&self, user_id: &str, username: &str, is_typing: bool) -> Result<Value> {
        let now = self.state.now_ms();
        let users: Vec<String> = self
            .typists()?
            .into_iter()
            .filter(|(_, t)| t.expires_at > now)
            .map(|(user, _)| user)
            .collect();
        Ok(json!({
            "type": "typing",
            "userId": user_id,
            "username": username,
            "isTyping": is_typing,
            "users": users,
        }))
    }

    /// Marks `member` as typing for the next 3 s; the others hear of it if they did not know.
    fn start_typing(&self, member: &Member) -> Result<()> {
        let key = format!("{TYPING_PREFIX}{}", member.user_id);
        let was = self.state.storage().transaction(|txn| {
            let was = txn.get::<Typing>(&key)?.is_some();
            txn.put(
                &key,
                &Typing {
                    username: member.username.clone(),
                    expires_at: self.state.now_ms().saturating_add(TYPING_TTL_MS),
                },
            )?;
            self.schedule_expiry()?;
            Ok(was)
        })?;
        if !was {
            self.send_to_others(
                &member.user_id,
                &self.typing_update(&member.user_id, &member.username, true)?,
            )?;
        }
        Ok(())
    }

    /// Deletes `user_id`'s typing indicator and moves the alarm; whether one was stored.
    fn clear_typing(&self, user_id: &str) -> Result<bool> {
        self.state.storage().transaction(|txn| {
            let was = txn.delete(&format!("{TYPING_PREFIX}{user_id}"))?;
            if was {
                self.schedule_expiry()?;
            }
            Ok(was)
        })
    }

    /// Clears `member`'s typing indicator, if shown, and tells the others.
    fn stop_typing(&self, member: &Member) -> Result<()> {
        if self.clear_typing(&member.user_id)? {
            self.send_to_others(
                &member.user_id,
                &self.typing_update(&member.user_id, &member.username, false)?,
            )?;
        }
        Ok(())
    }

    /// Every stored typing indicator, by user id.
    fn typists(&self) -> Result<Vec<(String, Typing)>> {
        let typing = self
            .state
            .storage()
            .list::<Typing>(&ListOptions::new().prefix(TYPING_PREFIX))?;
        Ok(typing
            .into_iter()
            .map(|(k, t)| (k[TYPING_PREFIX.len()..].to_string(), t))
            .collect())
    }

    /// Sets the alarm for the earliest typing expiry, or deletes it when nobody is typing.
    fn schedule_expiry(&self) -> Result<()> {
        let earliest = self.typists()?.iter().map(|(_, t)| t.expires_at).min();
        let storage = self.state.storage();
        let current = storage.get_alarm()?;
        match earliest {
            Some(at) if current != Some(at) => storage.set_alarm(at),
            None if current.is_some() => storage.delete_alarm(),
            _ => Ok(()),
        }
    }

    /// The initial state of a new socket, without `onlineUsers` (which depends on where the
    /// socket is).
    fn initial_state(&mut self) -> Result<Value> {
        let now = self.state.now_ms();
        let typing: Vec<String> = self
            .typists()?
            .into_iter()
            .filter(|(_, t)| t.expires_at > now)
            .map(|(user, _)| user)
            .collect();
        Ok(json!({
            "type": "initial_state",
            "lastSequence": self.last_sequence()?,
            "messages": self.recent(INITIAL_MESSAGES)?,
            "typing": typing,
        }))
    }

    async fn connect(&mut self, req: Request) -> Result<Response> {
        let mut member = match upgrading_member(&req) {
            Ok(member) => member,
            Err((status, why)) => return Ok(Response::error(status, why)),
        };
        let count = shards::count(&self.state)?;
        if count > 1 {
            // The socket lives on the user's shard; it starts from this state.
            let initial = self.initial_state()?;
            return shards::connect(&self.env, &self.channel_id(), count, &member, req, &initial)
                .await;
        }
        let req = &req;
        member.since_sequence = Some(self.last_sequence()?);
        let ws = member.accept(&self.state, req)?;
        let mut initial = self.initial_state()?;
        initial["onlineUsers"] = json!(online_users(&self.state));
        ws.send_json(&initial)?;
        Ok(Response::websocket(&ws))
    }

    /// `POST /message`: a message delivered by the server side.
    fn post_message(&mut self, req: &Request) -> Result<Response> {
        let Some(member) = Member::from_request(req) else {
            return Ok(Response::error(StatusCode::UNAUTHORIZED, "Unauthorized"));
        };
        let body = match req.json::<Value>() {
            Ok(body) => body,
            Err(_) => {
                return Ok(Response::error(
                    StatusCode::BAD_REQUEST,
                    "Invalid JSON body",
                ));
            }
        };
        match check_message(&member, &body) {
            Ok((content, thread_id)) => {
                let message = self.deliver(&member, content, thread_id)?;
                Response::json(&json!({ "success": true, "sequence": message.sequence }))
            }
            Err(Refusal(status, why)) => Ok(Response::error(status, &why)),
        }
    }

    /// `GET /messages?after=SEQ&limit=N`.
    fn get_messages(&mut self, req: &Request) -> Result<Response> {
        if Member::from_request(req).is_none() {
            return Ok(Response::error(StatusCode::UNAUTHORIZED, "Unauthorized"));
        }
        let (after, limit) = match (req.query::<u64>("after"), req.query::<usize>("limit")) {
            (Ok(after), Ok(limit)) => (after.unwrap_or(0), limit.unwrap_or(INITIAL_MESSAGES)),
            (Err(e), _) | (_, Err(e)) => {
                return Ok(Response::error(StatusCode::BAD_REQUEST, &e.to_string()));
            }
        };
        let (messages, more) = self.page(after, limit.clamp(1, MAX_PAGE))?;
        Response::json(&json!({
            "messages": messages,
            "lastSequence": self.last_sequence()?,
            "hasMore": more,
        }))
    }

    /// The answer to `sync {after}`, or an error frame.
    fn sync(&mut self, after: Option<&Value>) -> Result<Vec<Value>> {
        let Some(after) = after.and_then(Value::as_u64) else {
            return Ok(vec![error_frame(
                "sync needs after: the last sequence seen (0 for none)",
            )]);
        };
        let (messages, more) = self.page(after, MAX_PAGE)?;
        Ok(vec![json!({
            "type": "sync",
            "messages": messages,
            "lastSequence": self.last_sequence()?,
            "hasMore": more,
        })])
    }

    /// The answer to a `sync` frame (`data`) of a socket opened at sequence `since`.
    pub(crate) fn sync_reply(&mut self, data: &Value, since: Option<u64>) -> Result<Vec<Value>> {
        match data.get("afterMessageId") {
            Some(id) => self.sync_by_id(id, since),
            None => self.sync(data.get("after")),
        }
    }
}

impl Channel {
    /// Seed 004's `sync` by the last message id seen: the missed messages as `message` frames
    /// (the only frames whose id its client records), then a `sync` frame that says how many
    /// and whether more follow. Missed means stored before this socket opened: later messages
    /// were sent on it live (seed 004's client flushes its queue before it asks), and this
    /// client does not skip a message it saw twice.
    fn sync_by_id(&mut self, id: &Value, since: Option<u64>) -> Result<Vec<Value>> {
        let last = self.last_sequence()?;
        let after = id
            .as_str()
            .and_then(|id| seq_of_id(&self.state.id().to_hex(), id))
            .filter(|seq| *seq <= last);
        let Some(after) = after else {
            return Ok(vec![error_frame(
                "sync: afterMessageId is not a message of this channel",
            )]);
        };
        let (messages, more) = self.page_until(after, since, MAX_PAGE)?;
        let mut frames = Vec::with_capacity(messages.len() + 1);
        for message in &messages {
            let mut frame = message.frame()?;
            frame["replay"] = json!(true);
            frames.push(frame);
        }
        frames.push(json!({
            "type": "sync",
            "replayed": messages.len(),
            "lastSequence": last,
            "hasMore": more,
        }));
        Ok(frames)
    }

    /// Seed 004's `presence`: relayed to the other sockets, not stored (the Waddle keeps
    /// presence).
    fn relay_presence(
        &self,
        ws: &WebSocket,
        member: &Member,
        status: Option<&Value>,
    ) -> Result<()> {
        let Some(status) = status
            .and_then(Value::as_str)
            .filter(|s| STATUSES.contains(s))
        else {
            return error_reply(ws, "Invalid status: use online, away, dnd or offline");
        };
        let update = self.presence_frame(member, status);
        self.state
            .broadcast(&WsMessage::json(&update)?, None, Some(ws));
        self.queue_fanout(&update, Some(&member.user_id))
    }

    /// A `presence` frame of `member`.
    fn presence_frame(&self, member: &Member, status: &str) -> Value {
        json!({
            "type": "presence",
            "userId": member.user_id,
            "username": member.username,
            "status": status,
            "timestamp": self.state.now_ms(),
        })
    }

    /// `member` has no socket left in the channel: their typing indicator goes, and everyone
    /// is told.
    fn user_left(&self, member: &Member) -> Result<()> {
        self.stop_typing(member)?;
        let gone = json!({
            "type": "user_disconnected",
            "userId": member.user_id,
            "username": member.username,
        });
        self.state.broadcast(&WsMessage::json(&gone)?, None, None);
        self.queue_fanout(&gone, None)
    }
}

impl DurableObject for Channel {
    fn new(state: ObjectState, env: Env) -> Self {
        Self {
            state,
            env,
            last_seq: None,
            fanout: Mutex::new(Vec::new()),
        }
    }

    async fn fetch(&mut self, req: Request) -> Result<Response> {
        if req.is_websocket_upgrade() {
            return self.connect(req).await;
        }
        let response = self.http(&req)?;
        self.flush_fanout().await?;
        Ok(response)
    }

    async fn call(&mut self, call: Call) -> Result<Reply> {
        let reply = shards::Sequencer::serve(self, call).await;
        self.flush_fanout().await?;
        reply
    }

    async fn alarm(&mut self, _info: AlarmInfo) -> Result<()> {
        self.expire_typing()?;
        self.flush_fanout().await
    }

    async fn websocket_message(&mut self, ws: WebSocket, message: WsMessage) -> Result<()> {
        self.on_message(&ws, message)?;
        self.flush_fanout().await
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
        if !self.state.get_websockets(Some(&member.user_id)).is_empty() {
            return Ok(());
        }
        self.user_left(&member)?;
        self.flush_fanout().await
    }
}

impl Channel {
    /// The HTTP requests of a channel (all but upgrades).
    fn http(&mut self, req: &Request) -> Result<Response> {
        match (req.method(), req.path()) {
            (&Method::GET | &Method::PUT, "/shards") => shards::configure(&self.state, req),
            (_, "/shards") => Ok(Response::error(
                StatusCode::METHOD_NOT_ALLOWED,
                "Method not allowed",
            )),
            (&Method::POST, "/message") => self.post_message(req),
            (&Method::GET, "/messages") => self.get_messages(req),
            (_, "/message" | "/messages") => Ok(Response::error(
                StatusCode::METHOD_NOT_ALLOWED,
                "Method not allowed",
            )),
            (_, "/") => Ok(Response::error(
                StatusCode::BAD_REQUEST,
                "Expected WebSocket",
            )),
            _ => Ok(Response::not_found()),
        }
    }

    /// Clears the typing indicators that expired, and sets the alarm for the next expiry.
    fn expire_typing(&mut self) -> Result<()> {
        let now = self.state.now_ms();
        for (user_id, typing) in self.typists()? {
            if typing.expires_at <= now {
                self.state
                    .storage()
                    .delete(&format!("{TYPING_PREFIX}{user_id}"))?;
                self.send_to_others(
                    &user_id,
                    &self.typing_update(&user_id, &typing.username, false)?,
                )?;
            }
        }
        self.schedule_expiry()
    }

    /// A frame from a client on one of this object's own sockets.
    fn on_message(&mut self, ws: &WebSocket, message: WsMessage) -> Result<()> {
        let Some(member) = Member::of(ws) else {
            return error_reply(ws, "Unknown user");
        };
        let Ok(data) = message.json_body::<Value>() else {
            return error_reply(ws, "Invalid message format");
        };
        // Each handler stores before it sends: after an error nothing was stored or sent.
        let handled = match data.get("type").and_then(Value::as_str) {
            Some("message") => match check_message(&member, &data) {
                Ok((content, thread_id)) => self.deliver(&member, content, thread_id).map(drop),
                Err(Refusal(_, why)) => error_reply(ws, &why),
            },
            Some("typing") => match data.get("isTyping").and_then(Value::as_bool) {
                Some(true) => self.start_typing(&member),
                Some(false) => self.stop_typing(&member),
                None => error_reply(ws, "typing needs isTyping: true or false"),
            },
            Some("sync") => self
                .sync_reply(&data, member.since_sequence)
                .and_then(|frames| frames.iter().try_for_each(|f| ws.send_json(f))),
            Some("presence") => self.relay_presence(ws, &member, data.get("status")),
            _ => error_reply(ws, "Unknown message type"),
        };
        handled.or_else(|e| error_reply(ws, &format!("The request failed: {e}")))
    }
}

impl shards::Sequencer for Channel {
    async fn post(
        &mut self,
        member: shards::Author,
        content: String,
        thread_id: Option<String>,
    ) -> Result<u64> {
        Ok(self.deliver(&member.into(), content, thread_id)?.sequence)
    }

    async fn typing(&mut self, member: shards::Author, is_typing: bool) -> Result<()> {
        let member = member.into();
        if is_typing {
            self.start_typing(&member)
        } else {
            self.stop_typing(&member)
        }
    }

    async fn presence(&mut self, member: shards::Author, status: String) -> Result<()> {
        let member: Member = member.into();
        let update = self.presence_frame(&member, &status);
        shards::send_except_user(
            &self.state,
            &WsMessage::json(&update)?,
            Some(&member.user_id),
        );
        self.queue_fanout(&update, Some(&member.user_id))
    }

    async fn left(&mut self, member: shards::Author) -> Result<()> {
        self.user_left(&member.into())
    }

    async fn sync(&mut self, request: String, since: Option<u64>) -> Result<Vec<String>> {
        let data: Value = serde_json::from_str(&request)?;
        Ok(self
            .sync_reply(&data, since)?
            .iter()
            .map(Value::to_string)
            .collect())
    }
}

/// `{"type":"error","message":message}`.
fn error_frame(message: &str) -> Value {
    json!({ "type": "error", "message": message })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::member::MAX_CONTENT_CHARS;
    use crate::test_client::{Client, as_user};
    use rookery::Clock;
    use rookery::testing::TestHarness;
    use std::time::Duration;

    async fn post(h: &TestHarness, user: &str, perms: &str, content: &str) -> (u16, Value) {
        let req = as_user(Request::post("/message").unwrap(), user, perms)
            .with_json(&json!({ "content": content }))
            .unwrap();
        let r = h.fetch("c", req).await.unwrap();
        (r.status().as_u16(), r.json_body().unwrap())
    }

    async fn stored_typing(h: &TestHarness) -> (usize, Option<i64>) {
        h.run("c", |s| {
            let n = s
                .storage()
                .list_raw(&ListOptions::new().prefix(TYPING_PREFIX))?
                .len();
            Ok((n, s.storage().get_alarm()?))
        })
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn typing_is_cleared_by_the_alarm_at_expiry() {
        let h = TestHarness::new::<Channel>().unwrap();
        let mut ann = Client::connect(&h, "c", "ann", "read,write").await;
        let mut bob = Client::connect(&h, "c", "bob", "read,write").await;
        assert_eq!(ann.next().await["type"], "initial_state");
        assert_eq!(bob.next().await["type"], "initial_state");
        let start = h.clock().unwrap().now_ms();

        ann.say(r#"{"type":"typing","isTyping":true}"#).await;
        assert_eq!(
            bob.next().await,
            json!({"type": "typing", "userId": "ann", "username": "ann name", "isTyping": true, "users": ["ann"]})
        );
        // The typist hears nothing: the next thing ann gets is her own sync reply.
        ann.say(r#"{"type":"sync","after":0}"#).await;
        assert_eq!(ann.next().await["type"], "sync");
        assert_eq!(stored_typing(&h).await, (1, Some(start + TYPING_TTL_MS)));

        // A newcomer sees who is typing.
        let mut cat = Client::connect(&h, "c", "cat", "read").await;
        assert_eq!(cat.next().await["typing"], json!(["ann"]));

        // Just before the expiry nothing is cleared.
        h.advance(Duration::from_millis(TYPING_TTL_MS as u64 - 1));
        bob.say(r#"{"type":"sync","after":0}"#).await;
        assert_eq!(bob.next().await["type"], "sync");
        assert_eq!(stored_typing(&h).await.0, 1);

        // At the expiry the alarm clears it for everyone else.
        h.advance(Duration::from_millis(1));
        for c in [&mut bob, &mut cat] {
            let cleared = c.next().await;
            assert_eq!(
                (cleared["userId"].as_str(), cleared["isTyping"].as_bool()),
                (Some("ann"), Some(false))
            );
        }
        assert_eq!(
            stored_typing(&h).await,
            (0, None),
            "no state and no alarm left"
        );
    }

    #[tokio::test]
    async fn typing_again_extends_and_stopping_deletes_the_alarm() {
        let h = TestHarness::new::<Channel>().unwrap();
        let mut ann = Client::connect(&h, "c", "ann", "read,write").await;
        let mut bob = Client::connect(&h, "c", "bob", "read,write").await;
        ann.next().await;
        bob.next().await;
        let start = h.clock().unwrap().now_ms();
        ann.say(r#"{"type":"typing","isTyping":true}"#).await;
        assert_eq!(bob.next().await["isTyping"], true);
        h.advance(Duration::from_millis(1_000));
        ann.say(r#"{"type":"typing","isTyping":true}"#).await;
        bob.say(r#"{"type":"typing","isTyping":true}"#).await;
        // Ann's repeat is not re-broadcast; bob's start reaches ann.
        assert_eq!(ann.next().await["userId"], "bob");
        assert_eq!(
            stored_typing(&h).await,
            (2, Some(start + 1_000 + TYPING_TTL_MS))
        );
        // Posting ends ann's indicator; bob hears false, then the message.
        ann.say(r#"{"type":"message","content":"hi"}"#).await;
        assert_eq!(bob.next().await["isTyping"], false);
        assert_eq!(bob.next().await["content"], "hi");
        bob.say(r#"{"type":"typing","isTyping":false}"#).await;
        assert_eq!(ann.next().await["content"], "hi");
        assert_eq!(ann.next().await["isTyping"], false);
        assert_eq!(stored_typing(&h).await, (0, None));
    }

    #[tokio::test]
    async fn messages_need_write_and_bounded_content() {
        let h = TestHarness::new::<Channel>().unwrap();
        let mut reader = Client::connect(&h, "c", "rita", "read").await;
        reader.next().await;
        reader.say(r#"{"type":"message","content":"hi"}"#).await;
        assert_eq!(
            reader.next().await,
            json!({"type": "error", "message": "No write permission"})
        );
        assert_eq!(post(&h, "rita", "read", "hi").await.0, 403);
        let long = "é".repeat(MAX_CONTENT_CHARS + 1);
        assert_eq!(post(&h, "ann", "write", &long).await.0, 400);
        let just = "é".repeat(MAX_CONTENT_CHARS);
        assert_eq!(
            post(&h, "ann", "write", &just).await,
            (200, json!({"success": true, "sequence": 1}))
        );
        let anonymous = h
            .fetch(
                "c",
                Request::post("/message")
                    .unwrap()
                    .with_json(&json!({"content": "x"}))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    }

    #[tokio::test]
    async fn sequences_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let h = TestHarness::with_data_dir::<Channel>(dir.path()).unwrap();
        for (i, text) in ["one", "two"].into_iter().enumerate() {
            assert_eq!(post(&h, "ann", "write", text).await.1["sequence"], i + 1);
        }
        assert!(h.shutdown().await);

        let h = TestHarness::with_data_dir::<Channel>(dir.path()).unwrap();
        assert_eq!(
            post(&h, "bob", "read,write", "three").await.1["sequence"],
            3
        );
        let r = h
            .fetch(
                "c",
                as_user(
                    Request::get("/messages?after=1&limit=1").unwrap(),
                    "ann",
                    "read",
                ),
            )
            .await
            .unwrap();
        let page: Value = r.json_body().unwrap();
        assert_eq!(page["lastSequence"], 3);
        assert_eq!(page["hasMore"], true);
        assert_eq!(page["messages"][0]["content"], "two");
        assert_eq!(page["messages"][0]["sequence"], 2);
        let r = h
            .fetch(
                "c",
                as_user(Request::get("/messages?after=2").unwrap(), "ann", "read"),
            )
            .await
            .unwrap();
        let page: Value = r.json_body().unwrap();
        assert_eq!(page["hasMore"], false);
        assert_eq!(page["messages"][0]["username"], "bob name");
        assert!(h.shutdown().await);
    }

    #[tokio::test]
    async fn sync_pages_by_five_hundred() {
        let h = TestHarness::new::<Channel>().unwrap();
        for i in 0..(MAX_PAGE + 2) {
            post(&h, "ann", "write", &format!("m{i}")).await;
        }
        let mut c = Client::connect(&h, "c", "bob", "read").await;
        let initial = c.next().await;
        assert_eq!(initial["lastSequence"], MAX_PAGE + 2);
        let messages = initial["messages"].as_array().unwrap();
        assert_eq!(messages.len(), INITIAL_MESSAGES);
        assert_eq!(messages[0]["sequence"], MAX_PAGE + 2 - INITIAL_MESSAGES + 1);
        c.say(r#"{"type":"sync","after":1}"#).await;
        let first = c.next().await;
        assert_eq!(first["hasMore"], true);
        let got = first["messages"].as_array().unwrap();
        assert_eq!(got.len(), MAX_PAGE);
        assert_eq!(
            (
                got[0]["sequence"].as_u64(),
                got[MAX_PAGE - 1]["sequence"].as_u64()
            ),
            (Some(2), Some(MAX_PAGE as u64 + 1))
        );
        c.say(&format!(r#"{{"type":"sync","after":{}}}"#, MAX_PAGE + 1))
            .await;
        let rest = c.next().await;
        assert_eq!(rest["hasMore"], false);
        assert_eq!(rest["messages"][0]["content"], format!("m{}", MAX_PAGE + 1));
        c.say(r#"{"type":"sync","after":-1}"#).await;
        assert_eq!(c.next().await["type"], "error");
        c.say(r#"{"type":"wave"}"#).await;
        assert_eq!(
            c.next().await,
            json!({"type": "error", "message": "Unknown message type"})
        );
    }
}

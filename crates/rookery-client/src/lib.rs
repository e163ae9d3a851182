//! A client for Waddle channels (`docs/PROTOCOL.md`), for services and tests: the Rust twin of
//! `web/waddle-client.js`.
//!
//! [`Client::connect`] starts a background task that keeps one WebSocket to a channel open:
//!
//! - **Reconnects** after any connection loss, waiting an exponential backoff with jitter,
//!   capped ([`backoff_delay`]); the attempt count resets once the channel's `initial_state`
//!   arrives. A 401 or 403 at the handshake stops the client (the credentials are wrong).
//! - **Queues** messages while offline ([`Client::send_message`] never waits) and sends them,
//!   in order, once connected again. A message leaves the queue only when it was written to an
//!   open socket; one whose write fails is sent again after reconnecting.
//! - **Syncs** on every reconnect with seed 004's `{"type":"sync","afterMessageId":ID}` (the
//!   last message it delivered; `{"type":"sync","after":0}` if it has none yet), holding live
//!   messages back until the replay is complete, so messages are delivered in sequence order.
//! - **Dedupes** messages by id: each is delivered once, however often the server sends it.
//!
//! Typing and presence frames are transient: sent only while connected, dropped otherwise. On
//! every (re)connection the client announces itself with `{"type":"presence","status":"online"}`
//! (see [`ClientConfig::announce_presence`]).
//!
//! Only `ws://` URLs are supported (no TLS is compiled in; [`Client::connect`] refuses others):
//! run it next to the server or behind a proxy that terminates TLS.

#![warn(missing_docs)]

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{self, Message};

/// What can go wrong when using a [`Client`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The URL (or a header made from the configuration) cannot be used for a WebSocket.
    #[error("invalid channel URL: {0}")]
    InvalidUrl(String),
    /// [`Client::connect`] was called outside a Tokio runtime.
    #[error("the client needs a Tokio runtime")]
    NoRuntime,
    /// The offline queue holds [`ClientConfig::max_queue`] messages already.
    #[error("the offline queue is full ({0} messages)")]
    QueueFull(usize),
    /// The server refused the credentials (HTTP status at the handshake); the client stopped.
    #[error("the server refused the connection with HTTP {0}")]
    Refused(u16),
    /// The client was closed or its task ended.
    #[error("the client is closed")]
    Closed,
    /// A wait did not end in time.
    #[error("timed out")]
    Timeout,
}

/// How a [`Client`] connects and retries.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The channel's WebSocket URL, e.g. `ws://127.0.0.1:8787/channel/general/websocket`.
    pub url: String,
    /// A token sent as `Authorization: Bearer` on every handshake.
    pub bearer_token: Option<String>,
    /// The first reconnect delay, before jitter.
    pub initial_backoff: Duration,
    /// The longest reconnect delay.
    pub max_backoff: Duration,
    /// How long a handshake may take before it counts as failed.
    pub connect_timeout: Duration,
    /// How often to ping; a connection silent for two periods is treated as lost.
    pub heartbeat: Duration,
    /// Most messages held while offline.
    pub max_queue: usize,
    /// How many message ids are remembered for deduplication.
    pub remembered_ids: usize,
    /// Whether to send `presence: online` on every (re)connection.
    pub announce_presence: bool,
}

impl ClientConfig {
    /// A configuration for `url` with the defaults of `docs/PROTOCOL.md` (1 s doubling to 30 s).
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            bearer_token: None,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            heartbeat: Duration::from_secs(15),
            max_queue: 1_000,
            remembered_ids: 10_000,
            announce_presence: true,
        }
    }

    /// The configuration for channel `channel` of the server at `server` (`http://host:port`
    /// or `ws://host:port`), through seed 004's route `/channel/:id/websocket`.
    pub fn channel(server: &str, channel: &str) -> Self {
        let base = server.trim_end_matches('/');
        let base = if let Some(rest) = base.strip_prefix("http://") {
            format!("ws://{rest}")
        } else if let Some(rest) = base.strip_prefix("https://") {
            format!("wss://{rest}")
        } else {
            base.to_string()
        };
        Self::new(format!("{base}/channel/{}/websocket", encode(channel)))
    }

    /// Adds the demo's query identity (`?user=&name=&permissions=`; servers with
    /// `query_identity = true` only).
    pub fn query_identity(mut self, user: &str, name: &str, permissions: &str) -> Self {
        let sep = if self.url.contains('?') { '&' } else { '?' };
        self.url = format!(
            "{}{sep}user={}&name={}&permissions={}",
            self.url,
            encode(user),
            encode(name),
            encode(permissions)
        );
        self
    }

    /// Sets the bearer token.
    pub fn bearer_token(mut self, token: impl Into<String>) -> Self {
        self.bearer_token = Some(token.into());
        self
    }

    /// Sets the first and the longest reconnect delay.
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.initial_backoff = initial;
        self.max_backoff = max.max(initial);
        self
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The delay before reconnect attempt `attempt` (0 for the first): `initial × 2^attempt`,
/// capped at `max`, then "equal jitter": half of it fixed and half scaled by `random` (0..=1),
/// so clients that lost the same server spread out and no delay exceeds `max`.
pub fn backoff_delay(attempt: u32, initial: Duration, max: Duration, random: f64) -> Duration {
    let factor = 2u32.saturating_pow(attempt.min(31));
    let exp = initial.saturating_mul(factor).min(max);
    let half = exp / 2;
    half + half.mul_f64(random.clamp(0.0, 1.0))
}

/// A random number in 0..=1 for the jitter (the clock's nanoseconds if the OS has no
/// randomness to give).
fn jitter() -> f64 {
    let bits = getrandom::u64().unwrap_or_else(|_| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::from(d.subsec_nanos()))
    });
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

/// A message of the channel, as the server stored it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChatMessage {
    /// Its number in the channel (1, 2, 3, …).
    pub sequence: u64,
    /// Its id (a UUID).
    pub id: String,
    /// The channel's name.
    #[serde(default)]
    pub channel_id: String,
    /// The author's user id.
    pub user_id: String,
    /// The author's display name.
    pub username: String,
    /// The text.
    pub content: String,
    /// When the server accepted it (ms since the Unix epoch).
    pub timestamp: i64,
    /// The thread it answers, if any.
    #[serde(default)]
    pub thread_id: Option<String>,
}

/// A user with an open socket in the channel.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OnlineUser {
    /// The user id.
    pub user_id: String,
    /// The display name.
    pub username: String,
    /// When their earliest open socket joined (ms), 0 if unknown.
    #[serde(default)]
    pub joined_at: i64,
}

/// What the client reports, in the order it happened.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Connected: the channel's `initial_state` arrived (messages follow as [`Event::Message`]).
    Connected {
        /// Who is online now (this client included).
        online: Vec<OnlineUser>,
        /// The user ids typing now.
        typing: Vec<String>,
        /// The channel's last sequence when this socket opened.
        last_sequence: u64,
    },
    /// A message, each exactly once and in sequence order.
    Message(ChatMessage),
    /// Someone started or stopped typing.
    Typing {
        /// The typist's user id.
        user_id: String,
        /// The typist's display name.
        username: String,
        /// Whether they type now.
        is_typing: bool,
        /// Everyone typing now.
        users: Vec<String>,
    },
    /// Someone announced a status (`online`, `away`, `dnd`, `offline`).
    Presence {
        /// Their user id.
        user_id: String,
        /// Their display name.
        username: String,
        /// The status.
        status: String,
    },
    /// Someone's last socket in the channel closed.
    UserLeft {
        /// Their user id.
        user_id: String,
        /// Their display name.
        username: String,
    },
    /// The server answered a frame of ours with an error.
    ServerError(String),
    /// The connection was lost (or never made); a reconnect follows.
    Disconnected {
        /// Why, for logs.
        reason: String,
        /// The delay before the next attempt.
        retry_in: Duration,
    },
    /// The client stopped for good (the server refused the credentials).
    Stopped(ClientError),
}

/// State shared by the [`Client`] handle and its task.
struct Shared {
    /// Serialized `message` frames waiting for an open socket, oldest first.
    queue: Mutex<VecDeque<String>>,
    /// Wakes the task when something was queued.
    wake: Notify,
}

impl Shared {
    fn queue(&self) -> std::sync::MutexGuard<'_, VecDeque<String>> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// What the handle asks of the task.
enum Command {
    /// A transient frame (typing, presence): sent if connected, else dropped.
    Transient(String),
    /// Close the socket and end.
    Close,
}

/// A connection to one channel that survives server restarts. Dropping it closes it.
pub struct Client {
    shared: Arc<Shared>,
    commands: mpsc::UnboundedSender<Command>,
    events: mpsc::UnboundedReceiver<Event>,
    connected: watch::Receiver<bool>,
    task: Option<JoinHandle<()>>,
    max_queue: usize,
}

impl Client {
    /// Starts connecting to `config.url` in the background; returns at once. Needs a Tokio
    /// runtime.
    pub fn connect(config: ClientConfig) -> Result<Self, ClientError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| ClientError::NoRuntime)?;
        // Checked now, so a bad URL is an error here rather than a retry loop.
        request(&config)?;
        let shared = Arc::new(Shared {
            queue: Mutex::new(VecDeque::new()),
            wake: Notify::new(),
        });
        let (commands, command_rx) = mpsc::unbounded_channel();
        let (event_tx, events) = mpsc::unbounded_channel();
        let (connected_tx, connected) = watch::channel(false);
        let max_queue = config.max_queue;
        let worker = Worker {
            config,
            shared: shared.clone(),
            commands: command_rx,
            events: event_tx,
            connected: connected_tx,
            last: None,
            seen: HashSet::new(),
            seen_order: VecDeque::new(),
            attempt: 0,
            ever_connected: false,
        };
        let task = runtime.spawn(worker.run());
        Ok(Self {
            shared,
            commands,
            events,
            connected,
            task: Some(task),
            max_queue,
        })
    }

    /// Sends a message now if connected, else queues it for the next connection.
    pub fn send_message(&self, content: &str) -> Result<(), ClientError> {
        self.enqueue(json!({ "type": "message", "content": content }))
    }

    /// Sends a message that answers thread `thread_id` (queued like [`Self::send_message`]).
    pub fn send_reply(&self, content: &str, thread_id: &str) -> Result<(), ClientError> {
        self.enqueue(json!({ "type": "message", "content": content, "threadId": thread_id }))
    }

    fn enqueue(&self, frame: Value) -> Result<(), ClientError> {
        if self.commands.is_closed() {
            return Err(ClientError::Closed);
        }
        {
            let mut queue = self.shared.queue();
            if queue.len() >= self.max_queue {
                return Err(ClientError::QueueFull(self.max_queue));
            }
            queue.push_back(frame.to_string());
        }
        self.shared.wake.notify_one();
        Ok(())
    }

    /// Says whether this user is typing (dropped while offline).
    pub fn set_typing(&self, is_typing: bool) -> Result<(), ClientError> {
        self.transient(json!({ "type": "typing", "isTyping": is_typing }))
    }

    /// Announces a status: `online`, `away`, `dnd` or `offline` (dropped while offline).
    pub fn set_presence(&self, status: &str) -> Result<(), ClientError> {
        self.transient(json!({ "type": "presence", "status": status }))
    }

    fn transient(&self, frame: Value) -> Result<(), ClientError> {
        self.commands
            .send(Command::Transient(frame.to_string()))
            .map_err(|_| ClientError::Closed)
    }

    /// How many messages wait for a connection.
    pub fn queued(&self) -> usize {
        self.shared.queue().len()
    }

    /// Whether the socket is open and the channel's `initial_state` arrived.
    pub fn is_connected(&self) -> bool {
        *self.connected.borrow()
    }

    /// Waits until the connection state is `connected`, at most `timeout`.
    pub async fn wait_connected(
        &mut self,
        connected: bool,
        timeout: Duration,
    ) -> Result<(), ClientError> {
        tokio::time::timeout(timeout, self.connected.wait_for(|c| *c == connected))
            .await
            .map_err(|_| ClientError::Timeout)?
            .map(drop)
            .map_err(|_| ClientError::Closed)
    }

    /// The next event; `None` once the client has stopped and every event was read.
    pub async fn next_event(&mut self) -> Option<Event> {
        self.events.recv().await
    }

    /// An event already waiting, if any.
    pub fn try_next_event(&mut self) -> Option<Event> {
        self.events.try_recv().ok()
    }

    /// Closes the socket cleanly and waits for the task to end. Queued messages are dropped.
    pub async fn close(mut self) {
        let _ = self.commands.send(Command::Close);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        // The task ends by itself when the command channel closes; `Close` makes it prompt.
        let _ = self.commands.send(Command::Close);
    }
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The handshake request of `config`.
fn request(config: &ClientConfig) -> Result<tungstenite::handshake::client::Request, ClientError> {
    if !config.url.starts_with("ws://") {
        return Err(ClientError::InvalidUrl(format!(
            "{}: only ws:// URLs are supported (no TLS is compiled in)",
            config.url
        )));
    }
    let mut request = config
        .url
        .as_str()
        .into_client_request()
        .map_err(|e| ClientError::InvalidUrl(e.to_string()))?;
    if let Some(token) = &config.bearer_token {
        let value = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
            ClientError::InvalidUrl("the bearer token is not a header value".into())
        })?;
        request
            .headers_mut()
            .insert(tungstenite::http::header::AUTHORIZATION, value);
    }
    Ok(request)
}

/// Why a connection attempt or a session ended.
enum End {
    /// The client was closed or dropped.
    Closed,
    /// Try again after the backoff.
    Retry(String),
    /// Give up.
    Fatal(ClientError),
}

/// Where a session is in catching up.
#[derive(Default)]
struct Session {
    /// `initial_state` arrived.
    ready: bool,
    /// A `sync {afterMessageId}` is outstanding: live messages wait in `held`.
    syncing: bool,
    /// Live messages that arrived while syncing.
    held: Vec<ChatMessage>,
    /// `initial_state`'s messages, used if the sync is refused.
    initial: Vec<ChatMessage>,
}

/// One step of a session's loop.
enum Step {
    Frame(Option<Result<Message, tungstenite::Error>>),
    Command(Option<Command>),
    Flush,
    Beat,
}

/// The background task of a [`Client`].
struct Worker {
    config: ClientConfig,
    shared: Arc<Shared>,
    commands: mpsc::UnboundedReceiver<Command>,
    events: mpsc::UnboundedSender<Event>,
    connected: watch::Sender<bool>,
    /// The sequence and id of the newest message delivered.
    last: Option<(u64, String)>,
    /// Ids delivered, for deduplication; `seen_order` forgets the oldest beyond the limit.
    seen: HashSet<String>,
    seen_order: VecDeque<String>,
    /// Reconnect attempts since the last `initial_state`.
    attempt: u32,
    /// Whether an `initial_state` ever arrived (later ones are reconnections).
    ever_connected: bool,
}

impl Worker {
    async fn run(mut self) {
        loop {
            let end = match self.open().await {
                Ok(ws) => self.session(ws).await,
                Err(end) => end,
            };
            self.connected.send_replace(false);
            let reason = match end {
                End::Closed => return,
                End::Fatal(e) => {
                    let _ = self.events.send(Event::Stopped(e));
                    return;
                }
                End::Retry(reason) => reason,
            };
            let delay = backoff_delay(
                self.attempt,
                self.config.initial_backoff,
                self.config.max_backoff,
                jitter(),
            );
            self.attempt = self.attempt.saturating_add(1);
            tracing::debug!(%reason, ?delay, "channel connection lost; reconnecting");
            let _ = self.events.send(Event::Disconnected {
                reason,
                retry_in: delay,
            });
            let wait = tokio::time::sleep(delay);
            tokio::pin!(wait);
            loop {
                tokio::select! {
                    () = &mut wait => break,
                    command = self.commands.recv() => match command {
                        None | Some(Command::Close) => return,
                        // Transient frames are dropped while offline.
                        Some(Command::Transient(_)) => {}
                    },
                }
            }
        }
    }

    /// Opens the socket.
    async fn open(&mut self) -> Result<Socket, End> {
        let request = request(&self.config).map_err(End::Fatal)?;
        let connecting = tokio::time::timeout(
            self.config.connect_timeout,
            tokio_tungstenite::connect_async(request),
        );
        tokio::pin!(connecting);
        let result = loop {
            tokio::select! {
                result = &mut connecting => break result,
                command = self.commands.recv() => match command {
                    None | Some(Command::Close) => return Err(End::Closed),
                    Some(Command::Transient(_)) => {}
                },
            }
        };
        match result {
            Err(_) => Err(End::Retry("the handshake timed out".into())),
            Ok(Ok((ws, _))) => Ok(ws),
            Ok(Err(tungstenite::Error::Http(response)))
                if matches!(response.status().as_u16(), 401 | 403) =>
            {
                Err(End::Fatal(ClientError::Refused(response.status().as_u16())))
            }
            Ok(Err(e)) => Err(End::Retry(e.to_string())),
        }
    }

    /// Serves one open socket until it ends.
    async fn session(&mut self, mut ws: Socket) -> End {
        let mut session = Session::default();
        let mut heartbeat = tokio::time::interval(self.config.heartbeat);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        heartbeat.reset();
        let mut last_heard = Instant::now();
        loop {
            let step = tokio::select! {
                frame = ws.next() => Step::Frame(frame),
                command = self.commands.recv() => Step::Command(command),
                () = self.shared.wake.notified(), if session.ready => Step::Flush,
                _ = heartbeat.tick() => Step::Beat,
            };
            let outcome = match step {
                Step::Frame(None) => Err("the connection ended".to_string()),
                Step::Frame(Some(Err(e))) => Err(e.to_string()),
                Step::Frame(Some(Ok(Message::Text(text)))) => {
                    last_heard = Instant::now();
                    self.on_frame(&mut ws, &mut session, text.as_str()).await
                }
                Step::Frame(Some(Ok(Message::Close(frame)))) => {
                    Err(format!("the server closed the socket: {frame:?}"))
                }
                Step::Frame(Some(Ok(_))) => {
                    last_heard = Instant::now();
                    Ok(())
                }
                Step::Command(None | Some(Command::Close)) => {
                    let _ = tokio::time::timeout(self.config.connect_timeout, ws.close(None)).await;
                    return End::Closed;
                }
                Step::Command(Some(Command::Transient(text))) => {
                    if session.ready {
                        send(&mut ws, text).await
                    } else {
                        Ok(())
                    }
                }
                Step::Flush => self.flush(&mut ws).await,
                Step::Beat => {
                    if last_heard.elapsed() > self.config.heartbeat * 2 {
                        Err("the server stopped answering pings".to_string())
                    } else {
                        ws.send(Message::Ping(Vec::new().into()))
                            .await
                            .map_err(|e| e.to_string())
                    }
                }
            };
            if let Err(reason) = outcome {
                return End::Retry(reason);
            }
        }
    }

    /// Sends the queued messages, oldest first; each leaves the queue once written.
    async fn flush(&mut self, ws: &mut Socket) -> Result<(), String> {
        loop {
            let Some(frame) = self.shared.queue().front().cloned() else {
                return Ok(());
            };
            send(ws, frame).await?;
            self.shared.queue().pop_front();
        }
    }

    /// Handles one text frame from the server.
    async fn on_frame(
        &mut self,
        ws: &mut Socket,
        session: &mut Session,
        text: &str,
    ) -> Result<(), String> {
        let Ok(data) = serde_json::from_str::<Value>(text) else {
            tracing::debug!(text, "ignored a frame that is not JSON");
            return Ok(());
        };
        match data.get("type").and_then(Value::as_str) {
            Some("initial_state") => self.on_initial_state(ws, session, &data).await,
            Some("message") => {
                let Some(message) = message_of(&data) else {
                    tracing::debug!(%data, "ignored a malformed message frame");
                    return Ok(());
                };
                if session.syncing && data.get("replay") != Some(&Value::Bool(true)) {
                    session.held.push(message);
                } else {
                    self.deliver(message);
                }
                Ok(())
            }
            Some("sync") => {
                // The answer to `sync {after}` carries its messages; ours are replayed frames.
                if let Some(messages) = data.get("messages").and_then(Value::as_array) {
                    for m in messages {
                        if let Ok(m) = ChatMessage::deserialize(m) {
                            self.deliver(m);
                        }
                    }
                }
                if data.get("hasMore") == Some(&Value::Bool(true)) {
                    return self.request_sync(ws).await;
                }
                self.end_sync(session);
                Ok(())
            }
            Some("typing") => {
                self.emit(Event::Typing {
                    user_id: text_of(&data, "userId"),
                    username: text_of(&data, "username"),
                    is_typing: data.get("isTyping").and_then(Value::as_bool) == Some(true),
                    users: strings_of(data.get("users")),
                });
                Ok(())
            }
            Some("presence") => {
                self.emit(Event::Presence {
                    user_id: text_of(&data, "userId"),
                    username: text_of(&data, "username"),
                    status: text_of(&data, "status"),
                });
                Ok(())
            }
            Some("user_disconnected") => {
                self.emit(Event::UserLeft {
                    user_id: text_of(&data, "userId"),
                    username: text_of(&data, "username"),
                });
                Ok(())
            }
            Some("error") => {
                let message = text_of(&data, "message");
                if session.syncing && message.starts_with("sync:") {
                    // The channel does not know our last message (its data was replaced):
                    // start over from what `initial_state` showed.
                    for m in std::mem::take(&mut session.initial) {
                        self.deliver(m);
                    }
                    self.end_sync(session);
                }
                self.emit(Event::ServerError(message));
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// The channel's first frame: reports the connection, catches up and sends the queue.
    async fn on_initial_state(
        &mut self,
        ws: &mut Socket,
        session: &mut Session,
        data: &Value,
    ) -> Result<(), String> {
        session.ready = true;
        self.attempt = 0;
        let online = data
            .get("onlineUsers")
            .and_then(Value::as_array)
            .map(|users| {
                users
                    .iter()
                    .filter_map(|u| OnlineUser::deserialize(u).ok())
                    .collect()
            })
            .unwrap_or_default();
        let messages: Vec<ChatMessage> = data
            .get("messages")
            .and_then(Value::as_array)
            .map(|ms| {
                ms.iter()
                    .filter_map(|m| ChatMessage::deserialize(m).ok())
                    .collect()
            })
            .unwrap_or_default();
        self.connected.send_replace(true);
        self.emit(Event::Connected {
            online,
            typing: strings_of(data.get("typing")),
            last_sequence: data
                .get("lastSequence")
                .and_then(Value::as_u64)
                .unwrap_or(0),
        });
        if !self.ever_connected {
            self.ever_connected = true;
            // First connection: the recent messages are where this client starts.
            for m in messages {
                self.deliver(m);
            }
        } else {
            // A reconnection: ask for exactly what was missed.
            session.initial = messages;
            session.syncing = true;
            self.request_sync(ws).await?;
        }
        if self.config.announce_presence {
            send(
                ws,
                json!({ "type": "presence", "status": "online" }).to_string(),
            )
            .await?;
        }
        self.flush(ws).await
    }

    /// Asks for the messages after the last one delivered (all of them if none was).
    async fn request_sync(&mut self, ws: &mut Socket) -> Result<(), String> {
        let frame = match &self.last {
            Some((_, id)) => json!({ "type": "sync", "afterMessageId": id }),
            None => json!({ "type": "sync", "after": 0 }),
        };
        send(ws, frame.to_string()).await
    }

    /// The replay is complete: the held live messages follow, in order.
    fn end_sync(&mut self, session: &mut Session) {
        session.syncing = false;
        session.initial.clear();
        let mut held = std::mem::take(&mut session.held);
        held.sort_by_key(|m| m.sequence);
        for m in held {
            self.deliver(m);
        }
    }

    /// Delivers `message` unless it was delivered before.
    fn deliver(&mut self, message: ChatMessage) {
        if self.seen.contains(&message.id) {
            return;
        }
        self.seen.insert(message.id.clone());
        self.seen_order.push_back(message.id.clone());
        while self.seen_order.len() > self.config.remembered_ids.max(1) {
            if let Some(old) = self.seen_order.pop_front() {
                self.seen.remove(&old);
            }
        }
        if self
            .last
            .as_ref()
            .is_none_or(|(seq, _)| message.sequence > *seq)
        {
            self.last = Some((message.sequence, message.id.clone()));
        }
        self.emit(Event::Message(message));
    }

    fn emit(&self, event: Event) {
        // Nobody listening (the handle was dropped) is not an error: the task ends soon.
        let _ = self.events.send(event);
    }
}

/// Writes one text frame.
async fn send(ws: &mut Socket, text: String) -> Result<(), String> {
    ws.send(Message::text(text))
        .await
        .map_err(|e| e.to_string())
}

/// The message of a `message` frame: seed 004's nested object, else seed 000's flat envelope.
fn message_of(data: &Value) -> Option<ChatMessage> {
    data.get("message")
        .and_then(|m| ChatMessage::deserialize(m).ok())
        .or_else(|| ChatMessage::deserialize(data).ok())
}

/// A string field, empty when missing.
fn text_of(data: &Value, key: &str) -> String {
    data.get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// An array of strings, skipping anything else.
fn strings_of(value: Option<&Value>) -> Vec<String> {
    value
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_jitters_and_is_capped() {
        let (initial, max) = (Duration::from_millis(100), Duration::from_secs(1));
        assert_eq!(
            backoff_delay(0, initial, max, 0.0),
            Duration::from_millis(50)
        );
        assert_eq!(
            backoff_delay(0, initial, max, 1.0),
            Duration::from_millis(100)
        );
        assert_eq!(
            backoff_delay(2, initial, max, 1.0),
            Duration::from_millis(400)
        );
        for attempt in [4, 10, 31, 1000] {
            for r in [0.0, 0.5, 1.0, 7.0] {
                let d = backoff_delay(attempt, initial, max, r);
                assert!(d <= max && d >= max / 2, "{attempt} {r}: {d:?}");
            }
        }
        let r = jitter();
        assert!((0.0..=1.0).contains(&r));
    }

    #[test]
    fn urls_are_built_and_encoded() {
        let c = ClientConfig::channel("http://127.0.0.1:8787/", "general chat").query_identity(
            "ann",
            "Ann B",
            "read,write",
        );
        assert_eq!(
            c.url,
            "ws://127.0.0.1:8787/channel/general%20chat/websocket?user=ann&name=Ann%20B&permissions=read%2Cwrite"
        );
        assert!(request(&c).is_ok());
        assert!(matches!(
            request(&ClientConfig::new("not a url")),
            Err(ClientError::InvalidUrl(_))
        ));
        assert!(matches!(
            request(&ClientConfig::channel("https://example.test", "c")),
            Err(ClientError::InvalidUrl(_))
        ));
        assert!(matches!(
            request(&ClientConfig::new("ws://h/").bearer_token("a\nb")),
            Err(ClientError::InvalidUrl(_))
        ));
    }

    #[test]
    fn both_message_shapes_are_read() {
        let flat = json!({"type":"message","sequence":3,"id":"x","userId":"u","username":"U",
                          "content":"hi","timestamp":5});
        let nested = json!({"type":"message","message":{"sequence":3,"id":"x","channelId":"c",
                            "userId":"u","username":"U","content":"hi","timestamp":5,"threadId":null}});
        let a = message_of(&flat).expect("flat");
        let b = message_of(&nested).expect("nested");
        assert_eq!((a.sequence, a.id.as_str()), (b.sequence, b.id.as_str()));
        assert!(message_of(&json!({"type":"message"})).is_none());
    }

    #[test]
    fn connecting_outside_a_runtime_is_an_error() {
        assert!(matches!(
            Client::connect(ClientConfig::new("ws://127.0.0.1:1/")),
            Err(ClientError::NoRuntime)
        ));
    }
}

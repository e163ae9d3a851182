//! The caller of a Waddle object: the identity the gateway verified, read from its trusted
//! headers and kept as each socket's attachment; and the error frame both Waddle objects send.

use rookery::identity::{PERMISSIONS, USER_ID, USER_NAME};
use rookery::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The verified caller of a request, and the attachment of each socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Member {
    /// The user's id (also the socket's tag).
    pub(crate) user_id: String,
    /// The user's display name (the id when the gateway gave none).
    pub(crate) username: String,
    /// What the user may do, e.g. `read`, `write`.
    pub(crate) permissions: Vec<String>,
    /// When the socket was accepted (ms since the epoch); 0 before, and in attachments written
    /// before this field existed. Seed 004 lists it in `onlineUsers`.
    #[serde(default)]
    pub(crate) joined_at: i64,
    /// Channel: its last sequence when the socket was accepted; what came later was sent on
    /// the socket live. `None` for Waddle sockets and for attachments written before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) since_sequence: Option<u64>,
}

impl Member {
    /// The caller named by the gateway's trusted headers; `None` without a user id.
    pub(crate) fn from_request(req: &Request) -> Option<Self> {
        let header = |name: &str| {
            req.headers()
                .get(name)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).trim().to_string())
                .unwrap_or_default()
        };
        let user_id = header(USER_ID.as_str());
        if user_id.is_empty() {
            return None;
        }
        let username = match header(USER_NAME.as_str()) {
            name if name.is_empty() => user_id.clone(),
            name => name,
        };
        let permissions = header(PERMISSIONS.as_str())
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(str::to_string)
            .collect();
        Some(Self {
            user_id,
            username,
            permissions,
            joined_at: 0,
            since_sequence: None,
        })
    }

    /// The member a socket belongs to, from its attachment.
    pub(crate) fn of(ws: &WebSocket) -> Option<Self> {
        ws.deserialize_attachment::<Self>().ok().flatten()
    }

    /// Whether the member holds `permission`.
    pub(crate) fn may(&self, permission: &str) -> bool {
        self.permissions.iter().any(|p| p == permission)
    }

    /// Accepts the upgrade `req` as a hibernatable socket of this member: tagged with the user
    /// id, with the member (joined now) as attachment.
    pub(crate) fn accept(&mut self, state: &ObjectState, req: &Request) -> Result<WebSocket> {
        self.joined_at = state.now_ms();
        let ws = state.accept_websocket(req, &[&self.user_id])?;
        ws.serialize_attachment(self)?;
        Ok(ws)
    }
}

/// The member an upgrade request comes from, or the status and message to refuse it with: 400
/// if it is not an upgrade, 401 `Unauthorized` without a user id.
pub(crate) fn upgrading_member(
    req: &Request,
) -> std::result::Result<Member, (StatusCode, &'static str)> {
    if !req.is_websocket_upgrade() {
        return Err((StatusCode::BAD_REQUEST, "Expected WebSocket"));
    }
    let Some(member) = Member::from_request(req) else {
        return Err((StatusCode::UNAUTHORIZED, "Unauthorized"));
    };
    if member.user_id.len() > rookery::MAX_TAG_BYTES {
        return Err((StatusCode::BAD_REQUEST, "The user id is too long"));
    }
    Ok(member)
}

/// Sends `{"type":"error","message":message}` to `ws`.
pub(crate) fn error_reply(ws: &WebSocket, message: &str) -> Result<()> {
    ws.send_json(&json!({ "type": "error", "message": message }))
}

/// The statuses a user may be in.
pub(crate) const STATUSES: [&str; 4] = ["online", "away", "dnd", "offline"];

/// The users with an open socket, once each (with their earliest `joinedAt`), by user id:
/// seed 004's `onlineUsers`.
pub(crate) fn online_users(state: &ObjectState) -> Vec<serde_json::Value> {
    let mut users: std::collections::BTreeMap<String, Member> = std::collections::BTreeMap::new();
    for ws in state.get_websockets(None) {
        let Some(m) = Member::of(&ws) else { continue };
        match users.get_mut(&m.user_id) {
            Some(known) if known.joined_at <= m.joined_at => {}
            Some(known) => known.joined_at = m.joined_at,
            None => {
                users.insert(m.user_id.clone(), m);
            }
        }
    }
    users
        .into_values()
        .map(|m| json!({"userId": m.user_id, "username": m.username, "joinedAt": m.joined_at}))
        .collect()
}

/// Longest message content, in characters.
pub(crate) const MAX_CONTENT_CHARS: usize = 4_000;
/// Longest `threadId`, in bytes.
const MAX_THREAD_ID_BYTES: usize = 256;

/// Why a message was refused, with the HTTP status for `POST /message`.
pub(crate) struct Refusal(pub(crate) StatusCode, pub(crate) String);

/// Checks that `member` may post the message in `data`: its content and thread id.
pub(crate) fn check_message(
    member: &Member,
    data: &Value,
) -> std::result::Result<(String, Option<String>), Refusal> {
    let content = data.get("content");
    if !member.may("write") {
        return Err(Refusal(StatusCode::FORBIDDEN, "No write permission".into()));
    }
    let Some(content) = content.and_then(Value::as_str) else {
        return Err(Refusal(
            StatusCode::BAD_REQUEST,
            "A message needs a content string".into(),
        ));
    };
    if content.trim().is_empty() {
        return Err(Refusal(
            StatusCode::BAD_REQUEST,
            "A message cannot be empty".into(),
        ));
    }
    if content.chars().count() > MAX_CONTENT_CHARS {
        return Err(Refusal(
            StatusCode::BAD_REQUEST,
            format!("Message too long (at most {MAX_CONTENT_CHARS} characters)"),
        ));
    }
    let thread_id = match data.get("threadId") {
        None | Some(Value::Null) => None,
        Some(Value::String(t)) if t.len() <= MAX_THREAD_ID_BYTES => Some(t.clone()),
        Some(_) => {
            return Err(Refusal(
                StatusCode::BAD_REQUEST,
                format!("threadId must be a string of at most {MAX_THREAD_ID_BYTES} bytes"),
            ));
        }
    };
    Ok((content.to_string(), thread_id))
}

//! A Waddle (one community): who is connected and what their presence is, over hibernatable
//! WebSockets. The protocol is in `docs/PROTOCOL.md`.
//!
//! - An upgrade carries the caller's identity in the gateway's trusted headers
//!   (`x-rookery-user-id`, `x-rookery-user-name`, `x-rookery-permissions`); without a user id it
//!   is refused with 401 `{"error":"Unauthorized"}`. The socket is tagged with the user id and
//!   keeps `{userId, username, permissions}` as its attachment.
//! - The new socket gets `{"type":"presence_state","users":[..]}`: the users with an open
//!   socket (from the attachments) with their stored status, then the other known users as
//!   `offline`. When it is the user's first socket, the others get a `presence_update` `online`.
//! - `{"type":"presence_update","status":"online|away|dnd|offline"}` (or seed 004's `presence`)
//!   stores the status under `presence:<userId>` and every other socket gets
//!   `{"type":"presence_update","userId","username","status","timestamp"}` (seed 000 does not
//!   send it back to the sender).
//! - `{"type":"typing","channelId","isTyping"}` (seed 000's client) is relayed to every other
//!   socket with the typist's `userId` and `username`; nothing is stored.
//! - `POST /broadcast` with a JSON object (caller with `admin`) sends it to every socket.
//! - When a user's last socket closes, they are stored and broadcast as `offline`.
//! - `GET /presence`: `{"users":[..]}` as in `presence_state`.
//! - Invalid JSON and unknown types get `{"type":"error","message":..}`.

use std::collections::BTreeMap;

use rookery::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::member::{Member, STATUSES, error_reply, upgrading_member};

/// Where a user's presence is stored.
const PRESENCE_PREFIX: &str = "presence:";
/// Longest `channelId` relayed in a `typing` frame, in bytes.
const MAX_CHANNEL_ID_BYTES: usize = 256;

/// A user's stored presence.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Presence {
    status: String,
    username: String,
    last_seen: i64,
}

/// One user in a presence list.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
struct PresenceEntry {
    user_id: String,
    username: String,
    status: String,
    last_seen: i64,
}

/// One Waddle: members' connections and presence.
pub struct Waddle {
    state: ObjectState,
}

impl Waddle {
    /// Every known user: those connected first (with their stored status, `online` if none),
    /// then the others as `offline`; each group ordered by user id.
    fn presence_list(&self) -> Result<Vec<PresenceEntry>> {
        let now = self.state.now_ms();
        let mut stored: BTreeMap<String, Presence> = self
            .state
            .storage()
            .list::<Presence>(&ListOptions::new().prefix(PRESENCE_PREFIX))?
            .into_iter()
            .map(|(k, p)| (k[PRESENCE_PREFIX.len()..].to_string(), p))
            .collect();
        let mut online: BTreeMap<String, PresenceEntry> = BTreeMap::new();
        for ws in self.state.get_websockets(None) {
            let Some(m) = Member::of(&ws) else { continue };
            if online.contains_key(&m.user_id) {
                continue;
            }
            let status = stored
                .remove(&m.user_id)
                .map_or_else(|| "online".to_string(), |p| p.status);
            online.insert(
                m.user_id.clone(),
                PresenceEntry {
                    user_id: m.user_id,
                    username: m.username,
                    status,
                    last_seen: now,
                },
            );
        }
        let offline = stored.into_iter().map(|(user_id, p)| PresenceEntry {
            user_id,
            username: p.username,
            status: "offline".to_string(),
            last_seen: p.last_seen,
        });
        Ok(online.into_values().chain(offline).collect())
    }

    /// Stores `member`'s `status` and sends the update to every socket but `except`.
    fn set_presence(
        &self,
        member: &Member,
        status: &str,
        except: Option<&WebSocket>,
    ) -> Result<()> {
        let now = self.state.now_ms();
        self.state.storage().put(
            &format!("{PRESENCE_PREFIX}{}", member.user_id),
            &Presence {
                status: status.to_string(),
                username: member.username.clone(),
                last_seen: now,
            },
        )?;
        let update = json!({
            "type": "presence_update",
            "userId": member.user_id,
            "username": member.username,
            "status": status,
            "timestamp": now,
        });
        self.state
            .broadcast(&WsMessage::json(&update)?, None, except);
        Ok(())
    }

    fn connect(&mut self, req: &Request) -> Result<Response> {
        let mut member = match upgrading_member(req) {
            Ok(member) => member,
            Err((status, why)) => return Ok(Response::error(status, why)),
        };
        let first = self.state.get_websockets(Some(&member.user_id)).is_empty();
        let ws = member.accept(&self.state, req)?;
        if first {
            self.set_presence(&member, "online", Some(&ws))?;
        }
        ws.send_json(&json!({ "type": "presence_state", "users": self.presence_list()? }))?;
        Ok(Response::websocket(&ws))
    }

    /// Seed 000's `typing` on the Waddle: relayed to the other sockets, not stored (the Channel
    /// keeps the expiring indicators).
    fn relay_typing(&self, ws: &WebSocket, member: &Member, data: &Value) -> Result<()> {
        let Some(is_typing) = data.get("isTyping").and_then(Value::as_bool) else {
            return error_reply(ws, "typing needs isTyping: true or false");
        };
        let channel_id = match data.get("channelId") {
            None | Some(Value::Null) => Value::Null,
            Some(Value::String(c)) if c.len() <= MAX_CHANNEL_ID_BYTES => json!(c),
            Some(_) => return error_reply(ws, "channelId must be a string of at most 256 bytes"),
        };
        let update = json!({
            "type": "typing",
            "channelId": channel_id,
            "userId": member.user_id,
            "username": member.username,
            "isTyping": is_typing,
        });
        self.state
            .broadcast(&WsMessage::json(&update)?, None, Some(ws));
        Ok(())
    }

    /// Seed 000's `/broadcast`: the JSON object in the body goes to every socket. It lets the
    /// server side speak for the Waddle, so it needs `admin`.
    fn broadcast(&self, req: &Request) -> Result<Response> {
        let Some(member) = Member::from_request(req) else {
            return Ok(Response::error(StatusCode::UNAUTHORIZED, "Unauthorized"));
        };
        if !member.may("admin") {
            return Ok(Response::error(
                StatusCode::FORBIDDEN,
                "No admin permission",
            ));
        }
        let body = match req.json::<Value>() {
            Ok(body @ Value::Object(_)) => body,
            _ => {
                return Ok(Response::error(
                    StatusCode::BAD_REQUEST,
                    "The body must be a JSON object",
                ));
            }
        };
        let sockets = self.state.get_websockets(None).len();
        self.state.broadcast(&WsMessage::json(&body)?, None, None);
        Response::json(&json!({ "success": true, "sockets": sockets }))
    }
}

impl DurableObject for Waddle {
    fn new(state: ObjectState, _env: Env) -> Self {
        Self { state }
    }

    async fn fetch(&mut self, req: Request) -> Result<Response> {
        if req.is_websocket_upgrade() {
            return self.connect(&req);
        }
        match (req.method(), req.path()) {
            (&Method::GET, "/presence") => {
                Response::json(&json!({ "users": self.presence_list()? }))
            }
            (&Method::POST, "/broadcast") => self.broadcast(&req),
            (_, "/presence" | "/broadcast") => Ok(Response::error(
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

    async fn websocket_message(&mut self, ws: WebSocket, message: WsMessage) -> Result<()> {
        let Some(member) = Member::of(&ws) else {
            return error_reply(&ws, "Unknown user");
        };
        let Ok(data) = message.json_body::<Value>() else {
            return error_reply(&ws, "Invalid message format");
        };
        // `set_presence` stores before it sends: after an error nothing was stored or sent.
        let handled = match data.get("type").and_then(Value::as_str) {
            Some("presence_update" | "presence") => {
                match data.get("status").and_then(Value::as_str) {
                    Some(status) if STATUSES.contains(&status) => {
                        self.set_presence(&member, status, Some(&ws))
                    }
                    _ => error_reply(&ws, "Invalid status: use online, away, dnd or offline"),
                }
            }
            Some("typing") => self.relay_typing(&ws, &member, &data),
            _ => error_reply(&ws, "Unknown message type"),
        };
        handled.or_else(|e| error_reply(&ws, &format!("The request failed: {e}")))
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
        if self.state.get_websockets(Some(&member.user_id)).is_empty() {
            self.set_presence(&member, "offline", None)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_client::{Client, as_user};
    use rookery::HeaderValue;
    use rookery::testing::TestHarness;

    #[test]
    fn identity_comes_from_the_trusted_headers_only() {
        let req = Request::get("/?user=mallory").unwrap();
        assert_eq!(Member::from_request(&req), None);
        let req = as_user(Request::get("/").unwrap(), "ann", " read , write,,");
        let m = Member::from_request(&req).unwrap();
        assert_eq!(m.user_id, "ann");
        assert_eq!(m.username, "ann name");
        assert_eq!(m.permissions, ["read", "write"]);
        assert!(m.may("write") && !m.may("admin"));
    }

    #[tokio::test]
    async fn upgrades_without_identity_are_refused() {
        let h = TestHarness::new::<Waddle>().unwrap();
        let req = Request::get("/").unwrap().with_header(
            rookery::HeaderName::from_static("upgrade"),
            HeaderValue::from_static("websocket"),
        );
        let r = h.fetch("w", req).await.unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            r.json_body::<Value>().unwrap(),
            json!({ "error": "Unauthorized" })
        );
    }

    #[tokio::test]
    async fn presence_follows_connections_and_updates() {
        let h = TestHarness::new::<Waddle>().unwrap();
        let mut ann = Client::connect(&h, "w", "ann", "read").await;
        let state = ann.next().await;
        assert_eq!(state["type"], "presence_state");
        assert_eq!(state["users"][0]["userId"], "ann");
        assert_eq!(state["users"][0]["status"], "online");

        let mut bob = Client::connect(&h, "w", "bob", "read").await;
        let seen = ann.next().await;
        assert_eq!(
            (
                seen["type"].as_str(),
                seen["userId"].as_str(),
                seen["status"].as_str()
            ),
            (Some("presence_update"), Some("bob"), Some("online"))
        );
        assert_eq!(bob.next().await["users"].as_array().unwrap().len(), 2);

        bob.say(r#"{"type":"presence_update","status":"dnd"}"#)
            .await;
        let u = ann.next().await;
        assert_eq!(
            (u["userId"].as_str(), u["status"].as_str()),
            (Some("bob"), Some("dnd"))
        );
        // Seed 000: the sender does not get its own update; its next frame answers the next
        // request. Seed 004's `presence` is the same request.
        bob.say(r#"{"type":"presence_update","status":"sleeping"}"#)
            .await;
        assert_eq!(bob.next().await["type"], "error");
        bob.say(r#"{"type":"presence","status":"away"}"#).await;
        assert_eq!(ann.next().await["status"], "away");
        // Seed 000's typing goes to the others only.
        bob.say(r#"{"type":"typing","channelId":"general","isTyping":true}"#)
            .await;
        assert_eq!(
            ann.next().await,
            json!({"type": "typing", "channelId": "general", "userId": "bob",
                   "username": "bob name", "isTyping": true})
        );
        bob.say(r#"{"type":"typing"}"#).await;
        assert_eq!(bob.next().await["type"], "error");
        bob.say("not json").await;
        assert_eq!(
            bob.next().await,
            json!({ "type": "error", "message": "Invalid message format" })
        );

        bob.close().await;
        let gone = ann.next().await;
        assert_eq!(
            (gone["userId"].as_str(), gone["status"].as_str()),
            (Some("bob"), Some("offline"))
        );
        let r = h
            .fetch("w", Request::get("/presence").unwrap())
            .await
            .unwrap();
        let users = r.json_body::<Value>().unwrap()["users"].clone();
        assert_eq!(
            (users[0]["userId"].as_str(), users[0]["status"].as_str()),
            (Some("ann"), Some("online"))
        );
        assert_eq!(
            (users[1]["userId"].as_str(), users[1]["status"].as_str()),
            (Some("bob"), Some("offline"))
        );
    }
}

//! Seed 002's WebSocket room, on hibernatable sockets: one object per room (the path's id).
//!
//! - An upgrade with `?userId=U` joins the room: the client gets
//!   `{"type":"welcome","userId":U,"roomState":{"users":[..],"userCount":n}}`, and the others get
//!   `{"type":"user_joined","userId":U,"timestamp":..}` (once per user, however many tabs).
//! - `{"type":"chat","message":M}` from a client: everyone, the sender too, gets
//!   `{"type":"chat","userId":U,"message":M,"timestamp":..}`.
//! - `{"type":"message","payload":P}` (the seed's first snippet): everyone gets
//!   `{"type":"message","userId":U,"payload":P,"timestamp":..}`.
//! - `{"type":"ping"}` gets `{"type":"pong"}`; invalid JSON or an unknown type gets
//!   `{"type":"error","error":..}` back.
//! - When a user's last socket closes (cleanly or not), the others get
//!   `{"type":"user_left","userId":U,"timestamp":..}`.
//! - `GET /state` without an upgrade: the room state as JSON. A missing `userId` is 400.
//!
//! The room keeps nothing in memory: who is in it is the set of open sockets, each tagged
//! `user:<id>` with the user id as its attachment, so the object can hibernate and wake with
//! the room intact.

use std::collections::BTreeSet;

use rookery::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::input::{error, not_found};

/// Longest user id, in bytes (a socket tag holds at most 256).
const MAX_USER_BYTES: usize = 200;
const USER_TAG: &str = "user:";

/// What a socket carries across hibernation.
#[derive(Debug, Serialize, Deserialize)]
struct Member {
    #[serde(rename = "userId")]
    user_id: String,
}

/// One room.
pub struct WebSocketRoom {
    state: ObjectState,
}

impl WebSocketRoom {
    /// The seed's `findUserIdByWebSocket`.
    fn user_of(ws: &WebSocket) -> Option<String> {
        ws.deserialize_attachment::<Member>()
            .ok()
            .flatten()
            .map(|m| m.user_id)
    }

    /// `{users, userCount}` of the open sockets.
    fn room_state(&self) -> Value {
        let users: BTreeSet<String> = self
            .state
            .get_websockets(None)
            .iter()
            .filter_map(Self::user_of)
            .collect();
        json!({ "userCount": users.len(), "users": users })
    }

    fn join(&mut self, req: &Request) -> Result<Response> {
        let user_id = match req.query::<String>("userId") {
            Ok(Some(u)) if !u.is_empty() && u.len() <= MAX_USER_BYTES => u,
            Ok(None) => return Ok(error(StatusCode::BAD_REQUEST, "Missing userId")),
            _ => {
                return Ok(error(
                    StatusCode::BAD_REQUEST,
                    &format!("userId must be 1 to {MAX_USER_BYTES} bytes"),
                ));
            }
        };
        let tag = format!("{USER_TAG}{user_id}");
        let first = self.state.get_websockets(Some(&tag)).is_empty();
        let ws = self.state.accept_websocket(req, &[&tag])?;
        ws.serialize_attachment(&Member {
            user_id: user_id.clone(),
        })?;
        ws.send_json(&json!({
            "type": "welcome",
            "userId": user_id,
            "roomState": self.room_state(),
        }))?;
        if first {
            let joined = json!({
                "type": "user_joined",
                "userId": user_id,
                "timestamp": self.state.now_ms(),
            });
            self.state
                .broadcast(&WsMessage::json(&joined)?, None, Some(&ws));
        }
        Ok(Response::websocket(&ws))
    }

    /// The seed's `broadcast`: one encoded message to every socket.
    fn broadcast(&self, value: &Value) -> Result<()> {
        self.state.broadcast(&WsMessage::json(value)?, None, None);
        Ok(())
    }
}

fn error_reply(ws: &WebSocket, error: &str) -> Result<()> {
    ws.send_json(&json!({ "type": "error", "error": error }))
}

impl DurableObject for WebSocketRoom {
    fn new(state: ObjectState, _env: Env) -> Self {
        Self { state }
    }

    async fn fetch(&mut self, req: Request) -> Result<Response> {
        if req.is_websocket_upgrade() {
            return self.join(&req);
        }
        match req.path() {
            "/state" => Response::json(&self.room_state()),
            "/" => Ok(error(StatusCode::UPGRADE_REQUIRED, "Expected WebSocket")),
            _ => Ok(not_found()),
        }
    }

    async fn websocket_message(&mut self, ws: WebSocket, message: WsMessage) -> Result<()> {
        let Ok(data) = message.json_body::<Value>() else {
            return error_reply(&ws, "Invalid JSON");
        };
        let user_id = Self::user_of(&ws);
        let now = self.state.now_ms();
        match data.get("type").and_then(Value::as_str) {
            Some("chat") => match data.get("message") {
                Some(m) if !m.is_null() => self.broadcast(&json!({
                    "type": "chat",
                    "userId": user_id,
                    "message": m,
                    "timestamp": now,
                })),
                _ => error_reply(&ws, "A chat needs a message"),
            },
            Some("message") => self.broadcast(&json!({
                "type": "message",
                "userId": user_id,
                "payload": data.get("payload").cloned().unwrap_or(Value::Null),
                "timestamp": now,
            })),
            Some("ping") => ws.send_json(&json!({ "type": "pong" })),
            _ => error_reply(&ws, "Unknown message type"),
        }
    }

    async fn websocket_close(
        &mut self,
        ws: WebSocket,
        _code: u16,
        _reason: String,
        _was_clean: bool,
    ) -> Result<()> {
        let Some(user_id) = Self::user_of(&ws) else {
            return Ok(());
        };
        // The closed socket has already left the list: tell the others only if the user has
        // no other socket open.
        if self
            .state
            .get_websockets(Some(&format!("{USER_TAG}{user_id}")))
            .is_empty()
        {
            self.broadcast(&json!({
                "type": "user_left",
                "userId": user_id,
                "timestamp": self.state.now_ms(),
            }))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_client::Client;
    use rookery::HeaderValue;
    use rookery::testing::TestHarness;

    #[tokio::test]
    async fn welcome_chat_join_and_leave_follow_the_seed_protocol() {
        let h = TestHarness::new::<WebSocketRoom>().unwrap();
        let mut ann = Client::connect_to(&h, "lobby", "/?userId=ann").await;
        let welcome = ann.next().await;
        assert_eq!(welcome["type"], "welcome");
        assert_eq!(
            welcome["roomState"],
            json!({"users": ["ann"], "userCount": 1})
        );
        let mut bob = Client::connect_to(&h, "lobby", "/?userId=bob").await;
        assert_eq!(
            bob.next().await["roomState"]["users"],
            json!(["ann", "bob"])
        );
        let joined = ann.next().await;
        assert_eq!(
            (joined["type"].as_str(), joined["userId"].as_str()),
            (Some("user_joined"), Some("bob"))
        );
        // A fresh instance (as after hibernation) still knows who is in the room.
        h.run("lobby", |_| Ok(())).await.unwrap();
        bob.say(r#"{"type":"chat","message":"hi all"}"#).await;
        for client in [&mut ann, &mut bob] {
            let chat = client.next().await;
            assert_eq!(chat["type"], "chat");
            assert_eq!(chat["userId"], "bob");
            assert_eq!(chat["message"], "hi all");
            assert!(chat["timestamp"].is_i64());
        }
        ann.say(r#"{"type":"message","payload":{"x":1}}"#).await;
        assert_eq!(bob.next().await["payload"], json!({"x": 1}));
        assert_eq!(ann.next().await["userId"], "ann");
        bob.say("not json").await;
        assert_eq!(bob.next().await["type"], "error");
        bob.say(r#"{"type":"dance"}"#).await;
        assert_eq!(bob.next().await["error"], "Unknown message type");
        bob.close().await;
        let left = ann.next().await;
        assert_eq!(
            (left["type"].as_str(), left["userId"].as_str()),
            (Some("user_left"), Some("bob"))
        );
        let r = h
            .fetch("lobby", Request::get("/state").unwrap())
            .await
            .unwrap();
        assert_eq!(
            r.json_body::<Value>().unwrap(),
            json!({"users": ["ann"], "userCount": 1})
        );
    }

    #[tokio::test]
    async fn a_second_tab_of_the_same_user_is_not_a_new_join() {
        let h = TestHarness::new::<WebSocketRoom>().unwrap();
        let mut ann = Client::connect_to(&h, "r", "/?userId=ann").await;
        ann.next().await;
        let mut bob = Client::connect_to(&h, "r", "/?userId=bob").await;
        bob.next().await;
        assert_eq!(ann.next().await["type"], "user_joined");
        let mut bob2 = Client::connect_to(&h, "r", "/?userId=bob").await;
        assert_eq!(bob2.next().await["roomState"]["userCount"], 2);
        bob2.close().await;
        // Bob is still there: the next thing Ann hears is a chat, not user_left.
        bob.say(r#"{"type":"chat","message":"still here"}"#).await;
        assert_eq!(ann.next().await["type"], "chat");
    }

    #[tokio::test]
    async fn a_missing_user_id_or_a_plain_request_is_refused() {
        let h = TestHarness::new::<WebSocketRoom>().unwrap();
        let upgrade = |uri: &str| {
            Request::get(uri).unwrap().with_header(
                rookery::HeaderName::from_static("upgrade"),
                HeaderValue::from_static("websocket"),
            )
        };
        let r = h.fetch("r", upgrade("/")).await.unwrap();
        assert_eq!(r.status(), 400);
        assert_eq!(r.json_body::<Value>().unwrap()["error"], "Missing userId");
        let r = h.fetch("r", upgrade("/?userId=")).await.unwrap();
        assert_eq!(r.status(), 400);
        let r = h.fetch("r", Request::get("/").unwrap()).await.unwrap();
        assert_eq!(r.status(), 426);
    }
}

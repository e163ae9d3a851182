//! The chat room of the template app: WebSocket chat with stored history, on hibernatable
//! sockets.
//!
//! - `GET /websocket?name=NAME` with an upgrade: the client first gets
//!   `{"type":"history","messages":[the last 50, oldest first]}`, then everyone (the client
//!   too) gets `{"type":"join","name":..,"timestamp":..}`.
//! - A client sends `{"type":"message","text":..}`; it is stored under
//!   `message:<strictly increasing ms>` and everyone, the sender too, gets
//!   `{"type":"message","id":"message:<ms>","name":..,"text":..,"timestamp":..}`.
//! - When a client leaves (cleanly or not), the others get `{"type":"leave",..}`.
//! - Invalid JSON or an unknown type gets `{"type":"error","error":..}` back to the sender.
//! - `GET /history`: the last 100 messages, newest first. Anything else: 400 `Expected WebSocket`.

use rookery::prelude::*;
use serde_json::{Value, json};

/// How many messages `GET /history` returns.
const HISTORY_LIMIT: usize = 100;
/// How many messages a joining client gets.
const JOIN_HISTORY: usize = 50;
const PREFIX: &str = "message:";

/// One chat room.
pub struct ChatRoom {
    state: ObjectState,
    /// The last message's time; ids use strictly increasing times.
    last: Option<i64>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Member {
    name: String,
}

/// Stored messages (raw JSON) spliced into an array without decoding them.
fn splice(values: impl Iterator<Item = Vec<u8>>, prefix: &[u8], suffix: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(256);
    body.extend_from_slice(prefix);
    body.push(b'[');
    for (i, value) in values.enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(&value);
    }
    body.push(b']');
    body.extend_from_slice(suffix);
    body
}

impl ChatRoom {
    fn recent(&self, limit: usize) -> Result<Vec<Vec<u8>>> {
        let messages = self
            .state
            .storage()
            .list_raw(&ListOptions::new().prefix(PREFIX).reverse(true).limit(limit))?;
        Ok(messages.into_iter().map(|(_, v)| v).collect())
    }

    /// A time after the last message's: ids never repeat, even within one millisecond.
    fn next_timestamp(&mut self) -> Result<i64> {
        let last = match self.last {
            Some(last) => last,
            None => {
                let newest = self
                    .state
                    .storage()
                    .list_raw(&ListOptions::new().prefix(PREFIX).reverse(true).limit(1))?;
                newest
                    .first()
                    .and_then(|(k, _)| k[PREFIX.len()..].parse().ok())
                    .unwrap_or(0)
            }
        };
        let next = self.state.now_ms().max(last + 1);
        self.last = Some(next);
        Ok(next)
    }

    fn join(&mut self, req: &Request) -> Result<Response> {
        let name = req
            .query::<String>("name")?
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "Anonymous".to_string());
        let ws = self.state.accept_websocket(req, &[])?;
        ws.serialize_attachment(&Member { name: name.clone() })?;
        let mut history = self.recent(JOIN_HISTORY)?;
        history.reverse();
        let body = splice(
            history.into_iter(),
            br#"{"type":"history","messages":"#,
            b"}",
        );
        ws.send(WsMessage::text_from_bytes(body.into())?);
        let join = json!({ "type": "join", "name": name, "timestamp": self.state.now_ms() });
        self.state.broadcast(&WsMessage::json(&join)?, None, None);
        Ok(Response::websocket(&ws))
    }

    fn name_of(ws: &WebSocket) -> String {
        ws.deserialize_attachment::<Member>()
            .ok()
            .flatten()
            .map_or_else(|| "Anonymous".to_string(), |m| m.name)
    }
}

fn error_reply(ws: &WebSocket, error: &str) -> Result<()> {
    ws.send_json(&json!({ "type": "error", "error": error }))
}

impl DurableObject for ChatRoom {
    fn new(state: ObjectState, _env: Env) -> Self {
        Self { state, last: None }
    }

    async fn fetch(&mut self, req: Request) -> Result<Response> {
        if req.is_websocket_upgrade() {
            return self.join(&req);
        }
        if req.path() == "/history" {
            let body = splice(self.recent(HISTORY_LIMIT)?.into_iter(), b"", b"");
            return Ok(Response::json_bytes(body));
        }
        Ok(Response::text("Expected WebSocket").with_status(StatusCode::BAD_REQUEST))
    }

    async fn websocket_message(&mut self, ws: WebSocket, message: WsMessage) -> Result<()> {
        let Ok(data) = message.json_body::<Value>() else {
            return error_reply(&ws, "Invalid JSON");
        };
        match data.get("type").and_then(Value::as_str) {
            Some("message") => {
                let Some(text) = data.get("text").and_then(Value::as_str) else {
                    return error_reply(&ws, "A message needs a text");
                };
                let id = format!("{PREFIX}{}", self.next_timestamp()?);
                let message = json!({
                    "id": id,
                    "name": Self::name_of(&ws),
                    "text": text,
                    "timestamp": self.state.now_ms(),
                });
                if let Err(e) = self.state.storage().put(&id, &message) {
                    return error_reply(&ws, &e.to_string());
                }
                let mut out = message;
                out["type"] = json!("message");
                self.state.broadcast(&WsMessage::json(&out)?, None, None);
                Ok(())
            }
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
        let leave = json!({
            "type": "leave",
            "name": Self::name_of(&ws),
            "timestamp": self.state.now_ms(),
        });
        self.state.broadcast(&WsMessage::json(&leave)?, None, None);
        Ok(())
    }
}

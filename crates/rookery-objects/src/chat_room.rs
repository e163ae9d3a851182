//! A chat room: messages stored under `message:<ms>`; `GET /history` returns the latest 100.

use rookery::prelude::*;

/// How many messages `GET /history` returns.
const HISTORY_LIMIT: usize = 100;

/// One chat room.
pub struct ChatRoom {
    state: ObjectState,
}

impl DurableObject for ChatRoom {
    fn new(state: ObjectState, _env: Env) -> Self {
        Self { state }
    }

    async fn fetch(&mut self, req: Request) -> Result<Response> {
        if req.path() == "/history" {
            let messages = self.state.storage().list_raw(
                &ListOptions::new()
                    .prefix("message:")
                    .reverse(true)
                    .limit(HISTORY_LIMIT),
            )?;
            // The values are stored JSON: splice them into an array without re-encoding.
            let mut body =
                Vec::with_capacity(2 + messages.iter().map(|(_, v)| v.len() + 1).sum::<usize>());
            body.push(b'[');
            for (i, (_, value)) in messages.iter().enumerate() {
                if i > 0 {
                    body.push(b',');
                }
                body.extend_from_slice(value);
            }
            body.push(b']');
            return Ok(Response::json_bytes(body));
        }
        Ok(Response::text("Expected WebSocket").with_status(StatusCode::BAD_REQUEST))
    }
}

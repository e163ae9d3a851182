//! Seed 002's game server: one object per game (the path's id), for up to four players.
//!
//! - `/join?playerId=P` → `{"success":true,"joined":true,"players":n}`; joining again is
//!   harmless; a fifth player gets 400 `{"error":"Game is full"}`. With two players the game's
//!   status goes from `waiting` to `playing`.
//! - `POST /move?playerId=P` with a JSON object body: the move is recorded as the game's
//!   `lastMove` and counted; a numeric `score` in it is added to the player's score. Answers
//!   `{"success":true,"move":n}`. A player who has not joined gets 403, a body that is not a
//!   JSON object 400.
//! - `GET /state` → `{"status","players":[{"id","score"}],"moves","lastMove"}`.
//!
//! Game state and players are stored under `gameState` and `players` (the seed's keys) with
//! every change, and loaded once per activation (the seed's `onInitialize`).

use rookery::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::input::{error, method_not_allowed, not_found};

/// Players per game, as in the seed.
pub const MAX_PLAYERS: usize = 4;
/// Longest player id, in bytes.
const MAX_PLAYER_BYTES: usize = 200;

/// One player.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Player {
    /// The player's id.
    pub id: String,
    /// The sum of the `score`s of the player's moves.
    pub score: f64,
}

/// The game as stored under `gameState`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct GameState {
    status: String,
    moves: u64,
    last_move: Option<Value>,
}

impl Default for GameState {
    fn default() -> Self {
        Self {
            status: "waiting".into(),
            moves: 0,
            last_move: None,
        }
    }
}

/// One game.
pub struct GameServer {
    state: ObjectState,
    /// `None` until loaded once per activation.
    loaded: Option<(GameState, Vec<(String, Player)>)>,
}

impl GameServer {
    /// The seed's `initialize`: loads the stored game once per activation.
    fn initialize(&mut self) -> Result<&mut (GameState, Vec<(String, Player)>)> {
        if self.loaded.is_none() {
            let storage = self.state.storage();
            let game = storage.get("gameState")?.unwrap_or_default();
            let players = storage.get("players")?.unwrap_or_default();
            self.loaded = Some((game, players));
        }
        Ok(self.loaded.get_or_insert_default())
    }

    fn save(&mut self) -> Result<()> {
        if let Some((game, players)) = &self.loaded {
            let storage = self.state.storage();
            storage.put("gameState", game)?;
            storage.put("players", players)?;
        }
        Ok(())
    }

    /// The `playerId` query parameter, or the 400 message refusing it.
    fn player_id(req: &Request) -> std::result::Result<String, String> {
        match req.query::<String>("playerId") {
            Ok(Some(p)) if !p.is_empty() && p.len() <= MAX_PLAYER_BYTES => Ok(p),
            Ok(None) => Err("Missing playerId".into()),
            _ => Err(format!("playerId must be 1 to {MAX_PLAYER_BYTES} bytes")),
        }
    }

    fn join(&mut self, player_id: String) -> Result<Response> {
        let (game, players) = self.initialize()?;
        if !players.iter().any(|(id, _)| *id == player_id) {
            if players.len() >= MAX_PLAYERS {
                return Ok(error(StatusCode::BAD_REQUEST, "Game is full"));
            }
            players.push((
                player_id.clone(),
                Player {
                    id: player_id,
                    score: 0.0,
                },
            ));
            if players.len() >= 2 && game.status == "waiting" {
                game.status = "playing".into();
            }
        }
        let count = players.len();
        self.save()?;
        Response::json(&json!({ "success": true, "joined": true, "players": count }))
    }

    fn play(&mut self, player_id: String, req: &Request) -> Result<Response> {
        let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(req.body()) else {
            return Ok(error(StatusCode::BAD_REQUEST, "A move is a JSON object"));
        };
        let now = self.state.now_ms();
        let (game, players) = self.initialize()?;
        let Some((_, player)) = players.iter_mut().find(|(id, _)| *id == player_id) else {
            return Ok(error(StatusCode::FORBIDDEN, "Player not in game"));
        };
        if let Some(score) = body.get("score").and_then(Value::as_f64) {
            player.score += score;
        }
        game.moves += 1;
        let number = game.moves;
        game.last_move = Some(json!({
            "playerId": player_id,
            "move": Value::Object(body),
            "number": number,
            "timestamp": now,
        }));
        self.save()?;
        Response::json(&json!({ "success": true, "move": number }))
    }

    fn describe(&mut self) -> Result<Response> {
        let (game, players) = self.initialize()?;
        let players: Vec<&Player> = players.iter().map(|(_, p)| p).collect();
        Response::json(&json!({
            "status": game.status,
            "players": players,
            "moves": game.moves,
            "lastMove": game.last_move,
        }))
    }
}

impl DurableObject for GameServer {
    fn new(state: ObjectState, _env: Env) -> Self {
        Self {
            state,
            loaded: None,
        }
    }

    async fn fetch(&mut self, req: Request) -> Result<Response> {
        match req.path() {
            "/join" => match Self::player_id(&req) {
                Ok(p) => self.join(p),
                Err(refused) => Ok(error(StatusCode::BAD_REQUEST, &refused)),
            },
            "/move" if req.method() == Method::POST => match Self::player_id(&req) {
                Ok(p) => self.play(p, &req),
                Err(refused) => Ok(error(StatusCode::BAD_REQUEST, &refused)),
            },
            "/move" => Ok(method_not_allowed("POST")),
            "/state" => self.describe(),
            _ => Ok(not_found()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rookery::testing::TestHarness;

    async fn send(h: &TestHarness, req: Request) -> (u16, Value) {
        let r = h.fetch("g", req).await.unwrap();
        (r.status().as_u16(), r.json_body().unwrap())
    }

    #[tokio::test]
    async fn four_players_join_the_fifth_is_refused_and_moves_are_kept() {
        let h = TestHarness::new::<GameServer>().unwrap();
        for (i, p) in ["a", "b", "c", "d"].iter().enumerate() {
            let (status, r) =
                send(&h, Request::post(&format!("/join?playerId={p}")).unwrap()).await;
            assert_eq!(status, 200);
            assert_eq!(
                r,
                json!({"success": true, "joined": true, "players": i + 1})
            );
        }
        let (_, again) = send(&h, Request::post("/join?playerId=a").unwrap()).await;
        assert_eq!(again["players"], 4, "joining twice takes no second place");
        let (status, r) = send(&h, Request::post("/join?playerId=e").unwrap()).await;
        assert_eq!((status, r), (400, json!({"error": "Game is full"})));
        let mv = Request::post("/move?playerId=b")
            .unwrap()
            .with_json(&json!({"x": 1, "y": 2, "score": 10}))
            .unwrap();
        assert_eq!(
            send(&h, mv).await,
            (200, json!({"success": true, "move": 1}))
        );
        let mv = Request::post("/move?playerId=e")
            .unwrap()
            .with_json(&json!({}))
            .unwrap();
        assert_eq!(send(&h, mv).await.0, 403);
        let mv = Request::post("/move?playerId=a").unwrap().with_body("[1]");
        assert_eq!(send(&h, mv).await.0, 400);
        assert_eq!(
            send(&h, Request::post("/join").unwrap()).await.1["error"],
            "Missing playerId"
        );
        // A fresh instance loads the same game from storage.
        h.run("g", |_| Ok(())).await.unwrap();
        let (_, state) = send(&h, Request::get("/state").unwrap()).await;
        assert_eq!(state["status"], "playing");
        assert_eq!(state["moves"], 1);
        assert_eq!(state["players"][1], json!({"id": "b", "score": 10.0}));
        assert_eq!(
            state["lastMove"]["move"],
            json!({"x": 1, "y": 2, "score": 10})
        );
        assert_eq!(state["players"].as_array().unwrap().len(), 4);
    }
}

//! A voice channel (seed 000's `VoiceChannelDurableObject`): who is in it, with their audio and
//! video state, and the media session they share. The media itself is carried elsewhere; a
//! [`SessionProvider`] makes and ends the session. The protocol is in `docs/PROTOCOL.md`.
//!
//! - An upgrade carries the caller's identity in the gateway's trusted headers (401 without);
//!   the socket is tagged with the user id. Connecting does not join: the new socket gets the
//!   `participants` frame, so a client can show who is talking before it joins.
//! - `{"type":"join","audioEnabled"?,"videoEnabled"?}` adds the sender as a participant
//!   (`joinedAt` now, audio on and video off unless said otherwise). The first join creates the
//!   session `<object id>-<channel id>` through the provider and stores it under `session`; at
//!   most 100 participants (the 101st gets an error). Participants are stored under
//!   `participant:<userId>`.
//! - `mute` / `unmute` set `audioEnabled`; `{"type":"video","enabled":bool}` sets
//!   `videoEnabled`.
//! - `leave`, or the user's last socket closing, removes the participant; when the last one
//!   leaves, the provider ends the session, it is deleted and everyone gets `session_ended`.
//! - Every change sends `{"type":"participants","sessionId","session","participants",
//!   "maxParticipants"}` to every socket.
//! - A participant whose sockets vanished without a close (the server restarted) is hidden
//!   from the list, and is back, with their `joinedAt` and media state, when they reconnect
//!   within 30 s; the alarm then drops those who did not (ending the session if nobody is left).
//! - `GET /participants` answers the same list.

use std::collections::HashSet;

use rookery::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::member::{Member, error_reply, upgrading_member};
use crate::voice_session::{LocalSessions, SessionProvider, SessionRequest, VoiceSession};

/// Participants are stored under this prefix and the user id.
const PARTICIPANT_PREFIX: &str = "participant:";
/// The key of the current session.
const SESSION_KEY: &str = "session";
/// Most participants at once (seed 000).
pub const MAX_PARTICIPANTS: usize = 100;
/// The features asked of the media server (seed 000).
const FEATURES: [&str; 2] = ["recording", "transcription"];
/// How long a participant whose sockets vanished without a close may take to come back.
const REJOIN_GRACE_MS: i64 = 30_000;

/// One participant of a voice channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Participant {
    user_id: String,
    username: String,
    joined_at: i64,
    audio_enabled: bool,
    video_enabled: bool,
}

/// A voice channel whose sessions come from `P` ([`LocalSessions`] unless registered
/// otherwise).
pub struct VoiceChannel<P: SessionProvider = LocalSessions> {
    state: ObjectState,
    env: Env,
    provider: P,
}

impl<P: SessionProvider> VoiceChannel<P> {
    /// The channel's name as clients know it (the object's name; its hex id if unnamed).
    fn channel_id(&self) -> String {
        let id = self.state.id();
        id.name().map_or_else(|| id.to_hex(), str::to_string)
    }

    fn session(&self) -> Result<Option<VoiceSession>> {
        self.state.storage().get(SESSION_KEY)
    }

    /// The stored participants, split into those with an open socket (by `joinedAt`, then
    /// user id) and the storage keys of those without one.
    fn stored_participants(&self) -> Result<(Vec<Participant>, Vec<String>)> {
        let connected: HashSet<String> = self
            .state
            .get_websockets(None)
            .iter()
            .filter_map(Member::of)
            .map(|m| m.user_id)
            .collect();
        let (mut here, mut gone) = (Vec::new(), Vec::new());
        for (key, p) in self
            .state
            .storage()
            .list::<Participant>(&ListOptions::new().prefix(PARTICIPANT_PREFIX))?
        {
            if connected.contains(&p.user_id) {
                here.push(p);
            } else {
                gone.push(key);
            }
        }
        here.sort_by(|a, b| (a.joined_at, &a.user_id).cmp(&(b.joined_at, &b.user_id)));
        Ok((here, gone))
    }

    /// The participants with an open socket. Those without one are left in storage for
    /// [`REJOIN_GRACE_MS`], with the alarm set to drop them.
    fn participants(&self) -> Result<Vec<Participant>> {
        let (here, gone) = self.stored_participants()?;
        let storage = self.state.storage();
        if !gone.is_empty() && storage.get_alarm()?.is_none() {
            storage.set_alarm(self.state.now_ms() + REJOIN_GRACE_MS)?;
        }
        Ok(here)
    }

    /// The `participants` frame (`type` `participants`).
    fn participants_frame(&self) -> Result<Value> {
        let session = self.session()?;
        Ok(json!({
            "type": "participants",
            "sessionId": session.as_ref().map(|s| s.session_id.clone()),
            "session": session,
            "participants": self.participants()?,
            "maxParticipants": MAX_PARTICIPANTS,
        }))
    }

    fn broadcast_participants(&self) -> Result<()> {
        let frame = self.participants_frame()?;
        self.state.broadcast(&WsMessage::json(&frame)?, None, None);
        Ok(())
    }

    /// Ends the session if nobody with an open socket is left in it (forgetting anyone who
    /// might have come back).
    async fn end_if_empty(&self) -> Result<()> {
        let (here, gone) = self.stored_participants()?;
        if !here.is_empty() {
            return Ok(());
        }
        for key in gone {
            self.state.storage().delete(&key)?;
        }
        self.state.storage().delete_alarm()?;
        let Some(session) = self.session()? else {
            return Ok(());
        };
        if let Err(e) = self.provider.end(&session, &self.state, &self.env).await {
            tracing::warn!(session = %session.session_id, error = %e, "ending a voice session failed; forgotten anyway");
        }
        self.state.storage().delete(SESSION_KEY)?;
        let ended = json!({"type": "session_ended", "sessionId": session.session_id});
        self.state.broadcast(&WsMessage::json(&ended)?, None, None);
        Ok(())
    }

    async fn connect(&mut self, req: &Request) -> Result<Response> {
        let mut member = match upgrading_member(req) {
            Ok(member) => member,
            Err((status, why)) => return Ok(Response::error(status, why)),
        };
        let ws = member.accept(&self.state, req)?;
        let key = format!("{PARTICIPANT_PREFIX}{}", member.user_id);
        if self.state.storage().get::<Participant>(&key)?.is_some() {
            // A participant back after their sockets vanished: everyone sees them again.
            self.broadcast_participants()?;
        } else {
            ws.send_json(&self.participants_frame()?)?;
        }
        Ok(Response::websocket(&ws))
    }

    async fn join(&mut self, ws: &WebSocket, member: &Member, data: &Value) -> Result<()> {
        let flag = |name: &str| data.get(name).and_then(Value::as_bool);
        let key = format!("{PARTICIPANT_PREFIX}{}", member.user_id);
        let storage = self.state.storage();
        let participant = match storage.get::<Participant>(&key)? {
            Some(mut known) => {
                known.audio_enabled = flag("audioEnabled").unwrap_or(known.audio_enabled);
                known.video_enabled = flag("videoEnabled").unwrap_or(known.video_enabled);
                known
            }
            None => {
                if self.participants()?.len() >= MAX_PARTICIPANTS {
                    return error_reply(
                        ws,
                        &format!("Voice channel full (at most {MAX_PARTICIPANTS} participants)"),
                    );
                }
                if self.session()?.is_none() {
                    let request = SessionRequest {
                        session_id: format!("{}-{}", self.state.id().to_hex(), self.channel_id()),
                        channel_id: self.channel_id(),
                        max_participants: MAX_PARTICIPANTS,
                        features: FEATURES.map(str::to_string).to_vec(),
                    };
                    let session = self
                        .provider
                        .create(&request, &self.state, &self.env)
                        .await?;
                    storage.put(SESSION_KEY, &session)?;
                }
                Participant {
                    user_id: member.user_id.clone(),
                    username: member.username.clone(),
                    joined_at: self.state.now_ms(),
                    audio_enabled: flag("audioEnabled").unwrap_or(true),
                    video_enabled: flag("videoEnabled").unwrap_or(false),
                }
            }
        };
        storage.put(&key, &participant)?;
        self.broadcast_participants()
    }

    /// Sets a flag of the sender's participant with `change`.
    fn set_media(
        &mut self,
        ws: &WebSocket,
        member: &Member,
        change: impl FnOnce(&mut Participant),
    ) -> Result<()> {
        let key = format!("{PARTICIPANT_PREFIX}{}", member.user_id);
        let Some(mut participant) = self.state.storage().get::<Participant>(&key)? else {
            return error_reply(ws, "Join the voice channel first");
        };
        change(&mut participant);
        self.state.storage().put(&key, &participant)?;
        self.broadcast_participants()
    }

    async fn leave(&mut self, user_id: &str) -> Result<()> {
        let key = format!("{PARTICIPANT_PREFIX}{user_id}");
        if self.state.storage().get::<Participant>(&key)?.is_none() {
            return Ok(());
        }
        self.state.storage().delete(&key)?;
        self.end_if_empty().await?;
        self.broadcast_participants()
    }
}

impl<P: SessionProvider> DurableObject for VoiceChannel<P> {
    fn new(state: ObjectState, env: Env) -> Self {
        Self {
            state,
            env,
            provider: P::default(),
        }
    }

    async fn fetch(&mut self, req: Request) -> Result<Response> {
        if req.is_websocket_upgrade() {
            return self.connect(&req).await;
        }
        match (req.method(), req.path()) {
            (&Method::GET, "/participants") => {
                let mut frame = self.participants_frame()?;
                if let Some(o) = frame.as_object_mut() {
                    o.remove("type");
                }
                Response::json(&frame)
            }
            (_, "/participants") => Ok(Response::error(
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

    async fn alarm(&mut self, _info: AlarmInfo) -> Result<()> {
        let (_, gone) = self.stored_participants()?;
        if gone.is_empty() {
            return Ok(());
        }
        for key in gone {
            self.state.storage().delete(&key)?;
        }
        self.end_if_empty().await?;
        self.broadcast_participants()
    }

    async fn websocket_message(&mut self, ws: WebSocket, message: WsMessage) -> Result<()> {
        let Some(member) = Member::of(&ws) else {
            return error_reply(&ws, "Unknown user");
        };
        let Ok(data) = message.json_body::<Value>() else {
            return error_reply(&ws, "Invalid message format");
        };
        let handled = match data.get("type").and_then(Value::as_str) {
            Some("join") => self.join(&ws, &member, &data).await,
            Some("leave") => self.leave(&member.user_id).await,
            Some("mute") => self.set_media(&ws, &member, |p| p.audio_enabled = false),
            Some("unmute") => self.set_media(&ws, &member, |p| p.audio_enabled = true),
            Some("video") => match data.get("enabled").and_then(Value::as_bool) {
                Some(on) => self.set_media(&ws, &member, |p| p.video_enabled = on),
                None => error_reply(&ws, "video needs enabled: true or false"),
            },
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
        if !self.state.get_websockets(Some(&member.user_id)).is_empty() {
            return Ok(());
        }
        self.leave(&member.user_id).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::test_client::{Client, as_user};
    use rookery::Clock;
    use rookery::testing::TestHarness;

    /// Reads frames until one of `kind`.
    async fn until(c: &mut Client, kind: &str) -> Value {
        loop {
            let m = c.next().await;
            if m["type"] == kind {
                return m;
            }
        }
    }

    fn users(frame: &Value) -> Vec<(String, bool, bool)> {
        frame["participants"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p["userId"].as_str().unwrap().to_string(),
                    p["audioEnabled"].as_bool().unwrap(),
                    p["videoEnabled"].as_bool().unwrap(),
                )
            })
            .collect()
    }

    fn p(user: &str, audio: bool, video: bool) -> (String, bool, bool) {
        (user.to_string(), audio, video)
    }

    async fn stored_session(h: &TestHarness) -> Option<VoiceSession> {
        h.run("v", |s| s.storage().get::<VoiceSession>(SESSION_KEY))
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn joining_creates_the_session_and_every_change_is_broadcast() {
        let h = TestHarness::new::<VoiceChannel>().unwrap();
        let mut ann = Client::connect(&h, "v", "ann", "read").await;
        let mut bob = Client::connect(&h, "v", "bob", "read").await;
        let first = ann.next().await;
        assert_eq!(
            (&first["type"], &first["sessionId"], &first["participants"]),
            (&json!("participants"), &Value::Null, &json!([]))
        );
        assert_eq!(first["maxParticipants"], 100);
        bob.next().await;

        // The first join creates the session `<object id>-<channel id>` and stores it.
        ann.say(r#"{"type":"join"}"#).await;
        let hex = h.namespace().unwrap().id_from_name("v").to_hex();
        for c in [&mut ann, &mut bob] {
            let f = c.next().await;
            assert_eq!(users(&f), [p("ann", true, false)]);
            assert_eq!(f["sessionId"], format!("{hex}-v"));
            assert_eq!(f["session"]["provider"], "local");
            assert_eq!(f["participants"][0]["username"], "ann name");
            assert!(f["participants"][0]["joinedAt"].as_i64().is_some());
        }
        let session = stored_session(&h).await.expect("stored");
        assert_eq!((session.max_participants, session.features.len()), (100, 2));

        bob.say(r#"{"type":"join","videoEnabled":true}"#).await;
        assert_eq!(
            users(&ann.next().await),
            [p("ann", true, false), p("bob", true, true)]
        );
        bob.next().await;
        ann.say(r#"{"type":"mute"}"#).await;
        assert_eq!(
            users(&bob.next().await),
            [p("ann", false, false), p("bob", true, true)]
        );
        ann.next().await;
        bob.say(r#"{"type":"video","enabled":false}"#).await;
        assert_eq!(
            users(&ann.next().await),
            [p("ann", false, false), p("bob", true, false)]
        );
        bob.next().await;
        ann.say(r#"{"type":"unmute"}"#).await;
        assert_eq!(
            users(&ann.next().await),
            [p("ann", true, false), p("bob", true, false)]
        );
        bob.next().await;

        // Leaving, then the last one's socket closing, ends the session.
        bob.say(r#"{"type":"leave"}"#).await;
        assert_eq!(users(&ann.next().await), [p("ann", true, false)]);
        bob.next().await;
        ann.close().await;
        let ended = until(&mut bob, "session_ended").await;
        assert_eq!(ended["sessionId"], format!("{hex}-v"));
        let after = bob.next().await;
        assert_eq!(
            (&after["sessionId"], &after["participants"]),
            (&Value::Null, &json!([]))
        );
        assert_eq!(stored_session(&h).await, None);

        // Errors are answered: media changes need a join, bad frames are named.
        for (frame, why) in [
            (r#"{"type":"mute"}"#, "Join the voice channel first"),
            (r#"{"type":"video"}"#, "video needs enabled: true or false"),
            (r#"{"type":"dance"}"#, "Unknown message type"),
            ("not json", "Invalid message format"),
        ] {
            bob.say(frame).await;
            assert_eq!(
                bob.next().await,
                json!({"type": "error", "message": why}),
                "{frame}"
            );
        }
    }

    #[tokio::test]
    async fn at_most_one_hundred_participants() {
        let h = TestHarness::new::<VoiceChannel>().unwrap();
        let mut clients = Vec::new();
        for i in 0..=MAX_PARTICIPANTS {
            let mut c = Client::connect(&h, "v", &format!("u{i:03}"), "read").await;
            c.next().await;
            c.say(r#"{"type":"join"}"#).await;
            clients.push(c);
        }
        let last = clients.last_mut().unwrap();
        let refused = until(last, "error").await;
        assert_eq!(
            refused["message"],
            "Voice channel full (at most 100 participants)"
        );
        let list: Value = h
            .fetch(
                "v",
                as_user(Request::get("/participants").unwrap(), "x", "read"),
            )
            .await
            .unwrap()
            .json_body()
            .unwrap();
        assert_eq!(list["participants"].as_array().unwrap().len(), 100);
    }

    #[tokio::test]
    async fn participants_gone_without_a_close_are_hidden_then_dropped_after_the_grace() {
        let h = TestHarness::new::<VoiceChannel>().unwrap();
        let mut bob = Client::connect(&h, "v", "bob", "read").await;
        bob.next().await;
        bob.say(r#"{"type":"join"}"#).await;
        bob.next().await;
        // Ann was in the channel when the server died: her record is there, her socket is not.
        let start = h.clock().unwrap().now_ms();
        h.run("v", move |s| {
            s.storage().put(
                &format!("{PARTICIPANT_PREFIX}ann"),
                &Participant {
                    user_id: "ann".into(),
                    username: "ann name".into(),
                    joined_at: start - 5,
                    audio_enabled: false,
                    video_enabled: false,
                },
            )
        })
        .await
        .unwrap();
        bob.say(r#"{"type":"mute"}"#).await;
        assert_eq!(
            users(&bob.next().await),
            [p("bob", false, false)],
            "ann hidden"
        );
        let alarm = h.run("v", |s| s.storage().get_alarm()).await.unwrap();
        assert_eq!(alarm, Some(start + REJOIN_GRACE_MS));

        // Back within the grace: she is listed again, as she was.
        let mut ann = Client::connect(&h, "v", "ann", "read").await;
        let back = ann.next().await;
        assert_eq!(
            users(&back),
            [p("ann", false, false), p("bob", false, false)]
        );
        assert_eq!(back["participants"][0]["joinedAt"], start - 5);
        assert_eq!(users(&bob.next().await).len(), 2);

        // A second vanished participant who never returns is dropped by the alarm.
        h.run("v", move |s| {
            s.storage().put(
                &format!("{PARTICIPANT_PREFIX}cat"),
                &Participant {
                    user_id: "cat".into(),
                    username: "cat name".into(),
                    joined_at: start,
                    audio_enabled: true,
                    video_enabled: false,
                },
            )
        })
        .await
        .unwrap();
        h.advance(std::time::Duration::from_millis(REJOIN_GRACE_MS as u64));
        let after = until(&mut bob, "participants").await;
        assert_eq!(users(&after).len(), 2);
        let cat = h
            .run("v", |s| {
                s.storage()
                    .get::<Participant>(&format!("{PARTICIPANT_PREFIX}cat"))
            })
            .await
            .unwrap();
        assert_eq!(cat, None, "dropped after the grace");
        assert!(
            stored_session(&h).await.is_some(),
            "ann and bob are still in"
        );
        ann.close().await;
    }

    static CREATED: AtomicUsize = AtomicUsize::new(0);
    static ENDED: AtomicUsize = AtomicUsize::new(0);

    /// A provider that counts its calls and refuses channels named `broken`.
    #[derive(Default)]
    struct Counting;

    impl SessionProvider for Counting {
        async fn create(
            &self,
            request: &SessionRequest,
            state: &ObjectState,
            env: &Env,
        ) -> Result<VoiceSession> {
            if request.channel_id == "broken" {
                return Err(Error::msg("the media server is down"));
            }
            CREATED.fetch_add(1, Ordering::SeqCst);
            let mut session = LocalSessions.create(request, state, env).await?;
            session.provider = "counting".into();
            session.details =
                json!({"joinUrl": format!("https://media.example/{}", request.session_id)});
            Ok(session)
        }

        async fn end(&self, _: &VoiceSession, _: &ObjectState, _: &Env) -> Result<()> {
            ENDED.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    #[tokio::test]
    async fn the_provider_makes_one_session_per_occupancy_and_can_refuse() {
        let h = TestHarness::new::<VoiceChannel<Counting>>().unwrap();
        for round in 1..=2 {
            let mut ann = Client::connect(&h, "v", "ann", "read").await;
            let mut bob = Client::connect(&h, "v", "bob", "read").await;
            ann.next().await;
            bob.next().await;
            ann.say(r#"{"type":"join"}"#).await;
            until(&mut ann, "participants").await;
            let f = until(&mut bob, "participants").await;
            assert_eq!(f["session"]["provider"], "counting");
            assert!(f["session"]["details"]["joinUrl"].is_string());
            bob.say(r#"{"type":"join"}"#).await;
            assert_eq!(users(&until(&mut ann, "participants").await).len(), 2);
            assert_eq!(
                CREATED.load(Ordering::SeqCst),
                round,
                "one session per occupancy"
            );
            ann.say(r#"{"type":"leave"}"#).await;
            bob.say(r#"{"type":"leave"}"#).await;
            until(&mut ann, "session_ended").await;
            assert_eq!(ENDED.load(Ordering::SeqCst), round);
            ann.close().await;
            bob.close().await;
        }
        // A provider error refuses the join; nothing is stored.
        let mut eve = Client::connect(&h, "broken", "eve", "read").await;
        eve.next().await;
        eve.say(r#"{"type":"join"}"#).await;
        let refused = eve.next().await;
        assert_eq!(refused["type"], "error");
        assert!(
            refused["message"]
                .as_str()
                .unwrap()
                .contains("media server is down"),
            "{refused}"
        );
    }
}

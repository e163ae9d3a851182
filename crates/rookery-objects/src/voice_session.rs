//! Where a voice channel's media session comes from: the seam between the
//! [`crate::VoiceChannel`] object (who is in the channel) and the media server that carries the
//! audio and video (seed 000 uses RealTimeKit). The object asks a [`SessionProvider`] for a
//! session on the first join and ends it when the last participant leaves.
//!
//! [`LocalSessions`], the default, makes a session record and talks to no one: enough for the
//! demo and for tests, and for deployments whose clients connect peer to peer. A provider for a
//! real media server implements the trait (typically with `env.http()`, an output released only
//! once the turn's earlier writes are durable) and is registered as
//! `Classes::with::<VoiceChannel<MyProvider>>("VoiceChannel")`.

use std::future::Future;

use rookery::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What a voice channel asks its provider for (seed 000's `sessionConfig`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionRequest {
    /// `<object id>-<channel id>`: stable for the channel.
    pub session_id: String,
    /// The channel's name.
    pub channel_id: String,
    /// Most participants at once.
    pub max_participants: usize,
    /// What the media server should offer, e.g. `recording`, `transcription`.
    pub features: Vec<String>,
}

/// A media session, as created by a provider and stored by the voice channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VoiceSession {
    /// The id clients use to join the media session.
    pub session_id: String,
    /// Which provider made it (`local` for [`LocalSessions`]).
    pub provider: String,
    /// Most participants at once.
    pub max_participants: usize,
    /// The features the session has.
    pub features: Vec<String>,
    /// When it was created (ms since the epoch).
    pub created_at: i64,
    /// Whatever else the provider returns for clients (join URL, tokens, region).
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub details: Value,
}

/// Makes and ends media sessions for voice channels.
pub trait SessionProvider: Default + Send + Sync + 'static {
    /// Creates the session `request` describes, during the turn of the first join; an error
    /// refuses the join and nothing is stored.
    fn create(
        &self,
        request: &SessionRequest,
        state: &ObjectState,
        env: &Env,
    ) -> impl Future<Output = Result<VoiceSession>> + Send;

    /// Ends `session` after its last participant left; an error is logged, and the session is
    /// forgotten anyway (the next join creates a new one).
    fn end(
        &self,
        session: &VoiceSession,
        state: &ObjectState,
        env: &Env,
    ) -> impl Future<Output = Result<()>> + Send;
}

/// The default provider: a session record made locally, with no media server.
#[derive(Debug, Default, Clone, Copy)]
pub struct LocalSessions;

impl SessionProvider for LocalSessions {
    async fn create(
        &self,
        request: &SessionRequest,
        state: &ObjectState,
        _env: &Env,
    ) -> Result<VoiceSession> {
        Ok(VoiceSession {
            session_id: request.session_id.clone(),
            provider: "local".to_string(),
            max_participants: request.max_participants,
            features: request.features.clone(),
            created_at: state.now_ms(),
            details: Value::Null,
        })
    }

    async fn end(&self, _session: &VoiceSession, _state: &ObjectState, _env: &Env) -> Result<()> {
        Ok(())
    }
}

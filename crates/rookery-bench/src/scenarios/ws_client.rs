//! The WebSocket side shared by `ws-fanout` and `ws-idle`: opening a chat connection,
//! classifying what the server sends, and checking message order.

use std::borrow::Cow;
use std::future::Future;
use std::time::Duration;

use anyhow::Context;
use futures_util::StreamExt;
use futures_util::stream::{SplitSink, SplitStream};
use serde::Deserialize;
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};

use super::truncate;
use crate::http::{CONNECT_TIMEOUT, Target};

/// One client's WebSocket over plain TCP.
pub type Ws = WebSocketStream<TcpStream>;
/// The sending half of a [`Ws`].
pub type WsSink = SplitSink<Ws, Message>;
/// The receiving half of a [`Ws`].
pub type WsStream = SplitStream<Ws>;

/// Connections opened at once: enough to keep the server's accept loop busy without a SYN flood
/// overflowing its listen backlog.
pub const CONNECT_CONCURRENCY: usize = 64;

/// The text of the `i`th measured chat message.
pub fn bench_text(i: u32) -> String {
    format!("bench-{i}")
}

/// The text of the barrier message sent once every client is connected.
pub const READY_TEXT: &str = "bench-ready";

/// The frame a client sends to post chat message `text`.
pub fn chat_frame(text: &str) -> String {
    serde_json::json!({ "type": "message", "text": text }).to_string()
}

/// The frame a client sends to post message `text` to a Waddle channel.
pub fn channel_frame(text: &str) -> String {
    serde_json::json!({ "type": "message", "content": text }).to_string()
}

/// Opens a WebSocket to `path_and_query` on `target`, within [`CONNECT_TIMEOUT`] per step.
///
/// A refused upgrade becomes an error naming the HTTP status and the start of the body, which is
/// the verdict detail when the server has no WebSocket support.
pub async fn connect(target: &Target, path_and_query: &str) -> anyhow::Result<Ws> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target.addr))
        .await
        .context("TCP connect timed out")?
        .with_context(|| format!("connecting to {}", target.addr))?;
    stream.set_nodelay(true)?;
    // Small buffers: the chat frames are tiny and 10 000 clients × the 128 KiB default read
    // buffer would make the load generator the memory hog.
    let config = WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0);
    let url = target.ws_url(path_and_query);
    let handshake = tokio_tungstenite::client_async_with_config(url.as_str(), stream, Some(config));
    match tokio::time::timeout(CONNECT_TIMEOUT, handshake).await {
        Err(_) => anyhow::bail!("WebSocket handshake on {path_and_query} timed out"),
        Ok(Ok((ws, _response))) => Ok(ws),
        Ok(Err(tungstenite::Error::Http(response))) => {
            let body = response
                .body()
                .as_deref()
                .map(|b| truncate(String::from_utf8_lossy(b).trim(), 100))
                .unwrap_or_default();
            anyhow::bail!(
                "WebSocket upgrade of {path_and_query} refused: HTTP {} {body:?}",
                response.status()
            )
        }
        Ok(Err(e)) => Err(e).with_context(|| format!("WebSocket handshake on {path_and_query}")),
    }
}

/// How long opening all the connections may take in total; each one is also bounded by
/// [`CONNECT_TIMEOUT`], but thousands of slow ones in a row must not stall the run for hours.
pub const CONNECT_PHASE_LIMIT: Duration = Duration::from_secs(300);

/// Opens `count` connections to `path_of(i)`, at most [`CONNECT_CONCURRENCY`] at a time, handing
/// each one to `on_open` as it completes. Stops at the first failure, or after
/// [`CONNECT_PHASE_LIMIT`], with an error naming the client.
pub async fn connect_all(
    target: &Target,
    count: u64,
    path_of: impl Fn(u64) -> String,
    mut on_open: impl FnMut(u64, Ws),
) -> anyhow::Result<()> {
    let mut pending = futures_util::stream::iter(0..count)
        .map(|i| {
            let path = path_of(i);
            async move { (i, connect(target, &path).await) }
        })
        .buffer_unordered(CONNECT_CONCURRENCY);
    let deadline = tokio::time::Instant::now() + CONNECT_PHASE_LIMIT;
    let mut opened = 0u64;
    loop {
        match tokio::time::timeout_at(deadline, pending.next()).await {
            Err(_) => anyhow::bail!(
                "opening the connections took over {} s",
                CONNECT_PHASE_LIMIT.as_secs()
            ),
            Ok(None) => return Ok(()),
            Ok(Some((i, Ok(ws)))) => {
                opened += 1;
                on_open(i, ws);
            }
            Ok(Some((i, Err(e)))) => {
                return Err(e.context(format!("client {i} ({opened} of {count} connected)")));
            }
        }
    }
}

/// What a server text frame means to the benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A chat message `bench-<i>`.
    Bench(u32),
    /// The barrier message.
    Ready,
    /// A `join` notice.
    Join,
    /// Anything else valid (history, leave, other people's messages).
    Other,
    /// Not the JSON the protocol promises.
    Unparsed,
}

#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default, borrow)]
    text: Option<Cow<'a, str>>,
    /// A Waddle channel's message text.
    #[serde(default, borrow)]
    content: Option<Cow<'a, str>>,
}

/// Classifies one text frame from the chat room (or a Waddle channel).
pub fn classify(frame: &str) -> Event {
    let Ok(parsed) = serde_json::from_str::<Frame<'_>>(frame) else {
        return Event::Unparsed;
    };
    match (&*parsed.kind, parsed.text.or(parsed.content).as_deref()) {
        ("message", Some(READY_TEXT)) => Event::Ready,
        ("message", Some(text)) => match text.strip_prefix("bench-").map(str::parse::<u32>) {
            Some(Ok(i)) => Event::Bench(i),
            _ => Event::Other,
        },
        ("join", _) => Event::Join,
        _ => Event::Other,
    }
}

/// Checks that one client sees `bench-0`, `bench-1`, ... each exactly once, in order.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SeqChecker {
    /// The index expected next; equals the number of messages seen in order.
    pub next: u32,
    /// Duplicates, gaps and reorderings seen.
    pub violations: u32,
    /// The first violation, for the detail.
    pub first_violation: Option<String>,
}

impl SeqChecker {
    /// Records message `i`; returns whether it was the expected one.
    pub fn observe(&mut self, i: u32) -> bool {
        if i == self.next {
            self.next += 1;
            return true;
        }
        self.violations += 1;
        if self.first_violation.is_none() {
            self.first_violation = Some(if i < self.next {
                format!("bench-{i} again after bench-{}", self.next - 1)
            } else {
                format!("bench-{i} while expecting bench-{}", self.next)
            });
        }
        // Skip ahead so one lost message counts as one violation, not one per later message.
        self.next = self.next.max(i + 1);
        false
    }
}

/// Waits for `fut` at most `limit`, naming `what` in the error.
pub async fn within<T>(
    limit: Duration,
    what: &str,
    fut: impl Future<Output = T>,
) -> anyhow::Result<T> {
    tokio::time::timeout(limit, fut)
        .await
        .map_err(|_| anyhow::anyhow!("{what}: no progress within {} s", limit.as_secs()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_waddle_channel_frames() {
        let frame = r#"{"type":"message","sequence":3,"content":"bench-7","message":{"content":"bench-7"}}"#;
        assert_eq!(classify(frame), Event::Bench(7));
        assert_eq!(
            classify(r#"{"type":"message","content":"bench-ready"}"#),
            Event::Ready
        );
        assert_eq!(
            classify(r#"{"type":"initial_state","messages":[]}"#),
            Event::Other
        );
        let sent: serde_json::Value = serde_json::from_str(&channel_frame("bench-1")).unwrap();
        assert_eq!(
            sent,
            serde_json::json!({"type": "message", "content": "bench-1"})
        );
    }

    #[test]
    fn classifies_chat_frames() {
        assert_eq!(
            classify(
                r#"{"type":"message","id":"message:1","name":"c0","text":"bench-17","timestamp":1}"#
            ),
            Event::Bench(17)
        );
        assert_eq!(
            classify(r#"{"type":"message","name":"c0","text":"bench-ready"}"#),
            Event::Ready
        );
        assert_eq!(classify(r#"{"type":"join","name":"c3"}"#), Event::Join);
        assert_eq!(
            classify(r#"{"type":"history","messages":[{"type":"message","text":"bench-1"}]}"#),
            Event::Other
        );
        assert_eq!(
            classify(r#"{"type":"message","text":"hello"}"#),
            Event::Other
        );
        assert_eq!(
            classify(r#"{"type":"message","text":"bench-x"}"#),
            Event::Other
        );
        assert_eq!(classify(r#"{"type":"leave","name":"c1"}"#), Event::Other);
        assert_eq!(classify("not json"), Event::Unparsed);
        // Escaped text still parses (borrowed Cow falls back to an owned string).
        assert_eq!(
            classify(r#"{"type":"message","text":"bench-\u0032"}"#),
            Event::Bench(2)
        );
    }

    #[test]
    fn seq_checker_accepts_in_order() {
        let mut s = SeqChecker::default();
        for i in 0..5 {
            assert!(s.observe(i));
        }
        assert_eq!(s.next, 5);
        assert_eq!(s.violations, 0);
    }

    #[test]
    fn seq_checker_flags_duplicates_gaps_and_reorders() {
        let mut dup = SeqChecker::default();
        dup.observe(0);
        dup.observe(1);
        assert!(!dup.observe(1));
        assert_eq!(dup.violations, 1);
        assert_eq!(
            dup.first_violation.as_deref(),
            Some("bench-1 again after bench-1")
        );

        let mut gap = SeqChecker::default();
        gap.observe(0);
        assert!(!gap.observe(2));
        // The messages after the gap are in order again: one violation in total.
        assert!(gap.observe(3));
        assert_eq!(gap.violations, 1);
        assert_eq!(gap.next, 4);
        assert_eq!(
            gap.first_violation.as_deref(),
            Some("bench-2 while expecting bench-1")
        );

        let mut reorder = SeqChecker::default();
        reorder.observe(1);
        reorder.observe(0);
        assert_eq!(reorder.violations, 2);
    }

    #[test]
    fn chat_frames_follow_the_protocol() {
        let frame: serde_json::Value = serde_json::from_str(&chat_frame("bench-3")).unwrap();
        assert_eq!(
            frame,
            serde_json::json!({"type": "message", "text": "bench-3"})
        );
    }

    #[test]
    fn bench_texts_round_trip() {
        let frame = format!(r#"{{"type":"message","text":"{}"}}"#, bench_text(42));
        assert_eq!(classify(&frame), Event::Bench(42));
    }
}

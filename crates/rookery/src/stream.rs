//! Streamed response bodies: an object answers with a body it keeps writing to from later turns
//! (server-sent events among them).
//!
//! An object makes a [`BodyStream`] with `ObjectState::stream` or `ObjectState::event_stream`
//! and answers with `Response::stream`, which hands the reading end, a [`StreamLink`], to the
//! client's connection. What a turn of the object sends is held in the object's outbox and
//! leaves once the turn's writes are durable, like a WebSocket send. Each stream has a bounded
//! queue: a client that does not read is cut off rather than let it grow. A client that goes
//! away drops the link, and the stream reports itself closed to the object.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::{BufMut, Bytes, BytesMut};
use http::HeaderValue;
use serde::Serialize;
use tokio::sync::Notify;

use crate::error::{Error, Result};
use crate::outbox::{self, Outbox, Release};
use crate::storage::OutputGate;

/// Most chunks waiting to be written to one stream before its reader counts as too slow.
pub const MAX_QUEUED_CHUNKS: usize = 4096;
/// Most bytes waiting to be written to one stream before its reader counts as too slow.
pub const MAX_QUEUED_STREAM_BYTES: usize = 8 * 1024 * 1024;

/// The content type of server-sent events.
pub const EVENT_STREAM: &str = "text/event-stream";

/// Where a stream is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    /// Taking chunks.
    Open,
    /// Closed by the object: what is queued is still read, then the body ends.
    Ending,
    /// Its reader fell too far behind: the body ends with an error.
    Cut,
    /// Its reader went away.
    Gone,
}

struct Queue {
    items: VecDeque<Bytes>,
    bytes: usize,
    flow: Flow,
}

/// One stream as the runtime keeps it: its bounded queue, which the connection drains.
pub(crate) struct StreamInner {
    /// The object whose turns hold this stream's sends; 0 for a stream of no object.
    owner: u64,
    /// That object's stream outbox.
    outbox: Option<Arc<Outbox<Chunk>>>,
    /// That object's count of streams handed to a connection.
    open: Option<Arc<AtomicUsize>>,
    content_type: HeaderValue,
    claimed: AtomicBool,
    queue: Mutex<Queue>,
    ready: Notify,
}

impl StreamInner {
    fn queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn deliver(&self, data: Bytes) {
        let mut q = self.queue();
        if q.flow != Flow::Open {
            return;
        }
        if q.items.len() >= MAX_QUEUED_CHUNKS || q.bytes + data.len() > MAX_QUEUED_STREAM_BYTES {
            // A reader that does not keep up is cut off, not given an ever-growing queue.
            q.items.clear();
            q.bytes = 0;
            q.flow = Flow::Cut;
        } else {
            q.bytes += data.len();
            q.items.push_back(data);
        }
        drop(q);
        self.ready.notify_one();
    }

    fn end(&self) {
        let mut q = self.queue();
        if q.flow == Flow::Open {
            q.flow = Flow::Ending;
        }
        drop(q);
        self.ready.notify_one();
    }

    fn is_open(&self) -> bool {
        self.queue().flow == Flow::Open
    }
}

/// What a turn sent on a stream, as the object's outbox holds it.
pub(crate) struct Chunk {
    stream: Arc<StreamInner>,
    piece: Piece,
}

enum Piece {
    Data(Bytes),
    /// `BodyStream::close`.
    Close,
    /// The last handle was dropped: nobody can send any more.
    Abandoned,
}

impl Release for Chunk {
    fn release(self) {
        match self.piece {
            Piece::Data(data) => self.stream.deliver(data),
            Piece::Close | Piece::Abandoned => self.stream.end(),
        }
    }

    fn discard(self) {
        // A stream nobody holds must end even if the turn that dropped it failed.
        if let Piece::Abandoned = self.piece {
            self.stream.end();
        }
    }
}

/// Sends `piece` on `stream`: held inside a turn of its object, else at once (`Abandoned` after
/// what earlier turns sent and is still waiting, so it does not cut their chunks off).
fn emit(stream: &Arc<StreamInner>, piece: Piece) {
    let chunk = Chunk {
        stream: stream.clone(),
        piece,
    };
    let Some(outbox) = &stream.outbox else {
        chunk.release();
        return;
    };
    if outbox::in_turn_of(stream.owner) {
        if let Some(chunk) = outbox.hold(chunk) {
            chunk.release();
        }
    } else if let Piece::Abandoned = chunk.piece {
        outbox.emit_in_order(chunk);
    } else {
        chunk.release();
    }
}

/// Ends the stream when the last [`BodyStream`] handle goes.
struct Handle(Arc<StreamInner>);

impl Drop for Handle {
    fn drop(&mut self) {
        emit(&self.0, Piece::Abandoned);
    }
}

/// The writing end of a streamed response body. Cheap to clone; the body ends when the object
/// closes it or drops its last handle.
#[derive(Clone)]
pub struct BodyStream {
    inner: Arc<StreamInner>,
    _handle: Arc<Handle>,
}

impl std::fmt::Debug for BodyStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BodyStream")
            .field("content_type", &self.inner.content_type)
            .field("open", &self.is_open())
            .finish()
    }
}

impl BodyStream {
    /// A stream that belongs to no object: its sends leave at once. For code outside objects
    /// (a worker); objects use `ObjectState::stream`, whose sends are output-gated.
    pub fn new(content_type: &str) -> Result<Self> {
        Ok(Self::make(parse_content_type(content_type)?, 0, None, None))
    }

    fn make(
        content_type: HeaderValue,
        owner: u64,
        outbox: Option<Arc<Outbox<Chunk>>>,
        open: Option<Arc<AtomicUsize>>,
    ) -> Self {
        let inner = Arc::new(StreamInner {
            owner,
            outbox,
            open,
            content_type,
            claimed: AtomicBool::new(false),
            queue: Mutex::new(Queue {
                items: VecDeque::new(),
                bytes: 0,
                flow: Flow::Open,
            }),
            ready: Notify::new(),
        });
        Self {
            _handle: Arc::new(Handle(inner.clone())),
            inner,
        }
    }

    /// The body's content type.
    pub fn content_type(&self) -> &HeaderValue {
        &self.inner.content_type
    }

    /// Sends `data`. Inside a turn of the owning object it leaves once the turn's writes are
    /// durable (and is dropped if the turn fails); outside a turn, at once. Sends to a closed
    /// stream are dropped. A reader more than 4 096 chunks or 8 MiB behind is cut off.
    pub fn send(&self, data: impl Into<Bytes>) {
        emit(&self.inner, Piece::Data(data.into()));
    }

    /// Sends one server-sent event (for streams made with `ObjectState::event_stream`).
    pub fn send_event(&self, event: &SseEvent) -> Result<()> {
        self.send(event.encode()?);
        Ok(())
    }

    /// Sends an SSE comment line, which clients ignore: a keep-alive for idle streams.
    pub fn send_comment(&self, text: &str) -> Result<()> {
        check_field("comment", text)?;
        self.send(format!(": {text}\n\n"));
        Ok(())
    }

    /// Ends the body once what was sent before is written (gated like a send).
    pub fn close(&self) {
        emit(&self.inner, Piece::Close);
    }

    /// Whether the stream still takes data: false once it was closed, its client went away,
    /// or its client fell too far behind.
    pub fn is_open(&self) -> bool {
        self.inner.is_open()
    }

    /// Whether a response handed this stream to a client's connection.
    pub fn is_claimed(&self) -> bool {
        self.inner.claimed.load(Ordering::Acquire)
    }

    pub(crate) fn inner(&self) -> &Arc<StreamInner> {
        &self.inner
    }
}

/// `content_type` as a header value; an error if it cannot be one.
pub(crate) fn parse_content_type(content_type: &str) -> Result<HeaderValue> {
    HeaderValue::from_str(content_type)
        .map_err(|_| Error::bad_request(format!("invalid content type {content_type:?}")))
}

/// One server-sent event: `data` with an optional event name, id and retry time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SseEvent {
    data: String,
    event: Option<String>,
    id: Option<String>,
    retry_ms: Option<u64>,
}

impl SseEvent {
    /// An event carrying `data` (several lines are sent as several `data:` lines).
    pub fn new(data: impl Into<String>) -> Self {
        Self {
            data: data.into(),
            ..Self::default()
        }
    }

    /// An event carrying `value` as JSON.
    pub fn json<T: Serialize + ?Sized>(value: &T) -> Result<Self> {
        Ok(Self::new(serde_json::to_string(value)?))
    }

    /// This event with an event name (the client's `addEventListener(name, ..)`).
    pub fn event(mut self, name: impl Into<String>) -> Self {
        self.event = Some(name.into());
        self
    }

    /// This event with an id (the client sends the last one back as `Last-Event-ID`).
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// This event with the time the client waits before reconnecting.
    pub fn retry_ms(mut self, ms: u64) -> Self {
        self.retry_ms = Some(ms);
        self
    }

    /// The event in the wire format; an error if the name or id has a line break.
    pub fn encode(&self) -> Result<Bytes> {
        let mut out = BytesMut::with_capacity(self.data.len() + 32);
        if let Some(event) = &self.event {
            check_field("event name", event)?;
            put_field(&mut out, "event", event);
        }
        if let Some(id) = &self.id {
            check_field("event id", id)?;
            if id.contains('\0') {
                return Err(Error::bad_request("an SSE event id cannot contain NUL"));
            }
            put_field(&mut out, "id", id);
        }
        if let Some(ms) = self.retry_ms {
            put_field(&mut out, "retry", &ms.to_string());
        }
        // Every line of the data is a `data:` line; the client joins them with newlines.
        let data = self.data.replace("\r\n", "\n").replace('\r', "\n");
        for line in data.split('\n') {
            put_field(&mut out, "data", line);
        }
        out.put_u8(b'\n');
        Ok(out.freeze())
    }
}

fn check_field(what: &str, value: &str) -> Result<()> {
    if value.contains(['\r', '\n']) {
        return Err(Error::bad_request(format!(
            "an SSE {what} cannot contain a line break"
        )));
    }
    Ok(())
}

fn put_field(out: &mut BytesMut, name: &str, value: &str) {
    out.put_slice(name.as_bytes());
    out.put_slice(b": ");
    out.put_slice(value.as_bytes());
    out.put_u8(b'\n');
}

/// Why a stream's body ended before the object closed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "the stream was cut off: its reader fell more than {MAX_QUEUED_CHUNKS} chunks or {MAX_QUEUED_STREAM_BYTES} bytes behind"
)]
pub struct StreamCut;

/// The reading end of a stream, for the connection that serves it.
///
/// Exactly one exists per stream, made by `Response::stream`. Dropping it (the client went
/// away, the response was lost) closes the stream: the object's `is_open` turns false and its
/// sends are dropped.
pub struct StreamLink {
    inner: Arc<StreamInner>,
    cut_reported: bool,
}

impl std::fmt::Debug for StreamLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamLink")
            .field("content_type", &self.inner.content_type)
            .finish()
    }
}

impl StreamLink {
    /// The link for `stream`; `None` if a response has it already.
    pub(crate) fn new(stream: &BodyStream) -> Option<Self> {
        let inner = stream.inner();
        if inner.claimed.swap(true, Ordering::AcqRel) {
            return None;
        }
        if let Some(open) = &inner.open {
            open.fetch_add(1, Ordering::Relaxed);
        }
        Some(Self {
            inner: inner.clone(),
            cut_reported: false,
        })
    }

    /// The body's content type.
    pub fn content_type(&self) -> &HeaderValue {
        &self.inner.content_type
    }

    /// The next chunk to write: `None` when the body is over, an error once if the reader was
    /// cut off for falling behind. Waits while the stream is open and nothing is queued.
    pub async fn next(&mut self) -> Option<Result<Bytes, StreamCut>> {
        loop {
            {
                let mut q = self.inner.queue();
                if let Some(data) = q.items.pop_front() {
                    q.bytes -= data.len();
                    return Some(Ok(data));
                }
                match q.flow {
                    Flow::Open => {}
                    Flow::Cut if !self.cut_reported => {
                        self.cut_reported = true;
                        return Some(Err(StreamCut));
                    }
                    Flow::Ending | Flow::Cut | Flow::Gone => return None,
                }
            }
            // Only this link waits here; `notify_one` keeps a permit for it.
            self.inner.ready.notified().await;
        }
    }
}

impl Drop for StreamLink {
    fn drop(&mut self) {
        let mut q = self.inner.queue();
        q.flow = Flow::Gone;
        q.items.clear();
        q.bytes = 0;
        drop(q);
        if let Some(open) = &self.inner.open {
            open.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// The streams of one object: where its turns hold their sends, and how many are being read.
pub(crate) struct ObjectStreams {
    outbox: Arc<Outbox<Chunk>>,
    open: Arc<AtomicUsize>,
}

impl ObjectStreams {
    /// The streams of the object whose turns carry `owner`.
    pub(crate) fn new(owner: u64) -> Self {
        Self {
            outbox: Arc::new(Outbox::new(owner)),
            open: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// A new stream of this object with `content_type`.
    pub(crate) fn create(&self, content_type: HeaderValue) -> BodyStream {
        BodyStream::make(
            content_type,
            self.outbox.owner(),
            Some(self.outbox.clone()),
            Some(self.open.clone()),
        )
    }

    /// Streams handed to a connection whose reader is still there.
    pub(crate) fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Takes what the running turn sent on this object's streams.
    pub(crate) fn take(&self) -> Vec<Chunk> {
        self.outbox.take()
    }

    /// Releases `chunks` when `gate` opens, after every earlier turn's chunks.
    pub(crate) fn release(&self, gate: OutputGate, chunks: Vec<Chunk>) {
        self.outbox.release(gate, chunks);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_encoded_line_by_line() {
        let e = SseEvent::new("a\nb\r\nc")
            .event("note")
            .id("7")
            .retry_ms(500);
        assert_eq!(
            e.encode().unwrap(),
            "event: note\nid: 7\nretry: 500\ndata: a\ndata: b\ndata: c\n\n"
        );
        assert_eq!(SseEvent::new("").encode().unwrap(), "data: \n\n");
        assert!(SseEvent::new("x").event("a\nb").encode().is_err());
        assert!(SseEvent::new("x").id("a\rb").encode().is_err());
    }

    #[tokio::test]
    async fn a_reader_that_falls_behind_is_cut_and_the_queue_emptied() {
        let stream = BodyStream::new("text/plain").unwrap();
        let mut link = StreamLink::new(&stream).unwrap();
        assert!(StreamLink::new(&stream).is_none(), "one link per stream");
        for _ in 0..MAX_QUEUED_CHUNKS {
            stream.send("x");
        }
        assert!(stream.is_open());
        stream.send("one too many");
        assert!(!stream.is_open());
        assert_eq!(link.inner.queue().items.len(), 0);
        assert_eq!(link.next().await, Some(Err(StreamCut)));
        assert_eq!(link.next().await, None);
    }

    #[tokio::test]
    async fn the_body_ends_when_the_last_handle_goes() {
        let stream = BodyStream::new("text/plain").unwrap();
        let mut link = StreamLink::new(&stream).unwrap();
        let copy = stream.clone();
        stream.send("a");
        drop(stream);
        copy.send("b");
        drop(copy);
        assert_eq!(link.next().await, Some(Ok(Bytes::from("a"))));
        assert_eq!(link.next().await, Some(Ok(Bytes::from("b"))));
        assert_eq!(link.next().await, None);
    }

    #[test]
    fn a_dropped_link_closes_the_stream() {
        let stream = BodyStream::new("text/plain").unwrap();
        let link = StreamLink::new(&stream).unwrap();
        assert!(stream.is_open());
        drop(link);
        assert!(!stream.is_open());
        stream.send("dropped");
    }
}

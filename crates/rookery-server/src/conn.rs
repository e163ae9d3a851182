//! HTTP/1 connections: the accept loop, the connection limit, and the timeouts that keep idle
//! and slow clients from holding connections.
//!
//! hyper's own `header_read_timeout` starts when a connection waits for a request (at accept,
//! and again right after every response) and ends when a request head is complete: one span
//! for the idle time between requests *and* the reading of the next head. It cannot allow a
//! quiet keep-alive connection a minute while cutting a client that trickles a header after
//! seconds, so it is off here. Each connection instead keeps its [`Phase`], moved on by its IO
//! (the first bytes of a request), its service (a head is complete) and its response body (the
//! response is over), and a watchdog in the connection's task drops the connection when the
//! phase's deadline passes:
//!
//! | phase | starts | ends the connection after |
//! | --- | --- | --- |
//! | `Head` | at accept; at the first byte after an idle time | `header_read_timeout` |
//! | `Idle` | when a response is over | `keep_alive_timeout` |
//! | `Busy` | when a request head is complete | never here: the gateway bounds the body read and the runtime the turn |
//! | `Upgraded` | at a 101 response | never: WebSockets have their own life |
//!
//! At `max_connections` a new connection is accepted and closed at once, after a best-effort
//! 503 written without waiting: the accept loop never stalls, and clients learn at once instead
//! of timing out in a full kernel backlog. A WebSocket leaves the count when its upgrade
//! completes; the per-object socket limit bounds those.

use std::convert::Infallible;
use std::future::Future;
use std::io::{self, Read as _, Write as _};
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use bytes::Bytes;
use http::StatusCode;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::Instant;
use tower_service::Service as _;

/// How long the accept loop waits after an error that is not about one connection (most
/// likely the open-file limit), so that it does not spin while connections free descriptors.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// How often, at most, refused connections are logged.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Connection limits and timeouts, from `[server]`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnLimits {
    /// Time from accept, or from the first byte of a later request, to a complete head.
    pub(crate) header_read: Duration,
    /// Idle time allowed between requests on one connection.
    pub(crate) keep_alive: Duration,
    /// Most HTTP connections open at once.
    pub(crate) max_connections: usize,
}

/// The server's connections: the limit and counters, shared with `/_rookery/stats`.
#[derive(Debug)]
pub(crate) struct Connections {
    limits: ConnLimits,
    permits: Arc<Semaphore>,
    accepted: AtomicU64,
    refused: AtomicU64,
    header_timeouts: AtomicU64,
    idle_closed: AtomicU64,
}

/// What the connection counters say, for `/_rookery/stats`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub(crate) struct ConnectionStats {
    /// HTTP connections open now (WebSockets leave the count once upgraded).
    pub(crate) open: usize,
    /// The most that may be open.
    pub(crate) max: usize,
    /// Connections accepted so far.
    pub(crate) accepted: u64,
    /// Connections closed at once because `max` were open.
    pub(crate) refused: u64,
    /// Connections closed because a request head took longer than `header_read_timeout`.
    pub(crate) header_timeouts: u64,
    /// Keep-alive connections closed after `keep_alive_timeout` without a request.
    pub(crate) idle_closed: u64,
}

impl Connections {
    pub(crate) fn new(limits: ConnLimits) -> Self {
        Self {
            limits,
            permits: Arc::new(Semaphore::new(limits.max_connections)),
            accepted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            header_timeouts: AtomicU64::new(0),
            idle_closed: AtomicU64::new(0),
        }
    }

    pub(crate) fn stats(&self) -> ConnectionStats {
        let max = self.limits.max_connections;
        ConnectionStats {
            open: max.saturating_sub(self.permits.available_permits()),
            max,
            accepted: self.accepted.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            header_timeouts: self.header_timeouts.load(Ordering::Relaxed),
            idle_closed: self.idle_closed.load(Ordering::Relaxed),
        }
    }
}

/// Accepts connections on `listener` and serves `router` on each until `shutdown` completes;
/// then stops accepting, lets open connections finish their requests (closing idle ones) and
/// returns when all are closed or `grace` has passed.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    connections: Arc<Connections>,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) {
    // `stop` tells connections to finish; each holds an `open` receiver until it ends.
    let (stop_tx, stop_rx) = watch::channel(false);
    let (open_tx, open_rx) = watch::channel(());
    let mut shutdown = pin!(shutdown);
    let mut refusals = Refusals::default();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "cannot accept a connection");
                tokio::select! {
                    () = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                    () = &mut shutdown => break,
                }
            }
        };
        let Ok(permit) = connections.permits.clone().try_acquire_owned() else {
            connections.refused.fetch_add(1, Ordering::Relaxed);
            refuse(stream);
            refusals.note(connections.limits.max_connections);
            continue;
        };
        connections.accepted.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(connection(
            stream,
            peer,
            router.clone(),
            connections.clone(),
            permit,
            stop_rx.clone(),
            open_rx.clone(),
        ));
    }
    drop(listener);
    let _ = stop_tx.send(true);
    drop(open_rx);
    if tokio::time::timeout(grace, open_tx.closed()).await.is_err() {
        tracing::warn!(
            ?grace,
            "requests still running after the grace period; stopping anyway"
        );
    }
}

/// Errors of one connection that never reached us; the listener itself is fine.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// The answer to a connection over the limit.
fn refusal() -> String {
    let body = r#"{"error":"too many open connections"}"#;
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         retry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// Writes the refusal if the socket takes it now, then closes the connection. Never waits: a
/// client whose request arrives after the close may see the connection reset instead.
fn refuse(stream: TcpStream) {
    // A plain socket (still non-blocking) writes at once: tokio's `try_write` would refuse
    // until the reactor has seen the new socket writable.
    let Ok(mut stream) = stream.into_std() else {
        return;
    };
    let _ = stream.write_all(refusal().as_bytes());
    // Unread request bytes would make the close a reset that can overtake the 503: read what
    // has already arrived, without waiting for more.
    let mut sink = [0u8; 4096];
    for _ in 0..16 {
        match stream.read(&mut sink) {
            Ok(n) if n > 0 => {}
            _ => break,
        }
    }
    let _ = stream.shutdown(std::net::Shutdown::Write);
}

/// Logs refused connections at most every [`REFUSAL_LOG_INTERVAL`], with how many there were.
#[derive(Default)]
struct Refusals {
    last_log: Option<Instant>,
    unlogged: u64,
}

impl Refusals {
    fn note(&mut self, max: usize) {
        self.unlogged += 1;
        let now = Instant::now();
        if self
            .last_log
            .is_none_or(|at| now.duration_since(at) >= REFUSAL_LOG_INTERVAL)
        {
            tracing::warn!(
                max_connections = max,
                refused = self.unlogged,
                "connection limit reached; refusing new connections"
            );
            self.last_log = Some(now);
            self.unlogged = 0;
        }
    }
}

/// Serves one connection until it ends, its phase times out, or the server stops.
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    connections: Arc<Connections>,
    _permit: OwnedSemaphorePermit,
    mut stop: watch::Receiver<bool>,
    _open: watch::Receiver<()>,
) {
    let tracker = Arc::new(Tracker::new(Phase::Head {
        since: Instant::now(),
    }));
    let io = TokioIo::new(TrackedIo {
        stream,
        tracker: Some(tracker.clone()),
    });
    let service = {
        let tracker = tracker.clone();
        hyper::service::service_fn(move |mut req: http::Request<Incoming>| {
            tracker.set(Phase::Busy);
            req.extensions_mut().insert(ConnectInfo(peer));
            let mut router = router.clone();
            let tracker = tracker.clone();
            async move {
                let response = match router.call(req).await {
                    Ok(response) => response,
                    Err(never) => match never {},
                };
                let done = if response.status() == StatusCode::SWITCHING_PROTOCOLS {
                    tracker.set(Phase::Upgraded);
                    None
                } else {
                    Some(ResponseDone(tracker))
                };
                Ok::<_, Infallible>(response.map(|body| TrackedBody { body, _done: done }))
            }
        })
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    // Off: it would also limit the idle time between requests (see the module docs).
    builder.header_read_timeout(None).keep_alive(true);
    let mut conn = pin!(builder.serve_connection(io, service).with_upgrades());
    let limits = connections.limits;
    let mut watchdog = pin!(watchdog(&tracker, &limits));
    let mut stopping = false;
    loop {
        tokio::select! {
            served = conn.as_mut() => {
                if let Err(e) = served {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                break;
            }
            phase = &mut watchdog => {
                // Dropping the connection closes it: nothing is in flight in these phases.
                let counter = match phase {
                    Phase::Head { .. } => &connections.header_timeouts,
                    _ => &connections.idle_closed,
                };
                counter.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%peer, ?phase, "closing a connection whose time ran out");
                break;
            }
            _ = stop.wait_for(|stop| *stop), if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

/// What a connection is doing, as far as its timeouts go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for a request head to complete: since accept, or since the first byte after an
    /// idle time.
    Head { since: Instant },
    /// Between requests, nothing of the next one read yet.
    Idle { since: Instant },
    /// Serving a request, from its complete head to the end of its response.
    Busy,
    /// Switched to another protocol (WebSocket): no HTTP timeouts apply.
    Upgraded,
}

impl Phase {
    /// When a connection that stays in this phase is closed.
    fn deadline(self, limits: &ConnLimits) -> Option<Instant> {
        match self {
            Phase::Head { since } => Some(since + limits.header_read),
            Phase::Idle { since } => Some(since + limits.keep_alive),
            Phase::Busy | Phase::Upgraded => None,
        }
    }
}

/// One connection's phase, shared by its IO, its service, its response bodies and its
/// watchdog (all in the connection's task until an upgrade hands the IO on).
#[derive(Debug)]
struct Tracker {
    phase: Mutex<Phase>,
    changed: Notify,
}

impl Tracker {
    fn new(phase: Phase) -> Self {
        Self {
            phase: Mutex::new(phase),
            changed: Notify::new(),
        }
    }

    fn phase(&self) -> Phase {
        *self.phase.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn set(&self, phase: Phase) {
        *self.phase.lock().unwrap_or_else(PoisonError::into_inner) = phase;
        self.changed.notify_one();
    }

    /// Bytes arrived: the first after an idle time start the next request's head. Returns
    /// whether the connection still needs to be told (not once it is upgraded).
    fn bytes_read(&self) -> bool {
        let mut phase = self.phase.lock().unwrap_or_else(PoisonError::into_inner);
        match *phase {
            Phase::Idle { .. } => {
                *phase = Phase::Head {
                    since: Instant::now(),
                };
                drop(phase);
                self.changed.notify_one();
                true
            }
            Phase::Upgraded => false,
            Phase::Head { .. } | Phase::Busy => true,
        }
    }

    /// The response is over: the connection idles until the next request.
    fn response_done(&self) {
        let mut phase = self.phase.lock().unwrap_or_else(PoisonError::into_inner);
        if *phase == Phase::Busy {
            *phase = Phase::Idle {
                since: Instant::now(),
            };
            drop(phase);
            self.changed.notify_one();
        }
    }
}

/// Completes with the phase whose deadline passed.
async fn watchdog(tracker: &Tracker, limits: &ConnLimits) -> Phase {
    loop {
        // Made before the phase is read, so a change in between is not missed.
        let changed = tracker.changed.notified();
        let phase = tracker.phase();
        match phase.deadline(limits) {
            None => changed.await,
            Some(deadline) if deadline <= Instant::now() => return phase,
            Some(deadline) => {
                tokio::select! {
                    () = tokio::time::sleep_until(deadline) => {}
                    () = changed => {}
                }
            }
        }
    }
}

/// The connection's socket, telling the tracker when request bytes arrive.
struct TrackedIo {
    stream: TcpStream,
    /// Dropped once the connection is upgraded: nothing more to track.
    tracker: Option<Arc<Tracker>>,
}

impl AsyncRead for TrackedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(())))
            && buf.filled().len() > before
            && self.tracker.as_ref().is_some_and(|t| !t.bytes_read())
        {
            self.tracker = None;
        }
        polled
    }
}

impl AsyncWrite for TrackedIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Marks the end of a response when dropped: hyper drops the body once it has sent it.
struct ResponseDone(Arc<Tracker>);

impl Drop for ResponseDone {
    fn drop(&mut self) {
        self.0.response_done();
    }
}

/// A response body that marks the end of its response.
struct TrackedBody {
    body: axum::body::Body,
    /// Does its work when dropped with the body.
    _done: Option<ResponseDone>,
}

impl http_body::Body for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> ConnLimits {
        ConnLimits {
            header_read: Duration::from_secs(10),
            keep_alive: Duration::from_secs(60),
            max_connections: 10,
        }
    }

    #[test]
    fn each_phase_has_its_own_deadline() {
        let t = Instant::now();
        let l = limits();
        assert_eq!(
            Phase::Head { since: t }.deadline(&l),
            Some(t + Duration::from_secs(10))
        );
        assert_eq!(
            Phase::Idle { since: t }.deadline(&l),
            Some(t + Duration::from_secs(60))
        );
        assert_eq!(Phase::Busy.deadline(&l), None);
        assert_eq!(Phase::Upgraded.deadline(&l), None);
    }

    #[test]
    fn the_first_bytes_after_idle_time_start_a_head_and_an_upgrade_ends_tracking() {
        let t = Instant::now();
        let tracker = Tracker::new(Phase::Idle { since: t });
        assert!(tracker.bytes_read());
        assert!(matches!(tracker.phase(), Phase::Head { since } if since >= t));
        // More bytes of the same head keep its start.
        let head = tracker.phase();
        assert!(tracker.bytes_read());
        assert_eq!(tracker.phase(), head);
        tracker.set(Phase::Busy);
        assert!(tracker.bytes_read(), "body bytes change nothing");
        assert_eq!(tracker.phase(), Phase::Busy);
        tracker.response_done();
        assert!(matches!(tracker.phase(), Phase::Idle { .. }));
        tracker.set(Phase::Upgraded);
        tracker.response_done();
        assert_eq!(tracker.phase(), Phase::Upgraded, "an upgrade is final");
        assert!(!tracker.bytes_read());
    }

    #[test]
    fn the_refusal_is_a_complete_response() {
        let r = refusal();
        let (head, body) = r.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 503 "));
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let body: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(body["error"], "too many open connections");
    }
}

//! Streamed response bodies: what an object's [`StreamLink`] yields, written to the client as
//! it comes, without buffering.
//!
//! The body ends when the object closes the stream or drops it, with an error (the connection
//! is cut mid-body) when the reader fell too far behind, and cleanly when the server begins to
//! shut down, so an endless stream does not hold the shutdown up. A client that goes away
//! makes hyper drop the body, and with it the link, which closes the stream for the object.

use axum::body::Body;
use rookery::StreamLink;
use tokio::sync::watch;

/// The response for `resp`, whose body is the stream behind `link`; `stop` turns true when the
/// server shuts down.
pub(crate) fn respond(
    resp: rookery::Response,
    link: StreamLink,
    stop: watch::Receiver<bool>,
) -> axum::response::Response {
    let (status, headers, _) = resp.into_parts();
    let chunks = futures_util::stream::unfold((link, stop), |(mut link, mut stop)| async move {
        let next = tokio::select! {
            next = link.next() => next,
            // A dropped sender means the gateway is gone: end as at shutdown.
            _ = stop.wait_for(|stop| *stop) => None,
        };
        next.map(|item| (item, (link, stop)))
    });
    let mut out = axum::response::Response::new(Body::from_stream(chunks));
    *out.status_mut() = status;
    *out.headers_mut() = headers;
    out
}

//! Sockets the runtime keeps: an accepted socket exists only while a connection serves it.

use std::sync::atomic::{AtomicUsize, Ordering};

use rookery::prelude::*;
use rookery::testing::{TestHarness, wait_until};
use rookery::{HeaderName, HeaderValue};

static CLOSES: AtomicUsize = AtomicUsize::new(0);

/// Accepts every upgrade, then answers as its path says.
struct Acceptor {
    state: ObjectState,
}

impl DurableObject for Acceptor {
    fn new(state: ObjectState, _env: Env) -> Self {
        Self { state }
    }

    async fn fetch(&mut self, req: Request) -> Result<Response> {
        let ws = self.state.accept_websocket(&req, &[])?;
        match req.path() {
            "/fail" => Err(Error::msg("fails after accepting")),
            "/forget" => Ok(Response::text("accepted, but not handed over")),
            "/twice" => {
                let first = Response::websocket(&ws);
                let second = Response::websocket(&ws);
                assert_eq!(second.status(), StatusCode::INTERNAL_SERVER_ERROR);
                Ok(first)
            }
            _ => Ok(Response::websocket(&ws)),
        }
    }

    async fn websocket_close(
        &mut self,
        _ws: WebSocket,
        code: u16,
        _reason: String,
        was_clean: bool,
    ) -> Result<()> {
        assert_eq!((code, was_clean), (1006, false));
        CLOSES.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

fn upgrade(path: &str) -> Request {
    Request::get(path).unwrap().with_header(
        HeaderName::from_static("upgrade"),
        HeaderValue::from_static("websocket"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_no_connection_takes_leaves_its_object() {
    let h = TestHarness::new::<Acceptor>().unwrap();
    let count = |name: &str| h.namespace().unwrap().get_by_name(name).websocket_count();

    // The handler fails after accepting: the socket goes with the turn.
    assert!(h.fetch("a", upgrade("/fail")).await.is_err());
    assert_eq!(count("a"), 0);
    // The handler answers without handing the socket over.
    let resp = h.fetch("a", upgrade("/forget")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(count("a"), 0);
    // The response is lost before a connection takes it (the client went away).
    let resp = h.fetch("a", upgrade("/")).await.unwrap();
    assert_eq!(count("a"), 1);
    drop(resp);
    assert_eq!(count("a"), 0);
    // A socket is handed over once.
    let mut resp = h.fetch("a", upgrade("/twice")).await.unwrap();
    let link = resp.take_socket_link().expect("handed over");
    assert_eq!(count("a"), 1);
    drop(link);
    assert_eq!(count("a"), 0);
    // The object hears of each as of a dropped connection.
    wait_until("every close reached the object", || {
        CLOSES.load(Ordering::SeqCst) == 4
    })
    .await;
}

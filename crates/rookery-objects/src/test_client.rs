//! An in-process connection to an object, for the objects' tests: what a transport would hold.

use std::collections::VecDeque;

use rookery::identity::{PERMISSIONS, USER_ID, USER_NAME};
use rookery::prelude::*;
use rookery::testing::{PATIENCE, TestHarness};
use rookery::{HeaderValue, Outgoing, SocketLink};
use serde_json::Value;

/// An in-process connection to an object: what a transport would hold.
pub(crate) struct Client {
    pub(crate) link: SocketLink,
    inbox: VecDeque<Outgoing>,
}

impl Client {
    /// Connects to the object `name` as `user` with `permissions`.
    pub(crate) async fn connect(h: &TestHarness, name: &str, user: &str, perms: &str) -> Self {
        let req = as_user(Request::get("/").unwrap(), user, perms).with_header(
            rookery::HeaderName::from_static("upgrade"),
            HeaderValue::from_static("websocket"),
        );
        let mut resp = h.fetch(name, req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
        Self {
            link: resp.take_socket_link().unwrap(),
            inbox: VecDeque::new(),
        }
    }

    /// Connects to the object `name` with an upgrade of `uri`, without identity headers.
    pub(crate) async fn connect_to(h: &TestHarness, name: &str, uri: &str) -> Self {
        let req = Request::get(uri).unwrap().with_header(
            rookery::HeaderName::from_static("upgrade"),
            HeaderValue::from_static("websocket"),
        );
        let mut resp = h.fetch(name, req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
        Self {
            link: resp.take_socket_link().unwrap(),
            inbox: VecDeque::new(),
        }
    }

    /// Sends a text message.
    pub(crate) async fn say(&self, text: &str) {
        self.link.incoming(WsMessage::text(text)).await.unwrap();
    }

    /// The next message the object sent, as JSON.
    pub(crate) async fn next(&mut self) -> Value {
        loop {
            if let Some(out) = self.inbox.pop_front() {
                match out {
                    Outgoing::Message(m) => return m.json_body().unwrap(),
                    Outgoing::Close(code, reason) => panic!("closed: {code} {reason}"),
                }
            }
            tokio::time::timeout(PATIENCE, self.link.ready())
                .await
                .expect("a message in time");
            let mut buf = Vec::new();
            self.link.take_outgoing(&mut buf);
            self.inbox.extend(buf);
        }
    }

    /// Ends the connection cleanly.
    pub(crate) async fn close(self) {
        self.link.closed(1000, String::new(), true).await;
    }
}

/// `req` with the gateway's identity headers for `user`.
pub(crate) fn as_user(req: Request, user: &str, perms: &str) -> Request {
    req.with_header(USER_ID, HeaderValue::from_str(user).unwrap())
        .with_header(
            USER_NAME,
            HeaderValue::from_str(&format!("{user} name")).unwrap(),
        )
        .with_header(PERMISSIONS, HeaderValue::from_str(perms).unwrap())
}

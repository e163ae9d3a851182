//! The built-in Waddle chat page (`[server] chat_page = true`, on in the demo): `web/chat.html`
//! at `/chat` and `web/waddle-client.js` at `/chat/waddle-client.js`, both part of the binary.
//! The page talks to the demo's Channel objects through `/channel/:id/websocket` with query
//! identities (docs/PROTOCOL.md).

use http::{Method, StatusCode, header};

use crate::reply::error_response;
use crate::static_asset::{self, Asset};

/// Where the page is served.
pub(crate) const CHAT_PATH: &str = "/chat";
/// Where the page's client is served.
const CLIENT_PATH: &str = "/chat/waddle-client.js";

const CHAT_HTML: &str = include_str!("../../../web/chat.html");
const CLIENT_JS: &str = include_str!("../../../web/waddle-client.js");

/// The page.
const PAGE: Asset = Asset {
    body: CHAT_HTML,
    content_type: "text/html; charset=utf-8",
};
/// Its client.
const CLIENT: Asset = Asset {
    body: CLIENT_JS,
    content_type: "text/javascript; charset=utf-8",
};

/// Whether `path` is one of the page's.
pub(crate) fn is_chat_path(path: &str) -> bool {
    path == CHAT_PATH || path.starts_with("/chat/")
}

/// Answers a request for one of the page's paths (HEAD arrives as GET).
pub(crate) fn serve(method: &Method, path: &str) -> axum::response::Response {
    let asset = match path {
        CHAT_PATH | "/chat/" => &PAGE,
        CLIENT_PATH => &CLIENT,
        _ => return error_response(StatusCode::NOT_FOUND, "Not found"),
    };
    static_asset::serve(method, asset, &[(header::CACHE_CONTROL, "no-cache")])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_and_its_client_are_served_with_their_types() {
        let page = serve(&Method::GET, "/chat");
        assert_eq!(page.status(), StatusCode::OK);
        assert_eq!(
            page.headers()[header::CONTENT_TYPE],
            "text/html; charset=utf-8"
        );
        let js = serve(&Method::GET, "/chat/waddle-client.js");
        assert_eq!(js.status(), StatusCode::OK);
        assert_eq!(
            js.headers()[header::CONTENT_TYPE],
            "text/javascript; charset=utf-8"
        );
        assert_eq!(
            serve(&Method::GET, "/chat/other").status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            serve(&Method::POST, "/chat").status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert!(is_chat_path("/chat") && is_chat_path("/chat/x") && !is_chat_path("/chatter"));
        assert!(CHAT_HTML.contains("/chat/waddle-client.js"));
        assert!(CLIENT_JS.contains("export class WaddleClient"));
    }
}

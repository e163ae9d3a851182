//! The admin page: `web/admin.html`, `web/admin.js` and `web/admin.css`, built into the binary
//! and served under `/_rookery/admin/ui/` while the admin API is on (`[server] admin_token`).
//!
//! The page itself needs no token (a browser's navigation cannot send a bearer header): it asks
//! for the admin token and sends it on its calls to the admin API, which checks it. Its headers
//! keep it from being cached, framed or made to run other scripts: `Cache-Control: no-store`,
//! `X-Frame-Options: DENY` and a Content-Security-Policy allowing only its own files.

use http::{HeaderName, HeaderValue, Method, StatusCode, header};

use crate::admin::ADMIN_PREFIX;
use crate::reply::error_response;
use crate::static_asset::{self, Asset};

/// Where the page is served.
pub(crate) const PAGE_PATH: &str = "/_rookery/admin/ui/";
/// The page's path without its slash, redirected to [`PAGE_PATH`].
const PAGE_PATH_BARE: &str = "/_rookery/admin/ui";
/// Where its script is served.
const SCRIPT_PATH: &str = "/_rookery/admin/ui/admin.js";
/// Where its style sheet is served.
const STYLE_PATH: &str = "/_rookery/admin/ui/admin.css";

/// The page.
const PAGE: Asset = Asset {
    body: include_str!("../../../web/admin.html"),
    content_type: "text/html; charset=utf-8",
};
/// Its script.
const SCRIPT: Asset = Asset {
    body: include_str!("../../../web/admin.js"),
    content_type: "text/javascript; charset=utf-8",
};
/// Its style sheet.
const STYLE: Asset = Asset {
    body: include_str!("../../../web/admin.css"),
    content_type: "text/css; charset=utf-8",
};

/// What the page's files may do: load only their own script and style, call only this server.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

/// The headers every file of the page is served with.
fn guard_headers() -> [(HeaderName, &'static str); 4] {
    [
        (header::CACHE_CONTROL, "no-store"),
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
    ]
}

/// Whether `path` is the page's: its files, or the two paths that lead to it
/// (`/_rookery/admin/` and `/_rookery/admin/ui`).
pub(crate) fn is_page_path(path: &str) -> bool {
    path == ADMIN_PREFIX || path == PAGE_PATH_BARE || path.starts_with(PAGE_PATH)
}

/// Answers a request for one of the page's paths (HEAD arrives as GET); `admin_on` is whether
/// the admin API is on, without which the page does not exist either.
pub(crate) fn serve(admin_on: bool, method: &Method, path: &str) -> axum::response::Response {
    if !admin_on {
        return error_response(StatusCode::NOT_FOUND, "Not found");
    }
    let asset = match path {
        ADMIN_PREFIX | PAGE_PATH_BARE => return redirect_to_page(method),
        PAGE_PATH => &PAGE,
        SCRIPT_PATH => &SCRIPT,
        STYLE_PATH => &STYLE,
        _ => return error_response(StatusCode::NOT_FOUND, "Not found"),
    };
    static_asset::serve(method, asset, &guard_headers())
}

/// The redirect from `/_rookery/admin/` or `/_rookery/admin/ui` to the page. Its `Location` is
/// relative (`ui/` from either), so it holds behind a proxy that serves Rookery under a prefix.
fn redirect_to_page(method: &Method) -> axum::response::Response {
    if method != Method::GET {
        return static_asset::method_not_allowed();
    }
    let mut response = axum::response::Response::new(axum::body::Body::empty());
    *response.status_mut() = StatusCode::PERMANENT_REDIRECT;
    response
        .headers_mut()
        .insert(header::LOCATION, HeaderValue::from_static("ui/"));
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_and_its_files_are_served_with_their_types_and_guards() {
        for (path, content_type) in [
            (PAGE_PATH, "text/html; charset=utf-8"),
            (SCRIPT_PATH, "text/javascript; charset=utf-8"),
            (STYLE_PATH, "text/css; charset=utf-8"),
        ] {
            let r = serve(true, &Method::GET, path);
            assert_eq!(r.status(), StatusCode::OK, "{path}");
            assert_eq!(r.headers()[header::CONTENT_TYPE], content_type, "{path}");
            assert_eq!(r.headers()[header::CACHE_CONTROL], "no-store", "{path}");
            assert_eq!(r.headers()[header::X_FRAME_OPTIONS], "DENY", "{path}");
            assert_eq!(
                r.headers()[header::CONTENT_SECURITY_POLICY],
                CONTENT_SECURITY_POLICY,
                "{path}"
            );
            assert_eq!(
                serve(true, &Method::POST, path).status(),
                StatusCode::METHOD_NOT_ALLOWED
            );
            assert_eq!(
                serve(false, &Method::GET, path).status(),
                StatusCode::NOT_FOUND
            );
        }
        for path in [ADMIN_PREFIX, PAGE_PATH_BARE] {
            let r = serve(true, &Method::GET, path);
            assert_eq!(r.status(), StatusCode::PERMANENT_REDIRECT, "{path}");
            assert_eq!(r.headers()[header::LOCATION], "ui/");
        }
        assert_eq!(
            serve(true, &Method::GET, "/_rookery/admin/ui/other.js").status(),
            StatusCode::NOT_FOUND
        );
        assert!(is_page_path("/_rookery/admin/") && is_page_path("/_rookery/admin/ui"));
        assert!(is_page_path("/_rookery/admin/ui/admin.js"));
        assert!(!is_page_path("/_rookery/admin/classes") && !is_page_path("/_rookery/admin/uix"));
        // The page loads its own files, relative to itself: no inline script or style.
        assert!(PAGE.body.contains("src=\"admin.js\"") && PAGE.body.contains("href=\"admin.css\""));
        assert!(!PAGE.body.contains("<script>") && !PAGE.body.contains("<style"));
        assert!(!SCRIPT.body.contains("innerHTML"));
    }
}

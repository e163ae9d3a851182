//! Files built into the binary and served as they are (the chat page, the admin page): GET and
//! HEAD only, with their content type and the headers their page asks for.

use axum::body::Body;
use http::{HeaderName, HeaderValue, Method, StatusCode, header};

use crate::reply::error_response;

/// One file built into the binary.
pub(crate) struct Asset {
    /// Its content.
    pub(crate) body: &'static str,
    /// Its `Content-Type`.
    pub(crate) content_type: &'static str,
}

/// Answers `method` on `asset`, adding `headers`: 405 with `Allow` for anything but GET (HEAD
/// arrives as GET).
pub(crate) fn serve(
    method: &Method,
    asset: &Asset,
    headers: &[(HeaderName, &'static str)],
) -> axum::response::Response {
    if method != Method::GET {
        return method_not_allowed();
    }
    let mut response = axum::response::Response::new(Body::from(asset.body));
    let out = response.headers_mut();
    out.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    out.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    for (name, value) in headers {
        out.insert(name.clone(), HeaderValue::from_static(value));
    }
    response
}

/// The 405 for a method other than GET or HEAD, with its `Allow`.
pub(crate) fn method_not_allowed() -> axum::response::Response {
    let mut response = error_response(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed");
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    const ASSET: Asset = Asset {
        body: "body { }",
        content_type: "text/css; charset=utf-8",
    };

    #[test]
    fn get_serves_the_asset_with_its_headers_and_other_methods_are_405() {
        let ok = serve(&Method::GET, &ASSET, &[(header::CACHE_CONTROL, "no-store")]);
        assert_eq!(ok.status(), StatusCode::OK);
        assert_eq!(
            ok.headers()[header::CONTENT_TYPE],
            "text/css; charset=utf-8"
        );
        assert_eq!(ok.headers()[header::CACHE_CONTROL], "no-store");
        assert_eq!(ok.headers()[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        for method in [Method::POST, Method::PUT, Method::DELETE] {
            let refused = serve(&method, &ASSET, &[]);
            assert_eq!(refused.status(), StatusCode::METHOD_NOT_ALLOWED);
            assert_eq!(refused.headers()[header::ALLOW], "GET, HEAD");
        }
    }
}

//! The admin page (`/_rookery/admin/ui/`): served without a token while the admin API is on,
//! with its content types and guarding headers; 404 while the API is off; GET and HEAD only.
//! The admin token also opens the runtime's figures the page shows. The page's behaviour in a
//! browser is tests/browser/admin.mjs's.

mod common;

use common::{PROBE_CONFIG, TestServer, client};
use reqwest::header;

const TOKEN: &str = "admin-page-test-token-0123";

/// The probe configuration with the admin API on, and `[auth]` tokens without a stats token, so
/// that the runtime's endpoints are closed to all but the admin token.
fn config() -> String {
    PROBE_CONFIG.replace(
        "[server]\n",
        &format!("[server]\nadmin_token = \"{TOKEN}\"\n"),
    ) + "\n[auth.tokens]\n\"user-token\" = { user = \"u1\" }\n"
}

/// A client that shows redirects instead of following them.
fn no_redirects() -> reqwest::Client {
    rookery_server::outbound::install_crypto_provider();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(common::PATIENCE)
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_is_served_without_a_token_while_the_admin_api_is_on() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&config(), dir.path()).await;
    let c = client();
    for (path, content_type, marker) in [
        (
            "/_rookery/admin/ui/",
            "text/html; charset=utf-8",
            "<title>Rookery admin</title>",
        ),
        (
            "/_rookery/admin/ui/admin.js",
            "text/javascript; charset=utf-8",
            "sessionStorage",
        ),
        (
            "/_rookery/admin/ui/admin.css",
            "text/css; charset=utf-8",
            "#metrics",
        ),
    ] {
        let r = c.get(server.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let h = r.headers();
        assert_eq!(h[header::CONTENT_TYPE], content_type, "{path}");
        assert_eq!(h[header::CACHE_CONTROL], "no-store", "{path}");
        assert_eq!(h[header::X_FRAME_OPTIONS], "DENY", "{path}");
        assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff", "{path}");
        let csp = h[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
        assert!(
            csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
            "{path}: {csp}"
        );
        assert!(!csp.contains("unsafe-inline"), "{path}: {csp}");
        assert!(r.text().await.unwrap().contains(marker), "{path}");

        let head = c.head(server.url(path)).send().await.unwrap();
        assert_eq!(head.status(), 200, "HEAD {path}");
        assert_eq!(head.headers()[header::CONTENT_TYPE], content_type);
        assert!(head.text().await.unwrap().is_empty());

        for method in [reqwest::Method::POST, reqwest::Method::DELETE] {
            let r = c
                .request(method.clone(), server.url(path))
                .bearer_auth(TOKEN)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 405, "{method} {path}");
            assert_eq!(r.headers()[header::ALLOW], "GET, HEAD");
        }
    }
    assert_eq!(
        c.get(server.url("/_rookery/admin/ui/nothing.js"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );

    // The two ways in lead to the page, relative to where they are.
    for path in ["/_rookery/admin/", "/_rookery/admin/ui"] {
        let r = no_redirects().get(server.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 308, "{path}");
        assert_eq!(r.headers()[header::LOCATION], "ui/", "{path}");
        let followed = c.get(server.url(path)).send().await.unwrap();
        assert_eq!(followed.url().path(), "/_rookery/admin/ui/", "{path}");
        assert_eq!(followed.status(), 200);
    }

    // The API itself still needs the token.
    let r = c
        .get(server.url("/_rookery/admin/classes"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_token_opens_the_runtime_figures() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&config(), dir.path()).await;
    let c = client();
    for path in ["/_rookery/stats", "/metrics"] {
        let closed = c.get(server.url(path)).send().await.unwrap();
        assert_eq!(closed.status(), 401, "{path}");
        let user = c
            .get(server.url(path))
            .bearer_auth("user-token")
            .send()
            .await
            .unwrap();
        assert_eq!(user.status(), 401, "{path}");
        let admin = c
            .get(server.url(path))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(admin.status(), 200, "{path}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_admin_api_there_is_no_page() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(PROBE_CONFIG, dir.path()).await;
    let c = client();
    for path in [
        "/_rookery/admin/",
        "/_rookery/admin/ui",
        "/_rookery/admin/ui/",
        "/_rookery/admin/ui/admin.js",
        "/_rookery/admin/ui/admin.css",
    ] {
        let r = no_redirects().get(server.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 404, "{path}");
        let r = c
            .post(server.url(path))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "POST {path}");
    }
    server.stop().await;
}

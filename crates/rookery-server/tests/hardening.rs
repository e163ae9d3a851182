//! The gateway against hostile and careless clients.

mod common;

use common::{TestServer, client};

// ---- 8. The client address behind a proxy ----

const RATE_CONFIG: &str = r#"
[server]
client_ip_header = "X-Forwarded-For"

[durable_objects]
bindings = [{ name = "RATE_LIMITER", class_name = "RateLimiter" }]

[[migrations]]
tag = "v1"
new_sqlite_classes = ["RateLimiter"]

[[routes]]
path = "/api"
rate_limit = { binding = "RATE_LIMITER", limit = 1, window_ms = 600000 }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxys_address_keys_the_rate_limit() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(RATE_CONFIG, dir.path()).await;
    let c = client();
    let status = |lines: &'static [&'static str]| {
        let mut req = c.get(server.url("/api/x"));
        for l in lines {
            req = req.header("x-forwarded-for", *l);
        }
        async move { req.send().await.unwrap().status().as_u16() }
    };
    // A client's own line comes first; the proxy appends the address it saw last.
    assert_eq!(status(&["6.6.6.1", "9.9.9.9"]).await, 200);
    assert_eq!(
        status(&["6.6.6.2", "9.9.9.9"]).await,
        429,
        "a forged first line does not buy a fresh budget"
    );
    assert_eq!(status(&["9.9.9.9, 8.8.8.8"]).await, 200);
    assert_eq!(status(&["8.8.8.8"]).await, 429);
    // An IPv4-mapped address is the IPv4 client.
    assert_eq!(status(&["::ffff:7.7.7.7"]).await, 200);
    assert_eq!(status(&["7.7.7.7"]).await, 429);
    // IPv6 clients share a budget per /64.
    assert_eq!(status(&["2001:db8:1:2::1"]).await, 200);
    assert_eq!(status(&["2001:db8:1:2:ffff:ffff:ffff:fffe"]).await, 429);
    assert_eq!(status(&["2001:db8:1:3::1"]).await, 200);
    server.stop().await;
}

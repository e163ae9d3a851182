//! `[auth.jwt]` over real connections: HS256, RS256 and EdDSA tokens (keys from a secret file,
//! PEM files and a JWKS file), `exp`/`nbf`/`aud`/`iss` enforced, the identity mapped from the
//! claims, and a browser's token offered as the WebSocket subprotocol and echoed back.

mod common;

use std::path::Path;

use common::ws::{Ws, next_json};
use common::{PATIENCE, TestServer, client};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const KEYS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/keys");
const SECRET: &[u8] = b"a test secret of at least thirty-two bytes!";

fn key_file(name: &str) -> String {
    format!("{KEYS}/{name}")
}

/// A Channel behind `[auth.jwt]` with every kind of key; no query identities.
async fn start(dir: &Path) -> TestServer {
    let secret = dir.join("hs256.key");
    std::fs::write(&secret, [SECRET, b"\n"].concat()).unwrap();
    let config = format!(
        r#"
[auth.jwt]
hs256_secret_file = "{secret}"
eddsa_public_key_file = "{ed}"
jwks_file = "{jwks}"
issuer = "https://auth.example"
audience = "waddle"
leeway_seconds = 5

[durable_objects]
bindings = [{{ name = "CHANNEL", class_name = "Channel" }}]

[[migrations]]
tag = "v1"
new_sqlite_classes = ["Channel"]

[[routes]]
path = "/channel/:id"
binding = "CHANNEL"
name_from = "id"
"#,
        secret = secret.display(),
        ed = key_file("ed25519-public.pem"),
        jwks = key_file("jwks.json"),
    );
    TestServer::start(&config, &dir.join("data")).await
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Claims that pass every check, for `user`.
fn claims(user: &str) -> Value {
    json!({
        "sub": user,
        "name": format!("Name of {user}"),
        "permissions": ["read", "write"],
        "iss": "https://auth.example",
        "aud": "waddle",
        "exp": now() + 600,
        "iat": now(),
    })
}

fn hs256(claims: &Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(SECRET),
    )
    .unwrap()
}

fn rs256(claims: &Value, private_key: &str, kid: Option<&str>) -> String {
    let pem = std::fs::read(key_file(private_key)).unwrap();
    let mut header = Header::new(Algorithm::RS256);
    header.kid = kid.map(str::to_string);
    encode(&header, claims, &EncodingKey::from_rsa_pem(&pem).unwrap()).unwrap()
}

fn eddsa(claims: &Value) -> String {
    let pem = std::fs::read(key_file("ed25519-private.pem")).unwrap();
    encode(
        &Header::new(Algorithm::EdDSA),
        claims,
        &EncodingKey::from_ed_pem(&pem).unwrap(),
    )
    .unwrap()
}

/// `POST /channel/c1/message` with `token` as bearer: the status and the body.
async fn post(server: &TestServer, token: &str) -> (u16, Value) {
    let r = client()
        .post(server.url("/channel/c1/message"))
        .bearer_auth(token)
        .json(&json!({"content": "hi"}))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// The author of the last message of channel c1, as `GET /messages` (with `token`) shows it.
async fn last_author(server: &TestServer, token: &str) -> (String, String) {
    let page: Value = client()
        .get(server.url("/channel/c1/messages?limit=500"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let last = page["messages"].as_array().unwrap().last().unwrap().clone();
    (
        last["userId"].as_str().unwrap().to_string(),
        last["username"].as_str().unwrap().to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_jwts_of_every_algorithm_set_the_identity() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let cases = [
        ("hs", hs256(&claims("hs"))),
        (
            "rsa1",
            rs256(&claims("rsa1"), "rsa-private.pem", Some("rsa-1")),
        ),
        // The second JWKS key, picked by its kid.
        (
            "rsa2",
            rs256(&claims("rsa2"), "rsa2-private.pem", Some("rsa-2")),
        ),
        // Without a kid every RS256 key is tried.
        (
            "rsa-nokid",
            rs256(&claims("rsa-nokid"), "rsa2-private.pem", None),
        ),
        ("ed", eddsa(&claims("ed"))),
    ];
    for (user, token) in &cases {
        let (status, body) = post(&server, token).await;
        assert_eq!(status, 200, "{user}: {body}");
        assert_eq!(
            last_author(&server, token).await,
            (user.to_string(), format!("Name of {user}"))
        );
    }

    // Permissions come from the claim: without `write`, posting is forbidden.
    let mut read_only = claims("reader");
    read_only["permissions"] = json!("read");
    assert_eq!(post(&server, &hs256(&read_only)).await.0, 403);
    // An OAuth-style scope string works too.
    let mut scoped = claims("scoped");
    scoped["permissions"] = json!("read write");
    assert_eq!(post(&server, &hs256(&scoped)).await.0, 200);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_failing_a_check_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let with = |field: &str, value: Value| {
        let mut c = claims("u");
        if value.is_null() {
            c.as_object_mut().unwrap().remove(field);
        } else {
            c[field] = value;
        }
        c
    };
    let refused = [
        ("expired", hs256(&with("exp", json!(now() - 60)))),
        ("no exp", hs256(&with("exp", Value::Null))),
        ("not yet valid", hs256(&with("nbf", json!(now() + 600)))),
        ("wrong audience", hs256(&with("aud", json!("other")))),
        ("no audience", hs256(&with("aud", Value::Null))),
        (
            "wrong issuer",
            hs256(&with("iss", json!("https://evil.example"))),
        ),
        ("no user", hs256(&with("sub", Value::Null))),
        (
            "key of another kid",
            rs256(&claims("u"), "rsa-private.pem", Some("rsa-2")),
        ),
        ("unknown RSA key", {
            // Signed with the right key, then the signature swapped for another token's.
            let good = rs256(&claims("u"), "rsa-private.pem", Some("rsa-1"));
            let other = rs256(&claims("v"), "rsa2-private.pem", Some("rsa-1"));
            let sig = other.rsplit('.').next().unwrap();
            format!("{}.{sig}", good.rsplit_once('.').unwrap().0)
        }),
        ("HS256 signed with another secret", {
            encode(
                &Header::new(Algorithm::HS256),
                &claims("u"),
                &EncodingKey::from_secret(b"another secret, also thirty-two bytes long"),
            )
            .unwrap()
        }),
        ("alg none", {
            let b64 = |v: &Value| {
                use std::fmt::Write;
                // base64url without padding, by hand: the test must not trust the crate here.
                let bytes = v.to_string().into_bytes();
                let table = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
                let mut out = String::new();
                for chunk in bytes.chunks(3) {
                    let n = chunk.iter().fold(0u32, |n, b| (n << 8) | u32::from(*b))
                        << (8 * (3 - chunk.len()));
                    for i in 0..=chunk.len() {
                        let _ = write!(
                            out,
                            "{}",
                            table[((n >> (18 - 6 * i)) & 63) as usize] as char
                        );
                    }
                }
                out
            };
            format!(
                "{}.{}.",
                b64(&json!({"alg": "none", "typ": "JWT"})),
                b64(&claims("u"))
            )
        }),
        ("not a token", "garbage".to_string()),
    ];
    for (why, token) in &refused {
        let (status, body) = post(&server, token).await;
        assert_eq!(
            (status, &body),
            (401, &json!({"error": "Unauthorized"})),
            "{why}"
        );
    }
    // Within the leeway, an expiry just past still passes.
    assert_eq!(
        post(&server, &hs256(&with("exp", json!(now() - 1))))
            .await
            .0,
        200
    );
    server.stop().await;
}

/// Opens a WebSocket to channel c1 offering `protocols`: the socket and the chosen protocol,
/// or the HTTP status of the refusal.
async fn open(server: &TestServer, protocols: &str) -> Result<(Ws, Option<String>), u16> {
    let mut req = format!("ws://{}/channel/c1/websocket", server.addr)
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("sec-websocket-protocol", protocols.parse().unwrap());
    match tokio::time::timeout(PATIENCE, tokio_tungstenite::connect_async(req))
        .await
        .expect("an answer in time")
    {
        Ok((ws, resp)) => Ok((
            ws,
            resp.headers()
                .get("sec-websocket-protocol")
                .map(|v| v.to_str().unwrap().to_string()),
        )),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
        Err(e) => panic!("unexpected failure: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_offers_its_jwt_as_the_subprotocol_and_gets_it_back() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;

    // Seed 000's client: `new WebSocket(url, [token])`.
    let token = eddsa(&claims("ann"));
    let (mut ws, chosen) = open(&server, &token).await.expect("accepted");
    assert_eq!(chosen.as_deref(), Some(token.as_str()));
    let initial = next_json(&mut ws).await;
    assert_eq!(
        initial["onlineUsers"][0]["username"], "Name of ann",
        "{initial}"
    );

    // Offered after another protocol, the token is still found and is the one chosen.
    let token = hs256(&claims("bob"));
    let (_ws, chosen) = open(&server, &format!("chat, {token}"))
        .await
        .expect("accepted");
    assert_eq!(chosen.as_deref(), Some(token.as_str()));

    // A JWT that fails is refused before the handshake; no credential at all is a 401 too.
    let mut expired = claims("eve");
    expired["exp"] = json!(now() - 600);
    assert_eq!(open(&server, &hs256(&expired)).await.err(), Some(401));
    assert_eq!(open(&server, "chat").await.err(), Some(401));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_key_files_stop_the_server_from_starting() {
    let dir = tempfile::tempdir().unwrap();
    let short = dir.path().join("short.key");
    std::fs::write(&short, "too short").unwrap();
    for (auth, expected) in [
        ("[auth.jwt]\n", "needs a key"),
        (
            &*format!("[auth.jwt]\nhs256_secret_file = \"{}\"\n", short.display()),
            "at least 32 bytes",
        ),
        (
            &*format!(
                "[auth.jwt]\njwks_file = \"{}\"\n",
                dir.path().join("none.json").display()
            ),
            "cannot read",
        ),
        (
            &*format!(
                "[auth.jwt]\nrs256_public_key_file = \"{}\"\n",
                key_file("jwks.json")
            ),
            "jwks.json",
        ),
    ] {
        let mut config = rookery_server::Config::parse("t.toml", auth).expect("parses");
        config.server.data_dir = dir.path().join("data");
        let err = match rookery_server::Server::new(&config, rookery_objects::builtin_classes()) {
            Ok(_) => panic!("{auth}: started"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains(expected), "{auth}: {err}");
    }
}

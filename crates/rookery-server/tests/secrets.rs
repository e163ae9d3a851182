//! Vars and secrets: `[vars]` and a `.dev.vars` secrets file reach objects through `Env`; a
//! secret's value never shows in logs, error bodies, debug output or `/_rookery/stats`.

mod common;

use common::{TestServer, captured_logs, client};
use rookery::Classes;
use rookery::prelude::*;
use rookery_server::{Config, STATS_PATH};

const SECRET: &str = "sk-live-4f7c1e9a-do-not-log";

/// Uses a secret, and mishandles it in every way an author might.
struct Vault {
    env: Env,
}

impl DurableObject for Vault {
    fn new(_state: ObjectState, env: Env) -> Self {
        Self { env }
    }

    async fn fetch(&mut self, req: Request) -> Result<Response> {
        let key = self
            .env
            .secret("API_KEY")
            .ok_or_else(|| Error::msg("no API_KEY secret"))?;
        match req.path() {
            "/var" => Ok(Response::text(self.env.var("GREETING").unwrap_or("none"))),
            "/limit" => Ok(Response::text(self.env.var("LIMIT").unwrap_or("none"))),
            "/check" => {
                let presented = req.query_raw("token").unwrap_or_default();
                Ok(Response::text(key.matches(presented).to_string()))
            }
            "/log" => {
                tracing::warn!(key = ?key, shown = %key, "about to call the API with {key}");
                Ok(Response::text(format!("using {key} and {key:?}")))
            }
            "/fail" => Err(Error::msg(format!("the API refused key {key} ({key:?})"))),
            "/bad-request" => Err(Error::bad_request(format!("key {key} is wrong"))),
            _ => Ok(Response::not_found()),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_reach_objects_and_nothing_else() {
    let logs = captured_logs();
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join(".dev.vars");
    std::fs::write(&secrets, format!("# for the vault\nAPI_KEY=\"{SECRET}\"\n")).unwrap();
    let text = format!(
        r#"
[server]
secrets_file = {secrets:?}

[vars]
GREETING = "hello"
LIMIT = 10

[durable_objects]
bindings = [{{ name = "VAULT", class_name = "Vault" }}]

[[migrations]]
tag = "v1"
new_sqlite_classes = ["Vault"]

[[routes]]
path = "/vault/:name"
binding = "VAULT"
name_from = "name"
"#
    );
    let mut config = Config::parse("secrets.toml", &text).unwrap();
    config.server.data_dir = dir.path().join("data");
    assert!(!format!("{config:?}").contains(SECRET));
    let server = TestServer::start_with(&config, Classes::new().with::<Vault>("Vault")).await;
    let get = |path: &str| {
        let url = server.url(path);
        async move {
            let resp = client().get(url).send().await.unwrap();
            (resp.status(), resp.text().await.unwrap())
        }
    };
    assert_eq!(get("/vault/v/var").await.1, "hello");
    assert_eq!(get("/vault/v/limit").await.1, "10");
    assert_eq!(
        get(&format!("/vault/v/check?token={SECRET}")).await.1,
        "true"
    );
    assert_eq!(get("/vault/v/check?token=guess").await.1, "false");
    let mut bodies = Vec::new();
    for path in [
        "/vault/v/log",
        "/vault/v/fail",
        "/vault/v/bad-request",
        STATS_PATH,
    ] {
        let (status, body) = get(path).await;
        bodies.push(format!("{path} {status} {body}"));
    }
    let bodies = bodies.join("\n");
    assert!(
        bodies.contains("using [redacted] and Secret([redacted])"),
        "{bodies}"
    );
    assert!(bodies.contains("key [redacted] is wrong"), "{bodies}");
    assert!(!bodies.contains(SECRET), "{bodies}");
    let logged = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    assert!(
        logged.contains("about to call the API with [redacted]"),
        "{logged}"
    );
    assert!(
        logged.contains("the API refused key [redacted] (Secret([redacted]))"),
        "{logged}"
    );
    assert!(!logged.contains(SECRET), "{logged}");
    server.stop().await;

    // A bad line of the secrets file is named without its value.
    std::fs::write(&secrets, format!("API_KEY=\"{SECRET}\n")).unwrap();
    let err = match rookery_server::Server::new(&config, Classes::new().with::<Vault>("Vault")) {
        Ok(_) => panic!("an unreadable secrets file must stop the start"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains(".dev.vars:1"), "{err}");
    assert!(!err.contains(SECRET), "{err}");
}

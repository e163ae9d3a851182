//! The admin API's object operations (`/_rookery/admin/classes/...`): listing classes and
//! objects, inspecting one (entries, tables, a read-only query), deleting one (for good, across
//! a restart), running its alarm now; and its refusals.

mod common;

use std::time::Duration;

use common::{PROBE_CONFIG, TestServer, client, ws};
use futures_util::StreamExt;
use serde_json::{Value, json};

const TOKEN: &str = "admin-api-test-token-0123";

/// The probe configuration with the admin API on and the Metrics class (it sets an alarm).
fn config() -> String {
    PROBE_CONFIG
        .replace(
            "[server]\n",
            &format!("[server]\nadmin_token = \"{TOKEN}\"\n"),
        )
        .replace(
            "{ name = \"COUNTER\", class_name = \"Counter\" },",
            "{ name = \"COUNTER\", class_name = \"Counter\" },\n  { name = \"METRICS\", class_name = \"Metrics\" },",
        )
        .replace("\"ChatRoom\"]", "\"ChatRoom\", \"Metrics\"]")
        + "\n[[routes]]\npath = \"/metrics-obj/:name\"\nbinding = \"METRICS\"\nname_from = \"name\"\n"
}

async fn admin(method: reqwest::Method, server: &TestServer, path: &str) -> (u16, Value) {
    admin_with(method, server, path, None).await
}

async fn admin_with(
    method: reqwest::Method,
    server: &TestServer,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = client()
        .request(method, server.url(&format!("/_rookery/admin/{path}")))
        .bearer_auth(TOKEN);
    if let Some(body) = body {
        req = req.json(&body);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

async fn get(server: &TestServer, path: &str) -> Value {
    client()
        .get(server.url(path))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn post(server: &TestServer, path: &str, body: &str) -> Value {
    let resp = client()
        .post(server.url(path))
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{path}: {}", resp.status());
    resp.json().await.unwrap()
}

fn names(page: &Value) -> Vec<String> {
    let mut names: Vec<String> = page["objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["name"].as_str().unwrap_or("?").to_string())
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_are_listed_inspected_queried_and_their_alarm_run() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&config(), dir.path()).await;
    for name in ["alpha-1", "alpha-2", "beta-1"] {
        post(
            &server,
            &format!("/probe/{name}/put?key=greeting&value=hi-{name}"),
            "",
        )
        .await;
    }
    post(
        &server,
        "/probe/alpha-1/sql",
        "CREATE TABLE notes (n INTEGER); INSERT INTO notes VALUES (1), (2), (3)",
    )
    .await;
    for k in 0..5 {
        post(
            &server,
            &format!("/probe/alpha-1/put?key=k{k}&value=v{k}"),
            "",
        )
        .await;
    }

    let (status, classes) = admin(reqwest::Method::GET, &server, "classes").await;
    assert_eq!(status, 200, "{classes}");
    let probe = classes["classes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "Probe")
        .expect("Probe is listed");
    assert_eq!(probe["bindings"], json!(["PROBE"]));

    // By binding or by class name; every object that stores something, with its name.
    let (status, page) = admin(reqwest::Method::GET, &server, "classes/PROBE/objects").await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(names(&page), ["alpha-1", "alpha-2", "beta-1"]);
    assert!(page["cursor"].is_null());
    let one = &page["objects"][0];
    assert!(one["sizeBytes"].as_u64().unwrap() > 0, "{one}");
    assert_eq!(one["sockets"], 0);
    assert_eq!(one["id"].as_str().unwrap().len(), 64);

    // Filtered by name prefix, and paged with a cursor.
    let (_, alphas) = admin(
        reqwest::Method::GET,
        &server,
        "classes/Probe/objects?prefix=alpha-",
    )
    .await;
    assert_eq!(names(&alphas), ["alpha-1", "alpha-2"]);
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("classes/PROBE/objects?limit=2&cursor={c}"),
            None => "classes/PROBE/objects?limit=2".to_string(),
        };
        let (status, page) = admin(reqwest::Method::GET, &server, &path).await;
        assert_eq!(status, 200, "{page}");
        assert!(page["objects"].as_array().unwrap().len() <= 2);
        seen.extend(names(&page));
        match page["cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    seen.sort();
    assert_eq!(seen, ["alpha-1", "alpha-2", "beta-1"]);

    // One object: its tables, and its entries paged.
    let (status, detail) = admin(
        reqwest::Method::GET,
        &server,
        "classes/PROBE/objects/alpha-1",
    )
    .await;
    assert_eq!(status, 200, "{detail}");
    assert_eq!(detail["name"], "alpha-1");
    assert_eq!(detail["tables"][0]["name"], "notes");
    assert_eq!(detail["tables"][0]["rows"], 3);
    let (status, kv) = admin(
        reqwest::Method::GET,
        &server,
        "classes/PROBE/objects/alpha-1/kv?limit=4",
    )
    .await;
    assert_eq!(status, 200, "{kv}");
    assert_eq!(kv["entries"].as_array().unwrap().len(), 4);
    assert_eq!(
        kv["entries"][0],
        json!({ "key": "greeting", "value": "hi-alpha-1" })
    );
    let next = kv["cursor"].as_str().expect("more entries").to_string();
    let (_, rest) = admin(
        reqwest::Method::GET,
        &server,
        &format!("classes/PROBE/objects/alpha-1/kv?limit=4&cursor={next}"),
    )
    .await;
    assert_eq!(rest["entries"].as_array().unwrap().len(), 2);
    assert!(rest["cursor"].is_null());
    // By id as well as by name.
    let id = detail["id"].as_str().unwrap().to_string();
    let (status, by_id) = admin(
        reqwest::Method::GET,
        &server,
        &format!("classes/PROBE/objects/{id}"),
    )
    .await;
    assert_eq!(status, 200, "{by_id}");
    assert_eq!(by_id["id"], id.as_str());

    // A read-only query: reads answer; writes, the runtime's tables and ATTACH are refused;
    // a query that would run for ever is stopped.
    let query = |sql: &str| {
        admin_with(
            reqwest::Method::POST,
            &server,
            "classes/PROBE/objects/alpha-1/query",
            Some(json!({ "sql": sql })),
        )
    };
    let (status, rows) = query("SELECT sum(n) AS total FROM notes").await;
    assert_eq!(status, 200, "{rows}");
    assert_eq!(rows, json!({ "columns": ["total"], "rows": [[6]] }));
    for sql in [
        "INSERT INTO notes VALUES (4)",
        "DELETE FROM notes",
        "DROP TABLE notes",
        "SELECT * FROM _rookery_kv",
        "ATTACH DATABASE '/tmp/x.sqlite' AS x",
        "PRAGMA journal_mode = DELETE",
    ] {
        let (status, answer) = query(sql).await;
        assert_eq!(status, 400, "{sql}: {answer}");
    }
    let (status, answer) = query(
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c",
    )
    .await;
    assert_eq!(status, 400, "{answer}");
    assert!(answer.to_string().contains("stopped"), "{answer}");
    let (_, rows) = query("SELECT count(*) FROM notes").await;
    assert_eq!(rows["rows"], json!([[3]]), "nothing was written");
    // The object itself still works.
    assert_eq!(
        get(&server, "/probe/alpha-1/get?key=k0").await["value"],
        "v0"
    );

    // Run an alarm now: the Metrics object set one when it recorded.
    post(
        &server,
        "/metrics-obj/m1/record",
        r#"{"name": "latency", "value": 3}"#,
    )
    .await;
    // The index takes the alarm once its commit is durable: the listing shows it then.
    let listed = tokio::time::timeout(common::PATIENCE, async {
        loop {
            let (_, page) = admin(reqwest::Method::GET, &server, "classes/METRICS/objects").await;
            if page["objects"][0]["alarmMs"].as_i64().is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(listed.is_ok(), "the alarm is listed");
    let (status, ran) = admin(
        reqwest::Method::POST,
        &server,
        "classes/METRICS/objects/m1/alarm",
    )
    .await;
    assert_eq!(status, 200, "{ran}");
    assert_eq!(ran["outcome"], "succeeded");
    let (status, ran) = admin(
        reqwest::Method::POST,
        &server,
        "classes/PROBE/objects/alpha-1/alarm",
    )
    .await;
    assert_eq!((status, &ran["outcome"]), (200, &json!("notSet")));

    // Refusals.
    for (method, path, want) in [
        (reqwest::Method::GET, "classes/Nope/objects", 404),
        (
            reqwest::Method::GET,
            "classes/PROBE/objects/never-written",
            404,
        ),
        (
            reqwest::Method::DELETE,
            "classes/PROBE/objects/never-written",
            404,
        ),
        (reqwest::Method::GET, "classes/PROBE/objects?limit=0", 400),
        (reqwest::Method::GET, "classes/PROBE/objects?limit=x", 400),
        (reqwest::Method::GET, "classes/PROBE/objects?cursor=zz", 400),
        (reqwest::Method::GET, "classes/PROBE/whatever", 404),
        (reqwest::Method::POST, "classes/PROBE/objects", 405),
    ] {
        let (status, answer) = admin(method.clone(), &server, path).await;
        assert_eq!(status, want, "{method} {path}: {answer}");
    }
    let (status, answer) = admin_with(
        reqwest::Method::POST,
        &server,
        "classes/PROBE/objects/alpha-1/query",
        Some(json!({ "query": "SELECT 1" })),
    )
    .await;
    assert_eq!(status, 400, "{answer}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_needs_its_token() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&config(), dir.path()).await;
    post(&server, "/probe/secret/put?key=a&value=b", "").await;
    for path in [
        "classes",
        "classes/PROBE/objects",
        "classes/PROBE/objects/secret",
        "classes/PROBE/objects/secret/kv",
    ] {
        let url = server.url(&format!("/_rookery/admin/{path}"));
        let none = client().get(&url).send().await.unwrap();
        assert_eq!(none.status(), 401, "{path}");
        let wrong = client()
            .get(&url)
            .bearer_auth("not-the-admin-token-at-all")
            .send()
            .await
            .unwrap();
        assert_eq!(wrong.status(), 401, "{path}");
    }
    let delete = client()
        .delete(server.url("/_rookery/admin/classes/PROBE/objects/secret"))
        .send()
        .await
        .unwrap();
    assert_eq!(delete.status(), 401);
    let backups = tempfile::tempdir().unwrap();
    for (path, body) in [
        (
            "classes/PROBE/objects/secret/query",
            json!({ "sql": "SELECT 1" }),
        ),
        ("classes/PROBE/objects/secret/alarm", json!({})),
        (
            "backup",
            json!({ "dir": backups.path().join("b").to_str().unwrap() }),
        ),
    ] {
        let r = client()
            .post(server.url(&format!("/_rookery/admin/{path}")))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{path}");
    }
    assert!(
        !backups.path().join("b").exists(),
        "a refused backup writes nothing"
    );
    assert_eq!(
        get(&server, "/probe/secret/get?key=a").await["value"],
        "b",
        "a refused delete deletes nothing"
    );
    server.stop().await;

    // Without an admin token, the API does not exist.
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(PROBE_CONFIG, dir.path()).await;
    let r = client()
        .get(server.url("/_rookery/admin/classes"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_object_loses_its_sockets_and_stays_deleted_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&config(), dir.path()).await;
    post(&server, "/probe/doomed/put?key=a&value=1", "").await;
    post(
        &server,
        "/probe/doomed/sql",
        "CREATE TABLE t (x); INSERT INTO t VALUES (1)",
    )
    .await;
    post(&server, "/probe/kept/put?key=a&value=2", "").await;
    // A hibernatable WebSocket on an Echo object that stores something.
    let mut socket = ws::connect(&server, "/echo/doomed-echo/?tag=t").await;
    use futures_util::SinkExt;
    socket
        .send(tokio_tungstenite::tungstenite::Message::Text(
            "whoami".into(),
        ))
        .await
        .unwrap();
    let _ = ws::next_json(&mut socket).await;
    let (_, page) = admin(reqwest::Method::GET, &server, "classes/ECHO/objects").await;
    assert_eq!(page["objects"][0]["sockets"], 1, "{page}");

    let (status, answer) = admin(
        reqwest::Method::DELETE,
        &server,
        "classes/ECHO/objects/doomed-echo",
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    // Its socket was closed by the server.
    let closed = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match socket.next().await {
                Some(Ok(tokio_tungstenite::tungstenite::Message::Close(_))) | None => break,
                Some(Err(_)) => break,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the deleted object's socket closes");

    let (status, answer) = admin(
        reqwest::Method::DELETE,
        &server,
        "classes/PROBE/objects/doomed",
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let (_, page) = admin(reqwest::Method::GET, &server, "classes/PROBE/objects").await;
    assert_eq!(names(&page), ["kept"]);
    let (status, _) = admin(
        reqwest::Method::GET,
        &server,
        "classes/PROBE/objects/doomed",
    )
    .await;
    assert_eq!(status, 404);
    assert!(get(&server, "/probe/doomed/get?key=a").await["value"].is_null());
    server.stop().await;

    // After a restart (the node log replayed), it is still gone; the other object is not.
    let server = TestServer::start(&config(), dir.path()).await;
    let (_, page) = admin(reqwest::Method::GET, &server, "classes/PROBE/objects").await;
    assert_eq!(names(&page), ["kept"]);
    let (_, page) = admin(reqwest::Method::GET, &server, "classes/ECHO/objects").await;
    assert_eq!(page["objects"], json!([]));
    assert!(get(&server, "/probe/doomed/get?key=a").await["value"].is_null());
    assert_eq!(get(&server, "/probe/kept/get?key=a").await["value"], "2");
    server.stop().await;
}

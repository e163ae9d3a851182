//! `rookery objects bookmark|restore` against a running server: point-in-time recovery of one
//! object from the command line, and the admin API's refusals.

mod common;

use std::process::Command;

use common::{ChildServer, client, wait_until};
use serde_json::Value;

const TOKEN: &str = "admin-cli-test-token-0123";

/// Runs `rookery objects ...` against `server`; its parsed output, or its error text.
fn rookery_objects(server: &ChildServer, args: &[&str]) -> Result<Value, String> {
    let out = Command::new(env!("CARGO_BIN_EXE_rookery"))
        .arg("objects")
        .args(args)
        .args(["--url", &server.url("")])
        .env("ROOKERY_ADMIN_TOKEN", TOKEN)
        .output()
        .expect("rookery runs");
    if out.status.success() {
        Ok(serde_json::from_slice(&out.stdout).expect("JSON on stdout"))
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

async fn increment(server: &ChildServer) -> i64 {
    let r: Value = client()
        .post(server.url("/counter/cli/increment"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    r["value"].as_i64().unwrap()
}

async fn value(server: &ChildServer) -> i64 {
    let r: Value = client()
        .get(server.url("/counter/cli"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    r["value"].as_i64().unwrap()
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_is_restored_to_a_bookmark_or_a_time_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let server = ChildServer::start(dir.path(), &["--admin-token", TOKEN]);
    for _ in 0..3 {
        increment(&server).await;
    }
    let at_three = rookery_objects(&server, &["bookmark", "COUNTER", "cli"]).unwrap();
    let at_three = at_three["bookmark"].as_str().unwrap().to_string();
    // A moment after the third increment and before the fourth, by the server's clock.
    let moment = now_ms();
    wait_until("the clock moves past the moment", || now_ms() > moment).await;
    for _ in 0..2 {
        increment(&server).await;
    }
    assert_eq!(value(&server).await, 5);

    let restored = rookery_objects(
        &server,
        &["restore", "COUNTER", "cli", "--bookmark", &at_three],
    )
    .unwrap();
    assert_eq!(restored["restoredTo"], at_three.as_str());
    assert_eq!(value(&server).await, 3);
    // The undo bookmark brings the five back.
    let undo = restored["undo"].as_str().unwrap().to_string();
    rookery_objects(&server, &["restore", "COUNTER", "cli", "--bookmark", &undo]).unwrap();
    assert_eq!(value(&server).await, 5);
    // By time: the state at the moment between the third and the fourth increment.
    rookery_objects(
        &server,
        &["restore", "COUNTER", "cli", "--time", &moment.to_string()],
    )
    .unwrap();
    assert_eq!(value(&server).await, 3);

    // Refusals: a wrong token, a bad bookmark, an unknown binding.
    let wrong = Command::new(env!("CARGO_BIN_EXE_rookery"))
        .args([
            "objects",
            "bookmark",
            "COUNTER",
            "cli",
            "--url",
            &server.url(""),
            "--token",
            "nope-nope-nope-nope",
        ])
        .output()
        .unwrap();
    assert!(!wrong.status.success());
    assert!(
        String::from_utf8_lossy(&wrong.stderr).contains("401"),
        "{}",
        String::from_utf8_lossy(&wrong.stderr)
    );
    let bad =
        rookery_objects(&server, &["restore", "COUNTER", "cli", "--bookmark", "xyz"]).unwrap_err();
    assert!(bad.contains("400") && bad.contains("bookmark"), "{bad}");
    let unknown = rookery_objects(&server, &["bookmark", "NOPE", "cli"]).unwrap_err();
    assert!(unknown.contains("404"), "{unknown}");
    assert_eq!(value(&server).await, 3, "refused requests change nothing");
    server.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_admin_token_the_admin_api_does_not_exist() {
    let dir = tempfile::tempdir().unwrap();
    let server = ChildServer::start(dir.path(), &[]);
    let r = client()
        .get(server.url("/_rookery/admin/objects/COUNTER/x/bookmark"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    server.terminate();
}

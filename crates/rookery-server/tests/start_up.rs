//! Start-up never harms a data directory: a second server is refused, a missing catalog is not
//! rebuilt over existing objects, a file where a runtime directory belongs is named, and a
//! configuration that cannot serve applies no migration.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{ChildServer, PATIENCE, TestServer, client};
use rookery_server::{Config, Server};
use serde_json::{Value, json};

/// Runs `rookery serve` with `args` and expects it to fail; returns its stderr.
fn serve_fails(data_dir: &Path, args: &[&str]) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_rookery"))
        .args(["serve", "--data-dir"])
        .arg(data_dir)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("rookery starts");
    let deadline = Instant::now() + PATIENCE;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the server was expected to refuse to start, but it runs");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("piped"), &mut stderr)
        .expect("stderr");
    assert!(!status.success(), "start-up failed: {stderr}");
    stderr
}

/// Files under `dir` whose name ends in `.sqlite`.
fn object_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.join("objects")];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "sqlite") {
                found.push(path);
            }
        }
    }
    found
}

/// The tags of the migrations recorded in the data directory's catalog.
fn recorded_migrations(dir: &Path) -> Vec<String> {
    let path = dir.join("rookery.sqlite");
    if !path.exists() {
        return Vec::new();
    }
    let conn = rusqlite::Connection::open(path).unwrap();
    let mut stmt = conn
        .prepare("SELECT tag FROM migrations ORDER BY position")
        .unwrap();
    stmt.query_map([], |r| r.get(0))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_server_on_the_same_data_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let first = ChildServer::start(dir.path(), &[]);
    let c = client();
    let r: Value = c
        .post(first.url("/counter/c/increment"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r, json!({"value": 1}));
    let pid = first.child.id();
    let err = serve_fails(dir.path(), &["--listen", "127.0.0.1:0"]);
    assert!(err.contains("in use by another Rookery process"), "{err}");
    assert!(err.contains(&format!("pid {pid}")), "{err}");
    // The first one serves on, alone.
    let r: Value = c
        .post(first.url("/counter/c/increment"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r, json!({"value": 2}));
    first.kill9();
    // Once it is gone (even by kill -9) the directory is free again.
    let again = ChildServer::start(dir.path(), &[]);
    let r: Value = c
        .get(again.url("/counter/c"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r, json!({"value": 2}));
    again.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_catalog_refuses_to_start_and_deletes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = ChildServer::start(dir.path(), &[]);
    let c = client();
    for name in ["a", "b"] {
        let r = c
            .post(server.url(&format!("/counter/{name}/increment")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    server.terminate();
    let files = object_files(dir.path());
    assert_eq!(files.len(), 2);
    for f in ["rookery.sqlite", "rookery.sqlite-wal", "rookery.sqlite-shm"] {
        let _ = std::fs::remove_file(dir.path().join(f));
    }
    let err = serve_fails(dir.path(), &["--listen", "127.0.0.1:0"]);
    assert!(err.contains("rookery.sqlite is missing"), "{err}");
    assert!(err.contains("restore"), "{err}");
    assert_eq!(
        object_files(dir.path()),
        files,
        "every object is still there"
    );
    assert!(!dir.path().join("rookery.sqlite").exists());
}

#[test]
fn a_file_where_the_node_log_belongs_is_named_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("log"), "server output").unwrap();
    let err = serve_fails(dir.path(), &["--listen", "127.0.0.1:0"]);
    assert!(err.contains("log must be a directory"), "{err}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("log")).unwrap(),
        "server output"
    );
}

fn config_in(dir: &Path, text: &str) -> Config {
    let mut config = Config::parse("test.toml", text).expect("parses");
    config.server.data_dir = dir.to_path_buf();
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configuration_that_cannot_serve_applies_no_migration() {
    let dir = tempfile::tempdir().unwrap();
    let demo = rookery_server::config::DEMO_CONFIG;
    let server = TestServer::start(demo, dir.path()).await;
    let c = client();
    let r = c
        .post(server.url("/counter/kept/increment?amount=7"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    server.stop().await;
    let before = recorded_migrations(dir.path());
    assert_eq!(before, ["v1", "v2", "v3"]);

    // Deleting a class that a binding still names.
    let deleting =
        format!("{demo}\n[[migrations]]\ntag = \"v99\"\ndeleted_classes = [\"Counter\"]\n");
    let err = Server::new(
        &config_in(dir.path(), &deleting),
        rookery_objects::builtin_classes(),
    )
    .err()
    .expect("refused")
    .to_string();
    assert!(
        err.contains("COUNTER") && err.contains("does not exist"),
        "{err}"
    );
    assert_eq!(recorded_migrations(dir.path()), before);

    // A duplicate route.
    let duplicate = format!(
        "{demo}\n[[migrations]]\ntag = \"v99\"\nnew_sqlite_classes = [\"KvStore\"]\n\n[[routes]]\npath = \"/counter/:name\"\nbinding = \"COUNTER\"\nname_from = \"name\"\n"
    );
    let err = Server::new(
        &config_in(dir.path(), &duplicate),
        rookery_objects::builtin_classes(),
    )
    .err()
    .expect("refused")
    .to_string();
    assert!(err.contains("/counter/:name"), "{err}");
    assert_eq!(recorded_migrations(dir.path()), before);

    // A port in use (the binary binds before it opens the data directory).
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().to_string();
    let config = dir.path().join("v99.toml");
    std::fs::write(
        &config,
        format!("{demo}\n[[migrations]]\ntag = \"v99\"\nnew_sqlite_classes = [\"KvStore\"]\n"),
    )
    .unwrap();
    let err = serve_fails(
        dir.path(),
        &["--listen", &port, "--config", config.to_str().unwrap()],
    );
    assert!(err.contains("listening on"), "{err}");
    assert_eq!(recorded_migrations(dir.path()), before);

    // The old configuration still starts, with the data as it was.
    let server = TestServer::start(demo, dir.path()).await;
    let r: Value = c
        .get(server.url("/counter/kept"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r, json!({"value": 7}));
    server.stop().await;
}

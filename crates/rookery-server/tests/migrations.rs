//! Class migrations applied at start-up: renames keep data, deletes remove it.

mod common;

use common::{Probe, TestServer, client};
use rookery::Classes;
use rookery_server::{Config, Server};
use serde_json::{Value, json};

fn config(bind_to: Option<&str>, migrations: &str) -> String {
    let binding = match bind_to {
        Some(class) => format!(
            "[durable_objects]\nbindings = [{{ name = \"THING\", class_name = \"{class}\" }}]\n\n[[routes]]\npath = \"/t/:name\"\nbinding = \"THING\"\nname_from = \"name\"\n"
        ),
        None => String::new(),
    };
    format!("{binding}\n{migrations}")
}

fn classes() -> Classes {
    // The same implementation under both names, as after renaming a class in code.
    Classes::new().with::<Probe>("Old").with::<Probe>("New")
}

async fn start(dir: &std::path::Path, text: &str) -> TestServer {
    let mut config = Config::parse("test.toml", text).unwrap();
    config.server.data_dir = dir.to_path_buf();
    TestServer::start_with(&config, classes()).await
}

fn class_dirs(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir.join("objects")).unwrap().count()
}

const V1: &str = "[[migrations]]\ntag = \"v1\"\nnew_sqlite_classes = [\"Old\"]\n";
const V2: &str =
    "[[migrations]]\ntag = \"v2\"\nrenamed_classes = [{ from = \"Old\", to = \"New\" }]\n";
const V3: &str = "[[migrations]]\ntag = \"v3\"\ndeleted_classes = [\"New\"]\n";
const V4: &str = "[[migrations]]\ntag = \"v4\"\nnew_sqlite_classes = [\"New\"]\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renaming_keeps_data_and_deleting_removes_it() {
    let dir = tempfile::tempdir().unwrap();
    let c = client();
    let get = |server: &TestServer| c.get(server.url("/t/x/get?key=k")).send();

    let server = start(dir.path(), &config(Some("Old"), V1)).await;
    let r = c
        .post(server.url("/t/x/put?key=k&value=kept"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let old_id = server.runtime.namespace("THING").unwrap().id_from_name("x");
    server.stop().await;
    assert_eq!(class_dirs(dir.path()), 1);

    let server = start(dir.path(), &config(Some("New"), &format!("{V1}{V2}"))).await;
    let r: Value = get(&server).await.unwrap().json().await.unwrap();
    assert_eq!(
        r,
        json!({"value": "kept"}),
        "a renamed class keeps its objects' data"
    );
    let ns = server.runtime.namespace("THING").unwrap();
    assert_eq!(ns.id_from_name("x"), old_id, "and its ids");
    assert!(ns.id_from_string(&old_id.to_hex()).is_ok());
    server.stop().await;

    // Binding the old name after the rename is a configuration error that names the binding.
    let mut stale = Config::parse("test.toml", &config(Some("Old"), &format!("{V1}{V2}"))).unwrap();
    stale.server.data_dir = dir.path().to_path_buf();
    let err = Server::new(&stale, classes())
        .err()
        .expect("refused")
        .to_string();
    assert!(err.starts_with("test.toml:2: "), "{err}");
    assert!(err.contains("\"Old\" does not exist"), "{err}");

    let server = start(dir.path(), &config(None, &format!("{V1}{V2}{V3}"))).await;
    server.stop().await;
    assert_eq!(
        class_dirs(dir.path()),
        0,
        "a deleted class's data is removed"
    );

    let server = start(
        dir.path(),
        &config(Some("New"), &format!("{V1}{V2}{V3}{V4}")),
    )
    .await;
    let r: Value = get(&server).await.unwrap().json().await.unwrap();
    assert_eq!(
        r,
        json!({"value": null}),
        "a class created again starts empty"
    );
    assert!(
        server
            .runtime
            .namespace("THING")
            .unwrap()
            .id_from_string(&old_id.to_hex())
            .is_err(),
        "ids of the deleted class are not valid in the new one"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_migrations_are_refused_with_their_line() {
    let dir = tempfile::tempdir().unwrap();
    // v2 creates a class that v1 created already.
    let text = format!("{V1}{}", V1.replace("v1", "v2"));
    let mut cfg = Config::parse("m.toml", &config(None, &text)).unwrap();
    cfg.server.data_dir = dir.path().to_path_buf();
    let err = Server::new(&cfg, classes())
        .err()
        .expect("refused")
        .to_string();
    assert!(err.starts_with("m.toml:6: "), "{err}");
    assert!(err.contains("exists already"), "{err}");
    // Reordering applied migrations is refused too.
    let ok = start(dir.path(), &config_text_v1_v2()).await;
    ok.stop().await;
    let mut swapped = Config::parse("m.toml", &config(None, &format!("{V2}{V1}"))).unwrap();
    swapped.server.data_dir = dir.path().to_path_buf();
    let err = Server::new(&swapped, classes())
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("cannot be reordered"), "{err}");
}

fn config_text_v1_v2() -> String {
    config(None, &format!("{V1}{V2}"))
}

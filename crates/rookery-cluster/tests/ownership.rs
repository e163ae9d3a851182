//! Ownership, handover and fencing between nodes sharing one PostgreSQL.

mod common;

use std::time::Duration;

use common::{Node, admin_url, config, connect, fresh_database};
use rookery::Error;

const LEASE: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_has_one_owner_and_moves_with_its_state_when_the_owner_leaves() {
    let url = fresh_database().await;
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Node::start(&url, "a", dir_a.path(), LEASE).await.unwrap();
    let b = Node::start(&url, "b", dir_b.path(), LEASE).await.unwrap();
    for want in 1..=3 {
        assert_eq!(a.bump("moving").await.unwrap(), want);
    }
    // B may not open what A owns: it is told where A is, and nothing changes.
    match b.bump("moving").await {
        Err(Error::Elsewhere(at)) => assert_eq!(at, "http://a.test:8787"),
        other => panic!("expected a refusal naming node a, got {other:?}"),
    }
    let nodes = a.cluster.nodes().await.unwrap();
    let owned: Vec<(&str, bool, i64)> = nodes
        .iter()
        .map(|n| (n.node_id.as_str(), n.live, n.objects))
        .collect();
    assert_eq!(owned, vec![("a", true, 1), ("b", true, 0)]);
    // A leaves: B takes the object over at once, with the state A committed.
    a.stop().await;
    assert_eq!(b.bump("moving").await.unwrap(), 4);
    // A again, on its old data directory (which says 3): the cluster's state wins.
    let a = Node::start(&url, "a", dir_a.path(), LEASE).await.unwrap();
    b.stop().await;
    assert_eq!(a.read("moving").await.unwrap(), 4);
    assert_eq!(a.bump("moving").await.unwrap(), 5);
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_lease_ran_out_can_never_commit_again_for_an_object_taken_over() {
    let url = fresh_database().await;
    let pg = connect(&url).await;
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Node::start(&url, "a", dir_a.path(), LEASE).await.unwrap();
    let b = Node::start(&url, "b", dir_b.path(), LEASE).await.unwrap();
    assert_eq!(a.bump("fenced").await.unwrap(), 1);
    assert_eq!(a.bump("fenced").await.unwrap(), 2);
    // As if A had been paused past its lease: PostgreSQL's clock says it ran out.
    pg.execute(
        "UPDATE rookery_nodes SET lease_until = now() WHERE node_id = 'a'",
        &[],
    )
    .await
    .unwrap();
    // B takes the object over (A's object is still live on A) and commits.
    assert_eq!(b.bump("fenced").await.unwrap(), 3);
    // A, waking up, still has the object live and tries to commit: refused, and the client is
    // told; nothing is acknowledged.
    match a.bump("fenced").await {
        Err(Error::Fenced(_) | Error::StorageUnavailable(_) | Error::Elsewhere(_)) => {}
        other => panic!("a stale owner's commit must be refused, got {other:?}"),
    }
    // However often it tries, A cannot write: the object is B's.
    for _ in 0..3 {
        assert!(a.bump("fenced").await.is_err());
    }
    assert_eq!(b.read("fenced").await.unwrap(), 3);
    assert_eq!(b.bump("fenced").await.unwrap(), 4);
    let commits: i64 = pg
        .query_one(
            "SELECT count(*) FROM rookery_commits WHERE class = 'TEST'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        commits, 4,
        "exactly the four acknowledged increments are in the cluster"
    );
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_commits_are_folded_into_a_snapshot_and_the_state_survives_it() {
    let url = fresh_database().await;
    let pg = connect(&url).await;
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Node::start(&url, "a", dir_a.path(), LEASE).await.unwrap();
    for want in 1..=80 {
        assert_eq!(a.bump("folded").await.unwrap(), want);
    }
    a.stop().await;
    // Opening it elsewhere reads 80 commits, and folds them into a snapshot.
    let b = Node::start(&url, "b", dir_b.path(), LEASE).await.unwrap();
    assert_eq!(b.read("folded").await.unwrap(), 80);
    let deadline = tokio::time::Instant::now() + rookery::testing::PATIENCE;
    loop {
        let row = pg
            .query_one(
                "SELECT (SELECT count(*) FROM rookery_commits),
                        (SELECT count(*) FROM rookery_snapshots)",
                &[],
            )
            .await
            .unwrap();
        if (row.get::<_, i64>(0), row.get::<_, i64>(1)) == (0, 1) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the commits were not folded into a snapshot"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(b.bump("folded").await.unwrap(), 81);
    b.stop().await;
    // From the snapshot and the one commit after it.
    let a = Node::start(&url, "a", dir_a.path(), LEASE).await.unwrap();
    assert_eq!(a.read("folded").await.unwrap(), 81);
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_directory_made_outside_the_cluster_is_refused() {
    let url = fresh_database().await;
    let (dir_a, dir_alone) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Node::start(&url, "a", dir_a.path(), LEASE).await.unwrap();
    // A node that ran alone first: its class has a key of its own.
    let alone =
        rookery::testing::TestHarness::with_data_dir::<common::Counter>(dir_alone.path()).unwrap();
    assert!(alone.shutdown().await);
    match Node::start(&url, "c", dir_alone.path(), LEASE).await {
        Err(e) => assert!(e.contains("outside the cluster"), "{e}"),
        Ok(_) => panic!("a data directory with its own class keys joined the cluster"),
    }
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_from_the_database_stops_serving_once_its_lease_runs_out() {
    let url = fresh_database().await;
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Node::start(&url, "a", dir_a.path(), LEASE).await.unwrap();
    let b = Node::start(&url, "b", dir_b.path(), LEASE).await.unwrap();
    assert_eq!(a.bump("cut").await.unwrap(), 1);
    a.cluster.stop_renewing().await;
    // Until the lease runs out B is refused; then it takes the object over.
    let deadline = tokio::time::Instant::now() + rookery::testing::PATIENCE;
    loop {
        match b.bump("cut").await {
            Ok(n) => {
                assert_eq!(n, 2, "B continues from A's acknowledged state");
                break;
            }
            Err(Error::Elsewhere(_)) => {}
            Err(e) => panic!("unexpected refusal while A's lease runs out: {e}"),
        }
        assert!(tokio::time::Instant::now() < deadline, "B never took over");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!a.cluster.holds_lease());
    // A still has the object in memory, with n = 1: it must not answer from it.
    for _ in 0..3 {
        match a.read("cut").await {
            Ok(n) => panic!("a node without its lease answered a read ({n})"),
            Err(Error::StorageUnavailable(_) | Error::Elsewhere(_) | Error::Fenced(_)) => {}
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    assert_eq!(b.read("cut").await.unwrap(), 2);
    b.stop().await;
    assert!(a.harness.shutdown().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_spread_over_shards_by_id_and_move_with_their_state() {
    let (home, other) = (fresh_database().await, fresh_database().await);
    let sharded = |id: &str| {
        let mut c = config(&home, id, LEASE);
        c.shards = vec![other.clone()];
        c
    };
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Node::start_with(sharded("a"), dir_a.path()).await.unwrap();
    let b = Node::start_with(sharded("b"), dir_b.path()).await.unwrap();
    let names: Vec<String> = (0..20).map(|i| format!("s{i}")).collect();
    for (i, name) in names.iter().enumerate() {
        for _ in 0..=i {
            a.bump(name).await.unwrap();
        }
    }
    // Each database holds some of the objects, all of them together, none twice.
    let (pg_home, pg_other) = (connect(&home).await, connect(&other).await);
    let (in_home, in_other) = (objects_in(&pg_home).await, objects_in(&pg_other).await);
    assert_eq!(in_home + in_other, 20);
    assert!(in_home > 0 && in_other > 0, "{in_home} and {in_other}");
    // A node lists what it owns across both.
    let listed = a.cluster.nodes().await.unwrap();
    assert_eq!(listed[0].objects, 20, "{listed:?}");
    assert_eq!(a.cluster.owned_by("a", None, 100).await.unwrap().len(), 20);
    // Handed over from both databases when A leaves.
    a.stop().await;
    for (i, name) in names.iter().enumerate() {
        assert_eq!(b.read(name).await.unwrap(), i as i64 + 1, "{name}");
    }
    b.stop().await;
}

async fn objects_in(pg: &tokio_postgres::Client) -> i64 {
    pg.query_one("SELECT count(*) FROM rookery_objects", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_goes_away_is_met_with_errors_not_waits_and_the_node_comes_back() {
    let url = fresh_database().await;
    let name = url.rsplit('/').next().unwrap().to_string();
    let admin = connect(admin_url()).await;
    let dir = tempfile::tempdir().unwrap();
    let a = Node::start(&url, "a", dir.path(), LEASE).await.unwrap();
    assert_eq!(a.bump("gone").await.unwrap(), 1);
    // The database stops taking connections, and the node's are cut.
    admin
        .batch_execute(&format!(
            "ALTER DATABASE {name} ALLOW_CONNECTIONS false;
             SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
        ))
        .await
        .unwrap();
    // Writes fail (within about a lease), they do not hang; nothing is acknowledged.
    let tried = tokio::time::timeout(rookery::testing::PATIENCE, a.bump("gone"))
        .await
        .expect("an answer, not a wait");
    assert!(
        tried.is_err(),
        "a write was acknowledged without the database: {tried:?}"
    );
    let deadline = tokio::time::Instant::now() + rookery::testing::PATIENCE;
    while a.cluster.holds_lease() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the lease outlived the database"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Back: the node joins again by itself and the object goes on from what was acknowledged.
    admin
        .batch_execute(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true"))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + rookery::testing::PATIENCE;
    let value = loop {
        if let Ok(value) = a.bump("gone").await {
            break value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the node never came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(value, 2);
    assert!(a.cluster.holds_lease());
    a.stop().await;
}

//! The cluster's tables, created and migrated by whichever node starts first.
//!
//! - `rookery_nodes`: one row per node id, with the session of its current process and the
//!   time its lease runs out (PostgreSQL's clock decides, never a node's).
//! - `rookery_objects`: the owner of each object that was ever active: the owning session and
//!   the epoch, which every activation raises.
//! - `rookery_commits`: each committed turn's pages (packed as the node log packs them), keyed
//!   by object, epoch and sequence.
//! - `rookery_snapshots`: an object's whole database at a position; commits up to it are
//!   folded in and removed.
//! - `rookery_alarms`: each object's alarm time, written with the commit that set it, so that
//!   an alarm due on a node that died wakes its object on another (`alarms.rs`).
//! - `rookery_classes`: the key (uid and id secret) of each class, the same on every node.
//! - `rookery_secrets`: what nodes prove to each other with (the token of forwarded requests).

use tokio_postgres::Client;

use crate::error::ClusterError;

/// The schema version this build writes and reads.
pub const SCHEMA_VERSION: i32 = 1;

const V1: &str = "
CREATE TABLE IF NOT EXISTS rookery_nodes (
    node_id     text PRIMARY KEY,
    session     text NOT NULL UNIQUE,
    advertise   text NOT NULL,
    lease_until timestamptz NOT NULL,
    started_at  timestamptz NOT NULL
);
CREATE TABLE IF NOT EXISTS rookery_objects (
    class   text NOT NULL,
    object  text NOT NULL,
    node_id text NOT NULL,
    session text NOT NULL,
    epoch   bigint NOT NULL,
    PRIMARY KEY (class, object)
);
CREATE INDEX IF NOT EXISTS rookery_objects_by_session ON rookery_objects (session);
CREATE TABLE IF NOT EXISTS rookery_commits (
    class      text NOT NULL,
    object     text NOT NULL,
    epoch      bigint NOT NULL,
    seq        bigint NOT NULL,
    db_pages   integer NOT NULL,
    page_count integer NOT NULL,
    pages      bytea NOT NULL,
    PRIMARY KEY (class, object, epoch, seq)
);
CREATE TABLE IF NOT EXISTS rookery_snapshots (
    class      text NOT NULL,
    object     text NOT NULL,
    epoch      bigint NOT NULL,
    seq        bigint NOT NULL,
    db_pages   integer NOT NULL,
    page_count integer NOT NULL,
    image      bytea NOT NULL,
    PRIMARY KEY (class, object)
);
CREATE TABLE IF NOT EXISTS rookery_alarms (
    class  text NOT NULL,
    object text NOT NULL,
    due_ms bigint NOT NULL,
    PRIMARY KEY (class, object)
);
CREATE INDEX IF NOT EXISTS rookery_alarms_by_due ON rookery_alarms (due_ms);
CREATE TABLE IF NOT EXISTS rookery_secrets (
    name  text PRIMARY KEY,
    value bytea NOT NULL
);
CREATE TABLE IF NOT EXISTS rookery_classes (
    name   text PRIMARY KEY,
    uid    text NOT NULL,
    secret bytea NOT NULL
);
";

/// Creates the tables if they are missing and checks the schema version. Nodes starting at
/// once serialize on an advisory lock.
pub async fn migrate(client: &mut Client) -> Result<(), ClusterError> {
    let tx = client.transaction().await?;
    // Any fixed number: the lock only orders nodes that migrate at the same moment.
    tx.execute("SELECT pg_advisory_xact_lock(7426031)", &[])
        .await?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS rookery_schema (version integer NOT NULL)")
        .await?;
    let version: Option<i32> = tx
        .query_opt("SELECT max(version) FROM rookery_schema", &[])
        .await?
        .and_then(|row| row.get(0));
    match version {
        Some(v) if v > SCHEMA_VERSION => {
            return Err(ClusterError::Data(format!(
                "schema version {v}, newer than this build's {SCHEMA_VERSION}: upgrade this node"
            )));
        }
        Some(v) if v == SCHEMA_VERSION => {}
        _ => {
            tx.batch_execute(V1).await?;
            tx.execute(
                "INSERT INTO rookery_schema (version) VALUES ($1)",
                &[&SCHEMA_VERSION],
            )
            .await?;
            tracing::info!(version = SCHEMA_VERSION, "created the cluster schema");
        }
    }
    tx.commit().await?;
    Ok(())
}

/// The cluster's secret named `name`, drawn at random by the first node that asks.
pub async fn secret(client: &Client, name: &str) -> Result<Vec<u8>, ClusterError> {
    let mut fresh = [0u8; 32];
    getrandom::fill(&mut fresh)
        .map_err(|e| ClusterError::Config(format!("no randomness for a secret: {e}")))?;
    client
        .execute(
            "INSERT INTO rookery_secrets (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
            &[&name, &fresh.as_slice()],
        )
        .await?;
    Ok(client
        .query_one(
            "SELECT value FROM rookery_secrets WHERE name = $1",
            &[&name],
        )
        .await?
        .get(0))
}

//! Class keys the whole cluster shares, kept in `rookery_classes`.
//!
//! The first node to create a class records its key; every other node adopts it. A node whose
//! data directory already holds a class under another key refuses to start (see
//! [`rookery::ClassKeys`]).

use std::collections::HashMap;
use std::sync::Mutex;

use rookery::{ClassKey, ClassKeys, StartError};
use tokio_postgres::{Client, NoTls};

use crate::error::ClusterError;

/// [`ClassKeys`] on PostgreSQL.
#[derive(Debug)]
pub(crate) struct PgClassKeys {
    database_url: String,
    /// Every key the cluster had when this node connected, and those settled since.
    known: Mutex<HashMap<String, ClassKey>>,
}

impl PgClassKeys {
    /// Loads every key the cluster has.
    pub(crate) async fn load(client: &Client, database_url: &str) -> Result<Self, ClusterError> {
        let mut known = HashMap::new();
        for row in client
            .query("SELECT name, uid, secret FROM rookery_classes", &[])
            .await?
        {
            let (name, key) = key_of(&row)?;
            known.insert(name, key);
        }
        Ok(Self {
            database_url: database_url.to_string(),
            known: Mutex::new(known),
        })
    }

    /// Records `proposed` for `name` unless a key is recorded already; returns the recorded one.
    /// On a thread of its own with a connection of its own: the runtime that asks may be the
    /// one every other connection of this node runs on, blocked while it waits.
    fn settle(&self, name: &str, proposed: &ClassKey) -> Result<ClassKey, ClusterError> {
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map_err(|e| {
                            ClusterError::Pool(format!("a runtime for class keys: {e}"))
                        })?;
                    rt.block_on(async {
                        let (client, connection) =
                            tokio_postgres::connect(&self.database_url, NoTls).await?;
                        let driver = tokio::spawn(connection);
                        client
                            .execute(
                                "INSERT INTO rookery_classes (name, uid, secret) VALUES ($1, $2, $3)
                                 ON CONFLICT (name) DO NOTHING",
                                &[&name, &proposed.uid, &proposed.secret.as_slice()],
                            )
                            .await?;
                        let row = client
                            .query_one(
                                "SELECT name, uid, secret FROM rookery_classes WHERE name = $1",
                                &[&name],
                            )
                            .await?;
                        drop(client);
                        let _ = driver.await;
                        Ok(key_of(&row)?.1)
                    })
                })
                .join()
                .map_err(|_| ClusterError::Pool("the class key thread panicked".into()))?
        })
    }
}

impl ClassKeys for PgClassKeys {
    fn agree(&self, name: &str, proposed: ClassKey) -> Result<ClassKey, StartError> {
        if let Some(key) = self
            .known
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
        {
            return Ok(key.clone());
        }
        let key = self
            .settle(name, &proposed)
            .map_err(|e| StartError::Config(format!("settling the key of class {name:?}: {e}")))?;
        self.known
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string(), key.clone());
        Ok(key)
    }
}

fn key_of(row: &tokio_postgres::Row) -> Result<(String, ClassKey), ClusterError> {
    let name: String = row.get(0);
    let secret: Vec<u8> = row.get(2);
    let secret: [u8; 32] = secret
        .try_into()
        .map_err(|_| ClusterError::Data(format!("a damaged secret for class {name:?}")))?;
    Ok((
        name,
        ClassKey {
            uid: row.get(1),
            secret,
        },
    ))
}

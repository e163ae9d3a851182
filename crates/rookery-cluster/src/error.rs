//! What can go wrong between a node and the cluster's database.

/// An error of the cluster layer.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The configuration cannot work (a bad URL, an empty node id).
    #[error("cluster configuration: {0}")]
    Config(String),
    /// PostgreSQL refused a statement or could not be reached.
    #[error("the cluster database: {0}")]
    Database(#[from] tokio_postgres::Error),
    /// No connection could be taken from the pool.
    #[error("the cluster database: no connection: {0}")]
    Pool(String),
    /// The database holds something this node cannot use (a damaged row, a newer schema).
    #[error("the cluster database holds {0}")]
    Data(String),
}

impl From<deadpool_postgres::PoolError> for ClusterError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        ClusterError::Pool(e.to_string())
    }
}

impl From<ClusterError> for rookery::Error {
    fn from(e: ClusterError) -> Self {
        rookery::Error::StorageUnavailable(e.to_string())
    }
}

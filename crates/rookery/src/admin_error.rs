//! Why an operator's request (the admin API, a backup, a restore) failed, and the HTTP status
//! it is answered with.

use crate::error::Error;

/// Why an admin operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// No hosted class has this name (or binding).
    #[error("no class {0:?} is hosted here")]
    UnknownClass(String),
    /// The object stores nothing (it has no database file).
    #[error("{0} stores nothing here")]
    UnknownObject(String),
    /// The request itself is wrong (a bad cursor, limit, query or directory).
    #[error("{0}")]
    BadInput(String),
    /// The runtime failed the operation.
    #[error(transparent)]
    Runtime(#[from] Error),
}

impl AdminError {
    /// The HTTP status this error is answered with.
    pub fn status(&self) -> http::StatusCode {
        match self {
            Self::UnknownClass(_) | Self::UnknownObject(_) => http::StatusCode::NOT_FOUND,
            Self::BadInput(_) => http::StatusCode::BAD_REQUEST,
            Self::Runtime(e) => e.status(),
        }
    }
}

/// The result of an admin operation.
pub type AdminResult<T> = std::result::Result<T, AdminError>;

//! Errors of the library API (the filesystem itself answers the kernel with errno values).

use std::io;
use std::path::PathBuf;

/// What can go wrong when mounting, cutting power or unmounting.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file system call on the backing directory or the mountpoint failed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// The step that failed.
        what: &'static str,
        /// The path it was applied to.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The backing directory and the mountpoint cannot be used together.
    #[error("invalid paths: {0}")]
    InvalidPaths(String),
    /// Mounting the FUSE filesystem failed (is /dev/fuse there, and are we root?).
    #[error("mount {}: {source}", path.display())]
    Mount {
        /// The mountpoint.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Unmounting failed even lazily.
    #[error("unmount {}: {source}", path.display())]
    Unmount {
        /// The mountpoint.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// An earlier power cut failed half-way, so nothing is mounted.
    #[error("the filesystem is not mounted (an earlier power cut failed)")]
    NotMounted,
}

impl Error {
    /// Wraps an I/O error with the step and the path.
    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Self::Io {
            what,
            path: path.into(),
            source,
        }
    }
}

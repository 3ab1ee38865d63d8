//! The error type of the janitor's fallible entry points, each naming the path
//! it concerns.

use std::io;
use std::path::PathBuf;

/// Why a janitor operation could not be carried out.
#[derive(Debug, thiserror::Error)]
pub enum JanitorError {
    /// A system call failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done (`open`, `stat`, `rename`, ...).
        op: &'static str,
        /// The path it was done to (for messages only).
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A name that must be a single path component was not one.
    #[error(
        "invalid entry name {name:?}: must be one non-empty component without '/', not '.' or '..'"
    )]
    InvalidName {
        /// The name as given.
        name: String,
    },
    /// The path is a symlink where a directory or regular file was required;
    /// symlinks are never followed.
    #[error("{path}: is a symlink (never followed)")]
    Symlink {
        /// The symlink.
        path: PathBuf,
    },
    /// The path is not a directory.
    #[error("{path}: not a directory")]
    NotADirectory {
        /// The entry.
        path: PathBuf,
    },
    /// The path is not a regular file.
    #[error("{path}: not a regular file")]
    NotRegular {
        /// The entry.
        path: PathBuf,
    },
    /// The path is on another device than the root it was reached from (a
    /// mount point), which is never entered.
    #[error("{path}: on another device (mount point), not entered")]
    OtherDevice {
        /// The mount point.
        path: PathBuf,
    },
    /// The destination name is taken; nothing is ever replaced.
    #[error("{path}: already exists")]
    Exists {
        /// The destination.
        path: PathBuf,
    },
    /// The entry changed (or was swapped) while it was being read.
    #[error("{path}: changed while being read")]
    Changed {
        /// The entry.
        path: PathBuf,
    },
    /// The tree is deeper than [`crate::MAX_DEPTH`].
    #[error("{path}: deeper than {max} levels")]
    TooDeep {
        /// The directory that was not entered.
        path: PathBuf,
        /// The limit.
        max: usize,
    },
}

impl JanitorError {
    /// An [`JanitorError::Io`] from a rustix errno.
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, errno: rustix::io::Errno) -> Self {
        JanitorError::Io {
            op,
            path: path.into(),
            source: errno.into(),
        }
    }
}

//! Error type for log capture and reading, carrying the path and operation
//! involved so a failure in the daemon's logs is actionable on its own.

use std::io;
use std::path::PathBuf;

use crate::Stream;

/// Why capturing or reading a job's output failed.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// A log cap below [`LogCap::MIN`](crate::LogCap::MIN) bytes; holds the cap asked for, in bytes.
    #[error("log cap must be at least 2 bytes, got {0}")]
    InvalidCap(u64),

    /// A stream name other than `stdout` or `stderr`; holds the name given.
    #[error("unknown log stream {0:?}, expected \"stdout\" or \"stderr\"")]
    UnknownStream(String),

    /// A file system operation on the log directory or a segment file failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done, e.g. "opening log segment".
        op: &'static str,
        /// The directory or segment file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },

    /// Reading the job's output pipe (or making it non-blocking) failed.
    #[error("reading {stream} pipe: {source}")]
    Pipe {
        /// The stream the pipe carries.
        stream: Stream,
        /// The I/O error.
        #[source]
        source: io::Error,
    },

    /// A read kept losing the race with the writer's rotation: segments vanished between listing and
    /// opening on every attempt.
    #[error(
        "{stream} segments in {} kept disappearing while reading ({attempts} attempts); \
         the writer is rotating faster than we can read"
    , dir.display())]
    Contended {
        /// The stream being read.
        stream: Stream,
        /// The log directory.
        dir: PathBuf,
        /// How many listings were tried.
        attempts: u32,
    },
}

impl LogError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        LogError::Io {
            op,
            path: path.into(),
            source,
        }
    }
}

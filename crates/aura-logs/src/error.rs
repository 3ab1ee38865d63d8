//! Error type for log capture and reading, carrying the path and operation
//! involved so a failure in the daemon's logs is actionable on its own.

use std::io;
use std::path::PathBuf;

use crate::Stream;

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("log cap must be at least 2 bytes, got {0}")]
    InvalidCap(u64),

    #[error("unknown log stream {0:?}, expected \"stdout\" or \"stderr\"")]
    UnknownStream(String),

    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("reading {stream} pipe: {source}")]
    Pipe {
        stream: Stream,
        #[source]
        source: io::Error,
    },

    #[error(
        "{stream} segments in {} kept disappearing while reading ({attempts} attempts); \
         the writer is rotating faster than we can read"
    , dir.display())]
    Contended {
        stream: Stream,
        dir: PathBuf,
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

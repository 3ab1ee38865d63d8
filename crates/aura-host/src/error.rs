//! The crate's error type: what failed, and on which file, so a log line is enough to act on.

use std::path::PathBuf;

/// Why a host sample (or a look at the daemon's own process) failed.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// A `/proc` file could not be read, or the data volume could not be `statvfs`'d.
    #[error("reading {path}: {source}")]
    Read {
        /// The file or path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A `/proc` file's content is not in the form expected.
    #[error("parsing {path}: {reason}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What did not parse.
        reason: String,
    },
}

impl HostError {
    pub(crate) fn read(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Read {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn parse(path: impl Into<PathBuf>, err: crate::procfs::ParseError) -> Self {
        Self::Parse {
            path: path.into(),
            reason: err.0,
        }
    }
}

//! `aura-logs` owns the on-disk capture of a job's stdout/stderr: it drains a
//! pipe into size-capped, self-describing segment files and reads them back by
//! logical byte offset.
//!
//! Layout: for stream `stdout` in `dir`, segments are `stdout.<START>.log`,
//! where `START` is the zero-padded (20 digits) logical offset of the segment's
//! first byte within everything the stream ever produced. The writer appends to
//! the newest segment, and once it holds `cap / 2` bytes starts a new one and
//! deletes all but the two newest. Hence at most `cap` bytes are kept, at least
//! the newest `cap / 2` are kept, and the number of bytes lost is simply the
//! `START` of the oldest remaining segment — readers need no sidecar metadata.
//!
//! A closed segment may be compressed in place (`stdout.<START>.log.zst`, zstd; see
//! [`compressed_name`]): readers treat it exactly as the file it came from.

mod compressed;
mod error;
mod reader;
mod segment;
mod writer;

use std::fmt;
use std::str::FromStr;

pub use error::LogError;
pub use reader::{read, stat, LogChunk};
pub use segment::compressed_name;
pub use writer::{Capture, CaptureReport, Tap};

/// Which of a job's output streams a log belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    /// The job's standard output.
    Stdout,
    /// The job's standard error.
    Stderr,
    /// What the job reported on Aura's progress pipe (fd 3): FFmpeg's `-progress` blocks or generic
    /// `aura-progress` lines, kept as written.
    Progress,
}

impl Stream {
    /// The name used in file names, the API and serde.
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
            Stream::Progress => "progress",
        }
    }
}

impl fmt::Display for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Stream {
    type Err = LogError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "stdout" => Ok(Stream::Stdout),
            "stderr" => Ok(Stream::Stderr),
            "progress" => Ok(Stream::Progress),
            other => Err(LogError::UnknownStream(other.to_owned())),
        }
    }
}

/// Upper bound on bytes kept on disk per stream.
#[derive(Clone, Copy, Debug)]
pub struct LogCap(u64);

impl LogCap {
    /// Smallest usable cap: with two segments of `cap / 2` bytes each, anything
    /// below 2 would make segments zero-sized and rotation would never progress.
    pub const MIN: u64 = 2;

    /// A cap of `bytes` bytes per stream; [`LogError::InvalidCap`] below [`LogCap::MIN`].
    pub fn new(bytes: u64) -> Result<LogCap, LogError> {
        if bytes < Self::MIN {
            return Err(LogError::InvalidCap(bytes));
        }
        Ok(LogCap(bytes))
    }

    /// The configured cap in bytes.
    pub fn bytes(self) -> u64 {
        self.0
    }

    /// Size at which a segment is considered full and the writer rotates.
    pub(crate) fn segment_bytes(self) -> u64 {
        self.0 / 2
    }
}

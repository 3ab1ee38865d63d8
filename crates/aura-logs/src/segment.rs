//! Segment file naming and directory listing, shared by the writer and the
//! readers so both agree on what a segment is.

use std::io;
use std::path::{Path, PathBuf};

use crate::{LogError, Stream};

/// Digits in a segment's start offset: enough for `u64::MAX`, and fixed width
/// so that lexical order of file names equals numeric order.
const START_DIGITS: usize = 20;
const SUFFIX: &str = ".log";

/// One segment file as found on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Segment {
    /// Logical offset of the segment's first byte.
    pub start: u64,
    pub path: PathBuf,
}

pub(crate) fn file_name(stream: Stream, start: u64) -> String {
    format!(
        "{}.{:0width$}{SUFFIX}",
        stream.as_str(),
        start,
        width = START_DIGITS
    )
}

pub(crate) fn path(dir: &Path, stream: Stream, start: u64) -> PathBuf {
    dir.join(file_name(stream, start))
}

/// Parses `<stream>.<START>.log`; anything else in the directory (the other
/// stream, stray files) is not ours and is ignored.
pub(crate) fn parse(stream: Stream, name: &str) -> Option<u64> {
    let rest = name.strip_prefix(stream.as_str())?.strip_prefix('.')?;
    let digits = rest.strip_suffix(SUFFIX)?;
    if digits.len() != START_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Lists the stream's segments, oldest first. A missing directory means the
/// job has produced no output yet, which is not an error.
pub(crate) fn list(dir: &Path, stream: Stream) -> Result<Vec<Segment>, LogError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(LogError::io("listing log directory", dir, e)),
    };
    let mut segments = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| LogError::io("listing log directory", dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(start) = parse(stream, name) {
            segments.push(Segment {
                start,
                path: entry.path(),
            });
        }
    }
    segments.sort_by_key(|s| s.start);
    Ok(segments)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_sort() {
        let a = file_name(Stream::Stdout, 9);
        let b = file_name(Stream::Stdout, 10);
        assert_eq!(a, "stdout.00000000000000000009.log");
        assert!(a < b);
        assert_eq!(parse(Stream::Stdout, &b), Some(10));
        assert_eq!(parse(Stream::Stderr, &b), None);
        assert_eq!(
            parse(Stream::Stdout, &file_name(Stream::Stdout, u64::MAX)),
            Some(u64::MAX)
        );
        assert_eq!(parse(Stream::Stdout, "stdout.12.log"), None);
        assert_eq!(
            parse(Stream::Stdout, "stdout.0000000000000000000x.log"),
            None
        );
    }

    /// Only a missing directory means "no output yet"; any other failure to list it is an error.
    #[test]
    fn only_a_missing_directory_lists_as_empty() {
        let tmp = tempfile::tempdir().expect("tempdir");
        assert_eq!(
            list(&tmp.path().join("absent"), Stream::Stdout).expect("list"),
            []
        );
        let file = tmp.path().join("a-file");
        std::fs::write(&file, b"").expect("write");
        assert!(matches!(
            list(&file, Stream::Stdout),
            Err(LogError::Io {
                op: "listing log directory",
                ..
            })
        ));
    }
}

//! Segment file naming and directory listing, shared by the writer and the
//! readers so both agree on what a segment is — compressed closed segments
//! (`<name>.log.zst`) included.

use std::io;
use std::path::{Path, PathBuf};

use crate::{LogError, Stream};

/// Digits in a segment's start offset: enough for `u64::MAX`, and fixed width
/// so that lexical order of file names equals numeric order.
const START_DIGITS: usize = 20;
const SUFFIX: &str = ".log";
/// What a closed segment compressed with zstd adds to its name (`stdout.<START>.log.zst`).
const COMPRESSED_SUFFIX: &str = ".zst";

/// One segment file as found on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Segment {
    /// Logical offset of the segment's first byte.
    pub start: u64,
    pub path: PathBuf,
    /// A zstd stream of the segment's bytes (`.log.zst`); offsets and lengths are those of the bytes
    /// it decompresses to.
    pub compressed: bool,
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

/// The path of the compressed form of the segment at `start`.
pub(crate) fn compressed_path(dir: &Path, stream: Stream, start: u64) -> PathBuf {
    dir.join(file_name(stream, start) + COMPRESSED_SUFFIX)
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

/// Parses `<stream>.<START>.log` or `<stream>.<START>.log.zst`: the start, and whether it is compressed.
fn parse_any(stream: Stream, name: &str) -> Option<(u64, bool)> {
    match name.strip_suffix(COMPRESSED_SUFFIX) {
        Some(plain) => parse(stream, plain).map(|start| (start, true)),
        None => parse(stream, name).map(|start| (start, false)),
    }
}

/// The name a segment file gets once compressed (`stdout.<START>.log` → `stdout.<START>.log.zst`), or
/// `None` if `segment_file_name` is not an uncompressed segment of any stream (already compressed, a
/// temporary file, something else). Whoever compresses a closed segment writes the zstd stream under a
/// name this crate ignores (any other name), renames it to this one once complete, and only then
/// removes the original: while both exist, readers use the original, so a crash at any point loses
/// nothing.
pub fn compressed_name(segment_file_name: &str) -> Option<String> {
    [Stream::Stdout, Stream::Stderr, Stream::Progress]
        .into_iter()
        .any(|stream| parse(stream, segment_file_name).is_some())
        .then(|| format!("{segment_file_name}{COMPRESSED_SUFFIX}"))
}

/// Lists the stream's segments, oldest first; a segment there both as is and compressed (a crash
/// between writing the compressed file and removing the original) is listed once, as is: the
/// original is whole, the compressed file may not be. A missing directory means the
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
        if let Some((start, compressed)) = parse_any(stream, name) {
            segments.push(Segment {
                start,
                path: entry.path(),
                compressed,
            });
        }
    }
    // Uncompressed first among equal starts, so that dedup keeps it.
    segments.sort_by_key(|s| (s.start, s.compressed));
    segments.dedup_by_key(|s| s.start);
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

    #[test]
    fn compressed_segments_are_listed_once_and_the_original_wins() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path();
        for name in [
            file_name(Stream::Stdout, 0) + ".zst",
            file_name(Stream::Stdout, 5),
            file_name(Stream::Stdout, 5) + ".zst",
            file_name(Stream::Stdout, 9) + ".zst.tmp",
            file_name(Stream::Stderr, 0) + ".zst",
        ] {
            std::fs::write(dir.join(name), b"").expect("write");
        }
        let listed: Vec<(u64, bool)> = list(dir, Stream::Stdout)
            .expect("list")
            .into_iter()
            .map(|s| (s.start, s.compressed))
            .collect();
        assert_eq!(listed, [(0, true), (5, false)]);
        assert_eq!(
            list(dir, Stream::Stdout).expect("list")[0].path,
            compressed_path(dir, Stream::Stdout, 0)
        );
    }

    #[test]
    fn only_uncompressed_segments_have_a_compressed_name() {
        let name = file_name(Stream::Progress, 42);
        assert_eq!(compressed_name(&name), Some(format!("{name}.zst")));
        assert_eq!(compressed_name(&format!("{name}.zst")), None);
        assert_eq!(compressed_name("stdout.12.log"), None);
        assert_eq!(compressed_name("notes.txt"), None);
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

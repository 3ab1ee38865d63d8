//! The read side: random access by logical offset over whatever segments are
//! currently on disk, tolerant of a writer rotating underneath, and of closed
//! segments compressed in place (read as the bytes they decompress to).
//!
//! These functions use blocking `std::fs`; async callers run them in
//! `spawn_blocking`.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;

use crate::compressed;
use crate::segment::{self, Segment};
use crate::{LogError, Stream};

/// How often a read re-lists after a segment vanished under it. Each retry
/// needs the writer to complete a full rotation in between, so hitting this
/// means something is badly wrong (e.g. a tiny cap under a flood of output).
const MAX_ATTEMPTS: u32 = 64;

/// Retries after which a read pauses before re-listing: a writer in the middle of a burst of
/// rotations (a tiny cap, a flood of output) finishes it instead of winning every race.
const BACKOFF_AFTER: u32 = 8;
const BACKOFF: std::time::Duration = std::time::Duration::from_millis(1);

/// A contiguous piece of a stream.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LogChunk {
    /// The stream it was read from.
    pub stream: Stream,
    /// Logical offset of `data[0]`. Greater than the requested offset when
    /// that was already truncated away (or beyond the end).
    pub offset: u64,
    /// The bytes, as the job wrote them; empty at the end of what was captured.
    pub data: Vec<u8>,
    /// Offset to request next to continue without gaps or repeats.
    pub next_offset: u64,
    /// Bytes lost before the oldest kept segment.
    pub truncated_bytes: u64,
}

/// Reads up to `max` bytes starting at logical `offset`.
///
/// - `offset` older than what is kept: starts at the oldest kept byte, and the
///   chunk's `offset` says where.
/// - `offset` at or beyond the end: empty data, `offset == next_offset == end`.
/// - no segments (or no directory): empty chunk at 0 — the job has simply
///   produced no output yet.
///
/// Blocking; tolerates concurrent rotation by re-listing when a segment
/// disappears between listing and opening.
pub fn read(dir: &Path, stream: Stream, offset: u64, max: usize) -> Result<LogChunk, LogError> {
    relisting(dir, stream, |segments| {
        read_listed(segments, stream, offset, max)
    })
}

/// Total logical size (`end`, one past the last byte) and truncated bytes for
/// a stream, without reading data. `(0, 0)` when nothing was captured yet.
pub fn stat(dir: &Path, stream: Stream) -> Result<(u64, u64), LogError> {
    relisting(dir, stream, |segments| {
        let Some(first) = segments.first() else {
            return Ok(Some((0, 0)));
        };
        Ok(end_of(segments)?.map(|end| (end, first.start)))
    })
}

/// Runs `attempt` on fresh directory listings until it gets an answer (`Some`), pausing briefly once
/// the writer has won several races in a row.
fn relisting<T>(
    dir: &Path,
    stream: Stream,
    mut attempt: impl FnMut(&[Segment]) -> Result<Option<T>, LogError>,
) -> Result<T, LogError> {
    for tried in 0..MAX_ATTEMPTS {
        if tried >= BACKOFF_AFTER {
            std::thread::sleep(BACKOFF);
        }
        let segments = segment::list(dir, stream)?;
        if let Some(answer) = attempt(&segments)? {
            return Ok(answer);
        }
    }
    Err(LogError::Contended {
        stream,
        dir: dir.to_path_buf(),
        attempts: MAX_ATTEMPTS,
    })
}

/// Logical end of the stream per the listing, or `None` if the newest segment
/// vanished (the listing is stale).
fn end_of(segments: &[Segment]) -> Result<Option<u64>, LogError> {
    let Some(last) = segments.last() else {
        return Ok(Some(0));
    };
    let len = if last.compressed {
        compressed::decompressed_len(&last.path)
    } else {
        std::fs::metadata(&last.path).map(|meta| meta.len())
    };
    match len {
        Ok(len) => Ok(Some(last.start.saturating_add(len))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(LogError::io("reading log segment size", &last.path, e)),
    }
}

/// Reads from one directory listing; `None` means the listing went stale
/// before any byte was read and the caller should re-list.
fn read_listed(
    segments: &[Segment],
    stream: Stream,
    offset: u64,
    max: usize,
) -> Result<Option<LogChunk>, LogError> {
    let Some(first) = segments.first() else {
        return Ok(Some(LogChunk {
            stream,
            offset: 0,
            data: Vec::new(),
            next_offset: 0,
            truncated_bytes: 0,
        }));
    };
    let truncated_bytes = first.start;
    let Some(end) = end_of(segments)? else {
        return Ok(None);
    };
    let mut pos = offset.max(truncated_bytes);
    if pos >= end {
        return Ok(Some(LogChunk {
            stream,
            offset: end,
            data: Vec::new(),
            next_offset: end,
            truncated_bytes,
        }));
    }

    // Sized by what exists, not by `max`, which callers may pass as "all".
    let available = usize::try_from(end - pos).unwrap_or(usize::MAX);
    let mut data = Vec::with_capacity(max.min(available));
    let mut chunk_offset = pos;
    // Newest segment starting at or before `pos`; exists since pos >= first.start.
    let mut idx = segments.partition_point(|s| s.start <= pos) - 1;

    while data.len() < max && idx < segments.len() {
        let seg = &segments[idx];
        // Where this segment logically ends; the newest one has no bound and
        // is read to its current EOF, which may include bytes written since
        // `end` was measured — still contiguous, so harmless.
        let limit = segments.get(idx + 1).map(|next| next.start);
        let file = match open_at(seg, pos - seg.start) {
            Ok(file) => file,
            // Rotated away after listing. Once open, deletion can't hurt us
            // (the inode lives on), so this only happens before reading it.
            Err((_, e)) if e.kind() == io::ErrorKind::NotFound => {
                if data.is_empty() {
                    return Ok(None);
                }
                break;
            }
            Err((op, e)) => return Err(LogError::io(op, &seg.path, e)),
        };
        let mut want = (max - data.len()) as u64;
        if let Some(limit) = limit {
            want = want.min(limit.saturating_sub(pos));
        }
        let got = file
            .take(want)
            .read_to_end(&mut data)
            .map_err(|e| LogError::io("reading log segment", &seg.path, e))?;
        pos += got as u64;

        if let Some(limit) = limit {
            if pos < limit && data.len() < max {
                // A non-newest segment shorter than its successor's start:
                // bytes are missing (external tampering or a crash). Never
                // splice across the hole, since `offset` must stay truthful;
                // skip it only when nothing was read yet so followers move on.
                if !data.is_empty() {
                    break;
                }
                pos = limit;
                chunk_offset = limit;
            }
        }
        idx += 1;
    }

    Ok(Some(LogChunk {
        stream,
        offset: chunk_offset,
        data,
        next_offset: pos,
        truncated_bytes,
    }))
}

/// The segment's bytes from `offset` (within it) on: a seek in a plain segment, decompressing and
/// discarding what comes before it in a compressed one. The error says which step failed.
fn open_at(seg: &Segment, offset: u64) -> Result<Box<dyn Read>, (&'static str, io::Error)> {
    if seg.compressed {
        // A NotFound here is the file's absence, as for a plain segment (nothing else opens a file).
        return match compressed::open_at(&seg.path, offset) {
            Ok(reader) => Ok(Box::new(reader)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(("opening log segment", e)),
            Err(e) => Err(("decompressing log segment", e)),
        };
    }
    let mut file = File::open(&seg.path).map_err(|e| ("opening log segment", e))?;
    file.seek(SeekFrom::Start(offset))
        .map_err(|e| ("seeking log segment", e))?;
    Ok(Box::new(file))
}

/// The writer's rotations land between a reader's listing and its reads; here they are made by hand at
/// exactly that point, so each race is played deterministically.
#[cfg(test)]
mod tests {
    use super::*;

    const S: Stream = Stream::Stdout;

    /// Writes segment files as a writer would leave them, `(start, bytes)`.
    fn put(dir: &Path, parts: &[(u64, &[u8])]) {
        for (start, data) in parts {
            std::fs::write(segment::path(dir, S, *start), data).expect("write segment");
        }
    }

    fn remove(dir: &Path, start: u64) {
        std::fs::remove_file(segment::path(dir, S, start)).expect("remove segment");
    }

    fn listing(dir: &Path) -> Vec<Segment> {
        segment::list(dir, S).expect("list")
    }

    fn chunk(offset: u64, data: &[u8], truncated_bytes: u64) -> LogChunk {
        LogChunk {
            stream: S,
            offset,
            data: data.to_vec(),
            next_offset: offset + data.len() as u64,
            truncated_bytes,
        }
    }

    /// A segment path that cannot be looked at for a reason other than absence (a file used as a
    /// directory): such errors are real and must not be mistaken for a rotation.
    fn unreachable(dir: &Path, start: u64) -> Segment {
        let file = dir.join("not-a-dir");
        std::fs::write(&file, b"").expect("write file");
        Segment {
            start,
            path: file.join(segment::file_name(S, start)),
            compressed: false,
        }
    }

    #[test]
    fn a_listing_whose_newest_segment_was_rotated_away_is_stale() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path();
        put(dir, &[(0, b"abcde"), (5, b"fgh")]);
        let stale = listing(dir);
        // Two rotations: both listed segments are pruned.
        put(dir, &[(8, b"ijk"), (11, b"l")]);
        remove(dir, 0);
        remove(dir, 5);
        assert_eq!(end_of(&stale).expect("end_of"), None);
        assert_eq!(read_listed(&stale, S, 0, 100).expect("read_listed"), None);
        // A fresh listing answers.
        assert_eq!(read(dir, S, 0, 100).expect("read"), chunk(8, b"ijkl", 8));
        assert_eq!(stat(dir, S).expect("stat"), (12, 8));
    }

    #[test]
    fn an_older_segment_rotated_away_before_reading_means_relist() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path();
        put(dir, &[(0, b"abcde"), (5, b"fgh")]);
        let stale = listing(dir);
        put(dir, &[(8, b"ij")]);
        remove(dir, 0);
        assert_eq!(read_listed(&stale, S, 0, 100).expect("read_listed"), None);
        assert_eq!(read(dir, S, 0, 100).expect("read"), chunk(5, b"fghij", 5));
    }

    #[test]
    fn a_segment_gone_after_bytes_were_read_ends_the_chunk_there() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path();
        put(dir, &[(0, b"abcde"), (5, b"fgh"), (8, b"ij")]);
        let stale = listing(dir);
        // As if pruned after the read had opened segment 0 (an open file outlives its name).
        remove(dir, 5);
        assert_eq!(
            read_listed(&stale, S, 0, 100).expect("read_listed"),
            Some(chunk(0, b"abcde", 0))
        );
    }

    #[test]
    fn errors_other_than_a_vanished_segment_are_reported() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path();
        put(dir, &[(5, b"fgh")]);
        let newest = vec![unreachable(dir, 5)];
        assert!(
            matches!(end_of(&newest), Err(LogError::Io { op, .. }) if op == "reading log segment size"),
            "{:?}",
            end_of(&newest)
        );
        let mut oldest = vec![unreachable(dir, 0)];
        oldest.extend(listing(dir));
        let got = read_listed(&oldest, S, 0, 100);
        assert!(
            matches!(got, Err(LogError::Io { op, .. }) if op == "opening log segment"),
            "{got:?}"
        );
    }

    /// Bytes missing between two segments (a crash, tampering) end a chunk; a reader already at the gap
    /// is moved past it, and the chunk's offset says so.
    #[test]
    fn a_gap_between_segments_is_never_spliced_over() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path();
        put(dir, &[(0, b"abc"), (10, b"klmno")]);
        // (offset, max) → chunk
        let table: [(u64, usize, LogChunk); 5] = [
            (0, 100, chunk(0, b"abc", 0)),
            (1, 1, chunk(1, b"b", 0)),
            (3, 100, chunk(10, b"klmno", 0)),
            (3, 2, chunk(10, b"kl", 0)),
            (7, 100, chunk(10, b"klmno", 0)),
        ];
        for (offset, max, want) in table {
            assert_eq!(
                read(dir, S, offset, max).expect("read"),
                want,
                "read({offset}, {max})"
            );
        }
    }

    /// Offsets are u64 end to end: a stream near the top of the range reads without overflowing.
    #[test]
    fn offsets_near_u64_max_read_without_overflow() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path();
        let start = u64::MAX - 10;
        put(dir, &[(start, b"abcd")]);
        assert_eq!(
            read(dir, S, 0, usize::MAX).expect("read"),
            chunk(start, b"abcd", start)
        );
        assert_eq!(stat(dir, S).expect("stat"), (start + 4, start));
    }
}

//! The read side: random access by logical offset over whatever segments are
//! currently on disk, tolerant of a writer rotating underneath.
//!
//! These functions use blocking `std::fs`; async callers run them in
//! `spawn_blocking`.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;

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
    pub stream: Stream,
    /// Logical offset of `data[0]`. Greater than the requested offset when
    /// that was already truncated away (or beyond the end).
    pub offset: u64,
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
    match std::fs::metadata(&last.path) {
        Ok(meta) => Ok(Some(last.start.saturating_add(meta.len()))),
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
        let mut file = match File::open(&seg.path) {
            Ok(file) => file,
            // Rotated away after listing. Once open, deletion can't hurt us
            // (the inode lives on), so this only happens before reading it.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if data.is_empty() {
                    return Ok(None);
                }
                break;
            }
            Err(e) => return Err(LogError::io("opening log segment", &seg.path, e)),
        };
        file.seek(SeekFrom::Start(pos - seg.start))
            .map_err(|e| LogError::io("seeking log segment", &seg.path, e))?;
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

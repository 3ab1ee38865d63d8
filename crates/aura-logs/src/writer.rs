//! The capture side: drains a job's pipe into rotating segment files, keeping
//! at most `cap` bytes and never holding output in memory across pipe reads.

use std::collections::VecDeque;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use tokio::fs::File;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;

use crate::segment;
use crate::{LogCap, LogError, Stream};

/// Bytes read from the pipe per iteration. Bounds memory per captured stream
/// while still letting a chatty process (FFmpeg progress) be drained in few
/// syscalls; the pipe itself only holds 64 KiB by default on Linux.
const READ_BUF: usize = 64 * 1024;

/// Logs may contain sensitive paths/arguments: owner read/write, group read.
const SEGMENT_MODE: u32 = 0o640;

/// Segments kept after a rotation: the full previous one plus the one being
/// written, which is what guarantees at least `cap / 2` bytes survive.
const KEPT_SEGMENTS: usize = 2;

/// Outcome of a finished capture.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct CaptureReport {
    /// Bytes read from the pipe and written to disk by this capture.
    pub bytes_written: u64,
    /// Logical bytes no longer on disk (start of the oldest kept segment).
    pub truncated_bytes: u64,
}

/// Reads `pipe` (the read end of a job's stdout or stderr pipe) until EOF,
/// writing it into segments under `dir`, which is created if missing when
/// the first byte arrives (a silent stream creates no file).
///
/// If `dir` already holds segments for `stream` (the same job's stream being
/// captured again), capture continues after the existing bytes rather than
/// overwriting them, so logical offsets stay monotonic for anyone following
/// the log. `bytes_written` counts only this call's bytes.
///
/// Must be called within a tokio runtime with IO enabled: the pipe is
/// registered with the reactor via
/// [`tokio::net::unix::pipe::Receiver::from_owned_fd`], which also makes it
/// non-blocking.
pub async fn capture(
    pipe: OwnedFd,
    dir: &Path,
    stream: Stream,
    cap: LogCap,
) -> Result<CaptureReport, LogError> {
    let mut rx =
        pipe::Receiver::from_owned_fd(pipe).map_err(|source| LogError::Pipe { stream, source })?;
    // Files are created on the first byte: most short jobs print nothing on one of their streams, and
    // creating files they never use costs more than the job itself for a trivial command.
    let mut writer: Option<SegmentWriter> = None;
    // Likewise the read buffer: a stream that only ever sees EOF costs a small stack array, and the
    // full-size buffer is allocated with the first byte.
    let mut first = [0u8; 512];
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let target: &mut [u8] = if buf.is_empty() { &mut first } else { &mut buf };
        let n = match rx.read(target).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(source) => return Err(LogError::Pipe { stream, source }),
        };
        let w = match &mut writer {
            Some(w) => w,
            None => writer.insert(SegmentWriter::open(dir, stream, cap).await?),
        };
        w.write(&target[..n]).await?;
        if buf.is_empty() {
            buf = vec![0u8; READ_BUF];
        }
    }
    Ok(writer.map(|w| w.report()).unwrap_or_default())
}

/// Appends to the newest segment and rotates when it is full.
struct SegmentWriter {
    dir: PathBuf,
    stream: Stream,
    segment_bytes: u64,
    /// Starts of the segments on disk that this writer is responsible for
    /// deleting, oldest first; the back one is `file`.
    kept: VecDeque<u64>,
    file: File,
    file_path: PathBuf,
    /// Bytes in the current segment.
    file_len: u64,
    /// Logical offset one past the last byte written.
    end: u64,
    bytes_written: u64,
}

impl SegmentWriter {
    /// Creates the directory if needed and opens the newest segment (continuing after existing bytes)
    /// or creates the first one: all the file system work in one blocking hop.
    async fn open(dir: &Path, stream: Stream, cap: LogCap) -> Result<Self, LogError> {
        let owned_dir = dir.to_path_buf();
        let opened = tokio::task::spawn_blocking(move || {
            let dir = owned_dir.as_path();
            std::fs::create_dir_all(dir)
                .map_err(|e| LogError::io("creating log directory", dir, e))?;
            let existing = segment::list(dir, stream)?;
            let kept: VecDeque<u64> = existing.iter().map(|s| s.start).collect();
            match existing.last() {
                Some(last) => {
                    let file = std::fs::OpenOptions::new()
                        .append(true)
                        .open(&last.path)
                        .map_err(|e| LogError::io("opening log segment", &last.path, e))?;
                    let len = file
                        .metadata()
                        .map_err(|e| LogError::io("reading log segment size", &last.path, e))?
                        .len();
                    Ok((
                        kept,
                        file,
                        last.path.clone(),
                        len,
                        last.start.saturating_add(len),
                    ))
                }
                None => {
                    let path = segment::path(dir, stream, 0);
                    let file = create_segment_blocking(&path)?;
                    Ok((VecDeque::from([0]), file, path, 0, 0))
                }
            }
        })
        .await
        .map_err(|e| LogError::io("opening log segment", dir, io::Error::other(e)))?;
        let (kept, file, file_path, file_len, end) = opened?;
        let file = File::from_std(file);

        let mut writer = SegmentWriter {
            dir: dir.to_path_buf(),
            stream,
            segment_bytes: cap.segment_bytes(),
            kept,
            file,
            file_path,
            file_len,
            end,
            bytes_written: 0,
        };
        // A previous capture may have used a larger cap; honour the current one.
        writer.prune().await;
        Ok(writer)
    }

    /// Writes `data` and flushes it to the file before returning, so a reader
    /// following the log sees it without waiting for more output.
    async fn write(&mut self, mut data: &[u8]) -> Result<(), LogError> {
        while !data.is_empty() {
            // Rotate lazily (before writing, not after filling) so a stream
            // that ends exactly on a boundary keeps two full segments and
            // leaves no empty trailing file.
            if self.file_len >= self.segment_bytes {
                self.rotate().await?;
            }
            let room = usize::try_from(self.segment_bytes - self.file_len).unwrap_or(usize::MAX);
            let (now, rest) = data.split_at(room.min(data.len()));
            self.file
                .write_all(now)
                .await
                .map_err(|e| LogError::io("writing log segment", &self.file_path, e))?;
            let n = now.len() as u64;
            self.file_len += n;
            self.end += n;
            self.bytes_written += n;
            data = rest;
        }
        self.flush().await
    }

    async fn flush(&mut self) -> Result<(), LogError> {
        // tokio's File writes in the background; flush waits for that write to
        // land (and surfaces its error) so data is visible to readers.
        self.file
            .flush()
            .await
            .map_err(|e| LogError::io("writing log segment", &self.file_path, e))
    }

    async fn rotate(&mut self) -> Result<(), LogError> {
        self.flush().await?;
        let path = segment::path(&self.dir, self.stream, self.end);
        // The new segment is created before old ones are deleted, so a reader
        // listing the directory at any moment sees a contiguous tail.
        self.file = create_segment(&path).await?;
        self.file_path = path;
        self.file_len = 0;
        self.kept.push_back(self.end);
        self.prune().await;
        Ok(())
    }

    /// Deletes all but the newest segments. A failed delete only costs disk
    /// space, so it is logged rather than aborting the job's log capture;
    /// readers derive truncation from what is actually on disk.
    async fn prune(&mut self) {
        while self.kept.len() > KEPT_SEGMENTS {
            let Some(start) = self.kept.pop_front() else {
                break;
            };
            let path = segment::path(&self.dir, self.stream, start);
            match tokio::fs::remove_file(&path).await {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!(
                    path = %path.display(),
                    error = %e,
                    "failed to delete rotated log segment; log exceeds its cap"
                ),
            }
        }
    }

    fn report(&self) -> CaptureReport {
        CaptureReport {
            bytes_written: self.bytes_written,
            truncated_bytes: self.kept.front().copied().unwrap_or(0),
        }
    }
}

async fn create_segment(path: &Path) -> Result<File, LogError> {
    let owned = path.to_path_buf();
    let file = tokio::task::spawn_blocking(move || create_segment_blocking(&owned))
        .await
        .map_err(|e| LogError::io("creating log segment", path, io::Error::other(e)))??;
    Ok(File::from_std(file))
}

fn create_segment_blocking(path: &Path) -> Result<std::fs::File, LogError> {
    use std::os::unix::fs::OpenOptionsExt;
    // create_new: an existing file at this offset would mean a second writer on
    // the same stream, and appending to it would corrupt logical offsets.
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(SEGMENT_MODE)
        .open(path)
        .map_err(|e| LogError::io("creating log segment", path, e))?;
    // The process umask may have narrowed the mode; set it exactly.
    file.set_permissions(std::fs::Permissions::from_mode(SEGMENT_MODE))
        .map_err(|e| LogError::io("setting log segment permissions", path, e))?;
    Ok(file)
}

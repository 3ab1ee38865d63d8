//! The capture side: drains a job's pipe into rotating segment files, keeping
//! at most `cap` bytes and never holding output in memory across pipe reads.
//! Synchronous and event-driven (`Capture::drain` when the pipe is readable): the owner's event loop
//! waits for readability.

use std::collections::VecDeque;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

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

/// After a failed write (a full or failing volume) output is dropped, still read from the pipe so that the
/// job neither blocks nor dies of SIGPIPE for it, and writing is tried again this long after.
const RETRY_AFTER: Duration = Duration::from_secs(2);

/// With a floor under the volume's free space (`Capture::with_min_free`), it is looked at again after
/// this many bytes written.
const FLOOR_CHECK_BYTES: u64 = 1 << 20;

/// Outcome of a finished capture.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct CaptureReport {
    /// Bytes read from the pipe by this capture (those rotated away included).
    pub bytes_written: u64,
    /// Logical bytes no longer on disk (start of the oldest kept segment).
    pub truncated_bytes: u64,
    /// Bytes read from the pipe but never written because the log volume refused them (full, failing).
    pub dropped_bytes: u64,
}

/// One stream's capture, driven by its owner's event loop (the supervisor's watcher thread): call
/// [`drain`](Capture::drain) whenever the pipe is readable. Synchronous on purpose: each chunk is read and
/// appended on the thread that was woken for it, with no hand-off per chunk (a chatty FFmpeg writes
/// progress to stderr many times a second).
///
/// The log directory is created, and the segment files opened, with the first byte: most short jobs print
/// nothing on one of their streams, and creating files they never use costs more than the job itself for
/// a trivial command. If `dir` already holds segments for `stream` (the same job's stream captured
/// again), capture continues after the existing bytes rather than overwriting them, so logical offsets
/// stay monotonic for anyone following the log. `bytes_written` counts only this capture's bytes.
pub struct Capture {
    pipe: OwnedFd,
    dir: PathBuf,
    stream: Stream,
    cap: LogCap,
    writer: Option<SegmentWriter>,
    /// Allocated with the first byte, like the files: a stream that only ever sees EOF costs a small
    /// stack array.
    buf: Vec<u8>,
    eof: bool,
    /// Set while writes fail: when the last one failed, and why.
    failing: Option<(Instant, String)>,
    dropped: u64,
    /// Dropped bytes not yet noted in the log itself (a marker line goes in before the next output).
    unnoted: u64,
    /// Free bytes the volume keeps for others (the job database); 0: none.
    min_free: u64,
    /// Bytes written since the floor was last looked at.
    since_check: u64,
    /// Sees every byte read, before it is written (progress parsing of the same stream).
    tap: Option<Tap>,
}

/// What [`Capture::with_tap`] calls with each chunk read from the pipe.
pub type Tap = Box<dyn FnMut(&[u8]) + Send>;

impl Capture {
    /// Takes the read end of a job's stdout or stderr pipe and makes it non-blocking.
    pub fn new(
        pipe: OwnedFd,
        dir: &Path,
        stream: Stream,
        cap: LogCap,
    ) -> Result<Capture, LogError> {
        rustix::io::ioctl_fionbio(&pipe, true).map_err(|e| LogError::Pipe {
            stream,
            source: e.into(),
        })?;
        Ok(Capture {
            pipe,
            dir: dir.to_path_buf(),
            stream,
            cap,
            writer: None,
            buf: Vec::new(),
            eof: false,
            failing: None,
            dropped: 0,
            unnoted: 0,
            min_free: 0,
            since_check: u64::MAX,
            tap: None,
        })
    }

    /// Never writes into the last `bytes` of the log volume: below that, output is dropped as on a full
    /// volume (the space left belongs to the job database). Checked with `statvfs` every
    /// `FLOOR_CHECK_BYTES` written and on every retry.
    pub fn with_min_free(mut self, bytes: u64) -> Capture {
        self.min_free = bytes;
        self
    }

    /// Hands every chunk read from the pipe to `tap` too, before it is written (and whether or not the
    /// volume takes it): the engine reads progress out of a job's stream this way.
    pub fn with_tap(mut self, tap: Tap) -> Capture {
        self.tap = Some(tap);
        self
    }

    /// Whether the volume is above the floor (checked every `FLOOR_CHECK_BYTES`).
    fn above_floor(&mut self, n: usize) -> Result<(), LogError> {
        if self.min_free == 0 {
            return Ok(());
        }
        self.since_check = self.since_check.saturating_add(n as u64);
        if self.since_check < FLOOR_CHECK_BYTES {
            return Ok(());
        }
        let Some(dir) = self.dir.ancestors().find(|d| d.exists()) else {
            return Ok(());
        };
        let free = match rustix::fs::statvfs(dir) {
            Ok(s) => s.f_bavail.saturating_mul(s.f_frsize),
            Err(_) => return Ok(()),
        };
        if free < self.min_free {
            // Not reset: the next write looks again.
            return Err(LogError::io(
                "keeping the log volume's last free space",
                dir,
                io::Error::other(format!(
                    "{free} bytes free, below the floor of {}",
                    self.min_free
                )),
            ));
        }
        self.since_check = 0;
        Ok(())
    }

    /// The pipe, for the owner's poll set.
    pub fn pipe(&self) -> BorrowedFd<'_> {
        self.pipe.as_fd()
    }

    /// Which of the job's streams this captures.
    pub fn stream(&self) -> Stream {
        self.stream
    }

    /// Appends what the pipe holds now, at most about `budget` bytes (so that one busy stream cannot
    /// hold up its owner's other work), and returns whether the pipe reached EOF — the capture is then
    /// complete. Never blocks on the pipe.
    pub fn drain(&mut self, budget: usize) -> Result<bool, LogError> {
        let mut taken = 0;
        let mut first = [0u8; 512];
        while !self.eof && taken < budget {
            let target: &mut [u8] = if self.buf.is_empty() {
                &mut first
            } else {
                &mut self.buf
            };
            let n = match rustix::io::read(&self.pipe, &mut *target) {
                Ok(0) => {
                    self.eof = true;
                    break;
                }
                Ok(n) => n,
                Err(rustix::io::Errno::AGAIN) => break,
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => {
                    return Err(LogError::Pipe {
                        stream: self.stream,
                        source: e.into(),
                    })
                }
            };
            if self.buf.is_empty() {
                self.buf = vec![0u8; READ_BUF];
                self.buf[..n].copy_from_slice(&first[..n]);
            }
            if let Some(tap) = &mut self.tap {
                tap(&self.buf[..n]);
            }
            self.append(n);
            taken += n;
        }
        Ok(self.eof)
    }

    /// Writes the first `n` bytes of the buffer, or drops them while the volume refuses writes: a log is
    /// worth less than the job that writes it. The first write after a drop is preceded by a line saying
    /// what was lost.
    fn append(&mut self, n: usize) {
        if let Some((since, _)) = &self.failing {
            if since.elapsed() < RETRY_AFTER {
                self.dropped += n as u64;
                self.unnoted += n as u64;
                return;
            }
        }
        if self.failing.is_some() {
            self.since_check = u64::MAX;
        }
        let floor = self.above_floor(n);
        let (dir, stream, cap) = (&self.dir, self.stream, self.cap);
        // Bytes of this output that reached the file (or were rotated away) before a write failed: a
        // write cut short by a full volume is not dropped as a whole.
        let mut landed = 0u64;
        let attempt = || -> Result<(), LogError> {
            floor?;
            let w = match &mut self.writer {
                Some(w) => w,
                None => self.writer.insert(SegmentWriter::open(dir, stream, cap)?),
            };
            if self.unnoted > 0 {
                let why = self.failing.as_ref().map_or("", |(_, e)| e.as_str());
                let note = format!(
                    "\n[aura: {} bytes of output dropped: {why}]\n",
                    self.unnoted
                );
                w.write(note.as_bytes())?;
                self.unnoted = 0;
            }
            let before = w.bytes_written;
            let written = w.write(&self.buf[..n]);
            landed = w.bytes_written.saturating_sub(before);
            written
        };
        match attempt() {
            Ok(()) => {
                if self.failing.take().is_some() {
                    tracing::info!(dir = %self.dir.display(), stream = %self.stream, dropped = self.dropped, "log capture writes again");
                }
            }
            Err(e) => {
                if self.failing.is_none() {
                    tracing::warn!(dir = %self.dir.display(), stream = %self.stream, error = %e, "log capture cannot write; dropping output (the job keeps running)");
                }
                let why = match &e {
                    LogError::Io { source, .. } => source.to_string(),
                    other => other.to_string(),
                };
                self.failing = Some((Instant::now(), why));
                let lost = (n as u64).saturating_sub(landed);
                self.dropped += lost;
                self.unnoted += lost;
            }
        }
    }

    /// Bytes captured, truncated and dropped so far; final once [`drain`](Capture::drain) saw EOF.
    pub fn report(&self) -> CaptureReport {
        let mut report = self
            .writer
            .as_ref()
            .map(SegmentWriter::report)
            .unwrap_or_default();
        report.dropped_bytes = self.dropped;
        report
    }
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
    /// or creates the first one.
    fn open(dir: &Path, stream: Stream, cap: LogCap) -> Result<Self, LogError> {
        std::fs::create_dir_all(dir).map_err(|e| LogError::io("creating log directory", dir, e))?;
        let existing = segment::list(dir, stream)?;
        let kept: VecDeque<u64> = existing.iter().map(|s| s.start).collect();
        let (kept, file, file_path, file_len, end) = match existing.last() {
            // Closed and compressed since (captured again into the same directory): appending raw
            // bytes to a zstd stream would corrupt it, so a new segment starts where it ends.
            Some(last) if last.compressed => {
                let len = crate::compressed::decompressed_len(&last.path)
                    .map_err(|e| LogError::io("decompressing log segment", &last.path, e))?;
                let end = last.start.saturating_add(len);
                let path = segment::path(dir, stream, end);
                let file = create_segment(&path)?;
                let mut kept = kept;
                kept.push_back(end);
                (kept, file, path, 0, end)
            }
            Some(last) => {
                let file = std::fs::OpenOptions::new()
                    .append(true)
                    .open(&last.path)
                    .map_err(|e| LogError::io("opening log segment", &last.path, e))?;
                let len = file
                    .metadata()
                    .map_err(|e| LogError::io("reading log segment size", &last.path, e))?
                    .len();
                (
                    kept,
                    file,
                    last.path.clone(),
                    len,
                    last.start.saturating_add(len),
                )
            }
            None => {
                let path = segment::path(dir, stream, 0);
                let file = create_segment(&path)?;
                (VecDeque::from([0]), file, path, 0, 0)
            }
        };
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
        writer.prune();
        Ok(writer)
    }

    /// Writes `data` to the file (in the page cache at once: a reader following the log sees it
    /// without waiting for more output).
    fn write(&mut self, mut data: &[u8]) -> Result<(), LogError> {
        // Bytes that the rotations of this very call would delete are never written: one pipe read can
        // hold many times a small cap, and writing it out would create and delete a segment per
        // `segment_bytes`, a burst that readers listing the directory keep losing races to. Segments
        // still start where they would have (a multiple of `segment_bytes` past the current one), so the
        // files do not depend on how the pipe reads were split; the ones before the skip are pruned
        // once the two kept segments exist.
        let seg = self.segment_bytes;
        let current_start = self.end - self.file_len;
        let new_end = self.end.saturating_add(data.len() as u64);
        if new_end > current_start {
            let last_start = current_start + (new_end - current_start - 1) / seg * seg;
            let first_kept = last_start.saturating_sub(seg);
            if first_kept > self.end {
                let skipped = first_kept - self.end;
                self.end = first_kept;
                self.bytes_written += skipped;
                data = &data[usize::try_from(skipped).unwrap_or(data.len())..];
                self.rotate()?;
            }
        }
        while !data.is_empty() {
            // Rotate lazily (before writing, not after filling) so a stream
            // that ends exactly on a boundary keeps two full segments and
            // leaves no empty trailing file.
            if self.file_len >= self.segment_bytes {
                self.rotate()?;
            }
            let room = usize::try_from(self.segment_bytes - self.file_len).unwrap_or(usize::MAX);
            let (now, rest) = data.split_at(room.min(data.len()));
            if let Err(e) = self.file.write_all(now) {
                self.resync();
                return Err(LogError::io("writing log segment", &self.file_path, e));
            }
            let n = now.len() as u64;
            self.file_len += n;
            self.end += n;
            self.bytes_written += n;
            data = rest;
        }
        Ok(())
    }

    /// After a failed write: part of it may be in the file; offsets follow what is really there.
    fn resync(&mut self) {
        if let Ok(meta) = self.file.metadata() {
            let start = self.end - self.file_len;
            self.bytes_written = (self.bytes_written + meta.len()).saturating_sub(self.file_len);
            self.file_len = meta.len();
            self.end = start + meta.len();
        }
    }

    fn rotate(&mut self) -> Result<(), LogError> {
        let path = segment::path(&self.dir, self.stream, self.end);
        // The new segment is created before old ones are deleted, so a reader
        // listing the directory at any moment sees a contiguous tail.
        self.file = create_segment(&path)?;
        self.file_path = path;
        self.file_len = 0;
        self.kept.push_back(self.end);
        self.prune();
        Ok(())
    }

    /// Deletes all but the newest segments. A failed delete only costs disk
    /// space, so it is logged rather than aborting the job's log capture;
    /// readers derive truncation from what is actually on disk.
    fn prune(&mut self) {
        while self.kept.len() > KEPT_SEGMENTS {
            let Some(start) = self.kept.pop_front() else {
                break;
            };
            // Either form: a closed segment may have been compressed since it was listed.
            for path in [
                segment::path(&self.dir, self.stream, start),
                segment::compressed_path(&self.dir, self.stream, start),
            ] {
                match std::fs::remove_file(&path) {
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
    }

    fn report(&self) -> CaptureReport {
        CaptureReport {
            bytes_written: self.bytes_written,
            truncated_bytes: self.kept.front().copied().unwrap_or(0),
            dropped_bytes: 0,
        }
    }
}

fn create_segment(path: &Path) -> Result<std::fs::File, LogError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::pipe::{pipe_with, PipeFlags};

    /// A capture of a fresh pipe into `dir`, and the pipe's (blocking) write end.
    fn capture(dir: &Path, cap: u64) -> (Capture, File) {
        let (rx, tx) = pipe_with(PipeFlags::CLOEXEC).expect("pipe");
        let cap = LogCap::new(cap).expect("cap");
        let capture = Capture::new(rx, dir, Stream::Stdout, cap).expect("capture");
        (capture, File::from(tx))
    }

    /// Puts `data` through the pipe in pieces the pipe buffer holds, draining after each. Each drain
    /// must take its whole piece (written or dropped), so a capture that stops reading fails here
    /// rather than leaving the next write blocked on a full pipe.
    fn send(capture: &mut Capture, tx: &mut File, data: &[u8]) {
        let taken = |capture: &Capture| {
            let report = capture.report();
            report.bytes_written + report.dropped_bytes
        };
        for piece in data.chunks(16 * 1024) {
            let before = taken(capture);
            tx.write_all(piece).expect("write");
            assert!(!capture.drain(usize::MAX).expect("drain"));
            assert!(
                taken(capture) >= before + piece.len() as u64,
                "piece not drained"
            );
        }
    }

    /// Drains until EOF, once the write end is closed. Another test of this binary that starts a process
    /// (a mount) holds a copy of every open pipe end in its child between fork and exec: EOF comes once
    /// that child has exec'd, a moment later.
    fn drain_to_eof(capture: &mut Capture) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !capture.drain(usize::MAX).expect("drain") {
            assert!(
                Instant::now() < deadline,
                "no EOF after the write end closed"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn feed(capture: &mut Capture, tx: &mut File, n: u64) {
        send(capture, tx, &vec![b'x'; usize::try_from(n).expect("size")]);
    }

    #[test]
    fn segments_are_half_the_cap_rounded_down() {
        for (cap, segment) in [(2, 1), (3, 1), (10, 5), (11, 5), (1 << 20, 1 << 19)] {
            let cap = LogCap::new(cap).expect("cap");
            assert_eq!(cap.segment_bytes(), segment, "{cap:?}");
        }
    }

    #[test]
    fn drain_is_done_only_at_eof() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (mut capture, mut tx) = capture(tmp.path(), 1024);
        assert!(!capture.drain(usize::MAX).expect("drain"), "nothing yet");
        tx.write_all(b"abc").expect("write");
        assert!(
            !capture.drain(usize::MAX).expect("drain"),
            "writer still open"
        );
        assert_eq!(capture.report().bytes_written, 3);
        drop(tx);
        drain_to_eof(&mut capture);
        assert!(capture.drain(usize::MAX).expect("drain"), "EOF stays EOF");
        assert_eq!(capture.report().bytes_written, 3);
    }

    /// A drain stops once its budget is spent (met exactly, too: the first read of a drain takes at most
    /// 512 bytes), leaving the rest for the next one, which takes a whole pipe's worth in one read.
    #[test]
    fn drain_stops_at_its_budget() {
        let tmp = tempfile::tempdir().expect("tempdir");
        for budget in [1, 512] {
            let dir = tmp.path().join(format!("budget-{budget}"));
            let (mut capture, mut tx) = capture(&dir, 1 << 20);
            let total = 20_000u64;
            tx.write_all(&vec![b'x'; total as usize]).expect("write");
            assert!(!capture.drain(budget).expect("drain"));
            let first = capture.report().bytes_written;
            assert!(first > 0 && first < total, "budget {budget}: took {first}");
            assert!(!capture.drain(budget).expect("drain"));
            assert_eq!(capture.report().bytes_written, total, "budget {budget}");
        }
    }

    /// The free-space floor is looked at on the first write, then again once `FLOOR_CHECK_BYTES` more
    /// were written: not before (a `statvfs` per pipe read would cost more than the write), not later.
    #[test]
    fn the_floor_is_looked_at_every_floor_check_bytes() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (capture, mut tx) = capture(tmp.path(), 64 << 20);
        // Any volume has a byte free.
        let mut capture = capture.with_min_free(1);
        feed(&mut capture, &mut tx, 100);
        // From now on the volume is below the floor, whenever it is looked at.
        capture.min_free = u64::MAX;
        feed(&mut capture, &mut tx, FLOOR_CHECK_BYTES - 1);
        let report = capture.report();
        assert_eq!(
            (report.bytes_written, report.dropped_bytes),
            (100 + FLOOR_CHECK_BYTES - 1, 0)
        );
        feed(&mut capture, &mut tx, 1);
        let report = capture.report();
        assert_eq!(
            (report.bytes_written, report.dropped_bytes),
            (100 + FLOOR_CHECK_BYTES - 1, 1)
        );
    }

    /// After a failed write, output is dropped without trying for `RETRY_AFTER`; the first write after
    /// that is preceded by a note of exactly what was lost. The failure's time is set by hand (far in
    /// the future, then long past) so that no test depends on how fast it runs.
    #[test]
    fn output_dropped_while_failing_is_noted_once_writes_work_again() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("logs");
        let (mut capture, mut tx) = capture(&dir, 1 << 20);
        let failed_at = Instant::now() + Duration::from_secs(3600);
        capture.failing = Some((failed_at, "disk full".to_owned()));
        tx.write_all(b"abc").expect("write");
        assert!(!capture.drain(usize::MAX).expect("drain"));
        tx.write_all(b"de").expect("write");
        assert!(!capture.drain(usize::MAX).expect("drain"));
        assert_eq!(capture.report().dropped_bytes, 5);
        assert!(!dir.exists(), "no write was tried");

        let long_ago = Instant::now().checked_sub(2 * RETRY_AFTER);
        capture.failing = Some((long_ago.expect("clock past 4 s"), "disk full".to_owned()));
        tx.write_all(b"fgh").expect("write");
        drop(tx);
        drain_to_eof(&mut capture);
        assert!(capture.failing.is_none());
        let note = "\n[aura: 5 bytes of output dropped: disk full]\n";
        let logged = std::fs::read(segment::path(&dir, Stream::Stdout, 0)).expect("read");
        assert_eq!(String::from_utf8_lossy(&logged), format!("{note}fgh"));
        assert_eq!(
            capture.report(),
            CaptureReport {
                bytes_written: note.len() as u64 + 3,
                truncated_bytes: 0,
                dropped_bytes: 5,
            }
        );
    }

    /// A write cut short by a full volume leaves part of its bytes in the segment: the writer's offsets
    /// must follow what is really on disk, or the next rotation names a segment at the wrong offset and
    /// readers see a hole or an overlap. Needs a tmpfs of its own, so root.
    #[test]
    fn a_write_cut_short_by_a_full_volume_keeps_offsets_true() {
        use std::process::Command;
        let root = tempfile::tempdir().expect("tempdir");
        let mnt = root.path().join("small");
        std::fs::create_dir(&mnt).expect("mkdir");
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
            .arg(&mnt)
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            eprintln!("skipped: cannot mount a tmpfs here (needs root)");
            return;
        }
        struct Unmount<'a>(&'a Path);
        impl Drop for Unmount<'_> {
            fn drop(&mut self) {
                let _ = Command::new("umount").arg(self.0).status();
            }
        }
        let _unmount = Unmount(&mnt);
        let pattern =
            |range: std::ops::Range<u64>| -> Vec<u8> { range.map(|i| (i % 251) as u8).collect() };

        // Half the volume is taken; the log (40 KiB segments) fills the rest mid-write.
        let filler = mnt.join("filler");
        std::fs::write(&filler, vec![0u8; 32 * 1024]).expect("filler");
        let dir = mnt.join("logs");
        let (mut capture, mut tx) = capture(&dir, 80 * 1024);
        let sent = 60 * 1024;
        // Pieces that do not divide the free space, so that one write is cut short, not refused whole.
        let piece = 10_000;
        for part in pattern(0..sent).chunks(piece) {
            send(&mut capture, &mut tx, part);
        }
        let on_disk = std::fs::metadata(segment::path(&dir, Stream::Stdout, 0))
            .expect("segment")
            .len();
        assert!(on_disk > 20 * 1024 && on_disk < sent, "{on_disk}");
        assert_ne!(on_disk % piece as u64, 0, "a write was cut short");
        assert_eq!(
            capture.report(),
            CaptureReport {
                bytes_written: on_disk,
                truncated_bytes: 0,
                dropped_bytes: sent - on_disk,
            }
        );

        // Space returns and the retry is due: the note and the new output cross into a second segment.
        std::fs::remove_file(&filler).expect("free the volume");
        let failed_at = capture.failing.as_ref().expect("failing").0;
        capture.failing = Some((failed_at - 2 * RETRY_AFTER, "full".to_owned()));
        let tail = pattern(0..20 * 1024);
        send(&mut capture, &mut tx, &tail);
        let note = format!(
            "\n[aura: {} bytes of output dropped: full]\n",
            sent - on_disk
        );
        let mut expected = pattern(0..on_disk);
        expected.extend_from_slice(note.as_bytes());
        expected.extend_from_slice(&tail);
        let end = expected.len() as u64;
        assert!(end > 40 * 1024, "the second segment is used");
        let chunk = crate::read(&dir, Stream::Stdout, 0, usize::MAX).expect("read");
        assert_eq!((chunk.offset, chunk.next_offset), (0, end));
        assert!(chunk.data == expected, "log differs from what was written");
        assert_eq!(capture.report().bytes_written, end);
    }

    /// One pipe read may hold many segments' worth, and the bytes that would be rotated away at once are
    /// skipped rather than written; the files left must still be exactly those that small reads leave:
    /// the same segment starts (multiples of `segment_bytes`) and the same bytes.
    #[test]
    fn segments_do_not_depend_on_how_the_pipe_reads_were_split() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let data: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
        let splits: [&[usize]; 8] = [
            &[1000],
            &[3, 997],
            &[5, 995],
            &[7, 6, 987],
            &[498, 2, 500],
            &[990, 3, 7],
            &[12; 84],
            &[1; 1000],
        ];
        for (i, split) in splits.into_iter().enumerate() {
            let dir = tmp.path().join(format!("split-{i}"));
            let (mut capture, mut tx) = capture(&dir, 10);
            let mut at = 0;
            for &len in split {
                let end = (at + len).min(data.len());
                send(&mut capture, &mut tx, &data[at..end]);
                at = end;
            }
            assert_eq!(at, data.len(), "split {i} covers the data");
            let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
                .expect("list")
                .map(|e| {
                    let e = e.expect("entry");
                    let name = e.file_name().to_string_lossy().into_owned();
                    (name, std::fs::read(e.path()).expect("read"))
                })
                .collect();
            files.sort();
            assert_eq!(
                files,
                [
                    (
                        segment::file_name(Stream::Stdout, 990),
                        data[990..995].to_vec()
                    ),
                    (
                        segment::file_name(Stream::Stdout, 995),
                        data[995..].to_vec()
                    ),
                ],
                "split {i}: {split:?}"
            );
            assert_eq!(
                capture.report(),
                CaptureReport {
                    bytes_written: 1000,
                    truncated_bytes: 990,
                    dropped_bytes: 0,
                },
                "split {i}"
            );
        }
    }

    /// The point of skipping what a read's own rotations would delete: one read of many segments' worth
    /// creates only the segments it keeps, not a create/delete burst that listing readers lose races to.
    #[test]
    fn one_read_of_many_segments_creates_only_the_segments_it_keeps() {
        use rustix::fs::inotify;
        use std::mem::MaybeUninit;
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("logs");
        let (mut capture, mut tx) = capture(&dir, 10);
        send(&mut capture, &mut tx, b"abc");
        let watch = inotify::init(inotify::CreateFlags::NONBLOCK | inotify::CreateFlags::CLOEXEC)
            .expect("inotify");
        inotify::add_watch(&watch, &dir, inotify::WatchFlags::CREATE).expect("watch");
        // One pipe read: the buffer exists since the first output.
        send(&mut capture, &mut tx, &[b'x'; 997]);
        let mut buf = [MaybeUninit::uninit(); 4096];
        let mut events = inotify::Reader::new(&watch, &mut buf);
        let mut created = Vec::new();
        loop {
            match events.next() {
                Ok(event) => created.push(
                    event
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                ),
                Err(rustix::io::Errno::AGAIN) => break,
                Err(e) => panic!("inotify: {e}"),
            }
        }
        assert_eq!(
            created,
            [
                segment::file_name(Stream::Stdout, 990),
                segment::file_name(Stream::Stdout, 995)
            ]
        );
    }

    #[test]
    fn a_floor_no_volume_meets_drops_everything_and_none_keeps_everything() {
        let tmp = tempfile::tempdir().expect("tempdir");
        // (min_free, bytes dropped of 10)
        for (min_free, dropped) in [(0, 0), (1, 0), (u64::MAX, 10)] {
            let dir = tmp.path().join(format!("floor-{min_free}"));
            let (capture, mut tx) = capture(&dir, 1024);
            let mut capture = capture.with_min_free(min_free);
            feed(&mut capture, &mut tx, 10);
            let report = capture.report();
            assert_eq!(
                (report.bytes_written, report.dropped_bytes),
                (10 - dropped, dropped),
                "min_free {min_free}"
            );
        }
    }
}

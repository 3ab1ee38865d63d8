//! Integration tests for `aura-logs`: real pipes, a real child process, and a
//! reader racing the writer's rotation.

use std::fs::File;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use aura_logs::{
    compressed_name, read, stat, Capture, CaptureReport, LogCap, LogChunk, LogError, Stream,
};
use rustix::pipe::{pipe_with, PipeFlags};

fn pipe() -> (OwnedFd, OwnedFd) {
    pipe_with(PipeFlags::CLOEXEC).expect("create pipe")
}

/// Captures `pipe` to EOF on this thread: a `Capture` driven by a poll of its pipe, as the supervisor's
/// watcher drives it with epoll.
fn capture_blocking(
    pipe: OwnedFd,
    dir: &Path,
    stream: Stream,
    cap: LogCap,
) -> Result<CaptureReport, LogError> {
    let mut capture = Capture::new(pipe, dir, stream, cap)?;
    while !capture.drain(usize::MAX)? {
        let pipe = capture.pipe();
        let mut fds = [rustix::event::PollFd::new(
            &pipe,
            rustix::event::PollFlags::IN,
        )];
        match rustix::event::poll(&mut fds, None) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => panic!("poll: {e}"),
        }
    }
    Ok(capture.report())
}

/// Deterministic content where each byte encodes its logical position, so any
/// reordering or misplaced offset shows up as a mismatch.
fn pattern(offset: u64) -> u8 {
    (offset % 251) as u8
}

fn pattern_bytes(range: std::ops::Range<u64>) -> Vec<u8> {
    range.map(pattern).collect()
}

/// Writes `data` into a fresh pipe from a thread, in `piece`-sized writes, and
/// captures it.
async fn capture_bytes(
    dir: &Path,
    stream: Stream,
    cap: u64,
    data: Vec<u8>,
    piece: usize,
) -> CaptureReport {
    let (rx, tx) = pipe();
    let writer = std::thread::spawn(move || {
        let mut tx = File::from(tx);
        for part in data.chunks(piece) {
            tx.write_all(part).expect("write to pipe");
        }
    });
    let report =
        capture_blocking(rx, dir, stream, LogCap::new(cap).expect("cap")).expect("capture");
    writer.join().expect("writer thread");
    report
}

fn read_all(dir: &Path, stream: Stream) -> Vec<u8> {
    read(dir, stream, 0, usize::MAX).expect("read").data
}

fn segment_count(dir: &Path, stream: Stream) -> usize {
    std::fs::read_dir(dir)
        .expect("list dir")
        .filter_map(|e| e.ok())
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.starts_with(&format!("{}.", stream.as_str())) && name.ends_with(".log")
        })
        .count()
}

#[tokio::test]
async fn small_output_is_kept_entirely() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("job-1").join("logs"); // does not exist yet
    let data = b"hello world\nsecond line\n".to_vec();
    let report = capture_bytes(&dir, Stream::Stdout, 1024, data.clone(), 5).await;
    assert_eq!(
        report,
        CaptureReport {
            bytes_written: data.len() as u64,
            truncated_bytes: 0,
            dropped_bytes: 0,
        }
    );

    let chunk = read(&dir, Stream::Stdout, 0, 4096).expect("read");
    assert_eq!(chunk.stream, Stream::Stdout);
    assert_eq!(chunk.offset, 0);
    assert_eq!(chunk.data, data);
    assert_eq!(chunk.next_offset, data.len() as u64);
    assert_eq!(chunk.truncated_bytes, 0);
    assert_eq!(
        stat(&dir, Stream::Stdout).expect("stat"),
        (data.len() as u64, 0)
    );

    // The other stream is independent and empty.
    let other = read(&dir, Stream::Stderr, 0, 4096).expect("read stderr");
    assert!(other.data.is_empty());
    assert_eq!((other.offset, other.next_offset), (0, 0));
}

#[tokio::test]
async fn segment_files_are_named_by_offset_with_mode_0640() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().expect("tempdir");
    capture_bytes(tmp.path(), Stream::Stderr, 10, pattern_bytes(0..12), 3).await;
    let mut names: Vec<String> = std::fs::read_dir(tmp.path())
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "stderr.00000000000000000005.log",
            "stderr.00000000000000000010.log"
        ]
    );
    for name in names {
        let mode = std::fs::metadata(tmp.path().join(name))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o640);
    }
}

#[tokio::test]
async fn output_three_times_cap_keeps_newest_tail() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cap = 10_000u64;
    // Odd piece size so writes straddle segment boundaries.
    for (total, piece) in [
        (3 * cap, 777usize),
        (3 * cap + 1234, 4096),
        (3 * cap - 1, 1),
    ] {
        let dir = tmp.path().join(format!("t{total}-{piece}"));
        let expected = pattern_bytes(0..total);
        let report = capture_bytes(&dir, Stream::Stdout, cap, expected.clone(), piece).await;
        let kept = read_all(&dir, Stream::Stdout);
        let kept_len = kept.len() as u64;
        assert!(
            kept_len >= cap / 2 && kept_len <= cap,
            "kept {kept_len} bytes of cap {cap}"
        );
        assert_eq!(
            kept,
            expected[(total - kept_len) as usize..],
            "kept bytes are the newest"
        );
        assert_eq!(report.bytes_written, total);
        assert_eq!(report.truncated_bytes, total - kept_len);
        assert_eq!(
            stat(&dir, Stream::Stdout).expect("stat"),
            (total, total - kept_len)
        );
        assert!(segment_count(&dir, Stream::Stdout) <= 2);
    }
}

#[tokio::test]
async fn real_child_process_output_is_capped() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (rx, tx) = pipe();
    let mut child = {
        // The Command owns our copy of the write end; dropping it at the end
        // of this block leaves the child as the only writer, so EOF arrives.
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "yes hello | head -c 300000"])
            .stdin(Stdio::null())
            .stdout(Stdio::from(tx));
        cmd.spawn().expect("spawn sh")
    };
    let report = capture_blocking(
        rx,
        tmp.path(),
        Stream::Stdout,
        LogCap::new(100_000).expect("cap"),
    )
    .expect("capture");
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .expect("join")
        .expect("wait");
    assert!(status.success());

    let expected = b"hello\n".repeat(50_000);
    assert_eq!(report.bytes_written, 300_000);
    let kept = read_all(tmp.path(), Stream::Stdout);
    let kept_len = kept.len() as u64;
    assert!((50_000..=100_000).contains(&kept_len), "kept {kept_len}");
    assert_eq!(report.truncated_bytes, 300_000 - kept_len);
    assert_eq!(kept, expected[(300_000 - kept_len) as usize..]);
    assert!(segment_count(tmp.path(), Stream::Stdout) <= 2);
}

#[tokio::test]
async fn reading_by_offset_in_pieces() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let total = 2_500u64;
    let cap = 1_000u64;
    capture_bytes(
        tmp.path(),
        Stream::Stdout,
        cap,
        pattern_bytes(0..total),
        333,
    )
    .await;
    let (end, truncated) = stat(tmp.path(), Stream::Stdout).expect("stat");
    assert_eq!(end, total);
    assert!(truncated > 0);

    // Small pieces reassemble exactly the kept tail, crossing segment borders.
    let mut offset = truncated;
    let mut assembled = Vec::new();
    loop {
        let chunk = read(tmp.path(), Stream::Stdout, offset, 7).expect("read");
        assert_eq!(chunk.offset, offset);
        assert!(chunk.data.len() <= 7);
        assert_eq!(chunk.next_offset, offset + chunk.data.len() as u64);
        assert_eq!(chunk.truncated_bytes, truncated);
        if chunk.data.is_empty() {
            break;
        }
        assembled.extend_from_slice(&chunk.data);
        offset = chunk.next_offset;
    }
    assert_eq!(offset, total);
    assert_eq!(assembled, pattern_bytes(truncated..total));

    // An offset inside the truncated region is moved forward.
    let chunk = read(tmp.path(), Stream::Stdout, 3, 10).expect("read");
    assert_eq!(chunk.offset, truncated);
    assert_eq!(chunk.data, pattern_bytes(truncated..truncated + 10));
    assert_eq!(chunk.next_offset, truncated + 10);

    // At and past the end: empty, next_offset = end.
    for past in [total, total + 1, u64::MAX] {
        let chunk = read(tmp.path(), Stream::Stdout, past, 10).expect("read");
        assert!(chunk.data.is_empty());
        assert_eq!(chunk.next_offset, total);
    }

    // max = 0 reads nothing but stays put.
    let chunk = read(tmp.path(), Stream::Stdout, truncated + 5, 0).expect("read");
    assert!(chunk.data.is_empty());
    assert_eq!(chunk.next_offset, truncated + 5);
}

#[tokio::test]
async fn capture_resumes_after_existing_segments() {
    let tmp = tempfile::tempdir().expect("tempdir");
    capture_bytes(tmp.path(), Stream::Stdout, 100, pattern_bytes(0..30), 7).await;
    let report = capture_bytes(tmp.path(), Stream::Stdout, 100, pattern_bytes(30..170), 9).await;
    assert_eq!(report.bytes_written, 140);
    let chunk = read(tmp.path(), Stream::Stdout, 0, usize::MAX).expect("read");
    assert_eq!(chunk.next_offset, 170);
    assert_eq!(chunk.offset, report.truncated_bytes);
    assert_eq!(chunk.data, pattern_bytes(report.truncated_bytes..170));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_during_rotation_are_ordered_and_never_fail() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().to_path_buf();
    let total = 400_000u64;
    // A small cap makes the writer rotate hundreds of times under the reader. (A 64-byte cap, a
    // rotation every 32 bytes, outpaces a reader bound to a finite number of retries once the capture
    // writes at the speed of the syscalls.)
    let cap = 1024u64;
    let done = Arc::new(AtomicBool::new(false));

    let reader = {
        let dir = dir.clone();
        let done = done.clone();
        tokio::task::spawn_blocking(move || {
            let mut offset = 0u64;
            let mut reads = 0u64;
            let mut bytes = 0u64;
            loop {
                let finished = done.load(Ordering::Acquire);
                let chunk = read(&dir, Stream::Stdout, offset, 50).expect("read during rotation");
                reads += 1;
                assert!(
                    chunk.offset >= offset,
                    "went backwards: {} < {offset}",
                    chunk.offset
                );
                assert_eq!(chunk.next_offset, chunk.offset + chunk.data.len() as u64);
                assert_eq!(
                    chunk.data,
                    pattern_bytes(chunk.offset..chunk.next_offset),
                    "bytes out of order at {}",
                    chunk.offset
                );
                bytes += chunk.data.len() as u64;
                offset = chunk.next_offset;
                if finished && chunk.data.is_empty() {
                    return (offset, reads, bytes);
                }
            }
        })
    };

    let report = capture_bytes(&dir, Stream::Stdout, cap, pattern_bytes(0..total), 13).await;
    done.store(true, Ordering::Release);
    let (end, reads, bytes) = reader.await.expect("reader");
    assert_eq!(report.bytes_written, total);
    assert_eq!(end, total);
    assert!(reads > 1 && bytes > 0);
}

#[test]
fn invalid_caps_and_streams_are_errors() {
    assert!(matches!(LogCap::new(0), Err(LogError::InvalidCap(0))));
    assert!(matches!(LogCap::new(1), Err(LogError::InvalidCap(1))));
    assert_eq!(LogCap::new(2).expect("cap 2").bytes(), 2);
    assert_eq!("stdout".parse::<Stream>().expect("parse"), Stream::Stdout);
    assert_eq!("stderr".parse::<Stream>().expect("parse"), Stream::Stderr);
    assert!(matches!(
        "stdin".parse::<Stream>(),
        Err(LogError::UnknownStream(_))
    ));
    assert_eq!(Stream::Stderr.as_str(), "stderr");
}

#[test]
fn missing_directory_reads_as_empty() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("never-created");
    let chunk = read(&dir, Stream::Stdout, 42, 100).expect("read missing dir");
    assert_eq!(chunk.offset, 0);
    assert!(chunk.data.is_empty());
    assert_eq!(chunk.next_offset, 0);
    assert_eq!(chunk.truncated_bytes, 0);
    assert_eq!(stat(&dir, Stream::Stderr).expect("stat"), (0, 0));
}

#[tokio::test]
async fn minimum_cap_still_rotates() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let report = capture_bytes(tmp.path(), Stream::Stdout, 2, pattern_bytes(0..10), 3).await;
    let chunk = read(tmp.path(), Stream::Stdout, 0, 100).expect("read");
    assert_eq!(chunk.data, pattern_bytes(8..10));
    assert_eq!(report.truncated_bytes, 8);
}

/// A tmpfs of its own (root only), so that nothing else moves its free space; unmounted on drop.
struct SmallVolume {
    root: tempfile::TempDir,
}

impl SmallVolume {
    /// `None` (the test skips) where a tmpfs cannot be mounted.
    fn mount(size: &str) -> Option<SmallVolume> {
        let root = tempfile::tempdir().expect("tempdir");
        let volume = SmallVolume { root };
        std::fs::create_dir(volume.path()).expect("mkdir");
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(volume.path())
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            eprintln!("skipped: cannot mount a tmpfs here (needs root)");
            return None;
        }
        Some(volume)
    }

    fn path(&self) -> PathBuf {
        self.root.path().join("small")
    }
}

impl Drop for SmallVolume {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.path()).status();
    }
}

/// A volume that fills up mid-capture: output is read and dropped (never an error, never a closed pipe
/// that would kill the writer with SIGPIPE), counted, and noted in the log once writing works again.
#[test]
fn a_full_volume_drops_output_and_keeps_draining() {
    let Some(volume) = SmallVolume::mount("256k") else {
        return;
    };
    let mnt = volume.path();
    let dir = mnt.join("logs");
    let (read_end, write_end) = pipe();
    let total: u64 = 2 * 1024 * 1024;
    let writer = std::thread::spawn(move || {
        let mut file = File::from(write_end);
        // Every byte must go into the pipe: a write error here (EPIPE) would mean the capture gave up.
        file.write_all(&pattern_bytes(0..total))
            .expect("the capture keeps reading");
    });
    let report = capture_blocking(
        read_end,
        &dir,
        Stream::Stdout,
        LogCap::new(64 << 20).unwrap(),
    )
    .expect("a full volume is not a capture error");
    writer.join().expect("writer thread");
    assert!(report.dropped_bytes > 0, "{report:?}");
    let on_disk = read_all(&dir, Stream::Stdout).len() as u64;
    assert!(on_disk <= 256 * 1024, "{on_disk}");
    assert_eq!(on_disk + report.dropped_bytes, total, "{report:?}");
    let kept = read_all(&dir, Stream::Stdout);
    assert_eq!(
        kept[..],
        pattern_bytes(0..on_disk)[..],
        "what was written is a prefix"
    );

    // Space returns (the file is removed): after the retry delay the next output is written, preceded by
    // a line saying how much was lost.
    std::fs::remove_dir_all(&dir).expect("free the volume");
    let (read_end, write_end) = pipe();
    let mut capture = Capture::new(
        read_end,
        &dir,
        Stream::Stderr,
        LogCap::new(1 << 20).unwrap(),
    )
    .expect("capture");
    let mut file = File::from(write_end);
    let filler = mnt.join("filler");
    let fill = std::fs::write(&filler, vec![0u8; 400 * 1024]);
    assert!(fill.is_err(), "the filler fills the volume");
    file.write_all(b"lost\n").expect("write");
    capture.drain(usize::MAX).expect("drain");
    assert_eq!(capture.report().dropped_bytes, 5);
    std::fs::remove_file(&filler).expect("free the volume");
    std::thread::sleep(std::time::Duration::from_millis(2100));
    file.write_all(b"kept\n").expect("write");
    drop(file);
    while !capture.drain(usize::MAX).expect("drain") {}
    let text = String::from_utf8(read_all(&dir, Stream::Stderr)).expect("utf-8");
    assert!(
        text.contains("[aura: 5 bytes of output dropped: No space left on device"),
        "{text}"
    );
    assert!(text.ends_with("kept\n"), "{text}");
}

#[test]
fn streams_display_as_their_names() {
    for stream in [Stream::Stdout, Stream::Stderr] {
        assert_eq!(stream.to_string(), stream.as_str());
        assert_eq!(
            stream.to_string().parse::<Stream>().expect("round trip"),
            stream
        );
    }
    assert_eq!(
        format!("{}|{}", Stream::Stdout, Stream::Stderr),
        "stdout|stderr"
    );
}

/// The free-space floor is exact: output is written with precisely `min_free` bytes free and dropped
/// with one byte less. Needs a volume of its own (a tmpfs) so that nothing else moves the free figure.
#[test]
fn the_free_space_floor_is_exact() {
    let Some(volume) = SmallVolume::mount("1m") else {
        return;
    };
    let mnt = volume.path();
    let free = || {
        let s = rustix::fs::statvfs(&mnt).expect("statvfs");
        s.f_bavail * s.f_frsize
    };
    // (floor relative to what is free, bytes dropped of 5); the dropping case goes first, since it
    // writes nothing and so leaves the free figure as it was.
    for (above_free, dropped) in [(1, 5), (0, 0)] {
        let dir = mnt.join(format!("logs-{above_free}"));
        let (read_end, write_end) = pipe();
        let mut capture = Capture::new(
            read_end,
            &dir,
            Stream::Stdout,
            LogCap::new(1024).expect("cap"),
        )
        .expect("capture")
        .with_min_free(free() + above_free);
        File::from(write_end).write_all(b"hello").expect("write");
        assert!(capture.drain(usize::MAX).expect("drain"));
        let report = capture.report();
        assert_eq!(
            (report.bytes_written, report.dropped_bytes),
            (5 - dropped, dropped),
            "floor {above_free} byte(s) above what is free"
        );
    }
}

/// Compresses every uncompressed segment in `dir` the way the janitor does: zstd level 3, streamed
/// (the length is not in the frame header), into a temporary name, renamed into place, then the
/// original removed.
fn compress_all(dir: &Path) -> usize {
    let mut compressed = 0;
    for entry in std::fs::read_dir(dir).expect("list dir") {
        let entry = entry.expect("entry");
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(target) = compressed_name(&name) else {
            continue;
        };
        let tmp = dir.join(format!("{target}.tmp"));
        let mut source = File::open(entry.path()).expect("open segment");
        let out = File::create(&tmp).expect("create compressed");
        zstd::stream::copy_encode(&mut source, out, 3).expect("compress");
        std::fs::rename(&tmp, dir.join(&target)).expect("rename");
        std::fs::remove_file(entry.path()).expect("remove original");
        compressed += 1;
    }
    compressed
}

/// Everything a caller can learn of a stream: `stat`, a whole read, reads at every interesting offset
/// (before the kept bytes, on and around each segment border, in the middle of segments, at and past
/// the end) with several sizes, and a follower's walk in small pieces.
fn everything(dir: &Path, stream: Stream) -> (Option<(u64, u64)>, Vec<LogChunk>) {
    let stat = stat(dir, stream).ok();
    let (end, truncated) = stat.unwrap_or((0, 0));
    let mut offsets = vec![0, 1, truncated, end, end + 1, u64::MAX];
    for step in [1_000u64, 16_384, 32_768] {
        offsets.extend((truncated..end).step_by(step as usize));
    }
    let mut chunks = Vec::new();
    for offset in offsets
        .iter()
        .flat_map(|&o| [o.saturating_sub(1), o, o.saturating_add(1)])
    {
        for max in [0, 1, 7, 4096, 40_000, usize::MAX] {
            chunks.push(read(dir, stream, offset, max).expect("read"));
        }
    }
    let mut offset = 0;
    loop {
        let chunk = read(dir, stream, offset, 3_001).expect("follow");
        let done = chunk.data.is_empty();
        offset = chunk.next_offset;
        chunks.push(chunk);
        if done {
            break;
        }
    }
    (stat, chunks)
}

/// A closed log compressed segment by segment (`.log.zst`, originals removed) reads back exactly as it
/// did before, through every read API and at every offset, the middle of segments included; a
/// segment there in both forms (a crash mid-compression) is read from the original.
#[tokio::test]
async fn compressed_segments_read_back_identical() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("logs").join("7").join("1");
    // stdout: truncated, two full-ish segments; stderr: one small segment; progress: nothing.
    capture_bytes(
        &dir,
        Stream::Stdout,
        100_000,
        pattern_bytes(0..260_123),
        4_099,
    )
    .await;
    capture_bytes(
        &dir,
        Stream::Stderr,
        100_000,
        b"warning: something\n".repeat(40),
        64,
    )
    .await;
    let streams = [Stream::Stdout, Stream::Stderr, Stream::Progress];
    let before: Vec<_> = streams.iter().map(|&s| everything(&dir, s)).collect();
    assert_eq!(before[0].0, Some((260_123, 200_000)));

    assert_eq!(
        compress_all(&dir),
        3,
        "two stdout segments and one of stderr"
    );
    let names: Vec<String> = std::fs::read_dir(&dir)
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| n.ends_with(".log.zst")), "{names:?}");
    for (stream, before) in streams.iter().zip(&before) {
        assert!(
            everything(&dir, *stream) == *before,
            "{stream} reads differ once compressed"
        );
    }

    // Crash mid-compression: the original is back beside a compressed file cut short. The original
    // wins, so nothing changes.
    let newest = dir.join("stdout.00000000000000250000.log");
    let compressed = dir.join("stdout.00000000000000250000.log.zst");
    let mut original = Vec::new();
    zstd::stream::copy_decode(File::open(&compressed).expect("open"), &mut original)
        .expect("decompress");
    assert_eq!(original, pattern_bytes(250_000..260_123), "byte-identical");
    std::fs::write(&newest, &original).expect("restore original");
    let cut = std::fs::read(&compressed).expect("read");
    std::fs::write(&compressed, &cut[..cut.len() / 2]).expect("cut short");
    assert!(
        everything(&dir, Stream::Stdout) == before[0],
        "the original is read"
    );
}

/// A large compressed segment is read from its middle in small pieces without error, each piece right.
#[tokio::test]
async fn a_large_compressed_segment_reads_from_its_middle() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().to_path_buf();
    let total = 6_000_000u64;
    capture_bytes(
        &dir,
        Stream::Stdout,
        16 << 20,
        pattern_bytes(0..total),
        65_536,
    )
    .await;
    compress_all(&dir);
    assert_eq!(stat(&dir, Stream::Stdout).expect("stat"), (total, 0));
    for offset in [0, 1, 4_194_303, 4_194_304, 5_999_990, total] {
        let chunk = read(&dir, Stream::Stdout, offset, 100).expect("read");
        let end = (offset + 100).min(total);
        assert_eq!((chunk.offset, chunk.next_offset), (offset, end));
        assert_eq!(chunk.data, pattern_bytes(offset..end));
    }
}

/// Capturing again into a directory whose newest segment was compressed starts a new segment where it
/// ends, rather than appending raw bytes to the zstd stream; the compressed segment is rotated away
/// like any other.
#[tokio::test]
async fn capture_after_compression_continues_in_a_new_segment() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().to_path_buf();
    capture_bytes(&dir, Stream::Stdout, 100, pattern_bytes(0..30), 7).await;
    compress_all(&dir);
    let report = capture_bytes(&dir, Stream::Stdout, 100, pattern_bytes(30..60), 9).await;
    assert_eq!(report.bytes_written, 30);
    let chunk = read(&dir, Stream::Stdout, 0, usize::MAX).expect("read");
    assert_eq!((chunk.offset, chunk.next_offset), (0, 60));
    assert_eq!(chunk.data, pattern_bytes(0..60));
    // Two more segments' worth: the compressed one goes.
    capture_bytes(&dir, Stream::Stdout, 100, pattern_bytes(60..200), 9).await;
    assert!(!dir.join("stdout.00000000000000000000.log.zst").exists());
    let chunk = read(&dir, Stream::Stdout, 0, usize::MAX).expect("read");
    assert_eq!(chunk.next_offset, 200);
    assert_eq!(chunk.data, pattern_bytes(chunk.offset..200));
}

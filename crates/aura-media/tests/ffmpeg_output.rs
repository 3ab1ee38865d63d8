//! The progress parsers on real FFmpeg output, captured from Debian 12's ffmpeg 5.1 (`tests/data/`):
//! `-progress pipe:3` blocks of a fast encode, a real-time (`-re`) encode, an audio-only encode and an
//! encode writing its media to stdout, and the matching stderr status lines (separated by `\r`).

use aura_media::{status_line, ProgressBlocks, Report};
use std::time::Duration;

fn data(name: &str) -> String {
    let path = format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn blocks(name: &str) -> Vec<Report> {
    let mut reader = ProgressBlocks::default();
    data(name).lines().filter_map(|l| reader.line(l)).collect()
}

#[test]
fn a_fast_encode_reports_a_start_and_an_end() {
    let reports = blocks("encode-progress.txt");
    assert_eq!(
        reports,
        [
            Report {
                frame: Some(1),
                fps: Some(0.0),
                out_time: Some(Duration::ZERO),
                speed: None,
                total_size: Some(48),
                bitrate_kbps: None,
                fraction: None,
                end: false,
            },
            Report {
                frame: Some(75),
                fps: Some(0.0),
                out_time: Some(Duration::from_micros(2_960_078)),
                speed: Some(68.8),
                total_size: Some(62_250),
                bitrate_kbps: Some(168.2),
                fraction: None,
                end: true,
            },
        ]
    );
}

#[test]
fn a_real_time_encode_advances_block_by_block() {
    let reports = blocks("realtime-progress.txt");
    assert_eq!(reports.len(), 5);
    assert_eq!(reports.iter().filter(|r| r.end).count(), 1);
    assert!(reports.last().is_some_and(|r| r.end));
    for pair in reports.windows(2) {
        assert!(pair[1].frame >= pair[0].frame, "{pair:?}");
        assert!(pair[1].out_time >= pair[0].out_time, "{pair:?}");
    }
    let last = reports.last().expect("a last report");
    assert_eq!(last.frame, Some(50));
    // A real-time encode runs at about real time.
    assert!(
        last.speed.is_some_and(|s| (0.5..1.5).contains(&s)),
        "{last:?}"
    );
    assert!(last.fps.is_some_and(|f| f > 0.0), "{last:?}");
}

#[test]
fn an_audio_encode_has_no_frames_and_an_exotic_speed() {
    let reports = blocks("audio-progress.txt");
    assert_eq!(reports.len(), 2);
    assert!(reports.iter().all(|r| r.frame.is_none() && r.fps.is_none()));
    let last = &reports[1];
    assert_eq!(last.out_time, Some(Duration::from_secs(2)));
    assert_eq!(last.total_size, Some(176_478));
    assert!(last.end);
    let lines = data("audio-stderr.txt");
    let status: Vec<Report> = lines.split(['\r', '\n']).filter_map(status_line).collect();
    assert_eq!(status.len(), 2, "{lines:?}");
    // `speed=1.68e+03x`
    assert_eq!(status[1].speed, Some(1680.0));
    assert_eq!(status[1].total_size, Some(172 * 1024));
}

#[test]
fn an_encode_to_stdout_reports_on_its_own_pipe() {
    let reports = blocks("stdout-progress.txt");
    assert!(
        reports.last().is_some_and(|r| r.end && r.frame == Some(25)),
        "{reports:?}"
    );
}

#[test]
fn stderr_status_lines_match_the_progress_blocks() {
    let lines = data("realtime-stderr.txt");
    let status: Vec<Report> = lines.split(['\r', '\n']).filter_map(status_line).collect();
    // The banner, stream mapping and final summary lines are not status lines.
    assert!(status.len() >= 4, "{status:?}");
    assert_eq!(status[0].frame, Some(1));
    assert_eq!(status[0].speed, None);
    assert_eq!(status[0].bitrate_kbps, None);
    let last = status.last().expect("a last status line");
    assert_eq!(last.frame, Some(50));
    assert_eq!(
        last.out_time,
        blocks("realtime-progress.txt")
            .last()
            .and_then(|r| r.out_time)
            .map(|t| Duration::from_millis(t.as_millis() as u64 / 10 * 10))
    );
    for pair in status.windows(2) {
        assert!(pair[1].out_time >= pair[0].out_time, "{pair:?}");
    }
}

#[test]
fn other_stderr_lines_are_not_status_lines() {
    for line in [
        "Input #0, lavfi, from 'testsrc=duration=2':",
        "  Stream #0:0: Video: h264 (libx264) (avc1 / 0x31637661), yuv420p(progressive), 160x120",
        "video:39kB audio:0kB subtitle:0kB other streams:0kB global headers:0kB muxing overhead: 3.4%",
        "frame=",
        "time=00:00:01.00",
        "",
    ] {
        assert_eq!(status_line(line), None, "{line}");
    }
}

//! The `progress` target: what a job's tools print about their progress (FFmpeg's `-progress` blocks and
//! stderr status lines, the generic `aura-progress` line), through `aura_media`'s parsers.

use aura_media::{generic_line, status_line, Format, ProgressBlocks, ProgressReader, Report};
use std::fmt::Write;
use std::time::Duration;

/// The bytes as text, split into lines (at `\n`, and at `\r` for status lines):
/// - every report any parser returns has only finite, non-negative figures and a share within 0–1;
/// - `ProgressBlocks` completes exactly one report per `progress=` line, `end` only for `progress=end`;
/// - a report written back as a `-progress` block reads back the same (its time to the microsecond);
/// - `ProgressReader` (the bytes as a pipe delivers them) gives the same reports whether the bytes come
///   whole or cut in two anywhere, in every format, each report sane.
pub fn progress(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut blocks = ProgressBlocks::default();
    for line in text.split('\n') {
        let report = blocks.line(line);
        let key = line
            .trim_end_matches('\r')
            .split_once('=')
            .map(|(k, v)| (k.trim(), v.trim()));
        match key {
            Some(("progress", value)) => {
                let report = report.expect("a progress= line completes a report");
                assert_eq!(report.end, value == "end", "{line:?}");
                sane(&report, line);
                round_trip(&report);
            }
            _ => assert!(
                report.is_none(),
                "a report without a progress= line: {line:?}"
            ),
        }
        if let Some(r) = generic_line(line) {
            sane(&r, line);
        }
    }
    for line in text.split(['\r', '\n']) {
        if let Some(r) = status_line(line) {
            sane(&r, line);
        }
    }
    for format in [Format::FfmpegBlocks, Format::FfmpegStatus, Format::Generic] {
        let whole = read(format, &[data]);
        for r in &whole {
            sane(r, "(reader)");
        }
        let (a, b) = data.split_at(data.len() / 2);
        assert_eq!(
            read(format, &[a, b]),
            whole,
            "{format:?}: a cut changed the reports"
        );
    }
}

fn read(format: Format, chunks: &[&[u8]]) -> Vec<Report> {
    let mut reader = ProgressReader::new(format);
    let mut out = Vec::new();
    for chunk in chunks {
        reader.feed(chunk, &mut |r| out.push(r));
    }
    reader.finish(&mut |r| out.push(r));
    out
}

fn sane(r: &Report, line: &str) {
    for v in [r.fps, r.speed, r.bitrate_kbps, r.fraction]
        .into_iter()
        .flatten()
    {
        assert!(v.is_finite() && v >= 0.0, "{v} from {line:?}");
    }
    if let Some(f) = r.fraction {
        assert!(f <= 1.0, "share {f} from {line:?}");
    }
}

fn round_trip(r: &Report) {
    let mut block = String::new();
    let mut put = |key: &str, value: Option<String>| {
        let value = value.unwrap_or_else(|| "N/A".to_owned());
        writeln!(block, "{key}={value}").expect("writing to a String");
    };
    put("frame", r.frame.map(|v| v.to_string()));
    put("fps", r.fps.map(|v| v.to_string()));
    put("bitrate", r.bitrate_kbps.map(|v| format!("{v}kbits/s")));
    put("total_size", r.total_size.map(|v| v.to_string()));
    put("out_time_us", r.out_time.map(|t| t.as_micros().to_string()));
    put("speed", r.speed.map(|v| format!("{v}x")));
    put(
        "progress",
        Some(if r.end { "end" } else { "continue" }.to_owned()),
    );
    let mut again = ProgressBlocks::default();
    let back: Vec<Report> = block.lines().filter_map(|l| again.line(l)).collect();
    let expected = Report {
        out_time: r.out_time.map(|t| {
            let micros = u64::try_from(t.as_micros());
            Duration::from_micros(micros.expect("a reported time fits out_time_us"))
        }),
        ..r.clone()
    };
    assert_eq!(back, [expected], "{block}");
}

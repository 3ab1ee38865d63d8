//! Progress reports: FFmpeg's `-progress` key=value blocks (read incrementally, one report per
//! `progress=` line), its stderr status line (the fallback where `-progress` cannot be added), and
//! Aura's generic protocol for other tools, a line `aura-progress 0.42` (or `aura-progress 42%`).
//!
//! FFmpeg writes `N/A` for what it does not know yet, a negative `out_time` before the first packet, and
//! speeds such as `1.68e+03x`; none of that is an error: the figure is just absent.

use std::time::Duration;

/// One progress report; a figure the tool did not give (or gave as `N/A`) is `None`. The model's type, so
/// that the engine's tracker takes what these parsers return as it is.
pub use aura_model::RawReport as Report;

/// Reads FFmpeg's `-progress` output line by line: each block of `key=value` lines ends with
/// `progress=continue` or `progress=end`, which completes one report. Unknown keys are ignored (FFmpeg
/// adds per-stream ones such as `stream_0_0_q`).
#[derive(Clone, Debug, Default)]
pub struct ProgressBlocks {
    current: Report,
    /// `out_time_us` seen in this block: it wins over the coarser `out_time` text.
    exact_time: bool,
}

impl ProgressBlocks {
    /// Takes one line (without its newline); returns the report its block completes, if it does.
    pub fn line(&mut self, line: &str) -> Option<Report> {
        let (key, value) = line.trim_end_matches('\r').split_once('=')?;
        let value = value.trim();
        let r = &mut self.current;
        match key.trim() {
            "frame" => r.frame = value.parse().ok(),
            "fps" => r.fps = non_negative(value),
            "total_size" => r.total_size = value.parse().ok(),
            "speed" => r.speed = value.strip_suffix('x').and_then(non_negative),
            "bitrate" => r.bitrate_kbps = value.strip_suffix("kbits/s").and_then(non_negative),
            // FFmpeg's `out_time_ms` is microseconds too (a known misnomer); `out_time_us` is enough.
            "out_time_us" => {
                r.out_time = value.parse::<u64>().ok().map(Duration::from_micros);
                self.exact_time = r.out_time.is_some();
            }
            "out_time" if !self.exact_time => r.out_time = clock(value),
            "progress" => {
                let mut report = std::mem::take(&mut self.current);
                self.exact_time = false;
                report.end = value == "end";
                return Some(report);
            }
            _ => {}
        }
        None
    }
}

/// Reads one FFmpeg stderr status line (`frame=  250 fps= 25 q=28.0 size=  1024kB time=00:00:10.00
/// bitrate= 838.9kbits/s speed=1.02x`; stderr separates them with `\r`). `None` for any other line.
/// Sizes are printed in kB (1024 bytes), so `total_size` is accurate to a kilobyte here.
pub fn status_line(line: &str) -> Option<Report> {
    let mut report = Report::default();
    let mut time_seen = false;
    let mut tokens = line.split_whitespace();
    while let Some(token) = tokens.next() {
        let Some((key, value)) = token.split_once('=') else {
            continue;
        };
        // `frame=    1`: FFmpeg pads the value, so it is the next token.
        let value = if value.is_empty() {
            tokens.next().unwrap_or("")
        } else {
            value
        };
        match key {
            "frame" => report.frame = value.parse().ok(),
            "fps" => report.fps = non_negative(value),
            "size" | "Lsize" => {
                report.total_size = value
                    .strip_suffix("kB")
                    .and_then(|k| k.parse::<u64>().ok())
                    .and_then(|k| k.checked_mul(1024));
            }
            "time" => {
                report.out_time = clock(value);
                time_seen = true;
            }
            "bitrate" => report.bitrate_kbps = value.strip_suffix("kbits/s").and_then(non_negative),
            "speed" => report.speed = value.strip_suffix('x').and_then(non_negative),
            _ => {}
        }
    }
    (time_seen && (report.frame.is_some() || report.total_size.is_some() || line.contains("size=")))
        .then_some(report)
}

/// Reads Aura's generic progress line: `aura-progress 0.42` (a share, 0–1) or `aura-progress 42%`.
/// `None` for any other line and for a share outside 0–1.
pub fn generic_line(line: &str) -> Option<Report> {
    let value = line.trim().strip_prefix("aura-progress")?;
    if !value.starts_with([' ', '\t']) {
        return None;
    }
    let value = value.trim();
    let fraction = match value.strip_suffix('%') {
        Some(percent) => non_negative(percent.trim_end())? / 100.0,
        None => non_negative(value)?,
    };
    (fraction <= 1.0).then(|| Report {
        fraction: Some(fraction),
        end: fraction >= 1.0,
        ..Report::default()
    })
}

/// A finite, non-negative number; `N/A` and anything else is `None`.
fn non_negative(text: &str) -> Option<f64> {
    text.trim()
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v >= 0.0)
}

/// `HH:MM:SS.fraction` as FFmpeg prints a media time; negative (before the first packet) is `None`.
fn clock(text: &str) -> Option<Duration> {
    let mut parts = text.split(':');
    let (h, m, s) = (parts.next()?, parts.next()?, parts.next()?);
    let digits = |t: &str, dot: bool| {
        !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit() || (dot && b == b'.'))
    };
    if parts.next().is_some() || !digits(h, false) || !digits(m, false) || !digits(s, true) {
        return None;
    }
    let hours: u64 = h.parse().ok()?;
    let minutes: u64 = m.parse().ok().filter(|m| *m < 60)?;
    let seconds: f64 = s.parse().ok().filter(|s| *s < 60.0)?;
    let whole = hours.checked_mul(3600)?.checked_add(minutes * 60)?;
    let time = Duration::from_secs(whole).checked_add(Duration::from_secs_f64(seconds))?;
    // The range `out_time_us` can carry, so that both spellings of a media time mean the same.
    u64::try_from(time.as_micros()).is_ok().then_some(time)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_reads_ffmpeg_media_times() {
        let cases = [
            ("00:00:02.960078", Some(Duration::from_micros(2_960_078))),
            ("01:02:03.50", Some(Duration::from_millis(3_723_500))),
            ("00:00:00.000000", Some(Duration::ZERO)),
            ("-577014:32:22.775808", None),
            ("N/A", None),
            ("00:60:00", None),
            ("00:00:60", None),
            ("00:00:1e1", None),
            ("1:2", None),
            ("1:2:3:4", None),
            // More microseconds than `out_time_us` can carry.
            ("5000000000000:00:00.000000", None),
            (
                "5124095576:00:00",
                Some(Duration::from_secs(5_124_095_576 * 3600)),
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(clock(text), expected, "{text}");
        }
    }

    #[test]
    fn generic_lines() {
        let share = |line: &str| generic_line(line).and_then(|r| r.fraction);
        assert_eq!(share("aura-progress 0.42"), Some(0.42));
        assert_eq!(share("  aura-progress\t42%\n"), Some(0.42));
        assert_eq!(share("aura-progress 1"), Some(1.0));
        assert!(generic_line("aura-progress 1").is_some_and(|r| r.end));
        for not in [
            "aura-progress 1.5",
            "aura-progress -0.1",
            "aura-progress",
            "aura-progressive 0.1",
            "aura-progress NaN",
            "progress 0.5",
        ] {
            assert_eq!(generic_line(not), None, "{not}");
        }
    }
}

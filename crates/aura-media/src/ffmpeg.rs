//! FFmpeg's command line as Aura runs it: whether a job's program is FFmpeg, the arguments with Aura's own
//! `-progress` channel added, the output duration the arguments promise (what a progress share is measured
//! against), and the `ffprobe` call, with its reading, for the inputs whose length only the files know.
//!
//! The arguments are split the way FFmpeg splits them: options up to an `-i` belong to that input, options
//! up to a plain argument (a file name) belong to that output, and options after the last output are
//! ignored, as FFmpeg ignores them. An option takes the next argument as its value unless FFmpeg knows it as
//! a flag: FFmpeg reads every name it does not know as a codec, format or filter option, and those always
//! take a value, so a flag list is what stays right as FFmpeg grows.
//!
//! Everything here is best effort: arguments FFmpeg would reject give an answer too (often `None`), never a
//! panic.

use std::time::Duration;

/// Where Aura reads the progress of an FFmpeg run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Channel {
    /// The `-progress pipe:<fd>` blocks Aura asked for, read with [`ProgressBlocks`](crate::ProgressBlocks).
    Pipe,
    /// FFmpeg's stderr status line, read with [`status_line`](crate::status_line): the user chose their own
    /// `-progress` target and FFmpeg writes to one only. Best effort: with `-nostats` as well, FFmpeg
    /// reports nothing at all.
    Stderr,
}

/// How Aura runs one FFmpeg command and what it knows of it beforehand.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The arguments to run FFmpeg with (without the program): the user's, `-progress pipe:<fd>` first
    /// where [`progress`](Self::progress) is [`Channel::Pipe`].
    pub args: Vec<String>,
    /// Where the progress comes out.
    pub progress: Channel,
    /// The media duration the output should reach, as far as the arguments tell; never zero. `None` when
    /// they do not tell: then the lengths of [`probe_inputs`](Self::probe_inputs) may.
    pub expected: Option<Duration>,
    /// The inputs (files or URLs) whose length the arguments do not tell but `ffprobe` may
    /// ([`probe_command`]), in order, each once.
    pub probe_inputs: Vec<String>,
}

/// Whether `program` (a name or a path) is FFmpeg: `ffmpeg`, a versioned or suffixed build (`ffmpeg7`,
/// `ffmpeg-6.1`, `ffmpeg_static`), with or without `.exe`. Not `ffprobe`, `ffplay` or a wrapper script
/// whose name merely contains `ffmpeg`: those do not take FFmpeg's options.
pub fn is_ffmpeg(program: &str) -> bool {
    let name = program.rsplit(['/', '\\']).next().unwrap_or(program);
    let name = match name
        .len()
        .checked_sub(4)
        .and_then(|at| name.split_at_checked(at))
    {
        Some((stem, ext)) if ext.eq_ignore_ascii_case(".exe") => stem,
        _ => name,
    };
    let Some(rest) = name.strip_prefix("ffmpeg") else {
        return false;
    };
    rest.is_empty()
        || rest.starts_with(['-', '_'])
        || (rest.starts_with(|c: char| c.is_ascii_digit())
            && rest.bytes().all(|b| b.is_ascii_digit() || b == b'.'))
}

/// Plans an FFmpeg run with arguments `args` (without the program): adds `-progress pipe:<fd>` unless the
/// user gave a `-progress` of their own, and reads the output's expected duration and the inputs to probe.
pub fn plan(args: &[String], fd: i32) -> Plan {
    let line = CommandLine::read(args);
    let (expected, probe_inputs) = line.lengths();
    let (args, progress) = if line.user_progress {
        (args.to_vec(), Channel::Stderr)
    } else {
        // A global option: first, it cannot become the value of a user's option or change what theirs mean.
        let mut with = Vec::with_capacity(args.len() + 2);
        with.push("-progress".to_owned());
        with.push(format!("pipe:{fd}"));
        with.extend_from_slice(args);
        (with, Channel::Pipe)
    };
    Plan {
        args,
        progress,
        expected,
        probe_inputs,
    }
}

/// Reads a duration in FFmpeg's syntax (`-t`, `-ss`, a filter's `duration`), as FFmpeg does:
/// `[HH:]MM:SS[.m...]` or `S+[.m...][s|ms|us]`, to the microsecond. `None` for negative or malformed text.
pub fn parse_time(text: &str) -> Option<Duration> {
    let (whole, rest) = clock_part(text).or_else(|| {
        let digits = text.bytes().take_while(u8::is_ascii_digit).count();
        let seconds: u64 = text.get(..digits)?.parse().ok()?;
        Some((seconds, &text[digits..]))
    })?;
    let (mut micros, rest) = match rest.strip_prefix('.') {
        Some(fraction) => {
            let digits = fraction.bytes().take_while(u8::is_ascii_digit).count();
            // FFmpeg keeps six digits and skips the rest.
            let kept = fraction[..digits].bytes().take(6);
            let micros = kept
                .chain(std::iter::repeat(b'0'))
                .take(6)
                .fold(0, |n, b| n * 10 + u64::from(b - b'0'));
            (micros, &fraction[digits..])
        }
        None => (0, rest),
    };
    let unit = match rest {
        "" | "s" => 1_000_000,
        "ms" => {
            micros /= 1000;
            1000
        }
        "us" => {
            micros = 0;
            1
        }
        _ => return None,
    };
    let total = whole.checked_mul(unit)?.checked_add(micros)?;
    Some(Duration::from_micros(total))
}

/// `HH:MM:SS` or `MM:SS` at the start of `text` (minutes and seconds of one or two digits, below 60):
/// the seconds and what follows.
fn clock_part(text: &str) -> Option<(u64, &str)> {
    fn number(text: &str, max_digits: usize) -> Option<(u64, &str)> {
        let digits = text
            .bytes()
            .take(max_digits)
            .take_while(u8::is_ascii_digit)
            .count();
        Some((text.get(..digits)?.parse().ok()?, &text[digits..]))
    }
    fn sixty(text: &str) -> Option<(u64, &str)> {
        number(text, 2).filter(|(n, _)| *n < 60)
    }
    let with_hours = || {
        let (hours, rest) = number(text, 10).filter(|(h, _)| *h <= i32::MAX as u64)?;
        let (minutes, rest) = sixty(rest.strip_prefix(':')?)?;
        let (seconds, rest) = sixty(rest.strip_prefix(':')?)?;
        Some((hours * 3600 + minutes * 60 + seconds, rest))
    };
    let without = || {
        let (minutes, rest) = sixty(text)?;
        let (seconds, rest) = sixty(rest.strip_prefix(':')?)?;
        Some((minutes * 60 + seconds, rest))
    };
    with_hours().or_else(without)
}

/// Reads what [`probe_command`] makes `ffprobe` print: the container's duration in seconds
/// (`10.000000`). `None` for `N/A` (a stream, a live source), a negative or non-finite figure, or anything
/// but one such line.
pub fn probe_duration(ffprobe_stdout: &str) -> Option<Duration> {
    let mut lines = ffprobe_stdout
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty());
    let line = lines.next()?;
    if lines.next().is_some() {
        return None;
    }
    let seconds: f64 = line.parse().ok()?;
    Duration::try_from_secs_f64(seconds).ok()
}

/// The `ffprobe` arguments (without the program) that print `input`'s duration for [`probe_duration`].
/// `ffprobe` has no `--`, so a name starting with `-` is given as `file:` to keep it from reading as an
/// option.
pub fn probe_command(input: &str) -> Vec<String> {
    let input = if input.starts_with('-') {
        format!("file:{input}")
    } else {
        input.to_owned()
    };
    [
        "-v",
        "error",
        "-show_entries",
        "format=duration",
        "-of",
        "default=noprint_wrappers=1:nokey=1",
    ]
    .into_iter()
    .map(str::to_owned)
    .chain([input])
    .collect()
}

/// FFmpeg's options that take no value (ffmpeg 5.1 to 7.1), without the dash; each also has a `-no` form.
const FLAGS: &[&str] = &[
    "accurate_seek",
    "an",
    "auto_conversion_filters",
    "benchmark",
    "benchmark_all",
    "bitexact",
    "copy_unknown",
    "copyinkf",
    "copyts",
    "debug_ts",
    "display_hflip",
    "display_vflip",
    "dn",
    "dump",
    "find_stream_info",
    "fix_sub_duration",
    "fix_sub_duration_heartbeat",
    "force_fps",
    "hex",
    "hide_banner",
    "ignore_chapters",
    "ignore_unknown",
    "n",
    "print_graphs",
    "psnr",
    "qphist",
    "re",
    "recast_media",
    "report",
    "shortest",
    "sn",
    "start_at_zero",
    "stats",
    "stdin",
    "vn",
    "vstats",
    "xerror",
    "y",
];

/// Booleans that take a value (`-autorotate 0`) in ffmpeg 5.1 but whose `-no` form is a flag.
const VALUED_BOOLEANS: &[&str] = &["autorotate", "autoscale"];

/// Input formats that capture from a device: they run until stopped.
const DEVICES: &[&str] = &[
    "alsa",
    "android_camera",
    "avfoundation",
    "decklink",
    "dshow",
    "fbdev",
    "gdigrab",
    "iec61883",
    "jack",
    "kmsgrab",
    "libdc1394",
    "openal",
    "oss",
    "pulse",
    "sndio",
    "v4l2",
    "vfwcap",
    "video4linux2",
    "x11grab",
];

/// Whether option `name` (without the dash, perhaps with a stream specifier: `c:v`) takes a value.
fn takes_value(name: &str) -> bool {
    let base = name.split(':').next().unwrap_or(name);
    let flag = FLAGS.contains(&base)
        || base
            .strip_prefix("no")
            .is_some_and(|b| FLAGS.contains(&b) || VALUED_BOOLEANS.contains(&b));
    !flag
}

/// One input (`-i X`) or output (a file name) and the options given for it.
struct Group<'a> {
    /// Option names without the dash, with their values (`None` for flags, and for a value missing at the
    /// end of the line).
    options: Vec<(&'a str, Option<&'a str>)>,
    target: &'a str,
    input: bool,
}

impl<'a> Group<'a> {
    /// The value of the last of the options `names` given: a later one overrides, as in FFmpeg.
    fn value(&self, names: &[&str]) -> Option<&'a str> {
        self.options
            .iter()
            .rev()
            .find(|(name, _)| names.contains(name))
            .and_then(|(_, value)| *value)
    }

    fn time(&self, name: &str) -> Option<Duration> {
        self.value(&[name]).and_then(parse_time)
    }

    /// How long `-t`, or `-to` counted from `-ss`, lets this input or output run; `-t` wins over `-to`,
    /// as in FFmpeg.
    fn limit(&self) -> Option<Duration> {
        if let Some(t) = self.time("t") {
            return Some(t);
        }
        let to = self.time("to")?;
        to.checked_sub(self.time("ss").unwrap_or_default())
    }

    /// The output's length as its frame count (`-frames:v`) at its frame rate (`-r`) tells it.
    fn frames_length(&self) -> Option<Duration> {
        let frames: u64 = self
            .value(&["frames", "frames:v", "vframes"])?
            .parse()
            .ok()?;
        let rate = frame_rate(self.value(&["r", "r:v"])?)?;
        Duration::try_from_secs_f64(frames as f64 / rate).ok()
    }
}

/// How long one stream of an input lasts, as far as the arguments tell.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Length {
    Known(Duration),
    /// A source that runs until stopped: a lavfi source without a duration, a device, a looped input.
    Endless,
    /// A file or URL: `ffprobe` can tell.
    Probe,
    /// A pipe, or something else nobody can tell beforehand.
    Unknown,
}

/// The command line split into inputs and outputs.
#[derive(Default)]
struct CommandLine<'a> {
    groups: Vec<Group<'a>>,
    /// The user gave `-progress` (FFmpeg writes to one target only).
    user_progress: bool,
    /// `-shortest`: the output ends with its shortest input.
    shortest: bool,
}

impl<'a> CommandLine<'a> {
    fn read(args: &'a [String]) -> Self {
        let mut line = Self::default();
        let mut options = Vec::new();
        // Index of the argument after `--`: FFmpeg takes that one as a file name whatever it looks like.
        let mut dashdash = None;
        let mut i = 0;
        while let Some(arg) = args.get(i) {
            i += 1;
            if arg == "--" {
                dashdash = Some(i);
                continue;
            }
            let name = match arg.strip_prefix('-') {
                Some(name) if !name.is_empty() && dashdash != Some(i - 1) => name,
                _ => {
                    line.groups.push(Group {
                        options: std::mem::take(&mut options),
                        target: arg,
                        input: false,
                    });
                    continue;
                }
            };
            if name == "i" {
                let Some(target) = args.get(i) else {
                    break;
                };
                i += 1;
                line.groups.push(Group {
                    options: std::mem::take(&mut options),
                    target,
                    input: true,
                });
                continue;
            }
            let value = if takes_value(name) {
                i += 1;
                args.get(i - 1).map(String::as_str)
            } else {
                None
            };
            match name {
                "progress" => line.user_progress = true,
                "shortest" => line.shortest = true,
                "noshortest" => line.shortest = false,
                _ => {}
            }
            options.push((name, value));
        }
        line
    }

    /// The output's expected duration and the inputs worth probing.
    fn lengths(&self) -> (Option<Duration>, Vec<String>) {
        let mut streams = Vec::new();
        let mut probe: Vec<String> = Vec::new();
        for input in self.groups.iter().filter(|g| g.input) {
            for length in input_lengths(input) {
                if length == Length::Probe && !probe.iter().any(|p| p == input.target) {
                    probe.push(input.target.to_owned());
                }
                streams.push(length);
            }
        }
        let from_inputs = combine(&streams, self.shortest);
        let mut outputs = self.groups.iter().filter(|g| !g.input).peekable();
        if outputs.peek().is_none() {
            return (None, probe);
        }
        // FFmpeg reports the furthest output, so the run is as long as its longest output.
        let mut expected = Some(Duration::ZERO);
        for output in outputs {
            let skipped = output.time("ss").unwrap_or_default();
            let bound = [output.limit(), output.frames_length()]
                .into_iter()
                .flatten()
                .min();
            let from_inputs = from_inputs.map(|d| d.saturating_sub(skipped));
            let length = match (bound, from_inputs) {
                (Some(bound), Some(d)) => Some(bound.min(d)),
                (bound, d) => bound.or(d),
            };
            expected = expected.zip(length).map(|(a, b)| a.max(b));
        }
        (expected.filter(|d| !d.is_zero()), probe)
    }
}

/// The lengths of an input's streams after its own `-ss`, `-t`, `-to` and loop options.
fn input_lengths(input: &Group<'_>) -> Vec<Length> {
    let target = input.target;
    let mut lengths = match input.value(&["f"]) {
        Some("lavfi") => lavfi_sources(target),
        Some(format) if DEVICES.contains(&format) => vec![Length::Endless],
        _ if target == "-" || target.starts_with("pipe:") || target.starts_with("fd:") => {
            vec![Length::Unknown]
        }
        _ => vec![Length::Probe],
    };
    // The image demuxer's `-loop 1` repeats the picture forever.
    let looped = input
        .value(&["loop"])
        .and_then(|v| v.parse::<i64>().ok())
        .is_some_and(|v| v != 0);
    let repeats = input
        .value(&["stream_loop"])
        .and_then(|v| v.parse::<i64>().ok())
        .unwrap_or(0);
    let skipped = input.time("ss").unwrap_or_default();
    let limit = input.limit();
    for length in &mut lengths {
        if looped || repeats < 0 {
            *length = Length::Endless;
        } else if repeats > 0 {
            // A probe would tell one pass only.
            *length = match *length {
                Length::Known(d) => u32::try_from(repeats + 1)
                    .ok()
                    .and_then(|n| d.checked_mul(n))
                    .map_or(Length::Unknown, Length::Known),
                Length::Probe => Length::Unknown,
                other => other,
            };
        }
        if let Length::Known(d) = *length {
            *length = Length::Known(d.saturating_sub(skipped));
        }
        if let Some(limit) = limit {
            *length = match *length {
                Length::Known(d) => Length::Known(d.min(limit)),
                _ => Length::Known(limit),
            };
        }
    }
    lengths
}

/// How long the inputs make the output: the longest stream, or the shortest with `-shortest`. Endless
/// streams count for nothing; without `-shortest`, a stream of unknown length leaves the answer unknown.
fn combine(streams: &[Length], shortest: bool) -> Option<Duration> {
    let known = streams.iter().filter_map(|l| match l {
        Length::Known(d) => Some(*d),
        _ => None,
    });
    if shortest {
        return known.min();
    }
    let unknown = streams
        .iter()
        .any(|l| matches!(l, Length::Probe | Length::Unknown));
    if unknown {
        None
    } else {
        known.max()
    }
}

/// The sources of a lavfi graph (`-f lavfi -i GRAPH`), one per chain that starts with one: its
/// `duration`/`d` option, endless without; unknown for `movie`/`amovie` (a file's length) and for a
/// duration that does not parse.
fn lavfi_sources(graph: &str) -> Vec<Length> {
    let sources: Vec<Length> = split_unquoted(graph, ';')
        .into_iter()
        .filter_map(|chain| {
            let head = split_unquoted(chain, ',').into_iter().next()?.trim_start();
            // A chain fed by another chain's output starts with its label, not with a source.
            if head.starts_with('[') {
                return None;
            }
            let head = without_labels(head);
            let (name, options) = head.split_once('=').unwrap_or((head, ""));
            let name = name.trim();
            let name = name.split('@').next().unwrap_or(name);
            if name == "movie" || name == "amovie" {
                return Some(Length::Unknown);
            }
            let duration = split_unquoted(options, ':')
                .into_iter()
                .rev()
                .find_map(|o| {
                    let (key, value) = o.split_once('=')?;
                    matches!(key.trim(), "duration" | "d").then(|| unquote(value.trim()))
                });
            Some(match duration {
                // Sources take a negative duration as "no end".
                Some(d) if d.starts_with('-') => Length::Endless,
                Some(d) => parse_time(&d).map_or(Length::Unknown, Length::Known),
                None => Length::Endless,
            })
        })
        .collect();
    if sources.is_empty() {
        vec![Length::Unknown]
    } else {
        sources
    }
}

/// `text` cut at each `separator` outside `'quotes'` and not escaped with `\`, as FFmpeg's graph parser
/// cuts it.
fn split_unquoted(text: &str, separator: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut quoted = false;
    let mut escaped = false;
    for (at, c) in text.char_indices() {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == '\'' {
            quoted = !quoted;
        } else if c == separator && !quoted {
            parts.push(&text[start..at]);
            start = at + c.len_utf8();
        }
    }
    parts.push(&text[start..]);
    parts
}

/// A filter without the `[label]`s that name its outputs.
fn without_labels(mut filter: &str) -> &str {
    loop {
        let trimmed = filter.trim_end();
        match trimmed.strip_suffix(']').and_then(|t| t.rfind('[')) {
            Some(open) => filter = &trimmed[..open],
            None => return filter,
        }
    }
}

/// An option value with FFmpeg's quoting and escaping undone.
fn unquote(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.extend(chars.next()),
            '\'' => {}
            c => out.push(c),
        }
    }
    out
}

/// A frame rate as `-r` takes it: `25`, `29.97`, `30000/1001`, or a name such as `ntsc`; positive.
fn frame_rate(text: &str) -> Option<f64> {
    let rate = match text {
        "ntsc" | "qntsc" | "sntsc" => 30_000.0 / 1001.0,
        "ntsc-film" => 24_000.0 / 1001.0,
        "pal" | "qpal" | "spal" => 25.0,
        "film" => 24.0,
        _ => match text.split_once(['/', ':']) {
            Some((num, den)) => num.trim().parse::<f64>().ok()? / den.trim().parse::<f64>().ok()?,
            None => text.trim().parse().ok()?,
        },
    };
    (rate.is_finite() && rate > 0.0).then_some(rate)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Vec<String> {
        line.split_whitespace().map(str::to_owned).collect()
    }

    fn secs(s: f64) -> Option<Duration> {
        Some(Duration::from_secs_f64(s))
    }

    #[test]
    fn ffmpeg_is_known_by_its_file_name() {
        let cases = [
            ("ffmpeg", true),
            ("/usr/bin/ffmpeg", true),
            ("./ffmpeg", true),
            ("ffmpeg7", true),
            ("ffmpeg6.1", true),
            ("ffmpeg-6.1", true),
            ("ffmpeg-static", true),
            ("ffmpeg_git", true),
            ("ffmpeg.exe", true),
            ("FFMPEG7.EXE", false),
            (r"C:\tools\ffmpeg.EXE", true),
            ("/opt/ffmpeg/bin/ffmpeg", true),
            ("ffprobe", false),
            ("ffplay", false),
            ("/usr/bin/ffprobe", false),
            ("my-ffmpeg-wrapper.sh", false),
            ("/opt/ffmpeg/bin/x264", false),
            ("ffmpegx", false),
            ("ffmpeg7a", false),
            ("ffmpeg/", false),
            ("", false),
            (".exe", false),
        ];
        for (program, expected) in cases {
            assert_eq!(is_ffmpeg(program), expected, "{program:?}");
        }
    }

    #[test]
    fn parse_time_reads_ffmpeg_durations() {
        let ms = |n| Some(Duration::from_millis(n));
        let us = |n| Some(Duration::from_micros(n));
        let cases = [
            ("10", ms(10_000)),
            ("0", ms(0)),
            ("10.5", ms(10_500)),
            ("10.", ms(10_000)),
            ("10s", ms(10_000)),
            ("10.25s", ms(10_250)),
            ("00:00:10", ms(10_000)),
            ("1:02:03.5", ms(3_723_500)),
            ("100:00:00", ms(360_000_000)),
            ("02:03", ms(123_000)),
            ("2:3", ms(123_000)),
            ("00:00:10.123456789", us(10_123_456)),
            ("1500ms", ms(1500)),
            ("1.5ms", us(1500)),
            ("250000us", us(250_000)),
            ("7.9us", us(7)),
            ("-1", None),
            ("-00:00:01", None),
            ("", None),
            (".5", None),
            ("abc", None),
            ("10m", None),
            ("10 s", None),
            (" 10", None),
            ("00:60", None),
            ("00:00:60", None),
            ("1:2:3:4", None),
            ("N/A", None),
            ("99999999999999999999", None),
            ("18446744073709551615", None),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_time(text), expected, "{text:?}");
        }
    }

    #[test]
    fn probe_duration_reads_ffprobe_output() {
        let cases = [
            ("10.000000\n", secs(10.0)),
            ("2.040000", secs(2.04)),
            ("  0.5  \r\n", secs(0.5)),
            ("\n3.000000\n\n", secs(3.0)),
            ("0", secs(0.0)),
            ("N/A\n", None),
            ("-1.000000\n", None),
            ("inf", None),
            ("NaN", None),
            ("1e400", None),
            ("", None),
            ("10.0\n20.0\n", None),
            ("[FORMAT]\nduration=10.0\n[/FORMAT]\n", None),
            ("garbage", None),
        ];
        for (text, expected) in cases {
            assert_eq!(probe_duration(text), expected, "{text:?}");
        }
    }

    #[test]
    fn probe_command_keeps_names_from_reading_as_options() {
        let head = [
            "-v",
            "error",
            "-show_entries",
            "format=duration",
            "-of",
            "default=noprint_wrappers=1:nokey=1",
        ];
        for (input, last) in [
            ("in.mp4", "in.mp4"),
            ("/media/a b.mkv", "/media/a b.mkv"),
            ("https://example.com/v.m3u8", "https://example.com/v.m3u8"),
            ("-odd.mp4", "file:-odd.mp4"),
            ("-", "file:-"),
        ] {
            let mut expected: Vec<String> = head.iter().map(|s| s.to_string()).collect();
            expected.push(last.to_owned());
            assert_eq!(probe_command(input), expected, "{input:?}");
        }
    }

    #[test]
    fn the_acceptance_example_gets_a_progress_pipe_and_twenty_seconds() {
        let user = [
            "-nostdin",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "testsrc=duration=20:size=1280x720:rate=25",
            "-c:v",
            "libx264",
            "-preset",
            "slow",
            "out.mp4",
        ]
        .map(String::from);
        let expected = [
            "-progress",
            "pipe:3",
            "-nostdin",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "testsrc=duration=20:size=1280x720:rate=25",
            "-c:v",
            "libx264",
            "-preset",
            "slow",
            "out.mp4",
        ]
        .map(String::from);
        assert_eq!(
            plan(&user, 3),
            Plan {
                args: expected.to_vec(),
                progress: Channel::Pipe,
                expected: Some(Duration::from_secs(20)),
                probe_inputs: vec![],
            }
        );
    }

    #[test]
    fn a_user_progress_leaves_the_args_and_reads_stderr() {
        let cases = [
            ("-i in.mp4 out.mp4", Channel::Pipe),
            ("-nostats -i in.mp4 out.mp4", Channel::Pipe),
            ("-progress progress.txt -i in.mp4 out.mp4", Channel::Stderr),
            ("-i in.mp4 -progress pipe:1 out.mp4", Channel::Stderr),
            (
                "-i in.mp4 out.mp4 -progress tcp://host:1234",
                Channel::Stderr,
            ),
            ("-nostats -progress - -i in.mp4 out.mp4", Channel::Stderr),
            ("-i in.mp4 out.mp4 -progress", Channel::Stderr),
            // A value, not an option: the metadata's, then a file name.
            ("-i in.mp4 -metadata:g -progress out.mp4", Channel::Pipe),
            ("-i in.mp4 -- -progress", Channel::Pipe),
            ("", Channel::Pipe),
        ];
        for (line, channel) in cases {
            let user = args(line);
            let plan = plan(&user, 4);
            assert_eq!(plan.progress, channel, "{line}");
            let expected = match channel {
                Channel::Pipe => [args("-progress pipe:4"), user.clone()].concat(),
                Channel::Stderr => user.clone(),
            };
            assert_eq!(plan.args, expected, "{line}");
            assert!(!plan.args.iter().any(|a| a == "-nostats") || line.contains("-nostats"));
        }
    }

    #[test]
    fn output_options_bound_the_duration() {
        let cases = [
            ("-i in.mp4 -t 10 out.mp4", secs(10.0)),
            ("-i in.mp4 -t 00:01:30.5 out.mp4", secs(90.5)),
            ("-i in.mp4 -to 1500ms out.mp4", secs(1.5)),
            ("-i in.mp4 -ss 5 -to 12 out.mp4", secs(7.0)),
            ("-i in.mp4 -to 12 -ss 00:05 out.mp4", secs(7.0)),
            // FFmpeg ignores -to when -t is given.
            ("-i in.mp4 -t 5 -to 3 out.mp4", secs(5.0)),
            ("-i in.mp4 -ss 12 -to 5 out.mp4", None),
            ("-i in.mp4 -frames:v 100 -r 25 out.mp4", secs(4.0)),
            ("-i in.mp4 -vframes 300 -r 30000/1001 out.mp4", secs(10.01)),
            ("-i in.mp4 -frames 50 -r:v 50 out.mp4", secs(1.0)),
            ("-i in.mp4 -frames:v 48 -r film out.mp4", secs(2.0)),
            ("-i in.mp4 -frames:v 100 -t 2 -r 25 out.mp4", secs(2.0)),
            ("-i in.mp4 -frames:v 100 out.mp4", None),
            ("-i in.mp4 -r 25 out.mp4", None),
            ("-i in.mp4 -frames:v 100 -r 0 out.mp4", None),
            ("-i in.mp4 -frames:a 100 -r 25 out.mp4", None),
            ("-i in.mp4 -t nonsense out.mp4", None),
            ("-i in.mp4 -t -5 out.mp4", None),
            ("-i in.mp4 -t 0 out.mp4", None),
            // Each output its own; the run lasts as long as the longest.
            ("-i in.mp4 -t 5 a.mp4 -t 8 b.mp4", secs(8.0)),
            ("-i in.mp4 -t 5 a.mp4 b.mp4", None),
            // After the last output: ignored, as FFmpeg ignores it.
            ("-i in.mp4 out.mp4 -t 5", None),
            ("-i in.mp4 -t 5", None),
            // Before -i it is the input's.
            ("-t 5 -i in.mp4 out.mp4", secs(5.0)),
        ];
        for (line, expected) in cases {
            let got = plan(&args(line), 3).expected;
            assert_close(got, expected, line);
        }
    }

    #[test]
    fn input_options_bound_their_input() {
        let cases = [
            ("-t 5 -i in.mp4 out.mp4", secs(5.0)),
            ("-ss 10 -to 25 -i in.mp4 out.mp4", secs(15.0)),
            ("-to 25 -i in.mp4 out.mp4", secs(25.0)),
            ("-t 5 -i in.mp4 -t 3 out.mp4", secs(3.0)),
            ("-t 5 -i in.mp4 -t 30 out.mp4", secs(5.0)),
            ("-ss 5 -i in.mp4 out.mp4", None),
            ("-t 5 -i a.mp4 -t 7 -i b.mp4 out.mp4", secs(7.0)),
            ("-t 5 -i a.mp4 -t 7 -i b.mp4 -shortest out.mp4", secs(5.0)),
            // b.mp4 may be longer than 5 s.
            ("-t 5 -i a.mp4 -i b.mp4 out.mp4", None),
            ("-t 5 -i a.mp4 -i b.mp4 -shortest out.mp4", secs(5.0)),
            // Output -ss skips into what the inputs give.
            ("-t 5 -i a.mp4 -ss 2 out.mp4", secs(3.0)),
            ("-t 5 -i a.mp4 -ss 2 -t 10 out.mp4", secs(3.0)),
            ("-t 5 -i a.mp4 -ss 7 out.mp4", None),
            // Options of the second input do not bound the first.
            ("-i a.mp4 -t 5 -i b.mp4 out.mp4", None),
            ("-stream_loop -1 -i a.mp4 out.mp4", None),
            ("-stream_loop -1 -i a.mp4 -t 60 out.mp4", secs(60.0)),
            ("-stream_loop -1 -t 60 -i a.mp4 out.mp4", secs(60.0)),
            ("-loop 1 -i cover.png -t 10 out.mp4", secs(10.0)),
            ("-loop 1 -i cover.png -i song.mp3 -shortest out.mp4", None),
            ("-i - -t 4 out.mp4", secs(4.0)),
            ("-f x11grab -i :0.0 out.mp4", None),
            ("-f x11grab -i :0.0 -t 30 out.mp4", secs(30.0)),
        ];
        for (line, expected) in cases {
            assert_close(plan(&args(line), 3).expected, expected, line);
        }
    }

    #[test]
    fn lavfi_sources_give_their_duration() {
        let cases = [
            (
                "-f lavfi -i testsrc=duration=20:size=1280x720:rate=25 out.mp4",
                secs(20.0),
            ),
            (
                "-f lavfi -i sine=frequency=440:duration=10 out.wav",
                secs(10.0),
            ),
            ("-f lavfi -i testsrc2=d=5 out.mp4", secs(5.0)),
            ("-f lavfi -i color=c=black:s=320x240:d=3 out.mp4", secs(3.0)),
            ("-f lavfi -i sine=d=1500ms out.wav", secs(1.5)),
            ("-f lavfi -i testsrc=d=00\\:00\\:07 out.mp4", secs(7.0)),
            ("-f lavfi -i testsrc=d='00:00:07' out.mp4", secs(7.0)),
            ("-f lavfi -i testsrc=r=25:d=4[out0] out.mp4", secs(4.0)),
            ("-f lavfi -i testsrc@src=d=4 out.mp4", secs(4.0)),
            // The longest source, or the shortest with -shortest.
            (
                "-f lavfi -i testsrc2=d=5 -f lavfi -i sine=d=10 out.mp4",
                secs(10.0),
            ),
            (
                "-f lavfi -i testsrc2=d=5 -f lavfi -i sine=d=10 -shortest out.mp4",
                secs(5.0),
            ),
            (
                "-f lavfi -i testsrc2=d=5 -f lavfi -i sine=d=10 out.mp4 -shortest",
                secs(5.0),
            ),
            (
                "-f lavfi -i testsrc=d=10[out0];sine=d=3[out1] out.mp4",
                secs(10.0),
            ),
            // A source without duration runs forever: it counts for nothing.
            ("-f lavfi -i testsrc out.mp4", None),
            ("-f lavfi -i testsrc=size=320x240 -t 6 out.mp4", secs(6.0)),
            (
                "-f lavfi -i testsrc -f lavfi -i sine=d=3 out.mp4",
                secs(3.0),
            ),
            (
                "-f lavfi -i testsrc -f lavfi -i sine=d=3 -shortest out.mp4",
                secs(3.0),
            ),
            ("-f lavfi -i testsrc=d=-1 out.mp4", None),
            ("-f lavfi -i anullsrc -i video.mp4 -shortest out.mp4", None),
            (
                "-f lavfi -i sine=d=8 -i video.mp4 -shortest out.mp4",
                secs(8.0),
            ),
            ("-f lavfi -i sine=d=8 -i video.mp4 out.mp4", None),
            // Later filters' durations (a fade's) are not the source's.
            ("-f lavfi -i testsrc=d=6,fade=t=in:d=1 out.mp4", secs(6.0)),
            ("-f lavfi -i testsrc,fade=t=in:d=1 out.mp4", None),
            ("-f lavfi -i movie=in.mp4 out.mp4", None),
            ("-f lavfi -i testsrc=d=forever out.mp4", None),
            ("-f lavfi -ss 2 -i testsrc=d=10 out.mp4", secs(8.0)),
            ("-f lavfi -t 4 -i testsrc=d=10 out.mp4", secs(4.0)),
            ("-f lavfi -i testsrc=d=10 -t 4 out.mp4", secs(4.0)),
            ("-f lavfi -i testsrc=d=10 -t 40 out.mp4", secs(10.0)),
            (
                "-f lavfi -i testsrc=d=10 -frames:v 50 -r 25 out.mp4",
                secs(2.0),
            ),
            (
                "-stream_loop 2 -f lavfi -i testsrc=d=10 out.mp4",
                secs(30.0),
            ),
            // Without -f lavfi it is a file name.
            ("-i testsrc=d=5 out.mp4", None),
        ];
        for (line, expected) in cases {
            assert_close(plan(&args(line), 3).expected, expected, line);
        }
    }

    #[test]
    fn probe_inputs_are_the_files_of_unknown_length() {
        let cases: [(&str, &[&str]); 14] = [
            ("-i in.mp4 out.mp4", &["in.mp4"]),
            ("-i a.mp4 -i b.mkv -i a.mp4 out.mp4", &["a.mp4", "b.mkv"]),
            (
                "-i https://example.com/v.m3u8 out.mp4",
                &["https://example.com/v.m3u8"],
            ),
            // Known from the arguments: no need to ask.
            ("-t 5 -i a.mp4 -i b.mp4 out.mp4", &["b.mp4"]),
            ("-ss 3 -to 9 -i a.mp4 out.mp4", &[]),
            ("-ss 3 -i a.mp4 out.mp4", &["a.mp4"]),
            ("-i in.mp4 -t 5 out.mp4", &["in.mp4"]),
            ("-f lavfi -i testsrc -i - -i pipe:0 -i fd:3 out.mp4", &[]),
            ("-f lavfi -i movie=in.mp4 out.mp4", &[]),
            ("-f v4l2 -i /dev/video0 out.mp4", &[]),
            ("-stream_loop 3 -i a.mp4 out.mp4", &[]),
            ("-f mp4 -i a.mp4 out.mp4", &["a.mp4"]),
            (
                "-y -nostdin -hide_banner -re -i live.ts -c copy out.ts",
                &["live.ts"],
            ),
            ("-i a.mp4 -f lavfi -i testsrc=d=3 out.mp4", &["a.mp4"]),
        ];
        for (line, expected) in cases {
            assert_eq!(plan(&args(line), 3).probe_inputs, expected, "{line}");
        }
    }

    #[test]
    fn option_values_are_never_inputs_or_outputs() {
        let cases: [(&str, Option<Duration>, &[&str]); 9] = [
            // An unknown option (a codec's) takes a value, even one that looks like an option.
            ("-i a.mp4 -title -i -t 3 out.mp4", secs(3.0), &["a.mp4"]),
            (
                "-i a.mp4 -c:v libx264 -preset slow -crf 20 -t 3 out.mp4",
                secs(3.0),
                &["a.mp4"],
            ),
            (
                "-i a.mp4 -vf scale=-2:720 -af volume=2 -t 3 out.mp4",
                secs(3.0),
                &["a.mp4"],
            ),
            // Flags take none: the -i after them is read.
            (
                "-y -nostdin -re -copyts -i a.mp4 -an -sn -t 3 out.mp4",
                secs(3.0),
                &["a.mp4"],
            ),
            ("-noautorotate -i a.mp4 -t 3 out.mp4", secs(3.0), &["a.mp4"]),
            ("-autorotate 0 -i a.mp4 -t 3 out.mp4", secs(3.0), &["a.mp4"]),
            // After `--` the next argument is a file name, whatever it looks like.
            ("-i a.mp4 -t 3 -- -out.mp4", secs(3.0), &["a.mp4"]),
            // A dangling -i or option: no panic, no input.
            ("-i a.mp4 -t 3 out.mp4 -i", secs(3.0), &["a.mp4"]),
            ("-i a.mp4 -t 3 out.mp4 -c:v", secs(3.0), &["a.mp4"]),
        ];
        for (line, expected, probe) in cases {
            let plan = plan(&args(line), 3);
            assert_close(plan.expected, expected, line);
            assert_eq!(plan.probe_inputs, probe, "{line}");
        }
    }

    #[test]
    fn frame_rates() {
        let cases = [
            ("25", Some(25.0)),
            ("29.97", Some(29.97)),
            ("30000/1001", Some(30_000.0 / 1001.0)),
            ("24000:1001", Some(24_000.0 / 1001.0)),
            ("ntsc", Some(30_000.0 / 1001.0)),
            ("ntsc-film", Some(24_000.0 / 1001.0)),
            ("pal", Some(25.0)),
            ("0", None),
            ("-25", None),
            ("1/0", None),
            ("inf", None),
            ("fast", None),
        ];
        for (text, expected) in cases {
            assert_eq!(frame_rate(text), expected, "{text}");
        }
    }

    fn assert_close(got: Option<Duration>, expected: Option<Duration>, line: &str) {
        match (got, expected) {
            (Some(g), Some(e)) => assert!(
                g.max(e) - g.min(e) < Duration::from_millis(1),
                "{line}: {g:?}, expected {e:?}"
            ),
            _ => assert_eq!(got, expected, "{line}"),
        }
    }
}

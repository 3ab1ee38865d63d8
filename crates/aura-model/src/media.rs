//! What a media job reports while it runs: how Aura reads its progress (`ProgressMode`), the progress
//! figures every layer shows (`Progress`: percent, fps, speed, ETA, output size), and the pure rules
//! that turn a tool's raw reports into them (`ProgressTracker`) and judge a stall.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// How Aura reads a job's progress.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ProgressMode {
    /// FFmpeg's (`ffmpeg` by its program name) as `ffmpeg` says; none for anything else.
    #[default]
    Auto,
    /// FFmpeg's `-progress` blocks on a dedicated pipe (Aura adds `-progress pipe:3`), or its stderr status
    /// line where the job already names a `-progress` target of its own.
    Ffmpeg,
    /// FFmpeg's stderr status line only (`-progress` is not added): for a wrapper script around FFmpeg.
    FfmpegStderr,
    /// Aura's generic protocol: lines `aura-progress 0.42` (or `42%`) written to the file descriptor named
    /// by `AURA_PROGRESS_FD` (3), or to stderr.
    Aura,
    /// No progress: the job is never judged stalled.
    None,
}

impl ProgressMode {
    /// For `skip_serializing_if`: the default says nothing.
    pub fn is_auto(&self) -> bool {
        *self == ProgressMode::Auto
    }
}

/// Where a running job's progress comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ProgressSource {
    /// FFmpeg's `-progress` key=value blocks on Aura's pipe.
    FfmpegPipe,
    /// FFmpeg's stderr status line.
    FfmpegStderr,
    /// Aura's generic `aura-progress` lines.
    Generic,
}

/// A job's progress as last reported, with what Aura derives from it. Every figure the tool did not give
/// (or that cannot be derived yet) is absent.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Progress {
    /// Where the figures come from (absent only on a default value).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<ProgressSource>,
    /// Share of the work done, 0–100: media time written over the expected duration, or the tool's own
    /// share (generic protocol). 100 once the tool said it is done, unless it was being stopped: then
    /// the share it reached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<f64>,
    /// Frames encoded per second (FFmpeg's average).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fps: Option<f64>,
    /// Media seconds written per wall-clock second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speed: Option<f64>,
    /// Seconds until done, estimated from the speed (or the pace of the share, generic protocol).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta_secs: Option<f64>,
    /// Media time written so far, seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub out_time_secs: Option<f64>,
    /// The media duration the job is expected to produce, seconds (declared, from `-t`/`-to`, lavfi
    /// durations, or ffprobe of the inputs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_secs: Option<f64>,
    /// Bytes of output written so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_size: Option<u64>,
    /// Frames written so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frame: Option<u64>,
    /// Output bitrate so far, kbit/s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bitrate_kbps: Option<f64>,
    /// Reports read so far.
    #[serde(default)]
    pub reports: u64,
    /// The tool said it is done (`progress=end`, or a share of 1).
    #[serde(default)]
    pub done: bool,
    /// Seconds since the progress last advanced (or since the start, before it first did), when sampled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_secs: Option<f64>,
}

/// One raw report of a tool, as a parser read it (FFmpeg's figures or a generic share; `aura_media`'s
/// parsers return it).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RawReport {
    /// Frames written so far.
    pub frame: Option<u64>,
    /// FFmpeg's average fps.
    pub fps: Option<f64>,
    /// Media time written so far.
    pub out_time: Option<Duration>,
    /// Speed relative to real time.
    pub speed: Option<f64>,
    /// Output bytes so far.
    pub total_size: Option<u64>,
    /// Output bitrate, kbit/s.
    pub bitrate_kbps: Option<f64>,
    /// Share done, 0–1 (generic protocol).
    pub fraction: Option<f64>,
    /// The last report.
    pub end: bool,
}

/// Turns a running job's raw reports into `Progress` and knows when it last advanced. Times are given
/// by the caller (seconds since the job started), so the rules are pure and testable.
#[derive(Clone, Debug)]
pub struct ProgressTracker {
    progress: Progress,
    expected: Option<Duration>,
    /// When the progress last advanced (seconds since the start); 0 before it ever did.
    advanced_at: f64,
    /// When the speed first went under the floor in the current run of slow reports.
    slow_since: Option<f64>,
    /// The furthest point reached: (media time µs, frame, bytes, share in millionths).
    high: (u64, u64, u64, u64),
    /// A stop was sent: the tool's last report ends its output, not its work.
    stopping: bool,
}

/// Why a tracker judges a job stalled, in words with the figures.
pub type StallVerdict = Option<String>;

impl ProgressTracker {
    /// A tracker for a job reporting through `source`, expected to produce `expected` of media.
    pub fn new(source: ProgressSource, expected: Option<Duration>) -> ProgressTracker {
        ProgressTracker {
            progress: Progress {
                source: Some(source),
                expected_secs: expected.map(|d| d.as_secs_f64()),
                // A share is known from the start where the length is, or the tool states it.
                percent: (expected.is_some() || source == ProgressSource::Generic).then_some(0.0),
                ..Progress::default()
            },
            expected,
            advanced_at: 0.0,
            slow_since: None,
            high: (0, 0, 0, 0),
            stopping: false,
        }
    }

    /// The expected media duration, learned after the start (ffprobe of the inputs); the percent follows
    /// from the next report on.
    pub fn set_expected(&mut self, expected: Duration) {
        self.expected = Some(expected);
        self.progress.expected_secs = Some(expected.as_secs_f64());
        self.progress.percent.get_or_insert(0.0);
    }

    /// The job was paused for `paused` and runs again: the time it stood still counts toward no stall
    /// window (nor toward the one for a speed under the floor).
    pub fn resumed(&mut self, paused: Duration) {
        let secs = paused.as_secs_f64();
        self.advanced_at += secs;
        if let Some(since) = &mut self.slow_since {
            *since += secs;
        }
    }

    /// The job is being stopped (its stop sequence began): a last report that says it ended stands for
    /// where it stopped, not for the work done.
    pub fn stopping(&mut self) {
        self.stopping = true;
    }

    /// Takes one report read `now_secs` after the start. `min_speed`: the speed floor, if any.
    pub fn report(&mut self, raw: RawReport, now_secs: f64, min_speed: Option<f64>) {
        let p = &mut self.progress;
        p.reports += 1;
        p.frame = raw.frame.or(p.frame);
        p.fps = raw.fps.or(p.fps);
        p.speed = raw.speed.or(p.speed);
        p.total_size = raw.total_size.or(p.total_size);
        p.bitrate_kbps = raw.bitrate_kbps.or(p.bitrate_kbps);
        if let Some(t) = raw.out_time {
            p.out_time_secs = Some(t.as_secs_f64());
        }
        let point = (
            raw.out_time.map_or(0, |t| t.as_micros() as u64),
            raw.frame.unwrap_or(0),
            raw.total_size.unwrap_or(0),
            raw.fraction.map_or(0, |f| (f * 1e6) as u64),
        );
        let high = &mut self.high;
        let advanced = point.0 > high.0 || point.1 > high.1 || point.2 > high.2 || point.3 > high.3;
        if advanced {
            *high = (
                high.0.max(point.0),
                high.1.max(point.1),
                high.2.max(point.2),
                high.3.max(point.3),
            );
            self.advanced_at = now_secs;
        }
        // A percent only grows: FFmpeg's out_time can step back a frame when streams interleave.
        let share = match (raw.fraction, self.expected, raw.out_time) {
            (Some(f), _, _) => Some(f),
            (None, Some(expected), Some(t)) if !expected.is_zero() => {
                Some((t.as_secs_f64() / expected.as_secs_f64()).min(1.0))
            }
            _ => None,
        };
        if let Some(share) = share {
            let percent = (share * 100.0).clamp(0.0, 100.0);
            p.percent = Some(p.percent.map_or(percent, |old| old.max(percent)));
        }
        if raw.end {
            p.done = true;
            // A tool also ends its output when stopped (FFmpeg on SIGINT writes its last block with
            // `progress=end`): then the share it reached stays, rather than a claim of all the work.
            if !self.stopping {
                p.percent = Some(100.0);
            }
            p.eta_secs = Some(0.0);
        } else {
            p.eta_secs = eta(p, self.expected, now_secs, self.advanced_at);
        }
        self.slow_since = match (min_speed, p.speed) {
            (Some(floor), Some(speed)) if speed < floor && !p.done => {
                Some(self.slow_since.unwrap_or(now_secs))
            }
            _ => None,
        };
    }

    /// The progress as of `now_secs` after the start.
    pub fn snapshot(&self, now_secs: f64) -> Progress {
        let mut p = self.progress.clone();
        p.idle_secs = Some(round((now_secs - self.advanced_at).max(0.0), 1e3));
        p.percent = p.percent.map(|v| round(v, 1e2));
        p.eta_secs = p.eta_secs.map(|v| round(v, 1e1));
        p
    }

    /// Whether the job counts as stalled at `now_secs`: no advance for `window`, or a speed under the
    /// floor for `window`. A job that said it is done never is.
    pub fn stalled(&self, now_secs: f64, window: Duration) -> StallVerdict {
        if self.progress.done {
            return None;
        }
        let window_secs = window.as_secs_f64();
        let idle = now_secs - self.advanced_at;
        if idle >= window_secs {
            return Some(if self.progress.reports == 0 {
                format!(
                    "no progress report in {idle:.1} s (stall window {})",
                    humantime::format_duration(window)
                )
            } else {
                format!(
                    "progress has not advanced for {idle:.1} s (stall window {}; {} reports, last at {})",
                    humantime::format_duration(window),
                    self.progress.reports,
                    describe(&self.progress)
                )
            });
        }
        match self.slow_since {
            Some(since) if now_secs - since >= window_secs => Some(format!(
                "speed {:.3}x under the floor for {:.1} s (stall window {})",
                self.progress.speed.unwrap_or(0.0),
                now_secs - since,
                humantime::format_duration(window)
            )),
            _ => None,
        }
    }
}

/// `v` to the nearest `1 / per`: figures people read, without float noise.
fn round(v: f64, per: f64) -> f64 {
    (v * per).round() / per
}

/// Where the progress stands, in words: the media time, or the percent.
fn describe(p: &Progress) -> String {
    match (p.out_time_secs, p.percent) {
        (Some(t), _) => format!("{t:.2} s of media"),
        (None, Some(percent)) => format!("{percent:.1} %"),
        (None, None) => "nothing".into(),
    }
}

/// Seconds left: remaining media time over the speed (FFmpeg), or the pace so far of a share.
fn eta(p: &Progress, expected: Option<Duration>, now_secs: f64, advanced_at: f64) -> Option<f64> {
    if let (Some(expected), Some(t), Some(speed)) = (expected, p.out_time_secs, p.speed) {
        if speed > 0.0 {
            return Some(((expected.as_secs_f64() - t).max(0.0) / speed).max(0.0));
        }
    }
    let share = p.percent? / 100.0;
    let elapsed = advanced_at.min(now_secs);
    (share > 0.0 && elapsed > 0.0).then(|| elapsed * (1.0 - share) / share)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ffmpeg(t: f64, frame: u64, speed: f64) -> RawReport {
        RawReport {
            out_time: Some(Duration::from_secs_f64(t)),
            frame: Some(frame),
            speed: Some(speed),
            fps: Some(25.0 * speed),
            total_size: Some(frame * 1000),
            ..RawReport::default()
        }
    }

    #[test]
    fn percent_eta_and_end_from_media_time() {
        let mut t = ProgressTracker::new(ProgressSource::FfmpegPipe, Some(Duration::from_secs(10)));
        assert_eq!(t.snapshot(0.0).percent, Some(0.0));
        t.report(ffmpeg(2.5, 62, 2.0), 1.25, None);
        let p = t.snapshot(1.25);
        assert_eq!(p.percent, Some(25.0));
        assert_eq!(p.eta_secs, Some(3.8), "rounded to a tenth");
        assert_eq!(p.out_time_secs, Some(2.5));
        assert_eq!(p.reports, 1);
        // A step back in media time never lowers the percent.
        t.report(ffmpeg(2.4, 63, 2.0), 1.5, None);
        assert_eq!(t.snapshot(1.5).percent, Some(25.0));
        t.report(
            RawReport {
                end: true,
                ..ffmpeg(10.0, 250, 2.0)
            },
            5.0,
            None,
        );
        let p = t.snapshot(5.0);
        assert!(p.done);
        assert_eq!((p.percent, p.eta_secs), (Some(100.0), Some(0.0)));
    }

    #[test]
    fn a_tool_stopped_midway_ends_at_the_share_it_reached_not_100() {
        let end = |t: f64, frame: u64| RawReport {
            end: true,
            ..ffmpeg(t, frame, 1.0)
        };
        let mut t = ProgressTracker::new(ProgressSource::FfmpegPipe, Some(Duration::from_secs(10)));
        t.report(ffmpeg(0.5, 12, 1.0), 0.5, None);
        t.stopping();
        t.report(end(1.0, 25), 1.0, None);
        let p = t.snapshot(1.0);
        assert!(p.done);
        assert_eq!(p.percent, Some(10.0));
        // Not stopped: the end is all the work, even a few frames short of the expected length.
        let mut t = ProgressTracker::new(ProgressSource::FfmpegPipe, Some(Duration::from_secs(3)));
        t.report(end(2.92, 75), 3.0, None);
        assert_eq!(t.snapshot(3.0).percent, Some(100.0));
    }

    #[test]
    fn percent_is_capped_and_unknown_without_an_expected_duration() {
        let mut t = ProgressTracker::new(ProgressSource::FfmpegPipe, Some(Duration::from_secs(1)));
        t.report(ffmpeg(3.0, 75, 1.0), 1.0, None);
        assert_eq!(t.snapshot(1.0).percent, Some(100.0));
        let mut t = ProgressTracker::new(ProgressSource::FfmpegStderr, None);
        t.report(ffmpeg(3.0, 75, 1.0), 1.0, None);
        let p = t.snapshot(1.0);
        assert_eq!(p.percent, None, "no expected duration: no share known");
        assert_eq!(p.eta_secs, None);
        assert_eq!(p.fps, Some(25.0));
    }

    #[test]
    fn generic_share_gives_percent_and_a_pace_eta() {
        let mut t = ProgressTracker::new(ProgressSource::Generic, None);
        t.report(
            RawReport {
                fraction: Some(0.25),
                ..RawReport::default()
            },
            2.0,
            None,
        );
        let p = t.snapshot(2.0);
        assert_eq!(p.percent, Some(25.0));
        assert_eq!(p.eta_secs, Some(6.0));
    }

    #[test]
    fn stalls_without_an_advance_for_the_window() {
        let window = Duration::from_secs(5);
        let mut t = ProgressTracker::new(ProgressSource::FfmpegPipe, None);
        assert!(t.stalled(4.9, window).is_none());
        let why = t.stalled(5.0, window).expect("no report in the window");
        assert!(why.contains("no progress report"), "{why}");
        t.report(ffmpeg(1.0, 25, 1.0), 6.0, None);
        assert!(t.stalled(10.9, window).is_none());
        // The same point again is no advance.
        t.report(ffmpeg(1.0, 25, 0.0), 9.0, None);
        let why = t.stalled(11.0, window).expect("stuck at 1 s since 6 s");
        assert!(why.contains("has not advanced"), "{why}");
        assert_eq!(t.snapshot(11.0).idle_secs, Some(5.0));
    }

    #[test]
    fn stalls_under_the_speed_floor_for_the_window() {
        let window = Duration::from_secs(3);
        let mut t = ProgressTracker::new(ProgressSource::FfmpegPipe, None);
        for (i, now) in [1.0, 2.0, 3.0, 4.0].into_iter().enumerate() {
            t.report(ffmpeg(now * 0.1, i as u64 + 1, 0.1), now, Some(0.5));
        }
        assert!(t.stalled(3.9, window).is_none(), "slow since 1 s");
        let why = t.stalled(4.0, window).expect("slow for 3 s");
        assert!(why.contains("under the floor"), "{why}");
        // Back over the floor: the run of slow reports ends.
        t.report(ffmpeg(1.0, 9, 1.0), 4.5, Some(0.5));
        assert!(t.stalled(5.0, window).is_none());
    }

    #[test]
    fn paused_time_counts_toward_no_stall_window() {
        let window = Duration::from_secs(5);
        let mut t = ProgressTracker::new(ProgressSource::FfmpegPipe, None);
        t.report(ffmpeg(1.0, 25, 1.0), 2.0, Some(0.5));
        // Paused from 3 s to 13 s: at 14 s it has stood still 12 s, but ran for only 2 s of them.
        t.resumed(Duration::from_secs(10));
        assert!(t.stalled(14.0, window).is_none());
        assert!(t.stalled(17.0, window).is_some(), "5 s of running time");
        // Under the speed floor since 1 s, paused from 2 s to 12 s: 4.9 s slow at 15.9 s, 5 s at 16 s.
        let mut slow = ProgressTracker::new(ProgressSource::FfmpegPipe, None);
        for (i, now) in [1.0, 2.0].into_iter().enumerate() {
            slow.report(ffmpeg(now * 0.1, i as u64 + 1, 0.1), now, Some(0.5));
        }
        slow.resumed(Duration::from_secs(10));
        slow.report(ffmpeg(1.0, 3, 0.1), 12.5, Some(0.5));
        assert!(
            slow.stalled(15.9, window).is_none(),
            "slow for 4.9 s of running time"
        );
        let why = slow
            .stalled(16.0, window)
            .expect("slow for 5 s of running time");
        assert!(why.contains("under the floor"), "{why}");
    }

    #[test]
    fn a_finished_job_never_stalls() {
        let mut t = ProgressTracker::new(ProgressSource::Generic, None);
        t.report(
            RawReport {
                fraction: Some(1.0),
                end: true,
                ..RawReport::default()
            },
            1.0,
            None,
        );
        assert!(t.stalled(1_000.0, Duration::from_secs(1)).is_none());
    }

    #[test]
    fn any_figure_going_up_is_an_advance() {
        let window = Duration::from_secs(2);
        let raws = [
            RawReport {
                out_time: Some(Duration::from_millis(500)),
                ..RawReport::default()
            },
            RawReport {
                frame: Some(3),
                ..RawReport::default()
            },
            RawReport {
                total_size: Some(100),
                ..RawReport::default()
            },
            RawReport {
                fraction: Some(0.000_002),
                ..RawReport::default()
            },
        ];
        for raw in raws {
            let mut t = ProgressTracker::new(ProgressSource::Generic, None);
            t.report(raw.clone(), 1.5, None);
            assert!(
                t.stalled(3.0, window).is_none(),
                "{raw:?} advanced at 1.5 s"
            );
            assert!(
                t.stalled(3.5, window).is_some(),
                "{raw:?}: idle since 1.5 s"
            );
            // The same figures again: no advance.
            t.report(raw.clone(), 3.0, None);
            assert!(
                t.stalled(3.5, window).is_some(),
                "{raw:?} repeated is no advance"
            );
        }
    }

    #[test]
    fn a_length_learned_later_gives_the_percent_from_then_on() {
        let mut t = ProgressTracker::new(ProgressSource::FfmpegPipe, None);
        t.report(ffmpeg(2.0, 50, 1.0), 1.0, None);
        assert_eq!(t.snapshot(1.0).percent, None);
        t.set_expected(Duration::from_secs(8));
        assert_eq!(t.snapshot(1.0).percent, Some(0.0));
        assert_eq!(t.snapshot(1.0).expected_secs, Some(8.0));
        t.report(ffmpeg(4.0, 100, 2.0), 2.0, None);
        let p = t.snapshot(2.0);
        assert_eq!((p.percent, p.eta_secs), (Some(50.0), Some(2.0)));
        // A zero length says nothing about the share.
        let mut t = ProgressTracker::new(ProgressSource::FfmpegPipe, Some(Duration::ZERO));
        t.report(ffmpeg(4.0, 100, 2.0), 2.0, None);
        assert_eq!(t.snapshot(2.0).percent, Some(0.0));
    }

    #[test]
    fn the_eta_needs_a_speed_or_a_pace() {
        let mut t = ProgressTracker::new(ProgressSource::FfmpegPipe, Some(Duration::from_secs(10)));
        // Speed 0 (nothing written yet): no estimate from it, and no share to pace.
        t.report(ffmpeg(0.0, 0, 0.0), 1.0, None);
        assert_eq!(t.snapshot(1.0).eta_secs, None);
        let mut t = ProgressTracker::new(ProgressSource::Generic, None);
        t.report(
            RawReport {
                fraction: Some(0.0),
                ..RawReport::default()
            },
            1.0,
            None,
        );
        assert_eq!(t.snapshot(1.0).eta_secs, None, "no share done: no pace");
    }

    #[test]
    fn a_speed_at_the_floor_is_not_slow_and_reasons_say_where_the_job_stands() {
        let window = Duration::from_secs(1);
        let mut t = ProgressTracker::new(ProgressSource::FfmpegPipe, None);
        for now in [1.0, 2.0, 3.0] {
            t.report(ffmpeg(now, now as u64, 0.5), now, Some(0.5));
        }
        assert!(
            t.stalled(3.0, window).is_none(),
            "at the floor is not under it"
        );
        let mut t = ProgressTracker::new(ProgressSource::FfmpegPipe, None);
        t.report(ffmpeg(1.0, 25, 1.0), 0.5, None);
        let why = t.stalled(5.0, window).unwrap();
        assert!(why.contains("at 1.00 s of media"), "{why}");
        let mut t = ProgressTracker::new(ProgressSource::Generic, None);
        t.report(
            RawReport {
                fraction: Some(0.25),
                ..RawReport::default()
            },
            0.5,
            None,
        );
        let why = t.stalled(5.0, window).unwrap();
        assert!(why.contains("at 25.0 %"), "{why}");
        let mut t = ProgressTracker::new(ProgressSource::FfmpegStderr, None);
        t.report(
            RawReport {
                frame: Some(1),
                ..RawReport::default()
            },
            0.5,
            None,
        );
        let why = t.stalled(5.0, window).unwrap();
        assert!(why.contains("at nothing"), "{why}");
    }

    #[test]
    fn progress_mode_names() {
        assert!(ProgressMode::Auto.is_auto());
        assert!(!ProgressMode::Ffmpeg.is_auto());
        for (mode, name) in [
            (ProgressMode::Auto, "\"auto\""),
            (ProgressMode::FfmpegStderr, "\"ffmpeg_stderr\""),
            (ProgressMode::None, "\"none\""),
        ] {
            assert_eq!(serde_json::to_string(&mode).unwrap(), name);
        }
    }
}

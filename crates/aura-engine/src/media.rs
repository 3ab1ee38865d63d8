//! Media jobs at launch: how a job's progress is read (FFmpeg's `-progress` blocks on a pipe Aura adds to
//! its arguments, its stderr status line, or the generic `aura-progress` protocol), the media duration it
//! is expected to produce, and which inputs ffprobe must measure when the arguments do not say.

use aura_model::{JobSpec, ProgressMode, ProgressSource};
use aura_supervisor::{ProgressSetup, PROGRESS_FD};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// How the engine treats media jobs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MediaConfig {
    /// A job that reports progress is stopped with outcome `stalled` when its progress has not advanced
    /// for this long (a spec's `stall_after` overrides it). Default: 2 minutes.
    #[serde(with = "aura_model::humantime_serde_compat")]
    pub stall_after: Duration,
    /// The program that measures an FFmpeg job's inputs when its arguments do not tell its duration;
    /// empty: never run. Default: `ffprobe` (searched in the jobs' `PATH`).
    pub ffprobe: String,
    /// The longest one ffprobe run may take before it is killed. Default: 10 s.
    #[serde(with = "aura_model::humantime_serde_compat")]
    pub probe_timeout: Duration,
    /// How often running jobs' progress is published to event streams. Default: 1 s.
    #[serde(with = "aura_model::humantime_serde_compat")]
    pub progress_interval: Duration,
}

impl Default for MediaConfig {
    fn default() -> Self {
        MediaConfig {
            stall_after: Duration::from_secs(120),
            ffprobe: "ffprobe".into(),
            probe_timeout: Duration::from_secs(10),
            progress_interval: Duration::from_secs(1),
        }
    }
}

/// What a launch does for a job's media side.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct MediaPlan {
    /// The arguments the job runs with (`-progress pipe:3` added for FFmpeg where it can be).
    pub args: Vec<String>,
    /// How its progress is read; `None`: it reports none.
    pub progress: Option<ProgressSetup>,
    /// Inputs ffprobe measures, longest wins, where neither the spec nor the arguments tell the duration.
    pub probe_inputs: Vec<String>,
    /// Environment the job gets for its progress (`AURA_PROGRESS_FD` for the generic protocol).
    pub env: Option<(String, String)>,
}

/// Plans `spec`'s launch: pure, from the spec alone.
pub(crate) fn plan(spec: &JobSpec) -> MediaPlan {
    let mode = match spec.progress {
        ProgressMode::Auto if aura_media::is_ffmpeg(&spec.program) => ProgressMode::Ffmpeg,
        ProgressMode::Auto => ProgressMode::None,
        mode => mode,
    };
    let mut plan = MediaPlan {
        args: spec.args.clone(),
        progress: None,
        probe_inputs: Vec::new(),
        env: None,
    };
    let setup = |source, expected| ProgressSetup {
        source,
        expected,
        min_speed: spec.min_speed,
    };
    match mode {
        ProgressMode::Auto | ProgressMode::None => {}
        ProgressMode::Ffmpeg | ProgressMode::FfmpegStderr => {
            let ffmpeg = aura_media::plan(&spec.args, PROGRESS_FD);
            let source = match (mode, &ffmpeg.progress) {
                (ProgressMode::Ffmpeg, aura_media::Channel::Pipe) => {
                    plan.args = ffmpeg.args;
                    ProgressSource::FfmpegPipe
                }
                _ => ProgressSource::FfmpegStderr,
            };
            let expected = spec.expected_duration.or(ffmpeg.expected);
            if expected.is_none() {
                plan.probe_inputs = ffmpeg.probe_inputs;
            }
            plan.progress = Some(setup(source, expected));
        }
        ProgressMode::Aura => {
            plan.env = Some(("AURA_PROGRESS_FD".into(), PROGRESS_FD.to_string()));
            plan.progress = Some(setup(ProgressSource::Generic, spec.expected_duration));
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(program: &str, args: &[&str]) -> JobSpec {
        JobSpec::new(program, args.iter().copied())
    }

    #[test]
    fn ffmpeg_gets_the_progress_pipe_and_its_expected_duration() {
        let p = plan(&spec(
            "/usr/bin/ffmpeg",
            &[
                "-f",
                "lavfi",
                "-i",
                "testsrc=duration=20:size=320x240:rate=25",
                "out.mp4",
            ],
        ));
        assert_eq!(&p.args[..2], ["-progress", "pipe:3"]);
        let setup = p.progress.expect("ffmpeg reports progress");
        assert_eq!(setup.source, ProgressSource::FfmpegPipe);
        assert_eq!(setup.expected, Some(Duration::from_secs(20)));
        assert!(p.probe_inputs.is_empty());
    }

    #[test]
    fn an_own_progress_target_falls_back_to_stderr_and_inputs_are_probed() {
        let p = plan(&spec(
            "ffmpeg",
            &["-progress", "prog.txt", "-i", "in.mov", "out.mp4"],
        ));
        assert_eq!(p.args[0], "-progress");
        assert_eq!(p.args[1], "prog.txt", "the user's own target stays");
        let setup = p.progress.expect("stderr progress");
        assert_eq!(setup.source, ProgressSource::FfmpegStderr);
        assert_eq!(setup.expected, None);
        assert_eq!(p.probe_inputs, ["in.mov"]);
    }

    #[test]
    fn a_declared_duration_wins_and_needs_no_probe() {
        let mut s = spec("ffmpeg", &["-i", "in.mov", "out.mp4"]);
        s.expected_duration = Some(Duration::from_secs(7));
        s.min_speed = Some(0.5);
        let p = plan(&s);
        let setup = p.progress.expect("progress");
        assert_eq!(setup.expected, Some(Duration::from_secs(7)));
        assert_eq!(setup.min_speed, Some(0.5));
        assert!(p.probe_inputs.is_empty());
    }

    #[test]
    fn other_programs_report_nothing_unless_declared() {
        let p = plan(&spec("sox", &["in.wav", "out.wav"]));
        assert_eq!(p.progress, None);
        assert_eq!(p.args, ["in.wav", "out.wav"]);
        let mut s = spec("tts", &["--text", "hi"]);
        s.progress = ProgressMode::Aura;
        let p = plan(&s);
        assert_eq!(p.progress.map(|s| s.source), Some(ProgressSource::Generic));
        assert_eq!(p.env, Some(("AURA_PROGRESS_FD".into(), "3".into())));
        let mut s = spec("ffmpeg", &["-i", "a", "b"]);
        s.progress = ProgressMode::None;
        assert_eq!(plan(&s).progress, None);
        let mut s = spec("wrapper.sh", &["-i", "a", "b"]);
        s.progress = ProgressMode::FfmpegStderr;
        let p = plan(&s);
        assert_eq!(p.args, ["-i", "a", "b"], "nothing added for a wrapper");
        assert_eq!(
            p.progress.map(|s| s.source),
            Some(ProgressSource::FfmpegStderr)
        );
    }
}

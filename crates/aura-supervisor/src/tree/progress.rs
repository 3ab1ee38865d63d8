//! A running job's progress: the reports its progress pipe (or its stderr) carries, parsed on the watcher
//! thread as they are captured and kept in a `ProgressTracker` that every reader of the tree sees.

use aura_media::{Format, ProgressReader, Report};
use aura_model::{Progress, ProgressSource, ProgressTracker};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How a launch reads its job's progress.
#[derive(Clone, Debug, PartialEq)]
pub struct ProgressSetup {
    /// Where the reports come from: `FfmpegPipe` and `Generic` get a pipe on fd 3
    /// ([`PROGRESS_FD`]), `FfmpegStderr` and `Generic` are also read from stderr.
    pub source: ProgressSource,
    /// The media duration the job is expected to produce (for percent and ETA).
    pub expected: Option<Duration>,
    /// Reports under this speed count toward a stall (see `ProgressTracker::stalled`).
    pub min_speed: Option<f64>,
}

/// The file descriptor of the progress pipe in the job (`-progress pipe:3`, `AURA_PROGRESS_FD=3`).
pub const PROGRESS_FD: i32 = 3;

impl ProgressSetup {
    /// Whether the job gets the progress pipe on [`PROGRESS_FD`].
    pub fn has_pipe(&self) -> bool {
        matches!(
            self.source,
            ProgressSource::FfmpegPipe | ProgressSource::Generic
        )
    }

    /// The parser of the pipe's content.
    pub(crate) fn pipe_format(&self) -> Format {
        match self.source {
            ProgressSource::FfmpegPipe => Format::FfmpegBlocks,
            ProgressSource::FfmpegStderr => Format::FfmpegStatus,
            ProgressSource::Generic => Format::Generic,
        }
    }

    /// The parser of stderr, where stderr carries progress.
    pub(crate) fn stderr_format(&self) -> Option<Format> {
        match self.source {
            ProgressSource::FfmpegPipe => None,
            ProgressSource::FfmpegStderr => Some(Format::FfmpegStatus),
            ProgressSource::Generic => Some(Format::Generic),
        }
    }
}

/// One tree's progress, shared by its taps (watcher thread) and its readers.
#[derive(Debug)]
pub(crate) struct JobProgress {
    tracker: Mutex<ProgressTracker>,
    since: Instant,
    min_speed: Option<f64>,
}

impl JobProgress {
    pub fn new(setup: &ProgressSetup, since: Instant) -> JobProgress {
        JobProgress {
            tracker: Mutex::new(ProgressTracker::new(setup.source, setup.expected)),
            since,
            min_speed: setup.min_speed,
        }
    }

    fn now_secs(&self) -> f64 {
        self.since.elapsed().as_secs_f64()
    }

    /// A capture tap feeding `format`'s parser into this tracker.
    pub fn tap(self: &Arc<Self>, format: Format) -> aura_logs::Tap {
        let progress = self.clone();
        let mut reader = ProgressReader::new(format);
        Box::new(move |bytes: &[u8]| {
            reader.feed(bytes, &mut |r| progress.report(r));
        })
    }

    fn report(&self, raw: Report) {
        let now = self.now_secs();
        crate::lock(&self.tracker).report(raw, now, self.min_speed);
    }

    pub fn set_expected(&self, expected: Duration) {
        crate::lock(&self.tracker).set_expected(expected);
    }

    pub fn snapshot(&self) -> Progress {
        let now = self.now_secs();
        crate::lock(&self.tracker).snapshot(now)
    }

    /// The job ran again after `paused`: that time counts toward no stall window.
    pub fn resumed(&self, paused: Duration) {
        crate::lock(&self.tracker).resumed(paused);
    }

    /// The job's stop sequence began.
    pub fn stopping(&self) {
        crate::lock(&self.tracker).stopping();
    }

    /// Why the job counts as stalled for `window`, if it does.
    pub fn stalled(&self, window: Duration) -> Option<String> {
        let now = self.now_secs();
        crate::lock(&self.tracker).stalled(now, window)
    }
}

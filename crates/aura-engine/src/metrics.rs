//! The job lifecycle counters and histograms behind `/metrics`: jobs submitted and finished by kind and
//! outcome, run time, queue wait and peak memory, submits refused, time admission spent paused, and
//! which warnings are raised. The actor feeds them where it commits the events they count; handles where
//! they refuse a submit; the warning watcher its verdicts. `/metrics` reads a [`JobMetricsSnapshot`].
//!
//! Plain atomics, one relaxed add per event: nothing here takes a lock or waits, so the actor's hot path
//! pays a few nanoseconds. Every label is a closed enum, so the series are bounded.

use aura_model::{JobSpec, Outcome, WarningKind};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The bounded class of a job for metric labels, from its spec's type (its free-text `kind` label would
/// make series unbounded).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum JobKind {
    /// A plain command: no progress reporting.
    Command,
    /// FFmpeg (by its program name, or a spec asking for FFmpeg's progress).
    Ffmpeg,
    /// A tool reporting through Aura's generic progress protocol.
    Progress,
}

impl JobKind {
    /// Every kind, in label order.
    pub const ALL: [JobKind; 3] = [JobKind::Command, JobKind::Ffmpeg, JobKind::Progress];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Command => "command",
            JobKind::Ffmpeg => "ffmpeg",
            JobKind::Progress => "progress",
        }
    }

    /// The kind a spec runs as: the progress mode the launch would use (see `media::plan`).
    pub fn of(spec: &JobSpec) -> JobKind {
        use aura_model::ProgressMode;
        match spec.progress {
            ProgressMode::Ffmpeg | ProgressMode::FfmpegStderr => JobKind::Ffmpeg,
            ProgressMode::Auto if aura_media::is_ffmpeg(&spec.program) => JobKind::Ffmpeg,
            ProgressMode::Aura => JobKind::Progress,
            ProgressMode::Auto | ProgressMode::None => JobKind::Command,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Why a submit was refused, for `aura_admission_refusals_total{reason}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// The queue holds `admission.queue_cap` jobs (429).
    QueueFull,
    /// The submitter's token holds its own cap of waiting jobs (429).
    TokenCap,
    /// The job asks for more than the node has at all (memory, CPU, disk, GPUs, a limit's slots).
    TooLarge,
    /// The daemon is shutting down.
    ShuttingDown,
    /// The data volume refuses the job's record.
    StorageFull,
}

impl Refusal {
    /// Every reason, in label order.
    pub const ALL: [Refusal; 5] = [
        Refusal::QueueFull,
        Refusal::TokenCap,
        Refusal::TooLarge,
        Refusal::ShuttingDown,
        Refusal::StorageFull,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::QueueFull => "queue_full",
            Refusal::TokenCap => "token_cap",
            Refusal::TooLarge => "too_large",
            Refusal::ShuttingDown => "shutting_down",
            Refusal::StorageFull => "storage_full",
        }
    }

    /// The admission refusal a submit error is, if it is one (an invalid spec is not: it never asked).
    pub(crate) fn of(error: &crate::EngineError) -> Option<Refusal> {
        use crate::EngineError as E;
        match error {
            E::QueueFull { .. } => Some(Refusal::QueueFull),
            E::SubmitterQueueFull { .. } => Some(Refusal::TokenCap),
            E::ExceedsCapacity(_) => Some(Refusal::TooLarge),
            E::ShuttingDown => Some(Refusal::ShuttingDown),
            E::Store(e) if e.is_storage() => Some(Refusal::StorageFull),
            E::BatchEntry { source, .. } => Refusal::of(source),
            _ => None,
        }
    }
}

/// Every outcome name, in label order; `outcome_index` maps an outcome to its place.
pub const OUTCOMES: [&str; 14] = [
    "succeeded",
    "failed",
    "killed",
    "timed_out",
    "stalled",
    "dependency_failed",
    "cancelled",
    "failed_to_start",
    "storage_exhausted",
    "interrupted",
    "memory_limit_exceeded",
    "memory_pressure",
    "oom_killed",
    "quarantined",
];

/// Exhaustive, so that a new outcome cannot be left out of the labels.
fn outcome_index(outcome: &Outcome) -> usize {
    match outcome {
        Outcome::Succeeded => 0,
        Outcome::Failed { .. } => 1,
        Outcome::Killed { .. } => 2,
        Outcome::TimedOut => 3,
        Outcome::Stalled => 4,
        Outcome::DependencyFailed { .. } => 5,
        Outcome::Cancelled => 6,
        Outcome::FailedToStart { .. } => 7,
        Outcome::StorageExhausted { .. } => 8,
        Outcome::Interrupted { .. } => 9,
        Outcome::MemoryLimitExceeded { .. } => 10,
        Outcome::MemoryPressure { .. } => 11,
        Outcome::OomKilled { .. } => 12,
        Outcome::Quarantined { .. } => 13,
    }
}

/// Run time and queue wait buckets, seconds: media jobs take from a fraction of a second (a probe, a
/// thumbnail) to hours (a feature-length encode).
pub const DURATION_BUCKETS: [f64; 16] = [
    0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0,
    14400.0, 28800.0,
];

/// Peak memory buckets, bytes: 16 MiB to 64 GiB, doubling.
pub const MEMORY_BUCKETS: [f64; 13] = [
    (16u64 << 20) as f64,
    (32u64 << 20) as f64,
    (64u64 << 20) as f64,
    (128u64 << 20) as f64,
    (256u64 << 20) as f64,
    (512u64 << 20) as f64,
    (1u64 << 30) as f64,
    (2u64 << 30) as f64,
    (4u64 << 30) as f64,
    (8u64 << 30) as f64,
    (16u64 << 30) as f64,
    (32u64 << 30) as f64,
    (64u64 << 30) as f64,
];

/// A histogram of atomics: a count per bucket (the last one past every bound, `+Inf`) and the sum as
/// `f64` bits, updated by compare-and-swap.
#[derive(Debug)]
struct Histogram {
    bounds: &'static [f64],
    counts: Box<[AtomicU64]>,
    sum_bits: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_bits: AtomicU64::new(0f64.to_bits()),
        }
    }

    fn observe(&self, value: f64) {
        if !value.is_finite() {
            return;
        }
        let value = value.max(0.0);
        let bucket = self
            .bounds
            .iter()
            .position(|b| value <= *b)
            .unwrap_or(self.bounds.len());
        // The sum first: a scrape between the two then never shows a count without its value.
        let _ = self
            .sum_bits
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + value).to_bits())
            });
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> HistogramSnapshot {
        let buckets: Vec<(f64, u64)> = self
            .bounds
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(self.counts.iter().map(|c| c.load(Ordering::Relaxed)))
            .collect();
        HistogramSnapshot {
            sum: f64::from_bits(self.sum_bits.load(Ordering::Relaxed)),
            count: buckets.iter().map(|(_, n)| n).sum(),
            buckets,
        }
    }
}

/// One histogram as a scrape sees it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HistogramSnapshot {
    /// The sum of every observation.
    pub sum: f64,
    /// How many observations.
    pub count: u64,
    /// (upper bound, observations in this bucket only — not cumulative); the last bound is infinite.
    pub buckets: Vec<(f64, u64)>,
}

/// Counters and histograms of one kind of job.
#[derive(Debug)]
struct PerKind {
    submitted: AtomicU64,
    finished: [AtomicU64; OUTCOMES.len()],
    run_seconds: Histogram,
    queue_wait_seconds: Histogram,
    peak_memory_bytes: Histogram,
}

impl PerKind {
    fn new() -> PerKind {
        PerKind {
            submitted: AtomicU64::new(0),
            finished: std::array::from_fn(|_| AtomicU64::new(0)),
            run_seconds: Histogram::new(&DURATION_BUCKETS),
            queue_wait_seconds: Histogram::new(&DURATION_BUCKETS),
            peak_memory_bytes: Histogram::new(&MEMORY_BUCKETS),
        }
    }
}

/// Sentinel of `paused_since_us`: admission is not paused.
const NOT_PAUSED: u64 = u64::MAX;

/// The engine's lifecycle metrics since start-up (in `Shared`).
#[derive(Debug)]
pub(crate) struct JobMetrics {
    kinds: [PerKind; JobKind::ALL.len()],
    refusals: [AtomicU64; Refusal::ALL.len()],
    /// Time admission spent paused by guards in pauses that ended, microseconds.
    paused_us: AtomicU64,
    /// When the pause under way began, microseconds after `epoch`; `NOT_PAUSED` when none is.
    paused_since_us: AtomicU64,
    epoch: Instant,
    warnings: [AtomicBool; WarningKind::ALL.len()],
}

impl Default for JobMetrics {
    fn default() -> Self {
        JobMetrics {
            kinds: std::array::from_fn(|_| PerKind::new()),
            refusals: std::array::from_fn(|_| AtomicU64::new(0)),
            paused_us: AtomicU64::new(0),
            paused_since_us: AtomicU64::new(NOT_PAUSED),
            epoch: Instant::now(),
            warnings: std::array::from_fn(|_| AtomicBool::new(false)),
        }
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX - 1)
}

impl JobMetrics {
    fn kind(&self, spec: &JobSpec) -> &PerKind {
        &self.kinds[JobKind::of(spec).index()]
    }

    /// The actor queued (or parked behind its dependencies) a newly submitted job.
    pub(crate) fn submitted(&self, spec: &JobSpec) {
        self.kind(spec).submitted.fetch_add(1, Ordering::Relaxed);
    }

    /// A job reached its final state with `outcome`.
    pub(crate) fn finished(&self, spec: &JobSpec, outcome: &Outcome) {
        self.kind(spec).finished[outcome_index(outcome)].fetch_add(1, Ordering::Relaxed);
    }

    /// An attempt started after waiting `seconds` in the queue.
    pub(crate) fn started(&self, spec: &JobSpec, waited_seconds: f64) {
        self.kind(spec).queue_wait_seconds.observe(waited_seconds);
    }

    /// An attempt that ran is over: its run time, and its peak memory where it was measured.
    pub(crate) fn ran(&self, spec: &JobSpec, seconds: f64, peak_bytes: Option<u64>) {
        let kind = self.kind(spec);
        kind.run_seconds.observe(seconds);
        if let Some(peak) = peak_bytes {
            kind.peak_memory_bytes.observe(peak as f64);
        }
    }

    /// A submit was refused.
    pub(crate) fn refused(&self, reason: Refusal) {
        self.refusals[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// The guards paused (`true`) or resumed admission (only changes count; the actor calls it on each).
    pub(crate) fn admission_paused(&self, paused: bool, now: Instant) {
        let now_us = micros(now.saturating_duration_since(self.epoch));
        if paused {
            let _ = self.paused_since_us.compare_exchange(
                NOT_PAUSED,
                now_us,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        } else {
            let since = self.paused_since_us.swap(NOT_PAUSED, Ordering::Relaxed);
            if since != NOT_PAUSED {
                self.paused_us
                    .fetch_add(now_us.saturating_sub(since), Ordering::Relaxed);
            }
        }
    }

    /// Records whether `warning` is raised now.
    pub(crate) fn set_warning(&self, warning: WarningKind, active: bool) {
        if let Some(i) = WarningKind::ALL.iter().position(|w| *w == warning) {
            self.warnings[i].store(active, Ordering::Relaxed);
        }
    }

    /// Everything, for one scrape.
    pub(crate) fn snapshot(&self, now: Instant) -> JobMetricsSnapshot {
        let now_us = micros(now.saturating_duration_since(self.epoch));
        let since = self.paused_since_us.load(Ordering::Relaxed);
        let running_pause = if since == NOT_PAUSED {
            0
        } else {
            now_us.saturating_sub(since)
        };
        let paused_us = self.paused_us.load(Ordering::Relaxed) + running_pause;
        JobMetricsSnapshot {
            kinds: JobKind::ALL
                .iter()
                .zip(&self.kinds)
                .map(|(kind, k)| KindSnapshot {
                    kind: *kind,
                    submitted: k.submitted.load(Ordering::Relaxed),
                    finished: OUTCOMES
                        .iter()
                        .zip(&k.finished)
                        .map(|(name, n)| (*name, n.load(Ordering::Relaxed)))
                        .collect(),
                    run_seconds: k.run_seconds.snapshot(),
                    queue_wait_seconds: k.queue_wait_seconds.snapshot(),
                    peak_memory_bytes: k.peak_memory_bytes.snapshot(),
                })
                .collect(),
            refusals: Refusal::ALL
                .iter()
                .zip(&self.refusals)
                .map(|(r, n)| (*r, n.load(Ordering::Relaxed)))
                .collect(),
            admission_paused_seconds: paused_us as f64 / 1e6,
            warnings: WarningKind::ALL
                .iter()
                .zip(&self.warnings)
                .map(|(w, a)| (*w, a.load(Ordering::Relaxed)))
                .collect(),
        }
    }
}

/// One kind's counters and histograms, as a scrape sees them.
#[derive(Clone, Debug, PartialEq)]
pub struct KindSnapshot {
    /// The kind.
    pub kind: JobKind,
    /// Jobs submitted since start-up.
    pub submitted: u64,
    /// Jobs that reached a final state, by outcome name (every outcome, zeros included).
    pub finished: Vec<(&'static str, u64)>,
    /// Run time of each attempt that ran, seconds.
    pub run_seconds: HistogramSnapshot,
    /// Time each attempt waited in the queue before it started, seconds.
    pub queue_wait_seconds: HistogramSnapshot,
    /// Peak memory of each attempt that ran, where it was measured, bytes.
    pub peak_memory_bytes: HistogramSnapshot,
}

/// The lifecycle metrics since start-up, for `/metrics`.
#[derive(Clone, Debug, PartialEq)]
pub struct JobMetricsSnapshot {
    /// Per job kind, every kind.
    pub kinds: Vec<KindSnapshot>,
    /// Submits refused, by reason (every reason, zeros included).
    pub refusals: Vec<(Refusal, u64)>,
    /// Time admission spent paused by guards since start-up, the pause under way included.
    pub admission_paused_seconds: f64,
    /// Which warnings are raised now (every warning).
    pub warnings: Vec<(WarningKind, bool)>,
}

impl Default for JobMetricsSnapshot {
    /// What a daemon that has done nothing yet shows: every series at zero.
    fn default() -> Self {
        JobMetrics::default().snapshot(Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aura_model::{JobId, ProgressMode};

    fn spec(program: &str, progress: ProgressMode) -> JobSpec {
        JobSpec {
            progress,
            ..JobSpec::new(program, Vec::<String>::new())
        }
    }

    #[test]
    fn kinds_come_from_the_spec_type() {
        assert_eq!(
            JobKind::of(&spec("sleep", ProgressMode::Auto)),
            JobKind::Command
        );
        assert_eq!(
            JobKind::of(&spec("/usr/bin/ffmpeg", ProgressMode::Auto)),
            JobKind::Ffmpeg
        );
        assert_eq!(
            JobKind::of(&spec("ffmpeg", ProgressMode::None)),
            JobKind::Command
        );
        assert_eq!(
            JobKind::of(&spec("wrap.sh", ProgressMode::FfmpegStderr)),
            JobKind::Ffmpeg
        );
        assert_eq!(
            JobKind::of(&spec("tts", ProgressMode::Aura)),
            JobKind::Progress
        );
    }

    #[test]
    fn outcome_labels_are_the_model_names() {
        let outcomes = [
            Outcome::Succeeded,
            Outcome::Failed { exit_code: 1 },
            Outcome::Killed { signal: 9 },
            Outcome::TimedOut,
            Outcome::Stalled,
            Outcome::DependencyFailed {
                job_id: JobId(1),
                outcome: "failed".into(),
            },
            Outcome::Cancelled,
            Outcome::FailedToStart { error: "x".into() },
            Outcome::StorageExhausted { error: "x".into() },
            Outcome::Interrupted { reason: "x".into() },
            Outcome::MemoryLimitExceeded {
                limit_bytes: 1,
                peak_bytes: None,
            },
            Outcome::MemoryPressure { detail: "x".into() },
            Outcome::OomKilled { kills: 1 },
            Outcome::Quarantined {
                reason: "x".into(),
                interruptions: 2,
            },
        ];
        for o in &outcomes {
            assert_eq!(OUTCOMES[outcome_index(o)], o.name());
        }
    }

    #[test]
    fn counters_and_histograms_count_exactly() {
        let m = JobMetrics::default();
        let sleep = spec("sleep", ProgressMode::Auto);
        let ffmpeg = spec("ffmpeg", ProgressMode::Auto);
        m.submitted(&sleep);
        m.submitted(&sleep);
        m.submitted(&ffmpeg);
        m.finished(&sleep, &Outcome::Succeeded);
        m.finished(&sleep, &Outcome::Failed { exit_code: 3 });
        m.started(&sleep, 0.05);
        m.started(&sleep, 40.0);
        m.ran(&sleep, 1.5, Some(20 << 20));
        m.ran(&sleep, 1e9, None);
        m.refused(Refusal::QueueFull);
        let s = m.snapshot(Instant::now());
        let command = &s.kinds[0];
        assert_eq!((command.kind, command.submitted), (JobKind::Command, 2));
        assert_eq!(s.kinds[1].submitted, 1);
        assert_eq!(command.finished[0], ("succeeded", 1));
        assert_eq!(command.finished[1], ("failed", 1));
        assert_eq!(command.finished.iter().map(|f| f.1).sum::<u64>(), 2);
        let wait = &command.queue_wait_seconds;
        assert_eq!((wait.count, wait.sum), (2, 40.05));
        assert_eq!(wait.buckets[0], (0.1, 1));
        assert_eq!(wait.buckets[7], (60.0, 1));
        let run = &command.run_seconds;
        // Past every bound: the +Inf bucket.
        assert_eq!(run.buckets.last(), Some(&(f64::INFINITY, 1)));
        assert_eq!(run.count, 2);
        let peak = &command.peak_memory_bytes;
        assert_eq!(peak.count, 1);
        assert_eq!(peak.buckets[1], ((32u64 << 20) as f64, 1));
        assert_eq!(s.refusals[0], (Refusal::QueueFull, 1));
    }

    #[test]
    fn paused_time_counts_the_pause_under_way_and_ignores_repeats() {
        let m = JobMetrics::default();
        let t0 = m.epoch + Duration::from_secs(10);
        m.admission_paused(true, t0);
        // A second "paused" while paused does not restart the clock.
        m.admission_paused(true, t0 + Duration::from_secs(1));
        let during = m.snapshot(t0 + Duration::from_secs(2));
        assert!((during.admission_paused_seconds - 2.0).abs() < 1e-6);
        m.admission_paused(false, t0 + Duration::from_secs(3));
        m.admission_paused(false, t0 + Duration::from_secs(4));
        let after = m.snapshot(t0 + Duration::from_secs(100));
        assert!((after.admission_paused_seconds - 3.0).abs() < 1e-6);
    }
}

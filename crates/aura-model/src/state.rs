//! Job states, outcomes and events, and `Job::apply`: the one function that holds every legal transition.

use crate::{Accounting, Backend, JobId, JobSpec, StopSignal, Timestamp};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// How to find a job's process tree again, even from a daemon that restarted after a crash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TreeHandle {
    /// The backend that launched the tree, and so how to find and kill it.
    pub backend: Backend,
    /// The main process (also its process group id: every job leads its own group).
    pub pid: u32,
    /// Start time of the main process in clock ticks since boot (`/proc/PID/stat` field 22), so that a
    /// reused PID is never mistaken for the job.
    pub start_ticks: u64,
    /// The job's cgroup directories (empty for the process-group backend).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<String>))]
    pub cgroups: Vec<PathBuf>,
}

/// Facts about a running attempt.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Run {
    /// When the attempt started.
    pub started_at: Timestamp,
    /// How to find its process tree.
    pub tree: TreeHandle,
    /// The working directory the attempt runs in.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub cwd: PathBuf,
    /// Time the attempt spent paused before its latest resume, in seconds; it counts neither toward its
    /// timeout nor toward stall detection.
    #[serde(default, skip_serializing_if = "crate::is_zero_f64")]
    pub paused_secs: f64,
}

impl Run {
    /// This run with the pause that began at `since` and ended at `at` added to its paused time.
    fn after_pause(&self, since: Timestamp, at: Timestamp) -> Run {
        let paused = (at.unix_millis() - since.unix_millis()).max(0) as f64 / 1000.0;
        Run {
            paused_secs: self.paused_secs + paused,
            ..self.clone()
        }
    }
}

/// Why the engine stops a running tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// A user cancelled the job.
    Cancelled,
    /// The attempt ran past its spec's `timeout`.
    TimedOut,
    /// The daemon is shutting down.
    Shutdown,
    /// The memory pressure responder chose this job as its victim.
    MemoryPressure,
    /// Its progress stopped advancing (or stayed under its speed floor) for its stall window.
    Stalled,
    /// An operator killed it (`aura kill`): SIGKILL to the whole tree at once, no grace period. It ends
    /// `cancelled`.
    Killed,
}

/// How a process ended, as `wait` reported it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ExitStatus {
    /// The process exited with this code.
    Code(i32),
    /// A signal killed it (the signal's number).
    Signal(i32),
}

/// How an attempt ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Outcome {
    /// The main process exited with code 0 by itself (no stop requested).
    Succeeded,
    /// The main process exited with a non-zero code by itself (no stop requested).
    Failed {
        /// Its exit code.
        exit_code: i32,
    },
    /// A signal killed the main process while no stop was requested.
    Killed {
        /// The signal's number.
        signal: i32,
    },
    /// Stopped for running past its `timeout`.
    TimedOut,
    /// Stopped because its progress did not advance for its stall window (`stall_after`), or its speed
    /// stayed under `min_speed` that long.
    Stalled,
    /// Never started: a job it depends on (`after`) ended without succeeding.
    DependencyFailed {
        /// The dependency that did not succeed.
        job_id: JobId,
        /// How it ended (an outcome name such as `failed`, `cancelled`, or `dependency_failed`).
        outcome: String,
    },
    /// Cancelled by a user, queued or running.
    Cancelled,
    /// The launch failed before the program ran (program not found, bad working directory…).
    FailedToStart {
        /// Why the launch failed.
        error: String,
    },
    /// Could not start: the data volume had no room for what the start needed (work dir, logs).
    StorageExhausted {
        /// The error the volume gave.
        error: String,
    },
    /// The daemon died or shut down while the job ran.
    Interrupted {
        /// What happened, e.g. "daemon shutdown".
        reason: String,
    },
    /// Killed for going over its hard memory limit (by the kernel in its cgroup, or the fallback's
    /// watchdog); the peak is the recorded one.
    MemoryLimitExceeded {
        /// The hard limit, in bytes.
        limit_bytes: u64,
        /// The attempt's recorded memory peak, in bytes, where known.
        peak_bytes: Option<u64>,
    },
    /// Stopped by the memory pressure responder to protect the host; requeued with a larger request.
    MemoryPressure {
        /// What happened, in words.
        detail: String,
    },
    /// The kernel's OOM killer (host out of memory, not the job's limit) killed processes of the job.
    OomKilled {
        /// Processes of the tree the OOM killer killed.
        kills: u64,
    },
    /// Running when the daemon died uncleanly `interruptions` times in a row: suspected of killing it,
    /// so never requeued again.
    Quarantined {
        /// Why, with the count and the configured `quarantine_after`.
        reason: String,
        /// Unclean daemon deaths in a row while it ran, this one included.
        interruptions: u32,
    },
}

impl Outcome {
    /// Whether the attempt succeeded (exit code 0).
    pub fn is_success(&self) -> bool {
        matches!(self, Outcome::Succeeded)
    }

    /// Whether this outcome uses up one of the retry policy's retries.
    pub fn counts_as_failure(&self) -> bool {
        !matches!(
            self,
            Outcome::Succeeded
                | Outcome::Cancelled
                | Outcome::Interrupted { .. }
                | Outcome::MemoryPressure { .. }
        )
    }

    /// The short name shown in tables and used in filters.
    pub fn name(&self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Failed { .. } => "failed",
            Outcome::Killed { .. } => "killed",
            Outcome::TimedOut => "timed_out",
            Outcome::Stalled => "stalled",
            Outcome::DependencyFailed { .. } => "dependency_failed",
            Outcome::Cancelled => "cancelled",
            Outcome::FailedToStart { .. } => "failed_to_start",
            Outcome::StorageExhausted { .. } => "storage_exhausted",
            Outcome::Interrupted { .. } => "interrupted",
            Outcome::MemoryLimitExceeded { .. } => "memory_limit_exceeded",
            Outcome::MemoryPressure { .. } => "memory_pressure",
            Outcome::OomKilled { .. } => "oom_killed",
            Outcome::Quarantined { .. } => "quarantined",
        }
    }

    /// The exit code a CLI waiting on the job should exit with.
    pub fn cli_exit_code(&self) -> i32 {
        match self {
            Outcome::Succeeded => 0,
            Outcome::Failed { exit_code } => *exit_code,
            Outcome::Killed { signal } => 128 + signal,
            Outcome::TimedOut | Outcome::Stalled => 124,
            // EX_UNAVAILABLE: what it needed did not happen.
            Outcome::DependencyFailed { .. } => 69,
            Outcome::Cancelled => 130,
            Outcome::FailedToStart { .. } => 127,
            // EX_CANTCREAT.
            Outcome::StorageExhausted { .. } => 73,
            Outcome::Interrupted { .. } => 75,
            // EX_SOFTWARE: the job is suspected of bringing the daemon down.
            Outcome::Quarantined { .. } => 70,
            Outcome::MemoryLimitExceeded { .. }
            | Outcome::MemoryPressure { .. }
            | Outcome::OomKilled { .. } => 137,
        }
    }
}

/// Facts about a finished attempt.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Finished {
    /// How the attempt ended.
    pub outcome: Outcome,
    /// When it ended.
    pub finished_at: Timestamp,
    /// Absent when the attempt never started.
    pub run: Option<Run>,
    /// How the main process ended; absent when it never started or the daemon lost it.
    pub exit: Option<ExitStatus>,
    /// Signals sent by the stop sequence, in order (empty if the job ended by itself).
    #[serde(default)]
    pub signals_sent: Vec<StopSignal>,
    /// The attempt's resource use (empty when it never started or the daemon lost it).
    #[serde(default)]
    pub accounting: Accounting,
}

/// Where a job is in its life. Each state carries its own data.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum JobState {
    /// Waiting to start.
    Queued {
        /// When it entered the queue: its submit, its latest requeue or its release from hold.
        since: Timestamp,
    },
    /// Kept from starting by an operator (`aura hold`) until released (`aura release`).
    Held {
        /// When it was held.
        since: Timestamp,
    },
    /// Its process tree runs.
    Running {
        /// The running attempt.
        run: Run,
    },
    /// Its process tree is frozen by an operator (`aura pause`): it uses no CPU, keeps its memory, and
    /// the time counts neither toward its timeout nor toward stall detection.
    Paused {
        /// The paused attempt (its `paused_secs` does not include this pause yet).
        run: Run,
        /// When it was paused.
        since: Timestamp,
    },
    /// Its stop sequence is under way; it finishes when the tree is gone.
    Stopping {
        /// The attempt being stopped.
        run: Run,
        /// Why it is being stopped (the first reason, if asked more than once).
        reason: StopReason,
        /// When the stop was requested.
        requested_at: Timestamp,
    },
    /// Boxed: the finished record (outcome, accounting) is much larger than the live states.
    Finished(Box<Finished>),
}

/// The coarse state name, for filters, indexes and tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum StateName {
    /// See [`JobState::Queued`].
    Queued,
    /// See [`JobState::Held`].
    Held,
    /// See [`JobState::Running`].
    Running,
    /// See [`JobState::Paused`].
    Paused,
    /// See [`JobState::Stopping`].
    Stopping,
    /// See [`JobState::Finished`].
    Finished,
}

impl StateName {
    /// Every state, in the order a job goes through them.
    pub const ALL: [StateName; 6] = [
        StateName::Queued,
        StateName::Held,
        StateName::Running,
        StateName::Paused,
        StateName::Stopping,
        StateName::Finished,
    ];

    /// The name as stored, shown and accepted in filters (`queued`, `running`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            StateName::Queued => "queued",
            StateName::Held => "held",
            StateName::Running => "running",
            StateName::Paused => "paused",
            StateName::Stopping => "stopping",
            StateName::Finished => "finished",
        }
    }
}

impl std::str::FromStr for StateName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        StateName::ALL
            .into_iter()
            .find(|n| n.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown state {s:?} (use queued, held, running, paused, stopping or finished)"
                )
            })
    }
}

impl JobState {
    /// The coarse state name.
    pub fn name(&self) -> StateName {
        match self {
            JobState::Queued { .. } => StateName::Queued,
            JobState::Held { .. } => StateName::Held,
            JobState::Running { .. } => StateName::Running,
            JobState::Paused { .. } => StateName::Paused,
            JobState::Stopping { .. } => StateName::Stopping,
            JobState::Finished(_) => StateName::Finished,
        }
    }

    /// The attempt's run: while running or stopping, and after it finished if it started.
    pub fn run(&self) -> Option<&Run> {
        match self {
            JobState::Queued { .. } | JobState::Held { .. } => None,
            JobState::Running { run }
            | JobState::Paused { run, .. }
            | JobState::Stopping { run, .. } => Some(run),
            JobState::Finished(f) => f.run.as_ref(),
        }
    }
}

/// Everything that can happen to a job; the input of `Job::apply`.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// The launch succeeded: the tree runs.
    Started {
        /// The new attempt's run.
        run: Run,
    },
    /// The launch failed before the program ran.
    SpawnFailed {
        /// Why it failed.
        error: String,
        /// The data volume refused what the start needed (no space, over quota).
        storage: bool,
        /// When it failed.
        at: Timestamp,
    },
    /// The engine asks the job to stop (a queued job can only be cancelled, which finishes it).
    StopRequested {
        /// Why it should stop.
        reason: StopReason,
        /// When it was asked.
        at: Timestamp,
    },
    /// The tree is gone.
    Exited {
        /// How the main process ended.
        exit: ExitStatus,
        /// Signals the stop sequence sent, in order.
        signals_sent: Vec<StopSignal>,
        /// The attempt's resource use.
        accounting: Accounting,
        /// When the tree was found gone.
        at: Timestamp,
    },
    /// The daemon lost the job (crash or shutdown) while it ran.
    Interrupted {
        /// What happened.
        reason: String,
        /// When it was recorded (at recovery, for a crash).
        at: Timestamp,
    },
    /// Like `Interrupted`, but the job was running at too many unclean daemon deaths in a row: it ends
    /// for good.
    Quarantined {
        /// Why it is quarantined.
        reason: String,
        /// When it was recorded (at recovery).
        at: Timestamp,
    },
    /// A job it depends on ended without succeeding: a queued job finishes without starting.
    DependencyFailed {
        /// The dependency.
        job_id: JobId,
        /// How the dependency ended (its outcome name).
        outcome: String,
        /// When it was found.
        at: Timestamp,
    },
    /// Put a finished attempt back in the queue; allowed only when the retry policy says so.
    Requeue {
        /// When it was requeued.
        at: Timestamp,
    },
    /// The running tree was frozen.
    Paused {
        /// When it was frozen.
        at: Timestamp,
    },
    /// The paused tree was thawed.
    Resumed {
        /// When it was thawed.
        at: Timestamp,
    },
    /// A queued job is kept from starting.
    Held {
        /// When.
        at: Timestamp,
    },
    /// A held job goes back to the queue.
    Released {
        /// When.
        at: Timestamp,
    },
}

impl Event {
    /// The event's name, as transition errors show it (`started`, `requeued`, …).
    pub fn name(&self) -> &'static str {
        match self {
            Event::Started { .. } => "started",
            Event::SpawnFailed { .. } => "spawn_failed",
            Event::StopRequested { .. } => "stop_requested",
            Event::Exited { .. } => "exited",
            Event::Interrupted { .. } => "interrupted",
            Event::Quarantined { .. } => "quarantined",
            Event::DependencyFailed { .. } => "dependency_failed",
            Event::Requeue { .. } => "requeued",
            Event::Paused { .. } => "paused",
            Event::Resumed { .. } => "resumed",
            Event::Held { .. } => "held",
            Event::Released { .. } => "released",
        }
    }
}

/// An event that is not legal in the job's current state; the job is left unchanged.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("job {job}: cannot apply {event} while {state}{detail}")]
pub struct TransitionError {
    /// The job the event was for.
    pub job: JobId,
    /// The refused event's name ([`Event::name`]).
    pub event: &'static str,
    /// The job's state name at the time ([`StateName::as_str`]).
    pub state: &'static str,
    /// More on why, starting with `: `; empty when there is nothing to add.
    pub detail: &'static str,
}

/// A job as the store keeps it and the API shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Job {
    /// Its identity, assigned by the store at submit.
    pub id: JobId,
    /// What was submitted.
    pub spec: JobSpec,
    /// When it was submitted.
    pub submitted_at: Timestamp,
    /// 1 for the first attempt; incremented by each requeue.
    pub attempt: u32,
    /// Failed attempts so far that count against `retry.max_retries` (interruptions do not).
    pub failures: u32,
    /// Attempts stopped by the memory pressure responder (bounded by `retry.max_pressure_requeues`).
    #[serde(default)]
    pub pressure_stops: u32,
    /// Unclean daemon deaths (crash, kill) in a row while an attempt of this job ran; reset when an
    /// attempt ends under a live daemon. Recovery quarantines the job at a threshold.
    #[serde(default, skip_serializing_if = "crate::is_zero_u32")]
    pub interruptions: u32,
    /// The memory admission reserves for it, and where the figure came from (absent on records written
    /// before admission existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_request: Option<crate::MemoryRequest>,
    /// The name of the API token that submitted it (absent for jobs submitted before authentication
    /// existed). A `submit` token may cancel only its own jobs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submitted_by: Option<String>,
    /// The job this one re-runs (`aura retry`): the same spec, submitted again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_of: Option<JobId>,
    /// The latest job that re-runs this one (`aura retry`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retried_as: Option<JobId>,
    /// The fleet node that holds it (claimed it, runs it, or ran it last): PostgreSQL store only; absent
    /// on a single node and while no node has claimed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Flattened, so a record reads `{"id": 7, "state": "finished", "outcome": {...}, "accounting": {...}}`.
    #[serde(flatten)]
    pub state: JobState,
}

impl Job {
    /// A job just submitted: first attempt, queued since `submitted_at`.
    pub fn new(id: JobId, spec: JobSpec, submitted_at: Timestamp) -> Self {
        Job {
            id,
            spec,
            submitted_at,
            attempt: 1,
            failures: 0,
            pressure_stops: 0,
            interruptions: 0,
            memory_request: None,
            submitted_by: None,
            retry_of: None,
            retried_as: None,
            node: None,
            state: JobState::Queued {
                since: submitted_at,
            },
        }
    }

    /// How the latest attempt ended; `None` until it has.
    pub fn outcome(&self) -> Option<&Outcome> {
        match &self.state {
            JobState::Finished(f) => Some(&f.outcome),
            _ => None,
        }
    }

    /// Whether the retry policy allows another attempt after the current (finished) one.
    pub fn may_retry(&self) -> bool {
        match self.outcome() {
            None
            | Some(
                Outcome::Succeeded
                | Outcome::Cancelled
                | Outcome::Quarantined { .. }
                | Outcome::DependencyFailed { .. },
            ) => false,
            Some(Outcome::Interrupted { .. }) => self.spec.retry.requeue_interrupted,
            Some(Outcome::MemoryPressure { .. }) => {
                self.pressure_stops <= self.spec.retry.max_pressure_requeues
            }
            Some(_) => self.failures <= self.spec.retry.max_retries,
        }
    }

    /// Applies one event. Every legal transition of a job is in this function; anything else is an error
    /// and leaves the job unchanged.
    pub fn apply(&mut self, event: Event) -> Result<(), TransitionError> {
        let illegal = |job: &Job, detail| TransitionError {
            job: job.id,
            event: event.name(),
            state: job.state.name().as_str(),
            detail,
        };
        let next = match (&self.state, &event) {
            (JobState::Queued { .. }, Event::Started { run }) => {
                JobState::Running { run: run.clone() }
            }
            (JobState::Queued { .. }, Event::SpawnFailed { error, storage, at }) => {
                let error = error.clone();
                JobState::Finished(Box::new(Finished {
                    outcome: if *storage {
                        Outcome::StorageExhausted { error }
                    } else {
                        Outcome::FailedToStart { error }
                    },
                    finished_at: *at,
                    run: None,
                    exit: None,
                    signals_sent: vec![],
                    accounting: Accounting::default(),
                }))
            }
            (JobState::Queued { .. }, Event::Held { at }) => JobState::Held { since: *at },
            (JobState::Held { .. }, Event::Released { at }) => JobState::Queued { since: *at },
            (
                JobState::Queued { .. } | JobState::Held { .. },
                Event::StopRequested {
                    reason: StopReason::Cancelled | StopReason::Killed,
                    at,
                },
            ) => JobState::Finished(Box::new(Finished {
                outcome: Outcome::Cancelled,
                finished_at: *at,
                run: None,
                exit: None,
                signals_sent: vec![],
                accounting: Accounting::default(),
            })),
            (
                JobState::Queued { .. } | JobState::Held { .. },
                Event::DependencyFailed {
                    job_id,
                    outcome,
                    at,
                },
            ) => JobState::Finished(Box::new(Finished {
                outcome: Outcome::DependencyFailed {
                    job_id: *job_id,
                    outcome: outcome.clone(),
                },
                finished_at: *at,
                run: None,
                exit: None,
                signals_sent: vec![],
                accounting: Accounting::default(),
            })),
            (JobState::Running { run }, Event::Paused { at }) => JobState::Paused {
                run: run.clone(),
                since: *at,
            },
            (JobState::Paused { run, since }, Event::Resumed { at }) => JobState::Running {
                run: run.after_pause(*since, *at),
            },
            (JobState::Running { run }, Event::StopRequested { reason, at }) => {
                JobState::Stopping {
                    run: run.clone(),
                    reason: *reason,
                    requested_at: *at,
                }
            }
            // A paused tree is thawed for its stop sequence: the pause ends with the request.
            (JobState::Paused { run, since }, Event::StopRequested { reason, at }) => {
                JobState::Stopping {
                    run: run.after_pause(*since, *at),
                    reason: *reason,
                    requested_at: *at,
                }
            }
            // A second stop request keeps the first reason: a job that timed out stays timed out.
            (JobState::Stopping { .. }, Event::StopRequested { .. }) => return Ok(()),
            (
                JobState::Running { .. } | JobState::Paused { .. },
                Event::Exited {
                    exit,
                    signals_sent,
                    accounting,
                    at,
                },
            ) => JobState::Finished(Box::new(Finished {
                outcome: memory_outcome(*exit, accounting)
                    .unwrap_or_else(|| outcome_of_exit(*exit)),
                finished_at: *at,
                run: self.ended_run(*at),
                exit: Some(*exit),
                signals_sent: signals_sent.clone(),
                accounting: accounting.clone(),
            })),
            (
                JobState::Stopping { run, reason, .. },
                Event::Exited {
                    exit,
                    signals_sent,
                    accounting,
                    at,
                },
            ) => {
                // How the tree really died comes first: a job that hit its limit while being cancelled
                // hit its limit.
                let outcome = memory_outcome(*exit, accounting).unwrap_or_else(|| match reason {
                    StopReason::Cancelled | StopReason::Killed => Outcome::Cancelled,
                    StopReason::TimedOut => Outcome::TimedOut,
                    StopReason::Stalled => Outcome::Stalled,
                    StopReason::Shutdown => Outcome::Interrupted {
                        reason: "daemon shutdown".into(),
                    },
                    StopReason::MemoryPressure => Outcome::MemoryPressure {
                        detail: "stopped by the memory pressure responder to protect the host"
                            .into(),
                    },
                });
                JobState::Finished(Box::new(Finished {
                    outcome,
                    finished_at: *at,
                    run: Some(run.clone()),
                    exit: Some(*exit),
                    signals_sent: signals_sent.clone(),
                    accounting: accounting.clone(),
                }))
            }
            (
                JobState::Running { .. } | JobState::Paused { .. } | JobState::Stopping { .. },
                Event::Interrupted { reason, at } | Event::Quarantined { reason, at },
            ) => {
                let reason = reason.clone();
                let outcome = if matches!(event, Event::Quarantined { .. }) {
                    Outcome::Quarantined {
                        reason,
                        interruptions: self.interruptions.saturating_add(1),
                    }
                } else {
                    Outcome::Interrupted { reason }
                };
                JobState::Finished(Box::new(Finished {
                    outcome,
                    finished_at: *at,
                    run: self.ended_run(*at),
                    exit: None,
                    signals_sent: vec![],
                    accounting: Accounting::default(),
                }))
            }
            (JobState::Finished(_), Event::Requeue { at }) => {
                if !self.may_retry() {
                    return Err(illegal(
                        self,
                        ": the retry policy allows no further attempt",
                    ));
                }
                self.attempt += 1;
                JobState::Queued { since: *at }
            }
            _ => return Err(illegal(self, "")),
        };
        match &event {
            Event::Interrupted { .. } | Event::Quarantined { .. } => {
                self.interruptions = self.interruptions.saturating_add(1);
            }
            Event::Exited { .. } => self.interruptions = 0,
            _ => {}
        }
        if let JobState::Finished(f) = &next {
            if f.outcome.counts_as_failure() {
                self.failures += 1;
            }
            if matches!(f.outcome, Outcome::MemoryPressure { .. }) {
                self.pressure_stops += 1;
            }
        }
        self.state = next;
        Ok(())
    }
}

impl Job {
    /// The run of an attempt that ends at `at`, a pause it was in included in its paused time.
    fn ended_run(&self, at: Timestamp) -> Option<Run> {
        match &self.state {
            JobState::Paused { run, since } => Some(run.after_pause(*since, at)),
            state => state.run().cloned(),
        }
    }
}

/// The outcome the memory counters decide, if they decide one: over the hard limit, or hit by the
/// kernel's OOM killer (unless the main process still succeeded, e.g. a wrapper that survived a child).
fn memory_outcome(exit: ExitStatus, accounting: &Accounting) -> Option<Outcome> {
    // Only the supervisor sets `memory_limit_exceeded`, always with the limit it enforced.
    if let (true, Some(limit)) = (accounting.memory_limit_exceeded, accounting.memory_limit) {
        return Some(Outcome::MemoryLimitExceeded {
            limit_bytes: limit.bytes(),
            peak_bytes: accounting.memory_peak.map(|p| p.bytes()),
        });
    }
    (accounting.oom_kills > 0 && exit != ExitStatus::Code(0)).then_some(Outcome::OomKilled {
        kills: accounting.oom_kills,
    })
}

fn outcome_of_exit(exit: ExitStatus) -> Outcome {
    match exit {
        ExitStatus::Code(0) => Outcome::Succeeded,
        ExitStatus::Code(exit_code) => Outcome::Failed { exit_code },
        ExitStatus::Signal(signal) => Outcome::Killed { signal },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Backend, JobSpec, RetryPolicy};

    const T: Timestamp = Timestamp::from_unix_millis_const(1_000);

    fn run() -> Run {
        Run {
            started_at: T,
            tree: TreeHandle {
                backend: Backend::Hybrid,
                pid: 42,
                start_ticks: 7,
                cgroups: vec![],
            },
            cwd: "/tmp".into(),
            paused_secs: 0.0,
        }
    }

    fn exited(code: i32) -> Event {
        Event::Exited {
            exit: ExitStatus::Code(code),
            signals_sent: vec![],
            accounting: Accounting::default(),
            at: T,
        }
    }

    fn stop(reason: StopReason) -> Event {
        Event::StopRequested { reason, at: T }
    }

    fn job_in(state: StateName, retry: RetryPolicy) -> Job {
        let mut spec = JobSpec::new("true", Vec::<String>::new());
        spec.retry = retry;
        let mut job = Job::new(JobId(1), spec, T);
        match state {
            StateName::Queued => {}
            StateName::Held => job.apply(Event::Held { at: T }).unwrap(),
            StateName::Running => job.apply(Event::Started { run: run() }).unwrap(),
            StateName::Paused => {
                job.apply(Event::Started { run: run() }).unwrap();
                job.apply(Event::Paused { at: T }).unwrap();
            }
            StateName::Stopping => {
                job.apply(Event::Started { run: run() }).unwrap();
                job.apply(stop(StopReason::Cancelled)).unwrap();
            }
            StateName::Finished => {
                job.apply(Event::Started { run: run() }).unwrap();
                job.apply(exited(1)).unwrap();
            }
        }
        job
    }

    /// Every (state, event) pair: the resulting state name or outcome, or `Err` for an illegal one.
    #[test]
    fn transition_table() {
        use StateName::*;
        let no_retry = RetryPolicy {
            max_retries: 0,
            requeue_interrupted: true,
            ..RetryPolicy::default()
        };
        let one_retry = RetryPolicy {
            max_retries: 1,
            requeue_interrupted: false,
            ..RetryPolicy::default()
        };
        let interrupted = || Event::Interrupted {
            reason: "daemon died".into(),
            at: T,
        };
        let dependency_failed = || Event::DependencyFailed {
            job_id: JobId(7),
            outcome: "failed".into(),
            at: T,
        };
        let cases: Vec<(StateName, RetryPolicy, Event, Result<&str, ()>)> = vec![
            (
                Queued,
                no_retry,
                Event::Started { run: run() },
                Ok("running"),
            ),
            (
                Queued,
                no_retry,
                Event::SpawnFailed {
                    error: "ENOENT".into(),
                    storage: false,
                    at: T,
                },
                Ok("failed_to_start"),
            ),
            (
                Queued,
                no_retry,
                Event::SpawnFailed {
                    error: "ENOSPC".into(),
                    storage: true,
                    at: T,
                },
                Ok("storage_exhausted"),
            ),
            (
                Queued,
                no_retry,
                stop(StopReason::Cancelled),
                Ok("cancelled"),
            ),
            (Queued, no_retry, stop(StopReason::TimedOut), Err(())),
            (Queued, no_retry, stop(StopReason::Stalled), Err(())),
            (
                Queued,
                one_retry,
                dependency_failed(),
                Ok("dependency_failed"),
            ),
            (Running, no_retry, dependency_failed(), Err(())),
            (Stopping, no_retry, dependency_failed(), Err(())),
            (Finished, one_retry, dependency_failed(), Err(())),
            (Running, no_retry, stop(StopReason::Stalled), Ok("stopping")),
            (Queued, no_retry, exited(0), Err(())),
            (Queued, no_retry, interrupted(), Err(())),
            (Queued, no_retry, Event::Requeue { at: T }, Err(())),
            (Running, no_retry, exited(0), Ok("succeeded")),
            (Running, no_retry, exited(3), Ok("failed")),
            (
                Running,
                no_retry,
                Event::Exited {
                    exit: ExitStatus::Signal(9),
                    signals_sent: vec![],
                    accounting: Accounting::default(),
                    at: T,
                },
                Ok("killed"),
            ),
            (
                Running,
                no_retry,
                stop(StopReason::TimedOut),
                Ok("stopping"),
            ),
            (Running, no_retry, interrupted(), Ok("interrupted")),
            (Running, no_retry, Event::Started { run: run() }, Err(())),
            (Running, no_retry, Event::Requeue { at: T }, Err(())),
            (Stopping, no_retry, exited(0), Ok("cancelled")),
            (
                Stopping,
                no_retry,
                stop(StopReason::TimedOut),
                Ok("stopping"),
            ),
            (Stopping, no_retry, interrupted(), Ok("interrupted")),
            (Stopping, no_retry, Event::Started { run: run() }, Err(())),
            (Finished, no_retry, Event::Requeue { at: T }, Err(())),
            (Finished, one_retry, Event::Requeue { at: T }, Ok("queued")),
            (Finished, one_retry, exited(0), Err(())),
            (Finished, one_retry, stop(StopReason::Cancelled), Err(())),
            // Hold and release: a held job never starts, and leaves only by release, cancel or a
            // failed dependency.
            (Queued, no_retry, Event::Held { at: T }, Ok("held")),
            (Held, no_retry, Event::Released { at: T }, Ok("queued")),
            (Held, no_retry, Event::Started { run: run() }, Err(())),
            (Held, no_retry, Event::Held { at: T }, Err(())),
            (Held, no_retry, stop(StopReason::Cancelled), Ok("cancelled")),
            (Held, no_retry, stop(StopReason::Killed), Ok("cancelled")),
            (Held, no_retry, stop(StopReason::TimedOut), Err(())),
            (
                Held,
                one_retry,
                dependency_failed(),
                Ok("dependency_failed"),
            ),
            (Held, no_retry, Event::Paused { at: T }, Err(())),
            (Queued, no_retry, Event::Released { at: T }, Err(())),
            (Running, no_retry, Event::Held { at: T }, Err(())),
            (Finished, one_retry, Event::Held { at: T }, Err(())),
            // Pause and resume: only a running tree pauses; a paused one resumes, stops or ends.
            (Running, no_retry, Event::Paused { at: T }, Ok("paused")),
            (Paused, no_retry, Event::Resumed { at: T }, Ok("running")),
            (Paused, no_retry, Event::Paused { at: T }, Err(())),
            (Running, no_retry, Event::Resumed { at: T }, Err(())),
            (Queued, no_retry, Event::Paused { at: T }, Err(())),
            (Stopping, no_retry, Event::Paused { at: T }, Err(())),
            (Stopping, no_retry, Event::Resumed { at: T }, Err(())),
            (Finished, no_retry, Event::Paused { at: T }, Err(())),
            (
                Paused,
                no_retry,
                stop(StopReason::Cancelled),
                Ok("stopping"),
            ),
            (Paused, no_retry, stop(StopReason::Killed), Ok("stopping")),
            (Paused, no_retry, exited(0), Ok("succeeded")),
            (Paused, no_retry, exited(2), Ok("failed")),
            (Paused, no_retry, interrupted(), Ok("interrupted")),
            (Paused, no_retry, Event::Started { run: run() }, Err(())),
            (Paused, no_retry, Event::Requeue { at: T }, Err(())),
            (Paused, no_retry, Event::Held { at: T }, Err(())),
            (Running, no_retry, stop(StopReason::Killed), Ok("stopping")),
        ];
        for (from, retry, event, expected) in cases {
            let mut job = job_in(from, retry);
            let before = job.clone();
            let label = format!("{from:?} + {}", event.name());
            let got = job.apply(event).map(|()| match job.outcome() {
                Some(o) => o.name(),
                None => job.state.name().as_str(),
            });
            match expected {
                Ok(name) => assert_eq!(got, Ok(name), "{label}"),
                Err(()) => {
                    assert!(got.is_err(), "{label} should be illegal, got {got:?}");
                    assert_eq!(job, before, "{label}: an illegal event must change nothing");
                }
            }
        }
    }

    #[test]
    fn stop_reason_decides_the_outcome() {
        for (reason, expected) in [
            (StopReason::Cancelled, "cancelled"),
            (StopReason::TimedOut, "timed_out"),
            (StopReason::Shutdown, "interrupted"),
            (StopReason::Stalled, "stalled"),
            (StopReason::Killed, "cancelled"),
        ] {
            let mut job = job_in(StateName::Running, RetryPolicy::default());
            job.apply(stop(reason)).unwrap();
            job.apply(exited(255)).unwrap();
            assert_eq!(job.outcome().map(Outcome::name), Some(expected));
        }
    }

    #[test]
    fn a_run_never_paused_says_nothing_of_pauses() {
        let json = serde_json::to_value(run()).expect("serializes");
        assert!(json.get("paused_secs").is_none(), "{json}");
        let paused = Run {
            paused_secs: 1.5,
            ..run()
        };
        let json = serde_json::to_value(paused).expect("serializes");
        assert_eq!(json["paused_secs"], 1.5);
    }

    #[test]
    fn paused_time_accumulates_in_the_run() {
        let at = Timestamp::from_unix_millis;
        let mut job = job_in(StateName::Running, RetryPolicy::default());
        job.apply(Event::Paused { at: at(2_000) }).unwrap();
        job.apply(Event::Resumed { at: at(12_000) }).unwrap();
        job.apply(Event::Paused { at: at(20_000) }).unwrap();
        job.apply(Event::Resumed { at: at(20_500) }).unwrap();
        assert_eq!(job.state.run().map(|r| r.paused_secs), Some(10.5));
        // A job that ends (or is stopped) while paused counts that pause too.
        job.apply(Event::Paused { at: at(30_000) }).unwrap();
        job.apply(stop(StopReason::Cancelled)).unwrap();
        assert_eq!(job.state.run().map(|r| r.paused_secs), Some(10.5));
        let mut ended = job_in(StateName::Running, RetryPolicy::default());
        ended.apply(Event::Paused { at: at(1_000) }).unwrap();
        ended
            .apply(Event::Exited {
                exit: ExitStatus::Code(0),
                signals_sent: vec![],
                accounting: Accounting::default(),
                at: at(4_000),
            })
            .unwrap();
        assert_eq!(ended.state.run().map(|r| r.paused_secs), Some(3.0));
        assert_eq!(ended.outcome(), Some(&Outcome::Succeeded));
    }

    #[test]
    fn a_failed_dependency_ends_a_queued_job_for_good() {
        let retry = RetryPolicy {
            max_retries: 3,
            ..RetryPolicy::default()
        };
        let mut job = job_in(StateName::Queued, retry);
        job.apply(Event::DependencyFailed {
            job_id: JobId(7),
            outcome: "cancelled".into(),
            at: T,
        })
        .unwrap();
        assert_eq!(
            job.outcome(),
            Some(&Outcome::DependencyFailed {
                job_id: JobId(7),
                outcome: "cancelled".into()
            })
        );
        assert!(
            !job.may_retry(),
            "waiting again for a failed dependency is in vain"
        );
        assert!(job.state.run().is_none());
        assert_eq!(job.outcome().map(Outcome::cli_exit_code), Some(69));
    }

    fn exited_with(exit: ExitStatus, accounting: Accounting) -> Event {
        Event::Exited {
            exit,
            signals_sent: vec![],
            accounting,
            at: T,
        }
    }

    #[test]
    fn memory_counters_decide_the_outcome() {
        use crate::ByteSize;
        let over = Accounting {
            memory_limit: Some(ByteSize(200 << 20)),
            memory_peak: Some(ByteSize(201 << 20)),
            memory_limit_exceeded: true,
            oom_kills: 1,
            ..Accounting::default()
        };
        let oom = Accounting {
            oom_kills: 2,
            ..Accounting::default()
        };
        // (stop reason before the exit, exit, accounting) → outcome
        let cases = [
            (
                None,
                ExitStatus::Signal(9),
                over.clone(),
                "memory_limit_exceeded",
            ),
            (
                Some(StopReason::Cancelled),
                ExitStatus::Signal(9),
                over.clone(),
                "memory_limit_exceeded",
            ),
            (None, ExitStatus::Signal(9), oom.clone(), "oom_killed"),
            (None, ExitStatus::Code(1), oom.clone(), "oom_killed"),
            // A wrapper whose child was OOM-killed but which still succeeded succeeded.
            (None, ExitStatus::Code(0), oom.clone(), "succeeded"),
            (
                Some(StopReason::MemoryPressure),
                ExitStatus::Signal(2),
                Accounting::default(),
                "memory_pressure",
            ),
        ];
        for (reason, exit, accounting, expected) in cases {
            let mut job = job_in(StateName::Running, RetryPolicy::default());
            if let Some(r) = reason {
                job.apply(stop(r)).unwrap();
            }
            job.apply(exited_with(exit, accounting)).unwrap();
            assert_eq!(
                job.outcome().map(Outcome::name),
                Some(expected),
                "{reason:?} {exit:?}"
            );
        }
        let mut job = job_in(StateName::Running, RetryPolicy::default());
        job.apply(exited_with(ExitStatus::Signal(9), over)).unwrap();
        assert_eq!(
            job.outcome(),
            Some(&Outcome::MemoryLimitExceeded {
                limit_bytes: 200 << 20,
                peak_bytes: Some(201 << 20)
            })
        );
        assert_eq!(job.failures, 1, "going over the limit is the job's failure");
        assert!(!job.may_retry());
    }

    #[test]
    fn pressure_stops_requeue_within_their_own_budget() {
        let mut job = job_in(
            StateName::Running,
            RetryPolicy {
                max_retries: 0,
                requeue_interrupted: false,
                max_pressure_requeues: 2,
            },
        );
        for round in 1..=3 {
            job.apply(stop(StopReason::MemoryPressure)).unwrap();
            job.apply(exited(130)).unwrap();
            assert_eq!(job.outcome().map(Outcome::name), Some("memory_pressure"));
            assert_eq!((job.pressure_stops, job.failures), (round, 0));
            if round < 3 {
                job.apply(Event::Requeue { at: T }).unwrap();
                job.apply(Event::Started { run: run() }).unwrap();
            }
        }
        assert!(
            job.apply(Event::Requeue { at: T }).is_err(),
            "a third pressure stop exceeds max_pressure_requeues = 2"
        );
    }

    #[test]
    fn retries_are_counted_and_bounded() {
        let mut job = job_in(
            StateName::Finished,
            RetryPolicy {
                max_retries: 2,
                requeue_interrupted: false,
                ..RetryPolicy::default()
            },
        );
        for attempt in 2..=3 {
            job.apply(Event::Requeue { at: T }).unwrap();
            assert_eq!(job.attempt, attempt);
            job.apply(Event::Started { run: run() }).unwrap();
            job.apply(exited(1)).unwrap();
        }
        assert_eq!(job.failures, 3);
        assert!(job.apply(Event::Requeue { at: T }).is_err());
    }

    #[test]
    fn interruptions_requeue_without_using_retries() {
        let mut job = job_in(
            StateName::Running,
            RetryPolicy {
                max_retries: 0,
                requeue_interrupted: true,
                ..RetryPolicy::default()
            },
        );
        job.apply(Event::Interrupted {
            reason: "daemon died".into(),
            at: T,
        })
        .unwrap();
        assert!(job.may_retry());
        job.apply(Event::Requeue { at: T }).unwrap();
        assert_eq!((job.attempt, job.failures), (2, 0));

        let mut no = job_in(
            StateName::Running,
            RetryPolicy {
                max_retries: 5,
                requeue_interrupted: false,
                ..RetryPolicy::default()
            },
        );
        no.apply(Event::Interrupted {
            reason: "daemon died".into(),
            at: T,
        })
        .unwrap();
        assert!(no.apply(Event::Requeue { at: T }).is_err());
    }

    #[test]
    fn unclean_deaths_in_a_row_count_until_an_attempt_ends_and_quarantine_is_final() {
        let mut job = job_in(
            StateName::Running,
            RetryPolicy {
                max_retries: 3,
                requeue_interrupted: true,
                ..RetryPolicy::default()
            },
        );
        let died = || Event::Interrupted {
            reason: "daemon died".into(),
            at: T,
        };
        job.apply(died()).unwrap();
        job.apply(Event::Requeue { at: T }).unwrap();
        job.apply(Event::Started { run: run() }).unwrap();
        assert_eq!(job.interruptions, 1);
        // An attempt that ends under a live daemon clears the count.
        job.apply(exited(1)).unwrap();
        assert_eq!(job.interruptions, 0);
        job.apply(Event::Requeue { at: T }).unwrap();
        job.apply(Event::Started { run: run() }).unwrap();
        job.apply(died()).unwrap();
        job.apply(Event::Requeue { at: T }).unwrap();
        job.apply(Event::Started { run: run() }).unwrap();
        job.apply(Event::Quarantined {
            reason: "running at 2 unclean daemon deaths in a row".into(),
            at: T,
        })
        .unwrap();
        assert_eq!(
            job.outcome(),
            Some(&Outcome::Quarantined {
                reason: "running at 2 unclean daemon deaths in a row".into(),
                interruptions: 2
            })
        );
        assert_eq!(job.interruptions, 2);
        assert!(
            !job.may_retry(),
            "quarantine is final whatever the retry policy"
        );
        assert!(job.apply(Event::Requeue { at: T }).is_err());
        // Only a live attempt can be quarantined.
        let mut queued = job_in(StateName::Queued, RetryPolicy::default());
        assert!(queued
            .apply(Event::Quarantined {
                reason: "x".into(),
                at: T
            })
            .is_err());
    }

    #[test]
    fn job_json_round_trips() {
        let job = job_in(StateName::Finished, RetryPolicy::default());
        let json = serde_json::to_string(&job).unwrap();
        assert_eq!(serde_json::from_str::<Job>(&json).unwrap(), job);
    }
}

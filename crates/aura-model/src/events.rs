//! The typed event logs: what happened to a job (`JobEvent`) and what the engine decided about the host
//! (`EngineEvent`), each a serde-tagged enum — on the wire and in the store `{"kind": "...", "detail":
//! {...}}` — versioned by [`EVENT_SCHEMA`]. Every producer builds these types; nothing writes an event by
//! hand.

use crate::{
    Accounting, Backend, ByteSize, ExitStatus, HostReading, JobId, Outcome, StopReason, StopSignal,
    Timestamp,
};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The version of the event schema below. A change that renames or removes a field, or changes what a
/// field means, raises it; new kinds and new optional fields do not.
pub const EVENT_SCHEMA: u32 = 1;

/// Who enforces a job's memory limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum LimitEnforcer {
    /// The job cgroup's `memory.max` / `memory.limit_in_bytes`: the job cannot go over it.
    Kernel,
    /// The no-cgroup fallback: the watcher kills the tree once its summed RSS is over the limit, so the
    /// peak may overshoot by what the job allocates in one watch interval.
    Watchdog,
}

/// A running job as the memory pressure responder ranks it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Candidate {
    /// The running job.
    pub id: JobId,
    /// Its spec's priority (higher runs first); the lowest is stopped first.
    pub priority: i32,
    /// When it started (ms since the epoch).
    pub started_at_ms: i64,
    /// Its tree's memory as last sampled.
    pub memory_bytes: Option<u64>,
    /// What admission reserved for it.
    pub reserved_bytes: u64,
}

impl Candidate {
    /// How far its memory is over its reservation.
    pub fn excess_bytes(&self) -> u64 {
        self.memory_bytes
            .unwrap_or(0)
            .saturating_sub(self.reserved_bytes)
    }
}

/// What a crash recovery killed and removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RecoveryReport {
    /// Processes left by the dead daemon's jobs that were killed.
    pub killed_processes: u32,
    /// Leftover job cgroups that were removed.
    pub removed_cgroups: u32,
}

/// The memory pressure responder's choice, with the figures behind it (in the engine's log and the
/// victim's).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct VictimChosen {
    /// The job chosen to be stopped.
    pub job_id: JobId,
    /// Why memory is critical, with the figure and the thresholds crossed.
    pub reason: String,
    /// The host as the guards read it when the choice was made.
    pub reading: HostReading,
    /// The victim's figures as they were ranked.
    pub victim: Candidate,
    /// Bytes of memory the victim used beyond its reservation (0 if within it).
    pub excess_bytes: u64,
    /// How many running jobs were ranked.
    pub candidates: usize,
    /// The ranking rule applied, in words.
    pub ranking: String,
    /// Seconds before the responder may choose another victim (`victim_cooldown`).
    pub cooldown_secs: f64,
    /// SIGKILL at once (the emergency stage) rather than the job's stop sequence.
    pub killed_at_once: bool,
}

/// Why a job's attempt ended without its own exit: the daemon died under it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Interruption {
    /// What happened, e.g. "daemon died while the job ran", or why the job is quarantined.
    pub reason: String,
    /// Unclean daemon deaths in a row under this job (recovery only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interruptions: Option<u32>,
    /// What recovery killed (recovery only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery: Option<RecoveryReport>,
}

/// One entry of a job's event log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "kind", content = "detail", rename_all = "snake_case")]
pub enum JobEvent {
    /// The job was accepted and stored, queued for its first attempt.
    Submitted {
        /// The program it runs.
        program: String,
        /// Its priority (higher runs first).
        priority: i32,
        /// The job it re-runs (`aura retry`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_of: Option<JobId>,
    },
    /// The attempt's process tree was launched and its main process runs.
    Started {
        /// The main process's PID (also its process group id).
        pid: u32,
        /// The process-tree backend it runs under.
        backend: Backend,
        /// The job's cgroup directories (empty for the process-group backend).
        #[cfg_attr(feature = "openapi", schema(value_type = Vec<String>))]
        cgroups: Vec<PathBuf>,
        /// The working directory the attempt runs in.
        #[cfg_attr(feature = "openapi", schema(value_type = String))]
        cwd: PathBuf,
    },
    /// The launch failed before the program ran.
    SpawnFailed {
        /// Why the launch failed.
        error: String,
        /// The data volume refused what the start needed.
        storage_exhausted: bool,
    },
    /// The engine began the job's stop sequence (or cancelled it while queued).
    StopRequested {
        /// Why it is being stopped.
        reason: StopReason,
    },
    /// The tree went over its hard memory limit and is being killed.
    MemoryLimitExceeded {
        /// The hard limit, in bytes.
        limit_bytes: u64,
        /// The tree's memory in bytes when the violation was seen, if it could be read.
        current_bytes: Option<u64>,
        /// Whether the kernel or Aura's watchdog caught it.
        enforced_by: LimitEnforcer,
        /// What Aura does about it, in words.
        action: String,
    },
    /// The kernel's OOM killer hit the tree (the host ran out of memory).
    OomKilled {
        /// Processes of the tree the OOM killer killed.
        kills: u64,
        /// What Aura does about it, in words.
        action: String,
    },
    /// The memory pressure responder chose this job to stop, to protect the host.
    PressureVictim(VictimChosen),
    /// The tree is gone: the main process's status, the signals sent, the figures.
    Exited {
        /// How the main process ended.
        exit: ExitStatus,
        /// Signals the stop sequence sent, in order (empty if the job ended by itself).
        signals_sent: Vec<StopSignal>,
        /// The attempt's resource use.
        accounting: Accounting,
        /// The documents' `Start=…MB, Peak=…MB, End=…MB, Delta=…MB` line.
        memory: String,
    },
    /// The attempt is over and its outcome recorded; a requeue may follow.
    Finished {
        /// How the attempt ended.
        outcome: Option<Outcome>,
    },
    /// The job's progress stopped advancing (or stayed under its speed floor) for its stall window: it is
    /// being stopped.
    Stalled {
        /// What was seen, with the figures.
        reason: String,
    },
    /// The job waits for the jobs it depends on (`after`) before it may start.
    Waiting {
        /// The dependencies not finished yet.
        after: Vec<JobId>,
    },
    /// A dependency ended without succeeding: the job ends without starting.
    DependencyFailed {
        /// The dependency.
        job_id: JobId,
        /// How it ended.
        outcome: String,
    },
    /// Every dependency succeeded: the job joins the queue.
    DependenciesMet,
    /// A victim of memory pressure comes back asking for more.
    MemoryRequestRaised {
        /// The new memory request admission reserves for the next attempt.
        memory_request: ByteSize,
        /// Why it was raised.
        reason: String,
    },
    /// The job went back to the queue for another attempt, per its retry policy.
    Requeued {
        /// The number of the new attempt (1 is the first).
        attempt: u32,
    },
    /// An operator froze the running tree (`aura pause`).
    Paused {
        /// The API token that asked.
        by: Option<String>,
        /// From the request to a tree frozen, in milliseconds.
        took_ms: f64,
    },
    /// An operator thawed the paused tree (`aura resume`).
    Resumed {
        /// The API token that asked.
        by: Option<String>,
        /// How long this pause lasted, in seconds.
        paused_secs: f64,
    },
    /// An operator kept the queued job from starting (`aura hold`).
    Held {
        /// The API token that asked.
        by: Option<String>,
    },
    /// An operator let the held job start again (`aura release`).
    Released {
        /// The API token that asked.
        by: Option<String>,
    },
    /// An operator moved the waiting job in the queue (`aura priority`).
    PriorityChanged {
        /// Its priority before.
        from: i32,
        /// Its priority now.
        to: i32,
        /// The API token that asked.
        by: Option<String>,
    },
    /// An operator re-ran the job's spec as a new job (`aura retry`).
    Retried {
        /// The new job.
        job_id: JobId,
        /// The API token that asked.
        by: Option<String>,
    },
    /// The daemon died (or its job monitor failed) while the attempt ran.
    Interrupted(Interruption),
    /// Like `Interrupted`, but the job ran at too many unclean daemon deaths in a row: it is not run again.
    Quarantined(Interruption),
    /// A stored event of a kind (or shape) this version does not know — from another version of Aura —
    /// kept as it was written.
    Unrecognized {
        /// The stored kind.
        kind: String,
        /// The stored detail, as JSON.
        detail: serde_json::Value,
    },
}

/// What an operator can do to one job; the names are the CLI's commands and the API's actions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum JobAction {
    /// Freeze a running job's tree.
    Pause,
    /// Thaw a paused job's tree.
    Resume,
    /// Keep a queued job from starting.
    Hold,
    /// Let a held job start again.
    Release,
    /// Submit a finished job's spec again, as a new job.
    Retry,
    /// Change a waiting job's priority.
    Priority,
    /// Stop a job with SIGKILL to its whole tree, no grace period.
    Kill,
    /// Cancel a job (its stop sequence, if it runs).
    Cancel,
}

impl JobAction {
    /// The name, as the CLI and the API spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            JobAction::Pause => "pause",
            JobAction::Resume => "resume",
            JobAction::Hold => "hold",
            JobAction::Release => "release",
            JobAction::Retry => "retry",
            JobAction::Priority => "priority",
            JobAction::Kill => "kill",
            JobAction::Cancel => "cancel",
        }
    }
}

/// A figure the warning watcher watches: a fixed set, so that it can label a metric
/// (`aura_warning_active{warning}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum WarningKind {
    /// The daemon's open file descriptors beyond what running jobs hold by design (`[diagnostics]`).
    OpenFds,
    /// The daemon's resident memory, bytes.
    RssBytes,
    /// The daemon's threads beyond one per running job.
    Threads,
    /// The daemon's child processes beyond running jobs' main processes.
    ExtraChildren,
    /// The host's CPU busy share, sustained over the warning window.
    HostCpu,
    /// The host's memory in use (total less available), as a share, sustained over the window.
    HostMemory,
    /// A GPU's temperature at or over its slowdown threshold as NVML reports it.
    GpuTemperature,
}

impl WarningKind {
    /// Every warning, in a fixed order (the metric's label values).
    pub const ALL: [WarningKind; 7] = [
        WarningKind::OpenFds,
        WarningKind::RssBytes,
        WarningKind::Threads,
        WarningKind::ExtraChildren,
        WarningKind::HostCpu,
        WarningKind::HostMemory,
        WarningKind::GpuTemperature,
    ];

    /// The name, as events and metrics spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            WarningKind::OpenFds => "open_fds",
            WarningKind::RssBytes => "rss_bytes",
            WarningKind::Threads => "threads",
            WarningKind::ExtraChildren => "extra_children",
            WarningKind::HostCpu => "host_cpu",
            WarningKind::HostMemory => "host_memory",
            WarningKind::GpuTemperature => "gpu_temperature",
        }
    }
}

/// One entry of the engine's own log: decisions about the host rather than one job, with the figures
/// that triggered them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "kind", content = "detail", rename_all = "snake_case")]
pub enum EngineEvent {
    /// A guard (memory, memory pressure, outside CPU, disk) crossed its threshold: no new job starts.
    AdmissionPaused {
        /// Which guard tripped, with the figure and its pause and resume thresholds.
        reason: String,
        /// The host reading that tripped it.
        reading: HostReading,
    },
    /// Every guard is back past its resume threshold: jobs start again.
    AdmissionResumed {
        /// The host reading that cleared the pause.
        reading: HostReading,
    },
    /// Memory is critical: the pressure responder is armed.
    PressureCritical {
        /// Which critical threshold was crossed, with the figure.
        reason: String,
        /// The host reading that crossed it.
        reading: HostReading,
    },
    /// Memory is no longer critical: the pressure responder stands down.
    PressureCleared {
        /// The host reading that cleared it.
        reading: HostReading,
    },
    /// The pressure responder chose a running job to stop.
    PressureVictim(VictimChosen),
    /// Memory critical, but no running job could be stopped.
    PressureNoVictim {
        /// Why memory is critical.
        reason: String,
        /// The host reading at the time.
        reading: HostReading,
    },
    /// An operator drained the node (`aura drain`): nothing new starts until `aura undrain`; running
    /// jobs finish.
    Drained {
        /// The API token that asked.
        by: Option<String>,
    },
    /// An operator undrained the node: queued jobs start again.
    Undrained {
        /// The API token that asked.
        by: Option<String>,
    },
    /// CPU use outside Aura stayed above the throttle threshold: running jobs' CPU is capped.
    CpuThrottled {
        /// The figure, with the throttle and restore thresholds.
        reason: String,
        /// The cap: the share of the machine's CPU all of Aura's jobs together may use.
        cpu_share: f64,
        /// The host reading that tripped it.
        reading: HostReading,
    },
    /// CPU use outside Aura fell below the restore threshold: the cap on running jobs is lifted.
    CpuRestored {
        /// The host reading that cleared it.
        reading: HostReading,
    },
    /// An operator acted on a job (the job's own log has the details).
    OperatorAction {
        /// What was done, by its CLI name.
        action: JobAction,
        /// The job.
        job_id: JobId,
        /// The API token that asked.
        by: Option<String>,
        /// More, where the action has more (the new priority, the retry's job id).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        detail: Option<String>,
    },
    /// A watched figure crossed its warning threshold (and, for host figures, stayed over it for the
    /// window): the daemon says so on its own, once, until the figure clears.
    WarningRaised {
        /// Which figure.
        warning: WarningKind,
        /// Its value now, in the unit of `threshold`.
        value: f64,
        /// The threshold it is over.
        threshold: f64,
        /// The warning in words, with both numbers.
        detail: String,
    },
    /// A raised warning's figure is back on the safe side of its clear threshold.
    WarningCleared {
        /// Which figure.
        warning: WarningKind,
        /// Its value now.
        value: f64,
        /// The threshold it is now under (the raise threshold less the hysteresis).
        threshold: f64,
        /// What cleared, in words.
        detail: String,
    },
    /// A janitor task ran and did something (or met errors): what it freed.
    JanitorRan {
        /// Which task.
        task: crate::janitor::TaskName,
        /// Run early because the data volume ran low on free space.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        early: bool,
        /// Files removed.
        files_removed: u64,
        /// Job directories archived, logs compressed, job rows exported.
        archived: u64,
        /// Bytes freed.
        bytes_freed: u64,
        /// Errors met.
        errors: u64,
    },
    /// See [`JobEvent::Unrecognized`].
    Unrecognized {
        /// The stored kind.
        kind: String,
        /// The stored detail, as JSON.
        detail: serde_json::Value,
    },
}

/// The two event logs' common handling: the stored form (kind, detail) and back.
pub trait LoggedEvent: Serialize + serde::de::DeserializeOwned {
    /// The event for a stored (kind, detail) this version cannot read.
    fn unrecognized(kind: String, detail: serde_json::Value) -> Self;

    /// The kind and detail of an `Unrecognized` event, as they were stored.
    fn as_unrecognized(&self) -> Option<(&str, &serde_json::Value)>;

    /// The stored form: its kind and its detail (`null` where it has none). An unrecognized event is
    /// written back exactly as it was read.
    fn to_parts(&self) -> Result<(String, serde_json::Value), serde_json::Error> {
        if let Some((kind, detail)) = self.as_unrecognized() {
            return Ok((kind.to_owned(), detail.clone()));
        }
        let mut value = serde_json::to_value(self)?;
        let kind = value
            .get("kind")
            .and_then(|k| k.as_str())
            .unwrap_or_default()
            .to_owned();
        let detail = value
            .get_mut("detail")
            .map(serde_json::Value::take)
            .unwrap_or_default();
        Ok((kind, detail))
    }

    /// Reads a stored (kind, detail): the typed event, or [`Self::unrecognized`] keeping both.
    fn from_parts(kind: String, detail: serde_json::Value) -> Self {
        let value = serde_json::json!({ "kind": kind, "detail": detail });
        serde_json::from_value(value).unwrap_or_else(|_| Self::unrecognized(kind, detail))
    }

    /// The kind, as stored and shown (`started`, `pressure_victim`, …).
    fn kind(&self) -> String {
        self.to_parts().map(|(kind, _)| kind).unwrap_or_default()
    }
}

impl LoggedEvent for JobEvent {
    fn unrecognized(kind: String, detail: serde_json::Value) -> Self {
        JobEvent::Unrecognized { kind, detail }
    }

    fn as_unrecognized(&self) -> Option<(&str, &serde_json::Value)> {
        match self {
            JobEvent::Unrecognized { kind, detail } => Some((kind, detail)),
            _ => None,
        }
    }
}

impl LoggedEvent for EngineEvent {
    fn unrecognized(kind: String, detail: serde_json::Value) -> Self {
        EngineEvent::Unrecognized { kind, detail }
    }

    fn as_unrecognized(&self) -> Option<(&str, &serde_json::Value)> {
        match self {
            EngineEvent::Unrecognized { kind, detail } => Some((kind, detail)),
            _ => None,
        }
    }
}

/// A job event to append, before the store gives it a sequence number.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NewEvent {
    /// When it happened.
    pub at: Timestamp,
    /// What happened.
    pub event: JobEvent,
    /// The attempt it belongs to, where that is not the job's attempt when it is recorded (what ended
    /// an attempt, written with the requeue that began the next).
    pub attempt: Option<u32>,
}

impl NewEvent {
    /// The event, stamped now, for the job's current attempt.
    pub fn new(event: JobEvent) -> Self {
        NewEvent {
            at: Timestamp::now(),
            event,
            attempt: None,
        }
    }

    /// Stamps events not yet stamped with `attempt`: call before a requeue moves the job to the next.
    pub fn stamp(events: &mut [NewEvent], attempt: u32) {
        for event in events {
            event.attempt.get_or_insert(attempt);
        }
    }
}

/// Which log a committed event belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventLog {
    /// A job's log (`job_events`; sequence numbers are shared by all jobs).
    Job(JobId),
    /// The engine's own log.
    Engine,
}

/// A committed event as live streams carry it: its log, its sequence number there, its stored parts, and
/// its record (the JSON of a [`JobEventRecord`] or an [`EngineEventRecord`]), encoded once, by its first
/// reader — not by the store's writer, which publishes it.
#[derive(Debug)]
pub struct CommittedEvent {
    /// The log it was appended to.
    pub log: EventLog,
    /// Its sequence number in that log.
    pub seq: i64,
    /// Its kind, as stored (`started`, `finished`, …).
    pub kind: String,
    at_ms: i64,
    attempt: Option<i64>,
    /// The stored detail, JSON text.
    detail: String,
    json: std::sync::OnceLock<String>,
}

impl CommittedEvent {
    /// An event from its stored parts: `kind` as stored, `detail` the stored JSON text.
    pub fn new(
        log: EventLog,
        seq: i64,
        at_ms: i64,
        attempt: Option<i64>,
        kind: String,
        detail: String,
    ) -> CommittedEvent {
        CommittedEvent {
            log,
            seq,
            kind,
            at_ms,
            attempt,
            detail,
            json: std::sync::OnceLock::new(),
        }
    }

    /// The record as JSON, encoded on first use.
    pub fn json(&self) -> &str {
        self.json.get_or_init(|| {
            use std::fmt::Write;
            let at = Timestamp::from_unix_millis(self.at_ms);
            let mut json = format!("{{\"seq\":{},", self.seq);
            if let (EventLog::Job(id), Some(attempt)) = (self.log, self.attempt) {
                let _ = write!(json, "\"job_id\":{},\"attempt\":{attempt},", id.0);
            }
            // A stored kind is a snake_case name, a stored detail valid JSON (the store wrote both).
            let quoted = serde_json::to_string(&self.kind).unwrap_or_else(|_| "\"\"".into());
            let detail = &self.detail;
            let _ = write!(
                json,
                "\"at\":\"{at}\",\"kind\":{quoted},\"detail\":{detail}}}"
            );
            json
        })
    }
}

/// A running job's progress, as event streams carry it (`event: progress`). Not stored: the job's record
/// keeps the last one (`accounting.progress`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ProgressUpdate {
    /// The job.
    pub job_id: JobId,
    /// Its progress now.
    pub progress: crate::media::Progress,
}

/// A [`ProgressUpdate`] encoded once for every subscriber.
#[derive(Clone, Debug, PartialEq)]
pub struct ProgressEvent {
    /// The job.
    pub job_id: JobId,
    /// The update, as JSON.
    pub json: String,
}

impl ProgressEvent {
    /// Encodes `update`.
    pub fn encode(update: &ProgressUpdate) -> ProgressEvent {
        ProgressEvent {
            job_id: update.job_id,
            // Plain numbers and enums: encoding cannot fail.
            json: serde_json::to_string(update).unwrap_or_default(),
        }
    }
}

/// One entry of a job's event log, as stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobEventRecord {
    /// Store-assigned, increasing across all jobs.
    pub seq: i64,
    /// The job it belongs to.
    pub job_id: JobId,
    /// When it happened.
    pub at: Timestamp,
    /// The attempt it belongs to (1 is the first).
    pub attempt: u32,
    /// `kind` and `detail` on the wire.
    #[serde(flatten)]
    pub event: JobEvent,
}

/// One entry of the engine's own event log, as stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EngineEventRecord {
    /// Store-assigned, increasing.
    pub seq: i64,
    /// When it happened.
    pub at: Timestamp,
    /// `kind` and `detail` on the wire.
    #[serde(flatten)]
    pub event: EngineEvent,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn action_names_are_the_wire_names() {
        use JobAction::*;
        for action in [Pause, Resume, Hold, Release, Retry, Priority, Kill, Cancel] {
            let wire = serde_json::to_value(action).expect("serializes");
            assert_eq!(wire.as_str(), Some(action.as_str()), "{action:?}");
        }
    }

    #[test]
    fn committed_events_encode_as_their_records() {
        let job = CommittedEvent::new(
            EventLog::Job(JobId(4)),
            17,
            1_700_000_000_123,
            Some(2),
            "stalled".into(),
            r#"{"reason":"no progress"}"#.into(),
        );
        let record: JobEventRecord = serde_json::from_str(job.json()).unwrap();
        assert_eq!(
            record,
            JobEventRecord {
                seq: 17,
                job_id: JobId(4),
                at: Timestamp::from_unix_millis(1_700_000_000_123),
                attempt: 2,
                event: JobEvent::Stalled {
                    reason: "no progress".into()
                },
            }
        );
        assert_eq!(job.json(), job.json(), "encoded once, the same every time");
        let engine = CommittedEvent::new(
            EventLog::Engine,
            3,
            0,
            None,
            "odd \"kind\"".into(),
            "null".into(),
        );
        let value: serde_json::Value = serde_json::from_str(engine.json()).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"seq": 3, "at": "1970-01-01T00:00:00.000Z", "kind": "odd \"kind\"", "detail": null})
        );
    }

    #[test]
    fn events_travel_as_kind_and_detail_and_unknown_ones_are_kept() {
        let event = JobEvent::Requeued { attempt: 2 };
        let (kind, detail) = event.to_parts().unwrap();
        assert_eq!(
            (kind.as_str(), detail.clone()),
            ("requeued", serde_json::json!({"attempt": 2}))
        );
        assert_eq!(JobEvent::from_parts(kind, detail), event);
        assert_eq!(event.kind(), "requeued");

        let odd = JobEvent::from_parts("signal_sent".into(), serde_json::json!({"signal": 15}));
        assert_eq!(
            odd,
            JobEvent::Unrecognized {
                kind: "signal_sent".into(),
                detail: serde_json::json!({"signal": 15})
            }
        );
        assert_eq!(odd.kind(), "signal_sent");
        assert_eq!(
            odd.to_parts().unwrap(),
            ("signal_sent".to_owned(), serde_json::json!({"signal": 15})),
            "written back as it was read"
        );
        // A known kind with a detail of another shape is kept too, not lost.
        let bad = JobEvent::from_parts("requeued".into(), serde_json::json!({"attempt": "x"}));
        assert!(matches!(bad, JobEvent::Unrecognized { .. }), "{bad:?}");

        let record = JobEventRecord {
            seq: 7,
            job_id: JobId(3),
            at: Timestamp::from_unix_millis(0),
            attempt: 1,
            event: JobEvent::StopRequested {
                reason: StopReason::Cancelled,
            },
        };
        let wire = serde_json::to_value(&record).unwrap();
        assert_eq!(wire["kind"], "stop_requested");
        assert_eq!(wire["detail"]["reason"], "cancelled");
        assert_eq!(
            serde_json::from_value::<JobEventRecord>(wire).unwrap(),
            record
        );
    }

    #[test]
    fn engine_events_read_back_from_their_stored_form() {
        let event = EngineEvent::AdmissionResumed {
            reading: HostReading {
                available_memory: Some(0.5),
                ..Default::default()
            },
        };
        let (kind, detail) = event.to_parts().unwrap();
        assert_eq!(kind, "admission_resumed");
        assert_eq!(EngineEvent::from_parts(kind, detail), event);
    }

    #[test]
    fn warnings_travel_with_their_bounded_name() {
        let event = EngineEvent::WarningRaised {
            warning: WarningKind::ExtraChildren,
            value: 3.0,
            threshold: 2.0,
            detail: "child processes beyond running jobs: 3 is over 2".into(),
        };
        let (kind, detail) = event.to_parts().unwrap();
        assert_eq!(kind, "warning_raised");
        assert_eq!(detail["warning"], "extra_children");
        assert_eq!(EngineEvent::from_parts(kind, detail), event);
        for w in WarningKind::ALL {
            assert_eq!(serde_json::to_value(w).unwrap(), w.as_str());
        }
    }
}

//! What the API shows of jobs — a record with its live resource use and why it waits, a page of them —
//! and of the engine (`EngineStatus`). One definition for the server that writes them and the client that
//! reads them, so the two cannot drift.

use crate::{Backend, Job, JobId, LiveUsage};
use serde::{Deserialize, Serialize};

/// A job record plus, while it runs, its live resource use.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JobView {
    #[serde(flatten)]
    pub job: Job,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live: Option<LiveUsage>,
    /// Why a queued job has not started yet, e.g. "waiting for memory: needs 2.0 GiB, 1.2 GiB free after
    /// reservations".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<String>,
}

/// What replaces a value the reader may not see.
pub const REDACTED: &str = "[redacted]";

impl JobView {
    /// The view for a reader who may not see environment values: every value the spec's `env` holds is
    /// replaced by [`REDACTED`] (names stay, so the reader still sees what was set). Secrets need no
    /// redaction: a spec only names them.
    pub fn redact(&mut self) {
        for value in self.job.spec.env.values_mut() {
            *value = REDACTED.to_owned();
        }
    }
}

/// One page of a job listing.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JobPage {
    pub jobs: Vec<JobView>,
    /// Pass as `after` to get the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_after: Option<JobId>,
}

/// `GET /api/status`: the engine's backend and its running and queued counts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineStatus {
    pub backend: Backend,
    /// The backend's start-up line (cgroup paths, capabilities).
    pub backend_detail: String,
    /// Whether submissions are accepted (false while shutting down).
    pub accepting: bool,
    pub max_concurrent: usize,
    pub running: usize,
    pub queued: usize,
    /// Why admission is paused (a live guard: memory, pressure, CPU, disk), if it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<String>,
    /// The job database cannot commit (its volume is full or failing): submissions are refused.
    #[serde(default)]
    pub store_degraded: bool,
    /// State changes kept in memory meanwhile.
    #[serde(default)]
    pub kept_writes: u64,
    /// The newest jobs quarantined by crash-loop protection, newest first.
    #[serde(default)]
    pub quarantined: Vec<crate::JobId>,
}

/// One GPU as admission counts it: its memory and how many concurrent NVENC sessions its driver allows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuDevice {
    pub index: u32,
    pub vram_bytes: u64,
    pub encoder_sessions: u32,
}

/// What the machine offers to jobs (after headroom).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capacity {
    pub memory_bytes: u64,
    /// Thousandths of a core, so fractional requests add up exactly.
    pub cpu_millis: u64,
    pub disk_bytes: u64,
    pub gpus: Vec<GpuDevice>,
}

/// The host as the engine's guards last read it: shares of 0–1, PSI in percent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HostReading {
    pub available_memory: Option<f64>,
    pub available_memory_bytes: Option<u64>,
    pub total_memory_bytes: Option<u64>,
    pub memory_pressure: Option<f64>,
    /// PSI memory `full avg10`, percent.
    pub memory_pressure_full: Option<f64>,
    pub outside_cpu: Option<f64>,
    /// The data dir's volume: bytes available to the daemon, and its size.
    pub free_disk_bytes: Option<u64>,
    pub total_disk_bytes: Option<u64>,
}

/// One named limit's slots in use, and its configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LimitUse {
    pub in_use: u32,
    pub max_concurrent: Option<u32>,
    pub per_minute: Option<u32>,
}

/// What admission has and what is reserved: `GET /api/metrics/utilization`, `aura status`, `aura top`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Utilization {
    pub capacity: Capacity,
    pub reserved_memory_bytes: u64,
    pub available_memory_bytes: u64,
    pub reserved_cpu_cores: f64,
    pub reserved_disk_bytes: u64,
    pub running: usize,
    pub queued: usize,
    pub max_concurrent: usize,
    /// Slots left under `max_concurrent`.
    pub available_slots: usize,
    /// How many jobs of the default memory request the capacity holds (capped by `max_concurrent`).
    pub max_jobs_at_default_request: u64,
    /// Per named limit: slots in use, and its configuration.
    pub limits: std::collections::BTreeMap<String, LimitUse>,
    /// The host as the guards last saw it (absent when guards are disabled or before the first full
    /// CPU window).
    pub host: Option<HostReading>,
    /// Whether a live guard (memory, pressure, outside CPU, disk) holds admission back, and why.
    pub admission_paused: bool,
    pub paused_reason: Option<String>,
    /// Memory protection: whether memory is critical now (the pressure responder is armed), and the trees
    /// killed or stopped for memory since start-up.
    pub memory_critical: bool,
    pub memory_limit_kills: u64,
    pub oom_kills: u64,
    pub pressure_victims: u64,
}

/// How ready the daemon is for work (`GET /readyz`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    Healthy,
    Degraded,
    Unhealthy,
    /// A shutdown has begun: no new work, whatever else holds.
    ShuttingDown,
}

/// `GET /readyz`: the verdict and what led to it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Readiness {
    pub status: Health,
    pub reasons: Vec<String>,
}

/// Whether the daemon is alive or shutting down.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Liveness {
    Ok,
    ShuttingDown,
}

/// `GET /healthz`: alive, and the process-tree backend it runs jobs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alive {
    pub status: Liveness,
    pub backend: Backend,
}

/// A daemon figure over its threshold.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Warning {
    pub metric: String,
    pub value: u64,
    pub threshold: u64,
    pub message: String,
}

/// `GET /api/diagnostics/resources`: the daemon's own process against its thresholds.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Diagnostics {
    pub process: crate::host::ProcessSnapshot,
    pub running_jobs: usize,
    pub warnings: Vec<Warning>,
}

/// `POST /api/diagnostics/resources/cleanup`: the daemon before and after.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Cleanup {
    pub before: crate::host::ProcessSnapshot,
    pub after: crate::host::ProcessSnapshot,
    /// What was done.
    pub actions: Vec<String>,
}

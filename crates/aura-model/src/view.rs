//! What the API shows of jobs — a record with its live resource use and why it waits, a page of them —
//! and of the engine (`EngineStatus`). One definition for the server that writes them and the client that
//! reads them, so the two cannot drift.

use crate::{Backend, Job, JobId, LiveUsage};
use serde::{Deserialize, Serialize};

/// A job record plus, while it runs, its live resource use.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobView {
    /// The stored record: spec, state, outcome and accounting.
    #[serde(flatten)]
    pub job: Job,
    /// The tree's resource use as last sampled; present only while the job runs or stops.
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobPage {
    /// The jobs on this page, in the listing's order.
    pub jobs: Vec<JobView>,
    /// Pass as `after` to get the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_after: Option<JobId>,
}

/// `GET /api/status`: the engine's backend and its running and queued counts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EngineStatus {
    /// The process-tree backend jobs run under.
    pub backend: Backend,
    /// The backend's start-up line (cgroup paths, capabilities).
    pub backend_detail: String,
    /// Whether submissions are accepted (false while shutting down).
    pub accepting: bool,
    /// The most jobs that may run at once (`max_concurrent` in the configuration).
    pub max_concurrent: usize,
    /// Jobs running or stopping now.
    pub running: usize,
    /// Jobs waiting to start, including those admitted but not yet launched.
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
    /// Drained by an operator (`aura drain`): nothing new starts, running jobs finish.
    #[serde(default)]
    pub draining: bool,
    /// Jobs paused by an operator now.
    #[serde(default)]
    pub paused_jobs: usize,
    /// Jobs held by an operator now.
    #[serde(default)]
    pub held: usize,
    /// Running jobs' CPU is capped because the machine is busy outside Aura: why, if it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttled: Option<String>,
}

/// One GPU as admission counts it: its memory and how many concurrent NVENC sessions its driver allows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct GpuDevice {
    /// The GPU's index as NVML (and `nvidia-smi`) numbers it.
    pub index: u32,
    /// Its memory, in bytes.
    pub vram_bytes: u64,
    /// NVENC sessions it may run at once.
    pub encoder_sessions: u32,
}

/// What the machine offers to jobs (after headroom).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Capacity {
    /// Memory jobs may reserve, in bytes: physical memory less the configured headroom, unless overridden.
    pub memory_bytes: u64,
    /// Thousandths of a core, so fractional requests add up exactly.
    pub cpu_millis: u64,
    /// Disk space jobs may reserve on the data volume, in bytes: its free space at start-up, unless
    /// overridden.
    pub disk_bytes: u64,
    /// The GPUs jobs may reserve (empty when none are configured or detected).
    pub gpus: Vec<GpuDevice>,
}

/// The host as the engine's guards last read it: shares of 0–1, PSI in percent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HostReading {
    /// Available memory as a share (0–1) of the total.
    pub available_memory: Option<f64>,
    /// Available memory (the kernel's `MemAvailable`), in bytes.
    pub available_memory_bytes: Option<u64>,
    /// Total physical memory, in bytes.
    pub total_memory_bytes: Option<u64>,
    /// PSI memory `some avg10`, percent.
    pub memory_pressure: Option<f64>,
    /// PSI memory `full avg10`, percent.
    pub memory_pressure_full: Option<f64>,
    /// CPU used by work outside Aura's jobs, as a share (0–1) of the machine, averaged over the guards'
    /// CPU window (absent until the window is full).
    pub outside_cpu: Option<f64>,
    /// The data dir's volume: bytes available to the daemon, and its size.
    pub free_disk_bytes: Option<u64>,
    /// The size of the data dir's volume, in bytes.
    pub total_disk_bytes: Option<u64>,
}

/// One named limit's slots in use, and its configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LimitUse {
    /// Slots held now by admitted jobs and leases.
    pub in_use: u32,
    /// The most slots that may be held at once (absent: unbounded).
    pub max_concurrent: Option<u32>,
    /// The most starts allowed in any minute (absent: unbounded).
    pub per_minute: Option<u32>,
}

/// What admission has and what is reserved: `GET /api/metrics/utilization`, `aura status`, `aura top`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Utilization {
    /// What the machine offers to jobs.
    pub capacity: Capacity,
    /// Memory reserved by admitted jobs and leases, in bytes.
    pub reserved_memory_bytes: u64,
    /// Memory capacity not reserved, in bytes.
    pub available_memory_bytes: u64,
    /// Cores reserved by admitted jobs and leases (fractional).
    pub reserved_cpu_cores: f64,
    /// Disk reserved by admitted jobs and leases, in bytes.
    pub reserved_disk_bytes: u64,
    /// Jobs running or stopping now.
    pub running: usize,
    /// Jobs waiting to start, including those admitted but not yet launched.
    pub queued: usize,
    /// The most jobs that may run at once.
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
    /// Which guard holds admission back, with its figures (absent when not paused).
    pub paused_reason: Option<String>,
    /// Memory protection: whether memory is critical now (the pressure responder is armed), and the trees
    /// killed or stopped for memory since start-up.
    pub memory_critical: bool,
    /// Trees killed for going over their hard memory limit.
    pub memory_limit_kills: u64,
    /// Trees hit by the kernel's OOM killer.
    pub oom_kills: u64,
    /// Jobs stopped by the memory pressure responder.
    pub pressure_victims: u64,
}

/// How ready the daemon is for work (`GET /readyz`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// Nothing stands in the way of work.
    Healthy,
    /// Working, but something needs attention: admission paused, disk nearly full, a diagnostics warning.
    Degraded,
    /// Cannot take work: the job database is unreachable or cannot commit.
    Unhealthy,
    /// A shutdown has begun: no new work, whatever else holds.
    ShuttingDown,
}

/// `GET /readyz`: the verdict and what led to it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Readiness {
    /// The verdict.
    pub status: Health,
    /// What makes it unhealthy or degraded, the unhealthy causes first (empty when healthy).
    pub reasons: Vec<String>,
}

/// Whether the daemon is alive or shutting down.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Liveness {
    /// The daemon runs and accepts work.
    Ok,
    /// A shutdown has begun.
    ShuttingDown,
}

/// `GET /healthz`: alive, and the process-tree backend it runs jobs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Alive {
    /// Alive, or shutting down.
    pub status: Liveness,
    /// The process-tree backend jobs run under.
    pub backend: Backend,
}

/// A daemon figure over its threshold.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Warning {
    /// Which figure: `open_fds`, `rss_bytes`, `threads` or `extra_children`.
    pub metric: String,
    /// Its value now: bytes for `rss_bytes`; otherwise a count beyond what running jobs hold by design.
    pub value: u64,
    /// The configured threshold it is over, in the same unit.
    pub threshold: u64,
    /// The warning in words, with both numbers.
    pub message: String,
}

/// `GET /api/diagnostics/resources`: the daemon's own process against its thresholds.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Diagnostics {
    /// The daemon's own process: memory, threads, fds, children.
    pub process: crate::host::ProcessSnapshot,
    /// Jobs running now; the thresholds allow for what each holds by design.
    pub running_jobs: usize,
    /// Async tasks alive in the daemon's runtime (every connection, event stream, job monitor): a count
    /// that grows without bound is a leak.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tasks: Option<u64>,
    /// The figures over their thresholds (empty when all is well).
    pub warnings: Vec<Warning>,
}

/// `POST /api/diagnostics/resources/cleanup`: the daemon before and after.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Cleanup {
    /// The daemon's process before the cleanup.
    pub before: crate::host::ProcessSnapshot,
    /// The daemon's process after it.
    pub after: crate::host::ProcessSnapshot,
    /// What was done.
    pub actions: Vec<String>,
}

/// `POST /api/jobs/cancel` (`aura cancel --all`, `aura kill --all`): which unfinished jobs to stop at
/// once, and how. A `submit` token's request picks its own jobs only.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CancelSelection {
    /// The states to pick from; empty: every unfinished state. `finished` is refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub states: Vec<crate::StateName>,
    /// Labels a job must carry, each with this value.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub labels: std::collections::BTreeMap<String, String>,
    /// SIGKILL each picked job's whole tree at once instead of running its stop sequence.
    #[serde(default)]
    pub kill: bool,
    /// Only say which jobs would be stopped; stop none.
    #[serde(default)]
    pub dry_run: bool,
}

/// The answer to a [`CancelSelection`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CancelResult {
    /// How many jobs were stopped (or, for a dry run, would be).
    pub count: usize,
    /// Those jobs, oldest first.
    pub ids: Vec<JobId>,
    /// Whether this was a dry run, which stopped nothing.
    pub dry_run: bool,
    /// A dry run's jobs counted by state name (`{"running": 3, "queued": 9}`), for a confirmation
    /// prompt; empty otherwise.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub by_state: std::collections::BTreeMap<String, usize>,
    /// Fleet mode: nodes holding picked jobs that did not answer (their jobs were not stopped; asking
    /// again stops them once the node answers, or the fleet rescues them); empty otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unreachable_nodes: Vec<String>,
}

/// `POST /api/jobs/{id}/priority` (`aura priority ID N`): the job's new priority (higher runs first).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PriorityRequest {
    /// The new priority.
    pub priority: i32,
}

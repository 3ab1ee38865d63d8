//! The engine: the one component that owns live job state. It queues submitted jobs, starts them on the
//! supervisor in priority-then-FIFO order as admission allows (resources, named limits, a concurrency cap), enforces timeouts and cancels, records
//! every transition in the store, recovers after a crash and shuts down as a protocol.
//!
//! It knows no SQL (the store does), no cgroup (the supervisor does) and no status code (the server does).

mod actor;
mod admission;
mod checks;
mod diagnostics;
mod dispatch;
mod error;
mod files;
mod fleet;
mod guards;
mod handle;
mod janitor;
mod lease;
mod media;
mod metrics;
mod monitor;
mod pressure;
mod protocol;
mod retention;
mod secrets;
mod shared;
mod streams;
mod warnings;

pub use admission::AdmissionConfig;
pub use aura_model::EngineStatus;
pub use aura_store::{FleetToken, PgConfig};
pub use diagnostics::{Cleanup, Diagnostics, DiagnosticsConfig, Warning};
pub use error::EngineError;
pub use files::{FileReader, JobFile, UploadConfig, UploadSink};
pub use fleet::FleetConfig;
pub use guards::{GuardConfig, MemoryThreshold, ThrottleConfig};
pub use handle::{Cancelled, EngineHandle, Health, LimitUse, Reach, Readiness, Utilization};
pub use lease::LeaseInfo;
pub use media::MediaConfig;
pub use metrics::{
    HistogramSnapshot, JobKind, JobMetricsSnapshot, KindSnapshot, Refusal, DURATION_BUCKETS,
    MEMORY_BUCKETS, OUTCOMES,
};
pub use retention::{
    CompactTaskConfig, HistoryTaskConfig, JanitorConfig, TaskConfig, WorkTaskConfig,
};
pub use secrets::{SecretError, Secrets};
pub use streams::Subscription;
pub use warnings::{Figures, Level, WarningConfig, Watch, Watcher};

/// The check of a job file's path as a client names it (`GET /api/jobs/{id}/files/{path}`), for the fuzz
/// targets. Not an API.
#[doc(hidden)]
pub mod fuzzing {
    /// `Ok` for a relative path of plain components, else why not.
    pub fn check_job_file_path(path: &str) -> Result<(), &'static str> {
        crate::files::check_path(path)
    }
}

use aura_supervisor::{Supervisor, SupervisorConfig};
use std::path::PathBuf;

/// Everything the engine needs to run, with the defaults of `aura serve`.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Where the engine keeps its database (`aura.db`), job working directories (`work/`) and captured
    /// output (`logs/`).
    pub data_dir: PathBuf,
    /// Most jobs running at once, on top of admission's resource checks. Default: the number of cores.
    pub max_concurrent: usize,
    /// Jobs admitted ahead of a free running slot (their reservations held, shown as queued): each starts
    /// the moment a running job's tree is gone, with no round trip through the engine. A standby yields to
    /// a job that overtakes it in the queue, and goes back to the queue when admission pauses or a lease
    /// needs what it holds. Default (`aura serve`): 2; 0 admits only into free slots.
    pub standby: usize,
    /// What the host can afford and how a job's request is formed.
    pub admission: AdmissionConfig,
    /// When admission pauses for the host, and when the pressure responder stops a job.
    pub guards: GuardConfig,
    /// Thresholds for the daemon's checks of its own fds, threads, memory and children.
    pub diagnostics: DiagnosticsConfig,
    /// The warning watcher: how often it judges the diagnostics thresholds and the host's CPU, memory
    /// and GPU temperatures, and its host levels and hysteresis.
    pub warnings: WarningConfig,
    /// The janitor: what it removes, archives and compacts, and when.
    pub janitor: JanitorConfig,
    /// The host sampler behind `/api/metrics/system`: how often, and how many snapshots it keeps.
    pub host_interval: std::time::Duration,
    /// How many of the host sampler's snapshots are kept for history.
    pub host_history: usize,
    /// Requeue the jobs a graceful shutdown stopped, so that the next start runs them again.
    pub requeue_on_shutdown: bool,
    /// How job process trees are started and watched.
    pub supervisor: SupervisorConfig,
    /// The named secrets job specs may reference; resolved into a job's environment at launch.
    pub secrets: Secrets,
    /// The most a graceful shutdown takes, whatever the jobs' stop sequences say: then every tree is
    /// killed. Default (`aura serve`): 30 s.
    pub shutdown_grace: std::time::Duration,
    /// A job running at this many unclean daemon deaths in a row ends `quarantined` at the next start
    /// instead of being requeued; 0: never. Default (`aura serve`): 2.
    pub quarantine_after: u32,
    /// Space set aside next to the database and released when its volume is full, so that state changes
    /// under way still commit. Default (`aura serve`): 2 MiB.
    pub store_reserve: u64,
    /// Progress, stall detection and input probing of media jobs.
    pub media: MediaConfig,
    /// The data dir is a copy of another daemon's (its instance id was minted anew): the trees its
    /// records name belong to that daemon, and recovery must not touch them.
    pub foreign_trees: bool,
    /// What `POST /api/uploads` accepts: the largest upload, the space it must leave free.
    pub uploads: UploadConfig,
    /// Fleet mode: a PostgreSQL store shared with other nodes instead of the data dir's SQLite database.
    pub fleet: Option<FleetConfig>,
}

/// Who submits a job, as the API authenticated it: recorded with the job, and held to its own cap of
/// waiting jobs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Submitter {
    /// The API token's name (never the token).
    pub name: String,
    /// Most jobs of this submitter waiting in the queue at once; `None`: only the global cap.
    pub max_queued: Option<usize>,
}

/// Which unfinished jobs a bulk action (`aura cancel --all`) picks: every one of `states` (every
/// unfinished state when empty) that carries all of `labels`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selection {
    /// The states to pick from; empty: every unfinished one.
    pub states: Vec<aura_model::StateName>,
    /// Labels a job must carry, each with this value.
    pub labels: std::collections::BTreeMap<String, String>,
}

impl EngineConfig {
    /// Parent of the default per-job working directories, `work/<id>`.
    pub fn work_root(&self) -> PathBuf {
        self.data_dir.join("work")
    }

    /// Where uploads are kept, `uploads/<upload id>` (content-addressed, read-only files).
    pub fn upload_root(&self) -> PathBuf {
        self.data_dir.join("uploads")
    }

    /// Where the janitor keeps what it archived: `archive/work/<id>.tar.zst` for a job's directory.
    pub fn archive_root(&self) -> PathBuf {
        self.data_dir.join("archive")
    }

    /// Parent of captured output, `logs/<id>/<attempt>/`.
    pub fn log_root(&self) -> PathBuf {
        self.data_dir.join("logs")
    }

    /// The job database, `aura.db` in the data dir.
    pub fn database_path(&self) -> PathBuf {
        self.data_dir.join("aura.db")
    }
}

/// The default concurrency: one job per core.
pub fn default_max_concurrent() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Opens the store, starts the supervisor, recovers what a previous daemon left behind and starts the
/// actor. Returns once recovery is complete and the engine accepts jobs.
pub async fn start(config: EngineConfig) -> Result<EngineHandle, EngineError> {
    if config.max_concurrent == 0 {
        return Err(EngineError::Config(
            "max_concurrent must be at least 1".into(),
        ));
    }
    config.warnings.validate().map_err(EngineError::Config)?;
    config.janitor.validate().map_err(EngineError::Config)?;
    // Jobs running as another account must pass through the work root to their own directories, but
    // may not list it; logs are the daemon's alone (a job must not read another job's output).
    let work_mode = if config.supervisor.sandbox.identity.is_some() {
        0o711
    } else {
        0o700
    };
    for (dir, mode) in [(config.work_root(), work_mode), (config.log_root(), 0o700)] {
        let io = |source| EngineError::Io {
            path: dir.clone(),
            source,
        };
        tokio::fs::create_dir_all(&dir).await.map_err(io)?;
        use std::os::unix::fs::PermissionsExt;
        tokio::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode))
            .await
            .map_err(io)?;
    }
    // The janitor's other roots: the daemon's alone, 0700 when made here (an input reaches a job as a
    // link in its own directory, never through `uploads/`); one an operator made keeps its mode.
    for dir in retention::Layout::of(&config).plain_roots() {
        let io = |source| EngineError::Io {
            path: dir.to_path_buf(),
            source,
        };
        tokio::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .await
            .map_err(io)?;
    }
    let supervisor = Supervisor::start(config.supervisor.clone())?;
    // Standby jobs wait in the supervisor: it, not the actor, holds the running count to the limit.
    supervisor.limit_running(Some(config.max_concurrent));
    tracing::info!(backend = %supervisor.backend(), detail = %supervisor.description(), "process-tree backend");
    // The host sampler first: its first snapshot (taken before `start` returns) is where capacity comes
    // from, so /proc, statvfs and NVML are read in one place.
    let sampler_config = aura_host::SamplerConfig {
        interval: config.host_interval,
        history: config.host_history,
        data_dir: config.data_dir.clone(),
        nvml: config.admission.detect_gpus,
    };
    let host = tokio::task::spawn_blocking(move || aura_host::HostSampler::start(sampler_config))
        .await
        .map_err(|e| EngineError::internal("starting the host sampler on a blocking thread", e))?
        .map_err(|e| EngineError::internal("starting the host sampler", e))?;
    if let Some(total) = host.latest().map(|h| h.memory.total) {
        config
            .guards
            .validate()
            .and_then(|()| config.guards.check_for_host(total))
            .map_err(EngineError::Config)?;
    }
    let capacity = config.admission.capacity(host.latest().as_deref());
    tracing::info!(
        memory = %aura_model::ByteSize(capacity.memory_bytes),
        cpu_cores = capacity.cpu_millis as f64 / 1000.0,
        disk = %aura_model::ByteSize(capacity.disk_bytes),
        gpus = capacity.gpus.len(),
        limits = config.admission.limits.len(),
        "admission capacity"
    );
    let store = match &config.fleet {
        None => {
            aura_store::Store::open(
                &config.database_path(),
                aura_store::StoreOptions {
                    reserve_bytes: config.store_reserve,
                    ..aura_store::StoreOptions::default()
                },
            )
            .await?
        }
        Some(fleet) => {
            let node = fleet::node_spec(fleet, &capacity);
            tracing::info!(node = %node.name, id = %node.id, tags = ?node.tags, "fleet mode: PostgreSQL store");
            aura_store::Store::open_postgres(
                fleet.store.clone(),
                node,
                aura_store::StoreOptions {
                    group_window: fleet.commit_window,
                    ..aura_store::StoreOptions::default()
                },
            )
            .await?
        }
    };
    let admission = aura_admission::Admission::new(capacity, config.admission.limits.clone());
    actor::spawn(config, admission, host, store, supervisor).await
}

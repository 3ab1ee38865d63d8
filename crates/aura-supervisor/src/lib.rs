//! `aura-supervisor` runs each job attempt as a supervised process tree and guarantees that nothing
//! of it outlives the job: no process, no zombie, no leaked fd, no cgroup directory (emptied job cgroups
//! wait in a bounded pool for the next job and are removed at shutdown).
//!
//! It owns: choosing a backend at start-up (pure cgroup v2, hybrid v2+v1-memory, cgroup v1 memory, or
//! plain process groups), starting jobs from dedicated launcher threads (so `PR_SET_PDEATHSIG` ties
//! them to threads that outlive their children) under a running limit, each launcher thread reaping
//! what it started (`waitid` on the pidfd, then `wait4`) and starting the launch parked behind it,
//! stop sequences, pausing and resuming a tree, the CPU cap on all jobs together (`cpucap`),
//! memory/CPU accounting (kernel high-water marks where the host has them, sampled by the watcher
//! thread otherwise), wiring stdout/stderr into `aura_logs`, and killing what a crashed predecessor
//! left.
//!
//! It does not own: job state, scheduling, persistence (the engine stores each [`TreeHandle`] and
//! hands leftovers to [`Supervisor::recover`]), or the log file format (`aura_logs`).
//!
//! Threads: one launcher thread per running tree plus `SupervisorConfig::launchers` free ones, and one
//! watcher thread (sampling, log capture) per [`Supervisor`]; the rarer blocking cgroupfs and `/proc` work
//! (signalling, pausing or resuming a tree, killing one that outlived its main process) runs in
//! `spawn_blocking`. Nothing blocking runs on async worker threads, except the few `mkdir`s (and, with
//! the CPU cap, cgroupfs writes) of [`Supervisor::start`]; [`Supervisor::set_cpu_cap`] blocks and says so.
//!
//! Backend guarantees:
//! - cgroup backends: a job cannot leave its cgroup (it is placed there before `exec`), so every
//!   process it ever forks — including `setsid`'d and double-forked daemons — is killed.
//! - [`BackendChoice::ProcessGroup`]: the daemon becomes the subreaper of its jobs (`subreaper`), so no
//!   orphan escapes to init: the tree is the process group, everything below the main process, the
//!   members earlier samples saw, and the adopted orphans carrying the tree's `AURA_TREE` marker, each
//!   with its descendants. Adopted children are reaped when they end; a leftover one is killed. What
//!   it cannot reach: a process that `exec`s with a cleared environment *and* is orphaned before a
//!   sample saw it — killed only once every tree that ran at its start has ended. Recovery after a
//!   daemon crash finds survivors by marker.

mod cgroup;
mod cpucap;
mod host;
mod launcher;
mod pool;
mod probe;
mod procfs;
mod recover;
mod sandbox;
mod slots;
mod spawn;
mod subreaper;
mod tree;
mod watcher;
mod workdirs;

pub use cgroup::kept_files as kept_cgroup_files;
pub use cpucap::CpuCapMechanism;
pub use sandbox::{
    JobIdentity, JobSandbox, ProgramAllowlist, SandboxError, DEFAULT_PASS_ENV, DEFAULT_PATH,
};
pub use slots::LaunchTicket;
pub use subreaper::MARKER_VAR;

/// The value of `name` in the environment process `pid` was executed with (`/proc/PID/environ`), e.g. its
/// job tree's [`MARKER_VAR`]; `None` if unset or unreadable. Blocking.
pub fn env_var(pid: i32, name: &str) -> Option<String> {
    procfs::env_var(pid, name)
}
pub use tree::{
    LimitEnforcer, MemoryViolation, ProgressSetup, RunningTree, UsageProbe, PROGRESS_FD,
};

use aura_model::{Backend, JobId, TreeHandle};
use launcher::LauncherMsg;
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The parsers of what job processes control — their `/proc/PID/stat` line (a job picks its own command
/// name) and their environment block (where the tree marker is read) — for the fuzz targets. Not an API.
#[doc(hidden)]
pub mod fuzzing {
    /// `/proc/PID/stat`: (state, ppid, pgrp, utime, stime, start ticks).
    pub fn proc_stat(text: &str) -> Option<(u8, i32, i32, u64, u64, u64)> {
        let s = crate::procfs::parse_stat(text)?;
        Some((s.state, s.ppid, s.pgrp, s.utime, s.stime, s.start_ticks))
    }

    /// `name`'s value in a `/proc/PID/environ` block.
    pub fn env_value(environ: &[u8], name: &str) -> Option<String> {
        crate::procfs::find_env(environ, name)
    }
}

/// Locks `mutex`, taking the data over from a thread that panicked while holding it: every mutex of this
/// crate guards plain bookkeeping that stays consistent between statements.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Which backend to use; `Auto` detects the best one the host offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum BackendChoice {
    /// The best the host offers (the default): cgroup v2 on a pure v2 host, else hybrid, else cgroup v1;
    /// process groups where none of these can be set up.
    #[default]
    Auto,
    /// Pure cgroup v2: membership, `cgroup.kill`, CPU and (where delegated) memory from one hierarchy.
    CgroupV2,
    /// cgroup v2 for membership and `cgroup.kill`, the cgroup v1 memory controller for memory.
    Hybrid,
    /// The cgroup v1 memory controller alone; a tree is killed by signalling each member.
    CgroupV1,
    /// No cgroups: process groups, with the daemon as the subreaper of its jobs.
    ProcessGroup,
}

impl BackendChoice {
    /// The name used in configuration and logs (`auto`, `cgroup_v2`, …), which `FromStr` parses back.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendChoice::Auto => "auto",
            BackendChoice::CgroupV2 => "cgroup_v2",
            BackendChoice::Hybrid => "hybrid",
            BackendChoice::CgroupV1 => "cgroup_v1",
            BackendChoice::ProcessGroup => "process_group",
        }
    }
}

impl std::fmt::Display for BackendChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for BackendChoice {
    type Err = SupervisorError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "auto" => BackendChoice::Auto,
            "cgroup_v2" => BackendChoice::CgroupV2,
            "hybrid" => BackendChoice::Hybrid,
            "cgroup_v1" => BackendChoice::CgroupV1,
            "process_group" => BackendChoice::ProcessGroup,
            other => return Err(SupervisorError::UnknownBackend(other.to_owned())),
        })
    }
}

/// Supervisor settings; [`SupervisorConfig::new`] gives the defaults.
#[derive(Clone, Debug)]
pub struct SupervisorConfig {
    /// Which process backend to use. Default: [`BackendChoice::Auto`].
    pub backend: BackendChoice,
    /// Unique per daemon (the engine passes a stable id stored in its data dir). Names this daemon's
    /// cgroup subtree `aura-<instance>`, so two daemons (e.g. parallel tests) never touch each other's
    /// jobs. Letters, digits, `-`, `_`, `.`; at most 64 bytes.
    pub instance: String,
    /// How often the watcher thread samples memory, process count and CPU of every tree.
    pub sample_interval: Duration,
    /// Log cap per stream.
    pub log_cap: aura_logs::LogCap,
    /// Log capture never writes into the last this many bytes of the log volume (it drops output
    /// instead): what is left belongs to the job database's state changes. 0: no floor.
    pub log_min_free: u64,
    /// Written to each job's `oom_score_adj`, so the kernel's OOM killer picks a job before the daemon.
    pub job_oom_score_adj: i32,
    /// How long `finish()`/`stop()` wait for a killed tree to be empty.
    pub kill_wait: Duration,
    /// How often trees with a memory limit are sampled: on the no-cgroup fallback this is the watchdog's
    /// reaction time (a job may overshoot its limit by what it allocates in one interval); on cgroups
    /// it is how soon the rest of a tree the kernel OOM-killed in is killed.
    pub memory_watch_interval: Duration,
    /// How many emptied job cgroups are kept for reuse (see the `pool` module); more are removed.
    pub cgroup_pool: usize,
    /// Launcher threads free to prepare and start jobs at any moment; one more runs per tree whose
    /// main process it waits for (see the `launcher` module).
    pub launchers: usize,
    /// The nice value every job starts with, whatever the daemon's own (see [`renice_daemon`]).
    /// Default: 0, what a job started from a shell gets.
    pub job_nice: i32,
    /// Who jobs run as, their limits and environment, the programs and directories they may use.
    pub sandbox: JobSandbox,
    /// Prepare the CPU cap on all jobs together ([`Supervisor::set_cpu_cap`]): its mechanism is chosen
    /// and set up at start, and on hybrid and v1 hosts every job then joins the instance's v1 `cpu`
    /// cgroup (one more cgroupfs write per launch, made by the job's child). Default: false — nothing
    /// in the launch path changes.
    pub cpu_cap: bool,
}

impl SupervisorConfig {
    /// Defaults: auto backend, 250 ms sampling (50 ms for trees with a memory limit), 16 MiB log cap per
    /// stream, oom_score_adj 500, 2 s kill wait, 32 pooled job cgroups, 2 free launcher threads, jobs at
    /// nice 0, no CPU cap.
    pub fn new(instance: impl Into<String>) -> Self {
        SupervisorConfig {
            backend: BackendChoice::Auto,
            instance: instance.into(),
            sample_interval: Duration::from_millis(250),
            log_cap: aura_logs::LogCap::new(16 << 20).expect("valid cap"),
            log_min_free: 0,
            job_oom_score_adj: 500,
            kill_wait: Duration::from_secs(2),
            memory_watch_interval: Duration::from_millis(50),
            cgroup_pool: 32,
            launchers: 2,
            job_nice: 0,
            sandbox: JobSandbox::default(),
            cpu_cap: false,
        }
    }
}

/// Gives every thread of this process the nice value `nice` (threads started later inherit it from
/// their creator). Linux keeps the nice value per thread, so a process that already runs threads (an
/// async runtime) must set each one.
///
/// Why a daemon wants this: its work per job is a few short wake-ups (reap, account, start the next),
/// and a thread woken onto a CPU that runs a job waited for the job's whole time slice, leaving the
/// other CPU idle meanwhile (BENCHMARKS.md, "The daemon above its jobs"). With a higher weight than the
/// jobs, the scheduler runs it at once; its share of the CPU stays what it uses. Raising the priority
/// needs `CAP_SYS_NICE` (or `RLIMIT_NICE`): the error says when it is refused, and the threads set
/// before it keep the new value.
pub fn renice_daemon(nice: i32) -> std::io::Result<()> {
    for entry in std::fs::read_dir("/proc/self/task")? {
        let Some(tid) = entry?
            .file_name()
            .to_str()
            .and_then(|t| t.parse().ok())
            .and_then(rustix::process::Pid::from_raw)
        else {
            continue;
        };
        match rustix::process::setpriority_process(Some(tid), nice) {
            // ESRCH: a thread that ended meanwhile.
            Ok(()) | Err(rustix::io::Errno::SRCH) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Start-up errors.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    /// The backend that was forced cannot be set up on this host (no cgroup2 mount, no `cgroup.kill`,
    /// no v1 memory controller, or the daemon may not become the subreaper of its jobs).
    #[error("process backend {backend} is not available on this host: {reason}")]
    BackendUnavailable {
        /// The backend that was asked for.
        backend: BackendChoice,
        /// What the host lacks, in words for the user.
        reason: String,
    },
    /// A cgroup directory of this instance could not be used.
    #[error("cgroup {path}: {source}")]
    Cgroup {
        /// The cgroup directory.
        path: PathBuf,
        /// The I/O error from cgroupfs.
        source: std::io::Error,
    },
    /// A backend name (in configuration) that is none of the known ones; holds the name given.
    #[error("unknown process backend {0:?} (expected auto, cgroup_v2, hybrid, cgroup_v1 or process_group)")]
    UnknownBackend(String),
    /// [`SupervisorConfig::instance`] is empty, `.`, `..`, over 64 bytes, or has other characters than
    /// letters, digits, `-`, `_`, `.`; holds the name given.
    #[error(
        "invalid supervisor instance name {0:?}: use 1 to 64 letters, digits, '-', '_' or '.'"
    )]
    InvalidInstance(String),
    /// A launcher or watcher thread (or what it needs before it starts, such as `/dev/null`) could not
    /// be set up.
    #[error("could not start the {thread} thread: {source}")]
    Thread {
        /// Which thread: `launcher` or `watcher`.
        thread: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// [`Supervisor::start`] was called outside a tokio runtime.
    #[error("Supervisor::start must be called inside a tokio runtime")]
    NoRuntime,
    /// [`Supervisor::set_cpu_cap`] on a supervisor started without [`SupervisorConfig::cpu_cap`].
    #[error("the CPU cap is not prepared (set cpu_cap in the supervisor configuration)")]
    CpuCapOff,
    /// A CPU share outside (0, 1]; holds the share given.
    #[error(
        "invalid CPU share {0}: expected a fraction of the machine's CPUs above 0 and at most 1"
    )]
    InvalidCpuShare(f64),
    /// The kernel refused to change a job process's scheduling class (the `SCHED_IDLE` CPU cap; the
    /// daemon lacks `CAP_SYS_NICE` over the jobs' account, say). The other processes were changed.
    #[error("cannot change the scheduling class of job process {pid}: {source}")]
    SchedPolicy {
        /// The job process.
        pid: i32,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Why a job could not be started. Messages are shown to users verbatim.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The program does not resolve to an existing file (see [`resolve_program`]).
    #[error("program {program:?} not found")]
    ProgramNotFound {
        /// The program as the job named it.
        program: String,
    },
    /// The program resolved to a file that is not an executable regular file.
    #[error("{path} is not an executable file")]
    NotExecutable {
        /// The resolved path.
        path: PathBuf,
    },
    /// The program resolved to a file outside `jobs.programs`, the allowlist of programs jobs may run.
    #[error("program {program:?} ({resolved}) is not in jobs.programs, the programs jobs may run")]
    ProgramNotAllowed {
        /// The program as the job named it.
        program: String,
        /// Its canonical path, the one checked against the allowlist.
        resolved: PathBuf,
    },
    /// The working directory the job chose is refused: relative, with `..`, or outside `jobs.cwd_roots`.
    #[error("working directory {path} is not allowed: {reason}")]
    CwdNotAllowed {
        /// The directory as the job asked for it.
        path: PathBuf,
        /// Why it is refused, for the user.
        reason: String,
    },
    /// The working directory could not be created or resolved, or is not a directory.
    #[error("working directory {path}: {source}")]
    Cwd {
        /// The working directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// An input could not be put into the job's directory.
    #[error("input {name:?} from {source_path}: {source}")]
    Input {
        /// Its name in the job's directory.
        name: String,
        /// The file it comes from.
        source_path: PathBuf,
        /// Why not.
        source: std::io::Error,
    },
    /// Preparing the main process (argv, environment, stdio pipes) or starting it failed.
    #[error("could not start {program:?}: {source}")]
    Spawn {
        /// The program as the job named it.
        program: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The job's cgroup could not be created or set up (including its memory limit).
    #[error("could not set up job cgroup {path}: {source}")]
    Cgroup {
        /// The job cgroup directory.
        path: PathBuf,
        /// The I/O error from cgroupfs.
        source: std::io::Error,
    },
    /// The supervisor is shutting down (or has shut down) and starts nothing more.
    #[error("the supervisor is shutting down")]
    ShuttingDown,
    /// Its owner took it back (`Supervisor::withdraw`) before it got a running slot: nothing started.
    #[error("the launch was withdrawn before it started")]
    Withdrawn,
}

impl LaunchError {
    /// Whether the data volume refused what the start needed (no space, over quota): the job ends
    /// `storage_exhausted`, not `failed_to_start`.
    pub fn is_storage(&self) -> bool {
        let (LaunchError::Cwd { source, .. }
        | LaunchError::Spawn { source, .. }
        | LaunchError::Cgroup { source, .. }) = self
        else {
            return false;
        };
        matches!(
            source.raw_os_error(),
            Some(code) if code == rustix::io::Errno::NOSPC.raw_os_error()
                || code == rustix::io::Errno::DQUOT.raw_os_error()
        )
    }
}

/// One job attempt to start.
#[derive(Clone, Debug)]
pub struct LaunchRequest {
    /// The job this attempt belongs to.
    pub job_id: JobId,
    /// The attempt number, 1 for the first; part of the tree's marker.
    pub attempt: u32,
    /// What to run: a path (relative ones to `cwd`), or a name looked up in the job's `PATH`; also
    /// the process's `argv[0]`.
    pub program: String,
    /// The arguments after `argv[0]`.
    pub args: Vec<String>,
    /// Overlaid on the jobs' base environment (`JobSandbox::base_env`).
    pub env: BTreeMap<String, String>,
    /// Environment variables with secret values, overlaid last; their `Debug` shows no value.
    pub secrets: Vec<(String, aura_model::Secret)>,
    /// The directory the job starts in.
    pub cwd: PathBuf,
    /// Create `cwd` (and its parents) if missing: the engine's default per-job directory, which the
    /// job enters before it drops its privileges (so it works there even where the data dir's parents
    /// are closed to the job's account). Otherwise `cwd` is one the job chose: checked against
    /// `JobSandbox::cwd_roots`, and entered with the job's own privileges.
    pub create_cwd: bool,
    /// Files put into the created `cwd` before the job starts, each `(source, name)`: a reflink where
    /// the file system has one, else a hard link — never a byte copy. Only with `create_cwd`.
    pub inputs: Vec<(PathBuf, String)>,
    /// `aura_logs` segments for stdout/stderr go here.
    pub log_dir: PathBuf,
    /// Hard memory limit in bytes: set on the job's memory cgroup before it starts, or enforced by the
    /// watchdog where there is none.
    pub memory_limit: Option<u64>,
    /// Its place in line for a running slot (see [`Supervisor::limit_running`]); a clone lets the owner
    /// withdraw the launch while it waits.
    pub ticket: LaunchTicket,
    /// How to read the job's progress; `None` for a job that reports none.
    pub progress: Option<ProgressSetup>,
}

/// What a crash recovery did.
pub use aura_model::events::RecoveryReport;

/// The latest sampler snapshot of a running tree (a model type, so every layer can show it).
pub use aura_model::LiveUsage;

/// Resolves a program like `execvp` would (absolute path; a path with '/' relative to `cwd`; else a
/// search of `path_var` or the daemon's `PATH`) and checks it is an executable regular file.
pub fn resolve_program(
    program: &str,
    path_var: Option<&str>,
    cwd: Option<&Path>,
) -> Result<PathBuf, LaunchError> {
    let not_found = || LaunchError::ProgramNotFound {
        program: program.to_owned(),
    };
    if program.is_empty() {
        return Err(not_found());
    }
    let relative_to_cwd = |p: &Path| match cwd {
        Some(c) if p.is_relative() => c.join(p),
        _ => p.to_path_buf(),
    };
    let check = |p: PathBuf| -> Result<PathBuf, LaunchError> {
        match std::fs::metadata(&p) {
            Err(_) => Err(not_found()),
            Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => Ok(p),
            Ok(_) => Err(LaunchError::NotExecutable { path: p }),
        }
    };
    if program.contains('/') {
        return check(relative_to_cwd(Path::new(program)));
    }
    let daemon_path = std::env::var("PATH").ok();
    let search = path_var
        .or(daemon_path.as_deref())
        .unwrap_or("/usr/local/bin:/usr/bin:/bin");
    let mut first_error = None;
    for dir in search.split(':') {
        let dir = if dir.is_empty() {
            Path::new(".")
        } else {
            Path::new(dir)
        };
        match check(relative_to_cwd(dir).join(program)) {
            Ok(p) => return Ok(p),
            Err(e @ LaunchError::NotExecutable { .. }) if first_error.is_none() => {
                first_error = Some(e)
            }
            Err(_) => {}
        }
    }
    Err(first_error.unwrap_or_else(not_found))
}

/// Shared state of one supervisor.
#[derive(Debug)]
pub(crate) struct Inner {
    pub cfg: SupervisorConfig,
    pub layout: host::Layout,
    pub runtime: tokio::runtime::Handle,
    /// Emptied job cgroups for reuse.
    pub pool: Arc<pool::CgroupPool>,
    /// Emptied default working directories for reuse.
    workdirs: Arc<workdirs::WorkDirs>,
    /// Unbounded so that `launch` can queue in the caller's order without waiting; what is queued at once
    /// is bounded by the caller (the engine admits at most `max_concurrent` plus its standbys).
    launch_queue: Arc<launcher::Queue>,
    pub(crate) watcher: watcher::Watcher,
    /// The running-tree limit launches wait for.
    slots: Arc<launcher::Slots>,
    launchers: Arc<launcher::Launchers>,
    /// The watcher thread.
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
    shut_down: AtomicBool,
    /// This supervisor's id in the `subreaper` register (its trees' markers).
    owner: u64,
    /// The instance's CPU cap (`SupervisorConfig::cpu_cap`).
    cpu_cap: Option<Arc<cpucap::CpuCap>>,
}

/// A supervisor dropped without `shutdown` (a caller's error path) still lets its launcher threads end
/// once they have nothing left to wait for, and the watcher with them.
impl Drop for Inner {
    fn drop(&mut self) {
        self.slots.close();
        self.launch_queue.close();
        self.watcher.stop();
    }
}

impl std::fmt::Debug for LauncherMsg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LauncherMsg")
    }
}

/// The process-tree supervisor; cheap to clone. Running trees keep it alive: its launcher threads (the
/// parents of every job, see `PR_SET_PDEATHSIG`) end when the last clone and tree are gone or at
/// [`shutdown`](Supervisor::shutdown).
#[derive(Clone, Debug)]
pub struct Supervisor {
    inner: Arc<Inner>,
}

impl Supervisor {
    /// Detects (or forces) the backend, creates this instance's cgroup dirs, starts the launcher and
    /// watcher threads. Forcing a backend the host lacks is an error naming what is missing. Must be
    /// called inside a tokio runtime.
    pub fn start(cfg: SupervisorConfig) -> Result<Supervisor, SupervisorError> {
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| SupervisorError::NoRuntime)?;
        let valid = !cfg.instance.is_empty()
            && cfg.instance.len() <= 64
            && cfg.instance != "."
            && cfg.instance != ".."
            && cfg
                .instance
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !valid {
            return Err(SupervisorError::InvalidInstance(cfg.instance.clone()));
        }
        let host_cgroups = host::HostCgroups::read();
        let layout = host::choose(cfg.backend, &host_cgroups, &cfg.instance)?;
        if layout.backend == Backend::ProcessGroup {
            // Without cgroups only a subreaper keeps a job's orphans within reach.
            subreaper::enable().map_err(|e| SupervisorError::BackendUnavailable {
                backend: BackendChoice::ProcessGroup,
                reason: format!(
                    "cannot become the subreaper of the jobs (PR_SET_CHILD_SUBREAPER): {e}"
                ),
            })?;
        }
        let owner = subreaper::new_owner(&cfg.instance);
        let cpu_cap = cfg
            .cpu_cap
            .then(|| Arc::new(cpucap::CpuCap::start(&layout, &host_cgroups, &cfg.instance)));
        let pool = Arc::new(pool::CgroupPool::new(&layout, cfg.cgroup_pool));
        let workdirs = Arc::new(workdirs::WorkDirs::new(
            cfg.cgroup_pool,
            layout.backend != Backend::ProcessGroup,
            cfg.sandbox.identity.as_ref().map(|id| (id.uid, id.gid)),
        ));
        let (base_env, dev_null) =
            launcher::Launcher::environment(&cfg.sandbox).map_err(|source| {
                SupervisorError::Thread {
                    thread: "launcher",
                    source,
                }
            })?;
        let (watcher, watcher_thread) = watcher::Watcher::start(watcher::Settings {
            sample_interval: cfg.sample_interval,
            watch_interval: cfg.memory_watch_interval,
            ending: Arc::new(tree::Ending {
                pool: pool.clone(),
                workdirs: workdirs.clone(),
                runtime: runtime.clone(),
                kill_wait: cfg.kill_wait,
            }),
        })
        .map_err(|source| SupervisorError::Thread {
            thread: "watcher",
            source,
        })?;
        let launch_queue = Arc::new(launcher::Queue::default());
        let slots = Arc::new(launcher::Slots::default());
        let queue = launch_queue.clone();
        slots.on_ready(move || queue.ready());
        let launchers = launcher::Launchers::start(
            cfg.launchers,
            launcher::Launcher {
                layout: layout.clone(),
                pool: pool.clone(),
                workdirs: workdirs.clone(),
                watcher: watcher.clone(),
                slots: slots.clone(),
                oom_score_adj: cfg.job_oom_score_adj,
                nice: cfg.job_nice,
                cpu_cap: cpu_cap.clone(),
                log_cap: cfg.log_cap,
                log_min_free: cfg.log_min_free,
                sandbox: Arc::new(cfg.sandbox.clone()),
                rlimits: spawn::rlimits(&cfg.sandbox),
                threads_without_nnp: Default::default(),
                base_env,
                dev_null,
                instance: cfg.instance.clone(),
                owner,
            },
            launch_queue.clone(),
        )
        .map_err(|source| {
            watcher.stop();
            SupervisorError::Thread {
                thread: "launcher",
                source,
            }
        })?;
        let sup = Supervisor {
            inner: Arc::new(Inner {
                cfg,
                layout,
                runtime,
                pool,
                workdirs,
                launch_queue,
                watcher,
                slots,
                launchers,
                threads: Mutex::new(vec![watcher_thread]),
                shut_down: AtomicBool::new(false),
                owner,
                cpu_cap,
            }),
        };
        tracing::info!(description = %sup.description(), "process supervisor started");
        Ok(sup)
    }

    /// The backend this supervisor uses, as detected or forced at start.
    pub fn backend(&self) -> Backend {
        self.inner.layout.backend
    }

    /// One line for the start-up log: backend, cgroup paths and capabilities, the CPU cap's mechanism.
    pub fn description(&self) -> String {
        let cap = match &self.inner.cpu_cap {
            None => "off".to_owned(),
            Some(cap) => match cap.dir() {
                Some(dir) => format!("{} ({})", cap.mechanism(), dir.display()),
                None => format!("{} (no hard share)", cap.mechanism()),
            },
        };
        format!("{} cpu_cap={cap}", self.backend_description())
    }

    fn backend_description(&self) -> String {
        let l = &self.inner.layout;
        let path = |p: &Option<PathBuf>| {
            p.as_ref()
                .map_or("-".to_owned(), |p| p.display().to_string())
        };
        match l.backend {
            Backend::CgroupV2 => format!(
                "backend=cgroup_v2 cgroup={} kill=cgroup.kill memory={} processes=cgroup.procs cpu=cpu.stat",
                path(&l.v2_root),
                if l.v2_memory { "memory.peak (kernel high-water mark)" } else { "sampled RSS (memory controller not delegated)" },
            ),
            Backend::Hybrid => format!(
                "backend=hybrid cgroup_v2={} (membership, cgroup.kill, cpu.stat) memory_v1={} (memory.max_usage_in_bytes, kernel high-water mark)",
                path(&l.v2_root),
                path(&l.v1_root)
            ),
            Backend::CgroupV1 => format!(
                "backend=cgroup_v1 memory_v1={} (membership, kill by signalling every member, memory.max_usage_in_bytes) cpu=wait4 rusage",
                path(&l.v1_root)
            ),
            Backend::ProcessGroup => format!("backend=process_group (no cgroups: killpg + descendants, subreaper of every job, orphans attributed by {MARKER_VAR}; memory=sampled RSS; cpu=wait4 rusage)"),
        }
    }

    /// How the CPU cap is enforced ([`set_cpu_cap`](Supervisor::set_cpu_cap)); `None` when
    /// [`SupervisorConfig::cpu_cap`] is off.
    pub fn cpu_cap_mechanism(&self) -> Option<CpuCapMechanism> {
        self.inner.cpu_cap.as_ref().map(|cap| cap.mechanism())
    }

    /// Caps the CPU of all of this supervisor's jobs together at `share` (0 < share ≤ 1) of the CPUs
    /// the daemon may run on (its affinity: every CPU, usually), or lifts the cap (`None`). It applies
    /// to the running jobs at once and to every job started later, until changed again. Returns the
    /// mechanism (chosen at start, see [`CpuCapMechanism`]):
    /// - [`CgroupV2CpuMax`](CpuCapMechanism::CgroupV2CpuMax), [`CgroupV1Quota`](CpuCapMechanism::CgroupV1Quota):
    ///   one write to the instance's cgroup; the kernel holds the jobs to the share within each period
    ///   (100 ms by default).
    /// - [`SchedIdle`](CpuCapMechanism::SchedIdle): every thread of every job process is moved to (or
    ///   out of) the idle scheduling class — no hard share: idle-class jobs get only the CPU no other
    ///   process wants. The share itself is not used.
    ///
    /// Errors: [`CpuCapOff`](SupervisorError::CpuCapOff) without [`SupervisorConfig::cpu_cap`],
    /// [`InvalidCpuShare`](SupervisorError::InvalidCpuShare), a cgroupfs write refused, or a process
    /// whose class could not be changed. Blocking (cgroupfs; for `SchedIdle`, `/proc` and a syscall per
    /// job thread): call from a thread that may block.
    pub fn set_cpu_cap(&self, share: Option<f64>) -> Result<CpuCapMechanism, SupervisorError> {
        let cap = self
            .inner
            .cpu_cap
            .as_ref()
            .ok_or(SupervisorError::CpuCapOff)?;
        cap.set(share, || self.inner.watcher.trees())
    }

    /// CPU time (user + system, microseconds) used by all of this supervisor's jobs so far, from the
    /// hierarchical `cpu.stat` of the instance's cgroup v2 root; `None` on backends without one. Blocking
    /// (one small cgroupfs read): call from a thread that may block.
    pub fn jobs_cpu_usec(&self) -> Option<u64> {
        let root = self.inner.layout.v2_root.as_deref()?;
        cgroup::cpu_usec(root).map(|(user, system)| user + system)
    }

    /// How long `input` (a path relative to `cwd`, or a URL) plays, as `ffprobe` reports it — run as the
    /// jobs' account in `cwd` and killed after `timeout`. `None` when it cannot tell. Blocking: call from
    /// a thread that may block.
    pub fn probe_duration(
        &self,
        ffprobe: &str,
        input: &str,
        cwd: &Path,
        timeout: Duration,
    ) -> Option<Duration> {
        probe::media_duration(&self.inner.cfg.sandbox, ffprobe, input, cwd, timeout)
    }

    /// At most `max` trees run at once from now on (`None`: no limit, the default): a launch beyond it
    /// waits, fully prepared (parked), and starts on the thread that reaps a tree the moment one is gone —
    /// in the order `launch` was called. A tree counts from its clone until it is known empty (its main process
    /// reaped and no process left in it).
    pub fn limit_running(&self, max: Option<usize>) {
        self.inner.slots.set_limit(max);
    }

    /// Withdraws a launch still waiting for a running slot: it starts nothing and its `launch` returns
    /// [`LaunchError::Withdrawn`]. `false` once it has taken its slot (starting or started): stop the tree
    /// instead.
    pub fn withdraw(&self, ticket: &LaunchTicket) -> bool {
        self.inner.slots.withdraw(ticket)
    }

    /// Starts one job attempt: waits for a running slot if the limit is reached (see
    /// [`limit_running`](Supervisor::limit_running)).
    ///
    /// The launch is registered and queued when this is called, not when the future is first polled:
    /// launches take their slots in the order of these calls.
    pub fn launch(
        &self,
        req: LaunchRequest,
    ) -> impl std::future::Future<Output = Result<RunningTree, LaunchError>> + Send + 'static {
        let inner = self.inner.clone();
        let job_id = req.job_id;
        let queued = if inner.shut_down.load(Ordering::Relaxed) {
            Err(LaunchError::ShuttingDown)
        } else {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let ticket = req.ticket.clone();
            inner
                .slots
                .register(&ticket, || {
                    inner
                        .launch_queue
                        .launch(LauncherMsg::Launch(Box::new(req), tx))
                })
                .map(|()| rx)
                .map_err(|_| {
                    inner.slots.forget(&ticket);
                    LaunchError::ShuttingDown
                })
        };
        async move {
            let spawned = queued?.await.map_err(|_| LaunchError::ShuttingDown)??;
            let tree = &spawned.stats.tree;
            let handle = TreeHandle {
                backend: tree.backend,
                pid: tree.pid as u32,
                start_ticks: tree.start_ticks,
                cgroups: tree.dirs(),
            };
            tracing::debug!(%job_id, pid = tree.pid, backend = %tree.backend, "job launched");
            Ok(RunningTree::new(
                inner,
                handle,
                spawned.stats,
                spawned.pidfd,
                spawned.started,
                spawned.started_at,
            ))
        }
    }

    /// After a daemon crash: kills every process of the given trees and removes the job cgroups.
    ///
    /// Cgroup backends: every job cgroup under this instance's roots, listed or not — so call it at
    /// start-up, before launching anything. Process-group handles: the group and its descendants, only
    /// if the leader's start time equals `start_ticks` (or, leader gone, the group members started no
    /// earlier than it). Every backend: any process carrying a marker of this instance that is not one of
    /// this supervisor's trees, listed or not.
    pub async fn recover(&self, leftovers: Vec<TreeHandle>) -> RecoveryReport {
        let inner = self.inner.clone();
        let bound = self.inner.cfg.kill_wait;
        let report = self
            .inner
            .runtime
            .spawn_blocking(move || {
                let who = recover::Recovering {
                    layout: &inner.layout,
                    instance: &inner.cfg.instance,
                    owner: inner.owner,
                };
                recover::recover(&who, &leftovers, bound)
            })
            .await
            .unwrap_or_default();
        tracing::info!(
            killed = report.killed_processes,
            removed_cgroups = report.removed_cgroups,
            "recovery done"
        );
        report
    }

    /// Stops and joins the launcher and watcher threads and removes this instance's (now empty) cgroup
    /// dirs. Call after every `RunningTree` is finished: the launcher thread's exit SIGKILLs (via
    /// `PR_SET_PDEATHSIG`) any job main process still running.
    pub async fn shutdown(&self) {
        if self.inner.shut_down.swap(true, Ordering::SeqCst) {
            return;
        }
        // Parked launches are given up, then the launcher threads read their Stop.
        self.inner.slots.close();
        self.inner.launch_queue.close();
        let inner = self.inner.clone();
        let _ = self
            .inner
            .runtime
            .spawn_blocking(move || {
                // A launcher thread still waiting for a tree (its owner did not finish it, or it took its
                // slot just before the close) has it killed, as its exit would.
                loop {
                    let launchers = inner.launchers.take_threads();
                    if launchers.is_empty() {
                        break;
                    }
                    for t in launchers {
                        while !t.is_finished() {
                            inner.watcher.kill_waited_for();
                            std::thread::sleep(Duration::from_millis(10));
                        }
                        let _ = t.join();
                    }
                }
                inner.watcher.stop();
                let threads = std::mem::take(&mut *crate::lock(&inner.threads));
                for t in threads {
                    let _ = t.join();
                }
                inner.pool.drain();
                inner.workdirs.drain();
                for root in inner.layout.v2_root.iter().chain(inner.layout.v1_root.iter()) {
                    if let Err(e) = cgroup::rmdir(root, Duration::from_millis(200)) {
                        tracing::warn!(cgroup = %root.display(), error = %e, "could not remove instance cgroup");
                    }
                }
                if let Some(cap) = &inner.cpu_cap {
                    cap.remove_dir();
                }
            })
            .await;
    }
}

//! Typed configuration of `aura serve`: defaults, then a TOML file, then `AURA_*` environment variables,
//! then command-line flags. Every field is documented in README.md, and by its `///` doc here, which
//! `aura config --example` prints (see `config_doc`): a new key needs one.

use aura_model::ByteSize;
use aura_supervisor::BackendChoice;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where the HTTP API listens unless configured: loopback only, port 7411.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7411";
/// The name jobs submitted with the data dir's own token are recorded under (reserved).
pub const LOCAL_TOKEN_NAME: &str = "local-admin";
/// The longest interval, timeout or window a setting may name: more is a typo (and would overflow the
/// clock arithmetic of the threads that wait for it).
const MAX_SETTING_DURATION: Duration = Duration::from_secs(24 * 3600);
/// See `SupervisorSection::daemon_nice`.
const DEFAULT_DAEMON_NICE: i32 = -10;

/// The whole configuration of `aura serve`, section by section as the TOML file has them.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Database, job directories and logs. Default: `./aura-data`.
    pub data_dir: PathBuf,
    /// Address of the HTTP API. Default: 127.0.0.1:7411 (loopback only).
    pub listen: SocketAddr,
    /// Jobs running at once. Default: the number of cores.
    pub max_concurrent: usize,
    /// Jobs admitted ahead of a free slot, each started the moment a running job's tree is gone (shown as
    /// queued until then). Default: 2 (with one, the next launch was still being prepared at a third of
    /// the trees' ends in a stream of short jobs, and the slot waited for it); 0 admits only into free
    /// slots.
    pub standby_jobs: usize,
    /// Requeue jobs stopped by a graceful shutdown. Default: true.
    pub requeue_on_shutdown: bool,
    /// The most a graceful shutdown (SIGTERM, SIGINT) takes, whatever the jobs' stop sequences say: then
    /// every job tree is killed. A second signal kills them at once. Default: 30s.
    #[serde(with = "aura_model::humantime_serde_compat")]
    pub shutdown_grace: Duration,
    /// Crash-loop protection: a job that was running at this many unclean daemon deaths in a row (crash,
    /// SIGKILL, power loss) ends `quarantined` at the next start instead of being requeued; 0 turns it
    /// off. Default: 2.
    pub quarantine_after: u32,
    /// Space set aside next to the database (`aura.db-reserve`) and released when the data volume is
    /// full, so that the state changes of jobs already running still commit. Default: 2MiB.
    pub database_reserve: ByteSize,
    /// Threads of the async runtime, which runs the HTTP API and the engine; everything that blocks
    /// (SQLite, `/proc`, process starts and reaping, log capture) has threads of its own. Default: 1 —
    /// the async work per job is a few short steps, and a second worker cost more in wake-ups than it
    /// gave (BENCHMARKS.md, "The daemon above its jobs").
    pub async_workers: usize,
    /// `[supervisor]`: how job process trees are started, watched and killed.
    pub supervisor: SupervisorSection,
    /// `[admission]`: what jobs may reserve, and how a job's memory request is learned.
    pub admission: AdmissionSection,
    /// Live admission guards (defaults after `=`): admission pauses while available memory is under
    /// `min_available_memory` = 0.20 (resumes over `resume_available_memory` = 0.25), while PSI memory
    /// `some avg10` is over `max_memory_pressure` = 40 % (resumes under `resume_memory_pressure` = 20 %), or
    /// while CPU use outside Aura's jobs averaged over `cpu_window` = 10s is over `max_outside_cpu` = 0.85
    /// (resumes under `resume_outside_cpu` = 0.75), or while the data dir's volume has less than
    /// `min_free_disk` = 0.02 free (resumes over `resume_free_disk` = 0.04; a share or a size). Judged
    /// every `interval` = 1s; `enabled` = true.
    /// Memory thresholds are shares of physical memory (`0.2`, `"20%"`) or sizes (`"2GiB"`).
    /// Stage 2, the memory pressure responder: memory is critical below `critical_available_memory` = 0.05
    /// (clears above `critical_resume_available_memory` = 0.10) or above PSI memory `full avg10`
    /// `critical_memory_pressure` = 30 % (clears below `critical_resume_memory_pressure` = 10 %); critical
    /// for `critical_sustain` = 3s, one running job is stopped with its stop sequence and requeued asking
    /// for `requeue_growth` = 1.5 × max(request, peak); no other victim within `victim_cooldown` = 30s.
    /// Emergency stage: below `fast_watch_below` = 0.15 available the guard reads /proc/meminfo every
    /// `fast_interval` = 100ms; below `emergency_available_memory` = 0.04 it kills a victim's tree at once.
    /// `[guards.throttle]` keeps the desktop responsive: while CPU use outside Aura's jobs averaged over
    /// `window` = 2s is above `above_outside_cpu` = 0.2, all running jobs together are capped at
    /// `cpu_share` = 0.5 of the machine (one cpu controller write; SCHED_IDLE without one), lifted below
    /// `below_outside_cpu` = 0.1; `enabled` = true.
    pub guards: aura_engine::GuardConfig,
    /// `[metrics]`: the host sampler.
    pub metrics: MetricsSection,
    /// Warning thresholds of `/api/diagnostics/resources` (warnings also degrade `/readyz`):
    /// `max_open_fds` = 1000, `max_rss` = 2GiB, `max_threads` = 200, `max_extra_children` = 10.
    pub diagnostics: aura_engine::DiagnosticsConfig,
    /// `[warnings]`: the watcher that raises and clears warnings on its own (engine events
    /// `warning_raised`/`warning_cleared`, a log line, `aura_warning_active{warning}`), every `interval` =
    /// 5s: the `[diagnostics]` thresholds (cleared at or under threshold × `clear_ratio` = 0.9), host CPU
    /// busy over `host_cpu` = 0.9 (cleared under `host_cpu_clear` = 0.8) and memory in use over
    /// `host_memory` = 0.85 (cleared under `host_memory_clear` = 0.8), each sustained for `window` = 60s,
    /// and a GPU over its NVML slowdown temperature (cleared `gpu_clear_margin` = 5 °C under it);
    /// `enabled` = true.
    pub warnings: aura_engine::WarningConfig,
    /// `[janitor]`: retention of the data dir — `tmp/` and `cache/` (hourly, older than 24h),
    /// `uploads/` no unfinished job names (hourly, 48h), `work/<id>` (daily: succeeded jobs' archived to
    /// `archive/work/` after 7 days, others deleted after 3), logs compressed (daily, 7 days),
    /// archives deleted (daily, 30 days), job history exported to `archive/history/` and deleted (weekly,
    /// 30 days; engine events 90 days), the database compacted (weekly). Each task's `enabled`, `every`
    /// and `older_than` can be set (`[janitor.tmp]` …). Below `low_free_disk` = 0.10 of the data volume
    /// available, the space-freeing tasks run early. `enabled` = true (false: only `aura cleanup` runs them).
    pub janitor: aura_engine::JanitorConfig,
    /// `[api]`: the HTTP API's tokens, allowed hosts and origins, and limits.
    pub api: ApiSection,
    /// `[jobs]`: the account, limits, environment, programs and directories of jobs.
    pub jobs: JobsSection,
    /// `[uploads]`: files sent with `POST /api/uploads` (`aura upload`), kept under their SHA-256 in
    /// `uploads/` for job specs' `inputs`.
    pub uploads: UploadsSection,
    /// `[media]`: media jobs. A job reporting progress (FFmpeg, the generic protocol) that has not
    /// advanced for `stall_after` = 2m ends `stalled` (a spec's `stall_after` wins); `ffprobe` =
    /// "ffprobe" measures FFmpeg inputs whose duration the arguments do not tell (empty: never), each
    /// run killed after `probe_timeout` = 10s; event streams get running jobs' progress every
    /// `progress_interval` = 1s.
    pub media: aura_engine::MediaConfig,
    /// `[log]`: the daemon's own log on stderr (its filter is `AURA_LOG`, e.g. `info` or
    /// `aura_engine=debug`).
    pub log: LogSection,
    /// Where jobs are stored: unset, or `sqlite`: `aura.db` in the data dir (one node);
    /// `postgres://user@host:port/dbname`: fleet mode, every node pointed at the same database shares one
    /// queue (see `[fleet]`). Never a password in it: the password is the secret `fleet.password_secret`
    /// names. `aura serve --store` wins. Default: unset.
    pub store: Option<String>,
    /// `[fleet]`: this node in a fleet (with a `postgres://` store): `node_name` (default: the host name
    /// and the start of the data dir's instance id), `tags` jobs may require with the label
    /// `requires=gpu,nvenc` (default: none), `advertise_url` other nodes reach its API at (default:
    /// `http://` and the listen address), `heartbeat_timeout` = 15s (a node silent this long is dead and its
    /// jobs are rescued; a node cut off from the database this long stops its jobs), `prefetch` = 32 (jobs
    /// claimed beyond the running slots), `commit_window` = 25ms (how long state changes nobody waits
    /// for gather before one commit), `pool_size` = 8, `connect_timeout` = 5s, and the names of two
    /// secrets: `password_secret` = "store_password" (the database password, `AURA_SECRET_STORE_PASSWORD`)
    /// and `token_secret` = "fleet_token" (the token every node shares, accepted as an admin token named
    /// `fleet` and sent with requests forwarded to the node that holds a job).
    pub fleet: FleetSection,
}

/// This node's part in a fleet.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FleetSection {
    /// This node's name. Default: the host name and the start of the instance id.
    pub node_name: Option<String>,
    /// What jobs may require of this node. Default: none.
    pub tags: Vec<String>,
    /// Where other nodes reach this node's API. Default: `http://<listen address>`.
    pub advertise_url: Option<String>,
    /// A node silent this long is declared dead. Default: 15s.
    #[serde(with = "aura_model::humantime_serde_compat")]
    pub heartbeat_timeout: Duration,
    /// Jobs claimed beyond the running slots (`max_concurrent`), so that short jobs never wait for a
    /// claim; given back to the fleet when none of this node's jobs ended for 2 s. Default: 32.
    pub prefetch: usize,
    /// How long state changes nobody waits for (a job started, a job ended with nobody waiting on it)
    /// gather before they are committed together: every commit is a round trip to the database and
    /// holds the fleet's event lock, so under a stream of short jobs a longer window carries more jobs
    /// per commit. Other nodes see such a change this much later at most. Default: 25ms.
    #[serde(with = "aura_model::humantime_serde_compat")]
    pub commit_window: Duration,
    /// Read connections to the database. Default: 8.
    pub pool_size: usize,
    /// How long connecting may take before a call fails as unavailable. Default: 5s.
    #[serde(with = "aura_model::humantime_serde_compat")]
    pub connect_timeout: Duration,
    /// The secret holding the database password. Default: store_password.
    pub password_secret: String,
    /// The secret every node shares to authenticate to the others. Default: fleet_token.
    pub token_secret: String,
}

impl Default for FleetSection {
    fn default() -> Self {
        FleetSection {
            node_name: None,
            tags: Vec::new(),
            advertise_url: None,
            heartbeat_timeout: Duration::from_secs(15),
            prefetch: 32,
            commit_window: Duration::from_millis(25),
            pool_size: 8,
            connect_timeout: Duration::from_secs(5),
            password_secret: "store_password".into(),
            token_secret: "fleet_token".into(),
        }
    }
}

/// Where `store` points.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreKind {
    /// The data dir's SQLite database.
    Sqlite,
    /// A PostgreSQL database shared by a fleet (the URL, password-free).
    Postgres(String),
}

impl Config {
    /// Reads `store`: `sqlite`/unset, or a `postgres://` URL without a password. A password in the URL
    /// is refused: it would show in `ps`, shell history and logs.
    pub fn store_kind(&self) -> anyhow::Result<StoreKind> {
        let Some(store) = self
            .store
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
        else {
            return Ok(StoreKind::Sqlite);
        };
        if store == "sqlite" {
            return Ok(StoreKind::Sqlite);
        }
        let Some(rest) = store
            .strip_prefix("postgres://")
            .or_else(|| store.strip_prefix("postgresql://"))
        else {
            // Only the scheme is repeated: whatever follows may hold a password.
            let scheme = store.split(':').next().unwrap_or("");
            anyhow::bail!(
                "store {scheme:?}… is neither `sqlite` nor a `postgres://user@host:port/dbname` URL"
            );
        };
        let authority = rest.split(['/', '?']).next().unwrap_or("");
        if let Some((userinfo, _)) = authority.rsplit_once('@') {
            if userinfo.contains(':') {
                anyhow::bail!(
                    "the store URL holds a password: put it in the secret `{}` instead (secrets.toml, or the \
                     AURA_SECRET_{} variable), so that it never shows in `ps`, logs or shell history",
                    self.fleet.password_secret,
                    self.fleet.password_secret.to_ascii_uppercase()
                );
            }
        }
        if rest.contains("password=") {
            anyhow::bail!(
                "the store URL holds a password parameter: put it in the secret `{}` instead",
                self.fleet.password_secret
            );
        }
        Ok(StoreKind::Postgres(store.to_owned()))
    }
}

/// How the daemon writes its log.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    /// `human` (one readable line per event) or `json` (one JSON object per line: `timestamp`, `level`,
    /// `target`, `message`, the event's fields such as `job_id`, and its spans), for log shippers.
    /// `aura serve --log-format` wins. Default: human.
    pub format: LogFormat,
}

/// The daemon's log format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// One readable line per event.
    #[default]
    Human,
    /// One JSON object per line.
    Json,
}

/// The host sampler behind `/api/metrics/system`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSection {
    /// How often the host is sampled. Default: 1s.
    #[serde(with = "aura_model::humantime_serde_compat")]
    pub interval: Duration,
    /// Snapshots kept in memory for the dashboard. Default: 300 (5 minutes at 1 s).
    pub history: usize,
}

impl Default for MetricsSection {
    fn default() -> Self {
        let host = aura_host::SamplerConfig::default();
        MetricsSection {
            interval: host.interval,
            history: host.history,
        }
    }
}

/// What admission lets jobs reserve, and how it fills in the memory request of a job that states none.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdmissionSection {
    /// Memory jobs may reserve. Default: physical memory minus `memory_headroom`.
    pub memory: Option<ByteSize>,
    /// Kept free for the rest of the machine when `memory` is not set. Default: 500 MiB.
    pub memory_headroom: ByteSize,
    /// Cores jobs may reserve. Default: the number of cores.
    pub cpu: Option<f64>,
    /// Bytes of declared output the data dir's volume accepts. Default: its free space at start-up.
    pub disk: Option<ByteSize>,
    /// Reserved for a job that states no memory request and whose kind has too little history. Default: 2 GiB.
    pub default_memory_request: ByteSize,
    /// Learned requests: this percentile of a kind's recorded peaks… Default: 0.95.
    pub learn_percentile: f64,
    /// …plus this margin (0.2 = 20 %). Default: 0.2.
    pub learn_margin: f64,
    /// …from at least this many successful runs. Default: 5.
    pub learn_min_samples: usize,
    /// Most queued jobs; more submissions get 429 with Retry-After. Default: 100000.
    pub queue_cap: usize,
    /// Named limits (providers): `[admission.limits.openai] max_concurrent = 2, per_minute = 60`.
    pub limits: std::collections::BTreeMap<String, aura_admission::LimitConfig>,
    /// Read GPUs (VRAM) through NVML at start-up. Default: true.
    pub detect_gpus: bool,
    /// Concurrent NVENC sessions per GPU (not reported by NVML). Default: 8.
    pub gpu_encoder_sessions: u32,
    /// GPUs as configured instead of detected: `gpus = [{ vram = "24GiB", encoder_sessions = 8 }]`.
    pub gpus: Vec<GpuSection>,
}

/// One GPU as configured in `admission.gpus`; its device index is its place in the list.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuSection {
    /// The GPU's memory (VRAM) jobs may reserve.
    pub vram: ByteSize,
    /// Default: `gpu_encoder_sessions`.
    pub encoder_sessions: Option<u32>,
}

impl Default for AdmissionSection {
    fn default() -> Self {
        let engine = aura_engine::AdmissionConfig::default();
        AdmissionSection {
            memory: None,
            memory_headroom: ByteSize(engine.memory_headroom_bytes),
            cpu: None,
            disk: None,
            default_memory_request: ByteSize(engine.estimator.default_bytes),
            learn_percentile: engine.estimator.percentile,
            learn_margin: engine.estimator.margin,
            learn_min_samples: engine.estimator.min_samples,
            queue_cap: engine.queue_cap,
            limits: engine.limits,
            detect_gpus: engine.detect_gpus,
            gpu_encoder_sessions: engine.gpu_encoder_sessions,
            gpus: Vec::new(),
        }
    }
}

impl AdmissionSection {
    /// These settings as the engine takes them.
    pub fn to_engine(&self) -> aura_engine::AdmissionConfig {
        aura_engine::AdmissionConfig {
            memory_bytes: self.memory.map(|m| m.bytes()),
            memory_headroom_bytes: self.memory_headroom.bytes(),
            cpu_cores: self.cpu,
            disk_bytes: self.disk.map(|d| d.bytes()),
            estimator: aura_admission::estimate::Estimator {
                percentile: self.learn_percentile,
                margin: self.learn_margin,
                min_samples: self.learn_min_samples,
                default_bytes: self.default_memory_request.bytes(),
            },
            learn_window: aura_engine::AdmissionConfig::default().learn_window,
            limits: self.limits.clone(),
            queue_cap: self.queue_cap,
            detect_gpus: self.detect_gpus,
            gpu_encoder_sessions: self.gpu_encoder_sessions,
            gpus: self
                .gpus
                .iter()
                .enumerate()
                .map(|(i, g)| aura_admission::GpuDevice {
                    index: i as u32,
                    vram_bytes: g.vram.bytes(),
                    encoder_sessions: g.encoder_sessions.unwrap_or(self.gpu_encoder_sessions),
                })
                .collect(),
        }
    }
}

/// How job process trees are run: the backend, sampling, output capture, priorities and kill timing.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SupervisorSection {
    /// `auto`, `cgroup_v2`, `hybrid`, `cgroup_v1` or `process_group` (the no-cgroup fallback).
    pub backend: BackendChoice,
    /// How often running trees are sampled (memory, processes, CPU). Default: 250ms.
    #[serde(with = "aura_model::humantime_serde_compat")]
    pub sample_interval: Duration,
    /// Captured output kept per stream; the newest bytes are kept. Default: 16 MiB.
    pub log_cap: ByteSize,
    /// `oom_score_adj` of job processes, so the kernel kills a job before the daemon. Default: 500.
    pub job_oom_score_adj: i32,
    /// Nice value of the daemon's own threads, so that its short wake-ups (reap, account, start the next
    /// job) run before a busy job's time slice ends. Needs `CAP_SYS_NICE`; without it the daemon warns
    /// and keeps its own. Default: -10.
    pub daemon_nice: i32,
    /// Nice value every job starts with. Default: 0 (what a job started from a shell gets).
    pub job_nice: i32,
    /// How long to wait for a killed tree to disappear. Default: 2s.
    #[serde(with = "aura_model::humantime_serde_compat")]
    pub kill_wait: Duration,
    /// How often jobs with a memory limit are sampled: the no-cgroup fallback's watchdog reaction time (a
    /// job may overshoot its limit by what it allocates in one interval). Default: 50ms.
    #[serde(with = "aura_model::humantime_serde_compat")]
    pub memory_watch_interval: Duration,
}

/// The HTTP API: who may call it, from where, and its limits.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiSection {
    /// Largest accepted request body. Default: 2 MiB.
    pub max_body: ByteSize,
    /// API tokens (`[[api.tokens]]`: `name`, `hash` — from `aura token create` — `scopes` of read, submit,
    /// admin, optional `max_queued`). Required to listen on a non-loopback address.
    pub tokens: Vec<aura_server::auth::TokenConfig>,
    /// Create an admin token for the local CLI at first start (`<data dir>/api-token`, mode 0600) and
    /// accept it. Default: true.
    pub local_token: bool,
    /// `Host` header values accepted besides `localhost`, `127.0.0.1` and `[::1]` with the listen port:
    /// `name:port`, or `name` for any port. Default: none (plus the listen address when it is a
    /// specific one).
    pub allowed_hosts: Vec<String>,
    /// Browser origins (`https://studio.example`) besides the daemon's own that may call the API;
    /// CORS is answered for these only. Default: none.
    pub allowed_origins: Vec<String>,
    /// Serve `/metrics` without a token. Default: false.
    pub public_metrics: bool,
    /// Connections open at once; at the cap the oldest idle one is closed, and only when every one is
    /// busy is a new one refused (503). Lowered to fit the daemon's open-file limit. Default: 2048.
    pub max_connections: usize,
    /// Event streams (`/api/events/stream`, `/api/jobs/{id}/events/stream`) open at once, all clients
    /// together; one more is refused (503 `too_many_subscribers`). Each also holds a connection.
    /// Default: 1024.
    pub max_event_streams: usize,
    /// How often an idle event stream gets a heartbeat (a comment line), which also finds clients that
    /// are gone. Default: 15s.
    #[serde(with = "aura_model::humantime_serde_compat")]
    pub stream_heartbeat: Duration,
    /// The kernel send buffer of an event stream's connection (the kernel doubles it), e.g. "256KiB":
    /// how much a client that stops reading can hold in the kernel before it falls behind the stream's
    /// buffer and is dropped. Default: none, the kernel's TCP autotuning (up to `net.ipv4.tcp_wmem`).
    pub stream_send_buffer: Option<ByteSize>,
    /// How long a client may take to send a request's headers (also closes idle kept-alive
    /// connections). Default: 30s (a flood of idle connections meets the cap first, which closes the
    /// oldest idle ones).
    #[serde(with = "aura_model::humantime_serde_compat")]
    pub header_timeout: Duration,
    /// How long a request body may take to arrive. Default: 30s.
    #[serde(with = "aura_model::humantime_serde_compat")]
    pub request_timeout: Duration,
    /// Largest request headers, all together. Default: 16 KiB.
    pub max_header_bytes: ByteSize,
    /// Longest request target (path and query). Default: 8 KiB.
    pub max_uri_bytes: ByteSize,
    /// Dashboard sessions (sign-ins) kept at once; one more forgets the least recently used. Default:
    /// 1024.
    pub max_sessions: usize,
    /// A dashboard session unused this long is forgotten (each request restarts the clock). Default:
    /// 7 days.
    #[serde(with = "aura_model::humantime_serde_compat")]
    pub session_idle: Duration,
}

/// What jobs may do: the account they run as, their limits and environment, the programs and
/// directories they may use, the secrets they may name.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JobsSection {
    /// The account jobs run as when the daemon runs as root. Default: the system user `aura` if it
    /// exists, else `nobody`. `root` only when named here (with a warning at start-up). A daemon that
    /// is not root runs jobs as itself and refuses any other name.
    pub user: Option<String>,
    /// Programs jobs may run: names (searched in the jobs' `PATH` at start-up) or absolute paths of
    /// files or directories (every executable directly inside); symlinks resolved. Default: empty, any
    /// program.
    pub programs: Vec<String>,
    /// Directories (and their subdirectories) a job may name as its working directory. Default: empty,
    /// jobs run in their own directory under the data dir only.
    pub cwd_roots: Vec<PathBuf>,
    /// The daemon's environment variables jobs get (names, or prefixes ending in `*`). Default: PATH,
    /// LANG, LANGUAGE, LC_*, TZ, TMPDIR. Jobs also get HOME, USER, LOGNAME of their account,
    /// AURA_JOB_ID, AURA_JOB_ATTEMPT and the tree marker AURA_TREE.
    pub pass_env: Vec<String>,
    /// Fixed variables every job gets. Default: none.
    pub env: std::collections::BTreeMap<String, String>,
    /// TOML file of named secrets (`openai = "sk-…"`), mode 0600; the daemon's `AURA_SECRET_<NAME>`
    /// variables add to it. Default: `<data dir>/secrets.toml` if it exists.
    pub secrets_file: Option<PathBuf>,
    /// `PR_SET_NO_NEW_PRIVS` for every job (setuid programs gain nothing). Default: true.
    pub no_new_privs: bool,
    /// Allow core dumps. Default: false (`RLIMIT_CORE` 0).
    pub core_dumps: bool,
    /// `RLIMIT_NOFILE` of every job. Default: inherited.
    pub max_open_files: Option<u64>,
    /// `RLIMIT_NPROC` of every job (the kernel counts it per user, across all jobs). Default: inherited.
    pub max_processes: Option<u64>,
    /// The umask jobs start with (the daemon's own is 077). Default: 0o022.
    pub umask: u32,
}

impl Default for JobsSection {
    fn default() -> Self {
        let sandbox = aura_supervisor::JobSandbox::default();
        JobsSection {
            user: None,
            programs: Vec::new(),
            cwd_roots: Vec::new(),
            pass_env: aura_supervisor::DEFAULT_PASS_ENV
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            env: Default::default(),
            secrets_file: None,
            no_new_privs: sandbox.no_new_privs,
            core_dumps: sandbox.core_dumps,
            max_open_files: None,
            max_processes: None,
            umask: sandbox.umask,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("aura-data"),
            listen: DEFAULT_LISTEN
                .parse()
                .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 7411))),
            max_concurrent: aura_engine::default_max_concurrent(),
            standby_jobs: 2,
            requeue_on_shutdown: true,
            shutdown_grace: Duration::from_secs(30),
            quarantine_after: 2,
            database_reserve: ByteSize(2 << 20),
            async_workers: 1,
            supervisor: SupervisorSection::default(),
            admission: AdmissionSection::default(),
            guards: aura_engine::GuardConfig::default(),
            metrics: MetricsSection::default(),
            diagnostics: aura_engine::DiagnosticsConfig::default(),
            warnings: aura_engine::WarningConfig::default(),
            janitor: aura_engine::JanitorConfig::default(),
            api: ApiSection::default(),
            jobs: JobsSection::default(),
            uploads: UploadsSection::default(),
            media: aura_engine::MediaConfig::default(),
            log: LogSection::default(),
            store: None,
            fleet: FleetSection::default(),
        }
    }
}

/// What `POST /api/uploads` accepts.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UploadsSection {
    /// The largest upload; a bigger one is refused (413), before its body when it says its size.
    /// Default: 16GiB.
    pub max_size: ByteSize,
    /// Space an upload must leave free on the data dir's volume; one that would take it is refused
    /// (507). Default: 256MiB.
    pub min_free: ByteSize,
}

impl Default for UploadsSection {
    fn default() -> Self {
        let engine = aura_engine::UploadConfig::default();
        UploadsSection {
            max_size: ByteSize(engine.max_bytes),
            min_free: ByteSize(engine.min_free_bytes),
        }
    }
}

impl UploadsSection {
    /// These settings as the engine takes them.
    pub fn to_engine(&self) -> aura_engine::UploadConfig {
        aura_engine::UploadConfig {
            max_bytes: self.max_size.bytes(),
            min_free_bytes: self.min_free.bytes(),
        }
    }
}

/// The supervisor's own defaults (`SupervisorConfig::new`), so the two cannot drift apart.
impl Default for SupervisorSection {
    fn default() -> Self {
        let s = aura_supervisor::SupervisorConfig::new("");
        SupervisorSection {
            backend: s.backend,
            sample_interval: s.sample_interval,
            log_cap: ByteSize(s.log_cap.bytes()),
            job_oom_score_adj: s.job_oom_score_adj,
            daemon_nice: DEFAULT_DAEMON_NICE,
            job_nice: s.job_nice,
            kill_wait: s.kill_wait,
            memory_watch_interval: s.memory_watch_interval,
        }
    }
}

impl Default for ApiSection {
    fn default() -> Self {
        let api = aura_server::ApiConfig::new(0, Default::default());
        let listener = aura_server::ListenerConfig::default();
        ApiSection {
            max_body: ByteSize(api.max_body_bytes as u64),
            tokens: Vec::new(),
            local_token: true,
            allowed_hosts: Vec::new(),
            allowed_origins: Vec::new(),
            public_metrics: api.security.public_metrics,
            max_connections: listener.max_connections,
            max_event_streams: api.max_event_streams,
            stream_heartbeat: api.stream_heartbeat,
            stream_send_buffer: None,
            header_timeout: listener.header_timeout,
            request_timeout: api.request_timeout,
            max_header_bytes: ByteSize(api.security.max_header_bytes as u64),
            max_uri_bytes: ByteSize(api.security.max_uri_bytes as u64),
            max_sessions: api.max_sessions,
            session_idle: api.session_idle,
        }
    }
}

impl Config {
    /// Defaults, then `file` (if given), then `AURA_*` variables (`AURA_SUPERVISOR__BACKEND=process_group`).
    pub fn load(file: Option<&Path>) -> anyhow::Result<Config> {
        Config::extract(Config::figment(file)?)
    }

    /// The sources `load` merges, unextracted: `aura config` reads each value's origin from it.
    pub fn figment(file: Option<&Path>) -> anyhow::Result<figment::Figment> {
        use figment::providers::{Env, Format, Serialized, Toml};
        let mut figment = figment::Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            if !file.is_file() {
                anyhow::bail!("config file {} does not exist", file.display());
            }
            figment = figment.merge(Toml::file(file));
        }
        // Variables the CLI itself uses, and secrets (`AURA_SECRET_<NAME>`, read by the engine), are not
        // configuration keys.
        let env = Env::prefixed("AURA_")
            .filter(|key| {
                let key = key.as_str().to_ascii_lowercase();
                !(matches!(
                    key.as_str(),
                    "server" | "config" | "log" | "token" | "runtime_dir"
                ) || key.starts_with("secret_"))
            })
            .split("__");
        Ok(figment.merge(env))
    }

    /// Defaults, then the TOML `text` (nothing from the environment): what a config file alone gives.
    /// The fuzz target parses with this.
    pub fn from_toml(text: &str) -> anyhow::Result<Config> {
        use figment::providers::{Format, Serialized, Toml};
        Config::extract(
            figment::Figment::from(Serialized::defaults(Config::default()))
                .merge(Toml::string(text)),
        )
    }

    /// The typed configuration from its sources, checked.
    pub fn extract(figment: figment::Figment) -> anyhow::Result<Config> {
        let config: Config = figment
            .extract()
            .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
        if config.max_concurrent == 0 {
            anyhow::bail!("invalid configuration: max_concurrent must be at least 1");
        }
        if !(1..=256).contains(&config.async_workers) {
            anyhow::bail!("invalid configuration: async_workers must be in 1..=256");
        }
        let sup = &config.supervisor;
        if sup.sample_interval.is_zero() || sup.memory_watch_interval.is_zero() {
            anyhow::bail!("invalid configuration: supervisor.sample_interval and memory_watch_interval must be > 0");
        }
        let nice = -20..=19;
        if !nice.contains(&sup.daemon_nice) || !nice.contains(&sup.job_nice) {
            anyhow::bail!(
                "invalid configuration: supervisor.daemon_nice and job_nice must be in -20..=19"
            );
        }
        if config
            .admission
            .cpu
            .is_some_and(|c| !(c.is_finite() && c > 0.0))
        {
            anyhow::bail!(
                "invalid configuration: admission.cpu must be a positive number of cores"
            );
        }
        config
            .guards
            .validate()
            .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
        config
            .warnings
            .validate()
            .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
        config
            .janitor
            .validate()
            .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
        if config.metrics.interval.is_zero()
            || config.metrics.history == 0
            || config.metrics.history > 100_000
        {
            anyhow::bail!("invalid configuration: metrics.interval must be > 0 and metrics.history in 1..=100000");
        }
        let a = &config.admission;
        let percentile_ok = a.learn_percentile > 0.0 && a.learn_percentile <= 1.0;
        let margin_ok = a.learn_margin >= 0.0 && a.learn_margin.is_finite();
        if !(percentile_ok && margin_ok) {
            anyhow::bail!("invalid configuration: admission.learn_percentile must be in (0, 1] and learn_margin at least 0");
        }
        if config.admission.default_memory_request.bytes() == 0 {
            anyhow::bail!(
                "invalid configuration: admission.default_memory_request must be greater than zero"
            );
        }
        config.validate_api()?;
        config.validate_jobs()?;
        config.validate_durations()?;
        Ok(config)
    }
}

impl Config {
    fn validate_api(&self) -> anyhow::Result<()> {
        let api = &self.api;
        aura_server::auth::Tokens::new(&api.tokens)
            .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
        if api.tokens.iter().any(|t| t.name == LOCAL_TOKEN_NAME) {
            anyhow::bail!("invalid configuration: the token name {LOCAL_TOKEN_NAME:?} is the data dir's own token's; choose another");
        }
        if api.stream_send_buffer.is_some_and(|b| b.bytes() < 4096) {
            anyhow::bail!("invalid configuration: api.stream_send_buffer must be at least 4KiB");
        }
        if api.max_sessions == 0 || api.session_idle.is_zero() {
            anyhow::bail!("invalid configuration: api.max_sessions and api.session_idle must be greater than zero");
        }
        if api.max_event_streams == 0 || api.stream_heartbeat.is_zero() {
            anyhow::bail!("invalid configuration: api.max_event_streams and api.stream_heartbeat must be greater than zero");
        }
        if api.max_connections == 0 {
            anyhow::bail!("invalid configuration: api.max_connections must be at least 1");
        }
        if api.header_timeout.is_zero() || api.request_timeout.is_zero() {
            anyhow::bail!(
                "invalid configuration: api.header_timeout and api.request_timeout must be > 0"
            );
        }
        if api.max_header_bytes.bytes() < 1024 || api.max_uri_bytes.bytes() < 256 {
            anyhow::bail!("invalid configuration: api.max_header_bytes must be at least 1 KiB and api.max_uri_bytes at least 256 bytes");
        }
        for host in &api.allowed_hosts {
            let ok = !host.is_empty()
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-.:[]_".contains(c));
            if !ok {
                anyhow::bail!("invalid configuration: api.allowed_hosts entry {host:?} is not a host name, `name:port` or `[v6]:port`");
            }
        }
        for origin in &api.allowed_origins {
            let rest = origin
                .strip_prefix("http://")
                .or_else(|| origin.strip_prefix("https://"));
            if !rest.is_some_and(|r| !r.is_empty() && !r.contains('/')) {
                anyhow::bail!("invalid configuration: api.allowed_origins entry {origin:?} must be scheme://host[:port], without a path");
            }
        }
        Ok(())
    }

    fn validate_durations(&self) -> anyhow::Result<()> {
        let g = &self.guards;
        let named = [
            (
                "supervisor.sample_interval",
                self.supervisor.sample_interval,
            ),
            ("supervisor.kill_wait", self.supervisor.kill_wait),
            (
                "supervisor.memory_watch_interval",
                self.supervisor.memory_watch_interval,
            ),
            ("metrics.interval", self.metrics.interval),
            ("shutdown_grace", self.shutdown_grace),
            ("api.header_timeout", self.api.header_timeout),
            ("api.request_timeout", self.api.request_timeout),
            ("guards.interval", g.interval),
            ("guards.cpu_window", g.cpu_window),
            ("guards.critical_sustain", g.critical_sustain),
            ("guards.victim_cooldown", g.victim_cooldown),
            ("guards.throttle.window", g.throttle.window),
            ("media.probe_timeout", self.media.probe_timeout),
            ("media.progress_interval", self.media.progress_interval),
            ("api.stream_heartbeat", self.api.stream_heartbeat),
            ("warnings.interval", self.warnings.interval),
            ("warnings.window", self.warnings.window),
        ];
        let media = &self.media;
        for (name, d) in [
            ("media.stall_after", media.stall_after),
            ("media.probe_timeout", media.probe_timeout),
            ("media.progress_interval", media.progress_interval),
        ] {
            if d.is_zero() {
                anyhow::bail!("invalid configuration: {name} must be greater than zero");
            }
        }
        if media.stall_after > Duration::from_secs(aura_model::limits::MAX_TIMEOUT_SECS) {
            anyhow::bail!("invalid configuration: media.stall_after must be at most 30 days");
        }
        match named.iter().find(|(_, d)| *d > MAX_SETTING_DURATION) {
            Some((name, _)) => anyhow::bail!("invalid configuration: {name} must be at most 24h"),
            None => Ok(()),
        }
    }

    fn validate_jobs(&self) -> anyhow::Result<()> {
        let jobs = &self.jobs;
        if jobs.umask > 0o777 {
            anyhow::bail!("invalid configuration: jobs.umask must be at most 0o777");
        }
        if jobs.max_open_files == Some(0) || jobs.max_processes == Some(0) {
            anyhow::bail!("invalid configuration: jobs.max_open_files and jobs.max_processes must be at least 1");
        }
        if let Some(user) = &jobs.user {
            if user.is_empty() {
                anyhow::bail!("invalid configuration: jobs.user is empty");
            }
        }
        for key in jobs.env.keys() {
            if key.is_empty() || key.contains('=') || key.contains('\0') {
                anyhow::bail!("invalid configuration: jobs.env name {key:?}");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
// figment's Jail API returns its own (large) error type; that is the test harness, not our code.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;

    #[test]
    fn file_then_env_override_defaults() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "aura.toml",
                "max_concurrent = 3\n[supervisor]\nbackend = \"process_group\"\nlog_cap = \"1M\"\n",
            )?;
            jail.set_env("AURA_MAX_CONCURRENT", "5");
            let config = Config::load(Some(Path::new("aura.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(config.max_concurrent, 5);
            assert_eq!(config.supervisor.backend, BackendChoice::ProcessGroup);
            assert_eq!(config.supervisor.log_cap, ByteSize(1 << 20));
            assert!(config.requeue_on_shutdown);
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("bad.toml", "max_concurent = 3\n")?;
            let err = Config::load(Some(Path::new("bad.toml")))
                .unwrap_err()
                .to_string();
            assert!(err.contains("max_concurent"), "{err}");
            jail.create_file("zero.toml", "max_concurrent = 0\n")?;
            assert!(Config::load(Some(Path::new("zero.toml"))).is_err());
            assert!(Config::load(Some(Path::new("missing.toml"))).is_err());
            jail.create_file("nice.toml", "[supervisor]\njob_nice = 20\n")?;
            let err = Config::load(Some(Path::new("nice.toml")))
                .unwrap_err()
                .to_string();
            assert!(err.contains("job_nice"), "{err}");
            jail.set_env("AURA_ASYNC_WORKERS", "0");
            let err = Config::load(None).unwrap_err().to_string();
            assert!(err.contains("async_workers"), "{err}");
            jail.set_env("AURA_ASYNC_WORKERS", "2");
            jail.set_env("AURA_SUPERVISOR__DAEMON_NICE", "-21");
            assert!(Config::load(None).is_err());
            jail.set_env("AURA_SUPERVISOR__DAEMON_NICE", "-5");
            assert_eq!(
                Config::load(None)
                    .map_err(|e| e.to_string())?
                    .supervisor
                    .daemon_nice,
                -5
            );
            jail.set_env("AURA_GUARDS__RESUME_AVAILABLE_MEMORY", "0.1");
            let err = Config::load(None).unwrap_err().to_string();
            assert!(err.contains("resume threshold"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn the_store_is_sqlite_or_a_password_free_postgres_url() {
        let kind = |store: Option<&str>| {
            let cfg = Config {
                store: store.map(str::to_owned),
                ..Config::default()
            };
            cfg.store_kind().map_err(|e| e.to_string())
        };
        assert_eq!(kind(None), Ok(StoreKind::Sqlite));
        assert_eq!(kind(Some("sqlite")), Ok(StoreKind::Sqlite));
        assert_eq!(
            kind(Some("postgres://aura@db:5432/aura")),
            Ok(StoreKind::Postgres("postgres://aura@db:5432/aura".into()))
        );
        assert!(kind(Some("postgresql://db/aura?sslmode=require")).is_ok());
        let refused = |store: &str, needle: &str| {
            let err = kind(Some(store)).unwrap_err();
            assert!(err.contains(needle), "{store}: {err}");
            assert!(
                !err.contains("hunter2"),
                "the password is never repeated: {err}"
            );
        };
        refused("postgres://aura:hunter2@db/aura", "store_password");
        refused("postgres://db/aura?password=hunter2", "store_password");
        refused("mysql://db/aura", "neither `sqlite` nor");
    }

    #[test]
    fn api_and_jobs_settings_are_checked() {
        let refused = |text: &str, needle: &str| {
            let err = Config::from_toml(text).unwrap_err().to_string();
            assert!(err.contains(needle), "{text}: {err}");
        };
        refused(
            "[metrics]\ninterval = \"500000000000years\"\n",
            "metrics.interval",
        );
        refused("[api]\nheader_timeout = \"48h\"\n", "api.header_timeout");
        refused("[api]\nmax_connections = 0\n", "max_connections");
        refused("[api]\nmax_event_streams = 0\n", "max_event_streams");
        refused("[api]\nmax_sessions = 0\n", "max_sessions");
        refused("[api]\nsession_idle = 0\n", "session_idle");
        refused(
            "[api]\nstream_send_buffer = \"1KiB\"\n",
            "stream_send_buffer",
        );
        refused("[media]\nstall_after = 0\n", "media.stall_after");
        refused(
            "[media]\nprogress_interval = \"0s\"\n",
            "media.progress_interval",
        );
        refused("[media]\nprobe_timeout = \"48h\"\n", "media.probe_timeout");
        refused(
            "[api]\nallowed_origins = [\"https://a.example/path\"]\n",
            "allowed_origins",
        );
        refused("[api]\nallowed_hosts = [\"a b\"]\n", "allowed_hosts");
        refused("[jobs]\numask = 0o1777\n", "umask");
        refused("[jobs]\nmax_processes = 0\n", "max_processes");
        refused("[jobs]\nuser = \"\"\n", "jobs.user");
        let hash = format!("sha256:{}", "ab".repeat(32));
        refused(
            &format!(
                "[[api.tokens]]\nname = \"local-admin\"\nhash = \"{hash}\"\nscopes = [\"read\"]\n"
            ),
            "local-admin",
        );
        refused(
            &format!("[[api.tokens]]\nname = \"x\"\nhash = \"{hash}\"\nscopes = [\"root\"]\n"),
            "scope",
        );
        let ok = Config::from_toml(&format!(
            "[api]\nallowed_origins = [\"https://studio.example\"]\n[[api.tokens]]\nname = \"ci\"\nhash = \"{hash}\"\nscopes = [\"submit\"]\nmax_queued = 5\n[jobs]\nprograms = [\"ffmpeg\"]\numask = 0o027\n"
        ))
        .unwrap();
        assert_eq!(ok.api.tokens[0].max_queued, Some(5));
        assert_eq!(ok.jobs.umask, 0o027);
        // The CLI's own variables and secrets are not configuration keys.
        figment::Jail::expect_with(|jail| {
            jail.set_env("AURA_TOKEN", "aura_x");
            jail.set_env("AURA_SECRET_OPENAI", "sk-x");
            jail.set_env("AURA_RUNTIME_DIR", "/tmp/x");
            Config::load(None).map_err(|e| e.to_string())?;
            Ok(())
        });
    }

    #[test]
    fn memory_thresholds_take_shares_or_sizes() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "aura.toml",
                "[guards]
min_available_memory = \"4GiB\"
resume_available_memory = \"5GiB\"
                 critical_available_memory = \"10%\"
critical_resume_available_memory = 0.15
                 victim_cooldown = \"1m\"
[supervisor]
memory_watch_interval = \"20ms\"
",
            )?;
            let config = Config::load(Some(Path::new("aura.toml"))).map_err(|e| e.to_string())?;
            let g = &config.guards;
            assert_eq!(
                g.min_available_memory,
                aura_engine::MemoryThreshold::Bytes(4 << 30)
            );
            assert_eq!(
                g.critical_available_memory,
                aura_engine::MemoryThreshold::Share(0.10)
            );
            assert_eq!(g.victim_cooldown, Duration::from_secs(60));
            assert_eq!(
                config.supervisor.memory_watch_interval,
                Duration::from_millis(20)
            );
            jail.create_file("bad.toml", "[guards]\nmin_available_memory = \"lots\"\n")?;
            let err = Config::load(Some(Path::new("bad.toml")))
                .unwrap_err()
                .to_string();
            assert!(err.contains("invalid threshold"), "{err}");
            jail.create_file(
                "zero.toml",
                "[supervisor]\nmemory_watch_interval = \"0s\"\n",
            )?;
            let err = Config::load(Some(Path::new("zero.toml")))
                .unwrap_err()
                .to_string();
            assert!(err.contains("memory_watch_interval"), "{err}");
            Ok(())
        });
    }
}

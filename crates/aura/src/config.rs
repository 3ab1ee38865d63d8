//! Typed configuration of `aura serve`: defaults, then a TOML file, then `AURA_*` environment variables,
//! then command-line flags. Every field is documented in README.md.

use aura_model::ByteSize;
use aura_supervisor::BackendChoice;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:7411";
/// See `SupervisorSection::daemon_nice`.
const DEFAULT_DAEMON_NICE: i32 = -10;

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
    /// Threads of the async runtime, which runs the HTTP API and the engine; everything that blocks
    /// (SQLite, `/proc`, process starts and reaping, log capture) has threads of its own. Default: 1 —
    /// the async work per job is a few short steps, and a second worker cost more in wake-ups than it
    /// gave (BENCHMARKS.md, "The daemon above its jobs").
    pub async_workers: usize,
    pub supervisor: SupervisorSection,
    pub admission: AdmissionSection,
    /// Live admission guards (defaults in brackets): admission pauses while available memory is under
    /// `min_available_memory` [0.20] (resumes over `resume_available_memory` [0.25]), while PSI memory
    /// `some avg10` is over `max_memory_pressure` [40 %] (resumes under `resume_memory_pressure` [20 %]), or
    /// while CPU use outside Aura's jobs averaged over `cpu_window` [10s] is over `max_outside_cpu` [0.85]
    /// (resumes under `resume_outside_cpu` [0.75]). Judged every `interval` [1s]; `enabled` [true].
    /// Memory thresholds are shares of physical memory (`0.2`, `"20%"`) or sizes (`"2GiB"`).
    /// Stage 2, the memory pressure responder: memory is critical below `critical_available_memory` [0.05]
    /// (clears above `critical_resume_available_memory` [0.10]) or above PSI memory `full avg10`
    /// `critical_memory_pressure` [30 %] (clears below `critical_resume_memory_pressure` [10 %]); critical
    /// for `critical_sustain` [3s], one running job is stopped with its stop sequence and requeued asking
    /// for `requeue_growth` [1.5] × max(request, peak); no other victim within `victim_cooldown` [30s].
    pub guards: aura_engine::GuardConfig,
    pub metrics: MetricsSection,
    /// Warning thresholds of `/api/diagnostics/resources` (warnings also degrade `/readyz`):
    /// `max_open_fds` [1000], `max_rss` [2GiB], `max_threads` [200], `max_extra_children` [10].
    pub diagnostics: aura_engine::DiagnosticsConfig,
    pub api: ApiSection,
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

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuSection {
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

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiSection {
    /// Largest accepted request body. Default: 2 MiB.
    pub max_body: ByteSize,
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
            async_workers: 1,
            supervisor: SupervisorSection::default(),
            admission: AdmissionSection::default(),
            guards: aura_engine::GuardConfig::default(),
            metrics: MetricsSection::default(),
            diagnostics: aura_engine::DiagnosticsConfig::default(),
            api: ApiSection::default(),
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
        ApiSection {
            max_body: ByteSize(aura_server::ApiConfig::default().max_body_bytes as u64),
        }
    }
}

impl Config {
    /// Defaults, then `file` (if given), then `AURA_*` variables (`AURA_SUPERVISOR__BACKEND=process_group`).
    pub fn load(file: Option<&Path>) -> anyhow::Result<Config> {
        use figment::providers::{Env, Format, Serialized, Toml};
        let mut figment = figment::Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            if !file.is_file() {
                anyhow::bail!("config file {} does not exist", file.display());
            }
            figment = figment.merge(Toml::file(file));
        }
        // Variables the CLI itself uses are not configuration keys.
        let env = Env::prefixed("AURA_")
            .ignore(&["SERVER", "CONFIG", "LOG"])
            .split("__");
        let config: Config = figment
            .merge(env)
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
        Ok(config)
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
            assert!(err.contains("invalid memory threshold"), "{err}");
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

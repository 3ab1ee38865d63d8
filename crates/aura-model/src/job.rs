//! What a job is: its spec as submitted (program, arguments, limits, policies), its validation, and the
//! resource accounting recorded when it runs.

use crate::ByteSize;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// A job's identity, assigned by the store at submit; increasing in submit order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(transparent)]
pub struct JobId(pub i64);

impl std::fmt::Display for JobId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Limits the spec validation enforces; chosen generously so that real FFmpeg command lines always fit.
pub mod limits {
    /// Arguments after the program.
    pub const MAX_ARGS: usize = 4096;
    /// One argv or environment string (`KEY=VALUE`): Linux's `MAX_ARG_STRLEN` (32 pages) counts the
    /// terminating NUL, so a string of 128 KiB fails `execve` with E2BIG.
    pub const MAX_ARG_BYTES: usize = 128 * 1024 - 1;
    /// The program and all its arguments together, in bytes.
    pub const MAX_TOTAL_ARG_BYTES: usize = 1024 * 1024;
    /// Entries in a spec's `env`.
    pub const MAX_ENV: usize = 1024;
    /// Named secrets one job may reference.
    pub const MAX_SECRETS: usize = 64;
    /// Uploads one job may name as inputs.
    pub const MAX_INPUTS: usize = 256;
    /// Labels on one job; also provider names in one resource request.
    pub const MAX_LABELS: usize = 64;
    /// One label key or value, provider or secret name, or lease holder, in bytes.
    pub const MAX_LABEL_BYTES: usize = 256;
    /// Steps in a stop sequence (before its final SIGKILL).
    pub const MAX_STOP_STEPS: usize = 8;
    /// The longest `timeout`, in seconds (30 days).
    pub const MAX_TIMEOUT_SECS: u64 = 30 * 24 * 3600;
    /// The highest `min_speed` (media seconds per second).
    pub const MAX_SPEED: f64 = 1000.0;
    /// Jobs one job may depend on (`after`).
    pub const MAX_DEPENDENCIES: usize = 256;
    /// The longest grace period of one stop step, in seconds (1 hour).
    pub const MAX_GRACE_SECS: u64 = 3600;
    /// The most cores one request may ask for.
    pub const MAX_CPU: f64 = 4096.0;
    /// The most GPUs one request may ask for.
    pub const MAX_GPUS: u32 = 64;
    /// The highest `max_retries` and `max_pressure_requeues`.
    pub const MAX_RETRIES: u32 = 100;
    /// Below this a process cannot even start; a limit that small is a typo.
    pub const MIN_MEMORY_LIMIT: u64 = 1 << 20;
}

/// Signals a stop sequence may send. A closed set: users cannot ask for SIGSTOP or a realtime signal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "UPPERCASE")]
pub enum StopSignal {
    /// SIGINT (2), as Ctrl-C sends: FFmpeg finalises its output on it.
    Int,
    /// SIGTERM (15), the conventional request to terminate.
    Term,
    /// SIGHUP (1).
    Hup,
    /// SIGQUIT (3).
    Quit,
    /// SIGUSR1 (10).
    Usr1,
    /// SIGUSR2 (12).
    Usr2,
    /// SIGKILL (9), which cannot be caught.
    Kill,
}

impl StopSignal {
    /// The signal's number on Linux.
    pub fn number(self) -> i32 {
        match self {
            StopSignal::Int => 2,
            StopSignal::Term => 15,
            StopSignal::Hup => 1,
            StopSignal::Quit => 3,
            StopSignal::Usr1 => 10,
            StopSignal::Usr2 => 12,
            StopSignal::Kill => 9,
        }
    }

    /// The signal's name with its `SIG` prefix, as logs and the CLI show it.
    pub fn name(self) -> &'static str {
        match self {
            StopSignal::Int => "SIGINT",
            StopSignal::Term => "SIGTERM",
            StopSignal::Hup => "SIGHUP",
            StopSignal::Quit => "SIGQUIT",
            StopSignal::Usr1 => "SIGUSR1",
            StopSignal::Usr2 => "SIGUSR2",
            StopSignal::Kill => "SIGKILL",
        }
    }
}

impl std::str::FromStr for StopSignal {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<Self, SpecError> {
        let upper = s.trim().to_ascii_uppercase();
        let name = upper.strip_prefix("SIG").unwrap_or(&upper);
        Ok(match name {
            "INT" | "2" => StopSignal::Int,
            "TERM" | "15" => StopSignal::Term,
            "HUP" | "1" => StopSignal::Hup,
            "QUIT" | "3" => StopSignal::Quit,
            "USR1" | "10" => StopSignal::Usr1,
            "USR2" | "12" => StopSignal::Usr2,
            "KILL" | "9" => StopSignal::Kill,
            _ => return Err(SpecError::UnknownSignal(s.to_owned())),
        })
    }
}

/// One step of a stop sequence: send `signal` to every process of the tree, then wait up to `grace`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct StopStep {
    /// The signal sent to every process of the tree.
    pub signal: StopSignal,
    /// How long to wait for the tree to exit before the next step.
    #[serde(with = "humantime_serde_compat")]
    #[cfg_attr(feature = "openapi", schema(value_type = crate::openapi::Duration))]
    pub grace: Duration,
}

/// How a job's tree is stopped: the steps in order, then SIGKILL of whatever is left.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(transparent)]
pub struct StopSequence(pub Vec<StopStep>);

impl Default for StopSequence {
    /// SIGINT first (FFmpeg finalises its output on it), then SIGTERM, then SIGKILL.
    fn default() -> Self {
        StopSequence(vec![
            StopStep {
                signal: StopSignal::Int,
                grace: Duration::from_secs(5),
            },
            StopStep {
                signal: StopSignal::Term,
                grace: Duration::from_secs(3),
            },
        ])
    }
}

impl StopSequence {
    /// The longest the sequence can take before the final SIGKILL.
    /// Saturating: a sequence that was parsed but not yet validated may hold absurd graces.
    pub fn total_grace(&self) -> Duration {
        self.0
            .iter()
            .fold(Duration::ZERO, |sum, s| sum.saturating_add(s.grace))
    }
}

impl std::str::FromStr for StopSequence {
    type Err = SpecError;
    /// `INT:5s,TERM:3s` — each step a signal and its grace period.
    fn from_str(s: &str) -> Result<Self, SpecError> {
        let mut steps = Vec::new();
        for part in s.split(',').filter(|p| !p.trim().is_empty()) {
            let (sig, grace) = part.split_once(':').ok_or_else(|| {
                SpecError::InvalidStopSequence(format!("{part:?} is not SIGNAL:GRACE"))
            })?;
            let grace = humantime::parse_duration(grace.trim())
                .map_err(|e| SpecError::InvalidStopSequence(format!("{grace:?}: {e}")))?;
            steps.push(StopStep {
                signal: sig.parse()?,
                grace,
            });
        }
        Ok(StopSequence(steps))
    }
}

/// What to do when an attempt does not succeed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields, default)]
pub struct RetryPolicy {
    /// Extra attempts after a failure (non-zero exit, signal, timeout, failed start). Cancels never retry.
    pub max_retries: u32,
    /// Requeue when the daemon died or shut down under the job (does not count against `max_retries`).
    pub requeue_interrupted: bool,
    /// How many times a job stopped by the memory pressure responder is requeued (with a larger memory
    /// request); these do not count against `max_retries`, since the job did nothing wrong.
    pub max_pressure_requeues: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 0,
            requeue_interrupted: true,
            max_pressure_requeues: 3,
        }
    }
}

/// What a job asks of the machine. Stored and validated here; admission enforces it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields, default)]
pub struct ResourceRequest {
    /// The memory admission reserves for the job; when stated, also its hard limit unless `memory_max`
    /// says otherwise (as Slurm's `--mem`).
    pub memory: Option<ByteSize>,
    /// A hard memory limit above the reservation: the kernel (or the fallback's watchdog) kills the tree
    /// beyond it, with outcome `memory_limit_exceeded`.
    pub memory_max: Option<ByteSize>,
    /// Cores; fractions allowed.
    pub cpu: Option<f64>,
    /// Whole GPUs to hold.
    pub gpus: Option<u32>,
    /// GPU memory per GPU.
    pub vram: Option<ByteSize>,
    /// NVENC/NVDEC sessions per GPU.
    pub encoder_sessions: Option<u32>,
    /// Expected output size on the volume holding job directories.
    pub disk: Option<ByteSize>,
    /// Named limits (providers such as `openai`, `elevenlabs`) the job holds a slot of while it runs.
    pub providers: std::collections::BTreeSet<String>,
}

impl ResourceRequest {
    /// What holds for any request, a job's or a lease's: figures in range, known-good provider names, GPU
    /// figures only with GPUs.
    pub fn validate(&self) -> Result<(), SpecError> {
        use limits::*;
        if self.memory == Some(ByteSize(0)) {
            return Err(SpecError::OutOfRange {
                what: "memory",
                detail: "must be greater than zero".into(),
            });
        }
        if let Some(max) = self.memory_max {
            if max.bytes() < MIN_MEMORY_LIMIT {
                return Err(SpecError::OutOfRange {
                    what: "memory_max",
                    detail: "must be at least 1 MiB".into(),
                });
            }
            if self.memory.is_some_and(|m| m > max) {
                return Err(SpecError::OutOfRange {
                    what: "memory_max",
                    detail: "must be at least the memory request".into(),
                });
            }
        }
        if let Some(cpu) = self.cpu {
            // Admission counts thousandths of a core: a smaller request would reserve nothing.
            if !(cpu.is_finite() && (0.001..=MAX_CPU).contains(&cpu)) {
                return Err(SpecError::OutOfRange {
                    what: "cpu",
                    detail: format!("must be in [0.001, {MAX_CPU}]"),
                });
            }
        }
        if self.providers.len() > MAX_LABELS {
            return Err(SpecError::TooMany {
                what: "providers",
                max: MAX_LABELS,
            });
        }
        if let Some(p) = self.providers.iter().find(|p| !valid_name(p, &[])) {
            return Err(SpecError::InvalidProvider(p.clone()));
        }
        let no_gpus = self.gpus.unwrap_or(0) == 0;
        for (what, stated) in [
            ("encoder_sessions", self.encoder_sessions.is_some()),
            ("vram", self.vram.is_some()),
        ] {
            if stated && no_gpus {
                return Err(SpecError::OutOfRange {
                    what,
                    detail: "needs gpus of at least 1".into(),
                });
            }
        }
        if self.gpus.is_some_and(|g| g > MAX_GPUS) {
            return Err(SpecError::OutOfRange {
                what: "gpus",
                detail: format!("at most {MAX_GPUS}"),
            });
        }
        Ok(())
    }
}

/// A name (label key, provider): letters, digits, `_ - .` and the `extra` characters, at most
/// `MAX_LABEL_BYTES`.
fn valid_name(name: &str, extra: &[char]) -> bool {
    !name.is_empty()
        && name.len() <= limits::MAX_LABEL_BYTES
        && name.chars().all(|c| {
            c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.') || extra.contains(&c)
        })
}

/// A job as submitted. Program and argument vector, never a shell string.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// The program to run: a path, or a name looked up in the job's `PATH` as `execvp` does.
    pub program: String,
    /// Its arguments, passed as they are (no shell word splitting or expansion).
    #[serde(default)]
    pub args: Vec<String>,
    /// Added to (and overriding) the jobs' base environment (see the README: the daemon's own environment
    /// is never passed on wholesale).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Environment variables whose values are named secrets, resolved by the daemon at launch:
    /// `{"OPENAI_API_KEY": "openai"}`. Only the names are stored; the values never leave the daemon but
    /// for the job's environment.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, String>,
    /// Working directory; `None` means a fresh per-job directory under the data dir.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub cwd: Option<PathBuf>,
    /// The longest one attempt may run before it is stopped with outcome `timed_out` (default 1 hour).
    #[serde(default = "default_timeout", with = "humantime_serde_compat")]
    #[cfg_attr(feature = "openapi", schema(value_type = crate::openapi::Duration))]
    pub timeout: Duration,
    /// How the tree is stopped (cancel, timeout, shutdown); default SIGINT, SIGTERM, then SIGKILL.
    #[serde(default)]
    pub stop: StopSequence,
    /// Higher runs first.
    #[serde(default)]
    pub priority: i32,
    /// Free-form labels; `kind` names the class of work (e.g. `encode`, `tts`).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// What happens when an attempt does not succeed.
    #[serde(default)]
    pub retry: RetryPolicy,
    /// What the job asks of the machine.
    #[serde(default)]
    pub resources: ResourceRequest,
    /// How Aura reads the job's progress (default `auto`: FFmpeg's, recognised by the program name).
    #[serde(default, skip_serializing_if = "crate::media::ProgressMode::is_auto")]
    pub progress: crate::media::ProgressMode,
    /// The media duration the job produces, for percent and ETA where Aura cannot learn it (from FFmpeg's
    /// `-t`/`-to`, lavfi source durations, or ffprobe of its inputs).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "optional_duration"
    )]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<crate::openapi::Duration>))]
    pub expected_duration: Option<Duration>,
    /// Stop the job with outcome `stalled` when its progress has not advanced for this long (default: the
    /// daemon's `jobs.stall_after`). Only jobs that report progress are ever judged stalled.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "optional_duration"
    )]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<crate::openapi::Duration>))]
    pub stall_after: Option<Duration>,
    /// Also stalled when its speed (media seconds per second) stays under this floor for the stall window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_speed: Option<f64>,
    /// Jobs that must succeed before this one starts; a dependency that ends otherwise fails this job with
    /// outcome `dependency_failed`, without starting it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub after: Vec<JobId>,
    /// Uploads (`POST /api/uploads`) the job reads, by the file name each gets in its working directory:
    /// `{"in.mov": "<upload id>"}`. Materialised at launch by a hard link (or reflink), never a copy;
    /// only with the default working directory. An upload a queued or running job names is never cleaned up.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[cfg_attr(feature = "openapi", schema(value_type = BTreeMap<String, String>))]
    pub inputs: BTreeMap<String, crate::files::UploadId>,
}

/// A spec's `timeout` when it states none: 1 hour.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60 * 60);

fn default_timeout() -> Duration {
    DEFAULT_TIMEOUT
}

impl JobSpec {
    /// The program and its arguments as a shell would take them back (`ffmpeg -i 'my clip.mov' out.mp4`):
    /// what `aura jobs`, `aura show` and `aura top` print.
    pub fn command_line(&self) -> String {
        std::iter::once(self.program.as_str())
            .chain(self.args.iter().map(String::as_str))
            .map(shell_quoted)
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// A spec for `program` with `args`, every other field at its default.
    pub fn new(
        program: impl Into<String>,
        args: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        JobSpec {
            program: program.into(),
            args: args.into_iter().map(Into::into).collect(),
            env: BTreeMap::new(),
            secrets: BTreeMap::new(),
            cwd: None,
            timeout: DEFAULT_TIMEOUT,
            stop: StopSequence::default(),
            priority: 0,
            labels: BTreeMap::new(),
            retry: RetryPolicy::default(),
            resources: ResourceRequest::default(),
            progress: crate::media::ProgressMode::Auto,
            expected_duration: None,
            stall_after: None,
            min_speed: None,
            after: Vec::new(),
            inputs: BTreeMap::new(),
        }
    }

    /// Its `kind` label: the class of work that memory requests are learned per.
    pub fn kind(&self) -> Option<&str> {
        self.labels.get("kind").map(String::as_str)
    }

    /// The hard memory limit of each attempt: `memory_max`, else a stated `memory` request. Learned and
    /// default requests only reserve: a job that stated nothing is never killed for a guess.
    pub fn memory_limit(&self) -> Option<ByteSize> {
        self.resources.memory_max.or(self.resources.memory)
    }

    /// Checks everything that can be checked without touching the machine.
    pub fn validate(&self) -> Result<(), SpecError> {
        use limits::*;
        if self.program.trim().is_empty() {
            return Err(SpecError::EmptyProgram);
        }
        check_text("program", &self.program, MAX_ARG_BYTES)?;
        if self.args.len() > MAX_ARGS {
            return Err(SpecError::TooMany {
                what: "arguments",
                max: MAX_ARGS,
            });
        }
        let mut total = self.program.len();
        for (i, arg) in self.args.iter().enumerate() {
            check_text(&format!("argument {}", i + 1), arg, MAX_ARG_BYTES)?;
            total += arg.len();
        }
        if total > MAX_TOTAL_ARG_BYTES {
            return Err(SpecError::TooLong {
                what: "command line".into(),
                max: MAX_TOTAL_ARG_BYTES,
            });
        }
        if self.env.len() > MAX_ENV {
            return Err(SpecError::TooMany {
                what: "environment variables",
                max: MAX_ENV,
            });
        }
        for (k, v) in &self.env {
            if k.is_empty() || k.contains('=') {
                return Err(SpecError::InvalidEnvName(k.clone()));
            }
            check_text(&format!("environment variable {k}"), k, MAX_ARG_BYTES)?;
            check_text(&format!("environment variable {k}"), v, MAX_ARG_BYTES)?;
            check_env_entry(k, v.len())?;
        }
        if self.secrets.len() > MAX_SECRETS {
            return Err(SpecError::TooMany {
                what: "secrets",
                max: MAX_SECRETS,
            });
        }
        for (var, name) in &self.secrets {
            if var.is_empty() || var.contains('=') {
                return Err(SpecError::InvalidEnvName(var.clone()));
            }
            check_text(&format!("environment variable {var}"), var, MAX_ARG_BYTES)?;
            if self.env.contains_key(var) {
                return Err(SpecError::SecretShadowsEnv(var.clone()));
            }
            if !valid_name(name, &[]) {
                return Err(SpecError::InvalidSecretName(name.clone()));
            }
        }
        if self.inputs.len() > MAX_INPUTS {
            return Err(SpecError::TooMany {
                what: "inputs",
                max: MAX_INPUTS,
            });
        }
        for name in self.inputs.keys() {
            crate::files::check_input_name(name).map_err(SpecError::InvalidInput)?;
        }
        if !self.inputs.is_empty() && self.cwd.is_some() {
            return Err(SpecError::InvalidInput(
                "inputs are materialised in the job's own working directory: leave cwd unset"
                    .into(),
            ));
        }
        if let Some(cwd) = &self.cwd {
            if !cwd.is_absolute() {
                return Err(SpecError::RelativeCwd(cwd.clone()));
            }
            if cwd
                .components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
            {
                return Err(SpecError::ParentDirInCwd(cwd.clone()));
            }
        }
        if self.timeout.is_zero() {
            return Err(SpecError::OutOfRange {
                what: "timeout",
                detail: "must be greater than zero".into(),
            });
        }
        if self.timeout > Duration::from_secs(MAX_TIMEOUT_SECS) {
            return Err(SpecError::OutOfRange {
                what: "timeout",
                detail: "at most 30 days".into(),
            });
        }
        if self.stop.0.len() > MAX_STOP_STEPS {
            return Err(SpecError::TooMany {
                what: "stop steps",
                max: MAX_STOP_STEPS,
            });
        }
        if self
            .stop
            .0
            .iter()
            .any(|s| s.grace > Duration::from_secs(MAX_GRACE_SECS))
        {
            return Err(SpecError::InvalidStopSequence(
                "a grace period is at most 1 hour".into(),
            ));
        }
        if self.labels.len() > MAX_LABELS {
            return Err(SpecError::TooMany {
                what: "labels",
                max: MAX_LABELS,
            });
        }
        for (k, v) in &self.labels {
            check_label(k, v)?;
        }
        if self.retry.max_retries > MAX_RETRIES {
            return Err(SpecError::OutOfRange {
                what: "max_retries",
                detail: format!("at most {MAX_RETRIES}"),
            });
        }
        if self.retry.max_pressure_requeues > MAX_RETRIES {
            return Err(SpecError::OutOfRange {
                what: "max_pressure_requeues",
                detail: format!("at most {MAX_RETRIES}"),
            });
        }
        self.resources.validate()?;
        for (what, d) in [
            ("expected_duration", self.expected_duration),
            ("stall_after", self.stall_after),
        ] {
            if d.is_some_and(|d| d.is_zero() || d > Duration::from_secs(MAX_TIMEOUT_SECS)) {
                return Err(SpecError::OutOfRange {
                    what,
                    detail: "must be greater than zero and at most 30 days".into(),
                });
            }
        }
        if self
            .min_speed
            .is_some_and(|s| !(s.is_finite() && s > 0.0 && s <= MAX_SPEED))
        {
            return Err(SpecError::OutOfRange {
                what: "min_speed",
                detail: format!("must be greater than zero and at most {MAX_SPEED}"),
            });
        }
        if self.after.len() > MAX_DEPENDENCIES {
            return Err(SpecError::TooMany {
                what: "dependencies (after)",
                max: MAX_DEPENDENCIES,
            });
        }
        if let Some(bad) = self.after.iter().find(|id| id.0 <= 0) {
            return Err(SpecError::OutOfRange {
                what: "after",
                detail: format!("{bad} is not a job id"),
            });
        }
        let r = &self.resources;
        if r.memory_max.is_none()
            && r.memory
                .is_some_and(|m| m.bytes() < limits::MIN_MEMORY_LIMIT)
        {
            return Err(SpecError::OutOfRange {
                what: "memory",
                detail: "a stated memory request is also the job's limit: at least 1 MiB".into(),
            });
        }
        Ok(())
    }
}

/// One label as a spec may carry it: the key letters, digits and `_ - . /`, the value free text without
/// NUL, each at most `MAX_LABEL_BYTES`. Public: a filter naming a label (`GET /api/jobs?label=K=V`) is
/// held to the same rules, so that it refuses what no job could carry.
pub fn check_label(key: &str, value: &str) -> Result<(), SpecError> {
    if !valid_name(key, &['/']) {
        return Err(SpecError::InvalidLabel(key.to_owned()));
    }
    check_text(&format!("label {key}"), value, limits::MAX_LABEL_BYTES)
}

/// The job's environment holds `NAME=VALUE` as one string, under the same per-string limit as an
/// argument. Public: a secret's value is known only where it is resolved.
pub fn check_env_entry(name: &str, value_len: usize) -> Result<(), SpecError> {
    let max = limits::MAX_ARG_BYTES;
    if name.len() + 1 + value_len > max {
        // The name alone may be most of the entry: the message shows its start.
        let shown: String = name.chars().take(64).collect();
        let more = if shown.len() < name.len() { "…" } else { "" };
        return Err(SpecError::TooLong {
            what: format!("environment entry {shown}{more}=…"),
            max,
        });
    }
    Ok(())
}

fn check_text(what: &str, text: &str, max: usize) -> Result<(), SpecError> {
    if text.contains('\0') {
        return Err(SpecError::NulByte(what.to_owned()));
    }
    if text.len() > max {
        return Err(SpecError::TooLong {
            what: what.to_owned(),
            max,
        });
    }
    Ok(())
}

/// Why a spec was refused. Each variant names the offending part.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum SpecError {
    /// The program is empty or only whitespace.
    #[error("the program is empty")]
    EmptyProgram,
    /// A string (named here, e.g. `argument 2`) contains a NUL byte, which `execve` cannot pass.
    #[error("{0} contains a NUL byte")]
    NulByte(String),
    /// A string, or the whole command line, is over its size limit.
    #[error("{what} is longer than {max} bytes")]
    TooLong {
        /// What is too long, e.g. `argument 2` or `command line`.
        what: String,
        /// The limit, in bytes.
        max: usize,
    },
    /// A list is over its length limit.
    #[error("too many {what} (at most {max})")]
    TooMany {
        /// What there are too many of, e.g. `labels`.
        what: &'static str,
        /// The most allowed.
        max: usize,
    },
    /// An environment variable name (in `env` or `secrets`) is empty or contains `=`.
    #[error("invalid environment variable name {0:?}")]
    InvalidEnvName(String),
    /// The working directory is not an absolute path.
    #[error("working directory {0:?} must be an absolute path")]
    RelativeCwd(PathBuf),
    /// The working directory has a `..` component.
    #[error("working directory {0:?} must not contain `..`")]
    ParentDirInCwd(PathBuf),
    /// A variable is set both in `env` and in `secrets`.
    #[error("environment variable {0:?} is set both in env and in secrets")]
    SecretShadowsEnv(String),
    /// A secret's name is empty, too long, or has characters other than letters, digits, `_ - .`.
    #[error("invalid secret name {0:?} (letters, digits, _ - . only)")]
    InvalidSecretName(String),
    /// A figure (timeout, memory, cpu, a retry count…) is outside its range.
    #[error("{what} out of range: {detail}")]
    OutOfRange {
        /// The field, e.g. `timeout`.
        what: &'static str,
        /// The rule it broke, e.g. "must be greater than zero".
        detail: String,
    },
    /// A stop signal that is not one of [`StopSignal`]'s, by name or number.
    #[error("unknown signal {0:?} (use INT, TERM, HUP, QUIT, USR1, USR2 or KILL)")]
    UnknownSignal(String),
    /// A stop sequence that does not parse, or a grace period over the limit.
    #[error("invalid stop sequence: {0}")]
    InvalidStopSequence(String),
    /// An entry of `inputs` is not usable.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// A label key is empty, too long, or has characters other than letters, digits, `_ - . /`.
    #[error("invalid label name {0:?} (letters, digits, _ - . / only)")]
    InvalidLabel(String),
    /// A provider name is empty, too long, or has characters other than letters, digits, `_ - .`.
    #[error("invalid provider name {0:?} (letters, digits, _ - . only)")]
    InvalidProvider(String),
}

impl SpecError {
    /// Whether the spec broke one of the size limits (`limits`): too many or too long arguments,
    /// environment entries, labels… — told apart from a malformed spec so that clients can see that
    /// the request was refused for its size.
    pub fn is_size_limit(&self) -> bool {
        matches!(self, SpecError::TooLong { .. } | SpecError::TooMany { .. })
    }
}

/// Which process-tree backend ran a job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    /// Pure cgroup v2: kill, CPU and (if the controller is delegated) memory from one hierarchy.
    CgroupV2,
    /// cgroup v2 tree for membership and `cgroup.kill`, cgroup v1 memory controller for accounting.
    Hybrid,
    /// cgroup v1 memory controller alone: membership and accounting, kill by signalling every member.
    CgroupV1,
    /// No cgroups: process group, `PR_SET_PDEATHSIG`, pidfd; cannot reach processes that leave the group.
    ProcessGroup,
}

impl Backend {
    /// Its name as on the wire and in logs (`cgroup_v2`, `hybrid`, `cgroup_v1`, `process_group`).
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::CgroupV2 => "cgroup_v2",
            Backend::Hybrid => "hybrid",
            Backend::CgroupV1 => "cgroup_v1",
            Backend::ProcessGroup => "process_group",
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a memory figure came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum MemorySource {
    /// The kernel's exact cgroup high-water mark (`memory.peak` / `memory.max_usage_in_bytes`).
    CgroupPeak,
    /// The highest sum of the tree's RSS seen by periodic sampling; short spikes can be missed.
    SampledRss,
}

/// Resource use of one attempt, recorded when its tree is gone.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Accounting {
    /// The tree's memory at its first reading, just after the start.
    pub memory_start: Option<ByteSize>,
    /// The highest memory the tree used (how it was measured: `memory_source`).
    pub memory_peak: Option<ByteSize>,
    /// The job's memory in use just before its main process exited: its last sample, less the page
    /// cache the kernel can reclaim (cgroup backends) or its processes' RSS (the fallback). Absent for a
    /// job too short to be sampled: a figure read after the exit would be page cache, not the job.
    pub memory_end: Option<ByteSize>,
    /// The page cache the job's file I/O left charged to its memory cgroup when it ended (cgroup
    /// backends): memory the kernel reclaims on demand, reported apart from the job's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page_cache_end: Option<ByteSize>,
    /// Where `memory_peak` came from.
    pub memory_source: Option<MemorySource>,
    /// CPU time in user mode, all processes of the tree together, seconds.
    pub cpu_user_secs: Option<f64>,
    /// CPU time in kernel mode, all processes of the tree together, seconds.
    pub cpu_system_secs: Option<f64>,
    /// Wall-clock time from the start until the main process was reaped, seconds.
    pub wall_secs: Option<f64>,
    /// The most processes the tree had at once.
    pub peak_processes: Option<u32>,
    /// Bytes of captured output dropped because of the log size cap (oldest first).
    #[serde(default)]
    pub log_truncated_bytes: u64,
    /// Bytes of captured output dropped because the log volume refused them (full or failing); the log
    /// notes each gap where writing resumed.
    #[serde(default, skip_serializing_if = "crate::is_zero")]
    pub log_dropped_bytes: u64,
    /// The hard memory limit the attempt ran under.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_limit: Option<ByteSize>,
    /// Processes of the tree the kernel's OOM killer killed (from the job cgroup's counters; 0 where the
    /// backend cannot tell).
    #[serde(default)]
    pub oom_kills: u64,
    /// The tree was killed for going over `memory_limit`, by the kernel or by the fallback's watchdog.
    #[serde(default)]
    pub memory_limit_exceeded: bool,
    /// The attempt's last progress, for a job that reports progress (boxed: most jobs have none, and
    /// every `Exited` event carries an `Accounting`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Box<crate::media::Progress>>,
}

impl Accounting {
    /// `Start=…MB, Peak=…MB, End=…MB, Delta=…MB (cgroup peak)`, the memory report of the user's documents.
    pub fn memory_line(&self) -> String {
        use std::fmt::Write;
        // Tenths of a MiB in integers, rounded as `{:.1}` rounds (half to even): the line is formatted
        // for every finished job, and float formatting with a precision was its main cost.
        fn tenths(out: &mut String, bytes: u64) {
            let scaled = u128::from(bytes) * 10;
            let unit = u128::from(ByteSize::MIB);
            let (mut q, r) = (scaled / unit, scaled % unit);
            if r * 2 > unit || (r * 2 == unit && q % 2 == 1) {
                q += 1;
            }
            let _ = write!(out, "{}.{}", q / 10, q % 10);
        }
        let mut line = String::with_capacity(96);
        for (label, value) in [
            ("Start=", self.memory_start),
            (", Peak=", self.memory_peak),
            (", End=", self.memory_end),
        ] {
            line.push_str(label);
            match value {
                Some(b) => tenths(&mut line, b.0),
                None => line.push('?'),
            }
            line.push_str("MB");
        }
        line.push_str(", Delta=");
        match (self.memory_start, self.memory_end) {
            (Some(s), Some(e)) => {
                line.push(if e.0 < s.0 { '-' } else { '+' });
                tenths(&mut line, e.0.abs_diff(s.0));
            }
            _ => line.push('?'),
        }
        line.push_str("MB");
        line.push_str(match self.memory_source {
            Some(MemorySource::CgroupPeak) => " (kernel high-water mark)",
            Some(MemorySource::SampledRss) => " (sampled RSS)",
            None => "",
        });
        line
    }
}

/// `Option<Duration>` in the same forms as [`humantime_serde_compat`]; `null` or absent is `None`.
pub mod optional_duration {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use std::time::Duration;

    #[derive(Serialize, Deserialize)]
    struct Wrapped(#[serde(with = "super::humantime_serde_compat")] Duration);

    /// Writes a present duration as [`humantime_serde_compat`] does, an absent one as `null`.
    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        d.map(Wrapped).serialize(s)
    }

    /// Seconds, a humantime string, or `null`.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<Wrapped>::deserialize(d)?.map(|w| w.0))
    }
}

/// Serde adapter for durations as humantime strings (`"90s"`, `"1h 30m"`); also accepts seconds as a number.
pub mod humantime_serde_compat {
    use serde::{Deserializer, Serializer};
    use std::time::Duration;

    /// Writes the duration as a humantime string, e.g. `"1h 30m"`.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*d))
    }

    /// Seconds as a number, or a string such as `"90s"` or `"1h 30m"`. A visitor rather than an untagged
    /// enum: that one built (and dropped) an error for every string it first tried as a number, and
    /// answered a wrong type with "did not match any variant".
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        d.deserialize_any(DurationVisitor)
    }

    struct DurationVisitor;

    impl serde::de::Visitor<'_> for DurationVisitor {
        type Value = Duration;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(
                "a duration: seconds as a number, or a string such as \"90s\" or \"1h 30m\"",
            )
        }

        fn visit_f64<E: serde::de::Error>(self, s: f64) -> Result<Duration, E> {
            if (0.0..1e12).contains(&s) {
                Ok(Duration::from_secs_f64(s))
            } else {
                Err(E::custom(format!(
                    "invalid duration {s}: must be non-negative and finite"
                )))
            }
        }

        fn visit_u64<E: serde::de::Error>(self, s: u64) -> Result<Duration, E> {
            self.visit_f64(s as f64)
        }

        fn visit_i64<E: serde::de::Error>(self, s: i64) -> Result<Duration, E> {
            self.visit_f64(s as f64)
        }

        fn visit_str<E: serde::de::Error>(self, t: &str) -> Result<Duration, E> {
            humantime::parse_duration(t.trim())
                .map_err(|e| E::custom(format!("invalid duration {t:?}: {e}")))
        }
    }
}

/// `word` for a POSIX shell: as it is when it needs no quoting, else in single quotes (a `'` inside as
/// `'\''`).
fn shell_quoted(word: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_lines_quote_what_a_shell_would_split_or_expand() {
        let mut spec = JobSpec::new(
            "ffmpeg",
            ["-i", "my clip.mov", "it's", "", "$HOME", "out.mp4"],
        );
        spec.args.push("a=b,c:d".into());
        assert_eq!(
            spec.command_line(),
            "ffmpeg -i 'my clip.mov' 'it'\\''s' '' '$HOME' out.mp4 a=b,c:d"
        );
    }

    fn spec() -> JobSpec {
        JobSpec::new("ffmpeg", ["-version"])
    }

    fn check(edit: impl FnOnce(&mut JobSpec), expected: Result<(), &str>) {
        let mut s = spec();
        edit(&mut s);
        let got = s.validate().map_err(|e| e.to_string());
        assert_eq!(got.as_ref().map(|_| ()).map_err(String::as_str), expected);
    }

    #[test]
    fn media_and_dependency_fields_are_checked() {
        let secs = Duration::from_secs;
        check(|s| s.expected_duration = Some(secs(90)), Ok(()));
        check(|s| s.stall_after = Some(secs(30 * 24 * 3600)), Ok(()));
        for (what, edit) in [
            (
                "expected_duration out of range",
                Box::new(|s: &mut JobSpec| s.expected_duration = Some(Duration::ZERO))
                    as Box<dyn Fn(&mut JobSpec)>,
            ),
            (
                "stall_after out of range",
                Box::new(|s: &mut JobSpec| s.stall_after = Some(Duration::ZERO)),
            ),
            (
                "stall_after out of range",
                Box::new(|s: &mut JobSpec| s.stall_after = Some(secs(30 * 24 * 3600 + 1))),
            ),
            (
                "expected_duration out of range",
                Box::new(|s: &mut JobSpec| s.expected_duration = Some(secs(31 * 24 * 3600))),
            ),
        ] {
            let mut s = spec();
            edit(&mut s);
            let error = s.validate().expect_err(what).to_string();
            assert!(error.contains(what), "{error}");
        }
        check(|s| s.min_speed = Some(0.5), Ok(()));
        check(|s| s.min_speed = Some(1000.0), Ok(()));
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY, 1000.5] {
            let mut s = spec();
            s.min_speed = Some(bad);
            let error = s.validate().expect_err("a bad speed floor").to_string();
            assert!(error.contains("min_speed"), "{bad}: {error}");
        }
        check(|s| s.after = vec![JobId(1), JobId(9)], Ok(()));
        check(
            |s| s.after = vec![JobId(3), JobId(0)],
            Err("after out of range: 0 is not a job id"),
        );
        check(
            |s| s.after = (1..=limits::MAX_DEPENDENCIES as i64).map(JobId).collect(),
            Ok(()),
        );
        check(
            |s| {
                s.after = (1..=limits::MAX_DEPENDENCIES as i64 + 1)
                    .map(JobId)
                    .collect()
            },
            Err("too many dependencies (after) (at most 256)"),
        );
    }

    #[test]
    fn media_fields_read_seconds_or_text_and_stay_out_when_unset() {
        let s: JobSpec = serde_json::from_value(serde_json::json!({
            "program": "ffmpeg", "expected_duration": 90, "stall_after": "2m",
            "min_speed": 0.5, "after": [3], "progress": "ffmpeg_stderr"
        }))
        .unwrap();
        assert_eq!(s.expected_duration, Some(Duration::from_secs(90)));
        assert_eq!(s.stall_after, Some(Duration::from_secs(120)));
        assert_eq!(s.progress, crate::media::ProgressMode::FfmpegStderr);
        assert_eq!(s.after, [JobId(3)]);
        let written = serde_json::to_value(&s).unwrap();
        assert_eq!(written["stall_after"], "2m");
        assert_eq!(written["progress"], "ffmpeg_stderr");
        let plain = serde_json::to_value(spec()).unwrap();
        for absent in [
            "progress",
            "expected_duration",
            "stall_after",
            "min_speed",
            "after",
        ] {
            assert!(plain.get(absent).is_none(), "{absent} written when unset");
        }
        assert!(serde_json::from_value::<JobSpec>(
            serde_json::json!({"program": "x", "stall_after": -1})
        )
        .is_err());
    }

    #[test]
    fn validation_table() {
        check(|_| {}, Ok(()));
        check(|s| s.program = "  ".into(), Err("the program is empty"));
        check(
            |s| s.args.push("a\0b".into()),
            Err("argument 2 contains a NUL byte"),
        );
        check(
            |s| s.args.push("x".repeat(limits::MAX_ARG_BYTES + 1)),
            Err("argument 2 is longer than 131071 bytes"),
        );
        check(
            |s| s.timeout = Duration::ZERO,
            Err("timeout out of range: must be greater than zero"),
        );
        check(
            |s| s.cwd = Some("rel/dir".into()),
            Err("working directory \"rel/dir\" must be an absolute path"),
        );
        check(
            |s| _ = s.env.insert("A=B".into(), "x".into()),
            Err("invalid environment variable name \"A=B\""),
        );
        check(
            |s| _ = s.labels.insert("bad key".into(), "x".into()),
            Err("invalid label name \"bad key\" (letters, digits, _ - . / only)"),
        );
        check(
            |s| s.resources.cpu = Some(-1.0),
            Err("cpu out of range: must be in [0.001, 4096]"),
        );
        for cpu in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -0.5, 0.0] {
            check(
                |s| s.resources.cpu = Some(cpu),
                Err("cpu out of range: must be in [0.001, 4096]"),
            );
        }
        check(
            |s| s.resources.memory = Some(ByteSize(0)),
            Err("memory out of range: must be greater than zero"),
        );
        check(|s| s.resources.cpu = Some(0.5), Ok(()));
        check(
            |s| s.resources.memory = Some(ByteSize(1000)),
            Err("memory out of range: a stated memory request is also the job's limit: at least 1 MiB"),
        );
        check(
            |s| s.resources.memory_max = Some(ByteSize(1000)),
            Err("memory_max out of range: must be at least 1 MiB"),
        );
        check(
            |s| {
                s.resources.memory = Some(ByteSize(2 << 30));
                s.resources.memory_max = Some(ByteSize(1 << 30));
            },
            Err("memory_max out of range: must be at least the memory request"),
        );
        check(
            |s| {
                s.resources.memory = Some(ByteSize(1 << 30));
                s.resources.memory_max = Some(ByteSize(2 << 30));
            },
            Ok(()),
        );
    }

    /// Linux refuses (E2BIG) an argv or environment string of 32 pages, its NUL included: 131,071
    /// bytes is the most, for the program, each argument and each `KEY=VALUE` entry.
    #[test]
    fn strings_stop_at_the_kernels_limit_per_string() {
        const MOST: usize = 131_071;
        assert_eq!(limits::MAX_ARG_BYTES, MOST);
        let refused = |what: &str| Err(format!("{what} is longer than {MOST} bytes"));
        let got = |edit: &dyn Fn(&mut JobSpec)| {
            let mut s = spec();
            edit(&mut s);
            s.validate().map_err(|e| e.to_string())
        };
        assert_eq!(got(&|s| s.args = vec!["x".repeat(MOST)]), Ok(()));
        assert_eq!(
            got(&|s| s.args = vec!["x".repeat(MOST + 1)]),
            refused("argument 1")
        );
        assert_eq!(got(&|s| s.program = "p".repeat(MOST)), Ok(()));
        assert_eq!(
            got(&|s| s.program = "p".repeat(MOST + 1)),
            refused("program")
        );
        // `K=` and the value: the entry is one string.
        assert_eq!(
            got(&|s| _ = s.env.insert("K".into(), "v".repeat(MOST - 2))),
            Ok(())
        );
        assert_eq!(
            got(&|s| _ = s.env.insert("K".into(), "v".repeat(MOST - 1))),
            refused("environment entry K=…")
        );
        // Name and value each under the limit, together over it.
        let e = got(&|s| _ = s.env.insert("N".repeat(70_000), "v".repeat(70_000))).unwrap_err();
        assert!(
            e.starts_with(&format!("environment entry {}…=…", "N".repeat(64))),
            "{e}"
        );
        let e = SpecError::TooLong {
            what: String::new(),
            max: 0,
        };
        assert!(e.is_size_limit(), "answered 422 limit_exceeded");
        assert_eq!(check_env_entry("SECRET", MOST - 7), Ok(()));
        assert!(check_env_entry("SECRET", MOST - 6).is_err());
    }

    #[test]
    fn leases_share_the_resource_rules_but_have_no_limit() {
        let lease = |edit: &dyn Fn(&mut ResourceRequest)| {
            let mut resources = ResourceRequest::default();
            edit(&mut resources);
            LeaseSpec {
                resources,
                ttl: Duration::from_secs(30),
                holder: None,
            }
            .validate()
            .map_err(|e| e.to_string())
        };
        assert_eq!(
            lease(&|r| r.memory = Some(ByteSize(1000))),
            Ok(()),
            "a lease only reserves"
        );
        assert_eq!(
            lease(&|r| r.memory_max = Some(ByteSize(1 << 30))),
            Err(
                "memory_max out of range: a lease holds what it states; it has no process to limit"
                    .into()
            )
        );
        assert_eq!(
            lease(&|r| _ = r.providers.insert("bad name".into())),
            Err("invalid provider name \"bad name\" (letters, digits, _ - . only)".into())
        );
        assert_eq!(
            lease(&|r| r.vram = Some(ByteSize(1 << 30))),
            Err("vram out of range: needs gpus of at least 1".into())
        );
    }

    #[test]
    fn the_limit_is_memory_max_else_a_stated_request() {
        let mut s = spec();
        assert_eq!(s.memory_limit(), None);
        s.resources.memory = Some(ByteSize(1 << 30));
        assert_eq!(s.memory_limit(), Some(ByteSize(1 << 30)));
        s.resources.memory_max = Some(ByteSize(3 << 30));
        assert_eq!(s.memory_limit(), Some(ByteSize(3 << 30)));
    }

    #[test]
    fn json_rejects_unknown_fields_and_negative_timeouts() {
        let bad = serde_json::from_str::<JobSpec>(r#"{"program":"true","bogus":1}"#).unwrap_err();
        assert!(bad.to_string().contains("unknown field `bogus`"), "{bad}");
        let neg =
            serde_json::from_str::<JobSpec>(r#"{"program":"true","timeout":-3}"#).unwrap_err();
        assert!(neg.to_string().contains("non-negative"), "{neg}");
        let ok: JobSpec = serde_json::from_str(
            r#"{"program":"true","timeout":"90s","resources":{"memory":"2G"}}"#,
        )
        .unwrap();
        assert_eq!(ok.timeout, Duration::from_secs(90));
        assert_eq!(ok.resources.memory, Some(ByteSize(2 << 30)));
        assert_eq!(ok.stop, StopSequence::default());
        // A wrong type says what was expected, not "did not match any variant".
        let wrong = |json: &str| {
            serde_json::from_str::<JobSpec>(json)
                .unwrap_err()
                .to_string()
        };
        let e = wrong(r#"{"program":"true","timeout":true}"#);
        assert!(e.contains("expected a duration"), "{e}");
        let e = wrong(r#"{"program":"true","timeout":"soon"}"#);
        assert!(e.contains("invalid duration \"soon\""), "{e}");
        let e = wrong(r#"{"program":"true","resources":{"memory":-5}}"#);
        assert!(e.contains("must not be negative"), "{e}");
        let e = wrong(r#"{"program":"true","resources":{"memory":1.5}}"#);
        assert!(e.contains("expected a size"), "{e}");
        let secs: JobSpec = serde_json::from_str(r#"{"program":"true","timeout":2.5}"#).unwrap();
        assert_eq!(secs.timeout, Duration::from_millis(2500));
    }

    #[test]
    fn stop_sequence_parses() {
        let s: StopSequence = "INT:5s, SIGTERM:2s".parse().unwrap();
        assert_eq!(s.0.len(), 2);
        assert_eq!(s.total_grace(), Duration::from_secs(7));
        assert!("BOGUS:1s".parse::<StopSequence>().is_err());
        assert!("INT".parse::<StopSequence>().is_err());
    }

    #[test]
    fn memory_line_matches_the_documents() {
        let a = Accounting {
            memory_start: Some(ByteSize(10 << 20)),
            memory_peak: Some(ByteSize(310 << 20)),
            memory_end: Some(ByteSize(12 << 20)),
            memory_source: Some(MemorySource::CgroupPeak),
            ..Default::default()
        };
        assert_eq!(
            a.memory_line(),
            "Start=10.0MB, Peak=310.0MB, End=12.0MB, Delta=+2.0MB (kernel high-water mark)"
        );
        // Rounded as `{:.1}` rounds a MiB figure, ties included; a shrinking job's delta is negative.
        for bytes in [
            0,
            1,
            52_428,
            52_429,
            104_857,
            262_144,
            786_432,
            1 << 20,
            123_456_789,
            u64::MAX >> 12,
        ] {
            let b = Accounting {
                memory_start: Some(ByteSize(bytes)),
                memory_peak: None,
                memory_end: Some(ByteSize(0)),
                ..Default::default()
            };
            let mib = ByteSize(bytes).mib();
            assert_eq!(
                b.memory_line(),
                format!(
                    "Start={mib:.1}MB, Peak=?MB, End=0.0MB, Delta={:+.1}MB",
                    0.0 - mib
                ),
                "{bytes} bytes"
            );
        }
    }
}

/// Resource use of a running tree, as last sampled. Plain data, so that every layer can show it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LiveUsage {
    /// The tree's memory now, in bytes: its cgroup's charge, page cache included (the RSS sum on the
    /// fallback).
    pub memory_current: Option<u64>,
    /// `memory_current` less the page cache the kernel can reclaim: what the job really uses, and what
    /// admission charges it (the RSS sum on the fallback).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_in_use: Option<u64>,
    /// The highest memory so far, in bytes (how it was measured: `memory_source`).
    pub memory_peak: Option<u64>,
    /// Where `memory_peak` comes from.
    pub memory_source: Option<MemorySource>,
    /// CPU time in user mode so far, all processes of the tree together, seconds.
    pub cpu_user_secs: Option<f64>,
    /// CPU time in kernel mode so far, all processes of the tree together, seconds.
    pub cpu_system_secs: Option<f64>,
    /// Processes in the tree now.
    pub processes: u32,
    /// The most processes the tree has had at once.
    pub peak_processes: u32,
    /// How far the job has come, for a job that reports progress (FFmpeg, the generic protocol).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<crate::media::Progress>,
}

impl LiveUsage {
    /// The memory the job really uses: in use where sampled that way, else its current charge (a job
    /// not sampled yet has only its start figure).
    pub fn memory_used(&self) -> Option<u64> {
        self.memory_in_use.or(self.memory_current)
    }
}

/// The memory a job reserves and where that figure came from; shown in the job record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MemoryRequest {
    /// The memory admission reserves.
    pub bytes: ByteSize,
    /// How the figure was arrived at (`source` in the record, with its details beside it).
    #[serde(flatten)]
    pub source: RequestSource,
}

/// How a job's memory request was arrived at.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "source", rename_all = "snake_case")]
pub enum RequestSource {
    /// The job stated it.
    Stated,
    /// A high percentile of the recorded peaks of earlier successful jobs of its `kind`, plus a margin.
    Learned {
        /// The `kind` label whose history was used.
        kind: String,
        /// How many recorded peaks it was learned from.
        samples: usize,
        /// The percentile of those peaks, in bytes, before the margin was added.
        percentile_bytes: u64,
    },
    /// No statement and too little history: the configured default.
    Default,
    /// Raised after the memory pressure responder stopped the job: its previous request or the peak it
    /// reached, whichever is larger, times the configured growth factor.
    Pressure {
        /// The request of the attempt that was stopped, in bytes.
        previous_bytes: u64,
        /// That attempt's memory peak, in bytes (0 if unknown).
        peak_bytes: u64,
    },
    /// A job of its `kind` was seen using more than it reserved while it ran: the most seen (since the
    /// daemon started) plus the learning margin, where that is above what the finished runs say.
    Overrun {
        /// The `kind` label of the job seen over its request.
        kind: String,
        /// The most memory seen in use by a running job of that kind, in bytes, before the margin.
        observed_bytes: u64,
    },
}

/// A request for a lease: resources held by work outside Aura's processes (a provider call, an in-process
/// render) for `ttl`, renewed by its holder; reclaimed when the holder stops renewing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct LeaseSpec {
    /// What the lease holds (no `memory_max`: there is no process to limit).
    #[serde(default)]
    pub resources: ResourceRequest,
    /// How long the lease lasts unless renewed; at most [`LeaseSpec::MAX_TTL`].
    #[serde(with = "humantime_serde_compat")]
    #[cfg_attr(feature = "openapi", schema(value_type = crate::openapi::Duration))]
    pub ttl: std::time::Duration,
    /// Who holds it, for people reading the lease list.
    #[serde(default)]
    pub holder: Option<String>,
}

impl LeaseSpec {
    /// The longest `ttl`: 1 hour.
    pub const MAX_TTL: std::time::Duration = std::time::Duration::from_secs(3600);

    /// Checks the ttl, the holder's length and the resources (as for a job, without `memory_max`).
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.ttl.is_zero() || self.ttl > Self::MAX_TTL {
            return Err(SpecError::OutOfRange {
                what: "ttl",
                detail: "must be between 1ms and 1 hour".into(),
            });
        }
        if let Some(holder) = &self.holder {
            check_text("holder", holder, limits::MAX_LABEL_BYTES)?;
        }
        if self.resources.memory_max.is_some() {
            return Err(SpecError::OutOfRange {
                what: "memory_max",
                detail: "a lease holds what it states; it has no process to limit".into(),
            });
        }
        self.resources.validate()
    }
}

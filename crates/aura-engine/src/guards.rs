//! Live admission guards: admission pauses while the host is short of memory, under memory pressure (PSI),
//! or busy with work that is not Aura's — the studio UI or an editor on the same machine keeps priority,
//! while Aura's own jobs are governed by their CPU reservations. Each guard has hysteresis (it trips at one
//! threshold and clears at a gentler one) so admission does not flap.
//!
//! One thread judges the host sampler's latest snapshot (plus the jobs' cgroup CPU), and tells the actor
//! only when the answer changes.

use crate::protocol::Command;
use crate::shared::Shared;
use aura_model::{ByteSize, EngineEvent};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// An amount of available memory or free disk: a share of the total — physical memory, or the data
/// volume's size — (`0.2`, `"20%"`) or a size (`"2GiB"`, or a whole number of bytes above 1).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum MemoryThreshold {
    /// A share of the total, from 0 to 1.
    Share(f64),
    /// An absolute amount, in bytes.
    Bytes(u64),
}

impl MemoryThreshold {
    /// The threshold in bytes, given the total (physical memory, or the volume's size) in bytes.
    pub fn bytes(self, total: u64) -> u64 {
        match self {
            MemoryThreshold::Share(s) => (total as f64 * s) as u64,
            MemoryThreshold::Bytes(b) => b,
        }
    }

    fn valid(self) -> bool {
        match self {
            MemoryThreshold::Share(s) => (0.0..=1.0).contains(&s),
            MemoryThreshold::Bytes(_) => true,
        }
    }

    /// Whether `self` is at least `other` (only comparable when both are of one kind).
    fn at_least(self, other: MemoryThreshold) -> bool {
        match (self, other) {
            (MemoryThreshold::Share(a), MemoryThreshold::Share(b)) => a >= b,
            (MemoryThreshold::Bytes(a), MemoryThreshold::Bytes(b)) => a >= b,
            _ => true,
        }
    }
}

impl std::fmt::Display for MemoryThreshold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MemoryThreshold::Share(s) => write!(f, "{:.0} %", s * 100.0),
            MemoryThreshold::Bytes(b) => write!(f, "{}", ByteSize(*b)),
        }
    }
}

impl serde::Serialize for MemoryThreshold {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            MemoryThreshold::Share(x) => s.serialize_f64(*x),
            MemoryThreshold::Bytes(b) => s.serialize_str(&ByteSize(*b).to_string()),
        }
    }
}

impl<'de> serde::Deserialize<'de> for MemoryThreshold {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(f64),
            Text(String),
        }
        let bad = |what: &str| {
            serde::de::Error::custom(format!(
                "invalid threshold {what}: use a share (0.2 or \"20%\" of physical memory, or of the data volume for a disk threshold) or a size (\"2GiB\")"
            ))
        };
        match Raw::deserialize(d)? {
            Raw::Number(x) if (0.0..=1.0).contains(&x) => Ok(MemoryThreshold::Share(x)),
            Raw::Number(x) if x > 1.0 && x.fract() == 0.0 && x < 1e19 => {
                Ok(MemoryThreshold::Bytes(x as u64))
            }
            Raw::Number(x) => Err(bad(&x.to_string())),
            Raw::Text(t) => {
                let t = t.trim();
                if let Some(pct) = t.strip_suffix('%') {
                    match pct.trim().parse::<f64>() {
                        Ok(p) if (0.0..=100.0).contains(&p) => {
                            Ok(MemoryThreshold::Share(p / 100.0))
                        }
                        _ => Err(bad(t)),
                    }
                } else {
                    t.parse::<ByteSize>()
                        .map(|b| MemoryThreshold::Bytes(b.bytes()))
                        .map_err(|_| bad(t))
                }
            }
        }
    }
}

/// Thresholds, with the defaults of `aura serve`; the `[guards]` section of its configuration as is.
///
/// Two stages. Stage 1 pauses admission (nothing new starts). Stage 2, the pressure responder, acts when
/// memory is critical for `critical_sustain`: it stops one running job (see `crate::pressure` for the
/// ranking) with its stop sequence, requeues it with a larger memory request, then waits
/// `victim_cooldown` before it may choose another, so the kernel can reclaim what the victim freed.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GuardConfig {
    /// Whether the guards run at all; off, admission never pauses for the host and no job is stopped
    /// for memory. Default: on.
    pub enabled: bool,
    /// How often the guards judge the host. Default: 1 s.
    #[serde(with = "aura_model::humantime_serde_compat")]
    pub interval: Duration,
    /// Pause while available memory (`MemAvailable`) is below this, resume above `resume_available_memory`.
    pub min_available_memory: MemoryThreshold,
    /// Available memory above which a pause for low memory ends. Default: 25 % of physical memory.
    pub resume_available_memory: MemoryThreshold,
    /// Pause above this PSI `some avg10` memory pressure (percent), resume below `resume_memory_pressure`.
    pub max_memory_pressure: f64,
    /// PSI `some avg10` memory pressure (percent) below which a pause for pressure ends. Default: 20.
    pub resume_memory_pressure: f64,
    /// Pause while CPU use by work outside Aura's jobs, averaged over `cpu_window`, is above this share
    /// of the machine; resume below `resume_outside_cpu`.
    pub max_outside_cpu: f64,
    /// Share of the machine's CPU (0–1) used outside Aura's jobs below which a pause for CPU ends.
    /// Default: 0.75.
    pub resume_outside_cpu: f64,
    /// The span outside CPU use is averaged over. Default: 10 s.
    #[serde(with = "aura_model::humantime_serde_compat")]
    pub cpu_window: Duration,
    /// Pause while the data dir's volume has less than this free (a share of the volume or a size):
    /// jobs would start only to find no room for their logs and work files, and the database for their
    /// records; resume above `resume_free_disk`.
    pub min_free_disk: MemoryThreshold,
    /// Free space on the data dir's volume above which a pause for disk ends. Default: 4 % of the volume.
    pub resume_free_disk: MemoryThreshold,
    /// Stage 2 (critical) below this much available memory; cleared above `critical_resume_available_memory`.
    pub critical_available_memory: MemoryThreshold,
    /// Available memory above which the critical stage for low memory clears. Default: 10 % of physical
    /// memory.
    pub critical_resume_available_memory: MemoryThreshold,
    /// Stage 2 above this PSI `full avg10` memory pressure (percent: every task stalled on memory);
    /// cleared below `critical_resume_memory_pressure`.
    pub critical_memory_pressure: f64,
    /// PSI `full avg10` memory pressure (percent) below which the critical stage for pressure clears.
    /// Default: 10.
    pub critical_resume_memory_pressure: f64,
    /// How long memory must stay critical before a victim is chosen.
    #[serde(with = "aura_model::humantime_serde_compat")]
    pub critical_sustain: Duration,
    /// After a victim: no other before this has passed.
    #[serde(with = "aura_model::humantime_serde_compat")]
    pub victim_cooldown: Duration,
    /// Emergency stage (earlyoom's): while available memory is below `fast_watch_below`, the guard reads
    /// `/proc/meminfo` every `fast_interval`; below `emergency_available_memory` it kills the victim's
    /// tree at once (SIGKILL, no grace, no sustain), before the kernel's OOM killer picks a job by itself.
    pub fast_watch_below: MemoryThreshold,
    /// How often `/proc/meminfo` is read while available memory is below `fast_watch_below`; at most
    /// `interval`. Default: 100 ms.
    #[serde(with = "aura_model::humantime_serde_compat")]
    pub fast_interval: Duration,
    /// Available memory below which the victim's tree is killed at once. Default: 4 % of physical memory.
    pub emergency_available_memory: MemoryThreshold,
    /// A victim is requeued asking for max(its request, its peak) times this.
    pub requeue_growth: f64,
    /// Keeping the desktop responsive: running jobs' CPU capped while the machine is busy outside Aura.
    pub throttle: ThrottleConfig,
}

/// The CPU throttle of running jobs (`[guards.throttle]`): while CPU use outside Aura's jobs, averaged
/// over `window`, stays above `above_outside_cpu`, all jobs together may use at most `cpu_share` of the
/// machine (one instance-level cpu controller write: `cpu.max` on cgroup v2, `cpu.cfs_quota_us` on v1;
/// SCHED_IDLE where there is no cpu controller); below `below_outside_cpu` the cap is lifted.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ThrottleConfig {
    /// Whether running jobs are throttled at all (admission still pauses by `max_outside_cpu`).
    /// Default: on.
    pub enabled: bool,
    /// The share of the machine's CPU (0–1] all of Aura's jobs together may use while throttled.
    /// Default: 0.5.
    pub cpu_share: f64,
    /// Throttle while CPU use outside Aura's jobs is above this share of the machine. Default: 0.2.
    pub above_outside_cpu: f64,
    /// Lift the cap once CPU use outside Aura's jobs is below this share. Default: 0.1.
    pub below_outside_cpu: f64,
    /// The span outside CPU use is averaged over for the throttle: short, so the desktop gets its CPU
    /// back within a few seconds. Default: 2 s.
    #[serde(with = "aura_model::humantime_serde_compat")]
    pub window: Duration,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        ThrottleConfig {
            enabled: true,
            cpu_share: 0.5,
            above_outside_cpu: 0.2,
            below_outside_cpu: 0.1,
            window: Duration::from_secs(2),
        }
    }
}

impl ThrottleConfig {
    fn valid(&self, interval: Duration) -> bool {
        self.cpu_share > 0.0
            && self.cpu_share <= 1.0
            && (0.0..=1.0).contains(&self.above_outside_cpu)
            && (0.0..=1.0).contains(&self.below_outside_cpu)
            && self.below_outside_cpu <= self.above_outside_cpu
            && self.window >= interval
    }
}

impl GuardConfig {
    /// Shares and pressures in range, each resume threshold on the safe side of its trip threshold,
    /// critical thresholds no gentler than the pause thresholds, `cpu_window >= interval > 0`, growth ≥ 1.
    pub fn validate(&self) -> Result<(), String> {
        let ratio = |x: f64| (0.0..=1.0).contains(&x);
        let percent = |x: f64| (0.0..=100.0).contains(&x);
        let memory = [
            self.min_available_memory,
            self.resume_available_memory,
            self.critical_available_memory,
            self.critical_resume_available_memory,
        ];
        let ok = memory.iter().all(|m| m.valid())
            && self
                .resume_available_memory
                .at_least(self.min_available_memory)
            && self
                .critical_resume_available_memory
                .at_least(self.critical_available_memory)
            && self
                .min_available_memory
                .at_least(self.critical_available_memory)
            && self.min_free_disk.valid()
            && self.resume_free_disk.valid()
            && self.resume_free_disk.at_least(self.min_free_disk)
            && percent(self.max_memory_pressure)
            && percent(self.resume_memory_pressure)
            && self.resume_memory_pressure <= self.max_memory_pressure
            && percent(self.critical_memory_pressure)
            && percent(self.critical_resume_memory_pressure)
            && self.critical_resume_memory_pressure <= self.critical_memory_pressure
            && ratio(self.max_outside_cpu)
            && ratio(self.resume_outside_cpu)
            && self.resume_outside_cpu <= self.max_outside_cpu
            && !self.interval.is_zero()
            && self.cpu_window >= self.interval
            && self.fast_watch_below.valid()
            && self.emergency_available_memory.valid()
            && self
                .critical_available_memory
                .at_least(self.emergency_available_memory)
            && self
                .fast_watch_below
                .at_least(self.emergency_available_memory)
            && !self.fast_interval.is_zero()
            && self.fast_interval <= self.interval
            && self.requeue_growth.is_finite()
            && self.requeue_growth >= 1.0
            && self.throttle.valid(self.interval);
        if ok {
            Ok(())
        } else {
            Err("guards need memory and free-disk thresholds as shares in [0, 1] or sizes, pressures in [0, 100], \
                 each resume threshold on the safe side of its trip threshold, critical memory thresholds no higher than \
                 the pause thresholds (and the emergency one no higher than those), 0 < fast_interval <= interval, cpu_window >= interval > 0, requeue_growth >= 1, \
                 and a throttle with 0 < cpu_share <= 1, below_outside_cpu <= above_outside_cpu (both shares) and window >= interval"
                .into())
        }
    }
}

impl GuardConfig {
    /// What `validate` cannot check alone: thresholds given one as a share and one as a size, compared in
    /// bytes of this host's physical memory (`total`).
    pub fn check_for_host(&self, total: u64) -> Result<(), String> {
        let pairs = [
            (
                self.resume_available_memory,
                self.min_available_memory,
                "resume_available_memory",
                "min_available_memory",
            ),
            (
                self.critical_resume_available_memory,
                self.critical_available_memory,
                "critical_resume_available_memory",
                "critical_available_memory",
            ),
            (
                self.min_available_memory,
                self.critical_available_memory,
                "min_available_memory",
                "critical_available_memory",
            ),
        ];
        for (high, low, high_name, low_name) in pairs {
            if high.bytes(total) < low.bytes(total) {
                return Err(format!(
                    "guards.{high_name} ({high}) must not be below guards.{low_name} ({low}) on this host \
                     ({} of memory)",
                    ByteSize(total)
                ));
            }
        }
        Ok(())
    }
}

impl Default for GuardConfig {
    fn default() -> Self {
        GuardConfig {
            enabled: true,
            interval: Duration::from_secs(1),
            min_available_memory: MemoryThreshold::Share(0.20),
            resume_available_memory: MemoryThreshold::Share(0.25),
            max_memory_pressure: 40.0,
            resume_memory_pressure: 20.0,
            max_outside_cpu: 0.85,
            resume_outside_cpu: 0.75,
            cpu_window: Duration::from_secs(10),
            min_free_disk: MemoryThreshold::Share(0.02),
            resume_free_disk: MemoryThreshold::Share(0.04),
            critical_available_memory: MemoryThreshold::Share(0.05),
            critical_resume_available_memory: MemoryThreshold::Share(0.10),
            critical_memory_pressure: 30.0,
            critical_resume_memory_pressure: 10.0,
            critical_sustain: Duration::from_secs(3),
            victim_cooldown: Duration::from_secs(30),
            fast_watch_below: MemoryThreshold::Share(0.15),
            fast_interval: Duration::from_millis(100),
            emergency_available_memory: MemoryThreshold::Share(0.04),
            requeue_growth: 1.5,
            throttle: ThrottleConfig::default(),
        }
    }
}

/// One look at the host: shares of 0–1, PSI in percent.
pub use aura_model::HostReading as Reading;

/// Which guards are tripped; the hysteresis memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tripped {
    memory: bool,
    pressure: bool,
    disk: bool,
    cpu: bool,
    critical_memory: bool,
    critical_pressure: bool,
}

impl Tripped {
    /// Which stage-1 guard holds admission (the one `evaluate` names), if any.
    fn pausing(&self) -> Option<&'static str> {
        [
            (self.memory, "memory"),
            (self.pressure, "pressure"),
            (self.disk, "disk"),
            (self.cpu, "cpu"),
        ]
        .into_iter()
        .find_map(|(tripped, name)| tripped.then_some(name))
    }
}

/// A trip/clear pair: below (or above) one threshold trips, the other clears.
fn hysteresis(
    tripped: &mut bool,
    value: Option<f64>,
    trip: impl Fn(f64) -> bool,
    clear: impl Fn(f64) -> bool,
) {
    if let Some(v) = value {
        *tripped = if *tripped { !clear(v) } else { trip(v) };
    }
}

fn below(tripped: &mut bool, reading: &Reading, trip: MemoryThreshold, clear: MemoryThreshold) {
    if let (Some(avail), Some(total)) = (reading.available_memory_bytes, reading.total_memory_bytes)
    {
        hysteresis(
            tripped,
            Some(avail as f64),
            |v| v < trip.bytes(total) as f64,
            |v| v > clear.bytes(total) as f64,
        );
    }
}

fn available(reading: &Reading) -> String {
    match (reading.available_memory_bytes, reading.available_memory) {
        (Some(b), Some(share)) => format!("{} ({:.0} %)", ByteSize(b), share * 100.0),
        _ => "unknown".into(),
    }
}

/// The memory half of a stage: available memory against a trip and a clear threshold, and a PSI memory
/// figure likewise; `verbs` name what tripping and clearing do ("pauses"/"resumes").
struct MemoryGuard<'a> {
    available: (MemoryThreshold, MemoryThreshold),
    psi_name: &'a str,
    psi: Option<f64>,
    psi_thresholds: (f64, f64),
    verbs: (&'a str, &'a str),
}

impl MemoryGuard<'_> {
    /// Applies the reading to both flags, and names the first one tripped.
    fn judge(&self, memory: &mut bool, pressure: &mut bool, reading: &Reading) -> Option<String> {
        let (trip, clear) = self.verbs;
        below(memory, reading, self.available.0, self.available.1);
        let (psi_trip, psi_clear) = self.psi_thresholds;
        hysteresis(pressure, self.psi, |v| v > psi_trip, |v| v < psi_clear);
        if *memory {
            return Some(format!(
                "available memory {} ({trip} below {}, {clear} above {})",
                available(reading),
                self.available.0,
                self.available.1
            ));
        }
        pressure.then(|| {
            format!(
                "memory pressure (PSI {}) {:.1} % ({trip} above {psi_trip:.0} %, {clear} below {psi_clear:.0} %)",
                self.psi_name,
                self.psi.unwrap_or_default()
            )
        })
    }
}

/// Applies one reading with hysteresis and returns why admission is paused (stage 1), if it is.
pub fn evaluate(config: &GuardConfig, tripped: &mut Tripped, reading: &Reading) -> Option<String> {
    let memory = MemoryGuard {
        available: (config.min_available_memory, config.resume_available_memory),
        psi_name: "some avg10",
        psi: reading.memory_pressure,
        psi_thresholds: (config.max_memory_pressure, config.resume_memory_pressure),
        verbs: ("pauses", "resumes"),
    }
    .judge(&mut tripped.memory, &mut tripped.pressure, reading);
    hysteresis(
        &mut tripped.cpu,
        reading.outside_cpu,
        |v| v > config.max_outside_cpu,
        |v| v < config.resume_outside_cpu,
    );
    if let (Some(free), Some(total)) = (reading.free_disk_bytes, reading.total_disk_bytes) {
        hysteresis(
            &mut tripped.disk,
            Some(free as f64),
            |v| v < config.min_free_disk.bytes(total) as f64,
            |v| v > config.resume_free_disk.bytes(total) as f64,
        );
    }
    let disk = || {
        tripped.disk.then(|| {
            format!(
                "data volume free space {} of {} (pauses below {}, resumes above {})",
                ByteSize(reading.free_disk_bytes.unwrap_or_default()),
                ByteSize(reading.total_disk_bytes.unwrap_or_default()),
                config.min_free_disk,
                config.resume_free_disk
            )
        })
    };
    let pct = |x: f64| x * 100.0;
    memory.or_else(disk).or_else(|| {
        tripped.cpu.then(|| {
            format!(
                "CPU use outside Aura's jobs {:.0} % over the window (pauses above {:.0} %, resumes below {:.0} %)",
                pct(reading.outside_cpu.unwrap_or_default()),
                pct(config.max_outside_cpu),
                pct(config.resume_outside_cpu)
            )
        })
    })
}

/// Stage 2: applies one reading to the critical thresholds (with hysteresis) and returns why memory is
/// critical, if it is.
pub fn evaluate_critical(
    config: &GuardConfig,
    tripped: &mut Tripped,
    reading: &Reading,
) -> Option<String> {
    MemoryGuard {
        available: (
            config.critical_available_memory,
            config.critical_resume_available_memory,
        ),
        psi_name: "full avg10",
        psi: reading.memory_pressure_full,
        psi_thresholds: (
            config.critical_memory_pressure,
            config.critical_resume_memory_pressure,
        ),
        verbs: ("critical", "clears"),
    }
    .judge(
        &mut tripped.critical_memory,
        &mut tripped.critical_pressure,
        reading,
    )
}

/// When the pressure responder may act: critical for `critical_sustain`, and not within `victim_cooldown`
/// of the last victim. Pure, so the timing rules are tested without a host under pressure.
#[derive(Debug, Default)]
pub struct Responder {
    critical_since: Option<Instant>,
    last_victim: Option<Instant>,
    /// This critical episode found nobody to stop: say so once, then ask again only after a cooldown.
    asked_in_vain: Option<Instant>,
}

impl Responder {
    /// Feeds one verdict of `evaluate_critical`; true when a victim should be chosen now.
    pub fn due(&mut self, config: &GuardConfig, critical: bool, now: Instant) -> bool {
        if !critical {
            self.critical_since = None;
            self.asked_in_vain = None;
            return false;
        }
        let since = *self.critical_since.get_or_insert(now);
        now.duration_since(since) >= config.critical_sustain && self.cooled_down(config, now)
    }

    /// Whether a victim may be chosen now (at once by the emergency stage; after `critical_sustain` by
    /// stage 2): never within `victim_cooldown` of the last victim (the kernel needs a moment to take back
    /// what it freed) or of a search that found nobody.
    pub fn cooled_down(&self, config: &GuardConfig, now: Instant) -> bool {
        let cooled = |t: Option<Instant>| {
            t.map_or(true, |t| now.duration_since(t) >= config.victim_cooldown)
        };
        cooled(self.last_victim) && cooled(self.asked_in_vain)
    }

    /// What the actor answered: a victim was stopped, or none could be.
    pub fn acted(&mut self, victim: bool, now: Instant) {
        if victim {
            self.last_victim = Some(now);
        } else {
            self.asked_in_vain = Some(now);
        }
    }
}

/// The guard sampler thread; stopped and joined by `stop`.
pub(crate) struct GuardThread {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl GuardThread {
    pub fn start(
        shared: Arc<Shared>,
        actor: mpsc::Sender<Command>,
    ) -> std::io::Result<GuardThread> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("aura-guards".into())
            .spawn(move || run(&shared, &actor, &flag))?;
        Ok(GuardThread { stop, thread })
    }

    /// Blocking: call off the async workers.
    pub fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.thread.join();
    }
}

fn run(shared: &Shared, actor: &mpsc::Sender<Command>, stop: &AtomicBool) {
    let config = &shared.config.guards;
    let mut tripped = Tripped::default();
    // The reason text carries live figures; the actor hears only when the guard holding admission changes.
    let mut reported: Option<&'static str> = None;
    let mut critical_active = false;
    let mut responder = Responder::default();
    // A window sample is taken per new host snapshot seen by a guard tick: as often as the slower of the two.
    let sample_every = config.interval.max(shared.config.host_interval);
    let mut cpu = CpuWindow::new(config.cpu_window, sample_every);
    let mut throttle = Throttle::new(config, sample_every);
    while !stop.load(Ordering::SeqCst) {
        // The host sampler reads /proc; the guards only judge its latest snapshot.
        let host = shared.host_sampler.latest();
        let memory = host.as_ref().map(|h| h.memory).filter(|m| m.total > 0);
        // aura-host gives PSI as a ratio; the thresholds are in percent, as `/proc/pressure` writes them.
        let psi = host.as_ref().and_then(|h| h.pressure).map(|p| p.memory);
        let volume = host
            .as_ref()
            .and_then(|h| h.data_volume.as_ref())
            .filter(|v| v.total > 0);
        let reading = Reading {
            available_memory: memory.map(|m| m.available as f64 / m.total as f64),
            available_memory_bytes: memory.map(|m| m.available),
            total_memory_bytes: memory.map(|m| m.total),
            memory_pressure: psi.map(|p| p.some.avg10 * 100.0),
            memory_pressure_full: psi.and_then(|p| p.full).map(|f| f.avg10 * 100.0),
            outside_cpu: host.as_ref().and_then(|h| {
                let aura = aura_cpu_seconds(shared);
                throttle.window.sample(h, aura);
                cpu.sample(h, aura)
            }),
            free_disk_bytes: volume.map(|v| v.available),
            total_disk_bytes: volume.map(|v| v.total),
        };
        *shared
            .guard_reading
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(reading);
        // Admission charges running jobs what they really use, and fits new ones into what the host
        // really has free.
        let headroom = shared.config.admission.memory_headroom_bytes;
        let live = shared.live_memory(memory.map(|m| m.available.saturating_sub(headroom)));
        if shared.admission.set_live_memory(live)
            && actor.blocking_send(Command::MemoryFreed).is_err()
        {
            return;
        }
        let verdict = evaluate(config, &mut tripped, &reading);
        if tripped.pausing() != reported {
            reported = tripped.pausing();
            let command = Command::Guard {
                paused: verdict,
                reading,
            };
            if actor.blocking_send(command).is_err() {
                return;
            }
        }
        if let Some(event) = throttle.judge(shared, reading) {
            if actor.blocking_send(Command::EngineEvent(event)).is_err() {
                return;
            }
        }
        let critical = evaluate_critical(config, &mut tripped, &reading);
        if critical.is_some() != critical_active {
            critical_active = critical.is_some();
            shared
                .memory
                .critical
                .store(critical_active, Ordering::Relaxed);
            let event = match &critical {
                Some(reason) => {
                    tracing::warn!(%reason, "memory critical: the pressure responder is armed");
                    EngineEvent::PressureCritical {
                        reason: reason.clone(),
                        reading,
                    }
                }
                None => {
                    tracing::info!("memory no longer critical");
                    EngineEvent::PressureCleared { reading }
                }
            };
            if actor.blocking_send(Command::EngineEvent(event)).is_err() {
                return;
            }
        }
        if responder.due(config, critical.is_some(), Instant::now())
            && ask_for_victim(
                actor,
                &mut responder,
                critical.unwrap_or_default(),
                reading,
                false,
            )
            .is_err()
        {
            return;
        }
        // Sleep in short steps so that a stop is noticed quickly; while memory is low, each step reads
        // /proc/meminfo itself (the host sampler's snapshot is up to an interval old) and the emergency
        // stage acts on it.
        let mut available = memory.map(|m| (m.available, m.total));
        let mut slept = Duration::ZERO;
        while slept < config.interval && !stop.load(Ordering::SeqCst) {
            let fast = available.is_some_and(|(a, total)| a < config.fast_watch_below.bytes(total));
            let step = if fast {
                config.fast_interval
            } else {
                Duration::from_millis(50)
            }
            .min(config.interval - slept);
            std::thread::sleep(step);
            slept += step;
            if !fast {
                continue;
            }
            let Some(now) = read_meminfo() else {
                continue;
            };
            available = Some((now.available, now.total));
            let floor = config.emergency_available_memory.bytes(now.total);
            if now.available >= floor || !responder.cooled_down(config, Instant::now()) {
                continue;
            }
            let reason = format!(
                "emergency: available memory {} below {} ({})",
                ByteSize(now.available),
                ByteSize(floor),
                config.emergency_available_memory
            );
            if ask_for_victim(actor, &mut responder, reason, reading, true).is_err() {
                return;
            }
        }
    }
}

/// Asks the actor to stop (or, `kill`, to kill at once) one victim, and starts the cooldown with its
/// answer. `Err` once the actor is gone.
fn ask_for_victim(
    actor: &mpsc::Sender<Command>,
    responder: &mut Responder,
    reason: String,
    reading: Reading,
    kill: bool,
) -> Result<(), ()> {
    let (reply, answer) = oneshot::channel();
    let command = Command::PressureVictim {
        reason,
        reading,
        reply,
        kill,
    };
    actor.blocking_send(command).map_err(drop)?;
    let victim = answer.blocking_recv().ok().flatten();
    responder.acted(victim.is_some(), Instant::now());
    Ok(())
}

/// `/proc/meminfo` read now (the emergency stage cannot wait for the host sampler).
fn read_meminfo() -> Option<aura_host::procfs::MemInfo> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    aura_host::procfs::parse_meminfo(&text).ok()
}

/// CPU seconds used by Aura so far: its jobs (the instance cgroup's hierarchical `cpu.stat`, or the running
/// jobs' samples where there is none) and the daemon itself (`getrusage`, a syscall, no /proc parsing).
fn aura_cpu_seconds(shared: &Shared) -> f64 {
    let jobs = shared
        .supervisor
        .jobs_cpu_usec()
        .unwrap_or_else(|| shared.probes_cpu_usec());
    // SAFETY: getrusage only fills the struct it is given.
    let own = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    jobs as f64 / 1e6 + secs(own.ru_utime) + secs(own.ru_stime)
}

/// The share of the machine's CPU used outside Aura's jobs and the daemon, averaged over a window.
struct CpuWindow {
    /// The host snapshot time, idle (and iowait) host CPU seconds, and Aura's CPU seconds, at the last
    /// sample.
    previous: Option<(aura_model::Timestamp, f64, f64)>,
    samples: VecDeque<f64>,
    capacity: usize,
}

impl CpuWindow {
    fn new(window: Duration, interval: Duration) -> CpuWindow {
        let capacity = (window.as_millis() / interval.as_millis().max(1)).max(1) as usize;
        CpuWindow {
            previous: None,
            samples: VecDeque::with_capacity(capacity),
            capacity,
        }
    }

    /// Takes the host snapshot's CPU counters and Aura's CPU seconds (`aura_cpu_seconds`) at about the
    /// same moment; the window's average once it is full.
    fn sample(&mut self, host: &aura_host::HostSnapshot, aura_seconds: f64) -> Option<f64> {
        if self.previous.is_some_and(|p| p.0 == host.at) {
            // No new host sample since the last look: keep the window as it is.
            return self.average();
        }
        // Busy time is what the CPUs were not idle over the wall-clock span. The busy modes of
        // /proc/stat (user, system…) are sampled at timer ticks, which a tickless kernel fires mostly
        // while something runs: jobs held to a CFS quota run in short bursts that the ticks overcount
        // (measured here: 0.97 cores of "user" while the jobs' own counters said 0.5), which read as
        // CPU used outside Aura and kept the throttle on forever. Idle and iowait are measured exactly.
        let c = &host.cpu.seconds;
        let now = (host.at, c.idle + c.iowait, aura_seconds);
        let previous = self.previous.replace(now)?;
        let elapsed = (now.0.unix_millis() - previous.0.unix_millis()) as f64 / 1e3;
        let total = elapsed * host.cpu.cores.max(1) as f64;
        if total <= 0.0 {
            return None;
        }
        let busy = (total - (now.1 - previous.1)).max(0.0);
        let outside = (busy - (now.2 - previous.2)) / total;
        if self.samples.len() == self.capacity {
            self.samples.pop_front();
        }
        self.samples.push_back(outside.clamp(0.0, 1.0));
        self.average()
    }

    /// "Sustained": only a full window counts.
    fn average(&self) -> Option<f64> {
        (self.samples.len() == self.capacity)
            .then(|| self.samples.iter().sum::<f64>() / self.capacity as f64)
    }
}

/// The throttle's judgement: its own, shorter window of outside CPU use, with hysteresis, and the cap
/// applied through the supervisor when the verdict changes.
struct Throttle {
    config: ThrottleConfig,
    window: CpuWindow,
    /// The verdict (with hysteresis) and whether the cap is on now.
    tripped: bool,
    applied: bool,
    /// The supervisor refused the cap: said once, not retried every interval.
    failed: bool,
}

impl Throttle {
    fn new(config: &GuardConfig, sample_every: Duration) -> Throttle {
        Throttle {
            config: config.throttle.clone(),
            window: CpuWindow::new(config.throttle.window, sample_every),
            tripped: false,
            applied: false,
            failed: false,
        }
    }

    /// Whether the cap should change now, and to what (on: `true`), for an average of outside CPU use.
    fn verdict(&mut self, outside: Option<f64>) -> Option<bool> {
        let (above, below) = (self.config.above_outside_cpu, self.config.below_outside_cpu);
        hysteresis(&mut self.tripped, outside, |v| v > above, |v| v < below);
        (self.tripped != self.applied).then_some(self.tripped)
    }

    /// Applies the latest window to the cap; the engine event to record when it changed.
    fn judge(&mut self, shared: &Shared, reading: Reading) -> Option<EngineEvent> {
        if !self.config.enabled || self.failed {
            return None;
        }
        let outside = self.window.average();
        let (above, below) = (self.config.above_outside_cpu, self.config.below_outside_cpu);
        let cap = self.verdict(outside)?;
        let share = cap.then_some(self.config.cpu_share);
        if let Err(e) = shared.supervisor.set_cpu_cap(share) {
            tracing::error!(error = %e, "cannot cap running jobs' CPU; the throttle is off until a restart");
            self.failed = true;
            return None;
        }
        self.applied = self.tripped;
        let reading = Reading {
            outside_cpu: outside,
            ..reading
        };
        let pct = |x: f64| x * 100.0;
        let mut throttled = shared.throttled.lock().unwrap_or_else(|p| p.into_inner());
        if self.applied {
            let reason = format!(
                "CPU use outside Aura's jobs {:.0} % over {:?} (throttles above {:.0} %, lifts below {:.0} %): jobs capped at {:.0} % of the machine",
                pct(outside.unwrap_or_default()),
                self.config.window,
                pct(above),
                pct(below),
                pct(self.config.cpu_share)
            );
            tracing::warn!(%reason, "running jobs throttled");
            *throttled = Some(reason.clone());
            Some(EngineEvent::CpuThrottled {
                reason,
                cpu_share: self.config.cpu_share,
                reading,
            })
        } else {
            tracing::info!("running jobs' CPU cap lifted");
            *throttled = None;
            Some(EngineEvent::CpuRestored { reading })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const TOTAL: u64 = 16 << 30;

    /// One step of a table test: no reason expected, or a reason starting with `expected`.
    fn assert_step(step: usize, got: Option<String>, expected: Option<&str>) {
        match expected {
            None => assert_eq!(got, None, "step {step}"),
            Some(prefix) => assert!(
                got.as_deref().is_some_and(|r| r.starts_with(prefix)),
                "step {step}: {got:?}"
            ),
        }
    }

    fn reading(available_memory: f64, memory_pressure: f64, outside_cpu: f64) -> Reading {
        Reading {
            available_memory: Some(available_memory),
            available_memory_bytes: Some((TOTAL as f64 * available_memory) as u64),
            total_memory_bytes: Some(TOTAL),
            memory_pressure: Some(memory_pressure),
            memory_pressure_full: Some(0.0),
            outside_cpu: Some(outside_cpu),
            free_disk_bytes: Some(TOTAL / 2),
            total_disk_bytes: Some(TOTAL),
        }
    }

    #[test]
    fn the_throttle_trips_and_lifts_with_hysteresis() {
        let config = GuardConfig::default();
        let mut throttle = Throttle::new(&config, config.interval);
        // (outside CPU over the window, the change expected) — applied as the supervisor would.
        let steps = [
            (None, None),
            (Some(0.15), None),
            (Some(0.25), Some(true)),
            (Some(0.15), None),
            (Some(0.09), Some(false)),
            (Some(0.18), None),
            (Some(0.5), Some(true)),
        ];
        for (step, (outside, expected)) in steps.into_iter().enumerate() {
            let change = throttle.verdict(outside);
            assert_eq!(change, expected, "step {step}");
            if let Some(on) = change {
                throttle.applied = on;
            }
        }
        // A cap the supervisor could not apply is asked for again at the next look.
        assert_eq!(throttle.verdict(Some(0.01)), Some(false));
        assert_eq!(throttle.verdict(Some(0.01)), Some(false));
    }

    #[test]
    fn the_throttle_needs_a_share_and_thresholds_in_order() {
        let ok = GuardConfig::default();
        assert_eq!(ok.validate(), Ok(()));
        let bad = [
            ThrottleConfig {
                cpu_share: 0.0,
                ..ThrottleConfig::default()
            },
            ThrottleConfig {
                cpu_share: 1.5,
                ..ThrottleConfig::default()
            },
            ThrottleConfig {
                below_outside_cpu: 0.3,
                above_outside_cpu: 0.2,
                ..ThrottleConfig::default()
            },
            ThrottleConfig {
                above_outside_cpu: 1.2,
                ..ThrottleConfig::default()
            },
            ThrottleConfig {
                window: Duration::from_millis(100),
                ..ThrottleConfig::default()
            },
        ];
        for throttle in bad {
            let config = GuardConfig {
                throttle: throttle.clone(),
                ..GuardConfig::default()
            };
            assert!(config.validate().is_err(), "{throttle:?}");
        }
    }

    #[test]
    fn a_low_data_volume_pauses_with_hysteresis() {
        let c = GuardConfig::default();
        let mut t = Tripped::default();
        let disk = |free_share: f64| Reading {
            free_disk_bytes: Some((TOTAL as f64 * free_share) as u64),
            ..reading(0.5, 0.0, 0.1)
        };
        // 2 % pauses, 4 % resumes.
        let steps = [
            (0.10, None),
            (0.019, Some("data volume free space")),
            (0.03, Some("data volume free space")),
            (0.041, None),
            (0.03, None),
        ];
        for (i, (free, expected)) in steps.into_iter().enumerate() {
            assert_step(i, evaluate(&c, &mut t, &disk(free)), expected);
        }
        assert!(GuardConfig {
            resume_free_disk: MemoryThreshold::Share(0.01),
            ..GuardConfig::default()
        }
        .validate()
        .is_err());
    }

    #[test]
    fn every_guard_trips_and_clears_with_hysteresis() {
        let c = GuardConfig::default();
        let mut t = Tripped::default();
        // (available memory, PSI, outside CPU) → paused?
        let steps = [
            ((0.50, 0.0, 0.10), None),
            (
                (0.19, 0.0, 0.10),
                Some("available memory 3.0 GiB (19 %) (pauses below 20 %"),
            ),
            ((0.22, 0.0, 0.10), Some("available memory 3.5 GiB (22 %)")),
            ((0.26, 0.0, 0.10), None),
            ((0.50, 41.0, 0.10), Some("memory pressure")),
            ((0.50, 30.0, 0.10), Some("memory pressure")),
            ((0.50, 19.0, 0.10), None),
            ((0.50, 0.0, 0.80), None),
            ((0.50, 0.0, 0.90), Some("CPU use outside Aura's jobs 90 %")),
            ((0.50, 0.0, 0.80), Some("CPU use outside Aura's jobs 80 %")),
            ((0.50, 0.0, 0.70), None),
        ];
        for (i, ((m, p, cpu), expected)) in steps.into_iter().enumerate() {
            let got = evaluate(&c, &mut t, &reading(m, p, cpu));
            assert_step(i, got, expected);
        }
    }

    #[test]
    fn missing_readings_change_nothing() {
        let c = GuardConfig::default();
        let mut t = Tripped::default();
        assert!(evaluate(&c, &mut t, &reading(0.1, 0.0, 0.0)).is_some());
        let nothing = Reading::default();
        assert!(
            evaluate(&c, &mut t, &nothing).is_some(),
            "a failed read keeps the guard where it was"
        );
    }

    #[test]
    fn thresholds_are_shares_or_sizes() {
        let parse = |v: serde_json::Value| serde_json::from_value::<MemoryThreshold>(v);
        assert_eq!(parse(json!(0.2)).unwrap(), MemoryThreshold::Share(0.2));
        assert_eq!(parse(json!("15%")).unwrap(), MemoryThreshold::Share(0.15));
        assert_eq!(
            parse(json!("2GiB")).unwrap(),
            MemoryThreshold::Bytes(2 << 30)
        );
        assert_eq!(
            parse(json!(1048576)).unwrap(),
            MemoryThreshold::Bytes(1 << 20)
        );
        for bad in [json!(-1), json!(1.5), json!("150%"), json!("lots")] {
            let e = parse(bad.clone()).unwrap_err().to_string();
            assert!(e.contains("invalid threshold"), "{bad}: {e}");
        }
        let mut c = GuardConfig {
            critical_available_memory: MemoryThreshold::Bytes(2 << 30),
            critical_resume_available_memory: MemoryThreshold::Bytes(1 << 30),
            ..GuardConfig::default()
        };
        assert!(c.validate().is_err(), "resume below trip");
        c.critical_resume_available_memory = MemoryThreshold::Bytes(3 << 30);
        assert!(c.validate().is_ok(), "{:?}", c.validate());
        c.requeue_growth = 0.5;
        assert!(c.validate().is_err());
        // A size and a share only compare on a given host: 4 GiB is below 10 % of 64 GiB.
        let mixed = GuardConfig {
            min_available_memory: MemoryThreshold::Bytes(4 << 30),
            resume_available_memory: MemoryThreshold::Bytes(5 << 30),
            critical_available_memory: MemoryThreshold::Share(0.10),
            critical_resume_available_memory: MemoryThreshold::Share(0.15),
            ..GuardConfig::default()
        };
        assert!(mixed.validate().is_ok());
        assert!(mixed.check_for_host(16 << 30).is_ok());
        let err = mixed.check_for_host(64 << 30).unwrap_err();
        assert!(err.starts_with("guards.min_available_memory (4.0 GiB) must not be below guards.critical_available_memory (10 %)"), "{err}");
    }

    #[test]
    fn critical_stage_trips_and_clears_with_hysteresis() {
        let c = GuardConfig::default(); // critical below 5 %, clears above 10 %; PSI full 30 / 10
        let mut t = Tripped::default();
        let full = |avail: f64, psi_full: f64| Reading {
            memory_pressure_full: Some(psi_full),
            ..reading(avail, 0.0, 0.0)
        };
        let steps = [
            ((0.50, 0.0), None),
            ((0.04, 0.0), Some("available memory")),
            ((0.08, 0.0), Some("available memory")),
            ((0.11, 0.0), None),
            (
                (0.50, 35.0),
                Some("memory pressure (PSI full avg10) 35.0 %"),
            ),
            ((0.50, 15.0), Some("memory pressure")),
            ((0.50, 5.0), None),
        ];
        for (i, ((avail, psi), expected)) in steps.into_iter().enumerate() {
            let got = evaluate_critical(&c, &mut t, &full(avail, psi));
            assert_step(i, got, expected);
        }
    }

    #[test]
    fn the_responder_waits_for_sustain_and_cooldown() {
        let c = GuardConfig {
            critical_sustain: Duration::from_secs(3),
            victim_cooldown: Duration::from_secs(30),
            ..GuardConfig::default()
        };
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut r = Responder::default();
        assert!(!r.due(&c, true, at(0)), "critical just began");
        assert!(!r.due(&c, true, at(2)));
        assert!(r.due(&c, true, at(3)), "sustained for 3 s");
        r.acted(true, at(3));
        assert!(!r.due(&c, true, at(10)), "inside the cooldown");
        assert!(!r.due(&c, false, at(20)), "cleared");
        assert!(
            !r.due(&c, true, at(34)),
            "critical again, but not yet sustained"
        );
        assert!(r.due(&c, true, at(37)), "sustained again and cooled down");
        r.acted(false, at(37));
        assert!(
            !r.due(&c, true, at(40)),
            "nobody to stop: do not ask every tick"
        );
        assert!(r.due(&c, true, at(67)));
    }

    /// The emergency stage needs no sustain, only the cooldown that every victim starts, whichever
    /// stage chose it.
    #[test]
    fn the_emergency_stage_waits_only_for_the_cooldown() {
        let c = GuardConfig::default();
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut r = Responder::default();
        assert!(r.cooled_down(&c, at(0)), "at once, no sustain");
        r.acted(true, at(0));
        assert!(!r.cooled_down(&c, at(29)), "inside the cooldown");
        assert!(!r.due(&c, true, at(29)), "stage 2 shares the cooldown");
        assert!(r.cooled_down(&c, at(30)));
        // Thresholds in order: emergency below critical below the fast watch.
        assert!(c.validate().is_ok());
        let inverted = GuardConfig {
            emergency_available_memory: MemoryThreshold::Share(0.08),
            ..GuardConfig::default()
        };
        assert!(inverted.validate().is_err(), "emergency above critical");
        let slow = GuardConfig {
            fast_interval: Duration::from_secs(2),
            ..GuardConfig::default()
        };
        assert!(slow.validate().is_err(), "fast interval above the interval");
    }
}

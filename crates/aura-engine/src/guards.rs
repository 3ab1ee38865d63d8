//! Live admission guards: admission pauses while the host is short of memory, under memory pressure (PSI),
//! or busy with work that is not Aura's — the studio UI or an editor on the same machine keeps priority,
//! while Aura's own jobs are governed by their CPU reservations. Each guard has hysteresis (it trips at one
//! threshold and clears at a gentler one) so admission does not flap.
//!
//! One thread judges the host sampler's latest snapshot (plus the jobs' cgroup CPU), and tells the actor
//! only when the answer changes.

use crate::actor::{Command, Shared};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Thresholds, with the defaults of `aura serve`; the `[guards]` section of its configuration as is.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GuardConfig {
    pub enabled: bool,
    #[serde(with = "aura_model::humantime_serde_compat")]
    pub interval: Duration,
    /// Pause below this share of physical memory available (`MemAvailable / MemTotal`), resume above
    /// `resume_available_memory`.
    pub min_available_memory: f64,
    pub resume_available_memory: f64,
    /// Pause above this PSI `some avg10` memory pressure (percent), resume below `resume_memory_pressure`.
    pub max_memory_pressure: f64,
    pub resume_memory_pressure: f64,
    /// Pause while CPU use by work outside Aura's jobs, averaged over `cpu_window`, is above this share
    /// of the machine; resume below `resume_outside_cpu`.
    pub max_outside_cpu: f64,
    pub resume_outside_cpu: f64,
    #[serde(with = "aura_model::humantime_serde_compat")]
    pub cpu_window: Duration,
}

impl GuardConfig {
    /// Ratios in [0, 1], pressures in [0, 100], each resume threshold on the safe side of its pause
    /// threshold, and `cpu_window >= interval > 0`.
    pub fn validate(&self) -> Result<(), String> {
        let ratio = |x: f64| (0.0..=1.0).contains(&x);
        let percent = |x: f64| (0.0..=100.0).contains(&x);
        let ok = ratio(self.min_available_memory)
            && ratio(self.resume_available_memory)
            && self.resume_available_memory >= self.min_available_memory
            && percent(self.max_memory_pressure)
            && percent(self.resume_memory_pressure)
            && self.resume_memory_pressure <= self.max_memory_pressure
            && ratio(self.max_outside_cpu)
            && ratio(self.resume_outside_cpu)
            && self.resume_outside_cpu <= self.max_outside_cpu
            && !self.interval.is_zero()
            && self.cpu_window >= self.interval;
        if ok {
            Ok(())
        } else {
            Err("guards need ratios in [0, 1], pressures in [0, 100], each resume threshold on the safe side \
                 of its pause threshold, and cpu_window >= interval > 0"
                .into())
        }
    }
}

impl Default for GuardConfig {
    fn default() -> Self {
        GuardConfig {
            enabled: true,
            interval: Duration::from_secs(1),
            min_available_memory: 0.20,
            resume_available_memory: 0.25,
            max_memory_pressure: 40.0,
            resume_memory_pressure: 20.0,
            max_outside_cpu: 0.85,
            resume_outside_cpu: 0.75,
            cpu_window: Duration::from_secs(10),
        }
    }
}

/// One look at the host: shares of 0–1, PSI in percent.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct Reading {
    pub available_memory: Option<f64>,
    pub memory_pressure: Option<f64>,
    pub outside_cpu: Option<f64>,
}

/// Which guards are tripped; the hysteresis memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tripped {
    memory: bool,
    pressure: bool,
    cpu: bool,
}

/// Applies one reading with hysteresis and returns why admission is paused, if it is.
pub fn evaluate(config: &GuardConfig, tripped: &mut Tripped, reading: &Reading) -> Option<String> {
    let pct = |x: f64| x * 100.0;
    if let Some(avail) = reading.available_memory {
        tripped.memory = if tripped.memory {
            avail < config.resume_available_memory
        } else {
            avail < config.min_available_memory
        };
    }
    if let Some(psi) = reading.memory_pressure {
        tripped.pressure = if tripped.pressure {
            psi > config.resume_memory_pressure
        } else {
            psi > config.max_memory_pressure
        };
    }
    if let Some(cpu) = reading.outside_cpu {
        tripped.cpu = if tripped.cpu {
            cpu > config.resume_outside_cpu
        } else {
            cpu > config.max_outside_cpu
        };
    }
    if tripped.memory {
        return Some(format!(
            "available memory {:.0} % (pauses below {:.0} %, resumes above {:.0} %)",
            pct(reading.available_memory.unwrap_or_default()),
            pct(config.min_available_memory),
            pct(config.resume_available_memory)
        ));
    }
    if tripped.pressure {
        return Some(format!(
            "memory pressure (PSI some avg10) {:.1} % (pauses above {:.0} %, resumes below {:.0} %)",
            reading.memory_pressure.unwrap_or_default(),
            config.max_memory_pressure,
            config.resume_memory_pressure
        ));
    }
    if tripped.cpu {
        return Some(format!(
            "CPU use outside Aura's jobs {:.0} % over the window (pauses above {:.0} %, resumes below {:.0} %)",
            pct(reading.outside_cpu.unwrap_or_default()),
            pct(config.max_outside_cpu),
            pct(config.resume_outside_cpu)
        ));
    }
    None
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
    let mut reported: Option<String> = None;
    let mut cpu = CpuWindow::new(config.cpu_window, config.interval);
    while !stop.load(Ordering::SeqCst) {
        // The host sampler reads /proc; the guards only judge its latest snapshot.
        let host = shared.host_sampler.latest();
        let reading = Reading {
            available_memory: host
                .as_ref()
                .filter(|h| h.memory.total > 0)
                .map(|h| h.memory.available as f64 / h.memory.total as f64),
            // aura-host gives PSI as a ratio; the thresholds are in percent, as `/proc/pressure` writes them.
            memory_pressure: host
                .as_ref()
                .and_then(|h| h.pressure)
                .map(|p| p.memory.some.avg10 * 100.0),
            outside_cpu: host.as_ref().and_then(|h| cpu.sample(shared, h)),
        };
        *shared
            .guard_reading
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(reading);
        let verdict = evaluate(config, &mut tripped, &reading);
        if verdict != reported {
            match &verdict {
                Some(reason) => tracing::warn!(%reason, "admission paused"),
                None => tracing::info!("admission resumed"),
            }
            reported = verdict.clone();
            if actor.blocking_send(Command::Guard(verdict)).is_err() {
                return;
            }
        }
        // Sleep in short steps so that a stop is noticed quickly.
        let mut slept = Duration::ZERO;
        while slept < config.interval && !stop.load(Ordering::SeqCst) {
            let step = Duration::from_millis(50).min(config.interval - slept);
            std::thread::sleep(step);
            slept += step;
        }
    }
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
    /// The host snapshot time, busy and total host CPU seconds, and Aura's CPU seconds, at the last sample.
    previous: Option<(aura_model::Timestamp, f64, f64, f64)>,
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

    fn sample(&mut self, shared: &Shared, host: &aura_host::HostSnapshot) -> Option<f64> {
        if self.previous.is_some_and(|p| p.0 == host.at) {
            // No new host sample since the last look: keep the window as it is.
            return self.average();
        }
        let c = &host.cpu.seconds;
        let total = c.user + c.nice + c.system + c.idle + c.iowait + c.irq + c.softirq + c.steal;
        let busy = total - c.idle - c.iowait;
        let now = (host.at, busy, total, aura_cpu_seconds(shared));
        let previous = self.previous.replace(now)?;
        let total = now.2 - previous.2;
        if total <= 0.0 {
            return None;
        }
        let outside = ((now.1 - previous.1) - (now.3 - previous.3)) / total;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(available_memory: f64, memory_pressure: f64, outside_cpu: f64) -> Reading {
        Reading {
            available_memory: Some(available_memory),
            memory_pressure: Some(memory_pressure),
            outside_cpu: Some(outside_cpu),
        }
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
                Some("available memory 19 % (pauses below 20 %"),
            ),
            ((0.22, 0.0, 0.10), Some("available memory 22 %")),
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
            match expected {
                None => assert_eq!(got, None, "step {i}"),
                Some(prefix) => assert!(
                    got.as_deref().is_some_and(|r| r.starts_with(prefix)),
                    "step {i}: {got:?}"
                ),
            }
        }
    }

    #[test]
    fn missing_readings_change_nothing() {
        let c = GuardConfig::default();
        let mut t = Tripped::default();
        assert!(evaluate(&c, &mut t, &reading(0.1, 0.0, 0.0)).is_some());
        let nothing = Reading {
            available_memory: None,
            memory_pressure: None,
            outside_cpu: None,
        };
        assert!(
            evaluate(&c, &mut t, &nothing).is_some(),
            "a failed read keeps the guard where it was"
        );
    }
}

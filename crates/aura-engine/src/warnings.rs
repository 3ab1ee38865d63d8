//! The warning watcher: the daemon's own figures against the `[diagnostics]` thresholds (fds, RSS,
//! threads, children), the host's CPU and memory sustained over a window, and each GPU's temperature
//! against its slowdown threshold — judged on their own, every `warnings.interval`, not only when someone
//! asks `/api/diagnostics/resources`. A warning crossing either way is an engine event
//! (`warning_raised`, `warning_cleared`), a log line and the gauge `aura_warning_active{warning}`.
//!
//! Each warning has hysteresis: it is raised over one level and cleared only under a gentler one, and
//! the host figures must stay past the level for the whole window before either happens, so a figure
//! hovering at its threshold does not flap. The judging (`Watch`) is pure and takes the time as an
//! argument; the thread (`WarningThread`) only reads `/proc` and the host sampler's latest snapshot.

use crate::protocol::Command;
use crate::shared::Shared;
use aura_model::{EngineEvent, WarningKind};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// The watcher's settings, with the defaults of `aura serve`; the `[warnings]` section of its
/// configuration. The daemon's own thresholds are `[diagnostics]`'s.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WarningConfig {
    /// Whether the watcher runs at all. Default: on.
    pub enabled: bool,
    /// How often it judges. Default: 5 s.
    #[serde(with = "aura_model::humantime_serde_compat")]
    pub interval: Duration,
    /// A `[diagnostics]` warning clears once its figure is at or under its threshold times this. Default:
    /// 0.9.
    pub clear_ratio: f64,
    /// The host's CPU busy share (0–1) over which, sustained for `window`, a warning is raised.
    /// Default: 0.9.
    pub host_cpu: f64,
    /// …and under which, sustained for `window`, it clears. Default: 0.8.
    pub host_cpu_clear: f64,
    /// The host's memory in use (total less available) as a share over which, sustained for `window`,
    /// a warning is raised. Default: 0.85.
    pub host_memory: f64,
    /// …and under which, sustained for `window`, it clears. Default: 0.8.
    pub host_memory_clear: f64,
    /// How long a host figure must stay past a level before its warning is raised or cleared.
    /// Default: 60 s.
    #[serde(with = "aura_model::humantime_serde_compat")]
    pub window: Duration,
    /// A GPU warning is raised over its slowdown threshold (NVML's) and cleared this many degrees
    /// Celsius under it. Default: 5.
    pub gpu_clear_margin: f64,
}

impl Default for WarningConfig {
    fn default() -> Self {
        WarningConfig {
            enabled: true,
            interval: Duration::from_secs(5),
            clear_ratio: 0.9,
            host_cpu: 0.9,
            host_cpu_clear: 0.8,
            host_memory: 0.85,
            host_memory_clear: 0.8,
            window: Duration::from_secs(60),
            gpu_clear_margin: 5.0,
        }
    }
}

impl WarningConfig {
    /// Shares in [0, 1] with each clear level at or under its raise level, a positive interval, and a
    /// clear ratio and GPU margin that leave room (ratio in [0, 1], margin ≥ 0).
    pub fn validate(&self) -> Result<(), String> {
        let share = |x: f64| (0.0..=1.0).contains(&x);
        let ok = !self.interval.is_zero()
            && share(self.clear_ratio)
            && share(self.host_cpu)
            && share(self.host_cpu_clear)
            && self.host_cpu_clear <= self.host_cpu
            && share(self.host_memory)
            && share(self.host_memory_clear)
            && self.host_memory_clear <= self.host_memory
            && self.gpu_clear_margin.is_finite()
            && self.gpu_clear_margin >= 0.0;
        if ok {
            Ok(())
        } else {
            Err("warnings need interval > 0, clear_ratio in [0, 1], host_cpu and host_memory shares in [0, 1] \
                 with their *_clear levels no higher, and gpu_clear_margin >= 0"
                .into())
        }
    }
}

/// Where a warning is raised and cleared: over `raise`; at or under `clear`; each only once the figure
/// has stayed past the level for `sustain`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Level {
    /// Raised once the figure is over this.
    pub raise: f64,
    /// Cleared once the figure is at or under this (at most `raise`).
    pub clear: f64,
    /// How long the figure must stay past the level first (zero: at once).
    pub sustain: Duration,
}

/// One warning's hysteresis memory.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Watch {
    active: bool,
    /// Since when the figure has been past the level that would change `active`.
    crossing_since: Option<Instant>,
}

impl Watch {
    /// Whether the warning is raised.
    pub fn active(&self) -> bool {
        self.active
    }

    /// Feeds one reading taken at `now`: `Some(true)` when the warning is raised by it, `Some(false)`
    /// when cleared, `None` when nothing changes. An unknown figure (`None`) changes nothing and
    /// restarts the sustain clock.
    pub fn feed(&mut self, value: Option<f64>, level: Level, now: Instant) -> Option<bool> {
        let crossing = value.is_some_and(|v| {
            if self.active {
                v <= level.clear
            } else {
                v > level.raise
            }
        });
        if !crossing {
            self.crossing_since = None;
            return None;
        }
        let since = *self.crossing_since.get_or_insert(now);
        if now.saturating_duration_since(since) < level.sustain {
            return None;
        }
        self.active = !self.active;
        self.crossing_since = None;
        Some(self.active)
    }
}

/// One look at what the watcher judges; `None` where a figure is unknown.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Figures {
    /// Open fds beyond what running jobs and kept cgroup files hold by design.
    pub open_fds: Option<u64>,
    /// The daemon's resident memory, bytes.
    pub rss_bytes: Option<u64>,
    /// Threads beyond one per running job.
    pub threads: Option<u64>,
    /// Children beyond running jobs' main processes.
    pub extra_children: Option<u64>,
    /// The host's CPU busy share.
    pub host_cpu: Option<f64>,
    /// The host's memory in use as a share.
    pub host_memory: Option<f64>,
    /// The hottest GPU relative to its own slowdown threshold: (index, temperature, threshold).
    pub gpu: Option<(u32, f64, f64)>,
}

/// Every warning's memory, judged together.
#[derive(Debug, Default)]
pub struct Watcher {
    watches: [Watch; WarningKind::ALL.len()],
}

/// What changed with one look: the warning, raised (`true`) or cleared, and the event that says so.
pub type Change = (WarningKind, bool, EngineEvent);

impl Watcher {
    /// Whether `warning` is raised now.
    pub fn active(&self, warning: WarningKind) -> bool {
        WarningKind::ALL
            .iter()
            .position(|w| *w == warning)
            .is_some_and(|i| self.watches[i].active())
    }

    /// Judges one look at `now` against `diagnostics` (the daemon's thresholds) and `config`; returns
    /// the warnings raised or cleared by it, with their events.
    pub fn judge(
        &mut self,
        diagnostics: &crate::DiagnosticsConfig,
        config: &WarningConfig,
        figures: &Figures,
        now: Instant,
    ) -> Vec<Change> {
        let own = |threshold: u64| Level {
            raise: threshold as f64,
            clear: (threshold as f64 * config.clear_ratio).floor(),
            sustain: Duration::ZERO,
        };
        let host = |raise: f64, clear: f64| Level {
            raise,
            clear,
            sustain: config.window,
        };
        let gpu_level = figures.gpu.map(|(_, _, slowdown)| Level {
            raise: slowdown,
            clear: slowdown - config.gpu_clear_margin,
            sustain: Duration::ZERO,
        });
        let as_f64 = |v: Option<u64>| v.map(|v| v as f64);
        let checks: [(WarningKind, Option<f64>, Option<Level>); 7] = [
            (
                WarningKind::OpenFds,
                as_f64(figures.open_fds),
                Some(own(diagnostics.max_open_fds)),
            ),
            (
                WarningKind::RssBytes,
                as_f64(figures.rss_bytes),
                Some(own(diagnostics.max_rss.bytes())),
            ),
            (
                WarningKind::Threads,
                as_f64(figures.threads),
                Some(own(diagnostics.max_threads)),
            ),
            (
                WarningKind::ExtraChildren,
                as_f64(figures.extra_children),
                Some(own(diagnostics.max_extra_children)),
            ),
            (
                WarningKind::HostCpu,
                figures.host_cpu,
                Some(host(config.host_cpu, config.host_cpu_clear)),
            ),
            (
                WarningKind::HostMemory,
                figures.host_memory,
                Some(host(config.host_memory, config.host_memory_clear)),
            ),
            (
                WarningKind::GpuTemperature,
                figures.gpu.map(|(_, t, _)| t),
                gpu_level,
            ),
        ];
        let mut changes = Vec::new();
        for (i, (warning, value, level)) in checks.into_iter().enumerate() {
            let Some(level) = level else {
                // No threshold known (no GPU reports one): nothing to judge, and nothing half-counted.
                self.watches[i].crossing_since = None;
                continue;
            };
            let Some(raised) = self.watches[i].feed(value, level, now) else {
                continue;
            };
            let value = value.unwrap_or_default();
            let detail = describe(warning, raised, value, level, config, figures.gpu);
            let event = if raised {
                EngineEvent::WarningRaised {
                    warning,
                    value,
                    threshold: level.raise,
                    detail,
                }
            } else {
                EngineEvent::WarningCleared {
                    warning,
                    value,
                    threshold: level.clear,
                    detail,
                }
            };
            changes.push((warning, raised, event));
        }
        changes
    }
}

/// The warning in words, with the figure and the level it crossed.
fn describe(
    warning: WarningKind,
    raised: bool,
    value: f64,
    level: Level,
    config: &WarningConfig,
    gpu: Option<(u32, f64, f64)>,
) -> String {
    let pct = |x: f64| format!("{:.0} %", x * 100.0);
    let window = format!("{} s", config.window.as_secs());
    let (what, shown_value, raise, clear) = match warning {
        WarningKind::OpenFds => (
            "open file descriptors beyond those running jobs hold".to_owned(),
            format!("{value:.0}"),
            format!("{:.0}", level.raise),
            format!("{:.0}", level.clear),
        ),
        WarningKind::RssBytes => (
            "the daemon's resident memory".to_owned(),
            aura_model::ByteSize(value as u64).to_string(),
            aura_model::ByteSize(level.raise as u64).to_string(),
            aura_model::ByteSize(level.clear as u64).to_string(),
        ),
        WarningKind::Threads => (
            "threads beyond one per running job".to_owned(),
            format!("{value:.0}"),
            format!("{:.0}", level.raise),
            format!("{:.0}", level.clear),
        ),
        WarningKind::ExtraChildren => (
            "child processes beyond running jobs".to_owned(),
            format!("{value:.0}"),
            format!("{:.0}", level.raise),
            format!("{:.0}", level.clear),
        ),
        WarningKind::HostCpu => (
            format!("host CPU busy for {window}"),
            pct(value),
            pct(level.raise),
            pct(level.clear),
        ),
        WarningKind::HostMemory => (
            format!("host memory in use for {window}"),
            pct(value),
            pct(level.raise),
            pct(level.clear),
        ),
        WarningKind::GpuTemperature => (
            format!(
                "GPU {} temperature (slowdown threshold)",
                gpu.map_or(0, |g| g.0)
            ),
            format!("{value:.0} °C"),
            format!("{:.0} °C", level.raise),
            format!("{:.0} °C", level.clear),
        ),
    };
    if raised {
        format!("{what}: {shown_value} is over {raise} (clears at or under {clear})")
    } else {
        format!("{what}: {shown_value} is back at or under {clear}")
    }
}

/// The figures of one look: the daemon's process (blocking `/proc` reads: call on the watcher's
/// thread) and the host sampler's latest snapshot.
fn look(shared: &Shared) -> Figures {
    let mut figures = Figures::default();
    if let Ok(p) = aura_host::process_snapshot() {
        let (running, _) = shared.counts();
        let running = running as u64;
        let kept = aura_supervisor::kept_cgroup_files();
        figures.open_fds = Some(
            p.open_fds
                .saturating_sub(crate::diagnostics::FDS_PER_RUNNING_JOB * running + kept),
        );
        figures.rss_bytes = Some(p.rss_bytes);
        figures.threads = Some(p.threads.saturating_sub(running));
        figures.extra_children = Some(p.children.saturating_sub(running));
    }
    if let Some(host) = shared.host_sampler.latest() {
        figures.host_cpu = host.cpu.busy_ratio.filter(|r| r.is_finite());
        let m = host.memory;
        figures.host_memory =
            (m.total > 0).then(|| 1.0 - m.available.min(m.total) as f64 / m.total as f64);
        figures.gpu = host
            .gpus
            .iter()
            .flatten()
            .filter_map(|g| {
                Some((
                    g.index,
                    g.temperature_celsius?,
                    g.slowdown_temperature_celsius?,
                ))
            })
            .max_by(|a, b| (a.1 - a.2).total_cmp(&(b.1 - b.2)));
    }
    figures
}

/// The watcher's thread; stopped and joined by `stop`.
pub(crate) struct WarningThread {
    /// Dropped to stop the thread: it sleeps on the other end between looks, so it wakes only to judge
    /// or to end.
    stop: std::sync::mpsc::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl WarningThread {
    /// Its own thread rather than the guard thread's: the guards may be off (`guards.enabled = false`)
    /// while the daemon should still speak up, and the guards' tick must stay short (their emergency
    /// stage reads memory every 100 ms).
    pub(crate) fn start(
        shared: Arc<Shared>,
        actor: mpsc::Sender<Command>,
    ) -> std::io::Result<WarningThread> {
        let (stop, stopped) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("aura-warnings".into())
            .spawn(move || run(&shared, &actor, &stopped))?;
        Ok(WarningThread { stop, thread })
    }

    /// Blocking: call off the async workers.
    pub(crate) fn stop(self) {
        drop(self.stop);
        let _ = self.thread.join();
    }
}

fn run(shared: &Shared, actor: &mpsc::Sender<Command>, stopped: &std::sync::mpsc::Receiver<()>) {
    let config = &shared.config.warnings;
    let mut watcher = Watcher::default();
    loop {
        let figures = look(shared);
        let changes = watcher.judge(&shared.config.diagnostics, config, &figures, Instant::now());
        for (warning, raised, event) in changes {
            shared.job_metrics.set_warning(warning, raised);
            match &event {
                EngineEvent::WarningRaised { detail, .. } => {
                    tracing::warn!(warning = warning.as_str(), %detail, "warning raised");
                }
                _ => tracing::info!(warning = warning.as_str(), "warning cleared"),
            }
            if actor.blocking_send(Command::EngineEvent(event)).is_err() {
                return;
            }
        }
        match stopped.recv_timeout(config.interval) {
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            // Stopped (the sender dropped), or told to.
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn an_immediate_level_raises_over_and_clears_under_the_gentler_level() {
        let level = Level {
            raise: 10.0,
            clear: 9.0,
            sustain: Duration::ZERO,
        };
        let t = Instant::now();
        let mut w = Watch::default();
        // At the threshold is not over it.
        assert_eq!(w.feed(Some(10.0), level, t), None);
        assert_eq!(w.feed(Some(11.0), level, t), Some(true));
        assert!(w.active());
        // Between the levels: no flapping either way.
        for v in [10.0, 9.5, 10.5, 9.01] {
            assert_eq!(w.feed(Some(v), level, t), None, "{v}");
        }
        // Unknown changes nothing.
        assert_eq!(w.feed(None, level, t), None);
        assert_eq!(w.feed(Some(9.0), level, t), Some(false));
        assert!(!w.active());
        assert_eq!(w.feed(Some(9.5), level, t), None);
    }

    #[test]
    fn a_sustained_level_needs_the_whole_window_each_way() {
        let level = Level {
            raise: 0.9,
            clear: 0.8,
            sustain: 60 * S,
        };
        let t = Instant::now();
        let mut w = Watch::default();
        assert_eq!(w.feed(Some(0.95), level, t), None);
        assert_eq!(w.feed(Some(0.95), level, t + 59 * S), None);
        // A dip under the raise level restarts the window.
        assert_eq!(w.feed(Some(0.85), level, t + 60 * S), None);
        assert_eq!(w.feed(Some(0.95), level, t + 61 * S), None);
        assert_eq!(w.feed(Some(0.95), level, t + 120 * S), None);
        assert_eq!(w.feed(Some(0.99), level, t + 121 * S), Some(true));
        // Clearing needs the window under the clear level, too; between the levels resets it.
        assert_eq!(w.feed(Some(0.5), level, t + 130 * S), None);
        assert_eq!(w.feed(Some(0.85), level, t + 150 * S), None);
        assert_eq!(w.feed(Some(0.5), level, t + 160 * S), None);
        assert_eq!(w.feed(Some(0.5), level, t + 219 * S), None);
        assert_eq!(w.feed(Some(0.5), level, t + 220 * S), Some(false));
        // An unknown reading restarts it as well.
        assert_eq!(w.feed(Some(0.95), level, t + 230 * S), None);
        assert_eq!(w.feed(None, level, t + 260 * S), None);
        assert_eq!(w.feed(Some(0.95), level, t + 290 * S), None);
        assert!(!w.active());
    }

    #[test]
    fn the_watcher_names_what_crossed_with_both_numbers() {
        let diagnostics = crate::DiagnosticsConfig {
            max_extra_children: 2,
            ..crate::DiagnosticsConfig::default()
        };
        let config = WarningConfig {
            window: 10 * S,
            ..WarningConfig::default()
        };
        let mut watcher = Watcher::default();
        let t = Instant::now();
        let calm = Figures {
            open_fds: Some(5),
            rss_bytes: Some(1 << 20),
            threads: Some(10),
            extra_children: Some(0),
            host_cpu: Some(0.95),
            host_memory: Some(0.5),
            gpu: Some((1, 80.0, 90.0)),
        };
        assert!(watcher.judge(&diagnostics, &config, &calm, t).is_empty());
        let busy = Figures {
            extra_children: Some(3),
            gpu: Some((1, 91.0, 90.0)),
            ..calm.clone()
        };
        let changes = watcher.judge(&diagnostics, &config, &busy, t + S);
        let names: Vec<_> = changes.iter().map(|c| (c.0, c.1)).collect();
        assert_eq!(
            names,
            [
                (WarningKind::ExtraChildren, true),
                (WarningKind::GpuTemperature, true)
            ]
        );
        let EngineEvent::WarningRaised {
            value,
            threshold,
            detail,
            ..
        } = &changes[0].2
        else {
            panic!("{:?}", changes[0].2)
        };
        assert_eq!((*value, *threshold), (3.0, 2.0));
        assert!(detail.contains("3 is over 2"), "{detail}");
        // CPU has been over 90 % for the whole window by now.
        let changes = watcher.judge(&diagnostics, &config, &busy, t + 10 * S);
        assert_eq!(changes.len(), 1);
        assert_eq!((changes[0].0, changes[0].1), (WarningKind::HostCpu, true));
        assert!(watcher.active(WarningKind::HostCpu));
        // Children back to the cleared level (2 × 0.9, floored: 1), the GPU 5 °C under its threshold.
        let cooler = Figures {
            extra_children: Some(1),
            gpu: Some((1, 85.0, 90.0)),
            ..busy
        };
        let changes = watcher.judge(&diagnostics, &config, &cooler, t + 11 * S);
        let names: Vec<_> = changes.iter().map(|c| (c.0, c.1)).collect();
        assert_eq!(
            names,
            [
                (WarningKind::ExtraChildren, false),
                (WarningKind::GpuTemperature, false)
            ]
        );
    }

    #[test]
    fn defaults_are_valid_and_inverted_levels_are_not() {
        assert_eq!(WarningConfig::default().validate(), Ok(()));
        let inverted = WarningConfig {
            host_cpu_clear: 0.95,
            ..WarningConfig::default()
        };
        assert!(inverted.validate().is_err());
    }
}

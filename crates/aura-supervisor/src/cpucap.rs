//! The CPU cap on all of this instance's jobs together (`SupervisorConfig::cpu_cap`): choosing its
//! mechanism once at start-up, setting and lifting the cap, and what a launch does under it (join the v1
//! `cpu` cgroup, or start `SCHED_IDLE`). Blocking (cgroupfs, `/proc`, `sched_setscheduler`).
//!
//! One control for the whole instance, never one write per job: a cgroup holding every job (`cpu.max`
//! on the v2 instance root, the CFS quota of a v1 `cpu` cgroup every job joins before exec), or, with no
//! usable cpu controller, the scheduling class of every job process — the weakest of the three (see
//! [`CpuCapMechanism::SchedIdle`]).

use crate::host::{self, HostCgroups, Layout};
use crate::tree::TreeStats;
use crate::SupervisorError;
use aura_model::Backend;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How the CPU cap is enforced, chosen at start-up from what the host offers (best first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CpuCapMechanism {
    /// `cpu.max` on the instance's cgroup v2 root (pure v2 hosts where the cpu controller can be
    /// delegated): the kernel holds all jobs together to the share.
    CgroupV2CpuMax,
    /// The CFS quota (`cpu.cfs_quota_us`) of the instance's cgroup in the v1 `cpu` hierarchy, which every
    /// job joins before it executes (hybrid and v1 hosts): the kernel holds all jobs together to the
    /// share. With the cap lifted the jobs still run in that cgroup, so under contention they share the
    /// machine with the rest as one group of the kernel's default weight (as a systemd service does):
    /// busy work outside gets its share before the jobs' many threads, and an interactive program's
    /// wake-ups are served sooner than beside ungrouped jobs (BENCHMARKS.md, issue 19).
    CgroupV1Quota,
    /// No usable cpu controller (the `process_group` backend, or none mounted or delegable): while
    /// capped, every job process runs in the `SCHED_IDLE` class, and jobs started meanwhile start in
    /// it. Weaker: no hard share — idle-class processes get only the CPU that no other process wants,
    /// so on a busy machine they nearly stop and on an idle one they use every CPU. Only `SCHED_OTHER`
    /// and `SCHED_BATCH` threads are moved (a job that made itself real-time is not capped), and
    /// lifting puts idle-class threads back to `SCHED_OTHER` at the nice value they had.
    SchedIdle,
}

impl CpuCapMechanism {
    /// The name used in logs and the API (`cgroup_v2_cpu_max`, …), as serde writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            CpuCapMechanism::CgroupV2CpuMax => "cgroup_v2_cpu_max",
            CpuCapMechanism::CgroupV1Quota => "cgroup_v1_quota",
            CpuCapMechanism::SchedIdle => "sched_idle",
        }
    }
}

impl std::fmt::Display for CpuCapMechanism {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The mechanism with what it needs.
#[derive(Debug)]
enum How {
    /// The instance's v2 root, whose `cpu.max` caps every job below it.
    V2 {
        root: PathBuf,
    },
    /// `aura-<instance>` in the v1 `cpu` hierarchy, and its `cgroup.procs` kept open for every job's
    /// child to join by (as it joins its job cgroups; see `spawn`).
    V1 {
        dir: PathBuf,
        procs: File,
    },
    SchedIdle,
}

/// The instance's CPU cap: its mechanism and, for `SCHED_IDLE`, whether jobs run idle now.
#[derive(Debug)]
pub(crate) struct CpuCap {
    how: How,
    /// Serializes changes of the cap with a launch's correction of its own policy (`SCHED_IDLE`): the
    /// latest change wins on every tree, including one that started while it was being made.
    changing: Mutex<()>,
    /// `SCHED_IDLE` only: jobs are capped now (read by every launch).
    idle: AtomicBool,
}

/// Kernel default of `cpu.cfs_period_us` and of `cpu.max`'s period, used if it cannot be read.
const DEFAULT_PERIOD_USEC: u64 = 100_000;
/// The period of the cap while it holds: capped jobs run in 10 ms slices rather than 100 ms bursts that
/// leave an interactive program waiting behind them (`cargo xtask bench control`: the stand-in's worst
/// wake-up 44–57 ms late with 100 ms, 15 ms with 10 ms).
const CAP_PERIOD_USEC: u64 = 10_000;
/// The group's weight while capped: the jobs yield to every runnable task outside them (the desktop
/// comes first), and get what nobody else wants, up to the quota. Lifted: the kernel's defaults.
const CAPPED_V1_SHARES: u64 = 2;
const CAPPED_V2_WEIGHT: u64 = 1;
const LIFTED_V1_SHARES: u64 = 1024;
const LIFTED_V2_WEIGHT: u64 = 100;
/// The smallest quota the kernel accepts (1 ms).
const MIN_QUOTA_USEC: u64 = 1_000;

impl CpuCap {
    /// Chooses the best mechanism the backend and host allow and prepares it, cap lifted (a crashed
    /// predecessor's cap on a reused directory is lifted too). Never fails: what is missing is logged
    /// and the next mechanism is taken, down to `SCHED_IDLE`. Blocking (a few cgroupfs writes, a mkdir).
    pub fn start(layout: &Layout, host: &HostCgroups, instance: &str) -> CpuCap {
        let mut reasons = Vec::new();
        let how = match Self::v2(layout) {
            Ok(how) => Some(how),
            Err(r) => {
                reasons.push(format!("cgroup v2 cpu.max: {r}"));
                match layout.backend {
                    // Forced to go without cgroups: none for the cap either.
                    Backend::ProcessGroup => None,
                    _ => Self::v1(host, instance)
                        .inspect_err(|r| reasons.push(format!("cgroup v1 cpu quota: {r}")))
                        .ok(),
                }
            }
        };
        let how = how.unwrap_or_else(|| {
            tracing::warn!(reasons = %reasons.join("; "), "no usable cpu controller: the CPU cap runs jobs SCHED_IDLE (no hard share)");
            How::SchedIdle
        });
        CpuCap {
            how,
            changing: Mutex::new(()),
            idle: AtomicBool::new(false),
        }
    }

    /// `cpu.max` on the instance's v2 root, once the daemon's own cgroup offers it the cpu controller.
    fn v2(layout: &Layout) -> Result<How, String> {
        let root = layout
            .v2_root
            .as_ref()
            .ok_or("no cgroup v2 instance root")?;
        let parent = root.parent().ok_or("the instance root has no parent")?;
        // Only offered to the instance root, not enabled below it: how the jobs share the capped CPU
        // between them stays as it is without the controller.
        if !host::offer_v2_controller(parent, root, "cpu") {
            return Err(format!(
                "the cpu controller is not available in {} (not in {}'s cgroup.controllers, or that \
                 cgroup holds processes and cannot delegate it)",
                root.display(),
                parent.display()
            ));
        }
        let cpu_max = root.join("cpu.max");
        std::fs::write(&cpu_max, "max").map_err(|e| format!("{}: {e}", cpu_max.display()))?;
        Ok(How::V2 { root: root.clone() })
    }

    /// `aura-<instance>` under this process's own v1 `cpu` cgroup, cap lifted, its `cgroup.procs` open.
    fn v1(host: &HostCgroups, instance: &str) -> Result<How, String> {
        let own = host.own_v1_cpu_dir()?;
        let dir = host::make_instance_dir(&own, &format!("aura-{instance}"))?;
        let ready = || -> Result<File, String> {
            let quota = dir.join("cpu.cfs_quota_us");
            std::fs::write(&quota, "-1").map_err(|e| format!("{}: {e}", quota.display()))?;
            // A crashed predecessor may have left it capped.
            write_weight(&dir.join("cpu.shares"), LIFTED_V1_SHARES);
            let procs = dir.join("cgroup.procs");
            std::fs::OpenOptions::new()
                .write(true)
                .open(&procs)
                .map_err(|e| format!("{}: {e}", procs.display()))
        };
        match ready() {
            Ok(procs) => Ok(How::V1 { dir, procs }),
            Err(e) => {
                let _ = crate::cgroup::rmdir(&dir, Duration::ZERO);
                Err(e)
            }
        }
    }

    pub fn mechanism(&self) -> CpuCapMechanism {
        match self.how {
            How::V2 { .. } => CpuCapMechanism::CgroupV2CpuMax,
            How::V1 { .. } => CpuCapMechanism::CgroupV1Quota,
            How::SchedIdle => CpuCapMechanism::SchedIdle,
        }
    }

    /// The cgroup directory the cap is written to, if it is one.
    pub fn dir(&self) -> Option<&Path> {
        match &self.how {
            How::V2 { root } => Some(root),
            How::V1 { dir, .. } => Some(dir),
            How::SchedIdle => None,
        }
    }

    /// The open `cgroup.procs` every job's child writes "0" to before exec (v1 quota only).
    pub fn procs_fd(&self) -> Option<RawFd> {
        match &self.how {
            How::V1 { procs, .. } => Some(procs.as_raw_fd()),
            _ => None,
        }
    }

    /// Whether a job starting now starts `SCHED_IDLE`.
    pub fn idle_now(&self) -> bool {
        self.idle.load(Ordering::SeqCst)
    }

    /// Caps all jobs together at `share` of the CPUs this process may run on, or lifts the cap (`None`).
    /// `trees` lists the running trees (`SCHED_IDLE` only). Blocking.
    pub fn set(
        &self,
        share: Option<f64>,
        trees: impl FnOnce() -> Vec<Arc<TreeStats>>,
    ) -> Result<CpuCapMechanism, SupervisorError> {
        if let Some(s) = share {
            // NaN fails both comparisons.
            if !(s > 0.0 && s <= 1.0) {
                return Err(SupervisorError::InvalidCpuShare(s));
            }
        }
        let _changing = crate::lock(&self.changing);
        let cgroup_error = |path: &Path| {
            let path = path.to_path_buf();
            move |source| SupervisorError::Cgroup { path, source }
        };
        match &self.how {
            How::V2 { root } => {
                let (max, weight) = match share {
                    Some(s) => (
                        format!(
                            "{} {CAP_PERIOD_USEC}",
                            quota_usec(s, cpus(), CAP_PERIOD_USEC)
                        ),
                        CAPPED_V2_WEIGHT,
                    ),
                    None => (format!("max {DEFAULT_PERIOD_USEC}"), LIFTED_V2_WEIGHT),
                };
                let file = root.join("cpu.max");
                std::fs::write(&file, max).map_err(cgroup_error(&file))?;
                write_weight(&root.join("cpu.weight"), weight);
            }
            How::V1 { dir, .. } => {
                let quota = dir.join("cpu.cfs_quota_us");
                match share {
                    Some(s) => {
                        // Period first: the quota is sized for it.
                        let period = dir.join("cpu.cfs_period_us");
                        std::fs::write(&period, CAP_PERIOD_USEC.to_string())
                            .map_err(cgroup_error(&period))?;
                        let value = quota_usec(s, cpus(), CAP_PERIOD_USEC).to_string();
                        std::fs::write(&quota, value).map_err(cgroup_error(&quota))?;
                        write_weight(&dir.join("cpu.shares"), CAPPED_V1_SHARES);
                    }
                    None => {
                        std::fs::write(&quota, "-1").map_err(cgroup_error(&quota))?;
                        write_weight(&dir.join("cpu.shares"), LIFTED_V1_SHARES);
                    }
                }
            }
            How::SchedIdle => {
                let idle = share.is_some();
                // First, so that a launch from now on starts in the new class; one that read the old
                // value corrects itself (`correct_launch`), or is among `trees` below.
                self.idle.store(idle, Ordering::SeqCst);
                let trees = trees();
                apply_class(trees.iter().map(|t| &**t), idle)?;
            }
        }
        tracing::info!(
            share = ?share,
            mechanism = %self.mechanism(),
            cpus = cpus(),
            "CPU cap {}",
            if share.is_some() { "set" } else { "lifted" }
        );
        Ok(self.mechanism())
    }

    /// A tree just registered that started `SCHED_IDLE` or not (`started_idle`, read before its start):
    /// if the cap changed meanwhile and the change's walk over the trees may have missed it, it gets the
    /// class of now. Blocking only then.
    pub fn correct_launch(&self, tree: &TreeStats, started_idle: bool) {
        if !matches!(self.how, How::SchedIdle) || self.idle_now() == started_idle {
            return;
        }
        let _changing = crate::lock(&self.changing);
        if let Err(e) = apply_class(std::iter::once(tree), self.idle_now()) {
            tracing::warn!(pid = tree.tree.pid, error = %e, "could not give a new job the CPU cap's scheduling class");
        }
    }

    /// At shutdown, once every job is gone: removes the v1 `cpu` directory (the v2 root goes with the
    /// other instance directories).
    pub fn remove_dir(&self) {
        if let How::V1 { dir, .. } = &self.how {
            if let Err(e) = crate::cgroup::rmdir(dir, Duration::from_millis(200)) {
                tracing::warn!(cgroup = %dir.display(), error = %e, "could not remove the CPU cap's cgroup");
            }
        }
    }
}

/// A weight that cannot be written leaves the cap itself in force: said, not fatal.
fn write_weight(file: &Path, weight: u64) {
    if let Err(e) = std::fs::write(file, weight.to_string()) {
        tracing::warn!(path = %file.display(), error = %e, "cannot set the jobs' cpu weight");
    }
}

/// The CPUs jobs may run on: this process's affinity (jobs inherit it), else what std sees.
pub(crate) fn cpus() -> u32 {
    rustix::thread::sched_getaffinity(None)
        .map(|set| set.count())
        .ok()
        .filter(|&n| n > 0)
        .or_else(|| {
            std::thread::available_parallelism()
                .ok()
                .and_then(|n| u32::try_from(n.get()).ok())
        })
        .unwrap_or(1)
}

/// The CFS quota per `period` that holds a group to `share` of `cpus` CPUs.
fn quota_usec(share: f64, cpus: u32, period: u64) -> u64 {
    let quota = (share * f64::from(cpus) * period as f64).round();
    // `as` saturates; the share is checked to be in (0, 1].
    (quota as u64).max(MIN_QUOTA_USEC)
}

/// Puts every thread of every process of `trees` into the idle class (`idle`) or back to `SCHED_OTHER`,
/// in rounds until one changes nothing: a thread or process started from one not yet moved is found by
/// the next (once all are moved, what they start inherits the class). Three rounds at most; a process
/// that keeps starting new ones is left to the next change. Returns the first refusal (other than a
/// process that ended meanwhile); the others are still moved.
fn apply_class<'a>(
    trees: impl Iterator<Item = &'a TreeStats> + Clone,
    idle: bool,
) -> Result<(), SupervisorError> {
    let mut first_error = None;
    for _ in 0..3 {
        let mut snap = None;
        let mut changed = false;
        for stats in trees.clone() {
            for pid in stats.tree.members(&mut snap) {
                for tid in threads(pid) {
                    match set_class(tid, idle) {
                        Ok(moved) => changed |= moved,
                        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
                        Err(source) => {
                            first_error.get_or_insert(SupervisorError::SchedPolicy { pid, source });
                        }
                    }
                }
            }
        }
        if !changed {
            break;
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// The thread ids of process `pid` (just `pid` if its task list cannot be read).
fn threads(pid: i32) -> Vec<i32> {
    let tids: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|dir| {
            dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    if tids.is_empty() {
        vec![pid]
    } else {
        tids
    }
}

/// Moves thread `tid` to `SCHED_IDLE` (`idle`, from `SCHED_OTHER` or `SCHED_BATCH`) or back to
/// `SCHED_OTHER` (from `SCHED_IDLE`); whether it moved. The nice value stays what it is.
fn set_class(tid: i32, idle: bool) -> io::Result<bool> {
    // SAFETY: plain syscall.
    let current = unsafe { libc::sched_getscheduler(tid) };
    if current < 0 {
        return Err(io::Error::last_os_error());
    }
    let current = current & !libc::SCHED_RESET_ON_FORK;
    let target = match (idle, current) {
        (true, libc::SCHED_OTHER | libc::SCHED_BATCH) => libc::SCHED_IDLE,
        (false, libc::SCHED_IDLE) => libc::SCHED_OTHER,
        _ => return Ok(false),
    };
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid sched_param for the duration of the call.
    if unsafe { libc::sched_setscheduler(tid, target, &param) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_quota_is_the_share_of_every_cpu_per_period() {
        assert_eq!(quota_usec(0.25, 2, 100_000), 50_000);
        assert_eq!(quota_usec(1.0, 16, 100_000), 1_600_000);
        assert_eq!(quota_usec(0.5, 1, 250_000), 125_000);
        // The kernel refuses less than 1 ms.
        assert_eq!(quota_usec(1e-9, 1, 100_000), MIN_QUOTA_USEC);
    }

    #[test]
    fn names_are_snake_case_as_serde_writes_them() {
        let names = [
            CpuCapMechanism::CgroupV2CpuMax,
            CpuCapMechanism::CgroupV1Quota,
            CpuCapMechanism::SchedIdle,
        ]
        .map(|m| m.to_string());
        assert_eq!(
            names,
            ["cgroup_v2_cpu_max", "cgroup_v1_quota", "sched_idle"]
        );
    }

    #[test]
    fn there_is_always_a_cpu() {
        assert!(cpus() >= 1);
    }
}

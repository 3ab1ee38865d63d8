//! A tree's sampled statistics (memory, CPU, processes, memory violations) and its ending: the reaped
//! main process, the conclusion once the tree is empty, the final figures.

use super::members::TreeRef;
use crate::cgroup::{self, CgroupDir, ControlFile, MemoryApi, OomCounters};
use crate::pool::{Baseline, CgroupPool};
use crate::procfs::{self, ProcStat};
use crate::slots::SlotPermit;
use crate::subreaper;
use crate::workdirs::WorkDirs;
use crate::LiveUsage;
use aura_logs::CaptureReport;
use aura_model::{ExitStatus, MemorySource};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const NONE: u64 = u64::MAX;

fn opt(v: u64) -> Option<u64> {
    (v != NONE).then_some(v)
}

/// Why a tree must be killed for memory, as the watcher's samples saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryViolation {
    /// Over its hard limit: the kernel reached it in the job's cgroup, or the watchdog saw the tree's
    /// RSS above it.
    LimitExceeded {
        /// The tree's hard memory limit, in bytes.
        limit_bytes: u64,
        /// The tree's memory use when it was caught, in bytes; `None` if it could not be read.
        current_bytes: Option<u64>,
        /// Who enforced the limit: the kernel or the watchdog.
        by: LimitEnforcer,
    },
    /// The kernel's OOM killer killed part of the tree (the host ran out of memory): like systemd's
    /// `OOMPolicy=stop`, the rest of the tree goes too, since a job with a killed part is broken.
    OomKilled {
        /// How many processes of the tree the OOM killer has killed (the cgroup's `oom_kill` count).
        kills: u64,
    },
}

pub use aura_model::events::LimitEnforcer;

/// Sampled statistics and the ending of one tree, written by the watcher thread (and the launcher's
/// first look), read lock-free by `live()`.
#[derive(Debug)]
pub(crate) struct TreeStats {
    pub tree: TreeRef,
    /// Memory comes from the kernel's per-cgroup counters (else summed RSS).
    pub cgroup_memory: bool,
    /// The hard memory limit, if the job has one.
    pub memory_limit: Option<u64>,
    oom_kills: AtomicU64,
    limit_hits: AtomicU64,
    /// Set (once) when a sample finds a memory violation; the monitor waits on `violation_notify`.
    violation: Mutex<Option<MemoryViolation>>,
    violation_notify: tokio::sync::Notify,
    /// Where the cgroup counters stood when the job got its (possibly reused) cgroups; the job's figures
    /// are taken from there.
    base: Baseline,
    /// Set once the tree has ended (`retire`): no sample touches it after that.
    pub done: AtomicBool,
    /// Held by the watcher while it samples, and by whatever writes to the tree's cgroups or signals its
    /// members outside the stop path (pausing): `retire` takes it, so that none of that still runs once
    /// its cgroups may go to the next job.
    sampling: Mutex<()>,
    /// Paused (`RunningTree::pause`) and not resumed: its v2 cgroup may be left frozen, which `settle`
    /// undoes before the cgroup goes to the next job.
    pub(super) paused: AtomicBool,
    mem_start: AtomicU64,
    mem_current: AtomicU64,
    /// `mem_current` less the page cache the kernel can reclaim (cgroup backends; the RSS sum elsewhere).
    mem_in_use: AtomicU64,
    mem_peak_sampled: AtomicU64,
    mem_peak_kernel: AtomicU64,
    cpu_user_usec: AtomicU64,
    cpu_system_usec: AtomicU64,
    processes: AtomicU32,
    peak_processes: AtomicU32,
    /// The main process's status, set by the thread that reaped it.
    exit: Mutex<Option<Reaped>>,
    /// The tree's final figures, set by the reaping thread (or, for a tree that outlived its main process, by
    /// the blocking task that killed the rest) once the tree is empty and its cgroups are handed back.
    finals: Mutex<Option<Finals>>,
    /// Woken when `exit` or `finals` is set.
    ended: tokio::sync::Notify,
    /// The default working directory created for the job: recycled when the tree is gone, if empty.
    pub created_cwd: Option<PathBuf>,
    /// The tree's running slot: given back (a waiting launch starts) once the tree is gone.
    slot: Mutex<Option<SlotPermit>>,
    /// The job's stdout/stderr captures (on the watcher thread): how many are still open, and the bytes
    /// the finished ones dropped to stay under the cap.
    logs: Mutex<LogsState>,
    /// The job's progress, for a job that reports it (fed by its captures' taps).
    pub progress: Option<Arc<super::JobProgress>>,
}

#[derive(Debug, Default)]
struct LogsState {
    open: usize,
    truncated: u64,
    dropped: u64,
}

/// What concluding a tree needs besides the tree: where its cgroups and working directory go, and where
/// a tree that outlived its main process is killed and waited for.
pub(crate) struct Ending {
    pub pool: Arc<CgroupPool>,
    pub workdirs: Arc<WorkDirs>,
    pub runtime: tokio::runtime::Handle,
    pub kill_wait: Duration,
}

/// The rest of the conclusion of a tree found empty, its slot already given back: reading its final
/// figures, handing its cgroups and working directory back, waking its owner — done by [`Settling::run`],
/// which the thread that concluded the tree calls once it has started what the freed slot allows.
#[must_use = "the tree's owner hears of its end only when this runs"]
pub(crate) struct Settling<F: FnOnce(&Arc<TreeStats>)>(Option<(Arc<TreeStats>, Arc<Ending>, F)>);

impl<F: FnOnce(&Arc<TreeStats>)> Settling<F> {
    /// Settles the tree: final figures, cgroups and directory handed back, owner woken.
    pub fn run(mut self) {
        self.settle_now();
    }

    fn settle_now(&mut self) {
        if let Some((stats, ending, settled)) = self.0.take() {
            stats.settle(&ending, true);
            settled(&stats);
        }
    }
}

/// Only a thread unwinding between the conclusion and `run` gets here: its tree still settles, so that
/// its owner never waits forever.
impl<F: FnOnce(&Arc<TreeStats>)> Drop for Settling<F> {
    fn drop(&mut self) {
        self.settle_now();
    }
}

/// What is read from a tree's cgroups once it is empty, before they go to the next job.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Finals {
    /// The job's part of the memory charge left when it ended.
    pub memory_end: Option<u64>,
    /// The job's CPU time (user, system) in microseconds from its v2 cgroup.
    pub cpu_usec: Option<(u64, u64)>,
}

impl TreeStats {
    pub fn new(
        tree: TreeRef,
        cgroup_memory: bool,
        memory_limit: Option<u64>,
        base: Baseline,
        created_cwd: Option<PathBuf>,
        slot: SlotPermit,
        progress: Option<Arc<super::JobProgress>>,
    ) -> TreeStats {
        TreeStats {
            progress,
            created_cwd,
            slot: Mutex::new(Some(slot)),
            logs: Mutex::new(LogsState::default()),
            tree,
            cgroup_memory,
            memory_limit,
            oom_kills: AtomicU64::new(0),
            limit_hits: AtomicU64::new(0),
            violation: Mutex::new(None),
            violation_notify: tokio::sync::Notify::new(),
            base,
            done: AtomicBool::new(false),
            sampling: Mutex::new(()),
            paused: AtomicBool::new(false),
            mem_start: AtomicU64::new(NONE),
            mem_current: AtomicU64::new(NONE),
            mem_in_use: AtomicU64::new(NONE),
            mem_peak_sampled: AtomicU64::new(NONE),
            mem_peak_kernel: AtomicU64::new(NONE),
            cpu_user_usec: AtomicU64::new(NONE),
            cpu_system_usec: AtomicU64::new(NONE),
            processes: AtomicU32::new(0),
            peak_processes: AtomicU32::new(0),
            exit: Mutex::new(None),
            finals: Mutex::new(None),
            ended: tokio::sync::Notify::new(),
        }
    }

    /// The tree's first figures, read by the launcher right after the start where the kernel counts the
    /// memory (one read; elsewhere the watcher takes a first sample).
    pub fn start_sample(&self) {
        let Some((dir, current, _)) = self.memory_dir() else {
            return;
        };
        if let Some(charge) = dir.read_u64(current) {
            let cur = self.job_memory(charge);
            self.mem_start.store(cur, Ordering::Relaxed);
            self.mem_current.store(cur, Ordering::Relaxed);
            self.mem_peak_sampled.store(cur, Ordering::Relaxed);
        }
        self.processes.store(1, Ordering::Relaxed);
        self.peak_processes.store(1, Ordering::Relaxed);
    }

    /// Called by the thread that reaped the main process (its launcher thread, or the watcher): publishes
    /// the status. For a tree left empty (the common case: one read to know) its slot is free at once,
    /// and the rest — reading the final figures, handing the cgroups back, waking the owner once with
    /// everything — is returned for the caller to run ([`Settling::run`]), so that the
    /// launch waiting for the slot can start first. A tree that outlived its main process is killed and
    /// waited for on the blocking pool (bounded by `kill_wait`), never on the reaping thread.
    ///
    /// `settled` runs once the tree is settled (on whichever thread settled it): the watcher bounds the
    /// wait for the tree's last output from there.
    pub fn conclude<F: FnOnce(&Arc<TreeStats>) + Send + 'static>(
        self: &Arc<Self>,
        reaped: Reaped,
        ending: &Arc<Ending>,
        settled: F,
    ) -> Option<Settling<F>> {
        *crate::lock(&self.exit) = Some(reaped);
        if self.tree.is_empty() {
            self.give_back_slot();
            return Some(Settling(Some((self.clone(), ending.clone(), settled))));
        }
        self.ended.notify_one();
        let (stats, end) = (self.clone(), ending.clone());
        drop(ending.runtime.spawn_blocking(move || {
            let empty = stats.tree.kill_and_wait(end.kill_wait);
            stats.settle(&end, empty);
            settled(&stats);
        }));
        None
    }

    /// Reads the final figures of an ended tree, hands its cgroups back (reused only if `empty` and
    /// clean), recycles its working directory if it created an empty one, and wakes the owner. Blocking
    /// (cgroupfs, the file system).
    fn settle(&self, ending: &Ending, empty: bool) {
        // The tree is gone (or given up on after `kill_wait`): a launch waiting for a running slot starts
        // now, beside the reads below (it prepared its own cgroups and directory while it waited).
        // (Already given back where the tree was empty at its conclusion.)
        self.give_back_slot();
        let pool = &ending.pool;
        // After this the cgroups may belong to the next job: no sample of this one may still be running.
        self.retire();
        // Whatever still carries its marker from now on is a leftover (`subreaper::tend` kills it).
        if let Some(marker) = &self.tree.marker {
            subreaper::ended(marker);
        }
        self.read_oom();
        // Kept in the atomics: `live()` reports it.
        self.read_kernel_peak();
        let charge = self.read_kernel_current();
        let cpu_counters = self.tree.v2.as_deref().and_then(cgroup::job_cpu_usec);
        let cpu_usec = cpu_counters.map(|c| self.job_cpu(c));
        // A tree killed while paused leaves its v2 cgroup frozen: the next job in it would never run.
        let thawed = !self.paused.load(Ordering::SeqCst) || self.thaw_for_reuse();
        let reusable = empty && thawed && self.leaves_cgroups_reusable();
        self.tree.release_cgroups(
            pool,
            reusable,
            charge.filter(|_| self.tree.v1.is_some()),
            cpu_counters,
        );
        // Before the owner hears of the end: the job's next attempt may start at once and create the
        // same directory, which must not be taken away under it.
        if let Some(dir) = self.created_cwd.as_deref() {
            ending.workdirs.release(dir, empty);
        }
        // Published once the cgroups and the directory are handed back, so when `finish` returns they
        // are reused or gone.
        *crate::lock(&self.finals) = Some(Finals {
            memory_end: charge.map(|c| self.job_memory(c)),
            cpu_usec,
        });
        self.ended.notify_one();
    }

    /// Gives the tree's running slot back (once; later calls do nothing).
    fn give_back_slot(&self) {
        // Taken out first: the permit's drop wakes launchers, which must not happen under this tree's
        // lock.
        let slot = crate::lock(&self.slot).take();
        drop(slot);
    }

    /// `n` captures of this tree's output started.
    pub fn logs_open(&self, n: usize) {
        crate::lock(&self.logs).open += n;
    }

    /// One capture ended (EOF, error, or abandoned); wakes the owner when it was the last, unless
    /// `wake_owner` is false: the caller concludes the tree next, which wakes the owner anyway.
    pub fn log_done(&self, report: CaptureReport, wake_owner: bool) {
        let mut logs = crate::lock(&self.logs);
        logs.open = logs.open.saturating_sub(1);
        logs.truncated += report.truncated_bytes;
        logs.dropped += report.dropped_bytes;
        if logs.open == 0 && wake_owner {
            drop(logs);
            self.ended.notify_one();
        }
    }

    /// The bytes the captures dropped (to the cap, and to a volume that refused them), once every
    /// capture has ended.
    pub fn logs_finished(&self) -> Option<(u64, u64)> {
        let logs = crate::lock(&self.logs);
        (logs.open == 0).then_some((logs.truncated, logs.dropped))
    }

    /// The main process's status, once it is reaped.
    pub fn exit(&self) -> Option<Reaped> {
        *crate::lock(&self.exit)
    }

    pub(super) fn finals(&self) -> Option<Finals> {
        *crate::lock(&self.finals)
    }

    /// Resolves once `ready` returns something (set by the reaping side). Cancel-safe.
    pub(super) async fn ended_with<T>(&self, ready: impl Fn(&Self) -> Option<T>) -> T {
        loop {
            // Registered before the check: a notification in between is not lost.
            let notified = self.ended.notified();
            if let Some(v) = ready(self) {
                return v;
            }
            notified.await;
        }
    }

    /// The memory cgroup with its current-charge and high-water-mark files.
    fn memory_dir(&self) -> Option<(&CgroupDir, ControlFile, ControlFile)> {
        match self.tree.memory_cgroup(self.cgroup_memory)? {
            (dir, MemoryApi::V1) => Some((dir, ControlFile::V1Usage, ControlFile::V1MaxUsage)),
            (dir, MemoryApi::V2) => Some((dir, ControlFile::V2Current, ControlFile::V2Peak)),
        }
    }

    /// Sampled more often than the others: a tree with a memory limit (the watchdog must catch it early
    /// in the fallback; on cgroups, the rest of a tree the kernel hit is killed promptly).
    pub fn watched(&self) -> bool {
        self.memory_limit.is_some()
    }

    /// Reads the kernel's OOM counters now (cgroup backends) and keeps them.
    pub fn read_oom(&self) -> Option<OomCounters> {
        let (dir, api) = self.tree.memory_cgroup(self.cgroup_memory)?;
        let c = cgroup::oom_counters(dir, api, self.memory_limit)?;
        self.oom_kills.store(c.oom_kills, Ordering::Relaxed);
        self.limit_hits.store(c.limit_hits, Ordering::Relaxed);
        Some(c)
    }

    /// Whether the job's cgroups may go back to the pool as far as memory is concerned: a limited job's
    /// cgroup keeps its limit, and OOM counters never reset, so neither is handed to another job. The OOM
    /// count is the last one read, which `settle` reads just before asking.
    pub fn leaves_cgroups_reusable(&self) -> bool {
        self.memory_limit.is_none() && self.oom_kills.load(Ordering::Relaxed) == 0
    }

    /// What the kernel's counters and the watchdog say about the tree's memory, once it is gone.
    pub fn memory_verdict(&self) -> (u64, bool) {
        let oom_kills = self.oom_kills.load(Ordering::Relaxed);
        let flagged = matches!(
            *crate::lock(&self.violation),
            Some(MemoryViolation::LimitExceeded { .. })
        );
        // The kernel killed inside the job's cgroup after the cgroup reached its own limit.
        let kernel_limit = self.memory_limit.is_some()
            && oom_kills > 0
            && self.limit_hits.load(Ordering::Relaxed) > 0;
        (oom_kills, flagged || kernel_limit)
    }

    fn flag(&self, violation: MemoryViolation) {
        let mut slot = crate::lock(&self.violation);
        if slot.is_none() {
            *slot = Some(violation);
            self.violation_notify.notify_one();
        }
    }

    /// Resolves once a sample found a memory violation (at most once per tree).
    pub async fn violation(&self) -> MemoryViolation {
        loop {
            if let Some(v) = *crate::lock(&self.violation) {
                return v;
            }
            self.violation_notify.notified().await;
        }
    }

    /// Checks the kernel's OOM counters (cgroups) or the tree's RSS against its limit (watchdog).
    fn check_memory(&self, current: Option<u64>) {
        if self.memory_dir().is_some() {
            // A tree's first sample (most trivial jobs get no other) skips the counters of an unlimited
            // job: `finish` reads them anyway.
            let first = self.mem_start.load(Ordering::Relaxed) == NONE;
            if first && self.memory_limit.is_none() {
                return;
            }
            let Some(c) = self.read_oom() else { return };
            if c.oom_kills == 0 {
                return;
            }
            match self.memory_limit {
                Some(limit) if c.limit_hits > 0 => self.flag(MemoryViolation::LimitExceeded {
                    limit_bytes: limit,
                    current_bytes: current,
                    by: LimitEnforcer::Kernel,
                }),
                _ => self.flag(MemoryViolation::OomKilled { kills: c.oom_kills }),
            }
        } else if let (Some(limit), Some(cur)) = (self.memory_limit, current) {
            if cur > limit {
                self.flag(MemoryViolation::LimitExceeded {
                    limit_bytes: limit,
                    current_bytes: Some(cur),
                    by: LimitEnforcer::Watchdog,
                });
            }
        }
    }

    /// The cgroup's current charge as the kernel counts it (not relative to the baseline), read now:
    /// after the tree is gone, what is left charged (page cache of the files the job wrote). Used for the
    /// end figure of jobs too short to have been sampled, and to decide whether the cgroup is reused.
    pub fn read_kernel_current(&self) -> Option<u64> {
        let (dir, current, _) = self.memory_dir()?;
        dir.read_u64(current)
    }

    /// This job's part of a charge read from the cgroup.
    pub fn job_memory(&self, charge: u64) -> u64 {
        charge.saturating_sub(self.base.memory)
    }

    /// The kernel high-water mark (since this job's start), read now.
    pub fn read_kernel_peak(&self) -> Option<u64> {
        let (dir, _, peak) = self.memory_dir()?;
        let v = self.job_memory(dir.read_u64(peak)?);
        self.mem_peak_kernel.store(v, Ordering::Relaxed);
        Some(v)
    }

    /// A watch round between full samples: where the kernel enforces the limit only its OOM counters
    /// matter (two small reads); the watchdog needs the tree's RSS, i.e. a full sample.
    pub fn watch(&self, snap: &mut Option<Vec<(i32, ProcStat)>>) {
        let Some((dir, current, _)) = self.memory_dir() else {
            return self.sample(snap);
        };
        let _sampling = crate::lock(&self.sampling);
        if !self.done.load(Ordering::Relaxed) {
            self.check_memory(dir.read_u64(current).map(|c| self.job_memory(c)));
        }
    }

    /// Runs `f` unless the tree has ended (`retire`), and keeps it from ending meanwhile: what `f` writes
    /// to the tree's cgroups or signals cannot reach the next job of a reused cgroup. `None` once ended.
    /// Blocking (briefly: it waits out a sample in progress, and holds up the next one).
    pub(super) fn while_live<T>(&self, f: impl FnOnce() -> T) -> Option<T> {
        let _sampling = crate::lock(&self.sampling);
        (!self.done.load(Ordering::Relaxed)).then(f)
    }

    /// Whether the tree has ended (no sample, no pause touches it any more).
    pub(super) fn has_ended(&self) -> bool {
        self.done.load(Ordering::Relaxed)
    }

    /// Stops sampling for good, waiting out a sample in progress. Blocking (briefly).
    pub fn retire(&self) {
        let _sampling = crate::lock(&self.sampling);
        self.done.store(true, Ordering::Relaxed);
    }

    /// A new tree's first sample. Where membership comes from `/proc` (the fallback) only the main
    /// process is read: a tree this young has hardly forked, a full `/proc` scan per job was a large part
    /// of the fallback's cost, and the next full round finds the rest.
    pub fn first_sample(&self, snap: &mut Option<Vec<(i32, ProcStat)>>) {
        if self.tree.membership_dir().is_some() {
            return self.sample(snap);
        }
        let pid = self.tree.pid;
        let main = procfs::stat(pid)
            .filter(|s| s.start_ticks == self.tree.start_ticks && !s.is_zombie())
            .map(|s| vec![(pid, s)])
            .unwrap_or_default();
        self.sample(&mut Some(main));
    }

    /// One sample. `snap` is a lazily taken `/proc` snapshot shared by all trees of this round.
    pub fn sample(&self, snap: &mut Option<Vec<(i32, ProcStat)>>) {
        let _sampling = crate::lock(&self.sampling);
        if self.done.load(Ordering::Relaxed) {
            return;
        }
        let needs_proc = self.tree.membership_dir().is_none();
        if needs_proc && snap.is_none() {
            *snap = Some(procfs::snapshot());
        }
        let members: Vec<i32> = match self.tree.membership_dir() {
            Some(dir) => cgroup::procs(dir),
            None => {
                let found = self.tree.group_members(snap.as_deref().unwrap_or(&[]));
                let pids = found.iter().map(|(p, _)| *p).collect();
                *crate::lock(&self.tree.known) = found;
                pids
            }
        };
        let n = members.len() as u32;
        self.processes.store(n, Ordering::Relaxed);
        self.peak_processes.fetch_max(n, Ordering::Relaxed);
        if n == 0 {
            // Keep the last memory figures from before the tree went away.
            return;
        }
        let (current, in_use) = match self.memory_dir() {
            Some((dir, current, _)) => {
                self.read_kernel_peak();
                let current = dir.read_u64(current).map(|c| self.job_memory(c));
                let cache = self
                    .tree
                    .memory_cgroup(self.cgroup_memory)
                    .and_then(|(dir, api)| cgroup::reclaimable_cache(dir, api));
                (
                    current,
                    current.map(|c| c.saturating_sub(cache.unwrap_or(0))),
                )
            }
            None => {
                let rss = members
                    .iter()
                    .filter_map(|&p| procfs::resident_bytes(p))
                    .sum();
                (Some(rss), Some(rss))
            }
        };
        self.check_memory(current);
        if let Some(in_use) = in_use {
            self.mem_in_use.store(in_use, Ordering::Relaxed);
        }
        if let Some(cur) = current {
            self.mem_current.store(cur, Ordering::Relaxed);
            let _ =
                self.mem_start
                    .compare_exchange(NONE, cur, Ordering::Relaxed, Ordering::Relaxed);
            let peak = self.mem_peak_sampled.load(Ordering::Relaxed);
            if peak == NONE || cur > peak {
                self.mem_peak_sampled.store(cur, Ordering::Relaxed);
            }
        }
        let cpu = match &self.tree.v2 {
            Some(v2) => cgroup::job_cpu_usec(v2).map(|c| self.job_cpu(c)),
            None => {
                // Live processes only: the final figure comes from wait4's rusage.
                let tick_usec = 1_000_000 / procfs::ticks_per_second();
                let (mut u, mut s) = (0, 0);
                for &pid in &members {
                    let st = snap
                        .as_ref()
                        .and_then(|v| v.iter().find(|(p, _)| *p == pid).map(|(_, s)| *s));
                    if let Some(st) = st.or_else(|| procfs::stat(pid)) {
                        u += st.utime * tick_usec;
                        s += st.stime * tick_usec;
                    }
                }
                Some((u, s))
            }
        };
        if let Some((u, s)) = cpu {
            self.cpu_user_usec.store(u, Ordering::Relaxed);
            self.cpu_system_usec.store(s, Ordering::Relaxed);
        }
    }

    /// This job's part of a `cpu.stat` reading (user, system) of its v2 cgroup.
    pub fn job_cpu(&self, (user, system): (u64, u64)) -> (u64, u64) {
        (
            user.saturating_sub(self.base.cpu_user_usec),
            system.saturating_sub(self.base.cpu_system_usec),
        )
    }

    pub fn live(&self) -> LiveUsage {
        let sampled_peak = opt(self.mem_peak_sampled.load(Ordering::Relaxed));
        let (memory_peak, memory_source) = if self.cgroup_memory {
            (
                opt(self.mem_peak_kernel.load(Ordering::Relaxed)).or(sampled_peak),
                Some(MemorySource::CgroupPeak),
            )
        } else {
            (sampled_peak, Some(MemorySource::SampledRss))
        };
        LiveUsage {
            memory_current: opt(self.mem_current.load(Ordering::Relaxed)),
            memory_in_use: opt(self.mem_in_use.load(Ordering::Relaxed)),
            memory_peak,
            memory_source,
            cpu_user_secs: opt(self.cpu_user_usec.load(Ordering::Relaxed)).map(|u| u as f64 / 1e6),
            cpu_system_secs: opt(self.cpu_system_usec.load(Ordering::Relaxed))
                .map(|u| u as f64 / 1e6),
            processes: self.processes.load(Ordering::Relaxed),
            peak_processes: self.peak_processes.load(Ordering::Relaxed),
            progress: self.progress.as_ref().map(|p| p.snapshot()),
        }
    }
}

/// What `wait4` reported about the main process.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Reaped {
    pub(super) status: ExitStatus,
    pub(super) user_secs: f64,
    pub(super) system_secs: f64,
    pub(super) max_rss_bytes: u64,
    pub(super) at: Instant,
}

impl Reaped {
    /// A child reaped by someone else: its status is lost.
    pub fn unknown() -> Reaped {
        Reaped {
            status: ExitStatus::Code(-1),
            user_secs: 0.0,
            system_secs: 0.0,
            max_rss_bytes: 0,
            at: Instant::now(),
        }
    }
}

/// The daemon's own RSS high-water mark (`getrusage(RUSAGE_SELF)`).
pub(super) fn daemon_max_rss_bytes() -> u64 {
    // SAFETY: rusage is plain old data; getrusage fills it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid, writable rusage.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return u64::MAX;
    }
    ru.ru_maxrss.max(0) as u64 * 1024
}

fn tv_secs(tv: libc::timeval) -> f64 {
    tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6
}

/// `wait4(pid, WNOHANG)`: `Ok(None)` while the process runs.
pub(crate) fn try_wait4(pid: i32) -> std::io::Result<Option<Reaped>> {
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is plain old data; wait4 fills it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `status` and `ru` are valid and writable; `pid` is our own child.
    let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut ru) };
    if r == 0 {
        return Ok(None);
    }
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let status = if libc::WIFEXITED(status) {
        ExitStatus::Code(libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        ExitStatus::Signal(libc::WTERMSIG(status))
    } else {
        ExitStatus::Code(-1)
    };
    Ok(Some(Reaped {
        status,
        user_secs: tv_secs(ru.ru_utime),
        system_secs: tv_secs(ru.ru_stime),
        max_rss_bytes: ru.ru_maxrss.max(0) as u64 * 1024,
        at: Instant::now(),
    }))
}

impl TreeStats {
    pub fn live_start(&self) -> Option<u64> {
        opt(self.mem_start.load(Ordering::Relaxed))
    }
}

/// SIGKILLs the main process through its pidfd (immune to pid reuse). The thread waiting for it then
/// reaps it and kills whatever is left of the tree.
pub(crate) fn kill_main(stats: &TreeStats, pidfd: Option<&OwnedFd>) {
    if let Some(fd) = pidfd {
        // SAFETY: plain syscall on an fd we own.
        unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                fd.as_raw_fd(),
                libc::SIGKILL,
                0usize,
                0u32,
            )
        };
    } else if stats.exit().is_none() {
        // No pidfd (kernels before 5.3): the group, while the leader is unreaped (which keeps its id).
        if let Some(group) = rustix::process::Pid::from_raw(stats.tree.pid) {
            // ESRCH: the group is gone already.
            let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slots::{LaunchTicket, Slots};
    use aura_model::Backend;

    /// Stats of a fallback tree (no cgroups) with `limit`, holding a real slot permit.
    fn stats(limit: Option<u64>, base: Baseline) -> TreeStats {
        let slots: Arc<Slots<()>> = Arc::default();
        let ticket = LaunchTicket::new();
        slots.register(&ticket, || ());
        let (_, slot) = slots.offer(&ticket, ()).expect("a free slot");
        let tree = TreeRef {
            backend: Backend::ProcessGroup,
            pid: 1,
            start_ticks: 0,
            v2: None,
            v1: None,
            known: Arc::default(),
            marker: None,
        };
        TreeStats::new(tree, false, limit, base, None, slot.expect("a slot"), None)
    }

    #[test]
    fn the_watchdog_flags_the_first_sample_over_the_limit_once() {
        let s = stats(Some(100), Baseline::default());
        s.check_memory(Some(100));
        assert_eq!(
            s.memory_verdict(),
            (0, false),
            "at the limit is not over it"
        );
        s.check_memory(Some(150));
        s.check_memory(Some(900));
        assert_eq!(s.memory_verdict(), (0, true));
        assert_eq!(
            *crate::lock(&s.violation),
            Some(MemoryViolation::LimitExceeded {
                limit_bytes: 100,
                current_bytes: Some(150),
                by: LimitEnforcer::Watchdog,
            }),
            "the first violation is kept"
        );
        let unlimited = stats(None, Baseline::default());
        unlimited.check_memory(Some(u64::MAX));
        assert_eq!(unlimited.memory_verdict(), (0, false));
    }

    #[test]
    fn figures_are_the_jobs_own_from_its_baseline() {
        let base = Baseline {
            cpu_user_usec: 1_000,
            cpu_system_usec: 500,
            memory: 4096,
        };
        let s = stats(None, base);
        assert_eq!(s.job_memory(10_000), 10_000 - 4096);
        assert_eq!(s.job_memory(100), 0, "never below zero");
        assert_eq!(s.job_cpu((3_000, 400)), (2_000, 0));
        let live = s.live();
        assert_eq!(live.memory_source, Some(MemorySource::SampledRss));
        assert_eq!(
            (live.memory_current, live.memory_peak, live.processes),
            (None, None, 0)
        );
    }

    #[test]
    fn a_child_reaped_elsewhere_has_an_unknown_status() {
        assert_eq!(Reaped::unknown().status, ExitStatus::Code(-1));
        assert!(try_wait4(i32::MAX).is_err(), "not our child");
    }
}

//! One job's process tree: how to find its members, signal and kill them (`TreeRef`, blocking), its
//! sampled statistics and its ending (`TreeStats`, shared with the watcher thread, which samples it, and
//! concluded by the thread that reaps the main process — its launcher thread, or the watcher for a tree
//! without a pidfd), and the public RAII `RunningTree` that waits, stops and finishes it.

use crate::cgroup::{self, CgroupDir, ControlFile, MemoryApi, OomCounters};
use crate::pool::{Baseline, CgroupPool, JobCgroups};
use crate::procfs::{self, ProcStat};
use crate::slots::SlotPermit;
use crate::subreaper;
use crate::workdirs::WorkDirs;
use crate::{Inner, LiveUsage};
use aura_logs::CaptureReport;
use aura_model::{
    Accounting, Backend, ByteSize, ExitStatus, MemorySource, StopSequence, StopSignal, TreeHandle,
};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Everything needed to find, signal and kill one job's processes. Cheap to clone; every method
/// blocks (cgroupfs, /proc), so call it from a blocking context.
#[derive(Clone, Debug)]
pub(crate) struct TreeRef {
    pub backend: Backend,
    /// The main process, also the process group id.
    pub pid: i32,
    pub start_ticks: u64,
    pub v2: Option<Arc<CgroupDir>>,
    pub v1: Option<Arc<CgroupDir>>,
    /// Process-group backend only: members and descendants seen so far with their start times, so that
    /// a process that left the group (setsid) while its parent was still alive is still reached.
    pub known: Arc<Mutex<Vec<(i32, u64)>>>,
    /// The value of `AURA_TREE` its processes carry (`subreaper`); `None` for what recovery rebuilds.
    pub marker: Option<Arc<str>>,
}

impl TreeRef {
    /// The cgroup holding the job's memory controller (v1 where the host has it, else v2), when the
    /// backend has one (`cgroup_memory`).
    pub fn memory_cgroup(&self, cgroup_memory: bool) -> Option<(&CgroupDir, MemoryApi)> {
        if !cgroup_memory {
            return None;
        }
        match (&self.v1, &self.v2) {
            (Some(v1), _) => Some((v1, MemoryApi::V1)),
            (None, Some(v2)) => Some((v2, MemoryApi::V2)),
            _ => None,
        }
    }

    /// The cgroup whose `cgroup.procs` defines membership (v2 when there is one).
    fn membership_dir(&self) -> Option<&Path> {
        self.v2
            .as_deref()
            .or(self.v1.as_deref())
            .map(CgroupDir::path)
    }

    pub fn dirs(&self) -> Vec<PathBuf> {
        self.v2
            .iter()
            .chain(self.v1.iter())
            .map(|d| d.path().to_path_buf())
            .collect()
    }

    /// Process-group backend: the live processes of the group, of the main process (while it is alive and
    /// still the same process), of the members seen before that are still the same processes, and of
    /// the adopted children carrying the tree's marker — each with all its descendants (see `subreaper`
    /// for the rule and its limits).
    pub fn group_members(&self, snap: &[(i32, ProcStat)]) -> Vec<(i32, u64)> {
        let starts: std::collections::HashMap<i32, u64> =
            snap.iter().map(|(p, s)| (*p, s.start_ticks)).collect();
        let same = |&(pid, ticks): &(i32, u64)| starts.get(&pid) == Some(&ticks);
        let mut roots: Vec<i32> = snap
            .iter()
            .filter(|(_, s)| s.pgrp == self.pid)
            .map(|(p, _)| *p)
            .collect();
        if same(&(self.pid, self.start_ticks)) {
            roots.push(self.pid);
        }
        let known = crate::lock(&self.known).clone();
        roots.extend(known.iter().filter(|m| same(m)).map(|(p, _)| *p));
        if let Some(marker) = &self.marker {
            let adopted = subreaper::adopted_by(marker, self.start_ticks);
            roots.extend(adopted.iter().filter(|m| same(m)).map(|(p, _)| *p));
        }
        procfs::subtrees(snap, roots)
    }

    /// Sends `sig` to every process of the tree.
    pub fn signal(&self, sig: i32) {
        match self.membership_dir() {
            Some(dir) => {
                cgroup::signal_members(dir, sig);
            }
            None => {
                let members = self.group_members(&procfs::snapshot());
                // SAFETY: plain syscalls. The group id stays reserved while any member lives.
                unsafe { libc::killpg(self.pid, sig) };
                for (pid, _) in members {
                    // SAFETY: plain syscall; each member was seen with its start time just now.
                    unsafe { libc::kill(pid, sig) };
                }
            }
        }
    }

    /// SIGKILLs every process of the tree (one round; see `kill_and_wait`).
    pub fn kill(&self) {
        match (&self.v2, &self.v1) {
            (Some(v2), _) => {
                let v2 = v2.path();
                if let Err(e) = cgroup::v2_kill(v2) {
                    if e.kind() != std::io::ErrorKind::NotFound {
                        tracing::warn!(cgroup = %v2.display(), error = %e, "cgroup.kill failed; signalling members");
                        cgroup::signal_members(v2, libc::SIGKILL);
                    }
                }
            }
            (None, Some(v1)) => {
                cgroup::signal_members(v1.path(), libc::SIGKILL);
            }
            (None, None) => self.signal(libc::SIGKILL),
        }
    }

    pub fn is_empty(&self) -> bool {
        match (&self.v2, &self.v1) {
            (Some(v2), _) => !cgroup::v2_populated(v2),
            (None, Some(v1)) => cgroup::procs(v1.path()).is_empty(),
            (None, None) => {
                // Without cgroups: no process left in the group and none of the members seen outside it
                // still alive is decided without a scan of /proc (the common case once a job is over).
                // SAFETY: plain syscall; signal 0 only checks for existence.
                let group_gone = unsafe { libc::killpg(self.pid, 0) } != 0
                    && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
                let known_gone = || {
                    let known = crate::lock(&self.known).clone();
                    known.iter().all(|&(pid, ticks)| {
                        procfs::stat(pid).map_or(true, |s| s.start_ticks != ticks)
                    })
                };
                // Adopted orphans of the tree: one read of the daemon's adopted children (none, usually).
                let adopted = || {
                    self.marker
                        .as_deref()
                        .is_some_and(|m| subreaper::has_adopted(m, self.start_ticks))
                };
                if group_gone && known_gone() && !adopted() {
                    return true;
                }
                self.group_members(&procfs::snapshot()).is_empty()
            }
        }
    }

    /// Kills until the tree is empty (re-killing catches processes forked meanwhile), at most `bound`.
    pub fn kill_and_wait(&self, bound: Duration) -> bool {
        let deadline = Instant::now() + bound;
        loop {
            // The common case — a job whose main process exited and left nothing behind — costs one read.
            if self.is_empty() {
                return true;
            }
            self.kill();
            std::thread::sleep(Duration::from_millis(2));
            if self.is_empty() {
                return true;
            }
            if Instant::now() >= deadline {
                tracing::warn!(pid = self.pid, backend = %self.backend, "process tree not empty after kill wait");
                return false;
            }
            std::thread::sleep(Duration::from_millis(8));
        }
    }

    /// Hands the job cgroups to the pool: reused if `reusable` (every process known gone, no per-job
    /// settings or sticky counters) and clean, else removed. `v1_charge` and `cpu_usec` are what the
    /// caller (`TreeStats::settle`) has just read with the OOM counter: the charge decides whether a v1
    /// cgroup is clean (unread means not), and both are the next job's baseline, read no second time.
    pub fn release_cgroups(
        &self,
        pool: &CgroupPool,
        reusable: bool,
        v1_charge: Option<u64>,
        cpu_usec: Option<(u64, u64)>,
    ) {
        if self.v2.is_none() && self.v1.is_none() {
            return;
        }
        let mut cgroups = self.cgroups();
        if let (Some(charge), Some((user, system))) = (
            v1_charge.or(self.v1.is_none().then_some(0)),
            cpu_usec.or(self.v2.is_none().then_some((0, 0))),
        ) {
            cgroups.counters = Some(Baseline {
                cpu_user_usec: user,
                cpu_system_usec: system,
                memory: charge,
            });
        }
        pool.release(cgroups, reusable, v1_charge);
    }

    /// Removes the job cgroups; returns how many were removed.
    pub fn remove_dirs(self) -> u32 {
        JobCgroups {
            v2: self.v2,
            v1: self.v1,
            counters: None,
        }
        .remove()
    }

    /// The job's cgroup directories as the pool handles them.
    fn cgroups(&self) -> JobCgroups {
        JobCgroups {
            v2: self.v2.clone(),
            v1: self.v1.clone(),
            counters: None,
        }
    }
}

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
        limit_bytes: u64,
        current_bytes: Option<u64>,
        by: LimitEnforcer,
    },
    /// The kernel's OOM killer killed part of the tree (the host ran out of memory): like systemd's
    /// `OOMPolicy=stop`, the rest of the tree goes too, since a job with a killed part is broken.
    OomKilled { kills: u64 },
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
    /// Held by the watcher while it samples: `retire` takes it, so that no sample of this job is still
    /// running once its cgroups may go to the next job.
    sampling: Mutex<()>,
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
/// figures, handing its cgroups and working directory back, waking its owner. Runs when dropped.
pub(crate) struct Settling<F: FnOnce(&Arc<TreeStats>)>(Option<(Arc<TreeStats>, Arc<Ending>, F)>);

impl<F: FnOnce(&Arc<TreeStats>)> Drop for Settling<F> {
    fn drop(&mut self) {
        if let Some((stats, ending, settled)) = self.0.take() {
            stats.settle(&ending, true);
            settled(&stats);
        }
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
    ) -> TreeStats {
        TreeStats {
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
    /// everything — is returned for the caller to run ([`Settling`]; its drop runs it), so that the
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
        let reusable = empty && self.leaves_cgroups_reusable();
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

    fn finals(&self) -> Option<Finals> {
        *crate::lock(&self.finals)
    }

    /// Resolves once `ready` returns something (set by the reaping side). Cancel-safe.
    async fn ended_with<T>(&self, ready: impl Fn(&Self) -> Option<T>) -> T {
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
        }
    }
}

/// What `wait4` reported about the main process.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Reaped {
    status: ExitStatus,
    user_secs: f64,
    system_secs: f64,
    max_rss_bytes: u64,
    at: Instant,
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
fn daemon_max_rss_bytes() -> u64 {
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

/// Reads a running tree's latest sampled usage without owning the tree. Holding one after the tree is
/// finished is harmless: it keeps showing the last sample.
#[derive(Clone)]
pub struct UsageProbe(Arc<TreeStats>);

impl UsageProbe {
    pub fn live(&self) -> LiveUsage {
        self.0.live()
    }

    /// Resolves when the watcher finds the tree over its memory limit or hit by the kernel's OOM killer;
    /// whoever owns the tree then kills it ([`RunningTree::kill`]). Never resolves for a healthy tree.
    /// Cancel-safe.
    pub async fn memory_violation(&self) -> MemoryViolation {
        self.0.violation().await
    }
}

/// A job's live process tree. Dropping it without [`finish`](RunningTree::finish) SIGKILLs the whole
/// tree; the launcher thread waiting for it reaps it and cleans up.
pub struct RunningTree {
    pub(crate) sup: Arc<Inner>,
    pub(crate) handle: TreeHandle,
    pub(crate) stats: Arc<TreeStats>,
    /// The main process's pidfd (shared with the launcher thread that waits on it): signals through it never
    /// reach a reused pid.
    pub(crate) pidfd: Option<Arc<OwnedFd>>,
    pub(crate) started: Instant,
    started_at: std::time::SystemTime,
    finished: bool,
}

impl std::fmt::Debug for RunningTree {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningTree")
            .field("handle", &self.handle)
            .field("exit", &self.stats.exit().map(|r| r.status))
            .finish()
    }
}

impl RunningTree {
    pub(crate) fn new(
        sup: Arc<Inner>,
        handle: TreeHandle,
        stats: Arc<TreeStats>,
        pidfd: Option<Arc<OwnedFd>>,
        started: Instant,
        started_at: std::time::SystemTime,
    ) -> RunningTree {
        RunningTree {
            sup,
            handle,
            stats,
            pidfd,
            started,
            started_at,
            finished: false,
        }
    }

    /// When the main process was started (taken on the launcher thread right before the clone, so that
    /// start times order the starts even when their owners hear of them late).
    pub fn started_at(&self) -> std::time::SystemTime {
        self.started_at
    }

    /// Backend, pid (== pgid), start time and cgroup dirs: store it to recover after a crash.
    pub fn handle(&self) -> &TreeHandle {
        &self.handle
    }

    /// The latest sampler snapshot (no I/O).
    pub fn live(&self) -> LiveUsage {
        self.stats.live()
    }

    /// SIGKILLs every process of the tree at once, without a stop sequence (memory violations: the
    /// tree has no memory left to shut down gracefully). Returns the main process's status.
    pub async fn kill(&mut self) -> ExitStatus {
        if let Some(s) = self.exit_status() {
            return s;
        }
        self.blocking(|t| t.kill()).await;
        self.wait().await
    }

    /// A cheap, cloneable reader of this tree's live usage, for whoever shows it while the tree runs.
    pub fn probe(&self) -> UsageProbe {
        UsageProbe(self.stats.clone())
    }

    /// The main process's status if it has been reaped already.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        self.stats.exit().map(|r| r.status)
    }

    /// Resolves when the main process has exited (its launcher thread reaps it). Cancel-safe; afterwards
    /// it returns the same status immediately.
    pub async fn wait(&mut self) -> ExitStatus {
        self.stats.ended_with(|s| s.exit().map(|r| r.status)).await
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(TreeRef) -> T + Send + 'static,
    ) -> Option<T> {
        let tree = self.stats.tree.clone();
        self.sup.runtime.spawn_blocking(move || f(tree)).await.ok()
    }

    /// Runs the stop sequence: each step signals every process of the tree, then waits up to its grace
    /// for the main process; if it is still alive after all steps, the whole tree gets SIGKILL. Returns
    /// the exit status and the signals actually sent (SIGKILL included if it was needed). If the main
    /// process had already exited, nothing is sent. Call [`finish`](RunningTree::finish) afterwards.
    pub async fn stop(&mut self, seq: &StopSequence) -> (ExitStatus, Vec<StopSignal>) {
        self.stop_or_kill(seq, std::future::pending()).await
    }

    /// `stop`, cut short by `cut`: when it resolves, whatever grace is left is skipped and the tree is
    /// killed (a daemon's shutdown deadline, a second signal).
    pub async fn stop_or_kill(
        &mut self,
        seq: &StopSequence,
        cut: impl std::future::Future<Output = ()>,
    ) -> (ExitStatus, Vec<StopSignal>) {
        let mut sent = Vec::new();
        if let Some(s) = self.exit_status() {
            return (s, sent);
        }
        tokio::pin!(cut);
        for step in &seq.0 {
            let sig = step.signal.number();
            self.blocking(move |t| t.signal(sig)).await;
            sent.push(step.signal);
            tokio::select! {
                waited = tokio::time::timeout(step.grace, self.wait()) => {
                    if let Ok(s) = waited {
                        return (s, sent);
                    }
                }
                () = &mut cut => break,
            }
        }
        self.blocking(|t| t.kill()).await;
        sent.push(StopSignal::Kill);
        (self.wait().await, sent)
    }

    /// After the main process exited: waits until the tree is concluded (whatever remained
    /// of it killed — nothing outlives the job's main process —, the final counters read, the job
    /// cgroups handed back to the pool), waits (at most ~1 s) for log capture to reach EOF and returns
    /// the accounting. If the main process is still running, the tree is SIGKILLed first.
    pub async fn finish(mut self) -> Accounting {
        if self.exit_status().is_none() {
            self.blocking(|t| t.kill()).await;
        }
        let finals = self.stats.ended_with(TreeStats::finals).await;
        let reaped = self.stats.exit().unwrap_or_else(Reaped::unknown);

        // Log capture ends at EOF once every holder of the pipes is dead (usually with the exit itself);
        // where a process out of the backend's reach keeps a pipe open, the watcher gives the capture up
        // shortly after the tree settled.
        let (truncated, dropped) = self.stats.ended_with(TreeStats::logs_finished).await;
        self.finished = true;

        let live = self.stats.live();
        let (memory_peak, memory_source) = if self.stats.cgroup_memory {
            (live.memory_peak, MemorySource::CgroupPeak)
        } else {
            // wait4's ru_maxrss covers the main process and the children it reaped: a floor under the
            // sampled sum that catches spikes between samples — where it is the job's own. The child
            // ran in the daemon's memory until its exec (a vfork-style start), and exec folds the
            // high-water mark of the memory it leaves into the child's: a figure at or below the
            // daemon's own high-water mark may be the daemon's, and is no floor.
            let own = reaped.max_rss_bytes;
            let floor = if own > daemon_max_rss_bytes() { own } else { 0 };
            let peak = live.memory_peak.unwrap_or(0).max(floor);
            ((peak > 0).then_some(peak), MemorySource::SampledRss)
        };
        let (cpu_user_secs, cpu_system_secs) = match finals.cpu_usec {
            Some((u, s)) => (u as f64 / 1e6, s as f64 / 1e6),
            None => (reaped.user_secs, reaped.system_secs),
        };
        let (oom_kills, memory_limit_exceeded) = self.stats.memory_verdict();
        Accounting {
            memory_limit: self.stats.memory_limit.map(ByteSize),
            oom_kills,
            memory_limit_exceeded,
            memory_start: self.stats.live_start().map(ByteSize),
            memory_peak: memory_peak.map(ByteSize),
            memory_end: live.memory_in_use.map(ByteSize),
            page_cache_end: finals
                .memory_end
                .filter(|_| self.stats.cgroup_memory)
                .map(ByteSize),
            memory_source: Some(memory_source),
            cpu_user_secs: Some(cpu_user_secs),
            cpu_system_secs: Some(cpu_system_secs),
            wall_secs: Some(reaped.at.duration_since(self.started).as_secs_f64()),
            peak_processes: Some(live.peak_processes.max(1)),
            log_truncated_bytes: truncated,
            log_dropped_bytes: dropped,
        }
    }
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
        // SAFETY: plain syscall.
        unsafe { libc::killpg(stats.tree.pid, libc::SIGKILL) };
    }
}

impl Drop for RunningTree {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        // Its launcher thread reaps it and kills the rest of the tree; the watcher ends its captures.
        kill_main(&self.stats, self.pidfd.as_deref());
    }
}

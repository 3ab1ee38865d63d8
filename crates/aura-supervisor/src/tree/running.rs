//! The public handles of a running tree: `RunningTree` (RAII: wait, stop, kill, pause, resume, finish;
//! dropping it kills the tree) and `UsageProbe` (its latest sample, for whoever shows it).

use super::stats::{daemon_max_rss_bytes, kill_main, MemoryViolation, Reaped, TreeStats};
use crate::{Inner, LiveUsage};
use aura_model::{
    Accounting, ByteSize, ExitStatus, MemorySource, Progress, StopSequence, StopSignal, TreeHandle,
};
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Instant;

/// Reads a running tree's latest sampled usage without owning the tree. Holding one after the tree is
/// finished is harmless: it keeps showing the last sample.
#[derive(Clone)]
pub struct UsageProbe(Arc<TreeStats>);

impl UsageProbe {
    /// The tree's latest sampled memory, CPU and process counts.
    pub fn live(&self) -> LiveUsage {
        self.0.live()
    }

    /// Resolves when the watcher finds the tree over its memory limit or hit by the kernel's OOM killer;
    /// whoever owns the tree then kills it ([`RunningTree::kill`]). Never resolves for a healthy tree.
    /// Cancel-safe.
    pub async fn memory_violation(&self) -> MemoryViolation {
        self.0.violation().await
    }

    /// The tree's progress now; `None` for a tree that does not report progress.
    pub fn progress(&self) -> Option<aura_model::Progress> {
        self.0.progress.as_ref().map(|p| p.snapshot())
    }

    /// Whether the tree reports progress (FFmpeg, the generic protocol).
    pub fn reports_progress(&self) -> bool {
        self.0.progress.is_some()
    }

    /// The media duration the job is expected to produce, learned after its start (its percent and ETA
    /// follow from it); nothing for a tree that does not report progress.
    pub fn set_expected(&self, expected: std::time::Duration) {
        if let Some(p) = &self.0.progress {
            p.set_expected(expected);
        }
    }

    /// The tree runs again after being paused for `paused`: the time it stood still counts toward no
    /// stall window. Nothing for a tree that does not report progress.
    pub fn resumed(&self, paused: std::time::Duration) {
        if let Some(p) = &self.0.progress {
            p.resumed(paused);
        }
    }

    /// Why the tree counts as stalled — no progress for `window`, or too slow that long — if it does.
    /// Never for a tree that does not report progress.
    pub fn stalled(&self, window: std::time::Duration) -> Option<String> {
        self.0.progress.as_ref()?.stalled(window)
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
        if let Some(p) = &self.stats.progress {
            p.stopping();
        }
        self.blocking(|s| s.tree.kill()).await;
        self.wait().await
    }

    /// Freezes every process of the tree and returns once it is frozen, with how long that took. The
    /// tree keeps its running slot, its memory and its open files; [`resume`](RunningTree::resume) lets
    /// it go on where it stopped. Already paused, or its main process already gone: nothing to do
    /// (`Duration::ZERO`, and [`is_paused`](RunningTree::is_paused) stays as it was).
    ///
    /// Where the tree has a cgroup v2 (the `cgroup_v2` and `hybrid` backends) the kernel's freezer does
    /// it (`cgroup.freeze`, confirmed by `cgroup.events`): every process, whatever it does, and invisible
    /// to the job. Elsewhere (`cgroup_v1`, `process_group`) every member gets SIGSTOP, in rounds until
    /// every member is seen stopped — weaker: a process that escaped the tree's lineage is not stopped,
    /// and the job sees it (a parent is told of its stopped children by SIGCHLD).
    ///
    /// Errors: a tree not frozen within 5 s (a process in uninterruptible sleep) is let run again and
    /// the error says so; a failed write to cgroupfs.
    pub async fn pause(&mut self) -> std::io::Result<std::time::Duration> {
        if self.exit_status().is_some() {
            return Ok(std::time::Duration::ZERO);
        }
        self.blocking(|s| s.pause())
            .await
            .unwrap_or_else(|| Err(std::io::Error::other("the runtime is shutting down")))
    }

    /// Lets a paused tree run again and returns once it does, with how long that took (`cgroup.freeze`
    /// back to 0, or SIGCONT to every member, see [`pause`](RunningTree::pause)). Not paused: nothing
    /// to do.
    pub async fn resume(&mut self) -> std::io::Result<std::time::Duration> {
        self.blocking(|s| s.resume())
            .await
            .unwrap_or_else(|| Err(std::io::Error::other("the runtime is shutting down")))
    }

    /// Whether the tree is paused now: [`pause`](RunningTree::pause)d, not resumed, not ended. No I/O.
    pub fn is_paused(&self) -> bool {
        self.stats.is_paused()
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

    /// Runs `f` on the blocking pool (cgroupfs, `/proc`, signals, short sleeps); `None` if the runtime
    /// is shutting down.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&TreeStats) -> T + Send + 'static,
    ) -> Option<T> {
        let stats = self.stats.clone();
        self.sup
            .runtime
            .spawn_blocking(move || f(&stats))
            .await
            .ok()
    }

    /// Runs the stop sequence: each step signals every process of the tree, then waits up to its grace
    /// for the main process; if it is still alive after all steps, the whole tree gets SIGKILL. Returns
    /// the exit status and the signals actually sent (SIGKILL included if it was needed). If the main
    /// process had already exited, nothing is sent. A paused tree is resumed first: a frozen or stopped
    /// process cannot handle its SIGTERM. Call [`finish`](RunningTree::finish) afterwards.
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
        if let Some(p) = &self.stats.progress {
            p.stopping();
        }
        if self.is_paused() {
            if let Err(e) = self.resume().await {
                // The last step's SIGKILL still ends it: fatal signals reach frozen and stopped processes.
                tracing::warn!(pid = self.handle.pid, error = %e, "could not resume a paused tree before stopping it");
            }
        }
        tokio::pin!(cut);
        for step in &seq.0 {
            let sig = step.signal.number();
            self.blocking(move |s| s.tree.signal(sig)).await;
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
        self.blocking(|s| s.tree.kill()).await;
        sent.push(StopSignal::Kill);
        (self.wait().await, sent)
    }

    /// After the main process exited: waits until the tree is concluded (whatever remained
    /// of it killed — nothing outlives the job's main process —, the final counters read, the job
    /// cgroups handed back to the pool), waits (at most ~1 s) for log capture to reach EOF and returns
    /// the accounting. If the main process is still running, the tree is SIGKILLed first.
    pub async fn finish(mut self) -> Accounting {
        if self.exit_status().is_none() {
            self.blocking(|s| s.tree.kill()).await;
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
            // How long it sat idle says nothing once it is over.
            progress: live.progress.map(|p| {
                Box::new(Progress {
                    idle_secs: None,
                    ..p
                })
            }),
        }
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

//! The launcher threads: the only place that forks, and where a job's main process is waited for. Dedicated
//! std threads, because `PR_SET_PDEATHSIG` fires when the *thread* that forked exits: a launcher thread
//! ends only with no child left. A launcher makes the job's working directory and cgroups, its pipes and
//! plan, and offers the start to the slots (`slots.rs`); the thread that starts it (`spawn`, a vfork-style
//! clone) opens the pidfd, hands the output pipes to the watcher thread, replies on a oneshot, then waits
//! for the main process, reaps it, concludes the tree and starts the launch parked behind it — the shape
//! of a plain spawn-and-wait loop, whose exit wake-up lands on the thread that waits, on the job's CPU.

use crate::cgroup::{self, CgroupDir, ControlFile};
use crate::host::Layout;
use crate::pool::{Baseline, CgroupPool, JobCgroups};
use crate::sandbox::JobSandbox;
use crate::slots::{NoSlot, SlotPermit};
use crate::spawn::{self, SpawnPlan};
use crate::subreaper;
use crate::tree::{kill_main, TreeRef, TreeStats};
use crate::watcher::{StdioEnds, Watcher};
use crate::workdirs::WorkDirs;
use crate::{procfs, LaunchError, LaunchRequest};
use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Instant, SystemTime};
use tokio::sync::oneshot;

pub(crate) struct Spawned {
    pub pidfd: Option<Arc<OwnedFd>>,
    /// The tree, already watched by the watcher thread (which also captures its output).
    pub stats: Arc<TreeStats>,
    pub started: Instant,
    /// The same moment on the wall clock, for the record.
    pub started_at: SystemTime,
}

pub(crate) enum LauncherMsg {
    Launch(
        Box<LaunchRequest>,
        oneshot::Sender<Result<Spawned, LaunchError>>,
    ),
    /// A parked launch may be able to go (a slot was freed, or the line changed, on a thread that does
    /// not start jobs).
    Ready,
    /// The queue is closed and empty: the thread ends.
    Stop,
}

/// A prepared launch parked until its slot is free: run with the slot (or why there is none) and the
/// running thread's workbench, on a thread that may start jobs. Returns the tree that thread must then
/// wait for and reap, if any.
pub(crate) type Parked =
    Box<dyn FnOnce(Result<SlotPermit, NoSlot>, &mut Workbench) -> Option<Reap> + Send>;

/// The running slots as the launchers use them.
pub(crate) type Slots = crate::slots::Slots<Parked>;

/// The launcher threads' queue. Each message wakes one waiting thread; a receiver behind a mutex (the
/// first version) woke a second one per message, the next in line for the lock.
#[derive(Default)]
pub(crate) struct Queue {
    state: std::sync::Mutex<QueueState>,
    arrived: std::sync::Condvar,
}

#[derive(Default)]
struct QueueState {
    launches: std::collections::VecDeque<LauncherMsg>,
    /// A `Ready` is pending (one is enough, however many changes asked for it).
    ready: bool,
    closed: bool,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("launcher::Queue")
    }
}

impl Queue {
    /// Queues a launch; gives it back once the queue is closed.
    pub fn launch(&self, msg: LauncherMsg) -> Result<(), LauncherMsg> {
        let mut state = crate::lock(&self.state);
        if state.closed {
            return Err(msg);
        }
        state.launches.push_back(msg);
        drop(state);
        self.arrived.notify_one();
        Ok(())
    }

    /// Asks one thread to run what is ready in the slots.
    pub fn ready(&self) {
        let mut state = crate::lock(&self.state);
        if state.ready {
            return;
        }
        state.ready = true;
        drop(state);
        self.arrived.notify_one();
    }

    /// Refuses later launches; the threads end once what is queued is done.
    pub fn close(&self) {
        crate::lock(&self.state).closed = true;
        self.arrived.notify_all();
    }

    /// The next message, or `None` after `timeout` without one.
    fn next(&self, timeout: std::time::Duration) -> Option<LauncherMsg> {
        let mut state = crate::lock(&self.state);
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(msg) = state.launches.pop_front() {
                return Some(msg);
            }
            if std::mem::take(&mut state.ready) {
                return Some(LauncherMsg::Ready);
            }
            if state.closed {
                return Some(LauncherMsg::Stop);
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return None;
            }
            state = self
                .arrived
                .wait_timeout(state, left)
                .map_or_else(|e| e.into_inner().0, |(state, _)| state);
        }
    }
}

/// A tree whose main process the thread that started it waits for and reaps.
pub(crate) struct Reap {
    key: u64,
    pidfd: Arc<OwnedFd>,
    stats: Arc<TreeStats>,
    /// The daemon's copies of the job's pipe write ends, kept until its main process exits: the exit
    /// then wakes no capture (no EOF yet), and this thread ends the captures itself
    /// (`Watcher::end_captures`).
    write_ends: StdioEnds,
}

/// What every launcher thread shares.
pub(crate) struct Launcher {
    pub layout: Layout,
    pub pool: Arc<CgroupPool>,
    pub workdirs: Arc<WorkDirs>,
    pub watcher: Watcher,
    pub slots: Arc<Slots>,
    pub oom_score_adj: i32,
    /// Every job's nice value (`SupervisorConfig::job_nice`).
    pub nice: i32,
    /// The instance's CPU cap, where `SupervisorConfig::cpu_cap` prepared one: every job joins its v1
    /// `cpu` cgroup, or starts `SCHED_IDLE` while capped. `None`: launches do nothing for it.
    pub cpu_cap: Option<Arc<crate::cpucap::CpuCap>>,
    pub log_cap: aura_logs::LogCap,
    pub log_min_free: u64,
    /// Who jobs run as, their limits, base environment, allowed programs and directories.
    pub sandbox: Arc<JobSandbox>,
    /// The base environment as `KEY=VALUE` C strings, built once; every job gets it, overlaid with its own.
    pub base_env: Vec<(String, CString)>,
    /// The limits every job starts with, less those it would inherit anyway (`spawn::rlimits`).
    pub rlimits: Vec<(spawn::RlimitResource, libc::rlimit)>,
    /// Set if `PR_SET_NO_NEW_PRIVS` could not be set on a launcher thread: children then set it themselves.
    pub threads_without_nnp: std::sync::atomic::AtomicBool,
    /// Every job's stdin, opened once (close-on-exec; the child's `dup2` onto fd 0 clears the flag).
    pub dev_null: OwnedFd,
    /// `SupervisorConfig::instance`, the first part of every tree's marker.
    pub instance: String,
    /// The supervisor's id in the `subreaper` register.
    pub owner: u64,
}

impl Launcher {
    /// Builds the base environment's C strings and opens `/dev/null` for the launchers to share.
    pub fn environment(sandbox: &JobSandbox) -> std::io::Result<(Vec<(String, CString)>, OwnedFd)> {
        let base_env = sandbox
            .base_env
            .iter()
            .filter_map(|(k, v)| {
                // Values from the daemon's environment or a TOML file: a NUL byte is refused by neither,
                // and such an entry could not be passed on.
                CString::new(format!("{k}={v}"))
                    .ok()
                    .map(|entry| (k.clone(), entry))
            })
            .collect();
        Ok((base_env, std::fs::File::open("/dev/null")?.into()))
    }
}

/// How long a launcher thread beyond the minimum stays idle before it ends.
const IDLE_EXIT: std::time::Duration = std::time::Duration::from_secs(10);

/// The vfork-style child's stack (see `spawn`): one per launcher thread, reused for every start.
const CHILD_STACK: usize = 64 * 1024;

/// What a launcher thread carries from one start to the next: the child's stack, and the owners' answers
/// it holds back until it has nothing left to do but wait.
pub(crate) struct Workbench {
    stack: Vec<u8>,
    replies: Vec<Reply>,
}

impl Workbench {
    pub fn new() -> Workbench {
        Workbench {
            stack: vec![0u8; CHILD_STACK],
            replies: Vec::new(),
        }
    }

    /// Sends the answers held back. Their owners share one async worker: answers sent together (with
    /// the end of the tree before them, see `Launchers::run_started`) wake it once, where one each
    /// woke it two or three times per job — a cross-CPU wake-up costs more than the answer itself.
    fn send_replies(&mut self) {
        for reply in self.replies.drain(..) {
            reply.send();
        }
    }
}

/// Every path of a launcher thread sends the answers it held back (`Launchers::run_started`); this only
/// covers a thread unwinding with answers still held, so that no owner waits forever.
impl Drop for Workbench {
    fn drop(&mut self) {
        self.send_replies();
    }
}

/// The owner's answer to a launch, held back on its launcher thread (`Workbench`).
struct Reply {
    job_id: aura_model::JobId,
    to: oneshot::Sender<Result<Spawned, LaunchError>>,
    result: Result<Spawned, LaunchError>,
}

impl Reply {
    fn send(self) {
        if let Err(Ok(orphan)) = self.to.send(self.result) {
            // The caller went away (its launch future was cancelled): nobody owns this tree. Its
            // launcher thread (or the watcher) reaps it; the rest is killed.
            tracing::warn!(job_id = %self.job_id, pid = orphan.stats.tree.pid, "launch abandoned by caller; killing the tree");
            kill_main(&orphan.stats, orphan.pidfd.as_deref());
        }
    }
}

/// The launcher threads: at least `minimum` of them free to prepare launches at any time, plus one per
/// tree they wait for.
pub(crate) struct Launchers {
    launcher: Arc<Launcher>,
    queue: Arc<Queue>,
    minimum: usize,
    /// Threads not waiting for a tree.
    free: std::sync::atomic::AtomicUsize,
    threads: std::sync::Mutex<Vec<std::thread::JoinHandle<()>>>,
}

impl std::fmt::Debug for Launchers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Launchers")
            .field("free", &self.free.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Launchers {
    /// Starts `minimum` launcher threads sharing one queue. With one, every job start waited for the one
    /// before it (a start is mostly the child's own setup and `exec`, during which the vfork-style clone
    /// holds its thread).
    pub fn start(
        minimum: usize,
        launcher: Launcher,
        queue: Arc<Queue>,
    ) -> std::io::Result<Arc<Launchers>> {
        let launchers = Arc::new(Launchers {
            launcher: Arc::new(launcher),
            queue,
            minimum: minimum.max(1),
            free: std::sync::atomic::AtomicUsize::new(0),
            threads: std::sync::Mutex::new(Vec::new()),
        });
        for _ in 0..launchers.minimum {
            launchers.add_thread()?;
        }
        Ok(launchers)
    }

    fn add_thread(self: &Arc<Self>) -> std::io::Result<()> {
        let this = self.clone();
        self.free.fetch_add(1, Ordering::SeqCst);
        let thread = std::thread::Builder::new()
            .name("aura-launcher".into())
            .spawn(move || this.run())
            .inspect_err(|_| {
                self.free.fetch_sub(1, Ordering::SeqCst);
            })?;
        let mut threads = crate::lock(&self.threads);
        threads.retain(|t| !t.is_finished());
        threads.push(thread);
        Ok(())
    }

    /// Every launcher thread's handle, for the supervisor's shutdown to join (taken out: threads that
    /// start later are taken by a later call).
    pub fn take_threads(&self) -> Vec<std::thread::JoinHandle<()>> {
        std::mem::take(&mut *crate::lock(&self.threads))
    }

    fn run(self: Arc<Self>) {
        crate::slots::starts_jobs_here();
        if self.launcher.sandbox.no_new_privs {
            // Set once on the thread every job is cloned from: children inherit it, so no job start pays
            // for the call. The thread itself never executes anything.
            if let Err(e) = rustix::thread::set_no_new_privs(true) {
                tracing::error!(error = %e, "PR_SET_NO_NEW_PRIVS failed; jobs set it themselves");
                self.launcher
                    .threads_without_nnp
                    .store(true, Ordering::SeqCst);
            }
        }
        let mut bench = Workbench::new();
        loop {
            match self.queue.next(IDLE_EXIT) {
                Some(LauncherMsg::Launch(req, reply)) => {
                    let reap = self.launcher.launch(req, reply, &mut bench);
                    self.run_started(reap, &mut bench);
                }
                Some(LauncherMsg::Ready) => {}
                Some(LauncherMsg::Stop) => break,
                None => {
                    // Beyond the minimum, a thread idle this long ends (it has no child left).
                    let free = &self.free;
                    let surplus = free
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                            (n > self.minimum).then(|| n - 1)
                        })
                        .is_ok();
                    if surplus {
                        return;
                    }
                }
            }
            // Whatever this thread's own work made ready (or what it was asked to look at).
            while let Some((start, slot)) = self.launcher.slots.take_next() {
                let reap = start(slot, &mut bench);
                self.run_started(reap, &mut bench);
            }
        }
    }

    /// Waits for the tree this thread started and reaps it — the job's exit wakes this thread directly,
    /// on the CPU it exited on, as a plain spawn-and-wait loop is woken —, then starts the launch
    /// parked behind it, and so on, the way a plain spawn-and-wait loop runs its jobs. The next launch
    /// starts as soon as the ended tree is known to be empty; its final figures are read while the new
    /// job runs, and then its owner and the new job's owner hear of both together.
    fn run_started(self: &Arc<Self>, mut reap: Option<Reap>, bench: &mut Workbench) {
        while let Some(Reap {
            key,
            pidfd,
            stats,
            write_ends,
        }) = reap.take()
        {
            // Someone must prepare the next launches meanwhile.
            if self.free.fetch_sub(1, Ordering::SeqCst) <= self.minimum {
                if let Err(e) = self.add_thread() {
                    tracing::error!(error = %e, "cannot start a launcher thread");
                }
            }
            if self.launcher.slots.ready() {
                self.queue.ready();
            }
            bench.send_replies();
            wait_exit(&pidfd);
            self.free.fetch_add(1, Ordering::SeqCst);
            self.launcher.watcher.end_captures(&stats, write_ends);
            let settling = self.launcher.watcher.exited(key);
            while let Some((start, slot)) = self.launcher.slots.take_next() {
                reap = start(slot, bench);
                if reap.is_some() {
                    break;
                }
            }
            if let Some(settling) = settling {
                settling.run();
            }
        }
        bench.send_replies();
    }
}

/// Blocks until the process behind `pidfd` has exited (without reaping it).
fn wait_exit(pidfd: &OwnedFd) {
    use rustix::process::{waitid, WaitId, WaitIdOptions};
    loop {
        match waitid(
            WaitId::PidFd(pidfd.as_fd()),
            WaitIdOptions::EXITED | WaitIdOptions::NOWAIT,
        ) {
            Err(rustix::io::Errno::INTR) => continue,
            Ok(_) => return,
            Err(e) => {
                // ECHILD: reaped elsewhere; the conclusion (`Watcher::exited`) reports the status unknown.
                tracing::error!(error = %e, "waiting for a job's main process failed");
                return;
            }
        }
    }
}

/// Everything a launch prepared before it waits for its slot. `SpawnPlan` holds pointers into its own
/// strings and into the launcher's copy of the daemon's environment, which every launcher thread keeps
/// alive; they are read only by the child of whichever thread starts it.
struct Prepared {
    staged: StagedCgroups,
    baseline: Baseline,
    plan: SpawnPlan,
    /// Read ends of the job's stdout, stderr and (where it reports progress) progress pipe.
    pipes: Vec<ReadEnd>,
    /// Our copies of the child's pipe write ends (kept until its main process exits, see `Reap`).
    stdio_ends: StdioEnds,
    /// This launch made the job's directory (`LaunchRequest::create_cwd`): if nothing starts, it goes.
    made_cwd: bool,
    /// The tree's `AURA_TREE` value (in `plan`'s environment).
    marker: Arc<str>,
}

impl Launcher {
    /// Prepares the launch and offers it to the slots: it starts on this thread if a slot is free and it
    /// is its turn (the tree to wait for is returned), else it is parked and starts on the launcher
    /// thread that frees its slot or makes it its turn.
    fn launch(
        self: &Arc<Self>,
        req: Box<LaunchRequest>,
        reply: oneshot::Sender<Result<Spawned, LaunchError>>,
        bench: &mut Workbench,
    ) -> Option<Reap> {
        let prepared = match self.prepare(&req) {
            Ok(prepared) => prepared,
            Err(e) => {
                // The launches behind it must not wait for it.
                self.slots.forget(&req.ticket);
                let _ = reply.send(Err(e));
                return None;
            }
        };
        let launcher = self.clone();
        let ticket = req.ticket.clone();
        let start: Parked = Box::new(move |slot, bench| {
            let slot = slot.map_err(|no| match no {
                NoSlot::Withdrawn => LaunchError::Withdrawn,
                NoSlot::Closed => LaunchError::ShuttingDown,
            });
            let made_cwd = prepared.made_cwd;
            let (result, reap) = match slot
                .and_then(|slot| launcher.start_tree(&req, prepared, slot, &mut bench.stack))
            {
                Ok((spawned, reap)) => (Ok(spawned), reap),
                Err(e) => {
                    if req.create_cwd {
                        // No tree will release the directory, and nothing ran in it.
                        launcher.workdirs.abandon(&req.cwd, made_cwd);
                    }
                    (Err(e), None)
                }
            };
            bench.replies.push(Reply {
                job_id: req.job_id,
                to: reply,
                result,
            });
            reap
        });
        let (start, slot) = self.slots.offer(&ticket, start)?;
        start(slot, bench)
    }

    /// The working directory, the cgroups, the pipes and the plan: everything but the clone.
    fn prepare(&self, req: &LaunchRequest) -> Result<Prepared, LaunchError> {
        // Taken back while it sat in the queue (a cancelled standby): prepare nothing for it.
        if req.ticket.withdrawn() {
            return Err(LaunchError::Withdrawn);
        }
        let workdirs = &self.workdirs;
        // A directory the job chose is checked again here: a symlink on its path may have changed since
        // submit. The job starts in the canonical path that was checked.
        let cwd = if req.create_cwd {
            req.cwd.clone()
        } else {
            self.sandbox.check_cwd(&req.cwd)?
        };
        let program = self
            .sandbox
            .check_program(&req.program, &req.env, Some(&cwd))?;
        // A spare renamed into place, else one mkdir in the common case (the parent exists); an attempt
        // after a retry reuses the directory.
        let made_cwd = req.create_cwd
            && workdirs
                .create(&req.cwd)
                .map_err(|source| LaunchError::Cwd {
                    path: req.cwd.clone(),
                    source,
                })?;
        let prepared =
            materialise_inputs(req).and_then(|()| self.prepare_tree(req, program, &cwd, made_cwd));
        if prepared.is_err() && req.create_cwd {
            workdirs.abandon(&req.cwd, made_cwd);
        }
        prepared
    }

    fn prepare_tree(
        &self,
        req: &LaunchRequest,
        program: PathBuf,
        cwd: &std::path::Path,
        made_cwd: bool,
    ) -> Result<Prepared, LaunchError> {
        let (staged, baseline, mut cgroup_procs) =
            StagedCgroups::acquire(&self.layout, &self.pool, req.memory_limit)?;
        // The CPU cap's v1 `cpu` cgroup holds every job of the instance (it outlives every launch).
        if let Some(fd) = self.cpu_cap.as_ref().and_then(|cap| cap.procs_fd()) {
            cgroup_procs.push(fd);
        }
        let marker = subreaper::marker(&self.instance, req.job_id, req.attempt);
        let (plan, pipes, stdio_ends) = prepare(req, self, &program, cwd, cgroup_procs, &marker)
            .map_err(|source| LaunchError::Spawn {
                program: req.program.clone(),
                source,
            })?;
        Ok(Prepared {
            staged,
            baseline,
            plan,
            pipes,
            stdio_ends,
            made_cwd,
            marker,
        })
    }

    /// The start itself, with the slot taken: the clone, the pidfd, the watcher's registration. Returns
    /// the owner's answer and the tree this thread then waits for (where it has a pidfd).
    fn start_tree(
        &self,
        req: &LaunchRequest,
        prepared: Prepared,
        slot: crate::slots::SlotPermit,
        stack: &mut [u8],
    ) -> Result<(Spawned, Option<Reap>), LaunchError> {
        let Launcher {
            layout,
            watcher,
            log_cap,
            log_min_free,
            owner,
            ..
        } = self;
        let Prepared {
            staged,
            baseline,
            mut plan,
            pipes,
            stdio_ends,
            made_cwd: _,
            marker,
        } = prepared;
        let (started, started_at) = (Instant::now(), SystemTime::now());
        let ticks_before = procfs::boot_ticks();
        // Live before the clone (from a lower bound of its start): an orphan of it is its own from its
        // first moment, never a leftover.
        subreaper::start(&marker, *owner, ticks_before.unwrap_or(0));
        // Read at the start, not when the launch was prepared: it may have waited long for its slot.
        plan.sched_idle = self.cpu_cap.as_ref().is_some_and(|cap| cap.idle_now());
        let pid = spawn::spawn(&plan, stack).map_err(|source| {
            subreaper::ended(&marker);
            LaunchError::Spawn {
                program: req.program.clone(),
                source,
            }
        })?;
        let ticks_after = procfs::boot_ticks();
        let (v2, v1) = staged.started();
        // The child is not reaped yet (only we reap it), so its pid and /proc entry are pinned.
        let pidfd = rustix::process::Pid::from_raw(pid)
            .and_then(|p| rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()).ok())
            .map(Arc::new);
        if pidfd.is_none() {
            tracing::warn!(pid, "pidfd_open failed; waiting by polling");
        }
        // The kernel stamps the child's start (in boot-clock ticks) inside clone, between the two readings:
        // when they agree, that is its start time, without reading /proc/PID/stat — which would wait for
        // the child's exec to finish.
        let start_ticks = match (ticks_before, ticks_after) {
            (Some(before), Some(after)) if before == after => before,
            _ => procfs::stat(pid).map_or(0, |s| s.start_ticks),
        };
        let tree = TreeRef {
            backend: layout.backend,
            pid,
            start_ticks,
            v2,
            v1,
            known: Arc::default(),
            marker: Some(marker),
        };
        let progress = req
            .progress
            .as_ref()
            .map(|setup| Arc::new(crate::tree::JobProgress::new(setup, started)));
        let stats = Arc::new(TreeStats::new(
            tree,
            layout.has_cgroup_memory(),
            req.memory_limit,
            baseline,
            req.create_cwd.then(|| req.cwd.clone()),
            slot,
            progress.clone(),
        ));
        stats.start_sample();
        // The progress pipe is parsed as it is captured, and so is stderr where it carries progress.
        let tap_format = |stream| {
            let setup = req.progress.as_ref()?;
            match stream {
                aura_logs::Stream::Progress => Some(setup.pipe_format()),
                aura_logs::Stream::Stderr => setup.stderr_format(),
                aura_logs::Stream::Stdout => None,
            }
        };
        let captures = pipes
        .into_iter()
        .filter_map(|(fd, stream)| {
            match aura_logs::Capture::new(fd, &req.log_dir, stream, *log_cap) {
                Ok(capture) => {
                    let capture = capture.with_min_free(*log_min_free);
                    Some(match (&progress, tap_format(stream)) {
                        (Some(progress), Some(format)) => capture.with_tap(progress.tap(format)),
                        _ => capture,
                    })
                }
                Err(e) => {
                    tracing::warn!(job_id = %req.job_id, error = %e, "cannot capture a job stream");
                    None
                }
            }
        })
        .collect();
        // This thread waits for the main process and reaps it (see `Launchers::run_started`); without a
        // pidfd the watcher polls it. Without a memory cgroup the start figures need a /proc sample: the
        // watcher takes it at once.
        let key = watcher.register(
            stats.clone(),
            pidfd.clone(),
            !layout.has_cgroup_memory(),
            captures,
        );
        // Registered, a change of the cap from now on reaches it; one made since the read above may not.
        if let Some(cap) = &self.cpu_cap {
            cap.correct_launch(&stats, plan.sched_idle);
        }
        // With a pidfd this thread waits for the main process and keeps our copies of its pipes' write
        // ends until then (see `Reap`); without one, they close now and the captures see EOF once the
        // job's own copies are closed.
        let reap = match pidfd.clone() {
            Some(pidfd) => Some(Reap {
                key,
                pidfd,
                stats: stats.clone(),
                write_ends: stdio_ends,
            }),
            None => {
                drop(stdio_ends);
                None
            }
        };
        let spawned = Spawned {
            pidfd,
            stats,
            started,
            started_at,
        };
        Ok((spawned, reap))
    }
}

/// A job's cgroups while its start is being prepared: empty, reused where the backend allows (see `pool`),
/// with the job's settings applied. Dropped before the job started (any error on the way), it removes
/// them rather than judge what a failed child left in them.
struct StagedCgroups(Option<JobCgroups>);

impl StagedCgroups {
    /// The cgroups, the job's baseline in them, and their kept-open `cgroup.procs` (O_CLOEXEC, std's
    /// default): the child joins its cgroups by writing "0" to each before exec, so no fork of the job
    /// can ever happen outside them.
    fn acquire(
        layout: &Layout,
        pool: &CgroupPool,
        memory_limit: Option<u64>,
    ) -> Result<(StagedCgroups, Baseline, Vec<RawFd>), LaunchError> {
        let staged = StagedCgroups(
            pool.acquire()
                .map_err(|(path, source)| LaunchError::Cgroup { path, source })?,
        );
        let Some(c) = &staged.0 else {
            return Ok((staged, Baseline::default(), Vec::new()));
        };
        // On an error `staged` is dropped, which removes the cgroups.
        let (baseline, procs) = Self::set_up(layout, c, memory_limit)?;
        Ok((staged, baseline, procs))
    }

    fn set_up(
        layout: &Layout,
        c: &JobCgroups,
        memory_limit: Option<u64>,
    ) -> Result<(Baseline, Vec<RawFd>), LaunchError> {
        let failed = |dir: &CgroupDir| {
            let path = dir.path().to_path_buf();
            move |source| LaunchError::Cgroup { path, source }
        };
        // Only the v1 memory cgroup is written to make it ready (see `JobCgroups::prepare`).
        if let Some(dir) = c.v1.as_ref().or(c.v2.as_ref()) {
            let baseline = c.prepare().map_err(failed(dir))?;
            let procs = c
                .dirs()
                .map(|dir| dir.raw_fd(ControlFile::Procs).map_err(failed(dir)))
                .collect::<Result<Vec<_>, _>>()?;
            // The limit is in place before the job exists: it cannot allocate a byte beyond it. Cgroups
            // of limited jobs never go back to the pool, so an acquired one never carries an earlier
            // job's limit.
            if let Some(limit) = memory_limit {
                let memory_cgroup = match (&c.v1, &c.v2) {
                    (Some(v1), _) => Some((v1, cgroup::MemoryApi::V1)),
                    (None, Some(v2)) if layout.has_cgroup_memory() => {
                        Some((v2, cgroup::MemoryApi::V2))
                    }
                    // No memory cgroup: the watcher's watchdog enforces it.
                    _ => None,
                };
                if let Some((dir, api)) = memory_cgroup {
                    cgroup::set_memory_limit(dir.path(), api, limit).map_err(failed(dir))?;
                }
            }
            return Ok((baseline, procs));
        }
        Ok((Baseline::default(), Vec::new()))
    }

    /// The job is inside: hand over the directories (v2, v1).
    fn started(mut self) -> (Option<Arc<CgroupDir>>, Option<Arc<CgroupDir>>) {
        match self.0.take() {
            Some(c) => (c.v2.clone(), c.v1.clone()),
            None => (None, None),
        }
    }
}

impl Drop for StagedCgroups {
    fn drop(&mut self) {
        if let Some(c) = self.0.take() {
            c.remove();
        }
    }
}

/// The daemon's end of one of a job's pipes, with the stream it carries.
type ReadEnd = (OwnedFd, aura_logs::Stream);

/// Builds the spawn plan (argv, environment, identity, limits, stdio pipes) before anything is started.
/// Returns the plan, the read ends of stdout, stderr and the progress pipe (where the job reports
/// progress), and the child's ends to close after the spawn.
fn prepare(
    req: &LaunchRequest,
    launcher: &Launcher,
    program: &std::path::Path,
    cwd: &std::path::Path,
    cgroup_procs: Vec<RawFd>,
    marker: &str,
) -> std::io::Result<(SpawnPlan, Vec<ReadEnd>, StdioEnds)> {
    use std::os::unix::ffi::OsStrExt;
    let cstring = |bytes: Vec<u8>| {
        CString::new(bytes).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "contains a NUL byte")
        })
    };
    let mut argv = Vec::with_capacity(req.args.len() + 1);
    argv.push(cstring(req.program.clone().into_bytes())?);
    for arg in &req.args {
        argv.push(cstring(arg.clone().into_bytes())?);
    }
    // The job's own variables — its identity, its spec's, its secrets (they win over the spec), the tree
    // marker (it wins over all: the subreaper attributes orphans by it) — then the base environment's
    // that none of those names (pointers into `base_env`, which outlives the plan).
    let identity = [
        ("AURA_JOB_ID", req.job_id.to_string()),
        ("AURA_JOB_ATTEMPT", req.attempt.to_string()),
    ];
    let mut own = std::collections::BTreeMap::new();
    for (k, v) in identity.iter().map(|(k, v)| (*k, v.as_str())).chain(
        req.env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .chain(req.secrets.iter().map(|(k, v)| (k.as_str(), v.expose()))),
    ) {
        own.insert(k, v);
    }
    own.insert(subreaper::MARKER_VAR, marker);
    let own_env = own
        .iter()
        .map(|(k, v)| cstring(format!("{k}={v}").into_bytes()))
        .collect::<std::io::Result<Vec<_>>>()?;
    let inherited = launcher
        .base_env
        .iter()
        .filter(|(k, _)| !own.contains_key(k.as_str()))
        .map(|(_, entry)| entry.as_ptr());
    let envp = own_env
        .iter()
        .map(|entry| entry.as_ptr())
        .chain(inherited)
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let sandbox = &launcher.sandbox;
    let (out_r, out_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
    let (err_r, err_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
    let progress = match &req.progress {
        Some(setup) if setup.has_pipe() => {
            Some(rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?)
        }
        _ => None,
    };
    let plan = SpawnPlan {
        path: cstring(program.as_os_str().as_bytes().to_vec())?,
        argv,
        _own_env: own_env,
        envp,
        cwd: cstring(cwd.as_os_str().as_bytes().to_vec())?,
        // Aura's own directory is entered before the job drops its privileges: it is the job's, but the
        // data dir's parents may be closed to the job's account. A directory the job chose is entered
        // with the job's own rights, like any path it opens.
        chdir_privileged: req.create_cwd,
        credentials: sandbox.identity.as_ref().map(|id| spawn::Credentials {
            uid: id.uid,
            gid: id.gid,
            groups: id.groups.iter().map(|&g| g as libc::gid_t).collect(),
        }),
        // The launcher threads have it, and every job inherits it from the one that clones it; only if
        // setting it on a thread failed does the child set it itself.
        no_new_privs: sandbox.no_new_privs && launcher.threads_without_nnp.load(Ordering::SeqCst),
        rlimits: launcher.rlimits.clone(),
        umask: sandbox.umask as libc::mode_t,
        stdin: launcher.dev_null.as_raw_fd(),
        stdout: out_w.as_raw_fd(),
        stderr: err_w.as_raw_fd(),
        progress: progress.as_ref().map(|(_, w)| w.as_raw_fd()),
        cgroup_procs,
        oom_score_adj: launcher.oom_score_adj.to_string().into_bytes(),
        nice: launcher.nice,
        // Set at the start (`start_tree`).
        sched_idle: false,
        parent_pid: rustix::process::getpid().as_raw_nonzero().get(),
    };
    let mut pipes = vec![
        (out_r, aura_logs::Stream::Stdout),
        (err_r, aura_logs::Stream::Stderr),
    ];
    let progress_w = progress.map(|(r, w)| {
        pipes.push((r, aura_logs::Stream::Progress));
        w
    });
    Ok((plan, pipes, StdioEnds::new(out_w, err_w, progress_w)))
}

/// Puts each input into the job's created directory: a reflink (`FICLONE`: its own copy-on-write
/// blocks, so a job writing to it never changes the upload) where the file system has one, else a hard
/// link (the upload is read-only, `0444`). An entry already there from an earlier attempt is kept if it
/// is the same file; anything else in its way fails the launch rather than be replaced.
fn materialise_inputs(req: &LaunchRequest) -> Result<(), LaunchError> {
    use rustix::fs::{AtFlags, Mode, OFlags, CWD};
    for (source, name) in &req.inputs {
        let target = req.cwd.join(name);
        let fail = |e: std::io::Error| LaunchError::Input {
            name: name.clone(),
            source_path: source.clone(),
            source: e,
        };
        let from = rustix::fs::open(
            source,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| fail(e.into()))?;
        let from_stat = rustix::fs::fstat(&from).map_err(|e| fail(e.into()))?;
        match rustix::fs::statat(CWD, &target, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(there) if there.st_dev == from_stat.st_dev && there.st_ino == from_stat.st_ino => {
                continue
            }
            Ok(_) => {
                return Err(fail(std::io::Error::from(
                    std::io::ErrorKind::AlreadyExists,
                )))
            }
            Err(rustix::io::Errno::NOENT) => {}
            Err(e) => return Err(fail(e.into())),
        }
        let to = rustix::fs::open(
            &target,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o444),
        );
        let cloned = match to {
            Ok(to) => match rustix::fs::ioctl_ficlone(&to, &from) {
                Ok(()) => true,
                Err(_) => {
                    drop(to);
                    let _ = rustix::fs::unlink(&target);
                    false
                }
            },
            Err(e) => return Err(fail(e.into())),
        };
        if !cloned {
            rustix::fs::linkat(CWD, source, CWD, &target, AtFlags::empty())
                .map_err(|e| fail(e.into()))?;
        }
    }
    Ok(())
}

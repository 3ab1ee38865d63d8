//! What the actor shares with handles, monitors and the guard thread: `Shared` (read-only or behind
//! short, uncontended locks; only the actor changes live job state), the memory protection counters, the
//! running jobs' probes, and the per-submitter counts.

use crate::EngineConfig;
use aura_admission::Admission;
use aura_model::{Accounting, HostReading, JobId, Progress, ProgressEvent};
use aura_store::Store;
use aura_supervisor::{Supervisor, UsageProbe};
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{broadcast, watch};

/// Progress updates kept for slow stream subscribers (one per running job per interval).
const PROGRESS_BUFFER: usize = 1024;

/// What the actor shares read-only (or through short, uncontended locks) with handles and monitors.
pub(crate) struct Shared {
    pub config: EngineConfig,
    pub admission: Admission,
    /// Host metrics on their own thread; requests read its latest snapshot and never sample themselves.
    pub host_sampler: aura_host::HostSampler,
    /// Jobs waiting in the queue, as last counted by the actor (for the queue cap at submit).
    pub queued_count: AtomicUsize,
    /// Jobs waiting per submitter (token name) — queued, or admitted as a standby and not started —
    /// kept by the actor as jobs come and go (for the per-token cap at submit).
    // A std Mutex: held for one map update or lookup, never across an await.
    queued_by: Mutex<HashMap<String, usize>>,
    /// Places in the queue held by submits the actor has not counted yet (see `Places` below).
    pub places: Mutex<Places>,
    /// Jobs started and not yet finished (running, stopping), as last counted by the actor. A standby
    /// (admitted, waiting for a running slot) counts as queued.
    pub running_count: AtomicUsize,
    pub store: Store,
    pub supervisor: Supervisor,
    pub accepting: AtomicBool,
    /// Ids of jobs that reached a final state; waiters filter for theirs. Lagging receivers re-read the store.
    pub finished: broadcast::Sender<JobId>,
    // A std Mutex: held for a map insert/lookup only, never across an await.
    probes: Mutex<HashMap<JobId, Probed>>,
    /// Per kind, the most memory a running job of it was seen using over its reservation (see
    /// `live_memory`); submit raises the kind's requests to it at once.
    overruns: Mutex<HashMap<String, u64>>,
    /// CPU time of the jobs whose probes are gone, so that `probes_cpu_usec` keeps counting them.
    ended_jobs_cpu_usec: AtomicU64,
    /// Why admission is paused by a live guard, if it is (set by the actor, read by handles).
    pub paused: Mutex<Option<String>>,
    /// Drained by an operator: nothing new starts (set by the actor, read by handles).
    pub draining: AtomicBool,
    /// Jobs held, and jobs paused, by an operator now (counted by the actor).
    pub held_count: AtomicUsize,
    pub paused_count: AtomicUsize,
    /// Why running jobs' CPU is capped now, if it is (set by the guard thread).
    pub throttled: Mutex<Option<String>>,
    /// The guard thread's latest look at the host.
    pub guard_reading: Mutex<Option<HostReading>>,
    /// Memory protection since start-up: stage 2 armed now, and trees killed or stopped for memory.
    pub memory: MemoryCounters,
    /// Set once to cut every stop sequence short and kill every tree (the shutdown deadline, a second
    /// signal); monitors watch it.
    pub kill_trees: watch::Sender<bool>,
    /// Requeued pressure victims and the moment they may start again (`guards.victim_cooldown` after
    /// their eviction): the kernel needs that long to take back what was freed.
    pub held: Mutex<HashMap<JobId, std::time::Instant>>,
    /// Jobs waiting for dependencies, with those not finished yet (set by the actor, read by handles).
    dependencies: Mutex<HashMap<JobId, BTreeSet<JobId>>>,
    /// Running jobs' progress for event streams (see `streams`).
    pub progress_events: broadcast::Sender<Arc<ProgressEvent>>,
    /// Set when the shutdown begins: event streams end at once rather than hold the server open.
    pub closing: watch::Sender<bool>,
    /// Jobs submitted and finished, run and wait times, refusals, paused time, raised warnings (for
    /// `/metrics`; fed by the actor, handles and the warning watcher).
    pub job_metrics: crate::metrics::JobMetrics,
    /// What the janitor did and is doing (written by its thread, read by handles).
    pub janitor: crate::retention::Board,
    /// Attempts that ended here since start-up (fleet mode: the fleet task gives waiting jobs back when
    /// none ends for a while).
    pub ended_attempts: AtomicU64,
    /// Rung when this node may take more work — an attempt ended, the node was undrained, admission
    /// resumed — so that in fleet mode the fleet task tops the local queue up at once, not at its next
    /// tick or the store's notification of a commit.
    pub claim_now: tokio::sync::Notify,
}

/// What memory protection did since the daemon started (for `/metrics` and the utilization view).
#[derive(Debug, Default)]
pub(crate) struct MemoryCounters {
    pub critical: AtomicBool,
    pub limit_exceeded: AtomicU64,
    pub oom_killed: AtomicU64,
    pub pressure_victims: AtomicU64,
}

/// A running job's live figures and the memory it reserved, side by side for `Shared::live_memory`.
struct Probed {
    probe: UsageProbe,
    reserved_memory: u64,
    kind: Option<String>,
}

impl Shared {
    /// Nothing counted, queued or probed yet; not accepting until recovery is done.
    pub(crate) fn new(
        config: EngineConfig,
        admission: Admission,
        host_sampler: aura_host::HostSampler,
        store: Store,
        supervisor: Supervisor,
        finished: broadcast::Sender<JobId>,
    ) -> Shared {
        Shared {
            config,
            admission,
            host_sampler,
            queued_count: AtomicUsize::new(0),
            queued_by: Mutex::default(),
            places: Mutex::default(),
            running_count: AtomicUsize::new(0),
            store,
            supervisor,
            accepting: AtomicBool::new(false),
            finished,
            probes: Mutex::new(HashMap::new()),
            overruns: Mutex::default(),
            ended_jobs_cpu_usec: AtomicU64::new(0),
            paused: Mutex::new(None),
            draining: AtomicBool::new(false),
            held_count: AtomicUsize::new(0),
            paused_count: AtomicUsize::new(0),
            throttled: Mutex::new(None),
            guard_reading: Mutex::new(None),
            memory: MemoryCounters::default(),
            kill_trees: watch::Sender::new(false),
            held: Mutex::default(),
            dependencies: Mutex::default(),
            progress_events: broadcast::channel(PROGRESS_BUFFER).0,
            closing: watch::Sender::new(false),
            job_metrics: crate::metrics::JobMetrics::default(),
            janitor: crate::retention::Board::default(),
            ended_attempts: AtomicU64::new(0),
            claim_now: tokio::sync::Notify::new(),
        }
    }

    /// The progress of every running job that reports it.
    pub(crate) fn progress_now(&self) -> Vec<(JobId, Progress)> {
        let probes = self.probes.lock().unwrap_or_else(|p| p.into_inner());
        probes
            .iter()
            .filter_map(|(id, p)| Some((*id, p.probe.progress()?)))
            .collect()
    }

    /// The unfinished dependencies a waiting job waits for; `None` when it waits for none.
    pub(crate) fn dependencies(&self, id: JobId) -> Option<BTreeSet<JobId>> {
        self.dependencies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned()
    }

    /// Sets (or with `None` clears) what a waiting job waits for.
    pub(crate) fn set_dependencies(&self, id: JobId, pending: Option<BTreeSet<JobId>>) {
        let mut map = self.dependencies.lock().unwrap_or_else(|p| p.into_inner());
        match pending {
            Some(pending) => map.insert(id, pending),
            None => map.remove(&id),
        };
    }

    pub(crate) fn register_probe(
        &self,
        id: JobId,
        probe: UsageProbe,
        reserved_memory: u64,
        kind: Option<String>,
    ) {
        self.probes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                id,
                Probed {
                    probe,
                    reserved_memory,
                    kind,
                },
            );
    }

    /// The most memory a running job of `kind` was seen using over its reservation since start-up.
    pub(crate) fn overrun_of(&self, kind: &str) -> Option<u64> {
        self.overruns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(kind)
            .copied()
    }

    /// Running jobs' real memory use against their reservations (`aura_admission::LiveMemory`): each
    /// job's memory in use (its charge less reclaimable page cache, as last sampled), and `available`,
    /// the host's available memory less the headroom.
    pub(crate) fn live_memory(&self, available: Option<u64>) -> aura_admission::LiveMemory {
        let probes = self.probes.lock().unwrap_or_else(|p| p.into_inner());
        let (mut overrun, mut within) = (0u64, 0u64);
        for p in probes.values() {
            let live = p.probe.live();
            let used = live.memory_used().unwrap_or(0);
            overrun = overrun.saturating_add(used.saturating_sub(p.reserved_memory));
            within = within.saturating_add(used.min(p.reserved_memory));
            // Over its reservation: the next job of its kind should not ask for less.
            if let (Some(kind), true) = (&p.kind, used > p.reserved_memory) {
                let mut overruns = self.overruns.lock().unwrap_or_else(|p| p.into_inner());
                match overruns.get_mut(kind) {
                    Some(seen) => *seen = (*seen).max(used),
                    None => {
                        overruns.insert(kind.clone(), used);
                    }
                }
            }
        }
        aura_admission::LiveMemory {
            overrun_bytes: overrun,
            within_bytes: within,
            available_bytes: available,
        }
    }

    /// Forgets a finished job's probe, keeping its CPU time in the running total: its final accounting
    /// where there is one, else its last sample.
    pub(crate) fn unregister_probe(&self, id: JobId, final_accounting: Option<&Accounting>) {
        let removed = self
            .probes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        let secs = match (final_accounting, removed) {
            (Some(a), _) => a.cpu_user_secs.unwrap_or(0.0) + a.cpu_system_secs.unwrap_or(0.0),
            (None, Some(p)) => cpu_secs(&p.probe.live()),
            (None, None) => 0.0,
        };
        self.ended_jobs_cpu_usec
            .fetch_add((secs * 1e6) as u64, Ordering::Relaxed);
    }

    /// CPU time of every job since start-up: the running ones as last sampled plus the ended ones. The
    /// guard's fallback where there is no cgroup v2 root to read.
    pub(crate) fn probes_cpu_usec(&self) -> u64 {
        let probes = self.probes.lock().unwrap_or_else(|p| p.into_inner());
        let running: u64 = probes
            .values()
            .map(|p| (cpu_secs(&p.probe.live()) * 1e6) as u64)
            .sum();
        running + self.ended_jobs_cpu_usec.load(Ordering::Relaxed)
    }

    /// (running, queued) as the actor last counted them: no round trip through it.
    /// How many of `submitter`'s jobs wait in the queue.
    pub(crate) fn queued_by(&self, submitter: &str) -> usize {
        self.queued_by
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(submitter)
            .copied()
            .unwrap_or(0)
    }

    /// Counts a job of `submitter` into (`entered`) or out of the waiting ones.
    pub(crate) fn count_queued_by(&self, submitter: &str, entered: bool) {
        let mut counts = self.queued_by.lock().unwrap_or_else(|e| e.into_inner());
        if entered {
            count_up(&mut counts, submitter);
        } else {
            count_down(&mut counts, submitter);
        }
    }

    pub(crate) fn counts(&self) -> (usize, usize) {
        (
            self.running_count.load(Ordering::Relaxed),
            self.queued_count.load(Ordering::Relaxed),
        )
    }

    pub(crate) fn paused_reason(&self) -> Option<String> {
        self.paused
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(crate) fn probe(&self, id: JobId) -> Option<UsageProbe> {
        self.probes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .map(|p| p.probe.clone())
    }

    /// Until when a requeued pressure victim waits whatever memory says, if it does.
    pub(crate) fn held_until(&self, id: JobId) -> Option<std::time::Instant> {
        let held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        held.get(&id)
            .copied()
            .filter(|t| *t > std::time::Instant::now())
    }

    /// The default working directory of a job, shared by its attempts.
    pub(crate) fn work_dir(&self, id: JobId) -> std::path::PathBuf {
        self.config.work_root().join(id.to_string())
    }

    /// Where an upload's content is, `uploads/<id>`.
    pub(crate) fn upload_path(&self, upload: &aura_model::files::UploadId) -> std::path::PathBuf {
        self.config.upload_root().join(upload.as_str())
    }

    pub(crate) fn log_dir(&self, id: JobId, attempt: u32) -> std::path::PathBuf {
        self.config
            .log_root()
            .join(id.to_string())
            .join(attempt.to_string())
    }
}

fn cpu_secs(live: &aura_model::LiveUsage) -> f64 {
    live.cpu_user_secs.unwrap_or(0.0) + live.cpu_system_secs.unwrap_or(0.0)
}

/// One more for `name`; the name is allocated once per name with a count, not once per call.
pub(crate) fn count_up(counts: &mut HashMap<String, usize>, name: &str) {
    match counts.get_mut(name) {
        Some(n) => *n += 1,
        None => {
            counts.insert(name.to_owned(), 1);
        }
    }
}

/// One less for `name`; a count that reaches zero leaves the map.
pub(crate) fn count_down(counts: &mut HashMap<String, usize>, name: &str) {
    if let Some(n) = counts.get_mut(name) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            counts.remove(name);
        }
    }
}

/// Places in the queue held by submits between their cap check and the actor's count of their job (the
/// insert and the trip through the command channel lie between). Without them, concurrent submits that
/// all passed the check before the actor counted any of them overshot the caps.
#[derive(Debug, Default)]
pub(crate) struct Places {
    pub total: usize,
    /// Per submitter (token name), entries removed at zero.
    pub by: HashMap<String, usize>,
}

impl Places {
    pub(crate) fn give_back(&mut self, submitter: Option<&str>) {
        self.total = self.total.saturating_sub(1);
        if let Some(name) = submitter {
            count_down(&mut self.by, name);
        }
    }
}

//! The actor: a single task that owns the queue and the live state of every job. Everyone else talks to it
//! through a bounded channel of `Command`s; nothing else mutates a live job. Here: the loop, the command
//! dispatch and the queue; its handlers by concern in `lifecycle` (launch, start, stop, cancel, end),
//! `memory` (pressure victims, memory violations, the engine's log) and `recovery`; what starts next is
//! decided by `crate::dispatch`.

mod control;
mod lifecycle;
mod membership;
mod memory;
mod pipeline;
mod recovery;

use crate::lease::Leases;
use crate::monitor::Monitor;
use crate::protocol::{CancelReply, Command};
use crate::shared::Shared;
use crate::{EngineConfig, EngineError, EngineHandle};
use aura_admission::{Admission, Request, Reservation};
use aura_model::{
    EngineEvent, Event, Job, JobEvent, JobId, JobState, LoggedEvent, NewEvent, Outcome, Run,
    StateName, StopReason, Timestamp,
};
use aura_store::{Commit, Store};
use aura_supervisor::{LaunchRequest, LaunchTicket, Supervisor};
use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinSet;

/// Queue order: higher priority first, then lower id (FIFO).
type QueueKey = (Reverse<i32>, JobId);

fn queue_key(job: &Job) -> QueueKey {
    (Reverse(job.spec.priority), job.id)
}

struct Active {
    job: Job,
    /// What admission reserved for it (the `Request` it was queued with).
    request: Request,
    /// Held until the job's tree is gone (the actor drops it when the monitor reports the exit); its CPU
    /// is given back while the job is paused.
    reservation: Reservation,
    stop: watch::Sender<Option<StopReason>>,
    /// Cuts this tree's stop sequence short (the emergency stage kills at once).
    kill: watch::Sender<bool>,
    /// An operator's pause and resume, to the monitor.
    control: mpsc::Sender<crate::monitor::Control>,
    /// A stop requested while the tree was still being launched, applied once it has started.
    pending_stop: Option<StopReason>,
    /// The launch's place in line for a running slot. Until it takes one the job is a *standby*: admitted
    /// (its reservation held) but not started, and it can be withdrawn.
    ticket: LaunchTicket,
    /// Admitted ahead of a free running slot (see `dispatch`).
    standby: bool,
}

struct Actor {
    shared: Arc<Shared>,
    rx: mpsc::Receiver<Command>,
    tx: mpsc::Sender<Command>,
    /// The queue in start order, with each job's admission request.
    queue: BTreeMap<QueueKey, Request>,
    queued: HashMap<JobId, Job>,
    /// Jobs waiting for their dependencies (`after`), outside the queue.
    waiting: HashMap<JobId, Job>,
    /// Jobs an operator holds (`aura hold`), outside the queue until released.
    on_hold: HashMap<JobId, Job>,
    /// For each unfinished dependency, the waiting jobs that need it.
    dependants: HashMap<JobId, Vec<JobId>>,
    /// How the jobs that ended lately ended (see `pipeline`).
    recent: pipeline::Recent,
    /// Set when a per-minute limit holds jobs back: the moment a start frees up in its window.
    rate_wakeup: Option<Pin<Box<tokio::time::Sleep>>>,
    leases: Leases,
    /// The earliest lease deadline, when there are leases.
    lease_wakeup: Option<Pin<Box<tokio::time::Sleep>>>,
    active: HashMap<JobId, Active>,
    monitors: JoinSet<()>,
    monitor_jobs: HashMap<tokio::task::Id, JobId>,
    shutdown_waiters: Vec<oneshot::Sender<()>>,
    /// Fleet mode: jobs whose trees are being killed because another node holds them now (or this node
    /// lost its leases); their ends are written nowhere.
    lost: std::collections::HashSet<JobId>,
    /// Waiting for the lost trees to be gone (see `membership`).
    lost_waiters: Vec<oneshot::Sender<()>>,
}

const COMMAND_CAPACITY: usize = 1024;

pub(crate) async fn spawn(
    config: EngineConfig,
    admission: Admission,
    host: aura_host::HostSampler,
    store: Store,
    supervisor: Supervisor,
) -> Result<EngineHandle, EngineError> {
    let (tx, rx) = mpsc::channel(COMMAND_CAPACITY);
    let (finished, _) = broadcast::channel(1024);
    let shared = Arc::new(Shared::new(
        config, admission, host, store, supervisor, finished,
    ));
    let mut actor = Actor {
        shared: shared.clone(),
        rx,
        tx: tx.clone(),
        queue: BTreeMap::new(),
        queued: HashMap::new(),
        waiting: HashMap::new(),
        on_hold: HashMap::new(),
        dependants: HashMap::new(),
        recent: pipeline::Recent::default(),
        rate_wakeup: None,
        leases: Leases::new(),
        lease_wakeup: None,
        active: HashMap::new(),
        monitors: JoinSet::new(),
        monitor_jobs: HashMap::new(),
        shutdown_waiters: Vec::new(),
        lost: std::collections::HashSet::new(),
        lost_waiters: Vec::new(),
    };
    actor.restore_drain().await?;
    if let Some(fleet) = shared.store.fleet() {
        // Registered (a new incarnation) before recovery reads what this node still holds.
        let incarnation = fleet
            .register(&crate::fleet::fleet_limits(&shared.config))
            .await?;
        tracing::info!(node = %fleet.node().name, incarnation, "joined the fleet");
    }
    actor.recover().await?;
    shared.accepting.store(true, Ordering::SeqCst);
    let guards = if shared.config.guards.enabled {
        let thread = crate::guards::GuardThread::start(shared.clone(), tx.clone())
            .map_err(|e| EngineError::internal("starting the guard thread", e))?;
        Some(thread)
    } else {
        None
    };
    let warnings = if shared.config.warnings.enabled {
        let thread = crate::warnings::WarningThread::start(shared.clone(), tx.clone())
            .map_err(|e| EngineError::internal("starting the warning watcher thread", e))?;
        Some(thread)
    } else {
        None
    };
    let janitor = crate::janitor::JanitorThread::start(shared.clone(), tx.clone())
        .map_err(|e| EngineError::internal("starting the janitor thread", e))?;
    let fleet_task = match (shared.store.fleet(), &shared.config.fleet) {
        (Some(fleet), Some(config)) => {
            let (stop, stopped) = watch::channel(false);
            let task = crate::fleet::FleetTask::new(shared.clone(), tx.clone(), fleet, config);
            Some((tokio::spawn(task.run(stopped)), stop))
        }
        _ => None,
    };
    let task = tokio::spawn(actor.run());
    let feed = tokio::spawn(crate::streams::progress_feed(shared.clone()));
    let background = crate::handle::Background {
        guards,
        warnings,
        janitor,
        feed,
        fleet: fleet_task,
    };
    Ok(EngineHandle::new(tx, shared, task, background))
}

impl Actor {
    async fn run(mut self) {
        self.dispatch().await;
        loop {
            tokio::select! {
                command = self.rx.recv() => match command {
                    Some(command) => self.handle(command).await,
                    // Unreachable while the actor holds its own sender; kept for clarity.
                    None => break,
                },
                Some(joined) = self.monitors.join_next_with_id(), if !self.monitors.is_empty() => {
                    self.monitor_ended(joined).await;
                }
                () = async { if let Some(w) = self.rate_wakeup.as_mut() { w.await } }, if self.rate_wakeup.is_some() => {
                    self.dispatch().await;
                }
                () = async { if let Some(w) = self.lease_wakeup.as_mut() { w.await } }, if self.lease_wakeup.is_some() => {
                    for id in self.leases.expire(tokio::time::Instant::now()) {
                        tracing::warn!(lease_id = id, "lease expired: its holder stopped renewing; capacity reclaimed");
                    }
                    self.leases_changed().await;
                }
            }
            if !self.shutdown_waiters.is_empty() && self.active.is_empty() {
                break;
            }
        }
        // Writes still queued are committed by the store's close (the engine's shutdown), which also
        // announces the final ones.
        for waiter in self.shutdown_waiters.drain(..) {
            let _ = waiter.send(());
        }
    }

    async fn handle(&mut self, command: Command) {
        match command {
            Command::Enqueue(job) => {
                // The submit's place becomes the queued job in one step: the caps count it once.
                let (shared, submitter) = (self.shared.clone(), job.submitted_by.clone());
                let mut parked = None;
                let queued = shared.enter_reserved(submitter.as_deref(), || {
                    let accepting = self.shared.accepting.load(Ordering::SeqCst);
                    if accepting {
                        // Counted where the actor takes the stored job in, once per job.
                        self.shared.job_metrics.submitted(&job.spec);
                    }
                    if accepting && job.spec.after.is_empty() {
                        self.enqueue(*job);
                    } else if accepting {
                        parked = Some(job.id);
                        self.park(*job);
                    }
                    accepting
                });
                if let Some(id) = parked {
                    self.resolve_dependencies(id).await;
                }
                if queued {
                    self.dispatch().await;
                }
            }
            Command::Claimed { jobs, reply } => {
                self.claimed(jobs).await;
                let _ = reply.send(());
            }
            Command::Fenced(id) => self.fenced(id).await,
            Command::GiveBack => {
                self.withdraw_standby();
                self.give_back_queue();
            }
            Command::LeasesLost { reason, reply } => self.leases_lost(reason, reply).await,
            Command::Adopt(jobs) => self.adopt(jobs).await,
            Command::Cancel {
                id,
                kill,
                by,
                reply,
            } => {
                let result = self.cancel(id, kill, by).await;
                let _ = reply.send(result);
                // A cancelled standby leaves room for another.
                self.dispatch().await;
            }
            Command::Act { id, op, by, reply } => self.act(id, op, by, reply).await,
            Command::SetPriority {
                id,
                priority,
                by,
                reply,
            } => {
                let result = self.set_priority(id, priority, by).await;
                let _ = reply.send(result);
            }
            Command::Frozen {
                id,
                paused,
                result,
                by,
                reply,
            } => self.frozen(id, paused, result, by, reply).await,
            Command::Drain { on, by, reply } => {
                let changed = self.drain(on, by).await;
                let _ = reply.send(changed);
            }
            Command::Started { id, run } => self.started(id, run).await,
            Command::SpawnFailed { id, error, storage } => {
                tracing::warn!(job_id = %id, %error, storage, "job failed to start");
                let event = Event::SpawnFailed {
                    error: error.clone(),
                    storage,
                    at: Timestamp::now(),
                };
                self.finish(
                    id,
                    event,
                    vec![NewEvent::new(JobEvent::SpawnFailed {
                        error,
                        storage_exhausted: storage,
                    })],
                )
                .await;
            }
            Command::TimedOut { id } => {
                self.request_stop(id, StopReason::TimedOut).await;
            }
            Command::Stalled { id, reason } => {
                let logged = vec![NewEvent::new(JobEvent::Stalled { reason })];
                self.persist_active(id, logged, Commit::Soon).await;
                self.request_stop(id, StopReason::Stalled).await;
            }
            Command::MemoryViolation { id, violation } => {
                self.memory_violation(id, violation).await
            }
            Command::Exited {
                id,
                exit,
                signals_sent,
                accounting,
            } => {
                let memory = accounting.memory_line();
                tracing::info!(job_id = %id, ?exit, %memory, "job tree gone");
                let logged = JobEvent::Exited {
                    exit,
                    signals_sent: signals_sent.clone(),
                    accounting: accounting.clone(),
                    memory,
                };
                let event = Event::Exited {
                    exit,
                    signals_sent,
                    accounting,
                    at: Timestamp::now(),
                };
                self.finish(id, event, vec![NewEvent::new(logged)]).await;
            }
            Command::AcquireLease { spec, reply } => {
                let request = self.shared.config.admission.lease_request(&spec.resources);
                let reserve = |admission: &Admission| {
                    admission
                        .try_reserve(&request, std::time::Instant::now())
                        .map_err(EngineError::LeaseUnavailable)
                };
                let mut result = self
                    .shared
                    .admission
                    .check_capacity(&request)
                    .map_err(EngineError::ExceedsCapacity)
                    .and_then(|()| reserve(&self.shared.admission));
                // A standby has not started: what it reserved goes to the lease before the lease is refused.
                if matches!(result, Err(EngineError::LeaseUnavailable(_)))
                    && self.withdraw_standby() > 0
                {
                    result = reserve(&self.shared.admission);
                }
                let result = result.map(|reservation| self.leases.insert(spec, reservation));
                if let Ok(lease) = &result {
                    tracing::info!(lease_id = lease.id, holder = ?lease.holder, ttl = ?lease.ttl, "lease acquired");
                }
                let _ = reply.send(result);
                self.leases_changed().await;
            }
            Command::RenewLease { id, reply } => {
                let _ = reply.send(self.leases.renew(id).ok_or(EngineError::LeaseNotFound(id)));
                self.leases_changed().await;
            }
            Command::ReleaseLease { id, reply } => {
                let released = self.leases.release(id);
                let _ = reply.send(if released {
                    Ok(())
                } else {
                    Err(EngineError::LeaseNotFound(id))
                });
                if released {
                    tracing::info!(lease_id = id, "lease released");
                }
                self.leases_changed().await;
            }
            Command::ListLeases { reply } => {
                let _ = reply.send(self.leases.list());
            }
            Command::Guard { paused, reading } => {
                let was_paused = self.shared.paused_reason().is_some();
                let resumed = paused.is_none();
                match (&paused, was_paused) {
                    (Some(reason), false) => {
                        tracing::warn!(%reason, "admission paused");
                        self.engine_event(EngineEvent::AdmissionPaused {
                            reason: reason.clone(),
                            reading,
                        })
                        .await;
                    }
                    (None, true) => {
                        tracing::info!("admission resumed");
                        self.engine_event(EngineEvent::AdmissionResumed { reading })
                            .await;
                    }
                    _ => {}
                }
                self.shared
                    .job_metrics
                    .admission_paused(!resumed, std::time::Instant::now());
                *self.shared.paused.lock().unwrap_or_else(|p| p.into_inner()) = paused;
                if resumed {
                    self.shared.claim_now.notify_one();
                    self.dispatch().await;
                } else {
                    // Admitted before the pause but not started: they wait for the resume like the rest.
                    self.withdraw_standby();
                }
            }
            Command::PressureVictim {
                reason,
                reading,
                reply,
                kill,
            } => {
                let victim = self.pressure_victim(&reason, reading, kill).await;
                let _ = reply.send(victim);
            }
            Command::EngineEvent(event) => self.engine_event(event).await,
            Command::MemoryFreed => self.dispatch().await,
            Command::Shutdown { reply } => {
                self.shared.accepting.store(false, Ordering::SeqCst);
                self.shutdown_waiters.push(reply);
                let ids: Vec<JobId> = self.active.keys().copied().collect();
                tracing::info!(running = ids.len(), "shutting down: stopping running jobs");
                for id in ids {
                    self.request_stop(id, StopReason::Shutdown).await;
                }
            }
        }
    }

    /// Re-arms the expiry timer for the earliest lease, and lets queued jobs use what a lease gave back.
    async fn leases_changed(&mut self) {
        self.lease_wakeup = self
            .leases
            .next_deadline()
            .map(|d| Box::pin(tokio::time::sleep_until(d)));
        self.dispatch().await;
    }

    /// Counts `job` into or out of its submitter's waiting jobs.
    fn count_waiting(&self, job: &Job, entered: bool) {
        if let Some(name) = &job.submitted_by {
            self.shared.count_queued_by(name, entered);
        }
    }

    fn enqueue(&mut self, job: Job) {
        let request = self
            .shared
            .config
            .admission
            .request(&job.spec, job.memory_request.as_ref());
        self.queue.insert(queue_key(&job), request);
        self.count_waiting(&job, true);
        self.queued.insert(job.id, job);
        self.publish_counts();
    }

    /// Updates the counts handles read without asking the actor.
    fn publish_counts(&self) {
        let standby = self
            .active
            .values()
            .filter(|a| matches!(a.job.state, JobState::Queued { .. }))
            .count();
        let paused = self
            .active
            .values()
            .filter(|a| matches!(a.job.state, JobState::Paused { .. }))
            .count();
        // Held jobs wait too: they count against the queue caps.
        self.shared.queued_count.store(
            self.queued.len() + self.waiting.len() + self.on_hold.len() + standby,
            Ordering::Relaxed,
        );
        self.shared
            .held_count
            .store(self.on_hold.len(), Ordering::Relaxed);
        self.shared.paused_count.store(paused, Ordering::Relaxed);
        self.shared
            .running_count
            .store(self.active.len() - standby, Ordering::Relaxed);
    }

    /// Takes back a job admitted ahead of a free slot that has not started (see `dispatch`); its
    /// reservation is released. `None` when it is not such a job (or its launch has already taken a slot).
    fn withdraw(&mut self, id: JobId) -> Option<Active> {
        let active = self.active.get(&id)?;
        if !matches!(active.job.state, JobState::Queued { .. })
            || !self.shared.supervisor.withdraw(&active.ticket)
        {
            return None;
        }
        let active = self.active.remove(&id);
        if let Some(a) = active.as_ref().filter(|a| a.standby) {
            self.count_waiting(&a.job, false);
        }
        self.publish_counts();
        active
    }

    /// Puts every admitted job that has not taken its running slot (the standbys, and a launch still on its
    /// way to a free slot) back in the queue: admission paused, or a lease needs what they reserved.
    fn withdraw_standby(&mut self) -> usize {
        let ids: Vec<JobId> = self.active.keys().copied().collect();
        let mut withdrawn = 0;
        for id in ids {
            if let Some(active) = self.withdraw(id) {
                tracing::debug!(job_id = %id, "standby job withdrawn to the queue");
                self.enqueue(active.job);
                withdrawn += 1;
            }
        }
        withdrawn
    }

    fn dequeue(&mut self, id: JobId) -> Option<(Job, Request)> {
        let job = self.queued.remove(&id)?;
        self.count_waiting(&job, false);
        let request = self.queue.remove(&queue_key(&job))?;
        self.publish_counts();
        Some((job, request))
    }

    /// Starts what admission allows, in queue order (see `aura_admission::Scheduler::pass` for backfill and
    /// the starvation guard). Event-driven: called whenever a job arrives or ends, and when a per-minute
    /// limit's window frees a start.
    ///
    /// Then, with every running slot taken, admits up to `standby` more, the *standbys*: each is handed to
    /// the supervisor at once and waits there, fully prepared, for a tree to end, starting the moment one
    /// does with no round trip through this task (the supervisor holds the running count to
    /// `max_concurrent` and serves launches in the order they were queued). A standby is always the head
    /// of the queue (never a backfill), and yields to a job that overtakes it while it waits, so jobs
    /// still start in priority, then FIFO order.
    async fn dispatch(&mut self) {
        self.rate_wakeup = None;
        if !self.shutdown_waiters.is_empty() || self.queue.is_empty() {
            return;
        }
        if self.shared.paused_reason().is_some() || self.shared.draining.load(Ordering::SeqCst) {
            return;
        }
        self.yield_standby();
        let now = std::time::Instant::now();
        // Requeued pressure victims sit out their cooldown; the rest of the queue goes on.
        let held: Vec<(JobId, std::time::Instant)> = {
            let mut held = self.shared.held.lock().unwrap_or_else(|p| p.into_inner());
            held.retain(|_, until| *until > now);
            held.iter().map(|(id, until)| (*id, *until)).collect()
        };
        let snapshot = crate::dispatch::Snapshot {
            queue: self.queue.iter().map(|((_, id), request)| (*id, request)),
            held: &held,
            active: self.active.len(),
            waiting_standbys: self
                .active
                .values()
                .filter(|a| a.standby && !a.ticket.claimed())
                .count(),
            max_concurrent: self.shared.config.max_concurrent,
            standby: self.shared.config.standby,
            now,
        };
        let plan = crate::dispatch::plan(&self.shared.admission, snapshot);
        for start in plan.starts {
            if let Some((job, request)) = self.dequeue(start.id) {
                self.launch(job, request, start.reservation, start.standby);
            }
        }
        if let Some(wait) = plan.look_again_in {
            self.rate_wakeup = Some(Box::pin(tokio::time::sleep(wait)));
        }
    }

    /// Puts back in the queue every standby that a queued job now goes before (a higher priority, or an
    /// earlier id requeued for a retry), unless it has already taken its slot.
    fn yield_standby(&mut self) {
        let Some(&head) = self.queue.keys().next() else {
            return;
        };
        let behind: Vec<JobId> = self
            .active
            .values()
            .filter(|a| a.standby && queue_key(&a.job) > head)
            .map(|a| a.job.id)
            .collect();
        for id in behind {
            if let Some(standby) = self.withdraw(id) {
                tracing::debug!(job_id = %id, "standby job yields to a job queued before it");
                self.enqueue(standby.job);
            }
        }
    }
}

/// Queues one job's write in the store's group commit. The store's writer thread logs a failure and,
/// for a final state (`finished`), announces the job to waiters once the commit is done — even if it
/// failed: waiters then re-read and see what the store has. Nothing here waits for the commit; a final
/// state someone waits for is committed `Now` whatever `commit` says.
async fn queue_write(
    shared: &Shared,
    job: &Job,
    events: Vec<NewEvent>,
    commit: Commit,
    finished: bool,
) {
    let id = job.id;
    let announce = finished.then(|| shared.finished.clone());
    let then = move |result: Result<(), aura_store::StoreError>| {
        match result {
            // Fleet mode: another node holds the job now; the fleet task has the actor forget it.
            Err(e) if e.is_fenced() => {
                tracing::warn!(job_id = %id, "write refused: another node holds this job now (fenced)")
            }
            Err(e) => {
                tracing::error!(job_id = %id, error = %e, "failed to persist a job state change")
            }
            Ok(()) => {}
        }
        if let Some(finished) = announce {
            let _ = finished.send(id);
        }
    };
    // A final state someone waits for (`aura submit --wait`, a waiting API call) is committed at once;
    // anything else may share a commit with the writes of the next few milliseconds.
    let commit = if finished && shared.finished.receiver_count() > 0 {
        Commit::Now
    } else {
        commit
    };
    if let Err(e) = shared.store.record_then(job, &events, commit, then).await {
        tracing::error!(job_id = %id, error = %e, "failed to persist a job state change");
    }
}

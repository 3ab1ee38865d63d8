//! The actor: a single task that owns the queue and the live state of every job. Everyone else talks to it
//! through a bounded channel of `Command`s; nothing else mutates a live job.

use crate::lease::Leases;
use crate::monitor::Monitor;
use crate::protocol::{CancelReply, Command};
use crate::shared::Shared;
use crate::{EngineConfig, EngineError, EngineHandle};
use aura_admission::{Admission, Request, Reservation};
use aura_model::{
    EngineEvent, Event, Job, JobEvent, JobId, JobState, LoggedEvent, NewEvent, Outcome, Run,
    StopReason, Timestamp,
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
    /// Held until the job's tree is gone (the actor drops it when the monitor reports the exit).
    _reservation: Reservation,
    stop: watch::Sender<Option<StopReason>>,
    /// Cuts this tree's stop sequence short (the emergency stage kills at once).
    kill: watch::Sender<bool>,
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
    /// Set when a per-minute limit holds jobs back: the moment a start frees up in its window.
    rate_wakeup: Option<Pin<Box<tokio::time::Sleep>>>,
    leases: Leases,
    /// The earliest lease deadline, when there are leases.
    lease_wakeup: Option<Pin<Box<tokio::time::Sleep>>>,
    active: HashMap<JobId, Active>,
    monitors: JoinSet<()>,
    monitor_jobs: HashMap<tokio::task::Id, JobId>,
    shutdown_waiters: Vec<oneshot::Sender<()>>,
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
        rate_wakeup: None,
        leases: Leases::new(),
        lease_wakeup: None,
        active: HashMap::new(),
        monitors: JoinSet::new(),
        monitor_jobs: HashMap::new(),
        shutdown_waiters: Vec::new(),
    };
    actor.recover().await?;
    shared.accepting.store(true, Ordering::SeqCst);
    let guards = if shared.config.guards.enabled {
        let thread = crate::guards::GuardThread::start(shared.clone(), tx.clone())
            .map_err(|e| EngineError::internal("starting the guard thread", e))?;
        Some(thread)
    } else {
        None
    };
    let task = tokio::spawn(actor.run());
    Ok(EngineHandle::new(tx, shared, task, guards))
}

impl Actor {
    /// Runs before the actor accepts anything: kills whatever a dead predecessor left running, marks those
    /// jobs interrupted (requeuing them per their retry policy) and rebuilds the queue.
    async fn recover(&mut self) -> Result<(), EngineError> {
        let unfinished = self.shared.store.unfinished().await?;
        let foreign = self.shared.config.foreign_trees;
        let handles: Vec<_> = unfinished
            .iter()
            .filter(|_| !foreign)
            .filter_map(|j| j.state.run().map(|r| r.tree.clone()))
            .collect();
        let report = self.shared.supervisor.recover(handles).await;
        if report.killed_processes > 0 || report.removed_cgroups > 0 {
            tracing::warn!(
                killed_processes = report.killed_processes,
                removed_cgroups = report.removed_cgroups,
                "killed processes left by a previous daemon"
            );
        }
        let now = Timestamp::now();
        let quarantine_after = self.shared.config.quarantine_after;
        for mut job in unfinished {
            if !matches!(job.state, JobState::Queued { .. }) {
                let deaths = job.interruptions.saturating_add(1);
                let quarantine = !foreign && quarantine_after > 0 && deaths >= quarantine_after;
                let reason = if quarantine {
                    tracing::error!(job_id = %job.id, deaths, "job quarantined: it was running at every one of the last unclean daemon deaths");
                    format!(
                        "running at {deaths} unclean daemon deaths in a row (quarantine_after = \
                         {quarantine_after}): suspected of bringing the daemon down, not run again"
                    )
                } else if foreign {
                    "running under the daemon this data dir was copied from; its processes were left \
                     to it"
                        .to_owned()
                } else {
                    "daemon died while the job ran".to_owned()
                };
                let at = now;
                let event = if quarantine {
                    Event::Quarantined {
                        reason: reason.clone(),
                        at,
                    }
                } else {
                    Event::Interrupted {
                        reason: reason.clone(),
                        at,
                    }
                };
                let interruption = aura_model::events::Interruption {
                    reason: reason.clone(),
                    interruptions: Some(deaths),
                    recovery: Some(report),
                };
                let logged = if quarantine {
                    JobEvent::Quarantined(interruption)
                } else {
                    JobEvent::Interrupted(interruption)
                };
                job.apply(event).map_err(|e| {
                    EngineError::internal("recording a job interrupted by a crash", e)
                })?;
                let mut events = vec![NewEvent::new(logged)];
                if job.may_retry() {
                    NewEvent::stamp(&mut events, job.attempt);
                    job.apply(Event::Requeue { at: now })
                        .map_err(|e| EngineError::internal("requeuing a job after a crash", e))?;
                    events.push(NewEvent::new(JobEvent::Requeued {
                        attempt: job.attempt,
                    }));
                }
                tracing::warn!(job_id = %job.id, requeued = matches!(job.state, JobState::Queued { .. }), "job interrupted by a daemon crash");
                self.shared.store.record(&job, events).await?;
            }
            if matches!(job.state, JobState::Queued { .. }) {
                self.enqueue(job);
            }
        }
        Ok(())
    }

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
                let queued = shared.enter_reserved(submitter.as_deref(), || {
                    let accepting = self.shared.accepting.load(Ordering::SeqCst);
                    if accepting {
                        self.enqueue(*job);
                    }
                    accepting
                });
                if queued {
                    self.dispatch().await;
                }
            }
            Command::Cancel { id, reply } => {
                let result = self.cancel(id).await;
                let _ = reply.send(result);
                // A cancelled standby leaves room for another.
                self.dispatch().await;
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
                *self.shared.paused.lock().unwrap_or_else(|p| p.into_inner()) = paused;
                if resumed {
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
        self.shared
            .queued_count
            .store(self.queued.len() + standby, Ordering::Relaxed);
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
        if self.shared.paused_reason().is_some() {
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

    fn launch(&mut self, job: Job, request: Request, reservation: Reservation, standby: bool) {
        let mut spec = job.spec.clone();
        if !reservation.gpus().is_empty() {
            // The job sees only the devices it was granted (CUDA, NVENC through FFmpeg's -hwaccel).
            let devices: Vec<String> = reservation.gpus().iter().map(u32::to_string).collect();
            spec.env
                .insert("CUDA_VISIBLE_DEVICES".into(), devices.join(","));
        }
        let id = job.id;
        let (stop_tx, stop_rx) = watch::channel(None);
        let (kill_tx, kill_rx) = watch::channel(false);
        let ticket = LaunchTicket::new();
        let cwd = job
            .spec
            .cwd
            .clone()
            .unwrap_or_else(|| self.shared.work_dir(id));
        // Queued with the supervisor here, in dispatch order, not when the monitor first runs: launches
        // take their running slots in the order they were queued.
        let launching = self.shared.supervisor.launch(LaunchRequest {
            job_id: id,
            attempt: job.attempt,
            program: spec.program.clone(),
            args: spec.args.clone(),
            env: spec.env.clone(),
            // Resolved only here, into the launch: submit checked that each exists.
            secrets: spec
                .secrets
                .iter()
                .filter_map(|(var, name)| {
                    let secret = self.shared.config.secrets.get(name);
                    if secret.is_none() {
                        tracing::warn!(job_id = %id, var, secret = name, "secret no longer known; the variable is left unset");
                    }
                    secret.map(|s| (var.clone(), s.clone()))
                })
                .collect(),
            cwd: cwd.clone(),
            // The default per-job directory is created by the launcher thread, off the async workers.
            create_cwd: spec.cwd.is_none(),
            log_dir: self.shared.log_dir(id, job.attempt),
            memory_limit: spec.memory_limit().map(|l| l.bytes()),
            ticket: ticket.clone(),
        });
        let monitor = Monitor {
            id,
            spec,
            cwd,
            shared: self.shared.clone(),
            stop: stop_rx,
            kill: kill_rx,
            reserved_memory: request.memory_bytes,
            kind: job.spec.kind().map(str::to_owned),
            actor: self.tx.clone(),
        };
        let handle = self.monitors.spawn(monitor.run(Box::pin(launching)));
        self.monitor_jobs.insert(handle.id(), id);
        if standby {
            // Still waiting, for its submitter's cap, until it starts.
            self.count_waiting(&job, true);
        }
        self.active.insert(
            id,
            Active {
                job,
                request,
                _reservation: reservation,
                stop: stop_tx,
                kill: kill_tx,
                pending_stop: None,
                ticket,
                standby,
            },
        );
        self.publish_counts();
    }

    async fn started(&mut self, id: JobId, run: Run) {
        let Some(active) = self.active.get_mut(&id) else {
            return;
        };
        let logged = JobEvent::Started {
            pid: run.tree.pid,
            backend: run.tree.backend,
            cgroups: run.tree.cgroups.clone(),
            cwd: run.cwd.clone(),
        };
        if let Err(e) = active.job.apply(Event::Started { run }) {
            tracing::error!(job_id = %id, error = %e, "illegal transition");
            return;
        }
        if active.standby {
            if let Some(name) = &active.job.submitted_by {
                self.shared.count_queued_by(name, false);
            }
        }
        tracing::info!(job_id = %id, attempt = active.job.attempt, "job started");
        let pending = active.pending_stop.take();
        self.publish_counts();
        // A short job's start usually shares its end's commit in the store's group window: a crash inside
        // the window leaves no handle, and recovery finds the tree anyway (its cgroup under this
        // instance's roots, or on the fallback the marker its processes carry).
        self.persist_active(id, vec![NewEvent::new(logged)], Commit::Soon)
            .await;
        if let Some(reason) = pending {
            self.request_stop(id, reason).await;
        }
        // Its slot is taken: the next standby may be admitted.
        self.dispatch().await;
    }

    /// Stage 2 of memory protection: chooses a victim among the running jobs (ranking in
    /// `crate::pressure`), stops it with its stop sequence, and records the decision with its figures.
    async fn pressure_victim(
        &mut self,
        reason: &str,
        reading: crate::guards::Reading,
        kill: bool,
    ) -> Option<JobId> {
        let candidates: Vec<crate::pressure::Candidate> = self
            .active
            .values()
            .filter_map(|a| match &a.job.state {
                JobState::Running { run } => Some(crate::pressure::Candidate {
                    id: a.job.id,
                    priority: a.job.spec.priority,
                    started_at_ms: run.started_at.unix_millis(),
                    memory_bytes: self
                        .shared
                        .probe(a.job.id)
                        .and_then(|p| p.live().memory_used()),
                    reserved_bytes: a.request.memory_bytes,
                }),
                _ => None,
            })
            .collect();
        let Some(victim) = crate::pressure::choose_victim(&candidates).cloned() else {
            tracing::warn!(%reason, "memory critical but no running job can be stopped");
            self.engine_event(EngineEvent::PressureNoVictim {
                reason: reason.to_owned(),
                reading,
            })
            .await;
            return None;
        };
        tracing::warn!(job_id = %victim.id, %reason, memory = ?victim.memory_bytes, reserved = victim.reserved_bytes,
            "memory critical: stopping a victim job");
        let chosen = aura_model::events::VictimChosen {
            job_id: victim.id,
            reason: reason.to_owned(),
            reading,
            excess_bytes: victim.excess_bytes(),
            victim: victim.clone(),
            candidates: candidates.len(),
            ranking:
                "lowest priority, then furthest over its reservation, then most recently started"
                    .to_owned(),
            cooldown_secs: self.shared.config.guards.victim_cooldown.as_secs_f64(),
            killed_at_once: kill,
        };
        self.engine_event(EngineEvent::PressureVictim(chosen.clone()))
            .await;
        self.persist_active(
            victim.id,
            vec![NewEvent::new(JobEvent::PressureVictim(chosen))],
            Commit::Soon,
        )
        .await;
        self.shared
            .memory
            .pressure_victims
            .fetch_add(1, Ordering::Relaxed);
        self.request_stop(victim.id, StopReason::MemoryPressure)
            .await;
        if kill {
            if let Some(active) = self.active.get(&victim.id) {
                active.kill.send_replace(true);
            }
        }
        Some(victim.id)
    }

    /// Appends to the engine's event log without waiting for the commit.
    async fn engine_event(&mut self, event: EngineEvent) {
        let kind = event.kind();
        let failed = kind.clone();
        let logged = move |result: Result<(), aura_store::StoreError>| {
            if let Err(e) = result {
                tracing::error!(error = %e, kind = %failed, "failed to record an engine event");
            }
        };
        let at = Timestamp::now();
        if let Err(e) = self
            .shared
            .store
            .record_engine_event(at, &event, logged)
            .await
        {
            tracing::error!(error = %e, %kind, "failed to record an engine event")
        }
    }

    /// Records why the monitor is killing a tree for memory; the outcome follows from the accounting.
    async fn memory_violation(&mut self, id: JobId, violation: aura_supervisor::MemoryViolation) {
        if !self.active.contains_key(&id) {
            return;
        }
        let counter = match violation {
            aura_supervisor::MemoryViolation::LimitExceeded { .. } => {
                &self.shared.memory.limit_exceeded
            }
            aura_supervisor::MemoryViolation::OomKilled { .. } => &self.shared.memory.oom_killed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let event = match violation {
            aura_supervisor::MemoryViolation::LimitExceeded {
                limit_bytes,
                current_bytes,
                by,
            } => NewEvent::new(JobEvent::MemoryLimitExceeded {
                limit_bytes,
                current_bytes,
                enforced_by: by,
                action: "killing the whole tree".to_owned(),
            }),
            aura_supervisor::MemoryViolation::OomKilled { kills } => {
                NewEvent::new(JobEvent::OomKilled {
                    kills,
                    action: "the kernel's OOM killer hit the tree; killing the rest".to_owned(),
                })
            }
        };
        self.persist_active(id, vec![event], Commit::Soon).await;
    }

    /// Marks a live job as stopping and tells its monitor. A job still launching is stopped as soon as it has
    /// started; a queued job that is cancelled finishes at once.
    async fn request_stop(&mut self, id: JobId, reason: StopReason) {
        if let Some(standby) = self.withdraw(id) {
            // It never started. At shutdown it stays queued in the store for the next start; otherwise it
            // waits in the queue again (a cancel is `cancel`'s business, which finishes it).
            if reason != StopReason::Shutdown {
                self.enqueue(standby.job);
            }
            return;
        }
        let Some(active) = self.active.get_mut(&id) else {
            return;
        };
        let _ = active.stop.send(Some(reason));
        if matches!(active.job.state, JobState::Queued { .. }) {
            active.pending_stop.get_or_insert(reason);
            return;
        }
        let before = active.job.state.name();
        if let Err(e) = active.job.apply(Event::StopRequested {
            reason,
            at: Timestamp::now(),
        }) {
            tracing::error!(job_id = %id, error = %e, "illegal transition");
            return;
        }
        if before != active.job.state.name() {
            tracing::info!(job_id = %id, ?reason, "stopping job");
            self.persist_active(
                id,
                vec![NewEvent::new(JobEvent::StopRequested { reason })],
                Commit::Soon,
            )
            .await;
        }
    }

    async fn cancel(&mut self, id: JobId) -> CancelReply {
        let never_started = self
            .dequeue(id)
            .map(|(job, _)| job)
            .or_else(|| self.withdraw(id).map(|standby| standby.job));
        if let Some(mut job) = never_started {
            if job
                .apply(Event::StopRequested {
                    reason: StopReason::Cancelled,
                    at: Timestamp::now(),
                })
                .is_err()
            {
                return CancelReply::NotLive;
            }
            tracing::info!(job_id = %id, "cancelled a queued job");
            // Final like any other ending: waiters hear of it once the commit is done.
            let events = vec![
                NewEvent::new(JobEvent::StopRequested {
                    reason: StopReason::Cancelled,
                }),
                NewEvent::new(JobEvent::Finished {
                    outcome: job.outcome().cloned(),
                }),
            ];
            self.persist_final(&job, events).await;
            return CancelReply::Done(Box::new(job));
        }
        if self.active.contains_key(&id) {
            self.request_stop(id, StopReason::Cancelled).await;
            if let Some(active) = self.active.get(&id) {
                return CancelReply::Done(Box::new(active.job.clone()));
            }
        }
        CancelReply::NotLive
    }

    /// Applies the event that ends an attempt, requeues per policy, persists, and starts the next job.
    async fn finish(&mut self, id: JobId, event: Event, mut events: Vec<NewEvent>) {
        let Some(Active {
            mut job,
            request,
            standby,
            ..
        }) = self.active.remove(&id)
        else {
            return;
        };
        if standby && matches!(job.state, JobState::Queued { .. }) {
            // A standby that ends without starting (its launch failed) stops waiting.
            self.count_waiting(&job, false);
        }
        self.publish_counts();
        if let Err(e) = job.apply(event) {
            tracing::error!(job_id = %id, error = %e, "illegal transition");
            return;
        }
        let outcome = job.outcome().cloned();
        events.push(NewEvent::new(JobEvent::Finished {
            outcome: outcome.clone(),
        }));
        let shutdown_interrupt = matches!(outcome, Some(Outcome::Interrupted { .. }));
        let requeue =
            job.may_retry() && (!shutdown_interrupt || self.shared.config.requeue_on_shutdown);
        if requeue && matches!(outcome, Some(Outcome::MemoryPressure { .. })) {
            let peak = match &job.state {
                JobState::Finished(f) => f.accounting.memory_peak.map(|p| p.bytes()),
                _ => None,
            };
            let grown = crate::pressure::grown_request(
                request.memory_bytes,
                peak,
                self.shared.config.guards.requeue_growth,
                job.spec.memory_limit(),
                self.shared.admission.memory_capacity(),
            );
            events.push(NewEvent::new(JobEvent::MemoryRequestRaised {
                memory_request: grown.bytes,
                reason: "stopped by the memory pressure responder".to_owned(),
            }));
            job.memory_request = Some(grown);
            let until = std::time::Instant::now() + self.shared.config.guards.victim_cooldown;
            self.shared
                .held
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(id, until);
        }
        if requeue {
            // What ended this attempt belongs to it, though it is written with the next one's row.
            NewEvent::stamp(&mut events, job.attempt);
            // may_retry was checked, so the transition cannot fail.
            if job
                .apply(Event::Requeue {
                    at: Timestamp::now(),
                })
                .is_ok()
            {
                events.push(NewEvent::new(JobEvent::Requeued {
                    attempt: job.attempt,
                }));
                tracing::info!(job_id = %id, attempt = job.attempt, "job requeued");
            }
        }
        if matches!(job.state, JobState::Queued { .. }) {
            self.persist(&job, events).await;
            if self.shutdown_waiters.is_empty() {
                self.enqueue(job);
            }
        } else {
            self.persist_final(&job, events).await;
        }
        self.dispatch().await;
    }

    async fn monitor_ended(
        &mut self,
        joined: Result<(tokio::task::Id, ()), tokio::task::JoinError>,
    ) {
        let task = match &joined {
            Ok((task, ())) => *task,
            Err(e) => e.id(),
        };
        let Some(id) = self.monitor_jobs.remove(&task) else {
            return;
        };
        if let Err(e) = joined {
            // The monitor's RunningTree was dropped while unwinding, which kills the tree.
            tracing::error!(job_id = %id, error = %e, "job monitor failed");
            self.shared.unregister_probe(id, None);
            let reason = format!("internal error: {e}");
            let at = Timestamp::now();
            let event = match self.active.get(&id).map(|a| a.job.state.name()) {
                Some(aura_model::StateName::Queued) => Event::SpawnFailed {
                    error: reason.clone(),
                    storage: false,
                    at,
                },
                _ => Event::Interrupted {
                    reason: reason.clone(),
                    at,
                },
            };
            self.finish(
                id,
                event,
                vec![NewEvent::new(JobEvent::Interrupted(
                    aura_model::events::Interruption {
                        reason,
                        interruptions: None,
                        recovery: None,
                    },
                ))],
            )
            .await;
        }
    }

    /// Queues the write in the store's group commit without waiting for it; ordering per job is preserved
    /// because the store applies writes in queue order. Failures are logged when the commit resolves.
    async fn persist(&self, job: &Job, events: Vec<NewEvent>) {
        queue_write(&self.shared, job, events, Commit::Soon, false).await;
    }

    /// `persist` of a live job, in place (no copy of the job to get around the borrow of `self`).
    async fn persist_active(&self, id: JobId, events: Vec<NewEvent>, commit: Commit) {
        if let Some(active) = self.active.get(&id) {
            queue_write(&self.shared, &active.job, events, commit, false).await;
        }
    }

    /// Like `persist` for a job that reached its final state: waiters are told once the commit is done,
    /// so that what they read next is the final record.
    async fn persist_final(&self, job: &Job, events: Vec<NewEvent>) {
        queue_write(&self.shared, job, events, Commit::Soon, true).await;
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
        if let Err(e) = result {
            tracing::error!(job_id = %id, error = %e, "failed to persist a job state change");
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

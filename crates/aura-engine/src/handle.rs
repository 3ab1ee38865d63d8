//! `EngineHandle`: the cheap, cloneable API everyone else (HTTP server, tests) uses to talk to the engine.

use crate::protocol::{CancelReply, Command, Operation};
use crate::shared::{Places, Shared};
use crate::{EngineError, Selection};
use aura_logs::{LogChunk, Stream};
use aura_model::{
    Backend, EngineStatus, Job, JobAction, JobEventRecord, JobId, JobSpec, JobView, MemoryRequest,
    RequestSource, StateName, Timestamp,
};
pub use aura_model::{Health, LimitUse, Readiness, Utilization};
use aura_store::ListFilter;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;

/// The longest a cancel's answer waits for the job's final record to be committed (a volume that refuses
/// writes keeps it in memory meanwhile; the answer then says what the engine did all the same).
const COMMIT_WAIT: Duration = Duration::from_secs(5);

/// Quarantined jobs `status` lists, newest first.
const QUARANTINED_SHOWN: u32 = 20;

/// The running engine, as its users (the API server, the daemon) reach it: every job operation goes
/// through here. Cheap to clone; all clones talk to one actor.
#[derive(Clone)]
pub struct EngineHandle {
    tx: mpsc::Sender<Command>,
    shared: Arc<Shared>,
    actor: Arc<Mutex<Option<JoinHandle<()>>>>,
    checks: Arc<crate::checks::RecentChecks>,
    /// The supervisor's rules for programs and working directories, asked at submit too.
    sandbox: Arc<aura_supervisor::JobSandbox>,
    guards: Arc<Mutex<Option<crate::guards::GuardThread>>>,
    warnings: Arc<Mutex<Option<crate::warnings::WarningThread>>>,
    janitor: Arc<Mutex<Option<crate::janitor::JanitorThread>>>,
    /// The progress feed of event streams; it ends when `Shared::closing` is set.
    feed: Arc<Mutex<Option<JoinHandle<()>>>>,
    /// Fleet mode: the fleet task and its stop switch (see `crate::fleet`).
    fleet: Arc<Mutex<Option<FleetTaskHandle>>>,
    /// Turns to serve a file out of an archive (each holds a blocking thread while its client reads).
    archive_readers: Arc<tokio::sync::Semaphore>,
}

/// Which jobs `EngineHandle::cancel_where` acts on in fleet mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reach {
    /// Every job picked: those held here and those in the fleet's queue are stopped here, the other
    /// nodes holding picked jobs are named for the caller to ask.
    Fleet,
    /// Only the jobs this node holds (a request another node sent on).
    HeldHere,
}

/// What `EngineHandle::cancel_where` did.
#[derive(Debug, Default)]
pub struct Cancelled {
    /// The jobs stopped here, in order.
    pub ids: Vec<JobId>,
    /// Fleet mode, `Reach::Fleet`: the other live nodes that hold picked jobs.
    pub elsewhere: Vec<aura_model::NodeView>,
}

/// Fleet mode's task (`crate::fleet::FleetTask`) and the switch that stops it.
pub(crate) type FleetTaskHandle = (JoinHandle<()>, tokio::sync::watch::Sender<bool>);

/// The threads and tasks the engine runs beside its actor, stopped by `EngineHandle::shutdown`.
pub(crate) struct Background {
    pub guards: Option<crate::guards::GuardThread>,
    pub warnings: Option<crate::warnings::WarningThread>,
    pub janitor: crate::janitor::JanitorThread,
    pub feed: JoinHandle<()>,
    /// Fleet mode: the fleet task and its stop switch.
    pub fleet: Option<FleetTaskHandle>,
}

impl EngineHandle {
    pub(crate) fn new(
        tx: mpsc::Sender<Command>,
        shared: Arc<Shared>,
        actor: JoinHandle<()>,
        background: Background,
    ) -> Self {
        EngineHandle {
            tx,
            sandbox: Arc::new(shared.config.supervisor.sandbox.clone()),
            shared,
            actor: Arc::new(Mutex::new(Some(actor))),
            checks: Arc::default(),
            guards: Arc::new(Mutex::new(background.guards)),
            warnings: Arc::new(Mutex::new(background.warnings)),
            janitor: Arc::new(Mutex::new(Some(background.janitor))),
            feed: Arc::new(Mutex::new(Some(background.feed))),
            fleet: Arc::new(Mutex::new(background.fleet)),
            archive_readers: Arc::new(tokio::sync::Semaphore::new(
                crate::files::MAX_ARCHIVE_READERS,
            )),
        }
    }

    /// Subscribes to what event streams carry: events as they are committed, and running jobs' progress.
    /// Subscribe before replaying (`replay`), so that nothing committed in between is missed.
    pub fn subscribe(&self) -> crate::Subscription {
        crate::Subscription {
            committed: self.shared.store.subscribe(),
            progress: self.shared.progress_events.subscribe(),
            closing: self.shared.closing.subscribe(),
        }
    }

    /// Committed events after sequence number `after`, oldest first, at most `limit`: of one job, of
    /// every job (`None`), or of the engine — what a stream replays for a client that reconnects.
    pub async fn replay(
        &self,
        log: Option<aura_model::EventLog>,
        after: i64,
        limit: u32,
    ) -> Result<Vec<aura_model::CommittedEvent>, EngineError> {
        Ok(self.shared.store.committed_after(log, after, limit).await?)
    }

    /// The newest sequence numbers of the job log and of the engine log.
    pub async fn latest_event_seqs(&self) -> Result<(i64, i64), EngineError> {
        Ok(self.shared.store.latest_seqs().await?)
    }

    /// Whether a job exists (`NotFound` if not).
    pub async fn exists(&self, id: JobId) -> Result<(), EngineError> {
        self.stored(id).await.map(|_| ())
    }

    /// The process backend the supervisor runs jobs with.
    pub fn backend(&self) -> Backend {
        self.shared.supervisor.backend()
    }

    /// Validates, persists and queues a job on behalf of `submitter` (recorded with it; `None` for an
    /// engine used without authentication). Refuses, changing nothing, a spec that is invalid, names a
    /// program that does not exist, is not executable or is not allowed, a working directory that is not
    /// a directory or lies outside the allowed roots, or a secret the daemon does not have; and a submit
    /// over the global or the submitter's queue cap.
    pub async fn submit(
        &self,
        spec: JobSpec,
        submitter: Option<&crate::Submitter>,
    ) -> Result<Job, EngineError> {
        let result = self.submit_one(spec, submitter).await;
        self.count_refusal(&result);
        result
    }

    /// Counts a refused submit by its reason (`aura_admission_refusals_total`).
    fn count_refusal<T>(&self, result: &Result<T, EngineError>) {
        if let Some(reason) = result.as_ref().err().and_then(crate::metrics::Refusal::of) {
            self.shared.job_metrics.refused(reason);
        }
    }

    /// The lifecycle metrics since start-up, for `/metrics`.
    pub fn job_metrics(&self) -> crate::JobMetricsSnapshot {
        self.shared.job_metrics.snapshot(std::time::Instant::now())
    }

    async fn submit_one(
        &self,
        spec: JobSpec,
        submitter: Option<&crate::Submitter>,
    ) -> Result<Job, EngineError> {
        let memory_request = self.admissible(&spec, submitter).await?;
        // Again, taking the job's place in the queue: shutdown may have begun, or the queue filled, while
        // this submit did its checks. Dropped on any error below, the place is given back.
        let place = self.shared.reserve_place(submitter)?;
        self.check_fleet_caps(submitter, 1).await?;
        let job = self
            .shared
            .store
            .insert_job(
                spec,
                Timestamp::now(),
                Some(memory_request),
                submitter.map(|s| s.name.clone()),
            )
            .await?;
        self.hand_over(&job, place).await?;
        Ok(job)
    }

    /// Hands a stored job to the actor, which turns its place into the queued job
    /// (`Shared::enter_reserved`). In fleet mode the job waits in the fleet's queue instead, for whichever
    /// node claims it (this one included); its place here is given back.
    async fn hand_over(&self, job: &Job, place: Place<'_>) -> Result<(), EngineError> {
        tracing::debug!(job_id = %job.id, program = %job.spec.program, "job submitted");
        if self.shared.store.fleet().is_some() {
            drop(place);
            return Ok(());
        }
        self.tx
            .send(Command::Enqueue(Box::new(job.clone())))
            .await
            .map_err(|_| EngineError::ShuttingDown)?;
        place.handed_over();
        Ok(())
    }

    /// Everything a submit checks before the job is stored: the spec, its secrets, its dependencies, its
    /// program and directory, what it asks of the machine; and a first look at the caps. Returns the
    /// memory request admission will reserve.
    async fn admissible(
        &self,
        spec: &JobSpec,
        submitter: Option<&crate::Submitter>,
    ) -> Result<MemoryRequest, EngineError> {
        spec.validate()?;
        for (var, name) in &spec.secrets {
            let Some(secret) = self.shared.config.secrets.get(name) else {
                return Err(EngineError::UnknownSecret {
                    var: var.clone(),
                    name: name.clone(),
                });
            };
            // `VAR=value` is one environment string at exec: refused here rather than by the kernel.
            aura_model::check_env_entry(var, secret.expose().len())?;
        }
        // The cheap refusals first: a daemon shutting down or a full queue costs no file system work.
        self.check_accepting(submitter)?;
        for &dep in &spec.after {
            match self.stored(dep).await {
                Err(EngineError::NotFound(_)) => return Err(EngineError::UnknownDependency(dep)),
                other => other.map(|_| ())?,
            }
        }
        // The working directory and the program (one blocking hop, unless the same check just passed).
        self.checks.check(spec, &self.sandbox).await?;
        crate::checks::check_inputs(spec, self.shared.config.upload_root()).await?;
        let memory_request = self.memory_request(spec).await?;
        self.shared
            .admission
            .check_capacity(
                &self
                    .shared
                    .config
                    .admission
                    .request(spec, Some(&memory_request)),
            )
            .map_err(EngineError::ExceedsCapacity)?;
        Ok(memory_request)
    }

    /// Submits a batch (see `aura_model::batch`) as one piece of work: every entry is checked as `submit`
    /// checks a job, then all are stored in one transaction and queued in order, or none is. An entry's
    /// dependencies on earlier entries become their ids. An error names the entry (`BatchEntry`).
    pub async fn submit_batch(
        &self,
        batch: Vec<aura_model::batch::BatchJob>,
        submitter: Option<&crate::Submitter>,
    ) -> Result<Vec<Job>, EngineError> {
        let result = self.submit_batch_all(batch, submitter).await;
        self.count_refusal(&result);
        result
    }

    async fn submit_batch_all(
        &self,
        batch: Vec<aura_model::batch::BatchJob>,
        submitter: Option<&crate::Submitter>,
    ) -> Result<Vec<Job>, EngineError> {
        use aura_model::batch::Dependency;
        let mut entries = Vec::with_capacity(batch.len());
        for (i, mut entry) in batch.into_iter().enumerate() {
            let mut refs = Vec::new();
            for dep in &entry.after {
                match *dep {
                    Dependency::Job(id) => entry.spec.after.push(id),
                    Dependency::Entry(earlier) => refs.push(earlier),
                }
            }
            let memory_request = self.admissible(&entry.spec, submitter).await.map_err(|e| {
                EngineError::BatchEntry {
                    entry: i + 1,
                    source: Box::new(e),
                }
            })?;
            entries.push((entry.spec, refs, Some(memory_request)));
        }
        // One place per job, all taken before anything is stored; any refusal gives the others back.
        let places = (0..entries.len())
            .map(|_| self.shared.reserve_place(submitter))
            .collect::<Result<Vec<_>, _>>()?;
        self.check_fleet_caps(submitter, places.len()).await?;
        let jobs = self
            .shared
            .store
            .insert_batch(entries, Timestamp::now(), submitter.map(|s| s.name.clone()))
            .await?;
        for (job, place) in jobs.iter().zip(places) {
            self.hand_over(job, place).await?;
        }
        Ok(jobs)
    }

    /// Fleet mode: the queue caps against the fleet's waiting jobs (every node's submits go to the one
    /// queue), for `adding` more. Counted, not reserved: submits on several nodes at the same moment
    /// may pass a cap by their own sizes.
    async fn check_fleet_caps(
        &self,
        submitter: Option<&crate::Submitter>,
        adding: usize,
    ) -> Result<(), EngineError> {
        let Some(fleet) = self.shared.store.fleet() else {
            return Ok(());
        };
        let (all, theirs) = fleet.waiting(submitter.map(|s| s.name.as_str())).await?;
        let count = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
        self.shared
            .within_caps(count(all), count(theirs), adding, submitter)
    }

    /// Refuses a submit while the daemon shuts down, the queue is full, or the submitter's share of it is
    /// (a first, cheap look: `Shared::reserve_place` decides).
    fn check_accepting(&self, submitter: Option<&crate::Submitter>) -> Result<(), EngineError> {
        let places = self.shared.places();
        self.shared.check_caps(&places, submitter)
    }

    /// The memory a new job reserves: what it states; else learned from the recorded peaks of its kind's
    /// earlier successful runs; else the configured default — never more than its hard limit, which it
    /// can never go beyond.
    async fn memory_request(&self, spec: &JobSpec) -> Result<MemoryRequest, EngineError> {
        let mut request = self.unbounded_memory_request(spec).await?;
        if let Some(limit) = spec.memory_limit() {
            request.bytes = request.bytes.min(limit);
        }
        Ok(request)
    }

    async fn unbounded_memory_request(&self, spec: &JobSpec) -> Result<MemoryRequest, EngineError> {
        let admission = &self.shared.config.admission;
        if let Some(bytes) = spec.resources.memory {
            return Ok(MemoryRequest {
                bytes,
                source: RequestSource::Stated,
            });
        }
        let Some(kind) = spec.kind() else {
            return Ok(admission.default_memory());
        };
        let peaks = self
            .shared
            .store
            .memory_peaks(kind, admission.learn_window)
            .await?;
        let learned = admission.estimator.estimate(kind, &peaks);
        // A running job of this kind over its request teaches at once, without waiting for finished runs.
        Ok(match self.shared.overrun_of(kind) {
            Some(observed) => {
                let raised = (observed as f64 * (1.0 + admission.estimator.margin.max(0.0))) as u64;
                // Never beyond what the machine offers: the job must still be admissible.
                let raised = raised.min(self.shared.admission.memory_capacity());
                if raised > learned.bytes.bytes() {
                    MemoryRequest {
                        bytes: aura_model::ByteSize(raised),
                        source: RequestSource::Overrun {
                            kind: kind.to_owned(),
                            observed_bytes: observed,
                        },
                    }
                } else {
                    learned
                }
            }
            None => learned,
        })
    }

    /// Reserves resources for work outside Aura's processes, for `spec.ttl`; refused at once (not queued)
    /// when they are not free now.
    ///
    /// In fleet mode, the slots it takes of named limits (`resources.providers`) are held fleet-wide
    /// too (`Fleet::hold_lease`, counted with every node's jobs and leases): refused when another node's
    /// work holds them.
    pub async fn acquire_lease(
        &self,
        spec: aura_model::LeaseSpec,
    ) -> Result<crate::LeaseInfo, EngineError> {
        spec.validate()?;
        let ttl = spec.ttl;
        let lease = self
            .ask(|reply| Command::AcquireLease { spec, reply })
            .await??;
        let Some(fleet) = self.fleet_limited(&lease) else {
            return Ok(lease);
        };
        let providers: Vec<String> = lease.resources.providers.iter().cloned().collect();
        let refused = match fleet.hold_lease(lease.id, &providers, ttl).await {
            Ok(None) => return Ok(lease),
            Ok(Some((name, limit))) => {
                EngineError::LeaseUnavailable(aura_admission::Shortfall::Limit {
                    name: name.into(),
                    limit,
                })
            }
            Err(e) => e.into(),
        };
        // Not held fleet-wide: not held here either.
        let _ = self
            .ask(|reply| Command::ReleaseLease {
                id: lease.id,
                reply,
            })
            .await;
        Err(refused)
    }

    /// Extends a lease by its TTL from now (in fleet mode, its slots of named limits too: a lease the
    /// fleet no longer counts — its node was declared dead meanwhile — is released here and not found).
    pub async fn renew_lease(&self, id: u64) -> Result<crate::LeaseInfo, EngineError> {
        let lease = self
            .ask(|reply| Command::RenewLease { id, reply })
            .await??;
        let Some(fleet) = self.fleet_limited(&lease) else {
            return Ok(lease);
        };
        if fleet.renew_lease(id, lease.ttl).await? {
            return Ok(lease);
        }
        let _ = self.ask(|reply| Command::ReleaseLease { id, reply }).await;
        Err(EngineError::LeaseNotFound(id))
    }

    /// Gives a lease's reservation back at once; [`EngineError::LeaseNotFound`] if it is not held.
    pub async fn release_lease(&self, id: u64) -> Result<(), EngineError> {
        self.ask(|reply| Command::ReleaseLease { id, reply })
            .await??;
        if let Some(fleet) = self.shared.store.fleet() {
            // Released here all the same: the fleet's row ends at the lease's deadline by itself.
            if let Err(error) = fleet.drop_lease(id).await {
                tracing::warn!(lease_id = id, %error, "the fleet keeps a released lease's slots until its deadline");
            }
        }
        Ok(())
    }

    /// The fleet, when `lease` holds slots of named limits and there is one.
    fn fleet_limited(&self, lease: &crate::LeaseInfo) -> Option<aura_store::Fleet> {
        if lease.resources.providers.is_empty() {
            return None;
        }
        self.shared.store.fleet()
    }

    /// Every lease held now.
    pub async fn leases(&self) -> Result<Vec<crate::LeaseInfo>, EngineError> {
        self.ask(|reply| Command::ListLeases { reply }).await
    }

    /// Sends a command to the actor and waits for its answer.
    async fn ask<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, EngineError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(command(reply))
            .await
            .map_err(|_| EngineError::ShuttingDown)?;
        rx.await.map_err(|_| EngineError::ShuttingDown)
    }

    /// The host sampler's latest snapshot (`None` only if its very first sample failed).
    pub fn host(&self) -> Option<std::sync::Arc<aura_host::HostSnapshot>> {
        self.shared.host_sampler.latest()
    }

    /// Recent host snapshots, oldest first (bounded by `host_history`).
    pub fn host_history(&self) -> Vec<std::sync::Arc<aura_host::HostSnapshot>> {
        self.shared.host_sampler.history()
    }

    /// The daemon's own process: memory, fds and their limit, threads, children, CPU.
    pub async fn process(&self) -> Result<aura_host::ProcessSnapshot, EngineError> {
        tokio::task::spawn_blocking(aura_host::process_snapshot)
            .await
            .map_err(|e| {
                EngineError::internal("reading the daemon's own process on a blocking thread", e)
            })?
            .map_err(|e| EngineError::internal("reading the daemon's own process", e))
    }

    /// The daemon's own resources against the warning thresholds.
    pub async fn diagnostics(&self) -> Result<crate::Diagnostics, EngineError> {
        let process = self.process().await?;
        let (running_jobs, _) = self.shared.counts();
        let warnings = crate::diagnostics::warnings(
            &self.shared.config.diagnostics,
            &process,
            running_jobs,
            aura_supervisor::kept_cgroup_files(),
        );
        Ok(crate::Diagnostics {
            process,
            running_jobs,
            warnings,
            tasks: Some(
                tokio::runtime::Handle::current()
                    .metrics()
                    .num_alive_tasks() as u64,
            ),
        })
    }

    /// Every janitor task's standing: last and next run, what the last run did, totals.
    pub fn janitor_status(&self) -> aura_model::janitor::JanitorStatus {
        self.shared.janitor.status(&self.shared.config.janitor)
    }

    /// Runs janitor tasks now (`request.tasks`, or every enabled one) on the janitor's thread, after
    /// whatever it is doing; a dry run changes nothing and lists what would happen.
    pub async fn janitor_run(
        &self,
        request: aura_model::janitor::RunRequest,
    ) -> Result<aura_model::janitor::RunAnswer, EngineError> {
        let (reply, answer) = oneshot::channel();
        let orders = {
            let thread = self.janitor.lock().unwrap_or_else(|p| p.into_inner());
            thread.as_ref().map(|t| t.orders.clone())
        };
        let orders = orders.ok_or(EngineError::ShuttingDown)?;
        orders
            .try_send(crate::janitor::RunOrder { request, reply })
            .map_err(|e| match e {
                std::sync::mpsc::TrySendError::Full(_) => {
                    EngineError::JanitorBusy(crate::janitor::ORDERS)
                }
                std::sync::mpsc::TrySendError::Disconnected(_) => EngineError::ShuttingDown,
            })?;
        drop(orders);
        answer.await.map_err(|_| EngineError::ShuttingDown)
    }

    /// Gives back what can be given back now, and reports the daemon before and after.
    pub async fn cleanup(&self) -> Result<crate::Cleanup, EngineError> {
        tokio::task::spawn_blocking(crate::diagnostics::cleanup)
            .await
            .map_err(|e| EngineError::internal("cleaning up on a blocking thread", e))?
            .map_err(|e| EngineError::internal("cleaning up", e))
    }

    /// Returns the allocator's free memory to the OS when it holds more than `min_free` bytes (see
    /// `diagnostics::trim_free_memory`); `aura serve` calls it periodically, so that a burst's memory does
    /// not stay with the daemon. The bytes found free, if it trimmed.
    pub async fn trim_free_memory(&self, min_free: u64) -> Option<u64> {
        tokio::task::spawn_blocking(move || crate::diagnostics::trim_free_memory(min_free))
            .await
            .ok()
            .flatten()
    }

    /// Whether the daemon can do its work now, and what degrades it.
    pub async fn readiness(&self) -> Readiness {
        let mut unhealthy = Vec::new();
        let mut degraded = Vec::new();
        if !self.shared.accepting.load(Ordering::SeqCst) {
            unhealthy.push("shutting down".to_owned());
        }
        if self.shared.draining.load(Ordering::SeqCst) {
            // Not ready for new work: a balancer sends it elsewhere; running jobs finish.
            unhealthy.push(
                "draining: an operator drained the node (nothing new starts; `aura undrain`)"
                    .to_owned(),
            );
        }
        if let Err(e) = self.shared.store.ping().await {
            unhealthy.push(format!("store unreachable: {e}"));
        }
        let store = self.shared.store.stats();
        if store.degraded {
            unhealthy.push(format!(
                "the job database cannot commit (its volume is full or failing): submissions refused, \
                 {} state changes kept in memory until it can",
                store.kept_writes
            ));
        }
        if let Some(reason) = self.shared.paused_reason() {
            degraded.push(format!("admission paused: {reason}"));
        }
        let low = self.shared.config.janitor.low_free_disk;
        let free = crate::janitor::data_volume_free(&self.shared).map(|(_, share)| share);
        if let Some(free) = free.filter(|f| *f < low) {
            let janitor = if self.shared.config.janitor.enabled {
                "the janitor's space-freeing tasks run early"
            } else {
                "the janitor is off: `aura cleanup` frees space"
            };
            degraded.push(format!(
                "disk nearly full: {:.1} % of the data dir's volume available (below {:.0} %; {janitor})",
                free * 100.0,
                low * 100.0
            ));
        }
        match self.diagnostics().await {
            Ok(d) => degraded.extend(
                d.warnings
                    .into_iter()
                    .map(|w| format!("warning: {}", w.message)),
            ),
            Err(e) => degraded.push(format!("diagnostics unavailable: {e}")),
        }
        let status = if self.is_shutting_down() {
            Health::ShuttingDown
        } else if !unhealthy.is_empty() {
            Health::Unhealthy
        } else if !degraded.is_empty() {
            Health::Degraded
        } else {
            Health::Healthy
        };
        unhealthy.extend(degraded);
        Readiness {
            status,
            reasons: unhealthy,
        }
    }

    /// Cancels a queued job at once, or stops a running one with its stop sequence.
    pub async fn cancel(&self, id: JobId) -> Result<Job, EngineError> {
        self.stop_job(id, false, None).await
    }

    /// Cancels a job on behalf of `by` (an API token's name, for the logs): a queued or held one at
    /// once, a running or paused one with its stop sequence — or, with `kill` (`aura kill`), with SIGKILL
    /// to its whole tree at once, no grace period. Either way it ends `cancelled`.
    pub async fn stop_job(
        &self,
        id: JobId,
        kill: bool,
        by: Option<String>,
    ) -> Result<Job, EngineError> {
        // Listening makes the final record of a job that never started commit at once (see
        // `actor::queue_write`); the answer waits for it, so what the operator reads next shows it.
        let mut finished = self.shared.finished.subscribe();
        match self
            .ask(|reply| Command::Cancel {
                id,
                kill,
                by,
                reply,
            })
            .await?
        {
            CancelReply::Done(job) => {
                if job.state.name() == StateName::Finished {
                    let committed = async {
                        loop {
                            match finished.recv().await {
                                Ok(done) if done != id => continue,
                                // Ours, or lagged (it may have passed), or the engine stopped.
                                _ => break,
                            }
                        }
                    };
                    let _ = tokio::time::timeout(COMMIT_WAIT, committed).await;
                }
                Ok(*job)
            }
            CancelReply::NotLive => match self.shared.store.get(id).await? {
                Some(job) => Err(EngineError::AlreadyFinished {
                    id,
                    outcome: job.outcome().map_or("finished", |o| o.name()),
                }),
                None => Err(EngineError::NotFound(id)),
            },
        }
    }

    /// Freezes a running job's whole tree (`cgroup.freeze`; SIGSTOP to every member on the fallback)
    /// and answers once it is frozen. A paused job keeps its memory reservation and gives its CPU
    /// reservation back; the time paused counts neither toward its timeout nor toward stall detection.
    pub async fn pause(&self, id: JobId, by: Option<String>) -> Result<Job, EngineError> {
        self.act(id, Operation::Pause, by).await
    }

    /// Thaws a paused job's tree and takes its CPU reservation back; answers once it runs.
    pub async fn resume(&self, id: JobId, by: Option<String>) -> Result<Job, EngineError> {
        self.act(id, Operation::Resume, by).await
    }

    /// Keeps a queued job (or one waiting for its dependencies) from starting until released.
    pub async fn hold(&self, id: JobId, by: Option<String>) -> Result<Job, EngineError> {
        self.act(id, Operation::Hold, by).await
    }

    /// Lets a held job start again: it goes back to its place in the queue (priority, then id).
    pub async fn release(&self, id: JobId, by: Option<String>) -> Result<Job, EngineError> {
        self.act(id, Operation::Release, by).await
    }

    async fn act(&self, id: JobId, op: Operation, by: Option<String>) -> Result<Job, EngineError> {
        let answer = self.ask(|reply| Command::Act { id, op, by, reply }).await?;
        self.not_live(id, op.action(), answer).await
    }

    /// The job once the action's write is committed. The actor answers `NotFound` for a job it does not
    /// hold: it may be finished.
    async fn not_live(
        &self,
        id: JobId,
        action: JobAction,
        answer: Result<crate::protocol::Acted, EngineError>,
    ) -> Result<Job, EngineError> {
        match answer {
            Ok(acted) => {
                acted.committed.await?;
                Ok(acted.job)
            }
            Err(EngineError::NotFound(_)) => match self.shared.store.get(id).await? {
                Some(job) => Err(EngineError::InvalidState {
                    id,
                    state: job.state.name().as_str(),
                    action,
                }),
                None => Err(EngineError::NotFound(id)),
            },
            Err(e) => Err(e),
        }
    }

    /// Gives a job that has not started (queued, held, or waiting for its dependencies) a new priority:
    /// it moves in the queue at once (higher first, then by id).
    pub async fn set_priority(
        &self,
        id: JobId,
        priority: i32,
        by: Option<String>,
    ) -> Result<Job, EngineError> {
        let answer = self
            .ask(|reply| Command::SetPriority {
                id,
                priority,
                by,
                reply,
            })
            .await?;
        self.not_live(id, JobAction::Priority, answer).await
    }

    /// Submits a finished job's spec again as a new job on behalf of `submitter`, checked as any submit
    /// is; both records show the link (`retry_of`, `retried_as`) and the old job's log a `retried` event.
    pub async fn retry(
        &self,
        id: JobId,
        submitter: Option<&crate::Submitter>,
    ) -> Result<Job, EngineError> {
        let old = self.stored(id).await?;
        if old.state.name() != StateName::Finished {
            return Err(EngineError::InvalidState {
                id,
                state: old.state.name().as_str(),
                action: JobAction::Retry,
            });
        }
        let spec = old.spec;
        let checked = self.admissible(&spec, submitter).await;
        self.count_refusal(&checked);
        let memory_request = checked?;
        let place = self.shared.reserve_place(submitter);
        self.count_refusal(&place);
        let place = place?;
        let by = submitter.map(|s| s.name.clone());
        let job = self
            .shared
            .store
            .insert_retry(spec, Timestamp::now(), Some(memory_request), by.clone(), id)
            .await?;
        tracing::info!(job_id = %id, retry = %job.id, "job retried as a new job");
        self.hand_over(&job, place).await?;
        let action = aura_model::EngineEvent::OperatorAction {
            action: JobAction::Retry,
            job_id: id,
            by,
            detail: Some(format!("as job {}", job.id)),
        };
        // The engine's log is a record, not the retry: a failure to send means a shutdown began.
        let _ = self.tx.send(Command::EngineEvent(action)).await;
        Ok(job)
    }

    /// Cancels (or with `kill`, kills) every unfinished job `selection` picks — by state and labels;
    /// with `only_of`, that token's own jobs only — and returns the ids it acted on, in order. Jobs that
    /// end meanwhile are skipped. In fleet mode, `reach` says which: with `Reach::Fleet`, the jobs this
    /// node holds and those still in the fleet's queue (claimed here to be stopped), and the other live
    /// nodes holding picked jobs are returned for the caller to ask; with `Reach::HeldHere` (a request
    /// another node sent on), only the jobs this node holds.
    pub async fn cancel_where(
        &self,
        selection: &Selection,
        kill: bool,
        only_of: Option<&str>,
        by: Option<String>,
        reach: Reach,
    ) -> Result<Cancelled, EngineError> {
        let mut done = Cancelled::default();
        let here = self.shared.store.fleet().map(|f| f.node().name.clone());
        for job in self.select(selection).await? {
            if only_of.is_some_and(|name| job.submitted_by.as_deref() != Some(name)) {
                continue;
            }
            if let Some(here) = &here {
                if job.node.as_deref() != Some(here.as_str()) {
                    if reach == Reach::HeldHere {
                        continue;
                    }
                    if let Some(node) = self.locate(job.id).await? {
                        if !done.elsewhere.iter().any(|n| n.id == node.id) {
                            done.elsewhere.push(node);
                        }
                        continue;
                    }
                }
            }
            match self.stop_job(job.id, kill, by.clone()).await {
                Ok(_) => done.ids.push(job.id),
                Err(EngineError::AlreadyFinished { .. } | EngineError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }

    /// The unfinished jobs `selection` picks, oldest first (for a count before acting on them).
    pub async fn select(&self, selection: &Selection) -> Result<Vec<Job>, EngineError> {
        let states: Vec<StateName> = if selection.states.is_empty() {
            StateName::ALL
                .into_iter()
                .filter(|s| *s != StateName::Finished)
                .collect()
        } else {
            selection
                .states
                .iter()
                .copied()
                .filter(|s| *s != StateName::Finished)
                .collect()
        };
        let mut picked = Vec::new();
        if states.is_empty() {
            return Ok(picked);
        }
        let mut filter = ListFilter {
            states,
            labels: Vec::new(),
            after: None,
            limit: 1000,
            newest_first: false,
        };
        loop {
            let page = self.shared.store.list(filter.clone()).await?;
            let Some(last) = page.last().map(|j| j.id) else {
                break;
            };
            picked.extend(page.into_iter().filter(|job| {
                selection
                    .labels
                    .iter()
                    .all(|(k, v)| job.spec.labels.get(k) == Some(v))
            }));
            filter.after = Some(last);
        }
        Ok(picked)
    }

    /// Drains the node (`true`: nothing new starts, running jobs finish; kept across restarts) or
    /// undrains it. Returns whether that changed anything.
    pub async fn drain(&self, on: bool, by: Option<String>) -> Result<bool, EngineError> {
        self.ask(|reply| Command::Drain { on, by, reply }).await
    }

    /// Fleet mode: every node of the fleet, this one marked; `None` on a single node.
    pub async fn nodes(&self) -> Result<Option<Vec<aura_model::NodeView>>, EngineError> {
        match self.shared.store.fleet() {
            Some(fleet) => Ok(Some(fleet.nodes().await?)),
            None => Ok(None),
        }
    }

    /// Fleet mode: publishes the API tokens this node accepts (hashes only) for the other nodes to
    /// accept too; nothing on a single node.
    pub async fn publish_tokens(
        &self,
        tokens: Vec<aura_store::FleetToken>,
    ) -> Result<(), EngineError> {
        if let Some(fleet) = self.shared.store.fleet() {
            fleet.publish_tokens(&tokens).await?;
        }
        Ok(())
    }

    /// Fleet mode: the API tokens the other nodes published (hashes); empty on a single node.
    pub async fn fleet_tokens(&self) -> Result<Vec<aura_store::FleetToken>, EngineError> {
        match self.shared.store.fleet() {
            Some(fleet) => Ok(fleet.tokens().await?),
            None => Ok(Vec::new()),
        }
    }

    /// Where an action on job `id` (its logs, files, a cancel, a pause …) must be done. `Some(node)`: on
    /// another node that holds it and is up (the caller forwards the request there); `None`: here — a
    /// single node, a job this node holds, one no live node holds (finished, unknown), or one still
    /// unclaimed in the fleet's queue, which this node then claims so that the action happens here.
    pub async fn locate(&self, id: JobId) -> Result<Option<aura_model::NodeView>, EngineError> {
        let Some(fleet) = self.shared.store.fleet() else {
            return Ok(None);
        };
        if let Some(owner) = fleet.owner(id).await? {
            // A job another live node holds or ran: its tree, logs and files are there.
            let remote =
                !owner.this_node && owner.state == aura_model::NodeState::Up && owner.url.is_some();
            return Ok(remote.then_some(owner));
        }
        if let Some(job) = fleet.claim_one(id).await? {
            let (reply, done) = oneshot::channel();
            self.tx
                .send(Command::Claimed {
                    jobs: vec![job],
                    reply,
                })
                .await
                .map_err(|_| EngineError::ShuttingDown)?;
            let _ = done.await;
        }
        Ok(None)
    }

    /// The stored job, or `NotFound`.
    async fn stored(&self, id: JobId) -> Result<Job, EngineError> {
        self.shared
            .store
            .get(id)
            .await?
            .ok_or(EngineError::NotFound(id))
    }

    /// One job with its live usage (while it runs) or why it waits (while queued); `NotFound` if unknown.
    pub async fn get(&self, id: JobId) -> Result<JobView, EngineError> {
        let job = self.stored(id).await?;
        Ok(self.view(job))
    }

    /// One page of jobs matching `filter`, each as [`get`](Self::get) shows it.
    pub async fn list(&self, filter: ListFilter) -> Result<Vec<JobView>, EngineError> {
        Ok(self
            .shared
            .store
            .list(filter)
            .await?
            .into_iter()
            .map(|j| self.view(j))
            .collect())
    }

    /// The engine's own decisions (admission paused/resumed, memory critical, pressure victims), oldest
    /// first, after sequence number `after`, at most `limit` (≤ 1000).
    pub async fn engine_events(
        &self,
        after: i64,
        limit: u32,
    ) -> Result<Vec<aura_model::EngineEventRecord>, EngineError> {
        Ok(self.shared.store.engine_events(after, limit).await?)
    }

    /// One job's recorded events (state changes and what caused them), oldest first; `NotFound` if unknown.
    pub async fn events(&self, id: JobId) -> Result<Vec<JobEventRecord>, EngineError> {
        self.stored(id).await?;
        Ok(self.shared.store.events(id).await?)
    }

    /// Reads captured output of one attempt (the latest by default) from a logical byte offset.
    pub async fn logs(
        &self,
        id: JobId,
        stream: Stream,
        attempt: Option<u32>,
        offset: u64,
        max: usize,
    ) -> Result<LogChunk, EngineError> {
        let job = self.stored(id).await?;
        let dir = self.shared.log_dir(id, attempt.unwrap_or(job.attempt));
        let chunk = tokio::task::spawn_blocking(move || aura_logs::read(&dir, stream, offset, max))
            .await
            .map_err(|e| EngineError::internal("reading a job's log on a blocking thread", e))??;
        Ok(chunk)
    }

    /// Starts an upload into `uploads/` (see `files::UploadSink`): refused at once when the size the
    /// client declared is over the cap (the configured one, or `client_max` if smaller) or the data
    /// volume has no room for it and `uploads.min_free` besides.
    pub async fn begin_upload(
        &self,
        declared_len: Option<u64>,
        client_max: Option<u64>,
    ) -> Result<crate::UploadSink, EngineError> {
        let config = &self.shared.config.uploads;
        let max = client_max.map_or(config.max_bytes, |c| c.min(config.max_bytes));
        let (root, min_free) = (self.shared.config.upload_root(), config.min_free_bytes);
        tokio::task::spawn_blocking(move || {
            crate::UploadSink::begin(&root, declared_len, max, min_free)
        })
        .await
        .map_err(|e| EngineError::internal("starting an upload on a blocking thread", e))?
    }

    /// The files of a job: its working directory, or the janitor's archive of it. `NotFound` for an
    /// unknown job, `NoFiles` (saying why) for one without either.
    pub async fn job_files(&self, id: JobId) -> Result<aura_model::files::JobFiles, EngineError> {
        let job = self.stored(id).await?;
        let (work, archive) = (
            self.shared.config.work_root(),
            self.shared.config.archive_root(),
        );
        tokio::task::spawn_blocking(move || {
            let place = crate::files::locate(&job, &work, &archive)?;
            crate::files::list(job.id, &place)
        })
        .await
        .map_err(|e| EngineError::internal("listing a job's files on a blocking thread", e))?
    }

    /// Opens one of a job's files by its path relative to the job's directory: a regular file reached
    /// without passing a symlink (`PathRefused` otherwise), or a regular member of its archive.
    pub async fn open_job_file(
        &self,
        id: JobId,
        path: &str,
    ) -> Result<crate::JobFile, EngineError> {
        crate::files::check_path(path).map_err(|reason| EngineError::PathRefused {
            path: path.chars().take(200).collect(),
            reason,
        })?;
        let job = self.stored(id).await?;
        let (work, archive) = (
            self.shared.config.work_root(),
            self.shared.config.archive_root(),
        );
        let locate = move || crate::files::locate(&job, &work, &archive);
        let place = tokio::task::spawn_blocking(locate).await.map_err(|e| {
            EngineError::internal("finding a job's files on a blocking thread", e)
        })??;
        let readers = Some(self.archive_readers.clone());
        crate::files::open(id, place, path.to_owned(), readers).await
    }

    /// Waits up to `timeout` for the job to reach a final state and returns it as it is then.
    pub async fn wait(&self, id: JobId, timeout: Duration) -> Result<JobView, EngineError> {
        // Subscribe before reading, so that a job finishing in between is not missed. In fleet mode
        // the job may end on another node: its `finished` event, committed there, is watched for too
        // (only while someone waits: the store reads other nodes' events only for subscribers).
        let mut finished = self.shared.finished.subscribe();
        let mut committed = self
            .shared
            .store
            .fleet()
            .map(|_| self.shared.store.subscribe());
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let view = self.get(id).await?;
            if view.job.state.name() == StateName::Finished {
                return Ok(view);
            }
            // `Some(true)`: the stream closed (the store is closing), it is not watched again.
            let elsewhere = async {
                match committed.as_mut() {
                    Some(events) => loop {
                        match events.recv().await {
                            Ok(e)
                                if e.log == aura_model::EventLog::Job(id)
                                    && e.kind == "finished" =>
                            {
                                break false
                            }
                            Ok(_) => {}
                            // It may have passed: re-read and see.
                            Err(broadcast::error::RecvError::Lagged(_)) => break false,
                            Err(broadcast::error::RecvError::Closed) => break true,
                        }
                    },
                    None => std::future::pending().await,
                }
            };
            // `true`: the engine stopped, nothing more will be announced.
            let here = async {
                loop {
                    match finished.recv().await {
                        Ok(done) if done != id => continue,
                        // Ours, or we lagged and may have missed it: re-read the store.
                        Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => break false,
                        Err(broadcast::error::RecvError::Closed) => break true,
                    }
                }
            };
            // (whether the engine stopped, whether the other nodes' stream closed)
            let ended = async {
                tokio::select! {
                    gone = elsewhere => (false, gone),
                    closed = here => (closed, false),
                }
            };
            match tokio::time::timeout_at(deadline, ended).await {
                Ok((false, gone)) => {
                    if gone {
                        committed = None;
                    }
                }
                Ok((true, _)) | Err(_) => return self.get(id).await,
            }
        }
    }

    /// The engine's backend, whether it accepts jobs, its running and queued counts, why admission is
    /// paused, the store's health and the latest quarantined jobs.
    pub async fn status(&self) -> Result<EngineStatus, EngineError> {
        let (running, queued) = self.shared.counts();
        let store = self.shared.store.stats();
        Ok(EngineStatus {
            backend: self.shared.supervisor.backend(),
            backend_detail: self.shared.supervisor.description(),
            accepting: self.shared.accepting.load(Ordering::SeqCst),
            max_concurrent: self.shared.config.max_concurrent,
            running,
            queued,
            paused: self.shared.paused_reason(),
            store_degraded: store.degraded,
            kept_writes: store.kept_writes,
            quarantined: self.shared.store.quarantined(QUARANTINED_SHOWN).await?,
            draining: self.shared.draining.load(Ordering::SeqCst),
            paused_jobs: self.shared.paused_count.load(Ordering::Relaxed),
            held: self.shared.held_count.load(Ordering::Relaxed),
            throttled: self
                .shared
                .throttled
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        })
    }

    /// Cuts every stop sequence short and kills every running tree (a second signal, the shutdown
    /// deadline). Jobs end as their stop reason says (a shutdown: interrupted).
    pub fn kill_all(&self) {
        self.shared.kill_trees.send_replace(true);
    }

    /// Whether a shutdown has begun (submissions refused, jobs being stopped).
    pub fn is_shutting_down(&self) -> bool {
        !self.shared.accepting.load(Ordering::SeqCst)
    }

    /// The shutdown protocol: stop admitting, stop every running tree with its stop sequence (all of
    /// them killed once `shutdown_grace` has passed), record the outcomes (requeuing per config), then
    /// close the store and the supervisor. Idempotent.
    pub async fn shutdown(&self) -> Result<(), EngineError> {
        // Event streams end now, not when the server gives up on them.
        self.shared.closing.send_replace(true);
        let actor = self.actor.lock().unwrap_or_else(|p| p.into_inner()).take();
        let Some(actor) = actor else { return Ok(()) };
        let (reply, mut rx) = oneshot::channel();
        if self.tx.send(Command::Shutdown { reply }).await.is_ok() {
            let grace = self.shared.config.shutdown_grace;
            tokio::select! {
                _ = &mut rx => {}
                () = tokio::time::sleep(grace) => {
                    tracing::warn!(?grace, "shutdown grace over: killing every job tree");
                    self.kill_all();
                    let _ = rx.await;
                }
            }
        }
        actor
            .await
            .map_err(|e| EngineError::internal("the engine actor failed", e))?;
        let feed = self.feed.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(feed) = feed {
            let _ = feed.await;
        }
        let guards = self.guards.lock().unwrap_or_else(|p| p.into_inner()).take();
        let warnings = self
            .warnings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let janitor = self
            .janitor
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let host = self.shared.host_sampler.clone();
        let _ = tokio::task::spawn_blocking(move || {
            if let Some(janitor) = janitor {
                janitor.stop();
            }
            if let Some(guards) = guards {
                guards.stop();
            }
            if let Some(warnings) = warnings {
                warnings.stop();
            }
            host.stop();
        })
        .await;
        self.shared.supervisor.shutdown().await;
        let fleet = self.fleet.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some((task, stop)) = fleet {
            stop.send_replace(true);
            let _ = task.await;
            if let Some(fleet) = self.shared.store.fleet() {
                // The writes still queued (the last jobs' requeues and ends) are committed first: a
                // node marked `left` with a job still recorded running would have it rescued, and its
                // own write of that job fenced.
                let flushed = async { self.shared.store.flush().await?.await };
                if let Err(e) = flushed.await {
                    tracing::warn!(error = %e, "cannot flush this node's writes before leaving the fleet");
                }
                // What this node claimed and did not run goes back to the fleet's queue at once.
                match fleet.leave().await {
                    Ok(released) => tracing::info!(released, "left the fleet"),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot leave the fleet cleanly; its jobs are rescued after the heartbeat timeout")
                    }
                }
            }
        }
        self.shared.store.close().await?;
        Ok(())
    }

    fn view(&self, job: Job) -> JobView {
        let live = match job.state.name() {
            StateName::Running | StateName::Paused | StateName::Stopping => {
                self.shared.probe(job.id).map(|p| p.live())
            }
            _ => None,
        };
        let waiting = match job.state.name() {
            StateName::Queued => Some(self.waiting_reason(&job)),
            StateName::Held => {
                Some("held by an operator: starts once released (aura release)".into())
            }
            _ => None,
        };
        JobView { job, live, waiting }
    }

    fn waiting_reason(&self, job: &Job) -> String {
        if let Some(pending) = self.shared.dependencies(job.id) {
            let ids: Vec<String> = pending.iter().map(ToString::to_string).collect();
            return format!("waiting for job {} to succeed (after)", ids.join(", "));
        }
        if self.shared.draining.load(Ordering::SeqCst) {
            return "the node is drained: nothing new starts until `aura undrain`".to_owned();
        }
        if let Some(reason) = self.shared.paused_reason() {
            return format!("admission paused: {reason}");
        }
        if let Some(until) = self.shared.held_until(job.id) {
            return format!(
                "stopped for memory pressure: waits out the victim cooldown ({:.0} s left)",
                until
                    .saturating_duration_since(std::time::Instant::now())
                    .as_secs_f64()
            );
        }
        let request = self
            .shared
            .config
            .admission
            .request(&job.spec, job.memory_request.as_ref());
        match aura_admission::Scheduler::explain(
            &self.shared.admission,
            &request,
            std::time::Instant::now(),
        ) {
            Some(shortfall) => shortfall.to_string(),
            None => {
                // Jobs only: leases hold reservations but no job slot.
                let (running, _) = self.shared.counts();
                if running >= self.shared.config.max_concurrent {
                    format!(
                        "waiting for a job slot: {} of max_concurrent {} running",
                        running, self.shared.config.max_concurrent
                    )
                } else {
                    "waiting behind jobs ahead of it in the queue".to_owned()
                }
            }
        }
    }

    /// What admission has and what is reserved: capacity, reservations, running slots.
    pub async fn utilization(&self) -> Result<Utilization, EngineError> {
        let (running, queued) = self.shared.counts();
        let usage = self.shared.admission.usage();
        let config = &self.shared.config;
        let per_default =
            usage.capacity.memory_bytes / config.admission.estimator.default_bytes.max(1);
        Ok(Utilization {
            available_memory_bytes: usage
                .capacity
                .memory_bytes
                .saturating_sub(usage.reserved_memory_bytes),
            reserved_memory_bytes: usage.reserved_memory_bytes,
            reserved_cpu_cores: usage.reserved_cpu_millis as f64 / 1000.0,
            reserved_disk_bytes: usage.reserved_disk_bytes,
            capacity: usage.capacity,
            running,
            queued,
            max_concurrent: config.max_concurrent,
            available_slots: config.max_concurrent.saturating_sub(running),
            max_jobs_at_default_request: per_default.min(config.max_concurrent as u64),
            limits: usage
                .limits
                .into_iter()
                .map(|(name, (in_use, c))| {
                    (
                        name,
                        LimitUse {
                            in_use,
                            max_concurrent: c.max_concurrent,
                            per_minute: c.per_minute,
                        },
                    )
                })
                .collect(),
            host: *self
                .shared
                .guard_reading
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
            admission_paused: self.shared.paused_reason().is_some(),
            paused_reason: self.shared.paused_reason(),
            memory_critical: self.shared.memory.critical.load(Ordering::Relaxed),
            memory_limit_kills: self.shared.memory.limit_exceeded.load(Ordering::Relaxed),
            oom_kills: self.shared.memory.oom_killed.load(Ordering::Relaxed),
            pressure_victims: self.shared.memory.pressure_victims.load(Ordering::Relaxed),
        })
    }
}

/// A place a submit holds; given back when dropped unless handed over to the actor with its job.
#[must_use]
pub(crate) struct Place<'a> {
    shared: &'a Shared,
    submitter: Option<&'a str>,
}

impl Place<'_> {
    pub(crate) fn handed_over(self) {
        std::mem::forget(self);
    }
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        self.shared.places().give_back(self.submitter);
    }
}

// Lock order: `places`, then the actor's per-submitter counts (`Shared::queued_by`).
impl Shared {
    fn places(&self) -> std::sync::MutexGuard<'_, Places> {
        // Plain counters, consistent between statements: a panicking holder left nothing half done.
        self.places.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The caps against what waits (as the actor counted it) plus the places submits hold.
    fn check_caps(
        &self,
        places: &Places,
        submitter: Option<&crate::Submitter>,
    ) -> Result<(), EngineError> {
        if !self.accepting.load(Ordering::SeqCst) {
            return Err(EngineError::ShuttingDown);
        }
        let all = self.queued_count.load(Ordering::Relaxed) + places.total;
        // Counted only where a cap reads it: a submit without one skips the map.
        let theirs = match submitter {
            Some(s) if s.max_queued.is_some() => {
                self.queued_by(&s.name) + places.by.get(&s.name).copied().unwrap_or(0)
            }
            _ => 0,
        };
        self.within_caps(all, theirs, 1, submitter)
    }

    /// Whether `adding` more jobs fit the queue caps, with `all` waiting and `theirs` of them the
    /// submitter's.
    pub(crate) fn within_caps(
        &self,
        all: usize,
        theirs: usize,
        adding: usize,
        submitter: Option<&crate::Submitter>,
    ) -> Result<(), EngineError> {
        let cap = self.config.admission.queue_cap;
        if all.saturating_add(adding) > cap {
            return Err(EngineError::QueueFull { queued: all, cap });
        }
        if let Some(crate::Submitter {
            name,
            max_queued: Some(cap),
        }) = submitter
        {
            if theirs.saturating_add(adding) > *cap {
                return Err(EngineError::SubmitterQueueFull {
                    submitter: name.clone(),
                    queued: theirs,
                    cap: *cap,
                });
            }
        }
        Ok(())
    }

    /// Checks the caps and takes a place under them, in one step.
    pub(crate) fn reserve_place<'a>(
        &'a self,
        submitter: Option<&'a crate::Submitter>,
    ) -> Result<Place<'a>, EngineError> {
        let mut places = self.places();
        self.check_caps(&places, submitter)?;
        places.total += 1;
        if let Some(s) = submitter {
            // Counted whatever the cap: the actor gives back by the job's submitter name alone.
            crate::shared::count_up(&mut places.by, &s.name);
        }
        Ok(Place {
            shared: self,
            submitter: submitter.map(|s| s.name.as_str()),
        })
    }

    /// For the actor: `enqueue` counts a submitted job into the queue, and its place is given back in the
    /// same step (under the lock the caps are checked under), so no check counts the job twice or not
    /// at all. The place is given back whether or not `enqueue` queued it.
    pub(crate) fn enter_reserved<R>(
        &self,
        submitter: Option<&str>,
        enqueue: impl FnOnce() -> R,
    ) -> R {
        let mut places = self.places();
        let result = enqueue();
        places.give_back(submitter);
        result
    }
}

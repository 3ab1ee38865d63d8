//! A job's way through the actor: its launch, its start, stop requests and cancels, its end (requeue or
//! final), and the store writes that record each step.

use super::*;

impl Actor {
    pub(super) fn launch(
        &mut self,
        job: Job,
        request: Request,
        reservation: Reservation,
        standby: bool,
    ) {
        let mut spec = job.spec.clone();
        if !reservation.gpus().is_empty() {
            // The job sees only the devices it was granted (CUDA, NVENC through FFmpeg's -hwaccel).
            let devices: Vec<String> = reservation.gpus().iter().map(u32::to_string).collect();
            spec.env
                .insert("CUDA_VISIBLE_DEVICES".into(), devices.join(","));
        }
        let media = crate::media::plan(&spec);
        if let Some((k, v)) = media.env {
            spec.env.insert(k, v);
        }
        let id = job.id;
        let (stop_tx, stop_rx) = watch::channel(None);
        let (kill_tx, kill_rx) = watch::channel(false);
        let (control_tx, control_rx) = mpsc::channel(crate::monitor::CONTROL_CAPACITY);
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
            args: media.args,
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
            inputs: spec
                .inputs
                .iter()
                .map(|(name, upload)| (self.shared.upload_path(upload), name.clone()))
                .collect(),
            log_dir: self.shared.log_dir(id, job.attempt),
            memory_limit: spec.memory_limit().map(|l| l.bytes()),
            ticket: ticket.clone(),
            progress: media.progress,
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
            probe_inputs: media.probe_inputs,
            actor: self.tx.clone(),
            control: control_rx,
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
                reservation,
                stop: stop_tx,
                kill: kill_tx,
                control: control_tx,
                pending_stop: None,
                ticket,
                standby,
            },
        );
        self.publish_counts();
    }

    pub(super) async fn started(&mut self, id: JobId, run: Run) {
        if self.lost.contains(&id) {
            // Its kill is on the way; another node holds the job.
            return;
        }
        let Some(active) = self.active.get_mut(&id) else {
            return;
        };
        let logged = JobEvent::Started {
            pid: run.tree.pid,
            backend: run.tree.backend,
            cgroups: run.tree.cgroups.clone(),
            cwd: run.cwd.clone(),
        };
        let queued_since = match &active.job.state {
            JobState::Queued { since } => Some(*since),
            _ => None,
        };
        let started_at = run.started_at;
        if let Err(e) = active.job.apply(Event::Started { run }) {
            tracing::error!(job_id = %id, error = %e, "illegal transition");
            return;
        }
        if let Some(since) = queued_since {
            let waited = (started_at.unix_millis() - since.unix_millis()).max(0) as f64 / 1000.0;
            self.shared.job_metrics.started(&active.job.spec, waited);
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

    /// Marks a live job as stopping and tells its monitor. A job still launching is stopped as soon as it has
    /// started; a queued job that is cancelled finishes at once.
    pub(super) async fn request_stop(&mut self, id: JobId, reason: StopReason) {
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

    /// An operator's cancel (or with `kill`, kill: SIGKILL to the tree at once) of a job: one that never
    /// started finishes at once, a running or paused one is stopped.
    pub(super) async fn cancel(
        &mut self,
        id: JobId,
        kill: bool,
        by: Option<String>,
    ) -> CancelReply {
        let (reason, action) = if kill {
            (StopReason::Killed, aura_model::JobAction::Kill)
        } else {
            (StopReason::Cancelled, aura_model::JobAction::Cancel)
        };
        let never_started = self
            .dequeue(id)
            .map(|(job, _)| job)
            .or_else(|| self.leave_waiting(id))
            .or_else(|| self.leave_hold(id))
            .or_else(|| self.withdraw(id).map(|standby| standby.job));
        if let Some(mut job) = never_started {
            if job
                .apply(Event::StopRequested {
                    reason,
                    at: Timestamp::now(),
                })
                .is_err()
            {
                return CancelReply::NotLive;
            }
            tracing::info!(job_id = %id, "cancelled a job that had not started");
            // Final like any other ending: waiters hear of it once the commit is done.
            let events = vec![
                NewEvent::new(JobEvent::StopRequested { reason }),
                NewEvent::new(JobEvent::Finished {
                    outcome: job.outcome().cloned(),
                }),
            ];
            self.persist_final(&job, events).await;
            self.operator_action(action, id, by, None).await;
            self.ended_chain(id, false, Outcome::Cancelled.name().to_owned())
                .await;
            return CancelReply::Done(Box::new(job));
        }
        if let Some(active) = self.active.get(&id) {
            if kill {
                // Seen by the monitor before the stop itself: it kills instead of its stop sequence.
                active.kill.send_replace(true);
            }
            self.request_stop(id, reason).await;
            if let Some(active) = self.active.get(&id) {
                let job = active.job.clone();
                self.operator_action(action, id, by, None).await;
                return CancelReply::Done(Box::new(job));
            }
        }
        CancelReply::NotLive
    }

    /// Applies the event that ends an attempt, requeues per policy, persists, and starts the next job.
    pub(super) async fn finish(&mut self, id: JobId, event: Event, mut events: Vec<NewEvent>) {
        self.shared.ended_attempts.fetch_add(1, Ordering::Relaxed);
        self.shared.claim_now.notify_one();
        if self.drop_lost(id) {
            self.dispatch().await;
            return;
        }
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
        if let JobState::Finished(f) = &job.state {
            if let Some(run) = &f.run {
                // Every attempt that ran, requeued or final: its wall time as measured, else its span.
                let seconds = f.accounting.wall_secs.unwrap_or_else(|| {
                    (f.finished_at.unix_millis() - run.started_at.unix_millis()).max(0) as f64
                        / 1000.0
                });
                let peak = f.accounting.memory_peak.map(|p| p.bytes());
                self.shared.job_metrics.ran(&job.spec, seconds, peak);
            }
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
            self.ended_chain(
                id,
                outcome.as_ref().is_some_and(Outcome::is_success),
                outcome.as_ref().map_or("unknown", Outcome::name).to_owned(),
            )
            .await;
        }
        self.dispatch().await;
    }

    pub(super) async fn monitor_ended(
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
    pub(super) async fn persist(&self, job: &Job, events: Vec<NewEvent>) {
        queue_write(&self.shared, job, events, Commit::Soon, false).await;
    }

    /// `persist` of a live job, in place (no copy of the job to get around the borrow of `self`).
    pub(super) async fn persist_active(&self, id: JobId, events: Vec<NewEvent>, commit: Commit) {
        if let Some(active) = self.active.get(&id) {
            queue_write(&self.shared, &active.job, events, commit, false).await;
        }
    }

    /// Like `persist` for a job that reached its final state: waiters are told once the commit is done,
    /// so that what they read next is the final record.
    /// Every final state passes here, so this is where `aura_jobs_finished_total` counts it.
    pub(super) async fn persist_final(&self, job: &Job, events: Vec<NewEvent>) {
        if let Some(outcome) = job.outcome() {
            self.shared.job_metrics.finished(&job.spec, outcome);
        }
        queue_write(&self.shared, job, events, Commit::Soon, true).await;
    }
}

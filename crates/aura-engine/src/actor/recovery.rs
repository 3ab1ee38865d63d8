//! Crash recovery, before the actor accepts anything: kill what a dead predecessor left, record its jobs
//! interrupted (or quarantined), requeue them per their retry policy.

use super::*;

impl Actor {
    /// Runs before the actor accepts anything: kills whatever a dead predecessor left running, marks those
    /// jobs interrupted (requeuing them per their retry policy) and rebuilds the queue.
    pub(super) async fn recover(&mut self) -> Result<(), EngineError> {
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
        self.take_back(unfinished, Some(report)).await
    }

    /// Takes unfinished jobs this node holds into its live state: whatever had started is recorded
    /// interrupted (and requeued per its retry policy, or quarantined after a crash loop), the rest is
    /// queued, parked behind its dependencies or held. `report`: what recovery killed, at a start-up;
    /// `None` when a fleet node takes back its jobs after losing its leases (its trees are already gone,
    /// and losing a lease is no crash of the job's doing).
    pub(super) async fn take_back(
        &mut self,
        unfinished: Vec<Job>,
        report: Option<aura_model::events::RecoveryReport>,
    ) -> Result<(), EngineError> {
        let crash = report.is_some();
        let foreign = self.shared.config.foreign_trees && crash;
        let now = Timestamp::now();
        let quarantine_after = self.shared.config.quarantine_after;
        for mut job in unfinished {
            // Held jobs stay held; whatever had started (running, paused, stopping) was interrupted.
            if job.state.run().is_some() {
                let deaths = if crash {
                    job.interruptions.saturating_add(1)
                } else {
                    job.interruptions
                };
                let quarantine =
                    crash && !foreign && quarantine_after > 0 && deaths >= quarantine_after;
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
                } else if crash {
                    "daemon died while the job ran".to_owned()
                } else {
                    "this node lost its fleet lease while the job ran".to_owned()
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
                    recovery: report,
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
                if let Some(outcome) = job.outcome() {
                    self.shared.job_metrics.finished(&job.spec, outcome);
                }
            }
            if matches!(job.state, JobState::Held { .. }) {
                self.count_waiting(&job, true);
                self.on_hold.insert(job.id, job);
                self.publish_counts();
            } else if matches!(job.state, JobState::Queued { .. }) && job.spec.after.is_empty() {
                self.enqueue(job);
            } else if matches!(job.state, JobState::Queued { .. }) {
                let id = job.id;
                self.park(job);
                self.resolve_dependencies(id).await;
            }
        }
        Ok(())
    }
}

//! Memory protection in the actor: the pressure responder's victim, memory violations of a tree, and the
//! engine's event log.

use super::*;

impl Actor {
    /// Stage 2 of memory protection: chooses a victim among the running jobs (ranking in
    /// `crate::pressure`), stops it with its stop sequence, and records the decision with its figures.
    pub(super) async fn pressure_victim(
        &mut self,
        reason: &str,
        reading: crate::guards::Reading,
        kill: bool,
    ) -> Option<JobId> {
        let candidates: Vec<crate::pressure::Candidate> = self
            .active
            .values()
            .filter_map(|a| match &a.job.state {
                // A paused job holds its memory too; stopping it thaws it first.
                JobState::Running { run } | JobState::Paused { run, .. } => {
                    Some(crate::pressure::Candidate {
                        id: a.job.id,
                        priority: a.job.spec.priority,
                        started_at_ms: run.started_at.unix_millis(),
                        memory_bytes: self
                            .shared
                            .probe(a.job.id)
                            .and_then(|p| p.live().memory_used()),
                        reserved_bytes: a.request.memory_bytes,
                    })
                }
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
    pub(super) async fn engine_event(&mut self, event: EngineEvent) {
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
    pub(super) async fn memory_violation(
        &mut self,
        id: JobId,
        violation: aura_supervisor::MemoryViolation,
    ) {
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
}

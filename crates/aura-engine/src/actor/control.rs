//! An operator's control of jobs and of the node: pause and resume (the monitor freezes the tree, this
//! records it and moves the CPU reservation), hold and release, a new priority, and drain. Each action is
//! an event in the job's log and in the engine's.

use super::*;
use crate::monitor::Control;
use crate::protocol::{ActReply, Acted, Operation};
use aura_model::JobAction;

/// The node setting that keeps a drain across restarts.
const DRAINED: &str = "drained";

impl Actor {
    /// Pause, resume, hold or release of one job. A job the actor does not hold is answered `NotFound`,
    /// which the handle turns into the stored job's state.
    pub(super) async fn act(
        &mut self,
        id: JobId,
        op: Operation,
        by: Option<String>,
        reply: ActReply,
    ) {
        let result = match op {
            // Answered by `frozen` once the monitor has done it.
            Operation::Pause => return self.forward(id, true, by, reply),
            Operation::Resume => return self.forward(id, false, by, reply),
            Operation::Hold => self.hold(id, by).await,
            Operation::Release => self.release(id, by).await,
        };
        let _ = reply.send(result);
    }

    /// Hands a pause or resume to the job's monitor; a job in another state is refused here.
    fn forward(&mut self, id: JobId, pause: bool, by: Option<String>, reply: ActReply) {
        let action = if pause {
            JobAction::Pause
        } else {
            JobAction::Resume
        };
        let Some(active) = self.active.get(&id) else {
            let _ = reply.send(Err(match self.state_of(id) {
                Some(state) => EngineError::InvalidState { id, state, action },
                None => EngineError::NotFound(id),
            }));
            return;
        };
        let fits = match &active.job.state {
            JobState::Running { .. } => pause,
            JobState::Paused { .. } => !pause,
            _ => false,
        };
        if !fits {
            let state = active.job.state.name().as_str();
            let _ = reply.send(Err(EngineError::InvalidState { id, state, action }));
            return;
        }
        if let Err(e) = active.control.try_send(Control { pause, by, reply }) {
            let control = e.into_inner();
            let _ = control.reply.send(Err(EngineError::InvalidState {
                id,
                state: "busy with an earlier pause or resume",
                action,
            }));
        }
    }

    /// The state name of a job the actor holds, for a refusal: an admitted job (a standby) shows as
    /// queued; `None` for a job it does not hold.
    fn state_of(&self, id: JobId) -> Option<&'static str> {
        if let Some(active) = self.active.get(&id) {
            Some(active.job.state.name().as_str())
        } else if self.on_hold.contains_key(&id) {
            Some(StateName::Held.as_str())
        } else if self.queued.contains_key(&id) || self.waiting.contains_key(&id) {
            Some(StateName::Queued.as_str())
        } else {
            None
        }
    }

    /// Why an action on a job that is not where it applies is refused: its state, or `starting` for an
    /// admitted job whose launch has already taken its slot.
    fn refusal(&self, id: JobId, action: JobAction) -> EngineError {
        let state = match self.active.get(&id) {
            Some(a) if matches!(a.job.state, JobState::Queued { .. }) => Some("starting"),
            _ => self.state_of(id),
        };
        match state {
            Some(state) => EngineError::InvalidState { id, state, action },
            None => EngineError::NotFound(id),
        }
    }

    /// From the monitor: the tree is frozen or thawed (or could not be). Records it, gives the CPU
    /// reservation back or takes it again, and answers the operator.
    pub(super) async fn frozen(
        &mut self,
        id: JobId,
        paused: bool,
        result: Result<std::time::Duration, String>,
        by: Option<String>,
        reply: ActReply,
    ) {
        let action = if paused {
            JobAction::Pause
        } else {
            JobAction::Resume
        };
        let took = match result {
            Ok(took) => took,
            Err(reason) => {
                let context = if paused {
                    "freezing the job's tree"
                } else {
                    "thawing the job's tree"
                };
                let _ = reply.send(Err(EngineError::internal(
                    context,
                    std::io::Error::other(reason),
                )));
                return;
            }
        };
        let Some(active) = self.active.get_mut(&id) else {
            let _ = reply.send(Err(EngineError::NotFound(id)));
            return;
        };
        let at = Timestamp::now();
        let since = match &active.job.state {
            JobState::Paused { since, .. } => Some(*since),
            _ => None,
        };
        let event = if paused {
            Event::Paused { at }
        } else {
            Event::Resumed { at }
        };
        if active.job.apply(event).is_err() {
            // A stop came first: the monitor thaws the tree for its stop sequence anyway.
            let state = active.job.state.name().as_str();
            let _ = reply.send(Err(EngineError::InvalidState { id, state, action }));
            return;
        }
        let logged = if paused {
            active.reservation.suspend_cpu();
            tracing::info!(job_id = %id, took_ms = took.as_secs_f64() * 1e3, "job paused");
            JobEvent::Paused {
                by: by.clone(),
                took_ms: took.as_secs_f64() * 1e3,
            }
        } else {
            active.reservation.restore_cpu();
            let paused_secs = since.map_or(0.0, |s| {
                (at.unix_millis() - s.unix_millis()).max(0) as f64 / 1e3
            });
            tracing::info!(job_id = %id, paused_secs, "job resumed");
            JobEvent::Resumed {
                by: by.clone(),
                paused_secs,
            }
        };
        let job = active.job.clone();
        let answer = self.record(&job, vec![NewEvent::new(logged)]).await;
        let _ = reply.send(answer);
        self.operator_action(action, id, by, None).await;
        self.publish_counts();
        if paused {
            // Its CPU is free for the queue.
            self.dispatch().await;
        }
    }

    async fn hold(&mut self, id: JobId, by: Option<String>) -> Result<Acted, EngineError> {
        // Only a job that has not started is found here: queued, waiting, or a standby taken back.
        let waiting = self
            .dequeue(id)
            .map(|(job, _)| job)
            .or_else(|| self.leave_waiting(id))
            .or_else(|| self.withdraw(id).map(|standby| standby.job));
        let Some(mut job) = waiting else {
            return Err(self.refusal(id, JobAction::Hold));
        };
        if let Err(e) = job.apply(Event::Held {
            at: Timestamp::now(),
        }) {
            tracing::error!(job_id = %id, error = %e, "illegal transition");
            return Err(EngineError::internal("holding a job", e));
        }
        tracing::info!(job_id = %id, "job held");
        let answer = self
            .record(&job, vec![NewEvent::new(JobEvent::Held { by: by.clone() })])
            .await;
        self.count_waiting(&job, true);
        self.on_hold.insert(id, job);
        self.publish_counts();
        self.operator_action(JobAction::Hold, id, by, None).await;
        // A standby taken back leaves room for another.
        self.dispatch().await;
        answer
    }

    /// Queues a job's write and answers with it, for the caller to await (never the actor).
    async fn record(&self, job: &Job, events: Vec<NewEvent>) -> Result<Acted, EngineError> {
        let committed = self.shared.store.record_queued(job, events).await?;
        Ok(Acted {
            job: job.clone(),
            committed,
        })
    }

    async fn release(&mut self, id: JobId, by: Option<String>) -> Result<Acted, EngineError> {
        let Some(mut job) = self.leave_hold(id) else {
            return Err(self.refusal(id, JobAction::Release));
        };
        if let Err(e) = job.apply(Event::Released {
            at: Timestamp::now(),
        }) {
            tracing::error!(job_id = %id, error = %e, "illegal transition");
            return Err(EngineError::internal("releasing a job", e));
        }
        tracing::info!(job_id = %id, "job released");
        let answer = self
            .record(
                &job,
                vec![NewEvent::new(JobEvent::Released { by: by.clone() })],
            )
            .await;
        self.operator_action(JobAction::Release, id, by, None).await;
        self.requeue_waiting(job).await;
        self.dispatch().await;
        answer
    }

    /// A job that has not started goes back where it waits: the queue, or its dependencies first.
    async fn requeue_waiting(&mut self, job: Job) {
        if job.spec.after.is_empty() {
            self.enqueue(job);
        } else {
            let id = job.id;
            self.park(job);
            self.resolve_dependencies(id).await;
        }
    }

    /// Takes a held job out of the hold, uncounted.
    pub(super) fn leave_hold(&mut self, id: JobId) -> Option<Job> {
        let job = self.on_hold.remove(&id)?;
        self.count_waiting(&job, false);
        self.publish_counts();
        Some(job)
    }

    /// A new priority for a job that has not started; it moves in the queue at once.
    pub(super) async fn set_priority(
        &mut self,
        id: JobId,
        priority: i32,
        by: Option<String>,
    ) -> Result<Acted, EngineError> {
        // Where it waits: the queue (or as a standby, taken back), its dependencies, the hold.
        let mut requeue = true;
        let job = if let Some((job, _)) = self.dequeue(id) {
            Some(job)
        } else if let Some(standby) = self.withdraw(id) {
            Some(standby.job)
        } else {
            requeue = false;
            None
        };
        let (from, job) = match job {
            Some(mut job) => {
                let from = std::mem::replace(&mut job.spec.priority, priority);
                (from, job)
            }
            None => {
                let place = self
                    .waiting
                    .get_mut(&id)
                    .or_else(|| self.on_hold.get_mut(&id));
                match place {
                    Some(job) => (
                        std::mem::replace(&mut job.spec.priority, priority),
                        job.clone(),
                    ),
                    None => return Err(self.refusal(id, JobAction::Priority)),
                }
            }
        };
        tracing::info!(job_id = %id, from, to = priority, "job reprioritised");
        let events = vec![NewEvent::new(JobEvent::PriorityChanged {
            from,
            to: priority,
            by: by.clone(),
        })];
        let committed = self.shared.store.record_priority(&job, events).await;
        let answer = committed.map_err(EngineError::from).map(|committed| Acted {
            job: job.clone(),
            committed,
        });
        if requeue {
            self.enqueue(job);
        }
        self.operator_action(
            JobAction::Priority,
            id,
            by,
            Some(format!("{from} → {priority}")),
        )
        .await;
        self.dispatch().await;
        answer
    }

    /// Drains (`on`) or undrains the node; kept in the store so a restart keeps it. Whether it changed.
    pub(super) async fn drain(&mut self, on: bool, by: Option<String>) -> bool {
        if self.shared.draining.swap(on, Ordering::SeqCst) == on {
            return false;
        }
        let value = on.then_some("1");
        if let Err(e) = self.shared.store.set_setting(DRAINED, value).await {
            tracing::error!(error = %e, "failed to persist the drain; it holds until a restart");
        }
        if on {
            tracing::warn!(
                by = by.as_deref().unwrap_or("-"),
                "node drained: nothing new starts"
            );
            // Admitted but not started: they wait for the undrain like the rest — or, in a fleet, go
            // back to the fleet's queue for the other nodes.
            self.withdraw_standby();
            self.give_back_queue();
            self.engine_event(EngineEvent::Drained { by }).await;
        } else {
            tracing::info!(by = by.as_deref().unwrap_or("-"), "node undrained");
            self.engine_event(EngineEvent::Undrained { by }).await;
            self.shared.claim_now.notify_one();
            self.dispatch().await;
        }
        true
    }

    /// At start-up: a node drained before a restart stays drained.
    pub(super) async fn restore_drain(&mut self) -> Result<(), EngineError> {
        let drained = self.shared.store.setting(DRAINED).await?.is_some();
        if drained {
            tracing::warn!(
                "node drained before the restart: nothing new starts until `aura undrain`"
            );
        }
        self.shared.draining.store(drained, Ordering::SeqCst);
        Ok(())
    }

    /// The engine's record of an operator's action on a job.
    pub(super) async fn operator_action(
        &mut self,
        action: JobAction,
        job_id: JobId,
        by: Option<String>,
        detail: Option<String>,
    ) {
        self.engine_event(EngineEvent::OperatorAction {
            action,
            job_id,
            by,
            detail,
        })
        .await;
    }
}

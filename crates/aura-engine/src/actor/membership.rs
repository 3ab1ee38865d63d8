//! The actor's side of fleet mode: jobs claimed from the fleet's queue join the local queue; a job
//! fencing took away, or every job when the node lost its leases, is killed and forgotten here without
//! a write (another node holds it now, or will rescue it); jobs taken back after rejoining are
//! recovered like a dead daemon's.

use super::*;

impl Actor {
    /// Claimed jobs join the local queue (or wait for their dependencies, or stay held) as submitted
    /// ones do.
    pub(super) async fn claimed(&mut self, jobs: Vec<Job>) {
        let mut parked = Vec::new();
        for job in jobs {
            if self.knows(job.id) {
                continue;
            }
            tracing::debug!(job_id = %job.id, "claimed from the fleet");
            self.shared.job_metrics.submitted(&job.spec);
            if matches!(job.state, JobState::Held { .. }) {
                self.count_waiting(&job, true);
                self.on_hold.insert(job.id, job);
                self.publish_counts();
            } else if job.spec.after.is_empty() {
                self.enqueue(job);
            } else {
                parked.push(job.id);
                self.park(job);
            }
        }
        for id in parked {
            self.resolve_dependencies(id).await;
        }
        self.dispatch().await;
    }

    /// Whether the job is live here in any form.
    fn knows(&self, id: JobId) -> bool {
        self.queued.contains_key(&id)
            || self.waiting.contains_key(&id)
            || self.on_hold.contains_key(&id)
            || self.active.contains_key(&id)
    }

    /// Forgets a job another node holds now: out of the queue at once, or its tree killed (its end
    /// written nowhere: `finish` drops a lost job).
    pub(super) async fn fenced(&mut self, id: JobId) {
        self.forget(id);
        self.dispatch().await;
    }

    /// Kills every local tree and forgets every local job; `reply` is answered once no lost tree is
    /// left.
    pub(super) async fn leases_lost(&mut self, reason: String, reply: oneshot::Sender<()>) {
        let ids: Vec<JobId> = self
            .queued
            .keys()
            .chain(self.waiting.keys())
            .chain(self.on_hold.keys())
            .chain(self.active.keys())
            .copied()
            .collect();
        tracing::error!(jobs = ids.len(), %reason, "fleet leases lost: forgetting every local job");
        for id in ids {
            self.forget(id);
        }
        // The fleet dropped this node's leases with it (their holders' renewals find none and acquire
        // again); their reservations go too.
        let leases = self.leases.clear();
        if leases > 0 {
            tracing::warn!(
                leases,
                "fleet membership lost: every lease of this node released"
            );
            self.leases_changed().await;
        }
        self.lost_waiters.push(reply);
        self.answer_lost_waiters();
    }

    fn forget(&mut self, id: JobId) {
        if self.dequeue(id).is_some()
            || self.leave_waiting(id).is_some()
            || self.leave_hold(id).is_some()
        {
            return;
        }
        if self.withdraw(id).is_some() {
            // A standby that had not started: its reservation went with it.
            return;
        }
        if let Some(active) = self.active.get(&id) {
            active.kill.send_replace(true);
            let _ = active.stop.send(Some(StopReason::Killed));
            self.lost.insert(id);
        }
    }

    /// Answers those waiting for the lost trees once none is left.
    fn answer_lost_waiters(&mut self) {
        if self.lost.is_empty() {
            for waiter in self.lost_waiters.drain(..) {
                let _ = waiter.send(());
            }
        }
    }

    /// A lost job's tree is gone: its slot and reservation are given back, nothing is written.
    pub(super) fn drop_lost(&mut self, id: JobId) -> bool {
        if !self.lost.remove(&id) {
            return false;
        }
        if let Some(active) = self.active.remove(&id) {
            if active.standby && matches!(active.job.state, JobState::Queued { .. }) {
                self.count_waiting(&active.job, false);
            }
        }
        self.publish_counts();
        self.answer_lost_waiters();
        true
    }

    /// Fleet mode: the jobs waiting in the local queue go back to the fleet's queue (the node is drained:
    /// others may run them). Released by a task, off the actor; what cannot be released (the database
    /// away) is taken back into the local queue.
    pub(super) fn give_back_queue(&mut self) {
        let Some(fleet) = self.shared.store.fleet() else {
            return;
        };
        let ids: Vec<JobId> = self.queued.keys().copied().collect();
        if ids.is_empty() {
            return;
        }
        let jobs: Vec<Job> = ids
            .iter()
            .filter_map(|&id| self.dequeue(id).map(|(job, _)| job))
            .collect();
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let ids: Vec<JobId> = jobs.iter().map(|j| j.id).collect();
            match fleet.release(&ids).await {
                Ok(released) => {
                    tracing::info!(released, "queued jobs given back to the fleet");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot give queued jobs back to the fleet; they stay here");
                    let (reply, _) = oneshot::channel();
                    let _ = tx.send(Command::Claimed { jobs, reply }).await;
                }
            }
        });
    }

    /// This node's jobs after it registered again, taken back as a restart would.
    pub(super) async fn adopt(&mut self, jobs: Vec<Job>) {
        let jobs: Vec<Job> = jobs.into_iter().filter(|j| !self.knows(j.id)).collect();
        if let Err(e) = self.take_back(jobs, None).await {
            tracing::error!(error = %e, "cannot take back this node's jobs after rejoining the fleet");
        }
        self.dispatch().await;
    }
}

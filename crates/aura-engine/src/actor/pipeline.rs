//! Dependencies between jobs (`after`): a submitted job whose dependencies have not all succeeded waits
//! outside the queue; each dependency's end either lets it into the queue (the last one succeeded) or
//! fails it with outcome `dependency_failed` without starting it — and that failure reaches its own
//! dependants in turn, as pueue and Slurm do.

use super::*;
use std::collections::{BTreeSet, VecDeque};

/// How many finished jobs' outcomes the actor remembers, for a dependant submitted just as its
/// dependency ended (the store may not have committed that end yet). Older ends are read from the store.
const RECENT: usize = 4096;

/// Outcomes of the jobs that ended lately: id → succeeded, and the outcome's name.
#[derive(Default)]
pub(super) struct Recent {
    order: VecDeque<JobId>,
    ended: HashMap<JobId, (bool, String)>,
}

impl Recent {
    fn insert(&mut self, id: JobId, ended: (bool, String)) {
        if self.ended.insert(id, ended).is_none() {
            self.order.push_back(id);
        }
        while self.order.len() > RECENT {
            if let Some(old) = self.order.pop_front() {
                self.ended.remove(&old);
            }
        }
    }
}

impl Actor {
    /// Takes a job that has not passed its dependencies yet (just submitted, or queued at recovery) out of
    /// the queue's way, counted as waiting; `resolve_dependencies` then decides what becomes of it.
    pub(super) fn park(&mut self, job: Job) {
        let id = job.id;
        let deps: BTreeSet<JobId> = job
            .spec
            .after
            .iter()
            .copied()
            .filter(|d| *d != id)
            .collect();
        self.shared.set_dependencies(id, Some(deps));
        self.count_waiting(&job, true);
        self.waiting.insert(id, job);
        self.publish_counts();
    }

    /// A parked job waits for its dependencies still unfinished, joins the queue if none is, or fails if
    /// one did not succeed. The caller dispatches (recovery: not before it is done).
    pub(super) async fn resolve_dependencies(&mut self, id: JobId) {
        let Some(deps) = self.shared.dependencies(id) else {
            return;
        };
        let mut pending = BTreeSet::new();
        let mut failed = None;
        for dep in deps {
            let live = self.queued.contains_key(&dep)
                || self.active.contains_key(&dep)
                || self.waiting.contains_key(&dep)
                || self.on_hold.contains_key(&dep);
            let ended = if live {
                None
            } else {
                self.ended_outcome(dep).await
            };
            match ended {
                None => {
                    pending.insert(dep);
                }
                Some((true, _)) => {}
                Some((false, outcome)) => {
                    failed = Some((dep, outcome));
                    break;
                }
            }
        }
        if let Some((dep, outcome)) = failed {
            if let Some(job) = self.leave_waiting(id) {
                if let Some(own) = self.fail_dependant(job, dep, outcome).await {
                    // Remembered for the jobs that name it next (a batch's later lines).
                    self.ended_chain(id, false, own).await;
                }
            }
            return;
        }
        if pending.is_empty() {
            if let Some(job) = self.leave_waiting(id) {
                self.enqueue(job);
            }
            return;
        }
        tracing::info!(job_id = %id, after = ?pending, "job waits for its dependencies");
        if let Some(job) = self.waiting.get(&id) {
            let logged = vec![NewEvent::new(JobEvent::Waiting {
                after: pending.iter().copied().collect(),
            })];
            queue_write(&self.shared, job, logged, Commit::Soon, false).await;
        }
        for &dep in &pending {
            self.dependants.entry(dep).or_default().push(id);
        }
        self.shared.set_dependencies(id, Some(pending));
    }

    /// How a job that is not live ended: remembered, or read from the store (`None`: it has not ended, or
    /// the store cannot tell now; a job the store does not have counts as failed, `not_found`).
    async fn ended_outcome(&self, dep: JobId) -> Option<(bool, String)> {
        if let Some(ended) = self.recent.ended.get(&dep) {
            return Some(ended.clone());
        }
        match self.shared.store.get(dep).await {
            Ok(Some(job)) => job.outcome().map(|o| (o.is_success(), o.name().to_owned())),
            Ok(None) => Some((false, "not_found".to_owned())),
            Err(e) => {
                tracing::error!(job_id = %dep, error = %e, "cannot read a dependency's outcome; its dependants keep waiting");
                None
            }
        }
    }

    /// A job reached its final state (`succeeded`, outcome `name`): its dependants go on (every dependency
    /// succeeded) or fail, and so on down the chain. The caller dispatches.
    pub(super) async fn ended_chain(&mut self, id: JobId, succeeded: bool, name: String) {
        let mut ended = VecDeque::new();
        ended.push_back((id, succeeded, name));
        while let Some((dep, succeeded, name)) = ended.pop_front() {
            self.recent.insert(dep, (succeeded, name.clone()));
            for dependant in self.dependants.remove(&dep).unwrap_or_default() {
                let Some(mut pending) = self.shared.dependencies(dependant) else {
                    continue;
                };
                if succeeded {
                    pending.remove(&dep);
                    if !pending.is_empty() {
                        self.shared.set_dependencies(dependant, Some(pending));
                        continue;
                    }
                }
                let Some(job) = self.leave_waiting(dependant) else {
                    continue;
                };
                if succeeded {
                    tracing::info!(job_id = %dependant, "dependencies met; job queued");
                    self.persist(&job, vec![NewEvent::new(JobEvent::DependenciesMet)])
                        .await;
                    self.enqueue(job);
                } else if let Some(outcome) = self.fail_dependant(job, dep, name.clone()).await {
                    ended.push_back((dependant, false, outcome));
                }
            }
        }
    }

    /// Takes a job out of the waiting set; it no longer waits for any dependency.
    pub(super) fn leave_waiting(&mut self, id: JobId) -> Option<Job> {
        let job = self.waiting.remove(&id)?;
        if let Some(pending) = self.shared.dependencies(id) {
            for dep in pending {
                if let Some(list) = self.dependants.get_mut(&dep) {
                    list.retain(|d| *d != id);
                    if list.is_empty() {
                        self.dependants.remove(&dep);
                    }
                }
            }
        }
        self.shared.set_dependencies(id, None);
        self.count_waiting(&job, false);
        self.publish_counts();
        Some(job)
    }

    /// Finishes a job that never started because `dep` ended with `outcome`; returns its own outcome's
    /// name for its dependants (`None` if the transition was refused).
    async fn fail_dependant(
        &mut self,
        mut job: Job,
        dep: JobId,
        outcome: String,
    ) -> Option<String> {
        let id = job.id;
        let event = Event::DependencyFailed {
            job_id: dep,
            outcome: outcome.clone(),
            at: Timestamp::now(),
        };
        if let Err(e) = job.apply(event) {
            tracing::error!(job_id = %id, error = %e, "illegal transition");
            return None;
        }
        tracing::info!(job_id = %id, dependency = %dep, %outcome, "dependency did not succeed; job fails without starting");
        let events = vec![
            NewEvent::new(JobEvent::DependencyFailed {
                job_id: dep,
                outcome,
            }),
            NewEvent::new(JobEvent::Finished {
                outcome: job.outcome().cloned(),
            }),
        ];
        self.persist_final(&job, events).await;
        // The caller's `ended_chain` remembers it and takes it to its own dependants.
        job.outcome().map(|o| o.name().to_owned())
    }
}

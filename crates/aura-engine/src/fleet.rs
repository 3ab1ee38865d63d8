//! Fleet mode: this node's membership of a fleet sharing one PostgreSQL store — its heartbeat (which
//! renews the leases of all its jobs), the rescue of dead nodes' jobs, claims of the work it can take,
//! the jobs fencing took from it, and what it must do when it loses its leases. One task, `FleetTask`,
//! talks to the store's `Fleet`; the actor stays the only owner of live job state.

use crate::protocol::Command;
use crate::shared::Shared;
use aura_model::Secret;
use aura_store::{ClaimFilter, Fleet, FleetLimit, PgConfig};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{broadcast::error::RecvError, mpsc, oneshot, watch};

/// How this node joins a fleet (`--store postgres://…`).
#[derive(Clone, Debug)]
pub struct FleetConfig {
    /// The fleet's database; the password comes from the secrets mechanism.
    pub store: PgConfig,
    /// Stable identity: the data dir's instance id.
    pub node_id: String,
    /// For people (`fleet.node_name`, default: host name and the id's start).
    pub node_name: String,
    /// What jobs may require of this node (`requires=gpu,nvenc`).
    pub tags: Vec<String>,
    /// Where other nodes reach this node's API (forwarded logs and actions); `None`: they cannot.
    pub url: Option<String>,
    /// A node silent this long is declared dead and its jobs rescued; this node, cut off from the store
    /// this long, stops its jobs. Default 15 s.
    pub heartbeat_timeout: Duration,
    /// Jobs this node claims beyond its running slots (`max_concurrent`), waiting in its local queue so
    /// that its launchers never wait for a claim round trip; given back when none of its jobs ended for
    /// `STALL` (its slots are held by long jobs). Default 32.
    pub prefetch: usize,
    /// How long state changes nobody waits for gather before one commit (the store's group window).
    /// Default 25 ms: a commit costs a round trip and holds the fleet's event lock.
    pub commit_window: Duration,
    /// The token nodes present to each other (a named secret every node has), accepted as an admin
    /// token named `fleet`; `None`: no forwarding.
    pub token: Option<Secret>,
}

/// The node the engine runs as, from its config and its admission capacity.
pub(crate) fn node_spec(
    config: &FleetConfig,
    capacity: &aura_admission::Capacity,
) -> aura_model::NodeSpec {
    aura_model::NodeSpec {
        id: config.node_id.clone(),
        name: config.node_name.clone(),
        tags: config.tags.clone(),
        url: config.url.clone(),
        capacity: aura_model::NodeCapacity {
            cpus: capacity.cpu_millis as f64 / 1000.0,
            memory_bytes: capacity.memory_bytes,
            gpus: u32::try_from(capacity.gpus.len()).unwrap_or(u32::MAX),
        },
    }
}

/// The named limits this node's config declares, counted fleet-wide.
pub(crate) fn fleet_limits(config: &crate::EngineConfig) -> Vec<FleetLimit> {
    config
        .admission
        .limits
        .iter()
        .map(|(name, limit)| FleetLimit {
            name: name.clone(),
            max_concurrent: limit.max_concurrent,
            per_minute: limit.per_minute,
        })
        .collect()
}

/// How often unclaimed work is looked for when no notification came (one may be lost with a
/// reconnect; a dependency or a limit may free up without one reaching this node).
const CLAIM_EVERY: Duration = Duration::from_millis(500);

/// How long jobs may wait here for a slot, with none of this node's jobs ending, before they go back to
/// the fleet (its slots are held by long jobs: others may start them sooner).
const STALL: Duration = Duration::from_secs(2);

/// The longest the task waits for the actor to kill the trees of lost jobs before it registers again.
const LOST_WAIT: Duration = Duration::from_secs(30);

/// The fleet task: heartbeats, rescue, claims, fencing.
pub(crate) struct FleetTask {
    shared: Arc<Shared>,
    tx: mpsc::Sender<Command>,
    fleet: Fleet,
    timeout: Duration,
    prefetch: usize,
    filter: ClaimFilter,
    limits: Vec<FleetLimit>,
    /// Whether this node holds its leases (registered and heartbeating within the timeout).
    holding: bool,
    /// The last heartbeat the store accepted.
    last_ok: Instant,
    /// Since when every heartbeat has succeeded: only a node that has itself been connected for a whole
    /// timeout judges others dead (after an outage of the store every heartbeat is old).
    healthy_since: Option<Instant>,
    /// `Shared::ended_attempts` as last seen, and when it last changed.
    ends: (u64, Instant),
    /// No job ended here for `STALL` while others waited: claims stop at the free slots (no prefetch)
    /// until one ends.
    stalled: bool,
    /// Since when jobs wait here (none: none waits).
    waiting_since: Option<Instant>,
}

impl FleetTask {
    pub(crate) fn new(
        shared: Arc<Shared>,
        tx: mpsc::Sender<Command>,
        fleet: Fleet,
        config: &FleetConfig,
    ) -> FleetTask {
        let capacity = shared.admission.usage().capacity;
        let filter = ClaimFilter {
            tags: config.tags.clone(),
            memory_bytes: capacity.memory_bytes,
            gpus: u32::try_from(capacity.gpus.len()).unwrap_or(u32::MAX),
        };
        let limits = fleet_limits(&shared.config);
        let now = Instant::now();
        FleetTask {
            shared,
            tx,
            fleet,
            timeout: config.heartbeat_timeout,
            prefetch: config.prefetch.max(1),
            filter,
            limits,
            holding: true,
            last_ok: now,
            healthy_since: Some(now),
            ends: (0, now),
            stalled: false,
            waiting_since: None,
        }
    }

    /// Runs until `stop` is set: the engine's shutdown, once its jobs are stopped (it heartbeats on
    /// through the shutdown's grace, so that nobody rescues jobs that are still being stopped here).
    pub(crate) async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let mut beat = tokio::time::interval((self.timeout / 5).max(Duration::from_millis(100)));
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut tick = tokio::time::interval(CLAIM_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let work = self.fleet.work();
        let shared = self.shared.clone();
        let mut fenced = self.fleet.fenced();
        loop {
            if *stop.borrow() {
                break;
            }
            tokio::select! {
                _ = stop.changed() => break,
                _ = beat.tick() => self.beat().await,
                () = work.notified() => self.claim().await,
                () = shared.claim_now.notified() => self.claim().await,
                _ = tick.tick() => {
                    self.watch_stall().await;
                    self.claim().await;
                }
                id = fenced.recv() => match id {
                    Ok(id) => {
                        tracing::warn!(job_id = %id, "another node holds this job now (fenced): its local tree is killed");
                        let _ = self.tx.send(Command::Fenced(id)).await;
                    }
                    Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => break,
                },
            }
        }
    }

    /// One heartbeat: renews the leases, rescues dead nodes' jobs, or gives everything up when this node
    /// lost its leases (declared dead, or cut off from the store past the timeout).
    async fn beat(&mut self) {
        if !self.holding {
            self.rejoin().await;
            return;
        }
        let now = Instant::now();
        match tokio::time::timeout(self.timeout / 2, self.fleet.heartbeat()).await {
            Ok(Ok(true)) => {
                self.last_ok = now;
                let since = *self.healthy_since.get_or_insert(now);
                if now.duration_since(since) >= self.timeout {
                    self.rescue().await;
                }
            }
            Ok(Ok(false)) => {
                self.lose(
                    "this node was declared dead (its heartbeats were missed) and its jobs rescued",
                )
                .await;
            }
            Ok(Err(e)) => self.missed(&e.to_string()).await,
            Err(_) => self.missed("the heartbeat timed out").await,
        }
    }

    async fn missed(&mut self, why: &str) {
        self.healthy_since = None;
        let silent = self.last_ok.elapsed();
        tracing::warn!(
            error = why,
            silent_ms = silent.as_millis() as u64,
            "fleet heartbeat failed"
        );
        if silent > self.timeout {
            self.lose("cut off from the fleet's store for longer than the heartbeat timeout")
                .await;
        }
    }

    async fn rescue(&mut self) {
        match self.fleet.rescue(self.timeout).await {
            Ok(ids) if !ids.is_empty() => {
                tracing::warn!(jobs = ids.len(), first = %ids[0], "rescued the jobs of nodes that stopped heartbeating");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "fleet rescue failed"),
        }
    }

    /// This node holds no lease any more: every local tree is killed and every local job forgotten (the
    /// fleet has them, or will rescue them), before anything else happens.
    async fn lose(&mut self, reason: &str) {
        tracing::error!(reason, "fleet lease lost: killing every local job");
        self.holding = false;
        self.healthy_since = None;
        self.fleet.forget_all();
        let (reply, done) = oneshot::channel();
        let lost = Command::LeasesLost {
            reason: reason.to_owned(),
            reply,
        };
        if self.tx.send(lost).await.is_ok() {
            let _ = tokio::time::timeout(LOST_WAIT, done).await;
        }
    }

    /// Registers again after losing the leases, then takes back (as a restart's recovery would) whatever
    /// the fleet still has under this node: nobody rescued it meanwhile.
    async fn rejoin(&mut self) {
        if let Err(e) = self.fleet.register(&self.limits).await {
            tracing::warn!(error = %e, "cannot rejoin the fleet yet");
            return;
        }
        match self.shared.store.unfinished().await {
            Ok(jobs) => {
                tracing::warn!(jobs = jobs.len(), "rejoined the fleet");
                let _ = self.tx.send(Command::Adopt(jobs)).await;
                let now = Instant::now();
                self.holding = true;
                self.last_ok = now;
                self.healthy_since = Some(now);
            }
            Err(e) => tracing::warn!(error = %e, "cannot read this node's jobs after rejoining"),
        }
    }

    /// Jobs waiting here while none of this node's jobs ends (its slots held by long jobs, or its
    /// admission short of memory) go back to the fleet, and prefetching stops until a job ends: a node
    /// must not sit on work that idle nodes could start.
    async fn watch_stall(&mut self) {
        let ended = self.shared.ended_attempts.load(Ordering::Relaxed);
        let now = Instant::now();
        if ended != self.ends.0 {
            self.ends = (ended, now);
            self.stalled = false;
        }
        let waiting = self
            .shared
            .queued_count
            .load(Ordering::Relaxed)
            .saturating_sub(self.shared.held_count.load(Ordering::Relaxed));
        if waiting == 0 {
            self.waiting_since = None;
            return;
        }
        // Counted from the later of the last end and the moment jobs began to wait: a node idle for a
        // while (drained, nothing to do) has not stalled the jobs it has just claimed.
        let since = *self.waiting_since.get_or_insert(now);
        if !self.stalled && now.duration_since(self.ends.1.max(since)) >= STALL {
            self.stalled = true;
            tracing::debug!(
                waiting,
                "no job ended here lately: giving the waiting ones back to the fleet"
            );
            let _ = self.tx.send(Command::GiveBack).await;
        }
    }

    /// Claims what this node can take: its free running slots and `prefetch` more, while it holds its
    /// leases, accepts work, and admission is neither paused nor drained.
    async fn claim(&mut self) {
        loop {
            let shared = &self.shared;
            let blocked = !self.holding
                || !shared.accepting.load(Ordering::SeqCst)
                || shared.draining.load(Ordering::SeqCst)
                || shared.paused_reason().is_some()
                || *shared.closing.borrow();
            if blocked {
                return;
            }
            // Only what can start here now, and `prefetch` more: a node that took more than it can run
            // would sit on long jobs that idle nodes could start.
            let holding = shared.queued_count.load(Ordering::Relaxed)
                + shared.running_count.load(Ordering::Relaxed);
            let prefetch = if self.stalled { 0 } else { self.prefetch };
            let room = shared.config.max_concurrent + prefetch;
            let want = room.saturating_sub(holding);
            // Topped up once half the prefetch is gone, not after every job: a claim is a query every
            // node's claims contend on, and one for a job or two costs the database as much as one for
            // thirty.
            if want == 0 || want < prefetch / 2 {
                return;
            }
            let max = u32::try_from(want).unwrap_or(u32::MAX);
            let jobs = match self.fleet.claim(max, &self.filter).await {
                Ok(jobs) => jobs,
                Err(e) => {
                    tracing::debug!(error = %e, "claim failed");
                    return;
                }
            };
            let full = jobs.len() >= want;
            if jobs.is_empty() {
                return;
            }
            let (reply, done) = oneshot::channel();
            if self
                .tx
                .send(Command::Claimed { jobs, reply })
                .await
                .is_err()
            {
                return;
            }
            // Counted into the local queue before the next look at it.
            let _ = done.await;
            if !full {
                return;
            }
        }
    }
}

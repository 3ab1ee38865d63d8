//! Fleet mode's part of the store: what a node does through PostgreSQL besides reading and writing jobs —
//! register, heartbeat, claim, rescue, and see the other nodes. Only a store opened with
//! `Store::open_postgres` has a `Fleet`.

use crate::error::StoreError;
use aura_model::{Job, JobId, NodeSpec, NodeView, Secret};
use std::sync::Arc;
use std::time::Duration;

/// Where the fleet's database is. The password never travels in `url` (it would show in `ps`, logs and
/// `Debug`): it comes from the secrets mechanism.
#[derive(Clone)]
pub struct PgConfig {
    /// `postgres://user@host:port/dbname` (query parameters `connect_timeout`, `application_name` …
    /// allowed); must not hold a password. Connections are not encrypted (no TLS in this version): keep
    /// the database on a trusted network or a tunnel.
    pub url: String,
    /// The database user's password, if the server asks for one.
    pub password: Option<Secret>,
    /// Connections kept for reads and fleet calls (the writer and the listener have their own).
    pub pool_size: usize,
    /// How long opening a connection, or waiting for a pooled one, may take before the call fails with
    /// `StoreError::Unavailable` instead of hanging.
    pub connect_timeout: Duration,
}

impl std::fmt::Debug for PgConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgConfig")
            .field("url", &self.url)
            .field("password", &self.password.as_ref().map(|_| "[redacted]"))
            .field("pool_size", &self.pool_size)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

/// A named limit counted across the fleet (`[admission.limits.<name>]` of the node that registers last).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FleetLimit {
    /// The provider's name, as jobs name it in `resources.providers`.
    pub name: String,
    /// Jobs holding it at once, fleet-wide (claimed and unfinished).
    pub max_concurrent: Option<u32>,
    /// Claims of jobs naming it per rolling minute, fleet-wide.
    pub per_minute: Option<u32>,
}

/// An API token a node accepts, as the fleet shares it: its hash (`sha256:…`), never the token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FleetToken {
    /// The node that accepts it (its name, when read back).
    pub node: String,
    /// The token's name there.
    pub name: String,
    /// `sha256:` and 64 hex digits.
    pub hash: String,
    /// `read`, `submit` or `admin`.
    pub scope: String,
}

/// What a node can take: the claim query's filter.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClaimFilter {
    /// The node's tags: a job is claimed only if every tag its `requires` label names is among them.
    pub tags: Vec<String>,
    /// The most memory one job may reserve here (bytes); a job asking for more is left to bigger nodes.
    pub memory_bytes: u64,
    /// GPUs here; a job asking for more is left to other nodes.
    pub gpus: u32,
}

/// A cheap handle to this node's membership of the fleet (clone freely).
#[derive(Clone)]
pub struct Fleet {
    pub(crate) inner: Arc<crate::pg::PgShared>,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("node", &self.node().id)
            .finish_non_exhaustive()
    }
}

impl Fleet {
    /// This node as it registers.
    pub fn node(&self) -> &NodeSpec {
        self.inner.node()
    }

    /// Registers this node (or registers it again: after a restart, or after it lost its leases):
    /// upserts its row with a new incarnation, state `up`, a fresh heartbeat, its tags, URL and capacity;
    /// upserts `limits` into the fleet's limits (last writer wins). Returns the new incarnation. Jobs the
    /// node still holds from an earlier incarnation keep their row (`unfinished` returns them, with their
    /// epochs loaded, so recovery writes them like any own job; one already rescued is fenced).
    pub async fn register(&self, limits: &[FleetLimit]) -> Result<i64, StoreError> {
        self.inner.register(limits).await
    }

    /// Renews this node's heartbeat and with it the leases of all its jobs. `Ok(false)`: the node is no
    /// longer `up` under its incarnation (declared dead, its jobs rescued; or never registered): it holds
    /// no lease, must kill every local tree, forget its jobs (`forget_all`) and `register` again.
    pub async fn heartbeat(&self) -> Result<bool, StoreError> {
        self.inner.heartbeat().await
    }

    /// Declares dead every `up` node (this one excepted) whose last heartbeat is older than `timeout`
    /// by the database's clock, and rescues their unfinished jobs in the same transaction: a claimed job
    /// that had not started goes back to the queue unclaimed; one that had started is recorded
    /// `interrupted` ("node … stopped heartbeating") through `Job::apply` and requeued if its retry policy
    /// allows (`Job::may_retry`). Every rescued job's epoch is bumped and its node cleared, so the dead
    /// node's later writes are fenced. Jobs held by a node that is not `up` (dead, left, or never
    /// registered) are rescued the same way. Returns the rescued jobs' ids.
    pub async fn rescue(&self, timeout: Duration) -> Result<Vec<JobId>, StoreError> {
        self.inner.rescue(timeout).await
    }

    /// Claims up to `max` queued, unclaimed jobs this node can take (see `ClaimFilter`; every `after`
    /// dependency finished, whatever its outcome; fleet limits with room), highest priority first, then
    /// oldest: one statement, a CTE selecting `FOR UPDATE SKIP LOCKED` and an `UPDATE … RETURNING`, so
    /// two nodes never claim the same job. Each claimed job's epoch is bumped and remembered for its
    /// writes. Jobs naming fleet limits are claimed after the others (when room is left), under a row
    /// lock of each limit, so counts are exact.
    pub async fn claim(&self, max: u32, filter: &ClaimFilter) -> Result<Vec<Job>, StoreError> {
        self.inner.claim(max, filter).await
    }

    /// Claims one particular job if it is queued or held and unclaimed (an operator acts on it through
    /// this node; fleet limits are not consulted); `None` if it is not (claimed elsewhere, started,
    /// finished, unknown). A job this node holds already is returned as it is, its epoch unchanged.
    pub async fn claim_one(&self, id: JobId) -> Result<Option<Job>, StoreError> {
        self.inner.claim_one(id).await
    }

    /// Gives back these jobs if this node holds them and they have not started (queued or held):
    /// unclaimed, epoch bumped (a write of them queued here is fenced), forgotten here, other nodes
    /// woken. Returns how many were given back; others (started, not held here, unknown) are skipped.
    pub async fn release(&self, ids: &[JobId]) -> Result<u64, StoreError> {
        self.inner.release(ids).await
    }

    /// A clean shutdown: gives back every queued or held job this node holds (as `release`) and marks
    /// the node `left`, so nobody waits for its heartbeat. Returns how many jobs were given back. Jobs
    /// still running are not touched: stop them first (others rescue what a left node still held).
    pub async fn leave(&self) -> Result<u64, StoreError> {
        self.inner.leave().await
    }

    /// Forgets every epoch this node holds (after it lost its leases): later writes of those jobs are
    /// fenced.
    pub fn forget_all(&self) {
        self.inner.forget_all()
    }

    /// Holds a slot of every fleet limit named in `providers` for this node's lease `lease`, for `ttl`
    /// from now (the database's clock) unless renewed, counted with the jobs that hold slots on any node.
    /// Refused (nothing held) when one of them is full: `Some((name, max_concurrent))`. A name without
    /// a row in the fleet's limits is unlimited. Leases count against `max_concurrent` only;
    /// `per_minute` counts claims of jobs.
    pub async fn hold_lease(
        &self,
        lease: u64,
        providers: &[String],
        ttl: Duration,
    ) -> Result<Option<(String, u32)>, StoreError> {
        self.inner.hold_lease(lease, providers, ttl).await
    }

    /// Extends a held lease's slots to `ttl` from now; `false` if the fleet no longer has them (the
    /// node was declared dead meanwhile, or they expired).
    pub async fn renew_lease(&self, lease: u64, ttl: Duration) -> Result<bool, StoreError> {
        self.inner.renew_lease(lease, ttl).await
    }

    /// Gives a lease's slots back (nothing if it holds none).
    pub async fn drop_lease(&self, lease: u64) -> Result<(), StoreError> {
        self.inner.drop_lease(lease).await
    }

    /// Sends this node's live progress updates to the other nodes (`NOTIFY aura_progress`, packed
    /// under the payload limit), for their event streams: progress is never stored.
    pub async fn publish_progress(
        &self,
        updates: &[aura_model::ProgressUpdate],
    ) -> Result<(), StoreError> {
        self.inner.publish_progress(updates).await
    }

    /// The other nodes' live progress updates as they arrive (heard only while someone receives;
    /// bounded: a receiver that lags misses some, and the next round's update replaces them).
    pub fn progress(&self) -> tokio::sync::broadcast::Receiver<Arc<aura_model::ProgressUpdate>> {
        self.inner.progress()
    }

    /// Jobs waiting in the fleet (queued or held, claimed by a node or not): all of them, and those
    /// `submitter` submitted (0 without one) — for the queue caps at submit.
    pub async fn waiting(&self, submitter: Option<&str>) -> Result<(u64, u64), StoreError> {
        self.inner.waiting(submitter).await
    }

    /// Every node the fleet knows, this one marked, with its running and claimed counts; `up` first,
    /// then by name.
    pub async fn nodes(&self) -> Result<Vec<NodeView>, StoreError> {
        self.inner.nodes().await
    }

    /// Replaces this node's published API tokens (hashes, with their names and scopes): what the
    /// other nodes accept on its behalf (`FleetToken::node` is ignored here).
    pub async fn publish_tokens(&self, tokens: &[FleetToken]) -> Result<(), StoreError> {
        self.inner.publish_tokens(tokens).await
    }

    /// The API tokens the other nodes published.
    pub async fn tokens(&self) -> Result<Vec<FleetToken>, StoreError> {
        self.inner.tokens().await
    }

    /// The node named in a job's row (the one that holds it, or for a finished job the one that ran it),
    /// if any.
    pub async fn owner(&self, id: JobId) -> Result<Option<NodeView>, StoreError> {
        self.inner.owner(id).await
    }

    /// Woken (`Notify::notify_one` semantics: a wake-up is never lost) whenever work may be claimable:
    /// a job inserted, requeued, released or finished (its dependants and its limits) on any node —
    /// through `LISTEN aura_work`, re-established after a reconnect (and then woken once, since
    /// notifications sent meanwhile are lost).
    pub fn work(&self) -> Arc<tokio::sync::Notify> {
        self.inner.work()
    }

    /// Jobs whose write this node attempted was rejected by fencing (another node holds them now): the
    /// engine kills their local trees. Bounded (1024); a receiver that lags misses ids (their next write
    /// is fenced again).
    pub fn fenced(&self) -> tokio::sync::broadcast::Receiver<JobId> {
        self.inner.fenced()
    }
}

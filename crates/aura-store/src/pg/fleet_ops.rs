//! The fleet calls behind `Fleet`: membership (register, heartbeat, leave), claims (one statement for
//! plain jobs, a transaction under the limits' row locks for jobs naming fleet limits), rescue of a dead
//! node's jobs, and the views of the nodes.

use super::writer::{NewEvents, INSERT_EVENTS};
use super::{decode_job, unfinished_states, PgShared, EVENTS_LOCK, PG_JOB_COLUMNS};
use crate::codec::{encode_event, encode_state};
use crate::error::{pg_error, StoreError};
use crate::{ClaimFilter, FleetLimit, FleetToken};
use aura_model::events::Interruption;
use aura_model::{
    Event, Job, JobEvent, JobId, NewEvent, NodeCapacity, NodeState, NodeView, ProgressUpdate,
    Timestamp,
};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio_postgres::Row;

/// The database's clock in milliseconds: claims are timed by one clock for the whole fleet.
const NOW_MS: &str = "(extract(epoch from clock_timestamp()) * 1000)::bigint";

/// What the claim's filter says of a job, shared by both claim statements (`$1` tags, `$2` memory,
/// `$3` GPUs): queued, unclaimed, within this node's tags, memory and GPUs, every dependency finished.
const CLAIMABLE: &str = "state = 'queued' AND node_id IS NULL AND requires <@ $1::text[] \
     AND mem_bytes <= $2 AND gpus <= $3 \
     AND NOT EXISTS (SELECT 1 FROM jobs d WHERE d.id = ANY(jobs.after_ids) AND d.state <> 'finished')";

/// The node views' columns (`n` is `nodes`).
const NODE_COLUMNS: &str = "n.id, n.name, n.tags, n.url, n.state, n.incarnation, n.capacity, \
     (SELECT count(*) FROM jobs j WHERE j.node_id = n.id AND j.state IN ('running', 'paused', 'stopping')), \
     (SELECT count(*) FROM jobs j WHERE j.node_id = n.id AND j.state IN ('queued', 'held')), \
     GREATEST(0, extract(epoch from (now() - n.heartbeat_at)) * 1000)::bigint, \
     (extract(epoch from n.registered_at) * 1000)::bigint";

fn node_view(row: &Row, me: &str) -> Result<NodeView, StoreError> {
    let what = "reading the fleet's nodes";
    let get_err = |e| pg_error(what, e);
    let id: String = row.try_get(0).map_err(get_err)?;
    let state: String = row.try_get(4).map_err(get_err)?;
    let capacity: String = row.try_get(6).map_err(get_err)?;
    let count = |i: usize| -> Result<u32, StoreError> {
        let n: i64 = row.try_get(i).map_err(get_err)?;
        Ok(u32::try_from(n).unwrap_or(u32::MAX))
    };
    let age: i64 = row.try_get(9).map_err(get_err)?;
    Ok(NodeView {
        this_node: id == me,
        name: row.try_get(1).map_err(get_err)?,
        tags: row.try_get(2).map_err(get_err)?,
        url: row.try_get(3).map_err(get_err)?,
        state: state
            .parse::<NodeState>()
            .map_err(|e| StoreError::Internal(format!("node {id}: {e}")))?,
        incarnation: row.try_get(5).map_err(get_err)?,
        capacity: serde_json::from_str::<NodeCapacity>(&capacity)
            .map_err(|e| StoreError::Internal(format!("node {id}: capacity: {e}")))?,
        running: count(7)?,
        claimed: count(8)?,
        heartbeat_age_ms: u64::try_from(age).unwrap_or_default(),
        registered_at: Timestamp::from_unix_millis(row.try_get(10).map_err(get_err)?),
        id,
    })
}

/// Claimed rows (`PG_JOB_COLUMNS` then the epoch) as jobs with their epochs.
fn claimed(rows: &[Row]) -> Result<Vec<(Job, i64)>, StoreError> {
    rows.iter()
        .map(|row| {
            let epoch: i64 = row.try_get(14).map_err(|e| pg_error("claiming jobs", e))?;
            Ok((decode_job(row)?, epoch))
        })
        .collect()
}

impl PgShared {
    pub async fn register(&self, limits: &[FleetLimit]) -> Result<i64, StoreError> {
        let what = "registering this node";
        let node = self.node.clone();
        let capacity = crate::codec::to_json("node capacity", &node.capacity)?;
        let names: Vec<String> = limits.iter().map(|l| l.name.clone()).collect();
        let concurrent: Vec<Option<i32>> = limits
            .iter()
            .map(|l| {
                l.max_concurrent
                    .map(|n| i32::try_from(n).unwrap_or(i32::MAX))
            })
            .collect();
        let per_minute: Vec<Option<i32>> = limits
            .iter()
            .map(|l| l.per_minute.map(|n| i32::try_from(n).unwrap_or(i32::MAX)))
            .collect();
        let incarnation = self
            .with_client(what, |client| async move {
                let row = client
                    .query_one(
                        "INSERT INTO nodes (id, name, tags, url, capacity, incarnation, state, \
                         heartbeat_at, registered_at) VALUES ($1, $2, $3, $4, $5, 1, 'up', now(), now()) \
                         ON CONFLICT (id) DO UPDATE SET name = excluded.name, tags = excluded.tags, \
                         url = excluded.url, capacity = excluded.capacity, \
                         incarnation = nodes.incarnation + 1, state = 'up', heartbeat_at = now(), \
                         registered_at = now() RETURNING incarnation",
                        &[&node.id, &node.name, &node.tags, &node.url, &capacity],
                    )
                    .await
                    .map_err(|e| pg_error(what, e))?;
                if !names.is_empty() {
                    client
                        .execute(
                            "INSERT INTO fleet_limits (name, max_concurrent, per_minute) \
                             SELECT * FROM unnest($1::text[], $2::int[], $3::int[]) \
                             ON CONFLICT (name) DO UPDATE SET \
                             max_concurrent = excluded.max_concurrent, per_minute = excluded.per_minute",
                            &[&names, &concurrent, &per_minute],
                        )
                        .await
                        .map_err(|e| pg_error("writing the fleet's limits", e))?;
                }
                // Leases live in a node's memory: one that registers (again) holds none.
                client
                    .execute("DELETE FROM fleet_leases WHERE node_id = $1", &[&node.id])
                    .await
                    .map_err(|e| pg_error("dropping this node's old leases", e))?;
                row.try_get::<_, i64>(0).map_err(|e| pg_error(what, e))
            })
            .await?;
        self.incarnation.store(incarnation, Ordering::Release);
        Ok(incarnation)
    }

    pub async fn heartbeat(&self) -> Result<bool, StoreError> {
        let me = self.node.id.clone();
        let incarnation = self.incarnation.load(Ordering::Acquire);
        self.with_client("renewing this node's heartbeat", |client| async move {
            let n = client
                .execute(
                    "UPDATE nodes SET heartbeat_at = now() WHERE id = $1 AND incarnation = $2 \
                     AND state = 'up'",
                    &[&me, &incarnation],
                )
                .await
                .map_err(|e| pg_error("renewing this node's heartbeat", e))?;
            Ok(n == 1)
        })
        .await
    }

    pub async fn rescue(&self, timeout: Duration) -> Result<Vec<JobId>, StoreError> {
        let what = "rescuing the jobs of dead nodes";
        let me = self.node.id.clone();
        let timeout_ms = timeout.as_secs_f64() * 1000.0;
        self.with_client(what, |mut client| async move {
            let err = |e| pg_error(what, e);
            let tx = client.transaction().await.map_err(err)?;
            // Events are appended below: under the events lock, taken first (see `EVENTS_LOCK`).
            tx.query_one("SELECT pg_advisory_xact_lock($1)", &[&EVENTS_LOCK])
                .await
                .map_err(err)?;
            tx.execute(
                "UPDATE nodes SET state = 'dead' WHERE state = 'up' AND id <> $1 \
                 AND heartbeat_at < now() - $2 * interval '1 millisecond'",
                &[&me, &timeout_ms],
            )
            .await
            .map_err(err)?;
            // A dead node's leases go with it: their holders' renewals fail there anyway.
            tx.execute(
                "DELETE FROM fleet_leases l WHERE l.node_id <> $1 AND NOT EXISTS \
                 (SELECT 1 FROM nodes n WHERE n.id = l.node_id AND n.state = 'up')",
                &[&me],
            )
            .await
            .map_err(err)?;
            let rows = tx
                .query(
                    &format!(
                        "SELECT {PG_JOB_COLUMNS}, jobs.node_id FROM jobs WHERE node_id IS NOT NULL \
                         AND node_id <> $1 AND state IN ({}) AND NOT EXISTS (SELECT 1 FROM nodes n \
                         WHERE n.id = jobs.node_id AND n.state = 'up') ORDER BY id FOR UPDATE",
                        unfinished_states()
                    ),
                    &[&me],
                )
                .await
                .map_err(err)?;
            let now = Timestamp::now();
            let mut events = NewEvents::default();
            let mut rescued = Vec::with_capacity(rows.len());
            for row in &rows {
                let mut job = decode_job(row)?;
                let node_id: String = row.try_get(14).map_err(err)?;
                if job.state.run().is_none() {
                    // Claimed, not started: back to the queue, unclaimed.
                    tx.execute(
                        "UPDATE jobs SET node_id = NULL, node = NULL, epoch = epoch + 1 WHERE id = $1",
                        &[&job.id.0],
                    )
                    .await
                    .map_err(err)?;
                } else {
                    // As crash recovery records a job its dead daemon ran (`JobEvent::Interrupted`,
                    // then, if the policy allows, a requeue stamped under the next attempt).
                    let name = job.node.clone().unwrap_or(node_id);
                    let reason = format!("node {name} stopped heartbeating");
                    job.apply(Event::Interrupted {
                        reason: reason.clone(),
                        at: now,
                    })
                    .map_err(|e| {
                        StoreError::Internal(format!("rescuing job {}: {e}", job.id))
                    })?;
                    let mut logged = vec![NewEvent::new(JobEvent::Interrupted(Interruption {
                        reason,
                        interruptions: None,
                        recovery: None,
                    }))];
                    if job.may_retry() {
                        NewEvent::stamp(&mut logged, job.attempt);
                        job.apply(Event::Requeue { at: now }).map_err(|e| {
                            StoreError::Internal(format!("requeuing job {}: {e}", job.id))
                        })?;
                        logged.push(NewEvent::new(JobEvent::Requeued {
                            attempt: job.attempt,
                        }));
                    }
                    let state = encode_state(&job)?;
                    // A job that ends here keeps the name of the node it ran on, for the record.
                    let ended = state.state == "finished";
                    tx.execute(
                        "UPDATE jobs SET state = $2, updated_at_ms = $3, attempt = $4, failures = $5, \
                         outcome = $6, state_data = $7, memory_request = $8, pressure_stops = $9, \
                         interruptions = $10, node_id = NULL, \
                         node = CASE WHEN $11 THEN node ELSE NULL END, epoch = epoch + 1 WHERE id = $1",
                        &[
                            &job.id.0,
                            &state.state,
                            &state.updated_at_ms,
                            &state.attempt,
                            &state.failures,
                            &state.outcome,
                            &state.state_data,
                            &state.memory_request,
                            &state.pressure_stops,
                            &state.interruptions,
                            &ended,
                        ],
                    )
                    .await
                    .map_err(err)?;
                    for event in &logged {
                        events.push(job.id.0, state.attempt, &encode_event(event)?);
                    }
                }
                rescued.push(job.id);
            }
            if !events.job_id.is_empty() {
                tx.query(INSERT_EVENTS, &events.params())
                    .await
                    .map_err(err)?;
                tx.batch_execute("SELECT pg_notify('aura_events', '')")
                    .await
                    .map_err(err)?;
            }
            if !rescued.is_empty() {
                tx.batch_execute("SELECT pg_notify('aura_work', '')")
                    .await
                    .map_err(err)?;
            }
            tx.commit().await.map_err(err)?;
            if !rescued.is_empty() {
                tracing::warn!(jobs = rescued.len(), "rescued the jobs of nodes that stopped heartbeating");
            }
            Ok(rescued)
        })
        .await
    }

    pub async fn claim(&self, max: u32, filter: &ClaimFilter) -> Result<Vec<Job>, StoreError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let what = "claiming jobs";
        let tags = filter.tags.clone();
        let memory = i64::try_from(filter.memory_bytes).unwrap_or(i64::MAX);
        let gpus = i32::try_from(filter.gpus).unwrap_or(i32::MAX);
        let (me, name) = (self.node.id.clone(), self.node.name.clone());
        let mut jobs = self
            .with_client(what, |mut client| async move {
                let sql = format!(
                    "WITH c AS (SELECT id FROM jobs WHERE {CLAIMABLE} AND providers = '{{}}' \
                     ORDER BY priority DESC, id LIMIT $4 FOR UPDATE SKIP LOCKED) \
                     UPDATE jobs SET node_id = $5, node = $6, epoch = jobs.epoch + 1, \
                     claimed_at_ms = {NOW_MS} FROM c WHERE jobs.id = c.id \
                     RETURNING {PG_JOB_COLUMNS}, jobs.epoch"
                );
                let stmt = client
                    .prepare_cached(&sql)
                    .await
                    .map_err(|e| pg_error(what, e))?;
                let rows = client
                    .query(&stmt, &[&tags, &memory, &gpus, &i64::from(max), &me, &name])
                    .await
                    .map_err(|e| pg_error(what, e))?;
                let mut jobs = claimed(&rows)?;
                self.hold(&jobs);
                let room = max as usize - jobs.len().min(max as usize);
                if room > 0 {
                    match claim_limited(&mut client, &tags, memory, gpus, room, &me, &name).await {
                        Ok(more) => {
                            self.hold(&more);
                            jobs.extend(more);
                        }
                        // What the first statement claimed is claimed: hand it out all the same.
                        Err(error) if !jobs.is_empty() => {
                            tracing::warn!(%error, "claiming jobs that name fleet limits failed");
                        }
                        Err(error) => return Err(error),
                    }
                }
                Ok(jobs)
            })
            .await?;
        jobs.sort_by_key(|(job, _)| (std::cmp::Reverse(job.spec.priority), job.id.0));
        Ok(jobs.into_iter().map(|(job, _)| job).collect())
    }

    /// Remembers the epochs of jobs just claimed, for their writes.
    fn hold(&self, jobs: &[(Job, i64)]) {
        let mut epochs = self.epochs();
        for (job, epoch) in jobs {
            epochs.insert(job.id, *epoch);
        }
    }

    pub async fn claim_one(&self, id: JobId) -> Result<Option<Job>, StoreError> {
        let what = "claiming a job";
        let (me, name) = (self.node.id.clone(), self.node.name.clone());
        let found = self
            .with_client(what, |client| async move {
                // One this node holds already keeps its epoch: its queued writes stay valid.
                let rows = client
                    .query(
                        &format!(
                            "UPDATE jobs SET node_id = $2, node = $3, \
                             epoch = CASE WHEN node_id IS NULL THEN epoch + 1 ELSE epoch END, \
                             claimed_at_ms = CASE WHEN node_id IS NULL THEN {NOW_MS} ELSE claimed_at_ms END \
                             WHERE id = $1 AND state IN ('queued', 'held') \
                             AND (node_id IS NULL OR node_id = $2) RETURNING {PG_JOB_COLUMNS}, jobs.epoch"
                        ),
                        &[&id.0, &me, &name],
                    )
                    .await
                    .map_err(|e| pg_error(what, e))?;
                claimed(&rows)
            })
            .await?;
        self.hold(&found);
        Ok(found.into_iter().next().map(|(job, _)| job))
    }

    pub async fn release(&self, ids: &[JobId]) -> Result<u64, StoreError> {
        let ids: Vec<i64> = ids.iter().map(|id| id.0).collect();
        let me = self.node.id.clone();
        let released = self
            .with_client("releasing jobs", |client| async move {
                let rows = client
                    .query(
                        "WITH r AS (UPDATE jobs SET node_id = NULL, node = NULL, epoch = epoch + 1 \
                         WHERE id = ANY($1) AND node_id = $2 AND state IN ('queued', 'held') \
                         RETURNING id) SELECT id, pg_notify('aura_work', '') FROM r",
                        &[&ids, &me],
                    )
                    .await
                    .map_err(|e| pg_error("releasing jobs", e))?;
                rows.iter()
                    .map(|r| r.try_get::<_, i64>(0))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| pg_error("releasing jobs", e))
            })
            .await?;
        self.forget(&released);
        Ok(released.len() as u64)
    }

    pub async fn leave(&self) -> Result<u64, StoreError> {
        let me = self.node.id.clone();
        let released = self
            .with_client("leaving the fleet", |client| async move {
                let rows = client
                    .query(
                        "WITH r AS (UPDATE jobs SET node_id = NULL, node = NULL, epoch = epoch + 1 \
                         WHERE node_id = $1 AND state IN ('queued', 'held') RETURNING id) \
                         SELECT id, pg_notify('aura_work', '') FROM r",
                        &[&me],
                    )
                    .await
                    .map_err(|e| pg_error("leaving the fleet", e))?;
                client
                    .execute("UPDATE nodes SET state = 'left' WHERE id = $1", &[&me])
                    .await
                    .map_err(|e| pg_error("leaving the fleet", e))?;
                rows.iter()
                    .map(|r| r.try_get::<_, i64>(0))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| pg_error("leaving the fleet", e))
            })
            .await?;
        self.forget(&released);
        Ok(released.len() as u64)
    }

    fn forget(&self, ids: &[i64]) {
        let mut epochs = self.epochs();
        for id in ids {
            epochs.remove(&JobId(*id));
        }
    }

    pub fn forget_all(&self) {
        self.epochs().clear();
    }

    pub async fn hold_lease(
        &self,
        lease: u64,
        providers: &[String],
        ttl: Duration,
    ) -> Result<Option<(String, u32)>, StoreError> {
        let what = "holding a lease's slots of the fleet's limits";
        let me = self.node.id.clone();
        let lease = i64::try_from(lease).unwrap_or(i64::MAX);
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        let mut names = providers.to_vec();
        names.sort();
        names.dedup();
        self.with_client(what, |mut client| async move {
            let err = |e| pg_error(what, e);
            let tx = client.transaction().await.map_err(err)?;
            // The limits' rows first, in name order, as claims take them: counts stay exact.
            let limits = tx
                .query(
                    "SELECT name, max_concurrent FROM fleet_limits WHERE name = ANY($1) \
                     ORDER BY name FOR UPDATE",
                    &[&names],
                )
                .await
                .map_err(err)?;
            let held = held_slots(&tx, &names).await.map_err(err)?;
            for row in &limits {
                let name: String = row.try_get(0).map_err(err)?;
                let Some(max) = row.try_get::<_, Option<i32>>(1).map_err(err)? else {
                    continue;
                };
                let holding = held.get(&name).map_or(0, |h| h.0);
                if holding >= i64::from(max) {
                    tx.commit().await.map_err(err)?;
                    return Ok(Some((name, u32::try_from(max).unwrap_or_default())));
                }
            }
            // Leases whose holders vanished end at their deadlines; their rows go here.
            tx.execute(
                &format!("DELETE FROM fleet_leases WHERE expires_at_ms < {NOW_MS}"),
                &[],
            )
            .await
            .map_err(err)?;
            tx.execute(
                &format!(
                    "INSERT INTO fleet_leases (node_id, lease_id, providers, expires_at_ms) \
                     VALUES ($1, $2, $3, {NOW_MS} + $4) ON CONFLICT (node_id, lease_id) DO UPDATE \
                     SET providers = excluded.providers, expires_at_ms = excluded.expires_at_ms"
                ),
                &[&me, &lease, &names, &ttl_ms],
            )
            .await
            .map_err(err)?;
            tx.commit().await.map_err(err)?;
            Ok(None)
        })
        .await
    }

    pub async fn renew_lease(&self, lease: u64, ttl: Duration) -> Result<bool, StoreError> {
        let what = "renewing a lease's slots of the fleet's limits";
        let me = self.node.id.clone();
        let lease = i64::try_from(lease).unwrap_or(i64::MAX);
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        self.with_client(what, |client| async move {
            let n = client
                .execute(
                    &format!(
                        "UPDATE fleet_leases SET expires_at_ms = {NOW_MS} + $3 \
                         WHERE node_id = $1 AND lease_id = $2"
                    ),
                    &[&me, &lease, &ttl_ms],
                )
                .await
                .map_err(|e| pg_error(what, e))?;
            Ok(n == 1)
        })
        .await
    }

    pub async fn drop_lease(&self, lease: u64) -> Result<(), StoreError> {
        let what = "giving back a lease's slots of the fleet's limits";
        let me = self.node.id.clone();
        let lease = i64::try_from(lease).unwrap_or(i64::MAX);
        self.with_client(what, |client| async move {
            client
                .execute(
                    "DELETE FROM fleet_leases WHERE node_id = $1 AND lease_id = $2",
                    &[&me, &lease],
                )
                .await
                .map_err(|e| pg_error(what, e))?;
            Ok(())
        })
        .await
    }

    pub async fn waiting(&self, submitter: Option<&str>) -> Result<(u64, u64), StoreError> {
        let what = "counting the fleet's waiting jobs";
        let submitter = submitter.map(str::to_owned);
        self.with_client(what, |client| async move {
            let row = client
                .query_one(
                    "SELECT count(*), count(*) FILTER (WHERE submitted_by = $1) FROM jobs \
                     WHERE state IN ('queued', 'held')",
                    &[&submitter],
                )
                .await
                .map_err(|e| pg_error(what, e))?;
            let count = |i: usize| -> Result<u64, StoreError> {
                let n: i64 = row.try_get(i).map_err(|e| pg_error(what, e))?;
                Ok(u64::try_from(n).unwrap_or_default())
            };
            Ok((count(0)?, count(1)?))
        })
        .await
    }

    pub async fn nodes(&self) -> Result<Vec<NodeView>, StoreError> {
        let me = self.node.id.clone();
        self.with_client("reading the fleet's nodes", |client| async move {
            let rows = client
                .query(
                    &format!(
                        "SELECT {NODE_COLUMNS} FROM nodes n ORDER BY (n.state <> 'up'), n.name, n.id"
                    ),
                    &[],
                )
                .await
                .map_err(|e| pg_error("reading the fleet's nodes", e))?;
            rows.iter().map(|row| node_view(row, &me)).collect()
        })
        .await
    }

    pub async fn publish_tokens(&self, tokens: &[FleetToken]) -> Result<(), StoreError> {
        let what = "publishing this node's API tokens";
        let me = self.node.id.clone();
        let names: Vec<String> = tokens.iter().map(|t| t.name.clone()).collect();
        let hashes: Vec<String> = tokens.iter().map(|t| t.hash.clone()).collect();
        let scopes: Vec<String> = tokens.iter().map(|t| t.scope.clone()).collect();
        self.with_client(what, |mut client| async move {
            let err = |e| pg_error(what, e);
            let tx = client.transaction().await.map_err(err)?;
            tx.execute("DELETE FROM fleet_tokens WHERE node_id = $1", &[&me])
                .await
                .map_err(err)?;
            tx.execute(
                "INSERT INTO fleet_tokens (node_id, name, hash, scope) \
                 SELECT $1, * FROM unnest($2::text[], $3::text[], $4::text[])",
                &[&me, &names, &hashes, &scopes],
            )
            .await
            .map_err(err)?;
            tx.commit().await.map_err(err)
        })
        .await
    }

    pub async fn tokens(&self) -> Result<Vec<FleetToken>, StoreError> {
        let what = "reading the fleet's API tokens";
        let me = self.node.id.clone();
        self.with_client(what, |client| async move {
            let rows = client
                .query(
                    "SELECT COALESCE(n.name, t.node_id), t.name, t.hash, t.scope FROM fleet_tokens t \
                     LEFT JOIN nodes n ON n.id = t.node_id WHERE t.node_id <> $1 \
                     ORDER BY t.node_id, t.name",
                    &[&me],
                )
                .await
                .map_err(|e| pg_error(what, e))?;
            rows.iter()
                .map(|row| {
                    Ok(FleetToken {
                        node: row.try_get(0)?,
                        name: row.try_get(1)?,
                        hash: row.try_get(2)?,
                        scope: row.try_get(3)?,
                    })
                })
                .collect::<Result<_, tokio_postgres::Error>>()
                .map_err(|e| pg_error(what, e))
        })
        .await
    }

    pub async fn owner(&self, id: JobId) -> Result<Option<NodeView>, StoreError> {
        let me = self.node.id.clone();
        self.with_client("reading a job's node", |client| async move {
            let row = client
                .query_opt(
                    &format!(
                        "SELECT {NODE_COLUMNS} FROM nodes n \
                         WHERE n.id = (SELECT node_id FROM jobs WHERE id = $1)"
                    ),
                    &[&id.0],
                )
                .await
                .map_err(|e| pg_error("reading a job's node", e))?;
            row.map(|row| node_view(&row, &me)).transpose()
        })
        .await
    }

    pub fn work(&self) -> Arc<tokio::sync::Notify> {
        self.work.clone()
    }

    pub fn fenced(&self) -> tokio::sync::broadcast::Receiver<JobId> {
        self.fenced.subscribe()
    }

    pub async fn publish_progress(&self, updates: &[ProgressUpdate]) -> Result<(), StoreError> {
        let what = "publishing live progress to the fleet";
        let payloads = progress_payloads(&self.node.id, updates)?;
        if payloads.is_empty() {
            return Ok(());
        }
        self.with_client(what, |client| async move {
            let notify = client
                .prepare_cached("SELECT pg_notify('aura_progress', $1)")
                .await
                .map_err(|e| pg_error(what, e))?;
            for payload in &payloads {
                client
                    .execute(&notify, &[payload])
                    .await
                    .map_err(|e| pg_error(what, e))?;
            }
            Ok(())
        })
        .await
    }

    pub fn progress(&self) -> tokio::sync::broadcast::Receiver<Arc<ProgressUpdate>> {
        self.progress.subscribe()
    }
}

/// One `aura_progress` notification: a node's progress updates of one round.
#[derive(serde::Serialize, serde::Deserialize)]
pub(crate) struct ProgressNote {
    pub node: String,
    pub updates: Vec<ProgressUpdate>,
}

/// A notification's payload must stay under PostgreSQL's 8,000 bytes: updates (a few hundred bytes
/// each) are packed into as few notes as fit under this.
const PROGRESS_PAYLOAD: usize = 7_000;

/// `updates` as notes of node `node`, each payload under `PROGRESS_PAYLOAD` (an update that alone is
/// larger is left out).
pub(crate) fn progress_payloads(
    node: &str,
    updates: &[ProgressUpdate],
) -> Result<Vec<String>, StoreError> {
    let mut payloads = Vec::new();
    let mut note = ProgressNote {
        node: node.to_owned(),
        updates: Vec::new(),
    };
    let mut size = 0;
    for update in updates {
        let len = crate::codec::to_json("a progress update", update)?.len() + 1;
        if len + node.len() + 32 > PROGRESS_PAYLOAD {
            continue;
        }
        if size + len + node.len() + 32 > PROGRESS_PAYLOAD {
            payloads.push(crate::codec::to_json("progress updates", &note)?);
            note.updates.clear();
            size = 0;
        }
        note.updates.push(update.clone());
        size += len;
    }
    if !note.updates.is_empty() {
        payloads.push(crate::codec::to_json("progress updates", &note)?);
    }
    Ok(payloads)
}

/// Per limit of `names`: the slots held now (jobs claimed and not finished, on any node, and leases
/// not expired) and the jobs claimed in the last minute. The caller holds the limits' row locks, so
/// that every claim and lease committed before is counted and none commits meanwhile.
async fn held_slots(
    tx: &tokio_postgres::Transaction<'_>,
    names: &[String],
) -> Result<HashMap<String, (i64, i64)>, tokio_postgres::Error> {
    let rows = tx
        .query(
            &format!(
                "SELECT p, sum(holding)::bigint, sum(recent)::bigint FROM ( \
                 SELECT p, count(*) FILTER (WHERE jobs.node_id IS NOT NULL AND jobs.state <> 'finished') \
                 AS holding, count(*) FILTER (WHERE jobs.claimed_at_ms > {NOW_MS} - 60000) AS recent \
                 FROM jobs, unnest(jobs.providers) p WHERE jobs.providers && $1 AND p = ANY($1) GROUP BY p \
                 UNION ALL \
                 SELECT p, count(*), 0 FROM fleet_leases l, unnest(l.providers) p \
                 WHERE l.providers && $1 AND p = ANY($1) AND l.expires_at_ms > {NOW_MS} GROUP BY p \
                 ) c GROUP BY p"
            ),
            &[&names],
        )
        .await?;
    rows.iter()
        .map(|row| Ok((row.try_get(0)?, (row.try_get(1)?, row.try_get(2)?))))
        .collect()
}

/// Claims up to `room` jobs naming fleet limits, in one transaction: candidates locked (skipping those
/// another claimer holds), then the limits' rows locked in name order (so claimers of one limit take
/// turns and count exactly), holders counted, and only what fits claimed. A provider without a row in
/// `fleet_limits` is unlimited.
async fn claim_limited(
    client: &mut deadpool_postgres::Object,
    tags: &[String],
    memory: i64,
    gpus: i32,
    room: usize,
    me: &str,
    name: &str,
) -> Result<Vec<(Job, i64)>, StoreError> {
    let what = "claiming jobs that name fleet limits";
    let err = |e| pg_error(what, e);
    let tx = client.transaction().await.map_err(err)?;
    let candidates = tx
        .query(
            &format!(
                "SELECT id, providers FROM jobs WHERE {CLAIMABLE} AND providers <> '{{}}' \
                 ORDER BY priority DESC, id LIMIT $4 FOR UPDATE SKIP LOCKED"
            ),
            &[&tags, &memory, &gpus, &(room as i64 * 4 + 16)],
        )
        .await
        .map_err(err)?;
    if candidates.is_empty() {
        tx.commit().await.map_err(err)?;
        return Ok(Vec::new());
    }
    let candidates: Vec<(i64, Vec<String>)> = candidates
        .iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect::<Result<_, tokio_postgres::Error>>()
        .map_err(err)?;
    let mut names: Vec<String> = candidates.iter().flat_map(|(_, p)| p.clone()).collect();
    names.sort();
    names.dedup();
    let limits = tx
        .query(
            "SELECT name, max_concurrent, per_minute FROM fleet_limits WHERE name = ANY($1) \
             ORDER BY name FOR UPDATE",
            &[&names],
        )
        .await
        .map_err(err)?;
    // name → (max concurrent, per minute, holding now, claimed in the last minute)
    let mut room_of: HashMap<String, (Option<i64>, Option<i64>, i64, i64)> = HashMap::new();
    for row in &limits {
        let name: String = row.try_get(0).map_err(err)?;
        let concurrent: Option<i32> = row.try_get(1).map_err(err)?;
        let per_minute: Option<i32> = row.try_get(2).map_err(err)?;
        room_of.insert(
            name,
            (concurrent.map(i64::from), per_minute.map(i64::from), 0, 0),
        );
    }
    if !room_of.is_empty() {
        let limited: Vec<String> = room_of.keys().cloned().collect();
        // Counted only now, after the limits' locks: every claim that committed before is seen.
        for (name, (holding, recent)) in held_slots(&tx, &limited).await.map_err(err)? {
            if let Some(slot) = room_of.get_mut(&name) {
                slot.2 = holding;
                slot.3 = recent;
            }
        }
    }
    let mut chosen: Vec<i64> = Vec::new();
    for (id, providers) in &candidates {
        if chosen.len() >= room {
            break;
        }
        let fits = providers.iter().all(|p| match room_of.get(p) {
            None => true,
            Some((concurrent, per_minute, holding, recent)) => {
                concurrent.map_or(true, |max| *holding < max)
                    && per_minute.map_or(true, |max| *recent < max)
            }
        });
        if fits {
            for p in providers {
                if let Some(slot) = room_of.get_mut(p) {
                    slot.2 += 1;
                    slot.3 += 1;
                }
            }
            chosen.push(*id);
        }
    }
    let rows = if chosen.is_empty() {
        Vec::new()
    } else {
        tx.query(
            &format!(
                "UPDATE jobs SET node_id = $2, node = $3, epoch = epoch + 1, claimed_at_ms = {NOW_MS} \
                 WHERE id = ANY($1) RETURNING {PG_JOB_COLUMNS}, jobs.epoch"
            ),
            &[&chosen, &me, &name],
        )
        .await
        .map_err(err)?
    };
    tx.commit().await.map_err(err)?;
    claimed(&rows)
}

#[cfg(test)]
mod tests {
    use super::{progress_payloads, ProgressNote, PROGRESS_PAYLOAD};
    use aura_model::{JobId, Progress, ProgressUpdate};

    fn update(id: i64, percent: f64) -> ProgressUpdate {
        ProgressUpdate {
            job_id: JobId(id),
            progress: Progress {
                percent: Some(percent),
                fps: Some(25.0),
                reports: 3,
                ..Progress::default()
            },
        }
    }

    #[test]
    fn progress_is_packed_under_the_notification_limit_in_order() {
        let updates: Vec<ProgressUpdate> = (0..200).map(|n| update(n, n as f64 / 2.0)).collect();
        let payloads = progress_payloads("node-1", &updates).expect("payloads");
        assert!(payloads.len() > 1, "200 updates do not fit one note");
        let mut back = Vec::new();
        for payload in &payloads {
            assert!(payload.len() <= PROGRESS_PAYLOAD, "{}", payload.len());
            let note: ProgressNote = serde_json::from_str(payload).expect("a note");
            assert_eq!(note.node, "node-1");
            back.extend(note.updates);
        }
        assert_eq!(back, updates);
        assert!(progress_payloads("node-1", &[]).expect("none").is_empty());
    }
}

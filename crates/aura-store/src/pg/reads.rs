//! PostgreSQL's read queries, on pooled connections: the same answers as SQLite's `reader` and
//! retention queries, plus this node's unfinished jobs (whose epochs it loads).

use super::{decode_job, unfinished_states, PgShared, PG_JOB_COLUMNS};
use crate::codec::{decode_engine_parts, decode_event_parts, parse_state_name};
use crate::error::{pg_error, StoreError};
use crate::RetainedJob;
use aura_model::{
    CommittedEvent, EngineEventRecord, EventLog, Job, JobEventRecord, JobId, StateName,
};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Row};

/// Like SQLite's: lists and pages are capped at this.
const MAX_LIST_LIMIT: u32 = 1000;

/// The newest sequence numbers of the job log and of the engine log (0 for an empty log).
pub(crate) async fn latest_seqs(client: &Client) -> Result<(i64, i64), StoreError> {
    let row = client
        .query_one(
            "SELECT (SELECT COALESCE(MAX(seq), 0) FROM job_events), \
                    (SELECT COALESCE(MAX(seq), 0) FROM engine_events)",
            &[],
        )
        .await
        .map_err(|e| pg_error("reading the newest event numbers", e))?;
    Ok((
        row.try_get(0)
            .map_err(|e| pg_error("reading the newest event numbers", e))?,
        row.try_get(1)
            .map_err(|e| pg_error("reading the newest event numbers", e))?,
    ))
}

fn jobs(rows: &[Row]) -> Result<Vec<Job>, StoreError> {
    rows.iter().map(decode_job).collect()
}

/// `seq, job_id, at_ms, attempt, kind, detail` as a record.
fn event_record(row: &Row) -> Result<JobEventRecord, StoreError> {
    let what = "reading job events";
    let attempt: i64 = row.try_get(3).map_err(|e| pg_error(what, e))?;
    let detail: String = row.try_get(5).map_err(|e| pg_error(what, e))?;
    let job_id: i64 = row.try_get(1).map_err(|e| pg_error(what, e))?;
    decode_event_parts(
        row.try_get(0).map_err(|e| pg_error(what, e))?,
        job_id,
        row.try_get(2).map_err(|e| pg_error(what, e))?,
        u32::try_from(attempt).map_err(|e| StoreError::Corrupt {
            id: JobId(job_id),
            detail: format!("event attempt: {e}"),
        })?,
        row.try_get(4).map_err(|e| pg_error(what, e))?,
        &detail,
    )
}

/// Committed job events after `after`, of one job or of all, as live streams carry them.
pub(crate) async fn job_events_after(
    client: &Client,
    job: Option<JobId>,
    after: i64,
    limit: i64,
) -> Result<Vec<CommittedEvent>, StoreError> {
    let what = "reading events to replay";
    let rows = match job {
        Some(id) => {
            client
                .query(
                    "SELECT seq, at_ms, kind, detail, attempt, job_id FROM job_events \
                 WHERE job_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
                    &[&id.0, &after, &limit],
                )
                .await
        }
        None => {
            client
                .query(
                    "SELECT seq, at_ms, kind, detail, attempt, job_id FROM job_events \
                 WHERE seq > $1 ORDER BY seq LIMIT $2",
                    &[&after, &limit],
                )
                .await
        }
    }
    .map_err(|e| pg_error(what, e))?;
    rows.iter()
        .map(|row| {
            Ok(CommittedEvent::new(
                EventLog::Job(JobId(row.try_get(5)?)),
                row.try_get(0)?,
                row.try_get(1)?,
                Some(row.try_get::<_, i64>(4)?),
                row.try_get(2)?,
                row.try_get(3)?,
            ))
        })
        .collect::<Result<Vec<_>, tokio_postgres::Error>>()
        .map_err(|e| pg_error(what, e))
}

/// Committed engine events after `after`, as live streams carry them.
pub(crate) async fn engine_events_after(
    client: &Client,
    after: i64,
    limit: i64,
) -> Result<Vec<CommittedEvent>, StoreError> {
    let what = "reading engine events to replay";
    let rows = client
        .query(
            "SELECT seq, at_ms, kind, detail FROM engine_events WHERE seq > $1 ORDER BY seq LIMIT $2",
            &[&after, &limit],
        )
        .await
        .map_err(|e| pg_error(what, e))?;
    rows.iter()
        .map(|row| {
            Ok(CommittedEvent::new(
                EventLog::Engine,
                row.try_get(0)?,
                row.try_get(1)?,
                None,
                row.try_get(2)?,
                row.try_get(3)?,
            ))
        })
        .collect::<Result<Vec<_>, tokio_postgres::Error>>()
        .map_err(|e| pg_error(what, e))
}

impl PgShared {
    pub async fn get(&self, id: JobId) -> Result<Option<Job>, StoreError> {
        self.with_client("reading a job", |client| async move {
            let rows = client
                .query(
                    &format!("SELECT {PG_JOB_COLUMNS} FROM jobs WHERE id = $1"),
                    &[&id.0],
                )
                .await
                .map_err(|e| pg_error("reading a job", e))?;
            Ok(jobs(&rows)?.pop())
        })
        .await
    }

    pub async fn list(
        &self,
        states: &[StateName],
        labels: &[(String, String)],
        after: Option<JobId>,
        limit: u32,
        newest_first: bool,
    ) -> Result<Vec<Job>, StoreError> {
        let limit = i64::from(limit.min(MAX_LIST_LIMIT));
        if limit == 0 {
            return Ok(Vec::new());
        }
        let wanted: Vec<String> = StateName::ALL
            .into_iter()
            .filter(|s| states.contains(s))
            .map(|s| s.as_str().to_owned())
            .collect();
        let mut clauses = Vec::new();
        let mut args: Vec<Box<dyn ToSql + Sync + Send>> = Vec::new();
        if !wanted.is_empty() && wanted.len() < StateName::ALL.len() {
            args.push(Box::new(wanted));
            clauses.push(format!("state = ANY(${})", args.len()));
        }
        // Labels live in the spec's JSON; key and value are bound, never spliced into the text.
        for (key, value) in labels {
            args.push(Box::new(key.clone()));
            args.push(Box::new(value.clone()));
            clauses.push(format!(
                "(spec::jsonb -> 'labels' ->> ${}) = ${}",
                args.len() - 1,
                args.len()
            ));
        }
        if let Some(after) = after {
            args.push(Box::new(after.0));
            clauses.push(format!(
                "id {} ${}",
                if newest_first { "<" } else { ">" },
                args.len()
            ));
        }
        args.push(Box::new(limit));
        let filter = if clauses.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", clauses.join(" AND "))
        };
        let order = if newest_first { "DESC" } else { "ASC" };
        let sql = format!(
            "SELECT {PG_JOB_COLUMNS} FROM jobs {filter} ORDER BY id {order} LIMIT ${}",
            args.len()
        );
        self.with_client("listing jobs", |client| async move {
            let stmt = client
                .prepare_cached(&sql)
                .await
                .map_err(|e| pg_error("listing jobs", e))?;
            let params: Vec<&(dyn ToSql + Sync)> =
                args.iter().map(|a| &**a as &(dyn ToSql + Sync)).collect();
            let rows = client
                .query(&stmt, &params)
                .await
                .map_err(|e| pg_error("listing jobs", e))?;
            jobs(&rows)
        })
        .await
    }

    /// This node's unfinished jobs, oldest first, their epochs loaded: what recovery writes.
    pub async fn unfinished(&self) -> Result<Vec<Job>, StoreError> {
        let me = self.node.id.clone();
        let found = self
            .with_client("reading unfinished jobs", |client| async move {
                let rows = client
                    .query(
                        &format!(
                            "SELECT {PG_JOB_COLUMNS}, jobs.epoch FROM jobs WHERE node_id = $1 \
                             AND state IN ({}) ORDER BY id",
                            unfinished_states()
                        ),
                        &[&me],
                    )
                    .await
                    .map_err(|e| pg_error("reading unfinished jobs", e))?;
                rows.iter()
                    .map(|row| {
                        let epoch: i64 = row
                            .try_get(14)
                            .map_err(|e| pg_error("reading unfinished jobs", e))?;
                        Ok((decode_job(row)?, epoch))
                    })
                    .collect::<Result<Vec<_>, StoreError>>()
            })
            .await?;
        let mut epochs = self.epochs();
        Ok(found
            .into_iter()
            .map(|(job, epoch)| {
                epochs.insert(job.id, epoch);
                job
            })
            .collect())
    }

    pub async fn events(&self, id: JobId) -> Result<Vec<JobEventRecord>, StoreError> {
        self.with_client("reading job events", |client| async move {
            let rows = client
                .query(
                    "SELECT seq, job_id, at_ms, attempt, kind, detail FROM job_events \
                     WHERE job_id = $1 ORDER BY seq",
                    &[&id.0],
                )
                .await
                .map_err(|e| pg_error("reading job events", e))?;
            rows.iter().map(event_record).collect()
        })
        .await
    }

    pub async fn committed_after(
        &self,
        log: Option<EventLog>,
        after: i64,
        limit: u32,
    ) -> Result<Vec<CommittedEvent>, StoreError> {
        let limit = i64::from(limit.min(MAX_LIST_LIMIT));
        self.with_client("reading events to replay", |client| async move {
            match log {
                Some(EventLog::Engine) => engine_events_after(&client, after, limit).await,
                Some(EventLog::Job(id)) => job_events_after(&client, Some(id), after, limit).await,
                None => job_events_after(&client, None, after, limit).await,
            }
        })
        .await
    }

    pub async fn latest_seqs(&self) -> Result<(i64, i64), StoreError> {
        self.with_client("reading the newest event numbers", |client| async move {
            latest_seqs(&client).await
        })
        .await
    }

    pub async fn engine_events(
        &self,
        after: i64,
        limit: u32,
    ) -> Result<Vec<EngineEventRecord>, StoreError> {
        let what = "reading engine events";
        let limit = i64::from(limit.min(MAX_LIST_LIMIT));
        self.with_client(what, |client| async move {
            let rows = client
                .query(
                    "SELECT seq, at_ms, kind, detail FROM engine_events WHERE seq > $1 \
                     ORDER BY seq LIMIT $2",
                    &[&after, &limit],
                )
                .await
                .map_err(|e| pg_error(what, e))?;
            rows.iter()
                .map(|row| {
                    let detail: String = row.try_get(3).map_err(|e| pg_error(what, e))?;
                    decode_engine_parts(
                        row.try_get(0).map_err(|e| pg_error(what, e))?,
                        row.try_get(1).map_err(|e| pg_error(what, e))?,
                        row.try_get(2).map_err(|e| pg_error(what, e))?,
                        &detail,
                    )
                })
                .collect()
        })
        .await
    }

    /// This node's setting.
    pub async fn setting(&self, key: &str) -> Result<Option<String>, StoreError> {
        let (me, key) = (self.node.id.clone(), key.to_owned());
        self.with_client("reading a setting", |client| async move {
            let row = client
                .query_opt(
                    "SELECT value FROM settings WHERE node_id = $1 AND key = $2",
                    &[&me, &key],
                )
                .await
                .map_err(|e| pg_error("reading a setting", e))?;
            row.map(|r| r.try_get(0))
                .transpose()
                .map_err(|e| pg_error("reading a setting", e))
        })
        .await
    }

    pub async fn memory_peaks(&self, kind: &str, limit: u32) -> Result<Vec<u64>, StoreError> {
        let what = "reading memory peaks";
        let kind = kind.to_owned();
        self.with_client(what, |client| async move {
            let rows = client
                .query(
                    "SELECT (state_data::jsonb -> 'accounting' ->> 'memory_peak')::bigint FROM jobs \
                     WHERE kind = $1 AND outcome = 'succeeded' ORDER BY id DESC LIMIT $2",
                    &[&kind, &i64::from(limit)],
                )
                .await
                .map_err(|e| pg_error(what, e))?;
            let mut peaks = Vec::new();
            for row in rows {
                let peak: Option<i64> = row.try_get(0).map_err(|e| pg_error(what, e))?;
                if let Some(p) = peak.and_then(|p| u64::try_from(p).ok()) {
                    peaks.push(p);
                }
            }
            Ok(peaks)
        })
        .await
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        self.with_client("pinging the job database", |client| async move {
            client
                .query_one("SELECT 1", &[])
                .await
                .map(drop)
                .map_err(|e| pg_error("pinging the job database", e))
        })
        .await
    }

    pub async fn quarantined(&self, limit: u32) -> Result<Vec<JobId>, StoreError> {
        let what = "reading quarantined jobs";
        self.with_client(what, |client| async move {
            let rows = client
                .query(
                    "SELECT id FROM jobs WHERE outcome = 'quarantined' ORDER BY id DESC LIMIT $1",
                    &[&i64::from(limit)],
                )
                .await
                .map_err(|e| pg_error(what, e))?;
            rows.iter()
                .map(|r| r.try_get(0).map(JobId).map_err(|e| pg_error(what, e)))
                .collect()
        })
        .await
    }

    pub async fn count_by_state(&self) -> Result<Vec<(StateName, u64)>, StoreError> {
        let what = "counting jobs";
        self.with_client(what, |client| async move {
            let rows = client
                .query(
                    "SELECT state, COUNT(*), MIN(id) FROM jobs GROUP BY state",
                    &[],
                )
                .await
                .map_err(|e| pg_error(what, e))?;
            let mut counts: Vec<(StateName, u64)> =
                StateName::ALL.into_iter().map(|s| (s, 0)).collect();
            for row in rows {
                let name: String = row.try_get(0).map_err(|e| pg_error(what, e))?;
                let count: i64 = row.try_get(1).map_err(|e| pg_error(what, e))?;
                let state = parse_state_name(&name).ok_or_else(|| StoreError::Corrupt {
                    id: JobId(row.try_get(2).unwrap_or_default()),
                    detail: format!("unknown state {name:?}"),
                })?;
                if let Some(slot) = counts.iter_mut().find(|(s, _)| *s == state) {
                    slot.1 = u64::try_from(count).unwrap_or_default();
                }
            }
            Ok(counts)
        })
        .await
    }

    /// See `Store::retention_candidates`: the same rules as SQLite's.
    pub async fn retention_candidates(
        &self,
        before_ms: i64,
        limit: u32,
    ) -> Result<Vec<RetainedJob>, StoreError> {
        let what = "finding jobs past retention";
        let limit = i64::from(limit.min(crate::maintenance::MAX_CANDIDATES));
        if limit == 0 {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT {PG_JOB_COLUMNS} FROM jobs WHERE jobs.state = 'finished' \
             AND jobs.updated_at_ms < $1 AND {} ORDER BY jobs.id LIMIT $2",
            purgeable!()
        );
        self.with_client(what, |client| async move {
            let rows = client
                .query(&sql, &[&before_ms, &limit])
                .await
                .map_err(|e| pg_error(what, e))?;
            let found = jobs(&rows)?;
            let ids: Vec<i64> = found.iter().map(|j| j.id.0).collect();
            let rows = client
                .query(
                    "SELECT seq, job_id, at_ms, attempt, kind, detail FROM job_events \
                     WHERE job_id = ANY($1) ORDER BY job_id, seq",
                    &[&ids],
                )
                .await
                .map_err(|e| pg_error(what, e))?;
            let mut events = rows
                .iter()
                .map(event_record)
                .collect::<Result<Vec<_>, _>>()?;
            let mut retained = Vec::with_capacity(found.len());
            for job in found {
                let split = events.partition_point(|e| e.job_id.0 <= job.id.0);
                let mine: Vec<JobEventRecord> = events.drain(..split).collect();
                retained.push(RetainedJob { job, events: mine });
            }
            Ok(retained)
        })
        .await
    }
}

//! Read connections and the read queries. Readers are pooled connections used on tokio's blocking
//! threads; WAL lets them read a consistent snapshot while the writer commits.

use crate::codec::{decode_engine_event, decode_event, decode_job, parse_state_name, JOB_COLUMNS};
use crate::error::{Context, StoreError};
use crate::schema::open_connection;
use aura_model::{
    CommittedEvent, EngineEventRecord, EventLog, Job, JobEventRecord, JobId, StateName,
};
use rusqlite::{params_from_iter, types::Value, Connection, OptionalExtension};
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// Most idle read connections kept; more may exist briefly under load and are closed when returned.
const MAX_IDLE: usize = 4;

pub(crate) const MAX_LIST_LIMIT: u32 = 1000;

pub(crate) struct ReadPool {
    path: PathBuf,
    busy_timeout: Duration,
    /// `None` once the store is closed.
    idle: Mutex<Option<Vec<Connection>>>,
}

impl ReadPool {
    pub fn new(path: PathBuf, busy_timeout: Duration, first: Connection) -> Self {
        ReadPool {
            path,
            busy_timeout,
            idle: Mutex::new(Some(vec![first])),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Option<Vec<Connection>>> {
        // The guarded data is a plain list of connections; a panic elsewhere cannot leave it inconsistent.
        self.idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `f` on an idle connection (opening one if none is idle). Blocking: call on a blocking thread.
    pub fn with<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let taken = match self.lock().as_mut() {
            None => return Err(StoreError::Closed),
            Some(idle) => idle.pop(),
        };
        let conn = match taken {
            Some(conn) => conn,
            None => open_connection(&self.path, self.busy_timeout, true)?,
        };
        let result = f(&conn);
        if let Some(idle) = self.lock().as_mut() {
            if idle.len() < MAX_IDLE {
                idle.push(conn);
            }
        }
        result
    }

    pub fn close(&self) {
        self.lock().take();
    }
}

pub(crate) fn get(conn: &Connection, id: JobId) -> Result<Option<Job>, StoreError> {
    let mut stmt = conn
        .prepare_cached(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1"))
        .context("reading a job")?;
    let mut rows = stmt.query([id.0]).context("reading a job")?;
    match rows.next().context("reading a job")? {
        Some(row) => decode_job(row).map(Some),
        None => Ok(None),
    }
}

pub(crate) fn list(
    conn: &Connection,
    states: &[StateName],
    labels: &[(String, String)],
    after: Option<JobId>,
    limit: u32,
    newest_first: bool,
) -> Result<Vec<Job>, StoreError> {
    let limit = limit.min(MAX_LIST_LIMIT);
    if limit == 0 {
        return Ok(Vec::new());
    }
    // Normalised so that equal filters share one cached statement: states in canonical order, no
    // duplicates, and no state clause at all when every state is asked for.
    let wanted: Vec<StateName> = StateName::ALL
        .into_iter()
        .filter(|s| states.contains(s))
        .collect();
    let mut clauses = Vec::new();
    let mut args: Vec<Value> = Vec::new();
    if !wanted.is_empty() && wanted.len() < StateName::ALL.len() {
        clauses.push(format!("state IN ({})", vec!["?"; wanted.len()].join(", ")));
        args.extend(wanted.iter().map(|s| Value::Text(s.as_str().to_owned())));
    }
    // One EXISTS per label over the spec's `labels` object: key and value are bound parameters compared
    // with json_each's columns, so no JSON path is built from a key (which may hold `.` or other
    // characters a path would need quoted). Rows are still walked in id order, so keyset pages stay exact.
    for (key, value) in labels {
        clauses.push(
            "EXISTS (SELECT 1 FROM json_each(spec, '$.labels') WHERE key = ? AND value = ?)"
                .to_owned(),
        );
        args.push(Value::Text(key.clone()));
        args.push(Value::Text(value.clone()));
    }
    if let Some(after) = after {
        clauses.push(if newest_first { "id < ?" } else { "id > ?" }.to_owned());
        args.push(Value::Integer(after.0));
    }
    args.push(Value::Integer(i64::from(limit)));
    let filter = if clauses.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", clauses.join(" AND "))
    };
    let order = if newest_first { "DESC" } else { "ASC" };
    let sql = format!("SELECT {JOB_COLUMNS} FROM jobs {filter} ORDER BY id {order} LIMIT ?");
    let mut stmt = conn.prepare_cached(&sql).context("listing jobs")?;
    let mut rows = stmt.query(params_from_iter(args)).context("listing jobs")?;
    let mut jobs = Vec::new();
    while let Some(row) = rows.next().context("listing jobs")? {
        jobs.push(decode_job(row)?);
    }
    Ok(jobs)
}

pub(crate) fn unfinished(conn: &Connection) -> Result<Vec<Job>, StoreError> {
    // Listed from the model rather than `state <> 'finished'`: an IN list is served by jobs_state_id, and
    // finished jobs (the whole history) are most of the table.
    let states: Vec<String> = StateName::ALL
        .into_iter()
        .filter(|s| *s != StateName::Finished)
        .map(|s| format!("'{}'", s.as_str()))
        .collect();
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE state IN ({}) ORDER BY id ASC",
            states.join(", ")
        ))
        .context("reading unfinished jobs")?;
    let mut rows = stmt.query([]).context("reading unfinished jobs")?;
    let mut jobs = Vec::new();
    while let Some(row) = rows.next().context("reading unfinished jobs")? {
        jobs.push(decode_job(row)?);
    }
    Ok(jobs)
}

pub(crate) fn events(conn: &Connection, id: JobId) -> Result<Vec<JobEventRecord>, StoreError> {
    let mut stmt = conn
        .prepare_cached("SELECT seq, job_id, at_ms, attempt, kind, detail FROM job_events WHERE job_id = ?1 ORDER BY seq")
        .context("reading job events")?;
    let mut rows = stmt.query([id.0]).context("reading job events")?;
    let mut events = Vec::new();
    while let Some(row) = rows.next().context("reading job events")? {
        events.push(decode_event(row)?);
    }
    Ok(events)
}

/// Committed events after `after` (a sequence number) as live streams carry them, oldest first, at most
/// `limit`: of one job, of every job (`EventLog::Job` with `None`), or of the engine.
pub(crate) fn committed_after(
    conn: &Connection,
    log: Option<EventLog>,
    after: i64,
    limit: u32,
) -> Result<Vec<CommittedEvent>, StoreError> {
    let what = "reading events to replay";
    let limit = limit.min(MAX_LIST_LIMIT);
    let mut out = Vec::new();
    let mut push = |row: &rusqlite::Row<'_>, log: EventLog| -> rusqlite::Result<()> {
        let attempt: Option<i64> = row.get(4)?;
        let (kind, detail): (String, String) = (row.get(2)?, row.get(3)?);
        out.push(CommittedEvent::new(
            log,
            row.get(0)?,
            row.get(1)?,
            attempt,
            kind,
            detail,
        ));
        Ok(())
    };
    match log {
        Some(EventLog::Engine) => {
            let mut stmt = conn
                .prepare_cached("SELECT seq, at_ms, kind, detail, NULL FROM engine_events WHERE seq > ?1 ORDER BY seq LIMIT ?2")
                .context(what)?;
            let mut rows = stmt.query(rusqlite::params![after, limit]).context(what)?;
            while let Some(row) = rows.next().context(what)? {
                push(row, EventLog::Engine).context(what)?;
            }
        }
        job => {
            // One statement per case rather than `?1 IS NULL OR job_id = ?1`: one job's events come by the
            // (job_id, seq) index, not by a walk of every job's events after `after`.
            let (sql, only) = match job {
                Some(EventLog::Job(id)) => (
                    "SELECT seq, at_ms, kind, detail, attempt, job_id FROM job_events WHERE job_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
                    Some(id.0),
                ),
                _ => (
                    "SELECT seq, at_ms, kind, detail, attempt, job_id FROM job_events WHERE ?1 IS NULL AND seq > ?2 ORDER BY seq LIMIT ?3",
                    None,
                ),
            };
            let mut stmt = conn.prepare_cached(sql).context(what)?;
            let mut rows = stmt
                .query(rusqlite::params![only, after, limit])
                .context(what)?;
            while let Some(row) = rows.next().context(what)? {
                let id = JobId(row.get(5).context(what)?);
                push(row, EventLog::Job(id)).context(what)?;
            }
        }
    }
    Ok(out)
}

/// Engine events after `after` (a sequence number), oldest first, at most `limit` (capped).
pub(crate) fn engine_events(
    conn: &Connection,
    after: i64,
    limit: u32,
) -> Result<Vec<EngineEventRecord>, StoreError> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT seq, at_ms, kind, detail FROM engine_events WHERE seq > ?1 ORDER BY seq LIMIT ?2",
        )
        .context("reading engine events")?;
    let mut rows = stmt
        .query(rusqlite::params![after, limit.min(MAX_LIST_LIMIT)])
        .context("reading engine events")?;
    let mut events = Vec::new();
    while let Some(row) = rows.next().context("reading engine events")? {
        events.push(decode_engine_event(row)?);
    }
    Ok(events)
}

/// Every state name with its count, zeros included, in `StateName::ALL` order.
pub(crate) fn count_by_state(conn: &Connection) -> Result<Vec<(StateName, u64)>, StoreError> {
    let mut stmt = conn
        .prepare_cached("SELECT state, COUNT(*), MIN(id) FROM jobs GROUP BY state")
        .context("counting jobs")?;
    let mut rows = stmt.query([]).context("counting jobs")?;
    let mut counts: Vec<(StateName, u64)> = StateName::ALL.into_iter().map(|s| (s, 0)).collect();
    while let Some(row) = rows.next().context("counting jobs")? {
        let name: String = row.get(0).context("counting jobs")?;
        let count: i64 = row.get(1).context("counting jobs")?;
        let state = parse_state_name(&name).ok_or_else(|| StoreError::Corrupt {
            id: JobId(row.get(2).unwrap_or_default()),
            detail: format!("unknown state {name:?}"),
        })?;
        if let Some(slot) = counts.iter_mut().find(|(s, _)| *s == state) {
            slot.1 = u64::try_from(count).unwrap_or_default();
        }
    }
    Ok(counts)
}

pub(crate) fn setting(conn: &Connection, key: &str) -> Result<Option<String>, StoreError> {
    conn.prepare_cached("SELECT value FROM settings WHERE key = ?1")
        .and_then(|mut stmt| stmt.query_row([key], |row| row.get(0)).optional())
        .context("reading a setting")
}

pub(crate) fn memory_peaks(
    conn: &Connection,
    kind: &str,
    limit: u32,
) -> Result<Vec<u64>, StoreError> {
    // Served by the partial index jobs_kind_succeeded; the peak is read out of the state JSON.
    let mut stmt = conn
        .prepare_cached(
            "SELECT json_extract(state_data, '$.accounting.memory_peak') FROM jobs \
             WHERE kind = ?1 AND outcome = 'succeeded' ORDER BY id DESC LIMIT ?2",
        )
        .context("reading memory peaks")?;
    let mut rows = stmt
        .query(rusqlite::params![kind, limit])
        .context("reading memory peaks")?;
    let mut peaks = Vec::new();
    while let Some(row) = rows.next().context("reading memory peaks")? {
        let peak: Option<i64> = row.get(0).context("reading memory peaks")?;
        if let Some(p) = peak.and_then(|p| u64::try_from(p).ok()) {
            peaks.push(p);
        }
    }
    Ok(peaks)
}

/// The newest quarantined jobs, newest first (served by the partial index jobs_quarantined).
pub(crate) fn quarantined(conn: &Connection, limit: u32) -> Result<Vec<JobId>, StoreError> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT id FROM jobs WHERE outcome = 'quarantined' ORDER BY id DESC LIMIT ?1",
        )
        .context("reading quarantined jobs")?;
    let ids = stmt
        .query_map([limit], |row| row.get(0).map(JobId))
        .context("reading quarantined jobs")?
        .collect::<Result<Vec<_>, _>>()
        .context("reading quarantined jobs")?;
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tempfile::TempDir;

    /// Page cache sizes (KiB, negative) no connection is opened with: a connection carrying one was used
    /// before.
    const MARK: i64 = -1000;

    fn pool(dir: &TempDir) -> ReadPool {
        let path = dir.path().join("aura.db");
        let first = open_connection(&path, Duration::from_secs(5), true).expect("open");
        ReadPool::new(path, Duration::from_secs(5), first)
    }

    fn cache_size(conn: &Connection) -> i64 {
        conn.query_row("PRAGMA cache_size", [], |row| row.get(0))
            .expect("read cache_size")
    }

    /// Holds `n` connections of the pool at once; says, for each in the order taken, whether it was
    /// used before, and marks it.
    fn hold(pool: &ReadPool, n: usize, used_before: &mut Vec<bool>) -> Result<(), StoreError> {
        if n == 0 {
            return Ok(());
        }
        pool.with(|conn| {
            used_before.push(cache_size(conn) <= MARK);
            conn.pragma_update(None, "cache_size", MARK - n as i64)
                .context("marking a connection")?;
            hold(pool, n - 1, used_before)
        })
    }

    #[test]
    fn reads_reuse_connections_and_keep_at_most_four_idle() {
        let dir = TempDir::new().expect("tempdir");
        let pool = pool(&dir);
        let mut used = Vec::new();
        hold(&pool, 1, &mut used).expect("read");
        hold(&pool, 1, &mut used).expect("read");
        assert_eq!(
            used,
            [false, true],
            "one reader at a time needs one connection"
        );

        let mut used = Vec::new();
        hold(&pool, 5, &mut used).expect("five readers at once");
        let mut again = Vec::new();
        hold(&pool, 5, &mut again).expect("five readers at once");
        assert_eq!(
            again.iter().filter(|&&u| u).count(),
            4,
            "five readers leave four idle connections: {again:?}"
        );
    }

    #[test]
    fn a_closed_pool_refuses_reads() {
        let dir = TempDir::new().expect("tempdir");
        let pool = pool(&dir);
        pool.with(|conn| conn.query_row("SELECT 1", [], |_| Ok(())).context("probe"))
            .expect("open pool");
        pool.close();
        assert!(matches!(pool.with(|_| Ok(())), Err(StoreError::Closed)));
    }
}

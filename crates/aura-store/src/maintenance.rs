//! Retention and compaction, the janitor's database work: which finished jobs may go (read on a reader),
//! deleting them and old engine events, and giving freed pages back to the file system (run on the
//! writer thread, each call on its own, never group-committed with state changes, so its pause is
//! bounded by what the caller asks for and its failure fails nothing else).

use crate::codec::{decode_job, JOB_COLUMNS};
use crate::error::{Context, StoreError};
use aura_model::{Job, JobEventRecord, JobId, StateName};
use rusqlite::{params, Connection, OptionalExtension};
use std::collections::HashSet;
use std::sync::Arc;
use tokio::sync::oneshot;

/// Most jobs `retention_candidates` returns per call: each comes with its whole event log.
pub(crate) const MAX_CANDIDATES: u32 = 1000;

/// A finished job that retention may delete, with its event log, so that the caller can export both
/// (e.g. as JSON lines) before `Store::purge` deletes them.
#[derive(Clone, Debug, PartialEq)]
pub struct RetainedJob {
    /// The job as `Store::get` returns it.
    pub job: Job,
    /// Its event log as `Store::events` returns it, oldest first.
    pub events: Vec<JobEventRecord>,
}

/// The database file's `auto_vacuum` mode (`PRAGMA auto_vacuum`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AutoVacuum {
    /// Freed pages stay in the file (on the freelist) until a full `VACUUM`: what databases created
    /// before Aura set incremental get; `Store::convert_to_incremental` changes it.
    None,
    /// Every commit gives freed pages back at once.
    Full,
    /// Freed pages are given back on request, a bounded number at a time (`Store::compact_step`): what
    /// new databases get.
    Incremental,
}

impl AutoVacuum {
    fn from_pragma(value: i64) -> Result<AutoVacuum, StoreError> {
        match value {
            0 => Ok(AutoVacuum::None),
            1 => Ok(AutoVacuum::Full),
            2 => Ok(AutoVacuum::Incremental),
            other => Err(StoreError::Internal(format!(
                "PRAGMA auto_vacuum answered {other}, not a mode SQLite documents"
            ))),
        }
    }
}

/// Where compaction stands after one `Store::compact_step`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CompactStep {
    /// Free pages still in the file; 0: nothing left to give back.
    pub freelist_pages: u64,
    /// Bytes per page.
    pub page_size: u64,
    /// The file's mode; anything but `Incremental` gives nothing back by steps (see
    /// `Store::convert_to_incremental`).
    pub auto_vacuum: AutoVacuum,
}

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// One maintenance operation for the writer thread. Each runs alone, between two batches of writes, in
/// queue order with them: writes queued before it are committed before it, later ones after.
pub(crate) enum Maintenance {
    /// Deletes these jobs and their events if they are still finished and nothing unfinished needs them.
    Purge { ids: Vec<JobId>, reply: Reply<u64> },
    /// Deletes the oldest engine events older than `before_ms`, looking at no more than `limit` rows.
    PurgeEngineEvents {
        before_ms: i64,
        limit: u32,
        reply: Reply<u64>,
    },
    /// `PRAGMA incremental_vacuum(pages)`, then a passive checkpoint.
    CompactStep {
        pages: u32,
        reply: Reply<CompactStep>,
    },
    /// `auto_vacuum = INCREMENTAL` and the `VACUUM` that makes it take, then a truncating checkpoint.
    ConvertToIncremental { reply: Reply<()> },
    /// `PRAGMA wal_checkpoint(TRUNCATE)`; answers whether it completed.
    Checkpoint { reply: Reply<bool> },
}

impl Maintenance {
    /// Runs the operation on the writer's connection (no transaction open) and answers the caller.
    /// `kept`: jobs with state changes kept in memory while the volume refuses writes; their stored
    /// state is not their real one, so they are never purged.
    pub(crate) fn run(self, conn: &mut Connection, kept: &HashSet<JobId>) {
        // A caller that stopped waiting does not care about the answer.
        match self {
            Maintenance::Purge { ids, reply } => {
                let _ = reply.send(purge(conn, &ids, kept));
            }
            Maintenance::PurgeEngineEvents {
                before_ms,
                limit,
                reply,
            } => {
                let _ = reply.send(purge_engine_events(conn, before_ms, limit));
            }
            Maintenance::CompactStep { pages, reply } => {
                let _ = reply.send(compact_step(conn, pages));
            }
            Maintenance::ConvertToIncremental { reply } => {
                let _ = reply.send(convert_to_incremental(conn));
            }
            Maintenance::Checkpoint { reply } => {
                let _ = reply.send(checkpoint(conn, "TRUNCATE"));
            }
        }
    }
}

/// The unfinished states as an SQL list (`'queued', 'held', …`), from the model so that a new state
/// cannot be forgotten here; an IN list is served by `jobs_state_id`.
fn unfinished_states() -> String {
    StateName::ALL
        .into_iter()
        .filter(|s| *s != StateName::Finished)
        .map(|s| format!("'{}'", s.as_str()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Ids an unfinished job still needs: those its `after` names (the pipeline looks them up until they
/// succeed) and those it is linked to by a retry. Unfinished jobs are few (the queue and what runs), so
/// this is computed once per statement, not per candidate.
fn needed_by_unfinished() -> String {
    let unfinished = unfinished_states();
    format!(
        "SELECT CAST(a.value AS INTEGER) FROM jobs u, json_each(u.spec, '$.after') a \
             WHERE u.state IN ({unfinished}) AND a.type = 'integer' \
         UNION SELECT retry_of FROM jobs WHERE state IN ({unfinished}) AND retry_of IS NOT NULL \
         UNION SELECT retried_as FROM jobs WHERE state IN ({unfinished}) AND retried_as IS NOT NULL"
    )
}

/// The condition under which finished job `j` is linked by a retry to a job that is not finished (from
/// `j`'s side: the links are set in both directions, but a row written by hand may have only one).
const LINKED_TO_UNFINISHED: &str =
    "EXISTS (SELECT 1 FROM jobs r WHERE r.id IN (j.retry_of, j.retried_as) \
     AND r.state <> 'finished')";

/// Finished jobs last updated before `before_ms`, oldest id first, at most `limit` (capped at
/// `MAX_CANDIDATES`), without those an unfinished job needs, each with its events. Walks finished jobs
/// in id order (`jobs_state_id`) until `limit` qualify: on a reader, never holding up the writer.
pub(crate) fn retention_candidates(
    conn: &Connection,
    before_ms: i64,
    limit: u32,
) -> Result<Vec<RetainedJob>, StoreError> {
    let what = "finding jobs past retention";
    let limit = limit.min(MAX_CANDIDATES);
    if limit == 0 {
        return Ok(Vec::new());
    }
    let sql = format!(
        "SELECT {columns} FROM jobs j WHERE j.state = 'finished' AND j.updated_at_ms < ?1 \
         AND j.id NOT IN ({needed}) AND NOT {LINKED_TO_UNFINISHED} ORDER BY j.id LIMIT ?2",
        columns = JOB_COLUMNS
            .split(", ")
            .map(|c| format!("j.{c}"))
            .collect::<Vec<_>>()
            .join(", "),
        needed = needed_by_unfinished(),
    );
    let mut stmt = conn.prepare_cached(&sql).context(what)?;
    let mut rows = stmt.query(params![before_ms, limit]).context(what)?;
    let mut jobs = Vec::new();
    while let Some(row) = rows.next().context(what)? {
        jobs.push(decode_job(row)?);
    }
    jobs.into_iter()
        .map(|job| {
            let events = crate::reader::events(conn, job.id)?;
            Ok(RetainedJob { job, events })
        })
        .collect()
}

/// `(freelist pages, page count, page size)` of the database as a reader sees it.
pub(crate) fn freelist(conn: &Connection) -> Result<(u64, u64, u64), StoreError> {
    Ok((
        pragma_u64(conn, "freelist_count")?,
        pragma_u64(conn, "page_count")?,
        pragma_u64(conn, "page_size")?,
    ))
}

fn pragma_u64(conn: &Connection, name: &'static str) -> Result<u64, StoreError> {
    let value: i64 = conn
        .query_row(&format!("PRAGMA {name}"), [], |row| row.get(0))
        .context("reading the database's page figures")?;
    u64::try_from(value)
        .map_err(|_| StoreError::Internal(format!("PRAGMA {name} answered {value}")))
}

/// A failed maintenance statement, with a full or failing volume told apart (it may succeed later).
fn failed(context: &'static str) -> impl Fn(rusqlite::Error) -> StoreError {
    move |source| StoreError::Db { context, source }.classify()
}

/// Deletes, in one transaction, each of `ids` still finished and not needed by an unfinished job (the
/// same rules as `retention_candidates`, checked again: a job may have been retried, requeued or named
/// by a new job's `after` since it was listed), events first (they refer to the job). Returns how many
/// jobs were deleted; unknown ids and kept jobs are skipped, not errors.
fn purge(conn: &mut Connection, ids: &[JobId], kept: &HashSet<JobId>) -> Result<u64, StoreError> {
    if ids.is_empty() {
        return Ok(0);
    }
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(failed("starting a purge"))?;
    let needed: HashSet<i64> = {
        let mut stmt = tx
            .prepare_cached(&needed_by_unfinished())
            .map_err(failed("finding jobs unfinished ones need"))?;
        let ids = stmt
            .query_map([], |row| row.get::<_, Option<i64>>(0))
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(failed("finding jobs unfinished ones need"))?;
        ids.into_iter().flatten().collect()
    };
    let mut deleted = 0u64;
    {
        let mut deletable = tx
            .prepare_cached(&format!(
                "SELECT 1 FROM jobs j WHERE j.id = ?1 AND j.state = 'finished' \
                 AND NOT {LINKED_TO_UNFINISHED}"
            ))
            .map_err(failed("purging jobs"))?;
        let mut events = tx
            .prepare_cached("DELETE FROM job_events WHERE job_id = ?1")
            .map_err(failed("purging job events"))?;
        let mut job = tx
            .prepare_cached("DELETE FROM jobs WHERE id = ?1 AND state = 'finished'")
            .map_err(failed("purging jobs"))?;
        let mut seen = HashSet::with_capacity(ids.len());
        for &id in ids {
            if kept.contains(&id) || needed.contains(&id.0) || !seen.insert(id) {
                continue;
            }
            let finished = deletable
                .query_row([id.0], |_| Ok(()))
                .optional()
                .map_err(failed("purging jobs"))?
                .is_some();
            if !finished {
                continue;
            }
            events
                .execute([id.0])
                .map_err(failed("purging job events"))?;
            deleted += job.execute([id.0]).map_err(failed("purging jobs"))? as u64;
        }
    }
    tx.commit().map_err(|e| {
        StoreError::Commit {
            source: Arc::new(e),
        }
        .classify()
    })?;
    Ok(deleted)
}

/// Deletes those of the oldest `limit` engine events that are older than `before_ms`. Only the oldest
/// `limit` rows are looked at (by sequence number, the primary key), so a call costs the writer at
/// most that many rows whatever the table holds; events are appended in time order, so once the oldest
/// are not older than `before_ms` nothing further is either.
fn purge_engine_events(conn: &Connection, before_ms: i64, limit: u32) -> Result<u64, StoreError> {
    let deleted = conn
        .prepare_cached(
            "DELETE FROM engine_events WHERE seq IN (SELECT seq FROM \
             (SELECT seq, at_ms FROM engine_events ORDER BY seq LIMIT ?2) WHERE at_ms < ?1)",
        )
        .and_then(|mut stmt| stmt.execute(params![before_ms, limit]))
        .map_err(failed("purging engine events"))?;
    Ok(deleted as u64)
}

/// Runs a pragma that answers rows (each `incremental_vacuum` step frees one page and answers a row)
/// to completion.
fn run_to_end(conn: &Connection, sql: &str, context: &'static str) -> Result<(), StoreError> {
    let mut stmt = conn.prepare(sql).map_err(failed(context))?;
    let mut rows = stmt.query([]).map_err(failed(context))?;
    while rows.next().map_err(failed(context))?.is_some() {}
    Ok(())
}

fn compact_step(conn: &Connection, pages: u32) -> Result<CompactStep, StoreError> {
    // 0 would mean "every free page": never a bounded step.
    if pages > 0 {
        run_to_end(
            conn,
            &format!("PRAGMA incremental_vacuum({pages})"),
            "giving free pages back",
        )?;
        // The file shrinks only once the WAL is checkpointed; a passive one never waits for readers.
        checkpoint(conn, "PASSIVE")?;
    }
    let auto_vacuum = AutoVacuum::from_pragma(
        conn.query_row("PRAGMA auto_vacuum", [], |row| row.get(0))
            .context("reading auto_vacuum")?,
    )?;
    Ok(CompactStep {
        freelist_pages: pragma_u64(conn, "freelist_count")?,
        page_size: pragma_u64(conn, "page_size")?,
        auto_vacuum,
    })
}

fn convert_to_incremental(conn: &Connection) -> Result<(), StoreError> {
    let mode: i64 = conn
        .query_row("PRAGMA auto_vacuum", [], |row| row.get(0))
        .context("reading auto_vacuum")?;
    conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")
        .map_err(failed("setting auto_vacuum"))?;
    // Between full and incremental the pragma alone suffices; from none, only a VACUUM (a rebuild of
    // the whole file, written through the WAL) makes it take. The writer holds no transaction between
    // batches, which VACUUM needs.
    if AutoVacuum::from_pragma(mode)? == AutoVacuum::None {
        conn.execute_batch("VACUUM")
            .map_err(failed("rebuilding the database (VACUUM)"))?;
    }
    // The WAL now holds about the whole database: fold it in and give its space back.
    checkpoint(conn, "TRUNCATE")?;
    Ok(())
}

/// `PRAGMA wal_checkpoint(mode)`; whether it completed (not held up by a reader or another writer).
fn checkpoint(conn: &Connection, mode: &'static str) -> Result<bool, StoreError> {
    let busy: i64 = conn
        .query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |row| {
            row.get(0)
        })
        .map_err(failed("checkpointing the write-ahead log"))?;
    Ok(busy == 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{migrate, open_connection};
    use crate::{Store, StoreOptions};
    use aura_model::{JobSpec, Timestamp};
    use std::time::Duration;
    use tempfile::TempDir;

    fn auto_vacuum(conn: &Connection) -> AutoVacuum {
        AutoVacuum::from_pragma(
            conn.query_row("PRAGMA auto_vacuum", [], |row| row.get(0))
                .expect("auto_vacuum"),
        )
        .expect("a known mode")
    }

    /// A new database is created incremental; an existing one keeps its mode when opened again (the
    /// pragma is set only on a file with no page yet).
    #[test]
    fn new_databases_are_incremental_and_old_ones_keep_their_mode() {
        let dir = TempDir::new().expect("tempdir");
        let path = dir.path().join("aura.db");
        let mut conn = open_connection(&path, Duration::from_secs(5), false).expect("open");
        migrate(&mut conn).expect("migrate");
        assert_eq!(auto_vacuum(&conn), AutoVacuum::Incremental);

        let old = dir.path().join("old.db");
        let conn = rusqlite::Connection::open(&old).expect("open");
        conn.execute_batch("PRAGMA journal_mode = WAL; CREATE TABLE t (x);")
            .expect("a database as earlier releases created it");
        assert_eq!(auto_vacuum(&conn), AutoVacuum::None);
        drop(conn);
        let conn = open_connection(&old, Duration::from_secs(5), false).expect("open");
        assert_eq!(auto_vacuum(&conn), AutoVacuum::None);
    }

    /// A database from before incremental auto_vacuum: compaction steps give nothing back and say why;
    /// converting it (one VACUUM) keeps every job and makes the steps work.
    #[tokio::test(flavor = "multi_thread")]
    async fn an_old_database_is_converted_to_incremental_with_its_jobs() {
        let dir = TempDir::new().expect("tempdir");
        let path = dir.path().join("aura.db");
        {
            let mut conn = rusqlite::Connection::open(&path).expect("open");
            conn.pragma_update(None, "journal_mode", "WAL")
                .expect("WAL");
            migrate(&mut conn).expect("migrate");
            assert_eq!(auto_vacuum(&conn), AutoVacuum::None);
        }
        let store = Store::open(&path, StoreOptions::default())
            .await
            .expect("open");
        let mut ids = Vec::new();
        for n in 0..300 {
            let mut spec = JobSpec::new("ffmpeg", ["-i", "in.mkv", "out.mp4"]);
            spec.labels.insert("pad".into(), "x".repeat(2000 + n));
            let job = store
                .insert_job(spec, Timestamp::from_unix_millis(n as i64), None, None)
                .await
                .expect("insert");
            ids.push(job.id);
        }
        let kept = store.get(ids[0]).await.expect("get").expect("stored");
        // These jobs are not finished, so a purge would keep them: free their pages behind the store's
        // back (a test may; the daemon never writes but through the writer).
        {
            let conn = open_connection(&path, Duration::from_secs(5), false).expect("open");
            conn.execute("DELETE FROM job_events WHERE job_id > ?1", [ids[0].0])
                .expect("delete events");
            conn.execute("DELETE FROM jobs WHERE id > ?1", [ids[0].0])
                .expect("delete jobs");
        }
        let (free, _, _) = store.freelist().await.expect("freelist");
        assert!(free > 100, "{free} free pages");
        let step = store.compact_step(64).await.expect("step");
        assert_eq!(
            (step.auto_vacuum, step.freelist_pages),
            (AutoVacuum::None, free),
            "nothing given back"
        );

        store.convert_to_incremental().await.expect("convert");
        let step = store.compact_step(64).await.expect("step");
        assert_eq!(step.auto_vacuum, AutoVacuum::Incremental);
        assert_eq!(step.freelist_pages, 0, "VACUUM left no free page");
        assert_eq!(store.get(ids[0]).await.expect("get"), Some(kept));
        assert_eq!(store.events(ids[0]).await.expect("events").len(), 1);
        let (_, wal) = store.file_sizes().await.expect("sizes");
        assert_eq!(wal, 0, "the conversion's WAL was truncated");
        store
            .convert_to_incremental()
            .await
            .expect("converting again is a no-op");
        store.close().await.expect("close");
    }
}

//! PostgreSQL's writer: the same `Command`s as SQLite's writer, group-committed the same way, each batch
//! in one transaction of a few bulk statements (one `INSERT … SELECT FROM unnest(…)` for all new jobs,
//! one fenced `UPDATE … FROM unnest(…)` for all state changes, one insert for all events), so a batch
//! costs a handful of round trips whatever its size. Records are fenced (see the module above). A lost
//! connection is retried with backoff, the same writes in the same order, so no state change is lost;
//! inserts (someone waits for them) fail at once with `Unavailable` instead.

use super::listener::{Publisher, BACKOFF_FIRST, BACKOFF_MAX};
use super::{connect, PgShared, EVENTS_LOCK};
use crate::codec::{encode_event, to_json, EventRow, FleetColumns, JobRow};
use crate::error::StoreError;
use crate::maintenance::Maintenance;
use crate::writer::{Command, Counters, Intake, Next, Write};
use crate::{AutoVacuum, CompactStep};
use aura_model::{JobEvent, JobId, NewEvent};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Statement};

/// Kept writes beyond this (a database unreachable for very long while jobs keep ending) are answered
/// with the error instead: memory stays bounded.
const MAX_KEPT: usize = 65_536;

/// A connection and the statements prepared on it.
struct Conn {
    client: Client,
    statements: HashMap<&'static str, Statement>,
}

impl Conn {
    async fn stmt(&mut self, sql: &'static str) -> Result<Statement, StoreError> {
        if let Some(stmt) = self.statements.get(sql) {
            return Ok(stmt.clone());
        }
        let stmt = self
            .client
            .prepare(sql)
            .await
            .map_err(|e| failed("preparing a statement", e))?;
        self.statements.insert(sql, stmt.clone());
        Ok(stmt)
    }

    async fn query(
        &mut self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
        what: &'static str,
    ) -> Result<Vec<tokio_postgres::Row>, StoreError> {
        let stmt = self.stmt(sql).await?;
        self.client
            .query(&stmt, params)
            .await
            .map_err(|e| failed(what, e))
    }

    async fn execute(
        &mut self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
        what: &'static str,
    ) -> Result<u64, StoreError> {
        let stmt = self.stmt(sql).await?;
        self.client
            .execute(&stmt, params)
            .await
            .map_err(|e| failed(what, e))
    }
}

/// A statement's failure; one of the connection class is `Unavailable` (the batch is kept and retried).
fn failed(context: &'static str, e: tokio_postgres::Error) -> StoreError {
    crate::error::pg_error(context, e)
}

/// What a write is answered with once its transaction is settled.
enum Answer {
    Id(JobId),
    Ids(Vec<JobId>),
    Done,
    Failed(StoreError),
}

/// Answers a write; a caller that stopped waiting does not care.
fn reply(write: Write, answer: Answer) {
    let result = |answer: Answer| match answer {
        Answer::Failed(e) => Err(e),
        _ => Ok(()),
    };
    match write {
        Write::Insert { reply, .. } | Write::InsertRetry { reply, .. } => {
            let _ = reply.send(match answer {
                Answer::Id(id) => Ok(id),
                Answer::Failed(e) => Err(e),
                _ => Err(StoreError::Internal(
                    "an insert was answered without its id".into(),
                )),
            });
        }
        Write::InsertBatch { reply, .. } => {
            let _ = reply.send(match answer {
                Answer::Ids(ids) => Ok(ids),
                Answer::Failed(e) => Err(e),
                _ => Err(StoreError::Internal(
                    "a batch was answered without its ids".into(),
                )),
            });
        }
        Write::Record { done, .. }
        | Write::Engine { done, .. }
        | Write::Setting { done, .. }
        | Write::Flush { done } => {
            done(result(answer));
        }
    }
}

/// What a committed transaction did, beyond its answers.
struct Committed {
    answers: Vec<Answer>,
    /// Jobs this node finished: their epochs are dropped.
    finished: Vec<JobId>,
    /// Jobs whose records were refused by fencing.
    fenced: Vec<JobId>,
    /// The newest job and engine event numbers appended (0: none).
    seqs: (i64, i64),
}

/// Column arrays of new jobs, for one `INSERT … SELECT FROM unnest`.
#[derive(Default)]
struct NewJobs {
    id: Vec<i64>,
    priority: Vec<i64>,
    submitted_at_ms: Vec<i64>,
    kind: Vec<Option<String>>,
    spec: Vec<String>,
    submitted_by: Vec<Option<String>>,
    retry_of: Vec<Option<i64>>,
    state: Vec<&'static str>,
    updated_at_ms: Vec<i64>,
    attempt: Vec<i64>,
    failures: Vec<i64>,
    outcome: Vec<Option<&'static str>>,
    state_data: Vec<String>,
    memory_request: Vec<Option<String>>,
    pressure_stops: Vec<i64>,
    interruptions: Vec<i64>,
    requires: Vec<String>,
    providers: Vec<String>,
    after_ids: Vec<String>,
    mem_bytes: Vec<i64>,
    gpus: Vec<i32>,
}

impl NewJobs {
    /// Adds a row; `spec` and `fleet` replace the row's when a batch added ids to its `after`.
    fn push(
        &mut self,
        id: i64,
        row: &JobRow,
        spec: Option<String>,
        fleet: &FleetColumns,
    ) -> Result<(), StoreError> {
        self.id.push(id);
        self.priority.push(row.priority);
        self.submitted_at_ms.push(row.submitted_at_ms);
        self.kind.push(row.kind.clone());
        self.spec.push(spec.unwrap_or_else(|| row.spec.clone()));
        self.submitted_by.push(row.submitted_by.clone());
        self.retry_of.push(row.retry_of);
        let s = &row.state;
        self.state.push(s.state);
        self.updated_at_ms.push(s.updated_at_ms);
        self.attempt.push(s.attempt);
        self.failures.push(s.failures);
        self.outcome.push(s.outcome);
        self.state_data.push(s.state_data.clone());
        self.memory_request.push(s.memory_request.clone());
        self.pressure_stops.push(s.pressure_stops);
        self.interruptions.push(s.interruptions);
        // Arrays of arrays do not unnest: each travels as JSON text, unpacked by the statement.
        self.requires
            .push(to_json("required tags", &fleet.requires)?);
        self.providers.push(to_json("providers", &fleet.providers)?);
        self.after_ids.push(to_json("dependencies", &fleet.after)?);
        self.mem_bytes.push(fleet.mem_bytes);
        self.gpus.push(fleet.gpus);
        Ok(())
    }
}

const INSERT_JOBS: &str = "INSERT INTO jobs (id, priority, submitted_at_ms, kind, spec, submitted_by, \
     retry_of, state, updated_at_ms, attempt, failures, outcome, state_data, memory_request, \
     pressure_stops, interruptions, requires, providers, after_ids, mem_bytes, gpus) \
     SELECT u.id, u.priority, u.submitted_at_ms, u.kind, u.spec, u.submitted_by, u.retry_of, u.state, \
     u.updated_at_ms, u.attempt, u.failures, u.outcome, u.state_data, u.memory_request, \
     u.pressure_stops, u.interruptions, \
     ARRAY(SELECT jsonb_array_elements_text(u.requires::jsonb)), \
     ARRAY(SELECT jsonb_array_elements_text(u.providers::jsonb)), \
     ARRAY(SELECT jsonb_array_elements_text(u.after_ids::jsonb)::bigint), u.mem_bytes, u.gpus \
     FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::text[], $5::text[], $6::text[], \
     $7::bigint[], $8::text[], $9::bigint[], $10::bigint[], $11::bigint[], $12::text[], $13::text[], \
     $14::text[], $15::bigint[], $16::bigint[], $17::text[], $18::text[], $19::text[], $20::bigint[], \
     $21::int[]) AS u(id, priority, submitted_at_ms, kind, spec, submitted_by, retry_of, state, \
     updated_at_ms, attempt, failures, outcome, state_data, memory_request, pressure_stops, \
     interruptions, requires, providers, after_ids, mem_bytes, gpus)";

/// The fence: a job this node holds is written under its epoch; one it holds no epoch for only while
/// nobody ever claimed it (epoch 0, unclaimed: a single node, or a job nobody runs yet).
const UPDATE_STATES: &str = "UPDATE jobs SET state = u.state, updated_at_ms = u.updated_at_ms, \
     attempt = u.attempt, failures = u.failures, outcome = u.outcome, state_data = u.state_data, \
     memory_request = u.memory_request, pressure_stops = u.pressure_stops, \
     interruptions = u.interruptions \
     FROM unnest($2::bigint[], $3::bigint[], $4::text[], $5::bigint[], $6::bigint[], $7::bigint[], \
     $8::text[], $9::text[], $10::text[], $11::bigint[], $12::bigint[]) AS u(id, epoch, state, \
     updated_at_ms, attempt, failures, outcome, state_data, memory_request, pressure_stops, \
     interruptions) \
     WHERE jobs.id = u.id AND ((u.epoch >= 0 AND jobs.node_id = $1 AND jobs.epoch = u.epoch) \
     OR (u.epoch < 0 AND jobs.node_id IS NULL AND jobs.epoch = 0)) RETURNING jobs.id";

const UPDATE_SPEC: &str = "UPDATE jobs SET priority = $2, spec = $3 WHERE id = $1 AND \
     (($4::bigint >= 0 AND node_id = $5 AND epoch = $4) OR ($4 < 0 AND node_id IS NULL AND epoch = 0))";

/// Appends events in the order given (their sequence numbers follow it).
pub(crate) const INSERT_EVENTS: &str = "INSERT INTO job_events (job_id, at_ms, attempt, kind, detail) \
     SELECT u.job_id, u.at_ms, u.attempt, u.kind, u.detail FROM unnest($1::bigint[], $2::bigint[], \
     $3::bigint[], $4::text[], $5::text[]) WITH ORDINALITY AS u(job_id, at_ms, attempt, kind, detail, n) \
     ORDER BY u.n RETURNING seq";

const INSERT_ENGINE_EVENTS: &str = "INSERT INTO engine_events (at_ms, kind, detail, node_id) \
     SELECT u.at_ms, u.kind, u.detail, $4 FROM unnest($1::bigint[], $2::text[], $3::text[]) \
     WITH ORDINALITY AS u(at_ms, kind, detail, n) ORDER BY u.n RETURNING seq";

/// Column arrays of job events, in the order they are appended.
#[derive(Default)]
pub(crate) struct NewEvents {
    pub job_id: Vec<i64>,
    pub at_ms: Vec<i64>,
    pub attempt: Vec<i64>,
    pub kind: Vec<String>,
    pub detail: Vec<String>,
}

impl NewEvents {
    /// An event of `job`; its attempt is the event's own, else `attempt` (the job's row's).
    pub fn push(&mut self, job: i64, attempt: i64, event: &EventRow) {
        self.job_id.push(job);
        self.at_ms.push(event.at_ms);
        self.attempt.push(event.attempt.unwrap_or(attempt));
        self.kind.push(event.kind.clone());
        self.detail.push(event.detail.clone());
    }

    pub fn params(&self) -> [&(dyn ToSql + Sync); 5] {
        [
            &self.job_id,
            &self.at_ms,
            &self.attempt,
            &self.kind,
            &self.detail,
        ]
    }
}

/// The writer of one node's store; runs on its own thread (see `run`).
pub(crate) struct PgWriter {
    pub shared: Arc<PgShared>,
    pub publisher: Arc<Publisher>,
    intake: Intake,
    pub counters: Arc<Counters>,
    conn: Option<Conn>,
    /// Writes a lost connection kept from being committed, in queue order.
    kept: Vec<Write>,
    /// When the next connection attempt may be made, and the wait after it fails.
    next_try: Instant,
    delay: Duration,
    /// Why the last attempt failed, for the writes answered `Unavailable`.
    last_error: String,
}

impl PgWriter {
    pub fn new(
        shared: Arc<PgShared>,
        publisher: Arc<Publisher>,
        rx: mpsc::Receiver<Command>,
        opts: &crate::StoreOptions,
        urgent: Arc<tokio::sync::Notify>,
        counters: Arc<Counters>,
    ) -> PgWriter {
        PgWriter {
            shared,
            publisher,
            intake: Intake::new(rx, opts, urgent),
            counters,
            conn: None,
            kept: Vec::new(),
            next_try: Instant::now(),
            delay: BACKOFF_FIRST,
            last_error: String::new(),
        }
    }

    /// Runs the writer and the listener on this thread's runtime until `Close` arrives or every sender is
    /// gone; then stops the listener and returns.
    pub fn run(mut self, rt: tokio::runtime::Runtime) {
        rt.block_on(async move {
            let (stop, stopped) = tokio::sync::watch::channel(false);
            let listener = tokio::spawn(super::listener::listen(
                self.shared.clone(),
                self.publisher.clone(),
                stopped,
            ));
            self.serve().await;
            let _ = stop.send(true);
            if let Err(error) = listener.await {
                tracing::error!(%error, "the job database listener failed");
            }
        });
        tracing::debug!("job store writer (PostgreSQL) stopped");
    }

    async fn serve(&mut self) {
        let mut closers = Vec::new();
        let mut batch = Vec::with_capacity(self.intake.max_batch());
        loop {
            let retry = (!self.kept.is_empty()).then(|| {
                self.next_try
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_millis(10))
            });
            let first = match self.intake.next(retry).await {
                Next::Command(first) => first,
                Next::Retry => {
                    self.apply(&mut batch).await;
                    continue;
                }
                Next::Closed => break,
            };
            self.intake.gather(first, &mut batch, &mut closers).await;
            if !batch.is_empty() {
                self.apply(&mut batch).await;
            }
            if let Some(maintenance) = self.intake.held() {
                self.maintain(maintenance).await;
            }
        }
        if !self.kept.is_empty() {
            // A last try, whatever the backoff says.
            self.next_try = Instant::now();
            self.apply(&mut batch).await;
            if !self.kept.is_empty() {
                tracing::error!(writes = self.kept.len(), "job store closed while its database is unreachable: the newest state changes are lost (the jobs are rescued or recovered as interrupted)");
                let error = self.unavailable();
                for write in self.kept.drain(..) {
                    reply(write, Answer::Failed(clone_error(&error)));
                }
            }
        }
        for closer in closers {
            let _ = closer.send(());
        }
    }

    fn unavailable(&self) -> StoreError {
        StoreError::Unavailable(format!(
            "the job database cannot be reached: {}",
            self.last_error
        ))
    }

    /// Whether a connection is up, opening one if the backoff allows.
    async fn connected(&mut self) -> bool {
        if let Some(conn) = &self.conn {
            if !conn.client.is_closed() {
                return true;
            }
            self.conn = None;
        }
        if Instant::now() < self.next_try {
            return false;
        }
        match connect(&self.shared.config, self.shared.connect_timeout).await {
            Ok(client) => {
                self.conn = Some(Conn {
                    client,
                    statements: HashMap::new(),
                });
                self.delay = BACKOFF_FIRST;
                true
            }
            Err(error) => {
                self.lost(&error);
                false
            }
        }
    }

    /// The connection is gone: the next attempt waits out the backoff.
    fn lost(&mut self, error: &StoreError) {
        self.conn = None;
        self.last_error = error.to_string();
        self.next_try = Instant::now() + self.delay;
        self.delay = (self.delay * 2).min(BACKOFF_MAX);
    }

    /// Applies the kept writes, then the batch. While the database cannot be reached, inserts are
    /// refused at once and everything else is kept for the next try.
    async fn apply(&mut self, batch: &mut Vec<Write>) {
        self.counters
            .writes
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        let mut writes = std::mem::take(&mut self.kept);
        writes.append(batch);
        if writes.is_empty() {
            return;
        }
        let mut answers = Vec::new();
        match self.commit(writes, &mut answers).await {
            None => {
                if self.counters.degraded.swap(false, Ordering::Relaxed) {
                    tracing::info!("the job database commits again");
                }
            }
            Some(left) => {
                if !self.counters.degraded.swap(true, Ordering::Relaxed) {
                    tracing::error!(error = %self.last_error, "the job database cannot be reached: submissions are refused and state changes kept until it answers again");
                }
                let error = self.unavailable();
                for write in left {
                    if write.is_insert() || self.kept.len() >= MAX_KEPT {
                        answers.push((write, Answer::Failed(clone_error(&error))));
                    } else {
                        self.kept.push(write);
                    }
                }
            }
        }
        self.counters
            .kept
            .store(self.kept.len() as u64, Ordering::Relaxed);
        for (write, answer) in answers {
            reply(write, answer);
        }
    }

    /// Commits `writes` in one transaction; should one fail for a reason of its own, each is applied
    /// alone so it fails alone. Returns the writes a lost connection left uncommitted, in order.
    async fn commit(
        &mut self,
        writes: Vec<Write>,
        answers: &mut Vec<(Write, Answer)>,
    ) -> Option<Vec<Write>> {
        if !self.connected().await {
            return Some(writes);
        }
        let error = match self.transaction(&writes).await {
            Ok(done) => {
                self.settle(&done).await;
                answers.extend(writes.into_iter().zip(done.answers));
                return None;
            }
            Err(e) if e.is_unavailable() => {
                self.lost(&e);
                return Some(writes);
            }
            Err(e) => e,
        };
        if writes.len() == 1 {
            if let Some(write) = writes.into_iter().next() {
                answers.push((write, Answer::Failed(error)));
            }
            return None;
        }
        tracing::debug!(%error, writes = writes.len(), "a batched write failed; applying the batch one write at a time");
        let mut writes = writes.into_iter();
        while let Some(write) = writes.next() {
            match self.transaction(std::slice::from_ref(&write)).await {
                Ok(mut done) => {
                    self.settle(&done).await;
                    let answer = done.answers.pop().unwrap_or(Answer::Done);
                    answers.push((write, answer));
                }
                Err(e) if e.is_unavailable() => {
                    self.lost(&e);
                    let mut left = vec![write];
                    left.extend(writes);
                    return Some(left);
                }
                Err(e) => answers.push((write, Answer::Failed(e))),
            }
        }
        None
    }

    /// After a commit, before anyone hears of it: epochs of finished jobs dropped, fenced jobs
    /// announced, the committed events published (or passed over while nobody listens).
    async fn settle(&mut self, done: &Committed) {
        self.counters.commits.fetch_add(1, Ordering::Relaxed);
        if !done.finished.is_empty() {
            let mut epochs = self.shared.epochs();
            for id in &done.finished {
                epochs.remove(id);
            }
        }
        for id in &done.fenced {
            // Nobody listening: nobody to tell.
            let _ = self.shared.fenced.send(*id);
        }
        if done.seqs == (0, 0) {
            return;
        }
        if self.publisher.listening() {
            if let Some(conn) = &self.conn {
                if let Err(error) = self.publisher.catch_up(&conn.client, None).await {
                    // The listener catches up once it hears of the commit.
                    tracing::debug!(%error, "publishing committed events failed");
                }
            }
        } else {
            self.publisher.pass(done.seqs.0, done.seqs.1).await;
        }
    }

    /// Runs `writes` in one transaction and commits it; on any error it is rolled back whole.
    async fn transaction(&mut self, writes: &[Write]) -> Result<Committed, StoreError> {
        let me = self.shared.node.id.clone();
        let shared = self.shared.clone();
        let conn = self
            .conn
            .as_mut()
            .ok_or_else(|| StoreError::Unavailable("no connection to the job database".into()))?;
        match body(conn, &shared, &me, writes).await {
            Ok((committed, work)) => {
                let mut end = String::new();
                if committed.seqs != (0, 0) {
                    // The newest numbers ride along: a listener nobody subscribes to moves its
                    // cursor past them without a query.
                    end.push_str(&format!(
                        "SELECT pg_notify('aura_events', '{},{}'); ",
                        committed.seqs.0, committed.seqs.1
                    ));
                }
                if work {
                    end.push_str("SELECT pg_notify('aura_work', ''); ");
                }
                end.push_str("COMMIT");
                conn.client
                    .batch_execute(&end)
                    .await
                    .map_err(|e| failed("committing a write batch", e))?;
                Ok(committed)
            }
            Err(e) => {
                if !conn.client.is_closed() {
                    // A failed rollback means a broken connection: found by the next statement.
                    let _ = conn.client.batch_execute("ROLLBACK").await;
                }
                Err(e)
            }
        }
    }

    /// Runs a maintenance operation on its own; SQLite's file maintenance has nothing to do here.
    async fn maintain(&mut self, maintenance: Maintenance) {
        // A caller that stopped waiting does not care about the answer.
        match maintenance {
            Maintenance::Purge { ids, reply } => {
                let result = self.purge(&ids).await;
                let _ = reply.send(result);
            }
            Maintenance::PurgeEngineEvents {
                before_ms,
                limit,
                reply,
            } => {
                let result = self.purge_engine_events(before_ms, limit).await;
                let _ = reply.send(result);
            }
            Maintenance::CompactStep { reply, .. } => {
                let _ = reply.send(Ok(CompactStep {
                    freelist_pages: 0,
                    page_size: 8192,
                    auto_vacuum: AutoVacuum::Incremental,
                }));
            }
            Maintenance::ConvertToIncremental { reply } => {
                let _ = reply.send(Ok(()));
            }
            Maintenance::Checkpoint { reply } => {
                let _ = reply.send(Ok(true));
            }
        }
    }

    async fn purge(&mut self, ids: &[JobId]) -> Result<u64, StoreError> {
        if ids.is_empty() {
            return Ok(0);
        }
        if !self.connected().await {
            return Err(self.unavailable());
        }
        let ids: Vec<i64> = ids.iter().map(|id| id.0).collect();
        let result = async {
            let conn = self.conn.as_mut().ok_or_else(|| {
                StoreError::Unavailable("no connection to the job database".into())
            })?;
            conn.client
                .batch_execute("BEGIN")
                .await
                .map_err(|e| failed("starting a purge", e))?;
            let run = async {
                let rows = conn.query(DOOMED, &[&ids], "purging jobs").await?;
                let doomed: Vec<i64> = rows
                    .iter()
                    .map(|r| r.try_get(0))
                    .collect::<Result<_, _>>()
                    .map_err(|e| failed("purging jobs", e))?;
                conn.execute(
                    "DELETE FROM job_events WHERE job_id = ANY($1)",
                    &[&doomed],
                    "purging job events",
                )
                .await?;
                conn.execute(
                    "DELETE FROM jobs WHERE id = ANY($1)",
                    &[&doomed],
                    "purging jobs",
                )
                .await
            };
            match run.await {
                Ok(n) => {
                    conn.client
                        .batch_execute("COMMIT")
                        .await
                        .map_err(|e| failed("committing a purge", e))?;
                    Ok(n)
                }
                Err(e) => {
                    let _ = conn.client.batch_execute("ROLLBACK").await;
                    Err(e)
                }
            }
        }
        .await;
        if let Err(e) = &result {
            if e.is_unavailable() {
                self.lost(e);
            }
        }
        result
    }

    async fn purge_engine_events(&mut self, before_ms: i64, limit: u32) -> Result<u64, StoreError> {
        if !self.connected().await {
            return Err(self.unavailable());
        }
        let conn = self
            .conn
            .as_mut()
            .ok_or_else(|| StoreError::Unavailable("no connection to the job database".into()))?;
        let result = conn
            .execute(
                "DELETE FROM engine_events WHERE seq IN (SELECT seq FROM \
                 (SELECT seq, at_ms FROM engine_events ORDER BY seq LIMIT $2) o WHERE at_ms < $1)",
                &[&before_ms, &i64::from(limit)],
                "purging engine events",
            )
            .await;
        if let Err(e) = &result {
            if e.is_unavailable() {
                self.lost(e);
            }
        }
        result
    }
}

/// The purge's selection: finished, not needed by an unfinished job (`purgeable!`), locked until the
/// deletes.
const DOOMED: &str = concat!(
    "SELECT jobs.id FROM jobs WHERE jobs.id = ANY($1) AND jobs.state = 'finished' AND ",
    purgeable!(),
    " FOR UPDATE"
);

/// Another error like `error`, for each write a failure answers (errors are not `Clone`).
fn clone_error(error: &StoreError) -> StoreError {
    match error {
        StoreError::Unavailable(m) => StoreError::Unavailable(m.clone()),
        other => StoreError::Unavailable(other.to_string()),
    }
}

/// One result of a pipelined statement, with what it was for.
fn rows(
    result: Result<Vec<tokio_postgres::Row>, tokio_postgres::Error>,
    what: &'static str,
) -> Result<Vec<tokio_postgres::Row>, StoreError> {
    result.map_err(|e| failed(what, e))
}

/// The `i64` in column 0 of each row.
fn first_column(rows: &[tokio_postgres::Row], what: &'static str) -> Result<Vec<i64>, StoreError> {
    rows.iter()
        .map(|r| r.try_get(0))
        .collect::<Result<_, _>>()
        .map_err(|e| failed(what, e))
}

/// The statements of one batch: `BEGIN` and everything up to the events, then the events under
/// `EVENTS_LOCK`, taken as late as possible (it serialises every node's event-appending commits, so
/// what happens while it is held is what bounds the fleet's write rate). Independent statements are
/// pipelined (sent together, answered in order): a batch costs four round trips whatever its size, two
/// of them under the lock. Returns what was done and whether other nodes may have new work (jobs
/// inserted or finished). The caller commits, or rolls back on an error.
async fn body(
    conn: &mut Conn,
    shared: &PgShared,
    me: &str,
    writes: &[Write],
) -> Result<(Committed, bool), StoreError> {
    let mut answers: Vec<Option<Answer>> = writes.iter().map(|_| None).collect();
    let olds: Vec<i64> = writes
        .iter()
        .filter_map(|w| match w {
            Write::InsertRetry { retry_of, .. } => Some(retry_of.0),
            _ => None,
        })
        .collect();
    let rows_needed: i64 = writes
        .iter()
        .map(|w| match w {
            Write::Insert { .. } | Write::InsertRetry { .. } => 1,
            Write::InsertBatch { entries, .. } => entries.len() as i64,
            _ => 0,
        })
        .sum();

    // State changes: the last record of each job in the batch writes its row (every state column is in
    // each); every record's events are appended all the same, in order. Each is fenced by the epoch
    // this node holds for the job (-1: none; see `UPDATE_STATES`).
    let mut last: HashMap<JobId, usize> = HashMap::new();
    for (i, w) in writes.iter().enumerate() {
        if let Write::Record { id, .. } = w {
            last.insert(*id, i);
        }
    }
    let held: HashMap<JobId, i64> = {
        let epochs = shared.epochs();
        last.keys()
            .map(|id| (*id, epochs.get(id).copied().unwrap_or(-1)))
            .collect()
    };
    let mut order: Vec<usize> = last.values().copied().collect();
    order.sort_unstable();
    let (mut id, mut epoch, mut state, mut updated, mut attempt, mut failures) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    let (mut outcome, mut data, mut memory, mut pressure, mut interruptions) =
        (vec![], vec![], vec![], vec![], vec![]);
    for &i in &order {
        if let Write::Record {
            id: job, job: row, ..
        } = &writes[i]
        {
            id.push(job.0);
            epoch.push(held.get(job).copied().unwrap_or(-1));
            state.push(row.state);
            updated.push(row.updated_at_ms);
            attempt.push(row.attempt);
            failures.push(row.failures);
            outcome.push(row.outcome);
            data.push(row.state_data.as_str());
            memory.push(row.memory_request.as_deref());
            pressure.push(row.pressure_stops);
            interruptions.push(row.interruptions);
        }
    }

    // Round trip 1: BEGIN, the retried jobs (locked), new ids, the state changes.
    let lock_olds = conn
        .stmt("SELECT id, attempt FROM jobs WHERE id = ANY($1) FOR UPDATE")
        .await?;
    let number = conn
        .stmt("SELECT nextval('jobs_id_seq') FROM generate_series(1::bigint, $1::bigint)")
        .await?;
    let update = conn.stmt(UPDATE_STATES).await?;
    let client = &conn.client;
    let (begun, old_rows, id_rows, updated_rows) = tokio::join!(
        client.batch_execute("BEGIN"),
        async {
            if olds.is_empty() {
                Ok(Vec::new())
            } else {
                client.query(&lock_olds, &[&olds]).await
            }
        },
        async {
            if rows_needed == 0 {
                Ok(Vec::new())
            } else {
                client.query(&number, &[&rows_needed]).await
            }
        },
        async {
            if id.is_empty() {
                Ok(Vec::new())
            } else {
                client
                    .query(
                        &update,
                        &[
                            &me,
                            &id,
                            &epoch,
                            &state,
                            &updated,
                            &attempt,
                            &failures,
                            &outcome,
                            &data,
                            &memory,
                            &pressure,
                            &interruptions,
                        ],
                    )
                    .await
            }
        },
    );
    begun.map_err(|e| failed("starting a write transaction", e))?;
    let old_rows = rows(old_rows, "linking a job to its retry")?;
    let mut ids = first_column(&rows(id_rows, "numbering new jobs")?, "numbering new jobs")?;
    ids.sort_unstable();
    let mut applied: HashSet<JobId> =
        first_column(&rows(updated_rows, "updating jobs")?, "updating jobs")?
            .into_iter()
            .map(JobId)
            .collect();

    // Retries whose old job is missing fail alone (their ids go unused).
    let mut old_attempts: HashMap<i64, i64> = HashMap::new();
    for row in &old_rows {
        let id: i64 = row
            .try_get(0)
            .map_err(|e| failed("linking a job to its retry", e))?;
        let attempt: i64 = row
            .try_get(1)
            .map_err(|e| failed("linking a job to its retry", e))?;
        old_attempts.insert(id, attempt);
    }
    for (i, w) in writes.iter().enumerate() {
        if let Write::InsertRetry { retry_of, .. } = w {
            if !old_attempts.contains_key(&retry_of.0) {
                answers[i] = Some(Answer::Failed(StoreError::NotFound(*retry_of)));
            }
        }
    }

    // New jobs' rows, in submission order; a batch's `after` names the ids just assigned.
    let mut next_id = ids.into_iter();
    let mut take_id = || {
        next_id
            .next()
            .ok_or_else(|| StoreError::Internal("fewer job ids than new jobs".into()))
    };
    let mut new_jobs = NewJobs::default();
    let mut assigned: HashMap<usize, Vec<i64>> = HashMap::new();
    for (i, w) in writes.iter().enumerate() {
        match w {
            Write::Insert { job, .. } | Write::InsertRetry { job, .. } => {
                let id = take_id()?;
                if answers[i].is_none() {
                    new_jobs.push(id, job, None, &job.fleet)?;
                    assigned.insert(i, vec![id]);
                }
            }
            Write::InsertBatch { entries, .. } => {
                let mut batch_ids: Vec<i64> = Vec::with_capacity(entries.len());
                for entry in entries {
                    let id = take_id()?;
                    let mut spec = entry.spec.clone();
                    for &earlier in &entry.refs {
                        let dep = batch_ids.get(earlier).copied().ok_or_else(|| {
                            StoreError::Internal(format!(
                                "a batch entry refers to entry {earlier}, which is not before it"
                            ))
                        })?;
                        spec.after.push(JobId(dep));
                    }
                    let fleet = FleetColumns {
                        after: spec.after.iter().map(|id| id.0).collect(),
                        ..entry.job.fleet.clone()
                    };
                    new_jobs.push(id, &entry.job, Some(to_json("job spec", &spec)?), &fleet)?;
                    batch_ids.push(id);
                }
                assigned.insert(i, batch_ids);
            }
            _ => {}
        }
    }

    // Priority changes (rare), fenced like the state changes; one refused refuses the job's records.
    for w in writes {
        if let Write::Record {
            id,
            spec: Some(spec),
            ..
        } = w
        {
            let epoch = held.get(id).copied().unwrap_or(-1);
            let changed = conn
                .execute(
                    UPDATE_SPEC,
                    &[&id.0, &spec.priority, &spec.spec, &epoch, &me],
                    "updating a job's priority",
                )
                .await?;
            if changed == 0 {
                applied.remove(id);
            }
        }
    }
    let finished: Vec<JobId> = order
        .iter()
        .filter_map(|&i| match &writes[i] {
            Write::Record { id, job: row, .. }
                if applied.contains(id) && row.state == "finished" =>
            {
                Some(*id)
            }
            _ => None,
        })
        .collect();
    let missed: Vec<i64> = last
        .keys()
        .filter(|id| !applied.contains(id))
        .map(|id| id.0)
        .collect();

    // Round trip 2: the new jobs, and which refused records' jobs exist at all.
    let insert = conn.stmt(INSERT_JOBS).await?;
    let exists = conn.stmt("SELECT id FROM jobs WHERE id = ANY($1)").await?;
    let client = &conn.client;
    let n = &new_jobs;
    let (inserted_rows, existing_rows) = tokio::join!(
        async {
            if n.id.is_empty() {
                Ok(0)
            } else {
                client
                    .execute(
                        &insert,
                        &[
                            &n.id,
                            &n.priority,
                            &n.submitted_at_ms,
                            &n.kind,
                            &n.spec,
                            &n.submitted_by,
                            &n.retry_of,
                            &n.state,
                            &n.updated_at_ms,
                            &n.attempt,
                            &n.failures,
                            &n.outcome,
                            &n.state_data,
                            &n.memory_request,
                            &n.pressure_stops,
                            &n.interruptions,
                            &n.requires,
                            &n.providers,
                            &n.after_ids,
                            &n.mem_bytes,
                            &n.gpus,
                        ],
                    )
                    .await
            }
        },
        async {
            if missed.is_empty() {
                Ok(Vec::new())
            } else {
                client.query(&exists, &[&missed]).await
            }
        },
    );
    inserted_rows.map_err(|e| failed("inserting jobs", e))?;
    let existing: HashSet<i64> = first_column(
        &rows(existing_rows, "checking refused writes")?,
        "checking refused writes",
    )?
    .into_iter()
    .collect();
    let inserted = !new_jobs.id.is_empty();

    // Records that matched no row: of a job that does not exist (NotFound) or that this node does not
    // hold under its epoch (Fenced).
    for (i, w) in writes.iter().enumerate() {
        if let Write::Record { id, .. } = w {
            if !applied.contains(id) {
                answers[i] = Some(Answer::Failed(if existing.contains(&id.0) {
                    StoreError::Fenced { id: *id }
                } else {
                    StoreError::NotFound(*id)
                }));
            }
        }
    }
    let mut fenced: Vec<JobId> = missed
        .into_iter()
        .filter(|id| existing.contains(id))
        .map(JobId)
        .collect();
    fenced.sort_unstable_by_key(|id| id.0);

    // Retried jobs link to their retries (the old job is finished: no fence); settings. Both rare.
    for (i, w) in writes.iter().enumerate() {
        match (w, &answers[i]) {
            (Write::InsertRetry { retry_of, .. }, None) => {
                let new = assigned.get(&i).and_then(|v| v.first()).copied();
                conn.execute(
                    "UPDATE jobs SET retried_as = $2 WHERE id = $1",
                    &[&retry_of.0, &new],
                    "linking a job to its retry",
                )
                .await?;
            }
            (Write::Setting { key, value, .. }, None) => {
                match value {
                    Some(value) => {
                        conn.execute(
                            "INSERT INTO settings (node_id, key, value) VALUES ($1, $2, $3) \
                             ON CONFLICT (node_id, key) DO UPDATE SET value = excluded.value",
                            &[&me, key, value],
                            "writing a setting",
                        )
                        .await?
                    }
                    None => {
                        conn.execute(
                            "DELETE FROM settings WHERE node_id = $1 AND key = $2",
                            &[&me, key],
                            "writing a setting",
                        )
                        .await?
                    }
                };
                answers[i] = Some(Answer::Done);
            }
            _ => {}
        }
    }

    // Events, in write order.
    let mut events = NewEvents::default();
    let (mut engine_at, mut engine_kind, mut engine_detail) = (vec![], vec![], vec![]);
    for (i, w) in writes.iter().enumerate() {
        if answers[i].is_some() {
            continue;
        }
        let ids = assigned.get(&i);
        match w {
            Write::Insert { job, event, .. } => {
                let id = ids.and_then(|v| v.first()).copied().unwrap_or_default();
                events.push(id, job.state.attempt, event);
                answers[i] = Some(Answer::Id(JobId(id)));
            }
            Write::InsertBatch { entries, .. } => {
                let ids = ids.cloned().unwrap_or_default();
                for (entry, id) in entries.iter().zip(&ids) {
                    events.push(*id, entry.job.state.attempt, &entry.event);
                }
                answers[i] = Some(Answer::Ids(ids.into_iter().map(JobId).collect()));
            }
            Write::InsertRetry {
                job,
                event,
                retry_of,
                at,
                by,
                ..
            } => {
                let id = ids.and_then(|v| v.first()).copied().unwrap_or_default();
                events.push(id, job.state.attempt, event);
                // Encoded here: the event names the new id.
                let retried = encode_event(&NewEvent {
                    at: *at,
                    event: JobEvent::Retried {
                        job_id: JobId(id),
                        by: by.clone(),
                    },
                    attempt: None,
                })?;
                let attempt = old_attempts.get(&retry_of.0).copied().unwrap_or_default();
                events.push(retry_of.0, attempt, &retried);
                answers[i] = Some(Answer::Id(JobId(id)));
            }
            Write::Record {
                id,
                job,
                events: appended,
                ..
            } => {
                for event in appended {
                    events.push(id.0, job.attempt, event);
                }
                answers[i] = Some(Answer::Done);
            }
            Write::Engine { event, .. } => {
                engine_at.push(event.at_ms);
                engine_kind.push(event.kind.as_str());
                engine_detail.push(event.detail.as_str());
                answers[i] = Some(Answer::Done);
            }
            Write::Setting { .. } | Write::Flush { .. } => answers[i] = Some(Answer::Done),
        }
    }

    // Round trip 3, under the lock: the events. (The commit, right after, is the fourth.)
    let mut seqs = (0, 0);
    if !events.job_id.is_empty() || !engine_at.is_empty() {
        let lock = conn.stmt("SELECT pg_advisory_xact_lock($1)").await?;
        let insert_events = conn.stmt(INSERT_EVENTS).await?;
        let insert_engine = conn.stmt(INSERT_ENGINE_EVENTS).await?;
        let client = &conn.client;
        let (locked, job_seqs, engine_seqs) = tokio::join!(
            client.query(&lock, &[&EVENTS_LOCK]),
            async {
                if events.job_id.is_empty() {
                    Ok(Vec::new())
                } else {
                    client.query(&insert_events, &events.params()).await
                }
            },
            async {
                if engine_at.is_empty() {
                    Ok(Vec::new())
                } else {
                    client
                        .query(
                            &insert_engine,
                            &[&engine_at, &engine_kind, &engine_detail, &me],
                        )
                        .await
                }
            },
        );
        rows(locked, "waiting for the events lock")?;
        seqs.0 = max_seq(&rows(job_seqs, "appending job events")?)?;
        seqs.1 = max_seq(&rows(engine_seqs, "appending engine events")?)?;
    }
    let work = inserted || !finished.is_empty();
    let answers = answers
        .into_iter()
        .map(|a| a.unwrap_or(Answer::Done))
        .collect();
    Ok((
        Committed {
            answers,
            finished,
            fenced,
            seqs,
        },
        work,
    ))
}

/// The highest `seq` an insert returned.
pub(crate) fn max_seq(rows: &[tokio_postgres::Row]) -> Result<i64, StoreError> {
    let mut max = 0;
    for row in rows {
        let seq: i64 = row.try_get(0).map_err(|e| failed("appending events", e))?;
        max = max.max(seq);
    }
    Ok(max)
}

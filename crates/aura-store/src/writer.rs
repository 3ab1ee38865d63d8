//! The writer thread: owns the only write connection and applies queued writes with group commit —
//! everything waiting is applied in one transaction; should one write fail, the batch is applied again one
//! write per transaction, so that a failing write never takes the others of its batch down with it.
//! A volume that refuses writes (full, failing) is a state of its own: the reserve is given up, and
//! what still cannot be committed is kept, in order, and committed once the volume takes it.
//! Maintenance (retention, compaction) runs here too, each operation alone between two batches.

use crate::codec::{EventRow, JobRow, SpecRow, StateRow};
use crate::error::{Context, StoreError};
use crate::maintenance::Maintenance;
use crate::reserve::Reserve;
use crate::Commit;
use aura_model::{CommittedEvent, EventLog, JobEvent, JobId, NewEvent, Timestamp};
use rusqlite::{
    params, params_from_iter, Connection, OptionalExtension, ToSql, TransactionBehavior,
};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

pub(crate) type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// What to do once a write is committed (or failed), run on the writer thread: a caller that does not
/// wait for the commit (most state changes) costs no wake-up of an async task, and one that must act on
/// it (announce a final state) acts straight from here. A caller that awaits a `Pending` passes a send on
/// its oneshot.
pub(crate) type Done = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

pub(crate) enum Command {
    Write(Box<Write>),
    /// Retention or compaction: run alone, after the writes queued before it are committed.
    Maintain(Maintenance),
    /// Apply everything already queued, then stop.
    Close(oneshot::Sender<()>),
}

impl Command {
    /// Whether someone waits for it: an insert, a setting, a write queued with `Commit::Now`, a close. It ends the
    /// group window; the others may wait in it for company.
    pub(crate) fn urgent(&self) -> bool {
        match self {
            Command::Write(write) => match &**write {
                Write::Insert { .. }
                | Write::InsertBatch { .. }
                | Write::InsertRetry { .. }
                | Write::Setting { .. }
                | Write::Flush { .. } => true,
                Write::Record { commit, .. } => *commit == Commit::Now,
                Write::Engine { .. } => false,
            },
            Command::Maintain(_) | Command::Close(_) => true,
        }
    }
}

/// What both writers (this one and PostgreSQL's, `pg::writer`) do alike: take `Command`s off the
/// channel and gather them into a batch for one group commit. How a batch is committed, and what a
/// writer does while it cannot commit, stay the writer's own.
pub(crate) struct Intake {
    rx: mpsc::Receiver<Command>,
    max_batch: usize,
    group_window: Duration,
    /// Rung by a sender of a write that must not wait for the group window (see `Store::send`).
    urgent: Arc<tokio::sync::Notify>,
    /// A maintenance operation taken from the channel, run once the writes queued before it are
    /// committed; nothing more is taken until then, so queue order holds.
    held: Option<Maintenance>,
}

/// What `Intake::next` found.
pub(crate) enum Next {
    /// The first command of a batch.
    Command(Command),
    /// Nothing came within the wait asked for: the writer tries its kept writes again.
    Retry,
    /// Every sender is gone, or a `Close` came and everything queued before the channel closed has
    /// been taken: the writer stops.
    Closed,
}

impl Intake {
    pub fn new(
        rx: mpsc::Receiver<Command>,
        opts: &crate::StoreOptions,
        urgent: Arc<tokio::sync::Notify>,
    ) -> Intake {
        Intake {
            rx,
            // A zero batch would never make progress.
            max_batch: opts.max_batch.max(1),
            group_window: opts.group_window,
            urgent,
            held: None,
        }
    }

    /// The most writes one batch holds.
    pub fn max_batch(&self) -> usize {
        self.max_batch
    }

    /// Waits for the first command of the next batch; with `retry`, for that long at most (a writer
    /// holding kept writes must try them again even if nothing new comes).
    pub async fn next(&mut self, retry: Option<Duration>) -> Next {
        let first = match retry {
            None => self.rx.recv().await,
            Some(wait) => match tokio::time::timeout(wait, self.rx.recv()).await {
                Ok(first) => first,
                Err(_) => return Next::Retry,
            },
        };
        first.map_or(Next::Closed, Next::Command)
    }

    /// Adds `first` and what else is queued to the batch (and the closers of `Close`s to `closers`),
    /// holding the batch open for the group window when nobody waits for any of it.
    pub async fn gather(
        &mut self,
        first: Command,
        batch: &mut Vec<Write>,
        closers: &mut Vec<oneshot::Sender<()>>,
    ) {
        let mut now = self.take(first, batch, closers);
        now |= self.drain(batch, closers);
        if !now && !self.group_window.is_zero() {
            // Nobody waits for these: sleep through the window (later writes queue up without waking
            // the writer) unless a write someone waits for, or a close, rings `urgent`. Registered
            // before the channel is looked at again: a ring after that look is not missed, and what
            // came before it is found by the look.
            let urgent = self.urgent.clone();
            let rung = urgent.notified();
            tokio::pin!(rung);
            rung.as_mut().enable();
            if !self.drain(batch, closers) {
                tokio::select! {
                    () = tokio::time::sleep(self.group_window) => {}
                    () = &mut rung => {}
                }
                self.drain(batch, closers);
            }
        }
    }

    /// The maintenance operation taken with the last batch, if any: the writer runs it once that batch
    /// is committed.
    pub fn held(&mut self) -> Option<Maintenance> {
        self.held.take()
    }

    /// Takes what is queued, up to a full batch or a maintenance operation; `true` if any of it is
    /// urgent (or the batch is full, or maintenance waits).
    fn drain(&mut self, batch: &mut Vec<Write>, closers: &mut Vec<oneshot::Sender<()>>) -> bool {
        let mut now = false;
        while batch.len() < self.max_batch && self.held.is_none() {
            let Ok(command) = self.rx.try_recv() else {
                return now;
            };
            now |= self.take(command, batch, closers);
        }
        true
    }

    /// Adds a command to the batch; `true` when the batch must be committed without waiting (see
    /// `Command::urgent`).
    fn take(
        &mut self,
        command: Command,
        batch: &mut Vec<Write>,
        closers: &mut Vec<oneshot::Sender<()>>,
    ) -> bool {
        let urgent = command.urgent();
        match command {
            Command::Write(write) => batch.push(*write),
            Command::Maintain(maintenance) => self.held = Some(maintenance),
            Command::Close(reply) => {
                // Nothing more can be queued; what already is still is taken (see `Next::Closed`).
                self.rx.close();
                closers.push(reply);
            }
        }
        urgent
    }
}

pub(crate) enum Write {
    Insert {
        job: JobRow,
        event: EventRow,
        reply: Reply<JobId>,
    },
    /// Several jobs in one transaction (a batch); each may depend on earlier ones, whose ids are known
    /// only as they are inserted. Answered with the first id: the rest follow it (checked).
    InsertBatch {
        entries: Vec<BatchRow>,
        reply: Reply<Vec<JobId>>,
    },
    /// A new job that re-runs `retry_of`: inserted like `Insert`, and in the same transaction the old
    /// job is linked to it (`retried_as`) and gets a `Retried` event, or nothing happens at all.
    InsertRetry {
        job: JobRow,
        event: EventRow,
        retry_of: JobId,
        /// For the old job's `Retried` event, encoded only once the new id is known.
        at: Timestamp,
        by: Option<String>,
        reply: Reply<JobId>,
    },
    Record {
        id: JobId,
        job: StateRow,
        /// Set when an operator changed a waiting job's priority: the columns that otherwise never
        /// change after submit.
        spec: Option<SpecRow>,
        events: Vec<EventRow>,
        commit: Commit,
        done: Done,
    },
    /// An entry of the engine's own event log.
    Engine { event: EventRow, done: Done },
    /// A node-wide setting; `None` deletes it.
    Setting {
        key: String,
        value: Option<String>,
        done: Done,
    },
    /// Writes nothing: answered once everything queued before it is committed.
    Flush { done: Done },
}

#[derive(Default)]
pub(crate) struct Counters {
    pub commits: AtomicU64,
    pub writes: AtomicU64,
    /// Writes kept because the volume refused them, not yet committed.
    pub kept: AtomicU64,
    /// Set while the volume refuses writes.
    pub degraded: AtomicBool,
}

/// The newest kept (not yet committed) state of each job with kept writes, and its newest kept spec if
/// one changed, for readers (`codec::overlay`).
pub(crate) type Overlay =
    Arc<std::sync::Mutex<std::collections::HashMap<JobId, (StateRow, Option<SpecRow>)>>>;

/// How often kept writes are tried again while the volume refuses them.
const RETRY_EVERY: Duration = Duration::from_secs(1);

/// Kept writes beyond this (a volume refusing writes for very long while jobs keep ending) are answered
/// with the error instead: memory stays bounded.
const MAX_KEPT: usize = 65_536;

pub(crate) struct Writer {
    pub conn: Connection,
    pub intake: Intake,
    pub counters: Arc<Counters>,
    pub reserve: Reserve,
    /// Writes a storage fault kept from being committed, in queue order.
    pub kept: Vec<Write>,
    pub overlay: Overlay,
    /// Every committed event goes out here, in commit order, for live streams (encoded only while
    /// someone listens).
    pub published: Published,
}

/// The sender of committed events (see `Store::subscribe`).
pub(crate) type Published = tokio::sync::broadcast::Sender<Arc<CommittedEvent>>;

impl Writer {
    /// Runs until `Close` arrives or every sender is gone, then returns (dropping the connection, which
    /// checkpoints the WAL if it is the last one). On its own thread, in `rt`, a current-thread runtime
    /// that serves only the channel and the group window's timer: SQLite blocks nobody else here.
    pub fn run(mut self, rt: tokio::runtime::Runtime) {
        rt.block_on(self.serve());
        tracing::debug!("job store writer stopped");
    }

    async fn serve(&mut self) {
        let mut closers = Vec::new();
        let mut batch = Vec::with_capacity(self.intake.max_batch());
        // After a Close the channel is closed but still drained: anything a caller managed to queue was
        // acknowledged as queued (`record_queued`), so it must be written.
        loop {
            let retry = (!self.kept.is_empty()).then_some(RETRY_EVERY);
            let first = match self.intake.next(retry).await {
                Next::Command(first) => first,
                Next::Retry => {
                    self.apply(&mut batch);
                    continue;
                }
                Next::Closed => break,
            };
            self.intake.gather(first, &mut batch, &mut closers).await;
            if !batch.is_empty() {
                self.apply(&mut batch);
            }
            if let Some(maintenance) = self.intake.held() {
                self.maintain(maintenance);
            }
        }
        if !self.kept.is_empty() {
            self.apply(&mut batch);
            if !self.kept.is_empty() {
                tracing::error!(writes = self.kept.len(), "job store closed while its volume refuses writes: the newest state changes are lost (recovery at the next start treats those jobs as interrupted)");
                for write in self.kept.drain(..) {
                    write.reply(Err(StoreError::Closed));
                }
            }
        }
        for closer in closers {
            let _ = closer.send(());
        }
    }

    /// Applies the kept writes and then the batch. While the volume refuses writes, inserts are refused
    /// (their callers are waiting and get the error) and everything else is kept for the next try.
    fn apply(&mut self, batch: &mut Vec<Write>) {
        self.counters
            .writes
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        let had_kept = !self.kept.is_empty();
        let mut writes = std::mem::take(&mut self.kept);
        writes.append(batch);
        let was_degraded = self.counters.degraded.load(Ordering::Relaxed);
        let mut answers = Vec::new();
        match self.commit(writes, &mut answers) {
            Ok(()) => {
                self.commits_again();
                self.reserve.restore();
            }
            Err((error, left)) => {
                if !was_degraded {
                    tracing::error!(%error, "the job database cannot commit: submissions are refused and state changes kept until its volume takes writes again");
                    self.counters.degraded.store(true, Ordering::Relaxed);
                }
                for write in left {
                    if write.is_insert() || self.kept.len() >= MAX_KEPT {
                        answers.push((write, Err(error.share().unwrap_or(StoreError::Closed))));
                    } else {
                        self.kept.push(write);
                    }
                }
            }
        }
        self.counters
            .kept
            .store(self.kept.len() as u64, Ordering::Relaxed);
        if had_kept || !self.kept.is_empty() {
            let mut overlay = self.overlay.lock().unwrap_or_else(|p| p.into_inner());
            overlay.clear();
            for write in &self.kept {
                if let Write::Record { id, job, spec, .. } = write {
                    // A later kept write without a spec change leaves the earlier change standing.
                    let spec = spec
                        .clone()
                        .or_else(|| overlay.get(id).and_then(|(_, spec)| spec.clone()));
                    overlay.insert(*id, (job.clone(), spec));
                }
            }
        }
        // Only now: who hears of a commit may read the job back or look at the store's stats at once.
        for (write, answer) in answers {
            write.reply(answer);
        }
    }

    /// Runs a maintenance operation on its own, never in a batch: its pause is what its caller asked
    /// for, and its failure (a full volume included) is its caller's alone. It is neither kept nor
    /// paid for by the reserve: retention can wait for space like anything nobody needs now.
    fn maintain(&mut self, maintenance: Maintenance) {
        let kept: HashSet<JobId> = self
            .kept
            .iter()
            .filter_map(|write| match write {
                Write::Record { id, .. } => Some(*id),
                _ => None,
            })
            .collect();
        maintenance.run(&mut self.conn, &kept);
    }

    /// The volume took a commit: the store is no longer degraded.
    fn commits_again(&self) {
        if self.counters.degraded.swap(false, Ordering::Relaxed) {
            tracing::info!("the job database commits again");
        }
    }

    /// Commits `writes` optimistically: every write in one transaction, with no savepoint per write (two
    /// more statements each). A failing write is rare (a missing job); the whole batch is then rolled back
    /// and each write applied in its own transaction, so that one failing write never takes the others
    /// down with it. A storage fault releases the reserve and tries again; if it persists, the writes not
    /// committed are handed back with it. The answer to every write it settles goes to `answers`, for
    /// `apply` to send once readers see what was committed.
    fn commit(
        &mut self,
        writes: Vec<Write>,
        answers: &mut Vec<(Write, Result<JobId, StoreError>)>,
    ) -> Result<(), (StoreError, Vec<Write>)> {
        if writes.is_empty() {
            return Ok(());
        }
        let mut result = self.transaction(&writes);
        // The reserve pays for state changes under way, never for new submissions.
        let under_way = writes.iter().any(|w| !w.is_insert());
        if matches!(&result, Err(e) if e.is_storage()) && under_way && self.reserve.release() {
            result = self.transaction(&writes);
        }
        let error = match result {
            Ok(ids) => {
                answers.extend(writes.into_iter().zip(ids.into_iter().map(Ok)));
                return Ok(());
            }
            Err(e) if e.is_storage() => return Err((e, writes)),
            Err(e) => e,
        };
        if writes.len() == 1 {
            if let Some(write) = writes.into_iter().next() {
                answers.push((write, Err(error)));
            }
            return Ok(());
        }
        tracing::debug!(%error, writes = writes.len(), "a batched write failed; applying the batch one write at a time");
        let mut writes = writes.into_iter();
        while let Some(write) = writes.next() {
            match self
                .transaction(std::slice::from_ref(&write))
                // One write, one id.
                .map(|ids| ids[0])
            {
                Err(e) if e.is_storage() => {
                    let mut left = vec![write];
                    left.extend(writes);
                    return Err((e, left));
                }
                result => answers.push((write, result)),
            }
        }
        Ok(())
    }

    /// Runs `writes` in one transaction and commits it; on any error the transaction is rolled back whole.
    fn transaction(&mut self, writes: &[Write]) -> Result<Vec<JobId>, StoreError> {
        let failed = |e: rusqlite::Error| {
            StoreError::Commit {
                source: Arc::new(e),
            }
            .classify()
        };
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(failed)?;
        // A job's row written again later in the same transaction is written only then (every state
        // column is in each write); its events are appended all the same, in order. Under a stream of
        // short jobs a job's start and end usually share a batch.
        let mut later: HashSet<JobId> = HashSet::new();
        let mut superseded = vec![false; writes.len()];
        for (i, write) in writes.iter().enumerate().rev() {
            if let Write::Record { id, .. } = write {
                superseded[i] = !later.insert(*id);
            }
        }
        // Encoded only while someone listens; sent only once committed.
        let mut events = (self.published.receiver_count() > 0).then(Vec::new);
        // An error returns before the commit: dropping `tx` rolls back what was applied.
        let ids = writes
            .iter()
            .zip(superseded)
            .map(|(write, superseded)| write.execute(&tx, superseded, &mut events))
            .collect::<Result<Vec<_>, _>>()
            .map_err(StoreError::classify)?;
        tx.commit().map_err(failed)?;
        self.counters.commits.fetch_add(1, Ordering::Relaxed);
        for event in events.into_iter().flatten() {
            // No receiver left: nobody to tell.
            let _ = self.published.send(Arc::new(event));
        }
        Ok(ids)
    }
}

impl Write {
    /// Applies the write; `superseded`: a later write of the same transaction sets the job's row, so only
    /// this one's events are written.
    fn execute(
        &self,
        conn: &Connection,
        superseded: bool,
        events: &mut Option<Vec<CommittedEvent>>,
    ) -> Result<JobId, StoreError> {
        match self {
            Write::Insert { job, event, .. } => insert_job(conn, job, event, events),
            Write::InsertBatch { entries, .. } => {
                let mut ids: Vec<JobId> = Vec::with_capacity(entries.len());
                for entry in entries {
                    let mut spec = entry.spec.clone();
                    for &earlier in &entry.refs {
                        let id = ids.get(earlier).copied().ok_or_else(|| {
                            StoreError::Internal(format!(
                                "a batch entry refers to entry {earlier}, which is not before it"
                            ))
                        })?;
                        spec.after.push(id);
                    }
                    let mut row = entry.job.clone();
                    row.spec = crate::codec::to_json("job spec", &spec)?;
                    ids.push(insert_job(conn, &row, &entry.event, events)?);
                }
                // The answer is the first id; the others must follow it (one writer, one transaction).
                let first = ids.first().copied().unwrap_or(JobId(0));
                if ids
                    .iter()
                    .enumerate()
                    .any(|(i, id)| id.0 != first.0 + i as i64)
                {
                    return Err(StoreError::Internal(
                        "a batch's job ids are not consecutive".into(),
                    ));
                }
                Ok(first)
            }
            Write::InsertRetry {
                job,
                event,
                retry_of,
                at,
                by,
                ..
            } => {
                let id = insert_job(conn, job, event, events)?;
                let attempt: Option<i64> = conn
                    .prepare_cached(
                        "UPDATE jobs SET retried_as = ?2 WHERE id = ?1 RETURNING attempt",
                    )
                    .and_then(|mut stmt| {
                        stmt.query_row(params![retry_of.0, id.0], |row| row.get(0))
                            .optional()
                    })
                    .context("linking a job to its retry")?;
                // Returning the error rolls the new job back with everything else.
                let attempt = attempt.ok_or(StoreError::NotFound(*retry_of))?;
                // Encoded here, not by the caller: the event names the new id.
                let retried = crate::codec::encode_event(&NewEvent {
                    at: *at,
                    event: JobEvent::Retried {
                        job_id: id,
                        by: by.clone(),
                    },
                    attempt: None,
                })?;
                insert_event(conn, *retry_of, attempt, &retried, events)?;
                Ok(id)
            }
            Write::Record {
                id,
                job,
                spec,
                events: appended,
                ..
            } => {
                let (events, published) = (appended, events);
                // Written even when a later write sets the state columns: that one carries no spec.
                if let Some(spec) = spec {
                    let changed = conn
                        .prepare_cached("UPDATE jobs SET priority = ?2, spec = ?3 WHERE id = ?1")
                        .and_then(|mut stmt| stmt.execute(params![id.0, spec.priority, spec.spec]))
                        .context("updating a job's priority")?;
                    if changed == 0 {
                        return Err(StoreError::NotFound(*id));
                    }
                }
                if !superseded {
                    let changed = conn
                        .prepare_cached(
                            "UPDATE jobs SET state = ?2, updated_at_ms = ?3, attempt = ?4, failures = ?5, \
                             outcome = ?6, state_data = ?7, memory_request = ?8, pressure_stops = ?9, \
                             interruptions = ?10 WHERE id = ?1",
                        )
                        .and_then(|mut stmt| {
                            let id: &dyn ToSql = &id.0;
                            stmt.execute(params_from_iter(
                                std::iter::once(id).chain(state_columns(job)),
                            ))
                        })
                        .context("updating a job")?;
                    if changed == 0 {
                        return Err(StoreError::NotFound(*id));
                    }
                }
                for event in events {
                    insert_event(conn, *id, job.attempt, event, published)?;
                }
                Ok(*id)
            }
            Write::Engine { event, .. } => {
                conn.prepare_cached(
                    "INSERT INTO engine_events (at_ms, kind, detail) VALUES (?1, ?2, ?3)",
                )
                .and_then(|mut stmt| stmt.execute(params![event.at_ms, event.kind, event.detail]))
                .context("appending an engine event")?;
                if let Some(events) = events {
                    events.push(CommittedEvent::new(
                        EventLog::Engine,
                        conn.last_insert_rowid(),
                        event.at_ms,
                        None,
                        event.kind.clone(),
                        event.detail.clone(),
                    ));
                }
                Ok(JobId(0))
            }
            Write::Setting { key, value, .. } => {
                match value {
                    Some(value) => conn
                        .prepare_cached(
                            "INSERT INTO settings (key, value) VALUES (?1, ?2) \
                             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                        )
                        .and_then(|mut stmt| stmt.execute(params![key, value])),
                    None => conn
                        .prepare_cached("DELETE FROM settings WHERE key = ?1")
                        .and_then(|mut stmt| stmt.execute(params![key])),
                }
                .context("writing a setting")?;
                Ok(JobId(0))
            }
            Write::Flush { .. } => Ok(JobId(0)),
        }
    }

    /// An insert of new jobs: refused, not kept, while the volume refuses writes.
    pub(crate) fn is_insert(&self) -> bool {
        matches!(
            self,
            Write::Insert { .. } | Write::InsertBatch { .. } | Write::InsertRetry { .. }
        )
    }

    fn reply(self, result: Result<JobId, StoreError>) {
        match self {
            Write::InsertBatch { reply, entries } => {
                let ids = result.map(|first| {
                    (0..entries.len())
                        .map(|i| JobId(first.0 + i as i64))
                        .collect()
                });
                let _ = reply.send(ids);
            }
            // A caller that stopped waiting (dropped its future) does not care about the answer.
            Write::Insert { reply, .. } | Write::InsertRetry { reply, .. } => {
                let _ = reply.send(result);
            }
            Write::Record { done, .. }
            | Write::Engine { done, .. }
            | Write::Setting { done, .. }
            | Write::Flush { done } => done(result.map(|_| ())),
        }
    }
}

/// One entry of a `Write::InsertBatch`: its row (the spec column written at insert, with `refs`'
/// ids added to its `after`), its spec, and its `Submitted` event.
pub(crate) struct BatchRow {
    pub job: JobRow,
    pub spec: aura_model::JobSpec,
    /// Earlier entries (indexes) it depends on.
    pub refs: Vec<usize>,
    pub event: EventRow,
}

fn insert_job(
    conn: &Connection,
    job: &JobRow,
    event: &EventRow,
    events: &mut Option<Vec<CommittedEvent>>,
) -> Result<JobId, StoreError> {
    conn.prepare_cached(
        "INSERT INTO jobs (priority, submitted_at_ms, kind, spec, submitted_by, retry_of, state, \
         updated_at_ms, attempt, failures, outcome, state_data, memory_request, pressure_stops, \
         interruptions) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
    )
    .and_then(|mut stmt| {
        let fixed: [&dyn ToSql; 6] = [
            &job.priority,
            &job.submitted_at_ms,
            &job.kind,
            &job.spec,
            &job.submitted_by,
            &job.retry_of,
        ];
        stmt.execute(params_from_iter(
            fixed.into_iter().chain(state_columns(&job.state)),
        ))
    })
    .context("inserting a job")?;
    let id = JobId(conn.last_insert_rowid());
    insert_event(conn, id, job.state.attempt, event, events)?;
    Ok(id)
}

fn insert_event(
    conn: &Connection,
    job: JobId,
    attempt: i64,
    event: &EventRow,
    published: &mut Option<Vec<CommittedEvent>>,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO job_events (job_id, at_ms, attempt, kind, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
    )
    .and_then(|mut stmt| {
        stmt.execute(params![
            job.0,
            event.at_ms,
            event.attempt.unwrap_or(attempt),
            event.kind,
            event.detail
        ])
    })
    .context("appending a job event")?;
    if let Some(published) = published {
        published.push(CommittedEvent::new(
            EventLog::Job(job),
            conn.last_insert_rowid(),
            event.at_ms,
            Some(event.attempt.unwrap_or(attempt)),
            event.kind.clone(),
            event.detail.clone(),
        ));
    }
    Ok(())
}

/// The changing columns in the order of both the INSERT (after the fixed ones) and the UPDATE, so the two
/// cannot drift apart.
fn state_columns(row: &StateRow) -> [&dyn ToSql; 9] {
    [
        &row.state,
        &row.updated_at_ms,
        &row.attempt,
        &row.failures,
        &row.outcome,
        &row.state_data,
        &row.memory_request,
        &row.pressure_stops,
        &row.interruptions,
    ]
}

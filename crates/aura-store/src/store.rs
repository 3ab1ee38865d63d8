//! `Store`: the async handle the engine and the HTTP server use, whichever the backend (SQLite or
//! PostgreSQL). It turns calls into writer commands (the same `Command`s for both writers) or pooled
//! reads, and owns the writer thread's lifetime.

use crate::codec::{encode_event, encode_new, encode_spec, encode_state, SpecRow};
use crate::error::{Context as _, StoreError};
use crate::maintenance::{CompactStep, Maintenance, RetainedJob};
use crate::reader::{self, ReadPool};
use crate::reserve::Reserve;
use crate::schema::{migrate, open_connection};
use crate::writer::{Command, Counters, Done, Intake, Overlay, Write, Writer};
use crate::{Fleet, PgConfig};
use aura_model::{
    CommittedEvent, EngineEvent, EngineEventRecord, EventLog, Job, JobEvent, JobEventRecord, JobId,
    JobSpec, MemoryRequest, NewEvent, NodeSpec, StateName, Timestamp,
};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// How the store opens and writes its database; [`StoreOptions::default`] gives the defaults (5 s busy
/// timeout, batches of up to 512 writes, 10 ms group window, no reserve).
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// How long a connection waits for a lock held by another process before giving up.
    pub busy_timeout: Duration,
    /// Most writes group-committed in one transaction.
    pub max_batch: usize,
    /// Writes that may wait for the writer before callers wait for channel space.
    pub channel_capacity: usize,
    /// How long a batch of writes queued with [`Commit::Soon`] is held open for more before it is
    /// committed (a write queued with [`Commit::Now`] ends the wait at once). Under a steady stream of
    /// short jobs, one commit then carries many jobs' final writes instead of one each.
    pub group_window: Duration,
    /// Space set aside next to the database (`<db>-reserve`) and given up when its volume is full, so that
    /// state changes under way still commit; 0: none.
    pub reserve_bytes: u64,
    /// Committed events kept for live subscribers (see `Store::subscribe`); one further behind lags.
    pub event_buffer: usize,
}

/// How soon a queued write must be committed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Commit {
    /// As soon as the writer is free: someone waits for it.
    Now,
    /// Within `StoreOptions::group_window`: nobody waits for it, and a later write may share its commit.
    Soon,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            busy_timeout: Duration::from_secs(5),
            max_batch: 512,
            channel_capacity: 4096,
            group_window: Duration::from_millis(10),
            reserve_bytes: 0,
            event_buffer: 4096,
        }
    }
}

/// A page request for `Store::list`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListFilter {
    /// Empty means every state.
    pub states: Vec<StateName>,
    /// Labels a job must carry, each `(key, value)` exactly (all of them: AND); empty means any labels.
    pub labels: Vec<(String, String)>,
    /// Keyset cursor: the last id of the previous page (exclusive), in the order of `newest_first`.
    pub after: Option<JobId>,
    /// Capped at 1000; 0 yields an empty page.
    pub limit: u32,
    /// Highest ids (newest jobs) first; otherwise oldest first. Default: newest first.
    pub newest_first: bool,
}

impl Default for ListFilter {
    fn default() -> Self {
        ListFilter {
            states: Vec::new(),
            labels: Vec::new(),
            after: None,
            limit: 100,
            newest_first: true,
        }
    }
}

/// Counters since `open`, for tests and status pages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Transactions committed by the writer.
    pub commits: u64,
    /// Writes (inserts and records) those transactions held, failed ones included.
    pub writes: u64,
    /// Whether the database refuses writes now (SQLite: its volume is full or failing; PostgreSQL: the
    /// writer lost its connection and has not got it back): submissions are refused.
    pub degraded: bool,
    /// State changes kept in memory until the database takes writes again.
    pub kept_writes: u64,
}

/// A queued write; resolves once it is committed (or failed). Dropping it does not cancel the write.
#[derive(Debug)]
pub struct Pending(oneshot::Receiver<Result<(), StoreError>>);

impl Pending {
    /// The `Done` a queued write calls once committed (or failed), and the `Pending` that resolves with
    /// it. A caller that stopped waiting (dropped its `Pending`) does not care about the answer.
    fn answered_by() -> (Done, Pending) {
        let (reply, answer) = oneshot::channel();
        let done: Done = Box::new(move |result| {
            let _ = reply.send(result);
        });
        (done, Pending(answer))
    }
}

impl Future for Pending {
    type Output = Result<(), StoreError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0)
            .poll(cx)
            .map(|reply| reply.unwrap_or(Err(StoreError::Closed)))
    }
}

/// A cheap, clonable handle to the job database. The writer thread stops when `close` is called or when
/// the last handle is dropped (after applying everything already queued).
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    commands: mpsc::Sender<Command>,
    /// Ends the writer's group window early (see `send`).
    urgent: Arc<tokio::sync::Notify>,
    writer: Mutex<Option<JoinHandle<()>>>,
    counters: Arc<Counters>,
    closed: AtomicBool,
    published: crate::writer::Published,
    backend: Backend,
}

/// Where reads go, and what only one backend has.
enum Backend {
    Sqlite {
        readers: Arc<ReadPool>,
        /// State changes kept while the volume refuses writes, shown to readers over what is stored.
        overlay: Overlay,
        /// The database file, for its size and its write-ahead log's.
        path: PathBuf,
    },
    Postgres(Arc<crate::pg::PgShared>),
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// A job about to be inserted (its id still 0), its row, and its `submitted` event.
fn new_job(
    spec: JobSpec,
    submitted_at: Timestamp,
    memory_request: Option<MemoryRequest>,
    submitted_by: Option<String>,
    retry_of: Option<JobId>,
) -> Result<(Job, crate::codec::JobRow, crate::codec::EventRow), StoreError> {
    let job = Job {
        memory_request,
        submitted_by,
        retry_of,
        ..Job::new(JobId(0), spec, submitted_at)
    };
    let row = encode_new(&job)?;
    let event = encode_event(&NewEvent {
        at: submitted_at,
        event: JobEvent::Submitted {
            program: job.spec.program.clone(),
            priority: job.spec.priority,
            retry_of,
        },
        attempt: None,
    })?;
    Ok((job, row, event))
}

/// Runs blocking work off the async worker threads; a panic in it is a store bug, reported as such.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Internal(format!("blocking task failed: {e}")))?
}

/// Starts a store's writer on a thread of its own with a current-thread runtime (time and I/O): it
/// never competes with the daemon's tasks and outlives whichever runtime opened the store.
fn spawn_writer(
    name: &str,
    run: impl FnOnce(tokio::runtime::Runtime) + Send + 'static,
) -> Result<JoinHandle<()>, StoreError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(StoreError::Spawn)?;
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || run(rt))
        .map_err(StoreError::Spawn)
}

impl Store {
    /// The handle over a started writer, whichever the backend.
    fn assemble(
        commands: mpsc::Sender<Command>,
        urgent: Arc<tokio::sync::Notify>,
        writer: JoinHandle<()>,
        counters: Arc<Counters>,
        published: crate::writer::Published,
        backend: Backend,
    ) -> Store {
        Store {
            inner: Arc::new(Inner {
                commands,
                urgent,
                writer: Mutex::new(Some(writer)),
                counters,
                closed: AtomicBool::new(false),
                published,
                backend,
            }),
        }
    }

    /// Opens (creating if missing) the database file, WAL mode, synchronous=NORMAL, foreign keys on, runs
    /// the migrations the file lacks, and starts the writer thread.
    pub async fn open(path: &Path, opts: StoreOptions) -> Result<Store, StoreError> {
        let path = path.to_owned();
        let busy_timeout = opts.busy_timeout;
        let reserve_bytes = opts.reserve_bytes;
        let (write_conn, read_conn, path, reserve) = blocking(move || {
            let mut write_conn = open_connection(&path, busy_timeout, false)?;
            migrate(&mut write_conn)?;
            let read_conn = open_connection(&path, busy_timeout, true)?;
            let mut reserve_path = path.clone().into_os_string();
            reserve_path.push("-reserve");
            let reserve = Reserve::new(reserve_path.into(), reserve_bytes);
            Ok((write_conn, read_conn, path, reserve))
        })
        .await?;
        // tokio panics on a zero-capacity channel (`Intake::new` keeps the batch above zero likewise).
        let (tx, rx) = mpsc::channel(opts.channel_capacity.max(1));
        let counters = Arc::new(Counters::default());
        let overlay = Overlay::default();
        let urgent = Arc::new(tokio::sync::Notify::new());
        let (published, _) = tokio::sync::broadcast::channel(opts.event_buffer.max(1));
        let writer = Writer {
            published: published.clone(),
            conn: write_conn,
            intake: Intake::new(rx, &opts, urgent.clone()),
            counters: counters.clone(),
            reserve,
            kept: Vec::new(),
            overlay: overlay.clone(),
        };
        let handle = spawn_writer("aura-store-writer", move |rt| writer.run(rt))?;
        let backend = Backend::Sqlite {
            readers: Arc::new(ReadPool::new(path.clone(), busy_timeout, read_conn)),
            overlay,
            path,
        };
        Ok(Store::assemble(
            tx, urgent, handle, counters, published, backend,
        ))
    }

    /// Opens the fleet's PostgreSQL database as node `node`: connects (failing fast with `Unavailable`
    /// when the server cannot be reached within `config.connect_timeout`; a URL holding a password is
    /// refused with `Config`), runs the migrations it lacks under an advisory lock (several nodes may
    /// start at once), builds the read pool, and starts the writer and the listener (`LISTEN`) on a
    /// thread of their own. Every method then works as on SQLite, with these differences: `unfinished`
    /// returns only the jobs this node holds; a state change of a job this node holds is applied only
    /// under its claim's epoch (else `Fenced`); settings are this node's; live events are every node's;
    /// SQLite's file maintenance has nothing to do. `opts.busy_timeout` and `opts.reserve_bytes` do not
    /// apply.
    pub async fn open_postgres(
        config: PgConfig,
        node: NodeSpec,
        opts: StoreOptions,
    ) -> Result<Store, StoreError> {
        let (shared, seqs) = crate::pg::open(&config, node).await?;
        let (tx, rx) = mpsc::channel(opts.channel_capacity.max(1));
        let counters = Arc::new(Counters::default());
        let urgent = Arc::new(tokio::sync::Notify::new());
        let (published, _) = tokio::sync::broadcast::channel(opts.event_buffer.max(1));
        let publisher = Arc::new(crate::pg::Publisher::new(published.clone(), seqs));
        let writer = crate::pg::PgWriter::new(
            shared.clone(),
            publisher,
            rx,
            &opts,
            urgent.clone(),
            counters.clone(),
        );
        // Its own runtime, as SQLite's writer: the writer and the listener (and their connections) never
        // compete with the daemon's tasks, and they outlive whichever runtime opened the store.
        let handle = spawn_writer("aura-store-pg", move |rt| writer.run(rt))?;
        let backend = Backend::Postgres(shared);
        Ok(Store::assemble(
            tx, urgent, handle, counters, published, backend,
        ))
    }

    /// This node's part of the fleet; `None` on SQLite.
    pub fn fleet(&self) -> Option<Fleet> {
        match &self.inner.backend {
            Backend::Postgres(shared) => Some(Fleet {
                inner: shared.clone(),
            }),
            Backend::Sqlite { .. } => None,
        }
    }

    /// `"sqlite"` or `"postgres"`.
    pub fn backend(&self) -> &'static str {
        match &self.inner.backend {
            Backend::Sqlite { .. } => "sqlite",
            Backend::Postgres(_) => "postgres",
        }
    }

    /// The PostgreSQL side, or `None` on SQLite.
    fn pg(&self) -> Result<Option<&crate::pg::PgShared>, StoreError> {
        self.check_open()?;
        Ok(match &self.inner.backend {
            Backend::Postgres(shared) => Some(shared),
            Backend::Sqlite { .. } => None,
        })
    }

    /// Commit and write counters since `open`, and whether writes are being kept (SQLite: its volume
    /// refuses writes; PostgreSQL: the database cannot be reached).
    pub fn stats(&self) -> StoreStats {
        StoreStats {
            commits: self.inner.counters.commits.load(Ordering::Relaxed),
            writes: self.inner.counters.writes.load(Ordering::Relaxed),
            degraded: self.inner.counters.degraded.load(Ordering::Relaxed),
            kept_writes: self.inner.counters.kept.load(Ordering::Relaxed),
        }
    }

    fn check_open(&self) -> Result<(), StoreError> {
        if self.inner.closed.load(Ordering::Acquire) {
            Err(StoreError::Closed)
        } else {
            Ok(())
        }
    }

    async fn send(&self, command: Command) -> Result<(), StoreError> {
        self.check_open()?;
        let urgent = command.urgent();
        self.inner
            .commands
            .send(command)
            .await
            .map_err(|_| StoreError::Closed)?;
        if urgent {
            // A writer sleeping through its group window does not watch the channel: wake it.
            self.inner.urgent.notify_waiters();
        }
        Ok(())
    }

    /// Assigns the next id, stores the job as queued with the memory request admission settled for it
    /// (stated, learned or default; so the record shows the figure and its source from the start), and
    /// appends a `submitted` event; resolves once committed, with the job as stored.
    pub async fn insert_job(
        &self,
        spec: JobSpec,
        submitted_at: Timestamp,
        memory_request: Option<MemoryRequest>,
        submitted_by: Option<String>,
    ) -> Result<Job, StoreError> {
        let (mut job, row, event) =
            new_job(spec, submitted_at, memory_request, submitted_by, None)?;
        let (reply, answer) = oneshot::channel();
        self.send(Command::Write(Box::new(Write::Insert {
            job: row,
            event,
            reply,
        })))
        .await?;
        job.id = answer.await.unwrap_or(Err(StoreError::Closed))?;
        Ok(job)
    }

    /// Stores a job that re-runs `retry_of` (`aura retry`), as `insert_job` does, with `retry_of` on the
    /// new job and its `submitted` event; in the same transaction the old job's `retried_as` is set to
    /// the new id and a `retried` event is appended to its log (under its current attempt). An old job
    /// that is not stored is `NotFound(retry_of)`, and nothing is written. Resolves once committed, with
    /// the new job as stored.
    pub async fn insert_retry(
        &self,
        spec: JobSpec,
        submitted_at: Timestamp,
        memory_request: Option<MemoryRequest>,
        submitted_by: Option<String>,
        retry_of: JobId,
    ) -> Result<Job, StoreError> {
        let by = submitted_by.clone();
        let (mut job, row, event) = new_job(
            spec,
            submitted_at,
            memory_request,
            submitted_by,
            Some(retry_of),
        )?;
        let (reply, answer) = oneshot::channel();
        self.send(Command::Write(Box::new(Write::InsertRetry {
            job: row,
            event,
            retry_of,
            at: submitted_at,
            by,
            reply,
        })))
        .await?;
        job.id = answer.await.unwrap_or(Err(StoreError::Closed))?;
        Ok(job)
    }

    /// Stores several jobs in one transaction, all or none, each as `insert_job` does. An entry's `refs`
    /// name earlier entries (indexes) whose ids are added to its `after` as they are assigned. Resolves
    /// once committed, with the jobs as stored, in order.
    pub async fn insert_batch(
        &self,
        entries: Vec<(JobSpec, Vec<usize>, Option<MemoryRequest>)>,
        submitted_at: Timestamp,
        submitted_by: Option<String>,
    ) -> Result<Vec<Job>, StoreError> {
        let mut jobs = Vec::with_capacity(entries.len());
        let mut rows = Vec::with_capacity(entries.len());
        for (spec, refs, memory_request) in entries {
            let (job, row, event) = new_job(
                spec,
                submitted_at,
                memory_request,
                submitted_by.clone(),
                None,
            )?;
            rows.push(crate::writer::BatchRow {
                job: row,
                spec: job.spec.clone(),
                refs: refs.clone(),
                event,
            });
            jobs.push((job, refs));
        }
        let (reply, answer) = oneshot::channel();
        self.send(Command::Write(Box::new(Write::InsertBatch {
            entries: rows,
            reply,
        })))
        .await?;
        let ids = answer.await.unwrap_or(Err(StoreError::Closed))?;
        let mut stored: Vec<Job> = Vec::with_capacity(jobs.len());
        for ((mut job, refs), id) in jobs.into_iter().zip(ids) {
            job.id = id;
            for earlier in refs {
                if let Some(dep) = stored.get(earlier) {
                    job.spec.after.push(dep.id);
                }
            }
            stored.push(job);
        }
        Ok(stored)
    }

    /// Writes the job's row and appends `events` (stamped with `job.attempt`) atomically; resolves once
    /// committed. An id that is not stored is `NotFound` and changes nothing.
    pub async fn record(&self, job: &Job, events: Vec<NewEvent>) -> Result<(), StoreError> {
        self.record_queued(job, events).await?.await
    }

    /// Like `record`, but resolves as soon as the write is queued; the returned `Pending` resolves when it
    /// is committed. Writes are applied in the order they were queued.
    pub async fn record_queued(
        &self,
        job: &Job,
        events: Vec<NewEvent>,
    ) -> Result<Pending, StoreError> {
        self.queue_pending(job, &events, None).await
    }

    /// Like `record_queued`, for a waiting (queued or held) job whose priority an operator changed: also
    /// writes its `priority` column and its spec (`job.spec.priority` is the new one). Queued behind the
    /// job's other writes like any record; resolves once queued, the `Pending` once committed (the
    /// engine's actor never waits for it: a volume that refuses writes would hold it up).
    pub async fn record_priority(
        &self,
        job: &Job,
        events: Vec<NewEvent>,
    ) -> Result<Pending, StoreError> {
        let spec = encode_spec(job)?;
        self.queue_pending(job, &events, Some(spec)).await
    }

    /// Queues a record someone will wait for with a `Pending`.
    async fn queue_pending(
        &self,
        job: &Job,
        events: &[NewEvent],
        spec: Option<SpecRow>,
    ) -> Result<Pending, StoreError> {
        let (done, pending) = Pending::answered_by();
        self.queue_record(job, events, spec, Commit::Now, done)
            .await?;
        Ok(pending)
    }

    /// Like `record`, but resolves as soon as the write is queued; `then` runs on the writer thread once
    /// it is committed (or failed). It must be quick and must not block: it runs between two commits.
    /// Nothing waits for the commit, so no task is woken for it; `commit` says how soon it must happen.
    pub async fn record_then(
        &self,
        job: &Job,
        events: &[NewEvent],
        commit: Commit,
        then: impl FnOnce(Result<(), StoreError>) + Send + 'static,
    ) -> Result<(), StoreError> {
        self.queue_record(job, events, None, commit, Box::new(then))
            .await
    }

    async fn queue_record(
        &self,
        job: &Job,
        events: &[NewEvent],
        spec: Option<SpecRow>,
        commit: Commit,
        done: Done,
    ) -> Result<(), StoreError> {
        let row = encode_state(job)?;
        let events = events
            .iter()
            .map(encode_event)
            .collect::<Result<Vec<_>, _>>()?;
        self.send(Command::Write(Box::new(Write::Record {
            id: job.id,
            job: row,
            spec,
            events,
            commit,
            done,
        })))
        .await
    }

    /// A node-wide setting (e.g. whether the node is drained) as last committed; `None` if unset.
    pub async fn setting(&self, key: &str) -> Result<Option<String>, StoreError> {
        if let Some(pg) = self.pg()? {
            return pg.setting(key).await;
        }
        let key = key.to_owned();
        self.read(move |conn| reader::setting(conn, &key)).await
    }

    /// Sets a node-wide setting, or deletes it (`None`); resolves once queued, the `Pending` once
    /// committed. Like a state change, it is kept and committed later while the volume refuses writes,
    /// and the `Pending` resolves only then.
    pub async fn set_setting(&self, key: &str, value: Option<&str>) -> Result<Pending, StoreError> {
        let (done, pending) = Pending::answered_by();
        self.send(Command::Write(Box::new(Write::Setting {
            key: key.to_owned(),
            value: value.map(str::to_owned),
            done,
        })))
        .await?;
        Ok(pending)
    }

    /// Resolves once queued, the `Pending` once every write queued before it is committed (kept writes
    /// included: while the volume refuses writes, only when they are).
    pub async fn flush(&self) -> Result<Pending, StoreError> {
        let (done, pending) = Pending::answered_by();
        self.send(Command::Write(Box::new(Write::Flush { done })))
            .await?;
        Ok(pending)
    }

    /// Appends an entry to the engine's own event log (decisions that belong to no single job); resolves
    /// once queued; `then` runs on the writer thread once it is committed (see `record_then`), within the
    /// group window.
    pub async fn record_engine_event(
        &self,
        at: Timestamp,
        event: &EngineEvent,
        then: impl FnOnce(Result<(), StoreError>) + Send + 'static,
    ) -> Result<(), StoreError> {
        let event = crate::codec::encode_logged(at, event, None)?;
        self.send(Command::Write(Box::new(Write::Engine {
            event,
            done: Box::new(then),
        })))
        .await
    }

    /// The engine's event log after sequence number `after`, oldest first, at most `limit` (≤ 1000).
    pub async fn engine_events(
        &self,
        after: i64,
        limit: u32,
    ) -> Result<Vec<EngineEventRecord>, StoreError> {
        if let Some(pg) = self.pg()? {
            return pg.engine_events(after, limit).await;
        }
        self.read(move |conn| reader::engine_events(conn, after, limit))
            .await
    }

    /// Every event committed from now on, in commit order. The buffer is shared and bounded
    /// (`StoreOptions::event_buffer`): a receiver that falls that far behind gets `Lagged` and must
    /// catch up from the log (`committed_after`) or give up. Costs the writer nothing while nobody
    /// listens.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Arc<CommittedEvent>> {
        self.inner.published.subscribe()
    }

    /// Committed events after sequence number `after`, oldest first, at most `limit` (capped like a
    /// list): of one job (`Some(EventLog::Job(id))`), of every job (`None`), or of the engine
    /// (`Some(EventLog::Engine)`) — what a stream replays for a client that reconnects.
    pub async fn committed_after(
        &self,
        log: Option<EventLog>,
        after: i64,
        limit: u32,
    ) -> Result<Vec<CommittedEvent>, StoreError> {
        if let Some(pg) = self.pg()? {
            return pg.committed_after(log, after, limit).await;
        }
        self.read(move |conn| reader::committed_after(conn, log, after, limit))
            .await
    }

    /// The newest sequence numbers of the job log and of the engine log (0 for an empty log): where a
    /// stream that replays nothing starts.
    pub async fn latest_seqs(&self) -> Result<(i64, i64), StoreError> {
        if let Some(pg) = self.pg()? {
            return pg.latest_seqs().await;
        }
        self.read(|conn| {
            conn.query_row(
                "SELECT (SELECT COALESCE(MAX(seq), 0) FROM job_events), \
                        (SELECT COALESCE(MAX(seq), 0) FROM engine_events)",
                [],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .context("reading the newest event numbers")
        })
        .await
    }

    async fn read<T: Send + 'static>(
        &self,
        query: impl FnOnce(&rusqlite::Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.check_open()?;
        let Backend::Sqlite { readers, .. } = &self.inner.backend else {
            return Err(StoreError::Internal(
                "an SQLite read on a PostgreSQL store".into(),
            ));
        };
        let readers = readers.clone();
        blocking(move || readers.with(query)).await
    }

    /// One job as it is now (kept writes included); `None` if no job has this id.
    pub async fn get(&self, id: JobId) -> Result<Option<Job>, StoreError> {
        if let Some(pg) = self.pg()? {
            return pg.get(id).await;
        }
        let job = self.read(move |conn| reader::get(conn, id)).await?;
        Ok(self.overlaid(job.into_iter().collect())?.pop())
    }

    /// One page of jobs; see `ListFilter`. While writes are kept, a job is filtered by its kept state
    /// among the rows its stored state selected (labels never change after submit: the stored spec's
    /// are the job's).
    pub async fn list(&self, filter: ListFilter) -> Result<Vec<Job>, StoreError> {
        if let Some(pg) = self.pg()? {
            return pg
                .list(
                    &filter.states,
                    &filter.labels,
                    filter.after,
                    filter.limit,
                    filter.newest_first,
                )
                .await;
        }
        let states = filter.states.clone();
        let jobs = self
            .read(move |conn| {
                reader::list(
                    conn,
                    &filter.states,
                    &filter.labels,
                    filter.after,
                    filter.limit,
                    filter.newest_first,
                )
            })
            .await?;
        let mut jobs = self.overlaid(jobs)?;
        if !states.is_empty() {
            jobs.retain(|j| states.contains(&j.state.name()));
        }
        Ok(jobs)
    }

    /// Jobs in every state but finished (queued, held, running, paused, stopping), oldest first: what a
    /// starting daemon must recover or requeue (read at start-up, before any write could be kept). On
    /// PostgreSQL only the jobs this node holds (claimed, not finished), whose epochs it loads so that
    /// recovery's writes of them are applied (or fenced, if another node took one over since).
    pub async fn unfinished(&self) -> Result<Vec<Job>, StoreError> {
        if let Some(pg) = self.pg()? {
            return pg.unfinished().await;
        }
        self.read(reader::unfinished).await
    }

    /// `jobs` as read, with the state changes kept while the volume refuses writes put over them.
    fn overlaid(&self, mut jobs: Vec<Job>) -> Result<Vec<Job>, StoreError> {
        let Backend::Sqlite { overlay, .. } = &self.inner.backend else {
            return Ok(jobs);
        };
        let overlay = overlay.lock().unwrap_or_else(|p| p.into_inner());
        if !overlay.is_empty() {
            for job in &mut jobs {
                if let Some((row, spec)) = overlay.get(&job.id) {
                    crate::codec::overlay(job, row, spec.as_ref())?;
                }
            }
        }
        Ok(jobs)
    }

    /// The job's event log in order; empty for an unknown id.
    pub async fn events(&self, id: JobId) -> Result<Vec<JobEventRecord>, StoreError> {
        if let Some(pg) = self.pg()? {
            return pg.events(id).await;
        }
        self.read(move |conn| reader::events(conn, id)).await
    }

    /// Recorded memory peaks (bytes) of the newest `limit` successful jobs of `kind`, newest first: the
    /// history admission learns memory requests from.
    pub async fn memory_peaks(&self, kind: &str, limit: u32) -> Result<Vec<u64>, StoreError> {
        if let Some(pg) = self.pg()? {
            return pg.memory_peaks(kind, limit).await;
        }
        let kind = kind.to_owned();
        self.read(move |conn| reader::memory_peaks(conn, &kind, limit))
            .await
    }

    /// Whether a read connection answers: one trivial query, for readiness probes (a count would scan
    /// the whole table on every probe).
    pub async fn ping(&self) -> Result<(), StoreError> {
        if let Some(pg) = self.pg()? {
            return pg.ping().await;
        }
        self.read(|conn| {
            conn.query_row("SELECT 1", [], |_| Ok(()))
                .context("pinging the job database")
        })
        .await
    }

    /// The newest `limit` quarantined jobs (crash-loop protection), newest first.
    pub async fn quarantined(&self, limit: u32) -> Result<Vec<JobId>, StoreError> {
        if let Some(pg) = self.pg()? {
            return pg.quarantined(limit).await;
        }
        self.read(move |conn| reader::quarantined(conn, limit))
            .await
    }

    /// Every state with its number of jobs, zeros included.
    pub async fn count_by_state(&self) -> Result<Vec<(StateName, u64)>, StoreError> {
        if let Some(pg) = self.pg()? {
            return pg.count_by_state().await;
        }
        self.read(reader::count_by_state).await
    }

    /// Finished jobs (`state = 'finished'`) last written before `finished_before`, oldest id first, at
    /// most `limit` (capped at 1000), each with its event log: what retention exports and then deletes
    /// with `purge`. A job an unfinished job still needs is never among them: one named in an unfinished
    /// job's `after`, or linked by `retry_of`/`retried_as` to an unfinished job (nor one whose state
    /// change is kept while the volume refuses writes). Read on a reader connection; it walks finished
    /// jobs in id order until `limit` qualify, so the last, short page of a run costs a walk over the
    /// newer finished jobs.
    pub async fn retention_candidates(
        &self,
        finished_before: Timestamp,
        limit: u32,
    ) -> Result<Vec<RetainedJob>, StoreError> {
        let before_ms = finished_before.unix_millis();
        if let Some(pg) = self.pg()? {
            return pg.retention_candidates(before_ms, limit).await;
        }
        let found = self
            .read(move |conn| crate::maintenance::retention_candidates(conn, before_ms, limit))
            .await?;
        let Backend::Sqlite { overlay, .. } = &self.inner.backend else {
            return Ok(found);
        };
        let overlay = overlay.lock().unwrap_or_else(|p| p.into_inner());
        Ok(found
            .into_iter()
            .filter(|retained| !overlay.contains_key(&retained.job.id))
            .collect())
    }

    /// Deletes these jobs and their events, in one transaction on the writer thread, on its own (never
    /// in a group commit: its failure fails no other write). Only jobs still finished and still not
    /// needed by an unfinished job (see `retention_candidates`, checked again here) are deleted; the
    /// others, and unknown ids, are skipped. Returns the number of jobs deleted. The writer pauses for
    /// the whole call: send a few hundred ids at a time (500 is a few tens of milliseconds).
    pub async fn purge(&self, ids: Vec<JobId>) -> Result<u64, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Maintain(Maintenance::Purge { ids, reply }))
            .await?;
        answer.await.unwrap_or(Err(StoreError::Closed))
    }

    /// Deletes the oldest engine events from before `before`, looking at no more than the oldest
    /// `limit` of them (so each call's writer pause is bounded); returns how many were deleted. Call
    /// again until it returns 0.
    pub async fn purge_engine_events(
        &self,
        before: Timestamp,
        limit: u32,
    ) -> Result<u64, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Maintain(Maintenance::PurgeEngineEvents {
            before_ms: before.unix_millis(),
            limit,
            reply,
        }))
        .await?;
        answer.await.unwrap_or(Err(StoreError::Closed))
    }

    /// Gives up to `pages` free pages back to the file system (`PRAGMA incremental_vacuum`), then
    /// checkpoints the write-ahead log without waiting for readers, on the writer thread on its own;
    /// says what is left. The writer's pause grows with `pages`. Does nothing unless the database's
    /// `auto_vacuum` is `Incremental` (new databases; older ones need `convert_to_incremental` once).
    pub async fn compact_step(&self, pages: u32) -> Result<CompactStep, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Maintain(Maintenance::CompactStep { pages, reply }))
            .await?;
        answer.await.unwrap_or(Err(StoreError::Closed))
    }

    /// Makes a database created without it give pages back incrementally: `auto_vacuum = INCREMENTAL`
    /// and a `VACUUM`, then a truncating checkpoint. A one-time full pause of the writer (the whole
    /// database is rebuilt) that needs about twice the database's size free: once for the rebuilt copy
    /// (SQLite's temporary directory) and once for the write-ahead log it is written through; see
    /// `file_sizes`. Quick and harmless on a database that already is incremental.
    pub async fn convert_to_incremental(&self) -> Result<(), StoreError> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Maintain(Maintenance::ConvertToIncremental {
            reply,
        }))
        .await?;
        answer.await.unwrap_or(Err(StoreError::Closed))
    }

    /// Folds the write-ahead log into the database and truncates it (`PRAGMA
    /// wal_checkpoint(TRUNCATE)`), on the writer thread on its own; `false` if a reader kept it from
    /// completing within the busy timeout (nothing is lost: later checkpoints finish it). After a large
    /// purge or compaction, this is what gives the log's space back.
    pub async fn checkpoint(&self) -> Result<bool, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Maintain(Maintenance::Checkpoint { reply }))
            .await?;
        answer.await.unwrap_or(Err(StoreError::Closed))
    }

    /// `(freelist pages, page count, page size)` of the database, read on a reader connection: how much
    /// compaction could give back.
    pub async fn freelist(&self) -> Result<(u64, u64, u64), StoreError> {
        if self.pg()?.is_some() {
            // PostgreSQL manages its own space (autovacuum): nothing for compaction to give back.
            return Ok((0, 0, 8192));
        }
        self.read(crate::maintenance::freelist).await
    }

    /// `(database bytes, write-ahead log bytes)` on disk now (a missing log is 0), for deciding whether
    /// the volume has room for `convert_to_incremental`.
    pub async fn file_sizes(&self) -> Result<(u64, u64), StoreError> {
        let db = match &self.inner.backend {
            Backend::Sqlite { path, .. } => path.clone(),
            // No file of ours: the server's.
            Backend::Postgres(_) => return Ok((0, 0)),
        };
        blocking(move || {
            let len = |path: &Path, missing_ok: bool| match std::fs::metadata(path) {
                Ok(meta) => Ok(meta.len()),
                Err(e) if missing_ok && e.kind() == std::io::ErrorKind::NotFound => Ok(0),
                Err(source) => Err(StoreError::File {
                    op: "reading the size of",
                    path: path.to_owned(),
                    source,
                }),
            };
            let mut wal = db.clone().into_os_string();
            wal.push("-wal");
            Ok((len(&db, false)?, len(Path::new(&wal), true)?))
        })
        .await
    }

    /// Applies every write already queued, stops the writer thread and waits for it. Later calls return
    /// `Closed`; closing again is a no-op.
    pub async fn close(&self) -> Result<(), StoreError> {
        self.inner.closed.store(true, Ordering::Release);
        let (reply, done) = oneshot::channel();
        // A failed send means the writer is already gone: nothing left to flush.
        if self
            .inner
            .commands
            .send(Command::Close(reply))
            .await
            .is_ok()
        {
            self.inner.urgent.notify_waiters();
            let _ = done.await;
        }
        let handle = self
            .inner
            .writer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        let joined = match handle {
            Some(handle) => {
                blocking(move || {
                    handle
                        .join()
                        .map_err(|_| StoreError::Internal("the writer thread panicked".into()))
                })
                .await
            }
            None => Ok(()),
        };
        match &self.inner.backend {
            // Only once the writer's connection is gone: the last connection to close folds the
            // write-ahead log into the database file, and two closing at the same moment can each leave
            // that to the other.
            Backend::Sqlite { readers, .. } => readers.close(),
            Backend::Postgres(shared) => shared.pool.close(),
        }
        joined
    }
}

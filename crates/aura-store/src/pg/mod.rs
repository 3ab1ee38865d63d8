//! The PostgreSQL backend (fleet mode): connections, the shared state of one node's store (`PgShared`:
//! the read pool, the epochs this node holds, the fleet's wake-ups), and opening it all.
//!
//! Several nodes share one database. Each node's store runs a writer like SQLite's (group commit, on a
//! thread of its own, with the listener beside it), fed the same `Command`s, so `Store` stays
//! backend-neutral; reads and fleet calls go through a pool. Pool waits and connects are bounded by
//! `connect_timeout`, a whole read by three times that (at least 10 s), so a database that cannot be
//! reached is answered `Unavailable` rather than waited for.
//!
//! Why these crates: `tokio-postgres` is the async driver that delivers `LISTEN/NOTIFY` as a message
//! stream and pipelines statements; `deadpool-postgres` is the small, well-kept pool over it. `sqlx` was
//! not taken: its compile-time checking needs a live database at build time, and it pulls a much larger
//! dependency tree.
//!
//! Job ownership is fenced: a node writes a job only while the row names it (`node_id`) under the epoch
//! it got when it claimed the job; whoever takes the job over (a rescue, a release, another claim) bumps
//! the epoch, so a node that lost its lease cannot overwrite what the new holder writes.

/// The condition under which finished job `jobs` may be deleted (retention's candidates, and the purge
/// that checks them again): no unfinished job names it in its `after` or is linked to it by a retry,
/// and it links by no retry to an unfinished job (from its side: the links are set in both directions,
/// but a row written by hand may have only one). A literal (for `concat!`), so the purge's statement is
/// prepared once and cached by its text.
///
/// What unfinished jobs need is selected once per statement (a hashed subplan), as SQLite's
/// `needed_by_unfinished`: unfinished jobs are few. A correlated `NOT EXISTS` over the unfinished jobs
/// was planned as a scan of the whole table per finished job whenever the table's statistics lagged
/// behind it (a young database, a burst of jobs before autovacuum analyses it): listing 500 candidates
/// among 20,000 finished jobs then took over a minute and was answered `Unavailable`.
macro_rules! purgeable {
    () => {
        "jobs.id NOT IN (SELECT n.id FROM (\
         SELECT unnest(u.after_ids) AS id FROM jobs u WHERE u.state <> 'finished' \
         UNION ALL SELECT u.retry_of FROM jobs u WHERE u.state <> 'finished' \
         UNION ALL SELECT u.retried_as FROM jobs u WHERE u.state <> 'finished') n \
         WHERE n.id IS NOT NULL) \
         AND NOT EXISTS (SELECT 1 FROM jobs r WHERE r.id IN (jobs.retry_of, jobs.retried_as) \
         AND r.state <> 'finished')"
    };
}

mod fleet_ops;
mod listener;
mod reads;
mod schema;
mod writer;

pub(crate) use listener::Publisher;
pub(crate) use writer::PgWriter;

use crate::codec::{decode_raw, RawJob};
use crate::error::{pg_error, StoreError};
use crate::PgConfig;
use aura_model::{Job, JobId, NodeSpec};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime, Timeouts};
use std::collections::HashMap;
use std::future::Future;
use std::str::FromStr;
use std::sync::atomic::AtomicI64;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio_postgres::{Client, NoTls, Row};

/// Taken (for the transaction) by every transaction that appends job or engine events, before it
/// appends any: so events commit in the order of their sequence numbers, across all nodes, and a reader
/// following `seq > last` never skips one that commits later with a lower number.
pub(crate) const EVENTS_LOCK: i64 = 0x0041_5552_4145_5654; // "AURAEVT"

/// Held (for the session) while migrations run: several nodes may start at once.
const MIGRATION_LOCK: i64 = 0x0041_5552_414d_4947; // "AURAMIG"

/// The job columns every PostgreSQL job query selects, in the order `decode_job` reads them (the
/// SQLite list plus the node's name).
pub(crate) const PG_JOB_COLUMNS: &str = "jobs.id, jobs.state, jobs.submitted_at_ms, jobs.attempt, \
     jobs.failures, jobs.spec, jobs.state_data, jobs.memory_request, jobs.pressure_stops, \
     jobs.submitted_by, jobs.interruptions, jobs.retry_of, jobs.retried_as, jobs.node";

/// Unfinished states as an SQL list, from the model so a new state cannot be forgotten.
pub(crate) fn unfinished_states() -> String {
    aura_model::StateName::ALL
        .into_iter()
        .filter(|s| *s != aura_model::StateName::Finished)
        .map(|s| format!("'{}'", s.as_str()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Reads a row selected with `PG_JOB_COLUMNS` (from column `0`).
pub(crate) fn decode_job(row: &Row) -> Result<Job, StoreError> {
    let what = "reading a job";
    let get_i64 = |i: usize| row.try_get::<_, i64>(i);
    let raw = (|| -> Result<RawJob, tokio_postgres::Error> {
        Ok(RawJob {
            id: get_i64(0)?,
            state: row.try_get(1)?,
            submitted_at_ms: get_i64(2)?,
            attempt: get_i64(3)?,
            failures: get_i64(4)?,
            spec: row.try_get(5)?,
            state_data: row.try_get(6)?,
            memory_request: row.try_get(7)?,
            pressure_stops: get_i64(8)?,
            submitted_by: row.try_get(9)?,
            interruptions: get_i64(10)?,
            retry_of: row.try_get(11)?,
            retried_as: row.try_get(12)?,
            node: row.try_get(13)?,
        })
    })()
    .map_err(|e| pg_error(what, e))?;
    decode_raw(raw)
}

/// What one node's store shares between its handles, its writer and its listener.
pub(crate) struct PgShared {
    pub node: NodeSpec,
    pub pool: Pool,
    pub config: tokio_postgres::Config,
    pub connect_timeout: Duration,
    /// The longest a read may take before it is answered `Unavailable` (a partitioned server never
    /// answers; a closed connection fails at once).
    pub read_limit: Duration,
    /// The epoch this node holds for each job it claimed: its writes of the job are applied only under it.
    pub epochs: Mutex<HashMap<JobId, i64>>,
    /// This node's incarnation since `register` (0 before).
    pub incarnation: AtomicI64,
    pub work: Arc<tokio::sync::Notify>,
    pub fenced: tokio::sync::broadcast::Sender<JobId>,
    /// Other nodes' live progress (`NOTIFY aura_progress`), for this node's event streams.
    pub progress: tokio::sync::broadcast::Sender<Arc<aura_model::ProgressUpdate>>,
}

impl PgShared {
    pub fn node(&self) -> &NodeSpec {
        &self.node
    }

    pub fn epochs(&self) -> MutexGuard<'_, HashMap<JobId, i64>> {
        // A plain map of numbers: a panic elsewhere cannot leave it inconsistent.
        self.epochs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A pooled connection, or `Unavailable` once `connect_timeout` has passed.
    pub async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(|e| match e {
            deadpool_postgres::PoolError::Backend(e) => {
                pg_error("connecting to the job database", e)
            }
            deadpool_postgres::PoolError::Closed => StoreError::Closed,
            other => StoreError::Unavailable(format!("no job database connection: {other}")),
        })
    }

    /// Runs a read (or a fleet call) on a pooled connection, bounded by `read_limit`.
    pub async fn with_client<T, F, Fut>(&self, what: &'static str, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(deadpool_postgres::Object) -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let limit = self.read_limit;
        let run = async {
            let client = self.client().await?;
            f(client).await
        };
        match tokio::time::timeout(limit, run).await {
            Ok(result) => result,
            Err(_) => Err(StoreError::Unavailable(format!(
                "{what}: the job database did not answer within {limit:?}"
            ))),
        }
    }
}

/// The driver's configuration from `config`: the password from the secret (never from the URL, which
/// is refused if it holds one), the connect timeout, keepalives so a dead peer is noticed.
pub(crate) fn pg_config(config: &PgConfig) -> Result<tokio_postgres::Config, StoreError> {
    let mut pg = tokio_postgres::Config::from_str(&config.url)
        .map_err(|e| StoreError::Config(format!("the PostgreSQL URL does not parse: {e}")))?;
    if pg.get_password().is_some() {
        return Err(StoreError::Config(
            "the PostgreSQL URL holds a password: it would show in process lists and logs; put the \
             password in a secret instead"
                .into(),
        ));
    }
    if let Some(password) = &config.password {
        pg.password(password.expose());
    }
    if pg.get_connect_timeout().is_none() {
        pg.connect_timeout(config.connect_timeout);
    }
    if pg.get_application_name().is_none() {
        pg.application_name("aura");
    }
    pg.keepalives(true);
    pg.keepalives_idle(Duration::from_secs(10));
    Ok(pg)
}

/// Opens one connection and spawns its driver on the current runtime; `Unavailable` if the server
/// cannot be reached within `timeout`.
pub(crate) async fn connect(
    config: &tokio_postgres::Config,
    timeout: Duration,
) -> Result<Client, StoreError> {
    let (client, connection) = connect_raw(config, timeout).await?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "job database connection ended");
        }
    });
    Ok(client)
}

/// Why connecting failed, in the server's words when it answered. A refusal that retrying cannot
/// cure (wrong password or user, no such database: SQLSTATE classes 28 and 3D) is a configuration
/// error; anything else (refused, reset, the server starting) is `Unavailable`.
fn refused(e: &tokio_postgres::Error) -> StoreError {
    match e.as_db_error() {
        Some(db) => {
            let code = db.code().code();
            let why = format!("{} (SQLSTATE {code})", db.message());
            if code.starts_with("28") || code.starts_with("3D") {
                StoreError::Config(format!("the job database refused this node: {why}"))
            } else {
                StoreError::Unavailable(format!("cannot connect to the job database: {why}"))
            }
        }
        None => {
            let mut why = e.to_string();
            let mut cause = std::error::Error::source(e);
            while let Some(c) = cause {
                why = format!("{why}: {c}");
                cause = c.source();
            }
            StoreError::Unavailable(format!("cannot connect to the job database: {why}"))
        }
    }
}

/// Like `connect`, leaving the connection (and its notifications) to the caller.
pub(crate) async fn connect_raw(
    config: &tokio_postgres::Config,
    timeout: Duration,
) -> Result<
    (
        Client,
        tokio_postgres::Connection<tokio_postgres::Socket, tokio_postgres::tls::NoTlsStream>,
    ),
    StoreError,
> {
    match tokio::time::timeout(timeout, config.connect(NoTls)).await {
        Ok(Ok(pair)) => Ok(pair),
        Ok(Err(e)) => Err(refused(&e)),
        Err(_) => Err(StoreError::Unavailable(format!(
            "cannot connect to the job database within {timeout:?}"
        ))),
    }
}

/// Connects once (failing fast), migrates under the migration lock, and builds the read pool. Returns
/// the shared state and the newest event sequence numbers (where publishing starts).
pub(crate) async fn open(
    config: &PgConfig,
    node: NodeSpec,
) -> Result<(Arc<PgShared>, (i64, i64)), StoreError> {
    let pg = pg_config(config)?;
    let connect_timeout = config.connect_timeout;
    let client = connect(&pg, connect_timeout).await?;
    client
        .query_one("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(|e| pg_error("waiting for the migration lock", e))?;
    let migrated = schema::migrate(&client).await;
    let unlocked = client
        .query_one("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(|e| pg_error("releasing the migration lock", e));
    migrated?;
    unlocked?;
    let seqs = reads::latest_seqs(&client).await?;
    drop(client);
    let manager = Manager::from_config(
        pg.clone(),
        NoTls,
        ManagerConfig {
            // A closed connection is noticed by the driver; one that breaks later fails its statement,
            // which answers `Unavailable`.
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let pool = Pool::builder(manager)
        .max_size(config.pool_size.max(1))
        .timeouts(Timeouts {
            wait: Some(connect_timeout),
            create: Some(connect_timeout),
            recycle: Some(connect_timeout),
        })
        .runtime(Runtime::Tokio1)
        .build()
        .map_err(|e| StoreError::Config(format!("cannot build the connection pool: {e}")))?;
    let (fenced, _) = tokio::sync::broadcast::channel(1024);
    let (progress, _) = tokio::sync::broadcast::channel(1024);
    let shared = Arc::new(PgShared {
        node,
        pool,
        config: pg,
        connect_timeout,
        read_limit: connect_timeout
            .saturating_mul(3)
            .max(Duration::from_secs(10)),
        epochs: Mutex::new(HashMap::new()),
        incarnation: AtomicI64::new(0),
        work: Arc::new(tokio::sync::Notify::new()),
        fenced,
        progress,
    });
    Ok((shared, seqs))
}

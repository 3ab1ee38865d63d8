//! `StoreError`: everything that can go wrong in the store, with enough context to act on it.

use aura_model::JobId;
use std::path::PathBuf;
use std::sync::Arc;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database file could not be opened or set up (no permission, not a database).
    #[error("cannot open job database {}: {source}", path.display())]
    Open {
        /// The database file.
        path: PathBuf,
        /// SQLite's error.
        #[source]
        source: rusqlite::Error,
    },
    /// Upgrading the database's schema failed.
    #[error("job database migration to schema version {version} failed: {source}")]
    Migration {
        /// The schema version being migrated to (0 while reading the file's current version).
        version: u32,
        /// SQLite's error.
        #[source]
        source: rusqlite::Error,
    },
    /// A migration left rows that refer to rows that do not exist; it was rolled back.
    #[error("job database migration to schema version {version} was rolled back: it left {dangling} dangling references ({first})")]
    MigrationBrokeReferences {
        /// The schema version being migrated to.
        version: u32,
        /// How many rows refer to a missing row.
        dangling: usize,
        /// The first few of them.
        first: String,
    },
    /// The database was written by a newer Aura, with a schema this build does not know.
    #[error("job database has schema version {found}, newer than this build supports ({supported}); upgrade Aura")]
    TooNew {
        /// The file's schema version.
        found: u32,
        /// The newest schema version this build knows.
        supported: u32,
    },
    /// A query or statement failed.
    #[error("database error while {context}: {source}")]
    Db {
        /// What the store was doing, e.g. "updating a job".
        context: &'static str,
        /// SQLite's error.
        #[source]
        source: rusqlite::Error,
    },
    /// A SQLite error without further context.
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The batch this write belonged to could not be committed; the write did not happen. Shared because
    /// every write of the batch reports the same cause.
    #[error("committing a write batch failed: {source}")]
    Commit {
        /// SQLite's error.
        #[source]
        source: Arc<rusqlite::Error>,
    },
    /// The volume under the database refused the write (full, over quota, failing): the write did not
    /// happen. Writes nobody waits for are kept and committed once the volume takes them again; an
    /// insert is refused.
    #[error("the job database cannot commit: {source} (its volume is full or failing)")]
    Storage {
        /// SQLite's error.
        #[source]
        source: Arc<rusqlite::Error>,
    },
    /// A value to be stored could not be serialised to JSON.
    #[error("cannot encode {what} as JSON: {source}")]
    Encode {
        /// What was being encoded, e.g. "job spec".
        what: &'static str,
        /// The serialiser's error.
        #[source]
        source: serde_json::Error,
    },
    /// A job's row (or one of its events) holds values this build cannot decode.
    #[error("job {id} is stored in a form this build cannot read: {detail}")]
    Corrupt {
        /// The job's id.
        id: JobId,
        /// Which value is unreadable, and why.
        detail: String,
    },
    /// An engine event's row holds a detail this build cannot decode.
    #[error("engine event {seq} is stored in a form this build cannot read: {detail}")]
    CorruptEngineEvent {
        /// The event's sequence number.
        seq: i64,
        /// Why it is unreadable.
        detail: String,
    },
    /// An update names a job that is not in the database.
    #[error("job {0} not found")]
    NotFound(JobId),
    /// A file of the database (the database itself, its write-ahead log) could not be looked at.
    #[error("{op} {}: {source}", path.display())]
    File {
        /// What the store was doing, e.g. "reading the database file's size".
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The store has been closed (or its writer has stopped); nothing more is read or written.
    #[error("the job store is closed")]
    Closed,
    /// The writer thread or its runtime could not be started.
    #[error("cannot start the job store writer thread: {0}")]
    Spawn(#[source] std::io::Error),
    /// A bug: a store thread panicked.
    #[error("internal job store failure: {0}")]
    Internal(String),
    /// A PostgreSQL statement failed (fleet mode); connection-class failures are `Unavailable` instead.
    #[error("database error while {context}: {source}")]
    Pg {
        /// What the store was doing, e.g. "claiming jobs".
        context: &'static str,
        /// The driver's error (the server's message and SQLSTATE, when it sent one).
        #[source]
        source: tokio_postgres::Error,
    },
    /// The fleet's database cannot be reached now: connecting failed or timed out, no pooled connection
    /// freed up in time, or the connection was lost. Worth retrying later; the HTTP layer answers 503.
    #[error("the job database is unavailable: {0}")]
    Unavailable(String),
    /// A write of a job this node no longer holds (another node claimed or rescued it): it was not
    /// applied, and nothing of it was written.
    #[error("job {id} is held by another node now: this node's write was refused (fenced)")]
    Fenced {
        /// The job.
        id: JobId,
    },
    /// The store's configuration is unusable (e.g. a password inside the database URL).
    #[error("job database configuration: {0}")]
    Config(String),
}

impl StoreError {
    /// Whether the data volume, not the write, is at fault: it may succeed later.
    pub fn is_storage(&self) -> bool {
        matches!(self, StoreError::Storage { .. })
    }

    /// Whether the database could not be reached (PostgreSQL): a 503, not a bug; retrying later may work.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }

    /// Whether a write was refused because another node holds the job now (PostgreSQL fencing).
    pub fn is_fenced(&self) -> bool {
        matches!(self, StoreError::Fenced { .. })
    }

    /// A storage fault as such (`Storage`), else the error unchanged.
    pub(crate) fn classify(self) -> StoreError {
        let source = match &self {
            StoreError::Db { source, .. } | StoreError::Sqlite(source) => source,
            StoreError::Commit { source } => &**source,
            _ => return self,
        };
        let storage = matches!(
            source.sqlite_error_code(),
            Some(
                rusqlite::ErrorCode::DiskFull
                    | rusqlite::ErrorCode::SystemIoFailure
                    | rusqlite::ErrorCode::CannotOpen
                    | rusqlite::ErrorCode::ReadOnly
            )
        );
        if !storage {
            return self;
        }
        match self {
            StoreError::Db { source, .. } | StoreError::Sqlite(source) => StoreError::Storage {
                source: Arc::new(source),
            },
            StoreError::Commit { source } => StoreError::Storage { source },
            other => other,
        }
    }

    /// Another `Storage` error with the same cause, for every write a failed commit held.
    pub(crate) fn share(&self) -> Option<StoreError> {
        match self {
            StoreError::Storage { source } => Some(StoreError::Storage {
                source: source.clone(),
            }),
            StoreError::Commit { source } => Some(StoreError::Commit {
                source: source.clone(),
            }),
            _ => None,
        }
    }
}

/// Attaches what the store was doing to a bare SQLite error.
pub(crate) trait Context<T> {
    fn context(self, context: &'static str) -> Result<T, StoreError>;
}

impl<T> Context<T> for Result<T, rusqlite::Error> {
    fn context(self, context: &'static str) -> Result<T, StoreError> {
        self.map_err(|source| StoreError::Db { context, source })
    }
}

impl<T> Context<T> for Result<T, tokio_postgres::Error> {
    fn context(self, context: &'static str) -> Result<T, StoreError> {
        self.map_err(|source| pg_error(context, source))
    }
}

/// A PostgreSQL error with what the store was doing; one of the connection class (the socket failed or
/// closed, the server shuts down or refuses connections now) becomes `Unavailable`, so callers answer
/// quickly with "try later" instead of treating it as a bug.
pub(crate) fn pg_error(context: &'static str, source: tokio_postgres::Error) -> StoreError {
    if is_connection_error(&source) {
        return StoreError::Unavailable(format!("{context}: {source}"));
    }
    StoreError::Pg { context, source }
}

/// Whether a PostgreSQL error says the connection, not the statement, failed.
pub(crate) fn is_connection_error(error: &tokio_postgres::Error) -> bool {
    if error.is_closed() {
        return true;
    }
    if let Some(db) = error.as_db_error() {
        let code = db.code().code();
        // Class 08: connection exception; 57P01..57P03: the server shuts down or is starting.
        return code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03");
    }
    // No server message: the socket failed (I/O error, timeout) or the connection task ended.
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(error);
    while let Some(e) = cause {
        if e.is::<std::io::Error>() {
            return true;
        }
        cause = e.source();
    }
    false
}

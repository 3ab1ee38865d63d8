//! `StoreError`: everything that can go wrong in the store, with enough context to act on it.

use aura_model::JobId;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open job database {}: {source}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("job database migration to schema version {version} failed: {source}")]
    Migration {
        version: u32,
        #[source]
        source: rusqlite::Error,
    },
    #[error("job database has schema version {found}, newer than this build supports ({supported}); upgrade Aura")]
    TooNew { found: u32, supported: u32 },
    #[error("database error while {context}: {source}")]
    Db {
        context: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The batch this write belonged to could not be committed; the write did not happen. Shared because
    /// every write of the batch reports the same cause.
    #[error("committing a write batch failed: {source}")]
    Commit {
        #[source]
        source: Arc<rusqlite::Error>,
    },
    #[error("cannot encode {what} as JSON: {source}")]
    Encode {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("job {id} is stored in a form this build cannot read: {detail}")]
    Corrupt { id: JobId, detail: String },
    #[error("engine event {seq} is stored in a form this build cannot read: {detail}")]
    CorruptEngineEvent { seq: i64, detail: String },
    #[error("job {0} not found")]
    NotFound(JobId),
    #[error("the job store is closed")]
    Closed,
    #[error("cannot start the job store writer thread: {0}")]
    Spawn(#[source] std::io::Error),
    /// A bug: a store thread panicked.
    #[error("internal job store failure: {0}")]
    Internal(String),
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

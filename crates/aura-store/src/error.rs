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
    /// The volume under the database refused the write (full, over quota, failing): the write did not
    /// happen. Writes nobody waits for are kept and committed once the volume takes them again; an
    /// insert is refused.
    #[error("the job database cannot commit: {source} (its volume is full or failing)")]
    Storage {
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

impl StoreError {
    /// Whether the data volume, not the write, is at fault: it may succeed later.
    pub fn is_storage(&self) -> bool {
        matches!(self, StoreError::Storage { .. })
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

//! The engine's error type: what can go wrong when submitting, querying or controlling jobs.

use aura_model::{JobId, SpecError};
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("invalid job: {0}")]
    InvalidSpec(#[from] SpecError),
    #[error("cannot run {program:?}: {reason}")]
    Program { program: String, reason: String },
    #[error("working directory {path:?} is not usable: {reason}")]
    WorkingDirectory { path: PathBuf, reason: String },
    #[error("program {program:?} ({resolved}) is not one jobs may run here (jobs.programs)")]
    ProgramNotAllowed { program: String, resolved: PathBuf },
    #[error("working directory {path:?} is not allowed: {reason}")]
    WorkingDirectoryNotAllowed { path: PathBuf, reason: String },
    #[error("unknown secret {name:?} for {var}: the daemon has no secret of that name (see jobs.secrets_file)")]
    UnknownSecret { var: String, name: String },
    #[error("{submitter} has {queued} jobs waiting, at most {cap}; retry later")]
    SubmitterQueueFull {
        submitter: String,
        queued: usize,
        cap: usize,
    },
    #[error("the job can never run here: {0}")]
    ExceedsCapacity(aura_admission::Shortfall),
    #[error("the queue is full ({queued} jobs waiting, at most {cap}); retry later")]
    QueueFull { queued: usize, cap: usize },
    #[error("lease not available now: {0}")]
    LeaseUnavailable(aura_admission::Shortfall),
    #[error("lease {0} not found (expired, released, or held before a daemon restart)")]
    LeaseNotFound(u64),
    #[error("job {0} not found")]
    NotFound(JobId),
    #[error("job {id} is already finished ({outcome})")]
    AlreadyFinished { id: JobId, outcome: &'static str },
    #[error("the engine is shutting down")]
    ShuttingDown,
    #[error("invalid engine configuration: {0}")]
    Config(String),
    #[error("store: {0}")]
    Store(#[from] aura_store::StoreError),
    #[error("supervisor: {0}")]
    Supervisor(#[from] aura_supervisor::SupervisorError),
    #[error("logs: {0}")]
    Logs(#[from] aura_logs::LogError),
    #[error("{path:?}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Something that should not fail did: `context` says what was being done, `source` keeps the cause
    /// (logged whole; an API answer shows neither).
    #[error("{context}")]
    Internal {
        context: &'static str,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl EngineError {
    /// An internal error while doing `context`, keeping `source` as its cause.
    pub fn internal(
        context: &'static str,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> EngineError {
        EngineError::Internal {
            context,
            source: source.into(),
        }
    }
}

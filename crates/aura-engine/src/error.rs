//! The engine's error type: what can go wrong when submitting, querying or controlling jobs.

use aura_model::{JobAction, JobId, SpecError};
use std::path::PathBuf;

/// Why an engine operation (start, submit, query, cancel, lease) failed.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The job spec is invalid, or one of its environment entries would be too long once its secret
    /// is filled in.
    #[error("invalid job: {0}")]
    InvalidSpec(#[from] SpecError),
    /// The spec's program cannot be found or is not an executable file.
    #[error("cannot run {program:?}: {reason}")]
    Program {
        /// The program as the spec names it.
        program: String,
        /// Why it cannot run, for the user.
        reason: String,
    },
    /// The spec's working directory does not exist, cannot be resolved, or is not a directory.
    #[error("working directory {path:?} is not usable: {reason}")]
    WorkingDirectory {
        /// The directory as the spec names it.
        path: PathBuf,
        /// The I/O error, as text.
        reason: String,
    },
    /// The spec's program resolves to a file outside `jobs.programs`, the programs jobs may run.
    #[error("program {program:?} ({resolved}) is not one jobs may run here (jobs.programs)")]
    ProgramNotAllowed {
        /// The program as the spec names it.
        program: String,
        /// Its canonical path, the one checked against the allowlist.
        resolved: PathBuf,
    },
    /// The spec's working directory is relative, contains `..`, or lies outside `jobs.cwd_roots`.
    #[error("working directory {path:?} is not allowed: {reason}")]
    WorkingDirectoryNotAllowed {
        /// The directory as the spec names it.
        path: PathBuf,
        /// Why it is refused, for the user.
        reason: String,
    },
    /// The spec references a secret the daemon does not have.
    #[error("unknown secret {name:?} for {var}: the daemon has no secret of that name (see jobs.secrets_file)")]
    UnknownSecret {
        /// The environment variable the secret was to fill.
        var: String,
        /// The secret's name.
        name: String,
    },
    /// An entry of a batch was refused (counting from 1); nothing of the batch was queued.
    #[error("job {entry} of the batch: {source}")]
    BatchEntry {
        /// The entry, counting from 1.
        entry: usize,
        /// Why it was refused.
        source: Box<EngineError>,
    },
    /// The spec's `after` names a job that does not exist.
    #[error("after: job {0} does not exist")]
    UnknownDependency(JobId),
    /// The submitter already has as many jobs waiting as its own cap allows.
    #[error("{submitter} has {queued} jobs waiting, at most {cap}; retry later")]
    SubmitterQueueFull {
        /// The submitter's name (its API token's name).
        submitter: String,
        /// Its jobs waiting, submits under way included.
        queued: usize,
        /// Its cap on waiting jobs.
        cap: usize,
    },
    /// The job or lease could never be admitted: it asks for more than this host has in all, or names
    /// a limit that is unknown or admits nothing; holds what is short.
    #[error("the job can never run here: {0}")]
    ExceedsCapacity(aura_admission::Shortfall),
    /// As many jobs are waiting as the global queue cap allows.
    #[error("the queue is full ({queued} jobs waiting, at most {cap}); retry later")]
    QueueFull {
        /// Jobs waiting, submits under way included.
        queued: usize,
        /// The queue cap (`queue_cap`).
        cap: usize,
    },
    /// A lease cannot be granted now: what it asks for is in use; holds what is short.
    #[error("lease not available now: {0}")]
    LeaseUnavailable(aura_admission::Shortfall),
    /// A renew or release names a lease id that is not held (expired, released, or from before a
    /// restart).
    #[error("lease {0} not found (expired, released, or held before a daemon restart)")]
    LeaseNotFound(u64),
    /// No job has this id.
    #[error("job {0} not found")]
    NotFound(JobId),
    /// A cancel of a job that has already ended.
    #[error("job {id} is already finished ({outcome})")]
    AlreadyFinished {
        /// The job's id.
        id: JobId,
        /// How it ended: its outcome's name.
        outcome: &'static str,
    },
    /// An operator's action that does not apply to the job in its state (a pause of a queued job, a
    /// new priority for a running one…). Nothing changed.
    #[error("job {id} is {state}: cannot {} it ({})", action.as_str(), applies_to(*action))]
    InvalidState {
        /// The job's id.
        id: JobId,
        /// Its state's name.
        state: &'static str,
        /// What was asked.
        action: JobAction,
    },
    /// An upload is larger than the most accepted: `uploads.max_size`, or the client's own cap.
    #[error("the upload is larger than {max} bytes, the most accepted here")]
    UploadTooLarge {
        /// The cap that applied, in bytes.
        max: u64,
    },
    /// The data volume has no room for an upload and the space `uploads.min_free` keeps free besides.
    #[error("no room for the upload on the data volume: {available} bytes available{}", needed.map(|n| format!(", {n} needed (the upload and uploads.min_free)")).unwrap_or_default())]
    InsufficientStorage {
        /// Bytes the volume had available.
        available: u64,
        /// Bytes the upload needed with the space `uploads.min_free` keeps free, where known (not
        /// where the volume refused a write).
        needed: Option<u64>,
    },
    /// A spec's `inputs` names an upload the daemon does not have.
    #[error("input {name:?}: no upload {id} here (send the file with POST /api/uploads first)")]
    UnknownUpload {
        /// The input's file name in the job's directory.
        name: String,
        /// The upload id it names.
        id: aura_model::files::UploadId,
    },
    /// The job exists but has no files to serve; `reason` says why (not started, its own working
    /// directory, removed and not archived).
    #[error("job {id} has no files: {reason}")]
    NoFiles {
        /// The job.
        id: JobId,
        /// Why, for the user.
        reason: String,
    },
    /// No such file among the job's files.
    #[error("job {id} has no file {path:?}")]
    FileNotFound {
        /// The job.
        id: JobId,
        /// The path as asked for.
        path: String,
    },
    /// A path among a job's files that is not served: it leaves the job's directory, passes through a
    /// symlink, or names something other than a regular file.
    #[error("refused: {reason} ({path:?})")]
    PathRefused {
        /// The path as asked for (cut to 200 characters).
        path: String,
        /// Why, for the user.
        reason: &'static str,
    },
    /// The engine is shutting down (or gone) and takes no new work.
    #[error("the engine is shutting down")]
    ShuttingDown,
    /// The janitor already has runs waiting behind the one it is on.
    #[error("the janitor is busy: {0} runs are already waiting; try again when they are done")]
    JanitorBusy(usize),
    /// The engine configuration is invalid (such as `max_concurrent` 0); holds what is wrong.
    #[error("invalid engine configuration: {0}")]
    Config(String),
    /// The job database failed.
    #[error("store: {0}")]
    Store(#[from] aura_store::StoreError),
    /// The process supervisor could not start.
    #[error("supervisor: {0}")]
    Supervisor(#[from] aura_supervisor::SupervisorError),
    /// Captured output could not be read or written.
    #[error("logs: {0}")]
    Logs(#[from] aura_logs::LogError),
    /// A data-dir directory (`work/`, `logs/`) could not be created or given its permissions, or a file
    /// of `uploads/` or of a job's directory could not be read or written.
    #[error("{path:?}: {source}")]
    Io {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Something that should not fail did: `context` says what was being done, `source` keeps the cause
    /// (logged whole; an API answer shows neither).
    #[error("{context}")]
    Internal {
        /// What was being done.
        context: &'static str,
        /// The underlying error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Which jobs an action applies to, for its error message.
fn applies_to(action: JobAction) -> &'static str {
    match action {
        JobAction::Pause => "only a running job can be paused",
        JobAction::Resume => "only a paused job can be resumed",
        JobAction::Hold => "only a queued job can be held",
        JobAction::Release => "only a held job can be released",
        JobAction::Retry => "only a finished job can be retried",
        JobAction::Priority => "only a job that has not started can be given a new priority",
        JobAction::Kill | JobAction::Cancel => "it has already finished",
    }
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

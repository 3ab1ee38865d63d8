//! The janitor's vocabulary: its tasks, what one run of a task did, and each task's status, as the engine
//! reports them and the server, client and dashboard show them.

use crate::Timestamp;
use serde::{Deserialize, Serialize};

/// One of the janitor's tasks, each acting below one root of the data dir (or on the database).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum TaskName {
    /// `tmp/`: files older than the age (default 24 h).
    Tmp,
    /// `uploads/`: uploads no unfinished job names, older than the age (default 48 h).
    Uploads,
    /// `cache/`: entries older than the age (default 24 h).
    Cache,
    /// `work/<id>`: of succeeded jobs archived to `archive/work/` (or deleted) after 7 days; of failed,
    /// cancelled and never-started jobs deleted after 3 days.
    Work,
    /// `logs/<id>`: closed logs compressed after 7 days (still readable as before).
    Logs,
    /// `archive/work/`: archives deleted after 30 days.
    Archive,
    /// Job rows and their events finished more than 30 days ago exported to `archive/history/` (JSON
    /// lines, compressed) and deleted; engine events older than 90 days deleted.
    History,
    /// The database compacted (incremental vacuum, in bounded steps).
    Compact,
}

impl TaskName {
    /// Every task, in the order a full run takes them (space-freeing file tasks first, the database last).
    pub const ALL: [TaskName; 8] = [
        TaskName::Tmp,
        TaskName::Uploads,
        TaskName::Cache,
        TaskName::Work,
        TaskName::Logs,
        TaskName::Archive,
        TaskName::History,
        TaskName::Compact,
    ];

    /// Its name as the API, the CLI (`--task`) and the config use it.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskName::Tmp => "tmp",
            TaskName::Uploads => "uploads",
            TaskName::Cache => "cache",
            TaskName::Work => "work",
            TaskName::Logs => "logs",
            TaskName::Archive => "archive",
            TaskName::History => "history",
            TaskName::Compact => "compact",
        }
    }

    /// Whether it frees disk space (run early when the data volume runs low).
    pub fn frees_space(self) -> bool {
        !matches!(self, TaskName::History)
    }
}

impl std::fmt::Display for TaskName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for TaskName {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TaskName::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<_> = TaskName::ALL.iter().map(|t| t.as_str()).collect();
                format!("unknown janitor task {s:?} (one of: {})", names.join(", "))
            })
    }
}

/// What one planned or taken step of a task was.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ActionKind {
    /// Removed (a file, a symlink itself, a directory tree, job rows).
    Remove,
    /// Packed into a compressed archive, then removed.
    Archive,
    /// Compressed in place (`.zst`), still readable.
    Compress,
    /// Exported (job rows and events to JSON lines), then removed.
    Export,
    /// The database compacted.
    Compact,
}

/// One step of a task: what, where, how many bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Action {
    /// Relative to the data dir (`tmp/old.bin`), or `jobs 1..=500` for rows.
    pub path: String,
    /// What was (or, in a dry run, would be) done.
    pub kind: ActionKind,
    /// Bytes it frees (or would).
    pub bytes: u64,
}

/// What one run of one task did.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TaskReport {
    /// When it started.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Timestamp>))]
    pub started: Option<Timestamp>,
    /// How long it took, seconds.
    pub seconds: f64,
    /// A dry run changes nothing and lists what a real run would do.
    pub dry_run: bool,
    /// Files (and symlinks) removed.
    pub files_removed: u64,
    /// Directories removed.
    pub dirs_removed: u64,
    /// Job directories archived, logs compressed, job rows exported.
    pub archived: u64,
    /// Bytes freed on the data volume (for the database: its file shrank by this much).
    pub bytes_freed: u64,
    /// Entries skipped because a lock was held on them, a job was live, or a mount point.
    pub skipped: u64,
    /// Errors met (the run goes on past each).
    pub errors: u64,
    /// The first few error messages.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub error_messages: Vec<String>,
    /// What was done or, in a dry run, would be (at most `MAX_ACTIONS`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub actions: Vec<Action>,
}

/// The most actions a report lists (counting goes on beyond).
pub const MAX_ACTIONS: usize = 1_000;

/// The most error messages a report keeps.
pub const MAX_ERROR_MESSAGES: usize = 10;

/// One task's standing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TaskStatus {
    /// The task.
    pub task: TaskName,
    /// Off tasks run only when asked by name.
    pub enabled: bool,
    /// How often it runs, seconds.
    pub every_seconds: u64,
    /// Its age threshold, seconds (entries younger are kept); absent for `compact`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub older_than_seconds: Option<u64>,
    /// When it last ran (not counting dry runs).
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Timestamp>))]
    pub last_run: Option<Timestamp>,
    /// When it runs next (absent when off).
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Timestamp>))]
    pub next_run: Option<Timestamp>,
    /// Its last real run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<TaskReport>,
    /// Since the daemon started: runs, files removed, bytes freed, errors.
    pub totals: TaskTotals,
}

/// Counters of a task since the daemon started (also on `/metrics`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TaskTotals {
    /// Real runs.
    pub runs: u64,
    /// Files removed.
    pub files_removed: u64,
    /// Job directories archived, logs compressed, job rows exported.
    pub archived: u64,
    /// Bytes freed.
    pub bytes_freed: u64,
    /// Errors.
    pub errors: u64,
}

/// What `GET /api/janitor` answers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JanitorStatus {
    /// Every task, in `TaskName::ALL` order.
    pub tasks: Vec<TaskStatus>,
    /// The task running now, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running: Option<TaskName>,
    /// The data volume's free share under which space-freeing tasks run early.
    pub low_free_disk: f64,
}

/// What `POST /api/janitor/run` takes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RunRequest {
    /// List what would happen, change nothing.
    #[serde(default)]
    pub dry_run: bool,
    /// The tasks to run (named ones run even when off); empty: every enabled task.
    #[serde(default)]
    pub tasks: Vec<TaskName>,
}

/// One task's report in a run's answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TaskRun {
    /// The task.
    pub task: TaskName,
    /// What it did.
    #[serde(flatten)]
    pub report: TaskReport,
}

/// What `POST /api/janitor/run` answers: one report per task run, in order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RunAnswer {
    /// Per task.
    pub reports: Vec<TaskRun>,
}

//! What the API shows of jobs — a record with its live resource use and why it waits, a page of them —
//! and of the engine (`EngineStatus`). One definition for the server that writes them and the client that
//! reads them, so the two cannot drift.

use crate::{Backend, Job, JobId, LiveUsage};
use serde::{Deserialize, Serialize};

/// A job record plus, while it runs, its live resource use.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JobView {
    #[serde(flatten)]
    pub job: Job,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live: Option<LiveUsage>,
    /// Why a queued job has not started yet, e.g. "waiting for memory: needs 2.0 GiB, 1.2 GiB free after
    /// reservations".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<String>,
}

/// What replaces a value the reader may not see.
pub const REDACTED: &str = "[redacted]";

impl JobView {
    /// The view for a reader who may not see environment values: every value the spec's `env` holds is
    /// replaced by [`REDACTED`] (names stay, so the reader still sees what was set). Secrets need no
    /// redaction: a spec only names them.
    pub fn redact(&mut self) {
        for value in self.job.spec.env.values_mut() {
            *value = REDACTED.to_owned();
        }
    }
}

/// One page of a job listing.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JobPage {
    pub jobs: Vec<JobView>,
    /// Pass as `after` to get the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_after: Option<JobId>,
}

/// `GET /api/status`: the engine's backend and its running and queued counts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineStatus {
    pub backend: Backend,
    /// The backend's start-up line (cgroup paths, capabilities).
    pub backend_detail: String,
    /// Whether submissions are accepted (false while shutting down).
    pub accepting: bool,
    pub max_concurrent: usize,
    pub running: usize,
    pub queued: usize,
    /// Why admission is paused (a live guard: memory, pressure, CPU, disk), if it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<String>,
    /// The job database cannot commit (its volume is full or failing): submissions are refused.
    #[serde(default)]
    pub store_degraded: bool,
    /// State changes kept in memory meanwhile.
    #[serde(default)]
    pub kept_writes: u64,
    /// The newest jobs quarantined by crash-loop protection, newest first.
    #[serde(default)]
    pub quarantined: Vec<crate::JobId>,
}

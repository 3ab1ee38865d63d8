//! The actor's protocol: every `Command` it accepts — from handles, monitors and the guard thread — and
//! the replies that are not plain values.

use crate::lease::LeaseInfo;
use crate::EngineError;
use aura_model::{
    Accounting, EngineEvent, ExitStatus, HostReading, Job, JobAction, JobId, LeaseSpec, Run,
    StopSignal,
};
use std::time::Duration;
use tokio::sync::oneshot;

/// The actor's answer to an operator's action on a job.
pub(crate) type ActReply = oneshot::Sender<Result<Acted, EngineError>>;

/// An action done: the job as it is now, and its write, which the caller awaits (not the actor), so
/// that what the operator reads next shows the change.
pub(crate) struct Acted {
    pub job: Job,
    pub committed: aura_store::Pending,
}

/// The operators' actions on one job the actor answers through `Command::Act` (cancel and kill go
/// through `Cancel`; priority and retry have their own ways).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Operation {
    Pause,
    Resume,
    Hold,
    Release,
}

impl Operation {
    /// Its name for the logs and refusals.
    pub fn action(self) -> JobAction {
        match self {
            Operation::Pause => JobAction::Pause,
            Operation::Resume => JobAction::Resume,
            Operation::Hold => JobAction::Hold,
            Operation::Release => JobAction::Release,
        }
    }
}

/// Commands the actor accepts. Closed set: this is the whole protocol.
pub(crate) enum Command {
    Enqueue(Box<Job>),
    /// Fleet mode: jobs this node claimed from the fleet's queue; answered once they are in the local
    /// queue (so the claimer counts them before it claims more).
    Claimed {
        jobs: Vec<Job>,
        reply: oneshot::Sender<()>,
    },
    /// Fleet mode: the jobs waiting here (queued, and standbys not started) go back to the fleet's queue:
    /// none of this node's slots freed for a while, so others may start them sooner.
    GiveBack,
    /// Fleet mode: another node holds this job now (a write of it was fenced): its local tree is killed
    /// and it is forgotten here, without a write.
    Fenced(JobId),
    /// Fleet mode: this node lost its leases (declared dead, or cut off from the store past the
    /// timeout): every local tree is killed and every local job forgotten; answered once the trees are
    /// gone.
    LeasesLost {
        reason: String,
        reply: oneshot::Sender<()>,
    },
    /// Fleet mode: this node's unfinished jobs after it registered again, taken back as recovery takes
    /// a dead daemon's.
    Adopt(Vec<Job>),
    Cancel {
        id: JobId,
        /// SIGKILL to the tree at once (`aura kill`) instead of its stop sequence.
        kill: bool,
        /// The API token that asked, for the logs.
        by: Option<String>,
        reply: oneshot::Sender<CancelReply>,
    },
    /// An operator's pause, resume, hold or release of one job (see `actor::control`).
    Act {
        id: JobId,
        op: Operation,
        by: Option<String>,
        reply: ActReply,
    },
    /// An operator's new priority for a job that has not started.
    SetPriority {
        id: JobId,
        priority: i32,
        by: Option<String>,
        reply: ActReply,
    },
    /// From a monitor: the tree is frozen (`paused`) or thawed, or could not be.
    Frozen {
        id: JobId,
        paused: bool,
        /// How long it took, or why it failed.
        result: Result<Duration, String>,
        by: Option<String>,
        reply: ActReply,
    },
    /// An operator's drain (`true`) or undrain of the node; the reply says whether it changed.
    Drain {
        on: bool,
        by: Option<String>,
        reply: oneshot::Sender<bool>,
    },
    Started {
        id: JobId,
        run: Run,
    },
    SpawnFailed {
        id: JobId,
        error: String,
        /// The data volume refused what the start needed.
        storage: bool,
    },
    TimedOut {
        id: JobId,
    },
    /// The job's progress has not advanced for its stall window (or it ran too slow that long); the
    /// monitor stops it.
    Stalled {
        id: JobId,
        reason: String,
    },
    /// The sampler found the tree over its memory limit or hit by the OOM killer; the monitor kills it.
    MemoryViolation {
        id: JobId,
        violation: aura_supervisor::MemoryViolation,
    },
    Exited {
        id: JobId,
        exit: ExitStatus,
        signals_sent: Vec<StopSignal>,
        accounting: Accounting,
    },
    AcquireLease {
        spec: LeaseSpec,
        reply: oneshot::Sender<Result<LeaseInfo, EngineError>>,
    },
    RenewLease {
        id: u64,
        reply: oneshot::Sender<Result<LeaseInfo, EngineError>>,
    },
    ReleaseLease {
        id: u64,
        reply: oneshot::Sender<Result<(), EngineError>>,
    },
    ListLeases {
        reply: oneshot::Sender<Vec<LeaseInfo>>,
    },
    /// From the guard thread: why admission is paused now, or `None` when it may admit again.
    Guard {
        paused: Option<String>,
        reading: HostReading,
    },
    /// From the guard thread: memory has been critical long enough; stop one job (the reply names it,
    /// `None` when nothing could be stopped).
    PressureVictim {
        reason: String,
        reading: HostReading,
        reply: oneshot::Sender<Option<JobId>>,
        /// The emergency stage: kill the victim's tree at once instead of its stop sequence.
        kill: bool,
    },
    /// An entry for the engine's event log.
    EngineEvent(EngineEvent),
    /// Memory for new reservations grew (running jobs use less, the host has more free): queued jobs
    /// may fit now.
    MemoryFreed,
    Shutdown {
        reply: oneshot::Sender<()>,
    },
}

pub(crate) enum CancelReply {
    Done(Box<Job>),
    /// The actor does not hold the job: it is finished or does not exist.
    NotLive,
}

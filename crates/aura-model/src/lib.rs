//! The pure job model of Aura: job specs, validation, states and the one transition function.
//!
//! This crate does no I/O and knows nothing of processes, SQL or HTTP. Every other crate depends on it;
//! it depends on none of them.

pub mod batch;
pub mod events;
pub mod files;
pub mod fleet;
pub mod host;
pub mod janitor;
pub mod job;
pub mod media;
#[cfg(feature = "openapi")]
pub mod openapi;
pub mod secret;
pub mod size;
pub mod state;
pub mod time;
pub mod view;

pub use events::{
    CommittedEvent, EngineEvent, EngineEventRecord, EventLog, JobAction, JobEvent, JobEventRecord,
    LoggedEvent, NewEvent, ProgressEvent, ProgressUpdate, WarningKind, EVENT_SCHEMA,
};
pub use fleet::{required_tags, NodeCapacity, NodeSpec, NodeState, NodeView, REQUIRES_LABEL};
pub use job::*;
pub use media::{Progress, ProgressMode, ProgressSource, ProgressTracker, RawReport};
pub use secret::Secret;
pub use size::ByteSize;
pub use state::*;
pub use time::Timestamp;
pub use view::{
    Alive, Capacity, Cleanup, Diagnostics, EngineStatus, GpuDevice, Health, HostReading, JobPage,
    JobView, LimitUse, Liveness, Readiness, Utilization, Warning,
};

/// For `skip_serializing_if`: a counter that is zero says nothing worth a field.
pub(crate) fn is_zero(n: &u64) -> bool {
    *n == 0
}

pub(crate) fn is_zero_u32(n: &u32) -> bool {
    *n == 0
}

pub(crate) fn is_zero_f64(n: &f64) -> bool {
    *n == 0.0
}

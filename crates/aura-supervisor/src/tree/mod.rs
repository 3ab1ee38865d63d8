//! One job's process tree: how to find its members, signal and kill them (`members`: `TreeRef`,
//! blocking), its sampled statistics and its ending (`stats`: `TreeStats`, shared with the watcher thread,
//! which samples it, and concluded by the thread that reaps the main process — its launcher thread, or the
//! watcher for a tree without a pidfd), and the public RAII `RunningTree` that waits, stops and finishes it
//! (`running`), pauses and resumes it (`pause`).

mod members;
mod pause;
mod progress;
mod running;
mod stats;

pub(crate) use members::TreeRef;
pub(crate) use progress::JobProgress;
pub use progress::{ProgressSetup, PROGRESS_FD};
pub use running::{RunningTree, UsageProbe};
pub(crate) use stats::{kill_main, try_wait4, Ending, Reaped, Settling, TreeStats};
pub use stats::{LimitEnforcer, MemoryViolation};

//! The admission core: what the machine can afford, what each running job holds, and which queued jobs may
//! start now. Pure bookkeeping with no I/O and no async: the engine feeds it capacity, requests and the
//! clock; it answers with RAII reservations that give their resources back when dropped.

mod ledger;
mod resources;
mod scheduler;

pub mod estimate;

pub use ledger::{Admission, LimitConfig, LiveMemory, Reservation, Shortfall, Usage};
pub use resources::{Capacity, GpuDevice, Request, Resource};
pub use scheduler::{Queued, Scheduler};

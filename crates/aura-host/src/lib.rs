//! `aura-host`: samples the host (CPU, memory, PSI, disks, network, data volume, NVML GPUs) on a
//! background thread into a fixed-size history, and reads the daemon's own process on demand.
//!
//! It owns the /proc parsers and the counter deltas; it does not know about jobs, the engine or
//! HTTP — the server turns these snapshots into JSON and Prometheus text. No subprocess is ever
//! spawned (no `nvidia-smi`): GPUs are read through NVML, loaded at run time.

mod collector;
mod error;
mod gpu;
mod process;
pub mod procfs;
mod sampler;
mod snapshot;

pub use aura_model::host::{AllocatorStats, ProcessSnapshot};
pub use collector::Collector;
pub use error::HostError;
pub use process::process_snapshot;
pub use sampler::{HostSampler, SamplerConfig};
pub use snapshot::{
    CpuModeSeconds, CpuStats, DiskStats, GpuStats, HostSnapshot, MemoryStats, NetStats, Pressure,
    PressureResource, PressureStall, VolumeStats,
};

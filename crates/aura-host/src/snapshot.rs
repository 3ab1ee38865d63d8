//! The sampled data as the rest of Aura sees it: the model's plain structs (`aura_model::host`), built by the
//! collector.

pub use aura_model::host::{
    CpuModeSeconds, CpuStats, DiskStats, GpuStats, HostSnapshot, MemoryStats, NetStats, Pressure,
    PressureResource, PressureStall, VolumeStats,
};

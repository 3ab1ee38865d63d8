//! Resource quantities: what a machine has (`Capacity`) and what a job asks for (`Request`), in integer
//! base units so that reserving and releasing are exact.

use serde::Serialize;
use std::collections::BTreeSet;

/// A countable resource, as named in errors, reasons and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Resource {
    /// Memory, in bytes.
    Memory,
    /// CPU, in thousandths of a core.
    Cpu,
    /// GPU devices, counted.
    Gpu,
    /// GPU memory, in bytes per device.
    Vram,
    /// Video encoder (NVENC) sessions per device.
    EncoderSessions,
    /// Disk space on the data volume, in bytes.
    Disk,
}

impl Resource {
    /// The resource's name for people (`memory`, `gpu memory`, …).
    pub fn name(self) -> &'static str {
        match self {
            Resource::Memory => "memory",
            Resource::Cpu => "cpu",
            Resource::Gpu => "gpu",
            Resource::Vram => "gpu memory",
            Resource::EncoderSessions => "encoder sessions",
            Resource::Disk => "disk",
        }
    }

    /// Renders an amount of this resource for people: bytes as GiB/MiB, CPU in cores.
    pub fn format(self, amount: u64) -> String {
        match self {
            Resource::Memory | Resource::Vram | Resource::Disk => {
                aura_model::ByteSize(amount).to_string()
            }
            Resource::Cpu => format!("{:.2} cores", amount as f64 / 1000.0),
            Resource::Gpu | Resource::EncoderSessions => amount.to_string(),
        }
    }
}

pub use aura_model::{Capacity, GpuDevice};

/// What a job asks for. GPU figures are per device.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize)]
pub struct Request {
    /// Memory to reserve, in bytes.
    pub memory_bytes: u64,
    /// CPU to reserve, in thousandths of a core.
    pub cpu_millis: u64,
    /// Disk space to reserve on the data volume, in bytes.
    pub disk_bytes: u64,
    /// How many GPU devices it needs.
    pub gpus: u32,
    /// GPU memory to reserve on each of its devices, in bytes.
    pub vram_bytes_per_gpu: u64,
    /// Encoder sessions to reserve on each of its devices.
    pub encoder_sessions_per_gpu: u32,
    /// Named limits (providers) the job holds a slot of while it runs.
    pub providers: BTreeSet<String>,
}

impl Request {
    /// A request for `bytes` bytes of memory and nothing else.
    pub fn memory(bytes: u64) -> Request {
        Request {
            memory_bytes: bytes,
            ..Request::default()
        }
    }

    /// The host-wide quantities of this request, for the fits/reserve arithmetic.
    pub(crate) fn scalar(&self) -> Scalar {
        Scalar {
            memory: self.memory_bytes,
            cpu: self.cpu_millis,
            disk: self.disk_bytes,
        }
    }
}

/// Host-wide (non-GPU) quantities; GPU devices are allocated one by one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Scalar {
    pub memory: u64,
    pub cpu: u64,
    pub disk: u64,
}

impl Scalar {
    pub fn fits_in(&self, free: &Scalar) -> Option<(Resource, u64, u64)> {
        if self.memory > free.memory {
            return Some((Resource::Memory, self.memory, free.memory));
        }
        if self.cpu > free.cpu {
            return Some((Resource::Cpu, self.cpu, free.cpu));
        }
        if self.disk > free.disk {
            return Some((Resource::Disk, self.disk, free.disk));
        }
        None
    }

    pub fn saturating_sub(&self, other: &Scalar) -> Scalar {
        Scalar {
            memory: self.memory.saturating_sub(other.memory),
            cpu: self.cpu.saturating_sub(other.cpu),
            disk: self.disk.saturating_sub(other.disk),
        }
    }

    /// Saturating: a claim sums what is released while a job waits, and a capacity near `u64::MAX` (an
    /// unknown disk size) must not wrap it around.
    pub fn add(&mut self, other: &Scalar) {
        self.memory = self.memory.saturating_add(other.memory);
        self.cpu = self.cpu.saturating_add(other.cpu);
        self.disk = self.disk.saturating_add(other.disk);
    }

    pub fn sub(&mut self, other: &Scalar) {
        *self = self.saturating_sub(other);
    }

    /// Component-wise minimum.
    pub fn min(&self, other: &Scalar) -> Scalar {
        Scalar {
            memory: self.memory.min(other.memory),
            cpu: self.cpu.min(other.cpu),
            disk: self.disk.min(other.disk),
        }
    }
}

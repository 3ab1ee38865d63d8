//! The host and the daemon's own process as Aura samples them (`GET /api/system`, `/api/diagnostics/…`): plain
//! serialisable structs in base units (ratios 0–1, bytes, seconds; rates per second). `aura-host` builds
//! them; the server, the client, `aura top` and the benchmarks read them typed.

use crate::Timestamp;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// One host sample.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HostSnapshot {
    pub at: Timestamp,
    pub cpu: CpuStats,
    /// 1, 5 and 15 minute load averages.
    pub load_average: [f64; 3],
    pub memory: MemoryStats,
    /// PSI; `None` where the kernel has no /proc/pressure (or it is disabled).
    pub pressure: Option<Pressure>,
    /// Physical block devices (no loop/ram/zram, no partition of a listed whole disk).
    pub disks: Vec<DiskStats>,
    /// Every interface, loopback included but marked.
    pub networks: Vec<NetStats>,
    /// Space on the volume holding the data directory; `None` if statvfs failed.
    pub data_volume: Option<VolumeStats>,
    /// NVML GPUs; `None` when NVML is unavailable or disabled (see `gpu_unavailable`).
    pub gpus: Option<Vec<GpuStats>>,
    /// Why `gpus` is `None`.
    pub gpu_unavailable: Option<String>,
    /// CPU time this sample itself cost (the sampler thread's CPU clock), seconds.
    pub sample_cpu_seconds: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CpuStats {
    /// Busy share of all CPUs since the previous sample; `None` on the first sample.
    pub busy_ratio: Option<f64>,
    /// Busy share per online CPU since the previous sample; `None` on the first sample or when the
    /// set of online CPUs changed between the two.
    pub per_core: Option<Vec<f64>>,
    /// Online CPUs listed in /proc/stat.
    pub cores: usize,
    /// Cumulative seconds per mode, all CPUs together (for `_seconds_total` counters).
    pub seconds: CpuModeSeconds,
}

/// Cumulative seconds per CPU mode.
pub type CpuModeSeconds = CpuModes<f64>;

/// Memory, bytes. `used` is `total - available`: what cannot be had back without swapping.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct MemoryStats {
    pub total: u64,
    pub available: u64,
    pub used: u64,
    pub free: u64,
    /// Page cache (`Cached` in /proc/meminfo).
    pub cached: u64,
    pub swap_total: u64,
    pub swap_free: u64,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct Pressure {
    pub cpu: PressureResource,
    pub memory: PressureResource,
    pub io: PressureResource,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct PressureResource {
    pub some: PressureStall,
    /// Absent for cpu on kernels before 5.13.
    pub full: Option<PressureStall>,
}

/// One PSI line. The kernel writes percentages; they are converted to ratios 0–1 here.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct PressureStall {
    pub avg10: f64,
    pub avg60: f64,
    pub avg300: f64,
    /// Cumulative stall time, microseconds, as the kernel counts it.
    pub total_usec: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DiskStats {
    pub name: String,
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub reads: u64,
    pub writes: u64,
    /// Cumulative seconds the device had I/O in flight.
    pub io_seconds: f64,
    /// Rates since the previous sample; `None` on the first sample or after a counter reset.
    pub read_bytes_per_second: Option<f64>,
    pub write_bytes_per_second: Option<f64>,
    /// Share of the interval with I/O in flight (like iostat's %util, as a ratio).
    pub busy_ratio: Option<f64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NetStats {
    pub name: String,
    pub loopback: bool,
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub rx_errors: u64,
    pub rx_drops: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
    pub tx_errors: u64,
    pub tx_drops: u64,
    /// Rates since the previous sample; `None` on the first sample or after a counter reset.
    pub rx_bytes_per_second: Option<f64>,
    pub tx_bytes_per_second: Option<f64>,
}

/// statvfs of the data directory, bytes. `available` is what an unprivileged writer can use.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VolumeStats {
    pub path: PathBuf,
    pub total: u64,
    pub free: u64,
    pub available: u64,
}

/// One NVML device. Every field NVML can refuse (unsupported on that board, lost device) is an
/// `Option`, so one missing reading never hides the others.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GpuStats {
    pub index: u32,
    pub name: Option<String>,
    pub utilization_gpu: Option<f64>,
    pub utilization_memory: Option<f64>,
    pub memory_used_bytes: Option<u64>,
    pub memory_total_bytes: Option<u64>,
    pub temperature_celsius: Option<f64>,
    pub power_watts: Option<f64>,
    pub encoder_utilization: Option<f64>,
    pub decoder_utilization: Option<f64>,
    pub encoder_sessions: Option<u32>,
}

/// Time per CPU mode: ticks as /proc/stat counts them (`CpuTimes`), or seconds (`CpuModeSeconds`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuModes<T> {
    pub user: T,
    pub nice: T,
    pub system: T,
    pub idle: T,
    pub iowait: T,
    pub irq: T,
    pub softirq: T,
    pub steal: T,
}

impl<T: Copy + std::ops::Add<Output = T> + std::ops::Sub<Output = T>> CpuModes<T> {
    /// All of it. Guest time is already counted inside user/nice, so it is not added again.
    pub fn total(&self) -> T {
        self.user
            + self.nice
            + self.system
            + self.idle
            + self.iowait
            + self.irq
            + self.softirq
            + self.steal
    }

    /// Time not spent idle; iowait counts as idle because the CPU was free to run something.
    pub fn busy(&self) -> T {
        self.total() - self.idle - self.iowait
    }

    /// Every mode converted alike (ticks to seconds).
    pub fn map<U>(&self, f: impl Fn(T) -> U) -> CpuModes<U> {
        CpuModes {
            user: f(self.user),
            nice: f(self.nice),
            system: f(self.system),
            idle: f(self.idle),
            iowait: f(self.iowait),
            irq: f(self.irq),
            softirq: f(self.softirq),
            steal: f(self.steal),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ProcessSnapshot {
    pub pid: u32,
    pub rss_bytes: u64,
    pub virtual_bytes: u64,
    pub open_fds: u64,
    /// Soft RLIMIT_NOFILE; `u64::MAX` when unlimited.
    pub max_fds: u64,
    pub threads: u64,
    /// Direct children (processes whose parent is this one).
    pub children: u64,
    pub cpu_user_seconds: f64,
    pub cpu_system_seconds: f64,
    pub start_time: Timestamp,
    /// The allocator's own view, where it offers one (glibc's `mallinfo2`).
    pub allocator: Option<AllocatorStats>,
}

/// Heap figures from the allocator: what it got from the OS, what is handed out, what it holds free.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct AllocatorStats {
    /// Bytes obtained from the OS (main arena plus mmapped chunks).
    pub mapped_bytes: u64,
    /// Bytes in allocations the program holds.
    pub in_use_bytes: u64,
    /// Bytes free inside the allocator (what a cleanup's `malloc_trim` may return).
    pub free_bytes: u64,
}

//! The host and the daemon's own process as Aura samples them (`GET /api/system`, `/api/diagnostics/…`): plain
//! serialisable structs in base units (ratios 0–1, bytes, seconds; rates per second). `aura-host` builds
//! them; the server, the client, `aura top` and the benchmarks read them typed.

use crate::Timestamp;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// One host sample.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HostSnapshot {
    /// When the sample was taken.
    pub at: Timestamp,
    /// CPU use, overall and per core.
    pub cpu: CpuStats,
    /// 1, 5 and 15 minute load averages.
    #[cfg_attr(feature = "openapi", schema(min_items = 3, max_items = 3))]
    pub load_average: [f64; 3],
    /// Physical memory and swap.
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

/// CPU use of the whole host, from /proc/stat.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CpuStats {
    /// Busy share of all CPUs since the previous sample; `None` on the first sample.
    pub busy_ratio: Option<f64>,
    /// Busy share per online CPU since the previous sample; `None` on the first sample or when the
    /// set of online CPUs changed between the two.
    pub per_core: Option<Vec<f64>>,
    /// Online CPUs listed in /proc/stat.
    pub cores: usize,
    /// Cumulative seconds per mode, all CPUs together (for `_seconds_total` counters).
    #[cfg_attr(feature = "openapi", schema(value_type = CpuModes<f64>))]
    pub seconds: CpuModeSeconds,
}

/// Cumulative seconds per CPU mode.
pub type CpuModeSeconds = CpuModes<f64>;

/// Memory, bytes. `used` is `total - available`: what cannot be had back without swapping.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MemoryStats {
    /// Physical memory (`MemTotal`).
    pub total: u64,
    /// What can be allocated without swapping, reclaimable cache included (`MemAvailable`).
    pub available: u64,
    /// `total - available`.
    pub used: u64,
    /// Memory not used at all, not even as cache (`MemFree`).
    pub free: u64,
    /// Page cache (`Cached` in /proc/meminfo).
    pub cached: u64,
    /// Swap space configured (`SwapTotal`).
    pub swap_total: u64,
    /// Swap space unused (`SwapFree`).
    pub swap_free: u64,
}

/// Pressure stall information (PSI) from /proc/pressure: how much time tasks waited for each resource.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Pressure {
    /// Waiting for a CPU.
    pub cpu: PressureResource,
    /// Waiting for memory (reclaim, swap-in, refaults).
    pub memory: PressureResource,
    /// Waiting for block I/O.
    pub io: PressureResource,
}

/// One resource's PSI file.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PressureResource {
    /// Time at least one task was stalled on the resource.
    pub some: PressureStall,
    /// Time all non-idle tasks were stalled at once.
    /// Absent for cpu on kernels before 5.13.
    pub full: Option<PressureStall>,
}

/// One PSI line. The kernel writes percentages; they are converted to ratios 0–1 here.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PressureStall {
    /// Share of time stalled over the last 10 seconds, 0–1.
    pub avg10: f64,
    /// Share of time stalled over the last 60 seconds, 0–1.
    pub avg60: f64,
    /// Share of time stalled over the last 300 seconds, 0–1.
    pub avg300: f64,
    /// Cumulative stall time, microseconds, as the kernel counts it.
    pub total_usec: u64,
}

/// One block device's I/O, from /proc/diskstats; counters are cumulative since boot.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DiskStats {
    /// The kernel's device name (`sda`, `nvme0n1`).
    pub name: String,
    /// Bytes read.
    pub read_bytes: u64,
    /// Bytes written.
    pub write_bytes: u64,
    /// Read requests completed.
    pub reads: u64,
    /// Write requests completed.
    pub writes: u64,
    /// Cumulative seconds the device had I/O in flight.
    pub io_seconds: f64,
    /// Rates since the previous sample; `None` on the first sample or after a counter reset.
    pub read_bytes_per_second: Option<f64>,
    /// Bytes written per second since the previous sample (same conditions as the read rate).
    pub write_bytes_per_second: Option<f64>,
    /// Share of the interval with I/O in flight (like iostat's %util, as a ratio).
    pub busy_ratio: Option<f64>,
}

/// One network interface's traffic, from /proc/net/dev; counters are cumulative since the interface
/// was created.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NetStats {
    /// The interface name (`eth0`, `lo`).
    pub name: String,
    /// Whether it is the loopback interface (`lo`).
    pub loopback: bool,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Packets received.
    pub rx_packets: u64,
    /// Receive errors.
    pub rx_errors: u64,
    /// Received packets dropped.
    pub rx_drops: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Packets sent.
    pub tx_packets: u64,
    /// Send errors.
    pub tx_errors: u64,
    /// Outgoing packets dropped.
    pub tx_drops: u64,
    /// Rates since the previous sample; `None` on the first sample or after a counter reset.
    pub rx_bytes_per_second: Option<f64>,
    /// Bytes sent per second since the previous sample (same conditions as the receive rate).
    pub tx_bytes_per_second: Option<f64>,
}

/// statvfs of the data directory, bytes. `available` is what an unprivileged writer can use.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct VolumeStats {
    /// The data directory the figures are for.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub path: PathBuf,
    /// The volume's size.
    pub total: u64,
    /// Free space, including the blocks reserved for root.
    pub free: u64,
    /// Free space an unprivileged writer may use.
    pub available: u64,
}

/// One NVML device. Every field NVML can refuse (unsupported on that board, lost device) is an
/// `Option`, so one missing reading never hides the others.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct GpuStats {
    /// The device's NVML index (as `nvidia-smi` numbers it).
    pub index: u32,
    /// The board's product name.
    pub name: Option<String>,
    /// Share of the last sample period a kernel ran on the GPU, 0–1.
    pub utilization_gpu: Option<f64>,
    /// Share of the last sample period device memory was read or written, 0–1.
    pub utilization_memory: Option<f64>,
    /// Device memory allocated, in bytes.
    pub memory_used_bytes: Option<u64>,
    /// Device memory in all, in bytes.
    pub memory_total_bytes: Option<u64>,
    /// GPU die temperature, degrees Celsius.
    pub temperature_celsius: Option<f64>,
    /// The temperature at which the board slows itself down (NVML's slowdown threshold), degrees
    /// Celsius; the GPU warning is raised over it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slowdown_temperature_celsius: Option<f64>,
    /// Power draw, watts.
    pub power_watts: Option<f64>,
    /// Share of the last sample period the NVENC encoder was busy, 0–1.
    pub encoder_utilization: Option<f64>,
    /// Share of the last sample period the NVDEC decoder was busy, 0–1.
    pub decoder_utilization: Option<f64>,
    /// NVENC sessions open now.
    pub encoder_sessions: Option<u32>,
}

/// Time per CPU mode: ticks as /proc/stat counts them (`CpuTimes`), or seconds (`CpuModeSeconds`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CpuModes<T> {
    /// Running user code at normal priority (guest time included).
    pub user: T,
    /// Running user code at a lowered priority (niced; guest-nice time included).
    pub nice: T,
    /// Running kernel code for processes.
    pub system: T,
    /// Idle, with no I/O outstanding.
    pub idle: T,
    /// Idle while I/O was outstanding.
    pub iowait: T,
    /// Servicing hardware interrupts.
    pub irq: T,
    /// Servicing softirqs.
    pub softirq: T,
    /// Taken by the hypervisor for other guests (virtual machines only).
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

/// The daemon's own process as it reads itself from /proc/self.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ProcessSnapshot {
    /// The daemon's PID.
    pub pid: u32,
    /// Resident memory, in bytes.
    pub rss_bytes: u64,
    /// Virtual address space size, in bytes.
    pub virtual_bytes: u64,
    /// File descriptors open now.
    pub open_fds: u64,
    /// Soft RLIMIT_NOFILE; `u64::MAX` when unlimited.
    pub max_fds: u64,
    /// Threads of the process.
    pub threads: u64,
    /// Direct children (processes whose parent is this one).
    pub children: u64,
    /// CPU time in user mode since the process started, seconds.
    pub cpu_user_seconds: f64,
    /// CPU time in kernel mode since the process started, seconds.
    pub cpu_system_seconds: f64,
    /// When the process started.
    pub start_time: Timestamp,
    /// The allocator's own view, where it offers one (glibc's `mallinfo2`).
    pub allocator: Option<AllocatorStats>,
}

/// Heap figures from the allocator: what it got from the OS, what is handed out, what it holds free.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AllocatorStats {
    /// Bytes obtained from the OS (main arena plus mmapped chunks).
    pub mapped_bytes: u64,
    /// Bytes in allocations the program holds.
    pub in_use_bytes: u64,
    /// Bytes free inside the allocator (what a cleanup's `malloc_trim` may return).
    pub free_bytes: u64,
}

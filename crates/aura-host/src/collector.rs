//! One host sample: reads the /proc files, statvfs and NVML, and turns counters into rates using
//! the raw counters it kept from the previous sample. Single-threaded by design — the sampler
//! thread owns the only `Collector`, so the previous counters need no lock.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Instant;

use aura_model::Timestamp;
use rustix::time::{clock_gettime, ClockId};

use crate::error::HostError;
use crate::gpu::Gpus;
use crate::procfs::{self, CpuTimes, DiskRaw, NetRaw, Psi};
use crate::snapshot::{
    CpuStats, DiskStats, HostSnapshot, MemoryStats, NetStats, Pressure, PressureResource,
    PressureStall, VolumeStats,
};

/// Counters from the previous sample, kept to compute deltas.
struct Previous {
    at: Instant,
    cpu: CpuTimes,
    cores: Vec<CpuTimes>,
    disks: HashMap<String, DiskRaw>,
    nets: HashMap<String, NetRaw>,
}

/// Takes host samples. Public so benches and callers without a thread can drive it directly.
pub struct Collector {
    data_dir: PathBuf,
    gpus: Gpus,
    ticks_per_second: f64,
    /// Reused read buffer: /proc files are small, and reusing it keeps a sample allocation-light.
    buf: String,
    /// Cleared after the first failure so a kernel without PSI is not asked every second.
    psi_available: bool,
    prev: Option<Previous>,
}

fn read_into(path: &str, buf: &mut String) -> Result<(), HostError> {
    buf.clear();
    std::fs::File::open(path)
        .and_then(|mut f| f.read_to_string(buf))
        .map(drop)
        .map_err(|e| HostError::read(path, e))
}

fn thread_cpu_seconds() -> f64 {
    let t = clock_gettime(ClockId::ThreadCPUTime);
    t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
}

/// `(now - before) / seconds`, or `None` if the counter went backwards (reset, device replaced).
fn rate(now: u64, before: u64, seconds: f64) -> Option<f64> {
    now.checked_sub(before).map(|d| d as f64 / seconds)
}

fn busy_ratio(now: &CpuTimes, before: &CpuTimes) -> Option<f64> {
    let total = now.total().checked_sub(before.total())?;
    let busy = now.busy().checked_sub(before.busy())?;
    if total == 0 {
        return Some(0.0);
    }
    Some((busy as f64 / total as f64).clamp(0.0, 1.0))
}

fn stall(l: &procfs::PsiLine) -> PressureStall {
    PressureStall {
        avg10: l.avg10 / 100.0,
        avg60: l.avg60 / 100.0,
        avg300: l.avg300 / 100.0,
        total_usec: l.total_usec,
    }
}

fn resource(p: &Psi) -> PressureResource {
    PressureResource {
        some: stall(&p.some),
        full: p.full.as_ref().map(stall),
    }
}

/// statvfs of `path`, in bytes.
fn volume(path: &Path) -> Result<VolumeStats, HostError> {
    let s = rustix::fs::statvfs(path).map_err(|e| HostError::read(path, e.into()))?;
    // f_frsize is the unit of the block counts; f_bsize is only the preferred I/O size.
    let unit = if s.f_frsize > 0 {
        s.f_frsize
    } else {
        s.f_bsize
    };
    Ok(VolumeStats {
        path: path.to_owned(),
        total: s.f_blocks.saturating_mul(unit),
        free: s.f_bfree.saturating_mul(unit),
        available: s.f_bavail.saturating_mul(unit),
    })
}

impl Collector {
    /// Initialises NVML (when `nvml`), once: it loads a shared library and enumerates devices.
    pub fn new(data_dir: PathBuf, nvml: bool) -> Self {
        Self {
            data_dir,
            gpus: Gpus::init(nvml),
            ticks_per_second: rustix::param::clock_ticks_per_second() as f64,
            buf: String::with_capacity(4096),
            psi_available: true,
            prev: None,
        }
    }

    fn pressure(&mut self) -> Option<Pressure> {
        if !self.psi_available {
            return None;
        }
        let mut read = |path: &str| -> Result<Psi, HostError> {
            read_into(path, &mut self.buf)?;
            procfs::parse_pressure(&self.buf).map_err(|e| HostError::parse(path, e))
        };
        let result = (|| {
            Ok::<_, HostError>(Pressure {
                cpu: resource(&read("/proc/pressure/cpu")?),
                memory: resource(&read("/proc/pressure/memory")?),
                io: resource(&read("/proc/pressure/io")?),
            })
        })();
        match result {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::info!(error = %e, "PSI unavailable; pressure will not be reported");
                self.psi_available = false;
                None
            }
        }
    }

    /// Takes one sample. Fails only if a file every Linux has (/proc/stat, meminfo, loadavg,
    /// diskstats, net/dev) cannot be read or parsed; optional sources degrade to `None`.
    pub fn sample(&mut self) -> Result<HostSnapshot, HostError> {
        let cpu_before = thread_cpu_seconds();
        let now = Instant::now();
        let at = Timestamp::now();

        read_into("/proc/stat", &mut self.buf)?;
        let stat = procfs::parse_stat(&self.buf).map_err(|e| HostError::parse("/proc/stat", e))?;
        read_into("/proc/meminfo", &mut self.buf)?;
        let mem =
            procfs::parse_meminfo(&self.buf).map_err(|e| HostError::parse("/proc/meminfo", e))?;
        read_into("/proc/loadavg", &mut self.buf)?;
        let load_average =
            procfs::parse_loadavg(&self.buf).map_err(|e| HostError::parse("/proc/loadavg", e))?;
        read_into("/proc/diskstats", &mut self.buf)?;
        let all_disks = procfs::parse_diskstats(&self.buf)
            .map_err(|e| HostError::parse("/proc/diskstats", e))?;
        read_into("/proc/net/dev", &mut self.buf)?;
        let nets =
            procfs::parse_net_dev(&self.buf).map_err(|e| HostError::parse("/proc/net/dev", e))?;
        let pressure = self.pressure();
        let data_volume = match volume(&self.data_dir) {
            Ok(v) => Some(v),
            Err(e) => {
                tracing::debug!(error = %e, "data volume statvfs failed");
                None
            }
        };
        let (gpus, gpu_unavailable) = match self.gpus.read() {
            Ok(g) => (Some(g), None),
            Err(reason) => (None, Some(reason)),
        };

        let prev = self.prev.as_ref();
        let elapsed = prev
            .map(|p| now.duration_since(p.at).as_secs_f64())
            .filter(|s| *s > 0.0);
        let hz = self.ticks_per_second;
        let t = &stat.total;
        let cpu = CpuStats {
            busy_ratio: prev.and_then(|p| busy_ratio(t, &p.cpu)),
            per_core: prev
                .filter(|p| p.cores.len() == stat.cores.len())
                .and_then(|p| {
                    stat.cores
                        .iter()
                        .zip(&p.cores)
                        .map(|(n, b)| busy_ratio(n, b))
                        .collect()
                }),
            cores: stat.cores.len(),
            seconds: t.map(|ticks| ticks as f64 / hz),
        };

        let disks: Vec<DiskRaw> = all_disks
            .iter()
            .filter(|d| procfs::is_physical_disk(&d.name, &all_disks))
            .cloned()
            .collect();
        let disk_stats = disks
            .iter()
            .map(|d| {
                let before = prev.and_then(|p| p.disks.get(&d.name));
                let r = |f: fn(&DiskRaw) -> u64, scale: f64| {
                    let (b, s) = (before?, elapsed?);
                    rate(f(d), f(b), s).map(|v| v * scale)
                };
                DiskStats {
                    name: d.name.clone(),
                    read_bytes: d.read_sectors.saturating_mul(512),
                    write_bytes: d.write_sectors.saturating_mul(512),
                    reads: d.reads,
                    writes: d.writes,
                    io_seconds: d.io_ms as f64 / 1000.0,
                    read_bytes_per_second: r(|d| d.read_sectors, 512.0),
                    write_bytes_per_second: r(|d| d.write_sectors, 512.0),
                    busy_ratio: r(|d| d.io_ms, 1.0 / 1000.0).map(|v| v.clamp(0.0, 1.0)),
                }
            })
            .collect();
        let net_stats = nets
            .iter()
            .map(|n| {
                let before = prev.and_then(|p| p.nets.get(&n.name));
                let r = |f: fn(&NetRaw) -> u64| rate(f(n), f(before?), elapsed?);
                NetStats {
                    name: n.name.clone(),
                    loopback: n.name == "lo",
                    rx_bytes: n.rx_bytes,
                    rx_packets: n.rx_packets,
                    rx_errors: n.rx_errors,
                    rx_drops: n.rx_drops,
                    tx_bytes: n.tx_bytes,
                    tx_packets: n.tx_packets,
                    tx_errors: n.tx_errors,
                    tx_drops: n.tx_drops,
                    rx_bytes_per_second: r(|n| n.rx_bytes),
                    tx_bytes_per_second: r(|n| n.tx_bytes),
                }
            })
            .collect();

        // Replaced wholesale, so devices that disappeared are forgotten: memory stays bounded.
        self.prev = Some(Previous {
            at: now,
            cpu: stat.total,
            cores: stat.cores,
            disks: disks.into_iter().map(|d| (d.name.clone(), d)).collect(),
            nets: nets.into_iter().map(|n| (n.name.clone(), n)).collect(),
        });

        Ok(HostSnapshot {
            at,
            cpu,
            load_average,
            memory: MemoryStats {
                total: mem.total,
                available: mem.available,
                used: mem.total.saturating_sub(mem.available),
                free: mem.free,
                cached: mem.cached,
                swap_total: mem.swap_total,
                swap_free: mem.swap_free,
            },
            pressure,
            disks: disk_stats,
            networks: net_stats,
            data_volume,
            gpus,
            gpu_unavailable,
            sample_cpu_seconds: (thread_cpu_seconds() - cpu_before).max(0.0),
        })
    }
}

//! The engine's side of admission: what this host can afford (read at start-up, overridable), and how a
//! job spec becomes an admission `Request`.

use aura_admission::estimate::Estimator;
use aura_admission::{Capacity, GpuDevice, LimitConfig, Request};
use aura_model::{ByteSize, Job, JobSpec, MemoryRequest, RequestSource, ResourceRequest};
use std::collections::BTreeMap;
use std::path::Path;

/// Admission settings, with the defaults of `aura serve`.
#[derive(Clone, Debug)]
pub struct AdmissionConfig {
    /// What jobs may reserve. `None` fields are read from the host at start-up.
    pub memory_bytes: Option<u64>,
    /// Kept free for the rest of the machine (the studio UI) when memory is read from the host.
    pub memory_headroom_bytes: u64,
    pub cpu_cores: Option<f64>,
    pub disk_bytes: Option<u64>,
    /// How a job that states no memory request gets one: learned from its kind's history, else the
    /// estimator's default (2 GiB).
    pub estimator: Estimator,
    /// How many of a kind's newest successful runs the estimate looks at.
    pub learn_window: u32,
    /// Named limits (providers).
    pub limits: BTreeMap<String, LimitConfig>,
    /// Most jobs waiting in the queue; submit beyond it is refused with "retry later".
    pub queue_cap: usize,
    /// Read GPUs through NVML at start-up (no GPU or no driver: none, with the reason logged once).
    pub detect_gpus: bool,
    /// GPUs as configured instead of detected (when not empty): VRAM and encoder sessions per device.
    pub gpus: Vec<GpuDevice>,
    /// Concurrent NVENC sessions per GPU. NVML does not report the driver's session limit (consumer cards
    /// allow a handful, data-centre cards many), so it is configured.
    pub gpu_encoder_sessions: u32,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        AdmissionConfig {
            memory_bytes: None,
            memory_headroom_bytes: 500 << 20,
            cpu_cores: None,
            disk_bytes: None,
            estimator: Estimator::default(),
            learn_window: 200,
            limits: BTreeMap::new(),
            queue_cap: 100_000,
            detect_gpus: true,
            gpus: Vec::new(),
            gpu_encoder_sessions: 8,
        }
    }
}

impl AdmissionConfig {
    /// Host capacity with the configured overrides. Blocking (reads /proc and statvfs): call at start-up.
    pub fn capacity(&self, data_dir: &Path) -> Capacity {
        let memory = self.memory_bytes.unwrap_or_else(|| {
            mem_total().map_or(0, |total| total.saturating_sub(self.memory_headroom_bytes))
        });
        let cores = self
            .cpu_cores
            .unwrap_or_else(|| crate::default_max_concurrent() as f64);
        let disk = self.disk_bytes.unwrap_or_else(|| {
            rustix::fs::statvfs(data_dir)
                .map_or(u64::MAX, |s| s.f_bavail.saturating_mul(s.f_frsize))
        });
        let gpus = if !self.gpus.is_empty() {
            self.gpus.clone()
        } else if self.detect_gpus {
            nvml_gpus(self.gpu_encoder_sessions)
        } else {
            Vec::new()
        };
        Capacity {
            memory_bytes: memory,
            cpu_millis: (cores * 1000.0).round() as u64,
            disk_bytes: disk,
            gpus,
        }
    }

    /// The memory request of a job that states none and has no `kind` to learn from.
    pub fn default_memory(&self) -> MemoryRequest {
        MemoryRequest {
            bytes: ByteSize(self.estimator.default_bytes),
            source: RequestSource::Default,
        }
    }

    /// The admission request of a job: the memory settled at submit (stated, learned or default) and the
    /// rest as stated.
    pub fn request(&self, job: &Job) -> Request {
        let memory = match (&job.memory_request, job.spec.resources.memory) {
            (Some(m), _) => m.bytes,
            (None, Some(stated)) => stated,
            (None, None) => ByteSize(self.estimator.default_bytes),
        };
        Request {
            memory_bytes: memory.bytes(),
            ..self.request_of_spec(&job.spec)
        }
    }

    fn request_of_spec(&self, spec: &JobSpec) -> Request {
        Self::resources(&spec.resources, self.estimator.default_bytes)
    }

    /// A lease holds exactly what it states: no default memory.
    pub fn lease_request(&self, r: &ResourceRequest) -> Request {
        Self::resources(r, 0)
    }

    fn resources(r: &ResourceRequest, default_memory: u64) -> Request {
        Request {
            memory_bytes: r.memory.map_or(default_memory, |m| m.bytes()),
            cpu_millis: r.cpu.map_or(0, |c| (c * 1000.0).round() as u64),
            disk_bytes: r.disk.map_or(0, |d| d.bytes()),
            gpus: r.gpus.unwrap_or(0),
            vram_bytes_per_gpu: r.vram.map_or(0, |v| v.bytes()),
            encoder_sessions_per_gpu: r.encoder_sessions.unwrap_or(0),
            providers: r.providers.clone(),
        }
    }
}

fn mem_total() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The host's GPUs through NVML, loaded at run time: a host without a GPU or a driver gets none (and one
/// log line saying why), never a crash and never a subprocess.
fn nvml_gpus(encoder_sessions: u32) -> Vec<GpuDevice> {
    let nvml = match nvml_wrapper::Nvml::init() {
        Ok(nvml) => nvml,
        Err(e) => {
            tracing::info!(reason = %e, "no GPUs for admission: NVML is not available");
            return Vec::new();
        }
    };
    let count = match nvml.device_count() {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "NVML could not count GPUs; admitting no GPU jobs");
            return Vec::new();
        }
    };
    let mut gpus = Vec::new();
    for index in 0..count {
        let device = nvml.device_by_index(index);
        match device.and_then(|d| Ok((d.name()?, d.memory_info()?.total))) {
            Ok((name, vram_bytes)) => {
                tracing::info!(index, %name, vram = %ByteSize(vram_bytes), encoder_sessions, "GPU available to admission");
                gpus.push(GpuDevice {
                    index,
                    vram_bytes,
                    encoder_sessions,
                });
            }
            Err(e) => tracing::warn!(index, error = %e, "skipping a GPU NVML cannot read"),
        }
    }
    gpus
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On a machine with NVIDIA GPUs and a driver this lists them; elsewhere it must return none quietly.
    #[test]
    fn gpu_detection_never_fails() {
        let gpus = nvml_gpus(8);
        for (i, gpu) in gpus.iter().enumerate() {
            assert_eq!(gpu.index as usize, i);
            assert!(gpu.vram_bytes > 0);
        }
        if !std::path::Path::new("/dev/nvidiactl").exists() {
            assert!(gpus.is_empty());
        }
    }
}

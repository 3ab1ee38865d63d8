//! The engine's side of admission: what this host can afford (read at start-up, overridable), and how a
//! job spec becomes an admission `Request`.

use aura_admission::estimate::Estimator;
use aura_admission::{Capacity, GpuDevice, LimitConfig, Request};
use aura_model::{ByteSize, JobSpec, MemoryRequest, RequestSource, ResourceRequest};
use std::collections::BTreeMap;

/// Admission settings, with the defaults of `aura serve`.
#[derive(Clone, Debug)]
pub struct AdmissionConfig {
    /// What jobs may reserve. `None` fields are read from the host at start-up.
    pub memory_bytes: Option<u64>,
    /// Kept free for the rest of the machine (the studio UI) when memory is read from the host.
    pub memory_headroom_bytes: u64,
    /// CPU cores jobs may reserve; `None`: the host's core count.
    pub cpu_cores: Option<f64>,
    /// Disk space (bytes) jobs may reserve; `None`: what the data volume had free at start-up.
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
    /// Capacity: the host as the sampler first saw it (physical memory minus headroom, cores, the data
    /// volume's free space, NVML GPUs), with the configured overrides. Pure: the sampler did the I/O.
    pub fn capacity(&self, host: Option<&aura_host::HostSnapshot>) -> Capacity {
        let memory = self.memory_bytes.unwrap_or_else(|| {
            host.map_or(0, |h| {
                h.memory.total.saturating_sub(self.memory_headroom_bytes)
            })
        });
        let cores = self
            .cpu_cores
            .unwrap_or_else(|| crate::default_max_concurrent() as f64);
        let disk = self.disk_bytes.unwrap_or_else(|| {
            host.and_then(|h| h.data_volume.as_ref())
                .map_or(u64::MAX, |v| v.available)
        });
        let gpus = if !self.gpus.is_empty() {
            self.gpus.clone()
        } else if self.detect_gpus {
            host.and_then(|h| h.gpus.as_deref())
                .map_or_else(Vec::new, |gpus| self.detected_gpus(gpus))
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

    /// The GPUs NVML reported, with the configured encoder-session limit (NVML does not report it).
    fn detected_gpus(&self, gpus: &[aura_host::GpuStats]) -> Vec<GpuDevice> {
        gpus.iter()
            .filter_map(|g| match g.memory_total_bytes {
                Some(vram_bytes) => Some(GpuDevice {
                    index: g.index,
                    vram_bytes,
                    encoder_sessions: self.gpu_encoder_sessions,
                }),
                None => {
                    tracing::warn!(
                        index = g.index,
                        "skipping a GPU whose memory NVML cannot read"
                    );
                    None
                }
            })
            .collect()
    }

    /// The memory request of a job that states none and has no `kind` to learn from.
    pub fn default_memory(&self) -> MemoryRequest {
        MemoryRequest {
            bytes: ByteSize(self.estimator.default_bytes),
            source: RequestSource::Default,
        }
    }

    /// The admission request of a job: what its spec states, with the memory settled at submit (stated,
    /// learned or default) where there is one — records from before admission have none.
    pub fn request(&self, spec: &JobSpec, memory: Option<&MemoryRequest>) -> Request {
        let mut request = Self::resources(&spec.resources, self.estimator.default_bytes);
        if let Some(m) = memory {
            request.memory_bytes = m.bytes.bytes();
        }
        request
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

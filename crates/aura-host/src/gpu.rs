//! NVML access: initialised once, read per sample. NVML is loaded at run time, so a host without
//! the NVIDIA driver gets a reason string, not a crash; no field error ever panics.

use nvml_wrapper::enum_wrappers::device::{TemperatureSensor, TemperatureThreshold};
use nvml_wrapper::Nvml;

use crate::snapshot::GpuStats;

/// Either a working NVML handle or why there is none.
pub(crate) enum Gpus {
    /// Boxed: the handle holds the whole loaded symbol table (~11 KB).
    Nvml(Box<Nvml>),
    Unavailable(String),
}

impl Gpus {
    pub(crate) fn init(enabled: bool) -> Self {
        if !enabled {
            return Self::Unavailable("NVML disabled by configuration".into());
        }
        match Nvml::init() {
            Ok(nvml) => Self::Nvml(Box::new(nvml)),
            Err(e) => {
                let reason = format!("NVML unavailable: {e}");
                // Logged once here; each snapshot carries the reason instead of logging again.
                tracing::info!(%reason, "GPU metrics disabled");
                Self::Unavailable(reason)
            }
        }
    }

    /// Reads every device. `Err` carries the reason when there are no GPU metrics at all.
    pub(crate) fn read(&self) -> Result<Vec<GpuStats>, String> {
        let nvml = match self {
            Self::Nvml(n) => n,
            Self::Unavailable(reason) => return Err(reason.clone()),
        };
        let count = nvml
            .device_count()
            .map_err(|e| format!("NVML device count: {e}"))?;
        Ok((0..count).map(|i| read_device(nvml, i)).collect())
    }
}

fn pct(v: u32) -> f64 {
    f64::from(v) / 100.0
}

fn read_device(nvml: &Nvml, index: u32) -> GpuStats {
    let mut s = GpuStats {
        index,
        name: None,
        utilization_gpu: None,
        utilization_memory: None,
        memory_used_bytes: None,
        memory_total_bytes: None,
        temperature_celsius: None,
        slowdown_temperature_celsius: None,
        power_watts: None,
        encoder_utilization: None,
        decoder_utilization: None,
        encoder_sessions: None,
    };
    // A device that cannot be opened (fallen off the bus) is still listed, with nothing known.
    let Ok(dev) = nvml.device_by_index(index) else {
        return s;
    };
    s.name = dev.name().ok();
    if let Ok(u) = dev.utilization_rates() {
        s.utilization_gpu = Some(pct(u.gpu));
        s.utilization_memory = Some(pct(u.memory));
    }
    if let Ok(m) = dev.memory_info() {
        s.memory_used_bytes = Some(m.used);
        s.memory_total_bytes = Some(m.total);
    }
    s.temperature_celsius = dev.temperature(TemperatureSensor::Gpu).ok().map(f64::from);
    s.slowdown_temperature_celsius = dev
        .temperature_threshold(TemperatureThreshold::Slowdown)
        .ok()
        .map(f64::from);
    s.power_watts = dev.power_usage().ok().map(|mw| f64::from(mw) / 1000.0);
    s.encoder_utilization = dev.encoder_utilization().ok().map(|u| pct(u.utilization));
    s.decoder_utilization = dev.decoder_utilization().ok().map(|u| pct(u.utilization));
    s.encoder_sessions = dev.encoder_stats().ok().map(|e| e.session_count);
    s
}

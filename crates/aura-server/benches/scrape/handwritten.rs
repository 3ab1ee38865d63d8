//! The hand-written encoder `/metrics` used before prometheus-client (commit 49d0a1e), kept unchanged as
//! the baseline of the `scrape` bench: the rule for moving to the crate was "unless it costs a scrape
//! more than 20 %".

use aura_host::{HostSnapshot, ProcessSnapshot};
use aura_model::JobView;
use aura_model::{EngineStatus, Utilization};
use std::fmt::Write;
use std::sync::Arc;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MetricType {
    Gauge,
    Counter,
}

type Labels = Vec<(String, String)>;

/// One metric family: its samples, each with its label set.
#[derive(Debug)]
struct Family {
    /// Counters are named without `_total`: rendering appends it.
    name: &'static str,
    help: &'static str,
    kind: MetricType,
    samples: Vec<(Labels, f64)>,
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Everything one scrape shows, taken from snapshots (no I/O while encoding).
#[derive(Debug, Default)]
struct Scrape {
    families: Vec<Family>,
}

impl Scrape {
    fn gauge(&mut self, name: &'static str, help: &'static str, samples: Vec<(Labels, f64)>) {
        self.families.push(Family {
            name,
            help,
            kind: MetricType::Gauge,
            samples,
        });
    }

    fn counter(&mut self, name: &'static str, help: &'static str, samples: Vec<(Labels, f64)>) {
        self.families.push(Family {
            name,
            help,
            kind: MetricType::Counter,
            samples,
        });
    }

    fn one(value: f64) -> Vec<(Labels, f64)> {
        vec![(Vec::new(), value)]
    }
}

impl Scrape {
    fn render(&self, out: &mut String) -> std::fmt::Result {
        for family in self.families.iter().filter(|f| !f.samples.is_empty()) {
            let (name, kind) = match family.kind {
                MetricType::Counter => (format!("{}_total", family.name), "counter"),
                MetricType::Gauge => (family.name.to_owned(), "gauge"),
            };
            writeln!(out, "# HELP {name} {}", family.help)?;
            writeln!(out, "# TYPE {name} {kind}")?;
            for (labels, value) in &family.samples {
                out.push_str(&name);
                if !labels.is_empty() {
                    out.push('{');
                    for (i, (k, v)) in labels.iter().enumerate() {
                        if i > 0 {
                            out.push(',');
                        }
                        write!(out, "{k}=\"{}\"", escape(v))?;
                    }
                    out.push('}');
                }
                writeln!(out, " {}", number(*value))?;
            }
        }
        Ok(())
    }
}

/// Label values escape backslash, double quote and newline.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn number(value: f64) -> String {
    if value.is_nan() {
        "NaN".to_owned()
    } else if value.is_infinite() {
        if value > 0.0 { "+Inf" } else { "-Inf" }.to_owned()
    } else {
        value.to_string()
    }
}

pub struct Inputs {
    pub host: Option<Arc<HostSnapshot>>,
    pub process: Option<ProcessSnapshot>,
    pub status: EngineStatus,
    pub utilization: Utilization,
    pub running: Vec<JobView>,
}

/// Renders one scrape.
pub fn render(inputs: Inputs) -> Result<String, std::fmt::Error> {
    let mut s = Scrape::default();
    if let Some(h) = &inputs.host {
        host(&mut s, h);
    }
    if let Some(p) = &inputs.process {
        process(&mut s, p);
    }
    engine(&mut s, &inputs);
    let mut out = String::with_capacity(16 * 1024);
    s.render(&mut out)?;
    Ok(out)
}

fn host(s: &mut Scrape, h: &HostSnapshot) {
    let c = &h.cpu.seconds;
    let modes = [
        ("user", c.user),
        ("nice", c.nice),
        ("system", c.system),
        ("idle", c.idle),
        ("iowait", c.iowait),
        ("irq", c.irq),
        ("softirq", c.softirq),
        ("steal", c.steal),
    ];
    s.counter(
        "aura_host_cpu_seconds",
        "CPU time of the whole host by mode, summed over cores.",
        modes
            .iter()
            .map(|(m, v)| (labels(&[("mode", m)]), *v))
            .collect(),
    );
    if let Some(busy) = h.cpu.busy_ratio {
        s.gauge(
            "aura_host_cpu_busy_ratio",
            "Share of the host's CPU busy over the last sample interval.",
            Scrape::one(busy),
        );
    }
    if let Some(cores) = &h.cpu.per_core {
        let samples = cores
            .iter()
            .enumerate()
            .map(|(i, v)| (labels(&[("cpu", &i.to_string())]), *v))
            .collect();
        s.gauge(
            "aura_host_cpu_core_busy_ratio",
            "Share of each core busy over the last sample interval.",
            samples,
        );
    }
    s.gauge(
        "aura_host_load1",
        "1-minute load average.",
        Scrape::one(h.load_average[0]),
    );
    s.gauge(
        "aura_host_load5",
        "5-minute load average.",
        Scrape::one(h.load_average[1]),
    );
    s.gauge(
        "aura_host_load15",
        "15-minute load average.",
        Scrape::one(h.load_average[2]),
    );
    let m = &h.memory;
    s.gauge(
        "aura_host_memory_total_bytes",
        "Physical memory.",
        Scrape::one(m.total as f64),
    );
    s.gauge(
        "aura_host_memory_available_bytes",
        "Memory available for new work (MemAvailable).",
        Scrape::one(m.available as f64),
    );
    s.gauge(
        "aura_host_swap_total_bytes",
        "Swap space.",
        Scrape::one(m.swap_total as f64),
    );
    s.gauge(
        "aura_host_swap_free_bytes",
        "Unused swap space.",
        Scrape::one(m.swap_free as f64),
    );
    if let Some(p) = &h.pressure {
        let mut ratios = Vec::new();
        let mut stalled = Vec::new();
        for (resource, r) in [("cpu", &p.cpu), ("memory", &p.memory), ("io", &p.io)] {
            for (kind, stall) in [("some", Some(&r.some)), ("full", r.full.as_ref())] {
                let Some(stall) = stall else { continue };
                ratios.push((
                    labels(&[("resource", resource), ("kind", kind)]),
                    stall.avg10,
                ));
                stalled.push((
                    labels(&[("resource", resource), ("kind", kind)]),
                    stall.total_usec as f64 / 1e6,
                ));
            }
        }
        s.gauge(
            "aura_host_pressure_avg10_ratio",
            "PSI: share of the last 10 s that tasks stalled on the resource.",
            ratios,
        );
        s.counter(
            "aura_host_pressure_stalled_seconds",
            "PSI: total time tasks stalled on the resource.",
            stalled,
        );
    }
    let disk = |f: fn(&aura_host::DiskStats) -> f64| {
        h.disks
            .iter()
            .map(|d| (labels(&[("device", &d.name)]), f(d)))
            .collect()
    };
    s.counter(
        "aura_host_disk_read_bytes",
        "Bytes read per block device.",
        disk(|d| d.read_bytes as f64),
    );
    s.counter(
        "aura_host_disk_written_bytes",
        "Bytes written per block device.",
        disk(|d| d.write_bytes as f64),
    );
    s.counter(
        "aura_host_disk_io_time_seconds",
        "Time each device had I/O in flight.",
        disk(|d| d.io_seconds),
    );
    let net = |f: fn(&aura_host::NetStats) -> f64| {
        h.networks
            .iter()
            .map(|n| (labels(&[("device", &n.name)]), f(n)))
            .collect()
    };
    s.counter(
        "aura_host_network_receive_bytes",
        "Bytes received per interface.",
        net(|n| n.rx_bytes as f64),
    );
    s.counter(
        "aura_host_network_transmit_bytes",
        "Bytes sent per interface.",
        net(|n| n.tx_bytes as f64),
    );
    if let Some(v) = &h.data_volume {
        s.gauge(
            "aura_host_data_volume_size_bytes",
            "Size of the volume holding the data dir.",
            Scrape::one(v.total as f64),
        );
        s.gauge(
            "aura_host_data_volume_available_bytes",
            "Space available to Aura on that volume.",
            Scrape::one(v.available as f64),
        );
    }
    if let Some(gpus) = &h.gpus {
        let gpu = |f: fn(&aura_host::GpuStats) -> Option<f64>| {
            gpus.iter()
                .filter_map(|g| f(g).map(|v| (labels(&[("gpu", &g.index.to_string())]), v)))
                .collect()
        };
        s.gauge(
            "aura_gpu_utilization_ratio",
            "GPU busy share (NVML).",
            gpu(|g| g.utilization_gpu),
        );
        s.gauge(
            "aura_gpu_memory_used_bytes",
            "GPU memory in use.",
            gpu(|g| g.memory_used_bytes.map(|b| b as f64)),
        );
        s.gauge(
            "aura_gpu_memory_total_bytes",
            "GPU memory.",
            gpu(|g| g.memory_total_bytes.map(|b| b as f64)),
        );
        s.gauge(
            "aura_gpu_temperature_celsius",
            "GPU temperature.",
            gpu(|g| g.temperature_celsius),
        );
        s.gauge(
            "aura_gpu_power_watts",
            "GPU power draw.",
            gpu(|g| g.power_watts),
        );
        s.gauge(
            "aura_gpu_encoder_utilization_ratio",
            "NVENC busy share.",
            gpu(|g| g.encoder_utilization),
        );
        s.gauge(
            "aura_gpu_decoder_utilization_ratio",
            "NVDEC busy share.",
            gpu(|g| g.decoder_utilization),
        );
        s.gauge(
            "aura_gpu_encoder_sessions",
            "Open NVENC sessions.",
            gpu(|g| g.encoder_sessions.map(f64::from)),
        );
    }
}

fn process(s: &mut Scrape, p: &ProcessSnapshot) {
    s.counter(
        "process_cpu_seconds",
        "Total user and system CPU time spent in seconds.",
        Scrape::one(p.cpu_user_seconds + p.cpu_system_seconds),
    );
    s.gauge(
        "process_resident_memory_bytes",
        "Resident memory size in bytes.",
        Scrape::one(p.rss_bytes as f64),
    );
    s.gauge(
        "process_virtual_memory_bytes",
        "Virtual memory size in bytes.",
        Scrape::one(p.virtual_bytes as f64),
    );
    s.gauge(
        "process_open_fds",
        "Number of open file descriptors.",
        Scrape::one(p.open_fds as f64),
    );
    if p.max_fds != u64::MAX {
        s.gauge(
            "process_max_fds",
            "Maximum number of open file descriptors.",
            Scrape::one(p.max_fds as f64),
        );
    }
    s.gauge(
        "process_threads",
        "Number of OS threads in the process.",
        Scrape::one(p.threads as f64),
    );
    if let Some(a) = &p.allocator {
        s.gauge(
            "aura_allocator_mapped_bytes",
            "Heap memory the allocator obtained from the OS.",
            Scrape::one(a.mapped_bytes as f64),
        );
        s.gauge(
            "aura_allocator_in_use_bytes",
            "Heap memory in allocations the daemon holds.",
            Scrape::one(a.in_use_bytes as f64),
        );
        s.gauge(
            "aura_allocator_free_bytes",
            "Heap memory free inside the allocator.",
            Scrape::one(a.free_bytes as f64),
        );
    }
    s.gauge(
        "process_start_time_seconds",
        "Start time of the process since unix epoch in seconds.",
        Scrape::one(p.start_time.unix_millis() as f64 / 1000.0),
    );
}

fn engine(s: &mut Scrape, i: &Inputs) {
    let u = &i.utilization;
    s.gauge(
        "aura_jobs_running",
        "Jobs whose process tree is running.",
        Scrape::one(u.running as f64),
    );
    s.gauge(
        "aura_jobs_queued",
        "Jobs waiting for admission.",
        Scrape::one(u.queued as f64),
    );
    s.gauge(
        "aura_jobs_max_concurrent",
        "Most jobs allowed to run at once.",
        Scrape::one(u.max_concurrent as f64),
    );
    s.gauge(
        "aura_admission_capacity_memory_bytes",
        "Memory jobs may reserve.",
        Scrape::one(u.capacity.memory_bytes as f64),
    );
    s.gauge(
        "aura_admission_reserved_memory_bytes",
        "Memory reserved by running jobs and leases.",
        Scrape::one(u.reserved_memory_bytes as f64),
    );
    s.gauge(
        "aura_admission_reserved_cpu_cores",
        "Cores reserved by running jobs and leases.",
        Scrape::one(u.reserved_cpu_cores),
    );
    s.gauge(
        "aura_admission_paused",
        "1 while a live guard holds admission back.",
        Scrape::one(f64::from(u8::from(u.admission_paused))),
    );
    s.gauge(
        "aura_memory_critical",
        "1 while memory is critical and the pressure responder may stop a job.",
        Scrape::one(f64::from(u8::from(u.memory_critical))),
    );
    s.counter(
        "aura_memory_kills",
        "Job trees killed or stopped for memory since start-up: over their limit, hit by the kernel's OOM killer, or chosen by the pressure responder.",
        [
            ("limit_exceeded", u.memory_limit_kills),
            ("oom_killed", u.oom_kills),
            ("pressure", u.pressure_victims),
        ]
        .iter()
        .map(|(reason, n)| (labels(&[("reason", reason)]), *n as f64))
        .collect(),
    );
    s.gauge(
        "aura_admission_limit_in_use",
        "Slots of each named limit held by running jobs and leases.",
        u.limits
            .iter()
            .map(|(name, l)| (labels(&[("limit", name)]), f64::from(l.in_use)))
            .collect(),
    );
    s.gauge(
        "aura_accepting",
        "1 while the daemon accepts jobs (0 while it shuts down).",
        Scrape::one(f64::from(u8::from(i.status.accepting))),
    );
    // Per-job series exist only while the job runs, so the label set stays bounded by max_concurrent.
    let job = |f: fn(&aura_model::LiveUsage) -> Option<f64>| {
        i.running
            .iter()
            .filter_map(|v| {
                v.live
                    .as_ref()
                    .and_then(f)
                    .map(|x| (labels(&[("job_id", &v.job.id.to_string())]), x))
            })
            .collect()
    };
    s.gauge(
        "aura_job_memory_bytes",
        "Memory of each running job's tree.",
        job(|l| l.memory_current.map(|b| b as f64)),
    );
    s.gauge(
        "aura_job_memory_peak_bytes",
        "Peak memory of each running job's tree so far.",
        job(|l| l.memory_peak.map(|b| b as f64)),
    );
    s.counter(
        "aura_job_cpu_seconds",
        "CPU time of each running job's tree so far.",
        job(|l| Some(l.cpu_user_secs? + l.cpu_system_secs?)),
    );
    s.gauge(
        "aura_job_processes",
        "Processes in each running job's tree.",
        job(|l| Some(f64::from(l.processes))),
    );
}

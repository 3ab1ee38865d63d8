//! `GET /metrics`: the host, the daemon process, admission, running jobs, the job lifecycle (submitted,
//! finished by outcome, run and wait time and peak memory histograms, refusals, paused admission), raised
//! warnings and event-stream subscribers as Prometheus metrics, encoded by
//! `prometheus-client` — OpenMetrics 1.0 for scrapers that ask for it (Prometheus does), the classic text
//! format 0.0.4 for everything else (curl, `promtool check metrics`, older scrapers). Named by Prometheus
//! conventions: base units, `_total` counters, ratios 0–1, the standard `process_*` family, bounded labels
//! (a job id label exists only while that job runs).
//!
//! Every value is a snapshot taken for this scrape, so the families are encoded by a `Collector` at scrape
//! time (the crate's documented way for exporters) rather than registered and updated between scrapes. The
//! lifecycle counters and histograms live in the engine (`aura_engine::JobMetricsSnapshot`: atomics fed
//! where the actor commits each event); a scrape reads them like the rest.

use aura_engine::{EngineStatus, Utilization};
use aura_host::{HostSnapshot, ProcessSnapshot};
use aura_model::JobView;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeCounterValue, EncodeGaugeValue, EncodeLabelSet, EncodeLabelValue,
    EncodeMetric, LabelValueEncoder, MetricEncoder, NoLabelSet,
};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use std::fmt::{self, Write as _};
use std::sync::Arc;

/// What one scrape shows, read before encoding so that encoding does no I/O.
#[derive(Debug)]
pub struct Inputs {
    /// The latest host sample, absent until the sampler's first one.
    pub host: Option<Arc<HostSnapshot>>,
    /// The daemon's own process; absent when reading it failed (those series are then left out).
    pub process: Option<ProcessSnapshot>,
    /// Whether the daemon accepts jobs.
    pub status: EngineStatus,
    /// Admission and job counts.
    pub utilization: Utilization,
    /// The running jobs, for the per-job series.
    pub running: Vec<JobView>,
    /// The server's event streams.
    pub streams: StreamCounts,
    /// Jobs submitted and finished, their run and wait times and peaks, refusals, paused admission and
    /// raised warnings, since start-up.
    pub jobs: aura_engine::JobMetricsSnapshot,
    /// The janitor's tasks: runs, what they freed, errors, last and next run.
    pub janitor: Option<aura_model::janitor::JanitorStatus>,
}

/// The server's event streams, for `/metrics`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamCounts {
    /// Open now.
    pub open: u64,
    /// Opened since start-up.
    pub opened: u64,
    /// Closed for falling a whole buffer behind.
    pub lagged: u64,
    /// Refused because every slot was taken.
    pub refused: u64,
    /// Open now and opened since start-up, by stream type.
    pub by_type: [StreamTypeCounts; 2],
}

/// One type of event stream (`job`: one job's, `all`: every job's and the engine's).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamTypeCounts {
    /// The type's label value.
    pub stream: &'static str,
    /// Open now.
    pub open: u64,
    /// Opened since start-up.
    pub opened: u64,
}

/// The exposition format of one answer, chosen from the request's `Accept` header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// OpenMetrics 1.0 text (`# UNIT` lines, `# EOF`, counter families named without `_total`).
    OpenMetrics,
    /// The classic Prometheus text format 0.0.4.
    Classic,
}

impl Format {
    /// OpenMetrics when the client names `application/openmetrics-text` (version 1.0.0 or unversioned)
    /// with a quality no lower than the best classic match (`text/plain` 0.0.4 or unversioned, `text/*`,
    /// `*/*`); classic otherwise, also for a missing or unparsable header. Prometheus asks for OpenMetrics
    /// at q=1 and text/plain at q=0.5; curl sends `*/*`.
    pub fn negotiate(accept: Option<&str>) -> Self {
        let mut open = 0.0_f32;
        let mut classic = 0.0_f32;
        for range in accept.unwrap_or("").split(',') {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or("").to_ascii_lowercase();
            let mut q = 1.0_f32;
            let mut version = None;
            for param in parts {
                let Some((key, value)) = param.split_once('=') else {
                    continue;
                };
                match key.trim().to_ascii_lowercase().as_str() {
                    "q" => q = value.trim().parse().unwrap_or(0.0),
                    "version" => version = Some(value.trim().to_owned()),
                    _ => {}
                }
            }
            if !(0.0..=1.0).contains(&q) {
                continue;
            }
            let best = match (media.as_str(), version.as_deref()) {
                ("application/openmetrics-text", None | Some("1.0.0")) => &mut open,
                ("text/plain", None | Some("0.0.4")) | ("text/*" | "*/*", _) => &mut classic,
                _ => continue,
            };
            *best = best.max(q);
        }
        if open > 0.0 && open >= classic {
            Format::OpenMetrics
        } else {
            Format::Classic
        }
    }

    /// The `Content-Type` of an answer in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::Classic => "text/plain; version=0.0.4; charset=utf-8",
        }
    }
}

/// Encodes one scrape in `format`.
pub fn render(inputs: Inputs, format: Format) -> Result<String, fmt::Error> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Scrape(inputs)));
    let mut out = String::with_capacity(16 * 1024);
    prometheus_client::encoding::text::encode(&mut out, &registry)?;
    Ok(match format {
        Format::OpenMetrics => out,
        Format::Classic => classic(&out),
    })
}

/// Rewrites OpenMetrics text as the classic format: the two differ, for gauges and counters, only in
/// the `# UNIT` and `# EOF` lines (dropped) and in a counter family's name in `# HELP`/`# TYPE`, which
/// the classic format spells with the `_total` its samples carry. Label escaping and numbers are the same.
fn classic(open_metrics: &str) -> String {
    let counters: Vec<&str> = open_metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(open_metrics.len() + 16 * counters.len());
    for line in open_metrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| Some((p, line.strip_prefix(p)?)));
        match meta {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                out.push_str(prefix);
                out.push_str(name);
                if counters.contains(&name) {
                    out.push_str("_total");
                }
                out.push(' ');
                out.push_str(tail);
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// The collector of one scrape: it owns the inputs (a registry keeps `'static` collectors).
#[derive(Debug)]
struct Scrape(Inputs);

impl Collector for Scrape {
    fn encode(&self, mut e: DescriptorEncoder<'_>) -> fmt::Result {
        let i = &self.0;
        if let Some(h) = &i.host {
            host(&mut e, h)?;
        }
        if let Some(p) = &i.process {
            process(&mut e, p)?;
        }
        engine(&mut e, i)?;
        lifecycle(&mut e, i)?;
        if let Some(j) = &i.janitor {
            janitor(&mut e, j)?;
        }
        Ok(())
    }
}

/// The outcomes a seen kind always shows, zero or not.
const ALWAYS_OUTCOMES: [&str; 2] = ["succeeded", "failed"];

/// A histogram as one scrape read it.
#[derive(Debug)]
struct ConstHistogram<'a>(&'a aura_engine::HistogramSnapshot);

impl EncodeMetric for ConstHistogram<'_> {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> fmt::Result {
        // The encoder spells the last bucket `+Inf` when its bound is f64::MAX; the counts stay per bucket
        // (it sums them).
        let buckets: Vec<(f64, u64)> = self
            .0
            .buckets
            .iter()
            .map(|(le, n)| (if le.is_finite() { *le } else { f64::MAX }, *n))
            .collect();
        encoder.encode_histogram::<NoLabelSet>(self.0.sum, self.0.count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// Jobs through their life since start-up: counters at the points the engine commits them, histograms
/// by kind, admission's refusals and pauses, raised warnings, event-stream subscribers.
fn lifecycle(e: &mut DescriptorEncoder<'_>, i: &Inputs) -> fmt::Result {
    let j = &i.jobs;
    // A kind's finished counters and histograms appear once a job of that kind was seen (submitted, or
    // recovered finished), and then only its outcomes that happened besides `succeeded` and `failed`
    // (the pair a failure ratio divides, present from the first job on): 14 outcomes × 3 kinds and
    // three histograms per kind, all at zero, made an idle daemon's scrape twice as long, and a scrape's
    // cost is what an exporter is judged by. `aura_jobs_submitted_total` has every kind from start-up.
    let seen = j.kinds.iter().filter(|k| {
        k.submitted > 0 || k.finished.iter().any(|(_, n)| *n > 0) || k.run_seconds.count > 0
    });
    counters(
        e,
        "aura_jobs_submitted",
        None,
        "Jobs submitted since start-up, by kind (command, ffmpeg, progress: from the spec's type).",
        j.kinds
            .iter()
            .map(|k| ([("kind", k.kind.as_str())], k.submitted)),
    )?;
    counters(
        e,
        "aura_jobs_finished",
        None,
        "Jobs that reached a final state since start-up, by kind and outcome (a requeued attempt is not final).",
        seen.clone().flat_map(|k| {
            k.finished
                .iter()
                .filter(|(outcome, n)| *n > 0 || ALWAYS_OUTCOMES.contains(outcome))
                .map(move |(outcome, n)| ([("kind", k.kind.as_str()), ("outcome", *outcome)], *n))
        }),
    )?;
    type Pick = fn(&aura_engine::KindSnapshot) -> &aura_engine::HistogramSnapshot;
    let histograms: [(&str, Unit, &str, Pick); 3] = [
        (
            "aura_job_run",
            Unit::Seconds,
            "Run time of each attempt that ran, from its start until its tree was gone.",
            |k| &k.run_seconds,
        ),
        (
            "aura_job_queue_wait",
            Unit::Seconds,
            "Time each attempt waited from entering the queue (submit, requeue, release) to its start.",
            |k| &k.queue_wait_seconds,
        ),
        (
            "aura_job_peak_memory",
            Unit::Bytes,
            "Peak memory of each attempt that ran, where it was measured.",
            |k| &k.peak_memory_bytes,
        ),
    ];
    for (name, unit, help, pick) in histograms {
        if seen.clone().next().is_none() {
            continue;
        }
        let mut descriptor = e.encode_descriptor(name, help, Some(&unit), MetricType::Histogram)?;
        for k in seen.clone() {
            let labels = [("kind", k.kind.as_str())];
            ConstHistogram(pick(k)).encode(descriptor.encode_family(&labels)?)?;
        }
    }
    ConstCounter::new(j.admission_paused_seconds).encode(e.encode_descriptor(
        "aura_admission_paused",
        "Time admission spent paused by live guards since start-up, the pause under way included.",
        Some(&Unit::Seconds),
        MetricType::Counter,
    )?)?;
    counters(
        e,
        "aura_admission_refusals",
        None,
        "Submits refused since start-up, by reason.",
        j.refusals
            .iter()
            .map(|(r, n)| ([("reason", r.as_str())], *n)),
    )?;
    gauges(
        e,
        "aura_warning_active",
        None,
        "1 while the warning is raised (see the warning_raised and warning_cleared engine events).",
        j.warnings
            .iter()
            .map(|(w, active)| ([("warning", w.as_str())], u32::from(*active))),
    )?;
    let types = i.streams.by_type.iter().filter(|t| !t.stream.is_empty());
    gauges(
        e,
        "aura_event_stream_subscribers",
        None,
        "Event streams open now, by type (job: one job's; all: every job's and the engine's).",
        types.clone().map(|t| ([("stream", t.stream)], t.open)),
    )?;
    counters(
        e,
        "aura_event_stream_subscriptions",
        None,
        "Event streams opened since start-up, by type.",
        types.map(|t| ([("stream", t.stream)], t.opened)),
    )
}

/// The janitor's series, one sample per task.
fn janitor(e: &mut DescriptorEncoder<'_>, j: &aura_model::janitor::JanitorStatus) -> fmt::Result {
    let per_task = |f: fn(&aura_model::janitor::TaskStatus) -> u64| {
        j.tasks
            .iter()
            .map(move |t| ([("task", t.task.as_str())], f(t)))
    };
    counters(
        e,
        "aura_janitor_runs",
        None,
        "Janitor task runs since start-up (dry runs not counted).",
        per_task(|t| t.totals.runs),
    )?;
    counters(
        e,
        "aura_janitor_files_removed",
        None,
        "Files and symlinks the janitor removed since start-up, by task.",
        per_task(|t| t.totals.files_removed),
    )?;
    counters(
        e,
        "aura_janitor_archived",
        None,
        "Job directories archived, logs compressed and job rows exported since start-up, by task.",
        per_task(|t| t.totals.archived),
    )?;
    counters(
        e,
        "aura_janitor_freed",
        Some(&Unit::Bytes),
        "Bytes the janitor freed on the data volume since start-up, by task.",
        per_task(|t| t.totals.bytes_freed),
    )?;
    counters(
        e,
        "aura_janitor_errors",
        None,
        "Errors janitor tasks met since start-up, by task.",
        per_task(|t| t.totals.errors),
    )?;
    let seconds = |t: Option<aura_model::Timestamp>| t.map(|t| t.unix_millis() as f64 / 1000.0);
    gauges(
        e,
        "aura_janitor_last_run_timestamp",
        Some(&Unit::Seconds),
        "When each janitor task last ran (Unix time); absent for one that never ran.",
        j.tasks
            .iter()
            .filter_map(|t| Some(([("task", t.task.as_str())], seconds(t.last_run)?))),
    )?;
    gauges(
        e,
        "aura_janitor_next_run_timestamp",
        Some(&Unit::Seconds),
        "When each scheduled janitor task runs next (Unix time); absent when it is off.",
        j.tasks
            .iter()
            .filter_map(|t| Some(([("task", t.task.as_str())], seconds(t.next_run)?))),
    )
}

fn ratio() -> Unit {
    Unit::Other("ratio".to_owned())
}

/// A family of gauges; left out when it has no samples (an empty family says nothing and some parsers
/// reject it).
fn gauges<L, V>(
    e: &mut DescriptorEncoder<'_>,
    name: &str,
    unit: Option<&Unit>,
    help: &str,
    samples: impl IntoIterator<Item = (L, V)>,
) -> fmt::Result
where
    L: EncodeLabelSet,
    V: EncodeGaugeValue,
{
    family(
        e,
        name,
        unit,
        help,
        MetricType::Gauge,
        samples,
        ConstGauge::new,
    )
}

/// A family of counters, named without `_total` (the encoder adds it to the samples).
fn counters<L, V>(
    e: &mut DescriptorEncoder<'_>,
    name: &str,
    unit: Option<&Unit>,
    help: &str,
    samples: impl IntoIterator<Item = (L, V)>,
) -> fmt::Result
where
    L: EncodeLabelSet,
    V: EncodeCounterValue,
{
    family(
        e,
        name,
        unit,
        help,
        MetricType::Counter,
        samples,
        ConstCounter::new,
    )
}

fn family<L, V, M>(
    e: &mut DescriptorEncoder<'_>,
    name: &str,
    unit: Option<&Unit>,
    help: &str,
    kind: MetricType,
    samples: impl IntoIterator<Item = (L, V)>,
    metric: fn(V) -> M,
) -> fmt::Result
where
    L: EncodeLabelSet,
    M: EncodeMetric,
{
    let mut samples = samples.into_iter().peekable();
    if samples.peek().is_none() {
        return Ok(());
    }
    let mut descriptor = e.encode_descriptor(name, help, unit, kind)?;
    for (labels, value) in samples {
        metric(value).encode(descriptor.encode_family(&labels)?)?;
    }
    Ok(())
}

/// One unlabelled gauge.
fn gauge<V: EncodeGaugeValue>(
    e: &mut DescriptorEncoder<'_>,
    name: &str,
    unit: Option<&Unit>,
    help: &str,
    value: V,
) -> fmt::Result {
    ConstGauge::new(value).encode(e.encode_descriptor(name, help, unit, MetricType::Gauge)?)
}

/// A label value from outside (a device, a limit's name) escaped as both text formats require:
/// prometheus-client writes label values verbatim.
#[derive(Debug)]
struct Escaped<'a>(&'a str);

impl EncodeLabelValue for Escaped<'_> {
    fn encode(&self, out: &mut LabelValueEncoder<'_>) -> fmt::Result {
        let mut rest = self.0;
        while let Some(at) = rest.find(['\\', '"', '\n']) {
            out.write_str(&rest[..at])?;
            out.write_str(match rest.as_bytes()[at] {
                b'\\' => "\\\\",
                b'"' => "\\\"",
                _ => "\\n",
            })?;
            rest = &rest[at + 1..];
        }
        out.write_str(rest)
    }
}

/// A float sample, or none when it is not finite: the encoder spells infinity `inf`, which neither text
/// format accepts, and a NaN from a division by an empty interval means "unknown", i.e. no sample.
fn finite(value: f64) -> Option<f64> {
    value.is_finite().then_some(value)
}

fn host(e: &mut DescriptorEncoder<'_>, h: &HostSnapshot) -> fmt::Result {
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
    counters(
        e,
        "aura_host_cpu",
        Some(&Unit::Seconds),
        "CPU time of the whole host by mode, summed over cores.",
        modes.map(|(mode, v)| ([("mode", mode)], v)),
    )?;
    gauges(
        e,
        "aura_host_cpu_busy",
        Some(&ratio()),
        "Share of the host's CPU busy over the last sample interval.",
        h.cpu
            .busy_ratio
            .and_then(finite)
            .map(|v| ([] as [(&str, &str); 0], v)),
    )?;
    gauges(
        e,
        "aura_host_cpu_core_busy",
        Some(&ratio()),
        "Share of each core busy over the last sample interval.",
        h.cpu
            .per_core
            .iter()
            .flatten()
            .enumerate()
            .filter_map(|(i, v)| Some(([("cpu", i)], finite(*v)?))),
    )?;
    for (name, help, value) in [
        (
            "aura_host_load1",
            "1-minute load average.",
            h.load_average[0],
        ),
        (
            "aura_host_load5",
            "5-minute load average.",
            h.load_average[1],
        ),
        (
            "aura_host_load15",
            "15-minute load average.",
            h.load_average[2],
        ),
    ] {
        gauge(e, name, None, help, value)?;
    }
    let m = &h.memory;
    for (name, help, value) in [
        ("aura_host_memory_total", "Physical memory.", m.total),
        (
            "aura_host_memory_available",
            "Memory available for new work (MemAvailable).",
            m.available,
        ),
        ("aura_host_swap_total", "Swap space.", m.swap_total),
        ("aura_host_swap_free", "Unused swap space.", m.swap_free),
    ] {
        gauge(e, name, Some(&Unit::Bytes), help, value)?;
    }
    if let Some(p) = &h.pressure {
        let stalls: Vec<_> = [("cpu", &p.cpu), ("memory", &p.memory), ("io", &p.io)]
            .into_iter()
            .flat_map(|(resource, r)| {
                [("some", Some(&r.some)), ("full", r.full.as_ref())]
                    .into_iter()
                    .filter_map(move |(kind, stall)| {
                        Some(([("resource", resource), ("kind", kind)], stall?))
                    })
            })
            .collect();
        gauges(
            e,
            "aura_host_pressure_avg10",
            Some(&ratio()),
            "PSI: share of the last 10 s that tasks stalled on the resource.",
            stalls.iter().map(|(l, s)| (*l, s.avg10)),
        )?;
        counters(
            e,
            "aura_host_pressure_stalled",
            Some(&Unit::Seconds),
            "PSI: total time tasks stalled on the resource.",
            stalls.iter().map(|(l, s)| (*l, s.total_usec as f64 / 1e6)),
        )?;
    }
    let disk = |f: fn(&aura_host::DiskStats) -> f64| {
        h.disks
            .iter()
            .map(move |d| ([("device", Escaped(&d.name))], f(d)))
    };
    for (name, unit, help, f) in [
        (
            "aura_host_disk_read",
            Unit::Bytes,
            "Bytes read per block device.",
            (|d| d.read_bytes as f64) as fn(&aura_host::DiskStats) -> f64,
        ),
        (
            "aura_host_disk_written",
            Unit::Bytes,
            "Bytes written per block device.",
            |d| d.write_bytes as f64,
        ),
        (
            "aura_host_disk_io_time",
            Unit::Seconds,
            "Time each device had I/O in flight.",
            |d| d.io_seconds,
        ),
    ] {
        counters(e, name, Some(&unit), help, disk(f))?;
    }
    let net = |f: fn(&aura_host::NetStats) -> u64| {
        h.networks
            .iter()
            .map(move |n| ([("device", Escaped(&n.name))], f(n)))
    };
    counters(
        e,
        "aura_host_network_receive",
        Some(&Unit::Bytes),
        "Bytes received per interface.",
        net(|n| n.rx_bytes),
    )?;
    counters(
        e,
        "aura_host_network_transmit",
        Some(&Unit::Bytes),
        "Bytes sent per interface.",
        net(|n| n.tx_bytes),
    )?;
    if let Some(v) = &h.data_volume {
        gauge(
            e,
            "aura_host_data_volume_size",
            Some(&Unit::Bytes),
            "Size of the volume holding the data dir.",
            v.total,
        )?;
        gauge(
            e,
            "aura_host_data_volume_available",
            Some(&Unit::Bytes),
            "Space available to Aura on that volume.",
            v.available,
        )?;
    }
    if let Some(gpus) = &h.gpus {
        gpu_families(e, gpus)?;
    }
    Ok(())
}

fn gpu_families(e: &mut DescriptorEncoder<'_>, gpus: &[aura_host::GpuStats]) -> fmt::Result {
    type Read = fn(&aura_host::GpuStats) -> Option<f64>;
    let watts = Unit::Other("watts".to_owned());
    let families: [(&str, Option<&Unit>, &str, Read); 8] = [
        (
            "aura_gpu_utilization",
            Some(&ratio()),
            "GPU busy share (NVML).",
            |g| g.utilization_gpu,
        ),
        (
            "aura_gpu_memory_used",
            Some(&Unit::Bytes),
            "GPU memory in use.",
            |g| g.memory_used_bytes.map(|b| b as f64),
        ),
        (
            "aura_gpu_memory_total",
            Some(&Unit::Bytes),
            "GPU memory.",
            |g| g.memory_total_bytes.map(|b| b as f64),
        ),
        (
            "aura_gpu_temperature",
            Some(&Unit::Celsius),
            "GPU temperature.",
            |g| g.temperature_celsius,
        ),
        ("aura_gpu_power", Some(&watts), "GPU power draw.", |g| {
            g.power_watts
        }),
        (
            "aura_gpu_encoder_utilization",
            Some(&ratio()),
            "NVENC busy share.",
            |g| g.encoder_utilization,
        ),
        (
            "aura_gpu_decoder_utilization",
            Some(&ratio()),
            "NVDEC busy share.",
            |g| g.decoder_utilization,
        ),
        (
            "aura_gpu_encoder_sessions",
            None,
            "Open NVENC sessions.",
            |g| g.encoder_sessions.map(f64::from),
        ),
    ];
    for (name, unit, help, read) in families {
        gauges(
            e,
            name,
            unit,
            help,
            gpus.iter()
                .filter_map(|g| Some(([("gpu", g.index)], finite(read(g)?)?))),
        )?;
    }
    Ok(())
}

fn process(e: &mut DescriptorEncoder<'_>, p: &ProcessSnapshot) -> fmt::Result {
    counters(
        e,
        "process_cpu",
        Some(&Unit::Seconds),
        "Total user and system CPU time spent in seconds.",
        [(
            [] as [(&str, &str); 0],
            p.cpu_user_seconds + p.cpu_system_seconds,
        )],
    )?;
    gauge(
        e,
        "process_resident_memory",
        Some(&Unit::Bytes),
        "Resident memory size in bytes.",
        p.rss_bytes,
    )?;
    gauge(
        e,
        "process_virtual_memory",
        Some(&Unit::Bytes),
        "Virtual memory size in bytes.",
        p.virtual_bytes,
    )?;
    gauge(
        e,
        "process_open_fds",
        None,
        "Number of open file descriptors.",
        p.open_fds,
    )?;
    if p.max_fds != u64::MAX {
        gauge(
            e,
            "process_max_fds",
            None,
            "Maximum number of open file descriptors.",
            p.max_fds,
        )?;
    }
    gauge(
        e,
        "process_threads",
        None,
        "Number of OS threads in the process.",
        p.threads,
    )?;
    if let Some(a) = &p.allocator {
        for (name, help, value) in [
            (
                "aura_allocator_mapped",
                "Heap memory the allocator obtained from the OS.",
                a.mapped_bytes,
            ),
            (
                "aura_allocator_in_use",
                "Heap memory in allocations the daemon holds.",
                a.in_use_bytes,
            ),
            (
                "aura_allocator_free",
                "Heap memory free inside the allocator.",
                a.free_bytes,
            ),
        ] {
            gauge(e, name, Some(&Unit::Bytes), help, value)?;
        }
    }
    gauge(
        e,
        "process_start_time",
        Some(&Unit::Seconds),
        "Start time of the process since unix epoch in seconds.",
        p.start_time.unix_millis() as f64 / 1000.0,
    )
}

fn engine(e: &mut DescriptorEncoder<'_>, i: &Inputs) -> fmt::Result {
    let u = &i.utilization;
    gauge(
        e,
        "aura_jobs_running",
        None,
        "Jobs whose process tree is running.",
        u.running,
    )?;
    gauge(
        e,
        "aura_jobs_queued",
        None,
        "Jobs waiting for admission.",
        u.queued,
    )?;
    let status = &i.status;
    gauge(
        e,
        "aura_jobs_paused",
        None,
        "Jobs an operator paused: their trees frozen, their memory kept.",
        status.paused_jobs,
    )?;
    gauge(
        e,
        "aura_jobs_held",
        None,
        "Queued jobs an operator holds back from starting.",
        status.held,
    )?;
    gauge(
        e,
        "aura_node_draining",
        None,
        "1 while an operator has drained the node: nothing new starts, running jobs finish.",
        u32::from(status.draining),
    )?;
    gauge(
        e,
        "aura_cpu_throttled",
        None,
        "1 while running jobs' CPU is capped because the machine is busy outside Aura.",
        u32::from(status.throttled.is_some()),
    )?;
    gauge(
        e,
        "aura_jobs_max_concurrent",
        None,
        "Most jobs allowed to run at once.",
        u.max_concurrent,
    )?;
    gauge(
        e,
        "aura_admission_capacity_memory",
        Some(&Unit::Bytes),
        "Memory jobs may reserve.",
        u.capacity.memory_bytes,
    )?;
    gauge(
        e,
        "aura_admission_reserved_memory",
        Some(&Unit::Bytes),
        "Memory reserved by running jobs and leases.",
        u.reserved_memory_bytes,
    )?;
    gauge(
        e,
        "aura_admission_reserved_cpu_cores",
        None,
        "Cores reserved by running jobs and leases.",
        u.reserved_cpu_cores,
    )?;
    gauge(
        e,
        "aura_admission_paused",
        None,
        "1 while a live guard holds admission back.",
        u32::from(u.admission_paused),
    )?;
    gauge(
        e,
        "aura_memory_critical",
        None,
        "1 while memory is critical and the pressure responder may stop a job.",
        u32::from(u.memory_critical),
    )?;
    counters(
        e,
        "aura_memory_kills",
        None,
        "Job trees killed or stopped for memory since start-up: over their limit, hit by the kernel's OOM killer, or chosen by the pressure responder.",
        [
            ("limit_exceeded", u.memory_limit_kills),
            ("oom_killed", u.oom_kills),
            ("pressure", u.pressure_victims),
        ]
        .map(|(reason, n)| ([("reason", reason)], n)),
    )?;
    gauges(
        e,
        "aura_admission_limit_in_use",
        None,
        "Slots of each named limit held by running jobs and leases.",
        u.limits
            .iter()
            .map(|(name, l)| ([("limit", Escaped(name))], l.in_use)),
    )?;
    gauge(
        e,
        "aura_accepting",
        None,
        "1 while the daemon accepts jobs (0 while it shuts down).",
        u32::from(i.status.accepting),
    )?;
    // Per-job series exist only while the job runs, so the label set stays bounded by max_concurrent.
    let job = |f: fn(&aura_model::LiveUsage) -> Option<f64>| {
        i.running.iter().filter_map(move |v| {
            let value = finite(v.live.as_ref().and_then(f)?)?;
            Some(([("job_id", v.job.id.0)], value))
        })
    };
    gauges(
        e,
        "aura_job_memory",
        Some(&Unit::Bytes),
        "Memory of each running job's tree.",
        job(|l| l.memory_current.map(|b| b as f64)),
    )?;
    gauges(
        e,
        "aura_job_memory_peak",
        Some(&Unit::Bytes),
        "Peak memory of each running job's tree so far.",
        job(|l| l.memory_peak.map(|b| b as f64)),
    )?;
    counters(
        e,
        "aura_job_cpu",
        Some(&Unit::Seconds),
        "CPU time of each running job's tree so far.",
        job(|l| Some(l.cpu_user_secs? + l.cpu_system_secs?)),
    )?;
    gauges(
        e,
        "aura_job_processes",
        None,
        "Processes in each running job's tree.",
        job(|l| Some(f64::from(l.processes))),
    )?;
    gauges(
        e,
        "aura_job_progress_ratio",
        None,
        "Share of each running job's work done (0-1), for jobs that report progress and whose length is known.",
        job(|l| Some(l.progress.as_ref()?.percent? / 100.0)),
    )?;
    gauges(
        e,
        "aura_job_fps",
        None,
        "Frames encoded per second by each running FFmpeg job.",
        job(|l| l.progress.as_ref()?.fps),
    )?;
    gauges(
        e,
        "aura_job_speed_ratio",
        None,
        "Media seconds written per second by each running job that reports progress.",
        job(|l| l.progress.as_ref()?.speed),
    )?;
    gauges(
        e,
        "aura_job_eta",
        Some(&Unit::Seconds),
        "Estimated time left of each running job that reports progress.",
        job(|l| l.progress.as_ref()?.eta_secs),
    )?;
    gauges(
        e,
        "aura_job_output",
        Some(&Unit::Bytes),
        "Output written so far by each running job that reports progress.",
        job(|l| l.progress.as_ref()?.total_size.map(|b| b as f64)),
    )?;
    gauges(
        e,
        "aura_job_progress_idle",
        Some(&Unit::Seconds),
        "Time since each running job's progress last advanced (stall detection judges it).",
        job(|l| l.progress.as_ref()?.idle_secs),
    )?;
    let s = &i.streams;
    gauge(
        e,
        "aura_event_streams",
        None,
        "Event streams open now.",
        s.open,
    )?;
    counters(
        e,
        "aura_event_streams_closed",
        None,
        "Event streams the server ended since start-up: fallen too far behind, or refused for want of a slot.",
        [("lagged", s.lagged), ("refused", s.refused)].map(|(reason, n)| ([("reason", reason)], n)),
    )?;
    ConstCounter::new(s.opened).encode(e.encode_descriptor(
        "aura_event_streams_opened",
        "Event streams opened since start-up.",
        None,
        MetricType::Counter,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

    #[test]
    fn negotiates_the_format_from_accept() {
        use Format::{Classic, OpenMetrics};
        let cases = [
            (Some(PROMETHEUS_ACCEPT), OpenMetrics),
            (None, Classic),
            (Some(""), Classic),
            (Some("*/*"), Classic),
            (Some("text/plain"), Classic),
            (Some("application/openmetrics-text"), OpenMetrics),
            (
                Some("Application/OpenMetrics-Text; Version=1.0.0"),
                OpenMetrics,
            ),
            // Only a version this encoder does not write.
            (Some("application/openmetrics-text;version=0.0.1"), Classic),
            (Some("application/openmetrics-text;q=0"), Classic),
            (
                Some("text/plain;q=0.9, application/openmetrics-text;q=0.5"),
                Classic,
            ),
            (
                Some("text/plain;q=0.5, application/openmetrics-text;q=0.5"),
                OpenMetrics,
            ),
            (
                Some("text/plain;version=0.0.4;q=0.1, application/openmetrics-text;q=0.9"),
                OpenMetrics,
            ),
            // An out-of-range or unparsable quality does not count.
            (Some("application/openmetrics-text;q=7"), Classic),
            (Some("application/openmetrics-text;q=x"), Classic),
            (Some(";;,,=;q=;,"), Classic),
        ];
        for (accept, expected) in cases {
            assert_eq!(Format::negotiate(accept), expected, "Accept: {accept:?}");
        }
        assert!(OpenMetrics
            .content_type()
            .starts_with("application/openmetrics-text; version=1.0.0"));
        assert!(Classic
            .content_type()
            .starts_with("text/plain; version=0.0.4"));
    }

    #[test]
    fn classic_names_counter_families_with_total_and_drops_openmetrics_lines() {
        let open = "# HELP a_seconds Time.\n# TYPE a_seconds counter\n# UNIT a_seconds seconds\n\
                    a_seconds_total{mode=\"x\"} 1.5\n\
                    # HELP b_bytes Size of a thing.\n# TYPE b_bytes gauge\n# UNIT b_bytes bytes\nb_bytes 3\n# EOF\n";
        assert_eq!(
            classic(open),
            "# HELP a_seconds_total Time.\n# TYPE a_seconds_total counter\na_seconds_total{mode=\"x\"} 1.5\n\
             # HELP b_bytes Size of a thing.\n# TYPE b_bytes gauge\nb_bytes 3\n"
        );
    }

    /// A real host sample and process reading, with engine views as the API serves them.
    fn inputs() -> Inputs {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut collector = aura_host::Collector::new(dir.path().to_path_buf(), true);
        let mut host = collector.sample().expect("a first host sample");
        // A second sample gives the busy ratios (they need an interval).
        if let Ok(second) = collector.sample() {
            host = second;
        }
        host.networks.push(aura_host::NetStats {
            name: "we\"ird\\".to_owned(),
            ..host
                .networks
                .first()
                .cloned()
                .expect("a network interface (lo at least)")
        });
        let status = json!({
            "backend": "hybrid", "backend_detail": "test", "accepting": true,
            "max_concurrent": 2, "running": 1, "queued": 3,
            "draining": true, "paused_jobs": 2, "held": 4,
            "throttled": "CPU outside Aura 90 % (throttle above 80 %)"
        });
        let utilization = json!({
            "capacity": {"memory_bytes": 1u64 << 30, "cpu_millis": 2000, "disk_bytes": 0, "gpus": []},
            "reserved_memory_bytes": 1u64 << 20, "available_memory_bytes": 1u64 << 29,
            "reserved_cpu_cores": 0.5, "reserved_disk_bytes": 0, "running": 1, "queued": 3,
            "max_concurrent": 2, "available_slots": 1, "max_jobs_at_default_request": 4,
            "limits": {"nvenc": {"in_use": 1, "max_concurrent": 3, "per_minute": null}},
            "host": null, "admission_paused": false, "paused_reason": null, "memory_critical": true,
            "memory_limit_kills": 1, "oom_kills": 2, "pressure_victims": 3
        });
        Inputs {
            host: Some(Arc::new(host)),
            process: Some(aura_host::process_snapshot().expect("this process")),
            status: serde_json::from_value(status).expect("an EngineStatus"),
            utilization: serde_json::from_value(utilization).expect("a Utilization"),
            running: Vec::new(),
            streams: StreamCounts::default(),
            jobs: aura_engine::JobMetricsSnapshot::default(),
            janitor: Some(
                serde_json::from_value(serde_json::json!({
                    "low_free_disk": 0.1,
                    "tasks": [{
                        "task": "tmp", "enabled": true, "every_seconds": 3600,
                        "older_than_seconds": 86400, "last_run": "2026-12-07T08:00:00.000Z",
                        "next_run": "2026-12-07T09:00:00.000Z",
                        "totals": {"runs": 2, "files_removed": 5, "archived": 0, "bytes_freed": 20480, "errors": 1}
                    }]
                }))
                .expect("a JanitorStatus"),
            ),
        }
    }

    /// Every sample belongs to the family declared just before it: the gauge's own name, a counter's name
    /// with `_total` (OpenMetrics) or the `_total` family itself (classic).
    fn check_structure(text: &str, format: Format) {
        let mut family: Option<(String, String)> = None;
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
                if format == Format::Classic && kind == "counter" {
                    assert!(name.ends_with("_total"), "classic counter family {name}");
                }
                family = Some((name.to_owned(), kind.to_owned()));
            } else if !line.starts_with('#') {
                let (name, kind) = family.as_ref().expect("a sample after a TYPE line");
                let sample = line.split(['{', ' ']).next().expect("a sample name");
                if kind == "histogram" {
                    let suffix = sample.strip_prefix(name.as_str()).unwrap_or(sample);
                    assert!(["_bucket", "_sum", "_count"].contains(&suffix), "{line}");
                    continue;
                }
                let expected = match (format, kind.as_str()) {
                    (Format::OpenMetrics, "counter") => format!("{name}_total"),
                    _ => name.clone(),
                };
                assert_eq!(sample, expected, "{line}");
            }
        }
    }

    #[test]
    fn a_real_scrape_in_both_formats() {
        let open = render(inputs(), Format::OpenMetrics).expect("encodes");
        assert!(open.ends_with("# EOF\n"), "{open}");
        check_structure(&open, Format::OpenMetrics);
        for expected in [
            "# TYPE aura_host_cpu_seconds counter\n# UNIT aura_host_cpu_seconds seconds\n",
            "aura_host_cpu_seconds_total{mode=\"user\"} ",
            "# UNIT aura_host_memory_total_bytes bytes\n",
            "# TYPE aura_host_load1 gauge\n",
            "aura_host_network_receive_bytes_total{device=\"we\\\"ird\\\\\"} ",
            "aura_memory_kills_total{reason=\"oom_killed\"} 2\n",
            "aura_admission_limit_in_use{limit=\"nvenc\"} 1\n",
            "aura_memory_critical 1\n",
            "aura_jobs_queued 3\n",
            "# HELP aura_jobs_paused Jobs an operator paused",
            "aura_jobs_paused 2\n",
            "aura_jobs_held 4\n",
            "aura_node_draining 1\n",
            "aura_cpu_throttled 1\n",
            "process_resident_memory_bytes ",
            "# UNIT aura_host_cpu_busy_ratio ratio\n",
            // Submitted by every kind, refusals, pauses and warnings exist from the start, at zero.
            "aura_jobs_submitted_total{kind=\"ffmpeg\"} 0\n",
            "aura_admission_paused_seconds_total 0.0\n",
            "aura_admission_refusals_total{reason=\"token_cap\"} 0\n",
            "aura_warning_active{warning=\"gpu_temperature\"} 0\n",
        ] {
            assert!(open.contains(expected), "missing {expected:?} in\n{open}");
        }
        // No job runs, so no per-job family is declared at all.
        assert!(!open.contains("aura_job_memory"), "{open}");
        // No kind seen yet: no finished counter and no histogram, not 14 outcomes × 3 kinds of zeros.
        assert!(!open.contains("aura_jobs_finished_total"), "{open}");
        assert!(!open.contains("aura_job_run_seconds"), "{open}");
        let mut seen = inputs();
        seen.jobs.kinds[0].submitted = 2;
        seen.jobs.kinds[0].finished[1].1 = 1; // the second outcome
        seen.jobs.kinds[0].finished[6].1 = 1; // and the seventh
        let seen = render(seen, Format::OpenMetrics).expect("encodes");
        check_structure(&seen, Format::OpenMetrics);
        let kind = aura_engine::JobKind::ALL[0].as_str();
        let finished: Vec<&str> = seen
            .lines()
            .filter(|l| l.starts_with("aura_jobs_finished_total{"))
            .collect();
        assert_eq!(finished.len(), 3, "{finished:?}");
        for outcome in ["succeeded", "failed", aura_engine::OUTCOMES[6]] {
            assert!(
                finished
                    .iter()
                    .any(|l| l.contains(&format!("kind=\"{kind}\",outcome=\"{outcome}\""))),
                "{outcome}: {finished:?}"
            );
        }
        for expected in [
            "# TYPE aura_job_queue_wait_seconds histogram\n".to_owned(),
            format!("aura_job_run_seconds_bucket{{le=\"28800.0\",kind=\"{kind}\"}} 0\n"),
            format!("aura_job_run_seconds_bucket{{le=\"+Inf\",kind=\"{kind}\"}} 0\n"),
            format!("aura_job_peak_memory_bytes_count{{kind=\"{kind}\"}} 0\n"),
        ] {
            assert!(seen.contains(&expected), "missing {expected:?} in\n{seen}");
        }

        let text = render(inputs(), Format::Classic).expect("encodes");
        check_structure(&text, Format::Classic);
        assert!(
            !text.contains("# EOF") && !text.contains("# UNIT"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE aura_host_cpu_seconds_total counter\n"),
            "{text}"
        );
        assert!(text.contains("# HELP process_cpu_seconds_total "), "{text}");
        assert!(
            text.contains("# TYPE aura_admission_paused_seconds_total counter\n"),
            "{text}"
        );
        for expected in [
            "aura_event_streams 0\n",
            "aura_event_streams_opened_total 0\n",
            "aura_event_streams_closed_total{reason=\"lagged\"} 0\n",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in\n{text}");
        }
    }
}

//! Cost of encoding one `/metrics` scrape (the snapshots already taken): prometheus-client's OpenMetrics,
//! and the classic text derived from it, against the hand-written encoder it replaced (BENCHMARKS.md,
//! "`/metrics` on prometheus-client"). Real host and process snapshots, engine views as the API serves
//! them, 8 running jobs.
//!
//! `cargo bench -p aura-server --bench scrape [-- ROUNDS]`. Every round times each encoder once (a batch
//! of encodes each), the order rotating every round, so that load on a shared machine falls on all of
//! them alike; the report gives medians over rounds and the median of the per-round ratios.

#![allow(missing_docs)] // a bench binary: nothing here is an API

#[path = "scrape/handwritten.rs"]
mod old;

use aura_model::{Job, JobId, JobSpec, JobView, Timestamp};
use aura_server::prometheus::{render, Format, Inputs};
use serde_json::json;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

const BATCH: usize = 50;

fn inputs() -> Inputs {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut collector = aura_host::Collector::new(dir.path().to_path_buf(), true);
    let _ = collector.sample().expect("a first host sample");
    std::thread::sleep(std::time::Duration::from_millis(100));
    let host = collector.sample().expect("a second host sample");
    let status = json!({
        "backend": "hybrid", "backend_detail": "bench", "accepting": true,
        "max_concurrent": 8, "running": 8, "queued": 3
    });
    let utilization = json!({
        "capacity": {"memory_bytes": 1u64 << 34, "cpu_millis": 16000, "disk_bytes": 0, "gpus": []},
        "reserved_memory_bytes": 1u64 << 33, "available_memory_bytes": 1u64 << 33,
        "reserved_cpu_cores": 8.0, "reserved_disk_bytes": 0, "running": 8, "queued": 3,
        "max_concurrent": 8, "available_slots": 0, "max_jobs_at_default_request": 4,
        "limits": {"nvenc": {"in_use": 2, "max_concurrent": 3, "per_minute": null},
                   "tts": {"in_use": 1, "max_concurrent": null, "per_minute": 60}},
        "host": null, "admission_paused": false, "paused_reason": null, "memory_critical": false,
        "memory_limit_kills": 1, "oom_kills": 2, "pressure_victims": 3
    });
    Inputs {
        host: Some(Arc::new(host)),
        process: Some(aura_host::process_snapshot().expect("this process")),
        status: serde_json::from_value(status).expect("an EngineStatus"),
        utilization: serde_json::from_value(utilization).expect("a Utilization"),
        running: (1..=8).map(running_job).collect(),
        streams: Default::default(),
        jobs: Default::default(),
        janitor: None,
    }
}

/// A job as `/metrics` sees it: its id and live figures (the encoder reads nothing else of it).
fn running_job(id: i64) -> JobView {
    let spec = JobSpec::new("ffmpeg", ["-i", "in.mov", "out.mp4"]);
    let live = json!({
        "memory_current": 300_000_000u64 + id as u64, "memory_peak": 400_000_000u64,
        "memory_source": null, "cpu_user_secs": 12.5, "cpu_system_secs": 1.25,
        "processes": 3, "peak_processes": 3
    });
    JobView {
        job: Job::new(JobId(id), spec, Timestamp::now()),
        live: Some(serde_json::from_value(live).expect("a LiveUsage")),
        waiting: None,
    }
}

fn copy(i: &Inputs) -> Inputs {
    Inputs {
        host: i.host.clone(),
        process: i.process.clone(),
        status: i.status.clone(),
        utilization: i.utilization.clone(),
        running: i.running.clone(),
        streams: i.streams,
        jobs: i.jobs.clone(),
        janitor: i.janitor.clone(),
    }
}

fn old_copy(i: &Inputs) -> old::Inputs {
    old::Inputs {
        host: i.host.clone(),
        process: i.process.clone(),
        status: i.status.clone(),
        utilization: i.utilization.clone(),
        running: i.running.clone(),
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let rounds: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(400);
    let base = inputs();
    // The copies are made outside the timed part: a scrape builds its inputs anyway.
    let mut times = [Vec::new(), Vec::new(), Vec::new()];
    let names = [
        "OpenMetrics (prometheus-client)",
        "classic (derived)",
        "hand-written (before)",
    ];
    let mut sizes = [0usize; 3];
    for round in 0..rounds {
        for k in 0..3 {
            let which = (round + k) % 3;
            let mut batch: Vec<Inputs> = (0..BATCH).map(|_| copy(&base)).collect();
            let mut old_batch: Vec<old::Inputs> = (0..BATCH).map(|_| old_copy(&base)).collect();
            let start = Instant::now();
            for _ in 0..BATCH {
                let text = match which {
                    0 => render(batch.pop().expect("a copy"), Format::OpenMetrics),
                    1 => render(batch.pop().expect("a copy"), Format::Classic),
                    _ => old::render(old_batch.pop().expect("a copy")),
                }
                .expect("encodes");
                sizes[which] = black_box(text).len();
            }
            times[which].push(start.elapsed().as_secs_f64() * 1e6 / BATCH as f64);
        }
    }
    let old_times = times[2].clone();
    println!("encoding one scrape, {rounds} rounds of {BATCH}, medians:");
    for (k, name) in names.iter().enumerate() {
        let mut ratios: Vec<f64> = times[k]
            .iter()
            .zip(&old_times)
            .map(|(a, b)| a / b)
            .collect();
        let ratio = median(&mut ratios);
        let t = median(&mut times[k].clone());
        println!(
            "  {name:32} {t:7.1} µs  {:5} bytes  {ratio:.2}× the hand-written",
            sizes[k]
        );
    }
}

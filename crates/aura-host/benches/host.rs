//! Cost of one full host sample (every /proc file, statvfs, NVML when present), wall time.
//! The sampler's own `sample_cpu_seconds` gives the CPU-time view of the same work.
// `criterion_group!` generates a public `fn benches` that cannot carry a doc comment.
#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, Criterion};
use std::hint::black_box;

use aura_host::{process_snapshot, Collector};

fn bench(c: &mut Criterion) {
    let dir = std::env::temp_dir();
    let mut collector = Collector::new(dir, true);
    // Prime the previous counters so the measured samples include the delta work.
    let first = collector.sample().expect("first sample");
    eprintln!(
        "gpus: {}",
        first
            .gpu_unavailable
            .as_deref()
            .unwrap_or("NVML present (included in the figure)")
    );
    c.bench_function("host_sample", |b| {
        b.iter(|| black_box(collector.sample().expect("sample")))
    });
    let mut cpu = Vec::new();
    for _ in 0..200 {
        cpu.push(collector.sample().expect("sample").sample_cpu_seconds);
    }
    cpu.sort_by(f64::total_cmp);
    eprintln!(
        "host_sample thread CPU time: median {:.1} µs, p95 {:.1} µs",
        cpu[100] * 1e6,
        cpu[190] * 1e6
    );
    c.bench_function("process_snapshot", |b| {
        b.iter(|| black_box(process_snapshot().expect("process snapshot")))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);

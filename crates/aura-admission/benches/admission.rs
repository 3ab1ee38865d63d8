//! Criterion benchmarks of the admission core: reserve+release of a lease, and a scheduling pass over
//! 10,000 queued jobs. Figures go to BENCHMARKS.md.

use aura_admission::{Admission, Capacity, LimitConfig, Queued, Request, Scheduler};
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use std::collections::BTreeMap;
use std::time::Instant;

const GIB: u64 = 1 << 30;

fn admission() -> Admission {
    let capacity = Capacity {
        memory_bytes: 64 * GIB,
        cpu_millis: 32_000,
        disk_bytes: 1 << 40,
        gpus: vec![],
    };
    let limits = BTreeMap::from([(
        "openai".to_owned(),
        LimitConfig {
            max_concurrent: Some(4),
            per_minute: None,
        },
    )]);
    Admission::new(capacity, limits)
}

fn reserve_release(c: &mut Criterion) {
    let a = admission();
    let mut request = Request::memory(2 * GIB);
    request.cpu_millis = 1000;
    let now = Instant::now();
    c.bench_function("reserve+release (memory+cpu)", |b| {
        b.iter(|| drop(black_box(a.try_reserve(black_box(&request), now))))
    });
    let mut with_provider = request.clone();
    with_provider.providers.insert("openai".into());
    c.bench_function("reserve+release (memory+cpu+provider)", |b| {
        b.iter(|| drop(black_box(a.try_reserve(black_box(&with_provider), now))))
    });
}

/// The machine is full (the worst case: every queued job is examined and none starts), so the pass is
/// measured without changing state between iterations.
fn scheduling_pass(c: &mut Criterion) {
    let a = admission();
    let _running = a
        .try_reserve(&Request::memory(63 * GIB), Instant::now())
        .expect("fits");
    let queue: Vec<(i64, Request)> = (0..10_000)
        .map(|i| {
            // 2–5 GiB: none fits the 1 GiB left, so no iteration grants or releases anything.
            let mut r = Request::memory((2 + i % 4) * GIB);
            r.cpu_millis = 500;
            (i as i64, r)
        })
        .collect();
    let now = Instant::now();
    c.bench_function("scheduling pass over 10,000 queued jobs", |b| {
        b.iter(|| {
            let started = Scheduler::pass(
                &a,
                queue.iter().map(|(k, r)| Queued {
                    key: *k,
                    request: r,
                }),
                now,
                usize::MAX,
            );
            black_box(started.len())
        })
    });
}

criterion_group!(benches, reserve_release, scheduling_pass);
criterion_main!(benches);

//! Criterion benchmarks of the admission core: reserve+release of a lease, and a scheduling pass over
//! 10,000 queued jobs. Figures go to BENCHMARKS.md.
// `criterion_group!` generates a public `fn benches` that cannot carry a doc comment.
#![allow(missing_docs)]

use aura_admission::{Admission, Capacity, LimitConfig, LiveMemory, Queued, Request, Scheduler};
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
/// measured without changing state between iterations; once by reservations alone, once with the running
/// jobs' real use reported (then every shortfall names both memory figures).
fn scheduling_pass(c: &mut Criterion) {
    pass_over_a_full_machine(c, "scheduling pass over 10,000 queued jobs", None);
    let live = LiveMemory {
        overrun_bytes: 4 * GIB,
        within_bytes: 40 * GIB,
        available_bytes: Some(18 * GIB),
    };
    pass_over_a_full_machine(
        c,
        "scheduling pass over 10,000 queued jobs, live usage",
        Some(live),
    );
}

fn pass_over_a_full_machine(c: &mut Criterion, name: &str, live: Option<LiveMemory>) {
    let a = admission();
    let _running = a
        .try_reserve(&Request::memory(63 * GIB), Instant::now())
        .expect("fits");
    if let Some(live) = live {
        a.set_live_memory(live);
    }
    let queue: Vec<(i64, Request)> = (0..10_000)
        .map(|i| {
            // 2–5 GiB: none fits the 1 GiB left, so no iteration grants or releases anything.
            let mut r = Request::memory((2 + i % 4) * GIB);
            r.cpu_millis = 500;
            (i as i64, r)
        })
        .collect();
    let now = Instant::now();
    c.bench_function(name, |b| {
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

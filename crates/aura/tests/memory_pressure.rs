//! The memory-truth scenario on the whole machine, in a test binary of its own (cargo runs test binaries
//! one after another, so no other test's daemon competes for the memory it fills): three jobs with default
//! requests grow at ~800 MB/s to a third of physical memory each, together just over it. Aura must evict at
//! most one, itself and before the kernel's OOM killer does (the emergency stage), restart it only once
//! another job has ended (admission charges real use), and every job must end `succeeded`.

use aura_client::Client;
use aura_model::{JobSpec, JobState, LoggedEvent, Outcome};
use std::time::{Duration, Instant};

mod common;
use common::Daemon;

/// Grows by 200 MB every 0.25 s to `target` bytes, touching every page, then holds them for `hold` s.
const HOG: &str = r#"
import sys, time
target, hold = int(sys.argv[1]), float(sys.argv[2])
step, blocks, have = 200_000_000, [], 0
while have < target:
    b = bytearray(step)
    for i in range(0, step, 4096):
        b[i] = 1
    blocks.append(b)
    have += step
    time.sleep(0.25)
time.sleep(hold)
"#;

fn mem_total() -> u64 {
    let text = std::fs::read_to_string("/proc/meminfo").expect("meminfo");
    text.lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .expect("MemTotal")
        * 1024
}

#[tokio::test(flavor = "multi_thread")]
async fn three_growing_jobs_over_physical_memory_end_with_one_eviction_and_no_oom_kill() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hog = dir.path().join("hog.py");
    std::fs::write(&hog, HOG).expect("hog script");
    std::fs::set_permissions(&hog, std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .expect("chmod");
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    let each = mem_total() * 335 / 1000;
    let daemon = Daemon::start(&[("AURA_MAX_CONCURRENT", "3")]);
    let client = Client::authorized(&daemon.url, &daemon.token).expect("client");
    let mut ids = Vec::new();
    for _ in 0..3 {
        let mut spec = JobSpec::new(
            "python3",
            [hog.to_string_lossy().as_ref(), &each.to_string(), "20"],
        );
        spec.labels.insert("kind".into(), "hog".into());
        ids.push(client.submit(&spec).await.expect("submit").job.id);
    }
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut views = Vec::new();
    for &id in &ids {
        let left = deadline.saturating_duration_since(Instant::now());
        let view = client.wait(id, left).await.expect("wait");
        assert!(
            view.job.outcome().is_some(),
            "job {id} unfinished: {view:?}"
        );
        views.push(view);
    }
    let events = client.engine_events(0).await.expect("events");
    let evictions = events
        .iter()
        .filter(|e| e.event.kind() == "pressure_victim")
        .count();
    assert!(evictions <= 1, "{evictions} evictions: {events:?}");
    let mut first_end = None;
    for view in &views {
        let JobState::Finished(f) = &view.job.state else {
            unreachable!()
        };
        assert_eq!(f.outcome, Outcome::Succeeded, "job {}: {f:?}", view.job.id);
        assert_eq!(f.accounting.oom_kills, 0, "job {}: {f:?}", view.job.id);
        if view.job.attempt == 1 {
            first_end = Some(match first_end {
                Some(end) if end < f.finished_at => end,
                _ => f.finished_at,
            });
        }
    }
    for view in views.iter().filter(|v| v.job.attempt > 1) {
        let started = view.job.state.run().expect("ran").started_at;
        assert!(
            first_end.is_some_and(|end| started >= end),
            "victim {} restarted at {started} before any other job ended ({first_end:?})",
            view.job.id
        );
    }
    eprintln!("{evictions} eviction(s); all 3 succeeded; no OOM kill");
}

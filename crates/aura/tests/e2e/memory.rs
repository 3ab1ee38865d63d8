//! Memory protection through the daemon: limits killed by the kernel or the watchdog, OOM attribution, the
//! pressure responder.

use super::*;

const LIMIT: u64 = 200 << 20;

pub(super) fn hog(bytes: &str, seconds: u32) -> JobSpec {
    let timeout = format!("{seconds}s");
    spec(
        "stress-ng",
        &[
            "--vm",
            "1",
            "--vm-bytes",
            bytes,
            "--vm-keep",
            "--timeout",
            &timeout,
        ],
    )
}

/// A job with a 200 MiB limit allocating 1 GiB is killed with outcome `memory_limit_exceeded`, the limit
/// and its peak in the record; the job beside it is untouched and the daemon keeps serving.
async fn over_the_limit_is_killed(backend: &str) {
    let daemon = Daemon::start(&[("AURA_SUPERVISOR__BACKEND", backend)]);
    let client = daemon.client();
    let bystander = submit(&client, &spec("sh", &["-c", "sleep 3"])).await;
    let out = daemon.cli(&[
        "submit",
        "--quiet",
        "--memory-max",
        "200M",
        "--",
        "stress-ng",
        "--vm",
        "1",
        "--vm-bytes",
        "1G",
        "--vm-keep",
        "--timeout",
        "60s",
    ]);
    assert!(out.status.success(), "{out:?}");
    let id: JobId = JobId(stdout(&out).trim().parse().expect("job id"));
    let view = wait_done(&client, id).await;
    let Outcome::MemoryLimitExceeded {
        limit_bytes,
        peak_bytes,
    } = outcome(&view).clone()
    else {
        panic!("{backend}: {:?}", view.job.state);
    };
    assert_eq!(limit_bytes, LIMIT);
    let peak = peak_bytes.expect("peak recorded");
    if backend == "process_group" {
        // The watchdog samples every 50 ms: stopped far below the 1 GiB the job wanted.
        assert!(peak < 600 << 20, "{backend}: peak {peak}");
    } else {
        assert!(
            peak <= LIMIT + (4 << 20),
            "{backend}: peak {peak} over the limit"
        );
    }
    let events = client.events(id).await.unwrap();
    let enforced_by = events
        .iter()
        .find_map(|e| match &e.event {
            aura_model::JobEvent::MemoryLimitExceeded { enforced_by, .. } => Some(*enforced_by),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{backend}: no memory_limit_exceeded event: {events:?}"));
    let enforcer = if backend == "process_group" {
        aura_model::events::LimitEnforcer::Watchdog
    } else {
        aura_model::events::LimitEnforcer::Kernel
    };
    assert_eq!(enforced_by, enforcer, "{backend}");
    let show = stdout(&daemon.cli(&["show", &id.to_string()]));
    assert!(show.contains("memory_limit_exceeded"), "{show}");
    assert!(show.contains("Limit:      200.0 MiB — exceeded"), "{show}");
    assert!(show.contains("Delta="), "{show}");
    let metrics = get_text(format!("{}/metrics", daemon.url)).await;
    assert!(
        metrics.contains("aura_memory_kills_total{reason=\"limit_exceeded\"} 1"),
        "{metrics}"
    );

    assert!(
        outcome(&wait_done(&client, bystander).await).is_success(),
        "{backend}"
    );
    let after = submit(&client, &spec("true", &[])).await;
    assert!(
        outcome(&wait_done(&client, after).await).is_success(),
        "daemon keeps serving"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn over_the_limit_is_killed_by_the_kernel() {
    over_the_limit_is_killed("auto").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn over_the_limit_is_killed_by_the_watchdog_on_the_fallback() {
    over_the_limit_is_killed("process_group").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn memory_limits_are_validated_at_submit() {
    let daemon = Daemon::start(&[]);
    let out = daemon.cli(&[
        "submit",
        "--memory",
        "2G",
        "--memory-max",
        "1G",
        "--",
        "true",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("memory_max out of range: must be at least the memory request"),
        "{err}"
    );
    let jobs = daemon.client().list(&Default::default()).await.unwrap();
    assert!(jobs.jobs.is_empty(), "a refused job changes nothing");
}

fn available_mib() -> u64 {
    kib_field("/proc/meminfo", "MemAvailable:").expect("MemAvailable") / 1024
}

/// The tests that move the host's available memory by gigabytes run one at a time: each sets its
/// thresholds relative to the memory available when it starts.
pub(super) static HOST_PRESSURE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Takes the host-pressure turn and returns a threshold maker (`mib` below the memory available now),
/// or `None` (the test is skipped) when less than `needs_mib` is available.
async fn host_pressure_turn(
    needs_mib: u64,
) -> Option<(tokio::sync::MutexGuard<'static, ()>, impl Fn(u64) -> String)> {
    let turn = HOST_PRESSURE.lock().await;
    let avail = available_mib();
    if avail < needs_mib {
        eprintln!("skipping: needs {needs_mib} MiB available, has {avail} MiB");
        return None;
    }
    Some((turn, move |mib: u64| format!("{}MiB", avail - mib)))
}

/// A hog outside Aura (the test's own child), killed when dropped, so a failing test leaves nothing.
struct OutsideHog(std::process::Child);

impl OutsideHog {
    fn start(bytes: &str) -> OutsideHog {
        // The same command a hog job runs, started by the test itself.
        let job = hog(bytes, 60);
        OutsideHog(
            std::process::Command::new(&job.program)
                .args(&job.args)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("stress-ng"),
        )
    }
}

impl Drop for OutsideHog {
    fn drop(&mut self) {
        // stress-ng's workers are its children; SIGINT makes it stop them before it exits.
        let pid = rustix::process::Pid::from_child(&self.0);
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::INT);
        let _ = self.0.wait();
    }
}

async fn wait_paused(client: &Client, paused: bool) {
    // Generous: other tests of this binary allocate too, and the guard needs its resume threshold.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let u = client.utilization().await.unwrap();
        if u.admission_paused == paused {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "admission_paused never became {paused}: {u:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A standby (admitted beyond the running limit, its start prepared) must not slip past a pause: when
/// the memory guard pauses admission it goes back to the queue, so the slot its blocker frees stays
/// empty until admission resumes. Memory pressure from a hog outside Aura, thresholds set relative
/// to the memory available now.
#[tokio::test(flavor = "multi_thread")]
async fn a_paused_admission_takes_its_standby_back() {
    let Some((_turn, below)) = host_pressure_turn(5 << 10).await else {
        return;
    };
    // Resume 1.1 GiB below the start, not closer: other tests of this binary (encodes, event streams)
    // may hold a few hundred MiB more by the time the hog is gone, and admission must still resume.
    let (pause, resume) = (below(1400), below(1100));
    let daemon = Daemon::start(&[
        ("AURA_MAX_CONCURRENT", "1"),
        ("AURA_STANDBY_JOBS", "1"),
        ("AURA_GUARDS__INTERVAL", "100ms"),
        ("AURA_GUARDS__MIN_AVAILABLE_MEMORY", &pause),
        ("AURA_GUARDS__RESUME_AVAILABLE_MEMORY", &resume),
        ("AURA_ADMISSION__DEFAULT_MEMORY_REQUEST", "16MiB"),
    ]);
    let client = daemon.client();
    let (blocker, standby, marker) = blocker_then_marker(&daemon, &client, [None; 2]).await;

    let hog = OutsideHog::start("2000M");
    wait_paused(&client, true).await;
    // The slot frees while admission is paused: the standby must not take it.
    client.cancel(blocker).await.unwrap();
    wait_done(&client, blocker).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let view = client.get(standby).await.unwrap();
    assert_eq!(
        view.job.state.name(),
        aura_model::StateName::Queued,
        "{:?}",
        view.job.state
    );
    assert!(!marker.exists(), "the standby started during the pause");
    let waiting = view.waiting.unwrap_or_default();
    assert!(waiting.starts_with("admission paused"), "{waiting}");

    drop(hog);
    wait_paused(&client, false).await;
    let view = wait_done(&client, standby).await;
    assert!(outcome(&view).is_success(), "{:?}", view.job.state);
    assert!(marker.exists(), "it ran once admission resumed");
    assert_eq!(
        view.job.attempt, 1,
        "taken back before it started, not retried"
    );
}

/// Host pressure simulated with thresholds set relative to the memory available now: three 1.2 GiB hogs
/// cross the critical threshold, and two still do, one alone only the pause threshold. Admission pauses,
/// the lowest-priority hog is the one victim — memory stays critical afterwards, but no second victim is
/// chosen within the cooldown — it is requeued asking for more, sits out the cooldown and completes
/// later, and every other job completes. The daemon is never killed.
#[tokio::test(flavor = "multi_thread")]
async fn host_pressure_stops_one_victim_and_requeues_it_bigger() {
    let Some((_turn, below)) = host_pressure_turn(6 << 10).await else {
        return;
    };
    let (pause, resume) = (below(800), below(600));
    let (critical, clear) = (below(2000), below(1500));
    let daemon = Daemon::start(&[
        ("AURA_MAX_CONCURRENT", "4"),
        ("AURA_METRICS__INTERVAL", "200ms"),
        ("AURA_GUARDS__INTERVAL", "200ms"),
        ("AURA_GUARDS__MIN_AVAILABLE_MEMORY", &pause),
        ("AURA_GUARDS__RESUME_AVAILABLE_MEMORY", &resume),
        ("AURA_GUARDS__CRITICAL_AVAILABLE_MEMORY", &critical),
        ("AURA_GUARDS__CRITICAL_RESUME_AVAILABLE_MEMORY", &clear),
        ("AURA_GUARDS__CRITICAL_SUSTAIN", "1s"),
        ("AURA_GUARDS__VICTIM_COOLDOWN", "20s"),
        ("AURA_ADMISSION__DEFAULT_MEMORY_REQUEST", "256MiB"),
    ]);
    let client = daemon.client();
    let mut low = hog("1200M", 8);
    low.priority = 0;
    let mut high = hog("1200M", 8);
    high.priority = 5;
    let low = submit(&client, &low).await;
    let highs = [submit(&client, &high).await, submit(&client, &high).await];
    for id in [low, highs[0], highs[1]] {
        wait_running(&client, id, 1).await;
    }
    // Submitted while the hogs hold the memory: they wait for admission to resume.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut small = Vec::new();
    for _ in 0..3 {
        small.push(submit(&client, &spec("true", &[])).await);
    }

    for high in highs {
        let view = wait_done(&client, high).await;
        assert!(outcome(&view).is_success(), "{:?}", view.job.state);
        assert_eq!(view.job.attempt, 1, "only the victim was stopped");
    }
    for id in small {
        assert!(outcome(&wait_done(&client, id).await).is_success());
    }
    let low_view = wait_done(&client, low).await;
    assert!(outcome(&low_view).is_success(), "{:?}", low_view.job.state);
    assert_eq!((low_view.job.attempt, low_view.job.pressure_stops), (2, 1));
    let request = low_view.job.memory_request.clone().expect("request");
    assert!(
        matches!(request.source, aura_model::RequestSource::Pressure { peak_bytes, .. } if peak_bytes >= 1100 << 20),
        "{request:?}"
    );
    assert!(
        request.bytes.bytes() >= 1650 << 20,
        "max(request, peak) × 1.5: {request:?}"
    );
    let low_events = client.events(low).await.unwrap();
    let kinds: Vec<String> = low_events.iter().map(|e| e.event.kind()).collect();
    for kind in ["pressure_victim", "memory_request_raised", "requeued"] {
        assert!(kinds.iter().any(|k| k == kind), "{kind} missing: {kinds:?}");
    }
    let first_outcome = low_events.iter().find_map(|e| match &e.event {
        aura_model::JobEvent::Finished { outcome } => Some(outcome.clone()),
        _ => None,
    });
    assert!(
        matches!(first_outcome, Some(Some(Outcome::MemoryPressure { .. }))),
        "{first_outcome:?}"
    );

    let engine = client.engine_events(0).await.unwrap();
    let count = |kind: &str| engine.iter().filter(|e| e.event.kind() == kind).count();
    assert_eq!(
        count("pressure_victim"),
        1,
        "one victim, none other within the cooldown: {engine:?}"
    );
    assert!(
        count("admission_paused") >= 1 && count("admission_resumed") >= 1,
        "{engine:?}"
    );
    assert!(count("pressure_critical") >= 1, "{engine:?}");
    // Memory stayed critical after the victim was stopped (two hogs still ran): the cooldown held.
    let victim_event = engine
        .iter()
        .find(|e| e.event.kind() == "pressure_victim")
        .unwrap();
    let cleared = engine
        .iter()
        .find(|e| e.event.kind() == "pressure_cleared" && e.seq > victim_event.seq)
        .expect("critical cleared once the hogs ended");
    assert!(
        cleared.at.since(victim_event.at) >= Duration::from_secs(2),
        "memory should have stayed critical for a while after the victim: {engine:?}"
    );
    let victim = engine
        .iter()
        .find_map(|e| match &e.event {
            aura_model::EngineEvent::PressureVictim(chosen) => Some(chosen),
            _ => None,
        })
        .unwrap();
    assert_eq!(victim.job_id, low);
    assert!(
        victim.reading.available_memory_bytes.is_some(),
        "{victim:?}"
    );
    let utilization = client.utilization().await.unwrap();
    assert_eq!(utilization.pressure_victims, 1, "{utilization:?}");
    let events = stdout(&daemon.cli(&["events"]));
    assert!(
        events.contains("pressure_victim") && events.contains("admission_paused"),
        "{events}"
    );
    let status = stdout(&daemon.cli(&["status"]));
    assert!(status.contains("1 stopped for pressure"), "{status}");
    assert!(alive(daemon.pid()), "the daemon is never the victim");
    client.health().await.expect("still serving");
}

//! Observability: the system, process and readiness views, `/metrics` through promtool, diagnostics
//! warnings, live memory.

use super::*;

async fn get_json(url: String) -> (u16, serde_json::Value) {
    let resp = http_get(url).await.unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn system_process_and_readiness_answer_without_a_gpu() {
    let daemon = Daemon::start(&[("AURA_METRICS__INTERVAL", "100ms")]);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (status, system) = get_json(format!("{}/api/metrics/system", daemon.url)).await;
    assert_eq!(status, 200);
    let cores = std::thread::available_parallelism().unwrap().get();
    assert_eq!(system["cpu"]["cores"], cores, "{system}");
    assert!(system["memory"]["total"].as_u64().unwrap() > 0, "{system}");
    if !Path::new("/dev/nvidiactl").exists() {
        assert!(system["gpus"].is_null(), "{system}");
        assert!(system["gpu_unavailable"].is_string(), "{system}");
    }
    let (_, history) = get_json(format!("{}/api/metrics/system?history=true", daemon.url)).await;
    assert!(
        history.as_array().is_some_and(|h| h.len() >= 2),
        "{history}"
    );
    let (status, process) = get_json(format!("{}/api/metrics/process", daemon.url)).await;
    assert_eq!(status, 200);
    assert_eq!(process["pid"], daemon.pid(), "{process}");
    assert!(
        process["open_fds"].as_u64().unwrap() > 3 && process["rss_bytes"].as_u64().unwrap() > 0,
        "{process}"
    );
    assert!(
        process["allocator"]["in_use_bytes"]
            .as_u64()
            .is_some_and(|b| b > 0),
        "{process}"
    );
    let (status, ready) = get_json(format!("{}/readyz", daemon.url)).await;
    assert_eq!(
        (status, ready["status"].as_str()),
        (200, Some("healthy")),
        "{ready}"
    );
    // The kernel's OOM killer picks a job before the daemon: jobs run at +500; the daemon lowers its own
    // score to -500 where it has CAP_SYS_RESOURCE (this sandbox's root does not) and stays at 0 otherwise.
    let adj = |pid: u32| -> i32 {
        std::fs::read_to_string(format!("/proc/{pid}/oom_score_adj"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let client = daemon.client();
    let id = submit(&client, &spec("sleep", &["30"])).await;
    let view = wait_running(&client, id, 1).await;
    let job_pid = view.job.state.run().unwrap().tree.pid;
    assert_eq!(adj(job_pid), 500);
    assert!(
        adj(daemon.pid()) <= 0,
        "daemon oom_score_adj {}",
        adj(daemon.pid())
    );
    // The daemon's threads run above its jobs (`supervisor.daemon_nice`, -10, where it has
    // CAP_SYS_NICE, as the test's own root does here); the job starts at `job_nice`, 0.
    let nice = |stat_path: String| -> i32 {
        let stat = std::fs::read_to_string(stat_path).unwrap();
        aura_host::procfs::parse_pid_stat(&stat).unwrap().nice
    };
    assert_eq!(nice(format!("/proc/{job_pid}/stat")), 0);
    const CAP_SYS_NICE: u32 = 23;
    let may_raise = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|caps| u64::from_str_radix(caps.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_SYS_NICE) != 0);
    let expected = if may_raise { -10 } else { 0 };
    for task in std::fs::read_dir(format!("/proc/{}/task", daemon.pid())).unwrap() {
        let task = task.unwrap().path();
        assert_eq!(
            nice(format!("{}/stat", task.display())),
            expected,
            "daemon thread {}",
            task.display()
        );
    }
    client.cancel(id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn prometheus_output_passes_promtool_and_shows_running_jobs() {
    let daemon = Daemon::start(&[("AURA_METRICS__INTERVAL", "100ms")]);
    let client = daemon.client();
    let id = submit(&client, &spec("sleep", &["5"])).await;
    wait_running(&client, id, 1).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let resp = http_get(format!("{}/metrics", daemon.url)).await.unwrap();
    let content_type = resp
        .headers()
        .get("content-type")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let text = resp.text().await.unwrap();
    promtool_check(&text);
    // Prometheus itself asks for OpenMetrics first: that answer must pass a strict OpenMetrics parser
    // (the Python client's, the one its own test suite uses) and carry the same series.
    let accept = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    let url = format!("{}/metrics", daemon.url);
    let resp = authed(&url)
        .get(&url)
        .header("accept", accept)
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.headers()["content-type"],
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    assert_eq!(resp.headers()["vary"], "accept");
    let open_metrics = resp.text().await.unwrap();
    let parse = "import sys\nfrom prometheus_client.openmetrics.parser import text_string_to_metric_families as p\nprint(len(list(p(sys.stdin.read()))))";
    let mut python = Command::new("/usr/bin/python3")
        .args(["-c", parse])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("/usr/bin/python3 (Debian package python3)");
    std::io::Write::write_all(
        &mut python.stdin.take().expect("python's stdin"),
        open_metrics.as_bytes(),
    )
    .unwrap();
    let out = python.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "OpenMetrics parser (Debian package python3-prometheus-client; `cargo xtask test` installs it): {}\n{open_metrics}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(open_metrics.contains(&format!("aura_job_memory_bytes{{job_id=\"{id}\"}}")));
    for series in [
        "aura_host_cpu_seconds_total{mode=\"user\"}",
        "aura_host_memory_available_bytes ",
        "process_resident_memory_bytes ",
        "process_open_fds ",
        "aura_allocator_in_use_bytes ",
        "aura_jobs_running 1",
        &format!("aura_job_memory_bytes{{job_id=\"{id}\"}}"),
    ] {
        assert!(text.contains(series), "missing {series:?} in\n{text}");
    }
    client.cancel(id).await.unwrap();
    wait_done(&client, id).await;
    let after = get_text(format!("{}/api/metrics/prometheus", daemon.url)).await;
    assert!(
        !after.contains("job_id="),
        "a finished job keeps no series: {after}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn warnings_over_thresholds_degrade_readiness_and_cleanup_reports() {
    let daemon = Daemon::start(&[("AURA_DIAGNOSTICS__MAX_OPEN_FDS", "3")]);
    let (status, diag) = get_json(format!("{}/api/diagnostics/resources", daemon.url)).await;
    assert_eq!(status, 200);
    assert_eq!(diag["warnings"][0]["metric"], "open_fds", "{diag}");
    assert_eq!(diag["warnings"][0]["threshold"], 3, "{diag}");
    let (status, ready) = get_json(format!("{}/readyz", daemon.url)).await;
    assert_eq!(
        (status, ready["status"].as_str()),
        (200, Some("degraded")),
        "{ready}"
    );
    assert!(
        ready["reasons"][0]
            .as_str()
            .unwrap()
            .starts_with("warning: open file descriptors"),
        "{ready}"
    );
    let resp = authed(&daemon.url)
        .post(format!("{}/api/diagnostics/resources/cleanup", daemon.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let cleanup: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(cleanup["before"]["pid"], daemon.pid(), "{cleanup}");
    assert!(
        cleanup["after"]["rss_bytes"].as_u64().unwrap() > 0,
        "{cleanup}"
    );
}

/// A job's live memory rises while it allocates, and its peak matches the recorded one.
#[tokio::test(flavor = "multi_thread")]
async fn live_memory_rises_and_the_peak_matches_the_record() {
    let daemon = Daemon::start(&[("AURA_SUPERVISOR__SAMPLE_INTERVAL", "100ms")]);
    let client = daemon.client();
    // Half a second of a small tree first, so that the first look sees it before it allocates (a
    // job shows as running within 20 ms of its start, and stress-ng takes 200 MB in a fraction of
    // a second).
    let job = spec(
        "sh",
        &[
            "-c",
            "sleep 0.5; exec stress-ng --vm 1 --vm-bytes 200M --vm-keep --timeout 3s --quiet",
        ],
    );
    let id = submit(&client, &job).await;
    let mut seen = Vec::new();
    loop {
        let view = client.get(id).await.unwrap();
        if let Some(live) = view.live {
            seen.push((
                live.memory_current.unwrap_or(0),
                live.memory_peak.unwrap_or(0),
            ));
        }
        if view.job.outcome().is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let first = seen.first().map_or(0, |s| s.0);
    let max_live = seen.iter().map(|s| s.0).max().unwrap_or(0);
    assert!(
        max_live > first + (100 << 20),
        "live memory did not rise: {seen:?}"
    );
    let live_peak = seen.iter().map(|s| s.1).max().unwrap_or(0);
    let view = wait_done(&client, id).await;
    let JobState::Finished(f) = &view.job.state else {
        unreachable!()
    };
    let recorded = f.accounting.memory_peak.unwrap().bytes();
    // The kernel's high-water mark can only be at or above what sampling saw, and close to it.
    assert!(
        recorded >= live_peak && recorded - live_peak < (32 << 20),
        "live peak {live_peak}, recorded {recorded}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_paused_admission_degrades_readiness() {
    let daemon = Daemon::start(&[
        ("AURA_GUARDS__MIN_AVAILABLE_MEMORY", "0.999"),
        ("AURA_GUARDS__RESUME_AVAILABLE_MEMORY", "0.9995"),
        ("AURA_GUARDS__INTERVAL", "100ms"),
    ]);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, ready) = get_json(format!("{}/readyz", daemon.url)).await;
        if ready["status"] == "degraded" {
            assert_eq!(status, 200);
            assert!(
                ready["reasons"][0]
                    .as_str()
                    .unwrap()
                    .starts_with("admission paused"),
                "{ready}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "readiness never degraded: {ready}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The value of the one sample of `name` carrying every label in `labels`, in the classic text format.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.split(['{', ' ']).next() == Some(name))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .collect();
    assert_eq!(found.len(), 1, "{name} {labels:?}: {found:?}\n{text}");
    let value = found[0].rsplit(' ').next().unwrap_or_default();
    value
        .parse()
        .unwrap_or_else(|_| panic!("{name}: {value:?}"))
}

async fn scrape(daemon: &Daemon) -> String {
    get_text(format!("{}/metrics", daemon.url)).await
}

/// Jobs with known outcomes, one refused submit, one that waits in the queue: every lifecycle counter and
/// histogram count in a scrape is exact, and the scrape still passes promtool.
#[tokio::test(flavor = "multi_thread")]
async fn lifecycle_counters_and_histograms_are_exact() {
    let daemon = Daemon::start(&[("AURA_MAX_CONCURRENT", "1")]);
    let client = daemon.client();
    let before = scrape(&daemon).await;
    assert_eq!(
        sample(&before, "aura_jobs_submitted_total", &[("kind", "command")]),
        0.0
    );
    let blocker = submit(&client, &spec("sleep", &["2"])).await;
    wait_running(&client, blocker, 1).await;
    // Queued behind the blocker, cancelled before it starts: it never waits out the queue nor runs.
    let cancelled = submit(&client, &spec("sleep", &["30"])).await;
    client.cancel(cancelled).await.unwrap();
    let mut ids = vec![blocker, cancelled];
    for (program, args) in [("true", &[][..]), ("false", &[]), ("sh", &["-c", "exit 3"])] {
        ids.push(submit(&client, &spec(program, args)).await);
    }
    let mut timed_out = spec("sleep", &["30"]);
    timed_out.timeout = Duration::from_millis(300);
    ids.push(submit(&client, &timed_out).await);
    let mut reporting = spec("true", &[]);
    reporting.progress = aura_model::ProgressMode::Aura;
    ids.push(submit(&client, &reporting).await);
    let mut huge = spec("true", &[]);
    huge.resources.memory = Some("64TiB".parse().unwrap());
    assert!(
        client.submit(&huge).await.is_err(),
        "a 64 TiB job is refused"
    );
    for id in &ids {
        wait_done(&client, *id).await;
    }
    let text = scrape(&daemon).await;
    let finished = |kind: &str, outcome: &str| {
        sample(
            &text,
            "aura_jobs_finished_total",
            &[("kind", kind), ("outcome", outcome)],
        )
    };
    let submitted = |kind| sample(&text, "aura_jobs_submitted_total", &[("kind", kind)]);
    assert_eq!(
        (
            submitted("command"),
            submitted("progress"),
            submitted("ffmpeg")
        ),
        (6.0, 1.0, 0.0)
    );
    assert_eq!(finished("command", "succeeded"), 2.0);
    assert_eq!(finished("command", "failed"), 2.0);
    assert_eq!(finished("command", "cancelled"), 1.0);
    assert_eq!(finished("command", "timed_out"), 1.0);
    assert_eq!(finished("progress", "succeeded"), 1.0);
    // Outcomes that never happened: `succeeded` and `failed` at zero for a kind seen, nothing else; a kind
    // never seen has no finished series and no histograms.
    assert_eq!(finished("progress", "failed"), 0.0);
    for absent in [
        "aura_jobs_finished_total{kind=\"progress\",outcome=\"cancelled\"}",
        "aura_jobs_finished_total{kind=\"ffmpeg\"",
        "aura_job_run_seconds_count{kind=\"ffmpeg\"}",
    ] {
        assert!(!text.contains(absent), "{absent} in\n{text}");
    }
    let count = |family: &str, kind| sample(&text, &format!("{family}_count"), &[("kind", kind)]);
    // Five command jobs started and ran (the cancelled one never did), one reporting job.
    for family in ["aura_job_queue_wait_seconds", "aura_job_run_seconds"] {
        assert_eq!(count(family, "command"), 5.0, "{family}");
        assert_eq!(count(family, "progress"), 1.0, "{family}");
    }
    let inf = sample(
        &text,
        "aura_job_run_seconds_bucket",
        &[("kind", "command"), ("le", "+Inf")],
    );
    assert_eq!(inf, 5.0);
    // The timed-out job ran past its 0.3 s; the blocker 2 s.
    let run_sum = sample(&text, "aura_job_run_seconds_sum", &[("kind", "command")]);
    assert!(run_sum > 2.2, "{run_sum}");
    // The jobs behind the blocker waited for it.
    let quick = sample(
        &text,
        "aura_job_queue_wait_seconds_bucket",
        &[("kind", "command"), ("le", "0.5")],
    );
    assert!(quick < 5.0, "every start was quick: {quick}");
    let wait_sum = sample(
        &text,
        "aura_job_queue_wait_seconds_sum",
        &[("kind", "command")],
    );
    assert!(wait_sum > 1.0, "{wait_sum}");
    let peaks = count("aura_job_peak_memory_bytes", "command");
    assert!(peaks <= 5.0, "{peaks}");
    assert_eq!(
        sample(
            &text,
            "aura_admission_refusals_total",
            &[("reason", "too_large")]
        ),
        1.0
    );
    assert_eq!(
        sample(
            &text,
            "aura_admission_refusals_total",
            &[("reason", "queue_full")]
        ),
        0.0
    );
    assert_eq!(
        sample(&text, "aura_admission_paused_seconds_total", &[]),
        0.0
    );
    promtool_check(&text);
}

/// Admission paused by a guard counts its time; event streams count by type while open.
#[tokio::test(flavor = "multi_thread")]
async fn paused_time_and_stream_subscribers_are_counted() {
    let daemon = Daemon::start(&[
        ("AURA_GUARDS__MIN_AVAILABLE_MEMORY", "0.999"),
        ("AURA_GUARDS__RESUME_AVAILABLE_MEMORY", "0.9995"),
        ("AURA_GUARDS__INTERVAL", "100ms"),
    ]);
    let http = authed(&daemon.url);
    let stream = http
        .get(format!("{}/api/events/stream", daemon.url))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status().as_u16(), 200);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let text = scrape(&daemon).await;
    let paused = sample(&text, "aura_admission_paused_seconds_total", &[]);
    // Paused from the guard's first look, a few 100 ms after the start, until the scrape.
    assert!(paused > 0.5 && paused < 30.0, "{paused}");
    assert_eq!(
        sample(&text, "aura_event_stream_subscribers", &[("stream", "all")]),
        1.0
    );
    assert_eq!(
        sample(&text, "aura_event_stream_subscribers", &[("stream", "job")]),
        0.0
    );
    assert_eq!(
        sample(
            &text,
            "aura_event_stream_subscriptions_total",
            &[("stream", "all")]
        ),
        1.0
    );
    drop(stream);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = scrape(&daemon).await;
        if sample(&text, "aura_event_stream_subscribers", &[("stream", "all")]) == 0.0 {
            let later = sample(&text, "aura_admission_paused_seconds_total", &[]);
            assert!(later > paused, "{later} after {paused}");
            break;
        }
        assert!(Instant::now() < deadline, "the stream stayed counted");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A warning raised on its own when the daemon's fds cross the configured threshold (event streams hold a
/// connection each), cleared once they are closed: an engine event and a log line each way, and the gauge.
#[tokio::test(flavor = "multi_thread")]
async fn a_crossed_threshold_raises_and_clears_a_warning_on_its_own() {
    // The figure the threshold applies to, on a daemon like the one under test.
    let baseline = {
        let probe = Daemon::start(&[("AURA_DIAGNOSTICS__MAX_OPEN_FDS", "0")]);
        let (_, diag) = get_json(format!("{}/api/diagnostics/resources", probe.url)).await;
        diag["warnings"][0]["value"]
            .as_u64()
            .expect("open_fds value")
    };
    let threshold = (baseline + 15).to_string();
    let daemon = Daemon::start_logged(
        &[
            ("AURA_DIAGNOSTICS__MAX_OPEN_FDS", threshold.as_str()),
            ("AURA_WARNINGS__INTERVAL", "200ms"),
            ("AURA_API__STREAM_HEARTBEAT", "300ms"),
            // Only the fds warning may be raised here, whatever the machine's load.
            ("AURA_WARNINGS__HOST_CPU", "1.0"),
            ("AURA_WARNINGS__HOST_MEMORY", "1.0"),
            ("AURA_LOG", "info"),
        ],
        true,
    );
    let client = daemon.client();
    let warning_event = |kind: &'static str| {
        let client = client.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                let events = client.engine_events(0).await.expect("engine events");
                if let Some(e) = events
                    .iter()
                    .map(|e| serde_json::to_value(&e.event).unwrap())
                    .find(|e| e["kind"] == kind && e["detail"]["warning"] == "open_fds")
                {
                    return e;
                }
                assert!(Instant::now() < deadline, "no {kind} event");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let http = authed(&daemon.url);
    let mut streams = Vec::new();
    for _ in 0..30 {
        let resp = http
            .get(format!("{}/api/events/stream", daemon.url))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        streams.push(resp);
    }
    let raised = warning_event("warning_raised").await;
    assert_eq!(raised["detail"]["warning"], "open_fds", "{raised}");
    assert_eq!(
        raised["detail"]["threshold"].as_f64(),
        Some((baseline + 15) as f64),
        "{raised}"
    );
    assert!(
        raised["detail"]["value"].as_f64().unwrap() > (baseline + 15) as f64,
        "{raised}"
    );
    let text = scrape(&daemon).await;
    assert_eq!(
        sample(&text, "aura_warning_active", &[("warning", "open_fds")]),
        1.0
    );
    assert_eq!(
        sample(&text, "aura_warning_active", &[("warning", "threads")]),
        0.0
    );
    drop(streams);
    let cleared = warning_event("warning_cleared").await;
    assert_eq!(cleared["detail"]["warning"], "open_fds", "{cleared}");
    let text = scrape(&daemon).await;
    assert_eq!(
        sample(&text, "aura_warning_active", &[("warning", "open_fds")]),
        0.0
    );
    let log = std::fs::read_to_string(daemon.log_path()).unwrap();
    for line in ["warning raised", "warning cleared"] {
        assert!(
            log.lines()
                .any(|l| l.contains(line) && l.contains("open_fds")),
            "no {line:?} line in\n{log}"
        );
    }
    // Raised once and cleared once: no flapping while the streams were open.
    let events = client.engine_events(0).await.unwrap();
    let count = |kind: &str| {
        events
            .iter()
            .map(|e| serde_json::to_value(&e.event).unwrap())
            .filter(|e| e["kind"] == kind && e["detail"]["warning"] == "open_fds")
            .count()
    };
    assert_eq!((count("warning_raised"), count("warning_cleared")), (1, 1));
}

/// `promtool check metrics` (Prometheus's own linter) on a scrape in the classic text format.
fn promtool_check(text: &str) {
    use std::io::Write;
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus; `cargo xtask test` installs it)");
    promtool
        .stdin
        .take()
        .expect("promtool's stdin")
        .write_all(text.as_bytes())
        .expect("writing to promtool");
    let out = promtool.wait_with_output().expect("promtool ends");
    assert!(
        out.status.success(),
        "promtool: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

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
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus; `cargo xtask test` installs it)");
    use std::io::Write;
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
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
    python
        .stdin
        .take()
        .unwrap()
        .write_all(open_metrics.as_bytes())
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

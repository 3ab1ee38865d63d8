//! Process trees through the daemon: cancel and timeout kill whole trees, peaks, priorities and standbys,
//! the log cap, no daemon fd in a job.

use super::*;

async fn cancel_kills_the_whole_tree(backend: &str) {
    let daemon = Daemon::start(&[("AURA_SUPERVISOR__BACKEND", backend)]);
    let client = daemon.client();
    let mut job = spec("sh", &["-c", TREE]);
    job.stop = "TERM:2s".parse::<StopSequence>().unwrap();
    let id = submit(&client, &job).await;
    let view = wait_running(&client, id, 20).await;
    let pids = tree_pids(&view);
    assert!(
        pids.len() >= 20,
        "expected the whole tree in the cgroup, got {pids:?}"
    );
    client.cancel(id).await.unwrap();
    assert!(
        all_gone_within(&pids, Duration::from_secs(2)).await,
        "tree survived the cancel: {pids:?}"
    );
    let view = wait_done(&client, id).await;
    assert_eq!(outcome(&view), &Outcome::Cancelled);
    let JobState::Finished(f) = &view.job.state else {
        unreachable!()
    };
    assert_eq!(
        f.signals_sent.first().map(|s| s.name()),
        Some("SIGTERM"),
        "{f:?}"
    );
    assert!(
        f.accounting.peak_processes.unwrap_or(0) >= 20,
        "{:?}",
        f.accounting
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_kills_a_tree_with_setsid_and_double_fork_hybrid() {
    cancel_kills_the_whole_tree("auto").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_kills_a_tree_with_setsid_and_double_fork_process_group() {
    cancel_kills_the_whole_tree("process_group").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_kills_a_tree_with_setsid_and_double_fork_cgroup_v1() {
    // Pure cgroup-v2 hosts have no v1 memory controller; the supervisor suite covers what they have.
    if !Path::new("/sys/fs/cgroup/memory/cgroup.procs").exists() {
        eprintln!("skipping: no cgroup v1 memory controller on this host");
        return;
    }
    cancel_kills_the_whole_tree("cgroup_v1").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn timeout_ends_the_job_and_its_tree() {
    let daemon = Daemon::start(&[("AURA_SUPERVISOR__BACKEND", "process_group")]);
    let client = daemon.client();
    let mut job = spec("sleep", &["60"]);
    job.timeout = Duration::from_secs(1);
    let id = submit(&client, &job).await;
    let view = wait_done(&client, id).await;
    assert_eq!(outcome(&view), &Outcome::TimedOut);
    let JobState::Finished(f) = &view.job.state else {
        unreachable!()
    };
    let wall = f.accounting.wall_secs.unwrap_or_default();
    assert!((0.9..3.0).contains(&wall), "timed out after {wall}s");
    let pid = f.run.as_ref().unwrap().tree.pid;
    assert!(!alive(pid), "sleep {pid} survived its timeout");
    assert_eq!(f.signals_sent.first().map(|s| s.name()), Some("SIGINT"));
}

#[tokio::test(flavor = "multi_thread")]
async fn memory_peak_is_recorded() {
    let daemon = Daemon::start(&[]);
    let client = daemon.client();
    let job = spec(
        "stress-ng",
        &[
            "--vm",
            "1",
            "--vm-bytes",
            "300M",
            "--vm-keep",
            "--timeout",
            "2s",
            "--quiet",
        ],
    );
    let id = submit(&client, &job).await;
    let view = wait_done(&client, id).await;
    let JobState::Finished(f) = &view.job.state else {
        unreachable!()
    };
    let peak_mb = f
        .accounting
        .memory_peak
        .map(|b| b.bytes() as f64 / 1e6)
        .unwrap_or_default();
    assert!(
        (300.0..=400.0).contains(&peak_mb),
        "peak {peak_mb} MB: {:?}",
        f.accounting
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn priorities_then_fifo() {
    let daemon = Daemon::start(&[("AURA_MAX_CONCURRENT", "1")]);
    let client = daemon.client();
    let blocker = submit(&client, &spec("sleep", &["0.5"])).await;
    let low = submit(&client, &spec("true", &[])).await;
    let low2 = submit(&client, &spec("true", &[])).await;
    let mut urgent = spec("true", &[]);
    urgent.priority = 10;
    let high = submit(&client, &urgent).await;
    wait_done(&client, blocker).await;
    let mut started = Vec::new();
    for id in [low, low2, high] {
        let view = wait_done(&client, id).await;
        started.push((view.job.state.run().unwrap().started_at, id));
    }
    started.sort();
    assert_eq!(
        started.iter().map(|s| s.1).collect::<Vec<_>>(),
        vec![high, low, low2]
    );
}

/// The job admitted ahead of a free slot (the standby) counts as queued, is cancelled without ever
/// starting, and the next one takes its place; with standby off, nothing is admitted ahead.
#[tokio::test(flavor = "multi_thread")]
async fn a_standby_is_queued_until_it_starts_and_cancels_without_starting() {
    for standby in ["2", "0"] {
        let daemon = Daemon::start(&[("AURA_MAX_CONCURRENT", "1"), ("AURA_STANDBY_JOBS", standby)]);
        let client = daemon.client();
        let (blocker, first, marker) = blocker_then_marker(&daemon, &client, [None; 2]).await;
        let second = submit(&client, &spec("true", &[])).await;
        let u = client.utilization().await.unwrap();
        assert_eq!((u.running, u.queued), (1, 2), "standby={standby}: {u:?}");
        let t0 = Instant::now();
        client.cancel(first).await.unwrap();
        let view = wait_done(&client, first).await;
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "standby={standby}: the cancel waited for a free slot"
        );
        assert!(
            matches!(outcome(&view), Outcome::Cancelled),
            "standby={standby}: {:?}",
            view.job.state
        );
        assert!(
            view.job.state.run().is_none(),
            "standby={standby}: it never ran"
        );
        client.cancel(blocker).await.unwrap();
        assert!(outcome(&wait_done(&client, second).await).is_success());
        assert!(!marker.exists(), "standby={standby}: the cancelled job ran");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn output_over_the_log_cap_keeps_the_newest_bytes() {
    let daemon = Daemon::start(&[("AURA_SUPERVISOR__LOG_CAP", "4KiB")]);
    let client = daemon.client();
    let id = submit(&client, &spec("sh", &["-c", "seq 1 20000"])).await;
    let view = wait_done(&client, id).await;
    let JobState::Finished(f) = &view.job.state else {
        unreachable!()
    };
    let total: u64 = (1..=20000u64).map(|n| n.to_string().len() as u64 + 1).sum();
    let chunk = client.logs(id, "stdout", 0).await.unwrap();
    assert!(
        chunk.data.len() <= 4096 && chunk.data.len() >= 2048,
        "kept {} bytes",
        chunk.data.len()
    );
    assert_eq!(chunk.truncated_bytes + chunk.data.len() as u64, total);
    assert_eq!(f.accounting.log_truncated_bytes, chunk.truncated_bytes);
    assert!(String::from_utf8_lossy(&chunk.data).ends_with("19999\n20000\n"));
    let show = stdout(&daemon.cli(&["show", &id.to_string()]));
    assert!(
        show.contains("oldest bytes dropped by the size cap"),
        "{show}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn no_daemon_fd_reaches_a_job() {
    let daemon = Daemon::start(&[]);
    let client = daemon.client();
    let id = submit(&client, &spec("sh", &["-c", "ls -l /proc/$$/fd"])).await;
    wait_done(&client, id).await;
    let out = client.logs(id, "stdout", 0).await.unwrap();
    let listing = String::from_utf8_lossy(&out.data);
    let fds: Vec<&str> = listing.lines().filter(|l| l.contains(" -> ")).collect();
    assert!(!fds.is_empty(), "{listing}");
    for line in &fds {
        assert!(
            !(line.contains("aura.db")
                || line.contains("socket:")
                || line.contains("aura.lock")
                || line.contains("anon_inode")),
            "a daemon fd leaked into the job: {line}"
        );
    }
}

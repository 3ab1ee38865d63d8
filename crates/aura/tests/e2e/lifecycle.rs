//! Jobs across daemon lifetimes: 2,000 jobs leak nothing, SIGKILL and recovery on every backend, graceful
//! shutdown with requeues.

use super::*;

/// The daemon's open fds that are not job cgroup control files, and those that are (pooled job
/// cgroups keep theirs open: at most 8 per pooled set, 32 sets by default).
fn daemon_fds(pid: u32) -> (usize, usize) {
    let (mut other, mut cgroup) = (0, 0);
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
    {
        match std::fs::read_link(entry.path()) {
            Ok(target) if target.starts_with("/sys/fs/cgroup") => cgroup += 1,
            _ => other += 1,
        }
    }
    (other, cgroup)
}

fn daemon_threads(pid: u32) -> usize {
    kib_field(&format!("/proc/{pid}/status"), "Threads:").unwrap_or(0) as usize
}

fn daemon_rss_kib(pid: u32) -> u64 {
    kib_field(&format!("/proc/{pid}/status"), "VmRSS:").unwrap_or(0)
}

async fn run_sequentially(client: &Client, n: usize) {
    let mut ids = Vec::new();
    for _ in 0..n {
        ids.push(submit(client, &spec("true", &[])).await);
    }
    for id in ids {
        assert!(outcome(&wait_done(client, id).await).is_success());
    }
}

/// The short soak of the memory-protection issue: 2,000 jobs after a warm-up; the daemon's RSS grows
/// by less than 2 MB, and its fds and threads return to their baseline, with no zombie left.
#[tokio::test(flavor = "multi_thread")]
async fn two_thousand_jobs_leak_no_memory_fd_thread_or_zombie() {
    let daemon = Daemon::start(&[]);
    let pid = daemon.pid();
    // Warm-up with concurrent requests, so that pools that legitimately keep a few resources (the
    // store's read connections, the allocator's arenas, SQLite's page caches) are at their steady size
    // before the baseline is taken.
    {
        let client = daemon.client();
        let mut ids = Vec::new();
        for _ in 0..20 {
            ids.push(submit(&client, &spec("true", &[])).await);
        }
        let waits: Vec<_> = ids
            .into_iter()
            .map(|id| {
                let client = client.clone();
                tokio::spawn(async move { wait_done(&client, id).await })
            })
            .collect();
        for wait in waits {
            assert!(outcome(&wait.await.unwrap()).is_success());
        }
        run_sequentially(&client, 500).await;
    }
    // The client's keep-alive connections are gone with it; let the daemon see them close.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let ((fds0, _), threads0, rss0) = (daemon_fds(pid), daemon_threads(pid), daemon_rss_kib(pid));
    run_sequentially(&daemon.client(), 2000).await;
    // Idle blocking-pool threads exit after a few seconds; give them time, then demand the baseline.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let ((fds, cgroup_files), threads) = (daemon_fds(pid), daemon_threads(pid));
        assert!(
            cgroup_files <= 8 * 32,
            "{cgroup_files} job cgroup control files open: more than the cgroup pool keeps"
        );
        if fds <= fds0 && threads <= threads0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "fds {fds0} → {fds}, threads {threads0} → {threads}: {}",
            fd_listing(pid)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(zombie_children(pid), Vec::<u32>::new());
    let rss = daemon_rss_kib(pid);
    eprintln!("daemon RSS after warm-up {rss0} KiB, after 2,000 more jobs {rss} KiB");
    assert!(
        rss < rss0 + 2048,
        "RSS grew by {} KiB over 2,000 jobs (limit 2 MiB)",
        rss.saturating_sub(rss0)
    );
}

fn fd_listing(pid: u32) -> String {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let target = std::fs::read_link(entry.path())
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        out.push(format!("{}→{target}", entry.file_name().to_string_lossy()));
    }
    out.join(" ")
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkilled_daemon_leaves_no_process_and_loses_no_job() {
    // The first attempt leaves a marker and hangs with a setsid'd grandchild; the second succeeds.
    crash_and_recover(
        "auto",
        "if [ -e ran ]; then exit 0; fi; touch ran; setsid sleep 300 & sleep 300 & wait",
    )
    .await;
}

/// The fallback finds the trees again by their recorded process groups and, wherever a process went
/// (`setsid`, a double fork), by the marker in its environment.
#[tokio::test(flavor = "multi_thread")]
async fn sigkilled_daemon_recovery_on_the_process_group_fallback() {
    crash_and_recover(
            "process_group",
            "if [ -e ran ]; then exit 0; fi; touch ran; setsid sleep 300 & ( setsid sleep 300 & ); sleep 300 & wait",
        )
        .await;
}

async fn crash_and_recover(backend: &str, script: &str) {
    let mut daemon = Daemon::start(&[
        ("AURA_MAX_CONCURRENT", "5"),
        ("AURA_SUPERVISOR__BACKEND", backend),
    ]);
    let client = daemon.client();
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(submit(&client, &spec("sh", &["-c", script])).await);
    }
    let mut pids = Vec::new();
    for id in &ids {
        pids.extend(tree_pids(&wait_running(&client, *id, 3).await));
    }
    assert!(pids.len() >= 15, "{pids:?}");
    daemon.signal(rustix::process::Signal::KILL);
    daemon.wait_exit();
    let restarted = Instant::now();
    daemon.spawn();
    assert!(
        all_gone_within(
            &pids,
            Duration::from_secs(2).saturating_sub(restarted.elapsed())
        )
        .await,
        "processes of the crashed daemon's jobs survived the restart"
    );
    let client = daemon.client();
    for id in ids {
        let view = wait_done(&client, id).await;
        assert!(outcome(&view).is_success(), "{view:?}");
        assert_eq!(view.job.attempt, 2);
        let kinds: Vec<String> = client
            .events(id)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.event.kind())
            .collect();
        let interrupted = kinds
            .iter()
            .position(|k| k == "interrupted")
            .expect("interrupted event");
        assert_eq!(
            kinds.get(interrupted + 1).map(String::as_str),
            Some("requeued"),
            "{kinds:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn graceful_shutdown_stops_trees_and_requeues() {
    let mut daemon = Daemon::start(&[]);
    let client = daemon.client();
    let mut job = spec(
        "sh",
        &[
            "-c",
            "if [ -e ran ]; then exit 0; fi; touch ran; sleep 300 & wait",
        ],
    );
    job.stop = "INT:1s".parse::<StopSequence>().unwrap();
    let id = submit(&client, &job).await;
    let pids = tree_pids(&wait_running(&client, id, 2).await);
    daemon.signal(rustix::process::Signal::TERM);
    let took = daemon.wait_exit();
    assert!(
        took < Duration::from_secs(3),
        "shutdown took {took:?} (grace 1s + 1s)"
    );
    assert!(
        !pids.iter().any(|p| alive(*p)),
        "a job process outlived the daemon"
    );
    daemon.spawn();
    let client = daemon.client();
    let view = wait_done(&client, id).await;
    assert!(outcome(&view).is_success(), "{view:?}");
    let kinds: Vec<String> = client
        .events(id)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.event.kind())
        .collect();
    assert!(kinds.contains(&"requeued".to_owned()), "{kinds:?}");
}

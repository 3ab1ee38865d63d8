//! Faults without loss, against a live daemon: a full data volume, unclean daemon deaths in a row, a
//! copied data dir, a stuck shutdown, a connection flood beyond the open-file limit.

use super::security::{flood_size, health_poller};
use super::*;
use std::net::TcpStream;
use std::sync::atomic::Ordering;

/// A tmpfs mounted for one test (root only), unmounted on drop. Declare it before the daemon that
/// uses it, so the daemon is dropped (stopped) first.
pub(super) struct Tmpfs {
    _root: tempfile::TempDir,
    pub(super) path: PathBuf,
}

impl Tmpfs {
    pub(super) fn mount(options: &str) -> Option<Tmpfs> {
        let root = tempfile::tempdir().expect("tempdir");
        let path = root.path().join("vol");
        std::fs::create_dir(&path).expect("mkdir");
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(&path)
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            eprintln!("skipped: cannot mount a tmpfs here (needs root)");
            return None;
        }
        Some(Tmpfs { _root: root, path })
    }

    /// Fills the volume to the last byte with the file `name` (a path relative to the volume).
    pub(super) fn fill(&self, name: &str) {
        use std::io::Write;
        let mut file = std::fs::File::create(self.path.join(name)).expect("filler");
        let chunk = vec![1u8; 64 * 1024];
        let mut n = chunk.len();
        while n > 0 {
            match file.write(&chunk[..n]) {
                Ok(0) => break,
                Ok(_) => {}
                Err(_) => n /= 2,
            }
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

async fn post_job(daemon: &Daemon, spec: &JobSpec) -> (u16, String) {
    let resp = authed(&daemon.url)
        .post(format!("{}/api/jobs", daemon.url))
        .json(spec)
        .send()
        .await
        .expect("POST /api/jobs");
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap_or_default())
}

fn finished(view: &JobView) -> &aura_model::Finished {
    match &view.job.state {
        JobState::Finished(f) => f,
        other => panic!("not finished: {other:?}"),
    }
}

/// A job flooding its log past a full data volume: the capture drops what does not fit and the job runs
/// to its own end, recorded as it happened; submits answer 507 (never 500) while nothing can be stored,
/// and succeed once space is freed; after a restart nothing that finished runs again.
#[tokio::test(flavor = "multi_thread")]
async fn a_full_data_volume_keeps_records_true_and_answers_507() {
    let Some(volume) = Tmpfs::mount("size=8m") else {
        return;
    };
    let mut daemon = Daemon::start_at(volume.path.join("data"), &[]);
    let client = daemon.client();
    let id = submit(&client, &spec("/usr/bin/timeout", &["3", "/usr/bin/yes"])).await;
    let view = wait_done(&client, id).await;
    assert_eq!(
        outcome(&view),
        &Outcome::Failed { exit_code: 124 },
        "the job ran to its own timeout, not killed by its full log"
    );
    let dropped = finished(&view).accounting.log_dropped_bytes;
    assert!(dropped > 0, "{:?}", finished(&view).accounting);
    let log = daemon.cli(&["logs", &id.to_string()]);
    assert!(log.status.success());

    // Whatever the logs left is taken too: nothing can be stored now.
    volume.fill("filler");
    let mut codes = Vec::new();
    for _ in 0..3 {
        let (status, body) = post_job(&daemon, &spec("true", &[])).await;
        if status == 507 {
            assert!(body.contains("storage_exhausted"), "{body}");
            // A 5xx answer quotes a request id for the log and shows nothing of the store's inside.
            assert!(body.contains("\"request_id\""), "{body}");
            assert!(
                !body.contains("store:") && !body.contains("disk is full"),
                "{body}"
            );
        }
        codes.push(status);
    }
    assert!(codes.iter().all(|c| *c == 507), "{codes:?}");
    let status = client.status().await.expect("status");
    assert!(status.store_degraded, "{status:?}");
    let ready = http_get(format!("{}/readyz", daemon.url)).await.unwrap();
    assert_eq!(ready.status().as_u16(), 503);
    let listed = client.list(&Default::default()).await.expect("list");
    assert_eq!(listed.jobs.len(), 1, "a refused submit stored nothing");

    // Space returns (the operator deletes the filler and the flooded log): submits succeed again and
    // the job runs, without a restart.
    std::fs::remove_file(volume.path.join("filler")).unwrap();
    std::fs::remove_dir_all(daemon.data_dir.join("logs").join(id.to_string())).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let second = loop {
        let (status, body) = post_job(&daemon, &spec("true", &[])).await;
        if status == 201 {
            let view: JobView = serde_json::from_str(&body).expect("job");
            break view.job.id;
        }
        assert_eq!(status, 507, "{body}");
        assert!(
            Instant::now() < deadline,
            "submits still refused after space returned"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(outcome(&wait_done(&client, second).await).is_success());
    assert!(!client.status().await.unwrap().store_degraded);

    // A restart runs nothing again: both records are final, attempt 1.
    daemon.signal(rustix::process::Signal::TERM);
    daemon.wait_exit();
    daemon.spawn();
    let client = daemon.client();
    for job in [id, second] {
        let view = client.get(job).await.unwrap();
        assert!(view.job.outcome().is_some(), "{:?}", view.job.state);
        assert_eq!(view.job.attempt, 1);
    }
}

/// The disk guard reads the data dir's real volume: below `min_free_disk` admission pauses and a job
/// waits, saying why; once space returns above `resume_free_disk` the job runs, without a restart.
#[tokio::test(flavor = "multi_thread")]
async fn a_nearly_full_data_volume_pauses_admission_until_space_returns() {
    let Some(volume) = Tmpfs::mount("size=128m") else {
        return;
    };
    let daemon = Daemon::start_at(
        volume.path.join("data"),
        &[
            ("AURA_GUARDS__MIN_FREE_DISK", "10%"),
            ("AURA_GUARDS__RESUME_FREE_DISK", "0.2"),
            ("AURA_GUARDS__INTERVAL", "100ms"),
        ],
    );
    let client = daemon.client();
    // Room for the store's few writes is left: 6 % of the volume.
    let stat = rustix::fs::statvfs(&volume.path).expect("statvfs");
    let total = stat.f_blocks * stat.f_frsize;
    let free = stat.f_bavail * stat.f_frsize;
    let filler = std::fs::File::create(volume.path.join("filler")).expect("filler");
    let size = free - total * 6 / 100;
    rustix::fs::fallocate(&filler, rustix::fs::FallocateFlags::empty(), 0, size)
        .expect("fill the volume");
    let (utilization, id) = paused_admission_holds_a_job(&client, "data volume free space").await;
    let reason = utilization.paused_reason.unwrap_or_default();
    assert!(reason.contains("pauses below 10 %"), "{reason}");

    drop(filler);
    std::fs::remove_file(volume.path.join("filler")).unwrap();
    assert!(outcome(&wait_done(&client, id).await).is_success());
    assert!(!client.utilization().await.unwrap().admission_paused);
}

/// A job that cannot start because the volume has no room for its directory ends `storage_exhausted`
/// (not a generic failure to start), and leaves nothing behind.
#[tokio::test(flavor = "multi_thread")]
async fn a_start_without_room_ends_storage_exhausted() {
    let Some(volume) = Tmpfs::mount("size=16m,nr_inodes=64") else {
        return;
    };
    let daemon = Daemon::start_at(volume.path.join("data"), &[]);
    let client = daemon.client();
    // Every inode taken: the job's work dir cannot be made.
    let fill = volume.path.join("inodes");
    std::fs::create_dir(&fill).unwrap();
    for i in 0.. {
        if std::fs::File::create(fill.join(i.to_string())).is_err() {
            break;
        }
    }
    let id = submit(&client, &spec("true", &[])).await;
    let view = wait_done(&client, id).await;
    assert!(
        matches!(outcome(&view), Outcome::StorageExhausted { .. }),
        "{:?}",
        outcome(&view)
    );
    assert!(!daemon.data_dir.join("work").join(id.to_string()).exists());
}

/// Crash-loop protection: a job running at two unclean daemon deaths in a row is quarantined at the next
/// start (not requeued), the daemon stays up and `aura status` names it; each attempt's events carry
/// that attempt's number.
#[tokio::test(flavor = "multi_thread")]
async fn a_job_running_at_two_unclean_deaths_is_quarantined() {
    let mut daemon = Daemon::start(&[]);
    let client = daemon.client();
    let mut spec = spec("sleep", &["300"]);
    spec.retry.max_retries = 5;
    let id = submit(&client, &spec).await;
    wait_running(&client, id, 1).await;
    daemon.stop_now();
    daemon.spawn();
    let client = daemon.client();
    let view = wait_running(&client, id, 1).await;
    assert_eq!(view.job.attempt, 2, "one unclean death: requeued");
    daemon.stop_now();
    daemon.spawn();
    let client = daemon.client();
    let view = client.get(id).await.unwrap();
    assert!(
        matches!(
            outcome(&view),
            Outcome::Quarantined {
                interruptions: 2,
                ..
            }
        ),
        "{:?}",
        view.job.state
    );
    let status = client.status().await.unwrap();
    assert_eq!(status.quarantined, vec![id]);
    let text = stdout(&daemon.cli(&["status"]));
    assert!(text.contains("uarantined"), "{text}");
    // Still serving.
    let ok = submit(&client, &super::spec("true", &[])).await;
    assert!(outcome(&wait_done(&client, ok).await).is_success());

    let events = client.events(id).await.unwrap();
    let attempt_of = |kind: &str| -> Vec<u32> {
        events
            .iter()
            .filter(|e| e.event.kind() == kind)
            .map(|e| e.attempt)
            .collect()
    };
    assert_eq!(attempt_of("started"), vec![1, 2]);
    assert_eq!(attempt_of("interrupted"), vec![1], "{events:?}");
    assert_eq!(attempt_of("requeued"), vec![2]);
    assert_eq!(attempt_of("quarantined"), vec![2]);
}

/// A daemon on a copy of a live daemon's data dir (`cp -a`) gets an instance of its own: the original's
/// running job and its next jobs are untouched.
#[tokio::test(flavor = "multi_thread")]
async fn a_copied_data_dir_leaves_the_original_alone() {
    let daemon = Daemon::start(&[]);
    let client = daemon.client();
    let id = submit(&client, &spec("sleep", &["60"])).await;
    let view = wait_running(&client, id, 1).await;
    let pid = view.job.state.run().unwrap().tree.pid;
    let copy = daemon.data_dir.with_file_name("copy");
    let cp = Command::new("cp")
        .arg("-a")
        .arg(&daemon.data_dir)
        .arg(&copy)
        .status()
        .unwrap();
    assert!(cp.success());
    let _ = std::fs::remove_file(copy.join("aura.lock"));
    let second = Daemon::start_at(copy.clone(), &[]);
    let copied_id = std::fs::read_to_string(copy.join("instance-id")).unwrap();
    let original_id = std::fs::read_to_string(daemon.data_dir.join("instance-id")).unwrap();
    assert_ne!(
        copied_id.split_whitespace().next(),
        original_id.split_whitespace().next()
    );

    assert!(
        alive(pid),
        "the original's job was killed by the copy's recovery"
    );
    let view = client.get(id).await.unwrap();
    assert_eq!(view.job.state.name(), aura_model::StateName::Running);
    for _ in 0..4 {
        let next = submit(&client, &spec("true", &[])).await;
        assert!(outcome(&wait_done(&client, next).await).is_success());
    }
    // The copy's record of the job says what happened to it there.
    let there = second.client().get(id).await.unwrap();
    assert_ne!(there.job.attempt, 0);
    drop(second);
    assert!(alive(pid));
}

/// A job whose stop sequence would hold a shutdown for an hour: SIGTERM returns within
/// `shutdown_grace` (plus the close), `/healthz` says `shutting_down` meanwhile, and a second signal
/// kills every tree at once.
#[tokio::test(flavor = "multi_thread")]
async fn shutdown_is_bounded_and_a_second_signal_cuts_it_short() {
    let mut daemon = Daemon::start(&[("AURA_SHUTDOWN_GRACE", "3s")]);
    let stubborn = || {
        let mut s = spec(
            "sh",
            &["-c", "trap 'echo int' INT; while :; do sleep 0.2; done"],
        );
        s.stop = serde_json::from_value(serde_json::json!([{"signal": "INT", "grace": "1h"}]))
            .expect("stop sequence");
        s
    };
    let id = submit(&daemon.client(), &stubborn()).await;
    wait_running(&daemon.client(), id, 1).await;
    daemon.signal(rustix::process::Signal::TERM);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let health = reqwest::get(format!("{}/healthz", daemon.url))
        .await
        .unwrap();
    assert_eq!(health.status().as_u16(), 503);
    assert!(health.text().await.unwrap().contains("shutting_down"));
    let took = daemon.wait_exit();
    eprintln!("SIGTERM with a 1 h stop grace and shutdown_grace 3s: {took:?}");
    assert!(took < Duration::from_secs(8), "{took:?}");

    daemon.spawn();
    let client = daemon.client();
    let view = client.get(id).await.unwrap();
    // Requeued by the shutdown: waiting, or already started again as its next attempt (the restarted
    // daemon starts it as soon as it is up), or ended.
    let again = matches!(view.job.state, JobState::Running { .. }) && view.job.attempt >= 2;
    assert!(
        matches!(view.job.state, JobState::Queued { .. }) || again || view.job.outcome().is_some(),
        "attempt {}: {:?}",
        view.job.attempt,
        view.job.state
    );
    let id = submit(&client, &stubborn()).await;
    let running = wait_running(&client, id, 1).await;
    let pid = running.job.state.run().unwrap().tree.pid;
    daemon.signal(rustix::process::Signal::TERM);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    daemon.signal(rustix::process::Signal::INT);
    daemon.wait_exit();
    let took = started.elapsed();
    eprintln!("second signal to exit: {took:?}");
    assert!(took < Duration::from_secs(4), "{took:?}");
    assert!(!alive(pid));
}

/// The daemon's resident memory, from /proc.
fn rss_kib(pid: u32) -> u64 {
    kib_field(&format!("/proc/{pid}/status"), "VmRSS:").unwrap_or(0)
}

/// 25,000 connection attempts against a daemon whose open-file limit is this process's (20,000 on the
/// reference machine): `/healthz` answers throughout, a job submitted meanwhile runs, and the memory
/// the flood took is given back without a manual cleanup.
#[tokio::test(flavor = "multi_thread")]
async fn a_flood_beyond_the_open_file_limit_leaves_the_daemon_whole() {
    let budget = flood_size(19_500);
    let daemon = Daemon::start(&[]);
    let client = daemon.client();
    let addr = daemon.url.trim_start_matches("http://").to_owned();
    // Warm up (a job, a few requests) so the baseline includes what any serving daemon holds.
    let warm = submit(&client, &spec("true", &[])).await;
    wait_done(&client, warm).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let baseline = rss_kib(daemon.pid());
    let (stop, poller) = health_poller(daemon.url.clone());

    let attempts = 25_000;
    let mut open = std::collections::VecDeque::new();
    let mut refused = 0;
    let mut peak = baseline;
    let mut job = None;
    for i in 0..attempts {
        if open.len() >= budget {
            open.pop_front();
        }
        match TcpStream::connect(&addr) {
            Ok(s) => open.push_back(s),
            Err(_) => refused += 1,
        }
        if i == attempts / 2 {
            job = Some(submit(&client, &spec("true", &[])).await);
            peak = peak.max(rss_kib(daemon.pid()));
        }
    }
    peak = peak.max(rss_kib(daemon.pid()));
    let view = wait_done(&client, job.expect("submitted")).await;
    assert!(outcome(&view).is_success());
    drop(open);
    stop.store(true, Ordering::Relaxed);
    let (slowest, failures) = poller.join().unwrap();
    eprintln!(
        "flood of {attempts} ({budget} open at most, {refused} refused): health slowest {slowest:?}, \
         {failures} failures; RSS {baseline} KiB before, {peak} KiB during"
    );
    assert_eq!(failures, 0, "/healthz failed during the flood");
    assert!(slowest < Duration::from_secs(2), "{slowest:?}");

    let deadline = Instant::now() + Duration::from_secs(60);
    let after = loop {
        let now = rss_kib(daemon.pid());
        if now <= baseline + 5 * 1024 || Instant::now() > deadline {
            break now;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    eprintln!("RSS after the flood: {after} KiB (baseline {baseline} KiB)");
    assert!(
        after <= baseline + 5 * 1024,
        "RSS {after} KiB stayed over the baseline {baseline} KiB + 5 MiB"
    );
}

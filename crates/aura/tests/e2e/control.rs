//! Operator control through the CLI as a user types it: pause and resume (the tree stops using CPU, the
//! paused time is outside the timeout), kill without grace, hold and release, drain across a restart,
//! priority, retry and `cancel --all` on a selection.

use super::*;
use aura_model::StateName;

/// The CLI, which must succeed; its stdout.
fn cli_ok(daemon: &Daemon, args: &[&str]) -> String {
    let out = daemon.cli(args);
    assert!(
        out.status.success(),
        "aura {args:?} failed: {}{}",
        stdout(&out),
        String::from_utf8_lossy(&out.stderr)
    );
    stdout(&out)
}

/// CPU seconds of a job's tree as last sampled (user + system).
async fn cpu_secs(client: &Client, id: JobId) -> f64 {
    let live = client.get(id).await.expect("get").live.expect("live usage");
    live.cpu_user_secs.unwrap_or(0.0) + live.cpu_system_secs.unwrap_or(0.0)
}

const SPIN: &str = "while :; do :; done & a=$!; while :; do :; done & b=$!";

/// Pause freezes the whole tree (no CPU over 2 s, every process frozen or stopped), resume thaws it, and
/// a job paused for longer than its timeout still succeeds: the paused time does not count.
async fn pause_and_resume(daemon: &Daemon) {
    let client = daemon.client();
    // Two busy processes beside 3 s of work, under a 4 s timeout it could not meet if the pause counted.
    let script = format!(
        "{SPIN}; t=$(($(date +%s)+3)); while [ $(date +%s) -lt $t ]; do :; done; kill $a $b"
    );
    let mut job = spec("sh", &["-c", &script]);
    job.timeout = Duration::from_secs(4);
    let id = submit(&client, &job).await;
    let view = wait_running(&client, id, 3).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let out = cli_ok(daemon, &["pause", &id.to_string()]);
    assert!(out.contains("paused"), "{out}");
    let paused = client.get(id).await.expect("get");
    assert_eq!(
        paused.job.state.name(),
        StateName::Paused,
        "{:?}",
        paused.job.state
    );
    // Wait for a sample taken after the freeze, then 2 s more: no CPU used.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let before = cpu_secs(&client, id).await;
    for pid in tree_pids(&view) {
        let state = proc_entry(pid).map(|e| e.state);
        // Frozen by the cgroup freezer: sleeping (S/D); stopped by SIGSTOP: T.
        assert!(
            matches!(state, Some('S' | 'D' | 'T' | 't') | None),
            "process {pid} of a paused job is {state:?}"
        );
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = cpu_secs(&client, id).await;
    assert!(
        after - before < 0.05,
        "a paused tree used {:.3} s of CPU in 2 s",
        after - before
    );
    // Paused past its timeout (4 s), in all.
    tokio::time::sleep(Duration::from_secs(2)).await;
    cli_ok(daemon, &["resume", &id.to_string()]);
    // Its 3 s of work are measured on the wall clock, already past: it may end right after the thaw.
    let resumed = client.get(id).await.expect("get");
    assert!(
        matches!(
            resumed.job.state.name(),
            StateName::Running | StateName::Finished
        ),
        "{:?}",
        resumed.job.state
    );
    let done = wait_done(&client, id).await;
    assert!(
        outcome(&done).is_success(),
        "a job paused past its timeout failed: {:?}",
        done.job.state
    );
    let run = done.job.state.run().expect("run");
    assert!(run.paused_secs >= 4.0, "paused {} s", run.paused_secs);
    let kinds: Vec<String> = client
        .events(id)
        .await
        .expect("events")
        .iter()
        .map(|e| e.event.kind())
        .collect();
    assert!(
        kinds.iter().any(|k| k == "paused") && kinds.iter().any(|k| k == "resumed"),
        "{kinds:?}"
    );
    let engine = client.engine_events(0).await.expect("engine events");
    let actions: Vec<String> = engine
        .iter()
        .filter(|e| e.event.kind() == "operator_action")
        .map(|e| serde_json::to_string(&e.event).expect("json"))
        .collect();
    assert!(
        actions.iter().any(|a| a.contains("\"pause\""))
            && actions.iter().any(|a| a.contains("\"resume\"")),
        "{actions:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn pause_freezes_the_tree_and_its_time_is_outside_the_timeout() {
    pause_and_resume(&Daemon::start(&[])).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn pause_stops_every_process_on_the_process_group_fallback() {
    pause_and_resume(&Daemon::start(&[(
        "AURA_SUPERVISOR__BACKEND",
        "process_group",
    )]))
    .await;
}

/// Actions that do not fit the job's state are refused with a clear error and change nothing; a paused
/// job is cancelled (thawed, then its stop sequence), and `kill` skips the grace period.
#[tokio::test(flavor = "multi_thread")]
async fn wrong_states_are_refused_cancel_thaws_and_kill_skips_the_grace() {
    let daemon = Daemon::start(&[]);
    let client = daemon.client();
    let id = submit(&client, &spec("sleep", &["30"])).await;
    wait_running(&client, id, 1).await;
    let out = daemon.cli(&["resume", &id.to_string()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("only a paused job can be resumed"), "{err}");
    let out = daemon.cli(&["pause", "999999"]);
    assert!(!out.status.success());
    cli_ok(&daemon, &["pause", &id.to_string()]);
    let out = daemon.cli(&["pause", &id.to_string()]);
    assert!(!out.status.success(), "paused twice");
    let out = daemon.cli(&["priority", &id.to_string(), "5"]);
    assert!(!out.status.success(), "a running job's priority changed");
    cli_ok(&daemon, &["cancel", &id.to_string()]);
    let done = wait_done(&client, id).await;
    assert_eq!(outcome(&done), &Outcome::Cancelled);
    assert!(done.job.state.run().expect("run").paused_secs > 0.0);

    // Ignores SIGTERM and has 30 s of grace: only a kill ends it quickly.
    let mut stubborn = spec("sh", &["-c", "trap '' TERM; sleep 60 & wait; wait"]);
    stubborn.stop = "TERM:30s".parse::<StopSequence>().expect("stop sequence");
    let id = submit(&client, &stubborn).await;
    let view = wait_running(&client, id, 2).await;
    let pids = tree_pids(&view);
    let asked = Instant::now();
    cli_ok(&daemon, &["kill", &id.to_string()]);
    let done = wait_done(&client, id).await;
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "kill waited for the grace"
    );
    assert!(all_gone_within(&pids, Duration::from_secs(2)).await);
    assert_eq!(outcome(&done), &Outcome::Cancelled);
    let JobState::Finished(f) = &done.job.state else {
        unreachable!()
    };
    assert_eq!(f.signals_sent, vec![aura_model::StopSignal::Kill]);
    let out = daemon.cli(&["kill", &id.to_string()]);
    assert!(!out.status.success(), "killed a finished job");
}

/// Drain: a queued job does not start while the running one finishes, the node says so (status,
/// /readyz, /metrics), a restart keeps it drained, and undrain starts the job.
#[tokio::test(flavor = "multi_thread")]
async fn drain_holds_new_work_across_a_restart_until_undrain() {
    let mut daemon = Daemon::start(&[]);
    let client = daemon.client();
    let running = submit(&client, &spec("sleep", &["1"])).await;
    wait_running(&client, running, 1).await;
    cli_ok(&daemon, &["drain"]);
    let queued = submit(&client, &spec("true", &[])).await;
    assert!(outcome(&wait_done(&client, running).await).is_success());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let view = client.get(queued).await.expect("get");
    assert_eq!(view.job.state.name(), StateName::Queued);
    assert!(
        view.waiting
            .as_deref()
            .is_some_and(|w| w.contains("drained")),
        "{:?}",
        view.waiting
    );
    let status = cli_ok(&daemon, &["status"]);
    assert!(status.to_lowercase().contains("drain"), "{status}");
    let ready = http_get(format!("{}/readyz", daemon.url)).await.unwrap();
    assert_eq!(ready.status().as_u16(), 503);
    let metrics = get_text(format!("{}/metrics", daemon.url)).await;
    assert!(metrics.contains("aura_node_draining 1"), "{metrics}");

    daemon.stop_now();
    daemon.spawn();
    let client = daemon.client();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        client.get(queued).await.expect("get").job.state.name(),
        StateName::Queued,
        "a restart undrained the node"
    );
    cli_ok(&daemon, &["undrain"]);
    assert!(outcome(&wait_done(&client, queued).await).is_success());
    let ready = http_get(format!("{}/readyz", daemon.url)).await.unwrap();
    assert_ne!(ready.status().as_u16(), 503);
}

/// Hold keeps a queued job from starting while later ones run; release puts it back; priority moves a
/// job ahead of earlier ones.
#[tokio::test(flavor = "multi_thread")]
async fn hold_release_and_priority_reorder_the_queue() {
    let daemon = Daemon::start(&[("AURA_MAX_CONCURRENT", "1")]);
    let client = daemon.client();
    let blocker = submit(&client, &spec("sleep", &["1"])).await;
    wait_running(&client, blocker, 1).await;
    let held = submit(&client, &spec("true", &[])).await;
    let first = submit(&client, &spec("true", &[])).await;
    let second = submit(&client, &spec("true", &[])).await;
    cli_ok(&daemon, &["hold", &held.to_string()]);
    cli_ok(&daemon, &["priority", &second.to_string(), "10"]);
    let view = client.get(held).await.expect("get");
    assert_eq!(view.job.state.name(), StateName::Held);
    let listed = cli_ok(&daemon, &["list", "--state", "held"]);
    assert!(listed.contains(&held.to_string()), "{listed}");
    let started = |view: &JobView| view.job.state.run().expect("ran").started_at;
    let (a, b) = (
        wait_done(&client, first).await,
        wait_done(&client, second).await,
    );
    assert!(
        started(&b) < started(&a),
        "priority 10 did not move job {second} ahead of job {first}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        client.get(held).await.expect("get").job.state.name(),
        StateName::Held,
        "a held job started"
    );
    cli_ok(&daemon, &["release", &held.to_string()]);
    assert!(outcome(&wait_done(&client, held).await).is_success());
    let kinds: Vec<String> = client
        .events(second)
        .await
        .expect("events")
        .iter()
        .map(|e| e.event.kind())
        .collect();
    assert!(kinds.iter().any(|k| k == "priority_changed"), "{kinds:?}");
}

/// Retry runs the same spec as a new job; both records show the link. A job that has not finished is
/// not retried.
#[tokio::test(flavor = "multi_thread")]
async fn retry_reruns_a_failed_spec_and_links_both_records() {
    let daemon = Daemon::start(&[]);
    let client = daemon.client();
    let flag = daemon.scratch().join("retried");
    let script = format!("test -e {0} || {{ touch {0}; exit 3; }}", flag.display());
    let failed = submit(&client, &spec("sh", &["-c", &script])).await;
    assert_eq!(
        outcome(&wait_done(&client, failed).await),
        &Outcome::Failed { exit_code: 3 }
    );
    let out = cli_ok(&daemon, &["retry", &failed.to_string()]);
    let new: i64 = out
        .split(|c: char| !c.is_ascii_digit())
        .rfind(|s| !s.is_empty())
        .and_then(|s| s.parse().ok())
        .expect("a job id");
    let new = JobId(new);
    let done = wait_done(&client, new).await;
    assert!(outcome(&done).is_success());
    assert_eq!(
        done.job.spec.args,
        client.get(failed).await.expect("get").job.spec.args
    );
    assert_eq!(done.job.retry_of, Some(failed));
    assert_eq!(
        client.get(failed).await.expect("get").job.retried_as,
        Some(new)
    );
    let running = submit(&client, &spec("sleep", &["30"])).await;
    wait_running(&client, running, 1).await;
    let out = daemon.cli(&["retry", &running.to_string()]);
    assert!(!out.status.success(), "retried a running job");
    cli_ok(&daemon, &["cancel", &running.to_string()]);
}

/// `cancel --all` acts on a selection (labels, state), off a terminal without asking, and says how many.
#[tokio::test(flavor = "multi_thread")]
async fn cancel_all_acts_on_a_selection_only() {
    let daemon = Daemon::start(&[("AURA_MAX_CONCURRENT", "1")]);
    let client = daemon.client();
    let blocker = submit(&client, &spec("sleep", &["30"])).await;
    wait_running(&client, blocker, 1).await;
    let mut ids = Vec::new();
    for render in [true, true, true, false] {
        let mut job = spec("true", &[]);
        if render {
            job.labels.insert("project".into(), "trailer".into());
        }
        ids.push(submit(&client, &job).await);
    }
    let out = cli_ok(
        &daemon,
        &[
            "cancel",
            "--all",
            "--label",
            "project=trailer",
            "--state",
            "queued",
        ],
    );
    assert!(out.contains('3'), "{out}");
    for &id in &ids[..3] {
        assert_eq!(outcome(&wait_done(&client, id).await), &Outcome::Cancelled);
    }
    assert_ne!(
        client.get(ids[3]).await.expect("get").job.state.name(),
        StateName::Finished,
        "a job outside the selection was cancelled"
    );
    cli_ok(&daemon, &["kill", "--all"]);
    assert_eq!(
        outcome(&wait_done(&client, blocker).await),
        &Outcome::Cancelled
    );
}

/// The acceptance's encode: a paused FFmpeg encode uses no CPU (its cgroup's `cpu.stat`, or its
/// processes' counters on the fallback, do not advance over 2 s), resumes, and finishes with an output
/// ffprobe reads; paused longer than its timeout, it still succeeds.
#[tokio::test(flavor = "multi_thread")]
async fn a_paused_encode_uses_no_cpu_and_finishes_readable() {
    let daemon = Daemon::start(&[]);
    let client = daemon.client();
    let out = daemon.scratch().join("paused.mp4");
    let mut encode = spec(
        "ffmpeg",
        &[
            "-nostdin",
            "-y",
            // At the input's own pace: 6 s of video take 6 s, whatever the machine.
            "-re",
            "-f",
            "lavfi",
            "-i",
            "testsrc=duration=6:size=640x360:rate=25",
            "-c:v",
            "libx264",
            "-preset",
            "veryfast",
            out.to_str().expect("utf-8 path"),
        ],
    );
    encode.timeout = Duration::from_secs(8);
    let id = submit(&client, &encode).await;
    let view = wait_running(&client, id, 1).await;
    // Well into the encode, with its progress flowing.
    tokio::time::sleep(Duration::from_millis(700)).await;
    cli_ok(&daemon, &["pause", &id.to_string()]);
    let usage = || -> u64 {
        let run = view.job.state.run().expect("run");
        match run.tree.cgroups.first() {
            Some(cg) => std::fs::read_to_string(cg.join("cpu.stat"))
                .ok()
                .and_then(|t| {
                    t.lines()
                        .find_map(|l| l.strip_prefix("usage_usec ")?.trim().parse().ok())
                })
                .expect("cpu.stat"),
            None => tree_pids(&view)
                .iter()
                .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).ok())
                .filter_map(|s| {
                    let f: Vec<u64> = s
                        .rsplit_once(") ")?
                        .1
                        .split(' ')
                        .skip(11)
                        .take(2)
                        .filter_map(|x| x.parse().ok())
                        .collect();
                    Some(f.iter().sum::<u64>() * 10_000)
                })
                .sum(),
        }
    };
    let before = usage();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = usage();
    assert!(
        after - before < 20_000,
        "a paused encode used {} µs of CPU in 2 s",
        after - before
    );
    // Paused 8 s in all, past its 8 s timeout on its own (resumed, `-re` catches up with the clock).
    tokio::time::sleep(Duration::from_secs(6)).await;
    cli_ok(&daemon, &["resume", &id.to_string()]);
    let done = wait_done(&client, id).await;
    assert!(outcome(&done).is_success(), "{:?}", done.job.state);
    let duration = super::ffmpeg::probe_duration(&out).expect("ffprobe reads the output");
    assert!((5.9..6.2).contains(&duration), "duration {duration}");
}

//! Fleet mode end to end: real `aura serve` nodes on one throw-away PostgreSQL cluster (initdb into a temp
//! dir, a loopback port) — sharing a queue with no job run twice, rescue of a dead node's jobs and
//! fencing of its return, a provider limit held across nodes, a database restart under load, pinning by
//! tags, pipelines and logs across nodes.

use super::*;
use aura_store::testing::PgCluster;
use std::collections::{BTreeMap, BTreeSet};

/// The token every test node shares (`fleet.token_secret`'s default secret name).
const FLEET_TOKEN: &str = "fleet-test-token-0123456789";

/// A node of a test fleet: a daemon on its own data dir pointed at `url`.
fn node(url: &str, name: &str, extra: &[(&str, &str)]) -> Daemon {
    let mut env: Vec<(&str, &str)> = vec![
        ("AURA_STORE", url),
        ("AURA_SECRET_FLEET_TOKEN", FLEET_TOKEN),
        ("AURA_FLEET__NODE_NAME", name),
        ("AURA_FLEET__HEARTBEAT_TIMEOUT", "4s"),
    ];
    env.extend_from_slice(extra);
    Daemon::start_logged(&env, true)
}

/// `n` jobs that sleep `secs` holding a slot of the limit `tts`.
fn tts_sleepers(n: usize, secs: &str) -> Vec<serde_json::Value> {
    (0..n)
        .map(|_| {
            serde_json::json!({"program": "/bin/sleep", "args": [secs],
                               "resources": {"providers": ["tts"]}})
        })
        .collect()
}

/// Submits `entries` as one batch; their ids.
async fn submit_ids(client: &Client, entries: Vec<serde_json::Value>) -> Vec<JobId> {
    client
        .submit_batch(entries)
        .await
        .expect("submit")
        .into_iter()
        .map(|j| j.id)
        .collect()
}

/// A directory every job of every node may write in.
fn shared_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .expect("chmod");
    dir
}

/// A job that appends a line to `runs/<n>` (so a file with two lines is a job that ran twice).
fn marker_job(runs: &Path, n: usize, then: &str) -> serde_json::Value {
    let script = format!("echo $AURA_JOB_ID >> {}/{n}; {then}", runs.display());
    serde_json::json!({"program": "/bin/sh", "args": ["-c", script]})
}

/// Waits until every one of the fleet's jobs has finished (as `client`'s node sees it).
async fn all_finished(client: &Client, expected: usize, limit: Duration) -> Vec<JobView> {
    let deadline = Instant::now() + limit;
    loop {
        let jobs = all_jobs(client).await;
        let done = jobs.iter().filter(|j| j.job.outcome().is_some()).count();
        if done >= expected || Instant::now() > deadline {
            return jobs;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn lines_of(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_share_one_queue_and_no_job_runs_twice() {
    let cluster = PgCluster::start();
    let url = cluster.fresh_database();
    let nodes = [
        node(&url, "node-a", &[]),
        node(&url, "node-b", &[]),
        node(&url, "node-c", &[]),
    ];
    let dir = shared_dir();
    let runs = dir.path();
    const JOBS: usize = 3000;
    let a = nodes[0].client();
    for chunk in (0..JOBS).collect::<Vec<_>>().chunks(1000) {
        let entries = chunk.iter().map(|&n| marker_job(runs, n, "true")).collect();
        a.submit_batch(entries).await.expect("submit a batch");
    }
    let jobs = all_finished(&a, JOBS, Duration::from_secs(240)).await;
    assert_eq!(jobs.len(), JOBS);
    let unfinished: Vec<_> = jobs.iter().filter(|j| j.job.outcome().is_none()).collect();
    assert!(
        unfinished.is_empty(),
        "{} jobs unfinished, e.g. {:?}",
        unfinished.len(),
        unfinished
            .first()
            .map(|j| (&j.job.id, &j.job.state, &j.job.node))
    );
    let twice: Vec<usize> = (0..JOBS)
        .filter(|n| lines_of(&runs.join(n.to_string())) != 1)
        .collect();
    assert!(twice.is_empty(), "jobs not run exactly once: {twice:?}");
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    for j in &jobs {
        assert!(
            matches!(j.job.outcome(), Some(Outcome::Succeeded)),
            "job {} ended {:?}",
            j.job.id,
            j.job.outcome()
        );
        *per_node
            .entry(j.job.node.clone().expect("a finished job names its node"))
            .or_default() += 1;
    }
    assert_eq!(
        per_node.keys().cloned().collect::<BTreeSet<_>>(),
        ["node-a", "node-b", "node-c"].map(String::from).into(),
        "jobs spread over all three nodes: {per_node:?}"
    );
    // Every node's view agrees: the same jobs, the same states.
    for daemon in &nodes[1..] {
        let theirs = all_jobs(&daemon.client()).await;
        assert_eq!(theirs.len(), JOBS);
        let finished = theirs.iter().filter(|j| j.job.outcome().is_some()).count();
        assert_eq!(finished, JOBS, "{} sees every job finished", daemon.url);
    }
    // `aura nodes` on any node lists the three, up.
    let out = nodes[2].cli(&["nodes", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: aura_model::fleet::NodeList = serde_json::from_slice(&out.stdout).expect("node list");
    assert!(list.fleet);
    let up: BTreeSet<_> = list
        .nodes
        .iter()
        .filter(|n| n.state == aura_model::NodeState::Up)
        .map(|n| n.name.as_str())
        .collect();
    assert_eq!(up, ["node-a", "node-b", "node-c"].into());
}

/// The processes whose command line names `marker`.
fn pids_named(marker: &str) -> Vec<u32> {
    all_pids()
        .into_iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(marker))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_nodes_jobs_are_rescued_and_its_return_kills_its_stale_trees() {
    let cluster = PgCluster::start();
    let url = cluster.fresh_database();
    // Node B alone first, so that it holds the long jobs.
    let mut b = node(&url, "node-b", &[]);
    let dir = shared_dir();
    let runs = dir.path();
    let marker = format!("fleet-rescue-{}", std::process::id());
    let client_b = b.client();
    let mut ids = Vec::new();
    for n in 0..2 {
        // A setsid'd grandchild outlives its parent unless the tree is killed as a whole.
        let then = format!("setsid bash -c 'exec -a {marker} sleep 600' & exec sleep 600");
        let view = client_b
            .submit_batch(vec![marker_job(runs, n, &then)])
            .await
            .expect("submit");
        ids.push(view[0].id);
    }
    for &id in &ids {
        let view = wait_running(&client_b, id, 2).await;
        assert_eq!(view.job.node.as_deref(), Some("node-b"));
    }
    let stale = pids_named(&marker);
    assert_eq!(stale.len(), 2, "two setsid'd grandchildren");
    let a = node(&url, "node-a", &[]);
    let c = node(&url, "node-c", &[]);
    let killed = Instant::now();
    b.stop_now();
    // Within the heartbeat timeout (4 s) + 5 s, A or C runs both again as attempt 2.
    let client_a = a.client();
    let rescued = loop {
        let views = futures_util::future::join_all(ids.iter().map(|&id| client_a.get(id))).await;
        let moved = views
            .iter()
            .filter_map(|v| v.as_ref().ok())
            .filter(|v| {
                v.job.attempt >= 2
                    && v.job.state.name() == aura_model::StateName::Running
                    && v.job.node.as_deref() != Some("node-b")
            })
            .count();
        if moved == ids.len() {
            break killed.elapsed();
        }
        assert!(
            killed.elapsed() < Duration::from_secs(4 + 5 + 3),
            "not rescued in time: {views:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!("rescued in {rescued:?}");
    // B's own grandchildren still run (nobody was left to kill them) until B comes back: its first act.
    assert!(stale.iter().any(|&p| alive(p)));
    b.spawn();
    assert!(
        all_gone_within(&stale, Duration::from_secs(5)).await,
        "the restarted node killed its stale trees"
    );
    // Its return changes nothing of the rescued jobs: they run on A or C, attempt 2.
    for &id in &ids {
        let view = client_a.get(id).await.expect("get");
        assert_eq!(view.job.attempt, 2);
        assert_ne!(view.job.node.as_deref(), Some("node-b"));
        assert_eq!(view.job.state.name(), aura_model::StateName::Running);
    }
    // Cancelled through B: forwarded to the node that holds each job.
    for &id in &ids {
        let out = b.cli(&["kill", &id.to_string()]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for &id in &ids {
        let view = wait_done(&client_a, id).await;
        assert!(matches!(view.job.outcome(), Some(Outcome::Cancelled)));
    }
    drop(c);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zombie_nodes_writes_are_fenced() {
    let cluster = PgCluster::start();
    let url = cluster.fresh_database();
    let b = node(&url, "node-b", &[]);
    let dir = shared_dir();
    let runs = dir.path();
    let client_b = b.client();
    // Ends by itself while B is frozen: B's record of that end, when it thaws, is for a rescued job.
    let id = client_b
        .submit_batch(vec![marker_job(runs, 0, "sleep 3")])
        .await
        .expect("submit")[0]
        .id;
    wait_running(&client_b, id, 1).await;
    let a = node(&url, "node-a", &[]);
    b.signal(rustix::process::Signal::STOP);
    let client_a = a.client();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let view = client_a.get(id).await.expect("get");
        if view.job.attempt >= 2 && view.job.node.as_deref() == Some("node-a") {
            break;
        }
        assert!(Instant::now() < deadline, "not rescued: {:?}", view.job);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The first attempt's process has ended by now; B thaws and tries to record it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    b.signal(rustix::process::Signal::CONT);
    let view = wait_done(&client_a, id).await;
    assert_eq!(view.job.attempt, 2, "the rescued attempt is the record");
    assert_eq!(view.job.node.as_deref(), Some("node-a"));
    assert!(matches!(view.job.outcome(), Some(Outcome::Succeeded)));
    // B noticed, killed nothing of A's, and says why its writes went nowhere.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = std::fs::read_to_string(b.log_path()).unwrap_or_default();
        if log.contains("fenced") || log.contains("declared dead") {
            break;
        }
        assert!(Instant::now() < deadline, "B's log: {log}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let events = client_a.events(id).await.expect("events");
    let from_zombie: Vec<_> = events
        .iter()
        .filter(|e| e.attempt == 1 && matches!(e.event.kind().as_str(), "exited" | "finished"))
        .collect();
    assert!(
        from_zombie.is_empty(),
        "the zombie's end of attempt 1 was refused: {events:?}"
    );
    let finished = events
        .iter()
        .filter(|e| e.event.kind() == "finished")
        .count();
    assert_eq!(finished, 1, "one end, the rescued attempt's: {events:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_limit_holds_across_the_fleet() {
    let cluster = PgCluster::start();
    let url = cluster.fresh_database();
    let limit = [("AURA_ADMISSION__LIMITS__TTS__MAX_CONCURRENT", "2")];
    let nodes = [
        node(&url, "node-a", &limit),
        node(&url, "node-b", &limit),
        node(&url, "node-c", &limit),
    ];
    let a = nodes[0].client();
    submit_ids(&a, tts_sleepers(24, "0.3")).await;
    let mut most = 0;
    let mut samples = 0;
    let mut nodes_seen = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let page = a
            .list(&aura_client::ListQuery {
                states: vec!["running".into(), "stopping".into()],
                limit: Some(1000),
                ..Default::default()
            })
            .await
            .expect("list");
        most = most.max(page.jobs.len());
        nodes_seen.extend(page.jobs.iter().filter_map(|j| j.job.node.clone()));
        samples += 1;
        let done = all_jobs(&a)
            .await
            .iter()
            .filter(|j| j.job.outcome().is_some())
            .count();
        if done == 24 {
            break;
        }
        assert!(Instant::now() < deadline, "jobs did not finish");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        most <= 2,
        "at most 2 at once fleet-wide, saw {most} ({samples} samples)"
    );
    assert_eq!(most, 2, "the limit was used");
    assert!(
        nodes_seen.len() >= 2,
        "ran on several nodes: {nodes_seen:?}"
    );
}

/// Leases hold slots of fleet limits fleet-wide: with a limit of 2, a lease on each of two nodes fills
/// it, a third lease (on either) is refused naming the limit, jobs naming it wait on every node, and
/// each release lets one start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_hold_fleet_limits_across_nodes() {
    let cluster = PgCluster::start();
    let url = cluster.fresh_database();
    let limit = [("AURA_ADMISSION__LIMITS__TTS__MAX_CONCURRENT", "2")];
    let nodes = [node(&url, "node-a", &limit), node(&url, "node-b", &limit)];
    let (ha, hb) = (authed(&nodes[0].url), authed(&nodes[1].url));
    let tts =
        serde_json::json!({"resources": {"providers": ["tts"]}, "ttl": "60s", "holder": "e2e"});
    let mut leases = Vec::new();
    for (http, daemon) in [(&ha, &nodes[0]), (&hb, &nodes[1])] {
        let resp = acquire_lease(http, daemon, tts.clone())
            .await
            .expect("lease");
        assert_eq!(resp.status().as_u16(), 201);
        let lease: serde_json::Value = resp.json().await.expect("json");
        leases.push(lease["id"].as_u64().expect("id"));
    }
    for (http, daemon) in [(&ha, &nodes[0]), (&hb, &nodes[1])] {
        let resp = acquire_lease(http, daemon, tts.clone())
            .await
            .expect("lease");
        assert_eq!(
            resp.status().as_u16(),
            409,
            "the fleet's two slots are leased"
        );
        let problem: serde_json::Value = resp.json().await.expect("json");
        assert_eq!(problem["code"], "lease_unavailable", "{problem}");
        assert!(
            problem["detail"]
                .as_str()
                .unwrap_or_default()
                .contains("tts"),
            "{problem}"
        );
    }
    let a = nodes[0].client();
    let ids = submit_ids(&a, tts_sleepers(2, "0.2")).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    for id in &ids {
        let view = a.get(*id).await.expect("get");
        assert_eq!(
            view.job.state.name(),
            aura_model::StateName::Queued,
            "{:?}",
            view.job
        );
    }
    // B's lease goes: the jobs run one at a time (on either node), A's lease holding the other slot.
    assert_eq!(release_lease(&hb, &nodes[1], leases[1]).await, 204);
    let done = all_finished(&a, 2, Duration::from_secs(30)).await;
    assert_eq!(
        super::admission::max_overlap(&done),
        1,
        "one at a time: {done:?}"
    );
    assert_eq!(release_lease(&ha, &nodes[0], leases[0]).await, 204);
}

/// The live progress of an encode on one node reaches an event stream opened on another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_progress_crosses_nodes() {
    use super::media::{have_ffmpeg, read_events, stream};
    if !have_ffmpeg() {
        return;
    }
    let cluster = PgCluster::start();
    let url = cluster.fresh_database();
    let nodes = [
        node(&url, "node-a", &[]),
        node(&url, "node-b", &[("AURA_FLEET__TAGS", "[\"enc\"]")]),
    ];
    let a = nodes[0].client();
    let out = shared_dir();
    let out_file = out.path().join("out.mp4");
    // `-re`: real time, so the encode reports progress all along its 4 s.
    let entry = serde_json::json!({
        "program": "ffmpeg",
        "args": ["-nostdin", "-y", "-re", "-f", "lavfi", "-i", "testsrc=duration=4:size=320x240:rate=25",
                 "-c:v", "libx264", "-preset", "ultrafast", out_file.to_str().expect("utf-8")],
        "labels": {"requires": "enc"}
    });
    let id = a.submit_batch(vec![entry]).await.expect("submit")[0].id;
    let response = stream(&nodes[0], &format!("/api/jobs/{id}/events/stream"), None).await;
    let events = read_events(response, Duration::from_secs(60), |e| e.event == "end").await;
    let progress: Vec<aura_model::ProgressUpdate> = events
        .iter()
        .filter(|e| e.event == "progress")
        .map(|e| serde_json::from_str(&e.data).expect("a progress update"))
        .collect();
    assert!(progress.len() >= 2, "{events:?}");
    assert!(progress.iter().all(|u| u.job_id == id));
    assert!(progress
        .iter()
        .any(|u| u.progress.percent.is_some_and(|p| p > 0.0)));
    let view = a.get(id).await.expect("get");
    assert_eq!(
        view.job.node.as_deref(),
        Some("node-b"),
        "ran on the tagged node"
    );
    assert!(
        view.job.outcome().is_some_and(|o| o.is_success()),
        "{:?}",
        view.job.state
    );
}

/// A bulk cancel asked of one node stops the selection's jobs on every node — running on either, or
/// still in the fleet's queue — and leaves the rest alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_cancel_reaches_every_node() {
    let cluster = PgCluster::start();
    let url = cluster.fresh_database();
    let nodes = [node(&url, "node-a", &[]), node(&url, "node-b", &[])];
    let a = nodes[0].client();
    let job = |batch: &str| serde_json::json!({"program": "/bin/sleep", "args": ["300"], "labels": {"batch": batch}});
    let mut entries: Vec<_> = (0..6).map(|_| job("x")).collect();
    entries.push(job("keep"));
    let ids = submit_ids(&a, entries).await;
    // Both nodes run some (two slots each); the rest wait.
    wait_running_on(&a, 2, Duration::from_secs(30), "both nodes run jobs").await;
    let selection = aura_model::view::CancelSelection {
        labels: [("batch".to_owned(), "x".to_owned())].into(),
        ..Default::default()
    };
    let done = a.cancel_where(&selection).await.expect("cancel");
    assert_eq!(done.ids, ids[..6], "{done:?}");
    assert!(done.unreachable_nodes.is_empty());
    let views = all_finished_but(&a, ids[6], Duration::from_secs(30)).await;
    for v in &views {
        assert_eq!(
            v.job.outcome().map(|o| o.name()),
            Some("cancelled"),
            "{:?}",
            v.job
        );
    }
    assert!(
        a.get(ids[6]).await.expect("get").job.outcome().is_none(),
        "the job outside the selection runs on"
    );
    let _ = a.cancel(ids[6]).await;
}

/// Waits until jobs run on `nodes` different nodes (as `client`'s node sees it); fails with `why`
/// after `limit`.
async fn wait_running_on(client: &Client, nodes: usize, limit: Duration, why: &str) {
    let deadline = Instant::now() + limit;
    loop {
        let running: BTreeSet<String> = all_jobs(client)
            .await
            .iter()
            .filter(|j| j.job.state.name() == aura_model::StateName::Running)
            .filter_map(|j| j.job.node.clone())
            .collect();
        if running.len() == nodes {
            return;
        }
        assert!(Instant::now() < deadline, "{why}: running on {running:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every job but `keep`, once all of them have finished (as `client`'s node sees it).
async fn all_finished_but(client: &Client, keep: JobId, limit: Duration) -> Vec<JobView> {
    let deadline = Instant::now() + limit;
    loop {
        let others: Vec<JobView> = all_jobs(client)
            .await
            .into_iter()
            .filter(|v| v.job.id != keep)
            .collect();
        if others.iter().all(|v| v.job.outcome().is_some()) {
            return others;
        }
        assert!(Instant::now() < deadline, "jobs did not finish: {others:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The queue cap holds for the fleet's one queue: what waits anywhere counts, whichever node is asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_cap_counts_the_fleets_queue() {
    let cluster = PgCluster::start();
    let url = cluster.fresh_database();
    let cap = [("AURA_ADMISSION__QUEUE_CAP", "3")];
    let nodes = [node(&url, "node-a", &cap), node(&url, "node-b", &cap)];
    let (a, b) = (nodes[0].client(), nodes[1].client());
    a.drain().await.expect("drain");
    b.drain().await.expect("drain");
    let sleeper = || serde_json::json!({"program": "/bin/sleep", "args": ["300"]});
    a.submit_batch(vec![sleeper(), sleeper()])
        .await
        .expect("two fit");
    let queue_full = |r: &Result<Vec<aura_model::Job>, aura_client::ClientError>| matches!(r, Err(aura_client::ClientError::Api(p)) if p.code == "queue_full");
    let over = b.submit_batch(vec![sleeper(), sleeper()]).await;
    assert!(
        queue_full(&over),
        "two more, asked of the other node, pass the cap of 3: {over:?}"
    );
    b.submit_batch(vec![sleeper()])
        .await
        .expect("one more fits");
    let full = a.submit_batch(vec![sleeper()]).await;
    assert!(queue_full(&full), "the fleet's queue is full: {full:?}");
    assert_eq!(
        all_jobs(&a).await.len(),
        3,
        "nothing stored by a refused submit"
    );
    let _ = a
        .cancel_where(&aura_model::view::CancelSelection::default())
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_restart_loses_and_duplicates_nothing() {
    let cluster = PgCluster::start();
    let url = cluster.fresh_database();
    let nodes = [node(&url, "node-a", &[]), node(&url, "node-b", &[])];
    let dir = shared_dir();
    let runs = dir.path();
    const JOBS: usize = 300;
    let a = nodes[0].client();
    let entries = (0..JOBS)
        .map(|n| marker_job(runs, n, "sleep 0.05"))
        .collect();
    a.submit_batch(entries).await.expect("submit");
    // Some have run; then the database goes away for a while.
    let deadline = Instant::now() + Duration::from_secs(30);
    while (0..JOBS)
        .filter(|n| runs.join(n.to_string()).exists())
        .count()
        < 30
    {
        assert!(Instant::now() < deadline, "nothing ran");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cluster.stop();
    // The API answers, fast, that the store is unavailable instead of hanging.
    let asked = Instant::now();
    let answer = http_get(format!("{}/api/jobs?limit=1", nodes[1].url))
        .await
        .expect("an answer");
    assert_eq!(answer.status(), 503);
    let body: serde_json::Value = answer.json().await.expect("problem");
    assert_eq!(body["code"], "store_unavailable", "{body}");
    assert!(asked.elapsed() < Duration::from_secs(10));
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.start_again();
    let jobs = all_finished(&a, JOBS, Duration::from_secs(120)).await;
    let finished = jobs.iter().filter(|j| j.job.outcome().is_some()).count();
    assert_eq!(finished, JOBS, "every job finished");
    let wrong: Vec<(usize, usize)> = (0..JOBS)
        .map(|n| (n, lines_of(&runs.join(n.to_string()))))
        .filter(|(_, l)| *l != 1)
        .collect();
    assert!(wrong.is_empty(), "jobs run other than once: {wrong:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_pin_jobs_and_pipelines_and_logs_cross_nodes() {
    let cluster = PgCluster::start();
    let url = cluster.fresh_database();
    let a = node(&url, "node-a", &[]);
    let gpu = node(
        &url,
        "node-gpu",
        &[("AURA_FLEET__TAGS", "[\"gpu\", \"nvenc\"]")],
    );
    let client = a.client();
    // Pinned: only the node tagged gpu and nvenc may run these.
    let pinned: Vec<_> = (0..6)
        .map(|n| {
            serde_json::json!({"program": "/bin/echo", "args": [format!("frame {n}")],
                               "labels": {"requires": "gpu,nvenc"}})
        })
        .collect();
    let jobs = client.submit_batch(pinned).await.expect("submit");
    for job in &jobs {
        let view = wait_done(&client, job.id).await;
        assert_eq!(view.job.node.as_deref(), Some("node-gpu"));
    }
    // Its output, asked of node A, comes from node-gpu (forwarded with the fleet token).
    let out = a.cli(&["logs", &jobs[0].id.to_string()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout(&out).trim(), "frame 0");
    // A pipeline: each step after the previous one, wherever each runs.
    let dir = shared_dir();
    let log = dir.path().join("order");
    let steps: Vec<_> = (0..6)
        .map(|n| {
            let mut entry = serde_json::json!({"name": format!("s{n}"), "program": "/bin/sh",
                "args": ["-c", format!("echo {n} >> {}", log.display())]});
            if n > 0 {
                entry["after"] = serde_json::json!([format!("s{}", n - 1)]);
            }
            entry
        })
        .collect();
    let chain = client.submit_batch(steps).await.expect("submit chain");
    let last = wait_done(&client, chain[5].id).await;
    assert!(matches!(last.job.outcome(), Some(Outcome::Succeeded)));
    let order = std::fs::read_to_string(&log).expect("order");
    assert_eq!(order, "0\n1\n2\n3\n4\n5\n");
    drop(gpu);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_node_gives_its_queue_back_to_the_fleet() {
    let cluster = PgCluster::start();
    let url = cluster.fresh_database();
    // A alone claims everything (one job at a time, the rest waiting in its queue).
    let a = node(
        &url,
        "node-a",
        &[
            ("AURA_MAX_CONCURRENT", "1"),
            ("AURA_STANDBY_JOBS", "0"),
            // Claims the whole queue (beyond its one slot), as a node with a deep prefetch does.
            ("AURA_FLEET__PREFETCH", "16"),
        ],
    );
    let client = a.client();
    let entries: Vec<_> = (0..8)
        .map(|_| serde_json::json!({"program": "/bin/sleep", "args": ["0.5"]}))
        .collect();
    let jobs = client.submit_batch(entries).await.expect("submit");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let claimed = all_jobs(&client)
            .await
            .iter()
            .filter(|j| j.job.node.as_deref() == Some("node-a"))
            .count();
        if claimed == jobs.len() {
            break;
        }
        assert!(Instant::now() < deadline, "node-a did not claim the queue");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let b = node(&url, "node-b", &[]);
    let out = a.cli(&["drain"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let views = all_finished(&client, jobs.len(), Duration::from_secs(60)).await;
    let on_b = views
        .iter()
        .filter(|j| j.job.node.as_deref() == Some("node-b"))
        .count();
    assert!(
        views
            .iter()
            .all(|j| matches!(j.job.outcome(), Some(Outcome::Succeeded))),
        "every job succeeded"
    );
    assert!(
        on_b >= jobs.len() - 2,
        "the drained node's queue ran on node-b: {on_b} of {}",
        jobs.len()
    );
    drop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_jobs_do_not_wait_on_a_busy_node_while_another_is_idle() {
    let cluster = PgCluster::start();
    let url = cluster.fresh_database();
    let one_slot = [("AURA_MAX_CONCURRENT", "1"), ("AURA_STANDBY_JOBS", "0")];
    let a = node(&url, "node-a", &one_slot);
    let client = a.client();
    let entries: Vec<_> = (0..3)
        .map(|_| serde_json::json!({"program": "/bin/sleep", "args": ["30"]}))
        .collect();
    let jobs = client.submit_batch(entries).await.expect("submit");
    // A claims them all (its slot and its prefetch) and runs one.
    wait_running(&client, jobs[0].id, 1).await;
    let b = node(&url, "node-b", &one_slot);
    // A's waiting jobs go back once none of its jobs ended for a while; idle B starts one.
    wait_running_on(
        &client,
        2,
        Duration::from_secs(15),
        "a long job waited on busy node-a while node-b idled",
    )
    .await;
    // The daemons' shutdown stops what still runs.
    drop(b);
}

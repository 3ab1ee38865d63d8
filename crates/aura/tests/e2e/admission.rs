//! Admission through the daemon: memory reservations, leases, rate and provider limits, GPUs, the guards,
//! backfill, a 10,000-job queue, learned requests, refusals at submit.

use super::*;

/// The most jobs whose runs overlapped, from their recorded start and finish times.
pub(crate) fn max_overlap(views: &[JobView]) -> usize {
    let mut edges = Vec::new();
    for v in views {
        let JobState::Finished(f) = &v.job.state else {
            panic!("unfinished: {v:?}")
        };
        let run = f.run.as_ref().expect("ran");
        // An end sorts before a start at the same millisecond: those runs did not overlap.
        edges.push((run.started_at, 1i32));
        edges.push((f.finished_at, -1i32));
    }
    edges.sort();
    let (mut now, mut max) = (0i32, 0i32);
    for (_, delta) in edges {
        now += delta;
        max = max.max(now);
    }
    max as usize
}

async fn submit_all(client: &Client, specs: Vec<JobSpec>) -> Vec<JobId> {
    let tasks: Vec<_> = specs
        .into_iter()
        .map(|spec| {
            let client = client.clone();
            tokio::spawn(async move { client.submit(&spec).await.expect("submit").job.id })
        })
        .collect();
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.expect("task"));
    }
    ids
}

#[tokio::test(flavor = "multi_thread")]
async fn memory_reservations_bound_concurrency() {
    let daemon = Daemon::start(&[
        ("AURA_MAX_CONCURRENT", "10"),
        ("AURA_ADMISSION__MEMORY", "1GiB"),
    ]);
    let client = daemon.client();
    let mut job = spec("sleep", &["0.4"]);
    job.resources.memory = Some("400MiB".parse().unwrap());
    let ids = submit_all(&client, vec![job; 6]).await;
    let queued = client.get(*ids.last().unwrap()).await.unwrap();
    if queued.job.state.name() == aura_model::StateName::Queued {
        let waiting = queued.waiting.unwrap_or_default();
        assert!(
            waiting.starts_with("waiting for memory: needs 400.0 MiB"),
            "{waiting}"
        );
    }
    let mut views = Vec::new();
    for id in ids {
        let view = wait_done(&client, id).await;
        assert!(outcome(&view).is_success(), "{view:?}");
        views.push(view);
    }
    assert_eq!(max_overlap(&views), 2);
    let u = client.utilization().await.unwrap();
    assert_eq!(
        u.reserved_memory_bytes, 0,
        "every reservation is released: {u:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_abandoned_lease_is_reclaimed_and_its_capacity_comes_back() {
    let daemon = Daemon::start(&[("AURA_ADMISSION__MEMORY", "1GiB")]);
    let client = daemon.client();
    let http = authed(&daemon.url);
    let acquire = |body: serde_json::Value| acquire_lease(&http, &daemon, body);
    let resp = acquire(
        serde_json::json!({"resources": {"memory": "600MiB"}, "ttl": "1s", "holder": "tts-worker"}),
    )
    .await
    .unwrap();
    assert_eq!(resp.status().as_u16(), 201);
    let lease: serde_json::Value = resp.json().await.unwrap();
    let lease_id = lease["id"].as_u64().unwrap();
    // A second lease that does not fit now is refused at once, naming what is missing.
    let resp = acquire(serde_json::json!({"resources": {"memory": "600MiB"}, "ttl": "1s"}))
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 409);
    let problem: serde_json::Value = resp.json().await.unwrap();
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("waiting for memory"),
        "{problem}"
    );
    let resp = acquire(serde_json::json!({"resources": {"memory": "2GiB"}, "ttl": "1s"}))
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 422);
    // Renewing works while the holder is alive …
    let renew = http
        .post(format!("{}/api/leases/{lease_id}/renew", daemon.url))
        .send()
        .await
        .unwrap();
    assert_eq!(renew.status().as_u16(), 200);
    // … then the holder vanishes. A job that needs the memory waits for it.
    let mut job = spec("true", &[]);
    job.resources.memory = Some("600MiB".parse().unwrap());
    let abandoned = Instant::now();
    let id = submit(&client, &job).await;
    let view = wait_done(&client, id).await;
    let started = view.job.state.run().unwrap().started_at;
    assert!(outcome(&view).is_success());
    let waited = started.since(view.job.submitted_at);
    assert!(
        waited >= Duration::from_millis(500),
        "the job started before the lease expired ({waited:?})"
    );
    assert!(
        abandoned.elapsed() < Duration::from_secs(3),
        "reclaimed within 2 s of the TTL"
    );
    let gone = http
        .post(format!("{}/api/leases/{lease_id}/renew", daemon.url))
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status().as_u16(), 404);
    let u = client.utilization().await.unwrap();
    assert_eq!(u.reserved_memory_bytes, 0, "{u:?}");
    // An explicit release gives the capacity back at once.
    let resp = acquire(serde_json::json!({"resources": {"memory": "1GiB"}, "ttl": "60s"}))
        .await
        .unwrap();
    let id: u64 = resp.json::<serde_json::Value>().await.unwrap()["id"]
        .as_u64()
        .unwrap();
    assert_eq!(release_lease(&http, &daemon, id).await, 204);
    assert_eq!(client.utilization().await.unwrap().reserved_memory_bytes, 0);
}

/// A standby holds its reservation while it waits for a slot; a lease that needs that capacity gets
/// it (the standby goes back to the queue) instead of being refused.
#[tokio::test(flavor = "multi_thread")]
async fn a_lease_takes_what_a_waiting_standby_reserved() {
    let daemon = Daemon::start(&[
        ("AURA_MAX_CONCURRENT", "1"),
        ("AURA_ADMISSION__MEMORY", "1GiB"),
    ]);
    let client = daemon.client();
    let http = authed(&daemon.url);
    let (blocker, standby, marker) =
        blocker_then_marker(&daemon, &client, [Some("300MiB"), Some("600MiB")]).await;
    let u = client.utilization().await.unwrap();
    assert_eq!(
        u.reserved_memory_bytes,
        900u64 << 20,
        "the standby holds its reservation: {u:?}"
    );
    let resp = acquire_lease(
        &http,
        &daemon,
        serde_json::json!({"resources": {"memory": "600MiB"}, "ttl": "60s"}),
    )
    .await
    .unwrap();
    assert_eq!(
        resp.status().as_u16(),
        201,
        "the lease got the standby's memory"
    );
    let lease_id = resp.json::<serde_json::Value>().await.unwrap()["id"]
        .as_u64()
        .unwrap();
    let u = client.utilization().await.unwrap();
    assert_eq!(u.queued, 1, "{u:?}");
    assert_eq!(u.reserved_memory_bytes, 900u64 << 20, "{u:?}");
    client.cancel(blocker).await.unwrap();
    wait_done(&client, blocker).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !marker.exists(),
        "the withdrawn standby waits for the lease's memory"
    );
    assert_eq!(release_lease(&http, &daemon, lease_id).await, 204);
    assert!(outcome(&wait_done(&client, standby).await).is_success());
    assert!(marker.exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rate_limit_holds_starts_back_and_says_until_when() {
    let daemon = Daemon::start(&[
        ("AURA_MAX_CONCURRENT", "10"),
        ("AURA_ADMISSION__LIMITS__TTS__PER_MINUTE", "2"),
    ]);
    let client = daemon.client();
    let mut job = spec("true", &[]);
    job.resources.memory = Some("1MiB".parse().unwrap());
    job.resources.providers.insert("tts".into());
    let first = submit(&client, &job).await;
    let second = submit(&client, &job).await;
    let third = submit(&client, &job).await;
    wait_done(&client, first).await;
    wait_done(&client, second).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let view = client.get(third).await.unwrap();
    assert_eq!(
        view.job.state.name(),
        aura_model::StateName::Queued,
        "a third start inside the minute"
    );
    let waiting = view.waiting.unwrap_or_default();
    assert!(
        waiting.starts_with("waiting for tts: at most 2 starts per minute, next in"),
        "{waiting}"
    );
    client.cancel(third).await.unwrap();
}

/// GPU admission without a GPU: the devices come from config (as an operator would pin them), and the
/// admission arithmetic, the refusal at submit and CUDA_VISIBLE_DEVICES are real.
#[tokio::test(flavor = "multi_thread")]
async fn configured_gpus_bound_encoder_sessions_and_pick_devices() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("aura.toml");
    std::fs::write(
            &config,
            "max_concurrent = 10\n[admission]\ngpus = [{ vram = \"8GiB\", encoder_sessions = 2 }, { vram = \"24GiB\", encoder_sessions = 1 }]\n",
        )
        .unwrap();
    let daemon = Daemon::start(&[("AURA_CONFIG", config.to_str().unwrap())]);
    let client = daemon.client();
    let mut encode = spec("sh", &["-c", "echo $CUDA_VISIBLE_DEVICES; sleep 0.4"]);
    encode.resources.memory = Some("1MiB".parse().unwrap());
    encode.resources.gpus = Some(1);
    encode.resources.encoder_sessions = Some(1);
    let ids = submit_all(&client, vec![encode.clone(); 6]).await;
    let mut views = Vec::new();
    for id in &ids {
        let view = wait_done(&client, *id).await;
        assert!(outcome(&view).is_success(), "{view:?}");
        let device = String::from_utf8(client.logs(*id, "stdout", 0).await.unwrap().data).unwrap();
        assert!(device == "0\n" || device == "1\n", "{device:?}");
        views.push(view);
    }
    assert_eq!(
        max_overlap(&views),
        3,
        "two sessions on GPU 0, one on GPU 1"
    );
    let mut big = encode.clone();
    big.resources.vram = Some("16GiB".parse().unwrap());
    let big = submit(&client, &big).await;
    let view = wait_done(&client, big).await;
    assert!(outcome(&view).is_success());
    let device = String::from_utf8(client.logs(big, "stdout", 0).await.unwrap().data).unwrap();
    assert_eq!(device, "1\n", "only GPU 1 has 16 GiB");
    let mut impossible = encode;
    impossible.resources.gpus = Some(3);
    let err = client.submit(&impossible).await.unwrap_err().to_string();
    assert!(
        err.contains("gpu requested (3) exceeds this machine's capacity (2)"),
        "{err}"
    );
}

/// The guard reads the real host: with the threshold set above what any machine has available, it must
/// pause admission, say why, and hold a queued job back.
#[tokio::test(flavor = "multi_thread")]
async fn a_tripped_memory_guard_pauses_admission_and_says_why() {
    let daemon = Daemon::start(&[
        ("AURA_GUARDS__MIN_AVAILABLE_MEMORY", "0.999"),
        ("AURA_GUARDS__RESUME_AVAILABLE_MEMORY", "0.9995"),
        ("AURA_GUARDS__INTERVAL", "100ms"),
    ]);
    let client = daemon.client();
    let (utilization, id) = paused_admission_holds_a_job(&client, "available memory").await;
    let status = stdout(&daemon.cli(&["status"]));
    assert!(
        status.contains("admission:      paused: available memory"),
        "{status}"
    );
    assert!(
        status.contains("memory available, memory pressure"),
        "{status}"
    );
    let available = utilization
        .host
        .and_then(|h| h.available_memory)
        .unwrap_or(-1.0);
    assert!(available > 0.0 && available <= 1.0, "{utilization:?}");
    client.cancel(id).await.unwrap();
}

fn run_of(view: &JobView) -> (aura_model::Timestamp, aura_model::Timestamp) {
    let JobState::Finished(f) = &view.job.state else {
        panic!("unfinished: {view:?}")
    };
    (f.run.as_ref().expect("ran").started_at, f.finished_at)
}

#[tokio::test(flavor = "multi_thread")]
async fn backfill_never_starves_the_big_job() {
    let daemon = Daemon::start(&[
        ("AURA_MAX_CONCURRENT", "30"),
        ("AURA_ADMISSION__MEMORY", "8GiB"),
    ]);
    let client = daemon.client();
    let with_memory = |secs: &str, memory: &str| {
        let mut job = spec("sleep", &[secs]);
        job.resources.memory = Some(memory.parse().unwrap());
        job
    };
    // 6 GiB of running work that ends in steps.
    let mut running = Vec::new();
    for secs in ["1.5", "2.5", "3.5"] {
        running.push(submit(&client, &with_memory(secs, "2GiB")).await);
    }
    let big = submit(&client, &with_memory("0.1", "4GiB")).await;
    // Small jobs keep arriving the whole time.
    let mut small = Vec::new();
    for _ in 0..20 {
        small.push(submit(&client, &with_memory("0.5", "1GiB")).await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let big_run = run_of(&wait_done(&client, big).await);
    let second_end = run_of(&wait_done(&client, running[1]).await).1;
    let mut small_runs = Vec::new();
    for id in small {
        small_runs.push(run_of(&wait_done(&client, id).await));
    }
    assert!(
        small_runs.iter().any(|r| r.0 < big_run.0),
        "small jobs backfilled while the big one waited"
    );
    assert!(
        small_runs.iter().any(|r| r.0 > big_run.0),
        "small jobs kept arriving after it started"
    );
    // 4 GiB are free for it once the second 2 GiB job has ended (its 2 GiB plus the first one's, both
    // claimed for the big job however many small ones arrive).
    let late = big_run.0.since(second_end);
    assert!(
        late < Duration::from_millis(600),
        "the big job started {late:?} after enough memory was free"
    );
    assert!(
        big_run.0 < run_of(&wait_done(&client, running[2]).await).1,
        "it did not need the last job to end"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn ten_thousand_queued_jobs_drain_in_priority_order() {
    let daemon = Daemon::start(&[("AURA_MAX_CONCURRENT", "1")]);
    let client = daemon.client();
    let blocker = submit(&client, &spec("sleep", &["300"])).await;
    wait_running(&client, blocker, 1).await;
    let mut slowest = Duration::ZERO;
    let mut ids = Vec::new();
    for chunk in 0..100 {
        let tasks: Vec<_> = (0..100)
            .map(|i| {
                let client = client.clone();
                let mut job = spec("true", &[]);
                job.priority = (chunk * 100 + i) * 7919 % 5;
                job.resources.memory = Some("1MiB".parse().unwrap());
                tokio::spawn(async move {
                    let t = Instant::now();
                    let id = client.submit(&job).await.expect("submit").job.id;
                    (id, t.elapsed())
                })
            })
            .collect();
        for t in tasks {
            let (id, took) = t.await.unwrap();
            slowest = slowest.max(took);
            ids.push(id);
        }
    }
    // Generous: responsiveness, not speed, is what this checks (timings belong in benchmarks).
    assert!(
        slowest < Duration::from_secs(5),
        "a submit took {slowest:?} with {} queued",
        ids.len()
    );
    let u = client.utilization().await.unwrap();
    assert_eq!(u.queued, 10_000);
    client.cancel(blocker).await.unwrap();
    let last = *ids.iter().max().unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let u = client.utilization().await.unwrap();
        if u.queued == 0 && u.running == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the queue did not drain: {u:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    wait_done(&client, last).await;
    // Start order = order of the `started` events' sequence numbers; it must be priority, then id.
    let mut starts = Vec::new();
    for v in all_jobs(&client).await {
        if v.job.id != blocker {
            let JobState::Finished(f) = &v.job.state else {
                panic!("{v:?}")
            };
            starts.push((
                f.run.as_ref().unwrap().started_at,
                v.job.spec.priority,
                v.job.id,
            ));
        }
    }
    assert_eq!(starts.len(), 10_000);
    // Jobs run one at a time, so start times give the order; within one millisecond they cannot, and the
    // expected order breaks the tie.
    starts.sort_by_key(|(at, priority, id)| (*at, std::cmp::Reverse(*priority), *id));
    for pair in starts.windows(2) {
        let ((_, p0, id0), (_, p1, id1)) = (pair[0], pair[1]);
        assert!(
            p0 > p1 || (p0 == p1 && id0 < id1),
            "job {id1} (priority {p1}) started after job {id0} (priority {p0})"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_kind_with_history_gets_a_learned_request() {
    let daemon = Daemon::start(&[("AURA_ADMISSION__LEARN_MIN_SAMPLES", "5")]);
    let client = daemon.client();
    let mut job = spec(
        "sh",
        &["-c", "head -c 3000000 /dev/zero | tail -c 1 >/dev/null"],
    );
    job.labels.insert("kind".into(), "probe".into());
    let mut peaks = Vec::new();
    for _ in 0..5 {
        let view = client.submit(&job).await.unwrap();
        let source = &view.job.memory_request.as_ref().unwrap().source;
        assert_eq!(source, &aura_model::RequestSource::Default);
        let done = wait_done(&client, view.job.id).await;
        let JobState::Finished(f) = &done.job.state else {
            unreachable!()
        };
        peaks.push(f.accounting.memory_peak.unwrap().bytes());
    }
    let learned = client
        .submit(&job)
        .await
        .unwrap()
        .job
        .memory_request
        .unwrap();
    let p95 = *peaks.iter().max().unwrap(); // nearest-rank p95 of 5 samples is the largest
    assert_eq!(
        learned.source,
        aura_model::RequestSource::Learned {
            kind: "probe".into(),
            samples: 5,
            percentile_bytes: p95
        }
    );
    let margin = learned.bytes.bytes() as f64 / p95 as f64 - 1.0;
    assert!((margin - 0.2).abs() < 0.001, "margin {margin}");
    let mut stated = job.clone();
    stated.resources.memory = Some("64MiB".parse().unwrap());
    let view = client.submit(&stated).await.unwrap();
    assert_eq!(
        view.job.memory_request.unwrap().source,
        aura_model::RequestSource::Stated
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn provider_limits_hold_under_concurrent_submissions() {
    let env = [
        ("AURA_MAX_CONCURRENT", "50"),
        ("AURA_ADMISSION__LIMITS__OPENAI__MAX_CONCURRENT", "2"),
        ("AURA_ADMISSION__LIMITS__ELEVENLABS__MAX_CONCURRENT", "2"),
        ("AURA_ADMISSION__LIMITS__AZURE__MAX_CONCURRENT", "2"),
    ];
    let daemon = Daemon::start(&env);
    let client = daemon.client();
    let providers = ["openai", "elevenlabs", "azure"];
    let specs: Vec<JobSpec> = (0..50)
        .map(|i| {
            let mut job = spec("sleep", &["0.2"]);
            job.resources.memory = Some("1MiB".parse().unwrap());
            job.resources.providers.insert(providers[i % 3].to_owned());
            job
        })
        .collect();
    let ids = submit_all(&client, specs).await;
    let mut by_provider: std::collections::BTreeMap<String, Vec<JobView>> = Default::default();
    for id in ids {
        let view = wait_done(&client, id).await;
        assert!(outcome(&view).is_success(), "{view:?}");
        let provider = view
            .job
            .spec
            .resources
            .providers
            .iter()
            .next()
            .cloned()
            .unwrap();
        by_provider.entry(provider).or_default().push(view);
    }
    for (provider, views) in &by_provider {
        assert_eq!(max_overlap(views), 2, "{provider}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn impossible_requests_are_refused_at_submit_and_a_full_queue_says_retry_later() {
    let daemon = Daemon::start(&[
        ("AURA_MAX_CONCURRENT", "1"),
        ("AURA_ADMISSION__QUEUE_CAP", "2"),
    ]);
    let client = daemon.client();
    let mut huge = spec("true", &[]);
    huge.resources.memory = Some("64TiB".parse().unwrap());
    let err = client.submit(&huge).await.unwrap_err().to_string();
    assert!(
        err.contains("memory requested (64.0 TiB) exceeds this machine's capacity"),
        "{err}"
    );
    let mut unknown = spec("true", &[]);
    unknown.resources.providers.insert("nobody".into());
    let err = client.submit(&unknown).await.unwrap_err().to_string();
    assert!(err.contains("unknown named limit \"nobody\""), "{err}");

    let blocker = submit(&client, &spec("sleep", &["30"])).await;
    wait_running(&client, blocker, 1).await;
    client.submit(&spec("true", &[])).await.unwrap();
    client.submit(&spec("true", &[])).await.unwrap();
    let resp = authed(&daemon.url)
        .post(format!("{}/api/jobs", daemon.url))
        .json(&spec("true", &[]))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 429);
    assert_eq!(
        resp.headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("5")
    );
    let show = stdout(&daemon.cli(&["show", "3"]));
    assert!(
        show.contains("Waiting:    waiting for a job slot"),
        "{show}"
    );
    client.cancel(blocker).await.unwrap();
}

//! `cargo xtask bench fleet`: trivial jobs through a fleet of nodes on one throw-away PostgreSQL cluster,
//! beside one node on its SQLite database and the raw spawn rate, in the same run; submit→start latency
//! through the fleet; and how long a dead node's job takes to run again elsewhere.

use crate::harness::{client_runtime, finished_from, jobs_after, percentile, Daemon, QUIET_CPU};
use anyhow::Context;
use aura_client::{Client, ListQuery};
use aura_model::{StateName, Timestamp};
use std::path::Path;
use std::time::{Duration, Instant};

/// The token the benchmark's nodes share.
const TOKEN: &str = "bench-fleet-token-0123456789abcdef";

/// Submits `jobs` × `/bin/true` in batches of 1,000 from four concurrent submitters, waits for every
/// outcome, and returns the rate and the wall time: first submit → last outcome recorded; or, with
/// `queued` (every node), the run alone: the nodes drained while the jobs are stored, then undrained
/// at once, and the clock starts at the undrain.
async fn run_batch(
    client: &Client,
    jobs: usize,
    queued: Option<&[Client]>,
) -> anyhow::Result<(f64, f64)> {
    for node in queued.unwrap_or_default() {
        node.drain().await?;
    }
    let mut first = Timestamp::now();
    let chunks: Vec<usize> = (0..jobs.div_ceil(1000))
        .map(|i| (jobs - i * 1000).min(1000))
        .collect();
    let mut tasks = Vec::new();
    for (i, chunk) in chunks.into_iter().enumerate() {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            // Four at a time, so that the first batches run while the rest arrive.
            tokio::time::sleep(Duration::from_millis(10 * (i / 4) as u64)).await;
            let entries = (0..chunk)
                .map(|_| serde_json::json!({"program": "/bin/true"}))
                .collect();
            client.submit_batch(entries).await
        }));
    }
    let mut ids = Vec::with_capacity(jobs);
    for t in tasks {
        ids.extend(t.await??.into_iter().map(|j| j.id));
    }
    if let Some(nodes) = queued {
        first = Timestamp::now();
        for node in nodes {
            node.undrain().await?;
        }
    }
    let min = ids.iter().copied().min().context("no jobs")?;
    let deadline = Instant::now() + Duration::from_secs(600);
    // A cheap look (one unfinished job, by the state index) until none is left, then the full listing
    // once: listing every job each time would load the machine the run shares.
    loop {
        let page = client
            .list(&ListQuery {
                states: ["queued", "held", "running", "paused", "stopping"]
                    .map(String::from)
                    .to_vec(),
                limit: Some(1),
                ..Default::default()
            })
            .await?;
        if page.jobs.is_empty() || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    loop {
        let finished = finished_from(client, min).await?;
        if finished.len() >= jobs {
            let last = finished
                .iter()
                .map(|f| f.finished_at)
                .max()
                .context("no jobs")?;
            let wall = last.since(first).as_secs_f64();
            return Ok((jobs as f64 / wall, wall));
        }
        if Instant::now() > deadline {
            anyhow::bail!(
                "only {} of {jobs} jobs finished in 10 minutes",
                finished.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Submit→start of single jobs into an idle fleet, one at a time (ms, sorted).
async fn latencies(client: &Client, samples: usize) -> anyhow::Result<Vec<f64>> {
    let mut out = Vec::with_capacity(samples);
    for _ in 0..samples {
        let view = client
            .submit(&aura_model::JobSpec::new("/bin/true", Vec::<String>::new()))
            .await?;
        let done = client.wait(view.job.id, Duration::from_secs(30)).await?;
        let run = done.job.state.run().context("job did not run")?;
        out.push(run.started_at.since(done.job.submitted_at).as_secs_f64() * 1000.0);
    }
    out.sort_by(f64::total_cmp);
    Ok(out)
}

pub(crate) fn fleet(root: &Path, jobs: usize, nodes: usize) -> anyhow::Result<()> {
    if nodes < 2 {
        anyhow::bail!("--nodes must be at least 2");
    }
    let raw_before = crate::harness::raw_spawn_rate(jobs.min(4000), 2)?;
    let rt = client_runtime()?;
    // One node on SQLite: the single-node figure of the same run, under the nodes' settings so both compare.
    let ((single, single_wall), (single_run, single_run_wall)) = {
        let daemon = Daemon::start_named(root, 2, &QUIET_CPU, "-sqlite")?;
        let client = daemon.client()?;
        let end_to_end = rt.block_on(run_batch(&client, jobs, None))?;
        let run = rt.block_on(run_batch(
            &client,
            jobs,
            Some(std::slice::from_ref(&client)),
        ))?;
        (end_to_end, run)
    };
    let cluster = aura_store::testing::PgCluster::start();
    let url = cluster.fresh_database();
    let names: Vec<String> = (0..nodes).map(|i| format!("node-{i}")).collect();
    let mut daemons = Vec::with_capacity(nodes);
    for name in &names {
        let mut env = vec![
            ("AURA_STORE", url.as_str()),
            ("AURA_SECRET_FLEET_TOKEN", TOKEN),
            ("AURA_FLEET__NODE_NAME", name.as_str()),
            // The rescue figure with the default timeout, as a studio runs it.
            ("AURA_FLEET__HEARTBEAT_TIMEOUT", "15s"),
        ];
        env.extend(QUIET_CPU);
        daemons.push(Daemon::start_named(root, 2, &env, &format!("-{name}"))?);
    }
    let client = daemons[0].client()?;
    let ((fleet_rate, fleet_wall, (fleet_run, fleet_run_wall)), spread, lat, rescue) = rt
        .block_on(async {
            let lat = latencies(&client, 100).await?;
            let (rate, wall) = run_batch(&client, jobs, None).await?;
            let all: Vec<Client> = daemons
                .iter()
                .map(Daemon::client)
                .collect::<anyhow::Result<_>>()?;
            let run = run_batch(&client, jobs, Some(&all)).await?;
            let mut spread = std::collections::BTreeMap::<String, usize>::new();
            for v in jobs_after(&client, None).await? {
                *spread.entry(v.job.node.unwrap_or_default()).or_default() += 1;
            }
            // Rescue: two long jobs on the last node (the others drained meanwhile, so that it claims
            // them), then it is SIGKILLed and the others, undrained and idle, take them over.
            let others: Vec<Client> = daemons[..nodes - 1]
                .iter()
                .map(Daemon::client)
                .collect::<anyhow::Result<_>>()?;
            for c in &others {
                c.drain().await?;
            }
            let victim_name = names.last().cloned().unwrap_or_default();
            let mut ids = Vec::new();
            for _ in 0..2 {
                let spec = aura_model::JobSpec::new("/bin/sleep", vec!["600".to_owned()]);
                ids.push(client.submit(&spec).await?.job.id);
            }
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let mut running = 0;
                for &id in &ids {
                    let v = client.get(id).await?;
                    if v.job.state.name() == StateName::Running
                        && v.job.node.as_deref() == Some(victim_name.as_str())
                    {
                        running += 1;
                    }
                }
                if running == ids.len() {
                    break;
                }
                if Instant::now() > deadline {
                    anyhow::bail!("the long jobs did not start on {victim_name}");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            for c in &others {
                c.undrain().await?;
            }
            let victim_job = ids[0];
            Ok::<_, anyhow::Error>(((rate, wall, run), spread, lat, victim_job))
        })?;
    let victim = daemons.pop().context("no nodes")?;
    let killed = Instant::now();
    let _ = rustix::process::kill_process(
        rustix::process::Pid::from_child(&victim.child),
        rustix::process::Signal::KILL,
    );
    let (requeued, running) = rt.block_on(async {
        let mut requeued = None;
        loop {
            let v = client.get(rescue).await?;
            if v.job.attempt >= 2 {
                requeued.get_or_insert(killed.elapsed());
                if v.job.state.name() == StateName::Running {
                    return Ok::<_, anyhow::Error>((requeued.unwrap_or_default(), killed.elapsed()));
                }
            }
            if killed.elapsed() > Duration::from_secs(120) {
                let mut seen = Vec::new();
                for d in &daemons {
                    let c = d.client()?;
                    seen.push(format!("{}: {:?}", d.url, c.status().await.map(|s| (s.running, s.queued))));
                }
                anyhow::bail!(
                    "job {rescue} not running again 2 minutes after its node died: {:?} {:?}; nodes {seen:?}",
                    v.job.state,
                    v.job.node
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })?;
    drop(victim);
    drop(daemons);
    let raw = (raw_before + crate::harness::raw_spawn_rate(jobs.min(4000), 2)?) / 2.0;
    println!("fleet: {jobs} x /bin/true submitted in batches of 1,000 to node-0, max_concurrent 2 per node");
    println!("  raw spawn+wait     : {raw:8.1} jobs/s (2 threads, mean of before and after)");
    println!("  end to end (first submit → last outcome):");
    println!("    1 node, SQLite     : {single:8.1} jobs/s ({single_wall:.2}s)");
    println!("    {nodes} nodes, PostgreSQL: {fleet_rate:8.1} jobs/s ({fleet_wall:.2}s)");
    println!("  run alone (all stored first, nodes undrained → last outcome):");
    println!("    1 node, SQLite     : {single_run:8.1} jobs/s ({single_run_wall:.2}s)");
    println!(
        "    {nodes} nodes, PostgreSQL: {fleet_run:8.1} jobs/s ({fleet_run_wall:.2}s; target ≥ 1,000), spread {spread:?}"
    );
    println!(
        "  submit→start       : p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} single jobs into the idle fleet)",
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        percentile(&lat, 1.0),
        lat.len()
    );
    println!(
        "  rescue             : {:.1} s from SIGKILL of a node to its job requeued, {:.1} s to running again elsewhere (heartbeat timeout 15 s)",
        requeued.as_secs_f64(),
        running.as_secs_f64()
    );
    Ok(())
}

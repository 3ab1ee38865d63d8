//! `cargo xtask bench fleet`: trivial jobs through a fleet of nodes on one throw-away PostgreSQL cluster,
//! beside one node on its SQLite database and the raw spawn rate, in the same run; submit→start latency
//! through the fleet; and how long a dead node's job takes to run again elsewhere.

use crate::harness::{client_runtime, percentile, Daemon};
use anyhow::Context;
use aura_client::{Client, ListQuery};
use aura_model::{JobState, StateName, Timestamp};
use std::path::Path;
use std::time::{Duration, Instant};

/// The token the benchmark's nodes share.
const TOKEN: &str = "bench-fleet-token-0123456789abcdef";

/// Submits `jobs` × `/bin/true` in batches of 1,000 from four concurrent submitters, waits for every
/// outcome, and returns the rate (first submit → last outcome recorded) and the wall time.
async fn run_batch(client: &Client, jobs: usize) -> anyhow::Result<(f64, f64)> {
    let first = Timestamp::now();
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
    let min = ids.iter().copied().min().context("no jobs")?;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let counts = finished_since(client, min).await?;
        if counts.0 >= jobs {
            let wall = counts.1.since(first).as_secs_f64();
            return Ok((jobs as f64 / wall, wall));
        }
        if Instant::now() > deadline {
            anyhow::bail!("only {} of {jobs} jobs finished in 10 minutes", counts.0);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// How many jobs from `min` on have finished (each must have succeeded), and the latest end.
async fn finished_since(
    client: &Client,
    min: aura_model::JobId,
) -> anyhow::Result<(usize, Timestamp)> {
    let mut after = Some(aura_model::JobId(min.0 - 1));
    let (mut finished, mut last) = (0, Timestamp::from_unix_millis(0));
    loop {
        let page = client
            .list(&ListQuery {
                limit: Some(1000),
                after,
                oldest_first: true,
                ..Default::default()
            })
            .await?;
        for v in &page.jobs {
            if let JobState::Finished(f) = &v.job.state {
                if !f.outcome.is_success() {
                    anyhow::bail!("job {} did not succeed: {:?}", v.job.id, f.outcome);
                }
                finished += 1;
                last = last.max(f.finished_at);
            }
        }
        match (page.next_after, page.jobs.last()) {
            (Some(_), Some(v)) => after = Some(v.job.id),
            _ => return Ok((finished, last)),
        }
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
    // One node on SQLite: the single-node figure of the same run.
    let (single, single_wall) = {
        let daemon = Daemon::start_named(root, 2, &[], "-sqlite")?;
        let client = daemon.client()?;
        rt.block_on(run_batch(&client, jobs))?
    };
    let cluster = aura_store::testing::PgCluster::start();
    let url = cluster.fresh_database();
    let names: Vec<String> = (0..nodes).map(|i| format!("node-{i}")).collect();
    let mut daemons = Vec::with_capacity(nodes);
    for name in &names {
        let env = [
            ("AURA_STORE", url.as_str()),
            ("AURA_SECRET_FLEET_TOKEN", TOKEN),
            ("AURA_FLEET__NODE_NAME", name.as_str()),
            // The rescue figure with the default timeout, as a studio runs it.
            ("AURA_FLEET__HEARTBEAT_TIMEOUT", "15s"),
        ];
        daemons.push(Daemon::start_named(root, 2, &env, &format!("-{name}"))?);
    }
    let client = daemons[0].client()?;
    let (fleet_rate, fleet_wall, spread, lat, rescue) = rt.block_on(async {
        let lat = latencies(&client, 100).await?;
        let (rate, wall) = run_batch(&client, jobs).await?;
        let mut spread = std::collections::BTreeMap::<String, usize>::new();
        let mut after = None;
        loop {
            let page = client
                .list(&ListQuery {
                    limit: Some(1000),
                    after,
                    ..Default::default()
                })
                .await?;
            for v in &page.jobs {
                *spread
                    .entry(v.job.node.clone().unwrap_or_default())
                    .or_default() += 1;
            }
            match (page.next_after, page.jobs.last()) {
                (Some(_), Some(v)) => after = Some(v.job.id),
                _ => break,
            }
        }
        // Rescue: long jobs on every node, then the last node is SIGKILLed.
        let mut ids = Vec::new();
        for _ in 0..(2 * nodes) {
            let spec = aura_model::JobSpec::new("/bin/sleep", vec!["600".to_owned()]);
            ids.push(client.submit(&spec).await?.job.id);
        }
        let victim_name = names.last().cloned().unwrap_or_default();
        let victim_job = loop {
            let mut found = None;
            for &id in &ids {
                let v = client.get(id).await?;
                if v.job.state.name() == StateName::Running
                    && v.job.node.as_deref() == Some(victim_name.as_str())
                {
                    found = Some(id);
                }
            }
            if let Some(id) = found {
                break id;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        Ok::<_, anyhow::Error>((rate, wall, spread, lat, victim_job))
    })?;
    let victim = daemons.pop().context("no nodes")?;
    let killed = Instant::now();
    let _ = rustix::process::kill_process(
        rustix::process::Pid::from_child(&victim.child),
        rustix::process::Signal::KILL,
    );
    let rescued = rt.block_on(async {
        loop {
            let v = client.get(rescue).await?;
            if v.job.attempt >= 2 && v.job.state.name() == StateName::Running {
                return Ok::<_, anyhow::Error>(killed.elapsed());
            }
            if killed.elapsed() > Duration::from_secs(120) {
                anyhow::bail!("job {rescue} not rescued in 2 minutes");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })?;
    drop(victim);
    drop(daemons);
    let raw = (raw_before + crate::harness::raw_spawn_rate(jobs.min(4000), 2)?) / 2.0;
    println!("fleet: {jobs} x /bin/true submitted in batches of 1,000 to node-0, max_concurrent 2 per node");
    println!("  raw spawn+wait     : {raw:8.1} jobs/s (2 threads, mean of before and after)");
    println!("  1 node, SQLite     : {single:8.1} jobs/s ({single_wall:.2}s)");
    println!(
        "  {nodes} nodes, PostgreSQL: {fleet_rate:8.1} jobs/s ({fleet_wall:.2}s; target ≥ 1,000), spread {spread:?}"
    );
    println!(
        "  submit→start       : p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} single jobs into the idle fleet)",
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        percentile(&lat, 1.0),
        lat.len()
    );
    println!(
        "  rescue             : {:.1} s from SIGKILL of a node to its job running again elsewhere (heartbeat timeout 15 s)",
        rescued.as_secs_f64()
    );
    Ok(())
}

//! Benchmarks of media jobs: `bench sse` (fan-out of the all-jobs event stream to many subscribers while
//! short jobs run: the daemon's added memory and the delivery latency each subscriber measures) and
//! `bench ffmpeg` (real encodes run directly and under Aura, in ABBA order, wall time side by side).

use crate::harness::{percentile, Daemon};
use anyhow::Context;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// The daemon's resident memory now and its high-water mark, KiB.
fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// One subscriber: opens the all-jobs stream on a raw connection and, for every job event, records how
/// long after the event's own timestamp it arrived (ms). Ends when `stop` is set or the stream ends.
async fn subscriber(
    address: String,
    token: Option<String>,
    connected: Arc<tokio::sync::Semaphore>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<Vec<f64>> {
    let mut socket = tokio::net::TcpStream::connect(&address).await?;
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    socket
        .write_all(
            format!(
                "GET /api/events/stream?progress=false HTTP/1.1\r\nHost: {address}\r\n{auth}Accept: text/event-stream\r\n\r\n"
            )
            .as_bytes(),
        )
        .await?;
    let mut lines = BufReader::new(socket).lines();
    let status = lines.next_line().await?.context("no answer")?;
    anyhow::ensure!(status.contains(" 200 "), "stream refused: {status}");
    connected.add_permits(1);
    let mut latencies = Vec::new();
    let mut stop = stop;
    loop {
        let line = tokio::select! {
            line = lines.next_line() => line?,
            _ = stop.changed() => break,
        };
        let Some(line) = line else { break };
        // `data: {"seq":…,"job_id":…,"attempt":…,"at":"2026-…Z",…}`: the event's own time.
        let Some(at) = line
            .strip_prefix("data: ")
            .and_then(|d| d.split("\"at\":\"").nth(1))
            .and_then(|rest| rest.split('"').next())
        else {
            continue;
        };
        let received = now_ms();
        if let Ok(at) = humantime::parse_rfc3339_weak(at) {
            let at = at
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64);
            latencies.push((received - at) as f64);
        }
    }
    Ok(latencies)
}

/// `bench sse`: `subscribers` clients on the all-jobs stream while `jobs` short jobs run.
pub fn sse(root: &Path, subscribers: usize, jobs: usize) -> anyhow::Result<()> {
    let daemon = Daemon::start(root, 2)?;
    let pid = daemon.child.id();
    let address = daemon.url.trim_start_matches("http://").to_owned();
    let rt = crate::harness::runtime()?;
    let client = daemon.client()?;
    rt.block_on(async {
        // Warm up the daemon (its first jobs, its runtime) before the baseline.
        for _ in 0..20 {
            let view = client
                .submit(&aura_model::JobSpec::new("/bin/true", Vec::<String>::new()))
                .await?;
            client.wait(view.job.id, Duration::from_secs(30)).await?;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (before, _) = rss_kib(pid);
        let connected = Arc::new(tokio::sync::Semaphore::new(0));
        let (stop_tx, stop) = tokio::sync::watch::channel(false);
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..subscribers {
            tasks.spawn(subscriber(
                address.clone(),
                daemon.token.clone(),
                connected.clone(),
                stop.clone(),
            ));
        }
        let all = connected
            .acquire_many(subscribers as u32)
            .await
            .context("subscribers")?;
        all.forget();
        let (connected_rss, _) = rss_kib(pid);
        let started = Instant::now();
        let mut ids = Vec::with_capacity(jobs);
        for _ in 0..jobs {
            let view = client
                .submit(&aura_model::JobSpec::new("/bin/true", Vec::<String>::new()))
                .await?;
            ids.push(view.job.id);
        }
        let mut peak = connected_rss;
        for id in ids {
            client.wait(id, Duration::from_secs(120)).await?;
            peak = peak.max(rss_kib(pid).0);
        }
        let ran = started.elapsed();
        // The last events still on their way to the slowest subscribers.
        tokio::time::sleep(Duration::from_secs(2)).await;
        peak = peak.max(rss_kib(pid).0);
        let _ = stop_tx.send(true);
        let mut latencies = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            latencies.extend(joined??);
        }
        latencies.sort_by(f64::total_cmp);
        let expected = subscribers * jobs * 4;
        println!(
            "sse: {subscribers} subscribers, {jobs} jobs in {:.2} s; {} job events delivered (expected {expected}); \
             delivery latency p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms (target p99 ≤ 50 ms); \
             daemon RSS {:.1} MiB before, {:.1} MiB with the subscribers, peak {:.1} MiB: +{:.1} MiB (target ≤ 30 MiB)",
            ran.as_secs_f64(),
            latencies.len(),
            percentile(&latencies, 0.5),
            percentile(&latencies, 0.99),
            latencies.last().copied().unwrap_or(f64::NAN),
            before as f64 / 1024.0,
            connected_rss as f64 / 1024.0,
            peak as f64 / 1024.0,
            peak.saturating_sub(before) as f64 / 1024.0,
        );
        Ok(())
    })
}

/// The encode both sides run: 10 s of 720p test pattern through libx264.
fn encode_args(out: &Path) -> Vec<String> {
    [
        "-nostdin",
        "-y",
        "-loglevel",
        "error",
        "-f",
        "lavfi",
        "-i",
        "testsrc=duration=10:size=1280x720:rate=25",
        "-c:v",
        "libx264",
        "-preset",
        "veryfast",
        "-threads",
        "1",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain(std::iter::once(out.display().to_string()))
    .collect()
}

/// `encodes` encodes, `parallel` at a time, started directly; wall seconds.
fn direct(dir: &Path, encodes: usize, parallel: usize) -> anyhow::Result<f64> {
    let started = Instant::now();
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..parallel)
            .map(|_| {
                s.spawn(|| -> anyhow::Result<()> {
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if i >= encodes {
                            return Ok(());
                        }
                        let status = Command::new("ffmpeg")
                            .args(encode_args(&dir.join(format!("direct-{i}.mp4"))))
                            .status()
                            .context("cannot run ffmpeg (Debian package ffmpeg)")?;
                        anyhow::ensure!(status.success(), "ffmpeg failed: {status}");
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .try_for_each(|w| w.join().map_err(|_| anyhow::anyhow!("worker panicked"))?)
    })?;
    Ok(started.elapsed().as_secs_f64())
}

/// The same encodes submitted to Aura (which runs `parallel` at a time); wall seconds from the first
/// submit to the last end.
fn under_aura(
    rt: &tokio::runtime::Runtime,
    client: &aura_client::Client,
    dir: &Path,
    encodes: usize,
) -> anyhow::Result<f64> {
    rt.block_on(async {
        let started = Instant::now();
        let mut ids = Vec::with_capacity(encodes);
        for i in 0..encodes {
            let spec =
                aura_model::JobSpec::new("ffmpeg", encode_args(&dir.join(format!("aura-{i}.mp4"))));
            ids.push(client.submit(&spec).await?.job.id);
        }
        for id in ids {
            let view = client.wait(id, Duration::from_secs(600)).await?;
            anyhow::ensure!(
                view.job.outcome().is_some_and(|o| o.is_success()),
                "encode {id} failed: {:?}",
                view.job.outcome()
            );
        }
        Ok(started.elapsed().as_secs_f64())
    })
}

/// `bench ffmpeg`: ABBA rounds of `encodes` encodes, directly (A) and under Aura (B), 2 at a time.
pub fn ffmpeg(root: &Path, encodes: usize, rounds: usize) -> anyhow::Result<()> {
    let parallel = 2;
    // The direct side's encodes are "CPU outside Aura" to the daemon: its guard would hold the next
    // side's jobs back (as it should for an editor's work) and measure the guard, not the supervision.
    let daemon = Daemon::start_with(root, parallel, &crate::harness::QUIET_CPU)?;
    let rt = crate::harness::client_runtime()?;
    let client = daemon.client()?;
    let dir = std::env::temp_dir().join(format!("aura-bench-ffmpeg-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    // Jobs run as their own account when the daemon is root.
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o777))?;
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        for side in ["A", "B", "B", "A"] {
            let wall = if side == "A" {
                direct(&dir, encodes, parallel)?
            } else {
                under_aura(&rt, &client, &dir, encodes)?
            };
            println!("round {} {side}: {wall:.2} s", round + 1);
            if side == "A" { &mut a } else { &mut b }.push(wall);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    let (sa, sb): (f64, f64) = (a.iter().sum(), b.iter().sum());
    println!(
        "ffmpeg: {encodes} encodes ×{} per side, {parallel} at a time: direct {:.2} s, under Aura {:.2} s (mean of each side); \
         Aura/direct {:.1} % (target within 2 %)",
        a.len(),
        sa / a.len() as f64,
        sb / b.len() as f64,
        (sb / sa - 1.0) * 100.0
    );
    Ok(())
}

/// Seconds to run `jobs` trivial jobs through `client`, all submitted at once, from the first submit to
/// the last end.
async fn run_jobs(client: &aura_client::Client, jobs: usize) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut ids = Vec::with_capacity(jobs);
    for _ in 0..jobs {
        let spec = aura_model::JobSpec::new("/bin/true", Vec::<String>::new());
        ids.push(client.submit(&spec).await?.job.id);
    }
    for id in ids {
        client.wait(id, Duration::from_secs(120)).await?;
    }
    Ok(started.elapsed().as_secs_f64())
}

/// `bench sse-stuck`: `jobs` trivial jobs with no subscriber (A) and with a subscriber that never reads
/// its socket (B), ABBA × `rounds`: whether a client that reads nothing delays the engine.
pub fn stuck(root: &Path, jobs: usize, rounds: usize) -> anyhow::Result<()> {
    let daemon = Daemon::start(root, 2)?;
    let address = daemon.url.trim_start_matches("http://").to_owned();
    let rt = crate::harness::client_runtime()?;
    let client = daemon.client()?;
    let (mut a, mut b) = (Vec::new(), Vec::new());
    rt.block_on(async {
        run_jobs(&client, 200).await?;
        for round in 0..rounds {
            for side in ["A", "B", "B", "A"] {
                let stuck = if side == "B" {
                    let mut socket = tokio::net::TcpStream::connect(&address).await?;
                    let auth = daemon
                        .token
                        .as_ref()
                        .map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
                    socket
                        .write_all(
                            format!(
                                "GET /api/events/stream HTTP/1.1\r\nHost: {address}\r\n{auth}\r\n"
                            )
                            .as_bytes(),
                        )
                        .await?;
                    Some(socket)
                } else {
                    None
                };
                let seconds = run_jobs(&client, jobs).await?;
                drop(stuck);
                println!("round {} {side}: {jobs} jobs in {seconds:.3} s", round + 1);
                if side == "A" { &mut a } else { &mut b }.push(seconds);
            }
        }
        Ok::<_, anyhow::Error>(())
    })?;
    let (sa, sb): (f64, f64) = (a.iter().sum(), b.iter().sum());
    println!(
        "sse-stuck: {jobs} trivial jobs ×{} per side: alone {:.3} s, beside a client that reads nothing {:.3} s \
         (mean of each side): {:+.1} % (target ≤ 1 %)",
        a.len(),
        sa / a.len() as f64,
        sb / b.len() as f64,
        (sb / sa - 1.0) * 100.0
    );
    Ok(())
}

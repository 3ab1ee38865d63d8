//! Benchmarks of the API's front door: `bench api` (wrk on an authenticated `GET /api/jobs/{id}` and on
//! `/healthz`, which skips authentication, side by side in one run) and `bench flood` (`/healthz` latency
//! while thousands of idle connections and slowloris clients hold sockets open).

use crate::harness::{percentile, Daemon};
use anyhow::Context;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Requests per second wrk reports for `url` (with `token` as a bearer token if given).
fn wrk(url: &str, token: Option<&str>, seconds: usize) -> anyhow::Result<f64> {
    let mut cmd = Command::new("wrk");
    cmd.args(["-t2", "-c16", &format!("-d{seconds}s"), "--latency"]);
    if let Some(token) = token {
        cmd.args(["-H", &format!("Authorization: Bearer {token}")]);
    }
    let out = cmd
        .arg(url)
        .output()
        .context("cannot run wrk (Debian package wrk)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(
        !text.contains("Non-2xx"),
        "wrk saw error answers from {url}:\n{text}"
    );
    let line = text
        .lines()
        .find(|l| l.starts_with("Requests/sec:"))
        .with_context(|| format!("no Requests/sec in wrk's output:\n{text}"))?;
    let p99 = text
        .lines()
        .find(|l| l.trim_start().starts_with("99%"))
        .map_or("?".into(), |l| l.trim().to_owned());
    println!("  {url}: {} ({p99})", line.trim());
    Ok(line["Requests/sec:".len()..].trim().parse()?)
}

/// `bench api`: an authenticated read of one job against the unauthenticated health check, `runs` times.
pub fn api(root: &Path, seconds: usize, runs: usize) -> anyhow::Result<()> {
    let daemon = Daemon::start(root, 2)?;
    let rt = crate::harness::client_runtime()?;
    let client = daemon.client()?;
    let id = rt.block_on(async {
        let view = client
            .submit(&aura_model::JobSpec::new("/bin/true", Vec::<String>::new()))
            .await?;
        client.wait(view.job.id, Duration::from_secs(30)).await?;
        Ok::<_, anyhow::Error>(view.job.id)
    })?;
    let job_url = format!("{}/api/jobs/{id}", daemon.url);
    let health_url = format!("{}/healthz", daemon.url);
    let (mut jobs, mut health) = (Vec::new(), Vec::new());
    for run in 1..=runs {
        println!("run {run} of {runs} ({seconds} s each, 2 threads, 16 connections)");
        jobs.push(wrk(&job_url, daemon.token.as_deref(), seconds)?);
        health.push(wrk(&health_url, None, seconds)?);
    }
    jobs.sort_by(f64::total_cmp);
    health.sort_by(f64::total_cmp);
    println!(
        "api: GET /api/jobs/{{id}} with a token median {:.0} req/s; GET /healthz median {:.0} req/s",
        percentile(&jobs, 0.5),
        percentile(&health, 0.5)
    );
    Ok(())
}

/// `bench flood`: `/healthz` on a fresh connection every 10 ms, before and while `connections` idle
/// sockets and 50 slowloris clients are open; the latency distribution of each phase.
pub fn flood(root: &Path, connections: usize, seconds: usize) -> anyhow::Result<()> {
    let daemon = Daemon::start(root, 2)?;
    let addr = daemon.url.trim_start_matches("http://").to_owned();
    let measure = |label: &str| -> anyhow::Result<Vec<f64>> {
        let deadline = Instant::now() + Duration::from_secs(seconds as u64);
        let mut latencies = Vec::new();
        let mut failures = 0;
        while Instant::now() < deadline {
            let started = Instant::now();
            let ok = health(&addr).unwrap_or(false);
            latencies.push(started.elapsed().as_secs_f64() * 1000.0);
            if !ok {
                failures += 1;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        latencies.sort_by(f64::total_cmp);
        println!(
            "  {label:<32} {} checks, {failures} failed; ms p50 {:.2}, p99 {:.2}, max {:.2}",
            latencies.len(),
            percentile(&latencies, 0.5),
            percentile(&latencies, 0.99),
            latencies.last().copied().unwrap_or(f64::NAN)
        );
        anyhow::ensure!(failures == 0, "{failures} health checks failed ({label})");
        Ok(latencies)
    };
    println!("flood: /healthz latency on a fresh connection every 10 ms");
    measure("quiet")?;
    // Slowloris clients: a header byte every 500 ms, reconnecting when cut off.
    let stop = Arc::new(AtomicBool::new(false));
    let slow: Vec<_> = (0..50)
        .map(|_| {
            let (addr, stop) = (addr.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let Ok(mut s) = TcpStream::connect(&addr) else {
                        std::thread::sleep(Duration::from_millis(100));
                        continue;
                    };
                    let _ = write!(s, "GET /api/jobs HTTP/1.1\r\nHost: {addr}\r\nX-Slow: ");
                    while !stop.load(Ordering::Relaxed) && s.write_all(b"a").is_ok() {
                        std::thread::sleep(Duration::from_millis(500));
                    }
                }
            })
        })
        .collect();
    let mut idle = Vec::with_capacity(connections);
    let opened = Instant::now();
    for _ in 0..connections {
        idle.push(TcpStream::connect(&addr)?);
    }
    println!(
        "  opened {connections} idle connections in {:.2} s",
        opened.elapsed().as_secs_f64()
    );
    let flooded = measure(&format!("{connections} idle + 50 slowloris"))?;
    stop.store(true, Ordering::Relaxed);
    drop(idle);
    for t in slow {
        let _ = t.join();
    }
    let over = flooded.iter().filter(|l| **l > 50.0).count();
    println!(
        "flood: {over} of {} checks over 50 ms during the flood (target: none)",
        flooded.len()
    );
    Ok(())
}

fn health(addr: &str) -> std::io::Result<bool> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    Ok(text.starts_with("HTTP/1.1 200"))
}

/// The daemon's resident memory (MB) and open fds, from /proc.
fn rss_and_fds(pid: u32) -> (u64, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
    (rss_kib / 1024, fds)
}

/// RSS and fds of a fresh daemon before, during and 1/10/60 s after a flood of idle connections: whether
/// what a flood takes is given back without a manual cleanup.
pub fn flood_memory(root: &Path, sizes: &[usize]) -> anyhow::Result<()> {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    limit.current = limit.maximum;
    let _ = setrlimit(Resource::Nofile, limit);
    let fits = getrlimit(Resource::Nofile).current.map_or(usize::MAX, |n| {
        usize::try_from(n.saturating_sub(200)).unwrap_or(usize::MAX)
    });
    println!(
        "flood memory: RSS MB / open fds of the daemon (idle connections, closed by the client)"
    );
    for &wanted in sizes {
        let connections = wanted.min(fits);
        let daemon = Daemon::start(root, 2)?;
        let pid = daemon.child.id();
        let addr = daemon.url.trim_start_matches("http://").to_owned();
        std::thread::sleep(Duration::from_secs(2));
        let mut figures = vec![("before", rss_and_fds(pid))];
        let mut open = Vec::with_capacity(connections);
        for _ in 0..connections {
            open.push(TcpStream::connect(&addr)?);
        }
        std::thread::sleep(Duration::from_secs(2));
        figures.push(("during", rss_and_fds(pid)));
        drop(open);
        let closed = Instant::now();
        for (label, after) in [("+1 s", 1), ("+10 s", 10), ("+60 s", 60)] {
            let at = closed + Duration::from_secs(after);
            std::thread::sleep(at.saturating_duration_since(Instant::now()));
            figures.push((label, rss_and_fds(pid)));
        }
        let row: Vec<String> = figures
            .iter()
            .map(|(label, (rss, fds))| format!("{label} {rss} MB / {fds}"))
            .collect();
        println!("  {connections:>6} connections: {}", row.join(", "));
    }
    Ok(())
}

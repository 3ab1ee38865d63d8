//! `bench dashboard`: what open dashboards cost the daemon. With `--jobs` long jobs running, the daemon's
//! CPU and RSS over the same window with no dashboard, with `--pages` signed-in dashboards open in
//! Debian's Chromium (tests/browser/bench.mjs), and with none again (A B A); first paint of `/` over cold
//! loads and the page's weight, as the browser measured them.

use crate::harness::{percentile, Daemon};
use anyhow::{bail, Context};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// One measuring window: the daemon's CPU (cores, averaged) and its RSS at the end.
struct Window {
    cores: f64,
    rss_mib: f64,
}

fn measure(pid: u32, seconds: u64) -> anyhow::Result<Window> {
    let stat = |pid: u32| crate::harness::pid_stat(&format!("/proc/{pid}/stat"));
    let before = crate::harness::cpu_secs(&stat(pid)?);
    std::thread::sleep(Duration::from_secs(seconds));
    let after = crate::harness::cpu_secs(&stat(pid)?);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss_kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS")?;
    Ok(Window {
        cores: (after - before) / seconds as f64,
        rss_mib: rss_kib / 1024.0,
    })
}

pub fn dashboard(root: &Path, pages: usize, jobs: usize, seconds: u64) -> anyhow::Result<()> {
    let script = root.join("tests/browser/bench.mjs");
    if !root
        .join("tests/browser/node_modules/playwright-core")
        .is_dir()
    {
        bail!("playwright-core is missing: run `cargo xtask deps` first");
    }
    // The browser is CPU outside Aura: it must not pause admission or throttle the jobs.
    let daemon = Daemon::start_with(root, jobs + 10, &crate::harness::QUIET_CPU)?;
    let token = daemon
        .token
        .clone()
        .context("the daemon has no API token")?;
    let pid = daemon.child.id();
    let rt = crate::harness::runtime()?;
    let client = daemon.client()?;
    rt.block_on(async {
        for i in 0..jobs {
            let mut spec = aura_model::JobSpec::new("/bin/sleep", ["3600"]);
            spec.resources.cpu = Some(0.01);
            spec.resources.memory = Some(aura_model::ByteSize(4 << 20));
            spec.labels.insert("bench".into(), format!("dashboard-{i}"));
            client.submit(&spec).await?;
        }
        for _ in 0..300 {
            if client.status().await?.running >= jobs {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("{jobs} jobs did not all start")
    })?;
    // Let start-up settle before the first window.
    std::thread::sleep(Duration::from_secs(3));
    let none_before = measure(pid, seconds)?;

    let mut node = Command::new("node")
        .arg(&script)
        .env("AURA_URL", &daemon.url)
        .env("AURA_TOKEN", &token)
        .env("PAGES", pages.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot run node (Debian package nodejs)")?;
    let stdout = node.stdout.take().context("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let mut paint: Option<serde_json::Value> = None;
    for line in lines.by_ref() {
        let value: serde_json::Value = serde_json::from_str(&line?)?;
        match value["phase"].as_str() {
            Some("paint") => paint = Some(value),
            Some("open") => break,
            _ => {}
        }
    }
    let paint = paint.context("bench.mjs reported no paint timings")?;
    let open = measure(pid, seconds)?;
    drop(node.stdin.take());
    let status = node.wait()?;
    if !status.success() {
        bail!("bench.mjs failed: {status}");
    }
    std::thread::sleep(Duration::from_secs(3));
    let none_after = measure(pid, seconds)?;

    let mut paints: Vec<f64> = paint["paints"]
        .as_array()
        .map(|a| a.iter().filter_map(serde_json::Value::as_f64).collect())
        .unwrap_or_default();
    paints.sort_by(f64::total_cmp);
    let html = paint["weight"]["html"].as_u64().unwrap_or(0);
    let total = |field: &str| -> u64 {
        paint["weight"]["assets"]
            .as_array()
            .map(|a| a.iter().filter_map(|r| r[field].as_u64()).sum())
            .unwrap_or(0)
    };
    let assets = total("bytes");
    let sent = paint["weight"]["htmlSent"].as_u64().unwrap_or(0) + total("sent");
    println!(
        "dashboard: {jobs} jobs running; daemon CPU {:.4} cores / RSS {:.1} MiB with no page, \
         {:.4} cores / {:.1} MiB with {pages} dashboards open, {:.4} cores / {:.1} MiB after they closed \
         ({seconds} s windows); first contentful paint of / p50 {:.0} ms, max {:.0} ms over {} cold loads \
         (target < 300 ms); page weight {:.1} KiB (HTML {:.1} KiB + assets {:.1} KiB), {:.1} KiB sent (gzip)",
        none_before.cores,
        none_before.rss_mib,
        open.cores,
        open.rss_mib,
        none_after.cores,
        none_after.rss_mib,
        percentile(&paints, 0.5),
        paints.last().copied().unwrap_or(f64::NAN),
        paints.len(),
        (html + assets) as f64 / 1024.0,
        html as f64 / 1024.0,
        assets as f64 / 1024.0,
        sent as f64 / 1024.0,
    );
    Ok(())
}

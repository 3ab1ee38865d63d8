//! `bench control` (issue 19, operator control): what the desktop sees of Aura's encodes, and how quickly
//! a job pauses and resumes.
//!
//! 1. The desktop's view. An interactive stand-in outside Aura (a thread of this process that wakes every
//!    10 ms on absolute deadlines and records how late each wake-up is) and a busy "editor" outside Aura
//!    (`sh -c 'while :; do :; done'`, one core), side by side in one run: the two alone; beside two
//!    FFmpeg encodes in Aura with the CPU throttle off; with it on but never tripping (the jobs grouped in
//!    the cap's cgroup, no quota: the grouping's share of the effect); with it on (`cpu_share` 0.5, the
//!    default, and 0.25); and the encodes alone without the editor, their reference pace. Each scenario
//!    has a fresh daemon; with the throttle on, the span is measured once the engine recorded
//!    `cpu_throttled`.
//! 2. Pause/resume: one encode, `cycles` × (pause → 200 ms → resume → 200 ms) through the API: each
//!    request's round trip, the engine's own `took_ms` (request to tree frozen) from the job's `paused`
//!    events, and the CPU the tree used while it was reported paused (should be none).

use crate::harness::{percentile, Daemon};
use anyhow::Context;
use aura_client::Client;
use aura_model::{EngineEvent, JobEvent, JobId, JobSpec, JobState};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The stand-in's period.
const PERIOD_NS: i64 = 10_000_000;

/// One scenario of part 1.
struct Setup {
    name: &'static str,
    editor: bool,
    encodes: usize,
    /// The throttle's `cpu_share`, or off.
    throttle: Option<f64>,
    /// The throttle on but set never to trip (`above_outside_cpu` 1.0): the jobs run in the cap's cgroup
    /// without a quota, which tells the grouping's effect from the quota's.
    never_trips: bool,
}

/// What one scenario measured over its span.
struct Measured {
    name: &'static str,
    throttle: bool,
    /// The throttle was on before the editor started (load from elsewhere on the machine).
    pre_tripped: bool,
    /// Throttle events during the span, and whether the throttle was on at its end.
    flips: usize,
    throttled_at_end: bool,
    /// The machine's busy share just before the scenario (the daemon idle, nothing started yet).
    background: f64,
    /// Seconds from the editor's start to the engine's `cpu_throttled`, and from its end to `cpu_restored`.
    trip: Option<f64>,
    restore: Option<f64>,
    /// The stand-in's lateness per wake-up, ms, sorted; and the deadlines it missed outright.
    late: Vec<f64>,
    missed: usize,
    /// The editor's CPU over the span, cores.
    editor_cores: Option<f64>,
    /// Frames per second of all encodes together (from their progress), and the encodes' CPU, cores.
    fps: Option<f64>,
    jobs_cores: Option<f64>,
    /// The whole machine over the span: busy, a share of all CPUs.
    busy: f64,
}

/// The encode: an endless 720p test pattern through libx264 into nothing (`-t` far beyond the span; the
/// job is killed after it), FFmpeg's own thread count. `marker` finds its processes in /proc.
fn encode_spec(marker: &str) -> JobSpec {
    JobSpec::new(
        "ffmpeg",
        [
            "-hide_banner",
            "-nostdin",
            "-loglevel",
            "error",
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=1280x720:rate=30",
            "-t",
            "3600",
            "-c:v",
            "libx264",
            "-preset",
            "veryfast",
            "-metadata",
            &format!("comment={marker}"),
            "-f",
            "null",
            "-",
        ],
    )
}

/// CLOCK_MONOTONIC, ns.
fn monotonic_ns() -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec * 1_000_000_000 + ts.tv_nsec
}

/// The interactive stand-in: wakes at absolute 10 ms deadlines until `stop`; each wake-up's lateness (ms)
/// and the deadlines skipped because a wake-up came more than a period late.
fn stand_in(stop: Arc<AtomicBool>) -> std::thread::JoinHandle<(Vec<f64>, usize)> {
    std::thread::spawn(move || {
        let mut late = Vec::with_capacity(4096);
        let mut missed = 0;
        let mut next = monotonic_ns() + PERIOD_NS;
        while !stop.load(Ordering::Relaxed) {
            let deadline = libc::timespec {
                tv_sec: next / 1_000_000_000,
                tv_nsec: next % 1_000_000_000,
            };
            // SAFETY: sleeps until an absolute time; the timespec outlives the call, no remainder is asked.
            unsafe {
                libc::clock_nanosleep(
                    libc::CLOCK_MONOTONIC,
                    libc::TIMER_ABSTIME,
                    &deadline,
                    std::ptr::null_mut(),
                )
            };
            let now = monotonic_ns();
            late.push((now - next) as f64 / 1e6);
            next += PERIOD_NS;
            while next <= now {
                next += PERIOD_NS;
                missed += 1;
            }
        }
        (late, missed)
    })
}

/// utime + stime of a process (all its threads), seconds.
fn process_cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / clock_ticks())
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf reads a constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 {
        hz as f64
    } else {
        100.0
    }
}

/// The processes whose command line holds `marker`: this bench's encodes (the shared machine may run
/// other FFmpegs).
fn marked_pids(marker: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(marker))
        })
        .collect()
}

fn marked_cpu_secs(pids: &[u32]) -> f64 {
    pids.iter().filter_map(|&p| process_cpu_secs(p)).sum()
}

/// The machine's CPU time from /proc/stat: (total, busy).
fn machine_cpu() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .take(8)
        .filter_map(|x| x.parse().ok())
        .collect();
    if v.len() < 8 {
        return (0.0, 0.0);
    }
    let total: f64 = v.iter().sum();
    // user nice system idle iowait irq softirq steal: busy is all but idle and iowait
    (total, total - v[3] - v[4])
}

/// The job's last reported frame, once it reports one.
async fn frame(client: &Client, id: JobId) -> anyhow::Result<Option<u64>> {
    let view = client.get(id).await?;
    Ok(view.live.and_then(|l| l.progress).and_then(|p| p.frame))
}

/// Waits for the job's frame count to change (FFmpeg reports every 0.5 s): the moment and the count,
/// so that a rate between two such edges is not off by up to a report period.
async fn frame_edge(client: &Client, id: JobId) -> anyhow::Result<(Instant, u64)> {
    let first = frame(client, id).await?;
    let give_up = Instant::now() + Duration::from_secs(10);
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = frame(client, id).await?;
        if now != first {
            if let Some(f) = now {
                return Ok((Instant::now(), f));
            }
        }
        anyhow::ensure!(
            Instant::now() < give_up,
            "job {id}'s progress did not move in 10 s"
        );
    }
}

/// Every job's frame edge at about the same time.
async fn frame_edges(client: &Client, ids: &[JobId]) -> anyhow::Result<Vec<(Instant, u64)>> {
    let mut edges = Vec::with_capacity(ids.len());
    let all = ids.iter().map(|&id| frame_edge(client, id));
    for edge in futures_join(all).await {
        edges.push(edge?);
    }
    Ok(edges)
}

/// Runs futures concurrently on the current task (the bench's runtime has one thread).
async fn futures_join<F: std::future::Future>(futures: impl Iterator<Item = F>) -> Vec<F::Output> {
    let mut set: Vec<std::pin::Pin<Box<F>>> = futures.map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = set.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (slot, fut) in out.iter_mut().zip(set.iter_mut()) {
            if slot.is_none() {
                match fut.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *slot = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().flatten().collect()
}

/// Submits `n` encodes and waits until each reports frames.
async fn start_encodes(client: &Client, n: usize, marker: &str) -> anyhow::Result<Vec<JobId>> {
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        ids.push(client.submit(&encode_spec(marker)).await?.job.id);
    }
    let give_up = Instant::now() + Duration::from_secs(60);
    for &id in &ids {
        while frame(client, id).await?.unwrap_or(0) == 0 {
            anyhow::ensure!(
                Instant::now() < give_up,
                "encode {id} reported no frame in 60 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(ids)
}

async fn kill_all(client: &Client, ids: &[JobId]) -> anyhow::Result<()> {
    for &id in ids {
        client.kill(id).await?;
    }
    for &id in ids {
        client.wait(id, Duration::from_secs(30)).await?;
    }
    Ok(())
}

/// The highest engine event sequence number so far.
async fn last_engine_seq(client: &Client) -> anyhow::Result<i64> {
    let mut after = 0;
    loop {
        let page = client.engine_events(after).await?;
        match page.last() {
            Some(last) => after = last.seq,
            None => return Ok(after),
        }
    }
}

/// Polls the engine's event log after `after` until `wanted` matches one; seconds from `since`, or
/// `None` after `limit`.
async fn wait_engine_event(
    client: &Client,
    mut after: i64,
    since: Instant,
    limit: Duration,
    wanted: impl Fn(&EngineEvent) -> bool,
) -> anyhow::Result<Option<f64>> {
    while since.elapsed() < limit {
        for record in client.engine_events(after).await? {
            after = after.max(record.seq);
            if wanted(&record.event) {
                return Ok(Some(since.elapsed().as_secs_f64()));
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(None)
}

/// The busy editor, killed when dropped (an early error must not leave it spinning).
struct Editor(Child);

impl Drop for Editor {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_editor() -> anyhow::Result<Editor> {
    Command::new("sh")
        .args(["-c", "while :; do :; done"])
        .stdin(Stdio::null())
        .spawn()
        .map(Editor)
        .context("cannot start the editor stand-in (sh)")
}

/// Kills this run's encodes, found by their marker, when dropped: after an error they would otherwise
/// run on for an hour (a scenario's end kills them through the API first, leaving none).
struct Encodes<'a>(&'a str);

impl Drop for Encodes<'_> {
    fn drop(&mut self) {
        for pid in marked_pids(self.0) {
            if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
    }
}

fn throttle_env(share: Option<f64>, never_trips: bool) -> Vec<(&'static str, String)> {
    let mut env = vec![(
        "AURA_GUARDS__THROTTLE__ENABLED",
        share.is_some().to_string(),
    )];
    if let Some(share) = share {
        env.push(("AURA_GUARDS__THROTTLE__CPU_SHARE", share.to_string()));
    }
    if never_trips {
        env.push(("AURA_GUARDS__THROTTLE__ABOVE_OUTSIDE_CPU", "1.0".into()));
    }
    env
}

fn start_daemon(root: &Path, env: &[(&'static str, String)]) -> anyhow::Result<Daemon> {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Daemon::start_with(root, 2, &env)
}

fn scenario(
    root: &Path,
    rt: &tokio::runtime::Runtime,
    setup: &Setup,
    span: Duration,
    marker: &str,
) -> anyhow::Result<Measured> {
    let daemon = start_daemon(root, &throttle_env(setup.throttle, setup.never_trips))?;
    let client = daemon.client()?;
    rt.block_on(async {
        // What the rest of this shared machine uses before anything of the scenario runs: wait (up to
        // 10 s) for a second in which it is mostly idle, and say what it was.
        let mut background = 1.0;
        for _ in 0..10 {
            let m0 = machine_cpu();
            tokio::time::sleep(Duration::from_secs(1)).await;
            let m1 = machine_cpu();
            background = (m1.1 - m0.1) / (m1.0 - m0.0);
            if background < 0.15 {
                break;
            }
        }
        if background >= 0.15 {
            eprintln!(
                "control: {}: the machine is {:.0} % busy before the scenario (other work); measuring anyway",
                setup.name,
                background * 100.0
            );
        }
        let _encodes = Encodes(marker);
        let ids = start_encodes(&client, setup.encodes, marker).await?;
        if !ids.is_empty() {
            // The encodes settle (x264's lookahead fills) before the editor comes.
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        let after = last_engine_seq(&client).await?;
        // Already throttled before the editor: load from elsewhere on the machine tripped it.
        let tripping = setup.throttle.is_some() && !setup.never_trips;
        let pre_tripped = tripping && client.status().await?.throttled.is_some();
        let mut editor = if setup.editor {
            Some(start_editor()?)
        } else {
            None
        };
        let editor_started = Instant::now();
        let mut trip = None;
        if setup.editor {
            if tripping && !pre_tripped {
                trip = wait_engine_event(
                    &client,
                    after,
                    editor_started,
                    Duration::from_secs(20),
                    |e| matches!(e, EngineEvent::CpuThrottled { .. }),
                )
                .await?;
                if trip.is_none() {
                    eprintln!("control: {}: no cpu_throttled within 20 s of the editor's start; measuring anyway", setup.name);
                }
            } else {
                // As long as the throttle takes to trip (its 2 s window and 1 s interval).
                tokio::time::sleep(Duration::from_secs(3)).await;
            }
        }
        let span_after = last_engine_seq(&client).await?;
        let pids = marked_pids(marker);
        let editor_pid = editor.as_ref().map(|e| e.0.id());
        let stop = Arc::new(AtomicBool::new(false));
        let standin = stand_in(stop.clone());
        let started = Instant::now();
        let editor0 = editor_pid.and_then(process_cpu_secs);
        let jobs0 = marked_cpu_secs(&pids);
        let machine0 = machine_cpu();
        let edges0 = frame_edges(&client, &ids).await?;
        tokio::time::sleep(span.saturating_sub(started.elapsed())).await;
        let edges1 = frame_edges(&client, &ids).await?;
        let elapsed = started.elapsed().as_secs_f64();
        let editor1 = editor_pid.and_then(process_cpu_secs);
        let jobs1 = marked_cpu_secs(&pids);
        let machine1 = machine_cpu();
        stop.store(true, Ordering::Relaxed);
        let (mut late, missed) = standin
            .join()
            .map_err(|_| anyhow::anyhow!("stand-in panicked"))?;
        late.sort_by(f64::total_cmp);
        // Throttle changes during the span (the cap flapping, or lifted by a quieter machine).
        let mut flips = 0;
        let mut seq = span_after;
        loop {
            let page = client.engine_events(seq).await?;
            let Some(last) = page.last() else { break };
            seq = last.seq;
            flips += page
                .iter()
                .filter(|r| {
                    matches!(
                        r.event,
                        EngineEvent::CpuThrottled { .. } | EngineEvent::CpuRestored { .. }
                    )
                })
                .count();
        }
        let throttled_at_end = client.status().await?.throttled.is_some();
        let mut restore = None;
        if let Some(editor) = editor.take() {
            let after = last_engine_seq(&client).await?;
            drop(editor);
            if throttled_at_end {
                restore = wait_engine_event(
                    &client,
                    after,
                    Instant::now(),
                    Duration::from_secs(10),
                    |e| matches!(e, EngineEvent::CpuRestored { .. }),
                )
                .await?;
            }
        }
        kill_all(&client, &ids).await?;
        let fps = (!ids.is_empty()).then(|| {
            edges0
                .iter()
                .zip(&edges1)
                .map(|((t0, f0), (t1, f1))| {
                    f1.saturating_sub(*f0) as f64 / t1.duration_since(*t0).as_secs_f64()
                })
                .sum()
        });
        let total = machine1.0 - machine0.0;
        Ok(Measured {
            name: setup.name,
            throttle: setup.throttle.is_some() && !setup.never_trips,
            pre_tripped,
            trip,
            flips,
            throttled_at_end,
            restore,
            background,
            late,
            missed,
            editor_cores: editor0.zip(editor1).map(|(a, b)| (b - a) / elapsed),
            fps,
            jobs_cores: (!pids.is_empty()).then(|| (jobs1 - jobs0) / elapsed),
            busy: (machine1.1 - machine0.1) / total,
        })
    })
}

/// Part 2: pause → 200 ms → resume → 200 ms, `cycles` times, on one encode.
fn pause_resume(
    root: &Path,
    rt: &tokio::runtime::Runtime,
    cycles: usize,
    marker: &str,
) -> anyhow::Result<()> {
    let daemon = start_daemon(root, &throttle_env(None, false))?;
    let client = daemon.client()?;
    rt.block_on(async {
        let _encodes = Encodes(marker);
        let ids = start_encodes(&client, 1, marker).await?;
        let id = ids[0];
        tokio::time::sleep(Duration::from_secs(1)).await;
        let pids = marked_pids(marker);
        let (mut pause_ms, mut resume_ms) = (Vec::new(), Vec::new());
        let mut cpu_while_paused = 0.0;
        for _ in 0..cycles {
            let t = Instant::now();
            let view = client.pause(id).await?;
            pause_ms.push(t.elapsed().as_secs_f64() * 1e3);
            anyhow::ensure!(
                matches!(view.job.state, JobState::Paused { .. }),
                "pause answered with the job {:?}",
                view.job.state
            );
            let frozen = marked_cpu_secs(&pids);
            tokio::time::sleep(Duration::from_millis(200)).await;
            cpu_while_paused += marked_cpu_secs(&pids) - frozen;
            let t = Instant::now();
            let view = client.resume(id).await?;
            resume_ms.push(t.elapsed().as_secs_f64() * 1e3);
            anyhow::ensure!(
                matches!(view.job.state, JobState::Running { .. }),
                "resume answered with the job {:?}",
                view.job.state
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let mut took: Vec<f64> = client
            .events(id)
            .await?
            .into_iter()
            .filter_map(|r| match r.event {
                JobEvent::Paused { took_ms, .. } => Some(took_ms),
                _ => None,
            })
            .collect();
        kill_all(&client, &ids).await?;
        pause_ms.sort_by(f64::total_cmp);
        resume_ms.sort_by(f64::total_cmp);
        took.sort_by(f64::total_cmp);
        let row = |name: &str, v: &[f64]| {
            println!(
                "  {name:<44} {:>4} {:>8.2} {:>8.2} {:>8.2}",
                v.len(),
                percentile(v, 0.5),
                percentile(v, 0.99),
                v.last().copied().unwrap_or(f64::NAN)
            );
        };
        println!(
            "\npause/resume: one encode, {cycles} × (pause → 200 ms → resume → 200 ms); ms"
        );
        println!("  {:<44} {:>4} {:>8} {:>8} {:>8}", "", "n", "p50", "p99", "max");
        row("pause: request → answer (client round trip)", &pause_ms);
        row("pause: engine took_ms (request → tree frozen)", &took);
        row("resume: request → answer (client round trip)", &resume_ms);
        println!(
            "  CPU the encode's processes used while reported paused: {:.2} s over {cycles} × 200 ms ({} processes watched)",
            cpu_while_paused,
            pids.len()
        );
        Ok(())
    })
}

/// `bench control [--seconds N] [--cycles N]`.
pub fn control(root: &Path, seconds: u64, cycles: usize) -> anyhow::Result<()> {
    let span = Duration::from_secs(seconds.max(1));
    let marker = format!("aura-control-bench-{}", std::process::id());
    let rt = crate::harness::client_runtime()?;
    {
        // With the throttle on, so that the line names the cap's mechanism.
        let daemon = start_daemon(root, &throttle_env(Some(0.5), false))?;
        let status = rt.block_on(daemon.client()?.status())?;
        println!(
            "control: {} CPUs; backend {:?}: {}",
            std::thread::available_parallelism().map_or(0, usize::from),
            status.backend,
            status.backend_detail
        );
    }
    let setups = [
        Setup {
            name: "encodes alone (no editor), throttle off",
            editor: false,
            encodes: 2,
            throttle: None,
            never_trips: false,
        },
        Setup {
            name: "(a) editor alone, no jobs",
            editor: true,
            encodes: 0,
            throttle: None,
            never_trips: false,
        },
        Setup {
            name: "(b) editor + 2 encodes, throttle off",
            editor: true,
            encodes: 2,
            throttle: None,
            never_trips: false,
        },
        Setup {
            name: "(b2) as (b), jobs in the cap's cgroup, no quota",
            editor: true,
            encodes: 2,
            throttle: Some(0.5),
            never_trips: true,
        },
        Setup {
            name: "(c) editor + 2 encodes, throttle cpu_share 0.5",
            editor: true,
            encodes: 2,
            throttle: Some(0.5),
            never_trips: false,
        },
        Setup {
            name: "(d) editor + 2 encodes, throttle cpu_share 0.25",
            editor: true,
            encodes: 2,
            throttle: Some(0.25),
            never_trips: false,
        },
    ];
    let mut results = Vec::new();
    for setup in &setups {
        eprintln!("control: {} ({} s span)", setup.name, span.as_secs());
        results.push(scenario(root, &rt, setup, span, &marker)?);
    }
    let alone_fps = results[0].fps;
    let cpus = std::thread::available_parallelism().map_or(2, usize::from) as f64;
    let opt = |v: Option<f64>, digits: usize| {
        v.map_or_else(|| "-".to_owned(), |v| format!("{v:.digits$}"))
    };
    println!(
        "\ndesktop view: stand-in thread waking every 10 ms (absolute deadlines) for {} s per scenario; \
         editor = `sh -c 'while :; do :; done'` outside Aura; encodes = 2 × ffmpeg testsrc2 1280x720@30 → libx264 veryfast → null",
        span.as_secs()
    );
    println!(
        "{:<48} {:>5} {:>5} {:>5} | {:>6} {:>6} {:>7} {:>5} {:>4} | {:>6} | {:>6} {:>5} {:>5} | {:>5} {:>5} {:>5}",
        "scenario",
        "trip",
        "flips",
        "lift",
        "p50 ms",
        "p99 ms",
        "max ms",
        ">10ms",
        "skip",
        "editor",
        "fps",
        "alone",
        "jobs",
        "bg",
        "busy",
        "other"
    );
    for m in &results {
        let late_over = m.late.iter().filter(|&&l| l > 10.0).count();
        let trip = match (m.throttle, m.editor_cores.is_some()) {
            (false, _) | (true, false) => "-".to_owned(),
            _ if m.pre_tripped => "pre".to_owned(),
            _ => m
                .trip
                .map_or_else(|| "none".to_owned(), |t| format!("{t:.1}s")),
        };
        let lift = if !m.throttled_at_end || m.editor_cores.is_none() {
            "-".to_owned()
        } else {
            m.restore
                .map_or_else(|| ">10s".to_owned(), |t| format!("{t:.1}s"))
        };
        let other = m.busy * cpus - m.editor_cores.unwrap_or(0.0) - m.jobs_cores.unwrap_or(0.0);
        println!(
            "{:<48} {:>5} {:>5} {:>5} | {:>6.2} {:>6.2} {:>7.2} {:>5} {:>4} | {:>6} | {:>6} {:>5} {:>5} | {:>4.0}% {:>4.0}% {:>5.2}",
            m.name,
            trip,
            if m.throttle { m.flips.to_string() } else { "-".to_owned() },
            lift,
            percentile(&m.late, 0.5),
            percentile(&m.late, 0.99),
            m.late.last().copied().unwrap_or(f64::NAN),
            late_over,
            m.missed,
            opt(m.editor_cores, 2),
            opt(m.fps, 1),
            m.fps
                .zip(alone_fps)
                .map_or_else(|| "-".to_owned(), |(f, a)| format!("{:.0}%", f / a * 100.0)),
            opt(m.jobs_cores, 2),
            m.background * 100.0,
            m.busy * 100.0,
            other,
        );
    }
    println!(
        "  trip: editor start → engine event cpu_throttled (pre: already throttled before the editor, by load from elsewhere); \
         flips: throttle events during the span; lift: editor stopped → cpu_restored; p50/p99/max: the stand-in's wake-up \
         lateness; >10ms: wake-ups more than a period late; skip: deadlines skipped; editor, jobs: CPU used over the span, \
         cores (of {cpus}); fps: frames/s of both encodes together (from their progress), alone: of the encodes-alone row; \
         bg: machine busy in the second before the scenario (after waiting up to 10 s for one under 15 %); busy: machine busy over the span (/proc/stat); other: cores \
         used by everything else (the daemon, this process, the rest of the machine)"
    );
    pause_resume(root, &rt, cycles, &marker)?;
    println!(
        "\ncommand: cargo xtask bench control --seconds {} --cycles {cycles}",
        span.as_secs()
    );
    Ok(())
}

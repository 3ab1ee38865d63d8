//! What every benchmark shares: a release daemon on a scratch data dir, the client's runtimes, percentiles.

use anyhow::Context;
use aura_client::Client;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

/// CPU used outside Aura — the benchmark's own client, a browser, direct encodes, the other nodes of a
/// fleet on the same two cores — would pause admission and throttle jobs: benchmarks that measure
/// the engine beside such load run with these (a node of a real fleet has its machine to itself).
pub(crate) const QUIET_CPU: [(&str, &str); 3] = [
    ("AURA_GUARDS__MAX_OUTSIDE_CPU", "1.0"),
    ("AURA_GUARDS__RESUME_OUTSIDE_CPU", "0.95"),
    ("AURA_GUARDS__THROTTLE__ENABLED", "false"),
];

/// Applied to every benchmark's daemon before its own overrides: how full the developer's disk happens to
/// be must not pause admission (the disk guard has its tests; a benchmark measures the engine).
const ANY_DISK: [(&str, &str); 2] = [
    ("AURA_GUARDS__MIN_FREE_DISK", "0"),
    ("AURA_GUARDS__RESUME_FREE_DISK", "0"),
];

/// A release daemon on a scratch data dir; killed (and its data dir removed) on drop.
pub(crate) struct Daemon {
    pub child: Child,
    pub url: String,
    data_dir: PathBuf,
    pub token: Option<String>,
}

impl Daemon {
    /// Starts the release build of this tree, or the binary named by `BENCH_AURA_BIN` (another build, for
    /// an ABBA comparison through this same harness).
    pub fn start(root: &Path, max_concurrent: usize) -> anyhow::Result<Daemon> {
        Daemon::start_with(root, max_concurrent, &[])
    }

    /// `start`, with configuration overrides (`AURA_*` variables) for the daemon.
    pub fn start_with(
        root: &Path,
        max_concurrent: usize,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Daemon> {
        Daemon::start_named(root, max_concurrent, env, "")
    }

    /// `start_with` on a data dir of its own named `suffix` (several daemons of one benchmark).
    pub fn start_named(
        root: &Path,
        max_concurrent: usize,
        env: &[(&str, &str)],
        suffix: &str,
    ) -> anyhow::Result<Daemon> {
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("target"));
        let binary = match std::env::var_os("BENCH_AURA_BIN") {
            Some(bin) => PathBuf::from(bin),
            None => {
                super::run(
                    root,
                    "cargo",
                    &["build", "--release", "--quiet", "-p", "aura"],
                )?;
                target.join("release/aura")
            }
        };
        let data_dir = target.join(format!("bench-data-{}{suffix}", std::process::id()));
        let _ = std::fs::remove_dir_all(&data_dir);
        let mut child = Command::new(binary)
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&data_dir)
            .env("AURA_MAX_CONCURRENT", max_concurrent.to_string())
            .env("AURA_LOG", "warn")
            .envs(ANY_DISK)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .spawn()
            .context("cannot start aura serve")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let mut url = None;
        for line in lines.by_ref() {
            let line = line?;
            if let Some(u) = line.strip_prefix("aura serve: listening on ") {
                url = Some(u.to_owned());
                break;
            }
        }
        let url = url.context("aura serve did not report its address")?;
        // Keep draining: a daemon writing to a closed pipe would die of SIGPIPE.
        std::thread::spawn(move || lines.for_each(drop));
        // The daemon's local admin token (a build from before authentication has none).
        let token = std::fs::read_to_string(data_dir.join("api-token"))
            .ok()
            .map(|t| t.trim().to_owned());
        Ok(Daemon {
            child,
            url,
            data_dir,
            token,
        })
    }

    /// Its data dir (removed on drop).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// A client of this daemon, with its token.
    pub fn client(&self) -> anyhow::Result<Client> {
        Ok(match &self.token {
            Some(token) => Client::authorized(&self.url, token)?,
            None => Client::new(&self.url)?,
        })
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_child(&self.child),
            rustix::process::Signal::TERM,
        );
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

/// The submitting client of `bench throughput`: one thread. The client's CPU is the machine's too (it
/// runs beside the jobs), and a second worker thread added wake-ups between the two without submitting
/// any faster than the daemon takes the jobs.
pub(crate) fn client_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// Every job with an id above `after` (all with `None`), oldest first.
pub(crate) async fn jobs_after(
    client: &Client,
    after: Option<aura_model::JobId>,
) -> anyhow::Result<Vec<aura_client::JobView>> {
    let query = aura_client::ListQuery {
        after,
        oldest_first: true,
        ..Default::default()
    };
    Ok(client.list_all(&query).await?)
}

/// The finished records of the jobs from `first` on (each must have succeeded).
pub(crate) async fn finished_from(
    client: &Client,
    first: aura_model::JobId,
) -> anyhow::Result<Vec<aura_model::Finished>> {
    let mut finished = Vec::new();
    for v in jobs_after(client, Some(aura_model::JobId(first.0 - 1))).await? {
        if let aura_model::JobState::Finished(f) = v.job.state {
            if !f.outcome.is_success() {
                anyhow::bail!("job {} did not succeed: {:?}", v.job.id, f.outcome);
            }
            finished.push(*f);
        }
    }
    Ok(finished)
}

pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// A process's (or thread's) `/proc/.../stat`, parsed by the daemon's own parser.
pub(crate) fn pid_stat(path: &str) -> anyhow::Result<aura_host::procfs::PidStat> {
    Ok(aura_host::procfs::parse_pid_stat(
        &std::fs::read_to_string(path)?,
    )?)
}

/// User and system CPU seconds of a `/proc/.../stat`.
pub(crate) fn cpu_secs(stat: &aura_host::procfs::PidStat) -> f64 {
    (stat.utime + stat.stime) as f64 / rustix::param::clock_ticks_per_second() as f64
}

/// Raw fork+exec+wait of /bin/true on `threads` threads: the ceiling for trivial jobs on this machine.
pub(crate) fn raw_spawn_rate(jobs: usize, threads: usize) -> anyhow::Result<f64> {
    let children_before = rusage_secs(libc::RUSAGE_CHILDREN);
    let ipis_before = ipis()?;
    let start = Instant::now();
    let per_thread = jobs / threads;
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            std::thread::spawn(move || -> std::io::Result<()> {
                for _ in 0..per_thread {
                    Command::new("/bin/true").status()?;
                }
                Ok(())
            })
        })
        .collect();
    for h in handles {
        h.join()
            .map_err(|_| anyhow::anyhow!("spawn thread panicked"))??;
    }
    let rate = (per_thread * threads) as f64 / start.elapsed().as_secs_f64();
    eprintln!(
        "raw: {rate:.0} jobs/s, a job's own CPU {:.2} ms, {}",
        (rusage_secs(libc::RUSAGE_CHILDREN) - children_before) * 1000.0
            / (per_thread * threads) as f64,
        ipis_per_job(&ipis_before, &ipis()?, per_thread * threads)
    );
    Ok(rate)
}

/// CPU seconds (user + system) of this process (`RUSAGE_SELF`) or of its reaped children.
pub(crate) fn rusage_secs(who: libc::c_int) -> f64 {
    // SAFETY: getrusage fills the plain-data struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a valid, writable rusage.
    unsafe { libc::getrusage(who, &mut usage) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// The machine's inter-processor interrupts so far, summed over CPUs, by kind: rescheduling (a wake-up
/// of a thread on another CPU), function call and TLB shootdown. On this nested VM each one costs both
/// sides a VM exit, so they are counted per job beside the CPU figures.
pub(crate) fn ipis() -> anyhow::Result<[(&'static str, u64); 3]> {
    let text = std::fs::read_to_string("/proc/interrupts")?;
    let mut counts = [("RES", 0), ("CAL", 0), ("TLB", 0)];
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let Some(name) = fields.next() else { continue };
        if let Some(slot) = counts
            .iter_mut()
            .find(|(k, _)| name.strip_suffix(':') == Some(*k))
        {
            slot.1 = fields.map_while(|f| f.parse::<u64>().ok()).sum();
        }
    }
    Ok(counts)
}

pub(crate) fn ipis_per_job(
    before: &[(&str, u64); 3],
    after: &[(&str, u64); 3],
    jobs: usize,
) -> String {
    let parts: Vec<String> = before
        .iter()
        .zip(after)
        .map(|((k, b), (_, a))| {
            format!(
                "{k} {:.2}",
                a.saturating_sub(*b) as f64 / jobs.max(1) as f64
            )
        })
        .collect();
    format!("IPIs per job: {}", parts.join(", "))
}

//! End-to-end tests: a real `aura serve` (the built binary) on a temporary data dir, driven through the CLI
//! and the HTTP API, running real process trees, real SQLite, real cgroups where the machine has them.

use aura_client::{Client, JobView};
use aura_model::{JobId, JobSpec, JobState, LoggedEvent, Outcome, StopSequence};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const AURA: &str = env!("CARGO_BIN_EXE_aura");

/// A daemon under test. Killed on drop so that a failing test leaves nothing running.
struct Daemon {
    child: Option<Child>,
    url: String,
    /// The daemon's local admin token (from its data dir), which `client()` and `authed` send.
    token: String,
    data_dir: PathBuf,
    env: Vec<(String, String)>,
    /// Where the daemon's stderr (its log) goes; inherited when `None`.
    log: Option<PathBuf>,
    _tmp: Option<tempfile::TempDir>,
}

impl Daemon {
    fn start(env: &[(&str, &str)]) -> Daemon {
        Daemon::start_logged(env, false)
    }

    /// `start`, with the daemon's log written to `self.log_path()` (for tests that read it).
    fn start_logged(env: &[(&str, &str)], logged: bool) -> Daemon {
        Daemon::start_with(env, logged, None)
    }

    fn start_with(env: &[(&str, &str)], logged: bool, data_dir: Option<PathBuf>) -> Daemon {
        let tmp = tempfile::tempdir().expect("tempdir");
        let data_dir = data_dir.unwrap_or_else(|| tmp.path().join("data"));
        let env: Vec<(String, String)> = machine::SHARED_MACHINE
            .iter()
            .chain(env)
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut daemon = Daemon {
            child: None,
            url: String::new(),
            token: String::new(),
            log: logged.then(|| tmp.path().join("daemon.log")),
            data_dir,
            env,
            _tmp: Some(tmp),
        };
        daemon.spawn();
        daemon
    }

    /// `start` on a data dir of the test's choosing (a small volume), its log in `self.log_path()`.
    fn start_at(data_dir: PathBuf, env: &[(&str, &str)]) -> Daemon {
        Daemon::start_with(env, true, Some(data_dir))
    }

    /// SIGKILLs the daemon (an unclean death: no shutdown protocol) and reaps it.
    fn stop_now(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn log_path(&self) -> &Path {
        self.log
            .as_deref()
            .expect("a daemon started with start_logged")
    }

    /// Starts (or restarts) `aura serve` on this daemon's data dir and waits until it listens.
    fn spawn(&mut self) {
        let mut cmd = Command::new(AURA);
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&self.data_dir);
        // Runtime files (how the CLI finds the token) go to the test's own directory.
        cmd.env("AURA_LOG", "warn")
            .env("AURA_RUNTIME_DIR", self.runtime_dir())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(log) = &self.log {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .expect("daemon log file");
            cmd.stderr(file);
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn aura serve");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let url = loop {
            let line = lines
                .next()
                .expect("aura serve exited before listening")
                .expect("read stdout");
            if let Some(url) = line.strip_prefix("aura serve: listening on ") {
                break url.to_owned();
            }
        };
        // Keep draining stdout so the daemon never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        self.token = std::fs::read_to_string(self.data_dir.join("api-token"))
            .expect("the daemon's token file")
            .trim()
            .to_owned();
        lock(&TOKENS).insert(url.clone(), self.token.clone());
        self.url = url;
        self.child = Some(child);
    }

    /// A directory jobs may write in (they run as their own account when the tests run as root).
    fn scratch(&self) -> PathBuf {
        let dir = self.data_dir.with_file_name("scratch");
        std::fs::create_dir_all(&dir).expect("scratch dir");
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o777))
            .expect("chmod scratch dir");
        dir
    }

    fn runtime_dir(&self) -> PathBuf {
        self.data_dir.with_file_name("runtime")
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    fn client(&self) -> Client {
        Client::authorized(&self.url, &self.token).expect("client")
    }

    /// The CLI as a user runs it: it finds the token through the daemon's runtime file.
    fn cli(&self, args: &[&str]) -> Output {
        self.cli_command(args).output().expect("run aura")
    }

    /// `cli`, not started yet (for a test that talks to it or watches it while it runs).
    fn cli_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(AURA);
        cmd.args(args)
            .env("AURA_SERVER", &self.url)
            .env("AURA_RUNTIME_DIR", self.runtime_dir())
            .env_remove("AURA_TOKEN");
        cmd
    }

    fn signal(&self, signal: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_raw(self.pid() as i32).expect("pid");
        rustix::process::kill_process(pid, signal).expect("signal daemon");
    }

    /// Waits for the daemon process to exit and returns how long that took.
    fn wait_exit(&mut self) -> Duration {
        let start = Instant::now();
        let mut child = self.child.take().expect("running");
        child.wait().expect("wait");
        start.elapsed()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SIGTERM runs the shutdown protocol, which stops every job tree; SIGKILL only if that hangs.
        if let Some(mut child) = self.child.take() {
            let _ = rustix::process::kill_process(
                rustix::process::Pid::from_child(&child),
                rustix::process::Signal::TERM,
            );
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Every test daemon's token by its URL, for the raw HTTP helpers.
static TOKENS: std::sync::Mutex<std::collections::BTreeMap<String, String>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A raw HTTP client that sends the token of the daemon at `url` (a base URL or one under it).
fn authed(url: &str) -> reqwest::Client {
    let token = lock(&TOKENS)
        .iter()
        .find(|(base, _)| url.starts_with(base.as_str()))
        .map(|(_, t)| t.clone())
        .expect("a test daemon at this URL");
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {token}").parse().expect("header"),
    );
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .expect("http client")
}

async fn http_get(url: String) -> reqwest::Result<reqwest::Response> {
    authed(&url).get(url).send().await
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn spec(program: &str, args: &[&str]) -> JobSpec {
    JobSpec::new(program, args.iter().copied())
}

/// Waits (up to 10 s) until a guard has paused admission for a reason starting with `reason`; a job then
/// submitted stays queued, saying so. Returns the utilization that showed the pause, and the job.
async fn paused_admission_holds_a_job(
    client: &Client,
    reason: &str,
) -> (aura_model::Utilization, JobId) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let utilization = loop {
        let u = client.utilization().await.expect("utilization");
        if u.admission_paused {
            break u;
        }
        assert!(Instant::now() < deadline, "admission never paused: {u:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let said = utilization.paused_reason.as_deref().unwrap_or_default();
    assert!(said.starts_with(reason), "{utilization:?}");
    let id = submit(client, &spec("true", &[])).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let view = client.get(id).await.expect("get");
    assert_eq!(view.job.state.name(), aura_model::StateName::Queued);
    let waiting = view.waiting.unwrap_or_default();
    assert!(
        waiting.starts_with(&format!("admission paused: {reason}")),
        "{waiting}"
    );
    (utilization, id)
}

/// Every job the daemon lists (in fleet mode: the fleet's), oldest first.
async fn all_jobs(client: &Client) -> Vec<JobView> {
    let oldest_first = aura_client::ListQuery {
        oldest_first: true,
        ..Default::default()
    };
    client.list_all(&oldest_first).await.expect("list")
}

/// Submits and returns the new job's id.
async fn submit(client: &Client, spec: &JobSpec) -> JobId {
    client.submit(spec).await.expect("submit").job.id
}

async fn wait_done(client: &Client, id: JobId) -> JobView {
    let view = client
        .wait(id, Duration::from_secs(60))
        .await
        .expect("wait");
    assert!(
        view.job.outcome().is_some(),
        "job {id} did not finish: {:?}",
        view.job.state
    );
    view
}

/// `POST /api/leases` (the typed client has no lease calls).
async fn acquire_lease(
    http: &reqwest::Client,
    daemon: &Daemon,
    body: serde_json::Value,
) -> reqwest::Result<reqwest::Response> {
    http.post(format!("{}/api/leases", daemon.url))
        .json(&body)
        .send()
        .await
}

/// `DELETE /api/leases/{id}`; the status code.
async fn release_lease(http: &reqwest::Client, daemon: &Daemon, id: u64) -> u16 {
    http.delete(format!("{}/api/leases/{id}", daemon.url))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// A running `sleep 300` that holds a slot (the test cancels it; 300 s, so that it cannot end by itself on a
/// loaded machine), then a job that creates a marker file if it ever runs, each reserving the memory given
/// for it (else the default): (the blocker, the marker job, the marker's path).
async fn blocker_then_marker(
    daemon: &Daemon,
    client: &Client,
    memory: [Option<&str>; 2],
) -> (JobId, JobId, PathBuf) {
    let marker = daemon.scratch().join("standby-ran");
    let [mut blocker, mut job] = [
        spec("sleep", &["300"]),
        spec("touch", &[marker.to_str().expect("utf-8 path")]),
    ];
    for (job, memory) in [&mut blocker, &mut job].into_iter().zip(memory) {
        job.resources.memory = memory.map(|m| m.parse().expect("memory size"));
    }
    let blocker = submit(client, &blocker).await;
    wait_running(client, blocker, 1).await;
    let job = submit(client, &job).await;
    (blocker, job, marker)
}

async fn wait_running(client: &Client, id: JobId, min_processes: u32) -> JobView {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let view = client.get(id).await.expect("get");
        if matches!(view.job.state, JobState::Running { .. })
            && view
                .live
                .as_ref()
                .is_some_and(|l| l.processes >= min_processes)
        {
            return view;
        }
        assert!(
            Instant::now() < deadline,
            "job {id} never reached {min_processes} processes: {view:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A `Key:   value [kB]` line of a /proc file such as `status` or `meminfo` (the value, kB or a count).
fn kib_field(path: &str, key: &str) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.lines().find_map(|l| {
        l.strip_prefix(key)?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()
    })
}

/// The fields of `/proc/PID/stat` the tests read.
struct ProcEntry {
    state: char,
    ppid: u32,
    pgrp: u32,
}

fn proc_entry(pid: u32) -> Option<ProcEntry> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut fields = stat.rsplit_once(") ")?.1.split(' ');
    Some(ProcEntry {
        state: fields.next()?.chars().next()?,
        ppid: fields.next()?.parse().ok()?,
        pgrp: fields.next()?.parse().ok()?,
    })
}

/// Every process on the host.
fn all_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse().ok())
        .collect()
}

/// Exists and is not a zombie.
fn alive(pid: u32) -> bool {
    proc_entry(pid).is_some_and(|e| e.state != 'Z')
}

/// Zombie children of `pid` (what it has not reaped).
fn zombie_children(pid: u32) -> Vec<u32> {
    all_pids()
        .into_iter()
        .filter(|&p| proc_entry(p).is_some_and(|e| e.state == 'Z' && e.ppid == pid))
        .collect()
}

/// Every process of a job's tree: from its cgroups, or (process-group backend) its process group and every
/// process carrying the tree's marker (`AURA_TREE`, as its main process has it).
fn tree_pids(view: &JobView) -> Vec<u32> {
    let run = view.job.state.run().expect("run");
    let mut pids = Vec::new();
    for cg in &run.tree.cgroups {
        if let Ok(text) = std::fs::read_to_string(cg.join("cgroup.procs")) {
            pids.extend(text.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
        }
    }
    if run.tree.cgroups.is_empty() {
        let marker = environ_var(run.tree.pid, "AURA_TREE");
        pids.extend(all_pids().into_iter().filter(|&p| {
            proc_entry(p).is_some_and(|e| e.pgrp == run.tree.pid)
                || marker.is_some() && environ_var(p, "AURA_TREE") == marker
        }));
    }
    pids.sort_unstable();
    pids.dedup();
    pids
}

/// `name`'s value in the environment `pid` was started with.
fn environ_var(pid: u32, name: &str) -> Option<String> {
    let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    env.split(|&b| b == 0).find_map(|e| {
        let value = e.strip_prefix(name.as_bytes())?.strip_prefix(b"=")?;
        Some(String::from_utf8_lossy(value).into_owned())
    })
}

async fn all_gone_within(pids: &[u32], limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if !pids.iter().any(|p| alive(*p)) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    !pids.iter().any(|p| alive(*p))
}

const TREE: &str =
    "for i in $(seq 17); do sleep 300 & done; setsid sleep 300 & (sleep 300 &); wait";

/// The body of a GET, as text.
async fn get_text(url: String) -> String {
    http_get(url).await.unwrap().text().await.unwrap()
}

fn outcome(view: &JobView) -> &Outcome {
    view.job.outcome().expect("finished")
}

#[path = "../common/machine.rs"]
mod machine;

mod control;
mod fallback;
mod faults;
mod live_memory;
mod security;

mod cli;

mod api;

mod supervision;

mod lifecycle;

mod retries;

mod admission;

mod metrics;

mod ffmpeg;

mod media;

mod memory;

mod follow;
#[cfg(target_os = "linux")]
mod janitor;

mod files;
mod fleet;

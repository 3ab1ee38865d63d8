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
        // Tests share two cores with each other and with cargo: CPU used by another test's daemon is "outside
        // Aura" for this one, so the outside-CPU guard would pause admission at random. The memory guards stay
        // on; the CPU guard has its own tests.
        let defaults = [
            ("AURA_GUARDS__MAX_OUTSIDE_CPU", "1.0"),
            ("AURA_GUARDS__RESUME_OUTSIDE_CPU", "0.95"),
        ];
        let env: Vec<(String, String)> = defaults
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
        Command::new(AURA)
            .args(args)
            .env("AURA_SERVER", &self.url)
            .env("AURA_RUNTIME_DIR", self.runtime_dir())
            .env_remove("AURA_TOKEN")
            .output()
            .expect("run aura")
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

/// A running `sleep 30` that holds a slot, then a job that creates a marker file if it ever runs, each
/// reserving the memory given for it (else the default): (the blocker, the marker job, the marker's path).
async fn blocker_then_marker(
    daemon: &Daemon,
    client: &Client,
    memory: [Option<&str>; 2],
) -> (JobId, JobId, PathBuf) {
    let marker = daemon.scratch().join("standby-ran");
    let [mut blocker, mut job] = [
        spec("sleep", &["30"]),
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
            && view.live.is_some_and(|l| l.processes >= min_processes)
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

mod fallback;
mod faults;
mod live_memory;
mod security;

mod cli {
    use super::*;

    /// `aura jobs | head -1` and friends: a closed pipe ends a printing command quietly (SIGPIPE, as `ls`
    /// does), never with a panic (exit 101).
    #[test]
    fn printing_commands_end_quietly_on_a_closed_pipe() {
        let daemon = Daemon::start(&[]);
        for _ in 0..3 {
            assert!(daemon
                .cli(&["submit", "--quiet", "--", "echo", "x"])
                .status
                .success());
        }
        std::thread::sleep(Duration::from_millis(500));
        for command in ["jobs", "show 1", "status", "events"] {
            let script =
                format!("{AURA} {command} | head -c 1 >/dev/null; echo ${{PIPESTATUS[0]}}");
            let out = Command::new("bash")
                .args(["-c", &script])
                .env("AURA_SERVER", &daemon.url)
                .env("AURA_RUNTIME_DIR", daemon.runtime_dir())
                .output()
                .expect("bash");
            let code = stdout(&out).trim().to_owned();
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                code == "0" || code == "141",
                "aura {command}: exit {code}: {err}"
            );
            assert!(!err.contains("panicked"), "aura {command}: {err}");
        }
    }

    /// `aura top` needs a terminal: without one it says so and exits, no panic, no screen in a pipe.
    #[test]
    fn top_without_a_terminal_says_what_it_needs() {
        let daemon = Daemon::start(&[]);
        let out = Command::new(AURA)
            .arg("top")
            .env("AURA_SERVER", &daemon.url)
            .env("AURA_RUNTIME_DIR", daemon.runtime_dir())
            .stdin(Stdio::null())
            .output()
            .expect("aura top");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains("needs a terminal"), "{err}");
        assert!(!err.contains("panicked"), "{err}");
    }

    /// The views the CLI and `top` print come typed from the daemon; `status` names its backend once.
    #[tokio::test(flavor = "multi_thread")]
    async fn typed_views_read_back_and_status_names_the_backend_once() {
        let daemon = Daemon::start(&[]);
        let client = daemon.client();
        let health = client.health().await.unwrap();
        assert_eq!(health.status, aura_model::Liveness::Ok);
        let host = client.system().await.unwrap();
        assert!(host.memory.total > 0 && host.cpu.cores > 0, "{host:?}");
        let u = client.utilization().await.unwrap();
        assert!(u.capacity.memory_bytes > 0, "{u:?}");
        let status = stdout(&daemon.cli(&["status"]));
        let backend = format!("backend:        {} ", health.backend);
        assert!(status.contains(&backend), "{status}");
        assert!(!status.contains("backend="), "{status}");
        // A daemon that is down: one cause chain, said once.
        drop(daemon);
        let out = Command::new(AURA)
            .args(["--server", "http://127.0.0.1:9", "jobs"])
            .env("AURA_TOKEN", "x")
            .output()
            .expect("aura jobs");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.matches("error sending request").count(), 1, "{err}");
    }

    #[test]
    fn submit_wait_exits_with_the_job_code_and_jobs_show_it() {
        let daemon = Daemon::start(&[]);
        let out = daemon.cli(&["submit", "--wait", "--", "sh", "-c", "sleep 0.2; exit 3"]);
        assert_eq!(out.status.code(), Some(3), "{out:?}");
        let id = stdout(&out)
            .trim()
            .trim_start_matches("submitted job ")
            .to_owned();

        let out = daemon.cli(&["submit", "--quiet", "--", "echo", "hello"]);
        assert!(out.status.success(), "{out:?}");
        let quiet_id = stdout(&out).trim().to_owned();
        assert!(
            quiet_id.parse::<i64>().is_ok(),
            "--quiet prints only the id: {quiet_id:?}"
        );

        let table = stdout(&daemon.cli(&["jobs"]));
        assert!(
            table.contains("PEAK MEM") && table.contains("failed (exit 3)"),
            "{table}"
        );

        let json = daemon.cli(&["jobs", "--json"]);
        let jobs: Vec<serde_json::Value> =
            serde_json::from_slice(&json.stdout).expect("jobs --json");
        assert!(jobs.len() >= 2);

        let show = stdout(&daemon.cli(&["show", &id]));
        assert!(
            show.contains("Start=") && show.contains("Peak=") && show.contains("End="),
            "{show}"
        );
        assert!(show.contains("code 3"), "{show}");
        let show_json: serde_json::Value =
            serde_json::from_slice(&daemon.cli(&["show", &id, "--json"]).stdout).unwrap();
        assert_eq!(show_json["state"], "finished");
        assert_eq!(show_json["outcome"]["kind"], "failed");
        assert_eq!(show_json["outcome"]["exit_code"], 3);
        assert!(
            show_json["accounting"]["memory_peak"].is_u64(),
            "{show_json}"
        );

        let out = daemon.cli(&[
            "submit",
            "--wait",
            "--",
            "sh",
            "-c",
            "echo out; echo err >&2",
        ]);
        let id = stdout(&out)
            .lines()
            .next()
            .unwrap()
            .trim_start_matches("submitted job ")
            .to_owned();
        let logs = daemon.cli(&["logs", &id]);
        assert_eq!(stdout(&logs), "out\n");
        assert_eq!(String::from_utf8_lossy(&logs.stderr), "err\n");
    }

    #[test]
    fn a_second_daemon_on_the_same_data_dir_is_refused() {
        let daemon = Daemon::start(&[]);
        let out = Command::new(AURA)
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&daemon.data_dir)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("another `aura serve` is using the data dir"),
            "{err}"
        );
        // The first one is untouched.
        let health = daemon.cli(&["status"]);
        assert!(health.status.success(), "{health:?}");
    }

    #[test]
    fn client_errors_are_clear() {
        let out = Command::new(AURA)
            .args(["jobs"])
            .env("AURA_SERVER", "http://127.0.0.1:9")
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("cannot reach the Aura daemon"),
            "{out:?}"
        );

        let daemon = Daemon::start(&[]);
        let out = daemon.cli(&["submit", "--", "definitely-not-a-program-xyz"]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("definitely-not-a-program-xyz"), "{err}");

        use std::os::unix::ffi::OsStrExt;
        let out = Command::new(AURA)
            .args(["submit", "--", "echo"])
            .arg(std::ffi::OsStr::from_bytes(b"caf\xe9"))
            .env("AURA_SERVER", &daemon.url)
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("not valid UTF-8"),
            "{out:?}"
        );
        let jobs: Vec<serde_json::Value> =
            serde_json::from_slice(&daemon.cli(&["jobs", "--json"]).stdout).unwrap();
        assert!(
            jobs.is_empty(),
            "refused submissions must create no job: {jobs:?}"
        );
    }
}

mod api {
    use super::*;

    async fn post_raw(url: &str, body: Vec<u8>) -> (u16, serde_json::Value, String) {
        let resp = authed(url)
            .post(format!("{url}/api/jobs"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let ctype = resp
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let json = resp.json().await.unwrap_or(serde_json::Value::Null);
        (status, json, ctype)
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn bad_input_gets_a_clear_problem_and_changes_nothing() {
        let daemon = Daemon::start(&[]);
        let long_arg = "x".repeat(200 * 1024);
        let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
            (
                "empty program",
                br#"{"program":""}"#.to_vec(),
                422,
                "the program is empty",
            ),
            (
                "missing program",
                br#"{"program":"no-such-program-xyz"}"#.to_vec(),
                422,
                "no-such-program-xyz",
            ),
            (
                "unknown field",
                br#"{"program":"true","bogus":1}"#.to_vec(),
                422,
                "unknown field `bogus`",
            ),
            (
                "negative timeout",
                br#"{"program":"true","timeout":-1}"#.to_vec(),
                422,
                "non-negative",
            ),
            (
                "zero timeout",
                br#"{"program":"true","timeout":"0s"}"#.to_vec(),
                422,
                "greater than zero",
            ),
            (
                "non-UTF-8",
                b"{\"program\":\"echo\",\"args\":[\"caf\xe9\"]}".to_vec(),
                400,
                "invalid JSON",
            ),
            ("syntax", b"{\"program\":".to_vec(), 400, "invalid JSON"),
            (
                "over-long argument",
                format!(r#"{{"program":"echo","args":["{long_arg}"]}}"#).into_bytes(),
                422,
                "longer than",
            ),
            (
                "body over limit",
                vec![b' '; 3 * 1024 * 1024],
                413,
                "larger than",
            ),
            (
                "relative cwd",
                br#"{"program":"true","cwd":"rel"}"#.to_vec(),
                422,
                "absolute",
            ),
            (
                "cwd outside the allowed roots",
                br#"{"program":"true","cwd":"/no/such/dir"}"#.to_vec(),
                403,
                "jobs.cwd_roots",
            ),
        ];
        for (name, body, status, needle) in cases {
            let (got, problem, ctype) = post_raw(&daemon.url, body).await;
            assert_eq!(got, status, "{name}: {problem}");
            assert_eq!(ctype, "application/problem+json", "{name}");
            assert_eq!(problem["status"], status, "{name}");
            let detail = problem["detail"].as_str().unwrap_or_default();
            assert!(
                detail.contains(needle),
                "{name}: {detail:?} should mention {needle:?}"
            );
        }
        let page = daemon.client().list(&Default::default()).await.unwrap();
        assert!(
            page.jobs.is_empty(),
            "bad input must not create jobs: {:?}",
            page.jobs
        );

        let client = daemon.client();
        let err = client.get(JobId(999)).await.unwrap_err().to_string();
        assert!(err.contains("job 999 not found"), "{err}");
        let resp = http_get(format!("{}/api/jobs/abc", daemon.url))
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 400);
        let resp = http_get(format!("{}/api/jobs?state=bogus", daemon.url))
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 400);
        let health: serde_json::Value = http_get(format!("{}/healthz", daemon.url))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(health["status"], "ok");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn list_filters_and_pages() {
        let daemon = Daemon::start(&[("AURA_MAX_CONCURRENT", "1")]);
        let client = daemon.client();
        let blocker = submit(&client, &spec("sleep", &["30"])).await;
        let mut queued = Vec::new();
        for _ in 0..5 {
            queued.push(submit(&client, &spec("true", &[])).await);
        }
        let q = aura_client::ListQuery {
            states: vec!["queued".into()],
            limit: Some(2),
            ..Default::default()
        };
        let first = client.list(&q).await.unwrap();
        assert_eq!(
            first.jobs.iter().map(|j| j.job.id).collect::<Vec<_>>(),
            vec![queued[4], queued[3]]
        );
        let second = client
            .list(&aura_client::ListQuery {
                after: first.next_after,
                ..q.clone()
            })
            .await
            .unwrap();
        assert_eq!(
            second.jobs.iter().map(|j| j.job.id).collect::<Vec<_>>(),
            vec![queued[2], queued[1]]
        );
        client.cancel(blocker).await.unwrap();
        for id in queued {
            assert!(outcome(&wait_done(&client, id).await).is_success());
        }
    }
}

mod supervision {
    use super::*;

    async fn cancel_kills_the_whole_tree(backend: &str) {
        let daemon = Daemon::start(&[("AURA_SUPERVISOR__BACKEND", backend)]);
        let client = daemon.client();
        let mut job = spec("sh", &["-c", TREE]);
        job.stop = "TERM:2s".parse::<StopSequence>().unwrap();
        let id = submit(&client, &job).await;
        let view = wait_running(&client, id, 20).await;
        let pids = tree_pids(&view);
        assert!(
            pids.len() >= 20,
            "expected the whole tree in the cgroup, got {pids:?}"
        );
        client.cancel(id).await.unwrap();
        assert!(
            all_gone_within(&pids, Duration::from_secs(2)).await,
            "tree survived the cancel: {pids:?}"
        );
        let view = wait_done(&client, id).await;
        assert_eq!(outcome(&view), &Outcome::Cancelled);
        let JobState::Finished(f) = &view.job.state else {
            unreachable!()
        };
        assert_eq!(
            f.signals_sent.first().map(|s| s.name()),
            Some("SIGTERM"),
            "{f:?}"
        );
        assert!(
            f.accounting.peak_processes.unwrap_or(0) >= 20,
            "{:?}",
            f.accounting
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn cancel_kills_a_tree_with_setsid_and_double_fork_hybrid() {
        cancel_kills_the_whole_tree("auto").await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn cancel_kills_a_tree_with_setsid_and_double_fork_process_group() {
        cancel_kills_the_whole_tree("process_group").await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn cancel_kills_a_tree_with_setsid_and_double_fork_cgroup_v1() {
        // Pure cgroup-v2 hosts have no v1 memory controller; the supervisor suite covers what they have.
        if !Path::new("/sys/fs/cgroup/memory/cgroup.procs").exists() {
            eprintln!("skipping: no cgroup v1 memory controller on this host");
            return;
        }
        cancel_kills_the_whole_tree("cgroup_v1").await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn timeout_ends_the_job_and_its_tree() {
        let daemon = Daemon::start(&[("AURA_SUPERVISOR__BACKEND", "process_group")]);
        let client = daemon.client();
        let mut job = spec("sleep", &["60"]);
        job.timeout = Duration::from_secs(1);
        let id = submit(&client, &job).await;
        let view = wait_done(&client, id).await;
        assert_eq!(outcome(&view), &Outcome::TimedOut);
        let JobState::Finished(f) = &view.job.state else {
            unreachable!()
        };
        let wall = f.accounting.wall_secs.unwrap_or_default();
        assert!((0.9..3.0).contains(&wall), "timed out after {wall}s");
        let pid = f.run.as_ref().unwrap().tree.pid;
        assert!(!alive(pid), "sleep {pid} survived its timeout");
        assert_eq!(f.signals_sent.first().map(|s| s.name()), Some("SIGINT"));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn memory_peak_is_recorded() {
        let daemon = Daemon::start(&[]);
        let client = daemon.client();
        let job = spec(
            "stress-ng",
            &[
                "--vm",
                "1",
                "--vm-bytes",
                "300M",
                "--vm-keep",
                "--timeout",
                "2s",
                "--quiet",
            ],
        );
        let id = submit(&client, &job).await;
        let view = wait_done(&client, id).await;
        let JobState::Finished(f) = &view.job.state else {
            unreachable!()
        };
        let peak_mb = f
            .accounting
            .memory_peak
            .map(|b| b.bytes() as f64 / 1e6)
            .unwrap_or_default();
        assert!(
            (300.0..=400.0).contains(&peak_mb),
            "peak {peak_mb} MB: {:?}",
            f.accounting
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn priorities_then_fifo() {
        let daemon = Daemon::start(&[("AURA_MAX_CONCURRENT", "1")]);
        let client = daemon.client();
        let blocker = submit(&client, &spec("sleep", &["0.5"])).await;
        let low = submit(&client, &spec("true", &[])).await;
        let low2 = submit(&client, &spec("true", &[])).await;
        let mut urgent = spec("true", &[]);
        urgent.priority = 10;
        let high = submit(&client, &urgent).await;
        wait_done(&client, blocker).await;
        let mut started = Vec::new();
        for id in [low, low2, high] {
            let view = wait_done(&client, id).await;
            started.push((view.job.state.run().unwrap().started_at, id));
        }
        started.sort();
        assert_eq!(
            started.iter().map(|s| s.1).collect::<Vec<_>>(),
            vec![high, low, low2]
        );
    }

    /// The job admitted ahead of a free slot (the standby) counts as queued, is cancelled without ever
    /// starting, and the next one takes its place; with standby off, nothing is admitted ahead.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_standby_is_queued_until_it_starts_and_cancels_without_starting() {
        for standby in ["2", "0"] {
            let daemon =
                Daemon::start(&[("AURA_MAX_CONCURRENT", "1"), ("AURA_STANDBY_JOBS", standby)]);
            let client = daemon.client();
            let (blocker, first, marker) = blocker_then_marker(&daemon, &client, [None; 2]).await;
            let second = submit(&client, &spec("true", &[])).await;
            let u = client.utilization().await.unwrap();
            assert_eq!((u.running, u.queued), (1, 2), "standby={standby}: {u:?}");
            let t0 = Instant::now();
            client.cancel(first).await.unwrap();
            let view = wait_done(&client, first).await;
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "standby={standby}: the cancel waited for a free slot"
            );
            assert!(
                matches!(outcome(&view), Outcome::Cancelled),
                "standby={standby}: {:?}",
                view.job.state
            );
            assert!(
                view.job.state.run().is_none(),
                "standby={standby}: it never ran"
            );
            client.cancel(blocker).await.unwrap();
            assert!(outcome(&wait_done(&client, second).await).is_success());
            assert!(!marker.exists(), "standby={standby}: the cancelled job ran");
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn output_over_the_log_cap_keeps_the_newest_bytes() {
        let daemon = Daemon::start(&[("AURA_SUPERVISOR__LOG_CAP", "4KiB")]);
        let client = daemon.client();
        let id = submit(&client, &spec("sh", &["-c", "seq 1 20000"])).await;
        let view = wait_done(&client, id).await;
        let JobState::Finished(f) = &view.job.state else {
            unreachable!()
        };
        let total: u64 = (1..=20000u64).map(|n| n.to_string().len() as u64 + 1).sum();
        let chunk = client.logs(id, "stdout", 0).await.unwrap();
        assert!(
            chunk.data.len() <= 4096 && chunk.data.len() >= 2048,
            "kept {} bytes",
            chunk.data.len()
        );
        assert_eq!(chunk.truncated_bytes + chunk.data.len() as u64, total);
        assert_eq!(f.accounting.log_truncated_bytes, chunk.truncated_bytes);
        assert!(String::from_utf8_lossy(&chunk.data).ends_with("19999\n20000\n"));
        let show = stdout(&daemon.cli(&["show", &id.to_string()]));
        assert!(
            show.contains("oldest bytes dropped by the size cap"),
            "{show}"
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn no_daemon_fd_reaches_a_job() {
        let daemon = Daemon::start(&[]);
        let client = daemon.client();
        let id = submit(&client, &spec("sh", &["-c", "ls -l /proc/$$/fd"])).await;
        wait_done(&client, id).await;
        let out = client.logs(id, "stdout", 0).await.unwrap();
        let listing = String::from_utf8_lossy(&out.data);
        let fds: Vec<&str> = listing.lines().filter(|l| l.contains(" -> ")).collect();
        assert!(!fds.is_empty(), "{listing}");
        for line in &fds {
            assert!(
                !(line.contains("aura.db")
                    || line.contains("socket:")
                    || line.contains("aura.lock")
                    || line.contains("anon_inode")),
                "a daemon fd leaked into the job: {line}"
            );
        }
    }
}

mod lifecycle {
    use super::*;

    /// The daemon's open fds that are not job cgroup control files, and those that are (pooled job
    /// cgroups keep theirs open: at most 8 per pooled set, 32 sets by default).
    fn daemon_fds(pid: u32) -> (usize, usize) {
        let (mut other, mut cgroup) = (0, 0);
        for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .flatten()
        {
            match std::fs::read_link(entry.path()) {
                Ok(target) if target.starts_with("/sys/fs/cgroup") => cgroup += 1,
                _ => other += 1,
            }
        }
        (other, cgroup)
    }

    fn daemon_threads(pid: u32) -> usize {
        kib_field(&format!("/proc/{pid}/status"), "Threads:").unwrap_or(0) as usize
    }

    fn daemon_rss_kib(pid: u32) -> u64 {
        kib_field(&format!("/proc/{pid}/status"), "VmRSS:").unwrap_or(0)
    }

    async fn run_sequentially(client: &Client, n: usize) {
        let mut ids = Vec::new();
        for _ in 0..n {
            ids.push(submit(client, &spec("true", &[])).await);
        }
        for id in ids {
            assert!(outcome(&wait_done(client, id).await).is_success());
        }
    }

    /// The short soak of the memory-protection issue: 2,000 jobs after a warm-up; the daemon's RSS grows
    /// by less than 2 MB, and its fds and threads return to their baseline, with no zombie left.
    #[tokio::test(flavor = "multi_thread")]
    async fn two_thousand_jobs_leak_no_memory_fd_thread_or_zombie() {
        let daemon = Daemon::start(&[]);
        let pid = daemon.pid();
        // Warm-up with concurrent requests, so that pools that legitimately keep a few resources (the
        // store's read connections, the allocator's arenas, SQLite's page caches) are at their steady size
        // before the baseline is taken.
        {
            let client = daemon.client();
            let mut ids = Vec::new();
            for _ in 0..20 {
                ids.push(submit(&client, &spec("true", &[])).await);
            }
            let waits: Vec<_> = ids
                .into_iter()
                .map(|id| {
                    let client = client.clone();
                    tokio::spawn(async move { wait_done(&client, id).await })
                })
                .collect();
            for wait in waits {
                assert!(outcome(&wait.await.unwrap()).is_success());
            }
            run_sequentially(&client, 500).await;
        }
        // The client's keep-alive connections are gone with it; let the daemon see them close.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let ((fds0, _), threads0, rss0) =
            (daemon_fds(pid), daemon_threads(pid), daemon_rss_kib(pid));
        run_sequentially(&daemon.client(), 2000).await;
        // Idle blocking-pool threads exit after a few seconds; give them time, then demand the baseline.
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let ((fds, cgroup_files), threads) = (daemon_fds(pid), daemon_threads(pid));
            assert!(
                cgroup_files <= 8 * 32,
                "{cgroup_files} job cgroup control files open: more than the cgroup pool keeps"
            );
            if fds <= fds0 && threads <= threads0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "fds {fds0} → {fds}, threads {threads0} → {threads}: {}",
                fd_listing(pid)
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(zombie_children(pid), Vec::<u32>::new());
        let rss = daemon_rss_kib(pid);
        eprintln!("daemon RSS after warm-up {rss0} KiB, after 2,000 more jobs {rss} KiB");
        assert!(
            rss < rss0 + 2048,
            "RSS grew by {} KiB over 2,000 jobs (limit 2 MiB)",
            rss.saturating_sub(rss0)
        );
    }

    fn fd_listing(pid: u32) -> String {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let target = std::fs::read_link(entry.path())
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            out.push(format!("{}→{target}", entry.file_name().to_string_lossy()));
        }
        out.join(" ")
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn sigkilled_daemon_leaves_no_process_and_loses_no_job() {
        // The first attempt leaves a marker and hangs with a setsid'd grandchild; the second succeeds.
        crash_and_recover(
            "auto",
            "if [ -e ran ]; then exit 0; fi; touch ran; setsid sleep 300 & sleep 300 & wait",
        )
        .await;
    }

    /// The fallback finds the trees again by their recorded process groups and, wherever a process went
    /// (`setsid`, a double fork), by the marker in its environment.
    #[tokio::test(flavor = "multi_thread")]
    async fn sigkilled_daemon_recovery_on_the_process_group_fallback() {
        crash_and_recover(
            "process_group",
            "if [ -e ran ]; then exit 0; fi; touch ran; setsid sleep 300 & ( setsid sleep 300 & ); sleep 300 & wait",
        )
        .await;
    }

    async fn crash_and_recover(backend: &str, script: &str) {
        let mut daemon = Daemon::start(&[
            ("AURA_MAX_CONCURRENT", "5"),
            ("AURA_SUPERVISOR__BACKEND", backend),
        ]);
        let client = daemon.client();
        let mut ids = Vec::new();
        for _ in 0..5 {
            ids.push(submit(&client, &spec("sh", &["-c", script])).await);
        }
        let mut pids = Vec::new();
        for id in &ids {
            pids.extend(tree_pids(&wait_running(&client, *id, 3).await));
        }
        assert!(pids.len() >= 15, "{pids:?}");
        daemon.signal(rustix::process::Signal::KILL);
        daemon.wait_exit();
        let restarted = Instant::now();
        daemon.spawn();
        assert!(
            all_gone_within(
                &pids,
                Duration::from_secs(2).saturating_sub(restarted.elapsed())
            )
            .await,
            "processes of the crashed daemon's jobs survived the restart"
        );
        let client = daemon.client();
        for id in ids {
            let view = wait_done(&client, id).await;
            assert!(outcome(&view).is_success(), "{view:?}");
            assert_eq!(view.job.attempt, 2);
            let kinds: Vec<String> = client
                .events(id)
                .await
                .unwrap()
                .into_iter()
                .map(|e| e.event.kind())
                .collect();
            let interrupted = kinds
                .iter()
                .position(|k| k == "interrupted")
                .expect("interrupted event");
            assert_eq!(
                kinds.get(interrupted + 1).map(String::as_str),
                Some("requeued"),
                "{kinds:?}"
            );
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn graceful_shutdown_stops_trees_and_requeues() {
        let mut daemon = Daemon::start(&[]);
        let client = daemon.client();
        let mut job = spec(
            "sh",
            &[
                "-c",
                "if [ -e ran ]; then exit 0; fi; touch ran; sleep 300 & wait",
            ],
        );
        job.stop = "INT:1s".parse::<StopSequence>().unwrap();
        let id = submit(&client, &job).await;
        let pids = tree_pids(&wait_running(&client, id, 2).await);
        daemon.signal(rustix::process::Signal::TERM);
        let took = daemon.wait_exit();
        assert!(
            took < Duration::from_secs(3),
            "shutdown took {took:?} (grace 1s + 1s)"
        );
        assert!(
            !pids.iter().any(|p| alive(*p)),
            "a job process outlived the daemon"
        );
        daemon.spawn();
        let client = daemon.client();
        let view = wait_done(&client, id).await;
        assert!(outcome(&view).is_success(), "{view:?}");
        let kinds: Vec<String> = client
            .events(id)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.event.kind())
            .collect();
        assert!(kinds.contains(&"requeued".to_owned()), "{kinds:?}");
    }
}

mod retries {
    use super::*;

    #[tokio::test(flavor = "multi_thread")]
    async fn a_failing_job_is_retried_per_its_policy() {
        let daemon = Daemon::start(&[]);
        let client = daemon.client();
        let mut job = spec("sh", &["-c", "echo attempt; exit 7"]);
        job.retry.max_retries = 2;
        let id = submit(&client, &job).await;
        let view = wait_done(&client, id).await;
        assert_eq!(outcome(&view), &Outcome::Failed { exit_code: 7 });
        assert_eq!((view.job.attempt, view.job.failures), (3, 3));
        let kinds: Vec<String> = client
            .events(id)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.event.kind())
            .collect();
        // Each attempt's start is in the log before its end, even where the engine wrote a short
        // attempt's start together with its end (one write instead of two).
        let attempt = ["started", "exited", "finished"];
        let mut expected = vec!["submitted"];
        for n in 0..3 {
            expected.extend(attempt);
            if n < 2 {
                expected.push("requeued");
            }
        }
        assert_eq!(kinds, expected, "{kinds:?}");
        // Each attempt keeps its own output.
        let out = daemon.cli(&["logs", &id.to_string()]);
        assert_eq!(stdout(&out), "attempt\n");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn shutdown_without_requeue_leaves_jobs_interrupted() {
        let mut daemon = Daemon::start(&[("AURA_REQUEUE_ON_SHUTDOWN", "false")]);
        let client = daemon.client();
        let id = submit(&client, &spec("sleep", &["300"])).await;
        wait_running(&client, id, 1).await;
        daemon.signal(rustix::process::Signal::TERM);
        daemon.wait_exit();
        daemon.spawn();
        let view = daemon.client().get(id).await.unwrap();
        assert!(
            matches!(outcome(&view), Outcome::Interrupted { .. }),
            "{view:?}"
        );
    }
}

mod admission {
    use super::*;

    /// The most jobs whose runs overlapped, from their recorded start and finish times.
    fn max_overlap(views: &[JobView]) -> usize {
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
        let resp = acquire(serde_json::json!({"resources": {"memory": "600MiB"}, "ttl": "1s", "holder": "tts-worker"}))
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
            let device =
                String::from_utf8(client.logs(*id, "stdout", 0).await.unwrap().data).unwrap();
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
        let deadline = Instant::now() + Duration::from_secs(5);
        let utilization = loop {
            let u = client.utilization().await.unwrap();
            if u.admission_paused {
                break u;
            }
            assert!(
                Instant::now() < deadline,
                "the guard never paused admission: {u:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(
            utilization
                .paused_reason
                .as_deref()
                .unwrap()
                .starts_with("available memory"),
            "{utilization:?}"
        );
        let id = submit(&client, &spec("true", &[])).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let view = client.get(id).await.unwrap();
        assert_eq!(view.job.state.name(), aura_model::StateName::Queued);
        let waiting = view.waiting.unwrap_or_default();
        assert!(
            waiting.starts_with("admission paused: available memory"),
            "{waiting}"
        );
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
        let mut after = None;
        loop {
            let page = client
                .list(&aura_client::ListQuery {
                    limit: Some(1000),
                    after,
                    oldest_first: true,
                    ..Default::default()
                })
                .await
                .unwrap();
            for v in &page.jobs {
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
            match page.next_after {
                Some(next) => after = Some(next),
                None => break,
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
}

mod metrics {
    use super::*;

    async fn get_json(url: String) -> (u16, serde_json::Value) {
        let resp = http_get(url).await.unwrap();
        (resp.status().as_u16(), resp.json().await.unwrap())
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn system_process_and_readiness_answer_without_a_gpu() {
        let daemon = Daemon::start(&[("AURA_METRICS__INTERVAL", "100ms")]);
        tokio::time::sleep(Duration::from_millis(400)).await;
        let (status, system) = get_json(format!("{}/api/metrics/system", daemon.url)).await;
        assert_eq!(status, 200);
        let cores = std::thread::available_parallelism().unwrap().get();
        assert_eq!(system["cpu"]["cores"], cores, "{system}");
        assert!(system["memory"]["total"].as_u64().unwrap() > 0, "{system}");
        if !Path::new("/dev/nvidiactl").exists() {
            assert!(system["gpus"].is_null(), "{system}");
            assert!(system["gpu_unavailable"].is_string(), "{system}");
        }
        let (_, history) =
            get_json(format!("{}/api/metrics/system?history=true", daemon.url)).await;
        assert!(
            history.as_array().is_some_and(|h| h.len() >= 2),
            "{history}"
        );
        let (status, process) = get_json(format!("{}/api/metrics/process", daemon.url)).await;
        assert_eq!(status, 200);
        assert_eq!(process["pid"], daemon.pid(), "{process}");
        assert!(
            process["open_fds"].as_u64().unwrap() > 3 && process["rss_bytes"].as_u64().unwrap() > 0,
            "{process}"
        );
        assert!(
            process["allocator"]["in_use_bytes"]
                .as_u64()
                .is_some_and(|b| b > 0),
            "{process}"
        );
        let (status, ready) = get_json(format!("{}/readyz", daemon.url)).await;
        assert_eq!(
            (status, ready["status"].as_str()),
            (200, Some("healthy")),
            "{ready}"
        );
        // The kernel's OOM killer picks a job before the daemon: jobs run at +500; the daemon lowers its own
        // score to -500 where it has CAP_SYS_RESOURCE (this sandbox's root does not) and stays at 0 otherwise.
        let adj = |pid: u32| -> i32 {
            std::fs::read_to_string(format!("/proc/{pid}/oom_score_adj"))
                .unwrap()
                .trim()
                .parse()
                .unwrap()
        };
        let client = daemon.client();
        let id = submit(&client, &spec("sleep", &["30"])).await;
        let view = wait_running(&client, id, 1).await;
        let job_pid = view.job.state.run().unwrap().tree.pid;
        assert_eq!(adj(job_pid), 500);
        assert!(
            adj(daemon.pid()) <= 0,
            "daemon oom_score_adj {}",
            adj(daemon.pid())
        );
        // The daemon's threads run above its jobs (`supervisor.daemon_nice`, -10, where it has
        // CAP_SYS_NICE, as the test's own root does here); the job starts at `job_nice`, 0.
        let nice = |stat_path: String| -> i32 {
            let stat = std::fs::read_to_string(stat_path).unwrap();
            aura_host::procfs::parse_pid_stat(&stat).unwrap().nice
        };
        assert_eq!(nice(format!("/proc/{job_pid}/stat")), 0);
        const CAP_SYS_NICE: u32 = 23;
        let may_raise = std::fs::read_to_string("/proc/self/status")
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .and_then(|caps| u64::from_str_radix(caps.trim(), 16).ok())
            .is_some_and(|caps| caps & (1 << CAP_SYS_NICE) != 0);
        let expected = if may_raise { -10 } else { 0 };
        for task in std::fs::read_dir(format!("/proc/{}/task", daemon.pid())).unwrap() {
            let task = task.unwrap().path();
            assert_eq!(
                nice(format!("{}/stat", task.display())),
                expected,
                "daemon thread {}",
                task.display()
            );
        }
        client.cancel(id).await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn prometheus_output_passes_promtool_and_shows_running_jobs() {
        let daemon = Daemon::start(&[("AURA_METRICS__INTERVAL", "100ms")]);
        let client = daemon.client();
        let id = submit(&client, &spec("sleep", &["5"])).await;
        wait_running(&client, id, 1).await;
        tokio::time::sleep(Duration::from_millis(400)).await;
        let resp = http_get(format!("{}/metrics", daemon.url)).await.unwrap();
        let content_type = resp
            .headers()
            .get("content-type")
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        assert!(
            content_type.starts_with("text/plain; version=0.0.4"),
            "{content_type}"
        );
        let text = resp.text().await.unwrap();
        let mut promtool = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("promtool (Debian package prometheus; `cargo xtask test` installs it)");
        use std::io::Write;
        promtool
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = promtool.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool: {}{}\n{text}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        for series in [
            "aura_host_cpu_seconds_total{mode=\"user\"}",
            "aura_host_memory_available_bytes ",
            "process_resident_memory_bytes ",
            "process_open_fds ",
            "aura_allocator_in_use_bytes ",
            "aura_jobs_running 1",
            &format!("aura_job_memory_bytes{{job_id=\"{id}\"}}"),
        ] {
            assert!(text.contains(series), "missing {series:?} in\n{text}");
        }
        client.cancel(id).await.unwrap();
        wait_done(&client, id).await;
        let after = get_text(format!("{}/api/metrics/prometheus", daemon.url)).await;
        assert!(
            !after.contains("job_id="),
            "a finished job keeps no series: {after}"
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn warnings_over_thresholds_degrade_readiness_and_cleanup_reports() {
        let daemon = Daemon::start(&[("AURA_DIAGNOSTICS__MAX_OPEN_FDS", "3")]);
        let (status, diag) = get_json(format!("{}/api/diagnostics/resources", daemon.url)).await;
        assert_eq!(status, 200);
        assert_eq!(diag["warnings"][0]["metric"], "open_fds", "{diag}");
        assert_eq!(diag["warnings"][0]["threshold"], 3, "{diag}");
        let (status, ready) = get_json(format!("{}/readyz", daemon.url)).await;
        assert_eq!(
            (status, ready["status"].as_str()),
            (200, Some("degraded")),
            "{ready}"
        );
        assert!(
            ready["reasons"][0]
                .as_str()
                .unwrap()
                .starts_with("warning: open file descriptors"),
            "{ready}"
        );
        let resp = authed(&daemon.url)
            .post(format!("{}/api/diagnostics/resources/cleanup", daemon.url))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        let cleanup: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(cleanup["before"]["pid"], daemon.pid(), "{cleanup}");
        assert!(
            cleanup["after"]["rss_bytes"].as_u64().unwrap() > 0,
            "{cleanup}"
        );
    }

    /// A job's live memory rises while it allocates, and its peak matches the recorded one.
    #[tokio::test(flavor = "multi_thread")]
    async fn live_memory_rises_and_the_peak_matches_the_record() {
        let daemon = Daemon::start(&[("AURA_SUPERVISOR__SAMPLE_INTERVAL", "100ms")]);
        let client = daemon.client();
        // Half a second of a small tree first, so that the first look sees it before it allocates (a
        // job shows as running within 20 ms of its start, and stress-ng takes 200 MB in a fraction of
        // a second).
        let job = spec(
            "sh",
            &[
                "-c",
                "sleep 0.5; exec stress-ng --vm 1 --vm-bytes 200M --vm-keep --timeout 3s --quiet",
            ],
        );
        let id = submit(&client, &job).await;
        let mut seen = Vec::new();
        loop {
            let view = client.get(id).await.unwrap();
            if let Some(live) = view.live {
                seen.push((
                    live.memory_current.unwrap_or(0),
                    live.memory_peak.unwrap_or(0),
                ));
            }
            if view.job.outcome().is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let first = seen.first().map_or(0, |s| s.0);
        let max_live = seen.iter().map(|s| s.0).max().unwrap_or(0);
        assert!(
            max_live > first + (100 << 20),
            "live memory did not rise: {seen:?}"
        );
        let live_peak = seen.iter().map(|s| s.1).max().unwrap_or(0);
        let view = wait_done(&client, id).await;
        let JobState::Finished(f) = &view.job.state else {
            unreachable!()
        };
        let recorded = f.accounting.memory_peak.unwrap().bytes();
        // The kernel's high-water mark can only be at or above what sampling saw, and close to it.
        assert!(
            recorded >= live_peak && recorded - live_peak < (32 << 20),
            "live peak {live_peak}, recorded {recorded}"
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_paused_admission_degrades_readiness() {
        let daemon = Daemon::start(&[
            ("AURA_GUARDS__MIN_AVAILABLE_MEMORY", "0.999"),
            ("AURA_GUARDS__RESUME_AVAILABLE_MEMORY", "0.9995"),
            ("AURA_GUARDS__INTERVAL", "100ms"),
        ]);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let (status, ready) = get_json(format!("{}/readyz", daemon.url)).await;
            if ready["status"] == "degraded" {
                assert_eq!(status, 200);
                assert!(
                    ready["reasons"][0]
                        .as_str()
                        .unwrap()
                        .starts_with("admission paused"),
                    "{ready}"
                );
                break;
            }
            assert!(
                Instant::now() < deadline,
                "readiness never degraded: {ready}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

mod ffmpeg {
    use super::*;

    fn probe_duration(path: &Path) -> Option<f64> {
        let out = Command::new("ffprobe")
            .args([
                "-v",
                "error",
                "-show_entries",
                "format=duration",
                "-of",
                "default=nw=1:nk=1",
            ])
            .arg(path)
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn encode_produces_a_valid_video_and_cancel_finalises_it() {
        let daemon = Daemon::start(&[]);
        let client = daemon.client();
        let out_dir = tempfile::tempdir().unwrap();
        // Jobs run as their own account: the output directory is theirs to write.
        std::fs::set_permissions(
            out_dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o777),
        )
        .unwrap();
        let encode = |name: &str, extra: &[&str]| {
            let mut args: Vec<String> = vec!["-nostdin".into(), "-y".into()];
            args.extend(extra.iter().map(|s| s.to_string()));
            args.extend(
                [
                    "-f",
                    "lavfi",
                    "-i",
                    "testsrc=duration=3:size=320x240:rate=25",
                    "-c:v",
                    "libx264",
                    "-preset",
                    "ultrafast",
                ]
                .iter()
                .map(|s| s.to_string()),
            );
            args.push(out_dir.path().join(name).display().to_string());
            JobSpec::new("ffmpeg", args)
        };
        let id = submit(&client, &encode("full.mp4", &[])).await;
        let view = wait_done(&client, id).await;
        assert!(outcome(&view).is_success(), "{view:?}");
        let full =
            probe_duration(&out_dir.path().join("full.mp4")).expect("ffprobe reads the encode");
        assert!((2.9..3.2).contains(&full), "duration {full}");

        // `-re` reads the source in real time, so the encode is still running when it is cancelled.
        let mut long = encode("cancelled.mp4", &["-re"]);
        let i = long
            .args
            .iter()
            .position(|a| a.starts_with("testsrc"))
            .unwrap();
        long.args[i] = "testsrc=duration=60:size=320x240:rate=25".into();
        let id = submit(&client, &long).await;
        wait_running(&client, id, 1).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        client.cancel(id).await.unwrap();
        let view = wait_done(&client, id).await;
        assert_eq!(outcome(&view), &Outcome::Cancelled);
        let JobState::Finished(f) = &view.job.state else {
            unreachable!()
        };
        assert_eq!(
            f.signals_sent.iter().map(|s| s.name()).collect::<Vec<_>>(),
            vec!["SIGINT"],
            "FFmpeg stops on SIGINT"
        );
        let partial = probe_duration(&out_dir.path().join("cancelled.mp4"))
            .expect("the cancelled encode is playable");
        assert!(partial > 0.5 && partial < 30.0, "duration {partial}");
    }
}

mod memory {
    use super::*;

    const LIMIT: u64 = 200 << 20;

    pub(super) fn hog(bytes: &str, seconds: u32) -> JobSpec {
        let timeout = format!("{seconds}s");
        spec(
            "stress-ng",
            &[
                "--vm",
                "1",
                "--vm-bytes",
                bytes,
                "--vm-keep",
                "--timeout",
                &timeout,
            ],
        )
    }

    /// A job with a 200 MiB limit allocating 1 GiB is killed with outcome `memory_limit_exceeded`, the limit
    /// and its peak in the record; the job beside it is untouched and the daemon keeps serving.
    async fn over_the_limit_is_killed(backend: &str) {
        let daemon = Daemon::start(&[("AURA_SUPERVISOR__BACKEND", backend)]);
        let client = daemon.client();
        let bystander = submit(&client, &spec("sh", &["-c", "sleep 3"])).await;
        let out = daemon.cli(&[
            "submit",
            "--quiet",
            "--memory-max",
            "200M",
            "--",
            "stress-ng",
            "--vm",
            "1",
            "--vm-bytes",
            "1G",
            "--vm-keep",
            "--timeout",
            "60s",
        ]);
        assert!(out.status.success(), "{out:?}");
        let id: JobId = JobId(stdout(&out).trim().parse().expect("job id"));
        let view = wait_done(&client, id).await;
        let Outcome::MemoryLimitExceeded {
            limit_bytes,
            peak_bytes,
        } = outcome(&view).clone()
        else {
            panic!("{backend}: {:?}", view.job.state);
        };
        assert_eq!(limit_bytes, LIMIT);
        let peak = peak_bytes.expect("peak recorded");
        if backend == "process_group" {
            // The watchdog samples every 50 ms: stopped far below the 1 GiB the job wanted.
            assert!(peak < 600 << 20, "{backend}: peak {peak}");
        } else {
            assert!(
                peak <= LIMIT + (4 << 20),
                "{backend}: peak {peak} over the limit"
            );
        }
        let events = client.events(id).await.unwrap();
        let enforced_by = events
            .iter()
            .find_map(|e| match &e.event {
                aura_model::JobEvent::MemoryLimitExceeded { enforced_by, .. } => Some(*enforced_by),
                _ => None,
            })
            .unwrap_or_else(|| panic!("{backend}: no memory_limit_exceeded event: {events:?}"));
        let enforcer = if backend == "process_group" {
            aura_model::events::LimitEnforcer::Watchdog
        } else {
            aura_model::events::LimitEnforcer::Kernel
        };
        assert_eq!(enforced_by, enforcer, "{backend}");
        let show = stdout(&daemon.cli(&["show", &id.to_string()]));
        assert!(show.contains("memory_limit_exceeded"), "{show}");
        assert!(show.contains("Limit:      200.0 MiB — exceeded"), "{show}");
        assert!(show.contains("Delta="), "{show}");
        let metrics = get_text(format!("{}/metrics", daemon.url)).await;
        assert!(
            metrics.contains("aura_memory_kills_total{reason=\"limit_exceeded\"} 1"),
            "{metrics}"
        );

        assert!(
            outcome(&wait_done(&client, bystander).await).is_success(),
            "{backend}"
        );
        let after = submit(&client, &spec("true", &[])).await;
        assert!(
            outcome(&wait_done(&client, after).await).is_success(),
            "daemon keeps serving"
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn over_the_limit_is_killed_by_the_kernel() {
        over_the_limit_is_killed("auto").await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn over_the_limit_is_killed_by_the_watchdog_on_the_fallback() {
        over_the_limit_is_killed("process_group").await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn memory_limits_are_validated_at_submit() {
        let daemon = Daemon::start(&[]);
        let out = daemon.cli(&[
            "submit",
            "--memory",
            "2G",
            "--memory-max",
            "1G",
            "--",
            "true",
        ]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("memory_max out of range: must be at least the memory request"),
            "{err}"
        );
        let jobs = daemon.client().list(&Default::default()).await.unwrap();
        assert!(jobs.jobs.is_empty(), "a refused job changes nothing");
    }

    fn available_mib() -> u64 {
        kib_field("/proc/meminfo", "MemAvailable:").expect("MemAvailable") / 1024
    }

    /// The tests that move the host's available memory by gigabytes run one at a time: each sets its
    /// thresholds relative to the memory available when it starts.
    pub(super) static HOST_PRESSURE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

    /// Takes the host-pressure turn and returns a threshold maker (`mib` below the memory available now),
    /// or `None` (the test is skipped) when less than `needs_mib` is available.
    async fn host_pressure_turn(
        needs_mib: u64,
    ) -> Option<(tokio::sync::MutexGuard<'static, ()>, impl Fn(u64) -> String)> {
        let turn = HOST_PRESSURE.lock().await;
        let avail = available_mib();
        if avail < needs_mib {
            eprintln!("skipping: needs {needs_mib} MiB available, has {avail} MiB");
            return None;
        }
        Some((turn, move |mib: u64| format!("{}MiB", avail - mib)))
    }

    /// A hog outside Aura (the test's own child), killed when dropped, so a failing test leaves nothing.
    struct OutsideHog(std::process::Child);

    impl OutsideHog {
        fn start(bytes: &str) -> OutsideHog {
            // The same command a hog job runs, started by the test itself.
            let job = hog(bytes, 60);
            OutsideHog(
                std::process::Command::new(&job.program)
                    .args(&job.args)
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .spawn()
                    .expect("stress-ng"),
            )
        }
    }

    impl Drop for OutsideHog {
        fn drop(&mut self) {
            // stress-ng's workers are its children; SIGINT makes it stop them before it exits.
            let pid = rustix::process::Pid::from_child(&self.0);
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::INT);
            let _ = self.0.wait();
        }
    }

    async fn wait_paused(client: &Client, paused: bool) {
        // Generous: other tests of this binary allocate too, and the guard needs its resume threshold.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let u = client.utilization().await.unwrap();
            if u.admission_paused == paused {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "admission_paused never became {paused}: {u:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A standby (admitted beyond the running limit, its start prepared) must not slip past a pause: when
    /// the memory guard pauses admission it goes back to the queue, so the slot its blocker frees stays
    /// empty until admission resumes. Memory pressure from a hog outside Aura, thresholds set relative
    /// to the memory available now.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_paused_admission_takes_its_standby_back() {
        let Some((_turn, below)) = host_pressure_turn(5 << 10).await else {
            return;
        };
        let (pause, resume) = (below(800), below(500));
        let daemon = Daemon::start(&[
            ("AURA_MAX_CONCURRENT", "1"),
            ("AURA_STANDBY_JOBS", "1"),
            ("AURA_GUARDS__INTERVAL", "100ms"),
            ("AURA_GUARDS__MIN_AVAILABLE_MEMORY", &pause),
            ("AURA_GUARDS__RESUME_AVAILABLE_MEMORY", &resume),
            ("AURA_ADMISSION__DEFAULT_MEMORY_REQUEST", "16MiB"),
        ]);
        let client = daemon.client();
        let (blocker, standby, marker) = blocker_then_marker(&daemon, &client, [None; 2]).await;

        let hog = OutsideHog::start("2000M");
        wait_paused(&client, true).await;
        // The slot frees while admission is paused: the standby must not take it.
        client.cancel(blocker).await.unwrap();
        wait_done(&client, blocker).await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let view = client.get(standby).await.unwrap();
        assert_eq!(
            view.job.state.name(),
            aura_model::StateName::Queued,
            "{:?}",
            view.job.state
        );
        assert!(!marker.exists(), "the standby started during the pause");
        let waiting = view.waiting.unwrap_or_default();
        assert!(waiting.starts_with("admission paused"), "{waiting}");

        drop(hog);
        wait_paused(&client, false).await;
        let view = wait_done(&client, standby).await;
        assert!(outcome(&view).is_success(), "{:?}", view.job.state);
        assert!(marker.exists(), "it ran once admission resumed");
        assert_eq!(
            view.job.attempt, 1,
            "taken back before it started, not retried"
        );
    }

    /// Host pressure simulated with thresholds set relative to the memory available now: three 1.2 GiB hogs
    /// cross the critical threshold, and two still do, one alone only the pause threshold. Admission pauses,
    /// the lowest-priority hog is the one victim — memory stays critical afterwards, but no second victim is
    /// chosen within the cooldown — it is requeued asking for more, sits out the cooldown and completes
    /// later, and every other job completes. The daemon is never killed.
    #[tokio::test(flavor = "multi_thread")]
    async fn host_pressure_stops_one_victim_and_requeues_it_bigger() {
        let Some((_turn, below)) = host_pressure_turn(6 << 10).await else {
            return;
        };
        let (pause, resume) = (below(800), below(600));
        let (critical, clear) = (below(2000), below(1500));
        let daemon = Daemon::start(&[
            ("AURA_MAX_CONCURRENT", "4"),
            ("AURA_METRICS__INTERVAL", "200ms"),
            ("AURA_GUARDS__INTERVAL", "200ms"),
            ("AURA_GUARDS__MIN_AVAILABLE_MEMORY", &pause),
            ("AURA_GUARDS__RESUME_AVAILABLE_MEMORY", &resume),
            ("AURA_GUARDS__CRITICAL_AVAILABLE_MEMORY", &critical),
            ("AURA_GUARDS__CRITICAL_RESUME_AVAILABLE_MEMORY", &clear),
            ("AURA_GUARDS__CRITICAL_SUSTAIN", "1s"),
            ("AURA_GUARDS__VICTIM_COOLDOWN", "20s"),
            ("AURA_ADMISSION__DEFAULT_MEMORY_REQUEST", "256MiB"),
        ]);
        let client = daemon.client();
        let mut low = hog("1200M", 8);
        low.priority = 0;
        let mut high = hog("1200M", 8);
        high.priority = 5;
        let low = submit(&client, &low).await;
        let highs = [submit(&client, &high).await, submit(&client, &high).await];
        for id in [low, highs[0], highs[1]] {
            wait_running(&client, id, 1).await;
        }
        // Submitted while the hogs hold the memory: they wait for admission to resume.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut small = Vec::new();
        for _ in 0..3 {
            small.push(submit(&client, &spec("true", &[])).await);
        }

        for high in highs {
            let view = wait_done(&client, high).await;
            assert!(outcome(&view).is_success(), "{:?}", view.job.state);
            assert_eq!(view.job.attempt, 1, "only the victim was stopped");
        }
        for id in small {
            assert!(outcome(&wait_done(&client, id).await).is_success());
        }
        let low_view = wait_done(&client, low).await;
        assert!(outcome(&low_view).is_success(), "{:?}", low_view.job.state);
        assert_eq!((low_view.job.attempt, low_view.job.pressure_stops), (2, 1));
        let request = low_view.job.memory_request.clone().expect("request");
        assert!(
            matches!(request.source, aura_model::RequestSource::Pressure { peak_bytes, .. } if peak_bytes >= 1100 << 20),
            "{request:?}"
        );
        assert!(
            request.bytes.bytes() >= 1650 << 20,
            "max(request, peak) × 1.5: {request:?}"
        );
        let low_events = client.events(low).await.unwrap();
        let kinds: Vec<String> = low_events.iter().map(|e| e.event.kind()).collect();
        for kind in ["pressure_victim", "memory_request_raised", "requeued"] {
            assert!(kinds.iter().any(|k| k == kind), "{kind} missing: {kinds:?}");
        }
        let first_outcome = low_events.iter().find_map(|e| match &e.event {
            aura_model::JobEvent::Finished { outcome } => Some(outcome.clone()),
            _ => None,
        });
        assert!(
            matches!(first_outcome, Some(Some(Outcome::MemoryPressure { .. }))),
            "{first_outcome:?}"
        );

        let engine = client.engine_events(0).await.unwrap();
        let count = |kind: &str| engine.iter().filter(|e| e.event.kind() == kind).count();
        assert_eq!(
            count("pressure_victim"),
            1,
            "one victim, none other within the cooldown: {engine:?}"
        );
        assert!(
            count("admission_paused") >= 1 && count("admission_resumed") >= 1,
            "{engine:?}"
        );
        assert!(count("pressure_critical") >= 1, "{engine:?}");
        // Memory stayed critical after the victim was stopped (two hogs still ran): the cooldown held.
        let victim_event = engine
            .iter()
            .find(|e| e.event.kind() == "pressure_victim")
            .unwrap();
        let cleared = engine
            .iter()
            .find(|e| e.event.kind() == "pressure_cleared" && e.seq > victim_event.seq)
            .expect("critical cleared once the hogs ended");
        assert!(
            cleared.at.since(victim_event.at) >= Duration::from_secs(2),
            "memory should have stayed critical for a while after the victim: {engine:?}"
        );
        let victim = engine
            .iter()
            .find_map(|e| match &e.event {
                aura_model::EngineEvent::PressureVictim(chosen) => Some(chosen),
                _ => None,
            })
            .unwrap();
        assert_eq!(victim.job_id, low);
        assert!(
            victim.reading.available_memory_bytes.is_some(),
            "{victim:?}"
        );
        let utilization = client.utilization().await.unwrap();
        assert_eq!(utilization.pressure_victims, 1, "{utilization:?}");
        let events = stdout(&daemon.cli(&["events"]));
        assert!(
            events.contains("pressure_victim") && events.contains("admission_paused"),
            "{events}"
        );
        let status = stdout(&daemon.cli(&["status"]));
        assert!(status.contains("1 stopped for pressure"), "{status}");
        assert!(alive(daemon.pid()), "the daemon is never the victim");
        client.health().await.expect("still serving");
    }
}

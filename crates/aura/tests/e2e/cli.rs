//! The CLI as a user runs it: submit and wait, tables and JSON, closed pipes, `top` without a terminal, a
//! second daemon on the same data dir, clear client errors.

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
        let script = format!("{AURA} {command} | head -c 1 >/dev/null; echo ${{PIPESTATUS[0]}}");
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
    let jobs: Vec<serde_json::Value> = serde_json::from_slice(&json.stdout).expect("jobs --json");
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

/// `aura submit --wait` on a job that cannot start yet says why on stderr while it waits, and exits with
/// the job's code once it ran.
#[test]
fn submit_wait_says_why_the_job_waits() {
    let daemon = Daemon::start(&[]);
    assert!(daemon.cli(&["drain"]).status.success());
    let mut child = daemon
        .cli_command(&["submit", "--wait", "--", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run aura");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // Should the test fail, the daemon's drop ends the CLI too (its wait errors out).
    let line = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("nothing on stderr while the job waited");
    assert!(
        line.starts_with("aura: job 1 waits: ") && line.contains("drained"),
        "{line}"
    );
    assert!(daemon.cli(&["undrain"]).status.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "submit --wait did not end after the undrain"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
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

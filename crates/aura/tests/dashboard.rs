//! The web dashboard in a real browser (Debian's Chromium, driven by Playwright's `playwright-core` from
//! `tests/browser/`), against `aura serve`: a test binary of its own because what it measures is the whole
//! machine. Each test starts a daemon that also accepts a read-only token, hands node the address and the
//! tokens through the environment, runs one script and fails with node's output if it fails.
//!
//! `cargo xtask test` installs chromium and node and runs `npm ci` in `tests/browser`.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

mod common;
use common::Daemon;

/// The read-only token the daemon is configured with (through `AURA_API__TOKENS`).
const READ_TOKEN: &str = "aura_dashboard_test_read_only_token_0123456789abcdef";

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("the workspace root")
}

/// Where screenshots go: `target/artifacts/dashboard/`.
fn artifacts() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .map(|target| target.join("artifacts/dashboard"))
        .unwrap_or_else(|| workspace().join("target/artifacts/dashboard"))
}

/// A daemon that accepts the read-only token besides its local admin one. Guards off: another test's
/// load on a shared machine must not hold the jobs back.
/// The guard keeps the two tests apart: on a small machine two browsers and daemons would measure each
/// other.
fn daemon() -> (std::sync::MutexGuard<'static, ()>, Daemon) {
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    use sha2::Digest;
    let hash: String = sha2::Sha256::digest(READ_TOKEN.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let tokens = format!(r#"[{{name="viewer",hash="sha256:{hash}",scopes=["read"]}}]"#);
    let daemon = Daemon::start(&[
        ("AURA_API__TOKENS", &tokens),
        ("AURA_MAX_CONCURRENT", "4"),
        ("AURA_GUARDS__ENABLED", "false"),
    ]);
    (guard, daemon)
}

/// Runs `node tests/browser/<script>` with the daemon's address and tokens; panics with its output if it
/// fails or runs past `limit`. Returns its stdout.
fn node(script: &str, daemon: &Daemon, extra: &[(&str, String)], limit: Duration) -> String {
    let dir = workspace().join("tests/browser");
    assert!(
        dir.join("node_modules/playwright-core").is_dir(),
        "tests/browser/node_modules is missing: run `npm ci` in tests/browser (cargo xtask test does)"
    );
    let child = Command::new("node")
        .arg(script)
        .current_dir(&dir)
        .env("AURA_URL", &daemon.url)
        .env("AURA_TOKEN", &daemon.token)
        .env("AURA_READ_TOKEN", READ_TOKEN)
        .env("AURA_ARTIFACTS", artifacts())
        .envs(extra.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("node runs (apt install nodejs; cargo xtask test installs it)");
    // A watchdog: a hung browser must not hang the suite.
    let pid = child.id();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if done_rx.recv_timeout(limit).is_err() {
            // The child is owned by the other thread (waiting on it); `kill` ends that one process.
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    });
    let output = child.wait_with_output().expect("node's output");
    let _ = done_tx.send(());
    let _ = watchdog.join();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "node {script} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        output.status
    );
    print!("{stdout}");
    stdout
}

/// Loads with no console error or CSP violation, signs in, shows an FFmpeg job's moving progress bar,
/// cancels it with its button, draws a chart, hides every control from a read-only token, and saves
/// screenshots at 1280×800 and 390×844.
#[test]
fn the_dashboard_signs_in_follows_a_job_cancels_it_and_hides_controls_from_readers() {
    let (_one, daemon) = daemon();
    node("dashboard.mjs", &daemon, &[], Duration::from_secs(300));
    for shot in ["dashboard-1280x800.png", "dashboard-390x844.png"] {
        let path = artifacts().join(shot);
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        assert!(size > 1000, "{} is missing or empty", path.display());
    }
}

/// Open for `AURA_LEAK_SECONDS` (default 120) while a job starts and ends every second: JS heap, DOM
/// nodes and listeners stay flat (bounds in `tests/browser/leak.mjs`), and closing the page closes its
/// event stream on the daemon.
#[test]
fn the_dashboard_stays_flat_while_jobs_churn_and_frees_its_stream_when_closed() {
    let seconds: u64 = std::env::var("AURA_LEAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120);
    let (_one, daemon) = daemon();
    let out = node(
        "leak.mjs",
        &daemon,
        &[("AURA_LEAK_SECONDS", seconds.to_string())],
        Duration::from_secs(seconds + 300),
    );
    assert!(out.contains("\"dashboard_leak\""), "{out}");
    assert!(out.contains("\"dashboard_streams\""), "{out}");
}

//! The one program the daemon runs outside a job's tree: `ffprobe`, to learn how long an FFmpeg job's
//! input is (its percent and ETA). It runs as the jobs' account, in the job's directory, with the jobs'
//! base environment and no stdin, and is killed at its deadline: it reads exactly what the job may read,
//! and a hostile or hanging input costs the daemon nothing but a bounded wait on a blocking thread. Only
//! regular files are probed: a FIFO would lose to ffprobe what the job was to read.

use crate::sandbox::JobSandbox;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How often a running probe is looked at before its deadline.
const POLL: Duration = Duration::from_millis(20);
/// More output than a duration needs is not read.
const MAX_OUTPUT: u64 = 4096;

/// The duration `ffprobe` reports for `input` (relative to `cwd`), or `None` when it cannot tell in
/// `timeout` (missing program, unreadable input, no duration, too slow). Blocking.
pub(crate) fn media_duration(
    sandbox: &JobSandbox,
    ffprobe: &str,
    input: &str,
    cwd: &Path,
    timeout: Duration,
) -> Option<Duration> {
    use std::io::Read;
    // Regular files only: probing a FIFO or a device would take the job's input from it, and probing a
    // URL would fetch it a second time.
    let path = input.strip_prefix("file:").unwrap_or(input);
    if path.contains("://") || !cwd.join(path).is_file() {
        return None;
    }
    let mut command = Command::new(ffprobe);
    command
        .args(aura_media::probe_command(input))
        .current_dir(cwd)
        .env_clear()
        .envs(&sandbox.base_env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0);
    if let Some(id) = &sandbox.identity {
        // std drops the supplementary groups of a root daemon when it sets the uid.
        command.uid(id.uid).gid(id.gid);
    }
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            tracing::debug!(ffprobe, error = %e, "cannot run ffprobe; no expected duration");
            return None;
        }
    };
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(POLL),
            Ok(None) | Err(_) => break None,
        }
    };
    let Some(status) = status else {
        tracing::warn!(
            ffprobe,
            input,
            ?timeout,
            "ffprobe did not answer in time; killed"
        );
        let _ = child.kill();
        let _ = child.wait();
        return None;
    };
    let mut text = String::new();
    let read = child
        .stdout
        .take()
        .map(|out| out.take(MAX_OUTPUT).read_to_string(&mut text));
    if !status.success() || !matches!(read, Some(Ok(_))) {
        return None;
    }
    aura_media::probe_duration(&text)
}

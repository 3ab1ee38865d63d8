//! Reading and writing cgroupfs files (v1 and v2): membership, kill, memory, CPU, removal. Blocking.

use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

/// `mkdir`, treating "already exists" as success (a leftover of a crashed daemon is reused).
pub(crate) fn mkdir(dir: &Path) -> io::Result<()> {
    match std::fs::create_dir(dir) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(e),
        _ => Ok(()),
    }
}

/// The pids in `cgroup.procs` (empty if the directory is gone).
pub(crate) fn procs(dir: &Path) -> Vec<i32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

pub(crate) fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// A `key value` field of a flat-keyed file such as `cpu.stat`, `memory.stat`, `cgroup.events`.
pub(crate) fn keyed(path: &Path, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// `cpu.stat` user/system time in microseconds (v2; present without the cpu controller).
pub(crate) fn cpu_usec(dir: &Path) -> Option<(u64, u64)> {
    let p = dir.join("cpu.stat");
    Some((keyed(&p, "user_usec")?, keyed(&p, "system_usec")?))
}

/// v2: whether any process is left (`cgroup.events` `populated`); falls back to `cgroup.procs`.
pub(crate) fn v2_populated(dir: &Path) -> bool {
    match keyed(&dir.join("cgroup.events"), "populated") {
        Some(p) => p != 0,
        None => !procs(dir).is_empty(),
    }
}

/// v2: kill every process of the cgroup and its descendants atomically.
pub(crate) fn v2_kill(dir: &Path) -> io::Result<()> {
    std::fs::write(dir.join("cgroup.kill"), "1")
}

/// Sends `sig` to every pid listed in `cgroup.procs`; returns how many were signalled.
pub(crate) fn signal_members(dir: &Path, sig: i32) -> u32 {
    let mut n = 0;
    for pid in procs(dir) {
        // SAFETY: plain syscall.
        if unsafe { libc::kill(pid, sig) } == 0 {
            n += 1;
        }
    }
    n
}

/// Removes an (empty) cgroup directory, retrying briefly: right after the last member dies the kernel
/// may still report EBUSY. Missing is success.
pub(crate) fn rmdir(dir: &Path, patience: Duration) -> io::Result<()> {
    let deadline = Instant::now() + patience;
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// Subdirectories of `root` named `job-*` (this instance's job cgroups).
pub(crate) fn job_dirs(root: &Path) -> Vec<std::path::PathBuf> {
    let Ok(rd) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("job-") && e.path().is_dir())
        .map(|e| e.path())
        .collect()
}

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

/// `key value` fields of a flat-keyed file such as `cpu.stat`, `memory.events`, `cgroup.events`, from one
/// read (so they come from one moment, and `cpu.stat`'s statistics flush happens once); `None` if the
/// file or any key is missing.
pub(crate) fn keyed<const N: usize>(path: &Path, keys: [&str; N]) -> Option<[u64; N]> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut found = [None; N];
    for line in text.lines() {
        let Some((k, v)) = line.split_once(' ') else {
            continue;
        };
        if let Some(i) = keys.iter().position(|key| *key == k) {
            found[i] = v.trim().parse().ok();
        }
    }
    let mut values = [0; N];
    for (value, f) in values.iter_mut().zip(found) {
        *value = f?;
    }
    Some(values)
}

/// `cpu.stat` user/system time in microseconds (v2; present without the cpu controller).
pub(crate) fn cpu_usec(dir: &Path) -> Option<(u64, u64)> {
    let [user, system] = keyed(&dir.join("cpu.stat"), ["user_usec", "system_usec"])?;
    Some((user, system))
}

/// v2: whether any process is left (`cgroup.events` `populated`); falls back to `cgroup.procs`.
pub(crate) fn v2_populated(dir: &Path) -> bool {
    match keyed(&dir.join("cgroup.events"), ["populated"]) {
        Some([p]) => p != 0,
        None => !procs(dir).is_empty(),
    }
}

/// v2: kill every process of the cgroup and its descendants atomically.
pub(crate) fn v2_kill(dir: &Path) -> io::Result<()> {
    std::fs::write(dir.join("cgroup.kill"), "1")
}

/// Sends `sig` to every pid listed in `cgroup.procs`.
pub(crate) fn signal_members(dir: &Path, sig: i32) {
    for pid in procs(dir) {
        // SAFETY: plain syscall.
        unsafe { libc::kill(pid, sig) };
    }
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

/// Which memory-controller interface a job's memory cgroup speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MemoryApi {
    V1,
    V2,
}

/// Makes `limit` a hard limit on the job's memory: swap cannot stretch it (no swap beyond the limit where
/// the kernel accounts swap), and on v2 an OOM kill takes the whole cgroup, as the job is one unit.
/// Files the kernel lacks (no swap accounting, no `memory.oom.group` before Linux 4.19) are skipped;
/// failing to set the limit itself is an error, never a silently unlimited job.
pub(crate) fn set_memory_limit(dir: &Path, api: MemoryApi, limit: u64) -> io::Result<()> {
    let optional = |file: &str, value: &str| match std::fs::write(dir.join(file), value) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    };
    let limit = limit.to_string();
    match api {
        MemoryApi::V1 => {
            // memsw (memory + swap) must stay >= limit_in_bytes, so the limit goes first. An acquired
            // cgroup is always unlimited: limited ones are never pooled.
            std::fs::write(dir.join("memory.limit_in_bytes"), &limit)?;
            optional("memory.memsw.limit_in_bytes", &limit)
        }
        MemoryApi::V2 => {
            std::fs::write(dir.join("memory.max"), &limit)?;
            optional("memory.swap.max", "0")?;
            optional("memory.oom.group", "1")
        }
    }
}

/// What the kernel counted about a memory cgroup's limit and OOM kills.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct OomCounters {
    /// Processes of the cgroup killed by the OOM killer (its own limit or the whole host's).
    pub oom_kills: u64,
    /// Times the cgroup ran out of memory under its own limit (v2 `oom` events); v1 has no such counter
    /// (its `failcnt` stays 0 on recent kernels), so there it is 1 when the high-water mark reached the
    /// limit, 0 otherwise.
    pub limit_hits: u64,
}

/// Reads the OOM counters of a memory cgroup (v1 `memory.oom_control`, or v2 `memory.events`); `None` if
/// the cgroup is gone or the kernel has no such counters. `limit` is the limit the job was given.
pub(crate) fn oom_counters(dir: &Path, api: MemoryApi, limit: Option<u64>) -> Option<OomCounters> {
    match api {
        MemoryApi::V1 => {
            let [oom_kills] = keyed(&dir.join("memory.oom_control"), ["oom_kill"])?;
            // The kernel OOM-kills in a memcg only once it cannot reclaim below the limit, so a charge
            // that reached the limit (within reclaim slack) is the limit's doing.
            let reached = |limit: u64| {
                read_u64(&dir.join("memory.max_usage_in_bytes"))
                    .is_some_and(|peak| peak + (limit / 100).max(1 << 20) >= limit)
            };
            Some(OomCounters {
                oom_kills,
                limit_hits: u64::from(limit.is_some_and(reached)),
            })
        }
        MemoryApi::V2 => {
            let [oom_kills, limit_hits] = keyed(&dir.join("memory.events"), ["oom_kill", "oom"])?;
            Some(OomCounters {
                oom_kills,
                limit_hits,
            })
        }
    }
}

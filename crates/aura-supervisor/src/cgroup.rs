//! Reading and writing cgroupfs files (v1 and v2): membership, kill, memory, CPU, removal; and a job
//! cgroup's directory with the control files read per job kept open (`CgroupDir`). Blocking.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The control files of a job cgroup that the supervisor reads or writes for every job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ControlFile {
    /// `cgroup.procs`, kept open for writing only: the job's child writes "0" to it to join.
    Procs,
    /// v2 `cgroup.events` (`populated`).
    Events,
    /// v2 `cpu.stat`.
    CpuStat,
    /// v1 `memory.usage_in_bytes`.
    V1Usage,
    /// v1 `memory.max_usage_in_bytes` (written "0" to reset the high-water mark).
    V1MaxUsage,
    /// v1 `memory.oom_control`.
    V1OomControl,
    /// v2 `memory.current`.
    V2Current,
    /// v2 `memory.peak`.
    V2Peak,
    /// v2 `memory.events`.
    V2MemoryEvents,
    /// `memory.stat` (both versions; the keys differ).
    MemoryStat,
}

// Every variant has a slot in `CgroupDir::files` (the last one is the highest).
const _: () = assert!(ControlFile::MemoryStat as usize + 1 == ControlFile::ALL);

impl ControlFile {
    const ALL: usize = 10;

    fn name(self) -> &'static str {
        match self {
            ControlFile::Procs => "cgroup.procs",
            ControlFile::Events => "cgroup.events",
            ControlFile::CpuStat => "cpu.stat",
            ControlFile::V1Usage => "memory.usage_in_bytes",
            ControlFile::V1MaxUsage => "memory.max_usage_in_bytes",
            ControlFile::V1OomControl => "memory.oom_control",
            ControlFile::V2Current => "memory.current",
            ControlFile::V2Peak => "memory.peak",
            ControlFile::V2MemoryEvents => "memory.events",
            ControlFile::MemoryStat => "memory.stat",
        }
    }
}

/// A job cgroup's directory and its per-job control files, each opened on first use and kept open as
/// long as this value lives — for a pooled cgroup, across every job that uses it. Opening a cgroupfs
/// file walks the whole path (seven components for a v1 job cgroup here) and closing it tears the open
/// file down again: on the development VM an open, read and close cost ~4.3 µs where a read of the
/// kept file costs ~0.9 µs, and a trivial job touches nine of them. A kept file is read with `pread` at
/// offset 0, which makes the kernel generate the file anew (`seq_file`), so every read is current.
#[derive(Debug)]
pub(crate) struct CgroupDir {
    path: PathBuf,
    files: [OnceLock<File>; ControlFile::ALL],
}

impl CgroupDir {
    pub fn new(path: PathBuf) -> CgroupDir {
        CgroupDir {
            path,
            files: Default::default(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn file(&self, control: ControlFile) -> io::Result<&File> {
        let slot = &self.files[control as usize];
        if let Some(file) = slot.get() {
            return Ok(file);
        }
        let path = self.path.join(control.name());
        let file = match control {
            ControlFile::Procs => std::fs::OpenOptions::new().write(true).open(path)?,
            ControlFile::V1MaxUsage => std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)?,
            _ => File::open(path)?,
        };
        // Two threads may open it at once; the second file is closed again.
        if slot.set(file).is_ok() {
            KEPT_FILES.fetch_add(1, Ordering::Relaxed);
        }
        slot.get()
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
    }

    /// The kept file's descriptor, for the job's child to write to before exec.
    pub fn raw_fd(&self, control: ControlFile) -> io::Result<RawFd> {
        Ok(self.file(control)?.as_raw_fd())
    }

    /// The whole file, read anew, handed to `parse` without a copy. Every control file read here is a few
    /// lines, well under the one page read; a longer one would be cut short, and its parse would find
    /// nothing.
    fn read_with<T>(
        &self,
        control: ControlFile,
        parse: impl FnOnce(&str) -> Option<T>,
    ) -> Option<T> {
        let file = self.file(control).ok()?;
        let mut buf = [0u8; 4096];
        let n = file.read_at(&mut buf, 0).ok()?;
        parse(std::str::from_utf8(&buf[..n]).ok()?)
    }

    pub fn read_u64(&self, control: ControlFile) -> Option<u64> {
        self.read_with(control, |text| text.trim().parse().ok())
    }

    /// `key value` fields of a flat-keyed control file, from one read (see [`keyed`]).
    pub fn keyed<const N: usize>(&self, control: ControlFile, keys: [&str; N]) -> Option<[u64; N]> {
        self.read_with(control, |text| parse_keyed(text, keys))
    }

    pub fn write(&self, control: ControlFile, value: &str) -> io::Result<()> {
        self.file(control)?.write_at(value.as_bytes(), 0).map(drop)
    }

    /// Closes the kept files (before the directory is removed).
    pub fn close_files(&mut self) {
        for slot in &mut self.files {
            if slot.take().is_some() {
                KEPT_FILES.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
}

impl Drop for CgroupDir {
    fn drop(&mut self) {
        self.close_files();
    }
}

/// Control files kept open by every `CgroupDir` of this process.
static KEPT_FILES: AtomicU64 = AtomicU64::new(0);

/// How many job cgroup control files this process keeps open (see `CgroupDir`): fds held on purpose,
/// bounded by the cgroup pool's size and the running jobs, which the daemon's diagnostics discount.
pub fn kept_files() -> u64 {
    KEPT_FILES.load(Ordering::Relaxed)
}

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

/// `key value` fields of a flat-keyed file such as `cpu.stat`, `memory.events`, `cgroup.events`, from one
/// read (so they come from one moment, and `cpu.stat`'s statistics flush happens once); `None` if the
/// file or any key is missing.
pub(crate) fn keyed<const N: usize>(path: &Path, keys: [&str; N]) -> Option<[u64; N]> {
    parse_keyed(&std::fs::read_to_string(path).ok()?, keys)
}

fn parse_keyed<const N: usize>(text: &str, keys: [&str; N]) -> Option<[u64; N]> {
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

/// Page cache the kernel can reclaim from a job's memory cgroup: file pages that are not shmem (tmpfs
/// and shared memory stay until freed), from `memory.stat`. What a job's charge holds beyond this is
/// memory it really uses.
pub(crate) fn reclaimable_cache(dir: &CgroupDir, api: MemoryApi) -> Option<u64> {
    let keys = match api {
        MemoryApi::V2 => ["file", "shmem"],
        MemoryApi::V1 => ["total_cache", "total_shmem"],
    };
    let [file, shmem] = dir.keyed(ControlFile::MemoryStat, keys)?;
    Some(file.saturating_sub(shmem))
}

/// `cpu.stat` user/system time in microseconds (v2; present without the cpu controller).
pub(crate) fn cpu_usec(dir: &Path) -> Option<(u64, u64)> {
    let [user, system] = keyed(&dir.join("cpu.stat"), CPU_KEYS)?;
    Some((user, system))
}

const CPU_KEYS: [&str; 2] = ["user_usec", "system_usec"];

/// A job cgroup's `cpu.stat` user/system time in microseconds (v2).
pub(crate) fn job_cpu_usec(dir: &CgroupDir) -> Option<(u64, u64)> {
    let [user, system] = dir.keyed(ControlFile::CpuStat, CPU_KEYS)?;
    Some((user, system))
}

/// v2: whether any process is left (`cgroup.events` `populated`); falls back to `cgroup.procs`.
pub(crate) fn v2_populated(dir: &CgroupDir) -> bool {
    match dir.keyed(ControlFile::Events, ["populated"]) {
        Some([p]) => p != 0,
        None => !procs(dir.path()).is_empty(),
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
pub(crate) fn oom_counters(
    dir: &CgroupDir,
    api: MemoryApi,
    limit: Option<u64>,
) -> Option<OomCounters> {
    match api {
        MemoryApi::V1 => {
            let [oom_kills] = dir.keyed(ControlFile::V1OomControl, ["oom_kill"])?;
            // The kernel OOM-kills in a memcg only once it cannot reclaim below the limit, so a charge
            // that reached the limit (within reclaim slack) is the limit's doing.
            let reached = |limit: u64| {
                dir.read_u64(ControlFile::V1MaxUsage)
                    .is_some_and(|peak| peak + (limit / 100).max(1 << 20) >= limit)
            };
            Some(OomCounters {
                oom_kills,
                limit_hits: u64::from(limit.is_some_and(reached)),
            })
        }
        MemoryApi::V2 => {
            let [oom_kills, limit_hits] =
                dir.keyed(ControlFile::V2MemoryEvents, ["oom_kill", "oom"])?;
            Some(OomCounters {
                oom_kills,
                limit_hits,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A kept control file read again reports the counter as it is now, not as it was at the first
    /// read: every read of a pooled cgroup's files depends on it.
    #[test]
    fn a_kept_control_file_is_read_anew() {
        let host = crate::host::HostCgroups::read();
        let Ok(own) = host.own_v2_dir() else {
            eprintln!("skipped: no cgroup v2 here");
            return;
        };
        let dir = CgroupDir::new(own);
        let Some((user, system)) = job_cpu_usec(&dir) else {
            eprintln!("skipped: no cpu.stat in {}", dir.path().display());
            return;
        };
        // Burn CPU in this process (and so in its cgroup) until the counter has moved past one tick of
        // its resolution.
        let start = Instant::now();
        let mut x = 0u64;
        let moved = loop {
            for i in 0..100_000u64 {
                x = x.wrapping_mul(31).wrapping_add(i);
            }
            std::hint::black_box(x);
            let (u, s) = job_cpu_usec(&dir).expect("cpu.stat read again");
            if u + s > user + system + 20_000 {
                break true;
            }
            if start.elapsed() > Duration::from_secs(5) {
                break false;
            }
        };
        assert!(moved, "cpu.stat read through the kept file never moved");
        assert!(dir.files[ControlFile::CpuStat as usize].get().is_some());
    }

    #[test]
    fn a_missing_control_file_is_an_error_and_not_kept() {
        let dir = CgroupDir::new(std::env::temp_dir().join("aura-no-such-cgroup"));
        assert!(dir.keyed(ControlFile::CpuStat, ["usage_usec"]).is_none());
        assert!(dir.read_u64(ControlFile::V1Usage).is_none());
        assert!(dir.files.iter().all(|f| f.get().is_none()));
    }
}

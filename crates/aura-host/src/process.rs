//! The daemon's own process (the standard `process_*` metrics), read on demand from /proc/self.
//! Not sampled by the thread: every field is a counter or a gauge, so no delta is needed.

use std::sync::OnceLock;

use aura_model::host::{AllocatorStats, ProcessSnapshot};
use aura_model::Timestamp;
use rustix::process::{getrlimit, Resource};

use crate::error::HostError;
use crate::procfs;

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn allocator() -> Option<AllocatorStats> {
    // SAFETY: mallinfo2 only reads the allocator's counters (glibc >= 2.33).
    let m = unsafe { libc::mallinfo2() };
    Some(AllocatorStats {
        mapped_bytes: (m.arena + m.hblkhd) as u64,
        in_use_bytes: (m.uordblks + m.hblkhd) as u64,
        free_bytes: m.fordblks as u64,
    })
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn allocator() -> Option<AllocatorStats> {
    None
}

fn read(path: &str) -> Result<String, HostError> {
    std::fs::read_to_string(path).map_err(|e| HostError::read(path, e))
}

/// Boot time in Unix seconds; it never changes while we run, so it is read once.
fn boot_time() -> Result<u64, HostError> {
    static BTIME: OnceLock<u64> = OnceLock::new();
    if let Some(b) = BTIME.get() {
        return Ok(*b);
    }
    let stat =
        procfs::parse_stat(&read("/proc/stat")?).map_err(|e| HostError::parse("/proc/stat", e))?;
    let b = stat.btime.ok_or_else(|| {
        HostError::parse("/proc/stat", procfs::ParseError("no btime line".into()))
    })?;
    Ok(*BTIME.get_or_init(|| b))
}

/// Open descriptors of this process. The directory handle used to list them is itself an open
/// descriptor while listing, so it is not counted.
fn open_fds() -> Result<u64, HostError> {
    let path = "/proc/self/fd";
    let dir = std::fs::read_dir(path).map_err(|e| HostError::read(path, e))?;
    let mut n = 0u64;
    for entry in dir {
        entry.map_err(|e| HostError::read(path, e))?;
        n += 1;
    }
    Ok(n.saturating_sub(1))
}

/// Direct children, from each thread's `children` file (a child belongs to the thread that
/// forked it). Falls back to scanning every /proc/<pid>/stat when the kernel lacks those files
/// (CONFIG_PROC_CHILDREN off).
fn children(pid: u32) -> Result<u64, HostError> {
    let main_thread = format!("/proc/self/task/{pid}/children");
    if !std::path::Path::new(&main_thread).exists() {
        return children_by_scan(pid);
    }
    let tasks = "/proc/self/task";
    let dir = std::fs::read_dir(tasks).map_err(|e| HostError::read(tasks, e))?;
    let mut n = 0u64;
    for task in dir {
        let path = task
            .map_err(|e| HostError::read(tasks, e))?
            .path()
            .join("children");
        match std::fs::read_to_string(&path) {
            Ok(text) => n += text.split_ascii_whitespace().count() as u64,
            // The thread exited between listing and reading: it has no children to count.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(HostError::read(path, e)),
        }
    }
    Ok(n)
}

fn children_by_scan(pid: u32) -> Result<u64, HostError> {
    let dir = std::fs::read_dir("/proc").map_err(|e| HostError::read("/proc", e))?;
    let mut n = 0u64;
    for entry in dir.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        // Processes exit while we scan: an unreadable or odd entry is simply not counted.
        let Ok(text) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        if procfs::parse_pid_stat(&text).is_ok_and(|s| s.ppid == pid) {
            n += 1;
        }
    }
    Ok(n)
}

/// Reads the daemon's own process. **Blocking** (a few small /proc reads, plus a /proc scan on
/// kernels without CONFIG_PROC_CHILDREN): call it from `spawn_blocking` in async code.
pub fn process_snapshot() -> Result<ProcessSnapshot, HostError> {
    let pid = std::process::id();
    let stat = procfs::parse_pid_stat(&read("/proc/self/stat")?)
        .map_err(|e| HostError::parse("/proc/self/stat", e))?;
    let hz = rustix::param::clock_ticks_per_second() as f64;
    let page = rustix::param::page_size() as u64;
    let start_ms = (boot_time()? as f64 * 1000.0 + stat.starttime as f64 / hz * 1000.0) as i64;
    Ok(ProcessSnapshot {
        pid,
        rss_bytes: stat.rss_pages.saturating_mul(page),
        virtual_bytes: stat.vsize_bytes,
        open_fds: open_fds()?,
        max_fds: getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX),
        threads: stat.num_threads,
        children: children(pid)?,
        cpu_user_seconds: stat.utime as f64 / hz,
        cpu_system_seconds: stat.stime as f64 / hz,
        start_time: Timestamp::from_unix_millis(start_ms),
        allocator: allocator(),
    })
}

//! Diagnostics of the daemon itself, as the user's documents' ResourceTracker had them: its own fds,
//! threads, memory and child processes checked against thresholds, and a cleanup that gives back what can be
//! given back now.

use aura_host::ProcessSnapshot;
use serde::Serialize;

/// Warning thresholds, with the defaults of `aura serve`; the `[diagnostics]` section of its configuration.
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DiagnosticsConfig {
    /// Open fds beyond what running jobs hold by design (`FDS_PER_RUNNING_JOB` each).
    pub max_open_fds: u64,
    /// The daemon's own resident memory (RSS) above which it warns.
    pub max_rss: aura_model::ByteSize,
    /// Threads beyond the running jobs' launcher threads (one waits for each job by design).
    pub max_threads: u64,
    /// Children beyond the running jobs' main processes (which are the daemon's children by design).
    pub max_extra_children: u64,
}

impl Default for DiagnosticsConfig {
    /// 1000 fds and 2 GB as in the user's documents; 200 threads; 10 unexplained children.
    fn default() -> Self {
        DiagnosticsConfig {
            max_open_fds: 1000,
            max_rss: aura_model::ByteSize(2 << 30),
            max_threads: 200,
            max_extra_children: 10,
        }
    }
}

pub use aura_model::{Cleanup, Diagnostics, Warning};

/// What the daemon holds open for each running job: its pidfd, both ends of its stdout and stderr pipes
/// (the write ends until the main process exits), and their log files (opened with a stream's first byte).
pub(crate) const FDS_PER_RUNNING_JOB: u64 = 7;

/// `kept_fds`: fds the supervisor keeps open on purpose besides those per running job (job cgroups'
/// control files, `aura_supervisor::kept_cgroup_files`), bounded by its cgroup pool.
pub(crate) fn warnings(
    config: &DiagnosticsConfig,
    p: &ProcessSnapshot,
    running_jobs: usize,
    kept_fds: u64,
) -> Vec<Warning> {
    let extra_children = p.children.saturating_sub(running_jobs as u64);
    let threads = p.threads.saturating_sub(running_jobs as u64);
    let open_fds = p
        .open_fds
        .saturating_sub(FDS_PER_RUNNING_JOB * running_jobs as u64 + kept_fds);
    let fds_what = format!(
        "open file descriptors beyond {FDS_PER_RUNNING_JOB} per running job and the job cgroups' kept control files"
    );
    let checks = [
        ("open_fds", open_fds, config.max_open_fds, fds_what.as_str()),
        (
            "rss_bytes",
            p.rss_bytes,
            config.max_rss.bytes(),
            "resident memory (bytes)",
        ),
        (
            "threads",
            threads,
            config.max_threads,
            "threads beyond one per running job",
        ),
        (
            "extra_children",
            extra_children,
            config.max_extra_children,
            "child processes beyond running jobs",
        ),
    ];
    checks
        .into_iter()
        .filter(|(_, value, threshold, _)| value > threshold)
        .map(|(metric, value, threshold, what)| Warning {
            metric: metric.to_owned(),
            value,
            threshold,
            message: format!("{what}: {value} is over the threshold {threshold}"),
        })
        .collect()
}

/// The periodic half of `cleanup`: once the allocator holds more than `min_free` bytes it does not use
/// (after a burst — a connection flood, a large listing — glibc keeps freed pages in the middle of its
/// heaps), gives them back to the OS. Returns the free bytes it found, if it trimmed. Blocking; a few
/// milliseconds at most on a daemon's heap.
pub(crate) fn trim_free_memory(min_free: u64) -> Option<u64> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallinfo2 only reads the allocator's counters (glibc >= 2.33).
        let free = unsafe { libc::mallinfo2() }.fordblks as u64;
        if free > min_free {
            // SAFETY: as in `cleanup`.
            unsafe { libc::malloc_trim(0) };
            return Some(free);
        }
    }
    let _ = min_free;
    None
}

/// Gives memory the allocator holds but does not use back to the OS. Blocking.
pub(crate) fn cleanup() -> Result<Cleanup, aura_host::HostError> {
    let before = aura_host::process_snapshot()?;
    let mut actions = Vec::new();
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: glibc's malloc_trim only releases free memory at the top of the heaps and unused pages.
        let released = unsafe { libc::malloc_trim(0) };
        actions.push(format!(
            "malloc_trim: {}",
            if released == 1 {
                "memory returned to the OS"
            } else {
                "nothing to return"
            }
        ));
    }
    // Job processes are reaped through their pidfds as they exit; there is nothing else to reap, and the
    // janitor's quick pass does not exist yet.
    let after = aura_host::process_snapshot()?;
    Ok(Cleanup {
        before,
        after,
        actions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warnings_name_the_metric_and_both_numbers() {
        let p = aura_host::process_snapshot().expect("own process");
        let none = warnings(&DiagnosticsConfig::default(), &p, 0, 0);
        assert!(none.is_empty(), "{none:?}");
        let strict = DiagnosticsConfig {
            max_open_fds: 1,
            max_rss: aura_model::ByteSize(1),
            max_threads: 0,
            max_extra_children: 10,
        };
        let w = warnings(&strict, &p, 0, 0);
        let metrics: Vec<&str> = w.iter().map(|w| w.metric.as_str()).collect();
        assert_eq!(metrics, ["open_fds", "rss_bytes", "threads"]);
        assert!(
            w[0].message
                .starts_with("open file descriptors beyond 7 per running job and the job cgroups' kept control files: "),
            "{}",
            w[0].message
        );
        // Each running job has a launcher thread waiting for it: not counted against the threshold.
        let threads = DiagnosticsConfig {
            max_threads: p.threads - 1,
            ..DiagnosticsConfig::default()
        };
        assert_eq!(warnings(&threads, &p, 0, 0).len(), 1);
        assert!(warnings(&threads, &p, 1, 0).is_empty());
        // Likewise the fds each running job holds.
        let fds = DiagnosticsConfig {
            max_open_fds: p.open_fds - 1,
            ..DiagnosticsConfig::default()
        };
        assert_eq!(warnings(&fds, &p, 0, 0).len(), 1);
        assert!(warnings(&fds, &p, 1, 0).is_empty());
        // And the job cgroups' control files the supervisor keeps open.
        assert!(warnings(&fds, &p, 0, 1).is_empty());
    }

    #[test]
    fn cleanup_reports_before_and_after() {
        let c = cleanup().expect("cleanup");
        assert_eq!(c.before.pid, c.after.pid);
        assert!(!c.actions.is_empty());
    }
}

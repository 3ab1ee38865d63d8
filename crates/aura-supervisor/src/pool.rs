//! Reusing emptied job cgroups instead of a `mkdir` and an `rmdir` per job and backend. Creating a cgroup
//! populates a kernfs directory of control files (and, for the v1 memory controller, allocates a memcg
//! with per-CPU state); removing one tears that down again in a kworker. For trivial jobs that was a
//! large share of the daemon's work per job (see BENCHMARKS.md), while an emptied cgroup can be made as
//! good as new with one write and two reads.
//!
//! Only empty cgroups come back to the pool, and only where reuse keeps the accounting exact:
//! - v2 without the memory controller (membership, `cgroup.kill`, `cpu.stat`): `cpu.stat` is
//!   cumulative, so each job reads its baseline on acquire and reports deltas.
//! - v1 memory: on acquire the high-water mark is reset (`0` to `memory.max_usage_in_bytes` sets it to
//!   the current charge) and the charge left from earlier jobs is read as the baseline that the job's
//!   figures are taken from. A cgroup is taken back only if its leftover charge is within twice what the
//!   kernel batches per CPU anyway (`MEMCG_CHARGE_BATCH` pages each): the batch, plus as much again for
//!   kernel objects of the ended job still on their way out (freed after an RCU grace period; measured
//!   520–790 KiB after a trivial job on 2 CPUs, so a single batch rejected a fifth of them). One holding
//!   more (page cache of files its job wrote) is removed. What of the leftover is freed during the next
//!   job makes that job's figures smaller by as much: under 1 MiB per CPU.
//! - v2 with the memory controller is never reused: `memory.peak` can only be reset per open file
//!   (Linux 6.12), so those cgroups are created and removed per job as before.
//!
//! A cgroup that held per-job settings (a memory limit) or counters that never reset (OOM kills) is
//! never taken back, so an acquired cgroup is always as good as a fresh one; per-job settings are written
//! after acquire, in the launcher.
//!
//! A pooled cgroup keeps the control files read per job open (`CgroupDir`): up to 7 fds per pooled set
//! on the hybrid backend.
//!
//! Pooled cgroups are named `job-<n>`, so crash recovery (every `job-*` cgroup under the instance roots)
//! finds and kills them like any other job cgroup. Blocking; used from the launcher thread and the
//! blocking pool.

use crate::cgroup::{self, CgroupDir, ControlFile};
use crate::host::Layout;
use aura_model::Backend;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Pages the kernel charges to a memcg at once and keeps per CPU (`MEMCG_CHARGE_BATCH`).
const MEMCG_CHARGE_BATCH: u64 = 64;

/// What a job's counters started from in its (possibly reused) cgroups.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Baseline {
    pub cpu_user_usec: u64,
    pub cpu_system_usec: u64,
    /// v1 memory charge left by earlier jobs of a reused cgroup.
    pub memory: u64,
}

/// One job's cgroup directories (v2 and/or v1 memory, per backend).
#[derive(Debug)]
pub(crate) struct JobCgroups {
    pub v2: Option<Arc<CgroupDir>>,
    pub v1: Option<Arc<CgroupDir>>,
    /// Where the cumulative counters stood when the previous job ended, read then: an empty cgroup's
    /// CPU counters stand still, so the next job's baseline needs no new reads. (Its v1 charge can only
    /// shrink meanwhile, by reclaim of at most the pool's leftover allowance.)
    pub counters: Option<Baseline>,
}

impl JobCgroups {
    pub fn dirs(&self) -> impl Iterator<Item = &Arc<CgroupDir>> {
        self.v2.iter().chain(self.v1.iter())
    }

    /// Makes the cgroups ready for a new job and reads its baseline: resets the v1 memory high-water mark
    /// and reads the counters that keep counting across jobs.
    pub fn prepare(&self) -> io::Result<Baseline> {
        let mut base = Baseline::default();
        if let Some(v1) = &self.v1 {
            v1.write(ControlFile::V1MaxUsage, "0")?;
            if let Some(known) = self.counters {
                return Ok(known);
            }
            base.memory = v1.read_u64(ControlFile::V1Usage).unwrap_or(0);
        } else if let Some(known) = self.counters {
            return Ok(known);
        }
        if let Some((user, system)) = self.v2.as_deref().and_then(cgroup::job_cpu_usec) {
            base.cpu_user_usec = user;
            base.cpu_system_usec = system;
        }
        Ok(base)
    }

    /// Closes the kept control files (where nothing else holds the directory) and removes the
    /// directories; returns how many were removed.
    pub fn remove(self) -> u32 {
        let mut n = 0;
        for mut dir in self.v2.into_iter().chain(self.v1) {
            if let Some(dir) = Arc::get_mut(&mut dir) {
                dir.close_files();
            }
            match cgroup::rmdir(dir.path(), Duration::from_millis(500)) {
                Ok(()) => n += 1,
                Err(e) => {
                    tracing::warn!(cgroup = %dir.path().display(), error = %e, "could not remove job cgroup")
                }
            }
        }
        n
    }
}

/// Emptied job cgroups ready for the next job, owned by the supervisor.
#[derive(Debug)]
pub(crate) struct CgroupPool {
    v2_root: Option<PathBuf>,
    v1_root: Option<PathBuf>,
    /// Whether this backend's cgroups may be reused at all (see the module docs).
    reuse: bool,
    capacity: usize,
    /// The v1 charge a cgroup may hold to be reused: the kernel's own per-CPU batching.
    max_leftover: u64,
    // A std Mutex: held for a push or a pop, never across I/O.
    free: Mutex<Vec<JobCgroups>>,
    next: AtomicU64,
}

impl CgroupPool {
    pub fn new(layout: &Layout, capacity: usize) -> CgroupPool {
        let reuse = match layout.backend {
            Backend::CgroupV2 => !layout.v2_memory,
            Backend::Hybrid | Backend::CgroupV1 => true,
            Backend::ProcessGroup => false,
        };
        // Configured, not online CPUs: the kernel keeps a per-CPU charge cache for each possible one.
        // SAFETY: a plain sysconf query.
        let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_CONF) };
        let max_leftover = 2
            * MEMCG_CHARGE_BATCH
            * rustix::param::page_size() as u64
            * u64::try_from(cpus).unwrap_or(1).max(1);
        CgroupPool {
            v2_root: layout.v2_root.clone(),
            v1_root: layout.v1_root.clone(),
            reuse,
            capacity,
            max_leftover,
            free: Mutex::new(Vec::new()),
            next: AtomicU64::new(1),
        }
    }

    /// An empty cgroup set for a job (reused, or created), or `None` on the process-group backend.
    pub fn acquire(&self) -> Result<Option<JobCgroups>, (PathBuf, io::Error)> {
        if self.v2_root.is_none() && self.v1_root.is_none() {
            return Ok(None);
        }
        if let Some(reused) = crate::lock(&self.free).pop() {
            return Ok(Some(reused));
        }
        loop {
            let name = format!("job-{}", self.next.fetch_add(1, Ordering::Relaxed));
            let cgroups = JobCgroups {
                v2: self
                    .v2_root
                    .as_ref()
                    .map(|r| Arc::new(CgroupDir::new(r.join(&name)))),
                v1: self
                    .v1_root
                    .as_ref()
                    .map(|r| Arc::new(CgroupDir::new(r.join(&name)))),
                counters: None,
            };
            let mut created = Vec::new();
            let mut taken = false;
            for dir in cgroups.dirs() {
                let dir = dir.path();
                match std::fs::create_dir(dir) {
                    Ok(()) => created.push(dir.to_path_buf()),
                    // A name some other holder still uses (a leftover recovery did not remove): never
                    // share it, take the next one.
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                        taken = true;
                        break;
                    }
                    Err(e) => {
                        for d in &created {
                            let _ = cgroup::rmdir(d, Duration::from_millis(100));
                        }
                        return Err((dir.to_path_buf(), e));
                    }
                }
            }
            if !taken {
                return Ok(Some(cgroups));
            }
            for d in &created {
                let _ = cgroup::rmdir(d, Duration::from_millis(100));
            }
        }
    }

    /// Hands back the cgroups of a finished job. `reusable`: every process of the tree is known to be
    /// gone, and the job left no per-job setting (a memory limit) or never-resetting counter (an OOM kill)
    /// behind; `v1_leftover`: the v1 memory charge the job left. Anything not reusable is removed.
    pub fn release(&self, cgroups: JobCgroups, reusable: bool, v1_leftover: Option<u64>) {
        let clean = cgroups.v1.is_none() || v1_leftover.is_some_and(|c| c <= self.max_leftover);
        if self.reuse && reusable && clean {
            let mut free = crate::lock(&self.free);
            if free.len() < self.capacity {
                free.push(cgroups);
                return;
            }
        }
        cgroups.remove();
    }

    /// Removes every pooled cgroup (at shutdown).
    pub fn drain(&self) {
        let free = std::mem::take(&mut *crate::lock(&self.free));
        for cgroups in free {
            cgroups.remove();
        }
    }
}

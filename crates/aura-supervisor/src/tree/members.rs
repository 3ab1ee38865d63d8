//! Finding a tree's members and signalling or killing them: its cgroups, or on the fallback its process
//! group, the main process's subtree, members seen before and adopted orphans with its marker. Blocking.

use crate::cgroup::{self, CgroupDir, MemoryApi};
use crate::pool::{Baseline, CgroupPool, JobCgroups};
use crate::procfs::{self, ProcStat};
use crate::subreaper;
use aura_model::Backend;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Everything needed to find, signal and kill one job's processes. Cheap to clone; every method
/// blocks (cgroupfs, /proc), so call it from a blocking context.
#[derive(Clone, Debug)]
pub(crate) struct TreeRef {
    pub backend: Backend,
    /// The main process, also the process group id.
    pub pid: i32,
    pub start_ticks: u64,
    pub v2: Option<Arc<CgroupDir>>,
    pub v1: Option<Arc<CgroupDir>>,
    /// Process-group backend only: members and descendants seen so far with their start times, so that
    /// a process that left the group (setsid) while its parent was still alive is still reached.
    pub known: Arc<Mutex<Vec<(i32, u64)>>>,
    /// The value of `AURA_TREE` its processes carry (`subreaper`); `None` for what recovery rebuilds.
    pub marker: Option<Arc<str>>,
}

impl TreeRef {
    /// The cgroup holding the job's memory controller (v1 where the host has it, else v2), when the
    /// backend has one (`cgroup_memory`).
    pub fn memory_cgroup(&self, cgroup_memory: bool) -> Option<(&CgroupDir, MemoryApi)> {
        if !cgroup_memory {
            return None;
        }
        match (&self.v1, &self.v2) {
            (Some(v1), _) => Some((v1, MemoryApi::V1)),
            (None, Some(v2)) => Some((v2, MemoryApi::V2)),
            _ => None,
        }
    }

    /// The cgroup whose `cgroup.procs` defines membership (v2 when there is one).
    pub(super) fn membership_dir(&self) -> Option<&Path> {
        self.v2
            .as_deref()
            .or(self.v1.as_deref())
            .map(CgroupDir::path)
    }

    pub fn dirs(&self) -> Vec<PathBuf> {
        self.v2
            .iter()
            .chain(self.v1.iter())
            .map(|d| d.path().to_path_buf())
            .collect()
    }

    /// Process-group backend: the live processes of the group, of the main process (while it is alive and
    /// still the same process), of the members seen before that are still the same processes, and of
    /// the adopted children carrying the tree's marker — each with all its descendants (see `subreaper`
    /// for the rule and its limits).
    pub fn group_members(&self, snap: &[(i32, ProcStat)]) -> Vec<(i32, u64)> {
        let starts: std::collections::HashMap<i32, u64> =
            snap.iter().map(|(p, s)| (*p, s.start_ticks)).collect();
        let same = |&(pid, ticks): &(i32, u64)| starts.get(&pid) == Some(&ticks);
        let mut roots: Vec<i32> = snap
            .iter()
            .filter(|(_, s)| s.pgrp == self.pid)
            .map(|(p, _)| *p)
            .collect();
        if same(&(self.pid, self.start_ticks)) {
            roots.push(self.pid);
        }
        let known = crate::lock(&self.known).clone();
        roots.extend(known.iter().filter(|m| same(m)).map(|(p, _)| *p));
        if let Some(marker) = &self.marker {
            let adopted = subreaper::adopted_by(marker, self.start_ticks);
            roots.extend(adopted.iter().filter(|m| same(m)).map(|(p, _)| *p));
        }
        procfs::subtrees(snap, roots)
    }

    /// The tree's live processes now (zombies left out). `snap` is a `/proc` snapshot shared by the
    /// trees of one round, taken on first need (only trees without cgroups need one).
    pub fn members(&self, snap: &mut Option<Vec<(i32, ProcStat)>>) -> Vec<i32> {
        match self.membership_dir() {
            Some(dir) => cgroup::procs(dir)
                .into_iter()
                .filter(|&pid| procfs::stat(pid).is_some_and(|s| !s.is_zombie()))
                .collect(),
            None => {
                let snap = snap.get_or_insert_with(procfs::snapshot);
                self.group_members(snap)
                    .into_iter()
                    .map(|(p, _)| p)
                    .collect()
            }
        }
    }

    /// The tree's live processes now with their states (`/proc/PID/stat`'s `R`, `S`, `T`, …).
    pub fn members_with_state(&self) -> Vec<(i32, u8)> {
        match self.membership_dir() {
            Some(dir) => cgroup::procs(dir)
                .into_iter()
                .filter_map(|pid| procfs::stat(pid).map(|s| (pid, s)))
                .filter(|(_, s)| !s.is_zombie())
                .map(|(pid, s)| (pid, s.state))
                .collect(),
            None => {
                let snap = procfs::snapshot();
                let states: std::collections::HashMap<i32, u8> =
                    snap.iter().map(|(p, s)| (*p, s.state)).collect();
                self.group_members(&snap)
                    .into_iter()
                    .filter_map(|(p, _)| Some((p, *states.get(&p)?)))
                    .collect()
            }
        }
    }

    /// Sends `sig` to every process of the tree.
    pub fn signal(&self, sig: i32) {
        match self.membership_dir() {
            Some(dir) => {
                cgroup::signal_members(dir, sig);
            }
            None => {
                let members = self.group_members(&procfs::snapshot());
                // SAFETY: plain syscalls. The group id stays reserved while any member lives.
                unsafe { libc::killpg(self.pid, sig) };
                for (pid, _) in members {
                    // SAFETY: plain syscall; each member was seen with its start time just now.
                    unsafe { libc::kill(pid, sig) };
                }
            }
        }
    }

    /// SIGKILLs every process of the tree (one round; see `kill_and_wait`).
    pub fn kill(&self) {
        match (&self.v2, &self.v1) {
            (Some(v2), _) => {
                let v2 = v2.path();
                if let Err(e) = cgroup::v2_kill(v2) {
                    if e.kind() != std::io::ErrorKind::NotFound {
                        tracing::warn!(cgroup = %v2.display(), error = %e, "cgroup.kill failed; signalling members");
                        cgroup::signal_members(v2, libc::SIGKILL);
                    }
                }
            }
            (None, Some(v1)) => {
                cgroup::signal_members(v1.path(), libc::SIGKILL);
            }
            (None, None) => self.signal(libc::SIGKILL),
        }
    }

    pub fn is_empty(&self) -> bool {
        match (&self.v2, &self.v1) {
            (Some(v2), _) => !cgroup::v2_populated(v2),
            (None, Some(v1)) => cgroup::procs(v1.path()).is_empty(),
            (None, None) => {
                // Without cgroups: no process left in the group and none of the members seen outside it
                // still alive is decided without a scan of /proc (the common case once a job is over).
                let group_gone = rustix::process::Pid::from_raw(self.pid).map_or(true, |group| {
                    rustix::process::test_kill_process_group(group) == Err(rustix::io::Errno::SRCH)
                });
                let known_gone = || {
                    let known = crate::lock(&self.known).clone();
                    known.iter().all(|&(pid, ticks)| {
                        procfs::stat(pid).map_or(true, |s| s.start_ticks != ticks)
                    })
                };
                // Adopted orphans of the tree: one read of the daemon's adopted children (none, usually).
                let adopted = || {
                    self.marker
                        .as_deref()
                        .is_some_and(|m| subreaper::has_adopted(m, self.start_ticks))
                };
                if group_gone && known_gone() && !adopted() {
                    return true;
                }
                self.group_members(&procfs::snapshot()).is_empty()
            }
        }
    }

    /// Kills until the tree is empty (re-killing catches processes forked meanwhile), at most `bound`.
    pub fn kill_and_wait(&self, bound: Duration) -> bool {
        let deadline = Instant::now() + bound;
        loop {
            // The common case — a job whose main process exited and left nothing behind — costs one read.
            if self.is_empty() {
                return true;
            }
            self.kill();
            std::thread::sleep(Duration::from_millis(2));
            if self.is_empty() {
                return true;
            }
            if Instant::now() >= deadline {
                tracing::warn!(pid = self.pid, backend = %self.backend, "process tree not empty after kill wait");
                return false;
            }
            std::thread::sleep(Duration::from_millis(8));
        }
    }

    /// Hands the job cgroups to the pool: reused if `reusable` (every process known gone, no per-job
    /// settings or sticky counters) and clean, else removed. `v1_charge` and `cpu_usec` are what the
    /// caller (`TreeStats::settle`) has just read with the OOM counter: the charge decides whether a v1
    /// cgroup is clean (unread means not), and both are the next job's baseline, read no second time.
    pub fn release_cgroups(
        &self,
        pool: &CgroupPool,
        reusable: bool,
        v1_charge: Option<u64>,
        cpu_usec: Option<(u64, u64)>,
    ) {
        if self.v2.is_none() && self.v1.is_none() {
            return;
        }
        let mut cgroups = self.cgroups();
        if let (Some(charge), Some((user, system))) = (
            v1_charge.or(self.v1.is_none().then_some(0)),
            cpu_usec.or(self.v2.is_none().then_some((0, 0))),
        ) {
            cgroups.counters = Some(Baseline {
                cpu_user_usec: user,
                cpu_system_usec: system,
                memory: charge,
            });
        }
        pool.release(cgroups, reusable, v1_charge);
    }

    /// Removes the job cgroups; returns how many were removed.
    pub fn remove_dirs(self) -> u32 {
        JobCgroups {
            v2: self.v2,
            v1: self.v1,
            counters: None,
        }
        .remove()
    }

    /// The job's cgroup directories as the pool handles them.
    fn cgroups(&self) -> JobCgroups {
        JobCgroups {
            v2: self.v2.clone(),
            v1: self.v1.clone(),
            counters: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::procfs::stat_at as at;

    fn fallback_tree(known: Vec<(i32, u64)>) -> TreeRef {
        TreeRef {
            backend: Backend::ProcessGroup,
            pid: 10,
            start_ticks: 100,
            v2: None,
            v1: None,
            known: Arc::new(Mutex::new(known)),
            marker: None,
        }
    }

    #[test]
    fn fallback_members_are_the_group_the_main_subtree_and_members_seen_before() {
        let snap = vec![
            (10, at(1, 10, 100)),  // the main process
            (11, at(10, 10, 101)), // its child
            (12, at(11, 12, 102)), // setsid'd below it: another group, same subtree
            (20, at(1, 20, 103)),  // unrelated
            (21, at(1, 10, 104)),  // an orphan that stayed in the group
            (50, at(1, 50, 105)),  // seen before, now reparented and in its own group
            (51, at(50, 50, 106)), // its child, never seen
            (60, at(1, 60, 999)),  // a pid seen before, now another process
        ];
        let tree = fallback_tree(vec![(50, 105), (60, 107)]);
        let pids: Vec<i32> = tree.group_members(&snap).iter().map(|m| m.0).collect();
        assert_eq!(pids, vec![10, 11, 12, 21, 50, 51]);
    }

    #[test]
    fn a_reused_main_pid_brings_no_subtree() {
        // pid 10 now belongs to a process started later: its children are not the job's.
        let snap = vec![(10, at(1, 10, 555)), (11, at(10, 10, 556))];
        let tree = fallback_tree(Vec::new());
        // Only the group's members (the group id stays reserved while any member lives).
        let pids: Vec<i32> = tree.group_members(&snap).iter().map(|m| m.0).collect();
        assert_eq!(pids, vec![10, 11], "members of group 10 are still reached");
        let snap = vec![(10, at(1, 77, 555)), (11, at(10, 77, 556))];
        assert!(tree.group_members(&snap).is_empty());
    }

    #[test]
    fn a_tree_without_cgroups_has_no_memory_cgroup_and_no_dirs() {
        let tree = fallback_tree(Vec::new());
        assert!(tree.dirs().is_empty());
        assert!(tree.memory_cgroup(true).is_none());
        assert!(tree.membership_dir().is_none());
    }
}

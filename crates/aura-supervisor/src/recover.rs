//! Crash recovery: kill what a previous incarnation of this daemon instance left running. Job cgroups
//! outlive the daemon, so for cgroup backends every `job-*` cgroup under this instance's roots is
//! killed and removed, listed or not. Process-group trees are found from their recorded handles
//! (checked against the recorded start time, so a reused pid is never killed) and, recorded or not, by
//! the marker every job process carries (`subreaper`), whatever group or session it moved to.
//! Blocking.

use crate::cgroup::{self, CgroupDir};
use crate::host::Layout;
use crate::procfs;
use crate::subreaper;
use crate::tree::TreeRef;
use crate::RecoveryReport;
use aura_model::{Backend, TreeHandle};
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Who is recovering: the instance whose leftovers are killed, and the supervisor whose own running
/// trees are spared.
pub(crate) struct Recovering<'a> {
    pub layout: &'a Layout,
    pub instance: &'a str,
    pub owner: u64,
}

pub(crate) fn recover(
    who: &Recovering<'_>,
    leftovers: &[TreeHandle],
    bound: Duration,
) -> RecoveryReport {
    let layout = who.layout;
    let mut report = RecoveryReport::default();
    let mut killed: HashSet<i32> = HashSet::new();

    // 1. Job cgroups: every job-* dir under our roots, plus any listed in a handle (v2 first: cgroup.kill).
    let mut dirs: Vec<PathBuf> = Vec::new();
    for root in layout.v2_root.iter().chain(layout.v1_root.iter()) {
        dirs.extend(cgroup::job_dirs(root));
    }
    // A recorded dir outside our roots is another instance's (a copied data dir's records): never ours
    // to kill.
    let ours = |d: &PathBuf| {
        layout
            .v2_root
            .iter()
            .chain(layout.v1_root.iter())
            .any(|root| d.starts_with(root))
    };
    for h in leftovers {
        for d in &h.cgroups {
            if !ours(d) {
                tracing::warn!(cgroup = %d.display(), "a recorded job cgroup lies outside this instance's roots; left alone");
                continue;
            }
            if d.join("cgroup.procs").exists() && !dirs.contains(d) {
                dirs.push(d.clone());
            }
        }
    }
    dirs.sort_by_key(|d| !d.join("cgroup.kill").exists()); // v2 dirs first
    for dir in dirs {
        killed.extend(cgroup::procs(&dir));
        let is_v2 = dir.join("cgroup.kill").exists();
        let tree = TreeRef {
            backend: if is_v2 {
                Backend::CgroupV2
            } else {
                Backend::CgroupV1
            },
            pid: 0,
            start_ticks: 0,
            v2: is_v2.then(|| Arc::new(CgroupDir::new(dir.clone()))),
            v1: (!is_v2).then(|| Arc::new(CgroupDir::new(dir.clone()))),
            known: Arc::default(),
            marker: None,
        };
        tree.kill_and_wait(bound);
        report.removed_cgroups += tree.remove_dirs();
    }

    // 2. Process groups, verified by start time.
    for h in leftovers
        .iter()
        .filter(|h| h.backend == Backend::ProcessGroup)
    {
        let pgid = h.pid as i32;
        let snap = procfs::snapshot();
        let leader = snap.iter().find(|(p, _)| *p == pgid).map(|(_, s)| *s);
        let targets: Vec<(i32, u64)> = match leader {
            Some(l) if l.start_ticks == h.start_ticks => {
                let group = snap
                    .iter()
                    .filter(|(_, s)| s.pgrp == pgid)
                    .map(|(p, _)| *p)
                    .collect();
                procfs::subtrees(&snap, group)
            }
            Some(_) => {
                tracing::info!(
                    pid = pgid,
                    "recorded pid now belongs to another process; not killing it"
                );
                continue;
            }
            // Leader gone: members of its group that started no earlier than it did.
            None => {
                let group = snap
                    .iter()
                    .filter(|(_, s)| s.pgrp == pgid && s.start_ticks >= h.start_ticks)
                    .map(|(p, _)| *p)
                    .collect();
                procfs::subtrees(&snap, group)
            }
        };
        let tree = TreeRef {
            backend: Backend::ProcessGroup,
            pid: pgid,
            start_ticks: h.start_ticks,
            v2: None,
            v1: None,
            known: Arc::new(std::sync::Mutex::new(targets.clone())),
            marker: None,
        };
        killed.extend(targets.iter().map(|(p, _)| *p));
        if leader.is_some() || !targets.is_empty() {
            tree.kill_and_wait(bound);
        }
    }

    // 3. Marked processes of this instance, wherever they went (recorded handle or not, any backend: a
    // restart may have chosen another one). Each round re-reads /proc: a survivor may fork meanwhile.
    let deadline = Instant::now() + bound;
    loop {
        let survivors = subreaper::survivors(who.instance, who.owner);
        if survivors.is_empty() {
            break;
        }
        for (pid, ticks) in survivors {
            // Checked again just before the kill: the pid must still be the marked process.
            if procfs::stat(pid).is_some_and(|s| s.start_ticks == ticks) {
                if let Some(p) = rustix::process::Pid::from_raw(pid) {
                    // ESRCH: it ended between the check and the kill.
                    let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
                }
                killed.insert(pid);
            }
        }
        if Instant::now() >= deadline {
            tracing::warn!("marked processes of a previous daemon still alive after the kill wait");
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }

    // 4. If a leftover main process is our own child (the supervisor was restarted inside the same
    // process), reap it so it does not stay a zombie. Only exactly the recorded process.
    let me = std::process::id() as i32;
    for h in leftovers {
        let pid = h.pid as i32;
        let deadline = Instant::now() + Duration::from_secs(1);
        while let Some(s) = procfs::stat(pid) {
            if s.ppid != me || s.start_ticks != h.start_ticks {
                break;
            }
            if s.is_zombie() {
                if let Some(p) = rustix::process::Pid::from_raw(pid) {
                    let nohang = rustix::process::WaitOptions::NOHANG;
                    // Reaps exactly the recorded pid, a zombie child of ours: nothing to report.
                    let _ = rustix::process::waitpid(Some(p), nohang);
                }
                break;
            }
            if Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    report.killed_processes = killed.len() as u32;
    report
}

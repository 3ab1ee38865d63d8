//! The no-cgroup fallback's subreaper: this process becomes the `PR_SET_CHILD_SUBREAPER` of every job
//! tree, so an orphaned descendant of a job — `setsid`, double fork, whatever it did — is reparented to
//! the daemon instead of init. This module owns the tree marker every job carries
//! (`AURA_TREE=<instance>/<job id>/<attempt>/<daemon pid>.<n>`), the process-wide register of live
//! trees, finding the adopted children and attributing them to their tree, reaping every adopted child
//! that ends, killing adopted leftovers nobody owns, and finding marked survivors of a previous daemon.
//!
//! Attribution rule: a job process stays in the daemon's process tree for as long as the daemon lives
//! (the daemon is the subreaper of all of it). A process below a tree's main process, in its process
//! group, or seen as a member by an earlier sample belongs to that tree (lineage). An adopted child —
//! a child of the daemon's main thread, where the kernel hands orphans (to the subreaper's first live
//! thread); Aura forks its jobs only on launcher threads — belongs to the tree whose marker it carries
//! in its environment, if it started no earlier than that tree's main process; its descendants follow it.
//!
//! Limits: the marker is read from `/proc/PID/environ`, the environment the process was *executed*
//! with, so a process that `exec`s with a cleared environment (`env -i`) *and* was orphaned before any
//! sample saw it cannot be attributed. It is still adopted and reaped, and it is killed as soon as
//! every tree that was running when it started has ended (it can only descend from one of them) —
//! except where the daemon is a container's init (pid 1), which adopts every orphan of the container.
//! After a daemon SIGKILL its orphans are init's: recovery finds them by marker only.

use crate::procfs::{self, ProcStat};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// The environment variable that marks every process of a job tree.
pub const MARKER_VAR: &str = "AURA_TREE";

/// A tree running in this process: its marker's owner and its main process's start.
struct Live {
    /// The `Supervisor` that started it (its recovery never touches its own running trees).
    owner: u64,
    start_ticks: u64,
}

#[derive(Default)]
struct Register {
    /// Trees from their start until they are settled (empty), by marker.
    live: HashMap<Arc<str>, Live>,
    /// Every supervisor instance name ever started in this process: a marker of one of them whose tree is
    /// no longer live is a leftover.
    instances: Vec<String>,
}

fn register() -> &'static Mutex<Register> {
    static REGISTER: OnceLock<Mutex<Register>> = OnceLock::new();
    REGISTER.get_or_init(Mutex::default)
}

static ENABLED: AtomicBool = AtomicBool::new(false);
static NEXT_TREE: AtomicU64 = AtomicU64::new(1);
static NEXT_OWNER: AtomicU64 = AtomicU64::new(1);

/// Makes this process the subreaper of its descendants (process-wide, for good: a process that has had
/// job trees keeps adopting their orphans).
pub(crate) fn enable() -> std::io::Result<()> {
    let me = rustix::process::getpid();
    rustix::process::set_child_subreaper(Some(me))?;
    ENABLED.store(true, Ordering::SeqCst);
    Ok(())
}

/// Whether this process adopts its jobs' orphans.
pub(crate) fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// A new supervisor of `instance`: its owner id, for [`start`] and [`survivors`].
pub(crate) fn new_owner(instance: &str) -> u64 {
    let mut reg = crate::lock(register());
    if !reg.instances.iter().any(|i| i == instance) {
        reg.instances.push(instance.to_owned());
    }
    NEXT_OWNER.fetch_add(1, Ordering::Relaxed)
}

/// The marker value of a new tree: unique in this process, and across daemons (the pid).
pub(crate) fn marker(instance: &str, job_id: impl std::fmt::Display, attempt: u32) -> Arc<str> {
    let n = NEXT_TREE.fetch_add(1, Ordering::Relaxed);
    format!("{instance}/{job_id}/{attempt}/{}.{n}", std::process::id()).into()
}

/// The instance a marker names (before its first `/`).
fn instance_of(marker: &str) -> &str {
    marker.split('/').next().unwrap_or_default()
}

/// A tree has started (its main process exists): its marked processes are its own until [`ended`].
pub(crate) fn start(marker: &Arc<str>, owner: u64, start_ticks: u64) {
    crate::lock(register())
        .live
        .insert(marker.clone(), Live { owner, start_ticks });
}

/// A tree is settled: whatever still carries its marker is a leftover.
pub(crate) fn ended(marker: &str) {
    crate::lock(register()).live.remove(marker);
}

/// The value of [`MARKER_VAR`] in the environment `pid` was executed with; `None` if it has none or
/// cannot be read (gone, another user's without the rights, a kernel thread).
pub(crate) fn marker_of(pid: i32) -> Option<String> {
    procfs::env_var(pid, MARKER_VAR)
}

fn own_pgrp() -> i32 {
    rustix::process::getpgrp().as_raw_nonzero().get()
}

/// `/proc/self/task/<main thread>/children`: where the kernel puts this process's adopted orphans.
fn adoption_list() -> &'static str {
    static PATH: OnceLock<String> = OnceLock::new();
    PATH.get_or_init(|| {
        let me = std::process::id();
        format!("/proc/{me}/task/{me}/children")
    })
}

/// An adopted child of this process, alive.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Adoptee {
    pub pid: i32,
    pub stat: ProcStat,
}

/// This process's adopted children that are alive; those that have ended are reaped on the way. Children
/// in the daemon's own process group are its own forks (the main thread's), never touched. Blocking
/// (one small `/proc` read when there are none).
pub(crate) fn adoptees() -> Vec<Adoptee> {
    if !enabled() {
        return Vec::new();
    }
    let Ok(pids) = std::fs::read_to_string(adoption_list()) else {
        return Vec::new();
    };
    let own = own_pgrp();
    let me = std::process::id() as i32;
    let mut out = Vec::new();
    for pid in pids
        .split_ascii_whitespace()
        .filter_map(|p| p.parse::<i32>().ok())
    {
        let Some(stat) = procfs::stat(pid) else {
            continue;
        };
        if stat.ppid != me || stat.pgrp == own {
            continue;
        }
        if stat.is_zombie() {
            reap(pid);
        } else {
            out.push(Adoptee { pid, stat });
        }
    }
    out
}

/// Reaps an adopted child that has ended (only that pid: the launcher threads reap their own children).
fn reap(pid: i32) {
    if let Some(p) = rustix::process::Pid::from_raw(pid) {
        let _ = rustix::process::waitpid(Some(p), rustix::process::WaitOptions::NOHANG);
    }
}

/// The adopted children that belong to a tree: those carrying `marker` that started no earlier than its
/// main process (`start_ticks`).
pub(crate) fn adopted_by(marker: &str, start_ticks: u64) -> Vec<(i32, u64)> {
    adoptees()
        .into_iter()
        .filter(|a| a.stat.start_ticks >= start_ticks)
        .filter(|a| marker_of(a.pid).as_deref() == Some(marker))
        .map(|a| (a.pid, a.stat.start_ticks))
        .collect()
}

/// Whether a live process carries `marker` among the adopted children (the cheap emptiness check of a
/// tree whose group is gone).
pub(crate) fn has_adopted(marker: &str, start_ticks: u64) -> bool {
    !adopted_by(marker, start_ticks).is_empty()
}

/// The periodic round (the watcher thread's): reaps adopted children that ended, and SIGKILLs adopted
/// leftovers — a child carrying the marker of one of this process's trees that is no longer live, or one
/// without a live tree's marker that started before every live tree (so it descends from a tree that has
/// ended). Returns how many it killed.
pub(crate) fn tend() -> usize {
    let adopted = adoptees();
    if adopted.is_empty() {
        return 0;
    }
    let verdicts: Vec<(Adoptee, Option<String>)> =
        adopted.into_iter().map(|a| (a, marker_of(a.pid))).collect();
    let mut killed = 0;
    let init = std::process::id() == 1;
    let reg = crate::lock(register());
    let oldest_live = reg.live.values().map(|l| l.start_ticks).min();
    let leftovers: Vec<(Adoptee, Option<String>)> = verdicts
        .into_iter()
        .filter(|(a, marker)| match marker.as_deref() {
            Some(m) if reg.live.contains_key(m) => false,
            Some(m) if reg.instances.iter().any(|i| i == instance_of(m)) => true,
            // Unmarked, or marked by another daemon (a nested one): older than every live tree. Not as
            // a container's init (pid 1), which adopts every orphan of the container, not only its jobs'.
            _ => !init && oldest_live.map_or(true, |oldest| a.stat.start_ticks < oldest),
        })
        .collect();
    drop(reg);
    for (a, marker) in leftovers {
        // Still the same process (it is our unreaped child, so the pid cannot have been reused).
        tracing::warn!(
            pid = a.pid,
            tree = marker.as_deref().unwrap_or("unmarked"),
            "killing an adopted process whose job tree has ended"
        );
        let pid = rustix::process::Pid::from_raw(a.pid);
        if pid.is_some_and(|p| {
            rustix::process::kill_process(p, rustix::process::Signal::KILL).is_ok()
        }) {
            killed += 1;
        }
    }
    killed
}

/// After a daemon crash: every process on the host carrying a marker of `instance` that is not one of
/// `owner`'s live trees (so left by an earlier daemon of this instance). Blocking: reads every process's
/// environment.
pub(crate) fn survivors(instance: &str, owner: u64) -> Vec<(i32, u64)> {
    let prefix = format!("{instance}/");
    let reg_live: Vec<Arc<str>> = crate::lock(register())
        .live
        .iter()
        .filter(|(_, l)| l.owner == owner)
        .map(|(m, _)| m.clone())
        .collect();
    procfs::all_pids()
        .into_iter()
        .filter_map(|pid| {
            // Kernel threads (kthreadd, pid 2, and its children) have no environment to read.
            let stat = procfs::stat(pid).filter(|s| !s.is_zombie() && pid != 2 && s.ppid != 2)?;
            let marker = marker_of(pid)?;
            (marker.starts_with(&prefix) && !reg_live.iter().any(|m| **m == *marker))
                .then_some((pid, stat.start_ticks))
        })
        .collect()
}

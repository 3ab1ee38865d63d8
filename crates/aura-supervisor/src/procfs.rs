//! Small, allocation-light readers of `/proc`: a process's stat line (parent, group, state, CPU, start
//! time), its resident memory, and the list of all pids. Blocking: call from the launcher thread, the
//! sampler thread or `spawn_blocking`, never from an async worker.

use std::fs;
use std::sync::OnceLock;

/// The fields of `/proc/PID/stat` the supervisor uses.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ProcStat {
    pub state: u8,
    pub ppid: i32,
    pub pgrp: i32,
    /// User and system CPU in clock ticks.
    pub utime: u64,
    pub stime: u64,
    /// Start time in clock ticks since boot (field 22).
    pub start_ticks: u64,
}

impl ProcStat {
    pub fn is_zombie(&self) -> bool {
        self.state == b'Z' || self.state == b'X'
    }
}

/// Parses `/proc/PID/stat`; `None` if the process is gone.
pub(crate) fn stat(pid: i32) -> Option<ProcStat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

/// The one `/proc/PID/stat` parser of Aura is `aura_host`'s; this keeps the fields the supervisor uses.
pub(crate) fn parse_stat(text: &str) -> Option<ProcStat> {
    let s = aura_host::procfs::parse_pid_stat(text).ok()?;
    Some(ProcStat {
        state: s.state,
        ppid: i32::try_from(s.ppid).ok()?,
        pgrp: s.pgrp,
        utime: s.utime,
        stime: s.stime,
        start_ticks: s.starttime,
    })
}

/// Resident set size in bytes (`/proc/PID/statm` field 2 × page size).
pub(crate) fn resident_bytes(pid: i32) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = text.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * page_size())
}

/// The value of `name` in the environment `pid` was executed with (`/proc/PID/environ`: what `execve`
/// was given, not later `setenv`s). `None` if unset or unreadable (gone, no rights, a kernel thread).
/// The environment may hold a job's secrets: nothing but the one value leaves this function.
pub(crate) fn env_var(pid: i32, name: &str) -> Option<String> {
    let path = format!("/proc/{pid}/environ");
    let mut environ = fs::read(&path).ok()?;
    // A process inside `execve` shows an empty environment for a few microseconds (its new memory has
    // none yet): look again before taking it for one without the variable.
    for _ in 0..5 {
        if !environ.is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_micros(200));
        environ = fs::read(&path).ok()?;
    }
    find_env(&environ, name)
}

/// The first `name=` entry of a NUL-separated environment block decides, as `getenv` would read it; a
/// value that is not UTF-8 is none.
pub(crate) fn find_env(environ: &[u8], name: &str) -> Option<String> {
    let value = environ
        .split(|&b| b == 0)
        .find_map(|entry| entry.strip_prefix(name.as_bytes())?.strip_prefix(b"="))?;
    String::from_utf8(value.to_vec()).ok()
}

/// Every numeric entry of `/proc`.
pub(crate) fn all_pids() -> Vec<i32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .collect()
}

pub(crate) fn page_size() -> u64 {
    static PAGE: OnceLock<u64> = OnceLock::new();
    *PAGE.get_or_init(|| rustix::param::page_size() as u64)
}

pub(crate) fn ticks_per_second() -> u64 {
    static TICKS: OnceLock<u64> = OnceLock::new();
    *TICKS.get_or_init(|| rustix::param::clock_ticks_per_second().max(1))
}

/// Now on the boot clock, in the clock ticks `/proc/PID/stat` gives a process's start time in (its
/// `starttime` is the boot-clock time of its creation divided down to ticks).
pub(crate) fn boot_ticks() -> Option<u64> {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
    let nanos =
        u64::try_from(now.tv_sec).ok()? * 1_000_000_000 + u64::try_from(now.tv_nsec).ok()?;
    Some(nanos / (1_000_000_000 / ticks_per_second()))
}

/// A snapshot of every live (non-zombie) process: `(pid, stat)`. Used by the process-group backend and
/// by recovery to find group members and descendants.
pub(crate) fn snapshot() -> Vec<(i32, ProcStat)> {
    all_pids()
        .into_iter()
        .filter_map(|pid| stat(pid).map(|s| (pid, s)))
        .filter(|(_, s)| !s.is_zombie())
        .collect()
}

/// `roots` (those in `snap`) and all their descendants in `snap`, following ppid links: `(pid, start
/// ticks)`, sorted, each once.
pub(crate) fn subtrees(snap: &[(i32, ProcStat)], roots: Vec<i32>) -> Vec<(i32, u64)> {
    let mut children: std::collections::HashMap<i32, Vec<(i32, u64)>> = Default::default();
    let mut starts: std::collections::HashMap<i32, u64> = Default::default();
    for (pid, s) in snap {
        children
            .entry(s.ppid)
            .or_default()
            .push((*pid, s.start_ticks));
        starts.insert(*pid, s.start_ticks);
    }
    let mut seen: std::collections::HashSet<i32> = Default::default();
    let mut out = Vec::new();
    let mut frontier: Vec<(i32, u64)> = roots
        .into_iter()
        .filter_map(|p| Some((p, *starts.get(&p)?)))
        .collect();
    while let Some((pid, ticks)) = frontier.pop() {
        if !seen.insert(pid) {
            continue;
        }
        out.push((pid, ticks));
        if let Some(kids) = children.get(&pid) {
            frontier.extend(kids.iter().copied());
        }
    }
    out.sort_unstable();
    out
}

/// A sleeping process with this parent, group and start, for tests of what reads snapshots.
#[cfg(test)]
pub(crate) fn stat_at(ppid: i32, pgrp: i32, start_ticks: u64) -> ProcStat {
    ProcStat {
        state: b'S',
        ppid,
        pgrp,
        utime: 0,
        stime: 0,
        start_ticks,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_names() {
        let line = "1234 (a) b (c)) S 1 1234 1234 0 -1 4194304 100 0 0 0 7 3 0 0 20 0 1 0 98765 1000 50 18446744073709551615";
        let s = parse_stat(line).unwrap();
        assert_eq!(s.state, b'S');
        assert_eq!(s.ppid, 1);
        assert_eq!(s.pgrp, 1234);
        assert_eq!(s.utime, 7);
        assert_eq!(s.stime, 3);
        assert_eq!(s.start_ticks, 98765);
    }

    #[test]
    fn finds_one_variable_in_an_environment_block() {
        let block = b"AURA_TREE_X=no\0PATH=/bin\0AURA_TREE=i/1/1/9.2\0AURA_TREE=second\0";
        assert_eq!(find_env(b"A=\xff\0A=later", "A"), None);
        assert_eq!(find_env(block, "AURA_TREE").as_deref(), Some("i/1/1/9.2"));
        assert_eq!(find_env(block, "PATH").as_deref(), Some("/bin"));
        assert_eq!(find_env(block, "AURA"), None);
        assert_eq!(find_env(b"", "PATH"), None);
        assert_eq!(find_env(b"PATH", "PATH"), None);
    }

    use super::stat_at as at;

    #[test]
    fn subtrees_follow_parents_from_every_root_once() {
        // 10 ─ 11 ─ 12 (setsid'd: another group)   20 ─ 21   30 (unrelated)   40 (ppid loop, defensive)
        let snap = vec![
            (10, at(1, 10, 100)),
            (11, at(10, 10, 101)),
            (12, at(11, 12, 102)),
            (20, at(1, 20, 103)),
            (21, at(20, 20, 104)),
            (30, at(1, 30, 105)),
            (40, at(40, 40, 106)),
        ];
        assert_eq!(
            subtrees(&snap, vec![10, 21, 11, 99]),
            vec![(10, 100), (11, 101), (12, 102), (21, 104)]
        );
        assert_eq!(subtrees(&snap, vec![40]), vec![(40, 106)]);
        assert!(subtrees(&snap, vec![]).is_empty());
    }

    #[test]
    fn reads_own_stat() {
        let me = std::process::id() as i32;
        let s = stat(me).unwrap();
        assert!(s.start_ticks > 0);
        assert!(resident_bytes(me).unwrap() > 0);
    }
}

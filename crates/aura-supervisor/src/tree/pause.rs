//! Pausing and resuming a tree: the cgroup v2 freezer where the tree has a v2 cgroup (`cgroup.freeze`,
//! confirmed by `cgroup.events`), else SIGSTOP/SIGCONT rounds over its members until every one is seen
//! stopped (or running again). Blocking.
//!
//! The signal fallback (cgroup v1, process groups) is weaker than the freezer: a process that escaped
//! the tree's lineage beyond what `TreeRef` finds is not stopped, the job's own processes see the stop
//! (a parent is told of a stopped child by SIGCHLD, and `waitpid(WUNTRACED)` reports it), and a job
//! that stops or continues its own processes can interfere. The freezer is invisible to the job.

use super::stats::TreeStats;
use super::TreeRef;
use std::io;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// How long a pause or resume may take before it is given up: a task in uninterruptible sleep (a hung
/// NFS read, say) cannot freeze or stop until it leaves it.
const BOUND: Duration = Duration::from_secs(5);

impl TreeStats {
    /// Freezes the whole tree and returns once it is frozen (how long that took). Already paused, or
    /// ended: nothing to do (`Duration::ZERO`). Not frozen within `BOUND`: the tree is let run again
    /// and the error says so.
    pub(super) fn pause(&self) -> io::Result<Duration> {
        let started = Instant::now();
        if self.paused.load(Ordering::SeqCst) {
            return Ok(Duration::ZERO);
        }
        if let Some(v2) = self.tree.v2.as_deref() {
            let dir = v2.path();
            let wrote = self.while_live(|| {
                let wrote = write_freeze(dir, true);
                if wrote.is_ok() {
                    // Before the lock is let go: a conclusion from now on thaws the cgroup.
                    self.paused.store(true, Ordering::SeqCst);
                }
                wrote
            });
            match wrote {
                None => return Ok(Duration::ZERO),
                Some(Ok(())) => {
                    return match self.wait_frozen(dir, true) {
                        Ok(()) => Ok(started.elapsed()),
                        Err(e) => {
                            // Under the lock, or not at all: a tree that ended meanwhile is thawed by
                            // its conclusion, which must still see it paused.
                            self.while_live(|| {
                                if write_freeze(dir, false).is_ok() {
                                    self.paused.store(false, Ordering::SeqCst);
                                }
                            });
                            Err(e)
                        }
                    };
                }
                // A kernel before 5.2 has no v2 freezer: signals, as on the other backends.
                Some(Err(e)) if e.kind() == io::ErrorKind::NotFound => {}
                Some(Err(e)) => return Err(e),
            }
        }
        match self.signal_rounds(libc::SIGSTOP) {
            Ok(()) => {
                self.paused.store(true, Ordering::SeqCst);
                Ok(started.elapsed())
            }
            Err(e) => {
                // Half stopped is worse than not paused at all.
                if let Err(cont) = self.signal_rounds(libc::SIGCONT) {
                    tracing::warn!(pid = self.tree.pid, error = %cont, "could not continue a tree whose pause failed");
                }
                Err(e)
            }
        }
    }

    /// Lets a paused tree run again and returns once it runs (how long that took). Not paused, or
    /// ended: nothing to do.
    pub(super) fn resume(&self) -> io::Result<Duration> {
        let started = Instant::now();
        if !self.paused.load(Ordering::SeqCst) {
            return Ok(Duration::ZERO);
        }
        if let Some(v2) = self.tree.v2.as_deref() {
            let dir = v2.path();
            match self.while_live(|| write_freeze(dir, false)) {
                // Ended: its conclusion thaws the cgroup (and must still see it paused to do so).
                None => return Ok(Duration::ZERO),
                Some(Ok(())) => {
                    self.wait_frozen(dir, false)?;
                    self.paused.store(false, Ordering::SeqCst);
                    return Ok(started.elapsed());
                }
                // Paused by signals (no v2 freezer).
                Some(Err(e)) if e.kind() == io::ErrorKind::NotFound => {}
                Some(Err(e)) => return Err(e),
            }
        }
        self.signal_rounds(libc::SIGCONT)?;
        self.paused.store(false, Ordering::SeqCst);
        Ok(started.elapsed())
    }

    /// Whether the tree is paused now: its main process has not exited (killed, say) either.
    pub(super) fn is_paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst) && self.exit().is_none() && !self.has_ended()
    }

    /// The conclusion of a tree that was left paused: thaws its (empty) v2 cgroup so the next job in it
    /// can run; whether it may be reused.
    pub(super) fn thaw_for_reuse(&self) -> bool {
        let Some(v2) = self.tree.v2.as_deref() else {
            return true;
        };
        match write_freeze(v2.path(), false) {
            Ok(()) => true,
            // Paused by signals: nothing was frozen.
            Err(e) if e.kind() == io::ErrorKind::NotFound => true,
            Err(e) => {
                tracing::warn!(cgroup = %v2.path().display(), error = %e, "could not thaw the cgroup of a tree killed while paused; not reusing it");
                false
            }
        }
    }

    /// Polls `cgroup.events` until `frozen` is `want` (the freezer reports it once every task has
    /// stopped in the kernel, or, thawing, at once). A tree that ends meanwhile counts as done: its
    /// conclusion thaws the cgroup itself.
    fn wait_frozen(&self, dir: &Path, want: bool) -> io::Result<()> {
        let deadline = Instant::now() + BOUND;
        let mut nap = Duration::from_micros(200);
        loop {
            let frozen = crate::cgroup::keyed(&dir.join("cgroup.events"), ["frozen"]);
            match frozen {
                Some([f]) if (f != 0) == want => return Ok(()),
                _ if self.has_ended() => return Ok(()),
                None if !dir.exists() => return Ok(()),
                _ => {}
            }
            if Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "{} did not report `frozen {}` within {BOUND:?} (a process in uninterruptible sleep?)",
                        dir.join("cgroup.events").display(),
                        u8::from(want)
                    ),
                ));
            }
            std::thread::sleep(nap);
            nap = (nap * 2).min(Duration::from_millis(10));
        }
    }

    /// Sends `sig` (SIGSTOP or SIGCONT) to every member not yet in the wanted state, in rounds, until a
    /// fresh look finds every member stopped (SIGSTOP) or none stopped (SIGCONT). A process forked
    /// between a round's look and its signals is found by the next round; once every member is stopped
    /// none can fork, so a round that finds them all stopped finds the whole tree. Bounded by `BOUND`.
    fn signal_rounds(&self, sig: i32) -> io::Result<()> {
        let stopping = sig == libc::SIGSTOP;
        let deadline = Instant::now() + BOUND;
        let mut nap = Duration::from_micros(200);
        loop {
            let left: Vec<i32> = self
                .tree
                .members_with_state()
                .into_iter()
                .filter(|&(_, state)| is_stopped(state) != stopping)
                .map(|(pid, _)| pid)
                .collect();
            if left.is_empty() || self.has_ended() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "{} of the tree's processes (pids {left:?}) still {} after {BOUND:?}",
                        left.len(),
                        if stopping { "running" } else { "stopped" }
                    ),
                ));
            }
            self.while_live(|| self.tree.signal_pids(&left, sig));
            std::thread::sleep(nap);
            nap = (nap * 2).min(Duration::from_millis(10));
        }
    }
}

impl TreeRef {
    /// Sends `sig` to `pids` (members just found) and, without cgroups, to the tree's process group.
    fn signal_pids(&self, pids: &[i32], sig: i32) {
        if self.membership_dir().is_none() {
            // SAFETY: plain syscall. The group id stays reserved while any member lives.
            unsafe { libc::killpg(self.pid, sig) };
        }
        for &pid in pids {
            // SAFETY: plain syscall on a member found just now.
            unsafe { libc::kill(pid, sig) };
        }
    }
}

/// Job control stop (`T`) or a tracer's stop (`t`): either way it runs no code.
fn is_stopped(state: u8) -> bool {
    state == b'T' || state == b't'
}

fn write_freeze(dir: &Path, frozen: bool) -> io::Result<()> {
    std::fs::write(dir.join("cgroup.freeze"), if frozen { "1" } else { "0" })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stopped_states_are_job_control_and_tracing_stops() {
        assert!(is_stopped(b'T') && is_stopped(b't'));
        for running in [b'R', b'S', b'D', b'I'] {
            assert!(!is_stopped(running));
        }
    }
}

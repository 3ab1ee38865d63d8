//! The watcher thread: it samples the running trees and captures every job's stdout and stderr. A job's
//! main process is waited for and reaped by the launcher thread that started it (`Watcher::exited` then
//! concludes the tree on that thread); the watcher reaps only trees without a pidfd (kernels before 5.3),
//! by polling.
//!
//! Capture: each job's pipes sit in the watcher's epoll set, and each readable pipe is drained into its
//! log files on this thread (`aura_logs::Capture`, at most `LOG_BUDGET` bytes a turn, so a chatty job
//! cannot hold up the others). At the main process's exit the reaping launcher thread ends the captures
//! itself (`end_captures`; the daemon held the pipes' write ends until then, so the exit woke nobody
//! here). A capture still open `LOG_LINGER` after its tree settled (a process out of the backend's reach
//! holds the pipe) is given up, so that nobody waiting for a tree's captures waits longer than that.
//!
//! Sampling: every `sample_interval` it reads current memory, process count and CPU of every tree, and
//! every `watch_interval` the trees with a memory limit (watchdog and OOM checks). Registering a tree
//! costs no wake-up, except where its first figures need a `/proc` sample (no memory cgroup): then it is
//! sampled at once, alone.

use crate::tree::{self, Ending, Settling, TreeStats};
use aura_logs::Capture;
use rustix::event::{epoll, eventfd, EventfdFlags, Timespec};
use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The child's side of a job's output pipes: the daemon's copies, closed once the job's main process has
/// exited (`Watcher::end_captures`; or at once where nobody waits for it), so that the exit itself wakes
/// no capture.
pub(crate) struct StdioEnds {
    _stdout: OwnedFd,
    _stderr: OwnedFd,
    _progress: Option<OwnedFd>,
}

impl StdioEnds {
    pub fn new(stdout: OwnedFd, stderr: OwnedFd, progress: Option<OwnedFd>) -> StdioEnds {
        StdioEnds {
            _stdout: stdout,
            _stderr: stderr,
            _progress: progress,
        }
    }
}

/// The epoll key of the wake-up eventfd; trees get keys from 1 on.
const WAKE_KEY: u64 = 0;
/// Bytes drained from one pipe per turn: a stream that keeps its pipe full cannot starve the others.
const LOG_BUDGET: usize = 256 * 1024;
/// How long a settled tree's captures may stay open before they are given up.
const LOG_LINGER: Duration = Duration::from_secs(1);
/// How often trees without a pidfd (kernels before 5.3) are polled with `wait4`.
const POLL_WITHOUT_PIDFD: Duration = Duration::from_millis(20);

/// What the watcher thread needs besides its registry.
pub(crate) struct Settings {
    pub sample_interval: Duration,
    pub watch_interval: Duration,
    /// Where concluded trees' cgroups and working directories go; its runtime takes the slow end of a
    /// tree that outlived its main process (bounded by `kill_wait`, but it must not hold up every other
    /// tree's exit).
    pub ending: Arc<Ending>,
}

struct Watched {
    stats: Arc<TreeStats>,
    /// Shared with the `RunningTree`, which signals through it; `None` where pidfd_open failed (the tree
    /// is then polled here). With one, the launcher thread that started the tree reaps it.
    pidfd: Option<Arc<OwnedFd>>,
}

/// The watched trees, with running counts of those that need sampling between full rounds (a memory
/// limit) and of those without a pidfd (polled), so that no wake-up scans the whole registry to know.
#[derive(Default)]
struct Trees {
    map: HashMap<u64, Watched>,
    watched: usize,
    polled: usize,
}

impl Trees {
    fn insert(&mut self, key: u64, tree: Watched) {
        self.watched += usize::from(tree.stats.watched());
        self.polled += usize::from(tree.pidfd.is_none());
        if let Some(old) = self.map.insert(key, tree) {
            self.forget(&old);
        }
    }

    fn remove(&mut self, key: u64) -> Option<Watched> {
        let tree = self.map.remove(&key)?;
        self.forget(&tree);
        Some(tree)
    }

    fn forget(&mut self, tree: &Watched) {
        self.watched -= usize::from(tree.stats.watched());
        self.polled -= usize::from(tree.pidfd.is_none());
    }
}

/// One captured stream of a tree.
struct Logged {
    capture: Capture,
    stats: Arc<TreeStats>,
}

#[derive(Default)]
struct Inbox {
    stop: bool,
    /// Trees to sample at once (their first figures need a `/proc` sample).
    sample: Vec<u64>,
    /// Settled trees whose captures were still open: given up after `LOG_LINGER`.
    settled: Vec<Arc<TreeStats>>,
}

struct Shared {
    epoll: OwnedFd,
    wake: OwnedFd,
    // Plain Mutexes: held for a map or vector operation, never across I/O.
    trees: Mutex<Trees>,
    logs: Mutex<HashMap<u64, Logged>>,
    inbox: Mutex<Inbox>,
    next_key: AtomicU64,
    ending: Arc<Ending>,
}

#[derive(Clone)]
pub(crate) struct Watcher {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Watcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Watcher")
    }
}

impl Watcher {
    pub fn start(settings: Settings) -> std::io::Result<(Watcher, std::thread::JoinHandle<()>)> {
        let epoll = epoll::create(epoll::CreateFlags::CLOEXEC)?;
        let wake = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?;
        watch_fd(&epoll, &wake, WAKE_KEY)?;
        let shared = Arc::new(Shared {
            epoll,
            wake,
            trees: Mutex::new(Trees::default()),
            logs: Mutex::new(HashMap::new()),
            inbox: Mutex::new(Inbox::default()),
            next_key: AtomicU64::new(WAKE_KEY + 1),
            ending: settings.ending.clone(),
        });
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("aura-watcher".into())
            .spawn(move || run(&thread_shared, &settings))?;
        Ok((Watcher { shared }, thread))
    }

    /// Watches a just-started tree: `captures` (its stdout and stderr) are drained as they fill, and it is
    /// sampled. With a `pidfd` the caller waits for its main process and calls `exited` with the returned
    /// key; without one the watcher polls it. `sample_now`: take its first sample at once (costs a
    /// wake-up; only where the launcher could not read its start figures).
    pub fn register(
        &self,
        stats: Arc<TreeStats>,
        pidfd: Option<Arc<OwnedFd>>,
        sample_now: bool,
        captures: Vec<Capture>,
    ) -> u64 {
        stats.logs_open(captures.len());
        for capture in captures {
            self.watch_log(capture, &stats);
        }
        let key = self.shared.next_key.fetch_add(1, Ordering::Relaxed);
        let polled = pidfd.is_none();
        crate::lock(&self.shared.trees).insert(key, Watched { stats, pidfd });
        if sample_now || polled {
            crate::lock(&self.shared.inbox).sample.push(key);
            wake(&self.shared);
        }
        key
    }

    /// The main process of `stats`' tree has exited (not reaped yet): closes the daemon's copies of its
    /// pipes' write ends (`write_ends`) and, where nothing else holds a pipe any more, drains and ends the
    /// capture on the calling thread — so that a job's exit wakes no thread but the one that reaps it.
    /// A capture another process still writes to (or one this thread is draining right now) stays with
    /// the watcher. Call before `exited`, so that the tree settles with its captures done.
    pub fn end_captures(&self, stats: &Arc<TreeStats>, write_ends: StdioEnds) {
        let taken = take_logs(&self.shared, stats);
        for (_, logged) in &taken {
            let _ = epoll::delete(&self.shared.epoll, logged.capture.pipe());
        }
        drop(write_ends);
        for (key, logged) in taken {
            // More than a turn's budget, or a writer left (a process that escaped the tree's reach): the
            // watcher goes on with it.
            drain_or_keep(&self.shared, key, logged, false);
        }
    }

    /// The main process of tree `key` has exited: reaps it and concludes it on the calling thread. The
    /// rest of the conclusion of a tree found empty is returned, its slot already free: `run` it after
    /// starting what that slot allows (see `TreeStats::conclude`).
    #[must_use = "the tree's owner hears of its end when the returned Settling runs"]
    pub fn exited(&self, key: u64) -> Option<Settling<impl FnOnce(&Arc<TreeStats>)>> {
        conclude(&self.shared, &self.shared.ending, key)
    }

    fn watch_log(&self, capture: Capture, stats: &Arc<TreeStats>) {
        let key = self.shared.next_key.fetch_add(1, Ordering::Relaxed);
        let stats = stats.clone();
        watch_logged(&self.shared, key, Logged { capture, stats });
    }

    /// Every tree watched now (started and not yet concluded).
    pub fn trees(&self) -> Vec<Arc<TreeStats>> {
        crate::lock(&self.shared.trees)
            .map
            .values()
            .map(|w| w.stats.clone())
            .collect()
    }

    /// SIGKILLs the main process of every tree a launcher thread waits for (shutdown: that thread must
    /// be able to end).
    pub fn kill_waited_for(&self) {
        let trees: Vec<(Arc<TreeStats>, Arc<OwnedFd>)> = crate::lock(&self.shared.trees)
            .map
            .values()
            .filter_map(|w| Some((w.stats.clone(), w.pidfd.clone()?)))
            .collect();
        for (stats, pidfd) in trees {
            tree::kill_main(&stats, Some(&pidfd));
        }
    }

    /// Asks the thread to stop; it ends every capture still open and returns after its current round.
    pub fn stop(&self) {
        crate::lock(&self.shared.inbox).stop = true;
        wake(&self.shared);
    }
}

fn wake(shared: &Shared) {
    if let Err(e) = rustix::io::write(&shared.wake, &1u64.to_ne_bytes()) {
        // EAGAIN: the counter is saturated, so the thread is woken anyway.
        if e != rustix::io::Errno::AGAIN {
            tracing::error!(error = %e, "cannot wake the watcher thread");
        }
    }
}

/// Adds `fd` to the epoll set, reported readable under `key`.
fn watch_fd(epoll: &OwnedFd, fd: impl rustix::fd::AsFd, key: u64) -> rustix::io::Result<()> {
    epoll::add(
        epoll,
        fd,
        epoll::EventData::new_u64(key),
        epoll::EventFlags::IN,
    )
}

fn run(shared: &Arc<Shared>, settings: &Settings) {
    let mut events: Vec<epoll::Event> = Vec::with_capacity(64);
    // Settled trees whose captures were still open, with when to give them up (oldest first).
    let mut lingering: VecDeque<(Instant, Arc<TreeStats>)> = VecDeque::new();
    let mut next_full = Instant::now() + settings.sample_interval;
    let mut next_watch = Instant::now() + settings.watch_interval;
    loop {
        let (watching, polling) = {
            let trees = crate::lock(&shared.trees);
            (trees.watched > 0, trees.polled > 0)
        };
        let now = Instant::now();
        let mut wake_at = next_full;
        if watching {
            wake_at = wake_at.min(next_watch);
        }
        if polling {
            wake_at = wake_at.min(now + POLL_WITHOUT_PIDFD);
        }
        if let Some((deadline, _)) = lingering.front() {
            wake_at = wake_at.min(*deadline);
        }
        let timeout = wake_at.saturating_duration_since(now);
        let timeout = Timespec {
            tv_sec: timeout.as_secs() as _,
            tv_nsec: timeout.subsec_nanos() as _,
        };
        events.clear();
        match epoll::wait(
            &shared.epoll,
            rustix::buffer::spare_capacity(&mut events),
            Some(&timeout),
        ) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => {
                tracing::error!(error = %e, "epoll_wait failed in the watcher thread");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        }
        for event in &events {
            match event.data.u64() {
                WAKE_KEY => {
                    let mut counter = [0u8; 8];
                    let _ = rustix::io::read(&shared.wake, &mut counter);
                }
                key => drain_log(shared, key),
            }
        }
        let inbox = std::mem::take(&mut *crate::lock(&shared.inbox));
        if inbox.stop {
            break;
        }
        let now = Instant::now();
        lingering.extend(inbox.settled.into_iter().map(|t| (now + LOG_LINGER, t)));
        while lingering
            .front()
            .is_some_and(|(deadline, _)| *deadline <= now)
        {
            if let Some((_, stats)) = lingering.pop_front() {
                abandon_logs(shared, &stats);
            }
        }
        if polling {
            let unwatched: Vec<u64> = crate::lock(&shared.trees)
                .map
                .iter()
                .filter(|(_, w)| w.pidfd.is_none())
                .map(|(k, _)| *k)
                .collect();
            for key in unwatched {
                // Nothing waits for this slot on the watcher thread: the rest of the conclusion runs now.
                if let Some(settling) = conclude(shared, &settings.ending, key) {
                    settling.run();
                }
            }
        }
        let mut snapshot = None;
        for key in inbox.sample {
            let stats = crate::lock(&shared.trees)
                .map
                .get(&key)
                .map(|w| w.stats.clone());
            if let Some(stats) = stats {
                stats.first_sample(&mut snapshot);
            }
        }
        let now = Instant::now();
        let full = now >= next_full;
        let watch_due = watching && now >= next_watch;
        if !full && !watch_due {
            continue;
        }
        if full {
            next_full = now + settings.sample_interval;
            // Adopted orphans: the ended ones reaped, leftovers killed (one small read when none).
            crate::subreaper::tend();
        }
        next_watch = now + settings.watch_interval;
        let trees: Vec<Arc<TreeStats>> = crate::lock(&shared.trees)
            .map
            .values()
            .filter(|w| full || w.stats.watched())
            .map(|w| w.stats.clone())
            .collect();
        for t in trees {
            if full {
                t.sample(&mut snapshot);
            } else {
                t.watch(&mut snapshot);
            }
        }
    }
    // Nobody waiting for a capture may wait for a thread that is gone.
    let open: Vec<Logged> = crate::lock(&shared.logs).drain().map(|(_, l)| l).collect();
    for logged in open {
        end_log(shared, logged);
    }
}

/// Puts a capture in the map under `key` and its pipe in the epoll set; a pipe that cannot be watched ends
/// its capture.
fn watch_logged(shared: &Shared, key: u64, logged: Logged) {
    let raw = logged.capture.pipe().as_raw_fd();
    // In the map before the pipe is in the epoll set; the map keeps the fd open until the watcher, which
    // alone removes entries after an event, takes it out.
    crate::lock(&shared.logs).insert(key, logged);
    // SAFETY: `raw` belongs to the capture just stored, which nothing closes before this call returns: the
    // watcher removes it only after one of its events (which follow this registration), or when its tree
    // has settled (after its launcher thread, the only other caller, is done with it).
    let fd = unsafe { BorrowedFd::borrow_raw(raw) };
    if let Err(e) = watch_fd(&shared.epoll, fd, key) {
        tracing::warn!(error = %e, "cannot watch a log pipe; the stream's capture ends");
        if let Some(logged) = crate::lock(&shared.logs).remove(&key) {
            log_done(logged);
        }
    }
}

/// Drains the log pipe `key`; at EOF or on an error its capture ends.
fn drain_log(shared: &Shared, key: u64) {
    // Out of the map while it drains: the lock is never held across I/O.
    let Some(logged) = crate::lock(&shared.logs).remove(&key) else {
        return;
    };
    drain_or_keep(shared, key, logged, true);
}

/// Drains a capture taken out of the map: at EOF or on an error it ends, else it goes back under `key`
/// (`in_epoll`: its pipe is still in the epoll set; else it is added again).
fn drain_or_keep(shared: &Shared, key: u64, mut logged: Logged, in_epoll: bool) {
    match logged.capture.drain(LOG_BUDGET) {
        Ok(false) if in_epoll => {
            crate::lock(&shared.logs).insert(key, logged);
            return;
        }
        Ok(false) => return watch_logged(shared, key, logged),
        Ok(true) => {}
        Err(e) => {
            tracing::warn!(pid = logged.stats.tree.pid, stream = ?logged.capture.stream(), error = %e, "log capture failed")
        }
    }
    if in_epoll {
        end_log(shared, logged);
    } else {
        // Only `end_captures` drains a capture outside the epoll set, and its tree is concluded next,
        // which wakes the owner: a wake-up here would be a second one for the same end.
        logged.stats.log_done(logged.capture.report(), false);
    }
}

fn end_log(shared: &Shared, logged: Logged) {
    let _ = epoll::delete(&shared.epoll, logged.capture.pipe());
    log_done(logged);
}

fn log_done(logged: Logged) {
    logged.stats.log_done(logged.capture.report(), true);
}

/// Takes every capture of `stats`' tree out of the map.
fn take_logs(shared: &Shared, stats: &Arc<TreeStats>) -> Vec<(u64, Logged)> {
    let mut logs = crate::lock(&shared.logs);
    let keys: Vec<u64> = logs
        .iter()
        .filter(|(_, l)| Arc::ptr_eq(&l.stats, stats))
        .map(|(k, _)| *k)
        .collect();
    keys.into_iter()
        .filter_map(|k| Some((k, logs.remove(&k)?)))
        .collect()
}

/// Gives up the captures of `stats`' tree that have not reached EOF, closing their pipes.
fn abandon_logs(shared: &Shared, stats: &Arc<TreeStats>) {
    for (_, logged) in take_logs(shared, stats) {
        tracing::warn!(
            pid = stats.tree.pid,
            stream = ?logged.capture.stream(),
            "log pipe still held open after the tree was killed; abandoning capture"
        );
        end_log(shared, logged);
    }
}

/// Reaps the main process of tree `key` if it has exited, and concludes the tree; returns the rest of
/// the conclusion of a tree found empty (see `TreeStats::conclude`).
fn conclude(
    shared: &Arc<Shared>,
    ending: &Arc<Ending>,
    key: u64,
) -> Option<Settling<impl FnOnce(&Arc<TreeStats>)>> {
    let watched = crate::lock(&shared.trees).remove(key)?;
    let reaped = match tree::try_wait4(watched.stats.tree.pid) {
        Ok(Some(reaped)) => reaped,
        Ok(None) => {
            // Still running: a poll round of a tree without a pidfd.
            crate::lock(&shared.trees).insert(key, watched);
            return None;
        }
        Err(e) => {
            // ECHILD: someone else reaped our child (e.g. SIGCHLD set to SIG_IGN by the embedding
            // program). The status is lost.
            tracing::error!(pid = watched.stats.tree.pid, error = %e, "wait4 failed; exit status unknown");
            tree::Reaped::unknown()
        }
    };
    let shared = shared.clone();
    watched.stats.conclude(reaped, ending, move |stats| {
        // Most trees' captures reached EOF with the exit; the rest get `LOG_LINGER` from now.
        if stats.logs_finished().is_none() {
            crate::lock(&shared.inbox).settled.push(stats.clone());
            wake(&shared);
        }
    })
}

//! Recycling emptied default working directories. A job without a working directory of its own gets a
//! fresh one (`LaunchRequest::create_cwd`), and creating a directory is one of the dearest steps of a
//! trivial job's start: an ext4 `mkdir` allocates an inode, 60–120 µs on the development machine (more
//! right after many deletions, which the allocator scans past), while a `rename` costs about 10 µs. So when
//! a job ends and its directory is still empty — nothing in it to keep — the watcher renames it to a spare
//! (`<parent>/.aura-spare-<n>`), and the next job's launcher renames a spare into place instead of creating
//! one. An empty directory is indistinguishable from a new one to the job; the finished job's record keeps
//! naming its (now absent, empty) directory.
//!
//! Only trees known to be gone recycle (on the process-group backend a process that escaped the group
//! might still write into it, so nothing is recycled there), and only a directory no other attempt of the
//! same job is using (an attempt can start before an abandoned earlier one has ended). A spare keeps what
//! its last job did to the directory itself (its mode, an ACL): jobs of one account are not isolated from
//! each other anyway (README, "What a job may do"). Blocking; used from the launcher and watcher threads.
//!
//! While a directory is handed out, a shared `flock` is held on it (through an fd kept with its count):
//! the janitor skips every directory with a lock held on it, so a live job's files are safe from it
//! even if its record said otherwise.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// A handed-out directory: how many attempts use it, and the fd that holds its lock.
#[derive(Debug, Default)]
struct InUse {
    users: u32,
    /// Dropping it (when the last user is counted out) releases the lock.
    _lock: Option<rustix::fd::OwnedFd>,
}

/// A shared lock on `dir`, held as long as the returned fd is. `None` if it cannot be taken (the
/// directory is gone, or the janitor holds it this instant: its removal then fails or leaves the
/// directory, and the launch goes on).
fn lock_dir(dir: &Path) -> Option<rustix::fd::OwnedFd> {
    use rustix::fs::{flock, open, FlockOperation, Mode, OFlags};
    let fd = open(
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ok()?;
    flock(&fd, FlockOperation::NonBlockingLockShared).ok()?;
    Some(fd)
}

/// How `WorkDirs::make` came by a directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Made {
    New,
    FromSpare,
    Existing,
}

#[derive(Debug)]
pub(crate) struct WorkDirs {
    /// Empty directories ready to be renamed into place.
    // A std Mutex: held for a push or a pop, never across I/O.
    spares: Mutex<Vec<PathBuf>>,
    capacity: usize,
    next: AtomicU64,
    enabled: bool,
    /// Directories handed out by `create` and not yet released, with how many attempts use each.
    // Held across the file-system step of `create`, `release` and `abandon` (a mkdir, a rename, an
    // rmdir, on launcher threads): counting a user out and moving its directory away must be one step,
    // or another launch of the same job could take the directory in between and lose it (seen: a
    // re-prioritised standby's withdrawn launch recycled the directory its next launch had just taken,
    // which then failed with `chdir: No such file or directory`). Order: `in_use`, then `spares`.
    in_use: Mutex<HashMap<PathBuf, InUse>>,
    /// The account jobs run as (uid, gid), when not the daemon's: every directory handed out is theirs.
    owner: Option<(u32, u32)>,
}

impl WorkDirs {
    pub fn new(capacity: usize, enabled: bool, owner: Option<(u32, u32)>) -> WorkDirs {
        WorkDirs {
            spares: Mutex::new(Vec::new()),
            capacity,
            next: AtomicU64::new(1),
            enabled,
            in_use: Mutex::new(HashMap::new()),
            owner,
        }
    }

    /// Makes `dir` exist: a spare renamed into place, else created (with its parents if need be), owned
    /// by the jobs' account (mode 0700 under the daemon's umask: other accounts see nothing of it). An
    /// existing directory (a later attempt of the same job) is kept as it is. Returns whether this call
    /// made it (see `abandon`).
    pub fn create(&self, dir: &Path) -> io::Result<bool> {
        let mut in_use = crate::lock(&self.in_use);
        let made = self.make(dir)?;
        if let (Some((uid, gid)), false) = (self.owner, made == Made::FromSpare) {
            // A spare is a directory of this daemon's, already handed over: spares live in memory, so the
            // account cannot have changed since. An earlier attempt's directory may be an earlier daemon's.
            // Never through a symlink: only a directory of the data dir is handed over.
            rustix::fs::chownat(
                rustix::fs::CWD,
                dir,
                Some(rustix::fs::Uid::from_raw(uid)),
                Some(rustix::fs::Gid::from_raw(gid)),
                rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
            )?;
        }
        let entry = in_use.entry(dir.to_path_buf()).or_default();
        if entry.users == 0 {
            entry._lock = lock_dir(dir);
        }
        entry.users += 1;
        Ok(made != Made::Existing)
    }

    fn make(&self, dir: &Path) -> io::Result<Made> {
        if let Some(spare) = self.take_spare(dir.parent()) {
            // Never onto an existing directory: an earlier attempt's is kept as it is, even empty —
            // replacing it would pull it away from under any process of that attempt still in it.
            // (`RENAME_NOREPLACE` asks in the same call; where the file system lacks it, a stat.)
            use rustix::fs::{renameat_with, RenameFlags, CWD};
            let renamed = match renameat_with(CWD, &spare, CWD, dir, RenameFlags::NOREPLACE) {
                Err(rustix::io::Errno::INVAL) if dir.is_dir() => Err(rustix::io::Errno::EXIST),
                Err(rustix::io::Errno::INVAL) => std::fs::rename(&spare, dir).map_err(|e| {
                    rustix::io::Errno::from_io_error(&e).unwrap_or(rustix::io::Errno::IO)
                }),
                other => other,
            };
            match renamed {
                Ok(()) => return Ok(Made::FromSpare),
                // There already (an earlier attempt's, or made meanwhile by someone else): theirs.
                // The spare stays a spare.
                Err(rustix::io::Errno::EXIST) => {
                    self.keep_spare(spare);
                    return Ok(Made::Existing);
                }
                Err(e) => {
                    tracing::debug!(spare = %spare.display(), error = %e, "cannot use a spare working directory");
                    let _ = std::fs::remove_dir(&spare);
                }
            }
        }
        match std::fs::create_dir(dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                std::fs::create_dir_all(dir).map(|()| Made::New)
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(Made::Existing),
            other => other.map(|()| Made::New),
        }
    }

    /// After its job's tree is gone: `dir` (from `create`) is no longer used by it. With `empty_tree`
    /// (nothing of the tree can write into it any more) and no other attempt using it, an empty `dir`
    /// becomes a spare if the pool has room; else it stays.
    pub fn release(&self, dir: &Path, empty_tree: bool) {
        let mut in_use = crate::lock(&self.in_use);
        if forget(&mut in_use, dir) && empty_tree {
            self.recycle(dir);
        }
    }

    /// A launch that started nothing gives back `dir` (from `create`, which said whether it `made` it):
    /// a directory it made, still empty and used by no other attempt, goes — to the spares, else
    /// removed — so a job that never started leaves nothing behind. One that was there before is kept.
    pub fn abandon(&self, dir: &Path, made: bool) {
        let mut in_use = crate::lock(&self.in_use);
        let last = forget(&mut in_use, dir);
        if !(made && last) {
            return;
        }
        if self.recycle(dir) {
            return;
        }
        // Fails, leaving it, unless the directory is empty.
        if let Err(e) = std::fs::remove_dir(dir) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::debug!(dir = %dir.display(), error = %e, "cannot remove an unused working directory");
            }
        }
    }

    /// Whether `dir` became a spare.
    fn recycle(&self, dir: &Path) -> bool {
        if !self.enabled || crate::lock(&self.spares).len() >= self.capacity {
            return false;
        }
        let empty = is_empty_dir(dir);
        let Some(parent) = dir.parent().filter(|_| empty) else {
            return false;
        };
        let spare = parent.join(format!(
            ".aura-spare-{}",
            self.next.fetch_add(1, Ordering::Relaxed)
        ));
        match std::fs::rename(dir, &spare) {
            Ok(()) => {
                self.keep_spare(spare);
                true
            }
            Err(e) => {
                tracing::debug!(dir = %dir.display(), error = %e, "cannot recycle a working directory");
                false
            }
        }
    }

    /// Removes every spare (at shutdown).
    pub fn drain(&self) {
        let spares = std::mem::take(&mut *crate::lock(&self.spares));
        for spare in spares {
            let _ = std::fs::remove_dir(spare);
        }
    }

    fn take_spare(&self, parent: Option<&Path>) -> Option<PathBuf> {
        let mut spares = crate::lock(&self.spares);
        let at = spares.iter().position(|s| s.parent() == parent)?;
        Some(spares.swap_remove(at))
    }

    fn keep_spare(&self, spare: PathBuf) {
        let mut spares = crate::lock(&self.spares);
        if spares.len() < self.capacity {
            spares.push(spare);
        } else {
            drop(spares);
            let _ = std::fs::remove_dir(spare);
        }
    }
}

/// Counts one user of `dir` out of `in_use`; whether it was the last.
fn forget(in_use: &mut HashMap<PathBuf, InUse>, dir: &Path) -> bool {
    match in_use.get_mut(dir) {
        Some(n) if n.users > 1 => {
            n.users -= 1;
            false
        }
        Some(_) => {
            in_use.remove(dir);
            true
        }
        None => false,
    }
}

/// Whether `dir` is a directory with nothing in it (open, read to the end, close: no more).
fn is_empty_dir(dir: &Path) -> bool {
    use rustix::fs::{open, Dir, Mode, OFlags};
    let Ok(fd) = open(
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    ) else {
        return false;
    };
    let Ok(mut entries) = Dir::new(fd) else {
        return false;
    };
    while let Some(entry) = entries.read() {
        match entry {
            Ok(e) if matches!(e.file_name().to_bytes(), b"." | b"..") => {}
            _ => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_directory_is_recycled_and_a_used_one_is_kept() {
        let root = tempfile::tempdir().unwrap();
        let dirs = WorkDirs::new(4, true, None);
        let first = root.path().join("work/1");
        dirs.create(&first).unwrap();
        assert!(first.is_dir());
        dirs.release(&first, true);
        assert!(!first.exists(), "an empty directory becomes a spare");
        let second = root.path().join("work/2");
        dirs.create(&second).unwrap();
        assert!(second.is_dir());
        assert_eq!(
            std::fs::read_dir(&second).unwrap().count(),
            0,
            "it starts empty"
        );
        let spares = std::fs::read_dir(root.path().join("work"))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with(".aura-spare")
            })
            .count();
        assert_eq!(spares, 0, "the spare was renamed into place");

        // A directory with a file in it is the job's output: never recycled.
        std::fs::write(second.join("out.mp4"), b"x").unwrap();
        dirs.release(&second, true);
        assert!(second.join("out.mp4").exists());

        // A later attempt keeps what an earlier one left, even with a spare at hand.
        let third = root.path().join("work/3");
        dirs.create(&third).unwrap();
        dirs.release(&third, true);
        dirs.create(&second).unwrap();
        assert!(second.join("out.mp4").exists());

        // Two attempts of one job share its directory: the first one's end leaves it to the second.
        let shared = root.path().join("work/5");
        dirs.create(&shared).unwrap();
        dirs.create(&shared).unwrap();
        dirs.release(&shared, true);
        assert!(shared.is_dir(), "still used by the other attempt");
        dirs.release(&shared, true);
        assert!(!shared.exists(), "recycled once the last attempt is over");

        // While handed out, a directory carries a shared lock (the janitor's sign to keep off); released
        // with its last user.
        let exclusive = |dir: &Path| {
            let fd = rustix::fs::open(
                dir,
                rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY,
                rustix::fs::Mode::empty(),
            )
            .unwrap();
            rustix::fs::flock(&fd, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_ok()
        };
        let locked = root.path().join("work/6");
        dirs.create(&locked).unwrap();
        std::fs::write(locked.join("keep"), b"x").unwrap();
        assert!(!exclusive(&locked), "a live directory must be locked");
        dirs.release(&locked, true);
        assert!(exclusive(&locked), "released with its last user");

        // Disabled (no reliable tree membership): nothing is recycled.
        let off = WorkDirs::new(4, false, None);
        let fourth = root.path().join("work/4");
        off.create(&fourth).unwrap();
        off.release(&fourth, true);
        assert!(fourth.is_dir());
        dirs.drain();
    }
}

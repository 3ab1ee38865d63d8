//! The fd-relative, depth-first removal walk behind [`sweep`] and
//! [`remove_entry`] (and the source removal of `archive_dir`).
//!
//! Per entry: one `fstatat(AT_SYMLINK_NOFOLLOW)`, the lock-table lookup, and
//! for an entry that is due one re-check `fstatat` and one `unlinkat` — no
//! open per file. Directories are opened with `O_NOFOLLOW` relative to their
//! verified parent and checked (same dev/ino as the stat that chose them, same
//! device as the root, no flock held) before anything in them is touched. Only
//! one directory stream per level is open, so memory is bounded by depth.

use std::collections::HashMap;
use std::ffi::{CStr, OsStr};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, RawDir};
use rustix::io::Errno;

use crate::locks::{is_locked, LockTable};
use crate::meta::{check_name, open_dir_checked, rel_join, stat_at, stat_fd, Meta, OpenDir};
use crate::{Action, ActionKind, JanitorError, Report, Root, SweepOptions};

/// How deep below a root a walk goes; a directory deeper than this is not
/// entered and is reported as an error.
pub const MAX_DEPTH: usize = 256;

/// The `getdents` buffer per open directory level (what glibc's readdir uses).
const DIRENT_BUF: usize = 32 * 1024;

/// Identity and change stamp (ctime) of each non-directory that went into an
/// archive: only these may be removed afterwards.
pub(crate) type Archived = HashMap<(u64, u64), (i64, u32)>;

/// Which entries a walk removes.
#[derive(Clone, Copy)]
pub(crate) enum Due<'a> {
    /// Entries with an mtime before this; directories by their own mtime read
    /// before their contents were handled.
    OlderThan(SystemTime),
    /// Everything (the caller decided the whole entry is due).
    Always,
    /// Non-directories only if they were archived and have not changed since
    /// (same ctime); emptied directories always.
    Archived(&'a Archived),
}

/// Removes everything below `root` older than the cutoff (files, symlinks —
/// the link itself, never its target — and then empty old dirs), depth first,
/// fd-relative. The root itself is never removed, and is not probed for a
/// lock (the daemon may well hold one on its own data directory).
pub fn sweep(root: &Root, opts: &SweepOptions) -> Report {
    let mut w = Walker::new(
        root,
        Due::OlderThan(opts.cutoff),
        opts.dry_run,
        opts.max_listed,
    );
    w.remove_empty_dirs = opts.remove_empty_dirs;
    w.walk_root(root);
    tracing::info!(
        target: "aura_janitor",
        root = %root.path().display(),
        dry_run = opts.dry_run,
        files = w.report.files_removed,
        dirs = w.report.dirs_removed,
        bytes = w.report.bytes_freed,
        errors = w.report.errors,
        locked = w.report.skipped_locked,
        mounts = w.report.skipped_mounts,
        "sweep done"
    );
    w.report
}

/// Removes the one entry `name` directly below `root` (a whole directory tree
/// or a single file), regardless of age (the caller decided it is due), with
/// the same safety rules. A directory with a lock held on it (or anything
/// inside it locked) is skipped whole — nothing in it is removed, and the
/// directory itself stays: a read-only pass looks for locks before the
/// removing pass (which checks again, for locks taken in between).
pub fn remove_entry(root: &Root, name: &OsStr, dry_run: bool, max_listed: usize) -> Report {
    remove_top(root, name, Due::Always, dry_run, max_listed)
}

/// [`remove_entry`] with another notion of what is due (used after archiving).
pub(crate) fn remove_top(
    root: &Root,
    name: &OsStr,
    due: Due<'_>,
    dry_run: bool,
    max_listed: usize,
) -> Report {
    let mut report = Report::default();
    if let Err(e) = check_name(name) {
        report.error(e.to_string());
        return report;
    }
    let path = root.path().join(name);
    let meta = match stat_at(root.fd(), name.as_bytes()) {
        Ok(m) => m,
        Err(Errno::NOENT) => return report,
        Err(e) => {
            report.error(JanitorError::io("stat", &path, e).to_string());
            return report;
        }
    };
    let locks = LockTable::read();
    if locks.contains(meta.dev, meta.ino) {
        report.skipped_locked += 1;
        return report;
    }
    // A regular file is opened once to probe for a flock; the lock table may
    // not list every lock (e.g. when procfs is missing). The table comes
    // first: closing the probe's fd would drop a POSIX lock this process holds.
    if meta.file_type() == FileType::RegularFile && meta.dev == root.dev() {
        match open_regular_checked(root.fd(), name, &meta) {
            Ok(Some(fd)) if is_locked(fd.as_fd()) => {
                report.skipped_locked += 1;
                return report;
            }
            Ok(_) => {}
            Err(e) => {
                report.error(JanitorError::io("open", &path, e).to_string());
                return report;
            }
        }
    }
    // check_name refused NUL bytes, so this cannot fail; no panic all the same.
    let Ok(cname) = std::ffi::CString::new(name.as_bytes()) else {
        report.error(format!("{}: name contains NUL", path.display()));
        return report;
    };
    if meta.is_dir() {
        // Read-only pass: if anything inside is locked, the whole entry stays.
        let mut scan = Walker::with_locks(root, locks.clone(), due, true, max_listed);
        scan.entry(root.fd(), &cname, "", 0);
        if scan.report.skipped_locked > 0 {
            tracing::info!(target: "aura_janitor", path = %path.display(), "locked inside; left whole");
            return Report {
                skipped_locked: scan.report.skipped_locked,
                ..Report::default()
            };
        }
        if dry_run {
            return scan.report;
        }
    }
    let mut w = Walker::with_locks(root, locks, due, dry_run, max_listed);
    w.entry(root.fd(), &cname, "", 0);
    w.report
}

/// Opens a regular file chosen by `fstatat` without following a symlink or
/// blocking (a swapped-in fifo), and checks it is that very file. `Ok(None)`
/// if it was swapped or is gone.
pub(crate) fn open_regular_checked(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    expected: &Meta,
) -> Result<Option<OwnedFd>, Errno> {
    let flags =
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK;
    let fd = match rustix::fs::openat(dir, name.as_bytes(), flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::NOENT | Errno::LOOP) => return Ok(None),
        Err(e) => return Err(e),
    };
    let meta = stat_fd(&fd)?;
    if !meta.same_inode(expected) || meta.file_type() != FileType::RegularFile {
        return Ok(None);
    }
    Ok(Some(fd))
}

pub(crate) struct Walker<'a> {
    root_dev: u64,
    base: PathBuf,
    locks: LockTable,
    due: Due<'a>,
    dry_run: bool,
    remove_empty_dirs: bool,
    max_listed: usize,
    pub report: Report,
}

impl<'a> Walker<'a> {
    fn new(root: &Root, due: Due<'a>, dry_run: bool, max_listed: usize) -> Walker<'a> {
        Walker::with_locks(root, LockTable::read(), due, dry_run, max_listed)
    }

    fn with_locks(
        root: &Root,
        locks: LockTable,
        due: Due<'a>,
        dry_run: bool,
        max_listed: usize,
    ) -> Walker<'a> {
        Walker {
            root_dev: root.dev(),
            base: root.path().to_path_buf(),
            locks,
            due,
            dry_run,
            remove_empty_dirs: true,
            max_listed,
            report: Report::default(),
        }
    }

    fn path(&self, rel: &str, name: &CStr) -> PathBuf {
        let mut p = self.base.join(rel);
        p.push(OsStr::from_bytes(name.to_bytes()));
        p
    }

    fn path_of(base: &Path, rel: &str) -> PathBuf {
        if rel.is_empty() {
            base.to_path_buf()
        } else {
            base.join(rel)
        }
    }

    fn act(&mut self, rel: &str, name: &CStr, bytes: u64) {
        if self.report.actions.len() < self.max_listed {
            self.report.actions.push(Action {
                path: rel_join(rel, name.to_bytes()),
                kind: ActionKind::Remove,
                bytes,
            });
        }
    }

    /// Walks the root's own contents (never the root itself).
    fn walk_root(&mut self, root: &Root) {
        // A second fd on the root, so the directory stream's position is ours
        // alone; "." cannot be swapped.
        match rustix::fs::openat(root.fd(), c".", crate::meta::dir_flags(), Mode::empty()) {
            Ok(fd) => {
                self.walk_dir(fd.as_fd(), "", 0);
            }
            Err(e) => {
                let msg = JanitorError::io("open", root.path(), e).to_string();
                self.report.error(msg);
            }
        }
    }

    /// Handles every entry of the verified directory `dir` (at `rel` below the
    /// root, `depth` levels down). Returns whether all of them are gone (or
    /// would be, in a dry run).
    fn walk_dir(&mut self, dir: BorrowedFd<'_>, rel: &str, depth: usize) -> bool {
        let mut buf: Vec<u8> = Vec::with_capacity(DIRENT_BUF);
        let mut stream = RawDir::new(dir, buf.spare_capacity_mut());
        let mut all_gone = true;
        while let Some(ent) = stream.next() {
            let ent = match ent {
                Ok(e) => e,
                Err(e) => {
                    let msg =
                        JanitorError::io("readdir", Self::path_of(&self.base, rel), e).to_string();
                    self.report.error(msg);
                    return false;
                }
            };
            let name = ent.file_name();
            if name == c"." || name == c".." {
                continue;
            }
            if !self.entry(dir, name, rel, depth) {
                all_gone = false;
            }
        }
        all_gone
    }

    /// Handles one entry `name` of directory `dir`. Returns whether it is gone
    /// (or would be).
    fn entry(&mut self, dir: BorrowedFd<'_>, name: &CStr, rel: &str, depth: usize) -> bool {
        let meta = match stat_at(dir, name) {
            Ok(m) => m,
            // Someone else removed it: gone all the same.
            Err(Errno::NOENT) => return true,
            Err(e) => {
                let msg = JanitorError::io("stat", self.path(rel, name), e).to_string();
                self.report.error(msg);
                return false;
            }
        };
        if meta.dev != self.root_dev {
            // A mount point (of a directory, or a bind-mounted file).
            self.report.skipped_mounts += 1;
            tracing::debug!(target: "aura_janitor", path = %self.path(rel, name).display(), "mount point not entered");
            return false;
        }
        if self.locks.contains(meta.dev, meta.ino) {
            self.report.skipped_locked += 1;
            tracing::debug!(target: "aura_janitor", path = %self.path(rel, name).display(), "locked; skipped");
            return false;
        }
        if meta.is_dir() {
            return self.dir_entry(dir, name, &meta, rel, depth);
        }
        let due = match self.due {
            Due::OlderThan(cutoff) => meta.mtime() < cutoff,
            Due::Always => true,
            Due::Archived(set) => set.get(&(meta.dev, meta.ino)) == Some(&meta.ctime),
        };
        if !due {
            return false;
        }
        self.remove_nondir(dir, name, &meta, rel)
    }

    fn dir_entry(
        &mut self,
        parent: BorrowedFd<'_>,
        name: &CStr,
        meta: &Meta,
        rel: &str,
        depth: usize,
    ) -> bool {
        // Decided by the mtime read before descending, as systemd-tmpfiles
        // does: removing the contents bumps it.
        let old_enough = match self.due {
            Due::OlderThan(cutoff) => meta.mtime() < cutoff,
            Due::Always | Due::Archived(_) => true,
        };
        let fd = match open_dir_checked(parent, name, meta, self.root_dev) {
            OpenDir::Opened(fd) => fd,
            OpenDir::Swapped => {
                self.report.skipped_changed += 1;
                tracing::debug!(target: "aura_janitor", path = %self.path(rel, name).display(), "changed before open; skipped");
                return false;
            }
            OpenDir::OtherDevice => {
                self.report.skipped_mounts += 1;
                return false;
            }
            OpenDir::Failed(e) => {
                let msg = JanitorError::io("open", self.path(rel, name), e).to_string();
                self.report.error(msg);
                return false;
            }
        };
        if is_locked(fd.as_fd()) {
            self.report.skipped_locked += 1;
            tracing::debug!(target: "aura_janitor", path = %self.path(rel, name).display(), "directory locked; subtree skipped");
            return false;
        }
        if depth >= MAX_DEPTH {
            let msg = JanitorError::TooDeep {
                path: self.path(rel, name),
                max: MAX_DEPTH,
            }
            .to_string();
            self.report.error(msg);
            return false;
        }
        let child_rel = rel_join(rel, name.to_bytes());
        let emptied = self.walk_dir(fd.as_fd(), &child_rel, depth + 1);
        if !emptied || !self.remove_empty_dirs || !old_enough {
            return false;
        }
        if self.dry_run {
            self.report.dirs_removed += 1;
            self.act(rel, name, 0);
            return true;
        }
        // The state we decide on is the one after our own removals; anything
        // that changed it since (an entry added and removed) keeps the dir.
        let decided = match stat_fd(&fd) {
            Ok(m) => m,
            Err(e) => {
                let msg = JanitorError::io("fstat", self.path(rel, name), e).to_string();
                self.report.error(msg);
                return false;
            }
        };
        drop(fd);
        crate::testing::before_recheck(&self.path(rel, name));
        match stat_at(parent, name) {
            Ok(now) if now.same_inode(&decided) && now.mtime == decided.mtime => {}
            Ok(_) => {
                self.report.skipped_changed += 1;
                return false;
            }
            Err(Errno::NOENT) => return false,
            Err(e) => {
                let msg = JanitorError::io("stat", self.path(rel, name), e).to_string();
                self.report.error(msg);
                return false;
            }
        }
        match rustix::fs::unlinkat(parent, name, AtFlags::REMOVEDIR) {
            Ok(()) => {
                self.report.dirs_removed += 1;
                self.act(rel, name, 0);
                true
            }
            // Something was added meanwhile, or the name is no longer a
            // directory (swapped): it stays, and that is no error.
            Err(Errno::NOTEMPTY | Errno::EXIST | Errno::NOTDIR) => {
                self.report.skipped_changed += 1;
                false
            }
            Err(Errno::NOENT) => true,
            // A bind mount of this same file system.
            Err(Errno::BUSY) => {
                self.report.skipped_mounts += 1;
                false
            }
            Err(e) => {
                let msg = JanitorError::io("rmdir", self.path(rel, name), e).to_string();
                self.report.error(msg);
                false
            }
        }
    }

    fn remove_nondir(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &CStr,
        decided: &Meta,
        rel: &str,
    ) -> bool {
        let bytes = decided.freed_by_unlink();
        if self.dry_run {
            self.report.files_removed += 1;
            self.report.bytes_freed += bytes;
            self.act(rel, name, bytes);
            return true;
        }
        crate::testing::before_recheck(&self.path(rel, name));
        match stat_at(dir, name) {
            Ok(now) if now.unchanged(decided) => {}
            Ok(_) => {
                self.report.skipped_changed += 1;
                tracing::debug!(target: "aura_janitor", path = %self.path(rel, name).display(), "changed since stat; kept");
                return false;
            }
            Err(Errno::NOENT) => return true,
            Err(e) => {
                let msg = JanitorError::io("stat", self.path(rel, name), e).to_string();
                self.report.error(msg);
                return false;
            }
        }
        match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
            Ok(()) => {
                self.report.files_removed += 1;
                self.report.bytes_freed += bytes;
                self.act(rel, name, bytes);
                true
            }
            Err(Errno::NOENT) => true,
            // Swapped for a directory after the re-check: not ours to judge now.
            Err(Errno::ISDIR) => {
                self.report.skipped_changed += 1;
                false
            }
            Err(Errno::BUSY) => {
                self.report.skipped_mounts += 1;
                false
            }
            Err(e) => {
                let msg = JanitorError::io("unlink", self.path(rel, name), e).to_string();
                self.report.error(msg);
                false
            }
        }
    }
}

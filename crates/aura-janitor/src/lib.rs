//! `aura-janitor` owns the file-system safety core of the data-directory
//! janitor: removing old entries, archiving and compressing below a directory
//! without ever being tricked into acting outside it.
//!
//! The threat model is the one behind systemd-tmpfiles' symlink-race CVEs: the
//! trees we clean are writable by jobs, so any name may be swapped for a
//! symlink (or a mount may appear) between our looking at it and acting on
//! it. Hence every operation is relative to a directory fd that was opened
//! with `O_NOFOLLOW` and verified (same dev/ino as the `fstatat` that chose it,
//! same device as the [`Root`]); names are only ever resolved one component at
//! a time against such an fd, and `unlinkat` never follows the final
//! component. Paths appear only in messages and [`Action`]s.
//!
//! Everything here is blocking; the engine calls it from its own thread. The
//! crate is a leaf: paths and fds in, [`Report`]s out.

mod archive;
mod compress;
mod error;
mod locks;
mod meta;
mod root;
mod walk;

#[doc(hidden)]
pub mod testing;

use std::time::SystemTime;

pub use archive::archive_dir;
pub use compress::compress_file;
pub use error::JanitorError;
pub use locks::{is_locked, parse_proc_locks, LockTable};
pub use root::Root;
pub use walk::{remove_entry, sweep, MAX_DEPTH};

/// What a [`sweep`] removes and how it reports.
#[derive(Clone, Debug)]
pub struct SweepOptions {
    /// Entries whose mtime is at or after this are kept (age by mtime, like
    /// tmpfiles or `find -mtime`).
    pub cutoff: SystemTime,
    /// Change nothing, but count and list what a real run would do.
    pub dry_run: bool,
    /// Remove directories that are empty after the sweep and whose own mtime,
    /// read before their contents were handled, is older than `cutoff`. The
    /// root itself is never removed.
    pub remove_empty_dirs: bool,
    /// At most this many actions are kept in [`Report::actions`]; counting
    /// goes on past it.
    pub max_listed: usize,
}

impl SweepOptions {
    /// Options that remove everything older than `cutoff`, with the defaults
    /// for the rest (empty old directories removed, 1000 actions listed).
    pub fn new(cutoff: SystemTime) -> SweepOptions {
        SweepOptions {
            cutoff,
            dry_run: false,
            remove_empty_dirs: true,
            max_listed: DEFAULT_MAX_LISTED,
        }
    }
}

impl Default for SweepOptions {
    /// Everything is kept (`cutoff` is the epoch) until the caller sets one.
    fn default() -> SweepOptions {
        SweepOptions::new(SystemTime::UNIX_EPOCH)
    }
}

/// How many actions a report lists unless told otherwise.
pub const DEFAULT_MAX_LISTED: usize = 1000;

/// How many error messages a report keeps; `errors` counts them all.
pub const MAX_ERROR_MESSAGES: usize = 10;

/// What an operation did (or, in a dry run, would do).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Report {
    /// Files, symlinks and other non-directories removed.
    pub files_removed: u64,
    /// Directories removed.
    pub dirs_removed: u64,
    /// Disk space given back: `st_blocks * 512` of removed files that had no
    /// other hard link, or for archiving/compressing the saving (source minus
    /// result, saturating at 0).
    pub bytes_freed: u64,
    /// Entries that could not be handled; the first few are described in
    /// `error_messages`.
    pub errors: u64,
    /// Entries skipped because a lock is held on them (or, for a whole
    /// directory given to [`remove_entry`]/[`archive_dir`], on something in it).
    pub skipped_locked: u64,
    /// Mount points seen and not entered.
    pub skipped_mounts: u64,
    /// Entries left alone because they changed (or were swapped for something
    /// else) between being looked at and being acted on. No error: the next
    /// run looks again.
    pub skipped_changed: u64,
    /// What was done, at most `max_listed` entries.
    pub actions: Vec<Action>,
    /// The first [`MAX_ERROR_MESSAGES`] errors, each naming its path.
    pub error_messages: Vec<String>,
}

impl Report {
    /// Adds `other`'s counts to this one, keeping the lists bounded (actions
    /// by the larger of the two lists' current lengths and
    /// [`DEFAULT_MAX_LISTED`], error messages by [`MAX_ERROR_MESSAGES`]).
    pub fn merge(&mut self, other: Report) {
        let cap = self
            .actions
            .len()
            .max(other.actions.len())
            .max(DEFAULT_MAX_LISTED);
        self.files_removed += other.files_removed;
        self.dirs_removed += other.dirs_removed;
        self.bytes_freed += other.bytes_freed;
        self.errors += other.errors;
        self.skipped_locked += other.skipped_locked;
        self.skipped_mounts += other.skipped_mounts;
        self.skipped_changed += other.skipped_changed;
        let room = cap.saturating_sub(self.actions.len());
        self.actions.extend(other.actions.into_iter().take(room));
        let room = MAX_ERROR_MESSAGES.saturating_sub(self.error_messages.len());
        self.error_messages
            .extend(other.error_messages.into_iter().take(room));
    }

    /// Counts one error and keeps its message if there is room (callers that walk by other means, such
    /// as the engine's per-job steps, report theirs through this too).
    pub fn error(&mut self, message: String) {
        self.errors += 1;
        // The log gets as many as the report keeps: a tree full of one
        // failure must not flood it.
        if self.error_messages.len() < MAX_ERROR_MESSAGES {
            tracing::warn!(target: "aura_janitor", "{message}");
            self.error_messages.push(message);
        } else {
            tracing::debug!(target: "aura_janitor", "{message}");
        }
    }
}

/// One thing done (or that would be done) to one entry.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub struct Action {
    /// The entry, relative to the root the task was given, '/'-joined (names
    /// that are not UTF-8 are shown lossily).
    pub path: String,
    /// What was done to it.
    pub kind: ActionKind,
    /// Bytes freed by this action (0 for a directory).
    pub bytes: u64,
}

/// The kinds of [`Action`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionKind {
    /// The entry was removed.
    Remove,
    /// The directory was archived into a `.tar.zst` and removed.
    Archive,
    /// The file was replaced by a `.zst` of itself.
    Compress,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(n: u64, actions: usize, messages: usize) -> Report {
        Report {
            files_removed: n,
            dirs_removed: n + 1,
            bytes_freed: n + 2,
            errors: n + 3,
            skipped_locked: n + 4,
            skipped_mounts: n + 5,
            skipped_changed: n + 6,
            actions: (0..actions)
                .map(|i| Action {
                    path: format!("{n}/{i}"),
                    kind: ActionKind::Remove,
                    bytes: 1,
                })
                .collect(),
            error_messages: (0..messages).map(|i| format!("{n}: {i}")).collect(),
        }
    }

    #[test]
    fn merging_adds_every_count_and_keeps_the_lists_bounded() {
        let mut total = report(10, 3, 4);
        total.merge(report(100, 2, 4));
        assert_eq!(
            (
                total.files_removed,
                total.dirs_removed,
                total.bytes_freed,
                total.errors,
                total.skipped_locked,
                total.skipped_mounts,
                total.skipped_changed
            ),
            (110, 112, 114, 116, 118, 120, 122)
        );
        assert_eq!(total.actions.len(), 5);
        assert_eq!(total.error_messages.len(), 8);
        // Lists stop at their bounds; counts go on.
        total.merge(report(1, DEFAULT_MAX_LISTED, MAX_ERROR_MESSAGES));
        assert_eq!(total.actions.len(), DEFAULT_MAX_LISTED);
        assert_eq!(total.actions[5].path, "1/0");
        assert_eq!(total.error_messages.len(), MAX_ERROR_MESSAGES);
        assert_eq!(total.error_messages[8], "1: 0");
        assert_eq!(total.files_removed, 111);
    }

    #[test]
    fn an_error_is_always_counted_and_its_message_kept_while_there_is_room() {
        let mut r = Report::default();
        for i in 0..MAX_ERROR_MESSAGES + 3 {
            r.error(format!("e{i}"));
        }
        assert_eq!(r.errors, (MAX_ERROR_MESSAGES + 3) as u64);
        assert_eq!(r.error_messages.len(), MAX_ERROR_MESSAGES);
        assert_eq!(r.error_messages.last().map(String::as_str), Some("e9"));
    }
}

//! Small fd-relative building blocks shared by every operation: the portable
//! view of a `stat`, the one way a directory below a verified fd is opened,
//! and name/path helpers for messages.

use std::ffi::{CStr, OsStr};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::time::{Duration, SystemTime};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat};
use rustix::io::Errno;

use crate::JanitorError;

/// The fields of a `stat` the janitor decides on, in fixed-width types
/// (`Stat`'s field types differ between architectures).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Meta {
    pub dev: u64,
    pub ino: u64,
    pub mode: u32,
    pub nlink: u64,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u64,
    pub size: u64,
    pub blocks: u64,
    pub blksize: u64,
    pub atime: (i64, u32),
    pub mtime: (i64, u32),
    pub ctime: (i64, u32),
}

// The casts only widen or keep the width on every Linux target; which of them
// are no-ops depends on the architecture.
#[allow(clippy::unnecessary_cast, clippy::useless_conversion)]
impl From<&Stat> for Meta {
    fn from(st: &Stat) -> Meta {
        Meta {
            dev: st.st_dev as u64,
            ino: st.st_ino as u64,
            mode: st.st_mode as u32,
            nlink: st.st_nlink as u64,
            uid: st.st_uid as u32,
            gid: st.st_gid as u32,
            rdev: st.st_rdev as u64,
            size: u64::try_from(st.st_size).unwrap_or(0),
            blocks: u64::try_from(st.st_blocks).unwrap_or(0),
            blksize: u64::try_from(st.st_blksize).unwrap_or(4096),
            atime: (st.st_atime as i64, st.st_atime_nsec as u32),
            mtime: (st.st_mtime as i64, st.st_mtime_nsec as u32),
            ctime: (st.st_ctime as i64, st.st_ctime_nsec as u32),
        }
    }
}

impl Meta {
    pub fn file_type(&self) -> FileType {
        FileType::from_raw_mode(self.mode)
    }

    pub fn is_dir(&self) -> bool {
        self.file_type() == FileType::Directory
    }

    /// The permission bits (incl. setuid/setgid/sticky).
    pub fn perm(&self) -> u32 {
        self.mode & 0o7777
    }

    /// The same inode as `other` (what a re-check compares).
    pub fn same_inode(&self, other: &Meta) -> bool {
        self.dev == other.dev && self.ino == other.ino
    }

    /// The same inode with the same content stamp: what is compared right
    /// before acting on an entry that was decided on earlier.
    pub fn unchanged(&self, other: &Meta) -> bool {
        self.same_inode(other) && self.mtime == other.mtime && self.size == other.size
    }

    pub fn mtime(&self) -> SystemTime {
        to_system_time(self.mtime)
    }

    /// Disk space held by this entry: `st_blocks * 512`.
    pub fn disk_bytes(&self) -> u64 {
        self.blocks.saturating_mul(512)
    }

    /// Disk space that unlinking this name gives back: nothing while another
    /// hard link keeps the inode alive.
    pub fn freed_by_unlink(&self) -> u64 {
        if self.nlink <= 1 {
            self.disk_bytes()
        } else {
            0
        }
    }
}

fn to_system_time((sec, nsec): (i64, u32)) -> SystemTime {
    let nsec = Duration::from_nanos(u64::from(nsec.min(999_999_999)));
    if sec >= 0 {
        SystemTime::UNIX_EPOCH
            .checked_add(Duration::from_secs(sec.unsigned_abs()) + nsec)
            .unwrap_or(SystemTime::UNIX_EPOCH)
    } else {
        SystemTime::UNIX_EPOCH
            .checked_sub(Duration::from_secs(sec.unsigned_abs()))
            .and_then(|t| t.checked_add(nsec))
            .unwrap_or(SystemTime::UNIX_EPOCH)
    }
}

/// `fstatat(dir, name, AT_SYMLINK_NOFOLLOW)`.
pub(crate) fn stat_at<P: rustix::path::Arg>(dir: BorrowedFd<'_>, name: P) -> Result<Meta, Errno> {
    rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW).map(|st| Meta::from(&st))
}

/// `fstat(fd)`.
pub(crate) fn stat_fd(fd: impl AsFd) -> Result<Meta, Errno> {
    rustix::fs::fstat(fd).map(|st| Meta::from(&st))
}

/// The flags every directory is opened with: a symlink in the last component
/// makes the open fail instead of being followed.
pub(crate) fn dir_flags() -> OFlags {
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

/// Why a directory chosen by `fstatat` was not opened.
pub(crate) enum OpenDir {
    Opened(OwnedFd),
    /// Gone, or swapped for something that is not a directory (a symlink
    /// makes `O_NOFOLLOW` fail with ELOOP), or swapped for another directory
    /// (dev/ino differ): nothing to do, and nothing was followed.
    Swapped,
    /// On another device than `dev`: a mount point, never entered.
    OtherDevice,
    Failed(Errno),
}

/// Opens the directory `name` below `parent` that `fstatat` described as
/// `expected`, and checks that the fd is that very directory on device `dev`.
pub(crate) fn open_dir_checked(
    parent: BorrowedFd<'_>,
    name: &CStr,
    expected: &Meta,
    dev: u64,
) -> OpenDir {
    let fd = match rustix::fs::openat(parent, name, dir_flags(), Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::NOENT | Errno::LOOP | Errno::NOTDIR) => return OpenDir::Swapped,
        Err(e) => return OpenDir::Failed(e),
    };
    let meta = match stat_fd(&fd) {
        Ok(m) => m,
        Err(e) => return OpenDir::Failed(e),
    };
    if !meta.same_inode(expected) {
        return OpenDir::Swapped;
    }
    if meta.dev != dev || is_mount_root(fd.as_fd()) {
        return OpenDir::OtherDevice;
    }
    OpenDir::Opened(fd)
}

/// Whether the directory at `fd` is the root of a mount, even a bind mount of
/// the same file system (same `st_dev`), which comparing devices cannot see.
/// Needs statx's `STATX_ATTR_MOUNT_ROOT` (Linux 5.8+); where the kernel cannot
/// say, the device comparison is the only guard.
pub(crate) fn is_mount_root(fd: BorrowedFd<'_>) -> bool {
    use rustix::fs::{StatxAttributes, StatxFlags};
    match rustix::fs::statx(fd, c"", AtFlags::EMPTY_PATH, StatxFlags::TYPE) {
        Ok(st) => {
            st.stx_attributes_mask.contains(StatxAttributes::MOUNT_ROOT)
                && st.stx_attributes.contains(StatxAttributes::MOUNT_ROOT)
        }
        Err(_) => false,
    }
}

/// Checks that `name` is exactly one path component.
pub(crate) fn check_name(name: &OsStr) -> Result<(), JanitorError> {
    let b = name.as_bytes();
    if b.is_empty() || b == b"." || b == b".." || b.contains(&b'/') || b.contains(&0) {
        return Err(JanitorError::InvalidName {
            name: name.to_string_lossy().into_owned(),
        });
    }
    Ok(())
}

/// Appends `name` to a '/'-joined relative path for actions and messages.
pub(crate) fn rel_join(prefix: &str, name: &[u8]) -> String {
    let name = String::from_utf8_lossy(name);
    if prefix.is_empty() {
        name.into_owned()
    } else {
        let mut s = String::with_capacity(prefix.len() + 1 + name.len());
        s.push_str(prefix);
        s.push('/');
        s.push_str(&name);
        s
    }
}

/// A hidden name in the same directory for writing `final_name` before it is
/// renamed into place: unique per process and call.
pub(crate) fn temp_name(final_name: &OsStr) -> std::ffi::OsString {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut s = std::ffi::OsString::from(".");
    s.push(final_name);
    s.push(format!(".{}.{n}.janitor-tmp", std::process::id()));
    s
}

/// Rounds a byte count up to whole blocks of `blksize`: what a file of that
/// size will occupy, used to estimate the saving before the file exists.
pub(crate) fn round_up(bytes: u64, blksize: u64) -> u64 {
    let b = blksize.max(512);
    bytes.div_ceil(b).saturating_mul(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The re-check before a removal: any change of identity, size or mtime since the decision is a
    /// change (the walk skips the entry); only the very same, untouched file passes.
    #[test]
    fn a_recheck_sees_every_change_of_identity_or_content() {
        let base = Meta {
            dev: 1,
            ino: 2,
            mode: 0o100644,
            nlink: 1,
            uid: 0,
            gid: 0,
            rdev: 0,
            size: 10,
            blocks: 8,
            blksize: 4096,
            atime: (5, 0),
            mtime: (5, 0),
            ctime: (5, 0),
        };
        assert!(base.unchanged(&base) && base.same_inode(&base));
        // Read since (atime) or relinked (nlink, ctime): the same file, unchanged in content.
        let read = Meta {
            atime: (9, 0),
            ..base
        };
        assert!(read.unchanged(&base));
        for (what, other) in [
            ("dev", Meta { dev: 9, ..base }),
            ("ino", Meta { ino: 9, ..base }),
            ("size", Meta { size: 11, ..base }),
            (
                "mtime",
                Meta {
                    mtime: (5, 1),
                    ..base
                },
            ),
        ] {
            assert!(!other.unchanged(&base), "{what}");
        }
        assert!(!Meta { dev: 9, ..base }.same_inode(&base));
        assert!(!Meta { ino: 9, ..base }.same_inode(&base));
        assert!(Meta { size: 11, ..base }.same_inode(&base));
    }

    #[test]
    fn names() {
        for bad in ["", ".", "..", "a/b", "/a", "a\0b"] {
            assert!(check_name(OsStr::new(bad)).is_err(), "{bad:?}");
        }
        for good in ["a", "...", ".hidden", "a b"] {
            assert!(check_name(OsStr::new(good)).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn times() {
        assert_eq!(to_system_time((0, 0)), SystemTime::UNIX_EPOCH);
        assert_eq!(
            to_system_time((10, 5)),
            SystemTime::UNIX_EPOCH + Duration::new(10, 5)
        );
        assert!(to_system_time((-10, 0)) < SystemTime::UNIX_EPOCH);
        let _ = to_system_time((i64::MAX, u32::MAX));
        let _ = to_system_time((i64::MIN, u32::MAX));
    }

    #[test]
    fn rounding() {
        assert_eq!(round_up(0, 4096), 0);
        assert_eq!(round_up(1, 4096), 4096);
        assert_eq!(round_up(4097, 4096), 8192);
        assert_eq!(round_up(1, 0), 512);
    }
}

//! [`Root`]: the verified directory fd every task acts below, and the device
//! boundary it sets.

use std::ffi::OsStr;
use std::fmt;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::Mode;
use rustix::io::Errno;

use crate::meta::{check_name, dir_flags, is_mount_root, stat_at, stat_fd};
use crate::JanitorError;

/// An open directory that a task acts below: opened with
/// `O_DIRECTORY|O_NOFOLLOW|O_CLOEXEC` (a symlinked root is refused), its
/// `st_dev` remembered (nothing on another device is ever entered).
///
/// `O_NOFOLLOW` guards the last component only: the caller vouches for the
/// directories above it (they are the daemon's own configuration).
pub struct Root {
    fd: OwnedFd,
    dev: u64,
    ino: u64,
    path: PathBuf,
}

impl Root {
    /// Opens the directory at `path`.
    pub fn open(path: &Path) -> Result<Root, JanitorError> {
        let fd = rustix::fs::open(path, dir_flags(), Mode::empty()).map_err(|e| match e {
            // With O_DIRECTORY a symlink fails as ENOTDIR, not ELOOP; look
            // again (without following) only to say which it was.
            Errno::LOOP | Errno::NOTDIR => not_a_dir(
                std::fs::symlink_metadata(path).ok().map(|m| m.is_symlink()),
                path,
            ),
            e => JanitorError::io("open", path, e),
        })?;
        let meta = stat_fd(&fd).map_err(|e| JanitorError::io("fstat", path, e))?;
        Ok(Root {
            fd,
            dev: meta.dev,
            ino: meta.ino,
            path: path.into(),
        })
    }

    /// Opens `name` (one component, no '/') below this root as a Root of its
    /// own, with the same rules (`O_NOFOLLOW`; refused if on another device or
    /// a mount root, bind mounts included). `Ok(None)` if it does not exist.
    pub fn open_child(&self, name: &OsStr) -> Result<Option<Root>, JanitorError> {
        check_name(name)?;
        let path = self.path.join(name);
        let fd = match rustix::fs::openat(&self.fd, name.as_bytes(), dir_flags(), Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => return Ok(None),
            Err(Errno::LOOP | Errno::NOTDIR) => {
                let is_link = stat_at(self.fd.as_fd(), name.as_bytes())
                    .ok()
                    .map(|m| m.file_type() == rustix::fs::FileType::Symlink);
                return Err(not_a_dir(is_link, &path));
            }
            Err(e) => return Err(JanitorError::io("open", path, e)),
        };
        let meta = stat_fd(&fd).map_err(|e| JanitorError::io("fstat", &path, e))?;
        if meta.dev != self.dev || is_mount_root(fd.as_fd()) {
            return Err(JanitorError::OtherDevice { path });
        }
        Ok(Some(Root {
            fd,
            dev: meta.dev,
            ino: meta.ino,
            path,
        }))
    }

    /// The path this root was opened by (for messages only).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The device everything below this root must be on.
    pub fn dev(&self) -> u64 {
        self.dev
    }

    /// The root directory's inode number.
    pub fn ino(&self) -> u64 {
        self.ino
    }

    /// The directory fd.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

fn not_a_dir(is_symlink: Option<bool>, path: &Path) -> JanitorError {
    if is_symlink == Some(true) {
        JanitorError::Symlink { path: path.into() }
    } else {
        JanitorError::NotADirectory { path: path.into() }
    }
}

impl AsFd for Root {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl fmt::Debug for Root {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Root")
            .field("path", &self.path)
            .field("dev", &self.dev)
            .field("ino", &self.ino)
            .finish_non_exhaustive()
    }
}

//! [`archive_dir`]: a directory tree into a `.tar.zst`, written atomically
//! (hidden temporary, fsync, no-replace rename), then the source removed —
//! only what went into the archive unchanged.
//!
//! Also the shared pieces for writing a file beside its final name: the
//! temporary-file guard, the no-replace rename, and the exact-length reader.

use std::collections::HashMap;
use std::ffi::{CStr, OsStr, OsString};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, RawDir, RenameFlags};
use rustix::io::Errno;

use crate::locks::{is_locked, LockTable};
use crate::meta::{
    check_name, open_dir_checked, round_up, stat_at, stat_fd, temp_name, Meta, OpenDir,
};
use crate::walk::{open_regular_checked, remove_top, Archived, Due, MAX_DEPTH};
use crate::{Action, ActionKind, JanitorError, Report, Root};

/// Archives directory `name` below `root` into `dest/<dest_name>` as a
/// zstd-compressed tar (level `level`, e.g. 3): regular files, directories and
/// symlinks (stored as symlinks, never followed), fifos and device nodes, with
/// modes, owners and mtimes (whole seconds) kept; sockets are dropped; mount
/// points are not entered (`skipped_mounts`).
///
/// If a lock is held on the directory or anything in it, nothing is archived
/// or removed (`skipped_locked`), as with [`crate::remove_entry`]. The archive
/// is written to a hidden temporary name in `dest`, fsynced, renamed into
/// place without replacing anything (an existing `dest_name` is
/// [`JanitorError::Exists`]), then the source tree is removed with
/// `remove_entry`'s rules — but only entries that went into the archive and
/// have not changed since (same inode and ctime); anything written meanwhile
/// stays. `bytes_freed` = source bytes − archive bytes (saturating), and the
/// report lists one [`ActionKind::Archive`] action.
///
/// On any error before the rename the temporary file is removed and the
/// source kept. A file that changes while it is read is such an error
/// ([`JanitorError::Changed`]): try again later. A dry run reads and
/// compresses everything into a counter, so its numbers are the real ones.
pub fn archive_dir(
    root: &Root,
    name: &OsStr,
    dest: &Root,
    dest_name: &OsStr,
    level: i32,
    dry_run: bool,
) -> Result<Report, JanitorError> {
    check_name(name)?;
    check_name(dest_name)?;
    let src_path = root.path().join(name);
    let dest_path = dest.path().join(dest_name);
    let meta =
        stat_at(root.fd(), name.as_bytes()).map_err(|e| JanitorError::io("stat", &src_path, e))?;
    match meta.file_type() {
        FileType::Directory => {}
        FileType::Symlink => return Err(JanitorError::Symlink { path: src_path }),
        _ => return Err(JanitorError::NotADirectory { path: src_path }),
    }
    if meta.dev != root.dev() {
        return Err(JanitorError::OtherDevice { path: src_path });
    }
    match stat_at(dest.fd(), dest_name.as_bytes()) {
        Ok(_) => return Err(JanitorError::Exists { path: dest_path }),
        Err(Errno::NOENT) => {}
        Err(e) => return Err(JanitorError::io("stat", &dest_path, e)),
    }

    // What removing it would do, and whether anything in it is locked.
    let scan = remove_top(root, name, Due::Always, true, 0);
    if scan.skipped_locked > 0 {
        tracing::info!(target: "aura_janitor", path = %src_path.display(), "locked inside; not archived");
        return Ok(Report {
            skipped_locked: scan.skipped_locked,
            ..Report::default()
        });
    }

    let cname = std::ffi::CString::new(name.as_bytes()).map_err(|_| JanitorError::InvalidName {
        name: name.to_string_lossy().into_owned(),
    })?;
    let fd = match open_dir_checked(root.fd(), &cname, &meta, root.dev()) {
        OpenDir::Opened(fd) => fd,
        OpenDir::Swapped => return Err(JanitorError::Changed { path: src_path }),
        OpenDir::OtherDevice => return Err(JanitorError::OtherDevice { path: src_path }),
        OpenDir::Failed(e) => return Err(JanitorError::io("open", &src_path, e)),
    };
    if is_locked(fd.as_fd()) {
        return Ok(Report {
            skipped_locked: 1,
            ..Report::default()
        });
    }
    let dest_meta = stat_fd(dest.fd()).map_err(|e| JanitorError::io("fstat", dest.path(), e))?;
    // Members are relative to the directory (`./out.mp4`): the archive unpacks into any directory
    // (`tar -xf <id>.tar.zst -C work/<id>`), and a member's path is the one the job's files API serves.
    let tar_root = PathBuf::from(".");

    if dry_run {
        let mut w = TreeWriter::new(root, Counter::default(), level, &src_path)?;
        w.dir(fd.as_fd(), &meta, &tar_root, 0)?;
        let counter = w.finish()?;
        let archive_bytes = round_up(counter.0, dest_meta.blksize);
        let saving = scan.bytes_freed.saturating_sub(archive_bytes);
        return Ok(Report {
            files_removed: scan.files_removed,
            dirs_removed: scan.dirs_removed,
            bytes_freed: saving,
            skipped_mounts: scan.skipped_mounts,
            errors: scan.errors,
            error_messages: scan.error_messages,
            actions: vec![archive_action(name, saving)],
            ..Report::default()
        });
    }

    let tmp = TempFile::create(dest, dest_name)?;
    let file = std::fs::File::from(tmp.dup()?);
    let mut w = TreeWriter::new(
        root,
        io::BufWriter::with_capacity(128 * 1024, file),
        level,
        &src_path,
    )?;
    w.dir(fd.as_fd(), &meta, &tar_root, 0)?;
    let archived = std::mem::take(&mut w.archived);
    let file = w.finish()?.into_inner().map_err(|e| JanitorError::Io {
        op: "write",
        path: tmp.path.clone(),
        source: e.into_error(),
    })?;
    rustix::fs::fsync(&file).map_err(|e| JanitorError::io("fsync", &tmp.path, e))?;
    let archive_meta = stat_fd(&file).map_err(|e| JanitorError::io("fstat", &tmp.path, e))?;
    drop(file);
    tmp.persist(dest_name)?;
    drop(fd);

    let removal = remove_top(root, name, Due::Archived(&archived), false, 0);
    let archive_bytes = round_up(archive_meta.size, dest_meta.blksize);
    let saving = removal.bytes_freed.saturating_sub(archive_bytes);
    tracing::info!(
        target: "aura_janitor",
        source = %src_path.display(),
        archive = %dest_path.display(),
        archive_bytes = archive_meta.size,
        saving,
        "archived"
    );
    Ok(Report {
        bytes_freed: saving,
        actions: vec![archive_action(name, saving)],
        ..removal
    })
}

fn archive_action(name: &OsStr, bytes: u64) -> Action {
    Action {
        path: name.to_string_lossy().into_owned(),
        kind: ActionKind::Archive,
        bytes,
    }
}

/// Counts what is written to it: the archive's size in a dry run.
#[derive(Default)]
pub(crate) struct Counter(pub u64);

impl Write for Counter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Writes one verified directory tree into a tar stream, fd-relative.
struct TreeWriter<'p, W: Write> {
    tar: tar::Builder<zstd::stream::write::Encoder<'static, W>>,
    root_dev: u64,
    locks: LockTable,
    src_path: &'p Path,
    archived: Archived,
}

impl<'p, W: Write> TreeWriter<'p, W> {
    fn new(root: &Root, out: W, level: i32, src_path: &'p Path) -> Result<Self, JanitorError> {
        let mut enc =
            zstd::stream::write::Encoder::new(out, level).map_err(|e| JanitorError::Io {
                op: "zstd init",
                path: src_path.into(),
                source: e,
            })?;
        enc.include_checksum(true).map_err(|e| JanitorError::Io {
            op: "zstd init",
            path: src_path.into(),
            source: e,
        })?;
        let tar = tar::Builder::new(enc);
        Ok(TreeWriter {
            tar,
            root_dev: root.dev(),
            locks: LockTable::read(),
            src_path,
            archived: HashMap::new(),
        })
    }

    fn err(&self, op: &'static str, tar_path: &Path, source: io::Error) -> JanitorError {
        JanitorError::Io {
            op,
            path: self.msg_path(tar_path),
            source,
        }
    }

    /// The source path for messages (`tar_path` is relative to the archived directory).
    fn msg_path(&self, tar_path: &Path) -> PathBuf {
        self.src_path.join(tar_path)
    }

    fn finish(self) -> Result<W, JanitorError> {
        let src: PathBuf = self.src_path.into();
        let enc = self.tar.into_inner().map_err(|e| JanitorError::Io {
            op: "write",
            path: src.clone(),
            source: e,
        })?;
        let mut out = enc.finish().map_err(|e| JanitorError::Io {
            op: "write",
            path: src.clone(),
            source: e,
        })?;
        out.flush().map_err(|e| JanitorError::Io {
            op: "write",
            path: src,
            source: e,
        })?;
        Ok(out)
    }

    fn header(meta: &Meta, kind: tar::EntryType) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(meta.perm());
        h.set_uid(u64::from(meta.uid));
        h.set_gid(u64::from(meta.gid));
        h.set_mtime(u64::try_from(meta.mtime.0).unwrap_or(0));
        h.set_size(0);
        h
    }

    /// Archives the verified directory `fd` (described by `meta`) as
    /// `tar_path` and everything below it.
    fn dir(
        &mut self,
        fd: BorrowedFd<'_>,
        meta: &Meta,
        tar_path: &Path,
        depth: usize,
    ) -> Result<(), JanitorError> {
        let mut h = Self::header(meta, tar::EntryType::Directory);
        self.tar
            .append_data(&mut h, tar_path, io::empty())
            .map_err(|e| self.err("write", tar_path, e))?;
        let mut buf: Vec<u8> = Vec::with_capacity(32 * 1024);
        let mut stream = RawDir::new(fd, buf.spare_capacity_mut());
        while let Some(ent) = stream.next() {
            let ent = ent.map_err(|e| self.err("readdir", tar_path, e.into()))?;
            let name = ent.file_name();
            if name == c"." || name == c".." {
                continue;
            }
            self.entry(fd, name, tar_path, depth)?;
        }
        Ok(())
    }

    fn entry(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &CStr,
        parent: &Path,
        depth: usize,
    ) -> Result<(), JanitorError> {
        let tar_path = parent.join(OsStr::from_bytes(name.to_bytes()));
        let meta = match stat_at(dir, name) {
            Ok(m) => m,
            Err(Errno::NOENT) => return Ok(()),
            Err(e) => return Err(self.err("stat", &tar_path, e.into())),
        };
        if meta.dev != self.root_dev {
            tracing::debug!(target: "aura_janitor", path = %tar_path.display(), "mount point not archived");
            return Ok(());
        }
        if self.locks.contains(meta.dev, meta.ino) {
            // Locked after the pre-scan: not archived, and so not removed.
            return Ok(());
        }
        match meta.file_type() {
            FileType::Directory => {
                let fd = match open_dir_checked(dir, name, &meta, self.root_dev) {
                    OpenDir::Opened(fd) => fd,
                    OpenDir::Swapped | OpenDir::OtherDevice => return Ok(()),
                    OpenDir::Failed(e) => return Err(self.err("open", &tar_path, e.into())),
                };
                if is_locked(fd.as_fd()) {
                    return Ok(());
                }
                if depth + 1 >= MAX_DEPTH {
                    return Err(JanitorError::TooDeep {
                        path: self.msg_path(&tar_path),
                        max: MAX_DEPTH,
                    });
                }
                self.dir(fd.as_fd(), &meta, &tar_path, depth + 1)
            }
            FileType::RegularFile => self.file(dir, name, &meta, &tar_path),
            FileType::Symlink => {
                let target = match rustix::fs::readlinkat(dir, name, Vec::new()) {
                    Ok(t) => t,
                    // Swapped for a non-link: left alone (not archived, not removed).
                    Err(Errno::NOENT | Errno::INVAL) => return Ok(()),
                    Err(e) => return Err(self.err("readlink", &tar_path, e.into())),
                };
                let mut h = Self::header(&meta, tar::EntryType::Symlink);
                self.tar
                    .append_link(&mut h, &tar_path, OsStr::from_bytes(target.as_bytes()))
                    .map_err(|e| self.err("write", &tar_path, e))?;
                self.archived.insert((meta.dev, meta.ino), meta.ctime);
                Ok(())
            }
            FileType::Fifo | FileType::CharacterDevice | FileType::BlockDevice => {
                let kind = match meta.file_type() {
                    FileType::Fifo => tar::EntryType::Fifo,
                    FileType::CharacterDevice => tar::EntryType::Char,
                    _ => tar::EntryType::Block,
                };
                let mut h = Self::header(&meta, kind);
                if kind != tar::EntryType::Fifo {
                    h.set_device_major(rustix::fs::major(meta.rdev))
                        .and_then(|()| h.set_device_minor(rustix::fs::minor(meta.rdev)))
                        .map_err(|e| self.err("write", &tar_path, e))?;
                }
                self.tar
                    .append_data(&mut h, &tar_path, io::empty())
                    .map_err(|e| self.err("write", &tar_path, e))?;
                self.archived.insert((meta.dev, meta.ino), meta.ctime);
                Ok(())
            }
            _ => {
                // A socket has no content worth keeping; its owner is gone by
                // the time a directory is archived.
                tracing::debug!(target: "aura_janitor", path = %tar_path.display(), "socket not archived");
                self.archived.insert((meta.dev, meta.ino), meta.ctime);
                Ok(())
            }
        }
    }

    fn file(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &CStr,
        meta: &Meta,
        tar_path: &Path,
    ) -> Result<(), JanitorError> {
        let fd = match open_regular_checked(dir, OsStr::from_bytes(name.to_bytes()), meta) {
            Ok(Some(fd)) => fd,
            Ok(None) => return Ok(()),
            Err(e) => return Err(self.err("open", tar_path, e.into())),
        };
        if is_locked(fd.as_fd()) {
            return Ok(());
        }
        let opened = stat_fd(&fd).map_err(|e| self.err("fstat", tar_path, e.into()))?;
        let mut h = Self::header(&opened, tar::EntryType::Regular);
        h.set_size(opened.size);
        let mut reader = ExactReader::new(std::fs::File::from(fd), opened.size);
        self.tar
            .append_data(&mut h, tar_path, &mut reader)
            .map_err(|e| self.err("read", tar_path, e))?;
        let after = stat_fd(&reader.inner).map_err(|e| self.err("fstat", tar_path, e.into()))?;
        if !after.unchanged(&opened) || after.ctime != opened.ctime {
            return Err(JanitorError::Changed {
                path: self.msg_path(tar_path),
            });
        }
        self.archived.insert((opened.dev, opened.ino), opened.ctime);
        Ok(())
    }
}

/// Reads exactly `len` bytes: a file that shrank while being read is an error
/// rather than a short (corrupt) tar member, and one that grew is cut at the
/// length its header says (the caller's re-stat catches that).
pub(crate) struct ExactReader<R> {
    pub inner: R,
    left: u64,
}

impl<R: Read> ExactReader<R> {
    pub fn new(inner: R, len: u64) -> Self {
        ExactReader { inner, left: len }
    }
}

impl<R: Read> Read for ExactReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = usize::try_from(self.left)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "file shrank while being read",
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// A hidden temporary file in a directory, removed on drop unless persisted.
pub(crate) struct TempFile<'d> {
    dir: &'d Root,
    name: OsString,
    fd: OwnedFd,
    pub path: PathBuf,
    persisted: bool,
}

impl<'d> TempFile<'d> {
    pub fn create(dir: &'d Root, final_name: &OsStr) -> Result<Self, JanitorError> {
        let name = temp_name(final_name);
        let path = dir.path().join(&name);
        let flags =
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = rustix::fs::openat(dir.fd(), name.as_bytes(), flags, Mode::from_raw_mode(0o600))
            .map_err(|e| JanitorError::io("create", &path, e))?;
        Ok(TempFile {
            dir,
            name,
            fd,
            path,
            persisted: false,
        })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// A second fd for a writer that wants to own one.
    pub fn dup(&self) -> Result<OwnedFd, JanitorError> {
        rustix::io::fcntl_dupfd_cloexec(&self.fd, 0)
            .map_err(|e| JanitorError::io("dup", &self.path, e))
    }

    /// Renames the (already fsynced) file to `final_name` without replacing
    /// anything, and fsyncs the directory so the name survives a crash.
    pub fn persist(mut self, final_name: &OsStr) -> Result<(), JanitorError> {
        let final_path = self.dir.path().join(final_name);
        let dfd = self.dir.fd();
        match rustix::fs::renameat_with(
            dfd,
            self.name.as_bytes(),
            dfd,
            final_name.as_bytes(),
            RenameFlags::NOREPLACE,
        ) {
            Ok(()) => {}
            Err(Errno::EXIST) => return Err(JanitorError::Exists { path: final_path }),
            // No RENAME_NOREPLACE on this file system: a hard link also never
            // replaces, then the temporary name goes.
            Err(Errno::INVAL | Errno::NOSYS) => {
                match rustix::fs::linkat(
                    dfd,
                    self.name.as_bytes(),
                    dfd,
                    final_name.as_bytes(),
                    AtFlags::empty(),
                ) {
                    Ok(()) => {}
                    Err(Errno::EXIST) => return Err(JanitorError::Exists { path: final_path }),
                    Err(e) => return Err(JanitorError::io("link", &final_path, e)),
                }
                if let Err(e) = rustix::fs::unlinkat(dfd, self.name.as_bytes(), AtFlags::empty()) {
                    tracing::warn!(target: "aura_janitor", path = %self.path.display(), "removing temporary name: {e}");
                }
            }
            Err(e) => return Err(JanitorError::io("rename", &final_path, e)),
        }
        self.persisted = true;
        rustix::fs::fsync(dfd).map_err(|e| JanitorError::io("fsync", self.dir.path(), e))?;
        Ok(())
    }
}

impl Drop for TempFile<'_> {
    fn drop(&mut self) {
        if self.persisted {
            return;
        }
        if let Err(e) = rustix::fs::unlinkat(self.dir.fd(), self.name.as_bytes(), AtFlags::empty())
        {
            tracing::warn!(target: "aura_janitor", path = %self.path.display(), "removing temporary file: {e}");
        }
    }
}

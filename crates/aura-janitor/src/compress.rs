//! [`compress_file`]: one regular file replaced by a `.zst` of itself,
//! atomically and only if the original did not change meanwhile.

use std::ffi::{OsStr, OsString};
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;

use rustix::fs::{AtFlags, FileType, Timespec, Timestamps};
use rustix::io::Errno;

use crate::archive::{Counter, ExactReader, TempFile};
use crate::locks::{is_locked, LockTable};
use crate::meta::{check_name, round_up, stat_at, stat_fd, Meta};
use crate::walk::open_regular_checked;
use crate::{Action, ActionKind, JanitorError, Report, Root};

/// Compresses regular file `name` in directory `dir` to `<name>.zst` (zstd at
/// `level`, with a content checksum), byte-identical on decompression, keeping
/// its mode, owner and mtime.
///
/// The `.zst` is written under a hidden temporary name, fsynced and renamed
/// into place without replacing anything (an existing `<name>.zst` is
/// [`JanitorError::Exists`]); then the original is unlinked only if it is
/// unchanged since it was read (same dev/ino/size/mtime) — otherwise the
/// `.zst` is removed, the original kept, and the report counts
/// `skipped_changed` (no error). A symlink or non-regular file is refused; a
/// locked file is skipped (`skipped_locked`). Returns the bytes saved in
/// `bytes_freed` and one [`ActionKind::Compress`] action. A dry run compresses
/// into a counter, so its numbers are the real ones.
pub fn compress_file(
    dir: &Root,
    name: &OsStr,
    level: i32,
    dry_run: bool,
) -> Result<Report, JanitorError> {
    check_name(name)?;
    let path = dir.path().join(name);
    let mut zst_name = OsString::from(name);
    zst_name.push(".zst");
    check_name(&zst_name)?;
    let zst_path = dir.path().join(&zst_name);

    let meta =
        stat_at(dir.fd(), name.as_bytes()).map_err(|e| JanitorError::io("stat", &path, e))?;
    match meta.file_type() {
        FileType::RegularFile => {}
        FileType::Symlink => return Err(JanitorError::Symlink { path }),
        _ => return Err(JanitorError::NotRegular { path }),
    }
    if meta.dev != dir.dev() {
        return Err(JanitorError::OtherDevice { path });
    }
    let locked = Report {
        skipped_locked: 1,
        ..Report::default()
    };
    if LockTable::read().contains(meta.dev, meta.ino) {
        return Ok(locked);
    }
    let fd = match open_regular_checked(dir.fd(), name, &meta) {
        Ok(Some(fd)) => fd,
        Ok(None) => return Err(JanitorError::Changed { path }),
        Err(e) => return Err(JanitorError::io("open", &path, e)),
    };
    if is_locked(fd.as_fd()) {
        return Ok(locked);
    }
    let opened = stat_fd(&fd).map_err(|e| JanitorError::io("fstat", &path, e))?;
    match stat_at(dir.fd(), zst_name.as_bytes()) {
        Ok(_) => return Err(JanitorError::Exists { path: zst_path }),
        Err(Errno::NOENT) => {}
        Err(e) => return Err(JanitorError::io("stat", &zst_path, e)),
    }
    let mut src = ExactReader::new(std::fs::File::from(fd), opened.size);
    let io_err = |op: &'static str, p: &std::path::Path| {
        let p = p.to_path_buf();
        move |source: io::Error| JanitorError::Io {
            op,
            path: p,
            source,
        }
    };

    let report_for = |compressed: u64| {
        let saving = opened
            .freed_by_unlink()
            .saturating_sub(round_up(compressed, opened.blksize));
        Report {
            bytes_freed: saving,
            actions: vec![Action {
                path: name.to_string_lossy().into_owned(),
                kind: ActionKind::Compress,
                bytes: saving,
            }],
            ..Report::default()
        }
    };

    if dry_run {
        let counter =
            encode(&mut src, Counter::default(), level).map_err(io_err("compress", &path))?;
        return Ok(report_for(counter.0));
    }

    let tmp = TempFile::create(dir, &zst_name)?;
    let out = std::fs::File::from(tmp.dup()?);
    let mut out = encode(
        &mut src,
        io::BufWriter::with_capacity(128 * 1024, out),
        level,
    )
    .map_err(io_err("compress", &path))?;
    out.flush().map_err(io_err("write", &tmp.path))?;
    drop(out);
    let after_read = stat_fd(&src.inner).map_err(|e| JanitorError::io("fstat", &path, e))?;
    if !after_read.unchanged(&opened) {
        return Ok(changed(&path));
    }
    restore_attrs(&tmp, &opened)?;
    rustix::fs::fsync(tmp.fd()).map_err(|e| JanitorError::io("fsync", &tmp.path, e))?;
    let compressed = stat_fd(tmp.fd())
        .map_err(|e| JanitorError::io("fstat", &tmp.path, e))?
        .size;
    tmp.persist(&zst_name)?;

    // The original goes only if it is still what was compressed.
    match stat_at(dir.fd(), name.as_bytes()) {
        Ok(now) if now.unchanged(&opened) => {}
        Ok(_) | Err(Errno::NOENT) => {
            if let Err(e) = rustix::fs::unlinkat(dir.fd(), zst_name.as_bytes(), AtFlags::empty()) {
                return Err(JanitorError::io("unlink", &zst_path, e));
            }
            return Ok(changed(&path));
        }
        Err(e) => return Err(JanitorError::io("stat", &path, e)),
    }
    match rustix::fs::unlinkat(dir.fd(), name.as_bytes(), AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => {}
        Err(e) => return Err(JanitorError::io("unlink", &path, e)),
    }
    tracing::debug!(target: "aura_janitor", path = %path.display(), compressed, "compressed");
    Ok(report_for(compressed))
}

fn changed(path: &std::path::Path) -> Report {
    tracing::info!(target: "aura_janitor", path = %path.display(), "changed while compressing; original kept");
    Report {
        skipped_changed: 1,
        ..Report::default()
    }
}

/// Gives the `.zst` the original's mode, owner and times.
fn restore_attrs(tmp: &TempFile<'_>, orig: &Meta) -> Result<(), JanitorError> {
    let fd = tmp.fd();
    // Owner first: chown clears setuid/setgid bits, chmod then restores them.
    match rustix::fs::fchown(
        fd,
        Some(rustix::fs::Uid::from_raw(orig.uid)),
        Some(rustix::fs::Gid::from_raw(orig.gid)),
    ) {
        Ok(()) => {}
        // Not root: the file stays ours, which is no reason to keep the original.
        Err(Errno::PERM) => {
            tracing::debug!(target: "aura_janitor", path = %tmp.path.display(), "cannot keep owner (EPERM)")
        }
        Err(e) => return Err(JanitorError::io("fchown", &tmp.path, e)),
    }
    rustix::fs::fchmod(fd, rustix::fs::Mode::from_raw_mode(orig.perm()))
        .map_err(|e| JanitorError::io("fchmod", &tmp.path, e))?;
    let ts = |(sec, nsec): (i64, u32)| Timespec {
        tv_sec: sec,
        tv_nsec: nsec.into(),
    };
    let times = Timestamps {
        last_access: ts(orig.atime),
        last_modification: ts(orig.mtime),
    };
    rustix::fs::futimens(fd, &times).map_err(|e| JanitorError::io("futimens", &tmp.path, e))
}

/// Compresses all of `src` into `out` (the same settings for a dry run's
/// counter as for the real file, so their sizes agree).
fn encode<W: Write>(src: &mut impl io::Read, out: W, level: i32) -> io::Result<W> {
    let mut enc = zstd::stream::write::Encoder::new(out, level)?;
    enc.include_checksum(true)?;
    io::copy(src, &mut enc)?;
    enc.finish()
}

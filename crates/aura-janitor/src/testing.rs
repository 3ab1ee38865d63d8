//! Test fixtures shared by this crate's tests and any other crate that wants
//! the same hostile tree: symlinks out of the root, lockable entries, a mount
//! point, and a snapshot to compare trees by. Not part of the stable API.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rustix::fs::{AtFlags, FlockOperation, Mode, OFlags, Timespec, Timestamps, CWD};

/// One day.
pub const DAY: Duration = Duration::from_secs(86_400);

/// Sets the mtime (and atime) of `path` itself, never of a symlink's target.
pub fn set_mtime(path: &Path, t: SystemTime) -> io::Result<()> {
    let d = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let ts = Timespec {
        tv_sec: i64::try_from(d.as_secs())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?,
        tv_nsec: d.subsec_nanos().into(),
    };
    let times = Timestamps {
        last_access: ts,
        last_modification: ts,
    };
    rustix::fs::utimensat(CWD, path, &times, AtFlags::SYMLINK_NOFOLLOW)?;
    Ok(())
}

/// Writes `data` to `path` and gives it mtime `t`.
pub fn write_file(path: &Path, data: &[u8], t: SystemTime) -> io::Result<()> {
    fs::write(path, data)?;
    set_mtime(path, t)
}

/// Creates directory `path` with mtime `t` (set it again after filling it:
/// adding entries bumps it).
pub fn make_dir(path: &Path, t: SystemTime) -> io::Result<()> {
    fs::create_dir_all(path)?;
    set_mtime(path, t)
}

/// Creates symlink `path` -> `target` with the link's own mtime `t`.
pub fn make_symlink(target: &Path, path: &Path, t: SystemTime) -> io::Result<()> {
    std::os::unix::fs::symlink(target, path)?;
    set_mtime(path, t)
}

/// One entry of a [`snapshot`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Node {
    /// A regular file: permission bits, contents, mtime in whole seconds.
    File {
        /// Permission bits.
        mode: u32,
        /// Contents.
        data: Vec<u8>,
        /// Mtime, whole seconds.
        mtime: i64,
    },
    /// A directory: permission bits and mtime in whole seconds.
    Dir {
        /// Permission bits.
        mode: u32,
        /// Mtime, whole seconds.
        mtime: i64,
    },
    /// A symlink and where it points (never followed).
    Symlink {
        /// The link's target as stored.
        target: PathBuf,
    },
    /// Anything else (fifo, socket, device): its permission bits.
    Other {
        /// Permission bits.
        mode: u32,
    },
}

/// Everything below `dir` (not `dir` itself), keyed by '/'-joined relative
/// path, without following symlinks or crossing into other mounts' contents
/// (a mount point shows as the mounted directory).
pub fn snapshot(dir: &Path) -> io::Result<BTreeMap<String, Node>> {
    let mut out = BTreeMap::new();
    snapshot_into(dir, "", &mut out)?;
    Ok(out)
}

fn snapshot_into(dir: &Path, prefix: &str, out: &mut BTreeMap<String, Node>) -> io::Result<()> {
    for ent in fs::read_dir(dir)? {
        let ent = ent?;
        let name = ent.file_name().to_string_lossy().into_owned();
        let rel = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        let path = ent.path();
        let md = fs::symlink_metadata(&path)?;
        let mode = md.permissions().mode() & 0o7777;
        let ft = md.file_type();
        let node = if ft.is_symlink() {
            Node::Symlink {
                target: fs::read_link(&path)?,
            }
        } else if ft.is_dir() {
            snapshot_into(&path, &rel, out)?;
            Node::Dir {
                mode,
                mtime: md.mtime(),
            }
        } else if ft.is_file() {
            Node::File {
                mode,
                data: fs::read(&path)?,
                mtime: md.mtime(),
            }
        } else {
            Node::Other { mode }
        };
        out.insert(rel, node);
    }
    Ok(())
}

/// The hostile tree: `root/` to be cleaned and `outside/` that must never be
/// touched, both below `base`.
#[derive(Debug)]
pub struct Fixture {
    /// The directory holding `root` and `outside`.
    pub base: PathBuf,
    /// The directory to clean.
    pub root: PathBuf,
    /// Targets of the symlinks out of the root; must survive anything.
    pub outside: PathBuf,
    /// The mtime of "old" entries (10 days ago).
    pub old: SystemTime,
    /// A cutoff between old and new (1 day ago).
    pub cutoff: SystemTime,
}

impl Fixture {
    /// Entries a sweep at `cutoff` removes while the [`Fixture::lock_all`]
    /// locks are held.
    pub const REMOVED: &'static [&'static str] = &[
        "empty_old",
        "link_dir",
        "link_file",
        "old_file",
        "old_tree",
        "old_tree/x",
        "old_tree/x/old_d",
        "sub/deeper",
        "sub/deeper/old_c",
        "sub/old_a",
    ];

    /// Entries that sweep keeps (while the locks are held).
    pub const KEPT: &'static [&'static str] = &[
        "empty_new",
        "locked_dir",
        "locked_dir/old_e",
        "locked_file",
        "new_file",
        "posix_locked_file",
        "sub",
        "sub/new_b",
    ];

    /// Builds the tree below `base` (which must exist and be empty).
    pub fn build(base: &Path) -> io::Result<Fixture> {
        let now = SystemTime::now();
        let old = now - 10 * DAY;
        let root = base.join("root");
        let outside = base.join("outside");

        make_dir(&outside.join("target_dir"), old)?;
        write_file(&outside.join("target_file"), b"precious file", old)?;
        write_file(&outside.join("target_dir/old_f"), b"precious f", old)?;
        write_file(&outside.join("target_dir/old_g"), b"precious g", old)?;
        set_mtime(&outside.join("target_dir"), old)?;
        make_dir(&outside.join("race_target"), old)?;
        for i in 0..5 {
            write_file(
                &outside.join(format!("race_target/old_{i}")),
                b"precious race",
                old,
            )?;
        }
        set_mtime(&outside.join("race_target"), old)?;
        set_mtime(&outside, old)?;

        fs::create_dir_all(&root)?;
        write_file(&root.join("old_file"), b"old", old)?;
        write_file(&root.join("new_file"), b"new", now)?;
        make_symlink(&outside.join("target_file"), &root.join("link_file"), old)?;
        make_symlink(&outside.join("target_dir"), &root.join("link_dir"), old)?;

        fs::create_dir_all(root.join("sub/deeper"))?;
        write_file(&root.join("sub/old_a"), b"a", old)?;
        write_file(&root.join("sub/new_b"), b"b", now)?;
        write_file(&root.join("sub/deeper/old_c"), b"c", old)?;
        set_mtime(&root.join("sub/deeper"), old)?;
        set_mtime(&root.join("sub"), old)?;

        make_dir(&root.join("empty_old"), old)?;
        make_dir(&root.join("empty_new"), now)?;

        fs::create_dir_all(root.join("old_tree/x"))?;
        write_file(&root.join("old_tree/x/old_d"), b"d", old)?;
        set_mtime(&root.join("old_tree/x"), old)?;
        set_mtime(&root.join("old_tree"), old)?;

        fs::create_dir_all(root.join("locked_dir"))?;
        write_file(&root.join("locked_dir/old_e"), b"e", old)?;
        set_mtime(&root.join("locked_dir"), old)?;
        write_file(&root.join("locked_file"), b"locked", old)?;
        write_file(&root.join("posix_locked_file"), b"posix locked", old)?;

        Ok(Fixture {
            base: base.to_path_buf(),
            root,
            outside,
            old,
            cutoff: now - DAY,
        })
    }

    /// Takes the fixture's locks: flock on `locked_dir` and `locked_file`, a
    /// POSIX (fcntl) lock on `posix_locked_file`. Held until the fds drop.
    pub fn lock_all(&self) -> io::Result<Vec<OwnedFd>> {
        Ok(vec![
            hold_flock(&self.root.join("locked_dir"))?,
            hold_flock(&self.root.join("locked_file"))?,
            hold_posix_lock(&self.root.join("posix_locked_file"))?,
        ])
    }
}

/// Opens `path` (file or directory) and holds an exclusive flock on it until
/// the returned fd is dropped.
pub fn hold_flock(path: &Path) -> io::Result<OwnedFd> {
    let fd = rustix::fs::open(path, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())?;
    rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive)?;
    Ok(fd)
}

/// Opens file `path` read-write and holds a POSIX (fcntl, process-owned)
/// write lock on all of it. Beware POSIX semantics: closing *any* fd of this
/// process on the file drops the lock.
pub fn hold_posix_lock(path: &Path) -> io::Result<OwnedFd> {
    let fd = rustix::fs::open(path, OFlags::RDWR | OFlags::CLOEXEC, Mode::empty())?;
    rustix::fs::fcntl_lock(&fd, FlockOperation::NonBlockingLockExclusive)?;
    Ok(fd)
}

/// A mount made by [`mount_tmpfs`] or [`bind_mount`], lazily unmounted on drop.
#[derive(Debug)]
pub struct MountGuard {
    path: PathBuf,
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        if let Err(e) = rustix::mount::unmount(&self.path, rustix::mount::UnmountFlags::DETACH) {
            eprintln!("unmounting {}: {e}", self.path.display());
        }
    }
}

/// Mounts a small tmpfs on the existing directory `path`. `Ok(None)` when not
/// permitted (EPERM: not root, or no CAP_SYS_ADMIN in a container).
pub fn mount_tmpfs(path: &Path) -> io::Result<Option<MountGuard>> {
    match rustix::mount::mount(
        c"tmpfs",
        path,
        c"tmpfs",
        rustix::mount::MountFlags::empty(),
        Some(c"size=16m"),
    ) {
        Ok(()) => Ok(Some(MountGuard {
            path: path.to_path_buf(),
        })),
        Err(rustix::io::Errno::PERM | rustix::io::Errno::ACCESS) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Bind-mounts directory `source` on the existing directory `target` (same
/// file system, so the same `st_dev`). `Ok(None)` when not permitted.
pub fn bind_mount(source: &Path, target: &Path) -> io::Result<Option<MountGuard>> {
    match rustix::mount::mount_bind(source, target) {
        Ok(()) => Ok(Some(MountGuard {
            path: target.to_path_buf(),
        })),
        Err(rustix::io::Errno::PERM | rustix::io::Errno::ACCESS) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Builds `dirs` directories `d0000..` below `root`, each with `files` small
/// files, every entry with mtime `t` (the benchmark's tree).
pub fn build_flat_tree(root: &Path, dirs: usize, files: usize, t: SystemTime) -> io::Result<()> {
    for d in 0..dirs {
        let dir = root.join(format!("d{d:04}"));
        fs::create_dir_all(&dir)?;
        for f in 0..files {
            write_file(&dir.join(format!("f{f:05}")), b"x", t)?;
        }
        set_mtime(&dir, t)?;
    }
    Ok(())
}

/// What runs right before the walk re-checks an entry it decided to remove (`path`: the entry as
/// messages name it): the seam through which a test changes the entry in exactly that window. Unset
/// (the daemon never sets it), the walk pays one relaxed atomic load per removal.
type Hook = Box<dyn Fn(&Path) + Send + Sync>;

static HOOK_SET: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
static HOOK: std::sync::Mutex<Option<Hook>> = std::sync::Mutex::new(None);

/// Sets (or, with `None`, clears) the hook run before each re-check. Process-wide: a test that sets it
/// runs alone in its binary.
pub fn set_before_recheck(hook: Option<Hook>) {
    let mut slot = HOOK.lock().unwrap_or_else(|p| p.into_inner());
    HOOK_SET.store(hook.is_some(), std::sync::atomic::Ordering::SeqCst);
    *slot = hook;
}

pub(crate) fn before_recheck(path: &Path) {
    if !HOOK_SET.load(std::sync::atomic::Ordering::Relaxed) {
        return;
    }
    if let Some(hook) = HOOK.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
        hook(path);
    }
}

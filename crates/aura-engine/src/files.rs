//! Files in and out over the API: uploads streamed into `uploads/` under the SHA-256 of their content
//! (`UploadSink`), and a job's files — its working directory `work/<id>/`, or the archive the janitor
//! made of it, `archive/work/<id>.tar.zst` — listed and read (`list`, `open`). All of the API's file
//! I/O is here, on blocking threads; the server only moves bytes.
//!
//! A job's directory is written by the job, so any name in it may be a symlink, or become one between a
//! look and an open: nothing here follows one. The listing walks directory fds (`openat` with
//! `O_NOFOLLOW`, `statat` without following); a download opens its path beneath the job's directory fd
//! with `openat2` (`RESOLVE_BENEATH | NO_SYMLINKS | NO_MAGICLINKS | NO_XDEV`), or one component at a time
//! with `O_NOFOLLOW` on kernels without it, and serves regular files only.

use crate::EngineError;
use aura_model::files::{
    FileEntry, FileKind, FilesSource, JobFiles, UploadId, UploadInfo, MAX_LISTED_FILES,
};
use aura_model::{Job, JobId, Timestamp};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

/// What `POST /api/uploads` accepts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UploadConfig {
    /// The largest upload, in bytes (a client may ask for less with its own cap). Default: 16 GiB.
    pub max_bytes: u64,
    /// Bytes an upload must leave free on the data dir's volume: one that would take them is refused
    /// (507) before a byte is written when its size is declared, else as soon as it gets there.
    /// Default: 256 MiB.
    pub min_free_bytes: u64,
}

impl Default for UploadConfig {
    fn default() -> Self {
        UploadConfig {
            max_bytes: 16 << 30,
            min_free_bytes: 256 << 20,
        }
    }
}

/// An upload is written (and hashed) on a blocking thread once this much of it has arrived: one hop per
/// MiB, and at most this much held in memory per upload.
const WRITE_CHUNK: usize = 1 << 20;
/// The most bytes one piece of a download carries.
const READ_CHUNK: usize = 256 << 10;
/// Pieces of an archived file decompressed ahead of a client that has not taken them yet.
const ARCHIVE_AHEAD: usize = 4;
/// Archived files served at once. Each holds a blocking thread for as long as its client reads (the
/// archive is one zstd stream, read in order), so a few slow clients must not take the blocking pool the
/// store's reads run on; more downloads wait for a turn.
pub(crate) const MAX_ARCHIVE_READERS: usize = 8;
/// Directory levels the listing descends; deeper ones are listed, not entered (and the listing says it
/// is truncated). Each level holds one directory fd.
const MAX_DEPTH: usize = 32;
/// The longest path of a job's file that is looked up (Linux's `PATH_MAX`).
const MAX_PATH: usize = 4096;

/// The engine's error for an I/O failure on `path`.
fn io_error(path: &Path) -> impl Fn(std::io::Error) -> EngineError + '_ {
    move |source| EngineError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The engine's error for a blocking task that panicked or was cancelled.
fn joined(context: &'static str) -> impl Fn(tokio::task::JoinError) -> EngineError {
    move |e| EngineError::internal(context, e)
}

/// Bytes available to unprivileged writers on the volume of `fd`.
fn available(fd: impl AsFd) -> std::io::Result<u64> {
    let vfs = rustix::fs::fstatvfs(fd)?;
    Ok(vfs.f_bavail.saturating_mul(vfs.f_frsize))
}

/// Whether `e` says the volume (or the daemon's quota on it) is full.
fn is_full(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(code) if code == libc::ENOSPC || code == libc::EDQUOT)
}

// ---------------------------------------------------------------------------------------------------
// Uploads

/// An upload on its way into `uploads/`: bytes are appended with [`write`](Self::write) as they arrive,
/// hashed as they are written, and [`finish`](Self::finish) files them under their SHA-256. Dropped
/// unfinished — a refusal, a client that went away, a failed write — it removes its partial file.
pub struct UploadSink {
    /// The partial file and the hash of what it holds; `None` once a write failed.
    writing: Option<Writing>,
    /// What arrived since the last write, up to `WRITE_CHUNK`.
    pending: Vec<u8>,
    /// The write of the chunk before `pending`, under way on a blocking thread while the next one
    /// arrives (receiving overlaps hashing and writing); it hands back `Writing` and its emptied buffer.
    in_flight: Option<ChunkWrite>,
    /// Bytes received so far.
    received: u64,
    /// The cap that applies to this upload.
    max: u64,
    /// Bytes the volume must keep free.
    min_free: u64,
    /// `uploads/`.
    root: PathBuf,
    partial: Partial,
}

struct Writing {
    file: std::fs::File,
    hash: Sha256,
}

/// A chunk being hashed and written on a blocking thread: it hands back `Writing` and the emptied buffer.
type ChunkWrite = tokio::task::JoinHandle<Result<(Writing, Vec<u8>), EngineError>>;

/// The partial file's name, removed on drop unless the upload was filed.
struct Partial {
    path: Option<PathBuf>,
}

impl Drop for Partial {
    fn drop(&mut self) {
        if let Some(path) = self.path.take() {
            // Drop cannot await: one unlink of one file, blocking for a few microseconds, is what it
            // costs to leave no partial file behind whatever ended the upload (also a cancelled handler,
            // where no task would run a deferred removal for certain before the client looks again).
            if let Err(e) = std::fs::remove_file(&path) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(path = %path.display(), error = %e, "cannot remove a partial upload");
                }
            }
        }
    }
}

impl UploadSink {
    /// Starts an upload into `root` of at most `max` bytes (`declared`: the size the client announced),
    /// refused at once when that is over the cap or the volume has no room for it and `min_free`
    /// besides. Blocking.
    pub(crate) fn begin(
        root: &Path,
        declared: Option<u64>,
        max: u64,
        min_free: u64,
    ) -> Result<UploadSink, EngineError> {
        if let Some(len) = declared.filter(|&len| len > max) {
            tracing::debug!(len, max, "upload over the cap refused before its body");
            return Err(EngineError::UploadTooLarge { max });
        }
        let io = io_error(root);
        // Made at start-up, the daemon's alone (a job reaches its input through a hard link in its own
        // directory, never through `uploads/`); made here only should it have been removed since.
        std::fs::create_dir_all(root).map_err(&io)?;
        let dir = std::fs::File::open(root).map_err(&io)?;
        let free = available(&dir).map_err(&io)?;
        let needed = declared.unwrap_or(0).saturating_add(min_free);
        if free < needed {
            return Err(EngineError::InsufficientStorage {
                available: free,
                needed: Some(needed),
            });
        }
        let path = root.join(partial_name());
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io_error(&path))?;
        let partial = Partial {
            path: Some(path.clone()),
        };
        // Readable by every account (the daemon's umask is 077): jobs running as another account read
        // their inputs through hard links to this very inode.
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o644))
            .map_err(io_error(&path))?;
        Ok(UploadSink {
            writing: Some(Writing {
                file,
                hash: Sha256::new(),
            }),
            pending: Vec::with_capacity(WRITE_CHUNK),
            in_flight: None,
            received: 0,
            max,
            min_free,
            root: root.to_path_buf(),
            partial,
        })
    }

    /// Bytes received so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Appends `data`: refused once the upload goes over its cap (413) or the volume is full (507).
    pub async fn write(&mut self, mut data: &[u8]) -> Result<(), EngineError> {
        let total = self.received.saturating_add(data.len() as u64);
        if total > self.max {
            self.writing = None;
            self.in_flight = None;
            return Err(EngineError::UploadTooLarge { max: self.max });
        }
        self.received = total;
        while !data.is_empty() {
            let take = (WRITE_CHUNK - self.pending.len()).min(data.len());
            self.pending.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.pending.len() >= WRITE_CHUNK {
                self.flush().await?;
            }
        }
        Ok(())
    }

    /// Waits for the chunk under way, if any, and takes its `Writing` and buffer back.
    async fn settle(&mut self) -> Result<Option<Vec<u8>>, EngineError> {
        let Some(in_flight) = self.in_flight.take() else {
            return Ok(None);
        };
        let (writing, buffer) = in_flight
            .await
            .map_err(joined("writing an upload on a blocking thread"))??;
        self.writing = Some(writing);
        Ok(Some(buffer))
    }

    /// Hands what is pending to a blocking thread to hash and write, after the chunk before it; the
    /// next chunk is received meanwhile (two buffers, no more).
    async fn flush(&mut self) -> Result<(), EngineError> {
        let spare = self.settle().await?;
        let mut writing = self.writing.take().ok_or_else(|| {
            EngineError::internal(
                "writing an upload",
                std::io::Error::other("an earlier write failed"),
            )
        })?;
        let spare = spare.unwrap_or_else(|| Vec::with_capacity(WRITE_CHUNK));
        let mut pending = std::mem::replace(&mut self.pending, spare);
        let min_free = self.min_free;
        let path = self.partial.path.clone().unwrap_or_default();
        self.in_flight = Some(tokio::task::spawn_blocking(move || {
            writing.append(&pending, &path, min_free)?;
            pending.clear();
            Ok::<_, EngineError>((writing, pending))
        }));
        Ok(())
    }

    /// Writes what is left, syncs it and files it as `uploads/<sha256>`; an upload of content already
    /// there leaves that file (its modification time renewed, which keeps it from clean-up) and says
    /// `existing`.
    pub async fn finish(mut self) -> Result<UploadInfo, EngineError> {
        self.settle().await?;
        let Some(mut writing) = self.writing.take() else {
            return Err(EngineError::internal(
                "finishing an upload",
                std::io::Error::other("an earlier write failed"),
            ));
        };
        let pending = std::mem::take(&mut self.pending);
        let (root, size, min_free) = (self.root.clone(), self.received, self.min_free);
        let partial = self.partial.path.clone().unwrap_or_default();
        let info = tokio::task::spawn_blocking(move || {
            writing.append(&pending, &partial, min_free)?;
            writing.file_as(&root, &partial, size)
        })
        .await
        .map_err(joined("filing an upload on a blocking thread"))??;
        // Filed: the partial name is gone (renamed or removed).
        self.partial.path = None;
        Ok(info)
    }
}

impl Writing {
    /// Hashes and writes `data` to the partial file at `path`; then the volume must still keep
    /// `min_free` (what an upload of undeclared size is held to as it comes). Blocking.
    fn append(&mut self, data: &[u8], path: &Path, min_free: u64) -> Result<(), EngineError> {
        if data.is_empty() {
            return Ok(());
        }
        self.hash.update(data);
        if let Err(e) = self.file.write_all(data) {
            return Err(if is_full(&e) {
                EngineError::InsufficientStorage {
                    available: available(&self.file).unwrap_or(0),
                    needed: None,
                }
            } else {
                io_error(path)(e)
            });
        }
        let free = available(&self.file).map_err(io_error(path))?;
        if free < min_free {
            return Err(EngineError::InsufficientStorage {
                available: free,
                needed: Some(min_free),
            });
        }
        Ok(())
    }

    /// Syncs the partial file at `partial` and files it in `root` under its hash. Blocking.
    fn file_as(self, root: &Path, partial: &Path, size: u64) -> Result<UploadInfo, EngineError> {
        let io = io_error(partial);
        self.file.sync_all().map_err(|e| {
            if is_full(&e) {
                EngineError::InsufficientStorage {
                    available: 0,
                    needed: None,
                }
            } else {
                io(e)
            }
        })?;
        use std::os::unix::fs::PermissionsExt;
        // Content-addressed: nobody may change it under its name.
        self.file
            .set_permissions(std::fs::Permissions::from_mode(0o444))
            .map_err(&io)?;
        drop(self.file);
        let id = UploadId::from_digest(&self.hash.finalize().into());
        let target = root.join(id.as_str());
        // A hard link, not a rename: it refuses to replace a name that exists, on every file system
        // that has hard links (which inputs need anyway), so two uploads of the same content racing
        // each other both end well.
        let existing = match std::fs::hard_link(partial, &target) {
            Ok(()) => false,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => true,
            Err(e) => return Err(io_error(&target)(e)),
        };
        std::fs::remove_file(partial).map_err(&io)?;
        if existing {
            // Uploaded again: fresh, as far as clean-up by age is concerned.
            let touched = std::fs::File::open(&target)
                .and_then(|f| f.set_modified(std::time::SystemTime::now()));
            if let Err(e) = touched {
                tracing::warn!(path = %target.display(), error = %e, "cannot renew an upload's modification time");
            }
        } else {
            // The new name must survive a crash as the content did.
            std::fs::File::open(root)
                .and_then(|d| d.sync_all())
                .map_err(io_error(root))?;
        }
        tracing::debug!(upload = %id, size, existing, "upload stored");
        Ok(UploadInfo {
            id,
            size,
            stored_at: Timestamp::now(),
            existing,
        })
    }
}

/// A name for a partial upload no other upload of any daemon on this data dir uses: pid, a counter and
/// the time (it is opened with `O_EXCL` all the same).
fn partial_name() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        ".partial-{}-{}-{nanos:08x}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

// ---------------------------------------------------------------------------------------------------
// A job's files

/// Where a job's files are.
pub(crate) enum Place {
    /// Its working directory, `work/<id>/`.
    Work(PathBuf),
    /// The janitor's archive of it, `archive/work/<id>.tar.zst`.
    Archive(PathBuf),
}

/// Where `job`'s files are: its directory under `work_root`, else its archive under `archive_root`;
/// `NoFiles` saying why there are none. Blocking.
pub(crate) fn locate(
    job: &Job,
    work_root: &Path,
    archive_root: &Path,
) -> Result<Place, EngineError> {
    let no_files = |reason: String| EngineError::NoFiles { id: job.id, reason };
    if let Some(cwd) = &job.spec.cwd {
        return Err(no_files(format!(
            "it runs in its own working directory {}, outside the data dir, whose files are not \
             served",
            cwd.display()
        )));
    }
    let work = work_root.join(job.id.to_string());
    if std::fs::symlink_metadata(&work).is_ok_and(|m| m.is_dir()) {
        return Ok(Place::Work(work));
    }
    let archive = archive_root
        .join(crate::retention::ARCHIVED_WORK)
        .join(crate::retention::archived_name(job.id));
    if std::fs::symlink_metadata(&archive).is_ok_and(|m| m.is_file()) {
        return Ok(Place::Archive(archive));
    }
    Err(no_files(if job.state.run().is_none() {
        "it has not run".to_owned()
    } else {
        "its working directory is gone (it was left empty, or removed and not archived)".to_owned()
    }))
}

/// Lists `place`, the files of job `id`. Blocking.
pub(crate) fn list(id: JobId, place: &Place) -> Result<JobFiles, EngineError> {
    let mut files = Vec::new();
    let (source, truncated) = match place {
        Place::Work(dir) => {
            let fd = open_dir(dir).map_err(|e| io_error(dir)(e.into()))?;
            let truncated = walk(&fd, "", 0, &mut files).map_err(io_error(dir))?;
            (FilesSource::Work, truncated)
        }
        Place::Archive(archive) => {
            let truncated = list_archive(archive, &mut files).map_err(io_error(archive))?;
            (FilesSource::Archive, truncated)
        }
    };
    Ok(JobFiles {
        job: id,
        source,
        files,
        truncated,
    })
}

/// Opens a directory without following a symlink in its last component.
fn open_dir(path: &Path) -> rustix::io::Result<OwnedFd> {
    rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// What `stat` says a file is.
fn kind_of(stat: &rustix::fs::Stat) -> FileKind {
    match FileType::from_raw_mode(stat.st_mode) {
        FileType::RegularFile => FileKind::File,
        FileType::Directory => FileKind::Dir,
        FileType::Symlink => FileKind::Symlink,
        _ => FileKind::Other,
    }
}

/// A `stat`'s modification time.
fn modified(stat: &rustix::fs::Stat) -> Timestamp {
    let nanos = i128::from(stat.st_mtime) * 1_000_000_000 + i128::from(stat.st_mtime_nsec);
    Timestamp::from_unix_millis(i64::try_from(nanos / 1_000_000).unwrap_or(i64::MAX))
}

/// Appends the entries of directory `dir` (named `prefix` relative to the job's directory) to `out`,
/// depth first, names in byte order, never following a symlink; returns whether anything was left out
/// (`MAX_LISTED_FILES`, `MAX_DEPTH`). An entry that vanishes while it is looked at is left out.
fn walk(
    dir: &OwnedFd,
    prefix: &str,
    depth: usize,
    out: &mut Vec<FileEntry>,
) -> std::io::Result<bool> {
    let mut names = Vec::new();
    let mut truncated = false;
    for entry in rustix::fs::Dir::read_from(dir)? {
        let name = entry?.file_name().to_owned();
        if matches!(name.to_bytes(), b"." | b"..") {
            continue;
        }
        // Held in memory to be sorted: no more than a listing can show (then sorted among themselves).
        if names.len() >= MAX_LISTED_FILES {
            truncated = true;
            break;
        }
        names.push(name);
    }
    names.sort();
    for name in names {
        if out.len() >= MAX_LISTED_FILES {
            return Ok(true);
        }
        let stat = match rustix::fs::statat(dir, &name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) => stat,
            Err(Errno::NOENT) => continue,
            Err(e) => return Err(e.into()),
        };
        let kind = kind_of(&stat);
        let path = format!("{prefix}{}", name.to_string_lossy());
        out.push(FileEntry {
            path: path.clone(),
            kind,
            size: if kind == FileKind::File {
                u64::try_from(stat.st_size).unwrap_or(0)
            } else {
                0
            },
            modified: modified(&stat),
        });
        if kind != FileKind::Dir {
            continue;
        }
        if depth + 1 >= MAX_DEPTH {
            truncated = true;
            continue;
        }
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        match rustix::fs::openat(dir, &name, flags, Mode::empty()) {
            Ok(sub) => truncated |= walk(&sub, &format!("{path}/"), depth + 1, out)?,
            // Gone, or swapped for a symlink or a file since the `statat`: not listed beyond its name.
            Err(Errno::NOENT | Errno::LOOP | Errno::NOTDIR) => {}
            // A directory the job made unreadable to the daemon: listed, its entries not.
            Err(Errno::ACCESS) => truncated = true,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(truncated)
}

/// A member's path as the archive stores it, relative to the job's directory: `./` prefixes and a
/// directory's trailing `/` taken off; `None` for the directory itself and for a path that would not
/// stay inside it (absolute, `..`), which the janitor never writes.
fn member_path(raw: &[u8]) -> Option<String> {
    let mut text = String::from_utf8_lossy(raw).into_owned();
    while let Some(rest) = text.strip_prefix("./") {
        text = rest.to_owned();
    }
    let text = text.trim_end_matches('/');
    let inside = !text.is_empty()
        && text != "."
        && !text.starts_with('/')
        && text
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..");
    inside.then(|| text.to_owned())
}

/// What a tar header says a member is.
fn member_kind(kind: tar::EntryType) -> FileKind {
    match kind {
        tar::EntryType::Regular | tar::EntryType::Continuous => FileKind::File,
        tar::EntryType::Directory => FileKind::Dir,
        tar::EntryType::Symlink => FileKind::Symlink,
        _ => FileKind::Other,
    }
}

/// A `.tar.zst` archive, read from its start.
fn open_archive(
    path: &Path,
) -> std::io::Result<tar::Archive<zstd::Decoder<'static, std::io::BufReader<std::fs::File>>>> {
    let file = std::fs::File::open(path)?;
    Ok(tar::Archive::new(zstd::Decoder::new(file)?))
}

/// Appends the members of `archive` to `out` (the first `MAX_LISTED_FILES` in archive order, then
/// sorted as a walk of the directory would list them); returns whether any were left out.
fn list_archive(archive: &Path, out: &mut Vec<FileEntry>) -> std::io::Result<bool> {
    let mut tar = open_archive(archive)?;
    let mut truncated = false;
    for entry in tar.entries()? {
        let entry = entry?;
        let Some(path) = member_path(&entry.path_bytes()) else {
            continue;
        };
        if out.len() >= MAX_LISTED_FILES {
            truncated = true;
            break;
        }
        let header = entry.header();
        let kind = member_kind(header.entry_type());
        let mtime = header.mtime().unwrap_or(0);
        out.push(FileEntry {
            path,
            kind,
            size: if kind == FileKind::File {
                entry.size()
            } else {
                0
            },
            modified: Timestamp::from_unix_millis(
                i64::try_from(mtime)
                    .unwrap_or(i64::MAX / 1000)
                    .saturating_mul(1000),
            ),
        });
    }
    // Depth first, names in byte order: by components, so that `a/b` comes before `a.txt`.
    out.sort_by(|a, b| a.path.split('/').cmp(b.path.split('/')));
    Ok(truncated)
}

/// Checks the path of a job's file as a client names it: relative, `/`-separated, no empty, `.` or
/// `..` component, no NUL. Pure.
pub(crate) fn check_path(path: &str) -> Result<(), &'static str> {
    if path.is_empty() {
        return Err("an empty path");
    }
    if path.len() > MAX_PATH {
        return Err("a path over 4096 bytes");
    }
    if path.contains('\0') {
        return Err("a NUL byte in the path");
    }
    if path.starts_with('/') {
        return Err("an absolute path");
    }
    for component in path.split('/') {
        match component {
            "" => return Err("an empty path component"),
            "." => return Err("a '.' path component"),
            ".." => return Err("a '..' path component: it would leave the job's directory"),
            _ => {}
        }
    }
    Ok(())
}

/// One of a job's files, opened: what it is, and its bytes through [`read`](Self::read).
pub struct JobFile {
    /// Bytes.
    pub size: u64,
    /// Its modification time.
    pub modified: Timestamp,
    /// Whether it comes from the job's directory or its archive.
    pub source: FilesSource,
    /// Changes whenever its content may have: size, modification time and inode (of the file, or of
    /// the archive), as hex. For validators (`ETag`).
    pub tag: String,
    content: Content,
}

enum Content {
    /// The open file.
    Work(std::fs::File),
    /// A reader thread stopped at the member: it decompresses the range sent to it into `data`.
    Archive {
        range: oneshot::Sender<(u64, u64)>,
        data: mpsc::Receiver<std::io::Result<Vec<u8>>>,
    },
}

impl std::fmt::Debug for JobFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobFile")
            .field("size", &self.size)
            .field("modified", &self.modified)
            .field("source", &self.source)
            .field("tag", &self.tag)
            .finish_non_exhaustive()
    }
}

impl JobFile {
    /// Its bytes from `start` to `end` (exclusive; both clamped to `size`), piece by piece.
    pub fn read(self, start: u64, end: u64) -> FileReader {
        let end = end.min(self.size);
        let start = start.min(end);
        FileReader {
            inner: match self.content {
                Content::Work(file) => Reader::Work {
                    file: tokio::fs::File::from_std(file),
                    seek_to: Some(start),
                    remaining: end - start,
                },
                Content::Archive { range, data } => {
                    // The thread ends at once if this fails: it waits for the range or its sender's drop.
                    let _ = range.send((start, end));
                    Reader::Archive(data)
                }
            },
        }
    }
}

/// The bytes of a range of a job's file, as they are read.
pub struct FileReader {
    inner: Reader,
}

enum Reader {
    Work {
        file: tokio::fs::File,
        seek_to: Option<u64>,
        remaining: u64,
    },
    Archive(mpsc::Receiver<std::io::Result<Vec<u8>>>),
}

impl FileReader {
    /// The next piece of the range (at most 256 KiB), `None` once it was all read. A file that shrank
    /// under the reader ends in an `UnexpectedEof` error, so that the client sees a cut answer rather
    /// than a short one.
    pub async fn next_chunk(&mut self) -> Option<std::io::Result<Vec<u8>>> {
        match &mut self.inner {
            Reader::Work {
                file,
                seek_to,
                remaining,
            } => {
                use tokio::io::{AsyncReadExt, AsyncSeekExt};
                if *remaining == 0 {
                    return None;
                }
                if let Some(start) = seek_to.take() {
                    if let Err(e) = file.seek(std::io::SeekFrom::Start(start)).await {
                        return Some(Err(e));
                    }
                }
                let mut buf =
                    vec![0; READ_CHUNK.min(usize::try_from(*remaining).unwrap_or(READ_CHUNK))];
                match file.read(&mut buf).await {
                    Ok(0) => {
                        *remaining = 0;
                        Some(Err(std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            "the file shrank while it was read",
                        )))
                    }
                    Ok(n) => {
                        buf.truncate(n);
                        *remaining -= n as u64;
                        Some(Ok(buf))
                    }
                    Err(e) => Some(Err(e)),
                }
            }
            Reader::Archive(data) => data.recv().await,
        }
    }
}

/// Opens `path` among the files at `place`: a regular file in the job's directory, reached without
/// passing a symlink, or a regular member of its archive. For an archive it waits for a turn among
/// `archive_readers` (none: no limit), starts the reader thread and waits until it found the member.
pub(crate) async fn open(
    id: JobId,
    place: Place,
    path: String,
    archive_readers: Option<Arc<Semaphore>>,
) -> Result<JobFile, EngineError> {
    match place {
        Place::Work(dir) => tokio::task::spawn_blocking(move || open_work(id, &dir, &path))
            .await
            .map_err(joined("opening a job's file on a blocking thread"))?,
        Place::Archive(archive) => {
            let permit = match archive_readers {
                Some(readers) => Some(readers.acquire_owned().await.map_err(|e| {
                    EngineError::internal("waiting for a turn to read an archive", e)
                })?),
                None => None,
            };
            open_archived(id, archive, path, permit).await
        }
    }
}

/// The refusal of `path` for `reason`.
fn refused(path: &str, reason: &'static str) -> EngineError {
    EngineError::PathRefused {
        path: path.chars().take(200).collect(),
        reason,
    }
}

/// Opens `path` beneath the job directory `dir`. Blocking.
fn open_work(id: JobId, dir: &Path, path: &str) -> Result<JobFile, EngineError> {
    let not_found = || EngineError::FileNotFound {
        id,
        path: path.chars().take(200).collect(),
    };
    let root = open_dir(dir).map_err(|e| io_error(dir)(e.into()))?;
    let fd = match open_beneath(&root, path) {
        Ok(fd) => fd,
        Err(Refusal::NotFound) => return Err(not_found()),
        Err(Refusal::Symlink) => return Err(refused(path, "symlink")),
        Err(Refusal::Outside) => return Err(refused(path, "outside the job's directory")),
        Err(Refusal::Io(e)) => return Err(io_error(&dir.join(path))(e.into())),
    };
    let stat = rustix::fs::fstat(&fd).map_err(|e| io_error(&dir.join(path))(e.into()))?;
    match kind_of(&stat) {
        FileKind::File => {}
        FileKind::Dir => {
            return Err(refused(
                path,
                "a directory (GET /api/jobs/{id}/files lists what is in it)",
            ))
        }
        _ => return Err(refused(path, "not a regular file")),
    }
    let size = u64::try_from(stat.st_size).unwrap_or(0);
    Ok(JobFile {
        size,
        modified: modified(&stat),
        source: FilesSource::Work,
        tag: format!(
            "{size:x}-{:x}.{:x}-{:x}",
            stat.st_mtime, stat.st_mtime_nsec, stat.st_ino
        ),
        content: Content::Work(std::fs::File::from(fd)),
    })
}

/// Why a path beneath a job's directory was not opened.
#[derive(Debug, PartialEq, Eq)]
enum Refusal {
    NotFound,
    Symlink,
    Outside,
    Io(Errno),
}

/// The flags a job's file is opened with: read only, never a symlink as its last component, and no
/// wait for a writer should it be a FIFO (it is refused once opened).
fn file_flags() -> OFlags {
    OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY
}

/// Opens `path` (checked by `check_path`) beneath `root` with `openat2`, which refuses a symlink
/// anywhere on the way and any step outside `root`; on a kernel without it (before 5.6, or a seccomp
/// filter that hides it), one component at a time.
fn open_beneath(root: &OwnedFd, path: &str) -> Result<OwnedFd, Refusal> {
    let resolve = ResolveFlags::BENEATH
        | ResolveFlags::NO_SYMLINKS
        | ResolveFlags::NO_MAGICLINKS
        | ResolveFlags::NO_XDEV;
    // EAGAIN: a rename or mount raced the lookup (the kernel cannot vouch for the result); try again.
    for _ in 0..8 {
        match rustix::fs::openat2(root, path, file_flags(), Mode::empty(), resolve) {
            Ok(fd) => return Ok(fd),
            Err(Errno::NOSYS) => return open_stepwise(root, path),
            Err(Errno::AGAIN) => continue,
            Err(e) => return Err(refusal(e)),
        }
    }
    Err(Refusal::Io(Errno::AGAIN))
}

/// What an open's error means for the client.
fn refusal(e: Errno) -> Refusal {
    match e {
        Errno::NOENT | Errno::NOTDIR => Refusal::NotFound,
        Errno::LOOP => Refusal::Symlink,
        Errno::XDEV => Refusal::Outside,
        e => Refusal::Io(e),
    }
}

/// `open_beneath` without `openat2`: each directory opened relative to the one before with `O_NOFOLLOW`
/// (a symlink is `ELOOP`, or `ENOTDIR` with `O_DIRECTORY`, told apart by `statat`), on the device of
/// `root`. `path` has no `.`, `..` or empty component (`check_path`).
fn open_stepwise(root: &OwnedFd, path: &str) -> Result<OwnedFd, Refusal> {
    let device = rustix::fs::fstat(root).map_err(Refusal::Io)?.st_dev;
    let components: Vec<&str> = path.split('/').collect();
    let Some((last, dirs)) = components.split_last() else {
        return Err(Refusal::NotFound);
    };
    let mut current: Option<OwnedFd> = None;
    let symlink_or = |dir: &OwnedFd, name: &str, e: Errno| match rustix::fs::statat(
        dir,
        name,
        AtFlags::SYMLINK_NOFOLLOW,
    ) {
        Ok(stat) if FileType::from_raw_mode(stat.st_mode) == FileType::Symlink => Refusal::Symlink,
        _ => refusal(e),
    };
    for name in dirs {
        let dir = current.as_ref().unwrap_or(root);
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let next = rustix::fs::openat(dir, *name, flags, Mode::empty())
            .map_err(|e| symlink_or(dir, name, e))?;
        if rustix::fs::fstat(&next).map_err(Refusal::Io)?.st_dev != device {
            return Err(Refusal::Outside);
        }
        current = Some(next);
    }
    let dir = current.as_ref().unwrap_or(root);
    let fd = rustix::fs::openat(dir, *last, file_flags(), Mode::empty())
        .map_err(|e| symlink_or(dir, last, e))?;
    if rustix::fs::fstat(&fd).map_err(Refusal::Io)?.st_dev != device {
        return Err(Refusal::Outside);
    }
    Ok(fd)
}

/// A member found by the reader thread.
struct Member {
    size: u64,
    mtime: u64,
}

/// Starts the reader thread of `path` in `archive` and waits until it found the member.
async fn open_archived(
    id: JobId,
    archive: PathBuf,
    path: String,
    permit: Option<OwnedSemaphorePermit>,
) -> Result<JobFile, EngineError> {
    let (found_tx, found_rx) = oneshot::channel();
    let (range_tx, range_rx) = oneshot::channel();
    let (data_tx, data_rx) = mpsc::channel(ARCHIVE_AHEAD);
    let archive_id = std::fs::symlink_metadata(&archive)
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
        .unwrap_or(0);
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        serve_member(id, &archive, &path, found_tx, range_rx, data_tx);
    });
    let member = found_rx.await.map_err(|_| {
        EngineError::internal(
            "reading an archived job directory",
            std::io::Error::other("the reader thread ended early"),
        )
    })??;
    Ok(JobFile {
        size: member.size,
        modified: Timestamp::from_unix_millis(
            i64::try_from(member.mtime)
                .unwrap_or(i64::MAX / 1000)
                .saturating_mul(1000),
        ),
        source: FilesSource::Archive,
        tag: format!("{:x}-{:x}-a{archive_id:x}", member.size, member.mtime),
        content: Content::Archive {
            range: range_tx,
            data: data_rx,
        },
    })
}

/// The reader thread: finds `path` in `archive` (says what it found on `found`), waits for the range
/// to send, decompresses it into `data`. Ends as soon as nobody waits for it any more. Blocking.
fn serve_member(
    id: JobId,
    archive: &Path,
    path: &str,
    found: oneshot::Sender<Result<Member, EngineError>>,
    range: oneshot::Receiver<(u64, u64)>,
    data: mpsc::Sender<std::io::Result<Vec<u8>>>,
) {
    let io = io_error(archive);
    let mut tar = match open_archive(archive) {
        Ok(tar) => tar,
        Err(e) => {
            let _ = found.send(Err(io(e)));
            return;
        }
    };
    let entries = match tar.entries() {
        Ok(entries) => entries,
        Err(e) => {
            let _ = found.send(Err(io(e)));
            return;
        }
    };
    for entry in entries {
        let mut entry = match entry {
            Ok(entry) => entry,
            Err(e) => {
                let _ = found.send(Err(io(e)));
                return;
            }
        };
        let Some(name) = member_path(&entry.path_bytes()) else {
            continue;
        };
        let kind = member_kind(entry.header().entry_type());
        // A symlink on the way (`link/x` where `link` is one) is refused as a directory's would be.
        let below = path
            .strip_prefix(name.as_str())
            .is_some_and(|rest| rest.starts_with('/'));
        if kind == FileKind::Symlink && (name == path || below) {
            let _ = found.send(Err(refused(path, "symlink")));
            return;
        }
        if name != path {
            continue;
        }
        if kind != FileKind::File {
            let _ = found.send(Err(refused(path, "not a regular file")));
            return;
        }
        let member = Member {
            size: entry.size(),
            mtime: entry.header().mtime().unwrap_or(0),
        };
        if found.send(Ok(member)).is_err() {
            return;
        }
        let Ok((start, end)) = range.blocking_recv() else {
            return;
        };
        if let Err(e) = std::io::copy(&mut (&mut entry).take(start), &mut std::io::sink()) {
            let _ = data.blocking_send(Err(e));
            return;
        }
        let mut remaining = end.saturating_sub(start);
        while remaining > 0 {
            let mut buf = vec![0; READ_CHUNK.min(usize::try_from(remaining).unwrap_or(READ_CHUNK))];
            let piece = match entry.read(&mut buf) {
                Ok(0) => Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the archive ended inside the file",
                )),
                Ok(n) => {
                    buf.truncate(n);
                    remaining -= n as u64;
                    Ok(buf)
                }
                Err(e) => Err(e),
            };
            let failed = piece.is_err();
            // The client went away: stop decompressing.
            if data.blocking_send(piece).is_err() || failed {
                return;
            }
        }
        return;
    }
    let _ = found.send(Err(EngineError::FileNotFound {
        id,
        path: path.chars().take(200).collect(),
    }));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn paths_are_plain_and_relative() {
        for ok in ["out.mp4", "sub/x.txt", ".hidden", "a b/ü.wav", "..x", "x.."] {
            assert_eq!(check_path(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../b",
            "a/..",
            "./a",
            "a/./b",
            "a//b",
            "a/",
            "x\0y",
        ] {
            assert!(check_path(bad).is_err(), "{bad:?}");
        }
        assert!(check_path(&"a/".repeat(2049)).is_err());
    }

    #[test]
    fn member_paths_are_relative_to_the_job_directory() {
        assert_eq!(member_path(b"./out.mp4").as_deref(), Some("out.mp4"));
        assert_eq!(member_path(b"sub/").as_deref(), Some("sub"));
        assert_eq!(member_path(b"././sub/x").as_deref(), Some("sub/x"));
        for none in [&b"./"[..], b".", b"", b"/etc/passwd", b"../x", b"a/../../x"] {
            assert_eq!(
                member_path(none),
                None,
                "{:?}",
                String::from_utf8_lossy(none)
            );
        }
    }

    /// A job directory with a file, a nested file, a symlink to a file outside, a symlinked
    /// directory, and a FIFO.
    fn job_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        std::fs::write(p.join("out.bin"), b"0123456789").unwrap();
        std::fs::create_dir(p.join("sub")).unwrap();
        std::fs::write(p.join("sub/x.txt"), b"x").unwrap();
        symlink("/etc/passwd", p.join("passwd")).unwrap();
        symlink("/etc", p.join("etc")).unwrap();
        symlink("sub", p.join("inner")).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            p.join("fifo"),
            FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        dir
    }

    #[test]
    fn the_listing_shows_symlinks_as_such_and_enters_only_real_directories() {
        let dir = job_dir();
        let files = list(JobId(3), &Place::Work(dir.path().to_path_buf())).unwrap();
        let shown: Vec<(&str, FileKind, u64)> = files
            .files
            .iter()
            .map(|f| (f.path.as_str(), f.kind, f.size))
            .collect();
        assert_eq!(
            shown,
            [
                ("etc", FileKind::Symlink, 0),
                ("fifo", FileKind::Other, 0),
                ("inner", FileKind::Symlink, 0),
                ("out.bin", FileKind::File, 10),
                ("passwd", FileKind::Symlink, 0),
                ("sub", FileKind::Dir, 0),
                ("sub/x.txt", FileKind::File, 1),
            ]
        );
        assert!(!files.truncated);
        assert_eq!(files.source, FilesSource::Work);
    }

    #[test]
    fn a_listing_stops_at_its_bound_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("a")).unwrap();
        for i in 0..MAX_LISTED_FILES + 5 {
            std::fs::write(dir.path().join("a").join(format!("{i:05}")), b"").unwrap();
        }
        std::fs::write(dir.path().join("z"), b"").unwrap();
        let files = list(JobId(1), &Place::Work(dir.path().to_path_buf())).unwrap();
        assert_eq!(files.files.len(), MAX_LISTED_FILES);
        assert!(files.truncated);
        assert_eq!(files.files[1].path, "a/00000");
        // A directory too deep is listed, not entered.
        let dir = tempfile::tempdir().unwrap();
        let deep: PathBuf = (0..MAX_DEPTH + 2).map(|i| format!("d{i}")).collect();
        std::fs::create_dir_all(dir.path().join(&deep)).unwrap();
        let files = list(JobId(1), &Place::Work(dir.path().to_path_buf())).unwrap();
        assert_eq!(files.files.len(), MAX_DEPTH);
        assert!(files.truncated);
    }

    #[test]
    fn opening_refuses_symlinks_anywhere_and_what_is_not_a_file() {
        let dir = job_dir();
        let root = open_dir(dir.path()).unwrap();
        for open in [open_beneath, open_stepwise] {
            assert!(open(&root, "out.bin").is_ok());
            assert!(open(&root, "sub/x.txt").is_ok());
            assert_eq!(open(&root, "passwd").unwrap_err(), Refusal::Symlink);
            assert_eq!(open(&root, "etc/passwd").unwrap_err(), Refusal::Symlink);
            assert_eq!(open(&root, "inner/x.txt").unwrap_err(), Refusal::Symlink);
            assert_eq!(open(&root, "missing").unwrap_err(), Refusal::NotFound);
            assert_eq!(open(&root, "out.bin/x").unwrap_err(), Refusal::NotFound);
            // A FIFO opens without waiting for a writer (and is refused by its type afterwards).
            assert!(open(&root, "fifo").is_ok());
        }
        let p = dir.path();
        let err = |path| open_work(JobId(1), p, path).unwrap_err().to_string();
        assert!(
            err("fifo").contains("not a regular file"),
            "{}",
            err("fifo")
        );
        assert!(err("sub").contains("a directory"), "{}", err("sub"));
        assert!(err("passwd").contains("symlink"), "{}", err("passwd"));
        assert!(err("nope").contains("has no file"), "{}", err("nope"));
    }

    #[tokio::test]
    async fn a_range_of_a_work_file_is_read_exactly() {
        let dir = job_dir();
        let open = |path: &str| open_work(JobId(1), dir.path(), path).unwrap();
        let file = open("out.bin");
        assert_eq!(file.size, 10);
        let mut reader = file.read(2, 5);
        let mut got = Vec::new();
        while let Some(piece) = reader.next_chunk().await {
            got.extend(piece.unwrap());
        }
        assert_eq!(got, b"234");
        // Past the end is clamped.
        let mut reader = open("out.bin").read(8, 100);
        assert_eq!(reader.next_chunk().await.unwrap().unwrap(), b"89");
        assert!(reader.next_chunk().await.is_none());
    }

    /// Builds `archive/work/7.tar.zst` of `dir` with the `tar` crate, symlinks kept as symlinks.
    fn archive_of(dir: &Path, out: &Path) {
        let file = std::fs::File::create(out).unwrap();
        let encoder = zstd::Encoder::new(file, 3).unwrap().auto_finish();
        let mut builder = tar::Builder::new(encoder);
        builder.follow_symlinks(false);
        builder.append_dir_all(".", dir).unwrap();
        builder.into_inner().unwrap();
    }

    #[tokio::test]
    async fn an_archived_directory_lists_and_serves_its_regular_files() {
        let dir = job_dir();
        std::fs::remove_file(dir.path().join("fifo")).unwrap();
        let big: Vec<u8> = (0..700_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(dir.path().join("sub/big.bin"), &big).unwrap();
        let out = tempfile::tempdir().unwrap();
        let archive = out.path().join("7.tar.zst");
        archive_of(dir.path(), &archive);
        let files = list(JobId(7), &Place::Archive(archive.clone())).unwrap();
        assert_eq!(files.source, FilesSource::Archive);
        let paths: Vec<&str> = files.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "etc",
                "inner",
                "out.bin",
                "passwd",
                "sub",
                "sub/big.bin",
                "sub/x.txt"
            ]
        );
        let open = |path: &str| {
            open(
                JobId(7),
                Place::Archive(archive.clone()),
                path.to_owned(),
                None,
            )
        };
        let file = open("sub/big.bin").await.unwrap();
        assert_eq!(file.size, big.len() as u64);
        let mut reader = file.read(300_000, 650_001);
        let mut got = Vec::new();
        while let Some(piece) = reader.next_chunk().await {
            got.extend(piece.unwrap());
        }
        assert_eq!(got, &big[300_000..650_001]);
        for (path, says) in [
            ("passwd", "symlink"),
            ("etc/passwd", "symlink"),
            ("inner/x.txt", "symlink"),
            ("sub", "not a regular file"),
            ("nope", "has no file"),
        ] {
            let e = open(path).await.unwrap_err().to_string();
            assert!(e.contains(says), "{path}: {e}");
        }
        // A file opened and dropped unread ends its reader thread.
        drop(open("out.bin").await.unwrap());
    }

    #[tokio::test]
    async fn an_upload_is_filed_under_its_hash_and_leaves_no_partial_file() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("uploads");
        let data: Vec<u8> = (0..(3 * WRITE_CHUNK + 17))
            .map(|i| (i % 253) as u8)
            .collect();
        let upload = |declared| UploadSink::begin(&root, declared, 1 << 30, 0);
        let mut sink = upload(Some(data.len() as u64)).unwrap();
        for piece in data.chunks(100_000) {
            sink.write(piece).await.unwrap();
        }
        let info = sink.finish().await.unwrap();
        let expected = UploadId::from_digest(&Sha256::digest(&data).into());
        assert_eq!(
            (info.id.clone(), info.size, info.existing),
            (expected.clone(), data.len() as u64, false)
        );
        let stored = root.join(expected.as_str());
        assert_eq!(std::fs::read(&stored).unwrap(), data);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&stored).unwrap().permissions().mode() & 0o777,
            0o444
        );
        // Again: the same file, said to exist.
        let mut sink = upload(None).unwrap();
        sink.write(&data).await.unwrap();
        assert!(sink.finish().await.unwrap().existing);
        // Over the cap, declared or not; and dropped half-way.
        assert!(matches!(
            UploadSink::begin(&root, Some(11), 10, 0),
            Err(EngineError::UploadTooLarge { max: 10 })
        ));
        let mut sink = UploadSink::begin(&root, None, 10, 0).unwrap();
        sink.write(b"12345").await.unwrap();
        assert!(matches!(
            sink.write(b"678901").await,
            Err(EngineError::UploadTooLarge { .. })
        ));
        drop(sink);
        let mut sink = upload(None).unwrap();
        sink.write(&data[..WRITE_CHUNK + 1]).await.unwrap();
        drop(sink);
        // No room for the reserve.
        assert!(matches!(
            UploadSink::begin(&root, Some(1), 1 << 30, u64::MAX / 2),
            Err(EngineError::InsufficientStorage { .. })
        ));
        let names: Vec<String> = std::fs::read_dir(&root)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, [expected.as_str()]);
    }
}

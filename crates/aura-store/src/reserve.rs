//! The reserve: space set aside next to the database and given up the moment the volume is full, so that
//! the state changes already under way (a job that ended, a job that stopped) can still be committed
//! while logs or other files have taken everything else.

use std::path::PathBuf;
use std::time::{Duration, Instant};

/// How often a missing reserve is looked at again (one statvfs).
const RESTORE_EVERY: Duration = Duration::from_secs(10);

pub(crate) struct Reserve {
    path: PathBuf,
    bytes: u64,
    present: bool,
    looked: Option<Instant>,
}

impl Reserve {
    /// Sets `bytes` aside at `path` if the volume has room for it (best effort: a database on a volume
    /// too small for it still works, only without the reserve).
    pub(crate) fn new(path: PathBuf, bytes: u64) -> Reserve {
        let mut reserve = Reserve {
            path,
            bytes,
            present: false,
            looked: None,
        };
        if bytes > 0 {
            reserve.present = reserve.create();
        }
        reserve
    }

    fn create(&mut self) -> bool {
        let result = (|| -> std::io::Result<()> {
            let file = std::fs::File::create(&self.path)?;
            match rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), 0, self.bytes) {
                Ok(()) => Ok(()),
                // A file system without fallocate: zeros take the space all the same.
                Err(rustix::io::Errno::OPNOTSUPP) => {
                    use std::io::Write;
                    let chunk = vec![0u8; 64 * 1024];
                    let mut file = file;
                    let mut left = self.bytes;
                    while left > 0 {
                        let n = left.min(chunk.len() as u64) as usize;
                        file.write_all(&chunk[..n])?;
                        left -= n as u64;
                    }
                    file.sync_all()
                }
                Err(e) => Err(e.into()),
            }
        })();
        match result {
            Ok(()) => true,
            Err(e) => {
                let _ = std::fs::remove_file(&self.path);
                tracing::warn!(path = %self.path.display(), error = %e, bytes = self.bytes,
                    "cannot set space aside for the job database; a full volume may hold up state changes until space returns");
                false
            }
        }
    }

    /// Gives the space up (the volume is full); `false` if there was none to give.
    pub(crate) fn release(&mut self) -> bool {
        if !self.present {
            return false;
        }
        self.present = false;
        self.looked = Some(Instant::now());
        match std::fs::remove_file(&self.path) {
            Ok(()) => {
                tracing::warn!(bytes = self.bytes, "data volume full: the job database's reserve was released so that state changes commit");
                true
            }
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot release the job database's reserve");
                false
            }
        }
    }

    /// Sets the space aside again once the volume has four times as much free (checked every
    /// `RESTORE_EVERY`).
    pub(crate) fn restore(&mut self) {
        if self.present || self.bytes == 0 {
            return;
        }
        if self.looked.is_some_and(|t| t.elapsed() < RESTORE_EVERY) {
            return;
        }
        self.looked = Some(Instant::now());
        let Some(dir) = self.path.parent() else {
            return;
        };
        let free = match rustix::fs::statvfs(dir) {
            Ok(s) => s.f_bavail.saturating_mul(s.f_frsize),
            Err(_) => return,
        };
        if free >= self.bytes.saturating_mul(4) {
            self.present = self.create();
            if self.present {
                tracing::info!(
                    bytes = self.bytes,
                    "the job database's reserve is set aside again"
                );
            }
        }
    }
}

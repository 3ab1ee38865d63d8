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
                    let mut file = file;
                    std::io::copy(
                        &mut std::io::Read::take(std::io::repeat(0), self.bytes),
                        &mut file,
                    )?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use tempfile::TempDir;

    const BYTES: u64 = 64 * 1024;

    fn reserve_in(dir: &TempDir, bytes: u64) -> Reserve {
        Reserve::new(dir.path().join("aura.db-reserve"), bytes)
    }

    fn size(reserve: &Reserve) -> Option<u64> {
        std::fs::metadata(&reserve.path).ok().map(|m| m.len())
    }

    #[test]
    fn a_reserve_is_set_aside_only_when_asked_for() {
        let dir = TempDir::new().expect("tempdir");
        assert_eq!(size(&reserve_in(&dir, BYTES)), Some(BYTES));
        let none = TempDir::new().expect("tempdir");
        let mut reserve = reserve_in(&none, 0);
        assert_eq!(size(&reserve), None);
        assert!(!reserve.release(), "nothing to give up");
        reserve.restore();
        assert_eq!(size(&reserve), None, "0 bytes means no reserve at all");
    }

    #[test]
    fn a_released_reserve_is_given_up_once() {
        let dir = TempDir::new().expect("tempdir");
        let mut reserve = reserve_in(&dir, BYTES);
        assert!(reserve.release());
        assert_eq!(size(&reserve), None);
        assert!(!reserve.release(), "already given up");
    }

    /// Right after the volume was full the reserve is not taken back (every commit would look); once the
    /// interval has passed and there is room, it is.
    #[test]
    fn a_released_reserve_returns_after_the_interval_when_there_is_room() {
        let dir = TempDir::new().expect("tempdir");
        let mut reserve = reserve_in(&dir, BYTES);
        assert!(reserve.release());
        reserve.restore();
        assert_eq!(size(&reserve), None, "taken back right after the release");
        reserve.looked = Instant::now().checked_sub(RESTORE_EVERY + Duration::from_secs(1));
        assert!(
            reserve.looked.is_some(),
            "the clock cannot go back that far"
        );
        reserve.restore();
        assert_eq!(size(&reserve), Some(BYTES));
        assert!(
            reserve.release(),
            "the restored reserve can be given up again"
        );
    }

    /// A reserve is taken back only with room to spare: on a volume that would be nearly full again
    /// with it, it stays given up.
    #[test]
    fn a_released_reserve_stays_away_while_the_volume_is_short_of_room() {
        let dir = TempDir::new().expect("tempdir");
        // A 1 MiB volume of its own (root only), so that "short of room" is a known figure.
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
            .arg(dir.path())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            eprintln!("skipped: cannot mount a tmpfs here (needs root)");
            return;
        }
        // Fits, but would leave less than three times itself free.
        let mut reserve = Reserve {
            path: dir.path().join("aura.db-reserve"),
            bytes: 300 * 1024,
            present: false,
            looked: None,
        };
        reserve.restore();
        let restored = size(&reserve);
        let _ = std::process::Command::new("umount")
            .arg(dir.path())
            .status();
        assert_eq!(restored, None);
    }
}

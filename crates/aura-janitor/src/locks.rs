//! Lock detection: the `flock` probe on one fd, and the [`LockTable`] of
//! everything `/proc/locks` lists, which lets a sweep skip locked files
//! without opening each one.

use std::collections::HashSet;
use std::os::fd::BorrowedFd;

use rustix::fs::FlockOperation;
use rustix::io::Errno;

/// Whether a lock (flock, or an OFD/POSIX lock that conflicts with flock on
/// this file system) is held on the directory/file at this fd by anyone else:
/// probes with `flock(LOCK_EX|LOCK_NB)` (EWOULDBLOCK = locked) and releases at
/// once.
///
/// The probe briefly holds the lock, so a holder trying `LOCK_NB` at that very
/// moment sees it taken; holders that block just wait a syscall. An error other
/// than EWOULDBLOCK also answers `true`: when in doubt, nothing is removed, and
/// the next run tries again. POSIX locks do not conflict with flock on Linux;
/// they are caught by [`LockTable`] instead.
pub fn is_locked(fd: BorrowedFd<'_>) -> bool {
    match rustix::io::retry_on_intr(|| {
        rustix::fs::flock(fd, FlockOperation::NonBlockingLockExclusive)
    }) {
        Ok(()) => {
            // Releasing can only fail for a bad fd, and closing the fd releases
            // it anyway; the probe's answer stands.
            if let Err(e) = rustix::fs::flock(fd, FlockOperation::Unlock) {
                tracing::debug!(target: "aura_janitor", "flock unlock after probe: {e}");
            }
            false
        }
        Err(Errno::WOULDBLOCK) => true,
        Err(e) => {
            tracing::debug!(target: "aura_janitor", "flock probe failed ({e}); treating as locked");
            true
        }
    }
}

/// The set of `(st_dev, st_ino)` pairs that `/proc/locks` lists as locked
/// (FLOCK, POSIX, OFDLCK), read once.
#[derive(Clone, Debug, Default)]
pub struct LockTable {
    locked: HashSet<(u64, u64)>,
}

impl LockTable {
    /// Reads `/proc/locks`. If it cannot be read (no procfs), the table is
    /// empty and a warning is logged: the per-directory `flock` probe still
    /// guards directories.
    ///
    /// The kernel lists the table a page at a time, taking its lock anew for
    /// each `read`: a lock released between two reads shifts the rest of the
    /// list, and the entry that moved across the boundary is in neither. So
    /// the table is read until two reads in a row agree (at most
    /// [`MAX_READS`]), and what any read saw counts as locked.
    pub fn read() -> LockTable {
        let mut locked = HashSet::new();
        let mut last: Option<HashSet<(u64, u64)>> = None;
        for _ in 0..MAX_READS {
            let seen = match read_proc_locks() {
                Ok(text) => parse_proc_locks(&text),
                Err(e) => {
                    tracing::warn!(target: "aura_janitor", "cannot read /proc/locks ({e}); file locks not detected");
                    break;
                }
            };
            locked.extend(seen.iter().copied());
            if last.as_ref() == Some(&seen) {
                break;
            }
            last = Some(seen);
        }
        LockTable { locked }
    }

    /// Whether the inode `ino` on device `dev` is locked.
    pub fn contains(&self, dev: u64, ino: u64) -> bool {
        !self.locked.is_empty() && self.locked.contains(&(dev, ino))
    }
}

/// Reads of `/proc/locks` before [`LockTable::read`] settles for what it saw.
const MAX_READS: usize = 4;

/// `/proc/locks` in as few `read`s as the kernel allows (a page each):
/// `read_to_string` would begin with a 32-byte probe, and the list may move
/// between that read and the next.
fn read_proc_locks() -> std::io::Result<String> {
    use std::io::Read;
    let mut file = std::fs::File::open("/proc/locks")?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut len = 0;
    loop {
        if len == buf.len() {
            buf.resize(buf.len() * 2, 0);
        }
        match file.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(len);
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// Parses the text of `/proc/locks` into `(st_dev, st_ino)` pairs of inodes
/// holding (or waited on for) an FLOCK, POSIX or OFDLCK lock. Lines look like
/// `1: FLOCK  ADVISORY  WRITE 4828 fe:00:10010962 0 EOF` (waiters have a `->`
/// after the number); `MAJ` and `MIN` are hex, the inode decimal. Lines that do
/// not parse are ignored; no input makes it panic.
pub fn parse_proc_locks(text: &str) -> HashSet<(u64, u64)> {
    let mut out = HashSet::new();
    for line in text.lines() {
        let mut tokens = line.split_whitespace();
        // The ordinal ("12:").
        match tokens.next() {
            Some(t) if t.ends_with(':') => {}
            _ => continue,
        }
        let mut kind = tokens.next();
        if kind == Some("->") {
            kind = tokens.next();
        }
        if !matches!(kind, Some("FLOCK" | "POSIX" | "OFDLCK")) {
            continue;
        }
        // The device:inode field is the first with two colons; the pid before
        // it and the range after it have none.
        if let Some(pair) = tokens.find_map(parse_dev_ino) {
            out.insert(pair);
        }
    }
    out
}

fn parse_dev_ino(token: &str) -> Option<(u64, u64)> {
    let mut parts = token.split(':');
    let maj = parts.next()?;
    let min = parts.next()?;
    let ino = parts.next()?;
    if parts.next().is_some() {
        return None;
    }
    let maj = u32::from_str_radix(maj, 16).ok()?;
    let min = u32::from_str_radix(min, 16).ok()?;
    let ino = ino.parse::<u64>().ok()?;
    Some((rustix::fs::makedev(maj, min), ino))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kinds_and_waiters() {
        let text = "\
1: FLOCK  ADVISORY  WRITE 4828 fe:00:10010962 0 EOF
2: POSIX  ADVISORY  READ 99 00:1a:77 0 EOF
3: OFDLCK ADVISORY  WRITE -1 103:05:5 100 200
3: -> OFDLCK ADVISORY  WRITE 7 103:05:6 100 200
4: LEASE  ACTIVE    READ 12 fe:00:1 0 EOF
5: DELEG  ACTIVE    READ 12 fe:00:2 0 EOF
6: FLOCK  ADVISORY  WRITE 1 <none>:0 0 EOF
FLOCK  ADVISORY  WRITE 1 fe:00:3 0 EOF
7 FLOCK  ADVISORY  WRITE 1 fe:00:4 0 EOF
";
        let set = parse_proc_locks(text);
        assert!(set.contains(&(rustix::fs::makedev(0xfe, 0), 10010962)));
        assert!(set.contains(&(rustix::fs::makedev(0, 0x1a), 77)));
        assert!(set.contains(&(rustix::fs::makedev(0x103, 5), 5)));
        assert!(set.contains(&(rustix::fs::makedev(0x103, 5), 6)));
        assert_eq!(set.len(), 4);
        assert_eq!(rustix::fs::makedev(0xfe, 0), 65024);
    }

    #[test]
    fn garbage_never_panics() {
        for text in [
            "",
            ":",
            "1:",
            "1: FLOCK",
            "1: FLOCK ADVISORY WRITE 1 :::",
            "1: FLOCK ADVISORY WRITE 1 ffffffffff:0:1 0 EOF",
            "1: POSIX ADVISORY WRITE 1 0:0:99999999999999999999999 0 EOF",
            "1: -> -> FLOCK x 0:0:1",
            "\u{0}\u{ffff}1: FLOCK é:é:é",
        ] {
            let _ = parse_proc_locks(text);
        }
        // A cheap exhaustive-ish fuzz over short strings of the relevant alphabet.
        let alphabet = ['1', ':', ' ', 'F', 'f', '-', '>', '\n', '0'];
        let mut s = String::new();
        for i in 0..20_000u32 {
            s.clear();
            let mut n = i;
            for _ in 0..8 {
                s.push(alphabet[(n % alphabet.len() as u32) as usize]);
                n /= alphabet.len() as u32;
            }
            let _ = parse_proc_locks(&format!("1: FLOCK ADVISORY WRITE 1 {s}"));
        }
    }
}

//! Compressed closed segments (`<name>.log.zst`, zstd, one or more frames): reading one from a logical
//! offset as a stream, and its decompressed length. Neither holds more than the decoder's buffers and
//! window in memory, whatever the segment's size.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

/// Largest back-reference window a segment may need (2^23 = 8 MiB): every zstd level up to 19 stays
/// within it (the janitor compresses at 3, which needs 2 MiB), and it bounds what one read can make the
/// daemon allocate, whatever a file claims.
const WINDOW_LOG_MAX: u32 = 23;

/// Decompressed lengths remembered; beyond this many files the memory is simply cleared.
const MAX_REMEMBERED: usize = 1024;

/// Opens `path` and decompresses up to `offset` (discarding it): reading the result continues from
/// there. A segment shorter than `offset` reads as empty.
pub(crate) fn open_at(path: &Path, offset: u64) -> io::Result<impl Read> {
    let mut decoder = decoder(File::open(path)?)?;
    io::copy(&mut (&mut decoder).take(offset), &mut io::sink())?;
    Ok(decoder)
}

fn decoder(file: File) -> io::Result<impl Read> {
    let mut decoder = zstd::stream::read::Decoder::new(file)?;
    decoder.window_log_max(WINDOW_LOG_MAX)?;
    Ok(decoder)
}

/// Which file a remembered length belongs to: a segment compressed again (after a crash mid-way) is a
/// new file, with a new inode or at least a new size or time.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Identity {
    dev: u64,
    ino: u64,
    len: u64,
    mtime_ns: i128,
}

/// Decompressed lengths by path. A zstd stream written piece by piece does not record its length,
/// and finding it means decompressing the whole segment; a closed segment never changes, so that is
/// done once per file rather than on every read of a log that is followed.
static LENGTHS: Mutex<Option<HashMap<PathBuf, (Identity, u64)>>> = Mutex::new(None);

/// The decompressed length of the segment at `path`.
pub(crate) fn decompressed_len(path: &Path) -> io::Result<u64> {
    let file = File::open(path)?;
    let meta = file.metadata()?;
    let identity = Identity {
        dev: meta.dev(),
        ino: meta.ino(),
        len: meta.len(),
        mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
    };
    {
        // The map holds plain values: a panic elsewhere cannot leave it inconsistent.
        let lengths = LENGTHS.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((known, len)) = lengths.as_ref().and_then(|map| map.get(path)) {
            if *known == identity {
                return Ok(*len);
            }
        }
    }
    // Not under the lock: other readers need not wait for this decompression.
    let len = io::copy(&mut decoder(file)?, &mut io::sink())?;
    let mut lengths = LENGTHS.lock().unwrap_or_else(PoisonError::into_inner);
    let map = lengths.get_or_insert_with(HashMap::new);
    if map.len() >= MAX_REMEMBERED {
        map.clear();
    }
    map.insert(path.to_path_buf(), (identity, len));
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compress(path: &Path, data: &[u8]) {
        std::fs::write(path, zstd::encode_all(data, 3).expect("compress")).expect("write");
    }

    #[test]
    fn reads_from_an_offset_and_knows_its_length() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("stdout.00000000000000000000.log.zst");
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        compress(&path, &data);
        assert_eq!(decompressed_len(&path).expect("len"), data.len() as u64);
        for offset in [0, 1, 131_072, 299_999, 300_000, 400_000] {
            let mut rest = Vec::new();
            open_at(&path, offset)
                .expect("open")
                .read_to_end(&mut rest)
                .expect("read");
            let from = usize::try_from(offset).expect("offset").min(data.len());
            assert!(rest == data[from..], "from {offset}");
        }
    }

    /// Several frames (a file compressed in pieces, or frames appended) read as one stream.
    #[test]
    fn concatenated_frames_read_as_one() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("two-frames.log.zst");
        let mut bytes = zstd::encode_all(&b"hello "[..], 3).expect("compress");
        bytes.extend(zstd::encode_all(&b"world"[..], 3).expect("compress"));
        std::fs::write(&path, bytes).expect("write");
        assert_eq!(decompressed_len(&path).expect("len"), 11);
        let mut rest = String::new();
        open_at(&path, 3)
            .expect("open")
            .read_to_string(&mut rest)
            .expect("read");
        assert_eq!(rest, "lo world");
    }

    /// A remembered length is only used for the very file it was measured on.
    #[test]
    fn a_file_compressed_again_is_measured_again() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("again.log.zst");
        compress(&path, b"short");
        assert_eq!(decompressed_len(&path).expect("len"), 5);
        let replacement = tmp.path().join("again.tmp");
        compress(&replacement, b"a longer segment than before");
        std::fs::rename(&replacement, &path).expect("rename");
        assert_eq!(decompressed_len(&path).expect("len"), 28);
    }

    #[test]
    fn bytes_that_are_not_zstd_are_an_error() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("garbage.log.zst");
        std::fs::write(&path, b"not compressed at all").expect("write");
        assert!(decompressed_len(&path).is_err());
        let mut out = Vec::new();
        let read = open_at(&path, 0).and_then(|mut r| r.read_to_end(&mut out));
        assert!(read.is_err());
    }
}

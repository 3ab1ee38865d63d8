//! What the store's test binaries share: a small volume of their own, to fill to the last byte.

use std::path::PathBuf;
use tempfile::TempDir;

/// A tmpfs of a given size mounted for one test (root only), unmounted on drop.
pub struct SmallVolume {
    _root: TempDir,
    path: PathBuf,
}

impl SmallVolume {
    /// `None` (the test skips, saying so) where a tmpfs cannot be mounted.
    pub fn mount(size: &str) -> Option<SmallVolume> {
        let root = TempDir::new().expect("tempdir");
        let path = root.path().join("vol");
        std::fs::create_dir(&path).expect("mkdir");
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            eprintln!("skipped: cannot mount a tmpfs here (needs root)");
        }
        mounted.then_some(SmallVolume { _root: root, path })
    }

    /// The file `name` on the volume.
    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// The database file on it.
    pub fn db(&self) -> PathBuf {
        self.file("aura.db")
    }

    /// Fills the volume to the last byte with the file `name`.
    pub fn fill(&self, name: &str) {
        use std::io::Write;
        let mut file = std::fs::File::create(self.path.join(name)).expect("filler");
        let chunk = vec![1u8; 64 * 1024];
        let mut n = chunk.len();
        while n > 0 {
            match file.write(&chunk[..n]) {
                Ok(0) => break,
                Ok(_) => {}
                Err(_) => n /= 2,
            }
        }
    }

    /// Removes what `fill(name)` wrote.
    pub fn free(&self, name: &str) {
        std::fs::remove_file(self.path.join(name)).expect("free the volume");
    }
}

impl Drop for SmallVolume {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(&self.path)
            .status();
    }
}

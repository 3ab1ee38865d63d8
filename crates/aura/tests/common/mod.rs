//! A daemon for the test binaries that run alone (cargo runs test binaries one after another), because
//! what they measure is the whole machine: `aura serve` on a temporary data dir, killed on drop.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

pub const AURA: &str = env!("CARGO_BIN_EXE_aura");

pub struct Daemon {
    child: Child,
    pub url: String,
    pub token: String,
    _dir: tempfile::TempDir,
}

impl Daemon {
    /// `aura serve` with these `AURA_*` overrides, once it listens.
    pub fn start(env: &[(&str, &str)]) -> Daemon {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        let mut child = Command::new(AURA)
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&data)
            .env("AURA_LOG", "warn")
            .env("AURA_RUNTIME_DIR", dir.path().join("runtime"))
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn aura serve");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let url = loop {
            let line = lines.next().expect("aura serve exited").expect("stdout");
            if let Some(url) = line.strip_prefix("aura serve: listening on ") {
                break url.to_owned();
            }
        };
        std::thread::spawn(move || lines.for_each(drop));
        let token = std::fs::read_to_string(data.join("api-token"))
            .expect("token")
            .trim()
            .to_owned();
        Daemon {
            child,
            url,
            token,
            _dir: dir,
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

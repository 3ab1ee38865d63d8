//! A daemon for the test binaries that run alone (cargo runs test binaries one after another), because
//! what they measure is the whole machine: `aura serve` on a temporary data dir, killed on drop.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

pub mod machine;

pub const AURA: &str = env!("CARGO_BIN_EXE_aura");

pub struct Daemon {
    child: Child,
    pub url: String,
    pub token: String,
    _dir: tempfile::TempDir,
}

impl Daemon {
    /// `aura serve` with these `AURA_*` overrides (over `machine::SHARED_MACHINE`), once it listens.
    pub fn start(env: &[(&str, &str)]) -> Daemon {
        Daemon::start_logged(env, None)
    }

    /// `start`, with the daemon's stderr (its log) written to `log` where given.
    pub fn start_logged(env: &[(&str, &str)], log: Option<&Path>) -> Daemon {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        let mut child = Command::new(AURA)
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&data)
            .env("AURA_LOG", "warn")
            // A knob of the test binaries, not the daemon's: `aura serve` refuses unknown AURA_* keys.
            .env_remove("AURA_LEAK_SECONDS")
            .env("AURA_RUNTIME_DIR", dir.path().join("runtime"))
            .envs(machine::SHARED_MACHINE.iter().copied())
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(match log {
                Some(path) => Stdio::from(std::fs::File::create(path).expect("daemon log file")),
                None => Stdio::inherit(),
            })
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

impl Daemon {
    /// The directory through which the CLI finds this daemon's token (`AURA_RUNTIME_DIR`).
    #[allow(dead_code)] // not every test binary runs the CLI
    pub fn runtime_dir(&self) -> PathBuf {
        self._dir.path().join("runtime")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

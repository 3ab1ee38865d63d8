//! How the same user's CLI finds a local daemon's token from any directory, the way Jupyter's clients
//! find a server: `aura serve` writes a runtime file (`server-<port>.json`: its address, pid, data dir
//! and token; mode 0600, in a 0700 directory) and removes it when it stops; the CLI reads the one for
//! the port of `--server`. The token itself lives in the data dir (`api-token`, mode 0600), so it
//! survives restarts and scripts keep working.

use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The local admin token's file in the data dir.
pub const TOKEN_FILE: &str = "api-token";

/// What a runtime file holds.
#[derive(Clone, Serialize, Deserialize)]
pub struct RuntimeInfo {
    /// `http://<listen address>`.
    pub url: String,
    /// The daemon's process id; only the daemon that wrote the file removes it.
    pub pid: u32,
    /// The daemon's data dir.
    pub data_dir: PathBuf,
    /// The daemon's local admin token. `Debug` leaves it out.
    pub token: String,
}

impl std::fmt::Debug for RuntimeInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuntimeInfo")
            .field("url", &self.url)
            .field("pid", &self.pid)
            .field("data_dir", &self.data_dir)
            .finish_non_exhaustive()
    }
}

/// Where runtime files live: `$AURA_RUNTIME_DIR`, else `$XDG_RUNTIME_DIR/aura`, else
/// `~/.local/share/aura/runtime`.
pub fn runtime_dir() -> Option<PathBuf> {
    let var = |name| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    var("AURA_RUNTIME_DIR")
        .or_else(|| var("XDG_RUNTIME_DIR").map(|d| d.join("aura")))
        .or_else(|| var("HOME").map(|h| h.join(".local/share/aura/runtime")))
}

fn file_for(dir: &Path, port: u16) -> PathBuf {
    dir.join(format!("server-{port}.json"))
}

/// The local admin token of the data dir: read, or made at first start. Returns it and its path.
pub fn local_token(data_dir: &Path) -> anyhow::Result<(String, PathBuf)> {
    let path = data_dir.join(TOKEN_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let token = text.trim().to_owned();
            if !token.starts_with(aura_server::auth::TOKEN_PREFIX) || token.len() < 40 {
                anyhow::bail!(
                    "{} does not hold an Aura token; remove it and a new one is made at the next start",
                    path.display()
                );
            }
            let mode = std::fs::metadata(&path)?.permissions().mode();
            if mode & 0o077 != 0 {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                    .with_context(|| format!("cannot make {} private", path.display()))?;
                tracing::warn!(path = %path.display(), "the token file was readable by others; it is now mode 0600");
            }
            Ok((token, path))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let token = aura_server::auth::generate_token().context("cannot make a token")?;
            write_private(&path, format!("{token}\n").as_bytes(), false)?;
            Ok((token, path))
        }
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Writes `bytes` to a new mode-0600 file (replacing it when `replace`), through a temporary file and
/// a rename, so a reader never sees half of it.
fn write_private(path: &Path, bytes: &[u8], replace: bool) -> anyhow::Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot create {}", tmp.display()))?;
    let written = file.write_all(bytes).and_then(|()| file.sync_all());
    let renamed = written.and_then(|()| {
        if !replace && path.exists() {
            return Err(std::io::Error::from(std::io::ErrorKind::AlreadyExists));
        }
        std::fs::rename(&tmp, path)
    });
    if let Err(e) = renamed {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("cannot write {}", path.display()));
    }
    Ok(())
}

/// The runtime file of a running daemon; removed on drop (if it is still this daemon's).
#[derive(Debug)]
pub struct RuntimeFile {
    path: PathBuf,
}

impl RuntimeFile {
    /// Writes (or replaces) the runtime file for `port` in [`runtime_dir`], creating the directory
    /// (mode 0700) if needed; the file is mode 0600.
    pub fn write(port: u16, info: &RuntimeInfo) -> anyhow::Result<RuntimeFile> {
        let dir = runtime_dir()
            .context("no runtime directory: set HOME, XDG_RUNTIME_DIR or AURA_RUNTIME_DIR")?;
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot make {} private", dir.display()))?;
        let path = file_for(&dir, port);
        write_private(&path, &serde_json::to_vec_pretty(info)?, true)?;
        Ok(RuntimeFile { path })
    }

    /// Where the file was written.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for RuntimeFile {
    fn drop(&mut self) {
        // Another daemon may have taken the port (and the file) since; only ours is removed.
        let ours = read(&self.path).is_some_and(|info| info.pid == std::process::id());
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn read(path: &Path) -> Option<RuntimeInfo> {
    let text = std::fs::read(path).ok()?;
    serde_json::from_slice(&text).ok()
}

/// The token of the local daemon at `server` (a URL), from its runtime file: the one for the URL's port,
/// when the URL names this machine (a loopback name, or the address the daemon listens on).
pub fn find_token(server: &str) -> Option<String> {
    let url = aura_client::Url::parse(server).ok()?;
    let port = url.port_or_known_default()?;
    let host = url
        .host_str()?
        .trim_matches(['[', ']'])
        .to_ascii_lowercase();
    let info = read(&file_for(&runtime_dir()?, port))?;
    let listen_host = aura_client::Url::parse(&info.url).ok().and_then(|u| {
        u.host_str()
            .map(|h| h.trim_matches(['[', ']']).to_ascii_lowercase())
    });
    let loopback = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    (loopback || listen_host.as_deref() == Some(host.as_str())).then_some(info.token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_local_token_is_made_once_and_kept_private() {
        let dir = tempfile::tempdir().unwrap();
        let (token, path) = local_token(dir.path()).unwrap();
        assert!(token.starts_with(aura_server::auth::TOKEN_PREFIX));
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let (again, _) = local_token(dir.path()).unwrap();
        assert_eq!(token, again);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        local_token(dir.path()).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        std::fs::write(&path, "garbage").unwrap();
        assert!(local_token(dir.path()).is_err());
    }
}

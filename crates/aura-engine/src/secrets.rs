//! The named secrets job specs may reference (`"secrets": {"OPENAI_API_KEY": "openai"}`): read once at
//! start-up from a secrets file and the daemon's own environment, resolved into a job's environment at
//! launch, and nowhere else — a spec, a record, an event or a log line holds only the name.

use aura_model::Secret;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Secrets by name. `Debug` shows the names only.
#[derive(Clone, Default)]
pub struct Secrets(BTreeMap<String, Secret>);

/// The prefix of the daemon's environment variables that hold secrets: `AURA_SECRET_OPENAI` is the
/// secret `openai`.
pub const ENV_PREFIX: &str = "AURA_SECRET_";

/// Why the secrets could not be loaded. No message ever holds a secret's value.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The secrets file is missing (when required), unreadable, not a regular file, readable by others,
    /// or not a TOML table of strings.
    #[error("secrets file {path}: {reason}")]
    File {
        /// The secrets file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A secret's name (in the file or after `AURA_SECRET_`) is empty, over 256 bytes, or has characters
    /// other than letters, digits, `_`, `-`, `.`; holds the name.
    #[error("invalid secret name {0:?} (letters, digits, _ - . only)")]
    Name(String),
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

impl Secrets {
    /// Reads `file` (a TOML table of `name = "value"`; it must be a regular file readable by its owner
    /// only, as SSH insists for keys) and then the daemon's `AURA_SECRET_<NAME>` variables (the name in
    /// lower case; these win). A missing `file` is fine when `required` is false.
    pub fn load(
        file: Option<&Path>,
        required: bool,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Secrets, SecretError> {
        let mut secrets = BTreeMap::new();
        if let Some(path) = file {
            let err = |reason: String| SecretError::File {
                path: path.to_owned(),
                reason,
            };
            match std::fs::symlink_metadata(path) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {}
                Err(e) => return Err(err(e.to_string())),
                Ok(meta) => {
                    use std::os::unix::fs::PermissionsExt;
                    if !meta.is_file() {
                        return Err(err("not a regular file".into()));
                    }
                    if meta.permissions().mode() & 0o077 != 0 {
                        return Err(err(format!(
                            "readable by others (mode {:o}): chmod 600 it",
                            meta.permissions().mode() & 0o777
                        )));
                    }
                    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
                    // The parser's message may quote the offending line, and so a value: never repeat it.
                    let table: BTreeMap<String, String> = toml::from_str(&text).map_err(|e| {
                        err(format!(
                            "not a TOML table of name = \"value\" (at byte {:?})",
                            e.span().map(|s| s.start)
                        ))
                    })?;
                    for (name, value) in table {
                        secrets.insert(checked_name(name)?, Secret::new(value));
                    }
                }
            }
        }
        for (key, value) in env {
            if let Some(name) = key.strip_prefix(ENV_PREFIX) {
                secrets.insert(checked_name(name.to_ascii_lowercase())?, Secret::new(value));
            }
        }
        Ok(Secrets(secrets))
    }

    /// The secret called `name`, if the daemon has it.
    pub fn get(&self, name: &str) -> Option<&Secret> {
        self.0.get(name)
    }

    /// The names of all secrets, in sorted order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }

    /// How many secrets there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn checked_name(name: String) -> Result<String, SecretError> {
    let ok = !name.is_empty()
        && name.len() <= 256
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(name)
    } else {
        Err(SecretError::Name(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn secrets_come_from_a_private_file_and_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secrets.toml");
        std::fs::write(&file, "openai = \"sk-file\"\neleven = \"el-1\"\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = Secrets::load(Some(&file), true, [])
            .unwrap_err()
            .to_string();
        assert!(err.contains("chmod 600"), "{err}");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let env = [
            ("AURA_SECRET_OPENAI".to_owned(), "sk-env".to_owned()),
            ("OTHER".to_owned(), "x".to_owned()),
        ];
        let secrets = Secrets::load(Some(&file), true, env).unwrap();
        assert_eq!(secrets.get("openai").unwrap().expose(), "sk-env");
        assert_eq!(secrets.get("eleven").unwrap().expose(), "el-1");
        assert_eq!(secrets.len(), 2);
        let shown = format!("{secrets:?}");
        assert!(!shown.contains("sk-") && !shown.contains("el-1"), "{shown}");
        // A missing optional file is no error; a missing required one is.
        let missing = dir.path().join("none.toml");
        assert!(Secrets::load(Some(&missing), false, []).unwrap().is_empty());
        assert!(Secrets::load(Some(&missing), true, []).is_err());
        // A syntax error does not quote the file (which would print a value).
        std::fs::write(&file, "openai = \"sk-unterminated\n").unwrap();
        let err = Secrets::load(Some(&file), true, [])
            .unwrap_err()
            .to_string();
        assert!(!err.contains("sk-unterminated"), "{err}");
        assert!(Secrets::load(None, false, [("AURA_SECRET_".into(), "v".into())]).is_err());
    }
}

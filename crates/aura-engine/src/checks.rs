//! The submit-time checks that touch the file system — the working directory exists, the program
//! resolves to an executable — and a short memory of the ones that passed, so that a burst of submits
//! of the same command costs one blocking hop instead of one per job (each hop is two thread hand-offs,
//! a large share of a trivial job's cost; see BENCHMARKS.md).
//!
//! Only successes are remembered, for `TTL`: a program deleted within that window is not refused at
//! submit but fails to start, with the same message (the launcher resolves it again at every start).

use crate::EngineError;
use aura_model::JobSpec;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a passed check is trusted.
const TTL: Duration = Duration::from_secs(2);
/// Distinct commands remembered at most; the memory is cleared when full (a burst is one command).
const CAPACITY: usize = 256;

/// What a check depends on: the program, the `PATH` it is searched in, the working directory.
type Key = (String, Option<String>, Option<PathBuf>);

#[derive(Default)]
pub(crate) struct RecentChecks {
    // A std Mutex: held for a lookup or an insert, never across I/O or an await.
    passed: Mutex<HashMap<Key, Instant>>,
}

impl RecentChecks {
    /// Checks `spec`'s working directory and program, unless the same check passed within `TTL`.
    pub async fn check(&self, spec: &JobSpec) -> Result<(), EngineError> {
        let key: Key = (
            spec.program.clone(),
            spec.env.get("PATH").cloned(),
            spec.cwd.clone(),
        );
        let fresh = |at: &Instant| at.elapsed() < TTL;
        if self.lock().get(&key).is_some_and(fresh) {
            return Ok(());
        }
        let (program, path_var, cwd) = key.clone();
        tokio::task::spawn_blocking(move || check_now(program, path_var, cwd))
            .await
            .map_err(|e| EngineError::Internal(e.to_string()))??;
        let mut passed = self.lock();
        if passed.len() >= CAPACITY {
            passed.retain(|_, at| fresh(at));
            if passed.len() >= CAPACITY {
                passed.clear();
            }
        }
        passed.insert(key, Instant::now());
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Instant>> {
        self.passed.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The checks themselves (blocking).
fn check_now(
    program: String,
    path_var: Option<String>,
    cwd: Option<PathBuf>,
) -> Result<(), EngineError> {
    if let Some(cwd) = &cwd {
        let reason = match std::fs::metadata(cwd) {
            Ok(m) if m.is_dir() => None,
            Ok(_) => Some("not a directory".to_owned()),
            Err(e) => Some(e.to_string()),
        };
        if let Some(reason) = reason {
            return Err(EngineError::WorkingDirectory {
                path: cwd.clone(),
                reason,
            });
        }
    }
    aura_supervisor::resolve_program(&program, path_var.as_deref(), cwd.as_deref())
        .map(drop)
        .map_err(|e| EngineError::Program {
            program,
            reason: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[tokio::test]
    async fn passes_are_remembered_failures_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let tool = dir.path().join("tool");
        std::fs::write(&tool, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
        let spec = JobSpec::new(tool.to_str().unwrap(), Vec::<String>::new());
        let checks = RecentChecks::default();
        checks.check(&spec).await.unwrap();
        // Within the TTL a passed check is not repeated: the program's removal goes unnoticed here
        // (the launcher notices it at start).
        std::fs::remove_file(&tool).unwrap();
        checks.check(&spec).await.unwrap();
        // A failure is never remembered: it is refused every time, with the reason.
        let missing = JobSpec::new("/nonexistent/aura-tool", Vec::<String>::new());
        for _ in 0..2 {
            assert!(matches!(
                checks.check(&missing).await,
                Err(EngineError::Program { .. })
            ));
        }
        // Another working directory is another check.
        let mut elsewhere = spec.clone();
        elsewhere.cwd = Some(dir.path().join("missing"));
        assert!(matches!(
            checks.check(&elsewhere).await,
            Err(EngineError::WorkingDirectory { .. })
        ));
    }
}

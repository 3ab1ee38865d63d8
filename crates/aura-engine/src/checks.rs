//! The submit-time checks that touch the file system — the working directory exists and lies inside the
//! allowed roots, the program resolves to an executable the allowlist permits (the supervisor's
//! `JobSandbox` rules, asked again at launch), the uploads its `inputs` name exist — and a short
//! memory of the ones that passed (not of inputs), so that a burst of submits of the same command
//! costs one blocking hop instead of one per job (each hop is two thread hand-offs,
//! a large share of a trivial job's cost; see BENCHMARKS.md).
//!
//! Only successes are remembered, for `TTL`: a program deleted within that window is not refused at
//! submit but fails to start, with the same message (the launcher resolves it again at every start).

use crate::EngineError;
use aura_model::JobSpec;
use aura_supervisor::{JobSandbox, LaunchError};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
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
    pub async fn check(
        &self,
        spec: &JobSpec,
        sandbox: &Arc<JobSandbox>,
    ) -> Result<(), EngineError> {
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
        let sandbox = sandbox.clone();
        tokio::task::spawn_blocking(move || check_now(&sandbox, program, path_var, cwd))
            .await
            .map_err(|e| EngineError::internal("checking a submit on a blocking thread", e))??;
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

/// Checks that every upload `spec.inputs` names is in `uploads` (one blocking hop for all of them).
/// Never remembered: an upload can be cleaned up between two submits.
pub(crate) async fn check_inputs(spec: &JobSpec, uploads: PathBuf) -> Result<(), EngineError> {
    if spec.inputs.is_empty() {
        return Ok(());
    }
    let inputs = spec.inputs.clone();
    tokio::task::spawn_blocking(move || {
        for (name, id) in inputs {
            let there =
                std::fs::symlink_metadata(uploads.join(id.as_str())).is_ok_and(|m| m.is_file());
            if !there {
                return Err(EngineError::UnknownUpload { name, id });
            }
        }
        Ok(())
    })
    .await
    .map_err(|e| EngineError::internal("checking a submit's inputs on a blocking thread", e))?
}

/// The checks themselves (blocking).
fn check_now(
    sandbox: &JobSandbox,
    program: String,
    path_var: Option<String>,
    cwd: Option<PathBuf>,
) -> Result<(), EngineError> {
    let cwd = cwd
        .map(|cwd| sandbox.check_cwd(&cwd))
        .transpose()
        .map_err(refusal(&program))?;
    let env = path_var
        .map(|p| std::collections::BTreeMap::from([("PATH".to_owned(), p)]))
        .unwrap_or_default();
    sandbox
        .check_program(&program, &env, cwd.as_deref())
        .map(drop)
        .map_err(refusal(&program))
}

/// The engine's error for a launch check's refusal.
fn refusal(program: &str) -> impl Fn(LaunchError) -> EngineError + '_ {
    move |e| match e {
        LaunchError::ProgramNotAllowed { program, resolved } => {
            EngineError::ProgramNotAllowed { program, resolved }
        }
        LaunchError::CwdNotAllowed { path, reason } => {
            EngineError::WorkingDirectoryNotAllowed { path, reason }
        }
        LaunchError::Cwd { path, source } => EngineError::WorkingDirectory {
            path,
            reason: source.to_string(),
        },
        other => EngineError::Program {
            program: program.to_owned(),
            reason: other.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[tokio::test]
    async fn the_sandbox_refuses_with_its_own_errors() {
        let dir = tempfile::tempdir().unwrap();
        let sandbox = Arc::new(JobSandbox {
            programs: Some(
                aura_supervisor::ProgramAllowlist::new(&["true".into()], "/usr/bin:/bin").unwrap(),
            ),
            cwd_roots: Some(vec![dir.path().canonicalize().unwrap()]),
            ..JobSandbox::default()
        });
        let checks = RecentChecks::default();
        let mut spec = JobSpec::new("true", Vec::<String>::new());
        checks.check(&spec, &sandbox).await.unwrap();
        spec.program = "sh".into();
        assert!(matches!(
            checks.check(&spec, &sandbox).await,
            Err(EngineError::ProgramNotAllowed { .. })
        ));
        spec.program = "true".into();
        spec.cwd = Some("/tmp".into());
        assert!(matches!(
            checks.check(&spec, &sandbox).await,
            Err(EngineError::WorkingDirectoryNotAllowed { .. })
        ));
        spec.cwd = Some(dir.path().to_path_buf());
        checks.check(&spec, &sandbox).await.unwrap();
    }

    #[tokio::test]
    async fn inputs_must_be_uploaded() {
        let dir = tempfile::tempdir().unwrap();
        let id = aura_model::files::UploadId::from_digest(&[7; 32]);
        let mut spec = JobSpec::new("true", Vec::<String>::new());
        spec.inputs.insert("in.mov".into(), id.clone());
        assert!(matches!(
            check_inputs(&spec, dir.path().to_path_buf()).await,
            Err(EngineError::UnknownUpload { .. })
        ));
        std::fs::write(dir.path().join(id.as_str()), b"").unwrap();
        check_inputs(&spec, dir.path().to_path_buf()).await.unwrap();
    }

    #[tokio::test]
    async fn passes_are_remembered_failures_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let tool = dir.path().join("tool");
        std::fs::write(&tool, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
        let spec = JobSpec::new(tool.to_str().unwrap(), Vec::<String>::new());
        let checks = RecentChecks::default();
        let sandbox = Arc::new(JobSandbox::default());
        checks.check(&spec, &sandbox).await.unwrap();
        // Within the TTL a passed check is not repeated: the program's removal goes unnoticed here
        // (the launcher notices it at start).
        std::fs::remove_file(&tool).unwrap();
        checks.check(&spec, &sandbox).await.unwrap();
        // A failure is never remembered: it is refused every time, with the reason.
        let missing = JobSpec::new("/nonexistent/aura-tool", Vec::<String>::new());
        for _ in 0..2 {
            assert!(matches!(
                checks.check(&missing, &sandbox).await,
                Err(EngineError::Program { .. })
            ));
        }
        // Another working directory is another check.
        let mut elsewhere = spec.clone();
        elsewhere.cwd = Some(dir.path().join("missing"));
        assert!(matches!(
            checks.check(&elsewhere, &sandbox).await,
            Err(EngineError::WorkingDirectory { .. })
        ));
    }
}

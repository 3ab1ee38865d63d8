//! What a job may do: the identity it runs as, its process limits and base environment, and which
//! programs and working directories it may use. The launcher applies it to every start (`spawn` drops
//! the privileges in the child); the engine asks the same checks at submit, so a refusal comes early and
//! is checked again at launch (a symlink changed in between is caught there).
//!
//! It does not own the configuration file (the binary builds a [`JobSandbox`] from it) or secrets (the
//! engine resolves them into a launch's environment).

use crate::LaunchError;
use std::collections::{BTreeMap, HashSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

/// The account jobs run as when the daemon runs as root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobIdentity {
    /// The account's user name; jobs get it as `USER` and `LOGNAME`.
    pub name: String,
    /// The user id jobs switch to.
    pub uid: u32,
    /// The primary group id jobs switch to.
    pub gid: u32,
    /// Supplementary groups (the user's groups from the group database, primary group included).
    pub groups: Vec<u32>,
    /// The account's home directory; jobs get it as `HOME`.
    pub home: PathBuf,
}

impl JobIdentity {
    /// Looks a user up in the password and group databases.
    pub fn lookup(name: &str) -> Result<JobIdentity, SandboxError> {
        let user = nix::unistd::User::from_name(name)
            .map_err(|e| SandboxError::User {
                name: name.to_owned(),
                reason: e.to_string(),
            })?
            .ok_or_else(|| SandboxError::User {
                name: name.to_owned(),
                reason: "no such user".into(),
            })?;
        let c_name = std::ffi::CString::new(name).map_err(|_| SandboxError::User {
            name: name.to_owned(),
            reason: "contains a NUL byte".into(),
        })?;
        let groups = nix::unistd::getgrouplist(&c_name, user.gid)
            .map_err(|e| SandboxError::User {
                name: name.to_owned(),
                reason: format!("reading its groups: {e}"),
            })?
            .into_iter()
            .map(|g| g.as_raw())
            .collect();
        Ok(JobIdentity {
            name: user.name,
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
            groups,
            home: user.dir,
        })
    }

    /// The name of the account this process runs as (its effective uid), if the database knows it.
    pub fn current_name() -> Option<String> {
        nix::unistd::User::from_uid(nix::unistd::geteuid())
            .ok()
            .flatten()
            .map(|u| u.name)
    }

    /// Whether this is the superuser (uid 0): running jobs as it drops no privileges.
    pub fn is_root(&self) -> bool {
        self.uid == 0
    }
}

/// Why a sandbox could not be built from its settings.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The account jobs should run as (`jobs.user`) is unknown or its groups cannot be read.
    #[error("jobs.user {name:?}: {reason}")]
    User {
        /// The user name looked up.
        name: String,
        /// Why the lookup failed.
        reason: String,
    },
    /// A `jobs.programs` entry is relative, does not exist, or is neither an executable file nor a
    /// directory.
    #[error("jobs.programs entry {entry:?}: {reason}")]
    Program {
        /// The entry as configured.
        entry: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A `jobs.cwd_roots` entry is relative, does not exist, or is not a directory.
    #[error("jobs.cwd_roots entry {path}: {reason}")]
    CwdRoot {
        /// The entry as configured.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

/// The executables jobs may run, as canonical paths (symlinks resolved): files, and directories whose
/// direct entries are all allowed.
#[derive(Clone, Debug, Default)]
pub struct ProgramAllowlist {
    files: HashSet<PathBuf>,
    dirs: Vec<PathBuf>,
}

impl ProgramAllowlist {
    /// Resolves every entry once, at start-up: a name is searched in `path_var` (the jobs' `PATH`), a path
    /// is taken as it is; both are canonicalised, so `sh` allows the file `/usr/bin/dash` it links to, by
    /// whatever name a job later reaches it. An entry that does not exist is an error: a typo would
    /// otherwise silently allow nothing.
    pub fn new(entries: &[String], path_var: &str) -> Result<ProgramAllowlist, SandboxError> {
        let mut list = ProgramAllowlist::default();
        for entry in entries {
            let err = |reason: String| SandboxError::Program {
                entry: entry.clone(),
                reason,
            };
            let path = if entry.contains('/') {
                let path = Path::new(entry);
                if !path.is_absolute() {
                    return Err(err("must be a name or an absolute path".into()));
                }
                path.to_path_buf()
            } else {
                crate::resolve_program(entry, Some(path_var), None)
                    .map_err(|e| err(e.to_string()))?
            };
            let canonical = path.canonicalize().map_err(|e| err(e.to_string()))?;
            let meta = std::fs::metadata(&canonical).map_err(|e| err(e.to_string()))?;
            if meta.is_dir() {
                list.dirs.push(canonical);
            } else if meta.is_file() && meta.permissions().mode() & 0o111 != 0 {
                list.files.insert(canonical);
            } else {
                return Err(err("not an executable file or a directory".into()));
            }
        }
        Ok(list)
    }

    /// Whether the canonical path `program` is allowed.
    pub fn permits(&self, program: &Path) -> bool {
        self.files.contains(program)
            || program
                .parent()
                .is_some_and(|p| self.dirs.iter().any(|d| d == p))
    }

    /// Whether it has no entries, so it allows no program at all.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty() && self.dirs.is_empty()
    }
}

/// Settings for every job's start. [`JobSandbox::default`] is the library's default: no identity change,
/// no new privileges, no core dumps, the base environment of [`JobSandbox::base_env_from`] the daemon's,
/// any program and any working directory.
#[derive(Clone, Debug)]
pub struct JobSandbox {
    /// Switch to this account before `exec` (needs a root daemon). `None`: the daemon's own.
    pub identity: Option<JobIdentity>,
    /// `PR_SET_NO_NEW_PRIVS`: setuid binaries and file capabilities grant a job nothing.
    pub no_new_privs: bool,
    /// Allow core dumps (`RLIMIT_CORE` unlimited); off: `RLIMIT_CORE` 0.
    pub core_dumps: bool,
    /// `RLIMIT_NOFILE` of every job.
    pub max_open_files: Option<u64>,
    /// `RLIMIT_NPROC` of every job (counted by the kernel per user, so across all jobs of that user).
    pub max_processes: Option<u64>,
    /// The umask jobs start with (the daemon's own is 077: its database and logs are private).
    pub umask: u32,
    /// What every job's environment starts from; a job's own `env` and secrets are laid over it.
    pub base_env: BTreeMap<String, String>,
    /// `Some`: only these programs may run.
    pub programs: Option<ProgramAllowlist>,
    /// `Some`: a job's own working directory must lie inside one of these (canonical) roots; an
    /// empty list allows only the job's own directory under the data dir.
    pub cwd_roots: Option<Vec<PathBuf>>,
}

impl Default for JobSandbox {
    fn default() -> Self {
        JobSandbox {
            identity: None,
            no_new_privs: true,
            core_dumps: false,
            max_open_files: None,
            max_processes: None,
            umask: 0o022,
            base_env: JobSandbox::base_env_from(std::env::vars_os(), DEFAULT_PASS_ENV, None),
            programs: None,
            cwd_roots: None,
        }
    }
}

/// The daemon variables jobs get by default: the search path, locale and time zone. Entries ending in
/// `*` pass every variable with that prefix.
pub const DEFAULT_PASS_ENV: &[&str] = &["PATH", "LANG", "LANGUAGE", "LC_*", "TZ", "TMPDIR"];

/// The `PATH` of a job whose base environment has none, and of every job run as another account.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

impl JobSandbox {
    /// A job's base environment: the daemon's variables named by `pass` (names, or prefixes ending in
    /// `*`; never anything else of the daemon's — its secrets stay its own), `PATH` if it has none, and
    /// `HOME`, `USER`, `LOGNAME` of the account jobs run as (`identity`, else the daemon's own values).
    /// Jobs of another account never get the daemon's `PATH` (root's may name directories only root can
    /// enter, as `sudo`'s `secure_path` knows): they get [`DEFAULT_PATH`].
    pub fn base_env_from(
        daemon_env: impl IntoIterator<Item = (std::ffi::OsString, std::ffi::OsString)>,
        pass: &[impl AsRef<str>],
        identity: Option<&JobIdentity>,
    ) -> BTreeMap<String, String> {
        let passes = |name: &str| {
            pass.iter().any(|p| match p.as_ref().strip_suffix('*') {
                Some(prefix) => name.starts_with(prefix),
                None => name == p.as_ref(),
            })
        };
        let mut env = BTreeMap::new();
        let mut own = BTreeMap::new();
        for (k, v) in daemon_env {
            let (Ok(k), Ok(v)) = (k.into_string(), v.into_string()) else {
                continue;
            };
            if passes(&k) && !(identity.is_some() && k == "PATH") {
                env.insert(k.clone(), v.clone());
            }
            if ["HOME", "USER", "LOGNAME"].contains(&k.as_str()) {
                own.insert(k, v);
            }
        }
        env.entry("PATH".into())
            .or_insert_with(|| DEFAULT_PATH.into());
        match identity {
            Some(id) => {
                env.insert("HOME".into(), id.home.display().to_string());
                env.insert("USER".into(), id.name.clone());
                env.insert("LOGNAME".into(), id.name.clone());
            }
            None => env.extend(own),
        }
        env
    }

    /// The `PATH` a job searches: its own, else the base environment's.
    pub fn path_var<'a>(&'a self, job_env: &'a BTreeMap<String, String>) -> &'a str {
        job_env
            .get("PATH")
            .or_else(|| self.base_env.get("PATH"))
            .map_or(DEFAULT_PATH, String::as_str)
    }

    /// Resolves `program` as `execvp` would for the job and, with an allowlist, checks its canonical
    /// path. Returns the path to `exec`: the canonical one under an allowlist (what was checked is what
    /// runs, whatever a symlink on the way does later), else the resolved one.
    pub fn check_program(
        &self,
        program: &str,
        job_env: &BTreeMap<String, String>,
        cwd: Option<&Path>,
    ) -> Result<PathBuf, LaunchError> {
        let resolved = crate::resolve_program(program, Some(self.path_var(job_env)), cwd)?;
        let Some(allowed) = &self.programs else {
            return Ok(resolved);
        };
        let canonical = resolved
            .canonicalize()
            .map_err(|_| LaunchError::ProgramNotFound {
                program: program.to_owned(),
            })?;
        if !allowed.permits(&canonical) {
            return Err(LaunchError::ProgramNotAllowed {
                program: program.to_owned(),
                resolved: canonical,
            });
        }
        Ok(canonical)
    }

    /// Checks a working directory a job asked for: absolute, without `..`, an existing directory whose
    /// canonical path (symlinks resolved) lies inside a configured root. Returns the canonical path, which
    /// the job is started in. A path outside every root is refused before the file system is asked
    /// about it, so the refusal tells nothing about what exists there.
    pub fn check_cwd(&self, cwd: &Path) -> Result<PathBuf, LaunchError> {
        let refuse = |reason: String| LaunchError::CwdNotAllowed {
            path: cwd.to_path_buf(),
            reason,
        };
        if !cwd.is_absolute() || cwd.components().any(|c| c == Component::ParentDir) {
            return Err(refuse("must be an absolute path without `..`".into()));
        }
        let outside = |path: &Path, roots: &[PathBuf]| {
            refuse(format!(
                "{} is outside jobs.cwd_roots ({})",
                path.display(),
                roots
                    .iter()
                    .map(|r| r.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        };
        match &self.cwd_roots {
            Some(roots) if roots.is_empty() => {
                return Err(refuse(
                    "jobs run in their own directory under the data dir; jobs.cwd_roots names the \
                     directories a job may choose instead, and it is empty"
                        .into(),
                ))
            }
            Some(roots) if !roots.iter().any(|r| cwd.starts_with(r)) => {
                return Err(outside(cwd, roots))
            }
            _ => {}
        }
        let canonical = cwd.canonicalize().map_err(|source| LaunchError::Cwd {
            path: cwd.to_path_buf(),
            source,
        })?;
        if !canonical.is_dir() {
            return Err(LaunchError::Cwd {
                path: cwd.to_path_buf(),
                source: std::io::Error::from_raw_os_error(libc::ENOTDIR),
            });
        }
        match &self.cwd_roots {
            // A symlink under a root that leads out of every root.
            Some(roots) if !roots.iter().any(|r| canonical.starts_with(r)) => {
                Err(outside(&canonical, roots))
            }
            _ => Ok(canonical),
        }
    }

    /// Configured working-directory roots, each as written and canonicalised (each must exist and be a
    /// directory): a job may name a path under either form; where it leads must be under one too.
    pub fn canonical_roots(roots: &[PathBuf]) -> Result<Vec<PathBuf>, SandboxError> {
        let mut out = Vec::new();
        for root in roots {
            let canonical = {
                let err = |reason: String| SandboxError::CwdRoot {
                    path: root.clone(),
                    reason,
                };
                if !root.is_absolute() {
                    return Err(err("must be an absolute path".into()));
                }
                let canonical = root.canonicalize().map_err(|e| err(e.to_string()))?;
                if !canonical.is_dir() {
                    return Err(err("not a directory".into()));
                }
                canonical
            };
            for form in [root.clone(), canonical] {
                if !out.contains(&form) {
                    out.push(form);
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn executable(path: &Path) {
        std::fs::write(path, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn the_base_environment_passes_only_what_is_named() {
        let daemon = [
            ("PATH", "/opt/bin:/usr/bin"),
            ("LC_TIME", "C"),
            ("SECRET_TOKEN", "abc"),
            ("HOME", "/root"),
        ]
        .map(|(k, v)| (k.into(), v.into()));
        let id = JobIdentity {
            name: "aura".into(),
            uid: 999,
            gid: 999,
            groups: vec![999],
            home: "/var/lib/aura".into(),
        };
        let env = JobSandbox::base_env_from(daemon.clone(), DEFAULT_PASS_ENV, Some(&id));
        assert_eq!(
            env.get("PATH").map(String::as_str),
            Some(DEFAULT_PATH),
            "never root's PATH"
        );
        let own = JobSandbox::base_env_from(daemon.clone(), DEFAULT_PASS_ENV, None);
        assert_eq!(
            own.get("PATH").map(String::as_str),
            Some("/opt/bin:/usr/bin")
        );
        assert_eq!(env.get("LC_TIME").map(String::as_str), Some("C"));
        assert_eq!(env.get("HOME").map(String::as_str), Some("/var/lib/aura"));
        assert_eq!(env.get("USER").map(String::as_str), Some("aura"));
        assert!(!env.contains_key("SECRET_TOKEN"), "{env:?}");
        let own = JobSandbox::base_env_from(daemon, &["TZ"], None);
        assert_eq!(own.get("PATH").map(String::as_str), Some(DEFAULT_PATH));
        assert_eq!(own.get("HOME").map(String::as_str), Some("/root"));
        assert!(!own.contains_key("LC_TIME"));
    }

    #[test]
    fn the_allowlist_checks_canonical_paths_whatever_the_route() {
        let dir = tempfile::tempdir().unwrap();
        let allowed_dir = dir.path().join("allowed");
        let other = dir.path().join("other");
        std::fs::create_dir_all(&allowed_dir).unwrap();
        std::fs::create_dir_all(&other).unwrap();
        executable(&allowed_dir.join("encode"));
        executable(&other.join("evil"));
        let tool = dir.path().join("tool");
        executable(&tool);
        // A symlink inside the allowed directory that leads out of it.
        symlink(other.join("evil"), allowed_dir.join("sneaky")).unwrap();
        let sandbox = JobSandbox {
            programs: Some(
                ProgramAllowlist::new(
                    &[
                        allowed_dir.display().to_string(),
                        tool.display().to_string(),
                    ],
                    DEFAULT_PATH,
                )
                .unwrap(),
            ),
            ..JobSandbox::default()
        };
        let env = BTreeMap::new();
        assert!(sandbox
            .check_program(allowed_dir.join("encode").to_str().unwrap(), &env, None)
            .is_ok());
        assert!(sandbox
            .check_program(tool.to_str().unwrap(), &env, None)
            .is_ok());
        let refused = |program: &str, env: &BTreeMap<String, String>, cwd: Option<&Path>| {
            matches!(
                sandbox.check_program(program, env, cwd),
                Err(LaunchError::ProgramNotAllowed { .. })
            )
        };
        assert!(refused(
            allowed_dir.join("sneaky").to_str().unwrap(),
            &env,
            None
        ));
        assert!(refused(other.join("evil").to_str().unwrap(), &env, None));
        // Through PATH: a name found first in a directory the job chose.
        let path = BTreeMap::from([("PATH".to_owned(), other.display().to_string())]);
        assert!(refused("evil", &path, None));
        // Relative to the working directory.
        assert!(refused("./evil", &env, Some(&other)));
        assert!(refused("../other/evil", &env, Some(&allowed_dir)));
        // A name through PATH into the allowed directory is fine.
        let path = BTreeMap::from([("PATH".to_owned(), allowed_dir.display().to_string())]);
        assert!(sandbox.check_program("encode", &path, None).is_ok());
        // Bad entries are refused at start-up.
        assert!(ProgramAllowlist::new(&["no-such-program-aura".into()], DEFAULT_PATH).is_err());
        assert!(ProgramAllowlist::new(&["relative/tool".into()], DEFAULT_PATH).is_err());
    }

    #[test]
    fn working_directories_stay_inside_their_roots() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("projects");
        let inside = root.join("film");
        let outside = dir.path().join("private");
        std::fs::create_dir_all(&inside).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        symlink(&outside, inside.join("escape")).unwrap();
        let sandbox = JobSandbox {
            cwd_roots: Some(JobSandbox::canonical_roots(std::slice::from_ref(&root)).unwrap()),
            ..JobSandbox::default()
        };
        assert_eq!(
            sandbox.check_cwd(&inside).unwrap(),
            inside.canonicalize().unwrap()
        );
        let not_allowed =
            |p: &Path| matches!(sandbox.check_cwd(p), Err(LaunchError::CwdNotAllowed { .. }));
        assert!(not_allowed(&inside.join("escape")));
        assert!(not_allowed(&outside));
        assert!(not_allowed(&inside.join("..").join("..").join("private")));
        assert!(not_allowed(Path::new("relative")));
        assert!(matches!(
            sandbox.check_cwd(&root.join("missing")),
            Err(LaunchError::Cwd { .. })
        ));
        let none = JobSandbox {
            cwd_roots: Some(Vec::new()),
            ..JobSandbox::default()
        };
        assert!(matches!(
            none.check_cwd(&inside),
            Err(LaunchError::CwdNotAllowed { .. })
        ));
        assert!(JobSandbox::canonical_roots(&[PathBuf::from("relative")]).is_err());
        assert!(JobSandbox::canonical_roots(&[dir.path().join("missing")]).is_err());
    }

    #[test]
    fn users_are_looked_up_with_their_groups() {
        let root = JobIdentity::lookup("root").unwrap();
        assert!(root.is_root());
        assert!(root.groups.contains(&0));
        assert!(JobIdentity::lookup("no-such-user-aura").is_err());
    }
}

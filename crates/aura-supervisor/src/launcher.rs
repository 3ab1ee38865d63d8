//! The launcher thread: the only place that forks. A dedicated, long-lived std thread, because
//! `PR_SET_PDEATHSIG` fires when the *thread* that forked exits, and tokio's blocking-pool threads exit
//! when idle. It creates the job cgroups, forks/execs with `std::process::Command` + `pre_exec`, opens
//! the pidfd and replies on a oneshot.

use crate::host::Layout;
use crate::tree::{reap_blocking, TreeRef};
use crate::{cgroup, procfs, resolve_program, LaunchError, LaunchRequest};
use std::ffi::CString;
use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

pub(crate) struct Spawned {
    pub pidfd: Option<OwnedFd>,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
    pub tree: TreeRef,
    pub started: Instant,
}

pub(crate) enum LauncherMsg {
    Launch(
        Box<LaunchRequest>,
        oneshot::Sender<Result<Spawned, LaunchError>>,
    ),
    Stop,
}

pub(crate) fn start(
    layout: Layout,
    oom_score_adj: i32,
    mut rx: mpsc::Receiver<LauncherMsg>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new().name("aura-launcher".into()).spawn(move || {
        while let Some(msg) = rx.blocking_recv() {
            match msg {
                LauncherMsg::Stop => break,
                LauncherMsg::Launch(req, reply) => {
                    let result = launch_one(&layout, oom_score_adj, &req);
                    if let Err(Ok(orphan)) = reply.send(result) {
                        // The caller went away (its launch future was cancelled): nobody owns this tree.
                        tracing::warn!(job_id = %req.job_id, pid = orphan.tree.pid, "launch abandoned by caller; killing the tree");
                        abandon(orphan);
                    }
                }
            }
        }
    })
}

fn abandon(s: Spawned) {
    s.tree.kill_and_wait(Duration::from_secs(2));
    reap_blocking(s.tree.pid, Duration::from_secs(5));
    s.tree.remove_dirs();
}

fn launch_one(
    layout: &Layout,
    oom_score_adj: i32,
    req: &LaunchRequest,
) -> Result<Spawned, LaunchError> {
    let program = resolve_program(
        &req.program,
        req.env.get("PATH").map(String::as_str),
        Some(&req.cwd),
    )?;
    match std::fs::metadata(&req.cwd) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(LaunchError::Cwd {
                path: req.cwd.clone(),
                source: std::io::Error::from_raw_os_error(libc::ENOTDIR),
            })
        }
        Err(source) => {
            return Err(LaunchError::Cwd {
                path: req.cwd.clone(),
                source,
            })
        }
    }

    let name = format!("job-{}-{}", req.job_id.0, req.attempt);
    let v2 = layout.v2_root.as_ref().map(|r| r.join(&name));
    let v1 = layout.v1_root.as_ref().map(|r| r.join(&name));
    let dirs: Vec<PathBuf> = v2.iter().chain(v1.iter()).cloned().collect();
    let remove_dirs = || {
        for d in &dirs {
            let _ = cgroup::rmdir(d, Duration::from_millis(100));
        }
    };
    // Open every job cgroup's cgroup.procs before forking (O_CLOEXEC, std's default): the child joins
    // its cgroups by writing "0" before exec, so no fork of the job can ever happen outside them.
    let mut procs_files = Vec::new();
    for dir in &dirs {
        let opened = cgroup::mkdir(dir).and_then(|()| {
            OpenOptions::new()
                .write(true)
                .open(dir.join("cgroup.procs"))
        });
        match opened {
            Ok(f) => procs_files.push(f),
            Err(source) => {
                remove_dirs();
                return Err(LaunchError::Cgroup {
                    path: dir.clone(),
                    source,
                });
            }
        }
    }
    let procs_fds: Vec<RawFd> = procs_files.iter().map(|f| f.as_raw_fd()).collect();
    let oom_path = CString::new("/proc/self/oom_score_adj").expect("no NUL");
    let oom_value = oom_score_adj.to_string().into_bytes();
    // SAFETY: plain syscall.
    let launcher_pid = unsafe { libc::getpid() };

    let mut cmd = Command::new(&program);
    cmd.arg0(&req.program)
        .args(&req.args)
        .envs(&req.env)
        .current_dir(&req.cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: the closure only makes async-signal-safe syscalls on data prepared before the fork.
    unsafe {
        cmd.pre_exec(move || {
            // Lead our own process group, so the group is the job (fallback backend, terminal signals).
            if libc::setpgid(0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // Die with the launcher thread; if it is already gone, don't run at all.
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getppid() != launcher_pid {
                libc::_exit(111);
            }
            for &fd in &procs_fds {
                if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            let fd = libc::open(oom_path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd >= 0 {
                libc::write(fd, oom_value.as_ptr().cast(), oom_value.len());
                libc::close(fd);
            }
            // Whatever fd the daemon inherited without O_CLOEXEC (e.g. a jobserver pipe from its own
            // parent) must not reach the job: mark every fd >= 3 close-on-exec. Marking rather than
            // closing keeps std's exec-error pipe working. Ignored on kernels before 5.11.
            libc::syscall(
                libc::SYS_close_range,
                3u32,
                u32::MAX,
                libc::CLOSE_RANGE_CLOEXEC as libc::c_uint,
            );
            Ok(())
        });
    }
    let started = Instant::now();
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(source) => {
            remove_dirs();
            return Err(LaunchError::Spawn {
                program: req.program.clone(),
                source,
            });
        }
    };
    drop(procs_files);
    let pid = child.id() as i32;
    let stdout = OwnedFd::from(child.stdout.take().expect("piped"));
    let stderr = OwnedFd::from(child.stderr.take().expect("piped"));
    drop(child); // std's Child does not wait or kill on drop; we reap with wait4 ourselves.

    // The child is not reaped yet (only we reap it), so its pid and /proc entry are pinned.
    let pidfd = rustix::process::Pid::from_raw(pid)
        .and_then(|p| rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()).ok());
    if pidfd.is_none() {
        tracing::warn!(pid, "pidfd_open failed; waiting by polling");
    }
    let start_ticks = procfs::stat(pid).map_or(0, |s| s.start_ticks);
    let tree = TreeRef {
        backend: layout.backend,
        pid,
        start_ticks,
        v2,
        v1,
        known: Arc::default(),
    };
    Ok(Spawned {
        pidfd,
        stdout,
        stderr,
        tree,
        started,
    })
}

//! Starting a job's main process the way `posix_spawn` does — `clone(CLONE_VM | CLONE_VFORK)` on a small
//! private stack — but with the job setup `posix_spawn` cannot express: joining cgroups, its own process
//! group, `PR_SET_PDEATHSIG`, `oom_score_adj`, close-on-exec of every inherited fd, resource limits, and
//! dropping to the jobs' account with no way back (`PR_SET_NO_NEW_PRIVS`).
//!
//! The credential changes are raw syscalls on purpose: glibc's `setuid` and friends change every thread
//! of the *process* (they signal each thread to do the same), and this child shares the daemon's memory
//! and glibc's thread list — the wrappers would try to make the daemon's threads drop their privileges.
//! The raw syscalls change only the calling task, which is all the child is.
//!
//! Why not `fork`: forking the daemon copies its page tables and write-protects every page, so each of
//! its threads then pays a copy-on-write fault and a TLB-shootdown IPI per page it touches while the child
//! lives. Measured on the throughput benchmark, that made the daemon's own work per trivial job several times
//! the job's cost. With `CLONE_VM` the child borrows the parent's memory until `execve`, as `vfork` does;
//! only the calling (launcher) thread is suspended meanwhile.
//!
//! The child runs on data prepared entirely before `clone` and makes only raw syscalls (async-signal-safe,
//! no allocation, no locks), reporting a failure through a shared atomic before `_exit`.

use std::ffi::{c_int, c_void, CString};
use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicI32, Ordering};

/// Everything the child needs, prepared by the parent.
pub(crate) struct SpawnPlan {
    pub path: CString,
    pub argv: Vec<CString>,
    /// The job's own `KEY=VALUE` entries, kept alive for `envp`, which points into them (and into the daemon's).
    pub _own_env: Vec<CString>,
    /// The child's environment, null-terminated: pointers into `own_env` and the launcher's copy of the
    /// daemon's environment, both alive for as long as the plan.
    pub envp: Vec<*const libc::c_char>,
    pub cwd: CString,
    /// Enter `cwd` before dropping privileges (the job's own directory under the data dir), else after.
    pub chdir_privileged: bool,
    /// The account to switch to; `None` keeps the daemon's.
    pub credentials: Option<Credentials>,
    pub no_new_privs: bool,
    pub rlimits: Vec<(RlimitResource, libc::rlimit)>,
    pub umask: libc::mode_t,
    pub stdin: RawFd,
    pub stdout: RawFd,
    pub stderr: RawFd,
    /// The write end of the progress pipe, made the job's fd 3 (`PROGRESS_FD`).
    pub progress: Option<RawFd>,
    /// Open `cgroup.procs` files of the job's cgroups: writing "0" moves the writer in.
    pub cgroup_procs: Vec<RawFd>,
    pub oom_score_adj: Vec<u8>,
    /// The job's nice value.
    pub nice: i32,
    /// Start in the `SCHED_IDLE` class (the CPU cap's fallback mechanism, while capped).
    pub sched_idle: bool,
    /// The pid of the daemon; the child exits if its parent is already gone after PR_SET_PDEATHSIG.
    pub parent_pid: libc::pid_t,
}

/// The job's account, resolved before the spawn (the child cannot read the user database).
pub(crate) struct Credentials {
    pub uid: libc::uid_t,
    pub gid: libc::gid_t,
    pub groups: Vec<libc::gid_t>,
}

/// A resource as `setrlimit` takes it (its type differs between libc targets).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub(crate) type RlimitResource = libc::__rlimit_resource_t;
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub(crate) type RlimitResource = libc::c_int;

/// The limits every job starts with: no core dumps unless allowed, and the configured open-file and
/// process caps — less those the daemon already has (a job inherits them; asked once, at start-up, as
/// the daemon's own limits do not change).
pub(crate) fn rlimits(sandbox: &crate::sandbox::JobSandbox) -> Vec<(RlimitResource, libc::rlimit)> {
    let limit = |n: u64| libc::rlimit {
        rlim_cur: n as libc::rlim_t,
        rlim_max: n as libc::rlim_t,
    };
    let mut limits = Vec::new();
    if !sandbox.core_dumps {
        limits.push((libc::RLIMIT_CORE, limit(0)));
    }
    if let Some(n) = sandbox.max_open_files {
        limits.push((libc::RLIMIT_NOFILE, limit(n)));
    }
    if let Some(n) = sandbox.max_processes {
        limits.push((libc::RLIMIT_NPROC, limit(n)));
    }
    limits.retain(|(resource, wanted)| {
        let mut current = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes the struct it is given.
        let known = unsafe { libc::getrlimit(*resource, &mut current) } == 0;
        !(known && current.rlim_cur == wanted.rlim_cur && current.rlim_max == wanted.rlim_max)
    });
    limits
}

// SAFETY: the raw pointers in `envp` point into `_own_env` (owned by the plan) and into the launcher's copy
// of the daemon's environment, which outlives every plan; nothing writes through them, and only the child
// of whichever thread starts the plan reads them.
unsafe impl Send for SpawnPlan {}

/// Which setup step failed in the child, for the error message.
const STAGES: [&str; 14] = [
    "setpgid",
    "PR_SET_PDEATHSIG",
    "joining the job cgroup",
    "oom_score_adj",
    "redirecting stdio",
    "chdir",
    "execve",
    "parent gone",
    "setrlimit",
    "setgroups",
    "setresgid",
    "setresuid",
    "PR_SET_NO_NEW_PRIVS",
    "PR_SET_PDEATHSIG after the switch of account",
];

struct Shared<'a> {
    plan: &'a SpawnPlan,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    oom_path: *const libc::c_char,
    errno: AtomicI32,
    stage: AtomicI32,
}

/// The child's first and only Rust frame.
extern "C" fn child_main(arg: *mut c_void) -> c_int {
    // SAFETY: `arg` points to the `Shared` on the parent's stack, alive until the parent resumes, which
    // happens only after this child has exec'd or exited (CLONE_VFORK).
    let shared = unsafe { &*(arg as *const Shared) };
    let plan = shared.plan;
    let fail = |stage: i32| -> ! {
        shared.errno.store(
            io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EINVAL),
            Ordering::SeqCst,
        );
        shared.stage.store(stage, Ordering::SeqCst);
        // SAFETY: terminates only this child.
        unsafe { libc::_exit(127) }
    };
    // Dies with the daemon: SIGKILL when the parent (the launcher thread) ends — and if it already has,
    // now. `stage` names the step in the error.
    let die_with_parent = |stage: i32| {
        // SAFETY: plain syscalls on this child.
        unsafe {
            let sig = libc::SIGKILL as libc::c_ulong;
            if libc::prctl(libc::PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0 {
                fail(stage);
            }
            if libc::getppid() != plan.parent_pid {
                fail(7);
            }
        }
    };
    // SAFETY: raw syscalls on memory prepared by the parent; see the module docs.
    unsafe {
        // The parent blocked every signal around clone; give the job default dispositions (handlers of the
        // daemon's code must never run in the job) before unblocking right before exec.
        let mut dfl: libc::sigaction = std::mem::zeroed();
        dfl.sa_sigaction = libc::SIG_DFL;
        for sig in 1..libc::SIGRTMAX() {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::sigaction(sig, &dfl, std::ptr::null_mut());
            }
        }
        // The job leads its own process group: the group is the tree for the fallback backend, and a
        // terminal's Ctrl-C to the daemon does not reach it.
        if libc::setpgid(0, 0) != 0 {
            fail(0);
        }
        die_with_parent(1);
        // Inside the job's cgroups before exec: nothing the job ever forks can start outside them.
        for &fd in &plan.cgroup_procs {
            if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                fail(2);
            }
        }
        let fd = libc::open(shared.oom_path, libc::O_WRONLY | libc::O_CLOEXEC);
        if fd >= 0 {
            libc::write(
                fd,
                plan.oom_score_adj.as_ptr().cast(),
                plan.oom_score_adj.len(),
            );
            libc::close(fd);
        }
        // The job's own priority, not the daemon's (which may run above its jobs). Raising the value
        // is always allowed; below the daemon's it needs the privilege, and without it the job keeps
        // the daemon's.
        libc::setpriority(libc::PRIO_PROCESS, 0, plan.nice);
        if plan.sched_idle {
            // After the nice value, which the idle class keeps for when the cap is lifted. Best effort,
            // like the nice value: a job never fails to start for the cap (the daemon may lack the
            // privilege), and it is reapplied by the next change of the cap.
            let param = libc::sched_param { sched_priority: 0 };
            libc::syscall(
                libc::SYS_sched_setscheduler,
                0,
                libc::SCHED_IDLE,
                &param as *const libc::sched_param,
            );
        }
        for (from, to) in [(plan.stdin, 0), (plan.stdout, 1), (plan.stderr, 2)] {
            if libc::dup2(from, to) < 0 {
                fail(4);
            }
        }
        // Whatever fd the daemon inherited without O_CLOEXEC (a jobserver pipe from its own parent, say)
        // must not reach the job. Ignored by kernels before 5.11.
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC as libc::c_uint,
        );
        // After close_range: the progress pipe is the one fd above stderr the job keeps. dup2 clears
        // close-on-exec on the copy; a pipe already at that number has it cleared directly.
        if let Some(from) = plan.progress {
            let to = crate::tree::PROGRESS_FD;
            let kept = if from == to {
                libc::fcntl(to, libc::F_SETFD, 0) == 0
            } else {
                libc::dup2(from, to) >= 0
            };
            if !kept {
                fail(4);
            }
        }
        for (resource, limit) in &plan.rlimits {
            if libc::setrlimit(*resource, limit) != 0 {
                fail(8);
            }
        }
        libc::umask(plan.umask);
        if plan.chdir_privileged && libc::chdir(plan.cwd.as_ptr()) != 0 {
            fail(5);
        }
        if let Some(c) = &plan.credentials {
            // Groups first, while the child may still change them; the uid last, after which it can
            // change nothing back.
            if libc::syscall(libc::SYS_setgroups, c.groups.len(), c.groups.as_ptr()) != 0 {
                fail(9);
            }
            if libc::syscall(libc::SYS_setresgid, c.gid, c.gid, c.gid) != 0 {
                fail(10);
            }
            if libc::syscall(libc::SYS_setresuid, c.uid, c.uid, c.uid) != 0 {
                fail(11);
            }
            // The kernel clears the parent-death signal when the credentials change: set it again.
            die_with_parent(13);
        }
        if plan.no_new_privs && libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            fail(12);
        }
        if !plan.chdir_privileged && libc::chdir(plan.cwd.as_ptr()) != 0 {
            fail(5);
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::pthread_sigmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        libc::execve(plan.path.as_ptr(), shared.argv, shared.envp);
        fail(6)
    }
}

/// Starts the process on `stack` (the child runs only until `execve`, so a small one is plenty, and it is
/// free again when this returns) and returns its pid. On failure the child has been reaped and the error
/// names the step that failed.
pub(crate) fn spawn(plan: &SpawnPlan, stack: &mut [u8]) -> io::Result<libc::pid_t> {
    let argv: Vec<*const libc::c_char> = plan
        .argv
        .iter()
        .map(|a| a.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let oom_path = c"/proc/self/oom_score_adj";
    let shared = Shared {
        plan,
        argv: argv.as_ptr(),
        envp: plan.envp.as_ptr(),
        oom_path: oom_path.as_ptr(),
        errno: AtomicI32::new(0),
        stage: AtomicI32::new(-1),
    };
    // SAFETY: the stack grows down from its (16-byte aligned) top; it outlives the child's use of it,
    // because CLONE_VFORK suspends this thread until the child has exec'd or exited.
    let pid = unsafe {
        let top = stack.as_mut_ptr().add(stack.len()) as usize & !15;
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        let pid = libc::clone(
            child_main,
            top as *mut c_void,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            &shared as *const Shared as *mut c_void,
        );
        let clone_error = io::Error::last_os_error();
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        if pid < 0 {
            return Err(clone_error);
        }
        pid
    };
    let errno = shared.errno.load(Ordering::SeqCst);
    if errno != 0 {
        let stage = usize::try_from(shared.stage.load(Ordering::SeqCst))
            .ok()
            .and_then(|s| STAGES.get(s));
        // SAFETY: reaps our own child, which has exited (_exit above).
        unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
        let error = io::Error::from_raw_os_error(errno);
        return Err(io::Error::new(
            error.kind(),
            format!("{}: {error}", stage.unwrap_or(&"setup")),
        ));
    }
    Ok(pid)
}

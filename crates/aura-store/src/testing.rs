//! Test fixture (feature `testing`): `PgCluster`, a throw-away PostgreSQL cluster in a temporary
//! directory, on a free loopback port, trusting local connections, `fsync` off.
//!
//! It runs the installed server's own binaries (`/usr/lib/postgresql/<newest>/bin`); when run as root
//! (which `initdb` refuses), it runs them as the `postgres` user over a directory handed to that user.
//! A machine without PostgreSQL fails the test loudly rather than skipping it.

use std::net::TcpListener;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// Where Debian and Ubuntu install PostgreSQL's server binaries, one directory per major version.
const INSTALL_ROOT: &str = "/usr/lib/postgresql";

/// A PostgreSQL cluster of its own: stopped (immediately) and its directory removed on drop.
pub struct PgCluster {
    dir: PathBuf,
    /// Removes `dir` on drop; `None` for the shared cluster, whose reaper removes it.
    _temp: Option<tempfile::TempDir>,
    bin: PathBuf,
    port: u16,
    /// The account the server runs as, when the tests run as root.
    account: Option<(u32, u32)>,
}

impl std::fmt::Debug for PgCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgCluster")
            .field("dir", &self.dir)
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

/// Databases made by `fresh_database`, numbered across the process.
static DATABASES: AtomicU64 = AtomicU64::new(0);

/// The newest installed server's binaries.
fn server_bin() -> PathBuf {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir(INSTALL_ROOT)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    match versions.pop() {
        Some((_, bin)) => bin,
        None => panic!(
            "PostgreSQL is not installed (no {INSTALL_ROOT}/*/bin/initdb): `cargo xtask test` \
             installs it, or apt-get install postgresql"
        ),
    }
}

/// The `postgres` account's uid and gid, from /etc/passwd.
fn postgres_account() -> (u32, u32) {
    let passwd = std::fs::read_to_string("/etc/passwd").expect("read /etc/passwd");
    passwd
        .lines()
        .map(|line| line.split(':').collect::<Vec<_>>())
        .find(|fields| fields.first() == Some(&"postgres") && fields.len() > 3)
        .and_then(|fields| Some((fields[2].parse().ok()?, fields[3].parse().ok()?)))
        .unwrap_or_else(|| {
            panic!(
                "running as root, and there is no `postgres` user to run PostgreSQL as \
                 (apt-get install postgresql creates it)"
            )
        })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn chown_tree(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).expect("hand the directory to postgres");
}

impl PgCluster {
    /// Creates and starts a cluster of its own (`initdb`, then `pg_ctl start -w`). Panics with the
    /// server's output if it cannot.
    pub fn start() -> PgCluster {
        let temp = tempfile::Builder::new()
            .prefix("aura-pg-")
            .tempdir()
            .expect("tempdir");
        let mut cluster = PgCluster::create(temp.path().to_owned());
        cluster._temp = Some(temp);
        cluster
    }

    /// One cluster for the whole test binary, started on first use; it is stopped and removed when the
    /// process exits (a watcher process does that: statics are never dropped). Give each test its own
    /// database (`fresh_database`); a test that stops the server needs a cluster of its own (`start`).
    pub fn shared() -> &'static PgCluster {
        static SHARED: OnceLock<PgCluster> = OnceLock::new();
        SHARED.get_or_init(|| {
            let temp = tempfile::Builder::new()
                .prefix("aura-pg-")
                .tempdir()
                .expect("tempdir");
            let dir = temp.keep();
            let cluster = PgCluster::create(dir.clone());
            // Stops the server (SIGQUIT to the postmaster: an immediate shutdown, which root may send
            // where pg_ctl would refuse to run) and removes its directory once this process is gone.
            let script = format!(
                "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; \
                 kill -QUIT $(head -n 1 '{data}/postmaster.pid') 2>/dev/null; sleep 1; rm -rf '{dir}'",
                pid = std::process::id(),
                data = cluster.data().display(),
                dir = dir.display(),
            );
            // Started in the background by a shell that exits at once (and is waited for), so the
            // watcher is nobody's zombie; in a process group of its own, so a ^C to the test run does
            // not kill it before it has stopped the server.
            let started = Command::new("sh")
                .args(["-c", &format!("({script}) >/dev/null 2>&1 </dev/null &")])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0)
                .status()
                .expect("start the cluster's reaper");
            assert!(started.success(), "starting the cluster's reaper failed");
            cluster
        })
    }

    fn create(dir: PathBuf) -> PgCluster {
        let bin = server_bin();
        let account = rustix::process::geteuid().is_root().then(postgres_account);
        if let Some((uid, gid)) = account {
            chown_tree(&dir, uid, gid);
        }
        let cluster = PgCluster {
            dir,
            _temp: None,
            bin,
            port: free_port(),
            account,
        };
        cluster.run(
            "initdb",
            &[
                "-D",
                &cluster.data().display().to_string(),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        );
        cluster.pg_ctl_start();
        cluster
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// Runs one of the server's binaries (as `postgres` when root); panics with its output on failure.
    fn run(&self, program: &str, args: &[&str]) {
        let output = self
            .command(program)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
        assert!(
            output.status.success(),
            "{program} {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(self.bin.join(program));
        if let Some((uid, gid)) = self.account {
            command.uid(uid).gid(gid).env("HOME", &self.dir);
        }
        command.current_dir(&self.dir);
        command
    }

    fn pg_ctl_start(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off \
             -c full_page_writes=off -c max_connections=200",
            self.port,
            self.dir.display()
        );
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data().display().to_string(),
                "-l",
                &self.dir.join("server.log").display().to_string(),
                "-o",
                &options,
                "-w",
                "start",
            ],
        );
    }

    /// The superuser's URL of the cluster's default database: `postgres://postgres@127.0.0.1:PORT/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// The port the server listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Creates a database with a name used nowhere else and returns its URL: each test gets its own.
    pub fn fresh_database(&self) -> String {
        let name = format!(
            "aura_test_{}_{}",
            std::process::id(),
            DATABASES.fetch_add(1, Ordering::Relaxed)
        );
        let output = Command::new(self.bin.join("psql"))
            .args([
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-c",
                &format!("CREATE DATABASE {name}"),
            ])
            .stdin(Stdio::null())
            .output()
            .expect("run psql");
        assert!(
            output.status.success(),
            "CREATE DATABASE failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    /// Stops the server at once (`pg_ctl stop -m immediate`): connections drop, new ones are refused.
    pub fn stop(&self) {
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data().display().to_string(),
                "stop",
                "-m",
                "immediate",
            ],
        );
    }

    /// Starts the stopped server again, on the same port with the same data.
    pub fn start_again(&self) {
        self.pg_ctl_start();
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        // Already stopped is fine: the status is not looked at.
        let _ = self
            .command("pg_ctl")
            .args([
                "-D",
                &self.data().display().to_string(),
                "stop",
                "-m",
                "immediate",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

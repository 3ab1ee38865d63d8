//! Project automation: `cargo xtask test` (install what the tests need, then lint and test everything, then
//! a short fuzz where nightly exists), `cargo xtask fuzz …` (cargo-fuzz over fuzz/, nightly), `cargo xtask
//! mutants …` (cargo-mutants on what a change touched) and `cargo xtask bench …` (the benchmark harness;
//! figures go to BENCHMARKS.md).

mod api_bench;
mod bench;
mod control_bench;
mod dashboard_bench;
mod fleet_bench;
mod harness;
mod janitor_bench;
mod media_bench;

use anyhow::{bail, Context};
use std::path::{Path, PathBuf};
use std::process::Command;

const USAGE: &str = "usage:
  cargo xtask test                 install the system packages the tests need, then fmt, clippy and the whole suite,
                                   then 10 s of fuzzing per target where a nightly toolchain exists
  cargo xtask fuzz [--seconds N] [--grow-corpus] [TARGET...]
                                   cargo-fuzz on nightly (installed if missing), N s per target (default 60), every
                                   target of fuzz/Cargo.toml unless named; new corpus entries go to a temporary
                                   folder unless --grow-corpus writes them into fuzz/corpus/TARGET
  cargo xtask deps                 only install the system packages (and, as root, the system user `aura`)
  cargo xtask mutants [--base REV] [-p CRATE]...
                                   cargo-mutants (installed if missing) on the code changed since REV (default
                                   HEAD: the uncommitted change), each mutant tested by its own crate's tests;
                                   the survivors are what the tests do not pin
  cargo xtask bench throughput [--jobs N] [--parallel N] [--runs N] [--queued]
  cargo xtask bench supervisor [--jobs N] [--parallel N] [--standby N]
  cargo xtask bench handoff [--rounds N]       (thread wake-up round trip, same CPU vs two CPUs)
  cargo xtask bench kill [--rounds N]
  cargo xtask bench metrics [--scrapes N]      (needs prometheus-node-exporter)
  cargo xtask bench soak [--jobs N] [--every N]
  cargo xtask bench fleet [--jobs N] [--nodes N]         (PostgreSQL fleet vs single-node SQLite, rescue time)
  cargo xtask bench api [--seconds N] [--runs N]          (wrk: an authenticated read; needs wrk)
  cargo xtask bench flood-memory [--small N] [--large N]  (daemon RSS and fds around idle-connection floods)
  cargo xtask bench flood [--connections N] [--seconds N] (/healthz under idle and slowloris connections)
  cargo xtask bench sse [--subscribers N] [--jobs N]      (all-jobs event stream fan-out: RSS, delivery latency)
  cargo xtask bench sse-stuck [--jobs N] [--rounds N]     (trivial jobs alone vs beside a client that reads nothing, ABBA)
  cargo xtask bench ffmpeg [--encodes N] [--rounds N]     (real encodes directly vs under Aura, ABBA)
  cargo xtask bench control [--seconds N] [--cycles N]
                                   (a 10 ms stand-in and a busy editor outside Aura beside 2 encodes, CPU throttle
                                   off / on; pause-resume latency)
  cargo xtask bench dashboard [--pages N] [--jobs N] [--seconds N]
  cargo xtask bench janitor [--files N] [--rounds N]      (the tmp sweep vs find -mtime +1 -delete, ABBA)
  cargo xtask bench upload [--mib N] [--rounds N]         (POST /api/uploads vs cp + sync, ABBA)
  cargo xtask bench retention [--jobs N]                  (history export + compaction; submit latency meanwhile)
                                   (daemon CPU and RSS with N dashboards open in Chromium vs none, N jobs
                                   running; first paint of / and page weight)";

/// Debian packages the test suite runs for real: FFmpeg (encode + ffprobe), stress-ng (memory hogs),
/// procps and util-linux (`setsid`, `ps` in process-tree tests), prometheus (`promtool check metrics`),
/// python3-prometheus-client (its strict OpenMetrics parser checks `/metrics` in that format), chromium
/// (the dashboard's browser tests, driven by Playwright), nodejs and npm (Playwright itself),
/// systemd (`systemd-analyze verify` of the unit), man-db
/// (the man page renders), sqlite3 (the upgrade guide's backup command), postgresql (fleet mode's tests) and zstd (`tar --zstd` makes
/// the archived job directory a download test reads). Each is
/// found by a program on `PATH`, or by an absolute path for what is not a program.
const PACKAGES: &[(&str, &str)] = &[
    ("ffmpeg", "ffmpeg"),
    ("ffprobe", "ffmpeg"),
    ("stress-ng", "stress-ng"),
    ("setsid", "util-linux"),
    ("ps", "procps"),
    ("promtool", "prometheus"),
    (
        "/usr/lib/python3/dist-packages/prometheus_client/openmetrics/parser.py",
        "python3-prometheus-client",
    ),
    ("chromium", "chromium"),
    ("node", "nodejs"),
    ("npm", "npm"),
    ("systemd-analyze", "systemd"),
    ("man", "man-db"),
    ("sqlite3", "sqlite3"),
    ("zstd", "zstd"),
    // Fleet mode's store: the tests start throw-away clusters of their own (initdb into a temp dir, a
    // loopback port), never the system service.
    ("pg_ctlcluster", "postgresql"),
    // The benchmarks' peers and load generator (`bench metrics`, `bench api`): not needed by the suite,
    // installed with it so that a fresh machine can run every figure in BENCHMARKS.md.
    ("wrk", "wrk"),
    ("prometheus-node-exporter", "prometheus-node-exporter"),
];

/// schemathesis, pinned: it tests the live daemon against its own OpenAPI document.
const SCHEMATHESIS: &str = "schemathesis==4.32.5";

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = workspace_root()?;
    match args.first().map(String::as_str) {
        Some("test") => {
            install_packages()?;
            ensure_job_user()?;
            install_tools(&root)?;
            run(&root, "cargo", &["fmt", "--all", "--", "--check"])?;
            run(
                &root,
                "cargo",
                &[
                    "clippy",
                    "--workspace",
                    "--all-targets",
                    "--",
                    "-D",
                    "warnings",
                ],
            )?;
            run(
                &root,
                "cargo",
                // Every test binary runs even after one fails, so that one run shows every failure.
                &[
                    "test",
                    "--workspace",
                    "--no-fail-fast",
                    "--",
                    "--color=never",
                ],
            )?;
            fuzz(
                &root,
                &["--seconds".into(), "10".into()],
                Fuzzing::AfterTests,
            )
        }
        Some("deps") => {
            install_packages()?;
            ensure_job_user()?;
            install_tools(&root)
        }
        Some("fuzz") => fuzz(&root, &args[1..], Fuzzing::Asked),
        Some("mutants") => mutants(&root, &args[1..]),
        Some("bench") => bench::main(&root, &args[1..]),
        _ => {
            eprintln!("{USAGE}");
            bail!("unknown or missing command")
        }
    }
}

/// `cargo xtask mutants [--base REV] [-p CRATE]...`: cargo-mutants limited to the lines changed since `REV`
/// (`--in-diff`), so that a change's new code is checked in minutes rather than the whole workspace.
fn mutants(root: &Path, args: &[String]) -> anyhow::Result<()> {
    let mut base = "HEAD".to_owned();
    let mut packages: Vec<String> = Vec::new();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--base" => base = args.next().context("--base needs a revision")?.clone(),
            "-p" | "--package" => packages.push(args.next().context("-p needs a crate")?.clone()),
            other => bail!("unknown argument {other:?} (expected --base REV or -p CRATE)"),
        }
    }
    if !have("cargo-mutants") {
        eprintln!("xtask: installing cargo-mutants");
        run(root, "cargo", &["install", "--locked", "cargo-mutants"])?;
    }
    let diff = Command::new("git")
        .args(["diff", &base, "--"])
        .current_dir(root)
        .output()
        .context("running git diff")?;
    if !diff.status.success() {
        bail!(
            "git diff {base} failed: {}",
            String::from_utf8_lossy(&diff.stderr).trim()
        );
    }
    if diff.stdout.is_empty() {
        eprintln!("xtask: nothing changed since {base}: no mutants to test");
        return Ok(());
    }
    let file = std::env::temp_dir().join(format!("aura-mutants-{}.diff", std::process::id()));
    std::fs::write(&file, &diff.stdout).context("writing the diff")?;
    let file_arg = file.to_string_lossy().into_owned();
    let mut argv: Vec<&str> = vec![
        "mutants",
        "--in-diff",
        &file_arg,
        "-j",
        "2",
        "--timeout",
        "120",
    ];
    for p in &packages {
        argv.extend(["-p", p.as_str()]);
    }
    let result = run(root, "cargo", &argv);
    let _ = std::fs::remove_file(&file);
    result
}

fn workspace_root() -> anyhow::Result<PathBuf> {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    Ok(manifest
        .parent()
        .context("xtask has no parent directory")?
        .to_path_buf())
}

/// Whether `program` is on `PATH` — or, given an absolute path, whether that file exists.
fn have(program: &str) -> bool {
    if program.starts_with('/') {
        return Path::new(program).is_file();
    }
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
        .unwrap_or(false)
}

/// Installs missing Debian packages with apt-get (as root, or through sudo).
fn install_packages() -> anyhow::Result<()> {
    let mut missing: Vec<&str> = PACKAGES
        .iter()
        .filter(|(bin, _)| !have(bin))
        .map(|(_, pkg)| *pkg)
        .collect();
    missing.dedup();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing {}", missing.join(" "));
    let is_root = rustix::process::geteuid().is_root();
    let prefix: Vec<&str> = if is_root { vec![] } else { vec!["sudo", "-n"] };
    let apt = |extra: &[&str]| -> anyhow::Result<()> {
        let mut argv = prefix.clone();
        argv.extend(["env", "DEBIAN_FRONTEND=noninteractive", "apt-get"]);
        argv.extend(extra);
        run(Path::new("/"), argv[0], &argv[1..])
    };
    apt(&["update", "-qq"])?;
    let mut install = vec!["install", "-y", "-qq", "--no-install-recommends"];
    install.extend(&missing);
    apt(&install)
}

/// The test tools that come from language registries rather than Debian: schemathesis into the
/// project's own virtual environment `.tools/venv` (never the system Python), and Playwright's driver
/// (`playwright-core`, which uses Debian's Chromium and downloads no browser) into `tests/browser`
/// from its lock file. Each is skipped when already there.
fn install_tools(root: &Path) -> anyhow::Result<()> {
    let venv = root.join(".tools/venv");
    if !venv.join("bin/schemathesis").is_file() {
        eprintln!("xtask: installing {SCHEMATHESIS} into .tools/venv");
        let python = if have("python3") { "python3" } else { "python" };
        run(root, python, &["-m", "venv", ".tools/venv"])?;
        let pip = venv.join("bin/pip");
        run(
            root,
            &pip.to_string_lossy(),
            &[
                "install",
                "--quiet",
                "--disable-pip-version-check",
                SCHEMATHESIS,
            ],
        )?;
    }
    let browser = root.join("tests/browser");
    if !browser
        .join("node_modules/playwright-core/package.json")
        .is_file()
    {
        eprintln!("xtask: installing playwright-core into tests/browser");
        run(&browser, "npm", &["ci", "--no-audit", "--no-fund"])?;
    }
    Ok(())
}

/// The system account a root daemon runs jobs as (`jobs.user`'s default, README "What a job may do"):
/// created where the tests run as root, so that they exercise the default rather than its `nobody`
/// fallback. Nothing to do for a non-root run (jobs then run as the daemon's own user).
fn ensure_job_user() -> anyhow::Result<()> {
    const USER: &str = "aura";
    if !rustix::process::geteuid().is_root() {
        return Ok(());
    }
    let exists = Command::new("id")
        .arg(USER)
        .output()
        .is_ok_and(|o| o.status.success());
    if exists {
        return Ok(());
    }
    eprintln!("xtask: creating the system user {USER} that jobs of a root daemon run as");
    run(
        Path::new("/"),
        "useradd",
        &[
            "--system",
            "--no-create-home",
            "--home-dir",
            "/nonexistent",
            "--shell",
            "/usr/sbin/nologin",
            USER,
        ],
    )
}

/// Who asked for fuzzing: `cargo xtask test` skips it with a note where it cannot run (no nightly, no
/// cargo-fuzz and no way to install it; the stable suite still replays the corpus), `cargo xtask fuzz` fails.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fuzzing {
    AfterTests,
    Asked,
}

/// `cargo xtask fuzz [--seconds N] [--grow-corpus] [TARGET...]`: each target under cargo-fuzz for N
/// seconds, from the workspace root (cargo-fuzz finds fuzz/).
fn fuzz(root: &Path, args: &[String], how: Fuzzing) -> anyhow::Result<()> {
    let mut seconds: u64 = 60;
    let mut grow = false;
    let mut targets = Vec::new();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--seconds" => {
                let n = args.next().context("--seconds needs a number")?;
                seconds = n
                    .parse()
                    .ok()
                    .filter(|&n| n > 0) // libFuzzer reads 0 as "no limit"
                    .with_context(|| format!("--seconds {n}: expected a whole number above 0"))?;
            }
            "--grow-corpus" => grow = true,
            flag if flag.starts_with('-') => bail!("unknown option {flag}\n{USAGE}"),
            target => targets.push(target.to_owned()),
        }
    }
    let known = fuzz_targets(root)?;
    if targets.is_empty() {
        targets = known;
    } else if let Some(unknown) = targets.iter().find(|t| !known.contains(t)) {
        bail!(
            "unknown fuzz target {unknown} (fuzz/Cargo.toml has {})",
            known.join(", ")
        );
    }
    let skip = |why: String| -> anyhow::Result<()> {
        match how {
            Fuzzing::Asked => bail!("cannot fuzz: {why}"),
            Fuzzing::AfterTests => {
                eprintln!(
                    "xtask: fuzzing skipped: {why} (the stable suite replayed the committed corpus)"
                );
                Ok(())
            }
        }
    };
    if !has_nightly() {
        return skip(
            "no nightly toolchain in `rustup toolchain list`; cargo-fuzz needs one \
             (`rustup toolchain install nightly`)"
                .into(),
        );
    }
    if !succeeds(root, "cargo", &["fuzz", "--version"]) {
        if let Err(e) = run(root, "cargo", &["install", "cargo-fuzz", "--locked"]) {
            return skip(format!("cargo-fuzz is missing and did not install: {e:#}"));
        }
    }
    for target in &targets {
        fuzz_target(root, target, seconds, grow)?;
    }
    Ok(())
}

/// One target for `seconds`. libFuzzer writes new inputs into the first corpus folder only and reads the
/// others: a scratch folder comes first unless `grow`, so the committed corpus stays as it is.
fn fuzz_target(root: &Path, target: &str, seconds: u64, grow: bool) -> anyhow::Result<()> {
    let corpus = root.join("fuzz/corpus").join(target);
    let regressions = root.join("fuzz/regressions").join(target);
    // A new target may have no seeds yet (aura-fuzz's corpus test fails until it has some).
    std::fs::create_dir_all(&corpus)?;
    let scratch = ScratchDir::new(&format!("aura-fuzz-{target}"))?;
    let mut folders = Vec::new();
    if !grow {
        folders.push(scratch.0.clone());
    }
    folders.push(corpus);
    if regressions.is_dir() {
        folders.push(regressions);
    }
    let max_time = format!("-max_total_time={seconds}");
    let mut argv = vec!["+nightly", "fuzz", "run", target];
    for folder in &folders {
        argv.push(
            folder
                .to_str()
                .with_context(|| format!("{} is not UTF-8", folder.display()))?,
        );
    }
    argv.extend(["--", &max_time]);
    run(root, "cargo", &argv).with_context(|| {
        format!(
            "fuzz target {target} failed; the crashing input is under fuzz/artifacts/{target}/: \
             minimize it (`cargo +nightly fuzz tmin {target} <input>`) and commit it under \
             fuzz/regressions/{target}/ so that the stable suite replays it"
        )
    })?;
    if !grow {
        let new = std::fs::read_dir(&scratch.0)?.count();
        eprintln!(
            "xtask: fuzz {target}: {new} new corpus entries left out of fuzz/corpus/{target} \
             (--grow-corpus keeps them)"
        );
    }
    Ok(())
}

/// The `[[bin]]` names of fuzz/Cargo.toml, in order: the cargo-fuzz targets.
fn fuzz_targets(root: &Path) -> anyhow::Result<Vec<String>> {
    let path = root.join("fuzz/Cargo.toml");
    let manifest = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let targets: Vec<String> = manifest
        .split("[[bin]]")
        .skip(1)
        .filter_map(|table| {
            table.lines().find_map(|line| {
                let value = line.trim().strip_prefix("name")?.trim().strip_prefix('=')?;
                Some(value.trim().trim_matches('"').to_owned())
            })
        })
        .collect();
    if targets.is_empty() {
        bail!("{} lists no [[bin]] targets", path.display());
    }
    Ok(targets)
}

fn has_nightly() -> bool {
    Command::new("rustup")
        .args(["toolchain", "list"])
        .output()
        .map(|out| {
            out.status.success()
                && String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .any(|line| line.starts_with("nightly"))
        })
        .unwrap_or(false)
}

fn succeeds(dir: &Path, program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .current_dir(dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// A folder under the system temporary directory, removed when dropped.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new(prefix: &str) -> anyhow::Result<Self> {
        let path = std::env::temp_dir().join(format!("{prefix}-{}", std::process::id()));
        if path.exists() {
            std::fs::remove_dir_all(&path)?;
        }
        std::fs::create_dir_all(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        Ok(ScratchDir(path))
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn run(dir: &Path, program: &str, args: &[&str]) -> anyhow::Result<()> {
    eprintln!("xtask: {program} {}", args.join(" "));
    let status = Command::new(program)
        .args(args)
        .current_dir(dir)
        .status()
        .with_context(|| format!("cannot run {program}"))?;
    if !status.success() {
        bail!("{program} {} failed: {status}", args.join(" "));
    }
    Ok(())
}

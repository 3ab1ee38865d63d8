//! Project automation: `cargo xtask test` (install what the tests need, then lint and test everything) and
//! `cargo xtask bench …` (the benchmark harness; figures go to BENCHMARKS.md).

mod bench;

use anyhow::{bail, Context};
use std::path::{Path, PathBuf};
use std::process::Command;

const USAGE: &str = "usage:
  cargo xtask test                 install the system packages the tests need, then fmt, clippy and the whole suite
  cargo xtask deps                 only install the system packages
  cargo xtask bench throughput [--jobs N] [--parallel N] [--runs N] [--queued]
  cargo xtask bench supervisor [--jobs N] [--parallel N] [--standby N]
  cargo xtask bench handoff [--rounds N]       (thread wake-up round trip, same CPU vs two CPUs)
  cargo xtask bench kill [--rounds N]
  cargo xtask bench metrics [--scrapes N]      (needs prometheus-node-exporter)
  cargo xtask bench soak [--jobs N] [--every N]";

/// Debian packages the test suite runs for real: FFmpeg (encode + ffprobe), stress-ng (memory hogs),
/// procps and util-linux (`setsid`, `ps` in process-tree tests), prometheus (`promtool check metrics`).
const PACKAGES: &[(&str, &str)] = &[
    ("ffmpeg", "ffmpeg"),
    ("ffprobe", "ffmpeg"),
    ("stress-ng", "stress-ng"),
    ("setsid", "util-linux"),
    ("ps", "procps"),
    ("promtool", "prometheus"),
];

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = workspace_root()?;
    match args.first().map(String::as_str) {
        Some("test") => {
            install_packages()?;
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
                &["test", "--workspace", "--", "--color=never"],
            )
        }
        Some("deps") => install_packages(),
        Some("bench") => bench::main(&root, &args[1..]),
        _ => {
            eprintln!("{USAGE}");
            bail!("unknown or missing command")
        }
    }
}

fn workspace_root() -> anyhow::Result<PathBuf> {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    Ok(manifest
        .parent()
        .context("xtask has no parent directory")?
        .to_path_buf())
}

fn have(program: &str) -> bool {
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

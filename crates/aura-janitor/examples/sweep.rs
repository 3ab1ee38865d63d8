//! Sweeps one directory from the command line: `sweep DIR [DAYS] [--dry-run]`
//! removes what is older than DAYS (default 1) and prints the report as JSON
//! counts. For trying the janitor by hand and for timing it against `find`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use aura_janitor::{sweep, Root, SweepOptions};

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let Some(dir) = args.next().map(PathBuf::from) else {
        eprintln!("usage: sweep DIR [DAYS] [--dry-run]");
        return ExitCode::from(2);
    };
    let mut days = 1u64;
    let mut dry_run = false;
    for a in args {
        match a.to_str() {
            Some("--dry-run") => dry_run = true,
            Some(n) if n.parse::<u64>().is_ok() => days = n.parse().unwrap_or(1),
            _ => {
                eprintln!("unexpected argument {a:?}");
                return ExitCode::from(2);
            }
        }
    }
    let root = match Root::open(&dir) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let mut opts = SweepOptions::new(SystemTime::now() - Duration::from_secs(days * 86_400));
    opts.dry_run = dry_run;
    let r = sweep(&root, &opts);
    println!(
        "files_removed={} dirs_removed={} bytes_freed={} errors={} skipped_locked={} skipped_mounts={} skipped_changed={}",
        r.files_removed, r.dirs_removed, r.bytes_freed, r.errors, r.skipped_locked, r.skipped_mounts, r.skipped_changed
    );
    for m in &r.error_messages {
        eprintln!("{m}");
    }
    if r.errors == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

//! `sweep` against `find ROOT -mtime +1 -delete` on identical trees of old
//! files (default 100 dirs × 1,000 files). Ignored by default; run with
//! `cargo test -p aura-janitor --release --test bench -- --ignored --nocapture`
//! (`JANITOR_BENCH_DIRS` / `JANITOR_BENCH_FILES` change the size).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use aura_janitor::testing::{build_flat_tree, DAY};
use aura_janitor::{sweep, Root, SweepOptions};

fn env_usize(key: &str, default: usize) -> usize {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn time_find(root: &Path) -> Duration {
    let start = Instant::now();
    let st = Command::new("find")
        .arg(root)
        .args(["-mtime", "+1", "-delete"])
        .status()
        .expect("find");
    let t = start.elapsed();
    assert!(st.success());
    t
}

fn time_sweep(root: &Path, expect_files: u64) -> Duration {
    let opts = SweepOptions::new(SystemTime::now() - DAY);
    let start = Instant::now();
    let root = Root::open(root).expect("root");
    let r = sweep(&root, &opts);
    let t = start.elapsed();
    assert_eq!(r.errors, 0, "{:?}", r.error_messages);
    assert_eq!(r.files_removed, expect_files);
    t
}

#[test]
#[ignore = "benchmark: builds 2×2 trees of 100,000 files"]
fn sweep_vs_find() {
    let dirs = env_usize("JANITOR_BENCH_DIRS", 100);
    let files = env_usize("JANITOR_BENCH_FILES", 1000);
    let n = (dirs * files) as u64;
    let old = SystemTime::now() - 10 * DAY;
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut find_total = Duration::ZERO;
    let mut sweep_total = Duration::ZERO;
    for round in 0..2 {
        let a = tmp.path().join(format!("a{round}"));
        let b = tmp.path().join(format!("b{round}"));
        build_flat_tree(&a, dirs, files, old).expect("tree");
        build_flat_tree(&b, dirs, files, old).expect("tree");
        // Flush the build's dirty metadata first, or whichever runs first pays
        // for the journal writeback.
        rustix::fs::sync();
        // Alternate which goes first, so neither always gets the warmer cache.
        let (f, s) = if round == 0 {
            let f = time_find(&a);
            rustix::fs::sync();
            (f, time_sweep(&b, n))
        } else {
            let s = time_sweep(&a, n);
            rustix::fs::sync();
            (time_find(&b), s)
        };
        eprintln!(
            "round {round}: find {:.3}s, sweep {:.3}s, ratio {:.2}",
            f.as_secs_f64(),
            s.as_secs_f64(),
            s.as_secs_f64() / f.as_secs_f64()
        );
        find_total += f;
        sweep_total += s;
    }
    let ratio = sweep_total.as_secs_f64() / find_total.as_secs_f64();
    eprintln!(
        "{n} files: find {:.3}s, sweep {:.3}s, sweep/find = {ratio:.2}",
        find_total.as_secs_f64(),
        sweep_total.as_secs_f64()
    );
}

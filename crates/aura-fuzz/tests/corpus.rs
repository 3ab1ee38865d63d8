//! Replays the committed fuzz corpus (`fuzz/corpus/<target>/`) and minimized crash inputs
//! (`fuzz/regressions/<target>/`) through every target on stable, and checks that each target is wired
//! into the cargo-fuzz harness in `fuzz/`.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    files
}

/// Runs `target` on every file of `dir`; returns how many ran and the failures (file and panic message).
fn replay(target: fn(&[u8]), dir: &Path) -> (usize, Vec<String>) {
    let files = files(dir);
    let mut failures = Vec::new();
    for path in &files {
        let data = std::fs::read(path).expect("read corpus file");
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| target(&data))) {
            let message = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("(no message)");
            failures.push(format!("{}: {message}", path.display()));
        }
    }
    (files.len(), failures)
}

#[test]
fn every_target_passes_its_corpus_and_regressions() {
    let mut failures = Vec::new();
    for (name, target) in aura_fuzz::TARGETS {
        let corpus = fuzz_dir().join("corpus").join(name);
        assert!(
            corpus.is_dir(),
            "target {name} has no corpus folder {}",
            corpus.display()
        );
        let (ran, failed) = replay(*target, &corpus);
        assert!(
            ran > 0,
            "target {name} has an empty corpus {}",
            corpus.display()
        );
        failures.extend(failed);
        let regressions = fuzz_dir().join("regressions").join(name);
        if regressions.is_dir() {
            failures.extend(replay(*target, &regressions).1);
        }
    }
    assert!(
        failures.is_empty(),
        "failing inputs:\n{}",
        failures.join("\n")
    );
}

#[test]
fn every_target_is_a_cargo_fuzz_binary_and_back() {
    let manifest = std::fs::read_to_string(fuzz_dir().join("Cargo.toml")).expect("fuzz/Cargo.toml");
    let mut bins: Vec<&str> = manifest
        .split("[[bin]]")
        .skip(1)
        .filter_map(|table| {
            table.lines().find_map(|line| {
                let value = line.trim().strip_prefix("name")?.trim().strip_prefix('=')?;
                Some(value.trim().trim_matches('"'))
            })
        })
        .collect();
    bins.sort_unstable();
    let mut targets: Vec<&str> = aura_fuzz::TARGETS.iter().map(|(name, _)| *name).collect();
    targets.sort_unstable();
    assert_eq!(
        bins, targets,
        "fuzz/Cargo.toml [[bin]]s and aura_fuzz::TARGETS differ"
    );
    for name in targets {
        let source = fuzz_dir().join("fuzz_targets").join(format!("{name}.rs"));
        let text = std::fs::read_to_string(&source)
            .unwrap_or_else(|e| panic!("{}: {e}", source.display()));
        assert!(
            text.contains(&format!("aura_fuzz::{name}(data)")),
            "{} does not call aura_fuzz::{name}",
            source.display()
        );
    }
}

//! The re-check right before a removal, made deterministic: a hook changes the entry in exactly the
//! window between the walk's decision and its `unlinkat` (alone in this binary: the hook is
//! process-wide).

use aura_janitor::testing::{set_before_recheck, set_mtime, write_file};
use aura_janitor::{sweep, Root, SweepOptions};
use std::fs;
use std::path::Path;
use std::time::{Duration, SystemTime};

fn old() -> SystemTime {
    SystemTime::now() - Duration::from_secs(10 * 24 * 3600)
}

fn options() -> SweepOptions {
    SweepOptions {
        cutoff: SystemTime::now() - Duration::from_secs(24 * 3600),
        dry_run: false,
        remove_empty_dirs: true,
        max_listed: 100,
    }
}

/// Runs `change` on the entry named `name` when the walk is about to re-check it.
fn on(name: &'static str, change: impl Fn(&Path) + Send + Sync + 'static) {
    set_before_recheck(Some(Box::new(move |path: &Path| {
        if path.file_name().is_some_and(|n| n == name) {
            change(path);
        }
    })));
}

#[test]
fn an_entry_changed_after_the_decision_is_kept() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("root");
    fs::create_dir(&dir).expect("mkdir");
    let root = Root::open(&dir).expect("root");

    // Written to after it was judged old: kept, and counted as changed (no error).
    write_file(&dir.join("a"), b"old", old()).expect("write");
    on("a", |p| fs::write(p, b"written again").expect("rewrite"));
    let r = sweep(&root, &options());
    assert_eq!(
        (r.files_removed, r.skipped_changed, r.errors),
        (0, 1, 0),
        "{r:?}"
    );
    assert_eq!(fs::read(dir.join("a")).expect("a"), b"written again");

    // Replaced by another file (another inode), even one just as old: kept.
    write_file(&dir.join("b"), b"old", old()).expect("write");
    on("b", |p| {
        let other = p.with_file_name("b.new");
        write_file(&other, b"new content", old()).expect("write");
        fs::rename(&other, p).expect("rename");
    });
    let r = sweep(&root, &options());
    assert_eq!(fs::read(dir.join("b")).expect("b"), b"new content", "{r:?}");

    // An old empty directory touched after it was judged: kept.
    fs::create_dir(dir.join("d")).expect("mkdir");
    set_mtime(&dir.join("d"), old()).expect("mtime");
    on("d", |p| set_mtime(p, SystemTime::now()).expect("touch"));
    let r = sweep(&root, &options());
    assert!(dir.join("d").is_dir(), "{r:?}");
    assert_eq!(r.dirs_removed, 0);

    // Nothing changes in the window: everything old goes.
    set_before_recheck(None);
    set_mtime(&dir.join("a"), old()).expect("mtime");
    // (`b`, old and unchanged since, went with the sweep before.)
    assert!(!dir.join("b").exists());
    write_file(&dir.join("b"), b"old", old()).expect("write");
    set_mtime(&dir.join("d"), old()).expect("mtime");
    let r = sweep(&root, &options());
    assert_eq!(
        (r.files_removed, r.dirs_removed, r.skipped_changed),
        (2, 1, 0),
        "{r:?}"
    );
    assert_eq!(fs::read_dir(&dir).expect("ls").count(), 0);
}

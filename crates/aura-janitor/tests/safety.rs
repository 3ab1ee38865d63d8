//! Safety tests on real file systems: symlinks out of the root, a racing
//! dir-for-symlink swap, a tmpfs mounted inside, held locks, dry runs, and the
//! archive/compress round trips checked with independent tools.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fs;
use std::os::fd::AsFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use aura_janitor::testing::{
    bind_mount, hold_flock, make_dir, make_symlink, mount_tmpfs, set_mtime, snapshot, write_file,
    Fixture, Node, DAY,
};
use aura_janitor::{
    archive_dir, compress_file, is_locked, remove_entry, sweep, ActionKind, JanitorError,
    LockTable, Report, Root, SweepOptions,
};

fn opts(cutoff: SystemTime) -> SweepOptions {
    SweepOptions::new(cutoff)
}

fn exists(p: &Path) -> bool {
    fs::symlink_metadata(p).is_ok()
}

fn action_set(r: &Report) -> BTreeSet<(String, ActionKind, u64)> {
    r.actions
        .iter()
        .map(|a| (a.path.clone(), a.kind, a.bytes))
        .collect()
}

fn fixture() -> (tempfile::TempDir, Fixture) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let fx = Fixture::build(tmp.path()).expect("fixture");
    (tmp, fx)
}

#[test]
fn sweep_removes_old_keeps_new_locked_and_outside() {
    let (_tmp, fx) = fixture();
    let _locks = fx.lock_all().expect("locks");
    let outside = snapshot(&fx.outside).expect("snapshot");
    let root = Root::open(&fx.root).expect("root");

    let r = sweep(&root, &opts(fx.cutoff));

    for rel in Fixture::REMOVED {
        assert!(!exists(&fx.root.join(rel)), "{rel} should be gone");
    }
    for rel in Fixture::KEPT {
        assert!(exists(&fx.root.join(rel)), "{rel} should be kept");
    }
    assert!(fx.root.is_dir(), "root itself stays");
    assert_eq!(
        snapshot(&fx.outside).expect("snapshot"),
        outside,
        "outside untouched"
    );
    assert_eq!(r.errors, 0, "{:?}", r.error_messages);
    assert_eq!(r.files_removed, 6);
    assert_eq!(r.dirs_removed, 4);
    assert_eq!(
        r.skipped_locked, 3,
        "flock'd dir, flock'd file, POSIX-locked file"
    );
    assert_eq!(r.skipped_mounts, 0);
    let listed: BTreeSet<&str> = r.actions.iter().map(|a| a.path.as_str()).collect();
    let expected: BTreeSet<&str> = Fixture::REMOVED.iter().copied().collect();
    assert_eq!(listed, expected);
    assert!(r.actions.iter().all(|a| a.kind == ActionKind::Remove));
    assert!(r.bytes_freed > 0);
}

#[test]
fn sweep_everything_old_still_never_follows_links() {
    let (_tmp, fx) = fixture();
    let outside = snapshot(&fx.outside).expect("snapshot");
    let root = Root::open(&fx.root).expect("root");
    let r = sweep(&root, &opts(SystemTime::now() + DAY));
    assert_eq!(r.errors, 0, "{:?}", r.error_messages);
    assert!(
        snapshot(&fx.root).expect("snapshot").is_empty(),
        "no locks held: all gone"
    );
    assert_eq!(snapshot(&fx.outside).expect("snapshot"), outside);
}

#[test]
fn dry_run_changes_nothing_and_lists_the_same() {
    let (_tmp, fx) = fixture();
    let _locks = fx.lock_all().expect("locks");
    let root = Root::open(&fx.root).expect("root");
    let before = snapshot(&fx.base).expect("snapshot");
    let root_mtime = fs::metadata(&fx.root).expect("stat").mtime();

    let mut o = opts(fx.cutoff);
    o.dry_run = true;
    let dry = sweep(&root, &o);
    assert_eq!(
        snapshot(&fx.base).expect("snapshot"),
        before,
        "dry run changed the tree"
    );
    assert_eq!(fs::metadata(&fx.root).expect("stat").mtime(), root_mtime);

    let real = sweep(&root, &opts(fx.cutoff));
    assert_eq!(dry.files_removed, real.files_removed);
    assert_eq!(dry.dirs_removed, real.dirs_removed);
    assert_eq!(dry.bytes_freed, real.bytes_freed);
    assert_eq!(dry.skipped_locked, real.skipped_locked);
    assert_eq!(dry.errors, 0);
    assert_eq!(action_set(&dry), action_set(&real));
}

#[test]
fn max_listed_bounds_actions_not_counts() {
    let (_tmp, fx) = fixture();
    let root = Root::open(&fx.root).expect("root");
    let mut o = opts(fx.cutoff);
    o.max_listed = 2;
    o.dry_run = true;
    let r = sweep(&root, &o);
    assert_eq!(r.actions.len(), 2);
    assert!(r.files_removed + r.dirs_removed > 2);
}

#[test]
fn remove_empty_dirs_off_keeps_dirs() {
    let (_tmp, fx) = fixture();
    let root = Root::open(&fx.root).expect("root");
    let mut o = opts(fx.cutoff);
    o.remove_empty_dirs = false;
    let r = sweep(&root, &o);
    assert_eq!(r.dirs_removed, 0);
    assert!(fx.root.join("empty_old").is_dir());
    assert!(fx.root.join("old_tree/x").is_dir());
    assert!(!exists(&fx.root.join("old_tree/x/old_d")));
}

#[test]
fn roots_refuse_symlinks_and_other_devices() {
    let (_tmp, fx) = fixture();
    assert!(matches!(
        Root::open(&fx.root.join("link_dir")),
        Err(JanitorError::Symlink { .. })
    ));
    assert!(matches!(
        Root::open(&fx.root.join("old_file")),
        Err(JanitorError::NotADirectory { .. })
    ));
    let root = Root::open(&fx.root).expect("root");
    assert!(matches!(
        root.open_child(OsStr::new("link_dir")),
        Err(JanitorError::Symlink { .. })
    ));
    assert!(root
        .open_child(OsStr::new("missing"))
        .expect("open")
        .is_none());
    assert!(matches!(
        root.open_child(OsStr::new("../outside")),
        Err(JanitorError::InvalidName { .. })
    ));
    let sub = root
        .open_child(OsStr::new("sub"))
        .expect("open")
        .expect("exists");
    assert_eq!(sub.path(), fx.root.join("sub"));
    assert_eq!(sub.dev(), root.dev());
}

#[test]
fn remove_entry_removes_one_entry_whatever_its_age() {
    let (_tmp, fx) = fixture();
    let outside = snapshot(&fx.outside).expect("snapshot");
    let root = Root::open(&fx.root).expect("root");

    // A new directory with new content goes whole.
    let r = remove_entry(&root, OsStr::new("sub"), false, 100);
    assert_eq!(r.errors, 0, "{:?}", r.error_messages);
    assert!(!exists(&fx.root.join("sub")));
    assert_eq!((r.files_removed, r.dirs_removed), (3, 2));
    // A symlink to a directory: the link only.
    let r = remove_entry(&root, OsStr::new("link_dir"), false, 100);
    assert_eq!(r.files_removed, 1);
    assert!(!exists(&fx.root.join("link_dir")));
    // A new file.
    let r = remove_entry(&root, OsStr::new("new_file"), false, 100);
    assert_eq!(r.files_removed, 1);
    // Missing: nothing, no error.
    assert_eq!(
        remove_entry(&root, OsStr::new("nope"), false, 100),
        Report::default()
    );
    // Not one component: an error, nothing done.
    for bad in ["..", "a/b", ""] {
        let r = remove_entry(&root, OsStr::new(bad), false, 100);
        assert_eq!(
            (r.errors, r.files_removed, r.dirs_removed),
            (1, 0, 0),
            "{bad:?}"
        );
    }
    assert_eq!(snapshot(&fx.outside).expect("snapshot"), outside);
}

#[test]
fn remove_entry_skips_a_dir_with_anything_locked_inside() {
    let (_tmp, fx) = fixture();
    let root = Root::open(&fx.root).expect("root");
    // A lock deep inside keeps the whole entry, siblings included.
    let lock = hold_flock(&fx.root.join("old_tree/x/old_d")).expect("lock");
    let before = snapshot(&fx.root.join("old_tree")).expect("snapshot");
    for dry_run in [true, false] {
        let r = remove_entry(&root, OsStr::new("old_tree"), dry_run, 100);
        assert_eq!(r.skipped_locked, 1);
        assert_eq!((r.files_removed, r.dirs_removed, r.errors), (0, 0, 0));
        assert_eq!(
            snapshot(&fx.root.join("old_tree")).expect("snapshot"),
            before
        );
    }
    drop(lock);
    // The locked directory itself.
    let lock = hold_flock(&fx.root.join("locked_dir")).expect("lock");
    let r = remove_entry(&root, OsStr::new("locked_dir"), false, 100);
    assert_eq!((r.skipped_locked, r.files_removed), (1, 0));
    assert!(fx.root.join("locked_dir/old_e").exists());
    drop(lock);
    // A locked single file.
    let lock = hold_flock(&fx.root.join("locked_file")).expect("lock");
    let r = remove_entry(&root, OsStr::new("locked_file"), false, 100);
    assert_eq!((r.skipped_locked, r.files_removed), (1, 0));
    drop(lock);
    // Unlocked, they all go.
    for name in ["old_tree", "locked_dir", "locked_file"] {
        let r = remove_entry(&root, OsStr::new(name), false, 100);
        assert_eq!((r.skipped_locked, r.errors), (0, 0), "{name}");
        assert!(!exists(&fx.root.join(name)), "{name}");
    }
}

#[test]
fn lock_detection() {
    let (_tmp, fx) = fixture();
    let path = fx.root.join("locked_dir");
    let probe = fs::File::open(&path).expect("open");
    assert!(!is_locked(probe.as_fd()));
    let lock = hold_flock(&path).expect("lock");
    assert!(is_locked(probe.as_fd()));
    let md = fs::metadata(&path).expect("stat");
    assert!(LockTable::read().contains(md.dev(), md.ino()));
    drop(lock);
    assert!(!is_locked(probe.as_fd()));
    assert!(!LockTable::read().contains(md.dev(), md.ino()));
    // The probe released what it took.
    let again = hold_flock(&path).expect("probe must not keep the lock");
    drop(again);
}

#[test]
fn tmpfs_mounted_inside_is_never_entered() {
    let (_tmp, fx) = fixture();
    let mnt = fx.root.join("mnt");
    fs::create_dir(&mnt).expect("mkdir");
    let Some(_mount) = mount_tmpfs(&mnt).expect("mount") else {
        eprintln!("NOTE: mount not permitted here (EPERM); mount part of the test skipped");
        return;
    };
    make_dir(&mnt.join("inner"), SystemTime::now() - 10 * DAY).expect("mkdir");
    write_file(
        &mnt.join("old_in_mount"),
        b"keep",
        SystemTime::now() - 10 * DAY,
    )
    .expect("write");
    write_file(
        &mnt.join("inner/old"),
        b"keep",
        SystemTime::now() - 10 * DAY,
    )
    .expect("write");
    set_mtime(&mnt.join("inner"), SystemTime::now() - 10 * DAY).expect("mtime");
    set_mtime(&mnt, SystemTime::now() - 10 * DAY).expect("mtime");
    let inside = snapshot(&mnt).expect("snapshot");
    let root = Root::open(&fx.root).expect("root");

    let r = sweep(&root, &opts(SystemTime::now() + DAY));
    assert_eq!(r.skipped_mounts, 1);
    assert_eq!(r.errors, 0, "{:?}", r.error_messages);
    assert_eq!(snapshot(&mnt).expect("snapshot"), inside);

    let r = remove_entry(&root, OsStr::new("mnt"), false, 10);
    assert_eq!((r.skipped_mounts, r.files_removed), (1, 0));
    assert!(matches!(
        root.open_child(OsStr::new("mnt")),
        Err(JanitorError::OtherDevice { .. })
    ));

    // A bind mount of a directory outside, on the same file system (same
    // st_dev): only statx's mount-root attribute tells it apart.
    let outside = snapshot(&fx.outside).expect("snapshot");
    let bind = fx.root.join("bind");
    fs::create_dir(&bind).expect("mkdir");
    set_mtime(&bind, SystemTime::now() - 10 * DAY).expect("mtime");
    let _bind = bind_mount(&fx.outside.join("target_dir"), &bind)
        .expect("bind mount")
        .expect("permitted where tmpfs was");
    assert_eq!(
        fs::metadata(&bind).expect("stat").dev(),
        fs::metadata(&fx.root).expect("stat").dev()
    );
    let r = sweep(&root, &opts(SystemTime::now() + DAY));
    assert_eq!(r.skipped_mounts, 2, "tmpfs and bind mount");
    assert_eq!(r.errors, 0, "{:?}", r.error_messages);
    let r = remove_entry(&root, OsStr::new("bind"), false, 10);
    assert_eq!((r.skipped_mounts, r.files_removed), (1, 0));
    assert!(matches!(
        root.open_child(OsStr::new("bind")),
        Err(JanitorError::OtherDevice { .. })
    ));
    assert_eq!(
        snapshot(&fx.outside).expect("snapshot"),
        outside,
        "bind-mounted outside dir touched"
    );

    // Archiving a tree with a mount inside leaves the mount (and so the
    // directory holding it) in place and the mount's files out of the archive.
    let job = fx.root.join("job");
    fs::create_dir(&job).expect("mkdir");
    write_file(&job.join("a"), b"a", SystemTime::now()).expect("write");
    fs::create_dir(job.join("m")).expect("mkdir");
    let Some(_m2) = mount_tmpfs(&job.join("m")).expect("mount") else {
        return;
    };
    write_file(&job.join("m/secret"), b"s", SystemTime::now()).expect("write");
    let dest_dir = fx.base.join("dest");
    fs::create_dir(&dest_dir).expect("mkdir");
    let dest = Root::open(&dest_dir).expect("dest");
    let r = archive_dir(
        &root,
        OsStr::new("job"),
        &dest,
        OsStr::new("job.tar.zst"),
        3,
        false,
    )
    .expect("archive");
    assert_eq!(r.skipped_mounts, 1);
    assert!(job.join("m/secret").exists());
    assert!(!job.join("a").exists());
    let names = list_archive(&dest_dir.join("job.tar.zst"));
    // Members are relative to the archived directory.
    assert!(names.contains("a"), "{names:?}");
    assert!(!names.iter().any(|n| n.starts_with('m')), "{names:?}");
}

/// A thread keeps swapping a directory inside the root for a symlink to a
/// directory outside (and back) while sweeps and removals run.
#[test]
fn racing_dir_symlink_swap_never_escapes_the_root() {
    let (_tmp, fx) = fixture();
    let outside = snapshot(&fx.outside).expect("snapshot");
    assert!(!outside.is_empty());
    let race = fx.root.join("race");
    let victim = race.join("victim");
    let real = race.join("victim.real");
    let target = fx.outside.join("race_target");
    let old = fx.old;
    let stop = Arc::new(AtomicBool::new(false));
    let swaps = Arc::new(AtomicU64::new(0));

    let racer = {
        let (stop, swaps) = (stop.clone(), swaps.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                // Refill the real directory with old files (sweeps keep emptying it).
                let _ = fs::create_dir_all(&victim);
                for i in 0..4 {
                    let _ = write_file(&victim.join(format!("old_{i}")), b"x", old);
                }
                let _ = set_mtime(&victim, old);
                let _ = set_mtime(&race, old);
                for _ in 0..20 {
                    if fs::rename(&victim, &real).is_err() {
                        break;
                    }
                    let _ = make_symlink(&target, &victim, old);
                    std::thread::yield_now();
                    let _ = fs::remove_file(&victim);
                    let _ = fs::rename(&real, &victim);
                    swaps.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };

    let root = Root::open(&fx.root).expect("root");
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut total = Report::default();
    let mut runs = 0u32;
    while Instant::now() < deadline && runs < 200_000 {
        let r = match runs % 3 {
            0 => sweep(&root, &opts(fx.cutoff)),
            1 => sweep(&root, &opts(SystemTime::now() + DAY)),
            _ => remove_entry(&root, OsStr::new("race"), false, 0),
        };
        total.merge(r);
        runs += 1;
    }
    stop.store(true, Ordering::Relaxed);
    racer.join().expect("racer");

    assert_eq!(
        snapshot(&fx.outside).expect("snapshot"),
        outside,
        "something outside the root changed"
    );
    eprintln!(
        "race: {runs} runs, {} swaps, {} files removed, {} changed/swapped skips, {} errors {:?}",
        swaps.load(Ordering::Relaxed),
        total.files_removed,
        total.skipped_changed,
        total.errors,
        total.error_messages
    );
    assert!(
        runs > 50 && swaps.load(Ordering::Relaxed) > 50,
        "the race did not run"
    );
    assert_eq!(total.errors, 0, "{:?}", total.error_messages);
}

#[test]
fn depth_limit_is_an_error_not_a_crash() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let base = tmp.path().join("root");
    let mut p = base.clone();
    for _ in 0..(aura_janitor::MAX_DEPTH + 5) {
        p.push("d");
    }
    fs::create_dir_all(&p).expect("mkdir");
    write_file(&p.join("f"), b"deep", SystemTime::now() - 10 * DAY).expect("write");
    let root = Root::open(&base).expect("root");
    let r = sweep(&root, &opts(SystemTime::now() + DAY));
    assert_eq!(r.errors, 1, "{:?}", r.error_messages);
    assert!(
        r.error_messages[0].contains("deeper than"),
        "{:?}",
        r.error_messages
    );
    assert!(p.join("f").exists());
}

fn has_zstd_binary() -> bool {
    Command::new("zstd")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Unpacks with the system tar where zstd is installed, else with the crates.
fn unpack(archive: &Path, into: &Path) {
    fs::create_dir_all(into).expect("mkdir");
    if has_zstd_binary() {
        let st = Command::new("tar")
            .arg("--zstd")
            .arg("-xpf")
            .arg(archive)
            .arg("-C")
            .arg(into)
            .status()
            .expect("tar");
        assert!(st.success(), "tar -x failed");
    } else {
        eprintln!("NOTE: no zstd binary; unpacking with the zstd and tar crates");
        let f = fs::File::open(archive).expect("open");
        let mut a = tar::Archive::new(zstd::stream::read::Decoder::new(f).expect("zstd"));
        a.set_preserve_permissions(true);
        a.set_preserve_mtime(true);
        a.unpack(into).expect("unpack");
    }
}

fn list_archive(archive: &Path) -> BTreeSet<String> {
    let f = fs::File::open(archive).expect("open");
    let mut a = tar::Archive::new(zstd::stream::read::Decoder::new(f).expect("zstd"));
    a.entries()
        .expect("entries")
        .map(|e| {
            let e = e.expect("entry");
            e.path()
                .expect("path")
                .to_string_lossy()
                .trim_end_matches('/')
                .to_string()
        })
        .collect()
}

/// A job directory with modes, nesting, an empty dir, symlinks (relative and
/// out of the tree) and assorted mtimes.
fn build_job(dir: &Path, outside: &Path) {
    let t = SystemTime::now() - 3 * DAY;
    fs::create_dir_all(dir.join("out/nested")).expect("mkdir");
    fs::create_dir_all(dir.join("empty")).expect("mkdir");
    write_file(&dir.join("log.txt"), &b"line\n".repeat(5000), t).expect("write");
    write_file(
        &dir.join("out/frame.bin"),
        &(0..70_000u32)
            .map(|i| (i * 7 % 251) as u8)
            .collect::<Vec<_>>(),
        t,
    )
    .expect("write");
    write_file(
        &dir.join("out/nested/run.sh"),
        b"#!/bin/sh\necho hi\n",
        t - DAY,
    )
    .expect("write");
    write_file(&dir.join("out/empty_file"), b"", t).expect("write");
    fs::set_permissions(
        dir.join("out/nested/run.sh"),
        fs::Permissions::from_mode(0o755),
    )
    .expect("chmod");
    fs::set_permissions(dir.join("log.txt"), fs::Permissions::from_mode(0o640)).expect("chmod");
    fs::set_permissions(dir.join("empty"), fs::Permissions::from_mode(0o700)).expect("chmod");
    make_symlink(Path::new("../log.txt"), &dir.join("out/log_link"), t).expect("symlink");
    make_symlink(&outside.join("target_dir"), &dir.join("outside_link"), t).expect("symlink");
    let long = "n".repeat(120);
    write_file(&dir.join(&long), b"long name", t).expect("write");
    for d in ["out/nested", "out", "empty", ""] {
        set_mtime(&dir.join(d), t - 2 * DAY).expect("mtime");
    }
}

#[test]
fn archive_dir_round_trips_and_removes_the_source() {
    let (_tmp, fx) = fixture();
    let outside = snapshot(&fx.outside).expect("snapshot");
    let job = fx.root.join("job");
    build_job(&job, &fx.outside);
    let original = snapshot(&job).expect("snapshot");
    let dest_dir = fx.base.join("archives");
    fs::create_dir(&dest_dir).expect("mkdir");
    let root = Root::open(&fx.root).expect("root");
    let dest = Root::open(&dest_dir).expect("dest");

    // Dry run: nothing changes, nothing is written, the numbers are given.
    let dry = archive_dir(
        &root,
        OsStr::new("job"),
        &dest,
        OsStr::new("job.tar.zst"),
        3,
        true,
    )
    .expect("dry");
    assert_eq!(snapshot(&job).expect("snapshot"), original);
    assert!(snapshot(&dest_dir).expect("snapshot").is_empty());
    assert_eq!(dry.actions.len(), 1);
    assert_eq!(dry.actions[0].kind, ActionKind::Archive);

    let r = archive_dir(
        &root,
        OsStr::new("job"),
        &dest,
        OsStr::new("job.tar.zst"),
        3,
        false,
    )
    .expect("archive");
    assert_eq!(r.errors, 0, "{:?}", r.error_messages);
    assert!(!exists(&job), "source removed");
    assert_eq!(
        (r.files_removed, r.dirs_removed, r.bytes_freed),
        (dry.files_removed, dry.dirs_removed, dry.bytes_freed)
    );
    assert_eq!(r.dirs_removed, 4);
    assert_eq!(r.files_removed, 7);
    assert!(r.bytes_freed > 0, "compressible data must save space");
    assert_eq!(
        r.actions,
        vec![aura_janitor::Action {
            path: "job".into(),
            kind: ActionKind::Archive,
            bytes: r.bytes_freed
        }]
    );
    // Only the archive in dest, no temporary left.
    let listing: Vec<_> = fs::read_dir(&dest_dir)
        .expect("ls")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(listing, vec![std::ffi::OsString::from("job.tar.zst")]);

    let x = fx.base.join("x");
    unpack(&dest_dir.join("job.tar.zst"), &x);
    let restored = snapshot(&x).expect("snapshot");
    assert_eq!(restored, original);
    assert!(matches!(
        restored.get("out/log_link"),
        Some(Node::Symlink { .. })
    ));
    assert_eq!(snapshot(&fx.outside).expect("snapshot"), outside);

    // An existing archive is never replaced; the source stays.
    build_job(&job, &fx.outside);
    let original = snapshot(&job).expect("snapshot");
    let e = archive_dir(
        &root,
        OsStr::new("job"),
        &dest,
        OsStr::new("job.tar.zst"),
        3,
        false,
    );
    assert!(matches!(e, Err(JanitorError::Exists { .. })), "{e:?}");
    assert_eq!(snapshot(&job).expect("snapshot"), original);
}

#[test]
fn archive_dir_skips_locked_dirs_whole() {
    let (_tmp, fx) = fixture();
    let dest_dir = fx.base.join("archives");
    fs::create_dir(&dest_dir).expect("mkdir");
    let root = Root::open(&fx.root).expect("root");
    let dest = Root::open(&dest_dir).expect("dest");

    let lock = hold_flock(&fx.root.join("locked_dir")).expect("lock");
    let r = archive_dir(
        &root,
        OsStr::new("locked_dir"),
        &dest,
        OsStr::new("a.tar.zst"),
        3,
        false,
    )
    .expect("archive");
    assert_eq!((r.skipped_locked, r.files_removed), (1, 0));
    assert!(fx.root.join("locked_dir/old_e").exists());
    assert!(
        snapshot(&dest_dir).expect("snapshot").is_empty(),
        "not archived"
    );
    drop(lock);

    // A lock on a file inside keeps the whole directory too.
    let lock = hold_flock(&fx.root.join("sub/old_a")).expect("lock");
    let r = archive_dir(
        &root,
        OsStr::new("sub"),
        &dest,
        OsStr::new("s.tar.zst"),
        3,
        false,
    )
    .expect("archive");
    assert_eq!(r.skipped_locked, 1);
    assert!(fx.root.join("sub/new_b").exists());
    assert!(snapshot(&dest_dir).expect("snapshot").is_empty());
    drop(lock);

    // Symlinks and files are refused as sources.
    assert!(matches!(
        archive_dir(
            &root,
            OsStr::new("link_dir"),
            &dest,
            OsStr::new("l.tar.zst"),
            3,
            false
        ),
        Err(JanitorError::Symlink { .. })
    ));
    assert!(matches!(
        archive_dir(
            &root,
            OsStr::new("old_file"),
            &dest,
            OsStr::new("f.tar.zst"),
            3,
            false
        ),
        Err(JanitorError::NotADirectory { .. })
    ));
    assert!(snapshot(&dest_dir).expect("snapshot").is_empty());
}

#[test]
fn compress_file_round_trips_and_keeps_metadata() {
    let (_tmp, fx) = fixture();
    let root = Root::open(&fx.root).expect("root");
    let data: Vec<u8> = (0..200_000u32)
        .flat_map(|i| format!("frame {} ok\n", i % 977).into_bytes())
        .collect();
    let t = SystemTime::UNIX_EPOCH + Duration::new(1_600_000_000, 123_456_789);
    for name in ["big.log", "twin.log"] {
        write_file(&fx.root.join(name), &data, t).expect("write");
        fs::set_permissions(fx.root.join(name), fs::Permissions::from_mode(0o640)).expect("chmod");
    }

    let before = snapshot(&fx.root).expect("snapshot");
    let dry = compress_file(&root, OsStr::new("twin.log"), 3, true).expect("dry");
    assert_eq!(
        snapshot(&fx.root).expect("snapshot"),
        before,
        "dry run changed something"
    );

    let r = compress_file(&root, OsStr::new("big.log"), 3, false).expect("compress");
    assert!(!exists(&fx.root.join("big.log")));
    let zst = fx.root.join("big.log.zst");
    let md = fs::metadata(&zst).expect("zst");
    assert_eq!(md.permissions().mode() & 0o7777, 0o640);
    assert_eq!((md.mtime(), md.mtime_nsec()), (1_600_000_000, 123_456_789));
    let back = zstd::stream::decode_all(fs::File::open(&zst).expect("open")).expect("decode");
    assert!(back == data, "decompressed bytes differ");
    assert_eq!(r.actions.len(), 1);
    assert_eq!(r.actions[0].kind, ActionKind::Compress);
    assert_eq!(r.actions[0].path, "big.log");
    assert!(r.bytes_freed > 0);
    assert_eq!(
        r.bytes_freed, dry.bytes_freed,
        "dry run predicts the saving"
    );
    assert_eq!(r.bytes_freed, r.actions[0].bytes);
    // No temporary left beside it.
    assert!(!fs::read_dir(&fx.root).expect("ls").any(|e| e
        .expect("entry")
        .file_name()
        .to_string_lossy()
        .contains("janitor-tmp")));

    // Refusals.
    assert!(matches!(
        compress_file(&root, OsStr::new("link_file"), 3, false),
        Err(JanitorError::Symlink { .. })
    ));
    assert!(matches!(
        compress_file(&root, OsStr::new("sub"), 3, false),
        Err(JanitorError::NotRegular { .. })
    ));
    write_file(&fx.root.join("twin.log.zst"), b"someone else's", t).expect("write");
    assert!(matches!(
        compress_file(&root, OsStr::new("twin.log"), 3, false),
        Err(JanitorError::Exists { .. })
    ));
    assert!(fx.root.join("twin.log").exists());
    assert_eq!(
        fs::read(fx.root.join("twin.log.zst")).expect("read"),
        b"someone else's"
    );
    // A locked file is skipped.
    let lock = hold_flock(&fx.root.join("locked_file")).expect("lock");
    let r = compress_file(&root, OsStr::new("locked_file"), 3, false).expect("locked");
    assert_eq!(r.skipped_locked, 1);
    assert!(!exists(&fx.root.join("locked_file.zst")));
    drop(lock);
    // The target of a symlink out of the root is untouched throughout.
    assert_eq!(
        fs::read(fx.outside.join("target_file")).expect("read"),
        b"precious file"
    );
}

#[test]
fn report_merge_adds_and_bounds() {
    let mut a = Report {
        files_removed: 1,
        errors: 9,
        error_messages: (0..9).map(|i| i.to_string()).collect(),
        ..Report::default()
    };
    let b = Report {
        files_removed: 2,
        dirs_removed: 3,
        errors: 5,
        error_messages: (0..5).map(|i| i.to_string()).collect(),
        ..Report::default()
    };
    a.merge(b);
    assert_eq!((a.files_removed, a.dirs_removed, a.errors), (3, 3, 14));
    assert_eq!(a.error_messages.len(), aura_janitor::MAX_ERROR_MESSAGES);
}

#[test]
fn archive_error_leaves_no_temporary_and_keeps_the_source() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let base = tmp.path().join("root");
    let mut p = base.join("job");
    for _ in 0..(aura_janitor::MAX_DEPTH + 5) {
        p.push("d");
    }
    fs::create_dir_all(&p).expect("mkdir");
    write_file(&p.join("f"), b"deep", SystemTime::now()).expect("write");
    let dest_dir = tmp.path().join("dest");
    fs::create_dir(&dest_dir).expect("mkdir");
    let root = Root::open(&base).expect("root");
    let dest = Root::open(&dest_dir).expect("dest");
    let e = archive_dir(
        &root,
        OsStr::new("job"),
        &dest,
        OsStr::new("job.tar.zst"),
        3,
        false,
    );
    assert!(matches!(e, Err(JanitorError::TooDeep { .. })), "{e:?}");
    assert_eq!(
        fs::read_dir(&dest_dir).expect("ls").count(),
        0,
        "temporary left behind"
    );
    assert!(p.join("f").exists());
}

/// Locks taken and released all around (other tests, other processes) never hide one that stays held:
/// the kernel lists `/proc/locks` a page per read, and a list that moves between two reads must not
/// make the table lose an entry.
#[test]
fn the_lock_table_sees_a_held_lock_while_others_come_and_go() {
    let (_tmp, fx) = fixture();
    let held_path = fx.root.join("held_while_others_churn");
    fs::write(&held_path, b"x").expect("write");
    let _held = aura_janitor::testing::hold_posix_lock(&held_path).expect("lock");
    let md = fs::metadata(&held_path).expect("stat");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let churners: Vec<_> = (0..2)
        .map(|t| {
            let stop = stop.clone();
            let dir = fx.root.clone();
            std::thread::spawn(move || {
                let paths: Vec<_> = (0..6)
                    .map(|i| {
                        let p = dir.join(format!("churn-{t}-{i}"));
                        fs::write(&p, b"x").expect("write");
                        p
                    })
                    .collect();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let fds: Vec<_> = paths
                        .iter()
                        .filter_map(|p| aura_janitor::testing::hold_flock(p).ok())
                        .collect();
                    drop(fds);
                }
            })
        })
        .collect();
    let mut missed = 0;
    for _ in 0..3000 {
        if !LockTable::read().contains(md.dev(), md.ino()) {
            missed += 1;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for churner in churners {
        churner.join().expect("churner");
    }
    assert_eq!(missed, 0, "reads of the table that missed a held lock");
}

#[test]
fn remove_entry_keeps_a_posix_locked_file_and_the_lock() {
    let (_tmp, fx) = fixture();
    let root = Root::open(&fx.root).expect("root");
    let path = fx.root.join("posix_locked_file");
    let _lock = aura_janitor::testing::hold_posix_lock(&path).expect("lock");
    let md = fs::metadata(&path).expect("stat");
    for _ in 0..2 {
        let r = remove_entry(&root, OsStr::new("posix_locked_file"), false, 10);
        assert_eq!((r.skipped_locked, r.files_removed), (1, 0));
        // Still held: the janitor never opened (and closed) the file.
        assert!(LockTable::read().contains(md.dev(), md.ino()));
    }
}

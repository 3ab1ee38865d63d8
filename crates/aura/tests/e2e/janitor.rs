//! The janitor against a live daemon: a hostile fixture tree (symlinks out of the roots, a directory
//! swapped for a symlink while the walk runs, a tmpfs inside a root, a locked directory, a running job's
//! directory), archives that unpack to the original tree, compressed logs read back byte-identical,
//! history exported and deleted, the database compacted, the status in the API and `/metrics`.

use super::faults::Tmpfs;
use super::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Every task due at once for jobs that ended a moment ago; schedules off (runs only when asked), so
/// nothing runs behind the test's back.
const AGES: [(&str, &str); 8] = [
    ("AURA_JANITOR__ENABLED", "false"),
    ("AURA_JANITOR__WORK__OLDER_THAN", "1s"),
    ("AURA_JANITOR__WORK__FAILED_OLDER_THAN", "1s"),
    ("AURA_JANITOR__LOGS__OLDER_THAN", "1s"),
    ("AURA_JANITOR__UPLOADS__OLDER_THAN", "1h"),
    ("AURA_JANITOR__HISTORY__OLDER_THAN", "1s"),
    ("AURA_JANITOR__HISTORY__ENGINE_EVENTS_OLDER_THAN", "1s"),
    ("AURA_JANITOR__COMPACT__STEP_PAGES", "64"),
];

fn touch_old(path: &Path) {
    let status = Command::new("touch")
        .args(["-h", "-d", "10 days ago"])
        .arg(path)
        .status()
        .expect("touch");
    assert!(status.success(), "touch {}", path.display());
}

fn write_old(path: &Path, content: &[u8]) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(path, content).unwrap();
    touch_old(path);
}

async fn run(daemon: &Daemon, body: serde_json::Value) -> serde_json::Value {
    let resp = authed(&daemon.url)
        .post(format!("{}/api/janitor/run", daemon.url))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let answer: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(status, 200, "{answer}");
    answer
}

fn report<'a>(answer: &'a serde_json::Value, task: &str) -> &'a serde_json::Value {
    answer["reports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["task"] == task)
        .unwrap_or_else(|| panic!("no {task} in {answer}"))
}

/// Every entry below `dir` (not following symlinks) as (relative path, kind, content or link target).
fn tree(dir: &Path) -> Vec<(String, String)> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<(String, String)>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let path = e.path();
            let rel = path.strip_prefix(base).unwrap().display().to_string();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.file_type().is_symlink() {
                out.push((
                    rel,
                    format!("-> {}", std::fs::read_link(&path).unwrap().display()),
                ));
            } else if meta.is_dir() {
                out.push((rel, "dir".into()));
                walk(base, &path, out);
            } else {
                out.push((rel, format!("{:x}", md5ish(&std::fs::read(&path).unwrap()))));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out
}

/// A content fingerprint good enough to tell files apart in a test (FNV-1a).
fn md5ish(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100000001b3)
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn every_task_removes_only_what_is_old_and_unprotected() {
    let daemon = Daemon::start(&AGES);
    let client = daemon.client();
    let data = daemon.data_dir.clone();
    let outside = tempfile::tempdir().unwrap();
    let victim = outside.path().join("victim");
    let victim_dir = outside.path().join("d");
    write_old(&victim, b"keep");
    write_old(&victim_dir.join("victim2"), b"keep too");
    touch_old(&victim_dir);

    // tmp/: old and new files, symlinks out to a file and a directory, an old subtree.
    let tmp = data.join("tmp");
    write_old(&tmp.join("old.bin"), b"old");
    write_old(&tmp.join("sub/deeper/old2.bin"), b"old");
    touch_old(&tmp.join("sub/deeper"));
    touch_old(&tmp.join("sub"));
    std::fs::write(tmp.join("new.bin"), b"new").unwrap();
    std::os::unix::fs::symlink(&victim, tmp.join("link")).unwrap();
    std::os::unix::fs::symlink(&victim_dir, tmp.join("dirlink")).unwrap();
    touch_old(&tmp.join("link"));
    touch_old(&tmp.join("dirlink"));
    // A directory someone holds a lock on: its old file stays.
    write_old(&tmp.join("locked/held.bin"), b"held");
    let locked = std::fs::File::open(tmp.join("locked")).unwrap();
    rustix::fs::flock(&locked, rustix::fs::FlockOperation::LockExclusive).unwrap();
    // A tmpfs mounted inside the root: never entered.
    std::fs::create_dir(tmp.join("mnt")).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(tmp.join("mnt"))
        .status()
        .is_ok_and(|s| s.success());
    if mounted {
        write_old(&tmp.join("mnt/on-the-mount.bin"), b"mounted");
    } else {
        eprintln!("no tmpfs (needs root): the mount-point case is not exercised");
    }
    // Jobs: one that succeeds leaving a tree, one that fails, one still running.
    let made = spec(
        "sh",
        &["-c", "mkdir -p sub && printf 0123456789 > out.txt && head -c 100000 /dev/urandom > sub/data.bin && ln -s out.txt link && seq 1 20000"],
    );
    let ok = submit(&client, &made).await;
    let failed = submit(
        &client,
        &spec("sh", &["-c", "echo partial > part.txt; exit 3"]),
    )
    .await;
    wait_done(&client, ok).await;
    wait_done(&client, failed).await;
    let running = submit(
        &client,
        &spec(
            "sh",
            &["-c", "echo live > live.txt; echo running; exec sleep 60"],
        ),
    )
    .await;
    wait_running(&client, running, 1).await;
    let ok_tree = tree(&data.join(format!("work/{ok}")));
    let ok_log = daemon.cli(&["logs", &ok.to_string()]);
    assert!(ok_log.status.success());
    let live_dir = data.join(format!("work/{running}"));
    for _ in 0..50 {
        if live_dir.join("live.txt").exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Everything the running job has, old as can be.
    touch_old(&live_dir.join("live.txt"));
    touch_old(&live_dir);
    tokio::time::sleep(Duration::from_millis(1100)).await;

    // A dry run lists and changes nothing.
    let before = tree(&data.join("tmp"));
    let dry = run(
        &daemon,
        serde_json::json!({"dry_run": true, "tasks": ["tmp", "work", "logs"]}),
    )
    .await;
    assert_eq!(tree(&data.join("tmp")), before, "a dry run changed tmp/");
    let listed: Vec<&str> = report(&dry, "tmp")["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["path"].as_str().unwrap())
        .collect();
    assert!(listed.contains(&"tmp/old.bin"), "{dry}");
    assert!(
        !listed.iter().any(|p| p.starts_with("tmp/new.bin")),
        "{dry}"
    );
    assert!(data.join(format!("work/{ok}")).is_dir());
    assert!(data.join(format!("work/{failed}")).is_dir());

    // A racing thread swaps `tmp/race` between an old directory and a symlink to the outside directory.
    let stop = Arc::new(AtomicBool::new(false));
    let racer = {
        let (stop, race, target) = (stop.clone(), tmp.join("race"), victim_dir.clone());
        std::thread::spawn(move || {
            let aside = race.with_extension("aside");
            let mut swaps = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let _ = std::fs::create_dir_all(&race);
                let _ = std::fs::write(race.join("x"), b"x");
                let _ = Command::new("touch")
                    .args(["-d", "10 days ago"])
                    .arg(race.join("x"))
                    .status();
                let _ = std::fs::rename(&race, &aside);
                let _ = std::os::unix::fs::symlink(&target, &race);
                let _ = std::fs::remove_file(&race);
                let _ = std::fs::rename(&aside, &race);
                swaps += 1;
            }
            let _ = std::fs::remove_file(&race);
            swaps
        })
    };

    // The real run, with the racer going: the file tasks first (the job records are still there to
    // read the compressed logs back through), then the database's.
    let files = ["tmp", "uploads", "cache", "work", "logs", "archive"];
    let answer = run(&daemon, serde_json::json!({ "tasks": files })).await;
    stop.store(true, Ordering::Relaxed);
    let swaps = racer.join().unwrap();
    eprintln!("racer swapped {swaps} times; answer: {answer}");
    for task in files {
        assert_eq!(report(&answer, task)["errors"], 0, "{task}: {answer}");
    }

    // Nothing outside the data dir, under the lock, on the mount or of the running job was touched.
    assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
    assert_eq!(
        std::fs::read(victim_dir.join("victim2")).unwrap(),
        b"keep too"
    );
    assert_eq!(std::fs::read(tmp.join("locked/held.bin")).unwrap(), b"held");
    if mounted {
        assert_eq!(
            std::fs::read(tmp.join("mnt/on-the-mount.bin")).unwrap(),
            b"mounted"
        );
    }
    assert_eq!(std::fs::read(live_dir.join("live.txt")).unwrap(), b"live\n");
    // Everything old and unprotected is gone; the new file stays.
    for gone in ["old.bin", "sub", "link", "dirlink"] {
        assert!(
            !tmp.join(gone).exists() && tmp.join(gone).symlink_metadata().is_err(),
            "tmp/{gone} left"
        );
    }
    assert!(tmp.join("new.bin").exists());

    // The failed job's directory is deleted; the succeeded one's archived, unpacking to the same tree.
    assert!(!data.join(format!("work/{failed}")).exists());
    assert!(!data.join(format!("work/{ok}")).exists());
    let archive = data.join(format!("archive/work/{ok}.tar.zst"));
    let unpacked = tempfile::tempdir().unwrap();
    let untar = Command::new("tar")
        .args(["--zstd", "-xf"])
        .arg(&archive)
        .arg("-C")
        .arg(unpacked.path())
        .output()
        .expect("tar (Debian package tar, with zstd)");
    assert!(
        untar.status.success(),
        "{}",
        String::from_utf8_lossy(&untar.stderr)
    );
    assert_eq!(tree(unpacked.path()), ok_tree);

    // Logs: compressed in place, read back byte-identical; the running job's untouched.
    let ok_logs = data.join(format!("logs/{ok}/1"));
    let names: Vec<String> = std::fs::read_dir(&ok_logs)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| n.ends_with(".zst")), "{names:?}");
    assert!(names.iter().any(|n| n.starts_with("stdout")), "{names:?}");
    let read_back = daemon.cli(&["logs", &ok.to_string()]);
    assert!(
        read_back.stdout == ok_log.stdout,
        "the compressed log reads back differently: {} bytes, was {}",
        read_back.stdout.len(),
        ok_log.stdout.len()
    );
    // (A job that printed nothing may have no log files at all.)
    let live_logs = data.join(format!("logs/{running}"));
    let compressed = Command::new("find")
        .arg(&live_logs)
        .args(["-name", "*.zst"])
        .output()
        .unwrap();
    assert!(compressed.stdout.is_empty(), "{}", stdout(&compressed));

    // History: the finished jobs' rows went to an export, the running job's stayed; the database is
    // compacted.
    let answer = run(
        &daemon,
        serde_json::json!({ "tasks": ["history", "compact"] }),
    )
    .await;
    for task in ["history", "compact"] {
        assert_eq!(report(&answer, task)["errors"], 0, "{task}: {answer}");
    }
    let exports: Vec<PathBuf> = std::fs::read_dir(data.join("archive/history"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(exports.len(), 1, "{exports:?}");
    let text = Command::new("zstdcat")
        .arg(&exports[0])
        .output()
        .expect("zstdcat (Debian package zstd)");
    let lines: Vec<serde_json::Value> = String::from_utf8(text.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let exported: Vec<i64> = lines
        .iter()
        .map(|l| l["job"]["id"].as_i64().unwrap())
        .collect();
    assert_eq!(exported, vec![ok.0, failed.0]);
    assert!(lines
        .iter()
        .all(|l| l["events"].as_array().is_some_and(|e| !e.is_empty())));
    assert!(
        client.get(ok).await.is_err(),
        "job {ok} still in the database"
    );
    assert!(client.get(running).await.is_ok());
    // With their records gone, their logs go too; the running job's stay.
    let answer = run(&daemon, serde_json::json!({ "tasks": ["logs"] })).await;
    assert_eq!(report(&answer, "logs")["errors"], 0, "{answer}");
    assert!(!data.join(format!("logs/{ok}")).exists());
    assert!(!data.join(format!("logs/{failed}")).exists());
    assert!(data.join(format!("logs/{running}")).exists());

    // Status and metrics show the run.
    let status: serde_json::Value = authed(&daemon.url)
        .get(format!("{}/api/janitor", daemon.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let tmp_status = status["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["task"] == "tmp")
        .unwrap();
    assert!(tmp_status["last_run"].is_string(), "{status}");
    assert!(
        tmp_status["totals"]["files_removed"].as_u64().unwrap() >= 3,
        "{status}"
    );
    let metrics = http_get(format!("{}/metrics", daemon.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("aura_janitor_runs_total{task=\"tmp\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("aura_janitor_last_run_timestamp_seconds{task=\"work\"}"),
        "{metrics}"
    );

    client.cancel(running).await.unwrap();
    drop(locked);
    if mounted {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(tmp.join("mnt"))
            .status();
    }
}

/// `aura cleanup`: the dry run lists, the real run removes, `--status` shows the schedule, a bad task
/// name is refused; a read token may look but not run.
#[tokio::test(flavor = "multi_thread")]
async fn the_cli_runs_and_shows_the_janitor() {
    use super::security::{config_file, token_config, with_token};
    let (read_token, read_cfg) = token_config("viewer", "read", "");
    let (_dir, config) = config_file(&read_cfg);
    let mut env = AGES.to_vec();
    env.push(("AURA_CONFIG", &config));
    let mut daemon = Daemon::start(&env);
    let tmp = daemon.data_dir.join("tmp");
    write_old(&tmp.join("stale.part"), b"x");
    let dry = daemon.cli(&["cleanup", "--dry-run", "--task", "tmp"]);
    assert!(
        dry.status.success(),
        "{}",
        String::from_utf8_lossy(&dry.stderr)
    );
    let text = stdout(&dry);
    assert!(text.contains("tmp/stale.part"), "{text}");
    assert!(tmp.join("stale.part").exists());
    let real = daemon.cli(&["cleanup", "--task", "tmp"]);
    assert!(real.status.success());
    assert!(
        stdout(&real).starts_with("tmp      1 files removed"),
        "{}",
        stdout(&real)
    );
    assert!(!tmp.join("stale.part").exists());
    let status = daemon.cli(&["cleanup", "--status"]);
    let text = stdout(&status);
    assert!(
        text.lines().count() == 9 && text.contains("compact"),
        "{text}"
    );
    let bad = daemon.cli(&["cleanup", "--task", "everything"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown janitor task"));
    // A read token sees the janitor, and may not run it.
    let reader = with_token(&read_token);
    let url = |path: &str| format!("{}{path}", daemon.url);
    let seen = reader.get(url("/api/janitor")).send().await.unwrap();
    assert_eq!(seen.status().as_u16(), 200);
    let refused = reader
        .post(url("/api/janitor/run"))
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16(), 403);
    // A malformed run request is a 400 that runs nothing.
    let malformed = authed(&daemon.url)
        .post(url("/api/janitor/run"))
        .json(&serde_json::json!({"tasks": ["nope"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(malformed.status().as_u16(), 400);
    // The last run is kept across a restart: the schedule goes on from it.
    daemon.stop_now();
    daemon.spawn();
    let text = stdout(&daemon.cli(&["cleanup", "--status"]));
    let tmp_line = text.lines().find(|l| l.starts_with("tmp ")).unwrap();
    assert!(tmp_line.contains(" ago "), "{text}");
}

/// A full data volume: the space-freeing tasks run early on their own, and once they freed space the
/// storage pause lifts and a job submitted meanwhile runs.
#[tokio::test(flavor = "multi_thread")]
async fn a_full_volume_runs_the_janitor_early_and_work_resumes() {
    let Some(volume) = Tmpfs::mount("size=32m") else {
        return;
    };
    let data = volume.path.join("data");
    let daemon = Daemon::start_at(
        data.clone(),
        &[
            ("AURA_JANITOR__LOW_FREE_DISK", "0.5"),
            ("AURA_JANITOR__CHECK_EVERY", "200ms"),
            // The volume is low while the filler is still being written (not old yet, so kept): an
            // early run then must come again soon, not after the default 10 minutes.
            ("AURA_JANITOR__EARLY_EVERY", "1s"),
            ("AURA_METRICS__INTERVAL", "100ms"),
            ("AURA_GUARDS__INTERVAL", "100ms"),
        ],
    );
    // Fill the volume to its last byte with an old temp file.
    let filler = data.join("tmp/filler.bin");
    volume.fill("data/tmp/filler.bin");
    touch_old(&filler);
    let client = daemon.client();
    let marker = daemon.scratch().join("ran");
    let id = client
        .submit(&spec("touch", &[marker.to_str().unwrap()]))
        .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while filler.exists() {
        assert!(Instant::now() < deadline, "the janitor did not run early");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The job (accepted, or refused while the database could not commit: then submitted again, as the
    // 507 says, until the store has taken a write again — it retries its kept writes every second).
    let id = match id {
        Ok(view) => view.job.id,
        Err(_) => loop {
            match client
                .submit(&spec("touch", &[marker.to_str().unwrap()]))
                .await
            {
                Ok(view) => break view.job.id,
                Err(e) => {
                    assert!(Instant::now() < deadline, "submits still refused: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        },
    };
    let view = wait_done(&client, id).await;
    assert!(
        matches!(view.job.outcome(), Some(Outcome::Succeeded)),
        "{:?}",
        view.job.state
    );
    assert!(marker.exists());
    let events = client.engine_events(0).await.unwrap();
    let ran = events
        .iter()
        .map(|e| serde_json::to_value(&e.event).unwrap())
        .find(|e| e["kind"] == "janitor_ran" && e["detail"]["early"] == true);
    assert!(ran.is_some(), "no early janitor_ran event: {events:?}");
}

/// An upload named as a job's input is linked into its directory (the same inode, no copy), read by the
/// job, and kept by the `uploads` task while a job that names it is unfinished; an old upload no job
/// names is removed.
#[tokio::test(flavor = "multi_thread")]
async fn an_input_is_linked_not_copied_and_protected_while_its_job_waits() {
    let daemon = Daemon::start(&[
        ("AURA_JANITOR__ENABLED", "false"),
        ("AURA_JANITOR__UPLOADS__OLDER_THAN", "1s"),
    ]);
    let client = daemon.client();
    let scratch = daemon.scratch();
    let named = scratch.join("clip.bin");
    let orphan = scratch.join("orphan.bin");
    std::fs::write(&named, b"frames frames frames").unwrap();
    std::fs::write(&orphan, b"nobody wants me").unwrap();
    let named_id = client.upload(&named, |_, _| {}).await.unwrap().id;
    let orphan_id = client.upload(&orphan, |_, _| {}).await.unwrap().id;
    let uploads = daemon.data_dir.join("uploads");
    // A job that waits (on a blocker) names the first upload as its input `in.bin`.
    let blocker = submit(&client, &spec("sleep", &["3"])).await;
    let mut job = spec(
        "sh",
        &["-c", "stat -c %i in.bin > inode; cat in.bin > copy.bin"],
    );
    job.after = vec![blocker];
    job.inputs.insert("in.bin".into(), named_id.clone());
    let waiting = submit(&client, &job).await;
    for id in [&named_id, &orphan_id] {
        touch_old(&uploads.join(id.as_str()));
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let answer = run(&daemon, serde_json::json!({"tasks": ["uploads"]})).await;
    assert_eq!(report(&answer, "uploads")["files_removed"], 1, "{answer}");
    assert!(
        uploads.join(named_id.as_str()).exists(),
        "a named upload was removed"
    );
    assert!(
        !uploads.join(orphan_id.as_str()).exists(),
        "an orphan upload stayed"
    );
    let view = wait_done(&client, waiting).await;
    assert!(
        matches!(view.job.outcome(), Some(Outcome::Succeeded)),
        "{:?}",
        view.job.state
    );
    let work = daemon.data_dir.join(format!("work/{waiting}"));
    assert_eq!(
        std::fs::read(work.join("copy.bin")).unwrap(),
        b"frames frames frames"
    );
    let inode: u64 = std::fs::read_to_string(work.join("inode"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let upload_inode = std::os::unix::fs::MetadataExt::ino(
        &std::fs::metadata(uploads.join(named_id.as_str())).unwrap(),
    );
    let linked = inode == upload_inode;
    // A reflink (where the file system has one) is a file of its own; a hard link is the same inode.
    eprintln!(
        "input materialised as {}",
        if linked { "a hard link" } else { "a reflink" }
    );
    assert!(linked || std::fs::metadata(work.join("in.bin")).unwrap().len() == 20);
    // Its job finished: the next run may take it.
    touch_old(&uploads.join(named_id.as_str()));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let answer = run(&daemon, serde_json::json!({"tasks": ["uploads"]})).await;
    assert_eq!(report(&answer, "uploads")["files_removed"], 1, "{answer}");
}

/// An encode's output downloads byte-identical through the API, with an exact Range, from the job's
/// directory and again after the janitor archived it.
#[tokio::test(flavor = "multi_thread")]
async fn an_encode_downloads_the_same_before_and_after_the_janitor_archives_it() {
    let daemon = Daemon::start(&AGES);
    let client = daemon.client();
    let encode = spec(
        "ffmpeg",
        &[
            "-hide_banner",
            "-loglevel",
            "error",
            "-f",
            "lavfi",
            "-i",
            "testsrc=duration=2:size=320x240:rate=25",
            "-c:v",
            "libx264",
            "-pix_fmt",
            "yuv420p",
            "out.mp4",
        ],
    );
    let id = submit(&client, &encode).await;
    let view = wait_done(&client, id).await;
    assert!(
        matches!(view.job.outcome(), Some(Outcome::Succeeded)),
        "{:?}",
        view.job.state
    );
    let on_disk = std::fs::read(daemon.data_dir.join(format!("work/{id}/out.mp4"))).unwrap();
    assert!(on_disk.len() > 1000);
    let url = format!("{}/api/jobs/{id}/files/out.mp4", daemon.url);
    let http = authed(&daemon.url);
    let download = |range: Option<&'static str>| {
        let (http, url) = (http.clone(), url.clone());
        async move {
            let mut request = http.get(&url);
            if let Some(r) = range {
                request = request.header("range", r);
            }
            let resp = request.send().await.unwrap();
            (resp.status().as_u16(), resp.bytes().await.unwrap().to_vec())
        }
    };
    assert_eq!(download(None).await, (200, on_disk.clone()));
    assert_eq!(
        download(Some("bytes=100-199")).await,
        (206, on_disk[100..200].to_vec())
    );
    // Archived by the janitor: the same bytes, from the archive.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let answer = run(&daemon, serde_json::json!({"tasks": ["work"]})).await;
    assert_eq!(report(&answer, "work")["archived"], 1, "{answer}");
    assert!(!daemon.data_dir.join(format!("work/{id}")).exists());
    let files = client.job_files(id).await.unwrap();
    assert_eq!(files.source, aura_model::files::FilesSource::Archive);
    assert_eq!(download(None).await, (200, on_disk.clone()));
    assert_eq!(
        download(Some("bytes=-10")).await,
        (206, on_disk[on_disk.len() - 10..].to_vec())
    );
}

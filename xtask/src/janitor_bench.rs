//! `bench janitor`, `bench upload`, `bench retention`: the janitor's sweep of a large old tree beside
//! `find ROOT -mtime +1 -delete` on an identical tree (ABBA, same volume, same run); an upload through
//! the API beside `cp` of the same file on the same volume; and retention of many finished jobs (export,
//! delete, compaction) with the submit latency the engine shows while it runs.

use crate::harness::{percentile, runtime, Daemon};
use anyhow::{bail, Context};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// `dirs` directories of `per_dir` empty files each, every entry's mtime ten days back.
fn old_tree(root: &Path, dirs: usize, per_dir: usize) -> anyhow::Result<()> {
    use rustix::fs::{utimensat, AtFlags, Timespec, Timestamps, CWD};
    let old = std::time::SystemTime::now() - Duration::from_secs(10 * 24 * 3600);
    let secs = old.duration_since(std::time::UNIX_EPOCH)?.as_secs() as i64;
    let stamp = Timestamps {
        last_access: Timespec {
            tv_sec: secs,
            tv_nsec: 0,
        },
        last_modification: Timespec {
            tv_sec: secs,
            tv_nsec: 0,
        },
    };
    for d in 0..dirs {
        let dir = root.join(format!("d{d:03}"));
        std::fs::create_dir_all(&dir)?;
        for f in 0..per_dir {
            let file = dir.join(format!("f{f:04}.tmp"));
            std::fs::File::create(&file)?;
            utimensat(CWD, &file, &stamp, AtFlags::empty())?;
        }
        utimensat(CWD, &dir, &stamp, AtFlags::empty())?;
    }
    Ok(())
}

fn count_files(root: &Path) -> usize {
    std::fs::read_dir(root)
        .map(|d| {
            d.flatten()
                .map(|e| std::fs::read_dir(e.path()).map_or(1, |f| f.count()))
                .sum()
        })
        .unwrap_or(0)
}

/// `bench janitor`: `rounds` ABBA pairs of `find -mtime +1 -delete` and the janitor's `tmp` task over
/// the same `files`-file tree, rebuilt before each.
pub fn sweep(root: &Path, files: usize, rounds: usize) -> anyhow::Result<()> {
    let per_dir = 1000.min(files.max(1));
    let dirs = files.div_ceil(per_dir);
    let daemon = Daemon::start_with(root, 2, &[("AURA_JANITOR__ENABLED", "false")])?;
    let tmp = daemon.data_dir().join("tmp");
    // find runs on a sibling of tmp/: the same volume and directory depth.
    let find_root = daemon.data_dir().join("find-tree");
    let rt = runtime()?;
    let client = daemon.client()?;
    let mut find_secs = Vec::new();
    let mut aura_secs = Vec::new();
    let mut walk_secs = Vec::new();
    let find = |find_secs: &mut Vec<f64>| -> anyhow::Result<()> {
        old_tree(&find_root, dirs, per_dir)?;
        sync();
        let t = Instant::now();
        let status = Command::new("find")
            .arg(&find_root)
            .args(["-mindepth", "1", "-mtime", "+1", "-delete"])
            .status()?;
        find_secs.push(t.elapsed().as_secs_f64());
        if !status.success() || count_files(&find_root) != 0 {
            bail!("find left files behind");
        }
        Ok(())
    };
    let aura = |aura_secs: &mut Vec<f64>, walk_secs: &mut Vec<f64>| -> anyhow::Result<()> {
        old_tree(&tmp, dirs, per_dir)?;
        sync();
        let t = Instant::now();
        let answer = rt.block_on(client.janitor_run(&aura_model::janitor::RunRequest {
            dry_run: false,
            tasks: vec![aura_model::janitor::TaskName::Tmp],
        }))?;
        aura_secs.push(t.elapsed().as_secs_f64());
        let report = &answer.reports[0].report;
        walk_secs.push(report.seconds);
        if report.files_removed as usize != dirs * per_dir || count_files(&tmp) != 0 {
            bail!(
                "the janitor removed {} of {} files",
                report.files_removed,
                dirs * per_dir
            );
        }
        Ok(())
    };
    for round in 0..rounds {
        // ABBA: find, aura, aura, find.
        find(&mut find_secs)?;
        aura(&mut aura_secs, &mut walk_secs)?;
        aura(&mut aura_secs, &mut walk_secs)?;
        find(&mut find_secs)?;
        eprintln!(
            "round {}: find {:.3}/{:.3} s, aura {:.3}/{:.3} s",
            round + 1,
            find_secs[find_secs.len() - 2],
            find_secs[find_secs.len() - 1],
            aura_secs[aura_secs.len() - 2],
            aura_secs[aura_secs.len() - 1]
        );
    }
    let total = |v: &[f64]| v.iter().sum::<f64>();
    println!(
        "sweep of {} old files ({dirs} dirs): find -mtime +1 -delete {:.3} s, aura janitor (tmp task, through the API) {:.3} s (walk {:.3} s) per tree over {} trees each: ratio {:.2}x",
        dirs * per_dir,
        total(&find_secs) / find_secs.len() as f64,
        total(&aura_secs) / aura_secs.len() as f64,
        total(&walk_secs) / walk_secs.len() as f64,
        find_secs.len(),
        total(&aura_secs) / total(&find_secs)
    );
    Ok(())
}

fn sync() {
    let _ = Command::new("sync").status();
}

/// `bench upload`: a `mib` MiB file uploaded through the API (`curl -T`, streamed) beside `cp` of the
/// same file on the same volume, ABBA, each copy removed before the next.
pub fn upload(root: &Path, mib: usize, rounds: usize) -> anyhow::Result<()> {
    let daemon = Daemon::start_with(root, 2, &[("AURA_JANITOR__ENABLED", "false")])?;
    let token = daemon
        .token
        .clone()
        .context("the daemon has no API token")?;
    let source = daemon.data_dir().join("upload-source.bin");
    let copy = daemon.data_dir().join("upload-copy.bin");
    let status = Command::new("head")
        .args(["-c", &format!("{}", mib << 20), "/dev/urandom"])
        .stdout(std::fs::File::create(&source)?)
        .status()?;
    if !status.success() {
        bail!("cannot write the source file");
    }
    sync();
    let mut cp_secs = Vec::new();
    let mut up_secs = Vec::new();
    let uploads = daemon.data_dir().join("uploads");
    let clear_uploads = || -> anyhow::Result<()> {
        for e in std::fs::read_dir(&uploads)?.flatten() {
            std::fs::remove_file(e.path())?;
        }
        Ok(())
    };
    let cp = |cp_secs: &mut Vec<f64>| -> anyhow::Result<()> {
        let _ = std::fs::remove_file(&copy);
        let t = Instant::now();
        let ok = Command::new("cp")
            .arg(&source)
            .arg(&copy)
            .status()?
            .success();
        // cp returns with the data in the page cache; the upload fsyncs before it answers: so does this.
        let ok = ok && Command::new("sync").arg(&copy).status()?.success();
        cp_secs.push(t.elapsed().as_secs_f64());
        if !ok {
            bail!("cp failed");
        }
        Ok(())
    };
    let up = |up_secs: &mut Vec<f64>| -> anyhow::Result<()> {
        clear_uploads()?;
        let t = Instant::now();
        let out = Command::new("curl")
            .args([
                "-sS",
                "-f",
                "-X",
                "POST",
                "-H",
                "content-type: application/octet-stream",
            ])
            .arg("-H")
            .arg(format!("authorization: Bearer {token}"))
            .arg("-T")
            .arg(&source)
            .arg(format!("{}/api/uploads", daemon.url))
            .output()?;
        up_secs.push(t.elapsed().as_secs_f64());
        if !out.status.success() {
            bail!("upload failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    };
    for _ in 0..rounds {
        cp(&mut cp_secs)?;
        up(&mut up_secs)?;
        up(&mut up_secs)?;
        cp(&mut cp_secs)?;
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let rate = |s: f64| mib as f64 / s;
    println!(
        "upload of {mib} MiB: cp + sync {:.3} s ({:.0} MiB/s), POST /api/uploads (curl -T, hashed, fsynced) {:.3} s ({:.0} MiB/s): {:.0} % of cp's rate, {} runs each",
        mean(&cp_secs),
        rate(mean(&cp_secs)),
        mean(&up_secs),
        rate(mean(&up_secs)),
        100.0 * mean(&cp_secs) / mean(&up_secs),
        cp_secs.len()
    );
    Ok(())
}

/// `bench retention`: `jobs` trivial jobs finish; then the janitor's history task (export, delete) and
/// compaction run while a client submits a job every 10 ms: the database before and after, the export's
/// line count, each task's time, and the submit latency (p50, p99, max) during the run beside the same
/// client's before it.
pub fn retention(root: &Path, jobs: usize) -> anyhow::Result<()> {
    let daemon = Daemon::start_with(
        root,
        2,
        &[
            ("AURA_JANITOR__ENABLED", "false"),
            ("AURA_JANITOR__HISTORY__OLDER_THAN", "1s"),
        ],
    )?;
    let data = daemon.data_dir().to_path_buf();
    let rt = runtime()?;
    let client = daemon.client()?;
    let t = Instant::now();
    rt.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        let workers = 8;
        for w in 0..workers {
            let client = client.clone();
            let n = jobs / workers + usize::from(w < jobs % workers);
            tasks.spawn(async move {
                for _ in 0..n {
                    client
                        .submit(&aura_model::JobSpec::new("/bin/true", Vec::<String>::new()))
                        .await?;
                }
                anyhow::Ok(())
            });
        }
        while let Some(done) = tasks.join_next().await {
            done??;
        }
        loop {
            let s = client.status().await?;
            if s.queued == 0 && s.running == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        anyhow::Ok(())
    })?;
    eprintln!("{jobs} jobs done in {:.1} s", t.elapsed().as_secs_f64());
    std::thread::sleep(Duration::from_millis(1200));
    let db_size = || -> u64 {
        ["aura.db", "aura.db-wal"]
            .iter()
            .map(|f| std::fs::metadata(data.join(f)).map_or(0, |m| m.len()))
            .sum()
    };
    let before = db_size();
    // The submit probe: one submit every 10 ms, latency recorded, until told to stop.
    let probe = |seconds: Option<f64>, stop: std::sync::Arc<std::sync::atomic::AtomicBool>| {
        let client = client.clone();
        async move {
            let mut latencies = Vec::new();
            let start = Instant::now();
            loop {
                if stop.load(std::sync::atomic::Ordering::Relaxed)
                    || seconds.is_some_and(|s| start.elapsed().as_secs_f64() > s)
                {
                    break;
                }
                let t = Instant::now();
                client
                    .submit(&aura_model::JobSpec::new("/bin/true", Vec::<String>::new()))
                    .await?;
                latencies.push(t.elapsed().as_secs_f64() * 1000.0);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            anyhow::Ok(latencies)
        }
    };
    let summary = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        format!(
            "p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms over {} submits",
            percentile(&v, 0.5),
            percentile(&v, 0.99),
            v.last().copied().unwrap_or(f64::NAN),
            v.len()
        )
    };
    let idle_stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let idle = rt.block_on(probe(Some(5.0), idle_stop))?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (answer, during) = rt.block_on(async {
        let probing = tokio::spawn(probe(None, stop.clone()));
        let answer = client
            .janitor_run(&aura_model::janitor::RunRequest {
                dry_run: false,
                tasks: vec![
                    aura_model::janitor::TaskName::History,
                    aura_model::janitor::TaskName::Compact,
                ],
            })
            .await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let during = probing.await?;
        anyhow::Ok((answer?, during?))
    })?;
    let after = db_size();
    let exports: Vec<PathBuf> = std::fs::read_dir(data.join("archive/history"))?
        .flatten()
        .map(|e| e.path())
        .collect();
    let mut lines = 0usize;
    for export in &exports {
        let out = Command::new("zstdcat").arg(export).output()?;
        lines += out.stdout.iter().filter(|b| **b == b'\n').count();
    }
    let secs = |task: &str| {
        answer
            .reports
            .iter()
            .find(|r| r.task.as_str() == task)
            .map_or(f64::NAN, |r| r.report.seconds)
    };
    let exported = answer
        .reports
        .iter()
        .find(|r| r.task.as_str() == "history")
        .map_or(0, |r| r.report.archived);
    println!(
        "retention of {jobs} finished jobs: exported and deleted {exported} ({lines} export lines) in {:.2} s, compacted in {:.2} s; database {:.1} MiB → {:.1} MiB",
        secs("history"),
        secs("compact"),
        before as f64 / (1 << 20) as f64,
        after as f64 / (1 << 20) as f64
    );
    println!("submit latency before: {}", summary(idle));
    println!(
        "submit latency during export, delete and compaction: {}",
        summary(during)
    );
    Ok(())
}

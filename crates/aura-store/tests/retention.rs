//! Retention and compaction: which finished jobs may go, purging them in bounded batches, old engine
//! events, and (SQLite's file) giving the freed pages back to the file system. Each test runs against a
//! real SQLite file and against a fresh PostgreSQL database as one node (`both!`: `name::sqlite`,
//! `name::postgres`). The longest single purge and compaction step are printed (not asserted: they
//! depend on the machine).

#[macro_use]
mod common;

use aura_model::{
    Accounting, Backend, EngineEvent, Event, ExitStatus, Job, JobEvent, JobId, JobSpec,
    LoggedEvent, NewEvent, RetryPolicy, Run, StateName, Timestamp, TreeHandle,
};
use aura_store::{AutoVacuum, Commit, Store, StoreOptions};
use common::{Db, TestStore};
use serde_json::json;
use std::collections::HashSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

fn at(ms: i64) -> Timestamp {
    Timestamp::from_unix_millis(1_700_000_000_000 + ms)
}

/// A spec of a realistic size (a media job with labels and an environment); failures are retried once.
fn spec(n: usize) -> JobSpec {
    let mut spec = JobSpec::new(
        "ffmpeg",
        [
            "-hide_banner",
            "-i",
            &format!("/srv/media/incoming/episode-{n:06}.mkv"),
            "-c:v",
            "libx264",
            "-preset",
            "veryfast",
            "-crf",
            "23",
            &format!("/srv/media/out/episode-{n:06}.mp4"),
        ],
    );
    spec.labels.insert("kind".into(), "encode".into());
    spec.labels.insert("batch".into(), format!("b{}", n / 500));
    spec.env.insert("LANG".into(), "C.UTF-8".into());
    spec.cwd = Some(PathBuf::from("/srv/media"));
    spec.retry = RetryPolicy {
        max_retries: 1,
        requeue_interrupted: true,
        max_pressure_requeues: 1,
    };
    spec
}

fn run_info(ms: i64) -> Run {
    Run {
        started_at: at(ms),
        tree: TreeHandle {
            backend: Backend::CgroupV2,
            pid: 4242,
            start_ticks: 99,
            cgroups: vec!["/sys/fs/cgroup/aura/job".into()],
        },
        cwd: "/srv/media".into(),
        paused_secs: 0.0,
    }
}

fn exited(code: i32, ms: i64) -> Event {
    Event::Exited {
        exit: ExitStatus::Code(code),
        signals_sent: vec![],
        accounting: Accounting::default(),
        at: at(ms),
    }
}

fn event(kind: &str, ms: i64) -> NewEvent {
    NewEvent {
        at: at(ms),
        event: JobEvent::Unrecognized {
            kind: kind.into(),
            detail: json!({ "n": ms, "line": "frame= 1200 fps= 48 q=28.0 size=   10240kB time=00:00:50.00 bitrate=1677.7kbits/s speed=1.99x" }),
        },
        attempt: None,
    }
}

/// Inserts `n` jobs (batches of 500, as a client's batches are stored) and runs each to its end with a
/// few events: exit code 1 for those `fails` picks (they may be retried), 0 for the rest. The records are
/// queued without waiting for each commit, so the writer group-commits them.
async fn finished_jobs(store: &Store, n: usize, fails: impl Fn(usize) -> bool) -> Vec<Job> {
    let mut jobs = Vec::with_capacity(n);
    for first in (0..n).step_by(500) {
        let entries = (first..(first + 500).min(n))
            .map(|i| (spec(i), vec![], None))
            .collect();
        let inserted = store.insert_batch(entries, at(0), None).await.unwrap();
        let mut pending = Vec::with_capacity(inserted.len() * 2);
        for (offset, mut job) in inserted.into_iter().enumerate() {
            let i = first + offset;
            job.apply(Event::Started { run: run_info(1) }).unwrap();
            let started = vec![
                event("started", 1),
                event("progress", 2),
                event("progress", 3),
            ];
            pending.push(store.record_queued(&job, started).await.unwrap());
            job.apply(exited(i32::from(fails(i)), 4)).unwrap();
            pending.push(
                store
                    .record_queued(&job, vec![event("exited", 4)])
                    .await
                    .unwrap(),
            );
            jobs.push(job);
        }
        for p in pending {
            p.await.unwrap();
        }
    }
    jobs
}

fn ids(page: &[aura_store::RetainedJob]) -> Vec<JobId> {
    page.iter().map(|r| r.job.id).collect()
}

/// 20,000 finished jobs with events go in batches of 500, except those something unfinished still
/// needs (a dependency of a queued job, the original of a queued retry) and one that was requeued
/// between listing and purging; then, on SQLite, compaction gives the file's space back until no free
/// page is left (PostgreSQL's space is its autovacuum's: nothing to compact).
async fn finished_jobs_are_purged_in_batches(db: Db) {
    const JOBS: usize = 20_000;
    let t = TestStore::open(db).await;
    let store = t.store.clone();
    let t0 = Instant::now();
    let jobs = finished_jobs(&store, JOBS, |i| i == 30 || i == 20).await;
    eprintln!("stored {JOBS} finished jobs in {:?}", t0.elapsed());

    // A queued job that waits for job 10; a queued retry of job 20.
    let needed = jobs[10].id;
    let mut waiting_spec = spec(JOBS);
    waiting_spec.after = vec![needed];
    let waiting = store
        .insert_job(waiting_spec, at(5), None, None)
        .await
        .unwrap();
    let original = jobs[20].id;
    let retry = store
        .insert_retry(spec(20), at(6), None, None, original)
        .await
        .unwrap();
    let requeued = jobs[30].id;

    // Everything so far is older than the cutoff; a job finished after it is not.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let cutoff = Timestamp::now();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let recent = finished_jobs(&store, 1, |_| false).await.remove(0);
    store.checkpoint().await.unwrap();
    let (db_before, _) = store.file_sizes().await.unwrap();

    let mut purged = 0u64;
    let mut listed: HashSet<JobId> = HashSet::new();
    let mut slowest_purge = Duration::ZERO;
    let mut slowest_listing = Duration::ZERO;
    for round in 0.. {
        assert!(round < 100, "retention does not converge");
        let t = Instant::now();
        let page = store.retention_candidates(cutoff, 500).await.unwrap();
        slowest_listing = slowest_listing.max(t.elapsed());
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 500);
        assert!(
            page.windows(2).all(|w| w[0].job.id < w[1].job.id),
            "oldest id first"
        );
        for retained in &page {
            assert_eq!(retained.job.state.name(), StateName::Finished);
            let kinds: Vec<String> = retained.events.iter().map(|e| e.event.kind()).collect();
            assert_eq!(
                kinds,
                ["submitted", "started", "progress", "progress", "exited"],
                "job {} comes with its events",
                retained.job.id
            );
            assert!(listed.insert(retained.job.id), "listed twice");
        }
        let mut batch = ids(&page);
        assert!(!batch.contains(&needed) && !batch.contains(&original));
        assert!(!batch.contains(&recent.id), "finished after the cutoff");
        if round == 0 {
            // Requeued after it was listed: the purge must keep it. And a purge re-checks what it is
            // given: a job a queued one waits for is kept even if named.
            assert!(batch.contains(&requeued));
            let mut job = store.get(requeued).await.unwrap().unwrap();
            job.apply(Event::Requeue { at: at(7) }).unwrap();
            store
                .record(&job, vec![event("requeued", 7)])
                .await
                .unwrap();
            batch.push(needed);
        }
        let t = Instant::now();
        purged += store.purge(batch).await.unwrap();
        slowest_purge = slowest_purge.max(t.elapsed());
    }
    assert_eq!(purged, JOBS as u64 - 3, "all but the three still needed");
    assert_eq!(listed.len(), JOBS - 2, "the requeued job was listed once");

    for kept in [needed, original, requeued, recent.id, waiting.id, retry.id] {
        assert!(store.get(kept).await.unwrap().is_some(), "job {kept} kept");
        assert!(
            !store.events(kept).await.unwrap().is_empty(),
            "events of {kept} kept"
        );
    }
    for gone in [
        jobs[0].id,
        jobs[11].id,
        jobs[JOBS / 2].id,
        jobs[JOBS - 1].id,
    ] {
        assert_eq!(store.get(gone).await.unwrap(), None, "job {gone} purged");
        assert!(
            store.events(gone).await.unwrap().is_empty(),
            "events of {gone} purged"
        );
    }
    let counts = store.count_by_state().await.unwrap();
    let count = |state| counts.iter().find(|(s, _)| *s == state).unwrap().1;
    assert_eq!(
        (count(StateName::Finished), count(StateName::Queued)),
        (3, 3)
    );
    // Purging again is a no-op: gone ids are skipped, kept ones are still needed.
    assert_eq!(
        store
            .purge(vec![jobs[0].id, needed, original, requeued])
            .await
            .unwrap(),
        0
    );

    if db == Db::Postgres {
        eprintln!("slowest: listing of 500 {slowest_listing:?}, purge of 500 {slowest_purge:?}");
        store.close().await.unwrap();
        return;
    }
    // SQLite's file. Compaction: 1024-page steps down to half the freelist, then 256-page steps to
    // the end.
    let (free, pages, page_size) = store.freelist().await.unwrap();
    assert!(
        free > pages / 2,
        "{free} of {pages} pages free after the purge"
    );
    let mut slowest = [Duration::ZERO; 2];
    let mut steps = [0u32; 2];
    let mut left = free;
    while left > 0 {
        let which = usize::from(left <= free / 2);
        let t = Instant::now();
        let step = store.compact_step([1024, 256][which]).await.unwrap();
        slowest[which] = slowest[which].max(t.elapsed());
        steps[which] += 1;
        assert_eq!(step.auto_vacuum, AutoVacuum::Incremental);
        assert_eq!(step.page_size, page_size);
        assert!(step.freelist_pages < left, "a step gives pages back");
        left = step.freelist_pages;
        assert!(steps[0] + steps[1] < 10_000);
    }
    assert_eq!(store.freelist().await.unwrap().0, 0);
    assert!(store.checkpoint().await.unwrap(), "nothing reads now");
    let (db_after, wal_after) = store.file_sizes().await.unwrap();
    eprintln!(
        "database {db_before} → {db_after} bytes ({free} free pages of {page_size} bytes given back), WAL {wal_after} bytes"
    );
    eprintln!(
        "slowest: listing of 500 {slowest_listing:?}, purge of 500 {slowest_purge:?}, \
         compact_step(1024) {:?} over {} steps, compact_step(256) {:?} over {} steps",
        slowest[0], steps[0], slowest[1], steps[1]
    );
    assert!(db_after < db_before / 4, "{db_before} → {db_after}");
    assert_eq!(wal_after, 0, "the truncating checkpoint emptied the WAL");

    // What is left still reads back whole.
    assert_eq!(
        store.get(waiting.id).await.unwrap().unwrap().spec.after,
        [needed]
    );
    store.close().await.unwrap();
}

both!(finished_jobs_are_purged_in_batches);

/// Engine events older than the cutoff go, oldest first, at most `limit` per call; newer ones stay.
async fn old_engine_events_are_purged_in_bounded_calls(db: Db) {
    let t = TestStore::open(db).await;
    let store = t.store.clone();
    for n in 0..1200 {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let event = EngineEvent::Unrecognized {
            kind: "admission_paused".into(),
            detail: json!({ "n": n }),
        };
        store
            .record_engine_event(at(n), &event, move |r| {
                let _ = tx.send(r);
            })
            .await
            .unwrap();
        // Awaited only at the end of each hundred: the rest share commits.
        if n % 100 == 99 {
            rx.await.unwrap().unwrap();
        }
    }
    let mut calls = Vec::new();
    loop {
        let deleted = store.purge_engine_events(at(1000), 300).await.unwrap();
        calls.push(deleted);
        if deleted == 0 {
            break;
        }
    }
    assert_eq!(calls, [300, 300, 300, 100, 0]);
    let left = store.engine_events(0, 1000).await.unwrap();
    assert_eq!(left.len(), 200);
    assert_eq!(left[0].at, at(1000), "the oldest kept is the cutoff's");
    assert_eq!(store.purge_engine_events(at(5000), 0).await.unwrap(), 0);
    store.close().await.unwrap();
}

both!(old_engine_events_are_purged_in_bounded_calls);

/// A purge runs after the writes queued before it (here held in a long group window, which the purge
/// ends at once): a job that one of them finished is purged with it, and one that one of them requeued
/// is kept.
async fn a_purge_runs_after_the_writes_queued_before_it_without_waiting_for_the_window(db: Db) {
    let t = TestStore::open_with(
        db,
        StoreOptions {
            group_window: Duration::from_secs(3600),
            ..StoreOptions::default()
        },
    )
    .await;
    let store = t.store.clone();
    let mut finishing = store.insert_job(spec(1), at(0), None, None).await.unwrap();
    let failed = finished_jobs(&store, 1, |_| true).await.remove(0);
    finishing
        .apply(Event::Started { run: run_info(1) })
        .unwrap();
    finishing.apply(exited(0, 2)).unwrap();
    let mut requeued = failed.clone();
    requeued.apply(Event::Requeue { at: at(3) }).unwrap();
    let (tx, finished_commit) = tokio::sync::oneshot::channel();
    store
        .record_then(&finishing, &[], Commit::Soon, move |r| {
            let _ = tx.send(r);
        })
        .await
        .unwrap();
    store
        .record_then(&requeued, &[], Commit::Soon, |_| {})
        .await
        .unwrap();
    let purge = store.purge(vec![finishing.id, failed.id]);
    let deleted = tokio::time::timeout(Duration::from_secs(20), purge)
        .await
        .expect("the purge did not wait for the group window")
        .unwrap();
    assert_eq!(deleted, 1);
    finished_commit.await.unwrap().unwrap();
    assert_eq!(store.get(finishing.id).await.unwrap(), None);
    assert_eq!(
        store.get(failed.id).await.unwrap().map(|j| j.state.name()),
        Some(StateName::Queued)
    );
    store.close().await.unwrap();
}

both!(a_purge_runs_after_the_writes_queued_before_it_without_waiting_for_the_window);

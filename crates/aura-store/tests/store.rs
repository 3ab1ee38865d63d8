//! Integration tests of the job store. Every test that is not about SQLite's own file runs twice
//! (`both!`): against a real SQLite file, and against a fresh PostgreSQL database as one node
//! (`name::sqlite`, `name::postgres`). The SQLite-only ones come last, grouped by why.

#[macro_use]
mod common;

use aura_model::{
    Accounting, Backend, ByteSize, EngineEvent, Event, ExitStatus, Job, JobEvent, JobId, JobSpec,
    LoggedEvent, MemorySource, NewEvent, RetryPolicy, Run, StateName, StopReason, StopSignal,
    Timestamp, TreeHandle,
};
use aura_store::{Commit, ListFilter, Store, StoreError, StoreOptions};
use common::{Db, SmallVolume, TestStore};
use serde_json::json;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tempfile::TempDir;

fn at(ms: i64) -> Timestamp {
    Timestamp::from_unix_millis(1_700_000_000_000 + ms)
}

fn spec(n: usize) -> JobSpec {
    let mut spec = JobSpec::new(
        "ffmpeg",
        ["-i", "in.mkv", "-c:v", "libx264", &format!("out{n}.mp4")],
    );
    spec.labels.insert(
        "kind".into(),
        if n % 2 == 0 { "encode" } else { "tts" }.into(),
    );
    spec.env.insert("LANG".into(), "C.UTF-8".into());
    spec.cwd = Some(PathBuf::from("/srv/media"));
    spec.priority = (n % 5) as i32 - 2;
    spec.resources.cpu = Some(1.0 / 3.0);
    spec.resources.memory = Some(ByteSize(300 << 20));
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
            start_ticks: u64::MAX - 7,
            cgroups: vec!["/sys/fs/cgroup/aura/job-1".into()],
        },
        cwd: "/srv/media".into(),
        paused_secs: 0.0,
    }
}

fn exited(code: i32, ms: i64) -> Event {
    Event::Exited {
        exit: ExitStatus::Code(code),
        signals_sent: vec![StopSignal::Int],
        accounting: Accounting {
            memory_start: Some(ByteSize(10 << 20)),
            memory_peak: Some(ByteSize(310 << 20)),
            memory_end: Some(ByteSize(12 << 20)),
            page_cache_end: Some(ByteSize(300 << 20)),
            memory_source: Some(MemorySource::CgroupPeak),
            cpu_user_secs: Some(0.1 + 0.2),
            cpu_system_secs: Some(1e-7),
            wall_secs: Some(12.345_678_901_234_5),
            peak_processes: Some(3),
            log_truncated_bytes: 17,
            log_dropped_bytes: 3,
            memory_limit: Some(ByteSize(400 << 20)),
            oom_kills: 0,
            memory_limit_exceeded: false,
            progress: Some(Box::new(aura_model::Progress {
                source: Some(aura_model::ProgressSource::FfmpegPipe),
                percent: Some(100.0),
                fps: Some(24.97),
                speed: Some(1.5),
                eta_secs: Some(0.0),
                out_time_secs: Some(10.0),
                expected_secs: Some(10.0),
                total_size: Some(1 << 20),
                frame: Some(250),
                bitrate_kbps: Some(838.9),
                reports: 21,
                done: true,
                idle_secs: None,
            })),
        },
        at: at(ms),
    }
}

/// An event of any kind with a test detail (kept as written: the store stores kinds it is given).
fn event(kind: &str, ms: i64) -> NewEvent {
    NewEvent {
        at: at(ms),
        event: JobEvent::Unrecognized {
            kind: kind.into(),
            detail: json!({ "n": ms, "why": kind }),
        },
        attempt: None,
    }
}

fn engine_event(kind: &str, ms: i64) -> EngineEvent {
    EngineEvent::Unrecognized {
        kind: kind.into(),
        detail: json!({ "n": ms, "why": kind }),
    }
}

/// The stored detail of an event.
fn detail_of(event: &impl LoggedEvent) -> serde_json::Value {
    event.to_parts().expect("parts").1
}

async fn open(path: &Path) -> Store {
    Store::open(path, StoreOptions::default())
        .await
        .expect("open store")
}

fn db(dir: &TempDir) -> PathBuf {
    dir.path().join("aura.db")
}

async fn insert_then_get_round_trips(db: Db) {
    let t = TestStore::open(db).await;
    let store = t.store.clone();
    let mut last = JobId(0);
    for n in 0..5 {
        let job = store
            .insert_job(spec(n), at(n as i64), None, None)
            .await
            .unwrap();
        assert!(
            job.id > last,
            "ids must increase: {:?} after {:?}",
            job.id,
            last
        );
        last = job.id;
        assert_eq!(job, Job::new(job.id, spec(n), at(n as i64)));
        assert_eq!(store.get(job.id).await.unwrap(), Some(job.clone()));
        let events = store.events(job.id).await.unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(
            (
                events[0].event.kind().as_str(),
                events[0].job_id,
                events[0].attempt
            ),
            ("submitted", job.id, 1)
        );
        assert_eq!(events[0].at, at(n as i64));
    }
    assert_eq!(store.get(JobId(9999)).await.unwrap(), None);
    assert!(store.events(JobId(9999)).await.unwrap().is_empty());
    store.close().await.unwrap();
}

both!(insert_then_get_round_trips);

/// Who submitted a job (a token's name) is stored with it and survives every later write.
async fn the_submitter_is_recorded(db: Db) {
    let t = TestStore::open(db).await;
    let store = t.store.clone();
    let mut job = store
        .insert_job(spec(1), at(0), None, Some("render-farm".into()))
        .await
        .unwrap();
    assert_eq!(job.submitted_by.as_deref(), Some("render-farm"));
    job.apply(Event::Started { run: run_info(10) }).unwrap();
    store
        .record(&job, vec![event("started", 10)])
        .await
        .unwrap();
    let read = store.get(job.id).await.unwrap().unwrap();
    assert_eq!(read.submitted_by.as_deref(), Some("render-farm"));
    assert_eq!(read, job);
    let anonymous = store.insert_job(spec(2), at(0), None, None).await.unwrap();
    assert_eq!(
        store.get(anonymous.id).await.unwrap().unwrap().submitted_by,
        None
    );
    store.close().await.unwrap();
}

both!(the_submitter_is_recorded);

async fn recorded_transitions_read_back_equal(db: Db) {
    let t = TestStore::open(db).await;
    let store = t.store.clone();
    let mut job = store.insert_job(spec(1), at(0), None, None).await.unwrap();

    job.apply(Event::Started { run: run_info(10) }).unwrap();
    store
        .record(&job, vec![event("started", 10)])
        .await
        .unwrap();
    assert_eq!(store.get(job.id).await.unwrap().as_ref(), Some(&job));

    job.apply(Event::StopRequested {
        reason: StopReason::TimedOut,
        at: at(20),
    })
    .unwrap();
    store
        .record(
            &job,
            vec![event("stop_requested", 20), event("signal_sent", 21)],
        )
        .await
        .unwrap();
    assert_eq!(store.get(job.id).await.unwrap().as_ref(), Some(&job));

    job.apply(exited(1, 30)).unwrap();
    store.record(&job, vec![event("exited", 30)]).await.unwrap();
    assert_eq!(store.get(job.id).await.unwrap().as_ref(), Some(&job));
    assert_eq!(job.failures, 1);

    job.apply(Event::Requeue { at: at(40) }).unwrap();
    store
        .record(&job, vec![event("requeued", 40)])
        .await
        .unwrap();
    job.apply(Event::Started { run: run_info(50) }).unwrap();
    store
        .record_queued(&job, vec![event("started", 50)])
        .await
        .unwrap()
        .await
        .unwrap();
    job.apply(exited(0, 60)).unwrap();
    store.record(&job, vec![event("exited", 60)]).await.unwrap();
    let stored = store.get(job.id).await.unwrap().unwrap();
    assert_eq!(stored, job);
    assert_eq!(
        (
            stored.attempt,
            stored.failures,
            stored.outcome().map(|o| o.name())
        ),
        (2, 1, Some("succeeded"))
    );

    let events = store.events(job.id).await.unwrap();
    let kinds: Vec<String> = events.iter().map(|e| e.event.kind()).collect();
    assert_eq!(
        kinds,
        [
            "submitted",
            "started",
            "stop_requested",
            "signal_sent",
            "exited",
            "requeued",
            "started",
            "exited"
        ]
    );
    assert!(
        events.windows(2).all(|w| w[0].seq < w[1].seq),
        "seq must increase: {events:?}"
    );
    let attempts: Vec<u32> = events.iter().map(|e| e.attempt).collect();
    assert_eq!(attempts, [1, 1, 1, 1, 1, 2, 2, 2]);
    assert_eq!(
        detail_of(&events[2].event),
        json!({ "n": 20, "why": "stop_requested" })
    );
    assert_eq!(events[2].at, at(20));
    store.close().await.unwrap();
}

both!(recorded_transitions_read_back_equal);

/// Inserts `n` jobs, held by this node (as a node holds the jobs it runs; on PostgreSQL, claimed), and
/// moves them so that id % 4 decides the state: 0 queued, 1 running, 2 stopping, 3 finished. Returns
/// them in id order.
async fn populate(t: &TestStore, n: usize) -> Vec<Job> {
    populate_with(t, n, spec).await
}

/// `populate`, job `i` submitted with `spec_of(i)`.
async fn populate_with(t: &TestStore, n: usize, spec_of: impl Fn(usize) -> JobSpec) -> Vec<Job> {
    let store = &t.store;
    let mut jobs = Vec::new();
    for i in 0..n {
        let inserted = store
            .insert_job(spec_of(i), at(i as i64), None, None)
            .await
            .unwrap();
        let mut job = t.hold(inserted).await;
        let step = job.id.0 % 4;
        if step >= 1 {
            job.apply(Event::Started { run: run_info(1) }).unwrap();
        }
        if step == 2 {
            job.apply(Event::StopRequested {
                reason: StopReason::Cancelled,
                at: at(2),
            })
            .unwrap();
        }
        if step == 3 {
            job.apply(exited(0, 3)).unwrap();
        }
        store.record(&job, vec![]).await.unwrap();
        jobs.push(job);
    }
    jobs
}

fn ids(jobs: &[Job]) -> Vec<i64> {
    jobs.iter().map(|j| j.id.0).collect()
}

async fn list_filters_and_pages_in_both_orders(db: Db) {
    let t = TestStore::open(db).await;
    let store = t.store.clone();
    let jobs = populate(&t, 20).await;
    let all: Vec<i64> = ids(&jobs);

    let newest = store.list(ListFilter::default()).await.unwrap();
    assert_eq!(ids(&newest), all.iter().rev().copied().collect::<Vec<_>>());
    assert_eq!(newest.last(), jobs.first(), "listed jobs are complete");

    let running = store
        .list(ListFilter {
            states: vec![StateName::Running],
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(!running.is_empty());
    assert!(running.iter().all(|j| j.state.name() == StateName::Running));
    let two = ListFilter {
        states: vec![StateName::Finished, StateName::Queued, StateName::Finished],
        newest_first: false,
        ..Default::default()
    };
    let expected: Vec<i64> = all
        .iter()
        .copied()
        .filter(|id| id % 4 == 0 || id % 4 == 3)
        .collect();
    assert_eq!(ids(&store.list(two).await.unwrap()), expected);

    for newest_first in [true, false] {
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let page = store
                .list(ListFilter {
                    states: vec![],
                    labels: vec![],
                    after,
                    limit: 3,
                    newest_first,
                })
                .await
                .unwrap();
            if page.is_empty() {
                break;
            }
            assert!(page.len() <= 3);
            after = page.last().map(|j| j.id);
            seen.extend(ids(&page));
        }
        let mut want = all.clone();
        if newest_first {
            want.reverse();
        }
        assert_eq!(seen, want, "paging newest_first={newest_first}");
    }
    let page = ListFilter {
        states: vec![StateName::Queued],
        labels: vec![],
        after: Some(JobId(9)),
        limit: 2,
        newest_first: true,
    };
    assert_eq!(ids(&store.list(page).await.unwrap()), [8, 4]);
    let page = ListFilter {
        states: vec![StateName::Queued],
        labels: vec![],
        after: Some(JobId(9)),
        limit: 2,
        newest_first: false,
    };
    assert_eq!(ids(&store.list(page).await.unwrap()), [12, 16]);
    assert!(store
        .list(ListFilter {
            limit: 0,
            ..Default::default()
        })
        .await
        .unwrap()
        .is_empty());

    let counts = store.count_by_state().await.unwrap();
    assert_eq!(
        counts,
        [
            (StateName::Queued, 5),
            (StateName::Held, 0),
            (StateName::Running, 5),
            (StateName::Paused, 0),
            (StateName::Stopping, 5),
            (StateName::Finished, 5)
        ]
    );
    store.close().await.unwrap();
}

both!(list_filters_and_pages_in_both_orders);

/// The label key with characters a JSON path would need quoted (the model allows `.` and `/`; the store
/// is held to any key).
const ODD_KEY: &str = "team.io/\"x\"";

/// Job `i` (id `i + 1`): `kind` alternates as in `spec`, `project=trailer` on every third, the odd key on
/// every fifth, and a key `a.b` beside a key `a` on the seventh, which a path built from the key would
/// confuse.
fn labelled(i: usize) -> JobSpec {
    let mut spec = spec(i);
    let project = if i % 3 == 0 { "trailer" } else { "feature" };
    spec.labels.insert("project".into(), project.into());
    if i % 5 == 0 {
        spec.labels.insert(ODD_KEY.into(), "o'brien \"q\"".into());
    }
    if i == 7 {
        spec.labels.insert("a.b".into(), "1".into());
        spec.labels.insert("a".into(), "2".into());
    }
    spec
}

/// Every page of `filter` (pages of 2), in order.
async fn every_page(store: &Store, filter: ListFilter) -> Vec<i64> {
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .list(ListFilter {
                after,
                limit: 2,
                ..filter.clone()
            })
            .await
            .unwrap();
        assert!(page.len() <= 2);
        let Some(last) = page.last() else { break };
        after = Some(last.id);
        seen.extend(ids(&page));
    }
    seen
}

async fn list_filters_by_labels_all_of_them_with_states_and_pages(db: Db) {
    let t = TestStore::open(db).await;
    let store = t.store.clone();
    let jobs = populate_with(&t, 24, labelled).await;
    let label = |k: &str, v: &str| (k.to_owned(), v.to_owned());
    let want = |keep: &dyn Fn(&Job) -> bool| -> Vec<i64> {
        jobs.iter()
            .filter(|j| keep(j))
            .map(|j| j.id.0)
            .rev()
            .collect()
    };
    let has = |j: &Job, k: &str, v: &str| j.spec.labels.get(k).map(String::as_str) == Some(v);
    let listed = |labels: Vec<(String, String)>, states: Vec<StateName>| {
        let store = store.clone();
        async move {
            ids(&store
                .list(ListFilter {
                    labels,
                    states,
                    ..Default::default()
                })
                .await
                .unwrap())
        }
    };

    let trailer = want(&|j| has(j, "project", "trailer"));
    assert_eq!(trailer.len(), 8);
    assert_eq!(
        listed(vec![label("project", "trailer")], vec![]).await,
        trailer
    );
    // All labels must match, in any order given.
    let both = want(&|j| has(j, "project", "trailer") && has(j, "kind", "encode"));
    assert!(!both.is_empty() && both.len() < trailer.len());
    for labels in [
        vec![label("project", "trailer"), label("kind", "encode")],
        vec![label("kind", "encode"), label("project", "trailer")],
    ] {
        assert_eq!(listed(labels, vec![]).await, both);
    }
    // With states: both filters hold.
    let queued_trailer =
        want(&|j| has(j, "project", "trailer") && j.state.name() == StateName::Queued);
    assert!(!queued_trailer.is_empty());
    assert_eq!(
        listed(vec![label("project", "trailer")], vec![StateName::Queued]).await,
        queued_trailer
    );
    // Keyset pages over a label and state filter give exactly the filtered list, in both orders.
    let unfinished = vec![StateName::Queued, StateName::Running, StateName::Stopping];
    let expected = want(&|j| has(j, "project", "trailer") && j.state.name() != StateName::Finished);
    assert!(expected.len() > 2, "more than one page");
    for newest_first in [true, false] {
        let seen = every_page(
            &store,
            ListFilter {
                labels: vec![label("project", "trailer")],
                states: unfinished.clone(),
                newest_first,
                ..Default::default()
            },
        )
        .await;
        let mut want = expected.clone();
        if !newest_first {
            want.reverse();
        }
        assert_eq!(seen, want, "paging newest_first={newest_first}");
    }
    // Keys and values with dots, slashes and quotes match as they are, and only themselves.
    let odd = want(&|j| has(j, ODD_KEY, "o'brien \"q\""));
    assert_eq!(odd.len(), 5);
    assert_eq!(
        listed(vec![label(ODD_KEY, "o'brien \"q\"")], vec![]).await,
        odd
    );
    assert_eq!(listed(vec![label("a.b", "1")], vec![]).await, [8]);
    assert_eq!(listed(vec![label("a", "2")], vec![]).await, [8]);
    // No match: an empty page, not an error.
    for labels in [
        vec![label("project", "nope")],
        vec![label("nope", "trailer")],
        vec![label("a.b", "2")],
        vec![label("a", "1")],
        vec![label("team.io/x", "o'brien \"q\"")],
        // A value elsewhere in the spec (its environment) is not a label.
        vec![label("LANG", "C.UTF-8")],
        // One key cannot hold two values.
        vec![label("project", "trailer"), label("project", "feature")],
    ] {
        assert!(
            listed(labels.clone(), vec![]).await.is_empty(),
            "{labels:?}"
        );
    }
    assert!(
        listed(vec![label("project", "trailer")], vec![StateName::Held])
            .await
            .is_empty()
    );
    store.close().await.unwrap();
}

both!(list_filters_by_labels_all_of_them_with_states_and_pages);

async fn unfinished_is_queued_running_and_stopping_oldest_first(db: Db) {
    let t = TestStore::open(db).await;
    let store = t.store.clone();
    let jobs = populate(&t, 12).await;
    let unfinished = store.unfinished().await.unwrap();
    let expected: Vec<Job> = jobs
        .into_iter()
        .filter(|j| j.state.name() != StateName::Finished)
        .collect();
    assert_eq!(unfinished, expected);
    store.close().await.unwrap();
}

both!(unfinished_is_queued_running_and_stopping_oldest_first);

async fn list_limit_is_capped_at_1000(db: Db) {
    let t = TestStore::open(db).await;
    let store = t.store.clone();
    let handles: Vec<_> = (0..1005)
        .map(|n| {
            let store = store.clone();
            tokio::spawn(async move { store.insert_job(spec(n), at(0), None, None).await })
        })
        .collect();
    for handle in handles {
        handle.await.unwrap().unwrap();
    }
    let page = store
        .list(ListFilter {
            limit: u32::MAX,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(page.len(), 1000);
    assert_eq!(page[0].id, JobId(1005));
    store.close().await.unwrap();
}

both!(list_limit_is_capped_at_1000);

async fn dropping_every_handle_still_flushes_queued_writes(db: Db) {
    let (store, database) = TestStore::open(db).await.into_parts();
    let mut job = store.insert_job(spec(0), at(0), None, None).await.unwrap();
    job.apply(Event::Started { run: run_info(1) }).unwrap();
    let pending = store
        .record_queued(&job, vec![event("started", 1)])
        .await
        .unwrap();
    drop(store);
    pending.await.unwrap();
    let store = database.open_store().await;
    assert_eq!(store.get(job.id).await.unwrap(), Some(job));
    store.close().await.unwrap();
}

both!(dropping_every_handle_still_flushes_queued_writes);

async fn concurrent_inserts_are_group_committed(db: Db) {
    let t = TestStore::open(db).await;
    let store = t.store.clone();
    let before = store.stats();
    let started = Instant::now();
    let tasks: Vec<_> = (0..50)
        .map(|t| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut ids = Vec::new();
                for i in 0..40 {
                    ids.push(
                        store
                            .insert_job(spec(t * 40 + i), at(i as i64), None, None)
                            .await
                            .unwrap()
                            .id,
                    );
                }
                ids
            })
        })
        .collect();
    let mut ids = HashSet::new();
    for task in tasks {
        for id in task.await.unwrap() {
            assert!(ids.insert(id), "duplicate id {id}");
        }
    }
    let elapsed = started.elapsed();
    let stats = store.stats();
    let (commits, writes) = (stats.commits - before.commits, stats.writes - before.writes);
    println!("2000 concurrent inserts: {elapsed:?}, {commits} commits");
    assert_eq!(ids.len(), 2000);
    assert_eq!(writes, 2000);
    assert!(commits < writes, "{commits} commits for {writes} writes");
    let counts = store.count_by_state().await.unwrap();
    assert_eq!(counts[0], (StateName::Queued, 2000));
    store.close().await.unwrap();
}

both!(concurrent_inserts_are_group_committed);

/// The error of a write whose event the database refused (an empty kind breaks a CHECK): the
/// statement's own failure, as each backend words it.
fn refused_event(e: &StoreError) -> bool {
    matches!(
        e,
        StoreError::Db {
            context: "appending a job event",
            ..
        } | StoreError::Pg {
            context: "appending job events",
            ..
        }
    )
}

async fn unknown_ids_fail_alone_inside_a_batch(db: Db) {
    let t = TestStore::open_with(
        db,
        StoreOptions {
            busy_timeout: Duration::from_secs(30),
            ..Default::default()
        },
    )
    .await;
    let store = t.store.clone();
    let mut jobs = Vec::new();
    for n in 0..50 {
        jobs.push(store.insert_job(spec(n), at(0), None, None).await.unwrap());
    }

    let mut ghost = jobs[0].clone();
    ghost.id = JobId(777);
    assert!(matches!(
        store.record(&ghost, vec![event("started", 1)]).await,
        Err(StoreError::NotFound(JobId(777)))
    ));
    assert_eq!(store.get(JobId(777)).await.unwrap(), None);
    assert!(store.events(JobId(777)).await.unwrap().is_empty());

    // A failing write alone in its transaction leaves nothing behind either: its row update is rolled
    // back with it.
    let before_alone = store.get(jobs[0].id).await.unwrap();
    let mut broken = jobs[0].clone();
    broken.failures = 42;
    let bad_event = NewEvent {
        at: at(0),
        event: JobEvent::Unrecognized {
            kind: String::new(),
            detail: json!(null),
        },
        attempt: None,
    };
    let refused = store.record(&broken, vec![event("ok", 0), bad_event]).await;
    assert!(refused.as_ref().is_err_and(refused_event), "{refused:?}");
    assert_eq!(store.get(jobs[0].id).await.unwrap(), before_alone);
    assert_eq!(store.events(jobs[0].id).await.unwrap().len(), 1);

    // Hold the write lock from outside so that everything queued meanwhile lands in one batch.
    let lock = t.lock_writes().await;
    let before = store.stats();
    let mut pending = Vec::new();
    for (n, job) in jobs.iter_mut().enumerate() {
        job.apply(Event::Started {
            run: run_info(n as i64),
        })
        .unwrap();
        pending.push((
            Some(job.id),
            store
                .record_queued(job, vec![event("started", n as i64)])
                .await
                .unwrap(),
        ));
        ghost.id = JobId(1000 + n as i64);
        pending.push((
            None,
            store
                .record_queued(&ghost, vec![event("started", 0)])
                .await
                .unwrap(),
        ));
        // Fails on its second statement (an empty event kind breaks a CHECK): its row update must be
        // rolled back too, and nothing else.
        let mut broken = job.clone();
        broken.failures = 99;
        let bad_event = NewEvent {
            at: at(0),
            event: JobEvent::Unrecognized {
                kind: String::new(),
                detail: json!(null),
            },
            attempt: None,
        };
        pending.push((
            None,
            store
                .record_queued(&broken, vec![event("ok", 0), bad_event])
                .await
                .unwrap(),
        ));
    }
    lock.release().await;
    for (real, pending) in pending {
        match (real, pending.await) {
            (Some(_), Ok(())) => {}
            (None, Err(StoreError::NotFound(id))) if id.0 >= 1000 => {}
            (None, Err(e)) if refused_event(&e) => {}
            (real, other) => panic!("{real:?}: unexpected {other:?}"),
        }
    }
    let stats = store.stats();
    assert_eq!(stats.writes - before.writes, 150);
    // A batch with a failing write is applied again one write per transaction: the 50 good writes commit,
    // the 100 failing ones roll back. (On PostgreSQL a write of an unknown job fails no statement: its
    // update matches no row, and its transaction, which changed nothing, commits.)
    let most = match db {
        Db::Sqlite => 51,
        Db::Postgres => 101,
    };
    assert!(
        stats.commits - before.commits <= most,
        "{stats:?} vs {before:?}"
    );
    for job in &jobs {
        assert_eq!(store.get(job.id).await.unwrap().as_ref(), Some(job));
        assert_eq!(store.events(job.id).await.unwrap().len(), 2);
    }
    assert_eq!(
        store
            .list(ListFilter {
                limit: 1000,
                ..Default::default()
            })
            .await
            .unwrap()
            .len(),
        50
    );
    store.close().await.unwrap();
}

both!(unknown_ids_fail_alone_inside_a_batch);

async fn undecodable_rows_are_reported_as_corrupt(db: Db) {
    let t = TestStore::open(db).await;
    let store = t.store.clone();
    let job = store.insert_job(spec(0), at(0), None, None).await.unwrap();
    t.execute(&format!(
        "UPDATE jobs SET spec = '{{\"program\": 3}}' WHERE id = {}",
        job.id.0
    ))
    .await;
    match store.get(job.id).await {
        Err(StoreError::Corrupt { id, detail }) => {
            assert_eq!(id, job.id);
            assert!(detail.starts_with("spec:"), "{detail}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert!(matches!(
        store.list(ListFilter::default()).await,
        Err(StoreError::Corrupt { .. })
    ));
    store.close().await.unwrap();
}

both!(undecodable_rows_are_reported_as_corrupt);

async fn memory_peaks_come_from_successful_jobs_of_the_kind_newest_first(db: Db) {
    let t = TestStore::open(db).await;
    let store = t.store.clone();
    let mut expected = Vec::new();
    for (i, (kind, code)) in [("encode", 0), ("encode", 1), ("tts", 0), ("encode", 0)]
        .into_iter()
        .enumerate()
    {
        let mut s = spec(i);
        s.labels.insert("kind".into(), kind.into());
        let request = aura_model::MemoryRequest {
            bytes: ByteSize(1 << 30),
            source: aura_model::RequestSource::Default,
        };
        let mut job = store
            .insert_job(s, at(0), Some(request.clone()), None)
            .await
            .unwrap();
        assert_eq!(job.memory_request.as_ref(), Some(&request));
        job.apply(Event::Started { run: run_info(1) }).unwrap();
        job.apply(exited(code, 2)).unwrap();
        store.record(&job, vec![]).await.unwrap();
        assert_eq!(
            store.get(job.id).await.unwrap().unwrap(),
            job,
            "the memory request round-trips"
        );
        if kind == "encode" && code == 0 {
            expected.insert(0, 310u64 << 20);
        }
    }
    assert_eq!(store.memory_peaks("encode", 10).await.unwrap(), expected);
    assert_eq!(store.memory_peaks("encode", 1).await.unwrap().len(), 1);
    assert!(store.memory_peaks("render", 10).await.unwrap().is_empty());
}

both!(memory_peaks_come_from_successful_jobs_of_the_kind_newest_first);

/// Queues `job`'s write with `record_then`; the receiver gets what its callback was handed.
async fn record_then(
    job: &Job,
    events: &[NewEvent],
    commit: Commit,
    store: &Store,
) -> tokio::sync::oneshot::Receiver<Result<(), StoreError>> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    store
        .record_then(job, events, commit, move |r| {
            let _ = tx.send(r);
        })
        .await
        .unwrap();
    rx
}

async fn engine_events_append_and_page_and_pressure_stops_persist(db: Db) {
    let t = TestStore::open(db).await;
    let store = t.store.clone();
    for n in 0..5 {
        let (tx, committed) = tokio::sync::oneshot::channel();
        store
            .record_engine_event(at(n), &engine_event("admission_paused", n), move |r| {
                let _ = tx.send(r);
            })
            .await
            .unwrap();
        committed.await.unwrap().unwrap();
    }
    let all = store.engine_events(0, 100).await.unwrap();
    assert_eq!(all.len(), 5);
    assert!(all.windows(2).all(|w| w[0].seq < w[1].seq));
    assert_eq!(
        detail_of(&all[2].event),
        json!({ "n": 2, "why": "admission_paused" })
    );
    let rest = store.engine_events(all[1].seq, 2).await.unwrap();
    assert_eq!(rest, all[2..4].to_vec(), "pages after a sequence number");

    let mut job = store.insert_job(spec(1), at(0), None, None).await.unwrap();
    job.pressure_stops = 2;
    store.record(&job, vec![]).await.unwrap();
    assert_eq!(store.get(job.id).await.unwrap().unwrap().pressure_stops, 2);

    // `record_then` runs its callback on the writer thread once committed: the write is visible then,
    // and a failed write hands its own error to the callback.
    job.pressure_stops = 3;
    let committed = record_then(&job, &[event("started", 9)], Commit::Now, &store).await;
    committed.await.unwrap().unwrap();
    assert_eq!(store.get(job.id).await.unwrap().unwrap().pressure_stops, 3);
    let ghost = Job {
        id: JobId(987_654),
        ..job.clone()
    };
    let failed = record_then(&ghost, &[], Commit::Soon, &store).await;
    assert!(matches!(
        failed.await.unwrap(),
        Err(StoreError::NotFound(JobId(987_654)))
    ));
    store.close().await.unwrap();
}

both!(engine_events_append_and_page_and_pressure_stops_persist);

/// Writes nobody waits for are held for the group window and share one commit; a write someone waits for
/// ends the wait at once, and so does closing the store.
async fn soon_writes_share_a_commit_and_a_now_write_ends_the_window(db: Db) {
    let t = TestStore::open_with(
        db,
        StoreOptions {
            group_window: Duration::from_secs(30),
            ..Default::default()
        },
    )
    .await;
    let store = t.store.clone();
    let mut job = store.insert_job(spec(1), at(0), None, None).await.unwrap();
    let before = store.stats();
    let mut committed = Vec::new();
    for n in 0..20 {
        // Each write sets the row differently: the batch must leave the last one's.
        job.pressure_stops = n as u32;
        committed.push(record_then(&job, &[event("progress", n)], Commit::Soon, &store).await);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(store.stats().commits, before.commits, "held for the window");
    assert!(committed[0].try_recv().is_err(), "not committed yet");

    let t0 = std::time::Instant::now();
    job.pressure_stops = 77;
    store.record(&job, vec![event("now", 99)]).await.unwrap();
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "a Now write waited for the window"
    );
    for rx in committed {
        rx.await.unwrap().unwrap();
    }
    let stats = store.stats();
    assert_eq!(stats.writes - before.writes, 21);
    assert_eq!(
        stats.commits - before.commits,
        1,
        "one commit for the whole batch"
    );
    let events = store.events(job.id).await.unwrap();
    assert_eq!(events.len(), 22);
    let progress: Vec<i64> = events
        .iter()
        .filter(|e| e.event.kind() == "progress")
        .map(|e| e.at.unix_millis())
        .collect();
    let expected: Vec<i64> = (0..20).map(|n| at(n).unix_millis()).collect();
    assert_eq!(progress, expected, "every event, in order");
    assert_eq!(
        store.get(job.id).await.unwrap().unwrap(),
        job,
        "the row is the batch's last write"
    );

    // Closing commits what is held at once.
    let rx = record_then(&job, &[event("last", 100)], Commit::Soon, &store).await;
    let t0 = std::time::Instant::now();
    store.close().await.unwrap();
    rx.await.unwrap().unwrap();
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "close waited for the window"
    );
}

both!(soon_writes_share_a_commit_and_a_now_write_ends_the_window);

async fn committed_events_are_published_in_order_and_replayed_from_the_log(db: Db) {
    let t = TestStore::open(db).await;
    let store = t.store.clone();
    let early = store.insert_job(spec(0), at(0), None, None).await.unwrap();
    let mut live = store.subscribe();
    let mut job = store.insert_job(spec(1), at(1), None, None).await.unwrap();
    job.apply(Event::Started { run: run_info(10) }).unwrap();
    store
        .record(&job, vec![event("began", 10), event("noted", 11)])
        .await
        .unwrap();
    let (done, committed) = tokio::sync::oneshot::channel();
    store
        .record_engine_event(at(12), &engine_event("paused_for_a_test", 12), move |r| {
            let _ = done.send(r);
        })
        .await
        .unwrap();
    committed.await.unwrap().unwrap();
    // Live: exactly what was committed after the subscription, in commit order, decodable as records.
    let mut published = Vec::new();
    for _ in 0..4 {
        published.push(live.recv().await.expect("a committed event"));
    }
    assert!(live.try_recv().is_err(), "nothing else");
    let jobs: Vec<&aura_model::CommittedEvent> = published
        .iter()
        .map(|e| &**e)
        .filter(|e| e.log == aura_model::EventLog::Job(job.id))
        .collect();
    let stored = store.events(job.id).await.unwrap();
    assert_eq!(jobs.len(), stored.len());
    for (published, stored) in jobs.iter().zip(&stored) {
        assert_eq!(published.seq, stored.seq);
        let (kind, detail) = stored.event.to_parts().unwrap();
        assert_eq!(published.kind, kind);
        let decoded: serde_json::Value = serde_json::from_str(published.json()).unwrap();
        assert_eq!(
            decoded,
            json!({"seq": stored.seq, "job_id": job.id.0, "attempt": stored.attempt,
                   "at": stored.at.to_string(), "kind": kind, "detail": detail})
        );
    }
    // A kind this version knows decodes straight into the typed record.
    let known = aura_model::CommittedEvent::new(
        aura_model::EventLog::Job(job.id),
        9,
        at(13).unix_millis(),
        Some(1),
        "stalled".into(),
        r#"{"reason":"no progress"}"#.into(),
    );
    let record: aura_model::JobEventRecord = serde_json::from_str(known.json()).unwrap();
    assert_eq!(
        record.event,
        JobEvent::Stalled {
            reason: "no progress".into()
        }
    );
    assert_eq!(
        (record.seq, record.job_id, record.attempt, record.at),
        (9, job.id, 1, at(13))
    );
    let engine = published
        .iter()
        .find(|e| e.log == aura_model::EventLog::Engine)
        .expect("the engine event");
    let decoded: serde_json::Value = serde_json::from_str(engine.json()).unwrap();
    assert_eq!(decoded["kind"], "paused_for_a_test");
    assert_eq!(
        decoded["detail"],
        detail_of(&engine_event("paused_for_a_test", 12))
    );
    assert!(decoded.get("job_id").is_none());
    // Replay: the same encoding from the log, after any point, of one job, all jobs or the engine.
    let all = store.committed_after(None, 0, 100).await.unwrap();
    assert_eq!(all.len(), 1 + stored.len());
    assert_eq!(all[0].log, aura_model::EventLog::Job(early.id));
    assert_eq!(
        all[1..].iter().map(|e| e.json()).collect::<Vec<_>>(),
        jobs.iter().map(|e| e.json()).collect::<Vec<_>>()
    );
    let after = store
        .committed_after(Some(aura_model::EventLog::Job(job.id)), stored[0].seq, 100)
        .await
        .unwrap();
    assert_eq!(
        after.iter().map(|e| e.seq).collect::<Vec<_>>(),
        stored[1..].iter().map(|e| e.seq).collect::<Vec<_>>()
    );
    let limited = store.committed_after(None, 0, 2).await.unwrap();
    assert_eq!(limited.len(), 2);
    let engine_log = store
        .committed_after(Some(aura_model::EventLog::Engine), 0, 100)
        .await
        .unwrap();
    assert_eq!(engine_log.len(), 1);
    assert_eq!(engine_log[0].json(), engine.json());
    assert_eq!(
        store.latest_seqs().await.unwrap(),
        (stored.last().unwrap().seq, engine.seq)
    );
}

both!(committed_events_are_published_in_order_and_replayed_from_the_log);

async fn a_batch_is_stored_whole_with_its_dependencies_or_not_at_all(db: Db) {
    let t = TestStore::open(db).await;
    let store = t.store.clone();
    let before = store.insert_job(spec(0), at(0), None, None).await.unwrap();
    let mut first = spec(1);
    first.after = vec![before.id];
    let entries = vec![
        (first, vec![], None),
        (spec(2), vec![0], None),
        (spec(3), vec![0, 1], None),
    ];
    let jobs = store
        .insert_batch(entries, at(5), Some("ci".into()))
        .await
        .unwrap();
    let ids: Vec<JobId> = jobs.iter().map(|j| j.id).collect();
    assert_eq!(ids, [JobId(2), JobId(3), JobId(4)]);
    assert_eq!(jobs[1].spec.after, [ids[0]]);
    assert_eq!(jobs[2].spec.after, [ids[0], ids[1]]);
    for job in &jobs {
        assert_eq!(store.get(job.id).await.unwrap().as_ref(), Some(job));
        assert_eq!(job.submitted_by.as_deref(), Some("ci"));
    }
    assert_eq!(
        store.get(jobs[0].id).await.unwrap().unwrap().spec.after,
        [before.id]
    );
    // An entry that refers forward is refused whole: nothing of the batch is stored.
    let bad = vec![(spec(4), vec![], None), (spec(5), vec![5], None)];
    assert!(store.insert_batch(bad, at(6), None).await.is_err());
    let all = store
        .list(ListFilter {
            states: vec![],
            labels: vec![],
            after: None,
            limit: 100,
            newest_first: false,
        })
        .await
        .unwrap();
    assert_eq!(all.len(), 4, "the refused batch left nothing");
}

both!(a_batch_is_stored_whole_with_its_dependencies_or_not_at_all);

// SQLite only: the database file's schema migrations, its reopening and what opening it refuses.
#[tokio::test(flavor = "multi_thread")]
async fn data_survives_close_and_reopen_and_migrations_run_once() {
    let dir = TempDir::new().unwrap();
    let path = db(&dir);
    let store = open(&path).await;
    let mut job = store.insert_job(spec(3), at(0), None, None).await.unwrap();
    job.apply(Event::Started { run: run_info(5) }).unwrap();
    store.record(&job, vec![event("started", 5)]).await.unwrap();
    let events = store.events(job.id).await.unwrap();
    store.close().await.unwrap();
    store.close().await.unwrap();
    assert!(matches!(store.get(job.id).await, Err(StoreError::Closed)));
    assert!(matches!(
        store.insert_job(spec(0), at(0), None, None).await,
        Err(StoreError::Closed)
    ));
    assert!(matches!(
        store.record(&job, vec![]).await,
        Err(StoreError::Closed)
    ));

    for _ in 0..2 {
        let store = open(&path).await;
        assert_eq!(store.get(job.id).await.unwrap(), Some(job.clone()));
        assert_eq!(store.events(job.id).await.unwrap(), events);
        assert_eq!(store.unfinished().await.unwrap(), [job.clone()]);
        store.close().await.unwrap();
    }
    let conn = rusqlite::Connection::open(&path).unwrap();
    let version: u32 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, 6);
    let next = open(&path)
        .await
        .insert_job(spec(0), at(0), None, None)
        .await
        .unwrap();
    assert!(next.id > job.id, "ids keep increasing after a reopen");
}

#[tokio::test(flavor = "multi_thread")]
async fn opening_garbage_or_a_directory_is_a_clear_error() {
    let dir = TempDir::new().unwrap();
    let garbage = dir.path().join("garbage.db");
    std::fs::write(
        &garbage,
        "this is not an SQLite database, just some text that is long enough. ".repeat(100),
    )
    .unwrap();
    match Store::open(&garbage, StoreOptions::default()).await {
        Err(e @ StoreError::Open { .. }) => {
            let text = e.to_string();
            assert!(
                text.contains("garbage.db") && text.contains("not a database"),
                "{text}"
            );
        }
        other => panic!("expected an Open error, got {other:?}"),
    }
    match Store::open(dir.path(), StoreOptions::default()).await {
        Err(e @ StoreError::Open { .. }) => assert!(
            e.to_string().contains(&dir.path().display().to_string()),
            "{e}"
        ),
        other => panic!("expected an Open error, got {other:?}"),
    }
    let missing_parent = dir.path().join("no/such/dir/aura.db");
    assert!(matches!(
        Store::open(&missing_parent, StoreOptions::default()).await,
        Err(StoreError::Open { .. })
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_newer_schema_is_refused() {
    let dir = TempDir::new().unwrap();
    let path = db(&dir);
    open(&path).await.close().await.unwrap();
    rusqlite::Connection::open(&path)
        .unwrap()
        .pragma_update(None, "user_version", 99)
        .unwrap();
    assert!(matches!(
        Store::open(&path, StoreOptions::default()).await,
        Err(StoreError::TooNew {
            found: 99,
            supported: 6
        })
    ));
}

// SQLite only: a full volume under the database file and its reserve (PostgreSQL's disk is the server's).
/// A full volume: the reserve lets the state changes under way commit; once it is spent, inserts are
/// refused as a storage fault (nothing stored) while state changes are kept, in order, and committed when
/// space returns — the record ends as what happened, never a stale state.
#[tokio::test]
async fn a_full_volume_refuses_inserts_and_keeps_state_changes_until_space_returns() {
    let Some(volume) = SmallVolume::mount("2m") else {
        return;
    };
    let options = StoreOptions {
        reserve_bytes: 256 * 1024,
        ..StoreOptions::default()
    };
    let store = Store::open(&volume.db(), options).await.expect("open");
    assert!(volume.file("aura.db-reserve").exists());
    let mut job = store
        .insert_job(spec(1), at(0), None, None)
        .await
        .expect("insert");
    job.apply(Event::Started { run: run_info(1) })
        .expect("start");
    store.record(&job, vec![]).await.expect("record");

    volume.fill("filler");
    // The job ends while the volume is full: the reserve pays for its final state.
    job.apply(exited(1, 2)).expect("exit");
    store
        .record(&job, vec![event("exited", 0)])
        .await
        .expect("committed from the reserve");
    assert!(!volume.file("aura.db-reserve").exists());
    // Fill what the reserve gave back, minus what SQLite already took.
    volume.fill("filler2");
    let stored = store.get(job.id).await.expect("get").expect("job");
    assert_eq!(stored.state.name(), StateName::Finished);

    // Now nothing commits: an insert is refused as a storage fault...
    let refused = store.insert_job(spec(2), at(3), None, None).await;
    assert!(matches!(&refused, Err(e) if e.is_storage()), "{refused:?}");
    // ... and a state change is kept, not lost.
    let mut second = job.clone();
    second.apply(Event::Requeue { at: at(4) }).expect("requeue");
    let pending = store
        .record_queued(&second, vec![event("requeued", 0)])
        .await
        .expect("queued");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(store.stats().degraded, "{:?}", store.stats());
    assert_eq!(store.stats().kept_writes, 1);
    // Readers see what happened, not the last state the volume took.
    let read = store.get(job.id).await.expect("get").expect("job");
    assert_eq!((read.state.name(), read.attempt), (StateName::Queued, 2));
    let queued = store
        .list(ListFilter {
            states: vec![StateName::Finished],
            ..ListFilter::default()
        })
        .await
        .expect("list");
    assert!(queued.is_empty(), "no longer finished: {queued:?}");

    volume.free("filler");
    tokio::time::timeout(Duration::from_secs(5), pending)
        .await
        .expect("committed within the retry interval")
        .expect("committed once space returned");
    assert!(!store.stats().degraded);
    let stored = store.get(job.id).await.expect("get").expect("job");
    assert_eq!(stored.state.name(), StateName::Queued);
    assert_eq!(stored.attempt, 2);
    let ids: Vec<JobId> = store
        .list(ListFilter::default())
        .await
        .expect("list")
        .iter()
        .map(|j| j.id)
        .collect();
    assert_eq!(ids, vec![job.id], "the refused insert stored nothing");
    store
        .insert_job(spec(3), at(5), None, None)
        .await
        .expect("insert once space returned");
    store.close().await.expect("close");
}

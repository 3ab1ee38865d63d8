//! The store's contract as its callers rely on it: what each query finds, what each write refuses, how
//! soon a write someone waits for commits, and what a volume that refuses writes does to the record.
//! Every test that is not about SQLite's own files runs twice (`both!`): against a real SQLite file in a
//! temporary directory, and against a fresh PostgreSQL database as one node (`name::sqlite`,
//! `name::postgres`). The SQLite-only ones come last, grouped by why.

#[macro_use]
mod common;

use aura_model::{
    Accounting, Backend, Event, ExitStatus, Job, JobEvent, JobId, JobSpec, LoggedEvent, NewEvent,
    Outcome, RetryPolicy, Run, StateName, StopReason, Timestamp, TreeHandle,
};
use aura_store::{Commit, ListFilter, Pending, Store, StoreError, StoreOptions};
use common::{Db, SmallVolume, TestStore};
use serde_json::json;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tempfile::TempDir;

/// Generous bound for something that must happen "at once": far below the group windows the tests set
/// (an hour), far above any scheduling hiccup on a loaded machine.
const PROMPTLY: Duration = Duration::from_secs(20);

/// A window no test waits out: a write held for it shows up as a hang caught by `PROMPTLY`.
const FOREVER: Duration = Duration::from_secs(3600);

fn at(ms: i64) -> Timestamp {
    Timestamp::from_unix_millis(1_700_000_000_000 + ms)
}

fn spec(program: &str, priority: i32) -> JobSpec {
    let mut spec = JobSpec::new(program, ["-i", "in.mkv", "out.mp4"]);
    spec.priority = priority;
    spec.retry = RetryPolicy {
        max_retries: 3,
        requeue_interrupted: true,
        max_pressure_requeues: 1,
    };
    spec
}

fn run_info(ms: i64) -> Run {
    Run {
        started_at: at(ms),
        tree: TreeHandle {
            backend: Backend::ProcessGroup,
            pid: 4242,
            start_ticks: 99,
            cgroups: vec![],
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

fn note(kind: &str, ms: i64) -> NewEvent {
    NewEvent {
        at: at(ms),
        event: JobEvent::Unrecognized {
            kind: kind.into(),
            detail: json!({ "n": ms }),
        },
        attempt: None,
    }
}

fn db(dir: &TempDir) -> PathBuf {
    dir.path().join("aura.db")
}

async fn open_with(path: &Path, opts: StoreOptions) -> Store {
    Store::open(path, opts).await.expect("open the store")
}

async fn open(path: &Path) -> Store {
    open_with(path, StoreOptions::default()).await
}

/// Fails the test instead of hanging when `what` does not finish promptly.
async fn promptly<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(PROMPTLY, future)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish promptly"))
}

/// Waits until the writer has taken `n` more writes than `before` into batches (it counts a batch when
/// it starts applying it), so a test knows the writer is busy with them.
async fn writer_took(store: &Store, before: u64, n: u64) {
    promptly("the writer taking its batch", async {
        while store.stats().writes < before + n {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
}

/// Queues a write with `record_then`; the receiver gets what the callback was handed.
async fn record_then(
    store: &Store,
    job: &Job,
    events: &[NewEvent],
    commit: Commit,
) -> tokio::sync::oneshot::Receiver<Result<(), StoreError>> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    store
        .record_then(job, events, commit, move |result| {
            let _ = tx.send(result);
        })
        .await
        .expect("queue the write");
    rx
}

/// A running job moved to the finished state by `event`.
async fn finish_with(store: &Store, event: Event) -> Job {
    let mut job = store
        .insert_job(spec("ffmpeg", 0), at(0), None, None)
        .await
        .expect("insert");
    job.apply(Event::Started { run: run_info(1) })
        .expect("start");
    job.apply(event).expect("finish");
    store.record(&job, vec![]).await.expect("record");
    job
}

async fn quarantined_lists_only_quarantined_jobs_newest_first(db: Db) {
    let t = TestStore::open(db).await;
    let store = t.store.clone();
    let mut quarantined = Vec::new();
    for n in 0..3 {
        let crash_loop = Event::Quarantined {
            reason: "the daemon died under it too often".into(),
            at: at(n),
        };
        quarantined.push(finish_with(&store, crash_loop).await.id);
        // Jobs that ended any other way are not quarantined, interrupted ones included.
        finish_with(&store, exited(0, n)).await;
        finish_with(&store, exited(1, n)).await;
        let interrupted = Event::Interrupted {
            reason: "daemon restart".into(),
            at: at(n),
        };
        finish_with(&store, interrupted).await;
    }
    let stored = store
        .get(quarantined[0])
        .await
        .expect("get")
        .expect("stored");
    assert!(matches!(
        stored.outcome(),
        Some(Outcome::Quarantined { .. })
    ));
    quarantined.reverse();
    assert_eq!(store.quarantined(10).await.expect("read"), quarantined);
    assert_eq!(
        store.quarantined(2).await.expect("read"),
        quarantined[..2],
        "the newest two"
    );
    assert!(store.quarantined(0).await.expect("read").is_empty());
    store.close().await.expect("close");
}

both!(quarantined_lists_only_quarantined_jobs_newest_first);

async fn counts_include_every_state_and_follow_transitions(db: Db) {
    let t = TestStore::open(db).await;
    let store = t.store.clone();
    let zeros: Vec<(StateName, u64)> = StateName::ALL.into_iter().map(|s| (s, 0)).collect();
    assert_eq!(store.count_by_state().await.expect("count"), zeros);

    let mut job = store
        .insert_job(spec("ffmpeg", 0), at(0), None, None)
        .await
        .expect("insert");
    // Each step: the event the job goes through, and the state it is counted in afterwards.
    let steps = [
        (None, StateName::Queued),
        (
            Some(Event::Started { run: run_info(1) }),
            StateName::Running,
        ),
        (
            Some(Event::StopRequested {
                reason: StopReason::TimedOut,
                at: at(2),
            }),
            StateName::Stopping,
        ),
        (Some(exited(143, 3)), StateName::Finished),
        (Some(Event::Requeue { at: at(4) }), StateName::Queued),
        (Some(Event::Held { at: at(5) }), StateName::Held),
        (Some(Event::Released { at: at(6) }), StateName::Queued),
        (
            Some(Event::Started { run: run_info(7) }),
            StateName::Running,
        ),
        (Some(Event::Paused { at: at(8) }), StateName::Paused),
        (Some(Event::Resumed { at: at(9) }), StateName::Running),
    ];
    for (event, counted_as) in steps {
        if let Some(event) = event {
            job.apply(event).expect("legal transition");
            store.record(&job, vec![]).await.expect("record");
        }
        let counts = store.count_by_state().await.expect("count");
        let expected: Vec<(StateName, u64)> = StateName::ALL
            .into_iter()
            .map(|s| (s, u64::from(s == counted_as)))
            .collect();
        assert_eq!(counts, expected, "after reaching {counted_as:?}");
    }
    store.close().await.expect("close");
}

both!(counts_include_every_state_and_follow_transitions);

async fn the_submitted_event_names_program_and_priority_and_events_keep_their_attempt(db: Db) {
    let t = TestStore::open(db).await;
    let store = t.store.clone();
    let mut job = store
        .insert_job(spec("sox", 7), at(0), None, None)
        .await
        .expect("insert");
    job.apply(Event::Started { run: run_info(1) })
        .expect("start");
    job.apply(exited(1, 2)).expect("exit");
    job.apply(Event::Requeue { at: at(3) }).expect("requeue");
    assert_eq!(job.attempt, 2);
    // What ended attempt 1 is written with the requeue that began attempt 2.
    let ended = NewEvent {
        attempt: Some(1),
        ..note("exited", 2)
    };
    store
        .record(&job, vec![ended, note("requeued", 3)])
        .await
        .expect("record");

    let events = store.events(job.id).await.expect("events");
    let logged: Vec<(String, u32, i64)> = events
        .iter()
        .map(|e| (e.event.kind(), e.attempt, e.at.unix_millis()))
        .collect();
    assert_eq!(
        logged,
        [
            ("submitted".to_owned(), 1, at(0).unix_millis()),
            ("exited".to_owned(), 1, at(2).unix_millis()),
            ("requeued".to_owned(), 2, at(3).unix_millis()),
        ]
    );
    assert_eq!(
        events[0].event,
        JobEvent::Submitted {
            program: "sox".into(),
            priority: 7,
            retry_of: None
        }
    );
    assert!(events.iter().all(|e| e.job_id == job.id));
    store.close().await.expect("close");
}

both!(the_submitted_event_names_program_and_priority_and_events_keep_their_attempt);

/// Errors a caller acts on: an unknown job is `NotFound` (a client error, not a storage fault) and
/// changes nothing; a closed store says so for every call.
async fn unknown_jobs_and_closed_stores_are_reported_as_such(db: Db) {
    let t = TestStore::open(db).await;
    let store = t.store.clone();
    let job = store
        .insert_job(spec("ffmpeg", 0), at(0), None, None)
        .await
        .expect("insert");
    let ghost = Job {
        id: JobId(job.id.0 + 100),
        ..job.clone()
    };
    for refused in [
        store.record(&ghost, vec![note("started", 1)]).await,
        committed(store.record_priority(&ghost, vec![note("moved", 1)]).await).await,
    ] {
        match &refused {
            Err(e @ StoreError::NotFound(id)) => {
                assert_eq!(*id, ghost.id);
                assert!(!e.is_storage(), "a missing job is not the volume's fault");
            }
            other => panic!("expected NotFound, got {other:?}"),
        }
    }
    assert_eq!(store.get(ghost.id).await.expect("get"), None);
    assert!(store.events(ghost.id).await.expect("events").is_empty());
    assert!(!store.stats().degraded);

    store.ping().await.expect("an open store answers");
    store.close().await.expect("close");
    let closed: Vec<(&str, Result<(), StoreError>)> = vec![
        ("ping", store.ping().await),
        ("get", store.get(job.id).await.map(drop)),
        ("list", store.list(ListFilter::default()).await.map(drop)),
        ("events", store.events(job.id).await.map(drop)),
        ("unfinished", store.unfinished().await.map(drop)),
        ("count_by_state", store.count_by_state().await.map(drop)),
        ("quarantined", store.quarantined(5).await.map(drop)),
        ("memory_peaks", store.memory_peaks("x", 5).await.map(drop)),
        ("engine_events", store.engine_events(0, 5).await.map(drop)),
        (
            "insert_job",
            store
                .insert_job(spec("ffmpeg", 0), at(0), None, None)
                .await
                .map(drop),
        ),
        (
            "insert_retry",
            store
                .insert_retry(spec("ffmpeg", 0), at(0), None, None, job.id)
                .await
                .map(drop),
        ),
        ("record", store.record(&job, vec![]).await),
        (
            "record_priority",
            store.record_priority(&job, vec![]).await.map(drop),
        ),
        ("setting", store.setting("drained").await.map(drop)),
        (
            "set_setting",
            store.set_setting("drained", Some("true")).await.map(drop),
        ),
        (
            "record_queued",
            store.record_queued(&job, vec![]).await.map(drop),
        ),
        (
            "record_then",
            store.record_then(&job, &[], Commit::Soon, drop).await,
        ),
    ];
    for (call, result) in closed {
        assert!(
            matches!(result, Err(StoreError::Closed)),
            "{call} after close: {result:?}"
        );
    }
}

both!(unknown_jobs_and_closed_stores_are_reported_as_such);

async fn debug_output_shows_the_counters(db: Db) {
    let t = TestStore::open(db).await;
    let store = t.store.clone();
    store
        .insert_job(spec("ffmpeg", 0), at(0), None, None)
        .await
        .expect("insert");
    let shown = format!("{store:?}");
    assert!(
        shown.contains("Store") && shown.contains("commits: 1") && shown.contains("writes: 1"),
        "{shown}"
    );
    store.close().await.expect("close");
}

both!(debug_output_shows_the_counters);

/// Only writes nobody waits for may be held for the group window: an insert, a `Now` write, a flush and
/// a close commit at once however long the window is; a flush (which writes nothing itself) is answered
/// once what was queued before it is committed.
async fn writes_someone_waits_for_never_wait_for_the_group_window(db: Db) {
    let t = TestStore::open_with(
        db,
        StoreOptions {
            group_window: FOREVER,
            ..StoreOptions::default()
        },
    )
    .await;
    let store = t.store.clone();
    let mut job = promptly(
        "an insert",
        store.insert_job(spec("ffmpeg", 0), at(0), None, None),
    )
    .await
    .expect("insert");
    job.apply(Event::Started { run: run_info(1) })
        .expect("start");
    promptly("a record", store.record(&job, vec![note("started", 1)]))
        .await
        .expect("record");
    let now = record_then(&store, &job, &[note("now", 2)], Commit::Now).await;
    promptly("a Now write", now)
        .await
        .expect("answered")
        .expect("committed");
    let soon = record_then(&store, &job, &[note("soon", 3)], Commit::Soon).await;
    promptly("a flush", committed(store.flush().await))
        .await
        .expect("flushed");
    soon.await
        .expect("answered")
        .expect("committed before the flush");
    assert_eq!(store.events(job.id).await.expect("events").len(), 4);
    let last = record_then(&store, &job, &[note("last", 4)], Commit::Soon).await;
    promptly("close", store.close()).await.expect("close");
    last.await
        .expect("answered")
        .expect("committed by the close");
    let store = t.reopen().await;
    assert_eq!(store.events(job.id).await.expect("events").len(), 5);
    store.close().await.expect("close");
}

both!(writes_someone_waits_for_never_wait_for_the_group_window);

/// A write someone waits for that was queued behind a `Soon` write while the writer was busy is found
/// when the writer comes back, and ends the window for both.
async fn a_now_write_queued_behind_a_soon_write_ends_the_window(db: Db) {
    let t = TestStore::open_with(
        db,
        StoreOptions {
            group_window: FOREVER,
            busy_timeout: PROMPTLY,
            ..StoreOptions::default()
        },
    )
    .await;
    let store = t.store.clone();
    let mut job = promptly(
        "an insert",
        store.insert_job(spec("ffmpeg", 0), at(0), None, None),
    )
    .await
    .expect("insert");
    let lock = t.lock_writes().await;
    let before = store.stats().writes;
    job.apply(Event::Started { run: run_info(1) })
        .expect("start");
    let busy = store
        .record_queued(&job, vec![note("started", 1)])
        .await
        .expect("queued");
    writer_took(&store, before, 1).await;
    let soon = record_then(&store, &job, &[note("progress", 2)], Commit::Soon).await;
    job.pressure_stops = 1;
    let now = store
        .record_queued(&job, vec![note("now", 3)])
        .await
        .expect("queued");
    lock.release().await;
    promptly("the blocked write", busy)
        .await
        .expect("committed");
    promptly("the Now write", now).await.expect("committed");
    soon.await.expect("answered").expect("committed with it");
    assert_eq!(store.get(job.id).await.expect("get"), Some(job));
    store.close().await.expect("close");
}

both!(a_now_write_queued_behind_a_soon_write_ends_the_window);

/// `max_batch` bounds the writes one transaction holds; a longer queue is committed in several.
async fn a_batch_holds_at_most_max_batch_writes(db: Db) {
    let t = TestStore::open_with(
        db,
        StoreOptions {
            max_batch: 3,
            busy_timeout: PROMPTLY,
            ..StoreOptions::default()
        },
    )
    .await;
    let store = t.store.clone();
    let mut job = store
        .insert_job(spec("ffmpeg", 0), at(0), None, None)
        .await
        .expect("insert");
    let lock = t.lock_writes().await;
    let before = store.stats();
    let first = store
        .record_queued(&job, vec![note("blocked", 0)])
        .await
        .expect("queued");
    writer_took(&store, before.writes, 1).await;
    let mut pending: Vec<Pending> = Vec::new();
    for n in 1..=8 {
        job.pressure_stops = n;
        pending.push(
            store
                .record_queued(&job, vec![note("queued", i64::from(n))])
                .await
                .expect("queued"),
        );
    }
    lock.release().await;
    first.await.expect("committed");
    for write in pending {
        write.await.expect("committed");
    }
    let stats = store.stats();
    assert_eq!(stats.writes - before.writes, 9);
    // The blocked write alone, then 8 queued writes in batches of 3, 3 and 2.
    assert_eq!(stats.commits - before.commits, 4, "{stats:?}");
    assert_eq!(store.get(job.id).await.expect("get"), Some(job.clone()));
    let events = store.events(job.id).await.expect("events");
    let order: Vec<i64> = events.iter().skip(2).map(|e| e.at.unix_millis()).collect();
    let queued: Vec<i64> = (1..=8).map(|n| at(n).unix_millis()).collect();
    assert_eq!(order, queued, "committed in queue order");
    store.close().await.expect("close");
}

both!(a_batch_holds_at_most_max_batch_writes);

async fn insert(store: &Store, priority: i32) -> Job {
    store
        .insert_job(spec("ffmpeg", priority), at(0), None, None)
        .await
        .expect("insert")
}

/// Held and paused jobs are stored, read back, listed and counted under their own states, and are
/// unfinished: a starting daemon must recover them.
async fn held_and_paused_jobs_read_back_and_are_unfinished(db: Db) {
    let t = TestStore::open(db).await;
    let store = t.store.clone();
    // Held by this node, so that `unfinished` (on PostgreSQL: this node's jobs) returns them.
    let queued = t.hold(insert(&store, 0).await).await;
    let mut held = t.hold(insert(&store, 1).await).await;
    held.apply(Event::Held { at: at(1) }).expect("hold");
    store
        .record(&held, vec![note("held", 1)])
        .await
        .expect("record");
    let mut paused = t.hold(insert(&store, 2).await).await;
    paused
        .apply(Event::Started { run: run_info(1) })
        .expect("start");
    paused.apply(Event::Paused { at: at(2) }).expect("pause");
    paused
        .apply(Event::Resumed { at: at(502) })
        .expect("resume");
    paused
        .apply(Event::Paused { at: at(1_000) })
        .expect("pause again");
    store
        .record(&paused, vec![note("paused", 1_000)])
        .await
        .expect("record");
    assert_eq!(paused.state.run().map(|r| r.paused_secs), Some(0.5));
    let finished = finish_with(&store, exited(0, 4)).await;
    for job in [&queued, &held, &paused, &finished] {
        assert_eq!(store.get(job.id).await.expect("get").as_ref(), Some(job));
    }
    let listed = |states: Vec<StateName>| {
        store.list(ListFilter {
            states,
            newest_first: false,
            ..ListFilter::default()
        })
    };
    assert_eq!(
        listed(vec![StateName::Held]).await.expect("list"),
        [held.clone()]
    );
    assert_eq!(
        listed(vec![StateName::Paused]).await.expect("list"),
        [paused.clone()]
    );
    assert_eq!(
        listed(vec![StateName::Paused, StateName::Held])
            .await
            .expect("list"),
        [held.clone(), paused.clone()]
    );
    assert_eq!(
        store.count_by_state().await.expect("count"),
        [
            (StateName::Queued, 1),
            (StateName::Held, 1),
            (StateName::Running, 0),
            (StateName::Paused, 1),
            (StateName::Stopping, 0),
            (StateName::Finished, 1),
        ]
    );
    assert_eq!(
        store.unfinished().await.expect("unfinished"),
        [queued, held.clone(), paused]
    );
    held.apply(Event::Released { at: at(5) }).expect("release");
    store.record(&held, vec![]).await.expect("record");
    assert_eq!(
        listed(vec![StateName::Held]).await.expect("list"),
        Vec::<Job>::new()
    );
    store.close().await.expect("close");
}

both!(held_and_paused_jobs_read_back_and_are_unfinished);

/// A retry is a new job that names the job it re-runs; the old job names its newest retry and logs
/// each one (under the attempt it ended with). Both events are published as they commit.
async fn a_retry_links_both_jobs_and_logs_on_both(db: Db) {
    let t = TestStore::open(db).await;
    let store = t.store.clone();
    let mut old = insert(&store, 4).await;
    for attempt in 0..2 {
        if attempt > 0 {
            old.apply(Event::Requeue { at: at(3) }).expect("requeue");
        }
        old.apply(Event::Started { run: run_info(1) })
            .expect("start");
        old.apply(exited(1, 2)).expect("exit");
    }
    store.record(&old, vec![]).await.expect("record");
    assert_eq!(old.attempt, 2);
    let mut live = store.subscribe();
    let retry = store
        .insert_retry(old.spec.clone(), at(10), None, Some("ops".into()), old.id)
        .await
        .expect("retry");
    assert_eq!(retry.retry_of, Some(old.id));
    assert_eq!(retry.retried_as, None);
    assert_eq!(retry.submitted_by.as_deref(), Some("ops"));
    assert_eq!((retry.state.name(), retry.attempt), (StateName::Queued, 1));
    assert_eq!(
        store.get(retry.id).await.expect("get").as_ref(),
        Some(&retry)
    );
    let linked = store.get(old.id).await.expect("get").expect("old job");
    assert_eq!(linked.retried_as, Some(retry.id));
    assert_eq!(
        Job {
            retried_as: None,
            ..linked
        },
        old,
        "nothing else of the old job changed"
    );

    let submitted = store.events(retry.id).await.expect("events");
    assert_eq!(
        submitted.iter().map(|e| &e.event).collect::<Vec<_>>(),
        [&JobEvent::Submitted {
            program: "ffmpeg".into(),
            priority: 4,
            retry_of: Some(old.id),
        }]
    );
    let logged = store.events(old.id).await.expect("events");
    let retried = logged.last().expect("the old job's log");
    assert_eq!(
        retried.event,
        JobEvent::Retried {
            job_id: retry.id,
            by: Some("ops".into()),
        }
    );
    assert_eq!((retried.attempt, retried.at), (2, at(10)));
    let published: Vec<(aura_model::EventLog, String, i64)> = [
        live.recv().await.expect("published"),
        live.recv().await.expect("published"),
    ]
    .iter()
    .map(|e| (e.log, e.kind.clone(), e.seq))
    .collect();
    assert_eq!(
        published,
        [
            (
                aura_model::EventLog::Job(retry.id),
                "submitted".into(),
                submitted[0].seq
            ),
            (
                aura_model::EventLog::Job(old.id),
                "retried".into(),
                retried.seq
            ),
        ]
    );

    let again = store
        .insert_retry(old.spec.clone(), at(20), None, None, old.id)
        .await
        .expect("retry again");
    let linked = store.get(old.id).await.expect("get").expect("old job");
    assert_eq!(linked.retried_as, Some(again.id), "the newest retry");
    let retries: Vec<JobEvent> = store
        .events(old.id)
        .await
        .expect("events")
        .into_iter()
        .filter(|e| e.event.kind() == "retried")
        .map(|e| e.event)
        .collect();
    assert_eq!(
        retries,
        [
            JobEvent::Retried {
                job_id: retry.id,
                by: Some("ops".into())
            },
            JobEvent::Retried {
                job_id: again.id,
                by: None
            },
        ]
    );
    store.close().await.expect("close");
}

both!(a_retry_links_both_jobs_and_logs_on_both);

/// A retry of a job that is not stored is refused whole: no job, no event, no id used up.
async fn a_retry_of_a_missing_job_stores_nothing(db: Db) {
    let t = TestStore::open(db).await;
    let store = t.store.clone();
    let existing = insert(&store, 0).await;
    let refused = store
        .insert_retry(spec("ffmpeg", 0), at(1), None, None, JobId(99))
        .await;
    match &refused {
        Err(e @ StoreError::NotFound(id)) => {
            assert_eq!(*id, JobId(99));
            assert!(!e.is_storage());
        }
        other => panic!("expected NotFound, got {other:?}"),
    }
    assert_eq!(
        store.list(ListFilter::default()).await.expect("list"),
        std::slice::from_ref(&existing)
    );
    assert_eq!(
        store
            .committed_after(None, 0, 100)
            .await
            .expect("events")
            .len(),
        1,
        "only the existing job's submitted event"
    );
    let next = insert(&store, 0).await.id;
    match db {
        Db::Sqlite => assert_eq!(next.0, existing.id.0 + 1, "no id used up"),
        // Ids come from a sequence, which a refused write does not give back: ids only increase (a
        // gap is allowed; `insert_retry` promises only that nothing is written).
        Db::Postgres => assert!(next > existing.id, "{next} after {}", existing.id),
    }
    store.close().await.expect("close");
}

both!(a_retry_of_a_missing_job_stores_nothing);

fn priority_changed(from: i32, to: i32, ms: i64) -> NewEvent {
    NewEvent {
        at: at(ms),
        event: JobEvent::PriorityChanged {
            from,
            to,
            by: Some("ops".into()),
        },
        attempt: None,
    }
}

/// The priority column as stored.
async fn stored_priority(t: &TestStore, id: JobId) -> i64 {
    t.query_i64(&format!("SELECT priority FROM jobs WHERE id = {}", id.0))
        .await
}

/// A priority change writes the priority column and the spec with the state, in order with the job's
/// other writes: a state change queued after it, committed in the same transaction, keeps it.
async fn a_priority_change_rewrites_priority_and_spec_in_order(db: Db) {
    let t = TestStore::open_with(
        db,
        StoreOptions {
            busy_timeout: PROMPTLY,
            ..StoreOptions::default()
        },
    )
    .await;
    let store = t.store.clone();
    let mut job = insert(&store, 0).await;
    job.apply(Event::Held { at: at(1) }).expect("hold");
    job.spec.priority = 9;
    store
        .record_priority(&job, vec![priority_changed(0, 9, 1)])
        .await
        .expect("queued")
        .await
        .expect("record");
    assert_eq!(store.get(job.id).await.expect("get"), Some(job.clone()));
    assert_eq!(stored_priority(&t, job.id).await, 9);
    let logged = store.events(job.id).await.expect("events");
    assert_eq!(
        logged.last().map(|e| &e.event),
        Some(&priority_changed(0, 9, 1).event)
    );

    let lock = t.lock_writes().await;
    let before = store.stats().writes;
    let busy = store.record_queued(&job, vec![]).await.expect("queued");
    writer_took(&store, before, 1).await;
    job.spec.priority = -3;
    let moving = job.clone();
    let moved = async {
        store
            .record_priority(&moving, vec![priority_changed(9, -3, 2)])
            .await?
            .await
    };
    let mut moved = std::pin::pin!(moved);
    // Polled once, it is queued (the channel has room) and waits for its commit behind the lock.
    tokio::select! {
        biased;
        result = &mut moved => panic!("committed while the lock is held: {result:?}"),
        () = std::future::ready(()) => {}
    }
    job.apply(Event::Released { at: at(3) }).expect("release");
    let released = store
        .record_queued(&job, vec![note("released", 3)])
        .await
        .expect("queued");
    lock.release().await;
    promptly("the blocked write", busy)
        .await
        .expect("committed");
    promptly("the priority change", moved)
        .await
        .expect("committed");
    promptly("the release", released).await.expect("committed");
    assert_eq!(store.get(job.id).await.expect("get"), Some(job.clone()));
    assert_eq!(stored_priority(&t, job.id).await, -3);
    let kinds: Vec<String> = store
        .events(job.id)
        .await
        .expect("events")
        .iter()
        .map(|e| e.event.kind())
        .collect();
    assert_eq!(
        kinds,
        [
            "submitted",
            "priority_changed",
            "priority_changed",
            "released"
        ]
    );
    store.close().await.expect("close");
}

both!(a_priority_change_rewrites_priority_and_spec_in_order);

/// A write queued with a `Pending`, until it is committed.
async fn committed(queued: Result<Pending, StoreError>) -> Result<(), StoreError> {
    queued?.await
}

/// Node-wide settings: unset is `None`, a set replaces, `None` deletes, and they outlive the store.
async fn settings_are_set_replaced_deleted_and_kept(db: Db) {
    let t = TestStore::open(db).await;
    let store = t.store.clone();
    assert_eq!(store.setting("drained").await.expect("read"), None);
    store
        .set_setting("drained", Some("true"))
        .await
        .expect("queued")
        .await
        .expect("set");
    store
        .set_setting("other", Some("1"))
        .await
        .expect("queued")
        .await
        .expect("set");
    assert_eq!(
        store.setting("drained").await.expect("read").as_deref(),
        Some("true")
    );
    store
        .set_setting("drained", Some("false"))
        .await
        .expect("queued")
        .await
        .expect("replace");
    assert_eq!(
        store.setting("drained").await.expect("read").as_deref(),
        Some("false")
    );
    store
        .set_setting("drained", None)
        .await
        .expect("queued")
        .await
        .expect("delete");
    assert_eq!(store.setting("drained").await.expect("read"), None);
    store
        .set_setting("never set", None)
        .await
        .expect("queued")
        .await
        .expect("deleting what is not there");
    store.close().await.expect("close");
    let store = t.reopen().await;
    assert_eq!(store.setting("drained").await.expect("read"), None);
    assert_eq!(
        store.setting("other").await.expect("read").as_deref(),
        Some("1")
    );
    store.close().await.expect("close");
}

both!(settings_are_set_replaced_deleted_and_kept);

// SQLite only: the database file and its write-ahead log.
/// A closed store lets go of the database: the write-ahead log is folded back in and removed, so the
/// file alone holds every job (a backup can copy just it), even while a handle is still around.
#[tokio::test(flavor = "multi_thread")]
async fn closing_folds_the_write_ahead_log_into_the_database() {
    let dir = TempDir::new().expect("tempdir");
    let path = db(&dir);
    let store = open(&path).await;
    let job = store
        .insert_job(spec("ffmpeg", 0), at(0), None, None)
        .await
        .expect("insert");
    // A read leaves its connection in the pool.
    assert!(store.get(job.id).await.expect("get").is_some());
    let wal = dir.path().join("aura.db-wal");
    assert!(wal.exists(), "an open store writes ahead");
    store.close().await.expect("close");
    assert!(!wal.exists(), "the log outlived close");
    let copy = dir.path().join("copy.db");
    std::fs::copy(&path, &copy).expect("copy the database alone");
    let reopened = open(&copy).await;
    assert_eq!(reopened.get(job.id).await.expect("get"), Some(job));
    reopened.close().await.expect("close");
    drop(store);
}

// SQLite only: the reserve file SQLite's writer keeps next to the database.
fn reserve_len(path: &Path) -> Option<u64> {
    let mut reserve = path.as_os_str().to_owned();
    reserve.push("-reserve");
    std::fs::metadata(PathBuf::from(reserve))
        .ok()
        .map(|m| m.len())
}

/// The reserve is for a full volume only: ordinary commits and writes that fail for their own reasons
/// (a missing job, a malformed event) leave it in place.
#[tokio::test(flavor = "multi_thread")]
async fn the_reserve_is_kept_unless_the_volume_is_full() {
    let dir = TempDir::new().expect("tempdir");
    let path = db(&dir);
    let store = open_with(
        &path,
        StoreOptions {
            reserve_bytes: 64 * 1024,
            ..StoreOptions::default()
        },
    )
    .await;
    assert_eq!(reserve_len(&path), Some(64 * 1024));
    let mut job = store
        .insert_job(spec("ffmpeg", 0), at(0), None, None)
        .await
        .expect("insert");
    job.apply(Event::Started { run: run_info(1) })
        .expect("start");
    store
        .record(&job, vec![note("started", 1)])
        .await
        .expect("record");
    let ghost = Job {
        id: JobId(999),
        ..job.clone()
    };
    assert!(matches!(
        store.record(&ghost, vec![]).await,
        Err(StoreError::NotFound(_))
    ));
    let malformed = NewEvent {
        at: at(2),
        event: JobEvent::Unrecognized {
            kind: String::new(),
            detail: json!(null),
        },
        attempt: None,
    };
    let refused = store.record(&job, vec![malformed]).await;
    assert!(matches!(&refused, Err(e) if !e.is_storage()), "{refused:?}");
    assert_eq!(reserve_len(&path), Some(64 * 1024), "the reserve was spent");
    assert!(!store.stats().degraded);
    store.close().await.expect("close");
}

// SQLite only: a full volume under the database file (PostgreSQL's disk is the server's).
/// A store on a small volume without a reserve, with one running job.
async fn store_on_small_volume() -> Option<(SmallVolume, Store, Job)> {
    let volume = SmallVolume::mount("2m")?;
    let store = open(&volume.db()).await;
    let mut job = store
        .insert_job(spec("ffmpeg", 0), at(0), None, None)
        .await
        .expect("insert");
    job.apply(Event::Started { run: run_info(1) })
        .expect("start");
    store.record(&job, vec![]).await.expect("record");
    Some((volume, store, job))
}

/// Waits until the store has kept `n` writes that the volume refused.
async fn kept(store: &Store, n: u64) {
    promptly("the refused write being kept", async {
        while store.stats().kept_writes != n {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(store.stats().degraded);
}

/// Once kept writes are committed, readers see the stored record again: a state change queued as space
/// returns (committed in the same transaction as the kept one, which it supersedes) shows, and nothing
/// kept hides it.
#[tokio::test]
async fn after_kept_writes_commit_later_changes_show() {
    let Some((volume, store, mut job)) = store_on_small_volume().await else {
        return;
    };
    volume.fill("filler");
    job.apply(exited(1, 2)).expect("exit");
    let ended = store
        .record_queued(&job, vec![note("exited", 2)])
        .await
        .expect("queued");
    kept(&store, 1).await;
    let seen = store.get(job.id).await.expect("get").expect("job");
    assert_eq!(
        seen.state.name(),
        StateName::Finished,
        "the kept state shows"
    );
    volume.free("filler");
    job.apply(Event::Requeue { at: at(3) }).expect("requeue");
    // Whoever hears of the commit (here on the writer thread, the moment it happens) finds nothing kept.
    let (told, heard) = tokio::sync::oneshot::channel();
    let watcher = store.clone();
    store
        .record_then(&job, &[note("requeued", 3)], Commit::Now, move |result| {
            let _ = told.send((result, watcher.stats().kept_writes));
        })
        .await
        .expect("queued");
    let (result, kept_then) = promptly("the requeue", heard).await.expect("answered");
    result.expect("committed");
    assert_eq!(kept_then, 0, "still reported kept once committed");
    promptly("the kept write", ended)
        .await
        .expect("committed once space returned");
    assert_eq!(store.get(job.id).await.expect("get"), Some(job.clone()));
    let logged: Vec<String> = store
        .events(job.id)
        .await
        .expect("events")
        .iter()
        .map(|e| e.event.kind())
        .collect();
    assert_eq!(logged, ["submitted", "exited", "requeued"]);
    let queued = store
        .list(ListFilter {
            states: vec![StateName::Queued],
            ..ListFilter::default()
        })
        .await
        .expect("list");
    assert_eq!(queued, [job], "listed by its committed state");
    store.close().await.expect("close");
}

/// A state change too big for the writer's page cache meets the full volume while its statements run,
/// not at the commit: it is kept all the same, not failed.
#[tokio::test]
async fn a_big_state_change_refused_mid_statement_is_kept() {
    let Some((volume, store, mut job)) = store_on_small_volume().await else {
        return;
    };
    volume.fill("filler");
    job.apply(exited(1, 2)).expect("exit");
    let big = NewEvent {
        at: at(2),
        event: JobEvent::Unrecognized {
            kind: "output_tail".into(),
            detail: json!({ "tail": "x".repeat(1 << 20) }),
        },
        attempt: None,
    };
    let ended = store.record_queued(&job, vec![big]).await.expect("queued");
    kept(&store, 1).await;
    volume.free("filler");
    promptly("the kept write", ended)
        .await
        .expect("committed once space returned");
    assert_eq!(store.get(job.id).await.expect("get"), Some(job.clone()));
    assert_eq!(store.events(job.id).await.expect("events").len(), 2);
    store.close().await.expect("close");
}

/// A write that fails for its own reason shares a batch with one the full volume refuses: the first is
/// answered with its error, the second is kept and committed once space returns, not failed.
#[tokio::test]
async fn a_refused_write_replayed_alone_is_still_kept() {
    let Some((volume, store, mut job)) = store_on_small_volume().await else {
        return;
    };
    let ghost = Job {
        id: JobId(999),
        ..job.clone()
    };
    volume.fill("filler");
    // A Soon write waits in the group window; the Now write behind it ends the window: one batch.
    let missing = record_then(&store, &ghost, &[], Commit::Soon).await;
    job.apply(exited(0, 2)).expect("exit");
    let ended = store
        .record_queued(&job, vec![note("exited", 2)])
        .await
        .expect("queued");
    let missing = promptly("the missing job's answer", missing)
        .await
        .expect("answered");
    assert!(
        matches!(missing, Err(StoreError::NotFound(JobId(999)))),
        "{missing:?}"
    );
    kept(&store, 1).await;
    volume.free("filler");
    promptly("the kept write", ended)
        .await
        .expect("committed once space returned");
    assert_eq!(store.get(job.id).await.expect("get"), Some(job));
    store.close().await.expect("close");
}

/// Closing while the volume still refuses writes: whoever waits for a kept write hears that it was not
/// committed, and the record keeps the last state the volume took.
#[tokio::test]
async fn closing_on_a_full_volume_answers_every_kept_write() {
    let Some((volume, store, mut job)) = store_on_small_volume().await else {
        return;
    };
    let running = job.clone();
    volume.fill("filler");
    job.apply(exited(0, 2)).expect("exit");
    let callback = record_then(&store, &job, &[note("exited", 2)], Commit::Now).await;
    kept(&store, 1).await;
    store.close().await.expect("close");
    let answer = promptly("the kept write's answer", callback)
        .await
        .expect("the callback ran");
    assert!(matches!(answer, Err(StoreError::Closed)), "{answer:?}");
    volume.free("filler");
    let store = open(&volume.db()).await;
    assert_eq!(store.get(job.id).await.expect("get"), Some(running));
    store.close().await.expect("close");
}

/// Closing right after space returns commits what was kept before the store stops.
#[tokio::test]
async fn closing_after_space_returns_commits_kept_writes() {
    let Some((volume, store, mut job)) = store_on_small_volume().await else {
        return;
    };
    volume.fill("filler");
    job.apply(exited(0, 2)).expect("exit");
    let ended = store
        .record_queued(&job, vec![note("exited", 2)])
        .await
        .expect("queued");
    kept(&store, 1).await;
    volume.free("filler");
    store.close().await.expect("close");
    ended.await.expect("committed by the close");
    let store = open(&volume.db()).await;
    assert_eq!(store.get(job.id).await.expect("get"), Some(job));
    store.close().await.expect("close");
}

/// While the volume refuses writes, a kept priority change shows to readers, also under a later kept
/// state change of the same job, and both are committed once space returns.
#[tokio::test]
async fn a_kept_priority_change_shows_until_committed() {
    let Some((volume, store, _running)) = store_on_small_volume().await else {
        return;
    };
    let mut job = insert(&store, 0).await;
    volume.fill("filler");
    job.spec.priority = 5;
    let moved = tokio::spawn({
        let (store, job) = (store.clone(), job.clone());
        async move { store.record_priority(&job, vec![]).await?.await }
    });
    kept(&store, 1).await;
    let seen = store.get(job.id).await.expect("get").expect("job");
    assert_eq!(seen.spec.priority, 5, "the kept priority shows");
    job.apply(Event::Held { at: at(2) }).expect("hold");
    let held = store.record_queued(&job, vec![]).await.expect("queued");
    kept(&store, 2).await;
    assert_eq!(
        store.get(job.id).await.expect("get"),
        Some(job.clone()),
        "both kept changes show"
    );
    volume.free("filler");
    promptly("the priority change", moved)
        .await
        .expect("joined")
        .expect("committed");
    promptly("the hold", held).await.expect("committed");
    assert_eq!(store.get(job.id).await.expect("get"), Some(job));
    store.close().await.expect("close");
}

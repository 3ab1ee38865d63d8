//! The queue caps hold exactly under concurrent submits: a real engine (store in a temp dir,
//! process-group supervisor) whose jobs all wait behind a lease, and submitters racing for the last
//! places.

use aura_engine::{EngineConfig, EngineError, EngineHandle, Submitter};
use aura_model::{JobSpec, LeaseSpec, ResourceRequest};
use std::sync::Arc;
use std::time::Duration;

const SUBMITTERS: usize = 32;

/// An engine with the global cap `queue_cap`, and a lease holding the one slot of the named limit
/// `hold` every test job needs: nothing leaves the queue while the test runs.
async fn engine(dir: &std::path::Path, queue_cap: usize) -> EngineHandle {
    let mut supervisor = aura_supervisor::SupervisorConfig::new(format!(
        "qcap-{}-{}",
        std::process::id(),
        dir.file_name().and_then(|n| n.to_str()).unwrap_or("x")
    ));
    supervisor.backend = aura_supervisor::BackendChoice::ProcessGroup;
    let mut admission = aura_engine::AdmissionConfig {
        memory_bytes: Some(1 << 40),
        cpu_cores: Some(4.0),
        detect_gpus: false,
        queue_cap,
        ..Default::default()
    };
    admission.limits.insert(
        "hold".into(),
        aura_admission::LimitConfig {
            max_concurrent: Some(1),
            per_minute: None,
        },
    );
    let engine = aura_engine::start(EngineConfig {
        data_dir: dir.to_path_buf(),
        max_concurrent: 4,
        standby: 2,
        admission,
        guards: aura_engine::GuardConfig {
            enabled: false,
            ..Default::default()
        },
        diagnostics: Default::default(),
        warnings: Default::default(),
        janitor: Default::default(),
        uploads: Default::default(),
        fleet: None,
        media: Default::default(),
        host_interval: Duration::from_secs(5),
        host_history: 2,
        requeue_on_shutdown: false,
        supervisor,
        secrets: Default::default(),
        shutdown_grace: Duration::from_secs(30),
        quarantine_after: 2,
        store_reserve: 2 << 20,
        foreign_trees: false,
    })
    .await
    .expect("engine starts");
    engine
        .acquire_lease(LeaseSpec {
            resources: ResourceRequest {
                providers: ["hold".to_owned()].into(),
                ..Default::default()
            },
            ttl: Duration::from_secs(600),
            holder: Some("queue-cap test".into()),
        })
        .await
        .expect("the lease");
    engine
}

/// The queue's length once the actor has taken in every submit made so far: a round trip through its
/// command channel (first in, first out) comes back after their `Enqueue`s.
async fn queued(engine: &EngineHandle) -> usize {
    engine.leases().await.expect("a round trip");
    engine.status().await.expect("status").queued
}

fn held_job() -> JobSpec {
    let mut spec = JobSpec::new("true", Vec::<String>::new());
    spec.resources.providers = ["hold".to_owned()].into();
    spec
}

/// `SUBMITTERS` submits at once; the outcomes.
async fn race(
    engine: &EngineHandle,
    submitter: Option<Submitter>,
) -> Vec<Result<aura_model::Job, EngineError>> {
    let start = Arc::new(tokio::sync::Barrier::new(SUBMITTERS));
    let tasks: Vec<_> = (0..SUBMITTERS)
        .map(|_| {
            let (engine, start, submitter) = (engine.clone(), start.clone(), submitter.clone());
            tokio::spawn(async move {
                start.wait().await;
                engine.submit(held_job(), submitter.as_ref()).await
            })
        })
        .collect();
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.expect("a submit task"));
    }
    results
}

/// Exactly `cap` of the racing submits were accepted, and every other one refused as `refused` says.
fn assert_exactly_cap<T>(
    results: &[Result<T, EngineError>],
    cap: usize,
    refused: impl Fn(&EngineError) -> bool,
) {
    let accepted = results.iter().filter(|r| r.is_ok()).count();
    let errors: Vec<&EngineError> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    let refused = errors.iter().filter(|e| refused(e)).count();
    assert_eq!((accepted, refused), (cap, SUBMITTERS - cap), "{errors:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_submits_fill_the_queue_exactly_to_its_cap() {
    const CAP: usize = 10;
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = engine(dir.path(), CAP).await;
    let results = race(&engine, None).await;
    assert_exactly_cap(&results, CAP, |e| {
        matches!(e, EngineError::QueueFull { cap: CAP, .. })
    });
    assert_eq!(queued(&engine).await, CAP);
    // Full means full, and a refused submit gave its place back: one cancel frees exactly one.
    assert!(matches!(
        engine.submit(held_job(), None).await,
        Err(EngineError::QueueFull { .. })
    ));
    let first = results.iter().flatten().next().expect("an accepted job");
    engine.cancel(first.id).await.expect("cancel");
    let again = race(&engine, None).await;
    assert_eq!(again.iter().filter(|r| r.is_ok()).count(), 1);
    engine.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_submits_of_one_token_stop_exactly_at_its_cap() {
    const CAP: usize = 7;
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = engine(dir.path(), 1000).await;
    let token = Submitter {
        name: "racer".into(),
        max_queued: Some(CAP),
    };
    let results = race(&engine, Some(token.clone())).await;
    assert_exactly_cap(&results, CAP, |e| {
        matches!(e, EngineError::SubmitterQueueFull { cap: CAP, .. })
    });
    // Another token is not held to this one's cap.
    let other = Submitter {
        name: "other".into(),
        max_queued: Some(CAP),
    };
    engine
        .submit(held_job(), Some(&other))
        .await
        .expect("another token's submit");
    assert_eq!(queued(&engine).await, CAP + 1);
    engine.shutdown().await.expect("clean shutdown");
}

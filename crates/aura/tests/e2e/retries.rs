//! Retry policies: a failing job runs again as its spec says; a shutdown without requeue leaves jobs
//! interrupted.

use super::*;

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_job_is_retried_per_its_policy() {
    let daemon = Daemon::start(&[]);
    let client = daemon.client();
    let mut job = spec("sh", &["-c", "echo attempt; exit 7"]);
    job.retry.max_retries = 2;
    let id = submit(&client, &job).await;
    let view = wait_done(&client, id).await;
    assert_eq!(outcome(&view), &Outcome::Failed { exit_code: 7 });
    assert_eq!((view.job.attempt, view.job.failures), (3, 3));
    let kinds: Vec<String> = client
        .events(id)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.event.kind())
        .collect();
    // Each attempt's start is in the log before its end, even where the engine wrote a short
    // attempt's start together with its end (one write instead of two).
    let attempt = ["started", "exited", "finished"];
    let mut expected = vec!["submitted"];
    for n in 0..3 {
        expected.extend(attempt);
        if n < 2 {
            expected.push("requeued");
        }
    }
    assert_eq!(kinds, expected, "{kinds:?}");
    // Each attempt keeps its own output.
    let out = daemon.cli(&["logs", &id.to_string()]);
    assert_eq!(stdout(&out), "attempt\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_without_requeue_leaves_jobs_interrupted() {
    let mut daemon = Daemon::start(&[("AURA_REQUEUE_ON_SHUTDOWN", "false")]);
    let client = daemon.client();
    let id = submit(&client, &spec("sleep", &["300"])).await;
    wait_running(&client, id, 1).await;
    daemon.signal(rustix::process::Signal::TERM);
    daemon.wait_exit();
    daemon.spawn();
    let view = daemon.client().get(id).await.unwrap();
    assert!(
        matches!(outcome(&view), Outcome::Interrupted { .. }),
        "{view:?}"
    );
}

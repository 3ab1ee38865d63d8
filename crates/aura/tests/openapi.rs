//! The live daemon against its own OpenAPI document: schemathesis (pinned, in `.tools/venv`, installed by
//! `cargo xtask test`) reads `GET /api/openapi.json` and sends every operation generated requests —
//! examples, boundary and invalid values, random ones, and chains of calls through the links it infers —
//! checking that no answer is a 5xx, that every status, content type, header and body is one the
//! document gives for that operation. A test binary of its own: it fills a daemon with hundreds of jobs
//! and drains it, which no other test's daemon should see.

use aura_client::{Client, ListQuery};
use aura_model::view::CancelSelection;
use aura_model::JobSpec;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

mod common;
use common::Daemon;

/// What schemathesis checks of every answer.
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,\
                      response_schema_conformance,response_headers_conformance";

/// Generated cases per operation and phase: enough to reach every status an operation documents, few
/// enough that the run stays near half a minute on two cores.
const MAX_EXAMPLES: &str = "25";

/// The same cases every run, so that a failure reproduces; `AURA_SCHEMATHESIS_SEED` picks others.
const SEED: &str = "20240501";

/// The project's schemathesis. Missing is a failure, not a skip: `cargo xtask test` installs it, and a
/// suite that quietly tested less would pass for the wrong reason.
fn schemathesis() -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.tools/venv/bin/schemathesis");
    assert!(
        path.is_file(),
        "schemathesis is not installed in .tools/venv: run `cargo xtask deps`"
    );
    path
}

/// One schemathesis run over the operations `filters` select; fails the test with its whole report
/// when it finds anything.
fn fuzz(st: &PathBuf, daemon: &Daemon, dir: &std::path::Path, what: &str, filters: &[&str]) {
    let seed = std::env::var("AURA_SCHEMATHESIS_SEED").unwrap_or_else(|_| SEED.to_owned());
    let started = Instant::now();
    let output = Command::new(st)
        .arg("--no-color")
        .arg("run")
        .arg(format!("{}/api/openapi.json", daemon.url))
        .args(["-H", &format!("Authorization: Bearer {}", daemon.token)])
        .args(["--checks", CHECKS])
        .args(["--max-examples", MAX_EXAMPLES])
        .args(["--seed", &seed])
        .args(["--workers", "2"])
        // Every operation under test answers at once; a hang is a failure, not a wait.
        .args(["--request-timeout", "10"])
        // Nothing kept between runs: the seed alone decides what is sent.
        .args(["--generation-database", "none"])
        .args(filters)
        // Its working files (and any `schemathesis.toml`) stay out of the repository.
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .output()
        .expect("run schemathesis");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    // The figures of the run, for whoever reads the test's output.
    for line in report.lines().filter(|l| {
        l.contains("Operations:")
            || l.contains("generated")
            || l.contains("passed")
            || l.contains("failed")
    }) {
        eprintln!("{what}: {}", line.trim());
    }
    eprintln!(
        "{what}: {:.1}s, seed {seed}",
        started.elapsed().as_secs_f64()
    );
    assert!(
        output.status.success(),
        "schemathesis found answers that disagree with the OpenAPI document ({what}):\n{report}"
    );
}

#[test]
fn the_daemon_answers_as_its_openapi_document_says() {
    let st = schemathesis();
    let daemon = Daemon::start(&[
        // Submissions name random programs; the fuzzer gets to run one harmless program only.
        ("AURA_JOBS__PROGRAMS", r#"["true"]"#),
        // The load of the run itself must not pause admission or throttle jobs: a job left queued
        // would hold a wait.
        ("AURA_GUARDS__ENABLED", "false"),
        ("AURA_GUARDS__THROTTLE__ENABLED", "false"),
    ]);
    let work = tempfile::tempdir().expect("tempdir");
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let client = Client::authorized(&daemon.url, &daemon.token).expect("client");

    // Job 1, finished: the examples' `id` reaches a real job.
    runtime.block_on(async {
        let job = client
            .submit(&JobSpec::new("true", Vec::<String>::new()))
            .await
            .expect("submit");
        let done = client
            .wait(job.job.id, Duration::from_secs(30))
            .await
            .expect("wait");
        assert_eq!(done.job.id.0, 1);
        assert!(done.job.outcome().is_some(), "{:?}", done.job.state);
    });

    // Every operation but three: the all-jobs event stream ends only when the daemon shuts down, so no
    // answer to it ever completes; a job's event stream and a wait hold their request until the job
    // has finished, and the fuzzer drains the node, holds jobs and leaves them queued. Those two are
    // tested below, once every job has finished.
    fuzz(
        &st,
        &daemon,
        work.path(),
        "every operation",
        &[
            "--exclude-path",
            "/api/events/stream",
            "--exclude-path",
            "/api/jobs/{id}/events/stream",
            "--exclude-path",
            "/api/jobs/{id}/wait",
        ],
    );

    runtime.block_on(async {
        client.undrain().await.expect("undrain");
        let everything = CancelSelection {
            kill: true,
            ..Default::default()
        };
        client.cancel_where(&everything).await.expect("cancel all");
        let unfinished = ListQuery {
            states: ["queued", "held", "running", "paused", "stopping"]
                .map(String::from)
                .to_vec(),
            limit: Some(1),
            ..Default::default()
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let page = client.list(&unfinished).await.expect("list");
            if page.jobs.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "jobs still unfinished after cancelling all: {:?}",
                page.jobs[0].job
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });

    fuzz(
        &st,
        &daemon,
        work.path(),
        "wait and a job's event stream",
        &[
            "--include-path",
            "/api/jobs/{id}/wait",
            "--include-path",
            "/api/jobs/{id}/events/stream",
        ],
    );
}

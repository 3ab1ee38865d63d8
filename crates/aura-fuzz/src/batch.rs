//! The `batch` target: a batch of dependent jobs as `aura submit --from` reads it (JSON lines) and `POST
//! /api/jobs/batch` checks it (`aura_model::batch`).

use aura_model::batch::{self, Dependency, MAX_BATCH};

/// Reads `data` as a JSON-lines batch (inputs that are not UTF-8 are skipped: the CLI reads text). For
/// an accepted batch:
/// - it holds 1 to `MAX_BATCH` jobs, each spec valid, its own `after` still empty (dependencies are kept
///   apart until the store assigns ids);
/// - every dependency on an entry points backwards (so a batch never has a cycle), every job id is
///   positive, and names are unique;
/// - parsing is deterministic, and the entries written back as JSON read back to the same batch.
pub fn batch(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(entries) = batch::jsonl_entries(text) else {
        return;
    };
    let parsed = batch::parse(entries.clone());
    assert_eq!(
        format!("{parsed:?}"),
        format!("{:?}", batch::parse(entries)),
        "parsing is deterministic"
    );
    let Ok(jobs) = parsed else {
        return;
    };
    assert!((1..=MAX_BATCH).contains(&jobs.len()));
    let mut names = std::collections::HashSet::new();
    for (i, job) in jobs.iter().enumerate() {
        assert!(
            job.spec.validate().is_ok(),
            "entry {i} accepted with an invalid spec"
        );
        assert!(
            job.spec.after.is_empty(),
            "entry {i} keeps dependencies in its spec"
        );
        for dep in &job.after {
            match dep {
                Dependency::Entry(earlier) => assert!(*earlier < i, "entry {i} depends forward"),
                Dependency::Job(id) => assert!(id.0 > 0, "entry {i} depends on job {id}"),
            }
        }
        if let Some(name) = &job.name {
            assert!(names.insert(name.clone()), "name {name:?} twice");
        }
    }
    // Written back as a client sends it: the spec, its name, its dependencies by id and by name.
    let written: Vec<serde_json::Value> = jobs
        .iter()
        .map(|job| {
            let mut value = serde_json::to_value(&job.spec).expect("a spec encodes");
            let after: Vec<serde_json::Value> = job
                .after
                .iter()
                .map(|dep| match dep {
                    Dependency::Job(id) => serde_json::json!(id.0),
                    Dependency::Entry(i) => serde_json::json!(jobs[*i].name.clone()),
                })
                .collect();
            if let Some(object) = value.as_object_mut() {
                object.insert("after".into(), serde_json::json!(after));
                if let Some(name) = &job.name {
                    object.insert("name".into(), serde_json::json!(name));
                }
            }
            value
        })
        .collect();
    let back = batch::parse(written).expect("an accepted batch written back is accepted");
    assert_eq!(back, jobs, "the batch changed when written back");
}

//! Batches: several jobs submitted as one piece of work (`aura submit --from jobs.jsonl`, `POST
//! /api/jobs/batch`), queued atomically. Each entry is a job spec plus an optional `name`, and its
//! `after` may name earlier entries as well as existing job ids: `{"name": "tts", ...}` then
//! `{"after": ["tts"], ...}`. Parsing is pure and checks everything before anything is queued.

use crate::{JobId, JobSpec, SpecError};
use std::collections::HashMap;

/// The most jobs one batch may hold.
pub const MAX_BATCH: usize = 1000;

/// What one entry depends on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dependency {
    /// A job that exists already.
    Job(JobId),
    /// An earlier entry of the same batch (its index).
    Entry(usize),
}

/// One entry of a batch, checked.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchJob {
    /// The name later entries refer to it by.
    pub name: Option<String>,
    /// The job, its `after` empty: dependencies are in `after` below until the batch is queued.
    pub spec: JobSpec,
    /// What it waits for.
    pub after: Vec<Dependency>,
}

/// Why a batch was refused; nothing of it is queued.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum BatchError {
    /// A line of a JSON-lines file is not JSON.
    #[error("line {line}: not JSON: {error}")]
    Json {
        /// The line, counting from 1.
        line: usize,
        /// What the JSON parser said.
        error: String,
    },
    /// An entry is not a valid job.
    #[error("job {entry}: {error}")]
    Invalid {
        /// The entry, counting from 1.
        entry: usize,
        /// Why.
        error: String,
    },
    /// An entry's spec breaks a rule of [`JobSpec::validate`].
    #[error("job {entry}: {error}")]
    Spec {
        /// The entry, counting from 1.
        entry: usize,
        /// The rule broken.
        error: SpecError,
    },
    /// An `after` names no earlier entry (names refer backwards only, so a batch has no cycle).
    #[error("job {entry}: after names {name:?}, which no earlier job of the batch is called")]
    UnknownName {
        /// The entry, counting from 1.
        entry: usize,
        /// The name.
        name: String,
    },
    /// Two entries have the same name.
    #[error("job {entry}: the name {name:?} is taken by an earlier job")]
    DuplicateName {
        /// The entry, counting from 1.
        entry: usize,
        /// The name.
        name: String,
    },
    /// No entry, or more than [`MAX_BATCH`].
    #[error("a batch holds 1 to {MAX_BATCH} jobs, not {0}")]
    Size(usize),
}

/// The entries of a JSON-lines text: one JSON object per line; blank lines and lines starting with `#`
/// are skipped.
pub fn jsonl_entries(text: &str) -> Result<Vec<serde_json::Value>, BatchError> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| BatchError::Json {
                line: i + 1,
                error: e.to_string(),
            })
        })
        .collect()
}

/// Checks a batch: every entry a valid spec, every name unique, every `after` an existing job's id
/// (checked by the engine) or the name of an earlier entry.
pub fn parse(entries: Vec<serde_json::Value>) -> Result<Vec<BatchJob>, BatchError> {
    if entries.is_empty() || entries.len() > MAX_BATCH {
        return Err(BatchError::Size(entries.len()));
    }
    let mut names: HashMap<String, usize> = HashMap::new();
    let mut jobs = Vec::with_capacity(entries.len());
    for (index, entry) in entries.into_iter().enumerate() {
        let number = index + 1;
        let invalid = |error: String| BatchError::Invalid {
            entry: number,
            error,
        };
        let serde_json::Value::Object(mut fields) = entry else {
            return Err(invalid("not a JSON object".into()));
        };
        let name = match fields.remove("name") {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(n)) if valid_name(&n) => Some(n),
            Some(_) => {
                return Err(invalid(
                    "name must be 1 to 64 letters, digits, `_ - .`".into(),
                ))
            }
        };
        let after = match fields.remove("after") {
            None | Some(serde_json::Value::Null) => Vec::new(),
            Some(serde_json::Value::Array(items)) => items,
            Some(_) => return Err(invalid("after must be a list".into())),
        };
        let mut deps = Vec::with_capacity(after.len());
        for item in after {
            deps.push(match item {
                serde_json::Value::Number(n) => match n.as_i64().filter(|id| *id > 0) {
                    Some(id) => Dependency::Job(JobId(id)),
                    None => return Err(invalid(format!("after: {n} is not a job id"))),
                },
                serde_json::Value::String(name) => match names.get(&name) {
                    Some(&i) => Dependency::Entry(i),
                    None => {
                        return Err(BatchError::UnknownName {
                            entry: number,
                            name,
                        })
                    }
                },
                other => {
                    return Err(invalid(format!(
                        "after: {other} is neither a job id nor a name"
                    )))
                }
            });
        }
        let spec: JobSpec = serde_json::from_value(serde_json::Value::Object(fields))
            .map_err(|e| invalid(e.to_string()))?;
        spec.validate().map_err(|error| BatchError::Spec {
            entry: number,
            error,
        })?;
        if deps.len() > crate::limits::MAX_DEPENDENCIES {
            return Err(BatchError::Spec {
                entry: number,
                error: SpecError::TooMany {
                    what: "dependencies (after)",
                    max: crate::limits::MAX_DEPENDENCIES,
                },
            });
        }
        if let Some(name) = &name {
            if names.insert(name.clone(), index).is_some() {
                return Err(BatchError::DuplicateName {
                    entry: number,
                    name: name.clone(),
                });
            }
        }
        jobs.push(BatchJob {
            name,
            spec,
            after: deps,
        });
    }
    Ok(jobs)
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_refer_to_earlier_entries_and_ids_to_jobs() {
        let text = r#"
# TTS, then render, then encode
{"name": "tts", "program": "ffmpeg", "args": ["-f", "lavfi", "-i", "sine=d=1", "a.wav"]}
{"name": "render", "program": "ffmpeg", "args": ["x"], "after": ["tts", 7]}

{"program": "ffmpeg", "args": ["y"], "after": ["tts", "render"], "labels": {"kind": "encode"}}
"#;
        let jobs = parse(jsonl_entries(text).unwrap()).unwrap();
        assert_eq!(jobs.len(), 3);
        assert_eq!(jobs[0].name.as_deref(), Some("tts"));
        assert_eq!(
            jobs[1].after,
            [Dependency::Entry(0), Dependency::Job(JobId(7))]
        );
        assert_eq!(jobs[2].after, [Dependency::Entry(0), Dependency::Entry(1)]);
        assert!(jobs[2].spec.after.is_empty());
        assert_eq!(jobs[2].spec.kind(), Some("encode"));
    }

    #[test]
    fn bad_batches_say_which_job_and_why() {
        let spec = |extra: serde_json::Value| {
            let mut v = json!({"program": "true"});
            if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
                o.extend(e.clone());
            }
            v
        };
        let cases: Vec<(Vec<serde_json::Value>, &str)> = vec![
            (vec![], "1 to 1000"),
            (vec![json!([1])], "job 1: not a JSON object"),
            (vec![spec(json!({"after": ["later"]}))], "no earlier job"),
            (
                vec![spec(json!({"name": "a"})), spec(json!({"name": "a"}))],
                "job 2: the name \"a\" is taken",
            ),
            (vec![spec(json!({"after": [0]}))], "not a job id"),
            (vec![spec(json!({"after": [true]}))], "neither"),
            (vec![spec(json!({"after": "x"}))], "must be a list"),
            (vec![spec(json!({"name": "white space"}))], "name must be"),
            (vec![spec(json!({"bogus": 1}))], "unknown field"),
            (vec![spec(json!({"timeout": 0}))], "timeout"),
            (vec![json!({"args": []})], "program"),
        ];
        for (entries, expected) in cases {
            let error = parse(entries).expect_err(expected).to_string();
            assert!(error.contains(expected), "{error} lacks {expected:?}");
        }
        let error = jsonl_entries("{\"program\": \"a\"}\n{oops\n").unwrap_err();
        assert!(error.to_string().starts_with("line 2:"), "{error}");
        assert!(parse(vec![spec(json!({})); MAX_BATCH + 1]).is_err());
        assert_eq!(
            parse(vec![spec(json!({})); MAX_BATCH]).unwrap().len(),
            MAX_BATCH
        );
        let most: Vec<i64> = (1..=crate::limits::MAX_DEPENDENCIES as i64).collect();
        assert!(parse(vec![spec(json!({ "after": most }))]).is_ok());
        let too_many: Vec<i64> = (1..=crate::limits::MAX_DEPENDENCIES as i64 + 1).collect();
        let error = parse(vec![spec(json!({ "after": too_many }))]).unwrap_err();
        assert!(
            error.to_string().contains("too many dependencies"),
            "{error}"
        );
    }
}

//! The CLI over event streams: `aura submit --follow` of a real encode, `aura submit --from` a JSON-lines
//! pipeline then `aura wait` on it, and a bad batch refused before anything is sent.

use super::media::have_ffmpeg;
use super::*;

/// The CLI with `stdin` fed to it.
fn cli_with_stdin(daemon: &Daemon, args: &[&str], stdin: &str) -> Output {
    use std::io::Write;
    let mut child = daemon
        .cli_command(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run aura");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    child.wait_with_output().expect("aura output")
}

#[test]
fn submit_follow_of_an_encode_prints_progress_to_100_percent_then_the_outcome() {
    if !have_ffmpeg() {
        return;
    }
    let daemon = Daemon::start(&[]);
    let out_file = daemon.scratch().join("follow.mp4");
    let out_file = out_file.to_str().expect("utf-8 path");
    let out = daemon.cli(&[
        "submit",
        "--follow",
        "--",
        "ffmpeg",
        "-nostdin",
        "-y",
        "-f",
        "lavfi",
        "-i",
        "testsrc=duration=3:size=320x240:rate=25",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        out_file,
    ]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let id = text
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("submitted job "))
        .expect("the submission line")
        .to_owned();
    // Not a terminal: plain lines, the state changes and the progress.
    for line in [
        format!("job {id}: started"),
        format!("job {id}: exited"),
        format!("job {id}: finished"),
    ] {
        assert!(text.contains(&line), "missing {line:?} in\n{text}");
    }
    let progress: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with(&format!("job {id} ")) && l.contains('%'))
        .collect();
    assert!(
        progress.last().is_some_and(|l| l.contains(" 100.0%")),
        "progress does not reach 100%:\n{text}"
    );
    assert!(
        !text.contains("\u{1b}["),
        "no terminal escapes into a pipe:\n{text}"
    );
    let lines: Vec<&str> = text.lines().collect();
    let n = lines.len();
    assert!(n >= 2, "{text}");
    assert_eq!(lines[n - 2], format!("job {id}: succeeded"), "{text}");
    assert!(
        lines[n - 1].starts_with(&format!("job {id}: memory Start="))
            && lines[n - 1].contains("Peak="),
        "{text}"
    );

    // `aura follow` of a job that has ended replays its history and exits with its code.
    let out = daemon.cli(&["submit", "--quiet", "--", "sh", "-c", "exit 3"]);
    let id = stdout(&out).trim().to_owned();
    let out = daemon.cli(&["follow", &id]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let text = stdout(&out);
    assert!(
        text.contains(&format!("job {id}: failed (exit 3)")),
        "{text}"
    );
}

#[test]
fn a_pipeline_whose_first_step_fails_ends_the_rest_dependency_failed_and_wait_says_so() {
    let daemon = Daemon::start(&[]);
    let jsonl = "\
# a failing first step, then two that depend on it
{\"name\": \"a\", \"program\": \"/bin/false\"}
{\"name\": \"b\", \"program\": \"/bin/true\", \"after\": [\"a\"]}

{\"program\": \"/bin/true\", \"after\": [\"b\"]}
";
    let file = daemon.scratch().join("pipeline.jsonl");
    std::fs::write(&file, jsonl).expect("write jsonl");
    let out = daemon.cli(&[
        "submit",
        "--quiet",
        "--from",
        file.to_str().expect("utf-8 path"),
    ]);
    assert!(out.status.success(), "{out:?}");
    let ids: Vec<String> = stdout(&out).lines().map(str::to_owned).collect();
    assert_eq!(ids.len(), 3, "one id per line: {ids:?}");
    let mut args = vec!["wait"];
    args.extend(ids.iter().map(String::as_str));
    let out = daemon.cli(&args);
    let text = stdout(&out);
    // The first failing job's exit code: /bin/false exits 1.
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        text.contains(&format!("job {}: failed (exit 1)", ids[0])),
        "{text}"
    );
    for (i, id) in ids.iter().enumerate().skip(1) {
        assert!(
            text.contains(&format!("job {id}: dependency_failed (job {}", ids[i - 1])),
            "{text}"
        );
    }
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let client = daemon.client();
    for (i, id) in ids.iter().enumerate().skip(1) {
        let view = rt
            .block_on(client.get(JobId(id.parse().expect("an id"))))
            .expect("get");
        assert_eq!(
            outcome(&view),
            &Outcome::DependencyFailed {
                job_id: JobId(ids[i - 1].parse().expect("an id")),
                outcome: if i == 1 {
                    "failed"
                } else {
                    "dependency_failed"
                }
                .into(),
            }
        );
        assert!(view.job.state.run().is_none(), "never ran: {view:?}");
    }

    // The same file from stdin, waited for by `submit --wait`: the table, then the outcomes.
    let out = cli_with_stdin(&daemon, &["submit", "--from", "-", "--wait"], jsonl);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let text = stdout(&out);
    assert!(text.starts_with("submitted 3 jobs"), "{text}");
    assert_eq!(text.matches("dependency_failed (job").count(), 2, "{text}");
}

#[test]
fn a_bad_batch_is_refused_with_its_line_and_nothing_is_queued() {
    let daemon = Daemon::start(&[]);
    let count = || {
        let out = daemon.cli(&["jobs", "--json"]);
        let jobs: Vec<serde_json::Value> =
            serde_json::from_slice(&out.stdout).expect("jobs --json");
        jobs.len()
    };
    let before = count();

    let out = cli_with_stdin(
        &daemon,
        &["submit", "--from", "-"],
        "{\"program\": \"true\"}\n\n{\"program\": \"true\", oops}\n",
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 3: not JSON"), "{err}");

    let out = cli_with_stdin(
        &daemon,
        &["submit", "--from", "-"],
        "{\"program\": \"true\"}\n{\"program\": \"true\", \"after\": [\"nobody\"]}\n",
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("job 2: after names \"nobody\""), "{err}");

    // A program after `--` and --from are one or the other.
    let out = daemon.cli(&["submit", "--from", "-", "--", "true"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");

    assert_eq!(count(), before, "nothing was queued");
}

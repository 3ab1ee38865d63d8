//! How the CLI words what it prints about jobs: states and outcomes, event lines, progress figures
//! (the plain lines of `aura follow`/`aura wait`, the bars' messages, `aura top`'s column), and what
//! operator commands report (the node's state, bulk cancels) — pure functions, shared by the commands
//! and tested on their own.

use aura_client::{CancelResult, JobView};
use aura_model::{
    EngineStatus, ExitStatus, Job, JobEventRecord, JobId, JobState, Outcome, Progress, Timestamp,
};

/// A job's state in a few words: `running`, `failed (exit 1)`, `dependency_failed (job 3 failed)`.
pub fn describe_state(view: &JobView) -> String {
    match &view.job.state {
        JobState::Queued { .. } => "queued".into(),
        JobState::Held { .. } => "held".into(),
        JobState::Running { .. } => "running".into(),
        JobState::Paused { .. } => "paused".into(),
        JobState::Stopping { reason, .. } => format!("stopping ({reason:?})").to_lowercase(),
        JobState::Finished(f) => match (&f.outcome, f.exit) {
            (Outcome::Failed { exit_code }, _) => format!("failed (exit {exit_code})"),
            (Outcome::Killed { signal }, _) => format!("killed (signal {signal})"),
            (Outcome::FailedToStart { error }, _) => format!("failed to start: {error}"),
            (Outcome::Interrupted { reason }, _) => format!("interrupted: {reason}"),
            (Outcome::Quarantined { reason, .. }, _) => format!("quarantined: {reason}"),
            (Outcome::StorageExhausted { error }, _) => {
                format!("storage exhausted (no room to start): {error}")
            }
            (Outcome::DependencyFailed { job_id, outcome }, _) => {
                format!("dependency_failed (job {job_id} {outcome})")
            }
            (o, Some(ExitStatus::Code(c))) if !o.is_success() => format!("{} (exit {c})", o.name()),
            (o, Some(ExitStatus::Signal(s))) if !o.is_success() => {
                format!("{} (signal {s})", o.name())
            }
            (o, _) => o.name().to_owned(),
        },
    }
}

/// An event's kind and detail as the log line shows them.
pub fn event_parts(event: &impl aura_model::LoggedEvent) -> (String, serde_json::Value) {
    event
        .to_parts()
        .unwrap_or_else(|e| ("?".to_owned(), serde_json::Value::String(e.to_string())))
}

/// A detail object as `key=value` pairs (its accounting left out: `aura show` prints that in full; so
/// are fields without a value, which say nothing).
pub fn compact(detail: &serde_json::Value) -> String {
    match detail {
        serde_json::Value::Null => String::new(),
        serde_json::Value::Object(map) => map
            .iter()
            .filter(|(k, v)| *k != "accounting" && !v.is_null())
            .map(|(k, v)| format!("{k}={}", shown(v)))
            .collect::<Vec<_>>()
            .join(" "),
        other => shown(other),
    }
}

/// A detail value for people: strings bare, readings rounded (`0.8` for a share read as
/// 0.80000000000000004), nested objects and lists compact.
fn shown(value: &serde_json::Value) -> String {
    use serde_json::Value;
    match value {
        Value::String(s) => s.clone(),
        Value::Number(n) if n.is_f64() => n.as_f64().map_or(n.to_string(), |f| {
            let text = format!("{f:.3}");
            text.trim_end_matches('0').trim_end_matches('.').to_owned()
        }),
        Value::Array(items) => format!(
            "[{}]",
            items.iter().map(shown).collect::<Vec<_>>().join(",")
        ),
        Value::Object(map) => format!(
            "{{{}}}",
            map.iter()
                .map(|(k, v)| format!("{k}:{}", shown(v)))
                .collect::<Vec<_>>()
                .join(",")
        ),
        other => other.to_string(),
    }
}

/// An event's detail for people: what an operator did worded (`as job 12 by alice`, `0 → 5 by
/// alice`), anything else as `key=value` pairs ([`compact`]). A detail not of the shape its kind has
/// is shown as it came.
pub fn describe_event(kind: &str, detail: &serde_json::Value) -> String {
    worded(kind, detail).unwrap_or_else(|| compact(detail))
}

fn worded(kind: &str, detail: &serde_json::Value) -> Option<String> {
    let by = match detail.get("by") {
        Some(serde_json::Value::String(name)) => format!(" by {name}"),
        _ => String::new(),
    };
    let number = |key: &str| detail.get(key).and_then(serde_json::Value::as_f64);
    Some(match kind {
        "held" | "released" | "drained" | "undrained" => by.trim_start().to_owned(),
        "paused" => match number("took_ms") {
            Some(ms) => format!("{}{by}", format_args!("frozen in {ms:.0} ms")),
            None => by.trim_start().to_owned(),
        },
        "resumed" => format!("after {} paused{by}", short_secs(number("paused_secs")?)),
        "priority_changed" => format!(
            "{} → {}{by}",
            detail.get("from")?.as_i64()?,
            detail.get("to")?.as_i64()?
        ),
        "retried" => format!("as job {}{by}", detail.get("job_id")?.as_i64()?),
        "operator_action" => {
            let more = match detail.get("detail") {
                Some(serde_json::Value::String(more)) => format!(" ({more})"),
                _ => String::new(),
            };
            format!(
                "{} job {}{by}{more}",
                detail.get("action")?.as_str()?,
                detail.get("job_id")?.as_i64()?
            )
        }
        _ => return None,
    })
}

/// One job event as a line: `job 7: started pid=123 backend=hybrid …`. The `exited` event's memory line
/// is left out: the end of `aura follow` prints it on a line of its own.
pub fn event_line(record: &JobEventRecord) -> String {
    let (kind, mut detail) = event_parts(&record.event);
    if let serde_json::Value::Object(map) = &mut detail {
        map.remove("memory");
    }
    let detail = describe_event(&kind, &detail);
    let attempt = if record.attempt > 1 {
        format!(" (attempt {})", record.attempt)
    } else {
        String::new()
    };
    if detail.is_empty() {
        format!("job {}: {kind}{attempt}", record.job_id)
    } else {
        format!("job {}: {kind}{attempt} {detail}", record.job_id)
    }
}

/// A byte count in few characters: `512B`, `1.2MiB`.
pub fn short_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes}B")
    } else {
        format!("{value:.1}{}", UNITS[unit])
    }
}

/// Seconds as a short duration: `5s`, `1m05s`, `2h03m`; `?` for a figure that is not one.
pub fn short_secs(secs: f64) -> String {
    if !secs.is_finite() || secs < 0.0 {
        return "?".to_owned();
    }
    // Whole seconds are enough for an estimate; the cast saturates far beyond any real ETA.
    let s = secs.round() as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// A speed factor: `2.9x`, `0.45x` (two digits below 1, where one would read as 0).
fn speed(x: f64) -> String {
    if x < 1.0 {
        format!("{x:.2}x")
    } else {
        format!("{x:.1}x")
    }
}

/// Progress figures as `key=value` words after the percent: `42.0% fps=81.2 speed=2.9x eta=5s
/// size=1.2MiB`. Figures the job did not report are left out; without a percent, the media time written
/// stands in (`time=12.0s`).
pub fn progress_figures(p: &Progress) -> String {
    let mut words = Vec::with_capacity(6);
    match p.percent {
        Some(percent) => words.push(format!("{percent:.1}%")),
        None => {
            if let Some(t) = p.out_time_secs {
                words.push(format!("time={t:.1}s"));
            }
        }
    }
    if let Some(fps) = p.fps {
        words.push(format!("fps={fps:.1}"));
    }
    if let Some(x) = p.speed {
        words.push(format!("speed={}", speed(x)));
    }
    if let Some(eta) = p.eta_secs {
        words.push(format!("eta={}", short_secs(eta)));
    }
    if let Some(size) = p.total_size {
        words.push(format!("size={}", short_size(size)));
    }
    if words.is_empty() {
        if let Some(frame) = p.frame {
            words.push(format!("frame={frame}"));
        } else {
            words.push("no figures yet".to_owned());
        }
    }
    words.join(" ")
}

/// The plain line for one progress update: `job 7 42.0% fps=81.2 speed=2.9x eta=5s size=1.2MiB`.
pub fn progress_line(job: JobId, p: &Progress) -> String {
    format!("job {job} {}", progress_figures(p))
}

/// Progress for a narrow column (`aura top`): `42% 81fps 2.9x eta 5s`.
pub fn progress_cell(p: &Progress) -> String {
    let mut words = Vec::with_capacity(4);
    if let Some(percent) = p.percent {
        words.push(format!("{percent:.0}%"));
    } else if let Some(t) = p.out_time_secs {
        words.push(short_secs(t));
    }
    if let Some(fps) = p.fps {
        words.push(format!("{fps:.0}fps"));
    }
    if let Some(x) = p.speed {
        words.push(speed(x));
    }
    if let Some(eta) = p.eta_secs {
        words.push(format!("eta {}", short_secs(eta)));
    }
    words.join(" ")
}

/// The node's lines of `aura status` (and what `aura drain`/`aura undrain` print): drained or open, the
/// jobs operators paused and hold, and whether running jobs' CPU is capped.
pub fn node_lines(status: &EngineStatus) -> Vec<String> {
    let node = if status.draining {
        "drained: nothing new starts until `aura undrain`; running jobs finish"
    } else {
        "open: queued jobs start as admission allows"
    };
    let throttle = match &status.throttled {
        Some(reason) => format!("running jobs' CPU capped: {reason}"),
        None => "off".to_owned(),
    };
    vec![
        format!("node:           {node}"),
        format!("paused jobs:    {} (`aura resume ID`)", status.paused_jobs),
        format!("held jobs:      {} (`aura release ID`)", status.held),
        format!("cpu throttle:   {throttle}"),
    ]
}

/// The jobs a dry run picked, counted by state: `3 running, 9 queued` — those with a tree first.
pub fn by_state(result: &CancelResult) -> String {
    const ORDER: [&str; 5] = ["running", "paused", "stopping", "queued", "held"];
    let rank = |state: &str| {
        ORDER
            .iter()
            .position(|s| *s == state)
            .unwrap_or(ORDER.len())
    };
    let mut counts: Vec<(&String, &usize)> = result.by_state.iter().collect();
    // Stable: states this version does not know keep their (alphabetical) order, after the known ones.
    counts.sort_by_key(|(state, _)| rank(state));
    counts
        .iter()
        .map(|(state, n)| format!("{n} {state}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn jobs(n: usize) -> String {
    if n == 1 {
        "1 job".to_owned()
    } else {
        format!("{n} jobs")
    }
}

/// The question `aura cancel --all` asks on a terminal: `Cancel 12 jobs (3 running, 9 queued)?`.
pub fn bulk_question(kill: bool, preview: &CancelResult) -> String {
    let verb = if kill { "Kill" } else { "Cancel" };
    let states = by_state(preview);
    if states.is_empty() {
        format!("{verb} {}?", jobs(preview.count))
    } else {
        format!("{verb} {} ({states})?", jobs(preview.count))
    }
}

/// What a bulk cancel did: `cancelled 12 jobs`, `killed 1 job`.
pub fn bulk_done(kill: bool, count: usize) -> String {
    format!(
        "{} {}",
        if kill { "killed" } else { "cancelled" },
        jobs(count)
    )
}

/// How long a job's attempt has been paused, for `aura show`: `paused since … (5s so far; 1m05s
/// before)`, or `1m05s in all` once it runs again; `None` for a job never paused.
pub fn paused_time(state: &JobState, now: Timestamp) -> Option<String> {
    match state {
        JobState::Paused { run, since } => {
            let so_far = short_secs(now.since(*since).as_secs_f64());
            Some(if run.paused_secs > 0.0 {
                format!(
                    "since {since} ({so_far} so far; {} before)",
                    short_secs(run.paused_secs)
                )
            } else {
                format!("since {since} ({so_far} so far)")
            })
        }
        _ => {
            let secs = state.run()?.paused_secs;
            (secs > 0.0).then(|| {
                format!(
                    "{} in all (counted toward neither its timeout nor stall detection)",
                    short_secs(secs)
                )
            })
        }
    }
}

/// A job's retry links, for `aura show`: `retry of job 7; retried as job 12`.
pub fn retry_links(job: &Job) -> Option<String> {
    let links: Vec<String> = [
        job.retry_of.map(|id| format!("retry of job {id}")),
        job.retried_as.map(|id| format!("retried as job {id}")),
    ]
    .into_iter()
    .flatten()
    .collect();
    (!links.is_empty()).then(|| links.join("; "))
}

/// `aura cleanup`: one line per task with what it did (or would do), then, for a dry run or errors, the
/// actions and messages indented under it.
pub fn janitor_run_lines(answer: &aura_model::janitor::RunAnswer, dry_run: bool) -> Vec<String> {
    let verb = if dry_run { "would free" } else { "freed" };
    let mut lines = Vec::new();
    for run in &answer.reports {
        let r = &run.report;
        let mut line = format!(
            "{:<8} {} files removed, {} archived or compressed, {verb} {}",
            run.task.as_str(),
            r.files_removed,
            r.archived,
            short_size(r.bytes_freed)
        );
        if r.skipped > 0 {
            line.push_str(&format!(
                ", {} skipped (locked, live or a mount)",
                r.skipped
            ));
        }
        if r.errors > 0 {
            line.push_str(&format!(", {} errors", r.errors));
        }
        line.push_str(&format!(" ({})", short_secs(r.seconds)));
        lines.push(line);
        if dry_run {
            for a in &r.actions {
                let kind = serde_json::to_value(a.kind)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default();
                lines.push(format!("  {kind:<8} {} ({})", a.path, short_size(a.bytes)));
            }
        }
        for e in &r.error_messages {
            lines.push(format!("  error: {e}"));
        }
    }
    lines
}

/// A period in its largest whole unit: `7d`, `24h`, `30m`, `90s`.
fn span(secs: u64) -> String {
    match secs {
        s if s >= 86_400 && s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s >= 3_600 && s % 3_600 == 0 => format!("{}h", s / 3_600),
        s if s >= 60 && s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// `aura cleanup --status`: each task's schedule, last and next run, and totals since the daemon started.
pub fn janitor_status_lines(
    status: &aura_model::janitor::JanitorStatus,
    now: Timestamp,
) -> Vec<String> {
    let when = |t: Option<Timestamp>| match t {
        None => "-".to_owned(),
        Some(t) if t <= now => format!("{} ago", short_secs(now.since(t).as_secs_f64())),
        Some(t) => format!("in {}", short_secs(t.since(now).as_secs_f64())),
    };
    let mut lines = vec![format!(
        "{:<8} {:>3} {:>7} {:>7} {:>12} {:>12} {:>8} {:>9} {:>6}",
        "TASK", "ON", "EVERY", "AGE", "LAST", "NEXT", "REMOVED", "FREED", "ERRORS"
    )];
    for t in &status.tasks {
        lines.push(format!(
            "{:<8} {:>3} {:>7} {:>7} {:>12} {:>12} {:>8} {:>9} {:>6}",
            t.task.as_str(),
            if t.enabled { "yes" } else { "no" },
            span(t.every_seconds),
            t.older_than_seconds.map_or("-".to_owned(), span),
            when(t.last_run),
            when(t.next_run),
            t.totals.files_removed,
            short_size(t.totals.bytes_freed),
            t.totals.errors
        ));
    }
    if let Some(task) = status.running {
        lines.push(format!("running now: {task}"));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_details_show_readings_rounded_and_strings_bare() {
        let detail = serde_json::json!({
            "reason": "available memory 4.0 GiB",
            "available_memory": 0.1 + 0.07,
            "psi": 12.345678,
            "reading": {"outside_cpu": 0.5, "cores": 2},
            "kills": 3,
            "accounting": {"hidden": true}
        });
        assert_eq!(
            compact(&detail),
            "available_memory=0.17 kills=3 psi=12.346 reading={cores:2,outside_cpu:0.5} \
             reason=available memory 4.0 GiB"
        );
        assert_eq!(compact(&serde_json::json!(1.0)), "1");
    }

    #[test]
    fn progress_lines_show_what_was_reported_and_nothing_else() {
        let full = Progress {
            percent: Some(42.0),
            fps: Some(81.23),
            speed: Some(2.94),
            eta_secs: Some(5.4),
            total_size: Some(1_258_291),
            out_time_secs: Some(12.0),
            ..Progress::default()
        };
        assert_eq!(
            progress_line(JobId(7), &full),
            "job 7 42.0% fps=81.2 speed=2.9x eta=5s size=1.2MiB"
        );
        assert_eq!(progress_cell(&full), "42% 81fps 2.9x eta 5s");
        let no_percent = Progress {
            out_time_secs: Some(12.04),
            speed: Some(0.456),
            eta_secs: Some(3725.0),
            ..Progress::default()
        };
        assert_eq!(
            progress_line(JobId(3), &no_percent),
            "job 3 time=12.0s speed=0.46x eta=1h02m"
        );
        assert_eq!(
            progress_line(JobId(3), &Progress::default()),
            "job 3 no figures yet"
        );
        assert_eq!(
            progress_line(
                JobId(3),
                &Progress {
                    frame: Some(9),
                    ..Progress::default()
                }
            ),
            "job 3 frame=9"
        );
        assert_eq!(short_secs(65.0), "1m05s");
        assert_eq!(short_secs(f64::NAN), "?");
        assert_eq!(short_secs(f64::INFINITY), "?");
        assert_eq!(short_size(512), "512B");
    }

    #[test]
    fn event_lines_name_the_job_and_leave_the_memory_line_to_the_end() {
        let record: JobEventRecord = serde_json::from_value(serde_json::json!({
            "seq": 5, "job_id": 7, "attempt": 2, "at": "2026-11-22T10:00:00Z",
            "kind": "dependency_failed", "detail": {"job_id": 6, "outcome": "failed"}
        }))
        .expect("a record");
        assert_eq!(
            event_line(&record),
            "job 7: dependency_failed (attempt 2) job_id=6 outcome=failed"
        );
        let record: JobEventRecord = serde_json::from_value(serde_json::json!({
            "seq": 6, "job_id": 7, "attempt": 1, "at": "2026-11-22T10:00:00Z",
            "kind": "dependencies_met", "detail": null
        }))
        .expect("a record");
        assert_eq!(event_line(&record), "job 7: dependencies_met");
    }

    #[test]
    fn operator_events_read_as_what_was_done_and_by_whom() {
        use serde_json::json;
        let cases = [
            (
                "paused",
                json!({"by": "alice", "took_ms": 12.4}),
                "frozen in 12 ms by alice",
            ),
            (
                "paused",
                json!({"by": null, "took_ms": 3.0}),
                "frozen in 3 ms",
            ),
            (
                "resumed",
                json!({"by": "alice", "paused_secs": 65.2}),
                "after 1m05s paused by alice",
            ),
            ("held", json!({"by": "ops"}), "by ops"),
            ("released", json!({"by": null}), ""),
            (
                "priority_changed",
                json!({"from": 0, "to": -5, "by": "ops"}),
                "0 → -5 by ops",
            ),
            (
                "retried",
                json!({"job_id": 12, "by": "ci"}),
                "as job 12 by ci",
            ),
            ("drained", json!({"by": "admin"}), "by admin"),
            (
                "operator_action",
                json!({"action": "retry", "job_id": 7, "by": "ci", "detail": "as job 12"}),
                "retry job 7 by ci (as job 12)",
            ),
            (
                "operator_action",
                json!({"action": "hold", "job_id": 3}),
                "hold job 3",
            ),
            // A detail of another shape is shown as it came; other kinds as key=value pairs.
            ("retried", json!({"job": "x"}), "job=x"),
            (
                "submitted",
                json!({"program": "sleep", "priority": 0, "retry_of": 7}),
                "priority=0 program=sleep retry_of=7",
            ),
            (
                "requeued",
                json!({"attempt": 2, "reason": null}),
                "attempt=2",
            ),
        ];
        for (kind, detail, expected) in cases {
            assert_eq!(describe_event(kind, &detail), expected, "{kind} {detail}");
        }
        let record: JobEventRecord = serde_json::from_value(json!({
            "seq": 9, "job_id": 7, "attempt": 1, "at": "2026-11-22T10:00:00Z",
            "kind": "retried", "detail": {"job_id": 12, "by": "ci"}
        }))
        .expect("a record");
        assert_eq!(event_line(&record), "job 7: retried as job 12 by ci");
    }

    #[test]
    fn the_node_shows_drain_pauses_holds_and_throttle() {
        let mut status: EngineStatus = serde_json::from_value(serde_json::json!({
            "backend": "hybrid", "backend_detail": "", "accepting": true,
            "max_concurrent": 2, "running": 1, "queued": 3
        }))
        .expect("a status");
        assert_eq!(
            node_lines(&status),
            [
                "node:           open: queued jobs start as admission allows",
                "paused jobs:    0 (`aura resume ID`)",
                "held jobs:      0 (`aura release ID`)",
                "cpu throttle:   off",
            ]
        );
        status.draining = true;
        status.paused_jobs = 2;
        status.held = 1;
        status.throttled = Some("CPU outside Aura 92 %".into());
        let lines = node_lines(&status);
        assert!(
            lines[0].contains("drained: nothing new starts"),
            "{lines:?}"
        );
        assert_eq!(lines[1], "paused jobs:    2 (`aura resume ID`)");
        assert_eq!(lines[2], "held jobs:      1 (`aura release ID`)");
        assert_eq!(
            lines[3],
            "cpu throttle:   running jobs' CPU capped: CPU outside Aura 92 %"
        );
    }

    #[test]
    fn bulk_cancels_ask_with_the_count_by_state_and_report_what_they_did() {
        let preview: CancelResult = serde_json::from_value(serde_json::json!({
            "count": 12, "ids": [], "dry_run": true,
            "by_state": {"queued": 9, "running": 3, "zombie": 1, "held": 1}
        }))
        .expect("a result");
        assert_eq!(
            bulk_question(false, &preview),
            "Cancel 12 jobs (3 running, 9 queued, 1 held, 1 zombie)?"
        );
        let one = CancelResult {
            count: 1,
            ..CancelResult::default()
        };
        assert_eq!(bulk_question(true, &one), "Kill 1 job?");
        assert_eq!(bulk_done(false, 12), "cancelled 12 jobs");
        assert_eq!(bulk_done(true, 1), "killed 1 job");
        assert_eq!(bulk_done(true, 0), "killed 0 jobs");
    }

    #[test]
    fn paused_time_and_retry_links_for_the_job_detail() {
        use aura_model::{JobSpec, Run};
        let at = Timestamp::from_unix_millis;
        let run = |paused_secs: f64| -> Run {
            serde_json::from_value(serde_json::json!({
                "started_at": at(0),
                "tree": {"backend": "process_group", "pid": 1, "start_ticks": 0},
                "cwd": "/tmp",
                "paused_secs": paused_secs
            }))
            .expect("a run")
        };
        assert_eq!(
            paused_time(&JobState::Running { run: run(0.0) }, at(0)),
            None
        );
        assert_eq!(paused_time(&JobState::Queued { since: at(0) }, at(0)), None);
        assert_eq!(
            paused_time(&JobState::Running { run: run(65.0) }, at(0)).as_deref(),
            Some("1m05s in all (counted toward neither its timeout nor stall detection)")
        );
        let paused = JobState::Paused {
            run: run(10.0),
            since: at(60_000),
        };
        let text = paused_time(&paused, at(65_000)).expect("paused");
        assert!(text.ends_with("(5s so far; 10s before)"), "{text}");
        let mut job = Job::new(JobId(7), JobSpec::new("true", Vec::<String>::new()), at(0));
        assert_eq!(retry_links(&job), None);
        job.retry_of = Some(JobId(3));
        assert_eq!(retry_links(&job).as_deref(), Some("retry of job 3"));
        job.retried_as = Some(JobId(12));
        assert_eq!(
            retry_links(&job).as_deref(),
            Some("retry of job 3; retried as job 12")
        );
    }

    #[test]
    fn janitor_lines_say_what_each_task_did_and_when_it_runs() {
        use aura_model::janitor::{Action, ActionKind, RunAnswer, TaskName, TaskReport, TaskRun};
        let answer = RunAnswer {
            reports: vec![TaskRun {
                task: TaskName::Tmp,
                report: TaskReport {
                    files_removed: 2,
                    bytes_freed: 8192,
                    skipped: 1,
                    errors: 1,
                    seconds: 0.2,
                    error_messages: vec!["tmp/x: permission denied".into()],
                    actions: vec![Action {
                        path: "tmp/old.bin".into(),
                        kind: ActionKind::Remove,
                        bytes: 4096,
                    }],
                    ..TaskReport::default()
                },
            }],
        };
        assert_eq!(
            janitor_run_lines(&answer, true),
            [
                "tmp      2 files removed, 0 archived or compressed, would free 8.0KiB, 1 skipped (locked, live or a mount), 1 errors (0s)",
                "  remove   tmp/old.bin (4.0KiB)",
                "  error: tmp/x: permission denied",
            ]
        );
        assert_eq!(
            janitor_run_lines(&answer, false).len(),
            2,
            "a real run lists no actions"
        );
        assert_eq!(
            (span(7 * 86_400), span(86_400), span(3_600), span(90)),
            ("7d".into(), "1d".into(), "1h".into(), "90s".into())
        );
        let status: aura_model::janitor::JanitorStatus = serde_json::from_value(serde_json::json!({
            "low_free_disk": 0.1, "running": "work",
            "tasks": [{"task": "work", "enabled": true, "every_seconds": 86400, "older_than_seconds": 604800,
                       "last_run": "2026-12-07T08:00:00.000Z", "next_run": "2026-12-08T08:00:00.000Z",
                       "totals": {"runs": 1, "files_removed": 3, "archived": 1, "bytes_freed": 1048576, "errors": 0}}]
        }))
        .unwrap();
        let now: Timestamp =
            serde_json::from_value(serde_json::json!("2026-12-07T09:00:00.000Z")).unwrap();
        let lines = janitor_status_lines(&status, now);
        assert_eq!(lines.len(), 3);
        assert!(
            lines[1].starts_with(
                "work     yes      1d      7d    1h00m ago    in 23h00m        3    1.0MiB      0"
            ),
            "{}",
            lines[1]
        );
        assert_eq!(lines[2], "running now: work");
    }
}

//! How the CLI words what it prints about jobs: states and outcomes, event lines, progress figures
//! (the plain lines of `aura follow`/`aura wait`, the bars' messages, `aura top`'s column), and what
//! operator commands report (the node's state, bulk cancels), the tables of `aura jobs` and `aura
//! nodes` — pure functions, shared by the commands and tested on their own.

use aura_client::{CancelResult, JobView, NodeList};
use aura_model::{
    ByteSize, EngineStatus, ExitStatus, Job, JobEventRecord, JobId, JobState, Outcome, Progress,
    Timestamp,
};
use std::time::Duration;

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

/// A timestamp to the second, for a table: `2026-11-22 15:40:01`.
pub fn short_time(t: Timestamp) -> String {
    let text = t.to_string();
    // 2026-11-22T15:40:01.123Z → 2026-11-22 15:40:01
    text.get(..19)
        .map(|s| s.replacen('T', " ", 1))
        .unwrap_or(text)
}

/// How long a job has run (until `now` while it runs); `None` for one that never started.
pub fn duration_of(view: &JobView, now: Timestamp) -> Option<Duration> {
    let run = view.job.state.run()?;
    let end = match &view.job.state {
        JobState::Finished(f) => f.finished_at,
        _ => now,
    };
    Some(end.since(run.started_at))
}

/// A job's peak memory: its accounting once finished, its live reading while it runs.
pub fn peak_memory(view: &JobView) -> Option<ByteSize> {
    match &view.job.state {
        JobState::Finished(f) => f.accounting.memory_peak,
        _ => view.live.as_ref().and_then(|l| l.memory_peak).map(ByteSize),
    }
}

/// `text` cut to `max` characters, the last one `…` where it was longer.
fn clipped(text: String, max: usize) -> String {
    if text.chars().count() > max {
        text.chars().take(max - 1).collect::<String>() + "…"
    } else {
        text
    }
}

/// The widest a NODE column of `aura jobs` grows.
const NODE_WIDTH: usize = 20;

/// `aura jobs`: a header and one line per job — id, state, command, start, duration, peak memory, and
/// in fleet mode, when any job listed has one, the node that holds it (`-` for a job none has claimed).
pub fn job_table(jobs: &[JobView], now: Timestamp) -> Vec<String> {
    let node_width = jobs
        .iter()
        .filter_map(|v| v.job.node.as_deref())
        .map(|n| n.chars().count().clamp(4, NODE_WIDTH))
        .max();
    let node = |text: &str| match node_width {
        Some(w) => format!("  {text:<w$}"),
        None => String::new(),
    };
    let mut lines = vec![format!(
        "{:>6}  {:<22}{}  {:<40}  {:<19}  {:>9}  {:>10}",
        "ID",
        "STATE",
        node("NODE"),
        "COMMAND",
        "STARTED",
        "DURATION",
        "PEAK MEM"
    )];
    for view in jobs {
        let command = clipped(view.job.spec.command_line(), 40);
        let state = clipped(describe_state(view), 22);
        let held_by = clipped(
            view.job.node.clone().unwrap_or_else(|| "-".into()),
            NODE_WIDTH,
        );
        let started = view
            .job
            .state
            .run()
            .map(|r| short_time(r.started_at))
            .unwrap_or_else(|| "-".into());
        let duration = duration_of(view, now)
            .map(|d| format!("{:.1}s", d.as_secs_f64()))
            .unwrap_or_else(|| "-".into());
        let peak = peak_memory(view)
            .map(|b| b.to_string())
            .unwrap_or_else(|| "-".into());
        lines.push(format!(
            "{:>6}  {state:<22}{}  {command:<40}  {started:<19}  {duration:>9}  {peak:>10}",
            view.job.id.0,
            node(&held_by)
        ));
    }
    lines
}

/// What `aura nodes` prints on a single node.
pub const NOT_A_FLEET: &str = "not in fleet mode (embedded SQLite store): one node, this one";

/// A heartbeat's age: `0.4s ago`, `12.0s ago`, `3m05s ago`.
pub fn heartbeat_age(ms: u64) -> String {
    if ms < 60_000 {
        format!("{:.1}s ago", ms as f64 / 1000.0)
    } else {
        format!("{} ago", short_secs(ms as f64 / 1000.0))
    }
}

/// CPUs as few characters: `16`, `1.5`.
fn cpus(n: f64) -> String {
    let text = format!("{n:.1}");
    text.strip_suffix(".0").map(str::to_owned).unwrap_or(text)
}

/// `aura nodes`: a header and one line per node — name (`*`: the node that answered), state, tags,
/// running and claimed jobs, capacity, heartbeat age; on a single node the one line [`NOT_A_FLEET`].
pub fn node_table(list: &NodeList) -> Vec<String> {
    if !list.fleet {
        return vec![NOT_A_FLEET.to_owned()];
    }
    let tags: Vec<String> = list
        .nodes
        .iter()
        .map(|n| {
            if n.tags.is_empty() {
                "-".to_owned()
            } else {
                n.tags.join(",")
            }
        })
        .collect();
    let width = |min: usize, texts: &mut dyn Iterator<Item = usize>| texts.fold(min, usize::max);
    let name_w = width(4, &mut list.nodes.iter().map(|n| n.name.chars().count()));
    let tags_w = width(4, &mut tags.iter().map(|t| t.chars().count()));
    let mut lines = vec![format!(
        "  {:<name_w$}  {:<5}  {:<tags_w$}  {:>7}  {:>7}  {:>5}  {:>9}  HEARTBEAT",
        "NAME", "STATE", "TAGS", "RUNNING", "CLAIMED", "CPUS", "MEMORY"
    )];
    for (node, tags) in list.nodes.iter().zip(&tags) {
        lines.push(format!(
            "{} {:<name_w$}  {:<5}  {tags:<tags_w$}  {:>7}  {:>7}  {:>5}  {:>9}  {}",
            if node.this_node { "*" } else { " " },
            node.name,
            node.state.as_str(),
            node.running,
            node.claimed,
            cpus(node.capacity.cpus),
            short_size(node.capacity.memory_bytes),
            heartbeat_age(node.heartbeat_age_ms)
        ));
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

    fn node(name: &str, state: aura_model::NodeState, this_node: bool) -> aura_model::NodeView {
        aura_model::NodeView {
            id: format!("{name}-id"),
            name: name.to_owned(),
            tags: Vec::new(),
            url: None,
            state,
            incarnation: 1,
            capacity: aura_model::NodeCapacity {
                cpus: 16.0,
                memory_bytes: 64 << 30,
                gpus: 0,
            },
            running: 0,
            claimed: 0,
            heartbeat_age_ms: 1_234,
            registered_at: Timestamp::from_unix_millis(0),
            this_node,
        }
    }

    #[test]
    fn the_node_table_marks_this_node_and_ages_heartbeats() {
        use aura_model::NodeState;
        let mut first = node("render-1", NodeState::Up, true);
        first.tags = vec!["gpu".into(), "nvenc".into()];
        first.running = 3;
        first.claimed = 1;
        let mut second = node("r2", NodeState::Dead, false);
        second.capacity.cpus = 1.5;
        second.capacity.memory_bytes = 512 << 20;
        second.heartbeat_age_ms = 185_000;
        let list = NodeList {
            fleet: true,
            nodes: vec![first, second],
        };
        assert_eq!(
            node_table(&list),
            [
                "  NAME      STATE  TAGS       RUNNING  CLAIMED   CPUS     MEMORY  HEARTBEAT",
                "* render-1  up     gpu,nvenc        3        1     16    64.0GiB  1.2s ago",
                "  r2        dead   -                0        0    1.5   512.0MiB  3m05s ago",
            ]
        );
        assert_eq!(node_table(&NodeList::default()), [NOT_A_FLEET]);
        assert_eq!(heartbeat_age(400), "0.4s ago");
        assert_eq!(heartbeat_age(59_960), "60.0s ago");
        assert_eq!(heartbeat_age(3_600_000), "1h00m ago");
    }

    #[test]
    fn the_job_table_has_a_node_column_only_when_a_job_has_a_node() {
        use aura_model::JobSpec;
        let at = Timestamp::from_unix_millis;
        let view = |id: i64, node: Option<&str>| {
            let mut job = Job::new(JobId(id), JobSpec::new("sleep", ["5"]), at(0));
            job.node = node.map(str::to_owned);
            JobView {
                job,
                live: None,
                waiting: None,
            }
        };
        let single = job_table(&[view(2, None), view(1, None)], at(0));
        assert_eq!(single.len(), 3);
        assert!(!single[0].contains("NODE"), "{}", single[0]);
        assert!(
            single[0].starts_with("    ID  STATE                   COMMAND"),
            "{}",
            single[0]
        );
        assert!(
            single[1].starts_with("     2  queued                  sleep 5"),
            "{}",
            single[1]
        );
        let fleet = job_table(
            &[
                view(3, Some("render-1")),
                view(2, None),
                view(1, Some("a-node-with-a-very-long-name")),
            ],
            at(0),
        );
        assert!(
            fleet[0].starts_with("    ID  STATE                   NODE                  COMMAND"),
            "{}",
            fleet[0]
        );
        assert!(
            fleet[1].starts_with("     3  queued                  render-1              sleep 5"),
            "{}",
            fleet[1]
        );
        assert!(
            fleet[2].starts_with("     2  queued                  -                     sleep 5"),
            "{}",
            fleet[2]
        );
        assert!(
            fleet[3].starts_with("     1  queued                  a-node-with-a-very-…  sleep 5"),
            "{}",
            fleet[3]
        );
    }
}

//! How the CLI words what it prints about jobs: states and outcomes, event lines, and progress figures
//! (the plain lines of `aura follow`/`aura wait`, the bars' messages, `aura top`'s column) — pure
//! functions, shared by the commands and tested on their own.

use aura_client::JobView;
use aura_model::{ExitStatus, JobEventRecord, JobId, JobState, Outcome, Progress};

/// A job's state in a few words: `running`, `failed (exit 1)`, `dependency_failed (job 3 failed)`.
pub fn describe_state(view: &JobView) -> String {
    match &view.job.state {
        JobState::Queued { .. } => "queued".into(),
        JobState::Running { .. } => "running".into(),
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

/// A detail object as `key=value` pairs (its accounting left out: `aura show` prints that in full).
pub fn compact(detail: &serde_json::Value) -> String {
    match detail {
        serde_json::Value::Null => String::new(),
        serde_json::Value::Object(map) => map
            .iter()
            .filter(|(k, _)| *k != "accounting")
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

/// One job event as a line: `job 7: started pid=123 backend=hybrid …`. The `exited` event's memory line
/// is left out: the end of `aura follow` prints it on a line of its own.
pub fn event_line(record: &JobEventRecord) -> String {
    let (kind, mut detail) = event_parts(&record.event);
    if let serde_json::Value::Object(map) = &mut detail {
        map.remove("memory");
    }
    let detail = compact(&detail);
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
}

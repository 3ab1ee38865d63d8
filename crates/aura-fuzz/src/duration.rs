//! The `duration` target: durations and stop sequences as users write them: `humantime::parse_duration`
//! (`--timeout 2h`), `StopSequence`/`StopSignal` `FromStr` (`--stop INT:5s,TERM:3s`), and the JSON
//! adapter `aura_model::humantime_serde_compat` (`"timeout": "90s"` or `90`).

use aura_model::{StopSequence, StopSignal, StopStep};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::time::Duration;

/// A duration field as specs and leases declare theirs.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Field(#[serde(with = "aura_model::humantime_serde_compat")] Duration);

/// The bytes as text (when UTF-8) through each text parser, and as a JSON value through the serde adapter.
pub fn duration(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        humantime_text(text);
        stop_signal(text);
        stop_sequence(text);
    }
    serde_field(data);
}

/// What `humantime::format_duration` writes parses back to the same duration, to the nanosecond.
fn humantime_text(text: &str) {
    for input in [text, text.trim()] {
        if let Ok(d) = humantime::parse_duration(input) {
            assert_formats_back(d);
        }
    }
}

fn assert_formats_back(d: Duration) {
    let shown = humantime::format_duration(d).to_string();
    assert_eq!(
        humantime::parse_duration(&shown).ok(),
        Some(d),
        "{d:?} formats as {shown:?}, which does not parse back"
    );
}

/// A parsed signal: its name, its number and its JSON form all parse back to it; case does not matter;
/// the JSON form (bare upper-case names only) accepts a subset of what `FromStr` does.
fn stop_signal(text: &str) {
    let parsed = text.parse::<StopSignal>().ok();
    let lower = text.to_ascii_lowercase().parse::<StopSignal>().ok();
    assert_eq!(lower, parsed, "case changed the signal {text:?} means");
    if let Ok(quoted) = serde_json::to_string(text) {
        if let Ok(from_json) = serde_json::from_str::<StopSignal>(&quoted) {
            assert_eq!(
                Some(from_json),
                parsed,
                "JSON accepts {text:?}, FromStr does not"
            );
        }
    }
    let Some(signal) = parsed else { return };
    assert_eq!(signal.name().parse::<StopSignal>().ok(), Some(signal));
    assert_eq!(
        signal.number().to_string().parse::<StopSignal>().ok(),
        Some(signal)
    );
    let json = serde_json::to_string(&signal).expect("a signal serializes as its name");
    assert_eq!(serde_json::from_str::<StopSignal>(&json).ok(), Some(signal));
}

/// A parsed sequence has one step per non-empty comma part, each that part's signal and grace; written
/// back as `SIGNAL:grace,…` or as JSON it parses to the same steps.
fn stop_sequence(text: &str) {
    let Ok(sequence) = text.parse::<StopSequence>() else {
        return;
    };
    let parts: Vec<&str> = text.split(',').filter(|p| !p.trim().is_empty()).collect();
    assert_eq!(sequence.0.len(), parts.len(), "steps of {text:?}");
    for (step, part) in sequence.0.iter().zip(&parts) {
        let (signal, grace) = part
            .split_once(':')
            .expect("a step that parsed has a SIGNAL:GRACE colon");
        assert_eq!(
            signal.parse::<StopSignal>().ok(),
            Some(step.signal),
            "{part:?}"
        );
        assert_eq!(
            humantime::parse_duration(grace.trim()).ok(),
            Some(step.grace),
            "{part:?}"
        );
        assert_formats_back(step.grace);
    }
    let written = sequence
        .0
        .iter()
        .map(|s| {
            format!(
                "{}:{}",
                s.signal.name(),
                humantime::format_duration(s.grace)
            )
        })
        .collect::<Vec<_>>()
        .join(",");
    assert_eq!(
        written.parse::<StopSequence>().ok().as_ref(),
        Some(&sequence),
        "{text:?} written back as {written:?} parses differently"
    );
    let json = serde_json::to_string(&sequence).expect("a stop sequence serializes");
    assert_eq!(
        serde_json::from_str::<StopSequence>(&json).ok().as_ref(),
        Some(&sequence),
        "{text:?} does not survive JSON as {json}"
    );
    // `total_grace` saturates, so it is safe on any parsed sequence; where no overflow happens it is the
    // exact sum.
    let checked = sequence
        .0
        .iter()
        .try_fold(Duration::ZERO, |sum, s: &StopStep| sum.checked_add(s.grace));
    assert_eq!(sequence.total_grace(), checked.unwrap_or(Duration::MAX));
}

/// The serde adapter: a string reads as `parse_duration` of its trimmed text, a number as seconds in
/// [0, 1e12), nothing else; an accepted duration survives the store's JSON round trip exactly.
fn serde_field(data: &[u8]) {
    let direct = serde_json::from_slice::<Field>(data).ok().map(|f| f.0);
    let expected = match serde_json::from_slice::<Value>(data) {
        Ok(Value::String(s)) => humantime::parse_duration(s.trim()).ok(),
        Ok(Value::Number(n)) => n
            .as_f64()
            .filter(|s| (0.0..1e12).contains(s))
            .map(Duration::from_secs_f64),
        Ok(_) | Err(_) => None,
    };
    assert_eq!(
        direct, expected,
        "the serde adapter disagrees with the JSON value it read"
    );
    let Some(d) = direct else { return };
    let json = serde_json::to_string(&Field(d)).expect("a duration serializes as humantime text");
    assert_eq!(
        serde_json::from_str::<Field>(&json).ok(),
        Some(Field(d)),
        "{d:?} does not survive JSON as {json}"
    );
}

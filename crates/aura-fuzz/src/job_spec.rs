//! The `job_spec` target: a request body of `POST /api/jobs`, parsed and validated as the server does,
//! and the store's round trip of an accepted spec through JSON.

use aura_model::{limits, JobSpec};
use std::time::Duration;

/// Parses `data` as the server parses a submitted body (`serde_json::from_slice`), validates it, and for
/// an accepted spec checks:
/// - validation is deterministic;
/// - the JSON the store writes parses back to an equal spec that validates too, and serializes to the
///   same bytes again (a fixed point: nothing drifts across restarts);
/// - the bounds validation promises hold: a stated memory limit is at least 1 MiB and not below the
///   request, the timeout is in (0, 30 days], the stop sequence's total grace is at most 8 × 1 hour.
pub fn job_spec(data: &[u8]) {
    let Ok(spec) = serde_json::from_slice::<JobSpec>(data) else {
        return;
    };
    let verdict = spec.validate();
    assert_eq!(spec.validate(), verdict, "validation is not deterministic");
    if verdict.is_err() {
        return;
    }
    check_accepted_bounds(&spec);

    let json = serde_json::to_string(&spec)
        .expect("a spec that parsed from JSON serializes: its strings and paths are UTF-8");
    let back: JobSpec = match serde_json::from_str(&json) {
        Ok(back) => back,
        Err(e) => panic!("an accepted spec does not read back: {e}\n  written: {json}"),
    };
    assert_eq!(
        back, spec,
        "the spec changed across JSON\n  written: {json}"
    );
    assert_eq!(
        back.validate(),
        Ok(()),
        "an accepted spec is refused after the round trip\n  written: {json}"
    );
    let again = serde_json::to_string(&back).expect("the re-read spec serializes as the first did");
    assert_eq!(again, json, "the stored JSON is not a fixed point");
}

fn check_accepted_bounds(spec: &JobSpec) {
    if let Some(limit) = spec.memory_limit() {
        assert!(
            limit.bytes() >= limits::MIN_MEMORY_LIMIT,
            "accepted a memory limit below 1 MiB: {limit:?}"
        );
        if let Some(request) = spec.resources.memory {
            assert!(request <= limit, "accepted a limit below the request");
        }
    }
    assert!(
        !spec.timeout.is_zero() && spec.timeout <= Duration::from_secs(limits::MAX_TIMEOUT_SECS),
        "accepted timeout {:?}",
        spec.timeout
    );
    // Safe to sum only because validation bounds the steps; unvalidated sequences can overflow it.
    let most = Duration::from_secs(limits::MAX_GRACE_SECS) * limits::MAX_STOP_STEPS as u32;
    assert!(
        spec.stop.total_grace() <= most,
        "accepted stop sequence {:?}",
        spec.stop
    );
    if let Some(cpu) = spec.resources.cpu {
        assert!(
            cpu.is_finite() && (0.001..=limits::MAX_CPU).contains(&cpu),
            "accepted cpu {cpu}"
        );
    }
}

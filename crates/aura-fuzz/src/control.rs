//! The `control` target: the request bodies of the operator's routes, parsed as the server parses them —
//! `POST /api/jobs/cancel` (`aura_server::parse_cancel_selection`, `aura cancel --all`) and `POST
//! /api/jobs/{id}/priority` (`parse_json::<PriorityRequest>`, `aura priority`).

use aura_model::view::{CancelSelection, PriorityRequest};
use aura_model::StateName;
use aura_server::{parse_cancel_selection, parse_json, ErrorCode};
use serde_json::Value;

/// Reads `data` as both bodies and checks, for each:
/// - the server's parse agrees with plain `serde_json` on the model type (what the client sends), except
///   that a selection naming `finished` is refused (422 `invalid_spec`): it could never pick a job;
/// - a refusal is a 400 `bad_request` only for a body that is not JSON, else a 422 `invalid_spec`;
/// - an accepted body survives the JSON round trip (equal, accepted again, the same bytes when written
///   again).
pub fn control(data: &[u8]) {
    cancel_selection(data);
    priority(data);
}

fn cancel_selection(data: &[u8]) {
    let parsed = parse_cancel_selection(data);
    let direct = serde_json::from_slice::<CancelSelection>(data);
    let selection = match (parsed, direct) {
        (Ok(selection), Ok(plain)) => {
            assert_eq!(
                selection, plain,
                "the server and serde_json read different selections"
            );
            selection
        }
        (Err(e), Ok(plain)) => {
            assert!(
                plain.states.contains(&StateName::Finished)
                    || plain
                        .labels
                        .iter()
                        .any(|(k, v)| aura_model::check_label(k, v).is_err()),
                "a selection refused for no reason: {}",
                e.detail
            );
            assert_eq!(e.code, ErrorCode::InvalidSpec, "{}", e.detail);
            assert_eq!(e.code.status().as_u16(), 422);
            return;
        }
        (Err(e), Err(_)) => return crate::check_json_refusal(data, e, "the body"),
        (Ok(selection), Err(e)) => {
            panic!("the server accepted {selection:?}, which serde_json refuses: {e}")
        }
    };
    assert!(
        !selection.states.contains(&StateName::Finished),
        "accepted a selection of finished jobs"
    );
    for (key, value) in &selection.labels {
        assert!(
            aura_model::check_label(key, value).is_ok(),
            "accepted a label no job could carry: {key:?}={value:?}"
        );
    }
    let json = serde_json::to_string(&selection).expect("a selection serializes");
    let back = match parse_cancel_selection(json.as_bytes()) {
        Ok(back) => back,
        Err(e) => panic!(
            "an accepted selection does not read back: {}\n  written: {json}",
            e.detail
        ),
    };
    assert_eq!(back, selection, "the selection changed across JSON: {json}");
    let again = serde_json::to_string(&back).expect("the re-read selection serializes");
    assert_eq!(again, json, "the written JSON is not a fixed point");
}

fn priority(data: &[u8]) {
    let parsed = parse_json::<PriorityRequest>(data);
    let direct = serde_json::from_slice::<PriorityRequest>(data);
    let request = match (parsed, direct) {
        (Ok(request), Ok(plain)) => {
            assert_eq!(
                request, plain,
                "the server and serde_json read different priorities"
            );
            request
        }
        (Err(e), Err(_)) => return crate::check_json_refusal(data, e, "the body"),
        (parsed, direct) => panic!(
            "parse_json and serde_json disagree: {:?} / {:?}",
            parsed.map_err(|e| e.detail),
            direct.map_err(|e| e.to_string())
        ),
    };
    // The number as written, not rounded or wrapped into an i32: a struct reads from an object, or (as
    // serde reads every struct) from a sequence of its fields.
    let written = serde_json::from_slice::<Value>(data)
        .ok()
        .and_then(|v| match v {
            Value::Array(fields) => fields.first()?.as_i64(),
            object => object.get("priority")?.as_i64(),
        });
    assert_eq!(
        written,
        Some(i64::from(request.priority)),
        "priority read as another number"
    );
    let json = serde_json::to_string(&request).expect("a priority serializes");
    let back: PriorityRequest = match parse_json(json.as_bytes()) {
        Ok(back) => back,
        Err(e) => panic!("an accepted priority does not read back: {}", e.detail),
    };
    assert_eq!(back, request, "the priority changed across JSON: {json}");
}

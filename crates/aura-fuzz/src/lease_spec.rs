//! The `lease_spec` target: a request body of `POST /api/leases`, parsed as the server parses it
//! (`aura_server::parse_json`), validated as the engine validates it (`LeaseSpec::validate` in
//! `EngineHandle::acquire_lease`), and what admission reserves for an accepted one.

use aura_engine::{AdmissionConfig, EngineError};
use aura_model::{limits, LeaseSpec};
use aura_server::{parse_json, ApiError, ErrorCode};

/// Parses `data` as the server parses a lease body and checks:
/// - the server's parse agrees with plain `serde_json` (what clients and tests use); a JSON document
///   that is not a lease is `invalid_spec`, and a 400 `bad_request` is only for a body that is not JSON;
/// - validation is deterministic, and its refusal is answered 422 (`invalid_spec` or `limit_exceeded`);
/// - an accepted spec is within the bounds validation promises: a TTL in (0, 1 hour], a holder of at
///   most 256 bytes without NUL, no `memory_max`, a memory figure above 0, cpu in [0.001, 4096], at most 64
///   valid provider names, at most 64 GPUs, VRAM and encoder sessions only with GPUs;
/// - it survives the JSON round trip (equal, still valid, the same bytes when written again);
/// - admission reserves exactly what it states (`AdmissionConfig::lease_request`: no default memory,
///   the stated disk, GPUs and providers; cpu in millicores, at most 4096 cores).
pub fn lease_spec(data: &[u8]) {
    let parsed = parse_json::<LeaseSpec>(data);
    let direct = serde_json::from_slice::<LeaseSpec>(data);
    let spec = match (parsed, direct) {
        (Ok(spec), Ok(plain)) => {
            assert_eq!(
                spec, plain,
                "parse_json and serde_json read different specs"
            );
            spec
        }
        (Err(e), Err(_)) => return crate::check_json_refusal(data, e, "a lease"),
        (parsed, direct) => panic!(
            "parse_json and serde_json disagree: {:?} / {:?}",
            parsed.map_err(|e| e.detail),
            direct.map_err(|e| e.to_string())
        ),
    };
    let verdict = spec.validate();
    assert_eq!(spec.validate(), verdict, "validation is not deterministic");
    if let Err(e) = verdict {
        let api = ApiError::from(EngineError::InvalidSpec(e));
        assert!(
            matches!(api.code, ErrorCode::InvalidSpec | ErrorCode::LimitExceeded),
            "a refused lease is answered {:?}",
            api.code
        );
        assert_eq!(api.code.status().as_u16(), 422);
        return;
    }
    check_accepted_bounds(&spec);
    check_reservation(&spec);

    let json = serde_json::to_string(&spec)
        .expect("a spec that parsed from JSON serializes: its strings are UTF-8");
    let back: LeaseSpec = match parse_json(json.as_bytes()) {
        Ok(back) => back,
        Err(e) => panic!(
            "an accepted lease does not read back: {}\n  written: {json}",
            e.detail
        ),
    };
    assert_eq!(
        back, spec,
        "the lease changed across JSON\n  written: {json}"
    );
    assert_eq!(
        back.validate(),
        Ok(()),
        "an accepted lease is refused after the round trip\n  written: {json}"
    );
    let again =
        serde_json::to_string(&back).expect("the re-read lease serializes as the first did");
    assert_eq!(again, json, "the written JSON is not a fixed point");
}

fn check_accepted_bounds(spec: &LeaseSpec) {
    assert!(
        !spec.ttl.is_zero() && spec.ttl <= LeaseSpec::MAX_TTL,
        "accepted ttl {:?}",
        spec.ttl
    );
    if let Some(holder) = &spec.holder {
        assert!(
            holder.len() <= limits::MAX_LABEL_BYTES && !holder.contains('\0'),
            "accepted holder {holder:?}"
        );
    }
    let r = &spec.resources;
    assert_eq!(r.memory_max, None, "accepted a lease with memory_max");
    assert!(
        !matches!(r.memory, Some(m) if m.bytes() == 0),
        "accepted a zero memory request"
    );
    if let Some(cpu) = r.cpu {
        assert!(
            cpu.is_finite() && (0.001..=limits::MAX_CPU).contains(&cpu),
            "accepted cpu {cpu}"
        );
    }
    assert!(
        r.providers.len() <= limits::MAX_LABELS,
        "accepted {} providers",
        r.providers.len()
    );
    for p in &r.providers {
        let valid = (1..=limits::MAX_LABEL_BYTES).contains(&p.len())
            && p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
        assert!(valid, "accepted provider {p:?}");
    }
    let gpus = r.gpus.unwrap_or(0);
    assert!(gpus <= limits::MAX_GPUS, "accepted {gpus} GPUs");
    if gpus == 0 {
        assert!(
            r.vram.is_none() && r.encoder_sessions.is_none(),
            "accepted GPU figures without GPUs: {r:?}"
        );
    }
}

/// What the actor asks admission for (`Command::AcquireLease`): exactly the stated figures.
fn check_reservation(spec: &LeaseSpec) {
    let r = &spec.resources;
    let request = AdmissionConfig::default().lease_request(r);
    assert_eq!(
        request.memory_bytes,
        r.memory.map_or(0, |m| m.bytes()),
        "a lease reserves other memory than it states"
    );
    assert_eq!(request.disk_bytes, r.disk.map_or(0, |d| d.bytes()));
    assert_eq!(request.gpus, r.gpus.unwrap_or(0));
    assert_eq!(request.vram_bytes_per_gpu, r.vram.map_or(0, |v| v.bytes()));
    assert_eq!(
        request.encoder_sessions_per_gpu,
        r.encoder_sessions.unwrap_or(0)
    );
    assert_eq!(request.providers, r.providers);
    let most = (limits::MAX_CPU * 1000.0) as u64;
    assert!(
        request.cpu_millis <= most && (r.cpu.is_none() || request.cpu_millis >= 1),
        "a lease of cpu {:?} reserves {} millicores",
        r.cpu,
        request.cpu_millis
    );
}

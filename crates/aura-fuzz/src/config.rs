//! The `config` target: the daemon's TOML config file (`aura serve --config FILE`), loaded as the daemon
//! loads it (defaults, then the file) by `aura::config::Config::from_toml`, the invariants its
//! validation promises, and the round trip of an accepted config through `toml::to_string`.

use aura::config::Config;
use aura_engine::MemoryThreshold;
use aura_model::ByteSize;
use std::collections::HashSet;

/// Loads `data` as the text of a config file, and for an accepted config checks:
/// - loading is deterministic;
/// - every invariant `Config::extract`, `validate_api` and `validate_jobs` promise holds (see
///   `check_invariants`), and the token set builds (`Tokens::new`, what `aura serve` does next);
/// - the config written back as TOML loads again to an equal config (compared as JSON and as `Debug`,
///   which shows what JSON hides: exact guard sizes, `-0.0`), and writing that one gives the same text
///   (a fixed point). Two exclusions, both where TOML or the product's own `Serialize` cannot carry the
///   value, not where loading is wrong:
///   - a size above `i64::MAX` bytes (`"9000000T"` is accepted): `ByteSize` serializes as an integer of
///     bytes and TOML integers are 64-bit signed, so `toml::to_string` refuses; checked to be the reason;
///   - a guard memory threshold given as a size (`MemoryThreshold::Bytes`) serializes as `ByteSize`'s
///     display, rounded to a tenth of its unit (`1500` bytes is written `"1.5 KiB"` and reads back as
///     1536): compared after the same rounding, and left out when the rounded text no longer parses
///     (sizes within 0.05 TiB of `u64::MAX`).
///
/// Bytes that are not UTF-8 cannot be a config: the daemon reads the file as text
/// (`Config::load` → figment's `Toml::file` → `read_to_string`); checked through that very path.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        non_utf8_is_refused(data);
        return;
    };
    let loaded = Config::from_toml(text);
    let again = Config::from_toml(text);
    assert_eq!(
        loaded.as_ref().map(json).map_err(|e| e.to_string()),
        again.as_ref().map(json).map_err(|e| e.to_string()),
        "loading is not deterministic"
    );
    let Ok(config) = loaded else { return };
    check_invariants(&config);
    round_trip(&config);
}

/// The invariants of an accepted config, each as `Config::extract` (and the validators it calls) promises.
fn check_invariants(c: &Config) {
    assert!(c.max_concurrent >= 1, "accepted max_concurrent 0");
    assert!(
        (1..=256).contains(&c.async_workers),
        "accepted async_workers {}",
        c.async_workers
    );
    let sup = &c.supervisor;
    assert!(
        !sup.sample_interval.is_zero() && !sup.memory_watch_interval.is_zero(),
        "accepted a zero supervisor interval: {sup:?}"
    );
    for nice in [sup.daemon_nice, sup.job_nice] {
        assert!((-20..=19).contains(&nice), "accepted nice value {nice}");
    }
    let a = &c.admission;
    if let Some(cpu) = a.cpu {
        assert!(cpu.is_finite() && cpu > 0.0, "accepted admission.cpu {cpu}");
    }
    assert!(
        a.learn_percentile > 0.0 && a.learn_percentile <= 1.0,
        "accepted learn_percentile {}",
        a.learn_percentile
    );
    assert!(
        a.learn_margin.is_finite() && a.learn_margin >= 0.0,
        "accepted learn_margin {}",
        a.learn_margin
    );
    assert!(
        a.default_memory_request.bytes() > 0,
        "accepted a zero default_memory_request"
    );
    assert_eq!(
        c.guards.validate(),
        Ok(()),
        "accepted guards that do not validate"
    );
    assert!(
        !c.metrics.interval.is_zero() && (1..=100_000).contains(&c.metrics.history),
        "accepted metrics {:?}",
        c.metrics
    );
    check_api(c);
    check_jobs(c);
    // What `aura serve` does with the admission section; must not panic on anything accepted.
    let engine = c.admission.to_engine();
    assert_eq!(engine.gpus.len(), a.gpus.len());
}

fn check_api(c: &Config) {
    let api = &c.api;
    let mut names = HashSet::new();
    let mut hashes = HashSet::new();
    for t in &api.tokens {
        assert!(
            !t.scopes.is_empty(),
            "accepted token {:?} without scopes",
            t.name
        );
        let valid_name = (1..=64).contains(&t.name.len())
            && t.name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
        assert!(valid_name, "accepted token name {:?}", t.name);
        assert!(
            names.insert(&t.name),
            "accepted the token name {:?} twice",
            t.name
        );
        let hash: String = t.hash.clone().into();
        assert!(hashes.insert(hash), "accepted one hash for two tokens");
    }
    let tokens = aura_server::auth::Tokens::new(&api.tokens)
        .expect("the tokens of an accepted config build a token set");
    assert_eq!(tokens.len(), api.tokens.len());
    assert!(api.max_connections >= 1, "accepted api.max_connections 0");
    assert!(
        !api.header_timeout.is_zero() && !api.request_timeout.is_zero(),
        "accepted a zero API timeout"
    );
    assert!(
        api.max_header_bytes.bytes() >= 1024 && api.max_uri_bytes.bytes() >= 256,
        "accepted max_header_bytes {} / max_uri_bytes {}",
        api.max_header_bytes.bytes(),
        api.max_uri_bytes.bytes()
    );
    for host in &api.allowed_hosts {
        let ok = !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-.:[]_".contains(&b));
        assert!(ok, "accepted allowed_hosts entry {host:?}");
    }
    for origin in &api.allowed_origins {
        let rest = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"));
        assert!(
            rest.is_some_and(|r| !r.is_empty() && !r.contains('/')),
            "accepted allowed_origins entry {origin:?}"
        );
    }
}

fn check_jobs(c: &Config) {
    let jobs = &c.jobs;
    assert!(jobs.umask <= 0o777, "accepted umask {:o}", jobs.umask);
    assert!(
        jobs.max_open_files != Some(0) && jobs.max_processes != Some(0),
        "accepted a zero rlimit"
    );
    assert!(
        jobs.user.as_deref() != Some(""),
        "accepted an empty jobs.user"
    );
    for key in jobs.env.keys() {
        assert!(
            !key.is_empty() && !key.contains('=') && !key.contains('\0'),
            "accepted jobs.env name {key:?}"
        );
    }
}

/// Writes `config` as TOML, loads that, and compares (see [`config`] for the two exclusions).
fn round_trip(config: &Config) {
    let Some(expected) = rounded_thresholds(config) else {
        return; // a size threshold whose rounded display is out of range (documented exclusion)
    };
    let written = match toml::to_string(config) {
        Ok(written) => written,
        Err(e) => {
            assert!(
                has_integer_above_i64(&json(config)),
                "an accepted config does not serialize to TOML: {e}\n  config: {config:?}"
            );
            return; // a size above i64::MAX bytes (documented exclusion)
        }
    };
    let back = match Config::from_toml(&written) {
        Ok(back) => back,
        Err(e) => panic!("an accepted config does not load again: {e:#}\n  written:\n{written}"),
    };
    assert_eq!(
        json(&back),
        json(config),
        "the config changed across TOML\n  written:\n{written}"
    );
    assert_eq!(
        format!("{back:?}"),
        format!("{expected:?}"),
        "the config changed across TOML\n  written:\n{written}"
    );
    let again = toml::to_string(&back).expect("the re-read config serializes as the first did");
    assert_eq!(again, written, "the written TOML is not a fixed point");
}

/// `config` with each guard threshold given as a size rounded as its `Serialize` (the `ByteSize`
/// display) rounds it; `None` when such a rounded display does not parse.
fn rounded_thresholds(config: &Config) -> Option<Config> {
    let mut c = config.clone();
    let g = &mut c.guards;
    for t in [
        &mut g.min_available_memory,
        &mut g.resume_available_memory,
        &mut g.critical_available_memory,
        &mut g.critical_resume_available_memory,
    ] {
        if let MemoryThreshold::Bytes(b) = *t {
            let shown = ByteSize(b).to_string().parse::<ByteSize>().ok()?;
            *t = MemoryThreshold::Bytes(shown.bytes());
        }
    }
    Some(c)
}

fn json(config: &Config) -> serde_json::Value {
    serde_json::to_value(config).expect("a loaded config serializes to JSON")
}

fn has_integer_above_i64(value: &serde_json::Value) -> bool {
    use serde_json::Value;
    match value {
        Value::Number(n) => n.as_u64().is_some_and(|n| n > i64::MAX as u64),
        Value::Array(items) => items.iter().any(has_integer_above_i64),
        Value::Object(map) => map.values().any(has_integer_above_i64),
        _ => false,
    }
}

/// The daemon's own file path (`Config::load`) refuses a file that is not UTF-8, whatever else it holds.
fn non_utf8_is_refused(data: &[u8]) {
    let path = std::env::temp_dir().join(format!(
        "aura-fuzz-config-{}-{:?}.toml",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::write(&path, data).expect("write the config file to a temporary folder");
    let loaded = Config::load(Some(&path));
    let _ = std::fs::remove_file(&path);
    assert!(
        loaded.is_err(),
        "a config file that is not UTF-8 was accepted"
    );
}

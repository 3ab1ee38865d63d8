//! Fuzz entry points for every parser that sees user input: one pure `fn(&[u8])` per target that parses
//! the bytes exactly as the product does and asserts the properties that hold (round trips, agreement
//! between the paths a value can take), listed in [`TARGETS`].
//!
//! Nightly drives them through cargo-fuzz (`fuzz/fuzz_targets/<name>.rs`, `cargo xtask fuzz`); stable
//! replays the committed corpus `fuzz/corpus/<name>/` and `fuzz/regressions/<name>/` through the same
//! functions (`tests/corpus.rs`). Adding a target: a module with `pub fn <name>(data: &[u8])`, a line in
//! `TARGETS`, `fuzz/fuzz_targets/<name>.rs` plus its `[[bin]]` in `fuzz/Cargo.toml`, and seeds in
//! `fuzz/corpus/<name>/`.

mod batch;
mod config;
mod control;
mod duration;
mod ffmpeg_args;
mod headers;
mod job_spec;
mod lease_spec;
mod proc_entries;
mod progress;
mod query;
mod range;
mod size;
mod sse;

pub use batch::batch;
pub use config::config;
pub use control::control;
pub use duration::duration;
pub use ffmpeg_args::ffmpeg_args;
pub use headers::headers;
pub use job_spec::job_spec;
pub use lease_spec::lease_spec;
pub use proc_entries::proc_entries;
pub use progress::progress;
pub use query::query;
pub use range::range;
pub use size::size;
pub use sse::sse;

/// A refused JSON body, as `aura_server::parse_json` answers it: a JSON document (as `serde_json::Value`
/// reads one: strings decoded, numbers in range) that is not `what` is `invalid_spec`; a body that is not
/// JSON is a 400 `bad_request`, unless the streaming parser met a wrong value before the syntax error
/// (`{"ttl": "soon" x`): then it is `invalid_spec` too.
pub(crate) fn check_json_refusal(data: &[u8], e: aura_server::ApiError, what: &str) {
    use aura_server::ErrorCode;
    assert!(!e.detail.is_empty(), "a refusal without a reason");
    match serde_json::from_slice::<serde_json::Value>(data) {
        Ok(_) => assert_eq!(
            e.code,
            ErrorCode::InvalidSpec,
            "a JSON body that is not {what} is answered {:?}: {}",
            e.code,
            e.detail
        ),
        Err(_) => assert!(
            e.code == ErrorCode::InvalidSpec
                || e.code == ErrorCode::BadRequest && e.detail.starts_with("invalid JSON"),
            "a body that is not JSON is answered {:?}: {}",
            e.code,
            e.detail
        ),
    }
}

/// A fuzz target: parses the bytes and panics when a property breaks.
pub type Target = fn(&[u8]);

/// Every target by name; the name is also its cargo-fuzz binary and its corpus folder.
pub const TARGETS: &[(&str, Target)] = &[
    ("job_spec", job_spec),
    ("size", size),
    ("duration", duration),
    ("config", config),
    ("query", query),
    ("headers", headers),
    ("lease_spec", lease_spec),
    ("proc_entries", proc_entries),
    ("progress", progress),
    ("ffmpeg_args", ffmpeg_args),
    ("sse", sse),
    ("batch", batch),
    ("control", control),
    ("range", range),
];

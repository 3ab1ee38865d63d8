//! OpenAPI schemas (feature `openapi`) of the model types whose JSON form is hand-written rather than
//! derived: sizes, timestamps and durations. Each schema is the shape the type's `Serialize` writes;
//! what a request may also send (a size with a unit, a duration in seconds) is said in its description.

use utoipa::openapi::schema::{ObjectBuilder, Schema, SchemaFormat, Type};
use utoipa::openapi::{KnownFormat, RefOr};
use utoipa::{PartialSchema, ToSchema};

/// `ByteSize` serialises as `serialize_u64`: a plain integer of bytes.
impl PartialSchema for crate::ByteSize {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::Integer)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
            .minimum(Some(0))
            .description(Some(
                "A size in bytes. Written as an integer; a request may also give a string with a \
                 1024-based unit, such as \"512M\" or \"2GiB\".",
            ))
            .into()
    }
}

impl ToSchema for crate::ByteSize {}

/// `Timestamp` serialises through its `Display`: RFC 3339 in UTC with milliseconds.
impl PartialSchema for crate::Timestamp {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)))
            .description(Some(
                "A point in time, RFC 3339 in UTC with milliseconds: 2024-05-01T12:00:00.000Z.",
            ))
            .examples(["2024-05-01T12:00:00.000Z"])
            .into()
    }
}

impl ToSchema for crate::Timestamp {}

/// What `humantime::format_duration` writes: `0s`, or space-separated spans from years down to
/// nanoseconds (`1h 30m`, `2days 3h`, `1s 500ms`).
const WRITTEN_DURATION: &str =
    "^(0s|[0-9]+(years?|months?|days?|ms|us|µs|ns|h|m|s)( [0-9]+(years?|months?|days?|ms|us|µs|ns|h|m|s))*)$";

/// The schema of a `std::time::Duration` field serialised with `humantime_serde_compat` (or
/// `optional_duration`): `#[schema(value_type = Duration)]` on such a field. `Duration` is a foreign type,
/// so the schema hangs on this stand-in.
pub struct Duration;

impl PartialSchema for Duration {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some(WRITTEN_DURATION))
            .description(Some(
                "A duration as humantime writes it: \"90s\" is written \"1m 30s\". A request may also \
                 give seconds as a number (90, 2.5) or any humantime text (\"1.5h\", \"90 s\").",
            ))
            .examples(["1m 30s"])
            .into()
    }
}

impl ToSchema for Duration {
    fn name() -> std::borrow::Cow<'static, str> {
        std::borrow::Cow::Borrowed("Duration")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern() -> regex::Regex {
        regex::Regex::new(WRITTEN_DURATION).expect("a valid pattern")
    }

    #[test]
    fn the_duration_pattern_matches_what_humantime_writes() {
        let re = pattern();
        for secs in [
            0.0,
            0.001,
            1.0,
            1.5,
            90.0,
            3600.0,
            86_400.0 * 45.0,
            1e9,
            0.000_000_7,
        ] {
            let written = humantime::format_duration(std::time::Duration::from_secs_f64(secs));
            assert!(re.is_match(&written.to_string()), "{written}");
        }
        for bad in ["", "90", "1h30m", " 1s", "1 s", "soon"] {
            assert!(!re.is_match(bad), "{bad}");
        }
    }
}

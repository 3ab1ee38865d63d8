//! Wall-clock timestamps as stored and shown: Unix milliseconds, RFC 3339 in JSON.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A point in wall-clock time with millisecond precision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

impl Timestamp {
    /// The current wall-clock time.
    pub fn now() -> Self {
        Self::from_system_time(SystemTime::now())
    }

    /// [`Timestamp::from_unix_millis`] usable in a `const` (fixed times in tests).
    pub const fn from_unix_millis_const(ms: i64) -> Self {
        Self(ms)
    }

    /// The time `ms` milliseconds after the Unix epoch (negative: before it), as stored in the database.
    pub fn from_unix_millis(ms: i64) -> Self {
        Self(ms)
    }

    /// Milliseconds since the Unix epoch (negative before it), the form stored in the database.
    pub fn unix_millis(self) -> i64 {
        self.0
    }

    /// Converts a [`SystemTime`], truncating to whole milliseconds (saturating beyond the `i64` range).
    pub fn from_system_time(t: SystemTime) -> Self {
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) => Self(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
            Err(e) => Self(-i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX)),
        }
    }

    /// Converts back to a [`SystemTime`], e.g. for RFC 3339 formatting.
    pub fn to_system_time(self) -> SystemTime {
        if self.0 >= 0 {
            UNIX_EPOCH + Duration::from_millis(self.0 as u64)
        } else {
            UNIX_EPOCH - Duration::from_millis(self.0.unsigned_abs())
        }
    }

    /// Time elapsed from `earlier` to `self`, zero if `earlier` is later.
    pub fn since(self, earlier: Timestamp) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0).max(0) as u64)
    }
}

/// The last millisecond RFC 3339 (as humantime writes it) can show: 9999-12-31T23:59:59.999Z.
const LAST_SHOWN_MILLIS: i64 = 253_402_300_800_000 - 1;

/// RFC 3339 in UTC. A time outside 1970–9999 (only a corrupt record or a clock set far off makes one) is
/// shown as the nearest end of that range: humantime's writer panics before 1970 and fails after 9999,
/// and a record must always print.
impl std::fmt::Display for Timestamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown = Timestamp(self.0.clamp(0, LAST_SHOWN_MILLIS));
        write!(
            f,
            "{}",
            humantime::format_rfc3339_millis(shown.to_system_time())
        )
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_rfc3339_weak(&text)
            .map(Timestamp::from_system_time)
            .map_err(|e| serde::de::Error::custom(format!("invalid timestamp {text:?}: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trip_keeps_millis() {
        let t = Timestamp::from_unix_millis(1_700_000_000_123);
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(json, "\"2023-11-14T22:13:20.123Z\"");
        assert_eq!(serde_json::from_str::<Timestamp>(&json).unwrap(), t);
    }

    #[test]
    fn times_outside_what_rfc3339_shows_print_as_the_nearest_end() {
        for (ms, shown) in [
            (-1, "1970-01-01T00:00:00.000Z"),
            (i64::MIN, "1970-01-01T00:00:00.000Z"),
            (0, "1970-01-01T00:00:00.000Z"),
            (LAST_SHOWN_MILLIS, "9999-12-31T23:59:59.999Z"),
            (LAST_SHOWN_MILLIS + 1, "9999-12-31T23:59:59.999Z"),
            (i64::MAX, "9999-12-31T23:59:59.999Z"),
        ] {
            let t = Timestamp::from_unix_millis(ms);
            assert_eq!(t.to_string(), shown, "{ms}");
            assert_eq!(serde_json::to_string(&t).unwrap(), format!("\"{shown}\""));
        }
    }
}

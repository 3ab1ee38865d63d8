//! Byte sizes as users write them (`300M`, `2GiB`, `512k`) and as records show them.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::str::FromStr;

/// A number of bytes. Parses `1024`, `512k`, `300M`, `2G`, `2GiB`, `1.5GB`; suffixes are powers of 1024.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ByteSize(pub u64);

/// Why a text could not be read as a [`ByteSize`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid size {input:?}: {reason}")]
pub struct ParseSizeError {
    /// The text as given, untrimmed.
    pub input: String,
    /// A short fixed phrase saying what is wrong, e.g. "unknown unit (use k, M, G or T)".
    pub reason: &'static str,
}

impl ByteSize {
    /// Bytes in one mebibyte (1024 × 1024).
    pub const MIB: u64 = 1024 * 1024;

    /// The size in bytes.
    pub fn bytes(self) -> u64 {
        self.0
    }

    /// The size in mebibytes (units of 1024 × 1024 bytes), with a fractional part.
    pub fn mib(self) -> f64 {
        self.0 as f64 / Self::MIB as f64
    }
}

impl FromStr for ByteSize {
    type Err = ParseSizeError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let err = |reason| ParseSizeError {
            input: input.to_owned(),
            reason,
        };
        let text = input.trim();
        let split = text
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        if number.is_empty() {
            return Err(err("expected a number, e.g. 512M or 2G"));
        }
        let value: f64 = number.parse().map_err(|_| err("not a number"))?;
        let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" | "kib" => 1 << 10,
            "m" | "mb" | "mib" => 1 << 20,
            "g" | "gb" | "gib" => 1 << 30,
            "t" | "tb" | "tib" => 1 << 40,
            _ => return Err(err("unknown unit (use k, M, G or T)")),
        };
        let bytes = value * multiplier as f64;
        if !bytes.is_finite() || bytes >= u64::MAX as f64 {
            return Err(err("too large"));
        }
        Ok(ByteSize(bytes.round() as u64))
    }
}

impl std::fmt::Display for ByteSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
        let mut value = self.0 as f64;
        let mut unit = 0;
        while value >= 1024.0 && unit < UNITS.len() - 1 {
            value /= 1024.0;
            unit += 1;
        }
        if unit == 0 {
            write!(f, "{} B", self.0)
        } else {
            write!(f, "{value:.1} {}", UNITS[unit])
        }
    }
}

/// Serialised as a plain integer of bytes so that machines never parse units.
impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

/// Accepts an integer of bytes or a string with a unit (a visitor: an untagged enum answered a wrong type
/// with "did not match any variant").
impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct SizeVisitor;

        impl serde::de::Visitor<'_> for SizeVisitor {
            type Value = ByteSize;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(
                    "a size: a whole number of bytes, or a string such as \"512M\" or \"2GiB\"",
                )
            }

            fn visit_u64<E: serde::de::Error>(self, b: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(b))
            }

            fn visit_i64<E: serde::de::Error>(self, b: i64) -> Result<ByteSize, E> {
                u64::try_from(b)
                    .map(ByteSize)
                    .map_err(|_| E::custom(format!("invalid size {b}: must not be negative")))
            }

            fn visit_str<E: serde::de::Error>(self, t: &str) -> Result<ByteSize, E> {
                t.parse().map_err(E::custom)
            }
        }

        d.deserialize_any(SizeVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expected: Result<u64, &str>) {
        let got = input.parse::<ByteSize>().map(|b| b.0).map_err(|e| e.reason);
        assert_eq!(got, expected, "input {input:?}");
    }

    #[test]
    fn parses_what_users_write() {
        check("1024", Ok(1024));
        check("512k", Ok(512 << 10));
        check("300M", Ok(300 << 20));
        check("2GiB", Ok(2 << 30));
        check("1.5G", Ok(3 << 29));
        check(" 7 mb ", Ok(7 << 20));
        check("", Err("expected a number, e.g. 512M or 2G"));
        check("-5M", Err("expected a number, e.g. 512M or 2G"));
        check("12X", Err("unknown unit (use k, M, G or T)"));
        check("1..2M", Err("not a number"));
    }

    #[test]
    fn displays_human_units() {
        assert_eq!(ByteSize(300 << 20).to_string(), "300.0 MiB");
        assert_eq!(ByteSize(12).to_string(), "12 B");
    }
}

//! The `Range` header of a download (RFC 9110 §14.2), read into what to send: pure, so that the fuzz
//! target (`range`) runs exactly what the server runs. One byte range is served (206); what this server
//! does not serve — several ranges, another unit, a malformed header — is ignored, as the RFC allows,
//! and the whole file sent (200).

/// What to send of a file of `size` bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ranged {
    /// All of it (200): no `Range`, or one this server ignores.
    Whole,
    /// Bytes `start..end` (206, `Content-Range: bytes START-(END-1)/SIZE`); never empty.
    Part {
        /// The first byte sent.
        start: u64,
        /// One past the last byte sent (at most the size).
        end: u64,
    },
    /// No byte of the file is in the range (416, `Content-Range: bytes */SIZE`).
    Unsatisfiable,
}

/// Reads a `Range` header value (`None`: none sent) against a file of `size` bytes: `bytes=A-B`,
/// `bytes=A-` and `bytes=-N` (the last N bytes), the unit in any case, spaces and tabs around the range
/// and empty list elements ignored.
pub fn byte_range(header: Option<&[u8]>, size: u64) -> Ranged {
    let Some(text) = header.and_then(|h| std::str::from_utf8(h).ok()) else {
        return Ranged::Whole;
    };
    let Some((unit, set)) = text.trim_matches(is_ows).split_once('=') else {
        return Ranged::Whole;
    };
    if !unit.eq_ignore_ascii_case("bytes") {
        return Ranged::Whole;
    }
    let mut specs = set
        .split(',')
        .map(|s| s.trim_matches(is_ows))
        .filter(|s| !s.is_empty());
    let (Some(spec), None) = (specs.next(), specs.next()) else {
        return Ranged::Whole;
    };
    let Some((first, last)) = spec.split_once('-') else {
        return Ranged::Whole;
    };
    match (number(first), number(last)) {
        // `-N`: the last N bytes.
        (None, Some(n)) if first.is_empty() => {
            if n == 0 || size == 0 {
                Ranged::Unsatisfiable
            } else {
                Ranged::Part {
                    start: size - n.min(size),
                    end: size,
                }
            }
        }
        // `A-`: from A to the end.
        (Some(start), None) if last.is_empty() => {
            if start >= size {
                Ranged::Unsatisfiable
            } else {
                Ranged::Part { start, end: size }
            }
        }
        // `A-B`, B inclusive; B before A makes the header invalid, so ignored.
        (Some(start), Some(last)) if last >= start => {
            if start >= size {
                Ranged::Unsatisfiable
            } else {
                Ranged::Part {
                    start,
                    end: last.min(size - 1) + 1,
                }
            }
        }
        _ => Ranged::Whole,
    }
}

/// Optional whitespace (RFC 9110 `OWS`).
fn is_ows(c: char) -> bool {
    c == ' ' || c == '\t'
}

/// A run of ASCII digits as a number, saturating (a position past any file is as good as `u64::MAX`);
/// `None` for an empty text or one with anything but digits.
fn number(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(text.bytes().fold(0u64, |n, d| {
        n.saturating_mul(10).saturating_add(u64::from(d - b'0'))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ranges_served_and_the_ones_ignored() {
        use Ranged::{Part, Unsatisfiable, Whole};
        let part = |start, end| Part { start, end };
        let cases: &[(&str, u64, Ranged)] = &[
            ("bytes=100-199", 1000, part(100, 200)),
            ("bytes=0-0", 1000, part(0, 1)),
            ("bytes=0-", 1000, part(0, 1000)),
            ("bytes=5-", 1000, part(5, 1000)),
            ("bytes=-10", 1000, part(990, 1000)),
            ("bytes=-5000", 1000, part(0, 1000)),
            ("bytes=990-5000", 1000, part(990, 1000)),
            ("bytes=999-999", 1000, part(999, 1000)),
            ("BYTES=1-2", 1000, part(1, 3)),
            (" bytes= 1-2 ", 1000, part(1, 3)),
            ("bytes=1-2,", 1000, part(1, 3)),
            ("bytes=, 1-2", 1000, part(1, 3)),
            ("bytes=0-99999999999999999999999", 10, part(0, 10)),
            // Nothing of the file in the range.
            ("bytes=1000-", 1000, Unsatisfiable),
            ("bytes=1000-2000", 1000, Unsatisfiable),
            ("bytes=-0", 1000, Unsatisfiable),
            ("bytes=0-", 0, Unsatisfiable),
            ("bytes=-1", 0, Unsatisfiable),
            ("bytes=99999999999999999999999-", 1000, Unsatisfiable),
            // Ignored: several ranges, another unit, malformed.
            ("bytes=0-1,5-6", 1000, Whole),
            ("bytes=0-1,2000-3000", 1000, Whole),
            ("items=0-1", 1000, Whole),
            ("bytes=2-1", 1000, Whole),
            ("bytes=", 1000, Whole),
            ("bytes=-", 1000, Whole),
            ("bytes=a-b", 1000, Whole),
            ("bytes=+1-2", 1000, Whole),
            ("bytes=1 -2", 1000, Whole),
            ("bytes 0-1", 1000, Whole),
            ("bytes=0x10-", 1000, Whole),
            ("", 1000, Whole),
        ];
        for &(header, size, expected) in cases {
            assert_eq!(
                byte_range(Some(header.as_bytes()), size),
                expected,
                "{header:?} of {size}"
            );
        }
        assert_eq!(byte_range(None, 10), Whole);
        assert_eq!(byte_range(Some(b"bytes=\xff-1"), 10), Whole);
    }
}

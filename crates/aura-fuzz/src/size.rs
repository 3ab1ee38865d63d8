//! The `size` target: byte sizes as users write them (`--memory 2G`, `"memory": "512M"`, config values),
//! through `ByteSize`'s `FromStr` and its JSON `Deserialize`.

use aura_model::ByteSize;
use serde_json::Value;

/// The bytes as text (when UTF-8) through `FromStr`, and as a JSON document through `Deserialize`.
pub fn size(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        from_text(text);
    }
    from_json(data);
}

/// `FromStr`: the error names the input; surrounding whitespace does not matter; a JSON string of the same
/// text parses to the same size; plain integers are exact; Display of a parsed size parses again.
fn from_text(text: &str) {
    let parsed = text.parse::<ByteSize>();
    if let Err(e) = &parsed {
        assert_eq!(e.input, text, "the error does not name the input");
    }
    let padded = format!(" \t{text}\n ").parse::<ByteSize>();
    assert_eq!(
        padded.as_ref().map_err(|e| e.reason),
        parsed.as_ref().map_err(|e| e.reason),
        "surrounding whitespace changed the result"
    );
    let quoted = serde_json::to_string(text).expect("a str always serializes to JSON");
    let via_json = serde_json::from_str::<ByteSize>(&quoted).ok();
    assert_eq!(
        via_json,
        parsed.as_ref().ok().copied(),
        "a JSON string and the CLI disagree on {text:?}"
    );
    let Ok(size) = parsed else { return };
    let trimmed = text.trim();
    if let Ok(n) = trimmed.parse::<u64>() {
        // Digits alone are a count of bytes, exact while f64 holds them exactly.
        if n < 1 << 53 && trimmed.bytes().all(|b| b.is_ascii_digit()) {
            assert_eq!(size.bytes(), n, "{text:?} is not {n} bytes");
        }
    }
    display_reparses(size);
}

/// Display shows one decimal of the largest unit that keeps the figure at least 1 (`300.0 MiB`), or exact
/// bytes below 1 KiB. What holds: it parses again to within half a tenth of its unit (plus f64 error),
/// exactly for bytes; a second round trip changes nothing; and the only size whose display does not parse
/// is one that rounds up to 2^64 bytes (`16777216.0 TiB`), which the parser calls too large.
fn display_reparses(size: ByteSize) {
    let shown = size.to_string();
    let back = match shown.parse::<ByteSize>() {
        Ok(back) => back,
        Err(e) => {
            assert!(
                e.reason == "too large" && size.bytes() >= 16_777_215 << 40,
                "{size:?} displays as {shown:?}, which does not parse: {e}"
            );
            return;
        }
    };
    let unit = display_unit(size.bytes());
    if unit == 1 {
        assert_eq!(back, size, "{shown:?} is not exact");
    } else {
        let tolerance = u128::from(unit).div_ceil(20) + u128::from(size.bytes() >> 50) + 2;
        let off = u128::from(back.bytes().abs_diff(size.bytes()));
        assert!(
            off <= tolerance,
            "{size:?} displays as {shown:?}, which parses to {back:?}: {off} bytes off, more than {tolerance}"
        );
    }
    assert_eq!(
        back.to_string().parse::<ByteSize>(),
        Ok(back),
        "{shown:?} parses to {back:?}, whose display {:?} does not parse back to it",
        back.to_string()
    );
}

/// The unit Display picks for `bytes`, as a multiplier: 1, 1 KiB, … 1 TiB.
fn display_unit(bytes: u64) -> u64 {
    let mut value = bytes as f64;
    let mut unit = 1u64;
    while value >= 1024.0 && unit < 1 << 40 {
        value /= 1024.0;
        unit <<= 10;
    }
    unit
}

/// `Deserialize`: a whole number of bytes or a string as `FromStr` reads it, nothing else; an accepted
/// size survives the store's JSON round trip (written as an integer) and displays as above (JSON reaches
/// sizes up to `u64::MAX`, beyond what `FromStr` accepts).
fn from_json(data: &[u8]) {
    let direct = serde_json::from_slice::<ByteSize>(data);
    let expected = match serde_json::from_slice::<Value>(data) {
        Ok(Value::String(s)) => s.parse::<ByteSize>().ok(),
        Ok(Value::Number(n)) => n.as_u64().map(ByteSize),
        Ok(_) | Err(_) => None,
    };
    assert_eq!(
        direct.as_ref().ok(),
        expected.as_ref(),
        "Deserialize disagrees with the JSON value it read ({direct:?})"
    );
    let Ok(size) = direct else { return };
    let written = serde_json::to_string(&size).expect("a size serializes as an integer");
    assert_eq!(written, size.bytes().to_string());
    assert_eq!(
        serde_json::from_str::<ByteSize>(&written).ok(),
        Some(size),
        "{written} does not read back"
    );
    display_reparses(size);
}

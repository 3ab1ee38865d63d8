//! The `sse` target: what the CLI reads from the daemon's event streams, through `aura_client::sse`'s
//! incremental parser.

use aura_client::sse::{encode, SseError, SseEvent, SseParser};

/// Parses `chunks` in order: the events, and the error that stopped it, if one did.
fn parse(parser: &mut SseParser, chunks: &[&[u8]]) -> (Vec<SseEvent>, Option<SseError>) {
    let mut out = Vec::new();
    for chunk in chunks {
        if let Err(e) = parser.push(chunk, &mut out) {
            return (out, Some(e));
        }
    }
    (out, None)
}

/// The bytes as one event stream:
/// - however the bytes are cut into chunks (at one point chosen by the input, or byte by byte), the same
///   events and the same error come out;
/// - every event written back in the wire format reads back the same;
/// - with a small line limit, a stream fails exactly when one of its lines is longer, and only after the
///   events before it; with a small data limit, the events before the failure are the same.
pub fn sse(data: &[u8]) {
    let whole = parse(&mut SseParser::new(), &[data]);
    let cut = usize::from(data.first().copied().unwrap_or(0)) % (data.len() + 1);
    let (head, tail) = data.split_at(cut);
    assert_eq!(
        parse(&mut SseParser::new(), &[head, tail]),
        whole,
        "cut at {cut}"
    );
    let bytes: Vec<&[u8]> = data.chunks(1).collect();
    assert_eq!(parse(&mut SseParser::new(), &bytes), whole, "byte by byte");

    for event in &whole.0 {
        assert!(!event.event.contains(['\r', '\n']), "{event:?}");
        assert!(
            !event
                .id
                .as_deref()
                .unwrap_or("")
                .contains(['\r', '\n', '\0']),
            "{event:?}"
        );
        let text = encode(event);
        let back = parse(&mut SseParser::new(), &[text.as_bytes()]);
        assert_eq!(back, (vec![event.clone()], None), "{text:?}");
    }

    const SMALL: usize = 32;
    let limited = parse(&mut SseParser::with_limits(SMALL, usize::MAX / 2), &[data]);
    let longest = lines(data).map(<[u8]>::len).max().unwrap_or(0);
    assert_eq!(
        limited.1.is_some(),
        longest > SMALL,
        "longest line {longest}: {limited:?}"
    );
    assert!(whole.0.starts_with(&limited.0), "{limited:?}");
    let small_data = parse(&mut SseParser::with_limits(usize::MAX / 2, SMALL), &[data]);
    assert!(whole.0.starts_with(&small_data.0), "{small_data:?}");
}

/// The stream's lines (a leading byte order mark skipped; CRLF, LF or CR ends a line; the unfinished last
/// line included), for the limit check, written apart from the parser's own splitting.
fn lines(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    let data = data.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(data);
    let mut rest = data;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let end = rest
            .iter()
            .position(|&b| b == b'\n' || b == b'\r')
            .unwrap_or(rest.len());
        let line = &rest[..end];
        let mut next = (end + 1).min(rest.len());
        if rest.get(end) == Some(&b'\r') && rest.get(end + 1) == Some(&b'\n') {
            next = end + 2;
        }
        rest = &rest[next..];
        Some(line)
    })
}

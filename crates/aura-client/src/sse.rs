//! The Server-Sent Events wire format, read incrementally: bytes in as they arrive (in chunks cut
//! anywhere), whole events out, as the HTML standard's event-stream interpretation says — with bounds, so
//! that a peer that never ends a line cannot make the client hold unbounded memory.

/// The longest line accepted, terminator excluded: 1 MiB. The daemon's largest line (a `log` event, 64 KiB
/// of output as escaped JSON) is far below it.
pub const MAX_LINE: usize = 1024 * 1024;

/// The most `data` one event may gather over its lines: 4 MiB.
pub const MAX_EVENT_DATA: usize = 4 * 1024 * 1024;

/// One dispatched event.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SseEvent {
    /// Its `event:` type; `message` when it named none.
    pub event: String,
    /// The `id:` it carried itself (not one inherited from an earlier event), if any.
    pub id: Option<String>,
    /// Its `data:` lines joined with `\n`.
    pub data: String,
}

/// Why a stream cannot be read on.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SseError {
    /// A line went past the line limit without ending.
    #[error("event stream line longer than {max} bytes")]
    LineTooLong {
        /// The limit.
        max: usize,
    },
    /// An event gathered more data than the limit.
    #[error("event stream event with more than {max} bytes of data")]
    EventTooLarge {
        /// The limit.
        max: usize,
    },
}

/// An incremental event-stream parser. Feed it each chunk as it arrives with [`SseParser::push`]; an event
/// not ended by a blank line when the stream closes is incomplete and, as the standard says, dropped.
#[derive(Debug)]
pub struct SseParser {
    max_line: usize,
    max_data: usize,
    /// The bytes of the line being read.
    line: Vec<u8>,
    /// The last byte seen was a CR: an LF right after it belongs to the same line end.
    after_cr: bool,
    /// Nothing has been read yet: a leading byte order mark is skipped.
    at_start: bool,
    /// The byte order mark's bytes seen so far at the start (it may be cut across chunks).
    bom_seen: usize,
    event: String,
    id: Option<String>,
    data: String,
    last_id: Option<String>,
    retry_ms: Option<u64>,
    /// Set once a limit was passed: the stream cannot be resynchronised.
    failed: Option<SseError>,
}

const BOM: [u8; 3] = [0xEF, 0xBB, 0xBF];

impl Default for SseParser {
    fn default() -> SseParser {
        SseParser::new()
    }
}

impl SseParser {
    /// A parser with the default limits ([`MAX_LINE`], [`MAX_EVENT_DATA`]).
    pub fn new() -> SseParser {
        SseParser::with_limits(MAX_LINE, MAX_EVENT_DATA)
    }

    /// A parser that refuses lines longer than `max_line` bytes and events with more than `max_data`
    /// bytes of data (small limits make the bounds testable).
    pub fn with_limits(max_line: usize, max_data: usize) -> SseParser {
        SseParser {
            max_line,
            max_data,
            line: Vec::new(),
            after_cr: false,
            at_start: true,
            bom_seen: 0,
            event: String::new(),
            id: None,
            data: String::new(),
            last_id: None,
            retry_ms: None,
            failed: None,
        }
    }

    /// The last `id:` the stream set (the standard's last event ID, kept across events): what a
    /// reconnection sends as `Last-Event-ID`.
    pub fn last_event_id(&self) -> Option<&str> {
        self.last_id.as_deref()
    }

    /// The reconnection delay the server asked for with `retry:`, in milliseconds.
    pub fn retry_ms(&self) -> Option<u64> {
        self.retry_ms
    }

    /// Reads `chunk`, appending every event it completes to `out`. After an error the events completed
    /// before it are in `out`, and every later call fails the same way.
    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<SseEvent>) -> Result<(), SseError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let mut rest = chunk;
        if self.at_start {
            // Skip a UTF-8 byte order mark, however the chunks cut it.
            while let Some((&b, tail)) = rest.split_first() {
                if self.bom_seen < BOM.len() && b == BOM[self.bom_seen] {
                    self.bom_seen += 1;
                    rest = tail;
                    if self.bom_seen == BOM.len() {
                        self.at_start = false;
                        break;
                    }
                } else {
                    // Not a BOM after all: what was taken for one is line content.
                    self.at_start = false;
                    let taken = BOM[..self.bom_seen].to_vec();
                    self.bom_seen = 0;
                    self.take_bytes(&taken, out)?;
                    break;
                }
            }
            if self.at_start {
                return Ok(());
            }
        }
        self.take_bytes(rest, out)
    }

    fn take_bytes(&mut self, mut rest: &[u8], out: &mut Vec<SseEvent>) -> Result<(), SseError> {
        while !rest.is_empty() {
            if self.after_cr {
                self.after_cr = false;
                if rest[0] == b'\n' {
                    rest = &rest[1..];
                    continue;
                }
            }
            match rest.iter().position(|&b| b == b'\n' || b == b'\r') {
                Some(end) => {
                    self.append(&rest[..end])?;
                    self.after_cr = rest[end] == b'\r';
                    rest = &rest[end + 1..];
                    let line = std::mem::take(&mut self.line);
                    let result = self.line_done(&line, out);
                    // The buffer's capacity is kept for the next line, up to a bound.
                    if line.capacity() <= 64 * 1024 {
                        self.line = line;
                        self.line.clear();
                    }
                    result?;
                }
                None => {
                    self.append(rest)?;
                    rest = &[];
                }
            }
        }
        Ok(())
    }

    fn append(&mut self, bytes: &[u8]) -> Result<(), SseError> {
        if self.line.len() + bytes.len() > self.max_line {
            return Err(self.fail(SseError::LineTooLong { max: self.max_line }));
        }
        self.line.extend_from_slice(bytes);
        Ok(())
    }

    fn fail(&mut self, error: SseError) -> SseError {
        self.failed = Some(error.clone());
        self.line = Vec::new();
        self.data = String::new();
        error
    }

    fn line_done(&mut self, line: &[u8], out: &mut Vec<SseEvent>) -> Result<(), SseError> {
        if line.is_empty() {
            self.dispatch(out);
            return Ok(());
        }
        if line[0] == b':' {
            return Ok(());
        }
        let line = String::from_utf8_lossy(line);
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line.as_ref(), ""),
        };
        match field {
            "event" => value.clone_into(&mut self.event),
            "data" => {
                if self.data.len() + value.len() + 1 > self.max_data {
                    return Err(self.fail(SseError::EventTooLarge { max: self.max_data }));
                }
                self.data.push_str(value);
                self.data.push('\n');
            }
            // An id with a NUL is ignored, as the standard says.
            "id" if !value.contains('\0') => {
                self.id = Some(value.to_owned());
                self.last_id = Some(value.to_owned());
            }
            "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                self.retry_ms = value.parse().ok();
            }
            _ => {}
        }
        Ok(())
    }

    fn dispatch(&mut self, out: &mut Vec<SseEvent>) {
        let event = std::mem::take(&mut self.event);
        let id = self.id.take();
        if self.data.is_empty() {
            return;
        }
        let mut data = std::mem::take(&mut self.data);
        data.pop();
        out.push(SseEvent {
            event: if event.is_empty() {
                "message".to_owned()
            } else {
                event
            },
            id,
            data,
        });
    }
}

/// Writes `event` in the wire format (what [`SseParser`] reads back as the same event, for an event type
/// and id without line breaks).
pub fn encode(event: &SseEvent) -> String {
    let mut text = String::new();
    if event.event != "message" {
        text.push_str("event: ");
        text.push_str(&event.event);
        text.push('\n');
    }
    if let Some(id) = &event.id {
        text.push_str("id: ");
        text.push_str(id);
        text.push('\n');
    }
    for line in event.data.split('\n') {
        text.push_str("data: ");
        text.push_str(line);
        text.push('\n');
    }
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(chunks: &[&[u8]]) -> Result<Vec<SseEvent>, SseError> {
        let mut parser = SseParser::new();
        let mut out = Vec::new();
        for chunk in chunks {
            parser.push(chunk, &mut out)?;
        }
        Ok(out)
    }

    fn ev(event: &str, id: Option<&str>, data: &str) -> SseEvent {
        SseEvent {
            event: event.into(),
            id: id.map(str::to_owned),
            data: data.into(),
        }
    }

    #[test]
    fn reads_the_daemons_events_with_ids_comments_and_multi_line_data() {
        let text = b": heartbeat\n\nevent: job\nid: 7\ndata: {\"seq\":7}\n\n\
            event: progress\ndata: {\"job_id\":1,\ndata:\"progress\":{}}\n\n\
            data\n\n";
        assert_eq!(
            parse_all(&[text]).unwrap(),
            [
                ev("job", Some("7"), "{\"seq\":7}"),
                ev("progress", None, "{\"job_id\":1,\n\"progress\":{}}"),
                ev("message", None, ""),
            ]
        );
    }

    #[test]
    fn every_line_ending_and_any_chunking_read_the_same() {
        let lf = "event: end\nid: 3\ndata: a\ndata: b\n\n";
        let expected = vec![ev("end", Some("3"), "a\nb")];
        for text in [
            lf.to_owned(),
            lf.replace('\n', "\r\n"),
            lf.replace('\n', "\r"),
        ] {
            assert_eq!(parse_all(&[text.as_bytes()]).unwrap(), expected, "{text:?}");
            let bytes: Vec<&[u8]> = text.as_bytes().chunks(1).collect();
            assert_eq!(
                parse_all(&bytes).unwrap(),
                expected,
                "{text:?} byte by byte"
            );
        }
        // A CRLF cut between its CR and its LF is one line end, not two (which would dispatch early).
        assert_eq!(
            parse_all(&[b"data: x\r", b"\ndata: y\r", b"\n\r", b"\n"]).unwrap(),
            [ev("message", None, "x\ny")]
        );
    }

    #[test]
    fn a_byte_order_mark_is_skipped_even_when_cut_and_an_unfinished_event_is_not_dispatched() {
        assert_eq!(
            parse_all(&[&[0xEF, 0xBB], &[0xBF], b"data: 1\n\ndata: 2\n"]).unwrap(),
            [ev("message", None, "1")]
        );
        // Only at the very start.
        let out = parse_all(&[b"data: 1\n\n\xEF\xBB\xBFdata: 2\n\n"]).unwrap();
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn fields_follow_the_standard() {
        let mut parser = SseParser::new();
        let mut out = Vec::new();
        parser
            .push(
                b"id: 1\nevent: job\n\nid: a\0b\nretry: 1500\nretry: x\nfoo: bar\ndata:  two spaces\n\n",
                &mut out,
            )
            .unwrap();
        // An event without data is not dispatched, but its id still counts as the last one.
        assert_eq!(out, [ev("message", None, " two spaces")]);
        assert_eq!(parser.last_event_id(), Some("1"));
        assert_eq!(parser.retry_ms(), Some(1500));
    }

    #[test]
    fn a_line_past_the_limit_is_an_error_and_memory_stays_bounded() {
        let mut parser = SseParser::with_limits(16, 64);
        let mut out = Vec::new();
        parser
            .push(b"data: short\n\ndata: 0123456", &mut out)
            .unwrap();
        assert_eq!(out, [ev("message", None, "short")]);
        let err = parser.push(b"789abcdef", &mut out).unwrap_err();
        assert_eq!(err, SseError::LineTooLong { max: 16 });
        assert_eq!(parser.push(b"\n\n", &mut out), Err(err));
        assert!(parser.line.capacity() <= 16);

        let mut parser = SseParser::with_limits(16, 20);
        let result = parser.push(&b"data: 0123456789\n".repeat(3), &mut out);
        assert_eq!(result, Err(SseError::EventTooLarge { max: 20 }));

        // The real limit: a line of 1 MiB passes, one byte more does not.
        let mut parser = SseParser::new();
        let mut line = b"data:".to_vec();
        line.resize(MAX_LINE, b'x');
        parser.push(&line, &mut out).unwrap();
        assert!(parser.push(b"x", &mut out).is_err());
    }

    #[test]
    fn encoded_events_read_back() {
        for event in [
            ev("job", Some("1.2"), "{}"),
            ev("message", None, ""),
            ev("log", None, "a\n\nb"),
            ev(" spaced", Some(""), " x"),
        ] {
            assert_eq!(parse_all(&[encode(&event).as_bytes()]).unwrap(), [event]);
        }
    }
}

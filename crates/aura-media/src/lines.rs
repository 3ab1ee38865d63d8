//! Progress from a byte stream: `ProgressReader` cuts what a pipe delivers into lines (at `\n` or `\r`,
//! since FFmpeg's stderr status line ends in `\r`) and hands each to the parser of its format. Memory is
//! bounded: a line longer than `MAX_LINE` is skipped whole, however long it gets.

use crate::progress::{generic_line, status_line, ProgressBlocks, Report};

/// The longest line kept for parsing; a progress line is far shorter (FFmpeg's status line is ~120 bytes).
pub const MAX_LINE: usize = 4096;

/// Which parser the lines go to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// FFmpeg's `-progress` key=value blocks.
    FfmpegBlocks,
    /// FFmpeg's stderr status line; Aura's generic lines are read too.
    FfmpegStatus,
    /// Aura's generic `aura-progress` lines only.
    Generic,
}

/// Reads progress reports out of a stream of bytes, chunk by chunk.
#[derive(Debug)]
pub struct ProgressReader {
    format: Format,
    line: Vec<u8>,
    /// The current line went over `MAX_LINE`: skip to its end.
    overlong: bool,
    blocks: ProgressBlocks,
}

impl ProgressReader {
    /// A reader for `format`.
    pub fn new(format: Format) -> ProgressReader {
        ProgressReader {
            format,
            line: Vec::new(),
            overlong: false,
            blocks: ProgressBlocks::default(),
        }
    }

    /// Takes the next chunk of the stream; calls `report` for each report a line in it completes.
    pub fn feed(&mut self, bytes: &[u8], report: &mut dyn FnMut(Report)) {
        let mut rest = bytes;
        while let Some(end) = rest.iter().position(|b| *b == b'\n' || *b == b'\r') {
            let (head, tail) = rest.split_at(end);
            if !self.overlong && self.line.len() + head.len() <= MAX_LINE {
                self.line.extend_from_slice(head);
                self.take_line(report);
            }
            self.line.clear();
            self.overlong = false;
            rest = &tail[1..];
        }
        if self.overlong || self.line.len() + rest.len() > MAX_LINE {
            self.overlong = true;
            self.line.clear();
        } else {
            self.line.extend_from_slice(rest);
        }
    }

    /// The stream ended: a last line without its newline still counts.
    pub fn finish(&mut self, report: &mut dyn FnMut(Report)) {
        if !self.overlong && !self.line.is_empty() {
            self.take_line(report);
        }
        self.line.clear();
        self.overlong = false;
    }

    fn take_line(&mut self, report: &mut dyn FnMut(Report)) {
        let Ok(text) = std::str::from_utf8(&self.line) else {
            return;
        };
        let parsed = match self.format {
            Format::FfmpegBlocks => self.blocks.line(text),
            Format::FfmpegStatus => status_line(text).or_else(|| generic_line(text)),
            Format::Generic => generic_line(text),
        };
        if let Some(r) = parsed {
            report(r);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reports(format: Format, chunks: &[&[u8]]) -> Vec<Report> {
        let mut reader = ProgressReader::new(format);
        let mut out = Vec::new();
        for chunk in chunks {
            reader.feed(chunk, &mut |r| out.push(r));
        }
        reader.finish(&mut |r| out.push(r));
        out
    }

    #[test]
    fn blocks_split_anywhere_give_the_same_reports() {
        let text =
            b"frame=10\nout_time_us=400000\nspeed=2x\nprogress=continue\nframe=20\nprogress=end\n";
        let whole = reports(Format::FfmpegBlocks, &[text]);
        assert_eq!(whole.len(), 2);
        assert_eq!(whole[0].frame, Some(10));
        assert!(whole[1].end);
        for cut in 1..text.len() {
            let (a, b) = text.split_at(cut);
            assert_eq!(
                reports(Format::FfmpegBlocks, &[a, b]),
                whole,
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn status_lines_end_in_carriage_returns() {
        let text = b"Input #0, lavfi\r\nframe=   25 fps=0.0 q=28.0 size=       0kB time=00:00:00.92 bitrate=   0.4kbits/s speed=1.83x    \rframe=   50 fps= 49 q=28.0 size=     256kB time=00:00:01.92 bitrate=1091.2kbits/s speed=1.89x    \raura-progress 0.5";
        let out = reports(Format::FfmpegStatus, &[text]);
        assert_eq!(out.len(), 3);
        assert_eq!(out[1].frame, Some(50));
        assert_eq!(out[1].total_size, Some(256 * 1024));
        assert_eq!(out[2].fraction, Some(0.5), "the last line, unterminated");
    }

    #[test]
    fn an_overlong_line_is_skipped_whole() {
        let long = vec![b'x'; MAX_LINE + 10];
        let mut chunks: Vec<&[u8]> = vec![b"aura-progress 0.1\naura-progress 0."];
        chunks.extend(long.chunks(100));
        chunks.push(b"\naura-progress 0.3\n");
        let out = reports(Format::Generic, &chunks);
        let shares: Vec<_> = out.iter().map(|r| r.fraction).collect();
        assert_eq!(shares, [Some(0.1), Some(0.3)]);
        // Exactly MAX_LINE is kept, whole or cut anywhere; one byte more is not.
        let mut exact = b"aura-progress 0.2".to_vec();
        exact.resize(MAX_LINE, b' ');
        let mut line = exact.clone();
        line.push(b'\n');
        assert_eq!(reports(Format::Generic, &[&line]).len(), 1);
        for cut in [1, 100, MAX_LINE - 1, MAX_LINE] {
            let (a, b) = line.split_at(cut);
            assert_eq!(reports(Format::Generic, &[a, b]).len(), 1, "cut at {cut}");
        }
        assert_eq!(
            reports(Format::Generic, &[&exact]).len(),
            1,
            "unterminated, at the end"
        );
        let mut over = exact.clone();
        over.push(b' ');
        assert!(reports(Format::Generic, &[&over]).is_empty());
        assert!(reports(Format::Generic, &[&over[..10], &over[10..]]).is_empty());
        let mut over_line = over.clone();
        over_line.extend_from_slice(b"\naura-progress 0.9\n");
        let shares: Vec<_> = reports(Format::Generic, &[&over_line])
            .iter()
            .map(|r| r.fraction)
            .collect();
        assert_eq!(shares, [Some(0.9)], "only the line after the overlong one");
    }
}

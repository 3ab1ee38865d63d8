//! The `range` target: a download's request — the `Range` header (`aura_server::range::byte_range`),
//! against a file size the input names, and the file's path as the client names it
//! (`aura_engine::fuzzing::check_job_file_path`).

use aura_server::range::{byte_range, Ranged};

/// Reads `data` as `SIZE\nHEADER` (a first line that is not a number, or none: a 10000-byte file and
/// the whole input as the header) and checks:
/// - a part is a non-empty range inside the file: `start < end <= size`;
/// - `Unsatisfiable` only for one range that starts at or past the end (or asks for the last 0 bytes,
///   or any bytes of an empty file): a header with a `,` between two ranges is never refused;
/// - an accepted part written back as `bytes=START-(END-1)` reads as the same part, and so does the
///   unit in upper case; a part that reaches the end reads the same as the suffix `bytes=-(END-START)`
///   and the open range `bytes=START-`;
/// - a second range added (`, 0-0`) makes any header the whole file: several ranges are not served.
pub fn range(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        job_file_path(text);
    }
    let (size, header) = split(data);
    let ranged = byte_range(Some(header), size);
    assert_eq!(byte_range(Some(header), size), ranged, "not deterministic");
    match ranged {
        Ranged::Whole => {}
        Ranged::Part { start, end } => {
            assert!(
                start < end && end <= size,
                "part {start}..{end} of a {size}-byte file"
            );
            let written = format!("bytes={start}-{}", end - 1);
            assert_eq!(
                byte_range(Some(written.as_bytes()), size),
                ranged,
                "{written}"
            );
            let upper = written.to_ascii_uppercase();
            assert_eq!(byte_range(Some(upper.as_bytes()), size), ranged, "{upper}");
            if end == size {
                let suffix = format!("bytes=-{}", end - start);
                assert_eq!(
                    byte_range(Some(suffix.as_bytes()), size),
                    ranged,
                    "{suffix}"
                );
                let open = format!("bytes={start}-");
                assert_eq!(byte_range(Some(open.as_bytes()), size), ranged, "{open}");
            }
        }
        Ranged::Unsatisfiable => {
            let text = String::from_utf8_lossy(header);
            let set = text.split_once('=').map_or("", |(_, set)| set);
            let specs = set
                .split(',')
                .filter(|s| !s.trim_matches(is_ows).is_empty())
                .count();
            assert_eq!(specs, 1, "refused a header that is not one range: {text:?}");
        }
    }
    // With one non-empty range already, one more makes two: the whole file.
    if let Ok(text) = std::str::from_utf8(header) {
        let set = text.split_once('=').map_or("", |(_, set)| set);
        if set.split(',').any(|s| !s.trim_matches(is_ows).is_empty()) {
            let two = format!("{text}, 0-0");
            assert_eq!(
                byte_range(Some(two.as_bytes()), size),
                Ranged::Whole,
                "two ranges served: {two:?}"
            );
        }
    }
}

/// The file size and the header of an input.
fn split(data: &[u8]) -> (u64, &[u8]) {
    const DEFAULT_SIZE: u64 = 10_000;
    let Some(newline) = data.iter().position(|&b| b == b'\n') else {
        return (DEFAULT_SIZE, data);
    };
    match std::str::from_utf8(&data[..newline])
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
    {
        Some(size) => (size, &data[newline + 1..]),
        None => (DEFAULT_SIZE, data),
    }
}

/// Optional whitespace (RFC 9110 `OWS`), what the parser trims around a range.
fn is_ows(c: char) -> bool {
    c == ' ' || c == '\t'
}

/// A path the check accepts stays below the job's directory: relative, no NUL, every component a plain
/// name (no empty, `.` or `..` one), so that `Path::components` of it below any base is only `Normal`
/// parts, as many as the `/`-separated pieces.
fn job_file_path(path: &str) {
    use std::path::{Component, Path};
    let checked = aura_engine::fuzzing::check_job_file_path(path);
    assert_eq!(
        aura_engine::fuzzing::check_job_file_path(path),
        checked,
        "not deterministic"
    );
    if checked.is_err() {
        return;
    }
    assert!(
        !path.contains('\0') && !path.starts_with('/') && path.len() <= 4096,
        "{path:?}"
    );
    let components: Vec<Component> = Path::new(path).components().collect();
    assert!(
        components.iter().all(|c| matches!(c, Component::Normal(_))),
        "{path:?} accepted with {components:?}"
    );
    assert_eq!(components.len(), path.split('/').count(), "{path:?}");
}

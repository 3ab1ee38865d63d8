//! The routes of files in and out: `POST /api/uploads` (a raw body streamed into the engine's upload
//! sink, never held whole), `GET /api/jobs/{id}/files` (the listing) and `GET
//! /api/jobs/{id}/files/{*path}` (one file, with single byte ranges, validators and download
//! headers). The file system is the engine's business (`aura_engine::files`); here are the HTTP
//! headers and the streaming of bodies.

use crate::error::{ApiError, ErrorCode};
use crate::range::{byte_range, Ranged};
use crate::state::{job_id, AppState};
use aura_model::files::{JobFiles, UploadInfo};
use axum::body::{Body, Bytes};
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use std::sync::Arc;

type ApiResult<T> = Result<T, ApiError>;

/// `POST /api/uploads`: the request body, as it arrives, into `uploads/`. Not read by `read_body`: an
/// upload may be gigabytes, so neither `api.max_body` nor `api.request_timeout` for the whole body
/// applies, but `uploads.max_size` (checked against `Content-Length` before a byte is read, and again as
/// bytes come) and `api.request_timeout` between two pieces (a stalled client does not hold its
/// connection for ever). The guard stage lets any `Content-Type` through for this route: the bytes are
/// never parsed, and a cross-site page can send neither the bearer token nor, without `Origin`, the
/// session cookie's write.
#[utoipa::path(
    post, path = "/api/uploads", tag = "files", operation_id = "upload",
    summary = "Upload a file for jobs to read (a spec's `inputs`)",
    description = "The body is the file's raw bytes, streamed (any `Content-Type`; \
                   `application/octet-stream` is usual). The upload's id is the SHA-256 of its content: the \
                   same content uploaded again is stored once. A `Content-Length` over the cap is refused \
                   before the body is read (a client sending `Expect: 100-continue` sends none of it).",
    params(crate::query::UploadQuery),
    request_body(content = Vec<u8>, content_type = "application/octet-stream",
        description = "The file's bytes."),
    responses(
        (status = 201, description = "Stored under its id.", body = aura_model::files::UploadInfo),
        (status = 200, description = "The same content was already stored (`existing`); its clean-up clock starts again.",
            body = aura_model::files::UploadInfo),
        (status = 400, description = "A malformed `max` or `Content-Length`, or a body that broke off (`bad_request`)."),
        (status = 408, description = "No byte of the body arrived for `api.request_timeout` (`request_timeout`)."),
        (status = 413, description = "Larger than `uploads.max_size` or the query's `max` (`payload_too_large`)."),
        (status = 507, description = "The data volume has no room for it and `uploads.min_free` besides (`insufficient_storage`); nothing was kept."),
    )
)]
pub(crate) async fn upload(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
    mut body: Body,
) -> ApiResult<Response> {
    let client_max = crate::query::upload_max(q.as_deref())?;
    let declared = declared_length(&headers)?;
    let mut sink = match app.engine.begin_upload(declared, client_max).await {
        Ok(sink) => sink,
        Err(e) => {
            // A client waiting for `100 Continue` sends nothing (and reading would ask for it).
            let waits = headers
                .get(header::EXPECT)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
            if !waits && declared.is_some_and(|len| len <= DRAIN_BYTES) {
                drain(&mut body).await;
            }
            return Err(e.into());
        }
    };
    let idle = app.config.request_timeout;
    // Dropped on any early return (a refusal, a client that went away with the handler): the sink then
    // removes its partial file.
    loop {
        use http_body_util::BodyExt;
        let frame = tokio::time::timeout(idle, body.frame())
            .await
            .map_err(|_| {
                ApiError::new(
                    ErrorCode::RequestTimeout,
                    format!(
                        "no byte of the upload arrived for {} (after {} bytes)",
                        humantime::format_duration(idle),
                        sink.received()
                    ),
                )
            })?;
        match frame {
            None => break,
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    if let Err(e) = sink.write(&data).await {
                        drop(sink);
                        drain(&mut body).await;
                        return Err(e.into());
                    }
                }
            }
            Some(Err(e)) => {
                return Err(ApiError::bad_request(format!(
                    "reading the upload after {} bytes: {e}",
                    sink.received()
                )))
            }
        }
    }
    let info: UploadInfo = sink.finish().await?;
    let status = if info.existing {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(info)).into_response())
}

/// The most of a refused upload's body read (and dropped) before the refusal is sent, and how long
/// that may take.
const DRAIN_BYTES: u64 = 64 << 20;
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(10);

/// Reads and drops what is left of a refused upload's body, up to `DRAIN_BYTES` within `DRAIN_TIME`. A
/// connection closed with bytes unread is reset, and a client still sending loses the answer with it
/// (it sees a broken pipe, not why); beyond those bounds that is the lesser evil.
async fn drain(body: &mut Body) {
    use http_body_util::BodyExt;
    let deadline = tokio::time::Instant::now() + DRAIN_TIME;
    let mut left = DRAIN_BYTES;
    while left > 0 {
        match tokio::time::timeout_at(deadline, body.frame()).await {
            Ok(Some(Ok(frame))) => {
                let len = frame.data_ref().map_or(0, |d| d.len() as u64);
                left = left.saturating_sub(len);
            }
            _ => break,
        }
    }
}

/// The body's size as the client declared it (`Content-Length`), if it did.
fn declared_length(headers: &HeaderMap) -> ApiResult<Option<u64>> {
    headers
        .get(header::CONTENT_LENGTH)
        .map(|v| {
            v.to_str()
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or_else(|| ApiError::bad_request("Content-Length is not a number of bytes"))
        })
        .transpose()
}

#[utoipa::path(
    get, path = "/api/jobs/{id}/files", tag = "files", operation_id = "job_files",
    summary = "A job's files: its working directory, or its archive",
    description = "Every entry of the job's working directory (`work/<id>/` in the data dir), depth first, \
                   names in byte order, at most 10000 (`truncated` says when there were more); symlinks are \
                   listed as such and never followed. Once the janitor archived the directory, the \
                   archive's members (`source`: `archive`).",
    params(("id" = i64, Path, description = "The job's id.", minimum = 1, example = 1)),
    responses(
        (status = 200, description = "The listing.", body = aura_model::files::JobFiles),
        (status = 400, description = "The id is not a positive integer (`bad_request`)."),
        (status = 404, description = "No such job, or one without files: not started, with a working directory of its own, or its directory removed (`not_found`; `detail` says which)."),
    )
)]
pub(crate) async fn job_files(
    State(app): State<Arc<AppState>>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<JobFiles>> {
    Ok(Json(app.engine.job_files(job_id(id)?).await?))
}

#[utoipa::path(
    get, path = "/api/jobs/{id}/files/{path}", tag = "files", operation_id = "job_file",
    summary = "Download one of a job's files (single byte ranges)",
    description = "A regular file of the job's directory (or its archive), by its path in the listing. \
                   A path that leaves the directory (`..`), passes through a symlink or names anything \
                   but a regular file is refused (403). `Range: bytes=A-B`, `bytes=A-` and `bytes=-N` \
                   get 206 with `Content-Range`; several ranges, or an `If-Range` that does not match, \
                   get the whole file. `HEAD` answers the headers alone.",
    params(
        ("id" = i64, Path, description = "The job's id.", minimum = 1, example = 1),
        ("path" = String, Path, description = "The file's path relative to the job's directory (`out.mp4`, `sub/x.txt`; `/` may be sent as `%2F`)."),
        ("Range" = Option<String>, Header, description = "One byte range: `bytes=100-199`, `bytes=100-`, `bytes=-500`."),
        ("If-Range" = Option<String>, Header, description = "Send the range only if the file still has this `ETag` (or `Last-Modified`)."),
    ),
    responses(
        (status = 200, description = "The whole file.", body = Vec<u8>, content_type = "*/*",
            headers(
                ("Content-Length" = u64, description = "Bytes."),
                ("Accept-Ranges" = String, description = "`bytes`."),
                ("ETag" = String, description = "Changes with the file's size, modification time or inode."),
                ("Last-Modified" = String, description = "Its modification time."),
                ("Content-Disposition" = String, description = "`attachment` with the file's name."),
            )),
        (status = 206, description = "The range asked for.", body = Vec<u8>, content_type = "*/*",
            headers(("Content-Range" = String, description = "`bytes START-END/SIZE`."))),
        (status = 400, description = "The id is not a positive integer, or the path is not UTF-8 (`bad_request`)."),
        (status = 403, description = "The path leaves the job's directory, passes through a symlink, or is not a regular file (`forbidden_path`)."),
        (status = 404, description = "No such job, file, or no files (`not_found`)."),
        (status = 416, description = "No byte of the file is in the range (`range_not_satisfiable`); `Content-Range: bytes */SIZE`.",
            headers(("Content-Range" = String, description = "`bytes */SIZE`."))),
    )
)]
pub(crate) async fn job_file(
    State(app): State<Arc<AppState>>,
    method: Method,
    path: Result<Path<(String, String)>, PathRejection>,
    request: HeaderMap,
) -> ApiResult<Response> {
    let Path((id, path)) = path.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let id = job_id(Ok(Path(id)))?;
    let file = app.engine.open_job_file(id, &path).await?;
    let size = file.size;
    let etag = format!("\"{}\"", file.tag);
    let last_modified = httpdate::fmt_http_date(file.modified.to_system_time());
    // Ranges are defined for GET alone (RFC 9110 §14.2); an If-Range that no longer matches asks for
    // the whole, changed file.
    let range = request
        .get(header::RANGE)
        .filter(|_| method == Method::GET)
        .filter(|_| {
            request.get(header::IF_RANGE).map_or(true, |v| {
                if_range_matches(v.as_bytes(), &etag, &last_modified)
            })
        });
    let ranged = byte_range(range.map(HeaderValue::as_bytes), size);

    let mut headers = HeaderMap::new();
    let text = |v: &str| HeaderValue::from_str(v).ok();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(content_type(&path)),
    );
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if let Some(v) = text(&etag) {
        headers.insert(header::ETAG, v);
    }
    if let Some(v) = text(&last_modified) {
        headers.insert(header::LAST_MODIFIED, v);
    }
    let name = path.rsplit('/').next().unwrap_or(&path);
    if let Some(v) = text(&content_disposition(name)) {
        headers.insert(header::CONTENT_DISPOSITION, v);
    }
    let (status, start, end) = match ranged {
        Ranged::Whole => (StatusCode::OK, 0, size),
        Ranged::Part { start, end } => {
            let range = format!("bytes {start}-{}/{size}", end - 1);
            if let Some(v) = text(&range) {
                headers.insert(header::CONTENT_RANGE, v);
            }
            (StatusCode::PARTIAL_CONTENT, start, end)
        }
        Ranged::Unsatisfiable => {
            let mut refusal = ApiError::new(
                ErrorCode::RangeNotSatisfiable,
                format!("the file has {size} bytes: no byte of it is in the range asked for"),
            )
            .into_response();
            if let Some(v) = text(&format!("bytes */{size}")) {
                refusal.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return Ok(refusal);
        }
    };
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(end - start));
    if method == Method::HEAD {
        // Dropping the file ends an archive's reader thread before it decompresses anything.
        return Ok((status, headers, Body::empty()).into_response());
    }
    let reader = file.read(start, end);
    let body = Body::from_stream(futures_util::stream::unfold(
        reader,
        |mut reader| async move {
            let piece = reader.next_chunk().await?;
            Some((piece.map(Bytes::from), reader))
        },
    ));
    Ok((status, headers, body).into_response())
}

/// Whether an `If-Range` value still names the file: its entity tag (compared strongly: a weak one
/// never matches), or exactly its `Last-Modified` date.
fn if_range_matches(value: &[u8], etag: &str, last_modified: &str) -> bool {
    let value = value.trim_ascii();
    if value.starts_with(b"W/") {
        return false;
    }
    value == etag.as_bytes() || (!value.starts_with(b"\"") && value == last_modified.as_bytes())
}

/// The media type of a file by its extension: the media a job makes and what comes with it; anything
/// else is `application/octet-stream` (and `X-Content-Type-Options: nosniff` keeps a browser from
/// guessing more, say HTML).
fn content_type(path: &str) -> &'static str {
    let extension = path
        .rsplit('/')
        .next()
        .and_then(|name| name.rsplit_once('.'))
        .map(|(_, ext)| ext.to_ascii_lowercase());
    match extension.as_deref() {
        Some("mp4" | "m4v") => "video/mp4",
        Some("mov") => "video/quicktime",
        Some("mkv") => "video/x-matroska",
        Some("webm") => "video/webm",
        Some("m4a") => "audio/mp4",
        Some("mp3") => "audio/mpeg",
        Some("wav") => "audio/wav",
        Some("flac") => "audio/flac",
        Some("aac") => "audio/aac",
        Some("srt") => "application/x-subrip",
        Some("vtt") => "text/vtt; charset=utf-8",
        Some("json") => "application/json",
        Some("txt" | "log") => "text/plain; charset=utf-8",
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        _ => "application/octet-stream",
    }
}

/// `Content-Disposition` of a download named `name`: `attachment`, an ASCII `filename` for old clients
/// and the exact name as RFC 8187 `filename*`.
fn content_disposition(name: &str) -> String {
    let ascii: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let mut encoded = String::with_capacity(name.len() * 3);
    for b in name.bytes() {
        // RFC 8187 attr-char: the rest is percent-encoded.
        if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
            encoded.push(char::from(b));
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    format!("attachment; filename=\"{ascii}\"; filename*=UTF-8''{encoded}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_types_by_extension() {
        for (path, expected) in [
            ("out.mp4", "video/mp4"),
            ("sub/OUT.MOV", "video/quicktime"),
            ("a.b/c", "application/octet-stream"),
            ("x.html", "application/octet-stream"),
            ("subs.vtt", "text/vtt; charset=utf-8"),
            ("ffmpeg.log", "text/plain; charset=utf-8"),
            ("noext", "application/octet-stream"),
        ] {
            assert_eq!(content_type(path), expected, "{path}");
        }
    }

    #[test]
    fn download_names_survive_any_characters() {
        assert_eq!(
            content_disposition("out.mp4"),
            "attachment; filename=\"out.mp4\"; filename*=UTF-8''out.mp4"
        );
        assert_eq!(
            content_disposition("ü \"x\".wav"),
            "attachment; filename=\"_ _x_.wav\"; filename*=UTF-8''%C3%BC%20%22x%22.wav"
        );
        assert!(HeaderValue::from_str(&content_disposition("a\r\nb")).is_ok());
    }

    #[test]
    fn if_range_matches_the_strong_tag_or_the_exact_date() {
        let (etag, date) = ("\"a-b-c\"", "Tue, 15 Nov 1994 08:12:31 GMT");
        assert!(if_range_matches(b"\"a-b-c\"", etag, date));
        assert!(if_range_matches(b" \"a-b-c\" ", etag, date));
        assert!(!if_range_matches(b"W/\"a-b-c\"", etag, date));
        assert!(!if_range_matches(b"\"other\"", etag, date));
        assert!(if_range_matches(date.as_bytes(), etag, date));
        assert!(!if_range_matches(
            b"Tue, 15 Nov 1994 08:12:32 GMT",
            etag,
            date
        ));
    }
}

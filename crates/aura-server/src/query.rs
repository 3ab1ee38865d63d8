//! The query strings of every route, parsed from the raw text into what the handlers need: pure
//! functions (no engine, no I/O), so that the fuzz targets run exactly what the server runs.

use crate::error::ApiError;
use aura_logs::Stream;
use aura_model::{JobId, StateName};
use aura_store::ListFilter;
use serde::Deserialize;
use std::time::Duration;

type ApiResult<T> = Result<T, ApiError>;

/// Decodes `raw` (`None`: no query) into `T`; unknown and malformed parameters are a 400.
fn decode<T: serde::de::DeserializeOwned>(raw: Option<&str>) -> ApiResult<T> {
    serde_urlencoded::from_str(raw.unwrap_or(""))
        .map_err(|e| ApiError::bad_request(format!("invalid query string: {e}")))
}

/// The most a listing returns at once.
pub const MAX_PAGE: u32 = 1000;

/// A listing's `limit` parameter: 100 when absent, 1 to `MAX_PAGE` when given.
fn page_limit(limit: Option<u32>) -> ApiResult<u32> {
    match limit.unwrap_or(100) {
        l @ 1..=MAX_PAGE => Ok(l),
        _ => Err(ApiError::bad_request(format!(
            "limit must be between 1 and {MAX_PAGE}"
        ))),
    }
}

/// The parameters of `GET /api/jobs` (also its OpenAPI parameters).
#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListQuery {
    /// Only jobs in these states: comma-separated state names (`queued,running`). Default: all.
    #[param(
        pattern = "^((queued|held|running|paused|stopping|finished)(,(queued|held|running|paused|stopping|finished))*)?$"
    )]
    state: Option<String>,
    /// Only jobs carrying this label with exactly this value, as `KEY=VALUE` (`label=project=trailer`,
    /// the first `=` ends the key); repeatable, and a job must carry every label given (at most 64).
    /// Keys are letters, digits and `_ - . /`, values at most 256 bytes, as in a job's `labels`. Default:
    /// any labels.
    #[param(style = Form, explode, max_items = 64, example = json!(["project=trailer", "kind=encode"]))]
    #[serde(default)]
    label: Vec<String>,
    /// The most jobs on the page. Default: 100.
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
    /// Continue after this job id: the previous page's `next_after`.
    after: Option<i64>,
    /// `desc` (newest first, default) or `asc`.
    #[param(pattern = "^(asc|desc)$")]
    order: Option<String>,
}

impl ListQuery {
    /// Decodes `raw` as `decode` does, `label` repeatable: serde_urlencoded refuses a key given twice, so
    /// the `label` pairs are taken out first and the rest decoded as usual.
    fn decode(raw: Option<&str>) -> ApiResult<ListQuery> {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw.unwrap_or(""))
            .map_err(|e| ApiError::bad_request(format!("invalid query string: {e}")))?;
        let (labels, rest): (Vec<_>, Vec<_>) = pairs.into_iter().partition(|(k, _)| k == "label");
        let rest = serde_urlencoded::to_string(&rest)
            .map_err(|e| ApiError::bad_request(format!("invalid query string: {e}")))?;
        let mut q: ListQuery = decode(Some(&rest))?;
        q.label = labels.into_iter().map(|(_, v)| v).collect();
        Ok(q)
    }
}

/// One `label` parameter, `KEY=VALUE`, held to the rules of a job's labels (`aura_model::check_label`):
/// a filter no job could match is a mistake worth saying, not an empty page.
fn label_filter(text: &str) -> ApiResult<(String, String)> {
    let (key, value) = text.split_once('=').ok_or_else(|| {
        ApiError::bad_request(format!(
            "invalid label filter {text:?}: expected KEY=VALUE, e.g. label=project=trailer"
        ))
    })?;
    aura_model::check_label(key, value)
        .map_err(|e| ApiError::bad_request(format!("invalid label filter {text:?}: {e}")))?;
    Ok((key.to_owned(), value.to_owned()))
}

/// `GET /api/jobs?state=queued,running&label=K=V&label=K2=V2&limit=100&after=ID&order=desc`.
pub fn list_filter(raw: Option<&str>) -> ApiResult<ListFilter> {
    let q = ListQuery::decode(raw)?;
    if q.label.len() > aura_model::limits::MAX_LABELS {
        return Err(ApiError::bad_request(format!(
            "too many label filters: at most {} (a job carries no more labels)",
            aura_model::limits::MAX_LABELS
        )));
    }
    let labels = q
        .label
        .iter()
        .map(|text| label_filter(text))
        .collect::<Result<_, _>>()?;
    let states = match q.state.as_deref() {
        None | Some("") => Vec::new(),
        Some(text) => text
            .split(',')
            .map(|s| s.trim().parse::<StateName>().map_err(ApiError::bad_request))
            .collect::<Result<_, _>>()?,
    };
    let newest_first = match q.order.as_deref() {
        None | Some("desc") => true,
        Some("asc") => false,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "invalid order {other:?}: use asc or desc"
            )))
        }
    };
    Ok(ListFilter {
        states,
        labels,
        after: q.after.map(JobId),
        limit: page_limit(q.limit)?,
        newest_first,
    })
}

/// The parameters of `GET /api/events` (also its OpenAPI parameters).
#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct EngineEventsQuery {
    /// Sequence number to continue after (0: from the start). Default: 0.
    after: Option<i64>,
    /// The most events returned. Default: 100.
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
}

/// `GET /api/events?after=SEQ&limit=100`: (after, limit).
pub fn events_page(raw: Option<&str>) -> ApiResult<(i64, u32)> {
    let q: EngineEventsQuery = decode(raw)?;
    Ok((q.after.unwrap_or(0), page_limit(q.limit)?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StreamQuery {
    /// Where to resume (the last event id seen), instead of the `Last-Event-ID` header.
    after: Option<String>,
    /// Progress events of running jobs (default true).
    progress: Option<bool>,
    /// Engine events, on the all-jobs stream (default true).
    engine: Option<bool>,
    /// A captured stream's new output as `log` events (per-job stream only).
    logs: Option<String>,
}

/// Where an event stream resumes: past these sequence numbers of the job log and of the engine log
/// (`None`: from the newest, nothing replayed).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cursor {
    /// The last job event seen.
    pub job: Option<i64>,
    /// The last engine event seen.
    pub engine: Option<i64>,
}

impl Cursor {
    /// The event id carrying this cursor: `J` on a job's stream, `J.E` on the all-jobs stream.
    pub fn id(&self, per_job: bool) -> String {
        let job = self.job.unwrap_or(0);
        if per_job {
            job.to_string()
        } else {
            format!("{job}.{}", self.engine.unwrap_or(0))
        }
    }
}

/// What an event stream request asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamRequest {
    /// Where to resume; both `None`: a fresh subscription.
    pub cursor: Cursor,
    /// Send running jobs' progress.
    pub progress: bool,
    /// Send engine events (the all-jobs stream).
    pub engine: bool,
    /// Send this captured stream's new output (a job's stream).
    pub logs: Option<Stream>,
}

/// `GET /api/events/stream?after=J.E&progress=true&engine=true` and `GET
/// /api/jobs/{id}/events/stream?after=J&logs=stderr`, with the `Last-Event-ID` header (the query's
/// `after` wins). An id is `J` (a job's stream) or `J.E` (the all-jobs stream; `J` alone resumes the
/// job log only).
pub fn stream_request(
    raw: Option<&str>,
    last_event_id: Option<&str>,
    per_job: bool,
) -> ApiResult<StreamRequest> {
    let q: StreamQuery = decode(raw)?;
    if per_job && q.engine.is_some() {
        return Err(ApiError::bad_request(
            "engine applies to the all-jobs stream only",
        ));
    }
    if !per_job && q.logs.is_some() {
        return Err(ApiError::bad_request("logs applies to a job's stream only"));
    }
    let logs = q
        .logs
        .as_deref()
        .map(|s| {
            s.parse::<Stream>()
                .map_err(|e| ApiError::bad_request(e.to_string()))
        })
        .transpose()?;
    let cursor = match q.after.as_deref().or(last_event_id) {
        None => Cursor::default(),
        Some(text) => parse_cursor(text.trim(), per_job)?,
    };
    Ok(StreamRequest {
        cursor,
        progress: q.progress.unwrap_or(true),
        engine: q.engine.unwrap_or(true),
        logs,
    })
}

fn parse_cursor(text: &str, per_job: bool) -> ApiResult<Cursor> {
    let bad = || {
        ApiError::bad_request(format!(
            "invalid event id {text:?}: expected {}",
            if per_job { "N" } else { "N or N.M" }
        ))
    };
    let seq = |t: &str| t.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(bad);
    match text.split_once('.') {
        None => Ok(Cursor {
            job: Some(seq(text)?),
            engine: None,
        }),
        Some((job, engine)) if !per_job => Ok(Cursor {
            job: Some(seq(job)?),
            engine: Some(seq(engine)?),
        }),
        Some(_) => Err(bad()),
    }
}

/// The parameters of `GET /api/metrics/system` (also its OpenAPI parameters).
#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct SystemQuery {
    /// `true` for the recent snapshots (oldest first) instead of the latest. Default: false.
    history: Option<bool>,
}

/// `GET /api/metrics/system?history=true`: whether the history is asked for.
pub fn system_history(raw: Option<&str>) -> ApiResult<bool> {
    Ok(decode::<SystemQuery>(raw)?.history.unwrap_or(false))
}

/// The parameters of `GET /api/jobs/{id}/logs` (also its OpenAPI parameters).
#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct LogQuery {
    /// Which captured stream: `stdout` (default) or `stderr`.
    #[param(pattern = "^(stdout|stderr)$")]
    stream: Option<String>,
    /// The logical byte offset to read from (the previous answer's `Aura-Log-Next-Offset`). Default: 0.
    offset: Option<u64>,
    /// The most bytes returned, taken as 1 to 4 MiB (4194304). Default: 1 MiB.
    max: Option<usize>,
    /// Which attempt's output (1 is the first). Default: the job's latest.
    attempt: Option<u32>,
}

/// The most bytes one log request returns.
pub const MAX_LOG_CHUNK: usize = 4 * 1024 * 1024;

/// What a log request asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogRequest {
    /// Which stream to read. Default: stdout.
    pub stream: Stream,
    /// The logical byte offset to read from. Default: 0.
    pub offset: u64,
    /// 1 to `MAX_LOG_CHUNK` bytes.
    pub max: usize,
    /// Which attempt's output; `None`: the job's latest.
    pub attempt: Option<u32>,
}

/// `GET /api/jobs/{id}/logs?stream=stdout&offset=0&max=N&attempt=N`.
pub fn log_request(raw: Option<&str>) -> ApiResult<LogRequest> {
    let q: LogQuery = decode(raw)?;
    let stream = match q.stream.as_deref() {
        None => Stream::Stdout,
        Some(s) => s.parse::<Stream>().map_err(|_| {
            ApiError::bad_request(format!("invalid stream {s:?}: use stdout or stderr"))
        })?,
    };
    Ok(LogRequest {
        stream,
        offset: q.offset.unwrap_or(0),
        max: q.max.unwrap_or(1024 * 1024).clamp(1, MAX_LOG_CHUNK),
        attempt: q.attempt,
    })
}

/// The parameters of `GET /api/jobs/{id}/wait` (also its OpenAPI parameters).
#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct WaitQuery {
    /// How long to hold the request at most, as humantime text (`30s`, `2m`); capped at the server's
    /// `max_wait` (5 minutes). Default: 30s.
    #[param(example = "2s")]
    timeout: Option<String>,
}

/// `GET /api/jobs/{id}/wait?timeout=30s`: how long to hold the request, at most `max`.
pub fn wait_timeout(raw: Option<&str>, max: Duration) -> ApiResult<Duration> {
    let timeout = match decode::<WaitQuery>(raw)?.timeout {
        None => Duration::from_secs(30),
        Some(t) => humantime::parse_duration(&t)
            .map_err(|e| ApiError::bad_request(format!("invalid timeout {t:?}: {e}")))?,
    };
    Ok(timeout.min(max))
}

/// The parameters of `POST /api/uploads` (also its OpenAPI parameters).
#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct UploadQuery {
    /// The client's own cap on the upload: bytes, or a size such as `512M` or `2G` (powers of 1024).
    /// The smaller of it and the daemon's `uploads.max_size` applies. Default: the daemon's.
    #[param(example = "2G")]
    max: Option<String>,
}

/// `POST /api/uploads?max=2G`: the client's own cap on the upload, in bytes.
pub fn upload_max(raw: Option<&str>) -> ApiResult<Option<u64>> {
    decode::<UploadQuery>(raw)?
        .max
        .map(|text| {
            text.parse::<aura_model::ByteSize>()
                .map(aura_model::ByteSize::bytes)
                .map_err(|e| ApiError::bad_request(format!("invalid max: {e}")))
        })
        .transpose()
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_upload_cap_is_a_size() {
        assert_eq!(super::upload_max(None).unwrap(), None);
        assert_eq!(super::upload_max(Some("max=1024")).unwrap(), Some(1024));
        assert_eq!(super::upload_max(Some("max=2M")).unwrap(), Some(2 << 20));
        assert!(super::upload_max(Some("max=lots")).is_err());
        assert!(super::upload_max(Some("size=1")).is_err());
    }

    use super::*;

    #[test]
    fn stream_requests_and_their_cursors() {
        let all = stream_request(None, Some("12.3"), false).unwrap();
        assert_eq!(
            all.cursor,
            Cursor {
                job: Some(12),
                engine: Some(3)
            }
        );
        assert!(all.progress && all.engine && all.logs.is_none());
        assert_eq!(all.cursor.id(false), "12.3");
        // The query's `after` wins over the header.
        let q = stream_request(Some("after=40&progress=false"), Some("12.3"), false).unwrap();
        assert_eq!(
            q.cursor,
            Cursor {
                job: Some(40),
                engine: None
            }
        );
        assert!(!q.progress);
        let job = stream_request(Some("logs=stderr"), Some(" 7 "), true).unwrap();
        assert_eq!(job.cursor.id(true), "7");
        assert_eq!(job.logs, Some(Stream::Stderr));
        assert_eq!(
            stream_request(None, None, true).unwrap().cursor,
            Cursor::default()
        );
        for (raw, header, per_job) in [
            (None, Some("1.2"), true),
            (None, Some("-1"), false),
            (None, Some("x.1"), false),
            (None, Some("1.2.3"), false),
            (Some("engine=false"), None, true),
            (Some("logs=stdout"), None, false),
            (Some("logs=video"), None, true),
            (Some("bogus=1"), None, false),
        ] {
            assert!(
                stream_request(raw, header, per_job).is_err(),
                "{raw:?} {header:?} {per_job}"
            );
        }
    }

    #[test]
    fn label_filters_are_repeatable_key_value_pairs() {
        let pair = |k: &str, v: &str| (k.to_owned(), v.to_owned());
        let f = list_filter(Some(
            "label=project=trailer&state=queued&label=kind%3Dencode&label=team.io/x=a%3Db+c&limit=5",
        ))
        .unwrap();
        assert_eq!(
            f.labels,
            [
                pair("project", "trailer"),
                pair("kind", "encode"),
                // The first `=` ends the key; the value may hold more, and spaces.
                pair("team.io/x", "a=b c"),
            ]
        );
        assert_eq!((f.states, f.limit), (vec![StateName::Queued], 5));
        assert!(list_filter(None).unwrap().labels.is_empty());
        assert_eq!(
            list_filter(Some("label=note=")).unwrap().labels,
            [pair("note", "")],
            "an empty value is a value a job may carry"
        );
        let too_many: Vec<String> = (0..=aura_model::limits::MAX_LABELS)
            .map(|n| format!("label=k{n}=v"))
            .collect();
        let at_most: Vec<String> = too_many[1..].to_vec();
        assert_eq!(
            list_filter(Some(&at_most.join("&"))).unwrap().labels.len(),
            aura_model::limits::MAX_LABELS
        );
        let long = format!("label=k={}", "v".repeat(257));
        for (bad, says) in [
            ("label=project", "expected KEY=VALUE"),
            ("label=", "expected KEY=VALUE"),
            ("label", "expected KEY=VALUE"),
            ("label==trailer", "invalid label name \"\""),
            ("label=bad%20key=x", "invalid label name \"bad key\""),
            ("label=a%22b=x", "invalid label name"),
            ("label=k=a%00b", "NUL"),
            (long.as_str(), "longer than 256 bytes"),
            (too_many.join("&").as_str(), "too many label filters"),
            // The rest of the query is still checked.
            ("label=a=b&labels=c=d", "unknown field"),
            ("label=a=b&state=bogus", "bogus"),
        ] {
            match list_filter(Some(bad)) {
                Ok(f) => panic!("{bad:?} accepted: {f:?}"),
                Err(e) => {
                    assert_eq!(e.code, crate::ErrorCode::BadRequest, "{bad:?}");
                    assert!(e.detail.contains(says), "{bad:?}: {}", e.detail);
                }
            }
        }
    }

    #[test]
    fn queries_parse_or_say_what_is_wrong() {
        let f = list_filter(Some("state=queued,running&limit=5&after=9&order=asc")).unwrap();
        assert_eq!(f.states, vec![StateName::Queued, StateName::Running]);
        assert_eq!(
            (f.limit, f.after, f.newest_first),
            (5, Some(JobId(9)), false)
        );
        assert_eq!(list_filter(None).unwrap().limit, 100);
        for bad in [
            "state=bogus",
            "limit=0",
            "limit=1001",
            "order=up",
            "limit=x",
            "extra=1",
        ] {
            assert!(list_filter(Some(bad)).is_err(), "{bad}");
        }
        assert_eq!(events_page(Some("after=3")).unwrap(), (3, 100));
        assert!(system_history(Some("history=true")).unwrap());
        assert!(system_history(Some("history=maybe")).is_err());
        let l = log_request(Some("stream=stderr&offset=7&max=999999999")).unwrap();
        assert_eq!(
            (l.stream, l.offset, l.max),
            (Stream::Stderr, 7, MAX_LOG_CHUNK)
        );
        assert!(log_request(Some("stream=stdin")).is_err());
        let max = Duration::from_secs(300);
        assert_eq!(
            wait_timeout(Some("timeout=2s"), max).unwrap(),
            Duration::from_secs(2)
        );
        assert_eq!(wait_timeout(Some("timeout=1h"), max).unwrap(), max);
        assert!(wait_timeout(Some("timeout=soon"), max).is_err());
    }
}

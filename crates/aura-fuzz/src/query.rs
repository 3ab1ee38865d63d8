//! The `query` target: the query strings of the HTTP API (`aura_server::query`), each parser fed the same
//! raw text, as the handlers get it from the request target.

use aura_server::query::{self, MAX_LOG_CHUNK, MAX_PAGE};
use aura_server::{ApiError, ErrorCode};
use std::time::Duration;

/// Runs every query parser of the API on `data` as the raw query text (inputs that are not UTF-8 are
/// skipped: a request target is text, and axum hands the handlers a `&str`; an empty input stands for
/// both `?` and no query at all, which must agree). For each:
/// - parsing is deterministic;
/// - a refusal is a 400 (`ErrorCode::BadRequest`) that says why;
/// - what is accepted is within its documented bounds: a page `limit` in 1..=`MAX_PAGE`, a log `max` in
///   1..=`MAX_LOG_CHUNK`, a wait timeout at most the `max` the route passes (the daemon's 300 s, and a
///   second, smaller one);
/// - an accepted list filter's labels each obey a job's label rules (`aura_model::check_label`);
/// - an accepted value written back as a query string (as a client such as `aura-client` would) parses
///   to the same value: the list filter (its labels as repeated `label=` pairs), the events page, the history flag, the log request, and the
///   wait timeout (through `humantime::format_duration`), an upload's `max` (as plain bytes).
pub fn query(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let raw = Some(text);
    if text.is_empty() {
        assert_eq!(
            outcomes(None),
            outcomes(raw),
            "no query and an empty one differ"
        );
    }
    list_filter(raw);
    events_page(raw);
    system_history(raw);
    log_request(raw);
    wait_timeout(raw);
    stream_request(raw);
    upload_max(raw);
}

/// An upload's `max` (the client's own cap): a refusal is a 400; an accepted cap written back as plain
/// bytes (`max=N`, as `aura upload` would send it) reads as the same cap.
fn upload_max(raw: Option<&str>) {
    match query::upload_max(raw) {
        Ok(Some(max)) => assert_eq!(
            query::upload_max(Some(&format!("max={max}"))).map_err(shown),
            Ok(Some(max)),
            "upload_max({raw:?})"
        ),
        Ok(None) => {}
        Err(e) => check_refusal("upload_max", raw, e),
    }
}

/// Every parser's result, comparable (errors by code and detail).
fn outcomes(raw: Option<&str>) -> String {
    format!(
        "{:?}\n{:?}\n{:?}\n{:?}\n{:?}",
        query::list_filter(raw).map_err(shown),
        query::events_page(raw).map_err(shown),
        query::system_history(raw).map_err(shown),
        query::log_request(raw).map_err(shown),
        query::wait_timeout(raw, daemon_max_wait()).map_err(shown),
    )
}

fn shown(e: ApiError) -> (ErrorCode, String) {
    (e.code, e.detail)
}

/// A refusal of a query string is a 400 with a reason.
fn check_refusal(what: &str, raw: Option<&str>, e: ApiError) {
    assert_eq!(
        e.code,
        ErrorCode::BadRequest,
        "{what}({raw:?}) refused with {:?}: {}",
        e.code,
        e.detail
    );
    assert!(
        !e.detail.is_empty(),
        "{what}({raw:?}) refused without a reason"
    );
}

fn list_filter(raw: Option<&str>) {
    let parsed = query::list_filter(raw);
    assert_eq!(
        parsed.as_ref().map_err(|e| (e.code, &e.detail)),
        query::list_filter(raw)
            .as_ref()
            .map_err(|e| (e.code, &e.detail)),
        "list_filter is not deterministic"
    );
    let filter = match parsed {
        Ok(filter) => filter,
        Err(e) => return check_refusal("list_filter", raw, e),
    };
    assert!(
        (1..=MAX_PAGE).contains(&filter.limit),
        "list_filter({raw:?}) accepted limit {}",
        filter.limit
    );
    let mut pairs = vec![format!("limit={}", filter.limit)];
    if !filter.states.is_empty() {
        let states: Vec<&str> = filter.states.iter().map(|s| s.as_str()).collect();
        pairs.push(format!("state={}", states.join(",")));
    }
    if let Some(after) = filter.after {
        pairs.push(format!("after={}", after.0));
    }
    // Repeated, as `aura-client` sends them; every label accepted obeys the label rules.
    for (key, value) in &filter.labels {
        assert!(
            aura_model::check_label(key, value).is_ok(),
            "list_filter({raw:?}) accepted the label {key:?}={value:?}"
        );
        pairs.push(format!(
            "label={}",
            percent_encoded(&format!("{key}={value}"))
        ));
    }
    pairs.push(format!(
        "order={}",
        if filter.newest_first { "desc" } else { "asc" }
    ));
    let written = pairs.join("&");
    match query::list_filter(Some(&written)) {
        Ok(back) => assert_eq!(
            back, filter,
            "list_filter({raw:?}) changed when written back as {written:?}"
        ),
        Err(e) => panic!(
            "list_filter({raw:?}) accepted, written back as {written:?} refused: {}",
            e.detail
        ),
    }
}

/// `text` percent-encoded but for the characters a query value never needs encoded, as a client's URL
/// encoder writes it.
fn percent_encoded(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn events_page(raw: Option<&str>) {
    let (after, limit) = match query::events_page(raw) {
        Ok(page) => page,
        Err(e) => return check_refusal("events_page", raw, e),
    };
    assert!(
        (1..=MAX_PAGE).contains(&limit),
        "events_page({raw:?}) accepted limit {limit}"
    );
    let written = format!("after={after}&limit={limit}");
    match query::events_page(Some(&written)) {
        Ok(back) => assert_eq!(
            back,
            (after, limit),
            "events_page({raw:?}) changed when written back as {written:?}"
        ),
        Err(e) => panic!(
            "events_page({raw:?}) accepted, written back as {written:?} refused: {}",
            e.detail
        ),
    }
}

fn system_history(raw: Option<&str>) {
    let history = match query::system_history(raw) {
        Ok(history) => history,
        Err(e) => return check_refusal("system_history", raw, e),
    };
    let written = format!("history={history}");
    let back = query::system_history(Some(&written)).map_err(|e| e.detail);
    assert_eq!(
        back,
        Ok(history),
        "system_history({raw:?}) changed when written back as {written:?}"
    );
}

/// Both event streams' requests, the text read as the query and (the same text) as `Last-Event-ID`: an
/// accepted request's cursor written back as the event id the stream would send resumes at the same point.
fn stream_request(raw: Option<&str>) {
    for per_job in [false, true] {
        for (query_text, header) in [(raw, None), (None, raw)] {
            let request = match query::stream_request(query_text, header, per_job) {
                Ok(request) => request,
                Err(e) => {
                    check_refusal("stream_request", raw, e);
                    continue;
                }
            };
            let resumed = [request.cursor.job, request.cursor.engine] != [None, None];
            if !resumed {
                continue;
            }
            let id = request.cursor.id(per_job);
            let back = query::stream_request(None, Some(&id), per_job).unwrap_or_else(|e| {
                panic!(
                    "the id {id:?} of an accepted cursor is refused: {}",
                    e.detail
                )
            });
            assert_eq!(
                back.cursor.job,
                Some(request.cursor.job.unwrap_or(0)),
                "{raw:?} → {id:?}"
            );
            if !per_job {
                assert_eq!(
                    back.cursor.engine,
                    Some(request.cursor.engine.unwrap_or(0)),
                    "{raw:?} → {id:?}"
                );
            }
        }
    }
}

fn log_request(raw: Option<&str>) {
    let request = match query::log_request(raw) {
        Ok(request) => request,
        Err(e) => return check_refusal("log_request", raw, e),
    };
    assert!(
        (1..=MAX_LOG_CHUNK).contains(&request.max),
        "log_request({raw:?}) accepted max {}",
        request.max
    );
    let mut written = format!(
        "stream={}&offset={}&max={}",
        request.stream.as_str(),
        request.offset,
        request.max
    );
    if let Some(attempt) = request.attempt {
        written.push_str(&format!("&attempt={attempt}"));
    }
    match query::log_request(Some(&written)) {
        Ok(back) => assert_eq!(
            back, request,
            "log_request({raw:?}) changed when written back as {written:?}"
        ),
        Err(e) => panic!(
            "log_request({raw:?}) accepted, written back as {written:?} refused: {}",
            e.detail
        ),
    }
}

/// The longest wait of `aura serve` (`ApiConfig::max_wait`).
fn daemon_max_wait() -> Duration {
    static MAX_WAIT: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();
    *MAX_WAIT.get_or_init(|| aura_server::ApiConfig::new(0, Default::default()).max_wait)
}

fn wait_timeout(raw: Option<&str>) {
    let unbounded = query::wait_timeout(raw, Duration::MAX);
    for max in [daemon_max_wait(), Duration::from_millis(1500)] {
        match (query::wait_timeout(raw, max), &unbounded) {
            (Ok(timeout), Ok(asked)) => {
                assert!(
                    timeout <= max,
                    "wait_timeout({raw:?}, {max:?}) accepted {timeout:?}"
                );
                assert_eq!(
                    timeout,
                    (*asked).min(max),
                    "wait_timeout({raw:?}) is not the asked timeout capped at {max:?}"
                );
            }
            (Err(e), Err(_)) => check_refusal("wait_timeout", raw, e),
            (bounded, unbounded) => panic!(
                "wait_timeout({raw:?}) accepted under one max only: {:?} / {:?}",
                bounded.map_err(|e| e.detail),
                unbounded.as_ref().map_err(|e| &e.detail)
            ),
        }
    }
    let Ok(asked) = unbounded else { return };
    // What a client writes: humantime's own format, its spaces percent-encoded.
    let written = format!(
        "timeout={}",
        humantime::format_duration(asked)
            .to_string()
            .replace(' ', "%20")
    );
    match query::wait_timeout(Some(&written), Duration::MAX) {
        Ok(back) => assert_eq!(
            back, asked,
            "wait_timeout({raw:?}) changed when written back as {written:?}"
        ),
        Err(e) => panic!(
            "wait_timeout({raw:?}) accepted {asked:?}, written back as {written:?} refused: {}",
            e.detail
        ),
    }
}

//! One error type for every handler, one table from error to status code, rendered as RFC 9457
//! `application/problem+json`.

use aura_engine::EngineError;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// Stable, machine-readable error codes. Clients match on these, never on messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request is malformed: bad JSON, an invalid query parameter, id or header.
    BadRequest,
    /// The body is well-formed JSON but not a valid job spec (or lease request, cancel selection or
    /// new priority).
    InvalidSpec,
    /// The spec is over one of the size limits (arguments, environment, labels, secrets).
    LimitExceeded,
    /// The spec's program cannot be found or is not an executable file.
    ProgramNotFound,
    /// The program resolves to a file outside `jobs.programs`.
    ProgramNotAllowed,
    /// The spec's working directory does not exist or is not a directory.
    InvalidWorkingDirectory,
    /// The working directory lies outside `jobs.cwd_roots`.
    WorkingDirectoryNotAllowed,
    /// The spec references a secret the daemon does not have.
    UnknownSecret,
    /// The spec's `after` names a job that does not exist (or a batch line refers to no earlier line).
    UnknownDependency,
    /// Every event stream slot (`api.max_event_streams`) is taken; retry later.
    TooManySubscribers,
    /// The job or lease could never run here: it asks for more than this machine has in all, or names
    /// a limit that is unknown or admits nothing.
    ExceedsCapacity,
    /// The global cap of waiting jobs is reached.
    QueueFull,
    /// The token's own cap of waiting jobs (`max_queued`) is reached.
    TokenQueueFull,
    /// What a lease asks for is in use now; retry later.
    LeaseUnavailable,
    /// The request body is larger than `api.max_body`, or an upload larger than `uploads.max_size` (or
    /// the client's own `max`).
    PayloadTooLarge,
    /// A spec's `inputs` names an upload the daemon does not have.
    UnknownUpload,
    /// A path among a job's files that is not served: it would leave the job's directory, passes
    /// through a symlink, or names something other than a regular file.
    ForbiddenPath,
    /// A `Range` no byte of the file falls in (`Content-Range: bytes */SIZE` says its size).
    RangeNotSatisfiable,
    /// The data volume has no room for an upload and the space `uploads.min_free` keeps free.
    InsufficientStorage,
    /// The request target (path and query) is longer than `api.max_uri_bytes`.
    UriTooLong,
    /// The request headers together are larger than `api.max_header_bytes`.
    HeadersTooLarge,
    /// A request body that is not `Content-Type: application/json`.
    UnsupportedMediaType,
    /// No token, a malformed `Authorization` header, or a token that is not valid.
    Unauthorized,
    /// A valid token whose scope does not allow the request.
    InsufficientScope,
    /// The `Host` header names none of `api.allowed_hosts` (DNS rebinding).
    HostNotAllowed,
    /// The `Origin` header names another site than the daemon's own and `api.allowed_origins`.
    OriginNotAllowed,
    /// The request body did not arrive within `api.request_timeout`.
    RequestTimeout,
    /// Every connection slot (`api.max_connections`) is busy with a request.
    TooManyConnections,
    /// No such route, job or lease.
    NotFound,
    /// The route exists, not with this method; the `Allow` header lists the ones it has.
    MethodNotAllowed,
    /// A cancel of a job that has already ended.
    AlreadyFinished,
    /// An operator's action that does not apply to the job in its state (a pause of a queued job, a
    /// retry of a running one); nothing changed.
    InvalidState,
    /// The daemon is shutting down and takes no new work.
    ShuttingDown,
    /// The janitor already has runs waiting; retry when they are done.
    JanitorBusy,
    /// The job database cannot commit: its volume is full or failing. Retry once space returns.
    StorageExhausted,
    /// Fleet mode: the job is held by another node, and this node has no fleet token to forward the
    /// request with (`ApiConfig::fleet_token`).
    FleetTokenMissing,
    /// Fleet mode: the node that holds the job did not answer the forwarded request (down, or not
    /// reachable from here). Retry: a node that stays away loses its jobs to the others.
    NodeUnreachable,
    /// Fleet mode: the shared database cannot be reached now (restarting, network); nothing changed.
    /// Retry: nodes reconnect on their own.
    StoreUnavailable,
    /// Fleet mode: another node took the job over (its lease here was lost); nothing changed here.
    Fenced,
    /// A fault in the daemon; the answer carries a request id to find the details in its log.
    Internal,
}

impl ErrorCode {
    /// The code table: the only place a status code is chosen.
    pub fn status(self) -> StatusCode {
        match self {
            ErrorCode::BadRequest => StatusCode::BAD_REQUEST,
            ErrorCode::InvalidSpec
            | ErrorCode::LimitExceeded
            | ErrorCode::ProgramNotFound
            | ErrorCode::InvalidWorkingDirectory
            | ErrorCode::UnknownSecret
            | ErrorCode::UnknownDependency
            | ErrorCode::UnknownUpload
            | ErrorCode::ExceedsCapacity => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::ProgramNotAllowed
            | ErrorCode::WorkingDirectoryNotAllowed
            | ErrorCode::InsufficientScope
            | ErrorCode::HostNotAllowed
            | ErrorCode::OriginNotAllowed
            | ErrorCode::ForbiddenPath => StatusCode::FORBIDDEN,
            ErrorCode::RangeNotSatisfiable => StatusCode::RANGE_NOT_SATISFIABLE,
            ErrorCode::InsufficientStorage => StatusCode::INSUFFICIENT_STORAGE,
            ErrorCode::QueueFull | ErrorCode::TokenQueueFull => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::LeaseUnavailable | ErrorCode::JanitorBusy => StatusCode::CONFLICT,
            ErrorCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::UriTooLong => StatusCode::URI_TOO_LONG,
            ErrorCode::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ErrorCode::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorCode::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ErrorCode::TooManyConnections | ErrorCode::TooManySubscribers => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ErrorCode::NotFound => StatusCode::NOT_FOUND,
            ErrorCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::AlreadyFinished | ErrorCode::InvalidState => StatusCode::CONFLICT,
            ErrorCode::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::StorageExhausted => StatusCode::INSUFFICIENT_STORAGE,
            ErrorCode::FleetTokenMissing => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::NodeUnreachable => StatusCode::BAD_GATEWAY,
            ErrorCode::StoreUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Fenced => StatusCode::CONFLICT,
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The problem's `title`: a short summary, the same for every answer with this code.
    pub fn title(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "Bad request",
            ErrorCode::InvalidSpec => "Invalid job",
            ErrorCode::LimitExceeded => "Job over a size limit",
            ErrorCode::ProgramNotFound => "Program cannot be run",
            ErrorCode::ProgramNotAllowed => "Program not allowed",
            ErrorCode::InvalidWorkingDirectory => "Invalid working directory",
            ErrorCode::WorkingDirectoryNotAllowed => "Working directory not allowed",
            ErrorCode::UnknownSecret => "Unknown secret",
            ErrorCode::UnknownDependency => "Unknown dependency",
            ErrorCode::TooManySubscribers => "Too many event streams",
            ErrorCode::ExceedsCapacity => "Request exceeds this machine's capacity",
            ErrorCode::QueueFull => "Queue full",
            ErrorCode::TokenQueueFull => "Queue full for this token",
            ErrorCode::LeaseUnavailable => "Resources not available now",
            ErrorCode::PayloadTooLarge => "Request body too large",
            ErrorCode::UriTooLong => "Request target too long",
            ErrorCode::HeadersTooLarge => "Request headers too large",
            ErrorCode::UnsupportedMediaType => "Unsupported media type",
            ErrorCode::Unauthorized => "Authentication required",
            ErrorCode::InsufficientScope => "Not allowed for this token",
            ErrorCode::HostNotAllowed => "Host not allowed",
            ErrorCode::OriginNotAllowed => "Origin not allowed",
            ErrorCode::RequestTimeout => "Request timed out",
            ErrorCode::TooManyConnections => "Too many connections",
            ErrorCode::NotFound => "Not found",
            ErrorCode::MethodNotAllowed => "Method not allowed",
            ErrorCode::AlreadyFinished => "Job already finished",
            ErrorCode::InvalidState => "Not possible in the job's state",
            ErrorCode::ShuttingDown => "Shutting down",
            ErrorCode::JanitorBusy => "Janitor busy",
            ErrorCode::StorageExhausted => "Data volume full",
            ErrorCode::UnknownUpload => "Unknown upload",
            ErrorCode::ForbiddenPath => "Path not served",
            ErrorCode::RangeNotSatisfiable => "Range not satisfiable",
            ErrorCode::InsufficientStorage => "No room for the upload",
            ErrorCode::FleetTokenMissing => "No fleet token to reach the job's node",
            ErrorCode::NodeUnreachable => "The job's node cannot be reached",
            ErrorCode::StoreUnavailable => "Job database unavailable",
            ErrorCode::Fenced => "Job taken over by another node",
            ErrorCode::Internal => "Internal error",
        }
    }

    fn slug(self) -> String {
        serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    }
}

const QUEUE_FULL_RETRY_AFTER_SECS: u32 = 5;
/// Connections free up as requests end: a second is a fair first back-off.
const CONNECTIONS_RETRY_AFTER_SECS: u32 = 1;
/// Space returns when someone frees it: a client should not hammer a full volume.
const STORAGE_RETRY_AFTER_SECS: u32 = 10;

/// What a handler answers instead of its result: rendered as an RFC 9457 problem with the code's status.
#[derive(Debug)]
pub struct ApiError {
    /// The error code, which picks the status and title.
    pub code: ErrorCode,
    /// What went wrong, for people. `Internal` and `StorageExhausted` answers show a plain sentence
    /// instead and log this under the answer's request id.
    pub detail: String,
}

impl ApiError {
    /// An error with `code` and `detail`.
    pub fn new(code: ErrorCode, detail: impl Into<String>) -> Self {
        ApiError {
            code,
            detail: detail.into(),
        }
    }

    /// A [`ErrorCode::BadRequest`] error with `detail`.
    pub fn bad_request(detail: impl Into<String>) -> Self {
        ApiError::new(ErrorCode::BadRequest, detail)
    }
}

/// The code of an engine error (a batch entry's is its cause's).
fn code_of(e: &EngineError) -> ErrorCode {
    match e {
        EngineError::InvalidSpec(e) if e.is_size_limit() => ErrorCode::LimitExceeded,
        EngineError::InvalidSpec(_) => ErrorCode::InvalidSpec,
        EngineError::Program { .. } => ErrorCode::ProgramNotFound,
        EngineError::ProgramNotAllowed { .. } => ErrorCode::ProgramNotAllowed,
        EngineError::WorkingDirectory { .. } => ErrorCode::InvalidWorkingDirectory,
        EngineError::WorkingDirectoryNotAllowed { .. } => ErrorCode::WorkingDirectoryNotAllowed,
        EngineError::UnknownSecret { .. } => ErrorCode::UnknownSecret,
        EngineError::UnknownDependency(_) => ErrorCode::UnknownDependency,
        EngineError::BatchEntry { source, .. } => code_of(source),
        EngineError::ExceedsCapacity(_) => ErrorCode::ExceedsCapacity,
        EngineError::QueueFull { .. } => ErrorCode::QueueFull,
        EngineError::SubmitterQueueFull { .. } => ErrorCode::TokenQueueFull,
        EngineError::LeaseUnavailable(_) => ErrorCode::LeaseUnavailable,
        EngineError::LeaseNotFound(_) => ErrorCode::NotFound,
        EngineError::NotFound(_) => ErrorCode::NotFound,
        EngineError::NoFiles { .. } | EngineError::FileNotFound { .. } => ErrorCode::NotFound,
        EngineError::PathRefused { .. } => ErrorCode::ForbiddenPath,
        EngineError::UnknownUpload { .. } => ErrorCode::UnknownUpload,
        EngineError::UploadTooLarge { .. } => ErrorCode::PayloadTooLarge,
        EngineError::InsufficientStorage { .. } => ErrorCode::InsufficientStorage,
        EngineError::AlreadyFinished { .. } => ErrorCode::AlreadyFinished,
        EngineError::InvalidState { .. } => ErrorCode::InvalidState,
        EngineError::ShuttingDown => ErrorCode::ShuttingDown,
        EngineError::JanitorBusy(_) => ErrorCode::JanitorBusy,
        EngineError::Store(e) if e.is_storage() => ErrorCode::StorageExhausted,
        EngineError::Store(e) if e.is_unavailable() => ErrorCode::StoreUnavailable,
        EngineError::Store(e) if e.is_fenced() => ErrorCode::Fenced,
        EngineError::Config(_)
        | EngineError::Store(_)
        | EngineError::Supervisor(_)
        | EngineError::Logs(_)
        | EngineError::Io { .. }
        | EngineError::Internal { .. } => ErrorCode::Internal,
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        let code = code_of(&e);
        // The whole chain: what was being done and every cause. A 5xx answer shows none of it (see
        // `into_response`); the log does.
        ApiError::new(code, chain(&e))
    }
}

/// An error and its causes, `: `-separated, as `anyhow` prints `{:#}`.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let next = cause.to_string();
        // Some errors repeat their source in their own message.
        if !text.ends_with(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = cause.source();
    }
    text
}

/// A fresh id for a 5xx answer, unique in this daemon's log: its start time and a counter.
fn request_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static START: OnceLock<u64> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let start = *START.get_or_init(|| aura_model::Timestamp::now().unix_millis().unsigned_abs());
    format!("{start:x}-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// An RFC 9457 problem document: what every error answer carries (`application/problem+json`).
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Problem<'a> {
    /// `/problems/CODE`: the problem type, one per code.
    #[serde(rename = "type")]
    #[schema(pattern = "^/problems/[a-z_]+$")]
    kind: String,
    /// A short summary, the same for every answer with this code.
    title: &'a str,
    /// The HTTP status code of the answer.
    #[schema(minimum = 400, maximum = 599)]
    status: u16,
    /// What went wrong, for people. A 5xx answer says it in a plain sentence and logs the rest.
    detail: &'a str,
    /// The stable code clients match on.
    code: ErrorCode,
    /// 5xx answers only: the id under which the daemon's log has what happened.
    #[serde(skip_serializing_if = "Option::is_none")]
    request_id: Option<String>,
}

impl ApiError {
    /// The problem document alone, for a response written outside axum (a connection refused at the
    /// cap). A 5xx answer gets a request id, logged with the error's whole detail; where that detail is
    /// the daemon's inside (an internal error, a store that cannot commit: SQL, paths, causes) the
    /// client gets a plain sentence instead.
    pub(crate) fn problem_json(&self) -> Vec<u8> {
        let status = self.code.status();
        let request_id = status.is_server_error().then(request_id);
        let public_detail = match self.code {
            ErrorCode::Internal => {
                "the daemon failed to answer; its log has the details under this request id"
            }
            ErrorCode::StorageExhausted => {
                "the job database cannot commit: its volume is full or failing; retry once space returns"
            }
            _ => &self.detail,
        };
        if let Some(id) = &request_id {
            match self.code {
                ErrorCode::Internal | ErrorCode::StorageExhausted => {
                    tracing::error!(request_id = %id, code = ?self.code, detail = %self.detail, "request failed")
                }
                // Refusals of load (a full house, a shutdown) are expected: no error line each.
                _ => tracing::debug!(request_id = %id, code = ?self.code, "request refused"),
            }
        }
        serde_json::to_vec(&Problem {
            kind: format!("/problems/{}", self.code.slug()),
            title: self.code.title(),
            status: status.as_u16(),
            detail: public_detail,
            code: self.code,
            request_id,
        })
        .unwrap_or_default()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.code.status();
        let body = self.problem_json();
        let mut response = (
            status,
            [(header::CONTENT_TYPE, "application/problem+json")],
            body,
        )
            .into_response();
        let retry_after = match self.code {
            // The queue drains as jobs finish; a few seconds is a fair first guess for a client's back-off.
            ErrorCode::QueueFull | ErrorCode::TokenQueueFull => Some(QUEUE_FULL_RETRY_AFTER_SECS),
            ErrorCode::TooManyConnections | ErrorCode::TooManySubscribers => {
                Some(CONNECTIONS_RETRY_AFTER_SECS)
            }
            ErrorCode::StorageExhausted | ErrorCode::InsufficientStorage => {
                Some(STORAGE_RETRY_AFTER_SECS)
            }
            _ => None,
        };
        if let Some(secs) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, axum::http::HeaderValue::from(secs));
        }
        if self.code == ErrorCode::Unauthorized {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer realm=\"aura\""),
            );
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(e: &ApiError) -> serde_json::Value {
        serde_json::from_slice(&e.problem_json()).expect("a problem document")
    }

    #[test]
    fn a_5xx_answer_names_a_request_id_and_keeps_the_inside_to_the_log() {
        let cause =
            std::io::Error::other("disk I/O error in /var/lib/aura/aura.db: SELECT * FROM jobs");
        let e = ApiError::from(EngineError::internal("reading a job's log", cause));
        assert_eq!(e.code, ErrorCode::Internal);
        // The whole chain is kept for the log…
        assert!(
            e.detail.starts_with("reading a job's log: disk I/O error"),
            "{}",
            e.detail
        );
        // …and none of it reaches the client, which gets an id to quote.
        let answer = body(&e);
        assert_eq!(answer["status"], 500);
        let text = answer.to_string();
        assert!(
            !text.contains("SELECT") && !text.contains("aura.db"),
            "{text}"
        );
        let id = answer["request_id"].as_str().expect("a request id");
        assert!(!id.is_empty());
        assert_ne!(
            body(&e)["request_id"],
            answer["request_id"],
            "ids are per answer"
        );
    }

    #[test]
    fn an_action_the_state_does_not_allow_is_a_conflict_with_the_engines_reason() {
        let engine = EngineError::InvalidState {
            id: aura_model::JobId(7),
            state: "queued",
            action: aura_model::JobAction::Pause,
        };
        let reason = engine.to_string();
        let e = ApiError::from(engine);
        assert_eq!(e.code, ErrorCode::InvalidState);
        let answer = body(&e);
        assert_eq!(answer["status"], 409);
        assert_eq!(answer["code"], "invalid_state");
        assert_eq!(answer["type"], "/problems/invalid_state");
        assert_eq!(answer["detail"], reason.as_str());
        assert!(reason.contains("job 7 is queued"), "{reason}");
    }

    #[test]
    fn a_4xx_answer_keeps_its_detail_and_has_no_request_id() {
        let e = ApiError::bad_request("invalid lease id \"x\"");
        let answer = body(&e);
        assert_eq!(answer["detail"], "invalid lease id \"x\"");
        assert!(answer.get("request_id").is_none(), "{answer}");
    }
}

//! One error type for every handler, one table from error to status code, rendered as RFC 9457
//! `application/problem+json`.

use aura_engine::EngineError;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// Stable, machine-readable error codes. Clients match on these, never on messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadRequest,
    InvalidSpec,
    ProgramNotFound,
    InvalidWorkingDirectory,
    ExceedsCapacity,
    QueueFull,
    LeaseUnavailable,
    PayloadTooLarge,
    NotFound,
    AlreadyFinished,
    ShuttingDown,
    Internal,
}

impl ErrorCode {
    /// The code table: the only place a status code is chosen.
    pub fn status(self) -> StatusCode {
        match self {
            ErrorCode::BadRequest => StatusCode::BAD_REQUEST,
            ErrorCode::InvalidSpec
            | ErrorCode::ProgramNotFound
            | ErrorCode::InvalidWorkingDirectory
            | ErrorCode::ExceedsCapacity => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::QueueFull => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::LeaseUnavailable => StatusCode::CONFLICT,
            ErrorCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::NotFound => StatusCode::NOT_FOUND,
            ErrorCode::AlreadyFinished => StatusCode::CONFLICT,
            ErrorCode::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "Bad request",
            ErrorCode::InvalidSpec => "Invalid job",
            ErrorCode::ProgramNotFound => "Program cannot be run",
            ErrorCode::InvalidWorkingDirectory => "Invalid working directory",
            ErrorCode::ExceedsCapacity => "Request exceeds this machine's capacity",
            ErrorCode::QueueFull => "Queue full",
            ErrorCode::LeaseUnavailable => "Resources not available now",
            ErrorCode::PayloadTooLarge => "Request body too large",
            ErrorCode::NotFound => "Not found",
            ErrorCode::AlreadyFinished => "Job already finished",
            ErrorCode::ShuttingDown => "Shutting down",
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

#[derive(Debug)]
pub struct ApiError {
    pub code: ErrorCode,
    pub detail: String,
}

impl ApiError {
    pub fn new(code: ErrorCode, detail: impl Into<String>) -> Self {
        ApiError {
            code,
            detail: detail.into(),
        }
    }

    pub fn bad_request(detail: impl Into<String>) -> Self {
        ApiError::new(ErrorCode::BadRequest, detail)
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        let code = match &e {
            EngineError::InvalidSpec(_) => ErrorCode::InvalidSpec,
            EngineError::Program { .. } => ErrorCode::ProgramNotFound,
            EngineError::WorkingDirectory { .. } => ErrorCode::InvalidWorkingDirectory,
            EngineError::ExceedsCapacity(_) => ErrorCode::ExceedsCapacity,
            EngineError::QueueFull { .. } => ErrorCode::QueueFull,
            EngineError::LeaseUnavailable(_) => ErrorCode::LeaseUnavailable,
            EngineError::LeaseNotFound(_) => ErrorCode::NotFound,
            EngineError::NotFound(_) => ErrorCode::NotFound,
            EngineError::AlreadyFinished { .. } => ErrorCode::AlreadyFinished,
            EngineError::ShuttingDown => ErrorCode::ShuttingDown,
            EngineError::Config(_)
            | EngineError::Store(_)
            | EngineError::Supervisor(_)
            | EngineError::Logs(_)
            | EngineError::Io { .. }
            | EngineError::Internal(_) => ErrorCode::Internal,
        };
        if code == ErrorCode::Internal {
            tracing::error!(error = %e, "request failed");
        }
        ApiError::new(code, e.to_string())
    }
}

#[derive(Serialize)]
struct Problem<'a> {
    #[serde(rename = "type")]
    kind: String,
    title: &'a str,
    status: u16,
    detail: &'a str,
    code: ErrorCode,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.code.status();
        let problem = Problem {
            kind: format!("/problems/{}", self.code.slug()),
            title: self.code.title(),
            status: status.as_u16(),
            detail: &self.detail,
            code: self.code,
        };
        let body = serde_json::to_vec(&problem).unwrap_or_default();
        let mut response = (
            status,
            [(header::CONTENT_TYPE, "application/problem+json")],
            body,
        )
            .into_response();
        if self.code == ErrorCode::QueueFull {
            // The queue drains as jobs finish; a few seconds is a fair first guess for a client's back-off.
            response.headers_mut().insert(
                header::RETRY_AFTER,
                axum::http::HeaderValue::from(QUEUE_FULL_RETRY_AFTER_SECS),
            );
        }
        response
    }
}

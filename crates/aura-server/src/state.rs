//! What every handler shares: the API's limits (`ApiConfig`), the router's state (`AppState`), and the
//! job id of a path, so that handlers in any module reach them without importing the router.

use crate::error::{ApiError, ErrorCode};
use crate::security::SecurityConfig;
use aura_engine::EngineHandle;
use aura_model::JobId;
use axum::body::{Body, Bytes};
use axum::extract::rejection::PathRejection;
use axum::extract::Path;
use std::sync::Arc;
use std::time::Duration;

/// Limits and checks of the API, with the defaults of `aura serve`.
#[derive(Clone, Debug)]
pub struct ApiConfig {
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// Longest a `wait` request may hold the connection.
    pub max_wait: Duration,
    /// Longest a request body may take to arrive (a client trickling it holds a connection). An upload
    /// (`POST /api/uploads`, streamed, gigabytes) is held to it per piece instead: it fails only when no
    /// byte arrives for this long.
    pub request_timeout: Duration,
    /// Tokens, `Host` and `Origin` allowlists, size limits (see `security`).
    pub security: Arc<SecurityConfig>,
    /// Event streams open at once, all clients together; one more is refused (503).
    pub max_event_streams: usize,
    /// How often an idle event stream gets a comment line (`:`), keeping it and proxies alive.
    pub stream_heartbeat: Duration,
    /// The kernel send buffer of an event stream's connection; `None`: TCP autotuning (up to a few MiB
    /// a client that stops reading leaves in the kernel before it falls behind).
    pub stream_send_buffer: Option<usize>,
    /// Dashboard sessions kept at once; a sign-in beyond it forgets the least recently used one.
    pub max_sessions: usize,
    /// How long a dashboard session lives without a request (each request slides it).
    pub session_idle: Duration,
    /// Fleet mode: the token this node sends when it forwards a request about a job to the node that
    /// holds it (`forward`); every node accepts it as an admin token. `None`: such a request is
    /// answered 503 (`fleet_token_missing`).
    pub fleet_token: Option<aura_model::Secret>,
}

impl ApiConfig {
    /// The defaults, for a daemon on loopback `port` that accepts `tokens`.
    pub fn new(port: u16, tokens: crate::auth::Tokens) -> ApiConfig {
        ApiConfig {
            max_body_bytes: 2 * 1024 * 1024,
            max_wait: Duration::from_secs(300),
            request_timeout: Duration::from_secs(30),
            max_event_streams: 1024,
            stream_heartbeat: Duration::from_secs(15),
            stream_send_buffer: None,
            max_sessions: crate::session::DEFAULT_MAX_SESSIONS,
            session_idle: crate::session::DEFAULT_IDLE,
            fleet_token: None,
            security: Arc::new(SecurityConfig {
                tokens: Arc::new(tokens),
                allowed_hosts: SecurityConfig::loopback_hosts(port),
                allowed_origins: Vec::new(),
                public_metrics: false,
                max_uri_bytes: 8 * 1024,
                max_header_bytes: 16 * 1024,
            }),
        }
    }
}

/// What every handler shares, behind one `Arc`: axum clones the state for each request that extracts it,
/// and an `EngineHandle` alone is several reference counts.
pub(crate) struct AppState {
    pub(crate) engine: EngineHandle,
    pub(crate) config: ApiConfig,
    pub(crate) streams: Arc<crate::sse::Streams>,
    /// The HTTP client requests about a job held by another fleet node go through (`forward`); `None`
    /// where it could not be built (the requests that need it then fail, nothing else does).
    pub(crate) peers: Option<reqwest::Client>,
    /// Whether the engine runs in fleet mode, once asked (it does not change while the daemon runs).
    pub(crate) fleet: std::sync::OnceLock<bool>,
}

/// The job id of a `/api/jobs/{id}/…` path: a positive integer, else a problem saying so.
pub(crate) fn job_id(path: Result<Path<String>, PathRejection>) -> Result<JobId, ApiError> {
    let Path(raw) = path.map_err(|e| ApiError::bad_request(e.body_text()))?;
    raw.parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .map(JobId)
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "invalid job id {raw:?}: expected a positive integer"
            ))
        })
}

/// Reads a request body whole: at most `max_body_bytes`, within `request_timeout` from the first byte
/// asked for to the last (a client trickling its body cannot hold a connection for longer).
pub(crate) async fn read_body(body: Body, config: &ApiConfig) -> Result<Bytes, ApiError> {
    let max = config.max_body_bytes;
    match tokio::time::timeout(config.request_timeout, axum::body::to_bytes(body, max)).await {
        Err(_) => Err(ApiError::new(
            ErrorCode::RequestTimeout,
            format!(
                "the request body did not arrive within {}",
                humantime::format_duration(config.request_timeout)
            ),
        )),
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(e)) => {
            let too_large =
                std::iter::successors(Some(&e as &(dyn std::error::Error + 'static)), |e| {
                    e.source()
                })
                .any(|e| e.is::<http_body_util::LengthLimitError>());
            Err(if too_large {
                ApiError::new(
                    ErrorCode::PayloadTooLarge,
                    format!("the request body is larger than {max} bytes"),
                )
            } else {
                ApiError::bad_request(format!("reading the request body: {e}"))
            })
        }
    }
}

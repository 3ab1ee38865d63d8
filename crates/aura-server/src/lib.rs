//! The HTTP API: routes, request parsing, the one error-to-status table, authentication and the checks
//! every request passes (`security`), and the connection handling (`listener`). The only crate that knows
//! status codes; everything it does goes through an `EngineHandle`.

pub mod auth;
mod dashboard;
mod error;
mod files;
mod forward;
mod listener;
mod openapi;
pub mod prometheus;
pub mod query;
pub mod range;
mod routes;
mod security;
pub mod session;
mod sse;
mod state;

pub use error::{ApiError, ErrorCode};
pub use listener::{serve, ListenerConfig};
pub use routes::{parse_cancel_selection, parse_json, router};
pub use security::{check_request, SecurityConfig, UPLOAD_PATH};
pub use state::ApiConfig;

/// Locks `mutex`, taking the data over from a thread that panicked while holding it: every mutex of this
/// crate guards plain bookkeeping that stays consistent between statements.
pub(crate) fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

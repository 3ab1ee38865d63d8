//! The HTTP API: routes, request parsing and the one error-to-status table. The only crate that knows
//! status codes; everything it does goes through an `EngineHandle`.

mod error;
mod prometheus;
mod routes;

pub use error::{ApiError, ErrorCode};
pub use routes::{router, ApiConfig};

use std::future::Future;
use tokio::net::TcpListener;

/// Serves the API on `listener` until `shutdown` resolves, then finishes in-flight requests.
pub async fn serve(
    listener: TcpListener,
    router: axum::Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

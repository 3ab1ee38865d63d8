//! The accept loop: HTTP/1.1 connections under a cap, with the limits a public-facing server needs —
//! a deadline for request headers (slowloris; it also closes idle keep-alive connections), a bound on
//! header buffers, and a cap on open connections that a flood of idle sockets cannot exhaust: at the cap
//! the oldest connection with no request in progress is closed to make room, and only when every one
//! is busy is the newcomer refused (503 problem, `Retry-After`). So a health check gets through 5,000
//! idle connections.

use crate::error::{ApiError, ErrorCode};
use axum::body::Body;
use axum::extract::Request;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tower::ServiceExt;

/// Connection limits of `serve`.
#[derive(Clone, Debug)]
pub struct ListenerConfig {
    /// Connections open at once.
    pub max_connections: usize,
    /// How long a client may take to send a request's headers, from the moment the server waits for
    /// them (a new connection, or the end of the previous response on a kept-alive one).
    pub header_timeout: Duration,
    /// The read buffer per connection, which bounds request headers (hyper answers a bare 431 beyond
    /// it; below it the API's own size checks answer with a problem).
    pub max_buffer_bytes: usize,
    /// After shutdown begins, how long in-flight requests may take.
    pub shutdown_grace: Duration,
}

impl Default for ListenerConfig {
    fn default() -> Self {
        ListenerConfig {
            max_connections: 2048,
            header_timeout: Duration::from_secs(30),
            max_buffer_bytes: 64 * 1024,
            shutdown_grace: Duration::from_secs(2),
        }
    }
}

/// One open connection as the accept loop sees it.
struct Conn {
    /// Requests in progress (counted until the response body is done).
    busy: Arc<AtomicUsize>,
    /// Set to close it (gracefully: a request in progress finishes).
    close: watch::Sender<bool>,
}

/// Open connections by accept order: the first idle one is the oldest.
#[derive(Default)]
struct Registry {
    conns: BTreeMap<u64, Conn>,
    next: u64,
}

/// Serves `router` on `listener` until `shutdown` resolves, then lets in-flight requests finish for up
/// to `shutdown_grace`.
pub async fn serve(
    listener: TcpListener,
    router: axum::Router,
    config: ListenerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let registry = Arc::new(Mutex::new(Registry::default()));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(config.header_timeout)
        .max_buf_size(config.max_buffer_bytes.max(8192));
    let mut tasks = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, _peer) = tokio::select! {
            () = &mut shutdown => break,
            // Reap ended connection tasks as they end: a JoinSet keeps their results until then.
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of fds or memory: a busy loop would make it worse; connections that end
                    // meanwhile give some back.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some((id, busy, close)) = admit(&registry, config.max_connections) else {
            tasks.spawn(refuse(stream));
            continue;
        };
        let _ = stream.set_nodelay(true);
        let socket = crate::sse::ConnectionSocket(std::os::fd::AsRawFd::as_raw_fd(&stream));
        let service = hyper::service::service_fn({
            let router = router.clone();
            let busy = busy.clone();
            move |mut request: Request<hyper::body::Incoming>| {
                let router = router.clone();
                let guard = BusyGuard::new(busy.clone());
                // The handler of an event stream tunes its own connection (see `sse`).
                request.extensions_mut().insert(socket);
                async move {
                    let response = router.oneshot(request.map(Body::new)).await?;
                    // Busy until the body is sent: a stream (a log follow) is a request in progress.
                    Ok::<_, std::convert::Infallible>(response.map(|body| {
                        Body::new(GuardedBody {
                            body,
                            _guard: guard,
                        })
                    }))
                }
            }
        });
        let connection = http.serve_connection(TokioIo::new(stream), service);
        let registered = Registered {
            id,
            registry: registry.clone(),
        };
        let mut close_rx = close;
        tasks.spawn(async move {
            // Leaves the registry however the task ends, a panic in a handler included.
            let _registered = registered;
            let mut connection = std::pin::pin!(connection);
            let ended = tokio::select! {
                ended = connection.as_mut() => Some(ended),
                _ = close_rx.wait_for(|c| *c) => None,
            };
            if ended.is_none() {
                connection.as_mut().graceful_shutdown();
                let _ = connection.await;
            }
        });
    }
    // Stop accepting; let what is in progress finish, then drop the rest.
    drop(listener);
    for conn in crate::lock(&registry).conns.values() {
        let _ = conn.close.send(true);
    }
    let drained = tokio::time::timeout(config.shutdown_grace, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            open = tasks.len(),
            "HTTP connections still busy after the shutdown grace; closing them"
        );
        tasks.shutdown().await;
    }
    Ok(())
}

/// A connection's place in the registry, given up when its task ends.
struct Registered {
    id: u64,
    registry: Arc<Mutex<Registry>>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        crate::lock(&self.registry).conns.remove(&self.id);
    }
}

/// Registers a new connection, closing the oldest idle one if the cap is reached. `None`: every
/// connection is busy, refuse this one.
fn admit(
    registry: &Mutex<Registry>,
    max: usize,
) -> Option<(u64, Arc<AtomicUsize>, watch::Receiver<bool>)> {
    let mut registry = crate::lock(registry);
    if registry.conns.len() >= max.max(1) {
        let idle = registry
            .conns
            .iter()
            .find(|(_, c)| c.busy.load(Ordering::Acquire) == 0 && !*c.close.borrow())
            .map(|(id, _)| *id)?;
        if let Some(conn) = registry.conns.remove(&idle) {
            let _ = conn.close.send(true);
        }
        tracing::debug!("connection cap reached: closed the oldest idle connection");
    }
    let id = registry.next;
    registry.next += 1;
    let busy = Arc::new(AtomicUsize::new(0));
    let (close, close_rx) = watch::channel(false);
    registry.conns.insert(
        id,
        Conn {
            busy: busy.clone(),
            close,
        },
    );
    Some((id, busy, close_rx))
}

/// Answers a connection over the cap with a problem and closes it, without reading its request.
async fn refuse(mut stream: TcpStream) {
    let error = ApiError::new(
        ErrorCode::TooManyConnections,
        "every connection slot is busy with a request; retry shortly",
    );
    let body = error.problem_json();
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/problem+json\r\n\
         content-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let write = async {
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(&body).await?;
        stream.shutdown().await
    };
    // A client that does not read gets no more of our time.
    let _ = tokio::time::timeout(Duration::from_secs(1), write).await;
}

/// Counts a request in progress for its connection's whole life, response body included.
struct BusyGuard(Arc<AtomicUsize>);

impl BusyGuard {
    fn new(busy: Arc<AtomicUsize>) -> BusyGuard {
        busy.fetch_add(1, Ordering::AcqRel);
        BusyGuard(busy)
    }
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that holds its request's `BusyGuard` until it is sent or dropped.
struct GuardedBody {
    body: Body,
    _guard: BusyGuard,
}

impl http_body::Body for GuardedBody {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

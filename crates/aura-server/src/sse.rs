//! Server-sent event streams: every job's events and the engine's (`GET /api/events/stream`), or one
//! job's (`GET /api/jobs/{id}/events/stream`), with running jobs' progress and, on request, a job's new
//! output. A client that reconnects with `Last-Event-ID` gets exactly the events it missed, replayed
//! from the log, then the live ones, none twice.
//!
//! What a stream holds is released the moment it ends: the subscription, its place among
//! `max_event_streams`, its buffers — all owned by the response body, which hyper drops when the client
//! goes away. Nothing is ever sent *to* a stream: a stream reads from shared, bounded buffers (the
//! store's committed events, the progress feed) at its own pace, so a slow client costs the engine
//! nothing. One that falls a whole buffer behind gets a final `lagged` event (with the id to resume
//! from) and is closed.

use crate::error::{ApiError, ErrorCode};
use crate::query::{Cursor, StreamRequest};
use aura_engine::{EngineHandle, Subscription};
use aura_model::{EventLog, JobId, StateName};
use axum::body::{Body, Bytes};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use bytes::{BufMut, BytesMut};
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Events read from the log per replay page.
const PAGE: u32 = 1000;
/// How often a job's captured output is looked at for new bytes (`logs=`).
const LOG_POLL: Duration = Duration::from_millis(500);
/// The most output one `log` event carries.
const LOG_CHUNK: usize = 64 * 1024;
/// Committed events taken at once when a stream wakes, written as one chunk: under a burst, one write
/// to the socket carries many events instead of one each.
const BATCH: usize = 64;
/// A stream's write buffer grows in blocks this large; sent chunks are split off it without a copy.
const BLOCK: usize = 1024;

/// The socket of the connection a request came on, put on every request by the accept loop.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ConnectionSocket(pub std::os::fd::RawFd);

impl ConnectionSocket {
    /// Caps the kernel's send buffer of this connection at `bytes` (the kernel doubles it), instead of
    /// the several MiB TCP autotuning lets a connection grow to.
    fn limit_send_buffer(self, bytes: usize) {
        // SAFETY: the accept loop's connection owns this socket for as long as the request it came with
        // is being handled, and this runs in that request's handler.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(self.0) };
        if let Err(e) = rustix::net::sockopt::set_socket_send_buffer_size(fd, bytes) {
            tracing::debug!(error = %e, "cannot cap an event stream's send buffer");
        }
    }
}

/// The streams of one server: their cap, their heartbeat, and counters for `/metrics`.
#[derive(Debug)]
pub struct Streams {
    slots: Arc<Semaphore>,
    max: usize,
    heartbeat: Duration,
    send_buffer: Option<usize>,
    /// Streams opened since start-up.
    pub opened: AtomicU64,
    /// Streams closed for falling behind.
    pub lagged: AtomicU64,
    /// Streams refused because every slot was taken.
    pub refused: AtomicU64,
    /// Open now and opened since start-up, by scope: `[job, all]`.
    by_scope: [ScopeCounts; 2],
}

/// One scope's streams, for `/metrics`.
#[derive(Debug, Default)]
struct ScopeCounts {
    open: AtomicU64,
    opened: AtomicU64,
}

/// Counts its stream as open until dropped with the stream's state.
#[derive(Debug)]
struct OpenStream {
    streams: Arc<Streams>,
    scope: usize,
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.streams.by_scope[self.scope]
            .open
            .fetch_sub(1, Ordering::Relaxed);
    }
}

impl Streams {
    /// At most `max` streams at once; a comment line every `heartbeat` keeps idle ones (and the proxies
    /// between) alive, and finds a client that is gone.
    /// `send_buffer`: the kernel send buffer of a stream's connection (`None`: the kernel's autotuning):
    /// what a client that stops reading can hold of the daemon's memory in the kernel before it falls
    /// behind and is dropped.
    pub fn new(max: usize, heartbeat: Duration, send_buffer: Option<usize>) -> Streams {
        Streams {
            slots: Arc::new(Semaphore::new(max)),
            max,
            heartbeat,
            send_buffer,
            opened: AtomicU64::new(0),
            lagged: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            by_scope: Default::default(),
        }
    }

    /// Open now and opened since start-up, by stream type (`job`, `all`).
    pub fn by_type(&self) -> [crate::prometheus::StreamTypeCounts; 2] {
        let read = |i: usize, stream| crate::prometheus::StreamTypeCounts {
            stream,
            open: self.by_scope[i].open.load(Ordering::Relaxed),
            opened: self.by_scope[i].opened.load(Ordering::Relaxed),
        };
        [read(0, "job"), read(1, "all")]
    }

    /// Streams open now.
    pub fn open_now(&self) -> usize {
        self.max.saturating_sub(self.slots.available_permits())
    }
}

/// Which events a stream carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scope {
    /// Every job's, and the engine's.
    All,
    /// One job's.
    Job(JobId),
}

impl Scope {
    fn per_job(self) -> bool {
        matches!(self, Scope::Job(_))
    }

    fn wants(self, id: JobId) -> bool {
        match self {
            Scope::All => true,
            Scope::Job(own) => own == id,
        }
    }
}

/// Opens a stream: checks the job, takes a slot (`TooManySubscribers` when none is free), subscribes,
/// and answers `text/event-stream`.
pub(crate) async fn open(
    engine: &EngineHandle,
    streams: &Arc<Streams>,
    scope: Scope,
    request: StreamRequest,
    socket: Option<ConnectionSocket>,
) -> Result<Response, ApiError> {
    if let Scope::Job(id) = scope {
        engine.exists(id).await?;
    }
    let permit = streams.slots.clone().try_acquire_owned().map_err(|_| {
        streams.refused.fetch_add(1, Ordering::Relaxed);
        ApiError::new(
            ErrorCode::TooManySubscribers,
            format!(
                "all {} event stream slots are taken (api.max_event_streams); retry later",
                streams.max
            ),
        )
    })?;
    // Subscribed before the log is read: whatever commits meanwhile is in one or the other (or both,
    // and skipped the second time by its sequence number).
    let subscription = engine.subscribe();
    let (latest_job, latest_engine) = engine.latest_event_seqs().await?;
    let fresh = request.cursor == Cursor::default();
    let cursor = Cursor {
        // A job's stream starts with the job's whole history; the all-jobs stream with what comes next.
        job: Some(match (scope, request.cursor.job) {
            (_, Some(seq)) => seq,
            (Scope::Job(_), None) => 0,
            (Scope::All, None) => latest_job,
        }),
        engine: Some(request.cursor.engine.unwrap_or(latest_engine)),
    };
    streams.opened.fetch_add(1, Ordering::Relaxed);
    let scope_index = usize::from(scope == Scope::All);
    let counts = &streams.by_scope[scope_index];
    counts.opened.fetch_add(1, Ordering::Relaxed);
    counts.open.fetch_add(1, Ordering::Relaxed);
    let open = OpenStream {
        streams: streams.clone(),
        scope: scope_index,
    };
    if let (Some(socket), Some(bytes)) = (socket, streams.send_buffer) {
        socket.limit_send_buffer(bytes);
    }
    let state = Streaming {
        engine: engine.clone(),
        streams: streams.clone(),
        scope,
        replay_jobs: scope.per_job() || !fresh,
        replay_engine: scope == Scope::All && request.engine && request.cursor.engine.is_some(),
        request,
        subscription,
        cursor,
        out: BytesMut::new(),
        done: false,
        log_offset: 0,
        log_poll: tokio::time::interval(LOG_POLL),
        heartbeat: tokio::time::interval_at(
            tokio::time::Instant::now() + streams.heartbeat,
            streams.heartbeat,
        ),
        _permit: permit,
        _open: open,
    };
    let chunks = futures_util::stream::unfold(state, |mut s| async move {
        let chunk = s.next().await?;
        Some((Ok::<Bytes, Infallible>(chunk), s))
    });
    let headers = [
        (
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        ),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        // Proxies such as nginx buffer responses unless told not to; an event stream must flow.
        (
            header::HeaderName::from_static("x-accel-buffering"),
            HeaderValue::from_static("no"),
        ),
    ];
    Ok((headers, Body::from_stream(chunks)).into_response())
}

/// One open stream, owned by its response body.
struct Streaming {
    engine: EngineHandle,
    streams: Arc<Streams>,
    scope: Scope,
    request: StreamRequest,
    subscription: Subscription,
    /// The last job and engine events sent (or replayed past): every event id carries it.
    cursor: Cursor,
    /// Events written and not yet handed to the connection.
    out: BytesMut,
    /// The log still holds events to replay before the live ones.
    replay_jobs: bool,
    replay_engine: bool,
    /// Nothing follows what is queued.
    done: bool,
    log_offset: u64,
    log_poll: tokio::time::Interval,
    /// A comment line when nothing else was sent for a while: keeps proxies from closing an idle stream,
    /// and finds a client that is gone.
    heartbeat: tokio::time::Interval,
    _permit: OwnedSemaphorePermit,
    _open: OpenStream,
}

impl Streaming {
    /// The next chunk of events; `None` ends the stream.
    async fn next(&mut self) -> Option<Bytes> {
        loop {
            if !self.out.is_empty() {
                self.heartbeat.reset();
                let chunk = self.out.split().freeze();
                // What is left of a large block would keep the whole block alive after the chunk is
                // sent: a burst's buffer goes with its chunk, the next write starts a small one.
                if self.out.capacity() > BLOCK {
                    self.out = BytesMut::new();
                }
                return Some(chunk);
            }
            if self.done {
                return None;
            }
            if self.replay_jobs {
                self.replay_page(false).await;
                continue;
            }
            if self.replay_engine {
                self.replay_page(true).await;
                continue;
            }
            self.live().await;
        }
    }

    /// Queues the next page of missed events from the log.
    async fn replay_page(&mut self, engine_log: bool) {
        let (log, after) = if engine_log {
            (Some(EventLog::Engine), self.cursor.engine.unwrap_or(0))
        } else {
            let log = match self.scope {
                Scope::Job(id) => Some(EventLog::Job(id)),
                Scope::All => None,
            };
            (log, self.cursor.job.unwrap_or(0))
        };
        let page = match self.engine.replay(log, after, PAGE).await {
            Ok(page) => page,
            Err(e) => {
                tracing::warn!(error = %e, "cannot replay events to a stream; closing it");
                self.end("the event log cannot be read now; reconnect to resume");
                return;
            }
        };
        if page.len() < PAGE as usize {
            if engine_log {
                self.replay_engine = false;
            } else {
                self.replay_jobs = false;
            }
        }
        for event in page {
            self.committed(&event).await;
        }
        if !self.replay_jobs && !self.replay_engine {
            self.end_if_job_finished().await;
        }
    }

    /// Waits for the next live event (or log output) and queues what this stream carries of it.
    async fn live(&mut self) {
        let want_progress = self.request.progress;
        let want_logs = self.request.logs.is_some();
        tokio::select! {
            received = self.subscription.committed.recv() => match received {
                Ok(event) => {
                    self.committed(&event).await;
                    // What else is there already goes out in the same chunk.
                    for _ in 1..BATCH {
                        match self.subscription.committed.try_recv() {
                            Ok(event) => self.committed(&event).await,
                            Err(_) => break,
                        }
                    }
                }
                Err(RecvError::Lagged(missed)) => {
                    self.streams.lagged.fetch_add(1, Ordering::Relaxed);
                    let data = serde_json::json!({
                        "missed": missed,
                        "resume_after": self.cursor.id(self.scope.per_job()),
                        "detail": "this client fell too far behind; reconnect with Last-Event-ID to catch up from the log",
                    });
                    self.write("lagged", None, &data.to_string());
                    self.done = true;
                }
                Err(RecvError::Closed) => self.end("the daemon is shutting down"),
            },
            received = self.subscription.progress.recv(), if want_progress => match received {
                Ok(progress) if self.scope.wants(progress.job_id) => {
                    self.write("progress", None, &progress.json);
                }
                // Progress is a snapshot: a missed one is superseded by the next.
                Ok(_) | Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => self.request.progress = false,
            },
            _ = self.log_poll.tick(), if want_logs => self.poll_log().await,
            _ = self.heartbeat.tick() => self.out.extend_from_slice(b":\n\n"),
            // A daemon whose engine is gone is closing too.
            _ = closing(&mut self.subscription.closing) => self.end("the daemon is shutting down"),
        }
    }

    /// Queues a committed event if this stream carries it and has not sent it yet.
    async fn committed(&mut self, event: &aura_model::CommittedEvent) {
        match event.log {
            EventLog::Job(id) => {
                if event.seq <= self.cursor.job.unwrap_or(0) {
                    return;
                }
                self.cursor.job = Some(event.seq);
                if !self.scope.wants(id) {
                    return;
                }
                let id_text = self.cursor.id(self.scope.per_job());
                self.write("job", Some(&id_text), event.json());
                if event.kind == "finished" && !self.replay_jobs {
                    self.end_if_job_finished().await;
                }
            }
            EventLog::Engine => {
                if self.scope != Scope::All
                    || !self.request.engine
                    || event.seq <= self.cursor.engine.unwrap_or(0)
                {
                    return;
                }
                self.cursor.engine = Some(event.seq);
                let id_text = self.cursor.id(false);
                self.write("engine", Some(&id_text), event.json());
            }
        }
    }

    /// A job's stream ends once its job has finished for good (no retry follows).
    async fn end_if_job_finished(&mut self) {
        let Scope::Job(id) = self.scope else {
            return;
        };
        if let Ok(view) = self.engine.get(id).await {
            if view.job.state.name() == StateName::Finished {
                if self.request.logs.is_some() {
                    // The last output before the end.
                    self.poll_log().await;
                }
                let outcome = view.job.outcome().map(|o| o.name()).unwrap_or("unknown");
                let data = serde_json::json!({ "job_id": id, "reason": "job finished", "outcome": outcome });
                self.write("end", None, &data.to_string());
                self.done = true;
            }
        }
    }

    /// Queues the job's new output since the last look as a `log` event.
    async fn poll_log(&mut self) {
        let (Scope::Job(id), Some(stream)) = (self.scope, self.request.logs) else {
            return;
        };
        let Ok(chunk) = self
            .engine
            .logs(id, stream, None, self.log_offset, LOG_CHUNK)
            .await
        else {
            return;
        };
        self.log_offset = chunk.next_offset;
        if chunk.data.is_empty() {
            return;
        }
        let data = serde_json::json!({
            "job_id": id,
            "stream": stream.as_str(),
            "offset": chunk.offset,
            "text": String::from_utf8_lossy(&chunk.data),
        });
        self.write("log", None, &data.to_string());
    }

    fn end(&mut self, reason: &str) {
        if self.done {
            return;
        }
        let data = serde_json::json!({ "reason": reason });
        self.write("end", None, &data.to_string());
        self.done = true;
    }

    /// Writes one event in the `text/event-stream` format. Every `data` Aura sends is one line of JSON;
    /// a line break in it would still become a `data:` line of its own, as the format requires.
    fn write(&mut self, event: &str, id: Option<&str>, data: &str) {
        if self.out.capacity() - self.out.len() < data.len() + 64 {
            self.out.reserve(BLOCK.max(data.len() + 64));
        }
        self.out.put_slice(b"event: ");
        self.out.put_slice(event.as_bytes());
        if let Some(id) = id {
            self.out.put_slice(b"\nid: ");
            self.out.put_slice(id.as_bytes());
        }
        for line in data.split('\n') {
            self.out.put_slice(b"\ndata: ");
            self.out.put_slice(line.trim_end_matches('\r').as_bytes());
        }
        self.out.put_slice(b"\n\n");
    }
}

/// Resolves once the daemon begins to shut down (or its engine is gone).
async fn closing(rx: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|closing| *closing).await;
}

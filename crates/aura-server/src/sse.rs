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
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use std::collections::VecDeque;
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

/// The streams of one server: their cap, their heartbeat, and counters for `/metrics`.
#[derive(Debug)]
pub struct Streams {
    slots: Arc<Semaphore>,
    max: usize,
    heartbeat: Duration,
    /// Streams opened since start-up.
    pub opened: AtomicU64,
    /// Streams closed for falling behind.
    pub lagged: AtomicU64,
    /// Streams refused because every slot was taken.
    pub refused: AtomicU64,
}

impl Streams {
    /// At most `max` streams at once; a comment line every `heartbeat` keeps idle ones (and the proxies
    /// between) alive, and finds a client that is gone.
    pub fn new(max: usize, heartbeat: Duration) -> Streams {
        Streams {
            slots: Arc::new(Semaphore::new(max)),
            max,
            heartbeat,
            opened: AtomicU64::new(0),
            lagged: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        }
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
    let state = Streaming {
        engine: engine.clone(),
        streams: streams.clone(),
        scope,
        replay_jobs: scope.per_job() || !fresh,
        replay_engine: scope == Scope::All && request.engine && request.cursor.engine.is_some(),
        request,
        subscription,
        cursor,
        queue: VecDeque::new(),
        done: false,
        log_offset: 0,
        log_poll: tokio::time::interval(LOG_POLL),
        _permit: permit,
    };
    let heartbeat = streams.heartbeat;
    let events = futures_util::stream::unfold(state, |mut s| async move {
        let event = s.next().await?;
        Some((Ok::<Event, Infallible>(event), s))
    });
    let mut response = Sse::new(events)
        .keep_alive(KeepAlive::new().interval(heartbeat))
        .into_response();
    // Proxies such as nginx buffer responses unless told not to; an event stream must flow.
    response.headers_mut().insert(
        "x-accel-buffering",
        axum::http::HeaderValue::from_static("no"),
    );
    Ok(response)
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
    queue: VecDeque<Event>,
    /// The log still holds events to replay before the live ones.
    replay_jobs: bool,
    replay_engine: bool,
    /// Nothing follows what is queued.
    done: bool,
    log_offset: u64,
    log_poll: tokio::time::Interval,
    _permit: OwnedSemaphorePermit,
}

impl Streaming {
    /// The next event; `None` ends the stream.
    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(event) = self.queue.pop_front() {
                return Some(event);
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
                Ok(event) => self.committed(&event).await,
                Err(RecvError::Lagged(missed)) => {
                    self.streams.lagged.fetch_add(1, Ordering::Relaxed);
                    let data = serde_json::json!({
                        "missed": missed,
                        "resume_after": self.cursor.id(self.scope.per_job()),
                        "detail": "this client fell too far behind; reconnect with Last-Event-ID to catch up from the log",
                    });
                    self.queue.push_back(Event::default().event("lagged").data(data.to_string()));
                    self.done = true;
                }
                Err(RecvError::Closed) => self.end("the daemon is shutting down"),
            },
            received = self.subscription.progress.recv(), if want_progress => match received {
                Ok(progress) if self.scope.wants(progress.job_id) => {
                    self.queue.push_back(Event::default().event("progress").data(progress.json.clone()));
                }
                // Progress is a snapshot: a missed one is superseded by the next.
                Ok(_) | Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => self.request.progress = false,
            },
            _ = self.log_poll.tick(), if want_logs => self.poll_log().await,
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
                self.queue.push_back(
                    Event::default()
                        .event("job")
                        .id(id_text)
                        .data(event.json.clone()),
                );
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
                self.queue.push_back(
                    Event::default()
                        .event("engine")
                        .id(id_text)
                        .data(event.json.clone()),
                );
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
                self.queue
                    .push_back(Event::default().event("end").data(data.to_string()));
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
        self.queue
            .push_back(Event::default().event("log").data(data.to_string()));
    }

    fn end(&mut self, reason: &str) {
        if self.done {
            return;
        }
        let data = serde_json::json!({ "reason": reason });
        self.queue
            .push_back(Event::default().event("end").data(data.to_string()));
        self.done = true;
    }
}

/// Resolves once the daemon begins to shut down (or its engine is gone).
async fn closing(rx: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|closing| *closing).await;
}

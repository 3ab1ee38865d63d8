//! A typed client for Aura's HTTP API. The CLI talks to the daemon through this and nothing else.

mod files;
pub mod sse;

pub use files::Download;

pub use aura_model::fleet::NodeList;
pub use aura_model::view::{CancelResult, CancelSelection, PriorityRequest};
use aura_model::{
    EngineEvent, EngineEventRecord, JobEvent, JobEventRecord, JobId, JobSpec, LoggedEvent,
    ProgressUpdate, Timestamp,
};
pub use aura_model::{JobPage, JobView};
use reqwest::StatusCode;
/// URLs as the client parses them (for callers that need a server URL's host and port).
pub use reqwest::Url;
use serde::de::DeserializeOwned;
use serde::Deserialize;
pub use sse::{SseError, SseEvent, SseParser};
use std::collections::VecDeque;
use std::time::Duration;

/// An RFC 9457 problem as the server sent it.
#[derive(Clone, Debug, Deserialize)]
pub struct Problem {
    /// A short summary of the kind of problem, the same for every instance of its code.
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// What went wrong in this case, for people.
    pub detail: String,
    /// The stable, machine-readable error code (`queue_full`, `not_found`, …): match on this.
    pub code: String,
}

/// Why a request to the daemon failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No connection to the daemon could be made (not running, wrong address).
    /// The cause follows in the error's source chain (shown once by `{:#}`), not in this message.
    #[error("cannot reach the Aura daemon at {url} (start it with `aura serve`, or set --server / AURA_SERVER)")]
    Connect {
        /// The server's base URL.
        url: String,
        /// The connection error.
        source: reqwest::Error,
    },
    /// The daemon refused the request with a problem document.
    #[error("{}: {}", .0.title, .0.detail)]
    Api(Problem),
    /// The daemon answered with something this client cannot read: an error without a problem
    /// document, or a body that does not parse as the expected JSON.
    #[error("unexpected response from {url}: HTTP {status}: {body}")]
    Unexpected {
        /// The request's URL.
        url: String,
        /// The response's HTTP status.
        status: StatusCode,
        /// The response body (after the parse error, where there was one).
        body: String,
    },
    /// The request could not be built or sent, or its response body not received.
    #[error("request to {url} failed: {source}")]
    Http {
        /// The request's URL (the base URL where the request could not be built).
        url: String,
        /// The HTTP client's error.
        source: reqwest::Error,
    },
    /// The server URL given does not start with `http://` or `https://`.
    #[error("invalid server URL {url:?}: {reason}")]
    BadUrl {
        /// The URL as given (without trailing slashes).
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The API token cannot be sent in an `Authorization` header.
    #[error("the API token is not usable in an HTTP header (it holds control characters)")]
    BadToken,
    /// A local file to upload could not be read.
    #[error("{}: {source}", path.display())]
    File {
        /// The file.
        path: std::path::PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// An event stream broke its format (a line or an event over the limits).
    #[error("event stream from {url} unreadable: {source}")]
    Stream {
        /// The stream's URL.
        url: String,
        /// What was wrong.
        source: SseError,
    },
}

impl ClientError {
    /// Whether trying again later may succeed: the daemon could not be reached, the connection broke, or
    /// it answered 5xx or 429 — not a refusal of the request itself.
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Connect { .. } | ClientError::Http { .. } => true,
            ClientError::Api(p) => p.status >= 500 || p.status == 429,
            ClientError::Unexpected { status, .. } => {
                status.is_server_error() || *status == StatusCode::TOO_MANY_REQUESTS
            }
            ClientError::Stream { .. }
            | ClientError::BadUrl { .. }
            | ClientError::BadToken
            | ClientError::File { .. } => false,
        }
    }
}

/// One item of an event stream, typed.
#[derive(Clone, Debug, PartialEq)]
pub enum StreamItem {
    /// A job's event (`event: job`), with the stream id to resume after it.
    Job(JobEventRecord, Option<String>),
    /// An engine event (`event: engine`, the all-jobs stream), with the stream id to resume after it.
    Engine(EngineEventRecord, Option<String>),
    /// A running job's progress now (`event: progress`).
    Progress(ProgressUpdate),
    /// New output of the job (`event: log`, a job's stream opened with `logs`).
    Log {
        /// The job.
        job_id: JobId,
        /// Which captured stream (`stdout`, `stderr`, …).
        stream: String,
        /// The logical offset of the text's first byte.
        offset: u64,
        /// The output (invalid UTF-8 replaced).
        text: String,
    },
    /// The client fell too far behind; the server closes the stream. Reconnect after `resume_after`.
    Lagged {
        /// Events missed.
        missed: u64,
        /// The id to resume after (`after` or `Last-Event-ID`).
        resume_after: String,
        /// What happened, for people.
        detail: String,
    },
    /// The stream ends: the job finished (a job's stream), or the daemon is shutting down.
    End {
        /// The job, when it finished.
        job_id: Option<JobId>,
        /// Why the stream ends.
        reason: String,
        /// The job's outcome name (`succeeded`, `failed`, …), when it finished.
        outcome: Option<String>,
    },
    /// An event of a type this client does not know, as it came.
    Other(SseEvent),
}

/// The wire form of a stored event: its kind and detail are read through [`LoggedEvent::from_parts`], so a
/// kind this version does not know is kept rather than failing the stream.
#[derive(serde::Deserialize)]
struct RawRecord {
    seq: i64,
    #[serde(default)]
    job_id: Option<JobId>,
    at: Timestamp,
    #[serde(default)]
    attempt: Option<u32>,
    kind: String,
    #[serde(default)]
    detail: serde_json::Value,
}

#[derive(serde::Deserialize)]
struct RawLog {
    job_id: JobId,
    stream: String,
    offset: u64,
    text: String,
}

#[derive(serde::Deserialize)]
struct RawLagged {
    #[serde(default)]
    missed: u64,
    resume_after: serde_json::Value,
    #[serde(default)]
    detail: String,
}

#[derive(serde::Deserialize)]
struct RawEnd {
    #[serde(default)]
    job_id: Option<JobId>,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    outcome: Option<String>,
}

impl StreamItem {
    /// Types one event. An event whose data does not read as its type says comes back as `Other`: a
    /// newer daemon may send more than this client knows, and that must not end the stream.
    pub fn from_event(event: SseEvent) -> StreamItem {
        let typed = match event.event.as_str() {
            "job" => serde_json::from_str::<RawRecord>(&event.data)
                .ok()
                .and_then(|r| {
                    Some(StreamItem::Job(
                        JobEventRecord {
                            seq: r.seq,
                            job_id: r.job_id?,
                            at: r.at,
                            attempt: r.attempt.unwrap_or(1),
                            event: JobEvent::from_parts(r.kind, r.detail),
                        },
                        event.id.clone(),
                    ))
                }),
            "engine" => serde_json::from_str::<RawRecord>(&event.data)
                .ok()
                .map(|r| {
                    StreamItem::Engine(
                        EngineEventRecord {
                            seq: r.seq,
                            at: r.at,
                            event: EngineEvent::from_parts(r.kind, r.detail),
                        },
                        event.id.clone(),
                    )
                }),
            "progress" => serde_json::from_str(&event.data)
                .ok()
                .map(StreamItem::Progress),
            "log" => serde_json::from_str::<RawLog>(&event.data)
                .ok()
                .map(|l| StreamItem::Log {
                    job_id: l.job_id,
                    stream: l.stream,
                    offset: l.offset,
                    text: l.text,
                }),
            "lagged" => serde_json::from_str::<RawLagged>(&event.data)
                .ok()
                .map(|l| StreamItem::Lagged {
                    missed: l.missed,
                    resume_after: match l.resume_after {
                        serde_json::Value::String(s) => s,
                        other => other.to_string(),
                    },
                    detail: l.detail,
                }),
            "end" => serde_json::from_str::<RawEnd>(&event.data)
                .ok()
                .map(|e| StreamItem::End {
                    job_id: e.job_id,
                    reason: e.reason,
                    outcome: e.outcome,
                }),
            _ => None,
        };
        typed.unwrap_or(StreamItem::Other(event))
    }
}

/// An open event stream: call [`EventStream::next`] until it yields `None` (the server ended it, or the
/// connection closed) or an error (the connection broke). Reconnecting is the caller's choice: open a new
/// stream with [`EventStream::last_id`] as `after`.
pub struct EventStream {
    url: String,
    response: reqwest::Response,
    parser: SseParser,
    pending: VecDeque<SseEvent>,
    last_id: Option<String>,
    closed: bool,
}

impl EventStream {
    /// The next item; `None` once the stream has ended.
    pub async fn next(&mut self) -> Option<Result<StreamItem, ClientError>> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                if let Some(id) = &event.id {
                    self.last_id = Some(id.clone());
                }
                return Some(Ok(StreamItem::from_event(event)));
            }
            if self.closed {
                return None;
            }
            match self.response.chunk().await {
                Ok(Some(bytes)) => {
                    let mut events = Vec::new();
                    let parsed = self.parser.push(&bytes, &mut events);
                    self.pending.extend(events);
                    if let Err(source) = parsed {
                        self.closed = true;
                        if self.pending.is_empty() {
                            return Some(Err(ClientError::Stream {
                                url: self.url.clone(),
                                source,
                            }));
                        }
                    }
                }
                Ok(None) => self.closed = true,
                Err(source) => {
                    self.closed = true;
                    return Some(Err(ClientError::Http {
                        url: self.url.clone(),
                        source,
                    }));
                }
            }
        }
    }

    /// The id of the last event handed out that carried one: where a new stream resumes (`after`).
    pub fn last_id(&self) -> Option<&str> {
        self.last_id.as_deref()
    }
}

/// One chunk of captured output.
#[derive(Clone, Debug)]
pub struct LogChunk {
    /// The logical offset of `data[0]` in the stream; past the one asked for when that was already
    /// dropped by the log cap.
    pub offset: u64,
    /// The offset to ask for next to continue without gaps or repeats.
    pub next_offset: u64,
    /// Bytes of the stream's start already dropped by the log cap.
    pub truncated_bytes: u64,
    /// The output bytes, exactly as the job wrote them.
    pub data: Vec<u8>,
}

/// Which jobs [`Client::list`] asks for; the default is the server's first page, newest first.
#[derive(Clone, Debug, Default)]
pub struct ListQuery {
    /// State names to include (`queued`, `running`, …); empty: every state.
    pub states: Vec<String>,
    /// Labels a job must carry, each with this value (all of them); empty: any labels. Sent as one
    /// `label=KEY=VALUE` parameter each.
    pub labels: Vec<(String, String)>,
    /// Jobs per page (1 to 1,000); `None`: the server's default, 100.
    pub limit: Option<u32>,
    /// Continue after this job id, the last one of the previous page.
    pub after: Option<JobId>,
    /// Oldest jobs first instead of newest first.
    pub oldest_first: bool,
}

/// A connection to one daemon's HTTP API. Cheap to clone: clones share one connection pool.
#[derive(Clone)]
pub struct Client {
    base: String,
    http: reqwest::Client,
    /// For event streams: no overall timeout, but a read timeout well past the server's heartbeat, so a
    /// connection that died silently is noticed.
    streams: reqwest::Client,
}

/// How long an event stream may stay silent: the daemon sends a heartbeat every 15 seconds.
const STREAM_READ_TIMEOUT: Duration = Duration::from_secs(45);

impl Client {
    /// A client that sends no token (enough for `/healthz` and `/readyz`); see [`Client::authorized`].
    pub fn new(base: &str) -> Result<Client, ClientError> {
        Client::build(base, None)
    }

    /// A client that sends `token` as `Authorization: Bearer …` with every request.
    pub fn authorized(base: &str, token: &str) -> Result<Client, ClientError> {
        Client::build(base, Some(token))
    }

    fn build(base: &str, token: Option<&str>) -> Result<Client, ClientError> {
        let base = base.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(ClientError::BadUrl {
                url: base,
                reason: "must start with http:// or https://".into(),
            });
        }
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(token) = token {
            let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| ClientError::BadToken)?;
            // Kept out of reqwest's and hyper's debug output.
            value.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        let builder = || {
            reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(5))
                .default_headers(headers.clone())
        };
        let built = |result: Result<reqwest::Client, reqwest::Error>| {
            result.map_err(|source| ClientError::Http {
                url: base.clone(),
                source,
            })
        };
        let http = built(builder().build())?;
        let streams = built(builder().read_timeout(STREAM_READ_TIMEOUT).build())?;
        Ok(Client {
            base,
            http,
            streams,
        })
    }

    /// The server's base URL, without trailing slashes.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `GET /healthz`: whether the daemon is alive or shutting down, and its process backend.
    pub async fn health(&self) -> Result<aura_model::Alive, ClientError> {
        self.send(self.http.get(self.url("/healthz"))).await
    }

    /// The engine's backend, running and queued counts, and why admission is paused, if it is.
    pub async fn status(&self) -> Result<aura_model::EngineStatus, ClientError> {
        self.send(self.http.get(self.url("/api/status"))).await
    }

    /// `GET /api/nodes`: the fleet's nodes (state, tags, running and claimed jobs, capacity, heartbeat
    /// age; the node that answered marked `this_node`); `fleet` false and no nodes on a single node.
    pub async fn nodes(&self) -> Result<NodeList, ClientError> {
        self.send(self.http.get(self.url("/api/nodes"))).await
    }

    /// The host's latest sample.
    pub async fn system(&self) -> Result<aura_model::host::HostSnapshot, ClientError> {
        self.send(self.http.get(self.url("/api/metrics/system")))
            .await
    }

    /// What admission has and what is reserved: capacity, reservations, free running slots.
    pub async fn utilization(&self) -> Result<aura_model::Utilization, ClientError> {
        self.send(self.http.get(self.url("/api/metrics/utilization")))
            .await
    }

    /// Submits a job; returns it as queued.
    pub async fn submit(&self, spec: &JobSpec) -> Result<JobView, ClientError> {
        self.send(self.http.post(self.url("/api/jobs")).json(spec))
            .await
    }

    /// `POST /api/jobs/batch`: queues every entry (a job spec's JSON plus an optional `name`, its `after`
    /// naming job ids or earlier entries' names) atomically, or none; returns the jobs in entry order.
    pub async fn submit_batch(
        &self,
        entries: Vec<serde_json::Value>,
    ) -> Result<Vec<aura_model::Job>, ClientError> {
        // The daemon answers a page of job views; a view reads the bare job records as well.
        let body = serde_json::json!({ "jobs": entries });
        let page: JobPage = self
            .send(self.http.post(self.url("/api/jobs/batch")).json(&body))
            .await?;
        Ok(page.jobs.into_iter().map(|view| view.job).collect())
    }

    /// `GET /api/jobs/{id}/events/stream`: the job's events from its first (or after the stream id
    /// `after`), its progress, and with `logs` (`stdout`, `stderr`) its new output; the server ends it
    /// with an `End` item once the job has finished.
    pub async fn job_stream(
        &self,
        id: JobId,
        after: Option<String>,
        logs: Option<&str>,
    ) -> Result<EventStream, ClientError> {
        let mut params: Vec<(&str, String)> = Vec::new();
        if let Some(after) = after {
            params.push(("after", after));
        }
        if let Some(logs) = logs {
            params.push(("logs", logs.to_owned()));
        }
        self.open_stream(&format!("/api/jobs/{id}/events/stream"), &params)
            .await
    }

    /// `GET /api/events/stream`: every job's events and the engine's from now on (or after the stream id
    /// `after`, `J.E`), with running jobs' progress when `progress`.
    pub async fn all_stream(
        &self,
        after: Option<String>,
        progress: bool,
    ) -> Result<EventStream, ClientError> {
        let mut params: Vec<(&str, String)> = vec![("progress", progress.to_string())];
        if let Some(after) = after {
            params.push(("after", after));
        }
        self.open_stream("/api/events/stream", &params).await
    }

    async fn open_stream(
        &self,
        path: &str,
        params: &[(&str, String)],
    ) -> Result<EventStream, ClientError> {
        let request = self
            .streams
            .get(self.url(path))
            .query(params)
            .header(reqwest::header::ACCEPT, "text/event-stream");
        let response = self.execute(request).await?;
        let url = response.url().to_string();
        let is_stream = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        if !is_stream {
            let status = response.status();
            return Err(ClientError::Unexpected {
                url,
                status,
                body: "not an event stream (Content-Type is not text/event-stream)".into(),
            });
        }
        Ok(EventStream {
            url,
            response,
            parser: SseParser::new(),
            pending: VecDeque::new(),
            last_id: None,
            closed: false,
        })
    }

    /// One job, with its live usage while it runs or why it waits while queued.
    pub async fn get(&self, id: JobId) -> Result<JobView, ClientError> {
        self.send(self.http.get(self.url(&format!("/api/jobs/{id}"))))
            .await
    }

    /// One page of jobs matching `q`.
    pub async fn list(&self, q: &ListQuery) -> Result<JobPage, ClientError> {
        let mut params: Vec<(&str, String)> = Vec::new();
        if !q.states.is_empty() {
            params.push(("state", q.states.join(",")));
        }
        for (key, value) in &q.labels {
            params.push(("label", format!("{key}={value}")));
        }
        if let Some(limit) = q.limit {
            params.push(("limit", limit.to_string()));
        }
        if let Some(after) = q.after {
            params.push(("after", after.to_string()));
        }
        if q.oldest_first {
            params.push(("order", "asc".into()));
        }
        self.send(self.http.get(self.url("/api/jobs")).query(&params))
            .await
    }

    /// Every job matching `q` from its `after` on, in its order, fetched page by page (`q.limit` jobs a
    /// page, 1,000 when unset). A job submitted meanwhile is included if its page is still ahead.
    pub async fn list_all(&self, q: &ListQuery) -> Result<Vec<JobView>, ClientError> {
        let mut page_query = ListQuery {
            limit: Some(q.limit.unwrap_or(1000)),
            ..q.clone()
        };
        let mut jobs = Vec::new();
        loop {
            let page = self.list(&page_query).await?;
            jobs.extend(page.jobs);
            match page.next_after {
                Some(next) => page_query.after = Some(next),
                None => return Ok(jobs),
            }
        }
    }

    /// Cancels a queued job, or stops a running one with its stop sequence; returns the job as it is then.
    pub async fn cancel(&self, id: JobId) -> Result<JobView, ClientError> {
        self.send(self.http.post(self.url(&format!("/api/jobs/{id}/cancel"))))
            .await
    }

    /// `POST /api/jobs/{id}/kill`: stops the job as [`cancel`](Self::cancel) does, but a running tree gets
    /// SIGKILL at once, without its stop sequence's grace periods.
    pub async fn kill(&self, id: JobId) -> Result<JobView, ClientError> {
        self.act(id, "kill").await
    }

    /// `POST /api/jobs/{id}/pause`: freezes a running job's whole tree; returns the job paused.
    pub async fn pause(&self, id: JobId) -> Result<JobView, ClientError> {
        self.act(id, "pause").await
    }

    /// `POST /api/jobs/{id}/resume`: thaws a paused job's tree; returns the job running.
    pub async fn resume(&self, id: JobId) -> Result<JobView, ClientError> {
        self.act(id, "resume").await
    }

    /// `POST /api/jobs/{id}/hold`: keeps a queued job from starting until it is released.
    pub async fn hold(&self, id: JobId) -> Result<JobView, ClientError> {
        self.act(id, "hold").await
    }

    /// `POST /api/jobs/{id}/release`: lets a held job start again, in its place in the queue.
    pub async fn release(&self, id: JobId) -> Result<JobView, ClientError> {
        self.act(id, "release").await
    }

    /// `POST /api/jobs/{id}/retry`: submits a finished job's spec again; returns the new job (its
    /// `retry_of` is `id`).
    pub async fn retry(&self, id: JobId) -> Result<JobView, ClientError> {
        self.act(id, "retry").await
    }

    /// `POST /api/jobs/{id}/priority`: gives a job that has not started a new priority (higher runs
    /// first); returns the job moved.
    pub async fn set_priority(&self, id: JobId, priority: i32) -> Result<JobView, ClientError> {
        let url = self.url(&format!("/api/jobs/{id}/priority"));
        self.send(self.http.post(url).json(&PriorityRequest { priority }))
            .await
    }

    /// `POST /api/jobs/cancel`: cancels (or kills) every unfinished job `selection` picks — with a submit
    /// token, of this token's jobs only — or with `dry_run` only says which it would.
    pub async fn cancel_where(
        &self,
        selection: &CancelSelection,
    ) -> Result<CancelResult, ClientError> {
        self.send(self.http.post(self.url("/api/jobs/cancel")).json(selection))
            .await
    }

    /// `POST /api/drain`: nothing new starts until [`undrain`](Self::undrain); running jobs finish.
    /// Returns the engine's status after it.
    pub async fn drain(&self) -> Result<aura_model::EngineStatus, ClientError> {
        self.send(self.http.post(self.url("/api/drain"))).await
    }

    /// `POST /api/undrain`: queued jobs start again as admission allows. Returns the engine's status.
    pub async fn undrain(&self) -> Result<aura_model::EngineStatus, ClientError> {
        self.send(self.http.post(self.url("/api/undrain"))).await
    }

    /// `GET /api/janitor`: every janitor task's last and next run, last report and totals.
    pub async fn janitor(&self) -> Result<aura_model::janitor::JanitorStatus, ClientError> {
        self.send(self.http.get(self.url("/api/janitor"))).await
    }

    /// `POST /api/janitor/run`: runs janitor tasks now (admin) and returns what each did (or, with
    /// `dry_run`, would do). Waits for the run: a large tree takes a while.
    pub async fn janitor_run(
        &self,
        request: &aura_model::janitor::RunRequest,
    ) -> Result<aura_model::janitor::RunAnswer, ClientError> {
        self.send(self.http.post(self.url("/api/janitor/run")).json(request))
            .await
    }

    /// `POST /api/jobs/{id}/{action}`, for the actions without a body.
    async fn act(&self, id: JobId, action: &str) -> Result<JobView, ClientError> {
        self.send(
            self.http
                .post(self.url(&format!("/api/jobs/{id}/{action}"))),
        )
        .await
    }

    /// One job's recorded events, oldest first.
    pub async fn events(&self, id: JobId) -> Result<Vec<JobEventRecord>, ClientError> {
        self.send(self.http.get(self.url(&format!("/api/jobs/{id}/events"))))
            .await
    }

    /// One page (up to 1,000) of the engine's own event log (admission paused/resumed, memory pressure
    /// decisions) after sequence number `after`; continue after the last one's `seq`.
    pub async fn engine_events(
        &self,
        after: i64,
    ) -> Result<Vec<aura_model::EngineEventRecord>, ClientError> {
        let params = [("after", after.to_string()), ("limit", "1000".into())];
        self.send(self.http.get(self.url("/api/events")).query(&params))
            .await
    }

    /// Long-polls until the job is finished or `timeout` passes; returns the job as it is then.
    pub async fn wait(&self, id: JobId, timeout: Duration) -> Result<JobView, ClientError> {
        let request = self
            .http
            .get(self.url(&format!("/api/jobs/{id}/wait")))
            .query(&[("timeout", format!("{}ms", timeout.as_millis()))])
            .timeout(timeout + Duration::from_secs(30));
        self.send(request).await
    }

    /// Captured output of the job's latest attempt: up to 1 MiB of `stream` (`stdout` or `stderr`) from
    /// logical byte `offset`.
    pub async fn logs(
        &self,
        id: JobId,
        stream: &str,
        offset: u64,
    ) -> Result<LogChunk, ClientError> {
        let request = self
            .http
            .get(self.url(&format!("/api/jobs/{id}/logs")))
            .query(&[
                ("stream", stream.to_owned()),
                ("offset", offset.to_string()),
            ]);
        let response = self.execute(request).await?;
        let header = |name: &str| -> u64 {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        let (offset, next_offset, truncated_bytes) = (
            header("aura-log-offset"),
            header("aura-log-next-offset"),
            header("aura-log-truncated"),
        );
        let url = response.url().to_string();
        let data = response
            .bytes()
            .await
            .map_err(|source| ClientError::Http { url, source })?
            .to_vec();
        Ok(LogChunk {
            offset,
            next_offset,
            truncated_bytes,
            data,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    async fn send<T: DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<T, ClientError> {
        let response = self.execute(request).await?;
        let (url, status) = (response.url().to_string(), response.status());
        let bytes = response.bytes().await.map_err(|source| ClientError::Http {
            url: url.clone(),
            source,
        })?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Unexpected {
            url,
            status,
            body: format!("{e}: {}", String::from_utf8_lossy(&bytes)),
        })
    }

    async fn execute(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ClientError> {
        // The client that made the builder sends it: streams use their own (its read timeout).
        let (http, request) = request.build_split();
        let request = request.map_err(|source| ClientError::Http {
            url: self.base.clone(),
            source,
        })?;
        let url = request.url().to_string();
        let response = http.execute(request).await.map_err(|source| {
            if source.is_connect() {
                ClientError::Connect {
                    url: self.base.clone(),
                    source,
                }
            } else {
                ClientError::Http {
                    url: url.clone(),
                    source,
                }
            }
        })?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body = response.text().await.unwrap_or_default();
        match serde_json::from_str::<Problem>(&body) {
            Ok(problem) => Err(ClientError::Api(problem)),
            Err(_) => Err(ClientError::Unexpected { url, status, body }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(event: &str, id: Option<&str>, data: &str) -> SseEvent {
        SseEvent {
            event: event.into(),
            id: id.map(str::to_owned),
            data: data.into(),
        }
    }

    #[test]
    fn stream_events_come_out_typed_and_unknown_ones_as_they_came() {
        let job = event(
            "job",
            Some("12"),
            r#"{"seq":12,"job_id":3,"attempt":1,"at":"2026-11-22T10:00:00Z","kind":"requeued","detail":{"attempt":2}}"#,
        );
        let StreamItem::Job(record, id) = StreamItem::from_event(job) else {
            panic!("not a job event")
        };
        assert_eq!(
            (record.seq, record.job_id, id.as_deref()),
            (12, JobId(3), Some("12"))
        );
        assert_eq!(record.event, JobEvent::Requeued { attempt: 2 });
        // A kind from a newer daemon is kept, not an error.
        let newer = event(
            "job",
            Some("13"),
            r#"{"seq":13,"job_id":3,"attempt":1,"at":"2026-11-22T10:00:00Z","kind":"teleported","detail":null}"#,
        );
        assert!(matches!(
            StreamItem::from_event(newer),
            StreamItem::Job(
                JobEventRecord {
                    event: JobEvent::Unrecognized { .. },
                    ..
                },
                _
            )
        ));
        let progress = event(
            "progress",
            None,
            r#"{"job_id":3,"progress":{"percent":42.5,"fps":80.0,"reports":3}}"#,
        );
        let StreamItem::Progress(update) = StreamItem::from_event(progress) else {
            panic!("not progress")
        };
        assert_eq!(update.progress.percent, Some(42.5));
        assert_eq!(
            StreamItem::from_event(event(
                "lagged",
                None,
                r#"{"missed":5,"resume_after":"9.2","detail":"behind"}"#
            )),
            StreamItem::Lagged {
                missed: 5,
                resume_after: "9.2".into(),
                detail: "behind".into()
            }
        );
        assert_eq!(
            StreamItem::from_event(event(
                "end",
                None,
                r#"{"reason":"the daemon is shutting down"}"#
            )),
            StreamItem::End {
                job_id: None,
                reason: "the daemon is shutting down".into(),
                outcome: None
            }
        );
        let odd = event("progress", None, "not json");
        assert_eq!(StreamItem::from_event(odd.clone()), StreamItem::Other(odd));
    }

    /// A server that answers one request with `body` sent in `pieces`, then closes.
    async fn one_shot_server(pieces: Vec<&'static [u8]>) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = vec![0u8; 4096];
            let _ = socket.read(&mut request).await.unwrap();
            socket
                .write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n",
                )
                .await
                .unwrap();
            for piece in pieces {
                socket.write_all(piece).await.unwrap();
                socket.flush().await.unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        url
    }

    #[tokio::test]
    async fn a_stream_cut_anywhere_reads_whole_events_and_keeps_the_last_id() {
        let url = one_shot_server(vec![
            b": hi\n\nevent: job\nid: 4\ndata: {\"seq\":4,\"job_id\":1,\"att",
            b"empt\":1,\"at\":\"2026-11-22T10:00:00Z\",\"kind\":\"dependencies_met\",\"detail\":null}\r",
            b"\n\r\nevent: end\ndata: {\"job_id\":1,\"reason\":\"job finished\",\"outcome\":\"succeeded\"}\n\n",
            b"data: never ended",
        ])
        .await;
        let client = Client::new(&url).unwrap();
        let mut stream = client.job_stream(JobId(1), None, None).await.unwrap();
        let Some(Ok(StreamItem::Job(record, _))) = stream.next().await else {
            panic!("no job event")
        };
        assert_eq!(record.event, JobEvent::DependenciesMet);
        assert_eq!(stream.last_id(), Some("4"));
        assert_eq!(
            stream.next().await.unwrap().unwrap(),
            StreamItem::End {
                job_id: Some(JobId(1)),
                reason: "job finished".into(),
                outcome: Some("succeeded".into())
            }
        );
        // The unfinished event at the close is dropped.
        assert!(stream.next().await.is_none());
    }

    /// A server that answers one request with `status`, `content_type` and `body`, and hands over the
    /// request it read (head and body).
    async fn answering_once(
        status: &'static str,
        content_type: &'static str,
        body: impl Into<String>,
    ) -> (String, tokio::sync::oneshot::Receiver<String>) {
        let body: String = body.into();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            // The head, then as many body bytes as it announces.
            loop {
                let n = socket.read(&mut buf).await.unwrap();
                request.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&request).into_owned();
                if let Some((head, rest)) = text.split_once("\r\n\r\n") {
                    let length = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap())
                        })
                        .unwrap_or(0);
                    if rest.len() >= length || n == 0 {
                        break;
                    }
                }
            }
            let answer = format!(
                "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            socket.write_all(answer.as_bytes()).await.unwrap();
            let _ = tx.send(String::from_utf8_lossy(&request).into_owned());
        });
        (url, rx)
    }

    #[tokio::test]
    async fn a_list_sends_each_label_as_its_own_parameter() {
        let (url, request) = answering_once(
            "200 OK",
            "application/json",
            r#"{"jobs":[],"next_after":null}"#,
        )
        .await;
        let client = Client::new(&url).unwrap();
        let query = ListQuery {
            states: vec!["queued".into()],
            labels: vec![
                ("project".into(), "trailer".into()),
                ("team.io/x".into(), "a=b c&d".into()),
            ],
            limit: Some(5),
            ..Default::default()
        };
        let page = client.list(&query).await.unwrap();
        assert!(page.jobs.is_empty());
        let request = request.await.unwrap();
        assert!(
            request.starts_with(
                "GET /api/jobs?state=queued&label=project%3Dtrailer\
                 &label=team.io%2Fx%3Da%3Db+c%26d&limit=5 HTTP/1.1\r\n"
            ),
            "{request}"
        );
    }

    #[tokio::test]
    async fn a_bulk_cancel_sends_its_selection_and_reads_the_result() {
        let (url, request) = answering_once(
            "200 OK",
            "application/json",
            r#"{"count":2,"ids":[3,4],"dry_run":true,"by_state":{"running":1,"queued":1}}"#,
        )
        .await;
        let client = Client::new(&url).unwrap();
        let selection = CancelSelection {
            states: vec![
                aura_model::StateName::Queued,
                aura_model::StateName::Running,
            ],
            labels: [("kind".to_owned(), "encode".to_owned())].into(),
            kill: true,
            dry_run: true,
        };
        let result = client.cancel_where(&selection).await.unwrap();
        assert_eq!(result.ids, [JobId(3), JobId(4)]);
        assert_eq!(result.by_state["running"], 1);
        let request = request.await.unwrap();
        assert!(
            request.starts_with("POST /api/jobs/cancel HTTP/1.1\r\n"),
            "{request}"
        );
        let body = request.split_once("\r\n\r\n").unwrap().1;
        let sent: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(
            sent,
            serde_json::json!({
                "states": ["queued", "running"], "labels": {"kind": "encode"},
                "kill": true, "dry_run": true
            })
        );
    }

    #[tokio::test]
    async fn a_new_priority_is_a_json_body_and_a_refusal_keeps_its_code() {
        let (url, request) = answering_once(
            "409 Conflict",
            "application/problem+json",
            r#"{"type":"/problems/invalid_state","title":"Not possible in the job's state","status":409,"detail":"job 7 is running: cannot priority it","code":"invalid_state"}"#,
        )
        .await;
        let client = Client::new(&url).unwrap();
        let err = client.set_priority(JobId(7), -5).await.unwrap_err();
        let ClientError::Api(problem) = &err else {
            panic!("not a problem: {err}")
        };
        assert_eq!(
            (problem.status, problem.code.as_str()),
            (409, "invalid_state")
        );
        assert!(!err.is_transient());
        let request = request.await.unwrap();
        assert!(
            request.starts_with("POST /api/jobs/7/priority HTTP/1.1\r\n"),
            "{request}"
        );
        assert!(request.ends_with(r#"{"priority":-5}"#), "{request}");
    }

    #[tokio::test]
    async fn the_nodes_of_a_fleet_read_as_a_node_list() {
        let (url, request) = answering_once(
            "200 OK",
            "application/json",
            r#"{"fleet":true,"nodes":[{"id":"a1","name":"render-1","tags":["gpu"],"url":"http://10.0.0.1:7411",
                "state":"up","incarnation":2,"capacity":{"cpus":16.0,"memory_bytes":68719476736,"gpus":1},
                "running":3,"claimed":1,"heartbeat_age_ms":1200,"registered_at":"2026-11-22T10:00:00Z",
                "this_node":true}]}"#,
        )
        .await;
        let client = Client::new(&url).unwrap();
        let list = client.nodes().await.unwrap();
        assert!(list.fleet);
        let node = &list.nodes[0];
        assert_eq!(
            (node.name.as_str(), node.state, node.running, node.this_node),
            ("render-1", aura_model::NodeState::Up, 3, true)
        );
        assert_eq!(node.capacity.gpus, 1);
        let request = request.await.unwrap();
        assert!(
            request.starts_with("GET /api/nodes HTTP/1.1\r\n"),
            "{request}"
        );
        // A single node says so.
        let (url, _) = answering_once(
            "200 OK",
            "application/json",
            r#"{"fleet":false,"nodes":[]}"#,
        )
        .await;
        let list = Client::new(&url).unwrap().nodes().await.unwrap();
        assert_eq!(list, NodeList::default());
    }

    #[tokio::test]
    async fn operator_actions_post_to_their_routes() {
        let job = aura_model::Job::new(
            JobId(7),
            JobSpec::new("true", Vec::<String>::new()),
            Timestamp::now(),
        );
        let job = serde_json::to_string(&job).unwrap();
        for action in ["pause", "resume", "hold", "release", "kill", "retry"] {
            let (url, request) = answering_once("200 OK", "application/json", job.clone()).await;
            let client = Client::new(&url).unwrap();
            let id = JobId(7);
            let view = match action {
                "pause" => client.pause(id).await,
                "resume" => client.resume(id).await,
                "hold" => client.hold(id).await,
                "release" => client.release(id).await,
                "kill" => client.kill(id).await,
                _ => client.retry(id).await,
            }
            .unwrap_or_else(|e| panic!("{action}: {e}"));
            assert_eq!(view.job.id, JobId(7));
            let request = request.await.unwrap();
            let line = format!("POST /api/jobs/7/{action} HTTP/1.1\r\n");
            assert!(request.starts_with(&line), "{request}");
        }
    }
}

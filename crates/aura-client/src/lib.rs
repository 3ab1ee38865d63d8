//! A typed client for Aura's HTTP API. The CLI talks to the daemon through this and nothing else.

use aura_model::{JobEventRecord, JobId, JobSpec};
pub use aura_model::{JobPage, JobView};
use reqwest::StatusCode;
/// URLs as the client parses them (for callers that need a server URL's host and port).
pub use reqwest::Url;
use serde::de::DeserializeOwned;
use serde::Deserialize;
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
}

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
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .default_headers(headers)
            .build()
            .map_err(|source| ClientError::Http {
                url: base.clone(),
                source,
            })?;
        Ok(Client { base, http })
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

    /// Cancels a queued job, or stops a running one with its stop sequence; returns the job as it is then.
    pub async fn cancel(&self, id: JobId) -> Result<JobView, ClientError> {
        self.send(self.http.post(self.url(&format!("/api/jobs/{id}/cancel"))))
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
        let request = request.build().map_err(|source| ClientError::Http {
            url: self.base.clone(),
            source,
        })?;
        let url = request.url().to_string();
        let response = self.http.execute(request).await.map_err(|source| {
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

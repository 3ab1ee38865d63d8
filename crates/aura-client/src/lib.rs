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
    pub title: String,
    pub status: u16,
    pub detail: String,
    pub code: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The cause follows in the error's source chain (shown once by `{:#}`), not in this message.
    #[error("cannot reach the Aura daemon at {url} (start it with `aura serve`, or set --server / AURA_SERVER)")]
    Connect { url: String, source: reqwest::Error },
    #[error("{}: {}", .0.title, .0.detail)]
    Api(Problem),
    #[error("unexpected response from {url}: HTTP {status}: {body}")]
    Unexpected {
        url: String,
        status: StatusCode,
        body: String,
    },
    #[error("request to {url} failed: {source}")]
    Http { url: String, source: reqwest::Error },
    #[error("invalid server URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("the API token is not usable in an HTTP header (it holds control characters)")]
    BadToken,
}

/// One chunk of captured output.
#[derive(Clone, Debug)]
pub struct LogChunk {
    pub offset: u64,
    pub next_offset: u64,
    pub truncated_bytes: u64,
    pub data: Vec<u8>,
}

#[derive(Clone, Debug, Default)]
pub struct ListQuery {
    pub states: Vec<String>,
    pub limit: Option<u32>,
    pub after: Option<JobId>,
    pub oldest_first: bool,
}

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

    pub fn base(&self) -> &str {
        &self.base
    }

    pub async fn health(&self) -> Result<aura_model::Alive, ClientError> {
        self.send(self.http.get(self.url("/healthz"))).await
    }

    pub async fn status(&self) -> Result<aura_model::EngineStatus, ClientError> {
        self.send(self.http.get(self.url("/api/status"))).await
    }

    /// The host's latest sample.
    pub async fn system(&self) -> Result<aura_model::host::HostSnapshot, ClientError> {
        self.send(self.http.get(self.url("/api/metrics/system")))
            .await
    }

    pub async fn utilization(&self) -> Result<aura_model::Utilization, ClientError> {
        self.send(self.http.get(self.url("/api/metrics/utilization")))
            .await
    }

    pub async fn submit(&self, spec: &JobSpec) -> Result<JobView, ClientError> {
        self.send(self.http.post(self.url("/api/jobs")).json(spec))
            .await
    }

    pub async fn get(&self, id: JobId) -> Result<JobView, ClientError> {
        self.send(self.http.get(self.url(&format!("/api/jobs/{id}"))))
            .await
    }

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

    pub async fn cancel(&self, id: JobId) -> Result<JobView, ClientError> {
        self.send(self.http.post(self.url(&format!("/api/jobs/{id}/cancel"))))
            .await
    }

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

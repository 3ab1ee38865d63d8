//! Routes of the HTTP API and their request parsing. Handlers are thin: parse, call the engine, render.

use crate::error::{ApiError, ErrorCode};
use aura_engine::{EngineHandle, EngineStatus};
use aura_logs::Stream;
use aura_model::{JobEventRecord, JobId, JobPage, JobSpec, JobView, StateName};
use aura_store::ListFilter;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Limits of the API, with the defaults of `aura serve`.
#[derive(Clone, Debug)]
pub struct ApiConfig {
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// Longest a `wait` request may hold the connection.
    pub max_wait: Duration,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            max_body_bytes: 2 * 1024 * 1024,
            max_wait: Duration::from_secs(300),
        }
    }
}

#[derive(Clone)]
struct AppState {
    engine: EngineHandle,
    config: ApiConfig,
}

/// Builds the API router; tests call it without a socket.
pub fn router(engine: EngineHandle, config: ApiConfig) -> Router {
    let body_limit = config.max_body_bytes;
    Router::new()
        .route("/healthz", get(healthz))
        .route("/api/status", get(status))
        .route("/api/metrics/utilization", get(utilization))
        .route("/api/metrics/system", get(system))
        .route("/api/metrics/process", get(process))
        .route("/readyz", get(readyz))
        .route("/api/diagnostics/resources", get(diagnostics))
        .route("/api/diagnostics/resources/cleanup", post(cleanup))
        .route("/metrics", get(metrics))
        .route("/api/metrics/prometheus", get(metrics))
        .route("/api/leases", post(acquire_lease).get(list_leases))
        .route("/api/leases/{id}/renew", post(renew_lease))
        .route("/api/leases/{id}", axum::routing::delete(release_lease))
        .route("/api/jobs", post(submit).get(list))
        .route("/api/jobs/{id}", get(show))
        .route("/api/jobs/{id}/cancel", post(cancel))
        .route("/api/jobs/{id}/events", get(events))
        .route("/api/events", get(engine_events))
        .route("/api/jobs/{id}/logs", get(logs))
        .route("/api/jobs/{id}/wait", get(wait))
        .fallback(|| async { ApiError::new(ErrorCode::NotFound, "no such route") })
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(AppState { engine, config })
}

type ApiResult<T> = Result<T, ApiError>;

fn job_id(path: Result<Path<String>, PathRejection>) -> ApiResult<JobId> {
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

fn query<T>(q: Result<Query<T>, QueryRejection>) -> ApiResult<T> {
    q.map(|Query(t)| t)
        .map_err(|e| ApiError::bad_request(e.body_text()))
}

#[derive(Serialize)]
struct Health {
    status: &'static str,
    backend: aura_model::Backend,
}

async fn healthz(State(app): State<AppState>) -> Json<Health> {
    Json(Health {
        status: "ok",
        backend: app.engine.backend(),
    })
}

async fn status(State(app): State<AppState>) -> ApiResult<Json<EngineStatus>> {
    Ok(Json(app.engine.status().await?))
}

fn lease_id(path: Result<Path<String>, PathRejection>) -> ApiResult<u64> {
    let Path(raw) = path.map_err(|e| ApiError::bad_request(e.body_text()))?;
    raw.parse::<u64>()
        .map_err(|_| ApiError::bad_request(format!("invalid lease id {raw:?}")))
}

/// Parses a JSON body into `T`: malformed JSON is 400, well-formed but invalid content (an unknown field, a
/// negative duration) is 422.
fn json_body<T: serde::de::DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
    max_body_bytes: usize,
) -> ApiResult<T> {
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                ErrorCode::PayloadTooLarge,
                format!("the request body is larger than {max_body_bytes} bytes"),
            )
        } else {
            ApiError::bad_request(e.body_text())
        }
    })?;
    serde_json::from_slice(&body).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => ApiError::new(ErrorCode::InvalidSpec, e.to_string()),
        _ => ApiError::bad_request(format!("invalid JSON: {e}")),
    })
}

async fn acquire_lease(
    State(app): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let spec: aura_model::LeaseSpec = json_body(body, app.config.max_body_bytes)?;
    let lease = app.engine.acquire_lease(spec).await?;
    Ok((StatusCode::CREATED, Json(lease)).into_response())
}

async fn renew_lease(
    State(app): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<aura_engine::LeaseInfo>> {
    Ok(Json(app.engine.renew_lease(lease_id(id)?).await?))
}

async fn release_lease(
    State(app): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<StatusCode> {
    app.engine.release_lease(lease_id(id)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_leases(State(app): State<AppState>) -> ApiResult<Json<Vec<aura_engine::LeaseInfo>>> {
    Ok(Json(app.engine.leases().await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EngineEventsQuery {
    /// Sequence number to continue after (0: from the start).
    after: Option<i64>,
    limit: Option<u32>,
}

/// The engine's event log: decisions about the host rather than one job.
async fn engine_events(
    State(app): State<AppState>,
    q: Result<Query<EngineEventsQuery>, QueryRejection>,
) -> ApiResult<Json<Vec<aura_model::EngineEventRecord>>> {
    let q = query(q)?;
    let limit = page_limit(q.limit)?;
    Ok(Json(
        app.engine
            .engine_events(q.after.unwrap_or(0), limit)
            .await?,
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SystemQuery {
    /// `true` for the recent snapshots (oldest first) instead of the latest.
    history: Option<bool>,
}

async fn system(
    State(app): State<AppState>,
    q: Result<Query<SystemQuery>, QueryRejection>,
) -> ApiResult<Response> {
    if query(q)?.history.unwrap_or(false) {
        let history = app.engine.host_history();
        let snapshots: Vec<&aura_host::HostSnapshot> = history.iter().map(|s| &**s).collect();
        return Ok(Json(snapshots).into_response());
    }
    let latest = app
        .engine
        .host()
        .ok_or_else(|| ApiError::new(ErrorCode::Internal, "the host sampler has no sample yet"))?;
    Ok(Json(&*latest).into_response())
}

async fn process(State(app): State<AppState>) -> ApiResult<Json<aura_host::ProcessSnapshot>> {
    Ok(Json(app.engine.process().await?))
}

async fn diagnostics(State(app): State<AppState>) -> ApiResult<Json<aura_engine::Diagnostics>> {
    Ok(Json(app.engine.diagnostics().await?))
}

async fn cleanup(State(app): State<AppState>) -> ApiResult<Json<aura_engine::Cleanup>> {
    Ok(Json(app.engine.cleanup().await?))
}

async fn metrics(State(app): State<AppState>) -> ApiResult<Response> {
    let running = app
        .engine
        .list(ListFilter {
            states: vec![StateName::Running, StateName::Stopping],
            after: None,
            limit: MAX_PAGE,
            newest_first: true,
        })
        .await?;
    let inputs = crate::prometheus::Inputs {
        host: app.engine.host(),
        // The scrape still answers if the process read fails; those series are then absent.
        process: app.engine.process().await.ok(),
        status: app.engine.status().await?,
        utilization: app.engine.utilization().await?,
        running,
    };
    let body = crate::prometheus::render(inputs)
        .map_err(|e| ApiError::new(ErrorCode::Internal, format!("encoding metrics: {e}")))?;
    let content_type = "text/plain; version=0.0.4; charset=utf-8";
    Ok(([(header::CONTENT_TYPE, content_type)], body).into_response())
}

/// Healthy and degraded answer 200 (the daemon works; reasons say what to look at); unhealthy answers 503.
async fn readyz(State(app): State<AppState>) -> Response {
    let readiness = app.engine.readiness().await;
    let status = match readiness.status {
        aura_engine::Health::Unhealthy => StatusCode::SERVICE_UNAVAILABLE,
        aura_engine::Health::Healthy | aura_engine::Health::Degraded => StatusCode::OK,
    };
    (status, Json(readiness)).into_response()
}

async fn utilization(State(app): State<AppState>) -> ApiResult<Json<aura_engine::Utilization>> {
    Ok(Json(app.engine.utilization().await?))
}

async fn submit(
    State(app): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let spec: JobSpec = json_body(body, app.config.max_body_bytes)?;
    let job = app.engine.submit(spec).await?;
    let location = HeaderValue::from_str(&format!("/api/jobs/{}", job.id)).ok();
    let mut response = (
        StatusCode::CREATED,
        Json(JobView {
            job,
            live: None,
            waiting: None,
        }),
    )
        .into_response();
    if let Some(location) = location {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    /// Comma-separated state names.
    state: Option<String>,
    limit: Option<u32>,
    after: Option<i64>,
    /// `desc` (newest first, default) or `asc`.
    order: Option<String>,
}

const MAX_PAGE: u32 = 1000;

/// A listing's `limit` parameter: 100 when absent, 1 to `MAX_PAGE` when given.
fn page_limit(limit: Option<u32>) -> ApiResult<u32> {
    match limit.unwrap_or(100) {
        l @ 1..=MAX_PAGE => Ok(l),
        _ => Err(ApiError::bad_request(format!(
            "limit must be between 1 and {MAX_PAGE}"
        ))),
    }
}

async fn list(
    State(app): State<AppState>,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> ApiResult<Json<JobPage>> {
    let q = query(q)?;
    let states = match q.state.as_deref() {
        None | Some("") => Vec::new(),
        Some(text) => text
            .split(',')
            .map(|s| s.trim().parse::<StateName>().map_err(ApiError::bad_request))
            .collect::<Result<_, _>>()?,
    };
    let newest_first = match q.order.as_deref() {
        None | Some("desc") => true,
        Some("asc") => false,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "invalid order {other:?}: use asc or desc"
            )))
        }
    };
    let limit = page_limit(q.limit)?;
    let filter = ListFilter {
        states,
        after: q.after.map(JobId),
        limit,
        newest_first,
    };
    let jobs = app.engine.list(filter).await?;
    let next_after = (jobs.len() == limit as usize)
        .then(|| jobs.last().map(|j| j.job.id))
        .flatten();
    Ok(Json(JobPage { jobs, next_after }))
}

async fn show(
    State(app): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<JobView>> {
    Ok(Json(app.engine.get(job_id(id)?).await?))
}

async fn cancel(
    State(app): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<JobView>> {
    // The engine's answer, not a store read: the stop it just recorded may not be committed yet.
    let job = app.engine.cancel(job_id(id)?).await?;
    Ok(Json(JobView {
        job,
        live: None,
        waiting: None,
    }))
}

async fn events(
    State(app): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<Vec<JobEventRecord>>> {
    Ok(Json(app.engine.events(job_id(id)?).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LogQuery {
    stream: Option<String>,
    offset: Option<u64>,
    max: Option<usize>,
    attempt: Option<u32>,
}

const MAX_LOG_CHUNK: usize = 4 * 1024 * 1024;

/// Raw bytes of one stream from a logical offset; the offsets travel in headers so that the body is exactly
/// what the job wrote.
async fn logs(
    State(app): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    q: Result<Query<LogQuery>, QueryRejection>,
) -> ApiResult<Response> {
    let id = job_id(id)?;
    let q = query(q)?;
    let stream = match q.stream.as_deref() {
        None => Stream::Stdout,
        Some(s) => s.parse::<Stream>().map_err(|_| {
            ApiError::bad_request(format!("invalid stream {s:?}: use stdout or stderr"))
        })?,
    };
    let max = q.max.unwrap_or(1024 * 1024).clamp(1, MAX_LOG_CHUNK);
    let chunk = app
        .engine
        .logs(id, stream, q.attempt, q.offset.unwrap_or(0), max)
        .await?;
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert("aura-log-offset", HeaderValue::from(chunk.offset));
    headers.insert("aura-log-next-offset", HeaderValue::from(chunk.next_offset));
    headers.insert(
        "aura-log-truncated",
        HeaderValue::from(chunk.truncated_bytes),
    );
    Ok((headers, chunk.data).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WaitQuery {
    /// How long to hold the request, e.g. `30s`.
    timeout: Option<String>,
}

async fn wait(
    State(app): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    q: Result<Query<WaitQuery>, QueryRejection>,
) -> ApiResult<Json<JobView>> {
    let id = job_id(id)?;
    let timeout = match query(q)?.timeout {
        None => Duration::from_secs(30),
        Some(t) => humantime::parse_duration(&t)
            .map_err(|e| ApiError::bad_request(format!("invalid timeout {t:?}: {e}")))?,
    };
    Ok(Json(
        app.engine
            .wait(id, timeout.min(app.config.max_wait))
            .await?,
    ))
}

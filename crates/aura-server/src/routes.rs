//! Routes of the HTTP API and their request parsing. Handlers are thin: parse, call the engine, render.

use crate::auth::{Principal, Scope};
use crate::error::{ApiError, ErrorCode};
use crate::query;
use crate::security;
pub(crate) use crate::state::{job_id, read_body, ApiConfig, AppState};
use aura_engine::{EngineHandle, EngineStatus};
use aura_model::view::{CancelResult, CancelSelection, PriorityRequest};
use aura_model::{Job, JobAction, JobEventRecord, JobId, JobPage, JobSpec, JobView, StateName};
use aura_store::ListFilter;
use axum::body::{Body, Bytes};
use axum::extract::rejection::PathRejection;
use axum::extract::{Extension, Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use std::sync::Arc;
use std::time::Duration;

/// Builds the API router with every check of `security` in front of it; tests call it without a socket.
pub fn router(engine: EngineHandle, config: ApiConfig) -> Router {
    let security = config.security.clone();
    let cors = cors(&security.allowed_origins);
    let sessions = Arc::new(crate::session::Sessions::new(
        config.max_sessions,
        config.session_idle,
    ));
    let peers = crate::forward::client(config.stream_heartbeat)
        .inspect_err(|e| {
            tracing::warn!(error = %e, "no HTTP client for other fleet nodes: requests about their jobs will fail")
        })
        .ok();
    let state = Arc::new(AppState {
        streams: Arc::new(crate::sse::Streams::new(
            config.max_event_streams,
            config.stream_heartbeat,
            config.stream_send_buffer,
        )),
        engine,
        config,
        peers,
        fleet: std::sync::OnceLock::new(),
    });
    // The routes of one job whose requests go to the node that holds it (fleet mode, `forward`).
    let to_holder =
        || axum::middleware::from_fn_with_state(state.clone(), crate::forward::to_holder);
    let routes = Router::new()
        .merge(crate::dashboard::routes(
            sessions.clone(),
            security.tokens.clone(),
        ))
        .route("/healthz", get(healthz))
        .route("/api/status", get(status))
        .route("/api/nodes", get(nodes))
        .route("/api/metrics/utilization", get(utilization))
        .route("/api/metrics/system", get(system))
        .route("/api/metrics/process", get(process))
        .route("/readyz", get(readyz))
        .route("/api/openapi.json", get(openapi_json))
        .route("/api/diagnostics/resources", get(diagnostics))
        .route("/api/diagnostics/resources/cleanup", post(cleanup))
        .route("/api/janitor", get(janitor_status))
        .route("/api/janitor/run", post(janitor_run))
        .route("/metrics", get(metrics))
        .route("/api/metrics/prometheus", get(metrics))
        .route("/api/leases", post(acquire_lease).get(list_leases))
        .route("/api/leases/{id}/renew", post(renew_lease))
        .route("/api/leases/{id}", axum::routing::delete(release_lease))
        .route("/api/jobs", post(submit).get(list))
        .route("/api/jobs/batch", post(submit_batch))
        .route("/api/jobs/{id}", get(show))
        .route(
            "/api/jobs/cancel",
            post(cancel_where).route_layer(axum::middleware::from_fn(crate::forward::as_sender)),
        )
        .route(
            "/api/jobs/{id}/cancel",
            post(cancel).route_layer(to_holder()),
        )
        .route("/api/jobs/{id}/kill", post(kill).route_layer(to_holder()))
        .route("/api/jobs/{id}/pause", post(pause).route_layer(to_holder()))
        .route(
            "/api/jobs/{id}/resume",
            post(resume).route_layer(to_holder()),
        )
        .route("/api/jobs/{id}/hold", post(hold).route_layer(to_holder()))
        .route(
            "/api/jobs/{id}/release",
            post(release).route_layer(to_holder()),
        )
        .route(
            "/api/jobs/{id}/priority",
            post(set_priority).route_layer(to_holder()),
        )
        .route("/api/jobs/{id}/retry", post(retry))
        .route("/api/drain", post(drain))
        .route("/api/undrain", post(undrain))
        .route("/api/jobs/{id}/events", get(events))
        .route(
            "/api/jobs/{id}/events/stream",
            get(job_stream).route_layer(to_holder()),
        )
        .route("/api/events", get(engine_events))
        .route("/api/events/stream", get(all_stream))
        .route("/api/jobs/{id}/logs", get(logs).route_layer(to_holder()))
        .route("/api/jobs/{id}/wait", get(wait))
        .route("/api/uploads", post(crate::files::upload))
        .route(
            "/api/jobs/{id}/files",
            get(crate::files::job_files).route_layer(to_holder()),
        )
        .route(
            "/api/jobs/{id}/files/{*path}",
            get(crate::files::job_file).route_layer(to_holder()),
        )
        .route_layer(security::SecurityLayer {
            config: security.clone(),
            stage: security::Stage::Authorize,
            sessions: Some(sessions),
        })
        // After every route: it is set on the routes there are. Routing adds the `Allow` header.
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(|| async { ApiError::new(ErrorCode::NotFound, "no such route") })
        .with_state(state);
    // Outermost last: the guard's checks run first, then CORS (a preflight from a configured origin is
    // answered there, before authentication: browsers send no credentials with it).
    let routes = match cors {
        Some(cors) => routes.layer(cors),
        None => routes,
    };
    routes.layer(security::SecurityLayer {
        config: security,
        stage: security::Stage::Guard,
        sessions: None,
    })
}

/// CORS for the configured origins only; none configured, none answered (a browser then refuses every
/// cross-site call that needs a preflight, which every write does).
fn cors(origins: &[String]) -> Option<tower_http::cors::CorsLayer> {
    use axum::http::Method;
    let origins: Vec<HeaderValue> = origins
        .iter()
        .filter_map(|o| HeaderValue::from_str(o).ok())
        .collect();
    (!origins.is_empty()).then(|| {
        tower_http::cors::CorsLayer::new()
            .allow_origin(origins)
            .allow_methods([Method::GET, Method::POST, Method::DELETE])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                header::RANGE,
                header::IF_RANGE,
            ])
            .expose_headers([
                header::LOCATION,
                // Downloads of a job's files (`files`).
                header::CONTENT_RANGE,
                header::CONTENT_DISPOSITION,
                header::ETAG,
                header::ACCEPT_RANGES,
                header::HeaderName::from_static("aura-log-offset"),
                header::HeaderName::from_static("aura-log-next-offset"),
                header::HeaderName::from_static("aura-log-truncated"),
            ])
            .max_age(Duration::from_secs(600))
    })
}

type ApiResult<T> = Result<T, ApiError>;

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        format!(
            "{method} is not allowed on {}; the Allow header lists what is",
            uri.path()
        ),
    )
}

/// Alive: `ok`, or `shutting_down` (503) once a shutdown has begun, so that a balancer stops sending work.
#[utoipa::path(
    get, path = "/healthz", tag = "health", operation_id = "healthz",
    summary = "Whether the daemon is alive",
    responses(
        (status = 200, description = "Alive and accepting work.", body = aura_model::Alive),
        (status = 503, description = "A shutdown has begun (`status`: `shutting_down`): a balancer stops sending work.", body = aura_model::Alive),
    )
)]
async fn healthz(State(app): State<Arc<AppState>>) -> Response {
    let (code, status) = if app.engine.is_shutting_down() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            aura_model::Liveness::ShuttingDown,
        )
    } else {
        (StatusCode::OK, aura_model::Liveness::Ok)
    };
    let health = aura_model::Alive {
        status,
        backend: app.engine.backend(),
    };
    (code, Json(health)).into_response()
}

/// `GET /api/openapi.json`: the OpenAPI document of this API (`openapi`), encoded once.
#[utoipa::path(
    get, path = "/api/openapi.json", tag = "node", operation_id = "openapi",
    summary = "This document",
    responses((status = 200, description = "The OpenAPI 3.1 document of this API.", body = crate::openapi::OpenApiDocument))
)]
async fn openapi_json() -> ApiResult<Response> {
    let json = openapi_document().map_err(|e| ApiError::new(ErrorCode::Internal, e))?;
    Ok(([(header::CONTENT_TYPE, "application/json")], json).into_response())
}

/// Every route of `router` but the dashboard's files, by its annotation: the paths of the OpenAPI
/// document (`tests/router.rs` checks that the two agree).
#[derive(utoipa::OpenApi)]
#[openapi(paths(
    healthz,
    readyz,
    openapi_json,
    status,
    nodes,
    utilization,
    system,
    process,
    diagnostics,
    cleanup,
    metrics,
    acquire_lease,
    list_leases,
    renew_lease,
    release_lease,
    submit,
    list,
    submit_batch,
    show,
    cancel_where,
    cancel,
    kill,
    pause,
    resume,
    hold,
    release,
    set_priority,
    retry,
    drain,
    undrain,
    events,
    job_stream,
    engine_events,
    all_stream,
    logs,
    wait,
    crate::files::upload,
    crate::files::job_files,
    crate::files::job_file,
    janitor_status,
    janitor_run,
    crate::session::sign_in,
    crate::session::current,
    crate::session::sign_out,
))]
struct ApiDoc;

/// The OpenAPI document, encoded once: the scopes it states are those `SecurityConfig::needed` enforces
/// (with the defaults: `/metrics` needs a token unless `api.public_metrics`).
static OPENAPI: std::sync::LazyLock<Result<Bytes, String>> = std::sync::LazyLock::new(|| {
    use utoipa::OpenApi;
    let security = ApiConfig::new(0, Default::default()).security;
    crate::openapi::encode(
        ApiDoc::openapi(),
        |method, route| security.needed(method, route),
        crate::session::COOKIE,
    )
});

/// `GET /api/openapi.json`'s body.
pub(crate) fn openapi_document() -> Result<Bytes, &'static str> {
    OPENAPI.as_ref().cloned().map_err(String::as_str)
}

#[utoipa::path(
    get, path = "/api/status", tag = "node", operation_id = "status",
    summary = "The engine's backend, counts, drain and guards",
    responses((status = 200, description = "The engine now.", body = aura_model::EngineStatus))
)]
async fn status(State(app): State<Arc<AppState>>) -> ApiResult<Json<EngineStatus>> {
    Ok(Json(app.engine.status().await?))
}

/// `GET /api/nodes`: the fleet's nodes as this one sees them; `fleet: false` and none on a single node.
#[utoipa::path(
    get, path = "/api/nodes", tag = "node", operation_id = "nodes",
    summary = "The fleet's nodes: state, tags, jobs, capacity, heartbeat",
    description = "In fleet mode (a shared PostgreSQL store) every node the fleet knows, `up` first, then by \
                   name; the node that answered is marked `this_node`. On a single node (the embedded \
                   SQLite store): `fleet` is false and `nodes` empty.",
    responses((status = 200, description = "The nodes.", body = aura_model::fleet::NodeList))
)]
async fn nodes(State(app): State<Arc<AppState>>) -> ApiResult<Json<aura_model::fleet::NodeList>> {
    let list = match app.engine.nodes().await? {
        Some(nodes) => aura_model::fleet::NodeList { fleet: true, nodes },
        None => aura_model::fleet::NodeList::default(),
    };
    Ok(Json(list))
}

fn lease_id(path: Result<Path<String>, PathRejection>) -> ApiResult<u64> {
    let Path(raw) = path.map_err(|e| ApiError::bad_request(e.body_text()))?;
    raw.parse::<u64>()
        .map_err(|_| ApiError::bad_request(format!("invalid lease id {raw:?}")))
}

/// Parses a JSON body into `T`: malformed JSON (or UTF-8) is 400, well-formed but invalid content (an
/// unknown field, a negative duration) is 422.
async fn json_body<T: serde::de::DeserializeOwned>(body: Body, config: &ApiConfig) -> ApiResult<T> {
    let body = read_body(body, config).await?;
    parse_json(&body)
}

/// The JSON half of `json_body`, pure (also what the fuzz targets call).
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> ApiResult<T> {
    serde_json::from_slice(body).map_err(|e| {
        // serde_json reports some wrong shapes as syntax errors (a number where an enum's name belongs,
        // `{"states": [1]}`): a body that reads as JSON is well-formed whatever the first error said.
        let well_formed = e.classify() == serde_json::error::Category::Data
            || serde_json::from_slice::<serde_json::Value>(body).is_ok();
        if well_formed {
            ApiError::new(ErrorCode::InvalidSpec, e.to_string())
        } else {
            ApiError::bad_request(format!("invalid JSON: {e}"))
        }
    })
}

/// The principal `security::Stage::Authorize` put on an authenticated request.
fn caller(principal: Option<Extension<Arc<Principal>>>) -> ApiResult<Arc<Principal>> {
    principal.map(|Extension(p)| p).ok_or_else(|| {
        ApiError::new(
            ErrorCode::Internal,
            "request reached a handler unauthenticated",
        )
    })
}

/// A job view as `principal` may see it: environment values only to admin.
fn shown(mut view: JobView, principal: &Principal) -> JobView {
    if !principal.allows(Scope::Admin) {
        view.redact();
    }
    view
}

#[utoipa::path(
    post, path = "/api/leases", tag = "leases", operation_id = "acquire_lease",
    summary = "Hold resources for work outside Aura's processes",
    request_body(content = aura_model::LeaseSpec, description = "What to hold, for how long.",
        example = json!({"resources": {"memory": 1073741824, "cpu": 1.0}, "ttl": "30s", "holder": "renderer"})),
    responses(
        (status = 201, description = "The lease; renew it before `expires_at`.", body = crate::openapi::LeaseInfoSchema),
        (status = 409, description = "What the lease asks for is in use now (`lease_unavailable`); retry later."),
        (status = 422, description = "Not a valid lease request (`invalid_spec`), or more than this machine could ever give (`exceeds_capacity`)."),
    )
)]
async fn acquire_lease(State(app): State<Arc<AppState>>, body: Body) -> ApiResult<Response> {
    let spec: aura_model::LeaseSpec = json_body(body, &app.config).await?;
    let lease = app.engine.acquire_lease(spec).await?;
    Ok((StatusCode::CREATED, Json(lease)).into_response())
}

#[utoipa::path(
    post, path = "/api/leases/{id}/renew", tag = "leases", operation_id = "renew_lease",
    summary = "Extend a lease by its TTL from now",
    params(("id" = u64, Path, description = "The lease's id.")),
    responses(
        (status = 200, description = "The lease with its new expiry.", body = crate::openapi::LeaseInfoSchema),
        (status = 400, description = "The id is not a lease id (`bad_request`)."),
        (status = 404, description = "No such lease: released, expired, or held before a restart (`not_found`)."),
    )
)]
async fn renew_lease(
    State(app): State<Arc<AppState>>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<aura_engine::LeaseInfo>> {
    Ok(Json(app.engine.renew_lease(lease_id(id)?).await?))
}

#[utoipa::path(
    delete, path = "/api/leases/{id}", tag = "leases", operation_id = "release_lease",
    summary = "Give a lease's resources back",
    params(("id" = u64, Path, description = "The lease's id.")),
    responses(
        (status = 204, description = "Released."),
        (status = 400, description = "The id is not a lease id (`bad_request`)."),
        (status = 404, description = "No such lease (`not_found`)."),
    )
)]
async fn release_lease(
    State(app): State<Arc<AppState>>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<StatusCode> {
    app.engine.release_lease(lease_id(id)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    get, path = "/api/leases", tag = "leases", operation_id = "list_leases",
    summary = "Every lease held now",
    responses((status = 200, description = "The leases.", body = Vec<crate::openapi::LeaseInfoSchema>))
)]
async fn list_leases(
    State(app): State<Arc<AppState>>,
) -> ApiResult<Json<Vec<aura_engine::LeaseInfo>>> {
    Ok(Json(app.engine.leases().await?))
}

/// The engine's event log: decisions about the host rather than one job.
#[utoipa::path(
    get, path = "/api/events", tag = "events", operation_id = "engine_events",
    summary = "The engine's event log: decisions about the host rather than one job",
    params(crate::query::EngineEventsQuery),
    responses(
        (status = 200, description = "A page of events, oldest first.", body = Vec<aura_model::EngineEventRecord>),
        (status = 400, description = "An unknown or malformed query parameter (`bad_request`)."),
    )
)]
async fn engine_events(
    State(app): State<Arc<AppState>>,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<Vec<aura_model::EngineEventRecord>>> {
    let (after, limit) = query::events_page(q.as_deref())?;
    Ok(Json(app.engine.engine_events(after, limit).await?))
}

#[utoipa::path(
    get, path = "/api/metrics/system", tag = "metrics", operation_id = "system",
    summary = "Host samples: CPU, memory, PSI, disks, network, data volume, GPUs",
    params(crate::query::SystemQuery),
    responses(
        (status = 200, description = "The latest host sample, or the recent ones.", body = crate::openapi::SystemAnswer),
        (status = 400, description = "An unknown or malformed query parameter (`bad_request`)."),
        (status = 500, description = "The host sampler has no sample yet (`internal`)."),
    )
)]
async fn system(State(app): State<Arc<AppState>>, RawQuery(q): RawQuery) -> ApiResult<Response> {
    if query::system_history(q.as_deref())? {
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

#[utoipa::path(
    get, path = "/api/metrics/process", tag = "metrics", operation_id = "process",
    summary = "The daemon's own process",
    responses((status = 200, description = "Memory, threads, fds, children and CPU of the daemon.", body = aura_model::host::ProcessSnapshot))
)]
async fn process(State(app): State<Arc<AppState>>) -> ApiResult<Json<aura_host::ProcessSnapshot>> {
    Ok(Json(app.engine.process().await?))
}

#[utoipa::path(
    get, path = "/api/diagnostics/resources", tag = "node", operation_id = "diagnostics",
    summary = "The daemon's own resources against their thresholds",
    responses((status = 200, description = "The daemon's process and its warnings.", body = aura_model::Diagnostics))
)]
async fn diagnostics(
    State(app): State<Arc<AppState>>,
) -> ApiResult<Json<aura_engine::Diagnostics>> {
    Ok(Json(app.engine.diagnostics().await?))
}

#[utoipa::path(
    post, path = "/api/diagnostics/resources/cleanup", tag = "node", operation_id = "cleanup",
    summary = "Give back what the daemon can give back now",
    responses((status = 200, description = "The daemon before and after, and what was done.", body = aura_model::Cleanup))
)]
async fn cleanup(State(app): State<Arc<AppState>>) -> ApiResult<Json<aura_engine::Cleanup>> {
    Ok(Json(app.engine.cleanup().await?))
}

#[utoipa::path(
    get, path = "/api/janitor", tag = "node", operation_id = "janitor",
    summary = "The janitor's tasks: last and next run, what each did, totals",
    responses((status = 200, description = "Every task, in the order a full run takes them.", body = aura_model::janitor::JanitorStatus))
)]
async fn janitor_status(
    State(app): State<Arc<AppState>>,
) -> Json<aura_model::janitor::JanitorStatus> {
    Json(app.engine.janitor_status())
}

/// `POST /api/janitor/run`: runs the named tasks (or every enabled one) now and answers what each did.
#[utoipa::path(
    post, path = "/api/janitor/run", tag = "node", operation_id = "janitor_run",
    summary = "Run janitor tasks now (or list what they would do: dry_run)",
    request_body(content = aura_model::janitor::RunRequest, description = "`{}` runs every enabled task."),
    responses(
        (status = 200, description = "One report per task run, in order.", body = aura_model::janitor::RunAnswer),
        (status = 409, description = "Runs are already waiting (`janitor_busy`).", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
async fn janitor_run(
    State(app): State<Arc<AppState>>,
    body: Body,
) -> ApiResult<Json<aura_model::janitor::RunAnswer>> {
    let bytes = read_body(body, &app.config).await?;
    // An empty body is the plain "run everything due" of `aura cleanup`.
    let request: aura_model::janitor::RunRequest = if bytes.iter().all(u8::is_ascii_whitespace) {
        aura_model::janitor::RunRequest::default()
    } else {
        serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::bad_request(format!("invalid janitor run: {e}")))?
    };
    Ok(Json(app.engine.janitor_run(request).await?))
}

#[utoipa::path(
    get, path = "/metrics", tag = "metrics", operation_id = "metrics",
    summary = "Prometheus scrape (also at /api/metrics/prometheus)",
    description = "Public when the daemon runs with `api.public_metrics`.",
    responses(
        (status = 200, description = "The metrics; the format follows `Accept` (`Vary: accept`).",
            content(
                (crate::openapi::Exposition = "text/plain"),
                (crate::openapi::Exposition = "application/openmetrics-text"),
            ),
            headers(("Vary" = String, description = "`accept`."))),
    )
)]
async fn metrics(State(app): State<Arc<AppState>>, headers: HeaderMap) -> ApiResult<Response> {
    let format = crate::prometheus::Format::negotiate(
        headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()),
    );
    let running = app
        .engine
        .list(ListFilter {
            // A paused tree still holds its memory: its series stay while it is frozen.
            states: vec![StateName::Running, StateName::Paused, StateName::Stopping],
            labels: Vec::new(),
            after: None,
            limit: query::MAX_PAGE,
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
        streams: crate::prometheus::StreamCounts {
            open: app.streams.open_now() as u64,
            opened: app
                .streams
                .opened
                .load(std::sync::atomic::Ordering::Relaxed),
            lagged: app
                .streams
                .lagged
                .load(std::sync::atomic::Ordering::Relaxed),
            refused: app
                .streams
                .refused
                .load(std::sync::atomic::Ordering::Relaxed),
            by_type: app.streams.by_type(),
        },
        jobs: app.engine.job_metrics(),
        janitor: Some(app.engine.janitor_status()),
    };
    let body = crate::prometheus::render(inputs, format)
        .map_err(|e| ApiError::new(ErrorCode::Internal, format!("encoding metrics: {e}")))?;
    // The format follows `Accept`: a cache in between must not hand one client's format to another.
    let answer = [
        (header::CONTENT_TYPE, format.content_type()),
        (header::VARY, "accept"),
    ];
    Ok((answer, body).into_response())
}

/// Healthy and degraded answer 200 (the daemon works; reasons say what to look at); unhealthy answers 503.
#[utoipa::path(
    get, path = "/readyz", tag = "health", operation_id = "readyz",
    summary = "Whether the daemon is ready for work, and what degrades it",
    responses(
        (status = 200, description = "Healthy, or degraded (working; `reasons` say what to look at).", body = aura_model::Readiness),
        (status = 503, description = "Unhealthy (the job database cannot commit), drained, or shutting down.", body = aura_model::Readiness),
    )
)]
async fn readyz(State(app): State<Arc<AppState>>) -> Response {
    let readiness = app.engine.readiness().await;
    let status = match readiness.status {
        aura_engine::Health::Unhealthy | aura_engine::Health::ShuttingDown => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        aura_engine::Health::Healthy | aura_engine::Health::Degraded => StatusCode::OK,
    };
    (status, Json(readiness)).into_response()
}

#[utoipa::path(
    get, path = "/api/metrics/utilization", tag = "metrics", operation_id = "utilization",
    summary = "What admission has and what is reserved",
    responses((status = 200, description = "Capacity, reservations, limits and the host as the guards read it.", body = aura_model::Utilization))
)]
async fn utilization(
    State(app): State<Arc<AppState>>,
) -> ApiResult<Json<aura_engine::Utilization>> {
    Ok(Json(app.engine.utilization().await?))
}

#[utoipa::path(
    post, path = "/api/jobs", tag = "jobs", operation_id = "submit",
    summary = "Submit a job",
    request_body(content = aura_model::JobSpec, description = "The job: a program and its arguments, never a shell string.",
        example = json!({"program": "true", "args": [], "labels": {"kind": "example"}})),
    responses(
        (status = 201, description = "Queued (or waiting for its `after`).", body = aura_model::JobView, headers(("Location" = String, description = "The new job's address, `/api/jobs/{id}`."))),
        (status = 403, description = "The program is outside `jobs.programs` (`program_not_allowed`), or the working directory outside `jobs.cwd_roots` (`working_directory_not_allowed`)."),
        (status = 422, description = "Not a valid job: `invalid_spec`, `limit_exceeded`, `program_not_found`, `invalid_working_directory`, `unknown_secret`, `unknown_dependency` or `exceeds_capacity`."),
        (status = 429, description = "The queue is full (`queue_full`), or this token's cap of waiting jobs is reached (`token_queue_full`)."),
        (status = 507, description = "The job database cannot commit: its volume is full or failing (`storage_exhausted`)."),
    )
)]
async fn submit(
    State(app): State<Arc<AppState>>,
    principal: Option<Extension<Arc<Principal>>>,
    body: Body,
) -> ApiResult<Response> {
    let principal = caller(principal)?;
    let spec: JobSpec = json_body(body, &app.config).await?;
    let job = app
        .engine
        .submit(spec, Some(&submitter(&principal)))
        .await?;
    Ok(created(job, &principal))
}

/// Who submits a job, as the engine records it and holds it to its cap of waiting jobs.
fn submitter(principal: &Principal) -> aura_engine::Submitter {
    aura_engine::Submitter {
        name: principal.name.clone(),
        max_queued: principal.max_queued,
    }
}

/// 201 with a new job, as `principal` may see it, and its address in `Location`.
fn created(job: Job, principal: &Principal) -> Response {
    let location = HeaderValue::from_str(&format!("/api/jobs/{}", job.id)).ok();
    let mut response = (StatusCode::CREATED, Json(shown(answered(job), principal))).into_response();
    if let Some(location) = location {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

/// The view of a job the engine just answered: no live usage or waiting reason, which would be a
/// second read (and the change the engine just recorded may not be committed yet).
fn answered(job: Job) -> JobView {
    JobView {
        job,
        live: None,
        waiting: None,
    }
}

/// `POST /api/jobs/batch` with `{"jobs": [ENTRY, ...]}`: the jobs of one piece of work, queued
/// atomically (see `aura_model::batch`); answers `{"jobs": [JOB, ...]}` in the same order.
#[utoipa::path(
    post, path = "/api/jobs/batch", tag = "jobs", operation_id = "submit_batch",
    summary = "Submit the jobs of one piece of work at once",
    request_body(content = crate::openapi::BatchRequest,
        example = json!({"jobs": [{"name": "first", "program": "true"}, {"program": "true", "after": ["first"]}]})),
    responses(
        (status = 201, description = "Every job, in the order given.", body = aura_model::JobPage),
        (status = 403, description = "The program is outside `jobs.programs` (`program_not_allowed`), or the working directory outside `jobs.cwd_roots` (`working_directory_not_allowed`)."),
        (status = 422, description = "Not a valid job: `invalid_spec`, `limit_exceeded`, `program_not_found`, `invalid_working_directory`, `unknown_secret`, `unknown_dependency` or `exceeds_capacity`."),
        (status = 429, description = "The queue is full (`queue_full`), or this token's cap of waiting jobs is reached (`token_queue_full`)."),
        (status = 507, description = "The job database cannot commit: its volume is full or failing (`storage_exhausted`)."),
    )
)]
async fn submit_batch(
    State(app): State<Arc<AppState>>,
    principal: Option<Extension<Arc<Principal>>>,
    body: Body,
) -> ApiResult<Response> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Batch {
        jobs: Vec<serde_json::Value>,
    }
    let principal = caller(principal)?;
    let batch: Batch = json_body(body, &app.config).await?;
    let batch = aura_model::batch::parse(batch.jobs)
        .map_err(|e| ApiError::new(ErrorCode::InvalidSpec, e.to_string()))?;
    let jobs = app
        .engine
        .submit_batch(batch, Some(&submitter(&principal)))
        .await?;
    let jobs: Vec<JobView> = jobs
        .into_iter()
        .map(|job| shown(answered(job), &principal))
        .collect();
    let page = JobPage {
        jobs,
        next_after: None,
    };
    Ok((StatusCode::CREATED, Json(page)).into_response())
}

#[utoipa::path(
    get, path = "/api/jobs", tag = "jobs", operation_id = "list_jobs",
    summary = "A page of jobs",
    description = "Filtered by state and by label (`label=KEY=VALUE`, repeatable: every one must match), newest first by default.",
    params(crate::query::ListQuery),
    responses(
        (status = 200, description = "The page; `next_after` continues it.", body = aura_model::JobPage),
        (status = 400, description = "An unknown or malformed query parameter (`bad_request`), a `label` that is not `KEY=VALUE` or breaks the label rules among them."),
    )
)]
async fn list(
    State(app): State<Arc<AppState>>,
    principal: Option<Extension<Arc<Principal>>>,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<JobPage>> {
    let principal = caller(principal)?;
    let filter = query::list_filter(q.as_deref())?;
    let limit = filter.limit;
    let jobs = app.engine.list(filter).await?;
    let next_after = (jobs.len() == limit as usize)
        .then(|| jobs.last().map(|j| j.job.id))
        .flatten();
    let jobs = jobs.into_iter().map(|v| shown(v, &principal)).collect();
    Ok(Json(JobPage { jobs, next_after }))
}

#[utoipa::path(
    get, path = "/api/jobs/{id}", tag = "jobs", operation_id = "show_job",
    summary = "One job, with its live use while it runs",
    params(("id" = i64, Path, description = "The job's id.", minimum = 1, example = 1)),
    responses(
        (status = 200, description = "The job.", body = aura_model::JobView),
        (status = 400, description = "The id is not a positive integer (`bad_request`)."),
        (status = 404, description = "No such job (`not_found`)."),
    )
)]
async fn show(
    State(app): State<Arc<AppState>>,
    principal: Option<Extension<Arc<Principal>>>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<JobView>> {
    let principal = caller(principal)?;
    Ok(Json(shown(app.engine.get(job_id(id)?).await?, &principal)))
}

/// Whether `principal` may act on job `id`: an admin token on any job, a submit token on its own only
/// (who submitted a job never changes). A job that does not exist is `not_found` either way.
async fn may_act(
    engine: &EngineHandle,
    principal: &Principal,
    id: JobId,
    action: JobAction,
) -> ApiResult<()> {
    if principal.allows(Scope::Admin) {
        return Ok(());
    }
    let owner = engine.get(id).await?.job.submitted_by;
    if owner.as_deref() == Some(principal.name.as_str()) {
        return Ok(());
    }
    let doing = match action {
        JobAction::Pause => "pausing",
        JobAction::Resume => "resuming",
        JobAction::Hold => "holding",
        JobAction::Release => "releasing",
        JobAction::Retry => "retrying",
        JobAction::Priority => "changing the priority of",
        JobAction::Kill => "killing",
        JobAction::Cancel => "cancelling",
    };
    Err(ApiError::new(
        ErrorCode::InsufficientScope,
        format!(
            "job {id} was submitted by {}; {doing} another's job needs an admin token",
            owner.as_deref().unwrap_or("an unknown client")
        ),
    ))
}

/// The caller, the job id of the path, and whether the caller may do `action` to that job.
async fn acting(
    app: &AppState,
    principal: Option<Extension<Arc<Principal>>>,
    id: Result<Path<String>, PathRejection>,
    action: JobAction,
) -> ApiResult<(Arc<Principal>, JobId)> {
    let principal = caller(principal)?;
    let id = job_id(id)?;
    may_act(&app.engine, &principal, id, action).await?;
    Ok((principal, id))
}

/// Who asked, as the engine records it with what it did: the token's name, never the token.
fn by(principal: &Principal) -> Option<String> {
    Some(principal.name.clone())
}

/// `POST /api/jobs/{id}/cancel`: a queued or held job ends at once, a running or paused one gets its
/// stop sequence.
#[utoipa::path(
    post, path = "/api/jobs/{id}/cancel", tag = "jobs", operation_id = "cancel_job",
    summary = "Cancel a job: a waiting one ends at once, a running one gets its stop sequence",
    params(("id" = i64, Path, description = "The job's id.", minimum = 1, example = 1)),
    responses(
        (status = 200, description = "The job as the cancel left it.", body = aura_model::JobView),
        (status = 400, description = "The id is not a positive integer (`bad_request`)."),
        (status = 403, description = "A `submit` token acting on another's job (`insufficient_scope`)."),
        (status = 404, description = "No such job (`not_found`)."),
        (status = 409, description = "The job has already finished (`already_finished`)."),
    )
)]
async fn cancel(
    State(app): State<Arc<AppState>>,
    principal: Option<Extension<Arc<Principal>>>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<JobView>> {
    let (principal, id) = acting(&app, principal, id, JobAction::Cancel).await?;
    let job = app.engine.stop_job(id, false, by(&principal)).await?;
    Ok(Json(shown(answered(job), &principal)))
}

/// `POST /api/jobs/{id}/kill`: as cancel, but a running tree gets SIGKILL at once, no grace period.
#[utoipa::path(
    post, path = "/api/jobs/{id}/kill", tag = "jobs", operation_id = "kill_job",
    summary = "Kill a job: SIGKILL to its whole tree, no grace period",
    params(("id" = i64, Path, description = "The job's id.", minimum = 1, example = 1)),
    responses(
        (status = 200, description = "The job as the kill left it.", body = aura_model::JobView),
        (status = 400, description = "The id is not a positive integer (`bad_request`)."),
        (status = 403, description = "A `submit` token acting on another's job (`insufficient_scope`)."),
        (status = 404, description = "No such job (`not_found`)."),
        (status = 409, description = "The job has already finished (`already_finished`)."),
    )
)]
async fn kill(
    State(app): State<Arc<AppState>>,
    principal: Option<Extension<Arc<Principal>>>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<JobView>> {
    let (principal, id) = acting(&app, principal, id, JobAction::Kill).await?;
    let job = app.engine.stop_job(id, true, by(&principal)).await?;
    Ok(Json(shown(answered(job), &principal)))
}

/// `POST /api/jobs/{id}/pause`: freezes a running job's tree.
#[utoipa::path(
    post, path = "/api/jobs/{id}/pause", tag = "jobs", operation_id = "pause_job",
    summary = "Freeze a running job's tree",
    params(("id" = i64, Path, description = "The job's id.", minimum = 1, example = 1)),
    responses(
        (status = 200, description = "The paused job.", body = aura_model::JobView),
        (status = 400, description = "The id is not a positive integer (`bad_request`)."),
        (status = 403, description = "A `submit` token acting on another's job (`insufficient_scope`)."),
        (status = 404, description = "No such job (`not_found`)."),
        (status = 409, description = "The job is not running (`invalid_state`)."),
    )
)]
async fn pause(
    State(app): State<Arc<AppState>>,
    principal: Option<Extension<Arc<Principal>>>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<JobView>> {
    let (principal, id) = acting(&app, principal, id, JobAction::Pause).await?;
    let job = app.engine.pause(id, by(&principal)).await?;
    Ok(Json(shown(answered(job), &principal)))
}

/// `POST /api/jobs/{id}/resume`: thaws a paused job's tree.
#[utoipa::path(
    post, path = "/api/jobs/{id}/resume", tag = "jobs", operation_id = "resume_job",
    summary = "Thaw a paused job's tree",
    params(("id" = i64, Path, description = "The job's id.", minimum = 1, example = 1)),
    responses(
        (status = 200, description = "The running job.", body = aura_model::JobView),
        (status = 400, description = "The id is not a positive integer (`bad_request`)."),
        (status = 403, description = "A `submit` token acting on another's job (`insufficient_scope`)."),
        (status = 404, description = "No such job (`not_found`)."),
        (status = 409, description = "The job is not paused (`invalid_state`)."),
    )
)]
async fn resume(
    State(app): State<Arc<AppState>>,
    principal: Option<Extension<Arc<Principal>>>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<JobView>> {
    let (principal, id) = acting(&app, principal, id, JobAction::Resume).await?;
    let job = app.engine.resume(id, by(&principal)).await?;
    Ok(Json(shown(answered(job), &principal)))
}

/// `POST /api/jobs/{id}/hold`: keeps a queued job from starting.
#[utoipa::path(
    post, path = "/api/jobs/{id}/hold", tag = "jobs", operation_id = "hold_job",
    summary = "Keep a queued job from starting",
    params(("id" = i64, Path, description = "The job's id.", minimum = 1, example = 1)),
    responses(
        (status = 200, description = "The held job.", body = aura_model::JobView),
        (status = 400, description = "The id is not a positive integer (`bad_request`)."),
        (status = 403, description = "A `submit` token acting on another's job (`insufficient_scope`)."),
        (status = 404, description = "No such job (`not_found`)."),
        (status = 409, description = "The job is not queued (`invalid_state`)."),
    )
)]
async fn hold(
    State(app): State<Arc<AppState>>,
    principal: Option<Extension<Arc<Principal>>>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<JobView>> {
    let (principal, id) = acting(&app, principal, id, JobAction::Hold).await?;
    let job = app.engine.hold(id, by(&principal)).await?;
    Ok(Json(shown(answered(job), &principal)))
}

/// `POST /api/jobs/{id}/release`: lets a held job start again.
#[utoipa::path(
    post, path = "/api/jobs/{id}/release", tag = "jobs", operation_id = "release_job",
    summary = "Let a held job start again",
    params(("id" = i64, Path, description = "The job's id.", minimum = 1, example = 1)),
    responses(
        (status = 200, description = "The queued job.", body = aura_model::JobView),
        (status = 400, description = "The id is not a positive integer (`bad_request`)."),
        (status = 403, description = "A `submit` token acting on another's job (`insufficient_scope`)."),
        (status = 404, description = "No such job (`not_found`)."),
        (status = 409, description = "The job is not held (`invalid_state`)."),
    )
)]
async fn release(
    State(app): State<Arc<AppState>>,
    principal: Option<Extension<Arc<Principal>>>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<JobView>> {
    let (principal, id) = acting(&app, principal, id, JobAction::Release).await?;
    let job = app.engine.release(id, by(&principal)).await?;
    Ok(Json(shown(answered(job), &principal)))
}

/// `POST /api/jobs/{id}/priority` with `{"priority": N}`: moves a job that has not started in the queue.
#[utoipa::path(
    post, path = "/api/jobs/{id}/priority", tag = "jobs", operation_id = "set_priority",
    summary = "Move a job that has not started in the queue",
    params(("id" = i64, Path, description = "The job's id.", minimum = 1, example = 1)),
    request_body(content = aura_model::view::PriorityRequest, example = json!({"priority": 10})),
    responses(
        (status = 200, description = "The job with its new priority.", body = aura_model::JobView),
        (status = 400, description = "The id is not a positive integer (`bad_request`)."),
        (status = 403, description = "A `submit` token acting on another's job (`insufficient_scope`)."),
        (status = 404, description = "No such job (`not_found`)."),
        (status = 409, description = "The job has started already (`invalid_state`)."),
        (status = 422, description = "Not a valid request (`invalid_spec`)."),
    )
)]
async fn set_priority(
    State(app): State<Arc<AppState>>,
    principal: Option<Extension<Arc<Principal>>>,
    id: Result<Path<String>, PathRejection>,
    body: Body,
) -> ApiResult<Json<JobView>> {
    let request: PriorityRequest = json_body(body, &app.config).await?;
    let (principal, id) = acting(&app, principal, id, JobAction::Priority).await?;
    let job = app
        .engine
        .set_priority(id, request.priority, by(&principal))
        .await?;
    Ok(Json(shown(answered(job), &principal)))
}

/// `POST /api/jobs/{id}/retry`: submits a finished job's spec again, as a new job of the caller's; 201
/// with the new job.
#[utoipa::path(
    post, path = "/api/jobs/{id}/retry", tag = "jobs", operation_id = "retry_job",
    summary = "Submit a finished job's spec again, as a new job",
    params(("id" = i64, Path, description = "The job's id.", minimum = 1, example = 1)),
    responses(
        (status = 201, description = "The new job (its `retry_of` names this one).", body = aura_model::JobView, headers(("Location" = String, description = "The new job's address, `/api/jobs/{id}`."))),
        (status = 400, description = "The id is not a positive integer (`bad_request`)."),
        (status = 403, description = "A `submit` token acting on another's job (`insufficient_scope`), or the program or working directory is no longer allowed (`program_not_allowed`, `working_directory_not_allowed`)."),
        (status = 404, description = "No such job (`not_found`)."),
        (status = 409, description = "The job has not finished (`invalid_state`)."),
        (status = 422, description = "The spec no longer passes the submit checks here (`program_not_found`, `unknown_secret`, `exceeds_capacity`…)."),
        (status = 429, description = "The queue is full (`queue_full`, `token_queue_full`)."),
        (status = 507, description = "The job database cannot commit (`storage_exhausted`)."),
    )
)]
async fn retry(
    State(app): State<Arc<AppState>>,
    principal: Option<Extension<Arc<Principal>>>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<Response> {
    let (principal, id) = acting(&app, principal, id, JobAction::Retry).await?;
    let job = app.engine.retry(id, Some(&submitter(&principal))).await?;
    Ok(created(job, &principal))
}

/// A `POST /api/jobs/cancel` body, parsed as `parse_json` parses every body; a selection naming
/// `finished` is refused rather than quietly picking nothing from it. Pure (also what the fuzz target
/// calls).
pub fn parse_cancel_selection(body: &[u8]) -> ApiResult<CancelSelection> {
    let selection: CancelSelection = parse_json(body)?;
    if selection.states.contains(&StateName::Finished) {
        return Err(ApiError::new(
            ErrorCode::InvalidSpec,
            "states: a finished job cannot be cancelled; pick from queued, held, running, paused and \
             stopping (none: all of them)",
        ));
    }
    // The same rules as a spec's labels and the list's `label=` filter: a selection that no job could
    // match is a mistake to report, not an empty answer.
    for (key, value) in &selection.labels {
        aura_model::check_label(key, value)
            .map_err(|e| ApiError::new(ErrorCode::InvalidSpec, format!("labels: {e}")))?;
    }
    Ok(selection)
}

/// `POST /api/jobs/cancel`: cancels (or with `kill`, kills) every unfinished job a selection picks — a
/// submit token's own jobs only — or with `dry_run` only says which it would.
#[utoipa::path(
    post, path = "/api/jobs/cancel", tag = "jobs", operation_id = "cancel_where",
    summary = "Cancel (or kill) every unfinished job a selection picks",
    description = "A `submit` token picks its own jobs only. With `dry_run`, only says which it would. In fleet mode the selection is the fleet's: this node stops its own jobs and those still in the fleet's queue, and sends the request on to every node holding others (`unreachable_nodes` names any that did not answer).",
    request_body(content = aura_model::view::CancelSelection, example = json!({"states": ["queued"], "dry_run": true})),
    responses(
        (status = 200, description = "The jobs stopped (or, for a dry run, that would be).", body = aura_model::view::CancelResult),
        (status = 422, description = "Not a valid selection (`invalid_spec`): an unknown field, `finished` among the states, or a label name or value a job could not carry."),
    )
)]
async fn cancel_where(
    State(app): State<Arc<AppState>>,
    principal: Option<Extension<Arc<Principal>>>,
    headers: axum::http::HeaderMap,
    body: Body,
) -> ApiResult<Json<CancelResult>> {
    let principal = caller(principal)?;
    let bytes = read_body(body, &app.config).await?;
    let request = parse_cancel_selection(&bytes)?;
    let selection = aura_engine::Selection {
        states: request.states,
        labels: request.labels,
    };
    let only_of = (!principal.allows(Scope::Admin)).then_some(principal.name.as_str());
    if request.dry_run {
        let picked: Vec<Job> = app
            .engine
            .select(&selection)
            .await?
            .into_iter()
            .filter(|job| only_of.map_or(true, |name| job.submitted_by.as_deref() == Some(name)))
            .collect();
        let mut by_state = std::collections::BTreeMap::new();
        for job in &picked {
            *by_state
                .entry(job.state.name().as_str().to_owned())
                .or_insert(0) += 1;
        }
        return Ok(Json(CancelResult {
            count: picked.len(),
            ids: picked.iter().map(|job| job.id).collect(),
            dry_run: true,
            by_state,
            unreachable_nodes: Vec::new(),
        }));
    }
    // Sent on by another node: this node's own jobs only (that node stops the rest).
    let reach = if headers.contains_key(crate::forward::FORWARDED) {
        aura_engine::Reach::HeldHere
    } else {
        aura_engine::Reach::Fleet
    };
    let done = app
        .engine
        .cancel_where(&selection, request.kill, only_of, by(&principal), reach)
        .await?;
    let mut ids = done.ids;
    let mut unreachable_nodes = Vec::new();
    for node in &done.elsewhere {
        match crate::forward::cancel_on(&app, node, &bytes, &principal).await {
            Ok(theirs) => ids.extend(theirs.ids),
            Err(e) => {
                tracing::warn!(node = %node.name, error = %e, "a bulk cancel did not reach the node holding some of its jobs");
                unreachable_nodes.push(node.name.clone());
            }
        }
    }
    ids.sort_unstable();
    Ok(Json(CancelResult {
        count: ids.len(),
        ids,
        dry_run: false,
        by_state: Default::default(),
        unreachable_nodes,
    }))
}

/// `POST /api/drain`: nothing new starts (kept across restarts); running jobs finish. Answers the
/// status after it.
#[utoipa::path(
    post, path = "/api/drain", tag = "node", operation_id = "drain",
    summary = "Start nothing new (kept across restarts); running jobs finish",
    responses((status = 200, description = "The engine after the drain (draining twice is not an error).", body = aura_model::EngineStatus))
)]
async fn drain(
    State(app): State<Arc<AppState>>,
    principal: Option<Extension<Arc<Principal>>>,
) -> ApiResult<Json<EngineStatus>> {
    set_drained(&app, principal, true).await
}

/// `POST /api/undrain`: queued jobs start again as admission allows.
#[utoipa::path(
    post, path = "/api/undrain", tag = "node", operation_id = "undrain",
    summary = "Start queued jobs again as admission allows",
    responses((status = 200, description = "The engine after the undrain.", body = aura_model::EngineStatus))
)]
async fn undrain(
    State(app): State<Arc<AppState>>,
    principal: Option<Extension<Arc<Principal>>>,
) -> ApiResult<Json<EngineStatus>> {
    set_drained(&app, principal, false).await
}

async fn set_drained(
    app: &AppState,
    principal: Option<Extension<Arc<Principal>>>,
    on: bool,
) -> ApiResult<Json<EngineStatus>> {
    let principal = caller(principal)?;
    // Either way the answer is the node as it is now: draining twice is not an error.
    app.engine.drain(on, by(&principal)).await?;
    Ok(Json(app.engine.status().await?))
}

#[utoipa::path(
    get, path = "/api/jobs/{id}/events", tag = "events", operation_id = "job_events",
    summary = "A job's event log, oldest first",
    params(("id" = i64, Path, description = "The job's id.", minimum = 1, example = 1)),
    responses(
        (status = 200, description = "Every event of the job.", body = Vec<aura_model::JobEventRecord>),
        (status = 400, description = "The id is not a positive integer (`bad_request`)."),
        (status = 404, description = "No such job (`not_found`)."),
    )
)]
async fn events(
    State(app): State<Arc<AppState>>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<Vec<JobEventRecord>>> {
    Ok(Json(app.engine.events(job_id(id)?).await?))
}

/// Raw bytes of one stream from a logical offset; the offsets travel in headers so that the body is exactly
/// what the job wrote.
/// `Last-Event-ID`, where the client sent one (EventSource does on every reconnect).
fn last_event_id(headers: &HeaderMap) -> ApiResult<Option<&str>> {
    headers
        .get("last-event-id")
        .map(|v| {
            v.to_str()
                .map_err(|_| ApiError::bad_request("Last-Event-ID is not text"))
        })
        .transpose()
}

/// `GET /api/events/stream`: every job's events and the engine's, with progress (see `sse`).
#[utoipa::path(
    get, path = "/api/events/stream", tag = "events", operation_id = "events_stream",
    summary = "Every job's events and the engine's as server-sent events, with progress",
    params(
        ("after" = Option<String>, Query, description = "Resume after this event id (`J.E`, or `J` for the job log only). Without it the stream starts with what comes next.", pattern = "^[0-9]+(\\.[0-9]+)?$"),
        ("progress" = Option<bool>, Query, description = "Send running jobs' progress. Default: true."),
        ("engine" = Option<bool>, Query, description = "Send the engine's events. Default: true."),
        ("Last-Event-ID" = Option<String>, Header, description = "The last event id seen, to resume after it (EventSource sends it on every reconnect); the query's `after` wins."),
    ),
    responses(
        (status = 200, description = "The stream.", body = crate::openapi::StreamEvent, content_type = "text/event-stream"),
        (status = 400, description = "A malformed parameter or event id, or one the all-jobs stream does not take (`logs`) (`bad_request`)."),
        (status = 503, description = "Every event stream slot is taken (`too_many_subscribers`); retry after `Retry-After`."),
    )
)]
async fn all_stream(
    State(app): State<Arc<AppState>>,
    socket: Option<Extension<crate::sse::ConnectionSocket>>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> ApiResult<Response> {
    let request = query::stream_request(q.as_deref(), last_event_id(&headers)?, false)?;
    let socket = socket.map(|Extension(s)| s);
    crate::sse::open(
        &app.engine,
        &app.streams,
        crate::sse::Scope::All,
        request,
        socket,
    )
    .await
}

/// `GET /api/jobs/{id}/events/stream`: one job's events from its first, with its progress; ends when the
/// job has finished.
#[utoipa::path(
    get, path = "/api/jobs/{id}/events/stream", tag = "events", operation_id = "job_stream",
    summary = "A job's events as server-sent events, from its first; ends when the job has finished",
    params(
        ("id" = i64, Path, description = "The job's id.", minimum = 1, example = 1),
        ("after" = Option<String>, Query, description = "Resume after this event id (`J`).", pattern = "^[0-9]+$"),
        ("progress" = Option<bool>, Query, description = "Send the running job's progress. Default: true."),
        ("logs" = Option<String>, Query, description = "Also send this captured stream's new output as `log` events.", pattern = "^(stdout|stderr)$"),
        ("Last-Event-ID" = Option<String>, Header, description = "The last event id seen, to resume after it (EventSource sends it on every reconnect); the query's `after` wins."),
    ),
    responses(
        (status = 200, description = "The stream.", body = crate::openapi::StreamEvent, content_type = "text/event-stream"),
        (status = 400, description = "A malformed parameter or event id, or one the job's stream does not take (`engine`) (`bad_request`)."),
        (status = 404, description = "No such job (`not_found`)."),
        (status = 503, description = "Every event stream slot is taken (`too_many_subscribers`); retry after `Retry-After`."),
    )
)]
async fn job_stream(
    State(app): State<Arc<AppState>>,
    socket: Option<Extension<crate::sse::ConnectionSocket>>,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> ApiResult<Response> {
    let id = job_id(id)?;
    let request = query::stream_request(q.as_deref(), last_event_id(&headers)?, true)?;
    let socket = socket.map(|Extension(s)| s);
    let scope = crate::sse::Scope::Job(id);
    crate::sse::open(&app.engine, &app.streams, scope, request, socket).await
}

#[utoipa::path(
    get, path = "/api/jobs/{id}/logs", tag = "jobs", operation_id = "job_logs",
    summary = "Raw captured output of a job, from a logical offset",
    params(("id" = i64, Path, description = "The job's id.", minimum = 1, example = 1), crate::query::LogQuery),
    responses(
        (status = 200, description = "The bytes; the offsets travel in headers so that the body is exactly what the job wrote.",
            body = crate::openapi::LogBytes, content_type = "application/octet-stream",
            headers(
                ("Aura-Log-Offset" = u64, description = "The logical offset of the first byte returned (later than asked where the cap dropped older output)."),
                ("Aura-Log-Next-Offset" = u64, description = "The offset to ask for next."),
                ("Aura-Log-Truncated" = u64, description = "Bytes dropped by the log size cap before `Aura-Log-Offset`."),
            )),
        (status = 400, description = "The id is not a positive integer, or an unknown or malformed query parameter (`bad_request`)."),
        (status = 404, description = "No such job (`not_found`)."),
    )
)]
async fn logs(
    State(app): State<Arc<AppState>>,
    id: Result<Path<String>, PathRejection>,
    RawQuery(q): RawQuery,
) -> ApiResult<Response> {
    let id = job_id(id)?;
    let q = query::log_request(q.as_deref())?;
    let chunk = app
        .engine
        .logs(id, q.stream, q.attempt, q.offset, q.max)
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

#[utoipa::path(
    get, path = "/api/jobs/{id}/wait", tag = "jobs", operation_id = "wait_job",
    summary = "Wait for a job to finish (long poll)",
    description = "Holds the request until the job has finished or `timeout` has passed, and answers the job as it is then.",
    params(("id" = i64, Path, description = "The job's id.", minimum = 1, example = 1), crate::query::WaitQuery),
    responses(
        (status = 200, description = "The job: finished, or as it was when the wait timed out.", body = aura_model::JobView),
        (status = 400, description = "The id is not a positive integer, or a malformed timeout (`bad_request`)."),
        (status = 404, description = "No such job (`not_found`)."),
    )
)]
async fn wait(
    State(app): State<Arc<AppState>>,
    principal: Option<Extension<Arc<Principal>>>,
    id: Result<Path<String>, PathRejection>,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<JobView>> {
    let principal = caller(principal)?;
    let id = job_id(id)?;
    let timeout = query::wait_timeout(q.as_deref(), app.config.max_wait)?;
    let view = app.engine.wait(id, timeout).await?;
    Ok(Json(shown(view, &principal)))
}

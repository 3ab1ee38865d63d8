//! Fleet mode's proxy: a request about one job (its logs, its files, an action on it) that reaches a
//! node other than the one holding the job is forwarded there — same method, path, query and body, the
//! headers that matter, the fleet token — and the answer streamed back as it comes, never held whole. A
//! forwarded request carries `X-Aura-Forwarded` and is never forwarded again; the node that receives it
//! acts for the caller the first node authenticated (`X-Aura-Forwarded-For`, `-Scope`), not as the
//! fleet token's admin.

use crate::auth::{Principal, Scope};
use crate::error::{ApiError, ErrorCode};
use crate::state::{read_body, ApiConfig, AppState};
use aura_model::{JobId, NodeView};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use std::time::Duration;

/// Marks a request one node forwarded to another: it is answered where it arrives, never forwarded on.
pub const FORWARDED: HeaderName = HeaderName::from_static("x-aura-forwarded");
/// On a forwarded request: the name of the caller the first node authenticated.
pub const FORWARDED_FOR: HeaderName = HeaderName::from_static("x-aura-forwarded-for");
/// On a forwarded request: the scope of that caller (`read`, `submit`, `admin`).
pub const FORWARDED_SCOPE: HeaderName = HeaderName::from_static("x-aura-forwarded-scope");

/// How long a node may take to accept the connection of a forwarded request.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// The least time a forwarded answer may stay silent (an event stream sends a heartbeat well within).
const MIN_READ_TIMEOUT: Duration = Duration::from_secs(60);

/// The request headers sent on: the body's type, ranges and validators of downloads, what the client
/// accepts, and where an event stream resumes.
const REQUEST_HEADERS: [HeaderName; 5] = [
    header::CONTENT_TYPE,
    header::RANGE,
    header::IF_RANGE,
    header::ACCEPT,
    HeaderName::from_static("last-event-id"),
];

/// The answer's headers passed back: what the body is and how long, ranges, validators and download
/// names, and the log offsets.
const ANSWER_HEADERS: [HeaderName; 13] = [
    header::CONTENT_TYPE,
    header::CONTENT_LENGTH,
    header::CONTENT_RANGE,
    header::ACCEPT_RANGES,
    header::ETAG,
    header::LAST_MODIFIED,
    header::CONTENT_DISPOSITION,
    header::X_CONTENT_TYPE_OPTIONS,
    header::CACHE_CONTROL,
    header::RETRY_AFTER,
    HeaderName::from_static("aura-log-offset"),
    HeaderName::from_static("aura-log-next-offset"),
    HeaderName::from_static("aura-log-truncated"),
];

/// The routes (method and path, as routed and as the OpenAPI document names them) whose requests go to
/// the node that holds the job.
pub(crate) fn forwards(method: &Method, route: &str) -> bool {
    match method.as_str() {
        "GET" | "HEAD" => matches!(
            route,
            "/api/jobs/{id}/logs"
                | "/api/jobs/{id}/events/stream"
                | "/api/jobs/{id}/files"
                | "/api/jobs/{id}/files/{*path}"
                | "/api/jobs/{id}/files/{path}"
        ),
        "POST" => matches!(
            route,
            "/api/jobs/{id}/cancel"
                | "/api/jobs/{id}/kill"
                | "/api/jobs/{id}/pause"
                | "/api/jobs/{id}/resume"
                | "/api/jobs/{id}/hold"
                | "/api/jobs/{id}/release"
                | "/api/jobs/{id}/priority"
        ),
        _ => false,
    }
}

/// The client forwarded requests go out with: a short connect timeout, no overall one (a followed log,
/// a large download), a read timeout well past the event streams' heartbeat.
pub(crate) fn client(stream_heartbeat: Duration) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .read_timeout(MIN_READ_TIMEOUT.max(stream_heartbeat.saturating_mul(4)))
        // A node's answer is passed back as it is, redirects included.
        .redirect(reqwest::redirect::Policy::none())
        .build()
}

/// The layer of the job routes `forwards` names: a request already forwarded is answered here, for the
/// caller it names; any other goes to the node that holds its job, where that is another node.
pub(crate) async fn to_holder(
    State(app): State<Arc<AppState>>,
    mut request: Request,
    next: Next,
) -> Response {
    if request.headers().contains_key(FORWARDED) {
        return match act_for_sender(&mut request) {
            Ok(()) => next.run(request).await,
            Err(e) => e.into_response(),
        };
    }
    // A malformed id is the handler's to refuse.
    let Some(id) = path_job_id(request.uri().path()) else {
        return next.run(request).await;
    };
    let asked = Asked {
        read: matches!(*request.method(), Method::GET | Method::HEAD),
        stream_without_logs: request.uri().path().ends_with("/events/stream")
            && !asks_for_logs(request.uri().query()),
        caller: request.extensions().get::<Arc<Principal>>().cloned(),
    };
    match holder(&app, id, asked).await {
        Ok(None) => next.run(request).await,
        Ok(Some(node)) => match forward(&app.config, app.peers.as_ref(), &node, request).await {
            Ok(response) => response,
            Err(e) => e.into_response(),
        },
        Err(e) => e.into_response(),
    }
}

/// The layer of the bulk cancel (`POST /api/jobs/cancel`), which a node sends on to the others itself
/// (`cancel_on`): a request sent on is answered for the caller it names; any other as it is.
pub(crate) async fn as_sender(mut request: Request, next: Next) -> Response {
    if request.headers().contains_key(FORWARDED) {
        if let Err(e) = act_for_sender(&mut request) {
            return e.into_response();
        }
    }
    next.run(request).await
}

/// Sends a bulk cancel (its JSON `body`, as the caller sent it) on to `node`, for `caller`, and reads
/// which jobs it stopped there; an error says why it could not.
pub(crate) async fn cancel_on(
    app: &AppState,
    node: &NodeView,
    body: &[u8],
    caller: &Principal,
) -> Result<aura_model::view::CancelResult, String> {
    let token = app
        .config
        .fleet_token
        .as_ref()
        .ok_or("this node has no fleet token")?;
    let base = node.url.as_deref().ok_or("the node has no API address")?;
    let peers = app.peers.as_ref().ok_or("no HTTP client for other nodes")?;
    let mut headers =
        outgoing(&HeaderMap::new(), token.expose(), Some(caller)).map_err(|e| e.detail)?;
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let answer = peers
        .post(format!("{}/api/jobs/cancel", base.trim_end_matches('/')))
        .headers(headers)
        .body(body.to_vec())
        .send()
        .await
        .map_err(|e| error_chain(&e))?;
    if !answer.status().is_success() {
        return Err(format!("it answered {}", answer.status()));
    }
    answer.json().await.map_err(|e| error_chain(&e))
}

/// The job id of a `/api/jobs/{id}/…` path, if it is one.
fn path_job_id(path: &str) -> Option<JobId> {
    let rest = path.strip_prefix("/api/jobs/")?;
    let id = rest.split('/').next()?;
    id.parse::<i64>().ok().filter(|id| *id > 0).map(JobId)
}

/// The other node a request about job `id` must go to, if any. An action asks the engine at once (which
/// claims a job still unclaimed, so that the action happens here) — unless a caller below admin acts on
/// another's job, which the handler refuses here. A read asks only for a job some node has claimed — a
/// job no node claimed has no output anywhere, and reading it must not claim it — and an event stream
/// only when it carries the job's output (`logs=`): its events are the same on every node.
async fn holder(app: &AppState, id: JobId, asked: Asked) -> Result<Option<NodeView>, ApiError> {
    if asked.stream_without_logs || !fleet_mode(app).await {
        return Ok(None);
    }
    if asked.read {
        match app.engine.get(id).await {
            Ok(view) if view.job.node.is_some() => {}
            // Unclaimed, or unknown (the handler says so).
            _ => return Ok(None),
        }
    } else if let Some(caller) = asked.caller.filter(|c| !c.allows(Scope::Admin)) {
        match app.engine.get(id).await {
            Ok(view) if view.job.submitted_by.as_deref() == Some(caller.name.as_str()) => {}
            // Another's job (or none): the handler refuses it here.
            _ => return Ok(None),
        }
    }
    Ok(app.engine.locate(id).await?)
}

/// What `holder` needs to know of a request (a request body is not `Sync`: the request itself stays
/// out of the awaits).
struct Asked {
    /// A GET or HEAD.
    read: bool,
    /// A job's event stream that does not carry its output.
    stream_without_logs: bool,
    /// Who asked.
    caller: Option<Arc<Principal>>,
}

/// Whether a query has a `logs` parameter.
fn asks_for_logs(query: Option<&str>) -> bool {
    query.is_some_and(|q| {
        q.split('&')
            .any(|pair| pair.split('=').next() == Some("logs"))
    })
}

/// Whether the engine runs in fleet mode, asked once.
async fn fleet_mode(app: &AppState) -> bool {
    if let Some(known) = app.fleet.get() {
        return *known;
    }
    // Only a fleet's store can fail to answer; a single node answers `None` without I/O.
    let fleet = !matches!(app.engine.nodes().await, Ok(None));
    *app.fleet.get_or_init(|| fleet)
}

/// On a forwarded request from a node (an admin token: the fleet token), the caller it names takes the
/// fleet token's place, so that ownership checks, redaction and the record of who acted are the
/// caller's. A request that names nobody keeps its own caller; a name that is not a token name is
/// refused rather than acted on with the fleet token's rights.
fn act_for_sender(request: &mut Request) -> Result<(), ApiError> {
    let Some(sender) = request.extensions().get::<Arc<Principal>>().cloned() else {
        return Ok(());
    };
    if !sender.allows(Scope::Admin) {
        return Ok(());
    }
    let headers = request.headers();
    let Some(name) = headers.get(FORWARDED_FOR) else {
        return Ok(());
    };
    let name = name
        .to_str()
        .ok()
        .filter(|n| crate::auth::valid_caller_name(n))
        .ok_or_else(|| ApiError::bad_request("X-Aura-Forwarded-For is not a caller name"))?
        .to_owned();
    let scope = headers
        .get(FORWARDED_SCOPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<Scope>().ok())
        .ok_or_else(|| {
            ApiError::bad_request("X-Aura-Forwarded-Scope is not read, submit or admin")
        })?;
    request.extensions_mut().insert(Arc::new(Principal {
        name,
        scope: scope.min(sender.scope),
        max_queued: None,
    }));
    Ok(())
}

/// Sends `request` to `node` through `peers` and streams its answer back.
async fn forward(
    config: &ApiConfig,
    peers: Option<&reqwest::Client>,
    node: &NodeView,
    request: Request,
) -> Result<Response, ApiError> {
    let token = config.fleet_token.as_ref().ok_or_else(|| {
        ApiError::new(
            ErrorCode::FleetTokenMissing,
            format!(
                "the job is on node {}, and this node has no fleet token to forward the request with",
                node.name
            ),
        )
    })?;
    let base = node.url.as_deref().ok_or_else(|| {
        ApiError::new(
            ErrorCode::NodeUnreachable,
            format!("the job is on node {}, which has no API address", node.name),
        )
    })?;
    let peers = peers.ok_or_else(|| {
        ApiError::new(
            ErrorCode::Internal,
            "the HTTP client for other nodes could not be built",
        )
    })?;
    let (parts, body) = request.into_parts();
    let caller = parts.extensions.get::<Arc<Principal>>().cloned();
    // Bodies here are small JSON (a new priority), read as every JSON body is.
    let body = if has_body(&parts.headers) {
        Some(read_body(body, config).await?)
    } else {
        None
    };
    let target = format!(
        "{}{}",
        base.trim_end_matches('/'),
        parts
            .uri
            .path_and_query()
            .map_or(parts.uri.path(), |p| p.as_str())
    );
    let headers = outgoing(&parts.headers, token.expose(), caller.as_deref())?;
    let mut outgoing = peers.request(parts.method, &target).headers(headers);
    if let Some(body) = body {
        outgoing = outgoing.body(body);
    }
    let answer = outgoing.send().await.map_err(|e| {
        ApiError::new(
            ErrorCode::NodeUnreachable,
            format!(
                "the job is on node {} at {base}, which did not answer: {}",
                node.name,
                error_chain(&e)
            ),
        )
    })?;
    Ok(streamed(answer))
}

/// Whether a request has a body to send on.
fn has_body(headers: &HeaderMap) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim() != "0")
}

/// The headers of a forwarded request: those of `REQUEST_HEADERS` the client sent, the fleet token, the
/// mark, and the caller.
fn outgoing(
    incoming: &HeaderMap,
    token: &str,
    caller: Option<&Principal>,
) -> Result<HeaderMap, ApiError> {
    let mut headers = HeaderMap::new();
    for name in REQUEST_HEADERS {
        for value in incoming.get_all(&name) {
            headers.append(name.clone(), value.clone());
        }
    }
    let mut bearer = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
        ApiError::new(
            ErrorCode::Internal,
            "the fleet token cannot be sent in an HTTP header",
        )
    })?;
    bearer.set_sensitive(true);
    headers.insert(header::AUTHORIZATION, bearer);
    headers.insert(FORWARDED, HeaderValue::from_static("1"));
    if let Some(caller) = caller {
        if let Ok(name) = HeaderValue::from_str(&caller.name) {
            headers.insert(FORWARDED_FOR, name);
            headers.insert(
                FORWARDED_SCOPE,
                HeaderValue::from_static(caller.scope.as_str()),
            );
        }
    }
    Ok(headers)
}

/// A node's answer as this node's: its status, the headers of `ANSWER_HEADERS`, the body as it arrives.
fn streamed(answer: reqwest::Response) -> Response {
    let status = answer.status();
    let mut headers = HeaderMap::new();
    for name in ANSWER_HEADERS {
        for value in answer.headers().get_all(&name) {
            headers.append(name.clone(), value.clone());
        }
    }
    let body = Body::from_stream(answer.bytes_stream());
    let mut response = (status, body).into_response();
    *response.headers_mut() = headers;
    response
}

/// An error and its causes, `: `-separated.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let next = cause.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids_are_read_from_job_paths_only() {
        assert_eq!(path_job_id("/api/jobs/7/logs"), Some(JobId(7)));
        assert_eq!(path_job_id("/api/jobs/12/files/a/b.txt"), Some(JobId(12)));
        assert_eq!(path_job_id("/api/jobs/0/cancel"), None);
        assert_eq!(path_job_id("/api/jobs/x/cancel"), None);
        assert_eq!(path_job_id("/api/nodes"), None);
    }

    #[test]
    fn an_event_stream_is_forwarded_only_with_the_jobs_output() {
        assert!(asks_for_logs(Some("logs=stdout")));
        assert!(asks_for_logs(Some("after=3&logs=stderr")));
        assert!(!asks_for_logs(Some("after=3&progress=false")));
        assert!(!asks_for_logs(Some("xlogs=1")));
        assert!(!asks_for_logs(None));
    }

    #[test]
    fn the_forwarded_routes_are_the_reads_and_actions_of_one_job() {
        assert!(forwards(&Method::GET, "/api/jobs/{id}/logs"));
        assert!(forwards(&Method::HEAD, "/api/jobs/{id}/files/{*path}"));
        assert!(forwards(&Method::POST, "/api/jobs/{id}/priority"));
        // A job's record and events are the fleet's, read from the shared store anywhere; a retry is a
        // new submission.
        assert!(!forwards(&Method::GET, "/api/jobs/{id}"));
        assert!(!forwards(&Method::GET, "/api/jobs/{id}/events"));
        assert!(!forwards(&Method::POST, "/api/jobs/{id}/retry"));
        assert!(!forwards(&Method::POST, "/api/jobs/{id}/logs"));
    }

    #[test]
    fn a_forwarded_request_carries_the_token_the_mark_and_the_caller_and_nothing_else() {
        let mut incoming = HeaderMap::new();
        incoming.insert(header::RANGE, HeaderValue::from_static("bytes=0-9"));
        incoming.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        incoming.insert(
            header::COOKIE,
            HeaderValue::from_static("aura_session=secret"),
        );
        incoming.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer user"),
        );
        let alice = Principal {
            name: "alice".into(),
            scope: Scope::Submit,
            max_queued: None,
        };
        let headers = outgoing(&incoming, "fleet-secret", Some(&alice)).expect("headers");
        assert_eq!(headers[header::AUTHORIZATION], "Bearer fleet-secret");
        assert!(headers[header::AUTHORIZATION].is_sensitive());
        assert_eq!(headers[FORWARDED], "1");
        assert_eq!(headers[FORWARDED_FOR], "alice");
        assert_eq!(headers[FORWARDED_SCOPE], "submit");
        assert_eq!(headers[header::RANGE], "bytes=0-9");
        assert_eq!(headers[header::CONTENT_TYPE], "application/json");
        assert!(headers.get(header::COOKIE).is_none());
        assert_eq!(headers.len(), 6, "{headers:?}");
    }

    fn admin_request(headers: &[(&HeaderName, &str)], scope: Scope) -> Request {
        let mut request = Request::new(Body::empty());
        for (name, value) in headers {
            request.headers_mut().insert(
                (*name).clone(),
                HeaderValue::from_str(value).expect("a value"),
            );
        }
        request.extensions_mut().insert(Arc::new(Principal {
            name: "fleet".into(),
            scope,
            max_queued: None,
        }));
        request
    }

    fn principal(request: &Request) -> Arc<Principal> {
        request
            .extensions()
            .get::<Arc<Principal>>()
            .cloned()
            .expect("a principal")
    }

    #[test]
    fn a_forwarded_request_acts_for_the_caller_it_names_never_above_the_sender() {
        let mut request = admin_request(
            &[
                (&FORWARDED, "1"),
                (&FORWARDED_FOR, "alice"),
                (&FORWARDED_SCOPE, "submit"),
            ],
            Scope::Admin,
        );
        act_for_sender(&mut request).expect("accepted");
        let p = principal(&request);
        assert_eq!((p.name.as_str(), p.scope), ("alice", Scope::Submit));
        // A sender that is not admin speaks for itself alone.
        let mut request = admin_request(
            &[(&FORWARDED_FOR, "alice"), (&FORWARDED_SCOPE, "admin")],
            Scope::Submit,
        );
        act_for_sender(&mut request).expect("accepted");
        assert_eq!(principal(&request).name, "fleet");
        // A caller who signed in with another node's token is named as its fleet entry.
        let mut request = admin_request(
            &[
                (&FORWARDED_FOR, "local-admin@node-b"),
                (&FORWARDED_SCOPE, "admin"),
            ],
            Scope::Admin,
        );
        act_for_sender(&mut request).expect("accepted");
        assert_eq!(principal(&request).name, "local-admin@node-b");
        // Naming nobody keeps the sender; a malformed name or scope is refused.
        let mut request = admin_request(&[(&FORWARDED, "1")], Scope::Admin);
        act_for_sender(&mut request).expect("accepted");
        assert_eq!(principal(&request).name, "fleet");
        for headers in [
            [(&FORWARDED_FOR, "al ice"), (&FORWARDED_SCOPE, "read")],
            [(&FORWARDED_FOR, "a@b@c"), (&FORWARDED_SCOPE, "read")],
            [(&FORWARDED_FOR, "alice"), (&FORWARDED_SCOPE, "root")],
        ] {
            let mut request = admin_request(&headers, Scope::Admin);
            let e = act_for_sender(&mut request).expect_err("refused");
            assert_eq!(e.code, ErrorCode::BadRequest);
        }
    }

    fn node(url: Option<String>) -> NodeView {
        NodeView {
            id: "b-id".into(),
            name: "b".into(),
            tags: Vec::new(),
            url,
            state: aura_model::NodeState::Up,
            incarnation: 1,
            capacity: Default::default(),
            running: 1,
            claimed: 0,
            heartbeat_age_ms: 10,
            registered_at: aura_model::Timestamp::from_unix_millis(0),
            this_node: false,
        }
    }

    fn config(token: Option<&str>) -> ApiConfig {
        let mut config = ApiConfig::new(7411, Default::default());
        config.fleet_token = token.map(aura_model::Secret::new);
        config
    }

    /// What the stand-in for the other node saw of a request.
    struct Seen {
        method: Method,
        target: String,
        headers: HeaderMap,
        body: bytes::Bytes,
    }

    /// A stand-in for the node that holds the job: it reports each request and answers 206 with a
    /// body whose second half waits for `gate`, and with headers some of which must not pass back.
    async fn other_node(
        gate: Arc<tokio::sync::Notify>,
    ) -> (String, tokio::sync::mpsc::Receiver<Seen>) {
        use futures_util::stream;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let app = axum::Router::new().fallback(
            move |method: Method, uri: axum::http::Uri, headers: HeaderMap, body: bytes::Bytes| {
                let (tx, gate) = (tx.clone(), gate.clone());
                async move {
                    let target = uri.path_and_query().map_or("", |p| p.as_str()).to_owned();
                    let _ = tx
                        .send(Seen {
                            method,
                            target,
                            headers,
                            body,
                        })
                        .await;
                    let pieces = stream::unfold(0, move |step| {
                        let gate = gate.clone();
                        async move {
                            match step {
                                0 => Some((Ok::<_, std::io::Error>("first ".as_bytes()), 1)),
                                1 => {
                                    gate.notified().await;
                                    Some((Ok("second".as_bytes()), 2))
                                }
                                _ => None,
                            }
                        }
                    });
                    let mut response = (
                        axum::http::StatusCode::PARTIAL_CONTENT,
                        Body::from_stream(pieces),
                    )
                        .into_response();
                    let headers = response.headers_mut();
                    for (name, value) in [
                        ("content-type", "video/mp4"),
                        ("content-range", "bytes 0-11/100"),
                        ("aura-log-next-offset", "12"),
                        ("set-cookie", "theirs=1"),
                        ("x-internal", "no"),
                    ] {
                        headers.insert(
                            HeaderName::from_static(name),
                            HeaderValue::from_static(value),
                        );
                    }
                    response
                }
            },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a port");
        let url = format!("http://{}/", listener.local_addr().expect("an address"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        (url, rx)
    }

    #[tokio::test]
    async fn a_request_goes_on_as_it_came_and_its_answer_streams_back() {
        use futures_util::StreamExt;
        let gate = Arc::new(tokio::sync::Notify::new());
        let (url, mut seen) = other_node(gate.clone()).await;
        let peers = client(Duration::from_secs(15)).expect("a client");
        let body = r#"{"priority":5}"#;
        let mut request = Request::builder()
            .method(Method::POST)
            .uri("/api/jobs/7/priority?x=1&y=%2F")
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::CONTENT_LENGTH, body.len())
            .header(header::COOKIE, "aura_session=mine")
            .header(header::AUTHORIZATION, "Bearer the-callers")
            .body(Body::from(body))
            .expect("a request");
        request.extensions_mut().insert(Arc::new(Principal {
            name: "alice".into(),
            scope: Scope::Submit,
            max_queued: None,
        }));
        let response = forward(
            &config(Some("fleet-secret")),
            Some(&peers),
            &node(Some(url)),
            request,
        )
        .await
        .expect("forwarded");
        let seen = seen.recv().await.expect("the node saw the request");
        assert_eq!(seen.method, Method::POST);
        assert_eq!(seen.target, "/api/jobs/7/priority?x=1&y=%2F");
        assert_eq!(seen.body, body.as_bytes());
        let h = &seen.headers;
        assert_eq!(h[header::AUTHORIZATION], "Bearer fleet-secret");
        assert_eq!(h[FORWARDED], "1");
        assert_eq!(h[FORWARDED_FOR], "alice");
        assert_eq!(h[FORWARDED_SCOPE], "submit");
        assert_eq!(h[header::CONTENT_TYPE], "application/json");
        assert_eq!(h[header::CONTENT_LENGTH], "14");
        assert!(h.get(header::COOKIE).is_none(), "{h:?}");
        // The answer: its status and the headers that say what the body is, nothing else.
        assert_eq!(response.status(), axum::http::StatusCode::PARTIAL_CONTENT);
        let h = response.headers();
        assert_eq!(h[header::CONTENT_TYPE], "video/mp4");
        assert_eq!(h[header::CONTENT_RANGE], "bytes 0-11/100");
        assert_eq!(h["aura-log-next-offset"], "12");
        assert!(
            h.get(header::SET_COOKIE).is_none() && h.get("x-internal").is_none(),
            "{h:?}"
        );
        // Streamed: the first half arrives while the node still holds back the second.
        let mut body = response.into_body().into_data_stream();
        let first = tokio::time::timeout(Duration::from_secs(10), body.next())
            .await
            .expect("the first half before the second is sent")
            .expect("a piece")
            .expect("no error");
        assert_eq!(first, "first ");
        gate.notify_one();
        let mut rest = Vec::new();
        while let Some(piece) = body.next().await {
            rest.extend_from_slice(&piece.expect("no error"));
        }
        assert_eq!(rest, b"second");
    }

    #[tokio::test]
    async fn a_request_without_a_body_goes_on_without_one() {
        let (url, mut seen) = other_node(Arc::new(tokio::sync::Notify::new())).await;
        let peers = client(Duration::from_secs(15)).expect("a client");
        let request = Request::builder()
            .method(Method::POST)
            .uri("/api/jobs/7/cancel")
            .body(Body::empty())
            .expect("a request");
        let response = forward(&config(Some("t")), Some(&peers), &node(Some(url)), request)
            .await
            .expect("forwarded");
        drop(response);
        let seen = seen.recv().await.expect("the node saw the request");
        // No body, so no `Transfer-Encoding` that would ask the node for a JSON `Content-Type`.
        assert!(seen.body.is_empty());
        assert!(
            seen.headers.get(header::TRANSFER_ENCODING).is_none(),
            "{:?}",
            seen.headers
        );
        assert!(seen.headers.get(header::CONTENT_TYPE).is_none());
        // No caller known: none named.
        assert!(seen.headers.get(FORWARDED_FOR).is_none());
    }

    #[tokio::test]
    async fn no_token_or_no_node_is_a_problem_of_its_own() {
        let peers = client(Duration::from_secs(15)).expect("a client");
        let get = || {
            Request::builder()
                .uri("/api/jobs/7/logs")
                .body(Body::empty())
                .expect("a request")
        };
        let e = forward(
            &config(None),
            Some(&peers),
            &node(Some("http://127.0.0.1:9".into())),
            get(),
        )
        .await
        .expect_err("no token");
        assert_eq!(e.code, ErrorCode::FleetTokenMissing);
        assert_eq!(e.code.status(), axum::http::StatusCode::SERVICE_UNAVAILABLE);
        // A port nobody listens on.
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a port");
        let url = format!("http://{}", closed.local_addr().expect("an address"));
        drop(closed);
        let e = forward(
            &config(Some("t")),
            Some(&peers),
            &node(Some(url.clone())),
            get(),
        )
        .await
        .expect_err("unreachable");
        assert_eq!(e.code, ErrorCode::NodeUnreachable);
        assert_eq!(e.code.status(), axum::http::StatusCode::BAD_GATEWAY);
        assert!(
            e.detail.contains("node b") && e.detail.contains(&url),
            "{}",
            e.detail
        );
        let e = forward(&config(Some("t")), Some(&peers), &node(None), get())
            .await
            .expect_err("no address");
        assert_eq!(e.code, ErrorCode::NodeUnreachable);
    }
}

//! The checks every request passes before a handler sees it, and the access log. Outside routing (all
//! requests): URI and header sizes, the `Host` allowlist (DNS rebinding), the `Origin` check (cross-site
//! requests), JSON-only bodies (a cross-site "simple request" — `text/plain`, a form — is refused, and a
//! JSON body from another site needs a CORS preflight that is granted only to configured origins). After
//! routing: authentication by bearer token (or, without one, the dashboard's session cookie; a cookie
//! write must carry `Origin`) and the scope each route needs (default: admin, so a route nobody
//! classified is closed, not open).

use crate::auth::{bearer, Principal, Scope, Tokens};
use crate::error::{ApiError, ErrorCode};
use axum::extract::{MatchedPath, Request};
use axum::http::{header, HeaderMap, Method};
use axum::response::{IntoResponse, Response};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;
use tower::{Layer, Service};

/// What the checks enforce; see the README's table of `api.*` settings.
#[derive(Clone, Debug)]
pub struct SecurityConfig {
    /// The tokens requests authenticate with; a request without a matching token is answered 401.
    pub tokens: Arc<Tokens>,
    /// Accepted `Host` values, lower case: `name:port`, or a bare `name` for any port.
    pub allowed_hosts: Vec<String>,
    /// Origins (`scheme://host[:port]`, lower case) besides the daemon's own that may call the API
    /// from a browser; CORS is answered for these only.
    pub allowed_origins: Vec<String>,
    /// Serve `/metrics` without a token (for a Prometheus without credentials).
    pub public_metrics: bool,
    /// Longest request target (path and query) accepted, in bytes; longer is answered 414. Default: 8 KiB.
    pub max_uri_bytes: usize,
    /// Most header bytes (names and values) a request may carry; more is answered 431. Default: 16 KiB.
    pub max_header_bytes: usize,
}

impl SecurityConfig {
    /// The default `Host` allowlist for a daemon on `port`: the loopback names.
    pub fn loopback_hosts(port: u16) -> Vec<String> {
        ["localhost", "127.0.0.1", "[::1]"]
            .iter()
            .flat_map(|h| {
                // On port 80 a client sends the name alone.
                let bare = (port == 80).then(|| (*h).to_owned());
                std::iter::once(format!("{h}:{port}")).chain(bare)
            })
            .collect()
    }

    fn host_allowed(&self, host: &str) -> bool {
        // Compared without allocating: this runs for every request. The list is lower case.
        let name = host_name(host);
        self.allowed_hosts.iter().any(|a| {
            a.eq_ignore_ascii_case(host)
                || ((!a.contains(':') || a.ends_with(']')) && a.eq_ignore_ascii_case(name))
        })
    }

    fn origin_allowed(&self, origin: &str, host: &str) -> bool {
        // The daemon's own pages (the dashboard) send their own origin; it is the Host they called.
        let own = ["http://", "https://"].iter().any(|scheme| {
            origin.len() == scheme.len() + host.len()
                && origin
                    .get(..scheme.len())
                    .is_some_and(|s| s.eq_ignore_ascii_case(scheme))
                && origin
                    .get(scheme.len()..)
                    .is_some_and(|h| h.eq_ignore_ascii_case(host))
        });
        own || self
            .allowed_origins
            .iter()
            .any(|o| o.eq_ignore_ascii_case(origin))
    }

    /// The scope a route needs; `None` for the public ones. A route not listed needs admin.
    pub(crate) fn needed(&self, method: &Method, route: &str) -> Option<Scope> {
        match (method.as_str(), route) {
            (_, "/healthz" | "/readyz") => None,
            // The dashboard's files hold no data; a sign-in authenticates by the token in its body.
            // Sign-in authenticates by its body; "who am I" answers 204 to nobody in particular.
            ("GET" | "HEAD", "/" | "/assets/{*path}" | "/api/session")
            | ("POST", "/api/session") => None,
            ("DELETE", "/api/session") => Some(Scope::Read),
            (_, "/metrics" | "/api/metrics/prometheus") if self.public_metrics => None,
            (
                "GET" | "HEAD",
                "/api/jobs"
                | "/api/jobs/{id}"
                | "/api/jobs/{id}/events"
                | "/api/jobs/{id}/events/stream"
                | "/api/events/stream"
                | "/api/jobs/{id}/logs"
                | "/api/jobs/{id}/wait"
                | "/api/jobs/{id}/files"
                // As routed (a wildcard), and as the OpenAPI document names it.
                | "/api/jobs/{id}/files/{*path}"
                | "/api/jobs/{id}/files/{path}"
                | "/api/events"
                | "/api/status"
                | "/api/nodes"
                | "/api/metrics/utilization"
                | "/api/metrics/system"
                | "/api/metrics/process"
                | "/api/diagnostics/resources"
                | "/api/janitor"
                | "/api/leases"
                | "/metrics"
                | "/api/metrics/prometheus"
                | "/api/openapi.json",
            ) => Some(Scope::Read),
            // A submit token acts on its own jobs only: the handlers check the owner (`routes::may_act`),
            // and a bulk cancel picks the token's own jobs.
            (
                "POST",
                "/api/jobs"
                | "/api/jobs/batch"
                | "/api/jobs/cancel"
                | "/api/jobs/{id}/cancel"
                | "/api/jobs/{id}/kill"
                | "/api/jobs/{id}/pause"
                | "/api/jobs/{id}/resume"
                | "/api/jobs/{id}/hold"
                | "/api/jobs/{id}/release"
                | "/api/jobs/{id}/priority"
                | "/api/jobs/{id}/retry"
                // What a submit token's jobs read; content-addressed, so no one's upload is another's.
                | "/api/uploads",
            ) => Some(Scope::Submit),
            // The node as a whole: no one token's business.
            ("POST", "/api/drain" | "/api/undrain" | "/api/diagnostics/resources/cleanup") => {
                Some(Scope::Admin)
            }
            _ => Some(Scope::Admin),
        }
    }
}

/// `name` of `name:port`, `[v6]` of `[v6]:port`.
fn host_name(host: &str) -> &str {
    match host.rfind(':') {
        Some(i) if !host[i..].contains(']') => &host[..i],
        _ => host,
    }
}

/// Who made a request, put on the response for the access log.
#[derive(Clone, Debug)]
struct Caller(Arc<Principal>);

/// Where a `SecurityLayer` stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stage {
    /// Outside routing (`Router::layer`): the checks of `check_request` and the access log.
    Guard,
    /// After routing (`Router::route_layer`): the bearer token, and the scope the matched route needs.
    Authorize,
}

/// The checks as a tower layer. A plain service, not `middleware::from_fn`: it runs for every request,
/// and this way it costs no allocation or service clone of its own.
#[derive(Clone)]
pub(crate) struct SecurityLayer {
    pub config: Arc<SecurityConfig>,
    pub stage: Stage,
    /// The dashboard's sessions, which the authorize stage accepts (by cookie) where no
    /// `Authorization` header is sent.
    pub sessions: Option<Arc<crate::session::Sessions>>,
}

impl<S> Layer<S> for SecurityLayer {
    type Service = Checked<S>;
    fn layer(&self, inner: S) -> Checked<S> {
        Checked {
            config: self.config.clone(),
            stage: self.stage,
            sessions: self.sessions.clone(),
            inner,
        }
    }
}

#[derive(Clone)]
pub(crate) struct Checked<S> {
    config: Arc<SecurityConfig>,
    stage: Stage,
    sessions: Option<Arc<crate::session::Sessions>>,
    inner: S,
}

impl<S> Service<Request> for Checked<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Then<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        match self.stage {
            Stage::Guard => self.guard(request),
            Stage::Authorize => self.authorize(request),
        }
    }
}

impl<S> Checked<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    fn guard(&mut self, request: Request) -> Then<S::Future> {
        // Most daemons run with the access log off (`warn`): then a request costs it nothing.
        let after =
            tracing::enabled!(target: "aura::access", tracing::Level::INFO).then(|| After::Log {
                method: request.method().clone(),
                path: request.uri().path().to_owned(),
                started: Instant::now(),
            });
        match check_request(&self.config, &request) {
            Ok(()) => Then::Inner {
                future: self.inner.call(request),
                after,
            },
            Err(e) => Then::Ready {
                response: Some(e.into_response()),
                after,
            },
        }
    }
}

/// What to do with a response once it is there.
enum After {
    /// The access log line: the path only (a query string is the client's business, and no secret
    /// travels in it) and the token's name.
    Log {
        method: axum::http::Method,
        path: String,
        started: Instant,
    },
    /// Name the caller on the response, for the access log.
    Caller(Arc<Principal>),
}

impl After {
    fn apply(self, response: &mut Response) {
        match self {
            After::Caller(principal) => {
                response.extensions_mut().insert(Caller(principal));
            }
            After::Log {
                method,
                path,
                started,
            } => {
                let token = response
                    .extensions()
                    .get::<Caller>()
                    .map_or("-", |c| c.0.name.as_str());
                tracing::info!(
                    target: "aura::access",
                    %method,
                    path = %truncated(&path, 200),
                    status = response.status().as_u16(),
                    token,
                    micros = started.elapsed().as_micros() as u64,
                    "request"
                );
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// The response of the inner service, or one decided here; then `After`.
    #[project = ThenProjection]
    pub(crate) enum Then<F> {
        Inner { #[pin] future: F, after: Option<After> },
        Ready { response: Option<Response>, after: Option<After> },
    }
}

impl<F> Future for Then<F>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let (mut response, after) = match self.project() {
            ThenProjection::Inner { future, after } => match future.poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(response)) => (response, after.take()),
                Poll::Ready(Err(never)) => match never {},
            },
            ThenProjection::Ready { response, after } => match response.take() {
                Some(response) => (response, after.take()),
                // Polled again after it completed: a caller's bug, answered as an internal error.
                None => (
                    ApiError::new(ErrorCode::Internal, "response polled twice").into_response(),
                    None,
                ),
            },
        };
        if let Some(after) = after {
            after.apply(&mut response);
        }
        Poll::Ready(Ok(response))
    }
}

fn truncated(text: &str, max: usize) -> &str {
    match text.char_indices().nth(max) {
        Some((i, _)) => &text[..i],
        None => text,
    }
}

/// The checks before routing (sizes, `Host`, `Origin`, body type) of one request; pure, so that the fuzz
/// target runs exactly these.
pub fn check_request<B>(
    config: &SecurityConfig,
    request: &axum::http::Request<B>,
) -> Result<(), ApiError> {
    let uri_len = request
        .uri()
        .path_and_query()
        .map_or(0, |p| p.as_str().len());
    if uri_len > config.max_uri_bytes {
        return Err(ApiError::new(
            ErrorCode::UriTooLong,
            format!(
                "the request target is longer than {} bytes",
                config.max_uri_bytes
            ),
        ));
    }
    let headers = request.headers();
    let header_bytes: usize = headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    if header_bytes > config.max_header_bytes {
        return Err(ApiError::new(
            ErrorCode::HeadersTooLarge,
            format!(
                "the request headers are larger than {} bytes",
                config.max_header_bytes
            ),
        ));
    }
    let host = request_host(request)?;
    if !config.host_allowed(host) {
        return Err(ApiError::new(
            ErrorCode::HostNotAllowed,
            format!(
                "Host {:?} is not one this daemon answers to (api.allowed_hosts)",
                truncated(host, 100)
            ),
        ));
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        if !config.origin_allowed(origin, host) {
            return Err(ApiError::new(
                ErrorCode::OriginNotAllowed,
                format!(
                    "requests from origin {:?} are not allowed (api.allowed_origins)",
                    truncated(origin, 100)
                ),
            ));
        }
    }
    // An upload's body is a file, of whatever type, and never parsed: a cross-site page cannot send it
    // with a bearer token, nor with the session cookie without an `Origin` (checked above, and required
    // of a cookie's write by the authorize stage).
    if request.method() == Method::POST && request.uri().path() == UPLOAD_PATH {
        return Ok(());
    }
    check_content_type(headers)
}

/// The one route whose body need not be JSON (`POST`): a file upload.
pub const UPLOAD_PATH: &str = "/api/uploads";

/// The `Host` header, or the authority of an absolute-form request target.
fn request_host<B>(request: &axum::http::Request<B>) -> Result<&str, ApiError> {
    let missing = || ApiError::new(ErrorCode::HostNotAllowed, "the request has no Host header");
    match request.headers().get(header::HOST) {
        Some(h) => h.to_str().map_err(|_| missing()),
        None => request
            .uri()
            .authority()
            .map(|a| a.as_str())
            .ok_or_else(missing),
    }
}

/// A request with a body must say it is JSON. A cross-site page can send `text/plain`, form and
/// multipart bodies without asking first; it cannot send `application/json` without a CORS preflight.
fn check_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let has_body = headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim() != "0");
    let content_type = headers.get(header::CONTENT_TYPE);
    if !has_body && content_type.is_none() {
        return Ok(());
    }
    let is_json = content_type
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"));
    if is_json {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorCode::UnsupportedMediaType,
            "request bodies must be JSON with Content-Type: application/json",
        ))
    }
}

impl<S> Checked<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    fn authorize(&mut self, mut request: Request) -> Then<S::Future> {
        let route = request
            .extensions()
            .get::<MatchedPath>()
            .map_or("", |r| r.as_str());
        let Some(needed) = self.config.needed(request.method(), route) else {
            return Then::Inner {
                future: self.inner.call(request),
                after: None,
            };
        };
        let principal = match request
            .headers()
            .get(header::AUTHORIZATION)
            .map(|h| bearer(h.as_bytes()))
        {
            None => match self.by_cookie(&request) {
                Some(Ok(principal)) => Ok(principal),
                Some(Err(refusal)) => {
                    return Then::Ready {
                        response: Some(refusal.into_response()),
                        after: None,
                    }
                }
                None => Err("this request needs an API token: Authorization: Bearer <token> (`aura token` prints the local one), or a dashboard session"),
            },
            Some(None) => Err("the Authorization header must be `Bearer <token>`"),
            Some(Some(token)) => self
                .config
                .tokens
                .authenticate(token)
                .ok_or("the API token is not valid here"),
        };
        let principal = match principal {
            Ok(p) => p,
            Err(detail) => {
                return Then::Ready {
                    response: Some(ApiError::new(ErrorCode::Unauthorized, detail).into_response()),
                    after: None,
                }
            }
        };
        let after = Some(After::Caller(principal.clone()));
        if !principal.allows(needed) {
            let refusal = ApiError::new(
                ErrorCode::InsufficientScope,
                format!(
                    "token {:?} has scope {}; this request needs {needed}",
                    principal.name, principal.scope
                ),
            );
            return Then::Ready {
                response: Some(refusal.into_response()),
                after,
            };
        }
        request.extensions_mut().insert(principal);
        Then::Inner {
            future: self.inner.call(request),
            after,
        }
    }
}

impl<S> Checked<S> {
    /// The dashboard session a request's `aura_session` cookie names: `None` without a (known, live)
    /// session; a refusal for a cookie-authenticated write without an `Origin` header. Browsers send
    /// `Origin` on every such `fetch`, and the guard stage has already checked it against `Host`; a
    /// request without it did not come from the daemon's own page (a form or link of another site the
    /// cookie's `SameSite` would not stop: a page on another port of the same host).
    fn by_cookie(&self, request: &Request) -> Option<Result<Arc<Principal>, ApiError>> {
        let sessions = self.sessions.as_ref()?;
        let id = crate::session::session_cookie(request.headers())?;
        let principal = sessions.authenticate(id)?;
        let safe = matches!(
            *request.method(),
            Method::GET | Method::HEAD | Method::OPTIONS
        );
        if !safe && !request.headers().contains_key(header::ORIGIN) {
            return Some(Err(ApiError::new(
                ErrorCode::OriginNotAllowed,
                "a write signed in by the dashboard's session cookie must carry an Origin header \
                 (browsers send it; send Authorization: Bearer <token> from other clients)",
            )));
        }
        Some(Ok(principal))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> SecurityConfig {
        SecurityConfig {
            tokens: Arc::default(),
            allowed_hosts: {
                let mut hosts = SecurityConfig::loopback_hosts(7411);
                hosts.push("render01".into());
                hosts
            },
            allowed_origins: vec!["https://studio.example".into()],
            public_metrics: false,
            max_uri_bytes: 100,
            max_header_bytes: 1000,
        }
    }

    #[test]
    fn hosts_and_origins() {
        let c = config();
        for ok in [
            "localhost:7411",
            "127.0.0.1:7411",
            "[::1]:7411",
            "LOCALHOST:7411",
            "render01:8080",
            "render01",
        ] {
            assert!(c.host_allowed(ok), "{ok}");
        }
        for bad in [
            "evil.example:7411",
            "localhost:7412",
            "localhost",
            "127.0.0.1",
            "[::1]",
            "evil.localhost:7411",
            "",
        ] {
            assert!(!c.host_allowed(bad), "{bad}");
        }
        assert!(c.origin_allowed("http://127.0.0.1:7411", "127.0.0.1:7411"));
        assert!(c.origin_allowed("https://studio.example", "127.0.0.1:7411"));
        for bad in [
            "http://evil.example",
            "null",
            "http://127.0.0.1:7411.evil",
            "http://localhost:7411",
        ] {
            assert!(!c.origin_allowed(bad, "127.0.0.1:7411"), "{bad}");
        }
        assert_eq!(host_name("[::1]:80"), "[::1]");
        assert_eq!(host_name("[::1]"), "[::1]");
        assert_eq!(host_name("a:1"), "a");
    }

    /// Every route the router has, with the scope it needs (`None`: public). A route added to the router
    /// belongs here too.
    const ROUTES: &[(&str, &str, Option<Scope>)] = &[
        ("GET", "/healthz", None),
        ("GET", "/", None),
        ("GET", "/assets/{*path}", None),
        ("POST", "/api/session", None),
        ("GET", "/api/session", None),
        ("DELETE", "/api/session", Some(Scope::Read)),
        ("GET", "/readyz", None),
        ("GET", "/api/status", Some(Scope::Read)),
        ("GET", "/api/metrics/utilization", Some(Scope::Read)),
        ("GET", "/api/metrics/system", Some(Scope::Read)),
        ("GET", "/api/metrics/process", Some(Scope::Read)),
        ("GET", "/api/diagnostics/resources", Some(Scope::Read)),
        (
            "POST",
            "/api/diagnostics/resources/cleanup",
            Some(Scope::Admin),
        ),
        ("GET", "/metrics", Some(Scope::Read)),
        ("GET", "/api/metrics/prometheus", Some(Scope::Read)),
        ("GET", "/api/openapi.json", Some(Scope::Read)),
        ("POST", "/api/leases", Some(Scope::Admin)),
        ("GET", "/api/leases", Some(Scope::Read)),
        ("POST", "/api/leases/{id}/renew", Some(Scope::Admin)),
        ("DELETE", "/api/leases/{id}", Some(Scope::Admin)),
        ("POST", "/api/jobs", Some(Scope::Submit)),
        ("GET", "/api/jobs", Some(Scope::Read)),
        ("POST", "/api/jobs/batch", Some(Scope::Submit)),
        ("POST", "/api/jobs/cancel", Some(Scope::Submit)),
        ("GET", "/api/jobs/{id}", Some(Scope::Read)),
        ("POST", "/api/jobs/{id}/cancel", Some(Scope::Submit)),
        ("POST", "/api/jobs/{id}/kill", Some(Scope::Submit)),
        ("POST", "/api/jobs/{id}/pause", Some(Scope::Submit)),
        ("POST", "/api/jobs/{id}/resume", Some(Scope::Submit)),
        ("POST", "/api/jobs/{id}/hold", Some(Scope::Submit)),
        ("POST", "/api/jobs/{id}/release", Some(Scope::Submit)),
        ("POST", "/api/jobs/{id}/priority", Some(Scope::Submit)),
        ("POST", "/api/jobs/{id}/retry", Some(Scope::Submit)),
        ("GET", "/api/jobs/{id}/events", Some(Scope::Read)),
        ("GET", "/api/jobs/{id}/events/stream", Some(Scope::Read)),
        ("GET", "/api/events", Some(Scope::Read)),
        ("GET", "/api/events/stream", Some(Scope::Read)),
        ("GET", "/api/jobs/{id}/logs", Some(Scope::Read)),
        ("GET", "/api/jobs/{id}/wait", Some(Scope::Read)),
        ("POST", "/api/uploads", Some(Scope::Submit)),
        ("GET", "/api/jobs/{id}/files", Some(Scope::Read)),
        ("GET", "/api/jobs/{id}/files/{*path}", Some(Scope::Read)),
        ("HEAD", "/api/jobs/{id}/files/{*path}", Some(Scope::Read)),
        ("POST", "/api/drain", Some(Scope::Admin)),
        ("POST", "/api/undrain", Some(Scope::Admin)),
    ];

    #[test]
    fn routes_need_their_scope_and_unknown_ones_need_admin() {
        let mut c = config();
        for (method, route, scope) in ROUTES {
            let method = Method::from_bytes(method.as_bytes()).expect("a method");
            assert_eq!(c.needed(&method, route), *scope, "{method} {route}");
        }
        // A write to a read route, and a route nobody classified, need admin.
        assert_eq!(
            c.needed(&Method::POST, "/api/jobs/{id}"),
            Some(Scope::Admin)
        );
        assert_eq!(
            c.needed(&Method::GET, "/api/jobs/{id}/pause"),
            Some(Scope::Admin)
        );
        assert_eq!(
            c.needed(&Method::GET, "/api/something-new"),
            Some(Scope::Admin)
        );
        c.public_metrics = true;
        assert_eq!(c.needed(&Method::GET, "/metrics"), None);
        assert_eq!(c.needed(&Method::GET, "/api/metrics/prometheus"), None);
    }

    #[test]
    fn bodies_must_be_json() {
        let with = |pairs: &[(&str, &str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.insert(
                    axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    v.parse().unwrap(),
                );
            }
            check_content_type(&h).is_ok()
        };
        assert!(with(&[]));
        assert!(with(&[("content-length", "0")]));
        assert!(with(&[
            ("content-length", "5"),
            ("content-type", "application/json")
        ]));
        assert!(with(&[
            ("content-length", "5"),
            ("content-type", "Application/JSON; charset=utf-8")
        ]));
        assert!(!with(&[("content-length", "5")]));
        assert!(!with(&[
            ("content-length", "5"),
            ("content-type", "text/plain")
        ]));
        assert!(!with(&[
            ("transfer-encoding", "chunked"),
            ("content-type", "application/x-www-form-urlencoded")
        ]));
        assert!(!with(&[(
            "content-type",
            "multipart/form-data; boundary=x"
        )]));
        assert!(!with(&[
            ("content-length", "5"),
            ("content-type", "application/jsonp")
        ]));
    }
}

//! The checks every request passes before a handler sees it, and the access log. Outside routing (all
//! requests): URI and header sizes, the `Host` allowlist (DNS rebinding), the `Origin` check (cross-site
//! requests), JSON-only bodies (a cross-site "simple request" — `text/plain`, a form — is refused, and a
//! JSON body from another site needs a CORS preflight that is granted only to configured origins). After
//! routing: authentication by bearer token and the scope each route needs (default: admin, so a route
//! nobody classified is closed, not open).

use crate::auth::{bearer, Principal, Scope, Tokens};
use crate::error::{ApiError, ErrorCode};
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderMap, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use std::time::Instant;

/// What the checks enforce; see the README's table of `api.*` settings.
#[derive(Clone, Debug)]
pub struct SecurityConfig {
    pub tokens: Arc<Tokens>,
    /// Accepted `Host` values, lower case: `name:port`, or a bare `name` for any port.
    pub allowed_hosts: Vec<String>,
    /// Origins (`scheme://host[:port]`, lower case) besides the daemon's own that may call the API
    /// from a browser; CORS is answered for these only.
    pub allowed_origins: Vec<String>,
    /// Serve `/metrics` without a token (for a Prometheus without credentials).
    pub public_metrics: bool,
    pub max_uri_bytes: usize,
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
        let host = host.to_ascii_lowercase();
        let name = host_name(&host);
        self.allowed_hosts
            .iter()
            .any(|a| *a == host || (!a.contains(':') || a.ends_with(']')) && a == name)
    }

    fn origin_allowed(&self, origin: &str, host: &str) -> bool {
        let origin = origin.to_ascii_lowercase();
        // The daemon's own pages (the dashboard) send their own origin; it is the Host they called.
        let own = ["http://", "https://"]
            .iter()
            .any(|scheme| origin.strip_prefix(scheme) == Some(&host.to_ascii_lowercase()));
        own || self.allowed_origins.contains(&origin)
    }

    /// The scope a route needs; `None` for the public ones. A route not listed needs admin.
    fn needed(&self, method: &Method, route: &str) -> Option<Scope> {
        match (method.as_str(), route) {
            (_, "/healthz" | "/readyz") => None,
            (_, "/metrics" | "/api/metrics/prometheus") if self.public_metrics => None,
            (
                "GET" | "HEAD",
                "/api/jobs"
                | "/api/jobs/{id}"
                | "/api/jobs/{id}/events"
                | "/api/jobs/{id}/logs"
                | "/api/jobs/{id}/wait"
                | "/api/events"
                | "/api/status"
                | "/api/metrics/utilization"
                | "/api/metrics/system"
                | "/api/metrics/process"
                | "/api/diagnostics/resources"
                | "/api/leases"
                | "/metrics"
                | "/api/metrics/prometheus",
            ) => Some(Scope::Read),
            ("POST", "/api/jobs" | "/api/jobs/{id}/cancel") => Some(Scope::Submit),
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

/// The checks before routing, and the access log of every request.
pub(crate) async fn guard(
    State(config): State<Arc<SecurityConfig>>,
    request: Request,
    next: Next,
) -> Response {
    // Most daemons run with the access log off (`warn`): then a request costs it nothing.
    let logged = tracing::enabled!(target: "aura::access", tracing::Level::INFO);
    let started = Instant::now();
    let seen = logged.then(|| (request.method().clone(), request.uri().path().to_owned()));
    let response = match check_request(&config, &request) {
        Ok(()) => next.run(request).await,
        Err(e) => e.into_response(),
    };
    let Some((method, path)) = seen else {
        return response;
    };
    let token = response
        .extensions()
        .get::<Caller>()
        .map_or("-", |c| c.0.name.as_str());
    // The path only: a query string is the client's business (and no secret travels in it).
    tracing::info!(
        target: "aura::access",
        %method,
        path = %truncated(&path, 200),
        status = response.status().as_u16(),
        token,
        micros = started.elapsed().as_micros() as u64,
        "request"
    );
    response
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
    check_content_type(headers)
}

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

/// After routing: the bearer token, and the scope the route needs.
pub(crate) async fn authorize(
    State(config): State<Arc<SecurityConfig>>,
    route: Option<MatchedPath>,
    mut request: Request,
    next: Next,
) -> Response {
    let route = route.as_ref().map_or("", |r| r.as_str());
    let Some(needed) = config.needed(request.method(), route) else {
        return next.run(request).await;
    };
    let principal = match request
        .headers()
        .get(header::AUTHORIZATION)
        .map(|h| bearer(h.as_bytes()))
    {
        None => Err("this request needs an API token: Authorization: Bearer <token> (`aura token` prints the local one)"),
        Some(None) => Err("the Authorization header must be `Bearer <token>`"),
        Some(Some(token)) => config
            .tokens
            .authenticate(token)
            .cloned()
            .ok_or("the API token is not valid here"),
    };
    let principal = match principal {
        Ok(p) => p,
        Err(detail) => return ApiError::new(ErrorCode::Unauthorized, detail).into_response(),
    };
    let caller = Caller(principal.clone());
    let mut response = if principal.allows(needed) {
        request.extensions_mut().insert(principal);
        next.run(request).await
    } else {
        ApiError::new(
            ErrorCode::InsufficientScope,
            format!(
                "token {:?} has scope {}; this request needs {needed}",
                principal.name, principal.scope
            ),
        )
        .into_response()
    };
    response.extensions_mut().insert(caller);
    response
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

    #[test]
    fn routes_need_their_scope_and_unknown_ones_need_admin() {
        let mut c = config();
        let get = Method::GET;
        let post = Method::POST;
        assert_eq!(c.needed(&get, "/healthz"), None);
        assert_eq!(c.needed(&get, "/api/jobs/{id}"), Some(Scope::Read));
        assert_eq!(c.needed(&post, "/api/jobs"), Some(Scope::Submit));
        assert_eq!(
            c.needed(&post, "/api/jobs/{id}/cancel"),
            Some(Scope::Submit)
        );
        assert_eq!(c.needed(&post, "/api/leases"), Some(Scope::Admin));
        assert_eq!(
            c.needed(&Method::DELETE, "/api/leases/{id}"),
            Some(Scope::Admin)
        );
        assert_eq!(
            c.needed(&post, "/api/diagnostics/resources/cleanup"),
            Some(Scope::Admin)
        );
        assert_eq!(c.needed(&get, "/api/something-new"), Some(Scope::Admin));
        assert_eq!(c.needed(&get, "/metrics"), Some(Scope::Read));
        c.public_metrics = true;
        assert_eq!(c.needed(&get, "/metrics"), None);
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

//! Browser sessions for the dashboard: an API token is exchanged once (`POST /api/session`) for a
//! random session id in an `HttpOnly; SameSite=Strict` cookie, so that the page never keeps the token
//! where its scripts could read it. The daemon keeps only a SHA-256 hash of each session id (a session
//! id is 256 random bits, so a fast hash is as strong as a slow one), in a bounded map: at most
//! `max` sessions, the least recently used one evicted to make room, each forgotten after `idle` without
//! a request (sliding). The token itself is never stored, and neither it nor a session id is logged.
//!
//! A cookie rides along with every request the browser makes to the daemon's origin, wanted or not, so
//! a cookie-authenticated write must also carry an `Origin` header (which the guard stage checks against
//! `Host`; see `security`): a page on another port of the same host is same-site, gets the cookie sent,
//! and is still refused.

use crate::auth::{Principal, Scope, Tokens};
use crate::error::{ApiError, ErrorCode};
use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The cookie's name.
pub const COOKIE: &str = "aura_session";
/// Sessions kept at once by default; signing in beyond it forgets the least recently used one.
pub const DEFAULT_MAX_SESSIONS: usize = 1024;
/// How long a session lives without a request, by default (sliding).
pub const DEFAULT_IDLE: Duration = Duration::from_secs(7 * 24 * 3600);
/// The largest sign-in body read: a token is under 100 bytes.
const MAX_BODY: usize = 16 * 1024;
/// How long a sign-in body may take to arrive.
const BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// `POST /api/session`: the API token to sign in with.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignIn {
    /// An API token (`aura token` prints the local one); exchanged for a session cookie, never stored.
    pub token: String,
}

/// Who a session (or a bearer token) is: the answer of `POST` and `GET /api/session`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SessionInfo {
    /// The name of the token the session was signed in with.
    pub name: String,
    /// That token's scope: `read`, `submit` or `admin`; the dashboard shows the controls it allows.
    pub scope: Scope,
}

impl SessionInfo {
    fn of(principal: &Principal) -> SessionInfo {
        SessionInfo {
            name: principal.name.clone(),
            scope: principal.scope,
        }
    }
}

/// One session: who it is, and when it was last used.
struct Entry {
    principal: Arc<Principal>,
    last_used: Instant,
}

/// The sessions of one daemon, keyed by the SHA-256 of their id. A lookup hashes the presented id
/// first, so what an attacker controls never meets the stored keys unhashed.
pub struct Sessions {
    max: usize,
    idle: Duration,
    entries: Mutex<HashMap<[u8; 32], Entry>>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Neither ids nor their hashes: only how many there are.
        f.debug_struct("Sessions")
            .field("max", &self.max)
            .field("idle", &self.idle)
            .field("open", &self.len())
            .finish()
    }
}

fn hash(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

impl Sessions {
    /// At most `max` sessions (at least one), each forgotten after `idle` without use.
    pub fn new(max: usize, idle: Duration) -> Sessions {
        Sessions {
            max: max.max(1),
            idle,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// Sessions kept now (expired ones included until the next sign-in sweeps them).
    pub fn len(&self) -> usize {
        crate::lock(&self.entries).len()
    }

    /// Whether no session is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Starts a session for `principal` and returns its new id (256 random bits, hex). Expired
    /// sessions are swept first; when the map is still full, the least recently used is forgotten.
    pub fn create(&self, principal: Arc<Principal>) -> std::io::Result<String> {
        self.create_at(principal, Instant::now())
    }

    fn create_at(&self, principal: Arc<Principal>, now: Instant) -> std::io::Result<String> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(std::io::Error::other)?;
        let id: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let mut entries = crate::lock(&self.entries);
        entries.retain(|_, e| now.saturating_duration_since(e.last_used) < self.idle);
        while entries.len() >= self.max {
            // O(max) only when full: a sign-in is rare, and `max` is a few thousand at most.
            let Some(oldest) = entries
                .iter()
                .min_by_key(|(_, e)| e.last_used)
                .map(|(k, _)| *k)
            else {
                break;
            };
            entries.remove(&oldest);
        }
        entries.insert(
            hash(&id),
            Entry {
                principal,
                last_used: now,
            },
        );
        Ok(id)
    }

    /// The principal of session `id`, if it is known and not idle for too long; a use slides its expiry.
    pub fn authenticate(&self, id: &str) -> Option<Arc<Principal>> {
        self.authenticate_at(id, Instant::now())
    }

    fn authenticate_at(&self, id: &str, now: Instant) -> Option<Arc<Principal>> {
        let key = hash(id);
        let mut entries = crate::lock(&self.entries);
        let entry = entries.get_mut(&key)?;
        if now.saturating_duration_since(entry.last_used) >= self.idle {
            entries.remove(&key);
            return None;
        }
        entry.last_used = now;
        Some(entry.principal.clone())
    }

    /// Forgets session `id` (sign-out); whether it was known.
    pub fn remove(&self, id: &str) -> bool {
        crate::lock(&self.entries).remove(&hash(id)).is_some()
    }
}

/// The value of the `aura_session` cookie among a request's `Cookie` headers (RFC 6265: `name=value`
/// pairs separated by `; `; a browser may send several headers over HTTP/2). `None` when absent, empty,
/// or not text.
pub fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim().trim_matches('"'))
        .filter(|value| !value.is_empty())
}

/// The `Set-Cookie` value that hands the browser session `id`: script cannot read it (`HttpOnly`), and
/// no other site's request carries it (`SameSite=Strict`). No `Secure`: the daemon speaks plain HTTP on
/// loopback (a TLS proxy in front may add it). No `Max-Age`: it lasts the browser session, the daemon
/// expires it after `idle` without use.
fn set_cookie(id: &str) -> Option<HeaderValue> {
    HeaderValue::from_str(&format!("{COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/")).ok()
}

/// The `Set-Cookie` value that makes the browser drop the cookie.
const EXPIRED_COOKIE: &str =
    "aura_session=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT";

/// What the session routes share: the store and the tokens a sign-in is checked against.
#[derive(Clone)]
pub(crate) struct SessionState {
    pub sessions: Arc<Sessions>,
    pub tokens: Arc<Tokens>,
}

/// `POST /api/session` with `{"token": "…"}`: checks the token and answers who it is, with a new
/// session cookie. A wrong token is 401 and sets no cookie. Public (it authenticates by its body).
#[utoipa::path(
    post, path = "/api/session", tag = "session", operation_id = "sign_in",
    summary = "Sign the dashboard in: exchange an API token for a session cookie",
    request_body(content = SignIn, example = json!({"token": "aura_…"})),
    responses(
        (status = 200, description = "Who the token is, with the session cookie (`HttpOnly; SameSite=Strict`).",
            body = SessionInfo,
            headers(("Set-Cookie" = String, description = "`aura_session=…`: the new session."))),
        (status = 401, description = "The token is not valid here (`unauthorized`); no cookie is set."),
        (status = 422, description = "Not a sign-in body (`invalid_spec`)."),
        (status = 500, description = "No session id could be made (`internal`)."),
    )
)]
pub(crate) async fn sign_in(
    State(state): State<SessionState>,
    body: Body,
) -> Result<Response, ApiError> {
    let body = match tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, MAX_BODY)).await
    {
        Err(_) => {
            return Err(ApiError::new(
                ErrorCode::RequestTimeout,
                "the sign-in body did not arrive in time",
            ))
        }
        Ok(Err(_)) => {
            return Err(ApiError::new(
                ErrorCode::PayloadTooLarge,
                format!("a sign-in body is at most {MAX_BODY} bytes"),
            ))
        }
        Ok(Ok(bytes)) => bytes,
    };
    // As every body: malformed JSON is 400, well-formed but not a sign-in is 422.
    let request: SignIn = serde_json::from_slice(&body).map_err(|e| {
        if e.classify() == serde_json::error::Category::Data {
            ApiError::new(
                ErrorCode::InvalidSpec,
                format!("a sign-in is {{\"token\": \"…\"}}: {e}"),
            )
        } else {
            ApiError::bad_request(format!("invalid JSON: {e}"))
        }
    })?;
    let principal = state
        .tokens
        .authenticate(request.token.trim())
        .ok_or_else(|| ApiError::new(ErrorCode::Unauthorized, "the API token is not valid here"))?;
    let id = state
        .sessions
        .create(principal.clone())
        .map_err(|e| ApiError::new(ErrorCode::Internal, format!("making a session id: {e}")))?;
    let cookie = set_cookie(&id).ok_or_else(|| {
        ApiError::new(
            ErrorCode::Internal,
            "a session id is not a valid header value",
        )
    })?;
    tracing::info!(target: "aura::access", token = %principal.name, "dashboard session opened");
    let mut response = who(&principal);
    response.headers_mut().insert(header::SET_COOKIE, cookie);
    Ok(response)
}

/// Who a session is, never cached (a shared cache must not answer it to someone else).
fn who(principal: &Principal) -> Response {
    let mut response = Json(SessionInfo::of(principal)).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// `GET /api/session`: who the session cookie (or bearer token) is, 204 when the request carries
/// neither. Public, so that the dashboard's first look before sign-in is an answer rather than an error
/// (a 401 is a red line in every browser console); a bearer token that is presented and wrong is 401.
#[utoipa::path(
    get, path = "/api/session", tag = "session", operation_id = "current_session",
    summary = "Who the session cookie (or bearer token) is",
    responses(
        (status = 200, description = "The session's token name and scope.", body = SessionInfo),
        (status = 204, description = "Not signed in: no bearer token and no live session cookie."),
        (status = 401, description = "The bearer token presented is not valid here (`unauthorized`)."),
    )
)]
pub(crate) async fn current(
    State(state): State<SessionState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let principal = match headers.get(header::AUTHORIZATION) {
        Some(value) => Some(
            crate::auth::bearer(value.as_bytes())
                .and_then(|token| state.tokens.authenticate(token))
                .ok_or_else(|| {
                    ApiError::new(ErrorCode::Unauthorized, "the API token is not valid here")
                })?,
        ),
        None => session_cookie(&headers).and_then(|id| state.sessions.authenticate(id)),
    };
    Ok(match principal {
        Some(principal) => who(&principal),
        None => StatusCode::NO_CONTENT.into_response(),
    })
}

/// `DELETE /api/session`: forgets the session and expires its cookie (204).
#[utoipa::path(
    delete, path = "/api/session", tag = "session", operation_id = "sign_out",
    summary = "Sign the dashboard out: forget the session and expire its cookie",
    responses(
        (status = 204, description = "Signed out.",
            headers(("Set-Cookie" = String, description = "An expired `aura_session` cookie."))),
    )
)]
pub(crate) async fn sign_out(State(state): State<SessionState>, headers: HeaderMap) -> Response {
    if let Some(id) = session_cookie(&headers) {
        state.sessions.remove(id);
    }
    (
        StatusCode::NO_CONTENT,
        [(header::SET_COOKIE, HeaderValue::from_static(EXPIRED_COOKIE))],
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(name: &str) -> Arc<Principal> {
        Arc::new(Principal {
            name: name.into(),
            scope: Scope::Read,
            max_queued: None,
        })
    }

    fn headers(cookies: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for c in cookies {
            h.append(header::COOKIE, c.parse().expect("a header value"));
        }
        h
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        assert_eq!(session_cookie(&headers(&["aura_session=abc"])), Some("abc"));
        assert_eq!(
            session_cookie(&headers(&["theme=dark; aura_session=abc; lang=en"])),
            Some("abc")
        );
        assert_eq!(
            session_cookie(&headers(&["theme=dark", "aura_session=\"abc\""])),
            Some("abc")
        );
        assert_eq!(session_cookie(&headers(&["x_aura_session=abc"])), None);
        assert_eq!(session_cookie(&headers(&["aura_session="])), None);
        assert_eq!(session_cookie(&headers(&["aura_session"])), None);
        assert_eq!(session_cookie(&headers(&[])), None);
        let mut bad = HeaderMap::new();
        bad.insert(
            header::COOKIE,
            HeaderValue::from_bytes(b"aura_session=\xff").expect("opaque bytes"),
        );
        assert_eq!(session_cookie(&bad), None);
    }

    #[test]
    fn the_cookie_is_http_only_and_strict() {
        let value = set_cookie("00ff").expect("a header value");
        let text = value.to_str().expect("text");
        assert!(text.starts_with("aura_session=00ff;"), "{text}");
        for attribute in ["HttpOnly", "SameSite=Strict", "Path=/"] {
            assert!(text.contains(attribute), "{text}");
        }
        assert!(EXPIRED_COOKIE.contains("Max-Age=0"));
    }

    #[test]
    fn sessions_are_random_hashed_and_forgotten() {
        let sessions = Sessions::new(8, Duration::from_secs(60));
        let a = sessions.create(principal("a")).expect("an id");
        let b = sessions.create(principal("b")).expect("an id");
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
        assert_eq!(
            sessions.authenticate(&a).map(|p| p.name.clone()),
            Some("a".into())
        );
        assert_eq!(
            sessions.authenticate(&b).map(|p| p.name.clone()),
            Some("b".into())
        );
        assert!(sessions.authenticate("nope").is_none());
        // Only hashes are kept: the id itself is nowhere in the map.
        let keys: Vec<[u8; 32]> = crate::lock(&sessions.entries).keys().copied().collect();
        assert!(keys.contains(&hash(&a)));
        assert!(sessions.remove(&a));
        assert!(!sessions.remove(&a));
        assert!(sessions.authenticate(&a).is_none());
        assert_eq!(sessions.len(), 1);
        assert!(!format!("{sessions:?}").contains(&b));
    }

    #[test]
    fn idle_sessions_expire_and_use_slides_the_expiry() {
        let sessions = Sessions::new(8, Duration::from_secs(100));
        let t0 = Instant::now();
        let a = sessions.create_at(principal("a"), t0).expect("an id");
        let b = sessions.create_at(principal("b"), t0).expect("an id");
        // Used at 60 s: alive until 160 s.
        assert!(sessions
            .authenticate_at(&a, t0 + Duration::from_secs(60))
            .is_some());
        assert!(sessions
            .authenticate_at(&a, t0 + Duration::from_secs(150))
            .is_some());
        // Unused since 0: gone at 100 s, and removed.
        assert!(sessions
            .authenticate_at(&b, t0 + Duration::from_secs(100))
            .is_none());
        assert_eq!(sessions.len(), 1);
        assert!(sessions
            .authenticate_at(&a, t0 + Duration::from_secs(251))
            .is_none());
        assert!(sessions.is_empty());
    }

    #[test]
    fn a_full_store_forgets_the_least_recently_used() {
        let sessions = Sessions::new(3, Duration::from_secs(1000));
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let a = sessions.create_at(principal("a"), at(0)).expect("an id");
        let b = sessions.create_at(principal("b"), at(1)).expect("an id");
        let c = sessions.create_at(principal("c"), at(2)).expect("an id");
        // `a` is the oldest but used since: `b` goes.
        assert!(sessions.authenticate_at(&a, at(3)).is_some());
        let d = sessions.create_at(principal("d"), at(4)).expect("an id");
        assert_eq!(sessions.len(), 3);
        assert!(sessions.authenticate_at(&b, at(5)).is_none());
        for id in [&a, &c, &d] {
            assert!(sessions.authenticate_at(id, at(5)).is_some());
        }
        // Expired ones are swept before anyone is evicted.
        let sessions = Sessions::new(2, Duration::from_secs(10));
        let old = sessions.create_at(principal("old"), at(0)).expect("an id");
        let live = sessions
            .create_at(principal("live"), at(15))
            .expect("an id");
        let new = sessions.create_at(principal("new"), at(16)).expect("an id");
        assert!(sessions.authenticate_at(&old, at(16)).is_none());
        assert!(sessions.authenticate_at(&live, at(16)).is_some());
        assert!(sessions.authenticate_at(&new, at(16)).is_some());
    }
}

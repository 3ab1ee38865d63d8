//! The dashboard's files and its sign-in, through the router with every security layer in front of it,
//! driven without a socket against a real engine: a token exchanged for an `HttpOnly`, `SameSite=Strict`
//! session cookie; the cookie accepted in place of a bearer token; a cookie write without `Origin` (or
//! from another origin) refused; sign-out forgetting the session; a wrong token answered 401 with no
//! cookie.

mod common;

use aura_server::auth::{Scope, Tokens};
use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use tower::ServiceExt;

const PORT: u16 = 7411;
const ADMIN: &str = "session-test-admin";
const READER: &str = "session-test-reader";
const OWN_ORIGIN: &str = "http://127.0.0.1:7411";

async fn engine(dir: &std::path::Path) -> aura_engine::EngineHandle {
    common::engine("session", dir).await
}

fn tokens() -> Tokens {
    common::tokens(&[
        (ADMIN, "admin", Scope::Admin),
        (READER, "reader", Scope::Read),
    ])
}

/// A request as a browser on the dashboard sends it: the cookie, and `Origin` where given.
fn request(
    method: Method,
    path: &str,
    cookie: Option<&str>,
    origin: Option<&str>,
    body: Option<serde_json::Value>,
) -> Request<Body> {
    let mut builder = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, format!("127.0.0.1:{PORT}"));
    if let Some(cookie) = cookie {
        builder = builder.header(header::COOKIE, format!("theme=dark; aura_session={cookie}"));
    }
    if let Some(origin) = origin {
        builder = builder.header(header::ORIGIN, origin);
    }
    match body {
        Some(body) => builder
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string())),
        None => builder.body(Body::empty()),
    }
    .expect("a valid request")
}

struct Answer {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
    fn header(&self, name: header::HeaderName) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

async fn call(router: &axum::Router, request: Request<Body>) -> Answer {
    let response = router.clone().oneshot(request).await.expect("infallible");
    let status = response.status();
    let headers = response.headers().clone();
    let body = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .expect("a body")
        .to_vec();
    Answer {
        status,
        headers,
        body,
    }
}

/// Signs in with `token` and returns the session id from `Set-Cookie`.
async fn sign_in(router: &axum::Router, token: &str) -> String {
    let answer = call(
        router,
        request(
            Method::POST,
            "/api/session",
            None,
            Some(OWN_ORIGIN),
            Some(serde_json::json!({ "token": token })),
        ),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.json());
    let cookie = answer
        .header(header::SET_COOKIE)
        .expect("a session cookie")
        .to_owned();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(attribute), "{cookie}");
    }
    let id = cookie
        .strip_prefix("aura_session=")
        .and_then(|rest| rest.split(';').next())
        .expect("aura_session=<id>")
        .to_owned();
    assert_eq!(id.len(), 64, "256 random bits in hex: {cookie}");
    assert!(!cookie.contains(token), "the cookie is not the token");
    id
}

#[tokio::test]
async fn a_session_cookie_signs_in_reads_writes_with_origin_and_signs_out() {
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = engine(dir.path()).await;
    let router = aura_server::router(engine.clone(), aura_server::ApiConfig::new(PORT, tokens()));

    // A wrong token: 401, and no cookie.
    let wrong = call(
        &router,
        request(
            Method::POST,
            "/api/session",
            None,
            Some(OWN_ORIGIN),
            Some(serde_json::json!({ "token": "not-a-token" })),
        ),
    )
    .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert_eq!(wrong.json()["code"], "unauthorized");
    assert!(wrong.header(header::SET_COOKIE).is_none());
    // A body that is not a sign-in is a problem too, with no cookie.
    let odd = call(
        &router,
        request(
            Method::POST,
            "/api/session",
            None,
            None,
            Some(serde_json::json!({ "password": ADMIN })),
        ),
    )
    .await;
    assert_eq!(odd.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(odd.header(header::SET_COOKIE).is_none());

    // Nobody signed in yet: an answer (204), not an error, so the page's first look logs nothing.
    let nobody = call(
        &router,
        request(Method::GET, "/api/session", None, None, None),
    )
    .await;
    assert_eq!(nobody.status, StatusCode::NO_CONTENT);
    let unknown = call(
        &router,
        request(Method::GET, "/api/session", Some("00ff"), None, None),
    )
    .await;
    assert_eq!(unknown.status, StatusCode::NO_CONTENT);
    // A session cookie never makes a write possible without a session.
    let anonymous_write = call(
        &router,
        request(Method::DELETE, "/api/session", Some("00ff"), None, None),
    )
    .await;
    assert_eq!(anonymous_write.status, StatusCode::UNAUTHORIZED);

    let id = sign_in(&router, ADMIN).await;
    let who = call(
        &router,
        request(Method::GET, "/api/session", Some(&id), None, None),
    )
    .await;
    assert_eq!(who.status, StatusCode::OK);
    assert_eq!(
        who.json(),
        serde_json::json!({"name": "admin", "scope": "admin"})
    );
    // The cookie reads the API as the token would.
    let list = call(
        &router,
        request(Method::GET, "/api/jobs", Some(&id), None, None),
    )
    .await;
    assert_eq!(list.status, StatusCode::OK, "{:?}", list.json());

    let spec = serde_json::json!({ "program": "true" });
    // A cookie write without Origin did not come from the page: refused, nothing submitted.
    let bare = call(
        &router,
        request(
            Method::POST,
            "/api/jobs",
            Some(&id),
            None,
            Some(spec.clone()),
        ),
    )
    .await;
    assert_eq!(bare.status, StatusCode::FORBIDDEN);
    assert_eq!(bare.json()["code"], "origin_not_allowed");
    // A page on another port of the same host gets the cookie sent (same site), and is refused.
    let other_port = call(
        &router,
        request(
            Method::POST,
            "/api/jobs",
            Some(&id),
            Some("http://127.0.0.1:9999"),
            Some(spec.clone()),
        ),
    )
    .await;
    assert_eq!(other_port.status, StatusCode::FORBIDDEN);
    assert_eq!(other_port.json()["code"], "origin_not_allowed");
    let page = call(
        &router,
        request(Method::GET, "/api/jobs", Some(&id), None, None),
    )
    .await;
    assert_eq!(page.json()["jobs"].as_array().map(Vec::len), Some(0));
    // From the daemon's own page: accepted, recorded under the token's name.
    let submitted = call(
        &router,
        request(
            Method::POST,
            "/api/jobs",
            Some(&id),
            Some(OWN_ORIGIN),
            Some(spec.clone()),
        ),
    )
    .await;
    assert_eq!(
        submitted.status,
        StatusCode::CREATED,
        "{:?}",
        submitted.json()
    );
    assert_eq!(submitted.json()["submitted_by"], "admin");

    // A read token's session reads, and may not write.
    let reader = sign_in(&router, READER).await;
    assert_ne!(reader, id);
    let refused = call(
        &router,
        request(
            Method::POST,
            "/api/jobs",
            Some(&reader),
            Some(OWN_ORIGIN),
            Some(spec),
        ),
    )
    .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert_eq!(refused.json()["code"], "insufficient_scope");

    // Sign-out needs Origin like any cookie write, forgets the session and expires the cookie.
    let no_origin = call(
        &router,
        request(Method::DELETE, "/api/session", Some(&id), None, None),
    )
    .await;
    assert_eq!(no_origin.status, StatusCode::FORBIDDEN);
    let out = call(
        &router,
        request(
            Method::DELETE,
            "/api/session",
            Some(&id),
            Some(OWN_ORIGIN),
            None,
        ),
    )
    .await;
    assert_eq!(out.status, StatusCode::NO_CONTENT);
    assert!(out
        .header(header::SET_COOKIE)
        .is_some_and(|c| c.starts_with("aura_session=;") && c.contains("Max-Age=0")));
    let gone = call(
        &router,
        request(Method::GET, "/api/session", Some(&id), None, None),
    )
    .await;
    assert_eq!(gone.status, StatusCode::NO_CONTENT);
    // The other session is untouched.
    let still = call(
        &router,
        request(Method::GET, "/api/session", Some(&reader), None, None),
    )
    .await;
    assert_eq!(still.json()["scope"], "read");
    // A bearer token still works, and wins over a cookie.
    let mut bearer = request(Method::GET, "/api/session", Some(&reader), None, None);
    bearer.headers_mut().insert(
        header::AUTHORIZATION,
        format!("Bearer {ADMIN}").parse().expect("a header value"),
    );
    assert_eq!(call(&router, bearer).await.json()["scope"], "admin");
    engine.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn the_dashboard_files_are_public_cached_and_guarded() {
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = engine(dir.path()).await;
    let router = aura_server::router(engine.clone(), aura_server::ApiConfig::new(PORT, tokens()));
    let page = call(&router, request(Method::GET, "/", None, None, None)).await;
    assert_eq!(page.status, StatusCode::OK);
    assert_eq!(
        page.header(header::CONTENT_TYPE),
        Some("text/html; charset=utf-8")
    );
    let csp = page
        .header(header::CONTENT_SECURITY_POLICY)
        .expect("a policy");
    assert!(csp.contains("default-src 'self'") && csp.contains("frame-ancestors 'none'"));
    assert_eq!(page.header(header::X_CONTENT_TYPE_OPTIONS), Some("nosniff"));
    assert_eq!(page.header(header::REFERRER_POLICY), Some("no-referrer"));
    assert_eq!(page.header(header::CACHE_CONTROL), Some("no-cache"));
    let etag = page.header(header::ETAG).expect("an ETag").to_owned();
    assert!(!etag.starts_with("W/"), "strong: {etag}");
    let mut again = request(Method::GET, "/", None, None, None);
    again
        .headers_mut()
        .insert(header::IF_NONE_MATCH, etag.parse().expect("a header value"));
    let again = call(&router, again).await;
    assert_eq!(again.status, StatusCode::NOT_MODIFIED);
    assert!(again.body.is_empty());

    for (path, kind) in [
        ("/assets/app.js", "text/javascript; charset=utf-8"),
        ("/assets/app.css", "text/css; charset=utf-8"),
        (
            "/assets/vendor/uPlot.iife.min.js",
            "text/javascript; charset=utf-8",
        ),
    ] {
        let asset = call(&router, request(Method::GET, path, None, None, None)).await;
        assert_eq!(asset.status, StatusCode::OK, "{path}");
        assert_eq!(asset.header(header::CONTENT_TYPE), Some(kind), "{path}");
        assert!(!asset.body.is_empty(), "{path}");
    }
    let missing = call(
        &router,
        request(Method::GET, "/assets/../Cargo.toml", None, None, None),
    )
    .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.json()["code"], "not_found");
    // The guard wraps them as every route: another Host (DNS rebinding) is refused.
    let mut rebound = request(Method::GET, "/", None, None, None);
    rebound.headers_mut().insert(
        header::HOST,
        "evil.example:7411".parse().expect("a header value"),
    );
    assert_eq!(call(&router, rebound).await.status, StatusCode::FORBIDDEN);
    engine.shutdown().await.expect("clean shutdown");
}

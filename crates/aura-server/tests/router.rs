//! The router with every security layer in front of it, driven without a socket against a real engine
//! (store in a temp dir, process-group supervisor).

mod common;

use aura_server::auth::{Scope, Tokens};
use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use std::time::Duration;
use tower::ServiceExt;

const PORT: u16 = 7411;
const TOKEN: &str = "router-test-token";

async fn engine(dir: &std::path::Path) -> aura_engine::EngineHandle {
    common::engine("router", dir).await
}

fn tokens() -> Tokens {
    common::tokens(&[
        (TOKEN, "tester", Scope::Admin),
        (ALICE, "alice", Scope::Submit),
        (BOB, "bob", Scope::Submit),
        (READER, "reader", Scope::Read),
    ])
}

/// Submit tokens of two clients, and a read token.
const ALICE: &str = "router-test-alice";
const BOB: &str = "router-test-bob";
const READER: &str = "router-test-reader";

fn request(method: Method, path: &str, token: Option<&str>) -> Request<Body> {
    let mut builder = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, format!("127.0.0.1:{PORT}"));
    if let Some(token) = token {
        builder = builder.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    builder.body(Body::empty()).expect("a valid request")
}

/// A method a route does not have is answered as every other error is: a problem document with a
/// stable code, and the `Allow` header routing adds.
#[tokio::test]
async fn a_wrong_method_is_a_problem_with_allow() {
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = engine(dir.path()).await;
    let router = aura_server::router(engine.clone(), aura_server::ApiConfig::new(PORT, tokens()));
    for (method, path, allow) in [
        (Method::PUT, "/api/jobs", "POST,GET,HEAD"),
        (Method::DELETE, "/api/jobs/1", "GET,HEAD"),
        (Method::GET, "/api/leases/1", "DELETE"),
    ] {
        let response = router
            .clone()
            .oneshot(request(method.clone(), path, Some(TOKEN)))
            .await
            .expect("infallible");
        assert_eq!(
            response.status(),
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path}"
        );
        let headers = response.headers();
        assert_eq!(
            headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok()),
            Some("application/problem+json"),
            "{method} {path}"
        );
        assert_eq!(
            headers.get(header::ALLOW).and_then(|v| v.to_str().ok()),
            Some(allow),
            "{method} {path}"
        );
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .expect("a body");
        let problem: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
        assert_eq!(problem["code"], "method_not_allowed", "{problem}");
        assert_eq!(problem["status"], 405, "{problem}");
        assert_eq!(problem["type"], "/problems/method_not_allowed", "{problem}");
        assert!(
            problem["detail"]
                .as_str()
                .is_some_and(|d| d.contains(method.as_str()) && d.contains(path)),
            "{problem}"
        );
    }
    // The guard still runs first: a foreign Host is refused before routing.
    let mut foreign = request(Method::PUT, "/api/jobs", Some(TOKEN));
    foreign.headers_mut().insert(
        header::HOST,
        "evil.example".parse().expect("a header value"),
    );
    let response = router.clone().oneshot(foreign).await.expect("infallible");
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    // And a route's own method still reaches its handler (authenticated).
    let response = router
        .clone()
        .oneshot(request(Method::GET, "/api/jobs", Some(TOKEN)))
        .await
        .expect("infallible");
    assert_eq!(response.status(), StatusCode::OK);
    engine.shutdown().await.expect("clean shutdown");
}

/// One request through the router: its status, its `Content-Type` and its body as JSON (`Null` if it is
/// not JSON).
async fn call(
    router: &axum::Router,
    method: Method,
    path: &str,
    token: &str,
    body: Option<&str>,
) -> (StatusCode, String, serde_json::Value) {
    let mut request = request(method, path, Some(token));
    if let Some(body) = body {
        let headers = request.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            "application/json".parse().expect("a header value"),
        );
        headers.insert(header::CONTENT_LENGTH, body.len().into());
        *request.body_mut() = Body::from(body.to_owned());
    }
    let response = router.clone().oneshot(request).await.expect("infallible");
    let status = response.status();
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .expect("a body");
    let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    (status, content_type, json)
}

/// A refusal: its status and its problem document's code.
fn refused(answer: &(StatusCode, String, serde_json::Value)) -> (u16, &str) {
    let (status, content_type, problem) = answer;
    assert_eq!(content_type, "application/problem+json", "{problem}");
    assert_eq!(problem["status"], status.as_u16(), "{problem}");
    (
        status.as_u16(),
        problem["code"].as_str().unwrap_or_default(),
    )
}

async fn submit_as(router: &axum::Router, token: &str, args: &str) -> i64 {
    let body = format!(r#"{{"program": "sleep", "args": [{args}]}}"#);
    let (status, _, job) = call(router, Method::POST, "/api/jobs", token, Some(&body)).await;
    assert_eq!(status, StatusCode::CREATED, "{job}");
    job["id"].as_i64().expect("a job id")
}

async fn state_of(router: &axum::Router, id: i64) -> String {
    let (_, _, job) = call(router, Method::GET, &format!("/api/jobs/{id}"), TOKEN, None).await;
    job["state"].as_str().unwrap_or_default().to_owned()
}

async fn wait_for_state(router: &axum::Router, id: i64, state: &str) {
    for _ in 0..500 {
        if state_of(router, id).await == state {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "job {id} never became {state}: {}",
        state_of(router, id).await
    );
}

/// The operator's routes: each needs its scope, a submit token acts on its own jobs only, an action
/// that does not fit the job's state is a 409 `invalid_state` problem, bodies are checked like every
/// other body, and each answers the job as the engine left it.
#[tokio::test]
async fn operator_actions_check_scope_owner_state_and_body() {
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = engine(dir.path()).await;
    let router = aura_server::router(engine.clone(), aura_server::ApiConfig::new(PORT, tokens()));
    // max_concurrent 1: the first runs, the second waits.
    let running = submit_as(&router, ALICE, r#""30""#).await;
    let queued = submit_as(&router, ALICE, r#""30""#).await;
    wait_for_state(&router, running, "running").await;
    let post = |path: String, token: &'static str, body: Option<&'static str>| {
        let router = router.clone();
        async move { call(&router, Method::POST, &path, token, body).await }
    };

    // Another client's job: 403 for every action on it, naming its owner.
    for action in [
        "pause", "resume", "hold", "release", "kill", "retry", "cancel",
    ] {
        let answer = post(format!("/api/jobs/{running}/{action}"), BOB, None).await;
        assert_eq!(refused(&answer), (403, "insufficient_scope"), "{action}");
        let detail = answer.2["detail"].as_str().unwrap_or_default();
        assert!(detail.contains("submitted by alice"), "{action}: {detail}");
        // A read token may not ask at all.
        let answer = post(format!("/api/jobs/{running}/{action}"), READER, None).await;
        assert_eq!(refused(&answer), (403, "insufficient_scope"), "{action}");
    }
    let answer = post(
        format!("/api/jobs/{queued}/priority"),
        BOB,
        Some(r#"{"priority": 1}"#),
    )
    .await;
    assert_eq!(refused(&answer), (403, "insufficient_scope"));

    // A queued job cannot be paused or resumed, a running one not held or re-prioritized, an unfinished
    // one not retried: 409 with the engine's reason.
    for (id, action) in [
        (queued, "pause"),
        (queued, "resume"),
        (queued, "release"),
        (running, "hold"),
        (running, "retry"),
    ] {
        let answer = post(format!("/api/jobs/{id}/{action}"), ALICE, None).await;
        assert_eq!(refused(&answer), (409, "invalid_state"), "{action} {id}");
        let detail = answer.2["detail"].as_str().unwrap_or_default();
        assert!(detail.contains(&format!("job {id}")), "{detail}");
    }
    let answer = post(
        format!("/api/jobs/{running}/priority"),
        ALICE,
        Some(r#"{"priority": 3}"#),
    )
    .await;
    assert_eq!(refused(&answer), (409, "invalid_state"));

    // Unknown jobs are 404, for the admin and for a submit token alike; a bad id is 400.
    for token in [TOKEN, ALICE] {
        let answer = post("/api/jobs/999/pause".into(), token, None).await;
        assert_eq!(refused(&answer), (404, "not_found"));
    }
    let answer = post("/api/jobs/x/hold".into(), ALICE, None).await;
    assert_eq!(refused(&answer), (400, "bad_request"));

    // Priority bodies: not JSON is 400, the wrong shape 422; a negative priority is fine.
    for (body, expected) in [
        ("{", (400, "bad_request")),
        (r#"{"priority": "high"}"#, (422, "invalid_spec")),
        (r#"{"priority": 1.5}"#, (422, "invalid_spec")),
        (r#"{"priority": 4294967296}"#, (422, "invalid_spec")),
        ("{}", (422, "invalid_spec")),
        (r#"{"priority": 1, "nice": 2}"#, (422, "invalid_spec")),
    ] {
        let answer = post(format!("/api/jobs/{queued}/priority"), ALICE, Some(body)).await;
        assert_eq!(refused(&answer), expected, "{body}");
    }
    let (status, _, job) = post(
        format!("/api/jobs/{queued}/priority"),
        ALICE,
        Some(r#"{"priority": -5}"#),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{job}");
    assert_eq!(job["spec"]["priority"], -5, "{job}");

    // Hold and release, by the owner.
    let (status, _, job) = post(format!("/api/jobs/{queued}/hold"), ALICE, None).await;
    assert_eq!(
        (status, job["state"].as_str()),
        (StatusCode::OK, Some("held"))
    );
    let (status, _, job) = post(format!("/api/jobs/{queued}/release"), ALICE, None).await;
    assert_eq!(
        (status, job["state"].as_str()),
        (StatusCode::OK, Some("queued"))
    );

    // Pause and resume the running one.
    let (status, _, job) = post(format!("/api/jobs/{running}/pause"), ALICE, None).await;
    assert_eq!(
        (status, job["state"].as_str()),
        (StatusCode::OK, Some("paused")),
        "{job}"
    );
    let (status, _, job) = post(format!("/api/jobs/{running}/resume"), ALICE, None).await;
    assert_eq!(
        (status, job["state"].as_str()),
        (StatusCode::OK, Some("running")),
        "{job}"
    );

    // Drain is the admin's.
    let answer = post("/api/drain".into(), ALICE, None).await;
    assert_eq!(refused(&answer), (403, "insufficient_scope"));
    let (status, _, node) = post("/api/drain".into(), TOKEN, None).await;
    assert_eq!(
        (status, node["draining"].as_bool()),
        (StatusCode::OK, Some(true))
    );
    let (status, _, node) = post("/api/undrain".into(), TOKEN, None).await;
    assert_eq!(
        (status, node["draining"].as_bool()),
        (StatusCode::OK, Some(false))
    );

    // Bulk cancel: a selection that names finished or an unknown state is refused; a dry run counts a
    // submit token's own jobs and stops none.
    for body in [
        r#"{"states": ["finished"]}"#,
        r#"{"states": ["asleep"]}"#,
        r#"{"states": [1]}"#,
        r#"{"kill": "yes"}"#,
        r#"{"everything": true}"#,
        r#"{"labels": {"bad key": "x"}}"#,
        r#"{"labels": {"project": "a\u0000b"}}"#,
    ] {
        let answer = post("/api/jobs/cancel".into(), ALICE, Some(body)).await;
        assert_eq!(refused(&answer), (422, "invalid_spec"), "{body}");
    }
    let answer = post("/api/jobs/cancel".into(), READER, Some("{}")).await;
    assert_eq!(refused(&answer), (403, "insufficient_scope"));
    let (status, _, result) =
        post("/api/jobs/cancel".into(), BOB, Some(r#"{"dry_run": true}"#)).await;
    assert_eq!(status, StatusCode::OK, "{result}");
    assert_eq!(result["count"], 0, "bob has no jobs: {result}");
    let (_, _, result) = post(
        "/api/jobs/cancel".into(),
        ALICE,
        Some(r#"{"dry_run": true, "states": ["running", "queued"]}"#),
    )
    .await;
    assert_eq!(
        result,
        serde_json::json!({
            "count": 2, "ids": [running, queued], "dry_run": true,
            "by_state": {"running": 1, "queued": 1}
        })
    );
    let (_, _, result) = post(
        "/api/jobs/cancel".into(),
        ALICE,
        Some(r#"{"states": ["queued"], "labels": {"kind": "none"}}"#),
    )
    .await;
    assert_eq!(result["count"], 0, "no job has the label: {result}");
    assert_eq!(state_of(&router, queued).await, "queued");
    let (_, _, result) = post("/api/jobs/cancel".into(), ALICE, Some(r#"{"kill": true}"#)).await;
    assert_eq!(
        result,
        serde_json::json!({"count": 2, "ids": [running, queued], "dry_run": false})
    );
    wait_for_state(&router, running, "finished").await;

    // A finished job is retried as a new job of the caller's, linked both ways; killing it again is
    // a 409 of its own.
    let answer = post(format!("/api/jobs/{running}/kill"), ALICE, None).await;
    assert_eq!(refused(&answer), (409, "already_finished"));
    let (status, _, job) = post(format!("/api/jobs/{queued}/retry"), ALICE, None).await;
    assert_eq!(status, StatusCode::CREATED, "{job}");
    let retried = job["id"].as_i64().expect("a new id");
    assert!(retried > queued, "{job}");
    assert_eq!(job["retry_of"], queued, "{job}");
    assert_eq!(job["submitted_by"], "alice", "{job}");
    let (_, _, old) = call(
        &router,
        Method::GET,
        &format!("/api/jobs/{queued}"),
        TOKEN,
        None,
    )
    .await;
    assert_eq!(old["retried_as"], retried, "{old}");
    let (status, _, job) = post(format!("/api/jobs/{retried}/kill"), ALICE, None).await;
    assert_eq!(status, StatusCode::OK, "{job}");
    engine.shutdown().await.expect("clean shutdown");
}

/// Routes the OpenAPI document leaves out on purpose: the dashboard's page and files, which are not API.
const UNDOCUMENTED: &[&str] = &["/", "/assets/{*path}"];

/// The router and `GET /api/openapi.json` agree: every (method, path) the router answers is documented,
/// and every documented one is routed. The router's paths are read from the router itself (its `Debug`
/// output, the one place axum shows them), and each path's methods from the `Allow` header of a 405 to a
/// method no route has; so a route added anywhere — `routes.rs`, a merged router — is seen here.
#[tokio::test]
async fn the_openapi_document_lists_exactly_the_routes_of_the_router() {
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = engine(dir.path()).await;
    let router = aura_server::router(engine.clone(), aura_server::ApiConfig::new(PORT, tokens()));

    let debug = format!("{router:?}");
    let mut paths = std::collections::BTreeSet::new();
    for piece in debug.split("RouteId(").skip(1) {
        // `RouteId(3): "/api/jobs"` in the router's `paths` map; other mentions of a route id have no
        // string after them.
        let Some(rest) = piece.split_once("): \"").map(|(_, rest)| rest) else {
            continue;
        };
        let Some((path, _)) = rest.split_once('"') else {
            continue;
        };
        if path.starts_with('/') && !path.contains("__private__axum") {
            paths.insert(path.to_owned());
        }
    }
    assert!(
        paths.contains("/healthz") && paths.contains("/api/jobs/{id}"),
        "the router's paths could not be read from its Debug output (did axum change it?): {paths:?}"
    );

    let probe = Method::from_bytes(b"AURAPROBE").expect("an extension method");
    let mut routed = std::collections::BTreeSet::new();
    for path in &paths {
        if UNDOCUMENTED.contains(&path.as_str()) {
            continue;
        }
        let concrete: String = path
            .split('/')
            .map(|segment| {
                if segment.starts_with('{') {
                    "1"
                } else {
                    segment
                }
            })
            .collect::<Vec<_>>()
            .join("/");
        let response = router
            .clone()
            .oneshot(request(probe.clone(), &concrete, Some(TOKEN)))
            .await
            .expect("infallible");
        assert_eq!(
            response.status(),
            StatusCode::METHOD_NOT_ALLOWED,
            "{path} answers a method no route has"
        );
        let allow = response
            .headers()
            .get(header::ALLOW)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        for method in allow.split(',').map(str::trim).filter(|m| !m.is_empty()) {
            // axum answers HEAD wherever there is GET; the document lists GET alone. A wildcard
            // (`{*path}`) is a plain parameter in the document.
            if method != "HEAD" {
                routed.insert((method.to_owned(), path.replace("{*", "{")));
            }
        }
    }

    let (status, content_type, doc) =
        call(&router, Method::GET, "/api/openapi.json", TOKEN, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(content_type, "application/json");
    assert_eq!(doc["openapi"], "3.1.0");
    let mut documented = std::collections::BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("a path item").keys() {
            if matches!(
                method.as_str(),
                "get" | "put" | "post" | "delete" | "options" | "head" | "patch" | "trace"
            ) {
                documented.insert((method.to_ascii_uppercase(), path.clone()));
            }
        }
    }
    let undocumented: Vec<_> = routed.difference(&documented).collect();
    let unrouted: Vec<_> = documented.difference(&routed).collect();
    assert!(
        undocumented.is_empty() && unrouted.is_empty(),
        "routed but not in the OpenAPI document: {undocumented:?}; documented but not routed: \
         {unrouted:?} (annotate the handler with #[utoipa::path] and list it in openapi::ApiDoc)"
    );
    engine.shutdown().await.expect("clean shutdown");
}

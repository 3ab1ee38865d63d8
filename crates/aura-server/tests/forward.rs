//! Fleet mode's surface on a single node, through the router with every security layer against a real
//! engine: `GET /api/nodes` says there is no fleet, and a request another node forwarded (marked
//! `X-Aura-Forwarded`, sent with an admin token) is answered here — never forwarded on — for the caller
//! it names, never with more than the sender's rights. The proxy's mechanics (what goes on, what comes
//! back, streamed) are the unit tests of `forward`.

mod common;

use aura_server::auth::Scope;
use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use std::time::Duration;
use tower::ServiceExt;

const PORT: u16 = 7411;
/// The fleet token as every node accepts it: an admin token.
const FLEET: &str = "forward-test-fleet";
const ALICE: &str = "forward-test-alice";
const BOB: &str = "forward-test-bob";
const READER: &str = "forward-test-reader";

fn router(engine: &aura_engine::EngineHandle) -> axum::Router {
    let tokens = common::tokens(&[
        (FLEET, "fleet", Scope::Admin),
        (ALICE, "alice", Scope::Submit),
        (BOB, "bob", Scope::Submit),
        (READER, "reader", Scope::Read),
    ]);
    aura_server::router(engine.clone(), aura_server::ApiConfig::new(PORT, tokens))
}

/// One request: its status and its body as JSON (`Null` if it is not JSON). `forwarded_for` marks it as
/// forwarded by another node for that caller (name, scope).
async fn call(
    router: &axum::Router,
    method: Method,
    path: &str,
    token: &str,
    body: Option<&str>,
    forwarded_for: Option<(&str, &str)>,
) -> (StatusCode, serde_json::Value) {
    let mut builder = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, format!("127.0.0.1:{PORT}"))
        .header(header::AUTHORIZATION, format!("Bearer {token}"));
    if let Some((name, scope)) = forwarded_for {
        builder = builder
            .header("x-aura-forwarded", "1")
            .header("x-aura-forwarded-for", name)
            .header("x-aura-forwarded-scope", scope);
    }
    let request = match body {
        Some(body) => builder
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::CONTENT_LENGTH, body.len())
            .body(Body::from(body.to_owned())),
        None => builder.body(Body::empty()),
    }
    .expect("a valid request");
    let response = router.clone().oneshot(request).await.expect("infallible");
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .expect("a body");
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    )
}

async fn submit_as(router: &axum::Router, token: &str) -> i64 {
    let body = r#"{"program": "sleep", "args": ["30"], "env": {"API_KEY": "hunter2"}}"#;
    let (status, job) = call(router, Method::POST, "/api/jobs", token, Some(body), None).await;
    assert_eq!(status, StatusCode::CREATED, "{job}");
    job["id"].as_i64().expect("a job id")
}

#[tokio::test]
async fn a_single_node_says_it_is_no_fleet() {
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = common::engine("forward-nodes", dir.path()).await;
    let router = router(&engine);
    let (status, list) = call(&router, Method::GET, "/api/nodes", READER, None, None).await;
    assert_eq!(status, StatusCode::OK, "{list}");
    assert_eq!(list, serde_json::json!({"fleet": false, "nodes": []}));
    let typed: aura_model::fleet::NodeList = serde_json::from_value(list).expect("a node list");
    assert!(!typed.fleet);
    engine.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn a_forwarded_request_is_answered_here_for_the_caller_it_names() {
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = common::engine("forward-behalf", dir.path()).await;
    let router = router(&engine);
    // max_concurrent 1: the first runs, the others wait.
    let running = submit_as(&router, BOB).await;
    let bobs = submit_as(&router, BOB).await;
    let alices = submit_as(&router, ALICE).await;

    // Forwarded for alice (submit): bob's job is not hers, whatever token the node sent it with.
    let path = format!("/api/jobs/{bobs}/hold");
    let (status, problem) = call(
        &router,
        Method::POST,
        &path,
        FLEET,
        None,
        Some(("alice", "submit")),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{problem}");
    assert_eq!(problem["code"], "insufficient_scope", "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|d| d.contains("bob")),
        "{problem}"
    );

    // Her own job: held, recorded as done by her, and answered as she may see it (no env values).
    let (status, job) = call(
        &router,
        Method::POST,
        &format!("/api/jobs/{alices}/hold"),
        FLEET,
        None,
        Some(("alice", "submit")),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{job}");
    assert_eq!(job["state"], "held", "{job}");
    assert_ne!(job["spec"]["env"]["API_KEY"], "hunter2", "{job}");
    let (_, events) = call(
        &router,
        Method::GET,
        &format!("/api/jobs/{alices}/events"),
        FLEET,
        None,
        None,
    )
    .await;
    let held = events
        .as_array()
        .and_then(|e| e.iter().find(|e| e["kind"] == "held"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(held["detail"]["by"], "alice", "{events}");

    // A body goes through as any other: a new priority for her job.
    let (status, job) = call(
        &router,
        Method::POST,
        &format!("/api/jobs/{alices}/priority"),
        FLEET,
        Some(r#"{"priority": 7}"#),
        Some(("alice", "submit")),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{job}");
    assert_eq!(job["spec"]["priority"], 7, "{job}");

    // A sender below admin speaks only for itself: bob cannot borrow alice's name.
    let (status, problem) = call(
        &router,
        Method::POST,
        &format!("/api/jobs/{alices}/release"),
        BOB,
        None,
        Some(("alice", "admin")),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{problem}");
    // A caller named with a scope above the sender's keeps the sender's: still fine for the admin.
    let (status, job) = call(
        &router,
        Method::POST,
        &format!("/api/jobs/{alices}/release"),
        FLEET,
        None,
        Some(("ops", "admin")),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{job}");
    assert_eq!(
        job["spec"]["env"]["API_KEY"], "hunter2",
        "admin sees env: {job}"
    );

    // A malformed caller is refused, not acted on with the fleet token's rights.
    let (status, problem) = call(
        &router,
        Method::POST,
        &format!("/api/jobs/{bobs}/cancel"),
        FLEET,
        None,
        Some(("alice", "root")),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{problem}");

    // Reads marked as forwarded are answered here too.
    let (status, _) = call(
        &router,
        Method::GET,
        &format!("/api/jobs/{running}/logs?stream=stdout"),
        FLEET,
        None,
        Some(("reader", "read")),
    )
    .await;
    assert_eq!(status, StatusCode::OK);

    // And unmarked requests of a single node go through as they always did.
    let (status, job) = call(
        &router,
        Method::POST,
        &format!("/api/jobs/{running}/kill"),
        BOB,
        None,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{job}");
    tokio::time::sleep(Duration::from_millis(50)).await;
    engine.shutdown().await.expect("clean shutdown");
}
